/*
 * test_route.c — router/route.c end to end: a config parsed from text, SQL
 * lexed and analysed as the proxy does it, then routed. Covers the four
 * strategies, every key type from a literal, a text Bind value and a binary
 * one (all the same key), negation, IN lists and = ANY arrays in text and
 * binary form (including malformed and over-long ones), NULL keys, keyless
 * statements, cross-shard reads (MERGE, or refused by cross_shard_reads =
 * deny or by what the merge cannot do), reference tables, COPY FROM, DDL,
 * the cross_shard_writes policies (2pc routes as allow),
 * multi-row INSERTs (ONE, SPLIT, REFUSE), hints, tenant sessions, a
 * one-shard database, the SPLIT texts (parsed again to check which rows
 * they insert) and the CommandComplete tag helpers.
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
#include "pgshard/proto.h"
#include "pgshard/route.h"

#include "binds.h"

/* ---- the config: the same shard map in four databases ---- */

#define SHARDS(DB)                                                                                 \
  "[shard." DB                                                                                     \
  ".s0]\nprimary = port=1\nregion = eu\n"                                                          \
  "[shard." DB                                                                                     \
  ".s1]\nprimary = port=2\nregion = us\n"                                                          \
  "[shard." DB ".s2]\nprimary = port=3\nregion = eu\n"

#define TABLES(DB)                                                                                 \
  "[table." DB                                                                                     \
  ".users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"                                         \
  "[table." DB                                                                                     \
  ".events]\ncolumn = id\ntype = bigint\nstrategy = range\n"                                       \
  "range = s0: - 100\nrange = s1: 100 - 1000\nrange = s2: 1000 -\n"                                \
  "[table." DB                                                                                     \
  ".profiles]\ncolumn = country\ntype = text\nstrategy = geo\n"                                    \
  "[geo." DB                                                                                       \
  "]\neu = DE FR\nus = US CA\n"                                                                    \
  "[table." DB                                                                                     \
  ".invoices]\ncolumn = tenant_id\ntype = bigint\nstrategy = tenant\n"                             \
  "[tenants." DB                                                                                   \
  "]\n42 = s2\n"                                                                                   \
  "[table." DB                                                                                     \
  ".docs]\ncolumn = id\ntype = uuid\nstrategy = hash\n"                                            \
  "[table." DB                                                                                     \
  ".smalls]\ncolumn = id\ntype = smallint\nstrategy = hash\n"                                      \
  "[table." DB                                                                                     \
  ".ints]\ncolumn = id\ntype = int\nstrategy = hash\n"                                             \
  "[table." DB                                                                                     \
  ".names]\ncolumn = name\ntype = text\nstrategy = hash\n"                                         \
  "[table." DB                                                                                     \
  ".days]\ncolumn = day\ntype = date\nstrategy = hash\n"                                           \
  "[table." DB ".stamps]\ncolumn = at\ntype = timestamptz\nstrategy = hash\n"

static const char config_text[] =
    "[user.app]\npassword = x\n"
    "[database.app]\n" SHARDS("app") TABLES("app")
    "[database.appw]\ncross_shard_writes = allow\n" SHARDS("appw") TABLES("appw")
    "[database.app2pc]\ncross_shard_writes = 2pc\n" SHARDS("app2pc") TABLES("app2pc")
    "[database.appnr]\ncross_shard_reads = deny\n" SHARDS("appnr") TABLES("appnr")
    "[database.apps]\ntenant_isolation = strict\n" SHARDS("apps") TABLES("apps")
    "[database.one]\n[shard.one.only]\nprimary = port=4\n"
    "[table.one.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"
    "[table.one.events]\ncolumn = id\ntype = bigint\nstrategy = range\nrange = only: -\n";

#define OID_INT2 21
#define OID_INT4 23
#define OID_INT8 20
#define OID_TEXT 25
#define OID_VARCHAR 1043
#define OID_UUID 2950
#define OID_DATE 1082
#define OID_TIMESTAMPTZ 1184

static pgs_config_t *config;
static const pgs_database_t *app, *appw, *app2pc, *appnr, *apps, *one;
static pgs_lexed_t lexed;
static pgs_plan_t *plan;
static pgs_route_t r;
static int row_shard[64];
static const char *last_sql;
/* users keys on each shard: user_key[shard][i] */
static int64_t user_key[3][4];

static int group_setup(void **state) {
  config = pgs_config_parse_string(config_text);
  for (int i = 0; i < config->nerrors; i++)
    print_message("line %d: %s\n", config->errors[i].line, config->errors[i].message);
  if (config->nerrors) return -1;
  app = pgs_config_find_database(config, "app");
  appw = pgs_config_find_database(config, "appw");
  app2pc = pgs_config_find_database(config, "app2pc");
  appnr = pgs_config_find_database(config, "appnr");
  apps = pgs_config_find_database(config, "apps");
  one = pgs_config_find_database(config, "one");
  if (!app || !appw || !app2pc || !appnr || !apps || !one) return -1;
  pgs_lex_init(&lexed);
  /* Keys of users on each shard, found through the shard map itself. */
  const pgs_table_t *users = pgs_shardmap_find_table(app, "users");
  int found[3] = {0};
  for (int64_t i = 1; i < 100000 && (found[0] < 4 || found[1] < 4 || found[2] < 4); i++) {
    pgs_key_t k = {.type = PGS_TYPE_BIGINT, .i = i};
    int s = pgs_shardmap_route(app, users, &k, NULL);
    if (s >= 0 && s < 3 && found[s] < 4) user_key[s][found[s]++] = i;
  }
  return found[0] == 4 && found[1] == 4 && found[2] == 4 ? 0 : -1;
}

static int group_teardown(void **state) {
  pgs_plan_unref(plan);
  plan = NULL;
  pgs_lex_free(&lexed);
  pgs_config_unref(config);
  return 0;
}

/* ---- helpers ---- */

/* Bind values for one call; binary data points at the caller's bytes. */

static void put_be(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

/* Lex, analyse and route SQL in DB; the result stays in `r`. */
static void route_with(const pgs_database_t *db, const char *sql, const pgs_param_values_t *params,
                       const pgs_route_session_t *session) {
  last_sql = sql;
  pgs_plan_unref(plan);
  plan = NULL;
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  plan = pgs_analyze(db, &lexed);
  assert_non_null(plan);
  memset(&r, 0x5a, sizeof(r));
  for (size_t i = 0; i < PGS_ARRAY_LEN(row_shard); i++) row_shard[i] = -7;
  r.row_shard = row_shard;
  pgs_route_plan(db, plan, &lexed, params, session, &r);
  assert_ptr_equal(r.row_shard, row_shard); /* the caller's pointer survives */
}

static void route(const pgs_database_t *db, const char *sql) { route_with(db, sql, NULL, NULL); }

static void route_binds(const pgs_database_t *db, const char *sql, binds_t *b) {
  route_with(db, sql, params_of(b), NULL);
}

static const char *kind_name(pgs_route_kind_t k) {
  switch (k) {
  case PGS_ROUTE_ONE:
    return "ONE";
  case PGS_ROUTE_ANY:
    return "ANY";
  case PGS_ROUTE_FANOUT:
    return "FANOUT";
  case PGS_ROUTE_SPLIT:
    return "SPLIT";
  case PGS_ROUTE_REFUSE:
    return "REFUSE";
  case PGS_ROUTE_MERGE:
    return "MERGE";
  }
  return "?";
}

static void describe_failure(const char *expected) {
  fail_msg("%s\n  got %s shard %d shards %#llx (%.5s %s), expected %s", last_sql, kind_name(r.kind),
           r.shard, (unsigned long long)r.shards, r.kind == PGS_ROUTE_REFUSE ? r.sqlstate : "",
           r.kind == PGS_ROUTE_REFUSE ? r.message : "", expected);
}

static void expect_one(int shard) {
  char what[32];
  snprintf(what, sizeof(what), "ONE %d", shard);
  if (r.kind != PGS_ROUTE_ONE || r.shard != shard) describe_failure(what);
  assert_int_equal(r.shards, (uint64_t)1 << shard);
}

static void expect_route_any(void) {
  if (r.kind != PGS_ROUTE_ANY) describe_failure("ANY");
}

static void expect_fanout(uint64_t shards) {
  char what[32];
  snprintf(what, sizeof(what), "FANOUT %#llx", (unsigned long long)shards);
  if (r.kind != PGS_ROUTE_FANOUT || r.shards != shards) describe_failure(what);
}

static void expect_merge(uint64_t shards) {
  char what[32];
  snprintf(what, sizeof(what), "MERGE %#llx", (unsigned long long)shards);
  if (r.kind != PGS_ROUTE_MERGE || r.shards != shards) describe_failure(what);
  assert_non_null(plan->merge);
  assert_string_equal(plan->merge->refuse, "");
}

static void expect_split(uint64_t shards) {
  char what[32];
  snprintf(what, sizeof(what), "SPLIT %#llx", (unsigned long long)shards);
  if (r.kind != PGS_ROUTE_SPLIT || r.shards != shards) describe_failure(what);
}

/* REFUSE with SQLSTATE and a message containing NEEDLE (NULL: any). */
static void expect_refuse(const char *sqlstate, const char *needle) {
  char what[300];
  snprintf(what, sizeof(what), "REFUSE %s \"...%s...\"", sqlstate, needle ? needle : "");
  if (r.kind != PGS_ROUTE_REFUSE || strcmp(r.sqlstate, sqlstate) != 0 ||
      (needle && strstr(r.message, needle) == NULL))
    describe_failure(what);
  assert_int_equal(strlen(r.sqlstate), 5);
  assert_true(strncmp(r.message, "pgshard: ", 9) != 0); /* the proxy adds the prefix */
}

/* The shard of VALUE (text form) in TABLE of DB, through the shard map. */
static int shard_of(const pgs_database_t *db, const char *table, const char *value) {
  const pgs_table_t *t = pgs_shardmap_find_table(db, table);
  assert_non_null(t);
  pgs_key_t k;
  pgs_key_error_t err;
  if (pgs_key_from_text(t->type, value, strlen(value), &k, &err) != PGS_OK)
    fail_msg("key %s: %s", value, err.message);
  int s = pgs_shardmap_route(db, t, &k, &err);
  assert_true(s >= 0);
  return s;
}

/* SQL with %lld placeholders filled from user_key; kept in a rotating
 * buffer so two may be live. */
PGS_PRINTF(1, 2)
static const char *sqlf(const char *fmt, ...) {
  static char bufs[4][1024];
  static int next;
  char *buf = bufs[next++ % 4];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(bufs[0]), fmt, ap);
  va_end(ap);
  return buf;
}

