"""Every client follows a reload (SIGHUP), not only the ones that log in
after it.

A client moves to the new config at its next message between transactions;
a transaction open at the reload finishes on the map it began on. What
sessions opened before a reload must do exactly as new ones do: read from
replicas, follow a tenant or range moved to another shard (by simple query
and by statements prepared before the reload), see a promoted replica.
Where a statement ran is read from the shards directly or from the server's
own answer (`inet_server_port()`, `pg_is_in_recovery()`).
"""
import signal
import time

import psycopg
import pytest

from support import wait_for
from test_replicas import FAST, INSERT, MAP as RKV_MAP, RKV, keys_on, served, \
    wait_replicas_readable

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
