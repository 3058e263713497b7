"""The user image's GPU session countdown (images/tensorflow-2.9-gpu/gpuhub-session): the
server extension hands the hub's deadline to JupyterLab's page config, and the lab
extension is laid out as JupyterLab finds federated extensions. The browser test
(tests/e2e/test_browser_gpu_session.py) shows it working in JupyterLab."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parents[3] / "images" / "tensorflow-2.9-gpu" / "gpuhub-session"


def load_module():
    spec = importlib.util.spec_from_file_location("gpuhub_session", HERE / "gpuhub_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_deadline_reaches_the_page_config(monkeypatch):
    module = load_module()
    assert module._jupyter_server_extension_points() == [{"module": "gpuhub_session"}]
    monkeypatch.setenv("GPUHUB_GPU_DEADLINE", "2026-12-01T12:00:00Z")
    monkeypatch.setenv("GPUHUB_GPU_WARNING", "600")
    app = SimpleNamespace(web_app=SimpleNamespace(settings={"page_config_data": {"hubUser": "ada"}}))
    module._load_jupyter_server_extension(app)
    assert app.web_app.settings["page_config_data"] == {
        "hubUser": "ada", "gpuhubGpuDeadline": "2026-12-01T12:00:00Z", "gpuhubGpuWarning": "600"}


def test_without_a_gpu_session_nothing_is_added(monkeypatch):
    monkeypatch.delenv("GPUHUB_GPU_DEADLINE", raising=False)
    monkeypatch.delenv("GPUHUB_GPU_WARNING", raising=False)
    app = SimpleNamespace(web_app=SimpleNamespace(settings={}))
    load_module()._load_jupyter_server_extension(app)
    assert app.web_app.settings == {"page_config_data": {}}


def test_the_lab_extension_is_where_its_package_json_says():
    package = json.loads((HERE / "labextension" / "package.json").read_text())
    build = package["jupyterlab"]["_build"]
    assert package["name"] == "gpuhub-session" and build["extension"] == "./extension"
    script = (HERE / "labextension" / build["load"]).read_text()
    assert "containers['gpuhub-session']" in script and "gpuhubGpuDeadline" in script
    enabled = json.loads((HERE / "jupyter_server_config.d" / "gpuhub_session.json").read_text())
    assert enabled == {"ServerApp": {"jpserver_extensions": {"gpuhub_session": True}}}
