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
 * The expect queue is the heart of this file: one entry per request sent
 * (Parse, Bind, Describe, Execute, Close, Sync, Query), in order. Each reply
 * from the server completes the entry at the head. This is how pgshard knows
 * when a transaction is over (ReadyForQuery for the last request), how it
 * swallows replies to requests it injected itself (re-preparing a statement
 * on a new server, replaying SET, DISCARD ALL), and where to slot replies it
 * synthesizes (ParseComplete for a statement the server already has). After
 * an ErrorResponse in extended protocol the server skips everything up to
 * Sync, and so does the queue.
 *
 * States (see pgs_server_state_t) change only through pgs_pool_set_state.
 */
#include <string.h>
#include <unistd.h>

#include "pgshard/log.h"
#include "pgshard/proxy.h"
#include "pgshard/twophase.h"

#define SERVER_MAX_MESSAGE ((size_t)1 << 30) /* PostgreSQL's own MaxAllocSize */

static void server_free(pgs_server_t *server) {
  pgs_io_tls_release(&server->io);
  if (server->pg) PQfinish(server->pg);
  pgs_io_free_buffers(&server->io);
  pgs_server_forget_prepared(server);
  pgs_strmap_free(&server->prepared, NULL);
  free(server->prepared_order);
  free(server->expect);
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
  if (server->client) pgs_client_unlink(server->client, server);
  pgs_pool_set_state(server, PGS_SV_CLOSING);
  server->pending_closes++; /* held until this function returns */
  poll_close(server);
  if (server->io.open) {
    server->pending_closes++;
    pgs_io_close(&server->io);
  }
  if (--server->pending_closes == 0) server_free(server);
}

/* ---- the expect queue ---- */

void pgs_server_expect(pgs_server_t *server, pgs_expect_kind_t kind, bool internal,
                       const char *stmt) {
  if (server->expect_len == server->expect_cap) {
    size_t cap = server->expect_cap ? server->expect_cap * 2 : 64;
    pgs_expect_t *q = pgs_xmalloc(cap * sizeof(*q));
    for (size_t i = 0; i < server->expect_len; i++)
      q[i] = server->expect[(server->expect_head + i) % server->expect_cap];
    free(server->expect);
    server->expect = q;
    server->expect_cap = cap;
    server->expect_head = 0;
  }
  pgs_expect_t *e =
      &server->expect[(server->expect_head + server->expect_len) % server->expect_cap];
  e->kind = (uint8_t)kind;
  e->flags = 0;
  e->internal = internal;
  e->capture = false;
  e->hide = 0;
  snprintf(e->stmt, sizeof(e->stmt), "%s", stmt ? stmt : "");
  server->expect_len++;
}

void pgs_server_expect_flags(pgs_server_t *server, uint16_t flags) {
  PGS_ASSERT(server->expect_len > 0);
  server->expect[(server->expect_head + server->expect_len - 1) % server->expect_cap].flags = flags;
}

void pgs_server_expect_hide(pgs_server_t *server, int16_t hide) {
  PGS_ASSERT(server->expect_len > 0);
  server->expect[(server->expect_head + server->expect_len - 1) % server->expect_cap].hide = hide;
}

static pgs_expect_t *expect_front(pgs_server_t *server) {
  return server->expect_len ? &server->expect[server->expect_head] : NULL;
}

static void expect_pop(pgs_server_t *server) {
  PGS_ASSERT(server->expect_len > 0);
  server->expect_head = (server->expect_head + 1) % server->expect_cap;
  server->expect_len--;
}

bool pgs_server_expect_idle(const pgs_server_t *server) { return server->expect_len == 0; }

void pgs_server_emit_synthetic(pgs_server_t *server) {
  pgs_expect_t *e;
  while ((e = expect_front(server)) &&
         (e->kind == PGS_EXP_SYNTH_PARSE || e->kind == PGS_EXP_SYNTH_CLOSE)) {
    if (!server->error_until_sync && server->client) {
      pgs_io_t *out = &server->client->io;
      size_t mark = pgs_io_scratch_mark(out);
      pgs_msg_empty(pgs_io_scratch(out), e->kind == PGS_EXP_SYNTH_PARSE ? '1' : '3');
      pgs_io_scratch_done(out, mark);
    }
    expect_pop(server);
  }
}

