"""Subqueries and WITH queries over sharded tables, differentially: pgshard
over two shards against one plain PostgreSQL holding the same rows.

The data and the comparison are test_cross_shard.py's (its module fixture
`xlab` loads xshard_gen's tables through pgshard and into a plain database;
`execute` runs a query in one protocol path, `difference` compares the
answers by columns, command tag, rows and raw bytes). Here xs_orders (hash
on id) and xs_items (hash on order_id) are sharded alike, xs_events (range
on id) differently, and both shards hold rows of each.

What runs per shard must give the plain database's answer in every path
(simple protocol with literals inline, extended with text and binary
parameters, a named cursor): a subquery or WITH query in FROM grouped by
the shard key under outer aggregates, GROUP BY, ORDER BY and LIMIT; a
WITH query filtering under an outer aggregate; a join with a grouped
subquery on the key; EXISTS, NOT EXISTS and IN correlated on the key;
nested subqueries; UNION ALL. What is not exact is refused with 0A000 and a
"pgshard:" message, and the session goes on: a subquery with LIMIT, GROUP
BY not on the key, a join not on the key inside, NOT IN, an uncorrelated
scalar subquery.

Run: PGSHARD_IT_PORT_BASE=7500 python3 -m pytest tests/integration/test_merge_subquery.py
"""
import pytest

import xshard_gen as xg
from test_cross_shard import (  # noqa: F401 - fixtures used by name
    MODES, _report_module_proxy, difference, execute, first_difference, is_pgshard_refusal,
    xlab)

DIFF_MODES = MODES + ["cursor"]


def query(*parts, compare="unordered"):
    """A Query from static SQL and literals: a str is SQL, a tuple
    (value,) a literal, a tuple (value, "key") a shard key literal."""
    q = xg.Query("subquery")
    for p in parts:
        if isinstance(p, str):
            q.add(p)
        else:
            q.lit(p[0], key=len(p) > 1)
    q.compare = compare
    return q


