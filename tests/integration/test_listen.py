"""LISTEN/NOTIFY in transaction pooling, on two shards (proxy/listen.c).

A client's LISTEN reaches no server: pgshard keeps the client's channels
and listens on every shard's primary with connections of its own, so the
client holds no server between its transactions and a notification raised
on any shard (a NOTIFY, pg_notify() in a trigger) reaches every client of
its channel in that database — only between the client's transactions, as
PostgreSQL hands them over. A LISTEN in a transaction takes effect at its
COMMIT and never after a ROLLBACK; channels are named as PostgreSQL folds
them. A listener that loses its connection comes back and listens again.
Notifications held for a client inside a long transaction are capped
(max_notify_queue_bytes), and the client is told of what was dropped.
Session pooling passes LISTEN through to the client's own server.
"""
import time
import urllib.request

import psycopg
import pytest

import pgwire
from conftest import free_port
from support import wait_for
from test_sharding import MAP, keys_on

TRIGGER = """
create or replace function notify_insert() returns trigger language plpgsql as $$
begin
  perform pg_notify('inserts', new.id || ':' || pg_backend_pid());
  return new;
end $$;
create trigger users_notify after insert on users for each row execute function notify_insert();
"""


@pytest.fixture
def tables(shard_lab):
    """users on both shards, with a trigger that notifies of each insert."""
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists users")
            conn.execute("create table users (id bigint primary key, v text not null)")
            conn.execute(TRIGGER)
    return shard_lab


def start(sharded_proxy, **overrides):
    px = sharded_proxy(extra_ini=overrides.pop("extra_ini", MAP), **overrides)
    px.k0 = keys_on(px.config_path, "users", "s0", range(1, 500), 4)
    px.k1 = keys_on(px.config_path, "users", "s1", range(1, 500), 4)
    return px


@pytest.fixture
def px(tables, sharded_proxy):
    return start(sharded_proxy)


class Inbox:
    """What a psycopg connection is sent: notifications and notices. They
    are read while the connection runs a statement: wait() runs `select 1`
    until enough came."""

    def __init__(self, conn, pump="select 1"):
        self.conn = conn
        self.pump = pump
        self.got = []
        self.notices = []
        conn.add_notify_handler(self.got.append)
        # A notice is valid only during the call: what it says is kept.
        conn.add_notice_handler(
            lambda d: self.notices.append((d.severity, d.sqlstate, d.message_primary or "")))

    def pairs(self):
        return [(n.channel, n.payload) for n in self.got]

    def wait(self, want, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.got) < want and time.monotonic() < deadline:
            self.conn.execute(self.pump)
            time.sleep(0.02)
        return self.pairs()

    def quiet(self, seconds=0.5):
        """Nothing more comes for SECONDS (what came is returned)."""
        before = len(self.got)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.conn.execute(self.pump)
            time.sleep(0.05)
        return self.pairs()[before:]


def listener_backends(lab, shard, db="app"):
    """(pid, query) of pgshard's listening connections on SHARD's primary."""
    with lab.connect_primary(shard) as conn:
        return conn.execute("select pid, query from pg_stat_activity where datname = %s"
                            " and application_name = 'pgshard_listen'", (db,)).fetchall()


def admin_rows(px, sql):
    with px.connect(user="admin", password="adminpw", dbname="pgshard", autocommit=True) as adm:
        cur = adm.execute(sql)
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def test_listen_holds_no_server(tables, sharded_proxy):
    """One worker, one server per shard: a listening client that kept a
    server would starve everyone else. It keeps none, and still gets what
    other clients NOTIFY."""
    port = free_port()
    px = start(sharded_proxy, workers=1, pool_size=1, query_wait_timeout_ms=3000,
               metrics_listen=f"127.0.0.1:{port}")
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen orders")
        # The only server of each shard serves the others, again and again.
        for i in range(5):
            with px.connect() as other:  # a transaction on both shards
                other.execute("insert into users (id, v) values (%s, 'x')", (px.k0[0] + 1000 * i,))
                other.execute("select count(*) from users")
        b.execute("notify orders, 'first'")
        assert inbox.wait(1) == [("orders", "first")]
        b.execute("begin")
        b.execute("select * from users where id = %s", (px.k0[1],))
        b.execute("notify orders, 'in a transaction'")
        b.execute("commit")
        assert inbox.wait(2)[1] == ("orders", "in a transaction")
        clients = admin_rows(px, "show clients")
        assert clients and all(not c["pinned"] for c in clients), clients
        idle = [c for c in clients if c["servers"] == 0]
        assert len(idle) >= 2, clients  # a and b, between their transactions
        # pgshard's own connection listens, one per shard.
        for shard in ("s0", "s1"):
            backends = listener_backends(px.lab, shard)
            assert len(backends) == 1, backends
            assert 'LISTEN "orders"' in backends[0][1], backends
        listeners = admin_rows(px, "show listeners")
        assert sorted(r["shard"] for r in listeners) == ["s0", "s1"], listeners
        assert all(r["state"] == "ready" and r["channels"] == 1 for r in listeners), listeners
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for shard in ("s0", "s1"):
            assert f'pgshard_listen_connections{{database="app",shard="{shard}"}} 1' in text
            assert f'pgshard_listen_channels{{database="app",shard="{shard}"}} 1' in text
        # Both NOTIFYs went to s0's primary.
        assert 'pgshard_notifications_total{database="app",shard="s0"} 2' in text


