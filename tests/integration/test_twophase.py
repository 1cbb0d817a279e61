"""Two-phase commit recovery (proxy/twophase.c) on the two-shard lab.

Decisions live in the shards: pgshard.twophase_decision on a transaction's
decision shard (include/pgshard/twophase.h). These tests play the part of a
pgshard that died in the middle of two-phase commits: they PREPARE
TRANSACTION 'pgshard_<instance>_<decision shard>_<seq>' directly on the
shards' primaries and write (or not) the decision row on the decision shard
by hand, then start pgshard and check that every prepared transaction ends
the same way on every shard: committed when a commit row of the prepared
transaction's owner is there, rolled back otherwise (recovery then records
the abort), and that nothing else is touched.

- pgshard creates the table, with privileges that let a client only insert
  a gid (attributed to itself);
- recovery at startup, before pgshard accepts clients;
- by the monitor's periodic pass, for a transaction prepared while it runs;
- for a shard that is down at startup, once it is back;
- gids pgshard did not make, or of the old decision log (naming no shard),
  are never touched;
- a gid prepared by another role is finished as that role (PostgreSQL lets
  only its owner or a superuser do it), or through twophase_recovery_user,
  which must be a superuser;
- twophase_log is accepted with a warning.

Commits through pgshard itself, crashes and another instance taking over are
in test_twophase_e2e.py; many instances killed under load in
test_twophase_fleet.py.
"""
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from conftest import PGSHARD, PGSHARDCTL, free_port
from support import wait_for

DEAD_INSTANCE = "00000000000000a1"  # a pgshard process that has ended
# xxh64 of the lab's shard names (tests/unit/test_twophase.c has them too).
SHARD_HASH = {"s0": "27f1bf38a14ee03e", "s1": "6a41890cafc6b461"}
TABLE = "twopc_items"
TWOPHASE_SQL = (Path(__file__).resolve().parents[2] / "sql" / "twophase.sql").read_text()


def make_gid(decision_shard, seq, instance=DEAD_INSTANCE):
    return f"pgshard_{instance}_{SHARD_HASH[decision_shard]}_{seq}"


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


def commit_with_row(lab, shard, gid, ids, user="postgres"):
    """What a coordinator's decision shard commits: rows IDS and the commit
    row of GID, in one transaction of USER."""
    with psycopg.connect(host="127.0.0.1", port=lab.shard(shard).primary_port, dbname="app",
                         user=user, connect_timeout=5) as conn:
        for i in ids:
            conn.execute(f"insert into {TABLE} (id, gid) values (%s, %s)", (i, gid))
        conn.execute("insert into pgshard.twophase_decision (gid) values (%s)", (gid,))


def put_row(lab, shard, gid, owner, aborted):
    with lab.connect_primary(shard) as conn:
        conn.execute("insert into pgshard.twophase_decision (gid, owner, aborted) "
                     "values (%s, %s, %s)", (gid, owner, aborted))


def decision_rows(lab, shard):
    """gid -> (owner, aborted) of SHARD's decision table ({} without one)."""
    with lab.connect_primary(shard) as conn:
        if not conn.execute("select to_regclass('pgshard.twophase_decision') is not null"
                            ).fetchone()[0]:
            return {}
        return {gid: (owner, aborted) for gid, owner, aborted in conn.execute(
            "select gid, owner, aborted from pgshard.twophase_decision")}


def reset_decisions(lab):
    """Every shard with an empty decision table (made as pgshard makes it)."""
    for shard in lab.shards:
        with lab.connect_primary(shard.name, autocommit=True) as conn:
            conn.execute(TWOPHASE_SQL)
            conn.execute("delete from pgshard.twophase_decision")


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
    """The sharded lab with an empty TABLE and decision table on both
    shards and no prepared transactions before or after the test."""
    rollback_all_prepared(shard_lab)
    reset_decisions(shard_lab)
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute(f"drop table if exists {TABLE}")
            conn.execute(f"create table {TABLE} (id bigint primary key, gid text not null)")
    yield shard_lab
    rollback_all_prepared(shard_lab)


def start_2pc(sharded_proxy, **overrides):
    return sharded_proxy(cross_shard_writes="2pc", **overrides)


