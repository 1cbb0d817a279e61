"""pgshard learns a resharding's moves from pgshard.reshard_move (the table
`pgshardctl reshard` keeps on each move's target shard, sql/reshard.sql),
shows them in SHOW RESHARD, and refuses what would see or change moving
rows twice while they are copied into a shard that already serves.

The move is written by hand here (the table is pgshardctl's to write): a
row on the target's primary, then SHOW RESHARD is polled until the monitor
has read it (about once a second).
"""
import pathlib

import psycopg
import pytest

from support import wait_for

RESHARD_SQL = (pathlib.Path(__file__).resolve().parents[2] / "sql" / "reshard.sql").read_text()

MAP = """\
[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant

[table.app.events]
column = id
type = bigint
strategy = range
range = s0: - 1000000
range = s1: 1000000 -

[tenants.app]
42 = s1
"""

RESHARD_ID = "0123456789abcdef"
REFUSED = ('pgshard: table "invoices" has rows moving from shard s0 to s1 '
           f"(reshard {RESHARD_ID}); ")


def admin(px):
    return px.connect(user="admin", password="adminpw", dbname="pgshard", autocommit=True)


def show_reshard(px):
    with admin(px) as conn:
        cur = conn.execute("show reshard")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def moves_shown(px):
    return [r for r in show_reshard(px) if r["kind"] == "move"]


@pytest.fixture
def tables(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name, autocommit=True) as conn:
            conn.execute("drop table if exists invoices, events")
            conn.execute("drop table if exists pgshard.reshard_move")
            conn.execute("create table invoices (tenant_id bigint not null, id bigint not null,"
                         " v text not null, primary key (tenant_id, id))")
            conn.execute("create table events (id bigint primary key, v text not null)")
    yield
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name, autocommit=True) as conn:
            conn.execute("drop table if exists invoices, events")
            conn.execute("drop table if exists pgshard.reshard_move")


def add_move(lab, phase="streaming", target="s1", lag=1000, source="s0", on="s1",
             reshard_id=RESHARD_ID):
    """A move of invoices from SOURCE to TARGET, written on shard ON's
    primary, applied up to LAG bytes behind SOURCE's current WAL position,
    its last applied commit 5 s ago."""
    with lab.connect_primary(source, autocommit=True) as src:
        current = src.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    with lab.connect_primary(on, autocommit=True) as conn:
        conn.execute(RESHARD_SQL)
        conn.execute(
            "insert into pgshard.reshard_move (reshard_id, database, source, target, tables,"
            " phase, slot_name, publication, applied_lsn, applied_commit_at, rows_copied,"
            " rows_applied, error) values (%s, 'app', %s, %s, '{invoices}', %s, 'slot',"
            " 'pub', %s::pg_lsn - %s, now() - interval '5 s', 1234, 56, %s)",
            (reshard_id, source, target, phase, current, lag,
             None if target == "s1" else "not yet"))


def delete_moves(lab, on="s1"):
    with lab.connect_primary(on, autocommit=True) as conn:
        conn.execute("delete from pgshard.reshard_move")


def refused(conn, sql, params=None):
    """Run SQL expecting pgshard's refusal of moving rows; the message."""
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(sql, params)
    assert exc.value.sqlstate == "55000", exc.value
    message = str(exc.value)
    assert message.startswith(REFUSED), message
    assert message.rstrip().endswith("until the move is cut over or aborted"), message
    return message


def test_show_reshard_reads_the_moves_from_the_target(shard_lab, sharded_proxy, tables):
    px = sharded_proxy(extra_ini=MAP)
    # No table yet: no move, and nothing in the log about it.
    assert moves_shown(px) == []
    add_move(shard_lab, lag=4096)
    rows = wait_for(lambda: moves_shown(px), 10, message="SHOW RESHARD to show the move")
    assert len(rows) == 1
    row = rows[0]
    assert (row["reshard_id"], row["database"], row["source"], row["target"], row["tables"],
            row["phase"], row["rows_copied"], row["rows_applied"], row["error"]) == \
        (RESHARD_ID, "app", "s0", "s1", "invoices", "streaming", 1234, 56, None)
    # Behind s0's current position by at least what it was when written.
    assert row["lag_bytes"] >= 4096, row
    assert row["lag_seconds"] >= 4.5, row
    assert row["held_since"] is None and row["waiting"] is None

    # Caught up (applied past s0's position): no lag, in bytes or seconds.
    delete_moves(shard_lab)
    add_move(shard_lab, lag=-(1 << 40))
    wait_for(lambda: [r for r in moves_shown(px) if r["lag_bytes"] == 0], 10,
             message="the caught-up move")
    assert moves_shown(px)[0]["lag_seconds"] == 0

    delete_moves(shard_lab)
    wait_for(lambda: moves_shown(px) == [], 10, message="the move to go")
    assert "reshard_move" not in px.log_text()


