"""End-to-end two-phase commit through pgshard's own commit flow
(cross_shard_writes = 2pc, proxy/request.c), including pgshard killed
between the phases (PGSHARD_FAULT) and recovery by the next pgshard.

Each test writes through pgshard a transaction that inserts keys on both
shards (ids 1..N spread over s0 and s1 by hash), then checks the shards
directly. The crash tests start pgshard with PGSHARD_FAULT so it exits with
_exit(137) at a point of the commit, then start a second pgshard on the
same decision log and check that recovery finished the transaction the same
way on both shards:
  2pc_after_prepare   every shard prepared, no decision recorded: rolled back
  2pc_after_decision  "C gid" synced, no COMMIT PREPARED sent: committed

A shard lost between the decision and its COMMIT PREPARED
(2pc_pause_after_decision holds the worker 3 s there while the test stops
s1): the client loses its session, s0 commits, and the monitor's pass
commits s1's prepared transaction once s1 is back, then logs "D gid".
"""
import re
import subprocess
import threading

import psycopg
import pytest

from conftest import PGSHARDCTL
from support import wait_for
from test_twophase import TABLE, log_ini, prepared_gids, rollback_all_prepared

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
    prepared transactions before or after."""
    rollback_all_prepared(shard_lab)
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


def start_2pc_proxy(sharded_proxy, log):
    return sharded_proxy(cross_shard_writes="2pc", extra_ini=MAP + "\n" + log_ini(log))


def write_everywhere(px):
    """One transaction inserting IDS (both shards), committed by the client."""
    with px.connect() as conn:
        with conn.cursor() as cur:
            for i in IDS:
                cur.execute(f"insert into {TABLE} (id) values (%s)", (i,))
        conn.commit()


def test_commit_is_atomic_and_logged(twopc_e2e, sharded_proxy, tmp_path):
    lab = twopc_e2e
    log = tmp_path / "decisions.log"
    px = start_2pc_proxy(sharded_proxy, log)
    write_everywhere(px)
    rows = rows_per_shard(lab)
    assert rows["s0"] and rows["s1"], "the ids must reach both shards"
    assert sorted(rows["s0"] + rows["s1"]) == IDS
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    records = log.read_text().splitlines()[1:]
    commits = [r[2:] for r in records if r.startswith("C ")]
    assert len(commits) == 1 and f"D {commits[0]}" in records


def shard_of(px, key):
    """The shard `pgshardctl route` names for KEY of TABLE under PX's config."""
    proc = subprocess.run([str(PGSHARDCTL), "route", str(px.config_path), "app", TABLE, str(key)],
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.split()[0]


def test_prepare_failure_rolls_back_everywhere(twopc_e2e, sharded_proxy, tmp_path):
    """A deferred unique violation fails PREPARE on s1: the client gets the
    error at COMMIT and no shard keeps anything of the transaction."""
    lab = twopc_e2e
    log = tmp_path / "decisions.log"
    px = start_2pc_proxy(sharded_proxy, log)
    s1_id = next(i for i in IDS if shard_of(px, i) == "s1")
    with lab.connect_primary("s1") as conn:
        conn.execute(f"insert into {TABLE} (id) values (%s)", (s1_id,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        write_everywhere(px)
    assert rows_per_shard(lab) == {"s0": [], "s1": [s1_id]}
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert not any(r.startswith("C ") for r in log.read_text().splitlines()[1:])
    px.assert_alive()


def test_crash_after_prepare_rolls_back(twopc_e2e, sharded_proxy, tmp_path, monkeypatch):
    lab = twopc_e2e
    log = tmp_path / "decisions.log"
    monkeypatch.setenv("PGSHARD_FAULT", "2pc_after_prepare")
    px = start_2pc_proxy(sharded_proxy, log)
    monkeypatch.delenv("PGSHARD_FAULT")
    with pytest.raises(psycopg.OperationalError):
        write_everywhere(px)
    assert px.wait_exit(10) == 137
    # Both shards hold the prepared transaction, and no decision is logged.
    gids = prepared_gids(lab, "s0")
    assert len(gids) == 1 and prepared_gids(lab, "s1") == gids
    assert not any(r.startswith("C ") for r in log.read_text().splitlines()[1:])
    # The next pgshard on the same log rolls it back everywhere, at startup.
    px2 = start_2pc_proxy(sharded_proxy, log)
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert rows_per_shard(lab) == {"s0": [], "s1": []}
    (gid,) = gids
    assert re.search(rf"2pc: rolled back {gid} on app\.s0", px2.log_text())
    px2.assert_alive()


def test_crash_after_decision_commits(twopc_e2e, sharded_proxy, tmp_path, monkeypatch):
    lab = twopc_e2e
    log = tmp_path / "decisions.log"
    monkeypatch.setenv("PGSHARD_FAULT", "2pc_after_decision")
    px = start_2pc_proxy(sharded_proxy, log)
    monkeypatch.delenv("PGSHARD_FAULT")
    with pytest.raises(psycopg.OperationalError):
        write_everywhere(px)
    assert px.wait_exit(10) == 137
    gids = prepared_gids(lab, "s0")
    assert len(gids) == 1 and prepared_gids(lab, "s1") == gids
    (gid,) = gids
    assert f"C {gid}" in log.read_text().splitlines()
    # Nothing is visible yet on either shard ...
    assert rows_per_shard(lab) == {"s0": [], "s1": []}
    # ... and the next pgshard commits it everywhere, at startup.
    px2 = start_2pc_proxy(sharded_proxy, log)
    rows = rows_per_shard(lab)
    assert sorted(rows["s0"] + rows["s1"]) == IDS
    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert f"2pc: committed {gid} on app.s1 (decided before a crash)" in px2.log_text()
    wait_for(lambda: f"D {gid}" in log.read_text().splitlines(), 10,
             message=f'"D {gid}" in the decision log')
    px2.assert_alive()


def test_shard_lost_after_decision_commits_when_back(twopc_e2e, sharded_proxy, tmp_path,
                                                     monkeypatch):
    lab = twopc_e2e
    log = tmp_path / "decisions.log"
    monkeypatch.setenv("PGSHARD_FAULT", "2pc_pause_after_decision")
    px = start_2pc_proxy(sharded_proxy, log)
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
    wait_for(lambda: "C " in log.read_text(), 10, message="a commit decision in the log")
    s1_port = lab.shard("s1").primary_port
    lab.stop_server(s1_port)  # while the worker pauses before COMMIT PREPARED
    thread.join(30)
    assert not thread.is_alive()
    # The commit was decided: s1's part is not lost, only late. The client
    # may have seen its session fail (the outcome reached it as 08006).
    assert "ok" in outcome or isinstance(outcome.get("error"), psycopg.OperationalError), outcome
    commits = [r[2:] for r in log.read_text().splitlines() if r.startswith("C ")]
    assert len(commits) == 1
    gid = commits[0]
    lab.restart_stopped(s1_port)
    wait_for(lambda: not prepared_gids(lab, "s1") and not prepared_gids(lab, "s0"), 30,
             message="no prepared transaction left on either shard")
    rows = rows_per_shard(lab)
    assert sorted(rows["s0"] + rows["s1"]) == IDS
    wait_for(lambda: f"D {gid}" in log.read_text().splitlines(), 15,
             message=f'"D {gid}" in the decision log')
    px.assert_alive()
