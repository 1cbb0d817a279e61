/*
 * client.h — a client connection (client.c): startup, authentication and login,
 * session settings, the one error path (FATAL and close) and the refusal
 * of a request, memory budgets, idle timeouts.
 */
#ifndef PGSHARD_CLIENT_H
#define PGSHARD_CLIENT_H

#include "pgshard/proxy.h"

pgs_client_t *pgs_client_accept(pgs_worker_t *worker, uv_stream_t *listener);
/* A client on connected socket FD (another worker accepted it and handed
 * it over: worker.c keeps the workers' client counts even); FD is the
 * client's, closed with it or on failure. */
pgs_client_t *pgs_client_adopt(pgs_worker_t *worker, int fd);
/* Serve what the client sent: the console's clients in admin.c, the others
 * in request.c. */
void pgs_client_process(pgs_client_t *client);
/* The one error path: FATAL ErrorResponse with SQLSTATE, then close. */
PGS_PRINTF(3, 4)
void pgs_client_fail(pgs_client_t *client, const char *sqlstate, const char *fmt, ...);
/* Refuse the client's current request (up to its Sync) with an ERROR, keep
 * the session. */
PGS_PRINTF(3, 4)
void pgs_client_refuse(pgs_client_t *client, const char *sqlstate, const char *fmt, ...);
/* A server for it from the pool it waited in. */
void pgs_client_on_server(pgs_client_t *client, pgs_server_t *server);
void pgs_request_process(pgs_client_t *client);
/* The next whole message at the client's in_pos: PGS_OK with *TYPE and
 * *TOTAL; PGS_EAGAIN when more bytes are needed (in_want set); PGS_EPROTO
 * when it is malformed or too big (the client was failed). */
pgs_status_t pgs_request_next_message(pgs_client_t *client, char *type, size_t *total);
void pgs_client_server_lost(pgs_client_t *client, const char *why);
/* The server of SLOT died with READIES ReadyForQuery owed (OPEN_UNIT: and
 * a unit without its Sync): a replica outside a transaction costs the
 * client an ERROR per request, not the session. */
void pgs_request_server_lost(pgs_client_t *client, int slot, int readies, bool open_unit,
                             const char *why);
void pgs_client_after_ready(pgs_client_t *client, char status);
void pgs_client_on_server_message(pgs_client_t *client, char type, const uint8_t *body, size_t len);
void pgs_client_on_login_row(pgs_client_t *client, const uint8_t *body, size_t len);
void pgs_client_login_done(pgs_client_t *client);
void pgs_client_close(pgs_client_t *client);
void pgs_client_cancel(pgs_client_t *client);
/* Worker tick: close the client if it has been idle too long, or has not
 * read any of an output backlog over its budget for a while. NOW in ms. */
void pgs_client_tick(pgs_client_t *client, uint64_t now);
/* The client side of request.c and admin.c (their session table). */
extern const pgs_session_ops_t pgs_client_session_ops;
/* The client side of pools (pool.c's waiter table). */
extern const pgs_pool_waiter_ops_t pgs_client_waiter_ops;

#endif
