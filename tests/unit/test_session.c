/*
 * test_session.c — router/session.c: the cheap pgs_session_maybe() filter
 * (both ways: it may let through statements with no effect, never miss one
 * with an effect), and pgs_session_analyze() on every statement kind that
 * changes session state under transaction pooling, with the exact setting
 * names and replay texts it keeps. Run under ASan, the frees are checked too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/session.h"

static bool maybe(const char *sql) { return pgs_session_maybe(sql, strlen(sql)); }

/* ---- pgs_session_maybe ---- */

static void test_maybe_true(void **state) {
  static const char *const yes[] = {
      "SET x = 1",
      "set x = 1",
      "SeT x = 1",
      "  \n\t SET x = 1",
      "-- a comment\nSET x = 1",
      "-- one\n  -- two\n\tSET x = 1",
      "/* a comment */ SET x = 1",
      "/* outer /* nested */ still a comment */SET x = 1",
      "/**/set/**/x=1",
      "RESET x",
      "reset all",
      "DISCARD ALL",
      "Deallocate all",
      "LISTEN channel",
      "PREPARE p AS SELECT 1",
      "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
      "CREATE TEMP TABLE t (a int)",
      "create temporary table t as select 1",
      "LOAD 'auto_explain'",
      /* A statement with an effect after the first. */
      "SELECT 1; SET x = 1",
      "SELECT 1;SELECT 2",
      "SELECT 1; -- comment\n SELECT 2",
      "INSERT INTO t VALUES (1);\n\nLISTEN c",
      /* Advisory locks, anywhere and in any case. */
      "SELECT pg_advisory_lock(1)",
      "select PG_ADVISORY_LOCK(1)",
      "SELECT Pg_Advisory_Lock_Shared(1)",
      "UPDATE t SET locked = pg_try_advisory_lock(id) WHERE id = 1",
      "SELECT pg_advisory_xact_lock(1)", /* let through; analyze decides */
      /* SELECT ... INTO TEMP creates a table. */
      "SELECT 1 INTO TEMP t",
      "select * into temporary t from s",
      "WITH x AS (SELECT 1) SELECT * INTO TEMP t FROM x",
      "(SELECT 1 INTO TEMP t)",
      /* set_config() and DO blocks change settings pgshard cannot see. */
      "SELECT set_config('search_path', 'x', false)",
      "select SET_CONFIG('a', 'b', false)",
      "SELECT pg_catalog.Set_Config('a', 'b', true)", /* let through; analyze decides */
      "UPDATE t SET a = set_config('x', a, false)",
      "DO $$ BEGIN PERFORM 1; END $$",
      "do 'begin null; end'",
      "  /* why */ DO LANGUAGE plpgsql $$ BEGIN END $$",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(yes); i++)
    if (!maybe(yes[i])) fail_msg("pgs_session_maybe(\"%s\") is false", yes[i]);
}

static void test_maybe_false(void **state) {
  static const char *const no[] = {
      "",
      "   \n",
      "-- only a comment",
      "/* SET x = 1 */ SELECT 1",
      "-- SET x = 1\nSELECT 1",
      "SELECT 1",
      "select * from settings",
      "SETTINGS", /* not the keyword SET */
      "RESETS",
      "UPDATE t SET a = 1",
      "INSERT INTO t VALUES (1)",
      "INSERT INTO temp_log VALUES (1)",
      "SELECT 1 INTO t",
      /* A trailing ';' alone, or followed only by blanks and comments. */
      "SELECT 1;",
      "SELECT 1;   \n\t",
      "SELECT 1; -- done",
      "SELECT 1; /* done */ ",
      "BEGIN",
      "COMMIT",
      "SELECT current_setting('x')",
      "SELECT setconfig FROM t",
      "DOMAIN",
      "DONE",
      "SELECT 1 AS do",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(no); i++)
    if (maybe(no[i])) fail_msg("pgs_session_maybe(\"%s\") is true", no[i]);

  /* Only LEN bytes are looked at. */
  static const char two[] = "SELECT 1; SET x = 1";
  assert_false(pgs_session_maybe(two, 9));
  assert_true(pgs_session_maybe(two, sizeof(two) - 1));
  assert_false(pgs_session_maybe("SET", 0));
}

/* ---- pgs_session_analyze ---- */

/* Analyze SQL; it must parse, give FLAGS and NOPS operations. The caller
 * checks the operations and frees FX. */
