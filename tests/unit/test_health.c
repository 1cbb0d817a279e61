/*
 * test_health.c — router/health.c: pg_lsn parsing, the primary LSN history
 * (ring wrap, "first sample after"), honest time lag (caught up, behind, an
 * idle primary, empty history, replay older than the history), readable
 * hysteresis, down/up with backoff, and writer election. Every time is
 * given explicitly, so each case replays an exact sequence of checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/health.h"

#define INTERVAL 100
#define MAX_LAG_MS 1000
#define MAX_LAG_BYTES 16384

static const pgs_lag_bounds_t bounds = {
    .max_lag_ms = MAX_LAG_MS, .max_lag_bytes = MAX_LAG_BYTES, .interval_ms = INTERVAL};

/* A shard of N nodes as the monitor starts it: all up, node 0 the writer,
 * replicas in recovery and not readable. */
typedef struct fixture {
  pgs_shard_health_t sh;
  pgs_node_state_t nodes[4];
} fixture_t;

static fixture_t *shard_new(int n) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->sh.nodes = f->nodes;
  f->sh.nnodes = n;
  f->sh.writer = 0;
  f->sh.history_node = 0;
  for (int i = 0; i < n; i++) {
    f->nodes[i].up = true;
    f->nodes[i].in_recovery = i > 0;
    f->nodes[i].lag_ms = -1;
  }
  return f;
}

static pgs_check_result_t ok_result(bool in_recovery, uint64_t lsn, uint64_t now) {
  pgs_check_result_t r = {.ok = true,
                          .in_recovery = in_recovery,
                          .lsn = lsn,
                          .receive_lsn = lsn,
                          .sent_ms = now,
                          .done_ms = now + 1};
  return r;
}

static pgs_check_result_t failed_result(uint64_t now) {
  pgs_check_result_t r = {.ok = false, .sent_ms = now, .done_ms = now};
  return r;
}

/* One round at NOW: the primary (node 0) at PRIMARY_LSN, node 1 at REPLAY. */
static void round2(fixture_t *f, uint64_t now, uint64_t primary_lsn, uint64_t replay) {
  pgs_check_result_t p = ok_result(false, primary_lsn, now);
  pgs_check_result_t r = ok_result(true, replay, now);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  pgs_health_apply(&f->sh, 1, &r, &bounds);
}

/* ---- pg_lsn text ---- */

static void test_lsn_parse_valid(void **state) {
  uint64_t v = 0;
  assert_int_equal(pgs_lsn_parse("16/B374D848", &v), PGS_OK);
  assert_true(v == ((uint64_t)0x16 << 32 | 0xB374D848u));
  assert_int_equal(pgs_lsn_parse("0/0", &v), PGS_OK);
  assert_true(v == 0);
  assert_int_equal(pgs_lsn_parse("0/3000148", &v), PGS_OK);
  assert_true(v == 0x3000148);
  assert_int_equal(pgs_lsn_parse("FFFFFFFF/FFFFFFFF", &v), PGS_OK);
  assert_true(v == UINT64_MAX);
  assert_int_equal(pgs_lsn_parse("a/bc", &v), PGS_OK); /* lower case too */
  assert_true(v == ((uint64_t)0xa << 32 | 0xbc));
}

static void test_lsn_parse_malformed(void **state) {
  static const char *const bad[] = {
      "",     "/",    "0/",   "/0",          "16B374D848",  "16/B374D848/1", "16/B374D84G", "x/1",
      "1/ 2", " 1/2", "1/2 ", "123456789/0", "0/123456789", "-1/0",          "+1/0",        "0x1/0",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    uint64_t v = 42;
    assert_int_equal(pgs_lsn_parse(bad[i], &v), PGS_EINVAL);
    assert_true(v == 42); /* untouched */
  }
  uint64_t v;
  assert_int_equal(pgs_lsn_parse(NULL, &v), PGS_EINVAL);
}

/* ---- the history ring ---- */

static void test_history_empty(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  assert_null(pgs_lsn_history_newest(&h));
  assert_null(pgs_lsn_history_after(&h, 0));
  assert_int_equal(pgs_lag_ms(&h, 0, 1000), -1);
}

static void test_history_wrap(void **state) {
  pgs_lsn_history_t *h = calloc(1, sizeof(*h));
  int total = PGS_LSN_HISTORY + 300;
  for (int i = 0; i < total; i++)
    pgs_lsn_history_add(h, 1000 + (uint64_t)i * 10, 5000 + (uint64_t)i);
  assert_int_equal(h->count, PGS_LSN_HISTORY);
  const pgs_lsn_sample_t *newest = pgs_lsn_history_newest(h);
  assert_true(newest->ms == 1000 + (uint64_t)(total - 1) * 10);
  assert_true(newest->lsn == 5000 + (uint64_t)(total - 1));
  /* The 300 oldest samples were overwritten: the first sample after time 0
   * is now sample 300. */
  const pgs_lsn_sample_t *first = pgs_lsn_history_after(h, 0);
  assert_true(first->ms == 1000 + 300 * 10);
  assert_true(first->lsn == 5300);
  /* A replica behind every sample: lag is the history's span and more. */
  uint64_t now = newest->ms + 5;
  assert_int_equal(pgs_lag_ms(h, 0, now), (int64_t)(now - first->ms));
  free(h);
}

