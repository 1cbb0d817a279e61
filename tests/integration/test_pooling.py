"""Pooling: transaction and session modes, pool limits, the wait queue.

The primary's pg_stat_activity is the referee for how many server
connections pgshard holds; `pool_size` is per node and user for the whole
process (a worker's pool grows past its share while the process has room), so
pool_size * workers is a loose ceiling (plus the baseline taken before the load).
"""
import os
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors

import pgwire
from support import BackendSampler, clients_by_worker


def run_threads(n, target, stack_size=None, join_timeout=180):
    """Run TARGET(k) in N threads; return the list of exceptions raised."""
    failures = []
    lock = threading.Lock()

    def wrapper(k):
        try:
            target(k)
        except BaseException as exc:  # noqa: BLE001
            with lock:
                failures.append((k, exc))

    old = threading.stack_size(stack_size) if stack_size else None
    try:
        threads = [threading.Thread(target=wrapper, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
    finally:
        if stack_size:
            threading.stack_size(old)
    deadline = time.monotonic() + join_timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    stuck = sum(1 for t in threads if t.is_alive())
    if stuck:
        failures.append((-1, AssertionError(f"{stuck} threads still running after {join_timeout}s")))
    return failures


def test_transaction_pooling_named_prepared_statements(proxy, primary, lab):
    primary.execute("drop table if exists it_prep")
    primary.execute("create table it_prep (client int, n int, v int)")
    pool_size, workers, clients, transactions = 2, 2, 20, 100
    px = proxy(pool_size=pool_size, workers=workers)
    server_pids = set()
    lock = threading.Lock()

    def client(k):
        with px.connect() as conn:
            conn.prepare_threshold = 0
            cur = conn.cursor()
            pids = set()
            for i in range(transactions):
                with conn.transaction():
                    # Every client's first statement is named _pg3_0 by psycopg,
                    # each with a different text: the proxy must keep them apart.
                    cur.execute(f"select %s::int * {k + 1}, pg_backend_pid()", (i,), prepare=True)
                    value, pid = cur.fetchone()
                    assert value == i * (k + 1), (k, i, value)
                    pids.add(pid)
                    cur.execute("insert into it_prep values (%s, %s, %s)", (k, i, value),
                                prepare=True)
            with lock:
                server_pids.update(pids)

    with BackendSampler(lab) as sampler:
        failures = run_threads(clients, client)
    assert not failures, failures[:5]
    total = primary.execute("select count(*), sum(v) from it_prep").fetchone()
    expected_sum = sum(i * (k + 1) for k in range(clients) for i in range(transactions))
    assert total == (clients * transactions, expected_sum)
    ceiling = pool_size * workers
    assert len(server_pids) <= ceiling, f"{len(server_pids)} server backends used: {server_pids}"
    assert sampler.peak <= ceiling + sampler.baseline, sampler
    assert sampler.peak_busy <= ceiling, sampler
    primary.execute("drop table it_prep")


def test_set_is_tracked_per_client(proxy):
    # One worker and one server connection: A and B always share it.
    px = proxy(pool_size=1, workers=1)
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        default = b.execute("show statement_timeout").fetchone()[0]
        assert default == "0"
        a.execute("set statement_timeout = '1234ms'")
        pids = set()
        for _ in range(20):
            with a.transaction():
                assert a.execute("show statement_timeout").fetchone()[0] == "1234ms"
                pids.add(a.execute("select pg_backend_pid()").fetchone()[0])
            with b.transaction():
                assert b.execute("show statement_timeout").fetchone()[0] == default
                pids.add(b.execute("select pg_backend_pid()").fetchone()[0])
            # Outside explicit transactions too.
            assert a.execute("show statement_timeout").fetchone()[0] == "1234ms"
            assert b.execute("show statement_timeout").fetchone()[0] == default
        assert len(pids) == 1, f"pool_size=1 but {len(pids)} server backends: {pids}"

        # The setting takes effect, not just SHOW: A times out, B does not.
        a.execute("set statement_timeout = '200ms'")
        with pytest.raises(errors.QueryCanceled):
            a.execute("select pg_sleep(1)")
        assert b.execute("select pg_sleep(0.5), 1").fetchone()[1] == 1

        # SET LOCAL ends with its transaction; RESET brings back the default.
        with b.transaction():
            b.execute("set local statement_timeout = '5s'")
            assert b.execute("show statement_timeout").fetchone()[0] == "5s"
        assert b.execute("show statement_timeout").fetchone()[0] == default
        a.execute("reset statement_timeout")
        assert a.execute("show statement_timeout").fetchone()[0] == default
        a.execute("set search_path = pg_catalog")
        assert b.execute("show search_path").fetchone()[0] == '"$user", public'
        assert a.execute("show search_path").fetchone()[0] == "pg_catalog"


def test_session_pooling_keeps_session_state(proxy):
    px = proxy(pool_mode="session", pool_size=2, workers=1)
    with px.connect() as conn, px.connect() as other:
        conn.execute("create temp table it_session (v int)")
        conn.commit()
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        conn.commit()
        for i in range(5):
            conn.execute("insert into it_session values (%s)", (i,))
            conn.commit()
            assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
            conn.commit()
        assert conn.execute("select count(*), sum(v) from it_session").fetchone() == (5, 10)
        conn.commit()
        conn.execute("prepare it_stmt as select $1::int * 2")
        conn.commit()
        assert conn.execute("execute it_stmt(21)").fetchone() == (42,)
        conn.commit()
        # The other client has its own session and sees none of it.
        assert other.execute("select pg_backend_pid()").fetchone()[0] != pid
        with pytest.raises(errors.UndefinedTable):
            other.execute("select * from it_session")
        other.rollback()


def test_500_concurrent_clients(proxy, lab):
    clients, pool_size, workers = 500, 10, 2
    px = proxy(pool_size=pool_size, workers=workers)
    barrier = threading.Barrier(clients, timeout=120)

    def client(k):
        try:
            conn = psycopg.connect(px.conninfo(connect_timeout=60), autocommit=True)
        except BaseException:
            barrier.abort()
            raise
        try:
            barrier.wait()  # all 500 connected at once
            for _ in range(3):
                row = conn.execute("select pg_sleep(0.01), %s::int", (k,)).fetchone()
                assert row[1] == k
        finally:
            conn.close()

    with BackendSampler(lab) as sampler:
        started = time.monotonic()
        failures = run_threads(clients, client, stack_size=256 * 1024, join_timeout=240)
        elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} clients failed, e.g. {failures[:3]}"
    assert sampler.peak <= pool_size * workers + sampler.baseline, sampler
    print(f"500 clients: {elapsed:.1f}s, {sampler}")
    px.assert_alive()


def test_pool_wait_timeout(proxy):
    """A client queued for a full pool gets 53300/08006 after
    query_wait_timeout_ms; the client holding the server is unaffected.

    The waiting client speaks the protocol by hand: when an ErrorResponse
    and the close arrive together, libpq reports only "server closed the
    connection" and psycopg loses the SQLSTATE."""
    px = proxy(pool_size=1, workers=1, query_wait_timeout_ms=500)
    holder = px.connect()
    waiter = px.raw(timeout=10)
    try:
        waiter.login(user="app", password="secret")
        holder.execute("select 1")  # holder now has the only server, in a transaction
        started = time.monotonic()
        waiter.send(pgwire.query("select 2"))
        fields = waiter.read_error()
        elapsed = time.monotonic() - started
        assert fields.get("C") in ("53300", "08006"), fields
        assert fields.get("M", "").startswith("pgshard:"), fields
        assert 0.3 <= elapsed <= 2.0, f"waited {elapsed:.2f}s for a 500 ms queue timeout"
        # The holder never noticed.
        assert holder.execute("select 3").fetchone() == (3,)
        holder.commit()
    finally:
        holder.close()
        waiter.close()
    # The same through psycopg: an error that names pgshard, in time.
    holder = px.connect()
    try:
        holder.execute("select 1")
        with px.connect(autocommit=True) as waiter2:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as exc:
                waiter2.execute("select 2")
            assert time.monotonic() - started <= 2.0
            assert "pgshard:" in str(exc.value)
        holder.commit()
    finally:
        holder.close()
    px.assert_alive()


@pytest.mark.parametrize("statement", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_statement_dropping_prepared_statements(proxy, statement):
    """DEALLOCATE ALL / DISCARD ALL drop every prepared statement of the
    server that runs them: pgshard must forget them for that server (not
    for whichever server the client held when it sent the text), or a
    later Bind names a statement the server no longer has."""
    px = proxy(workers=1, pool_size=1)
    with px.connect(autocommit=True) as conn:
        for i in range(3):
            assert conn.execute("select %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
        # Extended protocol (a parameter) and simple protocol, by turns.
        conn.execute(statement)
        assert conn.execute("select %s::int + 1", (41,), prepare=True).fetchone() == (42,)
        conn.execute(statement, prepare=True)
        assert conn.execute("select %s::int + 1", (1,), prepare=True).fetchone() == (2,)
    with px.connect(autocommit=True) as other:  # the same, only server
        assert other.execute("select %s::int + 1", (5,), prepare=True).fetchone() == (6,)


def test_pgbench_prepared_across_workers_never_hangs(proxy, lab):
    """pool_size is one pool for the whole process, not a fixed share per
    worker: with a share of 5 servers per worker, pgbench -M prepared -c 10
    -j 2 on pool_size 10 hung. One pgbench thread's client waited for a
    server in a synchronous PQprepare (on a worker whose share was taken)
    while that thread's other clients sat idle in transaction holding the
    branch row lock, every other client blocked on it, and a server of the
    other worker idle. With -C every transaction is a new connection that
    prepares again: before the fix nearly every run hung. 100 runs."""
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p",
                           str(lab.primary_port), "-U", "postgres", "app"],
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stderr
    pool_size = 10
    px = proxy(pool_size=pool_size, workers=2)
    env = dict(os.environ, PGPASSWORD="secret")
    max_servers = 0
    for i in range(100):
        args = ["pgbench", "-n", "-M", "prepared", "-c", "10", "-j", "2", "-t", "8",
                "-h", "127.0.0.1", "-p", str(px.port), "-U", "app", "app"]
        if i % 2 == 0:
            args.insert(2, "-C")  # a new connection (and new prepares) per transaction
        try:
            res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {i} ({' '.join(args[1:8])}) hung; SHOW POOLS: {show(px, 'POOLS')}")
        output = res.stdout + res.stderr
        assert res.returncode == 0, f"run {i}: {output}"
        assert "number of transactions actually processed: 80/80" in output, output
        if i % 10 == 9:
            # The limit is the process's: never more servers than pool_size.
            servers = [r for r in show(px, "SERVERS") if r[1] == "app"]
            max_servers = max(max_servers, len(servers))
            assert len(servers) <= pool_size, servers
    assert max_servers >= 2
    px.assert_alive()


def show(px, what):
    with px.connect(autocommit=True, user="admin", password="adminpw", dbname="pgshard") as admin:
        return admin.execute(f"SHOW {what}").fetchall()


def app_backends(primary):
    return primary.execute(
        "select count(*) from pg_stat_activity where datname = 'app' and usename = 'app' "
        "and backend_type = 'client backend' and application_name <> 'pgshard monitor' "
        "and pid <> pg_backend_pid()").fetchone()[0]


def test_one_pool_across_workers(proxy, primary):
    """pool_size is one pool for the process: one worker's clients may hold
    every server of the node, and a server freed on one worker goes to a
    client waiting on the other (the same backend: it moved, it was not
    closed and opened again). With a fixed share per worker (1 of 2 here)
    the second client on a worker waited although a server was free."""
    px = proxy(pool_size=2, workers=2, query_wait_timeout_ms=20000)
    before = app_backends(primary)
    groups = clients_by_worker(px, 2)
    (a, b), (c, d) = groups[0], groups[1]
    try:
        a.execute("begin")
        pa = a.execute("select pg_backend_pid()").fetchone()[0]
        b.execute("begin")
        pb = b.execute("select pg_backend_pid()").fetchone()[0]
        assert pa != pb  # worker 0 holds both servers of the pool
        got = {}

        def waiter():
            got["pid"] = c.execute("select pg_backend_pid()").fetchone()[0]

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "a third server was opened beyond pool_size"
        waiting = [r for r in show(px, "POOLS") if r[0] == "app" and r[1] == "app"]
        assert sum(r[5] for r in waiting) >= 1, waiting  # cl_waiting
        a.execute("commit")
        t.join(10)
        assert not t.is_alive(), "the waiting client on the other worker never got the freed server"
        assert got["pid"] == pa
        servers = {r[0]: r for r in show(px, "SERVERS") if r[1] == "app"}
        assert set(servers) == {pa, pb}, servers
        assert servers[pa][9] == 1 and servers[pb][9] == 0, servers  # pa now lives on worker 1
        # Back the other way, and both workers take turns on the two servers.
        b.execute("commit")
        pids = set()
        for _ in range(10):
            for conn in (a, c, d, b):
                pids.add(conn.execute("select pg_backend_pid()").fetchone()[0])
        assert pids == {pa, pb}
        assert app_backends(primary) - before <= 2
    finally:
        for conn in (a, b, c, d):
            conn.close()
    px.assert_alive()


def test_new_clients_spread_evenly_over_workers(proxy):
    """The kernel spreads connections over the workers' listeners by a hash
    (16 clients often land 11 and 5); a worker accepting one while another
    has fewer clients hands it over, so the counts differ by at most one,
    and the clients that come after some left fill the emptier worker.
    A client's worker is the top byte of its BackendKeyData pid."""
    px = proxy(workers=2, auth="trust")

    def login():
        raw = px.raw()
        raw.login()
        return raw

    def counts(clients):
        by = [0, 0]
        for raw in clients:
            by[raw.backend_key[0] >> 24] += 1
        return by

    clients = [login() for _ in range(16)]
    by = counts(clients)
    assert abs(by[0] - by[1]) <= 1, by
    for raw in clients:  # each one is served where it landed
        assert raw.simple_query("select 1") == [["1"]]
    leaving = [raw for raw in clients if raw.backend_key[0] >> 24 == 0][:5]
    for raw in leaving:
        raw.close()
        clients.remove(raw)
    time.sleep(0.5)  # the closes reach worker 0
    fresh = [login() for _ in range(5)]
    assert counts(fresh) == [5, 0], counts(fresh)
    clients += fresh
    assert abs(counts(clients)[0] - counts(clients)[1]) <= 1, counts(clients)
    for raw in clients:
        assert raw.simple_query("select 2") == [["2"]]
        raw.close()
    px.assert_alive()
