/*
 * test_lexer.c — router/lexer.c: every token kind PostgreSQL 15's scanner
 * knows, as pgs_lex normalises it (literals to $N, values unescaped,
 * comments and blank runs gone, hints kept), the numbering of literals
 * after the statement's own $n, statement counting, the errors the server
 * would raise too, and the property the plan cache rests on: texts that
 * differ only in literals, blanks or comments normalise and hash the same.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/analyze.h"

static pgs_lexed_t lexed;

static int group_setup(void **state) {
  pgs_lex_init(&lexed);
  return 0;
}

static int group_teardown(void **state) {
  pgs_lex_free(&lexed);
  return 0;
}

static pgs_status_t lex(const char *sql) { return pgs_lex(sql, strlen(sql), &lexed); }

/* Lex SQL and check its normalised text. */
static void norm(const char *sql, const char *expected) {
  assert_int_equal(lex(sql), PGS_OK);
  assert_string_equal(lexed.normalized, expected);
  assert_int_equal(lexed.normalized_len, strlen(expected));
}

static const char *value(int i) {
  assert_true(i < lexed.nliterals);
  return lexed.values + lexed.literals[i].offset;
}

static void assert_value(int i, const char *expected, bool is_string) {
  assert_string_equal(value(i), expected);
  assert_int_equal(lexed.literals[i].len, strlen(expected));
  assert_int_equal(lexed.literals[i].is_string, is_string);
}

/* ---- plain text ---- */

static void test_no_literals(void **state) {
  norm("SELECT * FROM users", "SELECT * FROM users");
  assert_int_equal(lexed.nliterals, 0);
  assert_int_equal(lexed.nparams, 0);
  assert_int_equal(lexed.nstatements, 1);
  assert_string_equal(lexed.hint_shard, "");
}

static void test_identifiers_and_keywords_untouched(void **state) {
  norm("select Name, \"Mixed Case\" From Users u WHERE u.ID IS NOT NULL",
       "select Name, \"Mixed Case\" From Users u WHERE u.ID IS NOT NULL");
}

static void test_quoted_identifier_with_doubled_quote(void **state) {
  norm("SELECT \"a \"\"b\"\" 'c'\" FROM t", "SELECT \"a \"\"b\"\" 'c'\" FROM t");
  assert_int_equal(lexed.nliterals, 0);
}

static void test_unicode_quoted_identifier(void **state) {
  norm("SELECT U&\"d\\0061t\" FROM t", "SELECT U&\"d\\0061t\" FROM t");
  assert_int_equal(lexed.nliterals, 0);
}

static void test_identifier_with_dollar(void **state) {
  norm("SELECT a$b, c$1 FROM t$x", "SELECT a$b, c$1 FROM t$x");
  assert_int_equal(lexed.nparams, 0);
  assert_int_equal(lexed.nliterals, 0);
}

static void test_operators_kept(void **state) {
  norm("SELECT a->>'k', b @> c, d || e, f::text, g <> h, i != j",
       "SELECT a->>$1, b @> c, d || e, f::text, g <> h, i != j");
}

static void test_whitespace_collapsed(void **state) {
  norm("  SELECT\t*\n\n FROM   t \r\n WHERE\fa = b  ", "SELECT * FROM t WHERE a = b");
}

/* ---- numbers ---- */

static void test_integer(void **state) {
  norm("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = $1");
  assert_int_equal(lexed.nliterals, 1);
  assert_value(0, "42", false);
}

static void test_decimals_and_exponents(void **state) {
  norm("SELECT 1.5, .5, 1., 1e10, 1.5e-3, 2E+2", "SELECT $1, $2, $3, $4, $5, $6");
  assert_value(0, "1.5", false);
  assert_value(1, ".5", false);
  assert_value(2, "1.", false);
  assert_value(3, "1e10", false);
  assert_value(4, "1.5e-3", false);
  assert_value(5, "2E+2", false);
}

static void test_exponent_needs_digits(void **state) {
  /* PostgreSQL 15 rejects "1e" (trailing junk after a number); the lexer
   * reads 1 then the identifier e and leaves the error to the server. */
  norm("SELECT 1e", "SELECT $1 e");
  assert_value(0, "1", false);
}

