/*
 * snapshot.h — what the health monitor publishes and every worker reads
 * (router/snapshot.c): node health per shard of each database, immutable
 * once published, refcounted; and how a worker finds a shard in it, also
 * across a reload.
 */
#ifndef PGSHARD_SNAPSHOT_H
#define PGSHARD_SNAPSHOT_H

#include "pgshard/config.h"
#include "pgshard/health.h"

typedef struct pgs_health_db {
  char *name;
  pgs_shard_health_t *shards; /* in the config's shard order */
  int nshards;
  /* Its sharded tables' columns in the catalog's order, a column list per
   * table in the config's order, NULL where not known (every shard's
   * writer must agree). */
  char **columns;
  int ntables;
  /* Its collations as every shard's writer has them (collate.h); NULL
   * while not known. A reference. */
  struct pgs_collcat *collations;
  /* The moves of a resharding under way, as its shards' writers have them
   * in pgshard.reshard_move (moves.h): every row naming this database. */
  struct pgs_move *moves;
  int nmoves;
} pgs_health_db_t;

/* What every worker reads. Immutable once published; refcounted. */
typedef struct pgs_snapshot {
  int refcount; /* atomic */
  uint64_t seq; /* increases with every snapshot */
  uint64_t taken_ms;
  pgs_config_t *config; /* the config it describes (a reference) */
  pgs_health_db_t *dbs;
  int ndbs;
  int nmoves; /* over every database: 0, the routing fast path, when none */
} pgs_snapshot_t;

pgs_snapshot_t *pgs_snapshot_ref(pgs_snapshot_t *snap);
void pgs_snapshot_unref(pgs_snapshot_t *snap);
/* The health of shard SHARD (in the order of snap->config) of database DB,
 * or NULL when SNAP is NULL or has no such database or shard. Shard and node
 * indexes are those of snap->config: a caller holding another config (a
 * reload in progress) must compare snap->config with it first. */
const pgs_shard_health_t *pgs_snapshot_shard(const pgs_snapshot_t *snap, const char *db, int shard);
/* The health of shard SHARD of DB, a database of any config (one that
 * snap->config replaced, or that replaces it): found by the database's and
 * shard's names, and only when snap->config gives that shard the same nodes
 * in the same order (node indexes then agree). NULL otherwise. */
const pgs_shard_health_t *pgs_snapshot_shard_of(const pgs_snapshot_t *snap,
                                                const pgs_database_t *db, int shard);

/* The columns of sharded TABLE of database DB (names, as the snapshot's
 * config has them), or NULL when not known. */
const char *pgs_snapshot_columns(const pgs_snapshot_t *snap, const char *db, const char *table);

/* The collations of database DB (collate.h), or NULL when not known. */
struct pgs_collcat *pgs_snapshot_collations(const pgs_snapshot_t *snap, const char *db);

#endif
