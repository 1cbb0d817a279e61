/*
 * request.c — runs each client message's plan, and makes the replies of
 * several servers reach the client as if they came from one.
 *
 * A client holds at most one server per slot (client->servers[]). Each
 * complete client message is planned into steps by the pure planner
 * (router/planner.c, on the client's session): "send this to slot i, for
 * this reason" or "reply this myself", and maybe a fan to start first
 * (fanout.c). Steps run in order; a step for another slot than the
 * previous one first waits until every other server has answered
 * everything it was sent (a Flush is injected where the extended protocol
 * would otherwise keep replies back). So at any moment only one server has
 * replies in flight for the client, and they arrive in request order with
 * no reordering buffer: pipelining stays at full speed while a client
 * stays on one shard, and costs a round trip per change of shard. The
 * parts of a fan and the Syncs of a unit over several shards are the
 * exceptions: they run at once, their replies decided by the fan or
 * counted (exchange.h).
 *
 * Running a step: take a server for its slot from the pool of its node
 * (waiting in the pool's queue if needed), begin the transaction there when
 * the transaction reaches a new shard (BEGIN and the SET LOCALs so far,
 * replayed), check the step's routing decision, and issue() it: the one
 * place where a client's message is handed to a server, with statement
 * names mapped to the server's and each expected reply pushed with its
 * rule. The servers' replies come back through the owner table
 * (pgs_request_server_owner) and the engine's verdict (exchange.h).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pgshard/accounting.h"
#include "pgshard/log.h"
#include "pgshard/client.h"
#include "pgshard/coordinator.h"
#include "pgshard/fanout.h"
#include "pgshard/hold.h"
#include "pgshard/listen.h"
#include "pgshard/moves.h"
#include "pgshard/pool.h"
#include "pgshard/request.h"
#include "pgshard/server.h"
#include "pgshard/stats.h"
#include "pgshard/trace.h"
#include "pgshard/twophase.h"
#include "pgshard/pause.h"

#define BIT(i) ((uint64_t)1 << (i))
/* pgshard's own statements whose failure is the client's to see, or
 * expected (exchange.h). */
#define CLIENT_ERROR pgs_rule_internal(PGS_ON_ERROR_CLIENT)
#define EXPECTED_ERROR pgs_rule_internal(PGS_ON_ERROR_EXPECTED)
/* One more of FIELD in the client's database statistics (stats.h). */
#define COUNT(client, field)                                                                       \
  do {                                                                                             \
    if ((client)->stats) (client)->stats->field++;                                                 \
  } while (0)

/* The client connection's side (client.c), registered at start-up: this
 * file calls nothing above it. */
static const pgs_session_ops_t *connection;

void pgs_request_set_session_ops(const pgs_session_ops_t *ops) { connection = ops; }

/* ---- setup ---- */

/* What the planner asks of the proxy (planner.h), for CTX, the client. */
/* The health of SHARD, or NULL when no snapshot describes it (then:
 * primaries only). The snapshot may be of another config than the
 * client's (a reload the client has not followed yet, or one the monitor
 * has not checked yet): the shard is then found by its name and nodes. */
static const pgs_shard_health_t *session_health(void *ctx, int shard) {
  const pgs_client_t *client = ctx;
  const pgs_snapshot_t *snap = client->worker->snapshot;
  if (snap == NULL) return NULL;
  if (snap->config == client->config)
    return pgs_snapshot_shard(snap, client->session.db->name, shard);
  return pgs_snapshot_shard_of(snap, client->session.db, shard);
}

static uint32_t session_turn(void *ctx, bool advance) {
  pgs_worker_t *w = ((pgs_client_t *)ctx)->worker;
  return advance ? w->rr++ : w->rr;
}

static pgs_plan_t *session_analyze(void *ctx, const pgs_lexed_t *lexed) {
  pgs_client_t *client = ctx;
  if (client->config == client->worker->config && client->worker->plans)
    return pgs_plan_cache_get(client->worker->plans, client->session.db, lexed);
  return pgs_analyze(client->session.db, lexed); /* an old config's client: its own plans */
}

/* The request runs LEXED's statement (the first one counts): SHOW QUERIES
 * keys it by its normalised text. */
static void session_note_query(void *ctx, const pgs_lexed_t *lexed) {
  pgs_client_t *client = ctx;
  if (client->request_query != 0 || client->stats == NULL) return;
  client->request_query = lexed->hash ? lexed->hash : 1;
  pgs_worker_t *w = client->worker;
  if (w->queries == NULL) w->queries = pgs_xcalloc(1, sizeof(*w->queries));
  (void)pgs_query_stats_get(w->queries, client->dbname, client->request_query, lexed->normalized);
}

static void session_charge(void *ctx, size_t add, size_t sub) {
  if (add) pgs_account_mem_add(ctx, add);
  if (sub) pgs_account_mem_sub(ctx, sub);
}

static void session_refused(void *ctx, const char *sqlstate) {
  pgs_client_t *client = ctx;
  COUNT(client, refusals);
  pgs_account_sqlstate(client, sqlstate);
}

/* Whether VALUE names the encoding CLEAN as PostgreSQL reads an encoding
 * name (clean_encoding_name): letters and digits only, in any case. So
 * "'utf-8'", which asyncpg sends at startup quotes included, is utf8. */
static bool encoding_is(const char *value, const char *clean) {
  for (const char *p = value;; p++) {
    if (*p && !isalnum((unsigned char)*p)) continue;
    if (tolower((unsigned char)*p) != *clean) return false;
    if (*p == '\0') return true;
    clean++;
  }
}

/* Whether the session's client_encoding (as the client set it at startup
 * or with SET; the server's default, UTF8 in pgshard's databases,
 * otherwise) sends keys as UTF-8 bytes. */
static bool session_keys_utf8(void *ctx) {
  const pgs_client_t *client = ctx;
  for (int i = client->nsettings - 1; i >= 0; i--) {
    const pgs_setting_t *s = &client->settings[i];
    if (strcasecmp(s->name, "client_encoding") != 0) continue;
    if (s->value == NULL) return false; /* set to something pgshard did not read */
    return encoding_is(s->value, "utf8") || encoding_is(s->value, "unicode") ||
           encoding_is(s->value, "sqlascii") || !strcasecmp(s->value, "DEFAULT");
  }
  return true;
}

static uint64_t client_id(const pgs_client_t *client);

static bool session_owns_unnamed(void *ctx) {
  const pgs_client_t *client = ctx;
  return client->server && client->server->unnamed_owner == client_id(client);
}

static const char *session_columns(void *ctx, const char *table) {
  const pgs_client_t *client = ctx;
  return pgs_snapshot_columns(client->worker->snapshot, client->session.db->name, table);
}

/* The moves of a resharding in the client's database, from the snapshot
 * (shards are matched by name: it may be of another config). */
static const pgs_move_t *session_moves(void *ctx, int *n) {
  const pgs_client_t *client = ctx;
  return pgs_moves_of(client->worker->snapshot, client->session.db->name, n);
}

/* The database a statement must route alike in, for a transaction (or a
 * statement) that began under a cutover hold (hold.h): while the hold
 * lasts, the new map's (a statement routed otherwise there waits); once it
 * has ended and a reload has come, the workers' (a statement routed
 * otherwise there is told to retry: its transaction stays on the old map).
 * NULL for every other transaction: the fast path. */
static const pgs_database_t *session_hold(void *ctx) {
  pgs_client_t *client = ctx;
  if (client->tx_hold == 0) return NULL;
  uint64_t gen = pgs_hold_gen();
  client->hold_stale = gen != client->tx_hold;
  if (!client->hold_stale) return pgs_hold_database(gen, client->dbname);
  if (client->config == client->worker->config) return NULL;
  const pgs_database_t *now = pgs_config_find_database(client->worker->config, client->dbname);
  return now && !pgs_moves_same_map(client->session.db, now) ? now : NULL;
}

static const pgs_planner_ops_t planner_ops = {
    .health = session_health,
    .turn = session_turn,
    .analyze = session_analyze,
    .note_query = session_note_query,
    .charge = session_charge,
    .refused = session_refused,
    .keys_utf8 = session_keys_utf8,
    .owns_unnamed = session_owns_unnamed,
    .now_ms = pgs_now_ms,
    .columns = session_columns,
    .moves = session_moves,
    .hold = session_hold,
};

/* The servers and pools of a client of DB (per slot, per shard node), in
 * one allocation that client->servers owns. */