static void test_hex_is_not_a_number_in_pg15(void **state) {
  /* An error in PostgreSQL 15 too ("trailing junk"). */
  norm("SELECT 0x1F", "SELECT $1 x1F");
  assert_int_equal(lexed.nliterals, 1);
  assert_value(0, "0", false);
}

static void test_number_then_identifier(void **state) {
  norm("SELECT 12abc", "SELECT $1 abc");
  assert_value(0, "12", false);
}

static void test_negative_number(void **state) {
  norm("SELECT * FROM t WHERE id = -5", "SELECT * FROM t WHERE id = -$1");
  assert_value(0, "5", false);
}

static void test_number_in_identifier_is_not_a_literal(void **state) {
  norm("SELECT t1.c2 FROM t1", "SELECT t1.c2 FROM t1");
  assert_int_equal(lexed.nliterals, 0);
}

/* ---- strings ---- */

static void test_string(void **state) {
  norm("SELECT * FROM t WHERE name = 'alice'", "SELECT * FROM t WHERE name = $1");
  assert_value(0, "alice", true);
}

static void test_string_doubled_quote(void **state) {
  norm("SELECT 'O''Brien', ''''", "SELECT $1, $2");
  assert_value(0, "O'Brien", true);
  assert_value(1, "'", true);
}

static void test_empty_string(void **state) {
  norm("SELECT ''", "SELECT $1");
  assert_value(0, "", true);
}

static void test_standard_string_backslash_is_literal(void **state) {
  norm("SELECT 'a\\nb\\'", "SELECT $1");
  assert_value(0, "a\\nb\\", true);
}

static void test_string_continuation(void **state) {
  norm("SELECT 'foo'\n  'bar'\n'baz'", "SELECT $1");
  assert_int_equal(lexed.nliterals, 1);
  assert_value(0, "foobarbaz", true);
}

static void test_string_continuation_with_line_comment(void **state) {
  norm("SELECT 'a' -- first part\n -- more\n 'b'", "SELECT $1");
  assert_value(0, "ab", true);
}

static void test_strings_on_one_line_are_two(void **state) {
  /* Without a newline PostgreSQL does not join them (a syntax error). */
  norm("SELECT 'a' 'b'", "SELECT $1 $2");
  assert_int_equal(lexed.nliterals, 2);
}

static void test_semicolon_in_string(void **state) {
  norm("SELECT 'a;b'; SELECT 1", "SELECT $1; SELECT $2");
  assert_int_equal(lexed.nstatements, 2);
  assert_value(0, "a;b", true);
}

static void test_comment_markers_in_string(void **state) {
  norm("SELECT '-- no', '/* no */'", "SELECT $1, $2");
  assert_value(0, "-- no", true);
  assert_value(1, "/* no */", true);
}

/* ---- E'' strings ---- */

static void test_escape_string_simple_escapes(void **state) {
  norm("SELECT E'a\\nb\\tc\\rd\\be\\ff\\\\g\\'h'", "SELECT $1");
  assert_value(0, "a\nb\tc\rd\be\ff\\g'h", true);
}

static void test_escape_string_lowercase_prefix(void **state) {
  norm("SELECT e'x\\ty'", "SELECT $1");
  assert_value(0, "x\ty", true);
}

static void test_escape_string_doubled_quote(void **state) {
  norm("SELECT E'it''s'", "SELECT $1");
  assert_value(0, "it's", true);
}

static void test_escape_string_hex(void **state) {
  norm("SELECT E'\\x41\\x4a\\x7'", "SELECT $1");
  assert_value(0, "AJ\x07", true);
}

static void test_escape_string_octal(void **state) {
  norm("SELECT E'\\101\\60\\7x'", "SELECT $1");
  assert_value(0, "A0\x07x", true);
}

static void test_escape_string_unicode(void **state) {
  norm("SELECT E'\\u00e9\\u20AC'", "SELECT $1");
  assert_value(0, "\xc3\xa9\xe2\x82\xac", true);
}

static void test_escape_string_long_unicode(void **state) {
  norm("SELECT E'\\U0001F600'", "SELECT $1");
  assert_value(0, "\xf0\x9f\x98\x80", true);
}

static void test_escape_string_surrogate_pair(void **state) {
  norm("SELECT E'\\uD83D\\uDE00'", "SELECT $1");
  assert_value(0, "\xf0\x9f\x98\x80", true);
}

