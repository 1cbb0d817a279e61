"""End-to-end two-phase commit through pgshard's own commit flow
(cross_shard_writes = 2pc, proxy/coordinator.c), including pgshard killed
between the phases (PGSHARD_FAULT) and recovery by another pgshard.

Each test writes through pgshard a transaction that inserts keys on both
shards (ids 1..N spread over s0 and s1 by hash), then checks the shards
directly. s0, the first written shard, is the decision shard: its part
commits one-phase together with the commit row in pgshard.twophase_decision,
and s1 prepares. The crash tests start pgshard with PGSHARD_FAULT so it
exits with _exit(137) at a point of the commit, and check that another
pgshard finished the transaction the same way on both shards:
  2pc_after_prepare   s1 prepared, s0's commit row not committed: rolled back
  2pc_after_decision  s0 committed with its row, no COMMIT PREPARED: committed
either by the next pgshard at its startup, or by an instance that ran all
along beside the one that died (its monitor's periodic pass).

A shard lost between the decision and its COMMIT PREPARED
(2pc_pause_after_decision holds the worker 3 s there while the test stops
s1): s0 commits, and the monitor's pass commits s1's prepared transaction
once s1 is back.
"""
import re
import subprocess
import threading

import psycopg
import pytest

from conftest import PGSHARDCTL
from support import wait_for
from test_twophase import (TABLE, decision_rows, prepared_gids, rollback_all_prepared,
                           reset_decisions)

IDS = list(range(1, 41))
MAP = f"""
[table.app.{TABLE}]
column = id
type = bigint
strategy = hash
"""


@pytest.fixture
def twopc_e2e(shard_lab):
    """TABLE on both shards (the gid column is unused here: nullable), no
    prepared transactions or decision rows before or after."""
    rollback_all_prepared(shard_lab)
    reset_decisions(shard_lab)
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute(f"drop table if exists {TABLE}")
            conn.execute(f"create table {TABLE} (id bigint primary key deferrable initially "
                         "deferred, gid text)")
    yield shard_lab
    rollback_all_prepared(shard_lab)


def rows_per_shard(lab):
    out = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            out[shard.name] = sorted(r[0] for r in conn.execute(f"select id from {TABLE}"))
    return out


def start_2pc_proxy(sharded_proxy, extra=""):
    return sharded_proxy(cross_shard_writes="2pc", extra_ini=MAP + "\n" + extra)


def write_everywhere(px):
    """One transaction inserting IDS (both shards), committed by the client."""
    with px.connect() as conn:
        with conn.cursor() as cur:
            for i in IDS:
                cur.execute(f"insert into {TABLE} (id) values (%s)", (i,))
        conn.commit()


def committed_gids(lab):
    return [gid for gid, (owner, aborted) in decision_rows(lab, "s0").items() if not aborted]


def test_commit_is_atomic_and_recorded(twopc_e2e, sharded_proxy):
    lab = twopc_e2e
    px = start_2pc_proxy(sharded_proxy)
    write_everywhere(px)
    rows = rows_per_shard(lab)
    assert rows["s0"] and rows["s1"], "the ids must reach both shards"
    assert sorted(rows["s0"] + rows["s1"]) == IDS
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    # The commit row is on the decision shard only, the nodes' login its
    # owner; the gid names this instance and s0.
    (gid,) = decision_rows(lab, "s0")
    assert decision_rows(lab, "s0")[gid] == ("postgres", False)
    assert decision_rows(lab, "s1") == {}
    m = re.search(r"this process is instance ([0-9a-f]{16})", px.log_text())
    assert m and gid.startswith(f"pgshard_{m.group(1)}_27f1bf38a14ee03e_"), gid
    # Prepared nowhere any more: a recovery pass deletes the row.
    wait_for(lambda: decision_rows(lab, "s0") == {}, 20, interval=0.2,
             message="the finished commit's row to be cleaned up")
    px.assert_alive()