static void analyze(const char *sql, int flags, int nops, pgs_session_effects_t *fx) {
  pgs_session_analyze(sql, fx);
  if (fx->parse_failed) fail_msg("\"%s\" did not parse", sql);
  if (fx->flags != flags || fx->nops != nops)
    fail_msg("\"%s\": flags %d and %d op(s), expected flags %d and %d op(s)", sql, fx->flags,
             fx->nops, flags, nops);
}

/* SQL has only FLAGS, no operations. */
static void expect_flags(const char *sql, int flags) {
  pgs_session_effects_t fx;
  analyze(sql, flags, 0, &fx);
  pgs_session_effects_free(&fx);
}

/* SQL is one SET of NAME, kept for replay as REPLAY. */
static void expect_set(const char *sql, const char *name, const char *replay) {
  pgs_session_effects_t fx;
  analyze(sql, 0, 1, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_SET);
  assert_string_equal(fx.ops[0].name, name);
  assert_non_null(fx.ops[0].sql);
  assert_string_equal(fx.ops[0].sql, replay);
  pgs_session_effects_free(&fx);
}

static void test_set(void **state) {
  expect_set("SET x = 1", "x", "SET x = 1");
  expect_set("SET x TO 'a'", "x", "SET x TO 'a'");
  expect_set("SET SESSION x=1", "x", "SET SESSION x=1");
  expect_set("set Search_Path TO app, public", "search_path", "set Search_Path TO app, public");
  expect_set("SET application_name TO DEFAULT", "application_name",
             "SET application_name TO DEFAULT");
  expect_set("SET myext.Setting = 'v'", "myext.setting", "SET myext.Setting = 'v'");
  expect_set("SET TIME ZONE 'UTC'", "timezone", "SET TIME ZONE 'UTC'");
  /* Blanks, comments and the ';' around the statement are not kept. */
  expect_set("  /* why */ SET x = 1 ;  \n", "x", "SET x = 1");
  expect_set("-- why\nSET x = 1;", "x", "SET x = 1");
}

static void test_set_line_comment(void **state) {
  /* Replay joins statements with ';': a trailing -- comment must not
   * swallow what comes after it, so its line is ended. */
  expect_set("SET x = 1 -- because", "x", "SET x = 1 -- because\n");
  expect_set("SET x = 1 -- because\n;", "x", "SET x = 1 -- because\n");
  expect_set("SET x = '--'", "x", "SET x = '--'\n"); /* harmless */
  expect_set("SET search_path = a -- why\n, b", "search_path", "SET search_path = a -- why\n, b");
}

static void test_set_without_lasting_effect(void **state) {
  expect_flags("SET LOCAL x = 1", 0);
  expect_flags("set local search_path to s", 0);
  expect_flags("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0);
  expect_flags("SET TRANSACTION READ ONLY", 0);
}

/* Turning standard_conforming_strings off, even for a transaction, is
 * flagged; on, RESET and DEFAULT are not. */
static void test_standard_strings_off(void **state) {
  static const struct {
    const char *sql;
    bool off;
  } cases[] = {
      {"SET standard_conforming_strings = off", true},
      {"SET LOCAL standard_conforming_strings TO false", true},
      {"set session STANDARD_CONFORMING_STRINGS = 0", true},
      {"SET standard_conforming_strings = 'no'", true},
      {"SET standard_conforming_strings FROM CURRENT", true},
      {"SELECT 1; SET LOCAL standard_conforming_strings = off", true},
      {"SET standard_conforming_strings = on", false},
      {"SET LOCAL standard_conforming_strings = 'true'", false},
      {"SET standard_conforming_strings TO DEFAULT", false},
      {"RESET standard_conforming_strings", false},
      {"SET search_path = off", false},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    pgs_session_effects_t fx;
    pgs_session_analyze(cases[i].sql, &fx);
    if (((fx.flags & PGS_SESSION_STRINGS_OFF) != 0) != cases[i].off)
      fail_msg("%s: flagged %d", cases[i].sql, (fx.flags & PGS_SESSION_STRINGS_OFF) != 0);
    pgs_session_effects_free(&fx);
  }
}

static void test_reset(void **state) {
  pgs_session_effects_t fx;
  analyze("RESET X", 0, 1, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_RESET);
  assert_string_equal(fx.ops[0].name, "x");
  assert_null(fx.ops[0].sql);
  pgs_session_effects_free(&fx);

  analyze("RESET TIME ZONE", 0, 1, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_RESET);
  assert_string_equal(fx.ops[0].name, "timezone");
  pgs_session_effects_free(&fx);

  analyze("RESET ALL", 0, 1, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_RESET_ALL);
  assert_null(fx.ops[0].sql);
  pgs_session_effects_free(&fx);

  analyze("SET x TO DEFAULT", 0, 1, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_SET);
  pgs_session_effects_free(&fx);
}

static void test_discard_and_deallocate(void **state) {
  pgs_session_effects_t fx;
  /* DISCARD ALL also ends a SET SESSION AUTHORIZATION (and with it the
   * role), which RESET ALL leaves. */
  analyze("DISCARD ALL", PGS_SESSION_DROPS_PREPARED, 3, &fx);
  assert_int_equal(fx.ops[2].kind, PGS_SET_OP_UNLISTEN_ALL); /* it is UNLISTEN * too */
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_RESET_ALL);
  assert_int_equal(fx.ops[1].kind, PGS_SET_OP_RESET);
  assert_string_equal(fx.ops[1].name, "session_authorization");
  pgs_session_effects_free(&fx);

  expect_flags("DISCARD PLANS", 0);
  expect_flags("DISCARD SEQUENCES", 0);
  expect_flags("DEALLOCATE ALL", PGS_SESSION_DROPS_PREPARED);
  expect_flags("DEALLOCATE PREPARE ALL", PGS_SESSION_DROPS_PREPARED);
  expect_flags("deallocate all", PGS_SESSION_DROPS_PREPARED);
  expect_flags("DEALLOCATE foo", 0);
  expect_flags("DEALLOCATE PREPARE foo", 0);
  expect_flags("DEALLOCATE \"all\"", 0); /* a statement named all */
}

