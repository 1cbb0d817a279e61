"""Cross-shard reads, differentially: pgshard over two shards against one
plain PostgreSQL database holding the same rows.

The data (xshard_gen.py: 56 000 rows over six sharded tables, one per
strategy plus two tables colocated with their partners, and a reference
table) is loaded through pgshard into the sharded lab (`shard_lab`, shards
s0 and s1) with multi-row INSERTs that pgshard splits per shard
(cross_shard_writes = allow), and by COPY into database xs_plain on s0's
server, read directly (not through pgshard; its own database, so the shards'
`app` databases never see it).

Then >= 1 000 distinct generated reads (seeded: filters, ORDER BY, LIMIT/
OFFSET, count/sum/min/max/avg, GROUP BY, DISTINCT, joins with the reference
table and between colocated tables, keyed reads, and ~10% constructs pgshard
must refuse) run on both sides in each protocol path: simple (literals
inlined), extended with text parameters and results, extended binary. A
mergeable read must give what the plain database gives: the same columns
(names, type OIDs), the same command tag, the same rows as Python objects
and as the raw bytes of every value (so "1.50" vs "1.5", or a binary
numeric's display scale, count as different) — in the same order when the
ORDER BY makes the order total, as the same multiset otherwise, and with the
sequence of ORDER BY key values equal when the order has ties. A read of a
construct that cannot be merged must be refused with SQLSTATE 0A000 and a
message starting "pgshard:", and the session must go on. Each run prints a
summary line (counts per category and per refused construct).

The other tests: cross_shard_reads = deny refuses every fan-out read (keyed
reads still work); an error on one shard fails the whole statement with the
server's SQLSTATE and the session stays usable; a slow shard does not hold
up other clients; an extended-protocol Execute with a row limit and a
psycopg server-side cursor give the plain database's rows, chunk by chunk; a read or a multi-row INSERT with more literals than pgshard's
lexer keeps (4096) is answered right or refused, never run on one shard.

Run: PGSHARD_IT_PORT_BASE=7500 python3 -m pytest tests/integration/test_cross_shard.py -s
(-s or -rA shows the summary lines).
"""
import collections
import contextlib
import signal
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg.types.numeric import Int8

import conftest
import pgwire
import xshard_gen as xg
from conftest import PGSHARDCTL, Proxy

N_QUERIES = 1100
MODES = ["simple", "text", "binary"]
# The differential also reads every query through a psycopg named cursor
# (DECLARE over the extended protocol, FETCH FORWARD in chunks, CLOSE).
DIFF_MODES = MODES + ["cursor"]
CURSOR_CHUNK = 37
PLAIN_DB = "xs_plain"
SLEEP = 3.0


# ---------------------------------------------------------------- setup