static void test_escape_string_other_chars_stand_for_themselves(void **state) {
  /* "\q" is q; "\x" without a hex digit is x. */
  norm("SELECT E'\\q\\xg\\\"'", "SELECT $1");
  assert_value(0, "qxg\"", true);
}

static void test_escape_string_continuation(void **state) {
  norm("SELECT E'a\\t'\n'b'", "SELECT $1");
  assert_value(0, "a\tb", true);
}

static void test_escape_string_errors(void **state) {
  static const char *const bad[] = {
      "SELECT E'\\uD83D'",     /* lone high surrogate */
      "SELECT E'\\uDE00'",     /* lone low surrogate */
      "SELECT E'\\uD83Dx'",    /* high surrogate then a char */
      "SELECT E'\\u12'",       /* too few hex digits */
      "SELECT E'\\U0011FFFF'", /* past U+10FFFF */
      "SELECT E'\\x00'",       /* NUL */
      "SELECT E'\\000'",       /* NUL */
      "SELECT E'\\u0000'",     /* NUL */
      "SELECT E'abc\\'",       /* the quote is escaped: unterminated */
      "SELECT E'abc\\",        /* ends in a backslash */
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++) {
    if (lex(bad[i]) != PGS_EINVAL) fail_msg("expected EINVAL for %s", bad[i]);
    assert_string_equal(lexed.normalized, "");
  }
}

/* ---- verbatim literal kinds ---- */

static void test_bit_strings_kept_verbatim(void **state) {
  norm("SELECT B'1010', b'1', X'1F', x'ff'", "SELECT B'1010', b'1', X'1F', x'ff'");
  assert_int_equal(lexed.nliterals, 0);
}

static void test_unicode_and_national_strings_kept_verbatim(void **state) {
  norm("SELECT U&'d\\0061t' UESCAPE '!', N'abc'", "SELECT U&'d\\0061t' UESCAPE $1, N'abc'");
  assert_int_equal(lexed.nliterals, 1);
  assert_value(0, "!", true);
}

static void test_bit_string_doubled_quote_ends_it(void **state) {
  /* In B'..' and X'..' scan.l has no '' escape: B'10''01' is B'10' then
   * the string '01' (found by fuzz_lexer_parser). */
  norm("SELECT B'10''01', X'1F''2'", "SELECT B'10'$1, X'1F'$2");
  assert_int_equal(lexed.nliterals, 2);
  assert_value(0, "01", true);
  assert_value(1, "2", true);
  norm("SELECT N'it''s', U&'it''s'", "SELECT N'it''s', U&'it''s'");
}

static void test_verbatim_continuation_loses_its_comment(void **state) {
  /* The server joins X'a' -- c <newline> 'b' into X'ab'; libpg_query does
   * not join across the comment, so the normalised text keeps only a
   * newline between the parts (found by test_lexer_parser). */
  norm("SELECT X'a' -- c\n'b', B'1'\n  -- d\n'0', N'x'\r\n'y'",
       "SELECT X'a'\n'b', B'1'\n'0', N'x'\n'y'");
  assert_int_equal(lexed.nliterals, 0);
}

static void test_hint_in_continuation_comment(void **state) {
  /* A comment between the parts of a string is a comment all the same. */
  norm("SELECT 'a' -- pgshard: shard=s1\n'b'", "SELECT $1");
  assert_value(0, "ab", true);
  assert_string_equal(lexed.hint_shard, "s1");
  norm("SELECT X'a' -- pgshard: shard=s2\n'b'", "SELECT X'a'\n'b'");
  assert_string_equal(lexed.hint_shard, "s2");
  norm("SELECT E'a'\n-- pgshard: shard=s3\n'b'", "SELECT $1");
  assert_string_equal(lexed.hint_shard, "s3");
}

/* ---- dollar quotes ---- */

static void test_dollar_quote(void **state) {
  norm("SELECT $$it's a \\ string$$", "SELECT $1");
  assert_value(0, "it's a \\ string", true);
  assert_int_equal(lexed.nparams, 0);
}

static void test_dollar_quote_with_tag(void **state) {
  norm("SELECT $fn$ body $$ inner $$ $fn$, $_x1$a$_x1$", "SELECT $1, $2");
  assert_value(0, " body $$ inner $$ ", true);
  assert_value(1, "a", true);
}

