/*
 * shardmap.c — shard map lookups and key routing. See shardmap.h.
 */
#include <string.h>
#include <strings.h>

#include "pgshard/config.h"
#include "pgshard/shardmap.h"

const pgs_table_t *pgs_shardmap_find_table(const pgs_database_t *db, const char *name) {
  for (int i = 0; i < db->shardmap.ntables; i++)
    if (!strcmp(db->shardmap.tables[i].name, name)) return &db->shardmap.tables[i];
  return NULL;
}

int pgs_shardmap_find_shard(const pgs_database_t *db, const char *name) {
  for (int i = 0; i < db->nshards; i++)
    if (!strcmp(db->shards[i].name, name)) return i;
  return -1;
}