static void test_history_after(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  pgs_lsn_history_add(&h, 100, 10);
  pgs_lsn_history_add(&h, 200, 20);
  pgs_lsn_history_add(&h, 300, 20);
  assert_true(pgs_lsn_history_after(&h, 99)->ms == 100);
  /* Strictly after: a sample sent in the same millisecond as the commit
   * may have read the LSN before it. */
  assert_true(pgs_lsn_history_after(&h, 100)->ms == 200);
  assert_true(pgs_lsn_history_after(&h, 250)->ms == 300);
  assert_true(pgs_lsn_history_after(&h, 250)->lsn == 20);
  assert_null(pgs_lsn_history_after(&h, 300));
  assert_null(pgs_lsn_history_after(&h, 1000));
}

static void test_history_ignores_older_sample(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  pgs_lsn_history_add(&h, 200, 20);
  pgs_lsn_history_add(&h, 150, 30); /* sent before the newest: dropped */
  assert_int_equal(h.count, 1);
  assert_true(pgs_lsn_history_newest(&h)->lsn == 20);
  pgs_lsn_history_add(&h, 200, 25); /* same time: kept */
  assert_int_equal(h.count, 2);
}

/* ---- time lag ---- */

static void test_lag_caught_up(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  pgs_lsn_history_add(&h, 100, 1000);
  pgs_lsn_history_add(&h, 200, 2000);
  assert_int_equal(pgs_lag_ms(&h, 2000, 250), 0);
  assert_int_equal(pgs_lag_ms(&h, 2500, 250), 0); /* past the newest sample */
}

static void test_lag_behind(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  pgs_lsn_history_add(&h, 100, 1000);
  pgs_lsn_history_add(&h, 200, 2000);
  pgs_lsn_history_add(&h, 300, 3000);
  /* At 2000: the primary first had more at 300. */
  assert_int_equal(pgs_lag_ms(&h, 2000, 350), 50);
  /* At 1500: the primary had 2000 at 200. */
  assert_int_equal(pgs_lag_ms(&h, 1500, 350), 150);
  /* At 1000 exactly: 2000 at 200 is the first it lacks. */
  assert_int_equal(pgs_lag_ms(&h, 1000, 350), 150);
  /* A clock that has not moved past the sample gives 0, never negative. */
  assert_int_equal(pgs_lag_ms(&h, 2000, 300), 0);
}

static void test_lag_idle_primary(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  /* One commit long ago, then an idle primary sampled every 100 ms. */
  pgs_lsn_history_add(&h, 1000, 7000);
  for (uint64_t t = 1100; t <= 200000; t += 100) pgs_lsn_history_add(&h, t, 7000);
  /* Replay reached 7000: lag 0, however long ago the last commit was. */
  assert_int_equal(pgs_lag_ms(&h, 7000, 200050), 0);
  /* A replica still before that commit lags since the first sample of it,
   * or since the oldest sample when that one rolled out of the ring. */
  int64_t lag = pgs_lag_ms(&h, 6999, 200050);
  const pgs_lsn_sample_t *oldest = pgs_lsn_history_after(&h, 0);
  assert_int_equal(lag, (int64_t)(200050 - oldest->ms));
  assert_true(lag >= (int64_t)(PGS_LSN_HISTORY - 1) * 100);
}

static void test_lag_replay_older_than_history(void **state) {
  pgs_lsn_history_t h;
  memset(&h, 0, sizeof(h));
  pgs_lsn_history_add(&h, 500, 5000);
  pgs_lsn_history_add(&h, 600, 6000);
  /* Every sample is past replay: at least the span, now - oldest. */
  assert_int_equal(pgs_lag_ms(&h, 100, 700), 200);
}

/* ---- applying checks: lag and readable ---- */

static void test_apply_primary_feeds_history(void **state) {
  fixture_t *f = shard_new(2);
  pgs_check_result_t p = ok_result(false, 1234, 500);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  const pgs_lsn_sample_t *s = pgs_lsn_history_newest(&f->sh.history);
  assert_non_null(s);
  assert_true(s->ms == 500); /* the time the check was sent */
  assert_true(s->lsn == 1234);
  assert_true(f->nodes[0].lsn == 1234);
  assert_true(f->nodes[0].checked_ms == 501);
  assert_false(f->nodes[0].readable); /* the writer never is */
  /* A replica's check adds nothing to the history. */
  pgs_check_result_t r = ok_result(true, 1234, 510);
  pgs_health_apply(&f->sh, 1, &r, &bounds);
  assert_int_equal(f->sh.history.count, 1);
  free(f);
}

static void test_apply_replica_lag_values(void **state) {
  fixture_t *f = shard_new(2);
  round2(f, 100, 1000, 1000);
  assert_true(f->nodes[1].lag_bytes == 0);
  assert_int_equal(f->nodes[1].lag_ms, 0);
  round2(f, 200, 5000, 1000);
  assert_true(f->nodes[1].lag_bytes == 4000);
  assert_int_equal(f->nodes[1].lag_ms, 1); /* done_ms 201 - sample at 200 */
  round2(f, 300, 9000, 1000);
  assert_true(f->nodes[1].lag_bytes == 8000);
  assert_int_equal(f->nodes[1].lag_ms, 101);
  free(f);
}

/* An idle primary reports its insert position after a page header (0/3000028
 * at a segment's start, here right after initdb): no record ends there, and
 * a replica that replayed everything (0/3000000) has no lag. */