static void test_dollar_quote_tags_must_match(void **state) {
  norm("SELECT $a$ x $b$ y $a$", "SELECT $1");
  assert_value(0, " x $b$ y ", true);
}

static void test_dollar_quote_empty(void **state) {
  norm("SELECT $$$$", "SELECT $1");
  assert_value(0, "", true);
}

static void test_dollar_digit_is_a_parameter_not_a_tag(void **state) {
  /* $1 then the identifier x$, as PostgreSQL 15 reads it. */
  norm("SELECT $1x$", "SELECT $1 x$");
  assert_int_equal(lexed.nparams, 1);
  assert_int_equal(lexed.nliterals, 0);
}

static void test_dollar_quote_after_placeholder(void **state) {
  norm("SELECT 'a'$$b$$", "SELECT $1 $2");
  assert_value(1, "b", true);
}

/* ---- parameters and numbering ---- */

static void test_params_highest_counts(void **state) {
  norm("SELECT $1, $3, $2", "SELECT $1, $3, $2");
  assert_int_equal(lexed.nparams, 3);
  assert_int_equal(lexed.nliterals, 0);
}

static void test_literals_numbered_after_params(void **state) {
  norm("SELECT * FROM t WHERE a = $2 AND b = 5 AND c = 'x'",
       "SELECT * FROM t WHERE a = $2 AND b = $3 AND c = $4");
  assert_int_equal(lexed.nparams, 2);
  assert_int_equal(lexed.nliterals, 2);
  assert_value(0, "5", false);
  assert_value(1, "x", true);
}

static void test_literal_before_param_renumbered(void **state) {
  norm("SELECT 'x', 7, $12", "SELECT $13, $14, $12");
  assert_int_equal(lexed.nparams, 12);
  assert_value(0, "x", true);
  assert_value(1, "7", false);
}

static void test_placeholder_offsets(void **state) {
  assert_int_equal(lex("SELECT 'a', $2, 10 , 'bcd'"), PGS_OK);
  assert_string_equal(lexed.normalized, "SELECT $3, $2, $4 , $5");
  for (int i = 0; i < lexed.nliterals; i++) {
    const char *at = lexed.normalized + lexed.literals[i].placeholder;
    char expected[16];
    snprintf(expected, sizeof(expected), "$%d", lexed.nparams + 1 + i);
    assert_memory_equal(at, expected, strlen(expected));
  }
}

static void test_many_literals_renumbered(void **state) {
  char sql[4096] = "SELECT $1";
  for (int i = 0; i < 200; i++) snprintf(sql + strlen(sql), sizeof(sql) - strlen(sql), ", %d", i);
  assert_int_equal(lex(sql), PGS_OK);
  assert_int_equal(lexed.nparams, 1);
  assert_int_equal(lexed.nliterals, 200);
  for (int i = 0; i < lexed.nliterals; i++) {
    char expected[16];
    snprintf(expected, sizeof(expected), "$%d", i + 2);
    assert_memory_equal(lexed.normalized + lexed.literals[i].placeholder, expected,
                        strlen(expected));
    char v[16];
    snprintf(v, sizeof(v), "%d", i);
    assert_string_equal(value(i), v);
  }
}

static void test_parameter_to_literal(void **state) {
  assert_int_equal(lex("SELECT * FROM t WHERE a = $2 AND b = 'x' AND c = 10"), PGS_OK);
  assert_null(pgs_lexed_literal(&lexed, 0));
  assert_null(pgs_lexed_literal(&lexed, 1)); /* Bind values */
  assert_null(pgs_lexed_literal(&lexed, 2));
  const pgs_literal_t *lit = pgs_lexed_literal(&lexed, 3);
  assert_non_null(lit);
  assert_string_equal(lexed.values + lit->offset, "x");
  lit = pgs_lexed_literal(&lexed, 4);
  assert_non_null(lit);
  assert_memory_equal(lexed.values + lit->offset, "10", lit->len);
  assert_null(pgs_lexed_literal(&lexed, 5));
}

static void test_cast_syntax_stays(void **state) {
  norm("SELECT '42'::bigint, 7::int, CAST('x' AS text)",
       "SELECT $1::bigint, $2::int, CAST($3 AS text)");
}