void pgs_server_inject_query(pgs_server_t *server, const char *sql) {
  size_t mark = pgs_io_scratch_mark(&server->io);
  pgs_msg_query(pgs_io_scratch(&server->io), sql);
  pgs_io_scratch_done(&server->io, mark);
  pgs_server_expect(server, PGS_EXP_QUERY, true, NULL);
}

void pgs_server_inject_capture(pgs_server_t *server, const char *sql) {
  pgs_server_inject_query(server, sql);
  server->expect[(server->expect_head + server->expect_len - 1) % server->expect_cap].capture =
      true;
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
    pgs_server_expect(server, PGS_EXP_CLOSE, true, NULL);
    free(old);
  }
  size_t slot = (server->prepared_head + server->prepared_count) % PGS_SERVER_MAX_PREPARED;
  server->prepared_order[slot] = pgs_xstrdup(name);
  server->prepared_count++;
  pgs_strmap_put(&server->prepared, name, server->prepared_order[slot]);
}

static void forget_one_prepared(pgs_server_t *server, const char *name) {
  /* Rare (a Parse failed): leave the FIFO slot, drop the lookup entry. */
  pgs_strmap_remove(&server->prepared, name);
}

void pgs_server_forget_prepared(pgs_server_t *server) {
  for (size_t i = 0; i < server->prepared_count; i++)
    free(server->prepared_order[(server->prepared_head + i) % PGS_SERVER_MAX_PREPARED]);
  server->prepared_count = server->prepared_head = 0;
  pgs_strmap_free(&server->prepared, NULL);
}

/* ---- replies from the server ---- */

static void server_protocol_error(pgs_server_t *server, const char *what) {
  pgs_client_t *client = server->client;
  pgs_error("server %d (%s): protocol error: %s", server->backend_pid, server->pool->dbname, what);
  pgs_server_close(server, what);
  if (client) pgs_client_server_lost(client, what);
}

/* What to do with one server message. */
typedef enum {
  REPLY_DROP,    /* swallowed */
  REPLY_FORWARD, /* to the client as it is */
  REPLY_READY,   /* ReadyForQuery with the client's status over every shard */
  REPLY_SUM,     /* CommandComplete with the rows of every fan-out part */
  REPLY_FATAL,   /* the server is going away: the client's, unless the fan's
                    (a fan hears of it as the loss of the part) */
} reply_action_t;

/* After an error in extended protocol the server skips every message up
 * to the next Sync: so do the replies it owes. A fan part queued behind the
 * failed message is skipped too; the fan hears of it here (its own errors
 * reach it as replies). FLAGS: the failed message's. */
static void skip_to_sync(pgs_server_t *server, uint16_t flags) {
  pgs_expect_t *front;
  bool part_skipped = false;
  while ((front = expect_front(server)) && front->kind != PGS_EXP_SYNC) {
    if (front->kind == PGS_EXP_PARSE && front->stmt[0]) forget_one_prepared(server, front->stmt);
    part_skipped |= !(flags & PGS_EF_FAN) && (front->flags & PGS_EF_FAN);
    expect_pop(server);
  }
  if (part_skipped && server->client) pgs_fan_part_skipped(server->client, server->shard);
}

