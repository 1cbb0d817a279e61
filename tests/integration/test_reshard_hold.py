"""The resharding cutover's hold: RESHARD HOLD '<new config>' [timeout_ms]
and RESHARD RELEASE in the admin console.

While held, a statement that would run on other shards under the new map
(here: tenant 42, which the new map moves from s1 to s0) waits; every
other statement runs at once. HOLD answers once the transactions open when
it came have ended. The cutover rewrites the config file, RELOADs and
RELEASEs: held statements then run on the new map (checked on the shards
directly). A statement held inside a transaction that began under the hold
fails with 40001 once the map has changed, and the retry lands on the new
map. A hold nobody releases releases itself.
"""
import concurrent.futures
import time

import psycopg
import pytest

from support import wait_for

MAP_OLD = """\
[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant

[tenants.app]
42 = s1
"""

MAP_NEW = MAP_OLD.replace("42 = s1", "42 = s0")

INSERT = "insert into invoices (tenant_id, id, v) values (%s, %s, %s)"


@pytest.fixture
def invoices(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name, autocommit=True) as conn:
            conn.execute("drop table if exists invoices")
            conn.execute("create table invoices (tenant_id bigint not null, id bigint not null,"
                         " v text not null, primary key (tenant_id, id))")
    yield
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name, autocommit=True) as conn:
            conn.execute("drop table if exists invoices")


@pytest.fixture
def pool():
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as executor:
        yield executor


def admin(px):
    return px.connect(user="admin", password="adminpw", dbname="pgshard", autocommit=True)


def show_reshard(px):
    with admin(px) as conn:
        cur = conn.execute("show reshard")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def hold_rows(px):
    return [r for r in show_reshard(px) if r["kind"] == "hold"]


def waiting(px):
    rows = hold_rows(px)
    return rows[0]["waiting"] if rows else None


def new_config(px):
    """The proxy's config with the new map, written beside it."""
    path = px.workdir / f"new-{px.port}.ini"
    path.write_text(px.config_path.read_text().replace(MAP_OLD.strip(), MAP_NEW.strip()))
    assert "42 = s0" in path.read_text()
    return path


def hold(px, path, timeout_ms=None):
    with admin(px) as conn:
        sql = f"reshard hold '{path}'" + (f" {timeout_ms}" if timeout_ms else "")
        return conn.execute(sql).statusmessage


def cut_over(px):
    """What pgshardctl's cutover does once the moving keys are copied: the
    config file becomes the new map, RELOAD, RELEASE."""
    px.apply({"extra_ini": MAP_NEW})
    px.write_config()
    with admin(px) as conn:
        assert conn.execute("reload").statusmessage == "RELOAD"
        assert conn.execute("reshard release").statusmessage == "RESHARD RELEASE"


def rows_on(lab, shard, tenant):
    with lab.connect_primary(shard) as conn:
        return conn.execute("select id, v from invoices where tenant_id = %s order by id",
                            (tenant,)).fetchall()