static void test_placeholder_never_glues(void **state) {
  /* abc$1 would be an identifier, $12 another parameter. */
  norm("SELECT abc'x'", "SELECT abc $1");
  norm("SELECT 'x'abc", "SELECT $1 abc");
  norm("SELECT 'a'1", "SELECT $1 $2");
  norm("SELECT $1'x'", "SELECT $1 $2");
  norm("SELECT 'x'$1", "SELECT $2 $1");
}

static void test_param_too_large(void **state) {
  assert_int_equal(lex("SELECT $65535"), PGS_OK);
  assert_int_equal(lexed.nparams, 65535);
  assert_int_equal(lex("SELECT $65536"), PGS_ETOOBIG);
  assert_int_equal(lex("SELECT $65535, 1"), PGS_ETOOBIG);
}

static void test_too_many_literals(void **state) {
  size_t cap = (PGS_LEX_MAX_LITERALS + 10) * 4 + 64;
  char *sql = malloc(cap);
  strcpy(sql, "SELECT 0");
  size_t len = strlen(sql);
  for (int i = 1; i < PGS_LEX_MAX_LITERALS; i++)
    len += (size_t)snprintf(sql + len, cap - len, ",1");
  assert_int_equal(pgs_lex(sql, len, &lexed), PGS_OK);
  assert_int_equal(lexed.nliterals, PGS_LEX_MAX_LITERALS);
  len += (size_t)snprintf(sql + len, cap - len, ",1");
  assert_int_equal(pgs_lex(sql, len, &lexed), PGS_ETOOBIG);
  free(sql);
}

/* ---- comments and hints ---- */

static void test_line_comment_dropped(void **state) {
  norm("SELECT 1 -- the answer\nFROM t -- end", "SELECT $1 FROM t");
}

static void test_block_comment_dropped(void **state) {
  norm("SELECT/* a */1/**/FROM t", "SELECT $1 FROM t");
}

static void test_nested_block_comment(void **state) {
  norm("SELECT /* outer /* inner */ still 'comment' */ 1", "SELECT $1");
  assert_int_equal(lexed.nliterals, 1);
}

static void test_comment_between_operator_chars(void **state) {
  /* Removing the comment must not make "--" out of "- -". */
  norm("SELECT 1 -/**/-1", "SELECT $1 - -$2");
}

static void test_hint_in_block_comment(void **state) {
  norm("/* pgshard: shard=s1 */ SELECT * FROM t", "SELECT * FROM t");
  assert_string_equal(lexed.hint_shard, "s1");
}

static void test_hint_in_line_comment(void **state) {
  norm("SELECT 1 -- pgshard: shard=eu_west-1.b\n", "SELECT $1");
  assert_string_equal(lexed.hint_shard, "eu_west-1.b");
}

static void test_hint_spacing_and_case(void **state) {
  assert_int_equal(lex("SELECT /* app=x PgShard :  SHARD =  s2 */ 1"), PGS_OK);
  assert_string_equal(lexed.hint_shard, "s2");
}

static void test_hint_first_wins_and_is_reset(void **state) {
  assert_int_equal(lex("/* pgshard: shard=a */ SELECT /* pgshard: shard=b */ 1"), PGS_OK);
  assert_string_equal(lexed.hint_shard, "a");
  assert_int_equal(lex("SELECT 1"), PGS_OK);
  assert_string_equal(lexed.hint_shard, "");
}

static void test_hint_not_in_strings_or_incomplete(void **state) {
  assert_int_equal(lex("SELECT '/* pgshard: shard=s1 */'"), PGS_OK);
  assert_string_equal(lexed.hint_shard, "");
  assert_int_equal(lex("SELECT 1 /* pgshard: shard= */"), PGS_OK);
  assert_string_equal(lexed.hint_shard, "");
  assert_int_equal(lex("SELECT 1 /* pgshard shard=s1 */"), PGS_OK);
  assert_string_equal(lexed.hint_shard, "");
}

static void test_hint_name_is_bounded(void **state) {
  char sql[256] = "/* pgshard: shard=";
  for (int i = 0; i < 100; i++) strcat(sql, "x");
  strcat(sql, " */ SELECT 1");
  assert_int_equal(lex(sql), PGS_OK);
  assert_int_equal(strlen(lexed.hint_shard), sizeof(lexed.hint_shard) - 1);
}

/* ---- ORDER BY / GROUP BY positions ---- */

