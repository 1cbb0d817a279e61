"""Routing through pgshard on a real two-shard cluster (the `shard_lab`).

Shard s0 (region eu) and shard s1 (region us) each have one primary. Every
test starts its own pgshard with the shard map below and checks the outcome
on the shards themselves, over direct connections: a row is where
`pgshardctl route CONFIG app TABLE KEY` (the router code the proxy runs)
says it belongs, and on no other shard. Refusals are checked by SQLSTATE and
by the "pgshard:" prefix of the message (config/DESIGN.md, "Routing
semantics"), and the session must stay usable after each one.

The bulk tests send their keys three ways: simple-protocol statements with
literals (psycopg ClientCursor outside a pipeline), extended-protocol text
parameters (psycopg's default, executemany in a pipeline) and binary int8
parameters (`%b` with psycopg's Int8 wrapper).
"""
import os
import random
import re
import struct
import subprocess

import psycopg
import pytest
from psycopg.types.numeric import Int8

import pgwire
from conftest import PGSHARDCTL

MAP = """\
[table.app.users]
column = id
type = bigint
strategy = hash

[table.app.events]
column = id
type = bigint
strategy = range
range = s0: - 1000000
range = s1: 1000000 -

[table.app.profiles]
column = country
type = text
strategy = geo

[geo.app]
eu = DE FR IT ES NL PL
us = US CA MX

[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant

[tenants.app]
42 = s1
"""

EU = ["DE", "FR", "IT", "ES", "NL", "PL"]
US = ["US", "CA", "MX"]
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1

# table -> (shard key column, unique row id column, CREATE TABLE body)
TABLES = {
    "users": ("id", "id", "id bigint primary key, v text not null"),
    "events": ("id", "id", "id bigint primary key, v text not null"),
    "profiles": ("country", "id", "id bigint primary key, country text not null, v text not null"),
    "invoices": ("tenant_id", "id",
                 "tenant_id bigint not null, id bigint not null, v text not null,"
                 " primary key (tenant_id, id)"),
}
ROWS_PER_STRATEGY = 10200  # a third each by simple, extended text and binary


# ---------------------------------------------------------------- helpers

@pytest.fixture
def tables(shard_lab):
    """The four sharded tables, empty, created directly on both shards."""
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            for table, (_, _, body) in TABLES.items():
                conn.execute(f"drop table if exists {table}")
                conn.execute(f"create table {table} ({body})")
    return shard_lab


@pytest.fixture
def px(sharded_proxy):
    """A pgshard on the two shards with MAP and the default policies."""
    return sharded_proxy(extra_ini=MAP)