@contextlib.contextmanager
def deadline(seconds, what):
    """Fail with TestTimeout when the block runs longer than SECONDS (the
    module fixture runs outside the per-test alarm)."""
    def on_alarm(signum, frame):
        raise conftest.TestTimeout(f"{what}: still running after {seconds}s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class XLab:
    """The loaded data: the module's pgshard and a way to reach the plain
    database."""

    def __init__(self, lab, px):
        self.lab = lab
        self.px = px

    def connect_plain(self, **kwargs):
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(host="127.0.0.1", port=self.lab.shard("s0").primary_port,
                               dbname=PLAIN_DB, user="postgres", connect_timeout=5, **kwargs)

    def plain_port(self):
        return self.lab.shard("s0").primary_port

    def key_on(self, shard, table="xs_orders", column="id"):
        """A key of TABLE whose row is on SHARD (read on the shard itself)."""
        with self.lab.connect_primary(shard) as conn:
            return conn.execute(f"select {column} from {table} order by {column} limit 1"
                                ).fetchone()[0]


# pgshard's own tables (schema pgshard: the 2PC decision table, resharding's
# state, the map source) have name columns, collation C. They are not the
# application's: an expression whose collation pgshard does not follow must
# still merge as the database default (they once made it refuse every one).
OWN_SCHEMA_DDL = ("create schema if not exists pgshard; "
                  "create table if not exists pgshard.it_own_names (owner name)")
SCRATCH_DDL = "create table xs_scratch (id bigint primary key, v text not null)"


def _drop_tables(lab):
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists xs_scratch, " + ", ".join(xg.TABLES))


def _drop_plain(lab):
    with lab.connect_primary("s0") as conn:
        conn.execute(f"drop database if exists {PLAIN_DB} with (force)")


def placement_problems(lab, config):
    """Every sharded table's rows are on the shard `pgshardctl route` names
    for their key (the differential oracle assumes a correct load)."""
    problems = []
    for t in xg.SHARDED:
        on = {}
        for shard in lab.shards:
            with lab.connect_primary(shard.name) as conn:
                for (key,) in conn.execute(f"select distinct {t.key}::text from {t.name}"):
                    on.setdefault(key, []).append(shard.name)
        keys = sorted(on)
        proc = subprocess.run([str(PGSHARDCTL), "route", "--stdin", str(config), "app", t.name],
                              input="".join(k + "\n" for k in keys), capture_output=True,
                              text=True, timeout=60)
        lines = proc.stdout.splitlines()
        assert proc.returncode == 0 and len(lines) == len(keys), proc.stderr
        wrong = [(k, on[k], line.split("\t")[1]) for k, line in zip(keys, lines)
                 if on[k] != [line.split("\t")[1]]]
        if wrong:
            problems.append(f"{t.name}: {len(wrong)} keys (key, on, route says), e.g. {wrong[:3]}")
    return problems


@pytest.fixture(scope="module")
def xlab(shard_lab, tmp_path_factory):
    lab = shard_lab
    xg.make_data()
    workdir = tmp_path_factory.mktemp("xshard")
    px = None
    started = time.monotonic()
    try:
        with deadline(150, "loading the cross-shard data"):
            _drop_tables(lab)
            for shard in lab.shards:
                with lab.connect_primary(shard.name) as conn:
                    for t in xg.TABLES.values():
                        conn.execute(t.ddl())
                    conn.execute(SCRATCH_DDL)
                    conn.execute(OWN_SCHEMA_DDL)
            _drop_plain(lab)
            with lab.connect_primary("s0") as conn:
                conn.execute(f"create database {PLAIN_DB}")
            px = Proxy(lab, workdir, {"extra_ini": xg.SHARD_MAP, "cross_shard_writes": "allow",
                                      "pool_size": 8})
            px.start()
            xl = XLab(lab, px)

            # The sharded side: multi-row INSERTs through pgshard, simple
            # protocol, split per shard (the reference table: every shard).
            with px.connect(autocommit=True) as conn:
                for t in xg.TABLES.values():
                    for stmt in xg.insert_statements(t):
                        conn.execute(stmt)
            # The plain side: COPY.
            with xl.connect_plain() as conn:
                for t in xg.TABLES.values():
                    conn.execute(t.ddl())
                    with conn.cursor().copy(
                            f"copy {t.name} ({', '.join(t.order)}) from stdin") as copy:
                        copy.write("".join("\t".join(xg.copy_text(v) for v in row) + "\n"
                                           for row in t.rows))
                conn.execute("analyze")
            counts = {}
            for shard in lab.shards:
                with lab.connect_primary(shard.name) as conn:
                    conn.execute("analyze")
                    for t in xg.TABLES.values():
                        counts[(t.name, shard.name)] = conn.execute(
                            f"select count(*) from {t.name}").fetchone()[0]
            with xl.connect_plain() as conn:
                plain = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]
                         for t in xg.TABLES}
            for t in xg.TABLES.values():
                s0, s1 = counts[(t.name, "s0")], counts[(t.name, "s1")]
                assert plain[t.name] == t.nrows, (t.name, plain[t.name])
                if t.key is None:
                    assert s0 == s1 == t.nrows, f"reference table {t.name}: {s0}, {s1}"
                else:
                    assert s0 + s1 == t.nrows and s0 and s1, f"{t.name}: s0 {s0} + s1 {s1}"
            misplaced = placement_problems(lab, px.config_path)
            assert not misplaced, "rows not where pgshardctl route puts them: " + \
                "; ".join(misplaced)
        print(f"\ncross-shard data: {xg.TOTAL_ROWS} sharded rows + {xg.REF.nrows} reference rows,"
              f" per shard {sorted(counts.items())}, loaded in {time.monotonic() - started:.1f}s")
        yield xl
    finally:
        problems = px.shutdown_and_check() if px is not None and px.proc is not None else []
        try:
            _drop_tables(lab)
            _drop_plain(lab)
        except Exception as exc:  # noqa: BLE001 - teardown goes on
            problems.append(f"cleanup: {exc!r}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _report_module_proxy(request):
    """Attach the module proxy's log to a failing test's report (conftest's
    hook reads item._pgshard_proxies)."""
    if "xlab" in request.fixturenames:
        xl = request.getfixturevalue("xlab")
        request.node.__dict__.setdefault("_pgshard_proxies", []).append(xl.px)
    yield


@pytest.fixture(scope="module")
def queries():
    qs = xg.Gen().queries(N_QUERIES)
    assert len({q.sql for q in qs}) == len(qs) >= 1000
    return qs


# ---------------------------------------------------------------- running

class Outcome:
    """What one side answered: columns, tag, raw values, Python objects, or
    an error (sqlstate, message)."""

    def __init__(self, columns=None, tag=None, raw=None, rows=None, error=None):
        self.columns, self.tag, self.raw, self.rows, self.error = columns, tag, raw, rows, error

    def brief(self, limit=6):
        if self.error:
            return f"ERROR {self.error[0]}: {self.error[1]}"
        shown = self.rows[:limit]
        more = f" ... ({len(self.rows)} rows)" if len(self.rows) > limit else ""
        return f"{self.tag} {self.columns} {shown}{more} raw {self.raw[:limit]}"


def execute(conn, q, mode, fetch=True):
    """Run Q on CONN by MODE: simple (literals inline, Query message), text
    (extended, text parameters and results), binary (extended, binary
    parameters and results) or cursor (literals inline, a named cursor
    fetched CURSOR_CHUNK rows at a time). FETCH false: only whether it ran
    (rows None)."""
    try:
        if mode == "cursor":
            return _through_cursor(conn, q, fetch)
        if mode == "simple":
            cur = conn.cursor()
            cur.execute(q.sql, prepare=False)  # no parameters: the simple protocol
            return _outcome(cur, fetch)
        sql, params = q.param_sql(binary=mode == "binary")
        cur = conn.cursor(binary=mode == "binary")
        if params or mode == "binary":
            cur.execute(sql, params, prepare=False)
            return _outcome(cur, fetch)
        # Text results and no parameter: psycopg would use the simple
        # protocol; in a pipeline it always sends Parse/Bind/Execute.
        with conn.pipeline() as pipeline:
            cur.execute(sql, params, prepare=False)
            pipeline.sync()
            return _outcome(cur, fetch)
    except psycopg.Error as exc:
        return Outcome(error=(exc.sqlstate, exc.diag.message_primary or str(exc)))


def _through_cursor(conn, q, fetch):
    with conn.transaction():
        cur = conn.cursor(name="xs_diff")
        cur.execute(q.sql)
        columns = [(c.name, c.type_code) for c in cur.description]
        rows, raw = [], []
        while fetch:
            chunk = cur.fetchmany(CURSOR_CHUNK)
            res = cur.pgresult
            rows += chunk
            raw += [tuple(res.get_value(r, c) for c in range(res.nfields))
                    for r in range(res.ntuples)]
            if len(chunk) < CURSOR_CHUNK:
                break
        tag = cur.statusmessage
        cur.close()
    return Outcome(columns=columns, tag=tag, raw=raw, rows=rows)


def _outcome(cur, fetch=True):
    if not fetch:
        return Outcome(columns=[], tag=cur.statusmessage, raw=[], rows=[])
    res = cur.pgresult
    rows = cur.fetchall()
    raw = [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]
    columns = [(c.name, c.type_code) for c in cur.description]
    return Outcome(columns=columns, tag=cur.statusmessage, raw=raw, rows=rows)


def _sort_key(row):
    return tuple((0,) if v is None else (1, v) for v in row)


def difference(q, got, want):
    """None when GOT (pgshard) answers Q as WANT (plain) does; else why not."""
    if got.columns != want.columns:
        return f"columns {got.columns} != {want.columns}"
    if got.tag != want.tag:
        return f"command tag {got.tag!r} != {want.tag!r}"
    if q.compare == "ordered":
        if got.rows != want.rows:
            return "rows differ (ordered)"
        if got.raw != want.raw:
            return "raw values differ (ordered)"
        return None
    if sorted(got.rows, key=_sort_key) != sorted(want.rows, key=_sort_key):
        return "rows differ (as multisets)"
    if sorted(got.raw, key=_sort_key) != sorted(want.raw, key=_sort_key):
        return "raw values differ (as multisets)"
    if q.compare == "keys":
        # Compared as values: equal numerics of different scales are ties.
        cols = q.key_columns
        if [tuple(r[c] for c in cols) for r in got.rows] != \
                [tuple(r[c] for c in cols) for r in want.rows]:
            return f"ORDER BY key columns {cols} not in the same order"
    return None


def first_difference(got, want):
    """A short pointer at where two row lists part (for the report)."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"first at row {i}: pgshard {a!r} / plain {b!r}"
    return f"lengths {len(got)} / {len(want)}"


def is_pgshard_refusal(error):
    return error is not None and error[0] == "0A000" and error[1].startswith("pgshard:")


def run_differential(xlab, queries, mode):
    """Every query on both sides in MODE: (stats, failures)."""
    stats = collections.Counter()
    refused = collections.Counter()
    by_category = collections.Counter()
    failures = []
    with xlab.px.connect(autocommit=True) as px, xlab.connect_plain() as plain:
        for n, q in enumerate(queries):
            # A statement pgshard must refuse only has to run on the plain side.
            want = execute(plain, q, mode, fetch=not q.refuse)
            if want.error:
                failures.append((q, "the plain database rejected the query (generator bug)",
                                 None, want))
                continue
            got = execute(px, q, mode)
            by_category[q.refuse or q.category] += 1
            if q.refuse:
                if is_pgshard_refusal(got.error):
                    stats["refused as expected"] += 1
                    refused[q.refuse] += 1
                elif got.error:
                    stats["must refuse: other error"] += 1
                    failures.append((q, f"must be refused with 0A000 'pgshard: ...' "
                                        f"({q.refuse}), got another error", got, want))
                else:
                    stats["must refuse: NOT refused"] += 1
                    failures.append((q, f"must be refused ({q.refuse}) but pgshard answered",
                                     got, want))
                continue
            if got.error:
                what = "mergeable: refused" if is_pgshard_refusal(got.error) else \
                    "mergeable: error"
                stats[what] += 1
                failures.append((q, what, got, want))
                continue
            why = difference(q, got, want)
            if why:
                stats["mismatch"] += 1
                if "raw" in why:
                    why += ": " + first_difference(got.raw, want.raw)
                elif "rows" in why:
                    why += ": " + first_difference(got.rows, want.rows)
                failures.append((q, why, got, want))
            else:
                stats["matched"] += 1
    return stats, refused, by_category, failures


def report(mode, queries, stats, refused, by_category, failures, seconds):
    mergeable = sum(1 for q in queries if not q.refuse)
    line = (f"cross-shard differential [{mode}]: {len(queries)} queries ({mergeable} mergeable, "
            f"{len(queries) - mergeable} must be refused) in {seconds:.1f}s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
            + "; refused by construct: "
            + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    print("\n" + line)
    print(f"  queries by kind: {dict(sorted(by_category.items()))}")
    kinds = collections.Counter(f"{q.refuse or q.category}: {why.split(':')[0]}"
                                for q, why, _, _ in failures)
    if kinds:
        print(f"  failures by kind: {dict(sorted(kinds.items()))}")
    return line


@pytest.mark.parametrize("mode", DIFF_MODES)
def test_differential(xlab, queries, mode, record_testsuite_property):
    """The same >= 1 000 reads through pgshard (2 shards) and on the plain
    database, in one protocol path. The summary line is printed (pytest -s,
    or -rA for passed tests) and recorded as a junit testsuite property."""
    started = time.monotonic()
    stats, refused, by_category, failures = run_differential(xlab, queries, mode)
    line = report(mode, queries, stats, refused, by_category, failures,
                  time.monotonic() - started)
    record_testsuite_property(f"cross_shard_summary_{mode}", line)
    if failures:
        shown = []
        for q, why, got, want in failures[:8]:
            sql, params = (q.sql, None) if mode in ("simple", "cursor") else \
                q.param_sql(mode == "binary")
            shown.append(f"- [{q.refuse or q.category}] {why}\n    sql: {sql}"
                         + (f"\n    params: {params!r}" if params else "")
                         + f"\n    pgshard: {got.brief() if got else '-'}"
                         + f"\n    plain:   {want.brief()}")
        pytest.fail(f"{line}\n{len(failures)} failing queries, the first {len(shown)}:\n"
                    + "\n".join(shown), pytrace=False)


def test_generator_covers_the_contract(queries):
    """The generated set has what the differential test promises (checked
    without a proxy: a generator change cannot quietly drop a family)."""
    cats = collections.Counter(q.category for q in queries)
    constructs = collections.Counter(q.refuse for q in queries if q.refuse)
    sql = [q.sql for q in queries]
    assert len(queries) >= 1000
    assert 0.07 <= sum(constructs.values()) / len(queries) <= 0.15, constructs
    for construct in ["window", "having", "string_agg", "other-aggregate", "count-distinct",
                      "aggregate-in-expression", "distinct-on", "set-operation", "subquery",
                      "join-not-on-keys"]:
        assert constructs[construct] >= 3, (construct, constructs)
    for cat in ["rows-order-limit", "rows-order", "rows-order-ties", "rows-concat", "aggregate",
                "group-order", "group-order-limit", "group-concat", "distinct-order",
                "distinct-order-limit", "distinct-concat", "ref-join", "colocated-join",
                "keyed"]:
        assert cats[cat] >= 10, (cat, cats)
    for needle in [" NULLS FIRST", " NULLS LAST", " DESC", " OFFSET ", " FETCH ", "avg(",
                   "sum(", "min(", "max(", "count(*)", "count(", " IN (", " IS NULL",
                   " LIKE ", "= ANY(", " BETWEEN ", "LEFT JOIN xs_ref", "JOIN xs_items",
                   "JOIN xs_lines", "GROUP BY 1", "ORDER BY 1", "SELECT DISTINCT",
                   "xs_events", "xs_sites", "xs_invoices"]:
        assert any(needle in s for s in sql), needle


# ---------------------------------------------------------------- deny

def test_cross_shard_reads_deny(xlab, queries, sharded_proxy):
    """cross_shard_reads = deny: every read that needs more than one shard
    is refused with 0A000, in both protocols; keyed reads and reads of the
    reference table still run, with the plain database's answers."""
    px = sharded_proxy(extra_ini=xg.SHARD_MAP, cross_shard_reads="deny")
    fanout = [q for q in queries if not q.keyed and q.category not in ("keyed", "reference")
              and not q.refuse][:60]
    keyed = [q for q in queries if q.category in ("keyed", "reference")][:30]
    assert len(fanout) == 60 and len(keyed) >= 20
    problems = []
    with px.connect(autocommit=True) as conn, xlab.connect_plain() as plain:
        for i, q in enumerate(fanout):
            mode = MODES[i % 3]
            got = execute(conn, q, mode)
            if not is_pgshard_refusal(got.error):
                problems.append(f"not refused under deny ({mode}): {q.sql}: {got.brief()}")
            assert conn.execute("select 41 + 1").fetchone()[0] == 42
        for i, q in enumerate(keyed):
            mode = MODES[i % 3]
            got, want = execute(conn, q, mode), execute(plain, q, mode)
            why = "error" if got.error else difference(q, got, want)
            if why:
                problems.append(f"keyed read ({mode}) {why}: {q.sql}: {got.brief()} / "
                                f"{want.brief()}")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:10])