#define K(shard, i) ((long long)user_key[shard][i])

/* ---- strategies ---- */

static void test_hash_literal(void **state) {
  for (int s = 0; s < 3; s++) {
    route(app, sqlf("SELECT * FROM users WHERE id = %lld", K(s, 0)));
    expect_one(s);
    route(app, sqlf("DELETE FROM users WHERE id = %lld", K(s, 1)));
    expect_one(s);
  }
}

static void test_range_literal(void **state) {
  route(app, "SELECT * FROM events WHERE id = 99");
  expect_one(0);
  route(app, "SELECT * FROM events WHERE id = 100");
  expect_one(1);
  route(app, "SELECT * FROM events WHERE id = 999");
  expect_one(1);
  route(app, "SELECT * FROM events WHERE id = 1000");
  expect_one(2);
  route(app, "SELECT * FROM events WHERE id = -5000");
  expect_one(0);
}

static void test_geo(void **state) {
  route(app, "SELECT * FROM profiles WHERE country = 'US'");
  expect_one(1);
  route(app, "SELECT * FROM profiles WHERE country = 'CA'");
  expect_one(1);
  route(app, "SELECT * FROM profiles WHERE country = 'DE'");
  expect_one(shard_of(app, "profiles", "DE"));
  assert_true(r.shard == 0 || r.shard == 2); /* eu */
}

static void test_geo_value_in_no_region(void **state) {
  route(app, "SELECT * FROM profiles WHERE country = 'BR'");
  expect_refuse("22023", "value \"BR\" of column country is in no region of [geo.app]");
  binds_t b = {0};
  bind_text(&b, "BR");
  route_binds(app, "INSERT INTO profiles (country, x) VALUES ($1, 1)", &b);
  expect_refuse("22023", "no region");
}

static void test_tenant_pinned_and_hashed(void **state) {
  route(app, "SELECT * FROM invoices WHERE tenant_id = 42");
  expect_one(2);
  route(app, "SELECT * FROM invoices WHERE tenant_id = 7");
  pgs_key_t k = {.type = PGS_TYPE_BIGINT, .i = 7};
  expect_one(pgs_shardmap_hash_shard(app, &k, NULL));
}

static void test_tenant_shard_function(void **state) {
  pgs_key_error_t err;
  pgs_key_t k = {.type = PGS_TYPE_BIGINT, .i = 42};
  assert_int_equal(pgs_route_tenant_shard(app, &k, &err), 2);
  for (int64_t i = 0; i < 50; i++) {
    if (i == 42) continue;
    k.i = i;
    assert_int_equal(pgs_route_tenant_shard(app, &k, &err), pgs_shardmap_hash_shard(app, &k, NULL));
  }
  pgs_key_t text = {.type = PGS_TYPE_TEXT, .text = "42", .text_len = 2};
  assert_int_equal(pgs_route_tenant_shard(app, &text, &err), -1);
  assert_string_equal(err.sqlstate, "42804");
}

/* ---- key types: literal, text Bind value, binary Bind value ---- */

static void test_same_key_every_form(void **state) {
  int want = shard_of(app, "users", "42");
  route(app, "SELECT * FROM users WHERE id = 42");
  expect_one(want);
  route(app, "SELECT * FROM users WHERE id = '42'");
  expect_one(want);
  route(app, "SELECT * FROM users WHERE id = 42::bigint");
  expect_one(want);
  binds_t b = {0};
  bind_text(&b, " 42 ");
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_one(want);
  uint8_t be8[8], be4[4], be2[2];
  put_be(be8, 42, 8);
  put_be(be4, 42, 4);
  put_be(be2, 42, 2);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, OID_INT8);
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, 0); /* undeclared: the column's type */
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, be4, 4, OID_INT4);
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, be2, 2, OID_INT2);
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_one(want);
}

static void test_smallint_and_int(void **state) {
  int small = shard_of(app, "smalls", "300");
  int ints = shard_of(app, "ints", "70000");
  route(app, "SELECT * FROM smalls WHERE id = 300");
  expect_one(small);
  uint8_t be2[2], be4[4], be8[8];
  put_be(be2, 300, 2);
  binds_t b = {0};
  bind_binary(&b, be2, 2, 0);
  route_binds(app, "SELECT * FROM smalls WHERE id = $1", &b);
  expect_one(small);
  put_be(be4, 70000, 4);
  b = (binds_t){0};
  bind_binary(&b, be4, 4, 0);
  route_binds(app, "UPDATE ints SET x = 1 WHERE id = $1", &b);
  expect_one(ints);
  put_be(be8, 70000, 8);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, OID_INT8);
  route_binds(app, "UPDATE ints SET x = 1 WHERE id = $1", &b);
  expect_one(ints);
  /* An int8 value past the column's range. */
  put_be(be8, (uint64_t)5000000000LL, 8);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, OID_INT8);
  route_binds(app, "SELECT * FROM ints WHERE id = $1", &b);
  expect_refuse("22003", NULL);
  route(app, "SELECT * FROM smalls WHERE id = 40000");
  expect_refuse("22003", NULL);
}

static void test_cast_types_binary_value(void **state) {
  int want = shard_of(app, "users", "77");
  uint8_t be4[4], be8[8];
  put_be(be4, 77, 4);
  put_be(be8, 77, 8);
  binds_t b = {0};
  bind_binary(&b, be4, 4, 0); /* no declared type: the cast's, int4 */
  route_binds(app, "SELECT * FROM users WHERE id = $1::int4", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, OID_INT8); /* the declared type wins over the cast */
  route_binds(app, "SELECT * FROM users WHERE id = $1::int4", &b);
  expect_one(want);
}