static void test_pins(void **state) {
  expect_flags("PREPARE p (int) AS SELECT $1", PGS_SESSION_PIN);
  expect_flags("DECLARE c CURSOR WITH HOLD FOR SELECT 1", PGS_SESSION_PIN);
  expect_flags("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT 1", PGS_SESSION_PIN);
  expect_flags("DECLARE c CURSOR FOR SELECT 1", 0);
  expect_flags("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", 0);
  expect_flags("DECLARE c BINARY SCROLL CURSOR FOR SELECT 1", 0);
  expect_flags("LOAD 'auto_explain'", PGS_SESSION_PIN);
  /* Statements that end with their transaction or leave nothing behind. */
  expect_flags("EXECUTE p(1)", 0);
  expect_flags("CLOSE c", 0);
  expect_flags("SELECT 1", 0);
}

static void test_temporary_objects(void **state) {
  /* Pinned, and the server is closed rather than reused. */
  const int TEMP = PGS_SESSION_PIN | PGS_SESSION_TEMP;
  expect_flags("CREATE TEMP TABLE t (a int)", TEMP);
  expect_flags("CREATE TEMPORARY TABLE t (a int)", TEMP);
  expect_flags("CREATE LOCAL TEMP TABLE t (a int) ON COMMIT DROP", TEMP);
  expect_flags("CREATE TEMP TABLE IF NOT EXISTS t (a int)", TEMP);
  expect_flags("CREATE TEMPORARY TABLE t AS SELECT 1 AS a", TEMP);
  expect_flags("CREATE TEMP SEQUENCE s", TEMP);
  expect_flags("CREATE TEMP VIEW v AS SELECT 1", TEMP);
  expect_flags("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", TEMP);
  expect_flags("SELECT 1 AS a INTO TEMP t", TEMP);
  expect_flags("SELECT 1 AS a INTO TEMPORARY TABLE t UNION SELECT 2", TEMP);
  expect_flags("WITH x AS (SELECT 1 AS a) SELECT * INTO TEMP t FROM x", TEMP);

  expect_flags("CREATE TABLE t (a int)", 0);
  expect_flags("CREATE UNLOGGED TABLE t (a int)", 0);
  expect_flags("CREATE TABLE t AS SELECT 1 AS a", 0);
  expect_flags("CREATE SEQUENCE s", 0);
  expect_flags("CREATE VIEW v AS SELECT 1", 0);
  expect_flags("CREATE MATERIALIZED VIEW m AS SELECT 1", 0);
  expect_flags("SELECT 1 AS a INTO t", 0);
  expect_flags("CREATE INDEX ON t (a)", 0);
}

