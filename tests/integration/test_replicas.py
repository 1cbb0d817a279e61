"""Replicas through pgshard: read/write split, lag checks, read-your-writes,
replica and primary failures (semantics in config/DESIGN.md).

The `replica_lab` has database app on two shards, s0 and s1, each a primary
and two streaming replicas. Which server answered is told by the server
itself: `inet_server_port()` and `pg_is_in_recovery()` are reads, so a
statement returning them through pgshard says where it ran. Setup and checks
use direct connections (lab.connect_primary, lab.connect_port ...). Replay is
paused and resumed with `pgshardctl lab lag app.SHARD N pause|resume`, the
real lag tool; every test that pauses replay resumes it (fixture
`replicas_resumed`) so the next test finds replicas caught up.

Tests that stop or promote a primary use their own `failover_lab` (same
layout, other ports), built for that test and purged after it.

Timings (departure of a lagging replica, rejoin, failover) are printed; run
with `-s` to see them.
"""
import random
import re
import threading
import time

import psycopg
import pytest

from support import wait_for
from test_sharding import route_many

MAP = """\
[table.app.rkv]
column = id
type = bigint
strategy = hash
"""

RKV = "id bigint primary key, v text not null"
READ_SERVER = "select inet_server_port(), pg_is_in_recovery()"
INSERT = "insert into rkv (id, v) values (%s, %s)"
# One row whatever the key's state, so a stale read still says where it ran.
READ_KEY = "select count(*), max(v), inet_server_port(), pg_is_in_recovery() from rkv where id = %s"

FAST = dict(lag_check_interval_ms=50)
# Bounds no paused replica reaches during a test: only read-your-writes (not
# the lag bounds) can keep a read off a paused replica.
NEVER_TOO_LATE = dict(max_replica_lag_ms=3600000, max_replica_lag_bytes=1 << 40)


def hint(shard):
    return f"/* pgshard: shard={shard} */ "


# ---------------------------------------------------------------- helpers

def route_keys(config, keys):
    """{key: shard} for KEYS of table rkv, as `pgshardctl route` says."""
    keys = list(keys)
    return dict(zip(keys, route_many(config, "rkv", [str(k) for k in keys])))


def keys_on(config, shard, n, start=1):
    """N keys of rkv that route to SHARD."""
    routed = route_keys(config, range(start, start + 50 * n + 200))
    picked = [k for k, s in routed.items() if s == shard][:n]
    assert len(picked) == n, f"not {n} keys on {shard}"
    return picked


def served(conn, shard, sql=READ_SERVER, params=None):
    """(port, in_recovery) of the server that ran SQL (hinted to SHARD)."""
    return tuple(conn.execute(hint(shard) + sql, params).fetchone())


def check_served(lab, port, in_recovery):
    """A server's answer about itself must be consistent with the lab."""
    name, role = lab.shard_of_port(port)
    assert in_recovery == (role != "primary"), (port, role, in_recovery)
    return name, role


def wait_reads_on(px, shard, ports, timeout=10, message=None):
    """Wait until a hinted read of SHARD through PX is served by one of
    PORTS; returns the seconds it took."""
    t0 = time.monotonic()
    with px.connect(autocommit=True) as conn:
        wait_for(lambda: served(conn, shard)[0] in ports, timeout, interval=0.02,
                 message=message or f"a read of {shard} served by one of {sorted(ports)}")
    return time.monotonic() - t0


def wait_replicas_readable(px, lab, timeout=10):
    """Both shards' reads reach replicas (the monitor has checked them)."""
    for shard in lab.shards:
        wait_reads_on(px, shard.name, set(shard.replica_ports), timeout,
                      f"reads of {shard.name} to reach a replica (after the proxy started)")


def assert_reads_reach(conn, shard, ports, timeout=3):
    """A hinted read of SHARD on CONN is served by one of PORTS within
    TIMEOUT (a single read may meet a replica that a late check took out
    of the read set for a moment on a loaded machine)."""
    def reaches():
        try:
            return served(conn, shard)[0] in ports
        except psycopg.Error:
            return False
    wait_for(reaches, timeout, interval=0.02, message=f"a read of {shard} served by {ports}")


def sqlstate_of(exc):
    return getattr(exc, "sqlstate", None)


def assert_names_shard(message, shard):
    assert message.startswith("pgshard:"), f"message not from pgshard: {message!r}"
    assert re.search(rf"\b{shard}\b", message), f"message does not name shard {shard}: {message!r}"


