"""A real driver through pgshard: psycopg2 (Debian's python3-psycopg2, libpq
underneath, client-side parameter interpolation and the simple protocol,
text results only).

On the replicated two-shard lab (pydrivers.py), in both pool modes: a URL,
CRUD by key checked on the shards, keyless reads merged, transactions on
one shard and over two under 2pc, types, errors with their SQLSTATE, COPY,
named (server-side) cursors, LISTEN/NOTIFY. psycopg2 never prepares
statements on the server; SQL PREPARE on a sharded table is refused.
"""
import datetime as dt
import io
import select
import time
from decimal import Decimal

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions
import pytest

from pydrivers import (POOL_MODES, assert_placed, keys_on, lab_tables, px,  # noqa: F401
                       rows_by_shard, shards_holding, start_proxy, url)


def connect(px, autocommit=False):
    conn = psycopg2.connect(url(px), connect_timeout=10)
    conn.autocommit = autocommit
    return conn


def one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def test_crud_by_key(px, lab_tables):
    lab = lab_tables
    k0, k1 = keys_on(px, "s0", 1)[0], keys_on(px, "s1", 1)[0]
    conn = connect(px, autocommit=True)
    try:
        with conn.cursor() as cur:
            for key in (k0, k1):
                cur.execute("insert into users (id, name) values (%s, %s)", (key, f"u{key}"))
                assert cur.rowcount == 1
        assert_placed(px, lab, [k0, k1])
        assert one(conn, "select name from users where id = %s", (k1,)) == (f"u{k1}",)
        with conn.cursor() as cur:
            cur.execute("update users set name = %s where id = %s", ("renamed", k0))
            assert cur.rowcount == 1
        assert one(conn, "select name from users where id = %s", (k0,)) == ("renamed",)
        with lab.connect_primary("s0") as s0:
            assert s0.execute("select name from users where id = %s", (k0,)).fetchone() == (
                "renamed",)
        with conn.cursor() as cur:
            cur.execute("delete from users where id = %s", (k1,))
            assert cur.rowcount == 1
        assert shards_holding(lab, k1) == []
        assert shards_holding(lab, k0) == ["s0"]
        # The reference table: written on every shard, read from one.
        with conn.cursor() as cur:
            cur.execute("insert into plans (id, name) values (%s, %s)", (1, "free"))
        assert shards_holding(lab, 1, table="plans") == ["s0", "s1"]
        assert one(conn, "select name from plans where id = 1") == ("free",)
    finally:
        conn.close()


def test_keyless_reads_merged(px, lab_tables):
    keys = keys_on(px, "s0", 5) + keys_on(px, "s1", 5, start=1000)
    conn = connect(px, autocommit=True)  # each INSERT its own transaction
    try:
        with conn.cursor() as cur:
            cur.executemany("insert into users (id, name, amount) values (%s, %s, %s)",
                            [(k, f"n{k}", Decimal(k) / 4) for k in keys])
        conn.autocommit = False
        rows = rows_by_shard(lab_tables)
        assert len(rows["s0"]) == 5 and len(rows["s1"]) == 5
        assert one(conn, "select count(*), sum(amount) from users") == (
            10, sum(Decimal(k) / 4 for k in keys))
        with conn.cursor() as cur:
            cur.execute("select id, name from users order by id desc limit 3")
            assert cur.fetchall() == [(k, f"n{k}") for k in sorted(keys, reverse=True)[:3]]
            cur.execute("select id from users where id in %s order by id", (tuple(keys[3:7]),))
            assert [r[0] for r in cur.fetchall()] == sorted(keys[3:7])
        conn.commit()
    finally:
        conn.close()


