"""Cross-shard reads pgshard merges beyond plain aggregates, differentially:
HAVING over the merged groups (aggregates selected or not, group columns,
constants, the client's parameters, no GROUP BY), count/sum/avg(DISTINCT x)
alone and beside other aggregates, DISTINCT ON with its ORDER BY and
LIMIT/OFFSET, and numeric (1.0 vs 1.00) and float (-0 vs 0) group keys and
DISTINCT rows that are equal by value on different shards.

Table mp is loaded through pgshard into the two-shard lab (`shard_lab`,
hash on id) and copied, row for row as the shards hold it, into database
mp_plain on s0's server, read directly. Every query runs on both sides in
three protocol paths: simple (literals inlined by psycopg's ClientCursor),
extended with text results and extended with binary results (psycopg
prepare=True: Parse/Bind/Execute of a named statement, parameters typed
as psycopg types them, strings unknown). The answers must be the same:
columns (names, type OIDs), command tag, rows as Python values (so numeric
1.0 and 1.00 are one value) in the same order when ORDER BY makes it total,
and, where no value is one of several equal ones, the same text of every
value (scales included). Shapes pgshard still cannot merge are refused with
0A000 "pgshard: ..." and the session goes on.

Run: PGSHARD_IT_PORT_BASE=8000 python3 -m pytest tests/integration/test_merge_pushdown.py
"""
import datetime
import decimal

import psycopg
import pytest

MAP = """\
[table.app.mp]
column = id
type = bigint
strategy = hash
"""

PLAIN_DB = "mp_plain"
DDL = ("CREATE TABLE mp (id bigint PRIMARY KEY, g int, n numeric, f float8, v int, t text,"
       " d date)")
COLUMNS = ("id", "g", "n", "f", "v", "t", "d")
ROWS = 240
D = decimal.Decimal
NUMERICS = [D("1.0"), D("1.00"), D("2.5"), D("2.50"), D("0.000"), D("-3.25"), None, D("10")]
FLOATS = [0.0, -0.0, 1.5, None, 2.25]
MODES = ["simple", "text", "binary"]


def row(i):
    return (i, i % 6, NUMERICS[i % 8], FLOATS[i % 5], None if i % 13 == 0 else (i * 7) % 23 - 5,
            f"t{i % 9}", datetime.date(2024, 1, 1) + datetime.timedelta(days=i % 10))


class Env:
    """pgshard over the loaded shards, and the plain database."""

    def __init__(self, proxy, lab):
        self.proxy = proxy
        self.lab = lab

    def connect_plain(self):
        return psycopg.connect(host="127.0.0.1", port=self.lab.shard("s0").primary_port,
                               dbname=PLAIN_DB, user="postgres", connect_timeout=5,
                               autocommit=True)


def _drop(shard_lab):
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard) as conn:
            conn.execute("DROP TABLE IF EXISTS mp")
    with shard_lab.connect_primary("s0") as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PLAIN_DB} WITH (FORCE)")


