"""Two-phase commit recovery (proxy/twophase.c) on the two-shard lab.

These tests play the part of a pgshard that crashed in the middle of
two-phase commits: they PREPARE TRANSACTION 'pgshard_...' directly on the
shards' primaries and write the decision log by hand (the header naming the
log's owner, then "C gid" for the commits that were decided), then start
pgshard on that log and check that every prepared transaction of the log
ends the same way on every shard: committed when a commit was recorded,
rolled back otherwise (presumed abort), and that nothing else is touched.

- at startup, before pgshard accepts clients;
- by the monitor's periodic pass, for a transaction prepared while it runs;
- for a shard that is down at startup, once it is back;
- gids of another decision log (another pgshard) are never touched;
- a log is used by one pgshard at a time, and a file that is not a log is
  refused when a database uses 2pc;
- a gid prepared by another role is finished as that role (PostgreSQL lets
  only its owner or a superuser do it), or through twophase_recovery_user,
  which must be a superuser; an owner recovery cannot log in as is warned
  about and left prepared.

The end-to-end tests through the proxy's own commit flow (a pgshard killed
between PREPARE and COMMIT PREPARED with PGSHARD_FAULT) are drafted in
twophase_e2e_draft.py.
"""
import re
import secrets
import subprocess

import psycopg
import pytest

from conftest import PGSHARD, free_port
from support import wait_for

OLD_INSTANCE = "00000000000000a1"  # a pgshard process that has ended
TABLE = "twopc_items"


def make_gid(owner, instance, seq):
    return f"pgshard_{owner}_{instance}_{seq}"


def write_log(path, owner, records=()):
    """A decision log as pgshard writes it: header, then "KIND gid" lines."""
    path.write_text(f"pgshard-2pc-log 1 owner={owner}\n"
                    + "".join(f"{kind} {gid}\n" for kind, gid in records))


def log_ini(path):
    """extra_ini text pointing pgshard at the decision log PATH."""
    return f"[pgshard]\ntwophase_log = {path}\n"


def prepared_gids(lab, shard):
    with lab.connect_primary(shard) as conn:
        return {row[0] for row in conn.execute(
            "select gid from pg_prepared_xacts where database = current_database()")}


def prepare(lab, shard, gid, ids, user="postgres"):
    """Insert rows IDS on SHARD inside a transaction prepared as GID by USER
    (pg_prepared_xacts.owner; the lab trusts every role on loopback)."""
    with psycopg.connect(host="127.0.0.1", port=lab.shard(shard).primary_port, dbname="app",
                         user=user, connect_timeout=5, autocommit=True) as conn:
        conn.execute("begin")
        for i in ids:
            conn.execute(f"insert into {TABLE} (id, gid) values (%s, %s)", (i, gid))
        conn.execute(f"prepare transaction '{gid}'")


def ids_of(lab, shard, gid):
    with lab.connect_primary(shard) as conn:
        return sorted(r[0] for r in conn.execute(
            f"select id from {TABLE} where gid = %s", (gid,)))


def rollback_all_prepared(lab):
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            for (gid,) in conn.execute(
                    "select gid from pg_prepared_xacts where database = current_database()"
            ).fetchall():
                conn.execute(f"rollback prepared '{gid}'")


@pytest.fixture
def twopc(shard_lab):
    """The sharded lab with an empty TABLE on both shards and no prepared
    transactions before or after the test."""
    rollback_all_prepared(shard_lab)
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute(f"drop table if exists {TABLE}")
            conn.execute(f"create table {TABLE} (id bigint primary key, gid text not null)")
    yield shard_lab
    rollback_all_prepared(shard_lab)


def log_records(path):
    return path.read_text().splitlines()[1:]


