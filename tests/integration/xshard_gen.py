"""Schema, data and a read-query generator for the cross-shard differential
test (test_cross_shard.py).

Everything here is deterministic: the rows come from random.Random(DATA_SEED)
and the queries from random.Random(QUERY_SEED), so a failing query names a
reproducible statement.

The schema covers the four strategies of DESIGN.md plus a reference table:

  xs_orders    hash on id (bigint)                      15 000 rows
  xs_items     hash on order_id (bigint): colocated with
               xs_orders (same strategy, same key type)  12 000 rows
  xs_events    range on id (bigint), split at 50 000     10 000 rows
  xs_sites     geo on country (text)                      7 000 rows
  xs_invoices  tenant on tenant_id (bigint), 42 -> s1,
               7 -> s0                                    6 500 rows
  xs_lines     tenant on tenant_id: colocated with
               xs_invoices                                5 500 rows
  xs_ref       reference table (not in the shard map)        32 rows
  xs_scratch   hash on id: empty, for the big-INSERT test

Column types are the ones the merge computes over: int2/int4/int8,
numeric(12,2) and plain numeric (scales 0..6), float8 (only ORDER BY and
min/max, never sum/avg), text/varchar, date, timestamptz, bool, uuid. Text is
ASCII (the lab's databases use the C collation). NULLs, duplicates and
negative numbers everywhere they can be.

A Query holds its SQL twice: with the literals inlined (simple protocol) and
with %t/%b placeholders plus a parameter list (extended protocol, text or
binary). Literals that shape the statement (date_trunc('month', ...), the
ORDER BY and GROUP BY expressions) are always inline, so both forms are the
same statement to PostgreSQL.
"""
import datetime
import random
import uuid
from decimal import Decimal

from psycopg.types.numeric import Int8

DATA_SEED = 20240611
QUERY_SEED = 5151

EU = ["DE", "FR", "IT", "ES", "NL", "PL"]
US = ["US", "CA", "MX"]
RANGE_SPLIT = 50000
PINNED_TENANTS = {42: "s1", 7: "s0"}

SHARD_MAP = f"""\
[table.app.xs_orders]
column = id
type = bigint
strategy = hash

[table.app.xs_items]
column = order_id
type = bigint
strategy = hash

[table.app.xs_events]
column = id
type = bigint
strategy = range
range = s0: - {RANGE_SPLIT}
range = s1: {RANGE_SPLIT} -

[table.app.xs_sites]
column = country
type = text
strategy = geo

[geo.app]
eu = {' '.join(EU)}
us = {' '.join(US)}

[table.app.xs_invoices]
column = tenant_id
type = bigint
strategy = tenant

[table.app.xs_lines]
column = tenant_id
type = bigint
strategy = tenant

[table.app.xs_scratch]
column = id
type = bigint
strategy = hash

[tenants.app]
""" + "".join(f"{t} = {s}\n" for t, s in PINNED_TENANTS.items())

# ---------------------------------------------------------------- schema

# kinds: int2 int4 int8 numeric float text date ts bool uuid
SUMMABLE = {"int2", "int4", "int8", "numeric"}
MINMAXABLE = {"int2", "int4", "int8", "numeric", "float", "text", "date", "ts"}


class Col:
    def __init__(self, name, kind, sqltype, nulls=0.0, group=False):
        self.name, self.kind, self.sqltype = name, kind, sqltype
        self.nulls = nulls      # share of NULLs
        self.group = group      # few distinct values: a good GROUP BY / DISTINCT key


class Table:
    def __init__(self, name, alias, cols, key, uid, nrows, exprs):
        self.name, self.alias = name, alias
        self.cols = {c.name: c for c in cols}
        self.order = [c.name for c in cols]
        self.key = key          # shard key column (None: reference table)
        self.uid = uid          # columns that identify a row (ORDER BY tiebreaker)
        self.nrows = nrows
        # (sql template with {a} for the alias prefix, kind, groupable)
        self.exprs = exprs
        self.rows = []          # filled by make_data: list of tuples in self.order

    def ddl(self):
        body = ", ".join(f"{c} {self.cols[c].sqltype}" for c in self.order)
        return f"create table {self.name} ({body}, primary key ({', '.join(self.uid)}))"

    def column(self, name):
        i = self.order.index(name)
        return [r[i] for r in self.rows]


TABLES = {}


def _table(*args, **kwargs):
    t = Table(*args, **kwargs)
    TABLES[t.name] = t
    return t


ORDERS = _table("xs_orders", "o", [
    Col("id", "int8", "bigint"),
    Col("grp", "int4", "int", 0.05, group=True),
    Col("cat", "text", "text", 0.08, group=True),
    Col("qty", "int4", "int", 0.03),
    Col("big", "int8", "bigint", 0.03),
    Col("sm", "int2", "smallint", 0.05, group=True),
    Col("amt", "numeric", "numeric(12,2)", 0.05),
    Col("val", "numeric", "numeric", 0.05),
    Col("score", "float", "float8", 0.05),
    Col("name", "text", "text", 0.04),
    Col("tag", "text", "varchar(12)", 0.10, group=True),
    Col("d", "date", "date", 0.04),
    Col("ts", "ts", "timestamptz", 0.04),
    Col("flag", "bool", "boolean", 0.05, group=True),
    Col("u", "uuid", "uuid", 0.05),
], key="id", uid=("id",), nrows=15000, exprs=[
    ("abs({a}qty)", "int4", False),
    ("lower({a}cat)", "text", True),
    ("coalesce({a}grp, -1)", "int4", True),
    ("{a}amt * 2", "numeric", False),
    ("{a}qty + {a}sm", "int4", False),
    ("length({a}name)", "int4", True),
    ("extract(year from {a}d)", "numeric", True),
    ("date_trunc('month', {a}ts)", "ts", True),
    ("{a}grp % 5", "int4", True),
    ("{a}val - {a}amt", "numeric", False),
    ("upper({a}tag)", "text", True),
])

ITEMS = _table("xs_items", "i", [
    Col("order_id", "int8", "bigint"),
    Col("item_no", "int4", "int"),
    Col("qty", "int4", "int", 0.02),
    Col("price", "numeric", "numeric(12,2)", 0.04),
    Col("note", "text", "text", 0.3, group=True),
    Col("shipped", "date", "date", 0.1),
], key="order_id", uid=("order_id", "item_no"), nrows=12000, exprs=[
    ("{a}qty * {a}price", "numeric", False),
    ("coalesce({a}note, 'none')", "text", True),
    ("{a}item_no % 3", "int4", True),
])

EVENTS = _table("xs_events", "e", [
    Col("id", "int8", "bigint"),
    Col("grp", "int4", "int", 0.04, group=True),
    Col("kind", "text", "text", 0.05, group=True),
    Col("amount", "numeric", "numeric(12,2)", 0.05),
    Col("weight", "numeric", "numeric", 0.06),
    Col("at", "ts", "timestamptz", 0.03),
    Col("day", "date", "date", 0.03),
    Col("ok", "bool", "boolean", 0.04, group=True),
    Col("n", "int4", "int", 0.02),
    Col("big", "int8", "bigint", 0.05),
    Col("ratio", "float", "float8", 0.05),
], key="id", uid=("id",), nrows=10000, exprs=[
    ("abs({a}n)", "int4", False),
    ("{a}amount + {a}weight", "numeric", False),
    ("extract(month from {a}day)", "numeric", True),
    ("{a}id / 10000", "int8", True),
    ("coalesce({a}kind, '?')", "text", True),
])

