/*
 * pool.h — pools of server connections per database, user and node (pool.c).
 */
#ifndef PGSHARD_POOL_H
#define PGSHARD_POOL_H

#include "pgshard/proxy.h"

void pgs_pool_set_waiter_ops(const pgs_pool_waiter_ops_t *ops);
/* The pool side of servers (server.c's pool table). */
extern const pgs_server_pool_ops_t pgs_pool_server_ops;

/* The pool for a node of SHARD of DB (a database of CONFIG, the client's
 * config, which may be older than the worker's); STARTUP_OPTIONS: see
 * pgs_pool_t (NULL or the client's startup_options). */
pgs_pool_t *pgs_pool_get(pgs_worker_t *worker, const pgs_config_t *config, const pgs_database_t *db,
                         const pgs_user_t *user, int shard, int node, const char *startup_options);
/* A new health snapshot: drop idle servers of a node marked down since. */
void pgs_pool_apply_health(pgs_pool_t *pool, const pgs_snapshot_t *snapshot);
/* Ask for a server for CLIENT: linked now (pgs_client_on_server) or queued. */
void pgs_pool_request(pgs_pool_t *pool, pgs_client_t *client);
void pgs_pool_cancel_wait(pgs_pool_t *pool, pgs_client_t *client);
/* A server is free: hand it to the next waiter or park it idle. */
void pgs_pool_server_free(pgs_pool_t *pool, pgs_server_t *server);
void pgs_pool_server_connected(pgs_pool_t *pool, pgs_server_t *server);
void pgs_pool_server_failed(pgs_pool_t *pool, pgs_server_t *server, const char *error);
void pgs_pool_set_state(pgs_server_t *server, pgs_server_state_t state);
void pgs_pool_tick(pgs_pool_t *pool, uint64_t now);
void pgs_pool_apply_config(pgs_pool_t *pool, const pgs_config_t *config);
void pgs_pool_destroy(pgs_pool_t *pool);

#endif
