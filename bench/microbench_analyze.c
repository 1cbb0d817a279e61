/*
 * microbench_analyze.c — what statement analysis costs per statement on
 * the proxy's hot path (the goal: at most 1 µs on a plan cache hit).
 *
 * For a few realistic statements, each in simple-protocol form (literals)
 * and extended form ($n), it measures:
 *   lex   pgs_lex alone
 *   hit   pgs_lex + pgs_plan_cache_get (a hit) + pgs_plan_unref
 *   route hit + pgs_route_plan over two hash shards (keys typed, encoded,
 *         hashed; Bind values in text for the $n forms): the whole hot path
 *   miss  pgs_analyze: the libpg_query parse and tree walk a miss costs
 * The literal values change on every iteration (1024 variants, rotated), so
 * the lexer and hash see new input while the shape, and the plan, stay.
 *
 * Usage: microbench_analyze [ITERATIONS]   (default 1000000; misses run
 * ITERATIONS / 100). Prints a table; exits 1 if any hit costs over 1 µs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/route.h"

#define VARIANTS 1024

static pgs_table_t tables[] = {
    {.name = "pgbench_accounts", .column = "aid", .type = PGS_TYPE_INT},
    {.name = "users", .column = "id", .type = PGS_TYPE_BIGINT},
    {.name = "orders", .column = "user_id", .type = PGS_TYPE_BIGINT},
};

typedef struct bench {
  const char *name;
  const char *format; /* printf format; %d are replaced by varying numbers */
} bench_t;