SITES = _table("xs_sites", "s", [
    Col("id", "int8", "bigint"),
    Col("country", "text", "text", 0.0, group=True),
    Col("city", "text", "text", 0.05, group=True),
    Col("grp", "int4", "int", 0.05, group=True),
    Col("visits", "int4", "int", 0.03),
    Col("revenue", "numeric", "numeric(12,2)", 0.05),
    Col("rating", "numeric", "numeric", 0.08),
    Col("opened", "date", "date", 0.05),
    Col("active", "bool", "boolean", 0.05, group=True),
    Col("score", "float", "float8", 0.05),
], key="country", uid=("id",), nrows=7000, exprs=[
    ("lower({a}country)", "text", True),
    ("{a}visits / 100", "int4", True),
    ("{a}revenue * {a}visits", "numeric", False),
    ("extract(year from {a}opened)", "numeric", True),
])

INVOICES = _table("xs_invoices", "v", [
    Col("tenant_id", "int8", "bigint"),
    Col("id", "int8", "bigint"),
    Col("grp", "int4", "int", 0.05, group=True),
    Col("total", "numeric", "numeric(12,2)", 0.04),
    Col("qty", "int2", "smallint", 0.03),
    Col("status", "text", "text", 0.05, group=True),
    Col("issued", "date", "date", 0.04),
    Col("paid", "bool", "boolean", 0.06, group=True),
    Col("due", "ts", "timestamptz", 0.05),
], key="tenant_id", uid=("tenant_id", "id"), nrows=6500, exprs=[
    ("{a}total - {a}qty", "numeric", False),
    ("date_trunc('year', {a}issued)", "ts", True),
    ("coalesce({a}status, 'none')", "text", True),
    ("{a}tenant_id % 10", "int8", True),
])

LINES = _table("xs_lines", "l", [
    Col("tenant_id", "int8", "bigint"),
    Col("invoice_id", "int8", "bigint"),
    Col("line", "int4", "int"),
    Col("amount", "numeric", "numeric(12,2)", 0.04),
    Col("sku", "text", "text", 0.05, group=True),
    Col("units", "int8", "bigint", 0.04),
], key="tenant_id", uid=("tenant_id", "invoice_id", "line"), nrows=5500, exprs=[
    ("{a}amount * {a}units", "numeric", False),
    ("left({a}sku, 2)", "text", True),
])

REF = _table("xs_ref", "r", [
    Col("grp", "int4", "int"),
    Col("gname", "text", "text", 0.0, group=True),
    Col("region", "text", "text", 0.15, group=True),
    Col("weight", "numeric", "numeric(6,3)", 0.1),
], key=None, uid=("grp",), nrows=32, exprs=[])

SHARDED = [ORDERS, ITEMS, EVENTS, SITES, INVOICES, LINES]
# Tables with a grp column, joinable with xs_ref on it.
WITH_GRP = [ORDERS, EVENTS, SITES, INVOICES]
TOTAL_ROWS = sum(t.nrows for t in SHARDED)

# ---------------------------------------------------------------- data

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa",
         "Alpha", "BETA", "mu_x", "nu%y"]
STATUSES = ["open", "paid", "void", "late", "draft"]
KINDS = ["click", "view", "buy", "refund", "signup", "Click"]
CITIES = ["Alton", "Berg", "Cruz", "Dorf", "Elm", "Fjord", "Gale", "Hill", "Isle", "Jura"]
EPOCH = datetime.datetime(2015, 1, 1, tzinfo=datetime.timezone.utc)


def _num(rng, lo, hi, scale):
    return Decimal(rng.randint(lo, hi)).scaleb(-scale)


def _plain_numeric(rng):
    """A plain numeric of scale 0..6 whose last fractional digit is not 0, so
    that equal values always print alike: min/max of equal values at
    different scales would return whichever one a scan meets last."""
    scale = rng.choice([0, 0, 1, 2, 2, 3, 4, 6])
    n = rng.randint(-10 ** 7, 10 ** 7)
    if scale and n % 10 == 0:
        n += 1
    return Decimal(n).scaleb(-scale)


def _date(rng):
    return datetime.date(2015, 1, 1) + datetime.timedelta(days=rng.randint(0, 4017))


def _ts(rng):
    micro = rng.choice([0, 0, 0, rng.randint(0, 999999)])
    return EPOCH + datetime.timedelta(seconds=rng.randint(0, 11 * 365 * 86400), microseconds=micro)


def _name(rng):
    word = rng.choice(WORDS)
    return word + "_" + "".join(rng.choice("abcdefghij") for _ in range(rng.randint(0, 3)))


def _null(rng, col, value):
    return None if col.nulls and rng.random() < col.nulls else value


def make_data():
    """Fill every Table's rows (idempotent: the same rows every call)."""
    if ORDERS.rows:
        return
    rng = random.Random(DATA_SEED)

    def fill(table, gen):
        for i in range(table.nrows):
            values = gen(i)
            table.rows.append(tuple(_null(rng, table.cols[c], values[c]) if table.cols[c].nulls
                                    else values[c] for c in table.order))

    order_ids = rng.sample(range(1, 200000), ORDERS.nrows - 4) + [0, -5, -77777, 2 ** 40]
    rng.shuffle(order_ids)
    fill(ORDERS, lambda i: {
        "id": order_ids[i], "grp": rng.randint(-1, 35), "cat": rng.choice(WORDS[:10]),
        "qty": rng.randint(-500, 500), "big": rng.choice([rng.randint(-10 ** 15, 10 ** 15),
                                                          rng.randint(-3, 3) * 10 ** 12]),
        "sm": rng.randint(-20, 20), "amt": _num(rng, -9999999, 9999999, 2),
        "val": _plain_numeric(rng),
        "score": rng.choice([rng.gauss(0, 1000), float(rng.randint(-5, 5)),
                             rng.random() / 1000]),
        "name": _name(rng), "tag": rng.choice(["red", "green", "blue", "x", "", "Y"]),
        "d": _date(rng), "ts": _ts(rng), "flag": rng.random() < 0.4,
        "u": uuid.UUID(int=rng.getrandbits(128))})

    items = set()
    while len(items) < ITEMS.nrows:
        oid = rng.choice(order_ids) if rng.random() < 0.9 else rng.randint(200000, 300000)
        items.add((oid, rng.randint(1, 12)))
    items = sorted(items)
    rng.shuffle(items)
    fill(ITEMS, lambda i: {
        "order_id": items[i][0], "item_no": items[i][1], "qty": rng.randint(-3, 40),
        "price": _num(rng, 0, 500000, 2), "note": rng.choice(["gift", "rush", "fragile", "std"]),
        "shipped": _date(rng)})

    event_ids = rng.sample(range(-20000, 150000), EVENTS.nrows - 3) + \
        [RANGE_SPLIT, RANGE_SPLIT - 1, -2 ** 40]
    event_ids = list(dict.fromkeys(event_ids))
    while len(event_ids) < EVENTS.nrows:
        event_ids.append(rng.randint(150000, 10 ** 9))
        event_ids = list(dict.fromkeys(event_ids))
    rng.shuffle(event_ids)
    fill(EVENTS, lambda i: {
        "id": event_ids[i], "grp": rng.randint(0, 40), "kind": rng.choice(KINDS),
        "amount": _num(rng, -500000, 9999999, 2), "weight": _plain_numeric(rng),
        "at": _ts(rng), "day": _date(rng), "ok": rng.random() < 0.7,
        "n": rng.randint(-1000, 1000), "big": rng.randint(-2 ** 62, 2 ** 62),
        "ratio": rng.choice([rng.uniform(-1, 1), rng.gauss(100, 50), 0.0])})

    site_ids = rng.sample(range(1, 10 ** 6), SITES.nrows)
    fill(SITES, lambda i: {
        "id": site_ids[i], "country": rng.choice(EU + US + ["DE", "US", "FR"]),
        "city": rng.choice(CITIES), "grp": rng.randint(0, 31), "visits": rng.randint(0, 100000),
        "revenue": _num(rng, -100000, 99999999, 2), "rating": _plain_numeric(rng),
        "opened": _date(rng), "active": rng.random() < 0.5, "score": rng.gauss(3, 2)})

    tenants = [42, 42, 42, 7, 7, 0, -3, 2 ** 40] + list(range(100, 400))
    inv = []
    next_id = {}
    for _ in range(INVOICES.nrows):
        t = rng.choice(tenants)
        next_id[t] = next_id.get(t, 0) + rng.randint(1, 3)
        inv.append((t, next_id[t]))
    rng.shuffle(inv)
    fill(INVOICES, lambda i: {
        "tenant_id": inv[i][0], "id": inv[i][1], "grp": rng.randint(0, 33),
        "total": _num(rng, -100000, 5000000, 2), "qty": rng.randint(-50, 300),
        "status": rng.choice(STATUSES), "issued": _date(rng), "paid": rng.random() < 0.5,
        "due": _ts(rng)})

    lines = set()
    while len(lines) < LINES.nrows:
        t, invoice = rng.choice(inv) if rng.random() < 0.92 else (rng.choice(tenants),
                                                                  rng.randint(5000, 6000))
        lines.add((t, invoice, rng.randint(1, 6)))
    lines = sorted(lines)
    rng.shuffle(lines)
    fill(LINES, lambda i: {
        "tenant_id": lines[i][0], "invoice_id": lines[i][1], "line": lines[i][2],
        "amount": _num(rng, -10000, 1000000, 2),
        "sku": rng.choice(["AA1", "AB2", "BX9", "C", "ZZ"]),
        "units": rng.randint(-2, 10 ** 10)})

    fill(REF, lambda i: {
        "grp": i, "gname": f"group-{i:02d}",
        "region": rng.choice(["north", "south", "east", "west"]),
        "weight": _num(rng, -99999, 999999, 3)})