# ---------------------------------------------------------------- errors

def test_error_on_one_shard_fails_the_statement(xlab):
    """A division by zero that only happens on s1's rows fails the whole
    statement with the server's SQLSTATE and message (as on the plain
    database), whichever way the rows combine; the session goes on, also
    inside a transaction (25P02 until ROLLBACK)."""
    x = xlab.key_on("s1")
    statements = [
        "SELECT 1 / (id - {x}) FROM xs_orders",
        "SELECT id, 1 / (id - {x}) AS q FROM xs_orders ORDER BY id",
        "SELECT sum(1 / (id - {x})) FROM xs_orders",
        "SELECT grp, count(*), max(1 / (id - {x})) FROM xs_orders GROUP BY grp ORDER BY grp",
    ]
    with xlab.px.connect(autocommit=True) as conn, xlab.connect_plain() as plain:
        for template in statements:
            for mode in MODES:
                q = xg.Query("error")
                head, tail = template.split("{x}")
                q.add(head).lit(x, key=True).add(tail)
                want = execute(plain, q, mode)
                assert want.error and want.error[0] == "22012", want.brief()
                got = execute(conn, q, mode)
                assert got.error == want.error, (mode, q.sql, got.brief(), want.brief())
                assert conn.execute("select 41 + 1").fetchone()[0] == 42
                assert conn.execute("select count(*) from xs_orders where id = %s",
                                    (Int8(x),)).fetchone()[0] == 1
        conn.autocommit = False
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(f"SELECT 1 / (id - {x}) FROM xs_orders").fetchall()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 41 + 1").fetchone()[0] == 42
        conn.rollback()


