/*
 * strmap.c — see strmap.h. The table doubles when the load passes 1.
 */
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/strmap.h"

void pgs_strmap_init(pgs_strmap_t *map) { memset(map, 0, sizeof(*map)); }

void pgs_strmap_free(pgs_strmap_t *map, void (*free_value)(void *)) {
  for (size_t i = 0; i < map->nbuckets; i++) {
    pgs_strmap_entry_t *e = map->buckets[i];
    while (e) {
      pgs_strmap_entry_t *next = e->next;
      if (free_value) free_value(e->value);
      free(e);
      e = next;
    }
  }
  free(map->buckets);
  memset(map, 0, sizeof(*map));
}

static pgs_strmap_entry_t **find(const pgs_strmap_t *map, const char *key, uint64_t hash) {
  if (map->nbuckets == 0) return NULL;
  pgs_strmap_entry_t **slot = &map->buckets[hash & (map->nbuckets - 1)];
  while (*slot && ((*slot)->hash != hash || strcmp((*slot)->key, key) != 0)) slot = &(*slot)->next;
  return slot;
}

static void grow(pgs_strmap_t *map) {
  size_t n = map->nbuckets ? map->nbuckets * 2 : 16;
  pgs_strmap_entry_t **buckets = pgs_xcalloc(n, sizeof(*buckets));
  for (size_t i = 0; i < map->nbuckets; i++) {
    pgs_strmap_entry_t *e = map->buckets[i];
    while (e) {
      pgs_strmap_entry_t *next = e->next;
      e->next = buckets[e->hash & (n - 1)];
      buckets[e->hash & (n - 1)] = e;
      e = next;
    }
  }
  free(map->buckets);
  map->buckets = buckets;
  map->nbuckets = (uint32_t)n;
}

void *pgs_strmap_get(const pgs_strmap_t *map, const char *key) {
  pgs_strmap_entry_t **slot = find(map, key, XXH3_64bits(key, strlen(key)));
  return slot && *slot ? (*slot)->value : NULL;
}

bool pgs_strmap_contains(const pgs_strmap_t *map, const char *key) {
  pgs_strmap_entry_t **slot = find(map, key, XXH3_64bits(key, strlen(key)));
  return slot && *slot;
}

void *pgs_strmap_put(pgs_strmap_t *map, const char *key, void *value) {
  size_t klen = strlen(key);
  uint64_t hash = XXH3_64bits(key, klen);
  pgs_strmap_entry_t **slot = find(map, key, hash);
  if (slot && *slot) {
    void *old = (*slot)->value;
    (*slot)->value = value;
    return old;
  }
  if (map->count + 1 > map->nbuckets) {
    grow(map);
  }
  pgs_strmap_entry_t *e = pgs_xmalloc(sizeof(*e) + klen + 1);
  memcpy(e->key, key, klen + 1);
  e->hash = hash;
  e->value = value;
  e->next = map->buckets[hash & (map->nbuckets - 1)];
  map->buckets[hash & (map->nbuckets - 1)] = e;
  map->count++;
  return NULL;
}

void *pgs_strmap_remove(pgs_strmap_t *map, const char *key) {
  pgs_strmap_entry_t **slot = find(map, key, XXH3_64bits(key, strlen(key)));
  if (slot == NULL || *slot == NULL) return NULL;
  pgs_strmap_entry_t *e = *slot;
  void *value = e->value;
  *slot = e->next;
  free(e);
  map->count--;
  return value;
}
