"""A real framework through pgshard: Django 3.2 (Debian's python3-django,
psycopg2 underneath) with the minimal project in django_app/.

Django's settings can be configured once per process, so each test runs
its scenarios (django_app/scenarios.py) in a process of its own
(django_app/run.py) and asserts on what they report and on the rows each
shard holds. Models: Account on the sharded table dj_accounts (explicit
BigIntegerField key), Plan on the reference table dj_plans, Ticket on the
sharded table dj_tickets with Django's default auto id (refused: the key
is not in the INSERT). `migrate` runs through pgshard: its DDL goes to every
shard, django_migrations is a reference table.

Django's schema introspection (pg_catalog.pg_table_is_visible() and
friends) reads the catalog on one shard. The suite's pgshard runs with
cross_shard_writes = 2pc (which atomic() over two shards needs); the
refusals of a deny database are checked on a second pgshard.
"""
import json
import subprocess
from pathlib import Path

import pytest

from pydrivers import POOL_MODES, route_keys, start_proxy

RUN = Path(__file__).resolve().parent / "django_app" / "run.py"
MAP = """\
[table.app.dj_accounts]
column = id
type = bigint
strategy = hash

[table.app.dj_tickets]
column = id
type = bigint
strategy = hash
"""
TABLES = ("dj_accounts", "dj_tickets", "dj_plans", "django_migrations")


@pytest.fixture
def dj_lab(replica_lab):
    """No Django tables on any shard: each test migrates."""
    for shard in replica_lab.shards:
        with replica_lab.connect_primary(shard.name) as conn:
            conn.execute(f"drop table if exists {', '.join(TABLES)} cascade")
    replica_lab.wait_caught_up()
    return replica_lab


@pytest.fixture(params=POOL_MODES)
def px(request, replica_proxy, dj_lab):
    return start_proxy(replica_proxy, request.param, extra_ini=MAP, cross_shard_writes="2pc")


