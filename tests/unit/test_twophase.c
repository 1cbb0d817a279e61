/*
 * test_twophase.c — router/twophase_log.c: the gid format round-trips and
 * its parser refuses every near miss (so recovery never interpolates a name
 * it did not make into COMMIT PREPARED); log records parse strictly; and a
 * log's text replays to exactly the commits still owed: "C" without "D",
 * a commit final over a later abort, torn last lines and malformed lines
 * skipped, a log without a header refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/twophase.h"

#define OWNER UINT64_C(0x0123456789abcdef)
#define INSTANCE UINT64_C(0xfedcba9876543210)

static void test_gid_format_and_parse(void **state) {
  char gid[PGS_GID_BUF];
  size_t n = pgs_gid_format(gid, OWNER, INSTANCE, 42);
  assert_string_equal(gid, "pgshard_0123456789abcdef_fedcba9876543210_42");
  assert_int_equal(n, strlen(gid));
  pgs_gid_t g;
  assert_true(pgs_gid_parse(gid, &g));
  assert_true(g.owner == OWNER);
  assert_true(g.instance == INSTANCE);
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
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    if (pgs_gid_parse(bad[i], NULL)) fail_msg("accepted \"%s\"", bad[i]);
  }
}

static void test_header(void **state) {
  char buf[128];
  size_t n = pgs_twophase_log_header(buf, sizeof(buf), OWNER);
  assert_string_equal(buf, "pgshard-2pc-log 1 owner=0123456789abcdef\n");
  assert_int_equal(n, strlen(buf));

  pgs_twophase_replay_t r;
  assert_int_equal(pgs_twophase_replay(buf, n, &r), PGS_OK);
  assert_true(r.has_header);
  assert_true(r.owner == OWNER);
  assert_int_equal(r.commits.count, 0);
  assert_int_equal(r.records, 0);
  assert_false(r.torn_tail);
  pgs_twophase_replay_free(&r);
}

static void test_parse_record(void **state) {
  pgs_twophase_record_t rec;
  const char *gid = "pgshard_0123456789abcdef_fedcba9876543210_7";
  char line[128];
  for (const char *k = "CAD"; *k; k++) {
    snprintf(line, sizeof(line), "%c %s", *k, gid);
    assert_int_equal(pgs_twophase_log_parse_record(line, strlen(line), &rec), PGS_OK);
    assert_int_equal(rec.kind, *k);
    assert_string_equal(rec.gid, gid);
  }
  snprintf(line, sizeof(line), "C %s\r", gid);
  assert_int_equal(pgs_twophase_log_parse_record(line, strlen(line), &rec), PGS_OK);

  static const char *const bad[] = {
      "",
      "C",
      "C ",
      "X pgshard_0123456789abcdef_fedcba9876543210_7",
      "c pgshard_0123456789abcdef_fedcba9876543210_7",
      "C  pgshard_0123456789abcdef_fedcba9876543210_7",
      "Cpgshard_0123456789abcdef_fedcba9876543210_7",
      "C pgshard_0123456789abcdef_fedcba9876543210_7 extra",
      "C other_gid",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    if (pgs_twophase_log_parse_record(bad[i], strlen(bad[i]), &rec) == PGS_OK)
      fail_msg("accepted \"%s\"", bad[i]);
  }
  /* A NUL inside the line is not a record either. */
  char with_nul[] = "C pgshard_0123456789abcdef_fedcba9876543210_7\0x";
  assert_int_equal(pgs_twophase_log_parse_record(with_nul, sizeof(with_nul) - 1, &rec), PGS_EINVAL);
}

#define H "pgshard-2pc-log 1 owner=0123456789abcdef\n"
#define G(n) "pgshard_0123456789abcdef_00000000000000aa_" #n

static pgs_twophase_replay_t replay_ok(const char *text) {
  pgs_twophase_replay_t r;
  assert_int_equal(pgs_twophase_replay(text, strlen(text), &r), PGS_OK);
  return r;
}

static void test_replay_commits_owed(void **state) {
  pgs_twophase_replay_t r = replay_ok(H
                                      "C " G(1) "\n"   /* committed, never done: owed */
                                      "C " G(2) "\n"
                                      "D " G(2) "\n"   /* done */
                                      "A " G(3) "\n"   /* aborted: nothing owed */
                                      "D " G(3) "\n"
                                      "A " G(4) "\n"   /* aborted, not done: presumed abort */
                                      "C " G(5) "\n"
                                      "A " G(5) "\n"   /* a commit is final */
                                      "A " G(6) "\n"
                                      "C " G(6) "\n"   /* an abort before a commit: void */
                                      "D " G(7) "\n"   /* done without a decision: harmless */
                                      "\n");
  assert_true(r.has_header);
  assert_int_equal(r.records, 11);
  assert_int_equal(r.malformed, 0);
  assert_int_equal(r.done, 2);
  assert_int_equal(r.commits.count, 3);
  assert_true(pgs_strmap_contains(&r.commits, G(1)));
  assert_true(pgs_strmap_contains(&r.commits, G(5)));
  assert_true(pgs_strmap_contains(&r.commits, G(6)));
  assert_false(pgs_strmap_contains(&r.commits, G(2)));
  assert_false(pgs_strmap_contains(&r.commits, G(4)));
  pgs_twophase_replay_free(&r);
}