class ReadLoad:
    """THREADS threads, each with its own autocommit connection to PX,
    running a hinted READ_SERVER on SHARD in a loop and recording
    (start, end, port or None, error or None) per statement. A failed
    statement's connection is replaced by a new one (a server dying may end
    the client session: 08006, never a silent reconnect)."""

    def __init__(self, px, shard, threads=3, pause=0.0):
        self.px, self.shard, self.pause = px, shard, pause
        self.records = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.crash = None

    def _run(self):
        conn = None
        try:
            while not self.stop_event.is_set():
                if conn is None or conn.closed:
                    try:
                        conn = self.px.connect(autocommit=True)
                    except psycopg.Error as exc:
                        now = time.monotonic()
                        with self.lock:
                            self.records.append((now, now, None, f"connect: {exc}"))
                        time.sleep(0.02)
                        continue
                t0 = time.monotonic()
                try:
                    port, _ = served(conn, self.shard)
                    rec = (t0, time.monotonic(), port, None)
                except psycopg.Error as exc:
                    rec = (t0, time.monotonic(), None,
                           f"{sqlstate_of(exc)}: {exc}".strip())
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                    conn = None
                with self.lock:
                    self.records.append(rec)
                if self.pause:
                    time.sleep(self.pause)
        except Exception as exc:  # noqa: BLE001
            self.crash = exc
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(15)
        if self.crash and exc[0] is None:
            raise self.crash

    def snapshot(self):
        with self.lock:
            return list(self.records)


class PrimaryWriter:
    """A thread inserting into `filler` directly on SHARD's primary every
    INTERVAL seconds, with synchronous_commit on (the lab's default is off,
    which would hold WAL back from the replicas for up to wal_writer_delay).
    `first_commit` is when the first insert had returned."""

    def __init__(self, lab, shard, interval=0.005):
        self.lab, self.shard, self.interval = lab, shard, interval
        self.first_commit = None
        self.count = 0
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error = None

    def _run(self):
        try:
            with self.lab.connect_primary(self.shard) as conn:
                conn.execute("set synchronous_commit = on")
                while not self.stop_event.is_set():
                    conn.execute("insert into filler (t) values ('x')")
                    self.count += 1
                    if self.first_commit is None:
                        self.first_commit = time.monotonic()
                        self.started.set()
                    time.sleep(self.interval)
        except Exception as exc:  # noqa: BLE001
            self.error = exc
            self.started.set()

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(10), "the primary writer did not commit within 10 s"
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(10)
        if self.error and exc[0] is None:
            raise self.error


def pause(lab, shard, index):
    lab.lag(shard, index, "pause")
    assert lab.replay_paused(shard, index), f"{shard} replica {index}: replay not paused"


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def rkv(replica_lab):
    """Table rkv (hash-sharded by id in MAP) and filler, empty, created
    directly on both primaries and replayed by every replica; replay running
    everywhere."""
    lab = replica_lab
    lab.resume_all()
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists rkv")
            conn.execute(f"create table rkv ({RKV})")
            conn.execute("drop table if exists filler")
            conn.execute("create table filler (id bigserial primary key, t text)")
    lab.wait_caught_up()
    return lab


@pytest.fixture
def replicas_resumed(replica_lab):
    """Resume replay on every replica after the test, whatever happened."""
    yield replica_lab
    replica_lab.resume_all()


# ---------------------------------------------------------------- the lab itself

def test_replica_lab_streams_and_pauses(rkv):
    """No proxy: the lab's replicas stream, and `lab lag pause|resume` holds
    back and releases one replica's replay. What the other tests rely on."""
    lab = rkv
    assert len(set(lab.server_ports())) == 6
    for shard in lab.shards:
        assert len(shard.replica_ports) == 2
        with lab.connect_primary(shard.name) as conn:
            assert conn.execute(READ_SERVER).fetchone() == (shard.primary_port, False)
            conn.execute(INSERT, (1, "before"))
        lab.wait_caught_up()
        for index, port in enumerate(shard.replica_ports):
            with lab.connect_replica(shard.name, index) as conn:
                assert conn.execute(READ_SERVER).fetchone() == (port, True)
                assert conn.execute("select v from rkv where id = 1").fetchone() == ("before",)
                assert conn.execute("select pg_is_wal_replay_paused()").fetchone()[0] is False
    try:
        pause(rkv, "s0", 1)
        with lab.connect_primary("s0") as conn:
            conn.execute("set synchronous_commit = on")
            conn.execute(INSERT, (2, "while paused"))
            target = conn.execute("select pg_current_wal_flush_lsn()::text").fetchone()[0]
        with lab.connect_replica("s0", 0) as conn:
            wait_for(lambda: conn.execute("select count(*) from rkv where id = 2").fetchone()[0],
                     10, message="s0 replica 0 (not paused) to replay the insert")
        time.sleep(0.3)
        with lab.connect_replica("s0", 1) as conn:
            assert conn.execute("select count(*) from rkv where id = 2").fetchone()[0] == 0
            # It still receives WAL; it just does not apply it.
            wait_for(lambda: conn.execute("select pg_last_wal_receive_lsn() >= %s::pg_lsn",
                                          (target,)).fetchone()[0], 10,
                     message="the paused replica to receive the WAL")
            assert conn.execute("select pg_last_wal_replay_lsn() < %s::pg_lsn",
                                (target,)).fetchone()[0]
        assert not lab.replay_paused("s0", 0)
        assert not any(lab.replay_paused("s1", i) for i in (0, 1))
    finally:
        lab.lag("s0", 1, "resume")
    assert not lab.replay_paused("s0", 1)
    lab.wait_caught_up()
    with lab.connect_replica("s0", 1) as conn:
        assert conn.execute("select v from rkv where id = 2").fetchone() == ("while paused",)
    for port in lab.server_ports():
        assert lab.datadir(port).name == "data"