# ---------------------------------------------------------------- literals

def sql_literal(value):
    """VALUE as an SQL literal (for INSERT and for inlined statements)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return f"'{value!r}'"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"'{value.isoformat()}'"
    if isinstance(value, uuid.UUID):
        return f"'{value}'"
    if isinstance(value, list):
        return "'{" + ",".join(str(v) for v in value) + "}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no literal for {value!r}")


def copy_text(value):
    """VALUE in COPY text format (no tabs, newlines or backslashes occur)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    s = str(value)
    assert not any(ch in s for ch in "\t\n\r\\"), s
    return s


def insert_statements(table, max_literals=3000):
    """Multi-row INSERTs with inlined literals, at most MAX_LITERALS
    literals each (pgshard's lexer takes PGS_LEX_MAX_LITERALS = 4096 per
    statement)."""
    cols = ", ".join(table.order)
    rows, nlit = [], 0
    for r in table.rows:
        n = sum(1 for v in r if v is not None and not isinstance(v, bool))
        if rows and nlit + n > max_literals:
            yield _insert(table, cols, rows)
            rows, nlit = [], 0
        rows.append(r)
        nlit += n
    if rows:
        yield _insert(table, cols, rows)


def _insert(table, cols, rows):
    return (f"insert into {table.name} ({cols}) values "
            + ", ".join("(" + ", ".join(sql_literal(v) for v in r) + ")" for r in rows))


# ---------------------------------------------------------------- queries

class Query:
    """One generated read: SQL built from static text and literal values."""

    def __init__(self, category, refuse=None):
        self.category = category   # what kind of read (for the report)
        self.refuse = refuse       # None: mergeable; else the construct pgshard must refuse
        self.parts = []            # str (static SQL) or Lit
        self.compare = "unordered"  # ordered | unordered | keys (see test_cross_shard.py)
        self.key_columns = ()      # compare == "keys": the output columns ORDER BY sorts on
        self.keyed = False         # a condition names shard key values (may run on one shard)

    def add(self, text):
        self.parts.append(text)
        return self

    def lit(self, value, key=False):
        self.parts.append(Lit(value, key))
        return self

    @property
    def sql(self):
        """The statement with every literal inlined (simple protocol)."""
        return "".join(p if isinstance(p, str) else sql_literal(p.value) for p in self.parts)

    def param_sql(self, binary):
        """(statement with %t or %b placeholders, parameters): extended protocol."""
        mark = "%b" if binary else "%t"
        text, params = [], []
        for p in self.parts:
            if isinstance(p, str):
                text.append(p.replace("%", "%%"))
            else:
                text.append(mark)
                params.append(p.param())
        return "".join(text), params

    def __repr__(self):
        return f"Query({self.category}, refuse={self.refuse}, {self.sql!r})"


class Lit:
    def __init__(self, value, key=False):
        self.value = value
        self.key = key

    def param(self):
        v = self.value
        # Shard keys are bound as the column's type (int8), as an application
        # binding a bigint column would; other integers keep psycopg's choice
        # (int2/int4/int8 by magnitude: a LIMIT $1 often arrives as int2).
        if self.key and isinstance(v, int) and not isinstance(v, bool):
            return Int8(v)
        if isinstance(v, list):
            return [Int8(x) for x in v]
        return v


