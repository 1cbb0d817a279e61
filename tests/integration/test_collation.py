"""Text ORDER BY and min/max across shards in the order one server gives.

The rows (words with mixed case, accents, punctuation, spaces, the empty
string, NULLs) are spread over the sharded lab's two shards through
pgshard, and a plain database on s0's server holds all of them. Every read
runs through pgshard and directly on the plain database, in the simple and
the extended protocol, and must give the same rows in the same order:
ORDER BY a column of a libc collation (en_US), DESC NULLS FIRST, an
explicit COLLATE "C" or "en_US" on the expression, LIMIT/OFFSET,
DISTINCT, min/max over every shard's rows, grouped min/max. The lab's
databases are C (initdb --no-locale); a second database, created on each
shard with LOCALE 'en_US.utf8', checks a non-C default collation. What
pgshard cannot compare across shards (an ICU collation; an expression
whose collation it cannot tell) is refused with 0A000 and the session goes
on.

pgshard reads the collations from the shards' catalogs with its health
checks; a read before it knows them is refused with "not known yet", so the
module waits for the first answer.
"""
import psycopg
import pytest

from conftest import Proxy
from support import wait_for

WORDS = ["a", "B", "b", "é", "e", "Z", "ä", "a b", "ab", "", "A", "-a", "a-", "Ab", "z", "Ä",
         "ae", "æ", "1", "10", "9", "_x", " a", "E", "ê", "ß", "ss", "st", "Été", "eta", "zz",
         "o'brien", "O'Brien", "co-op", "coop", "Ω", "ω"]
# (id, w): every word twice (on whichever shards the ids hash to), NULLs.
ROWS = [(i + 1, w) for i, w in enumerate(WORDS + WORDS[::3])] + \
    [(900 + i, None) for i in range(4)]

PLAIN = "coll_plain"          # on s0's server: every row, database default C
EN_DB = "coll_en"             # on each shard, LOCALE 'en_US.utf8'
EN_PLAIN = "coll_en_plain"    # on s0's server, LOCALE 'en_US.utf8'

DDL = """create table coll_words (
  id bigint primary key,
  w text collate "en_US",
  c text,
  i text collate "und-x-icu",
  ci text collate coll_nd)"""
EN_DDL = """create table coll_words (
  id bigint primary key,
  w text,
  c text collate "C")"""


def shard_map(db):
    return f"""
[table.{db}.coll_words]
column = id
type = bigint
strategy = hash

[table.{db}.coll_late]
column = id
type = bigint
strategy = hash
"""


def en_database(lab):
    lines = ["", f"[database.{EN_DB}]", "pool_mode = transaction", "pool_size = 4"]
    for shard in lab.shards:
        lines += ["", f"[shard.{EN_DB}.{shard.name}]",
                  f"primary = host=127.0.0.1 port={shard.primary_port} dbname={EN_DB} "
                  "user=postgres"]
    return "\n".join(lines) + "\n" + shard_map(EN_DB)


def connect_db(lab, port, dbname):
    return psycopg.connect(host="127.0.0.1", port=port, dbname=dbname, user="postgres",
                           autocommit=True, connect_timeout=5)


def ensure_en_us(conn):
    """The "en_US" collation (libc, en_US.utf8): PostgreSQL imports it at
    initdb when the OS has the locale; a server made before locales-all was
    installed gets it here. Returns whether it was created."""
    if conn.execute("select 1 from pg_collation where collname = 'en_US'").fetchone():
        return False
    conn.execute("create collation if not exists \"en_US\" (provider = libc, "
                 "locale = 'en_US.utf8')")
    return True


ND = ("create collation if not exists coll_nd (provider = icu, locale = 'und-u-ks-level2', "
      "deterministic = false)")


def load(conn, rows, columns="id, w, c"):
    with conn.cursor() as cur:
        for row_id, w in rows:
            cur.execute(f"insert into coll_words ({columns}) values (%s, %s, %s)",
                        (row_id, w, w))


class Coll:
    def __init__(self, lab, px):
        self.lab = lab
        self.px = px
        self.plain_port = lab.shard("s0").primary_port

    def plain(self, dbname=PLAIN):
        return connect_db(self.lab, self.plain_port, dbname)


def _drop_all(lab):
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists coll_words, coll_late")
            conn.execute("drop collation if exists coll_nd")
            conn.execute(f"drop database if exists {EN_DB} with (force)")
    with lab.connect_primary("s0") as conn:
        conn.execute(f"drop database if exists {PLAIN} with (force)")
        conn.execute(f"drop database if exists {EN_PLAIN} with (force)")