static void test_page_header_is_no_lag(void **state) {
  assert_true(pgs_lsn_record_end(0x3000028) == 0x3000000); /* segment start: 40 */
  assert_true(pgs_lsn_record_end(0x3002018) == 0x3002000); /* page start: 24 */
  assert_true(pgs_lsn_record_end(0x3002028) == 0x3002028); /* 40 bytes into a page */
  assert_true(pgs_lsn_record_end(0x3000148) == 0x3000148);
  fixture_t *f = shard_new(2);
  for (uint64_t t = 100; t <= 2000; t += 100) round2(f, t, 0x3000028, 0x3000000);
  assert_true(f->nodes[1].lag_bytes == 0);
  assert_int_equal(f->nodes[1].lag_ms, 0);
  assert_true(f->nodes[1].readable);
  free(f);
}

static void test_replica_idle_primary_stays_readable(void **state) {
  fixture_t *f = shard_new(2);
  for (uint64_t t = 100; t <= 1000; t += 100) round2(f, t, 4242, 4242);
  assert_true(f->nodes[1].readable);
  /* Minutes of an idle primary: still lag 0, still readable. */
  for (uint64_t t = 1100; t <= 300000; t += 100) round2(f, t, 4242, 4242);
  assert_int_equal(f->nodes[1].lag_ms, 0);
  assert_true(f->nodes[1].readable);
  free(f);
}

static void test_replica_joins_after_rejoin_checks(void **state) {
  fixture_t *f = shard_new(2);
  for (int k = 1; k < PGS_REJOIN_CHECKS; k++) {
    round2(f, (uint64_t)k * 100, 1000, 1000);
    assert_false(f->nodes[1].readable);
    assert_int_equal(f->nodes[1].good_checks, k);
  }
  round2(f, (uint64_t)PGS_REJOIN_CHECKS * 100, 1000, 1000);
  assert_true(f->nodes[1].readable);
  free(f);
}

static void make_readable(fixture_t *f, uint64_t *now, uint64_t lsn) {
  for (int k = 0; k < PGS_REJOIN_CHECKS; k++) {
    *now += INTERVAL;
    round2(f, *now, lsn, lsn);
  }
  assert_true(f->nodes[1].readable);
}

static void test_replica_leaves_over_ms_bound(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  /* The primary moves a little each round (under the byte bound), the
   * replica is stuck: readable until the time lag passes the bound, and
   * not a check longer. */
  uint64_t stuck_since = now + INTERVAL;
  uint64_t lsn = 1000;
  for (;;) {
    now += INTERVAL;
    lsn += 10;
    pgs_check_result_t p = ok_result(false, lsn, now);
    pgs_check_result_t r = ok_result(true, 1000, now);
    pgs_health_apply(&f->sh, 0, &p, &bounds);
    bool changed = pgs_health_apply(&f->sh, 1, &r, &bounds);
    int64_t lag = f->nodes[1].lag_ms;
    assert_int_equal(lag, (int64_t)(now + 1 - stuck_since));
    if (lag > MAX_LAG_MS) {
      assert_false(f->nodes[1].readable);
      assert_true(changed);
      assert_int_equal(f->nodes[1].good_checks, 0);
      break;
    }
    assert_true(f->nodes[1].readable);
    assert_false(changed);
  }
  assert_true(f->nodes[1].lag_bytes < MAX_LAG_BYTES);
  free(f);
}

static void test_replica_leaves_over_bytes_bound(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  now += INTERVAL;
  round2(f, now, 1000 + MAX_LAG_BYTES, 1000); /* at the bound: stays */
  assert_true(f->nodes[1].readable);
  now += 1;
  round2(f, now, 1000 + MAX_LAG_BYTES + 1, 1000 + 0); /* one byte over: leaves */
  assert_false(f->nodes[1].readable);
  assert_true(f->nodes[1].lag_ms < MAX_LAG_MS);
  free(f);
}

static void test_replica_leaves_when_down(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  pgs_check_result_t fail = failed_result(now + 50);
  assert_true(pgs_health_apply(&f->sh, 1, &fail, &bounds));
  assert_false(f->nodes[1].readable); /* at the first failure: lag unknown */
  assert_true(f->nodes[1].up);
  for (int k = 1; k < PGS_DOWN_FAILURES; k++) pgs_health_apply(&f->sh, 1, &fail, &bounds);
  assert_false(f->nodes[1].up);
  assert_false(f->nodes[1].readable);
  free(f);
}

static void test_replica_leaves_when_not_in_recovery(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  pgs_check_result_t p = ok_result(false, 1000, now + 100);
  pgs_check_result_t r = ok_result(false, 1000, now + 100); /* promoted */
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  assert_true(pgs_health_apply(&f->sh, 1, &r, &bounds));
  assert_false(f->nodes[1].readable);
  assert_false(f->nodes[1].in_recovery);
  free(f);
}

static void test_rejoin_needs_consecutive_good_checks(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  now += INTERVAL;
  round2(f, now, 1000 + MAX_LAG_BYTES * 2, 1000); /* leaves */
  assert_false(f->nodes[1].readable);
  uint64_t lsn = 1000 + MAX_LAG_BYTES * 2;
  /* Good, good, bad: the count starts over. */
  for (int k = 0; k < PGS_REJOIN_CHECKS - 1; k++) {
    now += INTERVAL;
    round2(f, now, lsn, lsn);
    assert_false(f->nodes[1].readable);
  }
  now += INTERVAL;
  round2(f, now, lsn + MAX_LAG_BYTES * 2, lsn);
  assert_int_equal(f->nodes[1].good_checks, 0);
  lsn += MAX_LAG_BYTES * 2;
  for (int k = 0; k < PGS_REJOIN_CHECKS - 1; k++) {
    now += INTERVAL;
    round2(f, now, lsn, lsn);
    assert_false(f->nodes[1].readable);
  }
  now += INTERVAL;
  round2(f, now, lsn, lsn);
  assert_true(f->nodes[1].readable);
  free(f);
}