# ---------------------------------------------------------------- slow shard

def test_slow_shard_does_not_block_other_clients(xlab):
    """A fan-out read that is slow on s1 (pg_sleep on one of s1's rows:
    pg_sleep is on the analyzer's read-only list) takes its time; meanwhile
    another client's keyed reads on both shards, and a third client's fast
    fan-out read, answer at once."""
    x = xlab.key_on("s1")
    k0, k1 = xlab.key_on("s0"), x
    slow_sql = (f"SELECT count(*) FROM xs_orders WHERE CASE WHEN id + 0 = {x}"
                f" THEN pg_sleep({SLEEP}) IS NOT NULL ELSE false END")
    with xlab.connect_plain() as plain:
        assert plain.execute(slow_sql.replace(str(SLEEP), "0")).fetchone()[0] == 1
        sites = plain.execute("select count(*), sum(revenue) from xs_sites").fetchone()
    outcome = {}

    def slow():
        started = time.monotonic()
        try:
            with xlab.px.connect(autocommit=True) as conn:
                outcome["slow"] = conn.execute(slow_sql).fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["slow"] = exc
        outcome["slow_seconds"] = time.monotonic() - started
        outcome["slow_done"] = time.monotonic()

    with xlab.px.connect(autocommit=True) as keyed, xlab.px.connect(autocommit=True) as other:
        keyed.execute("select 1")
        other.execute("select 1")
        thread = threading.Thread(target=slow, daemon=True)
        thread.start()
        time.sleep(0.5)  # the slow read is running on both shards by now
        latencies, fanout = [], []
        for i in range(20):
            t0 = time.monotonic()
            k = k0 if i % 2 == 0 else k1
            assert keyed.execute("select id from xs_orders where id = %s",
                                 (Int8(k),)).fetchone()[0] == k
            latencies.append(time.monotonic() - t0)
        for _ in range(3):
            t0 = time.monotonic()
            try:
                got = other.execute("select count(*), sum(revenue) from xs_sites").fetchone()
            except psycopg.Error as exc:
                got = exc
            fanout.append((time.monotonic() - t0, got))
        others_done = time.monotonic()
        thread.join(SLEEP + 30)
    assert not thread.is_alive(), "the slow fan-out read never finished"
    assert outcome["slow"] == 1, f"slow fan-out read: {outcome['slow']!r}"
    assert outcome["slow_seconds"] >= SLEEP, outcome
    assert others_done < outcome["slow_done"], "the other clients finished after the slow read"
    assert max(latencies) < 1.0, f"keyed reads waited for the slow shard: {latencies}"
    for seconds, got in fanout:
        assert got == sites, f"fast fan-out read during the slow one: {got!r}"
        assert seconds < 1.0, f"fast fan-out read waited for the slow one: {fanout}"


