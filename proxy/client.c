/*
 * client.c — one application connection: startup, authentication, and the
 * stream of requests it sends.
 *
 * States (pgs_client_state_t): STARTUP -> AUTH -> [LOGIN] -> IDLE <-> WAITING
 * <-> ACTIVE -> CLOSING. A client only ever holds a server while ACTIVE; in
 * transaction pooling it gives it back at the ReadyForQuery that ends each
 * transaction (server.c decides, see should_release), and asks again when
 * its next complete message arrives.
 *
 * What must survive a change of server is kept here and re-established on
 * whichever server the client gets:
 *  - settings: startup parameters and tracked SET/RESET, replayed as one
 *    injected query when the server's settings differ (settings_hash);
 *  - named prepared statements: the client's name maps to a server-wide
 *    name derived from the statement's text and types, prepared on a server
 *    on first use (an injected Parse) and never twice.
 * Session state that cannot be replayed pins the client to its server.
 *
 * TLS (client_tls): an SSLRequest is answered 'S' and the connection's io
 * runs the handshake (io.c); from then on this file reads and writes
 * plaintext as on any connection. Whether a client may log in without TLS,
 * or without the certificate the mode asks for, is decided at its startup
 * packet under the config it logs in with; over TLS, SCRAM offers
 * SCRAM-SHA-256-PLUS bound to the connection's certificate.
 *
 * Every failure goes through pgs_client_fail (FATAL, then close) or
 * pgs_client_refuse (ERROR, the session goes on).
 */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/accounting.h"
#include "pgshard/log.h"
#include "pgshard/client.h"
#include "pgshard/console.h"
#include "pgshard/listen.h"
#include "pgshard/pool.h"
#include "pgshard/request.h"
#include "pgshard/server.h"
#include "pgshard/stats.h"
#include "pgshard/tls.h"
#include "pgshard/twophase.h"
#include "pgshard/mailbox.h"
#include "pgshard/peers.h"

#define CLIENT_MAX_AUTH_MESSAGE 4096
/* How long a client's output backlog may stay over max_client_memory
 * without the client taking any of it before it is closed. */
#define CLIENT_STALL_MS 2000

/* Client connections open in the process, on every worker (max_client_conn
 * is for the process: the kernel spreads connections over the workers'
 * listeners unevenly). */
static int process_clients;

static const char *const client_state_names[] = {"startup", "auth",   "login",  "idle",
                                                 "waiting", "active", "closing"};

static void client_set_state(pgs_client_t *client, pgs_client_state_t state) {
  PGS_ASSERT(client->state != PGS_CL_CLOSING);
  pgs_debug("client %d (%s@%s): %s -> %s", client->cancel_pid, client->username, client->peer,
            client_state_names[client->state], client_state_names[state]);
  client->state = state;
}

/* ---- freeing ---- */

static void free_settings(pgs_client_t *client) {
  for (int i = 0; i < client->nsettings; i++) {
    free(client->settings[i].sql);
    free(client->settings[i].value);
  }
  free(client->settings);
  client->settings = NULL;
  client->nsettings = 0;
}

static void clear_tx_ops(pgs_client_t *client) {
  pgs_session_clear_tx_ops(&client->session);
  client->tx_failed = false;
}

/* The slow-request log's copies of a request (request.c makes them). */
static void free_request_log(pgs_client_t *client) {
  free(client->request_text);
  client->request_text = NULL;
  free(client->request_trace);
  client->request_trace = NULL;
  free(client->request_shard_us);
  client->request_shard_us = NULL;
  client->request_shard_cap = 0;
}

static void client_closed_cb(uv_handle_t *handle) {
  pgs_client_t *client = ((pgs_io_t *)handle->data)->owner;
  pgs_list_remove(&client->link);
  pgs_io_free_buffers(&client->io);
  pgs_strmap_free(&client->session.stmts, pgs_session_free_stmt);
  if (client->servers) /* pgs_request_init ran */
    pgs_request_free(client);
  else
    free(client->session.startup_tenant);
  free_settings(client);
  clear_tx_ops(client);
  pgs_scram_free(client->scram);
  free(client->login_values);
  free(client->startup_options);
  free(client->names);
  free_request_log(client);
  if (client->config) pgs_config_unref(client->config);
  PGS_ASSERT(client->mem_held == 0); /* everything charged was given back */
  free(client);
}

/* Whether SERVER runs a statement naming the client's 2PC gid. */
static bool settles_gid(const pgs_client_t *client, const pgs_server_t *server) {
  return pgs_session_twopc_gid(&client->session)[0] &&
         !strcmp(server->gid, client->session.twopc->gid) && !pgs_server_expect_idle(server);
}

/* Give a server back (or drop it) when its client goes away. */
static void detach_server(pgs_client_t *client, pgs_server_t *server) {
  if (pgs_server_flush(server) < 0) server->dirty = true;
  bool settling = settles_gid(client, server);
  pgs_request_unlink(client, server);
  if (server->state != PGS_SV_ACTIVE) return;
  if (settling) {
    /* Its PREPARE TRANSACTION, COMMIT or ROLLBACK PREPARED runs on whatever
     * pgshard does (it is not cancelled): the server is kept until it
     * answers, and recovery leaves the gid alone until then (it would race
     * the server). A dirty one is closed then. */
    pgs_twophase_hold(server->gid);
    server->gid_held = true;
    if (client->session.pinned || client->session.temp || server->pool->mode == PGS_POOL_SESSION)
      server->dirty = true; /* its session state is not for another client */
    pgs_pool_set_state(server, PGS_SV_RESETTING);
    return;
  }
  /* A server skipping to Sync after an error looks idle but would skip the
   * next client's first messages too. */
  if (server->dirty || !pgs_server_expect_idle(server) || server->txstatus != 'I' ||
      server->io.writing || server->replies.skipping) {
    /* What it runs for the client is of no use any more: cancelled, not
     * left to run to its end (closing the connection would not stop it). */
    pgs_server_cancel(server, "its client left");
    pgs_server_close(server, "client left during a request or transaction");
    return;
  }
  if (client->session.temp) {
    /* Its temporary schema outlives DISCARD ALL, and a server that has one
     * lets PREPARE TRANSACTION through after temporary tables were used,
     * where a fresh one refuses it. */
    pgs_server_close(server, "client made temporary objects");
    return;
  }
  if (client->session.pinned || server->pool->mode == PGS_POOL_SESSION) {
    /* Session state (LISTEN, temp tables, advisory locks...) must not leak to
     * the next client: reset it before the server is reused. */
    pgs_pool_set_state(server, PGS_SV_RESETTING);
    pgs_server_inject_query(server, "DISCARD ALL", pgs_rule_internal(PGS_ON_ERROR_OWNER));
    pgs_server_forget_prepared(server);
    server->settings_hash = 0;
    if (pgs_server_flush(server) < 0) pgs_server_close(server, "write failed during reset");
    return;
  }
  pgs_pool_server_free(server->pool, server);
}

static void detach_servers(pgs_client_t *client) {
  for (int i = 0; i < client->session.nslots; i++)
    if (client->servers[i]) detach_server(client, client->servers[i]);
  if (client->server) detach_server(client, client->server);
}

void pgs_client_close(pgs_client_t *client) {
  if (client->state == PGS_CL_CLOSING) return;
  if (client->state == PGS_CL_WAITING || client->state == PGS_CL_LOGIN) {
    if (client->wait_pool) pgs_pool_cancel_wait(client->wait_pool, client);
  }
  detach_servers(client);
  pgs_admin_free(client);
  pgs_listen_client_gone(client);
  client_set_state(client, PGS_CL_CLOSING);
  pgs_list_remove(&client->link);
  pgs_list_append(&client->worker->closing, &client->link);
  __atomic_sub_fetch(&client->worker->nclients, 1, __ATOMIC_RELAXED);
  __atomic_sub_fetch(&process_clients, 1, __ATOMIC_RELAXED);
  if (client->io.open) {
    pgs_io_close(&client->io);
  } else {
    uv_handle_t fake;
    fake.data = &client->io;
    client_closed_cb(&fake);
  }
}

