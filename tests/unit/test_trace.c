/*
 * test_trace.c — a client's W3C traceparent found in its SQL comments
 * (trace.h): sqlcommenter's trailing comment (URL-encoded or not), a
 * leading one, a -- comment; nothing in string literals; invalid values
 * refused as W3C Trace Context says.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/trace.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static bool find(const char *sql, char *out) { return pgs_traceparent_find(sql, strlen(sql), out); }

static void test_sqlcommenter_forms(void **state) {
  char out[PGS_TRACEPARENT_BUF];
  assert_true(find("SELECT 1 /*traceparent='" TP "'*/", out));
  assert_string_equal(out, TP);
  assert_true(
      find("SELECT 1 /*controller='index',traceparent='00%2D4bf92f3577b34da6a3ce929d0e0e4736"
           "%2D00f067aa0ba902b7%2D01'*/",
           out));
  assert_string_equal(out, TP);
  assert_true(find("/* traceparent=" TP " */ UPDATE t SET x = 1", out));
  assert_true(find("SELECT 1 -- traceparent='" TP "'\n", out));
  assert_true(find("SELECT 1 /* app=x, traceparent = '" TP "' */;", out));
}

static void test_not_in_data_or_other_keys(void **state) {
  char out[PGS_TRACEPARENT_BUF];
  assert_false(find("SELECT '/* traceparent=''" TP "'' */'", out));
  assert_false(find("SELECT \"/* traceparent=" TP " */\" FROM t", out));
  assert_false(find("SELECT 1 /* mytraceparent='" TP "' */", out));
  assert_false(find("SELECT 1", out));
  assert_false(find("SELECT 1 /* unterminated traceparent='00-4b", out));
}

static void test_invalid_values(void **state) {
  const char *bad[] = {
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* upper case */
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version ff */
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero trace id */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* zero parent id */
      "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-011", /* misplaced dash */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", /* not hex */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_false(pgs_traceparent_valid(bad[i], strlen(bad[i])));
    char sql[200], out[PGS_TRACEPARENT_BUF];
    snprintf(sql, sizeof(sql), "SELECT 1 /*traceparent='%s'*/", bad[i]);
    assert_false(find(sql, out));
  }
  /* A value one character too long is not a traceparent either. */
  char out[PGS_TRACEPARENT_BUF];
  assert_false(find("SELECT 1 /*traceparent='" TP "0'*/", out));
  assert_true(pgs_traceparent_valid(TP, strlen(TP)));
}

/* A long statement: its head and tail are read, the middle is data. */
static void test_long_statement(void **state) {
  size_t n = 5 * PGS_TRACE_SCAN_MAX;
  char *sql = calloc(1, n + 200);
  memset(sql, ' ', n);
  memcpy(sql, "SELECT ", 7);
  strcpy(sql + n, "/*traceparent='" TP "'*/");
  char out[PGS_TRACEPARENT_BUF];
  assert_true(pgs_traceparent_find(sql, strlen(sql), out));
  memset(sql, ' ', n + 100);
  memcpy(sql + n / 2, "/*traceparent='" TP "'*/", 15 + 55 + 3);
  sql[n + 100] = '\0';
  assert_false(pgs_traceparent_find(sql, strlen(sql), out));
  free(sql);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sqlcommenter_forms),
      cmocka_unit_test(test_not_in_data_or_other_keys),
      cmocka_unit_test(test_invalid_values),
      cmocka_unit_test(test_long_statement),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
