/*
 * test_lexer_parser.c — the digest lexer against PostgreSQL 15's scanner
 * and grammar (lexer_parser_check.h says what must agree) on statements
 * made by a generator: templates of routable statements whose slots take
 * literals in every quoting style (doubled quotes, E'' escapes, U&'' with
 * UESCAPE, dollar quotes with tags, continuation lines, B''/X''/N''),
 * numbers in every form, blanks replaced by comments (nested, "--", hints,
 * hints inside literals), several statements in one text, and random
 * splices of quote and comment markers into the result. The seed is fixed,
 * so a failure repeats; the failing text is printed. With
 * LEXER_PARSER_DUMP=DIR set, the generated statements that parse are
 * written to DIR, as seeds for tests/fuzz/fuzz_lexer_parser.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lexer_parser_check.h"

static pgs_lexed_t lexed;

static int group_setup(void **state) {
  pgs_lex_init(&lexed);
  return 0;
}

static int group_teardown(void **state) {
  pgs_lex_free(&lexed);
  pg_query_exit();
  return 0;
}

/* ---- a small deterministic generator ---- */

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state % n);
}

#define PICK(a) ((a)[rnd(PGS_ARRAY_LEN(a))])

static void put(pgs_buf_t *b, const char *s) { pgs_buf_put(b, s, strlen(s)); }

/* Text inside a quoted string: SQL's own markers, a hint, a placeholder. */
static const char *const string_bits[] = {
    "abc",
    "42",
    " ",
    ";",
    "--",
    "/*",
    "*/",
    "$$",
    "$1",
    "$t$",
    "\"",
    "\\",
    "\\'",
    "/* pgshard: shard=s9 */",
    "-- pgshard: shard=s8",
    "\n",
    "\t",
    "é",
    "a$b",
    "E'",
    "U&",
};

static void string_body(pgs_buf_t *b, bool doubled_quotes) {
  int n = (int)rnd(4);
  for (int i = 0; i < n; i++) {
    if (doubled_quotes && rnd(5) == 0)
      put(b, "''");
    else
      put(b, PICK(string_bits));
  }
}

/* What may stand between two parts of a continued string. */
static const char *const continuations[] = {
    "\n", " \n ", "\r\n", "\n\n", " -- note\n", "\n-- note\n", "\t\f\n",
};

static const char *const escapes[] = {
    "\\n",     "\\t",         "\\\\",           "\\'", "''",  "\\x41", "\\x4", "\\101", "\\7",
    "\\u00e9", "\\U0001F600", "\\uD83D\\uDE00", "\\q", "\\$", "x",     "--",   "/*",
};

static const char *const numbers[] = {
    "0",
    "42",
    "007",
    "3.14",
    ".5",
    "1.",
    "1e5",
    "1E+5",
    "2.5e-3",
    ".5e2",
    "9223372036854775807",
    "99999999999999999999",
    "1..2",
    "4.e1",
};

static const char *const verbatim[] = {
    "B'101'",        "b''",       "X'1F'",          "x'ab'",
    "N'nat'",        "n'it''s'",  "U&'d\\0061t'",   "U&'d!0061t' UESCAPE '!'",
    "u&'\\+01F600'", "B'1'\n'0'", "X'a' -- c\n'b'",
};

static void literal(pgs_buf_t *b, int kind) {
  switch (kind) {
  case 0: /* '...' maybe continued */
    put(b, "'");
    string_body(b, true);
    put(b, "'");
    while (rnd(4) == 0) {
      put(b, PICK(continuations));
      put(b, "'");
      string_body(b, true);
      put(b, "'");
    }
    break;
  case 1: { /* E'...' */
    put(b, rnd(2) ? "E'" : "e'");
    int n = (int)rnd(4);
    for (int i = 0; i < n; i++) put(b, rnd(2) ? PICK(escapes) : PICK(string_bits));
    put(b, "'");
    if (rnd(4) == 0) {
      put(b, PICK(continuations));
      put(b, "'\\n'");
    }
    break;
  }
  case 2: { /* dollar quotes */
    static const char *const tags[] = {"", "t", "tag", "_x1", "é"};
    const char *tag = PICK(tags);
    put(b, "$");
    put(b, tag);
    put(b, "$");
    string_body(b, false);
    if (rnd(3) == 0) put(b, "$ta$"); /* almost the closing tag */
    put(b, "$");
    put(b, tag);
    put(b, "$");
    break;
  }
  case 3:
    put(b, PICK(numbers));
    break;
  default:
    put(b, PICK(verbatim));
    break;
  }
}