static void alloc_servers(pgs_client_t *client, const pgs_database_t *db) {
  client->pool_stride = 1;
  for (int i = 0; i < db->nshards; i++)
    if (db->shards[i].nreplicas + 1 > client->pool_stride)
      client->pool_stride = db->shards[i].nreplicas + 1;
  size_t nservers = (size_t)(2 * db->nshards);
  size_t npools = (size_t)(db->nshards * client->pool_stride);
  char *block = pgs_xcalloc(1, nservers * sizeof(pgs_server_t *) + npools * sizeof(pgs_pool_t *));
  client->servers = (pgs_server_t **)(void *)block;
  client->pools = (pgs_pool_t **)(void *)(block + nservers * sizeof(pgs_server_t *));
}

void pgs_request_init(pgs_client_t *client) {
  pgs_session_t *s = &client->session;
  s->ops = &planner_ops;
  s->ctx = client;
  s->id = client->cancel_pid;
  s->user = client->username;
  s->peer = client->peer;
  s->dbname = client->dbname;
  s->max_message_size = (size_t)client->config->max_message_size;
  pgs_session_init(s, s->db);
  alloc_servers(client, s->db);
  for (int i = 0; i < client->nsettings; i++)
    if (client->settings[i].startup && client->settings[i].value)
      pgs_session_on_parameter_status(s, client->settings[i].name, client->settings[i].value);
}

void pgs_request_free(pgs_client_t *client) {
  pgs_coordinator_abandon(client); /* before the session (and its 2PC state) goes */
  pgs_session_free(&client->session);
  free(client->servers); /* and client->pools (alloc_servers) */
  pgs_fan_free(client->fan);
  client->fan = NULL;
}

/* ---- servers held ---- */

/* Who a server's unnamed statement belongs to (pgs_server_t.unnamed_owner):
 * the pid and secret key pgshard gave the client, never reused alike. */
static uint64_t client_id(const pgs_client_t *client) {
  return (uint64_t)(uint32_t)client->cancel_pid << 32 | (uint32_t)client->cancel_key;
}

void pgs_request_unlink(pgs_client_t *client, pgs_server_t *server) {
  if (client->servers && server->shard >= 0 && server->shard < client->session.nslots &&
      client->servers[server->shard] == server) {
    client->servers[server->shard] = NULL;
    client->session.linked &= ~BIT(server->shard);
  }
  if (client->server == server) {
    client->server = NULL;
    client->session.cur = -1;
  }
  server->client = NULL;
}

char pgs_request_ready_status(const pgs_client_t *client) {
  char status = pgs_exchange_in_tx(&client->session.ex) ? 'T' : 'I';
  if ((client->session.ex.tx == PGS_TX_ABORTED)) return 'E';
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s == NULL) continue;
    if (s->txstatus == 'E') return 'E';
    if (s->txstatus == 'T') status = 'T';
  }
  return status;
}

void pgs_request_send_ready(pgs_client_t *client) {
  char status = pgs_request_ready_status(client);
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_msg_ready(pgs_io_scratch(&client->io), status);
  pgs_io_scratch_done(&client->io, mark);
  connection->after_ready(client, status);
}

bool pgs_request_maybe_release(pgs_client_t *client) {
  pgs_io_t *io = &client->io;
  if (client->state != PGS_CL_ACTIVE || client->session.pinned ||
      pgs_session_planned(&client->session) || pgs_exchange_in_tx(&client->session.ex) ||
      client->session.unit_mask || (client->session.ex.unit == PGS_UNIT_SKIP_TO_SYNC) ||
      io->in_pos != io->in.len)
    return false;
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s && (!pgs_server_expect_idle(s) || s->txstatus != 'I' ||
              s->pool->mode != PGS_POOL_TRANSACTION || s->state != PGS_SV_ACTIVE))
      return false;
  }
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *s = client->servers[i];
    if (s == NULL) continue;
    pgs_request_unlink(client, s);
    pgs_pool_server_free(s->pool, s);
  }
  client->state = PGS_CL_IDLE;
  if (client->worker->draining)
    pgs_session_fail(connection, client, PGS_SQLSTATE_ADMIN_SHUTDOWN, "shutting down");
  return true;
}

static bool flush_servers(pgs_client_t *client);

/* Ask the pool of NODE (of SLOT's shard) for a server for SLOT: linked now
 * (pgs_client_on_server re-enters pgs_request_process) or queued. The
 * caller must return at once. */
static void request_server(pgs_client_t *client, int slot, int node) {
  if (client->worker->draining) {
    pgs_session_fail(connection, client, PGS_SQLSTATE_ADMIN_SHUTDOWN, "shutting down");
    return;
  }
  /* What the other servers were sent goes out now, not once this one is
   * linked: a fan's parts run while another part waits for its pool. */
  if (!flush_servers(client)) return;
  int shard = slot / 2;
  pgs_pool_t **pool = &client->pools[shard * client->pool_stride + node];
  if (*pool == NULL)
    *pool = pgs_pool_get(client->worker, client->config, client->session.db, client->user, shard,
                         node, client->startup_options);
  client->want_slot = slot;
  client->wait_pool = *pool;
  client->state = PGS_CL_WAITING;
  if (pgs_io_flush(&client->io) < 0) {
    connection->close(client);
    return;
  }
  /* Usually a server is idle and this links it and re-enters; only a
   * client left waiting stops reading (saves two epoll_ctl a query). */
  pgs_pool_request(*pool, client);
  if (client->state == PGS_CL_WAITING) pgs_io_stop_reading(&client->io);
}

/* Whether every server outside MASK has answered all it was sent; asks
 * those that hold replies back (extended protocol without Sync) to flush
 * them. */
static bool outside_drained(pgs_client_t *client, uint64_t mask) {
  bool drained = true;
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *s = client->servers[i];
    if (s == NULL || (mask & BIT(i)) || pgs_server_expect_idle(s)) continue;
    drained = false;
    if (s->need_flush) {
      s->need_flush = false;
      size_t mark = pgs_io_scratch_mark(&s->io);
      pgs_msg_empty(pgs_io_scratch(&s->io), 'H');
      pgs_io_scratch_done(&s->io, mark);
      if (pgs_server_flush(s) < 0) s->dirty = true;
    }
  }
  return drained;
}

/* The same for every server but EXCEPT (-1: none excepted). */
static bool others_drained(pgs_client_t *client, int except) {
  return outside_drained(client, except >= 0 ? BIT(except) : 0);
}

/* An error earlier in this extended-protocol unit left a server skipping
 * to Sync: the rest of the unit is dropped, as PostgreSQL would. */
static bool unit_error(const pgs_client_t *client) {
  for (int i = 0; i < client->session.nslots; i++)
    if (client->servers[i] && client->servers[i]->replies.skipping) return true;
  return false;
}

/* Whether SERVER skips what it is sent next: an error left it skipping to
 * a Sync that is not on its way yet. */
static bool skips_to_sync(const pgs_server_t *server) {
  return pgs_replies_skips_next(&server->replies);
}

/* ---- prepared statements ---- */

/* Send a Parse for STMT to SERVER unless it already has it. An internal
 * one (before a Bind or Describe on a server that lacks it) still reports
 * its error: the client's statement is what failed. */
static void ensure_prepared_as(pgs_server_t *server, const char *name, const pgs_buf_t *body,
                               bool internal, bool fan) {
  if (pgs_server_has_prepared(server, name)) {
    if (!internal) {
      pgs_server_expect(server, PGS_EXP_SYNTH_PARSE, (pgs_reply_rule_t){0}, NULL);
      pgs_server_emit_synthetic(server);
    }
    return;
  }
  pgs_server_add_prepared(server, name);
  size_t mark = pgs_io_scratch_mark(&server->io);
  pgs_buf_t *b = pgs_io_scratch(&server->io);
  size_t start = pgs_msg_begin(b, 'P');
  pgs_buf_put_cstr(b, name);
  pgs_buf_put(b, body->data, body->len);
  pgs_msg_end(b, start);
  pgs_io_scratch_done(&server->io, mark);
  pgs_reply_rule_t rule = {.internal = internal, .fan = fan};
  /* A fan's part hears of the failure itself. */
  if (internal && !fan) rule.error = PGS_ON_ERROR_CLIENT;
  pgs_server_expect(server, PGS_EXP_PARSE, rule, name);
}

static void ensure_prepared(pgs_server_t *server, pgs_client_stmt_t *stmt, bool internal) {
  ensure_prepared_as(server, stmt->server_name, &stmt->parse_body, internal, false);
}