static void test_positions_after_all_distinct_and_parentheses(void **state) {
  /* Whole items name output columns: GROUP BY DISTINCT 1 and ORDER BY (2)
   * too, since the grammar drops the parentheses (found by
   * test_lexer_parser). Parts of an expression stay literals. */
  norm("SELECT a FROM t GROUP BY DISTINCT 1, (2) ORDER BY ((1)) DESC",
       "SELECT a FROM t GROUP BY DISTINCT 1, (2) ORDER BY ((1)) DESC");
  assert_int_equal(lexed.nliterals, 0);
  norm("SELECT a FROM t GROUP BY ALL 1", "SELECT a FROM t GROUP BY ALL 1");
  norm("SELECT a FROM t ORDER BY a + (1), f(2), (SELECT 3)",
       "SELECT a FROM t ORDER BY a + ($1), f($2), (SELECT $3)");
  /* Past int4 a number is a float to the scanner, never a position. */
  norm("SELECT a FROM t ORDER BY 2147483647, 2147483648",
       "SELECT a FROM t ORDER BY 2147483647, $1");
  /* ALL and DISTINCT only at the start of the list. */
  norm("SELECT a FROM t ORDER BY 1 DESC, a = ALL (2)",
       "SELECT a FROM t ORDER BY 1 DESC, a = ALL ($1)");
}

/* ---- statements ---- */

static void test_statement_count(void **state) {
  norm("SELECT 1; SELECT 2;", "SELECT $1; SELECT $2");
  assert_int_equal(lexed.nstatements, 2);
  norm(";; SELECT 1 ; ; ;SELECT 2", "SELECT $1; SELECT $2");
  assert_int_equal(lexed.nstatements, 2);
  norm("SELECT 1 -- x\n;", "SELECT $1");
  assert_int_equal(lexed.nstatements, 1);
}

static void test_empty_and_comment_only(void **state) {
  norm("", "");
  assert_int_equal(lexed.nstatements, 0);
  norm("  -- nothing\n /* at all */ ; ", "");
  assert_int_equal(lexed.nstatements, 0);
  assert_int_equal(lexed.hash, XXH3_64bits("", 0));
}

/* ---- errors ---- */

static void test_unterminated(void **state) {
  static const char *const bad[] = {
      "SELECT 'abc",  "SELECT 'abc''",      "SELECT \"abc", "SELECT /* abc", "SELECT /* /* */",
      "SELECT $$abc", "SELECT $a$ abc $b$", "SELECT B'101", "SELECT U&'abc", "SELECT 'a'\n'b",
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(bad); i++)
    if (lex(bad[i]) != PGS_EINVAL) fail_msg("expected EINVAL for %s", bad[i]);
}

static void test_nul_byte(void **state) {
  assert_int_equal(pgs_lex("SELECT 1\0 2", 11, &lexed), PGS_EINVAL);
}

static void test_dollar_alone_is_a_char(void **state) {
  /* Not a parameter nor a quote: passed on, the server will complain. */
  norm("SELECT $ + $a", "SELECT $ + $a");
  assert_int_equal(lexed.nliterals, 0);
}

/* ---- the cache's property ---- */

static void test_same_shape_same_text_and_hash(void **state) {
  static const char *const same[] = {
      "SELECT * FROM users WHERE id = 1 AND name = 'a'",
      "SELECT * FROM users WHERE id = 987654321 AND name = 'bob''s'",
      "SELECT  *  FROM users\n WHERE id = 1.5e3 -- why not\n AND name = E'\\x41'",
      "/* pgshard: shard=s1 */ SELECT * FROM users WHERE id = $$x$$ AND name = 'a';",
  };
  assert_int_equal(lex(same[0]), PGS_OK);
  uint64_t hash = lexed.hash;
  char first[128];
  snprintf(first, sizeof(first), "%s", lexed.normalized);
  assert_int_equal(hash, XXH3_64bits(lexed.normalized, lexed.normalized_len));
  for (size_t i = 1; i < PGS_ARRAY_LEN(same); i++) {
    assert_int_equal(lex(same[i]), PGS_OK);
    assert_string_equal(lexed.normalized, first);
    assert_int_equal(lexed.hash, hash);
  }
}