def test_startup_recovery_settles_every_shard_alike(twopc, sharded_proxy, tmp_path):
    lab = twopc
    owner = secrets.token_hex(8)
    committed = make_gid(owner, OLD_INSTANCE, 1)   # "C" in the log: commit everywhere
    undecided = make_gid(owner, OLD_INSTANCE, 2)   # nothing in the log: presumed abort
    aborted = make_gid(owner, OLD_INSTANCE, 3)     # "A" in the log
    foreign = make_gid(secrets.token_hex(8), OLD_INSTANCE, 1)  # another pgshard's log
    for base, shard in ((100, "s0"), (200, "s1")):
        prepare(lab, shard, committed, [base + 1, base + 2])
        prepare(lab, shard, undecided, [base + 3])
    prepare(lab, "s0", aborted, [104])
    prepare(lab, "s1", foreign, [204])
    log = tmp_path / "decisions.log"
    write_log(log, owner, [("C", committed), ("A", aborted)])

    px = sharded_proxy(extra_ini=log_ini(log))

    # Settled before pgshard listened: no waiting needed.
    assert prepared_gids(lab, "s0") == set()
    assert prepared_gids(lab, "s1") == {foreign}
    assert ids_of(lab, "s0", committed) == [101, 102]
    assert ids_of(lab, "s1", committed) == [201, 202]
    for gid in (undecided, aborted, foreign):
        assert ids_of(lab, "s0", gid) == [] and ids_of(lab, "s1", gid) == []

    text = px.log_text()
    for shard in ("s0", "s1"):
        assert f"2pc: committed {committed} on app.{shard} (decided before a crash)" in text
        assert re.search(rf"2pc: rolled back {undecided} on app\.{shard} \(.*presumed abort\)",
                         text)
    # An "A" before a restart says no more than its absence would.
    assert f"2pc: rolled back {aborted} on app.s0 (no commit decided" in text
    assert f"2pc: {foreign} on app.s1 left alone" in text

    # The log was compacted to the undone commit, then closed by "D".
    assert log.read_text().splitlines()[0] == f"pgshard-2pc-log 1 owner={owner}"
    assert log_records(log) == [f"C {committed}", f"D {committed}"]
    px.assert_alive()


def test_periodic_pass_rolls_back_an_undecided_gid(twopc, sharded_proxy, tmp_path):
    lab = twopc
    owner = secrets.token_hex(8)
    log = tmp_path / "decisions.log"
    write_log(log, owner)
    px = sharded_proxy(extra_ini=log_ini(log))
    m = re.search(r"this process is instance ([0-9a-f]{16})", px.log_text())
    assert m, px.log_tail()
    assert m.group(1) != OLD_INSTANCE

    # Prepared while pgshard runs, by an instance that has ended.
    stale = make_gid(owner, OLD_INSTANCE, 7)
    foreign = make_gid(secrets.token_hex(8), OLD_INSTANCE, 7)
    prepare(lab, "s1", stale, [301])
    prepare(lab, "s0", foreign, [302])
    wait_for(lambda: stale not in prepared_gids(lab, "s1"), 20, interval=0.2,
             message=f"the monitor's pass to roll back {stale}")
    assert ids_of(lab, "s1", stale) == []
    assert f"2pc: rolled back {stale} on app.s1" in px.log_text()
    # Another log's gid survives every pass.
    assert foreign in prepared_gids(lab, "s0")
    # A gid made by this very process but not in flight (its transaction
    # ended without settling it) is rolled back too.
    mine = make_gid(owner, m.group(1), 1000000)
    prepare(lab, "s0", mine, [303])
    wait_for(lambda: mine not in prepared_gids(lab, "s0"), 20, interval=0.2,
             message=f"the monitor's pass to roll back {mine}")
    assert foreign in prepared_gids(lab, "s0")
    px.assert_alive()


def test_shard_down_at_startup_is_settled_when_back(twopc, sharded_proxy, tmp_path):
    lab = twopc
    owner = secrets.token_hex(8)
    committed = make_gid(owner, OLD_INSTANCE, 1)
    undecided = make_gid(owner, OLD_INSTANCE, 2)
    for base, shard in ((400, "s0"), (500, "s1")):
        prepare(lab, shard, committed, [base + 1])
    prepare(lab, "s1", undecided, [502])
    log = tmp_path / "decisions.log"
    write_log(log, owner, [("C", committed)])
    s1_port = lab.shard("s1").primary_port
    lab.stop_server(s1_port, mode="fast")
    try:
        px = sharded_proxy(extra_ini=log_ini(log))
        # s0 settled at startup; s1 waits, and the commit stays owed.
        assert prepared_gids(lab, "s0") == set()
        assert ids_of(lab, "s0", committed) == [401]
        text = px.log_text()
        assert "2pc: cannot reach app.s1 to settle prepared transactions" in text
        assert log_records(log) == [f"C {committed}"]
    finally:
        lab.restart_stopped(s1_port)
    # Prepared transactions survive the restart; the monitor settles them.
    wait_for(lambda: prepared_gids(lab, "s1") == set(), 30, interval=0.2,
             message="the monitor to settle s1's prepared transactions")
    assert ids_of(lab, "s1", committed) == [501]
    assert ids_of(lab, "s1", undecided) == []
    assert f"2pc: committed {committed} on app.s1 (decided before a crash)" in px.log_text()
    # With every shard settled the commit is closed in the log.
    wait_for(lambda: f"D {committed}" in log_records(log), 15, interval=0.2,
             message=f'"D {committed}" in the decision log')
    px.assert_alive()