def route_many(config, table, keys):
    """The shard `pgshardctl route --stdin` names for each key (text form),
    or "ERROR <sqlstate> ..." for a key it refuses."""
    keys = list(keys)
    proc = subprocess.run([str(PGSHARDCTL), "route", "--stdin", str(config), "app", table],
                          input="".join(k + "\n" for k in keys), capture_output=True,
                          text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(keys), f"pgshardctl route: {proc.stderr}"
    out = []
    for key, line in zip(keys, lines):
        assert line.startswith(key + "\t"), (key, line)
        out.append(line[len(key) + 1:])
    return out


def route_one(config, table, key):
    return route_many(config, table, [str(key)])[0]


def keys_on(config, table, shard, candidates, n):
    """The first N of CANDIDATES (ints) that route to SHARD."""
    candidates = list(candidates)
    routed = route_many(config, table, [str(c) for c in candidates])
    picked = [c for c, s in zip(candidates, routed) if s == shard][:n]
    assert len(picked) == n, f"not {n} keys of {table} on {shard} among {len(candidates)}"
    return picked


def rows_on_shards(lab, table, key_col, id_col):
    """{row id: [(shard, key as text, v)]} read directly from every shard."""
    found = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            for row_id, key, v in conn.execute(
                    f"select {id_col}, {key_col}::text, v from {table}"):
                found.setdefault(row_id, []).append((shard.name, key, v))
    return found


def placement_problems(lab, config, table, expected):
    """Every way the rows of TABLE on the shards differ from EXPECTED
    ({row id: (key text, v)}): rows missing or unexpected, rows on more than
    one shard, rows on a shard other than the one `pgshardctl route` names,
    wrong values, counts that do not add up. Returns (problems, per-shard
    counts)."""
    key_col, id_col, _ = TABLES[table]
    found = rows_on_shards(lab, table, key_col, id_col)
    problems = []
    missing = sorted(set(expected) - set(found))
    if missing:
        problems.append(f"{len(missing)} rows on no shard, e.g. ids {missing[:5]}")
    extra = sorted(set(found) - set(expected))
    if extra:
        problems.append(f"{len(extra)} rows never inserted, e.g. ids {extra[:5]}")
    twice = {i: places for i, places in found.items() if len(places) > 1}
    if twice:
        problems.append(f"{len(twice)} rows on several shards, e.g. "
                        f"{sorted(twice.items())[:3]}")
    keys = sorted({key for places in found.values() for _, key, _ in places})
    routes = dict(zip(keys, route_many(config, table, keys)))
    misplaced = [(i, shard, key, routes[key]) for i, places in found.items()
                 for shard, key, _ in places if routes[key] != shard]
    if misplaced:
        problems.append(f"{len(misplaced)} rows on the wrong shard (id, on, key, belongs on), "
                        f"e.g. {sorted(misplaced)[:5]}")
    wrong = [(i, places[0][1:], expected[i]) for i, places in found.items()
             if i in expected and places[0][1:] != expected[i]]
    if wrong:
        problems.append(f"{len(wrong)} rows with other values (id, found, inserted), "
                        f"e.g. {sorted(wrong)[:5]}")
    counts = {s.name: 0 for s in lab.shards}
    for places in found.values():
        for shard, _, _ in places:
            counts[shard] += 1
    if sum(counts.values()) != len(expected):
        problems.append(f"shard counts {counts} add up to {sum(counts.values())}, "
                        f"not {len(expected)}")
    return problems, counts


def count_on(lab, shard, sql):
    with lab.connect_primary(shard) as conn:
        return conn.execute(sql).fetchone()[0]


def assert_refused(exc_info, sqlstate):
    err = exc_info.value
    assert err.sqlstate == sqlstate, f"SQLSTATE {err.sqlstate}, not {sqlstate}: {err}"
    message = err.diag.message_primary or ""
    assert message.startswith("pgshard:"), f"message not from pgshard: {message!r}"
    return message


def assert_usable(conn, lab=None, shard=None):
    """CONN answers; with SHARD, a keyless statement runs on that shard."""
    assert conn.execute("select 41 + 1").fetchone()[0] == 42
    if shard is not None:
        port = conn.execute("select inet_server_port()").fetchone()[0]
        assert port == lab.shard(shard).primary_port, f"ran on port {port}, not {shard}"


def insert_direct(lab, shard, table, rows):
    """Insert ROWS (tuples in TABLES column order) directly on SHARD."""
    with lab.connect_primary(shard) as conn:
        with conn.cursor() as cur:
            ncols = len(rows[0])
            cur.executemany(f"insert into {table} values ({', '.join(['%s'] * ncols)})", rows)


PSQL_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
PSQL_ENV["PGCONNECT_TIMEOUT"] = "10"


def psql(px, *args):
    return subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", px.conninfo(),
                           *args], capture_output=True, text=True, timeout=60,
                          env=PSQL_ENV)


# ---------------------------------------------------------------- the oracle

