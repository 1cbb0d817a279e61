"""Cursors over several shards, as drivers and ORMs use them.

A cursor over one shard lives on that shard's server: DECLARE goes there,
and FETCH, MOVE and CLOSE follow it, even when the session holds servers on
both shards. A cursor over several shards cannot live on one server:
pgshard runs its query whole on each shard at DECLARE, gathers the merged
rows, and answers FETCH and MOVE from them, forward only (psycopg2 named
cursors and Django's .iterator() do exactly this: DECLARE ... WITH HOLD in
autocommit, FETCH FORWARD n, CLOSE). Each answer is compared with what
one PostgreSQL holding all the rows gives; the rows on each shard are
written directly.
"""
import psycopg
import pytest

import pgwire
from test_sharding import MAP, TABLES, keys_on

N = 60  # rows per shard


@pytest.fixture
def users(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists users")
            conn.execute(f"create table users ({TABLES['users'][2]})")
    return shard_lab


@pytest.fixture
def px(users, sharded_proxy):
    """pgshard over the two shards, N users on each (ids found through the
    shard map, written on their shards directly); px.ids: all of them."""
    px = sharded_proxy(extra_ini=MAP)
    ids = {shard: keys_on(px.config_path, "users", shard, range(1, 1000), N)
           for shard in ("s0", "s1")}
    for shard, keys in ids.items():
        with users.connect_primary(shard) as conn:
            with conn.cursor().copy("copy users (id, v) from stdin") as copy:
                for i in keys:
                    copy.write_row((i, f"v{i:05d}"))
    px.ids = sorted(ids["s0"] + ids["s1"])
    px.shard_ids = ids
    return px


def fetch_rows(conn, sql):
    """Rows of SQL run through the simple protocol (pgwire), as (id, v)."""
    return [(int(r[0]), r[1]) for r in conn.simple_query(sql)]


def command_tag(conn, sql):
    """Run SQL (simple protocol) and return its CommandComplete tag."""
    conn.send(pgwire.query(sql))
    tag, error = None, None
    while True:
        kind, payload = conn.read_message()
        if kind == "C":
            tag = payload.rstrip(b"\0").decode()
        elif kind == "E":
            error = pgwire.ServerError(pgwire.parse_error_fields(payload))
        elif kind == "Z":
            if error:
                raise error
            return tag


def test_declare_fetch_over_shards(px):
    """In a transaction: DECLARE over both shards, FETCH in chunks (the
    merged order), MOVE, FETCH ALL, FETCH past the end, CLOSE; the
    transaction ends and so does the cursor."""
    want = [(i, f"v{i:05d}") for i in px.ids]
    with px.raw(timeout=20) as conn:
        conn.login()
        assert command_tag(conn, "begin") == "BEGIN"
        assert command_tag(conn, "declare c1 cursor for select id, v from users order by id") == \
            "DECLARE CURSOR"
        got = fetch_rows(conn, "fetch forward 7 from c1")
        assert got == want[:7]
        assert fetch_rows(conn, "fetch next from c1") == want[7:8]
        assert command_tag(conn, "move forward 10 in c1") == "MOVE 10"
        assert command_tag(conn, "fetch 5 from c1") == "FETCH 5"
        rest = fetch_rows(conn, "fetch all from c1")
        assert rest == want[23:]
        assert fetch_rows(conn, "fetch 3 from c1") == []
        assert command_tag(conn, "fetch 3 from c1") == "FETCH 0"
        # Backward needs a cursor on one server: refused, not answered wrong.
        with pytest.raises(pgwire.ServerError) as exc:
            conn.simple_query("fetch backward 2 from c1")
        assert exc.value.sqlstate == "0A000"
        assert exc.value.message.startswith("pgshard:")
        assert command_tag(conn, "rollback") == "ROLLBACK"
        # Closed with its transaction.
        with pytest.raises(pgwire.ServerError) as exc:
            conn.simple_query("fetch 1 from c1")
        assert exc.value.sqlstate == "34000"
        assert conn.simple_query("select 41 + 1") == [["42"]]


def test_declare_needs_a_transaction_unless_with_hold(px):
    """WITHOUT HOLD outside a transaction is PostgreSQL's 25P01; WITH HOLD
    (what Django declares in autocommit) works there and outlives COMMIT."""
    with px.raw(timeout=20) as conn:
        conn.login()
        with pytest.raises(pgwire.ServerError) as exc:
            conn.simple_query("declare c2 cursor for select id, v from users order by id")
        assert exc.value.sqlstate == "25P01"
        assert command_tag(conn, "declare c2 cursor with hold for select id, v from users "
                                 "where id % 2 = 0 order by id desc") == "DECLARE CURSOR"
        want = [(i, f"v{i:05d}") for i in sorted(px.ids, reverse=True) if i % 2 == 0]
        got = []
        while True:
            chunk = fetch_rows(conn, "fetch forward 9 from c2")
            if not chunk:
                break
            got += chunk
        assert got == want
        assert command_tag(conn, "close c2") == "CLOSE CURSOR"
        with pytest.raises(pgwire.ServerError) as exc:
            conn.simple_query("close c2")
        assert exc.value.sqlstate == "34000"
        assert conn.simple_query("select 41 + 1") == [["42"]]


def test_psycopg2_style_named_cursor(px):
    """What psycopg's simple-protocol named cursor does, and a merged
    aggregate: the cursor's RowDescription comes with every FETCH."""
    with px.connect(autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("begin")
        # psycopg 3 would use the extended protocol for a named cursor: the
        # statements go as a client-bound cursor would send them.
        raw = conn.pgconn
        res = raw.exec_(b'DECLARE "agg" CURSOR FOR SELECT count(*), min(id), max(id) FROM users')
        assert res.status == psycopg.pq.ExecStatus.COMMAND_OK, res.error_message
        res = raw.exec_(b'FETCH FORWARD 2000 FROM "agg"')
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
        assert res.ntuples == 1 and res.nfields == 3
        assert [res.get_value(0, i).decode() for i in range(3)] == \
            [str(2 * N), str(px.ids[0]), str(px.ids[-1])]
        assert res.fname(0) == b"count"
        cur.execute("commit")


def test_cursor_on_one_shard_follows_its_server(px):
    """A cursor over one shard's rows lives on that shard's server; FETCH
    reaches it even after the transaction went to the other shard."""
    s0, s1 = px.shard_ids["s0"], px.shard_ids["s1"]
    with px.raw(timeout=20) as conn:
        conn.login()
        assert command_tag(conn, "begin") == "BEGIN"
        assert command_tag(conn, f"declare one cursor for select id, v from users "
                                 f"where id in ({s1[0]}, {s1[1]}, {s1[2]}) order by id") == \
            "DECLARE CURSOR"
        assert fetch_rows(conn, f"select id, v from users where id = {s0[0]}") == \
            [(s0[0], f"v{s0[0]:05d}")]
        assert fetch_rows(conn, "fetch 2 from one") == [(i, f"v{i:05d}") for i in s1[:2]]
        assert fetch_rows(conn, "fetch 2 from one") == [(s1[2], f"v{s1[2]:05d}")]
        assert command_tag(conn, "close one") == "CLOSE CURSOR"
        assert command_tag(conn, "commit") == "COMMIT"


def test_execute_with_row_limit_over_shards(px):
    """The extended protocol's way (JDBC setFetchSize, asyncpg and
    node-postgres cursors): Execute with a row limit on a merged portal
    returns the merged rows chunk by chunk, PortalSuspended between them."""
    want = [(i, f"v{i:05d}") for i in px.ids]
    sql = b"select id, v from users order by id"
    with px.raw(timeout=20) as conn:
        conn.login()
        conn.simple_query("begin")
        msgs = (pgwire.message("P", b"\0" + sql + b"\0\0\0")
                + pgwire.message("B", b"p1\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
                + pgwire.message("E", b"p1\0" + (50).to_bytes(4, "big"))
                + pgwire.message("S"))
        conn.send(msgs)
        chunks, rows = [], []
        while True:
            kind, payload = conn.read_message()
            if kind == "D":
                n = int.from_bytes(payload[:2], "big")
                pos, row = 2, []
                for _ in range(n):
                    ln = int.from_bytes(payload[pos:pos + 4], "big", signed=True)
                    row.append(payload[pos + 4:pos + 4 + ln].decode())
                    pos += 4 + ln
                rows.append((int(row[0]), row[1]))
            elif kind in ("s", "C"):
                chunks.append(kind)
            elif kind == "Z":
                if chunks[-1] == "C":
                    break
                conn.send(pgwire.message("E", b"p1\0" + (50).to_bytes(4, "big"))
                          + pgwire.message("S"))
            elif kind == "E":
                raise pgwire.ServerError(pgwire.parse_error_fields(payload))
        assert rows == want
        assert chunks == ["s", "s", "C"]
        conn.simple_query("commit")


def test_psycopg_server_cursor_over_shards(px):
    """psycopg 3's named cursor: DECLARE through the extended protocol, a
    Describe of the cursor's portal, FETCH FORWARD itersize, CLOSE; in a
    transaction and WITH HOLD in autocommit. A query error fails the
    DECLARE and the session goes on."""
    want = [(i, f"v{i:05d}") for i in px.ids]
    with px.connect() as conn:
        cur = conn.cursor(name="pc1")
        cur.itersize = 13
        cur.execute("select id, v from users order by id")
        assert [d.name for d in cur.description] == ["id", "v"]
        assert list(cur) == want
        cur.close()
        conn.commit()
        cur = conn.cursor(name="pc2", withhold=True)
        cur.execute("select id, v from users where id % 3 = 0 order by v desc")
        conn.commit()  # WITH HOLD: it outlives the transaction
        assert cur.fetchmany(4) == sorted([r for r in want if r[0] % 3 == 0], reverse=True,
                                          key=lambda r: r[1])[:4]
        cur.close()
        with pytest.raises(psycopg.errors.UndefinedColumn):
            conn.cursor(name="pc3").execute("select nope from users")
        conn.rollback()
        assert conn.execute("select count(*) from users").fetchone() == (2 * N,)


def test_psycopg_server_cursor_with_parameters(px):
    """psycopg 3 binds a named cursor's values: DECLARE ... $1 through the
    extended protocol. Over several shards each shard runs the query with
    the client's values (text and binary, LIMIT among them) and the merged
    rows are gathered; with a key value it is one shard's cursor."""
    want = [(i, f"v{i:05d}") for i in px.ids]
    with px.connect() as conn:
        cur = conn.cursor(name="pp1")
        cur.itersize = 7
        cur.execute("select id, v from users where id > %s and v <> %s order by id desc limit %s",
                    (px.ids[10], "none", 25))
        assert [d.name for d in cur.description] == ["id", "v"]
        assert list(cur) == sorted(want[11:], reverse=True)[:25]
        cur.close()
        cur = conn.cursor(name="pp2")
        cur.execute("select count(*), min(v) from users where id %% %b = 0",
                    (psycopg.types.numeric.Int8(2),))
        evens = [r for r in want if r[0] % 2 == 0]
        assert cur.fetchall() == [(len(evens), min(v for _, v in evens))]
        cur.close()
        # A key: the cursor lives on that shard's server, FETCH follows it.
        key = px.shard_ids["s1"][3]
        cur = conn.cursor(name="pp3")
        cur.execute("select id, v from users where id = %s", (key,))
        assert cur.fetchall() == [(key, f"v{key:05d}")]
        cur.close()
        conn.commit()
        # A value of the wrong type fails the DECLARE; the session goes on.
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.cursor(name="pp4").execute("select id from users where id > %s::int",
                                            ("x",))
        conn.rollback()
        assert conn.execute("select count(*) from users").fetchone() == (2 * N,)
