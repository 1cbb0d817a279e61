/*
 * strmap.h — a string-keyed hash map (separate chaining, XXH3 hashes),
 * used for prepared statements per client and per server. Keys are copied;
 * values are owned by the caller.
 */
#ifndef PGSHARD_STRMAP_H
#define PGSHARD_STRMAP_H

#include "pgshard/common.h"

typedef struct pgs_strmap_entry {
  struct pgs_strmap_entry *next;
  uint64_t hash;
  void *value;
  char key[];
} pgs_strmap_entry_t;

typedef struct pgs_strmap {
  pgs_strmap_entry_t **buckets;
  uint32_t nbuckets; /* a power of two, or 0 */
  uint32_t count;
} pgs_strmap_t;

void pgs_strmap_init(pgs_strmap_t *map);
/* Free every entry, calling FREE_VALUE (if not NULL) on each value. */
void pgs_strmap_free(pgs_strmap_t *map, void (*free_value)(void *));
void *pgs_strmap_get(const pgs_strmap_t *map, const char *key);
/* Insert or replace; returns the previous value (or NULL). */
void *pgs_strmap_put(pgs_strmap_t *map, const char *key, void *value);
/* Remove; returns the value (or NULL if absent). */
void *pgs_strmap_remove(pgs_strmap_t *map, const char *key);
bool pgs_strmap_contains(const pgs_strmap_t *map, const char *key);

#endif
