"""Cross-shard statements through pgshard on the two-shard lab (`shard_lab`):
reads merged from both shards in the simple and the extended protocol (text
and binary results, hidden columns, Describe, errors; the extended
protocol's messages one by one, pipelined and failing on either shard),
writes under each cross_shard_writes policy, two-phase commit through the
proxy, and COPY.

The differential test (test_cross_shard.py) checks merged results against
one plain PostgreSQL at scale; these tests check the protocol paths one by
one, each against values computed here.
"""
import decimal
import struct

import psycopg
import pytest
from pgwire import parse_error_fields

MAP = """\
[table.app.items]
column = id
type = bigint
strategy = hash
"""

ROWS = 200  # ids 1..200, spread over both shards by hash


@pytest.fixture
def items(shard_lab):
    """Table items, created directly on both shards (empty); rows are
    inserted through pgshard by each test."""
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS items")
            conn.execute("CREATE TABLE items (id bigint primary key, grp int, price numeric(10,2),"
                         " name text, qty int)")
    yield
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS items")


def item(i):
    return (i, i % 7, decimal.Decimal(i * 3) / 4 if i % 11 else None, f"n{i % 13:02d}", i % 5)


def load(proxy_):
    """Every row, one autocommitted INSERT each (any write policy takes it)."""
    with proxy_.connect(autocommit=True) as conn, conn.cursor() as cur:
        for i in range(1, ROWS + 1):
            cur.execute("INSERT INTO items (id, grp, price, name, qty)"
                        " VALUES (%s, %s, %s, %s, %s)", item(i))


