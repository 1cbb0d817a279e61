/*
 * test_plancache.c — router/plancache.c: hits and misses, texts that differ
 * only in literals sharing a plan, one entry per database, least recently
 * used eviction, reference counts (a plan outlives its eviction, a clear or
 * the cache while a caller holds it; run under ASan, every free is
 * checked), hash collisions never returning another text's plan, and
 * unparseable texts not being kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"

static pgs_table_t tables[] = {
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT, .strategy = PGS_STRATEGY_HASH},
};
static pgs_database_t db1, db2;
static pgs_lexed_t lexed;

static int group_setup(void **state) {
  db1 = (pgs_database_t){.name = "one"};
  db1.shardmap.tables = tables;
  db1.shardmap.ntables = 1;
  db2 = (pgs_database_t){.name = "two"}; /* no sharded tables */
  pgs_lex_init(&lexed);
  return 0;
}

static int group_teardown(void **state) {
  pgs_lex_free(&lexed);
  return 0;
}

static pgs_plan_t *get(pgs_plan_cache_t *cache, const pgs_database_t *db, const char *sql) {
  if (pgs_lex(sql, strlen(sql), &lexed) != PGS_OK) fail_msg("lexer refused %s", sql);
  pgs_plan_t *plan = pgs_plan_cache_get(cache, db, &lexed);
  assert_non_null(plan);
  return plan;
}

/* Get and drop the caller's reference at once (the cache keeps its own). */
static void touch(pgs_plan_cache_t *cache, const char *sql) {
  pgs_plan_unref(get(cache, &db1, sql));
}

static void test_miss_then_hit(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(8);
  pgs_plan_t *a = get(cache, &db1, "SELECT * FROM users WHERE id = 1");
  assert_int_equal(pgs_plan_cache_misses(cache), 1);
  assert_int_equal(pgs_plan_cache_hits(cache), 0);
  assert_int_equal(a->refcount, 2); /* the cache's and ours */
  pgs_plan_t *b = get(cache, &db1, "SELECT * FROM users WHERE id = 1");
  assert_ptr_equal(a, b);
  assert_int_equal(pgs_plan_cache_hits(cache), 1);
  assert_int_equal(pgs_plan_cache_misses(cache), 1);
  assert_int_equal(a->refcount, 3);
  assert_int_equal(a->target, PGS_TARGET_KEYS);
  pgs_plan_unref(a);
  pgs_plan_unref(b);
  assert_int_equal(pgs_plan_cache_count(cache), 1);
  pgs_plan_cache_free(cache);
}

static void test_literals_share_a_plan(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(8);
  pgs_plan_t *a = get(cache, &db1, "SELECT * FROM users WHERE id = 1");
  pgs_plan_t *b = get(cache, &db1, "select * from users where id = 2");
  pgs_plan_t *c = get(cache, &db1, "SELECT  * FROM users\nWHERE id = 99 -- hi");
  pgs_plan_t *d = get(cache, &db1, "SELECT * FROM users WHERE id = $1");
  assert_ptr_not_equal(a, b); /* keywords are not case-folded */
  assert_ptr_equal(a, c);
  assert_ptr_equal(a, d); /* "$1" either way: the plan names parameter 1 */
  assert_int_equal(pgs_plan_cache_misses(cache), 2);
  assert_int_equal(pgs_plan_cache_hits(cache), 2);
  pgs_plan_unref(a);
  pgs_plan_unref(b);
  pgs_plan_unref(c);
  pgs_plan_unref(d);
  pgs_plan_cache_free(cache);
}

static void test_databases_kept_apart(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(8);
  pgs_plan_t *a = get(cache, &db1, "SELECT * FROM users WHERE id = 1");
  pgs_plan_t *b = get(cache, &db2, "SELECT * FROM users WHERE id = 1");
  assert_ptr_not_equal(a, b);
  assert_int_equal(a->target, PGS_TARGET_KEYS);
  assert_int_equal(b->target, PGS_TARGET_ANY); /* users is a reference table there */
  assert_int_equal(pgs_plan_cache_misses(cache), 2);
  assert_int_equal(pgs_plan_cache_count(cache), 2);
  pgs_plan_unref(a);
  pgs_plan_unref(b);
  pgs_plan_cache_free(cache);
}