static void emit_error(pgs_client_t *client, const char *severity, const char *sqlstate,
                       const char *message) {
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_msg_error_raw(pgs_io_scratch(&client->io), severity, sqlstate, message, NULL);
  pgs_io_scratch_done(&client->io, mark);
}

/* The error path both failures share: format, log, queue the ErrorResponse. */
static void report(pgs_client_t *client, const char *severity, const char *sqlstate,
                   const char *fmt, va_list ap) {
  char message[1024];
  int n = snprintf(message, sizeof(message), "pgshard: ");
  vsnprintf(message + n, sizeof(message) - (size_t)n, fmt, ap);
  pgs_info("client %d (%s@%s) %s: %s (SQLSTATE %s)", client->cancel_pid, client->username,
           client->peer, severity[0] == 'F' ? "closed" : "refused", message, sqlstate);
  pgs_account_sqlstate(client, sqlstate);
  emit_error(client, severity, sqlstate, message);
}

void pgs_client_fail(pgs_client_t *client, const char *sqlstate, const char *fmt, ...) {
  va_list ap;
  if (client->state == PGS_CL_CLOSING) return;
  va_start(ap, fmt);
  report(client, "FATAL", sqlstate, fmt, ap);
  va_end(ap);
  if (pgs_io_flush(&client->io) < 0) { /* best effort: we are closing anyway */
  }
  pgs_client_close(client);
}

static void emit_ready(pgs_client_t *client) {
  size_t mark = pgs_io_scratch_mark(&client->io);
  char status = client->servers ? pgs_request_ready_status(client) : client->txstatus;
  pgs_msg_ready(pgs_io_scratch(&client->io), status);
  pgs_io_scratch_done(&client->io, mark);
  client->txstatus = status;
}

/* A client refused a server goes back to what it holds. */
static void leave_waiting(pgs_client_t *client) {
  if (client->state != PGS_CL_WAITING) return;
  bool linked = false;
  for (int i = 0; i < client->session.nslots; i++) linked |= client->servers[i] != NULL;
  client_set_state(client, linked ? PGS_CL_ACTIVE : PGS_CL_IDLE);
}

void pgs_client_refuse(pgs_client_t *client, const char *sqlstate, const char *fmt, ...) {
  va_list ap;
  if (client->state == PGS_CL_CLOSING) return;
  if (client->fan) {
    /* A part of a cross-shard statement got no server: the statement
     * fails once the parts sent have answered, and their servers are
     * released as usual (never left mid-request). */
    char why[400];
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (pgs_request_fan_unserved(client, sqlstate, why)) {
      leave_waiting(client);
      if (pgs_io_flush(&client->io) < 0) {
        pgs_client_close(client);
        return;
      }
      pgs_client_process(client);
      return;
    }
  }
  va_start(ap, fmt);
  report(client, "ERROR", sqlstate, fmt, ap);
  va_end(ap);
  /* The request being worked on ends here. A simple query is one request;
   * an extended-protocol request ends at Sync, and PostgreSQL discards
   * everything up to it after an error. */
  pgs_io_t *io = &client->io;
  char type;
  size_t total;
  pgs_session_tx_failed(&client->session);
  if (pgs_msg_peek(io->in.data + io->in_pos, io->in.len - io->in_pos, io->in.len, &type, &total) ==
          PGS_OK &&
      io->in.len - io->in_pos >= total) {
    if (pgs_session_planned(&client->session)) pgs_steps_clear(&client->session);
    io->in_pos += total;
    if (type == 'Q' || type == 'F') {
      emit_ready(client);
    } else if (type == 'S') {
      client->session.unit_mask = 0;
      emit_ready(client);
    } else {
      pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
    }
  } else {
    pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
  }
  leave_waiting(client);
  if (pgs_io_flush(&client->io) < 0) {
    pgs_client_close(client);
    return;
  }
  pgs_client_process(client);
}

/* ---- settings ---- */

static void recompute_settings_hash(pgs_client_t *client) {
  XXH3_state_t state;
  if (client->nsettings == 0) {
    client->settings_hash = 0;
    return;
  }
  XXH3_64bits_reset(&state);
  for (int i = 0; i < client->nsettings; i++)
    XXH3_64bits_update(&state, client->settings[i].sql, strlen(client->settings[i].sql) + 1);
  client->settings_hash = XXH3_64bits_digest(&state);
  if (client->settings_hash <= 1) client->settings_hash = 2; /* 0, 1 are reserved */
}

/* SQL establishes setting NAME; VALUE is its value when known (NULL: not
 * a single constant); STARTUP: from the startup packet. */
static void put_setting(pgs_client_t *client, const char *name, char *sql, const char *value,
                        bool startup) {
  for (int i = 0; i < client->nsettings; i++) {
    pgs_setting_t *s = &client->settings[i];
    if (s->startup == startup && !strcasecmp(s->name, name)) {
      free(s->sql);
      free(s->value);
      s->sql = sql;
      s->value = value ? pgs_xstrdup(value) : NULL;
      return;
    }
  }
  client->settings =
      pgs_xrealloc(client->settings, sizeof(*client->settings) * (size_t)(client->nsettings + 1));
  pgs_setting_t *s = &client->settings[client->nsettings++];
  snprintf(s->name, sizeof(s->name), "%s", name);
  s->sql = sql;
  s->value = value ? pgs_xstrdup(value) : NULL;
  s->startup = startup;
}

/* Forget the client's SETs of NAME; NULL: of everything RESET ALL resets
 * (role and session authorization stay). */
static void remove_settings(pgs_client_t *client, const char *name) {
  int j = 0;
  for (int i = 0; i < client->nsettings; i++) {
    pgs_setting_t *s = &client->settings[i];
    if (!s->startup && (name ? !strcasecmp(s->name, name) : !pgs_session_is_role(s->name))) {
      free(s->sql);
      free(s->value);
      continue;
    }
    client->settings[j++] = *s;
  }
  client->nsettings = j;
}

static char *startup_setting_sql(const char *name, const char *value) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  pgs_buf_put(&b, "SELECT pg_catalog.set_config(E'", 31);
  for (int pass = 0; pass < 2; pass++) {
    for (const char *p = pass ? value : name; *p; p++) {
      if (*p == '\'' || *p == '\\') pgs_buf_put(&b, p, 1);
      pgs_buf_put(&b, p, 1);
    }
    pgs_buf_put(&b, pass ? "', false)" : "', E'", pass ? 9 : 5);
  }
  pgs_buf_put_u8(&b, 0);
  return (char *)b.data;
}

/* Whether the server reports NAME's value when it changes (GUC_REPORT):
 * the parameters the pool's servers reported at login. */
static bool reported_parameter(const pgs_client_t *client, const char *name) {
  for (int i = 0; i < client->pool->nparams; i++)
    if (!strcasecmp(client->pool->params[i].name, name)) return true;
  return false;
}

/* The server reported NAME = VALUE (ParameterStatus) while the client's
 * SETs wait in tx_ops: the last SET of NAME gives exactly that value (SET
 * datestyle TO ymd after SET datestyle TO iso leaves "ISO, YMD", which its
 * text alone would not give on another server). A RESET after it decides
 * instead. The report comes before the ReadyForQuery that commits tx_ops;
 * when a transaction rolls back, its ops are dropped whatever was reported. */
static void note_reported(pgs_client_t *client, const uint8_t *body, size_t len) {
  pgs_reader_t r;
  pgs_reader_init(&r, body, len);
  const char *name = pgs_read_cstr(&r, NULL);
  const char *value = pgs_read_cstr(&r, NULL);
  if (r.bad || name == NULL || value == NULL) return;
  for (int i = client->session.ntx_ops - 1; i >= 0; i--) {
    pgs_set_op_t *op = &client->session.tx_ops[i];
    if (op->kind == PGS_SET_OP_RESET_ALL) return;
    if (strcasecmp(op->name, name) != 0) continue;
    if (op->kind != PGS_SET_OP_SET) return;
    pgs_buf_t b;
    pgs_buf_init(&b);
    pgs_buf_put(&b, "SET ", 4);
    pgs_buf_put(&b, op->name, strlen(op->name));
    pgs_buf_put(&b, " = E'", 5);
    for (const char *p = value; *p; p++) {
      if (*p == '\'' || *p == '\\') pgs_buf_put(&b, p, 1);
      pgs_buf_put(&b, p, 1);
    }
    pgs_buf_put(&b, "'", 1);
    pgs_buf_put_u8(&b, 0);
    free(op->sql);
    op->sql = (char *)b.data;
    snprintf(op->value, sizeof(op->value), "%s", value);
    op->has_value = strlen(value) < sizeof(op->value);
    op->reported = true;
    return;
  }
}

