/*
 * test_merge_subquery.c — router/merge.c's subqueries and WITH queries
 * over sharded tables: which run per shard (a subquery or WITH query in
 * FROM that is the union of its rows on each shard; EXISTS, NOT EXISTS and
 * key IN (SELECT key ...) correlated on the shard key) and which are
 * refused, with their messages. SQL is lexed and analysed as the proxy
 * does it (pgs_analyze); the spec is checked like test_merge.c's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <pg_query.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/merge.h"
#include "pgshard/proto.h"
#include "pgshard/route.h"

/* ---- the database: built by hand ---- */

static pgs_key_t bound_100 = {.type = PGS_TYPE_BIGINT, .i = 100};
static pgs_range_t events_ranges[] = {
    {.shard = 0, .has_high = true, .high = &bound_100},
    {.shard = 1, .has_low = true, .low = &bound_100},
};

/* users, orders and items are sharded alike (hash, integer keys); events
 * by range; countries is a reference table. */
static pgs_table_t tables[] = {
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "orders", .column = "user_id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "items", .column = "order_id", .type = PGS_TYPE_INT, .strategy = PGS_STRATEGY_HASH},
    {.name = "events",
     .column = "id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_RANGE,
     .ranges = events_ranges,
     .nranges = 2},
};

static pgs_database_t db;
static pgs_lexed_t lexed;
static pgs_plan_t *plan;
static const pgs_merge_spec_t *spec;
static const char *last_sql;

static int group_setup(void **state) {
  memset(&db, 0, sizeof(db));
  db.name = "app";
  db.nshards = 2;
  db.cross_shard_reads = true;
  db.shardmap.tables = tables;
  db.shardmap.ntables = (int)PGS_ARRAY_LEN(tables);
  pgs_lex_init(&lexed);
  return 0;
}

static int group_teardown(void **state) {
  pgs_plan_unref(plan);
  plan = NULL;
  pgs_lex_free(&lexed);
  return 0;
}

/* ---- helpers ---- */

static void analyse(const char *sql) {
  last_sql = sql;
  pgs_plan_unref(plan);
  plan = NULL;
  spec = NULL;
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  plan = pgs_analyze(&db, &lexed);
  assert_non_null(plan);
  spec = plan->merge;
}

/* SQL merges: a spec without a refusal. */
static void merges(const char *sql) {
  analyse(sql);
  if (spec == NULL) fail_msg("%s\n  no merge spec", sql);
  if (spec->refuse[0]) fail_msg("%s\n  refused: %s", sql, spec->refuse);
}

/* SQL is refused with exactly MESSAGE, and the spec holds nothing else. */
static void refused(const char *sql, const char *message) {
  analyse(sql);
  if (spec == NULL) fail_msg("%s\n  no merge spec", sql);
  if (strcmp(spec->refuse, message) != 0)
    fail_msg("%s\n  refused with \"%s\"\n  expected   \"%s\"", sql, spec->refuse, message);
  assert_int_equal(spec->nhidden, 0);
  assert_null(spec->hidden_text);
  assert_null(spec->columns);
  assert_null(spec->keys);
  assert_null(spec->group);
  assert_false(spec->rewrite);
}

/* Column roles as letters: n none, c count, s sum, < min, > max, a avg. */
static const char *roles(void) {
  static char buf[64];
  static const char letters[] = "ncs<>a";
  int n = spec->ncolumns < 63 ? spec->ncolumns : 63;
  for (int i = 0; i < n; i++) buf[i] = letters[spec->columns[i].agg];
  buf[n] = '\0';
  return buf;
}

static void expect_roles(const char *want) {
  if (strcmp(roles(), want) != 0)
    fail_msg("%s\n  roles \"%s\", expected \"%s\"", last_sql, roles(), want);
}