# ---------------------------------------------------------------- row limits

def _bind_execute(sql, max_rows, executes):
    """Parse/Bind/Describe, EXECUTES Executes of MAX_ROWS rows, Sync."""
    msgs = (pgwire.message("P", b"\0" + sql.encode() + b"\0" + b"\0\0")
            + pgwire.message("B", b"\0\0" + b"\0\0" + b"\0\0" + b"\0\0")
            + pgwire.message("D", b"P\0"))
    msgs += pgwire.message("E", b"\0" + max_rows.to_bytes(4, "big")) * executes
    return msgs + pgwire.message("S")


def _read_until_ready(conn):
    """[(kind, rows or error fields)] up to ReadyForQuery: DataRows are
    gathered into the chunk ended by PortalSuspended ('s') or
    CommandComplete ('C')."""
    events, chunk = [], []
    while True:
        kind, payload = conn.read_message()
        if kind == "D":
            count = int.from_bytes(payload[:2], "big")
            pos, row = 2, []
            for _ in range(count):
                length = int.from_bytes(payload[pos:pos + 4], "big", signed=True)
                pos += 4
                row.append(None if length < 0 else payload[pos:pos + length].decode())
                pos += max(length, 0)
            chunk.append(tuple(row))
        elif kind in ("s", "C"):
            events.append((kind, chunk, payload.rstrip(b"\0").decode() if kind == "C" else ""))
            chunk = []
        elif kind == "E":
            events.append(("E", pgwire.parse_error_fields(payload), ""))
        elif kind == "Z":
            return events
        elif kind in ("1", "2", "T", "n", "N", "S"):
            continue
        else:
            raise AssertionError(f"unexpected message {kind!r}")