# ---------------------------------------------------------------- read/write split

def test_reads_spread_over_replicas_writes_on_primaries(rkv, replica_proxy):
    lab = rkv
    # The default check interval: a check answered late (a loaded machine)
    # takes a replica out of the read set for a moment.
    px = replica_proxy(extra_ini=MAP, pool_size=8)
    wait_replicas_readable(px, lab)
    for shard in lab.shards:
        keys = keys_on(px.config_path, shard.name, 20)
        # 200 keyless reads (hinted) over 4 connections, autocommit.
        seen = []
        conns = [px.connect(autocommit=True) for _ in range(4)]
        try:
            for i in range(200):
                seen.append(served(conns[i % 4], shard.name))
            # 200 reads routed by key.
            for i in range(200):
                count, _, port, rec = conns[i % 4].execute(READ_KEY, (keys[i % 20],)).fetchone()
                assert count == 0
                seen.append((port, rec))
        finally:
            for conn in conns:
                conn.close()
        ports = {port for port, _ in seen}
        assert ports == set(shard.replica_ports), \
            f"{shard.name}: reads served by {sorted(ports)}, replicas are {shard.replica_ports}"
        assert all(rec for _, rec in seen), f"{shard.name}: a read not in recovery"
        per_port = {p: sum(1 for q, _ in seen if q == p) for p in ports}
        print(f"\n{shard.name}: 400 reads per replica port: {per_port}")
        # Round robin over the replicas in the read set: about half each.
        assert min(per_port.values()) >= 120, f"{shard.name}: reads not spread: {per_port}"

        # Writes: INSERT/UPDATE/DELETE ... RETURNING, SELECT FOR UPDATE/SHARE.
        with px.connect(autocommit=True) as conn:
            for key in keys:
                row = conn.execute(INSERT + " returning inet_server_port(), pg_is_in_recovery()",
                                   (key, "w")).fetchone()
                assert row == (shard.primary_port, False), (shard.name, key, row)
            row = conn.execute("update rkv set v = 'u' where id = %s"
                               " returning inet_server_port(), pg_is_in_recovery()",
                               (keys[0],)).fetchone()
            assert row == (shard.primary_port, False)
            for lock in ("for update", "for share"):
                row = conn.execute(f"select inet_server_port(), pg_is_in_recovery(), v from rkv"
                                   f" where id = %s {lock}", (keys[1],)).fetchone()
                assert row == (shard.primary_port, False, "w"), (lock, row)
            row = conn.execute("delete from rkv where id = %s"
                               " returning inet_server_port(), pg_is_in_recovery()",
                               (keys[2],)).fetchone()
            assert row == (shard.primary_port, False)
        with lab.connect_primary(shard.name) as conn:
            assert conn.execute("select count(*) from rkv").fetchone()[0] == 19


def test_extended_reads_take_turns(rkv, replica_proxy):
    """Reads in the extended protocol with the unnamed statement (Parse,
    Bind, Describe, Execute, Sync sent together, as pgbench -M extended and
    psycopg without auto-prepare send them) take the replicas in turn like
    simple queries: one connection, so one worker's round robin. (The Parse
    was placed by its Bind without taking the turn and the Bind followed the
    Parse, so the turn never moved: every such read went to one replica.)"""
    lab = rkv
    px = replica_proxy(extra_ini=MAP)
    wait_replicas_readable(px, lab)
    shard = lab.shards[0]
    keys = keys_on(px.config_path, shard.name, 5)
    with px.connect(autocommit=True) as conn:
        conn.prepare_threshold = None  # never a named statement: Parse every time
        ports = []
        for i in range(40):
            count, _, port, rec = conn.execute(READ_KEY, (keys[i % 5],)).fetchone()
            assert rec and count == 0, (port, rec, count)
            ports.append(port)
        # Keyless (hinted) reads with a parameter, placed by ROUTE_ANY.
        for i in range(40):
            port, rec = served(conn, shard.name, READ_SERVER + " where %s::int > 0", (i + 1,))
            assert rec, port
            ports.append(port)
    per_port = {p: ports.count(p) for p in sorted(set(ports))}
    print(f"\n{shard.name}: 80 extended-protocol reads on one connection: {per_port}")
    assert set(per_port) <= set(shard.replica_ports), per_port
    # Round robin: 40 each; a check answered very late may take one replica
    # out for a few rounds on a loaded machine.
    assert min(per_port.get(p, 0) for p in shard.replica_ports) >= 24, per_port


