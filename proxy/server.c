/*
 * server.c — one connection to a PostgreSQL server.
 *
 * Login is libpq's job (PQconnectStart/PQconnectPoll driven by a uv_poll on
 * its socket) so every auth method a server may ask for works, and so does
 * every sslmode of the node's conninfo. libpq may move to another socket
 * during login (the next host or address, sslmode prefer or allow trying
 * again): the poll handle follows it. Once logged in, pgshard speaks the
 * protocol on a dup of that socket itself, and the PGconn is kept for its
 * cancel key and a polite Terminate at the end. Over TLS, libpq's session
 * goes on in pgshard's io (pgs_io_tls_adopt): records are read and written
 * on the dup as plain bytes are, and the session goes back to libpq
 * (pgs_io_tls_release) before PQfinish says goodbye with it.
 *
 * What the server owes is its reply queue (server->replies, exchange.h):
 * one entry per request sent (Parse, Bind, Describe, Execute, Close, Sync,
 * Query), in order, each with the rule saying what the client sees of its
 * replies. Each reply goes through pgs_replies_take, the engine's pure
 * verdict, and this file only carries the verdict out: the server's own
 * state (transaction status, never reuse, last error), then the client's
 * output and the events its session tracks.
 *
 * States (see pgs_server_state_t) change only through the pool's setter
 * (pgs_pool_set_state): the pool keeps a list per state. server.c calls
 * nothing above it: the pool and the linked client hear of what happens
 * through the tables they register (pgs_server_set_pool_ops,
 * pgs_server_set_owner).
 */
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pgshard/log.h"
#include "pgshard/server.h"
#include "pgshard/twophase.h"

#define SERVER_MAX_MESSAGE ((size_t)1 << 30) /* PostgreSQL's own MaxAllocSize */

/* The client side of every server: what a linked client hears (request.c
 * registers it at start-up). server.c calls nothing above it. */
static const pgs_server_owner_t *owner;
/* The pool side: where its state and lifecycle events go (pool.c). */
static const pgs_server_pool_ops_t *pool_ops;

void pgs_server_set_owner(const pgs_server_owner_t *ops) { owner = ops; }
void pgs_server_set_pool_ops(const pgs_server_pool_ops_t *ops) { pool_ops = ops; }

static void server_free(pgs_server_t *server) {
  pgs_io_tls_release(&server->io);
  if (server->pg) PQfinish(server->pg);
  pgs_io_free_buffers(&server->io);
  pgs_server_forget_prepared(server);
  pgs_strmap_free(&server->prepared, NULL);
  free(server->prepared_order);
  pgs_replies_free(&server->replies);
  pgs_list_remove(&server->link);
  free(server);
}

static void handle_closed_cb(uv_handle_t *handle) {
  pgs_server_t *server = ((pgs_io_t *)handle->data)->owner;
  if (--server->pending_closes == 0 && server->state == PGS_SV_CLOSING) server_free(server);
}

static void poll_closed_cb(uv_handle_t *handle) {
  pgs_server_t *server = handle->data;
  free(handle);
  if (--server->pending_closes == 0 && server->state == PGS_SV_CLOSING) server_free(server);
}

static void poll_close(pgs_server_t *server) {
  if (server->poll == NULL) return;
  server->pending_closes++;
  uv_close((uv_handle_t *)server->poll, poll_closed_cb);
  server->poll = NULL;
}

/* A held gid (pgs_twophase_hold) is this server's to settle no more. */
static void server_unhold(pgs_server_t *server) {
  if (!server->gid_held) return;
  server->gid_held = false;
  pgs_twophase_unhold(server->gid);
}