/* The shards' text: WANT, and SQL libpg_query parses. */
static void expect_shard_sql(const char *want) {
  pgs_buf_t out;
  pgs_buf_init(&out);
  pgs_merge_shard_sql(spec, &lexed, &out);
  const char *text = (const char *)out.data;
  if (strcmp(text, want) != 0)
    fail_msg("%s\n  shards run \"%s\"\n  expected    \"%s\"", last_sql, text, want);
  PgQueryParseResult r = pg_query_parse(text);
  if (r.error) fail_msg("%s\n  shards' text does not parse: %s", last_sql, r.error->message);
  pg_query_free_parse_result(r);
  pgs_buf_free(&out);
}

#define SUBQUERY_USERS "a subquery reading sharded table users cannot be merged across shards"
#define SUBQUERY_ORDERS "a subquery reading sharded table orders cannot be merged across shards"
#define NOT_ON_KEYS(a, b)                                                                          \
  "a join of sharded tables " a " and " b                                                          \
  " not on their shard keys cannot be merged across "                                              \
  "shards"

/* ---- subqueries in FROM ---- */

static void test_derived_grouped_by_key(void **state) {
  /* Each user's orders are on one shard: the groups are whole there, and
   * the outer aggregates merge over them as over a table. */
  merges(
      "SELECT sum(c), count(*), avg(c), max(c) FROM (SELECT user_id, count(*) AS c FROM orders "
      "GROUP BY user_id) o");
  assert_true(spec->grouped);
  assert_int_equal(spec->ngroup, 0);
  expect_roles("scsca>"); /* avg's sum and count hidden first */
  merges(
      "SELECT o.c, count(*) FROM (SELECT user_id, count(*) AS c FROM orders GROUP BY 1) o "
      "GROUP BY o.c ORDER BY o.c DESC LIMIT 5");
  assert_int_equal(spec->ngroup, 1);
  assert_int_equal(spec->nkeys, 1);
  assert_int_equal(spec->limit_param, 1);
  /* The key among other group columns, qualified, and what groups may
   * hold when they are whole: HAVING, any aggregate. */
  merges(
      "SELECT * FROM (SELECT o.status, o.user_id, sum(total) FROM orders o GROUP BY o.status, "
      "o.user_id HAVING count(*) > 2) s");
  merges(
      "SELECT user_id, names FROM (SELECT user_id, string_agg(name, ',' ORDER BY name) AS names "
      "FROM orders GROUP BY user_id) s ORDER BY user_id");
  merges("SELECT count(*) FROM (SELECT user_id FROM orders GROUP BY user_id, ROLLUP (status)) s");
  /* DISTINCT including the key: equal rows are on one shard. */
  merges("SELECT count(*) FROM (SELECT DISTINCT user_id, status FROM orders) s");
  merges("SELECT count(*) FROM (SELECT DISTINCT * FROM orders) s");
  merges(
      "SELECT sum(total) FROM (SELECT DISTINCT ON (user_id) user_id, total FROM orders ORDER BY "
      "user_id, total DESC) s");
}

static void test_derived_plain(void **state) {
  /* SQLAlchemy's Query.count(). */
  merges("SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users) AS anon_1");
  expect_roles("c");
  merges("SELECT * FROM (SELECT * FROM users WHERE x > 1) s ORDER BY id LIMIT 5");
  assert_int_equal(spec->nkeys, 1);
  merges("SELECT s.name FROM (SELECT name, id FROM users WHERE city = $1) AS s");
  assert_false(spec->rewrite);
  expect_shard_sql("SELECT s.name FROM (SELECT name, id FROM users WHERE city = $1) AS s");
  /* Reference tables inside, an ORDER BY (without LIMIT) inside. */
  merges(
      "SELECT s.code, count(*) FROM (SELECT c.code FROM users u JOIN countries c ON c.code = "
      "u.country ORDER BY u.name) s GROUP BY 1");
  /* A subquery reading no sharded table is a reference table. */
  merges("SELECT * FROM users u JOIN (SELECT code FROM countries) c ON c.code = u.country");
}