static void test_advisory_locks(void **state) {
  expect_flags("SELECT pg_advisory_lock(1)", PGS_SESSION_PIN);
  expect_flags("SELECT PG_ADVISORY_LOCK(1)", PGS_SESSION_PIN);
  expect_flags("SELECT pg_advisory_lock_shared(1, 2)", PGS_SESSION_PIN);
  expect_flags("SELECT pg_try_advisory_lock(1)", PGS_SESSION_PIN);
  expect_flags("SELECT pg_try_advisory_lock_shared(1)", PGS_SESSION_PIN);
  expect_flags("UPDATE t SET ok = pg_try_advisory_lock(id)", PGS_SESSION_PIN);
  expect_flags("SELECT * FROM t WHERE pg_advisory_lock(t.id) IS NOT NULL", PGS_SESSION_PIN);

  expect_flags("SELECT pg_advisory_xact_lock(1)", 0);
  expect_flags("SELECT pg_try_advisory_xact_lock(1)", 0);
  expect_flags("SELECT pg_advisory_xact_lock_shared(1)", 0);
  expect_flags("SELECT pg_advisory_unlock(1)", 0);
  expect_flags("SELECT pg_advisory_unlock_all()", 0);
}

/* SQL sets role setting NAME: tracked (for replay on other shards' servers)
 * and pinned (RESET ALL would not undo it on a server handed on). */
static void expect_role_op(const char *sql, pgs_set_op_kind_t kind, const char *name) {
  pgs_session_effects_t fx;
  analyze(sql, PGS_SESSION_PIN, 1, &fx);
  assert_int_equal(fx.ops[0].kind, kind);
  assert_string_equal(fx.ops[0].name, name);
  pgs_session_effects_free(&fx);
}

static void test_roles(void **state) {
  expect_role_op("SET ROLE alice", PGS_SET_OP_SET, "role");
  expect_role_op("set role 'alice'", PGS_SET_OP_SET, "role");
  expect_role_op("SET ROLE NONE", PGS_SET_OP_SET, "role");
  expect_role_op("SET SESSION ROLE alice", PGS_SET_OP_SET, "role");
  expect_role_op("SET role TO DEFAULT", PGS_SET_OP_SET, "role");
  expect_role_op("SET SESSION AUTHORIZATION alice", PGS_SET_OP_SET, "session_authorization");
  expect_role_op("SET SESSION SESSION AUTHORIZATION 'alice'", PGS_SET_OP_SET,
                 "session_authorization");
  expect_role_op("RESET ROLE", PGS_SET_OP_RESET, "role");
  expect_role_op("RESET SESSION AUTHORIZATION", PGS_SET_OP_RESET, "session_authorization");
  expect_role_op("SET SESSION AUTHORIZATION DEFAULT", PGS_SET_OP_SET, "session_authorization");
  /* Ends with the transaction. */
  expect_flags("SET LOCAL ROLE alice", 0);
  expect_flags("SET LOCAL SESSION AUTHORIZATION alice", 0);
  assert_true(pgs_session_is_role("role"));
  assert_true(pgs_session_is_role("session_authorization"));
  assert_false(pgs_session_is_role("search_path"));
}

static void test_untracked_changes(void **state) {
  /* set_config() not provably for the transaction only. */
  expect_flags("SELECT set_config('search_path', 'x', false)", PGS_SESSION_PIN);
  expect_flags("SELECT pg_catalog.set_config('a', 'b', false)", PGS_SESSION_PIN);
  expect_flags("SELECT SET_CONFIG('a', 'b', 'off')", PGS_SESSION_PIN);
  expect_flags("SELECT set_config('a', 'b', $1)", PGS_SESSION_PIN);
  expect_flags("SELECT set_config('a', 'b', x) FROM t", PGS_SESSION_PIN);
  expect_flags("SELECT set_config('a', 'b', not false)", PGS_SESSION_PIN);
  expect_flags("SELECT set_config('a', 'b', true), set_config('c', 'd', false)", PGS_SESSION_PIN);
  expect_flags("SELECT \"set_config\"('a', 'b', false)", PGS_SESSION_PIN);
  expect_flags("SELECT set_config(name, setting, false) FROM pg_settings", PGS_SESSION_PIN);
  /* ... and provably local ones. */
  expect_flags("SELECT set_config('a', 'b', true)", 0);
  expect_flags("SELECT set_config('a', 'b,c', TRUE)", 0);
  expect_flags("SELECT set_config('a', ')', 'on')", 0);
  expect_flags("SELECT set_config(lower('A'), format('%s', 1), true)", 0);
  expect_flags("SELECT set_config(E'a\\'', $$b, false$$, 't')", 0);
  /* Not calls: in strings, comments and column names. */
  expect_flags("SELECT 'set_config(''a'', ''b'', false)'", 0);
  expect_flags("SELECT 1 /* set_config('a', 'b', false) */", 0);
  expect_flags("SELECT set_config_count FROM t", 0);
  /* DO blocks may do anything. */
  expect_flags("DO $$ BEGIN SET search_path = x; END $$", PGS_SESSION_PIN);
  expect_flags("DO LANGUAGE plpgsql 'BEGIN NULL; END'", PGS_SESSION_PIN);
}

