"""A real driver through pgshard: psycopg 3 (libpq underneath).

Simple and extended query, parameter types in text and binary, errors that
leave the session usable, transactions, NOTICE and ParameterStatus relay,
pipeline mode, COPY both ways, and cancel.
"""
import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from psycopg import errors

import pgwire


def test_simple_and_extended_queries(proxy):
    px = proxy()
    with px.connect(autocommit=True) as conn:
        # No parameters: psycopg uses the simple protocol path of libpq.
        assert conn.execute("select 1").fetchone() == (1,)
        # Parameters: extended protocol, unnamed statement.
        assert conn.execute("select %s::int + %s::int", (40, 2)).fetchone() == (42,)
        assert conn.execute("select %s || %s", ("a", "b")).fetchone() == ("ab",)
        # Many rows, bigger than any one socket read.
        cur = conn.execute("select g, repeat('x', 100) from generate_series(1, 200000) g")
        rows = cur.fetchall()
        assert len(rows) == 200000
        assert rows[-1][0] == 200000 and rows[-1][1] == "x" * 100
        # Several statements in one simple Query.
        cur = conn.cursor()
        cur.execute("select 1; select 2; select 3")
        assert cur.fetchone() == (1,)
        assert cur.nextset() and cur.fetchone() == (2,)
        assert cur.nextset() and cur.fetchone() == (3,)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_parameter_types(proxy, binary):
    px = proxy()
    when = dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=dt.timezone.utc)
    blob = bytes(range(256)) * 4
    values = (42, 2**40, "héllo wörld ☃", blob, when, Decimal("12345.678901234567890"), None,
              True, 3.5, dt.date(2000, 1, 2))
    with px.connect(autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute("select %s::int4, %s::int8, %s::text, %s::bytea, %s::timestamptz,"
                    " %s::numeric, %s::text, %s::bool, %s::float8, %s::date", values)
        row = cur.fetchone()
        assert row == values
        cur.execute("select pg_typeof(%s)::text, pg_typeof(%s)::text, pg_typeof(%s)::text",
                    (2**40, b"y", when))
        assert cur.fetchone() == ("bigint", "bytea", "timestamp with time zone")
        # A 4 MB bytea parameter and result: messages far larger than a buffer.
        big = bytes(range(256)) * (4 * 4096)
        cur.execute("select %s::bytea, length(%s::bytea)", (big, big))
        echoed, length = cur.fetchone()
        assert length == len(big) and bytes(echoed) == big


def test_errors_leave_session_usable(proxy):
    px = proxy()
    with px.connect(autocommit=True) as conn:
        with pytest.raises(errors.DivisionByZero) as exc:
            conn.execute("select 1/0")
        assert exc.value.sqlstate == "22012"
        assert conn.execute("select 2").fetchone() == (2,)
        # Extended protocol error (bind-time): the session survives too.
        with pytest.raises(errors.InvalidTextRepresentation):
            conn.execute("select %s::int", ("not a number",))
        assert conn.execute("select %s::int", (3,)).fetchone() == (3,)
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table_here")
        with pytest.raises(errors.SyntaxError):
            conn.execute("selec 1")
        assert conn.execute("select 4").fetchone() == (4,)
    # Inside a transaction: the error aborts it; rollback makes it usable.
    with px.connect() as conn:
        conn.execute("select 1")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 5").fetchone() == (5,)
        conn.commit()


def test_transactions_visible_on_primary(proxy, primary):
    primary.execute("drop table if exists it_tx")
    primary.execute("create table it_tx (id int primary key, v text)")
    px = proxy()
    with px.connect() as conn:
        with conn.transaction():
            conn.execute("insert into it_tx values (1, 'committed')")
            # Not yet visible to others.
            assert primary.execute("select count(*) from it_tx").fetchone()[0] == 0
        assert primary.execute("select v from it_tx where id = 1").fetchone() == ("committed",)

        conn.execute("insert into it_tx values (2, 'rolled back')")
        conn.rollback()
        assert primary.execute("select count(*) from it_tx where id = 2").fetchone()[0] == 0

        # A savepoint rolled back inside a committed transaction.
        with conn.transaction():
            conn.execute("insert into it_tx values (3, 'outer')")
            with pytest.raises(errors.UniqueViolation):
                with conn.transaction():
                    conn.execute("insert into it_tx values (3, 'dup')")
            conn.execute("insert into it_tx values (4, 'after savepoint')")
        assert primary.execute("select array_agg(id order by id) from it_tx").fetchone()[0] == [1, 3, 4]
    primary.execute("drop table it_tx")


def test_notice_relayed(proxy):
    px = proxy()
    notices = []
    with px.connect(autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append((diag.severity, diag.message_primary)))
        conn.execute("do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$")
        assert conn.execute("select 1").fetchone() == (1,)
    assert ("NOTICE", "hello 42") in notices
    assert ("WARNING", "careful") in notices


def test_parameter_status_from_startup(proxy, primary):
    primary.execute("create schema if not exists it_sp")
    primary.execute("create table if not exists it_sp.only_here (v int)")
    primary.execute("truncate it_sp.only_here")
    primary.execute("insert into it_sp.only_here values (7)")
    # pool_size 1 and one worker: both clients share one server connection,
    # so each one's settings must be put back on it for every transaction.
    px = proxy(pool_size=1, workers=1)
    a = px.connect(application_name="x",
                   options="-c TimeZone=UTC -c DateStyle=ISO,DMY -c search_path=it_sp,public")
    b = px.connect(application_name="y", options="-c TimeZone=America/New_York")
    try:
        assert a.info.parameter_status("application_name") == "x"
        assert a.info.parameter_status("TimeZone") == "UTC"
        assert a.info.parameter_status("DateStyle") == "ISO, DMY"
        assert b.info.parameter_status("application_name") == "y"
        assert b.info.parameter_status("TimeZone") == "America/New_York"
        for _ in range(5):
            for conn, app, tz in ((a, "x", "UTC"), (b, "y", "America/New_York")):
                with conn.transaction():
                    assert conn.execute("show application_name").fetchone()[0] == app
                    assert conn.execute("show timezone").fetchone()[0] == tz
            with a.transaction():
                assert a.execute("show datestyle").fetchone()[0] == "ISO, DMY"
                # Postgres keeps the text given in options as is.
                assert a.execute("show search_path").fetchone()[0] == "it_sp,public"
                assert a.execute("select v from only_here").fetchone() == (7,)
                assert a.execute("select '2024-02-29 12:00+00'::timestamptz::text"
                                 ).fetchone()[0] == "2024-02-29 12:00:00+00"
            with b.transaction():
                assert b.execute("show datestyle").fetchone()[0] != "ISO, DMY"
                with pytest.raises(errors.UndefinedTable):
                    with b.transaction():  # a savepoint: the error stays inside it
                        b.execute("select v from only_here")
        # SET of a reported parameter is relayed as ParameterStatus.
        a.autocommit = True
        a.execute("set application_name = 'z'")
        assert a.info.parameter_status("application_name") == "z"
        assert a.execute("show application_name").fetchone()[0] == "z"
        b.autocommit = True
        assert b.execute("show application_name").fetchone()[0] == "y"
    finally:
        a.close()
        b.close()
    primary.execute("drop schema it_sp cascade")


def test_pipeline_mode(proxy, primary):
    primary.execute("drop table if exists it_pipe")
    primary.execute("create table it_pipe (id int primary key, v text)")
    px = proxy()
    with px.connect(autocommit=True) as conn:
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(100):
                cur.execute("insert into it_pipe values (%s, %s)", (i, f"v{i}"))
            reads = []
            for i in range(0, 100, 10):
                c = conn.cursor()
                c.execute("select v from it_pipe where id = %s", (i,))
                reads.append((i, c))
            count = conn.cursor()
            count.execute("select count(*), sum(id) from it_pipe")
        for i, c in reads:
            assert c.fetchone() == (f"v{i}",)
        assert count.fetchone() == (100, sum(range(100)))

        # executemany in a pipeline; then an error in a pipeline of its own,
        # which skips the rest of that pipeline and leaves the session usable.
        with conn.pipeline():
            conn.cursor().executemany("insert into it_pipe values (%s, %s)",
                                      [(1000 + i, "m") for i in range(50)])
        assert conn.execute("select count(*) from it_pipe where id >= 1000").fetchone() == (50,)
        with pytest.raises(errors.UniqueViolation):
            with conn.pipeline():
                conn.execute("insert into it_pipe values (0, 'duplicate')")
                conn.execute("insert into it_pipe values (2000, 'skipped')")
        with conn.pipeline():
            c = conn.execute("select count(*) from it_pipe")
        assert c.fetchone() == (150,)
    assert primary.execute("select count(*) from it_pipe").fetchone() == (150,)
    primary.execute("drop table it_pipe")


ROWS = 100_000


def test_copy_round_trip(proxy, primary):
    primary.execute("drop table if exists it_copy")
    primary.execute("create table it_copy (id int, v text)")
    px = proxy()
    with px.connect() as conn:
        with conn.cursor() as cur:
            with cur.copy("copy it_copy (id, v) from stdin") as copy:
                batch = []
                for i in range(ROWS):
                    batch.append(f"{i}\tvalue {i}\n")
                    if len(batch) == 5000:
                        copy.write("".join(batch))
                        batch = []
                copy.write("".join(batch))
        conn.commit()
    assert primary.execute("select count(*), sum(id) from it_copy").fetchone() == (
        ROWS, sum(range(ROWS)))

    with px.connect() as conn:
        with conn.cursor() as cur:
            data = bytearray()
            with cur.copy("copy it_copy to stdout") as copy:
                for chunk in copy:
                    data += chunk
            lines = bytes(data).decode().splitlines()
            assert len(lines) == ROWS
            assert sum(int(line.split("\t")[0]) for line in lines) == sum(range(ROWS))
            assert "17\tvalue 17" in lines
            # A failing COPY FROM leaves the session usable.
            conn.rollback()
            with pytest.raises(errors.InvalidTextRepresentation):
                with cur.copy("copy it_copy (id, v) from stdin") as copy:
                    copy.write("1\tok\nnot-an-int\tbad\n")
            conn.rollback()
            assert cur.execute("select count(*) from it_copy").fetchone() == (ROWS,)
        conn.commit()
    # The same outside a transaction: the server is done with the COPY before
    # the client's trailing CopyDone, and the pool must not trip over it.
    with px.connect(autocommit=True) as conn:
        for _ in range(3):
            with pytest.raises(errors.InvalidTextRepresentation):
                with conn.cursor().copy("copy it_copy (id, v) from stdin") as copy:
                    copy.write("2\tok\nnot-an-int\tbad\n")
            assert conn.execute("select count(*) from it_copy").fetchone() == (ROWS,)
        with conn.cursor().copy("copy it_copy (id, v) from stdin") as copy:
            copy.write("-1\tlast\n")
        assert conn.execute("select count(*) from it_copy").fetchone() == (ROWS + 1,)
    primary.execute("drop table it_copy")


def test_cancel(proxy):
    px = proxy()
    with px.connect(autocommit=True) as victim, px.connect(autocommit=True) as bystander:
        outcome = {}

        def sleeper():
            started = time.monotonic()
            try:
                victim.execute("select pg_sleep(30)")
                outcome["result"] = "completed"
            except Exception as exc:  # noqa: BLE001
                outcome["result"] = exc
            outcome["elapsed"] = time.monotonic() - started

        def other():
            try:
                outcome["other"] = bystander.execute("select pg_sleep(1.5), 7").fetchone()[1]
            except Exception as exc:  # noqa: BLE001
                outcome["other"] = exc

        t = threading.Thread(target=sleeper)
        u = threading.Thread(target=other)
        t.start()
        u.start()
        time.sleep(0.5)
        victim.cancel()
        t.join(10)
        u.join(10)
        assert not t.is_alive(), "pg_sleep(30) was not cancelled within 10 s"
        assert isinstance(outcome["result"], errors.QueryCanceled), outcome["result"]
        assert outcome["result"].sqlstate == "57014"
        assert outcome["elapsed"] < 2.5, f"cancel took {outcome['elapsed']:.2f}s"
        # The cancel reached the right server process: the other query ran on.
        assert outcome["other"] == 7
        # Both sessions are usable afterwards.
        assert victim.execute("select 1").fetchone() == (1,)
        assert bystander.execute("select 2").fetchone() == (2,)

    # Cancel inside a transaction, then roll back and carry on.
    with px.connect() as conn:
        conn.execute("select 1")
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        assert time.monotonic() - started < 2.5
        conn.rollback()
        assert conn.execute("select 3").fetchone() == (3,)
        conn.commit()


def test_large_result_with_slow_reader(proxy):
    """A client that reads a big result slowly makes pgshard stop reading its
    server (backpressure); the server must be readable again afterwards, for
    this client and for the next one that gets it from the pool."""
    px = proxy(pool_size=1, workers=1, auth="trust")
    for round_ in range(3):
        with px.raw(timeout=10) as raw:
            raw.login(user="app", password="secret")
            raw.send(pgwire.query("select g, repeat('x', 200) from generate_series(1, 100000) g"))
            time.sleep(0.5)  # let the proxy's buffers toward us fill up
            rows = raw.read_query_result()
            assert len(rows) == 100000 and rows[-1][0] == "100000"
            # The same client, then (after it leaves) the next one.
            assert raw.simple_query("select 1; select 2") == [["2"]], f"round {round_}"
        with px.connect(autocommit=True) as conn:
            assert conn.execute("select %s::int", (round_,)).fetchone() == (round_,)
