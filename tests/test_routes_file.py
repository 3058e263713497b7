"""The routes file the hub writes is readable by the proxy's group (hub/routes_file.py)."""

from jupyterhub_traefik_proxy import traefik_utils

from hub import routes_file


def test_routes_file_is_written_atomically_with_mode_640(tmp_path):
    path = tmp_path / "hub-routes.toml"
    handler = traefik_utils.TraefikConfigFileHandler(str(path))
    before = traefik_utils.atomic_writing  # other tests may have applied the config already
    traefik_utils.atomic_writing = getattr(before, "unwrapped", before)
    try:
        handler.atomic_dump({"http": {"routers": {}}})
        assert path.stat().st_mode & 0o777 == 0o600  # upstream, unwrapped
        routes_file.install()
        routes_file.install()  # idempotent: wraps once
        handler.atomic_dump({"http": {"routers": {"a": {"rule": "PathPrefix(`/`)"}}}})
        assert path.stat().st_mode & 0o777 == 0o640
        assert handler.load()["http"]["routers"]["a"]["rule"] == "PathPrefix(`/`)"
        assert [p.name for p in tmp_path.iterdir()] == ["hub-routes.toml"], "no temp file left"
    finally:
        traefik_utils.atomic_writing = before