def test_statements_that_would_see_moving_rows_twice_are_refused(shard_lab, sharded_proxy,
                                                                  tables):
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    conn = px.connect(autocommit=True)
    try:
        conn.execute("insert into invoices (tenant_id, id, v) values (42, 1, 'a'), (43, 1, 'b'), (44, 1, 'c')")
        assert conn.execute("select count(*) from invoices").fetchone() == (3,)
        add_move(shard_lab)
        wait_for(lambda: moves_shown(px), 10, message="SHOW RESHARD to show the move")

        # Fan-outs, reads and writes, simple and extended protocol.
        refused(conn, "select count(*) from invoices")
        refused(conn, "select * from invoices where v = %s", ("a",))
        refused(psycopg.ClientCursor(conn), "select * from invoices order by id")
        refused(conn, "update invoices set v = 'x'")
        refused(conn, "select * from invoices where tenant_id in (42, 43, 44)")
        # DDL on the table.
        message = refused(conn, "alter table invoices add column w int")
        assert "DDL" in message
        # Hints to the target shard, as a comment or a setting.
        refused(conn, "/* pgshard: shard=s1 */ select count(*) from invoices")
        conn.execute("set pgshard.shard = s1")
        refused(conn, "select count(*) from invoices")
        # ... but the target's own keys are routed there by key.
        assert conn.execute("select v from invoices where tenant_id = 42").fetchall() == [("a",)]
        conn.execute("reset pgshard.shard")
        # The source keeps its rows: a hint there is fine.
        assert conn.execute("/* pgshard: shard=s0 */ select count(*) from invoices").fetchone() \
            in [(1,), (2,)]
        # A tenant session without the key reaches the target for tenant 42.
        with px.connect(autocommit=True, options="-c pgshard.tenant=42") as tenant:
            refused(tenant, "select count(*) from invoices")
            assert tenant.execute("select v from invoices where tenant_id = 42").fetchall() \
                == [("a",)]

        # Statements routed by key go on, and the session is usable.
        conn.execute("insert into invoices (tenant_id, id, v) values (42, 2, 'd')")
        conn.execute("update invoices set v = 'e' where tenant_id = 43")
        assert conn.execute("select count(*) from invoices where tenant_id = 42").fetchone() \
            == (2,)
        assert conn.execute("select v from invoices where tenant_id = %s", (43,)).fetchone() \
            == ("e",)
        # Other tables fan out as ever.
        conn.execute("insert into events (id, v) values (1, 'x'), (2000000, 'y')")
        assert conn.execute("select count(*) from events").fetchone() == (2,)

        # Inside a transaction the refusal aborts it, as an error would.
        with px.connect() as tx:
            tx.execute("select v from invoices where tenant_id = 42")
            refused(tx, "select count(*) from invoices")
            tx.rollback()
            assert tx.execute("select count(*) from events").fetchone() == (2,)
            tx.commit()

        # Once the move is gone, everything runs again.
        delete_moves(shard_lab)
        wait_for(lambda: moves_shown(px) == [], 10, message="the move to go")
        assert conn.execute("select count(*) from invoices").fetchone() == (4,)
        with shard_lab.connect_primary("s1") as s1:
            on_s1 = s1.execute("select count(*) from invoices").fetchone()
        assert conn.execute("/* pgshard: shard=s1 */ select count(*) from invoices").fetchone() \
            == on_s1
    finally:
        conn.close()
    px.assert_alive()


def test_moves_that_no_client_reaches_refuse_nothing(shard_lab, sharded_proxy, tables):
    """A move into a shard the running map does not have, and a move already
    switched, leave every statement alone."""
    px = sharded_proxy(extra_ini=MAP)
    add_move(shard_lab, target="s9", reshard_id="aaaaaaaaaaaaaaaa")
    add_move(shard_lab, phase="switched", reshard_id="bbbbbbbbbbbbbbbb")
    wait_for(lambda: len(moves_shown(px)) == 2, 10, message="SHOW RESHARD to show both")
    rows = {r["reshard_id"]: r for r in moves_shown(px)}
    assert rows["aaaaaaaaaaaaaaaa"]["error"] == "not yet"
    assert rows["bbbbbbbbbbbbbbbb"]["phase"] == "switched"
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select count(*) from invoices").fetchone() == (0,)
        conn.execute("/* pgshard: shard=s1 */ select count(*) from invoices")
        # A move becomes active: now refused.
        add_move(shard_lab, reshard_id="cccccccccccccccc")
        wait_for(lambda: len(moves_shown(px)) == 3, 10, message="the third move")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select count(*) from invoices")
        assert exc.value.sqlstate == "55000"
        assert "(reshard cccccccccccccccc)" in str(exc.value)