static void test_failed_check_resets_good_checks(void **state) {
  fixture_t *f = shard_new(2);
  round2(f, 100, 1000, 1000);
  round2(f, 200, 1000, 1000);
  assert_int_equal(f->nodes[1].good_checks, 2);
  pgs_check_result_t fail = failed_result(300);
  pgs_health_apply(&f->sh, 1, &fail, &bounds);
  assert_int_equal(f->nodes[1].good_checks, 0);
  round2(f, 400, 1000, 1000);
  assert_false(f->nodes[1].readable);
  free(f);
}

static void test_unknown_lag_with_writer_up_is_out_of_bounds(void **state) {
  fixture_t *f = shard_new(2);
  /* No primary sample yet (its check failed): the replica cannot be
   * measured and must not take reads. */
  for (int k = 0; k < PGS_REJOIN_CHECKS + 1; k++) {
    pgs_check_result_t r = ok_result(true, 1000, 100 + (uint64_t)k * 100);
    pgs_health_apply(&f->sh, 1, &r, &bounds);
    assert_int_equal(f->nodes[1].lag_ms, -1);
    assert_false(f->nodes[1].readable);
  }
  free(f);
}

static void test_unknown_lag_without_writer_is_readable(void **state) {
  fixture_t *f = shard_new(2);
  /* The primary was never reachable: once it is down, the replica serves
   * reads (it holds the newest data the shard has). */
  pgs_check_result_t fail = failed_result(100);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) pgs_health_apply(&f->sh, 0, &fail, &bounds);
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, -1);
  for (int k = 0; k < PGS_REJOIN_CHECKS; k++) {
    pgs_check_result_t r = ok_result(true, 1000, 200 + (uint64_t)k * 100);
    pgs_health_apply(&f->sh, 1, &r, &bounds);
  }
  assert_true(f->nodes[1].readable);
  free(f);
}

/* A primary that crashes right after a sample counted WAL it never sent:
 * replicas at the newest LSN any of them has keep serving reads, and a
 * missed check of the writer changes nothing until it is marked down. */
static void test_primary_crash_with_unsent_wal(void **state) {
  fixture_t *f = shard_new(3);
  uint64_t now = 0;
  for (int k = 0; k < PGS_REJOIN_CHECKS; k++) {
    now += INTERVAL;
    pgs_check_result_t p = ok_result(false, 5000, now);
    pgs_check_result_t a = ok_result(true, 5000, now);
    pgs_health_apply(&f->sh, 0, &p, &bounds);
    pgs_health_apply(&f->sh, 1, &a, &bounds);
    pgs_health_apply(&f->sh, 2, &a, &bounds);
  }
  assert_true(f->nodes[1].readable && f->nodes[2].readable);
  now += INTERVAL;
  pgs_check_result_t p = ok_result(false, 7000, now); /* never reaches a replica */
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    now += INTERVAL * 10; /* long past max_replica_lag_ms */
    pgs_check_result_t fail = failed_result(now);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
    pgs_check_result_t a = ok_result(true, 5000, now);
    pgs_health_apply(&f->sh, 1, &a, &bounds);
    pgs_health_apply(&f->sh, 2, &a, &bounds);
    assert_true(f->nodes[1].readable); /* the writer is failing: no verdict yet */
  }
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, -1);
  for (int k = 0; k < 5; k++) {
    now += INTERVAL * 10;
    pgs_check_result_t a = ok_result(true, 5000, now);
    pgs_health_apply(&f->sh, 1, &a, &bounds);
    pgs_health_apply(&f->sh, 2, &a, &bounds);
  }
  assert_true(f->nodes[1].readable && f->nodes[2].readable);
  assert_int_equal(f->nodes[1].lag_ms, 0);
  free(f);
}

static void test_primary_down_replicas_measured_against_last_wal(void **state) {
  fixture_t *f = shard_new(3);
  uint64_t now = 0;
  for (int k = 0; k < PGS_REJOIN_CHECKS; k++) {
    now += INTERVAL;
    pgs_check_result_t p = ok_result(false, 5000, now);
    pgs_check_result_t a = ok_result(true, 5000, now);
    pgs_check_result_t b = ok_result(true, 5000, now);
    pgs_health_apply(&f->sh, 0, &p, &bounds);
    pgs_health_apply(&f->sh, 1, &a, &bounds);
    pgs_health_apply(&f->sh, 2, &b, &bounds);
  }
  /* The primary writes, node 1 replays it, node 2 does not; then the
   * primary dies. */
  now += INTERVAL;
  pgs_check_result_t p = ok_result(false, 9000, now);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(now + 10 + (uint64_t)k);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, -1);
  for (int k = 0; k < 15; k++) {
    now += INTERVAL;
    pgs_check_result_t a = ok_result(true, 9000, now);
    pgs_check_result_t b = ok_result(true, 5000, now);
    pgs_health_apply(&f->sh, 1, &a, &bounds);
    pgs_health_apply(&f->sh, 2, &b, &bounds);
  }
  assert_true(f->nodes[1].readable); /* reads continue */
  assert_int_equal(f->nodes[1].lag_ms, 0);
  assert_false(f->nodes[2].readable); /* stale: honestly lagging */
  assert_true(f->nodes[2].lag_ms > MAX_LAG_MS);
  free(f);
}

/* ---- down, backoff, up ---- */