static void test_derived_positions_stay(void **state) {
  /* Positions inside the subquery are its own; only the outer ones move
   * past the hidden columns. */
  merges(
      "SELECT c FROM (SELECT user_id, count(*) AS c FROM orders GROUP BY 1 ORDER BY 2) o "
      "ORDER BY user_id, 1 LIMIT 3");
  assert_int_equal(spec->nhidden, 1);
  expect_shard_sql(
      "SELECT user_id AS pgs_h0, c FROM (SELECT user_id, count(*) AS c FROM orders GROUP BY 1 "
      "ORDER BY 2) o ORDER BY user_id, 2 LIMIT 3");
}

static void test_derived_joined_on_key(void **state) {
  /* The subquery's key column is its key: colocated with users. */
  merges(
      "SELECT u.name, o.c FROM users u JOIN (SELECT user_id, count(*) AS c FROM orders GROUP BY "
      "user_id) o ON o.user_id = u.id ORDER BY o.c DESC, u.name LIMIT 10");
  merges(
      "SELECT u.name, o.c FROM users u JOIN (SELECT user_id AS uid, count(*) AS c FROM orders "
      "GROUP BY user_id) o ON u.id = o.uid");
  merges(
      "SELECT count(*) FROM users u LEFT JOIN (SELECT user_id, sum(total) FROM orders GROUP BY "
      "1) AS o (k, t) ON o.k = u.id");
  merges(
      "SELECT * FROM users JOIN (SELECT user_id AS id, count(*) FROM orders GROUP BY 1) o "
      "USING (id)");
  merges("SELECT * FROM (SELECT * FROM orders) o, users u WHERE u.id = o.user_id");
  merges(
      "SELECT * FROM users u JOIN (SELECT o.*, i.qty FROM orders o JOIN items i ON i.order_id = "
      "o.user_id) x ON x.user_id = u.id");
  /* A renamed key is known by its new name only. */
  refused(
      "SELECT * FROM users u JOIN (SELECT user_id, count(*) FROM orders GROUP BY 1) AS o (k, n) "
      "ON o.user_id = u.id",
      NOT_ON_KEYS("users", "orders"));
  /* A column that is not the key is no key, whatever its name. */
  refused(
      "SELECT * FROM users u JOIN (SELECT max(user_id) AS user_id FROM orders GROUP BY status, "
      "user_id) o ON o.user_id = u.id",
      NOT_ON_KEYS("users", "orders"));
  refused("SELECT * FROM users u JOIN (SELECT user_id + 0 AS k FROM orders) o ON o.k = u.id",
          NOT_ON_KEYS("users", "orders"));
  refused("SELECT * FROM users u JOIN (SELECT id FROM events GROUP BY id) e ON e.id = u.id",
          "a join of sharded tables events and users on their shard keys cannot be merged across "
          "shards: they are not sharded alike");
  refused("SELECT * FROM (SELECT * FROM orders) o, users u", NOT_ON_KEYS("orders", "users"));
}

static void test_derived_nested(void **state) {
  merges(
      "SELECT sum(n) FROM (SELECT user_id, n FROM (SELECT user_id, count(*) AS n FROM orders "
      "GROUP BY user_id) a WHERE n > 1) b");
  /* The key carried through two levels, renamed on the way. */
  merges(
      "SELECT u.name, b.n FROM users u JOIN (SELECT a.k AS kk, a.n FROM (SELECT user_id AS k, "
      "count(*) AS n FROM orders GROUP BY user_id) a) b ON b.kk = u.id");
  /* The inner level grouped by the outer one's key column. */
  merges(
      "SELECT count(*) FROM (SELECT a.k, sum(a.n) FROM (SELECT user_id AS k, total AS n FROM "
      "orders) a GROUP BY a.k) b");
  refused("SELECT * FROM (SELECT k FROM (SELECT user_id AS k FROM orders LIMIT 5) a) b",
          SUBQUERY_ORDERS ": it has LIMIT or OFFSET");
  refused(
      "SELECT * FROM (SELECT a.n, count(*) FROM (SELECT user_id AS k, total AS n FROM orders) a "
      "GROUP BY a.n) b",
      SUBQUERY_ORDERS ": its GROUP BY does not include the shard key k");
}

