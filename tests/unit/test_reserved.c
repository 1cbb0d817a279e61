/*
 * test_reserved.c — SQL naming pgshard's own server-side statements
 * (reserved.h) is found, in every statement position that names one, and
 * nothing else is.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/reserved.h"

static bool check(const char *sql, char *name, bool *prepares) {
  return pgs_reserved_statement(sql, strlen(sql), name, PGS_MAX_NAME, prepares);
}

static void test_found(void **state) {
  static const struct {
    const char *sql, *name;
    bool prepares;
  } cases[] = {
      {"EXECUTE pgs_0123456789abcdef(1)", "pgs_0123456789abcdef", false},
      {"execute PGS_ABC", "pgs_abc", false},
      {"DEALLOCATE pgs_x", "pgs_x", false},
      {"deallocate prepare pgs_x", "pgs_x", false},
      {"PREPARE pgs_mine AS SELECT 1", "pgs_mine", true},
      {"SELECT 1; EXECUTE pgs_y", "pgs_y", false},
      {"EXPLAIN ANALYZE EXECUTE pgs_z(2)", "pgs_z", false},
      {"CREATE TABLE t AS EXECUTE pgs_w", "pgs_w", false},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char name[PGS_MAX_NAME] = "";
    bool prepares = !cases[i].prepares;
    if (!check(cases[i].sql, name, &prepares)) fail_msg("not found in %s", cases[i].sql);
    assert_string_equal(name, cases[i].name);
    assert_int_equal(prepares, cases[i].prepares);
  }
}

static void test_not_found(void **state) {
  static const char *const sqls[] = {
      "SELECT 1",
      "SELECT pgs_x FROM t", /* a column, not a statement */
      "EXECUTE \"PGS_x\"",   /* quoted: keeps its case, never pgshard's */
      "EXECUTE mine(1)",
      "DEALLOCATE ALL",
      "SELECT 'EXECUTE pgs_x'", /* in a string */
      "EXECUTE pgs_x(",         /* does not parse: the server refuses it */
      "INSERT INTO pgs_table VALUES (1)",
  };
  for (size_t i = 0; i < sizeof(sqls) / sizeof(sqls[0]); i++) {
    char name[PGS_MAX_NAME];
    bool prepares;
    if (check(sqls[i], name, &prepares)) fail_msg("found %s in %s", name, sqls[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_found),
      cmocka_unit_test(test_not_found),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