static void test_multi_statement(void **state) {
  pgs_session_effects_t fx;
  analyze("SET a=1; SELECT 1; SET b=2", 0, 2, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_SET);
  assert_string_equal(fx.ops[0].name, "a");
  assert_string_equal(fx.ops[0].sql, "SET a=1");
  assert_int_equal(fx.ops[1].kind, PGS_SET_OP_SET);
  assert_string_equal(fx.ops[1].name, "b");
  assert_string_equal(fx.ops[1].sql, "SET b=2");
  pgs_session_effects_free(&fx);

  analyze("SET a = 'x;y';\n  /* next */ RESET b;\nSET LOCAL c = 1; DISCARD ALL",
          PGS_SESSION_DROPS_PREPARED, 5, &fx);
  assert_string_equal(fx.ops[0].sql, "SET a = 'x;y'");
  assert_int_equal(fx.ops[1].kind, PGS_SET_OP_RESET);
  assert_string_equal(fx.ops[1].name, "b");
  assert_int_equal(fx.ops[2].kind, PGS_SET_OP_RESET_ALL);
  pgs_session_effects_free(&fx);

  /* Effects of every statement add up. */
  analyze("BEGIN; LISTEN c; DEALLOCATE ALL; SET x = 1; COMMIT",
          PGS_SESSION_PIN | PGS_SESSION_DROPS_PREPARED, 2, &fx);
  assert_int_equal(fx.ops[0].kind, PGS_SET_OP_LISTEN);
  assert_string_equal(fx.ops[1].sql, "SET x = 1");
  assert_int_equal(fx.nstatements, 5);
  pgs_session_effects_free(&fx);
}

/* LISTEN pins (session pooling keeps the server; transaction pooling
 * answers it from the op), UNLISTEN leaves nothing: each names its
 * channel as PostgreSQL folds it, cut to NAMEDATALEN - 1 bytes. */
static void expect_channel(const char *sql, int flags, pgs_set_op_kind_t kind,
                           const char *channel) {
  pgs_session_effects_t fx;
  analyze(sql, flags, 1, &fx);
  assert_int_equal(fx.ops[0].kind, kind);
  assert_true(pgs_set_op_is_listen(fx.ops[0].kind));
  assert_string_equal(fx.ops[0].name, channel);
  assert_null(fx.ops[0].sql);
  assert_int_equal(fx.nstatements, 1);
  pgs_session_effects_free(&fx);
}

static void test_listen_channels(void **state) {
  (void)state;
  expect_channel("LISTEN channel", PGS_SESSION_PIN, PGS_SET_OP_LISTEN, "channel");
  expect_channel("listen Orders", PGS_SESSION_PIN, PGS_SET_OP_LISTEN, "orders");
  expect_channel("LISTEN \"Orders\"", PGS_SESSION_PIN, PGS_SET_OP_LISTEN, "Orders");
  expect_channel("LISTEN \"a\"\"b\"", PGS_SESSION_PIN, PGS_SET_OP_LISTEN, "a\"b");
  expect_channel("UNLISTEN Orders", 0, PGS_SET_OP_UNLISTEN, "orders");
  expect_channel("unlisten *", 0, PGS_SET_OP_UNLISTEN_ALL, "");
  /* 70 letters: the first 63 (quoted or not, as PostgreSQL truncates). */
  char sql[128], want[64];
  memset(want, 'x', 63);
  want[63] = '\0';
  snprintf(sql, sizeof(sql), "LISTEN %s1234567", want);
  expect_channel(sql, PGS_SESSION_PIN, PGS_SET_OP_LISTEN, want);
  snprintf(sql, sizeof(sql), "LISTEN \"%s1234567\"", want);
  expect_channel(sql, PGS_SESSION_PIN, PGS_SET_OP_LISTEN, want);
  /* A character PostgreSQL would not cut in two: dropped whole. */
  memset(want, 'y', 62);
  want[62] = '\0';
  snprintf(sql, sizeof(sql), "LISTEN \"%s\xc3\xa9tail\"", want);
  expect_channel(sql, PGS_SESSION_PIN, PGS_SET_OP_LISTEN, want);
  assert_true(pgs_session_maybe("UNLISTEN *", 10));
}

