"""Metrics end to end: the running hub, scraped at /hub/metrics with the `metrics`
service's token as Prometheus would (monitoring/prometheus.yml), after one spawn of a
GPU course; every metric monitoring/grafana-dashboard.json queries is in the exposition,
and the same token is refused everywhere else.

No GPU here: the inventory is a fake UUID, and Docker's no-op nvidia hook accepts the
device request (as in test_gpus_e2e.py)."""

import secrets

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitoring.promql import dashboard_metrics

from .stack import REPO

pytestmark = pytest.mark.e2e

GPU = "GPU-00000000-0000-4000-8000-0000000000a1"
TOKEN = secrets.token_hex(24)


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory, docker_client, standin_bases):
    from .conftest import make_stack
    s = make_stack(tmp_path_factory, docker_client, "gpuhubmetrics", real_traefik=False, extra_env={
        "GPUHUB_GPUS": GPU,
        "GPUHUB_CATALOG": "/srv/gpuhub/catalog/catalog.yaml",
        "GPUHUB_METRICS_TOKEN": TOKEN,
    })
    (s.dir / "catalog" / "catalog.yaml").write_text(yaml.safe_dump({"courses": [
        {"slug": "deep-learning", "display_name": "Deep learning", "description": "One GPU",
         "image": s.env["GPUHUB_USER_IMAGE"], "default": True, "gpus": 1},
    ]}))
    try:
        s.up()
        yield s
    finally:
        s.down()


def scrape(stack, token=TOKEN):
    return requests.get(f"{stack.hub_url}/hub/metrics", timeout=30,
                        headers={"Authorization": f"Bearer {token}"} if token else {})


def samples(text):
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found, name, **labels):
    matching = [s.value for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert matching, f"no sample {name}{labels} in /hub/metrics"
    return sum(matching)


def test_the_dashboard_reads_only_what_the_running_hub_exposes(metrics_stack):
    s = metrics_stack
    assert s.api("POST", "/users/student1").status_code in (201, 409)
    s.start_server("student1", course="deep-learning")
    r = scrape(s)
    assert r.status_code == 200, r.text
    found = samples(r.text)
    queried = dashboard_metrics(REPO / "monitoring" / "grafana-dashboard.json")
    missing = queried - {x.name for x in found}
    assert not missing, f"the dashboard queries metrics the hub does not expose: {sorted(missing)}"
    assert value(found, "gpuhub_gpus_total") == 1
    assert value(found, "gpuhub_gpus_in_use") == 1
    assert value(found, "gpuhub_gpu_queue_length") == 0
    assert value(found, "gpuhub_spawn_duration_seconds_count",
                 course="deep-learning", status="success") == 1
    assert value(found, "gpuhub_gpu_seconds_total", course="deep-learning") > 0
    assert value(found, "jupyterhub_running_servers") == 1
    # no user names in gpuhub's labels: a scrape says how many, not who
    assert not [x for x in found if x.name.startswith("gpuhub_") and "student1" in str(x.labels)]
    print(f"\n/hub/metrics: {len(found)} samples, every one of the dashboard's "
          f"{len(queried)} metrics among them")


def test_the_metrics_token_reads_metrics_and_nothing_else(metrics_stack):
    s = metrics_stack
    assert scrape(s, token=None).status_code == 403, "/hub/metrics without a token"
    assert scrape(s, token="not-" + TOKEN).status_code == 403
    headers = {"Authorization": f"token {TOKEN}"}
    api = f"{s.hub_url}/hub/api"
    assert s.api("POST", "/users/student2").status_code in (201, 409)
    for method, path in [("GET", "/users"), ("GET", "/users/student2"),
                         ("POST", "/users/student2/server"), ("DELETE", "/users/student1/server"),
                         ("GET", "/gpus")]:
        r = requests.request(method, api + path, headers=headers, timeout=30, json={})
        assert r.status_code in (403, 404), f"{method} {path} with the metrics token: {r.status_code} {r.text}"
        assert r.status_code == 403 or method == "GET", (method, path, r.status_code)
    r = requests.get(api + "/users", headers=headers, timeout=30)
    assert r.status_code == 403, r.text
    r = requests.post(api + "/users/student2/server", headers=headers, timeout=30, json={})
    assert r.status_code == 403, r.text
    assert s.user_container("student2") is None, "the metrics token started a server"
    assert s.api("GET", "/users/student1").json()["servers"][""]["ready"], \
        "the metrics token stopped a server"
    s.stop_server("student1")  # the hub removes the server's own network with it
