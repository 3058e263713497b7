"""hub.config.apply's one error boundary: every problem of settings, TLS, catalog, GPUs
and login in one message, then one exit; and the start-up steps of hub.startup."""

import logging

import pytest
from traitlets.config import Config

from hub import config, startup

LOG = logging.getLogger("test")


def environ(tmp_path, **env):
    return {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
            "GPUHUB_DUMMY_PASSWORD": "sixteen-or-more-characters",
            "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1",
            "GPUHUB_STATE_DIR": str(tmp_path / "state"), "GPUHUB_TLS_DIR": str(tmp_path / "tls"),
            **env}


def test_every_problem_is_reported_at_once_and_the_hub_exits_once(tmp_path, capsys):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("courses:\n  - {slug: base, display_name: Base, image: a/b:1, gpu: 1}\n")
    env = environ(tmp_path, GPUHUB_MEM_LIMIT="8 GB", TLS_MODE="own",
                  GPUHUB_OWN_TLS_DIR=str(tmp_path / "no-tls"), GPUHUB_CATALOG=str(catalog),
                  GPUHUB_GPU_GROUP_CAPS="cs101=2", AUTH_PROVIDER="github")
    with pytest.raises(SystemExit) as e:
        config.apply(Config(), env)
    assert e.value.code == 1
    problems = e.value.problems
    expected = ["GPUHUB_MEM_LIMIT='8 GB' is not valid",  # a setting
                f"TLS_MODE=own: {tmp_path}/no-tls/cert.pem is missing",  # TLS
                f"{catalog}: courses[0] (slug 'base'): unknown field 'gpu'",  # the catalog
                "GPUHUB_GPU_GROUP_CAPS: group 'cs101' does not exist",  # GPUs
                "OAUTH_CLIENT_ID is not set"]  # the login
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    err = capsys.readouterr().err
    assert err.count("gpuhub cannot start") == 1
    assert all(p in err for p in problems)


def test_a_step_whose_settings_did_not_parse_is_skipped(tmp_path):
    """A bad GPUHUB_GPUS is one problem; the GPU step does not add a second about it."""
    with pytest.raises(SystemExit) as e:
        config.apply(Config(), environ(tmp_path, GPUHUB_GPUS="0,,1"))
    assert e.value.problems == ["GPUHUB_GPUS: item 2 is empty (two commas in a row, or one "
                                "at the start or end?)"]


def test_a_good_environment_configures_the_hub(tmp_path):
    c = Config()
    s = config.apply(c, environ(tmp_path, GPUHUB_GROUPS="cs101"))
    assert s.domain == "hub.example.edu"
    assert c.JupyterHub.db_url == f"sqlite:///{tmp_path}/state/jupyterhub.sqlite"
    assert c.JupyterHub.authenticator_class == "hub.authenticators.GpuhubDummyAuthenticator"
    assert c.JupyterHub.load_groups == {"cs101": {}}
    assert c.TraefikFileProviderProxy.traefik_api_url == "http://10.254.254.6:8099"
    password = (tmp_path / "state" / "traefik-api-password").read_text()
    assert c.TraefikFileProviderProxy.traefik_api_password == password
    assert c.GpuhubSpawner.gpu_allocator is None  # no GPUs here: no allocator, no Docker


def test_errors_other_than_an_admins_mistakes_are_not_swallowed(tmp_path):
    def broken(s, ready, log):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        startup.prepare(object(), [], LOG, steps=[(broken, (), False)])


def test_known_groups_come_from_jupyterhubs_own_tables(tmp_path):
    from jupyterhub import orm
    database = tmp_path / "jupyterhub.sqlite"
    assert startup.known_groups(("cs101",), f"sqlite:///{database}") == {"cs101"}
    assert not database.exists(), "the first start leaves the database to JupyterHub"
    database.write_bytes(b"")  # a file JupyterHub has not initialised yet: no groups table
    assert startup.known_groups(("cs101",), f"sqlite:///{database}") == {"cs101"}
    database.unlink()
    session = orm.new_session_factory(f"sqlite:///{database}")()
    session.add_all([orm.Group(name="research"), orm.Group(name="staff")])
    session.commit()
    session.close()
    assert startup.known_groups(("cs101",), f"sqlite:///{database}") == {"cs101", "research", "staff"}
