"""What one client can make pgshard hold, and how long it may sit idle.

 - A client that sends messages pgshard answers itself and never reads the
   answers is not read either once its unsent output passes the high-water
   mark: pgshard's memory stays flat (VmRSS measured) and other clients are
   served meanwhile. A client that reads slowly, and pipelining drivers,
   still get every answer.
 - max_client_memory / max_total_client_memory: a Parse that would go over
   is refused with 53200 naming the key, and the session goes on;
   max_merge_bytes bounds one cross-shard merge (54000), and a merge's rows
   count against the client's budget too (53200).
 - max_client_conn is for the process, whichever worker a client lands on
   (53300 past it).
 - client_idle_timeout_ms (57P05) and idle_transaction_timeout_ms (25P03)
   close idle clients with a FATAL; the servers of a transaction closed that
   way are closed, so its locks go; busy clients stay.
"""
import resource
import socket
import struct
import subprocess
import threading
import time

import psycopg
import pytest

import pgwire
from conftest import PG_BIN

MIB = 1024 * 1024


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def login_raw(px, timeout=5.0):
    raw = px.raw(timeout=timeout)
    raw.login()
    return raw


def sync():
    return pgwire.message("S")


def parse(name, sql):
    return pgwire.message("P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def close_statement(name):
    return pgwire.message("C", b"S" + name.encode() + b"\0")


def read_until_ready(raw):
    """Messages up to ReadyForQuery: [(type, payload)]."""
    out = []
    while True:
        kind, payload = raw.read_message()
        out.append((kind, payload))
        if kind == "Z":
            return out


# ---- a client that does not read ----

def test_flood_without_reading_is_bounded(proxy, monkeypatch):
    # Under AddressSanitizer, freed memory waits in a quarantine (256 MB by
    # default) and would count in VmRSS: keep it small for this measure.
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:quarantine_size_mb=4")
    px = proxy(auth="trust", workers=1)
    # Every message here is answered by pgshard itself: an ErrorResponse
    # for an unknown pgshard.* setting and ReadyForQuery, then a
    # ReadyForQuery for a bare Sync. ~100 bytes out for 26 in.
    unit = pgwire.query("SET pgshard.x = 1") + sync()
    count = 1_500_000
    blob = unit * count
    flood = login_raw(px)
    before = rss_kib(px.proc.pid)
    flood.sock.settimeout(0.5)
    sent, deadline = 0, time.monotonic() + 8
    while sent < len(blob) and time.monotonic() < deadline:
        try:
            sent += flood.sock.send(blob[sent:sent + 65536])
        except socket.timeout:
            continue  # pgshard stopped reading us: keep trying until the deadline
    # Meanwhile another client is served (the only worker is the flood's).
    with px.connect(autocommit=True) as other:
        assert other.execute("select 6 * 7").fetchone()[0] == 42
    time.sleep(0.5)
    after = rss_kib(px.proc.pid)
    growth_mib = (after - before) / 1024
    print(f"\nflood: sent {sent / MIB:.1f} MiB of {len(blob) / MIB:.1f} MiB "
          f"({sent // len(unit)} of {count} units) without reading; "
          f"pgshard VmRSS before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB "
          f"(+{growth_mib:.1f} MiB)")
    assert growth_mib < 64, f"pgshard grew by {growth_mib:.1f} MiB"
    # pgshard stopped reading: far from everything went in.
    assert sent < len(blob) / 2
    # The flooding client reads at last and gets its answers, in order.
    flood.sock.settimeout(10)
    units = 0
    for _ in range(200):
        kind, payload = flood.read_message()
        assert kind == "E", (kind, payload)
        assert pgwire.parse_error_fields(payload)["C"] == "42704"
        assert flood.read_message()[0] == "Z"
        assert flood.read_message()[0] == "Z"
        units += 1
    assert units == 200
    flood.close()
    px.assert_alive()


def test_slow_reader_gets_every_answer(proxy):
    """Pausing a client that does not read must not deadlock one that reads
    slowly: it writes and reads at once, and gets one answer per request."""
    px = proxy(auth="trust", workers=1)
    raw = login_raw(px, timeout=20)
    # A small receive buffer, and ~7 MB of answers: pgshard's backlog for
    # this client passes its high-water mark while it reads slowly.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    units = 60_000
    unit = pgwire.query("SET pgshard.x = 1") + sync()
    writer_error = []

    def write():
        try:
            raw.sock.sendall(unit * units)
        except OSError as exc:
            writer_error.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    readies = 0
    received = 0
    started = time.monotonic()
    while readies < 2 * units:
        chunk = raw.sock.recv(8192)
        assert chunk, "pgshard closed the connection"
        raw.buf += chunk
        received += len(chunk)
        while len(raw.buf) >= 5:
            length = struct.unpack("!i", raw.buf[1:5])[0]
            if len(raw.buf) < 1 + length:
                break
            kind = raw.buf[:1]
            assert kind in (b"E", b"Z"), raw.buf[:80]
            readies += kind == b"Z"
            raw.buf = raw.buf[1 + length:]
        if readies < units:
            time.sleep(0.002)  # slow for the first half
        assert time.monotonic() - started < 60, f"only {readies} ReadyForQuery in 60 s"
    writer.join(10)
    assert not writer_error, writer_error
    assert readies == 2 * units
    raw.close()
    px.assert_alive()


def test_pipelined_clients_keep_working(proxy, primary):
    primary.execute("drop table if exists it_limits_pipe")
    primary.execute("create table it_limits_pipe (id int primary key, v text)")
    px = proxy()
    with px.connect(autocommit=True) as conn:
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(5000):
                cur.execute("insert into it_limits_pipe values (%s, %s)", (i, "x" * 300))
        with conn.pipeline():
            curs = [conn.execute("select v from it_limits_pipe where id = %s", (i,))
                    for i in range(0, 5000, 7)]
            values = [c.fetchone()[0] for c in curs]
        assert values == ["x" * 300] * len(range(0, 5000, 7))
    assert primary.execute("select count(*) from it_limits_pipe").fetchone()[0] == 5000
    # pgbench, extended protocol, pipelined.
    script = px.workdir / "pipeline.sql"
    script.write_text("\\set id random(0, 4999)\n\\startpipeline\n"
                      + "select v from it_limits_pipe where id = :id;\n" * 50
                      + "\\endpipeline\n")
    run = subprocess.run(
        [str(PG_BIN / "pgbench"), "-n", "-M", "extended", "-c", "4", "-t", "100", "-f",
         str(script), "-h", "127.0.0.1", "-p", str(px.port), "-U", "app", "app"],
        env={"PGPASSWORD": "secret", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "number of transactions actually processed: 400/400" in run.stdout, run.stdout
    primary.execute("drop table it_limits_pipe")


# ---- memory budgets ----

def test_max_client_memory_refuses_a_parse(proxy):
    px = proxy(auth="trust", max_client_memory=4 * MIB)
    text = "select 1 /* " + "x" * (300 * 1024) + " */"
    with login_raw(px) as raw:
        refused = None
        for i in range(40):
            raw.send(parse(f"big{i}", text) + sync())
            replies = read_until_ready(raw)
            kinds = [k for k, _ in replies]
            if "E" in kinds:
                fields = pgwire.parse_error_fields(replies[kinds.index("E")][1])
                refused = i
                break
            assert kinds == ["1", "Z"], kinds
        assert refused is not None, "40 statements of 300 KiB fit in 4 MiB"
        assert 8 <= refused <= 14, refused  # about 4 MiB worth were kept
        assert fields["C"] == "53200", fields
        assert fields["S"] == "ERROR", fields
        assert fields["M"].startswith("pgshard:"), fields
        assert "max_client_memory" in fields["M"], fields
        # The session goes on: statements run, the kept ones are usable.
        assert raw.simple_query("select 40 + 2") == [["42"]]
        raw.send(pgwire.message("B", b"\0big0\0" + struct.pack("!hhh", 0, 0, 0))
                 + pgwire.message("E", b"\0" + struct.pack("!i", 0)) + sync())
        assert [k for k, _ in read_until_ready(raw)] == ["2", "D", "C", "Z"]
        # Closing statements gives their memory back.
        raw.send(b"".join(close_statement(f"big{i}") for i in range(refused)) + sync())
        assert [k for k, _ in read_until_ready(raw)] == ["3"] * refused + ["Z"]
        raw.send(parse("again", text) + sync())
        assert [k for k, _ in read_until_ready(raw)] == ["1", "Z"]
    px.assert_alive()


def test_max_total_client_memory_counts_every_client(proxy):
    px = proxy(auth="trust", max_client_memory=4 * MIB, max_total_client_memory=6 * MIB)
    text = "select 2 /* " + "y" * (1024 * 1024) + " */"
    first, second = login_raw(px), login_raw(px)
    for i in range(3):
        first.send(parse(f"a{i}", text) + sync())
        assert [k for k, _ in read_until_ready(first)] == ["1", "Z"]
    kept = 0
    for i in range(4):
        second.send(parse(f"b{i}", text) + sync())
        replies = read_until_ready(second)
        if replies[0][0] == "E":
            fields = pgwire.parse_error_fields(replies[0][1])
            break
        kept += 1
    else:
        raise AssertionError("7 MiB of statements kept under a 6 MiB total")
    assert kept == 2, kept
    assert fields["C"] == "53200" and "max_total_client_memory" in fields["M"], fields
    # The first client going away frees its share for the second.
    first.send(pgwire.terminate())
    first.close()
    time.sleep(0.3)
    second.send(parse("b9", text) + sync())
    assert [k for k, _ in read_until_ready(second)] == ["1", "Z"]
    second.close()
    px.assert_alive()


def test_unread_output_over_budget_closes_the_client(proxy):
    """A result far over max_client_memory that the client never reads: the
    client is closed (FATAL 53200, which it cannot read: the log says so),
    its server goes back, other clients are served."""
    px = proxy(auth="trust", max_client_memory=MIB, pool_size=1, workers=1)
    stuck = login_raw(px)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    stuck.send(pgwire.query("select repeat('z', 32 * 1024 * 1024)"))
    wait = time.monotonic()
    while "does not read its results" not in px.log_text():
        assert time.monotonic() - wait < 10, "the client was not closed:\n" + px.log_tail()
        time.sleep(0.1)
    assert "SQLSTATE 53200" in px.log_text()
    # The server went back to the pool (pool_size = 1): another client runs.
    with px.connect(autocommit=True) as other:
        assert other.execute("select 5").fetchone()[0] == 5
    assert stuck.closed_within(10)
    stuck.close()
    # One that reads the same result slowly is not closed.
    with login_raw(px, timeout=20) as slow:
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        slow.send(pgwire.query("select length(repeat('z', 8 * 1024 * 1024) || '') as n,"
                               " repeat('z', 8 * 1024 * 1024)"))
        got = 0
        while got < 8 * MIB:
            chunk = slow.sock.recv(256 * 1024)
            assert chunk, "closed while reading"
            slow.buf += chunk
            got += len(chunk)
            time.sleep(0.05)  # ~5 MB/s at most: about 1.6 s for the result
        rows = slow.read_query_result()
        assert rows[0][0] == str(8 * MIB)
    px.assert_alive()


MAP = """\
[table.app.items]
column = id
type = bigint
strategy = hash
"""


@pytest.fixture
def items(shard_lab):
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS items")
            conn.execute("CREATE TABLE items (id bigint primary key, pad text)")
            parity = 0 if shard == "s0" else 1
            conn.execute("INSERT INTO items SELECT g, repeat('p', 20000)"
                         f" FROM generate_series(1, 200) g WHERE g % 2 = {parity}")
    yield
    for shard in ("s0", "s1"):
        with shard_lab.connect_primary(shard, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS items")


def test_merge_budgets(sharded_proxy, items):
    """~4 MB of rows held for an ORDER BY over both shards."""
    query = "SELECT id, pad FROM items ORDER BY id DESC"
    p = sharded_proxy(extra_ini=MAP, max_merge_bytes=MIB)
    with p.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as e:
            conn.execute(query).fetchall()
        assert str(e.value).startswith("pgshard:") and "max_merge_bytes" in str(e.value)
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 200
    p = sharded_proxy(extra_ini=MAP, max_client_memory=2 * MIB)
    with p.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.errors.OutOfMemory) as e:
            conn.execute(query).fetchall()
        assert str(e.value).startswith("pgshard:") and "max_client_memory" in str(e.value)
        rows = conn.execute("SELECT id FROM items ORDER BY id DESC LIMIT 3").fetchall()
        assert rows == [(200,), (199,), (198,)]
    p = sharded_proxy(extra_ini=MAP)  # the defaults hold it
    with p.connect(autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
        assert [r[0] for r in rows] == list(range(200, 0, -1))


# ---- connections ----

def test_max_client_conn_is_for_the_process(proxy):
    """max_client_conn counts every worker's clients together: with 2
    workers, all of the limit's clients are served wherever the kernel puts
    them (it spreads connections over the workers' listeners unevenly), and
    the one after is refused with 53300; a client leaving makes room."""
    px = proxy(auth="trust", max_client_conn=12)
    clients = [login_raw(px) for _ in range(12)]
    for raw in clients:
        assert raw.simple_query("select 1") == [["1"]]
    over = px.raw()
    with pytest.raises(pgwire.ServerError) as refused:
        over.login()
    fields = refused.value.fields
    assert fields["C"] == "53300" and fields["M"].startswith("pgshard:"), fields
    over.close()
    clients.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the close reaches its worker a moment later
        again = px.raw()
        try:
            again.login()
            break
        except pgwire.ServerError as e:
            again.close()
            assert e.fields["C"] == "53300" and time.monotonic() < deadline, e.fields
            time.sleep(0.05)
    assert again.simple_query("select 2") == [["2"]]
    for raw in clients + [again]:
        raw.close()
    px.assert_alive()


def test_a_crowd_leaving_at_once_leaves_memory_flat(proxy, monkeypatch):
    """4,000 idle clients disconnect together: pgshard's VmRSS after they have
    gone is about what it was with them (each EOF used to be read into a
    16 KiB buffer kept until its close completed: a whole epoll batch of
    them at once, +16 MiB for good)."""
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:quarantine_size_mb=4")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(4000, hard - 500)  # this process and pgshard (which inherits the limit) hold N each
    if soft < n + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    try:
        px = proxy(auth="trust", workers=1)
        startup = pgwire.startup_packet("app", "app")
        socks = []
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", px.port))
            sock.sendall(startup)
            socks.append(sock)
        for sock in socks:  # each is logged in (ReadyForQuery is the last byte)
            sock.settimeout(10)
            data = b""
            while not data.endswith(b"Z\0\0\0\x05I"):
                chunk = sock.recv(4096)
                assert chunk, "a client was closed while logging in"
                data += chunk
        time.sleep(0.5)
        with_crowd = rss_kib(px.proc.pid)
        for sock in socks:
            sock.close()
        time.sleep(1.5)
        after = rss_kib(px.proc.pid)
        print(f"\n{n} clients: VmRSS {with_crowd / 1024:.1f} MiB with them, "
              f"{after / 1024:.1f} MiB after they left")
        assert after - with_crowd < 6 * 1024, (with_crowd, after)
        with px.connect(autocommit=True) as conn:
            assert conn.execute("select 1").fetchone()[0] == 1
        px.assert_alive()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- idle timeouts ----

def expect_fatal(raw, sqlstate, within=5.0):
    raw.sock.settimeout(within)
    fields = raw.read_error()
    assert fields.get("C") == sqlstate, fields
    assert fields.get("S") == "FATAL", fields
    assert fields.get("M", "").startswith("pgshard:"), fields
    assert raw.closed_within(3), "connection still open after the FATAL"
    return fields


def test_client_idle_timeout(proxy):
    px = proxy(auth="trust", client_idle_timeout_ms=500)
    idle = login_raw(px)
    busy = login_raw(px)
    sleeper = login_raw(px)
    sleeper.send(pgwire.query("select pg_sleep(1.5)"))
    started = time.monotonic()
    # Busy: a statement every 100 ms for 1.5 s, never closed.
    while time.monotonic() - started < 1.5:
        assert busy.simple_query("select 1") == [["1"]]
        time.sleep(0.1)
    fields = expect_fatal(idle, "57P05")
    assert "client_idle_timeout_ms" in fields["M"], fields
    # A statement running longer than the timeout is not idleness.
    sleeper.sock.settimeout(5)
    assert sleeper.read_query_result() == [[""]]
    assert sleeper.simple_query("select 2") == [["2"]]
    assert busy.simple_query("select 3") == [["3"]]
    for raw in (idle, busy, sleeper):
        raw.close()
    px.assert_alive()


def test_idle_transaction_timeout_releases_locks(proxy, primary):
    primary.execute("drop table if exists it_limits_lock")
    primary.execute("create table it_limits_lock (id int primary key, v int)")
    primary.execute("insert into it_limits_lock values (1, 0)")
    px = proxy(auth="trust", idle_transaction_timeout_ms=500)
    holder = login_raw(px)
    outside = login_raw(px)  # idle, but not in a transaction: stays
    active = login_raw(px)   # in a transaction, but busy: stays
    holder.simple_query("begin")
    holder.simple_query("select v from it_limits_lock where id = 1 for update")
    active.simple_query("begin")
    # The row is locked now: an update that will not wait fails.
    primary.execute("set lock_timeout = '100ms'")
    with pytest.raises(psycopg.errors.LockNotAvailable):
        primary.execute("update it_limits_lock set v = 1 where id = 1")
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        assert active.simple_query("select 1") == [["1"]]
        time.sleep(0.1)
    fields = expect_fatal(holder, "25P03")
    assert "idle_transaction_timeout_ms" in fields["M"], fields
    # Its server was closed, not pooled: the transaction rolled back.
    primary.execute("set lock_timeout = '5s'")
    primary.execute("update it_limits_lock set v = 2 where id = 1")
    assert primary.execute("select v from it_limits_lock").fetchone()[0] == 2
    assert active.simple_query("commit") == []
    assert outside.simple_query("select 4") == [["4"]]
    for raw in (holder, outside, active):
        raw.close()
    px.assert_alive()
    primary.execute("drop table it_limits_lock")
