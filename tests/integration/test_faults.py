"""Faults in the middle of a request: every client is answered and stays
usable, and every server it held is returned clean or closed, never left
mid-request in the pool.

Runs on the two-shard lab (`shard_lab`), stopping a shard's primary and
starting it again.
"""
import time

import psycopg
import pytest

from test_adversarial import key_on
from test_sharding import MAP, TABLES


@pytest.fixture
def users(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists users")
            conn.execute(f"create table users ({TABLES['users'][2]})")
    return shard_lab


def pgshard_backends(lab, shard):
    """The states of pgshard's server connections to SHARD's primary."""
    with lab.connect_primary(shard) as conn:
        return [r[0] for r in conn.execute(
            "select state from pg_stat_activity where datname = 'app' "
            "and pid <> pg_backend_pid() and backend_type = 'client backend' "
            "and application_name = 'pgshard'").fetchall()]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_keyless_read_with_a_shard_that_cannot_connect(users, sharded_proxy, protocol):
    """s1's primary stops; the health check has not noticed yet (a long
    interval), so the part for s1 finds its pool unable to connect. The
    client gets an error at once and stays usable; s0's server, which ran
    its part, goes back to the pool clean (one server per pool: a leak would
    make the next read wait and fail)."""
    lab = users
    px = sharded_proxy(extra_ini=MAP, pool_size=1, workers=1, lag_check_interval_ms=3600000,
                       query_wait_timeout_ms=5000)
    a = key_on(px.config_path, "s0", start=9000)
    s1_port = lab.shard("s1").primary_port
    cursor = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(px.conninfo(), autocommit=True, cursor_factory=cursor) as conn:
        conn.execute(f"insert into users (id, v) values ({a}, 'x')")
        assert conn.execute("select count(*) from users").fetchone()[0] == 1
        lab.stop_server(s1_port, mode="fast")  # the lab commits asynchronously
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError) as exc:
                    conn.execute("select count(*) from users")
                assert exc.value.sqlstate == "08006", exc.value
                assert exc.value.diag.message_primary.startswith("pgshard:")
                assert time.monotonic() - started < 4  # answered, not left to a timeout
                # The session goes on, and s0's one server is free again.
                assert conn.execute("select v from users where id = %s", (a,)).fetchone() == (
                    "x",)
            assert "active" not in pgshard_backends(lab, "s0")
        finally:
            lab.restart_stopped(s1_port)
        assert conn.execute("select count(*) from users").fetchone()[0] == 1


def test_client_that_stops_reading_is_closed(users, sharded_proxy):
    """client_write_timeout_ms: a client that takes none of a large result
    for that long is closed and its server closed with it (the query ends;
    on a replica it would hold replay back), so the pool's only server is
    free again. A client reading slowly is not closed."""
    import pgwire
    px = sharded_proxy(extra_ini=MAP, pool_size=1, workers=1, client_write_timeout_ms=1000,
                       query_wait_timeout_ms=20000)
    big = ("/* pgshard: shard=s0 */ select repeat('x', 1000), g "
           "from generate_series(1, 3000000) g")
    with pgwire.RawConn(px.port, timeout=30) as stuck:
        stuck.login()
        stuck.send(pgwire.query(big))
        started = time.monotonic()
        # Another client of the same pool gets the server once the stuck one
        # is closed (pool_size = 1).
        with psycopg.connect(px.conninfo(), autocommit=True) as other:
            assert other.execute("/* pgshard: shard=s0 */ select 1").fetchone() == (1,)
        waited = time.monotonic() - started
        assert waited < 15, f"the stuck client held the server {waited:.1f} s"
        assert stuck.closed_within(30)
    assert "client_write_timeout_ms" in px.log_text()
    # Slow but reading: every row arrives.
    with pgwire.RawConn(px.port, timeout=30) as slow:
        slow.login()
        slow.send(pgwire.query("/* pgshard: shard=s0 */ select repeat('y', 1000), g "
                               "from generate_series(1, 20000) g"))
        rows = 0
        while True:
            kind, _ = slow.read_message()
            rows += kind == "D"
            if rows % 2000 == 0 and kind == "D":
                time.sleep(0.3)  # pauses well under the timeout
            if kind == "Z":
                break
        assert rows == 20000
