/*
 * test_moves.c — router/moves.c: the text[] of a move's tables, which
 * statements a move in progress refuses (fan-outs, DDL, hints and tenant
 * sessions reaching the target without the table's key; not keyed
 * statements, not moves into shards the map lacks, not switched moves),
 * whether two maps route alike, and whether one statement runs on the same
 * shards (by name) under two maps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/moves.h"
#include "pgshard/route.h"

#define SHARDS(DB)                                                                                 \
  "[shard." DB                                                                                     \
  ".s0]\nprimary = port=1\n"                                                                       \
  "[shard." DB ".s1]\nprimary = port=2\n"

#define RANGE_OLD "range = s0: - 100\nrange = s1: 100 -\n"
#define RANGE_NEW "range = s0: - 200\nrange = s1: 200 -\n"

#define TABLES(DB, RANGE, PIN)                                                                     \
  "[table." DB                                                                                     \
  ".invoices]\ncolumn = tenant_id\ntype = bigint\nstrategy = tenant\n"                             \
  "[table." DB ".events]\ncolumn = id\ntype = bigint\nstrategy = range\n" RANGE "[table." DB       \
  ".users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"                                         \
  "[tenants." DB "]\n42 = " PIN "\n"

static const char config_text[] =
    "[user.app]\npassword = x\n"
    "[database.app]\ncross_shard_writes = allow\n" SHARDS("app") TABLES("app", RANGE_OLD, "s1")
    /* The same map written again: alike. */
    "[database.same]\ncross_shard_writes = allow\n" SHARDS("same") TABLES("same", RANGE_OLD, "s1")
    /* Tenant 42 moves to s0. */
    "[database.tenant]\ncross_shard_writes = allow\n" SHARDS("tenant")
        TABLES("tenant", RANGE_OLD, "s0")
    /* The range boundary moves up. */
    "[database.range]\ncross_shard_writes = allow\n" SHARDS("range")
        TABLES("range", RANGE_NEW, "s1")
    /* A third shard: hashed keys move. */
    "[database.three]\ncross_shard_writes = allow\n" SHARDS(
        "three") "[shard.three.s2]\nprimary = port=3\n" TABLES("three", RANGE_OLD, "s1");

static pgs_config_t *config;
static const pgs_database_t *app, *same, *tenant, *range, *three;

static int group_setup(void **state) {
  config = pgs_config_parse_string(config_text);
  for (int i = 0; i < config->nerrors; i++)
    print_message("line %d: %s\n", config->errors[i].line, config->errors[i].message);
  if (config->nerrors) return -1;
  app = pgs_config_find_database(config, "app");
  same = pgs_config_find_database(config, "same");
  tenant = pgs_config_find_database(config, "tenant");
  range = pgs_config_find_database(config, "range");
  three = pgs_config_find_database(config, "three");
  return app && same && tenant && range && three ? 0 : -1;
}

static int group_teardown(void **state) {
  pgs_config_unref(config);
  return 0;
}

/* ---- a statement, lexed, analysed and routed in DB ---- */

typedef struct routed {
  pgs_lexed_t lexed;
  pgs_plan_t *plan;
  pgs_route_t rt;
  int rows[16];
} routed_t;

static void route_in(routed_t *r, const pgs_database_t *db, const char *sql, int hint) {
  pgs_lex_init(&r->lexed);
  assert_int_equal(pgs_lex(sql, strlen(sql), &r->lexed), PGS_OK);
  r->plan = pgs_analyze(db, &r->lexed);
  memset(&r->rt, 0, sizeof(r->rt));
  r->rt.row_shard = r->rows;
  pgs_route_session_t session = {.hint_shard = hint, .tenant = NULL};
  if (r->lexed.hint_shard[0]) session.hint_shard = pgs_shardmap_find_shard(db, r->lexed.hint_shard);
  pgs_route_plan(db, r->plan, &r->lexed, NULL, &session, &r->rt);
}

static void routed_free(routed_t *r) {
  pgs_plan_unref(r->plan);
  pgs_lex_free(&r->lexed);
}

/* ---- the moves ---- */

static char *invoices_only[] = {"invoices"};
static char *qualified[] = {"public.Users"};

static pgs_move_t move_of(const char *target, pgs_move_phase_t phase, char **tables, int n) {
  pgs_move_t m = {0};
  m.reshard_id = "feedface00000001";
  m.database = "app";
  m.source = "s0";
  m.target = (char *)target;
  m.tables = tables;
  m.ntables = n;
  m.phase = phase;
  return m;
}

/* Whether SQL (hinted to HINT, -1 none) is refused by MOVES in app; the
 * message starts as the proxy's must. */
