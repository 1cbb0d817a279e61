/*
 * server.h — one connection to a PostgreSQL server (server.c): login through
 * libpq, then the replies it owes and their verdicts.
 */
#ifndef PGSHARD_SERVER_H
#define PGSHARD_SERVER_H

#include "pgshard/proxy.h"

void pgs_server_set_owner(const pgs_server_owner_t *owner);

void pgs_server_set_pool_ops(const pgs_server_pool_ops_t *ops);

void pgs_server_connect(pgs_pool_t *pool);
/* Append pgshard's own simple query; RULE (made internal) says what
 * becomes of its replies. */
void pgs_server_inject_query(pgs_server_t *server, const char *sql, pgs_reply_rule_t rule);
/* ... one whose row holds a logging-in client's parameter values. */
void pgs_server_inject_capture(pgs_server_t *server, const char *sql);
/* Note a reply the server owes for what it was just sent (STMT: a Parse's
 * server statement name). */
void pgs_server_expect(pgs_server_t *server, pgs_expect_kind_t kind, pgs_reply_rule_t rule,
                       const char *stmt);
bool pgs_server_expect_idle(const pgs_server_t *server);
/* Synthetic replies at the head of the queue are emitted to the client. */
void pgs_server_emit_synthetic(pgs_server_t *server);
bool pgs_server_has_prepared(pgs_server_t *server, const char *name);
void pgs_server_add_prepared(pgs_server_t *server, const char *name);
void pgs_server_forget_prepared(pgs_server_t *server);
void pgs_server_process(pgs_server_t *server);
void pgs_server_close(pgs_server_t *server, const char *why);
/* Send the server a CancelRequest when it has requests in flight (WHY for
 * the log). It is not reused after: the cancel may land after its
 * statement ended. Until the postmaster has signalled the backend
 * (server->cancelling), nothing more is sent to it: the cancel hits what
 * it runs now or nothing, never a statement sent after. */
void pgs_server_cancel(pgs_server_t *server, const char *why);
/* Cancel the part of a merged read the server runs: at once when it runs
 * it, else once the replies before it (the client's own messages of the
 * unit, which must not fail for it) are in; not at all when the part ends
 * first. */
void pgs_server_cancel_part(pgs_server_t *server, const char *why);
int pgs_server_flush(pgs_server_t *server) PGS_MUST_USE;
/* Moving an idle server to another worker (pool.c): whether it may go (a
 * quiet connection owing nothing), taking it off this worker's loop (DONE
 * runs once it is off, on this thread; then it may be posted), and putting
 * it on WORKER's loop (on that worker's thread), reading. attach: 0, or a
 * libuv error (the server must then be closed). */
bool pgs_server_movable(const pgs_server_t *server);
int pgs_server_detach(pgs_server_t *server, uv_close_cb done) PGS_MUST_USE;
int pgs_server_attach(pgs_server_t *server, pgs_worker_t *worker) PGS_MUST_USE;

#endif
