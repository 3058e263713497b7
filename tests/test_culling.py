"""The culling rules (hub.culling) on a clock the tests choose, and the gpu-culler's
rounds against a fake REST API and a real SQLite database."""

import datetime
import json

import pytest

from hub import courses, culling, gpu_culler, gpus
from hub.gpu_store import GpuAllocator
from hub.stop_reasons import StopReasons, home_page_notices

T0 = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.timezone.utc)
GPU = "GPU-00000000-0000-4000-8000-0000000000a1"
LIMITS = culling.Limits(gpu_idle_timeout=600, gpu_max_age=3600, gpu_idle_percent=5)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


def gpu_server(last_activity=0, since=0, gpus=(GPU,)):
    return culling.Server("ada", "", None, at(last_activity), tuple(gpus), at(since))


def cpu_server(last_activity=0):
    return culling.Server("bob", "", None, at(last_activity))


# -- maximum age: activity cannot extend it --
def test_max_age_stops_a_gpu_server_however_active():
    busy = {GPU: None}  # GPU in use, and activity a second ago
    assert culling.decide(gpu_server(last_activity=3598), LIMITS, busy, at(3599)) is None
    stop = culling.decide(gpu_server(last_activity=3599), LIMITS, busy, at(3600))
    assert stop.reason == "gpu_max_age" and "1 hour" in stop.message


def test_max_age_counts_from_when_the_server_got_its_gpu():
    assert culling.decide(gpu_server(last_activity=4000, since=1000), LIMITS, {GPU: None},
                          at(4599)) is None
    assert culling.decide(gpu_server(last_activity=4000, since=1000), LIMITS, {GPU: None},
                          at(4600)).reason == "gpu_max_age"


def test_max_age_does_not_touch_cpu_servers_and_zero_means_none():
    assert culling.decide(cpu_server(last_activity=9000), LIMITS, {}, at(9001)) is None
    no_limit = culling.Limits(gpu_max_age=0)
    assert culling.decide(gpu_server(last_activity=9000), no_limit, {}, at(9001)) is None


# -- GPU utilisation --
def test_an_unused_gpu_stops_its_server_although_the_notebook_is_active():
    low = culling.track_low_use({}, {GPU.lower(): 1.0}, 5, at(100))
    server = gpu_server(last_activity=699, gpus=(GPU.lower(),))
    assert culling.decide(server, LIMITS, low, at(699)) is None
    low = culling.track_low_use(low, {GPU.lower(): 0.0}, 5, at(700))
    stop = culling.decide(server, LIMITS, low, at(700))
    assert stop.reason == "gpu_unused" and "10 minutes" in stop.message and "5%" in stop.message


def test_a_used_gpu_keeps_its_server_although_nobody_types():
    low = culling.track_low_use({}, {GPU: 97.0}, 5, at(100))
    assert low == {GPU: None}
    # no activity for far longer than the GPU idle timeout: the GPU's use is what counts
    assert culling.decide(gpu_server(last_activity=0), LIMITS, low, at(3000)) is None


def test_one_busy_sample_restarts_the_low_use_window():
    low = culling.track_low_use({}, {GPU: 0.0}, 5, at(0))
    low = culling.track_low_use(low, {GPU: 50.0}, 5, at(300))
    low = culling.track_low_use(low, {GPU: 0.0}, 5, at(301))
    assert low[GPU] == at(301)
    assert culling.decide(gpu_server(last_activity=0), LIMITS, low, at(900)) is None
    assert culling.decide(gpu_server(last_activity=0), LIMITS, low, at(901)).reason == "gpu_unused"


def test_low_use_before_the_server_got_the_gpu_does_not_count():
    low = culling.track_low_use({}, {GPU: 0.0}, 5, at(0))  # idle, and free, since 0
    server = gpu_server(last_activity=1000, since=1000)
    assert culling.decide(server, LIMITS, low, at(1599)) is None
    assert culling.decide(server, LIMITS, low, at(1600)).reason == "gpu_unused"


def test_without_measurements_activity_stands_in_for_gpu_use():
    assert culling.decide(gpu_server(last_activity=100), LIMITS, {}, at(699)) is None
    stop = culling.decide(gpu_server(last_activity=100), LIMITS, {}, at(700))
    assert stop.reason == "gpu_idle"
    # the same idleness on a CPU server is jupyterhub-idle-culler's business, later
    assert culling.decide(cpu_server(last_activity=100), LIMITS, {}, at(700)) is None