def test_transactions_on_one_shard(px, lab_tables):
    k1, k2 = keys_on(px, "s1", 2)
    conn = connect(px)
    try:
        with conn:  # psycopg2: commit at the end of the block
            with conn.cursor() as cur:
                cur.execute("insert into users (id, name) values (%s, 'a')", (k1,))
                cur.execute("update users set name = 'b' where id = %s", (k1,))
        assert shards_holding(lab_tables, k1) == ["s1"]
        with conn.cursor() as cur:
            cur.execute("insert into users (id, name) values (%s, 'gone')", (k2,))
            cur.execute("select name from users where id = %s", (k2,))
            assert cur.fetchone() == ("gone",)
        conn.rollback()
        assert shards_holding(lab_tables, k2) == []
        assert one(conn, "select name from users where id = %s", (k1,)) == ("b",)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_transaction_over_two_shards_2pc(replica_proxy, lab_tables, pool_mode):
    px = start_proxy(replica_proxy, pool_mode, cross_shard_writes="2pc")
    k0, k1 = keys_on(px, "s0", 2), keys_on(px, "s1", 2)
    conn = connect(px)
    try:
        with conn.cursor() as cur:
            cur.execute("insert into users (id, name) values (%s, 'x')", (k0[0],))
            cur.execute("insert into users (id, name) values (%s, 'x')", (k1[0],))
        conn.commit()
        assert rows_by_shard(lab_tables) == {"s0": [k0[0]], "s1": [k1[0]]}
        with conn.cursor() as cur:
            cur.execute("insert into users (id, name) values (%s, 'y')", (k0[1],))
            cur.execute("insert into users (id, name) values (%s, 'y')", (k1[1],))
            cur.execute("update users set name = 'z'")  # keyless: both shards
            cur.execute("select count(*) from users where name = 'z'")
            assert cur.fetchone() == (4,)
        conn.rollback()
        assert rows_by_shard(lab_tables) == {"s0": [k0[0]], "s1": [k1[0]]}
        assert one(conn, "select count(*) from users where name = 'x'") == (2,)
        conn.commit()
    finally:
        conn.close()