/* ---- sending one client message to one server ---- */

/* The client's message P (TOTAL bytes) to SERVER, statement names mapped to
 * the server's; FLAGS filter its reply. */
/* trace_comments: a client's simple query reaches the server led by its
 * request's id, so the server's log and pg_stat_activity name the client
 * request it ran for. */
static bool traces(const pgs_client_t *client) {
  return client->worker->config->trace_comments && client->request_id;
}

/* A Query of TEXT (LEN bytes with its NUL) led by the request id. */
static void put_traced_query(pgs_client_t *client, pgs_server_t *server, const char *text,
                             size_t len) {
  size_t mark = pgs_io_scratch_mark(&server->io);
  pgs_buf_t *b = pgs_io_scratch(&server->io);
  size_t start = pgs_msg_begin(b, 'Q');
  char comment[64];
  int n = snprintf(comment, sizeof(comment), "/* pgshard_request=c%d.%llu */ ", client->cancel_pid,
                   (unsigned long long)client->request_id);
  pgs_buf_put(b, comment, (size_t)n);
  pgs_buf_put(b, text, len);
  pgs_msg_end(b, start);
  pgs_io_scratch_done(&server->io, mark);
}

static void forward(pgs_client_t *client, pgs_server_t *server, char type, const uint8_t *p,
                    size_t total, pgs_reply_rule_t rule, bool merged) {
  const uint8_t *body = p + 5;
  size_t len = total - 5;
  pgs_debug("client %d -> server %d: '%c' (%zu bytes)", client->cancel_pid, server->backend_pid,
            type, total);
  pgs_expect_kind_t kind;
  switch (type) {
  case 'Q':
  case 'F': /* FunctionCall ends like a query */
    kind = PGS_EXP_QUERY;
    break;
  case 'P':
    kind = PGS_EXP_PARSE; /* unnamed, without routing */
    server->unnamed_owner = client_id(client);
    break;
  case 'B':
  case 'D': {
    pgs_bind_msg_t bind = {0};
    pgs_describe_msg_t describe = {0};
    bool ok = (type == 'B' ? pgs_bind_read_head(body, len, &bind)
                           : pgs_describe_read(body, len, &describe)) == PGS_OK;
    const char *name = type == 'B' ? bind.statement : describe.name;
    size_t slen = type == 'B' ? bind.statement_len : describe.name_len;
    pgs_client_stmt_t *stmt = NULL;
    if (ok && (slen > 0 || client->session.routing) && (type == 'B' || describe.kind == 'S'))
      stmt = pgs_strmap_get(&client->session.stmts, name);
    kind = type == 'B' ? PGS_EXP_BIND : PGS_EXP_DESCRIBE;
    if (stmt == NULL) break; /* a portal, or unknown: the server answers */
    merged = merged && type == 'B' && stmt->plan && stmt->plan->merge;
    if (merged) {
      pgs_stmt_merge_variant(stmt);
      ensure_prepared_as(server, stmt->merge_name, &stmt->merge_body, true, false);
    } else {
      ensure_prepared(server, stmt, true);
    }
    size_t mark = pgs_io_scratch_mark(&server->io);
    pgs_buf_t *b = pgs_io_scratch(&server->io);
    size_t start = pgs_msg_begin(b, type);
    if (type == 'B')
      pgs_buf_put(b, bind.portal, bind.portal_len + 1);
    else
      pgs_buf_put_u8(b, 'S');
    pgs_buf_put_cstr(b, merged ? stmt->merge_name : stmt->server_name);
    pgs_bind_msg_t whole; /* a merged Bind was read whole when planned (routing) */
    if (merged)
      pgs_bind_put_rest(b, pgs_bind_read(body, len, &whole) == PGS_OK ? &whole : &bind,
                        stmt->plan->merge->nhidden);
    else if (type == 'B')
      pgs_buf_put(b, bind.after_names, bind.after_names_len);
    pgs_msg_end(b, start);
    pgs_io_scratch_done(&server->io, mark);
    pgs_server_expect(server, kind, rule, NULL);
    return;
  }
  case 'C':
    kind = PGS_EXP_CLOSE;
    break;
  case 'E':
    kind = PGS_EXP_EXECUTE;
    break;
  case 'S':
    kind = PGS_EXP_SYNC;
    break;
  default:
    /* Flush and COPY data: no reply. */
    pgs_io_emit(&server->io, p, total);
    return;
  }
  if (type == 'Q' && traces(client)) {
    put_traced_query(client, server, (const char *)body, len);
  } else {
    pgs_io_emit(&server->io, p, total);
  }
  pgs_server_expect(server, kind, rule, NULL);
}

/* TEXT through the unnamed statement and portal (COMMIT in an
 * extended-protocol unit): only the Execute's reply is the client's. A
 * fan's part (RULE.fan) is described too, and every reply is the fan's. */
static void exec_sql(pgs_server_t *server, const char *text, pgs_reply_rule_t rule, bool internal) {
  size_t mark = pgs_io_scratch_mark(&server->io);
  pgs_buf_t *b = pgs_io_scratch(&server->io);
  size_t start = pgs_msg_begin(b, 'P');
  pgs_buf_put_cstr(b, "");
  pgs_buf_put_cstr(b, text);
  pgs_buf_put_i16(b, 0);
  pgs_msg_end(b, start);
  start = pgs_msg_begin(b, 'B');
  pgs_buf_put_cstr(b, "");
  pgs_buf_put_cstr(b, "");
  pgs_buf_put_i16(b, 0);
  pgs_buf_put_i16(b, 0);
  pgs_buf_put_i16(b, 0);
  pgs_msg_end(b, start);
  if (rule.fan) {
    start = pgs_msg_begin(b, 'D');
    pgs_buf_put_u8(b, 'P');
    pgs_buf_put_cstr(b, "");
    pgs_msg_end(b, start);
  }
  start = pgs_msg_begin(b, 'E');
  pgs_buf_put_cstr(b, "");
  pgs_buf_put_i32(b, 0);
  pgs_msg_end(b, start);
  pgs_io_scratch_done(&server->io, mark);
  pgs_reply_rule_t head = pgs_rule_internal(PGS_ON_ERROR_CLIENT);
  if (rule.fan) head = (pgs_reply_rule_t){.fan = true, .internal = true};
  pgs_server_expect(server, PGS_EXP_PARSE, head, NULL);
  pgs_server_expect(server, PGS_EXP_BIND, head, NULL);
  if (rule.fan) pgs_server_expect(server, PGS_EXP_DESCRIBE, head, NULL);
  rule.internal = internal;
  pgs_server_expect(server, PGS_EXP_EXECUTE, rule, NULL);
}

void pgs_request_server_lost(pgs_client_t *client, int slot, int readies, bool open_unit,
                             const char *why) {
  bool replica = client->servers && (slot & 1) && slot < client->session.nslots;
  if (client->servers && slot >= 0 && slot < client->session.nslots && client->fan &&
      (client->fan->slots & BIT(slot)) && !pgs_exchange_in_tx(&client->session.ex) &&
      !(client->session.tx_mask & BIT(slot)) && client->state != PGS_CL_CLOSING &&
      (client->session.ex.ready_pending == 0 || client->fan->synced)) {
    /* A server running a part of a merged read or of a COPY, outside a
     * transaction: the statement fails, the session goes on (a COPY's
     * other parts get CopyFail). When the unit's Sync went out with the
     * parts, its ReadyForQuery will not come: if it was the last one owed,
     * pgshard answers for it once the read has failed. */
    char message[600];
    snprintf(message, sizeof(message), "lost the connection to %s of shard %s: %s",
             replica ? "a replica" : "the primary", client->session.db->shards[slot / 2].name, why);
    client->session.unit_mask &= ~BIT(slot);
    bool last_ready = readies > 0 && client->session.ex.ready_pending > 0 &&
                      --client->session.ex.ready_pending == 0;
    if (pgs_fan_part_lost(client, slot, message)) pgs_request_send_ready(client);
    if (last_ready) pgs_request_send_ready(client);
    if (client->state == PGS_CL_WAITING) return;
    (void)pgs_session_resume(&client->session);
    pgs_request_process(client);
    return;
  }
  if (client->session.ex.ready_pending > 0) {
    /* Its ReadyForQuery was one of several the client waits for. */
    connection->server_lost(client, why);
    return;
  }
  bool others_busy = false;
  for (int i = 0; i < client->session.nslots && replica; i++)
    others_busy |= client->servers[i] && !pgs_server_expect_idle(client->servers[i]);
  if (!replica || pgs_exchange_in_tx(&client->session.ex) ||
      (client->session.tx_mask & BIT(slot)) || others_busy || client->state == PGS_CL_CLOSING) {
    connection->server_lost(client, why);
    return;
  }
  /* A replica went away outside a transaction: what was running there
   * failed, the session goes on (the next read picks another replica). */
  const pgs_database_t *db = client->session.db;
  char message[600];
  snprintf(message, sizeof(message), "pgshard: lost the connection to a replica of shard %s: %s",
           db->shards[slot / 2].name, why);
  pgs_info("client %d (%s@%s): %s", client->cancel_pid, client->username, client->peer, message);
  client->session.unit_mask &= ~BIT(slot);
  if (readies == 0 && !open_unit) return; /* it owed nothing: another one next time */
  pgs_io_t *io = &client->io;
  for (int i = 0; i < (readies > 0 ? readies : 1); i++) {
    size_t mark = pgs_io_scratch_mark(io);
    pgs_msg_error_raw(pgs_io_scratch(io), "ERROR", PGS_SQLSTATE_CONNECTION_FAILURE, message, NULL);
    if (readies > 0) pgs_msg_ready(pgs_io_scratch(io), pgs_request_ready_status(client));
    pgs_io_scratch_done(io, mark);
  }
  if (open_unit || readies == 0) pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
  if (client->state == PGS_CL_WAITING) return; /* on_server resumes it */
  (void)pgs_session_resume(&client->session);
  pgs_request_process(client);
}