void pgs_server_close(pgs_server_t *server, const char *why) {
  if (server->state == PGS_SV_CLOSING) return;
  server_unhold(server);
  pgs_info("server %d (%s/%s): closing: %s", server->backend_pid, server->pool->dbname,
           server->pool->username, why);
  if (server->client) owner->unlink(server->client, server);
  pool_ops->set_state(server, PGS_SV_CLOSING);
  server->pending_closes++; /* held until this function returns */
  poll_close(server);
  if (server->io.open) {
    server->pending_closes++;
    pgs_io_close(&server->io);
  }
  if (--server->pending_closes == 0) server_free(server);
}

/* ---- moving to another worker ---- */

bool pgs_server_movable(const pgs_server_t *server) {
  return server->state == PGS_SV_IDLE && server->client == NULL && !server->dirty &&
         !server->cancelling && !server->gid_held && server->pending_closes == 0 &&
         server->poll == NULL && pgs_server_expect_idle(server) && pgs_io_quiet(&server->io);
}

int pgs_server_detach(pgs_server_t *server, uv_close_cb done) {
  PGS_ASSERT(server->state == PGS_SV_MOVING);
  return pgs_io_detach(&server->io, done);
}

int pgs_server_attach(pgs_server_t *server, pgs_worker_t *worker) {
  server->worker = worker;
  int rc = pgs_io_attach(&server->io, &worker->loop);
  server->io.on_close = handle_closed_cb;
  if (rc == 0) rc = pgs_io_start_reading(&server->io);
  return rc;
}

/* ---- the replies it owes (exchange.h) ---- */

void pgs_server_expect(pgs_server_t *server, pgs_expect_kind_t kind, pgs_reply_rule_t rule,
                       const char *stmt) {
  pgs_replies_push(&server->replies, kind, rule, stmt);
}

bool pgs_server_expect_idle(const pgs_server_t *server) {
  return pgs_replies_pending(&server->replies) == 0;
}

void pgs_server_emit_synthetic(pgs_server_t *server) {
  char type;
  while ((type = pgs_replies_pop_synthetic(&server->replies)))
    if (!server->replies.skipping && server->client) owner->synthetic(server->client, type);
}

void pgs_server_inject_query(pgs_server_t *server, const char *sql, pgs_reply_rule_t rule) {
  size_t mark = pgs_io_scratch_mark(&server->io);
  pgs_msg_query(pgs_io_scratch(&server->io), sql);
  pgs_io_scratch_done(&server->io, mark);
  rule.internal = true;
  pgs_server_expect(server, PGS_EXP_QUERY, rule, NULL);
}

void pgs_server_inject_capture(pgs_server_t *server, const char *sql) {
  pgs_reply_rule_t rule = pgs_rule_internal(PGS_ON_ERROR_OWNER);
  rule.capture = true;
  pgs_server_inject_query(server, sql, rule);
}

/* ---- prepared statements cached on this server ---- */

bool pgs_server_has_prepared(pgs_server_t *server, const char *name) {
  return pgs_strmap_contains(&server->prepared, name);
}

void pgs_server_add_prepared(pgs_server_t *server, const char *name) {
  if (pgs_strmap_contains(&server->prepared, name)) return;
  if (server->prepared_order == NULL)
    server->prepared_order = pgs_xcalloc(PGS_SERVER_MAX_PREPARED, sizeof(char *));
  if (server->prepared_count == PGS_SERVER_MAX_PREPARED) {
    /* Evict the oldest: close it on the server, swallowing the reply. */
    char *old = server->prepared_order[server->prepared_head];
    server->prepared_head = (server->prepared_head + 1) % PGS_SERVER_MAX_PREPARED;
    server->prepared_count--;
    pgs_strmap_remove(&server->prepared, old);
    size_t mark = pgs_io_scratch_mark(&server->io);
    pgs_buf_t *b = pgs_io_scratch(&server->io);
    size_t start = pgs_msg_begin(b, 'C');
    pgs_buf_put_u8(b, 'S');
    pgs_buf_put_cstr(b, old);
    pgs_msg_end(b, start);
    pgs_io_scratch_done(&server->io, mark);
    pgs_server_expect(server, PGS_EXP_CLOSE, pgs_rule_internal(PGS_ON_ERROR_OWNER), NULL);
    free(old);
  }
  size_t slot = (server->prepared_head + server->prepared_count) % PGS_SERVER_MAX_PREPARED;
  server->prepared_order[slot] = pgs_xstrdup(name);
  server->prepared_count++;
  pgs_strmap_put(&server->prepared, name, server->prepared_order[slot]);
}