static bool refused(const pgs_move_t *moves, int n, const char *sql, int hint) {
  routed_t r;
  route_in(&r, app, sql, hint);
  char message[512];
  bool refuse = pgs_moves_refuse(moves, n, app, r.plan, &r.lexed, &r.rt, message, sizeof(message));
  if (refuse) {
    if (strncmp(message, "table \"", 7) != 0 || !strstr(message, "has rows moving from shard s0") ||
        !strstr(message, "(reshard feedface00000001); ") ||
        !strstr(message, "until the move is cut over or aborted"))
      fail_msg("message: %s", message);
  }
  routed_free(&r);
  return refuse;
}

static void test_parse_array(void **state) {
  char **items;
  int n;
  assert_true(pgs_moves_parse_array("{invoices,events}", &items, &n));
  assert_int_equal(n, 2);
  assert_string_equal(items[0], "invoices");
  assert_string_equal(items[1], "events");
  for (int i = 0; i < n; i++) free(items[i]);
  free(items);
  assert_true(pgs_moves_parse_array("{\"a b\",\"q\\\"uote\",c}", &items, &n));
  assert_int_equal(n, 3);
  assert_string_equal(items[0], "a b");
  assert_string_equal(items[1], "q\"uote");
  assert_string_equal(items[2], "c");
  for (int i = 0; i < n; i++) free(items[i]);
  free(items);
  assert_true(pgs_moves_parse_array("{}", &items, &n));
  assert_int_equal(n, 0);
  assert_false(pgs_moves_parse_array(NULL, &items, &n));
  assert_false(pgs_moves_parse_array("invoices", &items, &n));
  assert_false(pgs_moves_parse_array("{\"open}", &items, &n));
  assert_false(pgs_moves_parse_array("{{a},{b}}", &items, &n));
  assert_false(pgs_moves_parse_array("{a,,b}", &items, &n));
  assert_int_equal(pgs_move_phase_parse("copying"), PGS_MOVE_COPYING);
  assert_int_equal(pgs_move_phase_parse("cleaned"), PGS_MOVE_CLEANED);
  assert_int_equal(pgs_move_phase_parse("paused?"), PGS_MOVE_UNKNOWN);
}

/* A source's mirror of a move and the target's row of it make one move:
 * the target's, whichever comes first; other moves are kept apart. */
static void test_add_prefers_the_targets_row(void **state) {
  (void)state;
  pgs_move_t *moves = NULL;
  int n = 0;
  pgs_move_t mirror = {.reshard_id = "r1",
                       .source = "s0",
                       .target = "s1",
                       .phase_name = "copying",
                       .rows_copied = 5,
                       .mirror = true};
  pgs_move_t real = mirror;
  real.mirror = false;
  real.rows_copied = 7;
  pgs_move_t other = mirror;
  other.target = "s2";
  pgs_moves_add(&moves, &n, &mirror);
  pgs_moves_add(&moves, &n, &other);
  pgs_moves_add(&moves, &n, &real);
  pgs_moves_add(&moves, &n, &mirror); /* after the real one: dropped */
  assert_int_equal(n, 2);
  int s1 = !strcmp(moves[0].target, "s1") ? 0 : 1;
  assert_string_equal(moves[s1].target, "s1");
  assert_false(moves[s1].mirror);
  assert_int_equal(moves[s1].rows_copied, 7);
  assert_string_equal(moves[1 - s1].target, "s2");
  assert_true(moves[1 - s1].mirror);
  pgs_moves_free(moves, n);
}