/* The transaction that held the SETs in tx_ops has ended. */
static void commit_tx_ops(pgs_client_t *client) {
  bool reset_startup = false;
  if (client->session.ntx_ops == 0) return;
  if (!client->tx_failed) {
    for (int i = 0; i < client->session.ntx_ops; i++) {
      pgs_set_op_t *op = &client->session.tx_ops[i];
      switch (op->kind) {
      case PGS_SET_OP_SET:
        /* A new session authorization ends any SET ROLE. */
        if (!strcmp(op->name, "session_authorization")) remove_settings(client, "role");
        /* A reported parameter the server did not report has not changed
         * (SET datestyle TO iso when it already was): what the client has
         * is what it had. */
        if (!op->reported && reported_parameter(client, op->name)) break;
        put_setting(client, op->name, op->sql, op->has_value ? op->value : NULL, false);
        op->sql = NULL;
        break;
      case PGS_SET_OP_RESET:
        remove_settings(client, op->name);
        if (!strcmp(op->name, "session_authorization")) remove_settings(client, "role");
        reset_startup = true;
        break;
      case PGS_SET_OP_RESET_ALL:
        remove_settings(client, NULL);
        reset_startup = true;
        break;
      case PGS_SET_OP_LISTEN:
      case PGS_SET_OP_UNLISTEN:
      case PGS_SET_OP_UNLISTEN_ALL:
        break; /* not settings: never among tx_ops (planner.c) */
      }
    }
    recompute_settings_hash(client);
    /* The servers ran these statements themselves: they now match, except
     * that RESET returns startup parameters to the server's own defaults.
     * With several servers, which ran what is not tracked: replay later. */
    bool has_startup = false;
    int linked = 0;
    for (int i = 0; i < client->nsettings; i++) has_startup |= client->settings[i].startup;
    for (int i = 0; i < client->session.nslots; i++) linked += client->servers[i] != NULL;
    for (int i = 0; i < client->session.nslots; i++)
      if (client->servers[i])
        client->servers[i]->settings_hash =
            (reset_startup && has_startup) || linked > 1 ? 1 : client->settings_hash;
  }
  clear_tx_ops(client);
}

static void replay_settings(pgs_client_t *client, pgs_server_t *server) {
  if (client->settings_hash == 0 && server->settings_hash == 0) return;
  if (server->settings_hash == client->settings_hash) return;
  pgs_buf_t sql;
  pgs_buf_init(&sql);
  if (server->settings_hash != 0) pgs_buf_put(&sql, "RESET ALL;", 10);
  for (int i = 0; i < client->nsettings; i++) {
    pgs_buf_put(&sql, client->settings[i].sql, strlen(client->settings[i].sql));
    pgs_buf_put(&sql, ";", 1);
  }
  pgs_buf_put_u8(&sql, 0);
  pgs_server_inject_query(server, (const char *)sql.data, pgs_rule_internal(PGS_ON_ERROR_OWNER));
  pgs_buf_free(&sql);
  server->settings_hash = client->settings_hash;
}

/* A server that logs in with standard_conforming_strings off (a role or
 * database default) would read strings otherwise than pgshard routed them:
 * a routing client, told "on" at login, gets it on there. The next client
 * replays from RESET ALL (settings_hash 1: unknown). */
static void force_standard_strings(pgs_client_t *client, pgs_server_t *server) {
  if (!client->session.routing || !server->login_scs_off) return;
  pgs_server_inject_query(server, "SET standard_conforming_strings = on",
                          pgs_rule_internal(PGS_ON_ERROR_OWNER));
  server->settings_hash = 1;
}

/* ---- messages from the server that the client's state depends on ---- */

void pgs_client_on_server_message(pgs_client_t *client, char type, const uint8_t *body,
                                  size_t len) {
  /* A part of a cross-shard read: the read's one error is counted when it
   * reaches the client (fanout.c), not each part's. */
  if (type == 'E' && client->fan == NULL) pgs_account_error(client, body, len);
  pgs_listen_client_message(client, type, body, len);
  if (client->session.ntx_ops == 0) return;
  if (type == 'S') {
    note_reported(client, body, len);
    return;
  }
  if (type == 'E' || (type == 'C' && len >= 8 && !memcmp(body, "ROLLBACK", 8)))
    client->tx_failed = true;
}

#define SLOW_LOG_PER_SECOND 100 /* slow-request lines a worker writes per second at most */

/* log_min_duration_ms: a request that took US microseconds. */
static void log_slow_request(pgs_client_t *client, uint64_t us, char status) {
  pgs_worker_t *w = client->worker;
  uint64_t second = pgs_now_ms() / 1000;
  if (second != w->slow_logged_second) {
    if (w->slow_suppressed > 0)
      pgs_warn(
          "log_min_duration_ms: %d slow requests not logged in the last second (at most %d "
          "a second per worker)",
          w->slow_suppressed, SLOW_LOG_PER_SECOND);
    w->slow_logged_second = second;
    w->slow_logged = 0;
    w->slow_suppressed = 0;
  }
  if (w->slow_logged++ >= SLOW_LOG_PER_SECOND) {
    w->slow_suppressed++;
    return;
  }
  char id[48], client_id[16], ms[32], shards[256] = "", tx[2] = {status, '\0'};
  snprintf(id, sizeof(id), "c%d.%llu", client->cancel_pid, (unsigned long long)client->request_id);
  snprintf(client_id, sizeof(client_id), "%d", client->cancel_pid);
  snprintf(ms, sizeof(ms), "%.3f", (double)us / 1000.0);
  char shard_ms[512] = "";
  size_t n = 0, t = 0;
  for (int i = 0; i < client->session.nslots && i < 64 && n < sizeof(shards); i++) {
    if (!(client->request_slots & ((uint64_t)1 << i))) continue;
    const char *name = client->session.db->shards[i / 2].name, *role = (i & 1) ? "(replica)" : "";
    n += (size_t)snprintf(shards + n, sizeof(shards) - n, "%s%s%s", n ? "," : "", name, role);
    /* Its time there: from the first message sent to its last ReadyForQuery. */
    const uint64_t *at = client->request_shard_us && i < client->request_shard_cap
                             ? &client->request_shard_us[2 * i]
                             : NULL;
    if (at && at[0] && at[1] >= at[0] && t < sizeof(shard_ms))
      t += (size_t)snprintf(shard_ms + t, sizeof(shard_ms) - t, "%s%s%s=%.3f", t ? "," : "", name,
                            role, (double)(at[1] - at[0]) / 1000.0);
  }
  pgs_log_field_t fields[] = {
      {"request", id},
      {"client", client_id},
      {"db", client->dbname},
      {"user", client->username},
      {"duration_ms", ms},
      {"shards", shards[0] ? shards : NULL},
      {"shard_ms", shard_ms[0] ? shard_ms : NULL},
      {"tx", tx},
      {"error", client->session.ex.request_failed ? "true" : NULL},
      {"sqlstate", client->request_sqlstate[0] ? client->request_sqlstate : NULL},
      {"sql", client->request_text && client->request_text[0] ? client->request_text : NULL},
      {"traceparent",
       client->request_trace && client->request_trace[0] ? client->request_trace : NULL},
  };
  pgs_log_event(PGS_LOG_INFO, "slow_request", fields, (int)PGS_ARRAY_LEN(fields),
                "slow request %s: %.3f ms", id, (double)us / 1000.0);
}

/* SHOW QUERIES: the request's statement (routing clients: its normalised
 * text is known; request.c made its entry when it read it). */