class Gen:
    """The query generator. gen.queries(n) -> n distinct Query objects."""

    def __init__(self, seed=QUERY_SEED):
        make_data()
        self.rng = random.Random(seed)
        self.shard_of = None  # optional {(table, key): shard} for keyed reads

    # -- small pieces --

    def pick(self, seq):
        return self.rng.choice(seq)

    def chance(self, p):
        return self.rng.random() < p

    def sample_value(self, table, col):
        """A value of COL that occurs in TABLE (not NULL when possible)."""
        values = table.column(col)
        for _ in range(20):
            v = self.pick(values)
            if v is not None:
                return v
        return None

    def order_suffix(self):
        r = self.rng.random()
        d = "" if r < 0.35 else (" ASC" if r < 0.55 else " DESC")
        r = self.rng.random()
        n = "" if r < 0.6 else (" NULLS FIRST" if r < 0.8 else " NULLS LAST")
        return d + n

    def count_lit(self, q, n):
        """A LIMIT/OFFSET count: half the time bound as int8, else as psycopg
        picks (int2 for small values)."""
        q.parts.append(_Int8Lit(n) if n is not None and self.chance(0.5) else Lit(n))

    def limit_clause(self, q, bounded=True):
        """LIMIT/OFFSET/FETCH in one of the forms PostgreSQL takes; BOUNDED:
        with a row count, else only an OFFSET (LIMIT ALL / LIMIT NULL)."""
        n = self.pick([0, 1, 3, 5, 10, 10, 20, 20, 20, 50, 50, 100, 250])
        off = self.pick([0, 0, 1, 3, 7, 7, 15, 40, 40, 150, 2000])
        form = self.rng.random()
        if not bounded:
            if form < 0.5:
                q.add(" OFFSET "), self.count_lit(q, off)
            elif form < 0.75:
                q.add(" LIMIT ALL OFFSET "), self.count_lit(q, off)
            else:
                q.add(" LIMIT "), self.count_lit(q, None)
                q.add(" OFFSET "), self.count_lit(q, off)
        elif form < 0.35:
            q.add(" LIMIT "), self.count_lit(q, n)
        elif form < 0.7:
            q.add(" LIMIT "), self.count_lit(q, n)
            q.add(" OFFSET "), self.count_lit(q, off)
        elif form < 0.8:
            q.add(" OFFSET "), self.count_lit(q, off)
            q.add(" LIMIT "), self.count_lit(q, n)
        elif form < 0.9:
            q.add(" FETCH FIRST "), self.count_lit(q, n)
            q.add(" ROWS ONLY")
        else:
            q.add(" OFFSET "), self.count_lit(q, off)
            q.add(" ROWS FETCH NEXT "), self.count_lit(q, n)
            q.add(" ROWS ONLY")

    def narrow_condition(self, table, a):
        """col BETWEEN lo AND hi over 10-300 rows' worth of a column's
        values: keeps reads without a LIMIT small (the test compares every
        value of every row)."""
        cache = self.__dict__.setdefault("_sorted", {})
        if table.name not in cache:
            cache[table.name] = {}
            for c in table.order:
                if table.cols[c].kind in ("int4", "int8", "numeric", "date", "ts", "float"):
                    values = sorted(v for v in table.column(c) if v is not None)
                    if len(set(values)) > table.nrows // 4:
                        cache[table.name][c] = values
        col = self.pick(sorted(cache[table.name]))
        values = cache[table.name][col]
        i = self.rng.randrange(len(values))
        hi = values[min(len(values) - 1, i + self.rng.randint(10, 300))]
        return [f"{a}{col} BETWEEN ", Lit(values[i]), " AND ", Lit(hi)], False

    def condition(self, table, a, keys=True):
        """One condition on TABLE (alias prefix A): (parts, names a shard
        key value). With KEYS false it never constrains the shard key."""
        rng = self.rng
        cols = [c for c in table.cols.values() if keys or c.name != table.key]
        col = self.pick(cols)
        name = a + col.name
        parts = []
        r = rng.random()
        if table.key and keys and r < 0.12:
            # IN list on the shard key, usually spanning shards.
            vals = sorted({self.sample_value(table, table.key)
                           for _ in range(rng.randint(2, 6))}, key=str)
            if table.cols[table.key].kind != "text" and rng.random() < 0.3:
                return [f"{a}{table.key} = ANY(", Lit(vals, key=True), ")"], True
            parts.append(f"{a}{table.key} IN (")
            for i, k in enumerate(vals):
                parts += ([", "] if i else []) + [Lit(k, key=True)]
            return parts + [")"], True
        keyed = col.name == table.key
        if r < 0.22 and col.nulls:
            return [f"{name} IS {'NOT ' if rng.random() < 0.5 else ''}NULL"], False
        if col.kind == "bool":
            if rng.random() < 0.6:
                return [self.pick([f"{name}", f"NOT {name}", f"{name} IS TRUE",
                                   f"{name} IS NOT FALSE"])], False
            return [f"{name} = ", Lit(rng.random() < 0.5)], False
        if col.kind == "uuid":
            v = self.sample_value(table, col.name)
            return [f"{name} {self.pick(['<', '>=', '<>'])} ", Lit(v)], False
        if col.kind == "text":
            if rng.random() < 0.5:
                v = self.sample_value(table, col.name) or "a"
                pat = self.pick([v[:rng.randint(1, 3)] + "%", "%" + v[-2:], "%a%", "_e%", "%\\_%"])
                return [f"{name} {self.pick(['LIKE', 'NOT LIKE'])} ", Lit(pat)], False
            if rng.random() < 0.4:
                vals = sorted({self.sample_value(table, col.name) or "" for _ in range(3)})
                parts.append(f"{name} IN (")
                for i, v in enumerate(vals):
                    parts += ([", "] if i else []) + [Lit(v, key=keyed)]
                return parts + [")"], keyed
        v1 = self.sample_value(table, col.name)
        if rng.random() < 0.4:
            v2 = self.sample_value(table, col.name)
            lo, hi = (v1, v2) if _le(v1, v2) else (v2, v1)
            return [f"{name} BETWEEN ", Lit(lo, key=keyed), " AND ", Lit(hi, key=keyed)], False
        op = self.pick(['<', '<=', '>', '>=', '=', '<>'])
        return [f"{name} {op} ", Lit(v1, key=keyed)], keyed and op == "="

    def where(self, q, table, a, p=0.75, keys=True, narrow=False):
        """Maybe a WHERE clause of 1-3 conditions; with KEYS false none
        constrains the shard key (the read stays on every shard); with
        NARROW one condition keeps the result to a few hundred rows at
        most (before joins)."""
        conds = []
        if self.chance(p):
            n = 1 if narrow else self.pick([1, 1, 1, 2, 2, 3])
            conds = [self.condition(table, a, keys) for _ in range(n)]
        if narrow:
            conds.insert(self.rng.randint(0, len(conds)), self.narrow_condition(table, a))
        if not conds:
            return
        joiner = " OR " if len(conds) == 2 and not narrow and self.chance(0.2) else " AND "
        q.add(" WHERE ")
        for i, (c, keyed) in enumerate(conds):
            q.keyed = q.keyed or keyed
            if i:
                q.add(joiner)
            if joiner == " OR ":
                q.add("(")
            for part in c:
                q.add(part) if isinstance(part, str) else q.parts.append(part)
            if joiner == " OR ":
                q.add(")")

    # -- select lists --

    def column_items(self, table, a, n):
        """N select items over TABLE: (sql, kind, alias, groupable)."""
        items = []
        names = self.rng.sample(table.order, min(n, len(table.order)))
        for name in names:
            col = table.cols[name]
            items.append((a + name, col.kind, None, col.group))
        if table.exprs and self.chance(0.4):
            tmpl, kind, groupable = self.pick(table.exprs)
            items.append((tmpl.format(a=a), kind, f"x{len(items)}", groupable))
        self.rng.shuffle(items)
        return items

    def render_items(self, q, items):
        for i, (sql, _, alias, _) in enumerate(items):
            q.add((", " if i else "") + sql + (f" AS {alias}" if alias else ""))

    def order_term(self, items, sql):
        """How ORDER BY names SQL (an expression): when it is a select item,
        by position, by output name or as itself; else as itself (a column
        the shards must send without the client seeing it)."""
        for i, (isql, _, alias, _) in enumerate(items):
            if isql == sql:
                r = self.rng.random()
                if r < 0.35:
                    return str(i + 1)
                if r < 0.7 and alias:
                    return alias
                return isql
        return sql

    # -- query families --

    def q_rows(self, table=None):
        """Rows of one table: filters, ORDER BY, LIMIT/OFFSET."""
        t = table or self.pick(SHARDED)
        a = ""
        items = self.column_items(t, a, self.rng.randint(1, 5))
        q = Query("rows")
        r = self.rng.random()
        shape = "total" if r < 0.7 else ("ties" if r < 0.85 else "concat")
        limited = shape == "total" and self.chance(0.7)
        bounded = limited and self.chance(0.85)
        q.add("SELECT ")
        self.render_items(q, items)
        q.add(f" FROM {t.name}")
        self.where(q, t, a, narrow=not bounded)
        if shape == "total":
            # A total order: 0-2 keys, then the row's unique columns.
            keys = []
            for _ in range(self.rng.randint(0, 2)):
                if self.chance(0.5):
                    sql, kind, _, _ = self.pick(items)
                else:
                    choices = [(a + c, t.cols[c].kind) for c in t.order] + \
                        [(e.format(a=a), k) for e, k, _ in t.exprs]
                    sql, kind = self.pick(choices)
                keys.append(self.order_term(items, sql) + self.order_suffix())
            keys += [self.order_term(items, a + u) + self.order_suffix() for u in t.uid]
            q.add(" ORDER BY " + ", ".join(keys))
            q.compare = "ordered"
            q.category = "rows-order"
            if limited:
                self.limit_clause(q, bounded)
                q.category = "rows-order-limit"
        elif shape == "ties":
            # ORDER BY selected columns only, no tiebreaker: the order of the
            # key columns is fixed, ties may come in any order.
            n = self.rng.randint(1, min(3, len(items)))
            chosen = self.rng.sample(range(len(items)), n)
            keys = []
            for i in chosen:
                sql, kind, alias, _ = items[i]
                term = self.pick([str(i + 1), alias or sql, sql])
                keys.append(term + self.order_suffix())
            q.add(" ORDER BY " + ", ".join(keys))
            q.compare = "keys"
            q.key_columns = tuple(chosen)
            q.category = "rows-order-ties"
        else:
            q.category = "rows-concat"
        return q

    def agg_items(self, table, a, n):
        """N aggregate select items: (sql, kind)."""
        out = []
        cols = list(table.cols.values())
        for _ in range(n):
            r = self.rng.random()
            if r < 0.2:
                out.append(("count(*)", "int8"))
                continue
            if r < 0.35:
                c = self.pick(cols)
                out.append((f"count({a}{c.name})", "int8"))
                continue
            fn = self.pick(["sum", "min", "max", "avg", "min", "max"])
            allowed = SUMMABLE if fn in ("sum", "avg") else MINMAXABLE
            choices = [(a + c.name, c.kind) for c in cols if c.kind in allowed]
            choices += [(e.format(a=a), k) for e, k, _ in table.exprs if k in allowed]
            arg, kind = self.pick(choices)
            out.append((f"{fn}({arg})", kind))
        return out

    def q_aggregate(self):
        t = self.pick(SHARDED)
        q = Query("aggregate")
        aggs = self.agg_items(t, "", self.rng.randint(1, 5))
        q.add("SELECT " + ", ".join(f"{s} AS a{i}" if self.chance(0.3) else s
                                    for i, (s, _) in enumerate(aggs)))
        q.add(f" FROM {t.name}")
        self.where(q, t, "", p=0.8)
        q.compare = "ordered"
        if self.chance(0.05):
            q.add(" LIMIT ").lit(self.pick([0, 1, 5]))
        return q

    def group_keys(self, table, a):
        choices = [(a + c.name, c.kind) for c in table.cols.values() if c.group]
        choices += [(e.format(a=a), k) for e, k, g in table.exprs if g]
        n = 1 if self.chance(0.55) else 2
        keys = []
        while len(keys) < n:
            k = self.pick(choices)
            if k not in keys:
                keys.append(k)
        return keys

    def q_group(self, table=None):
        t = table or self.pick(SHARDED)
        a = ""
        keys = self.group_keys(t, a)
        aggs = self.agg_items(t, a, self.rng.randint(1, 4))
        q = Query("group")
        # Select items: the keys (one may be left out) and the aggregates.
        shown_keys = list(keys)
        if len(keys) == 2 and self.chance(0.15):
            shown_keys = keys[:1]
        elif len(keys) == 1 and self.chance(0.08):
            shown_keys = []
        items = [(k, kind, None, True) for k, kind in shown_keys] + \
            [(s, kind, f"g{i}" if self.chance(0.3) else None, False)
             for i, (s, kind) in enumerate(aggs)]
        self.rng.shuffle(items)
        q.add("SELECT ")
        self.render_items(q, items)
        q.add(f" FROM {t.name}")
        ordered = self.chance(0.75)
        limited = ordered and self.chance(0.5)
        self.where(q, t, a, p=0.5, narrow=not limited and (len(keys) > 1 or self.chance(0.5)))
        # GROUP BY by name/expression or by position.
        gb = []
        for k, _ in keys:
            pos = next((i for i, it in enumerate(items) if it[0] == k), None)
            gb.append(str(pos + 1) if pos is not None and self.chance(0.4) else k)
        q.add(" GROUP BY " + ", ".join(gb))
        if ordered:
            order = []
            if self.chance(0.45):
                # An aggregate first (selected or not), then every key.
                s, kind = self.pick(aggs + self.agg_items(t, a, 1))
                order.append(self.order_term(items, s) + self.order_suffix())
            order += [self.order_term(items, k) + self.order_suffix() for k, kind in keys]
            q.add(" ORDER BY " + ", ".join(order))
            q.compare = "ordered"
            if limited:
                self.limit_clause(q)
                q.category = "group-order-limit"
            else:
                q.category = "group-order"
        else:
            q.category = "group-concat"
        return q

    def q_distinct(self):
        t = self.pick(SHARDED)
        choices = [(c.name, c.kind) for c in t.cols.values() if c.group]
        choices += [(e.format(a=""), k) for e, k, g in t.exprs if g]
        cols = self.rng.sample(choices, min(len(choices), self.pick([1, 1, 2, 2, 3])))
        q = Query("distinct")
        q.add("SELECT DISTINCT " + ", ".join(c for c, _ in cols) + f" FROM {t.name}")
        ordered = self.chance(0.7)
        limited = ordered and self.chance(0.5)
        self.where(q, t, "", p=0.6, narrow=not limited and len(cols) > 1)
        if ordered:
            items = [(c, k, None, True) for c, k in cols]
            order = [self.order_term(items, c) + self.order_suffix() for c, k in cols]
            self.rng.shuffle(order)
            q.add(" ORDER BY " + ", ".join(order))
            q.compare = "ordered"
            if limited:
                self.limit_clause(q)
                q.category = "distinct-order-limit"
            else:
                q.category = "distinct-order"
        else:
            q.category = "distinct-concat"
        return q

    def q_ref_join(self):
        """A sharded table joined with the reference table."""
        t = self.pick(WITH_GRP)
        a = t.alias + "."
        outer = self.chance(0.3)
        join = (f" FROM {t.name} {t.alias} {'LEFT JOIN' if outer else 'JOIN'} xs_ref r"
                f" ON r.grp = {a}grp")
        q = Query("ref-join")
        if self.chance(0.5):
            items = self.column_items(t, a, self.rng.randint(1, 3)) + \
                [(self.pick(["r.gname", "r.region", "r.weight"]), "text", None, True)]
            q.add("SELECT ")
            self.render_items(q, items)
            q.add(join)
            limited = self.chance(0.6)
            self.where(q, t, a, p=0.7, narrow=not limited)
            keys = []
            if self.chance(0.5):
                keys.append(self.pick(["r.region", "r.gname", "r.weight"]) + self.order_suffix())
            keys += [a + u + self.order_suffix() for u in t.uid]
            q.add(" ORDER BY " + ", ".join(keys))
            q.compare = "ordered"
            if limited:
                self.limit_clause(q)
        else:
            key = self.pick([("r.region", "text"), ("r.gname", "text"), (a + "grp", "int4")])
            aggs = self.agg_items(t, a, self.rng.randint(1, 3))
            if self.chance(0.3):
                aggs.append(self.pick([("sum(r.weight)", "numeric"), ("max(r.gname)", "text"),
                                       ("avg(r.weight)", "numeric")]))
            q.add(f"SELECT {key[0]}, " + ", ".join(s for s, _ in aggs) + join)
            self.where(q, t, a, p=0.5)
            q.add(f" GROUP BY {key[0]}")
            if self.chance(0.8):
                q.add(f" ORDER BY 1{self.order_suffix()}")
                q.compare = "ordered"
        return q

    def q_colocated(self):
        """Two sharded tables joined on their shard keys (same strategy and
        key type: the rows that join are on the same shard)."""
        if self.chance(0.55):
            t1, t2, a1, a2 = ORDERS, ITEMS, "o.", "i."
            on = "i.order_id = o.id"
            uid = ["o.id", "i.item_no"]
            group_choices = [("o.cat", "text"), ("o.flag", "bool"), ("i.note", "text"),
                             ("o.grp", "int4")]
        else:
            t1, t2, a1, a2 = INVOICES, LINES, "v.", "l."
            on = "l.tenant_id = v.tenant_id AND l.invoice_id = v.id"
            uid = ["v.tenant_id", "v.id", "l.line"]
            group_choices = [("v.status", "text"), ("l.sku", "text"), ("v.paid", "bool"),
                             ("v.tenant_id", "int8")]
        outer = self.chance(0.25)
        join = (f" FROM {t1.name} {t1.alias} {'LEFT JOIN' if outer else 'JOIN'} "
                f"{t2.name} {t2.alias} ON {on}")
        q = Query("colocated-join")
        r = self.rng.random()
        if r < 0.45:
            items = self.column_items(t1, a1, self.rng.randint(1, 2)) + \
                self.column_items(t2, a2, self.rng.randint(1, 2))
            q.add("SELECT ")
            self.render_items(q, items)
            q.add(join)
            limited = self.chance(0.6)
            self.where(q, t1, a1, p=0.7, narrow=not limited)
            q.add(" ORDER BY " + ", ".join(u + self.order_suffix() for u in uid))
            q.compare = "ordered"
            if limited:
                self.limit_clause(q)
        elif r < 0.8:
            key = self.pick(group_choices)
            aggs = self.agg_items(t2, a2, self.rng.randint(1, 2)) + \
                self.agg_items(t1, a1, self.rng.randint(0, 2))
            q.add(f"SELECT {key[0]}, " + ", ".join(s for s, _ in aggs) + join)
            self.where(q, t1, a1, p=0.5)
            q.add(f" GROUP BY {key[0]}")
            if self.chance(0.8):
                q.add(f" ORDER BY {key[0]}{self.order_suffix()}")
                q.compare = "ordered"
                if self.chance(0.3):
                    self.limit_clause(q)
        else:
            aggs = self.agg_items(t2, a2, self.rng.randint(1, 3))
            q.add("SELECT " + ", ".join(s for s, _ in aggs) + join)
            self.where(q, t1, a1, p=0.6)
            q.compare = "ordered"
        return q

    def q_three_way(self):
        """xs_orders x xs_items (colocated) x xs_ref."""
        q = Query("colocated-join")
        key = self.pick(["r.region", "r.gname", "o.cat"])
        q.add(f"SELECT {key}, count(*), sum(i.qty), max(i.price), min(o.d) FROM xs_orders o"
              " JOIN xs_items i ON i.order_id = o.id JOIN xs_ref r ON r.grp = o.grp")
        self.where(q, ORDERS, "o.", p=0.5)
        q.add(f" GROUP BY {key} ORDER BY {key}{self.order_suffix()}")
        q.compare = "ordered"
        return q

    def q_ref_subquery(self):
        """A filter by a subquery on the reference table only."""
        t = self.pick(WITH_GRP)
        q = Query("ref-subquery")
        q.add(f"SELECT count(*), sum(grp) FROM {t.name} WHERE grp IN "
              "(SELECT grp FROM xs_ref WHERE region = ").lit(self.pick(["north", "south", "east"]))
        q.add(")")
        q.compare = "ordered"
        return q

    def q_reference(self):
        """The reference table alone: read on one shard."""
        q = Query("reference")
        if self.chance(0.5):
            q.add("SELECT grp, gname, region, weight FROM xs_ref")
            self.where(q, REF, "", p=0.6)
            q.add(" ORDER BY grp" + self.order_suffix())
            q.compare = "ordered"
        else:
            q.add("SELECT region, count(*), sum(weight), avg(weight) FROM xs_ref GROUP BY region"
                  " ORDER BY region NULLS FIRST")
            q.compare = "ordered"
        return q

    def q_keyed(self):
        """A read with one shard key value: runs on one shard, whatever it is
        (window functions and HAVING included: PostgreSQL does them)."""
        t = self.pick(SHARDED)
        key = self.sample_value(t, t.key)
        q = Query("keyed")
        r = self.rng.random()
        if r < 0.4:
            items = self.column_items(t, "", self.rng.randint(1, 4))
            q.add("SELECT ")
            self.render_items(q, items)
            q.add(f" FROM {t.name} WHERE {t.key} = ").lit(key, key=True)
            q.add(" ORDER BY " + ", ".join(t.uid))
        elif r < 0.7:
            q.add(f"SELECT count(*), min({t.uid[-1]}), max({t.uid[-1]}) FROM {t.name}"
                  f" WHERE {t.key} = ").lit(key, key=True)
        else:
            uid = ", ".join(t.uid)
            q.add(f"SELECT {uid}, row_number() OVER (ORDER BY {uid}), count(*) OVER ()"
                  f" FROM {t.name} WHERE {t.key} = ").lit(key, key=True)
            q.add(f" ORDER BY {uid} LIMIT 20")
        q.compare = "ordered"
        q.keyed = True
        return q

    # -- what the shards run differently: HAVING, DISTINCT aggregates, DISTINCT ON --

    def having_condition(self, q, table):
        """One HAVING condition: an aggregate (selected or not) against
        literals of its type."""
        cols = list(table.cols.values())
        r = self.rng.random()
        if r < 0.3:
            q.add(f"count(*) {self.pick(['>', '>=', '<', '<>'])} ")
            q.lit(self.pick([1, 2, 5, 20, 100, 400]))
            return
        if r < 0.6:
            c = self.pick([c for c in cols if c.kind in SUMMABLE])
            fn = self.pick(["sum", "avg", "min", "max"])
            v = self.sample_value(table, c.name)
            lo, hi = sorted([v * self.pick([1, 2, 10, 50]), v * self.pick([-1, 0, 3, 100])])
            if self.chance(0.5):
                q.add(f"{fn}({c.name}) BETWEEN ").lit(lo).add(" AND ").lit(hi)
            else:
                q.add(f"{fn}({c.name}) {self.pick(['>', '<=', '='])} ").lit(hi)
            return
        c = self.pick([c for c in cols if c.kind in MINMAXABLE and c.kind != "float"])
        fn = self.pick(["min", "max"])
        if self.chance(0.2):
            q.add(f"{fn}({c.name}) IS {self.pick(['', 'NOT '])}NULL")
            return
        q.add(f"{fn}({c.name}) {self.pick(['<', '>=', '<>'])} ").lit(self.sample_value(table,
                                                                               c.name))

    def q_pushdown(self):
        t = self.pick(SHARDED)
        keys = self.group_keys(t, "")
        names = ", ".join(k for k, _ in keys)
        r = self.rng.random()
        q = Query("merged-having")
        if r < 0.4:
            aggs = self.agg_items(t, "", self.rng.randint(0, 2))
            q.add(f"SELECT {names}" + "".join(", " + s for s, _ in aggs) + f" FROM {t.name}")
            self.where(q, t, "", p=0.4, keys=False)
            q.add(f" GROUP BY {names} HAVING ")
            n = self.pick([1, 1, 2, 3])
            joiner = self.pick([" AND ", " OR "])
            for i in range(n):
                q.add(joiner if i else "").add("NOT (" if self.chance(0.15) else "(")
                self.having_condition(q, t)
                q.add(")")
        elif r < 0.75:
            q.category = "merged-count-distinct"
            cols = list(t.cols.values())
            c = self.pick(cols)
            fn = "count"
            if c.kind in SUMMABLE and self.chance(0.5):
                fn = self.pick(["sum", "avg", "count"])
            items = [f"{fn}(DISTINCT {c.name})"] + \
                [s for s, _ in self.agg_items(t, "", self.rng.randint(0, 2))]
            self.rng.shuffle(items)
            grouped = self.chance(0.6)
            q.add("SELECT " + (names + ", " if grouped else "") + ", ".join(items))
            q.add(f" FROM {t.name}")
            self.where(q, t, "", p=0.5, keys=False)
            if grouped:
                q.add(f" GROUP BY {names}")
        else:
            q.category = "merged-distinct-on"
            key = keys[0][0]
            items = self.column_items(t, "", self.rng.randint(1, 3))
            q.add(f"SELECT DISTINCT ON ({key}) {key}")
            for sql, _, alias, _ in items:
                q.add(", " + sql + (f" AS {alias}" if alias else ""))
            q.add(f" FROM {t.name}")
            self.where(q, t, "", p=0.5, keys=False)
            order = [key + self.order_suffix()]
            if self.chance(0.5):
                c = self.pick([c for c in t.cols.values() if c.kind in MINMAXABLE])
                order.append(c.name + self.order_suffix())
            order += [u + self.order_suffix() for u in t.uid]
            q.add(" ORDER BY " + ", ".join(order))
            q.compare = "ordered"
            if self.chance(0.4):
                self.limit_clause(q)
            return q
        if q.category != "merged-count-distinct" or grouped:
            q.add(f" ORDER BY {names}")
        q.compare = "ordered"
        return q

    def q_subquery(self):
        """Subqueries and WITH queries that are whole on each shard: a
        derived table or CTE grouped by (or filtering) colocated tables,
        joined on the key, and EXISTS / IN correlated on the key; NOT IN and
        a derived table with LIMIT must be refused."""
        r = self.rng.random()
        q = Query("pushed-subquery")
        lim = self.pick([0, 2, 5, 9])
        if r < 0.2:
            q.add("SELECT count(*), sum(c), max(s) FROM (SELECT order_id, count(*) AS c,"
                  " sum(qty) AS s FROM xs_items WHERE qty > ").lit(lim)
            q.add(" GROUP BY order_id) d WHERE d.c > ").lit(self.pick([0, 1, 2]))
            q.compare = "ordered"
        elif r < 0.35:
            key = self.pick(["o.cat", "o.grp", "o.flag"])
            q.add(f"SELECT {key}, count(*), sum(d.n), max(d.p) FROM xs_orders o JOIN"
                  " (SELECT order_id, count(*) AS n, max(price) AS p FROM xs_items GROUP BY"
                  " order_id) d ON d.order_id = o.id WHERE o.qty > ").lit(self.pick([10, 200]))
            q.add(f" GROUP BY {key} ORDER BY {key} NULLS FIRST")
            q.compare = "ordered"
        elif r < 0.5:
            g = self.pick(["grp", "cat", "sm"])
            q.add(f"WITH f AS (SELECT id, {g}, amt, qty FROM xs_orders WHERE qty > ").lit(
                self.pick([50, 250, 400]))
            q.add(f") SELECT {g}, count(*), sum(amt), avg(qty) FROM f GROUP BY {g}"
                  f" ORDER BY {g} NULLS FIRST")
            q.compare = "ordered"
        elif r < 0.65:
            neg = "NOT " if self.chance(0.4) else ""
            q.add(f"SELECT count(*), sum(o.qty), min(o.id) FROM xs_orders o WHERE {neg}EXISTS"
                  " (SELECT 1 FROM xs_items i WHERE i.order_id = o.id AND i.qty > ").lit(lim)
            q.add(")")
            q.compare = "ordered"
        elif r < 0.78:
            q.add("SELECT o.id, o.cat, o.amt FROM xs_orders o WHERE o.id IN (SELECT order_id"
                  " FROM xs_items WHERE price > ").lit(self.pick([10, 100, 500]))
            q.add(") ORDER BY o.id LIMIT ").lit(self.pick([5, 20, 100]))
            q.compare = "ordered"
        elif r < 0.88:
            q.add("SELECT v.status, count(*), sum(v.total) FROM xs_invoices v WHERE EXISTS"
                  " (SELECT 1 FROM xs_lines l WHERE l.tenant_id = v.tenant_id AND"
                  " l.invoice_id = v.id AND l.units > ").lit(self.pick([1, 3, 5]))
            q.add(") GROUP BY v.status ORDER BY v.status NULLS FIRST")
            q.compare = "ordered"
        elif r < 0.94:
            q.refuse = "not-in-subquery"
            q.add("SELECT count(*) FROM xs_orders o WHERE o.id NOT IN (SELECT order_id FROM"
                  " xs_items WHERE qty > ").lit(lim).add(")")
        else:
            q.refuse = "subquery-with-limit"
            q.add("SELECT count(*), sum(c) FROM (SELECT order_id, count(*) AS c FROM xs_items"
                  " GROUP BY order_id ORDER BY 2 DESC LIMIT ").lit(self.pick([3, 10])).add(") d")
        return q

    # -- constructs that must be refused --

    def q_refuse(self):
        t = self.pick(SHARDED)
        num = [c.name for c in t.cols.values() if c.kind in SUMMABLE]
        grp = [c.name for c in t.cols.values() if c.group]
        n, g = self.pick(num), self.pick(grp)
        u = t.uid[-1]
        kind = self.pick(["window", "having", "string_agg", "other-aggregate", "count-distinct",
                          "aggregate-in-expression", "distinct-on", "set-operation",
                          "subquery", "join-not-on-keys"])
        q = Query("refuse", refuse=kind)
        if kind == "window":
            head, tail = self.pick([
                (f"SELECT {u}, row_number() OVER (ORDER BY {u}) FROM {t.name}", ""),
                (f"SELECT {g}, sum({n}) OVER (PARTITION BY {g}) FROM {t.name}", ""),
                (f"SELECT {u}, rank() OVER (PARTITION BY {g} ORDER BY {n}) FROM {t.name}", ""),
                (f"SELECT {u}, lag({n}) OVER w FROM {t.name}",
                 f" WINDOW w AS (ORDER BY {u})"),
                (f"SELECT {g}, count(*), sum(count(*)) OVER () FROM {t.name}",
                 f" GROUP BY {g}"),
            ])
            q.add(head)
            self.where(q, t, "", p=0.5, keys=False)
            q.add(tail + (f" ORDER BY {u} LIMIT 50" if "GROUP BY" not in tail else ""))
        elif kind == "having":
            # What HAVING still cannot merge: subqueries, aggregates in
            # expressions.
            q.add(f"SELECT {g}, count(*) FROM {t.name}")
            self.where(q, t, "", p=0.4, keys=False)
            q.add(f" GROUP BY {g} HAVING ").add(self.pick([
                "count(*) > (SELECT count(*) FROM xs_ref WHERE grp > ", f"sum({n}) * 2 < (",
                f"min({n}) + 1 >= ("]))
            q.lit(self.pick([1, 5, 50, 0]))
            q.add(f") ORDER BY {g}")
        elif kind == "string_agg":
            c = self.pick([c.name for c in t.cols.values() if c.kind == "text"])
            q.add(self.pick([
                f"SELECT {g}, string_agg({c}, ',' ORDER BY {c}) FROM {t.name}",
                f"SELECT {g}, array_agg({u} ORDER BY {u}) FROM {t.name}",
            ]))
            self.where(q, t, "", p=0.4, keys=False)
            q.add(f" GROUP BY {g} ORDER BY {g}")
        elif kind == "other-aggregate":
            q.add(self.pick([
                f"SELECT stddev({n}) FROM {t.name}",
                f"SELECT bool_or({n} > 0) FROM {t.name}",
                f"SELECT {g}, variance({n}) FROM {t.name} GROUP BY {g}",
                f"SELECT every({n} IS NOT NULL) FROM {t.name}",
                f"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY {n}) FROM {t.name}",
                f"SELECT json_agg({u}) FROM {t.name}",
                f"SELECT bit_or({u}::int8) FROM {t.name}",
            ]))
            if "GROUP BY" not in q.sql:
                self.where(q, t, "", p=0.4, keys=False)
        elif kind == "count-distinct":
            # Beside a constant without GROUP BY, or with an ORDER BY.
            q.add(self.pick([
                f"SELECT 1 AS one, count(DISTINCT {g}) FROM {t.name}",
                f"SELECT count(DISTINCT {n} ORDER BY {n}) FROM {t.name}",
                f"SELECT 'x' AS x, sum(DISTINCT {n}) FROM {t.name}",
            ]))
            if "GROUP BY" not in q.sql:
                self.where(q, t, "", p=0.4, keys=False)
        elif kind == "aggregate-in-expression":
            q.add(self.pick([
                f"SELECT sum({n}) + 1 FROM {t.name}",
                f"SELECT count(*) * 2 FROM {t.name}",
                f"SELECT coalesce(max({n}), 0) FROM {t.name}",
                f"SELECT round(avg({n}), 2) FROM {t.name}",
                f"SELECT max({n}) - min({n}) FROM {t.name}",
                f"SELECT {g}, sum({n}) / count(*) FROM {t.name} GROUP BY {g} ORDER BY {g}",
            ]))
            if "GROUP BY" not in q.sql:
                self.where(q, t, "", p=0.4, keys=False)
        elif kind == "distinct-on":
            # Over groups.
            q.add(f"SELECT DISTINCT ON ({g}) {g}, count(*) FROM {t.name}")
            self.where(q, t, "", p=0.4, keys=False)
            q.add(f" GROUP BY {g} ORDER BY {g}")
        elif kind == "set-operation":
            other = self.pick([x for x in SHARDED if x is not t] + [REF])
            both = "grp" in other.cols and "grp" in t.cols
            tc, oc = ("grp", "grp") if both else (u, other.uid[-1])
            op = self.pick(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"])
            q.add(f"SELECT {tc} FROM {t.name} {op} SELECT {oc} FROM {other.name} ORDER BY 1")
        elif kind == "subquery":
            if "grp" in t.cols:
                other = self.pick([x for x in SHARDED if "grp" in x.cols and x is not t])
                bound = self.sample_value(other, other.uid[-1])
                if self.chance(0.5):
                    q.add(f"SELECT count(*) FROM {t.name} WHERE grp IN (SELECT grp FROM"
                          f" {other.name} WHERE {other.uid[-1]} < ").lit(bound).add(")")
                else:
                    q.add(f"SELECT {u}, (SELECT max(grp) FROM {other.name} WHERE"
                          f" {other.uid[-1]} < ").lit(bound)
                    q.add(f") FROM {t.name} ORDER BY {u} LIMIT 10")
            else:
                q.add(self.pick([
                    f"SELECT count(*) FROM (SELECT {u} FROM {t.name} ORDER BY {u} LIMIT 100) s",
                    f"SELECT max(c) FROM (SELECT {g}, count(*) AS c FROM {t.name} GROUP BY {g}) s",
                    f"SELECT s.* FROM (SELECT {u} FROM {t.name} ORDER BY {u} DESC LIMIT 5) s"
                    f" ORDER BY 1",
                ]))
        else:  # join-not-on-keys
            sql = self.pick([
                "SELECT count(*), sum(e.n) FROM xs_orders o JOIN xs_events e ON e.grp = o.grp"
                " WHERE o.qty > 400",
                "SELECT count(*) FROM xs_orders o JOIN xs_items i ON i.item_no = o.grp"
                " WHERE o.qty > 450",
                "SELECT s.country, count(*) FROM xs_sites s JOIN xs_invoices v ON v.grp = s.grp"
                " WHERE s.visits > 99000 GROUP BY s.country ORDER BY 1",
                "SELECT count(*) FROM xs_invoices v JOIN xs_lines l ON l.invoice_id = v.id"
                " WHERE v.qty > 290",
                "SELECT count(*) FROM xs_orders o JOIN xs_items i ON i.order_id = o.big",
                # On both shard keys, but hash and range place equal keys apart.
                "SELECT o.id, e.id FROM xs_orders o JOIN xs_events e ON e.id = o.id"
                " ORDER BY o.id, e.id",
                "SELECT count(*) FROM xs_items i JOIN xs_events e ON e.id = i.order_id",
            ])
            if "e.id = " in sql:
                q.refuse = "join-not-colocated"
            q.add(sql)
        return q

    FAMILIES = [
        ("q_rows", 28), ("q_aggregate", 14), ("q_group", 20), ("q_distinct", 7),
        ("q_ref_join", 8), ("q_colocated", 8), ("q_three_way", 1), ("q_ref_subquery", 1),
        ("q_reference", 1), ("q_keyed", 4), ("q_refuse", 11), ("q_pushdown", 8),
        ("q_subquery", 6),
    ]

    def one(self):
        names = [n for n, _ in self.FAMILIES]
        weights = [w for _, w in self.FAMILIES]
        return getattr(self, self.rng.choices(names, weights)[0])()

    def queries(self, n):
        seen, out = set(), []
        while len(out) < n:
            q = self.one()
            if q.sql not in seen:
                seen.add(q.sql)
                out.append(q)
        return out


class _Int8Lit(Lit):
    """An integer literal bound as int8 in the extended protocol."""

    def __init__(self, value):
        super().__init__(value, key=True)


def _le(a, b):
    if a is None:
        return True
    if b is None:
        return False
    return a <= b