def django(px, *scenarios, **options):
    """Run SCENARIOS ((name, args) or name) in a Django process on PX;
    returns {name: observations}."""
    specs = []
    for item in scenarios:
        name, args = item if isinstance(item, tuple) else (item, {})
        specs.append(f"{name}:{json.dumps(args)}")
    proc = subprocess.run(["/usr/bin/python3", str(RUN), str(px.port), json.dumps(options),
                           *specs], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"django exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("RESULT "):])


def keys_on(px, shard, n, start=1):
    routed = route_keys(px, range(start, start + 4 * n + 100), table="dj_accounts")
    picked = [k for k, s in routed.items() if s == shard][:n]
    assert len(picked) == n
    return picked


def rows(lab, table="dj_accounts", column="id"):
    """{shard: sorted COLUMN of TABLE} on every primary."""
    out = {}
    for shard in lab.shards:
        with lab.connect_primary(shard.name) as conn:
            out[shard.name] = sorted(r[0] for r in conn.execute(f"select {column} from {table}"))
    return out


def assert_refused(observed, sqlstate="0A000"):
    assert observed.get("sqlstate") == sqlstate, observed
    assert observed["message"].startswith("pgshard:"), observed


def test_migrate(px, dj_lab):
    out = django(px, "migrate", "migrate")  # the second one finds nothing to do
    assert out["migrate"]["applied"] == [["drivertest", "0001_initial"]]
    for shard in dj_lab.shards:
        with dj_lab.connect_primary(shard.name) as conn:
            found = {r[0] for r in conn.execute(
                "select tablename from pg_tables where schemaname = 'public'")}
            assert set(TABLES) <= found, (shard.name, found)
            assert conn.execute("select count(*) from django_migrations"
                                " where app = 'drivertest'").fetchone()[0] == 1


def test_crud_by_key(px, dj_lab):
    k0, k1 = keys_on(px, "s0", 1)[0], keys_on(px, "s1", 1)[0]
    out = django(px, "migrate", ("crud", {"k0": k0, "k1": k1}))["crud"]
    assert out == {"got": [f"u{k1}", "free"], "saved": "renamed", "updated": 1, "k0": "bulk",
                   "deleted": 1, "gone": True}
    assert rows(dj_lab) == {"s0": [], "s1": [k1]}
    assert rows(dj_lab, "dj_plans") == {"s0": [1], "s1": [1]}


def test_keyless_reads(px, dj_lab):
    keys = keys_on(px, "s0", 4) + keys_on(px, "s1", 4, start=500)
    out = django(px, "migrate", ("keyless", {"keys": keys}))["keyless"]
    assert out["count"] == 8
    assert out["top"] == sorted(keys, reverse=True)[:3]
    assert out["filtered"] == sorted(keys[:3])
    assert out["exists"] is False
    assert out["grouped"] == [[None, 8]]
    assert float(out["sum"]) == sum(keys) / 8
    assert {s: len(v) for s, v in rows(dj_lab).items()} == {"s0": 4, "s1": 4}


@pytest.mark.parametrize("pool_mode", ["transaction"])
def test_iterator_one_shard(replica_proxy, dj_lab, pool_mode):
    """QuerySet.iterator() declares a cursor WITH HOLD (a server-side
    cursor in autocommit, on a replica) and fetches from it. Transaction
    pooling only: in session pooling the FETCH goes to the servers the
    session holds, not to the replica the cursor is on, and fails with
    34000 (a known bug of pgshard's FETCH routing)."""
    px = start_proxy(replica_proxy, pool_mode, extra_ini=MAP, cross_shard_writes="2pc")
    key, other = keys_on(px, "s0", 1)[0], keys_on(px, "s1", 1)[0]
    out = django(px, "migrate", ("iterate", {"key": key, "other": other, "keyless": False}))
    assert out["iterate"] == {"one_shard": {"ok": ["it"]}, "after": 2}


def test_iterator_keyless(px, dj_lab):
    """Over every shard Django's server-side cursor (DECLARE ... WITH HOLD
    in autocommit, FETCH FORWARD 2000) is gathered by pgshard and read
    whole; with DISABLE_SERVER_SIDE_CURSORS (Django's setting for
    transaction poolers) the iterator reads a plain merged SELECT. Both
    give the same rows."""
    key, other = keys_on(px, "s0", 1)[0], keys_on(px, "s1", 1)[0]
    want = {"one_shard": {"ok": ["it"]}, "keyless": {"ok": sorted([key, other])}, "after": 2}
    out = django(px, "migrate", ("iterate", {"key": key, "other": other}))["iterate"]
    assert out == want
    with dj_lab.connect_primary("s0") as s0, dj_lab.connect_primary("s1") as s1:
        s0.execute("truncate dj_accounts")
        s1.execute("truncate dj_accounts")
    out = django(px, ("iterate", {"key": key, "other": other}),
                 DISABLE_SERVER_SIDE_CURSORS=True)["iterate"]
    assert out == want


def test_atomic(px, dj_lab):
    k0, k1 = keys_on(px, "s0", 3), keys_on(px, "s1", 4)
    out = django(px, "migrate", ("atomic", {"k0": k0, "k1": k1}))["atomic"]
    assert out["one_shard"] == [[k1[0], "b"]]
    assert out["two_shards"] == {"ok": True}  # committed in two phases
    assert out["inside"] == 2
    assert out["after"] == sorted([k1[0], k0[0], k0[1], k1[2]])
    assert rows(dj_lab) == {"s0": sorted(k0[:2]), "s1": sorted([k1[0], k1[2]])}


def test_select_for_update(px, dj_lab):
    key = keys_on(px, "s1", 1)[0]
    out = django(px, "migrate", ("lock_by_key", {"key": key}))["lock_by_key"]
    assert out["locked"] == 1
    assert out["amount"].startswith("2.000")
    with dj_lab.connect_primary("s1") as s1:
        assert s1.execute("select amount from dj_accounts where id = %s",
                          (key,)).fetchone()[0] == 2


def test_types(px, dj_lab):
    key, null_key = keys_on(px, "s1", 1)[0], keys_on(px, "s0", 1)[0]
    out = django(px, "migrate", ("types", {"key": key, "null_key": null_key}))["types"]
    assert out["same"] == [True] * 5
    assert out["nulls"] == [None] * 5
    assert out["merged"] == sorted([[key, True, True], [null_key, None, None]])


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_errors_and_refusals(replica_proxy, dj_lab, pool_mode):
    """On a deny database: migrate (its introspection reads the catalog on
    one shard; nothing left to create), a unique violation from the shard,
    an auto-id INSERT and a keyless UPDATE refused by pgshard; the
    connection is used again after each."""
    migrator = start_proxy(replica_proxy, pool_mode, extra_ini=MAP, cross_shard_writes="2pc")
    django(migrator, "migrate")
    # The second pgshard reads django_migrations (a reference table) from a
    # replica: only once the replicas have replayed the migration.
    dj_lab.wait_caught_up()
    px = start_proxy(replica_proxy, pool_mode, extra_ini=MAP)
    key = keys_on(px, "s0", 1)[0]
    out = django(px, "migrate_attempt", ("errors", {"key": key}))
    assert out["migrate_attempt"] == {"ok": None}
    errors = out["errors"]
    assert errors["duplicate"]["sqlstate"] == "23505", errors["duplicate"]
    assert errors["after_duplicate"] == "first"
    assert_refused(errors["auto_id"])
    assert "column list naming id" in errors["auto_id"]["message"]
    assert_refused(errors["keyless_update"])
    assert errors["after"] == "first"
    assert_refused(errors["in_atomic"])
    assert errors["after_atomic"] == 1
    assert rows(dj_lab) == {"s0": [key], "s1": []}
    assert rows(dj_lab, "dj_tickets") == {"s0": [], "s1": []}