static void test_derived_set_operations(void **state) {
  merges("SELECT count(*) FROM (SELECT user_id FROM orders UNION ALL SELECT id FROM users) s");
  merges(
      "SELECT * FROM users u JOIN (SELECT user_id AS k FROM orders UNION ALL SELECT order_id "
      "FROM items) s ON s.k = u.id");
  merges(
      "SELECT count(*) FROM (SELECT user_id, status FROM orders UNION SELECT id, name FROM "
      "users) s");
  merges("SELECT count(*) FROM (SELECT user_id FROM orders EXCEPT SELECT order_id FROM items) s");
  /* Sharded unlike: still a union of the shards' rows, but no key. */
  merges("SELECT count(*) FROM (SELECT user_id FROM orders UNION ALL SELECT id FROM events) s");
  refused(
      "SELECT * FROM users u JOIN (SELECT user_id AS k FROM orders UNION ALL SELECT id FROM "
      "events) s ON s.k = u.id",
      NOT_ON_KEYS("users", "orders"));
  refused("SELECT count(*) FROM (SELECT user_id FROM orders UNION ALL SELECT 1) s", SUBQUERY_ORDERS
          ": a side of its UNION ALL reads no sharded table (every shard would return it)");
  refused("SELECT count(*) FROM (SELECT status FROM orders UNION SELECT name FROM users) s",
          SUBQUERY_ORDERS ": its UNION has no shard key at the same place on both sides");
  refused("SELECT count(*) FROM (SELECT user_id FROM orders UNION SELECT 7 AS id, id FROM users) s",
          SUBQUERY_ORDERS ": its UNION has no shard key at the same place on both sides");
  refused(
      "SELECT count(*) FROM ((SELECT user_id FROM orders) UNION ALL (SELECT id FROM users) LIMIT "
      "3) s",
      SUBQUERY_ORDERS ": it has LIMIT or OFFSET");
}