static const bench_t benches[] = {
    {"pgbench -S select", "SELECT abalance FROM pgbench_accounts WHERE aid = %d;"},
    {"  extended ($1)", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"},
    {"UPDATE by key", "UPDATE pgbench_accounts SET abalance = abalance + %d WHERE aid = %d;"},
    {"  extended ($1)", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"},
    {"3-row INSERT",
     "INSERT INTO users (id, name, email, created_at) VALUES "
     "(%d, 'alice', 'alice@example.org', '2024-01-01 10:00:00+00'), "
     "(%d, 'bob', 'bob@example.org', '2024-01-02 11:30:00+00'), "
     "(%d, 'carol', 'carol@example.org', '2024-01-03 12:45:00+00')"},
    {"  extended ($1)",
     "INSERT INTO users (id, name, email, created_at) VALUES ($1, $2, $3, $4), "
     "($5, $6, $7, $8), ($9, $10, $11, $12)"},
    {"join on keys",
     "SELECT u.name, o.id, o.total FROM users u JOIN orders o ON o.user_id = u.id "
     "WHERE u.id = %d AND o.status = 'open' ORDER BY o.created_at DESC LIMIT 10"},
    {"  extended ($1)",
     "SELECT u.name, o.id, o.total FROM users u JOIN orders o ON o.user_id = u.id "
     "WHERE u.id = $1 AND o.status = $2 ORDER BY o.created_at DESC LIMIT $3"},
};

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The statement with its %d filled from SEED (at most 4 of them). */
static char *variant(const char *format, int seed) {
  char buf[1024];
  int a = 1 + (seed * 7919) % 100000, b = 1 + (seed * 104729) % 100000;
  snprintf(buf, sizeof(buf), format, a, b, a + 1, b + 1);
  return strdup(buf);
}

static volatile size_t sink; /* keeps the compiler from dropping the work */

int main(int argc, char **argv) {
  long iterations = argc > 1 ? atol(argv[1]) : 1000000;
  if (iterations < 100) iterations = 100;
  long miss_iterations = iterations / 100;

  static pgs_shard_t shards[] = {{.name = "s0"}, {.name = "s1"}};
  pgs_database_t db = {
      .name = "bench", .shards = shards, .nshards = 2, .cross_shard_writes = PGS_XWRITE_ALLOW};
  db.shardmap.tables = tables;
  db.shardmap.ntables = (int)(sizeof(tables) / sizeof(tables[0]));
  pgs_lexed_t lexed;
  pgs_lex_init(&lexed);
  pgs_plan_cache_t *cache = pgs_plan_cache_new(1024);

  /* Bind values for the $n forms: every parameter the text "12345". */
  static const uint8_t value[] = "12345";
  const uint8_t *pdata[16];
  int32_t plen[16];
  int16_t pfmt[16];
  for (int i = 0; i < 16; i++) {
    pdata[i] = value;
    plen[i] = 5;
    pfmt[i] = 0;
  }
  pgs_param_values_t params = {.n = 16, .data = pdata, .len = plen, .format = pfmt};
  pgs_route_session_t session = {.hint_shard = -1};
  int row_shard[16];

  printf("%-20s %6s %9s %9s %9s %10s  %s\n", "statement", "bytes", "lex ns", "hit ns", "route ns",
         "miss ns", "plan");
  int over = 0;
  for (size_t bi = 0; bi < sizeof(benches) / sizeof(benches[0]); bi++) {
    const bench_t *b = &benches[bi];
    char *texts[VARIANTS];
    size_t lens[VARIANTS];
    for (int v = 0; v < VARIANTS; v++) {
      texts[v] = variant(b->format, v);
      lens[v] = strlen(texts[v]);
    }

    /* Warm the cache and the lexer's buffers. */
    if (pgs_lex(texts[0], lens[0], &lexed) != PGS_OK) return 2;
    pgs_plan_t *plan = pgs_plan_cache_get(cache, &db, &lexed);
    const char *target = plan->target == PGS_TARGET_KEYS   ? "keys"
                         : plan->target == PGS_TARGET_ROWS ? "rows"
                         : plan->target == PGS_TARGET_ALL  ? "all"
                                                           : "any";
    int nkeys = plan->target == PGS_TARGET_ROWS ? plan->nrows : plan->nkeys;
    pgs_plan_unref(plan);

    double t0 = now_ns();
    for (long i = 0; i < iterations; i++) {
      int v = (int)(i & (VARIANTS - 1));
      if (pgs_lex(texts[v], lens[v], &lexed) != PGS_OK) return 2;
      sink += lexed.hash;
    }
    double lex_ns = (now_ns() - t0) / (double)iterations;

    size_t hits_before = pgs_plan_cache_hits(cache);
    t0 = now_ns();
    for (long i = 0; i < iterations; i++) {
      int v = (int)(i & (VARIANTS - 1));
      if (pgs_lex(texts[v], lens[v], &lexed) != PGS_OK) return 2;
      pgs_plan_t *p = pgs_plan_cache_get(cache, &db, &lexed);
      sink += (size_t)p->nkeys;
      pgs_plan_unref(p);
    }
    double hit_ns = (now_ns() - t0) / (double)iterations;
    if (pgs_plan_cache_hits(cache) - hits_before != (size_t)iterations) {
      fprintf(stderr, "%s: not every lookup hit\n", b->name);
      return 2;
    }

    t0 = now_ns();
    int routed = -1;
    for (long i = 0; i < iterations; i++) {
      int v = (int)(i & (VARIANTS - 1));
      if (pgs_lex(texts[v], lens[v], &lexed) != PGS_OK) return 2;
      pgs_plan_t *p = pgs_plan_cache_get(cache, &db, &lexed);
      pgs_route_t rt = {.row_shard = row_shard};
      pgs_route_plan(&db, p, &lexed, lexed.nparams ? &params : NULL, &session, &rt);
      routed = rt.kind;
      sink += rt.shards;
      pgs_plan_unref(p);
    }
    double route_ns = (now_ns() - t0) / (double)iterations;
    if (routed == PGS_ROUTE_REFUSE) {
      fprintf(stderr, "%s: refused\n", b->name);
      return 2;
    }

    t0 = now_ns();
    for (long i = 0; i < miss_iterations; i++) {
      int v = (int)(i & (VARIANTS - 1));
      if (pgs_lex(texts[v], lens[v], &lexed) != PGS_OK) return 2;
      pgs_plan_t *p = pgs_analyze(&db, &lexed);
      sink += (size_t)p->nkeys;
      pgs_plan_unref(p);
    }
    double miss_ns = (now_ns() - t0) / (double)miss_iterations;

    printf("%-20s %6zu %9.0f %9.0f %9.0f %10.0f  %s %d\n", b->name, lens[0], lex_ns, hit_ns,
           route_ns, miss_ns, target, nkeys);
    if (route_ns > 1000.0) over++;
    for (int v = 0; v < VARIANTS; v++) free(texts[v]);
  }
  printf(
      "\n%ld iterations per hit/lex figure, %ld per miss; target: route (the hot path) <= 1000 "
      "ns\n",
      iterations, miss_iterations);
  pgs_plan_cache_free(cache);
  pgs_lex_free(&lexed);
  return over ? 1 : 0;
}