/* Statements the router routes; L is any literal, S a string, N a number. */
static const char *const templates[] = {
    "SELECT * FROM users WHERE id = L",
    "SELECT name FROM users WHERE id = N AND name = S",
    "SELECT * FROM users WHERE id = $1 AND note = L",
    "SELECT L , L AS x , - N FROM t ORDER BY 1 , 2 DESC",
    "SELECT a , count ( * ) FROM t GROUP BY 1 HAVING count ( * ) > N ORDER BY 2 , a + N",
    "INSERT INTO orders ( user_id , note ) VALUES ( L , L ) , ( N , S )",
    "UPDATE users SET name = S WHERE id = L",
    "DELETE FROM t WHERE a IN ( L , L , S )",
    "SELECT a$1 , \"we\"\"ird\" , U&\"d\\0061t\" FROM t WHERE a = S",
    "SELECT L :: text || S , array [ N , N ] , N - N",
    "SELECT interval S , date S , S :: int8",
    "SELECT x FROM t WHERE y LIKE S ESCAPE S OR z = L",
    "COMMENT ON TABLE t IS S",
    "CREATE FUNCTION f ( ) RETURNS int AS S LANGUAGE sql",
    "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = L LIMIT N",
    "SELECT * FROM ( SELECT id FROM users WHERE id = L ORDER BY 1 ) s ORDER BY 1",
    "SELECT string_agg ( a , S ORDER BY a ) FROM t WHERE a = L",
    "SELECT a FROM t GROUP BY DISTINCT N , ( N ) ORDER BY ( N ) , a + N , f ( N )",
    "SELECT * FROM users WHERE id = ANY ( S :: int8 [ ] )",
    "SELECT 1 FROM t WHERE a = L ; UPDATE t SET b = S WHERE a = L",
    "PREPARE p ( int8 ) AS SELECT * FROM users WHERE id = $1 AND L = L",
};

/* What may replace a blank between tokens. */
static const char *const blanks[] = {
    " ",
    " ",
    " ",
    "\n",
    "\t",
    "  ",
    "/**/",
    "/* c */",
    "/* a /* nested */ b */",
    "-- c\n",
    "/* pgshard: shard=s1 */",
    "-- pgshard : shard = s2\n",
    "/* PGSHARD:SHARD=s3.x-y */",
    "\r\n",
    "/*'*/",
    "--'\n",
    "/*$$*/",
};

static void statement(pgs_buf_t *b) {
  const char *t = PICK(templates);
  for (; *t; t++) {
    if (*t == ' ') {
      put(b, rnd(3) == 0 ? PICK(blanks) : " ");
    } else if (*t == 'L' && (t[1] == ' ' || t[1] == '\0') && t[-1] == ' ') {
      literal(b, (int)rnd(6));
    } else if (*t == 'S' && (t[1] == ' ' || t[1] == '\0') && t[-1] == ' ') {
      literal(b, (int)rnd(3));
    } else if (*t == 'N' && (t[1] == ' ' || t[1] == '\0') && t[-1] == ' ') {
      literal(b, 3);
    } else {
      pgs_buf_put_u8(b, (uint8_t)*t);
    }
  }
}

static const char *const splices[] = {
    "'",        "''", "\"", "$",  "$$", "$t$", "E'",
    "U&'",      "B'", "N'", "--", "/*", "*/",  "\n",
    ";",        " ",  "\\", "1",  ".",  "e",   "-- pgshard: shard=sx\n",
    "'a'\n'b'",
};