def test_transactions_and_route_settings(rkv, replica_proxy):
    lab = rkv
    px = replica_proxy(extra_ini=MAP, log_debug="true")
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    key = keys_on(px.config_path, "s0", 1)[0]
    with px.connect() as conn:  # not autocommit: psycopg sends BEGIN
        answers = [served(conn, "s0") for _ in range(3)]
        answers.append(tuple(conn.execute(READ_KEY, (key,)).fetchone()[2:]))
        conn.commit()
        assert set(answers) == {(s0.primary_port, False)}, \
            f"an explicit (read-write) transaction ran on {answers}"

        # BEGIN READ ONLY may go to a replica; wherever it runs, it stays on
        # one server, that server's answers are consistent, writes refused.
        conn.read_only = True
        answers = [served(conn, "s0") for _ in range(3)]
        conn.commit()
        assert len(set(answers)) == 1, f"a READ ONLY transaction moved: {answers}"
        port, in_recovery = answers[0]
        assert port in (s0.primary_port, *s0.replica_ports)
        check_served(lab, port, in_recovery)
        print(f"\nBEGIN READ ONLY ran on port {port} (in recovery: {in_recovery})")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(INSERT, (key, "read only"))
        assert sqlstate_of(exc.value) == "25006", exc.value
        conn.rollback()
        conn.read_only = None

    with px.connect(autocommit=True) as conn:
        conn.execute("begin read only")
        port, in_recovery = served(conn, "s0")
        assert served(conn, "s0") == (port, in_recovery)
        conn.execute("commit")

        # Quoted: PRIMARY is a reserved word in PostgreSQL's grammar, so the
        # bare `set pgshard.route = primary` is not valid SQL.
        conn.execute("set pgshard.route = 'primary'")
        assert {served(conn, "s0") for _ in range(10)} == {(s0.primary_port, False)}
        assert tuple(conn.execute(READ_KEY, (key,)).fetchone()[2:]) == (s0.primary_port, False)
        conn.execute("set pgshard.route = 'replica'")
        ports = {served(conn, "s0") for _ in range(20)}
        assert ports <= {(p, True) for p in s0.replica_ports}, ports
        conn.execute("set pgshard.route = 'auto'")
        assert_reads_reach(conn, "s0", s0.replica_ports)
        # A write still goes to the primary whatever the route preference.
        conn.execute("set pgshard.route = replica")  # unquoted works for replica and auto
        row = conn.execute(INSERT + " returning inet_server_port()", (key, "w")).fetchone()
        assert row == (s0.primary_port,)


# ---------------------------------------------------------------- lag

def test_lagging_replica_leaves_and_rejoins(rkv, replica_proxy, replicas_resumed):
    lab = rkv
    bound_ms, interval_ms = 200, 50
    px = replica_proxy(extra_ini=MAP, max_replica_lag_ms=bound_ms,
                       lag_check_interval_ms=interval_ms, pool_size=8)
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    lagging, other = s0.replica_ports
    with ReadLoad(px, "s0", threads=2, pause=0.002) as load:
        time.sleep(0.3)
        t_pause = time.monotonic()
        pause(lab, "s0", 0)
        with PrimaryWriter(lab, "s0") as writer:
            t_exceed = writer.first_commit + bound_ms / 1000
            # Watch for 1.5 s after the bound was passed.
            time.sleep(max(0.0, t_exceed + 1.5 - time.monotonic()))
            records = load.snapshot()
            # The lag keeps growing while the writer runs: still out.
            time.sleep(0.5)
            later = load.snapshot()[len(records):]
        assert writer.count > 50, f"only {writer.count} writes on the primary"
        t_resume = time.monotonic()
        lab.lag("s0", 0, "resume")
        rejoin = None
        deadline = t_resume + 10
        while time.monotonic() < deadline:
            if any(port == lagging and t0 > t_resume for t0, _, port, _ in load.snapshot()):
                rejoin = min(t1 for t0, t1, port, _ in load.snapshot()
                             if port == lagging and t0 > t_resume) - t_resume
                break
            time.sleep(0.02)
    errors = [r for r in records + later if r[3]]
    assert not errors, f"reads failed: {errors[:3]}"
    # Reads it took after the pause while still within the bound (until the
    # first commit its lag is nil; up to the bound it is allowed): a window
    # of bound_ms, where a few ms before the first commit was too narrow
    # for two reading threads on a busy machine.
    before = [r for r in records if t_pause < r[0] and r[1] < t_exceed]
    assert any(port == lagging for _, _, port, _ in before), \
        "the replica took no reads before it lagged: the test proves nothing"
    on_lagging = [t1 for _, t1, port, _ in records if port == lagging]
    departure = max(on_lagging) - t_exceed
    print(f"\nlag bound {bound_ms} ms passed at +{t_exceed - t_pause:.3f} s after pause; "
          f"last read on the lagging replica {departure * 1000:+.0f} ms after that "
          f"(target <= {2 * interval_ms} ms; {len(records)} reads)")
    assert departure <= 1.0, f"the lagging replica took reads {departure:.3f} s past its bound"
    after = [r for r in records if r[0] > t_exceed + 1.0] + later
    assert after and not any(port == lagging for _, _, port, _ in after), \
        "the lagging replica took reads again while still lagging"
    # Elsewhere means the other replica (the primary only when a late check
    # on a loaded machine takes it out of the read set for a moment).
    on_other = sum(1 for _, _, port, _ in after if port == other)
    assert on_other >= len(after) // 2, \
        f"reads after departure: only {on_other} of {len(after)} on the other replica"
    assert rejoin is not None, "the replica did not take reads within 10 s of resume"
    print(f"rejoined {rejoin:.3f} s after resume")


