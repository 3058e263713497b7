"""hub.dbmove: a hub's SQLite database (made by JupyterHub's own models, with users, a
group, a token, a server, a GPU allocation, a place in the line and a stop reason) moved
to PostgreSQL, then opened by JupyterHub and the allocator there; and the refusals. The
moves run against the stand-in PostgreSQL server (tests/postgres_standin.py)."""

import datetime

import pytest
from sqlalchemy import create_engine, inspect, text

from hub import dbmove, gpus
from hub.gpu_store import GpuAllocator
from hub.stop_reasons import StopReasons
from tests.postgres_standin import postgres_url  # noqa: F401 (a fixture)

UUIDS = [f"GPU-{i:08x}-aaaa-4bbb-8ccc-{i:012x}" for i in range(1, 3)]


def inventory():
    return gpus.parse_inventory(",".join(UUIDS), "test")


def sqlite_hub(tmp_path):
    """A SQLite database as a running hub leaves it."""
    from jupyterhub import orm
    url = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    db = orm.new_session_factory(url)()
    ada, bo = orm.User(name="ada", admin=True), orm.User(name="bo")
    # the OAuth client JupyterHub creates for itself at its first start (tokens need it)
    db.add_all([ada, bo, orm.Group(name="cs101", users=[ada]),
                orm.OAuthClient(identifier="jupyterhub", secret="", redirect_uri="",
                                description="JupyterHub")])
    db.commit()
    ada.new_api_token(note="for the move")
    server = orm.Server(ip="10.128.0.2", port=8888, base_url="/user/ada/")
    db.add(orm.Spawner(user=ada, name="", server=server, state={"container_id": "abc"},
                       user_options={"course": "deep-learning"}))
    db.commit()
    db.close()
    allocator = GpuAllocator(url, inventory(), gpus.Policy())
    allocator.allocate("ada", "", 1, groups=["cs101"], course="deep-learning")
    StopReasons(url).record("bo", "", "idle", "Stopped after an hour without activity.",
                            datetime.datetime(2026, 1, 2, 3, 4, 5))
    return url


@pytest.fixture
def empty_postgres(postgres_url):  # noqa: F811 (the fixture imported above)
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return postgres_url


@pytest.mark.e2e
def test_a_moved_hub_opens_on_postgresql_with_everything_in_it(tmp_path, empty_postgres):
    from jupyterhub import orm
    source = sqlite_hub(tmp_path)
    counts = dbmove.move(source, empty_postgres)
    assert counts["users"] == 2 and counts["gpuhub_gpu_slots"] == 1 and counts["api_tokens"] == 1
    # JupyterHub opens it as it is (schema revision checked), and finds what it had
    db = orm.new_session_factory(empty_postgres)()
    ada = orm.User.find(db, "ada")
    assert ada.admin and [g.name for g in ada.groups] == ["cs101"]
    assert ada.orm_spawners[""].server.ip == "10.128.0.2"
    assert ada.orm_spawners[""].state == {"container_id": "abc"}
    assert ada.orm_spawners[""].user_options == {"course": "deep-learning"}
    token = db.query(orm.APIToken).one()
    assert token.user is ada and token.note == "for the move"
    # new rows get new ids: the sequences continue after the copied ones
    carl = orm.User(name="carl")
    db.add(carl)
    db.commit()
    assert carl.id == max(u.id for u in db.query(orm.User)) and carl.id > ada.id
    db.close()
    # the allocator there sees ada's GPU and hands out the other one only
    allocator = GpuAllocator(empty_postgres, inventory(), gpus.Policy())
    [adas] = allocator.held_by("ada", "")
    [carls] = allocator.allocate("carl", "", 1)
    assert {adas.uuid, carls.uuid} == set(UUIDS)
    with pytest.raises(gpus.NoGpuAvailable):
        allocator.allocate("dora", "", 1)
    assert StopReasons(empty_postgres).all()[("bo", "")].reason == "idle"
    # the SQLite file is unchanged, the way back
    assert create_engine(source).connect().execute(text("SELECT count(*) FROM users")).scalar() == 2


@pytest.mark.e2e
def test_a_second_move_into_the_same_database_is_refused(tmp_path, empty_postgres):
    source = sqlite_hub(tmp_path)
    dbmove.move(source, empty_postgres)
    with pytest.raises(dbmove.MoveRefused, match="not empty .*users"):
        dbmove.move(source, empty_postgres)


@pytest.mark.e2e
def test_a_table_no_model_knows_stops_the_move_unless_skipped(tmp_path, empty_postgres):
    source = sqlite_hub(tmp_path)
    engine = create_engine(source)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE lab_notes (id INTEGER PRIMARY KEY, note TEXT)"))
    with pytest.raises(dbmove.MoveRefused, match="lab_notes"):
        dbmove.move(source, empty_postgres)
    assert "users" not in inspect(create_engine(empty_postgres)).get_table_names(), "nothing written"
    assert "lab_notes" not in dbmove.move(source, empty_postgres, skip=["lab_notes"])


def test_the_command_names_what_is_missing(tmp_path, capsys):
    env = {"GPUHUB_STATE_DIR": str(tmp_path)}
    assert dbmove.main([], env) == 1
    assert "GPUHUB_DB_URL is empty" in capsys.readouterr().err
    env["GPUHUB_DB_URL"] = "postgresql://gpuhub@127.0.0.1:1/gpuhub"
    assert dbmove.main([], env) == 1
    assert f"no SQLite database at {tmp_path}/jupyterhub.sqlite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        dbmove.main(["--bogus"], env)
    assert e.value.code == 2


@pytest.mark.e2e
def test_stop_reasons_on_a_fresh_postgresql_database_are_none_not_an_error(empty_postgres):
    """The home page asks before the gpu-culler ever stopped a server (no table yet)."""
    reasons = StopReasons(empty_postgres)
    assert reasons.all() == {} and reasons.of_user("ada") == []
    reasons.record("ada", "", "idle", "Stopped.", datetime.datetime(2026, 1, 2))
    assert [r.reason for r in reasons.of_user("ada")] == ["idle"]