static void test_down_after_failures(void **state) {
  fixture_t *f = shard_new(2);
  pgs_check_result_t fail = failed_result(1000);
  for (int k = 1; k < PGS_DOWN_FAILURES; k++) {
    assert_false(pgs_health_apply(&f->sh, 1, &fail, &bounds) && !f->nodes[1].up);
    assert_true(f->nodes[1].up);
    assert_int_equal(f->nodes[1].failures, k);
  }
  assert_true(pgs_health_apply(&f->sh, 1, &fail, &bounds));
  assert_false(f->nodes[1].up);
  assert_int_equal(f->nodes[1].down_epoch, 1);
  assert_int_equal(f->nodes[1].retry_backoff_ms, INTERVAL);
  assert_true(f->nodes[1].retry_at_ms == 1000 + INTERVAL);
  free(f);
}

/* A check slow to answer on a live connection (a busy machine) takes the
 * node out of the read set but marks it down only once it has waited
 * PGS_SLOW_CHECK_DOWN_MS. */
static void test_slow_checks_do_not_mark_down(void **state) {
  fixture_t *f = shard_new(2);
  pgs_check_result_t ok = ok_result(true, 5000, 1000);
  pgs_health_apply(&f->sh, 1, &ok, &bounds);
  for (int k = 0; k < 10 * PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t slow = {.ok = false,
                               .slow = true,
                               .sent_ms = 1000 + 100 * (uint64_t)k,
                               .done_ms = 1050 + 100 * (uint64_t)k};
    pgs_health_apply(&f->sh, 1, &slow, &bounds);
    assert_true(f->nodes[1].up);
    assert_false(f->nodes[1].readable);
    assert_int_equal(f->nodes[1].failures, 0);
  }
  /* One check outstanding for longer than that counts, and so on. */
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t stuck = {.ok = false,
                                .slow = true,
                                .sent_ms = 2000,
                                .done_ms = 2000 + PGS_SLOW_CHECK_DOWN_MS + 100 * (uint64_t)k};
    pgs_health_apply(&f->sh, 1, &stuck, &bounds);
  }
  assert_false(f->nodes[1].up);
  free(f);
}

/* A late check (a busy machine) keeps a readable replica in the read set
 * while it would be within the bounds even had it replayed nothing since
 * its last answer; past that, or when the primary has moved on by more
 * than a bound, it leaves at once. */
static void test_late_check_keeps_replica_within_bounds(void **state) {
  fixture_t *f = shard_new(2);
  for (uint64_t now = 1000; now <= 1200; now += INTERVAL) round2(f, now, 5000, 5000);
  assert_true(f->nodes[1].readable);
  assert_true(f->nodes[1].checked_ms == 1201);
  /* The primary is idle; the replica's check, sent at 1300, is not
   * answered at the round's end, nor at the next ones. */
  pgs_check_result_t p = ok_result(false, 5000, 1300);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  pgs_check_result_t late = {.ok = false, .slow = true, .sent_ms = 1300, .done_ms = 1350};
  assert_false(pgs_health_apply(&f->sh, 1, &late, &bounds));
  assert_true(f->nodes[1].readable);
  assert_int_equal(f->nodes[1].failures, 0);
  late.done_ms = 1201 + MAX_LAG_MS; /* its lag then plus the time since: the bound */
  pgs_health_apply(&f->sh, 1, &late, &bounds);
  assert_true(f->nodes[1].readable);
  late.done_ms++;
  assert_true(pgs_health_apply(&f->sh, 1, &late, &bounds));
  assert_false(f->nodes[1].readable);
  assert_true(f->nodes[1].up);
  assert_int_equal(f->nodes[1].good_checks, 0);
  /* It answers again: back after PGS_REJOIN_CHECKS good checks. */
  for (uint64_t now = 2300; now <= 2500; now += INTERVAL) round2(f, now, 5000, 5000);
  assert_true(f->nodes[1].readable);
  /* Late while the primary wrote more than max_replica_lag_bytes past the
   * replica's last replay LSN: it may be that far behind, it leaves. */
  p = ok_result(false, 5000 + MAX_LAG_BYTES + 1, 2600);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  late = (pgs_check_result_t){.ok = false, .slow = true, .sent_ms = 2600, .done_ms = 2650};
  assert_true(pgs_health_apply(&f->sh, 1, &late, &bounds));
  assert_false(f->nodes[1].readable);
  /* A replica proving itself starts over after a late check. */
  round2(f, 2700, 5000 + MAX_LAG_BYTES + 1, 5000 + MAX_LAG_BYTES + 1);
  round2(f, 2800, 5000 + MAX_LAG_BYTES + 1, 5000 + MAX_LAG_BYTES + 1);
  assert_int_equal(f->nodes[1].good_checks, 2);
  late = (pgs_check_result_t){.ok = false, .slow = true, .sent_ms = 2900, .done_ms = 2950};
  pgs_health_apply(&f->sh, 1, &late, &bounds);
  assert_int_equal(f->nodes[1].good_checks, 0);
  assert_false(f->nodes[1].readable);
  free(f);
}

/* node_down_failures sets how many failed checks mark a node down. */
static void test_down_after_configured_failures(void **state) {
  fixture_t *f = shard_new(2);
  pgs_lag_bounds_t b = bounds;
  b.down_failures = 5;
  pgs_check_result_t fail = failed_result(1000);
  for (int k = 1; k < 5; k++) {
    pgs_health_apply(&f->sh, 1, &fail, &b);
    assert_true(f->nodes[1].up);
  }
  pgs_health_apply(&f->sh, 1, &fail, &b);
  assert_false(f->nodes[1].up);
  free(f);
  f = shard_new(2);
  b.down_failures = 1;
  pgs_health_apply(&f->sh, 1, &fail, &b);
  assert_false(f->nodes[1].up);
  free(f);
}