def test_a_busy_shared_gpu_is_not_its_holders_own_use():
    low = {GPU: None}
    # exclusive: busy GPU, idle notebook -> kept; shared: the activity decides
    assert culling.decide(gpu_server(last_activity=0), LIMITS, low, at(700), exclusive=True) is None
    assert culling.decide(gpu_server(last_activity=0), LIMITS, low, at(700),
                          exclusive=False).reason == "gpu_idle"
    # an unused shared GPU is unused by every holder
    low = {GPU: at(0)}
    assert culling.decide(gpu_server(last_activity=699), LIMITS, low, at(700),
                          exclusive=False).reason == "gpu_unused"


def test_every_gpu_of_a_server_must_be_unused():
    other = "GPU-00000000-0000-4000-8000-0000000000a2"
    low = {GPU: at(0), other: None}
    assert culling.decide(gpu_server(gpus=(GPU, other)), LIMITS, low, at(5000 % 3600)) is None
    low = {GPU: at(0), other: at(0)}
    assert culling.decide(gpu_server(gpus=(GPU, other)), LIMITS, low, at(600)).reason == "gpu_unused"


def test_unknown_samples_are_not_measurements():
    assert culling.track_low_use({GPU: at(0)}, {GPU: None}, 5, at(10)) == {}


# -- courses --
CATALOG = """
courses:
  - slug: intro
    display_name: Intro
    image: gpuhub/user:1
    default: true
  - slug: dl
    display_name: Deep learning
    image: gpuhub/user:1
    gpus: 1
    gpu_max_age: 7200
    gpu_idle_timeout: 0
  - slug: quick
    display_name: Quick
    image: gpuhub/user:1
    idle_timeout: 900
"""


def test_courses_override_the_hub_limits():
    catalog = courses.parse_catalog(CATALOG)
    policy = culling.Policy.build(LIMITS, catalog)
    assert policy.limits("dl") == culling.Limits(gpu_idle_timeout=0, gpu_max_age=7200,
                                                 gpu_idle_percent=5)
    assert policy.limits("") == policy.limits(None) == policy.limits("intro") == LIMITS
    assert policy.limits(["not", "a", "slug"]) == LIMITS
    assert policy.limits("quick").idle_timeout == 900
    # a course's own idle timeout, for CPU servers too
    server = culling.Server("cy", "", "quick", at(0))
    assert culling.decide(server, policy.limits("quick"), {}, at(899)) is None
    assert culling.decide(server, policy.limits("quick"), {}, at(900)).reason == "idle"
    # through JSON, as the service gets it
    assert culling.Policy.from_json(json.loads(json.dumps(policy.as_json()))) == policy
    assert policy.interval() == 60 and culling.Policy.build(
        culling.Limits(gpu_max_age=20), catalog).interval() == 5


@pytest.mark.parametrize("field, value, expected", [
    ("gpu_max_age", -1, "gpu_max_age"), ("gpu_idle_timeout", "1h", "gpu_idle_timeout"),
    ("idle_timeout", True, "idle_timeout"), ("gpu_max_age", 10**9, "gpu_max_age"),
])
def test_bad_course_limits_are_refused_naming_the_field(field, value, expected):
    text = CATALOG.replace("    gpu_max_age: 7200\n", f"    {field}: {json.dumps(value)}\n")
    if field != "gpu_max_age":
        text = text.replace("    gpu_idle_timeout: 0\n", "")
    with pytest.raises(courses.CatalogError) as e:
        courses.parse_catalog(text, "catalog.yaml")
    assert f"field '{expected}'" in str(e.value) and "slug 'dl'" in str(e.value), str(e.value)


def test_the_session_deadline_jupyterlab_gets():
    env = culling.session_env(LIMITS, at(0.4))
    assert env == {"GPUHUB_GPU_DEADLINE": "2026-12-01T10:00:00Z", "GPUHUB_GPU_WARNING": "600"}
    assert culling.session_env(culling.Limits(), at(0)) == {}


# -- the service's round: REST API faked, database real --
class FakeHub:
    """What GET /users?state=ready answers and which DELETEs the culler sent."""

    def __init__(self, users):
        self.users, self.deleted = users, []

    async def api(self, method, path, **kwargs):
        if method == "DELETE":
            self.deleted.append(path)
            return None
        assert path.startswith("/users?state=ready"), path
        return type("R", (), {"body": json.dumps({"items": self.users, "_pagination": {}})})