static void test_derived_refused(void **state) {
  refused("SELECT s.* FROM (SELECT id FROM users ORDER BY id DESC LIMIT 5) s ORDER BY 1",
          SUBQUERY_USERS ": it has LIMIT or OFFSET");
  refused("SELECT count(*) FROM (SELECT id FROM users OFFSET 10) s",
          SUBQUERY_USERS ": it has LIMIT or OFFSET");
  refused("SELECT count(*) FROM (SELECT id FROM users FETCH FIRST 3 ROWS ONLY) s",
          SUBQUERY_USERS ": it has LIMIT or OFFSET");
  refused("SELECT max(c) FROM (SELECT status, count(*) AS c FROM orders GROUP BY status) s",
          SUBQUERY_ORDERS ": its GROUP BY does not include the shard key user_id");
  refused("SELECT * FROM (SELECT count(*) FROM orders) s",
          SUBQUERY_ORDERS ": it aggregates without GROUP BY the shard key user_id");
  refused("SELECT * FROM (SELECT user_id FROM orders HAVING count(*) > 1) s",
          SUBQUERY_ORDERS ": it aggregates without GROUP BY the shard key user_id");
  refused("SELECT * FROM (SELECT max(total) FROM orders ORDER BY count(*)) s",
          SUBQUERY_ORDERS ": it aggregates without GROUP BY the shard key user_id");
  /* An outer join's NULL keys form one group over every shard. */
  refused(
      "SELECT * FROM (SELECT o.user_id, count(*) FROM users u LEFT JOIN orders o ON o.user_id = "
      "u.id GROUP BY o.user_id) s",
      SUBQUERY_USERS ": its GROUP BY does not include the shard key id");
  refused("SELECT * FROM (SELECT user_id, row_number() OVER () FROM orders) s",
          SUBQUERY_ORDERS ": it has window functions");
  refused(
      "SELECT * FROM (SELECT user_id, sum(total) OVER w FROM orders WINDOW w AS (PARTITION BY "
      "user_id)) s",
      SUBQUERY_ORDERS ": it has window functions");
  refused("SELECT count(*) FROM (SELECT DISTINCT status FROM orders) s",
          SUBQUERY_ORDERS ": its DISTINCT does not include the shard key user_id");
  refused(
      "SELECT count(*) FROM (SELECT DISTINCT ON (status) status, user_id FROM orders ORDER BY "
      "status, user_id) s",
      SUBQUERY_ORDERS ": its DISTINCT ON does not include the shard key user_id");
  /* DISTINCT ON resolves an output name first: user_id is total here. */
  refused("SELECT count(*) FROM (SELECT DISTINCT ON (user_id) total AS user_id FROM orders) s",
          SUBQUERY_ORDERS ": its DISTINCT ON does not include the shard key user_id");
  /* A join not on the keys inside. */
  refused("SELECT count(*) FROM (SELECT * FROM users u JOIN orders o ON o.id = u.id) s",
          NOT_ON_KEYS("users", "orders"));
  refused("SELECT count(*) FROM (SELECT * FROM users u JOIN events e ON e.id = u.id) s",
          "a join of sharded tables events and users on their shard keys cannot be merged "
          "across shards: they are not sharded alike");
  /* LATERAL: correlated to the rows of one shard, reading all. */
  refused("SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id) x",
          SUBQUERY_ORDERS);
  /* Subqueries elsewhere in it follow the usual rules. */
  refused("SELECT * FROM (SELECT user_id, (SELECT max(id) FROM users) FROM orders) s",
          SUBQUERY_USERS);
}

/* ---- WITH queries ---- */

static void test_cte_sources(void **state) {
  merges("WITH c AS (SELECT * FROM users) SELECT * FROM c");
  merges(
      "WITH big AS (SELECT user_id, total FROM orders WHERE total > 100) SELECT count(*), "
      "sum(total), avg(total) FROM big");
  expect_roles("sccsa");
  merges(
      "WITH c AS MATERIALIZED (SELECT user_id, count(*) AS n FROM orders GROUP BY user_id) "
      "SELECT u.name, c.n FROM users u JOIN c ON c.user_id = u.id ORDER BY c.n DESC LIMIT 3");
  /* Used twice, each use analysed; one built on another. */
  merges(
      "WITH o AS (SELECT user_id, count(*) AS n FROM orders GROUP BY user_id) SELECT a.user_id "
      "FROM o a JOIN o b ON a.user_id = b.user_id");
  merges(
      "WITH a AS (SELECT * FROM orders), b AS (SELECT user_id, count(*) AS n FROM a GROUP BY "
      "user_id) SELECT sum(n) FROM b");
  /* Column names given to it; a use renaming its key. */
  merges(
      "WITH o (uid, n) AS (SELECT user_id, count(*) FROM orders GROUP BY 1) SELECT * FROM users "
      "u JOIN o ON o.uid = u.id");
  merges(
      "WITH o AS (SELECT user_id, count(*) FROM orders GROUP BY 1) SELECT * FROM users u JOIN o "
      "AS x (k) ON x.k = u.id");
  /* Not used: not run. */
  merges("WITH unused AS (SELECT count(*) FROM orders) SELECT * FROM users");
  /* A WITH inside a subquery. */
  merges(
      "SELECT count(*) FROM (WITH x AS (SELECT user_id FROM orders GROUP BY 1) SELECT * FROM x) "
      "s");
  /* A name the WITH hides is the table again inside its own body. */
  merges(
      "WITH orders AS (SELECT user_id, count(*) AS n FROM orders GROUP BY user_id) SELECT * "
      "FROM users u JOIN orders o ON o.user_id = u.id");
  refused(
      "WITH o (uid, n) AS (SELECT user_id, count(*) FROM orders GROUP BY 1) SELECT * FROM users "
      "u JOIN o ON o.user_id = u.id",
      NOT_ON_KEYS("users", "orders"));
}