static void test_down_epoch_bumped_once(void **state) {
  fixture_t *f = shard_new(1);
  pgs_check_result_t fail = failed_result(1000);
  for (int k = 0; k < PGS_DOWN_FAILURES + 10; k++) pgs_health_apply(&f->sh, 0, &fail, &bounds);
  assert_int_equal(f->nodes[0].down_epoch, 1);
  /* Up again, down again: bumped once more. */
  pgs_check_result_t ok = ok_result(false, 1, 90000);
  assert_true(pgs_health_apply(&f->sh, 0, &ok, &bounds));
  for (int k = 0; k < PGS_DOWN_FAILURES + 3; k++) pgs_health_apply(&f->sh, 0, &fail, &bounds);
  assert_int_equal(f->nodes[0].down_epoch, 2);
  free(f);
}

static void test_backoff_doubles_to_cap(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 1000;
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(now);
    pgs_health_apply(&f->sh, 1, &fail, &bounds);
  }
  int expect = INTERVAL;
  assert_int_equal(f->nodes[1].retry_backoff_ms, expect);
  for (int k = 0; k < 12; k++) {
    now = f->nodes[1].retry_at_ms; /* the reconnect attempt, failing */
    pgs_check_result_t fail = failed_result(now);
    assert_false(pgs_health_apply(&f->sh, 1, &fail, &bounds));
    expect = expect * 2 < PGS_RETRY_MAX_MS ? expect * 2 : PGS_RETRY_MAX_MS;
    assert_int_equal(f->nodes[1].retry_backoff_ms, expect);
    assert_true(f->nodes[1].retry_at_ms == now + (uint64_t)expect);
  }
  assert_int_equal(f->nodes[1].retry_backoff_ms, PGS_RETRY_MAX_MS);
  assert_int_equal(f->nodes[1].down_epoch, 1);
  free(f);
}

static void test_success_brings_node_up(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(now + 10);
    pgs_health_apply(&f->sh, 1, &fail, &bounds);
  }
  assert_false(f->nodes[1].up);
  now += 1000;
  pgs_check_result_t p = ok_result(false, 1000, now);
  pgs_check_result_t r = ok_result(true, 1000, now);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  assert_true(pgs_health_apply(&f->sh, 1, &r, &bounds));
  assert_true(f->nodes[1].up);
  assert_int_equal(f->nodes[1].failures, 0);
  assert_int_equal(f->nodes[1].retry_backoff_ms, 0);
  assert_true(f->nodes[1].retry_at_ms == 0);
  assert_int_equal(f->nodes[1].down_epoch, 1); /* stays: pools compare it */
  /* Up, but it proves itself before taking reads again: the check that
   * brought it up is the first of PGS_REJOIN_CHECKS good ones. */
  assert_false(f->nodes[1].readable);
  assert_int_equal(f->nodes[1].good_checks, 1);
  for (int k = 2; k < PGS_REJOIN_CHECKS; k++) {
    now += INTERVAL;
    round2(f, now, 1000, 1000);
    assert_false(f->nodes[1].readable);
  }
  now += INTERVAL;
  round2(f, now, 1000, 1000);
  assert_true(f->nodes[1].readable);
  free(f);
}

static void test_single_failure_then_success_stays_up(void **state) {
  fixture_t *f = shard_new(1);
  pgs_check_result_t fail = failed_result(100);
  pgs_health_apply(&f->sh, 0, &fail, &bounds);
  pgs_health_apply(&f->sh, 0, &fail, &bounds);
  pgs_check_result_t ok = ok_result(false, 10, 300);
  assert_false(pgs_health_apply(&f->sh, 0, &ok, &bounds));
  assert_int_equal(f->nodes[0].failures, 0);
  pgs_health_apply(&f->sh, 0, &fail, &bounds);
  pgs_health_apply(&f->sh, 0, &fail, &bounds);
  assert_true(f->nodes[0].up); /* failures must be in a row */
  assert_int_equal(f->nodes[0].down_epoch, 0);
  free(f);
}

/* ---- electing the writer ---- */

static void test_elect_configured_primary_while_fine(void **state) {
  fixture_t *f = shard_new(3);
  round2(f, 100, 1000, 1000);
  char why[128];
  assert_false(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 0);
  /* A replica out of recovery while the primary is fine: not a writer, not
   * readable. */
  pgs_check_result_t r = ok_result(false, 2000, 200);
  pgs_health_apply(&f->sh, 2, &r, &bounds);
  assert_false(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 0);
  assert_false(f->nodes[2].readable);
  free(f);
}

static void test_elect_promoted_when_primary_down(void **state) {
  fixture_t *f = shard_new(2);
  uint64_t now = 0;
  make_readable(f, &now, 1000);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(now + 10);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  pgs_check_result_t r = ok_result(false, 1100, now + 20); /* pg_promote() */
  pgs_health_apply(&f->sh, 1, &r, &bounds);
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 1);
  assert_non_null(strstr(why, "promoted"));
  assert_non_null(strstr(why, "down"));
  assert_false(f->nodes[1].readable);
  /* The new writer starts a new history, fed by its own checks. */
  assert_int_equal(f->sh.history.count, 0);
  assert_int_equal(f->sh.history_node, 1);
  pgs_check_result_t r2 = ok_result(false, 1200, now + 120);
  pgs_health_apply(&f->sh, 1, &r2, &bounds);
  assert_true(pgs_lsn_history_newest(&f->sh.history)->lsn == 1200);
  free(f);
}

