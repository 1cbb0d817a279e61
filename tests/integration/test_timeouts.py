"""query_timeout_ms and server_lifetime_ms (PgBouncer's query_timeout and
server_lifetime), against a real server: what the client sees, and what
happens to the server connections (read from pg_stat_activity)."""
import time

import psycopg
import pytest

from support import wait_for


def pgshard_backends(primary):
    return primary.execute(
        "select pid, backend_start from pg_stat_activity where application_name = 'pgshard'"
        " and backend_type = 'client backend' order by pid").fetchall()


def test_query_timeout_closes_the_client_and_ends_the_query(proxy, primary):
    px = proxy(query_timeout_ms=1000)
    conn = px.connect(autocommit=True)
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as exc:
        conn.execute("select pg_sleep(30)")
    took = time.monotonic() - t0
    assert "query_timeout_ms" in str(exc.value) and "pgshard:" in str(exc.value), exc.value
    assert took < 10, f"the timeout took {took:.1f} s"
    # The server's query ended too (its connection was closed).
    wait_for(lambda: primary.execute(
        "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'"
        " and state = 'active'").fetchone()[0] == 0, 10,
        message="the sleeping query to end on the server")
    conn.close()
    # Quick requests are not affected.
    with px.connect(autocommit=True) as ok:
        for _ in range(5):
            assert ok.execute("select pg_sleep(0.05), 1").fetchone()[1] == 1
    assert "SQLSTATE 57014" in px.log_text()


def test_server_lifetime_replaces_old_servers(proxy, primary):
    px = proxy(server_lifetime_ms=1500, pool_size=1, workers=1)
    with px.connect(autocommit=True) as conn:
        first = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == first
        time.sleep(1.8)
        # Freed past its lifetime after this statement: the next gets a new one.
        conn.execute("select 1")
        second = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert second != first
        wait_for(lambda: first not in [p for p, _ in pgshard_backends(primary)], 10,
                 message="the old server connection to be closed")
        # Inside a transaction the server is kept, however old.
        with conn.transaction():
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
            time.sleep(1.8)
            assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
    assert "server_lifetime_ms reached" in px.log_text()
