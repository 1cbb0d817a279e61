/*
 * request.c — where each client request goes, and how the replies of
 * several servers reach the client as if they came from one.
 *
 * A client holds at most one server per shard (client->servers[]). Each
 * complete client message is planned into steps (pgs_step_t): "send this to
 * shard i" or "reply this myself". Steps run in order; a step for another
 * shard than the previous one first waits until every other server has
 * answered everything it was sent (a Flush is injected where the extended
 * protocol would otherwise keep replies back). So at any moment only one
 * server has replies in flight for the client, and they arrive in request
 * order with no reordering buffer: pipelining stays at full speed while a
 * client stays on one shard, and costs a round trip per change of shard.
 *
 * Message plans (routing mode: several shards, or a tenant session):
 *   Query     lexed + analysed (plan cache) + routed (router/route.c):
 *             ONE/ANY -> that shard; FANOUT -> the same Query on each shard
 *             in turn (later parts' descriptions swallowed, CommandComplete
 *             counts summed into the last one, one ReadyForQuery); SPLIT ->
 *             each shard gets an INSERT of its own rows; REFUSE -> error.
 *   Parse     remembered (text, plan, literals, declared types) and sent to
 *             the shard its Bind will pick when that Bind is already in
 *             the buffer, else to the current shard.
 *   Bind      routed with its parameter values; the portal remembers its
 *             shards, so Describe/Execute/Close of it follow. A merged one
 *             is bound on one shard at once, on the others with the
 *             Execute (fanout.c), whose Sync is then sent without waiting.
 *   Sync      to every shard the unit touched, one ReadyForQuery reported.
 * Transactions: BEGIN is answered by pgshard and replayed on each shard the
 * transaction touches (tx_mask); COMMIT/ROLLBACK go to those shards. With
 * cross_shard_writes = deny a transaction may write on one shard only. A
 * statement pgshard refuses inside a transaction aborts it, as an error in
 * PostgreSQL would (tx_aborted: only ROLLBACK/COMMIT are taken).
 *
 * Without routing (one shard, no tenant) every step targets shard 0 and
 * nothing is lexed: the pass-through path of the pooler.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/accounting.h"
#include "pgshard/log.h"
#include "pgshard/client.h"
#include "pgshard/coordinator.h"
#include "pgshard/fanout.h"
#include "pgshard/pool.h"
#include "pgshard/request.h"
#include "pgshard/server.h"
#include "pgshard/state.h"
#include "pgshard/steps.h"
#include "pgshard/reserved.h"
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

static void free_portal(void *p) {
  pgs_portal_t *portal = p;
  if (portal->owner) pgs_account_mem_sub(portal->owner, portal->charged);
  free(portal->sql);
  pgs_plan_unref(portal->merge_plan);
  pgs_buf_free(&portal->merge_body);
  pgs_buf_free(&portal->merge_bind);
  free(portal);
}

void pgs_request_free_stmt(void *p) {
  pgs_client_stmt_t *stmt = p;
  if (stmt->owner) pgs_account_mem_sub(stmt->owner, stmt->charged);
  pgs_buf_free(&stmt->parse_body);
  pgs_buf_free(&stmt->merge_body);
  pgs_plan_unref(stmt->plan);
  if (stmt->lx) {
    pgs_lex_free(stmt->lx);
    free(stmt->lx);
  }
  free(stmt->type_oids);
  free(stmt);
}

void pgs_request_init(pgs_client_t *client) {
  const pgs_database_t *db = client->db;
  bool replicas = false;
  client->pool_stride = 1;
  for (int i = 0; i < db->nshards; i++) {
    replicas |= db->shards[i].nreplicas > 0;
    if (db->shards[i].nreplicas + 1 > client->pool_stride)
      client->pool_stride = db->shards[i].nreplicas + 1;
  }
  client->nslots = 2 * db->nshards;
  client->servers = pgs_xcalloc((size_t)client->nslots, sizeof(*client->servers));
  client->pools = pgs_xcalloc((size_t)(db->nshards * client->pool_stride), sizeof(*client->pools));
  client->ryw_commit_ms = pgs_xcalloc((size_t)db->nshards, sizeof(uint64_t));
  client->ryw_lsn = pgs_xcalloc((size_t)db->nshards, sizeof(uint64_t));
  client->ryw_pref = -1;
  client->picked = pgs_xcalloc((size_t)db->nshards, sizeof(int8_t));
  client->steps_cap = client->nslots + 4;
  client->steps = pgs_xcalloc((size_t)client->steps_cap, sizeof(*client->steps));
  client->cur = -1;
  client->tx_write_shard = -1;
  client->hint_shard = -1;
  pgs_strmap_init(&client->portals);
  pgs_lex_init(&client->lx);
  /* Reads go to replicas only if statements are analysed. */
  client->routing = db->nshards > 1 || client->tenant != NULL || replicas;
  for (int i = 0; i < client->nsettings; i++)
    if (client->settings[i].startup && client->settings[i].value)
      pgs_request_on_parameter_status(client, client->settings[i].name, client->settings[i].value);
}

void pgs_request_free(pgs_client_t *client) {
  if (client->steps) pgs_steps_clear(client);
  free(client->steps);
  free(client->servers);
  free(client->pools);
  free(client->ryw_commit_ms);
  free(client->picked);
  free(client->ryw_lsn);
  pgs_strmap_free(&client->portals, free_portal);
  pgs_lex_free(&client->lx);
  free(client->tenant);
  free(client->tenant_text);
  free(client->startup_tenant);
  free(client->begin_sql);
  pgs_buf_free(&client->tx_replay);
  free(client->tx_replay_next);
  free(client->row_shard);
  free(client->pv_data);
  free(client->pv_len);
  free(client->pv_fmt);
  pgs_fan_free(client->fan);
  client->fan = NULL;
  pgs_coordinator_abandon(client);
}

/* ---- servers held ---- */

/* Who a server's unnamed statement belongs to (pgs_server_t.unnamed_owner):
 * the pid and secret key pgshard gave the client, never reused alike. */
static uint64_t client_id(const pgs_client_t *client) {
  return (uint64_t)(uint32_t)client->cancel_pid << 32 | (uint32_t)client->cancel_key;
}

void pgs_request_unlink(pgs_client_t *client, pgs_server_t *server) {
  if (client->servers && server->shard >= 0 && server->shard < client->nslots &&
      client->servers[server->shard] == server)
    client->servers[server->shard] = NULL;
  if (client->server == server) {
    client->server = NULL;
    client->cur = -1;
  }
  server->client = NULL;
}