/* ---- a server's replies (server.c reports them here) ---- */

static pgs_exchange_t *owner_exchange(pgs_client_t *client) { return &client->session.ex; }

/* The client's copy of a message whose content pgshard changes (ACTION,
 * from verdict V on message M of TOTAL bytes). */
static void emit_rewritten(pgs_client_t *client, pgs_reply_action_t action, const pgs_verdict_t *v,
                           const uint8_t *m, size_t total) {
  pgs_io_t *out = &client->io;
  size_t mark = pgs_io_scratch_mark(out);
  pgs_buf_t *b = pgs_io_scratch(out);
  if (action == PGS_REPLY_READY) {
    pgs_msg_ready(b, pgs_request_ready_status(client));
  } else if (action == PGS_REPLY_HIDE) {
    /* A merged portal described: the shards' hidden columns stay hidden. */
    pgs_merge_spec_t spec = {.nhidden = v->hide};
    pgs_merge_client_rowdesc(&spec, m + 5, total - 5, b);
  } else {
    char tag[128];
    pgs_route_tag_with_count((const char *)m + 5, v->count, tag, sizeof(tag));
    size_t start = pgs_msg_begin(b, 'C');
    pgs_buf_put_cstr(b, tag);
    pgs_msg_end(b, start);
  }
  pgs_io_scratch_done(out, mark);
}

/* What the verdict V on SERVER's message M means for the client, and the
 * action left for its output. */
static pgs_reply_action_t reply_events(pgs_client_t *client, pgs_server_t *server,
                                       const pgs_verdict_t *v, char type, const uint8_t *m,
                                       size_t total) {
  const uint8_t *body = m + 5;
  size_t len = total - 5;
  if (v->events & PGS_RE_RESTORE_FAILED) {
    char why[300];
    snprintf(why, sizeof(why), "%s", server->last_error);
    if (client->state == PGS_CL_LOGIN)
      pgs_session_fail(connection, client, PGS_SQLSTATE_CONNECTION_FAILURE,
                       "invalid startup parameters: %s", why);
    else
      pgs_session_fail(connection, client, PGS_SQLSTATE_CONNECTION_FAILURE,
                       "could not restore session state on the server: %s", why);
    return PGS_REPLY_DROP;
  }
  if (v->events & PGS_RE_PART_SKIPPED) pgs_fan_part_skipped(client, server->shard);
  if (server->client != client) return PGS_REPLY_DROP;
  if (v->events & PGS_RE_LOGIN_ROW) connection->login_row(client, body, len);
  if (v->events & PGS_RE_PARAMETER)
    pgs_session_on_parameter_status(&client->session, v->name, v->value);
  if (v->events & PGS_RE_CLIENT_SEES) connection->server_message(client, type, body, len);
  if (v->events & PGS_RE_CLIENT_ERROR) pgs_session_message_failed(&client->session);
  if ((v->events & PGS_RE_LOGIN_DONE) && client->state == PGS_CL_LOGIN) {
    connection->login_done(client);
    return PGS_REPLY_DROP;
  }
  if (v->action != PGS_REPLY_FAN) return (pgs_reply_action_t)v->action;
  pgs_fan_action_t a = pgs_fan_reply(client, server->shard, type, m, total);
  return a == PGS_FAN_FORWARD ? PGS_REPLY_FORWARD
         : a == PGS_FAN_READY ? PGS_REPLY_READY
                              : PGS_REPLY_DROP;
}

static void owner_reply(pgs_client_t *client, pgs_server_t *server, const pgs_verdict_t *v,
                        char type, const uint8_t *m, size_t total) {
  if ((v->events & PGS_RE_READY) && client->request_shard_us && server->shard >= 0 &&
      server->shard < client->request_shard_cap)
    client->request_shard_us[2 * server->shard + 1] = pgs_now_us();
  pgs_reply_action_t action = reply_events(client, server, v, type, m, total);
  if (server->client != client) return; /* the client failed and went away */
  if (action == PGS_REPLY_FORWARD)
    pgs_io_emit(&client->io, m, total);
  else if (action != PGS_REPLY_DROP)
    emit_rewritten(client, action, v, m, total);
  /* Replies pgshard makes up go out once everything before them has. */
  if (server->state != PGS_SV_CLOSING) pgs_server_emit_synthetic(server);
  if (server->client != client) return;
  if (action == PGS_REPLY_READY) connection->after_ready(client, pgs_request_ready_status(client));
}

static void owner_synthetic(pgs_client_t *client, char type) {
  pgs_io_t *out = &client->io;
  size_t mark = pgs_io_scratch_mark(out);
  pgs_msg_empty(pgs_io_scratch(out), type);
  pgs_io_scratch_done(out, mark);
}

static bool owner_backlogged(const pgs_client_t *client) {
  return pgs_io_backlog(&client->io) > PGS_IO_HIGH_WATER;
}

static bool owner_flush(pgs_client_t *client) {
  if (pgs_io_flush(&client->io) >= 0) return true;
  connection->close(client);
  return false;
}

/* Between transactions every server goes back; a client that waited for
 * this server's replies before sending elsewhere goes on. */
static void owner_settled(pgs_client_t *client) {
  if (pgs_request_maybe_release(client)) return;
  if (pgs_session_resume(&client->session)) pgs_request_process(client);
}

static void owner_lost(pgs_client_t *client, int slot, int readies, bool open_unit,
                       const char *why) {
  if (slot < 0)
    connection->server_lost(client, why);
  else
    pgs_request_server_lost(client, slot, readies, open_unit, why);
}

/* What listen.c asks: a LISTEN that waited for the listeners goes on. */
static void listen_resume(pgs_client_t *client) {
  if (client->state == PGS_CL_CLOSING) return;
  if (pgs_session_resume(&client->session)) pgs_request_process(client);
}

static void listen_close(pgs_client_t *client) { connection->close(client); }

const pgs_listen_ops_t pgs_request_listen_ops = {
    .resume = listen_resume,
    .close = listen_close,
};

const pgs_server_owner_t pgs_request_server_owner = {
    .exchange = owner_exchange,
    .reply = owner_reply,
    .synthetic = owner_synthetic,
    .backlogged = owner_backlogged,
    .flush = owner_flush,
    .settled = owner_settled,
    .drained = pgs_request_process,
    .unlink = pgs_request_unlink,
    .lost = owner_lost,
};

/* ---- running steps ---- */

bool pgs_request_fan_unserved(pgs_client_t *client, const char *sqlstate, const char *why) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL || !pgs_session_planned(&client->session) || client->want_slot < 0 ||
      !(fan->slots & BIT(client->want_slot)) || client->session.step_next >= client->session.nsteps)
    return false;
  /* The steps left of this message are the fan's parts not yet sent
   * (add_fan_steps): none of them is sent now. */
  uint64_t unsent = 0;
  for (int i = client->session.step_next; i < client->session.nsteps; i++) {
    const pgs_step_t *st = &client->session.steps[i];
    if (!st->concurrent || st->shard < 0 || !(fan->slots & BIT(st->shard))) return false;
    unsent |= BIT(st->shard);
  }
  client->session.step_next = client->session.nsteps;
  if (pgs_fan_parts_unserved(client, unsent, sqlstate, why)) pgs_request_send_ready(client);
  return true;
}