static void count_query(pgs_client_t *client, uint64_t us) {
  pgs_worker_t *w = client->worker;
  if (client->request_query == 0 || w->queries == NULL) return;
  /* Replaced meanwhile by a newer statement (a full table): counted
   * without its text. */
  pgs_query_stats_t *q =
      pgs_query_stats_get(w->queries, client->dbname, client->request_query, "(text evicted)");
  q->calls++;
  q->total_us += us;
  if (client->session.ex.request_failed) q->errors++;
  int shards = 0;
  uint64_t seen = 0;
  for (int i = 0; i < client->session.nslots && i < 64; i++)
    if ((client->request_slots >> i) & 1 && !((seen >> (i / 2)) & 1)) {
      seen |= (uint64_t)1 << (i / 2);
      shards++;
    }
  if (shards > 1) q->fanouts++;
  if (shards > q->max_shards) q->max_shards = shards;
  pgs_hist_add(&q->latency, us);
  client->request_query = 0;
}

/* A request ended with a ReadyForQuery of STATUS: into the statistics. */
static void count_request(pgs_client_t *client, char status) {
  pgs_db_stats_t *st = client->stats;
  if (st == NULL || client->request_start_us == 0) return;
  uint64_t us = pgs_now_us() - client->request_start_us;
  int slow = client->worker->config->log_min_duration_ms;
  if (slow >= 0 && us >= (uint64_t)slow * 1000) log_slow_request(client, us, status);
  st->requests++;
  if (status == 'I') st->transactions++;
  if (client->session.ex.request_failed) st->errors++;
  pgs_hist_add(&st->latency, us);
  count_query(client, us);
  st->bytes_in += client->io.read_total - client->io.counted_in;
  st->bytes_out += client->io.out_total - client->io.counted_out;
  client->io.counted_in = client->io.read_total;
  client->io.counted_out = client->io.out_total;
  client->request_start_us = 0;
  client->session.ex.request_failed = false;
  free_request_log(client); /* the request's: an idle client keeps none */
}

void pgs_client_after_ready(pgs_client_t *client, char status) {
  count_request(client, status);
  client->txstatus = status;
  client->active_ms = pgs_now_ms(); /* idle from now on, unless it sends */
  if (status == 'I') {
    commit_tx_ops(client);
    pgs_session_tx_done(&client->session, pgs_now_ms());
  } else if (status == 'E')
    client->tx_failed = true;
  /* The transaction's LISTENs, and the notifications held for it. */
  pgs_listen_after_ready(client, status);
  /* A request answered by its servers ends here, not in pgs_request_process:
   * its working memory goes now, while the client idles. */
  pgs_session_rest(&client->session);
}

/* ---- login ---- */

static void send_auth(pgs_client_t *client, int32_t code, const void *data, size_t len) {
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_msg_auth(pgs_io_scratch(&client->io), code, data, len);
  pgs_io_scratch_done(&client->io, mark);
}

static void finish_login(pgs_client_t *client, const pgs_param_t *params) {
  pgs_pool_t *pool = client->pool;
  pgs_buf_t *out = pgs_io_scratch(&client->io);
  size_t mark = pgs_io_scratch_mark(&client->io);
  for (int i = 0; i < pool->nparams; i++) {
    pgs_msg_parameter_status(out, params[i].name, params[i].value);
    pgs_session_on_parameter_status(&client->session, params[i].name, params[i].value);
  }
  pgs_msg_backend_key(out, client->cancel_pid, client->cancel_key);
  client->txstatus = 'I';
  pgs_msg_ready(out, 'I');
  pgs_io_scratch_done(&client->io, mark);
  client_set_state(client, PGS_CL_IDLE);
  pgs_info("client %d (%s@%s) logged in to %s", client->cancel_pid, client->username, client->peer,
           client->dbname);
}

/* Whether the client set, at startup, a parameter PostgreSQL reports: then
 * its values must come from a server (PostgreSQL normalises them). */
static bool sets_reported_parameter(const pgs_client_t *client) {
  for (int i = 0; i < client->nsettings; i++)
    for (int j = 0; j < client->pool->nparams; j++)
      if (client->settings[i].startup &&
          !strcasecmp(client->settings[i].name, client->pool->params[j].name))
        return true;
  return false;
}

static const pgs_welcome_t *find_welcome(const pgs_pool_t *pool, uint64_t hash) {
  for (int i = 0; i < pool->nwelcome; i++)
    if (pool->welcome[i].settings_hash == hash) return &pool->welcome[i];
  return NULL;
}

/* On the server linked for the login: apply the client's settings and read
 * back every reported parameter, in one injected query. */
static void read_login_values(pgs_client_t *client, pgs_server_t *server) {
  pgs_buf_t sql;
  pgs_buf_init(&sql);
  if (server->settings_hash != 0) pgs_buf_put(&sql, "RESET ALL;", 10);
  for (int i = 0; i < client->nsettings; i++) {
    pgs_buf_put(&sql, client->settings[i].sql, strlen(client->settings[i].sql));
    pgs_buf_put(&sql, ";", 1);
  }
  pgs_buf_put(&sql, "SELECT ", 7);
  for (int i = 0; i < client->pool->nparams; i++) {
    char item[128];
    int n = snprintf(item, sizeof(item), "%spg_catalog.current_setting('%s', true)", i ? ", " : "",
                     client->pool->params[i].name);
    pgs_buf_put(&sql, item, (size_t)n);
  }
  pgs_buf_put_u8(&sql, 0);
  pgs_server_inject_capture(server, (const char *)sql.data);
  pgs_buf_free(&sql);
  server->settings_hash = client->settings_hash;
  client->nlogin_values = client->pool->nparams;
  client->login_values = pgs_xcalloc((size_t)client->nlogin_values, sizeof(pgs_param_t));
  memcpy(client->login_values, client->pool->params,
         sizeof(pgs_param_t) * (size_t)client->nlogin_values);
}

void pgs_client_on_login_row(pgs_client_t *client, const uint8_t *body, size_t len) {
  pgs_reader_t r;
  if (client->login_values == NULL) return;
  pgs_reader_init(&r, body, len);
  int ncols = pgs_read_i16(&r);
  /* Bounded by what was allocated: the pool's count may have moved since. */
  for (int i = 0; i < ncols && i < client->nlogin_values; i++) {
    int32_t n = pgs_read_i32(&r);
    if (n < 0) continue; /* NULL: the server has no such parameter */
    const uint8_t *v = pgs_read_bytes(&r, (size_t)n);
    if (v == NULL) return;
    pgs_param_t *p = &client->login_values[i];
    snprintf(p->value, sizeof(p->value), "%.*s", (int)n, (const char *)v);
  }
}

void pgs_client_login_done(pgs_client_t *client) {
  pgs_pool_t *pool = client->pool;
  pgs_welcome_t *w = (pgs_welcome_t *)find_welcome(pool, client->settings_hash);
  if (w == NULL) {
    if (pool->nwelcome < PGS_POOL_WELCOME_CACHE) {
      w = &pool->welcome[pool->nwelcome++];
    } else {
      w = &pool->welcome[pool->welcome_next];
      pool->welcome_next = (pool->welcome_next + 1) % PGS_POOL_WELCOME_CACHE;
    }
  }
  w->settings_hash = client->settings_hash;
  int n = client->nlogin_values < pool->nparams ? client->nlogin_values : pool->nparams;
  memcpy(w->params, client->login_values, sizeof(pgs_param_t) * (size_t)n);
  /* Parameters the pool learnt while this login ran: the pool's values. */
  memcpy(w->params + n, pool->params + n, sizeof(pgs_param_t) * (size_t)(pool->nparams - n));
  free(client->login_values);
  client->login_values = NULL;
  client->nlogin_values = 0;
  finish_login(client, w->params);
  client_set_state(client, PGS_CL_ACTIVE);
  (void)pgs_io_start_reading(&client->io); /* stopped while logging in */
}

/* libpq's options quoting: a backslash before spaces and backslashes. */
static void put_option_word(pgs_buf_t *b, const char *word) {
  for (const char *p = word; *p; p++) {
    if (*p == ' ' || *p == '\t' || *p == '\\') pgs_buf_put(b, "\\", 1);
    pgs_buf_put(b, p, 1);
  }
}