char pgs_request_ready_status(const pgs_client_t *client) {
  char status = pgs_exchange_in_tx(&client->ex) ? 'T' : 'I';
  if ((client->ex.tx == PGS_TX_ABORTED)) return 'E';
  for (int i = 0; i < client->nslots; i++) {
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
  if (client->state != PGS_CL_ACTIVE || client->pinned || pgs_state_planned(client) ||
      pgs_exchange_in_tx(&client->ex) || client->unit_mask ||
      (client->ex.unit == PGS_UNIT_SKIP_TO_SYNC) || io->in_pos != io->in.len)
    return false;
  for (int i = 0; i < client->nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s && (!pgs_server_expect_idle(s) || s->txstatus != 'I' ||
              s->pool->mode != PGS_POOL_TRANSACTION || s->state != PGS_SV_ACTIVE))
      return false;
  }
  for (int i = 0; i < client->nslots; i++) {
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
    *pool = pgs_pool_get(client->worker, client->config, client->db, client->user, shard, node,
                         client->startup_options);
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
  for (int i = 0; i < client->nslots; i++) {
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
  for (int i = 0; i < client->nslots; i++)
    if (client->servers[i] && client->servers[i]->replies.skipping) return true;
  return false;
}

/* Whether SERVER skips what it is sent next: an error left it skipping to
 * a Sync that is not on its way yet. */
static bool skips_to_sync(const pgs_server_t *server) {
  return pgs_replies_skips_next(&server->replies);
}

/* ---- prepared statements ---- */

static void statement_server_name(const uint8_t *parse_body, size_t len, char out[24]) {
  uint64_t h = XXH3_64bits(parse_body, len);
  snprintf(out, 24, "pgs_%016llx", (unsigned long long)h);
}

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

/* The shards' variant of a statement that merges (merge.h): its text
 * rewritten, the client's parameter types kept. */
static void build_merge_variant(pgs_client_stmt_t *stmt) {
  if (stmt->merge_body.len > 0) return;
  const pgs_buf_t *pb = &stmt->parse_body;
  size_t qlen = strnlen((const char *)pb->data, pb->len);
  pgs_merge_shard_sql(stmt->plan->merge, stmt->lx, &stmt->merge_body);
  if (qlen < pb->len) pgs_buf_put(&stmt->merge_body, pb->data + qlen + 1, pb->len - qlen - 1);
  statement_server_name(stmt->merge_body.data, stmt->merge_body.len, stmt->merge_name);
}

/* A Bind's result format codes for the shards' variant: per-column codes
 * get a text code in front for each hidden column. Of a BIND of which only
 * the names were read, the rest goes as it came. */
static void put_bind_rest(pgs_buf_t *b, const pgs_bind_msg_t *bind, int hidden) {
  int nres = bind->nresults;
  if (hidden == 0 || nres <= 1 || nres + hidden > UINT16_MAX) {
    pgs_buf_put(b, bind->after_names, bind->after_names_len); /* as it came */
    return;
  }
  pgs_buf_put(b, bind->after_names, (size_t)(bind->params + bind->params_len - bind->after_names));
  pgs_buf_put_i16(b, (int16_t)(nres + hidden));
  for (int i = 0; i < hidden; i++) pgs_buf_put_i16(b, 0);
  pgs_buf_put(b, bind->results, 2 * (size_t)nres);
}

/* Track what a statement does to session state. Whether it drops the
 * server's prepared statements (DISCARD ALL, DEALLOCATE ALL) is the
 * caller's business: the server that runs it forgets them (issue()). */
static void check_session_effects(pgs_client_t *client, const pgs_session_effects_t *fxc,
                                  bool simple) {
  pgs_session_effects_t *fx = (pgs_session_effects_t *)fxc;
  if (fx->flags & PGS_SESSION_PIN) {
    if (!client->pinned)
      pgs_info("client %d (%s@%s): session state, pinned to its server", client->cancel_pid,
               client->username, client->peer);
    client->pinned = true;
  }
  if (fx->flags & PGS_SESSION_TEMP) client->temp = true;
  if (!simple && fx->nops > 0) {
    /* SET through a prepared statement: we cannot see when it runs. */
    client->pinned = true;
    return;
  }
  for (int i = 0; i < fx->nops; i++) {
    if (client->ntx_ops == PGS_SESSION_MAX_OPS) {
      client->pinned = true;
      break;
    }
    client->tx_ops[client->ntx_ops++] = fx->ops[i];
    fx->ops[i].sql = NULL;
  }
}

/* What remembering a statement NAME with a Parse body of LEN bytes costs
 * the client's memory (max_client_memory): the body, and when routing its
 * analysis (the lexed text and literals, the shards' variant), estimated
 * from the text's size. */
static size_t stmt_charge(const pgs_client_t *client, const char *name, size_t len) {
  size_t bytes = sizeof(pgs_client_stmt_t) + sizeof(pgs_strmap_entry_t) + strlen(name) + 1 + len;
  if (client->routing) bytes += sizeof(pgs_lexed_t) + 3 * len;
  return bytes;
}

/* Remember a Parse (BODY after the statement name) as NAME. Returns the
 * statement, or NULL when the client has too many. */
static pgs_client_stmt_t *remember_parse(pgs_client_t *client, const char *name,
                                         const uint8_t *body, size_t len) {
  pgs_client_stmt_t *old = pgs_strmap_get(&client->stmts, name);
  if (old && old->parse_body.len == len && !memcmp(old->parse_body.data, body, len))
    return old; /* the same statement again (an unnamed one, typically) */
  if (old == NULL && client->stmts.count >= PGS_CLIENT_MAX_STATEMENTS) return NULL;
  pgs_client_stmt_t *stmt = pgs_xcalloc(1, sizeof(*stmt));
  stmt->owner = client;
  stmt->charged = stmt_charge(client, name, len);
  pgs_account_mem_add(client, stmt->charged);
  pgs_buf_put(&stmt->parse_body, body, len);
  statement_server_name(stmt->parse_body.data, stmt->parse_body.len, stmt->server_name);
  old = pgs_strmap_put(&client->stmts, name, stmt);
  if (old) pgs_request_free_stmt(old);
  return stmt;
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
    if (ok && (slen > 0 || client->routing) && (type == 'B' || describe.kind == 'S'))
      stmt = pgs_strmap_get(&client->stmts, name);
    kind = type == 'B' ? PGS_EXP_BIND : PGS_EXP_DESCRIBE;
    if (stmt == NULL) break; /* a portal, or unknown: the server answers */
    merged = merged && type == 'B' && stmt->plan && stmt->plan->merge;
    if (merged) {
      build_merge_variant(stmt);
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
      put_bind_rest(b, pgs_bind_read(body, len, &whole) == PGS_OK ? &whole : &bind,
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
 * extended-protocol unit): only the Execute's reply is the client's. */
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
  start = pgs_msg_begin(b, 'E');
  pgs_buf_put_cstr(b, "");
  pgs_buf_put_i32(b, 0);
  pgs_msg_end(b, start);
  pgs_io_scratch_done(&server->io, mark);
  pgs_server_expect(server, PGS_EXP_PARSE, pgs_rule_internal(PGS_ON_ERROR_CLIENT), NULL);
  pgs_server_expect(server, PGS_EXP_BIND, pgs_rule_internal(PGS_ON_ERROR_CLIENT), NULL);
  rule.internal = internal;
  pgs_server_expect(server, PGS_EXP_EXECUTE, rule, NULL);
}

/* ---- steps ---- */

static int slot_node(const pgs_client_t *client, int slot);

/* A step for SHARD (a slot; -1: no server), taken from the node the slot
 * is placed on now. */
static pgs_step_t *add_step(pgs_client_t *client, int shard, pgs_step_op_t op,
                            pgs_placed_t placed) {
  pgs_step_t *st = pgs_steps_add(client, shard, op, placed);
  if (shard >= 0) st->node = (int8_t)slot_node(client, shard);
  return st;
}

#define add_reply pgs_steps_reply
#define add_error pgs_steps_error

/* The same message (or per-shard TEXTS[shard] for SPLIT) on every shard of
 * MASK in turn, replies merged: the first part's descriptions, every
 * part's rows, one CommandComplete counting all, one ReadyForQuery. */
static void add_fanout(pgs_client_t *client, uint64_t mask, pgs_step_op_t op, char **texts,
                       bool counts, pgs_placed_t placed) {
  int n = __builtin_popcountll(mask), k = 0;
  for (int i = 0; i < client->nslots; i++) {
    if (!(mask & BIT(i))) continue;
    pgs_step_t *st = add_step(client, i, op, placed);
    if (texts) {
      st->text = texts[i];
      texts[i] = NULL;
    }
    if (n > 1) {
      if (k > 0) st->rule.done = PGS_ON_DONE_SWALLOW;
      if (k > 0 && client->ex.copies) st->rule.rows = PGS_ON_ROWS_SWALLOW; /* the same again */
      if (counts && k < n - 1) {
        st->rule.complete = PGS_ON_COMPLETE_COUNT;
        st->rule.ready = PGS_ON_READY_IF_ERROR;
      } else if (counts) {
        st->rule.complete = PGS_ON_COMPLETE_SUM;
      }
      st->drain_all = k == 0;
    }
    k++;
  }
}

static int first_bit(uint64_t mask) { return mask ? __builtin_ctzll(mask) : -1; }

/* The parts of the client's fan (fanout.c) on SLOTS: sent one after the
 * other without waiting for replies. The first waits until every earlier
 * request has been answered — or, when the fan's output goes out only at
 * its end (and so after every earlier reply of its own servers), until the
 * servers outside the fan have. */
static void add_fan_steps(pgs_client_t *client, uint64_t slots, pgs_step_op_t op,
                          const char *text) {
  bool first = true, streams = client->fan->streams;
  for (int i = 0; i < client->nslots; i++) {
    if (!(slots & BIT(i))) continue;
    pgs_step_t *st = add_step(client, i, op, PGS_PLACED_ROUTE);
    if (text) st->text = pgs_xstrdup(text);
    st->rule.fan = true;
    st->concurrent = st->always = true;
    st->drain_all = first && streams;
    st->drain_others = first && !streams;
    first = false;
  }
}

/* ---- primaries and replicas ---- */

/* The health of SHARD, or NULL when no snapshot describes it (then:
 * primaries only). The snapshot may be of another config than the
 * client's (a reload the client has not followed yet, or one the monitor
 * has not checked yet): the shard is then found by its name and nodes. */
static const pgs_shard_health_t *shard_health(const pgs_client_t *client, int shard) {
  const pgs_snapshot_t *snap = client->worker->snapshot;
  if (snap == NULL) return NULL;
  if (snap->config == client->config) return pgs_snapshot_shard(snap, client->db->name, shard);
  return pgs_snapshot_shard_of(snap, client->db, shard);
}

/* The node writes to SHARD go to (0: its configured primary), or -1. */
static int writer_node(const pgs_client_t *client, int shard) {
  const pgs_shard_health_t *h = shard_health(client, shard);
  if (h == NULL) return 0;
  if (h->writer < 0 || !h->nodes[h->writer].up) return -1;
  return h->writer;
}

/* Whether PLAN may read from a replica (DESIGN.md, "Routing semantics"). */
static bool replica_eligible(const pgs_client_t *client, const pgs_plan_t *plan) {
  if (plan == NULL || plan->kind != PGS_STMT_READ || client->pinned || client->route_pref == 1)
    return false;
  if (pgs_exchange_in_tx(&client->ex) && !client->ex.tx_read_only) return false;
  return true;
}

/* A readable replica of SHARD that has replayed what this session must
 * see, round robin. -1: read-your-writes wants the primary; -2: no replica
 * is within the lag bounds (lag_fallback decides). */
static int pick_replica(pgs_client_t *client, int shard, bool advance) {
  const pgs_shard_health_t *h = shard_health(client, shard);
  if (h == NULL) return -1;
  uint64_t need = 0;
  pgs_ryw_t ryw =
      client->ryw_pref >= 0 ? (pgs_ryw_t)client->ryw_pref : client->db->read_your_writes;
  if (client->route_pref == 2) ryw = PGS_RYW_OFF; /* SET pgshard.route = replica */
  switch (ryw) {
  case PGS_RYW_OFF:
    break;
  case PGS_RYW_SESSION:
    if (client->wrote_ever) return -1;
    break;
  case PGS_RYW_WINDOW:
    if (client->wrote_ever &&
        pgs_now_ms() - client->last_write_ms < (uint64_t)client->db->ryw_window_ms)
      return -1;
    break;
  case PGS_RYW_LSN:
    if (client->ryw_commit_ms[shard]) {
      /* The first primary LSN sampled after the commit is at or past it. */
      const pgs_lsn_sample_t *after =
          pgs_lsn_history_after(&h->history, client->ryw_commit_ms[shard]);
      if (after == NULL) return -1;
      client->ryw_lsn[shard] = after->lsn;
      client->ryw_commit_ms[shard] = 0;
    }
    need = client->ryw_lsn[shard];
    break;
  }
  /* Round robin over the replicas that qualify (not over all nodes: the
   * writer's turn would fall to the replica after it). */
  int candidates[64], ncand = 0;
  bool behind = false;
  for (int i = 0; i < h->nnodes && ncand < 64; i++) {
    const pgs_node_state_t *node = &h->nodes[i];
    if (i == h->writer || !node->readable) continue;
    if (node->lsn < need) {
      behind = true;
      continue;
    }
    candidates[ncand++] = i;
  }
  /* A look ahead (a Parse placed by its Bind) does not advance the turn,
   * so the Bind picks the same replica. */
  if (ncand == 0) return behind ? -1 : -2;
  uint32_t turn = advance ? client->worker->rr++ : client->worker->rr;
  return candidates[turn % (uint32_t)ncand];
}

/* The slot a statement of PLAN on SHARD runs on — the shard's writer, or a
 * replica — with the node in client->picked[shard] for a replica. -1 with
 * an error step when it cannot run anywhere. */
static int place_quietly(pgs_client_t *client, int shard, const pgs_plan_t *plan, bool quiet) {
  const pgs_database_t *db = client->db;
  if (db->shards[shard].nreplicas > 0 && replica_eligible(client, plan)) {
    /* A replica this transaction or unit already uses stays. */
    if (client->servers[2 * shard + 1] &&
        ((client->tx_mask | client->unit_mask) & BIT(2 * shard + 1)))
      return 2 * shard + 1;
    int r = pick_replica(client, shard, !quiet);
    if (r >= 0) {
      client->picked[shard] = (int8_t)r;
      return 2 * shard + 1;
    }
    if (r == -2 && db->lag_fallback == PGS_FALLBACK_ERROR) {
      if (quiet) return -1;
      add_error(client, "55000",
                "no replica of shard %s is within max_replica_lag_ms = %d and "
                "max_replica_lag_bytes = %lld (lag_fallback = error)",
                db->shards[shard].name, db->max_replica_lag_ms,
                (long long)db->max_replica_lag_bytes);
      return -1;
    }
  }
  if (writer_node(client, shard) < 0) {
    if (quiet) return -1;
    add_error(client, PGS_SQLSTATE_CONNECTION_FAILURE,
              "shard %s has no primary accepting writes (its servers are down or in recovery)",
              db->shards[shard].name);
    return -1;
  }
  if (!quiet && plan && plan->kind != PGS_STMT_READ && plan->kind != PGS_STMT_SESSION &&
      plan->kind != PGS_STMT_BEGIN)
    client->tx_wrote |= BIT(shard);
  return 2 * shard;
}

static int place(pgs_client_t *client, int shard, const pgs_plan_t *plan) {
  return place_quietly(client, shard, plan, false);
}

/* The node a step on SLOT takes a server from. */
static int slot_node(const pgs_client_t *client, int slot) {
  if (slot & 1) return client->picked[slot / 2];
  int w = writer_node(client, slot / 2);
  return w < 0 ? 0 : w;
}

/* Where a statement that may run anywhere goes (a slot). */
static int default_slot(const pgs_client_t *client) {
  if (client->cur >= 0) return client->cur;
  if (client->tx_mask) return first_bit(client->tx_mask);
  if (client->hint_shard >= 0) return 2 * client->hint_shard;
  return 2 * client->last_shard;
}

/* Slots that hold session state right now (SET goes to all of them). */
static uint64_t session_mask(const pgs_client_t *client) {
  uint64_t mask = client->tx_mask;
  for (int i = 0; i < client->nslots; i++)
    if (client->servers[i]) mask |= BIT(i);
  return mask ? mask : BIT(default_slot(client));
}

/* Writer slots of a mask of shards. */
static uint64_t writer_slots(uint64_t shards) {
  uint64_t mask = 0;
  for (int i = 0; i < PGS_MAX_SHARDS; i++)
    if (shards & BIT(i)) mask |= BIT(2 * i);
  return mask;
}

void pgs_request_server_lost(pgs_client_t *client, int slot, int readies, bool open_unit,
                             const char *why) {
  bool replica = client->servers && (slot & 1) && slot < client->nslots;
  if (client->servers && slot >= 0 && slot < client->nslots && client->fan &&
      (client->fan->slots & BIT(slot)) && !pgs_exchange_in_tx(&client->ex) &&
      !(client->tx_mask & BIT(slot)) && client->state != PGS_CL_CLOSING &&
      (client->ex.ready_pending == 0 || client->fan->synced)) {
    /* A server running a part of a merged read or of a COPY, outside a
     * transaction: the statement fails, the session goes on (a COPY's
     * other parts get CopyFail). When the unit's Sync went out with the
     * parts, its ReadyForQuery will not come: if it was the last one owed,
     * pgshard answers for it once the read has failed. */
    char message[600];
    snprintf(message, sizeof(message), "lost the connection to %s of shard %s: %s",
             replica ? "a replica" : "the primary", client->db->shards[slot / 2].name, why);
    client->unit_mask &= ~BIT(slot);
    bool last_ready =
        readies > 0 && client->ex.ready_pending > 0 && --client->ex.ready_pending == 0;
    if (pgs_fan_part_lost(client, slot, message)) pgs_request_send_ready(client);
    if (last_ready) pgs_request_send_ready(client);
    if (client->state == PGS_CL_WAITING) return;
    (void)pgs_state_resume(client);
    pgs_request_process(client);
    return;
  }
  if (client->ex.ready_pending > 0) {
    /* Its ReadyForQuery was one of several the client waits for. */
    connection->server_lost(client, why);
    return;
  }
  bool others_busy = false;
  for (int i = 0; i < client->nslots && replica; i++)
    others_busy |= client->servers[i] && !pgs_server_expect_idle(client->servers[i]);
  if (!replica || pgs_exchange_in_tx(&client->ex) || (client->tx_mask & BIT(slot)) || others_busy ||
      client->state == PGS_CL_CLOSING) {
    connection->server_lost(client, why);
    return;
  }
  /* A replica went away outside a transaction: what was running there
   * failed, the session goes on (the next read picks another replica). */
  const pgs_database_t *db = client->db;
  char message[600];
  snprintf(message, sizeof(message), "pgshard: lost the connection to a replica of shard %s: %s",
           db->shards[slot / 2].name, why);
  pgs_info("client %d (%s@%s): %s", client->cancel_pid, client->username, client->peer, message);
  client->unit_mask &= ~BIT(slot);
  if (readies == 0 && !open_unit) return; /* it owed nothing: another one next time */
  pgs_io_t *io = &client->io;
  for (int i = 0; i < (readies > 0 ? readies : 1); i++) {
    size_t mark = pgs_io_scratch_mark(io);
    pgs_msg_error_raw(pgs_io_scratch(io), "ERROR", PGS_SQLSTATE_CONNECTION_FAILURE, message, NULL);
    if (readies > 0) pgs_msg_ready(pgs_io_scratch(io), pgs_request_ready_status(client));
    pgs_io_scratch_done(io, mark);
  }
  if (open_unit || readies == 0) pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
  if (client->state == PGS_CL_WAITING) return; /* on_server resumes it */
  (void)pgs_state_resume(client);
  pgs_request_process(client);
}

int pgs_request_login_slot(pgs_client_t *client, int *node) {
  /* Any server of shard 0 can tell the parameters: the writer, else a
   * replica that is up (a shard without a primary still serves reads). */
  int w = writer_node(client, 0);
  const pgs_shard_health_t *h = shard_health(client, 0);
  if (w >= 0 || h == NULL) {
    *node = w >= 0 ? w : 0;
    return 0;
  }
  for (int i = 0; i < h->nnodes; i++) {
    if (h->nodes[i].up) {
      *node = i;
      client->picked[0] = (int8_t)i;
      return 1;
    }
  }
  *node = 0;
  return 0;
}

void pgs_request_tx_done(pgs_client_t *client) {
  if (client->tx_wrote == 0 || client->ryw_commit_ms == NULL) return;
  uint64_t now = pgs_now_ms();
  for (int i = 0; i < client->nslots / 2; i++)
    if (client->tx_wrote & BIT(i)) client->ryw_commit_ms[i] = now;
  client->wrote_ever = true;
  client->last_write_ms = now;
  client->tx_wrote = 0;
}

/* ---- standard_conforming_strings ----
 *
 * The lexer reads '...' as PostgreSQL does with standard_conforming_strings
 * on (a backslash is an ordinary character). With it off the server would
 * read 'a\' OR b = '' as a different statement than pgshard routed, so in
 * routing mode a session whose servers may read strings the other way is
 * refused: SET to off, a startup value off, code that may change it, and a
 * server reporting it off (ParameterStatus: database or role defaults,
 * functions) until the client sets it on again. */

static const char scs_off_message[] =
    "standard_conforming_strings is off for this session; pgshard routes statements only as "
    "PostgreSQL reads them with it on: SET standard_conforming_strings = on";

void pgs_request_on_parameter_status(pgs_client_t *client, const char *name, const char *value) {
  if (!strcasecmp(name, "standard_conforming_strings"))
    client->scs_off = !pgs_session_bool_on(value);
}

/* Whether FX would turn standard_conforming_strings off (SET or SET LOCAL). */
static bool sets_scs_off(const pgs_session_effects_t *fx) {
  return (fx->flags & PGS_SESSION_STRINGS_OFF) != 0;
}

/* Whether code the statement runs (a function call, DO) names
 * standard_conforming_strings in a string: set_config and DO bodies. */
static bool code_names_scs(const pgs_plan_t *plan, const pgs_lexed_t *lx) {
  if (!plan->runs_code || lx == NULL) return false;
  for (int i = 0; i < lx->nliterals; i++) {
    const pgs_literal_t *lit = &lx->literals[i];
    const char *v = lx->values + lit->offset;
    if (lit->is_string && lit->len >= 27 && strcasestr(v, "standard_conforming_strings"))
      return true;
  }
  return false;
}

/* ---- pgshard's own settings ---- */

static bool set_tenant(pgs_client_t *client, const char *text, pgs_key_error_t *err) {
  pgs_key_t *key = pgs_xmalloc(sizeof(*key));
  if (pgs_key_from_text(client->db->shardmap.tenant_type, text, strlen(text), key, err) != PGS_OK ||
      pgs_route_tenant_shard(client->db, key, err) < 0) {
    free(key);
    return false;
  }
  free(client->tenant);
  client->tenant = key;
  if (client->tenant_text != text) {
    free(client->tenant_text);
    client->tenant_text = pgs_xstrdup(text);
  }
  client->routing = true;
  return true;
}

bool pgs_request_startup_tenant(pgs_client_t *client, pgs_key_error_t *err) {
  if (client->startup_tenant == NULL) return true;
  return set_tenant(client, client->startup_tenant, err);
}

/* SET/RESET pgshard.NAME. Returns false with an error step added. */
static bool apply_pgshard_op(pgs_client_t *client, const pgs_set_op_t *op) {
  const char *name = op->name + 8;
  if (!strcasecmp(name, "tenant") && client->startup_tenant != NULL) {
    /* The tenant a connection was opened for is its identity, not a
     * preference: it cannot be changed or dropped. */
    add_error(client, "42501", "this session's tenant was fixed when it connected (%s)",
              "-c pgshard.tenant");
    return false;
  }
  if (op->kind == PGS_SET_OP_RESET) {
    if (!strcasecmp(name, "shard"))
      client->hint_shard = -1;
    else if (!strcasecmp(name, "route"))
      client->route_pref = 0;
    else if (!strcasecmp(name, "read_your_writes"))
      client->ryw_pref = -1;
    else if (!strcasecmp(name, "tenant")) {
      free(client->tenant);
      client->tenant = NULL;
      free(client->tenant_text);
      client->tenant_text = NULL;
    }
    return true;
  }
  if (!op->has_value) {
    add_error(client, "22023", "SET %s takes one value", op->name);
    return false;
  }
  if (!strcasecmp(name, "shard")) {
    int shard = pgs_shardmap_find_shard(client->db, op->value);
    if (shard < 0 && strcasecmp(op->value, "default") != 0 && op->value[0]) {
      add_error(client, "22023", "unknown shard \"%s\" in database \"%s\"", op->value,
                client->dbname);
      return false;
    }
    client->hint_shard = shard;
    return true;
  }
  if (!strcasecmp(name, "tenant")) {
    pgs_key_error_t err;
    if (client->scs_off) {
      add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
      return false;
    }
    if (!set_tenant(client, op->value, &err)) {
      add_error(client, err.sqlstate, "tenant \"%s\": %s", op->value, err.message);
      return false;
    }
    return true;
  }
  if (!strcasecmp(name, "route") || !strcasecmp(name, "read_your_writes")) {
    /* In the order of route_pref and of pgs_ryw_t. */
    static const char *const routes[] = {"auto", "primary", "replica", NULL};
    static const char *const ryw[] = {"off", "window", "session", "lsn", NULL};
    bool is_route = !strcasecmp(name, "route");
    const char *const *ok = is_route ? routes : ryw;
    for (int i = 0; ok[i]; i++) {
      if (strcasecmp(op->value, ok[i]) != 0) continue;
      if (is_route)
        client->route_pref = i;
      else
        client->ryw_pref = i;
      return true;
    }
    add_error(client, "22023", "invalid value for %s: \"%s\"", op->name, op->value);
    return false;
  }
  add_error(client, "42704", "unrecognized configuration parameter \"%s\"", op->name);
  return false;
}

/* Whether SQL may set pgshard.* settings but the grammar did not read it
 * (say 'a' -- c <newline> 'b', which libpg_query does not join as the
 * server does): forwarded, the server would take it as a custom setting of
 * its own and the client would believe a tenant or hint pgshard never
 * applied. */
static bool pgshard_unread(const pgs_session_effects_t *fx, const char *sql) {
  return fx->parse_failed && strcasestr(sql, "pgshard.") != NULL;
}

/* Whether FX sets pgshard.* settings; then it must do nothing else. */
static int pgshard_ops(const pgs_session_effects_t *fx) {
  int n = 0;
  for (int i = 0; i < fx->nops; i++)
    if (!strncasecmp(fx->ops[i].name, "pgshard.", 8)) n++;
  return n;
}

/* ---- routing one statement ---- */

/* A lexer that cannot read a statement's values cannot route it: the
 * statement is refused rather than sent to a shard that may not hold its
 * rows. */
static const char unreadable[] =
    "cannot read this statement (an unterminated quoted string, identifier or comment, an "
    "invalid escape, or a NUL byte); it was not sent to any shard";

static const char too_many_literals[] =
    "statement has more literals and parameters than pgshard can route (65535 in all); "
    "send it in smaller pieces";

/* The request runs LX's statement (the first one counts): SHOW QUERIES
 * keys it by its normalised text. */
static void note_query(pgs_client_t *client, const pgs_lexed_t *lx) {
  if (client->request_query != 0 || client->stats == NULL) return;
  client->request_query = lx->hash ? lx->hash : 1;
  pgs_worker_t *w = client->worker;
  if (w->queries == NULL) w->queries = pgs_xcalloc(1, sizeof(*w->queries));
  (void)pgs_query_stats_get(w->queries, client->dbname, client->request_query, lx->normalized);
}

static pgs_plan_t *get_plan(pgs_client_t *client, const pgs_lexed_t *lx) {
  if (client->config == client->worker->config && client->worker->plans)
    return pgs_plan_cache_get(client->worker->plans, client->db, lx);
  return pgs_analyze(client->db, lx); /* an old config's client: its own plans */
}

/* Route PLAN; REFUSE adds the error. Returns false when refused. */
static bool route(pgs_client_t *client, const pgs_plan_t *plan, const pgs_lexed_t *lx,
                  const pgs_param_values_t *params, pgs_route_t *out) {
  pgs_route_session_t session = {.hint_shard = client->hint_shard, .tenant = client->tenant};
  if (client->scs_off || code_names_scs(plan, lx)) {
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
    return false;
  }
  if (lx && lx->hint_shard[0]) {
    session.hint_shard = pgs_shardmap_find_shard(client->db, lx->hint_shard);
    if (session.hint_shard < 0) {
      add_error(client, "22023", "unknown shard \"%s\" in hint", lx->hint_shard);
      return false;
    }
  }
  if (plan->nrows > client->row_shard_cap) {
    client->row_shard_cap = plan->nrows;
    client->row_shard = pgs_xrealloc(client->row_shard, sizeof(int) * (size_t)plan->nrows);
  }
  out->row_shard = client->row_shard;
  pgs_route_plan(client->db, plan, lx, params, &session, out);
  if (out->kind == PGS_ROUTE_REFUSE) {
    add_error(client, out->sqlstate, "%s", out->message);
    return false;
  }
  if (out->kind == PGS_ROUTE_ONE) {
    /* One transaction writes on one shard unless the policy allows more. */
    if (pgs_exchange_in_tx(&client->ex) && plan->kind == PGS_STMT_WRITE && plan->table) {
      if (client->tx_write_shard >= 0 && client->tx_write_shard != out->shard &&
          client->db->cross_shard_writes == PGS_XWRITE_DENY) {
        add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "this transaction wrote on shard %s; writing on shard %s too would make it "
                  "cross-shard (cross_shard_writes = deny)",
                  client->db->shards[client->tx_write_shard].name,
                  client->db->shards[out->shard].name);
        return false;
      }
      client->tx_write_shard = out->shard;
    }
    client->last_shard = out->shard;
  }
  return true;
}

/* The slots a routed statement runs on: its shard's writer or a replica
 * (ONE, ANY), every writer (FANOUT). 0 with an error step added when it
 * cannot run. */
static uint64_t placed_mask_quietly(pgs_client_t *client, const pgs_route_t *rt,
                                    const pgs_plan_t *plan, bool quiet) {
  if (rt->kind == PGS_ROUTE_FANOUT) {
    for (int i = 0; i < client->nslots / 2; i++)
      if ((rt->shards & BIT(i)) && place_quietly(client, i, plan, quiet) < 0) return 0;
    return writer_slots(rt->shards);
  }
  if (rt->kind != PGS_ROUTE_ONE && rt->kind != PGS_ROUTE_ANY) return 0;
  if (rt->kind == PGS_ROUTE_ANY && client->cur >= 0 &&
      (plan->kind != PGS_STMT_READ || pgs_exchange_in_tx(&client->ex) || (client->cur & 1)))
    return BIT(client->cur); /* no shard needed: where the session is */
  if (rt->kind == PGS_ROUTE_ANY && client->tx_mask) return BIT(first_bit(client->tx_mask));
  int shard = rt->kind == PGS_ROUTE_ONE ? rt->shard : default_slot(client) / 2;
  int slot = place_quietly(client, shard, plan, quiet);
  return slot < 0 ? 0 : BIT(slot);
}

static uint64_t placed_mask(pgs_client_t *client, const pgs_route_t *rt, const pgs_plan_t *plan) {
  return placed_mask_quietly(client, rt, plan, false);
}

static void add_inject(pgs_client_t *client, int slot, const char *text, pgs_reply_rule_t rule,
                       bool extended) {
  pgs_steps_inject(client, slot, text, rule, extended);
  client->steps[client->nsteps - 1].node = (int8_t)slot_node(client, slot);
}

/* COMMIT or ROLLBACK (KIND) of the transaction pgshard began: to every
 * shard it touched, or answered here when it touched none. */
static void plan_tx_end(pgs_client_t *client, pgs_stmt_kind_t kind, const char *sql, bool simple) {
  bool rollback = kind == PGS_STMT_ROLLBACK || (client->ex.tx == PGS_TX_ABORTED);
  const char *tag = rollback ? "ROLLBACK" : "COMMIT";
  uint64_t mask = client->tx_mask;
  pgs_state_set_tx(client, PGS_TX_NONE);
  client->tx_mask = 0;
  client->tx_write_shard = -1;
  free(client->begin_sql);
  client->begin_sql = NULL;
  client->tx_replay.len = 0;
  if (mask == 0) {
    add_reply(client, 'C', tag);
    if (simple) add_reply(client, 'Z', NULL);
    return;
  }
  if (!rollback && pgs_coordinator_needed(client, client->tx_wrote)) {
    pgs_coordinator_begin(client, mask, mask & writer_slots(client->tx_wrote), simple, true);
    return;
  }
  int first = client->nsteps;
  add_fanout(client, mask, simple ? PGS_STEP_QUERY : PGS_STEP_EXEC_SQL, NULL, true,
             PGS_PLACED_SESSION);
  for (int i = first; i < client->nsteps; i++) {
    client->steps[i].text = pgs_xstrdup(rollback ? "ROLLBACK" : sql);
    client->steps[i].always = true; /* every shard ends, whatever the others said */
  }
}

static void plan_begin(pgs_client_t *client, const char *sql, bool read_only, bool simple) {
  if (!pgs_exchange_in_tx(&client->ex)) {
    pgs_state_set_tx(client, PGS_TX_OPEN);
    client->ex.tx_read_only = read_only;
    client->tx_mask = 0;
    client->tx_write_shard = -1;
    free(client->begin_sql);
    client->begin_sql = pgs_xstrdup(sql);
    client->tx_replay.len = 0;
  }
  add_reply(client, 'C', "BEGIN");
  if (simple) add_reply(client, 'Z', NULL);
}

/* Steps from FIRST on run a statement that drops the server's prepared
 * statements: each server forgets its list when it is sent. */
static void mark_drops_prepared(pgs_client_t *client, int first) {
  for (int i = first; i < client->nsteps; i++)
    if (client->steps[i].shard >= 0) client->steps[i].forget_prepared = true;
}

/* The slots a merged read runs on: a server of each shard (replicas when
 * they qualify). 0 with an error step added when a shard cannot serve. */
static uint64_t fan_slots(pgs_client_t *client, const pgs_route_t *rt, const pgs_plan_t *plan) {
  uint64_t slots = 0;
  for (int i = 0; i < client->nslots / 2; i++) {
    if (!(rt->shards & BIT(i))) continue;
    int slot = place(client, i, plan);
    if (slot < 0) return 0;
    slots |= BIT(slot);
  }
  return slots;
}

/* A simple Query routed MERGE: every shard at once, rows merged. */
static void plan_fan_query(pgs_client_t *client, const pgs_route_t *rt, pgs_plan_t *plan,
                           const pgs_lexed_t *lx) {
  int64_t limit, offset;
  pgs_value_error_t err;
  uint64_t slots = fan_slots(client, rt, plan);
  if (slots == 0) {
    add_reply(client, 'Z', NULL);
    return;
  }
  if (pgs_merge_limits(plan->merge, lx, NULL, &limit, &offset, &err) != PGS_OK) {
    add_error(client, err.sqlstate, "%s", err.message);
    add_reply(client, 'Z', NULL);
    return;
  }
  pgs_buf_t text;
  pgs_buf_init(&text);
  if (plan->merge->rewrite) pgs_merge_shard_sql(plan->merge, lx, &text);
  pgs_fan_start(client, plan, slots, limit, offset, true);
  add_fan_steps(client, slots, text.len ? PGS_STEP_QUERY : PGS_STEP_FORWARD,
                text.len ? (const char *)text.data : NULL);
  pgs_buf_free(&text);
}

/* A write outside a transaction that spans SHARDS: atomic under 2pc. The
 * caller plans its steps between the two calls: BEGIN on each slot first,
 * then the statement, with no ReadyForQuery of its own, then the commit. */
static bool implicit_twopc(const pgs_client_t *client, const pgs_plan_t *plan, uint64_t shards) {
  return !pgs_exchange_in_tx(&client->ex) && plan->kind == PGS_STMT_WRITE &&
         pgs_coordinator_needed(client, shards);
}

static int implicit_begin(pgs_client_t *client, uint64_t slots) {
  for (int i = 0; i < client->nslots; i++)
    if (slots & BIT(i))
      add_inject(client, i, "BEGIN", pgs_rule_internal(PGS_ON_ERROR_OWNER), false);
  return client->nsteps;
}

static void implicit_twopc_commit(pgs_client_t *client, uint64_t slots, int first) {
  for (int i = first; i < client->nsteps; i++) client->steps[i].rule.ready = PGS_ON_READY_DROP;
  pgs_coordinator_begin(client, slots, slots, true, false);
}

/* Whether the session's client_encoding (as the client set it at startup
 * or with SET; the server's default, UTF8 in pgshard's databases,
 * otherwise) sends keys as UTF-8 bytes. */
static bool client_encoding_utf8(const pgs_client_t *client) {
  for (int i = client->nsettings - 1; i >= 0; i--) {
    const pgs_setting_t *s = &client->settings[i];
    if (strcasecmp(s->name, "client_encoding") != 0) continue;
    if (s->value == NULL) return false; /* set to something pgshard did not read */
    return !strcasecmp(s->value, "UTF8") || !strcasecmp(s->value, "UTF-8") ||
           !strcasecmp(s->value, "UNICODE") || !strcasecmp(s->value, "SQL_ASCII") ||
           !strcasecmp(s->value, "DEFAULT");
  }
  return true;
}

/* COPY ... FROM STDIN routed to several shards (a sharded table without a
 * hint, or a reference table): on each shard's writer at once, rows split
 * by key (fanout.c). */
static void plan_copy_in(pgs_client_t *client, const pgs_route_t *rt, pgs_plan_t *plan,
                         const pgs_lexed_t *lx) {
  pgs_copy_spec_t spec;
  pgs_key_error_t err;
  if (plan->copy == NULL || pgs_copy_spec_resolve(plan->copy, lx, &spec, &err) != PGS_OK) {
    if (plan->copy == NULL)
      add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "this COPY cannot be split by shard");
    else
      add_error(client, err.sqlstate, "%s", err.message);
    add_reply(client, 'Z', NULL);
    return;
  }
  if (!pgs_exchange_in_tx(&client->ex) && pgs_coordinator_needed(client, rt->shards)) {
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "a COPY into several shards is made atomic (cross_shard_writes = 2pc) only inside "
              "a transaction: wrap it in BEGIN/COMMIT");
    add_reply(client, 'Z', NULL);
    return;
  }
  if (plan->table && !client_encoding_utf8(client)) {
    /* Keys are hashed as UTF-8 and rows are cut at ASCII bytes. */
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "COPY into sharded table %s needs client_encoding UTF8 (or SQL_ASCII) to split "
              "its rows by key",
              plan->table->name);
    add_reply(client, 'Z', NULL);
    return;
  }
  uint64_t slots = placed_mask(client, rt, plan);
  if (slots == 0) {
    add_reply(client, 'Z', NULL);
    return;
  }
  pgs_route_session_t session = {.hint_shard = client->hint_shard, .tenant = client->tenant};
  /* Outside a transaction each shard's COPY would commit on its own, and a
   * shard failing after another committed would leave that one's rows:
   * each part runs in a transaction of pgshard's, ended with the COPY. */
  bool own_tx = !pgs_exchange_in_tx(&client->ex) && __builtin_popcountll(slots) > 1;
  if (pgs_fan_start_copy_in(client, plan, slots, &spec, &session, own_tx, &err) == NULL) {
    add_error(client, err.sqlstate, "%s", err.message);
    add_reply(client, 'Z', NULL);
    return;
  }
  if (own_tx) {
    /* Sent at once, like the parts (steps before them wait for the fan to
     * end): the first part waits for every BEGIN to answer. */
    int first = client->nsteps;
    (void)implicit_begin(client, slots);
    for (int i = first; i < client->nsteps; i++) client->steps[i].concurrent = true;
  }
  add_fan_steps(client, slots, PGS_STEP_FORWARD, NULL);
}

