"""The `gpuhub` admin CLI's command line (hub/cli.py, hub/admin.py): arguments, exit
codes, JSON, the refusals that need no engine, and the pieces behind backup and the soft
quota. Against a running stack (Docker through the guard): tests/e2e/test_admin_cli_e2e.py."""

import json
import sqlite3

import pytest
from hypothesis import given, strategies as st

from hub import admin, cli, gpus, names, settings, volumes
from hub.gpu_store import GpuAllocator

UUID = "GPU-00000001-aaaa-4bbb-8ccc-000000000001"
ENV = {"GPUHUB_USER_IMAGE": "gpuhub/user:test", "GPUHUB_GPUS": UUID}


def exit_code(argv, environ=ENV, capsys=None):
    with pytest.raises(SystemExit) as e:
        cli.main(argv, dict(environ))
    return e.value.code


@pytest.mark.parametrize("argv", [
    [], ["nosuch"], ["stop"], ["free-gpu"], ["backup", "alice"], ["restore"],
    ["backup-all"], ["status", "extra"], ["usage", "--nosuch"], ["images", "--force"],
])
def test_bad_arguments_print_usage_and_exit_2(argv, capsys):
    assert exit_code(argv) == 2
    assert "usage: gpuhub" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["gpus", "gpu-hours", "status", "stop alice",
                                     "free-gpu X", "backup alice -", "restore alice -",
                                     "backup-all /tmp/x", "usage", "images"])
def test_every_command_takes_json(command):
    assert cli.parser().parse_args(command.split() + ["--json"]).json is True


def test_a_user_name_outside_the_pattern_is_refused_before_any_docker_call(capsys):
    assert exit_code(["backup", "Bob/../x", "-"]) == admin.USAGE
    assert "is not a user name" in capsys.readouterr().err


def test_bad_settings_exit_2_naming_the_variable(capsys):
    assert exit_code(["usage"], environ={"GPUHUB_USER_IMAGE": "x",
                                         "GPUHUB_HOME_QUOTA": "lots"}) == 2
    assert "GPUHUB_HOME_QUOTA='lots' is not valid" in capsys.readouterr().err


class FakeContext(admin.Context):
    """The real settings and allocator; the engine's containers given."""

    def __init__(self, tmp_path, running):
        super().__init__({**ENV, "GPUHUB_STATE_DIR": str(tmp_path)})
        self._running = running
        self.alloc = GpuAllocator(f"sqlite:///{tmp_path}/jupyterhub.sqlite",
                                  gpus.parse_inventory(UUID, "test"), self.s.gpu_policy)

    def allocator(self):
        return self.alloc

    def containers(self):
        return {key: {"State": "running"} for key in self._running}


def run(ctx, argv):
    args = cli.parser().parse_args(argv)
    return admin.COMMANDS[args.command](ctx, args)


def test_free_gpu_is_refused_while_a_running_server_holds_it(tmp_path, capsys):
    ctx = FakeContext(tmp_path, running={("ada", "")})
    ctx.alloc.allocate("ada", "", 1)
    with pytest.raises(admin.CliError) as e:
        run(ctx, ["free-gpu", UUID])
    assert e.value.code == admin.REFUSED and "running server of ada" in str(e.value)
    assert ctx.alloc.held_by("ada", "")  # still held
    assert run(ctx, ["free-gpu", UUID.lower(), "--force", "--json"]) == admin.OK
    assert json.loads(capsys.readouterr().out) == {"uuid": UUID, "released_from": ["ada"]}
    assert not ctx.alloc.held_by("ada", "")


def test_free_gpu_of_a_stale_allocation_and_of_an_unknown_gpu(tmp_path, capsys):
    ctx = FakeContext(tmp_path, running=set())  # the server's container is gone
    ctx.alloc.allocate("ada", "", 1)
    assert run(ctx, ["free-gpu", UUID]) == admin.OK
    assert "held by ada" in capsys.readouterr().out
    with pytest.raises(admin.CliError) as e:
        run(ctx, ["free-gpu", "GPU-nosuch"])
    assert e.value.code == admin.NOT_FOUND


def test_the_database_copy_is_a_consistent_sqlite_backup(tmp_path):
    source = tmp_path / "jupyterhub.sqlite"
    with sqlite3.connect(source) as db:
        db.execute("create table users (name text)")
        db.executemany("insert into users values (?)", [("ada",), ("bob",)])
    out = tmp_path / "backup"
    out.mkdir()
    copy = admin.copy_database(f"sqlite:///{source}", str(out))
    assert sqlite3.connect(copy).execute("select name from users").fetchall() == [("ada",), ("bob",)]
    with pytest.raises(admin.CliError):
        admin.copy_database("mysql://x/y", str(out))


@given(st.text(max_size=40))
def test_a_volume_name_maps_back_to_its_user(name):
    part = names.docker_name_part(name)
    assert names.from_docker_name_part(part) == name
    assert names.user_volume("gpuhub-user", name) == f"gpuhub-user-{part}"


@pytest.mark.parametrize("part", ["Alice", "a_b", "-4", "-zz", "a.b", "-61", "-ff"])
def test_names_no_escape_makes_are_not_users(part):
    with pytest.raises(ValueError):
        names.from_docker_name_part(part)


def test_home_quota_setting():
    parse = settings.BY_NAME["GPUHUB_HOME_QUOTA"].parse
    assert parse("") is None
    assert parse("10g") == 10 * 2**30 and parse("512M") == 512 * 2**20 and parse("4096") == 4096
    with pytest.raises(ValueError):
        parse("10 GB")


def test_the_over_quota_message_says_how_much_and_what_to_delete():
    message = volumes.over_quota_message(12 * 2**30, 10 * 2**30,
                                         [("checkpoints", 9 * 2**30), (".cache", 2**30)])
    assert "uses 12.0G, over its quota of 10.0G" in message
    assert "~/checkpoints 9.0G; ~/.cache 1.0G" in message


def test_the_cli_reads_the_hubs_database_url(tmp_path):
    """A PostgreSQL hub: backup-all and the allocator use GPUHUB_DB_URL, not the SQLite
    file of the state folder (found by the e2e test on PostgreSQL)."""
    ctx = admin.Context({**ENV, "GPUHUB_STATE_DIR": str(tmp_path),
                         "GPUHUB_DB_URL": "postgresql://gpuhub@postgres:5432/gpuhub"})
    assert ctx.db_url == "postgresql://gpuhub@postgres:5432/gpuhub"


def test_an_unreadable_sqlite_database_is_a_clear_error(tmp_path):
    with pytest.raises(admin.CliError, match="cannot copy the hub's database"):
        admin.copy_database(f"sqlite:///{tmp_path}/missing/jupyterhub.sqlite", str(tmp_path))
