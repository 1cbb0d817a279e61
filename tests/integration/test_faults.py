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