/* The transaction's SET [LOCAL]/RESET/savepoint statements are replayed on
 * every shard it reaches later (tx_replay): SET LOCAL ROLE must hold
 * wherever the transaction goes. Kept once the statement's steps are done.
 * false with an error step added when there is too much to keep. */
#define TX_REPLAY_MAX (64 * 1024)
static bool keep_for_replay(pgs_client_t *client, bool replayable, const char *sql) {
  if (!pgs_exchange_in_tx(&client->ex) || !replayable) return true;
  size_t len = strlen(sql);
  if (client->tx_replay.len + len + 1 > TX_REPLAY_MAX) {
    add_error(client, "54000",
              "this transaction's SET and SAVEPOINT statements pass %d bytes, more than pgshard "
              "carries to the shards it reaches later",
              TX_REPLAY_MAX);
    return false;
  }
  free(client->tx_replay_next);
  client->tx_replay_next = pgs_xstrndup(sql, len);
  return true;
}

/* A simple Query in routing mode. */
static void plan_query(pgs_client_t *client, const uint8_t *p, size_t total) {
  pgs_reader_t r;
  size_t qlen;
  pgs_reader_init(&r, p + 5, total - 5);
  const char *sql = pgs_read_cstr(&r, &qlen);
  if (sql == NULL || pgs_reader_left(&r) != 0) {
    add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION,
              "invalid Query message: its text must end "
              "with the message");
    add_reply(client, 'Z', NULL);
    return;
  }
  pgs_session_effects_t fx;
  bool session = pgs_session_maybe(sql, qlen);
  if (session) {
    pgs_session_analyze(sql, &fx);
    if (pgshard_unread(&fx, sql)) {
      add_error(client, "42601",
                "cannot read this statement naming pgshard.* settings; pgshard did not apply it "
                "(write SET pgshard.NAME = 'value' as a statement of its own)");
      add_reply(client, 'Z', NULL);
      pgs_session_effects_free(&fx);
      return;
    }
    int own = pgshard_ops(&fx);
    if (own > 0) {
      if (own != fx.nops || fx.flags)
        add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "SET pgshard.* must be a statement of its own");
      else
        for (int i = 0; i < fx.nops && apply_pgshard_op(client, &fx.ops[i]); i++) {
          if (i == fx.nops - 1)
            add_reply(client, 'C', fx.ops[i].kind == PGS_SET_OP_SET ? "SET" : "RESET");
        }
      add_reply(client, 'Z', NULL);
      pgs_session_effects_free(&fx);
      return;
    }
  }
  pgs_lexed_t *lx = &client->lx;
  pgs_plan_t *plan = NULL;
  pgs_status_t lexed = pgs_lex(sql, qlen, lx);
  if (lexed == PGS_ETOOBIG) {
    /* Its keys cannot be read: never guess a shard. */
    add_error(client, "54000", "%s", too_many_literals);
    add_reply(client, 'Z', NULL);
    if (session) pgs_session_effects_free(&fx);
    return;
  }
  if (lexed == PGS_OK) plan = get_plan(client, lx);
  if (lexed == PGS_OK) note_query(client, lx);
  pgs_stmt_kind_t kind = plan ? plan->kind : PGS_STMT_OTHER;
  bool single = plan && plan->nstatements == 1;
  pgs_route_t rt;
  if (plan == NULL) {
    /* What pgshard cannot read it cannot place. */
    if (client->scs_off)
      add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
    else
      add_error(client, "42601", "%s", unreadable);
    add_reply(client, 'Z', NULL);
  } else if ((client->ex.tx == PGS_TX_ABORTED) &&
             !(single && (kind == PGS_STMT_COMMIT || kind == PGS_STMT_ROLLBACK))) {
    add_error(client, "25P02",
              "current transaction is aborted, commands ignored until end of transaction block");
    add_reply(client, 'Z', NULL);
  } else if (single && kind == PGS_STMT_BEGIN) {
    plan_begin(client, sql, plan->read_only_tx, true);
  } else if (single && pgs_exchange_in_tx(&client->ex) &&
             (kind == PGS_STMT_COMMIT || kind == PGS_STMT_ROLLBACK)) {
    plan_tx_end(client, kind, sql, true);
  } else if (plan && plan->refuse_sqlstate[0]) {
    add_error(client, plan->refuse_sqlstate, "%s",
              strncmp(plan->refuse_message, "pgshard: ", 9) ? plan->refuse_message
                                                            : plan->refuse_message + 9);
    add_reply(client, 'Z', NULL);
  } else if (session && sets_scs_off(&fx)) {
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
    add_reply(client, 'Z', NULL);
  } else if (kind == PGS_STMT_SESSION || kind == PGS_STMT_COMMIT || kind == PGS_STMT_ROLLBACK) {
    /* SET and friends (no data: they change the session) go wherever the
     * session is; so does COMMIT or ROLLBACK outside a transaction. */
    if (!keep_for_replay(client, plan->tx_replayable, sql)) {
      add_reply(client, 'Z', NULL);
      goto out;
    }
    add_fanout(client, session_mask(client), PGS_STEP_FORWARD, NULL, true, PGS_PLACED_SESSION);
    if (session) check_session_effects(client, &fx, true);
  } else if (!route(client, plan, lx, NULL, &rt)) {
    add_reply(client, 'Z', NULL);
  } else if (rt.kind == PGS_ROUTE_MERGE) {
    plan_fan_query(client, &rt, plan, lx);
  } else if (kind == PGS_STMT_COPY_FROM && (rt.kind == PGS_ROUTE_FANOUT || plan->table)) {
    /* Into a sharded table always through the splitter, even on one shard
     * (a hint, a tenant): each row's key is checked against it. */
    plan_copy_in(client, &rt, plan, lx);
  } else if (rt.kind == PGS_ROUTE_SPLIT) {
    char **texts = pgs_xcalloc((size_t)client->nslots, sizeof(char *));
    bool ok = true, placed = true;
    for (int i = 0; i < client->nslots / 2 && ok && placed; i++) {
      if (!(rt.shards & BIT(i))) continue;
      pgs_buf_t b;
      pgs_buf_init(&b);
      ok = pgs_route_split_insert(lx, rt.row_shard, plan->nrows, i, &b) == PGS_OK;
      texts[2 * i] = (char *)b.data;
      placed = place(client, i, plan) == 2 * i;
    }
    if (!placed) {
      add_reply(client, 'Z', NULL);
    } else if (ok && implicit_twopc(client, plan, rt.shards)) {
      uint64_t slots = writer_slots(rt.shards);
      int first = implicit_begin(client, slots);
      add_fanout(client, slots, PGS_STEP_QUERY, texts, true, PGS_PLACED_ROUTE);
      implicit_twopc_commit(client, slots, first);
    } else if (ok) {
      add_fanout(client, writer_slots(rt.shards), PGS_STEP_QUERY, texts, true, PGS_PLACED_ROUTE);
    } else {
      add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                "cannot split this INSERT's VALUES rows by shard");
      add_reply(client, 'Z', NULL);
    }
    for (int i = 0; i < client->nslots; i++) free(texts[i]);
    free(texts);
  } else {
    uint64_t mask = placed_mask(client, &rt, plan);
    if (mask == 0) {
      add_reply(client, 'Z', NULL);
    } else {
      /* DDL and reference tables are copies on every shard: one shard's
       * count is the answer, not the sum. */
      client->ex.copies = plan->target == PGS_TARGET_ANY;
      bool atomic = rt.kind == PGS_ROUTE_FANOUT && implicit_twopc(client, plan, rt.shards);
      int first = atomic ? implicit_begin(client, mask) : 0;
      add_fanout(client, mask, PGS_STEP_FORWARD, NULL, true, PGS_PLACED_ROUTE);
      if (atomic) implicit_twopc_commit(client, mask, first);
      if (session) check_session_effects(client, &fx, true);
    }
  }
