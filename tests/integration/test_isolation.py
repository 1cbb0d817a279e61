"""Isolation: one client's session never shows through another's.

Every test runs pgshard with one worker and pool_size = 1 on the one-shard
lab, so consecutive clients share its one server connection (checked by
backend pid where the server is meant to be reused). What a client sees is
compared with the same statements on a direct connection to the primary;
what the next client sees must be what a fresh login gives.
"""
import threading
import time

import psycopg
import pytest
from psycopg import errors

from support import app_backends, wait_for

DEFAULT_SEARCH_PATH = '"$user", public'


@pytest.fixture(scope="module")
def roles(lab):
    """Roles alice and bob on the lab primary (alice may SET ROLE bob)."""
    with lab.connect_primary() as conn:
        for role in ("alice", "bob"):
            conn.execute(f"drop role if exists {role}")
            conn.execute(f"create role {role}")
        conn.execute("grant bob to alice")
    yield
    with lab.connect_primary() as conn:
        for row in conn.execute("select gid from pg_prepared_xacts where gid like 'it_iso%'"):
            conn.execute(f"rollback prepared '{row[0]}'")
        for role in ("alice", "bob"):
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")


def run(conn, statements):
    """Run STATEMENTS one by one (simple protocol: no parameters); an error
    is part of the story (a failed transaction), so it is kept, not raised."""
    outcome = []
    for sql in statements:
        try:
            conn.execute(sql)
            outcome.append("ok")
        except psycopg.Error as exc:
            outcome.append(exc.sqlstate)
    return outcome


def state(conn):
    return conn.execute("select current_user::text, session_user::text, "
                        "current_setting('search_path')").fetchone()


def pid(conn):
    return conn.execute("select pg_backend_pid()").fetchone()[0]


SCENARIOS = {
    "set role": ["SET ROLE alice"],
    "set session authorization": ["SET SESSION AUTHORIZATION alice"],
    "set local role": ["BEGIN", "SET LOCAL ROLE alice", "COMMIT"],
    "reset role": ["SET ROLE alice", "RESET ROLE"],
    "set role to default": ["SET ROLE alice", "SET ROLE TO DEFAULT"],
    "session authorization clears role": ["SET ROLE bob", "SET SESSION AUTHORIZATION alice"],
    "reset session authorization clears role": [
        "SET SESSION AUTHORIZATION alice", "SET ROLE bob", "RESET SESSION AUTHORIZATION"],
    "session authorization default": [
        "SET SESSION AUTHORIZATION alice", "SET SESSION AUTHORIZATION DEFAULT"],
    "role in a committed transaction": ["BEGIN", "SET ROLE alice", "COMMIT"],
    "role in a rolled back transaction": ["BEGIN", "SET ROLE alice", "ROLLBACK"],
    "authorization in a failed transaction": [
        "BEGIN", "SET SESSION AUTHORIZATION alice", "SELECT 1/0", "ROLLBACK"],
    "role after a statement": ["SELECT 1; SET ROLE alice"],
    "reset all keeps the role": ["SET ROLE alice", "SET search_path = pg_catalog", "RESET ALL"],
    "set_config": ["SELECT set_config('search_path', 'x', false)"],
    "set_config of the role": ["SELECT set_config('role', 'alice', false)"],
    "do block": ["DO $$ BEGIN SET search_path = y; END $$"],
    "do block sets the role": ["DO $$ BEGIN SET ROLE alice; END $$"],
}


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_next_client_sees_a_fresh_session(proxy, lab, roles, pool_mode):
    px = proxy(pool_mode=pool_mode, pool_size=1, workers=1)
    with lab.connect_primary() as direct:
        fresh = state(direct)
    assert fresh == ("postgres", "postgres", DEFAULT_SEARCH_PATH)
    for name, statements in SCENARIOS.items():
        with lab.connect_primary() as direct:
            want_outcome = run(direct, statements)
            want = state(direct)
        with px.connect(autocommit=True) as a:
            a_pid = pid(a)
            assert run(a, statements) == want_outcome, name
            assert state(a) == want, name
            # The client's own next transactions keep it.
            assert state(a) == want, name
            assert pid(a) == a_pid, name
        with px.connect(autocommit=True) as b:
            assert state(b) == fresh, f"{name}: the next client sees {state(b)}"
            assert pid(b) == a_pid, f"{name}: the server was not reused, the test proves nothing"


def test_startup_role_in_transaction_pooling(proxy, roles):
    """A role given at startup is applied with set_config, which the RESET
    ALL of replay does not undo: the client keeps its server, and DISCARD ALL
    resets it before the next."""
    px = proxy(pool_size=1, workers=1)
    with px.connect(autocommit=True, options="-c role=alice") as a:
        a_pid = pid(a)
        assert state(a)[:2] == ("alice", "postgres")
    with px.connect(autocommit=True) as b:
        assert state(b) == ("postgres", "postgres", DEFAULT_SEARCH_PATH)
        assert pid(b) == a_pid