static void test_lru_eviction_order(void **state) {
  /* Four shapes; literal values vary but do not change the shape. */
  static const char *const a = "SELECT 1 FROM users", *const a2 = "SELECT 'x' FROM users";
  static const char *const b = "SELECT 1, 2 FROM users", *const c = "SELECT 1, 2, 3 FROM users";
  static const char *const d = "SELECT 1 FROM accounts";
  pgs_plan_cache_t *cache = pgs_plan_cache_new(3);
  touch(cache, a);  /* miss 1: [a] */
  touch(cache, b);  /* miss 2: [b a] */
  touch(cache, c);  /* miss 3: [c b a] */
  touch(cache, a2); /* hit 1:  [a c b] */
  touch(cache, d);  /* miss 4: [d a c], b evicted */
  assert_int_equal(pgs_plan_cache_count(cache), 3);
  assert_int_equal(pgs_plan_cache_misses(cache), 4);
  assert_int_equal(pgs_plan_cache_hits(cache), 1);
  touch(cache, a); /* hit 2: [a d c] */
  touch(cache, d); /* hit 3: [d a c] */
  touch(cache, b); /* miss 5: [b d a], c evicted */
  touch(cache, a); /* hit 4: [a b d] */
  touch(cache, d); /* hit 5: [d a b] */
  assert_int_equal(pgs_plan_cache_hits(cache), 5);
  assert_int_equal(pgs_plan_cache_misses(cache), 5);
  touch(cache, c); /* miss 6: [c d a], b evicted */
  touch(cache, b); /* miss 7: [b c d], a evicted */
  touch(cache, a); /* miss 8 */
  assert_int_equal(pgs_plan_cache_misses(cache), 8);
  assert_int_equal(pgs_plan_cache_hits(cache), 5);
  pgs_plan_cache_free(cache);
}

static void test_evicted_plan_lives_while_held(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(1);
  pgs_plan_t *held = get(cache, &db1, "SELECT * FROM users WHERE id IN (1, 2)");
  assert_int_equal(held->refcount, 2);
  touch(cache, "SELECT 2"); /* evicts it: the cache drops its reference */
  assert_int_equal(held->refcount, 1);
  assert_int_equal(held->nkeys, 2); /* ASan: not freed */
  assert_int_equal(held->keys[1].param, 2);
  pgs_plan_t *again = get(cache, &db1, "SELECT * FROM users WHERE id IN (3, 4)");
  assert_ptr_not_equal(again, held); /* analysed afresh */
  pgs_plan_unref(held);
  pgs_plan_unref(again);
  pgs_plan_cache_free(cache);
}

static void test_clear(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(8);
  pgs_plan_t *held = get(cache, &db1, "SELECT * FROM users WHERE id = 1");
  touch(cache, "SELECT 1");
  touch(cache, "SELECT 2, 3");
  assert_int_equal(pgs_plan_cache_count(cache), 3);
  pgs_plan_cache_clear(cache);
  assert_int_equal(pgs_plan_cache_count(cache), 0);
  assert_int_equal(held->refcount, 1);
  assert_int_equal(held->target, PGS_TARGET_KEYS);
  pgs_plan_t *fresh = get(cache, &db1, "SELECT * FROM users WHERE id = 1");
  assert_ptr_not_equal(fresh, held);
  assert_int_equal(pgs_plan_cache_misses(cache), 4);
  pgs_plan_unref(held);
  pgs_plan_unref(fresh);
  pgs_plan_cache_free(cache);
}

static void test_free_with_plans_held(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(4);
  pgs_plan_t *held = get(cache, &db1, "UPDATE users SET a = 1 WHERE id = 2");
  pgs_plan_cache_free(cache);
  assert_int_equal(held->refcount, 1);
  assert_int_equal(held->kind, PGS_STMT_WRITE);
  pgs_plan_unref(held);
  pgs_plan_cache_free(NULL);
}

static void test_unparseable_not_kept(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(4);
  pgs_plan_t *a = get(cache, &db1, "SELEC 1");
  assert_true(a->parse_failed);
  assert_int_equal(a->refcount, 1); /* only ours */
  assert_int_equal(pgs_plan_cache_count(cache), 0);
  pgs_plan_t *b = get(cache, &db1, "SELEC 1");
  assert_ptr_not_equal(a, b);
  assert_int_equal(pgs_plan_cache_misses(cache), 2);
  pgs_plan_unref(a);
  pgs_plan_unref(b);
  pgs_plan_cache_free(cache);
}

static void test_capacity_zero(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(0);
  pgs_plan_t *a = get(cache, &db1, "SELECT 1");
  pgs_plan_t *b = get(cache, &db1, "SELECT 1");
  assert_ptr_not_equal(a, b);
  assert_int_equal(a->refcount, 1);
  assert_int_equal(pgs_plan_cache_count(cache), 0);
  assert_int_equal(pgs_plan_cache_misses(cache), 2);
  pgs_plan_unref(a);
  pgs_plan_unref(b);
  pgs_plan_cache_free(cache);
}