static void test_replay_repeated_commit_after_compaction(void **state) {
  /* Compaction rewrites owed commits; a later "D" closes them once. */
  pgs_twophase_replay_t r = replay_ok(H "C " G(
      1) "\n"
         "C " G(1) "\n"
                   "D " G(1) "\n");
  assert_int_equal(r.commits.count, 0);
  assert_int_equal(r.done, 1);
  pgs_twophase_replay_free(&r);
}

static void test_replay_torn_tail(void **state) {
  /* A crash cut the last write short: that record never counted. */
  pgs_twophase_replay_t r = replay_ok(H "C " G(
      1) "\n"
         "C " G(2));
  assert_true(r.torn_tail);
  assert_int_equal(r.commits.count, 1);
  assert_true(pgs_strmap_contains(&r.commits, G(1)));
  assert_false(pgs_strmap_contains(&r.commits, G(2)));
  pgs_twophase_replay_free(&r);

  /* A torn line cut back imperfectly fuses with the next record: skipped. */
  r = replay_ok(H "C pgshard_0123456789abcdef_00C " G(
      2) "\n"
         "C " G(3) "\n");
  assert_false(r.torn_tail);
  assert_int_equal(r.malformed, 1);
  assert_int_equal(r.first_bad_line, 2);
  assert_int_equal(r.commits.count, 1);
  assert_true(pgs_strmap_contains(&r.commits, G(3)));
  pgs_twophase_replay_free(&r);
}

static void test_replay_malformed_lines_skipped(void **state) {
  pgs_twophase_replay_t r = replay_ok(H "junk\n" "C " G(1) "\n" "C bad\n" "D\n");
  assert_int_equal(r.malformed, 3);
  assert_int_equal(r.first_bad_line, 2);
  assert_int_equal(r.records, 1);
  assert_int_equal(r.commits.count, 1);
  pgs_twophase_replay_free(&r);
}

static void test_replay_header(void **state) {
  pgs_twophase_replay_t r;
  /* Empty: a fresh log, no owner yet. */
  assert_int_equal(pgs_twophase_replay("", 0, &r), PGS_OK);
  assert_false(r.has_header);
  pgs_twophase_replay_free(&r);
  /* CRLF line ends are read. */
  const char *crlf = "pgshard-2pc-log 1 owner=0123456789abcdef\r\nC " G(1) "\r\n";
  assert_int_equal(pgs_twophase_replay(crlf, strlen(crlf), &r), PGS_OK);
  assert_true(r.owner == OWNER);
  assert_int_equal(r.commits.count, 1);
  pgs_twophase_replay_free(&r);

  static const char *const bad[] = {
      "C " G(1) "\n",                               /* records, no header */
      "pgshard-2pc-log 1 owner=0123456789abcdef",   /* header without newline */
      "pgshard-2pc-log 2 owner=0123456789abcdef\n", /* another version */
      "pgshard-2pc-log 1 owner=0123456789ABCDEF\n",
      "pgshard-2pc-log 1 owner=0123456789abcde\n",
      "pgshard-2pc-log 1 owner=0123456789abcdef0\n",
      "some other file\n",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    if (pgs_twophase_replay(bad[i], strlen(bad[i]), &r) == PGS_OK) {
      pgs_twophase_replay_free(&r);
      fail_msg("accepted \"%s\"", bad[i]);
    }
  }
}

static void test_replay_many(void **state) {
  /* Thousands of gids, every other one done. */
  size_t cap = 5000 * 2 * 64 + 64, len = 0;
  char *text = malloc(cap);
  len += (size_t)snprintf(text, cap, H);
  for (int i = 0; i < 5000; i++) {
    char gid[PGS_GID_BUF];
    pgs_gid_format(gid, OWNER, INSTANCE, (uint64_t)i);
    len += (size_t)snprintf(text + len, cap - len, "C %s\n", gid);
    if (i % 2) len += (size_t)snprintf(text + len, cap - len, "D %s\n", gid);
  }
  pgs_twophase_replay_t r;
  assert_int_equal(pgs_twophase_replay(text, len, &r), PGS_OK);
  assert_int_equal(r.commits.count, 2500);
  assert_int_equal(r.done, 2500);
  char gid[PGS_GID_BUF];
  pgs_gid_format(gid, OWNER, INSTANCE, 4998);
  assert_true(pgs_strmap_contains(&r.commits, gid));
  pgs_gid_format(gid, OWNER, INSTANCE, 4999);
  assert_false(pgs_strmap_contains(&r.commits, gid));
  pgs_twophase_replay_free(&r);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gid_format_and_parse),
      cmocka_unit_test(test_gid_parse_refuses_near_misses),
      cmocka_unit_test(test_header),
      cmocka_unit_test(test_parse_record),
      cmocka_unit_test(test_replay_commits_owed),
      cmocka_unit_test(test_replay_repeated_commit_after_compaction),
      cmocka_unit_test(test_replay_torn_tail),
      cmocka_unit_test(test_replay_malformed_lines_skipped),
      cmocka_unit_test(test_replay_header),
      cmocka_unit_test(test_replay_many),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
