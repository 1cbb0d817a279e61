"""Statements drivers send about the session itself, on two shards.

NOTIFY goes to one shard's primary (the first shard's) whatever shard a
session is on, and pgshard itself listens there (and on every other shard)
for its transaction-pooled clients (test_listen.py has the rest), so a
notification reaches every listener of its channel as on one PostgreSQL:
sent in autocommit, at the COMMIT of a transaction that wrote on the other
shard, never after a ROLLBACK, and through the extended protocol. DEALLOCATE of a statement the client
prepared through the protocol (PHP's PDO sends it when a statement object
goes away) is answered by pgshard, which knows the statement under its own
name on the servers: it must not fail, nor abort the transaction around it.
"""
import time

import psycopg
import pytest

import pgwire
from test_sharding import MAP, keys_on


@pytest.fixture
def px(shard_lab, sharded_proxy):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists users")
            conn.execute("create table users (id bigint primary key, v text not null)")
    px = sharded_proxy(extra_ini=MAP)
    px.k0 = keys_on(px.config_path, "users", "s0", range(1, 500), 4)
    px.k1 = keys_on(px.config_path, "users", "s1", range(1, 500), 4)
    return px


def notifications(conn, want, timeout=3.0):
    """The notifications CONN has received once WANT of them came (or the
    timeout passed): (channel, payload) pairs."""
    got = []
    conn.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        conn.execute("select 1")  # psycopg reads them while it runs a statement
        time.sleep(0.05)
    return got


def test_notify_reaches_listeners_from_any_shard(px):
    with px.connect(autocommit=True) as listener, px.connect(autocommit=True) as sender:
        listener.execute("listen orders")
        # The sender's session is on s1.
        sender.execute("insert into users (id, v) values (%s, 'a')", (px.k1[0],))
        sender.execute("notify orders, 'autocommit'")
        # A transaction on s1: the notification is sent when it commits.
        with sender.transaction():
            sender.execute("insert into users (id, v) values (%s, 'b')", (px.k1[1],))
            sender.execute("notify orders, 'committed'")
        # Never when it rolls back.
        sender.execute("begin")
        sender.execute("insert into users (id, v) values (%s, 'c')", (px.k1[2],))
        sender.execute("notify orders, 'rolled back'")
        sender.execute("rollback")
        # The extended protocol (a pipeline sends Parse/Bind/Execute).
        with sender.pipeline():
            sender.execute("notify orders, 'extended'")
        got = notifications(listener, 3)
        assert sorted(got) == sorted([("orders", "autocommit"), ("orders", "committed"),
                                      ("orders", "extended")]), got
        listener.execute("unlisten orders")
        sender.execute("notify orders, 'after unlisten'")
        assert notifications(listener, 1, timeout=0.5) == []  # nothing new


def test_deallocate_of_a_protocol_statement(px):
    """PDO's pattern: a statement prepared through the protocol, then SQL
    DEALLOCATE of its name inside the transaction, then COMMIT: the commit
    holds, and the name is gone as in PostgreSQL."""
    k = px.k1[3]
    with px.raw(timeout=10) as conn:
        conn.login()
        conn.simple_query("begin")
        conn.send(pgwire.message("P", b"ins\0insert into users (id, v) values ($1, 'pdo')\0"
                                 + b"\0\1" + (20).to_bytes(4, "big"))
                  + pgwire.message("B", b"\0ins\0\0\0\0\1" + len(str(k)).to_bytes(4, "big")
                                   + str(k).encode() + b"\0\0")
                  + pgwire.message("E", b"\0\0\0\0\0")
                  + pgwire.message("S"))
        kinds = []
        while True:
            kind, _ = conn.read_message()
            kinds.append(kind)
            if kind == "Z":
                break
        assert kinds == ["1", "2", "C", "Z"], kinds
        conn.send(pgwire.query("deallocate ins"))
        tags = []
        while True:
            kind, payload = conn.read_message()
            assert kind != "E", pgwire.parse_error_fields(payload)
            if kind == "C":
                tags.append(payload.rstrip(b"\0").decode())
            if kind == "Z":
                assert payload == b"T"  # still in the (healthy) transaction
                break
        assert tags == ["DEALLOCATE"]
        conn.send(pgwire.query("commit"))
        kind, payload = conn.read_message()
        assert (kind, payload.rstrip(b"\0")) == ("C", b"COMMIT")
        assert conn.read_message()[0] == "Z"
        # The name is gone.
        conn.send(pgwire.message("B", b"\0ins\0\0\0\0\0\0\0") + pgwire.message("S"))
        kind, payload = conn.read_message()
        assert kind == "E" and pgwire.parse_error_fields(payload)["C"] == "26000"
        assert conn.read_message()[0] == "Z"
    with px.connect(autocommit=True) as conn:
        assert conn.execute("select v from users where id = %s", (k,)).fetchone() == ("pdo",)
        # DEALLOCATE of a name nobody prepared is the server's error, as ever.
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("deallocate nobody")


def test_advisory_locks_meet_on_one_shard(px, shard_lab):
    """Advisory lock functions go to the first shard's primary whatever
    shard a session is on, so two clients locking one key contend as on
    one PostgreSQL (under cross_shard_writes = deny: a lock is no write).
    A session lock pins its client until released; a transaction lock ends
    with the transaction; pg_advisory_unlock_all() runs where the session
    is. Extended protocol too."""
    def held():
        with shard_lab.connect_primary("s0") as c:
            return c.execute("select count(*) from pg_locks where locktype = 'advisory'"
                             ).fetchone()[0]

    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        a.execute("insert into users (id, v) values (%s, 'a')", (px.k1[0],))  # a on s1
        b.execute(f"insert into users (id, v) values ({px.k0[0]}, 'b')")  # b on s0
        assert a.execute("select pg_advisory_lock(%s)", (77,)).fetchone() == ("",)
        assert b.execute("select pg_try_advisory_lock(77)").fetchone() == (False,)
        assert held() == 1
        assert a.execute("select pg_advisory_unlock(77)").fetchone() == (True,)
        assert b.execute("select pg_try_advisory_lock(%s)", (77,)).fetchone() == (True,)
        assert a.execute("select pg_try_advisory_lock(77)").fetchone() == (False,)
        assert b.execute("select pg_advisory_unlock_all()").fetchone() == ("",)
        assert held() == 0
        # A transaction lock, in a transaction that writes on s1.
        with a.transaction():
            a.execute("insert into users (id, v) values (%s, 'tx')", (px.k1[1],))
            assert a.execute("select pg_try_advisory_xact_lock(78)").fetchone() == (True,)
            assert b.execute("select pg_try_advisory_xact_lock(78)").fetchone() == (False,)
        assert b.execute("select pg_try_advisory_xact_lock(78)").fetchone() == (True,)
        assert held() == 0
        # With anything else that may write it is code that may write: refused.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute("select pg_advisory_lock(79), nextval('x')")