def shard_of(px, key, table=TABLE):
    """The shard `pgshardctl route` names for KEY of TABLE under PX's config."""
    proc = subprocess.run([str(PGSHARDCTL), "route", str(px.config_path), "app", table, str(key)],
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.split()[0]


@pytest.mark.parametrize("failing", ["s1", "s0"])
def test_failure_at_commit_rolls_back_everywhere(twopc_e2e, sharded_proxy, failing):
    """A deferred unique violation fails s1's PREPARE, or s0's COMMIT (the
    decision shard's, after s1 prepared): the client gets the error at
    COMMIT and no shard keeps anything of the transaction."""
    lab = twopc_e2e
    px = start_2pc_proxy(sharded_proxy)
    dup = next(i for i in IDS if shard_of(px, i) == failing)
    with lab.connect_primary(failing) as conn:
        conn.execute(f"insert into {TABLE} (id) values (%s)", (dup,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        write_everywhere(px)
    expected = {"s0": [], "s1": []}
    expected[failing] = [dup]
    assert rows_per_shard(lab) == expected
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert committed_gids(lab) == []
    px.assert_alive()


def test_refused_without_a_decision_table(twopc_e2e, sharded_proxy):
    """The decision table on s0 disappears while pgshard runs: its commit
    row INSERT fails, and the transaction rolls back everywhere; the next
    recovery pass creates the table again and commits go through."""
    lab = twopc_e2e
    px = start_2pc_proxy(sharded_proxy)
    with lab.connect_primary("s0") as conn:
        conn.execute("drop table pgshard.twophase_decision")
    with pytest.raises(psycopg.errors.UndefinedTable):
        write_everywhere(px)
    assert rows_per_shard(lab) == {"s0": [], "s1": []}
    assert prepared_gids(lab, "s1") == set()

    def recreated():
        with lab.connect_primary("s0") as conn:
            return conn.execute(
                "select to_regclass('pgshard.twophase_decision') is not null").fetchone()[0]
    wait_for(recreated, 20, interval=0.2, message="recovery to create the table again")
    write_everywhere(px)
    assert sorted(sum(rows_per_shard(lab).values(), [])) == IDS


def crash_in_commit(sharded_proxy, monkeypatch, fault):
    """A pgshard that exits at FAULT while committing write_everywhere."""
    monkeypatch.setenv("PGSHARD_FAULT", fault)
    px = start_2pc_proxy(sharded_proxy)
    monkeypatch.delenv("PGSHARD_FAULT")
    with pytest.raises(psycopg.OperationalError):
        write_everywhere(px)
    assert px.wait_exit(10) == 137
    return px


def test_crash_after_prepare_rolls_back(twopc_e2e, sharded_proxy, monkeypatch):
    lab = twopc_e2e
    crash_in_commit(sharded_proxy, monkeypatch, "2pc_after_prepare")
    # s1 holds the prepared transaction; s0's part (and its commit row) died
    # with the connection.
    gids = prepared_gids(lab, "s1")
    assert len(gids) == 1 and prepared_gids(lab, "s0") == set()
    assert decision_rows(lab, "s0") == {}
    # The next pgshard rolls it back, at startup.
    px2 = start_2pc_proxy(sharded_proxy)
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert rows_per_shard(lab) == {"s0": [], "s1": []}
    (gid,) = gids
    assert (f"2pc: rolled back {gid} on app.s1 (no commit recorded on s0: abort recorded now)"
            in px2.log_text())
    assert decision_rows(lab, "s0")[gid] == ("postgres", True)
    px2.assert_alive()


def test_crash_after_decision_commits(twopc_e2e, sharded_proxy, monkeypatch):
    lab = twopc_e2e
    crash_in_commit(sharded_proxy, monkeypatch, "2pc_after_decision")
    gids = prepared_gids(lab, "s1")
    assert len(gids) == 1 and prepared_gids(lab, "s0") == set()
    (gid,) = gids
    assert decision_rows(lab, "s0") == {gid: ("postgres", False)}
    rows = rows_per_shard(lab)
    assert rows["s0"] and rows["s1"] == []  # s0 committed, s1 waits
    px2 = start_2pc_proxy(sharded_proxy)
    rows = rows_per_shard(lab)
    assert sorted(rows["s0"] + rows["s1"]) == IDS
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert f"2pc: committed {gid} on app.s1 (commit recorded on s0)" in px2.log_text()
    px2.assert_alive()


@pytest.mark.parametrize("fault,committed", [("2pc_after_prepare", False),
                                             ("2pc_after_decision", True)])
def test_another_instance_settles_a_dead_ones_commit(twopc_e2e, sharded_proxy, monkeypatch,
                                                     fault, committed):
    """Two pgshard in front of the same shards; one dies in the middle of a
    commit (as kill -9 would) and is not restarted. The other, which ran all
    along, settles the dead one's gid within a few passes."""
    lab = twopc_e2e
    survivor = start_2pc_proxy(sharded_proxy)
    crash_in_commit(sharded_proxy, monkeypatch, fault)
    (gid,) = prepared_gids(lab, "s1")
    wait_for(lambda: prepared_gids(lab, "s1") == set(), 30, interval=0.2,
             message=f"the surviving pgshard to settle {gid}")
    rows = rows_per_shard(lab)
    if committed:
        assert sorted(rows["s0"] + rows["s1"]) == IDS
        assert f"2pc: committed {gid} on app.s1 (commit recorded on s0)" in survivor.log_text()
    else:
        assert rows == {"s0": [], "s1": []}
        assert f"2pc: rolled back {gid} on app.s1 (no commit recorded on s0" in \
            survivor.log_text()
    survivor.assert_alive()


def test_shard_lost_after_decision_commits_when_back(twopc_e2e, sharded_proxy, monkeypatch):
    lab = twopc_e2e
    monkeypatch.setenv("PGSHARD_FAULT", "2pc_pause_after_decision")
    px = start_2pc_proxy(sharded_proxy)
    monkeypatch.delenv("PGSHARD_FAULT")
    outcome = {}

    def client():
        try:
            write_everywhere(px)
            outcome["ok"] = True
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: committed_gids(lab), 10, interval=0.05,
             message="a commit row on the decision shard")
    (gid,) = committed_gids(lab)
    s1_port = lab.shard("s1").primary_port
    lab.stop_server(s1_port)  # while the worker pauses before COMMIT PREPARED
    thread.join(30)
    assert not thread.is_alive()
    # The commit was decided: s1's part is not lost, only late. The client
    # may have seen its session fail (the outcome reached it as 08006).
    assert "ok" in outcome or isinstance(outcome.get("error"), psycopg.OperationalError), outcome
    lab.restart_stopped(s1_port)
    wait_for(lambda: not prepared_gids(lab, "s1") and not prepared_gids(lab, "s0"), 30,
             message="no prepared transaction left on either shard")
    rows = rows_per_shard(lab)
    assert sorted(rows["s0"] + rows["s1"]) == IDS
    assert f"2pc: committed {gid} on app.s1 (commit recorded on s0)" in px.log_text()
    px.assert_alive()


# ---- the long test of this file (~60 s): a fleet killed under load ----

FLEET_TABLE = "twopc_fleet"
FLEET_MAP = f"""
[table.app.{FLEET_TABLE}]
column = k
type = bigint
strategy = hash
"""
FLEET_KILLS = 20


def test_fleet_killed_under_load_loses_nothing(shard_lab, sharded_proxy):
    """Three pgshard in front of the same two shards (cross_shard_writes =
    2pc); client threads spread over them commit transactions that write
    the same id on both shards (key k0 routes to s0, k1 to s1). One instance
    at a time is killed with SIGKILL mid-load, FLEET_KILLS times, and
    restarted at once or after a pause (while it is down the others settle
    its gids). Afterwards, within a bounded wait: no prepared transaction on
    any shard, every id whose COMMIT returned OK on both shards, and no id
    on one shard only."""
    import itertools
    import time

    lab = shard_lab
    rollback_all_prepared(lab)
    reset_decisions(lab)
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute(f"drop table if exists {FLEET_TABLE}")
            conn.execute(f"create table {FLEET_TABLE} (k bigint, id bigint, primary key (k, id))")
    proxies = [sharded_proxy(cross_shard_writes="2pc", extra_ini=FLEET_MAP, workers=1)
               for _ in range(3)]
    keys = {}
    for key in range(1, 100):
        keys.setdefault(shard_of(proxies[0], key, FLEET_TABLE), key)
    k0, k1 = keys["s0"], keys["s1"]
    ids = itertools.count(1)
    lock = threading.Lock()
    acked, failed = set(), set()
    stop = threading.Event()

    def client(n):
        conn = None
        turn = n
        while not stop.is_set():
            try:
                if conn is None:
                    px = proxies[turn % len(proxies)]
                    turn += 1
                    conn = psycopg.connect(px.conninfo(connect_timeout=2))
                with lock:
                    i = next(ids)
                try:
                    conn.execute(f"insert into {FLEET_TABLE} (k, id) values (%s, %s)", (k0, i))
                    conn.execute(f"insert into {FLEET_TABLE} (k, id) values (%s, %s)", (k1, i))
                    conn.commit()
                except psycopg.Error:
                    with lock:
                        failed.add(i)
                    raise
                with lock:
                    acked.add(i)
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)
        if conn is not None:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        for kill in range(FLEET_KILLS):
            time.sleep(1.2)
            victim = proxies[kill % len(proxies)]
            victim.proc.kill()  # SIGKILL, whatever it is doing
            victim.proc.wait()
            if kill % 2:
                time.sleep(2.5)  # the others settle what it left meanwhile
            victim.start()
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    wait_for(lambda: prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set(), 40,
             interval=0.2, message="no prepared transaction left on any shard")
    settled = time.monotonic() - started

    on = {}
    for shard, key in (("s0", k0), ("s1", k1)):
        with lab.connect_primary(shard) as conn:
            on[shard] = {r[0] for r in conn.execute(
                f"select id from {FLEET_TABLE} where k = %s", (key,))}
    assert acked, "no transaction committed at all"
    assert acked <= on["s0"] and acked <= on["s1"], sorted(acked - (on["s0"] & on["s1"]))[:20]
    assert on["s0"] == on["s1"], sorted(on["s0"] ^ on["s1"])[:20]
    # Who settled what: a gid names the instance that made it, each log the
    # instances its proxy ran as.
    maker = {}
    settled_by = []
    for n, px in enumerate(proxies):
        text = px.log_text()
        for inst in re.findall(r"this process is instance ([0-9a-f]{16})", text):
            maker[inst] = n
        settled_by += [(n, verb, inst) for verb, inst in re.findall(
            r"2pc: (committed|rolled back) pgshard_([0-9a-f]{16})_", text)]
    commits = sum(1 for _, verb, _ in settled_by if verb == "committed")
    by_others = sum(1 for n, _, inst in settled_by if maker.get(inst) != n)
    print(f"\nfleet: {len(acked)} transactions acknowledged, {len(failed)} failed "
          f"({len(on['s0'] - acked)} of them committed all the same), {FLEET_KILLS} kills, "
          f"recovery committed {commits} and rolled back {len(settled_by) - commits} prepared "
          f"gids ({by_others} by another proxy than the killed one's restart), "
          f"{settled:.1f} s wall time")
    assert settled_by, "no kill left a prepared transaction to settle"
    assert by_others > 0, "the surviving instances never settled a dead one's gid"
    for px in proxies:
        px.assert_alive()


def test_decision_shard_lost_in_its_commit(twopc_e2e, sharded_proxy):
    """s0's server is terminated while it runs the COMMIT that decides (a
    deferred trigger makes that COMMIT slow): the client's session ends with
    08006, the outcome unknown to pgshard, and recovery settles s1 as s0
    decided — here nothing committed, so s1 is rolled back."""
    lab = twopc_e2e
    with lab.connect_primary("s0") as conn:
        conn.execute("create or replace function twopc_slow_commit() returns trigger "
                     "language plpgsql as $$ begin perform pg_sleep(30); return null; end $$")
        conn.execute(f"create constraint trigger twopc_slow after insert on {TABLE} deferrable "
                     "initially deferred for each row execute function twopc_slow_commit()")
    px = start_2pc_proxy(sharded_proxy)
    outcome = {}

    def client():
        try:
            with px.connect() as conn:
                conn.execute(f"insert into {TABLE} (id) values (%s)",
                             (next(i for i in IDS if shard_of(px, i) == "s0"),))
                conn.execute(f"insert into {TABLE} (id) values (%s)",
                             (next(i for i in IDS if shard_of(px, i) == "s1"),))
                conn.commit()
            outcome["ok"] = True
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()

    def committing():
        with lab.connect_primary("s0") as conn:
            return [r[0] for r in conn.execute(
                "select pid from pg_stat_activity where application_name <> 'pgshard 2pc recovery' "
                "and query = 'COMMIT' and state = 'active'")]
    (pid,) = wait_for(committing, 20, interval=0.05, message="s0 in its deciding COMMIT")
    assert prepared_gids(lab, "s1"), "s1 prepared before the decision"
    with lab.connect_primary("s0") as conn:
        conn.execute("select pg_terminate_backend(%s)", (pid,))
    thread.join(30)
    assert not thread.is_alive()
    # libpq reports the first error it reads: s0's FATAL, which pgshard
    # forwards before its own 08006 that closes the session.
    assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
    assert re.search(r"closed: pgshard: server connection lost during a two-phase commit, whose "
                     r"outcome is unknown here .* \(SQLSTATE 08006\)", px.log_text())
    wait_for(lambda: not prepared_gids(lab, "s1"), 30, interval=0.2,
             message="recovery to settle s1")
    assert rows_per_shard(lab) == {"s0": [], "s1": []}
    with lab.connect_primary("s0") as conn:
        conn.execute(f"drop trigger twopc_slow on {TABLE}")
    px.assert_alive()
