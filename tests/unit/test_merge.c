/*
 * test_merge.c — router/merge.c, the analysis half of cross-shard reads:
 * SQL lexed and analysed as the proxy does it, then the merge spec it
 * gets (hidden columns and their text, column roles, group columns, sort
 * keys, LIMIT/OFFSET parameters), every refusal with its message, the
 * shards' texts (parsed again with libpg_query to be sure they are SQL)
 * and the LIMIT/OFFSET values of literals and Bind parameters in text and
 * binary form. Also the lexer keeping ORDER BY / GROUP BY positions, the
 * texts that parse only with their literals put back, and plan caching
 * (one spec per normalised text, whatever the literal values).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <pg_query.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/merge.h"
#include "pgshard/proto.h"
#include "pgshard/route.h"

#include "binds.h"

/* ---- the database: built by hand ---- */

static pgs_key_t bound_100 = {.type = PGS_TYPE_BIGINT, .i = 100};
static pgs_key_t bound_500 = {.type = PGS_TYPE_BIGINT, .i = 500};
static pgs_range_t events_ranges[] = {
    {.shard = 0, .has_high = true, .high = &bound_100},
    {.shard = 1, .has_low = true, .low = &bound_100},
};
static pgs_range_t logs_ranges[] = {
    {.shard = 0, .has_high = true, .high = &bound_100},
    {.shard = 1, .has_low = true, .low = &bound_100},
};
static pgs_range_t audits_ranges[] = {
    {.shard = 0, .has_high = true, .high = &bound_500},
    {.shard = 1, .has_low = true, .low = &bound_500},
};