def test_set_config_through_extended_protocol(proxy, lab):
    px = proxy(pool_size=1, workers=1)
    with px.connect(autocommit=True) as a:
        a_pid = pid(a)
        a.execute("select set_config('search_path', %s, false)", ["x"])
        assert a.execute("show search_path").fetchone()[0] == "x"
    with px.connect(autocommit=True) as b:
        assert b.execute("show search_path").fetchone()[0] == DEFAULT_SEARCH_PATH
        assert pid(b) == a_pid


def test_local_set_config_does_not_pin(proxy):
    """set_config(..., true) ends with the transaction: the client is not
    pinned, and another client gets the one server while it stays."""
    px = proxy(pool_size=1, workers=1, query_wait_timeout_ms=3000)
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        with a.transaction():
            assert a.execute("select set_config('search_path', 'x', true)").fetchone()[0] == "x"
            assert a.execute("show search_path").fetchone()[0] == "x"
        assert a.execute("show search_path").fetchone()[0] == DEFAULT_SEARCH_PATH
        # The one server is free for B (a pinned A would make B time out).
        assert b.execute("show search_path").fetchone()[0] == DEFAULT_SEARCH_PATH
        assert pid(a) == pid(b)


DATE_SQL = "select '1999-01-08'::date::text, current_setting('datestyle')"


def test_replay_gives_the_resolved_setting(proxy, lab):
    """SET datestyle TO iso then ymd leaves "ISO, YMD"; replaying the last
    SET alone on a server another client used would give "Postgres, YMD"."""
    px = proxy(pool_size=1, workers=1)
    steps = [
        ["SET datestyle TO iso", "SET datestyle TO ymd"],
        ["SET datestyle TO ymd"],  # no change: the server reports nothing
        ["BEGIN", "SET datestyle TO sql", "ROLLBACK"],
        ["BEGIN", "SET datestyle TO german", "SELECT 1/0", "ROLLBACK"],
        ["BEGIN", "SET datestyle TO postgres", "SET LOCAL datestyle TO dmy", "COMMIT"],
        ["SET datestyle TO sql, dmy; SET datestyle TO iso"],
        ["SET intervalstyle TO sql_standard", "SET TIME ZONE 'Europe/Berlin'"],
    ]
    with lab.connect_primary() as direct, px.connect(autocommit=True) as a, \
            px.connect(autocommit=True) as b:
        # psycopg would prepare B's repeated SETs, and a SET through a
        # prepared statement pins its client (pgshard cannot see it run).
        b.prepare_threshold = None
        for statements in steps:
            assert run(a, statements) == run(direct, statements), statements
            # B changes the server's settings; A is replayed after it.
            b.execute("SET datestyle TO 'SQL, DMY'")
            b.execute("SET intervalstyle TO postgres_verbose")
            assert b.execute(DATE_SQL).fetchone() == ("08/01/1999", "SQL, DMY")
            assert pid(a) == pid(b)
            check = DATE_SQL + ", (interval '1 day 2 hours')::text, current_setting('timezone')"
            assert a.execute(check).fetchone() == direct.execute(check).fetchone(), statements


def test_prepared_set_is_tracked_not_pinned(proxy, lab):
    """A SET sent as a prepared statement (pgJDBC's setup SETs, psycopg's
    prepared ones): pgshard takes it when its portal is executed, replays it
    wherever the client goes, and keeps it from the next client on the same
    server, without holding the server for the client (one server for two
    clients here: the second would wait forever behind a pinned first). A
    failed transaction's prepared SET is dropped, as PostgreSQL drops it."""
    px = proxy(pool_size=1, workers=1)
    with lab.connect_primary() as direct, px.connect(autocommit=True) as a, \
            px.connect(autocommit=True) as b:
        default = direct.execute("show datestyle").fetchone()[0]
        a.execute("SET datestyle TO 'SQL, DMY'", prepare=True)
        a.execute("SET intervalstyle TO postgres_verbose", prepare=True)
        assert b.execute("show datestyle").fetchone()[0] == default
        assert b.execute("show intervalstyle").fetchone()[0] == "postgres"
        assert pid(a) == pid(b)  # one server, shared: nobody is pinned
        assert a.execute(DATE_SQL).fetchone() == ("08/01/1999", "SQL, DMY")
        assert a.execute("select (interval '1 day')::text").fetchone()[0] == "@ 1 day"
        with pytest.raises(psycopg.errors.DivisionByZero):
            with a.transaction():
                a.execute("SET datestyle TO german", prepare=True)
                a.execute("select 1/0")
        assert b.execute("show datestyle").fetchone()[0] == default
        assert a.execute("show datestyle").fetchone()[0] == "SQL, DMY"