@pytest.mark.parametrize("sql, max_rows", [
    ("SELECT id, amt FROM xs_orders WHERE qty > 0 ORDER BY id LIMIT 350", 100),
    ("SELECT grp, count(*), sum(amt) FROM xs_orders GROUP BY grp ORDER BY grp", 7),
    ("SELECT id, kind FROM xs_events WHERE n > 850", 100),
])
def test_execute_with_row_limit(xlab, sql, max_rows):
    """Execute with max_rows (PortalSuspended between chunks): pgshard
    gathers the merged result and gives what PostgreSQL gives, chunk by
    chunk (the last CommandComplete counting the last chunk's rows, as
    PostgreSQL's does)."""
    with xlab.connect_plain() as plain:
        total = len(plain.execute(sql).fetchall())
    executes = total // max_rows + 1
    with pgwire.RawConn(xlab.plain_port(), timeout=30) as conn:
        conn.login(user="postgres", database=PLAIN_DB)
        conn.send(_bind_execute(sql, max_rows, executes))
        want = _read_until_ready(conn)
    assert [k for k, _, _ in want] == ["s"] * (executes - 1) + ["C"], want
    with xlab.px.raw(timeout=30) as conn:
        conn.login()
        conn.send(_bind_execute(sql, max_rows, executes))
        got = _read_until_ready(conn)
        print(f"\nExecute max_rows {max_rows}: {len(got)} chunks, as PostgreSQL sends them")
        assert [k for k, _, _ in got] == [k for k, _, _ in want], got
        if "ORDER BY" in sql:
            assert got == want
        else:
            assert [len(c) for _, c, _ in got] == [len(c) for _, c, _ in want]
            assert sorted(r for _, c, _ in got for r in c) == \
                sorted(r for _, c, _ in want for r in c)
            assert got[-1][2] == want[-1][2]
        assert conn.simple_query("select 41 + 1") == [["42"]]