out:
  if (session && (fx.flags & PGS_SESSION_DROPS_PREPARED)) mark_drops_prepared(client, 0);
  if (session) pgs_session_effects_free(&fx);
  pgs_plan_unref(plan);
}

/* ---- extended protocol ---- */

/* A Bind read whole; its parameter values into PV (the client's arrays). */
static bool read_bind(pgs_client_t *client, const uint8_t *body, size_t len, pgs_bind_msg_t *bind,
                      pgs_param_values_t *pv) {
  if (pgs_bind_read(body, len, bind) != PGS_OK) return false;
  int n = bind->nparams;
  if (n > client->pv_cap) {
    client->pv_cap = n;
    client->pv_data = pgs_xrealloc(client->pv_data, sizeof(*client->pv_data) * (size_t)n);
    client->pv_len = pgs_xrealloc(client->pv_len, sizeof(*client->pv_len) * (size_t)n);
    client->pv_fmt = pgs_xrealloc(client->pv_fmt, sizeof(*client->pv_fmt) * (size_t)n);
  }
  const uint8_t *value;
  int32_t vlen;
  size_t at = 0;
  for (int i = 0; pgs_bind_next_value(bind, &at, &value, &vlen); i++) {
    client->pv_data[i] = value;
    client->pv_len[i] = vlen;
    client->pv_fmt[i] = pgs_bind_param_format(bind, i);
  }
  pv->n = n;
  pv->data = client->pv_data;
  pv->len = client->pv_len;
  pv->format = client->pv_fmt;
  return true;
}

