"""The admin console: `psql -d pgshard` as a user with admin = true.

Every SHOW is checked against state the test made (clients it opened,
servers its queries took, statistics of the requests it sent, the lab's
shards and replicas), through psql (simple protocol) and psycopg
(extended protocol), and every command's authorisation: a user without
admin = true gets 42501, at login and for each statement after a reload
takes admin away.
"""
import struct
import subprocess
import time

import psycopg
import pytest

import pgwire
from conftest import PGSHARDCTL
from support import wait_for
from test_replicas import FAST, wait_replicas_readable
from test_twophase_e2e import (committed_gids, start_2pc_proxy, twopc_e2e,  # noqa: F401 (fixture)
                               write_everywhere)


def admin(px, **kwargs):
    return px.connect(user="admin", password="adminpw", dbname="pgshard", autocommit=True,
                      **kwargs)


def rows(conn, sql):
    cur = conn.execute(sql)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def psql(px, sql, user="admin", password="adminpw"):
    env = {"PGPASSWORD": password, "PATH": "/usr/bin:/bin"}
    return subprocess.run(["psql", "-X", "-A", "-F", "|", "-h", "127.0.0.1", "-p", str(px.port),
                           "-U", user, "-d", "pgshard", "-c", sql],
                          capture_output=True, text=True, timeout=30, env=env)


def test_non_admin_users_are_refused(proxy):
    px = proxy()
    with pytest.raises(psycopg.OperationalError) as exc:
        px.connect(dbname="pgshard", autocommit=True)
    assert "pgshard:" in str(exc.value) and "admin" in str(exc.value)
    out = psql(px, "show version", user="app", password="secret")
    assert out.returncode != 0 and "42501" in px.log_text()


