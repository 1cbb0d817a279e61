/*
 * test_analyze.c — router/analyze.c on every statement shape the sharding
 * chapter of the README and DESIGN.md ("Routing semantics") name: the statement kind (reads, writes,
 * DDL, transactions, session, COPY), the target (no sharded table, keys,
 * every shard, INSERT rows) and which parameter numbers are the keys, the
 * refusals with their exact SQLSTATE and message, multi-statement texts and
 * unparseable input. The database is built by hand (no config parser).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/merge.h"

static pgs_table_t tables[] = {
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "orders", .column = "user_id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "events", .column = "id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_RANGE},
    {.name = "profiles", .column = "country", .type = PGS_TYPE_TEXT, .strategy = PGS_STRATEGY_GEO},
    {.name = "invoices",
     .column = "tenant_id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_TENANT},
};

static pgs_database_t db;
static pgs_lexed_t lexed;
static pgs_plan_t *plan;

static int group_setup(void **state) {
  memset(&db, 0, sizeof(db));
  db.name = "app";
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

/* Analyse SQL; the plan stays in `plan` until the next call. */
static const pgs_plan_t *analyse(const char *sql) {
  pgs_plan_unref(plan);
  plan = NULL;
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  plan = pgs_analyze(&db, &lexed);
  assert_non_null(plan);
  assert_int_equal(plan->refcount, 1);
  return plan;
}

/* Keys as "table:$n" words, with "-" for negate, "[]" for arrays and
 * "::oid" for casts, space-separated. */
static void format_keys(const pgs_key_ref_t *keys, int n, char *buf, size_t cap) {
  buf[0] = '\0';
  for (int i = 0; i < n; i++) {
    size_t len = strlen(buf);
    snprintf(buf + len, cap - len, "%s%s:$%d%s%s", i ? " " : "", keys[i].table->name, keys[i].param,
             keys[i].negate ? "-" : "", keys[i].array ? "[]" : "");
    if (keys[i].cast_type_oid) {
      len = strlen(buf);
      snprintf(buf + len, cap - len, "::%u", keys[i].cast_type_oid);
    }
  }
}

static void expect(pgs_stmt_kind_t kind, pgs_target_t target, const char *keys) {
  char buf[1024];
  if (plan->kind != kind) fail_msg("kind %d, expected %d", plan->kind, kind);
  if (plan->target != target) fail_msg("target %d, expected %d", plan->target, target);
  if (target == PGS_TARGET_ROWS)
    format_keys(plan->rows, plan->nrows, buf, sizeof(buf));
  else
    format_keys(plan->keys, plan->nkeys, buf, sizeof(buf));
  assert_string_equal(buf, keys);
}

static void expect_no_refusal(void) {
  if (plan->refuse_sqlstate[0]) fail_msg("refused: %s", plan->refuse_message);
}

static void expect_refusal(const char *sqlstate, const char *message) {
  assert_string_equal(plan->refuse_sqlstate, sqlstate);
  assert_string_equal(plan->refuse_message, message);
}

static void expect_all(pgs_stmt_kind_t kind, const char *table) {
  expect(kind, PGS_TARGET_ALL, "");
  assert_non_null(plan->all_table);
  assert_string_equal(plan->all_table->name, table);
}

/* ---- SELECT: keys ---- */

static void test_select_by_key_literal(void **state) {
  analyse("SELECT * FROM users WHERE id = 42");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  expect_no_refusal();
  assert_null(plan->table);
  assert_null(plan->all_table);
  assert_false(plan->parse_failed);
  assert_int_equal(plan->nstatements, 1);
}

