"""The example monitoring in monitoring/: the Grafana dashboard queries only metrics the
hub exposes, the Prometheus example scrapes /hub/metrics with a token file, and the
`metrics` service may read metrics and nothing else. A running hub's exposition is
checked against the dashboard in tests/e2e/test_metrics_e2e.py."""

import json
from pathlib import Path

import pytest
import yaml

from monitoring.promql import dashboard_exprs, dashboard_metrics, metric_names

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "grafana-dashboard.json"


@pytest.mark.parametrize("expr, names", [
    ("gpuhub_gpus_total", {"gpuhub_gpus_total"}),
    ('jupyterhub_active_users{period="24h"}', {"jupyterhub_active_users"}),
    ("sum by (reason) (increase(gpuhub_gpu_refusals_total[$__rate_interval]))",
     {"gpuhub_gpu_refusals_total"}),
    ('histogram_quantile(0.99, sum by (le, course) (rate(x_bucket{handler=~"a.b(c)*", le!="1"}[5m])))',
     {"x_bucket"}),
    ("sum without (instance) (a) / on (job) group_left (course) b * 3600 > bool 1e3",
     {"a", "b"}),
    ("rate(a[1h:5m] offset 1d) or vector(0)", {"a"}),
    ('label_replace(up, "dst", "$1", "src", "(.*)") unless absent(nothing_here)',
     {"up", "nothing_here"}),
    ('a{name="sum(fake_metric[5m])"} + max(b)', {"a", "b"}),
    ("topk(3, count by (course) (c)) and d:recorded:rule", {"c", "d:recorded:rule"}),
])
def test_metric_names_of_promql(expr, names):
    assert metric_names(expr) == names


def exposed_sample_names():
    """Sample names the metrics registered in the hub's process give: gpuhub's and
    JupyterHub's (a labelled metric's family exists before its first sample does)."""
    from prometheus_client.core import REGISTRY

    import hub.gpu_hours  # noqa: F401  (registers gpuhub_gpu_seconds)
    import hub.gpus  # noqa: F401
    import hub.metrics  # noqa: F401
    import jupyterhub.metrics  # noqa: F401
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
                "gauge": [""], "summary": ["", "_count", "_sum"]}
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_every_metric_the_dashboard_queries_is_registered_by_the_hub():
    queried = dashboard_metrics(DASHBOARD)
    assert {"gpuhub_gpus_total", "gpuhub_gpus_in_use", "gpuhub_gpu_refusals_total",
            "gpuhub_gpu_queue_length", "gpuhub_spawn_duration_seconds_bucket",
            "gpuhub_gpu_seconds_total", "jupyterhub_request_duration_seconds_bucket"} <= queried
    missing = queried - exposed_sample_names()
    assert not missing, f"{DASHBOARD.name} queries metrics nobody registers: {sorted(missing)}"


def test_the_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    assert len(dashboard_exprs(dashboard)) >= len(dashboard["panels"])


def test_the_prometheus_example_scrapes_hub_metrics_with_a_token_file():
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/hub/metrics"
    assert job["authorization"]["credentials_file"]
    assert "credentials" not in job["authorization"], "a token belongs in a file, not in the config"


def test_the_metrics_service_may_read_metrics_and_nothing_else(tmp_path):
    from traitlets.config import Config

    from hub import config
    env = {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
           "GPUHUB_USER_IMAGE": "gpuhub/user:1", "GPUHUB_STATE_DIR": str(tmp_path),
           "GPUHUB_TLS_DIR": str(tmp_path / "tls"), "GPUHUB_DUMMY_PASSWORD": "x" * 16}
    c = Config()
    config.apply(c, env)
    [service] = [s for s in c.JupyterHub.services if s["name"] == "metrics"]
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == "metrics"]
    assert role == {"name": "metrics", "scopes": ["read:metrics"], "services": ["metrics"]}
    generated = (tmp_path / "metrics-token").read_text()
    assert service["api_token"] == generated and len(generated) >= 32
    assert (tmp_path / "metrics-token").stat().st_mode & 0o077 == 0
    assert c.JupyterHub.authenticate_prometheus is True
    # the same token after a restart; the one from .env wins over it
    c = Config()
    config.apply(c, env)
    assert [s for s in c.JupyterHub.services if s["name"] == "metrics"][0]["api_token"] == generated
    c = Config()
    config.apply(c, {**env, "GPUHUB_METRICS_TOKEN": "a" * 40})
    assert [s for s in c.JupyterHub.services if s["name"] == "metrics"][0]["api_token"] == "a" * 40


@pytest.mark.parametrize("raw", ["short", "a" * 31, "a" * 40 + " b", "x" * 257, "ä" * 40])
def test_a_bad_metrics_token_is_refused_naming_the_variable(raw):
    from hub import settings
    _, problems = settings.read({"GPUHUB_METRICS_TOKEN": raw}, only=["GPUHUB_METRICS_TOKEN"])
    assert problems and problems[0].startswith("GPUHUB_METRICS_TOKEN=")


def test_the_spawn_timer_counts_success_and_failure_by_course():
    from hub.metrics import SPAWN_DURATION, spawn_timer

    def count(course, status):
        return SPAWN_DURATION.labels(course=course, status=status)._sum.get(), \
            [s for s in SPAWN_DURATION.collect()[0].samples
             if s.name.endswith("_count") and s.labels == {"course": course, "status": status}]

    ticks = iter([10.0, 12.5, 20.0, 21.0])
    clock = lambda: next(ticks)  # noqa: E731
    with spawn_timer("unit-test-course", clock=clock):
        pass
    with pytest.raises(RuntimeError), spawn_timer("unit-test-course", clock=clock):
        raise RuntimeError("the container did not start")
    ok_sum, [ok] = count("unit-test-course", "success")
    failed_sum, [failed] = count("unit-test-course", "failure")
    assert (ok_sum, ok.value) == (2.5, 1.0)
    assert (failed_sum, failed.value) == (1.0, 1.0)
    with spawn_timer(None, clock=iter([0.0, 1.0]).__next__):
        pass
    assert count("none", "success")[1][0].value == 1.0
