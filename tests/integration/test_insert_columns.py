"""INSERT without a column list into a sharded table.

PostgreSQL takes `INSERT INTO users VALUES (1, 'x')`: the values fill the
table's columns in the catalog's order. pgshard learns each sharded table's
columns from the shards' primaries (its monitor asks with its checks, about
once a second), plans the statement with the list named, routes it by the
key's value and sends the shard the statement with the list. A list gone
stale (a column dropped behind pgshard's back) makes the shard refuse the
statement; it never places a row by the wrong value. Rows are checked on
each shard directly.
"""
import psycopg
import pytest

from support import wait_for
from test_sharding import MAP, keys_on

ACCOUNTS_MAP = """
[table.app.accounts]
column = id
type = bigint
strategy = hash
"""


@pytest.fixture
def tables(shard_lab):
    for shard in shard_lab.shards:
        with shard_lab.connect_primary(shard.name) as conn:
            conn.execute("drop table if exists users")
            conn.execute("create table users (id bigint primary key, v text not null)")
            conn.execute("drop table if exists accounts")
            conn.execute('create table accounts (note text, id bigint primary key, "Bal" numeric)')
    return shard_lab


def rows_on(lab, shard, table):
    with lab.connect_primary(shard) as conn:
        return conn.execute(f"select * from {table} order by id").fetchall()


def known(conn, sql, params=None):
    """Run SQL once pgshard knows the table's columns (until then it is
    refused with 0A000 'needs a column list'); True when it ran."""
    try:
        conn.execute(sql, params)
        return True
    except psycopg.errors.FeatureNotSupported as exc:
        assert "needs a column list" in str(exc), exc
        return False


def test_insert_values_without_columns(tables, sharded_proxy):
    px = sharded_proxy(extra_ini=MAP + ACCOUNTS_MAP)
    k0, k1, k2, k3 = keys_on(px.config_path, "users", "s0", range(1, 500), 4)
    j0, j1, j2 = keys_on(px.config_path, "users", "s1", range(1, 500), 3)
    with px.connect(autocommit=True) as conn:
        wait_for(lambda: known(conn, f"insert into users values ({k0}, 'a')"), 10,
                 message="pgshard learning users' columns")
        # Simple protocol, a column list of the key's position elsewhere.
        conn.cursor().execute(f"insert into users values ({j0}, 'b')", prepare=False)
        # Extended protocol, parameters; an alias; a schema-qualified name.
        conn.execute("insert into users values (%s, %s)", (k1, "c"))
        conn.execute("insert into public.users as u values (%s, %s)", (j1, "d"))
        # Several rows, one shard.
        conn.execute(f"insert into users values ({k2}, 'e'), ({k3}, 'f')")
        # The key is not the first column; a quoted mixed-case name.
        wait_for(lambda: known(conn, "insert into accounts values ('n', %s, 1.5)", (j2,)), 10,
                 message="pgshard learning accounts' columns")
        # RETURNING comes back as PostgreSQL sends it.
        assert conn.execute("insert into accounts values ('m', %s, 2) returning id, \"Bal\"",
                            (j0,)).fetchone() == (j0, 2)
    on = {s: [r[0] for r in rows_on(tables, s, "users")] for s in ("s0", "s1")}
    assert on == {"s0": sorted([k0, k1, k2, k3]), "s1": sorted([j0, j1])}, on
    accounts = {s: rows_on(tables, s, "accounts") for s in ("s0", "s1")}
    assert ("n", j2, 1.5) in [(a, b, float(c)) for a, b, c in accounts["s1"]]
    assert [r[1] for r in accounts["s0"]] == []


def test_a_stale_column_list_fails_never_misroutes(tables, sharded_proxy):
    """A column dropped directly on the shards: until pgshard reads the new
    columns, the statement it sends names the dropped one and the shard
    refuses it (42703); afterwards the values fill the new order and route
    by it."""
    px = sharded_proxy(extra_ini=MAP + ACCOUNTS_MAP)
    a0 = keys_on(px.config_path, "users", "s0", range(1, 500), 1)[0]
    a1 = keys_on(px.config_path, "users", "s1", range(1, 500), 1)[0]
    with px.connect(autocommit=True) as conn:
        wait_for(lambda: known(conn, "insert into accounts values ('x', %s, 1)", (a0,)), 10,
                 message="pgshard learning accounts' columns")
        for shard in tables.shards:
            with tables.connect_primary(shard.name) as direct:
                direct.execute("alter table accounts drop column note")
        # (id, "Bal") now. The key is the first value: a1 routes to s1.
        outcomes = set()

        def settled():
            try:
                conn.execute("insert into accounts values (%s, 7)", (a1,))
                outcomes.add("inserted")
                return True
            except psycopg.errors.UndefinedColumn:
                outcomes.add("42703")  # the stale list: refused by the shard
                return False
        wait_for(settled, 10, message="pgshard learning the new columns")
    assert [r[0] for r in rows_on(tables, "s1", "accounts")] == [a1]
    assert [r[0] for r in rows_on(tables, "s0", "accounts")] == [a0]


def test_without_a_known_layout_it_is_refused(tables, sharded_proxy):
    """A sharded table the shards do not have: its columns are never known,
    and the INSERT without a list is refused as before (0A000), not sent."""
    px = sharded_proxy(extra_ini=MAP + "\n[table.app.ghosts]\ncolumn = id\ntype = bigint\n"
                       "strategy = hash\n")
    with px.connect(autocommit=True) as conn:
        wait_for(lambda: known(conn, "insert into users values (%s, 'z')", (1,)), 10,
                 message="pgshard learning users' columns")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as exc:
            conn.execute("insert into ghosts values (1, 'x')")
        assert str(exc.value).startswith("pgshard:")
        assert "needs a column list" in str(exc.value)
        assert conn.execute("select 41 + 1").fetchone() == (42,)