/* A Parse that failed or was skipped: the server does not have NAME.
 * Rare: leave the FIFO slot, drop the lookup entry. */
static void forget_one_prepared(void *arg, const char *name) {
  pgs_server_t *server = arg;
  pgs_strmap_remove(&server->prepared, name);
}

void pgs_server_forget_prepared(pgs_server_t *server) {
  for (size_t i = 0; i < server->prepared_count; i++)
    free(server->prepared_order[(server->prepared_head + i) % PGS_SERVER_MAX_PREPARED]);
  server->prepared_count = server->prepared_head = 0;
  pgs_strmap_free(&server->prepared, NULL);
}

/* ---- cancel ---- */

typedef struct cancel_work {
  uv_work_t req;
  PGcancel *cancel;
  pgs_server_t *server; /* kept (pending_closes) until the cancel is done */
} cancel_work_t;

static void cancel_run(uv_work_t *req) {
  cancel_work_t *w = pgs_container_of(req, cancel_work_t, req);
  char err[256];
  if (!PQcancel(w->cancel, err, sizeof(err))) pgs_warn("cancel request failed: %s", err);
}

static void cancel_done(uv_work_t *req, int status) {
  PGS_UNUSED(status);
  cancel_work_t *w = pgs_container_of(req, cancel_work_t, req);
  pgs_server_t *server = w->server;
  PQfreeCancel(w->cancel);
  free(w);
  /* PQcancel returned: the postmaster has signalled the backend, which
   * handles the signal before it reads anything more from us. */
  server->cancelling = false;
  if (--server->pending_closes == 0 && server->state == PGS_SV_CLOSING) {
    server_free(server);
    return;
  }
  if (server->state != PGS_SV_CLOSING && server->client) owner->drained(server->client);
}

void pgs_server_cancel(pgs_server_t *server, const char *why) {
  server->cancel_why = NULL;
  if (server->pg == NULL || server->cancelling || pgs_server_expect_idle(server)) return;
  cancel_work_t *w = pgs_xcalloc(1, sizeof(*w));
  w->cancel = PQgetCancel(server->pg);
  w->server = server;
  if (w->cancel == NULL || uv_queue_work(&server->worker->loop, &w->req, cancel_run, cancel_done)) {
    if (w->cancel) PQfreeCancel(w->cancel);
    free(w);
    return;
  }
  server->cancelling = true;
  server->pending_closes++;
  /* The statement may end on its own before the cancel lands, and the
   * cancel then hit whatever the server runs next: never another
   * client's statement. */
  server->dirty = true;
  pgs_info("server %d (%s/%s): cancel sent: %s", server->backend_pid, server->pool->dbname,
           server->pool->username, why);
}

/* The front of what SERVER owes is a fan part's (or, ANY: a part is
 * owed at all). */
static bool owes_fan_part(pgs_server_t *server, bool any) {
  pgs_replies_t *q = &server->replies;
  size_t n = any ? q->len : q->len > 0;
  for (size_t i = 0; i < n; i++)
    if (q->ring[(q->head + i) % q->cap].rule.fan) return true;
  return false;
}

void pgs_server_cancel_part(pgs_server_t *server, const char *why) {
  if (owes_fan_part(server, false))
    pgs_server_cancel(server, why);
  else if (owes_fan_part(server, true))
    server->cancel_why = why; /* server_cancel_when_at_part */
}