typedef enum { STEPS_DONE, STEPS_BLOCKED, STEPS_LEFT } steps_result_t;

static void emit_reply(pgs_client_t *client, const pgs_step_t *st) {
  pgs_io_t *io = &client->io;
  size_t mark = pgs_io_scratch_mark(io);
  pgs_buf_t *b = pgs_io_scratch(io);
  if (st->op == PGS_STEP_ERROR) {
    pgs_info("client %d (%s@%s) refused: %s (SQLSTATE %s)", client->cancel_pid, client->username,
             client->peer, st->text + 6, st->text);
    pgs_msg_error_raw(b, "ERROR", st->text, st->text + 6, NULL);
  } else if (st->op == PGS_STEP_ROWS) {
    bool portal_named = st->fetch == PGS_FETCH_EXECUTE || st->fetch == PGS_FETCH_MOVE_PORTAL;
    pgs_strmap_t *map = portal_named ? &client->session.portals : &client->session.cursors;
    pgs_portal_t *portal = pgs_strmap_get(map, st->text);
    PGS_ASSERT(portal && portal->gathered); /* planned so, nothing ran in between */
    (void)pgs_portal_fetch(portal, st->rows, (pgs_fetch_t)st->fetch, b);
  } else if (st->reply == 'Z') {
    pgs_io_scratch_done(io, mark);
    pgs_request_send_ready(client);
    return;
  } else if (st->reply == 'C') {
    size_t start = pgs_msg_begin(b, 'C');
    pgs_buf_put_cstr(b, st->text);
    pgs_msg_end(b, start);
    /* A ROLLBACK pgshard answers (the transaction reached no server) drops
     * the LISTENs of the transaction, as one a server answers does. */
    pgs_listen_client_message(client, 'C', (const uint8_t *)st->text, strlen(st->text) + 1);
  } else if (st->reply == 't') {
    size_t start = pgs_msg_begin(b, 't');
    pgs_buf_put_i16(b, 0);
    pgs_msg_end(b, start);
  } else {
    pgs_msg_empty(b, st->reply);
  }
  pgs_io_scratch_done(io, mark);
}

static bool extended_type(char type) {
  return type == 'P' || type == 'B' || type == 'D' || type == 'E' || type == 'C' || type == 'H';
}

/* Whether a step may go to a server: in routing mode only with a routing
 * decision (pgs_placed_t); without routing, a plain pooler's steps. */
static bool placed_ok(const pgs_client_t *client, const pgs_step_t *st) {
  switch (st->placed) {
  case PGS_PLACED_ROUTE:
  case PGS_PLACED_SESSION:
  case PGS_PLACED_INTERNAL:
    return true;
  case PGS_PLACED_PASSTHROUGH:
    return !client->session.routing;
  default:
    return false;
  }
}

/* The one place where a client's request is handed to a server. */
static void issue(pgs_client_t *client, pgs_server_t *server, const pgs_step_t *st, char type,
                  const uint8_t *p, size_t total) {
  int shard = st->shard;
  if (shard >= 0 && shard < 64) client->request_slots |= BIT(shard);
  if (client->request_shard_us && shard < client->request_shard_cap &&
      client->request_shard_us[2 * shard] == 0)
    client->request_shard_us[2 * shard] = pgs_now_us();
  switch (st->op) {
  case PGS_STEP_FORWARD:
    forward(client, server, type, p, total, st->rule, st->merged);
    break;
  case PGS_STEP_INJECT:
    if (st->gid) {
      snprintf(server->gid, sizeof(server->gid), "%s", client->session.twopc->gid);
      if (st->rule.prepares) server->gid_prepared = false;
    }
    if (st->extended) {
      /* Inside the client's extended unit: with a Sync of its own, so that
       * an error (a PREPARE that fails) does not leave the server skipping
       * what pgshard sends next. */
      exec_sql(server, st->text, st->rule, true);
      size_t m = pgs_io_scratch_mark(&server->io);
      pgs_msg_empty(pgs_io_scratch(&server->io), 'S');
      pgs_io_scratch_done(&server->io, m);
      pgs_server_expect(server, PGS_EXP_SYNC, pgs_rule_internal(PGS_ON_ERROR_OWNER), NULL);
    } else {
      pgs_server_inject_query(server, st->text, st->rule);
    }
    break;
  case PGS_STEP_BIND_VARIANT: {
    const pgs_variant_t *v = st->variant;
    ensure_prepared_as(server, v->name, &v->body, true, false);
    size_t mark = pgs_io_scratch_mark(&server->io);
    pgs_buf_put(pgs_io_scratch(&server->io), v->bind.data, v->bind.len);
    pgs_io_scratch_done(&server->io, mark);
    pgs_server_expect(server, PGS_EXP_BIND, st->rule, NULL);
    break;
  }
  case PGS_STEP_FAN_EXEC: {
    pgs_execute_msg_t execute;
    pgs_status_t read = pgs_execute_read(p + 5, total - 5, &execute);
    PGS_ASSERT(read == PGS_OK); /* it was read whole when it was planned */
    (void)read;
    pgs_portal_t *portal = pgs_strmap_get(&client->session.portals, execute.portal);
    if (portal && (portal->unbound & BIT(shard))) {
      /* Bound here only now: a failure is the fan's, like the Execute's. */
      portal->unbound &= ~BIT(shard);
      ensure_prepared_as(server, portal->merge_name, &portal->merge_body, true, true);
      size_t mark = pgs_io_scratch_mark(&server->io);
      pgs_buf_put(pgs_io_scratch(&server->io), portal->merge_bind.data, portal->merge_bind.len);
      pgs_io_scratch_done(&server->io, mark);
      pgs_server_expect(server, PGS_EXP_BIND, st->rule, NULL);
    }
    /* The merge needs the part's column types: describe it first. */
    size_t mark = pgs_io_scratch_mark(&server->io);
    pgs_buf_t *b = pgs_io_scratch(&server->io);
    size_t start = pgs_msg_begin(b, 'D');
    pgs_buf_put_u8(b, 'P');
    pgs_buf_put_cstr(b, execute.portal);
    pgs_msg_end(b, start);
    pgs_io_scratch_done(&server->io, mark);
    pgs_reply_rule_t describe = st->rule;
    describe.internal = true;
    pgs_server_expect(server, PGS_EXP_DESCRIBE, describe, NULL);
    if (client->fan && client->fan->portal) {
      /* Gathered: each part runs whole, whatever the client's row limit. */
      mark = pgs_io_scratch_mark(&server->io);
      b = pgs_io_scratch(&server->io);
      start = pgs_msg_begin(b, 'E');
      pgs_buf_put_cstr(b, execute.portal);
      pgs_buf_put_i32(b, 0);
      pgs_msg_end(b, start);
      pgs_io_scratch_done(&server->io, mark);
      pgs_server_expect(server, PGS_EXP_EXECUTE, st->rule, NULL);
    } else {
      forward(client, server, type, p, total, st->rule, false);
    }
    break;
  }
  case PGS_STEP_PARSE:
    ensure_prepared(server, st->stmt, false);
    break;
  case PGS_STEP_QUERY: {
    if (!st->internal && traces(client)) {
      put_traced_query(client, server, st->text, strlen(st->text) + 1);
    } else {
      size_t mark = pgs_io_scratch_mark(&server->io);
      pgs_msg_query(pgs_io_scratch(&server->io), st->text);
      pgs_io_scratch_done(&server->io, mark);
    }
    pgs_server_expect(server, PGS_EXP_QUERY, st->rule, NULL);
    break;
  }
  case PGS_STEP_EXEC_SQL:
  case PGS_STEP_FAN_SQL:
    exec_sql(server, st->text, st->rule, false);
    break;
  case PGS_STEP_SYNC: {
    size_t m = pgs_io_scratch_mark(&server->io);
    pgs_msg_empty(pgs_io_scratch(&server->io), 'S');
    pgs_io_scratch_done(&server->io, m);
    pgs_reply_rule_t rule = st->rule;
    rule.internal = st->internal;
    pgs_server_expect(server, PGS_EXP_SYNC, rule, NULL);
    break;
  }
  default:
    PGS_ASSERT(false);
    break;
  }
  if (st->forget_prepared) pgs_server_forget_prepared(server);
  bool extended = st->op == PGS_STEP_PARSE || st->op == PGS_STEP_EXEC_SQL ||
                  st->op == PGS_STEP_FAN_EXEC || st->op == PGS_STEP_FAN_SQL ||
                  st->op == PGS_STEP_BIND_VARIANT ||
                  (st->op == PGS_STEP_FORWARD && extended_type(type));
  if (extended) {
    client->session.unit_mask |= BIT(shard);
    server->need_flush = type != 'H';
  } else if (st->op == PGS_STEP_SYNC || st->op == PGS_STEP_QUERY || st->op == PGS_STEP_INJECT ||
             type == 'Q' || type == 'S' || type == 'F') {
    server->need_flush = false;
  }
}

