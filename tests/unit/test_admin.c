/*
 * test_admin.c — the admin console's statements (admin.h): every command
 * and SHOW is read, in any case, with blanks and a semicolon; what is not a
 * command is refused with a message naming it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/admin.h"

static pgs_status_t parse(const char *sql, pgs_admin_cmd_t *cmd, char *err) {
  return pgs_admin_parse(sql, strlen(sql), cmd, err, 256);
}

static void test_show(void **state) {
  pgs_admin_cmd_t cmd;
  char err[256];
  for (int i = 0; i < PGS_SHOW_COUNT; i++) {
    char sql[64];
    snprintf(sql, sizeof(sql), "  ShOw %s ;  ", pgs_admin_show_word((pgs_admin_show_t)i));
    assert_int_equal(parse(sql, &cmd, err), PGS_OK);
    assert_int_equal(cmd.kind, PGS_ADMIN_SHOW);
    assert_int_equal(cmd.show, i);
    assert_true(strlen(pgs_admin_show_help((pgs_admin_show_t)i)) > 10);
  }
  assert_int_equal(parse("show", &cmd, err), PGS_EINVAL);
  assert_non_null(strstr(err, "SHOW HELP"));
  assert_int_equal(parse("show everything", &cmd, err), PGS_EINVAL);
  assert_non_null(strstr(err, "\"everything\""));
  assert_int_equal(parse("show pools extra", &cmd, err), PGS_EINVAL);
  assert_non_null(strstr(err, "extra"));
}

static void test_commands(void **state) {
  pgs_admin_cmd_t cmd;
  char err[256];
  assert_int_equal(parse("reload;", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_RELOAD);
  assert_int_equal(parse("SHUTDOWN", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_SHUTDOWN);
  assert_int_equal(parse("kill 16777218", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_KILL);
  assert_int_equal(cmd.client_id, 16777218);
  assert_int_equal(parse("kill", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("kill x1", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("kill -3", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("pause", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_PAUSE);
  assert_string_equal(cmd.arg, "");
  assert_int_equal(parse("resume app", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_RESUME);
  assert_string_equal(cmd.arg, "app");
  assert_int_equal(parse("ban 127.0.0.1:5432", &cmd, err), PGS_OK);
  assert_string_equal(cmd.arg, "127.0.0.1:5432");
  assert_int_equal(parse("unban", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reload now", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse(" ; ", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_EMPTY);
  assert_int_equal(parse("SET extra_float_digits = 3", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_SET);
  assert_int_equal(parse("drop table users", &cmd, err), PGS_EINVAL);
  assert_non_null(strstr(err, "\"drop\""));
  assert_int_equal(parse("'quoted'", &cmd, err), PGS_EINVAL);
}

static void test_explain_route(void **state) {
  pgs_admin_cmd_t cmd;
  char err[256];
  const char *sql = "EXPLAIN ROUTE select * from users where id = 1";
  assert_int_equal(parse(sql, &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_EXPLAIN_ROUTE);
  assert_string_equal(cmd.arg, "");
  assert_int_equal(cmd.statement_len, strlen("select * from users where id = 1"));
  assert_memory_equal(cmd.statement, "select", 6);
  assert_int_equal(parse("explain route in app insert into t values (1)", &cmd, err), PGS_OK);
  assert_string_equal(cmd.arg, "app");
  assert_memory_equal(cmd.statement, "insert", 6);
  assert_int_equal(parse("explain route", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("explain select 1", &cmd, err), PGS_EINVAL);
}

static void test_reshard(void **state) {
  pgs_admin_cmd_t cmd;
  char err[256];
  assert_int_equal(parse("reshard hold '/etc/pgshard/new.ini'", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_RESHARD_HOLD);
  assert_string_equal(cmd.path, "/etc/pgshard/new.ini");
  assert_int_equal(cmd.timeout_ms, 0);
  assert_int_equal(parse("  RESHARD HOLD 'it''s here.ini'  2500 ; ", &cmd, err), PGS_OK);
  assert_string_equal(cmd.path, "it's here.ini");
  assert_int_equal(cmd.timeout_ms, 2500);
  assert_int_equal(parse("reshard release;", &cmd, err), PGS_OK);
  assert_int_equal(cmd.kind, PGS_ADMIN_RESHARD_RELEASE);
  assert_int_equal(parse("reshard hold new.ini", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reshard hold ''", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reshard hold 'x.ini", &cmd, err), PGS_EINVAL);
  assert_non_null(strstr(err, "unterminated"));
  assert_int_equal(parse("reshard hold 'x.ini' soon", &cmd, err), PGS_EINVAL);
  assert_non_null(strstr(err, "milliseconds"));
  assert_int_equal(parse("reshard hold 'x.ini' 0", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reshard hold 'x.ini' 10 20", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reshard release now", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reshard", &cmd, err), PGS_EINVAL);
  assert_int_equal(parse("reshard start", &cmd, err), PGS_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_show),
      cmocka_unit_test(test_commands),
      cmocka_unit_test(test_explain_route),
      cmocka_unit_test(test_reshard),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