# ---------------------------------------------------------------- read-your-writes

def ryw_workload(px, sessions=10, pairs=1000, key_base=0, conns=None, think=0.0):
    """SESSIONS threads, each on its own autocommit connection (CONNS to
    reuse), doing PAIRS times: insert a unique key, then (after a random
    pause of up to THINK seconds) read it back by key. Returns (stale reads
    [(key, count, v)], {port: reads}, conns, seconds)."""
    stale, ports, failures = [], {}, []
    lock = threading.Lock()
    conns = conns or [px.connect(autocommit=True) for _ in range(sessions)]

    def run(n, conn):
        rng = random.Random(n)
        my_stale, my_ports = [], {}
        try:
            for i in range(pairs):
                key = key_base + n * 1_000_000 + i
                value = f"s{n}-{i}"
                conn.execute(INSERT, (key, value))
                if think:
                    time.sleep(rng.uniform(0, think))
                count, v, port, _ = conn.execute(READ_KEY, (key,)).fetchone()
                my_ports[port] = my_ports.get(port, 0) + 1
                if count != 1 or v != value:
                    my_stale.append((key, count, v))
        except Exception as exc:  # noqa: BLE001
            failures.append(f"session {n}: {exc!r}")
        with lock:
            stale.extend(my_stale)
            for p, c in my_ports.items():
                ports[p] = ports.get(p, 0) + c

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(n, c), daemon=True) for n, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert not failures, failures[:3]
    assert sum(ports.values()) == sessions * pairs
    return stale, ports, conns, elapsed


def pause_all(lab):
    for shard in lab.shards:
        for index in range(len(shard.replica_ports)):
            pause(lab, shard.name, index)


def test_ryw_lsn_with_replay_paused(rkv, replica_proxy, replicas_resumed):
    lab = rkv
    px = replica_proxy(extra_ini=MAP, read_your_writes="lsn", pool_size=12, **FAST,
                       **NEVER_TOO_LATE)
    wait_replicas_readable(px, lab)
    primaries = {s.primary_port for s in lab.shards}
    replicas = {p for s in lab.shards for p in s.replica_ports}
    pause_all(lab)
    stale, ports, conns, elapsed = ryw_workload(px, sessions=10, pairs=1000)
    try:
        print(f"\nlsn, replay paused: 10000 write-then-read pairs in {elapsed:.1f} s; "
              f"reads by port {ports}; {len(stale)} stale")
        assert not stale, f"{len(stale)} reads missed their own write, e.g. {stale[:5]}"
        assert set(ports) <= primaries, f"reads served by paused replicas: {ports}"

        # Resume: the same sessions (no further writes) read from replicas again.
        lab.resume_all()
        t0 = time.monotonic()
        for n, conn in enumerate(conns):
            key = n * 1_000_000 + 999
            def replica_read(conn=conn, key=key):
                count, v, port, _ = conn.execute(READ_KEY, (key,)).fetchone()
                assert count == 1, f"key {key} missing on port {port}"
                return port in replicas
            wait_for(replica_read, 10, interval=0.02,
                     message=f"session {n} to read from a replica again after resume")
        print(f"every session read from a replica {time.monotonic() - t0:.2f} s after "
              "the replicas caught up")

        # Live replication: a replica may serve a read only once it has
        # replayed the session's commit, however soon the read comes. Reads
        # 0-300 ms after the write (6 check intervals) meet replicas around
        # the moment they pass the commit: where an LSN sampled too early
        # (e.g. before an asynchronous commit's WAL was written) would show.
        stale, ports, _, elapsed = ryw_workload(px, sessions=10, pairs=50, key_base=500_000,
                                                conns=conns, think=0.3)
        on_replicas = sum(c for p, c in ports.items() if p in replicas)
        print(f"lsn, replay running: 500 pairs, reads 0-300 ms after the write, in "
              f"{elapsed:.1f} s; reads by port {ports}")
        assert not stale, f"{len(stale)} reads missed their own write, e.g. {stale[:5]}"
        assert on_replicas, "no read up to 300 ms after a write was served by a replica"
    finally:
        for conn in conns:
            conn.close()