def test_placement_check_catches_misplaced_rows(tables, tmp_path):
    """The placement check is the oracle of the bulk tests: rows put directly
    where `pgshardctl route` says pass it; a row on the wrong shard, a row on
    both shards or a missing row fail it. (Needs no proxy.)"""
    lab = tables
    config = tmp_path / "map.ini"
    config.write_text("\n".join(["[user.app]", "password = x", "[database.app]"]
                                + lab.shard_sections() + ["", MAP]))
    keys = list(range(1, 201)) + [1000000, 999999, -5]
    routed = route_many(config, "users", [str(k) for k in keys])
    assert set(routed) == {"s0", "s1"}
    expected = {k: (str(k), f"v{k}") for k in keys}
    for shard in ("s0", "s1"):
        insert_direct(lab, shard, "users",
                      [(k, f"v{k}") for k, s in zip(keys, routed) if s == shard])
    problems, counts = placement_problems(lab, config, "users", expected)
    assert problems == [] and counts["s0"] > 0 and counts["s1"] > 0, problems

    on_s0 = keys[routed.index("s0")]
    on_s1 = keys[routed.index("s1")]
    with lab.connect_primary("s1") as conn:  # a row on the other shard as well
        conn.execute("insert into users values (%s, %s)", (on_s0, f"v{on_s0}"))
    problems, _ = placement_problems(lab, config, "users", expected)
    assert any("several shards" in p for p in problems), problems
    assert any("wrong shard" in p for p in problems), problems
    with lab.connect_primary("s0") as conn:  # moved: only on the wrong shard
        conn.execute("delete from users where id = %s", (on_s0,))
    problems, _ = placement_problems(lab, config, "users", expected)
    assert any("wrong shard" in p for p in problems) and not any("several" in p for p in problems)
    with lab.connect_primary("s1") as conn:
        conn.execute("delete from users where id in (%s, %s)", (on_s0, on_s1))
    problems, _ = placement_problems(lab, config, "users", expected)
    assert any("on no shard" in p for p in problems), problems


# ---------------------------------------------------------------- DDL

def test_ddl_reaches_every_shard(shard_lab, px):
    lab = shard_lab
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists ddl_ext, ddl_simple")
    with px.connect(autocommit=True) as conn:
        # binary=True makes psycopg use the extended protocol (Parse/Bind/Execute).
        conn.execute("create table ddl_ext (id bigint primary key, v text)", binary=True)
    res = psql(px, "-c", "create table ddl_simple (id bigint primary key, note text)")
    assert res.returncode == 0, res.stderr
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            cols = conn.execute(
                "select table_name, string_agg(column_name, ',' order by ordinal_position)"
                " from information_schema.columns where table_name in ('ddl_ext', 'ddl_simple')"
                " group by 1 order by 1").fetchall()
            assert cols == [("ddl_ext", "id,v"), ("ddl_simple", "id,note")], (shard.name, cols)
    res = psql(px, "-c", "drop table ddl_simple")
    assert res.returncode == 0, res.stderr
    with px.connect(autocommit=True) as conn:
        conn.execute("alter table ddl_ext add column extra int", binary=True)
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            assert conn.execute("select to_regclass('ddl_simple')").fetchone()[0] is None
            assert conn.execute("select count(*) from information_schema.columns where"
                                " table_name = 'ddl_ext' and column_name = 'extra'"
                                ).fetchone()[0] == 1, shard.name
            conn.execute("drop table ddl_ext")


# ---------------------------------------------------------------- bulk routing

def make_rows(strategy, rng, n):
    """{row id: (key, v)} for N rows of STRATEGY's table (key: int or str)."""
    if strategy in ("hash", "range"):
        table = "users" if strategy == "hash" else "events"
        if strategy == "hash":
            keys = {0, 1, -1, 42, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1}
            while len(keys) < n:
                keys.add(rng.randint(-2 ** 62, 2 ** 62) if rng.random() < 0.5
                         else rng.randint(-100000, 100000))
        else:
            keys = {999999, 1000000, 1000001, 999998, 0, -1, INT64_MIN, INT64_MAX}
            while len(keys) < n:
                keys.add(rng.randint(-200000, 2200000) if rng.random() < 0.9
                         else rng.randint(INT64_MIN, INT64_MAX))
        keys = sorted(keys)
        rng.shuffle(keys)
        return {k: (k, f"{table}-{k}") for k in keys}
    if strategy == "geo":
        return {i: (rng.choice(EU + US), f"profile-{i}") for i in range(1, n + 1)}
    if strategy == "tenant":
        tenants = [42, 42, 42, 7, 0, -3, 2 ** 40] + list(range(100, 400))
        return {i: (rng.choice(tenants), f"invoice-{i}") for i in range(1, n + 1)}
    raise ValueError(strategy)


STRATEGIES = {"hash": "users", "range": "events", "geo": "profiles", "tenant": "invoices"}