@pytest.fixture(scope="module")
def coll(shard_lab, tmp_path_factory):
    lab = shard_lab
    created = []  # (port, dbname): "en_US" collations made here, dropped after
    px = None
    try:
        _drop_all(lab)
        with lab.connect_primary("s0") as conn:
            conn.execute(f"create database {PLAIN}")
            conn.execute(f"create database {EN_PLAIN} locale 'en_US.utf8' template template0")
        for shard in lab.shards:
            with lab.connect_primary(shard.name) as conn:
                conn.execute(f"create database {EN_DB} locale 'en_US.utf8' template template0")
                if ensure_en_us(conn):
                    created.append((shard.primary_port, "app"))
                conn.execute(ND)
                conn.execute(DDL)
            with connect_db(lab, shard.primary_port, EN_DB) as conn:
                conn.execute(EN_DDL)
        with connect_db(lab, lab.shard("s0").primary_port, PLAIN) as conn:
            ensure_en_us(conn)
            conn.execute(ND)
            conn.execute(DDL)
            load(conn, ROWS)
        with connect_db(lab, lab.shard("s0").primary_port, EN_PLAIN) as conn:
            conn.execute(EN_DDL)
            load(conn, ROWS)
        px = Proxy(lab, tmp_path_factory.mktemp("collation"),
                   {"extra_ini": shard_map("app") + en_database(lab)})
        px.start()
        with px.connect(autocommit=True) as conn:
            load(conn, ROWS)
        with px.connect(dbname=EN_DB, autocommit=True) as conn:
            load(conn, ROWS)
        for shard in lab.shards:  # the rows are spread over both shards
            for dbname in ("app", EN_DB):
                with connect_db(lab, shard.primary_port, dbname) as conn:
                    n = conn.execute("select count(*) from coll_words").fetchone()[0]
                    assert 0 < n < len(ROWS), (shard.name, dbname, n)
        yield Coll(lab, px)
    finally:
        problems = px.shutdown_and_check() if px is not None and px.proc is not None else []
        try:
            _drop_all(lab)
            for port, dbname in created:
                with connect_db(lab, port, dbname) as conn:
                    conn.execute("drop collation if exists public.\"en_US\"")
        except Exception as exc:  # noqa: BLE001 - teardown goes on
            problems.append(f"cleanup: {exc!r}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _report_module_proxy(request):
    if "coll" in request.fixturenames:
        request.node.__dict__.setdefault("_pgshard_proxies", []).append(
            request.getfixturevalue("coll").px)
    yield


def run(conn, sql, params, mode):
    """SQL's rows on CONN: simple (PARAMS, integers, inline; a Query
    message) or extended (Parse/Bind/Execute, PARAMS as parameters)."""
    cur = conn.cursor()
    if mode == "simple":
        inline = sql % tuple(str(int(p)) for p in params) if params else sql
        cur.execute(inline, prepare=False)
        return cur.fetchall()
    with conn.pipeline() as pipeline:
        cur.execute(sql, params, prepare=False)
        pipeline.sync()
        return cur.fetchall()


def refusal(conn, sql, params, mode):
    """The error (sqlstate, message) SQL gets, or None when it ran."""
    try:
        run(conn, sql, params, mode)
    except psycopg.Error as exc:
        return exc.sqlstate, exc.diag.message_primary
    return None


def known(conn, sql):
    """True once pgshard knows the shards' collations (until then a text
    ORDER BY is refused as "not known yet")."""
    try:
        conn.execute(sql).fetchall()
        return True
    except psycopg.errors.FeatureNotSupported as exc:
        assert "not known yet" in str(exc), exc
        return False


READS = [
    ("select w from coll_words order by w", ()),
    ("select w from coll_words order by w desc nulls first", ()),
    ("select w from coll_words order by w nulls first limit %s", (9,)),
    ("select w from coll_words order by w limit %s offset %s", (7, 5)),
    ("select id, w from coll_words order by w desc, id limit %s", (12,)),
    ("select w from coll_words order by w collate \"C\"", ()),
    ("select c from coll_words order by c", ()),
    ("select c from coll_words order by c collate \"en_US\"", ()),
    ("select c from coll_words order by c collate \"en_US\" desc limit %s", (8,)),
    ("select c, id from coll_words where id > %s order by c collate \"en_US\", id", (3,)),
    ("select distinct w from coll_words order by w", ()),
    ("select upper(c) as u from coll_words order by u, c", ()),
    ("select min(w), max(w), min(c), max(c), count(*) from coll_words", ()),
    ("select min(c collate \"en_US\"), max(w collate \"C\") from coll_words", ()),
    ("select length(w) as n, min(w), max(w), count(*) from coll_words group by length(w) "
     "order by n", ()),
    ("select max(w) from coll_words where id > %s", (1000,)),
]

EN_READS = [
    ("select w from coll_words order by w", ()),
    ("select w from coll_words order by w desc nulls first limit %s", (10,)),
    ("select w from coll_words order by lower(w), w", ()),
    ("select w from coll_words order by w collate \"C\"", ()),
    ("select c from coll_words order by c", ()),
    ("select c from coll_words order by c collate \"en_US\" nulls first", ()),
    ("select min(w), max(w), min(c), max(c) from coll_words", ()),
    ("select id::text as t from coll_words order by t limit %s", (15,)),
]


@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_text_order_as_one_server(coll, mode):
    with coll.px.connect(autocommit=True) as conn, coll.plain() as plain:
        wait_for(lambda: known(conn, "select w from coll_words order by w"), 20,
                 message="pgshard learning the shards' collations")
        for sql, params in READS:
            want = run(plain, sql, params, "simple")
            assert len(want) > 0
            got = run(conn, sql, params, mode)
            assert got == want, f"{mode}: {sql} {params}\n  pgshard {got}\n  server  {want}"
        # The en_US order is not byte order: the comparison means something.
        en = [r[0] for r in run(plain, "select w from coll_words order by w", (), "simple")]
        c = [r[0] for r in run(plain, "select w from coll_words order by w collate \"C\"", (),
                               "simple")]
        assert en != c


@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_database_default_collation(coll, mode):
    with coll.px.connect(dbname=EN_DB, autocommit=True) as conn, coll.plain(EN_PLAIN) as plain:
        wait_for(lambda: known(conn, "select w from coll_words order by w"), 20,
                 message="pgshard learning the shards' collations")
        for sql, params in EN_READS:
            want = run(plain, sql, params, "simple")
            got = run(conn, sql, params, mode)
            assert got == want, f"{mode}: {sql} {params}\n  pgshard {got}\n  server  {want}"
        # An expression mixing the C column with the default: PostgreSQL
        # would take C; pgshard does not follow that far and refuses.
        assert refusal(conn, "select c from coll_words order by c || w", (), mode) == (
            "0A000", "pgshard: ORDER BY: an expression over a column with collation \"C\" has a "
            "collation pgshard cannot tell; name one with COLLATE")
        assert run(conn, "select count(*) from coll_words", (), mode) == [(len(ROWS),)]


@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_refused_collations(coll, mode):
    with coll.px.connect(autocommit=True) as conn:
        wait_for(lambda: known(conn, "select w from coll_words order by w"), 20,
                 message="pgshard learning the shards' collations")
        icu = "pgshard: {}: collation \"und-x-icu\" (ICU) cannot be compared across shards"
        assert refusal(conn, "select i from coll_words order by i limit %s", (5,), mode) == (
            "0A000", icu.format("ORDER BY"))
        assert refusal(conn, "select max(i) from coll_words", (), mode) == (
            "0A000", icu.format("max()"))
        assert refusal(conn, "select w from coll_words order by w collate \"und-x-icu\"", (),
                       mode) == ("0A000", icu.format("ORDER BY"))
        assert refusal(conn, "select w from coll_words order by lower(w)", (), mode) == (
            "0A000", "pgshard: ORDER BY: an expression over a column with collation \"en_US\" "
            "has a collation pgshard cannot tell; name one with COLLATE")
        # Groups and DISTINCT compare bytes: right for deterministic
        # collations, refused for a non-deterministic one.
        nd = "pgshard: {}: collation \"coll_nd\" (non-deterministic) cannot be compared " \
            "across shards"
        assert refusal(conn, "select ci, count(*) from coll_words group by ci", (), mode) == (
            "0A000", nd.format("GROUP BY"))
        assert refusal(conn, "select distinct ci from coll_words", (), mode) == (
            "0A000", nd.format("DISTINCT"))
        # The session goes on; an ICU column in another order is fine, and
        # a non-text key never asks.
        assert run(conn, "select count(*) from coll_words where i is null", (), mode) == [
            (len(ROWS),)]
        assert run(conn, "select id from coll_words order by id desc limit %s", (2,), mode) == [
            (903,), (902,)]


def test_a_collation_changed_later_is_read_again(coll):
    """A table made while pgshard runs, its column's collation changed
    after: pgshard reads the shards' catalogs again (about once a second)
    and sorts as the server does once it has."""
    lab = coll.lab
    ddl = "create table coll_late (id bigint primary key, w text)"
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute(ddl)
    with coll.px.connect(autocommit=True) as conn, coll.plain() as plain:
        plain.execute("drop table if exists coll_late")
        plain.execute(ddl)
        for row_id, w in ROWS:
            for c in (conn, plain):
                c.execute("insert into coll_late (id, w) values (%s, %s)", (row_id, w))
        sql = "select w from coll_late order by w"

        def same():
            want = run(plain, sql, (), "simple")
            try:
                return run(conn, sql, (), "simple") == want
            except psycopg.errors.FeatureNotSupported:
                return False
        wait_for(same, 20, interval=0.1, message="pgshard sorting coll_late as the server")
        alter = 'alter table coll_late alter column w type text collate "en_US"'
        plain.execute(alter)
        for shard in lab.shards:
            with lab.connect_primary(shard.name) as direct:
                direct.execute(alter)
        wait_for(same, 20, interval=0.1,
                 message="pgshard sorting coll_late by its new collation as the server")
        assert run(plain, sql, (), "simple") != run(plain, sql + ' collate "C"', (), "simple")