static void test_elect_promoted_when_primary_in_recovery(void **state) {
  fixture_t *f = shard_new(2);
  pgs_check_result_t p = ok_result(true, 1000, 100); /* demoted */
  pgs_check_result_t r = ok_result(false, 1000, 100);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  pgs_health_apply(&f->sh, 1, &r, &bounds);
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 1);
  assert_non_null(strstr(why, "in recovery"));
  free(f);
}

static void test_elect_highest_lsn(void **state) {
  fixture_t *f = shard_new(4);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(100);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  pgs_check_result_t a = ok_result(false, 5000, 100);
  pgs_check_result_t b = ok_result(false, 7000, 100);
  pgs_check_result_t c = ok_result(false, 6000, 100);
  pgs_health_apply(&f->sh, 1, &a, &bounds);
  pgs_health_apply(&f->sh, 2, &b, &bounds);
  pgs_health_apply(&f->sh, 3, &c, &bounds);
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 2);
  /* The others are out of recovery too, but never writers nor readable. */
  for (int i = 0; i < 4; i++) assert_false(f->nodes[i].readable);
  free(f);
}

static void test_elect_none_then_primary_back(void **state) {
  fixture_t *f = shard_new(2);
  round2(f, 100, 1000, 1000);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(200);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, -1);
  assert_non_null(strstr(why, "no node"));
  assert_int_equal(f->sh.history.count, 1); /* kept: replicas still measured */
  assert_false(pgs_health_elect(&f->sh, why, sizeof(why)));
  pgs_check_result_t p = ok_result(false, 1000, 5000);
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 0);
  assert_int_equal(f->sh.history.count, 1); /* the same node: history kept */
  free(f);
}

static void test_elect_never_two_writers(void **state) {
  fixture_t *f = shard_new(3);
  char why[128];
  /* Primary down, node 1 promoted. */
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(100);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  pgs_check_result_t r = ok_result(false, 2000, 150);
  pgs_health_apply(&f->sh, 1, &r, &bounds);
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  assert_int_equal(f->sh.writer, 1);
  /* The old primary comes back out of recovery (split brain): node 1 keeps
   * writing, the old primary neither writes nor takes reads. Node 2 also
   * out of recovery with a higher LSN changes nothing. */
  for (int k = 0; k < 5; k++) {
    uint64_t t = 1000 + (uint64_t)k * 100;
    pgs_check_result_t w = ok_result(false, 2100 + (uint64_t)k, t);
    pgs_check_result_t p = ok_result(false, 9000, t);
    pgs_check_result_t c = ok_result(false, 9999, t);
    pgs_health_apply(&f->sh, 1, &w, &bounds);
    pgs_health_apply(&f->sh, 0, &p, &bounds);
    pgs_health_apply(&f->sh, 2, &c, &bounds);
    assert_false(pgs_health_elect(&f->sh, why, sizeof(why)));
    assert_int_equal(f->sh.writer, 1);
    int writers = 0;
    for (int i = 0; i < 3; i++) {
      if (i == f->sh.writer) writers++;
      assert_false(f->nodes[i].readable);
    }
    assert_int_equal(writers, 1);
  }
  free(f);
}

static void test_elect_why_null_cap(void **state) {
  fixture_t *f = shard_new(1);
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(100);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  char why[1] = {'x'};
  assert_true(pgs_health_elect(&f->sh, why, 0)); /* cap 0: WHY untouched */
  assert_int_equal(why[0], 'x');
  assert_int_equal(f->sh.writer, -1);
  free(f);
}

static void test_elect_promoted_replica_lag_for_others(void **state) {
  fixture_t *f = shard_new(3);
  /* Node 0 down; node 1 promoted; node 2 follows node 1 and is measured
   * against node 1's samples only. */
  uint64_t now = 100;
  pgs_check_result_t p0 = ok_result(false, 50000, now);
  pgs_health_apply(&f->sh, 0, &p0, &bounds); /* an old primary sample */
  for (int k = 0; k < PGS_DOWN_FAILURES; k++) {
    pgs_check_result_t fail = failed_result(now);
    pgs_health_apply(&f->sh, 0, &fail, &bounds);
  }
  pgs_check_result_t r1 = ok_result(false, 40000, now);
  pgs_health_apply(&f->sh, 1, &r1, &bounds);
  char why[128];
  assert_true(pgs_health_elect(&f->sh, why, sizeof(why)));
  for (int k = 0; k < PGS_REJOIN_CHECKS; k++) {
    now += INTERVAL;
    pgs_check_result_t w = ok_result(false, 40000, now);
    pgs_check_result_t r2 = ok_result(true, 40000, now);
    pgs_health_apply(&f->sh, 1, &w, &bounds);
    pgs_health_apply(&f->sh, 2, &r2, &bounds);
  }
  assert_int_equal(f->nodes[2].lag_ms, 0);
  assert_true(f->nodes[2].lag_bytes == 0);
  assert_true(f->nodes[2].readable);
  free(f);
}

/* ---- check latency ---- */

