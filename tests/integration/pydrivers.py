"""What the Python driver suites (test_driver_*.py) share: the shard map,
the tables, keys by shard, and checks made on the shards themselves.

Every suite runs on the `replica_lab` (shards s0 and s1, each a primary and
two streaming replicas) through a `replica_proxy` with MAP, in both pool
modes. `users` is hashed on id; `plans` is in no map, so it is a reference
table (a copy on every shard). Tables are created directly on every
primary and the replicas are waited for, so that a read through pgshard (on
a replica) sees them at once.
"""

import pytest

from test_sharding import route_many

MAP = """\
[table.app.users]
column = id
type = bigint
strategy = hash
"""

USERS = ("id bigint primary key, name text, tags text[], at timestamptz, amount numeric,"
         " data bytea")
PLANS = "id int primary key, name text not null"
POOL_MODES = ["transaction", "session"]


def make_tables(lab, tables=None):
    """Empty `users` and `plans` (or TABLES: {name: body}) on every shard,
    no prepared transactions left, replicas caught up."""
    tables = tables or {"users": USERS, "plans": PLANS}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            for (gid,) in conn.execute("select gid from pg_prepared_xacts"
                                       " where database = current_database()").fetchall():
                conn.execute(f"rollback prepared '{gid}'")
            for name, body in tables.items():
                conn.execute(f"drop table if exists {name} cascade")
                conn.execute(f"create table {name} ({body})")
    lab.wait_caught_up()
    return lab


def start_proxy(replica_proxy, pool_mode, **overrides):
    """A pgshard on the replicated lab with MAP in POOL_MODE. Session
    pooling holds a server per client and node for the whole session, and
    pool_size is split over the workers: its pools are made large enough
    for a test's few clients wherever they land."""
    overrides.setdefault("extra_ini", MAP)
    if pool_mode == "session":
        overrides.setdefault("pool_size", 12)
    return replica_proxy(pool_mode=pool_mode, **overrides)


def url(px, user="app", password="secret"):
    return f"postgresql://{user}:{password}@127.0.0.1:{px.port}/app"


def route_keys(px, keys, table="users"):
    """{key: shard} as `pgshardctl route` (the proxy's own router) says."""
    keys = list(keys)
    return dict(zip(keys, route_many(px.config_path, table, [str(k) for k in keys])))


def keys_on(px, shard, n, start=1):
    """N keys of users that route to SHARD, from START up."""
    routed = route_keys(px, range(start, start + 4 * n + 100))
    picked = [k for k, s in routed.items() if s == shard][:n]
    assert len(picked) == n, f"not {n} keys on {shard}"
    return picked


def shards_holding(lab, key, table="users", column="id"):
    """The shards whose primary holds a row of TABLE with COLUMN = KEY."""
    found = []
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            if conn.execute(f"select count(*) from {table} where {column} = %s",
                            (key,)).fetchone()[0]:
                found.append(shard.name)
    return found


def rows_by_shard(lab, table="users", column="id"):
    """{shard: sorted COLUMN values of TABLE} read on every primary."""
    out = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            out[shard.name] = sorted(r[0] for r in conn.execute(f"select {column} from {table}"))
    return out


def assert_placed(px, lab, keys):
    """Every key of KEYS is on the shard pgshard's router names, and only
    there."""
    routed = route_keys(px, keys)
    for key in keys:
        assert shards_holding(lab, key) == [routed[key]], f"key {key}"


@pytest.fixture
def lab_tables(replica_lab):
    """The replicated lab with empty users and plans on every shard."""
    return make_tables(replica_lab)


@pytest.fixture(params=POOL_MODES)
def px(request, replica_proxy, lab_tables):
    """pgshard in front of it, in each pool mode."""
    return start_proxy(replica_proxy, request.param)