static void test_different_shape_different_hash(void **state) {
  assert_int_equal(lex("SELECT * FROM users WHERE id = 1"), PGS_OK);
  uint64_t a = lexed.hash;
  assert_int_equal(lex("SELECT * FROM users WHERE uid = 1"), PGS_OK);
  assert_int_not_equal(lexed.hash, a);
  assert_int_equal(lex("SELECT * FROM users WHERE id = 1 LIMIT 1"), PGS_OK);
  assert_int_not_equal(lexed.hash, a);
}

static void test_literal_and_parameter_share_a_text(void **state) {
  /* Both become "$1": the plan names parameter 1, which is the Bind value
   * in one and literal 0 in the other (nparams tells them apart). */
  assert_int_equal(lex("SELECT * FROM users WHERE id = 1"), PGS_OK);
  uint64_t a = lexed.hash;
  assert_int_equal(lexed.nparams, 0);
  assert_int_equal(lex("SELECT * FROM users WHERE id = $1"), PGS_OK);
  assert_int_equal(lexed.hash, a);
  assert_int_equal(lexed.nparams, 1);
  assert_int_equal(lexed.nliterals, 0);
}

static void test_buffers_reused(void **state) {
  pgs_lexed_t own;
  pgs_lex_init(&own);
  const char *sql = "SELECT * FROM users WHERE id = 42 AND name = 'x'";
  assert_int_equal(pgs_lex(sql, strlen(sql), &own), PGS_OK);
  char *text = own.normalized, *values = own.values;
  pgs_literal_t *literals = own.literals;
  for (int i = 0; i < 100; i++) {
    assert_int_equal(pgs_lex(sql, strlen(sql), &own), PGS_OK);
    assert_ptr_equal(own.normalized, text);
    assert_ptr_equal(own.values, values);
    assert_ptr_equal(own.literals, literals);
  }
  /* A longer statement grows them; a shorter one after it keeps them. */
  char big[8192] = "SELECT 1";
  for (int i = 0; i < 1000; i++) strcat(big, ",'v'");
  assert_int_equal(pgs_lex(big, strlen(big), &own), PGS_OK);
  assert_int_equal(own.nliterals, 1001);
  size_t cap = own.normalized_cap;
  assert_int_equal(pgs_lex(sql, strlen(sql), &own), PGS_OK);
  assert_int_equal(own.normalized_cap, cap);
  assert_string_equal(own.normalized, "SELECT * FROM users WHERE id = $1 AND name = $2");
  pgs_lex_free(&own);
}

/* "a;b" normalises to "a; b": the space stands for no input byte, so many
 * statements without blanks after their ';' must still fit the buffer
 * (ASan caught it overflowing by one byte per ';'). */
static void test_many_statements_without_blanks(void **state) {
  static char sql[9 * 3000 + 1];
  for (int n = 50; n <= 3000; n = n * 3 / 2) {
    pgs_lexed_t fresh;
    pgs_lex_init(&fresh);
    sql[0] = '\0';
    for (int i = 0; i < n; i++) strcat(sql + 9 * i, "SELECT c;");
    assert_int_equal(pgs_lex(sql, strlen(sql), &fresh), PGS_OK);
    assert_int_equal(fresh.nstatements, n);
    assert_int_equal(fresh.normalized_len, 9 * (size_t)n + (size_t)(n - 1) - 1);
    pgs_lex_free(&fresh);
  }
}