def test_ryw_off_sees_stale_reads(rkv, replica_proxy, replicas_resumed):
    """The same workload without read-your-writes misses writes: proof that
    the lsn test above can fail."""
    lab = rkv
    px = replica_proxy(extra_ini=MAP, read_your_writes="off", pool_size=12, **FAST,
                       **NEVER_TOO_LATE)
    wait_replicas_readable(px, lab)
    replicas = {p for s in lab.shards for p in s.replica_ports}
    pause_all(lab)
    stale, ports, conns, elapsed = ryw_workload(px, sessions=10, pairs=1000)
    for conn in conns:
        conn.close()
    print(f"\noff, replay paused: 10000 pairs in {elapsed:.1f} s; reads by port {ports}; "
          f"{len(stale)} stale")
    assert stale, "no stale read with read_your_writes = off and replay paused"
    # Mostly replicas (a replica whose check is late on a loaded machine may
    # leave the read set for a moment, and lag_fallback sends reads to the primary).
    on_replicas = sum(c for p, c in ports.items() if p in replicas)
    assert on_replicas >= 5000, f"reads by port with ryw off: {ports}"


def test_ryw_session_mode(rkv, replica_proxy):
    lab = rkv
    px = replica_proxy(extra_ini=MAP, read_your_writes="session")
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    key, key2 = keys_on(px.config_path, "s0", 2)
    with px.connect(autocommit=True) as writer, px.connect(autocommit=True) as reader:
        assert_reads_reach(writer, "s0", s0.replica_ports)
        writer.execute(INSERT, (key, "mine"))
        t_end = time.monotonic() + 1.5
        answers = []
        while time.monotonic() < t_end:
            answers.append(served(writer, "s0"))
            answers.append(tuple(writer.execute(READ_KEY, (key,)).fetchone()))
            time.sleep(0.05)
        assert set(answers) == {(s0.primary_port, False), (1, "mine", s0.primary_port, False)}, \
            f"a session that wrote read from {set(answers)}"
        # The reader never writes: replicas, all the while.
        answers = [served(reader, "s0") for _ in range(30)]
        on_replicas = sum(1 for a in answers if a in {(p, True) for p in s0.replica_ports})
        assert on_replicas >= 25, f"a session that never wrote read from {answers}"

    # Per session: SET pgshard.read_your_writes overrides the database's policy.
    px_off = replica_proxy(extra_ini=MAP, read_your_writes="off")
    wait_replicas_readable(px_off, lab)
    with px_off.connect(autocommit=True) as conn:
        conn.execute("set pgshard.read_your_writes = session")
        conn.execute(INSERT, (key2, "mine too"))
        for _ in range(10):
            assert served(conn, "s0") == (s0.primary_port, False)
    with px.connect(autocommit=True) as conn:
        conn.execute("set pgshard.read_your_writes = off")
        conn.execute("update rkv set v = 'again' where id = %s", (key,))
        lab.wait_caught_up()
        wait_for(lambda: served(conn, "s0")[0] in s0.replica_ports, 5,
                 message="a session with read_your_writes off to read from a replica")


def test_ryw_window_mode(rkv, replica_proxy):
    lab = rkv
    window_ms = 500
    px = replica_proxy(extra_ini=MAP, read_your_writes="window", ryw_window_ms=window_ms)
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    keys = keys_on(px.config_path, "s0", 3)
    with px.connect(autocommit=True) as conn:
        for n, key in enumerate(keys):
            wait_for(lambda: served(conn, "s0")[0] in s0.replica_ports, 5,
                     message="reads on replicas before the write")
            t_write = time.monotonic()
            conn.execute(INSERT, (key, "w"))
            t_written = time.monotonic()
            inside = []
            while time.monotonic() < t_write + window_ms / 1000 * 0.6:
                inside.append(served(conn, "s0"))
            assert inside and set(inside) == {(s0.primary_port, False)}, \
                f"reads inside the window served by {set(inside)}"
            while True:
                t0 = time.monotonic()
                port, _ = served(conn, "s0")
                if port in s0.replica_ports:
                    break
                assert t0 < t_written + window_ms / 1000 + 3, \
                    "still on the primary 3 s after the window closed"
                time.sleep(0.01)
            print(f"\nwrite {n}: first replica read began {(t0 - t_write) * 1000:.0f} ms "
                  f"after the write was sent (window {window_ms} ms)")
            # pgshard keeps times in whole milliseconds (and the write's own
            # time follows t_write): allow that, not more.
            assert t0 >= t_write + window_ms / 1000 - 0.005, \
                f"a replica served a read {(t0 - t_write) * 1000:.1f} ms after the write"


# ---------------------------------------------------------------- lag_fallback