@pytest.fixture
def env(sharded_proxy, shard_lab):
    _drop(shard_lab)
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard) as conn:
            conn.execute(DDL)
    p = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    with p.connect(autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO mp ({', '.join(COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [row(i) for i in range(1, ROWS + 1)])
    # What each shard holds, as it holds it, is the plain database's data.
    held, texts = [], {}
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard) as conn:
            held += conn.execute("SELECT * FROM mp").fetchall()
            texts[shard] = {r[0] for r in conn.execute(
                "SELECT n::text FROM mp UNION SELECT f::text FROM mp")}
    assert len(held) == ROWS
    # Equal values in different forms on both shards: what this file is about.
    for shard in ("s0", "s1"):
        assert {"1.0", "1.00", "2.5", "2.50", "0", "-0"} <= texts[shard], (shard, texts[shard])
    with shard_lab.connect_primary("s0") as conn:
        conn.execute(f"CREATE DATABASE {PLAIN_DB}")
    e = Env(p, shard_lab)
    with e.connect_plain() as conn:
        conn.execute(DDL)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO mp VALUES (%s, %s, %s, %s, %s, %s, %s)", held)
    yield e
    _drop(shard_lab)


def run(conn, mode, sql, params):
    """(columns, tag, rows, raw texts) or ('error', sqlstate, message)."""
    try:
        if mode == "simple":
            cur = psycopg.ClientCursor(conn)
            cur.execute(sql, params)
        else:
            cur = conn.cursor(binary=mode == "binary")
            cur.execute(sql, params, prepare=True)
        res = cur.pgresult
        rows = cur.fetchall()
        raw = [tuple(res.get_value(r, c) for c in range(res.nfields))
               for r in range(res.ntuples)]
        return ([(c.name, c.type_code) for c in cur.description], cur.statusmessage, rows, raw)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate, exc.diag.message_primary or str(exc))


def _key(r):
    return tuple((0, 0) if v is None else (1, v) for v in r)


def check(env, sql, params=(), ordered=True, raw=True, expect_rows=None):
    """SQL answers alike through pgshard and on the plain database in every
    mode. ORDERED: the order counts; RAW: so does every value's text (not
    where a shown value is one of several equal ones). EXPECT_ROWS: how
    many rows (the test's own sanity check)."""
    with env.proxy.connect(autocommit=True) as px, env.connect_plain() as plain:
        for mode in MODES:
            got, want = run(px, mode, sql, params), run(plain, mode, sql, params)
            where = f"[{mode}] {sql} {params}"
            assert want[0] != "error", f"{where}: the plain database refused it: {want}"
            assert got[0] != "error", f"{where}: pgshard: {got}"
            assert got[:2] == want[:2], where
            g_rows, w_rows = got[2], want[2]
            g_raw, w_raw = got[3], want[3]
            if not ordered:
                g_rows, w_rows = sorted(g_rows, key=_key), sorted(w_rows, key=_key)
                g_raw, w_raw = sorted(g_raw, key=_key), sorted(w_raw, key=_key)
            assert g_rows == w_rows, f"{where}\n  pgshard {g_rows}\n  plain   {w_rows}"
            if raw:
                assert g_raw == w_raw, f"{where}\n  pgshard {g_raw}\n  plain   {w_raw}"
            if expect_rows is not None:
                assert len(w_rows) == expect_rows, f"{where}: {len(w_rows)} rows"
    return w_rows


def test_having(env):
    # Selected aggregates, aggregates only in HAVING (avg: a hidden sum and
    # count), constants on either side, AND/OR/NOT, BETWEEN, IN, IS NULL.
    rows = check(env, "SELECT t, count(*) FROM mp GROUP BY t HAVING count(*) > %s ORDER BY t",
                 (26,))
    assert [r[0] for r in rows] == [f"t{i}" for i in range(1, 7)]
    check(env, "SELECT g, sum(v) FROM mp GROUP BY g HAVING sum(v) >= %s AND avg(v) < %s"
               " ORDER BY g", (100, D("5.5")))
    check(env, "SELECT g FROM mp GROUP BY g HAVING min(v) < %s OR max(t) = %s ORDER BY 1",
          (-4, "t8"))
    check(env, "SELECT t, count(*) FROM mp GROUP BY t HAVING max(n) IS NOT NULL"
               " AND count(*) BETWEEN %s AND %s ORDER BY t", (26, 27))
    check(env, "SELECT g, avg(n) FROM mp GROUP BY g HAVING NOT avg(n) <= %s ORDER BY g",
          (D("1.7"),))
    check(env, "SELECT g, max(d) FROM mp GROUP BY g HAVING max(d) >= %s ORDER BY g",
          (datetime.date(2024, 1, 10),))
    check(env, "SELECT g FROM mp WHERE v > %s GROUP BY g HAVING count(*) IN (%s, %s, %s)"
               " ORDER BY g", (0, 20, 21, 22))
    check(env, "SELECT g, count(v) FROM mp GROUP BY g HAVING %s < count(v) AND g <> %s"
               " ORDER BY g", (30, 2))
    check(env, "SELECT g FROM mp GROUP BY g HAVING sum(v) > NULL", expect_rows=0)
    check(env, "SELECT g FROM mp GROUP BY g HAVING min(v) IS NULL OR g IS NULL", expect_rows=0)
    # A string parameter (unknown to the server) typed against the aggregate.
    check(env, "SELECT g, count(*) FROM mp GROUP BY g HAVING count(*) > %s ORDER BY g", ("39",))
    # LIMIT/OFFSET after HAVING (the shards send every group).
    check(env, "SELECT g, count(*) FROM mp GROUP BY g HAVING count(*) > %s ORDER BY g"
               " LIMIT %s OFFSET %s", (39, 2, 1), expect_rows=2)
    check(env, "SELECT g, count(*) AS c FROM mp GROUP BY g HAVING count(*) > 0"
               " ORDER BY c DESC, g LIMIT 3", expect_rows=3)
    # Without GROUP BY: one group, kept or not.
    check(env, "SELECT count(*), sum(v) FROM mp HAVING count(*) > %s", (10,), expect_rows=1)
    check(env, "SELECT count(*), sum(v) FROM mp HAVING count(*) > %s", (100000,), expect_rows=0)
    check(env, "SELECT count(*) FROM mp WHERE id < 0 HAVING count(*) = 0", expect_rows=1)
    # DISTINCT after HAVING; a numeric group key, 1.0 and 1.00 one group.
    check(env, "SELECT DISTINCT count(*) FROM mp GROUP BY g HAVING count(*) > 1", ordered=False)
    rows = check(env, "SELECT n, count(*) FROM mp GROUP BY n HAVING count(*) > %s"
                      " ORDER BY n NULLS FIRST", (20,), raw=False)
    assert (D("1"), 60) in rows


def test_count_distinct(env):
    check(env, "SELECT count(DISTINCT t) FROM mp", expect_rows=1)
    # Numeric 1.0/1.00 and float -0/0 count once, on whichever shard.
    rows = check(env, "SELECT count(DISTINCT n), count(DISTINCT f), count(DISTINCT v) FROM mp")
    assert rows[0][:2] == (5, 3)
    # Beside other aggregates: per (group, x) partial counts combine.
    check(env, "SELECT g, count(DISTINCT t), count(*), sum(v), avg(v), min(t), max(n)"
               " FROM mp GROUP BY g ORDER BY g", expect_rows=6)
    check(env, "SELECT count(DISTINCT v), count(*), count(v), sum(v), avg(v) FROM mp"
               " WHERE id > %s", (50,))
    check(env, "SELECT sum(DISTINCT v), avg(DISTINCT v), count(DISTINCT v) FROM mp"
               " WHERE id > %s", (50,))
    check(env, "SELECT g, sum(DISTINCT n), avg(DISTINCT n) FROM mp GROUP BY g ORDER BY g",
          raw=False)
    # No rows: one row all the same.
    check(env, "SELECT count(DISTINCT n), sum(DISTINCT v), count(*) FROM mp WHERE id < %s",
          (0,), expect_rows=1)
    check(env, "SELECT g, count(DISTINCT t) FROM mp WHERE id < 0 GROUP BY g", expect_rows=0)
    # FILTER, ORDER BY a DISTINCT aggregate, LIMIT, HAVING on one.
    check(env, "SELECT g, count(DISTINCT v) FILTER (WHERE v > %s) FROM mp GROUP BY g"
               " ORDER BY 2 DESC, g LIMIT 3", (3,), expect_rows=3)
    check(env, "SELECT g, count(DISTINCT t), count(DISTINCT d) FROM mp GROUP BY g"
               " HAVING count(DISTINCT t) >= %s ORDER BY g", (3,))
    check(env, "SELECT t FROM mp GROUP BY t ORDER BY count(DISTINCT g), t")
    check(env, "SELECT min(DISTINCT v), max(DISTINCT t) FROM mp")
    # A select item and its GROUP BY expression written with a literal each.
    check(env, "SELECT v %% 5, count(DISTINCT t), count(*) FROM mp GROUP BY v %% 5 ORDER BY 1")
    check(env, "SELECT d - 1, count(DISTINCT g) FROM mp GROUP BY d - 1 HAVING d - 1 > %s"
               " ORDER BY 1", (datetime.date(2024, 1, 3),))


def test_distinct_on(env):
    check(env, "SELECT DISTINCT ON (g) g, id, v FROM mp ORDER BY g, v DESC NULLS LAST, id",
          expect_rows=6)
    check(env, "SELECT DISTINCT ON (g) g, id, v FROM mp ORDER BY g DESC, v, id"
               " LIMIT %s OFFSET %s", (3, 1), expect_rows=3)
    check(env, "SELECT DISTINCT ON (t, g) t, g, id FROM mp ORDER BY t DESC, g, id LIMIT 5",
          expect_rows=5)
    check(env, "SELECT DISTINCT ON (g) id FROM mp WHERE v > %s ORDER BY g, id", (2,))
    check(env, "SELECT DISTINCT ON (v / 3) v / 3, id FROM mp ORDER BY v / 3 DESC, id LIMIT 4")
    # The ORDER BY names only some of the expressions: the rest follow.
    check(env, "SELECT DISTINCT ON (g, t) g, t FROM mp ORDER BY g", ordered=False)
    # A numeric key, equal by value across shards: the first row of the key
    # in ORDER BY order, whatever its shard.
    rows = check(env, "SELECT DISTINCT ON (n) n, id FROM mp WHERE n IS NOT NULL ORDER BY n, id")
    assert len(rows) == 5


def test_equal_values_group_and_distinct(env):
    rows = check(env, "SELECT n, count(*), sum(v) FROM mp GROUP BY n ORDER BY n NULLS FIRST",
                 raw=False)
    assert [r[0] for r in rows] == [None, D("-3.25"), D("0"), D("1"), D("2.5"), D("10")]
    rows = check(env, "SELECT f, count(*) FROM mp GROUP BY f ORDER BY f", raw=False)
    assert [r[1] for r in rows] == [96, 48, 48, 48]
    check(env, "SELECT DISTINCT n FROM mp ORDER BY 1", raw=False, expect_rows=6)
    check(env, "SELECT DISTINCT f FROM mp", ordered=False, raw=False, expect_rows=4)
    check(env, "SELECT DISTINCT g, n FROM mp ORDER BY 1, 2", raw=False)
    check(env, "SELECT count(*) FROM mp GROUP BY n, f", ordered=False)


REFUSED = [
    "SELECT g FROM mp GROUP BY g HAVING count(*) > (SELECT 1)",
    "SELECT g, count(*) FROM mp GROUP BY g HAVING sum(v) * 2 > 10",
    "SELECT g FROM mp GROUP BY g HAVING max(t) LIKE 't%'",
    "SELECT g FROM mp GROUP BY g HAVING string_agg(t, ',') <> ''",
    "SELECT id, row_number() OVER () FROM mp",
    "SELECT 1, count(DISTINCT t) FROM mp",
    "SELECT DISTINCT ON (g) g, count(*) FROM mp GROUP BY g",
    "SELECT g, string_agg(t, ',') FROM mp GROUP BY g",
    "SELECT count(DISTINCT t ORDER BY t) FROM mp",
]


def test_still_refused(env):
    with env.proxy.connect(autocommit=True) as conn:
        for sql in REFUSED:
            for prepare in (False, True):
                with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                    conn.execute(sql, prepare=prepare)
                assert str(e.value).startswith("pgshard:"), (sql, e.value)
                assert conn.execute("SELECT count(*) FROM mp").fetchone() == (ROWS,)
        # A type pgshard cannot compare in HAVING: refused by the merge.
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            conn.execute("SELECT g FROM mp GROUP BY g HAVING max(d) > min(d)::timestamp")
        assert "pgshard:" in str(e.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