def shard_counts(shard_lab):
    counts = []
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            counts.append(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    return counts


def expected_rows():
    return [item(i) for i in range(1, ROWS + 1)]


def q2(price):
    return None if price is None else price.quantize(decimal.Decimal("0.01"))


def test_merged_reads_simple_and_extended(sharded_proxy, shard_lab, items):
    p = sharded_proxy(extra_ini=MAP)
    load(p)
    assert all(c > 0 for c in shard_counts(shard_lab)), "rows must be on both shards"
    rows = [(i, g, q2(pr), n, q) for (i, g, pr, n, q) in expected_rows()]
    for binary in (False, True):
        with p.connect(autocommit=True) as conn:
            cur = conn.cursor(binary=binary)
            # Concatenation, count, ORDER BY with LIMIT/OFFSET (hidden column).
            got = cur.execute("SELECT id FROM items WHERE qty >= %s", (0,)).fetchall()
            assert sorted(r[0] for r in got) == list(range(1, ROWS + 1))
            assert cur.execute("SELECT count(*) FROM items").fetchone() == (ROWS,)
            got = cur.execute("SELECT name, id FROM items ORDER BY price DESC NULLS LAST, id"
                              " LIMIT %s OFFSET %s", (5, 3)).fetchall()
            want = sorted(rows, key=lambda r: (r[2] is None, -(r[2] or 0), r[0]))[3:8]
            assert got == [(r[3], r[0]) for r in want]
            got = cur.execute("SELECT id FROM items ORDER BY qty, id DESC LIMIT 4").fetchall()
            want = sorted(rows, key=lambda r: (r[4], -r[0]))[:4]
            assert got == [(r[0],) for r in want]
            # GROUP BY with aggregates, avg rewritten to sum/count.
            got = cur.execute("SELECT grp, count(*), sum(price), min(name), max(id), avg(qty)"
                              " FROM items GROUP BY grp ORDER BY grp").fetchall()
            want = []
            for g in range(7):
                rs = [r for r in rows if r[1] == g]
                prices = [r[2] for r in rs if r[2] is not None]
                avg = decimal.Decimal(sum(r[4] for r in rs)) / len(rs)
                want.append((g, len(rs), sum(prices), min(r[3] for r in rs),
                             max(r[0] for r in rs), avg))
            assert [r[:5] for r in got] == [w[:5] for w in want]
            for r, w in zip(got, want):
                assert abs(r[5] - w[5]) < decimal.Decimal("1e-15"), (r, w)
            # DISTINCT.
            got = cur.execute("SELECT DISTINCT qty FROM items ORDER BY qty").fetchall()
            assert got == [(q,) for q in range(5)]
    # The exact text PostgreSQL prints for avg, through the simple protocol.
    with p.connect(autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        got = cur.execute("SELECT avg(qty), sum(price), avg(price) FROM items").fetchone()
        with shard_lab.connect_primary("s0", autocommit=True) as s0:
            s0.execute("CREATE TEMP TABLE t AS SELECT * FROM items WITH NO DATA")
            with s0.cursor() as c0:
                c0.executemany("INSERT INTO t VALUES (%s, %s, %s, %s, %s)", expected_rows())
            want = s0.execute("SELECT avg(qty), sum(price), avg(price) FROM t").fetchone()
        assert [str(v) for v in got] == [str(v) for v in want]  # the scale too


def test_merged_read_refusals_and_errors(sharded_proxy, items):
    p = sharded_proxy(extra_ini=MAP)
    load(p)
    with p.connect(autocommit=True) as conn:
        for sql in ("SELECT id, row_number() OVER () FROM items",
                    "SELECT grp FROM items GROUP BY grp HAVING count(*) > (SELECT 1)",
                    "SELECT string_agg(name, ',') FROM items",
                    "SELECT 1, count(DISTINCT grp) FROM items"):
            with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                conn.execute(sql)
            assert str(e.value).startswith("pgshard:"), e.value
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # A shard's error fails the statement; the session goes on.
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / (id - 17) FROM items").fetchall()
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (ROWS,)
        # A result fetched in parts (a named cursor): gathered whole, handed
        # out in parts, never partial.
        with conn.transaction():
            cur = conn.cursor(name="c1")
            cur.execute("SELECT id FROM items ORDER BY id")
            first = cur.fetchmany(10)
            rest = cur.fetchall()
            assert [r[0] for r in first + rest] == sorted(
                r[0] for r in conn.execute("SELECT id FROM items").fetchall())
    with p.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE id IN (1, 2, 3, 4, 5, 6)"
                            ).fetchone() == (6,)


def test_cross_shard_reads_deny(sharded_proxy, items):
    p = sharded_proxy(extra_ini=MAP, cross_shard_reads="deny")
    load(p)
    with p.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("SELECT count(*) FROM items")
        assert conn.execute("SELECT id FROM items WHERE id = 5").fetchone() == (5,)


@pytest.mark.parametrize("policy", ["deny", "allow", "2pc"])
def test_keyless_update_by_policy(sharded_proxy, shard_lab, items, policy):
    p = sharded_proxy(extra_ini=MAP, cross_shard_writes=policy)
    load(p)
    with p.connect(autocommit=True) as conn:
        if policy == "deny":
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute("UPDATE items SET qty = qty + 100")
            return
        cur = psycopg.ClientCursor(conn)
        cur.execute("UPDATE items SET qty = qty + 100")
        assert cur.rowcount == ROWS
        assert conn.execute("SELECT min(qty) FROM items").fetchone() == (100,)
        # A failure on one shard: under 2pc nothing changes anywhere.
        with shard_lab.connect_primary("s1", autocommit=True) as s1:
            s1.execute("ALTER TABLE items ADD CONSTRAINT small CHECK (qty < 150)")
        with pytest.raises(psycopg.errors.CheckViolation):
            cur.execute("UPDATE items SET qty = qty + 50")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        if policy == "2pc":
            assert conn.execute("SELECT max(qty) FROM items").fetchone() == (104,)
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)


def test_two_phase_commit_of_a_transaction(sharded_proxy, shard_lab, items):
    p = sharded_proxy(extra_ini=MAP, cross_shard_writes="2pc")
    load(p)
    with p.connect() as conn:  # psycopg: BEGIN ... COMMIT, extended protocol
        with conn.cursor() as cur:
            cur.execute("UPDATE items SET name = 'x' WHERE id = 1")
            cur.execute("UPDATE items SET name = 'x' WHERE id = 2")
            cur.execute("UPDATE items SET name = 'x' WHERE id = 3")
        conn.commit()
    assert all(c > 0 for c in shard_counts(shard_lab))
    with p.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM items WHERE name = 'x'").fetchone() == (3,)
        # Simple protocol: an explicit transaction over both shards.
        cur = psycopg.ClientCursor(conn)
        cur.execute("BEGIN")
        cur.execute("DELETE FROM items WHERE id = 1")
        cur.execute("DELETE FROM items WHERE id = 2")
        cur.execute("DELETE FROM items WHERE id = 3")
        cur.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (ROWS - 3,)
        # A transaction that failed on one shard rolls back on every shard.
        cur.execute("BEGIN")
        cur.execute("DELETE FROM items WHERE id = 4")
        cur.execute("DELETE FROM items WHERE id = 5")
        with pytest.raises(psycopg.errors.DivisionByZero):
            cur.execute("SELECT 1/0 FROM items WHERE id = 6")
        cur.execute("COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (ROWS - 3,)
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)