static void test_too_many_sets(void **state) {
  /* Past PGS_SESSION_MAX_OPS the client keeps its server instead. */
  char sql[2048] = "";
  for (int i = 0; i < PGS_SESSION_MAX_OPS + 3; i++) {
    char one[32];
    snprintf(one, sizeof(one), "SET v%d = %d;", i, i);
    strcat(sql, one);
  }
  pgs_session_effects_t fx;
  analyze(sql, PGS_SESSION_PIN, PGS_SESSION_MAX_OPS, &fx);
  assert_string_equal(fx.ops[PGS_SESSION_MAX_OPS - 1].sql, "SET v31 = 31");
  pgs_session_effects_free(&fx);
}

/* A left-deep chain libpg_query and protobuf-c would recurse through until
 * the stack runs out: never parsed, and the client keeps its server. */
static void test_too_deep_is_pinned_not_parsed(void **state) {
  static const char *const ops[] = {" + 1", " || 'x'", " UNION SELECT 1"};
  for (size_t k = 0; k < PGS_ARRAY_LEN(ops); k++) {
    size_t n = 30000, oplen = strlen(ops[k]);
    char *sql = malloc(n * oplen + 64);
    char *p = sql + sprintf(sql, "SELECT 1");
    for (size_t i = 0; i < n; i++, p += oplen) memcpy(p, ops[k], oplen);
    strcpy(p, "; SET a.b = 1");
    pgs_session_effects_t fx;
    pgs_session_analyze(sql, &fx);
    assert_true(fx.parse_failed);
    assert_int_equal(fx.flags & PGS_SESSION_PIN, PGS_SESSION_PIN);
    assert_int_equal(fx.nops, 0);
    pgs_session_effects_free(&fx);
    free(sql);
  }
}

static void test_parse_failed(void **state) {
  static const char *const bad[] = {
      "SELEC 1",         "SET x =",           "SET", "DISCARD", "SELECT 'unterminated",
      "/* unterminated", "SET a = 1; SELEC 2"};
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    pgs_session_effects_t fx;
    pgs_session_analyze(bad[i], &fx);
    if (!fx.parse_failed) fail_msg("\"%s\" parsed", bad[i]);
    /* Nothing is reported from a statement list the server will refuse. */
    assert_int_equal(fx.flags, 0);
    assert_int_equal(fx.nops, 0);
    pgs_session_effects_free(&fx);
  }
  /* The empty statement list parses to nothing. */
  expect_flags("", 0);
  expect_flags(";;", 0);
  expect_flags("-- nothing", 0);
}

static void test_effects_free(void **state) {
  pgs_session_effects_t fx;
  analyze("SET a = 1; SET b = 2; RESET c", 0, 3, &fx);
  pgs_session_effects_free(&fx);
  assert_int_equal(fx.nops, 0);
  pgs_session_effects_free(&fx); /* again: nothing left to free */

  /* Ops whose sql was taken by the caller (set to NULL) are skipped. */
  analyze("SET a = 1", 0, 1, &fx);
  char *taken = fx.ops[0].sql;
  fx.ops[0].sql = NULL;
  pgs_session_effects_free(&fx);
  free(taken);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_maybe_true),
      cmocka_unit_test(test_maybe_false),
      cmocka_unit_test(test_set),
      cmocka_unit_test(test_set_line_comment),
      cmocka_unit_test(test_set_without_lasting_effect),
      cmocka_unit_test(test_reset),
      cmocka_unit_test(test_standard_strings_off),
      cmocka_unit_test(test_discard_and_deallocate),
      cmocka_unit_test(test_pins),
      cmocka_unit_test(test_temporary_objects),
      cmocka_unit_test(test_advisory_locks),
      cmocka_unit_test(test_roles),
      cmocka_unit_test(test_untracked_changes),
      cmocka_unit_test(test_listen_channels),
      cmocka_unit_test(test_multi_statement),
      cmocka_unit_test(test_too_many_sets),
      cmocka_unit_test(test_parse_failed),
      cmocka_unit_test(test_too_deep_is_pinned_not_parsed),
      cmocka_unit_test(test_effects_free),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