def test_sql_prepare_refused_on_sharded_table(px):
    """psycopg2 has no protocol-level prepare; an application's SQL PREPARE
    of a statement on a sharded table is refused (EXECUTE would run on
    whatever shard the session holds)."""
    conn = connect(px, autocommit=True)
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as exc:
                cur.execute("prepare q (bigint) as select name from users where id = $1")
            assert exc.value.pgcode == "0A000"
            assert exc.value.pgerror.startswith("ERROR:  pgshard:")
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_types_round_trip(px, lab_tables):
    when = dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=dt.timezone.utc)
    amount = Decimal("12345.678901234567890")
    blob = bytes(range(256)) * 4
    tags = ["a", "b c", 'q"uote', None, "é☃"]
    key = keys_on(px, "s1", 1)[0]
    null_key = keys_on(px, "s0", 1)[0]
    conn = connect(px, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("insert into users (id, name, tags, at, amount, data)"
                        " values (%s, %s, %s, %s, %s, %s)",
                        (key, "héllo", tags, when, amount, psycopg2.Binary(blob)))
            cur.execute("insert into users (id, name, tags, at, amount, data)"
                        " values (%s, %s, %s, %s, %s, %s)",
                        (null_key, None, None, None, None, None))
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("select name, tags, at, amount, data from users where id = %s", (key,))
            name, got_tags, at, got_amount, data = cur.fetchone()
            assert (name, got_tags, at, got_amount, bytes(data)) == (
                "héllo", tags, when, amount, blob)
            cur.execute("select name, tags, at, amount, data from users where id = %s",
                        (null_key,))
            assert cur.fetchone() == (None, None, None, None, None)
            # The same values merged from both shards.
            cur.execute("select id, amount, at from users order by id")
            assert cur.fetchall() == sorted([(key, amount, when), (null_key, None, None)])
        conn.commit()
        # What the shard stored, read directly.
        with lab_tables.connect_primary("s1") as s1:
            assert s1.execute("select amount::text, tags from users where id = %s",
                              (key,)).fetchone() == ("12345.678901234567890", tags)
    finally:
        conn.close()


def test_errors_and_refusals(px, lab_tables):
    key = keys_on(px, "s0", 1)[0]
    conn = connect(px, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("insert into users (id, name) values (%s, 'first')", (key,))
            with pytest.raises(psycopg2.errors.UniqueViolation) as exc:
                cur.execute("insert into users (id, name) values (%s, 'again')", (key,))
            assert exc.value.pgcode == "23505"
            cur.execute("select name from users where id = %s", (key,))
            assert cur.fetchone() == ("first",)
            # A keyless UPDATE under cross_shard_writes = deny.
            with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
                cur.execute("update users set name = 'everyone'")
            assert exc.value.pgcode == "0A000"
            assert exc.value.diag.message_primary.startswith("pgshard:")
            cur.execute("select count(*) from users where name = 'first'")
            assert cur.fetchone() == (1,)
        # Inside a transaction: the refusal aborts it like a server error.
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("select name from users where id = %s", (key,))
            with pytest.raises(psycopg2.errors.FeatureNotSupported):
                cur.execute("delete from users")
        conn.rollback()
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cur.execute("insert into users (id, name) values (%s, 'again')", (key,))
        conn.rollback()
        assert one(conn, "select name from users where id = %s", (key,)) == ("first",)
        conn.commit()
    finally:
        conn.close()
    assert shards_holding(lab_tables, key) == ["s0"]


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_copy(replica_proxy, lab_tables, pool_mode):
    """COPY FROM STDIN into the sharded table is split by key. Rows for two
    shards need cross_shard_writes = 2pc (inside a transaction) or allow."""
    keys = list(range(1, 201))
    data = "".join(f"{k}\tname {k}\t{{a,b}}\t2024-01-01 00:00:00+00\t{k}.5\t\\\\x0102\n"
                   for k in keys)
    deny = start_proxy(replica_proxy, pool_mode)
    conn = connect(deny, autocommit=True)
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
                cur.copy_expert("copy users (id, name) from stdin",
                                io.StringIO("".join(f"{k}\tx\n" for k in keys)))
            assert exc.value.diag.message_primary.startswith("pgshard:")
            # One shard's rows are fine under deny.
            s1_keys = keys_on(deny, "s1", 3, start=5000)
            cur.copy_expert("copy users (id, name) from stdin",
                            io.StringIO("".join(f"{k}\tx\n" for k in s1_keys)))
            assert cur.rowcount == 3
        assert rows_by_shard(lab_tables) == {"s0": [], "s1": s1_keys}
    finally:
        conn.close()

    px = start_proxy(replica_proxy, pool_mode, cross_shard_writes="2pc")
    conn = connect(px)
    try:
        with conn.cursor() as cur:
            cur.copy_expert("copy users (id, name, tags, at, amount, data) from stdin",
                            io.StringIO(data))
            assert cur.rowcount == len(keys)
        conn.commit()
        assert_placed(px, lab_tables, keys[:20])
        rows = rows_by_shard(lab_tables)
        assert sorted(rows["s0"] + rows["s1"]) == keys + s1_keys and rows["s0"]
        with conn.cursor() as cur:
            cur.execute("select tags, amount, data from users where id = 7")
            tags, amount, blob = cur.fetchone()
            assert (tags, amount, bytes(blob)) == (["a", "b"], Decimal("7.5"), b"\x01\x02")
            # copy_from (COPY ... FROM STDIN with psycopg2's own text) too.
            cur.copy_from(io.StringIO("1001\tvia copy_from\n1002\tsecond\n"), "users",
                          columns=("id", "name"))
            out = io.StringIO()
            cur.copy_expert("copy (select id, name from users where id = 1001) to stdout", out)
            assert out.getvalue() == "1001\tvia copy_from\n"
            # COPY TO without a key: every shard's rows.
            out = io.StringIO()
            cur.copy_expert("copy users (id) to stdout", out)
            assert sorted(map(int, out.getvalue().split())) == sorted(keys + s1_keys + [1001, 1002])
        conn.commit()
        assert_placed(px, lab_tables, [1001, 1002])
        # A failing COPY (a key that does not parse) leaves nothing anywhere.
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as exc:
                cur.copy_expert("copy users (id, name) from stdin",
                                io.StringIO("2001\tok\n2002\tok\nnot-a-key\tbad\n"))
            assert exc.value.pgcode == "22P02"
        conn.rollback()
        assert shards_holding(lab_tables, 2001) == [] and shards_holding(lab_tables, 2002) == []
        assert one(conn, "select count(*) from users") == (len(keys) + 5,)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("pool_mode", ["transaction"])
def test_named_cursor_on_one_shard(replica_proxy, lab_tables, pool_mode):
    """A named cursor is DECLARE ... / FETCH FORWARD itersize in SQL.
    Transaction pooling only: in session pooling a FETCH goes to every
    server the session holds (its login server on s0 among them), not to
    the one the cursor was declared on, and fails with 34000 for a cursor
    on s1 (a known bug of pgshard's FETCH routing)."""
    px = start_proxy(replica_proxy, pool_mode)
    key = keys_on(px, "s1", 1)[0]
    conn = connect(px, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("insert into users (id, name, tags) values (%s, 'c', %s)",
                        (key, [str(i) for i in range(1000)]))
            cur.execute("insert into users (id, name) values (%s, 'other')",
                        (keys_on(px, "s0", 1)[0],))
        conn.autocommit = False
        with conn.cursor("one_shard") as cur:
            cur.itersize = 100
            cur.execute("select id, unnest(tags)::int as t from users where id = %s order by t",
                        (key,))
            got = [t for _, t in cur]
        assert got == list(range(1000))
        with conn.cursor("single") as cur:
            cur.execute("select name from users where id = %s", (key,))
            assert cur.fetchmany(5) == [("c",)]
        conn.commit()
        assert one(conn, "select count(*) from users") == (2,)
        conn.commit()
    finally:
        conn.close()


def test_named_cursor_keyless(px, lab_tables):
    """Over a keyless query a named cursor (DECLARE/FETCH FORWARD itersize)
    gives every shard's rows in the query's order; also WITH HOLD in
    autocommit, as Django declares it."""
    keys = keys_on(px, "s0", 3) + keys_on(px, "s1", 3)
    conn = connect(px, autocommit=True)
    try:
        with conn.cursor() as cur:
            for k in keys:
                cur.execute("insert into users (id, name) values (%s, %s)", (k, f"n{k}"))
        conn.autocommit = False
        with conn.cursor("everywhere") as cur:
            cur.itersize = 2
            cur.execute("select id, name from users order by id")
            assert list(cur) == [(k, f"n{k}") for k in sorted(keys)]
        conn.commit()
        conn.autocommit = True
        with conn.cursor("held", withhold=True) as cur:
            cur.execute("select id from users order by id desc")
            assert cur.fetchmany(4) == [(k,) for k in sorted(keys, reverse=True)[:4]]
        assert one(conn, "select count(*) from users") == (6,)
    finally:
        conn.close()


def test_listen_notify(px):
    listener = connect(px, autocommit=True)
    notifier = connect(px, autocommit=True)
    try:
        with listener.cursor() as cur:
            cur.execute("listen pgshard_it")
        with notifier.cursor() as cur:
            cur.execute("notify pgshard_it, 'hello'")
            # pg_notify() is a function not known read-only: without a key
            # it would run on every shard, refused under deny.
            with pytest.raises(psycopg2.errors.FeatureNotSupported) as exc:
                cur.execute("select pg_notify('pgshard_it', 'refused')")
            assert exc.value.diag.message_primary.startswith("pgshard:")
            cur.execute("notify pgshard_it, 'second'")

        def received():
            got = []
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                if select.select([listener], [], [], 0.5)[0]:
                    listener.poll()
                    while listener.notifies:
                        got.append(listener.notifies.pop(0).payload)
            return got
        assert received() == ["hello", "second"]
        # The listener's session goes on.
        assert one(listener, "select 1") == (1,)
    finally:
        listener.close()
        notifier.close()