static pgs_client_stmt_t *find_stmt(pgs_client_t *client, const char *name) {
  return pgs_strmap_get(&client->stmts, name);
}

static void forget_stmt(pgs_client_t *client, const char *name) {
  pgs_client_stmt_t *gone = pgs_strmap_remove(&client->stmts, name);
  if (gone) pgs_request_free_stmt(gone);
}

/* PostgreSQL's own words for a statement name nobody prepared (26000):
 * pgshard says it itself, so that no client's name can reach a statement
 * some other client prepared on a shared server. */
static void no_such_statement(pgs_client_t *client, const char *name) {
  if (name[0])
    add_error(client, "26000", "prepared statement \"%s\" does not exist", name);
  else
    add_error(client, "26000", "unnamed prepared statement does not exist");
  pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
}

/* The shard the Bind right after a Parse of NAME will pick, if that Bind is
 * in the buffer already (libpq sends Parse/Bind/Execute/Sync together). */
static int lookahead_slot(pgs_client_t *client, size_t at, const char *name,
                          pgs_client_stmt_t *stmt) {
  pgs_io_t *io = &client->io;
  char type;
  size_t total;
  const uint8_t *p = io->in.data + at;
  if (at >= io->in.len ||
      pgs_msg_peek(p, io->in.len - at, (size_t)client->config->max_message_size, &type, &total) !=
          PGS_OK ||
      type != 'B' || io->in.len - at < total)
    return -1;
  pgs_bind_msg_t bind;
  pgs_param_values_t pv = {0};
  if (!read_bind(client, p + 5, total - 5, &bind, &pv) || strcmp(bind.statement, name) != 0)
    return -1;
  pv.type_oid = stmt->type_oids;
  pv.ntypes = stmt->ntypes;
  pgs_route_session_t session = {.hint_shard = client->hint_shard, .tenant = client->tenant};
  if (stmt->lx->hint_shard[0])
    session.hint_shard = pgs_shardmap_find_shard(client->db, stmt->lx->hint_shard);
  pgs_route_t rt = {.row_shard = NULL};
  if (stmt->plan->nrows > 0) return -1;
  pgs_route_plan(client->db, stmt->plan, stmt->lx, &pv, &session, &rt);
  /* Where the Bind will go, without reporting errors: the Bind does. */
  if (rt.kind != PGS_ROUTE_ONE && rt.kind != PGS_ROUTE_ANY) return -1;
  uint64_t mask = placed_mask_quietly(client, &rt, stmt->plan, true);
  return mask ? first_bit(mask) : -1;
}

/* Where a Parse or a Describe of a statement goes when its Bind is not in
 * sight: where the session is; any server of the shard can parse, so a
 * replica when the shard has no writer. */
static int parse_slot(pgs_client_t *client) {
  int slot = default_slot(client);
  if ((slot & 1) || writer_node(client, slot / 2) >= 0) return slot;
  const pgs_shard_health_t *h = shard_health(client, slot / 2);
  for (int i = 0; h && i < h->nnodes; i++) {
    if (h->nodes[i].up && h->nodes[i].in_recovery) {
      client->picked[slot / 2] = (int8_t)i;
      return slot | 1;
    }
  }
  return slot;
}

/* Whether a statement is answered by pgshard itself. */
static bool stmt_is_local(const pgs_client_t *client, const pgs_client_stmt_t *stmt) {
  const pgs_plan_t *plan = stmt->plan;
  if (plan == NULL || plan->nstatements != 1) return false;
  switch (plan->kind) {
  case PGS_STMT_BEGIN:
    return true;
  case PGS_STMT_COMMIT:
  case PGS_STMT_ROLLBACK:
    return pgs_exchange_in_tx(&client->ex) || client->tx_mask == 0;
  default:
    return false;
  }
}