static void test_cte_refused(void **state) {
  refused("WITH s AS (SELECT status, count(*) AS c FROM orders GROUP BY status) SELECT * FROM s",
          "a WITH query reading sharded table orders cannot be merged across shards: its GROUP "
          "BY does not include the shard key user_id");
  refused("WITH t AS (SELECT * FROM orders ORDER BY total DESC LIMIT 10) SELECT sum(total) FROM t",
          "a WITH query reading sharded table orders cannot be merged across shards: it has "
          "LIMIT or OFFSET");
  /* The rules apply where it is used: here in a subquery only. */
  refused(
      "WITH t AS (SELECT status FROM orders) SELECT * FROM users WHERE name IN (SELECT status "
      "FROM t)",
      SUBQUERY_ORDERS);
  refused("WITH c AS (SELECT * FROM users) SELECT (SELECT count(*) FROM c) FROM users",
          SUBQUERY_USERS);
  refused(
      "WITH RECURSIVE r AS (SELECT id FROM users UNION ALL SELECT r.id + 1 FROM r WHERE r.id < "
      "9) SELECT * FROM r",
      "a recursive WITH query reading sharded table users cannot be merged across shards");
  /* A data-modifying WITH query is a write, run where writes run. */
  analyse("WITH d AS (DELETE FROM orders WHERE total < 0 RETURNING user_id) SELECT * FROM d");
  assert_int_equal(plan->kind, PGS_STMT_WRITE);
  assert_null(spec);
}

/* ---- subqueries in WHERE ---- */

static void test_where_correlated(void **state) {
  merges("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)");
  merges(
      "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE u.id = "
      "o.user_id AND o.total > $1)");
  expect_roles("c");
  merges("SELECT name FROM users u WHERE u.id IN (SELECT user_id FROM orders WHERE total > 5)");
  merges("SELECT name FROM users WHERE id IN (SELECT o.user_id AS k FROM orders o)");
  merges("SELECT name FROM users u WHERE u.id = ANY (SELECT user_id FROM orders)");
  merges(
      "SELECT name FROM users u WHERE u.id IN (SELECT user_id FROM orders GROUP BY user_id "
      "HAVING count(*) > 3) ORDER BY name");
  merges(
      "SELECT name FROM users u WHERE u.x > 1 AND u.id IN (SELECT order_id FROM items) AND "
      "NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)");
  /* Confined to the outer row's shard, an EXISTS may aggregate or LIMIT. */
  merges(
      "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id ORDER "
      "BY total LIMIT 1)");
  merges(
      "SELECT * FROM users u WHERE EXISTS (SELECT count(*) FROM orders o WHERE o.user_id = u.id "
      "HAVING count(*) > 2)");
  /* Nested, and correlated past a level that reads no sharded table. */
  merges(
      "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND "
      "EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.user_id))");
  merges(
      "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM countries c WHERE c.code = u.country "
      "AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id))");
  /* Correlated with a subquery's key, inside a subquery, through a WITH. */
  merges(
      "SELECT * FROM (SELECT user_id, count(*) AS n FROM orders GROUP BY 1) s WHERE EXISTS "
      "(SELECT 1 FROM users u WHERE u.id = s.user_id AND u.x > 0)");
  merges(
      "SELECT count(*) FROM (SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM items i WHERE "
      "i.order_id = o.user_id)) s");
  merges(
      "WITH o AS (SELECT user_id FROM orders WHERE total > 9) SELECT * FROM users u WHERE u.id "
      "IN (SELECT user_id FROM o)");
  merges(
      "WITH o AS (SELECT user_id, total FROM orders) SELECT * FROM users u WHERE EXISTS (SELECT "
      "1 FROM o WHERE o.user_id = u.id AND o.total > 9)");
  /* A subquery reading no sharded table: anything goes, as before. */
  merges("SELECT * FROM users WHERE country NOT IN (SELECT code FROM countries)");
}