static void test_uuid_forms(void **state) {
  const char *u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
  int want = shard_of(app, "docs", u);
  route(app, "SELECT * FROM docs WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'");
  expect_one(want);
  binds_t b = {0};
  bind_text(&b, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}");
  route_binds(app, "SELECT * FROM docs WHERE id = $1", &b);
  expect_one(want);
  const uint8_t bin[16] = {0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8,
                           0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11};
  b = (binds_t){0};
  bind_binary(&b, bin, 16, OID_UUID);
  route_binds(app, "SELECT * FROM docs WHERE id = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, bin, 15, OID_UUID);
  route_binds(app, "SELECT * FROM docs WHERE id = $1", &b);
  expect_refuse("08P01", NULL);
  route(app, "SELECT * FROM docs WHERE id = 'not-a-uuid'");
  expect_refuse("22P02", NULL);
}

static void test_text_forms(void **state) {
  int want = shard_of(app, "names", "alice");
  route(app, "SELECT * FROM names WHERE name = 'alice'");
  expect_one(want);
  route(app, "SELECT * FROM names WHERE name = $$alice$$");
  expect_one(want);
  binds_t b = {0};
  bind_text(&b, "alice");
  route_binds(app, "SELECT * FROM names WHERE name = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, "alice", 5, OID_TEXT);
  route_binds(app, "SELECT * FROM names WHERE name = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, "alice", 5, OID_VARCHAR);
  route_binds(app, "SELECT * FROM names WHERE name = $1", &b);
  expect_one(want);
  b = (binds_t){0};
  bind_binary(&b, "alice", 5, OID_INT8);
  route_binds(app, "SELECT * FROM names WHERE name = $1", &b);
  expect_refuse("42804", NULL);
}

static void test_date_and_timestamptz(void **state) {
  int day = shard_of(app, "days", "2024-03-01");
  route(app, "SELECT * FROM days WHERE day = '2024-03-01'");
  expect_one(day);
  uint8_t be4[4], be8[8];
  put_be(be4, (uint64_t)(int64_t)8826, 4); /* 2024-03-01 - 2000-01-01 in days */
  binds_t b = {0};
  bind_binary(&b, be4, 4, OID_DATE);
  route_binds(app, "SELECT * FROM days WHERE day = $1", &b);
  expect_one(day);
  int at = shard_of(app, "stamps", "2024-03-01 00:00:00+00");
  route(app, "SELECT * FROM stamps WHERE at = '2024-03-01 01:00:00+01'");
  expect_one(at);
  put_be(be8, (uint64_t)(8826LL * 86400 * 1000000), 8);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, OID_TIMESTAMPTZ);
  route_binds(app, "SELECT * FROM stamps WHERE at = $1", &b);
  expect_one(at);
  route(app, "SELECT * FROM days WHERE day = 'Jan 8 1999'");
  expect_refuse("22007", NULL);
}

static void test_bad_values(void **state) {
  route(app, "SELECT * FROM users WHERE id = 'abc'");
  expect_refuse("22P02", "bigint");
  binds_t b = {0};
  bind_text(&b, "12x");
  route_binds(app, "UPDATE users SET x = 1 WHERE id = $1", &b);
  expect_refuse("22P02", NULL);
  route(app, "SELECT * FROM users WHERE id = 99999999999999999999");
  expect_refuse("22003", NULL);
  route(app, "SELECT * FROM users WHERE id = 1.5");
  expect_refuse("22P02", NULL);
  uint8_t be4[4] = {0};
  b = (binds_t){0};
  bind_binary(&b, be4, 4, OID_INT8); /* 4 bytes for an int8 */
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_refuse("08P01", NULL);
}

static void test_negated_values(void **state) {
  route(app, "SELECT * FROM events WHERE id = -5");
  expect_one(0);
  uint8_t be8[8];
  put_be(be8, 500, 8);
  binds_t b = {0};
  bind_binary(&b, be8, 8, 0);
  route_binds(app, "SELECT * FROM events WHERE id = -$1", &b);
  expect_one(0); /* -500 */
  b = (binds_t){0};
  bind_text(&b, "-500");
  route_binds(app, "SELECT * FROM events WHERE id = -$1", &b);
  expect_one(1); /* 500 */
  /* The sign belongs to a literal: the smallest values are in range. */
  route(app, "SELECT * FROM users WHERE id = -9223372036854775808");
  expect_one(shard_of(app, "users", "-9223372036854775808"));
  route(app, "SELECT * FROM smalls WHERE id = -32768");
  expect_one(shard_of(app, "smalls", "-32768"));
  /* Negating a parameter that holds the smallest value overflows. */
  put_be(be8, (uint64_t)INT64_MIN, 8);
  b = (binds_t){0};
  bind_binary(&b, be8, 8, 0);
  route_binds(app, "SELECT * FROM users WHERE id = -$1", &b);
  expect_refuse("22003", "bigint out of range");
  b = (binds_t){0};
  bind_text(&b, "-32768");
  route_binds(app, "SELECT * FROM smalls WHERE id = -$1", &b);
  expect_refuse("22003", "smallint out of range");
  /* Only integers negate. */
  b = (binds_t){0};
  bind_text(&b, "alice");
  route_binds(app, "SELECT * FROM names WHERE name = -$1", &b);
  expect_refuse("22P02", NULL);
}

/* ---- IN lists ---- */

static void test_in_list_one_shard(void **state) {
  route(app, sqlf("SELECT * FROM users WHERE id IN (%lld, %lld, %lld)", K(1, 0), K(1, 1), K(1, 2)));
  expect_one(1);
  route(app, sqlf("DELETE FROM users WHERE id IN (%lld, %lld)", K(2, 0), K(2, 3)));
  expect_one(2);
}

static void test_in_list_read_several_merged(void **state) {
  const char *sql = sqlf("SELECT * FROM users WHERE id IN (%lld, %lld)", K(0, 0), K(2, 0));
  route(app, sql);
  expect_merge(0x5); /* only the shards of the keys */
  route(appw, sql);
  expect_merge(0x5);
  route(appnr, sql);
  expect_refuse("0A000", NULL);
  assert_string_equal(r.message,
                      "statement reads keys on shards s0, s2 and cross_shard_reads = deny");
  route(app, sqlf("SELECT name, row_number() OVER () FROM users WHERE id IN (%lld, %lld)", K(0, 0),
                  K(1, 0)));
  expect_refuse("0A000", NULL);
  assert_string_equal(r.message,
                      "statement reads keys on shards s0, s1: window functions cannot "
                      "be merged across shards");
}

static void test_in_list_write_policies(void **state) {
  const char *sql =
      sqlf("UPDATE users SET x = 1 WHERE id IN (%lld, %lld, %lld)", K(0, 0), K(1, 0), K(0, 1));
  route(appw, sql);
  expect_fanout(0x3);
  route(app, sql);
  expect_refuse("0A000", "cross_shard_writes = deny");
  assert_non_null(strstr(r.message, "s0, s1"));
  route(app2pc, sql);
  expect_fanout(0x3); /* the proxy makes it atomic */
}

/* Code that may write (a function not known read-only, CALL, DO) and
 * names no key would run on every shard: cross_shard_writes decides, and a
 * hint places it on one shard. */
static void test_code_that_writes(void **state) {
  static const char *const sqls[] = {"SELECT add_user(3)", "CALL add_user_p(3)",
                                     "DO $$ BEGIN INSERT INTO users VALUES (3); END $$"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    route(app, sqls[i]);
    expect_refuse("0A000", "runs code that may write");
    route(appw, sqls[i]);
    expect_fanout(0x7);
    route(app2pc, sqls[i]);
    expect_fanout(0x7);
    pgs_route_session_t hint = {.hint_shard = 1};
    route_with(app, sqls[i], NULL, &hint);
    expect_one(1);
  }
  /* A read-only function is a read; a keyed call runs on its key's shard. */
  route(app, "SELECT now()");
  expect_route_any();
  route(app, sqlf("SELECT add_user(id) FROM users WHERE id = %lld", K(2, 0)));
  expect_one(2);
}

/* COPY (UPDATE ... RETURNING) TO is a write whose output is one stream. */
static void test_copy_of_a_write(void **state) {
  route(appw,
        sqlf("COPY (UPDATE users SET x = 1 WHERE id = %lld RETURNING id) TO STDOUT", K(1, 0)));
  expect_one(1);
  route(appw, "COPY (UPDATE users SET x = 1 RETURNING id) TO STDOUT");
  expect_refuse("0A000", "must touch one shard");
  /* A cursor that locks rows is a write, and lives on one server. */
  route(appw, sqlf("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = %lld FOR UPDATE", K(2, 0)));
  expect_one(2);
  assert_int_equal(plan->kind, PGS_STMT_WRITE);
  route(appw, "DECLARE c CURSOR FOR SELECT * FROM users FOR UPDATE");
  expect_refuse("0A000", "cursor lives on one server");
}

/* ---- = ANY arrays ---- */

static void test_any_text_array_literal(void **state) {
  route(app, sqlf("SELECT * FROM users WHERE id = ANY('{%lld,%lld}')", K(0, 0), K(0, 1)));
  expect_one(0);
  route(app,
        sqlf("SELECT * FROM users WHERE id = ANY('{%lld, \"%lld\"}'::bigint[])", K(0, 0), K(1, 1)));
  expect_merge(0x3);
  route(appw, sqlf("DELETE FROM users WHERE id = ANY('{%lld,%lld,NULL}')", K(2, 0), K(1, 1)));
  expect_fanout(0x6);
}

static void test_any_text_array_param(void **state) {
  char text[128];
  snprintf(text, sizeof(text), " { %lld , \"%lld\" ,NULL, null } ", K(1, 0), K(1, 2));
  binds_t b = {0};
  bind_text(&b, text);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_one(1);
  snprintf(text, sizeof(text), "[0:1]={%lld,%lld}", K(2, 0), K(2, 1));
  b = (binds_t){0};
  bind_text(&b, text);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_one(2);
}

static void test_any_text_array_escapes(void **state) {
  /* Elements "a b", c"d, e,f, x\ (escapes and quotes as array_in reads them). */
  binds_t b = {0};
  bind_text(&b, "{\"a b\", c\\\"d ,e\\,f, \"x\\\\\"}");
  route_binds(appw, "DELETE FROM names WHERE name = ANY($1)", &b);
  uint64_t want = 0;
  const char *keys[] = {"a b", "c\"d", "e,f", "x\\"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(keys); i++) want |= 1ULL << shard_of(appw, "names", keys[i]);
  if (want & (want - 1))
    expect_fanout(want);
  else
    expect_one(__builtin_ctzll(want));
  /* One element at a time, to see each is read as written. */
  const char *forms[] = {"{\"a b\"}", "{c\\\"d}", "{ e\\,f }", "{\"x\\\\\"}"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(forms); i++) {
    b = (binds_t){0};
    bind_text(&b, forms[i]);
    route_binds(app, "SELECT * FROM names WHERE name = ANY($1)", &b);
    expect_one(shard_of(app, "names", keys[i]));
  }
  /* A quoted "NULL" is the string NULL, not a null. */
  b = (binds_t){0};
  bind_text(&b, "{\"NULL\"}");
  route_binds(app, "SELECT * FROM names WHERE name = ANY($1)", &b);
  expect_one(shard_of(app, "names", "NULL"));
}

static void test_any_text_array_malformed(void **state) {
  const char *bad[] = {"{1,2",     "1,2}", "{1,,2}", "{{1,2},{3,4}}", "{1,2}x", "{\"1}",
                       "{1\"2\"}", "",     "{1,}",   "[1:2={1,2}",    "{,1}",   "{1} {2}"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    binds_t b = {0};
    bind_text(&b, bad[i]);
    route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
    if (r.kind != PGS_ROUTE_REFUSE || strcmp(r.sqlstate, "22P02") != 0)
      fail_msg("array '%s': %s %s %s", bad[i], kind_name(r.kind), r.sqlstate, r.message);
  }
  binds_t b = {0};
  bind_text(&b, "{1,x}"); /* well-formed, but x is no bigint */
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_refuse("22P02", "bigint");
}

static void test_any_empty_and_null_arrays(void **state) {
  route(app, "SELECT * FROM users WHERE id = ANY('{}')");
  expect_route_any();
  binds_t b = {0};
  bind_null(&b);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_route_any();
  b = (binds_t){0};
  bind_text(&b, "{NULL,NULL}");
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_route_any();
  /* A write with no key value runs as if it had no key. */
  route_binds(app, "DELETE FROM users WHERE id = ANY($1)", &b);
  expect_refuse("0A000", "cross_shard_writes = deny");
  route_binds(appw, "DELETE FROM users WHERE id = ANY($1)", &b);
  expect_fanout(0x7);
}

/* A one-dimensional binary int8 array of N elements from VALUES (NULL
 * where null[i]). Returns its length. */
static size_t binary_int8_array(uint8_t *buf, const int64_t *values, const bool *null, int n) {
  size_t p = 0;
  put_be(buf + p, 1, 4); /* ndim */
  put_be(buf + p + 4, null ? 1 : 0, 4);
  put_be(buf + p + 8, OID_INT8, 4);
  put_be(buf + p + 12, (uint64_t)n, 4);
  put_be(buf + p + 16, 1, 4); /* lower bound */
  p += 20;
  for (int i = 0; i < n; i++) {
    if (null && null[i]) {
      put_be(buf + p, 0xffffffff, 4);
      p += 4;
      continue;
    }
    put_be(buf + p, 8, 4);
    put_be(buf + p + 4, (uint64_t)values[i], 8);
    p += 12;
  }
  return p;
}

static void test_any_binary_array(void **state) {
  uint8_t buf[256];
  int64_t v[3] = {user_key[2][0], user_key[2][1], user_key[2][2]};
  bool nulls[3] = {false, true, false};
  size_t len = binary_int8_array(buf, v, nulls, 3);
  binds_t b = {0};
  bind_binary(&b, buf, len, 1016); /* int8[] */
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_one(2);
  v[1] = user_key[0][0];
  len = binary_int8_array(buf, v, NULL, 3);
  b = (binds_t){0};
  bind_binary(&b, buf, len, 0);
  route_binds(appw, "UPDATE users SET x = 1 WHERE id = ANY($1)", &b);
  expect_fanout(0x5);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_merge(0x5);
  /* int4 elements, typed by the array's element OID. */
  uint8_t a4[32];
  put_be(a4, 1, 4);
  put_be(a4 + 4, 0, 4);
  put_be(a4 + 8, OID_INT4, 4);
  put_be(a4 + 12, 1, 4);
  put_be(a4 + 16, 1, 4);
  put_be(a4 + 20, 4, 4);
  put_be(a4 + 24, (uint64_t)user_key[1][3], 4);
  b = (binds_t){0};
  bind_binary(&b, a4, 28, 1007);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_one(1);
  /* An empty binary array (ndim 0) has no key value. */
  uint8_t empty[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20};
  b = (binds_t){0};
  bind_binary(&b, empty, 12, 0);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_route_any();
}

static void test_any_binary_array_malformed(void **state) {
  uint8_t buf[256];
  int64_t v[2] = {1, 2};
  size_t len = binary_int8_array(buf, v, NULL, 2);
  const char *sql = "SELECT * FROM users WHERE id = ANY($1)";
  binds_t b = {0};
  bind_binary(&b, buf, len - 1, 0); /* truncated */
  route_binds(app, sql, &b);
  expect_refuse("08P01", NULL);
  b = (binds_t){0};
  bind_binary(&b, buf, 8, 0); /* no header */
  route_binds(app, sql, &b);
  expect_refuse("08P01", NULL);
  buf[len] = 0;
  b = (binds_t){0};
  bind_binary(&b, buf, len + 1, 0); /* a byte too many */
  route_binds(app, sql, &b);
  expect_refuse("22P03", NULL);
  put_be(buf + 4, 7, 4); /* flags */
  b = (binds_t){0};
  bind_binary(&b, buf, len, 0);
  route_binds(app, sql, &b);
  expect_refuse("22P03", NULL);
  put_be(buf + 4, 0, 4);
  put_be(buf, 2, 4); /* two dimensions */
  route_binds(app, sql, &b);
  expect_refuse("22P02", "multidimensional");
  put_be(buf, (uint64_t)-1, 4);
  route_binds(app, sql, &b);
  expect_refuse("22P03", NULL);
  put_be(buf, 1, 4);
  put_be(buf + 20, (uint64_t)-5, 4); /* element length */
  route_binds(app, sql, &b);
  expect_refuse("22P03", NULL);
  put_be(buf + 20, 8, 4);
  put_be(buf + 12, 70000, 4); /* more elements than the cap, before reading them */
  route_binds(app, sql, &b);
  expect_refuse("54000", NULL);
  put_be(buf + 12, 2, 4);
  put_be(buf + 8, OID_TEXT, 4); /* text elements for a bigint column */
  route_binds(app, sql, &b);
  expect_refuse("42804", NULL);
}

static void test_any_text_array_cap(void **state) {
  size_t n = 65537;
  char *text = malloc(2 * n + 2);
  assert_non_null(text);
  size_t p = 0;
  text[p++] = '{';
  for (size_t i = 0; i < n; i++) {
    text[p++] = '7';
    text[p++] = i + 1 < n ? ',' : '}';
  }
  text[p] = '\0';
  binds_t b = {0};
  bind_text(&b, text);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_refuse("54000", NULL);
  text[2 * 65536] = '}'; /* exactly the cap: '{' then 65536 "7," */
  text[2 * 65536 + 1] = '\0';
  b.len[0] = (int32_t)strlen(text);
  route_binds(app, "SELECT * FROM users WHERE id = ANY($1)", &b);
  expect_one(shard_of(app, "users", "7"));
  free(text);
}

static void test_array_constructor_elements(void **state) {
  route(app, sqlf("SELECT * FROM users WHERE id = ANY(ARRAY[%lld, %lld])", K(0, 2), K(0, 3)));
  expect_one(0);
  binds_t b = {0};
  char t1[24], t2[24];
  snprintf(t1, sizeof(t1), "%lld", K(0, 0));
  snprintf(t2, sizeof(t2), "%lld", K(1, 0));
  bind_text(&b, t1);
  bind_text(&b, t2);
  route_binds(app, "SELECT * FROM users WHERE id = ANY(ARRAY[$1, $2])", &b);
  expect_merge(0x3);
}

/* ---- NULL keys ---- */

static void test_null_key_in_where(void **state) {
  binds_t b = {0};
  bind_null(&b);
  route_binds(app, "SELECT * FROM users WHERE id = $1", &b);
  expect_route_any();
  char t[24];
  snprintf(t, sizeof(t), "%lld", K(1, 0));
  b = (binds_t){0};
  bind_null(&b);
  bind_text(&b, t);
  route_binds(app, "SELECT * FROM users WHERE id = $1 OR id = $2", &b);
  expect_one(1); /* the NULL adds no shard */
  b = (binds_t){0};
  bind_null(&b);
  route_binds(app, "DELETE FROM users WHERE id = $1", &b);
  expect_refuse("0A000", "deny");
}

static void test_null_key_in_insert(void **state) {
  binds_t b = {0};
  char t[24];
  snprintf(t, sizeof(t), "%lld", K(0, 0));
  bind_text(&b, t);
  bind_null(&b);
  route_binds(appw, "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')", &b);
  expect_refuse("23502", "\"id\" of relation \"users\" (row 2)");
  route(app, "INSERT INTO users (id) VALUES (NULL)");
  expect_refuse("0A000", NULL); /* refused by the plan: not a literal or parameter */
}

/* ---- statements without keys ---- */

static void test_keyless_read_merged(void **state) {
  route(app, "SELECT * FROM users WHERE name = 'x'");
  expect_merge(0x7);
  route(app, "SELECT count(*) FROM profiles");
  expect_merge(0x7);
  route(app, "SELECT name, avg(x) FROM users GROUP BY name ORDER BY 2 DESC LIMIT 3");
  expect_merge(0x7);
  route(app, "COPY users TO STDOUT");
  expect_merge(0x7);
  route(app, "COPY (SELECT id, name FROM users WHERE x > 1) TO STDOUT");
  expect_merge(0x7);
  route(appw, "SELECT * FROM users");
  expect_merge(0x7);
}

static void test_keyless_read_refused(void **state) {
  route(appnr, "SELECT * FROM users WHERE name = 'x'");
  expect_refuse("0A000", NULL);
  assert_string_equal(r.message,
                      "statement reads sharded table users without its shard key id "
                      "and cross_shard_reads = deny");
  route(appnr, "COPY users TO STDOUT");
  expect_refuse("0A000", "cross_shard_reads = deny");
  /* What the merge cannot do exactly: its reason ends the message. */
  route(app, "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > (SELECT 1)");
  expect_refuse("0A000", NULL);
  assert_string_equal(r.message,
                      "statement reads sharded table users without its shard key id: "
                      "HAVING with a subquery cannot be merged across shards");
  route(app, "SELECT string_agg(name, ',') FROM users");
  expect_refuse("0A000", "string_agg() cannot be merged across shards");
  route(app, "COPY (SELECT * FROM users ORDER BY id) TO STDOUT");
  expect_refuse("0A000", "COPY (SELECT ... ORDER BY) TO STDOUT cannot be merged");
  /* No merge at all: several statements, EXPLAIN. */
  route(app, "SELECT * FROM users; SELECT * FROM events");
  expect_refuse("0A000", "only a single SELECT or COPY ... TO STDOUT can run across shards");
  route(app, "EXPLAIN SELECT * FROM users");
  expect_refuse("0A000", "users without its shard key id; only a single SELECT");
  /* A hint or a tenant names the one shard: no merge. */
  pgs_route_session_t s = {.hint_shard = 1};
  route_with(appnr, "SELECT * FROM users WHERE name = 'x' HAVING true", NULL, &s);
  expect_one(1);
  pgs_key_t tenant = {.type = PGS_TYPE_BIGINT, .i = 42};
  s = (pgs_route_session_t){.hint_shard = -1, .tenant = &tenant};
  route_with(app, "SELECT name, string_agg(name, ',') FROM users GROUP BY 1", NULL, &s);
  expect_one(2);
  /* One shard in the database. */
  route(one, "SELECT string_agg(name, ',') FROM users");
  expect_one(0);
}

static void test_keyless_write_policies(void **state) {
  route(app, "UPDATE users SET x = 1 WHERE name = 'x'");
  expect_refuse("0A000", "users without its shard key id");
  assert_non_null(strstr(r.message, "deny"));
  route(appw, "UPDATE users SET x = 1 WHERE name = 'x'");
  expect_fanout(0x7);
  route(app2pc, "DELETE FROM users");
  expect_fanout(0x7);
}

static void test_reference_tables(void **state) {
  route(app, "SELECT * FROM countries WHERE code = 'DE'");
  expect_route_any();
  assert_int_equal(r.shards, 0x7);
  route(app, "SELECT 1");
  expect_route_any();
  route(app, "INSERT INTO countries (code) VALUES ('DE'), ('FR')");
  expect_fanout(0x7); /* even under deny: every shard holds a copy */
  route(app, "UPDATE countries SET name = 'x'");
  expect_fanout(0x7);
  route(app, "COPY countries TO STDOUT");
  expect_route_any();
  route(app, "COPY countries FROM STDIN");
  expect_fanout(0x7); /* every shard gets every row */
  route(app, "COPY users (id, name) FROM STDIN");
  expect_fanout(0x7); /* the proxy sends each shard its rows */
  assert_int_equal(plan->copy_key_column, 0);
  route(app, "COPY users (name) FROM STDIN");
  expect_refuse("0A000", "needs a column list naming id");
}

static void test_ddl_and_other(void **state) {
  route(app, "CREATE TABLE t (id int)");
  expect_fanout(0x7);
  route(app, "ALTER TABLE users ADD COLUMN y int");
  expect_fanout(0x7);
  route(app, "CREATE INDEX ON users (name)");
  expect_fanout(0x7);
  route(app, "VACUUM users");
  expect_fanout(0x7);
}

static void test_transaction_and_session_statements(void **state) {
  const char *sqls[] = {"BEGIN", "COMMIT", "ROLLBACK", "SET search_path = x", "SAVEPOINT a"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    route(app, sqls[i]);
    expect_route_any();
  }
}

static void test_plan_refusal(void **state) {
  route(app, "UPDATE users SET id = 5 WHERE id = 1");
  expect_refuse("0A000", NULL);
  assert_string_equal(r.message, "UPDATE of shard key column users.id is not supported");
  route(app, "INSERT INTO users SELECT * FROM other");
  expect_refuse("0A000", "INSERT ... SELECT");
}

static void test_same_shard_required(void **state) {
  route(app, sqlf("INSERT INTO users (id) VALUES (%lld); INSERT INTO users (id) VALUES (%lld)",
                  K(0, 0), K(0, 1)));
  expect_one(0);
  route(appw, sqlf("INSERT INTO users (id) VALUES (%lld); INSERT INTO users (id) VALUES (%lld)",
                   K(0, 0), K(1, 1)));
  expect_refuse("0A000", "s0, s1"); /* even under allow */
}

/* ---- writes with keys ---- */

static void test_writes_with_key(void **state) {
  route(app, sqlf("UPDATE users SET name = 'x' WHERE id = %lld", K(1, 0)));
  expect_one(1);
  route(app, sqlf("SELECT * FROM users WHERE id = %lld FOR UPDATE", K(2, 0)));
  expect_one(2);
  route(app, sqlf("INSERT INTO users (id, name) VALUES (%lld, 'a')", K(2, 1)));
  expect_one(2);
  assert_int_equal(row_shard[0], 2);
}

/* ---- multi-row INSERT ---- */

static void test_multi_row_insert_one_shard(void **state) {
  route(app,
        sqlf("INSERT INTO users (id) VALUES (%lld), (%lld), (%lld)", K(1, 0), K(1, 1), K(1, 2)));
  expect_one(1);
  assert_int_equal(row_shard[0], 1);
  assert_int_equal(row_shard[2], 1);
  assert_int_equal(row_shard[3], -7); /* nothing past nrows */
}

static void test_multi_row_insert_split(void **state) {
  route(appw, sqlf("INSERT INTO users (id) VALUES (%lld), (%lld), (%lld), (%lld)", K(1, 0), K(0, 0),
                   K(1, 1), K(2, 0)));
  expect_split(0x7);
  assert_int_equal(row_shard[0], 1);
  assert_int_equal(row_shard[1], 0);
  assert_int_equal(row_shard[2], 1);
  assert_int_equal(row_shard[3], 2);
  /* With Bind values. */
  binds_t b = {0};
  char t0[24], t1[24];
  snprintf(t0, sizeof(t0), "%lld", K(0, 1));
  snprintf(t1, sizeof(t1), "%lld", K(2, 1));
  bind_text(&b, t0);
  bind_text(&b, t1);
  route_binds(appw, "INSERT INTO users (id, n) VALUES ($1, 1), ($2, 2)", &b);
  expect_split(0x5);
  assert_int_equal(row_shard[0], 0);
  assert_int_equal(row_shard[1], 2);
  /* No row_shard array wanted. */
  pgs_route_t plain;
  memset(&plain, 0, sizeof(plain));
  pgs_route_plan(appw, plan, &lexed, params_of(&b), NULL, &plain);
  assert_int_equal(plain.kind, PGS_ROUTE_SPLIT);
  assert_null(plain.row_shard);
}

static void test_multi_row_insert_policies(void **state) {
  const char *sql = sqlf("INSERT INTO users (id) VALUES (%lld), (%lld)", K(0, 0), K(2, 0));
  route(app, sql);
  expect_refuse("0A000", "INSERT into users puts rows on shards s0, s2");
  assert_non_null(strstr(r.message, "deny"));
  route(app2pc, sql);
  expect_split(0x5);
  assert_int_equal(row_shard[0], 0);
  assert_int_equal(row_shard[1], 2);
}

/* ---- hints ---- */

static void test_hint_keyless(void **state) {
  pgs_route_session_t s = {.hint_shard = 1};
  route_with(app, "SELECT * FROM users WHERE name = 'x'", NULL, &s);
  expect_one(1);
  route_with(app, "SELECT 1", NULL, &s);
  expect_one(1);
  route_with(app, "CREATE TABLE t (id int)", NULL, &s);
  expect_one(1);
  route_with(app, "DELETE FROM users", NULL, &s);
  expect_one(1);
  route_with(app, "BEGIN", NULL, &s);
  expect_route_any(); /* transaction control is the proxy's business */
}

static void test_hint_with_keys(void **state) {
  pgs_route_session_t s = {.hint_shard = 2};
  route_with(app, sqlf("SELECT * FROM users WHERE id = %lld", K(2, 0)), NULL, &s);
  expect_one(2);
  route_with(app, sqlf("SELECT * FROM users WHERE id = %lld", K(0, 0)), NULL, &s);
  expect_refuse("0A000", "belongs to shard s0, not hinted shard s2");
  assert_non_null(strstr(r.message, "table users"));
  route_with(app, sqlf("INSERT INTO users (id) VALUES (%lld), (%lld)", K(2, 0), K(2, 1)), NULL, &s);
  expect_one(2);
  route_with(appw, sqlf("INSERT INTO users (id) VALUES (%lld), (%lld)", K(2, 0), K(1, 1)), NULL,
             &s);
  expect_refuse("0A000", "not hinted shard s2");
  route_with(app, "SELECT * FROM users WHERE id = 'zz'", NULL, &s);
  expect_refuse("22P02", NULL); /* a bad value is bad with a hint too */
}

static void test_hint_out_of_range(void **state) {
  pgs_route_session_t s = {.hint_shard = 3};
  route_with(app, "SELECT 1", NULL, &s);
  expect_refuse("22023", NULL);
}

/* ---- tenant sessions ---- */

static void test_tenant_session(void **state) {
  pgs_key_t tenant = {.type = PGS_TYPE_BIGINT, .i = 42};
  pgs_route_session_t s = {.hint_shard = -1, .tenant = &tenant};
  route_with(app, "SELECT * FROM invoices", NULL, &s);
  expect_one(2);
  route_with(app, "SELECT * FROM invoices WHERE tenant_id = 42", NULL, &s);
  expect_one(2);
  route_with(app, "SELECT * FROM invoices WHERE tenant_id = 7", NULL, &s);
  expect_refuse("42501", "tenant 7 of table invoices is not this session's tenant 42");
  route_with(app, "UPDATE invoices SET x = 1 WHERE tenant_id IN (42, 43)", NULL, &s);
  expect_refuse("42501", NULL);
  route_with(app, sqlf("SELECT * FROM users WHERE id = %lld", K(2, 0)), NULL, &s);
  expect_one(2);
  route_with(app, sqlf("SELECT * FROM users WHERE id = %lld", K(0, 0)), NULL, &s);
  expect_refuse("0A000", "not the tenant's shard s2");
  route_with(app, "CREATE TABLE t (id int)", NULL, &s);
  expect_one(2);
}

/* tenant_isolation = strict: only what names the session's tenant on every
 * tenant table runs; what a shard-wide statement would see or change of
 * other tenants on the shard is refused. */
static void test_tenant_session_strict(void **state) {
  pgs_key_t tenant = {.type = PGS_TYPE_BIGINT, .i = 42};
  pgs_route_session_t s = {.hint_shard = -1, .tenant = &tenant};
  static const char *const refused[] = {
      "SELECT * FROM invoices",
      "SELECT * FROM invoices WHERE tenant_id = 42 OR true",
      "SELECT * FROM invoices WHERE tenant_id = 42 UNION SELECT * FROM invoices",
      "UPDATE invoices SET x = 1",
      "DELETE FROM invoices WHERE x = 1",
      "COPY invoices TO STDOUT",
      "TRUNCATE invoices",
      "CREATE TABLE t (id int)",
      "SELECT add_invoice(1)",
      "DO $$ BEGIN NULL; END $$",
      "LOCK TABLE invoices",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(refused); i++) {
    route_with(apps, refused[i], NULL, &s);
    expect_refuse("42501", "tenant_isolation = strict");
  }
  static const char *const placed[] = {
      "SELECT * FROM invoices WHERE tenant_id = 42",
      "UPDATE invoices SET x = 1 WHERE tenant_id = 42 AND x = 2",
      "INSERT INTO invoices (tenant_id, x) VALUES (42, 1)",
      "SELECT 1",
      "SELECT now()",
      "SELECT * FROM users",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(placed); i++) {
    route_with(apps, placed[i], NULL, &s);
    expect_one(2);
  }
  /* Another tenant's key: refused as in every tenant session. */
  route_with(apps, "SELECT * FROM invoices WHERE tenant_id = 7", NULL, &s);
  expect_refuse("42501", "not this session's tenant");
  /* Not a tenant session: no change. */
  route(apps, "SELECT * FROM invoices");
  expect_merge(0x7);
}

static void test_tenant_session_hashed(void **state) {
  pgs_key_t tenant = {.type = PGS_TYPE_BIGINT, .i = 7};
  int want = pgs_shardmap_hash_shard(app, &tenant, NULL);
  pgs_route_session_t s = {.hint_shard = -1, .tenant = &tenant};
  route_with(app, "SELECT * FROM invoices WHERE tenant_id = 7", NULL, &s);
  expect_one(want);
  route_with(app, "SELECT * FROM users", NULL, &s);
  expect_one(want);
  /* A hint naming another shard than the tenant's is a conflict. */
  s.hint_shard = (want + 1) % 3;
  route_with(app, "SELECT 1", NULL, &s);
  expect_refuse("0A000", NULL);
  s.hint_shard = want;
  route_with(app, "SELECT 1", NULL, &s);
  expect_one(want);
}

/* ---- a database of one shard ---- */

static void test_single_shard_database(void **state) {
  const char *sqls[] = {
      "SELECT * FROM users",
      "SELECT * FROM users WHERE id = 5",
      "SELECT * FROM users WHERE id IN (1, 2, 3, 4, 5, 6)",
      "UPDATE users SET x = 1",
      "INSERT INTO users (id) VALUES (1), (2), (3), (4)",
      "CREATE TABLE t (id int)",
      "COPY users (id) FROM STDIN",
      "COPY countries FROM STDIN",
      "SELECT 1",
      "BEGIN",
      "SELECT * FROM events WHERE id = -77",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(sqls); i++) {
    route(one, sqls[i]);
    expect_one(0);
  }
  route(one, "SELECT * FROM users WHERE id = 'x'");
  expect_refuse("22P02", NULL);
  route(one, "UPDATE users SET id = 1");
  expect_refuse("0A000", NULL);
}

/* ---- Bind parameter problems ---- */

static void test_missing_bind_values(void **state) {
  route(app, "SELECT * FROM users WHERE id = $1");
  expect_refuse("08P01", NULL);
  binds_t b = {0};
  bind_text(&b, "1");
  route_binds(app, "SELECT * FROM users WHERE id = $2 AND x = $1", &b);
  expect_refuse("08P01", NULL);
  /* A parameter that is not a key needs no value. */
  route(app, "SELECT * FROM countries WHERE code = $1");
  expect_route_any();
}

static void test_join_keys(void **state) {
  route(app, sqlf("SELECT * FROM users u JOIN invoices i ON i.x = u.x WHERE u.id = %lld AND "
                  "i.tenant_id = 42",
                  K(2, 0)));
  expect_one(2);
  route(app, sqlf("SELECT * FROM users u JOIN invoices i ON i.x = u.x WHERE u.id = %lld AND "
                  "i.tenant_id = 42",
                  K(1, 0)));
  expect_refuse("0A000", "s1, s2");
}

static void test_hint_copy_and_rows(void **state) {
  pgs_route_session_t s = {.hint_shard = 0};
  route_with(app, "COPY users (id, name) FROM STDIN", NULL, &s);
  expect_one(0);
  route_with(app, "COPY countries FROM STDIN", NULL, &s);
  expect_one(0);
  route_with(app, "SELECT * FROM users WHERE id = ANY('{}')", NULL, &s);
  expect_one(0);
}

static void test_tenant_session_insert(void **state) {
  pgs_key_t tenant = {.type = PGS_TYPE_BIGINT, .i = 42};
  pgs_route_session_t s = {.hint_shard = -1, .tenant = &tenant};
  route_with(appw, "INSERT INTO invoices (tenant_id, n) VALUES (42, 1), (42, 2)", NULL, &s);
  expect_one(2);
  assert_int_equal(row_shard[1], 2);
  route_with(appw, "INSERT INTO invoices (tenant_id, n) VALUES (42, 1), (43, 2)", NULL, &s);
  expect_refuse("42501", "tenant 43");
  binds_t b = {0};
  bind_text(&b, "{42,7}");
  route_with(app, "SELECT * FROM invoices WHERE tenant_id = ANY($1)", params_of(&b), &s);
  expect_refuse("42501", "tenant 7");
}

static void test_array_element_too_long(void **state) {
  char text[1200 + 8];
  memset(text, 'a', sizeof(text));
  text[0] = '{';
  text[1100] = '}';
  text[1101] = '\0';
  binds_t b = {0};
  bind_text(&b, text);
  route_binds(app, "SELECT * FROM names WHERE name = ANY($1)", &b);
  expect_refuse("22001", NULL);
  text[1] = '"';
  text[1099] = '"';
  route_binds(app, "SELECT * FROM names WHERE name = ANY($1)", &b);
  expect_refuse("22001", NULL);
}

static void test_too_many_shards(void **state) {
  pgs_database_t big = *app;
  big.nshards = PGS_ROUTE_MAX_SHARDS + 1; /* refused before any shard is looked at */
  route(app, "SELECT 1");
  pgs_route_plan(&big, plan, &lexed, NULL, NULL, &r);
  expect_refuse("54000", NULL);
}

static void test_declared_types_fewer_than_values(void **state) {
  uint8_t be8[8];
  put_be(be8, (uint64_t)K(1, 3), 8);
  binds_t b = {0};
  bind_text(&b, "x");
  bind_binary(&b, be8, 8, 0);
  const pgs_param_values_t *p = params_of(&b);
  b.values.ntypes = 1; /* Parse declared $1 only */
  route_with(app, "SELECT * FROM users WHERE name = $1 AND id = $2", p, NULL);
  expect_one(1);
  b.values.type_oid = NULL;
  b.values.ntypes = 0;
  route_with(app, "SELECT * FROM users WHERE name = $1 AND id = $2", p, NULL);
  expect_one(1);
}

/* ---- SPLIT texts ---- */

static pgs_buf_t split_buf;

/* The SPLIT text for SHARD of the statement last routed. */
static const char *split_for(int shard) {
  pgs_buf_free(&split_buf);
  pgs_buf_init(&split_buf);
  if (pgs_route_split_insert(&lexed, row_shard, plan->nrows, shard, &split_buf) != PGS_OK)
    fail_msg("split of %s for shard %d failed", last_sql, shard);
  assert_true(split_buf.len > 0);
  assert_int_equal(split_buf.data[split_buf.len - 1], '\0');
  assert_int_equal(strlen((const char *)split_buf.data), split_buf.len - 1);
  return (const char *)split_buf.data;
}

/* Parse TEXT again in DB: a one-shard INSERT of NROWS rows to SHARD, whose
 * key literal in row i is KEYS[i] (text form). */
static void check_split_text(const pgs_database_t *db, const char *text, int nrows, int shard,
                             const char *const *keys) {
  pgs_lexed_t again;
  pgs_lex_init(&again);
  if (pgs_lex(text, strlen(text), &again) != PGS_OK) fail_msg("split text does not lex: %s", text);
  pgs_plan_t *p = pgs_analyze(db, &again);
  if (p->refuse_sqlstate[0] || p->parse_failed) fail_msg("split text refused: %s", text);
  assert_int_equal(p->target, PGS_TARGET_ROWS);
  assert_int_equal(p->nrows, nrows);
  for (int i = 0; i < nrows; i++) {
    const pgs_literal_t *lit = pgs_lexed_literal(&again, p->rows[i].param);
    assert_non_null(lit);
    assert_string_equal(again.values + lit->offset, keys[i]);
  }
  pgs_route_t rr;
  memset(&rr, 0, sizeof(rr));
  pgs_route_plan(db, p, &again, NULL, NULL, &rr);
  assert_int_equal(rr.kind, PGS_ROUTE_ONE);
  assert_int_equal(rr.shard, shard);
  pgs_plan_unref(p);
  pgs_lex_free(&again);
}

static void test_split_texts(void **state) {
  route(appw, sqlf("INSERT INTO users (id, name) VALUES (%lld, 'a'), (%lld, 'b'), (%lld, 'c')",
                   K(0, 0), K(1, 0), K(0, 1)));
  expect_split(0x3);
  char expect0[256], expect1[256], k00[24], k01[24], k10[24];
  snprintf(k00, sizeof(k00), "%lld", K(0, 0));
  snprintf(k01, sizeof(k01), "%lld", K(0, 1));
  snprintf(k10, sizeof(k10), "%lld", K(1, 0));
  snprintf(expect0, sizeof(expect0), "INSERT INTO users (id, name) VALUES (%s, 'a'), (%s, 'c')",
           k00, k01);
  snprintf(expect1, sizeof(expect1), "INSERT INTO users (id, name) VALUES (%s, 'b')", k10);
  assert_string_equal(split_for(0), expect0);
  check_split_text(appw, split_for(0), 2, 0, (const char *const[]){k00, k01});
  assert_string_equal(split_for(1), expect1);
  check_split_text(appw, split_for(1), 1, 1, (const char *const[]){k10});
  /* A shard with no row has no statement. */
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  assert_int_equal(pgs_route_split_insert(&lexed, row_shard, plan->nrows, 2, &buf), PGS_EINVAL);
  assert_int_equal(buf.len, 0);
  pgs_buf_free(&buf);
}

static void test_split_quotes_and_backslashes(void **state) {
  route(appw, sqlf("INSERT INTO names (name, note) VALUES ('O''Brien', E'a\\\\b'), "
                   "('x', 'it''s'), ('c:\\dir', 'cost $5')"));
  /* Which rows land together depends on the hash; every shard's text must
   * parse to exactly its rows with the values as written. */
  const char *keys[] = {"O'Brien", "x", "c:\\dir"};
  int shard_rows = 0;
  for (int s = 0; s < 3; s++) {
    const char *mine[3];
    int n = 0;
    for (int i = 0; i < 3; i++) {
      assert_int_equal(row_shard[i], shard_of(appw, "names", keys[i]));
      if (row_shard[i] == s) mine[n++] = keys[i];
    }
    if (n == 0) continue;
    shard_rows += n;
    char text[512];
    snprintf(text, sizeof(text), "%s", split_for(s));
    check_split_text(appw, text, n, s, mine);
    /* The non-key values come back too. */
    if (row_shard[0] == s) assert_non_null(strstr(text, "('O''Brien', E'a\\\\b')"));
    if (row_shard[1] == s) assert_non_null(strstr(text, "('x', 'it''s')"));
    if (row_shard[2] == s) assert_non_null(strstr(text, "(E'c:\\\\dir', 'cost $5')"));
  }
  assert_int_equal(shard_rows, 3);
}

static void test_split_keeps_prefix_and_suffix(void **state) {
  route(appw, sqlf("WITH v (x) AS (VALUES (1), (2)) INSERT INTO users (id) VALUES (%lld), (%lld) "
                   "ON CONFLICT (id) DO NOTHING RETURNING id, 'done'",
                   K(0, 0), K(2, 0)));
  expect_split(0x5);
  char want[256];
  snprintf(want, sizeof(want),
           "WITH v (x) AS (VALUES (1), (2)) INSERT INTO users (id) VALUES (%lld) "
           "ON CONFLICT (id) DO NOTHING RETURNING id, 'done'",
           K(2, 0));
  assert_string_equal(split_for(2), want);
  char k[24];
  snprintf(k, sizeof(k), "%lld", K(2, 0));
  check_split_text(appw, split_for(2), 1, 2, (const char *const[]){k});
}

static void test_split_bind_params_stay(void **state) {
  /* The proxy then numbers them afresh (test_renumber_params). */
  binds_t b = {0};
  char t0[24], t1[24];
  snprintf(t0, sizeof(t0), "%lld", K(0, 0));
  snprintf(t1, sizeof(t1), "%lld", K(1, 0));
  bind_text(&b, t0);
  bind_text(&b, t1);
  route_binds(appw, "INSERT INTO users (id, name) VALUES ($1, 'a'), ($2, 'b')", &b);
  expect_split(0x3);
  assert_string_equal(split_for(1), "INSERT INTO users (id, name) VALUES ($2, 'b')");
}

/* renumber_params: SQL's parameters from $1 in order of appearance; the
 * text as it came otherwise, and OUT unchanged on an error. */
static void renumber(const char *sql, int nparams, const char *want, const int *old_of, int nused) {
  pgs_buf_t out;
  pgs_buf_init(&out);
  pgs_buf_put(&out, "x", 1);
  int got_old[16] = {0}, got_n = -1;
  pgs_status_t st = pgs_route_renumber_params(sql, strlen(sql), nparams, got_old, &got_n, &out);
  if (want == NULL) {
    assert_int_equal(st, PGS_EINVAL);
    assert_int_equal(out.len, 1);
  } else {
    assert_int_equal(st, PGS_OK);
    assert_int_equal(out.len, 1 + strlen(want));
    assert_memory_equal(out.data + 1, want, strlen(want));
    assert_int_equal(got_n, nused);
    for (int i = 0; i < nused; i++) assert_int_equal(got_old[i], old_of[i]);
  }
  pgs_buf_free(&out);
}

static void test_renumber_params(void **state) {
  (void)state;
  renumber("VALUES ($3, 'a$1', $1), ($3, $10)", 10, "VALUES ($1, 'a$1', $2), ($1, $3)",
           (const int[]){3, 1, 10}, 3);
  /* Names holding '$', quoted names, comments, E'' strings, an operator. */
  renumber("SELECT a$1, \"b$2\", E'a\\\\'' $2', 1 /* $1 */ -- $1\n $$ $2", 2,
           "SELECT a$1, \"b$2\", E'a\\\\'' $2', 1 /* $1 */ -- $1\n $$ $1", (const int[]){2}, 1);
  renumber("VALUES (1, 'x')", 0, "VALUES (1, 'x')", NULL, 0);
  renumber("VALUES ($0)", 2, NULL, NULL, 0);
  renumber("VALUES ($3)", 2, NULL, NULL, 0);
  renumber("VALUES ($1x)", 2, NULL, NULL, 0);
  renumber("VALUES ($99999999999999999999)", 2, NULL, NULL, 0);
}

/* split_insert on a lexed text, with a row_shard of the caller's. */
static pgs_status_t split_raw(const char *sql, const int *shards, int nrows, int shard,
                              pgs_buf_t *out) {
  last_sql = sql;
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  return pgs_route_split_insert(&lexed, shards, nrows, shard, out);
}

static void test_split_identifiers_with_dollar(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  const int shards[] = {0, 1, 0};
  assert_int_equal(split_raw("INSERT INTO t$x (a$1, \"b$2\") VALUES (1, 'p$1'), (-2, $$q$$), "
                             "(3.5e1, 'r')",
                             shards, 3, 0, &buf),
                   PGS_OK);
  assert_string_equal((const char *)buf.data,
                      "INSERT INTO t$x (a$1, \"b$2\") VALUES (1, 'p$1'), (3.5e1, 'r')");
  pgs_buf_free(&buf);
  pgs_buf_init(&buf);
  assert_int_equal(split_raw("INSERT INTO t$x (a$1, \"b$2\") VALUES (1, 'p$1'), (-2, $$q$$), "
                             "(3.5e1, 'r')",
                             shards, 3, 1, &buf),
                   PGS_OK);
  assert_string_equal((const char *)buf.data, "INSERT INTO t$x (a$1, \"b$2\") VALUES (-2, 'q')");
  pgs_buf_free(&buf);
}

static void test_split_finds_the_right_values(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  const int shards[] = {1, 0};
  /* A table and a column named values, a quoted "VALUES" and one in a
   * string: none of them is the row list. */
  assert_int_equal(split_raw("INSERT INTO values (\"values\", values) VALUES (1, 'values'), "
                             "(2, 'VALUES (9)') RETURNING \"VALUES\"",
                             shards, 2, 0, &buf),
                   PGS_OK);
  assert_string_equal((const char *)buf.data,
                      "INSERT INTO values (\"values\", values) VALUES (2, 'VALUES (9)') "
                      "RETURNING \"VALUES\"");
  pgs_buf_free(&buf);
  pgs_buf_init(&buf);
  assert_int_equal(split_raw("insert into s.values (a) values (1) , ( 2 );", shards, 2, 1, &buf),
                   PGS_OK);
  assert_string_equal((const char *)buf.data, "insert into s.values (a) values (1)");
  pgs_buf_free(&buf);
}

static void test_split_errors(void **state) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  pgs_buf_put(&buf, "keep", 4);
  const int shards[] = {0, 0, 0};
  /* Row count differs from the plan's. */
  assert_int_equal(split_raw("INSERT INTO t (a) VALUES (1), (2)", shards, 3, 0, &buf), PGS_EINVAL);
  assert_int_equal(buf.len, 4); /* nothing appended */
  assert_int_equal(split_raw("INSERT INTO t (a) SELECT 1", shards, 1, 0, &buf), PGS_EINVAL);
  assert_int_equal(split_raw("INSERT INTO t DEFAULT VALUES", shards, 1, 0, &buf), PGS_EINVAL);
  assert_int_equal(split_raw("INSERT INTO t (a) VALUES (1), 2", shards, 2, 0, &buf), PGS_EINVAL);
  assert_int_equal(split_raw("INSERT INTO t (a) VALUES (1", shards, 1, 0, &buf), PGS_EINVAL);
  assert_int_equal(buf.len, 4);
  /* Appends after what the buffer holds. */
  assert_int_equal(split_raw("INSERT INTO t (a) VALUES (1), (2)", shards, 2, 0, &buf), PGS_OK);
  assert_string_equal((const char *)buf.data + 4, "INSERT INTO t (a) VALUES (1), (2)");
  pgs_buf_free(&buf);
}

static void test_split_every_row_once(void **state) {
  /* 30 rows over three shards: the texts together insert each row once. */
  char sql[2048] = "INSERT INTO users (id, note) VALUES ";
  int64_t ids[30];
  for (int i = 0; i < 30; i++) {
    ids[i] = user_key[i % 3][i % 4] + 1000000 * (i / 12);
    size_t len = strlen(sql);
    snprintf(sql + len, sizeof(sql) - len, "%s(%lld, 'row %d')", i ? ", " : "", (long long)ids[i],
             i);
  }
  route(appw, sql);
  expect_split(0x7);
  int seen = 0;
  for (int s = 0; s < 3; s++) {
    char text[2048];
    snprintf(text, sizeof(text), "%s", split_for(s));
    const char *keys[30];
    char bufs[30][24];
    int n = 0;
    for (int i = 0; i < 30; i++) {
      if (row_shard[i] != s) continue;
      snprintf(bufs[n], sizeof(bufs[n]), "%lld", (long long)ids[i]);
      keys[n] = bufs[n];
      n++;
    }
    check_split_text(appw, text, n, s, keys);
    seen += n;
  }
  assert_int_equal(seen, 30);
}

/* ---- CommandComplete tags ---- */

static void test_tag_count(void **state) {
  assert_int_equal(pgs_route_tag_count("INSERT 0 5"), 5);
  assert_int_equal(pgs_route_tag_count("UPDATE 3"), 3);
  assert_int_equal(pgs_route_tag_count("DELETE 2"), 2);
  assert_int_equal(pgs_route_tag_count("SELECT 7"), 7);
  assert_int_equal(pgs_route_tag_count("COPY 9"), 9);
  assert_int_equal(pgs_route_tag_count("MERGE 1"), 1);
  assert_int_equal(pgs_route_tag_count("MOVE 2"), 2);
  assert_int_equal(pgs_route_tag_count("FETCH 2"), 2);
  assert_int_equal(pgs_route_tag_count("SELECT 18446744073709551615"), UINT64_MAX);
  assert_int_equal(pgs_route_tag_count("CREATE TABLE"), 0);
  assert_int_equal(pgs_route_tag_count("BEGIN"), 0);
  assert_int_equal(pgs_route_tag_count("SELECT"), 0);
  assert_int_equal(pgs_route_tag_count(""), 0);
}

static void test_tag_with_count(void **state) {
  char out[64];
  pgs_route_tag_with_count("INSERT 0 5", 7, out, sizeof(out));
  assert_string_equal(out, "INSERT 0 7");
  pgs_route_tag_with_count("UPDATE 3", 9, out, sizeof(out));
  assert_string_equal(out, "UPDATE 9");
  pgs_route_tag_with_count("DELETE 0", 12345678901ULL, out, sizeof(out));
  assert_string_equal(out, "DELETE 12345678901");
  pgs_route_tag_with_count("COPY 1", 0, out, sizeof(out));
  assert_string_equal(out, "COPY 0");
  pgs_route_tag_with_count("CREATE TABLE", 5, out, sizeof(out));
  assert_string_equal(out, "CREATE TABLE");
  pgs_route_tag_with_count("UPDATE 3", 12345, out, 7); /* cut, still a string */
  assert_string_equal(out, "UPDATE");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hash_literal),
      cmocka_unit_test(test_range_literal),
      cmocka_unit_test(test_geo),
      cmocka_unit_test(test_geo_value_in_no_region),
      cmocka_unit_test(test_tenant_pinned_and_hashed),
      cmocka_unit_test(test_tenant_shard_function),
      cmocka_unit_test(test_same_key_every_form),
      cmocka_unit_test(test_smallint_and_int),
      cmocka_unit_test(test_cast_types_binary_value),
      cmocka_unit_test(test_uuid_forms),
      cmocka_unit_test(test_text_forms),
      cmocka_unit_test(test_date_and_timestamptz),
      cmocka_unit_test(test_bad_values),
      cmocka_unit_test(test_negated_values),
      cmocka_unit_test(test_in_list_one_shard),
      cmocka_unit_test(test_in_list_read_several_merged),
      cmocka_unit_test(test_in_list_write_policies),
      cmocka_unit_test(test_code_that_writes),
      cmocka_unit_test(test_copy_of_a_write),
      cmocka_unit_test(test_any_text_array_literal),
      cmocka_unit_test(test_any_text_array_param),
      cmocka_unit_test(test_any_text_array_escapes),
      cmocka_unit_test(test_any_text_array_malformed),
      cmocka_unit_test(test_any_empty_and_null_arrays),
      cmocka_unit_test(test_any_binary_array),
      cmocka_unit_test(test_any_binary_array_malformed),
      cmocka_unit_test(test_any_text_array_cap),
      cmocka_unit_test(test_array_constructor_elements),
      cmocka_unit_test(test_null_key_in_where),
      cmocka_unit_test(test_null_key_in_insert),
      cmocka_unit_test(test_keyless_read_merged),
      cmocka_unit_test(test_keyless_read_refused),
      cmocka_unit_test(test_keyless_write_policies),
      cmocka_unit_test(test_reference_tables),
      cmocka_unit_test(test_ddl_and_other),
      cmocka_unit_test(test_transaction_and_session_statements),
      cmocka_unit_test(test_plan_refusal),
      cmocka_unit_test(test_same_shard_required),
      cmocka_unit_test(test_writes_with_key),
      cmocka_unit_test(test_multi_row_insert_one_shard),
      cmocka_unit_test(test_multi_row_insert_split),
      cmocka_unit_test(test_multi_row_insert_policies),
      cmocka_unit_test(test_hint_keyless),
      cmocka_unit_test(test_hint_with_keys),
      cmocka_unit_test(test_hint_out_of_range),
      cmocka_unit_test(test_tenant_session),
      cmocka_unit_test(test_tenant_session_hashed),
      cmocka_unit_test(test_tenant_session_strict),
      cmocka_unit_test(test_single_shard_database),
      cmocka_unit_test(test_missing_bind_values),
      cmocka_unit_test(test_join_keys),
      cmocka_unit_test(test_hint_copy_and_rows),
      cmocka_unit_test(test_tenant_session_insert),
      cmocka_unit_test(test_array_element_too_long),
      cmocka_unit_test(test_too_many_shards),
      cmocka_unit_test(test_declared_types_fewer_than_values),
      cmocka_unit_test(test_split_texts),
      cmocka_unit_test(test_split_quotes_and_backslashes),
      cmocka_unit_test(test_split_keeps_prefix_and_suffix),
      cmocka_unit_test(test_split_bind_params_stay),
      cmocka_unit_test(test_renumber_params),
      cmocka_unit_test(test_split_identifiers_with_dollar),
      cmocka_unit_test(test_split_finds_the_right_values),
      cmocka_unit_test(test_split_errors),
      cmocka_unit_test(test_split_every_row_once),
      cmocka_unit_test(test_tag_count),
      cmocka_unit_test(test_tag_with_count),
  };
  int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
  pgs_buf_free(&split_buf);
  return failed;
}