def connect_env(monkeypatch, env, connect):
    """CONNECT() with environment ENV for libpq (PGDATESTYLE ...)."""
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        return connect()


SESSION_STEPS = [
    "SET datestyle TO iso", "RESET datestyle",
    "SET datestyle TO iso", "RESET ALL",
    "SET datestyle TO ymd", "DISCARD ALL",
    "SET application_name = 'other'", "RESET application_name",
]


def test_session_pooling_reset_returns_to_startup_values(proxy, lab, monkeypatch):
    px = proxy(pool_mode="session", pool_size=1, workers=1)
    env = {"PGDATESTYLE": "Postgres, MDY"}
    # An application_name with a space and a backslash: libpq options escaping.
    extra = {"application_name": "it app \\ x"}
    direct = connect_env(monkeypatch, env, lambda: lab.connect_primary(**extra))
    client = connect_env(monkeypatch, env, lambda: px.connect(autocommit=True, **extra))
    with direct, client:
        # Statements only: DISCARD ALL would meet psycopg's prepared ones.
        direct.prepare_threshold = client.prepare_threshold = None
        check = DATE_SQL + ", current_setting('application_name')"
        assert client.execute(check).fetchone() == direct.execute(check).fetchone() == \
            ("01-08-1999", "Postgres, MDY", "it app \\ x")
        for sql in SESSION_STEPS:
            direct.execute(sql)
            client.execute(sql)
            assert client.execute(check).fetchone() == direct.execute(check).fetchone(), sql
        assert client.info.parameter_status("DateStyle") == "Postgres, MDY"
    # The startup parameters are the server's: a client without them gets a
    # server of its own, and the one server allowed was closed for it.
    with px.connect(autocommit=True) as other:
        assert other.execute(DATE_SQL).fetchone() == ("1999-01-08", "ISO, MDY")
        assert other.execute("show application_name").fetchone()[0] != "it app \\ x"


def test_session_pooling_startup_parameters_share_pool_size(proxy, lab, monkeypatch):
    """pool_size bounds the node's servers whatever startup parameters the
    clients sent: a client with other parameters waits for a server to go."""
    px = proxy(pool_mode="session", pool_size=1, workers=1)

    def pgshard_backends():
        with lab.connect_primary() as conn:
            return len(app_backends(conn, "application_name <> ''"))

    with px.connect(autocommit=True) as first:
        assert first.execute("show datestyle").fetchone()[0] == "ISO, MDY"
        result = {}

        def second():
            try:
                conn = connect_env(monkeypatch, {"PGDATESTYLE": "German"},
                                   lambda: px.connect(autocommit=True))
                with conn:
                    result["datestyle"] = conn.execute("show datestyle").fetchone()[0]
                    result["backends"] = pgshard_backends()
            except Exception as exc:  # noqa: BLE001
                result["error"] = exc

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), f"second client did not wait: {result}"
        assert pgshard_backends() == 1
        assert first.execute("select 1").fetchone()[0] == 1
    thread.join(20)
    assert not thread.is_alive()
    assert result.get("error") is None, result
    assert result == {"datestyle": "German, DMY", "backends": 1}
    wait_for(lambda: pgshard_backends() == 1, 10, message="one pgshard server")


PREPARE_STEPS = ["CREATE TEMP TABLE it_iso_t (x int)", "BEGIN",
                 "INSERT INTO it_iso_t VALUES (1)", "PREPARE TRANSACTION 'it_iso_x'"]


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_server_with_temp_schema_is_not_reused(proxy, lab, roles, pool_mode):
    px = proxy(pool_mode=pool_mode, pool_size=1, workers=1)
    with lab.connect_primary() as direct:
        want = run(direct, PREPARE_STEPS)
    assert want == ["ok", "ok", "ok", "0A000"]  # cannot PREPARE after temp objects
    try:
        with px.connect(autocommit=True) as a:
            a_pid = pid(a)
            a.execute("create temp table it_iso_first (x int)")
        with px.connect(autocommit=True) as b:
            assert pid(b) != a_pid, "a server with a temporary schema was reused"
            assert run(b, PREPARE_STEPS) == want
            b.execute("rollback")
        with lab.connect_primary() as conn:
            assert conn.execute("select count(*) from pg_prepared_xacts "
                                "where gid = 'it_iso_x'").fetchone()[0] == 0
            assert conn.execute("select count(*) from pg_stat_activity where pid = %s",
                                [a_pid]).fetchone()[0] == 0
    finally:
        with lab.connect_primary() as conn:
            if conn.execute("select 1 from pg_prepared_xacts where gid = 'it_iso_x'").fetchone():
                conn.execute("rollback prepared 'it_iso_x'")
