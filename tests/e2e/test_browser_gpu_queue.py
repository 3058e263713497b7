"""In a real browser: a student whose GPU is taken sees their place in line on the
spawn-pending page, then JupyterLab once the GPU frees.

The deployment is test_browser_login.py's (real OpenID Connect provider, Chromium, the
hub and user images), imported as its fixtures, with one fake GPU for the hub (the no-op
nvidia hook lets Docker accept the device request) and a catalog whose only course wants
it (browser_stack_options)."""

import secrets

import pytest
import yaml

from . import test_browser_login as login
from .stack import wait_for
from .browser import Student, browser, dismiss_news_toast  # noqa: F401
from .test_browser_login import browser_stack, sign_in_through_sso, student  # noqa: F401
from .test_gpus_e2e import device_ids

# a second student in cs101, who holds the GPU first; added before the provider starts
# (users created through the API cannot start servers here: they have no login to refresh)
login.ACCOUNTS.setdefault("student2", {"password": secrets.token_urlsafe(12), "groups": ["cs101"]})

pytestmark = pytest.mark.e2e

GPU = "GPU-00000000-0000-4000-8000-0000000000b1"


@pytest.fixture(scope="module")
def browser_stack_options():
    def catalog(stack):
        (stack.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
            {"slug": "deep-learning", "display_name": "Deep learning", "description": "One GPU",
             "image": stack.env["GPUHUB_USER_IMAGE"], "default": True, "gpus": 1},
        ]}))
    return {"env": {"GPUHUB_GPUS": GPU, "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml",
                    "GPUHUB_GPU_QUEUE_TIMEOUT": "600"},
            "prepare": catalog}


def test_a_student_waits_in_line_then_gets_jupyterlab(browser_stack, browser, student):  # noqa: F811
    stack, page = student.stack, student.page
    holder = Student(browser, browser_stack)
    try:
        # another student signs in first and gets the only GPU
        sign_in_through_sso(holder, "student2")
        wait_for(lambda: stack.api("GET", "/users/student2").json()["servers"].get("", {}).get("ready"),
                 180, "student2's server to be ready")
        assert device_ids(stack.user_container("student2"))[0] == [GPU]

        sign_in_through_sso(student, "student1")
        page.wait_for_url("**/hub/spawn-pending/student1**", timeout=60_000)
        message = page.locator("#progress-message")
        # with GPUHUB_GPU_MAX_AGE the line also says about how long (", about N minutes")
        message.get_by_text("Waiting for a GPU: you are first in line").wait_for(timeout=60_000)
        assert "To leave the line, stop the server on your home page" in message.inner_text()
        student.shot("10-waiting-for-a-gpu")
        queue = stack.api("GET", "/gpus").json()["queue"]
        assert [(w["user"], w["position"]) for w in queue] == [("student1", 1)]

        # the GPU frees: the spawn goes on by itself and the page opens JupyterLab
        stack.stop_server("student2")
        page.wait_for_url("**/user/student1/lab**", timeout=180_000)
        page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
        dismiss_news_toast(page)
        student.shot("11-jupyterlab-after-the-line")
        assert device_ids(stack.user_container("student1"))[0] == [GPU]
        assert stack.api("GET", "/gpus").json()["queue"] == []
        stack.stop_server("student1")
        wait_for(lambda: stack.user_container("student1") is None, 60, "student1's container to go")
    except Exception as e:
        raise AssertionError(f"{e}\n{student.diagnostics()}") from e
    finally:
        holder.close()
    student.publish()