/* One case: one to three statements, then perhaps a few random edits. */
static void generate(pgs_buf_t *b) {
  b->len = 0;
  if (rnd(4) == 0) put(b, PICK(blanks));
  int n = 1 + (rnd(3) == 0) + (rnd(6) == 0);
  for (int i = 0; i < n; i++) {
    if (i > 0) put(b, rnd(4) ? ";" : "; ;");
    statement(b);
  }
  if (rnd(3) == 0) put(b, rnd(2) ? ";" : ";\n-- done");
  int edits = rnd(3) == 0 ? 1 + (int)rnd(3) : 0;
  for (int e = 0; e < edits && b->len > 0; e++) {
    size_t at = rnd((uint32_t)b->len);
    if (rnd(3) == 0) { /* cut a few bytes */
      size_t cut = 1 + rnd(4);
      if (at + cut > b->len) cut = b->len - at;
      memmove(b->data + at, b->data + at + cut, b->len - at - cut);
      b->len -= cut;
    } else { /* insert a marker */
      const char *s = PICK(splices);
      size_t n2 = strlen(s);
      pgs_buf_reserve(b, n2);
      memmove(b->data + at + n2, b->data + at, b->len - at);
      memcpy(b->data + at, s, n2);
      b->len += n2;
    }
  }
  pgs_buf_put_u8(b, '\0');
  b->len--;
}

static void check(const char *sql) {
  char why[512];
  if (!lpc_check(sql, strlen(sql), &lexed, why, sizeof(why), NULL)) {
    print_error("lexer and parser disagree on:\n%s\n-> %s\n", sql, why);
    fail();
  }
}

/* ---- tests ---- */

/* The constructs the generator mixes, each on its own first. */
static void test_hand_written_cases(void **state) {
  static const char *const cases[] = {
      "SELECT * FROM users WHERE id = 42",
      "SELECT 'it''s', E'a\\'b', E'\\x41\\101\\u00e9', $$a'b$$, $t$x$$y$t$",
      "SELECT 'a'\n'b', 'c' -- note\n'd', E'x'\n-- note\n'\\n'",
      "SELECT 'a' 'b'",
      "SELECT B'101', X'1F', N'it''s', U&'d\\0061t', U&'d!0061t' UESCAPE '!'",
      "SELECT 1, 1.5, .5, 1., 1e5, 2.5e-3, 99999999999999999999, 1..2",
      "SELECT a$1, \"a\"\"b\" FROM t WHERE a = $1 AND b = 'x'",
      "SELECT 1 /* a /* nested */ comment */ + 2 -- end",
      "SELECT '/* pgshard: shard=evil */' /* pgshard: shard=s1 */",
      "SELECT $$ -- pgshard: shard=evil $$ -- pgshard: shard=s2",
      "SELECT a, b FROM t ORDER BY 2, 1 DESC, a + 1",
      "SELECT a FROM t GROUP BY 1 HAVING count(*) > 2",
      "SELECT 1; SELECT 'a;b'; ;",
      "SELECT 1+-2, 3--4\n, 5/*6*/7",
      "SELECT 0x1F, 1_000",
      "SELECT E'\\x00'",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(cases); i++) check(cases[i]);
}

/* Thousands of generated statements; most parse, and every one that does
 * must read the same to both. */
static void test_generated_statements_agree(void **state) {
  rng_state = 0x9E3779B97F4A7C15ull;
  pgs_buf_t b;
  pgs_buf_init(&b);
  int parsed = 0, total = 10000;
  const char *dump = getenv("LEXER_PARSER_DUMP");
  for (int i = 0; i < total; i++) {
    generate(&b);
    char why[512];
    bool compared;
    if (!lpc_check((const char *)b.data, b.len, &lexed, why, sizeof(why), &compared)) {
      print_error("case %d: lexer and parser disagree on:\n%s\n-> %s\n", i, (const char *)b.data,
                  why);
      pgs_buf_free(&b);
      fail();
    }
    parsed += compared;
    if (compared && dump) {
      /* Seeds for fuzz_lexer_parser (tests/fuzz/README.md). */
      char path[4096];
      snprintf(path, sizeof(path), "%s/gen%05d", dump, i);
      FILE *f = fopen(path, "wb");
      if (f) {
        fwrite(b.data, 1, b.len, f);
        fclose(f);
      }
    }
  }
  pgs_buf_free(&b);
  print_message("%d of %d generated statements parse and were compared\n", parsed, total);
  /* The generator must keep producing statements worth comparing. */
  assert_true(parsed > total / 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hand_written_cases),
      cmocka_unit_test(test_generated_statements_agree),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