static void test_hash_collision_compares_text(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(8);
  pgs_lexed_t a, b;
  pgs_lex_init(&a);
  pgs_lex_init(&b);
  const char *sa = "SELECT * FROM users WHERE id = 1";
  const char *sb = "SELECT * FROM users";
  assert_int_equal(pgs_lex(sa, strlen(sa), &a), PGS_OK);
  assert_int_equal(pgs_lex(sb, strlen(sb), &b), PGS_OK);
  b.hash = a.hash; /* force a collision */
  pgs_plan_t *pa = pgs_plan_cache_get(cache, &db1, &a);
  pgs_plan_t *pb = pgs_plan_cache_get(cache, &db1, &b);
  assert_ptr_not_equal(pa, pb);
  assert_int_equal(pa->target, PGS_TARGET_KEYS);
  assert_int_equal(pb->target, PGS_TARGET_ALL);
  pgs_plan_t *pa2 = pgs_plan_cache_get(cache, &db1, &a);
  pgs_plan_t *pb2 = pgs_plan_cache_get(cache, &db1, &b);
  assert_ptr_equal(pa, pa2);
  assert_ptr_equal(pb, pb2);
  /* Same length, same hash, other text. */
  const char *sc = "SELECT * FROM users WHERE ix = 1";
  assert_int_equal(pgs_lex(sc, strlen(sc), &b), PGS_OK);
  b.hash = a.hash;
  pgs_plan_t *pc = pgs_plan_cache_get(cache, &db1, &b);
  assert_ptr_not_equal(pc, pa);
  assert_int_equal(pgs_plan_cache_count(cache), 3);
  pgs_plan_unref(pa);
  pgs_plan_unref(pb);
  pgs_plan_unref(pa2);
  pgs_plan_unref(pb2);
  pgs_plan_unref(pc);
  pgs_lex_free(&a);
  pgs_lex_free(&b);
  pgs_plan_cache_free(cache);
}

static void test_many_entries_bounded(void **state) {
  pgs_plan_cache_t *cache = pgs_plan_cache_new(64);
  char sql[64];
  for (int i = 0; i < 1000; i++) {
    snprintf(sql, sizeof(sql), "SELECT * FROM users WHERE c%d = 1", i);
    touch(cache, sql);
    assert_true(pgs_plan_cache_count(cache) <= 64);
  }
  assert_int_equal(pgs_plan_cache_count(cache), 64);
  assert_int_equal(pgs_plan_cache_misses(cache), 1000);
  /* The 64 most recent are all there. */
  for (int i = 936; i < 1000; i++) {
    snprintf(sql, sizeof(sql), "SELECT * FROM users WHERE c%d = 2", i);
    touch(cache, sql);
  }
  assert_int_equal(pgs_plan_cache_hits(cache), 64);
  assert_int_equal(pgs_plan_cache_misses(cache), 1000);
  pgs_plan_cache_free(cache);
}

static void test_hit_returns_plan_for_this_statement_values(void **state) {
  /* The plan names parameter numbers; the values come from each lexing. */
  pgs_plan_cache_t *cache = pgs_plan_cache_new(4);
  pgs_plan_t *p = get(cache, &db1, "SELECT * FROM users WHERE name = 'a' AND id = 42");
  assert_int_equal(p->keys[0].param, 2);
  assert_string_equal(lexed.values + lexed.literals[p->keys[0].param - lexed.nparams - 1].offset,
                      "42");
  pgs_plan_unref(p);
  p = get(cache, &db1, "SELECT * FROM users WHERE name = 'b' AND id = 7");
  assert_int_equal(pgs_plan_cache_hits(cache), 1);
  assert_string_equal(lexed.values + lexed.literals[p->keys[0].param - lexed.nparams - 1].offset,
                      "7");
  pgs_plan_unref(p);
  pgs_plan_cache_free(cache);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_miss_then_hit),
      cmocka_unit_test(test_literals_share_a_plan),
      cmocka_unit_test(test_databases_kept_apart),
      cmocka_unit_test(test_lru_eviction_order),
      cmocka_unit_test(test_evicted_plan_lives_while_held),
      cmocka_unit_test(test_clear),
      cmocka_unit_test(test_free_with_plans_held),
      cmocka_unit_test(test_unparseable_not_kept),
      cmocka_unit_test(test_capacity_zero),
      cmocka_unit_test(test_hash_collision_compares_text),
      cmocka_unit_test(test_many_entries_bounded),
      cmocka_unit_test(test_hit_returns_plan_for_this_statement_values),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