/* Session pooling: the client's server is its own for the whole session,
 * so its startup parameters become the server's own startup parameters
 * (RESET and DISCARD ALL return to them, as on a direct connection) instead
 * of settings replayed with set_config. They leave client->settings and key
 * the pool. Returns the libpq options, or NULL when there are none. */
static char *take_startup_options(pgs_client_t *client) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  int j = 0;
  for (int i = 0; i < client->nsettings; i++) {
    pgs_setting_t *s = &client->settings[i];
    if (!s->startup) {
      client->settings[j++] = *s;
      continue;
    }
    if (b.len) pgs_buf_put(&b, " ", 1);
    pgs_buf_put(&b, "-c ", 3);
    put_option_word(&b, s->name);
    pgs_buf_put(&b, "=", 1);
    put_option_word(&b, s->value ? s->value : "");
    free(s->sql);
    free(s->value);
  }
  client->nsettings = j;
  recompute_settings_hash(client);
  if (b.len == 0) {
    pgs_buf_free(&b);
    return NULL;
  }
  pgs_buf_put_u8(&b, 0);
  return (char *)b.data;
}

static void login_ok(pgs_client_t *client) {
  send_auth(client, PGS_AUTHREQ_OK, NULL, 0);
  if (!strcmp(client->dbname, "pgshard")) {
    pgs_admin_login(client);
    if (client->state != PGS_CL_CLOSING) {
      client_set_state(client, PGS_CL_IDLE);
      if (pgs_io_flush(&client->io) < 0)
        pgs_client_close(client);
      else
        pgs_admin_process(client);
    }
    return;
  }
  const pgs_database_t *db = pgs_config_find_database(client->config, client->dbname);
  if (db == NULL) {
    pgs_client_fail(client, PGS_SQLSTATE_INVALID_CATALOG, "database \"%s\" does not exist",
                    client->dbname);
    return;
  }
  client->session.db = db;
  client->stats = pgs_account_db_stats(client->worker, db->name);
  if (db->pool_mode == PGS_POOL_SESSION) {
    client->startup_options = take_startup_options(client);
  } else {
    /* A role given at startup is applied with set_config, which RESET ALL
     * (replay's first word) does not undo: keep the server, DISCARD ALL it. */
    for (int i = 0; i < client->nsettings; i++)
      if (client->settings[i].startup && pgs_session_is_role(client->settings[i].name))
        client->session.pinned = true;
  }
  pgs_key_error_t kerr;
  if (!pgs_session_startup_tenant(&client->session, &kerr)) {
    pgs_client_fail(client, kerr.sqlstate, "tenant \"%s\": %s", client->session.startup_tenant,
                    kerr.message);
    return;
  }
  pgs_request_init(client);
  int node;
  client->want_slot = pgs_session_login_slot(&client->session, &node);
  client->pool = pgs_pool_get(client->worker, client->config, db, client->user, 0, node,
                              client->startup_options);
  client->pools[node] = client->pool;
  client->wait_pool = client->pool;
  const pgs_welcome_t *w = NULL;
  if (client->pool->have_params &&
      (!sets_reported_parameter(client) ||
       (w = find_welcome(client->pool, client->settings_hash)) != NULL)) {
    finish_login(client, w ? w->params : client->pool->params);
    if (pgs_io_flush(&client->io) < 0) {
      pgs_client_close(client);
      return;
    }
    pgs_client_process(client);
    return;
  }
  if (pgs_io_flush(&client->io) < 0) {
    pgs_client_close(client);
    return;
  }
  client_set_state(client, PGS_CL_LOGIN);
  pgs_io_stop_reading(&client->io);
  pgs_pool_request(client->pool, client);
}

/* pgshard.* settings at startup are pgshard's, not the server's. */
static bool startup_pgshard_setting(pgs_client_t *client, const char *name, const char *value) {
  if (strncasecmp(name, "pgshard.", 8) != 0) return false;
  if (!strcasecmp(name + 8, "tenant")) {
    free(client->session.startup_tenant);
    client->session.startup_tenant = pgs_xstrdup(value);
  }
  return true;
}

/* options: "-c name=value" or "--name=value", backslash escapes spaces. */
static bool parse_options(pgs_client_t *client, const char *options) {
  const char *p = options;
  while (*p) {
    char token[1024];
    size_t n = 0;
    while (*p == ' ' || *p == '\t') p++;
    if (!*p) break;
    while (*p && *p != ' ' && *p != '\t') {
      if (*p == '\\' && p[1]) p++;
      if (n < sizeof(token) - 1) token[n++] = *p;
      p++;
    }
    token[n] = '\0';
    const char *setting;
    if (!strcmp(token, "-c")) {
      n = 0;
      while (*p == ' ' || *p == '\t') p++;
      while (*p && *p != ' ' && *p != '\t') {
        if (*p == '\\' && p[1]) p++;
        if (n < sizeof(token) - 1) token[n++] = *p;
        p++;
      }
      token[n] = '\0';
      setting = token;
    } else if (!strncmp(token, "-c", 2)) {
      setting = token + 2;
    } else if (!strncmp(token, "--", 2)) {
      setting = token + 2;
    } else {
      return false;
    }
    char *eq = strchr(setting, '=');
    if (eq == NULL || eq == setting || eq - setting >= PGS_MAX_NAME) return false;
    char name[PGS_MAX_NAME];
    snprintf(name, sizeof(name), "%.*s", (int)(eq - setting), setting);
    for (char *c = name; *c; c++)
      if (*c == '-') *c = '_';
    if (!startup_pgshard_setting(client, name, eq + 1))
      put_setting(client, name, startup_setting_sql(name, eq + 1), eq + 1, true);
  }
  return true;
}

/* SCRAM channel binding: the tls-server-end-point data of the client's
 * TLS connection into OUT (may be NULL: only its length); 0 without TLS. */
static size_t channel_binding(const pgs_client_t *client, uint8_t out[PGS_TLS_MAX_END_POINT]) {
  uint8_t scratch[PGS_TLS_MAX_END_POINT];
  const struct ssl_st *ssl = pgs_io_tls_session(&client->io);
  if (ssl == NULL || !pgs_io_tls_active(&client->io)) return 0;
  return pgs_tls_server_end_point(ssl, out ? out : scratch);
}

/* An SSLRequest is answered 'S' (client_tls other than disable). */
static bool accepts_tls(const pgs_config_t *config) {
  return config->client_tls != PGS_CLIENT_TLS_DISABLE && config->tls_ctx != NULL;
}

/* client_tls of the client's config: a client without TLS, or without the
 * certificate it asks for, is refused (28000, as pg_hba.conf would).
 * The certificate is checked again here, not only in the handshake: the
 * handshake may have run under an earlier config that did not ask. */
static bool tls_allows_login(pgs_client_t *client) {
  pgs_client_tls_t mode = client->config->client_tls;
  if (mode < PGS_CLIENT_TLS_REQUIRE) return true;
  const struct ssl_st *ssl = pgs_io_tls_session(&client->io);
  if (ssl == NULL || !pgs_io_tls_active(&client->io)) {
    pgs_client_fail(client, PGS_SQLSTATE_INVALID_AUTHORIZATION,
                    "SSL connection is required (client_tls = %s) for user \"%s\"",
                    pgs_client_tls_name(mode), client->username);
    return false;
  }
  if (mode == PGS_CLIENT_TLS_REQUIRE) return true;
  if (!pgs_tls_peer_verified(ssl)) {
    pgs_client_fail(client, PGS_SQLSTATE_INVALID_AUTHORIZATION,
                    "connection requires a valid client certificate (client_tls = %s)",
                    pgs_client_tls_name(mode));
    return false;
  }
  char cn[PGS_MAX_NAME];
  if (mode == PGS_CLIENT_TLS_VERIFY_FULL &&
      (!pgs_tls_peer_common_name(ssl, cn, sizeof(cn)) || strcmp(cn, client->username) != 0)) {
    pgs_client_fail(client, PGS_SQLSTATE_INVALID_AUTHORIZATION,
                    "certificate validation (client_tls = verify-full) failed for user \"%s\": "
                    "CN mismatch",
                    client->username);
    return false;
  }
  return true;
}

