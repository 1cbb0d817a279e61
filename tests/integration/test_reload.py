"""Every client follows a reload (SIGHUP), not only the ones that log in
after it.

A client moves to the new config at its next message between transactions;
a transaction open at the reload finishes on the map it began on. What
sessions opened before a reload must do exactly as new ones do: read from
replicas, follow a tenant or range moved to another shard (by simple query
and by statements prepared before the reload), see a promoted replica.
Where a statement ran is read from the shards directly or from the server's
own answer (`inet_server_port()`, `pg_is_in_recovery()`).

Also: 50 clients under load through a reload (every statement started
after the `reloaded` line follows the new map; no error; no server leaked,
SHOW SERVERS checked against pg_stat_activity); users and node conninfos a
reload adds or changes (pools at once, servers with the new conninfo);
sessions holding servers (session pooling, pinned) through a conninfo
change, a reorder of the shards and a dropped shard; health found by shard
names after a reload that adds a shard before another.
"""
import signal
import threading
import time

import psycopg
import pytest

from support import app_backends, wait_for
from test_sharding import route_one
from test_replicas import FAST, INSERT, MAP as RKV_MAP, RKV, keys_on, served, \
    wait_reads_on, wait_replicas_readable

MAP_BEFORE = """\
[table.app.events]
column = id
type = bigint
strategy = range
range = s0: - 1000000
range = s1: 1000000 -

[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant

[tenants.app]
42 = s1
"""

# The range boundary moves up (1,000,000 .. 2,000,000 now on s0) and
# tenant 42 moves to s0.
MAP_AFTER = """\
[table.app.events]
column = id
type = bigint
strategy = range
range = s0: - 2000000
range = s1: 2000000 -

[table.app.invoices]
column = tenant_id
type = bigint
strategy = tenant

[tenants.app]
42 = s0
"""


def reload_and_wait(px, **overrides):
    """Rewrite PX's config with OVERRIDES, SIGHUP it, and wait for the
    reload to be logged."""
    before = px.log_text().count("reloaded ")
    px.reconfigure(**overrides)
    wait_for(lambda: px.log_text().count("reloaded ") > before, 10,
             message="pgshard to log the reload")


def where(lab, table, column, value):
    """The shards holding rows of TABLE with COLUMN = VALUE, read directly."""
    found = []
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            n = conn.execute(f"select count(*) from {table} where {column} = %s",
                             (value,)).fetchone()[0]
            found += [shard.name] * n
    return found