def test_moving_keys_wait_for_the_cutover_and_others_flow(shard_lab, sharded_proxy, invoices,
                                                          pool):
    px = sharded_proxy(extra_ini=MAP_OLD)
    path = new_config(px)
    setup = px.connect(autocommit=True)
    open_tx = px.connect()
    simple = px.connect(autocommit=True)
    extended = px.connect(autocommit=True)
    reader = px.connect(autocommit=True)
    other = px.connect(autocommit=True)
    try:
        setup.execute(INSERT, (42, 1, "before"))
        assert rows_on(shard_lab, "s1", 42) == [(1, "before")]
        # A transaction open when HOLD comes runs to its end, on the old map,
        # and HOLD answers only after it.
        open_tx.execute(INSERT, (42, 2, "open at hold"))
        held = pool.submit(hold, px, path)
        wait_for(lambda: hold_rows(px), 10, message="SHOW RESHARD to show the hold")
        assert not held.done()
        row = hold_rows(px)[0]
        assert (row["database"], row["phase"], row["new_config"], row["waiting"]) == \
            ("app", "held", str(path), 0)
        assert row["held_since"] and row["held_ms"] >= 0 and 0 < row["release_in_ms"] <= 30000
        open_tx.execute(INSERT, (42, 3, "open at hold"))
        open_tx.commit()
        assert held.result(timeout=10) == "RESHARD HOLD"
        assert rows_on(shard_lab, "s1", 42) == [(1, "before"), (2, "open at hold"),
                                                (3, "open at hold")]

        # Tenant 42 waits: a write in the simple protocol, one in the
        # extended protocol, and a read.
        w1 = pool.submit(lambda: psycopg.ClientCursor(simple).execute(
            "insert into invoices (tenant_id, id, v) values (42, 10, 'simple')").rowcount)
        w2 = pool.submit(lambda: extended.execute(INSERT, (42, 11, "extended")).rowcount)
        w3 = pool.submit(lambda: reader.execute(
            "select count(*) from invoices where tenant_id = 42").fetchone()[0])
        wait_for(lambda: waiting(px) == 3, 10, message="three clients to wait")
        # Other keys flow, and so does a read over the same shards.
        other.execute(INSERT, (43, 1, "flows"))
        assert other.execute("select v from invoices where tenant_id = 43").fetchall() == \
            [("flows",)]
        assert other.execute("select count(*) from invoices").fetchone() == (4,)
        assert not (w1.done() or w2.done() or w3.done())

        cut_over(px)
        assert w1.result(timeout=10) == 1
        assert w2.result(timeout=10) == 1
        # The read ran on the new map: s0, with at most the two new rows
        # (s1 has three).
        assert w3.result(timeout=10) in (0, 1, 2)
        assert rows_on(shard_lab, "s0", 42) == [(10, "simple"), (11, "extended")]
        assert rows_on(shard_lab, "s1", 42) == [(1, "before"), (2, "open at hold"),
                                                (3, "open at hold")]
        assert hold_rows(px) == []
        # New statements follow the new map too.
        simple.execute(INSERT, (42, 12, "after"))
        assert rows_on(shard_lab, "s0", 42)[-1] == (12, "after")
    finally:
        for conn in (setup, open_tx, simple, extended, reader, other):
            conn.close()
    assert "RESHARD RELEASE: the hold of" in px.log_text()
    px.assert_alive()


def test_a_transaction_begun_under_the_hold_is_told_to_retry(shard_lab, sharded_proxy, invoices,
                                                              pool):
    px = sharded_proxy(extra_ini=MAP_OLD)
    path = new_config(px)
    tx = px.connect()
    try:
        assert hold(px, path) == "RESHARD HOLD"  # nothing open: at once
        # Begun under the hold: tenant 43 runs, tenant 42 waits.
        tx.execute(INSERT, (43, 1, "in tx"))
        moving = pool.submit(lambda: tx.execute(INSERT, (42, 1, "in tx")))
        wait_for(lambda: waiting(px) == 1, 10, message="the transaction's statement to wait")
        cut_over(px)
        with pytest.raises(psycopg.errors.SerializationFailure) as exc:
            moving.result(timeout=10)
        assert str(exc.value).startswith(
            "pgshard: the shard map changed during this transaction (resharding cutover); "
            "retry the transaction"), exc.value
        tx.rollback()
        # The retry runs on the new map.
        tx.execute(INSERT, (43, 1, "retried"))
        tx.execute(INSERT, (42, 1, "retried"))
        tx.commit()
        assert rows_on(shard_lab, "s0", 42) == [(1, "retried")]
        assert rows_on(shard_lab, "s1", 42) == []
    finally:
        tx.close()
    px.assert_alive()