def test_log_created_only_when_needed(twopc, sharded_proxy, tmp_path):
    # No database uses 2pc and no log exists: nothing is created.
    px = sharded_proxy()
    default_log = px.config_path.parent / "pgshard-2pc.log"
    px.assert_alive()
    assert not default_log.exists()
    assert px.shutdown_and_check() == []
    px.proc = None  # stopped and checked here

    # With 2pc, the default log is created beside the config, with a header.
    px = sharded_proxy(cross_shard_writes="2pc")
    px.assert_alive()
    first = default_log.read_text().splitlines()[0]
    assert re.fullmatch(r"pgshard-2pc-log 1 owner=[0-9a-f]{16}", first), first


def run_pgshard_expecting_failure(lab, tmp_path, extra, timeout=20, node_user="postgres"):
    """Run pgshard on a config of its own (cross_shard_writes = 2pc plus
    EXTRA, nodes logging in as NODE_USER) that must refuse to start; return
    its output."""
    port = free_port()
    config = tmp_path / f"refused-{port}.ini"
    config.write_text("\n".join([
        "[pgshard]", f"listen = 127.0.0.1:{port}", "auth = trust", "",
        "[user.app]", "password = secret", "",
        "[database.app]", "cross_shard_writes = 2pc",
    ] + lab.shard_sections(node_user=node_user)) + "\n\n" + extra)
    proc = subprocess.run([str(PGSHARD), "-c", str(config)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout
    return proc.stdout


def test_one_pgshard_per_log(twopc, sharded_proxy, tmp_path):
    log = tmp_path / "shared.log"
    write_log(log, secrets.token_hex(8))
    inode = log.stat().st_ino
    px = sharded_proxy(cross_shard_writes="2pc", extra_ini=log_ini(log))
    # Startup compacted the log: a new file was renamed over it. The lock is
    # on the file beside it, which stays.
    assert log.stat().st_ino != inode
    lock = tmp_path / "shared.log.lock"
    assert lock.exists()
    out = run_pgshard_expecting_failure(twopc, tmp_path, log_ini(log))
    assert "in use by another pgshard process" in out
    px.assert_alive()
    # Once the holder has ended, the next pgshard takes the log over.
    assert px.shutdown_and_check() == []
    px.proc = None
    px2 = sharded_proxy(cross_shard_writes="2pc", extra_ini=log_ini(log))
    px2.assert_alive()
    assert lock.exists()
    assert sorted(p.name for p in tmp_path.glob("shared.log*")) == ["shared.log", "shared.log.lock"]


def test_not_a_log_refused_with_2pc(twopc, tmp_path):
    log = tmp_path / "not-a-log.txt"
    log.write_text("hello\n")
    out = run_pgshard_expecting_failure(twopc, tmp_path, log_ini(log))
    assert "is not a pgshard 2PC decision log" in out
    assert log.read_text() == "hello\n"  # left as it was


# Roles of the lab's servers for the tests below, none a superuser but
# SUPERUSER: OWNER is a [user.*] of pgshard's config, STRANGER is not.
OWNER = "twopc_owner"
STRANGER = "twopc_stranger"
SUPERUSER = "twopc_super"


@pytest.fixture
def roles(twopc):
    """The sharded lab (as `twopc`) with the roles above, and app (the
    monitor's login when nodes name no user), on both shards."""
    for shard in twopc.shards:
        with twopc.connect_primary(shard.name) as conn:
            for role, attrs in (("app", "nosuperuser"), (OWNER, "nosuperuser"),
                                (STRANGER, "nosuperuser"), (SUPERUSER, "superuser")):
                conn.execute(f"do $$ begin create role {role} login {attrs}; "
                             "exception when duplicate_object then null; end $$")
                conn.execute(f"alter role {role} {attrs}")
            conn.execute(f"grant all on {TABLE} to public")
    return twopc


def test_recovery_settles_as_the_owner(roles, sharded_proxy, tmp_path):
    """Nodes naming no user: pgshard logs in as each gid's owner, as its
    pools would log that user in; an owner it has no [user.*] for is left
    prepared, with a warning naming gid, owner and shard."""
    lab = roles
    owner = secrets.token_hex(8)
    committed = make_gid(owner, OLD_INSTANCE, 1)
    undecided = make_gid(owner, OLD_INSTANCE, 2)
    stranger = make_gid(owner, OLD_INSTANCE, 3)
    for base, shard in ((600, "s0"), (700, "s1")):
        prepare(lab, shard, committed, [base + 1, base + 2], user=OWNER)
        prepare(lab, shard, stranger, [base + 4], user=STRANGER)
    prepare(lab, "s1", undecided, [703], user=OWNER)
    log = tmp_path / "decisions.log"
    write_log(log, owner, [("C", committed), ("C", stranger)])

    px = sharded_proxy(extra_ini=log_ini(log), node_user=None, users={OWNER: "ownerpw"})

    assert prepared_gids(lab, "s0") == {stranger}
    assert prepared_gids(lab, "s1") == {stranger}
    assert ids_of(lab, "s0", committed) == [601, 602]
    assert ids_of(lab, "s1", committed) == [701, 702]
    assert ids_of(lab, "s1", undecided) == []
    text = px.log_text()
    for shard in ("s0", "s1"):
        assert f"2pc: committed {committed} on app.{shard} (decided before a crash)" in text
        assert (f"2pc: cannot settle {stranger} on app.{shard}, prepared by {STRANGER}: "
                f"no [user.{STRANGER}] to log in as and no twophase_recovery_user is set") in text
    assert f"2pc: rolled back {undecided} on app.s1" in text
    # The settled commit is closed; the one still prepared stays owed.
    assert log_records(log) == [f"C {committed}", f"C {stranger}", f"D {committed}"] or \
        log_records(log) == [f"C {stranger}", f"C {committed}", f"D {committed}"]
    px.assert_alive()


def test_recovery_user_settles_every_owner(roles, sharded_proxy, tmp_path):
    """twophase_recovery_user (a superuser login) finishes the gids of
    owners the config does not know."""
    lab = roles
    owner = secrets.token_hex(8)
    committed = make_gid(owner, OLD_INSTANCE, 1)
    undecided = make_gid(owner, OLD_INSTANCE, 2)
    for base, shard in ((800, "s0"), (900, "s1")):
        prepare(lab, shard, committed, [base + 1], user=STRANGER)
        prepare(lab, shard, undecided, [base + 2], user=OWNER)
    log = tmp_path / "decisions.log"
    write_log(log, owner, [("C", committed)])

    px = sharded_proxy(extra_ini=log_ini(log), node_user=None,
                       twophase_recovery_user=SUPERUSER, users={SUPERUSER: "superpw"})

    for base, shard in ((800, "s0"), (900, "s1")):
        assert prepared_gids(lab, shard) == set()
        assert ids_of(lab, shard, committed) == [base + 1]
        assert ids_of(lab, shard, undecided) == []
    text = px.log_text()
    assert "cannot settle" not in text
    assert f"2pc: committed {committed} on app.s1 (decided before a crash)" in text
    assert log_records(log) == [f"C {committed}", f"D {committed}"]
    px.assert_alive()


def test_recovery_user_must_be_a_superuser(roles, tmp_path):
    extra = (f"[pgshard]\ntwophase_recovery_user = {OWNER}\n"
             f"[user.{OWNER}]\npassword = ownerpw\n")
    out = run_pgshard_expecting_failure(roles, tmp_path, extra, node_user=None)
    assert (f"twophase_recovery_user = {OWNER} logs in to app.s0 as {OWNER}, which is not a "
            "superuser there") in out
