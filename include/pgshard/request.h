/*
 * request.h — the request engine's proxy half (request.c): a client's messages
 * planned into steps and run, its servers held and released, the replies
 * of several servers reaching the client as one.
 */
#ifndef PGSHARD_REQUEST_H
#define PGSHARD_REQUEST_H

#include "pgshard/proxy.h"

void pgs_request_init(pgs_client_t *client);
void pgs_request_free(pgs_client_t *client);
/* A reload happened (client->config is not the worker's): move the client
 * to the running config if it is between transactions with nothing in
 * flight; otherwise it stays on its own until such a point. Returns false
 * when the client was closed (its database or user is no longer
 * configured, or its tenant or shard hint cannot be placed in the new map). */
bool pgs_request_follow_config(pgs_client_t *client);
/* Between transactions with nothing in flight (where a reload is followed
 * and a PAUSE holds a client). */
bool pgs_request_between_transactions(const pgs_client_t *client);
void pgs_request_unlink(pgs_client_t *client, pgs_server_t *server);
/* The ReadyForQuery status the client is told: its transaction over every
 * shard (a failed one anywhere: 'E'; open anywhere: 'T'). */
char pgs_request_ready_status(const pgs_client_t *client);
/* ReadyForQuery with that status, made by pgshard, and what follows it. */
void pgs_request_send_ready(pgs_client_t *client);
/* A client waiting for a server for a part of its fan was refused one:
 * handled as the fan's failure (true), or not a fan part (false). */
bool pgs_request_fan_unserved(pgs_client_t *client, const char *sqlstate, const char *why);
/* Give every server back when the client is between transactions. */
bool pgs_request_maybe_release(pgs_client_t *client);
/* The client side of servers (server.c's owner table). */
extern const pgs_server_owner_t pgs_request_server_owner;
/* What the LISTEN/NOTIFY listeners ask of a client (listen.c's table). */
extern const struct pgs_listen_ops pgs_request_listen_ops;

/* Where request.c reaches the client connection (client.c's table). */
void pgs_request_set_session_ops(const pgs_session_ops_t *ops);

#endif