def insert_sql(table, placeholder):
    key_col, id_col, _ = TABLES[table]
    if key_col == id_col:
        return f"insert into {table} ({key_col}, v) values ({placeholder}, {placeholder})"
    return (f"insert into {table} ({id_col}, {key_col}, v) "
            f"values ({placeholder}, {placeholder}, {placeholder})")


def params(table, row_id, key, v, binary):
    """The parameters of insert_sql for one row; binary ints as int8."""
    key_col, id_col, _ = TABLES[table]
    wrap = Int8 if binary else (lambda x: x)
    key = wrap(key) if isinstance(key, int) else key
    if key_col == id_col:
        return (key, v)
    return (wrap(row_id), key, v)


def select_sql(table, placeholder):
    key_col, id_col, _ = TABLES[table]
    if key_col == id_col:
        return f"select {key_col}::text, v from {table} where {key_col} = {placeholder}"
    return (f"select {key_col}::text, v from {table} "
            f"where {key_col} = {placeholder} and {id_col} = {placeholder}")


def select_params(table, row_id, key, binary):
    key_col, id_col, _ = TABLES[table]
    wrap = Int8 if binary else (lambda x: x)
    key = wrap(key) if isinstance(key, int) else key
    return (key,) if key_col == id_col else (key, wrap(row_id))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_bulk_inserts_land_on_their_shard(tables, px, strategy):
    """>= 10 000 rows through pgshard, a third by each protocol path; then
    each is on the shard `pgshardctl route` names and on no other, and reads
    by key through pgshard return a sample of them."""
    lab = tables
    table = STRATEGIES[strategy]
    rng = random.Random(f"bulk-{strategy}")
    rows = make_rows(strategy, rng, ROWS_PER_STRATEGY)
    items = list(rows.items())
    simple, text, binary = items[0::3], items[1::3], items[2::3]
    with px.connect(autocommit=True) as conn:
        # (a) simple protocol: a client-side cursor outside a pipeline sends
        # one Query message per statement, the values as literals.
        cur = psycopg.ClientCursor(conn)
        sql = insert_sql(table, "%s")
        for row_id, (key, v) in simple:
            cur.execute(sql, params(table, row_id, key, v, False))
            assert cur.rowcount == 1
        # (b) extended protocol, text parameters (executemany pipelines them).
        with conn.cursor() as cur:
            cur.executemany(sql, [params(table, i, k, v, False) for i, (k, v) in text])
        # (c) extended protocol, binary parameters: keys as binary int8.
        with conn.cursor() as cur:
            cur.executemany(insert_sql(table, "%b"),
                            [params(table, i, k, v, True) for i, (k, v) in binary])
    expected = {i: (str(k), v) for i, (k, v) in items}
    problems, counts = placement_problems(lab, px.config_path, table, expected)
    assert not problems, "\n".join(problems)
    assert counts["s0"] > 0 and counts["s1"] > 0, counts
    if strategy == "geo":
        assert count_on(lab, "s0", "select count(*) from profiles where country not in "
                        "('DE','FR','IT','ES','NL','PL')") == 0
        assert count_on(lab, "s1", "select count(*) from profiles where country not in "
                        "('US','CA','MX')") == 0
    if strategy == "tenant":
        assert count_on(lab, "s0", "select count(*) from invoices where tenant_id = 42") == 0
        assert count_on(lab, "s1", "select count(*) from invoices where tenant_id = 42") == sum(
            1 for k, _ in rows.values() if k == 42)
    if strategy == "range":
        assert count_on(lab, "s0", "select count(*) from events where id >= 1000000") == 0
        assert count_on(lab, "s1", "select count(*) from events where id < 1000000") == 0

    # Reads by key through pgshard: 300 rows, each by one of the three paths.
    sample = rng.sample(items, 300)
    with px.connect(autocommit=True) as conn:
        ccur = psycopg.ClientCursor(conn)
        cur = conn.cursor()
        for n, (row_id, (key, v)) in enumerate(sample):
            mode = n % 3
            if mode == 0:
                ccur.execute(select_sql(table, "%s"), select_params(table, row_id, key, False))
                got = ccur.fetchall()
            else:
                binary_ = mode == 2
                cur.execute(select_sql(table, "%b" if binary_ else "%s"),
                            select_params(table, row_id, key, binary_))
                got = cur.fetchall()
            assert got == [(str(key), v)], (["simple", "text", "binary"][mode], row_id, got)