static void test_where_refused(void **state) {
  static const char not_in_orders[] =
      "NOT IN (SELECT ...) reading sharded table orders cannot be merged across shards: a NULL "
      "it returns on one shard changes the answer on all (use NOT EXISTS)";
  refused("SELECT * FROM users u WHERE u.id NOT IN (SELECT user_id FROM orders)", not_in_orders);
  refused("SELECT * FROM users u WHERE NOT u.id = ANY (SELECT user_id FROM orders)", not_in_orders);
  refused("SELECT * FROM users u WHERE u.id <> ALL (SELECT user_id FROM orders)", not_in_orders);
  /* Uncorrelated. */
  refused("SELECT * FROM users u WHERE u.x > (SELECT avg(total) FROM orders)", SUBQUERY_ORDERS);
  refused("SELECT * FROM users u WHERE u.x IN (SELECT total FROM orders)", SUBQUERY_ORDERS);
  refused("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders WHERE total > 100)",
          SUBQUERY_ORDERS);
  /* Not on the keys, not sharded alike, not restricting the outer row. */
  refused("SELECT * FROM users u WHERE u.id IN (SELECT total FROM orders)", SUBQUERY_ORDERS);
  refused("SELECT * FROM users u WHERE u.x IN (SELECT user_id FROM orders)", SUBQUERY_ORDERS);
  refused("SELECT * FROM users u WHERE u.id IN (SELECT id FROM events)",
          "a subquery reading sharded table events cannot be merged across shards");
  refused("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM events e WHERE e.id = u.id)",
          "a subquery reading sharded table events cannot be merged across shards");
  refused("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id > u.id)",
          SUBQUERY_ORDERS);
  refused(
      "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id OR "
      "o.total > 1)",
      SUBQUERY_ORDERS);
  refused(
      "SELECT * FROM users u WHERE u.x = 1 OR EXISTS (SELECT 1 FROM orders o WHERE o.user_id = "
      "u.id)",
      SUBQUERY_ORDERS);
  /* An unqualified name may be the subquery's own column (orders.id). */
  refused("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = id)",
          SUBQUERY_ORDERS);
  /* u inside is countries, not the outer users. */
  refused(
      "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o, countries u WHERE o.user_id "
      "= u.id)",
      SUBQUERY_ORDERS);
  /* The outer rows of a reference table are on every shard. */
  refused("SELECT * FROM countries c WHERE c.id IN (SELECT user_id FROM orders)", SUBQUERY_ORDERS);
  refused("SELECT * FROM countries c WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = c.id)",
          SUBQUERY_USERS);
  /* The IN subquery is a source: its own rules. */
  refused("SELECT * FROM users u WHERE u.id IN (SELECT user_id FROM orders LIMIT 10)",
          SUBQUERY_ORDERS ": it has LIMIT or OFFSET");
  refused("SELECT * FROM users u WHERE u.id IN (SELECT max(user_id) FROM orders GROUP BY status)",
          SUBQUERY_ORDERS ": its GROUP BY does not include the shard key user_id");
  /* A correlated EXISTS whose tables are not joined on their keys. */
  refused(
      "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o, items i WHERE o.user_id = "
      "u.id)",
      NOT_ON_KEYS("orders", "items"));
}

/* ---- outer joins with tables every shard has ---- */