class FixedUsage(gpu_culler.UsageSource):
    def __init__(self, usage):
        self.usage = usage

    def sample(self):
        return self.usage


def server_model(course="", last_activity=T0):
    return {"ready": True, "user_options": {"course": course},
            "last_activity": last_activity.isoformat().replace("+00:00", "Z")}


async def test_a_round_stops_the_unused_gpu_server_and_keeps_why(tmp_path):
    db_url = f"sqlite:///{tmp_path}/hub.sqlite"
    others = "GPU-00000000-0000-4000-8000-0000000000a2"
    allocator = GpuAllocator(db_url, gpus.parse_inventory(f"{GPU},{others}", "test"), gpus.Policy())
    allocator.allocate("idle", "", 1)
    allocator.allocate("busy", "", 1)
    idle_gpu = allocator.held_by("idle", "")[0].uuid
    busy_gpu = allocator.held_by("busy", "")[0].uuid
    since = allocator.holdings()[0].since
    hub = FakeHub([{"name": n, "servers": {"": server_model()}} for n in ("idle", "busy", "cpu")])
    clock = [since]
    culler = gpu_culler.Culler("http://hub/api", "token", culling.Policy.build(LIMITS), allocator.engine,
                               StopReasons(db_url), FixedUsage({idle_gpu.lower(): 0.0, busy_gpu.lower(): 80.0}),
                               clock=lambda: clock[0])
    culler.api = hub.api
    assert await culler.round() == []
    clock[0] = since + datetime.timedelta(seconds=600)
    stopped = await culler.round()
    assert [(s.user, stop.reason) for s, stop in stopped] == [("idle", "gpu_unused")]
    assert hub.deleted == ["/users/idle/server"]
    # the home page tells idle (once the server is gone) why
    user = type("U", (), {"name": "idle", "spawners": {}})
    [notice] = home_page_notices(StopReasons(db_url))(user)
    assert notice["reason"] == "gpu_unused" and "was not used" in notice["text"], notice
    assert home_page_notices(StopReasons(db_url))(None) == []
    # ... and forgets it once that server runs again (a CPU one, this time)
    allocator.release("idle", "")
    hub.users = [{"name": "idle", "servers": {"": server_model()}}]
    await culler.round()
    assert home_page_notices(StopReasons(db_url))(user) == []


# -- the utilisation sources --
def test_the_usage_file_is_read_as_the_test_or_an_exporter_writes_it(tmp_path):
    path = tmp_path / "usage.json"
    source = gpu_culler.usage_source(f"file:{path}")
    assert source.sample() == {}  # not written yet: nothing measured
    path.write_text(json.dumps({GPU: 3, "1": 80.5, "GPU-bad": "high", "GPU-bool": True}))
    assert source.sample() == {GPU.lower(): 3.0, "1": 80.5}
    path.write_text("[1, 2")
    assert source.sample() == {}
    assert gpu_culler.usage_source("none").sample() == {}


def test_nvml_samples_each_gpu_under_its_uuid_and_index(monkeypatch):
    """NVML itself is faked here (no GPU on this machine): the calls nvidia-ml-py offers."""
    class Rates:
        gpu = 42

    class FakeNvml:
        nvmlInit = staticmethod(lambda: None)
        nvmlDeviceGetCount = staticmethod(lambda: 1)
        nvmlDeviceGetHandleByIndex = staticmethod(lambda i: f"handle{i}")
        nvmlDeviceGetUUID = staticmethod(lambda h: GPU.encode())
        nvmlDeviceGetUtilizationRates = staticmethod(lambda h: Rates())

    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml)
    assert gpu_culler.NvmlUsage().sample() == {GPU.lower(): 42.0, "0": 42.0}


def test_without_nvml_nothing_is_measured(monkeypatch):
    class NoDriver:
        @staticmethod
        def nvmlInit():
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(__import__("sys").modules, "pynvml", NoDriver)
    assert gpu_culler.NvmlUsage().sample() == {}


# -- how the hub runs it --
def test_the_service_has_least_scopes_and_runs_only_with_something_to_enforce():
    policy = culling.Policy.build(LIMITS)
    [service], [role] = gpu_culler.service(policy, "sqlite:////db", "nvml", "/py")
    assert role == {"name": "gpu-culler", "services": ["gpu-culler"],
                    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]}
    assert service["command"][:3] == ["/py", "-m", "hub.gpu_culler"]
    assert "api_token" not in service  # JupyterHub makes one for the managed service
    assert gpu_culler.service(culling.Policy.build(culling.Limits()), "sqlite:////db",
                              "nvml") == ([], [])
    from pathlib import Path
    assert (Path(service["environment"]["PYTHONPATH"]) / "hub" / "gpu_culler.py").exists()