/* Run the planned steps of the message P at in_pos. */
static steps_result_t run_steps(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  while (client->session.step_next < client->session.nsteps) {
    pgs_step_t *st = &client->session.steps[client->session.step_next];
    if (client->fan && !st->concurrent) {
      /* A merged read is in flight: what follows waits for its result
       * (its parts are asked to flush what they hold). */
      (void)others_drained(client, -1);
      return STEPS_BLOCKED;
    }
    if (st->drain_others && client->fan && !outside_drained(client, client->fan->slots))
      return STEPS_BLOCKED;
    bool everyone = st->shard < 0 || st->drain_all;
    if ((everyone || st->shard != client->session.cur) && (!st->concurrent || st->drain_all)) {
      if (!others_drained(client, everyone ? -1 : st->shard)) return STEPS_BLOCKED;
      if (client->session.ex.message_error && client->session.step_next > 0 && !st->always) {
        client->session.step_next++; /* a fan-out part failed: no more parts */
        continue;
      }
      if (type != 'S' && type != 'Q' && !st->always && unit_error(client)) {
        pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
        client->session.step_next = client->session.nsteps;
        break;
      }
    }
    if (st->op == PGS_STEP_TWOPC) {
      pgs_twopc_phase_t phase = (pgs_twopc_phase_t)st->phase;
      client->session.step_next++;
      pgs_coordinator_run(client, phase); /* plans more steps: st may move */
      continue;
    }
    if (st->op == PGS_STEP_LISTEN) {
      /* Transaction pooling's LISTEN/UNLISTEN: the proxy's listeners, not
       * a server (listen.c); a LISTEN may wait until they confirm it. */
      pgs_listen_result_t r = pgs_listen_step(client, st->reply, st->text,
                                              pgs_request_ready_status(client), st->internal);
      if (r == PGS_LISTEN_WAIT) return STEPS_BLOCKED;
      if (r == PGS_LISTEN_FAILED) { /* as an error step of pgshard's */
        pgs_account_sqlstate(client, "25P02");
        client->session.ex.request_failed = true;
        if (type != 'Q') pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
      }
      client->session.step_next++;
      continue;
    }
    if (st->shard < 0) {
      emit_reply(client, st);
      /* An error in an extended unit skips the rest of it; a Query and a
       * FunctionCall end with their own ReadyForQuery. */
      if (st->op == PGS_STEP_ERROR && type != 'Q' && type != 'F')
        pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
      client->session.step_next++;
      continue;
    }
    if (st->rule.fan && client->fan && client->fan->error.len > 0) {
      /* The statement failed before this part was sent (it waited for a
       * server): it is not sent, it would only run to its end for nothing. */
      client->session.step_next++;
      if (pgs_fan_parts_unserved(client, BIT(st->shard), PGS_SQLSTATE_INTERNAL,
                                 "another part of this statement failed"))
        pgs_request_send_ready(client);
      continue;
    }
    if (st->node < 0)
      st->node = (int8_t)pgs_session_slot_node(&client->session, st->shard); /* placed now */
    pgs_server_t *server = client->servers[st->shard];
    if (server && (st->shard & 1) && server->pool->node != st->node && st->node >= 0 &&
        pgs_server_expect_idle(server) && server->txstatus == 'I' &&
        !((client->session.unit_mask | client->session.tx_mask) & BIT(st->shard))) {
      /* Another replica was picked for this read: the idle one goes back. */
      pgs_request_unlink(client, server);
      pgs_pool_server_free(server->pool, server);
      server = NULL;
    }
    if (server == NULL) {
      request_server(client, st->shard, st->node >= 0 ? st->node : 0);
      return STEPS_LEFT;
    }
    if (server->cancelling)
      return STEPS_BLOCKED; /* the cancel must not hit what is sent now (cancel_done) */
    if (st->op == PGS_STEP_FAN_EXEC && skips_to_sync(server)) {
      /* An error earlier in the unit (the client has it) left this server
       * skipping to Sync: the part would be skipped too. */
      client->session.step_next++;
      pgs_fan_part_skipped(client, st->shard);
      continue;
    }
    client->session.cur = st->shard;
    client->server = server;
    if (pgs_exchange_in_tx(&client->session.ex) && (client->session.ex.tx != PGS_TX_ABORTED) &&
        !(client->session.tx_mask & BIT(st->shard)) && client->session.begin_sql &&
        st->op != PGS_STEP_SYNC) {
      /* The transaction reaches this shard: begin it here too. */
      pgs_server_inject_query(server, client->session.begin_sql,
                              pgs_rule_internal(PGS_ON_ERROR_OWNER));
      if (client->session.tx_replay.len) {
        /* SET LOCAL ROLE and friends hold on this shard too. */
        pgs_buf_put_u8(&client->session.tx_replay, 0);
        /* One that failed where it first ran (the transaction is then
         * aborted) fails here too: this shard's part is aborted alike,
         * and the client's statements there get PostgreSQL's 25P02. */
        pgs_server_inject_query(server, (const char *)client->session.tx_replay.data,
                                EXPECTED_ERROR);
        client->session.tx_replay.len--;
      }
      client->session.tx_mask |= BIT(st->shard);
    }
    if (!placed_ok(client, st)) {
      /* A planning bug, never a guess: nothing is sent. Tests run with
       * PGSHARD_STRICT=1 and stop here. */
      pgs_error(
          "client %d: a '%c' message without a routing decision (step %d, placed %d) "
          "was not sent",
          client->cancel_pid, type, st->op, st->placed);
      if (getenv("PGSHARD_STRICT")) abort();
      pgs_session_fail(connection, client, PGS_SQLSTATE_INTERNAL,
                       "internal error: a message without a routing decision was not sent");
      return STEPS_LEFT;
    }
    /* A count over shards starts from nothing: its first part waited for
     * every earlier reply (drain_all). */
    if (st->rule.complete == PGS_ON_COMPLETE_COUNT && st->drain_all) client->session.ex.sum = 0;
    issue(client, server, st, type, p, total);
    client->session.step_next++;
  }
  return STEPS_DONE;
}

/* A shard of the COPY in flight has more queued than it takes. */
static bool copy_backlogged(const pgs_client_t *client) {
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s && (client->fan->slots & BIT(i)) && pgs_io_backlog(&s->io) > PGS_IO_HIGH_WATER)
      return true;
  }
  return false;
}

static bool flush_servers(pgs_client_t *client) {
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *s = client->servers[i];
    if (s == NULL || !pgs_io_has_output(&s->io)) continue;
    if (pgs_server_flush(s) < 0) {
      pgs_server_close(s, "write to server failed");
      connection->server_lost(client, "write to server failed");
      return false;
    }
  }
  return true;
}

/* The key of the budget (max_client_memory, max_total_client_memory) a
 * Parse or Bind P of TOTAL bytes would go over with what it makes the
 * client keep; NULL when it fits. */
static const char *over_budget(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  size_t cost = pgs_plan_cost(&client->session, type, p, total);
  return cost > 0 ? pgs_account_mem_refuses(client, cost) : NULL;
}

/* The fan the plan ordered, started before its steps run (fanout.c). */
static void start_ordered_fan(pgs_client_t *client) {
  pgs_fan_order_t *order = client->session.fan_order;
  if (order == NULL || order->plan == NULL) return;
  pgs_fan_start(client, order);
  pgs_plan_unref(order->plan);
  order->plan = NULL;
}

static bool at_tx_boundary(const pgs_client_t *client);