/* Decide what one complete server message does. */
static reply_action_t server_message(pgs_server_t *server, char type, const uint8_t *body,
                                     size_t len) {
  if (type == 'Z' && server->error_until_sync) {
    /* Messages sent after the error reached the server were skipped by it
     * too (a pipelining client kept sending): their replies never come. */
    pgs_expect_t *failed = expect_front(server);
    if (failed && failed->kind != PGS_EXP_SYNC) skip_to_sync(server, 0);
  }
  pgs_expect_t *front = expect_front(server);
  bool internal = front && front->internal;
  uint16_t flags = front ? front->flags : 0;
  pgs_client_t *client = server->client;
  reply_action_t visible = !internal && client ? REPLY_FORWARD : REPLY_DROP;
  pgs_debug("server %d -> client %d: '%c' (%zu bytes), expecting %zu, front %d%s",
            server->backend_pid, client ? client->cancel_pid : 0, type, len + 5, server->expect_len,
            front ? front->kind : -1, internal ? " internal" : "");

  switch (type) {
  case 'Z': {
    if (len != 1 || front == NULL ||
        (front->kind != PGS_EXP_SYNC && front->kind != PGS_EXP_QUERY)) {
      server_protocol_error(server, "unexpected ReadyForQuery");
      return REPLY_DROP;
    }
    server->txstatus = (char)body[0];
    server->error_until_sync = false;
    bool capture = front->capture;
    expect_pop(server);
    if (internal) {
      if (server->internal_failed && client == NULL) {
        server->internal_failed = false;
        server->dirty = true; /* a reset that failed: do not reuse */
      }
      if (server->internal_failed && client) {
        char why[300];
        snprintf(why, sizeof(why), "%s", server->last_error);
        server->internal_failed = false;
        server->dirty = true;
        if (client->state == PGS_CL_LOGIN)
          pgs_client_fail(client, PGS_SQLSTATE_CONNECTION_FAILURE, "invalid startup parameters: %s",
                          why);
        else
          pgs_client_fail(client, PGS_SQLSTATE_CONNECTION_FAILURE,
                          "could not restore session state on the server: %s", why);
        return REPLY_DROP;
      }
      if (capture && client && client->state == PGS_CL_LOGIN) pgs_client_login_done(client);
      return REPLY_DROP;
    }
    if (client == NULL) return REPLY_DROP;
    if (flags & PGS_EF_ZLAST) {
      if (client->zlast_pending > 1) {
        client->zlast_pending--;
        return REPLY_DROP;
      }
      client->zlast_pending = 0;
      return REPLY_READY;
    }
    if ((flags & PGS_EF_ZHIDE) && !client->step_error) return REPLY_DROP;
    if (flags & PGS_EF_ZDROP) return REPLY_DROP;
    return REPLY_READY;
  }
  case '1':
  case '2':
  case '3': {
    static const pgs_expect_kind_t want[] = {PGS_EXP_PARSE, PGS_EXP_BIND, PGS_EXP_CLOSE};
    if (front == NULL || front->kind != want[type - '1']) {
      server_protocol_error(server, "unexpected completion message");
      return REPLY_DROP;
    }
    expect_pop(server);
    return flags & PGS_EF_QUIET ? REPLY_DROP : visible;
  }
  case 'T':
  case 'n':
    if (front && front->kind == PGS_EXP_DESCRIBE) {
      expect_pop(server);
    }
    return flags & PGS_EF_QUIET ? REPLY_DROP : visible;
  case 't': /* ParameterDescription */
    return flags & PGS_EF_QUIET ? REPLY_DROP : visible;
  case 'C':
  case 'I':
  case 's':
    if (front && front->kind == PGS_EXP_EXECUTE) {
      expect_pop(server);
    }
    if (type == 'C' && (flags & PGS_EF_PREPARE)) server->gid_prepared = true;
    if (visible == REPLY_DROP) return REPLY_DROP;
    pgs_client_on_server_message(client, type, body, len);
    if (type == 'C' && (flags & PGS_EF_ACCUM)) {
      if (!client->fan_copies) client->fan_sum += pgs_route_tag_count((const char *)body);
      return REPLY_DROP;
    }
    if (type == 'C' && (flags & PGS_EF_SUM)) return REPLY_SUM;
    return REPLY_FORWARD;
  case 'E': {
    pgs_error_fields_t f;
    pgs_error_parse(body, len, &f);
    snprintf(server->last_error, sizeof(server->last_error), "%s (SQLSTATE %s)", f.message,
             f.sqlstate);
    if (front == NULL || !strcmp(f.severity, "FATAL") || !strcmp(f.severity, "PANIC")) {
      /* Not an answer to anything: the server is going away. */
      server->dirty = true;
      return client != NULL ? REPLY_FATAL : REPLY_DROP;
    }
    if (front->kind == PGS_EXP_QUERY) {
      /* An injected query failed: fatal for the session unless its error
       * is expected or is the client's to see. */
      if (internal && !(flags & (PGS_EF_IGNORE_ERROR | PGS_EF_FWD_ERROR)))
        server->internal_failed = true;
    } else {
      server->error_until_sync = true;
      skip_to_sync(server, flags);
    }
    if (client && (flags & PGS_EF_FWD_ERROR)) visible = REPLY_FORWARD;
    if (visible == REPLY_DROP) return REPLY_DROP;
    pgs_client_on_server_message(client, type, body, len);
    pgs_client_step_failed(client);
    return REPLY_FORWARD;
  }
  case 'K':
  case 'R':
    server_protocol_error(server, "authentication message after login");
    return REPLY_DROP;
  case 'D': /* DataRow */
    if (internal && front->capture && client) pgs_client_on_login_row(client, body, len);
    return flags & PGS_EF_NOROWS ? REPLY_DROP : visible;
  case 'S': /* ParameterStatus: the value a client's SET came to */
    if (client) {
      pgs_reader_t r;
      pgs_reader_init(&r, body, len);
      const char *name = pgs_read_cstr(&r, NULL);
      const char *value = pgs_read_cstr(&r, NULL);
      if (!r.bad) pgs_request_on_parameter_status(client, name, value);
    }
    if (visible == REPLY_FORWARD) pgs_client_on_server_message(client, type, body, len);
    return visible;
  case 'N': /* NoticeResponse */
  case 'A': /* NotificationResponse */
  case 'G': /* CopyInResponse */
  case 'H': /* CopyOutResponse */
  case 'W': /* CopyBothResponse */
  case 'd': /* CopyData */
  case 'c': /* CopyDone */
  case 'V': /* FunctionCallResponse */
    return visible;
  default: {
    char what[64];
    snprintf(what, sizeof(what), "unknown message type 0x%02x", (unsigned char)type);
    server_protocol_error(server, what);
    return REPLY_DROP;
  }
  }
}