# ---------------------------------------------------------------- multi-row INSERT

def multi_row_insert(keys):
    return "insert into users (id, v) values " + ", ".join(f"({k}, 'multi-{k}')" for k in keys)


def test_multi_row_insert_across_shards_allowed(tables, sharded_proxy):
    lab = tables
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    keys = (keys_on(px.config_path, "users", "s0", range(1, 200), 3)
            + keys_on(px.config_path, "users", "s1", range(1, 200), 4))
    random.Random(3).shuffle(keys)
    with px.connect(autocommit=True) as conn:
        cur = conn.execute(multi_row_insert(keys))  # no parameters: simple protocol
        assert cur.statusmessage == f"INSERT 0 {len(keys)}"
        assert cur.rowcount == len(keys)
        assert_usable(conn)
    problems, counts = placement_problems(lab, px.config_path, "users",
                                          {k: (str(k), f"multi-{k}") for k in keys})
    assert not problems, "\n".join(problems)
    assert counts == {"s0": 3, "s1": 4}


def test_multi_row_insert_across_shards_denied(tables, px):
    lab = tables
    s0 = keys_on(px.config_path, "users", "s0", range(1, 200), 3)
    s1 = keys_on(px.config_path, "users", "s1", range(1, 200), 3)
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(multi_row_insert(s0[:2] + s1[:2]))
        assert_refused(exc, "0A000")
        assert_usable(conn)
        # Rows all on one shard are one shard's statement: not cross-shard.
        cur = conn.execute(multi_row_insert(s1))
        assert cur.statusmessage == f"INSERT 0 {len(s1)}"
    assert count_on(lab, "s0", "select count(*) from users") == 0
    assert count_on(lab, "s1", "select array_agg(id order by id) from users") == sorted(s1)


def test_multi_row_insert_extended_split(tables, sharded_proxy):
    """The same multi-row INSERT with parameters (extended protocol, as
    pgJDBC's reWriteBatchedInserts sends it): each shard is bound its own
    rows, their parameters numbered afresh; text and binary values, NULLs,
    literals among the parameters, a literal that looks like one."""
    lab = tables
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="allow")
    keys = (keys_on(px.config_path, "users", "s0", range(300, 600), 4)
            + keys_on(px.config_path, "users", "s1", range(300, 600), 5))
    random.Random(5).shuffle(keys)
    expected = {}
    with px.connect(autocommit=True) as conn:
        # Every other row's value is a literal (one says '$1'), the rest %s.
        rows, params = [], []
        for i, k in enumerate(keys):
            if i % 3 == 0:
                rows.append(f"({k}, '$1 multi-{k}')")
                expected[k] = (str(k), f"$1 multi-{k}")
            elif i % 3 == 1:
                rows.append("(%b, %s)")
                params += [Int8(k), f"bin-{k}"]
                expected[k] = (str(k), f"bin-{k}")
            else:
                rows.append("(%s, coalesce(%s, 'null-' || %s))")
                params += [k, None, k]
                expected[k] = (str(k), f"null-{k}")
        cur = conn.execute("insert into users (id, v) values " + ", ".join(rows), params)
        assert cur.statusmessage == f"INSERT 0 {len(keys)}"
        # A write on both shards in the extended protocol: its count is both
        # shards' (the Sync, planned while the last part ran, once reset it).
        cur = conn.execute("update users set v = v where id = any(%s)", (keys,))
        assert (cur.statusmessage, cur.rowcount) == (f"UPDATE {len(keys)}", len(keys))
        # Prepared once, bound again with rows spread otherwise, RETURNING.
        more = (keys_on(px.config_path, "users", "s0", range(600, 900), 2)
                + keys_on(px.config_path, "users", "s1", range(600, 900), 2))
        sql = "insert into users (id, v) values (%s, %s), (%s, %s) returning id"
        got = []
        for a, b in ((more[0], more[2]), (more[1], more[3])):
            cur = conn.execute(sql, (a, f"p-{a}", b, f"p-{b}"), prepare=True)
            got += [r[0] for r in cur.fetchall()]
            expected[a], expected[b] = (str(a), f"p-{a}"), (str(b), f"p-{b}")
        assert sorted(got) == sorted(more)
        assert_usable(conn)
        # Inside a transaction: both shards' parts commit with it.
        a = keys_on(px.config_path, "users", "s0", range(900, 1000), 1)[0]
        b = keys_on(px.config_path, "users", "s1", range(900, 1000), 1)[0]
        with conn.transaction():
            conn.execute("insert into users (id, v) values (%s, %s), (%s, %s)", (a, "tx", b, "tx"))
            expected[a], expected[b] = (str(a), "tx"), (str(b), "tx")
    problems, counts = placement_problems(lab, px.config_path, "users", expected)
    assert not problems, "\n".join(problems)
    assert sum(counts.values()) == len(expected)