/* The client's address and its user and database names, in one allocation
 * (names are cut at PGS_MAX_NAME - 1 bytes, as PostgreSQL cuts identifiers).
 * PEER may point into the block it replaces. */
static void client_set_names(pgs_client_t *client, const char *peer, const char *user,
                             const char *database) {
  int max = PGS_MAX_NAME - 1;
  size_t lp = strlen(peer), lu = strnlen(user, (size_t)max), ld = strnlen(database, (size_t)max);
  char *names = pgs_xmalloc(lp + lu + ld + 3);
  memcpy(names, peer, lp + 1);
  memcpy(names + lp + 1, user, lu);
  names[lp + 1 + lu] = '\0';
  memcpy(names + lp + lu + 2, database, ld);
  names[lp + lu + 2 + ld] = '\0';
  free(client->names);
  client->names = names;
  client->peer = names;
  client->username = names + lp + 1;
  client->dbname = names + lp + lu + 2;
}

static void handle_startup_message(pgs_client_t *client, const pgs_startup_t *startup) {
  const char *user = pgs_startup_get(startup, "user");
  const char *database = pgs_startup_get(startup, "database");
  if (user == NULL || *user == '\0') {
    pgs_client_fail(client, PGS_SQLSTATE_INVALID_AUTHORIZATION,
                    "no PostgreSQL user name specified in startup packet");
    return;
  }
  if (database == NULL || *database == '\0') database = user;
  client_set_names(client, client->peer, user, database);
  if (pgs_startup_get(startup, "replication")) {
    pgs_client_fail(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                    "replication connections are not supported");
    return;
  }
  for (int i = 0; i < startup->nparams; i++) {
    const char *name = startup->names[i];
    if (!strcmp(name, "user") || !strcmp(name, "database")) continue;
    if (!strcmp(name, "options")) {
      if (!parse_options(client, startup->values[i])) {
        pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                        "invalid command-line argument in options: \"%s\"", startup->values[i]);
        return;
      }
      continue;
    }
    if (!strncmp(name, "_pq_.", 5)) continue; /* protocol extensions: none supported */
    if (strlen(name) >= PGS_MAX_NAME) {
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "startup parameter name too long");
      return;
    }
    if (!startup_pgshard_setting(client, name, startup->values[i]))
      put_setting(client, name, startup_setting_sql(name, startup->values[i]), startup->values[i],
                  true);
  }
  recompute_settings_hash(client);

  client->config = pgs_config_ref(client->worker->config);
  if (!tls_allows_login(client)) return;
  client->user = pgs_config_find_user(client->config, client->username);
  if (client->user == NULL) {
    pgs_client_fail(client, PGS_SQLSTATE_INVALID_AUTHORIZATION, "role \"%s\" does not exist",
                    client->username);
    return;
  }
  client_set_state(client, PGS_CL_AUTH);
  switch (client->config->auth) {
  case PGS_AUTH_TRUST:
    login_ok(client);
    return;
  case PGS_AUTH_MD5:
    if (pgs_random_bytes(client->md5_salt, 4) != PGS_OK) {
      pgs_client_fail(client, PGS_SQLSTATE_INTERNAL, "no randomness for the md5 salt");
      return;
    }
    send_auth(client, PGS_AUTHREQ_MD5, client->md5_salt, 4);
    break;
  case PGS_AUTH_SCRAM:
    client->scram = pgs_xcalloc(1, sizeof(*client->scram));
    /* The secret is computed once per config load, not per login. */
    const char *secret = client->user->scram_secret ? client->user->scram_secret
                         : client->user->password   ? client->user->password
                                                    : "";
    if (pgs_scram_init(client->scram, secret) != PGS_OK) {
      pgs_client_fail(client, PGS_SQLSTATE_INVALID_PASSWORD,
                      "password authentication failed for user \"%s\"", client->username);
      return;
    }
    if (channel_binding(client, NULL) > 0)
      send_auth(client, PGS_AUTHREQ_SASL, "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0", 34);
    else
      send_auth(client, PGS_AUTHREQ_SASL, "SCRAM-SHA-256\0", 15);
    break;
  }
  if (pgs_io_flush(&client->io) < 0) pgs_client_close(client);
}

/* Returns bytes consumed, 0 when more are needed; closes the client on error. */
static size_t handle_startup(pgs_client_t *client) {
  pgs_io_t *io = &client->io;
  const uint8_t *p = io->in.data + io->in_pos;
  size_t avail = io->in.len - io->in_pos;
  if (avail < 4) {
    io->in_want = io->in_pos + 4;
    return 0;
  }
  uint32_t len = pgs_get_u32(p);
  if (len < 8 || len > PGS_MAX_STARTUP_PACKET) {
    pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid length of startup packet");
    return 0;
  }
  if (avail < len) {
    io->in_want = io->in_pos + len;
    return 0;
  }
  pgs_startup_t startup;
  char err[256];
  /* Parameters point into the buffer: copy the packet so they outlive it. */
  uint8_t packet[PGS_MAX_STARTUP_PACKET];
  memcpy(packet, p + 4, len - 4);
  pgs_status_t st = pgs_startup_parse(packet, len - 4, &startup, err, sizeof(err));
  if (st == PGS_EUNSUPPORTED) {
    pgs_client_fail(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", err);
    return 0;
  }
  if (st != PGS_OK) {
    pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "%s", err);
    return 0;
  }
  io->in_pos += len;
  switch (startup.code) {
  case PGS_SSL_REQUEST_CODE:
  case PGS_GSSENC_REQUEST_CODE:
    if (io->in_pos != io->in.len) {
      /* Bytes sent before reading our answer could be a man in the middle. */
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                      "received unencrypted data after SSL request");
      return 0;
    }
    if (io->tls) {
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                      "encryption requested on an encrypted connection");
      return 0;
    }
    if (startup.code == PGS_SSL_REQUEST_CODE && accepts_tls(client->worker->config)) {
      pgs_io_emit(io, "S", 1);
      if (pgs_io_flush(io) < 0 || pgs_io_tls_accept(io, client->worker->config->tls_ctx) < 0)
        pgs_client_close(client);
      return len;
    }
    pgs_io_emit(io, "N", 1);
    if (pgs_io_flush(io) < 0) pgs_client_close(client);
    return len;
  case PGS_CANCEL_REQUEST_CODE: {
    /* Another peer's session (its peer_id in the key): sent on to it. */
    int peer = pgs_peers_owner(client->worker->config, startup.cancel_key);
    if (peer > 0)
      pgs_peers_forward_cancel(client->worker, peer, startup.cancel_pid, startup.cancel_key);
    else
      pgs_mailbox_cancel(startup.cancel_pid, startup.cancel_key);
    pgs_client_close(client);
    return 0;
  }
  case PGS_PEER_CANCEL_CODE: /* a peer's: ours, or nobody's */
    pgs_mailbox_cancel(startup.cancel_pid, startup.cancel_key);
    pgs_client_close(client);
    return 0;
  default:
    handle_startup_message(client, &startup);
    return len;
  }
}

static void auth_failed(pgs_client_t *client) {
  pgs_client_fail(client, PGS_SQLSTATE_INVALID_PASSWORD,
                  "password authentication failed for user \"%s\"", client->username);
}