def test_hub_config_starts_the_gpu_culler_only_with_gpus(tmp_path):
    from traitlets.config import Config

    from hub import config
    env = {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
           "GPUHUB_USER_IMAGE": "gpuhub/user:1", "GPUHUB_STATE_DIR": str(tmp_path),
           "GPUHUB_TLS_DIR": str(tmp_path / "tls"), "GPUHUB_DUMMY_PASSWORD": "x" * 16}
    c = Config()
    config.apply(c, env)
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "gpuhub-cli", "metrics"]
    c = Config()
    config.apply(c, {**env, "GPUHUB_GPUS": GPU, "GPUHUB_GPU_MAX_AGE": "7200"})
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "gpuhub-cli",
                                                          "gpu-culler", "metrics"]
    assert c.GpuhubSpawner.cull_policy.default.gpu_max_age == 7200
    assert "at the latest 2 hours" in c.JupyterHub.template_vars["gpuhub_culling"]


def test_the_home_page_shows_why_and_escapes_it():
    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
    from jupyterhub._data import DATA_FILES_PATH

    from hub import auth
    default = f"{DATA_FILES_PATH}/templates"
    env = Environment(autoescape=True, loader=ChoiceLoader([
        PrefixLoader({"templates": FileSystemLoader([default])}, "/"),
        FileSystemLoader([auth.TEMPLATES, default])]))
    page = env.get_template("home.html").render(
        static_url=lambda *a, **k: "/static", base_url="/", url="/hub/spawn",
        default_server=type("S", (), {"active": False}), user=None,
        gpuhub_stop_notices=[{"reason": "gpu_unused", "text": "stopped <b>because</b>"}],
        gpuhub_culling="Servers with a GPU stop after 30 minutes")
    assert 'data-reason="gpu_unused">stopped &lt;b&gt;because&lt;/b&gt;</div>' in page
    assert "Servers with a GPU stop after 30 minutes" in page and "My Server" in page


def test_admins_list_the_kept_reasons(tmp_path, capsys):
    from hub import stop_reasons
    db_url = f"sqlite:///{tmp_path}/hub.sqlite"
    assert stop_reasons.main(["--db-url", db_url]) == 0
    assert "no server stopped" in capsys.readouterr().out
    StopReasons(db_url).record("ada", "", "gpu_max_age", "GPU sessions last at most 4 hours, "
                               "and yours had reached that.", at(0))
    stop_reasons.main(["--db-url", db_url])
    assert capsys.readouterr().out == ("2026-12-01T09:00:00Z ada gpu_max_age: GPU sessions last "
                                       "at most 4 hours, and yours had reached that.\n")


def test_the_home_page_line_says_when_servers_stop():
    assert culling.summary(culling.Policy.build(LIMITS), 3600) == (
        "Servers stop after 1 hour without activity. Servers with a GPU stop after 10 minutes "
        "without using the GPU or at the latest 1 hour after they got it; your files are kept.")
    with_courses = culling.summary(culling.Policy.build(LIMITS, courses.parse_catalog(CATALOG)), 0)
    assert with_courses.startswith("Servers with a GPU") and "some courses set their own" in with_courses
    assert culling.summary(culling.Policy.build(culling.Limits()), 0) == ""


def test_the_service_reads_what_jupyterhub_gives_it(tmp_path):
    from hub import settings, stop_reasons
    assert settings.jupyterhub_service({"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
                                        "JUPYTERHUB_API_TOKEN": "t"}) == (
        "http://127.0.0.1:8081/hub/api", "t")
    with pytest.raises(settings.SettingsError) as e:
        settings.jupyterhub_service({"JUPYTERHUB_API_URL": "http://x"})
    assert "JUPYTERHUB_API_TOKEN is not set" in str(e.value)
    # the admin command finds the hub's database where GPUHUB_STATE_DIR says
    StopReasons(f"sqlite:///{tmp_path}/jupyterhub.sqlite").record("bo", "", "idle", "m.", at(0))
    assert stop_reasons.main([], {"GPUHUB_STATE_DIR": str(tmp_path)}) == 0