def test_pgshard_creates_the_decision_table(twopc, sharded_proxy):
    """pgshard's recovery login makes the table where it is missing; a
    client's role may insert a gid, attributed to itself, and nothing else."""
    lab = twopc
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table pgshard.twophase_decision")
            conn.execute("do $$ begin create role twopc_client login nosuperuser; "
                         "exception when duplicate_object then null; end $$")
    px = start_2pc(sharded_proxy)
    for shard in ("s0", "s1"):
        assert f"2pc: created pgshard.twophase_decision on app.{shard}" in px.log_text()
    with psycopg.connect(host="127.0.0.1", port=lab.shard("s0").primary_port, dbname="app",
                         user="twopc_client", autocommit=True) as conn:
        conn.execute("insert into pgshard.twophase_decision (gid) values ('mine')")
        for sql in ("insert into pgshard.twophase_decision (gid, owner) values ('x', 'postgres')",
                    "insert into pgshard.twophase_decision (gid, aborted) values ('y', true)",
                    "select * from pgshard.twophase_decision",
                    "update pgshard.twophase_decision set aborted = true",
                    "delete from pgshard.twophase_decision"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    assert decision_rows(lab, "s0") == {"mine": ("twopc_client", False)}
    px.assert_alive()


def test_startup_recovery_settles_every_shard_alike(twopc, sharded_proxy):
    lab = twopc
    committed = make_gid("s0", 1)   # commit row on s0: commit s1's part
    undecided = make_gid("s0", 2)   # no row: rolled back, abort recorded
    aborted = make_gid("s1", 3)     # abort row on s1 (recovery's, earlier)
    stolen = make_gid("s0", 4)      # a commit row of another role: not a commit
    old_log = "pgshard_0123456789abcdef_00000000000000a1_5"  # names no shard
    foreign = "pgshard_but_not_made_by_it"
    commit_with_row(lab, "s0", committed, [101, 102])
    prepare(lab, "s1", committed, [201, 202])
    prepare(lab, "s1", undecided, [203])
    prepare(lab, "s0", aborted, [104])
    put_row(lab, "s1", aborted, "postgres", True)
    prepare(lab, "s1", stolen, [204])
    put_row(lab, "s0", stolen, "twopc_thief", False)
    prepare(lab, "s1", old_log, [205])
    prepare(lab, "s0", foreign, [105])

    px = start_2pc(sharded_proxy)

    # Settled before pgshard listened: no waiting needed.
    assert prepared_gids(lab, "s0") == {foreign}
    assert prepared_gids(lab, "s1") == {old_log}
    assert ids_of(lab, "s0", committed) == [101, 102]
    assert ids_of(lab, "s1", committed) == [201, 202]
    for gid in (undecided, aborted, stolen, old_log):
        assert ids_of(lab, "s0", gid) == [] and ids_of(lab, "s1", gid) == []
    # The abort is recorded; commit rows of gids prepared nowhere any more
    # are deleted in the same pass (abort rows only once old).
    assert decision_rows(lab, "s0") == {undecided: ("postgres", True)}
    assert decision_rows(lab, "s1") == {aborted: ("postgres", True)}

    text = px.log_text()
    assert f"2pc: committed {committed} on app.s1 (commit recorded on s0)" in text
    assert (f"2pc: rolled back {undecided} on app.s1 (no commit recorded on s0: abort recorded "
            "now)") in text
    assert f"2pc: rolled back {aborted} on app.s0 (abort recorded on s1)" in text
    assert (f"2pc: rolled back {stolen} on app.s1 (the commit row on s0 is twopc_thief's, not "
            "the owner postgres's)") in text
    assert f"2pc: {old_log} on app.s1 left alone: it names no shard of database app" in text
    assert f"2pc: {foreign} on app.s0 left alone: not a gid pgshard makes" in text
    px.assert_alive()


def test_periodic_pass_settles_and_cleans_up(twopc, sharded_proxy):
    lab = twopc
    px = start_2pc(sharded_proxy)
    m = re.search(r"this process is instance ([0-9a-f]{16})", px.log_text())
    assert m, px.log_tail()
    # Prepared while pgshard runs, by an instance that has ended.
    stale = make_gid("s0", 7)
    committed = make_gid("s1", 8)
    prepare(lab, "s1", stale, [301])
    commit_with_row(lab, "s1", committed, [302])
    prepare(lab, "s0", committed, [303])
    wait_for(lambda: prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set(), 20,
             interval=0.2, message="the monitor's pass to settle both gids")
    assert ids_of(lab, "s1", stale) == []
    assert ids_of(lab, "s0", committed) == [303]
    assert f"2pc: rolled back {stale} on app.s1" in px.log_text()
    # A gid made by this very process but not in flight (its transaction
    # ended without settling it) is settled too.
    mine = make_gid("s1", 1000000, instance=m.group(1))
    prepare(lab, "s0", mine, [304])
    wait_for(lambda: mine not in prepared_gids(lab, "s0"), 20, interval=0.2,
             message=f"the monitor's pass to roll back {mine}")
    # Rows of gids prepared nowhere are deleted: the commit at once, the
    # abort rows only once old (PGS_TWOPHASE_ABORT_ROW_KEEP_S).
    wait_for(lambda: committed not in decision_rows(lab, "s1"), 20, interval=0.2,
             message="the finished commit's row to be deleted")
    assert decision_rows(lab, "s0")[stale] == ("postgres", True)
    with lab.connect_primary("s0") as conn:
        conn.execute("update pgshard.twophase_decision set decided_at = now() - "
                     "interval '1 hour' where gid = %s", (stale,))
    wait_for(lambda: stale not in decision_rows(lab, "s0"), 20, interval=0.2,
             message="the old abort row to be deleted")
    with px.connect(autocommit=True, user="admin", password="adminpw", dbname="pgshard") as adm:
        rows = adm.execute("show twophase").fetchall()
    recovery = [r for r in rows if r[0] is None]
    assert len(recovery) == 1 and recovery[0][1] == "recovery", rows
    assert recovery[0][4] >= 1 and recovery[0][5] >= 2, rows  # commits, rollbacks
    px.assert_alive()


def test_shard_down_at_startup_is_settled_when_back(twopc, sharded_proxy):
    lab = twopc
    committed = make_gid("s0", 1)
    undecided = make_gid("s0", 2)
    commit_with_row(lab, "s0", committed, [401])
    prepare(lab, "s1", committed, [501])
    prepare(lab, "s1", undecided, [502])
    s1_port = lab.shard("s1").primary_port
    lab.stop_server(s1_port, mode="fast")
    try:
        px = start_2pc(sharded_proxy)
        assert "2pc: cannot reach app.s1 to settle prepared transactions" in px.log_text()
        assert committed in decision_rows(lab, "s0")
    finally:
        lab.restart_stopped(s1_port)
    # Prepared transactions survive the restart; the monitor settles them.
    wait_for(lambda: prepared_gids(lab, "s1") == set(), 30, interval=0.2,
             message="the monitor to settle s1's prepared transactions")
    assert ids_of(lab, "s1", committed) == [501]
    assert ids_of(lab, "s1", undecided) == []
    assert f"2pc: committed {committed} on app.s1 (commit recorded on s0)" in px.log_text()
    px.assert_alive()


def test_twophase_log_is_accepted_with_a_warning(twopc, sharded_proxy, tmp_path):
    px = start_2pc(sharded_proxy, extra_ini=f"[pgshard]\ntwophase_log = {tmp_path / 'x.log'}\n")
    assert "twophase_log is no longer used" in px.log_text()
    assert not (tmp_path / "x.log").exists()
    out = subprocess.run([str(PGSHARDCTL), "check", str(px.config_path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning: twophase_log is no longer used" in out.stdout
    px.assert_alive()


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


def test_recovery_settles_as_the_owner(roles, sharded_proxy):
    """Nodes naming no user: pgshard logs in as each gid's owner, as its
    pools would log that user in; an owner it has no [user.*] for is left
    prepared, with a warning naming gid, owner and shard. The decision rows
    are written by the recovery login (app, the table's owner here as
    reset_decisions made it as postgres: granted below)."""
    lab = roles
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("grant insert, select, delete on pgshard.twophase_decision to app")
    committed = make_gid("s0", 1)
    undecided = make_gid("s0", 2)
    stranger = make_gid("s0", 3)
    commit_with_row(lab, "s0", committed, [601], user=OWNER)
    prepare(lab, "s1", committed, [701, 702], user=OWNER)
    commit_with_row(lab, "s0", stranger, [604], user=STRANGER)
    prepare(lab, "s1", stranger, [704], user=STRANGER)
    prepare(lab, "s1", undecided, [703], user=OWNER)

    px = start_2pc(sharded_proxy, node_user=None, users={OWNER: "ownerpw"})

    assert prepared_gids(lab, "s1") == {stranger}
    assert ids_of(lab, "s1", committed) == [701, 702]
    assert ids_of(lab, "s1", undecided) == []
    text = px.log_text()
    assert f"2pc: committed {committed} on app.s1 (commit recorded on s0)" in text
    assert (f"2pc: cannot settle {stranger} on app.s1, prepared by {STRANGER}: "
            f"no [user.{STRANGER}] to log in as and no twophase_recovery_user is set") in text
    assert f"2pc: rolled back {undecided} on app.s1" in text
    assert decision_rows(lab, "s0")[undecided] == (OWNER, True)
    px.assert_alive()


def test_refused_when_the_decision_table_cannot_be_made(roles, sharded_proxy):
    """The recovery login (app: nodes name no user, no superuser) may not
    create the table in schema pgshard: pgshard says why in its log and
    refuses cross-shard commits (55000) rather than run one without a
    decision record; nothing is written anywhere. Single-shard writes go on."""
    lab = roles
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table pgshard.twophase_decision")
    px = start_2pc(sharded_proxy, node_user=None, extra_ini=f"""
[table.app.{TABLE}]
column = id
type = bigint
strategy = hash
""")
    assert re.search(r"2pc: cannot create pgshard\.twophase_decision on app\.s0 \(.*permission "
                     r"denied", px.log_text()), px.log_tail()
    with px.connect() as conn:
        for i in range(1, 11):
            conn.execute(f"insert into {TABLE} (id, gid) values (%s, 'x')", (i,))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as exc:
            conn.commit()
    assert str(exc.value).startswith(
        "pgshard: could not start a two-phase commit: the two-phase commit decision table "
        "pgshard.twophase_decision is not ready on shard s0"), exc.value
    for shard in ("s0", "s1"):
        assert ids_of(lab, shard, "x") == []
        assert prepared_gids(lab, shard) == set()
    with px.connect() as conn:
        conn.execute(f"insert into {TABLE} (id, gid) values (1, 'x')")
        conn.commit()
    assert ids_of(lab, "s0", "x") + ids_of(lab, "s1", "x") == [1]
    px.assert_alive()


def test_recovery_user_settles_every_owner(roles, sharded_proxy):
    """twophase_recovery_user (a superuser login) finishes the gids of
    owners the config does not know."""
    lab = roles
    committed = make_gid("s0", 1)
    undecided = make_gid("s0", 2)
    commit_with_row(lab, "s0", committed, [801], user=STRANGER)
    prepare(lab, "s1", committed, [901], user=STRANGER)
    prepare(lab, "s1", undecided, [902], user=OWNER)

    px = start_2pc(sharded_proxy, node_user=None, twophase_recovery_user=SUPERUSER,
                   users={SUPERUSER: "superpw"})

    assert prepared_gids(lab, "s0") == prepared_gids(lab, "s1") == set()
    assert ids_of(lab, "s1", committed) == [901]
    assert ids_of(lab, "s1", undecided) == []
    text = px.log_text()
    assert "cannot settle" not in text
    assert f"2pc: committed {committed} on app.s1 (commit recorded on s0)" in text
    px.assert_alive()


def test_recovery_user_must_be_a_superuser(roles, tmp_path):
    extra = (f"[pgshard]\ntwophase_recovery_user = {OWNER}\n"
             f"[user.{OWNER}]\npassword = ownerpw\n")
    out = run_pgshard_expecting_failure(roles, tmp_path, extra, node_user=None)
    assert (f"twophase_recovery_user = {OWNER} logs in to app.s0 as {OWNER}, which is not a "
            "superuser there") in out