/* A cancel put off until the server runs the part: now, or never. */
static void server_cancel_when_at_part(pgs_server_t *server) {
  if (owes_fan_part(server, false))
    pgs_server_cancel(server, server->cancel_why);
  else if (!owes_fan_part(server, true))
    server->cancel_why = NULL;
}

/* ---- replies from the server ---- */

static void server_protocol_error(pgs_server_t *server, const char *what) {
  pgs_client_t *client = server->client;
  pgs_error("server %d (%s): protocol error: %s", server->backend_pid, server->pool->dbname, what);
  pgs_server_close(server, what);
  if (client) owner->lost(client, -1, 0, false, what);
}

/* What the verdict V means for the server itself. False when the server
 * is closing (a protocol error). */
static bool server_apply(pgs_server_t *server, const pgs_verdict_t *v) {
  if (v->events & PGS_RE_PROTOCOL) {
    server_protocol_error(server, v->problem);
    return false;
  }
  if (v->events & PGS_RE_READY) server->txstatus = v->txstatus;
  if (v->events & PGS_RE_DIRTY) server->dirty = true;
  if (v->events & PGS_RE_ERROR)
    snprintf(server->last_error, sizeof(server->last_error), "%s (SQLSTATE %s)", v->error.message,
             v->error.sqlstate);
  if (v->events & PGS_RE_GID_PREPARED) server->gid_prepared = true;
  return true;
}

void pgs_server_process(pgs_server_t *server) {
  pgs_io_t *in = &server->io;
  pgs_client_t *client = server->client;
  while (server->state != PGS_SV_CLOSING) {
    if (client && owner->backlogged(client)) {
      pgs_io_stop_reading(in); /* resumed when the client drains */
      break;
    }
    char type;
    size_t total;
    const uint8_t *p = in->in.data + in->in_pos;
    pgs_status_t st = pgs_msg_peek(p, in->in.len - in->in_pos, SERVER_MAX_MESSAGE, &type, &total);
    if (st == PGS_EAGAIN) {
      in->in_want = in->in_pos + 5;
      break;
    }
    if (st != PGS_OK) {
      server_protocol_error(server, "invalid message length");
      return;
    }
    if (in->in.len - in->in_pos < total) {
      in->in_want = in->in_pos + total;
      break;
    }
    in->in_pos += total;
    pgs_verdict_t v;
    pgs_replies_take(&server->replies, client ? owner->exchange(client) : NULL, type, p + 5,
                     total - 5, &v);
    pgs_debug("server %d: '%c' (%zu bytes), action %d, events 0x%x, owing %zu", server->backend_pid,
              type, total, v.action, v.events, pgs_replies_pending(&server->replies));
    if (!server_apply(server, &v)) return;
    if (client == NULL) {
      pgs_server_emit_synthetic(server); /* popped: nobody to send them to */
      continue;
    }
    /* The client's part; it sends the replies pgshard makes up that
     * follow (pgs_server_emit_synthetic). */
    owner->reply(client, server, &v, type, p, total);
    if (server->client != client || server->state == PGS_SV_CLOSING) break;
    if (server->cancel_why) server_cancel_when_at_part(server);
  }
  if (server->state == PGS_SV_CLOSING) return;
  client = server->client;
  /* The client's output goes out (false: the client went away); then
   * reading goes on unless the client is the bottleneck. Decided before a
   * release: a server parked in the pool with reading stopped would never
   * answer its next client. */
  if (client && !owner->flush(client)) return;
  if (server->state == PGS_SV_CLOSING) return;
  pgs_io_compact(in);
  if (server->io.open && (!client || !owner->backlogged(client))) (void)pgs_io_start_reading(in);
  if (client && server->client == client) {
    owner->settled(client);
    return;
  }
  if (server->state == PGS_SV_RESETTING && pgs_server_expect_idle(server)) {
    server_unhold(server);
    if (server->txstatus != 'I' || server->dirty) {
      pgs_server_close(server, "reset left a transaction open");
      return;
    }
    pool_ops->free(server);
    return;
  }
  if (client == NULL && server->state == PGS_SV_IDLE && server->dirty) {
    pgs_server_close(server, "server reported a fatal error");
    return;
  }
}