MERGED = {
    # A subquery grouped by the key, under outer aggregates.
    "grouped-then-aggregated": query(
        "SELECT count(*), sum(n), avg(n), min(n), max(q) FROM (SELECT order_id, count(*) AS n,"
        " sum(qty) AS q FROM xs_items WHERE qty > ", (3,), " GROUP BY order_id) s"),
    "grouped-then-grouped-limit": query(
        "SELECT n, count(*), avg(q) FROM (SELECT order_id, count(*) AS n, sum(qty) AS q"
        " FROM xs_items GROUP BY 1) s GROUP BY n ORDER BY n DESC LIMIT ", (4,),
        compare="ordered"),
    "grouped-ordered-limit": query(
        "SELECT order_id, total FROM (SELECT order_id, sum(qty * price) AS total FROM xs_items"
        " GROUP BY order_id HAVING count(*) > ", (1,), ") s ORDER BY total DESC NULLS LAST,"
        " order_id LIMIT 25 OFFSET ", (5,), compare="ordered"),
    "grouped-string-agg": query(
        "SELECT count(*), max(notes) FROM (SELECT order_id, string_agg(note, ',' ORDER BY"
        " item_no) AS notes FROM xs_items GROUP BY order_id) s WHERE notes LIKE ", ("%a%",)),
    # A WITH query filtering, then an outer aggregate.
    "cte-filter-aggregate": query(
        "WITH big AS (SELECT id, grp, amt FROM xs_orders WHERE amt > ", (100,), ")"
        " SELECT grp, count(*), sum(amt), avg(amt) FROM big GROUP BY grp ORDER BY grp NULLS"
        " FIRST", compare="ordered"),
    "cte-plain-count": query(
        "WITH o AS (SELECT * FROM xs_orders WHERE flag) SELECT count(*), min(d), max(ts)"
        " FROM o"),
    # Joins with a grouped subquery on the key.
    "join-grouped-subquery": query(
        "SELECT o.id, o.cat, s.n, s.q FROM xs_orders o JOIN (SELECT order_id, count(*) AS n,"
        " sum(qty) AS q FROM xs_items GROUP BY order_id) s ON s.order_id = o.id WHERE"
        " o.grp = ", (7,), " ORDER BY o.id", compare="ordered"),
    "join-grouped-subquery-aggregate": query(
        "SELECT o.cat, count(*), sum(s.n) FROM xs_orders o LEFT JOIN (SELECT order_id AS k,"
        " count(*) AS n FROM xs_items GROUP BY order_id) s ON o.id = s.k GROUP BY o.cat"
        " ORDER BY o.cat NULLS LAST", compare="ordered"),
    "join-cte-used-twice": query(
        "WITH s AS (SELECT order_id, count(*) AS n FROM xs_items GROUP BY order_id)"
        " SELECT count(*), sum(a.n + b.n) FROM s a JOIN s b ON a.order_id = b.order_id"
        " JOIN xs_orders o ON o.id = a.order_id WHERE o.qty < ", (20,)),
    # Subqueries in WHERE correlated on the key.
    "exists": query(
        "SELECT count(*), sum(o.qty) FROM xs_orders o WHERE EXISTS (SELECT 1 FROM xs_items i"
        " WHERE i.order_id = o.id AND i.qty > ", (30,), ")"),
    "not-exists": query(
        "SELECT o.id, o.name FROM xs_orders o WHERE NOT EXISTS (SELECT 1 FROM xs_items i"
        " WHERE o.id = i.order_id) ORDER BY o.id LIMIT ", (40,), compare="ordered"),
    "exists-limit-1": query(
        "SELECT grp, count(*) FROM xs_orders o WHERE EXISTS (SELECT 1 FROM xs_items i WHERE"
        " i.order_id = o.id ORDER BY i.price DESC LIMIT 1) GROUP BY grp ORDER BY grp",
        compare="ordered"),
    "exists-other-way": query(
        "SELECT count(*), sum(qty) FROM xs_items i WHERE NOT EXISTS (SELECT 1 FROM xs_orders o"
        " WHERE o.id = i.order_id)"),
    "in": query(
        "SELECT grp, count(*) FROM xs_orders WHERE id IN (SELECT order_id FROM xs_items WHERE"
        " price > ", (50,), ") GROUP BY grp ORDER BY grp NULLS FIRST", compare="ordered"),
    "any-grouped": query(
        "SELECT id, cat FROM xs_orders o WHERE o.id = ANY (SELECT order_id FROM xs_items"
        " GROUP BY order_id HAVING count(*) >= ", (3,), ") ORDER BY id", compare="ordered"),
    "in-through-cte": query(
        "WITH i AS (SELECT order_id FROM xs_items WHERE note IS NULL) SELECT count(*) FROM"
        " xs_orders WHERE id IN (SELECT order_id FROM i) AND qty > ", (10,)),
    # Nested subqueries.
    "nested": query(
        "SELECT count(*), sum(n) FROM (SELECT order_id, n FROM (SELECT order_id, count(*) AS n"
        " FROM xs_items GROUP BY order_id) a WHERE n > ", (1,), ") b"),
    "nested-joined": query(
        "SELECT o.tag, sum(b.n) FROM xs_orders o JOIN (SELECT a.k AS kk, a.n FROM (SELECT"
        " order_id AS k, count(*) AS n FROM xs_items GROUP BY order_id) a) b ON b.kk = o.id"
        " GROUP BY o.tag ORDER BY o.tag NULLS LAST", compare="ordered"),
    "nested-exists-in-subquery": query(
        "SELECT count(*), avg(amt) FROM (SELECT o.* FROM xs_orders o WHERE EXISTS (SELECT 1"
        " FROM xs_items i WHERE i.order_id = o.id AND EXISTS (SELECT 1 FROM xs_orders o2"
        " WHERE o2.id = i.order_id AND o2.grp > ", (5,), "))) s"),
    # Plain subqueries: SQLAlchemy's Query.count(), UNION ALL, DISTINCT key.
    "count-of-subquery": query(
        "SELECT count(*) AS count_1 FROM (SELECT xs_orders.id AS xs_orders_id FROM xs_orders"
        " WHERE xs_orders.grp = ", (3,), ") AS anon_1"),
    "union-all": query(
        "SELECT count(*), min(k), max(k) FROM (SELECT id AS k FROM xs_orders UNION ALL"
        " SELECT order_id FROM xs_items UNION ALL SELECT id FROM xs_events) s"),
    "distinct-key": query(
        "SELECT count(*) FROM (SELECT DISTINCT order_id, note FROM xs_items) s"),
}