# ---------------------------------------------------------------- extended, by hand
#
# A merged portal is bound on one part at its Bind (that reply is the
# client's), on the others with their Execute; the unit's Sync goes out while
# the parts run. These drive the protocol message by message.

def _m(kind, body=b""):
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


def _parse(sql, name=""):
    return _m("P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def _bind(*params, portal="", stmt=""):
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!hh", 0, len(params))
    for v in params:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v.encode()
    return _m("B", body + struct.pack("!h", 0))


def _describe(kind, name=""):
    return _m("D", kind.encode() + name.encode() + b"\0")


def _execute(portal=""):
    return _m("E", portal.encode() + b"\0" + struct.pack("!i", 0))


def _close(kind, name=""):
    return _m("C", kind.encode() + name.encode() + b"\0")


SYNC, FLUSH = _m("S"), _m("H")


def _replies(raw, until="Z"):
    """Messages up to and including the first of kind UNTIL, summarized:
    '1', '2', 'T' (column count), ('D', first value), ('C', tag), ('E', SQLSTATE), 'Z'."""
    got = []
    while True:
        kind, body = raw.read_message()
        if kind in ("N", "S"):
            continue
        if kind == "T":
            got.append(("T", struct.unpack("!h", body[:2])[0]))
        elif kind == "D":
            n = struct.unpack("!i", body[2:6])[0]
            got.append(("D", None if n < 0 else body[6:6 + n].decode()))
        elif kind == "C":
            got.append(("C", body.rstrip(b"\0").decode()))
        elif kind == "E":
            got.append(("E", parse_error_fields(body)["C"]))
        else:
            got.append(kind)
        if kind == until:
            return got


TOP3 = "SELECT id FROM items ORDER BY qty DESC, id DESC LIMIT 3"


def _top3():
    rows = sorted(expected_rows(), key=lambda r: (-r[4], -r[0]))[:3]
    return [("D", str(r[0])) for r in rows]


def test_merged_portal_message_by_message(sharded_proxy, shard_lab, items):
    p = sharded_proxy(extra_ini=MAP)
    load(p)
    top = _top3()
    whole = ["1", "2", ("T", 1)] + top + [("C", "SELECT 3"), "Z"]
    with p.raw() as raw:
        raw.login()
        # Two units at once: each answered whole, in order.
        unit = _parse(TOP3) + _bind() + _describe("P") + _execute() + SYNC
        raw.send(unit + unit)
        assert _replies(raw) == whole
        assert _replies(raw) == whole
        # Step by step, waiting on Flush: the Sync comes after the result.
        raw.send(_parse(TOP3) + _bind() + _describe("P") + FLUSH)
        assert _replies(raw, until="T") == ["1", "2", ("T", 1)]
        raw.send(_execute() + FLUSH)
        assert _replies(raw, until="C") == top + [("C", "SELECT 3")]
        raw.send(SYNC)
        assert _replies(raw) == ["Z"]
        # A Bind that fails (a bad parameter), then a unit that must run.
        bad = _parse("SELECT id FROM items WHERE qty >= $1::int ORDER BY qty DESC, id DESC"
                     " LIMIT 3") + _bind("x") + _describe("P") + _execute() + SYNC
        raw.send(bad + unit)
        assert _replies(raw) == ["1", ("E", "22P02"), "Z"]
        assert _replies(raw) == whole
        # The same, its error read (Flush) before the Execute is sent.
        raw.send(bad[:bad.index(_execute())] + FLUSH)
        assert _replies(raw, until="E") == ["1", ("E", "22P02")]
        raw.send(_execute() + SYNC)
        assert _replies(raw) == ["Z"]
        raw.send(unit)
        assert _replies(raw) == whole
        # A shard's error in the Execute, the next unit already sent.
        fail = _parse("SELECT id, 1 / (id - 17) FROM items ORDER BY id") + _bind() + _execute()
        raw.send(fail + SYNC + unit)
        assert _replies(raw) == ["1", "2", ("E", "22012"), "Z"]
        assert _replies(raw) == whole
        # The statement closed between Bind and Execute; a named portal
        # executed twice in a transaction, described after, then closed.
        raw.send(_parse(TOP3, "s1") + _bind(portal="p1", stmt="s1") + _close("S", "s1")
                 + _execute("p1") + SYNC)
        assert _replies(raw) == ["1", "2", "3"] + top + [("C", "SELECT 3"), "Z"]
        assert raw.simple_query("BEGIN") == []
        raw.send(_parse(TOP3, "s2") + _bind(portal="p2", stmt="s2") + _execute("p2")
                 + _execute("p2") + _describe("P", "p2") + _close("P", "p2") + SYNC)
        assert _replies(raw) == (["1", "2"] + top + [("C", "SELECT 3"), ("C", "SELECT 0"),
                                                     ("T", 1), "3", "Z"])
        assert raw.simple_query("COMMIT") == []
    # A Bind that only one shard refuses (a domain checked differently on
    # each), either shard: one error, nothing else of the statement, and
    # the session goes on. Repeated: the other part is cancelled, and a
    # cancel that landed on the client's own messages of the unit, or on
    # the next unit, showed as 57014 now and then.
    domains = []
    for n, strict in enumerate(("s0", "s1") * 10):
        domain = f"qty_{strict}_{n}"  # a statement of its own (servers keep theirs prepared)
        domains.append(domain)
        for shard in ("s0", "s1"):
            with shard_lab.connect_primary(shard, autocommit=True) as c:
                c.execute(f"DROP DOMAIN IF EXISTS {domain}")
                c.execute(f"CREATE DOMAIN {domain} AS int CHECK (VALUE > %s)"
                          % (10 if shard == strict else 0))
        with p.raw() as raw:
            raw.login()
            raw.send(_parse(f"SELECT id FROM items WHERE qty < $1::{domain} ORDER BY id LIMIT 3")
                     + _bind("5") + _describe("P") + _execute() + SYNC + unit)
            got = _replies(raw)
            assert [g for g in got if g[0] == "E"] == [("E", "23514")], (strict, got)
            assert got[-2:] == [("E", "23514"), "Z"], (strict, got)
            assert _replies(raw) == whole
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as c:
            c.execute("DROP DOMAIN " + ", ".join(domains))


# ---------------------------------------------------------------- COPY

def placement(shard_lab, config, table="items"):
    """Every id on each shard, checked against `pgshardctl route`."""
    from test_sharding import route_many
    on = {}
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            on[shard] = [r[0] for r in conn.execute(f"SELECT id FROM {table}")]
    ids = on["s0"] + on["s1"]
    want = route_many(config, table, [str(i) for i in ids])
    got = ["s0"] * len(on["s0"]) + ["s1"] * len(on["s1"])
    misplaced = [(i, g, w) for i, g, w in zip(ids, got, want) if g != w]
    assert not misplaced, f"{len(misplaced)} rows on the wrong shard, e.g. {misplaced[:5]}"
    return sorted(ids), {s: len(v) for s, v in on.items()}


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_from_splits_rows_by_key(sharded_proxy, shard_lab, items, fmt):
    p = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    rows = expected_rows()
    with p.connect(autocommit=True) as conn, conn.cursor() as cur:
        opts = {"csv": "(FORMAT csv, HEADER true)", "binary": "(FORMAT binary)"}.get(fmt, "")
        with cur.copy(f"COPY items (id, grp, price, name, qty) FROM STDIN {opts}") as copy:
            if fmt == "binary":  # each shard gets the header, its tuples, the trailer
                copy.set_types(["int8", "int4", "numeric", "text", "int4"])
            if fmt == "csv":  # psycopg's write_row writes the text format: CSV by hand
                copy.write("id,grp,price,name,qty\r\n")
                for r in rows:
                    copy.write(",".join("" if v is None else f'"{v}"' if isinstance(v, str)
                                        else str(v) for v in r) + "\r\n")
            else:
                for r in rows:
                    copy.write_row(r)
        assert cur.rowcount == ROWS
        assert conn.execute("SELECT count(*), sum(qty) FROM items").fetchone() == (
            ROWS, sum(r[4] for r in rows))
    ids, per_shard = placement(shard_lab, p.config_path)
    assert ids == list(range(1, ROWS + 1))
    assert all(n > 0 for n in per_shard.values())
    # COPY TO concatenates every shard's rows.
    with p.connect(autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY items (id) TO STDOUT") as copy:
            got = sorted(int(r[0]) for r in copy.rows())
        assert got == list(range(1, ROWS + 1))


def test_copy_from_refusals(sharded_proxy, shard_lab, items):
    p = sharded_proxy(extra_ini=MAP)  # cross_shard_writes = deny
    with p.connect(autocommit=True) as conn:
        cur = conn.cursor()
        # Rows for two shards under deny: nothing is kept anywhere.
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            with cur.copy("COPY items (id, grp) FROM STDIN") as copy:
                for i in range(1, 50):
                    copy.write_row((i, 0))
        assert str(e.value).startswith("pgshard:")
        assert shard_counts(shard_lab) == [0, 0]
        # A key that is not a bigint: the line is named, nothing kept.
        p2 = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
        with p2.connect(autocommit=True) as conn2, conn2.cursor() as cur2:
            with pytest.raises(psycopg.errors.InvalidTextRepresentation) as e:
                with cur2.copy("COPY items (id, grp) FROM STDIN") as copy:
                    copy.write("1\t0\n2\t0\nthree\t0\n4\t0\n")
            assert "line 3" in str(e.value)
            assert shard_counts(shard_lab) == [0, 0]
            assert conn2.execute("SELECT 1").fetchone() == (1,)
            # Rows in an encoding whose bytes pgshard would cut wrongly: refused.
            conn2.execute("SET client_encoding TO 'SJIS'")
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                with cur2.copy("COPY items (id, grp) FROM STDIN") as copy:
                    copy.write("1\t0\n")
            conn2.execute("SET client_encoding TO 'UTF8'")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_in_a_two_phase_transaction(sharded_proxy, shard_lab, items):
    p = sharded_proxy(extra_ini=MAP, cross_shard_writes="2pc")
    with p.connect() as conn, conn.cursor() as cur:  # psycopg: inside BEGIN
        with cur.copy("COPY items (id, grp) FROM STDIN") as copy:
            for i in range(1, 101):
                copy.write_row((i, 1))
        conn.commit()
    ids, _ = placement(shard_lab, p.config_path)
    assert ids == list(range(1, 101))
    with p.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            with conn.cursor().copy("COPY items (id, grp) FROM STDIN") as copy:
                copy.write_row((500, 1))


def test_copy_a_million_rows(sharded_proxy, shard_lab, items):
    """1,000,000 rows through pgshard: every row on its shard, count exact."""
    p = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    n = 1_000_000
    chunk = "".join(f"{i}\t{i % 7}\n" for i in range(1, 10_001))
    with p.connect(autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY items (id, grp) FROM STDIN") as copy:
            for base in range(0, n, 10_000):
                if base == 0:
                    copy.write(chunk)
                else:
                    copy.write("".join(f"{i}\t{i % 7}\n" for i in range(base + 1, base + 10_001)))
        assert cur.rowcount == n
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (n,)
    ids, per_shard = placement(shard_lab, p.config_path)
    assert len(ids) == n and ids[0] == 1 and ids[-1] == n and len(set(ids)) == n
    assert sum(per_shard.values()) == n


@pytest.mark.parametrize("policy", ["deny", "2pc"])
def test_reference_table_write_under_policy(sharded_proxy, shard_lab, policy):
    """A table not in the map is written on every shard: under 2pc all or
    nothing, otherwise each shard on its own (a failure leaves the others
    changed, and the error says so)."""
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS refs")
            conn.execute("CREATE TABLE refs (code text primary key, n int)")
            conn.execute("INSERT INTO refs VALUES ('a', 1), ('b', 2)")
    with shard_lab.connect_primary("s1", autocommit=True) as s1:
        s1.execute("ALTER TABLE refs ADD CONSTRAINT small CHECK (n < 10)")
    try:
        p = sharded_proxy(extra_ini=MAP, cross_shard_writes=policy)
        with p.connect(autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute("UPDATE refs SET n = n + 1")
            assert cur.rowcount == 2  # one shard's count: the rows are copies
            with pytest.raises(psycopg.errors.CheckViolation):
                cur.execute("UPDATE refs SET n = n + 10")
            assert conn.execute("SELECT 1").fetchone() == (1,)
        sums = []
        for shard in ("s0", "s1"):
            with shard_lab.connect_primary(shard, autocommit=True) as conn:
                sums.append(conn.execute("SELECT sum(n) FROM refs").fetchone()[0])
                assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
        if policy == "2pc":
            assert sums == [5, 5]  # the failed update changed no shard
        else:
            assert sums == [25, 5]  # s1 refused; s0, first in turn, kept its change
    finally:
        for shard in ("s0", "s1"):
            with shard_lab.connect_primary(shard, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS refs")
