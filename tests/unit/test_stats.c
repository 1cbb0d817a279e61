/*
 * test_stats.c — the latency histogram (stats.h): every value lands in a
 * bucket whose bounds hold it, quantiles are within the promised 1/16 of
 * the exact ones, and merging per-worker histograms equals one histogram of
 * every value.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/stats.h"

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void test_buckets_hold_their_values(void **state) {
  uint64_t values[] = {0, 1, 15, 16, 17, 31, 32, 1000, 123456, UINT64_C(1) << 40, UINT64_MAX};
  for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
    int b = pgs_hist_bucket(values[i]);
    assert_true(b >= 0 && b < PGS_HIST_BUCKETS);
    if (values[i] != UINT64_MAX) assert_true(values[i] < pgs_hist_bucket_end(b));
    if (b > 0) assert_true(values[i] >= pgs_hist_bucket_end(b - 1));
  }
  for (int b = 1; b < PGS_HIST_BUCKETS; b++)
    assert_true(pgs_hist_bucket_end(b) > pgs_hist_bucket_end(b - 1));
}

static void test_quantiles_within_a_sixteenth(void **state) {
  enum { N = 20000 };
  static uint64_t values[N];
  pgs_hist_t *h = calloc(1, sizeof(*h));
  srand(7);
  for (int i = 0; i < N; i++) {
    /* Latencies spread over five orders of magnitude. */
    values[i] = (uint64_t)(50 + (rand() % 1000) * (1 + rand() % 100));
    pgs_hist_add(h, values[i]);
  }
  qsort(values, N, sizeof(values[0]), cmp_u64);
  const double qs[] = {0.01, 0.5, 0.9, 0.95, 0.99, 1.0};
  for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
    uint64_t exact = values[(size_t)(qs[i] * N + 0.999999) - 1];
    uint64_t got = pgs_hist_quantile(h, qs[i]);
    double err = got > exact ? (double)(got - exact) : (double)(exact - got);
    assert_true(err <= (double)exact / 16.0 + 1);
  }
  assert_int_equal(h->count, N);
  free(h);
  pgs_hist_t empty;
  memset(&empty, 0, sizeof(empty));
  assert_int_equal(pgs_hist_quantile(&empty, 0.5), 0);
}

static void test_merge_is_one_histogram(void **state) {
  pgs_db_stats_t *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b)),
                 *all = calloc(1, sizeof(*all));
  for (uint64_t v = 1; v < 5000; v += 7) {
    pgs_hist_add(v % 2 ? &a->latency : &b->latency, v);
    pgs_hist_add(&all->latency, v);
  }
  a->requests = 3;
  b->requests = 4;
  b->twopc_commits = 2;
  pgs_db_stats_t *merged = calloc(1, sizeof(*merged));
  pgs_db_stats_merge(merged, a);
  pgs_db_stats_merge(merged, b);
  assert_int_equal(merged->requests, 7);
  assert_int_equal(merged->twopc_commits, 2);
  assert_memory_equal(&merged->latency, &all->latency, sizeof(pgs_hist_t));
  free(a);
  free(b);
  free(all);
  free(merged);
}

static void test_query_table(void **state) {
  pgs_query_table_t *t = calloc(1, sizeof(*t));
  /* 2000 statements, each costlier than the last: the table keeps 500, and
   * always finds what it keeps. */
  for (uint64_t h = 1; h <= 2000; h++) {
    char text[32];
    snprintf(text, sizeof(text), "select %llu", (unsigned long long)h);
    pgs_query_stats_t *q = pgs_query_stats_get(t, "app", h * 0x9e3779b97f4a7c15ULL, text);
    assert_int_equal(q->calls, 0);
    q->calls = 1;
    q->total_us = h;
    assert_ptr_equal(pgs_query_stats_get(t, "app", h * 0x9e3779b97f4a7c15ULL, "x"), q);
    assert_string_equal(q->text, text);
  }
  assert_int_equal(t->n, PGS_QUERY_STATS_MAX);
  int kept = 0;
  for (int i = 0; i < t->n; i++) kept += t->entries[i].total_us > 1000;
  assert_true(kept >= PGS_QUERY_STATS_MAX - 1); /* the costliest ones */
  /* Another database's statement of the same text is another entry. */
  pgs_query_stats_t *other = pgs_query_stats_get(t, "other", 2000 * 0x9e3779b97f4a7c15ULL, "y");
  assert_int_equal(other->calls, 0);
  assert_string_equal(other->db, "other");
  free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buckets_hold_their_values),
      cmocka_unit_test(test_quantiles_within_a_sixteenth),
      cmocka_unit_test(test_merge_is_one_histogram),
      cmocka_unit_test(test_query_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