static void test_select_by_key_parameter(void **state) {
  analyse("SELECT abalance FROM users WHERE id = $1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
}

static void test_select_key_on_either_side(void **state) {
  analyse("SELECT * FROM users WHERE $1 = id");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("SELECT * FROM users WHERE 'x' = name AND 7 = id");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$2");
}

static void test_select_qualified_key(void **state) {
  analyse("SELECT * FROM users u WHERE u.id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("SELECT * FROM users WHERE users.id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("SELECT * FROM public.users WHERE public.users.id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
}

static void test_select_schema_qualified_table(void **state) {
  analyse("SELECT * FROM app.users AS x WHERE x.id = $1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
}

static void test_select_wrong_qualifier_is_not_the_key(void **state) {
  analyse("SELECT * FROM users u, accounts a WHERE a.id = 1");
  expect_all(PGS_STMT_READ, "users");
}

static void test_select_key_through_and(void **state) {
  analyse("SELECT * FROM users WHERE name = 'x' AND id = 5 AND age > 3");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$2");
}

static void test_select_and_takes_narrowest(void **state) {
  analyse("SELECT * FROM users WHERE id = ANY($1) AND id IN ($2, $3) AND id = $4");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$4");
}

static void test_select_in_list(void **state) {
  analyse("SELECT * FROM users WHERE id IN (1, 2, $1)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$2 users:$3 users:$1");
}

static void test_select_in_list_with_expression(void **state) {
  analyse("SELECT * FROM users WHERE id IN (1, f(2))");
  expect_all(PGS_STMT_WRITE, "users"); /* f is not known read-only either */
  analyse("SELECT * FROM users WHERE id NOT IN (1, 2)");
  expect_all(PGS_STMT_READ, "users");
}

static void test_select_any_array_parameter(void **state) {
  analyse("SELECT * FROM users WHERE id = ANY($1)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1[]");
  analyse("SELECT * FROM users WHERE id = ANY($1::bigint[])");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1[]::20");
  analyse("SELECT * FROM users WHERE id = ANY('{1,2}')");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1[]");
}

static void test_select_any_array_constructor(void **state) {
  analyse("SELECT * FROM users WHERE id = ANY(ARRAY[$1, $2])");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 users:$2");
  analyse("SELECT * FROM users WHERE id = ANY(ARRAY[1, 2::int]::bigint[])");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1::20 users:$2::23");
  analyse("SELECT * FROM users WHERE id = ANY(ARRAY[$1, other])");
  expect_all(PGS_STMT_READ, "users");
  analyse("SELECT * FROM users WHERE id <> ALL($1)");
  expect_all(PGS_STMT_READ, "users");
}

static void test_select_casts_record_type(void **state) {
  static const struct {
    const char *sql;
    const char *keys;
  } cases[] = {
      {"SELECT * FROM users WHERE id = $1::bigint", "users:$1::20"},
      {"SELECT * FROM users WHERE id = $1::int8", "users:$1::20"},
      {"SELECT * FROM users WHERE id = CAST($1 AS int)", "users:$1::23"},
      {"SELECT * FROM users WHERE id = $1::smallint", "users:$1::21"},
      {"SELECT * FROM users WHERE id = '5'::text", "users:$1::25"},
      {"SELECT * FROM users WHERE id = $1::varchar", "users:$1::1043"},
      {"SELECT * FROM users WHERE id = $1::uuid", "users:$1::2950"},
      {"SELECT * FROM users WHERE id = $1::date", "users:$1::1082"},
      {"SELECT * FROM users WHERE id = $1::timestamptz", "users:$1::1184"},
      {"SELECT * FROM users WHERE id = $1::timestamp with time zone", "users:$1::1184"},
      {"SELECT * FROM users WHERE id = $1::timestamp", "users:$1::1114"},
      {"SELECT * FROM users WHERE id = $1::numeric", "users:$1"},
      {"SELECT * FROM users WHERE id = $1::myschema.int8", "users:$1"},
      {"SELECT * FROM users WHERE id = $1::text::bigint", "users:$1::20"},
      {"SELECT * FROM users WHERE id = int8 '5'", "users:$1::20"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    analyse(cases[i].sql);
    expect(PGS_STMT_READ, PGS_TARGET_KEYS, cases[i].keys);
  }
}

static void test_select_unary_minus(void **state) {
  analyse("SELECT * FROM users WHERE id = -$1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1-");
  analyse("SELECT * FROM users WHERE id = -5");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1-");
  analyse("SELECT * FROM users WHERE id = - -$1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("SELECT * FROM users WHERE id = -$1::bigint");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1-::20");
  analyse("SELECT * FROM users WHERE id = +$1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
}

static void test_select_or_of_keys_is_union(void **state) {
  analyse("SELECT * FROM users WHERE id = 1 OR id = 2 OR id IN (3, 4)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 users:$2 users:$3 users:$4");
  analyse("SELECT * FROM users WHERE (id = 1 AND a = 2) OR (b = 3 AND id = 4)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 users:$4");
}

static void test_select_or_with_unkeyed_branch(void **state) {
  analyse("SELECT * FROM users WHERE id = 1 OR name = 'x'");
  expect_all(PGS_STMT_READ, "users");
  analyse("SELECT * FROM users WHERE name = 'x' AND (id = 1 OR id = 2)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$2 users:$3");
}

static void test_select_duplicate_keys_once(void **state) {
  analyse("SELECT * FROM users WHERE id = $1 OR id = $1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
}

static void test_select_conditions_that_are_not_keys(void **state) {
  static const char *const sqls[] = {
      "SELECT * FROM users WHERE NOT id = 1",
      "SELECT * FROM users WHERE id > 1",
      "SELECT * FROM users WHERE id BETWEEN 1 AND 2",
      "SELECT * FROM users WHERE id = other_id",
      "SELECT * FROM users WHERE id IS NULL",
      "SELECT * FROM users WHERE id = 1 + 1",
      "SELECT * FROM users WHERE id = NULL",
      "SELECT * FROM users WHERE uid = 1",
      "SELECT * FROM users",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    expect_all(PGS_STMT_READ, "users");
    expect_no_refusal();
  }
}

static void test_select_row_comparison(void **state) {
  analyse("SELECT * FROM users WHERE (name, id) = ($1, $2)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$2");
}

static void test_select_text_key(void **state) {
  analyse("SELECT * FROM profiles WHERE country = 'DE'");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "profiles:$1");
  analyse("SELECT * FROM invoices WHERE tenant_id = $1 AND id = 5");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "invoices:$1");
}

/* ---- SELECT: what touches no sharded table ---- */

static void test_select_without_sharded_table(void **state) {
  static const char *const sqls[] = {
      "SELECT 1",
      "SELECT * FROM accounts WHERE id = 1",
      "SELECT now(), version()",
      "VALUES (1, 2), (3, 4)",
      "WITH users AS (SELECT 1 AS id) SELECT * FROM users",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    expect(PGS_STMT_READ, PGS_TARGET_ANY, "");
    assert_null(plan->all_table);
  }
}

static void test_table_statement(void **state) {
  analyse("TABLE users");
  expect_all(PGS_STMT_READ, "users");
}

/* ---- SELECT: reads and writes ---- */

static void test_select_locking_is_write(void **state) {
  static const char *const sqls[] = {
      "SELECT * FROM users WHERE id = 1 FOR UPDATE",
      "SELECT * FROM users WHERE id = 1 FOR SHARE",
      "SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED",
      "SELECT * FROM users u WHERE id = 1 FOR KEY SHARE OF u",
      "SELECT * FROM (SELECT * FROM users WHERE id = 1 FOR UPDATE) s",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1");
  }
}

static void test_select_read_only_functions(void **state) {
  static const char *const sqls[] = {
      "SELECT count(*), sum(a), avg(a), min(a), max(a) FROM users WHERE id = 1",
      "SELECT now(), lower(name), upper(name), length(name), abs(a) FROM users WHERE id = 1",
      "SELECT coalesce(a, b), greatest(a, b), least(a, b), nullif(a, b) FROM users WHERE id = 1",
      "SELECT array_agg(a), string_agg(b, ','), date_trunc('day', c) FROM users WHERE id = 1",
      "SELECT extract(year FROM c), date_part('year', c), random() FROM users WHERE id = 1",
      "SELECT pg_catalog.lower(name), substring(name FROM 2), trim(name) FROM users WHERE id = 1",
      "SELECT current_setting('x'), version(), pg_sleep(0) FROM users WHERE id = 1",
      "SELECT row_number() OVER (ORDER BY a) FROM users WHERE id = 1",
      "SELECT c AT TIME ZONE 'UTC', position('a' IN name) FROM users WHERE id = 1",
      "SELECT * FROM users WHERE id = 1 AND EXISTS (SELECT 1 FROM generate_series(1, 3))",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind != PGS_STMT_READ) fail_msg("not a read: %s", sqls[i]);
  }
}

static void test_read_only_function_list(void **state) {
  size_t n;
  const char *const *names = pgs_analyze_read_only_functions(&n);
  assert_true(n > 100);
  char sql[128];
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && strcmp(names[i - 1], names[i]) >= 0)
      fail_msg("not sorted: %s, %s", names[i - 1], names[i]);
    /* Quoted: a plain call, even for names the grammar treats specially. */
    snprintf(sql, sizeof(sql), "SELECT \"%s\"(a), pg_catalog.\"%s\"(b)", names[i], names[i]);
    analyse(sql);
    if (plan->kind != PGS_STMT_READ) fail_msg("%s is not a read", names[i]);
  }
}

static void test_select_unknown_functions_are_writes(void **state) {
  static const char *const sqls[] = {
      "SELECT nextval('s')",
      "SELECT setval('s', 1)",
      "SELECT set_config('a', 'b', false)",
      "SELECT my_function(1)",
      "SELECT public.lower('a')",
      "SELECT * FROM users WHERE id = 1 AND f(name)",
      "SELECT * FROM my_srf()",
      "SELECT txid_current()",
      "SELECT pg_notify('c', 'x')",
      "SELECT (SELECT g(1))",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind != PGS_STMT_WRITE) fail_msg("not a write: %s", sqls[i]);
  }
}

/* ---- joins ---- */

static void test_join_on_keys_propagates(void **state) {
  analyse("SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
  analyse("SELECT * FROM users u JOIN orders o ON u.id = o.user_id WHERE o.user_id = 7");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
}

static void test_join_in_where_propagates(void **state) {
  analyse("SELECT * FROM users u, orders o WHERE o.user_id = u.id AND o.user_id = $1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
  analyse("SELECT * FROM users, orders WHERE user_id = id AND id = 3");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
}

static void test_join_chain_propagates(void **state) {
  analyse(
      "SELECT * FROM users u JOIN orders o ON o.user_id = u.id "
      "JOIN events e ON e.id = o.user_id WHERE u.id = ANY($1)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1[] orders:$1[] events:$1[]");
}

static void test_join_using_key(void **state) {
  analyse("SELECT * FROM users JOIN events USING (id) WHERE id = 5");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 events:$1");
  analyse("SELECT * FROM users NATURAL JOIN events WHERE users.id = 5");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 events:$1");
}

static void test_left_join_propagates_into_nullable_side_only(void **state) {
  analyse("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE u.id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
  /* A key for the nullable side does not restrict the preserved side. */
  analyse("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id AND o.user_id = 1");
  expect_all(PGS_STMT_READ, "users");
  /* A key in LEFT JOIN ... ON for the preserved side restricts nothing. */
  analyse("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id AND u.id = 1");
  expect_all(PGS_STMT_READ, "users");
}

static void test_two_keyed_tables_not_joined(void **state) {
  analyse("SELECT * FROM users u, events e WHERE u.id = 1 AND e.id = 2");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 events:$2");
}

static void test_join_not_on_keys(void **state) {
  analyse("SELECT * FROM users u JOIN orders o ON o.amount = u.id WHERE u.id = 1");
  expect_all(PGS_STMT_READ, "orders");
  analyse("SELECT * FROM users u JOIN accounts a ON a.user_id = u.id WHERE a.user_id = 1");
  expect_all(PGS_STMT_READ, "users");
}

static void test_self_join(void **state) {
  analyse("SELECT * FROM users a JOIN users b ON b.id = a.id WHERE a.id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("SELECT * FROM users a JOIN users b ON b.parent = a.id WHERE a.id = 1");
  expect_all(PGS_STMT_READ, "users");
}

/* ---- subqueries and CTEs ---- */

static void test_subquery_in_where(void **state) {
  analyse("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE user_id = $1)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
  analyse("SELECT * FROM users WHERE id = $1 AND id IN (SELECT user_id FROM orders)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
  analyse("SELECT * FROM users WHERE id = $1 AND id = ANY (SELECT o.user_id FROM orders o)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
}

static void test_subquery_without_key(void **state) {
  analyse("SELECT * FROM users WHERE id = $1 AND name IN (SELECT name FROM orders)");
  expect_all(PGS_STMT_READ, "orders");
  analyse("SELECT * FROM users WHERE id = 1 OR id IN (SELECT user_id FROM orders)");
  expect_all(PGS_STMT_READ, "users");
  analyse("SELECT * FROM users WHERE id = 1 AND id NOT IN (SELECT user_id FROM orders)");
  expect_all(PGS_STMT_READ, "orders");
}

static void test_exists_correlated(void **state) {
  analyse(
      "SELECT * FROM users u WHERE u.id = 1 AND "
      "EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 orders:$1");
  /* The inner WHERE does not restrict the outer rows. */
  analyse(
      "SELECT * FROM users u WHERE "
      "EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.user_id = 1)");
  expect_all(PGS_STMT_READ, "users");
}

static void test_exists_uncorrelated(void **state) {
  analyse("SELECT * FROM users WHERE id = 1 AND EXISTS (SELECT 1 FROM events)");
  expect_all(PGS_STMT_READ, "events");
}

static void test_scalar_subquery_in_target_list(void **state) {
  analyse("SELECT (SELECT count(*) FROM orders o WHERE o.user_id = 3), 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "orders:$1");
}

static void test_from_subquery(void **state) {
  analyse("SELECT * FROM (SELECT * FROM users WHERE id = $1) s");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("SELECT * FROM (SELECT * FROM users) s WHERE s.id = 1");
  expect_all(PGS_STMT_READ, "users");
  analyse("SELECT * FROM accounts a, LATERAL (SELECT * FROM orders o WHERE o.user_id = 2) x");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "orders:$1");
}

static void test_cte(void **state) {
  analyse("WITH x AS (SELECT * FROM users WHERE id = 7) SELECT * FROM x");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("WITH x AS (SELECT * FROM users) SELECT * FROM x WHERE id = 1");
  expect_all(PGS_STMT_READ, "users");
  analyse(
      "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) "
      "SELECT * FROM t");
  expect(PGS_STMT_READ, PGS_TARGET_ANY, "");
}

static void test_cte_shadows_table(void **state) {
  analyse("WITH users AS (SELECT * FROM events WHERE id = 1) SELECT * FROM users");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "events:$1");
  /* A schema-qualified name is the table, not the CTE. */
  analyse("WITH users AS (SELECT 1) SELECT * FROM public.users");
  expect_all(PGS_STMT_READ, "users");
}

static void test_data_modifying_cte(void **state) {
  analyse("WITH d AS (DELETE FROM users WHERE id = 4 RETURNING *) SELECT * FROM d");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1");
  assert_string_equal(plan->table->name, "users");
}

static void test_union(void **state) {
  analyse("SELECT * FROM users WHERE id = 1 UNION ALL SELECT * FROM events WHERE id = 2");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1 events:$2");
  analyse("SELECT id FROM users WHERE id = 1 UNION SELECT id FROM events");
  expect_all(PGS_STMT_READ, "events");
}

/* ---- INSERT ---- */

static void test_insert_rows(void **state) {
  analyse("INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), ($1, 'c')");
  expect(PGS_STMT_WRITE, PGS_TARGET_ROWS, "users:$2 users:$4 users:$1");
  expect_no_refusal();
  assert_string_equal(plan->table->name, "users");
  assert_int_equal(plan->nkeys, 0);
  assert_false(plan->same_shard_required);
}

static void test_insert_key_not_first(void **state) {
  analyse("INSERT INTO orders (amount, note, user_id) VALUES ($1, $2, $3), ($4, $5, $6)");
  expect(PGS_STMT_WRITE, PGS_TARGET_ROWS, "orders:$3 orders:$6");
}

static void test_insert_key_casts_and_negatives(void **state) {
  analyse("INSERT INTO users (id) VALUES ($1::bigint), (-5), (CAST('7' AS int8))");
  expect(PGS_STMT_WRITE, PGS_TARGET_ROWS, "users:$1::20 users:$2- users:$3::20");
}

static void test_insert_returning_and_on_conflict(void **state) {
  analyse(
      "INSERT INTO users (id, n) VALUES (1, 2) ON CONFLICT (id) "
      "DO UPDATE SET n = excluded.n + users.n RETURNING *");
  expect(PGS_STMT_WRITE, PGS_TARGET_ROWS, "users:$1");
  expect_no_refusal();
  analyse("INSERT INTO users (id) VALUES (1) ON CONFLICT DO NOTHING");
  expect(PGS_STMT_WRITE, PGS_TARGET_ROWS, "users:$1");
}

static void test_insert_without_column_list(void **state) {
  analyse("INSERT INTO users VALUES (1, 'a')");
  expect_all(PGS_STMT_WRITE, "users");
  expect_refusal("0A000", "pgshard: INSERT into sharded table users needs a column list naming id");
  analyse("INSERT INTO users DEFAULT VALUES");
  expect_refusal("0A000", "pgshard: INSERT into sharded table users needs a column list naming id");
}

static void test_insert_column_list_without_key(void **state) {
  analyse("INSERT INTO orders (amount) VALUES (1)");
  expect_all(PGS_STMT_WRITE, "orders");
  expect_refusal("0A000",
                 "pgshard: INSERT into sharded table orders needs a column list naming user_id");
}

static void test_insert_key_not_a_value(void **state) {
  static const char *const sqls[] = {
      "INSERT INTO users (id) VALUES (DEFAULT)",
      "INSERT INTO users (id) VALUES (1), (nextval('s'))",
      "INSERT INTO users (id) VALUES ((SELECT 1))",
      "INSERT INTO users (id) VALUES (NULL)",
      "INSERT INTO users (id) VALUES (1 + 1)",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    expect_all(PGS_STMT_WRITE, "users");
    expect_refusal("0A000",
                   "pgshard: INSERT into sharded table users needs a literal or parameter "
                   "for id in every row");
  }
}

static void test_insert_select(void **state) {
  analyse("INSERT INTO users (id, name) SELECT id, name FROM events");
  expect_all(PGS_STMT_WRITE, "users");
  expect_refusal("0A000", "pgshard: INSERT ... SELECT into sharded table users is not supported");
  analyse("INSERT INTO users (id) SELECT $1 UNION SELECT $2");
  expect_refusal("0A000", "pgshard: INSERT ... SELECT into sharded table users is not supported");
}

static void test_insert_select_single_row(void **state) {
  analyse(
      "INSERT INTO users (id, name) SELECT $1, $2 "
      "WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = $1)");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1");
  expect_no_refusal();
  assert_true(plan->same_shard_required);
}

static void test_insert_reference_table(void **state) {
  analyse("INSERT INTO accounts VALUES (1, 'x')");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
  expect_no_refusal();
  assert_null(plan->table);
  analyse("INSERT INTO accounts (a) SELECT b FROM settings");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
}

static void test_insert_reference_table_reading_sharded(void **state) {
  analyse("INSERT INTO log (msg) SELECT name FROM users WHERE id = 1");
  expect_refusal("0A000", "pgshard: INSERT into log reading sharded table users is not supported");
}

static void test_insert_reading_unkeyed_sharded_table(void **state) {
  analyse("INSERT INTO users (id, n) VALUES (1, (SELECT count(*) FROM events))");
  expect_all(PGS_STMT_WRITE, "events");
  expect_refusal("0A000",
                 "pgshard: a statement inserting into sharded table users and reading "
                 "sharded table events without its shard key is not supported");
}

static void test_insert_on_conflict_updating_key(void **state) {
  analyse("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id + 1");
  expect_refusal("0A000",
                 "pgshard: ON CONFLICT DO UPDATE of shard key column users.id is not supported");
}

/* ---- UPDATE / DELETE / MERGE ---- */

static void test_update_by_key(void **state) {
  analyse("UPDATE users SET name = 'x', n = n + 1 WHERE id = 5");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$3");
  expect_no_refusal();
  assert_string_equal(plan->table->name, "users");
  analyse("UPDATE users AS u SET name = $1 WHERE u.id = $2 RETURNING u.name");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$2");
}

static void test_update_of_shard_key_refused(void **state) {
  analyse("UPDATE users SET id = 6 WHERE id = 5");
  expect_refusal("0A000", "pgshard: UPDATE of shard key column users.id is not supported");
  analyse("UPDATE orders SET (amount, user_id) = (1, 2) WHERE user_id = 3");
  expect_refusal("0A000", "pgshard: UPDATE of shard key column orders.user_id is not supported");
  analyse("UPDATE accounts SET id = 6 WHERE id = 5");
  expect_no_refusal();
}

static void test_update_without_key(void **state) {
  analyse("UPDATE users SET name = 'x'");
  expect_all(PGS_STMT_WRITE, "users");
  expect_no_refusal();
  analyse("UPDATE users SET name = 'x' WHERE name = 'y'");
  expect_all(PGS_STMT_WRITE, "users");
}

static void test_update_from(void **state) {
  analyse("UPDATE orders o SET amount = 0 FROM users u WHERE u.id = o.user_id AND u.id = $1");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "orders:$1 users:$1");
  assert_string_equal(plan->table->name, "orders");
}

static void test_update_reference_table(void **state) {
  analyse("UPDATE settings SET v = 1");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
  assert_null(plan->table);
}

static void test_delete(void **state) {
  analyse("DELETE FROM users WHERE id = ANY($1)");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1[]");
  assert_string_equal(plan->table->name, "users");
  analyse("DELETE FROM users");
  expect_all(PGS_STMT_WRITE, "users");
  analyse("DELETE FROM orders o USING users u WHERE o.user_id = u.id AND u.id = 3");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "orders:$1 users:$1");
}

static void test_merge(void **state) {
  analyse(
      "MERGE INTO users u USING (SELECT 1 AS x) s ON u.id = $1 "
      "WHEN MATCHED THEN UPDATE SET name = 'x' WHEN MATCHED THEN DELETE");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1");
  expect_no_refusal();
  analyse(
      "MERGE INTO users u USING src s ON u.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id)");
  expect_refusal("0A000",
                 "pgshard: MERGE ... THEN INSERT into sharded table users is not supported");
  analyse("MERGE INTO users u USING src s ON u.id = 1 WHEN MATCHED THEN UPDATE SET id = 2");
  expect_refusal("0A000", "pgshard: UPDATE of shard key column users.id is not supported");
}

/* ---- DDL, COPY, transactions, session, other ---- */

static void test_ddl(void **state) {
  static const char *const sqls[] = {
      "CREATE TABLE users (id bigint PRIMARY KEY, name text)",
      "ALTER TABLE users ADD COLUMN age int",
      "DROP TABLE users",
      "TRUNCATE users",
      "CREATE INDEX ON users (name)",
      "GRANT SELECT ON users TO app",
      "CREATE VIEW v AS SELECT * FROM users",
      "CREATE SEQUENCE s",
      "CREATE TABLE t AS SELECT * FROM users WHERE id = 1",
      "CREATE SCHEMA s",
      "CREATE EXTENSION pgcrypto",
      "ALTER TABLE users RENAME TO people",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind != PGS_STMT_DDL || plan->target != PGS_TARGET_ANY)
      fail_msg("not DDL to ANY: %s", sqls[i]);
    expect_no_refusal();
  }
}

static void test_ddl_with_literals_only_the_grammar_takes(void **state) {
  /* The normalised texts ("varchar($1)", "AS $1", "IS $1") do not parse:
   * the literals are put back and the statement is still understood. */
  static const char *const sqls[] = {
      "CREATE TABLE t (a varchar(10) DEFAULT 'x', b numeric(10, 2))",
      "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
      "COMMENT ON TABLE users IS 'people'",
      "ALTER TABLE users ALTER COLUMN name TYPE varchar(200)",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind != PGS_STMT_DDL || plan->parse_failed) fail_msg("not DDL: %s", sqls[i]);
  }
}

static void test_literals_put_back_keep_parameter_numbers(void **state) {
  analyse("SELECT * FROM users WHERE name = 'a'::varchar(3) AND id = 5");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$3");
  analyse("SELECT * FROM users WHERE id = -5 AND name = 'a'::varchar(3)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1-");
  analyse("SELECT * FROM users WHERE id = $1 AND 'it''s' = name::varchar(3)");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("INSERT INTO users (id, name) VALUES (4, 'x'::varchar(2)), ($1, 'y')");
  expect(PGS_STMT_WRITE, PGS_TARGET_ROWS, "users:$2 users:$1");
}

static void test_copy_from_stdin(void **state) {
  analyse("COPY users (name, id) FROM STDIN WITH (FORMAT csv)");
  expect(PGS_STMT_COPY_FROM, PGS_TARGET_ROWS, "");
  expect_no_refusal();
  assert_string_equal(plan->table->name, "users");
  assert_int_equal(plan->copy_key_column, 1);
  analyse("COPY accounts FROM STDIN");
  expect(PGS_STMT_COPY_FROM, PGS_TARGET_ANY, "");
  assert_int_equal(plan->copy_key_column, -1);
}

static void test_copy_from_refusals(void **state) {
  analyse("COPY users FROM STDIN");
  expect_all(PGS_STMT_COPY_FROM, "users");
  expect_refusal("0A000", "pgshard: COPY into sharded table users needs a column list naming id");
  analyse("COPY users (name) FROM STDIN");
  expect_refusal("0A000", "pgshard: COPY into sharded table users needs a column list naming id");
  analyse("COPY users (id) FROM '/tmp/users.csv'");
  expect_refusal("0A000", "pgshard: COPY FROM a file into sharded table users is not supported");
  analyse("COPY users (id) FROM PROGRAM 'cat x'");
  expect_refusal("0A000", "pgshard: COPY FROM a file into sharded table users is not supported");
}

static void test_copy_to(void **state) {
  analyse("COPY users TO STDOUT");
  expect_all(PGS_STMT_COPY_TO, "users");
  assert_string_equal(plan->table->name, "users");
  analyse("COPY (SELECT * FROM users WHERE id = 1) TO STDOUT");
  expect(PGS_STMT_COPY_TO, PGS_TARGET_KEYS, "users:$1");
  analyse("COPY (SELECT * FROM users) TO STDOUT WITH (FORMAT binary)");
  expect_all(PGS_STMT_COPY_TO, "users");
  analyse("COPY accounts TO STDOUT");
  expect(PGS_STMT_COPY_TO, PGS_TARGET_ANY, "");
}

static void test_begin_read_only(void **state) {
  static const struct {
    const char *sql;
    bool read_only;
  } cases[] = {
      {"BEGIN", false},
      {"BEGIN READ ONLY", true},
      {"begin transaction read only", true},
      {"START TRANSACTION READ ONLY", true},
      {"START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", true},
      {"BEGIN ISOLATION LEVEL REPEATABLE READ", false},
      {"BEGIN READ WRITE", false},
      {"BEGIN READ ONLY, READ WRITE", false},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    analyse(cases[i].sql);
    assert_int_equal(plan->kind, PGS_STMT_BEGIN);
    assert_int_equal(plan->target, PGS_TARGET_ANY);
    if (plan->read_only_tx != cases[i].read_only) fail_msg("read_only wrong: %s", cases[i].sql);
  }
}

static void test_transaction_end_kinds(void **state) {
  static const struct {
    const char *sql;
    pgs_stmt_kind_t kind;
  } cases[] = {
      {"COMMIT", PGS_STMT_COMMIT},
      {"END", PGS_STMT_COMMIT},
      {"COMMIT AND CHAIN", PGS_STMT_COMMIT},
      {"ROLLBACK", PGS_STMT_ROLLBACK},
      {"ABORT", PGS_STMT_ROLLBACK},
      {"SAVEPOINT a", PGS_STMT_SESSION},
      {"RELEASE SAVEPOINT a", PGS_STMT_SESSION},
      {"ROLLBACK TO SAVEPOINT a", PGS_STMT_SESSION},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    analyse(cases[i].sql);
    if (plan->kind != cases[i].kind) fail_msg("kind %d for %s", plan->kind, cases[i].sql);
  }
}

/* A client's own two-phase commit names one shard's prepared transaction:
 * refused, never taken for COMMIT or ROLLBACK. */
static void test_client_two_phase_commit_refused(void **state) {
  static const char *const sqls[] = {"PREPARE TRANSACTION 'gid'", "COMMIT PREPARED 'gid'",
                                     "ROLLBACK PREPARED 'gid'", "prepare transaction 'x'"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind == PGS_STMT_COMMIT || plan->kind == PGS_STMT_ROLLBACK)
      fail_msg("%s taken for a transaction end", sqls[i]);
    assert_string_equal(plan->refuse_sqlstate, "0A000");
  }
}

static void test_session_kinds(void **state) {
  static const char *const sqls[] = {
      "SET search_path = 'app'",
      "SET LOCAL statement_timeout = 5",
      "RESET ALL",
      "DISCARD ALL",
      "LISTEN ch",
      "UNLISTEN *",
      "NOTIFY ch, 'x'",
      "PREPARE p AS SELECT * FROM countries WHERE code = $1",
      "EXECUTE p(1)",
      "DEALLOCATE ALL",
      "FETCH 10 FROM c",
      "CLOSE c",
      "SET CONSTRAINTS ALL DEFERRED",
      "SET TIME ZONE 'UTC'",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind != PGS_STMT_SESSION || plan->target != PGS_TARGET_ANY)
      fail_msg("not SESSION/ANY: %s", sqls[i]);
  }
}

/* EXECUTE runs a prepared statement wherever the session is: one on a
 * sharded table is refused at PREPARE, never run on the wrong shard. */
static void test_sql_prepare_of_sharded_table_refused(void **state) {
  analyse("PREPARE p(bigint) AS SELECT * FROM users WHERE id = $1");
  assert_int_equal(plan->kind, PGS_STMT_SESSION);
  assert_string_equal(plan->refuse_sqlstate, "0A000");
  assert_non_null(strstr(plan->refuse_message, "users"));
  analyse("PREPARE q AS INSERT INTO users (id) VALUES (1)");
  assert_string_equal(plan->refuse_sqlstate, "0A000");
}

static void test_set_transaction_read_only(void **state) {
  analyse("SET TRANSACTION READ ONLY");
  assert_int_equal(plan->kind, PGS_STMT_SESSION);
  assert_true(plan->read_only_tx);
}

static void test_declare_cursor_keys(void **state) {
  /* A read routed by its key; without one there is no merge plan (a
   * cursor lives on one server), so the router refuses it. */
  analyse("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  assert_null(plan->merge);
  analyse("DECLARE c CURSOR FOR SELECT * FROM users");
  expect_all(PGS_STMT_READ, "users");
  assert_null(plan->merge);
}

static void test_show_is_read(void **state) {
  analyse("SHOW search_path");
  expect(PGS_STMT_READ, PGS_TARGET_ANY, "");
}

static void test_other_kinds(void **state) {
  static const char *const sqls[] = {
      "VACUUM users",           "ANALYZE users", "CHECKPOINT",
      "LOCK TABLE users",       "CLUSTER users", "REINDEX TABLE users",
      "ALTER SYSTEM SET x = 1",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    if (plan->kind != PGS_STMT_OTHER || plan->parse_failed) fail_msg("not OTHER: %s", sqls[i]);
  }
}

static void test_call_is_write(void **state) {
  analyse("CALL refresh_stats(1)");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
  assert_true(plan->runs_code);
  /* Code: what it writes is unknown. */
  analyse("DO $$ BEGIN INSERT INTO users VALUES (3); END $$");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
  assert_true(plan->runs_code);
  analyse("SELECT add_user(3)");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
  assert_true(plan->runs_code);
  analyse("DECLARE c CURSOR FOR SELECT add_user(3)");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
  assert_true(plan->runs_code);
  analyse("DECLARE c CURSOR FOR SELECT now()");
  expect(PGS_STMT_READ, PGS_TARGET_ANY, "");
  /* A function with a key runs where the key is. */
  analyse("SELECT add_user(id) FROM users WHERE id = 3");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1");
  /* Writes of tables are not code. */
  analyse("INSERT INTO countries VALUES ('DE')");
  assert_false(plan->runs_code);
  analyse("SELECT count(*) FROM countries");
  assert_false(plan->runs_code);
}

static void test_explain(void **state) {
  analyse("EXPLAIN SELECT * FROM users WHERE id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  /* Only planned: nothing is changed, nothing refused. */
  analyse("EXPLAIN UPDATE users SET id = 2 WHERE id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$2");
  expect_no_refusal();
  analyse("EXPLAIN (ANALYZE, BUFFERS) UPDATE users SET id = 2 WHERE id = 1");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$2");
  expect_refusal("0A000", "pgshard: UPDATE of shard key column users.id is not supported");
  analyse("EXPLAIN ANALYZE SELECT * FROM users WHERE id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("EXPLAIN (ANALYZE false) DELETE FROM users WHERE id = 1");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("EXPLAIN ANALYZE SELECT nextval('s')");
  expect(PGS_STMT_WRITE, PGS_TARGET_ANY, "");
}

static void test_select_into_is_ddl(void **state) {
  analyse("SELECT * INTO newtable FROM accounts");
  expect(PGS_STMT_DDL, PGS_TARGET_ANY, "");
}

/* ---- several statements ---- */

static void test_multi_statement_kind_and_keys(void **state) {
  analyse("SELECT * FROM users WHERE id = 1; UPDATE orders SET x = 1 WHERE user_id = $1");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$2 orders:$1");
  assert_int_equal(plan->nstatements, 2);
  assert_string_equal(plan->table->name, "orders");
  analyse("SELECT 1; SELECT 2; SHOW x");
  expect(PGS_STMT_READ, PGS_TARGET_ANY, "");
  analyse("BEGIN; SELECT * FROM users WHERE id = 1; COMMIT");
  expect(PGS_STMT_READ, PGS_TARGET_KEYS, "users:$1");
  analyse("CREATE TABLE t (a int); SELECT 1");
  expect(PGS_STMT_DDL, PGS_TARGET_ANY, "");
}

static void test_multi_statement_all_wins(void **state) {
  analyse("SELECT * FROM users WHERE id = 1; SELECT * FROM events");
  expect_all(PGS_STMT_READ, "events");
}

static void test_multi_statement_refusal_wins(void **state) {
  analyse("SELECT * FROM users WHERE id = 1; UPDATE users SET id = 2 WHERE id = 1; SELECT 1");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1 users:$3");
  expect_refusal("0A000", "pgshard: UPDATE of shard key column users.id is not supported");
}

static void test_multi_statement_inserts_must_share_a_shard(void **state) {
  analyse("BEGIN; INSERT INTO users (id) VALUES (1); INSERT INTO users (id) VALUES (2); COMMIT");
  expect(PGS_STMT_WRITE, PGS_TARGET_KEYS, "users:$1 users:$2");
  assert_true(plan->same_shard_required);
  expect_no_refusal();
  analyse("INSERT INTO users (id) VALUES (1); DELETE FROM events");
  expect_all(PGS_STMT_WRITE, "events");
  expect_refusal("0A000",
                 "pgshard: a statement inserting into sharded table users and reading "
                 "sharded table events without its shard key is not supported");
}

/* ---- what cannot be analysed ---- */

static void test_unparseable(void **state) {
  static const char *const sqls[] = {"SELEC 1", "SELECT * FROM", "INSERT INTO users (id) VALUES",
                                     "SELECT 'a' 'b'"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    analyse(sqls[i]);
    expect(PGS_STMT_OTHER, PGS_TARGET_ANY, "");
    assert_true(plan->parse_failed);
    /* Never sent anywhere: refused as the syntax error it is. */
    assert_string_equal(plan->refuse_sqlstate, "42601");
    if (strstr(plan->refuse_message, "not sent to any shard") == NULL)
      fail_msg("%s: %s", sqls[i], plan->refuse_message);
  }
}

static void test_empty_statement(void **state) {
  analyse("");
  expect(PGS_STMT_OTHER, PGS_TARGET_ANY, "");
  assert_false(plan->parse_failed);
  assert_int_equal(plan->nstatements, 0);
  analyse(";;");
  assert_int_equal(plan->nstatements, 0);
}

static void test_too_complex(void **state) {
  size_t cap = 64 + 5 * 4000;
  char *sql = malloc(cap);
  strcpy(sql, "SELECT * FROM users WHERE id = 1 AND x = a");
  for (int i = 0; i < 600; i++) strcat(sql, "||a");
  analyse(sql); /* deeper than PGS_ANALYZE_MAX_DEPTH */
  expect(PGS_STMT_OTHER, PGS_TARGET_ALL, "");
  expect_refusal("54001", "pgshard: statement too complex to route");
  for (int i = 600; i < PGS_ANALYZE_MAX_CHAIN + 10; i++) strcat(sql, "||a");
  analyse(sql); /* never parsed */
  expect_refusal("54001", "pgshard: statement too complex to route");
  free(sql);
}

static void test_empty_shard_map(void **state) {
  pgs_database_t none = {.name = "plain"};
  const char *sql = "SELECT * FROM users WHERE id = 1";
  assert_int_equal(pgs_lex(sql, strlen(sql), &lexed), PGS_OK);
  pgs_plan_t *p = pgs_analyze(&none, &lexed);
  assert_int_equal(p->target, PGS_TARGET_ANY);
  pgs_plan_unref(p);
}

static void test_plan_refcount(void **state) {
  const char *sql = "SELECT * FROM users WHERE id IN (1, 2, 3)";
  assert_int_equal(pgs_lex(sql, strlen(sql), &lexed), PGS_OK);
  pgs_plan_t *p = pgs_analyze(&db, &lexed);
  assert_int_equal(p->refcount, 1);
  p->refcount++;
  pgs_plan_unref(p);
  assert_int_equal(p->refcount, 1);
  assert_int_equal(p->nkeys, 3); /* still valid under ASan */
  pgs_plan_unref(p);
  pgs_plan_unref(NULL);
}

/* A single read of sharded tables carries its cross-shard merge spec
 * (merge.c has the details); nothing else does. */
static void test_merge_spec_attached(void **state) {
  static const char *const with[] = {
      "SELECT * FROM users WHERE name = 'x'",
      "SELECT count(*) FROM users WHERE id IN (1, 2)",
      "SELECT * FROM users WHERE id = 1",
      "COPY users TO STDOUT",
      "COPY (SELECT id FROM orders) TO STDOUT",
      "SELECT name, row_number() OVER () FROM users",
      "SELECT name FROM users WHERE d > DATE '2024-01-01' ORDER BY 1", /* literals put back */
  };
  static const char *const without[] = {
      "SELECT * FROM countries",        "SELECT 1",
      "SELECT * FROM users; SELECT 2",  "UPDATE users SET x = 1",
      "SELECT * FROM users FOR UPDATE", "EXPLAIN SELECT * FROM users",
      "COPY users (id) FROM STDIN",     "INSERT INTO users (id) VALUES (1)",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(with); i++) {
    analyse(with[i]);
    if (plan->merge == NULL) fail_msg("%s: no merge spec", with[i]);
  }
  for (size_t i = 0; i < PGS_ARRAY_LEN(without); i++) {
    analyse(without[i]);
    if (plan->merge != NULL) fail_msg("%s: a merge spec", without[i]);
  }
  analyse("SELECT name, row_number() OVER () FROM users");
  assert_string_equal(plan->merge->refuse, "window functions cannot be merged across shards");
  assert_string_equal(plan->refuse_sqlstate, ""); /* the route decides: one shard may run it */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_select_by_key_literal),
      cmocka_unit_test(test_select_by_key_parameter),
      cmocka_unit_test(test_select_key_on_either_side),
      cmocka_unit_test(test_select_qualified_key),
      cmocka_unit_test(test_select_schema_qualified_table),
      cmocka_unit_test(test_select_wrong_qualifier_is_not_the_key),
      cmocka_unit_test(test_select_key_through_and),
      cmocka_unit_test(test_select_and_takes_narrowest),
      cmocka_unit_test(test_select_in_list),
      cmocka_unit_test(test_select_in_list_with_expression),
      cmocka_unit_test(test_select_any_array_parameter),
      cmocka_unit_test(test_select_any_array_constructor),
      cmocka_unit_test(test_select_casts_record_type),
      cmocka_unit_test(test_select_unary_minus),
      cmocka_unit_test(test_select_or_of_keys_is_union),
      cmocka_unit_test(test_select_or_with_unkeyed_branch),
      cmocka_unit_test(test_select_duplicate_keys_once),
      cmocka_unit_test(test_select_conditions_that_are_not_keys),
      cmocka_unit_test(test_select_row_comparison),
      cmocka_unit_test(test_select_text_key),
      cmocka_unit_test(test_select_without_sharded_table),
      cmocka_unit_test(test_table_statement),
      cmocka_unit_test(test_select_locking_is_write),
      cmocka_unit_test(test_select_read_only_functions),
      cmocka_unit_test(test_read_only_function_list),
      cmocka_unit_test(test_select_unknown_functions_are_writes),
      cmocka_unit_test(test_join_on_keys_propagates),
      cmocka_unit_test(test_join_in_where_propagates),
      cmocka_unit_test(test_join_chain_propagates),
      cmocka_unit_test(test_join_using_key),
      cmocka_unit_test(test_left_join_propagates_into_nullable_side_only),
      cmocka_unit_test(test_two_keyed_tables_not_joined),
      cmocka_unit_test(test_join_not_on_keys),
      cmocka_unit_test(test_self_join),
      cmocka_unit_test(test_subquery_in_where),
      cmocka_unit_test(test_subquery_without_key),
      cmocka_unit_test(test_exists_correlated),
      cmocka_unit_test(test_exists_uncorrelated),
      cmocka_unit_test(test_scalar_subquery_in_target_list),
      cmocka_unit_test(test_from_subquery),
      cmocka_unit_test(test_cte),
      cmocka_unit_test(test_cte_shadows_table),
      cmocka_unit_test(test_data_modifying_cte),
      cmocka_unit_test(test_union),
      cmocka_unit_test(test_insert_rows),
      cmocka_unit_test(test_insert_key_not_first),
      cmocka_unit_test(test_insert_key_casts_and_negatives),
      cmocka_unit_test(test_insert_returning_and_on_conflict),
      cmocka_unit_test(test_insert_without_column_list),
      cmocka_unit_test(test_insert_column_list_without_key),
      cmocka_unit_test(test_insert_key_not_a_value),
      cmocka_unit_test(test_insert_select),
      cmocka_unit_test(test_insert_select_single_row),
      cmocka_unit_test(test_insert_reference_table),
      cmocka_unit_test(test_insert_reference_table_reading_sharded),
      cmocka_unit_test(test_insert_reading_unkeyed_sharded_table),
      cmocka_unit_test(test_insert_on_conflict_updating_key),
      cmocka_unit_test(test_update_by_key),
      cmocka_unit_test(test_update_of_shard_key_refused),
      cmocka_unit_test(test_update_without_key),
      cmocka_unit_test(test_update_from),
      cmocka_unit_test(test_update_reference_table),
      cmocka_unit_test(test_delete),
      cmocka_unit_test(test_merge),
      cmocka_unit_test(test_ddl),
      cmocka_unit_test(test_ddl_with_literals_only_the_grammar_takes),
      cmocka_unit_test(test_literals_put_back_keep_parameter_numbers),
      cmocka_unit_test(test_copy_from_stdin),
      cmocka_unit_test(test_copy_from_refusals),
      cmocka_unit_test(test_copy_to),
      cmocka_unit_test(test_begin_read_only),
      cmocka_unit_test(test_transaction_end_kinds),
      cmocka_unit_test(test_session_kinds),
      cmocka_unit_test(test_sql_prepare_of_sharded_table_refused),
      cmocka_unit_test(test_set_transaction_read_only),
      cmocka_unit_test(test_declare_cursor_keys),
      cmocka_unit_test(test_show_is_read),
      cmocka_unit_test(test_other_kinds),
      cmocka_unit_test(test_call_is_write),
      cmocka_unit_test(test_explain),
      cmocka_unit_test(test_select_into_is_ddl),
      cmocka_unit_test(test_multi_statement_kind_and_keys),
      cmocka_unit_test(test_multi_statement_all_wins),
      cmocka_unit_test(test_multi_statement_refusal_wins),
      cmocka_unit_test(test_multi_statement_inserts_must_share_a_shard),
      cmocka_unit_test(test_unparseable),
      cmocka_unit_test(test_client_two_phase_commit_refused),
      cmocka_unit_test(test_empty_statement),
      cmocka_unit_test(test_too_complex),
      cmocka_unit_test(test_empty_shard_map),
      cmocka_unit_test(test_plan_refcount),
      cmocka_unit_test(test_merge_spec_attached),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