static void handle_auth_message(pgs_client_t *client, const uint8_t *body, size_t len) {
  if (client->config->auth == PGS_AUTH_MD5) {
    char response[64];
    if (len == 0 || len > sizeof(response) || body[len - 1] != 0) {
      auth_failed(client);
      return;
    }
    memcpy(response, body, len);
    if (!client->user->password ||
        !pgs_md5_verify(client->username, client->user->password, client->md5_salt, response)) {
      auth_failed(client);
      return;
    }
    login_ok(client);
    return;
  }
  /* SCRAM-SHA-256 */
  char out[PGS_SCRAM_MAX_MESSAGE];
  pgs_reader_t r;
  pgs_reader_init(&r, body, len);
  if (client->scram->state == PGS_SCRAM_STATE_INIT) {
    const char *mech = pgs_read_cstr(&r, NULL);
    int32_t dlen = pgs_read_i32(&r);
    uint8_t cbind[PGS_TLS_MAX_END_POINT];
    size_t cbind_len = r.bad ? 0 : channel_binding(client, cbind);
    bool plus = !r.bad && cbind_len > 0 && !strcmp(mech, "SCRAM-SHA-256-PLUS");
    if (r.bad || (!plus && strcmp(mech, "SCRAM-SHA-256") != 0)) {
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                      "client selected an invalid SASL authentication mechanism");
      return;
    }
    if (pgs_scram_channel_binding(client->scram, plus, cbind, cbind_len) != PGS_OK) {
      pgs_client_fail(client, PGS_SQLSTATE_INTERNAL, "channel binding failed");
      return;
    }
    if (dlen < 0 || (size_t)dlen != pgs_reader_left(&r)) {
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "malformed SASL message");
      return;
    }
    const uint8_t *data = pgs_read_bytes(&r, (size_t)dlen);
    if (pgs_scram_server_first(client->scram, (const char *)data, (size_t)dlen, out, sizeof(out)) !=
        PGS_OK) {
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "malformed SCRAM message");
      return;
    }
    send_auth(client, PGS_AUTHREQ_SASL_CONTINUE, out, strlen(out));
    if (pgs_io_flush(&client->io) < 0) pgs_client_close(client);
    return;
  }
  pgs_status_t st =
      pgs_scram_server_final(client->scram, (const char *)body, len, out, sizeof(out));
  if (st == PGS_EAUTH) {
    auth_failed(client);
    return;
  }
  if (st != PGS_OK) {
    pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "malformed SCRAM message");
    return;
  }
  /* The keys are of no more use: not kept for the session's life. */
  pgs_scram_clear(client->scram);
  send_auth(client, PGS_AUTHREQ_SASL_FINAL, out, strlen(out));
  login_ok(client);
}

static size_t handle_auth(pgs_client_t *client) {
  pgs_io_t *io = &client->io;
  char type;
  size_t total;
  pgs_status_t st = pgs_msg_peek(io->in.data + io->in_pos, io->in.len - io->in_pos,
                                 CLIENT_MAX_AUTH_MESSAGE, &type, &total);
  if (st == PGS_EAGAIN) {
    io->in_want = io->in_pos + 5;
    return 0;
  }
  if (st != PGS_OK || type != 'p') {
    pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                    "expected password response, got message type %d", (unsigned char)type);
    return 0;
  }
  if (io->in.len - io->in_pos < total) {
    io->in_want = io->in_pos + total;
    return 0;
  }
  const uint8_t *body = io->in.data + io->in_pos + 5;
  io->in_pos += total;
  handle_auth_message(client, body, total - 5);
  return total;
}

void pgs_client_on_server(pgs_client_t *client, pgs_server_t *server) {
  int slot = client->want_slot;
  PGS_ASSERT(client->servers[slot] == NULL);
  client->servers[slot] = server;
  client->session.linked |= (uint64_t)1 << slot;
  server->shard = slot;
  server->client = client;
  (void)pgs_io_start_reading(&server->io); /* whatever its last client left */
  if (client->state == PGS_CL_LOGIN) {
    /* Login finishes when the injected query's row is in
     * (pgs_client_login_done), unless the values are known by now. */
    const pgs_welcome_t *w = find_welcome(client->pool, client->settings_hash);
    if (w || !sets_reported_parameter(client)) {
      finish_login(client, w ? w->params : client->pool->params);
      client_set_state(client, PGS_CL_ACTIVE);
      replay_settings(client, server);
    } else {
      read_login_values(client, server);
    }
  } else {
    client_set_state(client, PGS_CL_ACTIVE);
    replay_settings(client, server);
  }
  force_standard_strings(client, server);
  if (pgs_server_flush(server) < 0) {
    pgs_server_close(server, "write to server failed");
    pgs_client_server_lost(client, "write to server failed");
    return;
  }
  if (pgs_io_flush(&client->io) < 0) {
    pgs_client_close(client);
    return;
  }
  /* Only logging in: nothing to run yet, the server goes back. */
  pgs_request_maybe_release(client);
  pgs_client_process(client);
}

void pgs_client_server_lost(pgs_client_t *client, const char *why) {
  client->server = NULL;
  if (client->session.ex.tx == PGS_TX_DECIDED && pgs_session_twopc_gid(&client->session)[0]) {
    /* Lost in the decision shard's COMMIT or after: only that shard knows
     * the outcome, and pgshard's recovery applies it on every shard. */
    pgs_client_fail(client, PGS_SQLSTATE_CONNECTION_FAILURE,
                    "server connection lost during a two-phase commit, whose outcome is "
                    "unknown here (recovery settles it alike on every shard): %s",
                    why);
    return;
  }
  pgs_client_fail(client, PGS_SQLSTATE_CONNECTION_FAILURE, "server connection lost: %s", why);
}

/* ---- cancel ---- */

void pgs_client_cancel(pgs_client_t *client) {
  for (int i = 0; i < client->session.nslots; i++)
    if (client->servers[i]) pgs_server_cancel(client->servers[i], "the client's CancelRequest");
  if (client->state == PGS_CL_WAITING && client->wait_pool) {
    /* What waits for a server (a fan's part, a statement reaching another
     * shard) is cancelled too: answered now, not once a server is free. */
    pgs_pool_cancel_wait(client->wait_pool, client);
    pgs_client_refuse(client, PGS_SQLSTATE_QUERY_CANCELED,
                      "canceling statement due to user request");
  }
}

/* ---- I/O callbacks and accept ---- */

static void client_on_read(pgs_io_t *io) {
  pgs_client_t *client = io->owner;
  client->active_ms = pgs_now_ms();
  for (;;) {
    switch (client->state) {
    case PGS_CL_STARTUP:
      if (handle_startup(client) == 0) goto done;
      break;
    case PGS_CL_AUTH:
      if (handle_auth(client) == 0) goto done;
      break;
    case PGS_CL_IDLE:
    case PGS_CL_ACTIVE:
      pgs_client_process(client);
      return;
    default:
      return; /* waiting: input stays buffered */
    }
  }
done:
  if (client->state != PGS_CL_CLOSING) pgs_io_compact(io);
}

static void client_on_error(pgs_io_t *io, int status) {
  pgs_client_t *client = io->owner;
  if (status != UV_EOF)
    pgs_info("client %d (%s@%s): connection error: %s", client->cancel_pid, client->username,
             client->peer, pgs_io_error_text(io, status));
  else
    pgs_debug("client %d (%s@%s): disconnected", client->cancel_pid, client->username,
              client->peer);
  if (status == UV_ENOBUFS) {
    pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "message too large");
    return;
  }
  pgs_client_close(client);
}

static void client_on_drained(pgs_io_t *io) {
  pgs_client_t *client = io->owner;
  for (int i = 0; i < client->session.nslots; i++)
    if (client->servers[i] && client->state != PGS_CL_CLOSING)
      pgs_server_process(client->servers[i]);
  /* A client paused because it did not read its replies goes on. */
  if ((client->state == PGS_CL_IDLE || client->state == PGS_CL_ACTIVE) && !io->reading)
    pgs_client_process(client);
}

/* ---- serving ---- */

void pgs_client_process(pgs_client_t *client) {
  if (client->admin)
    pgs_admin_process(client);
  else
    pgs_request_process(client);
}

/* ---- idleness ---- */

/* Waiting for its next request after a ReadyForQuery, with nothing of its
 * own in flight: what PgBouncer and PostgreSQL call idle. A client that
 * pgshard stopped reading is waiting for pgshard, not idle. */
static bool client_idle(const pgs_client_t *client) {
  if ((client->state != PGS_CL_IDLE && client->state != PGS_CL_ACTIVE) || !client->io.reading ||
      pgs_session_planned(&client->session) || client->fan || client->session.unit_mask ||
      client->session.ex.ready_pending > 0)
    return false;
  for (int i = 0; i < client->session.nslots; i++)
    if (client->servers[i] && !pgs_server_expect_idle(client->servers[i])) return false;
  return true;
}

