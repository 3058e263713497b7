"""The same deployment behind real Traefik. Runs where the `traefik:v3` image exists;
elsewhere the `traefik_stack` fixture skips with the reason (no registry here)."""

import uuid

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_http_redirects_to_https_with_safe_headers(traefik_stack):
    s = traefik_stack
    r = requests.get(f"http://localhost:{s.env['GPUHUB_HTTP_PORT']}/hub/login",
                     allow_redirects=False, timeout=30)
    assert r.status_code in (301, 308) and r.headers["Location"].startswith("https://"), r.headers
    r = requests.get(f"{s.hub_url}/hub/login", verify=False, timeout=30)
    assert r.status_code == 200
    assert "max-age=31536000" in r.headers["Strict-Transport-Security"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_dashboard_and_api_are_not_public(traefik_stack):
    s = traefik_stack
    for path in ("/dashboard/", "/api/overview", "/api/http/routers"):
        r = requests.get(f"{s.hub_url}{path}", verify=False, timeout=30, allow_redirects=False)
        assert r.status_code in (302, 404), f"{path} answered {r.status_code}"


def test_user_server_through_traefik(traefik_stack):
    s = traefik_stack
    user = "tina"
    assert s.api("POST", f"/users/{user}").status_code in (201, 409)
    s.start_server(user)
    marker = str(uuid.uuid4())
    url = f"{s.server_url(user)}/api/contents/through-traefik.txt"
    headers = {"Authorization": f"token {s.token}"}
    r = requests.put(url, headers=headers, verify=False, timeout=30,
                     json={"type": "file", "format": "text", "content": marker})
    assert r.status_code in (200, 201), r.text
    assert requests.get(url, headers=headers, verify=False, timeout=30).json()["content"] == marker
    s.stop_server(user)