def test_server_side_cursor(xlab):
    """A psycopg named cursor (DECLARE ... CURSOR, FETCH FORWARD itersize):
    the plain database's rows in its order."""
    sql = "SELECT id, amt, name FROM xs_orders WHERE qty < 0 ORDER BY amt DESC NULLS LAST, id"
    with xlab.connect_plain() as plain:
        want = plain.execute(sql).fetchall()
    assert len(want) > 500
    with xlab.px.connect() as conn:
        with conn.transaction():
            cur = conn.cursor(name="xs_cursor")
            cur.itersize = 97
            cur.execute(sql)
            got = list(cur)
            cur.close()
        assert len(got) == len(want), (len(got), len(want))
        assert got == want
        print(f"\nserver-side cursor: {len(got)} rows, as PostgreSQL returns them")
        assert conn.execute("select 41 + 1").fetchone()[0] == 42
        conn.rollback()


# ---------------------------------------------------------------- big statements

def test_in_list_longer_than_the_lexer_takes(xlab):
    """A read naming more keys than pgshard's lexer keeps literals for
    (PGS_LEX_MAX_LITERALS = 4096) is answered as the plain database answers
    it, or refused with a pgshard error; never from one shard only."""
    ids = [r[0] for r in xg.ORDERS.rows[:5000]]
    sql = ("SELECT count(*), sum(qty), min(id), max(id) FROM xs_orders WHERE id IN ("
           + ", ".join(map(str, ids)) + ")")
    with xlab.connect_plain() as plain:
        want = plain.execute(sql).fetchone()
    assert want[0] == 5000
    problems = []
    with xlab.px.connect(autocommit=True) as conn:
        for mode in ("simple", "extended"):
            try:
                if mode == "simple":
                    got = conn.execute(sql).fetchone()
                else:
                    got = conn.execute(
                        "SELECT count(*), sum(qty), min(id), max(id) FROM xs_orders"
                        " WHERE id = ANY(%s)", ([Int8(i) for i in ids],)).fetchone()
            except psycopg.Error as exc:
                message = exc.diag.message_primary or ""
                if not (message.startswith("pgshard:") and exc.sqlstate[:2] in ("0A", "54")):
                    problems.append(f"{mode}: {exc.sqlstate}: {exc}")
            else:
                if got != want:
                    problems.append(f"{mode}: pgshard {got}, plain {want}")
            assert conn.execute("select 41 + 1").fetchone()[0] == 42
    assert not problems, "; ".join(problems)