static pgs_table_t tables[] = {
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "orders", .column = "user_id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
    {.name = "items", .column = "order_id", .type = PGS_TYPE_INT, .strategy = PGS_STRATEGY_HASH},
    {.name = "docs", .column = "id", .type = PGS_TYPE_UUID, .strategy = PGS_STRATEGY_HASH},
    {.name = "events",
     .column = "id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_RANGE,
     .ranges = events_ranges,
     .nranges = 2},
    {.name = "logs",
     .column = "event_id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_RANGE,
     .ranges = logs_ranges,
     .nranges = 2},
    {.name = "audits",
     .column = "event_id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_RANGE,
     .ranges = audits_ranges,
     .nranges = 2},
    {.name = "profiles", .column = "country", .type = PGS_TYPE_TEXT, .strategy = PGS_STRATEGY_GEO},
    {.name = "sites", .column = "country", .type = PGS_TYPE_TEXT, .strategy = PGS_STRATEGY_GEO},
    {.name = "invoices",
     .column = "tenant_id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_TENANT},
    {.name = "lines",
     .column = "tenant_id",
     .type = PGS_TYPE_BIGINT,
     .strategy = PGS_STRATEGY_TENANT},
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

/* Lex and analyse SQL; the plan stays in `plan`, its spec in `spec`. */
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
  assert_null(spec->having);
  assert_null(spec->group_text);
  assert_null(spec->same);
  assert_int_equal(spec->distinct_on, 0);
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

/* Sort keys as "column" + A/D + F (nulls first) / L, comma-separated. */
static const char *keys(void) {
  static char buf[256];
  buf[0] = '\0';
  for (int k = 0; k < spec->nkeys; k++) {
    size_t len = strlen(buf);
    snprintf(buf + len, sizeof(buf) - len, "%s%d%c%c", k ? "," : "", spec->keys[k].column,
             spec->keys[k].desc ? 'D' : 'A', spec->keys[k].nulls_first ? 'F' : 'L');
  }
  return buf;
}

static const char *groups(void) {
  static char buf[256];
  buf[0] = '\0';
  for (int g = 0; g < spec->ngroup; g++) {
    size_t len = strlen(buf);
    snprintf(buf + len, sizeof(buf) - len, "%s%d", g ? "," : "", spec->group[g]);
  }
  return buf;
}

static void expect_hidden(const char *text) {
  if (text == NULL) {
    if (spec->nhidden != 0 || spec->hidden_text != NULL)
      fail_msg("%s\n  hidden \"%s\", expected none", last_sql, spec->hidden_text);
    return;
  }
  if (spec->hidden_text == NULL || strcmp(spec->hidden_text, text) != 0)
    fail_msg("%s\n  hidden \"%s\"\n  expected \"%s\"", last_sql,
             spec->hidden_text ? spec->hidden_text : "(none)", text);
}

static void expect_str(const char *what, const char *got, const char *want) {
  if (strcmp(got, want) != 0)
    fail_msg("%s\n  %s \"%s\", expected \"%s\"", last_sql, what, got, want);
}

/* The shards' text for the statement analysed last: equal to WANT, and
 * SQL libpg_query parses. */
static void expect_shard_sql(const char *want) {
  pgs_buf_t out;
  pgs_buf_init(&out);
  pgs_buf_put(&out, "xy", 2); /* appended after what is there */
  pgs_merge_shard_sql(spec, &lexed, &out);
  assert_true(out.len > 3);
  assert_int_equal(out.data[out.len - 1], '\0');
  assert_int_equal(strlen((const char *)out.data), out.len - 1);
  assert_memory_equal(out.data, "xy", 2);
  const char *text = (const char *)out.data + 2;
  if (strcmp(text, want) != 0)
    fail_msg("%s\n  shard text \"%s\"\n  expected   \"%s\"", last_sql, text, want);
  PgQueryParseResult r = pg_query_parse(text);
  if (r.error) fail_msg("shard text does not parse: %s\n  %s", r.error->message, text);
  pg_query_free_parse_result(r);
  pgs_buf_free(&out);
}

/* ---- Bind values ---- */

static void expect_limits(const pgs_param_values_t *params, int64_t limit, int64_t offset) {
  int64_t l = -7, o = -7;
  pgs_value_error_t err;
  memset(&err, 0, sizeof(err));
  if (pgs_merge_limits(spec, &lexed, params, &l, &o, &err) != PGS_OK)
    fail_msg("%s\n  limits refused: %s %s", last_sql, err.sqlstate, err.message);
  if (l != limit || o != offset)
    fail_msg("%s\n  limit %lld offset %lld, expected %lld %lld", last_sql, (long long)l,
             (long long)o, (long long)limit, (long long)offset);
}

static void expect_limits_error(const pgs_param_values_t *params, const char *sqlstate,
                                const char *message) {
  int64_t l, o;
  pgs_value_error_t err;
  memset(&err, 0, sizeof(err));
  if (pgs_merge_limits(spec, &lexed, params, &l, &o, &err) != PGS_EINVAL)
    fail_msg("%s\n  limits accepted", last_sql);
  expect_str("sqlstate", err.sqlstate, sqlstate);
  expect_str("message", err.message, message);
}

/* ---- plain reads ---- */

static void test_concatenation(void **state) {
  merges("SELECT * FROM users WHERE name = 'x'");
  expect_hidden(NULL);
  assert_false(spec->grouped);
  assert_int_equal(spec->ncolumns, 0);
  assert_int_equal(spec->nkeys, 0);
  assert_false(spec->distinct);
  assert_int_equal(spec->tail_at, 0);
  assert_false(spec->rewrite);
  expect_shard_sql("SELECT * FROM users WHERE name = 'x'");

  merges("SELECT u.name, c.name FROM users u JOIN countries c ON c.code = u.country");
  assert_false(spec->rewrite);
  merges("SELECT id, (SELECT name FROM countries c WHERE c.code = u.country) FROM users u");
  merges(
      "WITH c AS (SELECT code FROM countries) SELECT * FROM users WHERE country IN "
      "(SELECT code FROM c)");
  merges("SELECT * FROM users TABLESAMPLE SYSTEM (10)");
  merges("SELECT * FROM ONLY users");
  merges("SELECT id FROM public.users");
  merges("SELECT 1 FROM users");
  /* A key IN list on several shards is the same statement. */
  merges("SELECT * FROM users WHERE id IN (1, 2, 3)");
  assert_int_equal(plan->target, PGS_TARGET_KEYS);
  assert_false(spec->rewrite);
}

static void test_distinct(void **state) {
  merges("SELECT DISTINCT country FROM users");
  assert_true(spec->distinct);
  assert_false(spec->grouped);
  expect_hidden(NULL);
  merges("SELECT DISTINCT * FROM users");
  assert_true(spec->distinct);
  merges("SELECT ALL country FROM users");
  assert_false(spec->distinct);
  merges("SELECT DISTINCT country, city FROM users ORDER BY city DESC, 1");
  expect_str("keys", keys(), "1DF,0AL");
  expect_hidden(NULL);
}

/* ---- ORDER BY ---- */

static void test_order_by_position(void **state) {
  merges("SELECT name, id FROM users ORDER BY 2");
  expect_str("keys", keys(), "1AL");
  expect_hidden(NULL);
  assert_false(spec->rewrite);
  merges("SELECT name, id FROM users ORDER BY 1 DESC, 2 NULLS FIRST");
  expect_str("keys", keys(), "0DF,1AF");
  merges("SELECT name, id FROM users ORDER BY 2 ASC NULLS LAST, 1 DESC NULLS LAST");
  expect_str("keys", keys(), "1AL,0DL");
  /* Positions count the columns * stands for. */
  merges("SELECT * FROM users ORDER BY 3, 1 DESC");
  expect_str("keys", keys(), "2AL,0DF");
  merges("SELECT *, name FROM users ORDER BY 7");
  expect_str("keys", keys(), "6AL");
}

static void test_order_by_name(void **state) {
  merges("SELECT name AS n, id FROM users ORDER BY n");
  expect_str("keys", keys(), "0AL");
  expect_hidden(NULL);
  merges("SELECT u.name, u.id FROM users u ORDER BY id DESC");
  expect_str("keys", keys(), "1DF");
  merges("SELECT count(*) FROM users ORDER BY count");
  expect_str("keys", keys(), "0AL");
  merges("SELECT lower(name) FROM users ORDER BY lower");
  expect_str("keys", keys(), "0AL");
  merges("SELECT name::text FROM users ORDER BY name");
  expect_str("keys", keys(), "0AL");
  merges("SELECT CASE WHEN id > 0 THEN 1 END, name FROM users ORDER BY \"case\"");
  expect_str("keys", keys(), "0AL");
  /* An output name wins over an input column of that name. */
  merges("SELECT id AS name, name AS id FROM users ORDER BY name");
  expect_str("keys", keys(), "0AL");
  /* Not an output name: an input column, hidden. */
  merges("SELECT name FROM users ORDER BY id");
  expect_hidden("id AS pgs_h0, ");
  expect_str("keys", keys(), "0AL");
  assert_int_equal(spec->nhidden, 1);
  assert_int_equal(spec->hidden_at, 7);
  assert_true(spec->rewrite);
  expect_shard_sql("SELECT id AS pgs_h0, name FROM users ORDER BY id");
}

static void test_order_by_expression(void **state) {
  merges("SELECT name, id % $1 FROM users ORDER BY id % $1 DESC");
  expect_str("keys", keys(), "1DF");
  expect_hidden(NULL);
  merges("SELECT name, upper(name) FROM users ORDER BY upper(name) DESC, upper(users.name)");
  expect_str("keys", keys(), "2DF,0AL");
  expect_hidden("upper(users.name) AS pgs_h0, ");
  merges("SELECT name FROM users ORDER BY lower(name), length(name) DESC NULLS LAST");
  expect_hidden("lower(name) AS pgs_h0, length(name) AS pgs_h1, ");
  expect_str("keys", keys(), "0AL,1DL");
  expect_shard_sql(
      "SELECT lower(name) AS pgs_h0, length(name) AS pgs_h1, name FROM users ORDER BY "
      "lower(name), length(name) DESC NULLS LAST");
  /* The same expression twice is one hidden column. */
  merges("SELECT name FROM users ORDER BY id % $1, name, id % $1 DESC");
  expect_hidden("id % $1 AS pgs_h0, ");
  expect_str("keys", keys(), "0AL,1AL,0DF");
  /* Literals stay parameters in the spec and come back in the text. */
  merges("SELECT name FROM users ORDER BY coalesce(city, 'zz''top'), id * 3");
  expect_hidden("COALESCE(city, $1) AS pgs_h0, id * $2 AS pgs_h1, ");
  expect_shard_sql(
      "SELECT COALESCE(city, 'zz''top') AS pgs_h0, id * 3 AS pgs_h1, name FROM users "
      "ORDER BY coalesce(city, 'zz''top'), id * 3");
  /* A literal in the select list is another parameter: not the same
   * expression, so hidden (the spec cannot depend on values). */
  merges("SELECT id * 3 FROM users ORDER BY id * 3");
  expect_hidden("id * $2 AS pgs_h0, ");
  /* A client parameter alone orders nothing. */
  merges("SELECT name FROM users ORDER BY $1, name");
  expect_str("keys", keys(), "0AL");
  expect_hidden(NULL);
  /* A qualified name is an expression. */
  merges("SELECT name FROM users u ORDER BY u.id");
  expect_hidden("u.id AS pgs_h0, ");
  /* ... and so are names after *, whose position is unknown. */
  merges("SELECT *, id % 10 AS bucket FROM users ORDER BY bucket");
  expect_hidden("id % $1 AS pgs_h0, ");
  expect_str("keys", keys(), "0AL");
  merges("SELECT u.* FROM users u ORDER BY name DESC");
  expect_hidden("name AS pgs_h0, ");
  expect_shard_sql("SELECT name AS pgs_h0, u.* FROM users u ORDER BY name DESC");
}

static void test_order_by_positions_shifted(void **state) {
  /* Hidden columns come first: the shards' positions move past them. */
  merges("SELECT name, city FROM users ORDER BY 2, id, 1 DESC");
  expect_hidden("id AS pgs_h0, ");
  expect_str("keys", keys(), "2AL,0AL,1DF");
  assert_int_equal(spec->npositions, 2);
  expect_shard_sql("SELECT id AS pgs_h0, name, city FROM users ORDER BY 3, id, 2 DESC");
  merges("SELECT * FROM users ORDER BY 12, lower(name) LIMIT 5");
  expect_str("keys", keys(), "12AL,0AL");
  expect_shard_sql("SELECT lower(name) AS pgs_h0, * FROM users ORDER BY 13, lower(name) LIMIT 5");
}

/* ---- aggregates and GROUP BY ---- */

static void test_aggregates(void **state) {
  merges("SELECT count(*), count(name), sum(x), min(name), max(x) FROM users");
  assert_true(spec->grouped);
  expect_str("roles", roles(), "ccs<>");
  assert_int_equal(spec->ngroup, 0);
  expect_hidden(NULL);
  assert_false(spec->rewrite);
  merges("SELECT pg_catalog.count(*), pg_catalog.sum(x) FILTER (WHERE x > 0) FROM users");
  expect_str("roles", roles(), "cs");
  merges("SELECT count(ALL name) AS n FROM users WHERE id IN (1, 2)");
  expect_str("roles", roles(), "c");
  /* avg: a hidden sum and count; the visible avg stays (its type). */
  merges("SELECT avg(x) FROM users");
  expect_hidden("pg_catalog.sum(x) AS pgs_h0, pg_catalog.count(x) AS pgs_h1, ");
  expect_str("roles", roles(), "sca");
  assert_int_equal(spec->columns[2].avg_sum, 0);
  assert_int_equal(spec->columns[2].avg_count, 1);
  expect_shard_sql(
      "SELECT pg_catalog.sum(x) AS pgs_h0, pg_catalog.count(x) AS pgs_h1, avg(x) "
      "FROM users");
  merges("SELECT avg(x) FILTER (WHERE y = 'a'), avg(y), avg(x) FILTER (WHERE y = 'a') FROM users");
  expect_hidden(
      "pg_catalog.sum(x) FILTER (WHERE y = $1) AS pgs_h0, pg_catalog.count(x) FILTER "
      "(WHERE y = $1) AS pgs_h1, pg_catalog.sum(y) AS pgs_h2, pg_catalog.count(y) AS "
      "pgs_h3, pg_catalog.sum(x) FILTER (WHERE y = $2) AS pgs_h4, pg_catalog.count(x) "
      "FILTER (WHERE y = $2) AS pgs_h5, ");
  expect_str("roles", roles(), "scscscaaa");
  assert_int_equal(spec->columns[8].avg_sum, 4);
  assert_int_equal(spec->columns[8].avg_count, 5);
  expect_shard_sql(
      "SELECT pg_catalog.sum(x) FILTER (WHERE y = 'a') AS pgs_h0, pg_catalog.count(x) "
      "FILTER (WHERE y = 'a') AS pgs_h1, pg_catalog.sum(y) AS pgs_h2, "
      "pg_catalog.count(y) AS pgs_h3, pg_catalog.sum(x) FILTER (WHERE y = 'a') AS "
      "pgs_h4, pg_catalog.count(x) FILTER (WHERE y = 'a') AS pgs_h5, avg(x) FILTER "
      "(WHERE y = 'a'), avg(y), avg(x) FILTER (WHERE y = 'a') FROM users");
  /* The same avg twice (same parameters) shares its hidden columns. */
  merges("SELECT avg(x), avg(x) AS again FROM users");
  assert_int_equal(spec->nhidden, 2);
  expect_str("roles", roles(), "scaa");
  /* Constants and plain expressions beside aggregates: any group value. */
  merges("SELECT 'x', count(*), now() FROM users");
  expect_str("roles", roles(), "ncn");
}

static void test_group_by(void **state) {
  merges("SELECT country, count(*) FROM users GROUP BY country");
  expect_str("roles", roles(), "nc");
  expect_str("groups", groups(), "0");
  expect_hidden(NULL);
  assert_false(spec->rewrite);
  /* By position, by alias, by an expression equal to a select item. */
  merges("SELECT country, city, sum(x) FROM users GROUP BY 2, 1");
  expect_str("groups", groups(), "1,0");
  merges("SELECT lower(country) AS c, max(x) FROM users GROUP BY c");
  expect_str("groups", groups(), "0");
  merges("SELECT lower(country), max(x) FROM users GROUP BY lower(country)");
  expect_str("groups", groups(), "0");
  merges("SELECT u.country, max(x) FROM users u GROUP BY country");
  expect_str("groups", groups(), "0");
  /* Not selected: hidden group columns. */
  merges("SELECT count(*) FROM users GROUP BY country, city");
  expect_hidden("country AS pgs_h0, city AS pgs_h1, ");
  expect_str("roles", roles(), "nnc");
  expect_str("groups", groups(), "0,1");
  expect_shard_sql(
      "SELECT country AS pgs_h0, city AS pgs_h1, count(*) FROM users GROUP BY "
      "country, city");
  /* A select item that is no group expression: any value of the group. */
  merges("SELECT id, name, count(*) FROM users GROUP BY id");
  expect_str("roles", roles(), "nnc");
  expect_str("groups", groups(), "0");
  merges("SELECT date_trunc('month', d), count(*) FROM users GROUP BY date_trunc('month', d)");
  expect_hidden("date_trunc($2, d) AS pgs_h0, ");
  expect_str("roles", roles(), "nnc");
  expect_str("groups", groups(), "0");
  /* GROUP BY without aggregates; duplicates and () count once. */
  merges("SELECT country FROM users GROUP BY country, country, ()");
  assert_true(spec->grouped);
  expect_str("groups", groups(), "0");
  merges("SELECT count(*) FROM users GROUP BY ()");
  assert_true(spec->grouped);
  assert_int_equal(spec->ngroup, 0);
  /* A client parameter groups nothing. */
  merges("SELECT country FROM users GROUP BY country, $1");
  expect_str("groups", groups(), "0");
  /* An aggregate in ORDER BY groups the statement. */
  merges("SELECT 1 FROM users ORDER BY count(*)");
  assert_true(spec->grouped);
  expect_hidden("count(*) AS pgs_h0, ");
  expect_str("roles", roles(), "cn");
}

static void test_group_order_avg(void **state) {
  /* The worked example of merge.h. */
  merges("SELECT country, avg(x) FROM users GROUP BY country ORDER BY 2 DESC LIMIT 3");
  expect_hidden("pg_catalog.sum(x) AS pgs_h0, pg_catalog.count(x) AS pgs_h1, ");
  expect_str("roles", roles(), "scna");
  expect_str("groups", groups(), "2");
  expect_str("keys", keys(), "3DF");
  assert_int_equal(spec->limit_param, 1);
  /* Ordered by an aggregate, not by the groups: no LIMIT on the shards. */
  expect_shard_sql(
      "SELECT pg_catalog.sum(x) AS pgs_h0, pg_catalog.count(x) AS pgs_h1, country, "
      "avg(x) FROM users GROUP BY country ORDER BY 4 DESC OFFSET 0 * (3)::int8");
  expect_limits(NULL, 3, 0);
  /* ORDER BY aggregates that are not selected: hidden, with their kind. */
  merges("SELECT country FROM users GROUP BY country ORDER BY sum(x) DESC, avg(y), max(z)");
  expect_hidden(
      "sum(x) AS pgs_h0, avg(y) AS pgs_h1, pg_catalog.sum(y) AS pgs_h2, "
      "pg_catalog.count(y) AS pgs_h3, max(z) AS pgs_h4, ");
  expect_str("roles", roles(), "sasc>n");
  assert_int_equal(spec->columns[1].avg_sum, 2);
  assert_int_equal(spec->columns[1].avg_count, 3);
  expect_str("keys", keys(), "0DF,1AL,4AL");
  expect_str("groups", groups(), "5");
  /* ORDER BY a selected aggregate by expression and by name. */
  merges("SELECT country, count(*) AS n FROM users GROUP BY 1 ORDER BY count(*) DESC, n");
  expect_str("keys", keys(), "1DF,1AL");
  /* ORDER BY a hidden group column reuses it. */
  merges("SELECT count(*) FROM users GROUP BY country ORDER BY country");
  expect_hidden("country AS pgs_h0, ");
  expect_str("keys", keys(), "0AL");
  expect_str("groups", groups(), "0");
  /* DISTINCT after grouping. */
  merges("SELECT DISTINCT count(*) FROM users GROUP BY country ORDER BY 1");
  assert_true(spec->distinct);
  expect_str("roles", roles(), "nc");
  expect_str("keys", keys(), "1AL");
  expect_shard_sql(
      "SELECT DISTINCT country AS pgs_h0, count(*) FROM users GROUP BY country "
      "ORDER BY 2");
}

/* ---- LIMIT, OFFSET, FETCH ---- */

static void test_limit_offset(void **state) {
  merges("SELECT name FROM users ORDER BY name LIMIT 10");
  assert_int_equal(spec->limit_param, 1);
  assert_int_equal(spec->offset_param, 0);
  assert_int_equal(spec->tail_at, 37);
  assert_int_equal(spec->tail_end, strlen(lexed.normalized));
  assert_false(spec->rewrite); /* LIMIT alone goes down as it is */
  expect_shard_sql("SELECT name FROM users ORDER BY name LIMIT 10");
  expect_limits(NULL, 10, 0);

  merges("SELECT name FROM users ORDER BY name LIMIT 10 OFFSET 20");
  assert_int_equal(spec->limit_param, 1);
  assert_int_equal(spec->offset_param, 2);
  assert_true(spec->rewrite);
  expect_shard_sql("SELECT name FROM users ORDER BY name LIMIT (10)::int8 + (20)::int8");
  expect_limits(NULL, 10, 20);

  merges("SELECT name FROM users OFFSET 5 LIMIT 2");
  assert_int_equal(spec->limit_param, 2);
  assert_int_equal(spec->offset_param, 1);
  expect_shard_sql("SELECT name FROM users LIMIT (2)::int8 + (5)::int8");
  expect_limits(NULL, 2, 5);

  merges("SELECT name FROM users OFFSET 5");
  expect_shard_sql("SELECT name FROM users OFFSET 0 * (5)::int8");
  expect_limits(NULL, -1, 5);

  merges("SELECT name FROM users LIMIT ALL OFFSET 5");
  assert_int_equal(spec->limit_param, 0);
  expect_shard_sql("SELECT name FROM users OFFSET 0 * (5)::int8");
  expect_limits(NULL, -1, 5);

  merges("SELECT name FROM users LIMIT NULL");
  assert_false(spec->rewrite);
  expect_limits(NULL, -1, 0);

  merges("SELECT name FROM users FETCH FIRST 3 ROWS ONLY");
  assert_int_equal(spec->limit_param, 1);
  assert_false(spec->rewrite);
  expect_limits(NULL, 3, 0);

  merges("SELECT name FROM users ORDER BY 1 OFFSET 2 ROWS FETCH NEXT 3 ROWS ONLY");
  expect_shard_sql("SELECT name FROM users ORDER BY 1 LIMIT (3)::int8 + (2)::int8");
  expect_limits(NULL, 3, 2);

  merges("SELECT name FROM users FETCH FIRST ROW ONLY");
  assert_true(spec->limit_one);
  assert_int_equal(spec->limit_param, 0);
  assert_false(spec->rewrite);
  expect_limits(NULL, 1, 0);
  merges("SELECT name FROM users OFFSET 4 ROWS FETCH FIRST ROW ONLY");
  expect_shard_sql("SELECT name FROM users LIMIT 1 + (4)::int8");
  expect_limits(NULL, 1, 4);

  /* Signs and casts. */
  merges("SELECT name FROM users LIMIT -3 OFFSET +2");
  assert_true(spec->limit_negate);
  assert_false(spec->offset_negate);
  expect_shard_sql("SELECT name FROM users LIMIT (-3)::int8 + (2)::int8");
  expect_limits_error(NULL, "2201W", "LIMIT must not be negative");
  merges("SELECT name FROM users OFFSET -1");
  expect_limits_error(NULL, "2201X", "OFFSET must not be negative");
  merges("SELECT name FROM users LIMIT -0");
  expect_limits(NULL, 0, 0);
  merges("SELECT name FROM users LIMIT $1::int4 OFFSET CAST($2 AS bigint)");
  expect_shard_sql("SELECT name FROM users LIMIT ($1)::int8 + ($2)::int8");
  merges("SELECT name FROM users LIMIT ($1) OFFSET (-($2))");
  assert_true(spec->offset_negate);
  expect_shard_sql("SELECT name FROM users LIMIT ($1)::int8 + (-$2)::int8");

  /* Literal forms PostgreSQL takes: a string, a numeric (rounded). */
  merges("SELECT name FROM users LIMIT ' 7 ' OFFSET 2.5");
  expect_shard_sql("SELECT name FROM users LIMIT (' 7 ')::int8 + (2.5)::int8");
  expect_limits(NULL, 7, 3);
  merges("SELECT name FROM users LIMIT 1e1");
  expect_limits(NULL, 10, 0);
  merges("SELECT name FROM users LIMIT 'x'");
  expect_limits_error(NULL, "22P02", "invalid input syntax for type bigint: \"x\"");
  merges("SELECT name FROM users LIMIT 99999999999999999999");
  expect_limits_error(NULL, "22003", "bigint out of range");
  merges("SELECT name FROM users LIMIT 9223372036854775807");
  expect_limits(NULL, INT64_MAX, 0);
}

static void test_limit_in_parentheses(void **state) {
  merges("(SELECT name FROM users ORDER BY id LIMIT 5 OFFSET $1)");
  expect_shard_sql(
      "(SELECT id AS pgs_h0, name FROM users ORDER BY id LIMIT (5)::int8 + "
      "($1)::int8)");
  assert_int_equal(lexed.normalized[spec->tail_end], ')');
  merges("(SELECT name FROM users ORDER BY id) LIMIT 5 OFFSET 1");
  expect_shard_sql(
      "(SELECT id AS pgs_h0, name FROM users ORDER BY id) LIMIT (5)::int8 + "
      "(1)::int8");
  /* Subqueries' own LIMITs are not the statement's. */
  merges(
      "SELECT name FROM users WHERE country IN (SELECT code FROM countries LIMIT 2) "
      "OFFSET 3");
  expect_shard_sql(
      "SELECT name FROM users WHERE country IN (SELECT code FROM countries LIMIT 2) "
      "OFFSET 0 * (3)::int8");
  merges(
      "SELECT name FROM users WHERE country IN (SELECT code FROM countries FETCH FIRST ROW "
      "ONLY) OFFSET 3 FETCH FIRST ROW ONLY");
  expect_shard_sql(
      "SELECT name FROM users WHERE country IN (SELECT code FROM countries FETCH "
      "FIRST ROW ONLY) LIMIT 1 + (3)::int8");
}

static void test_limit_grouped(void **state) {
  /* Ordered by every group column: the first groups are every shard's
   * first groups. */
  merges("SELECT country, city, count(*) FROM users GROUP BY 1, 2 ORDER BY 2, 1 LIMIT 5 OFFSET 1");
  expect_shard_sql(
      "SELECT country, city, count(*) FROM users GROUP BY 1, 2 ORDER BY 2, 1 LIMIT "
      "(5)::int8 + (1)::int8");
  merges("SELECT country, city, count(*) FROM users GROUP BY 1, 2 ORDER BY 1, 2, 3 DESC LIMIT 5");
  assert_false(spec->rewrite);
  merges("SELECT count(*), sum(x) FROM users LIMIT 1");
  assert_false(spec->rewrite);
  /* An aggregate before the group columns: the shards' first groups by
   * their partial counts are not the first overall. */
  merges("SELECT country, count(*) FROM users GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5");
  expect_shard_sql(
      "SELECT country, count(*) FROM users GROUP BY 1 ORDER BY 2 DESC, 1 OFFSET 0 * "
      "(5)::int8");
  /* Not ordered by every group column: no LIMIT on the shards, the
   * parameters still referenced. */
  merges("SELECT country, city, count(*) FROM users GROUP BY 1, 2 ORDER BY 1 LIMIT $1");
  expect_shard_sql(
      "SELECT country, city, count(*) FROM users GROUP BY 1, 2 ORDER BY 1 OFFSET 0 * "
      "($1)::int8");
  assert_true(spec->rewrite);
  merges("SELECT country, count(*) FROM users GROUP BY 1 LIMIT $1 OFFSET $2");
  expect_shard_sql(
      "SELECT country, count(*) FROM users GROUP BY 1 OFFSET 0 * ($1)::int8 + 0 * "
      "($2)::int8");
  merges("SELECT country, count(*) FROM users GROUP BY 1 OFFSET 2");
  expect_shard_sql("SELECT country, count(*) FROM users GROUP BY 1 OFFSET 0 * (2)::int8");
  merges("SELECT country, count(*) FROM users GROUP BY 1 FETCH FIRST ROW ONLY");
  expect_shard_sql("SELECT country, count(*) FROM users GROUP BY 1 ");
  merges("SELECT country, count(*) FROM users GROUP BY 1 LIMIT ALL");
  assert_false(spec->rewrite);
}

static void test_limit_values_from_binds(void **state) {
  merges("SELECT name FROM users ORDER BY name LIMIT $1 OFFSET $2");
  binds_t b = {0};
  bind_text_typed(&b, "10", 0);
  bind_text_typed(&b, " +3", 20);
  expect_limits(params_of(&b), 10, 3);
  b = (binds_t){0};
  bind_int(&b, 10, 2, 21); /* int2, as psycopg sends small ints */
  bind_int(&b, 300000, 4, 23);
  expect_limits(params_of(&b), 10, 300000);
  b = (binds_t){0};
  bind_int(&b, 5, 8, 20);
  bind_int(&b, 7, 8, 0); /* unspecified: int8, as PostgreSQL infers */
  expect_limits(params_of(&b), 5, 7);
  b = (binds_t){0};
  bind_null(&b);
  bind_null(&b);
  expect_limits(params_of(&b), -1, 0);
  b = (binds_t){0};
  bind_text_typed(&b, "2.5", 1700);
  bind_text_typed(&b, "2.5", 701);
  expect_limits(params_of(&b), 3, 2); /* numeric rounds half away, float8 to even */
  /* Negative, malformed, out of range. */
  b = (binds_t){0};
  bind_int(&b, -1, 8, 20);
  bind_int(&b, 0, 8, 20);
  expect_limits_error(params_of(&b), "2201W", "LIMIT must not be negative");
  b = (binds_t){0};
  bind_int(&b, 1, 8, 20);
  bind_text_typed(&b, "-4", 0);
  expect_limits_error(params_of(&b), "2201X", "OFFSET must not be negative");
  b = (binds_t){0};
  bind_text_typed(&b, "ten", 0);
  bind_text_typed(&b, "0", 0);
  expect_limits_error(params_of(&b), "22P02", "invalid input syntax for type bigint: \"ten\"");
  b = (binds_t){0};
  bind_text_typed(&b, "40000", 21);
  bind_text_typed(&b, "0", 0);
  expect_limits_error(params_of(&b), "22003", "value \"40000\" is out of range for type smallint");
  b = (binds_t){0};
  bind_int(&b, 1, 4, 20); /* int8 declared, 4 bytes sent */
  bind_text_typed(&b, "0", 0);
  expect_limits_error(params_of(&b), "22P03", "incorrect binary data format in bind parameter 1");
  b = (binds_t){0};
  bind_int(&b, 1, 8, 25);
  bind_text_typed(&b, "0", 0);
  expect_limits_error(params_of(&b), "0A000",
                      "a binary LIMIT parameter of type 25 cannot be read across shards");
  /* Missing Bind values. */
  expect_limits_error(NULL, "08P01", "the LIMIT is parameter $1, but no Bind supplies it");
  b = (binds_t){0};
  bind_text_typed(&b, "1", 0);
  expect_limits_error(params_of(&b), "08P01",
                      "bind message supplies 1 parameters, but the statement uses $2");
  /* Literals and Bind values mixed. */
  merges("SELECT name FROM users WHERE city = $1 LIMIT 4 OFFSET $2");
  assert_int_equal(spec->limit_param, 3);
  assert_int_equal(spec->offset_param, 2);
  b = (binds_t){0};
  bind_text_typed(&b, "x", 0);
  bind_int(&b, -2, 8, 0);
  assert_true(spec->offset_negate == false);
  expect_limits_error(params_of(&b), "2201X", "OFFSET must not be negative");
  expect_shard_sql("SELECT name FROM users WHERE city = $1 LIMIT (4)::int8 + ($2)::int8");
  merges("SELECT name FROM users LIMIT -$1");
  b = (binds_t){0};
  bind_int(&b, -6, 8, 20);
  expect_limits(params_of(&b), 6, 0);
}

/* ---- joins ---- */

static void test_colocated_joins(void **state) {
  merges("SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id");
  merges("SELECT * FROM users u LEFT JOIN orders o ON u.id = o.user_id AND o.total > 5");
  merges("SELECT count(*) FROM users u FULL JOIN orders o ON o.user_id = u.id");
  merges("SELECT count(*) FROM users u, orders o WHERE o.user_id = u.id AND u.x > 1");
  merges("SELECT count(*) FROM orders JOIN users ON user_id = id");
  /* int and bigint keys hash alike. */
  merges("SELECT * FROM orders o JOIN items i ON i.order_id = o.user_id");
  merges("SELECT * FROM users a JOIN users b ON a.id = b.id");
  merges("SELECT * FROM users a JOIN users b USING (id)");
  merges("SELECT * FROM invoices v JOIN lines l ON l.tenant_id = v.tenant_id AND l.n = v.n");
  merges("SELECT * FROM invoices NATURAL JOIN lines");
  merges("SELECT * FROM profiles p JOIN sites s ON s.country = p.country");
  merges("SELECT * FROM events e JOIN logs l ON l.event_id = e.id");
  /* Three tables, and a reference table in between. */
  merges(
      "SELECT * FROM users u JOIN orders o ON o.user_id = u.id JOIN items i ON i.order_id = "
      "o.user_id JOIN countries c ON c.code = u.country");
  /* A WITH name hides the table it is named after. */
  merges("WITH users AS (SELECT 1 AS id) SELECT * FROM users, orders");
}

static void test_joins_refused(void **state) {
  refused("SELECT * FROM users u JOIN orders o ON o.id = u.id",
          "a join of sharded tables users and orders not on their shard keys cannot be merged "
          "across shards");
  refused("SELECT * FROM users u, orders o WHERE o.user_id = u.id OR o.x = 1",
          "a join of sharded tables users and orders not on their shard keys cannot be merged "
          "across shards");
  refused("SELECT * FROM users u JOIN orders o USING (id)",
          "a join of sharded tables users and orders not on their shard keys cannot be merged "
          "across shards");
  refused("SELECT * FROM users u JOIN orders o ON o.user_id = u.id JOIN events e ON e.x = u.id",
          "a join of sharded tables users and events not on their shard keys cannot be merged "
          "across shards");
  refused("SELECT * FROM users u CROSS JOIN orders",
          "a join of sharded tables users and orders not on their shard keys cannot be merged "
          "across shards");
  refused("SELECT * FROM users u JOIN events e ON e.id = u.id",
          "a join of sharded tables events and users on their shard keys cannot be merged across "
          "shards: they are not sharded alike");
  refused("SELECT * FROM users u JOIN docs d ON d.id = u.id",
          "a join of sharded tables docs and users on their shard keys cannot be merged across "
          "shards: they are not sharded alike");
  refused("SELECT * FROM events e JOIN audits a ON a.event_id = e.id",
          "a join of sharded tables audits and events on their shard keys cannot be merged across "
          "shards: they are not sharded alike");
  refused("SELECT * FROM users u JOIN invoices v ON v.tenant_id = u.id",
          "a join of sharded tables invoices and users on their shard keys cannot be merged "
          "across shards: they are not sharded alike");
}

/* ---- HAVING ---- */

/* The HAVING tree in prefix order: & and, | or, ! not, "c OP c" for a
 * comparison (N for the constant NULL), "c?" for IS NULL. */
static const char *having(void) {
  static const char *const ops[] = {"=", "<>", "<", "<=", ">", ">="};
  static char buf[512];
  buf[0] = '\0';
  for (int i = 0; i < spec->nhaving; i++) {
    const pgs_merge_cond_t *c = &spec->having[i];
    size_t len = strlen(buf);
    char l[8], r[8];
    snprintf(l, sizeof(l), c->left == PGS_COND_NULL ? "N" : "%d", c->left);
    snprintf(r, sizeof(r), c->right == PGS_COND_NULL ? "N" : "%d", c->right);
    switch (c->kind) {
    case PGS_COND_AND:
    case PGS_COND_OR:
    case PGS_COND_NOT:
      snprintf(buf + len, sizeof(buf) - len, "%s%c%d", i ? " " : "", "&|!"[c->kind], c -> nargs);
      break;
    case PGS_COND_CMP:
      snprintf(buf + len, sizeof(buf) - len, "%s%s%s%s", i ? " " : "", l, ops[c->op], r);
      break;
    default:
      snprintf(buf + len, sizeof(buf) - len, "%s%s?", i ? " " : "", l);
      break;
    }
  }
  return buf;
}

static void test_having(void **state) {
  /* The constant comes back typed as the comparison types it. */
  merges("SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > 1");
  expect_hidden("CASE WHEN false THEN (count(*)) ELSE ($1) END AS pgs_h0, ");
  expect_str("roles", roles(), "nnc");
  expect_str("groups", groups(), "1");
  expect_str("having", having(), "2>0");
  assert_false(spec->one_group);
  expect_shard_sql(
      "SELECT CASE WHEN false THEN (count(*)) ELSE (1) END AS pgs_h0, country, count(*) FROM "
      "users GROUP BY country HAVING true OR count(*) > 1");
  /* Aggregates not selected are hidden columns (an avg's sum and count
   * too); a constant on the left; AND, OR, NOT. */
  merges(
      "SELECT country FROM users GROUP BY country HAVING sum(x) >= 10 AND (5 < avg(x) OR NOT "
      "max(name) = 'bob')");
  expect_str("having", having(), "&2 0>=1 |2 2<3 !1 6=7");
  expect_str("roles", roles(), "snnasc>nn");
  expect_hidden(
      "sum(x) AS pgs_h0, CASE WHEN false THEN (sum(x)) ELSE ($1) END AS pgs_h1, CASE WHEN false "
      "THEN (avg(x)) ELSE ($2) END AS pgs_h2, avg(x) AS pgs_h3, pg_catalog.sum(x) AS pgs_h4, "
      "pg_catalog.count(x) AS pgs_h5, max(name) AS pgs_h6, CASE WHEN false THEN (max(name)) ELSE "
      "($3) END AS pgs_h7, ");
  expect_shard_sql(
      "SELECT sum(x) AS pgs_h0, CASE WHEN false THEN (sum(x)) ELSE (10) END AS pgs_h1, CASE "
      "WHEN false THEN (avg(x)) ELSE (5) END AS pgs_h2, avg(x) AS pgs_h3, pg_catalog.sum(x) AS "
      "pgs_h4, pg_catalog.count(x) AS pgs_h5, max(name) AS pgs_h6, CASE WHEN false THEN "
      "(max(name)) ELSE ('bob') END AS pgs_h7, country FROM users GROUP BY country HAVING true "
      "OR sum(x) >= 10 AND (5 < avg(x) OR NOT max(name) = 'bob')");
  /* A selected aggregate is its select item; group columns (as written
   * or through their position) and NULL. */
  merges(
      "SELECT lower(city), count(*) AS n FROM users GROUP BY 1 HAVING count(*) <> 2 AND "
      "lower(city) IS NOT NULL AND count(*) > NULL");
  expect_str("having", having(), "&3 2<>0 !1 1? 2>N");
  merges("SELECT city FROM users GROUP BY city HAVING city = 'x' OR city IS NULL");
  expect_str("having", having(), "|2 1=0 1?");
  expect_hidden("CASE WHEN false THEN (city) ELSE ($1) END AS pgs_h0, ");
  /* BETWEEN (SYMMETRIC, NOT) and IN lists. */
  merges("SELECT city FROM users GROUP BY city HAVING count(*) BETWEEN 2 AND 5");
  expect_str("having", having(), "&2 0>=1 0<=2");
  merges("SELECT city FROM users GROUP BY city HAVING count(*) NOT BETWEEN SYMMETRIC 5 AND 2");
  expect_str("having", having(), "!1 |2 &2 0>=1 0<=2 &2 0>=2 0<=1");
  merges("SELECT city FROM users GROUP BY city HAVING min(x) IN (1, 2) AND max(x) NOT IN (3)");
  expect_str("having", having(), "&2 |2 0=1 0=2 &1 3<>4");
  /* Typed constants stay as written; the client's $n come back too. */
  merges("SELECT city FROM users GROUP BY city HAVING max(d) > DATE '2024-01-01' AND sum(x) < $1");
  expect_shard_sql(
      "SELECT max(d) AS pgs_h0, '2024-01-01'::date AS pgs_h1, sum(x) AS pgs_h2, CASE WHEN false "
      "THEN (sum(x)) ELSE ($1) END AS pgs_h3, city FROM users GROUP BY city HAVING true OR "
      "max(d) > DATE '2024-01-01' AND sum(x) < $1");
  /* count(DISTINCT) in HAVING. */
  merges("SELECT city FROM users GROUP BY city HAVING count(DISTINCT country) > 1");
  expect_str("having", having(), "0>2");
  assert_true(spec->columns[0].distinct);
  assert_int_equal(spec->columns[0].distinct_arg, 1);
  /* Without GROUP BY: one group, whatever the shards send. */
  merges("SELECT count(*) FROM users HAVING count(*) > 0");
  assert_true(spec->grouped);
  assert_true(spec->one_group);
  assert_int_equal(spec->ngroup, 0);
  merges("SELECT 1 FROM users HAVING min(x) IS NULL");
  assert_true(spec->grouped);
  expect_str("roles", roles(), "<n");
  /* HAVING drops groups: no LIMIT on the shards. */
  merges("SELECT country, count(*) FROM users GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 3");
  expect_shard_sql(
      "SELECT CASE WHEN false THEN (count(*)) ELSE (1) END AS pgs_h0, country, count(*) FROM "
      "users GROUP BY 2 HAVING true OR count(*) > 1 ORDER BY 2 OFFSET 0 * (3)::int8");
  /* In parentheses, with a WITH query. */
  merges("(SELECT country FROM users GROUP BY country HAVING count(*) > 1) ORDER BY 1");
  expect_shard_sql(
      "(SELECT count(*) AS pgs_h0, CASE WHEN false THEN (count(*)) ELSE (1) END AS pgs_h1, "
      "country FROM users GROUP BY country HAVING true OR count(*) > 1) ORDER BY 3");
}

/* ---- DISTINCT aggregates ---- */

static void test_distinct_aggregates(void **state) {
  /* The shards group by x too: one row per value of x. */
  merges("SELECT count(DISTINCT country) FROM users");
  expect_hidden("country AS pgs_h0, ");
  expect_str("roles", roles(), "nc");
  assert_true(spec->columns[1].distinct);
  assert_int_equal(spec->columns[1].distinct_arg, 0);
  assert_false(spec->columns[0].distinct);
  assert_true(spec->one_group);
  expect_shard_sql("SELECT country AS pgs_h0, count(DISTINCT country) FROM users GROUP BY 1 ");
  /* Beside other aggregates, which combine over the finer groups. */
  merges(
      "SELECT city, count(DISTINCT country), count(*), sum(x) FROM users WHERE x > 0 GROUP BY "
      "city ORDER BY city LIMIT 3");
  expect_str("roles", roles(), "nnccs");
  expect_str("groups", groups(), "1");
  assert_false(spec->one_group);
  expect_shard_sql(
      "SELECT country AS pgs_h0, city, count(DISTINCT country), count(*), sum(x) FROM users "
      "WHERE x > 0 GROUP BY 1, city ORDER BY city OFFSET 0 * (3)::int8");
  /* sum and avg of DISTINCT x; min and max of DISTINCT x are min and max. */
  merges(
      "SELECT sum(DISTINCT x), avg(DISTINCT x), min(DISTINCT x) FROM users GROUP BY DISTINCT "
      "city");
  expect_hidden(
      "pg_catalog.sum(DISTINCT x) AS pgs_h0, pg_catalog.count(DISTINCT x) AS pgs_h1, x AS "
      "pgs_h2, city AS pgs_h3, ");
  expect_str("roles", roles(), "scnnsa<");
  assert_true(spec->columns[0].distinct && spec->columns[1].distinct);
  assert_true(spec->columns[4].distinct);
  assert_false(spec->columns[5].distinct);
  assert_false(spec->columns[6].distinct);
  assert_int_equal(spec->columns[4].distinct_arg, 2);
  expect_shard_sql(
      "SELECT pg_catalog.sum(DISTINCT x) AS pgs_h0, pg_catalog.count(DISTINCT x) AS pgs_h1, x AS "
      "pgs_h2, city AS pgs_h3, sum(DISTINCT x), avg(DISTINCT x), min(DISTINCT x) FROM users "
      "GROUP BY DISTINCT 3, city");
  merges("SELECT min(DISTINCT x) FROM users");
  expect_hidden(NULL);
  assert_false(spec->rewrite);
  /* Two DISTINCT aggregates, FILTER, ORDER BY an aggregate. */
  merges(
      "SELECT count(DISTINCT x) FILTER (WHERE x > 1), count(DISTINCT name) FROM users "
      "ORDER BY 2");
  expect_hidden("x AS pgs_h0, name AS pgs_h1, ");
  expect_shard_sql(
      "SELECT x AS pgs_h0, name AS pgs_h1, count(DISTINCT x) FILTER (WHERE x > 1), count(DISTINCT "
      "name) FROM users GROUP BY 1, 2 ORDER BY 4");
  merges("SELECT city FROM users GROUP BY city ORDER BY count(DISTINCT x) DESC, city");
  expect_hidden("count(DISTINCT x) AS pgs_h0, x AS pgs_h1, ");
  expect_shard_sql(
      "SELECT count(DISTINCT x) AS pgs_h0, x AS pgs_h1, city FROM users GROUP BY 2, city ORDER "
      "BY count(DISTINCT x) DESC, city");
  /* Expressions of group columns are fine. */
  merges("SELECT lower(city), count(DISTINCT x) FROM users GROUP BY city");
  /* ... written with literals: the same expression when they are written
   * alike, which each run checks. */
  merges("SELECT x % 10, count(DISTINCT y) FROM users GROUP BY x % 10");
  assert_int_equal(spec->nsame, 1);
  assert_int_equal(spec->same[0] + spec->same[1], 3); /* $1 and $2 */
  expect_limits(NULL, -1, 0);
  merges("SELECT x % 10, count(DISTINCT y) FROM users GROUP BY x % 3");
  assert_int_equal(spec->nsame, 1);
  expect_limits_error(NULL, "0A000",
                      "an expression that is its GROUP BY expression but for a literal cannot be "
                      "merged across shards with HAVING or a DISTINCT aggregate");
  merges(
      "SELECT date_trunc('month', d) FROM users GROUP BY date_trunc('month', d) HAVING "
      "date_trunc('month', d) > '2024-01-01'");
  expect_str("having", having(), "0>1");
  assert_int_equal(spec->nsame, 1);
  expect_limits(NULL, -1, 0);
  /* The client's own parameters must be the same ones. */
  merges("SELECT date_trunc($1, d), count(DISTINCT y) FROM users GROUP BY date_trunc($1, d)");
  assert_int_equal(spec->nsame, 0);
  merges("SELECT city, count(DISTINCT x) FROM users GROUP BY 1 ORDER BY lower(city)");
  merges("SELECT 1, count(DISTINCT x) FROM users GROUP BY city");
}

/* ---- DISTINCT ON ---- */

static void test_distinct_on(void **state) {
  /* The shards run it as written; the merge sorts by the ORDER BY, then by
   * the DISTINCT ON expressions, and keeps the first row of each key. */
  merges("SELECT DISTINCT ON (country) country, id FROM users ORDER BY country, id DESC");
  assert_int_equal(spec->distinct_on, 1);
  expect_str("keys", keys(), "0AL,1DF,0AL");
  assert_false(spec->rewrite);
  assert_false(spec->distinct);
  /* Without ORDER BY; the ORDER BY naming only some of them. */
  merges("SELECT DISTINCT ON (country, city) id FROM users");
  expect_hidden("country AS pgs_h0, city AS pgs_h1, ");
  expect_str("keys", keys(), "0AL,1AL");
  assert_int_equal(spec->distinct_on, 2);
  merges("SELECT DISTINCT ON (city, country) id, city FROM users ORDER BY city DESC");
  expect_str("keys", keys(), "2DF,2AL,0AL");
  assert_int_equal(spec->distinct_on, 2);
  /* Expressions with literals: each its own hidden column, equal values. */
  merges("SELECT DISTINCT ON (x / 100) x / 100, id FROM users ORDER BY x / 100 DESC, id");
  expect_hidden("x / $3 AS pgs_h0, x / $1 AS pgs_h1, ");
  expect_str("keys", keys(), "0DF,3AL,1AL");
  expect_shard_sql(
      "SELECT DISTINCT ON (x / 100) x / 100 AS pgs_h0, x / 100 AS pgs_h1, x / 100, id FROM "
      "users ORDER BY x / 100 DESC, id");
  /* Positions move past hidden columns. */
  merges("SELECT DISTINCT ON (country) country, id FROM users ORDER BY 1, x LIMIT 3 OFFSET 1");
  expect_str("keys", keys(), "1AL,0AL,1AL");
  assert_int_equal(spec->distinct_on, 1);
  expect_shard_sql(
      "SELECT DISTINCT ON (country) x AS pgs_h0, country, id FROM users ORDER BY 2, x LIMIT "
      "(3)::int8 + (1)::int8");
  merges("SELECT DISTINCT ON (lower(name)) * FROM users ORDER BY lower(name), id");
  expect_hidden("lower(name) AS pgs_h0, id AS pgs_h1, ");
  assert_int_equal(spec->distinct_on, 1);
  /* Whether it matches the ORDER BY is the shards' to say (42P10). */
  merges("SELECT DISTINCT ON (country) country, id FROM users ORDER BY id, country");
}

/* ---- what cannot be merged ---- */

static void test_refused_constructs(void **state) {
  static const struct {
    const char *sql, *message;
  } cases[] = {
      {"SELECT id, row_number() OVER (ORDER BY id) FROM users",
       "window functions cannot be merged across shards"},
      {"SELECT country, count(*), sum(count(*)) OVER () FROM users GROUP BY country",
       "window functions cannot be merged across shards"},
      {"SELECT id, lag(x) OVER w FROM users WINDOW w AS (ORDER BY id)",
       "window functions cannot be merged across shards"},
      {"SELECT name FROM users ORDER BY rank() OVER (ORDER BY x)",
       "window functions cannot be merged across shards"},
      {"SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > "
       "(SELECT count(*) FROM countries)",
       "HAVING with a subquery cannot be merged across shards"},
      {"SELECT country FROM users GROUP BY country HAVING country IN (SELECT code FROM orders)",
       "HAVING with a subquery cannot be merged across shards"},
      {"SELECT country FROM users GROUP BY country HAVING rank() OVER (ORDER BY country) > 1",
       "window functions cannot be merged across shards"},
      {"SELECT country FROM users GROUP BY country HAVING count(*) + 1 > 2",
       "HAVING with count() inside an expression cannot be merged across shards; compare the "
       "aggregate itself"},
      {"SELECT country FROM users GROUP BY country HAVING string_agg(name, ',') = 'a'",
       "string_agg() cannot be merged across shards"},
      {"SELECT country FROM users GROUP BY country HAVING lower(country) = 'de'",
       "HAVING with an expression that is not an aggregate, a GROUP BY expression or a "
       "constant cannot be merged across shards"},
      {"SELECT country FROM users GROUP BY country HAVING country LIKE 'D%'",
       "HAVING with this condition cannot be merged across shards (only comparisons, BETWEEN, "
       "IN lists, IS [NOT] NULL, AND, OR and NOT)"},
      {"SELECT country FROM users GROUP BY country HAVING bool_or(x > 1)",
       "bool_or() cannot be merged across shards"},
      {"SELECT country FROM users GROUP BY country HAVING count(*) > 1 IS TRUE",
       "HAVING with this condition cannot be merged across shards (only comparisons, BETWEEN, "
       "IN lists, IS [NOT] NULL, AND, OR and NOT)"},
      {"SELECT FROM users HAVING count(*) > 1",
       "a SELECT without columns cannot be merged across shards with ORDER BY or GROUP BY"},
      {"SELECT x, count(DISTINCT country) FROM users",
       "count/sum/avg(DISTINCT ...) without GROUP BY cannot be merged across shards beside a "
       "select item that is not an aggregate"},
      {"SELECT 1, count(DISTINCT country) FROM users",
       "count/sum/avg(DISTINCT ...) without GROUP BY cannot be merged across shards beside a "
       "select item that is not an aggregate"},
      {"SELECT date_trunc($1, d), count(DISTINCT y) FROM users GROUP BY date_trunc($2, d)",
       "count/sum/avg(DISTINCT ...) cannot be merged across shards beside a select item that is "
       "not an aggregate or a GROUP BY expression"},
      {"SELECT city, name, count(DISTINCT country) FROM users GROUP BY city",
       "count/sum/avg(DISTINCT ...) cannot be merged across shards beside a select item that is "
       "not an aggregate or a GROUP BY expression"},
      {"SELECT city, count(DISTINCT country) FROM users GROUP BY city ORDER BY name",
       "count/sum/avg(DISTINCT ...) cannot be merged across shards with an ORDER BY expression "
       "that is not an aggregate or a GROUP BY expression"},
      {"SELECT count(DISTINCT country) FROM users HAVING count(DISTINCT country) > 1",
       "HAVING with a constant beside count/sum/avg(DISTINCT ...) and no GROUP BY cannot be "
       "merged across shards"},
      {"SELECT string_agg(name, ',') FROM users", "string_agg() cannot be merged across shards"},
      {"SELECT country, array_agg(id ORDER BY id) FROM users GROUP BY 1",
       "array_agg() cannot be merged across shards"},
      {"SELECT json_agg(id) FROM users", "json_agg() cannot be merged across shards"},
      {"SELECT bool_and(x > 0) FROM users", "bool_and() cannot be merged across shards"},
      {"SELECT every(x > 0) FROM users", "every() cannot be merged across shards"},
      {"SELECT stddev(x) FROM users", "stddev() cannot be merged across shards"},
      {"SELECT country, variance(x) FROM users GROUP BY country",
       "variance() cannot be merged across shards"},
      {"SELECT bit_or(id) FROM users", "bit_or() cannot be merged across shards"},
      {"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM users",
       "percentile_cont() cannot be merged across shards"},
      {"SELECT mode() WITHIN GROUP (ORDER BY x) FROM users",
       "mode() cannot be merged across shards"},
      {"SELECT name FROM users GROUP BY name ORDER BY string_agg(city, ',')",
       "string_agg() cannot be merged across shards"},
      {"SELECT count(DISTINCT x ORDER BY x) FROM users",
       "count() with ORDER BY cannot be merged across shards"},
      {"SELECT max(x ORDER BY y) FROM users", "max() with ORDER BY cannot be merged across shards"},
      {"SELECT count(*) + 1 FROM users",
       "count() inside an expression cannot be merged across shards; select the aggregate "
       "itself"},
      {"SELECT sum(x) / count(x) FROM users",
       "sum() inside an expression cannot be merged across shards; select the aggregate itself"},
      {"SELECT round(avg(x), 2) FROM users",
       "avg() inside an expression cannot be merged across shards; select the aggregate itself"},
      {"SELECT coalesce(max(x), 0) FROM users",
       "max() inside an expression cannot be merged across shards; select the aggregate itself"},
      {"SELECT count(*)::int FROM users",
       "count() inside an expression cannot be merged across shards; select the aggregate "
       "itself"},
      {"SELECT name FROM users GROUP BY name ORDER BY count(*) DESC NULLS LAST, sum(x) * 2",
       "sum() inside an expression cannot be merged across shards; select the aggregate itself"},
      {"SELECT max(min(x)) FROM users", "nested aggregates cannot be merged across shards"},
      {"SELECT a, b, count(*) FROM users GROUP BY ROLLUP (a, b)",
       "GROUPING SETS, ROLLUP and CUBE cannot be merged across shards"},
      {"SELECT a, count(*) FROM users GROUP BY CUBE (a)",
       "GROUPING SETS, ROLLUP and CUBE cannot be merged across shards"},
      {"SELECT a, count(*) FROM users GROUP BY GROUPING SETS ((a), ())",
       "GROUPING SETS, ROLLUP and CUBE cannot be merged across shards"},
      {"SELECT a, grouping(a) FROM users GROUP BY a", "GROUPING() cannot be merged across shards"},
      {"SELECT DISTINCT ON (country) country, count(*) FROM users GROUP BY country",
       "DISTINCT ON with aggregates or GROUP BY cannot be merged across shards"},
      {"SELECT DISTINCT ON ($1) country FROM users",
       "DISTINCT ON a constant cannot be merged across shards"},
      {"SELECT DISTINCT ON (1) country, id FROM users ORDER BY 1",
       "DISTINCT ON (position) cannot be merged across shards; write the expression"},
      {"SELECT DISTINCT ON (country) country FROM users ORDER BY country, rank() OVER ()",
       "window functions cannot be merged across shards"},
      {"SELECT id FROM users UNION SELECT id FROM countries",
       "UNION cannot be merged across shards"},
      {"SELECT id FROM users UNION ALL SELECT id FROM users",
       "UNION ALL cannot be merged across shards"},
      {"SELECT id FROM users INTERSECT SELECT 1", "INTERSECT cannot be merged across shards"},
      {"SELECT id FROM users EXCEPT ALL SELECT 1", "EXCEPT ALL cannot be merged across shards"},
      {"SELECT name FROM users ORDER BY name FETCH FIRST 3 ROWS WITH TIES",
       "FETCH FIRST ... WITH TIES cannot be merged across shards"},
      {"SELECT name FROM users LIMIT 1 + 1",
       "LIMIT other than a constant or a parameter cannot be merged across shards"},
      {"SELECT name FROM users LIMIT (SELECT count(*) FROM countries)",
       "LIMIT other than a constant or a parameter cannot be merged across shards"},
      {"SELECT name FROM users OFFSET $1 * 2",
       "OFFSET other than a constant or a parameter cannot be merged across shards"},
      {"SELECT name FROM users LIMIT $1::text",
       "LIMIT other than a constant or a parameter cannot be merged across shards"},
      {"SELECT name FROM users ORDER BY name USING <",
       "ORDER BY ... USING cannot be merged across shards"},
      {"SELECT * FROM users WHERE x IN (SELECT x FROM orders)",
       "a subquery reading sharded table orders cannot be merged across shards"},
      {"SELECT id, (SELECT max(total) FROM orders o WHERE o.user_id = u.id) FROM users u",
       "a subquery reading sharded table orders cannot be merged across shards"},
      {"SELECT count(*) FROM (SELECT id FROM users ORDER BY id LIMIT 100) s",
       "a subquery reading sharded table users cannot be merged across shards: it has LIMIT or "
       "OFFSET"},
      {"SELECT * FROM countries c, LATERAL (SELECT * FROM users u WHERE u.country = c.code) x",
       "a subquery reading sharded table users cannot be merged across shards"},
      {"SELECT * FROM users WHERE EXISTS (SELECT 1 FROM users u2 WHERE u2.x = users.x)",
       "a subquery reading sharded table users cannot be merged across shards"},
      {"SELECT name FROM users ORDER BY (SELECT max(id) FROM events)",
       "a subquery reading sharded table events cannot be merged across shards"},
      {"WITH users AS (SELECT count(*) AS n FROM users) SELECT * FROM users",
       "a WITH query reading sharded table users cannot be merged across shards: it aggregates "
       "without GROUP BY the shard key id"},
      {"WITH c AS (SELECT * FROM countries) SELECT * FROM users JOIN c ON true WHERE "
       "users.id IN (SELECT id FROM events)",
       "a subquery reading sharded table events cannot be merged across shards"},
      {"SELECT *, count(*) FROM users GROUP BY id",
       "SELECT * with aggregates or GROUP BY cannot be merged across shards"},
      {"SELECT u.* FROM users u GROUP BY u.id",
       "SELECT * with aggregates or GROUP BY cannot be merged across shards"},
      {"SELECT name FROM users ORDER BY 'x'", "non-integer constant in ORDER BY"},
      {"SELECT name FROM users ORDER BY 3", "ORDER BY position 3 is not in select list"},
      {"SELECT name FROM users ORDER BY 0", "ORDER BY position 0 is not in select list"},
      {"SELECT name, count(*) FROM users GROUP BY 3", "GROUP BY position 3 is not in select list"},
      {"SELECT name FROM users GROUP BY NULL", "non-integer constant in GROUP BY"},
      {"SELECT FROM users ORDER BY id",
       "a SELECT without columns cannot be merged across shards with ORDER BY or GROUP BY"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) refused(cases[i].sql, cases[i].message);
}

static void test_copy(void **state) {
  merges("COPY users TO STDOUT");
  expect_hidden(NULL);
  assert_false(spec->rewrite);
  assert_false(spec->grouped);
  assert_int_equal(spec->nkeys, 0);
  expect_shard_sql("COPY users TO STDOUT");
  merges("COPY users (id, name) TO STDOUT WITH (FORMAT csv, HEADER false)");
  merges("COPY (SELECT id, name FROM users WHERE city = 'x') TO STDOUT");
  expect_shard_sql("COPY (SELECT id, name FROM users WHERE city = 'x') TO STDOUT");
  merges("COPY (SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id) TO STDOUT CSV");
  refused("COPY (SELECT id FROM users ORDER BY id) TO STDOUT",
          "COPY (SELECT ... ORDER BY) TO STDOUT cannot be merged across shards; COPY only "
          "concatenates the shards' rows");
  refused("COPY (SELECT country, count(*) FROM users GROUP BY 1) TO STDOUT",
          "COPY (SELECT ... aggregates or GROUP BY) TO STDOUT cannot be merged across shards; COPY "
          "only concatenates the shards' rows");
  refused("COPY (SELECT count(*) FROM users) TO STDOUT",
          "COPY (SELECT ... aggregates or GROUP BY) TO STDOUT cannot be merged across shards; COPY "
          "only concatenates the shards' rows");
  refused("COPY (SELECT DISTINCT country FROM users) TO STDOUT",
          "COPY (SELECT ... DISTINCT) TO STDOUT cannot be merged across shards; COPY only "
          "concatenates the shards' rows");
  refused("COPY (SELECT id FROM users LIMIT 10) TO STDOUT",
          "COPY (SELECT ... LIMIT or OFFSET) TO STDOUT cannot be merged across shards; COPY only "
          "concatenates the shards' rows");
  refused("COPY (SELECT id FROM users OFFSET 1) TO STDOUT",
          "COPY (SELECT ... LIMIT or OFFSET) TO STDOUT cannot be merged across shards; COPY only "
          "concatenates the shards' rows");
  refused("COPY (SELECT string_agg(name, ',') FROM users) TO STDOUT",
          "string_agg() cannot be merged across shards");
  refused("COPY users TO STDOUT (FORMAT csv, HEADER)",
          "COPY ... TO STDOUT with HEADER cannot be merged across shards (each shard would send "
          "its header line)");
  refused("COPY users TO STDOUT CSV HEADER",
          "COPY ... TO STDOUT with HEADER cannot be merged across shards (each shard would send "
          "its header line)");
  refused("COPY users TO STDOUT (FORMAT binary)",
          "COPY ... TO STDOUT in binary format cannot be merged across shards (each shard's "
          "output has its own header)");
  refused("COPY users TO STDOUT BINARY",
          "COPY ... TO STDOUT in binary format cannot be merged across shards (each shard's "
          "output has its own header)");
  refused("COPY users TO '/tmp/users.txt'",
          "COPY ... TO a server file or program cannot be merged across shards");
  refused("COPY users TO PROGRAM 'cat'",
          "COPY ... TO a server file or program cannot be merged across shards");
  /* A COPY of a data-modifying statement is a write (on one shard), not a
   * read to merge. */
  analyse("COPY (DELETE FROM users RETURNING id) TO STDOUT");
  assert_int_equal(plan->kind, PGS_STMT_WRITE);
  assert_true(plan->copy_write);
  assert_null(plan->merge);
  /* COPY FROM splits rows instead. */
  analyse("COPY users (id, name) FROM STDIN");
  assert_null(spec);
}

/* ---- which plans carry a spec ---- */

static void test_which_plans(void **state) {
  analyse("SELECT * FROM countries");
  assert_null(spec); /* no sharded table */
  analyse("SELECT 1");
  assert_null(spec);
  analyse("SELECT * FROM users; SELECT * FROM orders");
  assert_null(spec); /* several statements */
  analyse("EXPLAIN SELECT * FROM users");
  assert_null(spec);
  analyse("UPDATE users SET x = 1");
  assert_null(spec);
  analyse("SELECT * FROM users FOR UPDATE");
  assert_null(spec); /* a write */
  analyse("SELECT nextval('s') FROM users");
  assert_null(spec); /* a write: the function is not known read-only */
  analyse("SELECT * INTO t2 FROM users");
  assert_null(spec); /* DDL */
  analyse("DECLARE c CURSOR FOR SELECT * FROM users");
  assert_null(spec);
  /* One key: a spec all the same (the route decides whether it is used). */
  merges("SELECT * FROM users WHERE id = 1");
  analyse("SELECT name, string_agg(city, ',') FROM users WHERE id = 1 GROUP BY 1");
  assert_non_null(spec);
  assert_string_equal(spec->refuse, "string_agg() cannot be merged across shards");
}

/* ---- texts parsed only with their literals put back ---- */

static void test_literals_put_back(void **state) {
  /* DATE '...' and numeric(10,2) take no parameter; the spec is the same
   * as for any other text. */
  merges(
      "SELECT x::numeric(10,2), name FROM users WHERE d > DATE '2024-01-01' ORDER BY id - 5, "
      "x + -3, 2 DESC LIMIT 4 OFFSET 1");
  assert_int_equal(lexed.nliterals, 7);
  expect_hidden("id - $4 AS pgs_h0, x + (- $5) AS pgs_h1, ");
  expect_str("keys", keys(), "0AL,1AL,3DF");
  assert_int_equal(spec->limit_param, 6);
  assert_int_equal(spec->offset_param, 7);
  assert_int_equal(spec->hidden_at, 7);
  expect_shard_sql(
      "SELECT id - 5 AS pgs_h0, x + (- 3) AS pgs_h1, x::numeric(10,2), name FROM "
      "users WHERE d > DATE '2024-01-01' ORDER BY id - 5, x + -3, 4 DESC LIMIT "
      "(4)::int8 + (1)::int8");
  expect_limits(NULL, 4, 1);
  /* Equal texts of expressions still compare by parameter. */
  merges("SELECT name::varchar(20), lower(name) FROM users ORDER BY lower(name), 'a' || name");
  expect_hidden("$2 || name AS pgs_h0, ");
  expect_str("keys", keys(), "2AL,0AL");
  expect_shard_sql(
      "SELECT 'a' || name AS pgs_h0, name::varchar(20), lower(name) FROM users ORDER "
      "BY lower(name), 'a' || name");
  /* A negative literal alone. */
  merges("SELECT interval '1 day' * x FROM users ORDER BY 1 LIMIT -2");
  assert_true(spec->limit_negate);
  expect_limits_error(NULL, "2201W", "LIMIT must not be negative");
  merges("SELECT name::char(3) FROM users GROUP BY 1 ORDER BY 1 OFFSET 2");
  expect_shard_sql("SELECT name::char(3) FROM users GROUP BY 1 ORDER BY 1 OFFSET 0 * (2)::int8");
  /* Strings quoted afresh, backslashes included. */
  merges("SELECT name::varchar(9) FROM users ORDER BY name || E'\\\\x''y'");
  expect_shard_sql(
      "SELECT name || E'\\\\x''y' AS pgs_h0, name::varchar(9) FROM users ORDER BY "
      "name || E'\\\\x''y'");
}

/* ---- the lexer and the plan cache ---- */

static void test_positions_in_normalised_text(void **state) {
  static const struct {
    const char *sql, *normalized;
  } cases[] = {
      {"SELECT a, b FROM users ORDER BY 2, 1 DESC", "SELECT a, b FROM users ORDER BY 2, 1 DESC"},
      {"SELECT a FROM users GROUP BY 1 ORDER BY 1 LIMIT 5",
       "SELECT a FROM users GROUP BY 1 ORDER BY 1 LIMIT $1"},
      {"SELECT a FROM users ORDER BY a + 1, 2", "SELECT a FROM users ORDER BY a + $1, 2"},
      {"SELECT a FROM users WHERE id IN (1, 2) ORDER BY 1",
       "SELECT a FROM users WHERE id IN ($1, $2) ORDER BY 1"},
      {"SELECT f(1, 2) FROM users ORDER BY g(3, 4), 5",
       "SELECT f($1, $2) FROM users ORDER BY g($3, $4), 5"},
      {"SELECT a FROM users ORDER BY 1.5, 2e1, '3', -4",
       "SELECT a FROM users ORDER BY $1, $2, $3, -$4"},
      {"SELECT a FROM users ORDER BY (SELECT 1 FROM t ORDER BY 1), 2 LIMIT 3",
       "SELECT a FROM users ORDER BY (SELECT $1 FROM t ORDER BY 1), 2 LIMIT $2"},
      {"SELECT a FROM users GROUP BY a UNION SELECT 1, 2",
       "SELECT a FROM users GROUP BY a UNION SELECT $1, $2"},
      {"SELECT string_agg(a, ',' ORDER BY 1) FROM users WHERE b IN (1, 2)",
       "SELECT string_agg(a, $1 ORDER BY 1) FROM users WHERE b IN ($2, $3)"},
      {"SELECT a FROM users ORDER BY 1; SELECT 1, 2",
       "SELECT a FROM users ORDER BY 1; SELECT $1, $2"},
      {"SELECT a FROM users ORDER /* x */ BY 1", "SELECT a FROM users ORDER BY 1"},
      {"SELECT a FROM users order by 1 desc, 2 having 3, 4",
       "SELECT a FROM users order by 1 desc, 2 having $1, $2"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) {
    assert_int_equal(pgs_lex(cases[i].sql, strlen(cases[i].sql), &lexed), PGS_OK);
    if (strcmp(lexed.normalized, cases[i].normalized) != 0)
      fail_msg("%s\n  normalised \"%s\"\n  expected   \"%s\"", cases[i].sql, lexed.normalized,
               cases[i].normalized);
  }
}

static void test_plan_cache_per_position(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(8);
  pgs_lexed_t a, b;
  pgs_lex_init(&a);
  pgs_lex_init(&b);
  const char *s1 = "SELECT name, id FROM users ORDER BY 1 LIMIT 10";
  const char *s2 = "SELECT name, id FROM users ORDER BY 2 LIMIT 20";
  const char *s3 = "SELECT name, id FROM users ORDER BY 1 LIMIT 30";
  assert_int_equal(pgs_lex(s1, strlen(s1), &a), PGS_OK);
  pgs_plan_t *p1 = pgs_plan_cache_get(cache, &db, &a);
  assert_int_equal(pgs_lex(s2, strlen(s2), &b), PGS_OK);
  pgs_plan_t *p2 = pgs_plan_cache_get(cache, &db, &b);
  assert_ptr_not_equal(p1, p2);
  assert_int_equal(p1->merge->keys[0].column, 0);
  assert_int_equal(p2->merge->keys[0].column, 1);
  assert_int_equal(pgs_lex(s3, strlen(s3), &b), PGS_OK);
  pgs_plan_t *p3 = pgs_plan_cache_get(cache, &db, &b);
  assert_ptr_equal(p1, p3); /* another LIMIT value: the same plan */
  int64_t limit, offset;
  pgs_value_error_t err;
  assert_int_equal(pgs_merge_limits(p3->merge, &b, NULL, &limit, &offset, &err), PGS_OK);
  assert_int_equal(limit, 30);
  pgs_plan_unref(p1);
  pgs_plan_unref(p2);
  pgs_plan_unref(p3);
  pgs_plan_cache_free(cache); /* frees the specs with the plans (ASan) */
  pgs_lex_free(&a);
  pgs_lex_free(&b);
}

/* ---- shared literal restoring ---- */

static void test_lexed_restore(void **state) {
  const char *sql = "SELECT 'it''s', E'a\\\\b', 12.5, $1 FROM users WHERE x = 'y'";
  assert_int_equal(pgs_lex(sql, strlen(sql), &lexed), PGS_OK);
  pgs_buf_t out;
  pgs_buf_init(&out);
  int32_t loc[8];
  int next = 0;
  assert_true(pgs_lexed_restore(&lexed, 0, lexed.normalized_len, &next, &out, loc));
  pgs_buf_put_u8(&out, '\0');
  assert_string_equal((const char *)out.data,
                      "SELECT 'it''s', E'a\\\\b', 12.5, $1 FROM users WHERE x = 'y'");
  assert_int_equal(next, 4);
  assert_int_equal(loc[0], 7);
  assert_int_equal(loc[1], 16);
  assert_memory_equal(out.data + loc[2], "12.5", 4);
  /* Two ranges in a row cost one pass: NEXT carries on. */
  out.len = 0;
  next = 0;
  size_t mid = lexed.literals[2].placeholder + 1; /* inside $4: refused */
  assert_false(pgs_lexed_restore(&lexed, 0, mid, &next, &out, NULL));
  out.len = 0;
  next = 0;
  mid = lexed.literals[2].placeholder;
  assert_true(pgs_lexed_restore(&lexed, 0, mid, &next, &out, NULL));
  assert_int_equal(next, 2);
  assert_true(pgs_lexed_restore(&lexed, mid, lexed.normalized_len, &next, &out, NULL));
  pgs_buf_put_u8(&out, '\0');
  assert_string_equal((const char *)out.data,
                      "SELECT 'it''s', E'a\\\\b', 12.5, $1 FROM users WHERE x = 'y'");
  pgs_buf_free(&out);
}

/* ---- routing a merged read ---- */

static void test_route_merge(void **state) {
  pgs_route_t r;
  merges("SELECT country, count(*) FROM users GROUP BY 1");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  assert_int_equal(r.kind, PGS_ROUTE_MERGE);
  assert_int_equal(r.shards, 0x3);
  merges("SELECT country, count(*) FROM users GROUP BY 1 HAVING count(*) > 2");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  assert_int_equal(r.kind, PGS_ROUTE_MERGE);
  analyse("SELECT country FROM users GROUP BY 1 HAVING count(*) > (SELECT 2)");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  assert_int_equal(r.kind, PGS_ROUTE_REFUSE);
  assert_string_equal(r.sqlstate, "0A000");
  assert_non_null(strstr(r.message, "HAVING with a subquery cannot be merged across shards"));
  db.cross_shard_reads = false;
  merges("SELECT country, count(*) FROM users GROUP BY 1");
  pgs_route_plan(&db, plan, &lexed, NULL, NULL, &r);
  db.cross_shard_reads = true;
  assert_int_equal(r.kind, PGS_ROUTE_REFUSE);
  assert_non_null(strstr(r.message, "cross_shard_reads = deny"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concatenation),
      cmocka_unit_test(test_distinct),
      cmocka_unit_test(test_order_by_position),
      cmocka_unit_test(test_order_by_name),
      cmocka_unit_test(test_order_by_expression),
      cmocka_unit_test(test_order_by_positions_shifted),
      cmocka_unit_test(test_aggregates),
      cmocka_unit_test(test_group_by),
      cmocka_unit_test(test_group_order_avg),
      cmocka_unit_test(test_limit_offset),
      cmocka_unit_test(test_limit_in_parentheses),
      cmocka_unit_test(test_limit_grouped),
      cmocka_unit_test(test_limit_values_from_binds),
      cmocka_unit_test(test_having),
      cmocka_unit_test(test_distinct_aggregates),
      cmocka_unit_test(test_distinct_on),
      cmocka_unit_test(test_colocated_joins),
      cmocka_unit_test(test_joins_refused),
      cmocka_unit_test(test_refused_constructs),
      cmocka_unit_test(test_copy),
      cmocka_unit_test(test_which_plans),
      cmocka_unit_test(test_literals_put_back),
      cmocka_unit_test(test_positions_in_normalised_text),
      cmocka_unit_test(test_plan_cache_per_position),
      cmocka_unit_test(test_lexed_restore),
      cmocka_unit_test(test_route_merge),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