def test_admin_rights_are_checked_for_every_statement(proxy):
    px = proxy()
    conn = admin(px)
    try:
        assert rows(conn, "show version")[0]["version"].startswith("pgshard ")
        # A reload that takes admin away takes it at the next statement.
        before = px.log_text().count("reloaded ")
        px.reconfigure(users={"admin": ("adminpw", False)})
        wait_for(lambda: px.log_text().count("reloaded ") > before, 10, message="the reload")
        for sql in ("show clients", "show version", "reload", "kill 1", "shutdown"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                conn.execute(sql)
            assert str(exc.value).startswith("pgshard:"), exc.value
        assert px.proc.poll() is None, "a refused SHUTDOWN stopped pgshard"
    finally:
        conn.close()


def test_show_clients_servers_pools_and_kill(proxy, primary):
    px = proxy(pool_size=4)
    apps = [px.connect(autocommit=True) for _ in range(3)]
    busy = px.connect()
    try:
        busy.execute("select 1")  # a transaction holds its server
        with admin(px) as conn:
            clients = rows(conn, "show clients")
            mine = {c.info.backend_pid for c in apps + [busy]}
            listed = {r["id"]: r for r in clients}
            assert mine <= set(listed), (mine, listed)
            for pid in mine:
                assert listed[pid]["database"] == "app" and listed[pid]["user"] == "app"
            assert listed[busy.info.backend_pid]["tx"] == "T"
            assert listed[busy.info.backend_pid]["servers"] == 1
            assert listed[conn.info.backend_pid]["state"] == "admin"

            servers = rows(conn, "show servers")
            held = [s for s in servers if s["client"] == busy.info.backend_pid]
            assert len(held) == 1 and held[0]["state"] == "active" and held[0]["tx"] == "T"
            # The pid is the server's own: the lab primary lists it.
            backend = primary.execute("select state from pg_stat_activity where pid = %s",
                                      (held[0]["pid"],)).fetchone()
            assert backend == ("idle in transaction",), backend

            pools = rows(conn, "show pools")
            app_pools = [p for p in pools if p["database"] == "app" and p["user"] == "app"]
            assert len(app_pools) == 1, pools
            p = app_pools[0]
            assert p["cl_active"] == 1 and p["sv_active"] == 1 and p["pool_size"] == 4
            assert p["sv_active"] + p["sv_idle"] + p["sv_connecting"] == \
                sum(1 for s in servers if s["database"] == "app")
            assert p["pool_mode"] == "transaction"

            # KILL closes exactly that client.
            victim = apps[0]
            conn.execute(f"kill {victim.info.backend_pid}")
            with pytest.raises(psycopg.OperationalError):
                for _ in range(50):
                    victim.execute("select 1")
                    time.sleep(0.05)
            assert apps[1].execute("select 2").fetchone() == (2,)
            assert victim.info.backend_pid not in {r["id"] for r in rows(conn, "show clients")}
            with pytest.raises(psycopg.errors.UndefinedObject):
                conn.execute("kill 999999")
    finally:
        busy.close()
        for c in apps:
            c.close()


def test_show_stats_counts_requests(proxy):
    px = proxy()
    with admin(px) as conn:
        before = {r["database"]: r for r in rows(conn, "show stats")}.get("app")
    with px.connect(autocommit=True) as app:
        for i in range(20):
            app.execute("select %s::int", (i,))
        with pytest.raises(psycopg.Error):
            app.execute("select 1/0")
        with app.transaction():
            app.execute("select 1")
            app.execute("select 2")
    with admin(px) as conn:
        after = {r["database"]: r for r in rows(conn, "show stats")}["app"]
    base = before or {k: 0 for k in after}
    assert after["queries"] - base["queries"] >= 23
    assert after["errors"] - base["errors"] >= 1
    # 20 + 1 autocommit statements and one explicit transaction.
    assert after["transactions"] - base["transactions"] >= 22
    assert after["bytes_in"] > base["bytes_in"] and after["bytes_out"] > base["bytes_out"]
    assert 0 < after["p50_us"] <= after["p95_us"] <= after["p99_us"]
    assert after["avg_us"] > 0
    assert "22:" in after["error_classes"], after  # 1/0: division_by_zero, class 22


def test_show_nodes_and_shards_from_the_monitor(replica_lab, replica_proxy):
    lab = replica_lab
    px = replica_proxy(**FAST)
    wait_replicas_readable(px, lab)
    with admin(px) as conn:
        nodes = rows(conn, "show nodes")
        shards = {r["shard"]: r for r in rows(conn, "show shards")}
    assert len(nodes) == 6
    for shard in lab.shards:
        mine = [n for n in nodes if n["shard"] == shard.name]
        primary = [n for n in mine if n["role"] == "primary"]
        assert len(primary) == 1 and primary[0]["port"] == shard.primary_port
        assert primary[0]["writer"] is True and primary[0]["up"] is True
        assert primary[0]["in_recovery"] is False
        replicas = [n for n in mine if n["role"] == "replica"]
        assert sorted(n["port"] for n in replicas) == sorted(shard.replica_ports)
        assert all(n["in_recovery"] and n["up"] for n in replicas)
        # Every node has answered a check (the replicas are readable): its
        # latency in ms, a float (a check on loopback takes well under 1 ms).
        for n in mine:
            assert isinstance(n["check_ms"], float), n
            assert 0 < n["check_ms"] < 5000, n
        s = shards[shard.name]
        assert s["writer"] == f"127.0.0.1:{shard.primary_port}" and s["nodes"] == 3
        assert s["up_nodes"] == 3


def test_psql_and_extended_protocol_read_the_same_rows(proxy):
    px = proxy()
    out = psql(px, "show config")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "section|key|value"
    assert "database.app|pool_mode|transaction" in lines
    with admin(px) as conn:
        extended = rows(conn, "show config")
        assert {(r["section"], r["key"], r["value"]) for r in extended} >= \
            {("database.app", "pool_mode", "transaction"), ("pgshard", "workers", "2")}
        # Prepared (named) statements too, as drivers that prepare everything do.
        for _ in range(3):
            assert conn.execute("show version", prepare=True).fetchone()[0].startswith("pgshard")
        help_rows = rows(conn, "show help")
        assert any(r["command"] == "SHOW POOLS" for r in help_rows)
        for bad in ("show nothing", "drop table x", "kill abc"):
            with pytest.raises(psycopg.errors.SyntaxError) as exc:
                conn.execute(bad)
            assert str(exc.value).startswith("pgshard:")
        assert conn.execute("show version").fetchone()[0].startswith("pgshard")


def test_console_reads_extended_messages_whole(proxy):
    """The console answers the extended protocol itself, so it reads each
    message as PostgreSQL would: one that breaks the framing is 08P01 (the
    rest of the unit skipped to Sync), and the session goes on."""
    px = proxy()

    def until_ready(c):
        types, error = [], None
        while True:
            kind, payload = c.read_message()
            types.append(kind)
            if kind == "E" and error is None:
                error = pgwire.parse_error_fields(payload)
            if kind == "Z":
                return types, error

    parse = pgwire.message("P", b"v\0show version\0" + struct.pack("!h", 0))
    bind = pgwire.message("B", b"\0v\0" + struct.pack("!hhh", 0, 0, 0))
    execute = pgwire.message("E", b"\0" + struct.pack("!i", 0))
    sync = pgwire.message("S")
    with pgwire.RawConn(px.port) as c:
        c.login(user="admin", password="adminpw", database="pgshard")
        c.send(parse + sync)
        assert until_ready(c)[1] is None
        malformed = [
            pgwire.message("P", b"w\0show version\0" + struct.pack("!hi", 2, 25)),
            pgwire.message("P", b"w\0show version\0" + struct.pack("!h", 0) + b"x"),
            pgwire.message("B", b"\0v\0" + struct.pack("!hhhh", 2, 0, 0, 1) +
                           struct.pack("!i", -1) + struct.pack("!h", 0)),
            pgwire.message("B", b"\0v\0" + struct.pack("!hhhh", 0, 0, 0, 0)),
            pgwire.message("D", b"Sv\0x\0"),
            pgwire.message("C", b"Qv\0"),
            pgwire.message("E", b"\0"),
        ]
        for m in malformed:
            c.send(m + execute + sync)
            types, error = until_ready(c)
            assert error is not None and error["C"] == "08P01", (m, types, error)
            assert error["M"] == "pgshard: invalid message", (m, error)
            assert "D" not in types, (m, types)  # the Execute after it was skipped
            c.send(bind + execute + sync)
            types, error = until_ready(c)
            assert error is None and "D" in types, (m, types, error)


def test_reload_from_the_console(proxy):
    px = proxy()
    with admin(px) as conn:
        before = px.log_text().count("reloaded ")
        conn.execute("reload")
        wait_for(lambda: px.log_text().count("reloaded ") > before, 10, message="the reload")
        # A broken file is refused with its line, the running config kept.
        good = px.config_path.read_text()
        px.config_path.write_text(good + "\n[pgshard]\nworkers = many\n")
        try:
            with pytest.raises(psycopg.Error) as exc:
                conn.execute("reload")
            assert "line" in str(exc.value) and "workers" in str(exc.value), exc.value
        finally:
            px.config_path.write_text(good)
        assert conn.execute("show version").fetchone()[0].startswith("pgshard")
    px.assert_alive()


def test_shutdown_from_the_console(proxy):
    px = proxy()
    with admin(px) as conn:
        conn.execute("shutdown")
    assert px.wait_exit(20) == 0, px.log_tail()


def explain(conn, sql):
    return [(r["item"], r["value"]) for r in rows(conn, "explain route in app " + sql)]


def route_of(config, table, key):
    out = subprocess.run([str(PGSHARDCTL), "route", str(config), "app", table, str(key)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def test_explain_route_agrees_with_pgshardctl_route(shard_lab, sharded_proxy):
    from test_sharding import MAP
    px = sharded_proxy(extra_ini=MAP)
    with admin(px) as conn:
        for key in (1, 42, -7, 123456789):
            out = dict(explain(conn, f"select * from users where id = {key}"))
            shard = route_of(px.config_path, "users", key)
            assert out["route"] == "one shard" and out["shards"] == shard, (key, out)
            assert out["statement"] == "read"
            assert f"-> {shard}" in out["key"] and "slot" in out["key"], out
        out = explain(conn, "insert into events (id, v) values (5, 'a'), (2000000, 'b')")
        keys = [v for k, v in out if k == "key"]
        assert len(keys) == 2 and keys[0].endswith("-> s0") and keys[1].endswith("-> s1"), out
        # Under cross_shard_writes = deny the router refuses it, and says why.
        assert dict(out)["route"].startswith("refused (0A000)")
        assert "cross_shard_writes = deny" in dict(out)["route"]
        out = dict(explain(conn, "select count(*) from users"))
        assert out["route"] == "every shard of the list, rows merged" and out["shards"] == "s0, s1"
        out = dict(explain(conn, "update users set v = 'x'"))
        assert out["statement"] == "write", out
        assert out.get("cross_shard_writes", "").startswith("deny") or \
            "cross_shard_writes" in out["route"], out
        out = dict(explain(conn, "select * from users where id = $1"))
        assert "decided at Bind" in out["route"]
        out = dict(explain(conn, "/* pgshard: shard=s1 */ select 1"))
        assert out["hint"] == "s1" and out["shards"] == "s1"
        out = dict(explain(conn, "selec * from users"))
        assert out["route"].startswith("refused") and "42601" in out["route"]
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            conn.execute("explain route in nosuchdb select 1")
        # The extended protocol describes its columns too.
        cur = conn.execute("explain route in app select 1", prepare=True)
        assert [d.name for d in cur.description] == ["item", "value"]


def test_ban_and_unban_a_replica(replica_lab, replica_proxy):
    from test_replicas import served
    lab = replica_lab
    px = replica_proxy(**FAST)
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    banned, other = s0.replica_ports
    with admin(px) as conn, px.connect(autocommit=True) as app:
        conn.execute(f"ban 127.0.0.1:{banned}")
        # In effect with the monitor's next snapshot (published at once).
        def node():
            return [n for n in rows(conn, "show nodes") if n["port"] == banned][0]
        wait_for(lambda: node()["banned"] is True, 5, message="SHOW NODES to show the ban")
        assert node()["in_read_set"] is False
        wait_for(lambda: all(served(app, "s0")[0] == other for _ in range(10)), 5,
                 message="reads of s0 to leave the banned replica")
        ports = {served(app, "s0")[0] for _ in range(30)}
        assert ports == {other}, ports
        conn.execute(f"unban 127.0.0.1:{banned}")
        wait_for(lambda: banned in {served(app, "s0")[0] for _ in range(10)}, 10,
                 message="reads of s0 to reach the unbanned replica again")
        assert node()["banned"] is False
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute(f"ban 127.0.0.1:{s0.primary_port}")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("ban 127.0.0.1:1")


def test_pause_waits_for_transactions_and_holds_new_ones(proxy):
    import threading
    px = proxy()
    in_tx = px.connect()
    later = px.connect(autocommit=True)
    other = admin(px)
    try:
        in_tx.execute("select 1")  # a transaction runs
        done = {}

        def run(name, conn, sql):
            t0 = time.monotonic()
            try:
                conn.execute(sql)
                done[name] = time.monotonic() - t0
            except Exception as exc:  # noqa: BLE001 - reported by the asserts below
                done[name] = exc

        pauser = admin(px)
        pause = threading.Thread(target=run, args=("pause", pauser, "pause app"))
        pause.start()
        time.sleep(0.5)
        assert "pause" not in done, "PAUSE returned while a transaction ran"
        # The running transaction goes on and ends; then PAUSE answers.
        assert in_tx.execute("select 2").fetchone() == (2,)
        in_tx.commit()
        pause.join(10)
        assert isinstance(done.get("pause"), float), done
        # A new transaction waits while paused ...
        held = threading.Thread(target=run, args=("later", later, "select 3"))
        held.start()
        time.sleep(0.5)
        assert "later" not in done, "a statement ran on a paused database"
        assert rows(other, "show version")  # the console is not paused
        other.execute("resume app")
        held.join(10)
        assert isinstance(done.get("later"), float), done
        assert later.execute("select 4").fetchone() == (4,)
        pauser.close()
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            other.execute("pause nosuchdb")
    finally:
        other.execute("resume")
        for c in (in_tx, later, other):
            c.close()


def test_show_queries_per_normalised_statement(shard_lab, sharded_proxy):
    from test_sharding import MAP
    px = sharded_proxy(extra_ini=MAP)
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as direct:
            direct.execute("drop table if exists users")
            direct.execute("create table users (id bigint primary key, v text not null)")
    try:
        with px.connect(autocommit=True) as app:
            for i in range(40):
                app.execute(f"insert into users (id, v) values ({i}, 'v{i}')")
            for i in range(10):
                app.execute("select v from users where id = %s", (i,), prepare=True)
            for _ in range(3):
                app.execute("select count(*) from users")
            with pytest.raises(psycopg.Error):
                app.execute("insert into users (id, v) values (1, 'dup')")
        with admin(px) as conn:
            queries = {r["query"]: r for r in rows(conn, "show queries") if r["database"] == "app"}
        # Literals are $n: forty inserts are one statement.
        insert = queries["insert into users (id, v) values ($1, $2)"]
        assert insert["calls"] == 41 and insert["errors"] == 1 and insert["max_shards"] == 1
        select = queries["select v from users where id = $1"]
        assert select["calls"] == 10 and select["fanouts"] == 0
        count = queries["select count(*) from users"]
        assert count["calls"] == 3 and count["fanouts"] == 3 and count["max_shards"] == 2
        for q in (insert, select, count):
            assert 0 < q["p50_us"] <= q["p95_us"] <= q["p99_us"] and q["avg_us"] > 0
        totals = [r["total_ms"] for r in queries.values()]
        assert totals == sorted(totals, reverse=True)
    finally:
        for shard in shard_lab.shards:
            with shard_lab.connect_primary(shard.name) as direct:
                direct.execute("drop table if exists users")


def test_show_twophase_lists_a_commit_in_flight(twopc_e2e, sharded_proxy, monkeypatch):
    import threading
    lab = twopc_e2e
    monkeypatch.setenv("PGSHARD_FAULT", "2pc_pause_after_decision")  # 3 s before COMMIT PREPARED
    px = start_2pc_proxy(sharded_proxy)
    monkeypatch.delenv("PGSHARD_FAULT")

    def gids(conn):
        return [r for r in rows(conn, "show twophase") if r["gid"] is not None]

    with admin(px) as conn:
        assert gids(conn) == []
        # Recovery's own row: its counters, and how long ago its last pass was
        # (the startup pass ran).
        (rec,) = [r for r in rows(conn, "show twophase") if r["gid"] is None]
        assert rec["state"] == "recovery" and rec["driven_by"] == "recovery", rec
        assert rec["recovery_commits"] == 0 and rec["recovery_rollbacks"] == 0, rec
        assert rec["age_ms"] is not None and rec["age_ms"] >= 0, rec
        thread = threading.Thread(target=write_everywhere, args=(px,))
        thread.start()
        try:
            wait_for(lambda: committed_gids(lab), 10, interval=0.05,
                     message="a commit row on the decision shard")
            (gid,) = committed_gids(lab)
            listed = gids(conn)
            assert [(r["gid"], r["state"], r["driven_by"]) for r in listed] == \
                [(gid, "committed", "client")], listed
        finally:
            thread.join(30)
        wait_for(lambda: gids(conn) == [], 10,
                 message="the settled commit to leave SHOW TWOPHASE")