def test_multi_row_insert_extended_split_2pc(tables, sharded_proxy):
    """Under cross_shard_writes = 2pc the split is a transaction's (its
    COMMIT prepares both shards); outside one it is refused, nothing
    written."""
    lab = tables
    px = sharded_proxy(extra_ini=MAP, cross_shard_writes="2pc")
    a = keys_on(px.config_path, "users", "s0", range(1000, 1100), 1)[0]
    b = keys_on(px.config_path, "users", "s1", range(1000, 1100), 1)[0]
    sql = "insert into users (id, v) values (%s, %s), (%s, %s)"
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(sql, (a, "auto", b, "auto"))
        assert_refused(exc, "0A000")
        assert_usable(conn)
        with conn.transaction():
            cur = conn.execute(sql, (a, "2pc", b, "2pc"))
            assert cur.statusmessage == "INSERT 0 2"
    problems, counts = placement_problems(lab, px.config_path, "users",
                                          {a: (str(a), "2pc"), b: (str(b), "2pc")})
    assert not problems, "\n".join(problems)
    assert counts == {"s0": 1, "s1": 1}


# ---------------------------------------------------------------- tenant sessions

def test_tenant_session(tables, px):
    lab = tables
    other = keys_on(px.config_path, "invoices", "s0", range(1, 100), 1)[0]  # a tenant on s0
    assert route_one(px.config_path, "invoices", 42) == "s1"

    # Tenant from the startup packet.
    with px.connect(autocommit=True, options="-c pgshard.tenant=42") as conn:
        assert_usable(conn, lab, "s1")
        conn.execute("insert into invoices (tenant_id, id, v) values (%s, %s, %s)",
                     (42, 1, "startup"))
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select v from invoices where tenant_id = %s", (other,))
        assert_refused(exc, "42501")
        assert_usable(conn, lab, "s1")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"insert into invoices (tenant_id, id, v) values ({other}, 2, 'x')")
        assert_refused(exc, "42501")
        assert_usable(conn, lab, "s1")
        # A keyless statement runs on the tenant's shard only.
        insert_direct(lab, "s0", "invoices", [(other, 3, "s0 row")])
        assert conn.execute("select count(*) from invoices").fetchone()[0] == 1
        assert conn.execute("select v from invoices where tenant_id = 42").fetchall() == [
            ("startup",)]
    assert count_on(lab, "s1", "select array_agg(id) from invoices") == [1]
    assert count_on(lab, "s0", "select array_agg(id) from invoices") == [3]

    # Tenant from SET, in the same kind of session; then another tenant.
    with px.connect(autocommit=True) as conn:
        conn.execute("set pgshard.tenant = '42'")
        assert_usable(conn, lab, "s1")
        conn.execute("insert into invoices (tenant_id, id, v) values (%b, %b, %b)",
                     (Int8(42), Int8(4), "set"))
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"select v from invoices where tenant_id = {other}")
        assert_refused(exc, "42501")
        assert_usable(conn, lab, "s1")
        conn.execute(f"set pgshard.tenant = '{other}'")
        assert_usable(conn, lab, "s0")
        assert conn.execute("select v from invoices").fetchall() == [("s0 row",)]
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select v from invoices where tenant_id = 42")
        assert_refused(exc, "42501")
        assert_usable(conn, lab, "s0")
    assert count_on(lab, "s1", "select array_agg(id order by id) from invoices") == [1, 4]
    assert count_on(lab, "s0", "select count(*) from invoices") == 1


