"""Bad input, spoken by hand: each gets a clean error to that client only.

Every test ends by checking that an ordinary client still gets answers
(px.assert_alive), and the proxy fixture then requires a clean SIGTERM exit
and no sanitizer report. Raw connections log in with auth = trust so that
these tests are about framing, not authentication.
"""
import struct
import threading
import time

import psycopg
import pytest

import pgwire
from support import app_backends, wait_for

BIG = 100 * 1024


def bad_proxy(proxy, **overrides):
    overrides.setdefault("auth", "trust")
    return proxy(**overrides)


def expect_protocol_violation(raw, closes=True):
    fields = raw.read_error()
    assert fields.get("C") == "08P01", fields
    assert fields.get("M", "").startswith("pgshard:"), fields
    if closes:
        assert raw.closed_within(3), "connection still open after a protocol violation"
    return fields


# ---- startup phase ----

def test_startup_packet_too_long(proxy):
    px = bad_proxy(proxy)
    with px.raw() as raw:
        body = struct.pack("!i", pgwire.PROTOCOL_3_0) + b"user\0app\0database\0app\0"
        body += b"options\0" + b"x" * 20000 + b"\0\0"
        raw.send_in_background(struct.pack("!i", len(body) + 4) + body)
        expect_protocol_violation(raw)
    # The length alone is enough to refuse: the body never needs to arrive.
    with px.raw() as raw:
        raw.send(struct.pack("!ii", 1_000_000, pgwire.PROTOCOL_3_0))
        expect_protocol_violation(raw)
    px.assert_alive()


@pytest.mark.parametrize("length", [0, 3, 7, -8, -2147483648],
                         ids=["zero", "three", "seven", "negative", "int_min"])
def test_startup_length_lies(proxy, length):
    px = bad_proxy(proxy)
    with px.raw() as raw:
        raw.send(struct.pack("!i", length) + struct.pack("!i", pgwire.PROTOCOL_3_0))
        expect_protocol_violation(raw)
    px.assert_alive()


def test_unsupported_protocol_version(proxy):
    px = bad_proxy(proxy)
    with px.raw() as raw:
        body = struct.pack("!i", (2 << 16) | 0) + b"user\0app\0database\0app\0\0"
        raw.send(struct.pack("!i", len(body) + 4) + body)
        fields = raw.read_error()
        assert fields["C"] in ("08P01", "0A000"), fields
        assert raw.closed_within(3)
    px.assert_alive()


def test_ssl_request_answered_n(proxy):
    px = bad_proxy(proxy)
    with px.raw() as raw:
        raw.send(pgwire.ssl_request())
        assert raw.read_byte() == b"N"
        raw.login(user="app", password="secret")
        assert raw.simple_query("select 'after ssl'") == [["after ssl"]]
    px.assert_alive()


def test_gssenc_request_answered_n(proxy):
    px = bad_proxy(proxy)
    with px.raw() as raw:
        raw.send(pgwire.gssenc_request())
        assert raw.read_byte() == b"N"
        # libpq then tries SSL, then plain: both must still be accepted.
        raw.send(pgwire.ssl_request())
        assert raw.read_byte() == b"N"
        raw.login(user="app", password="secret")
        assert raw.simple_query("select 'after gss'") == [["after gss"]]
    px.assert_alive()


def test_data_after_ssl_request(proxy):
    """SSLRequest and a startup packet in one write: the startup arrived
    before the 'N' could be read, so it may have been injected (CVE-2021-23214
    in Postgres). Refuse it."""
    px = bad_proxy(proxy)
    with px.raw() as raw:
        raw.send(pgwire.ssl_request() + pgwire.startup_packet("app", "app"))
        first = raw.recv_exact(1)
        if first == b"N":
            first = raw.recv_exact(1)
        assert first == b"E", f"expected ErrorResponse, got {first!r}"
        raw.buf = first + raw.buf
        expect_protocol_violation(raw)
    px.assert_alive()


# ---- after login ----

def logged_in(px, **kwargs):
    raw = px.raw()
    raw.login(user="app", password="secret", **kwargs)
    return raw


def test_message_over_max_message_size(proxy):
    px = bad_proxy(proxy, max_message_size=65536)
    # Just under the cap works.
    with logged_in(px) as raw:
        sql = "select length('" + "x" * 60000 + "')"
        assert raw.simple_query(sql) == [["60000"]]
    with logged_in(px) as raw:
        sql = "select '" + "x" * BIG + "'"
        raw.send_in_background(pgwire.query(sql))
        expect_protocol_violation(raw)
    # The header alone must be enough to refuse.
    with logged_in(px) as raw:
        raw.send(b"Q" + struct.pack("!i", 10_000_000))
        expect_protocol_violation(raw)
    px.assert_alive()


def test_unknown_message_type(proxy):
    px = bad_proxy(proxy)
    with logged_in(px) as raw:
        raw.send(pgwire.message(b"\x01", b"junk"))
        expect_protocol_violation(raw, closes=False)
    with logged_in(px) as raw:
        raw.send(pgwire.message(b"z"))
        expect_protocol_violation(raw, closes=False)
    px.assert_alive()


@pytest.mark.parametrize("length", [3, 0, -1, -100000],
                         ids=["three", "zero", "minus_one", "negative"])
def test_message_length_lies(proxy, length):
    px = bad_proxy(proxy)
    with logged_in(px) as raw:
        raw.send(b"Q" + struct.pack("!i", length) + b"select 1\0")
        expect_protocol_violation(raw)
    px.assert_alive()