static void test_check_bucket_bounds_are_inclusive(void **state) {
  (void)state;
  assert_int_equal(pgs_check_bucket(0), 0);
  assert_int_equal(pgs_check_bucket(500), 0); /* le="0.0005" holds 0.5 ms itself */
  assert_int_equal(pgs_check_bucket(501), 1);
  assert_int_equal(pgs_check_bucket(1000), 1);
  assert_int_equal(pgs_check_bucket(1001), 2);
  assert_int_equal(pgs_check_bucket(5000000), PGS_CHECK_BUCKETS - 1);
  assert_int_equal(pgs_check_bucket(5000001), PGS_CHECK_BUCKETS); /* past 5 s */
  assert_int_equal(pgs_check_bucket(UINT64_MAX), PGS_CHECK_BUCKETS);
  /* The bounds increase: cumulative counts can be made by adding. */
  for (int i = 1; i < PGS_CHECK_BUCKETS; i++)
    assert_true(pgs_check_bucket_us[i] > pgs_check_bucket_us[i - 1]);
  assert_true(pgs_check_bucket_us[0] == 500 &&
              pgs_check_bucket_us[PGS_CHECK_BUCKETS - 1] == 5000000);
}

static void test_check_timing_counts_sum_last(void **state) {
  (void)state;
  pgs_check_timing_t t;
  memset(&t, 0, sizeof(t));
  pgs_check_timing_add(&t, 300);
  pgs_check_timing_add(&t, 2000);
  pgs_check_timing_add(&t, 7000000);
  assert_true(t.count == 3);
  assert_true(t.sum_us == 7002300);
  assert_true(t.last_us == 7000000);
  assert_true(t.buckets[0] == 1 && t.buckets[2] == 1 && t.buckets[PGS_CHECK_BUCKETS] == 1);
  uint64_t total = 0;
  for (int i = 0; i <= PGS_CHECK_BUCKETS; i++) total += t.buckets[i];
  assert_true(total == t.count);
}

/* A check that answered is timed; one that failed (or was slow) is not,
 * and leaves the last latency as it was. */
static void test_apply_times_answered_checks_only(void **state) {
  (void)state;
  fixture_t *f = shard_new(2);
  pgs_check_result_t p = ok_result(false, 1000, 100);
  p.duration_us = 1500;
  pgs_health_apply(&f->sh, 0, &p, &bounds);
  assert_true(f->nodes[0].check.count == 1 && f->nodes[0].check.last_us == 1500);
  assert_true(f->nodes[0].check.buckets[2] == 1);
  pgs_check_result_t bad = failed_result(200);
  bad.duration_us = 99; /* ignored: a failed check has no latency */
  pgs_health_apply(&f->sh, 0, &bad, &bounds);
  bad.slow = true;
  pgs_health_apply(&f->sh, 0, &bad, &bounds);
  assert_true(f->nodes[0].check.count == 1 && f->nodes[0].check.last_us == 1500);
  pgs_check_result_t r = ok_result(true, 1000, 300);
  r.duration_us = 400;
  pgs_health_apply(&f->sh, 1, &r, &bounds);
  assert_true(f->nodes[1].check.count == 1 && f->nodes[1].check.sum_us == 400);
  assert_true(f->nodes[0].check.count == 1); /* per node */
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lsn_parse_valid),
      cmocka_unit_test(test_lsn_parse_malformed),
      cmocka_unit_test(test_history_empty),
      cmocka_unit_test(test_history_wrap),
      cmocka_unit_test(test_history_after),
      cmocka_unit_test(test_history_ignores_older_sample),
      cmocka_unit_test(test_lag_caught_up),
      cmocka_unit_test(test_lag_behind),
      cmocka_unit_test(test_lag_idle_primary),
      cmocka_unit_test(test_lag_replay_older_than_history),
      cmocka_unit_test(test_apply_primary_feeds_history),
      cmocka_unit_test(test_apply_replica_lag_values),
      cmocka_unit_test(test_replica_idle_primary_stays_readable),
      cmocka_unit_test(test_replica_joins_after_rejoin_checks),
      cmocka_unit_test(test_replica_leaves_over_ms_bound),
      cmocka_unit_test(test_replica_leaves_over_bytes_bound),
      cmocka_unit_test(test_replica_leaves_when_down),
      cmocka_unit_test(test_replica_leaves_when_not_in_recovery),
      cmocka_unit_test(test_rejoin_needs_consecutive_good_checks),
      cmocka_unit_test(test_failed_check_resets_good_checks),
      cmocka_unit_test(test_unknown_lag_with_writer_up_is_out_of_bounds),
      cmocka_unit_test(test_unknown_lag_without_writer_is_readable),
      cmocka_unit_test(test_primary_down_replicas_measured_against_last_wal),
      cmocka_unit_test(test_primary_crash_with_unsent_wal),
      cmocka_unit_test(test_down_after_failures),
      cmocka_unit_test(test_down_after_configured_failures),
      cmocka_unit_test(test_slow_checks_do_not_mark_down),
      cmocka_unit_test(test_late_check_keeps_replica_within_bounds),
      cmocka_unit_test(test_down_epoch_bumped_once),
      cmocka_unit_test(test_backoff_doubles_to_cap),
      cmocka_unit_test(test_success_brings_node_up),
      cmocka_unit_test(test_single_failure_then_success_stays_up),
      cmocka_unit_test(test_elect_configured_primary_while_fine),
      cmocka_unit_test(test_elect_promoted_when_primary_down),
      cmocka_unit_test(test_elect_promoted_when_primary_in_recovery),
      cmocka_unit_test(test_elect_highest_lsn),
      cmocka_unit_test(test_elect_none_then_primary_back),
      cmocka_unit_test(test_elect_never_two_writers),
      cmocka_unit_test(test_elect_why_null_cap),
      cmocka_unit_test(test_page_header_is_no_lag),
      cmocka_unit_test(test_elect_promoted_replica_lag_for_others),
      cmocka_unit_test(test_check_bucket_bounds_are_inclusive),
      cmocka_unit_test(test_check_timing_counts_sum_last),
      cmocka_unit_test(test_apply_times_answered_checks_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
