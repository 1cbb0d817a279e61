/*
 * fuzz_lexer_parser.c — libFuzzer harness: the digest lexer against
 * PostgreSQL 15's scanner and grammar (libpg_query) on arbitrary text.
 * tests/unit/lexer_parser_check.h states the rule; in short, whenever
 * pgs_lex accepts a text libpg_query parses, the lexer's literals must be
 * exactly the scanner's constants (start, end, kind; B''/X''/N''/U&'' and
 * ORDER BY / GROUP BY integers kept verbatim), the statement count, the
 * highest $n and the hint must be the scanner's, and the text with the
 * lexer's values put back must parse to the same tree; and pgs_lex may
 * refuse only what libpg_query refuses too. Any disagreement aborts with
 * the text and the reason. Each input is tried as a whole text and as the
 * right side of a WHERE k = ..., so that a mutated literal still makes a
 * statement that parses.
 *
 * Build as tests/fuzz/README.md says, then (a scratch copy of the seeds
 * first, so the checked-in corpus stays small):
 *   cmake --build build-fuzz --target fuzz_lexer_parser
 *   mkdir -p /tmp/corpus && cp -r tests/fuzz/corpus/lexer_parser /tmp/corpus/
 *   build-fuzz/fuzz_lexer_parser -max_total_time=300 -max_len=2048 \
 *       -dict=tests/fuzz/lexer_parser.dict /tmp/corpus/lexer_parser
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/lexer_parser_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(pgs_lexed_t *lexed, const char *prefix, const uint8_t *data, size_t size) {
  size_t plen = strlen(prefix);
  char *sql = malloc(plen + size + 1);
  memcpy(sql, prefix, plen);
  memcpy(sql + plen, data, size);
  sql[plen + size] = '\0';
  char why[512];
  if (!lpc_check(sql, plen + size, lexed, why, sizeof(why), NULL)) {
    fprintf(stderr, "lexer and parser disagree on:\n%s\n-> %s\n", sql, why);
    abort();
  }
  free(sql);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static pgs_lexed_t lexed;
  static bool ready;
  if (!ready) {
    pgs_lex_init(&lexed);
    ready = true;
  }
  /* libpg_query takes a C string; the lexer refuses NUL bytes anyway. */
  if (memchr(data, '\0', size) != NULL) return 0;
  check(&lexed, "", data, size);
  /* The input as an expression too: a lone literal, or one followed by
   * more of a statement, parses far more often than random text. */
  check(&lexed, "SELECT * FROM t WHERE k = ", data, size);
  return 0;
}
