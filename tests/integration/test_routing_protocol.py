"""How pgshard makes several servers look like one, at the protocol level.

A client holds one server per shard; replies must reach it in request order,
one ReadyForQuery per Sync or Query, with the transaction status over every
shard, and PostgreSQL's "skip to Sync after an error" semantics must hold
across shards. These tests speak the protocol with raw sockets (pgwire) so
the exact message sequence is checked, on the two-shard `shard_lab`.
"""
import struct

import psycopg
import pytest

import pgwire
from test_sharding import MAP, keys_on, count_on


@pytest.fixture
def users(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists users")
            conn.execute("create table users (id bigint primary key, v text not null)")
    return shard_lab


def parse(sql, name=""):
    return pgwire.message("P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(params=(), stmt="", portal=""):
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for p in params:
        data = str(p).encode()
        body += struct.pack("!i", len(data)) + data
    return pgwire.message("B", body + struct.pack("!h", 0))


def execute(portal=""):
    return pgwire.message("E", portal.encode() + b"\0" + struct.pack("!i", 0))


def sync():
    return pgwire.message("S")


def read_until_ready(raw):
    """Message types up to and including ReadyForQuery, and its status."""
    kinds = []
    while True:
        kind, payload = raw.read_message()
        kinds.append(kind if kind != "C" else "C:" + payload[:-1].decode())
        if kind == "E":
            kinds[-1] = "E:" + pgwire.parse_error_fields(payload).get("C", "?")
        if kind == "Z":
            return kinds, payload.decode()


def insert_unit(key, text):
    return (parse("insert into users (id, v) values ($1, $2)") + bind([key, text]) + execute())


def test_pipelined_unit_across_shards(users, sharded_proxy):
    """P/B/E for a key on s0, then for a key on s1, one Sync: both replies in
    order, one ReadyForQuery, both rows committed on their shards."""
    lab = users
    px = sharded_proxy(extra_ini=MAP)
    k0 = keys_on(px.config_path, "users", "s0", range(1, 100), 2)
    k1 = keys_on(px.config_path, "users", "s1", range(1, 100), 1)
    with px.raw() as raw:
        raw.login()
        raw.send(insert_unit(k0[0], "a") + insert_unit(k1[0], "b") + insert_unit(k0[1], "c")
                 + sync())
        kinds, status = read_until_ready(raw)
        assert kinds == ["1", "2", "C:INSERT 0 1"] * 3 + ["Z"], kinds
        assert status == "I"
        # The session goes on, on whichever shard.
        assert raw.simple_query(f"select v from users where id = {k1[0]}") == [["b"]]
    assert count_on(lab, "s0", "select array_agg(id order by id) from users") == sorted(k0)
    assert count_on(lab, "s1", "select array_agg(id order by id) from users") == [k1[0]]


def test_error_in_unit_skips_the_rest_on_every_shard(users, sharded_proxy):
    """An error on s0 mid-unit: the later statements (on s1 too) are skipped
    up to Sync, as PostgreSQL skips them; the session is usable after."""
    lab = users
    px = sharded_proxy(extra_ini=MAP)
    k0 = keys_on(px.config_path, "users", "s0", range(1, 100), 1)[0]
    k1 = keys_on(px.config_path, "users", "s1", range(1, 100), 1)[0]
    with lab.connect_primary("s0") as conn:
        conn.execute("insert into users values (%s, 'there')", (k0,))
    with px.raw() as raw:
        raw.login()
        raw.send(insert_unit(k0, "dup") + insert_unit(k1, "skipped") + sync())
        kinds, status = read_until_ready(raw)
        assert kinds == ["1", "2", "E:23505", "Z"], kinds
        assert status == "I"
        raw.send(insert_unit(k1, "after") + sync())
        kinds, status = read_until_ready(raw)
        assert kinds == ["1", "2", "C:INSERT 0 1", "Z"], kinds
    assert count_on(lab, "s1", "select array_agg(v) from users") == ["after"]


def test_pipelined_simple_queries_keep_order(users, sharded_proxy):
    """Several Query messages in one write, alternating shards: every result in
    the order sent."""
    px = sharded_proxy(extra_ini=MAP)
    k0 = keys_on(px.config_path, "users", "s0", range(1, 200), 5)
    k1 = keys_on(px.config_path, "users", "s1", range(1, 200), 5)
    keys = [k for pair in zip(k0, k1) for k in pair]
    with px.raw() as raw:
        raw.login()
        raw.send(b"".join(pgwire.query(f"insert into users (id, v) values ({k}, 'v{k}')")
                          for k in keys))
        for _ in keys:
            assert read_until_ready(raw) == (["C:INSERT 0 1", "Z"], "I")
        raw.send(b"".join(pgwire.query(f"select v, inet_server_port() from users where id = {k}")
                          for k in keys))
        ports = set()
        for k in keys:
            rows = raw.read_query_result()
            assert rows[0][0] == f"v{k}", (k, rows)
            ports.add(rows[0][1])
        assert len(ports) == 2


def test_transaction_status_over_shards(users, sharded_proxy):
    """BEGIN is pgshard's; an error on one shard makes the whole transaction
    'E'; ROLLBACK ends it on every shard it touched."""
    lab = users
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    k0 = keys_on(px.config_path, "users", "s0", range(1, 100), 1)[0]
    k1 = keys_on(px.config_path, "users", "s1", range(1, 100), 1)[0]
    with px.raw() as raw:
        raw.login()
        raw.send(pgwire.query("begin isolation level repeatable read"))
        assert read_until_ready(raw) == (["C:BEGIN", "Z"], "T")
        raw.send(pgwire.query(f"insert into users (id, v) values ({k0}, 'x')"))
        assert read_until_ready(raw) == (["C:INSERT 0 1", "Z"], "T")
        assert raw.simple_query("show transaction_isolation") == [["repeatable read"]]
        raw.send(pgwire.query(f"insert into users (id, v) values ({k1}, 'y')"))
        assert read_until_ready(raw) == (["C:INSERT 0 1", "Z"], "T")
        raw.send(pgwire.query(f"select 1/0 from users where id = {k1}"))
        kinds, status = read_until_ready(raw)
        assert kinds[-2:] == ["E:22012", "Z"] and status == "E", (kinds, status)
        raw.send(pgwire.query(f"select * from users where id = {k0}"))
        kinds, status = read_until_ready(raw)
        assert status == "E", kinds
        raw.send(pgwire.query("rollback"))
        assert read_until_ready(raw) == (["C:ROLLBACK", "Z"], "I")
        # An empty transaction never needs a server.
        raw.send(pgwire.query("begin") + pgwire.query("commit"))
        assert read_until_ready(raw) == (["C:BEGIN", "Z"], "T")
        assert read_until_ready(raw) == (["C:COMMIT", "Z"], "I")
    assert count_on(lab, "s0", "select count(*) from users") == 0
    assert count_on(lab, "s1", "select count(*) from users") == 0


def test_split_insert_returning_and_extended_ddl(users, sharded_proxy):
    """A split INSERT ... RETURNING: one RowDescription, every row, the summed
    tag. DDL through psycopg (extended protocol) reaches both shards with one
    CommandComplete; a failure on the second shard is reported."""
    lab = users
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    k0 = keys_on(px.config_path, "users", "s0", range(1, 100), 2)
    k1 = keys_on(px.config_path, "users", "s1", range(1, 100), 2)
    keys = [k0[0], k1[0], k0[1], k1[1]]
    values = ", ".join(f"({k}, 'it''s \\ {k}')" for k in keys)
    with px.raw() as raw:
        raw.login()
        raw.send(pgwire.query(f"insert into users (id, v) values {values} returning id"))
        kinds, status = read_until_ready(raw)
        assert kinds.count("T") == 1, kinds
        assert kinds.count("D") == 4, kinds
        assert kinds[-2:] == ["C:INSERT 0 4", "Z"], kinds
    assert count_on(lab, "s0", "select array_agg(v order by id) from users") == [
        f"it's \\ {k}" for k in sorted(k0)]
    with px.connect(autocommit=True) as conn:
        cur = conn.execute("create table t_ddl (a int)")
        assert cur.statusmessage == "CREATE TABLE"
        with lab.connect_primary("s1") as direct:
            direct.execute("create table t_ddl2 (a int)")
        with pytest.raises(psycopg.errors.DuplicateTable):
            conn.execute("create table t_ddl2 (a int)")
        assert conn.execute("select 41 + 1").fetchone()[0] == 42
        conn.execute("drop table t_ddl")
        conn.execute("drop table if exists t_ddl2")
    for shard in ("s0", "s1"):
        assert count_on(lab, shard, "select count(*) from pg_tables where tablename like 't_ddl%'") == 0


def test_sql_prepare_and_reference_returning(users, sharded_proxy):
    """SQL PREPARE of a statement on a sharded table is refused (EXECUTE would
    run it on whichever shard the session holds); a reference-table write
    with RETURNING returns its rows once, though every shard ran it."""
    lab = users
    px = sharded_proxy(extra_ini=MAP)
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as exc:
            conn.execute("prepare p(bigint) as select * from users where id = $1")
        assert str(exc.value).startswith("pgshard:") and "users" in str(exc.value)
        conn.execute("drop table if exists ref_t")
        conn.execute("create table ref_t (k int primary key, v text)")
        cur = conn.execute("insert into ref_t values (1, 'a'), (2, 'b') returning k")
        assert sorted(r[0] for r in cur.fetchall()) == [1, 2]
        assert cur.statusmessage == "INSERT 0 2"
        cur = conn.execute("update ref_t set v = 'c' returning k, v")
        assert sorted(cur.fetchall()) == [(1, "c"), (2, "c")]
        conn.execute("drop table ref_t")
    for shard in ("s0", "s1"):
        assert count_on(lab, shard, "select count(*) from pg_tables where tablename = 'ref_t'") == 0