@pytest.fixture
def moved_tables(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists events, invoices")
            conn.execute("create table events (id bigint primary key, v text not null)")
            conn.execute("create table invoices (tenant_id bigint not null, id bigint not null,"
                         " v text not null, primary key (tenant_id, id))")
    yield
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists events, invoices")


def test_sessions_opened_before_a_reload_follow_the_new_map(shard_lab, sharded_proxy,
                                                            moved_tables):
    px = sharded_proxy(extra_ini=MAP_BEFORE)
    plain = px.connect(autocommit=True)
    prepared = px.connect(autocommit=True)
    tenant = px.connect(autocommit=True, options="-c pgshard.tenant=42")
    set_tenant = px.connect(autocommit=True)
    in_tx = px.connect()
    try:
        set_tenant.execute("set pgshard.tenant = 42")
        # Before the reload: the old map, and statements prepared under it.
        plain.execute("insert into events (id, v) values (1500000, 'old map')")
        prepared.execute("insert into events (id, v) values (%s, %s)", (1500001, "old map"),
                         prepare=True)
        tenant.execute("insert into invoices (tenant_id, id, v) values (42, 1, 'old map')")
        in_tx.execute("insert into events (id, v) values (1500010, 'tx before')")
        assert where(shard_lab, "events", "id", 1500000) == ["s1"]
        assert where(shard_lab, "events", "id", 1500001) == ["s1"]
        assert where(shard_lab, "invoices", "id", 1) == ["s1"]

        reload_and_wait(px, extra_ini=MAP_AFTER)

        # The transaction open at the reload finishes on its map...
        in_tx.execute("insert into events (id, v) values (1500011, 'tx after')")
        in_tx.commit()
        assert where(shard_lab, "events", "id", 1500010) == ["s1"]
        assert where(shard_lab, "events", "id", 1500011) == ["s1"]
        # ... and its next one is on the new map.
        in_tx.execute("insert into events (id, v) values (1500012, 'next tx')")
        in_tx.commit()
        assert where(shard_lab, "events", "id", 1500012) == ["s0"]

        plain.execute("insert into events (id, v) values (1500002, 'new map')")
        assert where(shard_lab, "events", "id", 1500002) == ["s0"]
        # A read by key follows too: the row written under the old map is
        # where the new map does not look any more.
        assert plain.execute("select count(*) from events where id = 1500000").fetchone() == (0,)
        assert plain.execute("select count(*) from events where id = 1500002").fetchone() == (1,)

        # The statement prepared before the reload is analysed again.
        for i in range(3, 9):
            prepared.execute("insert into events (id, v) values (%s, %s)", (1500000 + i, "new"),
                             prepare=True)
            assert where(shard_lab, "events", "id", 1500000 + i) == ["s0"], i

        # Tenant 42, fixed at connect and set by SET, now lives on s0.
        tenant.execute("insert into invoices (tenant_id, id, v) values (42, 2, 'new map')")
        set_tenant.execute("insert into invoices (tenant_id, id, v) values (42, 3, 'new map')")
        assert where(shard_lab, "invoices", "id", 2) == ["s0"]
        assert where(shard_lab, "invoices", "id", 3) == ["s0"]
        assert tenant.execute("select id from invoices order by id").fetchall() == [(2,), (3,)]

        # Sessions opened after the reload agree.
        with px.connect(autocommit=True) as fresh:
            fresh.execute("insert into events (id, v) values (1500020, 'fresh')")
        assert where(shard_lab, "events", "id", 1500020) == ["s0"]
    finally:
        for conn in (plain, prepared, tenant, set_tenant, in_tx):
            conn.close()


def drop_shard(px, name):
    """Rewrite PX's config without shard NAME's section and SIGHUP it."""
    text = px.config_path.read_text()
    cut = text.index(f"[shard.app.{name}]")
    end = text.find("\n[", cut)
    text = text[:cut] + (text[end + 1:] if end >= 0 else "")
    tmp = px.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(px.config_path)
    before = px.log_text().count("reloaded ")
    px.send_signal(signal.SIGHUP)
    wait_for(lambda: px.log_text().count("reloaded ") > before, 10,
             message=f"pgshard to reload without shard {name}")


def test_a_session_whose_hinted_shard_is_dropped_is_closed(shard_lab, sharded_proxy):
    """A shard hint cannot silently become no hint: a session set to a shard
    the new map no longer has is closed, with the reason; one set to a shard
    that stays goes on."""
    px = sharded_proxy()
    gone = px.connect(autocommit=True)
    stays = px.connect(autocommit=True)
    try:
        gone.execute("set pgshard.shard = s1")
        stays.execute("set pgshard.shard = s0")
        assert gone.execute("select inet_server_port()").fetchone() == \
            (shard_lab.shard("s1").primary_port,)
        reload_and_wait(px, pool_size=3)  # the same shards: the hint holds
        assert gone.execute("select inet_server_port()").fetchone() == \
            (shard_lab.shard("s1").primary_port,)
        drop_shard(px, "s1")
        with pytest.raises(psycopg.OperationalError) as exc:
            gone.execute("select 3")
        # A FATAL: psycopg reports the message with the lost connection.
        assert 'pgshard: shard "s1" set by pgshard.shard is no longer in database' \
            in str(exc.value), exc.value
        assert "SQLSTATE 22023" in px.log_text()
        assert stays.execute("select inet_server_port()").fetchone() == \
            (shard_lab.shard("s0").primary_port,)
    finally:
        gone.close()
        stays.close()
    px.assert_alive()


def test_sessions_opened_before_a_reload_read_replicas(replica_lab, replica_proxy):
    lab = replica_lab
    px = replica_proxy(**FAST)
    wait_replicas_readable(px, lab)
    old = px.connect(autocommit=True)
    in_tx = px.connect()
    try:
        for shard in lab.shards:
            assert served(old, shard.name)[1] is True
        in_tx.execute("select 1")  # a transaction open across the reload
        # The same config again, then one that changes a pool size only:
        # neither may cost anyone the replicas.
        reload_and_wait(px)
        reload_and_wait(px, pool_size=5)
        # The open transaction's own reads stay where they were (primaries:
        # a read-write transaction), then it ends and follows.
        in_tx.commit()
        in_tx.autocommit = True  # psycopg would open a read-write transaction
        for conn in (old, in_tx):
            for shard in lab.shards:
                answers = [served(conn, shard.name) for _ in range(20)]
                on_replicas = sum(1 for port, rec in answers if rec)
                # A replica a late check took out for a moment may send one
                # read to the primary; not most of them.
                assert on_replicas >= 15, (shard.name, answers)
                assert {port for port, rec in answers if rec} <= set(shard.replica_ports)
    finally:
        old.close()
        in_tx.close()


def test_a_session_opened_before_a_reload_sees_a_promotion(failover_lab, failover_proxy):
    lab = failover_lab
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            conn.execute(f"create table rkv ({RKV})")
    lab.wait_caught_up()
    px = failover_proxy(extra_ini=RKV_MAP, **FAST)
    wait_replicas_readable(px, lab)
    s0 = lab.shard("s0")
    k0 = keys_on(px.config_path, "s0", 5)
    conn = px.connect(autocommit=True)
    try:
        assert conn.execute(INSERT + " returning inet_server_port()",
                            (k0[0], "before")).fetchone() == (s0.primary_port,)
        lab.wait_caught_up()
        reload_and_wait(px)
        lab.stop_server(s0.primary_port, mode="fast")
        promoted = s0.replica_ports[0]
        with lab.connect_port(promoted) as direct:
            assert direct.execute("select pg_promote(true, 30)").fetchone()[0] is True

        def write_lands():
            try:
                return conn.execute(INSERT + " returning inet_server_port(), pg_is_in_recovery()",
                                    (k0[1], "after promotion")).fetchone()
            except psycopg.Error:
                return None
        t0 = time.monotonic()
        row = wait_for(write_lands, 15, interval=0.05,
                       message="the session opened before the reload to write to the promoted "
                               "replica")
        print(f"the old session writes {time.monotonic() - t0:.2f} s after promotion")
        assert row == (promoted, False), row
        assert not conn.closed
    finally:
        conn.close()


def test_replicas_added_by_a_reload_serve_old_sessions(replica_lab, replica_proxy):
    """Nodes the reload adds get pools for sessions opened before it."""
    lab = replica_lab
    px = replica_proxy(replica=False, **FAST)
    old = px.connect(autocommit=True)
    try:
        for shard in lab.shards:
            assert served(old, shard.name) == (shard.primary_port, False)
        reload_and_wait(px, replica=True)
        for shard in lab.shards:
            def on_replica(name=shard.name):
                return served(old, name)[1] is True
            wait_for(on_replica, 10, interval=0.02,
                     message=f"the old session to read {shard.name} from a replica the reload added")
            port, _ = served(old, shard.name)
            assert port in shard.replica_ports or port == shard.primary_port
    finally:
        old.close()


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_session_holding_its_server_keeps_it_across_a_reload(shard_lab, sharded_proxy,
                                                               pool_mode):
    """Session state that lives on a server (a temporary table: session
    pooling, or a pinned session under transaction pooling) is still there
    after the client follows a reload that leaves its node in place."""
    px = sharded_proxy(pool_mode=pool_mode)
    conn = px.connect(autocommit=True)
    try:
        conn.execute("/* pgshard: shard=s0 */ create temp table kept (x int)")
        conn.execute("/* pgshard: shard=s0 */ insert into kept values (1), (2)")
        pid = conn.execute("/* pgshard: shard=s0 */ select pg_backend_pid()").fetchone()[0]
        reload_and_wait(px, pool_size=5)
        assert conn.execute("/* pgshard: shard=s0 */ select count(*), pg_backend_pid() from kept"
                            ).fetchone() == (2, pid)
    finally:
        conn.close()


# ---------------------------------------------------------------- many clients through a reload

def admin_connect(px):
    return px.connect(user="admin", password="adminpw", dbname="pgshard", autocommit=True)


def admin_rows(px, sql, conn=None):
    """SQL's rows on PX's admin console (through CONN if given), as dicts."""
    if conn is None:
        with admin_connect(px) as conn:
            return admin_rows(px, sql, conn)
    cur = conn.execute(sql)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def proxy_servers(px, conn=None):
    """{(shard, node): [backend pid, ...]} of the servers pgshard holds (SHOW
    SERVERS), connecting ones (no pid yet) as None."""
    held = {}
    for row in admin_rows(px, "show servers", conn):
        held.setdefault((row["shard"], row["node"]), []).append(row["pid"])
    return held


def pgshard_backends(lab, shard):
    """Backend pids on SHARD's primary that are pgshard's pool servers
    (application_name pgshard; its monitor's are 'pgshard monitor')."""
    with lab.connect_primary(shard) as conn:
        return sorted(r[0] for r in app_backends(conn, "application_name = 'pgshard'"))


def app_backend_count(lab, shard):
    with lab.connect_primary(shard) as conn:
        return len(app_backends(conn))


TENANT_PINNED, TENANT_HASHED = 42, 7


class Writer(threading.Thread):
    """One client of the load: single-row INSERTs, each followed by a
    SELECT of its key, until told to stop. Every statement is recorded
    with the monotonic time it started and ended; an error ends the loop
    and is kept."""

    def __init__(self, px, index, stop):
        super().__init__(daemon=True)
        self.px, self.index, self.stop = px, index, stop
        self.prepared = index % 2 == 1  # extended protocol, named statements
        self.tenant = {0: TENANT_PINNED, 5: TENANT_HASHED}.get(index % 10)
        self.ops = []  # (table, key, insert start, insert end, select start, select end, rows)
        self.error = None
        self.ready = threading.Event()

    def connect(self):
        kwargs = {"options": f"-c pgshard.tenant={self.tenant}"} if self.tenant else {}
        factory = psycopg.Cursor if self.prepared else psycopg.ClientCursor
        return psycopg.connect(self.px.conninfo(**kwargs), autocommit=True,
                               cursor_factory=factory)

    def statement(self, j):
        """Iteration J's (table, key, insert, params, select, params)."""
        i = self.index
        if self.tenant or j % 2 == 1:
            tenant = self.tenant or TENANT_PINNED
            key = (tenant, i * 100000 + j)
            return ("invoices", key,
                    "insert into invoices (tenant_id, id, v) values (%s, %s, %s)",
                    key + (f"c{i}-{j}",),
                    "select v from invoices where tenant_id = %s and id = %s", key)
        # Most keys are in the range the reload moves to s0; some stay.
        base = {3: 100000, 7: 3000000}.get(i % 10, 1000000) + i * 10000
        key = base + j
        return ("events", key, "insert into events (id, v) values (%s, %s)", (key, f"c{i}-{j}"),
                "select v from events where id = %s", (key,))

    def run(self):
        try:
            with self.connect() as conn:
                self.ready.set()
                j = 0
                while not self.stop.is_set():
                    assert j < 10000, "key space of the client used up"
                    table, key, insert, iparams, select, sparams = self.statement(j)
                    t0 = time.monotonic()
                    conn.execute(insert, iparams, prepare=self.prepared or None)
                    t1 = time.monotonic()
                    found = conn.execute(select, sparams, prepare=self.prepared or None).fetchall()
                    t2 = time.monotonic()
                    self.ops.append((table, key, t0, t1, t1, t2, len(found)))
                    j += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.ready.set()

    def inserts_started_after(self, t):
        return sum(1 for op in list(self.ops) if op[2] > t)


def shard_for(after, table, key, hashed):
    """The shard MAP_BEFORE (AFTER false) or MAP_AFTER names for KEY of
    TABLE; HASHED: that of the unpinned tenant (the same in both)."""
    if table == "events":
        return "s0" if key < (2000000 if after else 1000000) else "s1"
    if key[0] == TENANT_PINNED:
        return "s0" if after else "s1"
    return hashed


def test_fifty_clients_follow_a_reload_mid_load(shard_lab, sharded_proxy, moved_tables):
    """50 clients write and read single rows through a reload that re-pins
    tenant 42 (s1 -> s0) and moves the range boundary (1,000,000..2,000,000
    to s0): every statement started after the reload was logged follows the
    new map, every one that ended before the SIGHUP the old, rows read on
    each shard directly; nobody sees an error; pgshard never holds more than
    pool_size servers of a node, every server it has is one the shard knows
    and none is left behind."""
    pool_size = 6
    baseline = {s.name: app_backend_count(shard_lab, s.name) for s in shard_lab.shards}
    px = sharded_proxy(extra_ini=MAP_BEFORE, pool_size=pool_size, server_idle_timeout_ms=1500)
    hashed = route_one(px.config_path, "invoices", TENANT_HASHED)
    stop = threading.Event()
    writers = [Writer(px, i, stop) for i in range(50)]
    peaks = {s.name: 0 for s in shard_lab.shards}

    def sample_pools():
        for node, pids in proxy_servers(px, console).items():
            assert len(pids) <= pool_size, (node, pids)
        for shard in peaks:
            n = len(pgshard_backends(shard_lab, shard))
            peaks[shard] = max(peaks[shard], n)
            assert n <= pool_size, (shard, n)

    def wait_each(enough, what, timeout=20):
        deadline = time.monotonic() + timeout
        while not all(enough(w) for w in writers):
            assert not any(w.error for w in writers), [w.error for w in writers if w.error]
            assert time.monotonic() < deadline, f"timed out waiting for every client to {what}"
            sample_pools()
            time.sleep(0.1)

    console = admin_connect(px)
    t_start = time.monotonic()
    try:
        for w in writers:
            w.start()
        for w in writers:
            assert w.ready.wait(30), f"client {w.index} did not connect"
        wait_each(lambda w: len(w.ops) >= 10, "write under the old map")
        t_sighup = time.monotonic()
        before = px.log_text().count("reloaded ")
        px.reconfigure(extra_ini=MAP_AFTER)
        wait_for(lambda: px.log_text().count("reloaded ") > before, 10, interval=0.005,
                 message="pgshard to log the reload")
        t_logged = time.monotonic()
        wait_each(lambda w: w.inserts_started_after(t_logged) >= 10, "write under the new map")
    finally:
        stop.set()
        for w in writers:
            w.join(20)
    t_run = time.monotonic() - t_start
    assert not any(w.is_alive() for w in writers)
    errors = [(w.index, repr(w.error)) for w in writers if w.error]
    assert errors == [], errors

    # Where every row is, read on each shard directly.
    placed = {}
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            for (key,) in conn.execute("select id from events"):
                placed.setdefault(("events", key), []).append(shard.name)
            for key in conn.execute("select tenant_id, id from invoices"):
                placed.setdefault(("invoices", tuple(key)), []).append(shard.name)
    ops = [op for w in writers for op in w.ops]
    assert len(placed) == len(ops), "rows on the shards are not the rows written"
    counts = {"before": 0, "during": 0, "after": 0, "moved after": 0}
    for table, key, i0, i1, r0, r1, nread in ops:
        where_ = placed[(table, key)]
        assert len(where_) == 1, (table, key, where_)
        shard = where_[0]
        old, new = shard_for(False, table, key, hashed), shard_for(True, table, key, hashed)
        if i0 > t_logged:
            assert shard == new, (table, key, "written after the reload", shard)
            counts["after"] += 1
            counts["moved after"] += old != new
        elif i1 < t_sighup:
            assert shard == old, (table, key, "written before the reload", shard)
            counts["before"] += 1
        else:
            assert shard in (old, new), (table, key, shard)
            counts["during"] += 1
        # A read by key finds the row exactly when its map names the row's shard.
        if r0 > t_logged:
            assert nread == (shard == new), (table, key, shard, nread, "read after")
        elif r1 < t_sighup:
            assert nread == (shard == old), (table, key, shard, nread, "read before")
    assert counts["before"] >= 100 and counts["moved after"] >= 100, counts
    # Every client, tenant sessions and prepared statements included, wrote
    # on the new map.
    for w in writers:
        assert w.inserts_started_after(t_logged) >= 10, w.index

    # No server leaked: what pgshard holds is what the shards see, within
    # pool_size, and the idle ones close (server_idle_timeout_ms) back to
    # what was there before.
    def agree():
        held = proxy_servers(px, console)
        return all(sorted(held.get((s, 0), [])) == pgshard_backends(shard_lab, s) for s in peaks)
    wait_for(agree, 10, message="SHOW SERVERS to match pg_stat_activity on the shards")
    wait_for(lambda: proxy_servers(px, console) == {}, 10,
             message="pgshard's idle servers to close")
    console.close()
    wait_for(lambda: all(app_backend_count(shard_lab, s) == baseline[s] for s in peaks), 10,
             message=f"the shards' backends for app back to {baseline}")
    print(f"\n{len(ops)} inserts, {t_run:.1f} s of load ({counts}); reload logged "
          f"{t_logged - t_sighup:.3f} s after SIGHUP; peak servers {peaks}")
    px.assert_alive()


# ---------------------------------------------------------------- nodes and users a reload adds

def edit_and_reload(px, edit):
    """Rewrite PX's config file as EDIT(text) returns it, SIGHUP, and wait
    for the reload to be logged."""
    text = edit(px.config_path.read_text())
    tmp = px.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(px.config_path)
    before = px.log_text().count("reloaded ")
    px.send_signal(signal.SIGHUP)
    wait_for(lambda: px.log_text().count("reloaded ") > before, 10,
             message="pgshard to log the reload")
    assert "has errors" not in px.log_text(), px.log_tail()


def shard_section(text, name):
    """TEXT's [shard.app.NAME] section, from its header to the next one."""
    start = text.index(f"[shard.app.{name}]")
    end = text.find("\n[", start)
    return text[start:] if end < 0 else text[start:end + 1]


def with_primary_options(name, options):
    """An edit appending OPTIONS to the primary conninfo of shard NAME."""
    def edit(text):
        section = shard_section(text, name)
        lines = [line + " " + options if line.startswith("primary = ") else line
                 for line in section.split("\n")]
        return text.replace(section, "\n".join(lines))
    return edit


def backend_application(lab, shard, pid):
    with lab.connect_primary(shard) as conn:
        row = conn.execute("select application_name from pg_stat_activity where pid = %s",
                           (pid,)).fetchone()
    return row[0] if row else None


def test_a_user_added_by_a_reload_gets_pools_at_once(shard_lab, sharded_proxy, moved_tables):
    """A user the reload adds logs in and reaches both shards at once (its
    pools are made on the new config: no wait for query_wait_timeout_ms,
    no 53300), and the sessions already open go on."""
    px = sharded_proxy(extra_ini=MAP_BEFORE)
    old = px.connect(autocommit=True)
    try:
        old.execute("insert into events (id, v) values (1, 'old user')")
        with pytest.raises(psycopg.OperationalError):
            px.connect(user="newuser", password="newpw", autocommit=True)
        reload_and_wait(px, users={"newuser": "newpw"})
        t0 = time.monotonic()
        with px.connect(user="newuser", password="newpw", autocommit=True) as new:
            for key, shard in ((10, "s0"), (3000000, "s1")):
                new.execute("insert into events (id, v) values (%s, 'new user')", (key,))
                assert new.execute("select v from events where id = %s", (key,)).fetchone() == \
                    ("new user",)
                assert where(shard_lab, "events", "id", key) == [shard]
            for shard in shard_lab.shards:
                assert new.execute(f"/* pgshard: shard={shard.name} */ select inet_server_port()"
                                   ).fetchone() == (shard.primary_port,)
        took = time.monotonic() - t0
        assert took < 3, f"the new user's first statements took {took:.1f} s"
        pools = admin_rows(px, "show pools")
        assert {p["shard"] for p in pools if p["user"] == "newuser"} == {"s0", "s1"}, pools
        assert old.execute("select v from events where id = 1").fetchone() == ("old user",)
    finally:
        old.close()


def test_a_node_whose_conninfo_a_reload_changes_gets_new_servers(shard_lab, sharded_proxy):
    """A reload that changes s1's primary conninfo (application_name
    appended): a session opened before it runs its next statement on s1 on
    a server opened with the new conninfo, at once; the old servers of s1
    are closed, s0's are kept."""
    px = sharded_proxy(extra_ini=MAP_BEFORE)
    old = px.connect(autocommit=True)
    in_tx = px.connect()
    try:
        pids = {s: old.execute(f"/* pgshard: shard={s} */ select pg_backend_pid()").fetchone()[0]
                for s in ("s0", "s1")}
        for s, pid in pids.items():
            assert backend_application(shard_lab, s, pid) == "pgshard"
        tx_pid = in_tx.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone()[0]
        edit_and_reload(px, with_primary_options("s1", "application_name=reloaded_s1"))
        # The transaction open across the reload ends on its server, which
        # is closed when it is given back.
        assert in_tx.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone() == \
            (tx_pid,)
        in_tx.commit()
        wait_for(lambda: backend_application(shard_lab, "s1", tx_pid) is None, 5,
                 message="the server of the transaction open across the reload to be closed")
        pid = in_tx.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone()[0]
        assert backend_application(shard_lab, "s1", pid) == "reloaded_s1"
        in_tx.commit()
        t0 = time.monotonic()
        pid = old.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone()[0]
        took = time.monotonic() - t0
        assert took < 3, f"the first statement on s1 after the reload took {took:.1f} s"
        assert pid != pids["s1"]
        assert backend_application(shard_lab, "s1", pid) == "reloaded_s1"
        wait_for(lambda: backend_application(shard_lab, "s1", pids["s1"]) is None, 5,
                 message="the server opened with s1's old conninfo to be closed")
        assert old.execute("/* pgshard: shard=s0 */ select pg_backend_pid()").fetchone() == \
            (pids["s0"],)
        # A fresh session agrees.
        with px.connect(autocommit=True) as fresh:
            pid = fresh.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone()[0]
            assert backend_application(shard_lab, "s1", pid) == "reloaded_s1"
    finally:
        old.close()
        in_tx.close()


def s1_first(text):
    """An edit putting shard s1's section before s0's: s1 becomes shard 0."""
    s1 = shard_section(text, "s1")
    text = text.replace(s1, "")
    return text.replace("[shard.app.s0]", s1 + "\n[shard.app.s0]")


CHANGES = {
    # s1's primary opened with another conninfo from now on.
    "conninfo": with_primary_options("s1", "application_name=reloaded_s1"),
    # The same nodes, the shards in another order (other slots).
    "reorder": s1_first,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_session_holding_its_servers_follows_the_map(shard_lab, sharded_proxy, moved_tables,
                                                       pool_mode, change):
    """A session that holds its servers (session pooling, or a session
    pinned by a temporary table) through a reload that re-pins tenant 42
    and either changes s1's primary conninfo or puts s1 before s0: its
    statements follow the new map at once, its session state stays where
    it is (the server of s1 is kept, even one opened with the old conninfo,
    until the client leaves, as PgBouncer keeps a session's server until it
    is released), and that server is closed when the client disconnects."""
    px = sharded_proxy(extra_ini=MAP_BEFORE, pool_mode=pool_mode)
    conn = px.connect(autocommit=True)
    try:
        conn.execute("/* pgshard: shard=s1 */ create temp table kept (x int)")
        conn.execute("/* pgshard: shard=s1 */ insert into kept values (1)")
        pid = conn.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone()[0]
        conn.execute("insert into invoices (tenant_id, id, v) values (42, 1, 'old map')")
        # Prepared (a named statement), run by Bind/Execute after the reload.
        conn.execute("insert into events (id, v) values (%s, %s)", (1500000, "old map"),
                     prepare=True)
        assert where(shard_lab, "invoices", "id", 1) == ["s1"]
        assert where(shard_lab, "events", "id", 1500000) == ["s1"]
        edit_and_reload(px, lambda text: CHANGES[change](text.replace("42 = s1", "42 = s0")
                                                          .replace("1000000", "2000000")))
        t0 = time.monotonic()
        conn.execute("insert into invoices (tenant_id, id, v) values (42, 2, 'new map')")
        conn.execute("insert into events (id, v) values (%s, %s)", (1500001, "new map"),
                     prepare=True)
        assert time.monotonic() - t0 < 3
        assert where(shard_lab, "invoices", "id", 2) == ["s0"]
        assert where(shard_lab, "events", "id", 1500001) == ["s0"]
        assert conn.execute("select count(*) from invoices where tenant_id = 42").fetchone() == (1,)
        assert conn.execute("select v from events where id = 1500001").fetchone() == ("new map",)
        assert conn.execute("/* pgshard: shard=s1 */ select count(*), pg_backend_pid() from kept"
                            ).fetchone() == (1, pid)
        if change == "conninfo":
            assert "keeps its server of shard s1" in px.log_text()
    finally:
        conn.close()
    wait_for(lambda: backend_application(shard_lab, "s1", pid) is None, 5,
             message="the session's server of s1 to be closed once its client left")
    with px.connect(autocommit=True) as fresh:
        new_pid = fresh.execute("/* pgshard: shard=s1 */ select pg_backend_pid()").fetchone()[0]
        assert backend_application(shard_lab, "s1", new_pid) == \
            ("reloaded_s1" if change == "conninfo" else "pgshard")


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_a_session_holding_a_server_of_a_dropped_shard_is_closed(shard_lab, sharded_proxy,
                                                                 pool_mode):
    """Its session state is on a shard the new map no longer has: the
    session cannot go on, and is told so (FATAL 57P01, as a server's
    administrator would end it) at its next statement; one holding only
    s0's server goes on, on the new map."""
    px = sharded_proxy(pool_mode=pool_mode)
    gone = px.connect(autocommit=True)
    stays = px.connect(autocommit=True)
    try:
        gone.execute("/* pgshard: shard=s1 */ create temp table kept (x int)")
        stays.execute("/* pgshard: shard=s0 */ create temp table kept (x int)")
        stays.execute("/* pgshard: shard=s0 */ insert into kept values (7)")
        drop_shard(px, "s1")
        with pytest.raises(psycopg.OperationalError) as exc:
            gone.execute("/* pgshard: shard=s0 */ select 1")
        assert 'pgshard: shard "s1" that this session\'s state is on is no longer in database' \
            in str(exc.value), exc.value
        assert "SQLSTATE 57P01" in px.log_text()
        assert stays.execute("select x from kept").fetchone() == (7,)
        assert stays.execute("select inet_server_port()").fetchone() == \
            (shard_lab.shard("s0").primary_port,)
    finally:
        gone.close()
        stays.close()
    px.assert_alive()


def drop_section(name):
    def edit(text):
        return text.replace(shard_section(text, name), "")
    return edit


def test_health_follows_a_reload_that_adds_and_reorders_shards(replica_lab, replica_proxy):
    """Health is looked up by shard names and nodes: sessions opened on a
    config of s0 alone keep reading s0 from its replicas through a reload
    that adds s1 before it (s0 is then shard 1), and read s1 from its
    replicas once the monitor has checked them."""
    lab = replica_lab
    px = replica_proxy(**FAST)
    edit_and_reload(px, drop_section("s1"))
    wait_reads_on(px, "s0", set(lab.shard("s0").replica_ports))
    old = px.connect(autocommit=True)
    try:
        assert served(old, "s0")[1] is True
        px.write_config()  # both shards again, s0 first ...
        edit_and_reload(px, s1_first)  # ... and s1 put before it
        text = px.config_path.read_text()
        assert text.index("[shard.app.s1]") < text.index("[shard.app.s0]")
        answers = [served(old, "s0") for _ in range(20)]
        on_replicas = sum(1 for port, rec in answers if rec)
        assert on_replicas >= 15, answers
        assert {port for port, rec in answers if rec} <= set(lab.shard("s0").replica_ports)
        s1 = lab.shard("s1")
        wait_for(lambda: served(old, "s1")[1] is True, 10, interval=0.02,
                 message="the old session to read s1, which the reload added, from a replica")
        answers = [served(old, "s1") for _ in range(20)]
        assert sum(1 for port, rec in answers if rec) >= 15, answers
        assert {port for port, rec in answers if rec} <= set(s1.replica_ports)
        # Writes by hint go to each shard's primary.
        for shard in lab.shards:
            assert old.execute(f"/* pgshard: shard={shard.name} */ select inet_server_port(),"
                               " txid_current() is not null").fetchone() == \
                (shard.primary_port, True)
    finally:
        old.close()


def test_a_session_holding_a_replica_the_reload_removes_gives_it_back(replica_lab, replica_proxy):
    """Under session pooling a session keeps the replica server its reads
    went to; a reload that takes that replica out of the config (the
    operator stops reads there) gives the server back at the session's next
    statement, and its reads go to the replica that stays."""
    lab = replica_lab
    px = replica_proxy(pool_mode="session", **FAST)
    wait_replicas_readable(px, lab)
    conn = px.connect(autocommit=True)
    try:
        port, in_recovery = served(conn, "s0")
        assert in_recovery is True
        with lab.connect_port(port) as direct:
            pids = [r[0] for r in app_backends(direct, "application_name = 'pgshard'")]
        assert pids, "the session's replica server"
        edit_and_reload(px, lambda text: text.replace(
            f"replica = host=127.0.0.1 port={port} dbname=app user=postgres\n", ""))
        stays = set(lab.shard("s0").replica_ports) - {port}
        answers = [served(conn, "s0") for _ in range(10)]
        assert all(p != port for p, _ in answers), answers
        wait_for(lambda: served(conn, "s0")[0] in stays, 10, interval=0.02,
                 message="the session's reads to go to the replica that stays")

        def closed():
            with lab.connect_port(port) as direct:
                return not app_backends(direct, "application_name = 'pgshard'")
        wait_for(closed, 5, message="the server of the removed replica to be closed")
    finally:
        conn.close()
