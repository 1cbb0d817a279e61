/*
 * snapshot.c — the health snapshot's references and lookups (snapshot.h).
 * Pure: the monitor thread builds snapshots (proxy/monitor.c), workers
 * read them; a reference count is the only shared state.
 */
#include <string.h>

#include "pgshard/collate.h"
#include "pgshard/moves.h"
#include "pgshard/shardmap.h"
#include "pgshard/snapshot.h"

pgs_snapshot_t *pgs_snapshot_ref(pgs_snapshot_t *snap) {
  __atomic_add_fetch(&snap->refcount, 1, __ATOMIC_RELAXED);
  return snap;
}

void pgs_snapshot_unref(pgs_snapshot_t *snap) {
  if (snap == NULL || __atomic_sub_fetch(&snap->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  for (int d = 0; d < snap->ndbs; d++) {
    pgs_health_db_t *db = &snap->dbs[d];
    for (int s = 0; s < db->nshards; s++) free(db->shards[s].nodes);
    free(db->shards);
    for (int t = 0; t < db->ntables; t++) free(db->columns[t]);
    free(db->columns);
    pgs_collcat_unref(db->collations);
    pgs_moves_free(db->moves, db->nmoves);
    free(db->name);
  }
  free(snap->dbs);
  pgs_config_unref(snap->config);
  free(snap);
}

const pgs_shard_health_t *pgs_snapshot_shard(const pgs_snapshot_t *snap, const char *db,
                                             int shard) {
  if (snap == NULL) return NULL;
  for (int d = 0; d < snap->ndbs; d++) {
    const pgs_health_db_t *h = &snap->dbs[d];
    if (strcmp(h->name, db) != 0) continue;
    return shard >= 0 && shard < h->nshards ? &h->shards[shard] : NULL;
  }
  return NULL;
}

static bool same_node(const pgs_node_t *a, const pgs_node_t *b) {
  return a->conninfo == b->conninfo ||
         (a->conninfo && b->conninfo && !strcmp(a->conninfo, b->conninfo));
}

const pgs_shard_health_t *pgs_snapshot_shard_of(const pgs_snapshot_t *snap,
                                                const pgs_database_t *db, int shard) {
  if (snap == NULL || shard < 0 || shard >= db->nshards) return NULL;
  const pgs_database_t *sdb = pgs_config_find_database(snap->config, db->name);
  if (sdb == NULL) return NULL;
  if (sdb == db) return pgs_snapshot_shard(snap, db->name, shard);
  const pgs_shard_t *mine = &db->shards[shard];
  int at = pgs_shardmap_find_shard(sdb, mine->name);
  if (at < 0) return NULL;
  const pgs_shard_t *theirs = &sdb->shards[at];
  if (theirs->nreplicas != mine->nreplicas || theirs->has_primary != mine->has_primary ||
      !same_node(&theirs->primary, &mine->primary))
    return NULL;
  for (int i = 0; i < mine->nreplicas; i++)
    if (!same_node(&theirs->replicas[i], &mine->replicas[i])) return NULL;
  return pgs_snapshot_shard(snap, db->name, at);
}

struct pgs_collcat *pgs_snapshot_collations(const pgs_snapshot_t *snap, const char *db) {
  if (snap == NULL) return NULL;
  for (int d = 0; d < snap->ndbs; d++)
    if (!strcmp(snap->dbs[d].name, db)) return snap->dbs[d].collations;
  return NULL;
}

const char *pgs_snapshot_columns(const pgs_snapshot_t *snap, const char *db, const char *table) {
  if (snap == NULL) return NULL;
  for (int d = 0; d < snap->ndbs && d < snap->config->ndatabases; d++) {
    const pgs_health_db_t *h = &snap->dbs[d];
    if (strcmp(h->name, db) != 0) continue;
    const pgs_shardmap_t *map = &snap->config->databases[d].shardmap;
    for (int t = 0; t < map->ntables && t < h->ntables; t++)
      if (!strcmp(map->tables[t].name, table)) return h->columns[t];
    return NULL;
  }
  return NULL;
}