@pytest.mark.parametrize("fallback", ["error", "primary"])
def test_lag_fallback(rkv, replica_proxy, replicas_resumed, fallback):
    lab = rkv
    px = replica_proxy(extra_ini=MAP, lag_fallback=fallback, max_replica_lag_ms=200,
                       read_your_writes="off", **FAST)
    wait_replicas_readable(px, lab)
    s0, s1 = lab.shard("s0"), lab.shard("s1")
    pause(lab, "s0", 0)
    pause(lab, "s0", 1)
    with PrimaryWriter(lab, "s0"), px.connect(autocommit=True) as conn:
        if fallback == "error":
            def refused():
                try:
                    served(conn, "s0")
                    return None
                except psycopg.Error as exc:
                    return exc
            exc = wait_for(refused, 5, interval=0.02,
                           message="a read of s0 refused with both replicas lagging")
            assert sqlstate_of(exc) == "55000", f"SQLSTATE {sqlstate_of(exc)}: {exc}"
            assert_names_shard(exc.diag.message_primary or "", "s0")
            print(f"\nrefused: {exc.diag.message_primary}")
            # The session stays usable; s1's replicas are fine.
            assert_reads_reach(conn, "s1", s1.replica_ports)
            with pytest.raises(psycopg.Error) as again:
                served(conn, "s0")
            assert sqlstate_of(again.value) == "55000"
            # Writes are not affected.
            key = keys_on(px.config_path, "s0", 1)[0]
            assert conn.execute(INSERT + " returning inet_server_port()",
                                (key, "w")).fetchone() == (s0.primary_port,)
        else:
            wait_for(lambda: served(conn, "s0") == (s0.primary_port, False), 5, interval=0.02,
                     message="reads of s0 on its primary with both replicas lagging")
            assert {served(conn, "s0") for _ in range(20)} == {(s0.primary_port, False)}
            assert_reads_reach(conn, "s1", s1.replica_ports)
    lab.resume_all()
    took = wait_reads_on(px, "s0", set(s0.replica_ports), 10)
    print(f"reads of s0 back on a replica {took:.2f} s after the replicas caught up")


# ---------------------------------------------------------------- failures

def test_replica_stopped_during_read_load_then_restarted(rkv, replica_proxy):
    lab = rkv
    px = replica_proxy(extra_ini=MAP, pool_size=8, **FAST)
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    victim, survivor = s0.replica_ports
    try:
        with ReadLoad(px, "s0", threads=2, pause=0.002) as load:
            time.sleep(0.5)
            t_stop = time.monotonic()
            lab.stop_server(victim, mode="immediate")
            t_stopped = time.monotonic()
            time.sleep(2.5)
            records = load.snapshot()
            t_restart = time.monotonic()
            lab.restart_stopped(victim)
            t_up = time.monotonic()
            rejoin = None
            while time.monotonic() < t_up + 15:
                hits = [t1 for t0, t1, port, _ in load.snapshot()
                        if port == victim and t0 > t_restart]
                if hits:
                    rejoin = min(hits) - t_restart
                    break
                time.sleep(0.02)
    finally:
        if not lab.datadir(victim).joinpath("postmaster.pid").exists():
            lab.restart_stopped(victim)
    before = [r for r in records if r[1] < t_stop]
    assert any(port == victim for _, _, port, _ in before), "the victim took no reads before"
    errors = [r for r in records if r[3]]
    last_trouble = max([r[1] for r in records if r[3] or r[2] == victim] or [t_stop])
    print(f"\nstop took {t_stopped - t_stop:.2f} s; {len(errors)} failed reads, "
          f"e.g. {errors[:1]}; last failure or read on the stopped replica "
          f"{(last_trouble - t_stop) * 1000:.0f} ms after the stop began")
    settled = [r for r in records if r[0] > t_stop + 1.0]
    assert settled, "no reads after the stop"
    bad = [r for r in settled if r[3] or r[2] == victim]
    assert not bad, (f"{len(bad)} of {len(settled)} reads started >= 1 s after the stop "
                     f"failed or went to the stopped replica, e.g. {bad[:3]}")
    # Elsewhere means the other replica (the primary only when a late check
    # on a loaded machine takes the survivor out for a moment).
    on_survivor = sum(1 for r in settled if r[2] == survivor)
    print(f"reads >= 1 s after the stop: {on_survivor} of {len(settled)} on the other replica")
    assert on_survivor >= len(settled) // 2, \
        f"only {on_survivor} of {len(settled)} reads on the surviving replica"
    for _, _, _, err in errors:  # in-flight failures must say what happened
        assert err.split(":")[0].startswith(("08", "57P")) or "pgshard:" in err, \
            f"a read failed without a connection-class SQLSTATE or a pgshard message: {err}"
    assert rejoin is not None, "the restarted replica took no reads within 15 s"
    print(f"restart (lab up) took {t_up - t_restart:.1f} s; first read on the restarted "
          f"replica {rejoin:.2f} s after the restart began")