static void plan_parse(pgs_client_t *client, const uint8_t *p, size_t total) {
  pgs_parse_msg_t parse;
  if (pgs_parse_read(p + 5, total - 5, &parse) != PGS_OK) {
    add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Parse message");
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  const char *name = parse.name, *sql = parse.query;
  size_t qlen = parse.query_len;
  int ntypes = parse.ntypes;
  pgs_client_stmt_t *stmt = remember_parse(client, name, parse.after_name, parse.after_name_len);
  if (stmt == NULL) {
    add_error(client, "53400", "too many prepared statements (%d)", PGS_CLIENT_MAX_STATEMENTS);
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  if (pgs_session_maybe(sql, qlen)) {
    pgs_session_effects_t fx;
    pgs_session_analyze(sql, &fx);
    if (pgshard_ops(&fx) > 0 || sets_scs_off(&fx)) {
      if (pgshard_ops(&fx) > 0)
        add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "SET pgshard.* is taken in a simple query only");
      else
        add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
      forget_stmt(client, name);
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      pgs_session_effects_free(&fx);
      return;
    }
    check_session_effects(client, &fx, false);
    stmt->drops_prepared = (fx.flags & PGS_SESSION_DROPS_PREPARED) != 0;
    pgs_session_effects_free(&fx);
  }
  if (stmt->lx == NULL && stmt->plan == NULL) {
    stmt->lx = pgs_xmalloc(sizeof(*stmt->lx));
    pgs_lex_init(stmt->lx);
    pgs_status_t lexed = pgs_lex(sql, qlen, stmt->lx);
    if (lexed == PGS_OK) stmt->plan = get_plan(client, stmt->lx);
    if (lexed != PGS_OK || stmt->plan->parse_failed) {
      /* Unreadable: refused here, as the server refuses a Parse it cannot
       * parse (and the name is then free, as there). */
      if (lexed == PGS_ETOOBIG)
        add_error(client, "54000", "%s", too_many_literals);
      else if (lexed != PGS_OK)
        add_error(client, "42601", "%s", unreadable);
      else
        add_error(client, stmt->plan->refuse_sqlstate, "%s", stmt->plan->refuse_message + 9);
      forget_stmt(client, name);
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    stmt->ntypes = ntypes;
    stmt->type_oids = pgs_xcalloc((size_t)ntypes + 1, sizeof(uint32_t));
    for (int i = 0; i < ntypes; i++) stmt->type_oids[i] = pgs_parse_type_oid(&parse, i);
  }
  if (stmt_is_local(client, stmt)) {
    add_reply(client, '1', NULL);
    return;
  }
  int slot = lookahead_slot(client, client->io.in_pos + total, name, stmt);
  pgs_step_t *st = slot >= 0
                       ? add_step(client, slot, PGS_STEP_PARSE, PGS_PLACED_ROUTE)
                       : add_step(client, parse_slot(client), PGS_STEP_PARSE, PGS_PLACED_SESSION);
  st->stmt = stmt;
}

static pgs_portal_t *put_portal(pgs_client_t *client, const char *name) {
  pgs_portal_t *portal = pgs_strmap_get(&client->portals, name);
  if (portal == NULL) {
    portal = pgs_xcalloc(1, sizeof(*portal));
    portal->owner = client;
    portal->charged = sizeof(*portal) + sizeof(pgs_strmap_entry_t) + strlen(name) + 1;
    pgs_account_mem_add(client, portal->charged);
    pgs_strmap_put(&client->portals, name, portal);
  }
  free(portal->sql);
  portal->sql = NULL;
  portal->mask = 0;
  portal->kind = PGS_STMT_OTHER;
  portal->copies = false;
  portal->drops_prepared = false;
  pgs_plan_unref(portal->merge_plan);
  portal->merge_plan = NULL;
  portal->unbound = 0;
  return portal;
}

/* What the parts of a merged portal bound later are sent: the shards'
 * statement and the client's Bind for it, as forward() builds them,
 * copied into PORTAL. */
static void keep_merged_bind(pgs_portal_t *portal, pgs_client_stmt_t *stmt,
                             const pgs_bind_msg_t *bind) {
  build_merge_variant(stmt);
  memcpy(portal->merge_name, stmt->merge_name, sizeof(portal->merge_name));
  portal->merge_body.len = 0;
  pgs_buf_put(&portal->merge_body, stmt->merge_body.data, stmt->merge_body.len);
  pgs_buf_t *b = &portal->merge_bind;
  b->len = 0;
  size_t start = pgs_msg_begin(b, 'B');
  pgs_buf_put(b, bind->portal, bind->portal_len + 1);
  pgs_buf_put_cstr(b, stmt->merge_name);
  put_bind_rest(b, bind, stmt->plan->merge->nhidden);
  pgs_msg_end(b, start);
  size_t charged = sizeof(*portal) + sizeof(pgs_strmap_entry_t) + bind->portal_len + 1 +
                   portal->merge_body.cap + portal->merge_bind.cap;
  if (charged > portal->charged)
    pgs_account_mem_add(portal->owner, charged - portal->charged);
  else
    pgs_account_mem_sub(portal->owner, portal->charged - charged);
  portal->charged = charged;
}

static void plan_bind(pgs_client_t *client, const uint8_t *p, size_t total) {
  pgs_bind_msg_t bind;
  pgs_param_values_t pv = {0};
  if (!read_bind(client, p + 5, total - 5, &bind, &pv)) {
    add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Bind message");
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  const char *portal_name = bind.portal, *stmt_name = bind.statement;
  pgs_client_stmt_t *stmt = find_stmt(client, stmt_name);
  if (stmt && stmt->lx) note_query(client, stmt->lx);
  if (stmt == NULL || stmt->plan == NULL) {
    no_such_statement(client, stmt_name);
    return;
  }
  pgs_portal_t *portal = put_portal(client, portal_name);
  portal->drops_prepared = stmt->drops_prepared;
  const pgs_plan_t *plan = stmt->plan;
  if ((client->ex.tx == PGS_TX_ABORTED) && plan->kind != PGS_STMT_COMMIT &&
      plan->kind != PGS_STMT_ROLLBACK) {
    add_error(client, "25P02",
              "current transaction is aborted, commands ignored until end of transaction block");
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  if (stmt_is_local(client, stmt)) {
    portal->kind = plan->kind;
    portal->read_only = plan->read_only_tx;
    size_t qlen = strnlen((const char *)stmt->parse_body.data, stmt->parse_body.len);
    portal->sql = pgs_xstrndup((const char *)stmt->parse_body.data, qlen);
    add_reply(client, '2', NULL);
    return;
  }
  pgs_route_t rt;
  pv.type_oid = stmt->type_oids;
  pv.ntypes = stmt->ntypes;
  if (plan->kind == PGS_STMT_SESSION || plan->kind == PGS_STMT_COMMIT ||
      plan->kind == PGS_STMT_ROLLBACK) {
    portal->mask = session_mask(client);
    portal->placed = PGS_PLACED_SESSION;
    if (plan->tx_replayable) {
      size_t qlen = strnlen((const char *)stmt->parse_body.data, stmt->parse_body.len);
      portal->sql = pgs_xstrndup((const char *)stmt->parse_body.data, qlen);
    }
  } else if (!route(client, plan, stmt->lx, &pv, &rt)) {
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else if (rt.kind == PGS_ROUTE_SPLIT) {
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "a multi-row INSERT whose rows belong to several shards is split only in a simple "
              "query; send one row per statement or use the simple query protocol");
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else if (rt.kind == PGS_ROUTE_MERGE) {
    pgs_value_error_t err;
    portal->mask = fan_slots(client, &rt, plan);
    if (portal->mask == 0) {
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    if (pgs_merge_limits(plan->merge, stmt->lx, &pv, &portal->limit, &portal->offset, &err) !=
        PGS_OK) {
      add_error(client, err.sqlstate, "%s", err.message);
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    portal->kind = plan->kind;
    portal->merge_plan = stmt->plan;
    stmt->plan->refcount++;
    /* One part binds it now, the session's own when it can (no wait), and
     * answers the client; the others are sent the Bind with their Execute. */
    int slot = client->cur >= 0 && (portal->mask & BIT(client->cur)) ? client->cur
                                                                     : first_bit(portal->mask);
    portal->unbound = portal->mask & ~BIT(slot);
    if (portal->unbound) keep_merged_bind(portal, stmt, &bind);
    portal->placed = PGS_PLACED_ROUTE;
    add_step(client, slot, PGS_STEP_FORWARD, PGS_PLACED_ROUTE)->merged = true;
    return;
  } else if (plan->kind == PGS_STMT_COPY_FROM && (rt.kind == PGS_ROUTE_FANOUT || plan->table)) {
    /* Its rows are split by key (plan_copy_in) only from a Query: sent as
     * it is, its CopyData would go to one shard unchecked, and the parts
     * after the first would wait for it while it waits for its data. */
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "COPY FROM STDIN into a sharded table, or into several shards, is split by key "
              "only in a simple query; send it with the simple query protocol");
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else if (rt.kind == PGS_ROUTE_FANOUT && implicit_twopc(client, plan, rt.shards)) {
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "a write on several shards in the extended query protocol is made atomic "
              "(cross_shard_writes = 2pc) only inside a transaction: wrap it in BEGIN/COMMIT");
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else {
    portal->mask = placed_mask(client, &rt, plan);
    portal->placed = PGS_PLACED_ROUTE;
    if (portal->mask == 0) {
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
  }
  portal->kind = plan->kind;
  portal->copies = plan->target == PGS_TARGET_ANY;
  add_fanout(client, portal->mask, PGS_STEP_FORWARD, NULL, false, portal->placed);
}

/* Describe, Execute or Close of a portal: where it was bound. */
static void plan_portal_message(pgs_client_t *client, char type, const char *name,
                                int32_t max_rows) {
  pgs_portal_t *portal = pgs_strmap_get(&client->portals, name);
  if (portal == NULL) {
    if (type == 'C') {
      add_reply(client, '3', NULL); /* closing what does not exist is no error */
    } else {
      if (name[0])
        add_error(client, "34000", "portal \"%s\" does not exist", name);
      else
        add_error(client, "34000", "unnamed portal does not exist");
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    }
    return;
  }
  if (portal->mask == 0 && type != 'E') {
    /* Answered by pgshard: BEGIN/COMMIT/ROLLBACK. */
    add_reply(client, type == 'D' ? 'n' : '3', NULL);
  } else if (portal->mask == 0) {
    if (portal->kind == PGS_STMT_BEGIN)
      plan_begin(client, portal->sql, portal->read_only, false);
    else
      plan_tx_end(client, portal->kind, portal->sql, false);
  } else if (portal->merge_plan && type == 'D') {
    /* Any part it is bound on describes it (the one the session is on: no
     * wait); its hidden columns stay hidden. */
    uint64_t bound = portal->mask & ~portal->unbound;
    int slot = client->cur >= 0 && (bound & BIT(client->cur)) ? client->cur : first_bit(bound);
    pgs_step_t *st = add_step(client, slot, PGS_STEP_FORWARD, PGS_PLACED_ROUTE);
    st->rule.hide = (int16_t)portal->merge_plan->merge->nhidden;
  } else if (portal->merge_plan && type == 'E') {
    if (max_rows != 0) {
      add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                "a cross-shard result cannot be fetched in parts (Execute with a row limit); "
                "fetch it whole or add a condition on the shard key");
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    } else {
      pgs_fan_start(client, portal->merge_plan, portal->mask, portal->limit, portal->offset, false);
      add_fan_steps(client, portal->mask, PGS_STEP_FAN_EXEC, NULL);
    }
  } else {
    /* A merged portal is closed where it is bound. */
    if (type == 'E' && portal->sql && !keep_for_replay(client, true, portal->sql)) {
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    client->ex.copies = portal->copies;
    int first = client->nsteps;
    add_fanout(client, portal->mask & ~portal->unbound, PGS_STEP_FORWARD, NULL, type == 'E',
               portal->placed);
    if (type == 'E' && portal->drops_prepared) mark_drops_prepared(client, first);
  }
  if (type == 'C') {
    pgs_portal_t *gone = pgs_strmap_remove(&client->portals, name);
    if (gone) free_portal(gone);
  }
}

static void plan_sync(pgs_client_t *client) {
  uint64_t mask = client->unit_mask;
  client->unit_mask = 0;
  if (!pgs_exchange_in_tx(&client->ex)) {
    pgs_strmap_free(&client->portals, free_portal);
    pgs_strmap_init(&client->portals);
  }
  if (mask == 0) {
    add_reply(client, 'Z', NULL);
    return;
  }
  /* Every server of the unit at once; the last ReadyForQuery to arrive is
   * the client's, with every shard's status known by then. Each server's
   * earlier replies precede its own ReadyForQuery, and servers outside
   * the unit have answered (a step for another server waited for them). */
  int n = __builtin_popcountll(mask);
  for (int i = 0; i < client->nslots; i++) {
    if (!(mask & BIT(i))) continue;
    pgs_step_t *st = add_step(client, i, PGS_STEP_SYNC, PGS_PLACED_SESSION);
    st->always = true;
    if (n > 1) {
      st->concurrent = true;
      st->rule.ready = PGS_ON_READY_LAST_OF_N;
    }
  }
  if (n > 1) client->ex.ready_pending = n;
}

/* A Describe or Close message P (TOTAL bytes) read into TARGET: one kind
 * byte ('S' or 'P') and one name ending with the message. */
static bool read_target(char type, const uint8_t *p, size_t total, pgs_describe_msg_t *target) {
  return (type == 'D' ? pgs_describe_read(p + 5, total - 5, target)
                      : pgs_close_read(p + 5, total - 5, target)) == PGS_OK;
}

/* A Query or Parse P naming one of pgshard's own server-side statements
 * in SQL (reserved.h) is refused: the error step is added. */
static bool names_reserved_statement(pgs_client_t *client, char type, const uint8_t *p,
                                     size_t total) {
  pgs_reader_t r;
  pgs_parse_msg_t parse;
  size_t qlen = 0;
  const char *sql = NULL;
  if (type == 'Q') {
    pgs_reader_init(&r, p + 5, total - 5);
    sql = pgs_read_cstr(&r, &qlen);
  } else if (pgs_parse_read_head(p + 5, total - 5, &parse) == PGS_OK) {
    sql = parse.query, qlen = parse.query_len;
  }
  char name[PGS_MAX_NAME];
  bool prepares;
  if (sql == NULL || !pgs_reserved_statement(sql, qlen, name, sizeof(name), &prepares))
    return false;
  if (prepares)
    add_error(client, "42939",
              "prepared statement names starting with \"%s\" are reserved for pgshard",
              PGS_RESERVED_PREFIX);
  else
    add_error(client, "26000", "prepared statement \"%s\" does not exist", name);
  if (type == 'Q')
    add_reply(client, 'Z', NULL);
  else
    pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
  return true;
}

/* Plan one complete client message at in_pos. */
static void plan_message(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  client->nsteps = client->step_next = 0;
  client->ex.sum = 0;
  client->ex.copies = false;
  client->ex.message_error = false;
  pgs_state_set_request(client, PGS_REQ_RUNNING);
  if ((type == 'Q' || type == 'P') && names_reserved_statement(client, type, p, total)) return;
  if (!client->routing) {
    /* One shard: everything to it, as a pooler would. */
    if (type == 'P') {
      /* Its name and text; the rest is the server's to judge. */
      pgs_parse_msg_t parse;
      bool bad = pgs_parse_read_head(p + 5, total - 5, &parse) != PGS_OK;
      const char *name = parse.name, *sql = parse.query;
      size_t qlen = parse.query_len;
      bool drops = false;
      if (sql && pgs_session_maybe(sql, qlen)) {
        pgs_session_effects_t fx;
        pgs_session_analyze(sql, &fx);
        check_session_effects(client, &fx, false);
        drops = (fx.flags & PGS_SESSION_DROPS_PREPARED) != 0;
        pgs_session_effects_free(&fx);
      }
      pgs_client_stmt_t *stmt = NULL;
      if (bad) {
        add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Parse message");
        pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
        return;
      }
      if (parse.name_len > 0) {
        stmt = remember_parse(client, name, parse.after_name, parse.after_name_len);
        if (stmt == NULL) {
          /* Never under the client's own name: a shared server would keep
           * it for whoever comes next. */
          add_error(client, "53400", "too many prepared statements (%d)",
                    PGS_CLIENT_MAX_STATEMENTS);
          pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
          return;
        }
      }
      if (stmt) stmt->drops_prepared = drops;
      /* Without a name the Execute cannot be told apart: forget at Parse. */
      add_step(client, 0, stmt ? PGS_STEP_PARSE : PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH)->stmt =
          stmt;
      if (drops && stmt == NULL) mark_drops_prepared(client, 0);
      return;
    }
    if (type == 'Q') {
      pgs_reader_t r;
      size_t qlen;
      pgs_reader_init(&r, p + 5, total - 5);
      const char *sql = pgs_read_cstr(&r, &qlen);
      if (sql && pgs_session_maybe(sql, qlen)) {
        pgs_session_effects_t fx;
        pgs_session_analyze(sql, &fx);
        if (pgshard_ops(&fx) > 0 || pgshard_unread(&fx, sql)) {
          /* SET pgshard.tenant and friends are pgshard's, even on one shard. */
          pgs_session_effects_free(&fx);
          plan_query(client, p, total);
          return;
        }
        check_session_effects(client, &fx, true);
        bool drops = (fx.flags & PGS_SESSION_DROPS_PREPARED) != 0;
        pgs_session_effects_free(&fx);
        if (drops) {
          add_step(client, 0, PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH);
          mark_drops_prepared(client, 0);
          return;
        }
      }
    }
    pgs_describe_msg_t target = {0};
    if ((type == 'C' || type == 'D') && !read_target(type, p, total, &target)) {
      add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid %s message",
                type == 'D' ? "Describe" : "Close");
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    if (type == 'C' && target.kind == 'S' && target.name_len > 0) {
      /* The server keeps it for the next client that prepares the same
       * statement; only the client's name goes. */
      forget_stmt(client, target.name);
      add_reply(client, '3', NULL);
      return;
    }
    if (type == 'S') {
      plan_sync(client);
      return;
    }
    if (type == 'B' || (type == 'D' && target.kind == 'S')) {
      /* A statement name reaches the server only as one the client
       * prepared (mapped to the server's name by forward()); the unnamed
       * one only on the server the client parsed it on. */
      const char *name = target.name;
      if (type == 'B') {
        /* Its names; the rest is the server's to judge. */
        pgs_bind_msg_t bind;
        if (pgs_bind_read_head(p + 5, total - 5, &bind) != PGS_OK) {
          add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Bind message");
          pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
          return;
        }
        name = bind.statement;
      }
      pgs_client_stmt_t *stmt = name[0] ? find_stmt(client, name) : NULL;
      if (name[0] ? stmt == NULL
                  : client->server == NULL || client->server->unnamed_owner != client_id(client)) {
        no_such_statement(client, name);
        return;
      }
      add_step(client, 0, PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH);
      /* Bind of DEALLOCATE ALL / DISCARD ALL: its server forgets (the
       * Execute follows on the same server). */
      if (type == 'B' && stmt && stmt->drops_prepared) mark_drops_prepared(client, 0);
      return;
    }
    add_step(client, 0, PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH);
    return;
  }
  switch (type) {
  case 'Q':
    plan_query(client, p, total);
    return;
  case 'P':
    plan_parse(client, p, total);
    return;
  case 'B':
    plan_bind(client, p, total);
    return;
  case 'D':
  case 'C': {
    pgs_describe_msg_t target;
    bool ok = read_target(type, p, total, &target);
    const char *name = target.name;
    if (!ok) {
      add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid %s message",
                type == 'D' ? "Describe" : "Close");
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
    } else if (target.kind == 'P') {
      plan_portal_message(client, type, name, 0);
    } else if (type == 'C') {
      pgs_client_stmt_t *stmt = pgs_strmap_remove(&client->stmts, name);
      if (stmt) pgs_request_free_stmt(stmt);
      add_reply(client, '3', NULL);
    } else {
      pgs_client_stmt_t *stmt = find_stmt(client, name);
      if (stmt == NULL) {
        no_such_statement(client, name);
      } else if (stmt_is_local(client, stmt)) {
        add_reply(client, 't', NULL);
        add_reply(client, 'n', NULL);
      } else {
        /* Any server describes it alike: where the session is. */
        add_step(client, parse_slot(client), PGS_STEP_FORWARD, PGS_PLACED_SESSION);
      }
    }
    return;
  }
  case 'E': {
    pgs_execute_msg_t execute;
    if (pgs_execute_read(p + 5, total - 5, &execute) != PGS_OK) {
      add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Execute message");
      pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    plan_portal_message(client, 'E', execute.portal, execute.max_rows);
    return;
  }
  case 'S':
    plan_sync(client);
    return;
  case 'H':
    if (client->cur >= 0) add_step(client, client->cur, PGS_STEP_FORWARD, PGS_PLACED_SESSION);
    return;
  case 'd':
  case 'c':
  case 'f':
    /* COPY data goes where the COPY went. */
    if (client->cur >= 0) add_step(client, client->cur, PGS_STEP_FORWARD, PGS_PLACED_SESSION);
    return;
  case 'F':
    /* Its function and arguments are not SQL pgshard can route (and a
     * call may write): refused, like anything else it cannot place. */
    add_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "the FunctionCall message is not routed; call the function in a query "
              "(SELECT f($1))");
    add_reply(client, 'Z', NULL);
    return;
  default:
    /* pgs_frontend_type_valid let nothing else through. */
    add_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "unexpected message type '%c'", type);
    add_reply(client, 'Z', NULL);
    return;
  }
}

/* ---- a server's replies (server.c reports them here) ---- */

static pgs_exchange_t *owner_exchange(pgs_client_t *client) { return &client->ex; }

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
  if (v->events & PGS_RE_PARAMETER) pgs_request_on_parameter_status(client, v->name, v->value);
  if (v->events & PGS_RE_CLIENT_SEES) connection->server_message(client, type, body, len);
  if (v->events & PGS_RE_CLIENT_ERROR) pgs_state_message_failed(client);
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
  if (pgs_state_resume(client)) pgs_request_process(client);
}

static void owner_lost(pgs_client_t *client, int slot, int readies, bool open_unit,
                       const char *why) {
  if (slot < 0)
    connection->server_lost(client, why);
  else
    pgs_request_server_lost(client, slot, readies, open_unit, why);
}

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
  if (fan == NULL || !pgs_state_planned(client) || client->want_slot < 0 ||
      !(fan->slots & BIT(client->want_slot)) || client->step_next >= client->nsteps)
    return false;
  /* The steps left of this message are the fan's parts not yet sent
   * (add_fan_steps): none of them is sent now. */
  uint64_t unsent = 0;
  for (int i = client->step_next; i < client->nsteps; i++) {
    const pgs_step_t *st = &client->steps[i];
    if (!st->concurrent || st->shard < 0 || !(fan->slots & BIT(st->shard))) return false;
    unsent |= BIT(st->shard);
  }
  client->step_next = client->nsteps;
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
  } else if (st->reply == 'Z') {
    pgs_io_scratch_done(io, mark);
    pgs_request_send_ready(client);
    return;
  } else if (st->reply == 'C') {
    size_t start = pgs_msg_begin(b, 'C');
    pgs_buf_put_cstr(b, st->text);
    pgs_msg_end(b, start);
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
    return !client->routing;
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
      snprintf(server->gid, sizeof(server->gid), "%s", client->twopc.gid);
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
  case PGS_STEP_FAN_EXEC: {
    pgs_execute_msg_t execute;
    pgs_status_t read = pgs_execute_read(p + 5, total - 5, &execute);
    PGS_ASSERT(read == PGS_OK); /* it was read whole when it was planned */
    (void)read;
    pgs_portal_t *portal = pgs_strmap_get(&client->portals, execute.portal);
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
    forward(client, server, type, p, total, st->rule, false);
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
                  st->op == PGS_STEP_FAN_EXEC ||
                  (st->op == PGS_STEP_FORWARD && extended_type(type));
  if (extended) {
    client->unit_mask |= BIT(shard);
    server->need_flush = type != 'H';
  } else if (st->op == PGS_STEP_SYNC || st->op == PGS_STEP_QUERY || st->op == PGS_STEP_INJECT ||
             type == 'Q' || type == 'S' || type == 'F') {
    server->need_flush = false;
  }
}

/* Run the planned steps of the message P at in_pos. */
static steps_result_t run_steps(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  while (client->step_next < client->nsteps) {
    pgs_step_t *st = &client->steps[client->step_next];
    if (client->fan && !st->concurrent) {
      /* A merged read is in flight: what follows waits for its result
       * (its parts are asked to flush what they hold). */
      (void)others_drained(client, -1);
      return STEPS_BLOCKED;
    }
    if (st->drain_others && client->fan && !outside_drained(client, client->fan->slots))
      return STEPS_BLOCKED;
    bool everyone = st->shard < 0 || st->drain_all;
    if ((everyone || st->shard != client->cur) && (!st->concurrent || st->drain_all)) {
      if (!others_drained(client, everyone ? -1 : st->shard)) return STEPS_BLOCKED;
      if (client->ex.message_error && client->step_next > 0 && !st->always) {
        client->step_next++; /* a fan-out part failed: no more parts */
        continue;
      }
      if (type != 'S' && type != 'Q' && !st->always && unit_error(client)) {
        pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
        client->step_next = client->nsteps;
        break;
      }
    }
    if (st->op == PGS_STEP_TWOPC) {
      pgs_twopc_phase_t phase = (pgs_twopc_phase_t)st->phase;
      client->step_next++;
      pgs_coordinator_run(client, phase); /* plans more steps: st may move */
      continue;
    }
    if (st->shard < 0) {
      emit_reply(client, st);
      /* An error in an extended unit skips the rest of it; a Query and a
       * FunctionCall end with their own ReadyForQuery. */
      if (st->op == PGS_STEP_ERROR && type != 'Q' && type != 'F')
        pgs_state_set_unit(client, PGS_UNIT_SKIP_TO_SYNC);
      client->step_next++;
      continue;
    }
    if (st->rule.fan && client->fan && client->fan->error.len > 0) {
      /* The statement failed before this part was sent (it waited for a
       * server): it is not sent, it would only run to its end for nothing. */
      client->step_next++;
      if (pgs_fan_parts_unserved(client, BIT(st->shard), PGS_SQLSTATE_INTERNAL,
                                 "another part of this statement failed"))
        pgs_request_send_ready(client);
      continue;
    }
    if (st->node < 0) st->node = (int8_t)slot_node(client, st->shard); /* placed now */
    pgs_server_t *server = client->servers[st->shard];
    if (server && (st->shard & 1) && server->pool->node != st->node && st->node >= 0 &&
        pgs_server_expect_idle(server) && server->txstatus == 'I' &&
        !((client->unit_mask | client->tx_mask) & BIT(st->shard))) {
      /* Another replica was picked for this read: the idle one goes back. */
      pgs_request_unlink(client, server);
      pgs_pool_server_free(server->pool, server);
      server = NULL;
    }
    if (server == NULL) {
      request_server(client, st->shard, st->node >= 0 ? st->node : 0);
      return STEPS_LEFT;
    }
    if (st->op == PGS_STEP_FAN_EXEC && skips_to_sync(server)) {
      /* An error earlier in the unit (the client has it) left this server
       * skipping to Sync: the part would be skipped too. */
      client->step_next++;
      pgs_fan_part_skipped(client, st->shard);
      continue;
    }
    client->cur = st->shard;
    client->server = server;
    if (pgs_exchange_in_tx(&client->ex) && (client->ex.tx != PGS_TX_ABORTED) &&
        !(client->tx_mask & BIT(st->shard)) && client->begin_sql && st->op != PGS_STEP_SYNC) {
      /* The transaction reaches this shard: begin it here too. */
      pgs_server_inject_query(server, client->begin_sql, pgs_rule_internal(PGS_ON_ERROR_OWNER));
      if (client->tx_replay.len) {
        /* SET LOCAL ROLE and friends hold on this shard too. */
        pgs_buf_put_u8(&client->tx_replay, 0);
        /* One that failed where it first ran (the transaction is then
         * aborted) fails here too: this shard's part is aborted alike,
         * and the client's statements there get PostgreSQL's 25P02. */
        pgs_server_inject_query(server, (const char *)client->tx_replay.data, EXPECTED_ERROR);
        client->tx_replay.len--;
      }
      client->tx_mask |= BIT(st->shard);
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
    issue(client, server, st, type, p, total);
    client->step_next++;
  }
  return STEPS_DONE;
}

/* A shard of the COPY in flight has more queued than it takes. */
static bool copy_backlogged(const pgs_client_t *client) {
  for (int i = 0; i < client->nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s && (client->fan->slots & BIT(i)) && pgs_io_backlog(&s->io) > PGS_IO_HIGH_WATER)
      return true;
  }
  return false;
}

static bool flush_servers(pgs_client_t *client) {
  for (int i = 0; i < client->nslots; i++) {
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
  pgs_parse_msg_t parse;
  pgs_bind_msg_t bind;
  bool malformed = type == 'B' ? pgs_bind_read_head(p + 5, total - 5, &bind) != PGS_OK
                               : pgs_parse_read_head(p + 5, total - 5, &parse) != PGS_OK;
  if (malformed) return NULL; /* judged where it is planned */
  if (type == 'B')            /* a portal, and for a merge the statement and Bind copied */
    return client->routing ? pgs_account_mem_refuses(client, sizeof(pgs_portal_t) + 2 * total)
                           : NULL;
  const char *name = parse.name;
  if (!client->routing && parse.name_len == 0) return NULL; /* an unnamed statement is not kept */
  const uint8_t *body = parse.after_name;
  size_t len = parse.after_name_len;
  size_t cost = stmt_charge(client, name, len);
  pgs_client_stmt_t *old = pgs_strmap_get(&client->stmts, name);
  if (old && old->parse_body.len == len && !memcmp(old->parse_body.data, body, len)) return NULL;
  if (old) cost = cost > old->charged ? cost - old->charged : 0;
  return cost > 0 ? pgs_account_mem_refuses(client, cost) : NULL;
}

/* The message at in_pos is refused for going over the budget KEY: its
 * plan is one error (the rest of an extended unit is skipped to Sync). */
static void plan_over_budget(pgs_client_t *client, const char *key) {
  client->nsteps = client->step_next = 0;
  client->ex.sum = 0;
  client->ex.copies = false;
  client->ex.message_error = false;
  pgs_state_set_request(client, PGS_REQ_RUNNING);
  long long limit = strcmp(key, "max_client_memory") ? client->config->max_total_client_memory
                                                     : client->config->max_client_memory;
  add_error(client, PGS_SQLSTATE_OUT_OF_MEMORY,
            "out of memory: this statement would take what pgshard keeps for %s over %s "
            "(%lld bytes); close prepared statements the session no longer needs",
            strcmp(key, "max_client_memory") ? "all clients" : "this client", key, limit);
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
 * are kept only when the new map has their node at the same place; if not,
 * the client stays on its config until it holds none. */

bool pgs_request_between_transactions(const pgs_client_t *client) { return at_tx_boundary(client); }

static bool at_tx_boundary(const pgs_client_t *client) {
  if (pgs_state_planned(client) || pgs_exchange_in_tx(&client->ex) ||
      (client->ex.tx == PGS_TX_ABORTED) || client->tx_mask || client->tx_wrote ||
      client->unit_mask || (client->ex.unit == PGS_UNIT_SKIP_TO_SYNC) || client->fan ||
      client->ex.ready_pending || client->twopc.gid[0] || client->pending_closes ||
      client->state == PGS_CL_WAITING)
    return false;
  for (int i = 0; i < client->nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s && (!pgs_server_expect_idle(s) || s->txstatus != 'I')) return false;
  }
  return true;
}

/* Whether the servers CLIENT holds have their node at the same slot in DB
 * (of the worker's config) and the new map has no use for portals. */
static bool holds_movable(const pgs_client_t *client, const pgs_database_t *db) {
  bool holds = false;
  for (int i = 0; i < client->nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if (s == NULL) continue;
    holds = true;
    if (s->pool->gone || i >= 2 * db->nshards ||
        pgs_shardmap_find_shard(db, s->pool->shard) != i / 2)
      return false;
  }
  return !holds || client->portals.count == 0;
}

/* The index in DB of the shard that was OLD_INDEX in OLD, or -1. */
static int same_shard(const pgs_database_t *old, int old_index, const pgs_database_t *db) {
  if (old_index < 0 || old_index >= old->nshards) return -1;
  return pgs_shardmap_find_shard(db, old->shards[old_index].name);
}

/* A prepared statement of a client that did not route (its Parse was not
 * analysed), analysed for one that now does. False: it cannot be read. */
static bool analyse_stmt(pgs_client_t *client, pgs_client_stmt_t *stmt) {
  const pgs_buf_t *pb = &stmt->parse_body;
  pgs_parse_msg_t parse;
  if (pgs_parse_read_after_name(pb->data, pb->len, &parse) != PGS_OK) return false;
  int ntypes = parse.ntypes;
  stmt->lx = pgs_xmalloc(sizeof(*stmt->lx));
  pgs_lex_init(stmt->lx);
  if (pgs_lex(parse.query, parse.query_len, stmt->lx) != PGS_OK) return false;
  stmt->plan = get_plan(client, stmt->lx);
  if (stmt->plan->parse_failed) return false;
  stmt->ntypes = ntypes;
  stmt->type_oids = pgs_xcalloc((size_t)ntypes + 1, sizeof(uint32_t));
  for (int i = 0; i < ntypes; i++) stmt->type_oids[i] = pgs_parse_type_oid(&parse, i);
  return true;
}

static void reanalyse_stmts(pgs_client_t *client) {
  pgs_strmap_t *map = &client->stmts;
  for (size_t b = 0; b < map->nbuckets; b++) {
    for (pgs_strmap_entry_t *e = map->buckets[b], *next; e; e = next) {
      next = e->next;
      pgs_client_stmt_t *stmt = e->value;
      pgs_buf_free(&stmt->merge_body);
      stmt->merge_name[0] = '\0';
      if (stmt->lx) {
        pgs_plan_unref(stmt->plan);
        stmt->plan = get_plan(client, stmt->lx);
      } else if (client->routing && !analyse_stmt(client, stmt)) {
        /* Unreadable to the new map (the old one did not route): forgotten,
         * so a Bind of it gets 26000 rather than a guess. */
        pgs_strmap_remove(map, e->key);
        pgs_request_free_stmt(stmt);
      }
    }
  }
}

bool pgs_request_follow_config(pgs_client_t *client) {
  pgs_config_t *next = client->worker->config;
  if (client->config == next || !at_tx_boundary(client)) return true;
  const pgs_database_t *old = client->db;
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
  if (!holds_movable(client, db)) return true; /* its servers keep it on its map */
  int hint = client->hint_shard >= 0 ? same_shard(old, client->hint_shard, db) : -1;
  if (client->hint_shard >= 0 && hint < 0) {
    pgs_session_fail(connection, client, "22023",
                     "shard \"%s\" set by pgshard.shard is no longer in database \"%s\" (reload)",
                     old->shards[client->hint_shard].name, client->dbname);
    return false;
  }

  /* Per-shard state, by shard name. */
  int nslots = 2 * db->nshards;
  pgs_server_t **servers = pgs_xcalloc((size_t)nslots, sizeof(*servers));
  for (int i = 0; i < client->nslots; i++)
    if (client->servers[i]) servers[i] = client->servers[i]; /* same slot: holds_movable */
  uint64_t *commit_ms = pgs_xcalloc((size_t)db->nshards, sizeof(uint64_t));
  uint64_t *lsn = pgs_xcalloc((size_t)db->nshards, sizeof(uint64_t));
  for (int i = 0; i < old->nshards; i++) {
    int j = same_shard(old, i, db);
    if (j < 0) continue;
    commit_ms[j] = client->ryw_commit_ms[i];
    lsn[j] = client->ryw_lsn[i];
  }
  int last = same_shard(old, client->last_shard, db);
  free(client->servers);
  free(client->ryw_commit_ms);
  free(client->ryw_lsn);
  free(client->picked);
  free(client->pools);
  client->servers = servers;
  client->ryw_commit_ms = commit_ms;
  client->ryw_lsn = lsn;
  client->picked = pgs_xcalloc((size_t)db->nshards, sizeof(int8_t));
  client->nslots = nslots;
  client->pool_stride = 1;
  bool replicas = false;
  for (int i = 0; i < db->nshards; i++) {
    replicas |= db->shards[i].nreplicas > 0;
    if (db->shards[i].nreplicas + 1 > client->pool_stride)
      client->pool_stride = db->shards[i].nreplicas + 1;
  }
  client->pools = pgs_xcalloc((size_t)(db->nshards * client->pool_stride), sizeof(*client->pools));
  if (client->steps_cap < nslots + 4) {
    free(client->steps);
    client->steps_cap = nslots + 4;
    client->steps = pgs_xcalloc((size_t)client->steps_cap, sizeof(*client->steps));
  }
  client->hint_shard = hint;
  client->last_shard = last >= 0 ? last : 0;
  if (client->servers[client->cur >= 0 ? client->cur : 0] == NULL) client->cur = -1;
  pgs_strmap_free(&client->portals, free_portal);
  pgs_strmap_init(&client->portals);

  client->db = db;
  client->user = user;
  pgs_config_unref(client->config);
  client->config = pgs_config_ref(next);
  client->routing = db->nshards > 1 || client->tenant_text != NULL || replicas;
  if (client->tenant_text) {
    pgs_key_error_t err;
    if (!set_tenant(client, client->tenant_text, &err)) {
      pgs_session_fail(connection, client, err.sqlstate, "tenant \"%s\" after reload: %s",
                       client->tenant_text, err.message);
      return false;
    }
  }
  reanalyse_stmts(client);
  pgs_debug("client %s follows the reloaded config", client->peer);
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
  if (client->request_shard_cap < client->nslots) {
    free(client->request_shard_us);
    client->request_shard_cap = client->nslots;
    client->request_shard_us = pgs_xmalloc(2 * sizeof(uint64_t) * (size_t)client->nslots);
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
    const pgs_client_stmt_t *stmt = pgs_strmap_get(&client->stmts, bind.statement);
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
  PGS_ASSERT(!client->admin); /* the console's clients go to admin.c (client.c) */
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
    if (!pgs_state_planned(client) && client->fan && client->fan->copy_in &&
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
    if (!pgs_state_planned(client) && client->fan && type == 'S' && !client->fan->simple &&
        !client->fan->synced && __builtin_popcountll(client->unit_mask) > 1) {
      /* The Sync after a merged Execute goes out at once, to every server
       * of the unit (plan_sync): each one's ReadyForQuery follows its part,
       * so the last, the client's, follows the merged result. A failure of
       * the read has nothing left to skip. */
      client->fan->synced = true;
    } else if (!pgs_state_planned(client) && (client->fan || client->ex.ready_pending > 0)) {
      /* A merged read is in flight: the next message waits for it (it may
       * fail the unit, and the merge owns the servers' replies). So it
       * does for the ReadyForQuery of Syncs sent at once: until the last
       * one, a server may still be skipping to its Sync. */
      (void)others_drained(client, -1);
      pgs_state_set_request(client, PGS_REQ_HELD);
      blocked = true;
      break;
    }
    if (!pgs_state_planned(client)) {
      if ((client->ex.unit == PGS_UNIT_SKIP_TO_SYNC) && type != 'S') {
        io->in_pos += total; /* PostgreSQL skips to Sync after an error */
        continue;
      }
      if (type == 'S') pgs_state_set_unit(client, PGS_UNIT_CLEAN);
      if (client->config != client->worker->config && !pgs_request_follow_config(client)) return;
      if (pgs_paused(client->dbname) && at_tx_boundary(client)) {
        client->paused = true; /* RESUME reads it again (worker.c) */
        blocked = true;
        break;
      }
      if (client->request_start_us == 0) begin_request(client, type, p, total);
      if (type == 'Q' || type == 'E') COUNT(client, queries);
      const char *budget = type == 'P' || type == 'B' ? over_budget(client, type, p, total) : NULL;
      if (budget)
        plan_over_budget(client, budget);
      else
        plan_message(client, type, p, total);
      if (client->state == PGS_CL_CLOSING) return;
    }
    steps_result_t r = run_steps(client, type, p, total);
    if (r == STEPS_LEFT) return; /* waiting for a pool; pgs_client_on_server resumes */
    if (r == STEPS_BLOCKED) {
      pgs_state_set_request(client, PGS_REQ_DRAINING);
      blocked = true;
      break;
    }
    pgs_steps_clear(client);
    io->in_pos += total;
    if (client->tx_replay_next) {
      if (pgs_exchange_in_tx(&client->ex)) {
        /* On a line of its own: the statement may end in a -- comment. */
        pgs_buf_put(&client->tx_replay, client->tx_replay_next, strlen(client->tx_replay_next));
        pgs_buf_put(&client->tx_replay, "\n;", 2);
      }
      free(client->tx_replay_next);
      client->tx_replay_next = NULL;
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
}