def test_insert_longer_than_the_lexer_takes(xlab):
    """A multi-row INSERT (cross_shard_writes = allow) with more literals
    than the lexer keeps is split by shard or refused with a pgshard error;
    never sent whole to one shard. (The data load above stays under the
    limit for this reason.)"""
    ids = list(range(1, 3001))  # 6 000 literals
    sql = "insert into xs_scratch (id, v) values " + ", ".join(f"({i}, 'v{i}')" for i in ids)
    with xlab.px.connect(autocommit=True) as conn:
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            message = exc.diag.message_primary or ""
            assert message.startswith("pgshard:") and exc.sqlstate[:2] in ("0A", "54"), \
                f"{exc.sqlstate}: {exc}"
            inserted = False
        else:
            inserted = True
        assert conn.execute("select 41 + 1").fetchone()[0] == 42
    on = {}
    try:
        for shard in xlab.lab.shards:
            with xlab.lab.connect_primary(shard.name) as direct:
                for (key,) in direct.execute("select id::text from xs_scratch"):
                    on[key] = shard.name
    finally:
        for shard in xlab.lab.shards:
            with xlab.lab.connect_primary(shard.name) as direct:
                direct.execute("truncate xs_scratch")
    if not inserted:
        assert not on, f"refused, yet {len(on)} rows were written"
        return
    assert len(on) == len(ids)
    keys = sorted(on)
    proc = subprocess.run([str(PGSHARDCTL), "route", "--stdin", str(xlab.px.config_path), "app",
                           "xs_scratch"], input="".join(k + "\n" for k in keys),
                          capture_output=True, text=True, timeout=60)
    routed = dict(line.split("\t") for line in proc.stdout.splitlines())
    wrong = [k for k in keys if routed.get(k) != on[k]]
    assert not wrong, (f"{len(wrong)} of {len(keys)} rows on the wrong shard, e.g. "
                       f"{[(k, on[k], routed.get(k)) for k in wrong[:5]]}")