REFUSED = {
    "subquery-limit": query(
        "SELECT count(*) FROM (SELECT id FROM xs_orders ORDER BY id LIMIT ", (100,), ") s"),
    "subquery-group-not-key": query(
        "SELECT max(c) FROM (SELECT grp, count(*) AS c FROM xs_orders GROUP BY grp) s"),
    "cte-aggregate-no-group": query(
        "WITH t AS (SELECT sum(qty) AS q FROM xs_items) SELECT * FROM t"),
    "subquery-join-not-key": query(
        "SELECT count(*) FROM (SELECT o.id FROM xs_orders o JOIN xs_items i ON i.item_no ="
        " o.grp) s"),
    "subquery-join-unlike": query(
        "SELECT count(*) FROM (SELECT o.id FROM xs_orders o JOIN xs_events e ON e.id = o.id) s"),
    "not-in": query(
        "SELECT count(*) FROM xs_orders WHERE id NOT IN (SELECT order_id FROM xs_items WHERE"
        " qty > ", (2,), ")"),
    "uncorrelated-scalar": query(
        "SELECT count(*) FROM xs_orders WHERE amt > (SELECT avg(price) FROM xs_items)"),
    "uncorrelated-in": query(
        "SELECT count(*) FROM xs_orders WHERE grp IN (SELECT qty FROM xs_items)"),
    "exists-unlike": query(
        "SELECT count(*) FROM xs_orders o WHERE EXISTS (SELECT 1 FROM xs_events e WHERE"
        " e.id = o.id)"),
}


@pytest.mark.parametrize("mode", DIFF_MODES)
@pytest.mark.parametrize("name", sorted(MERGED))
def test_merged_like_plain(xlab, name, mode):
    """A subquery shape that runs per shard answers as the plain database."""
    q = MERGED[name]
    with xlab.px.connect(autocommit=True) as px, xlab.connect_plain() as plain:
        want = execute(plain, q, mode)
        assert want.error is None, f"the plain database rejected {q.sql}: {want.error}"
        assert want.rows, f"{name}: no rows on the plain side, a weak comparison"
        got = execute(px, q, mode)
        assert got.error is None, f"{q.sql}\n  pgshard: {got.brief()}"
        why = difference(q, got, want)
        if why and ("rows" in why or "raw" in why):
            why += ": " + first_difference(got.raw if "raw" in why else got.rows,
                                           want.raw if "raw" in why else want.rows)
        assert why is None, f"{q.sql}\n  {why}\n  pgshard: {got.brief()}\n" \
                            f"  plain:   {want.brief()}"


def test_merged_shapes_span_both_shards(xlab):
    """The data under the subqueries is on both shards (else a comparison
    could pass by running on one): each shard alone answers the grouped
    subquery with fewer groups than the whole."""
    sql = "SELECT count(*) FROM (SELECT order_id FROM xs_items GROUP BY order_id) s"
    with xlab.connect_plain() as plain:
        whole = plain.execute(sql).fetchone()[0]
    parts = []
    for shard in ("s0", "s1"):
        with xlab.lab.connect_primary(shard) as conn:
            parts.append(conn.execute(sql).fetchone()[0])
    assert all(0 < p < whole for p in parts) and sum(parts) == whole, (parts, whole)
    with xlab.px.connect(autocommit=True) as px:
        assert px.execute(sql).fetchone()[0] == whole


@pytest.mark.parametrize("mode", MODES)
def test_keyed_inside(xlab, mode):
    """A key inside a subquery that is not exact across shards: one shard
    runs it, so it is answered (as the plain database does)."""
    key = xlab.key_on("s1", "xs_items", "order_id")
    q = query("SELECT * FROM (SELECT order_id, count(*), sum(qty) FROM xs_items WHERE"
              " order_id = ", (key, "key"), " GROUP BY 1 LIMIT 5) s")
    with xlab.px.connect(autocommit=True) as px, xlab.connect_plain() as plain:
        want = execute(plain, q, mode)
        got = execute(px, q, mode)
        assert want.error is None and len(want.rows) == 1, want.brief()
        assert difference(q, got, want) is None, f"pgshard: {got.brief()}\nplain: {want.brief()}"


@pytest.mark.parametrize("mode", MODES)
def test_refused(xlab, mode):
    """Shapes that are not exact per shard: 0A000 'pgshard: ...', in each
    protocol path, and the session goes on."""
    with xlab.px.connect(autocommit=True) as px, xlab.connect_plain() as plain:
        for name, q in sorted(REFUSED.items()):
            want = execute(plain, q, mode, fetch=False)
            assert want.error is None, f"the plain database rejected {q.sql}: {want.error}"
            got = execute(px, q, mode)
            assert is_pgshard_refusal(got.error), f"{name}: {q.sql}\n  pgshard: {got.brief()}"
            assert "cannot be merged across shards" in got.error[1], (name, got.error)
            if name == "not-in":
                assert "NOT IN" in got.error[1] and "NOT EXISTS" in got.error[1], got.error
            if name == "subquery-limit":
                assert "LIMIT" in got.error[1], got.error
            if name == "subquery-group-not-key":
                assert "GROUP BY does not include the shard key id" in got.error[1], got.error
            assert px.execute("SELECT 1").fetchone() == (1,)