static reply_action_t fan_action(pgs_fan_action_t a) {
  return a == PGS_FAN_FORWARD ? REPLY_FORWARD : a == PGS_FAN_READY ? REPLY_READY : REPLY_DROP;
}

/* Queue the client's copy of a message whose content pgshard changes. */
static void emit_rewritten(pgs_client_t *client, reply_action_t action, const uint8_t *body) {
  pgs_io_t *out = &client->io;
  size_t mark = pgs_io_scratch_mark(out);
  pgs_buf_t *b = pgs_io_scratch(out);
  if (action == REPLY_READY) {
    pgs_msg_ready(b, pgs_client_ready_status(client));
  } else {
    char tag[128];
    pgs_route_tag_with_count((const char *)body,
                             client->fan_sum + pgs_route_tag_count((const char *)body), tag,
                             sizeof(tag));
    client->fan_sum = 0;
    size_t start = pgs_msg_begin(b, 'C');
    pgs_buf_put_cstr(b, tag);
    pgs_msg_end(b, start);
  }
  pgs_io_scratch_done(out, mark);
}

void pgs_server_process(pgs_server_t *server) {
  pgs_io_t *in = &server->io;
  pgs_client_t *client = server->client;
  while (server->state != PGS_SV_CLOSING) {
    if (client && pgs_io_backlog(&client->io) > PGS_IO_HIGH_WATER) {
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
    const pgs_expect_t *front = expect_front(server);
    uint16_t front_flags = front ? front->flags : 0;
    int16_t hide = front ? front->hide : 0;
    reply_action_t action = server_message(server, type, p + 5, total - 5);
    if (server->client == NULL)
      action = REPLY_DROP;
    else if (action == REPLY_FATAL)
      action = front_flags & PGS_EF_FAN ? REPLY_DROP : REPLY_FORWARD;
    else if (front_flags & PGS_EF_FAN)
      action = fan_action(pgs_fan_reply(server->client, server->shard, type, p, total));
    else if ((front_flags & PGS_EF_HIDE) && type == 'T' && action == REPLY_FORWARD) {
      /* A merged portal described: the shards' hidden columns stay hidden. */
      pgs_merge_spec_t spec = {.nhidden = hide};
      pgs_io_t *out = &server->client->io;
      size_t mark = pgs_io_scratch_mark(out);
      pgs_merge_client_rowdesc(&spec, p + 5, total - 5, pgs_io_scratch(out));
      pgs_io_scratch_done(out, mark);
      action = REPLY_DROP;
    }
    if (action == REPLY_FORWARD)
      pgs_io_emit(&server->client->io, p, total);
    else if (action != REPLY_DROP)
      emit_rewritten(server->client, action, p + 5);
    /* Replies pgshard makes up go out once everything before them has. */
    if (server->state != PGS_SV_CLOSING) pgs_server_emit_synthetic(server);
    if (server->client != client) break; /* the client failed and went away */
    if (action == REPLY_READY) pgs_client_after_ready(client, pgs_client_ready_status(client));
    if (server->client != client || server->state == PGS_SV_CLOSING) break;
  }
  if (server->state == PGS_SV_CLOSING) return;
  client = server->client;
  if (client) {
    if (pgs_io_flush(&client->io) < 0) {
      pgs_client_close(client);
      return;
    }
  }
  if (server->state == PGS_SV_CLOSING) return;
  pgs_io_compact(in);
  /* Read on unless the client is the bottleneck. Decided before a release:
   * a server parked in the pool with reading stopped would never answer its
   * next client. */
  if (server->io.open && (!client || pgs_io_backlog(&client->io) <= PGS_IO_HIGH_WATER))
    (void)pgs_io_start_reading(in);
  if (client && server->client == client) {
    /* Between transactions: every server goes back. A client that waited
     * for this server's replies before sending elsewhere goes on. */
    if (pgs_client_maybe_release(client)) return;
    if (client->blocked) {
      client->blocked = false;
      pgs_client_process(client);
    }
    return;
  }
  if (server->state == PGS_SV_RESETTING && server->expect_len == 0) {
    server_unhold(server);
    if (server->txstatus != 'I' || server->dirty) {
      pgs_server_close(server, "reset left a transaction open");
      return;
    }
    pgs_pool_server_free(server->pool, server);
    return;
  }
  if (client == NULL && server->state == PGS_SV_IDLE && server->dirty) {
    pgs_server_close(server, "server reported a fatal error");
    return;
  }
}

int pgs_server_flush(pgs_server_t *server) { return pgs_io_flush(&server->io); }

/* ---- cancel ---- */

typedef struct cancel_work {
  uv_work_t req;
  PGcancel *cancel;
} cancel_work_t;

static void cancel_run(uv_work_t *req) {
  cancel_work_t *w = pgs_container_of(req, cancel_work_t, req);
  char err[256];
  if (!PQcancel(w->cancel, err, sizeof(err))) pgs_warn("cancel request failed: %s", err);
}

static void cancel_done(uv_work_t *req, int status) {
  PGS_UNUSED(status);
  cancel_work_t *w = pgs_container_of(req, cancel_work_t, req);
  PQfreeCancel(w->cancel);
  free(w);
}

void pgs_server_cancel(pgs_server_t *server, const char *why) {
  if (server->pg == NULL || pgs_server_expect_idle(server)) return;
  cancel_work_t *w = pgs_xcalloc(1, sizeof(*w));
  w->cancel = PQgetCancel(server->pg);
  if (w->cancel == NULL || uv_queue_work(&server->worker->loop, &w->req, cancel_run, cancel_done)) {
    if (w->cancel) PQfreeCancel(w->cancel);
    free(w);
    return;
  }
  /* The statement may end on its own before the cancel lands, and the
   * cancel then hit whatever the server runs next: never another
   * client's statement. */
  server->dirty = true;
  pgs_info("server %d (%s/%s): cancel sent: %s", server->backend_pid, server->pool->dbname,
           server->pool->username, why);
}

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
  int slot = server->shard, readies = 0;
  bool open_unit = false;
  for (size_t i = 0; i < server->expect_len; i++) {
    const pgs_expect_t *e = &server->expect[(server->expect_head + i) % server->expect_cap];
    if (e->internal) continue;
    bool ends = e->kind == PGS_EXP_SYNC || e->kind == PGS_EXP_QUERY;
    readies += ends;
    open_unit = !ends;
  }
  pgs_server_close(server, why);
  if (client) pgs_client_server_lost_at(client, slot, readies, open_unit, why);
}

static void server_on_drained(pgs_io_t *io) {
  pgs_server_t *server = io->owner;
  if (server->client) pgs_client_process(server->client);
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
  pgs_pool_server_failed(server->pool, server, error);
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
  pgs_pool_server_connected(server->pool, server);
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
  server->state = PGS_SV_CONNECTING;
  server->state_since_ms = pgs_now_ms();
  server->born_ms = server->state_since_ms;
  server->txstatus = 'I';
  pgs_strmap_init(&server->prepared);
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