def test_a_transaction_begun_under_the_hold_cannot_reach_moved_keys_after_it(
        shard_lab, sharded_proxy, invoices):
    """A transaction that began under the hold and had not touched tenant 42
    when the cutover came stays on the old map: 42 is on s0 now, so a
    statement for it there fails with 40001; tenant 43, which did not move,
    goes on."""
    px = sharded_proxy(extra_ini=MAP_OLD)
    path = new_config(px)
    tx = px.connect()
    try:
        assert hold(px, path) == "RESHARD HOLD"
        tx.execute(INSERT, (43, 1, "under the hold"))
        cut_over(px)
        tx.execute(INSERT, (43, 2, "after the cutover"))
        with pytest.raises(psycopg.errors.SerializationFailure):
            tx.execute(INSERT, (42, 1, "after the cutover"))
        tx.rollback()
        tx.execute(INSERT, (42, 1, "next transaction"))
        tx.commit()
        assert rows_on(shard_lab, "s0", 42) == [(1, "next transaction")]
        assert rows_on(shard_lab, "s1", 42) == []
    finally:
        tx.close()


def test_a_hold_nobody_releases_releases_itself(shard_lab, sharded_proxy, invoices, pool):
    px = sharded_proxy(extra_ini=MAP_OLD)
    path = new_config(px)
    conn = px.connect(autocommit=True)
    try:
        started = time.monotonic()
        assert hold(px, path, 1500) == "RESHARD HOLD"
        moving = pool.submit(lambda: conn.execute(INSERT, (42, 1, "timed out")).rowcount)
        wait_for(lambda: waiting(px) == 1 or moving.done(), 10, message="the statement to wait")
        # No cutover came: the statement runs on the running map, s1.
        assert moving.result(timeout=15) == 1
        assert time.monotonic() - started >= 1.4
        assert rows_on(shard_lab, "s1", 42) == [(1, "timed out")]
        assert hold_rows(px) == []
        assert "released itself after" in px.log_text()
        # RELEASE with nothing held answers all the same.
        with admin(px) as a:
            assert a.execute("reshard release").statusmessage == "RESHARD RELEASE"
    finally:
        conn.close()


def test_a_hold_of_an_invalid_config_holds_nothing(shard_lab, sharded_proxy, invoices, tmp_path):
    px = sharded_proxy(extra_ini=MAP_OLD)
    bad = tmp_path / "bad.ini"
    bad.write_text(new_config(px).read_text() + "\n[table.app.broken]\nstrategy = nonsense\n")
    with admin(px) as a:
        for path in (bad, tmp_path / "missing.ini"):
            with pytest.raises(psycopg.Error) as exc:
                a.execute(f"reshard hold '{path}'")
            assert exc.value.sqlstate == "F0000", exc.value
            assert "nothing is held" in str(exc.value)
    assert hold_rows(px) == []
    with px.connect(autocommit=True) as conn:
        conn.execute(INSERT, (42, 1, "not held"))
    assert rows_on(shard_lab, "s1", 42) == [(1, "not held")]


def test_only_admins_hold(sharded_proxy, invoices):
    px = sharded_proxy(extra_ini=MAP_OLD)
    path = new_config(px)
    conn = admin(px)
    try:
        before = px.log_text().count("reloaded ")
        px.reconfigure(users={"admin": ("adminpw", False)})
        wait_for(lambda: px.log_text().count("reloaded ") > before, 10, message="the reload")
        for sql in (f"reshard hold '{path}'", "reshard release", "show reshard"):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(sql)
            assert exc.value.sqlstate == "42501", (sql, exc.value)
    finally:
        conn.close()
    assert hold_rows_after_admin(px) == []


def hold_rows_after_admin(px):
    """No hold was made: SHOW RESHARD as an admin again."""
    before = px.log_text().count("reloaded ")
    px.reconfigure(users={"admin": ("adminpw", True)})
    wait_for(lambda: px.log_text().count("reloaded ") > before, 10, message="the reload")
    return hold_rows(px)
