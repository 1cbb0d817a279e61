/*
 * fuzz_lexer.c — libFuzzer harness for statement analysis: arbitrary bytes
 * through pgs_lex (one pgs_lexed_t reused across inputs, as a worker reuses
 * it), then, when the lexer accepts them, through pgs_analyze and a small
 * plan cache for a fixed database of three sharded tables. It checks what
 * the proxy relies on: the normalised text is a C string of the stated
 * length with the stated hash, every literal lies inside the values buffer
 * and its placeholder reads $N with N = nparams + 1 + i, and every key in a
 * plan names a parameter the statement has.
 *
 * Build as tests/fuzz/README.md says, then (a scratch copy of the seeds
 * first, so the checked-in corpus stays small):
 *   cmake --build build-fuzz --target fuzz_lexer
 *   mkdir -p /tmp/corpus && cp -r tests/fuzz/corpus/lexer /tmp/corpus/
 *   build-fuzz/fuzz_lexer -max_total_time=60 -max_len=4096 /tmp/corpus/lexer
 * A dictionary of SQL keywords (-dict=FILE) gets it past the lexer into
 * the analyser much sooner.
 */
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static pgs_table_t tables[] = {
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT},
    {.name = "orders", .column = "user_id", .type = PGS_TYPE_BIGINT},
    {.name = "t", .column = "a", .type = PGS_TYPE_TEXT},
};

static void check_keys(const pgs_key_ref_t *keys, int n, int max_param) {
  for (int i = 0; i < n; i++) {
    if (keys[i].table == NULL || keys[i].param < 1 || keys[i].param > max_param) abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static pgs_lexed_t lexed;
  static pgs_plan_cache_t *cache;
  static pgs_database_t db;
  if (cache == NULL) {
    pgs_lex_init(&lexed);
    cache = pgs_plan_cache_new(4);
    db.name = "fuzz";
    db.shardmap.tables = tables;
    db.shardmap.ntables = (int)(sizeof(tables) / sizeof(tables[0]));
  }

  if (pgs_lex((const char *)data, size, &lexed) != PGS_OK) return 0;

  if (strlen(lexed.normalized) != lexed.normalized_len) abort();
  if (lexed.hash != XXH3_64bits(lexed.normalized, lexed.normalized_len)) abort();
  if (lexed.nstatements < 0 || lexed.nparams < 0 || lexed.nliterals < 0) abort();
  if (lexed.nliterals > PGS_LEX_MAX_LITERALS || lexed.nparams + lexed.nliterals > 65535) abort();
  for (int i = 0; i < lexed.nliterals; i++) {
    const pgs_literal_t *lit = &lexed.literals[i];
    if ((size_t)lit->offset + lit->len >= lexed.values_len) abort();
    if (lexed.values[lit->offset + lit->len] != '\0') abort();
    char expected[16];
    int n = snprintf(expected, sizeof(expected), "$%d", lexed.nparams + 1 + i);
    if (lit->placeholder + (size_t)n > lexed.normalized_len) abort();
    if (memcmp(lexed.normalized + lit->placeholder, expected, (size_t)n) != 0) abort();
    char after = lexed.normalized[lit->placeholder + (size_t)n];
    if (after >= '0' && after <= '9') abort(); /* glued onto a digit */
  }

  pgs_plan_t *plan = pgs_plan_cache_get(cache, &db, &lexed);
  int max_param = lexed.nparams + lexed.nliterals;
  if (plan->refcount < 1) abort();
  check_keys(plan->keys, plan->nkeys, max_param);
  check_keys(plan->rows, plan->nrows, max_param);
  if (plan->target == PGS_TARGET_KEYS && plan->nkeys == 0) abort();
  if (plan->nrows > 0 && plan->target != PGS_TARGET_ROWS) abort();
  if (plan->refuse_sqlstate[0] != '\0' &&
      (strlen(plan->refuse_sqlstate) != 5 || strncmp(plan->refuse_message, "pgshard: ", 9) != 0))
    abort();
  pgs_plan_unref(plan);
  return 0;
}