static void test_refusals(void **state) {
  pgs_move_t moving = move_of("s1", PGS_MOVE_STREAMING, invoices_only, 1);
  /* Fan-outs naming the table: reads, writes, DDL. */
  assert_true(refused(&moving, 1, "select count(*) from invoices", -1));
  assert_true(refused(&moving, 1, "SELECT * FROM public.INVOICES WHERE v > 1", -1));
  assert_true(refused(&moving, 1, "select * from \"invoices\"", -1));
  assert_true(refused(&moving, 1, "update invoices set v = 1", -1));
  assert_true(
      refused(&moving, 1, "delete from invoices where tenant_id in (1, 2, 3, 4, 5, 6, 42)", -1));
  assert_true(refused(&moving, 1, "alter table invoices add column w int", -1));
  /* Sent to the target by a hint, without the key. */
  assert_true(refused(&moving, 1, "/* pgshard: shard=s1 */ select * from invoices", -1));
  assert_true(refused(&moving, 1, "select * from invoices", 1));
  /* By key: the target's keys are not moving; each row of an INSERT too. */
  assert_false(refused(&moving, 1, "select * from invoices where tenant_id = 42", -1));
  assert_false(refused(&moving, 1, "select * from invoices where tenant_id = 42", 1));
  assert_false(refused(&moving, 1, "insert into invoices (tenant_id, v) values (42, 1)", -1));
  assert_false(refused(&moving, 1, "copy invoices (tenant_id, v) from stdin", -1));
  /* On the source only (a hint there): its rows are its own. */
  assert_false(refused(&moving, 1, "select * from invoices", 0));
  /* Not naming the table, or naming it only in a string. */
  assert_false(refused(&moving, 1, "select count(*) from users", -1));
  assert_false(refused(&moving, 1, "select count(*) from users where name = 'invoices'", -1));
  assert_false(refused(&moving, 1, "select count(*) from invoices_archive", -1));
  assert_false(refused(&moving, 1, "select 1", -1));
  /* Copying counts as moving; switched and cleaned moves do not. */
  pgs_move_t copying = move_of("s1", PGS_MOVE_COPYING, invoices_only, 1);
  assert_true(refused(&copying, 1, "select count(*) from invoices", -1));
  pgs_move_t done[] = {move_of("s1", PGS_MOVE_SWITCHED, invoices_only, 1),
                       move_of("s1", PGS_MOVE_CLEANED, invoices_only, 1)};
  assert_false(refused(done, 2, "select count(*) from invoices", -1));
  /* Into a shard the map does not have: no client reaches it. */
  pgs_move_t elsewhere = move_of("s7", PGS_MOVE_STREAMING, invoices_only, 1);
  assert_false(refused(&elsewhere, 1, "select count(*) from invoices", -1));
  /* A schema-qualified name in the move is matched by its name. */
  pgs_move_t users = move_of("s1", PGS_MOVE_STREAMING, qualified, 1);
  assert_true(refused(&users, 1, "select count(*) from users", -1));
  assert_false(refused(&users, 1, "select count(*) from invoices", -1));
}

static void test_same_map(void **state) {
  assert_true(pgs_moves_same_map(app, app));
  assert_true(pgs_moves_same_map(app, same));
  assert_false(pgs_moves_same_map(app, tenant));
  assert_false(pgs_moves_same_map(app, range));
  assert_false(pgs_moves_same_map(app, three));
  const pgs_table_t *events = pgs_shardmap_find_table(app, "events");
  assert_true(pgs_moves_same_table(app, events, tenant, pgs_shardmap_find_table(tenant, "events")));
  assert_false(pgs_moves_same_table(app, events, range, pgs_shardmap_find_table(range, "events")));
  const pgs_table_t *invoices = pgs_shardmap_find_table(app, "invoices");
  assert_false(
      pgs_moves_same_table(app, invoices, tenant, pgs_shardmap_find_table(tenant, "invoices")));
  assert_true(
      pgs_moves_same_table(app, invoices, range, pgs_shardmap_find_table(range, "invoices")));
}

/* Whether SQL runs on the same shards in app and in DB. */
static bool same_route(const pgs_database_t *db, const char *sql) {
  routed_t a, b;
  route_in(&a, app, sql, -1);
  route_in(&b, db, sql, -1);
  bool alike = pgs_moves_same_route(app, &a.rt, db, &b.rt, a.plan->nrows);
  routed_free(&a);
  routed_free(&b);
  return alike;
}

static void test_same_route(void **state) {
  /* Tenant 42 moves, 43 does not. */
  assert_false(same_route(tenant, "select * from invoices where tenant_id = 42"));
  assert_true(same_route(tenant, "select * from invoices where tenant_id = 43"));
  assert_false(same_route(tenant, "insert into invoices (tenant_id, v) values (42, 1)"));
  /* A fan-out over the same shards, and no sharded table at all. */
  assert_true(same_route(tenant, "select count(*) from invoices"));
  assert_true(same_route(tenant, "select 1"));
  /* The range boundary moves: 150 changes shard, 50 and 500 do not. */
  assert_false(same_route(range, "select * from events where id = 150"));
  assert_true(same_route(range, "select * from events where id = 50"));
  assert_true(same_route(range, "update events set v = 1 where id in (50, 500)"));
  /* A multi-row INSERT: compared row by row. 50 -> s0 and 150 -> s1 in
   * app; both s0 in range; 150 and 500 are s1 and s1 vs s0 and s1. */
  assert_false(same_route(range, "insert into events (id) values (50), (150)"));
  assert_false(same_route(range, "insert into events (id) values (500), (150)"));
  assert_true(same_route(range, "insert into events (id) values (50), (500)"));
  /* A third shard: every fan-out changes. */
  assert_false(same_route(three, "select count(*) from users"));
  assert_false(same_route(three, "create table t (id int)"));
  /* Refused here: the same anywhere. */
  assert_true(same_route(tenant, "select * from invoices where tenant_id = 'x'"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_array), cmocka_unit_test(test_add_prefers_the_targets_row),
      cmocka_unit_test(test_refusals),    cmocka_unit_test(test_same_map),
      cmocka_unit_test(test_same_route),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