/* Unsent output over max_client_memory that the client takes none of. */
/* How long (ms) the client's socket has taken none of the output pgshard
 * holds for it; 0 when it holds none. Progress is what the socket took
 * (pgs_io_accepted), not what is left: a client reading slowly while more
 * rows arrive leaves as much queued, yet takes bytes. */
static uint64_t output_stalled_ms(pgs_client_t *client, uint64_t now) {
  pgs_io_t *io = &client->io;
  if (!io->open || pgs_io_backlog(io) == 0) {
    client->stall_since_ms = 0;
    return 0;
  }
  uint64_t accepted = pgs_io_accepted(io);
  if (client->stall_since_ms == 0 || accepted != client->stall_accepted) {
    client->stall_since_ms = now;
    client->stall_accepted = accepted;
    return 0;
  }
  return now - client->stall_since_ms;
}

void pgs_client_tick(pgs_client_t *client, uint64_t now) {
  const pgs_config_t *config = client->worker->config; /* a reload applies at once */
  if (client->state == PGS_CL_CLOSING) return;
  uint64_t stalled = output_stalled_ms(client, now);
  if (stalled >= CLIENT_STALL_MS &&
      pgs_io_backlog(&client->io) > (size_t)config->max_client_memory) {
    pgs_client_fail(client, PGS_SQLSTATE_OUT_OF_MEMORY,
                    "client does not read its results: %zu bytes unsent, over max_client_memory "
                    "(%lld)",
                    pgs_io_backlog(&client->io), (long long)config->max_client_memory);
    return;
  }
  if (config->client_write_timeout_ms > 0 && stalled >= (uint64_t)config->client_write_timeout_ms) {
    pgs_client_fail(client, PGS_SQLSTATE_CONNECTION_FAILURE,
                    "client took none of its results for %llu ms (client_write_timeout_ms = %d)",
                    (unsigned long long)stalled, config->client_write_timeout_ms);
    return;
  }
  if (!client_idle(client)) {
    /* A request running longer than query_timeout_ms (waiting for a pool
     * included): the client is closed and its servers with it, which ends
     * the query on every shard (PgBouncer's query_timeout). Best set a
     * little above the servers' statement_timeout, for network trouble. */
    uint64_t running_ms =
        client->request_start_us ? (pgs_now_us() - client->request_start_us) / 1000 : 0;
    if (config->query_timeout_ms > 0 && running_ms >= (uint64_t)config->query_timeout_ms)
      pgs_client_fail(client, "57014",
                      "canceling statement due to query_timeout_ms (%d): it ran %llu ms",
                      config->query_timeout_ms, (unsigned long long)running_ms);
    return;
  }
  uint64_t idle = now > client->active_ms ? now - client->active_ms : 0;
  bool in_tx = client->txstatus == 'T' || client->txstatus == 'E';
  if (in_tx && config->idle_transaction_timeout_ms > 0 &&
      idle >= (uint64_t)config->idle_transaction_timeout_ms) {
    pgs_client_fail(client, PGS_SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT,
                    "terminating connection due to idle-in-transaction timeout "
                    "(idle_transaction_timeout_ms = %d)",
                    config->idle_transaction_timeout_ms);
  } else if (!in_tx && config->client_idle_timeout_ms > 0 &&
             idle >= (uint64_t)config->client_idle_timeout_ms) {
    pgs_client_fail(client, PGS_SQLSTATE_IDLE_SESSION_TIMEOUT,
                    "terminating connection due to client idle timeout "
                    "(client_idle_timeout_ms = %d)",
                    config->client_idle_timeout_ms);
  }
}

/* A client on LISTENER's next connection, or (LISTENER NULL) on socket FD. */
static pgs_client_t *client_open(pgs_worker_t *worker, uv_stream_t *listener, int fd) {
  pgs_client_t *client = pgs_xcalloc(1, sizeof(*client));
  client->worker = worker;
  client->username = client->dbname = client->peer = "";
  client->state = PGS_CL_STARTUP;
  client->created_ms = pgs_now_ms();
  client->active_ms = client->created_ms;
  pgs_list_init(&client->wait_link);
  pgs_strmap_init(&client->session.stmts);
  pgs_io_init(&client->io, client,
              (size_t)worker->config->max_message_size + 5 + PGS_IO_READ_CHUNK);
  client->io.on_read = client_on_read;
  client->io.on_error = client_on_error;
  client->io.on_drained = client_on_drained;
  client->io.on_close = client_closed_cb;
  uv_tcp_init(&worker->loop, &client->io.tcp);
  client->io.tcp.data = &client->io;
  client->io.open = true;
  pgs_list_append(&worker->clients, &client->link);
  __atomic_add_fetch(&worker->nclients, 1, __ATOMIC_RELAXED); /* others read it (worker.c) */
  int now_open = __atomic_add_fetch(&process_clients, 1, __ATOMIC_RELAXED);
  int rc = listener ? uv_accept(listener, (uv_stream_t *)&client->io.tcp)
                    : uv_tcp_open(&client->io.tcp, fd);
  if (rc != 0) {
    if (listener == NULL) close(fd);
    pgs_client_close(client);
    return NULL;
  }
  uv_tcp_nodelay(&client->io.tcp, 1);
  struct sockaddr_storage addr;
  int alen = sizeof(addr);
  char peer[64] = "?";
  if (uv_tcp_getpeername(&client->io.tcp, (struct sockaddr *)&addr, &alen) == 0) {
    char host[48];
    if (addr.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&addr, host, sizeof(host));
      snprintf(peer, sizeof(peer), "[%s]:%d", host,
               ntohs(((struct sockaddr_in6 *)&addr)->sin6_port));
    } else {
      uv_ip4_name((struct sockaddr_in *)&addr, host, sizeof(host));
      snprintf(peer, sizeof(peer), "%s:%d", host, ntohs(((struct sockaddr_in *)&addr)->sin_port));
    }
  }
  client_set_names(client, peer, "", "");
  client->cancel_pid =
      (int32_t)(((uint32_t)worker->index << 24) | (++worker->next_client & 0xffffffu));
  if (client->cancel_pid == 0) client->cancel_pid = (int32_t)(++worker->next_client & 0xffffffu);
  if (pgs_random_bytes(&client->cancel_key, sizeof(client->cancel_key)) != PGS_OK) {
    pgs_client_close(client);
    return NULL;
  }
  client->cancel_key = pgs_peers_cancel_key(worker->config->peer_id, client->cancel_key);
  if (now_open > worker->config->max_client_conn) {
    pgs_client_fail(client, PGS_SQLSTATE_TOO_MANY_CONNECTIONS, "too many clients already");
    return NULL;
  }
  if (pgs_io_start_reading(&client->io) != 0) {
    pgs_client_close(client);
    return NULL;
  }
  return client;
}

pgs_client_t *pgs_client_accept(pgs_worker_t *worker, uv_stream_t *listener) {
  return client_open(worker, listener, -1);
}

pgs_client_t *pgs_client_adopt(pgs_worker_t *worker, int fd) {
  return client_open(worker, NULL, fd);
}

/* ---- what a pool tells a client waiting in it (pool.c) ---- */

static void waiter_unserved(pgs_client_t *client, const char *sqlstate, const char *message) {
  if (client->state == PGS_CL_LOGIN)
    pgs_client_fail(client, sqlstate, "%s", message);
  else
    pgs_client_refuse(client, sqlstate, "%s", message);
}

const pgs_pool_waiter_ops_t pgs_client_waiter_ops = {
    .served = pgs_client_on_server,
    .unserved = waiter_unserved,
};

/* ---- what the layers serving its requests ask of the client ---- */

static void session_fail(pgs_client_t *client, const char *sqlstate, const char *message) {
  pgs_client_fail(client, sqlstate, "%s", message);
}

const pgs_session_ops_t pgs_client_session_ops = {
    .fail = session_fail,
    .close = pgs_client_close,
    .after_ready = pgs_client_after_ready,
    .server_lost = pgs_client_server_lost,
    .login_row = pgs_client_on_login_row,
    .login_done = pgs_client_login_done,
    .server_message = pgs_client_on_server_message,
};