int pgs_server_flush(pgs_server_t *server) { return pgs_io_flush(&server->io); }

/* ---- I/O callbacks ---- */

static void server_on_read(pgs_io_t *io) { pgs_server_process(io->owner); }

static void server_on_error(pgs_io_t *io, int status) {
  pgs_server_t *server = io->owner;
  pgs_client_t *client = server->client;
  char why[400];
  if (status == UV_EOF)
    snprintf(why, sizeof(why), "server closed the connection%s%s",
             server->last_error[0] ? ": " : "", server->last_error);
  else
    snprintf(why, sizeof(why), "server connection error: %s", pgs_io_error_text(io, status));
  /* What the client still waits for from it: ReadyForQuery per Sync or
   * Query sent, and whether a unit without its Sync is in flight. */
  int slot = server->shard;
  bool open_unit;
  int readies = pgs_replies_readies_owed(&server->replies, &open_unit);
  pgs_server_close(server, why);
  if (client) owner->lost(client, slot, readies, open_unit, why);
}

static void server_on_drained(pgs_io_t *io) {
  pgs_server_t *server = io->owner;
  if (server->client) owner->drained(server->client);
}

/* ---- login through libpq ---- */

/* WHY: what the event loop saw (libpq has not read the socket's error
 * yet, so its message ends with "failed:"), or NULL. */
static void connect_failed_because(pgs_server_t *server, const char *why) {
  char error[256];
  char joined[512];
  const char *msg = server->pg ? PQerrorMessage(server->pg) : "out of memory";
  if (why) {
    snprintf(joined, sizeof(joined), "%s %s", msg, why);
    msg = joined;
  }
  /* libpq's message spans lines (the reason, then a hint): one line, so
   * that logs and the client's error keep the reason. */
  size_t n = 0;
  for (const char *c = msg; *c && n + 1 < sizeof(error); c++) {
    char ch = *c == '\n' || *c == '\t' || *c == '\r' ? ' ' : *c;
    if (ch == ' ' && (n == 0 || error[n - 1] == ' ')) continue;
    error[n++] = ch;
  }
  while (n > 0 && error[n - 1] == ' ') n--;
  error[n] = '\0';
  pgs_warn("server connect for %s/%s failed: %s", server->pool->dbname, server->pool->username,
           error);
  pool_ops->failed(server, error);
}

static void connect_failed(pgs_server_t *server) { connect_failed_because(server, NULL); }

static void connect_done(pgs_server_t *server) {
  int fd = PQsocket(server->pg);
  int copy = dup(fd);
  if (copy < 0) {
    connect_failed(server);
    return;
  }
  poll_close(server);
  pgs_io_init(&server->io, server, SERVER_MAX_MESSAGE + PGS_IO_READ_CHUNK);
  server->io.on_read = server_on_read;
  server->io.on_error = server_on_error;
  server->io.on_drained = server_on_drained;
  server->io.on_close = handle_closed_cb;
  if (uv_tcp_init(&server->worker->loop, &server->io.tcp) != 0 ||
      uv_tcp_open(&server->io.tcp, copy) != 0) {
    close(copy);
    connect_failed(server);
    return;
  }
  server->io.tcp.data = &server->io;
  server->io.open = true;
  uv_tcp_nodelay(&server->io.tcp, 1);
  if (PQgssEncInUse(server->pg)) {
    /* libpq's GSSAPI encryption has no session pgshard could carry on. */
    connect_failed_because(server,
                           "GSSAPI encryption to servers is not supported "
                           "(use sslmode, or gssencmode=disable)");
    return;
  }
  if (PQsslInUse(server->pg)) {
    struct ssl_st *ssl = PQsslStruct(server->pg, "OpenSSL");
    if (ssl == NULL || pgs_io_tls_adopt(&server->io, ssl) != 0) {
      connect_failed_because(server, "cannot carry on libpq's TLS session");
      return;
    }
  }
  server->backend_pid = PQbackendPID(server->pg);
  server->txstatus = 'I';
  const char *scs = PQparameterStatus(server->pg, "standard_conforming_strings");
  server->login_scs_off = scs && strcmp(scs, "on") != 0;
  pgs_debug("server %d (%s/%s): logged in", server->backend_pid, server->pool->dbname,
            server->pool->username);
  if (pgs_io_start_reading(&server->io) != 0) {
    connect_failed(server);
    return;
  }
  pool_ops->connected(server);
}