def test_primary_stopped_then_replica_promoted(failover_lab, failover_proxy):
    lab = failover_lab
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute(f"create table rkv ({RKV})")
    lab.wait_caught_up()
    px = failover_proxy(extra_ini=MAP, **FAST)
    wait_replicas_readable(px, lab)
    s0, s1 = lab.shard("s0"), lab.shard("s1")
    k0 = keys_on(px.config_path, "s0", 40)
    k1 = keys_on(px.config_path, "s1", 40)
    conn = px.connect(autocommit=True)
    try:
        assert conn.execute(INSERT + " returning inet_server_port()",
                            (k0[0], "before")).fetchone() == (s0.primary_port,)
        lab.wait_caught_up()
        # The premise: every replica has the row before the primary dies
        # (replay position alone has not always meant that here).
        for port in s0.replica_ports:
            def has_row(p=port):
                with lab.connect_port(p) as direct:
                    return direct.execute("select count(*) from rkv where id = %s",
                                          (k0[0],)).fetchone()[0] == 1
            wait_for(has_row, 15, interval=0.05, message=f"the row on replica {port}")
        # And pgshard knows it: the session that wrote reads s0 from a
        # replica again only once the monitor has sampled a primary LSN at or
        # past its commit (read_your_writes = lsn). Stopped before that, the
        # primary would be the only place this session may read.
        wait_for(lambda: served(conn, "s0")[1] is True, 15, interval=0.05,
                 message="the writing session to read s0 from a replica again")

        t_stop = time.monotonic()
        lab.stop_server(s0.primary_port, mode="immediate")
        attempts = []
        for i in range(1, 6):
            if i > 1:
                time.sleep(0.25)
            t0 = time.monotonic()
            with pytest.raises(psycopg.Error) as exc:
                if conn.closed:
                    conn = px.connect(autocommit=True)
                conn.execute(INSERT, (k0[i], "primary down"))
            took = time.monotonic() - t0
            attempts.append((t0 - t_stop, took, sqlstate_of(exc.value),
                             exc.value.diag.message_primary))
            assert took < 2.0, f"a write to s0 took {took:.2f} s to fail"
            assert sqlstate_of(exc.value) == "08006", f"SQLSTATE {sqlstate_of(exc.value)}: " \
                                                      f"{exc.value}"
            if t0 - t_stop >= 0.5:
                assert_names_shard(exc.value.diag.message_primary or "", "s0")
        print("\nwrites with s0's primary down: " + "; ".join(
            f"+{at:.2f}s failed in {took * 1000:.0f} ms: {state} {msg}"
            for at, took, state, msg in attempts))
        # Reads of s0 go on, from its replicas (a new session, then the one
        # whose writes failed: what it committed before, the replicas have
        # and pgshard knows they have); s1 is untouched.
        with px.connect(autocommit=True) as fresh:
            for _ in range(10):
                port, in_recovery = served(fresh, "s0")
                assert port in s0.replica_ports and in_recovery
                row = fresh.execute(READ_KEY, (k0[0],)).fetchone()
                if row[:2] != (1, "before"):
                    direct = {}
                    for p in s0.replica_ports:
                        with lab.connect_port(p) as d:
                            direct[p] = d.execute(
                                "select count(*), pg_last_wal_replay_lsn()::text from rkv where id = %s",
                                (k0[0],)).fetchone()
                    raise AssertionError(f"{row} k={k0[0]} direct={direct}")
                assert row[2] in s0.replica_ports, row
            assert fresh.execute(INSERT + " returning inet_server_port()",
                                 (k1[0], "s1 fine")).fetchone() == (s1.primary_port,)
            # A text ORDER BY over both shards still merges: the collations
            # pgshard read from the primary stay known while it is down.
            rows = fresh.execute("select v, id from rkv order by v, id").fetchall()
            assert rows == sorted(rows) and ("before", k0[0]) in rows, rows
        # The session survives a refused write (DESIGN: refusals leave it usable).
        assert not conn.closed, "the session was closed by a refused write"
        for _ in range(10):
            port, in_recovery = served(conn, "s0")
            assert port in s0.replica_ports and in_recovery, \
                f"the session whose writes failed read from {port}"
        assert conn.execute(INSERT + " returning inet_server_port()",
                            (k1[1], "s1 fine")).fetchone() == (s1.primary_port,)

        # Promote replica 0 of s0: writes resume on it, through pgshard.
        promoted = s0.replica_ports[0]
        with lab.connect_port(promoted) as direct:
            assert direct.execute("select pg_promote(true, 30)").fetchone()[0] is True
            assert direct.execute("select pg_is_in_recovery()").fetchone()[0] is False
        t_promoted = time.monotonic()

        def write_lands():
            nonlocal conn
            try:
                if conn.closed:
                    conn = px.connect(autocommit=True)
                return conn.execute(INSERT + " returning inet_server_port(), pg_is_in_recovery()",
                                    (k0[10], "after promotion")).fetchone()
            except psycopg.Error:
                return None
        row = wait_for(write_lands, 15, interval=0.05, message="a write to s0 to succeed "
                       "through pgshard after its replica was promoted")
        print(f"writes to s0 succeed {time.monotonic() - t_promoted:.2f} s after promotion")
        assert row == (promoted, False), f"the write ran on {row}, not the promoted {promoted}"
        for i in range(11, 21):
            assert conn.execute(INSERT + " returning inet_server_port()",
                                (k0[i], "after promotion")).fetchone() == (promoted,)
        assert conn.execute(INSERT + " returning inet_server_port()",
                            (k1[2], "s1 fine")).fetchone() == (s1.primary_port,)
    finally:
        conn.close()
    with lab.connect_port(promoted) as direct:
        assert direct.execute("select count(*) from rkv where v = 'after promotion'"
                              ).fetchone()[0] == 11
        assert direct.execute("select count(*) from rkv where v = 'primary down'"
                              ).fetchone()[0] == 0
