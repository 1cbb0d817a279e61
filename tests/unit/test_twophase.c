/*
 * test_twophase.c — router/twophase_gid.c: the gid format round-trips and
 * its parser refuses every near miss (so recovery never interpolates a name
 * it did not make into COMMIT PREPARED or the decision table's statements);
 * the decision shard's hash is xxh64 of its name (golden values: gids in
 * flight must keep naming the same shard across versions), and maps back to
 * the shard of a database, or to none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/twophase.h"

#define INSTANCE UINT64_C(0x0123456789abcdef)
#define SHARD UINT64_C(0xfedcba9876543210)

static void test_gid_format_and_parse(void **state) {
  char gid[PGS_GID_BUF];
  size_t n = pgs_gid_format(gid, INSTANCE, SHARD, 42);
  assert_string_equal(gid, "pgshard_0123456789abcdef_fedcba9876543210_42");
  assert_int_equal(n, strlen(gid));
  pgs_gid_t g;
  assert_true(pgs_gid_parse(gid, &g));
  assert_true(g.instance == INSTANCE);
  assert_true(g.shard_hash == SHARD);
  assert_true(g.seq == 42);

  /* The longest gid fits the buffer and PostgreSQL's limit. */
  n = pgs_gid_format(gid, UINT64_MAX, UINT64_MAX, UINT64_MAX);
  assert_int_equal(n, 62);
  assert_true(n < PGS_GID_BUF && n < PGS_GID_MAX);
  assert_true(pgs_gid_parse(gid, &g));
  assert_true(g.seq == UINT64_MAX);

  /* Small values are zero-padded, and zero is a valid sequence. */
  pgs_gid_format(gid, 1, 2, 0);
  assert_string_equal(gid, "pgshard_0000000000000001_0000000000000002_0");
  assert_true(pgs_gid_parse(gid, NULL));
}

static void test_gid_parse_refuses_near_misses(void **state) {
  static const char *const bad[] = {
      "",
      "pgshard_",
      "pgshard_0123456789abcdef_fedcba9876543210_",   /* no seq */
      "pgshard_0123456789abcdef_fedcba9876543210_01", /* leading zero */
      "pgshard_0123456789abcdef_fedcba9876543210_1x", /* trailing junk */
      "pgshard_0123456789abcdef_fedcba9876543210_1_", /* trailing _ */
      "pgshard_0123456789ABCDEF_fedcba9876543210_1",  /* upper case */
      "pgshard_0123456789abcde_fedcba9876543210_1",   /* 15 digits */
      "pgshard_0123456789abcdef0_fedcba9876543210_1", /* 17 digits */
      "pgshard_0123456789abcdef-fedcba9876543210_1",  /* wrong separator */
      "PGSHARD_0123456789abcdef_fedcba9876543210_1",  /* prefix case */
      "xpgshard_0123456789abcdef_fedcba9876543210_1",
      "pgshard_0123456789abcdef_fedcba9876543210_18446744073709551616", /* > UINT64_MAX */
      "pgshard_0123456789abcdef_fedcba9876543210_1'; DROP TABLE x; --",
      "pgshard_0123456789abcdef_fedcba987654321g_1",
      "pgshard_0123456789abcdef_fedcba9876543210_ 1",
      "pgshard_0123456789abcdef_1", /* one hex part */
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    if (pgs_gid_parse(bad[i], NULL)) fail_msg("accepted \"%s\"", bad[i]);
  }
}

static void test_shard_hash_golden(void **state) {
  /* xxh64, seed 0: the reference values of the empty string and "abc", and
   * the lab's shard names (the integration tests spell gids with them). */
  assert_true(pgs_gid_shard_hash("") == UINT64_C(0xef46db3751d8e999));
  assert_true(pgs_gid_shard_hash("abc") == UINT64_C(0x44bc2cf5ad770999));
  assert_true(pgs_gid_shard_hash("s0") == UINT64_C(0x27f1bf38a14ee03e));
  assert_true(pgs_gid_shard_hash("s1") == UINT64_C(0x6a41890cafc6b461));
}

static void test_decision_shard(void **state) {
  pgs_shard_t shards[3] = {{.name = "s0"}, {.name = "s1"}, {.name = "eu-west"}};
  pgs_database_t db = {.name = "app", .shards = shards, .nshards = 3};
  char gid[PGS_GID_BUF];
  pgs_gid_t g;
  for (int s = 0; s < 3; s++) {
    pgs_gid_format(gid, INSTANCE, pgs_gid_shard_hash(shards[s].name), 7);
    assert_true(pgs_gid_parse(gid, &g));
    assert_int_equal(pgs_gid_decision_shard(&db, &g), s);
  }
  /* A gid of the old decision log (pgshard_<log owner>_<instance>_<seq>)
   * names no shard. */
  assert_true(pgs_gid_parse("pgshard_00000000000000a1_0123456789abcdef_3", &g));
  assert_int_equal(pgs_gid_decision_shard(&db, &g), -1);
  /* Nor does a shard removed from the map. */
  pgs_gid_format(gid, INSTANCE, pgs_gid_shard_hash("s9"), 1);
  assert_true(pgs_gid_parse(gid, &g));
  assert_int_equal(pgs_gid_decision_shard(&db, &g), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gid_format_and_parse),
      cmocka_unit_test(test_gid_parse_refuses_near_misses),
      cmocka_unit_test(test_shard_hash_golden),
      cmocka_unit_test(test_decision_shard),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