/* Watch libpq's socket for EVENTS, on a new handle when libpq moved to
 * another one. False when the socket cannot be watched. */
static bool poll_watch(pgs_server_t *server, int events);

static void poll_cb(uv_poll_t *handle, int status, int events) {
  pgs_server_t *server = handle->data;
  if (status < 0) {
    /* libpq reads the socket's error (refused, unreachable) when polled. */
    if (PQconnectPoll(server->pg) == PGRES_POLLING_FAILED)
      connect_failed(server);
    else
      connect_failed_because(server, uv_strerror(status));
    return;
  }
  switch (PQconnectPoll(server->pg)) {
  case PGRES_POLLING_READING:
    if (!poll_watch(server, UV_READABLE)) connect_failed_because(server, "cannot poll its socket");
    return;
  case PGRES_POLLING_WRITING:
    if (!poll_watch(server, UV_WRITABLE)) connect_failed_because(server, "cannot poll its socket");
    return;
  case PGRES_POLLING_OK:
    uv_poll_stop(server->poll);
    connect_done(server);
    return;
  default:
    connect_failed(server);
    return;
  }
}

static bool poll_watch(pgs_server_t *server, int events) {
  int fd = PQsocket(server->pg);
  if (fd < 0) return false;
  if (server->poll && server->poll_fd != fd) poll_close(server);
  if (server->poll == NULL) {
    uv_poll_t *poll = pgs_xmalloc(sizeof(*poll));
    if (uv_poll_init_socket(&server->worker->loop, poll, fd) != 0) {
      free(poll);
      return false;
    }
    poll->data = server;
    server->poll = poll;
    server->poll_fd = fd;
  }
  /* A socket libpq reopened under the same number is watched afresh:
   * uv_poll_start registers the descriptor again. */
  return uv_poll_start(server->poll, events, poll_cb) == 0;
}

void pgs_server_connect(pgs_pool_t *pool) {
  pgs_server_t *server = pgs_xcalloc(1, sizeof(*server));
  server->worker = pool->worker;
  server->pool = pool;
  server->down_epoch = pool->down_epoch;
  server->state = PGS_SV_CONNECTING;
  server->state_since_ms = pgs_now_ms();
  server->born_ms = server->state_since_ms;
  server->txstatus = 'I';
  pgs_strmap_init(&server->prepared);
  pgs_replies_init(&server->replies, forget_one_prepared, server);
  pgs_list_append(&pool->connecting, &server->link);
  pool->nconnecting++;
  server->pg = PQconnectStart(pool->conninfo);
  if (server->pg == NULL || PQstatus(server->pg) == CONNECTION_BAD) {
    /* Reported by the pool's next tick: failing here would re-enter the
     * caller's loop over waiters. */
    snprintf(server->last_error, sizeof(server->last_error), "%s",
             server->pg ? PQerrorMessage(server->pg) : "out of memory");
    server->state_since_ms = 0;
    return;
  }
  if (!poll_watch(server, UV_WRITABLE)) {
    snprintf(server->last_error, sizeof(server->last_error), "cannot poll the socket");
    server->state_since_ms = 0;
    return;
  }
}