def test_trigger_on_another_shard(px):
    """pg_notify() in a trigger on s1 (where the row's key routes) reaches
    the client, with the pid of the backend that sent it."""
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen inserts")
        b.execute("insert into users (id, v) values (%s, 'on s1')", (px.k1[0],))
        b.execute("insert into users (id, v) values (%s, 'on s0')", (px.k0[0],))
        got = inbox.wait(2)
        assert sorted(p.split(":")[0] for _, p in got) == sorted([str(px.k1[0]), str(px.k0[0])])
        for n in inbox.got:
            key, pid = n.payload.split(":")
            assert n.pid == int(pid)  # as PostgreSQL sent it
        # The s1 backend's pid is one of s1's, not s0's.
        with px.lab.connect_primary("s1") as s1:
            row = s1.execute("select count(*) from users where id = %s", (px.k1[0],)).fetchone()
            assert row[0] == 1


def test_listen_in_a_transaction(px):
    """LISTEN in a transaction applies at COMMIT, never after ROLLBACK (nor
    after an error); UNLISTEN likewise."""
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("begin")
        a.execute("listen tx_chan")
        a.execute("rollback")
        b.execute("notify tx_chan, 'after rollback'")
        assert inbox.quiet() == []
        a.execute("begin")
        a.execute("select * from users where id = %s", (px.k1[0],))
        a.execute("listen tx_chan")
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("select 1 / 0")
        a.execute("commit")  # a failed transaction: rolled back
        b.execute("notify tx_chan, 'after failure'")
        assert inbox.quiet() == []
        with a.transaction():
            a.execute("listen tx_chan")
            # Committed before a's LISTEN is: not a's (it reaches pgshard
            # while a is still in its transaction).
            b.execute("notify tx_chan, 'before commit'")
            assert inbox.quiet(0.3) == []
        b.execute("notify tx_chan, 'after commit'")
        assert inbox.wait(1) == [("tx_chan", "after commit")]
        assert inbox.quiet() == []
        with a.transaction():
            a.execute("unlisten tx_chan")
            b.execute("notify tx_chan, 'unlisten not committed'")
            assert inbox.quiet(0.3) == []  # held until a's transaction ends
        assert inbox.wait(2)[1:] == [("tx_chan", "unlisten not committed")]
        b.execute("notify tx_chan, 'after unlisten'")
        assert inbox.quiet() == []
        # In a failed transaction, LISTEN fails as in PostgreSQL.
        a.execute("begin")
        with pytest.raises(psycopg.errors.DivisionByZero):
            a.execute("select 1 / 0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("listen tx_chan")
        a.execute("rollback")


def test_unlisten_star_and_disconnect(px):
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen one")
        a.execute("listen two")
        b.execute("notify one, '1'")
        b.execute("notify two, '2'")
        assert sorted(inbox.wait(2)) == [("one", "1"), ("two", "2")]
        a.execute("unlisten *")
        b.execute("notify one, '3'")
        b.execute("notify two, '4'")
        assert inbox.quiet() == []
        # asyncpg's pool reset, and DISCARD ALL: UNLISTEN * among others.
        for reset in ("CLOSE ALL; UNLISTEN *; RESET ALL", "DISCARD ALL"):
            a.execute("listen one")
            b.execute("notify one, 'before reset'")
            assert inbox.wait(3)[-1] == ("one", "before reset")
            a.execute(reset)
            b.execute("notify one, 'after reset'")
            assert inbox.quiet() == [], reset
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            a.execute("select 1; listen one")  # LISTEN is pgshard's: alone only
        # The listeners give the channels up once no client listens.
        def channels():
            return [r["channels"] for r in admin_rows(px, "show listeners")]
        wait_for(lambda: channels() and not any(channels()), 5, message="the listeners to UNLISTEN")
        with px.connect(autocommit=True) as c:
            c.execute("listen gone")
            assert any(channels())
        # c left: its channel is given up too.
        wait_for(lambda: not any(channels()), 5,
                 message="the listeners to UNLISTEN a departed client's channel")


def test_channel_names(px):
    """Unquoted names fold to lower case, quoted ones keep theirs, long ones
    are cut to 63 bytes — on both sides, as PostgreSQL does."""
    long_name = "n" * 70
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute('listen "Mixed"')
        a.execute("listen Lower")
        a.execute(f"listen {long_name}")
        b.execute("notify mixed, 'to mixed'")  # nobody listens on "mixed"
        b.execute('notify "Mixed", \'to Mixed\'')
        b.execute("notify LOWER, 'to lower'")
        b.execute(f'notify "{long_name}", \'long\'')
        got = inbox.wait(3)
        assert sorted(got) == sorted([("Mixed", "to Mixed"), ("lower", "to lower"),
                                      ("n" * 63, "long")]), got
        assert inbox.quiet(0.3) == []
        # Through the extended protocol (a pipeline: Parse, Bind, Execute).
        with a.pipeline():
            a.execute('listen "Ext Chan"')
        b.execute('notify "Ext Chan", \'extended\'')
        assert inbox.wait(4)[3] == ("Ext Chan", "extended")


def test_a_client_in_a_transaction_waits(px):
    """Notifications reach a client only between its transactions."""
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen waits")
        a.execute("begin")
        a.execute("select * from users where id = %s", (px.k0[0],))
        b.execute("notify waits, 'while in a transaction'")
        b.execute("insert into users (id, v) values (%s, 'x')", (px.k1[2],))  # trigger: inserts
        assert inbox.quiet(0.6) == []
        a.execute("commit")
        assert inbox.wait(1) == [("waits", "while in a transaction")]


def test_databases_are_apart(tables, sharded_proxy):
    """Two databases with a channel of the same name: each client hears its
    own database only."""
    ports = {}
    for shard in tables.shards:
        with tables.connect_primary(shard.name, autocommit=True) as conn:
            if not conn.execute("select 1 from pg_database where datname = 'listen_other'"
                                ).fetchone():
                conn.execute("create database listen_other")
        ports[shard.name] = shard.primary_port
    other = "".join(f"\n[shard.other.{name}]\nprimary = host=127.0.0.1 port={port} "
                    f"dbname=listen_other user=postgres\n" for name, port in ports.items())
    px = start(sharded_proxy, extra_ini=MAP + "\n[database.other]\npool_size = 4\n" + other)
    with px.connect(autocommit=True) as a, px.connect(dbname="other", autocommit=True) as o, \
            px.connect(autocommit=True) as b, px.connect(dbname="other", autocommit=True) as ob:
        in_a, in_o = Inbox(a), Inbox(o)
        a.execute("listen same")
        o.execute("listen same")
        b.execute("notify same, 'from app'")
        ob.execute("notify same, 'from other'")
        assert in_a.wait(1) == [("same", "from app")]
        assert in_o.wait(1) == [("same", "from other")]
        assert in_a.quiet(0.3) == [] and in_o.quiet(0.3) == []
        assert {r["database"] for r in admin_rows(px, "show listeners")} == {"app", "other"}


def test_listener_comes_back(px):
    """pg_terminate_backend on pgshard's listener of s1: it reconnects and
    LISTENs again, and what s1 raises afterwards arrives."""
    with px.connect(autocommit=True) as a:
        inbox = Inbox(a)
        a.execute("listen back")
        before = listener_backends(px.lab, "s1")
        assert len(before) == 1, before
        with px.lab.connect_primary("s1", autocommit=True) as s1:
            s1.execute("select pg_terminate_backend(%s)", (before[0][0],))
            # Raised on s1 until one arrives: those sent before the new
            # listener LISTENs are lost, as PostgreSQL's own would be.
            deadline = time.monotonic() + 20
            i = 0
            while not inbox.got and time.monotonic() < deadline:
                i += 1
                s1.execute("select pg_notify('back', %s)", (f"try {i}",))
                inbox.wait(1, timeout=0.2)
        assert inbox.got, "no notification from s1 after its listener was terminated"
        after = listener_backends(px.lab, "s1")
        assert len(after) == 1 and after[0][0] != before[0][0], (before, after)
        assert "listener app/s1 lost" in px.log_text()


def test_queue_is_capped(tables, sharded_proxy):
    """A client inside a long transaction while thousands of notifications
    arrive: pgshard holds at most max_notify_queue_bytes of them, drops the
    rest, and tells the client once."""
    px = start(sharded_proxy, max_notify_queue_bytes=4096)
    with px.connect(autocommit=True) as a:
        inbox = Inbox(a)
        a.execute("listen flood")
        a.execute("begin")
        a.execute("select * from users where id = %s", (px.k0[0],))
        with px.lab.connect_primary("s0", autocommit=True) as s0:
            s0.execute("select pg_notify('flood', repeat('x', 100) || g)"
                       " from generate_series(1, 3000) g")
        time.sleep(0.5)  # let them all reach pgshard while a is in its transaction
        a.execute("commit")
        inbox.quiet(0.5)
        kept = len(inbox.got)
        assert 10 <= kept <= 4096 // 100, kept  # ~120 bytes each
        assert [p for _, p in inbox.pairs()] == [("x" * 100) + str(g) for g in range(1, kept + 1)]
        dropped = [n for n in inbox.notices if "dropped" in n[2]]
        assert len(dropped) == 1, inbox.notices
        severity, sqlstate, message = dropped[0]
        assert f"{3000 - kept} notifications" in message and message.startswith("pgshard:")
        assert (severity, sqlstate) == ("WARNING", "01000")
        # Later ones arrive again.
        with px.lab.connect_primary("s1", autocommit=True) as s1:
            s1.execute("select pg_notify('flood', 'after')")
        assert inbox.wait(kept + 1)[-1] == ("flood", "after")


@pytest.fixture
def px2pc(tables, sharded_proxy):
    return start(sharded_proxy, cross_shard_writes="2pc")


def test_notify_refused_by_prepare(px2pc):
    """A transaction over two shards commits in two phases, and PostgreSQL
    refuses PREPARE TRANSACTION after NOTIFY: the COMMIT fails with that
    error (no hang), nothing is committed anywhere, the session goes on."""
    px = px2pc
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen twopc")
        b.execute("begin")
        b.execute("insert into users (id, v) values (%s, 'x')", (px.k0[3],))
        b.execute("insert into users (id, v) values (%s, 'x')", (px.k1[3],))
        b.execute("notify twopc, 'never'")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
            b.execute("commit")
        assert "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY" \
            in str(err.value)
        assert b.execute("select 1").fetchone() == (1,)
        for shard, key in (("s0", px.k0[3]), ("s1", px.k1[3])):
            with px.lab.connect_primary(shard) as conn:
                assert conn.execute("select count(*) from users where id = %s",
                                    (key,)).fetchone()[0] == 0
                assert conn.execute("select count(*) from pg_prepared_xacts").fetchone()[0] == 0
        got = [p for c, p in inbox.quiet(0.5) if c == "twopc"]
        assert got == []
        # On one shard it commits in one phase, and is delivered.
        with b.transaction():
            b.execute("insert into users (id, v) values (%s, 'y')", (px.k0[3],))
            b.execute("notify twopc, 'one shard'")
        assert inbox.wait(1) == [("twopc", "one shard")]


def test_session_pooling_passes_through(tables, sharded_proxy):
    """Session pooling: LISTEN runs on the client's own server, as before;
    pgshard opens no listener."""
    px = start(sharded_proxy, pool_mode="session", pool_size=8)
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen sess")
        b.execute("notify sess, 'direct'")
        assert inbox.wait(1) == [("sess", "direct")]
        assert listener_backends(px.lab, "s0") == []
        assert admin_rows(px, "show listeners") == []


def test_listener_follows_a_promotion(failover_lab, failover_proxy):
    """s0's primary stops and a replica is promoted: pgshard's listener of s0
    moves to the new primary, and what is raised there arrives."""
    lab = failover_lab
    px = failover_proxy(extra_ini="[table.app.users]\ncolumn = id\ntype = bigint\n"
                        "strategy = hash\n", lag_check_interval_ms=50)
    s0 = lab.shard("s0")
    promoted = s0.replica_ports[0]
    with px.connect(autocommit=True) as a:
        inbox = Inbox(a, pump="/* pgshard: shard=s1 */ select 1")
        a.execute("listen moved")
        assert len(listener_backends(lab, "s0")) == 1
        lab.stop_server(s0.primary_port, mode="immediate")
        with lab.connect_port(promoted) as direct:
            assert direct.execute("select pg_promote(true, 30)").fetchone()[0] is True
        with lab.connect_port(promoted, autocommit=True) as direct:
            deadline = time.monotonic() + 20
            i = 0
            while not inbox.got and time.monotonic() < deadline:
                i += 1
                direct.execute("select pg_notify('moved', %s)", (f"try {i}",))
                inbox.wait(1, timeout=0.2)
            assert inbox.got, "nothing raised on the promoted primary arrived"
            assert direct.execute("select count(*) from pg_stat_activity where"
                                  " application_name = 'pgshard_listen'").fetchone()[0] == 1


def test_one_shard_pass_through(proxy):
    """One shard, no replicas: the pass-through pooler. LISTEN is pgshard's
    there too — a simple query, or a Parse and Bind the server gets and an
    Execute it does not — and holds no server."""
    px = proxy(pool_size=2)
    with px.connect(autocommit=True) as a, px.connect(autocommit=True) as b:
        inbox = Inbox(a)
        a.execute("listen simple")
        with a.pipeline():
            a.execute('listen "Piped"')
        a.execute("begin")
        a.execute("listen rolled_back")
        a.execute("rollback")
        b.execute("notify simple, '1'")
        b.execute('notify "Piped", \'2\'')
        b.execute("notify rolled_back, '3'")
        assert sorted(inbox.wait(2)) == [("Piped", "2"), ("simple", "1")]
        assert inbox.quiet(0.3) == []
        clients = admin_rows(px, "show clients")
        assert clients and not any(c["pinned"] for c in clients), clients
        # One listening connection, with the two channels committed.
        wait_for(lambda: [r["channels"] for r in admin_rows(px, "show listeners")] == [2], 5,
                 message="one listener with two channels")
        assert len(listener_backends(px.lab, "s0")) == 1


def test_a_client_that_does_not_read(tables, sharded_proxy):
    """An idle client that reads nothing while ~60 MB of notifications
    arrive: pgshard holds at most max_notify_queue_bytes of output for it
    (its RSS does not follow the flood), drops the rest, and says so with
    the next notification once the client reads again."""
    import socket
    px = start(sharded_proxy, workers=1, max_notify_queue_bytes=65536)

    def rss_kb():
        with open(f"/proc/{px.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    with px.raw(timeout=30) as raw:
        raw.login()
        raw.simple_query("listen flood")
        before = rss_kb()
        with px.lab.connect_primary("s0", autocommit=True) as s0:
            for _ in range(6):
                s0.execute("select pg_notify('flood', repeat('x', 1000) || g)"
                           " from generate_series(1, 10000) g")
        wait_for(lambda: sum(r["notifications"] for r in admin_rows(px, "show listeners"))
                 >= 60000, 60, message="pgshard to receive the flood")
        grown = rss_kb() - before
        with open(f"/proc/{px.proc.pid}/maps") as maps:
            sanitized = "libasan" in maps.read()  # its quarantine keeps what is freed
        if not sanitized:
            assert grown < 16 * 1024, f"pgshard grew by {grown} kB for a client that reads nothing"
        # It reads what was kept (the socket's buffers and pgshard's cap).
        raw.sock.settimeout(1.0)
        kept = 0
        try:
            while True:
                kind, _ = raw.read_message()
                assert kind == "A"
                kept += 1
        except socket.timeout:
            pass
        assert 0 < kept < 60000, kept
        raw.sock.settimeout(10)
        with px.lab.connect_primary("s1", autocommit=True) as s1:
            s1.execute("select pg_notify('flood', 'after')")
        kind, payload = raw.read_message()
        assert kind == "N", (kind, payload)
        fields = pgwire.ServerError(pgwire.parse_error_fields(payload))
        assert fields.sqlstate == "01000" and "dropped" in fields.message, payload
        assert f"{60000 - kept} notifications" in fields.message, (kept, fields.message)
        kind, payload = raw.read_message()
        assert kind == "A" and payload.endswith(b"flood\0after\0"), payload
