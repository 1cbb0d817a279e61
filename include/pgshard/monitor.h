/*
 * monitor.h — the health and lag monitor: one thread that checks every node
 * of every database each lag_check_interval_ms over non-blocking libpq
 * connections, feeds the results through health.h, and publishes an
 * immutable snapshot to every worker (pgs_workers_publish), which reads it
 * without locks.
 *
 * Each check is one query:
 *   SELECT pg_is_in_recovery(),
 *          CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
 *               ELSE pg_current_wal_lsn() END,
 *          pg_last_wal_receive_lsn()
 * sent on a connection the monitor keeps open per node (conninfo from the
 * config; a node naming no user logs in as the first [user.*] with a
 * plain-text password, like the pools do; connect_timeout from
 * server_connect_timeout_ms; application_name 'pgshard monitor'). A check
 * not answered within the interval (or server_connect_timeout_ms while
 * connecting) counts as failed; a check sent late in a round, right after a
 * login, gets until the end of the next round. A node marked down has its
 * connection closed and is reconnected at retry_at_ms (health.h backoff).
 *
 * Each check that answers is timed, from its connect when it needed one
 * (else from the query's send) to the answer, and counted in the node's
 * check timing (health.h), which the snapshot carries to /metrics and SHOW
 * NODES.
 *
 * A round ends when every node in it has answered, or at the next tick; a
 * new snapshot is published after every round (LSNs move every round, and
 * read-your-writes needs them), and at once after a reload.
 */
#ifndef PGSHARD_MONITOR_H
#define PGSHARD_MONITOR_H

#include "pgshard/config.h"
#include "pgshard/health.h"

typedef struct pgs_health_db {
  char *name;
  pgs_shard_health_t *shards; /* in the config's shard order */
  int nshards;
} pgs_health_db_t;

/* What every worker reads. Immutable once published; refcounted. */
typedef struct pgs_snapshot {
  int refcount; /* atomic */
  uint64_t seq; /* increases with every snapshot */
  uint64_t taken_ms;
  pgs_config_t *config; /* the config it describes (a reference) */
  pgs_health_db_t *dbs;
  int ndbs;
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

/* Start the monitor thread on CONFIG (call after pgs_workers_start: it
 * publishes). It publishes a first snapshot before returning (every node
 * "up", replicas not readable until their first check within bounds, the
 * configured primaries writers), so routing never starts without one.
 * Returns 0 or a libuv error. */
int pgs_monitor_start(pgs_config_t *config) PGS_MUST_USE;
/* Switch to a new config (takes its own reference). Nodes matching by
 * (database, shard name, conninfo) keep their state and connection; a
 * shard's writer and LSN history follow its nodes. */
void pgs_monitor_reload(pgs_config_t *config);
#define PGS_MONITOR_MAX_BANS 64
/* BAN (BANNED true) or UNBAN the replicas at HOST:PORT: a banned replica
 * takes no reads, whatever its health, until unbanned (kept across
 * reloads). The next snapshot, published at once, says so. False when
 * PGS_MONITOR_MAX_BANS are already banned, or the monitor does not run. */
bool pgs_monitor_ban(const char *host, int port, bool banned);
/* Close every connection and join the thread (before pgs_workers_join: it
 * publishes until then). */
void pgs_monitor_stop(void);

#endif