static void test_outer_join_keeping_reference_rows(void **state) {
  static const char keeps[] =
      "an outer join keeping every row of a side without sharded tables, joined to sharded "
      "table users, cannot be merged across shards: each shard would return them";
  refused(
      "SELECT c.code, count(u.id) FROM countries c LEFT JOIN users u ON u.country = c.code "
      "GROUP BY 1",
      keeps);
  refused("SELECT * FROM users u RIGHT JOIN countries c ON u.country = c.code", keeps);
  refused("SELECT * FROM users u FULL JOIN countries c ON u.country = c.code", keeps);
  refused("SELECT * FROM (SELECT 1 AS x) v LEFT JOIN users u ON u.id = v.x", keeps);
  refused(
      "SELECT count(*) FROM (SELECT c.code FROM countries c LEFT JOIN users u ON u.country = "
      "c.code) s",
      keeps);
  /* The sharded side kept whole, or an inner join: whole on each shard. */
  merges("SELECT * FROM users u LEFT JOIN countries c ON u.country = c.code");
  merges("SELECT * FROM countries c RIGHT JOIN users u ON u.country = c.code");
  merges("SELECT * FROM countries c JOIN users u ON u.country = c.code");
  merges(
      "SELECT * FROM countries c LEFT JOIN regions r ON r.id = c.region JOIN users u ON "
      "u.country = c.code");
}

/* ---- limits, routing ---- */

static void test_too_many_levels(void **state) {
  /* Each WITH query uses the one before twice: 2^11 analyses. */
  char sql[4096];
  int n = snprintf(sql, sizeof(sql), "WITH c0 AS (SELECT * FROM orders)");
  for (int i = 1; i < 12; i++)
    n += snprintf(sql + n, sizeof(sql) - (size_t)n,
                  ", c%d AS (SELECT a.* FROM c%d a JOIN c%d b USING (user_id))", i, i - 1, i - 1);
  snprintf(sql + n, sizeof(sql) - (size_t)n, " SELECT count(*) FROM c11");
  refused(sql, "statement too complex to merge across shards");
  /* Fewer uses are fine. */
  merges(
      "WITH c0 AS (SELECT * FROM orders), c1 AS (SELECT a.* FROM c0 a JOIN c0 b USING "
      "(user_id)) SELECT count(*) FROM c1");
}

static void test_route(void **state) {
  pgs_route_t r;
  merges(
      "SELECT sum(c) FROM (SELECT user_id, count(*) AS c FROM orders GROUP BY user_id) o WHERE "
      "o.c > 2");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  assert_int_equal(r.kind, PGS_ROUTE_MERGE);
  assert_int_equal(r.shards, 0x3);
  analyse("SELECT * FROM users u WHERE u.id NOT IN (SELECT user_id FROM orders)");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  assert_int_equal(r.kind, PGS_ROUTE_REFUSE);
  assert_string_equal(r.sqlstate, "0A000");
  assert_non_null(strstr(r.message, ": NOT IN (SELECT ...) reading sharded table orders"));
  /* A key inside: one shard, whatever the spec says. */
  analyse("SELECT count(*) FROM (SELECT * FROM orders WHERE user_id = 5 LIMIT 3) s");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  assert_int_equal(r.kind, PGS_ROUTE_ONE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_derived_grouped_by_key),
      cmocka_unit_test(test_derived_plain),
      cmocka_unit_test(test_derived_positions_stay),
      cmocka_unit_test(test_derived_joined_on_key),
      cmocka_unit_test(test_derived_nested),
      cmocka_unit_test(test_derived_set_operations),
      cmocka_unit_test(test_derived_refused),
      cmocka_unit_test(test_cte_sources),
      cmocka_unit_test(test_cte_refused),
      cmocka_unit_test(test_where_correlated),
      cmocka_unit_test(test_where_refused),
      cmocka_unit_test(test_outer_join_keeping_reference_rows),
      cmocka_unit_test(test_too_many_levels),
      cmocka_unit_test(test_route),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
