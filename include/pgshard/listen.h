/*
 * listen.h — LISTEN/NOTIFY in transaction pooling (listen.c): each worker
 * listens on every shard's primary for its clients, and hands each
 * notification to the clients of its channel between their transactions.
 */
#ifndef PGSHARD_LISTEN_H
#define PGSHARD_LISTEN_H

#include "pgshard/proxy.h"

typedef enum {
  PGS_LISTEN_DONE,   /* answered: CommandComplete in the client's output */
  PGS_LISTEN_WAIT,   /* a listener has not confirmed the channel yet: the
                        request waits, resumed through pgs_listen_ops_t */
  PGS_LISTEN_FAILED, /* an ErrorResponse is in the client's output */
} pgs_listen_result_t;

/* What listen.c asks of the layers above (request.c provides them, the
 * worker registers them): listen.c calls nothing above it. */
typedef struct pgs_listen_ops {
  /* A LISTEN that waited may be answered now: run the client again. */
  void (*resume)(pgs_client_t *client);
  /* Its output could not be written: close it. */
  void (*close)(pgs_client_t *client);
} pgs_listen_ops_t;

void pgs_listen_set_ops(const pgs_listen_ops_t *ops);

/* The client's LISTEN ('L'), UNLISTEN ('U') of CHANNEL or UNLISTEN * ('*')
 * (a PGS_STEP_LISTEN), with TXSTATUS the status its ReadyForQuery would
 * have now: between transactions it applies at once, inside one at its
 * COMMIT, in a failed one it is refused (25P02). QUIET: a server answers
 * the statement (an UNLISTEN among others, DISCARD ALL): no reply. */
pgs_listen_result_t pgs_listen_step(pgs_client_t *client, char what, const char *channel,
                                    char txstatus, bool quiet);
/* A result the client is sent (TYPE, BODY): an error or a ROLLBACK means
 * the LISTENs of its transaction will not apply. */
void pgs_listen_client_message(pgs_client_t *client, char type, const uint8_t *body, size_t len);
/* A ReadyForQuery of STATUS went to the client: 'I' applies or drops the
 * transaction's LISTENs and hands over the notifications held for it. */
void pgs_listen_after_ready(pgs_client_t *client, char status);
/* The client goes away: its channels are given up. */
void pgs_listen_client_gone(pgs_client_t *client);

/* The worker's tick: reconnect lost listeners (with backoff), follow a
 * reload and a promoted primary, end LISTENs that waited too long. */
void pgs_listen_tick(pgs_worker_t *worker, uint64_t now_ms);
/* Shutting down: every listener closed, the registry freed. */
void pgs_listen_stop(pgs_worker_t *worker);

/* SHOW LISTENERS: one row per listener of WORKER, through ROW. */
typedef struct pgs_listener_info {
  const char *database, *shard, *state, *user;
  int backend_pid;
  int channels;           /* channels LISTENed on its connection */
  int clients;            /* clients of the database listening on this worker */
  uint64_t notifications; /* received since pgshard started it */
  uint64_t reconnects;
} pgs_listener_info_t;
void pgs_listen_each(pgs_worker_t *worker, void (*row)(void *arg, const pgs_listener_info_t *info),
                     void *arg);

#endif
