/*
 * plancache.c — the plan cache (analyze.h): a bounded LRU of analysed plans
 * keyed by (database, normalised text), so that a statement seen before
 * costs one lexer pass and one lookup instead of a parse.
 *
 * A chained hash table (power-of-two buckets, at least twice the capacity)
 * finds entries by the lexer's XXH3 hash mixed with the database pointer;
 * the full text is compared on a hash match, so a collision costs a memcmp,
 * never a wrong plan. A doubly linked list keeps the entries in recency
 * order, most recent first; a miss beyond capacity evicts the last.
 *
 * Plans are reference-counted: the cache holds one reference per entry and
 * every pgs_plan_cache_get hands the caller another, so evicting or
 * clearing never frees a plan a caller still uses. One cache per worker:
 * nothing here is thread-safe, by design.
 */
#include <string.h>

#include "pgshard/analyze.h"

typedef struct entry {
  struct entry *chain;         /* next in the same bucket */
  struct entry *newer, *older; /* recency list */
  const struct pgs_database *db;
  uint64_t hash;
  size_t len;
  pgs_plan_t *plan;
  char text[]; /* the normalised text, NUL-terminated */
} entry_t;

struct pgs_plan_cache {
  size_t capacity;
  size_t count;
  entry_t **buckets;
  size_t mask; /* buckets - 1 */
  entry_t *newest;
  entry_t *oldest;
  size_t hits;
  size_t misses;
};

static size_t bucket_of(const pgs_plan_cache_t *cache, const struct pgs_database *db,
                        uint64_t hash) {
  /* Databases are few and long-lived; mixing the pointer in keeps two
   * databases' copies of a statement in different buckets. */
  uint64_t h = hash ^ ((uint64_t)(uintptr_t)db * 0x9E3779B97F4A7C15ull);
  return (size_t)(h ^ (h >> 29)) & cache->mask;
}

pgs_plan_cache_t *pgs_plan_cache_new(size_t capacity) {
  pgs_plan_cache_t *cache = pgs_xcalloc(1, sizeof(*cache));
  cache->capacity = capacity;
  size_t nbuckets = 16;
  while (nbuckets < capacity * 2) nbuckets *= 2;
  cache->buckets = pgs_xcalloc(nbuckets, sizeof(*cache->buckets));
  cache->mask = nbuckets - 1;
  return cache;
}

static void list_unlink(pgs_plan_cache_t *cache, entry_t *e) {
  if (e->newer)
    e->newer->older = e->older;
  else
    cache->newest = e->older;
  if (e->older)
    e->older->newer = e->newer;
  else
    cache->oldest = e->newer;
  e->newer = e->older = NULL;
}

static void list_push_front(pgs_plan_cache_t *cache, entry_t *e) {
  e->newer = NULL;
  e->older = cache->newest;
  if (cache->newest) cache->newest->newer = e;
  cache->newest = e;
  if (cache->oldest == NULL) cache->oldest = e;
}

static void evict(pgs_plan_cache_t *cache, entry_t *e) {
  entry_t **slot = &cache->buckets[bucket_of(cache, e->db, e->hash)];
  while (*slot != e) slot = &(*slot)->chain;
  *slot = e->chain;
  list_unlink(cache, e);
  pgs_plan_unref(e->plan);
  free(e);
  cache->count--;
}

pgs_plan_t *pgs_plan_cache_get(pgs_plan_cache_t *cache, const struct pgs_database *db,
                               const pgs_lexed_t *lexed) {
  size_t b = bucket_of(cache, db, lexed->hash);
  for (entry_t *e = cache->buckets[b]; e; e = e->chain) {
    if (e->hash != lexed->hash || e->db != db || e->len != lexed->normalized_len ||
        memcmp(e->text, lexed->normalized, e->len) != 0)
      continue;
    cache->hits++;
    if (cache->newest != e) {
      list_unlink(cache, e);
      list_push_front(cache, e);
    }
    e->plan->refcount++;
    return e->plan;
  }

  cache->misses++;
  pgs_plan_t *plan = pgs_analyze(db, lexed);
  /* Unparseable texts are not kept: a typo must not push out good plans,
   * and such a plan says nothing worth remembering. */
  if (plan->parse_failed || cache->capacity == 0) return plan;
  if (cache->count >= cache->capacity) evict(cache, cache->oldest);

  entry_t *e = pgs_xmalloc(sizeof(*e) + lexed->normalized_len + 1);
  e->db = db;
  e->hash = lexed->hash;
  e->len = lexed->normalized_len;
  memcpy(e->text, lexed->normalized, e->len);
  e->text[e->len] = '\0';
  e->plan = plan;
  plan->refcount++; /* the cache's reference */
  e->chain = cache->buckets[b];
  cache->buckets[b] = e;
  list_push_front(cache, e);
  cache->count++;
  return plan;
}

size_t pgs_plan_cache_hits(const pgs_plan_cache_t *cache) { return cache->hits; }

size_t pgs_plan_cache_misses(const pgs_plan_cache_t *cache) { return cache->misses; }

size_t pgs_plan_cache_count(const pgs_plan_cache_t *cache) { return cache->count; }

void pgs_plan_cache_clear(pgs_plan_cache_t *cache) {
  while (cache->oldest) evict(cache, cache->oldest);
}

void pgs_plan_cache_free(pgs_plan_cache_t *cache) {
  if (cache == NULL) return;
  pgs_plan_cache_clear(cache);
  free(cache->buckets);
  free(cache);
}
