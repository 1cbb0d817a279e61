/*
 * monitor.h — the health and lag monitor: one thread that checks every node
 * of every database each lag_check_interval_ms over non-blocking libpq
 * connections, feeds the results through health.h, and publishes an
 * immutable snapshot to every worker (the publish function it is given), which reads it
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
 * About once a second a writer's check carries queries for its database's
 * catalog: the sharded tables' columns (what INSERT without a column list
 * gets) and its collations (collate.h, what merged text sorts by; a
 * configured primary is asked with its first check too). A check counts
 * when its own result arrives; a node still reading those answers at the
 * next round sits it out.
 *
 * A round ends when every node in it has answered, or at the next tick; a
 * new snapshot is published after every round (LSNs move every round, and
 * read-your-writes needs them), and at once after a reload.
 */
#ifndef PGSHARD_MONITOR_H
#define PGSHARD_MONITOR_H

#include "pgshard/config.h"
#include "pgshard/health.h"
#include "pgshard/snapshot.h"

/* Start the monitor thread on CONFIG (call after pgs_workers_start: it
 * publishes). It publishes a first snapshot before returning (every node
 * "up", replicas not readable until their first check within bounds, the
 * configured primaries writers), so routing never starts without one.
 * Returns 0 or a libuv error. */
/* Where snapshots go (the workers; each takes a reference). */
typedef void (*pgs_publish_fn)(pgs_snapshot_t *snapshot);
int pgs_monitor_start(pgs_config_t *config, pgs_publish_fn publish) PGS_MUST_USE;
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