/* ---- following a reload ----
 *
 * A client logs in on the running config and keeps a reference to it. A
 * reload gives the worker a new one; the client moves to it at the first
 * message it sends between transactions (nothing in flight, no transaction
 * open, every server it holds idle), so a transaction always finishes on
 * the map it began on. Moving means: database and user looked up again by
 * name, per-shard state (read-your-writes, the shard hint, where the last
 * statement went) carried over by shard name, the tenant typed again,
 * every prepared statement analysed again, pools looked up again by names
 * when next needed. Servers it holds (session pooling, a pinned session)
 * keep the session's state, so they go with it to the slots of their
 * shards' names in the new map, even one opened with a conninfo the new
 * config changed: like PgBouncer's, such a server is closed once released,
 * which under session pooling is at the client's disconnect. Routing
 * follows the new map meanwhile. A replica's server of a node the new
 * config dropped is given back instead (reads go to the replicas the
 * monitor checks), and a client holding a primary's server of a shard the
 * new map dropped is closed: its session cannot go on. Protocol portals,
 * and SQL cursors where slots change, name their servers' old slots: the
 * client stays on its config until it has none. */

bool pgs_request_between_transactions(const pgs_client_t *client) { return at_tx_boundary(client); }

static bool at_tx_boundary(const pgs_client_t *client) {
  if (pgs_session_planned(&client->session) || pgs_exchange_in_tx(&client->session.ex) ||
      (client->session.ex.tx == PGS_TX_ABORTED) || client->session.tx_mask ||
      client->session.tx_wrote || client->session.unit_mask ||
      (client->session.ex.unit == PGS_UNIT_SKIP_TO_SYNC) || client->fan ||
      client->session.ex.ready_pending || pgs_session_twopc_gid(&client->session)[0] ||
      client->pending_closes || client->state == PGS_CL_WAITING)
    return false;
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s && (!pgs_server_expect_idle(s) || s->txstatus != 'I')) return false;
  }
  return true;
}

/* The slot in DB (of the worker's config) for the server CLIENT holds at
 * SLOT: that of its shard's name, primary or replica alike; -1 when DB has
 * no such shard. */
static int slot_in(const pgs_database_t *db, const pgs_server_t *server, int slot) {
  int shard = pgs_shardmap_find_shard(db, server->pool->shard);
  return shard < 0 ? -1 : 2 * shard + slot % 2;
}

/* Whether CLIENT can take the servers it holds to DB now (see above). */
static bool holds_movable(const pgs_client_t *client, const pgs_database_t *db) {
  bool holds = false, same_slots = true;
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s == NULL) continue;
    holds = true;
    same_slots = same_slots && slot_in(db, s, i) == i;
  }
  return !holds ||
         (client->session.portals.count == 0 && (same_slots || client->session.cursors.count == 0));
}

/* Give back the servers CLIENT holds that DB has no use for (replicas'
 * of nodes or shards it dropped). False when it holds a primary's server
 * of a shard DB dropped: the client has been closed. */
static bool drop_unmovable(pgs_client_t *client, const pgs_database_t *db) {
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *s = client->servers[i];
    if (s == NULL) continue;
    int j = slot_in(db, s, i);
    if (j >= 0 && !(s->pool->gone && (i & 1))) {
      if (s->pool->gone)
        pgs_info(
            "client %d (%s@%s): keeps its server of shard %s, of a conninfo the reload "
            "changed, until it releases it",
            client->cancel_pid, client->username, client->peer, s->pool->shard);
      continue;
    }
    if (!(i & 1)) {
      pgs_session_fail(connection, client, PGS_SQLSTATE_ADMIN_SHUTDOWN,
                       "shard \"%s\" that this session's state is on is no longer in database "
                       "\"%s\" (reload); connect again",
                       s->pool->shard, client->dbname);
      return false;
    }
    pgs_request_unlink(client, s);
    pgs_pool_server_free(s->pool, s);
  }
  return true;
}

bool pgs_request_follow_config(pgs_client_t *client) {
  pgs_config_t *next = client->worker->config;
  if (client->config == next || !at_tx_boundary(client)) return true;
  const pgs_database_t *db = pgs_config_find_database(next, client->dbname);
  const pgs_user_t *user = pgs_config_find_user(next, client->username);
  if (db == NULL) {
    pgs_session_fail(connection, client, PGS_SQLSTATE_INVALID_CATALOG,
                     "database \"%s\" is no longer configured (reload)", client->dbname);
    return false;
  }
  if (user == NULL) {
    pgs_session_fail(connection, client, PGS_SQLSTATE_INVALID_AUTHORIZATION,
                     "user \"%s\" is no longer configured (reload)", client->username);
    return false;
  }
  if (!holds_movable(client, db)) return true; /* its portals keep it on its map */
  if (!drop_unmovable(client, db)) return false;
  int held = client->session.nslots;
  char sqlstate[6], message[640];
  pgs_config_t *old_config = client->config;
  client->config = next; /* the session's statements are analysed on it */
  if (!pgs_session_move(&client->session, db, sqlstate, message, sizeof(message))) {
    client->config = old_config;
    pgs_session_fail(connection, client, sqlstate, "%s", message);
    return false;
  }
  client->config = pgs_config_ref(next);
  pgs_config_unref(old_config);
  /* Servers to the slots of their shards (holds_movable, drop_unmovable),
   * pools looked up again by names when next needed. */
  pgs_server_t **servers = client->servers; /* the old block (alloc_servers) */
  alloc_servers(client, db);
  client->session.linked = 0;
  client->session.cur = -1;
  for (int i = 0; i < held; i++) {
    pgs_server_t *s = servers[i];
    if (s == NULL) continue;
    int j = slot_in(db, s, i);
    client->servers[j] = s;
    s->shard = j;
    client->session.linked |= BIT(j);
    if (s == client->server) client->session.cur = j;
  }
  free(servers);
  client->user = user;
  pgs_debug("client %s follows the reloaded config", client->peer);
  return true;
}

/* ---- the cutover hold (hold.h) ----
 *
 * A transaction (or a statement outside one) that begins while a hold is
 * active is marked with its generation; only statements so marked are
 * held, so the transactions open at RESHARD HOLD run to their end. A held
 * message stays unread at in_pos: its plan is dropped and it is planned
 * again when the workers wake the client (worker.c). */

/* At a transaction boundary: the next transaction is the active hold's
 * (0: none). Without routing (one shard, nothing analysed) a client of a
 * held database waits there, as for PAUSE. True when it waits. */
static bool hold_starts(pgs_client_t *client) {
  uint64_t gen = pgs_hold_gen();
  if (client->tx_hold == gen || !at_tx_boundary(client)) return false;
  client->tx_hold = gen;
  if (gen == 0 || client->session.routing || pgs_hold_database(gen, client->dbname) == NULL)
    return false;
  client->park = PGS_PARK_HELD;
  return true;
}

/* The planner said the message routes otherwise under the map of
 * session_hold: while the hold lasts it waits, nothing of its plan run;
 * after, it fails with 40001. True when it waits. */
static bool hold_message(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  pgs_steps_clear(&client->session);
  client->session.held = false;
  if (client->hold_stale) {
    pgs_plan_cutover_retry(&client->session, type, p, total);
    return false;
  }
  client->park = PGS_PARK_HELD;
  pgs_debug("client %d: its statement waits for the cutover hold", client->cancel_pid);
  return true;
}

/* A request starts with message P of TYPE: its number, clock and text for
 * the statistics and the slow-request log (log_min_duration_ms). */
static void begin_request(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  client->request_start_us = pgs_now_us();
  client->request_id = ++client->worker->next_request;
  client->request_slots = 0;
  if (client->request_text) client->request_text[0] = '\0';
  if (client->request_trace) client->request_trace[0] = '\0';
  client->request_sqlstate[0] = '\0';
  client->request_query = 0;
  if (client->worker->config->log_min_duration_ms < 0) {
    free(client->request_shard_us);
    client->request_shard_us = NULL;
    client->request_shard_cap = 0;
    return;
  }
  if (client->request_shard_cap < client->session.nslots) {
    free(client->request_shard_us);
    client->request_shard_cap = client->session.nslots;
    client->request_shard_us = pgs_xmalloc(2 * sizeof(uint64_t) * (size_t)client->session.nslots);
  }
  if (client->request_shard_us)
    memset(client->request_shard_us, 0, 2 * sizeof(uint64_t) * (size_t)client->request_shard_cap);
  pgs_reader_t r;
  pgs_reader_init(&r, p + 5, total - 5);
  size_t len = 0;
  const char *text = NULL;
  pgs_parse_msg_t parse;
  pgs_bind_msg_t bind;
  if (type == 'Q') {
    text = pgs_read_cstr(&r, &len);
  } else if (type == 'P') {
    if (pgs_parse_read_head(p + 5, total - 5, &parse) == PGS_OK)
      text = parse.query, len = parse.query_len;
  } else if (type == 'B' && pgs_bind_read_head(p + 5, total - 5, &bind) == PGS_OK) {
    const pgs_client_stmt_t *stmt = pgs_strmap_get(&client->session.stmts, bind.statement);
    if (stmt) text = (const char *)stmt->parse_body.data;
    len = text ? strnlen(text, stmt->parse_body.len) : 0;
  }
  if (text) {
    if (client->request_text == NULL) client->request_text = pgs_xmalloc(PGS_REQUEST_TEXT_MAX);
    snprintf(client->request_text, PGS_REQUEST_TEXT_MAX, "%.*s",
             (int)(len < PGS_REQUEST_TEXT_MAX ? len : PGS_REQUEST_TEXT_MAX - 1), text);
    /* A W3C trace context in a comment: logged with the request (the
     * comment itself goes on to the server with the text). */
    char trace[PGS_TRACEPARENT_BUF];
    if (pgs_traceparent_find(text, len, trace)) {
      if (client->request_trace == NULL) client->request_trace = pgs_xmalloc(PGS_TRACEPARENT_BUF);
      memcpy(client->request_trace, trace, sizeof(trace));
    }
  }
}