static void test_chain_counts_left_deep_operators(void **state) {
  assert_int_equal(lex("SELECT a || b || c FROM t JOIN u ON t.x = u.y"), PGS_OK);
  assert_int_equal(lexed.chain, 4); /* ||, ||, JOIN, = */
  assert_int_equal(lex("SELECT f(g(h(1)))"), PGS_OK);
  assert_int_equal(lexed.chain, 0);
  assert_int_equal(lex("SELECT 1 UNION SELECT 2 EXCEPT SELECT x::int COLLATE \"C\""), PGS_OK);
  assert_int_equal(lexed.chain, 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_literals),
      cmocka_unit_test(test_identifiers_and_keywords_untouched),
      cmocka_unit_test(test_quoted_identifier_with_doubled_quote),
      cmocka_unit_test(test_unicode_quoted_identifier),
      cmocka_unit_test(test_identifier_with_dollar),
      cmocka_unit_test(test_operators_kept),
      cmocka_unit_test(test_whitespace_collapsed),
      cmocka_unit_test(test_integer),
      cmocka_unit_test(test_decimals_and_exponents),
      cmocka_unit_test(test_exponent_needs_digits),
      cmocka_unit_test(test_hex_is_not_a_number_in_pg15),
      cmocka_unit_test(test_number_then_identifier),
      cmocka_unit_test(test_negative_number),
      cmocka_unit_test(test_number_in_identifier_is_not_a_literal),
      cmocka_unit_test(test_string),
      cmocka_unit_test(test_string_doubled_quote),
      cmocka_unit_test(test_empty_string),
      cmocka_unit_test(test_standard_string_backslash_is_literal),
      cmocka_unit_test(test_string_continuation),
      cmocka_unit_test(test_string_continuation_with_line_comment),
      cmocka_unit_test(test_strings_on_one_line_are_two),
      cmocka_unit_test(test_semicolon_in_string),
      cmocka_unit_test(test_comment_markers_in_string),
      cmocka_unit_test(test_escape_string_simple_escapes),
      cmocka_unit_test(test_escape_string_lowercase_prefix),
      cmocka_unit_test(test_escape_string_doubled_quote),
      cmocka_unit_test(test_escape_string_hex),
      cmocka_unit_test(test_escape_string_octal),
      cmocka_unit_test(test_escape_string_unicode),
      cmocka_unit_test(test_escape_string_long_unicode),
      cmocka_unit_test(test_escape_string_surrogate_pair),
      cmocka_unit_test(test_escape_string_other_chars_stand_for_themselves),
      cmocka_unit_test(test_escape_string_continuation),
      cmocka_unit_test(test_escape_string_errors),
      cmocka_unit_test(test_bit_strings_kept_verbatim),
      cmocka_unit_test(test_unicode_and_national_strings_kept_verbatim),
      cmocka_unit_test(test_bit_string_doubled_quote_ends_it),
      cmocka_unit_test(test_verbatim_continuation_loses_its_comment),
      cmocka_unit_test(test_hint_in_continuation_comment),
      cmocka_unit_test(test_dollar_quote),
      cmocka_unit_test(test_dollar_quote_with_tag),
      cmocka_unit_test(test_dollar_quote_tags_must_match),
      cmocka_unit_test(test_dollar_quote_empty),
      cmocka_unit_test(test_dollar_digit_is_a_parameter_not_a_tag),
      cmocka_unit_test(test_dollar_quote_after_placeholder),
      cmocka_unit_test(test_params_highest_counts),
      cmocka_unit_test(test_literals_numbered_after_params),
      cmocka_unit_test(test_literal_before_param_renumbered),
      cmocka_unit_test(test_placeholder_offsets),
      cmocka_unit_test(test_many_literals_renumbered),
      cmocka_unit_test(test_parameter_to_literal),
      cmocka_unit_test(test_cast_syntax_stays),
      cmocka_unit_test(test_placeholder_never_glues),
      cmocka_unit_test(test_param_too_large),
      cmocka_unit_test(test_too_many_literals),
      cmocka_unit_test(test_line_comment_dropped),
      cmocka_unit_test(test_block_comment_dropped),
      cmocka_unit_test(test_nested_block_comment),
      cmocka_unit_test(test_comment_between_operator_chars),
      cmocka_unit_test(test_hint_in_block_comment),
      cmocka_unit_test(test_hint_in_line_comment),
      cmocka_unit_test(test_hint_spacing_and_case),
      cmocka_unit_test(test_hint_first_wins_and_is_reset),
      cmocka_unit_test(test_hint_not_in_strings_or_incomplete),
      cmocka_unit_test(test_hint_name_is_bounded),
      cmocka_unit_test(test_positions_after_all_distinct_and_parentheses),
      cmocka_unit_test(test_statement_count),
      cmocka_unit_test(test_empty_and_comment_only),
      cmocka_unit_test(test_unterminated),
      cmocka_unit_test(test_nul_byte),
      cmocka_unit_test(test_dollar_alone_is_a_char),
      cmocka_unit_test(test_same_shape_same_text_and_hash),
      cmocka_unit_test(test_different_shape_different_hash),
      cmocka_unit_test(test_literal_and_parameter_share_a_text),
      cmocka_unit_test(test_buffers_reused),
      cmocka_unit_test(test_chain_counts_left_deep_operators),
      cmocka_unit_test(test_many_statements_without_blanks),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