def test_bad_input_mid_transaction_releases_server(proxy, primary):
    """A protocol violation inside a transaction must not hand the server,
    still in that transaction, to the next client."""
    primary.execute("drop table if exists it_bad_tx")
    primary.execute("create table it_bad_tx (v int)")
    px = bad_proxy(proxy, pool_size=1, workers=1)
    with logged_in(px) as raw:
        raw.simple_query("begin")
        raw.simple_query("insert into it_bad_tx values (1)")
        raw.send(pgwire.message(b"\x01", b"junk"))
        expect_protocol_violation(raw, closes=False)
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select count(*) from it_bad_tx").fetchone() == (0,)
        assert conn.execute("select now() = statement_timestamp()").fetchone() == (True,), \
            "the next client landed inside someone else's transaction"
    assert primary.execute("select count(*) from it_bad_tx").fetchone() == (0,)
    primary.execute("drop table it_bad_tx")
    px.assert_alive()


# ---- vanishing peers ----

def no_backend_busy_with(conn, needle):
    rows = app_backends(conn, "state <> 'idle'")
    return not [r for r in rows if needle in (r[2] or "")]


def test_client_vanishes_mid_query(proxy, primary, lab):
    px = bad_proxy(proxy, pool_size=1, workers=1)
    raw = logged_in(px)
    raw.send(pgwire.query("select pg_sleep(2), 'vanished'"))
    time.sleep(0.2)
    raw.close()
    # The next client on the same (only) server gets its own answer, not the
    # vanished client's row.
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select 'mine'").fetchone() == ("mine",)
        assert conn.execute("select 1, 2").fetchone() == (1, 2)
    with lab.connect_replica() as replica:
        for conn in (primary, replica):
            wait_for(lambda c=conn: no_backend_busy_with(c, "vanished"), 5,
                     message="pg_sleep of the vanished client to end")
    px.assert_alive()


def test_client_vanishes_mid_transaction(proxy, primary):
    primary.execute("drop table if exists it_vanish")
    primary.execute("create table it_vanish (v int)")
    px = bad_proxy(proxy, pool_size=1, workers=1)
    raw = logged_in(px)
    raw.simple_query("begin")
    raw.simple_query("insert into it_vanish values (1)")
    raw.close()
    # Never committed, and no backend left idle in that transaction.
    wait_for(lambda: not app_backends(primary, "state like 'idle in transaction%'"), 5,
             message="the vanished client's transaction to end")
    assert primary.execute("select count(*) from it_vanish").fetchone() == (0,)
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select count(*) from it_vanish").fetchone() == (0,)
        assert conn.execute("select now() = statement_timestamp()").fetchone() == (True,)
    primary.execute("drop table it_vanish")
    px.assert_alive()


def test_server_dies_mid_transaction(proxy, primary):
    """pg_terminate_backend on the server a client is using inside a
    transaction: that client gets 08006 (or the server's 57P01 relayed), the
    others carry on. The victim speaks by hand to read the SQLSTATE (libpq
    drops it when the error and the close arrive together)."""
    # One worker with two servers: victim and bystander each hold one.
    px = proxy(pool_size=2, workers=1, auth="trust")
    victim = logged_in(px)
    bystander = px.connect()
    try:
        victim.simple_query("begin")
        pid = int(victim.simple_query("select pg_backend_pid()")[0][0])
        bystander.execute("select 1")  # in a transaction on another server
        assert bystander.execute("select pg_backend_pid()").fetchone()[0] != pid
        assert primary.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_for(lambda: not primary.execute(
            "select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone(), 5,
            message="terminated backend to exit")
        try:
            victim.send(pgwire.query("select 2"))
        except OSError:
            pass  # the proxy may already have closed us, after the error
        try:
            fields = victim.read_error()
        except EOFError:
            pytest.fail("connection closed without an ErrorResponse")
        assert fields.get("C") in ("08006", "57P01"), fields
        assert victim.closed_within(3), "client left connected to a dead server"
        # The other client's transaction carries on and commits.
        assert bystander.execute("select 3").fetchone() == (3,)
        bystander.commit()
    finally:
        victim.close()
        bystander.close()
    # The same through psycopg: an OperationalError, not a hang.
    with px.connect() as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        primary.execute("select pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 2")
    # The dead servers are not handed out again.
    for _ in range(10):
        px.assert_alive()


def test_many_bad_clients_at_once(proxy):
    """Garbage from many sockets in parallel while good clients work."""
    px = bad_proxy(proxy)
    stop = threading.Event()
    good_errors = []

    def good():
        try:
            with px.connect(autocommit=True) as conn:
                conn.prepare_threshold = None  # this test is about framing only
                while not stop.is_set():
                    assert conn.execute("select 1").fetchone() == (1,)
        except Exception as exc:  # noqa: BLE001
            good_errors.append(exc)

    payloads = [
        struct.pack("!i", 3),
        struct.pack("!i", -5) + b"xxxx",
        struct.pack("!i", 50000) + b"y" * 100,
        pgwire.ssl_request() + b"garbage",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        pgwire.startup_packet("app", "app")[:10],
    ]
    goods = [threading.Thread(target=good) for _ in range(4)]
    for t in goods:
        t.start()
    try:
        for _ in range(20):
            for data in payloads:
                try:
                    with px.raw(timeout=2) as raw:
                        raw.send(data)
                        raw.closed_within(0.05)
                except OSError:
                    pass
    finally:
        stop.set()
        for t in goods:
            t.join(10)
    assert not good_errors, good_errors
    px.assert_alive()