# ---------------------------------------------------------------- refusals

def test_geo_value_in_no_region_refused(tables, px):
    lab = tables
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("insert into profiles (id, country, v) values (1, 'BR', 'x')")
        assert_refused(exc, "22023")
        assert_usable(conn)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("insert into profiles (id, country, v) values (%s, %s, %s)",
                         (2, "JP", "y"))
        assert_refused(exc, "22023")
        assert_usable(conn)
        conn.execute("insert into profiles (id, country, v) values (%s, %s, %s)", (3, "FR", "z"))
    for shard in ("s0", "s1"):
        assert count_on(lab, shard, "select count(*) from profiles where id in (1, 2)") == 0
    assert count_on(lab, "s0", "select array_agg(country) from profiles") == ["FR"]


def bind_error(conn, sql, type_oid, value):
    """Parse SQL with one parameter of TYPE_OID, Bind VALUE in binary,
    Execute, Sync: the ErrorResponse fields (None when none came)."""
    conn.send(pgwire.message("P", b"\0" + sql.encode() + b"\0" + struct.pack("!hI", 1, type_oid))
              + pgwire.message("B", b"\0\0" + struct.pack("!hh", 1, 1) + struct.pack("!h", 1)
                               + struct.pack("!i", len(value)) + value + struct.pack("!h", 0))
              + pgwire.message("E", b"\0" + struct.pack("!i", 0)) + pgwire.message("S"))
    fields = None
    while True:
        kind, payload = conn.read_message()
        if kind == "E":
            fields = pgwire.parse_error_fields(payload)
        elif kind == "Z":
            return fields


def test_bad_key_values_refused(tables, px):
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select v from users where id = 'abc'")
        assert_refused(exc, "22P02")
        assert_usable(conn)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select v from users where id = %s", ("abc",))
        assert_refused(exc, "22P02")
        assert_usable(conn)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("insert into users (id, v) values (99999999999999999999, 'x')")
        assert_refused(exc, "22003")
        assert_usable(conn)
    with px.raw() as raw:
        raw.login()
        for value in (b"\1" * 4, b"\1" * 9):  # int8 is 8 bytes
            fields = bind_error(raw, "select v from users where id = $1", 20, value)
            assert fields is not None, f"binary int8 of {len(value)} bytes accepted"
            assert fields["C"] in ("22P03", "08P01"), fields
            assert fields["M"].startswith("pgshard:"), fields
            assert raw.simple_query("select 41 + 1") == [["42"]]
    for shard in ("s0", "s1"):
        assert count_on(tables, shard, "select count(*) from users") == 0


def test_keyless_read_and_key_update_refused(tables, sharded_proxy):
    lab = tables
    # cross_shard_reads = deny: refused now and after merged reads land.
    px = sharded_proxy(extra_ini=MAP, cross_shard_reads="deny")
    key = keys_on(px.config_path, "users", "s1", range(1, 100), 1)[0]
    insert_direct(lab, "s1", "users", [(key, "keep")])
    with px.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select count(*) from users")
        message = assert_refused(exc, "0A000")
        assert re.search(r"\busers\b", message) and re.search(r"\bid\b", message), message
        assert_usable(conn)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("select v from users where v = %s", ("keep",))
        assert_refused(exc, "0A000")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(f"update users set id = {key + 1000} where id = {key}")
        assert_refused(exc, "0A000")
        assert_usable(conn)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("update users set id = %s, v = 'moved' where id = %s", (key + 1, key))
        assert_refused(exc, "0A000")
        assert_usable(conn)
        # With the key, the read works.
        assert conn.execute("select v from users where id = %s", (key,)).fetchall() == [("keep",)]
    assert count_on(lab, "s1", "select array_agg(id::text || v) from users") == [f"{key}keep"]
    assert count_on(lab, "s0", "select count(*) from users") == 0


# ---------------------------------------------------------------- hints