pgs_status_t pgs_request_next_message(pgs_client_t *client, char *type, size_t *total) {
  pgs_io_t *io = &client->io;
  size_t max = (size_t)client->worker->config->max_message_size;
  pgs_status_t st =
      pgs_msg_peek(io->in.data + io->in_pos, io->in.len - io->in_pos, max, type, total);
  if (st == PGS_EAGAIN) {
    io->in_want = io->in_pos + 5;
    return PGS_EAGAIN;
  }
  if (st == PGS_EPROTO || !pgs_frontend_type_valid(*type) || *type == 'p') {
    if (st == PGS_EPROTO)
      pgs_session_fail(connection, client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                       "invalid message length");
    else
      pgs_session_fail(connection, client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                       "invalid frontend message type %d", (unsigned char)*type);
    return PGS_EPROTO;
  }
  if (st == PGS_ETOOBIG) {
    pgs_session_fail(connection, client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
                     "message of %zu bytes is over max_message_size (%zu)", *total - 1, max);
    return PGS_EPROTO;
  }
  if (io->in.len - io->in_pos < *total) {
    io->in_want = io->in_pos + *total;
    return PGS_EAGAIN;
  }
  return PGS_OK;
}

void pgs_request_process(pgs_client_t *client) {
  pgs_io_t *io = &client->io;
  if (client->state != PGS_CL_IDLE && client->state != PGS_CL_ACTIVE) return;
  PGS_ASSERT(!client->admin);                /* the console's clients go to admin.c (client.c) */
  if (client->park == PGS_PARK_HELD) return; /* the workers wake it when the hold ends */
  bool blocked = false;
  for (;;) {
    pgs_server_t *server = client->server;
    if (server && pgs_io_backlog(&server->io) > PGS_IO_HIGH_WATER) {
      pgs_io_stop_reading(io); /* resumed when the server drains */
      blocked = true;
      break;
    }
    /* Replies pgshard makes itself (ReadyForQuery of a bare Sync, SET
     * pgshard.*, refusals) go out as they are made; a client that does not
     * read them is not read either until they are written (client.c,
     * client_on_drained), so what it sends cannot pile up here. */
    if (io->scratch.len >= PGS_IO_READ_CHUNK && pgs_io_flush(io) < 0) {
      connection->close(client);
      return;
    }
    if (pgs_io_backlog(io) > PGS_IO_HIGH_WATER) break;
    char type;
    size_t total;
    const uint8_t *p = io->in.data + io->in_pos;
    pgs_status_t st = pgs_request_next_message(client, &type, &total);
    if (st == PGS_EAGAIN) break;
    if (st != PGS_OK) return;
    if (type == 'X') {
      io->in_pos = io->in.len;
      connection->close(client);
      return;
    }
    if (!pgs_session_planned(&client->session) && client->fan && client->fan->copy_in &&
        (type == 'd' || type == 'c' || type == 'f')) {
      if (copy_backlogged(client)) {
        pgs_io_stop_reading(io); /* resumed when the shard drains */
        blocked = true;
        break;
      }
      pgs_fan_copy_message(client, type, p, total);
      io->in_pos += total;
      continue;
    }
    if (!pgs_session_planned(&client->session) && client->fan && type == 'S' &&
        !client->fan->simple && !client->fan->synced &&
        __builtin_popcountll(client->session.unit_mask) > 1) {
      /* The Sync after a merged Execute goes out at once, to every server
       * of the unit (plan_sync): each one's ReadyForQuery follows its part,
       * so the last, the client's, follows the merged result. A failure of
       * the read has nothing left to skip. */
      client->fan->synced = true;
    } else if (!pgs_session_planned(&client->session) &&
               (client->fan || client->session.ex.ready_pending > 0)) {
      /* A merged read is in flight: the next message waits for it (it may
       * fail the unit, and the merge owns the servers' replies). So it
       * does for the ReadyForQuery of Syncs sent at once: until the last
       * one, a server may still be skipping to its Sync. */
      (void)others_drained(client, -1);
      pgs_session_set_request(&client->session, PGS_REQ_HELD);
      blocked = true;
      break;
    }
    if (!pgs_session_planned(&client->session)) {
      if ((client->session.ex.unit == PGS_UNIT_SKIP_TO_SYNC) && type != 'S') {
        io->in_pos += total; /* PostgreSQL skips to Sync after an error */
        continue;
      }
      if (type == 'S') pgs_session_set_unit(&client->session, PGS_UNIT_CLEAN);
      if (client->config != client->worker->config && !pgs_request_follow_config(client)) return;
      if (pgs_paused(client->dbname) && at_tx_boundary(client)) {
        client->park = PGS_PARK_PAUSED; /* RESUME reads it again (worker.c) */
        blocked = true;
        break;
      }
      if (hold_starts(client)) {
        blocked = true;
        break;
      }
      bool woken = client->park == PGS_PARK_WOKEN; /* counted when it first came */
      client->park = PGS_PARK_NONE;
      if (client->request_start_us == 0) begin_request(client, type, p, total);
      if ((type == 'Q' || type == 'E') && !woken) COUNT(client, queries);
      const char *budget = type == 'P' || type == 'B' ? over_budget(client, type, p, total) : NULL;
      if (budget) {
        long long limit = strcmp(budget, "max_client_memory")
                              ? client->config->max_total_client_memory
                              : client->config->max_client_memory;
        pgs_plan_over_budget(&client->session, budget, limit);
      } else {
        pgs_plan_message(&client->session, type, p, total, p + total,
                         io->in.len - io->in_pos - total);
        if (client->session.held && hold_message(client, type, p, total)) {
          blocked = true;
          break;
        }
        start_ordered_fan(client);
      }
      if (client->state == PGS_CL_CLOSING) return;
    }
    /* What the steps send: the client's message, or pgshard's rewrite. */
    const pgs_buf_t *m = &client->session.message;
    bool rewritten = client->session.rewritten;
    steps_result_t r = run_steps(client, type, rewritten ? m->data : p, rewritten ? m->len : total);
    if (r == STEPS_LEFT) return; /* waiting for a pool; pgs_client_on_server resumes */
    if (r == STEPS_BLOCKED) {
      pgs_session_set_request(&client->session, PGS_REQ_DRAINING);
      blocked = true;
      break;
    }
    pgs_steps_clear(&client->session);
    io->in_pos += total;
    if (client->session.tx_replay_next) {
      if (pgs_exchange_in_tx(&client->session.ex)) {
        /* On a line of its own: the statement may end in a -- comment. */
        pgs_buf_put(&client->session.tx_replay, client->session.tx_replay_next,
                    strlen(client->session.tx_replay_next));
        pgs_buf_put(&client->session.tx_replay, "\n;", 2);
      }
      free(client->session.tx_replay_next);
      client->session.tx_replay_next = NULL;
    }
  }
  if (!flush_servers(client)) return;
  if (pgs_io_flush(io) < 0) {
    connection->close(client);
    return;
  }
  pgs_io_compact(io);
  if (blocked || pgs_io_backlog(io) > PGS_IO_HIGH_WATER)
    pgs_io_stop_reading(io);
  else
    (void)pgs_io_start_reading(io);
  if (!blocked) pgs_request_maybe_release(client);
  pgs_session_rest(&client->session);
}
