"""What a student sees of a GPU session's limits, in a real browser: JupyterLab counts
down the time left and warns before the end; after the hub stops the server, its home
page says why.

The deployment is test_browser_login's (real OpenID Connect provider, Chromium, the
hub and user images; see its docstring for the one proxy difference), with a fake GPU
(the no-op nvidia hook) and a course whose GPU sessions last GPU_MAX_AGE seconds. No GPU
utilisation is measured (GPUHUB_GPU_USAGE_SOURCE=none): only the maximum age ends it.

Screenshots go to test-artifacts/screenshots/gpus-*.png; with GPUHUB_UPDATE_DOCS_IMAGES=1
a pass copies them to docs/images/ for docs/gpus.md.
"""

import os
import re
import shutil

import pytest
import yaml
from playwright.sync_api import expect

from .browser import DOCS_IMAGES, SCREENSHOTS, browser, dismiss_news_toast, goto  # noqa: F401
from .stack import wait_for
from .test_browser_login import browser_stack, sign_in_through_sso, student  # noqa: F401

pytestmark = pytest.mark.e2e

GPU = "GPU-00000000-0000-4000-8000-0000000000e1"
# The test waits for the end, so the session is short: 90 s, still well beyond the lab's
# start on a busy machine; JupyterLab warns when 70 s are left (20 s in). The docs'
# pictures (GPUHUB_UPDATE_DOCS_IMAGES=1) show the 150-second session docs/gpus.md names.
GPU_MAX_AGE, WARNING = (150, 120) if os.environ.get("GPUHUB_UPDATE_DOCS_IMAGES") == "1" else (90, 70)


@pytest.fixture(scope="module")
def browser_stack_options():
    def catalog(stack):
        (stack.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
            {"slug": "deep-learning", "display_name": "Deep learning", "default": True,
             "image": stack.env["GPUHUB_USER_IMAGE"], "gpus": 1, "gpu_max_age": GPU_MAX_AGE},
        ]}))
    return {"env": {"GPUHUB_GPUS": GPU, "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml", "GPUHUB_GPU_WARNING": str(WARNING),
                    "GPUHUB_GPU_USAGE_SOURCE": "none"},
            "prepare": catalog}


def shot(page, name, taken):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"gpus-{name}.png"
    page.screenshot(path=str(path))
    taken.append(path)


def test_jupyterlab_counts_down_the_gpu_session_and_the_home_page_says_why_it_ended(student):
    stack, page, taken = student.stack, student.page, []
    try:
        sign_in_through_sso(student, "student1")
        page.wait_for_url("**/user/student1/lab**", timeout=180_000)
        page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
        dismiss_news_toast(page)
        # the hub gave the server its GPU and the deadline; the status bar counts down
        container = stack.user_container("student1")
        code, out = container.exec_run(["printenv", "GPUHUB_GPU_DEADLINE"])
        assert code == 0 and out.decode().strip().endswith("Z"), out.decode()
        countdown = page.locator("#jp-main-statusbar #gpuhub-gpu-session")
        countdown.wait_for(timeout=30_000)
        first = countdown.inner_text()
        assert re.fullmatch(r"GPU session: \d+:\d\d left \(ends \d\d:\d\d\)", first), first
        wait_for(lambda: countdown.inner_text() != first, 10, "the countdown to tick")
        shot(page, "01-countdown", taken)

        # some minutes (here: seconds) before the end, a warning that stays until dismissed
        toast = page.get_by_text(re.compile("Your GPU session ends in"))
        toast.wait_for(timeout=(GPU_MAX_AGE - WARNING + 30) * 1000)
        assert "Save your work" in toast.inner_text()
        expect(toast).to_be_in_viewport(ratio=1.0)  # slid in completely, for the screenshot
        shot(page, "02-warning", taken)

        # at the deadline the hub stops the server; its home page says why
        wait_for(lambda: "" not in stack.api("GET", "/users/student1").json()["servers"],
                 GPU_MAX_AGE * 2, "the gpu-culler to stop student1's server")
        goto(student, f"{student.url}/hub/home")
        notice = page.locator(".gpuhub-stop-notice")
        notice.wait_for(timeout=30_000)
        text = notice.inner_text()
        assert f"GPU sessions last at most {GPU_MAX_AGE} seconds" in text and "files are kept" in text, text
        shot(page, "03-home-says-why", taken)
        assert stack.client.volumes.get(f"{stack.env['GPUHUB_VOLUME_PREFIX']}-student1")
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    if os.environ.get("GPUHUB_UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copy(path, DOCS_IMAGES / path.name)