def test_shard_hints(tables, px):
    lab = tables
    s0 = keys_on(px.config_path, "users", "s0", range(1, 200), 3)
    s1 = keys_on(px.config_path, "users", "s1", range(1, 200), 5)
    insert_direct(lab, "s0", "users", [(k, "s0") for k in s0])
    insert_direct(lab, "s1", "users", [(k, "s1") for k in s1])
    ports = {s.name: s.primary_port for s in lab.shards}
    with px.connect(autocommit=True) as conn:
        for shard, n in (("s1", 5), ("s0", 3), ("s1", 5)):
            hint = f"/* pgshard: shard={shard} */ "
            assert conn.execute(hint + "select inet_server_port()").fetchone()[0] == ports[shard]
            assert conn.execute(hint + "select inet_server_port(), %s::int",
                                (7,)).fetchone() == (ports[shard], 7)
            # A keyless read of a sharded table, on the hinted shard only.
            assert conn.execute(hint + "select count(*) from users").fetchone()[0] == n
            assert conn.execute(hint + "select count(*), min(v), max(v) from users where v <> %s",
                                ("",)).fetchone() == (n, shard, shard)
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("/* pgshard: shard=s9 */ select 1")
        assert_refused(exc, "22023")
        assert_usable(conn)

        for shard, n in (("s1", 5), ("s0", 3)):
            conn.execute(f"set pgshard.shard = '{shard}'")
            assert conn.execute("select inet_server_port()").fetchone()[0] == ports[shard]
            assert conn.execute("select count(*) from users").fetchone()[0] == n
            assert conn.execute("select count(*) from users where v = %s",
                                (shard,)).fetchone()[0] == n
        with pytest.raises(psycopg.Error) as exc:
            conn.execute("set pgshard.shard = 's9'")
        assert_refused(exc, "22023")
        assert conn.execute("select inet_server_port()").fetchone()[0] == ports["s0"]


# ---------------------------------------------------------------- transactions

def test_transactions_on_one_shard(tables, px):
    lab = tables
    a, b, c, d, e = keys_on(px.config_path, "users", "s0", range(1, 300), 5)
    s1key = keys_on(px.config_path, "users", "s1", range(1, 300), 1)[0]
    ins = "insert into users (id, v) values (%s, %s)"
    with px.connect() as conn:
        with conn.transaction():
            conn.execute(ins, (a, "tx"))
            conn.execute(f"insert into users (id, v) values ({b}, 'tx')")
            assert count_on(lab, "s0", "select count(*) from users") == 0  # not yet committed
        assert count_on(lab, "s0", "select array_agg(id order by id) from users") == sorted([a, b])

        conn.execute(ins, (c, "rolled back"))
        conn.rollback()
        assert count_on(lab, "s0", f"select count(*) from users where id = {c}") == 0

        conn.execute(ins, (d, "first write"))
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(ins, (s1key, "second shard"))
        assert_refused(exc, "0A000")
        conn.rollback()
        with conn.transaction():
            conn.execute(ins, (e, "after"))
    for shard in ("s0", "s1"):
        assert count_on(lab, shard, f"select count(*) from users where id in ({d}, {s1key})") == 0
    assert count_on(lab, "s0", "select array_agg(id order by id) from users") == sorted([a, b, e])
    assert count_on(lab, "s1", "select count(*) from users") == 0


# ---------------------------------------------------------------- reference tables

def test_reference_table_written_everywhere(shard_lab, px):
    lab = shard_lab
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists ref_plans")
            conn.execute("create table ref_plans (code text primary key, name text not null)")
    with px.connect(autocommit=True) as conn:
        conn.execute("insert into ref_plans (code, name) values ('gold', 'Gold')")
        conn.execute("insert into ref_plans (code, name) values (%s, %s)", ("free", "Free"))
        conn.execute("insert into ref_plans (code, name) values (%b, %b)", ("pro", "Pro"))
        conn.execute("update ref_plans set name = upper(name) where code = 'pro'")
        assert conn.execute("select name from ref_plans where code = %s",
                            ("gold",)).fetchall() == [("Gold",)]
        assert conn.execute("select string_agg(code, ',' order by code) from ref_plans"
                            ).fetchone()[0] == "free,gold,pro"
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            assert conn.execute("select array_agg(code || '=' || name order by code)"
                                " from ref_plans").fetchone()[0] == [
                "free=Free", "gold=Gold", "pro=PRO"], shard.name
            conn.execute("drop table ref_plans")
