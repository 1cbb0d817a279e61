/*
 * planner.c — a client message and its session become steps (planner.h has
 * the plans message by message). Pure: what it needs of the running proxy
 * comes through the session's operations table, and what it decides is
 * data (steps, a fan to start, state changes through the setters below),
 * which request.c carries out.
 *
 * Layout: the session's states (setters checked against exchange.c's
 * tables), steps, statements and portals (gathered rows, prepared SETs),
 * placement over primaries and replicas, pgshard's own settings, routing
 * one statement, transactions, COPY, INSERT without a column list, SQL
 * cursors, then the plans: Query, Parse, Bind, Describe/Execute/Close of
 * portals, Sync, the pass-through pooler's, and a reload's move.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/log.h"
#include "pgshard/merge.h"
#include "pgshard/moves.h"
#include "pgshard/planner.h"
#include "pgshard/reserved.h"
#include "pgshard/shardmap.h"

#define BIT(i) ((uint64_t)1 << (i))

/* ---- states ---- */

static void engine_bug(const pgs_session_t *s, const char *what, const char *from, const char *to) {
  pgs_error("client %d: %s state %s -> %s is not a transition of the engine", s->id, what, from,
            to);
  if (getenv("PGSHARD_STRICT")) abort();
}

void pgs_session_set_request(pgs_session_t *s, pgs_req_state_t to) {
  pgs_req_state_t from = (pgs_req_state_t)s->ex.req;
  if (from == to) return;
  if (!pgs_exchange_set_req(&s->ex, to))
    engine_bug(s, "request", pgs_req_state_name(from), pgs_req_state_name(to));
  pgs_debug("client %d: request %s -> %s", s->id, pgs_req_state_name(from), pgs_req_state_name(to));
}

void pgs_session_set_unit(pgs_session_t *s, pgs_unit_state_t to) {
  pgs_unit_state_t from = (pgs_unit_state_t)s->ex.unit;
  if (from == to) return;
  if (!pgs_exchange_set_unit(&s->ex, to))
    engine_bug(s, "unit", pgs_unit_state_name(from), pgs_unit_state_name(to));
  pgs_debug("client %d: unit %s -> %s", s->id, pgs_unit_state_name(from), pgs_unit_state_name(to));
}

void pgs_session_set_tx(pgs_session_t *s, pgs_tx_state_t to) {
  pgs_tx_state_t from = (pgs_tx_state_t)s->ex.tx;
  if (from == to) return;
  if (!pgs_exchange_set_tx(&s->ex, to))
    engine_bug(s, "transaction", pgs_tx_state_name(from), pgs_tx_state_name(to));
  pgs_debug("client %d: transaction %s -> %s", s->id, pgs_tx_state_name(from),
            pgs_tx_state_name(to));
}

void pgs_session_tx_failed(pgs_session_t *s) {
  if (s->ex.tx == PGS_TX_OPEN) pgs_session_set_tx(s, PGS_TX_ABORTED);
}

bool pgs_session_resume(pgs_session_t *s) {
  switch (s->ex.req) {
  case PGS_REQ_DRAINING:
    pgs_session_set_request(s, PGS_REQ_RUNNING);
    return true;
  case PGS_REQ_HELD:
    pgs_session_set_request(s, PGS_REQ_IDLE);
    return true;
  default:
    return false;
  }
}

void pgs_session_message_failed(pgs_session_t *s) {
  s->ex.message_error = true;
  s->ex.request_failed = true;
}

/* ---- steps ---- */

pgs_step_t *pgs_steps_add(pgs_session_t *s, int slot, pgs_step_op_t op, pgs_placed_t placed) {
  if (s->steps == NULL) /* a message's first: the array lives until its steps are cleared */
    s->steps = pgs_xmalloc(sizeof(*s->steps) * (size_t)s->steps_cap);
  if (s->nsteps == s->steps_cap) { /* not expected: plans fit nslots + 4 */
    s->steps_cap *= 2;
    s->steps = pgs_xrealloc(s->steps, sizeof(*s->steps) * (size_t)s->steps_cap);
  }
  pgs_step_t *st = &s->steps[s->nsteps++];
  memset(st, 0, sizeof(*st));
  st->shard = (int16_t)slot;
  st->node = -1; /* the planner places it, or it is placed when it runs */
  st->op = (uint8_t)op;
  st->placed = (uint8_t)placed;
  return st;
}

void pgs_steps_reply(pgs_session_t *s, char reply, const char *tag) {
  pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_REPLY, PGS_PLACED_NONE);
  st->reply = reply;
  if (tag) st->text = pgs_xstrdup(tag);
}

void pgs_steps_error(pgs_session_t *s, const char *sqlstate, const char *fmt, ...) {
  char message[1024];
  va_list ap;
  int n = snprintf(message, sizeof(message), "pgshard: ");
  va_start(ap, fmt);
  vsnprintf(message + n, sizeof(message) - (size_t)n, fmt, ap);
  va_end(ap);
  pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_ERROR, PGS_PLACED_NONE);
  size_t mlen = strlen(message);
  st->text = pgs_xmalloc(6 + mlen + 1);
  memcpy(st->text, sqlstate, 5);
  st->text[5] = '\0';
  memcpy(st->text + 6, message, mlen + 1);
  pgs_session_tx_failed(s);
  s->ops->refused(s->ctx, sqlstate);
  s->ex.request_failed = true;
}

void pgs_steps_inject(pgs_session_t *s, int slot, const char *text, pgs_reply_rule_t rule,
                      bool extended) {
  pgs_step_t *st = pgs_steps_add(s, slot, PGS_STEP_INJECT, PGS_PLACED_INTERNAL);
  st->text = pgs_xstrdup(text);
  st->rule = rule;
  st->extended = extended;
  st->internal = st->always = true;
}

void pgs_session_rest(pgs_session_t *s) {
  if (s->nsteps > 0 || s->ex.req != PGS_REQ_IDLE) return;
  free(s->steps);
  s->steps = NULL;
  if (s->twopc && s->twopc->gid[0] == '\0' && s->ex.tx != PGS_TX_PREPARING &&
      s->ex.tx != PGS_TX_DECIDED) {
    free(s->twopc);
    s->twopc = NULL;
  }
}

void pgs_steps_clear(pgs_session_t *s) {
  for (int i = 0; i < s->nsteps; i++) {
    free(s->steps[i].text);
    s->steps[i].text = NULL;
    pgs_variant_t *v = s->steps[i].variant;
    if (v) {
      pgs_buf_free(&v->body);
      pgs_buf_free(&v->bind);
      free(v);
      s->steps[i].variant = NULL;
    }
  }
  s->nsteps = s->step_next = 0;
  if (s->fan_order) {
    pgs_plan_unref(s->fan_order->plan);
    free(s->fan_order->spec);
    free(s->fan_order);
    s->fan_order = NULL;
  }
  pgs_session_set_request(s, PGS_REQ_IDLE);
  /* A two-phase commit ends with its message's steps; one whose steps were
   * dropped (the session failed under it) is recovery's now. */
  if (s->ex.tx == PGS_TX_PREPARING || s->ex.tx == PGS_TX_DECIDED)
    pgs_session_set_tx(s, PGS_TX_NONE);
}

#define add_reply pgs_steps_reply
#define add_error pgs_steps_error

/* A new message's plan starts empty. */
static void begin_plan(pgs_session_t *s) {
  s->nsteps = s->step_next = 0;
  s->rewritten = false;
  s->message.len = 0;
  /* Not the sum of counts: the last part of the message before may still
   * be running (its Execute's Sync is planned meanwhile). It starts from 0
   * when the first part of a count is sent (request.c). */
  s->ex.copies = false;
  s->ex.message_error = false;
  s->held = false;
  pgs_session_set_request(s, PGS_REQ_RUNNING);
}

static void charge(pgs_session_t *s, size_t add, size_t sub) { s->ops->charge(s->ctx, add, sub); }

/* ---- the session ---- */

/* Reads go to replicas only if statements are analysed. */
static bool routes(const pgs_session_t *s, const pgs_database_t *db) {
  bool replicas = false;
  for (int i = 0; i < db->nshards; i++) replicas |= db->shards[i].nreplicas > 0;
  return db->nshards > 1 || s->tenant != NULL || s->tenant_text != NULL || replicas;
}

/* The per-shard arrays (ryw_commit_ms, ryw_lsn, picked) for NSHARDS, zeroed,
 * in one allocation that ryw_commit_ms owns. */
static void per_shard_alloc(pgs_session_t *s, int nshards) {
  size_t n = (size_t)nshards;
  uint64_t *block = pgs_xcalloc(1, n * (2 * sizeof(uint64_t) + sizeof(int8_t)));
  s->ryw_commit_ms = block;
  s->ryw_lsn = block + n;
  s->picked = (int8_t *)(block + 2 * n);
}

void pgs_session_init(pgs_session_t *s, const pgs_database_t *db) {
  s->db = db;
  s->nslots = 2 * db->nshards;
  per_shard_alloc(s, db->nshards);
  s->ryw_pref = -1;
  s->steps_cap = s->nslots + 4; /* allocated by the first step planned */
  s->cur = -1;
  s->tx_write_shard = -1;
  s->hint_shard = -1;
  pgs_strmap_init(&s->portals);
  pgs_strmap_init(&s->cursors);
  pgs_strmap_init(&s->portal_set_ops);
  s->routing = routes(s, db);
}

void pgs_session_free(pgs_session_t *s) {
  if (s->steps) pgs_steps_clear(s);
  free(s->steps);
  s->steps = NULL;
  free(s->ryw_commit_ms); /* and ryw_lsn, picked (per_shard_alloc) */
  free(s->twopc);
  s->twopc = NULL;
  pgs_strmap_free(&s->portals, pgs_session_free_portal);
  pgs_strmap_free(&s->cursors, pgs_session_free_portal);
  pgs_strmap_free(&s->portal_set_ops, pgs_set_ops_free);
  pgs_set_ops_free(s->unnamed_set_ops);
  s->unnamed_set_ops = NULL;
  if (s->lexed) pgs_lex_free(s->lexed);
  free(s->lexed);
  s->lexed = NULL;
  pgs_session_clear_tx_ops(s);
  free(s->tenant);
  free(s->tenant_text);
  free(s->startup_tenant);
  free(s->begin_sql);
  pgs_buf_free(&s->tx_replay);
  free(s->tx_replay_next);
  free(s->row_shard);
  pgs_buf_free(&s->message);
  free(s->param_data);
  free(s->param_len);
  free(s->param_fmt);
}

bool pgs_session_needs_twopc(const pgs_session_t *s, uint64_t written_shards) {
  return s->db->cross_shard_writes == PGS_XWRITE_2PC && __builtin_popcountll(written_shards) > 1;
}

/* Commit SLOTS (WRITTEN of them wrote) in two phases (the proxy's
 * coordinator runs them); TAG: the client sent COMMIT (answer "COMMIT"),
 * else the statement's own reply is out. */
static void twopc_begin(pgs_session_t *s, uint64_t slots, uint64_t written, bool simple, bool tag) {
  if (s->twopc == NULL) s->twopc = pgs_xcalloc(1, sizeof(*s->twopc));
  s->twopc->gid[0] = '\0'; /* named when it prepares */
  s->twopc->slots = slots;
  s->twopc->written = written;
  s->twopc->simple = simple;
  s->twopc->tag = tag;
  s->twopc->committed = false;
  pgs_session_set_tx(s, PGS_TX_PREPARING);
  pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_TWOPC, PGS_PLACED_NONE);
  st->phase = (uint8_t)PGS_2PC_PREPARE;
  st->always = true;
}

bool pgs_plan_streams(const pgs_plan_t *plan) {
  const pgs_merge_spec_t *spec = plan->merge;
  return plan->kind == PGS_STMT_COPY_TO || plan->kind == PGS_STMT_COPY_FROM || spec == NULL ||
         (!spec->grouped && !spec->distinct && spec->nkeys == 0 && spec->nhidden == 0);
}

/* The proxy runs PLAN on SLOTS at once (a fan), before the steps. */
static void order_fan(pgs_session_t *s, pgs_plan_t *plan, uint64_t slots, int64_t limit,
                      int64_t offset, bool simple) {
  PGS_ASSERT(s->fan_order == NULL);
  plan->refcount++;
  s->fan_order = pgs_xmalloc(sizeof(*s->fan_order));
  *s->fan_order = (pgs_fan_order_t){
      .plan = plan, .slots = slots, .limit = limit, .offset = offset, .simple = simple};
}

/* ---- statements and portals ---- */

/* Let PORTAL's gathered rows go. */
static void drop_gathered(pgs_portal_t *portal) {
  if (portal->owner && portal->rows_charged) charge(portal->owner, 0, portal->rows_charged);
  portal->charged -= portal->rows_charged;
  portal->rows_charged = 0;
  pgs_buf_free(&portal->rows);
  pgs_buf_free(&portal->head);
  portal->rows_pos = 0;
  portal->gathered = false;
}

void pgs_portal_gathered(pgs_portal_t *portal, pgs_buf_t *rows, pgs_buf_t *head) {
  drop_gathered(portal);
  portal->rows = *rows;
  pgs_buf_init(rows);
  if (head) {
    portal->head = *head;
    pgs_buf_init(head);
  }
  portal->gathered = true;
  portal->rows_charged = portal->rows.cap + portal->head.cap;
  portal->charged += portal->rows_charged;
  if (portal->owner) charge(portal->owner, portal->rows_charged, 0);
}

uint64_t pgs_portal_fetch(pgs_portal_t *portal, int64_t max_rows, pgs_fetch_t how, pgs_buf_t *out) {
  uint64_t n = 0;
  const pgs_buf_t *rows = &portal->rows;
  if (how == PGS_FETCH_FETCH || how == PGS_FETCH_DESCRIBE)
    pgs_buf_put(out, portal->head.data, portal->head.len);
  if (how == PGS_FETCH_DESCRIBE) return 0;
  while (portal->rows_pos + 5 <= rows->len && (max_rows <= 0 || n < (uint64_t)max_rows)) {
    size_t total = 1 + (size_t)pgs_get_u32(rows->data + portal->rows_pos + 1);
    if (how != PGS_FETCH_MOVE && how != PGS_FETCH_MOVE_PORTAL)
      pgs_buf_put(out, rows->data + portal->rows_pos, total);
    portal->rows_pos += total;
    n++;
  }
  if (how == PGS_FETCH_EXECUTE && max_rows > 0 && n == (uint64_t)max_rows) {
    pgs_msg_empty(out, 's'); /* PortalSuspended: PostgreSQL too says so at the limit */
    return n;
  }
  static const char *const verbs[] = {"SELECT", "FETCH", "FETCH", "MOVE", "", "MOVE"};
  char tag[48];
  snprintf(tag, sizeof(tag), "%s %llu", verbs[how], (unsigned long long)n);
  size_t start = pgs_msg_begin(out, 'C');
  pgs_buf_put_cstr(out, tag);
  pgs_msg_end(out, start);
  return n;
}

void pgs_session_free_portal(void *p) {
  pgs_portal_t *portal = p;
  if (portal->owner) charge(portal->owner, 0, portal->charged);
  pgs_buf_free(&portal->rows);
  pgs_buf_free(&portal->head);
  pgs_plan_unref(portal->cursor_plan);
  pgs_set_ops_free(portal->set_ops);
  free(portal->sql);
  pgs_plan_unref(portal->merge_plan);
  pgs_buf_free(&portal->merge_body);
  pgs_buf_free(&portal->merge_bind);
  free(portal);
}

void pgs_session_free_stmt(void *p) {
  pgs_client_stmt_t *stmt = p;
  if (stmt->owner) charge(stmt->owner, 0, stmt->charged);
  pgs_buf_free(&stmt->parse_body);
  pgs_buf_free(&stmt->merge_body);
  pgs_plan_unref(stmt->plan);
  if (stmt->lexed) {
    pgs_lex_free(stmt->lexed);
    free(stmt->lexed);
  }
  free(stmt->type_oids);
  pgs_set_ops_free(stmt->set_ops);
  free(stmt);
}

static void statement_server_name(const uint8_t *parse_body, size_t len, char out[24]) {
  uint64_t h = XXH3_64bits(parse_body, len);
  snprintf(out, 24, "pgs_%016llx", (unsigned long long)h);
}

/* The shards' variant of a statement that merges (merge.h): its text
 * rewritten, the client's parameter types kept. */
void pgs_stmt_merge_variant(pgs_client_stmt_t *stmt) {
  if (stmt->merge_body.len > 0) return;
  const pgs_buf_t *pb = &stmt->parse_body;
  size_t qlen = strnlen((const char *)pb->data, pb->len);
  pgs_merge_shard_sql(stmt->plan->merge, stmt->lexed, &stmt->merge_body);
  if (qlen < pb->len) pgs_buf_put(&stmt->merge_body, pb->data + qlen + 1, pb->len - qlen - 1);
  statement_server_name(stmt->merge_body.data, stmt->merge_body.len, stmt->merge_name);
}

/* A Bind's result format codes for the shards' variant: per-column codes
 * get a text code in front for each hidden column. Of a BIND of which only
 * the names were read, the rest goes as it came. */
void pgs_bind_put_rest(pgs_buf_t *b, const pgs_bind_msg_t *bind, int hidden) {
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
void pgs_set_ops_free(void *p) {
  pgs_set_ops_t *o = p;
  if (o == NULL) return;
  for (int i = 0; i < o->n; i++) free(o->ops[i].sql);
  free(o);
}

static pgs_set_ops_t *set_ops_copy(const pgs_set_ops_t *o) {
  if (o == NULL) return NULL;
  pgs_set_ops_t *c = pgs_xmalloc(sizeof(*c) + sizeof(c->ops[0]) * (size_t)o->n);
  c->n = o->n;
  for (int i = 0; i < o->n; i++) {
    c->ops[i] = o->ops[i];
    if (o->ops[i].sql) c->ops[i].sql = pgs_xstrdup(o->ops[i].sql);
  }
  return c;
}

void pgs_session_clear_tx_ops(pgs_session_t *s) {
  for (int i = 0; i < s->ntx_ops; i++) free(s->tx_ops[i].sql);
  free(s->tx_ops);
  s->tx_ops = NULL;
  s->ntx_ops = s->tx_ops_cap = 0;
}

/* Room for one more SET/RESET awaiting commit, NULL when the session holds
 * PGS_SESSION_MAX_OPS (more than it can replay). */
static pgs_set_op_t *tx_op_slot(pgs_session_t *s) {
  if (s->ntx_ops == PGS_SESSION_MAX_OPS) return NULL;
  if (s->ntx_ops == s->tx_ops_cap) {
    int cap = s->tx_ops_cap ? 2 * s->tx_ops_cap : 2;
    if (cap > PGS_SESSION_MAX_OPS) cap = PGS_SESSION_MAX_OPS;
    s->tx_ops = pgs_xrealloc(s->tx_ops, (size_t)cap * sizeof(*s->tx_ops));
    s->tx_ops_cap = cap;
  }
  return &s->tx_ops[s->ntx_ops++];
}

/* A prepared SET runs: the session takes its statements, as a simple
 * Query's (awaiting the end of the transaction in tx_ops). */
static void set_ops_apply(pgs_session_t *s, const pgs_set_ops_t *o) {
  for (int i = 0; o && i < o->n; i++) {
    if (pgs_set_op_is_listen(o->ops[i].kind)) continue; /* not a setting */
    pgs_set_op_t *op = tx_op_slot(s);
    if (op == NULL) {
      s->pinned = true; /* more than it can replay: the server stays */
      return;
    }
    *op = o->ops[i];
    if (op->sql) op->sql = pgs_xstrdup(op->sql);
  }
}

/* Track what a statement does to session state: pinned for state that
 * cannot be replayed; its SET/RESET statements taken now (SIMPLE: a
 * Query, sent now) or, prepared, into *KEEP to be taken when it runs
 * (KEEP NULL: pinned, pgshard cannot see when). */
static void check_session_effects(pgs_session_t *s, const pgs_session_effects_t *fxc, bool simple,
                                  pgs_set_ops_t **keep) {
  pgs_session_effects_t *fx = (pgs_session_effects_t *)fxc;
  if (fx->flags & PGS_SESSION_PIN) {
    if (!s->pinned)
      pgs_info("client %d (%s@%s): session state, pinned to its server", s->id, s->user, s->peer);
    s->pinned = true;
  }
  if (fx->flags & PGS_SESSION_TEMP) s->temp = true;
  if (!simple && fx->nops > 0) {
    if (keep == NULL) {
      s->pinned = true;
      return;
    }
    pgs_set_ops_t *o = pgs_xmalloc(sizeof(*o) + sizeof(o->ops[0]) * (size_t)fx->nops);
    o->n = fx->nops;
    for (int i = 0; i < fx->nops; i++) {
      o->ops[i] = fx->ops[i];
      fx->ops[i].sql = NULL;
    }
    pgs_set_ops_free(*keep);
    *keep = o;
    return;
  }
  for (int i = 0; i < fx->nops; i++) {
    if (pgs_set_op_is_listen(fx->ops[i].kind)) continue; /* not a setting */
    pgs_set_op_t *op = tx_op_slot(s);
    if (op == NULL) {
      s->pinned = true;
      break;
    }
    *op = fx->ops[i];
    fx->ops[i].sql = NULL;
  }
}

/* What remembering a statement NAME with a Parse body of LEN bytes costs
 * the client's memory (max_client_memory): the body, and when routing its
 * analysis (the lexed text and literals, the shards' variant), estimated
 * from the text's size. */
static size_t stmt_charge(const pgs_session_t *s, const char *name, size_t len) {
  size_t bytes = sizeof(pgs_client_stmt_t) + sizeof(pgs_strmap_entry_t) + strlen(name) + 1 + len;
  if (s->routing) bytes += sizeof(pgs_lexed_t) + 3 * len;
  return bytes;
}

/* Remember a Parse (BODY after the statement name) as NAME. Returns the
 * statement, or NULL when the client has too many. */
static pgs_client_stmt_t *remember_parse(pgs_session_t *s, const char *name, const uint8_t *body,
                                         size_t len) {
  pgs_client_stmt_t *old = pgs_strmap_get(&s->stmts, name);
  if (old && old->parse_body.len == len && !memcmp(old->parse_body.data, body, len))
    return old; /* the same statement again (an unnamed one, typically) */
  if (old == NULL && s->stmts.count >= PGS_CLIENT_MAX_STATEMENTS) return NULL;
  pgs_client_stmt_t *stmt = pgs_xcalloc(1, sizeof(*stmt));
  stmt->owner = s;
  stmt->charged = stmt_charge(s, name, len);
  charge(s, stmt->charged, 0);
  pgs_buf_put(&stmt->parse_body, body, len);
  statement_server_name(stmt->parse_body.data, stmt->parse_body.len, stmt->server_name);
  old = pgs_strmap_put(&s->stmts, name, stmt);
  if (old) pgs_session_free_stmt(old);
  return stmt;
}

/* ---- steps ---- */

/* A step for SHARD (a slot; -1: no server), taken from the node the slot
 * is placed on now. */
static pgs_step_t *add_step(pgs_session_t *s, int shard, pgs_step_op_t op, pgs_placed_t placed) {
  pgs_step_t *st = pgs_steps_add(s, shard, op, placed);
  if (shard >= 0) st->node = (int8_t)pgs_session_slot_node(s, shard);
  return st;
}

/* The same message (or per-shard TEXTS[shard] for SPLIT) on every shard of
 * MASK in turn, replies merged: the first part's descriptions, every
 * part's rows, one CommandComplete counting all, one ReadyForQuery. */
static void add_fanout(pgs_session_t *s, uint64_t mask, pgs_step_op_t op, char **texts, bool counts,
                       pgs_placed_t placed) {
  int n = __builtin_popcountll(mask), k = 0;
  for (int i = 0; i < s->nslots; i++) {
    if (!(mask & BIT(i))) continue;
    pgs_step_t *st = add_step(s, i, op, placed);
    if (texts) {
      st->text = texts[i];
      texts[i] = NULL;
    }
    if (n > 1) {
      if (k > 0) st->rule.done = PGS_ON_DONE_SWALLOW;
      if (k > 0 && s->ex.copies) st->rule.rows = PGS_ON_ROWS_SWALLOW; /* the same again */
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
static void add_fan_steps(pgs_session_t *s, uint64_t slots, pgs_step_op_t op, const char *text) {
  bool first = true;
  bool streams = pgs_plan_streams(s->fan_order->plan) && s->fan_order->portal == NULL;
  for (int i = 0; i < s->nslots; i++) {
    if (!(slots & BIT(i))) continue;
    pgs_step_t *st = add_step(s, i, op, PGS_PLACED_ROUTE);
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
static const pgs_shard_health_t *shard_health(const pgs_session_t *s, int shard) {
  return s->ops->health(s->ctx, shard);
}

/* The node writes to SHARD go to (0: its configured primary), or -1. */
static int writer_node(const pgs_session_t *s, int shard) {
  const pgs_shard_health_t *h = shard_health(s, shard);
  if (h == NULL) return 0;
  if (h->writer < 0 || !h->nodes[h->writer].up) return -1;
  return h->writer;
}

/* Whether PLAN may read from a replica (DESIGN.md, "Routing semantics"). */
static bool replica_eligible(const pgs_session_t *s, const pgs_plan_t *plan) {
  if (plan == NULL || plan->kind != PGS_STMT_READ || s->pinned || s->route_pref == 1) return false;
  if (pgs_exchange_in_tx(&s->ex) && !s->ex.tx_read_only) return false;
  return true;
}

/* A readable replica of SHARD that has replayed what this session must
 * see, round robin. -1: read-your-writes wants the primary; -2: no replica
 * is within the lag bounds (lag_fallback decides). */
static int pick_replica(pgs_session_t *s, int shard, bool advance) {
  const pgs_shard_health_t *h = shard_health(s, shard);
  if (h == NULL) return -1;
  uint64_t need = 0;
  pgs_ryw_t ryw = s->ryw_pref >= 0 ? (pgs_ryw_t)s->ryw_pref : s->db->read_your_writes;
  if (s->route_pref == 2) ryw = PGS_RYW_OFF; /* SET pgshard.route = replica */
  switch (ryw) {
  case PGS_RYW_OFF:
    break;
  case PGS_RYW_SESSION:
    if (s->wrote_ever) return -1;
    break;
  case PGS_RYW_WINDOW:
    if (s->wrote_ever && s->ops->now_ms() - s->last_write_ms < (uint64_t)s->db->ryw_window_ms)
      return -1;
    break;
  case PGS_RYW_LSN:
    if (s->ryw_commit_ms[shard]) {
      /* The first primary LSN sampled after the commit is at or past it. */
      const pgs_lsn_sample_t *after = pgs_lsn_history_after(&h->history, s->ryw_commit_ms[shard]);
      if (after == NULL) return -1;
      s->ryw_lsn[shard] = after->lsn;
      s->ryw_commit_ms[shard] = 0;
    }
    need = s->ryw_lsn[shard];
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
  /* A look ahead (a Parse placed by its Bind) only peeks at the turn; the
   * Parse takes it once placed there (plan_parse). */
  if (ncand == 0) return behind ? -1 : -2;
  uint32_t turn = s->ops->turn(s->ctx, advance);
  return candidates[turn % (uint32_t)ncand];
}

/* Whether this transaction or unit already reads on a replica of SHARD
 * (it stays there). */
static bool replica_kept(const pgs_session_t *s, int shard) {
  return (s->linked & BIT(2 * shard + 1)) && ((s->tx_mask | s->unit_mask) & BIT(2 * shard + 1));
}

/* The slot a statement of PLAN on SHARD runs on — the shard's writer, or a
 * replica — with the node in s->picked[shard] for a replica. -1 with
 * an error step when it cannot run anywhere. */
static int place_quietly(pgs_session_t *s, int shard, const pgs_plan_t *plan, bool quiet) {
  const pgs_database_t *db = s->db;
  if (db->shards[shard].nreplicas > 0 && replica_eligible(s, plan)) {
    if (replica_kept(s, shard)) return 2 * shard + 1;
    int r = pick_replica(s, shard, !quiet);
    if (r >= 0) {
      s->picked[shard] = (int8_t)r;
      return 2 * shard + 1;
    }
    if (r == -2 && db->lag_fallback == PGS_FALLBACK_ERROR) {
      if (quiet) return -1;
      add_error(s, "55000",
                "no replica of shard %s is within max_replica_lag_ms = %d and "
                "max_replica_lag_bytes = %lld (lag_fallback = error)",
                db->shards[shard].name, db->max_replica_lag_ms,
                (long long)db->max_replica_lag_bytes);
      return -1;
    }
  }
  if (writer_node(s, shard) < 0) {
    if (quiet) return -1;
    add_error(s, PGS_SQLSTATE_CONNECTION_FAILURE,
              "shard %s has no primary accepting writes (its servers are down or in recovery)",
              db->shards[shard].name);
    return -1;
  }
  if (!quiet && plan && plan->kind != PGS_STMT_READ && plan->kind != PGS_STMT_SESSION &&
      plan->kind != PGS_STMT_BEGIN)
    s->tx_wrote |= BIT(shard);
  return 2 * shard;
}

static int place(pgs_session_t *s, int shard, const pgs_plan_t *plan) {
  return place_quietly(s, shard, plan, false);
}

/* The node a step on SLOT takes a server from. */
int pgs_session_slot_node(const pgs_session_t *s, int slot) {
  if (slot & 1) return s->picked[slot / 2];
  int w = writer_node(s, slot / 2);
  return w < 0 ? 0 : w;
}

/* Where a statement that may run anywhere goes (a slot). */
static int default_slot(const pgs_session_t *s) {
  if (s->cur >= 0) return s->cur;
  if (s->tx_mask) return first_bit(s->tx_mask);
  if (s->hint_shard >= 0) return 2 * s->hint_shard;
  return 2 * s->last_shard;
}

/* Slots that hold session state right now (SET goes to all of them). */
static uint64_t session_mask(const pgs_session_t *s) {
  uint64_t mask = s->tx_mask;
  for (int i = 0; i < s->nslots; i++) mask |= s->linked;
  return mask ? mask : BIT(default_slot(s));
}

/* Writer slots of a mask of shards. */
static uint64_t writer_slots(uint64_t shards) {
  uint64_t mask = 0;
  for (int i = 0; i < PGS_MAX_SHARDS; i++)
    if (shards & BIT(i)) mask |= BIT(2 * i);
  return mask;
}

int pgs_session_login_slot(pgs_session_t *s, int *node) {
  /* Any server of shard 0 can tell the parameters: the writer, else a
   * replica that is up (a shard without a primary still serves reads). */
  int w = writer_node(s, 0);
  const pgs_shard_health_t *h = shard_health(s, 0);
  if (w >= 0 || h == NULL) {
    *node = w >= 0 ? w : 0;
    return 0;
  }
  for (int i = 0; i < h->nnodes; i++) {
    if (h->nodes[i].up) {
      *node = i;
      s->picked[0] = (int8_t)i;
      return 1;
    }
  }
  *node = 0;
  return 0;
}

void pgs_session_tx_done(pgs_session_t *s, uint64_t now) {
  if (s->tx_wrote == 0 || s->ryw_commit_ms == NULL) return;
  for (int i = 0; i < s->nslots / 2; i++)
    if (s->tx_wrote & BIT(i)) s->ryw_commit_ms[i] = now;
  s->wrote_ever = true;
  s->last_write_ms = now;
  s->tx_wrote = 0;
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

void pgs_session_on_parameter_status(pgs_session_t *s, const char *name, const char *value) {
  if (!strcasecmp(name, "standard_conforming_strings")) s->scs_off = !pgs_session_bool_on(value);
}

/* Whether FX would turn standard_conforming_strings off (SET or SET LOCAL). */
static bool sets_scs_off(const pgs_session_effects_t *fx) {
  return (fx->flags & PGS_SESSION_STRINGS_OFF) != 0;
}

/* Whether code the statement runs (a function call, DO) names
 * standard_conforming_strings in a string: set_config and DO bodies. */
static bool code_names_scs(const pgs_plan_t *plan, const pgs_lexed_t *lexed) {
  if (!plan->runs_code || lexed == NULL) return false;
  for (int i = 0; i < lexed->nliterals; i++) {
    const pgs_literal_t *lit = &lexed->literals[i];
    const char *v = lexed->values + lit->offset;
    if (lit->is_string && lit->len >= 27 && strcasestr(v, "standard_conforming_strings"))
      return true;
  }
  return false;
}

/* ---- pgshard's own settings ---- */

/* TEXT typed as DB's tenant key, which DB's map places; NULL with *ERR
 * set when it is not one. */
static pgs_key_t *typed_tenant(const pgs_database_t *db, const char *text, pgs_key_error_t *err) {
  pgs_key_t *key = pgs_xmalloc(sizeof(*key));
  if (pgs_key_from_text(db->shardmap.tenant_type, text, strlen(text), key, err) != PGS_OK ||
      pgs_route_tenant_shard(db, key, err) < 0) {
    free(key);
    return NULL;
  }
  return key;
}

/* KEY (typed from TEXT) is the session's tenant now. */
static void take_tenant(pgs_session_t *s, pgs_key_t *key, const char *text) {
  free(s->tenant);
  s->tenant = key;
  if (s->tenant_text != text) {
    free(s->tenant_text);
    s->tenant_text = pgs_xstrdup(text);
  }
  s->routing = true;
}

static bool set_tenant(pgs_session_t *s, const char *text, pgs_key_error_t *err) {
  pgs_key_t *key = typed_tenant(s->db, text, err);
  if (key) take_tenant(s, key, text);
  return key != NULL;
}

bool pgs_session_startup_tenant(pgs_session_t *s, pgs_key_error_t *err) {
  if (s->startup_tenant == NULL) return true;
  return set_tenant(s, s->startup_tenant, err);
}

/* SET/RESET pgshard.NAME. Returns false with an error step added. */
static bool apply_pgshard_op(pgs_session_t *s, const pgs_set_op_t *op) {
  const char *name = op->name + 8;
  if (!strcasecmp(name, "tenant") && s->startup_tenant != NULL) {
    /* The tenant a connection was opened for is its identity, not a
     * preference: it cannot be changed or dropped. */
    add_error(s, "42501", "this session's tenant was fixed when it connected (%s)",
              "-c pgshard.tenant");
    return false;
  }
  if (op->kind == PGS_SET_OP_RESET) {
    if (!strcasecmp(name, "shard"))
      s->hint_shard = -1;
    else if (!strcasecmp(name, "route"))
      s->route_pref = 0;
    else if (!strcasecmp(name, "read_your_writes"))
      s->ryw_pref = -1;
    else if (!strcasecmp(name, "tenant")) {
      free(s->tenant);
      s->tenant = NULL;
      free(s->tenant_text);
      s->tenant_text = NULL;
    }
    return true;
  }
  if (!op->has_value) {
    add_error(s, "22023", "SET %s takes one value", op->name);
    return false;
  }
  if (!strcasecmp(name, "shard")) {
    int shard = pgs_shardmap_find_shard(s->db, op->value);
    if (shard < 0 && strcasecmp(op->value, "default") != 0 && op->value[0]) {
      add_error(s, "22023", "unknown shard \"%s\" in database \"%s\"", op->value, s->dbname);
      return false;
    }
    s->hint_shard = shard;
    return true;
  }
  if (!strcasecmp(name, "tenant")) {
    pgs_key_error_t err;
    if (s->scs_off) {
      add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
      return false;
    }
    if (!set_tenant(s, op->value, &err)) {
      add_error(s, err.sqlstate, "tenant \"%s\": %s", op->value, err.message);
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
        s->route_pref = i;
      else
        s->ryw_pref = i;
      return true;
    }
    add_error(s, "22023", "invalid value for %s: \"%s\"", op->name, op->value);
    return false;
  }
  add_error(s, "42704", "unrecognized configuration parameter \"%s\"", op->name);
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
    if (!pgs_set_op_is_listen(fx->ops[i].kind) && !strncasecmp(fx->ops[i].name, "pgshard.", 8)) n++;
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

/* The request runs LEXED's statement (the first one counts): SHOW QUERIES
 * keys it by its normalised text. */
static void note_query(pgs_session_t *s, const pgs_lexed_t *lexed) {
  s->ops->note_query(s->ctx, lexed);
}

static pgs_plan_t *get_plan(pgs_session_t *s, const pgs_lexed_t *lexed) {
  return s->ops->analyze(s->ctx, lexed);
}

/* Whether a resharding copies rows into a shard the statement reaches
 * without routing them by key (moves.h): then refused, the error added. */
static bool moving_rows(pgs_session_t *s, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                        const pgs_route_t *rt) {
  int n = 0;
  const pgs_move_t *moves = s->ops->moves ? s->ops->moves(s->ctx, &n) : NULL;
  char message[512];
  if (moves == NULL ||
      !pgs_moves_refuse(moves, n, s->db, plan, lexed, rt, message, sizeof(message)))
    return false;
  add_error(s, "55000", "%s", message);
  return true;
}

static pgs_key_t *typed_tenant(const pgs_database_t *db, const char *text, pgs_key_error_t *err);
static int same_shard(const pgs_database_t *old, int old_index, const pgs_database_t *db);

/* Whether the statement (PLAN of LEXED with PARAMS, routed RT with SESSION in
 * the session's database) runs on the same shards, by name, in NEXT: its
 * hint and tenant taken there by name and value, PLAN analysed again
 * there. A COPY into a sharded table splits its rows later: the table must
 * route alike. */
static bool same_shards_in(pgs_session_t *s, const pgs_database_t *next, const pgs_plan_t *plan,
                           const pgs_lexed_t *lexed, const pgs_param_values_t *params,
                           const pgs_route_session_t *session, const pgs_route_t *rt) {
  pgs_route_session_t there = {.hint_shard = -1, .tenant = NULL};
  if (session->hint_shard >= 0 &&
      (there.hint_shard = same_shard(s->db, session->hint_shard, next)) < 0)
    return false;
  pgs_key_t *tenant = NULL;
  if (session->tenant) {
    pgs_key_error_t err;
    tenant = s->tenant_text ? typed_tenant(next, s->tenant_text, &err) : NULL;
    if (tenant == NULL) return false;
    there.tenant = tenant;
  }
  pgs_plan_t *other = pgs_analyze(next, lexed);
  int *rows = other->nrows ? pgs_xcalloc((size_t)other->nrows, sizeof(int)) : NULL;
  pgs_route_t there_rt = {.row_shard = rows};
  pgs_route_plan(next, other, lexed, params, &there, &there_rt);
  bool same =
      other->nrows == plan->nrows && pgs_moves_same_route(s->db, rt, next, &there_rt, plan->nrows);
  if (same && plan->kind == PGS_STMT_COPY_FROM && plan->table)
    same = pgs_moves_same_table(s->db, plan->table, next,
                                pgs_shardmap_find_table(next, plan->table->name));
  free(rows);
  free(tenant);
  pgs_plan_unref(other);
  return same;
}

/* RESHARD HOLD (hold.h): the statement waits when it would run on other
 * shards under the new map. No error, no step: s->held, and the proxy
 * plans the message again once the hold ends. */
static bool held_for_cutover(pgs_session_t *s, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                             const pgs_param_values_t *params, const pgs_route_session_t *session,
                             const pgs_route_t *rt) {
  const pgs_database_t *next = s->ops->hold ? s->ops->hold(s->ctx) : NULL;
  if (next == NULL || lexed == NULL) return false;
  s->held = !same_shards_in(s, next, plan, lexed, params, session, rt);
  return s->held;
}

/* Route PLAN; REFUSE adds the error. Returns false when refused. */
static bool route(pgs_session_t *s, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                  const pgs_param_values_t *params, pgs_route_t *out) {
  pgs_route_session_t session = {.hint_shard = s->hint_shard, .tenant = s->tenant};
  if (s->scs_off || code_names_scs(plan, lexed)) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
    return false;
  }
  if (lexed && lexed->hint_shard[0]) {
    session.hint_shard = pgs_shardmap_find_shard(s->db, lexed->hint_shard);
    if (session.hint_shard < 0) {
      add_error(s, "22023", "unknown shard \"%s\" in hint", lexed->hint_shard);
      return false;
    }
  }
  if (plan->nrows > s->row_shard_cap) {
    s->row_shard_cap = plan->nrows;
    s->row_shard = pgs_xrealloc(s->row_shard, sizeof(int) * (size_t)plan->nrows);
  }
  out->row_shard = s->row_shard;
  pgs_route_plan(s->db, plan, lexed, params, &session, out);
  if (out->kind == PGS_ROUTE_REFUSE) {
    add_error(s, out->sqlstate, "%s", out->message);
    return false;
  }
  if (moving_rows(s, plan, lexed, out) || held_for_cutover(s, plan, lexed, params, &session, out))
    return false;
  if (out->kind == PGS_ROUTE_ONE) {
    /* One transaction writes on one shard unless the policy allows more. */
    if (pgs_exchange_in_tx(&s->ex) && plan->kind == PGS_STMT_WRITE && plan->table) {
      if (s->tx_write_shard >= 0 && s->tx_write_shard != out->shard &&
          s->db->cross_shard_writes == PGS_XWRITE_DENY) {
        add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "this transaction wrote on shard %s; writing on shard %s too would make it "
                  "cross-shard (cross_shard_writes = deny)",
                  s->db->shards[s->tx_write_shard].name, s->db->shards[out->shard].name);
        return false;
      }
      s->tx_write_shard = out->shard;
    }
    s->last_shard = out->shard;
  }
  return true;
}

/* The slots a routed statement runs on: its shard's writer or a replica
 * (ONE, ANY), every writer (FANOUT). 0 with an error step added when it
 * cannot run. */
static uint64_t placed_mask_quietly(pgs_session_t *s, const pgs_route_t *rt, const pgs_plan_t *plan,
                                    bool quiet) {
  if (rt->kind == PGS_ROUTE_FANOUT) {
    for (int i = 0; i < s->nslots / 2; i++)
      if ((rt->shards & BIT(i)) && place_quietly(s, i, plan, quiet) < 0) return 0;
    return writer_slots(rt->shards);
  }
  if (rt->kind != PGS_ROUTE_ONE && rt->kind != PGS_ROUTE_ANY) return 0;
  if (rt->kind == PGS_ROUTE_ANY && s->cur >= 0 &&
      (plan->kind != PGS_STMT_READ || pgs_exchange_in_tx(&s->ex) || (s->cur & 1)))
    return BIT(s->cur); /* no shard needed: where the session is */
  if (rt->kind == PGS_ROUTE_ANY && s->tx_mask) return BIT(first_bit(s->tx_mask));
  int shard = rt->kind == PGS_ROUTE_ONE ? rt->shard : default_slot(s) / 2;
  int slot = place_quietly(s, shard, plan, quiet);
  return slot < 0 ? 0 : BIT(slot);
}

static uint64_t placed_mask(pgs_session_t *s, const pgs_route_t *rt, const pgs_plan_t *plan) {
  return placed_mask_quietly(s, rt, plan, false);
}

static void add_inject(pgs_session_t *s, int slot, const char *text, pgs_reply_rule_t rule,
                       bool extended) {
  pgs_steps_inject(s, slot, text, rule, extended);
  s->steps[s->nsteps - 1].node = (int8_t)pgs_session_slot_node(s, slot);
}

/* COMMIT or ROLLBACK (KIND) of the transaction pgshard began: to every
 * shard it touched, or answered here when it touched none. */
/* The transaction ends (ROLLBACK: in failure): its cursors close, but those
 * WITH HOLD it committed. */
static void end_cursors(pgs_session_t *s, bool rollback) {
  pgs_strmap_t *map = &s->cursors;
  for (size_t b = 0; b < map->nbuckets; b++) {
    for (pgs_strmap_entry_t *e = map->buckets[b], *next; e; e = next) {
      next = e->next;
      pgs_portal_t *cursor = e->value;
      if (cursor->hold && !(rollback && cursor->in_tx)) {
        cursor->in_tx = false;
        continue;
      }
      pgs_strmap_remove(map, e->key);
      pgs_session_free_portal(cursor);
    }
  }
}

void pgs_session_drop_cursor(pgs_session_t *s, pgs_portal_t *cursor) {
  pgs_strmap_t *map = &s->cursors;
  for (size_t b = 0; b < map->nbuckets; b++) {
    for (pgs_strmap_entry_t *e = map->buckets[b]; e; e = e->next) {
      if (e->value != cursor) continue;
      pgs_strmap_remove(map, e->key);
      pgs_session_free_portal(cursor);
      return;
    }
  }
}

static void plan_tx_end(pgs_session_t *s, pgs_stmt_kind_t kind, const char *sql, bool simple) {
  bool rollback = kind == PGS_STMT_ROLLBACK || (s->ex.tx == PGS_TX_ABORTED);
  const char *tag = rollback ? "ROLLBACK" : "COMMIT";
  uint64_t mask = s->tx_mask;
  end_cursors(s, rollback);
  pgs_session_set_tx(s, PGS_TX_NONE);
  s->tx_mask = 0;
  s->tx_write_shard = -1;
  free(s->begin_sql);
  s->begin_sql = NULL;
  s->tx_replay.len = 0;
  if (mask == 0) {
    add_reply(s, 'C', tag);
    if (simple) add_reply(s, 'Z', NULL);
    return;
  }
  if (!rollback && pgs_session_needs_twopc(s, s->tx_wrote)) {
    twopc_begin(s, mask, mask & writer_slots(s->tx_wrote), simple, true);
    return;
  }
  int first = s->nsteps;
  add_fanout(s, mask, simple ? PGS_STEP_QUERY : PGS_STEP_EXEC_SQL, NULL, true, PGS_PLACED_SESSION);
  for (int i = first; i < s->nsteps; i++) {
    s->steps[i].text = pgs_xstrdup(rollback ? "ROLLBACK" : sql);
    s->steps[i].always = true; /* every shard ends, whatever the others said */
  }
}

static void plan_begin(pgs_session_t *s, const char *sql, bool read_only, bool simple) {
  if (!pgs_exchange_in_tx(&s->ex)) {
    pgs_session_set_tx(s, PGS_TX_OPEN);
    s->ex.tx_read_only = read_only;
    s->tx_mask = 0;
    s->tx_write_shard = -1;
    free(s->begin_sql);
    s->begin_sql = pgs_xstrdup(sql);
    s->tx_replay.len = 0;
  }
  add_reply(s, 'C', "BEGIN");
  if (simple) add_reply(s, 'Z', NULL);
}

/* Steps from FIRST on run a statement that drops the server's prepared
 * statements: each server forgets its list when it is sent. */
static void mark_drops_prepared(pgs_session_t *s, int first) {
  for (int i = first; i < s->nsteps; i++)
    if (s->steps[i].shard >= 0) s->steps[i].forget_prepared = true;
}

/* The slots a merged read runs on: a server of each shard (replicas when
 * they qualify). 0 with an error step added when a shard cannot serve. */
static uint64_t fan_slots(pgs_session_t *s, const pgs_route_t *rt, const pgs_plan_t *plan) {
  uint64_t slots = 0;
  for (int i = 0; i < s->nslots / 2; i++) {
    if (!(rt->shards & BIT(i))) continue;
    int slot = place(s, i, plan);
    if (slot < 0) return 0;
    slots |= BIT(slot);
  }
  return slots;
}

/* A simple Query routed MERGE: every shard at once, rows merged. */
static void plan_fan_query(pgs_session_t *s, const pgs_route_t *rt, pgs_plan_t *plan,
                           const pgs_lexed_t *lexed) {
  int64_t limit, offset;
  pgs_value_error_t err;
  uint64_t slots = fan_slots(s, rt, plan);
  if (slots == 0) {
    add_reply(s, 'Z', NULL);
    return;
  }
  if (pgs_merge_limits(plan->merge, lexed, NULL, &limit, &offset, &err) != PGS_OK) {
    add_error(s, err.sqlstate, "%s", err.message);
    add_reply(s, 'Z', NULL);
    return;
  }
  pgs_buf_t text;
  pgs_buf_init(&text);
  if (plan->merge->rewrite) pgs_merge_shard_sql(plan->merge, lexed, &text);
  order_fan(s, plan, slots, limit, offset, true);
  add_fan_steps(s, slots, text.len ? PGS_STEP_QUERY : PGS_STEP_FORWARD,
                text.len ? (const char *)text.data : NULL);
  pgs_buf_free(&text);
}

/* A write outside a transaction that spans SHARDS: atomic under 2pc. The
 * caller plans its steps between the two calls: BEGIN on each slot first,
 * then the statement, with no ReadyForQuery of its own, then the commit. */
static bool implicit_twopc(const pgs_session_t *s, const pgs_plan_t *plan, uint64_t shards) {
  return !pgs_exchange_in_tx(&s->ex) && plan->kind == PGS_STMT_WRITE &&
         pgs_session_needs_twopc(s, shards);
}

static int implicit_begin(pgs_session_t *s, uint64_t slots) {
  for (int i = 0; i < s->nslots; i++)
    if (slots & BIT(i)) add_inject(s, i, "BEGIN", pgs_rule_internal(PGS_ON_ERROR_OWNER), false);
  return s->nsteps;
}

static void implicit_twopc_commit(pgs_session_t *s, uint64_t slots, int first) {
  for (int i = first; i < s->nsteps; i++) s->steps[i].rule.ready = PGS_ON_READY_DROP;
  twopc_begin(s, slots, slots, true, false);
}

/* COPY ... FROM STDIN routed to several shards (a sharded table without a
 * hint, or a reference table): on each shard's writer at once, rows split
 * by key (fanout.c). */
static void plan_copy_in(pgs_session_t *s, const pgs_route_t *rt, pgs_plan_t *plan,
                         const pgs_lexed_t *lexed) {
  pgs_copy_spec_t spec;
  pgs_key_error_t err;
  if (plan->copy == NULL || pgs_copy_spec_resolve(plan->copy, lexed, &spec, &err) != PGS_OK) {
    if (plan->copy == NULL)
      add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "this COPY cannot be split by shard");
    else
      add_error(s, err.sqlstate, "%s", err.message);
    add_reply(s, 'Z', NULL);
    return;
  }
  if (!pgs_exchange_in_tx(&s->ex) && pgs_session_needs_twopc(s, rt->shards)) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "a COPY into several shards is made atomic (cross_shard_writes = 2pc) only inside "
              "a transaction: wrap it in BEGIN/COMMIT");
    add_reply(s, 'Z', NULL);
    return;
  }
  if (plan->table && !s->ops->keys_utf8(s->ctx)) {
    /* Keys are hashed as UTF-8 and rows are cut at ASCII bytes. */
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "COPY into sharded table %s needs client_encoding UTF8 (or SQL_ASCII) to split "
              "its rows by key",
              plan->table->name);
    add_reply(s, 'Z', NULL);
    return;
  }
  uint64_t slots = placed_mask(s, rt, plan);
  if (slots == 0) {
    add_reply(s, 'Z', NULL);
    return;
  }
  pgs_route_session_t session = {.hint_shard = s->hint_shard, .tenant = s->tenant};
  /* Outside a transaction each shard's COPY would commit on its own, and a
   * shard failing after another committed would leave that one's rows:
   * each part runs in a transaction of pgshard's, ended with the COPY. */
  bool own_tx = !pgs_exchange_in_tx(&s->ex) && __builtin_popcountll(slots) > 1;
  order_fan(s, plan, slots, -1, 0, true);
  s->fan_order->copy_in = true;
  s->fan_order->own_tx = own_tx;
  s->fan_order->spec = pgs_xmalloc(sizeof(spec));
  *s->fan_order->spec = spec;
  s->fan_order->route = session;
  if (own_tx) {
    /* Sent at once, like the parts (steps before them wait for the fan to
     * end): the first part waits for every BEGIN to answer. */
    int first = s->nsteps;
    (void)implicit_begin(s, slots);
    for (int i = first; i < s->nsteps; i++) s->steps[i].concurrent = true;
  }
  add_fan_steps(s, slots, PGS_STEP_FORWARD, NULL);
}

/* The transaction's SET [LOCAL]/RESET/savepoint statements are replayed on
 * every shard it reaches later (tx_replay): SET LOCAL ROLE must hold
 * wherever the transaction goes. Kept once the statement's steps are done.
 * false with an error step added when there is too much to keep. */
#define TX_REPLAY_MAX (64 * 1024)
static bool keep_for_replay(pgs_session_t *s, bool replayable, const char *sql) {
  if (!pgs_exchange_in_tx(&s->ex) || !replayable) return true;
  size_t len = strlen(sql);
  if (s->tx_replay.len + len + 1 > TX_REPLAY_MAX) {
    add_error(s, "54000",
              "this transaction's SET and SAVEPOINT statements pass %d bytes, more than pgshard "
              "carries to the shards it reaches later",
              TX_REPLAY_MAX);
    return false;
  }
  free(s->tx_replay_next);
  s->tx_replay_next = pgs_xstrndup(sql, len);
  return true;
}

/* ---- INSERT without a column list ----
 *
 * INSERT INTO t VALUES (...) into a sharded table: pgshard names t's
 * columns in the catalog's order (read by the monitor) and plans the
 * statement as if the client had: it routes by the key's value, and the
 * shard runs the statement with the list. A list gone stale (a column
 * dropped or renamed since) fails on the server, never places a row by the
 * wrong value. */

/* A word of SQL at I (letters, digits, _ and $ after a letter or _):
 * its end, or I when there is none. */
static size_t word_end(const char *sql, size_t len, size_t i) {
  if (i >= len || !(isalpha((unsigned char)sql[i]) || sql[i] == '_')) return i;
  while (i < len && (isalnum((unsigned char)sql[i]) || sql[i] == '_' || sql[i] == '$')) i++;
  return i;
}

static size_t skip_blanks(const char *sql, size_t len, size_t i) {
  return i >= len ? i : (size_t)(pgs_session_skip_space(sql + i, sql + len) - sql);
}

/* A name at I (a word or a "quoted" one): its end, or I. */
static size_t name_end(const char *sql, size_t len, size_t i) {
  if (i < len && sql[i] == '"') {
    for (i++; i < len; i++) {
      if (sql[i] != '"') continue;
      if (i + 1 < len && sql[i + 1] == '"') {
        i++;
        continue;
      }
      return i + 1;
    }
    return 0; /* unterminated */
  }
  return word_end(sql, len, i);
}

static bool word_is(const char *sql, size_t at, size_t end, const char *word) {
  return end - at == strlen(word) && !strncasecmp(sql + at, word, end - at);
}

/* Where "INSERT INTO name [AS alias]" ends in SQL: the column list goes
 * there. 0 when SQL does not start so. */
static size_t insert_columns_at(const char *sql, size_t len) {
  size_t i = skip_blanks(sql, len, 0), e = word_end(sql, len, i);
  if (!word_is(sql, i, e, "insert")) return 0;
  i = skip_blanks(sql, len, e), e = word_end(sql, len, i);
  if (!word_is(sql, i, e, "into")) return 0;
  i = skip_blanks(sql, len, e);
  for (;;) { /* schema.table */
    e = name_end(sql, len, i);
    if (e <= i) return 0;
    size_t dot = skip_blanks(sql, len, e);
    if (dot >= len || sql[dot] != '.') break;
    i = skip_blanks(sql, len, dot + 1);
  }
  size_t at = e; /* right after the table's name */
  i = skip_blanks(sql, len, e), e = name_end(sql, len, i);
  if (word_is(sql, i, e, "as")) { /* INSERT's alias always has AS */
    i = skip_blanks(sql, len, e), e = name_end(sql, len, i);
    return e > i ? e : 0;
  }
  return at;
}

/* The INSERT in SQL (QLEN bytes) with the columns of TABLE named: into
 * OUT. False when the columns are not known or the text is not read. */
static bool insert_with_columns(pgs_session_t *s, const char *sql, size_t qlen,
                                const pgs_table_t *table, pgs_buf_t *out) {
  const char *columns = s->ops->columns ? s->ops->columns(s->ctx, table->name) : NULL;
  size_t at = columns ? insert_columns_at(sql, qlen) : 0;
  if (at == 0) return false;
  pgs_buf_put(out, sql, at);
  pgs_buf_put(out, " (", 2);
  pgs_buf_put(out, columns, strlen(columns));
  pgs_buf_put(out, ")", 1);
  pgs_buf_put(out, sql + at, qlen - at);
  pgs_buf_put_u8(out, 0);
  return true;
}

/* NOTIFY goes to one shard's primary, the first shard's, whatever shard
 * the session is on (so do LISTEN and UNLISTEN in session pooling): a
 * notification reaches every listener of its channel, as on one
 * PostgreSQL. So do advisory lock functions (plan->advisory): clients
 * locking the same key meet there. */
#define NOTIFY_SLOT 0

/* In transaction pooling LISTEN and UNLISTEN are pgshard's own: the proxy
 * keeps each client's channels and listens on every shard's primary for
 * all of them (proxy/listen.c), so that a notification raised on any
 * shard reaches the clients of its channel, and no client keeps a server.
 * The statement reaches no server: a LISTEN step registers it (inside a
 * transaction: at its COMMIT) and answers it, in pass-through mode too. */
static bool listens_locally(const pgs_session_t *s) {
  return s->db->pool_mode == PGS_POOL_TRANSACTION;
}

/* The LISTEN or UNLISTEN among N ops, or NULL. */
static const pgs_set_op_t *listen_op(const pgs_set_op_t *ops, int n) {
  for (int i = 0; i < n; i++)
    if (pgs_set_op_is_listen(ops[i].kind)) return &ops[i];
  return NULL;
}

/* FX is one LISTEN or UNLISTEN statement: its op, else NULL. */
static const pgs_set_op_t *listen_statement(const pgs_session_effects_t *fx) {
  return fx->nstatements == 1 && fx->nops == 1 && pgs_set_op_is_listen(fx->ops[0].kind)
             ? &fx->ops[0]
             : NULL;
}

/* A prepared statement's (or portal's) ops O are one LISTEN or UNLISTEN. */
static const pgs_set_op_t *set_ops_listen(const pgs_set_ops_t *o) {
  return o && o->n == 1 && pgs_set_op_is_listen(o->ops[0].kind) ? &o->ops[0] : NULL;
}

/* The step of OP (then the ReadyForQuery of a SIMPLE query). QUIET: the
 * statement that has it goes to a server, which answers it (an UNLISTEN in
 * a multi-statement query, DISCARD ALL). */
static void plan_listen(pgs_session_t *s, const pgs_set_op_t *op, bool simple, bool quiet) {
  pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_LISTEN, PGS_PLACED_NONE);
  st->reply = op->kind == PGS_SET_OP_LISTEN ? 'L' : op->kind == PGS_SET_OP_UNLISTEN ? 'U' : '*';
  st->text = pgs_xstrdup(op->name);
  st->internal = quiet;
  if (simple) add_reply(s, 'Z', NULL);
}

/* A simple Query whose effects are FX: true when it is a LISTEN or
 * UNLISTEN that transaction pooling answers, or a query it refuses (its
 * steps are planned). An UNLISTEN among other statements (asyncpg's pool
 * reset: "CLOSE ALL; UNLISTEN *; RESET ALL"), or DISCARD ALL, gives up the
 * client's channels with a quiet step, and the query goes on to the
 * servers (where it does nothing to listeners): false. */
static bool plan_listen_query(pgs_session_t *s, const pgs_session_effects_t *fx) {
  if (!listens_locally(s) || listen_op(fx->ops, fx->nops) == NULL) return false;
  const pgs_set_op_t *op = listen_statement(fx);
  if (op) {
    plan_listen(s, op, true, false);
    return true;
  }
  for (int i = 0; i < fx->nops; i++) {
    if (fx->ops[i].kind != PGS_SET_OP_LISTEN) continue;
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "LISTEN must be a statement of its own in transaction pooling (pgshard answers "
              "it itself)");
    add_reply(s, 'Z', NULL);
    return true;
  }
  for (int i = 0; i < fx->nops; i++)
    if (pgs_set_op_is_listen(fx->ops[i].kind)) plan_listen(s, &fx->ops[i], false, true);
  return false;
}

/* A prepared LISTEN or UNLISTEN (FX) that transaction pooling answers
 * when it runs does not pin the session. */
static void listen_prepared(const pgs_session_t *s, pgs_session_effects_t *fx) {
  if (listens_locally(s) && listen_statement(fx)) fx->flags &= ~PGS_SESSION_PIN;
}

/* ---- SQL cursors ----
 *
 * A cursor over one shard lives on that shard's server: DECLARE goes there
 * and FETCH, MOVE and CLOSE follow it (pgshard remembers where). A cursor
 * over several shards cannot live on any one server: its query runs
 * whole on each shard at DECLARE (a fan whose merged rows are gathered,
 * bounded by max_merge_bytes), and FETCH and MOVE are answered from what
 * was gathered, forward only. Either closes with its transaction unless
 * declared WITH HOLD. */

/* Where the query of "DECLARE name ... CURSOR ... FOR query" starts in SQL
 * (LEN bytes): after the first FOR that is a word of its own outside
 * quotes and comments. 0 when there is none. */
static size_t declare_query_start(const char *sql, size_t len) {
  size_t i = skip_blanks(sql, len, 0);
  while (i < len) {
    size_t e = name_end(sql, len, i);
    if (e <= i) return 0; /* not a word or a name: not in a DECLARE's head */
    if (word_is(sql, i, e, "for")) return e;
    i = skip_blanks(sql, len, e);
  }
  return 0;
}

/* A new cursor entry NAME (declared in the open transaction or not). */
static pgs_portal_t *put_cursor(pgs_session_t *s, const char *name, bool hold) {
  pgs_portal_t *cursor = pgs_xcalloc(1, sizeof(*cursor));
  cursor->owner = s;
  cursor->charged = sizeof(*cursor) + sizeof(pgs_strmap_entry_t) + strlen(name) + 1;
  charge(s, cursor->charged, 0);
  cursor->hold = hold;
  cursor->in_tx = pgs_exchange_in_tx(&s->ex);
  pgs_portal_t *old = pgs_strmap_put(&s->cursors, name, cursor);
  if (old) pgs_session_free_portal(old);
  return cursor;
}

/* The Bind BODY read into BIND, its values into PV (the session's arrays,
 * valid until the next Bind is read). */
static bool read_bind(pgs_session_t *s, const uint8_t *body, size_t len, pgs_bind_msg_t *bind,
                      pgs_param_values_t *pv) {
  if (pgs_bind_read(body, len, bind) != PGS_OK) return false;
  int n = bind->nparams;
  if (n > s->param_cap) {
    s->param_cap = n;
    s->param_data = pgs_xrealloc(s->param_data, sizeof(*s->param_data) * (size_t)n);
    s->param_len = pgs_xrealloc(s->param_len, sizeof(*s->param_len) * (size_t)n);
    s->param_fmt = pgs_xrealloc(s->param_fmt, sizeof(*s->param_fmt) * (size_t)n);
  }
  const uint8_t *value;
  int32_t vlen;
  size_t at = 0;
  for (int i = 0; pgs_bind_next_value(bind, &at, &value, &vlen); i++) {
    s->param_data[i] = value;
    s->param_len[i] = vlen;
    s->param_fmt[i] = pgs_bind_param_format(bind, i);
  }
  pv->n = n;
  pv->data = s->param_data;
  pv->len = s->param_len;
  pv->format = s->param_fmt;
  return true;
}

/* PORTAL (named NAME_LEN bytes) is charged what it holds now. */
static void charge_portal(pgs_portal_t *portal, size_t name_len) {
  size_t charged = sizeof(*portal) + sizeof(pgs_strmap_entry_t) + name_len + 1 +
                   portal->merge_body.cap + portal->merge_bind.cap;
  if (charged > portal->charged)
    charge(portal->owner, charged - portal->charged, 0);
  else
    charge(portal->owner, 0, portal->charged - charged);
  portal->charged = charged;
}

/* The parameter values a DECLARE's portal BOUND was bound with (kept by
 * keep_declare_bind), into PV; *TYPES (the caller frees it) their
 * declared types. */
static const pgs_param_values_t *declare_params(pgs_session_t *s, const pgs_portal_t *bound,
                                                pgs_param_values_t *pv, uint32_t **types) {
  pgs_bind_msg_t bind;
  if (!read_bind(s, bound->merge_bind.data + 5, bound->merge_bind.len - 5, &bind, pv)) return NULL;
  const pgs_buf_t *body = &bound->merge_body;
  size_t qlen = strnlen((const char *)body->data, body->len);
  pgs_reader_t r;
  pgs_reader_init(&r, body->data + qlen + 1, body->len - qlen - 1);
  int n = pgs_read_i16(&r);
  *types = pgs_xcalloc(n > 0 ? (size_t)n : 1, sizeof(uint32_t));
  for (int i = 0; i < n && !r.bad; i++) (*types)[i] = (uint32_t)pgs_read_i32(&r);
  pv->type_oid = *types;
  pv->ntypes = r.bad ? 0 : n;
  return pv;
}

/* A DECLARE over several shards bound with parameters: what its parts are
 * sent at its Execute, kept in PORTAL as a merged portal keeps its own —
 * the query (its shards' variant, QUERY of QLEN bytes when not rewritten)
 * prepared with the client's parameter types, and a Bind of it with the
 * client's values whose rows come in text (they are gathered, and FETCH
 * asks for its own formats). */
static void keep_declare_bind(pgs_portal_t *portal, const pgs_client_stmt_t *stmt,
                              const pgs_bind_msg_t *bind, const pgs_plan_t *inner,
                              const pgs_lexed_t *lexed, const char *query, size_t qlen) {
  pgs_buf_t *body = &portal->merge_body;
  body->len = 0;
  if (inner->merge->rewrite) {
    pgs_merge_shard_sql(inner->merge, lexed, body);
  } else {
    pgs_buf_put(body, query, qlen);
    pgs_buf_put_u8(body, '\0');
  }
  const pgs_buf_t *pb = &stmt->parse_body;
  size_t plen = strnlen((const char *)pb->data, pb->len);
  if (plen < pb->len) pgs_buf_put(body, pb->data + plen + 1, pb->len - plen - 1);
  statement_server_name(body->data, body->len, portal->merge_name);
  pgs_buf_t *b = &portal->merge_bind;
  b->len = 0;
  size_t start = pgs_msg_begin(b, 'B');
  pgs_buf_put(b, bind->portal, bind->portal_len + 1);
  pgs_buf_put_cstr(b, portal->merge_name);
  pgs_buf_put_i16(b, (int16_t)bind->nformats);
  pgs_buf_put(b, bind->formats, 2 * (size_t)bind->nformats);
  pgs_buf_put_i16(b, (int16_t)bind->nparams);
  pgs_buf_put(b, bind->params, bind->params_len);
  pgs_buf_put_i16(b, 0);
  pgs_msg_end(b, start);
  charge_portal(portal, bind->portal_len);
}

/* The query of the DECLARE in SQL (QLEN bytes; the query from *AT) lexed
 * into LEXED and analysed (*INNER, a reference) when it is a merged read over
 * several shards: the cursor is then gathered. False otherwise (the DECLARE goes where its
 * query routes, as any statement). */
static bool declare_gathers(pgs_session_t *s, const char *sql, size_t qlen, pgs_lexed_t *lexed,
                            pgs_plan_t **inner, size_t *at, const pgs_param_values_t *params) {
  *at = declare_query_start(sql, qlen);
  *inner = NULL;
  if (*at == 0 || pgs_lex(sql + *at, qlen - *at, lexed) != PGS_OK) return false;
  *inner = get_plan(s, lexed);
  const pgs_plan_t *q = *inner;
  if (q->parse_failed || q->kind != PGS_STMT_READ || q->merge == NULL || lexed->hint_shard[0] ||
      q->nrows > 0 || (lexed->nparams > 0 && (params == NULL || params->n < lexed->nparams)))
    return false;
  pgs_route_session_t session = {.hint_shard = s->hint_shard, .tenant = s->tenant};
  pgs_route_t probe = {.row_shard = NULL};
  pgs_route_plan(s->db, q, lexed, params, &session, &probe);
  return probe.kind == PGS_ROUTE_MERGE;
}

/* DECLARE (PLAN) of a cursor over several shards: its query runs whole on
 * each, in a Query (SIMPLE) or through the unnamed statement, and the
 * merged rows are gathered in the cursor. False when it is not gathered. */
static bool plan_declare(pgs_session_t *s, const char *sql, size_t qlen, const pgs_plan_t *plan,
                         bool simple, pgs_portal_t *bound) {
  pgs_lexed_t lexed;
  pgs_lex_init(&lexed);
  pgs_plan_t *inner = NULL;
  size_t at;
  pgs_param_values_t pv = {0};
  uint32_t *types = NULL;
  const pgs_param_values_t *params =
      bound && bound->merge_bind.len > 0 ? declare_params(s, bound, &pv, &types) : NULL;
  bool gathered = declare_gathers(s, sql, qlen, &lexed, &inner, &at, params);
  pgs_route_t rt;
  int64_t limit, offset;
  pgs_value_error_t err;
  uint64_t slots = 0;
  if (!gathered) goto out;
  if (!route(s, inner, &lexed, params, &rt)) goto refused;
  if (!plan->cursor_hold && !pgs_exchange_in_tx(&s->ex)) {
    add_error(s, "25P01", "DECLARE CURSOR can only be used in transaction blocks");
    goto refused;
  }
  if (pgs_strmap_get(&s->cursors, plan->cursor_name)) {
    add_error(s, "42P03", "cursor \"%s\" already exists", plan->cursor_name);
    goto refused;
  }
  slots = fan_slots(s, &rt, inner);
  if (slots == 0) goto refused;
  if (pgs_merge_limits(inner->merge, &lexed, params, &limit, &offset, &err) != PGS_OK) {
    add_error(s, err.sqlstate, "%s", err.message);
    goto refused;
  }
  if (params) {
    /* Each part is bound the query with the client's values, then run
     * whole (PGS_STEP_FAN_EXEC on the DECLARE's portal). */
    order_fan(s, inner, slots, limit, offset, false);
    s->fan_order->portal = put_cursor(s, plan->cursor_name, plan->cursor_hold);
    s->fan_order->portal->busy = true;
    s->fan_order->declare = true;
    bound->unbound = slots;
    add_fan_steps(s, slots, PGS_STEP_FAN_EXEC, NULL);
    goto out;
  }
  pgs_buf_t text;
  pgs_buf_init(&text);
  if (inner->merge->rewrite)
    pgs_merge_shard_sql(inner->merge, &lexed, &text);
  else
    pgs_buf_put(&text, sql + at, qlen - at);
  pgs_buf_put_u8(&text, 0);
  order_fan(s, inner, slots, limit, offset, simple);
  s->fan_order->portal = put_cursor(s, plan->cursor_name, plan->cursor_hold);
  s->fan_order->portal->busy = true;
  s->fan_order->declare = true;
  add_fan_steps(s, slots, simple ? PGS_STEP_QUERY : PGS_STEP_FAN_SQL, (const char *)text.data);
  pgs_buf_free(&text);
  goto out;
refused:
  if (simple && !s->held) add_reply(s, 'Z', NULL);
out:
  free(types);
  pgs_plan_unref(inner);
  pgs_lex_free(&lexed);
  return gathered;
}

/* FETCH or MOVE (PLAN) of a protocol portal by its name (asyncpg's
 * Cursor.forward() sends SQL MOVE on its portal): where the portal was
 * bound, or answered from its gathered rows. False when the session has
 * no such portal. */
static bool plan_portal_by_name(pgs_session_t *s, const pgs_plan_t *plan) {
  pgs_portal_t *portal =
      plan->cursor_name[0] ? pgs_strmap_get(&s->portals, plan->cursor_name) : NULL;
  if (portal == NULL || plan->cursor_op == PGS_CURSOR_CLOSE || portal->mask == 0) return false;
  if (portal->gathered && plan->cursor_op == PGS_CURSOR_MOVE && plan->fetch_forward) {
    pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_ROWS, PGS_PLACED_NONE);
    st->text = pgs_xstrdup(plan->cursor_name);
    st->rows = plan->fetch_count < 0 ? 0 : plan->fetch_count;
    st->fetch = PGS_FETCH_MOVE_PORTAL;
  } else if (portal->merge_plan) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "portal \"%s\" runs over several shards: fetch it with Execute, or MOVE forward "
              "once it has been executed",
              plan->cursor_name);
  } else {
    add_fanout(s, portal->mask, PGS_STEP_FORWARD, NULL, true, portal->placed);
    return true;
  }
  add_reply(s, 'Z', NULL);
  return true;
}

/* FETCH, MOVE or CLOSE of a cursor pgshard gathered (PLAN's), answered
 * here; or of one on one shard, sent there. False when pgshard does not
 * know the cursor (the session's servers are asked, as any SET). */
static bool plan_cursor_op(pgs_session_t *s, const pgs_plan_t *plan) {
  pgs_portal_t *cursor =
      plan->cursor_name[0] ? pgs_strmap_get(&s->cursors, plan->cursor_name) : NULL;
  if (plan->cursor_op == PGS_CURSOR_CLOSE && plan->cursor_name[0] == '\0') {
    /* CLOSE ALL: pgshard's, and each server's. */
    pgs_strmap_free(&s->cursors, pgs_session_free_portal);
    pgs_strmap_init(&s->cursors);
    return false;
  }
  if (cursor == NULL) return plan_portal_by_name(s, plan);
  if (cursor->mask) { /* on one shard's server */
    add_fanout(s, cursor->mask, PGS_STEP_FORWARD, NULL, true, PGS_PLACED_ROUTE);
  } else if (plan->cursor_op == PGS_CURSOR_CLOSE) {
    add_reply(s, 'C', "CLOSE CURSOR");
    add_reply(s, 'Z', NULL);
  } else if (!plan->fetch_forward) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "cursor \"%s\" runs over several shards and fetches forward only (FETCH n, NEXT, "
              "ALL)",
              plan->cursor_name);
    add_reply(s, 'Z', NULL);
    return true;
  } else {
    pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_ROWS, PGS_PLACED_NONE);
    st->text = pgs_xstrdup(plan->cursor_name);
    st->rows = plan->fetch_count < 0 ? 0 : plan->fetch_count;
    st->fetch = plan->cursor_op == PGS_CURSOR_MOVE ? PGS_FETCH_MOVE : PGS_FETCH_FETCH;
    add_reply(s, 'Z', NULL);
  }
  if (plan->cursor_op == PGS_CURSOR_CLOSE) {
    pgs_strmap_remove(&s->cursors, plan->cursor_name);
    pgs_session_free_portal(cursor);
  }
  return true;
}

static void forget_stmt(pgs_session_t *s, const char *name);

/* DEALLOCATE NAME (FX: a statement of its own) of a statement the client
 * prepared through the protocol: the server knows it under pgshard's name
 * (shared with other clients), so pgshard forgets the client's name and
 * answers, as PostgreSQL would (a SQL PREPAREd one goes to the server).
 * True when answered. */
static bool forget_deallocated(pgs_session_t *s, const pgs_session_effects_t *fx, bool simple) {
  if (fx->deallocate[0] == '\0' || pgs_strmap_get(&s->stmts, fx->deallocate) == NULL) return false;
  forget_stmt(s, fx->deallocate);
  add_reply(s, 'C', "DEALLOCATE");
  if (simple) add_reply(s, 'Z', NULL);
  return true;
}

/* A simple Query in routing mode. */
static void plan_query(pgs_session_t *s, const uint8_t *p, size_t total) {
  pgs_reader_t r;
  size_t qlen;
  pgs_reader_init(&r, p + 5, total - 5);
  const char *sql = pgs_read_cstr(&r, &qlen);
  if (sql == NULL || pgs_reader_left(&r) != 0) {
    add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION,
              "invalid Query message: its text must end "
              "with the message");
    add_reply(s, 'Z', NULL);
    return;
  }
  pgs_session_effects_t fx;
  bool session = pgs_session_maybe(sql, qlen);
  if (session) {
    pgs_session_analyze(sql, &fx);
    if (pgshard_unread(&fx, sql)) {
      add_error(s, "42601",
                "cannot read this statement naming pgshard.* settings; pgshard did not apply it "
                "(write SET pgshard.NAME = 'value' as a statement of its own)");
      add_reply(s, 'Z', NULL);
      pgs_session_effects_free(&fx);
      return;
    }
    if (forget_deallocated(s, &fx, true)) {
      pgs_session_effects_free(&fx);
      return;
    }
    int own = pgshard_ops(&fx);
    if (own > 0) {
      if (own != fx.nops || fx.flags)
        add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "SET pgshard.* must be a statement of its own");
      else
        for (int i = 0; i < fx.nops && apply_pgshard_op(s, &fx.ops[i]); i++) {
          if (i == fx.nops - 1)
            add_reply(s, 'C', fx.ops[i].kind == PGS_SET_OP_SET ? "SET" : "RESET");
        }
      add_reply(s, 'Z', NULL);
      pgs_session_effects_free(&fx);
      return;
    }
    if (plan_listen_query(s, &fx)) {
      pgs_session_effects_free(&fx);
      return;
    }
  }
  if (s->lexed == NULL) {
    s->lexed = pgs_xmalloc(sizeof(*s->lexed));
    pgs_lex_init(s->lexed);
  }
  pgs_lexed_t *lexed = s->lexed;
  pgs_plan_t *plan = NULL;
  pgs_status_t lex_status = pgs_lex(sql, qlen, lexed);
  if (lex_status == PGS_ETOOBIG) {
    /* Its keys cannot be read: never guess a shard. */
    add_error(s, "54000", "%s", too_many_literals);
    add_reply(s, 'Z', NULL);
    if (session) pgs_session_effects_free(&fx);
    return;
  }
  if (lex_status == PGS_OK) plan = get_plan(s, lexed);
  if (lex_status == PGS_OK) note_query(s, lexed);
  if (plan && plan->needs_columns && !s->rewritten) {
    /* INSERT INTO t VALUES: planned with t's columns named. */
    pgs_buf_t *m = &s->message;
    size_t start = pgs_msg_begin(m, 'Q');
    if (insert_with_columns(s, sql, qlen, plan->needs_columns, m)) {
      pgs_msg_end(m, start);
      s->rewritten = true;
      pgs_plan_unref(plan);
      if (session) pgs_session_effects_free(&fx);
      plan_query(s, m->data, m->len);
      return;
    }
    m->len = 0;
  }
  pgs_stmt_kind_t kind = plan ? plan->kind : PGS_STMT_OTHER;
  bool single = plan && plan->nstatements == 1;
  pgs_route_t rt;
  if (plan == NULL) {
    /* What pgshard cannot read it cannot place. */
    if (s->scs_off)
      add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
    else
      add_error(s, "42601", "%s", unreadable);
    add_reply(s, 'Z', NULL);
  } else if ((s->ex.tx == PGS_TX_ABORTED) &&
             !(single && (kind == PGS_STMT_COMMIT || kind == PGS_STMT_ROLLBACK))) {
    add_error(s, "25P02",
              "current transaction is aborted, commands ignored until end of transaction block");
    add_reply(s, 'Z', NULL);
  } else if (single && kind == PGS_STMT_BEGIN) {
    plan_begin(s, sql, plan->read_only_tx, true);
  } else if (single && pgs_exchange_in_tx(&s->ex) &&
             (kind == PGS_STMT_COMMIT || kind == PGS_STMT_ROLLBACK)) {
    plan_tx_end(s, kind, sql, true);
  } else if (plan && plan->refuse_sqlstate[0]) {
    add_error(s, plan->refuse_sqlstate, "%s",
              strncmp(plan->refuse_message, "pgshard: ", 9) ? plan->refuse_message
                                                            : plan->refuse_message + 9);
    add_reply(s, 'Z', NULL);
  } else if (session && sets_scs_off(&fx)) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
    add_reply(s, 'Z', NULL);
  } else if (single &&
             (plan->cursor_op == PGS_CURSOR_FETCH || plan->cursor_op == PGS_CURSOR_MOVE ||
              plan->cursor_op == PGS_CURSOR_CLOSE) &&
             plan_cursor_op(s, plan)) {
    /* A cursor pgshard knows: planned. */
  } else if (single && plan->cursor_op == PGS_CURSOR_DECLARE &&
             plan_declare(s, sql, qlen, plan, true, NULL)) {
    /* Over several shards: gathered. */
  } else if (kind == PGS_STMT_SESSION || kind == PGS_STMT_COMMIT || kind == PGS_STMT_ROLLBACK) {
    /* SET and friends (no data: they change the session) go wherever the
     * session is; so does COMMIT or ROLLBACK outside a transaction. */
    if (!keep_for_replay(s, plan->tx_replayable, sql)) {
      add_reply(s, 'Z', NULL);
      goto out;
    }
    /* Each server does the same: one answers (SELECT
     * pg_advisory_unlock_all() has a row). */
    s->ex.copies = true;
    if (plan->notifies || plan->advisory)
      add_fanout(s, BIT(NOTIFY_SLOT), PGS_STEP_FORWARD, NULL, true, PGS_PLACED_ROUTE);
    else
      add_fanout(s, session_mask(s), PGS_STEP_FORWARD, NULL, true, PGS_PLACED_SESSION);
    if (session) check_session_effects(s, &fx, true, NULL);
  } else if (!route(s, plan, lexed, NULL, &rt)) {
    if (!s->held) add_reply(s, 'Z', NULL);
  } else if (rt.kind == PGS_ROUTE_MERGE) {
    plan_fan_query(s, &rt, plan, lexed);
  } else if (kind == PGS_STMT_COPY_FROM && (rt.kind == PGS_ROUTE_FANOUT || plan->table)) {
    /* Into a sharded table always through the splitter, even on one shard
     * (a hint, a tenant): each row's key is checked against it. */
    plan_copy_in(s, &rt, plan, lexed);
  } else if (rt.kind == PGS_ROUTE_SPLIT) {
    char **texts = pgs_xcalloc((size_t)s->nslots, sizeof(char *));
    bool ok = true, placed = true;
    for (int i = 0; i < s->nslots / 2 && ok && placed; i++) {
      if (!(rt.shards & BIT(i))) continue;
      pgs_buf_t b;
      pgs_buf_init(&b);
      ok = pgs_route_split_insert(lexed, rt.row_shard, plan->nrows, i, &b) == PGS_OK;
      texts[2 * i] = (char *)b.data;
      placed = place(s, i, plan) == 2 * i;
    }
    if (!placed) {
      add_reply(s, 'Z', NULL);
    } else if (ok && implicit_twopc(s, plan, rt.shards)) {
      uint64_t slots = writer_slots(rt.shards);
      int first = implicit_begin(s, slots);
      add_fanout(s, slots, PGS_STEP_QUERY, texts, true, PGS_PLACED_ROUTE);
      implicit_twopc_commit(s, slots, first);
    } else if (ok) {
      add_fanout(s, writer_slots(rt.shards), PGS_STEP_QUERY, texts, true, PGS_PLACED_ROUTE);
    } else {
      add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                "cannot split this INSERT's VALUES rows by shard");
      add_reply(s, 'Z', NULL);
    }
    for (int i = 0; i < s->nslots; i++) free(texts[i]);
    free(texts);
  } else {
    uint64_t mask = placed_mask(s, &rt, plan);
    if (mask == 0) {
      add_reply(s, 'Z', NULL);
    } else {
      /* DDL and reference tables are copies on every shard: one shard's
       * count is the answer, not the sum. */
      s->ex.copies = plan->target == PGS_TARGET_ANY;
      bool atomic = rt.kind == PGS_ROUTE_FANOUT && implicit_twopc(s, plan, rt.shards);
      int first = atomic ? implicit_begin(s, mask) : 0;
      add_fanout(s, mask, PGS_STEP_FORWARD, NULL, true, PGS_PLACED_ROUTE);
      if (single && plan->cursor_op == PGS_CURSOR_DECLARE) /* FETCH follows it there */
        put_cursor(s, plan->cursor_name, plan->cursor_hold)->mask = mask;
      if (atomic) implicit_twopc_commit(s, mask, first);
      if (session) check_session_effects(s, &fx, true, NULL);
    }
  }
out:
  if (session && (fx.flags & PGS_SESSION_DROPS_PREPARED)) mark_drops_prepared(s, 0);
  if (session) pgs_session_effects_free(&fx);
  pgs_plan_unref(plan);
}

/* ---- extended protocol ---- */

/* A Bind read whole; its parameter values into PV (the client's arrays). */
static pgs_client_stmt_t *find_stmt(pgs_session_t *s, const char *name) {
  return pgs_strmap_get(&s->stmts, name);
}

static void forget_stmt(pgs_session_t *s, const char *name) {
  pgs_client_stmt_t *gone = pgs_strmap_remove(&s->stmts, name);
  if (gone) pgs_session_free_stmt(gone);
}

/* PostgreSQL's own words for a statement name nobody prepared (26000):
 * pgshard says it itself, so that no client's name can reach a statement
 * some other client prepared on a shared server. */
static void no_such_statement(pgs_session_t *s, const char *name) {
  if (name[0])
    add_error(s, "26000", "prepared statement \"%s\" does not exist", name);
  else
    add_error(s, "26000", "unnamed prepared statement does not exist");
  pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
}

/* Whether the Bind of STMT with PV (SESSION's routing) will wait for a
 * cutover hold: its Parse waits with it, so that once the hold ends the
 * whole unit is planned on the map then in force. */
static bool bind_held(pgs_session_t *s, const pgs_client_stmt_t *stmt, const pgs_param_values_t *pv,
                      const pgs_route_session_t *session) {
  if (s->ops->hold == NULL || s->ops->hold(s->ctx) == NULL || stmt->plan->refuse_sqlstate[0])
    return false;
  int n = stmt->plan->nrows;
  int *rows = n ? pgs_xcalloc((size_t)n, sizeof(int)) : NULL;
  pgs_route_t rt = {.row_shard = rows};
  pgs_route_plan(s->db, stmt->plan, stmt->lexed, pv, session, &rt);
  bool held =
      rt.kind != PGS_ROUTE_REFUSE && held_for_cutover(s, stmt->plan, stmt->lexed, pv, session, &rt);
  free(rows);
  return held;
}

/* The shard the Bind right after a Parse of NAME will pick, if that Bind is
 * in the buffer already (libpq sends Parse/Bind/Execute/Sync together). */
static int lookahead_slot(pgs_session_t *s, const uint8_t *p, size_t len, const char *name,
                          pgs_client_stmt_t *stmt) {
  char type;
  size_t total;
  if (len == 0 || pgs_msg_peek(p, len, s->max_message_size, &type, &total) != PGS_OK ||
      type != 'B' || len < total)
    return -1;
  pgs_bind_msg_t bind;
  pgs_param_values_t pv = {0};
  if (!read_bind(s, p + 5, total - 5, &bind, &pv) || strcmp(bind.statement, name) != 0) return -1;
  pv.type_oid = stmt->type_oids;
  pv.ntypes = stmt->ntypes;
  pgs_route_session_t session = {.hint_shard = s->hint_shard, .tenant = s->tenant};
  if (stmt->lexed->hint_shard[0])
    session.hint_shard = pgs_shardmap_find_shard(s->db, stmt->lexed->hint_shard);
  if (bind_held(s, stmt, &pv, &session)) return -1;
  pgs_route_t rt = {.row_shard = NULL};
  if (stmt->plan->nrows > 0) return -1;
  pgs_route_plan(s->db, stmt->plan, stmt->lexed, &pv, &session, &rt);
  /* Where the Bind will go, without reporting errors: the Bind does. */
  if (rt.kind != PGS_ROUTE_ONE && rt.kind != PGS_ROUTE_ANY) return -1;
  uint64_t mask = placed_mask_quietly(s, &rt, stmt->plan, true);
  return mask ? first_bit(mask) : -1;
}

/* Where a Parse or a Describe of a statement goes when its Bind is not in
 * sight: where the session is; any server of the shard can parse, so a
 * replica when the shard has no writer. */
static int parse_slot(pgs_session_t *s) {
  int slot = default_slot(s);
  if ((slot & 1) || writer_node(s, slot / 2) >= 0) return slot;
  const pgs_shard_health_t *h = shard_health(s, slot / 2);
  for (int i = 0; h && i < h->nnodes; i++) {
    if (h->nodes[i].up && h->nodes[i].in_recovery) {
      s->picked[slot / 2] = (int8_t)i;
      return slot | 1;
    }
  }
  return slot;
}

/* Whether a statement is answered by pgshard itself. */
static bool stmt_is_local(const pgs_session_t *s, const pgs_client_stmt_t *stmt) {
  const pgs_plan_t *plan = stmt->plan;
  if (plan == NULL || plan->nstatements != 1) return false;
  if (listens_locally(s) && set_ops_listen(stmt->set_ops)) return true;
  switch (plan->kind) {
  case PGS_STMT_BEGIN:
    return true;
  case PGS_STMT_COMMIT:
  case PGS_STMT_ROLLBACK:
    return pgs_exchange_in_tx(&s->ex) || s->tx_mask == 0;
  default:
    return false;
  }
}

static void plan_parse(pgs_session_t *s, const uint8_t *p, size_t total, const uint8_t *ahead,
                       size_t ahead_len) {
  pgs_parse_msg_t parse;
  if (pgs_parse_read(p + 5, total - 5, &parse) != PGS_OK) {
    add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Parse message");
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  const char *name = parse.name, *sql = parse.query;
  size_t qlen = parse.query_len;
  int ntypes = parse.ntypes;
  pgs_client_stmt_t *stmt = remember_parse(s, name, parse.after_name, parse.after_name_len);
  if (stmt == NULL) {
    add_error(s, "53400", "too many prepared statements (%d)", PGS_CLIENT_MAX_STATEMENTS);
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  if (pgs_session_maybe(sql, qlen)) {
    pgs_session_effects_t fx;
    pgs_session_analyze(sql, &fx);
    if (pgshard_ops(&fx) > 0 || sets_scs_off(&fx)) {
      if (pgshard_ops(&fx) > 0)
        add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                  "SET pgshard.* is taken in a simple query only");
      else
        add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "%s", scs_off_message);
      forget_stmt(s, name);
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      pgs_session_effects_free(&fx);
      return;
    }
    listen_prepared(s, &fx);
    check_session_effects(s, &fx, false, &stmt->set_ops);
    stmt->drops_prepared = (fx.flags & PGS_SESSION_DROPS_PREPARED) != 0;
    pgs_session_effects_free(&fx);
  }
  if (stmt->lexed == NULL && stmt->plan == NULL) {
    stmt->lexed = pgs_xmalloc(sizeof(*stmt->lexed));
    pgs_lex_init(stmt->lexed);
    pgs_status_t lex_status = pgs_lex(sql, qlen, stmt->lexed);
    if (lex_status == PGS_OK) stmt->plan = get_plan(s, stmt->lexed);
    if (lex_status != PGS_OK || stmt->plan->parse_failed) {
      /* Unreadable: refused here, as the server refuses a Parse it cannot
       * parse (and the name is then free, as there). */
      if (lex_status == PGS_ETOOBIG)
        add_error(s, "54000", "%s", too_many_literals);
      else if (lex_status != PGS_OK)
        add_error(s, "42601", "%s", unreadable);
      else
        add_error(s, stmt->plan->refuse_sqlstate, "%s", stmt->plan->refuse_message + 9);
      forget_stmt(s, name);
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    stmt->ntypes = ntypes;
    stmt->type_oids = pgs_xcalloc((size_t)ntypes + 1, sizeof(uint32_t));
    for (int i = 0; i < ntypes; i++) stmt->type_oids[i] = pgs_parse_type_oid(&parse, i);
  }
  if (stmt->plan->needs_columns && !s->rewritten) {
    /* INSERT INTO t VALUES: prepared with t's columns named. */
    pgs_buf_t *m = &s->message;
    size_t start = pgs_msg_begin(m, 'P');
    pgs_buf_put(m, name, strlen(name) + 1);
    if (insert_with_columns(s, sql, qlen, stmt->plan->needs_columns, m)) {
      const uint8_t *rest = (const uint8_t *)sql + qlen + 1; /* its parameter types */
      pgs_buf_put(m, rest, (size_t)(p + total - rest));
      pgs_msg_end(m, start);
      s->rewritten = true;
      forget_stmt(s, name);
      plan_parse(s, m->data, m->len, ahead, ahead_len);
      return;
    }
    m->len = 0;
  }
  if (stmt_is_local(s, stmt)) {
    add_reply(s, '1', NULL);
    return;
  }
  int slot = lookahead_slot(s, ahead, ahead_len, name, stmt);
  if (s->held) return; /* its Bind waits for a cutover hold: so does it */
  /* Placed on a replica its Bind picked: the turn of the round robin is
   * taken now. The Bind stays on the replica the unit uses (replica_kept)
   * and picks nothing, so otherwise the turn never moved on for
   * Parse/Bind/Execute/Sync units: every such read of a worker went to
   * one replica. */
  if (slot >= 0 && (slot & 1) && !replica_kept(s, slot / 2)) (void)s->ops->turn(s->ctx, true);
  pgs_step_t *st = slot >= 0 ? add_step(s, slot, PGS_STEP_PARSE, PGS_PLACED_ROUTE)
                             : add_step(s, parse_slot(s), PGS_STEP_PARSE, PGS_PLACED_SESSION);
  st->stmt = stmt;
}

static pgs_portal_t *put_portal(pgs_session_t *s, const char *name) {
  pgs_portal_t *portal = pgs_strmap_get(&s->portals, name);
  if (portal == NULL) {
    portal = pgs_xcalloc(1, sizeof(*portal));
    portal->owner = s;
    portal->charged = sizeof(*portal) + sizeof(pgs_strmap_entry_t) + strlen(name) + 1;
    charge(s, portal->charged, 0);
    pgs_strmap_put(&s->portals, name, portal);
  }
  free(portal->sql);
  portal->sql = NULL;
  portal->mask = 0;
  portal->kind = PGS_STMT_OTHER;
  portal->copies = false;
  portal->drops_prepared = false;
  pgs_plan_unref(portal->merge_plan);
  portal->merge_plan = NULL;
  pgs_plan_unref(portal->cursor_plan);
  portal->cursor_plan = NULL;
  pgs_set_ops_free(portal->set_ops);
  portal->set_ops = NULL;
  portal->unbound = 0;
  drop_gathered(portal);
  return portal;
}

/* What the parts of a merged portal bound later are sent: the shards'
 * statement and the client's Bind for it, as forward() builds them,
 * copied into PORTAL. */
static void keep_merged_bind(pgs_portal_t *portal, pgs_client_stmt_t *stmt,
                             const pgs_bind_msg_t *bind) {
  pgs_stmt_merge_variant(stmt);
  memcpy(portal->merge_name, stmt->merge_name, sizeof(portal->merge_name));
  portal->merge_body.len = 0;
  pgs_buf_put(&portal->merge_body, stmt->merge_body.data, stmt->merge_body.len);
  pgs_buf_t *b = &portal->merge_bind;
  b->len = 0;
  size_t start = pgs_msg_begin(b, 'B');
  pgs_buf_put(b, bind->portal, bind->portal_len + 1);
  pgs_buf_put_cstr(b, stmt->merge_name);
  pgs_bind_put_rest(b, bind, stmt->plan->merge->nhidden);
  pgs_msg_end(b, start);
  charge_portal(portal, bind->portal_len);
}

/* The variant of STMT's INSERT that SHARD gets: its rows, their
 * parameters numbered afresh (types and values picked from the client's),
 * bound as BIND's portal. False when the text cannot be split. */
static bool split_variant(pgs_session_t *s, const pgs_client_stmt_t *stmt,
                          const pgs_bind_msg_t *bind, const pgs_route_t *rt, int shard,
                          pgs_variant_t *v) {
  pgs_buf_t text;
  pgs_buf_init(&text);
  int nparams = bind->nparams, nused = 0;
  int *old_of = pgs_xcalloc((size_t)(nparams > 0 ? nparams : 1), sizeof(int));
  bool ok = pgs_route_split_insert(stmt->lexed, rt->row_shard, stmt->plan->nrows, shard, &text) ==
                PGS_OK &&
            pgs_route_renumber_params((const char *)text.data, text.len - 1, nparams, old_of,
                                      &nused, &v->body) == PGS_OK;
  pgs_buf_free(&text);
  if (!ok) {
    free(old_of);
    return false;
  }
  /* Parse body: the text, then the types of the parameters it keeps. */
  pgs_buf_put_u8(&v->body, '\0');
  pgs_buf_put_i16(&v->body, (int16_t)nused);
  for (int k = 0; k < nused; k++) {
    int old = old_of[k] - 1;
    pgs_buf_put_i32(&v->body, old < stmt->ntypes ? (int32_t)stmt->type_oids[old] : 0);
  }
  statement_server_name(v->body.data, v->body.len, v->name);
  /* Bind: the same portal and result formats; the parameters kept. */
  pgs_buf_t *b = &v->bind;
  size_t start = pgs_msg_begin(b, 'B');
  pgs_buf_put(b, bind->portal, bind->portal_len + 1);
  pgs_buf_put_cstr(b, v->name);
  if (bind->nformats <= 1) {
    pgs_buf_put_i16(b, (int16_t)bind->nformats);
    if (bind->nformats == 1) pgs_buf_put(b, bind->formats, 2);
  } else {
    pgs_buf_put_i16(b, (int16_t)nused);
    for (int k = 0; k < nused; k++) pgs_buf_put(b, bind->formats + 2 * (old_of[k] - 1), 2);
  }
  pgs_buf_put_i16(b, (int16_t)nused);
  for (int k = 0; k < nused; k++) {
    int old = old_of[k] - 1;
    pgs_buf_put_i32(b, s->param_len[old]);
    if (s->param_len[old] > 0) pgs_buf_put(b, s->param_data[old], (size_t)s->param_len[old]);
  }
  pgs_buf_put_i16(b, (int16_t)bind->nresults);
  pgs_buf_put(b, bind->results, 2 * (size_t)bind->nresults);
  pgs_msg_end(b, start);
  free(old_of);
  return true;
}

/* The Bind of a multi-row INSERT whose rows go to several shards: each
 * shard's writer is bound its own variant (its rows only); the portal is
 * then a write on those shards (Execute's counts summed, one BindComplete
 * for the client). */
static void plan_split_bind(pgs_session_t *s, const pgs_client_stmt_t *stmt,
                            const pgs_bind_msg_t *bind, const pgs_route_t *rt,
                            pgs_portal_t *portal) {
  pgs_variant_t *variants = pgs_xcalloc((size_t)s->nslots, sizeof(*variants));
  uint64_t mask = 0;
  bool ok = true;
  for (int i = 0; i < s->nslots / 2 && ok; i++) {
    if (!(rt->shards & BIT(i))) continue;
    if (place(s, i, stmt->plan) != 2 * i) {
      ok = false; /* refused (read-only, no writer): the step says why */
      break;
    }
    ok = split_variant(s, stmt, bind, rt, i, &variants[2 * i]);
    if (!ok)
      add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                "cannot split this INSERT's VALUES rows by shard");
    mask |= BIT(2 * i);
  }
  if (ok) {
    portal->kind = stmt->plan->kind;
    portal->mask = mask;
    portal->placed = PGS_PLACED_ROUTE;
    int first = s->nsteps;
    add_fanout(s, mask, PGS_STEP_BIND_VARIANT, NULL, false, PGS_PLACED_ROUTE);
    for (int i = first; i < s->nsteps; i++) {
      pgs_variant_t *v = pgs_xcalloc(1, sizeof(*v));
      *v = variants[s->steps[i].shard];
      memset(&variants[s->steps[i].shard], 0, sizeof(*v));
      s->steps[i].variant = v;
    }
  } else {
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
  }
  for (int i = 0; i < s->nslots; i++) {
    pgs_buf_free(&variants[i].body);
    pgs_buf_free(&variants[i].bind);
  }
  free(variants);
}

static void plan_bind(pgs_session_t *s, const uint8_t *p, size_t total) {
  pgs_bind_msg_t bind;
  pgs_param_values_t pv = {0};
  if (!read_bind(s, p + 5, total - 5, &bind, &pv)) {
    add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Bind message");
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  const char *portal_name = bind.portal, *stmt_name = bind.statement;
  pgs_client_stmt_t *stmt = find_stmt(s, stmt_name);
  if (stmt && stmt->lexed) note_query(s, stmt->lexed);
  if (stmt == NULL || stmt->plan == NULL) {
    no_such_statement(s, stmt_name);
    return;
  }
  pgs_portal_t *portal = put_portal(s, portal_name);
  portal->drops_prepared = stmt->drops_prepared;
  portal->set_ops = set_ops_copy(stmt->set_ops); /* taken at its Execute */
  const pgs_plan_t *plan = stmt->plan;
  if ((s->ex.tx == PGS_TX_ABORTED) && plan->kind != PGS_STMT_COMMIT &&
      plan->kind != PGS_STMT_ROLLBACK) {
    add_error(s, "25P02",
              "current transaction is aborted, commands ignored until end of transaction block");
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  if (stmt_is_local(s, stmt)) {
    portal->kind = plan->kind;
    portal->read_only = plan->read_only_tx;
    size_t qlen = strnlen((const char *)stmt->parse_body.data, stmt->parse_body.len);
    portal->sql = pgs_xstrndup((const char *)stmt->parse_body.data, qlen);
    add_reply(s, '2', NULL);
    return;
  }
  pgs_portal_t *cursor = plan->cursor_op == PGS_CURSOR_FETCH ||
                                 plan->cursor_op == PGS_CURSOR_MOVE ||
                                 plan->cursor_op == PGS_CURSOR_CLOSE
                             ? pgs_strmap_get(&s->cursors, plan->cursor_name)
                             : NULL;
  if (cursor && cursor->mask == 0) {
    /* Of a cursor pgshard gathered: answered at its Execute. */
    portal->kind = plan->kind;
    portal->cursor_plan = stmt->plan;
    stmt->plan->refcount++;
    add_reply(s, '2', NULL);
    return;
  }
  if (cursor) {
    /* Of a cursor on one shard's server: there. */
    portal->kind = plan->kind;
    portal->mask = cursor->mask;
    portal->placed = PGS_PLACED_ROUTE;
    add_fanout(s, portal->mask, PGS_STEP_FORWARD, NULL, false, portal->placed);
    return;
  }
  pv.type_oid = stmt->type_oids;
  pv.ntypes = stmt->ntypes;
  if (plan->cursor_op == PGS_CURSOR_DECLARE) {
    /* A cursor over several shards: declared (gathered) at its Execute,
     * with the values bound now. */
    const char *text = (const char *)stmt->parse_body.data;
    size_t qlen = strnlen(text, stmt->parse_body.len), at;
    pgs_lexed_t lexed;
    pgs_plan_t *inner;
    pgs_lex_init(&lexed);
    bool gathers = declare_gathers(s, text, qlen, &lexed, &inner, &at, &pv);
    if (gathers) {
      portal->kind = plan->kind;
      portal->sql = pgs_xstrndup(text, qlen);
      portal->cursor_plan = stmt->plan;
      stmt->plan->refcount++;
      if (bind.nparams > 0)
        keep_declare_bind(portal, stmt, &bind, inner, &lexed, text + at, qlen - at);
      add_reply(s, '2', NULL);
    }
    pgs_plan_unref(inner);
    pgs_lex_free(&lexed);
    if (gathers) return;
  }
  pgs_route_t rt;
  if (plan->kind == PGS_STMT_SESSION || plan->kind == PGS_STMT_COMMIT ||
      plan->kind == PGS_STMT_ROLLBACK) {
    bool first_shard = plan->notifies || plan->advisory;
    portal->mask = first_shard ? BIT(NOTIFY_SLOT) : session_mask(s);
    portal->placed = first_shard ? PGS_PLACED_ROUTE : PGS_PLACED_SESSION;
    if (plan->tx_replayable) {
      size_t qlen = strnlen((const char *)stmt->parse_body.data, stmt->parse_body.len);
      portal->sql = pgs_xstrndup((const char *)stmt->parse_body.data, qlen);
    }
  } else if (!route(s, plan, stmt->lexed, &pv, &rt)) {
    if (!s->held) pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else if (rt.kind == PGS_ROUTE_SPLIT && implicit_twopc(s, plan, rt.shards)) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "a write on several shards in the extended query protocol is made atomic "
              "(cross_shard_writes = 2pc) only inside a transaction: wrap it in BEGIN/COMMIT");
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else if (rt.kind == PGS_ROUTE_SPLIT) {
    plan_split_bind(s, stmt, &bind, &rt, portal);
    return;
  } else if (rt.kind == PGS_ROUTE_MERGE) {
    pgs_value_error_t err;
    portal->mask = fan_slots(s, &rt, plan);
    if (portal->mask == 0) {
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    if (pgs_merge_limits(plan->merge, stmt->lexed, &pv, &portal->limit, &portal->offset, &err) !=
        PGS_OK) {
      add_error(s, err.sqlstate, "%s", err.message);
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    portal->kind = plan->kind;
    portal->merge_plan = stmt->plan;
    stmt->plan->refcount++;
    /* One part binds it now, the session's own when it can (no wait), and
     * answers the client; the others are sent the Bind with their Execute. */
    int slot = s->cur >= 0 && (portal->mask & BIT(s->cur)) ? s->cur : first_bit(portal->mask);
    portal->unbound = portal->mask & ~BIT(slot);
    if (portal->unbound) keep_merged_bind(portal, stmt, &bind);
    portal->placed = PGS_PLACED_ROUTE;
    add_step(s, slot, PGS_STEP_FORWARD, PGS_PLACED_ROUTE)->merged = true;
    return;
  } else if (plan->kind == PGS_STMT_COPY_FROM && (rt.kind == PGS_ROUTE_FANOUT || plan->table)) {
    /* Its rows are split by key (plan_copy_in) only from a Query: sent as
     * it is, its CopyData would go to one shard unchecked, and the parts
     * after the first would wait for it while it waits for its data. */
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "COPY FROM STDIN into a sharded table, or into several shards, is split by key "
              "only in a simple query; send it with the simple query protocol");
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else if (rt.kind == PGS_ROUTE_FANOUT && implicit_twopc(s, plan, rt.shards)) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "a write on several shards in the extended query protocol is made atomic "
              "(cross_shard_writes = 2pc) only inside a transaction: wrap it in BEGIN/COMMIT");
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  } else {
    portal->mask = placed_mask(s, &rt, plan);
    portal->placed = PGS_PLACED_ROUTE;
    if (portal->mask == 0) {
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
  }
  portal->kind = plan->kind;
  /* Copies: DDL and reference tables, and session statements (each server
   * does the same; one answers). */
  portal->copies = plan->target == PGS_TARGET_ANY || portal->placed == PGS_PLACED_SESSION;
  add_fanout(s, portal->mask, PGS_STEP_FORWARD, NULL, false, portal->placed);
  if (plan->cursor_op == PGS_CURSOR_DECLARE && portal->placed == PGS_PLACED_ROUTE)
    put_cursor(s, plan->cursor_name, plan->cursor_hold)->mask = portal->mask; /* FETCH: there */
}

/* Describe, Execute (TYPE) or Close of PORTAL, a SQL cursor statement on a
 * cursor pgshard gathers: answered here (a DECLARE's Execute gathers). */
static void plan_local_cursor(pgs_session_t *s, pgs_portal_t *portal, char type) {
  const pgs_plan_t *plan = portal->cursor_plan;
  pgs_portal_t *cursor = pgs_strmap_get(&s->cursors, plan->cursor_name);
  if (type == 'C' || (type == 'D' && (plan->cursor_op != PGS_CURSOR_FETCH || cursor == NULL))) {
    add_reply(s, type == 'D' ? 'n' : '3', NULL);
    return;
  }
  if (plan->cursor_op == PGS_CURSOR_DECLARE) {
    if (!plan_declare(s, portal->sql, strlen(portal->sql), plan, false, portal)) {
      add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                "this cursor's query no longer runs over several shards; declare it again");
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    }
    return;
  }
  if (cursor == NULL || cursor->mask) {
    add_error(s, "34000", "cursor \"%s\" does not exist", plan->cursor_name);
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  if (plan->cursor_op == PGS_CURSOR_CLOSE) {
    add_reply(s, 'C', "CLOSE CURSOR");
    pgs_session_drop_cursor(s, cursor);
    return;
  }
  if (type == 'E' && !plan->fetch_forward) {
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "cursor \"%s\" runs over several shards and fetches forward only (FETCH n, NEXT, "
              "ALL)",
              plan->cursor_name);
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return;
  }
  pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_ROWS, PGS_PLACED_NONE);
  st->text = pgs_xstrdup(plan->cursor_name);
  st->rows = plan->fetch_count < 0 ? 0 : plan->fetch_count;
  st->fetch = type == 'D'                          ? PGS_FETCH_DESCRIBE
              : plan->cursor_op == PGS_CURSOR_MOVE ? PGS_FETCH_MOVE
                                                   : PGS_FETCH_ROWS;
}

/* Describe, Execute or Close of a portal: where it was bound. */
static void plan_portal_message(pgs_session_t *s, char type, const char *name, int32_t max_rows) {
  pgs_portal_t *portal = pgs_strmap_get(&s->portals, name);
  pgs_portal_t *cursor = portal ? NULL : pgs_strmap_get(&s->cursors, name);
  if (cursor && type != 'E') {
    /* A SQL cursor is a portal too: described or closed by name. */
    if (cursor->mask) {
      add_fanout(s, cursor->mask, PGS_STEP_FORWARD, NULL, false, PGS_PLACED_ROUTE);
    } else if (type == 'D') {
      pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_ROWS, PGS_PLACED_NONE);
      st->text = pgs_xstrdup(name);
      st->fetch = PGS_FETCH_DESCRIBE;
    } else {
      add_reply(s, '3', NULL);
    }
    if (type == 'C') pgs_session_drop_cursor(s, cursor);
    return;
  }
  if (portal == NULL) {
    if (type == 'C') {
      add_reply(s, '3', NULL); /* closing what does not exist is no error */
    } else {
      if (name[0])
        add_error(s, "34000", "portal \"%s\" does not exist", name);
      else
        add_error(s, "34000", "unnamed portal does not exist");
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    }
    return;
  }
  if (portal->mask == 0 && portal->cursor_plan) {
    plan_local_cursor(s, portal, type);
  } else if (portal->mask == 0 && type != 'E') {
    /* Answered by pgshard: BEGIN/COMMIT/ROLLBACK. */
    add_reply(s, type == 'D' ? 'n' : '3', NULL);
  } else if (portal->mask == 0 && set_ops_listen(portal->set_ops)) {
    plan_listen(s, set_ops_listen(portal->set_ops), false, false);
  } else if (portal->mask == 0) {
    if (portal->kind == PGS_STMT_BEGIN)
      plan_begin(s, portal->sql, portal->read_only, false);
    else
      plan_tx_end(s, portal->kind, portal->sql, false);
  } else if (portal->merge_plan && type == 'D') {
    /* Any part it is bound on describes it (the one the session is on: no
     * wait); its hidden columns stay hidden. */
    uint64_t bound = portal->mask & ~portal->unbound;
    int slot = s->cur >= 0 && (bound & BIT(s->cur)) ? s->cur : first_bit(bound);
    pgs_step_t *st = add_step(s, slot, PGS_STEP_FORWARD, PGS_PLACED_ROUTE);
    st->rule.hide = (int16_t)portal->merge_plan->merge->nhidden;
  } else if (portal->merge_plan && type == 'E' && portal->gathered) {
    /* Fetched in parts: the next ones are pgshard's to hand out. */
    pgs_step_t *st = pgs_steps_add(s, -1, PGS_STEP_ROWS, PGS_PLACED_NONE);
    st->text = pgs_xstrdup(name);
    st->rows = max_rows;
    st->fetch = PGS_FETCH_EXECUTE;
  } else if (portal->merge_plan && type == 'E') {
    /* With a row limit (a driver's fetch size), the parts run whole and
     * the merged rows are gathered in the portal, handed out in parts. */
    order_fan(s, portal->merge_plan, portal->mask, portal->limit, portal->offset, false);
    if (max_rows > 0) {
      portal->busy = true;
      s->fan_order->portal = portal;
      s->fan_order->max_rows = max_rows;
    }
    add_fan_steps(s, portal->mask, PGS_STEP_FAN_EXEC, NULL);
  } else {
    /* A merged portal is closed where it is bound. */
    if (type == 'E' && portal->sql && !keep_for_replay(s, true, portal->sql)) {
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    s->ex.copies = portal->copies;
    if (type == 'E') set_ops_apply(s, portal->set_ops); /* a prepared SET runs now */
    int first = s->nsteps;
    add_fanout(s, portal->mask & ~portal->unbound, PGS_STEP_FORWARD, NULL, type == 'E',
               portal->placed);
    if (type == 'E' && portal->drops_prepared) mark_drops_prepared(s, first);
  }
  if (type == 'C') {
    pgs_portal_t *gone = pgs_strmap_remove(&s->portals, name);
    if (gone) pgs_session_free_portal(gone);
  }
}

static void close_portal(void *p) {
  pgs_portal_t *portal = p;
  if (portal->busy)
    portal->closed = true;
  else
    pgs_session_free_portal(portal);
}

static void plan_sync(pgs_session_t *s) {
  uint64_t mask = s->unit_mask;
  s->unit_mask = 0;
  if (!pgs_exchange_in_tx(&s->ex)) {
    /* The transaction's portals end; one a fan still gathers into (its
     * Sync went out with the parts) is the fan's to free. */
    pgs_strmap_free(&s->portals, close_portal);
    pgs_strmap_init(&s->portals);
    pgs_strmap_free(&s->portal_set_ops, pgs_set_ops_free);
    pgs_strmap_init(&s->portal_set_ops);
  }
  if (mask == 0) {
    add_reply(s, 'Z', NULL);
    return;
  }
  /* Every server of the unit at once; the last ReadyForQuery to arrive is
   * the client's, with every shard's status known by then. Each server's
   * earlier replies precede its own ReadyForQuery, and servers outside
   * the unit have answered (a step for another server waited for them). */
  int n = __builtin_popcountll(mask);
  for (int i = 0; i < s->nslots; i++) {
    if (!(mask & BIT(i))) continue;
    pgs_step_t *st = add_step(s, i, PGS_STEP_SYNC, PGS_PLACED_SESSION);
    st->always = true;
    if (n > 1) {
      st->concurrent = true;
      st->rule.ready = PGS_ON_READY_LAST_OF_N;
    }
  }
  if (n > 1) s->ex.ready_pending = n;
}

/* A Describe or Close message P (TOTAL bytes) read into TARGET: one kind
 * byte ('S' or 'P') and one name ending with the message. */
static bool read_target(char type, const uint8_t *p, size_t total, pgs_describe_msg_t *target) {
  return (type == 'D' ? pgs_describe_read(p + 5, total - 5, target)
                      : pgs_close_read(p + 5, total - 5, target)) == PGS_OK;
}

/* A Query or Parse P naming one of pgshard's own server-side statements
 * in SQL (reserved.h) is refused: the error step is added. */
static bool names_reserved_statement(pgs_session_t *s, char type, const uint8_t *p, size_t total) {
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
    add_error(s, "42939", "prepared statement names starting with \"%s\" are reserved for pgshard",
              PGS_RESERVED_PREFIX);
  else
    add_error(s, "26000", "prepared statement \"%s\" does not exist", name);
  if (type == 'Q')
    add_reply(s, 'Z', NULL);
  else
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
  return true;
}

/* Pass-through: PORTAL is bound from a statement whose SETs are OPS (NULL:
 * none), taken when it is executed. False, with the error planned, when
 * the session has too many such portals to keep. */
static bool bind_set_ops(pgs_session_t *s, const char *portal, const pgs_set_ops_t *ops) {
  pgs_set_ops_free(pgs_strmap_remove(&s->portal_set_ops, portal));
  if (ops == NULL) return true;
  if (s->portal_set_ops.count >= PGS_CLIENT_MAX_STATEMENTS) {
    add_error(s, "53400", "too many portals bound from SET statements (%d)",
              PGS_CLIENT_MAX_STATEMENTS);
    pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    return false;
  }
  pgs_strmap_put(&s->portal_set_ops, portal, set_ops_copy(ops));
  return true;
}

/* Plan one complete client message at in_pos. */
void pgs_plan_message(pgs_session_t *s, char type, const uint8_t *p, size_t total,
                      const uint8_t *ahead, size_t ahead_len) {
  begin_plan(s);
  if ((type == 'Q' || type == 'P') && names_reserved_statement(s, type, p, total)) return;
  if (!s->routing) {
    /* One shard: everything to it, as a pooler would. */
    if (type == 'P') {
      /* Its name and text; the rest is the server's to judge. */
      pgs_parse_msg_t parse;
      bool bad = pgs_parse_read_head(p + 5, total - 5, &parse) != PGS_OK;
      const char *name = parse.name, *sql = parse.query;
      size_t qlen = parse.query_len;
      bool drops = false;
      pgs_set_ops_t *set_ops = NULL;
      if (sql && pgs_session_maybe(sql, qlen)) {
        pgs_session_effects_t fx;
        pgs_session_analyze(sql, &fx);
        listen_prepared(s, &fx);
        check_session_effects(s, &fx, false, &set_ops);
        drops = (fx.flags & PGS_SESSION_DROPS_PREPARED) != 0;
        pgs_session_effects_free(&fx);
      }
      pgs_client_stmt_t *stmt = NULL;
      if (bad) {
        add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Parse message");
        pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
        return;
      }
      if (parse.name_len > 0) {
        stmt = remember_parse(s, name, parse.after_name, parse.after_name_len);
        if (stmt == NULL) {
          /* Never under the client's own name: a shared server would keep
           * it for whoever comes next. */
          add_error(s, "53400", "too many prepared statements (%d)", PGS_CLIENT_MAX_STATEMENTS);
          pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
          pgs_set_ops_free(set_ops);
          return;
        }
      }
      if (stmt) stmt->drops_prepared = drops;
      /* Its SETs are the session's when a portal bound from it runs. */
      pgs_set_ops_t **keep = stmt ? &stmt->set_ops : &s->unnamed_set_ops;
      pgs_set_ops_free(*keep);
      *keep = set_ops;
      /* Without a name the Execute cannot be told apart: forget at Parse. */
      add_step(s, 0, stmt ? PGS_STEP_PARSE : PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH)->stmt = stmt;
      if (drops && stmt == NULL) mark_drops_prepared(s, 0);
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
          plan_query(s, p, total);
          return;
        }
        if (forget_deallocated(s, &fx, true) || plan_listen_query(s, &fx)) {
          pgs_session_effects_free(&fx);
          return;
        }
        check_session_effects(s, &fx, true, NULL);
        bool drops = (fx.flags & PGS_SESSION_DROPS_PREPARED) != 0;
        pgs_session_effects_free(&fx);
        if (drops) {
          add_step(s, 0, PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH);
          mark_drops_prepared(s, 0);
          return;
        }
      }
    }
    pgs_describe_msg_t target = {0};
    if ((type == 'C' || type == 'D') && !read_target(type, p, total, &target)) {
      add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid %s message",
                type == 'D' ? "Describe" : "Close");
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    if (type == 'C' && target.kind == 'S' && target.name_len > 0) {
      /* The server keeps it for the next client that prepares the same
       * statement; only the client's name goes. */
      forget_stmt(s, target.name);
      add_reply(s, '3', NULL);
      return;
    }
    if (type == 'S') {
      plan_sync(s);
      return;
    }
    if (type == 'B' || (type == 'D' && target.kind == 'S')) {
      /* A statement name reaches the server only as one the client
       * prepared (mapped to the server's name by forward()); the unnamed
       * one only on the server the client parsed it on. */
      const char *name = target.name;
      pgs_bind_msg_t bind = {0};
      if (type == 'B') {
        /* Its names; the rest is the server's to judge. */
        if (pgs_bind_read_head(p + 5, total - 5, &bind) != PGS_OK) {
          add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Bind message");
          pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
          return;
        }
        name = bind.statement;
      }
      pgs_client_stmt_t *stmt = name[0] ? find_stmt(s, name) : NULL;
      if (name[0] ? stmt == NULL : !s->ops->owns_unnamed(s->ctx)) {
        no_such_statement(s, name);
        return;
      }
      if (type == 'B' && !bind_set_ops(s, bind.portal, stmt ? stmt->set_ops : s->unnamed_set_ops))
        return;
      add_step(s, 0, PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH);
      /* Bind of DEALLOCATE ALL / DISCARD ALL: its server forgets (the
       * Execute follows on the same server). */
      if (type == 'B' && stmt && stmt->drops_prepared) mark_drops_prepared(s, 0);
      return;
    }
    if (type == 'E' && s->portal_set_ops.count > 0) {
      pgs_execute_msg_t execute;
      const pgs_set_ops_t *ops = NULL;
      if (pgs_execute_read(p + 5, total - 5, &execute) == PGS_OK)
        ops = pgs_strmap_get(&s->portal_set_ops, execute.portal);
      if (listens_locally(s) && set_ops_listen(ops)) {
        /* Bound on the server, where it never runs: pgshard's to do. */
        plan_listen(s, set_ops_listen(ops), false, false);
        return;
      }
      set_ops_apply(s, ops);
    }
    if (type == 'C' && target.kind == 'P') {
      pgs_set_ops_free(pgs_strmap_remove(&s->portal_set_ops, target.name));
    }
    add_step(s, 0, PGS_STEP_FORWARD, PGS_PLACED_PASSTHROUGH);
    return;
  }
  switch (type) {
  case 'Q':
    plan_query(s, p, total);
    return;
  case 'P':
    plan_parse(s, p, total, ahead, ahead_len);
    return;
  case 'B':
    plan_bind(s, p, total);
    return;
  case 'D':
  case 'C': {
    pgs_describe_msg_t target;
    bool ok = read_target(type, p, total, &target);
    const char *name = target.name;
    if (!ok) {
      add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid %s message",
                type == 'D' ? "Describe" : "Close");
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
    } else if (target.kind == 'P') {
      plan_portal_message(s, type, name, 0);
    } else if (type == 'C') {
      pgs_client_stmt_t *stmt = pgs_strmap_remove(&s->stmts, name);
      if (stmt) pgs_session_free_stmt(stmt);
      add_reply(s, '3', NULL);
    } else {
      pgs_client_stmt_t *stmt = find_stmt(s, name);
      if (stmt == NULL) {
        no_such_statement(s, name);
      } else if (stmt_is_local(s, stmt)) {
        add_reply(s, 't', NULL);
        add_reply(s, 'n', NULL);
      } else {
        /* Any server describes it alike: where the session is. */
        add_step(s, parse_slot(s), PGS_STEP_FORWARD, PGS_PLACED_SESSION);
      }
    }
    return;
  }
  case 'E': {
    pgs_execute_msg_t execute;
    if (pgs_execute_read(p + 5, total - 5, &execute) != PGS_OK) {
      add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Execute message");
      pgs_session_set_unit(s, PGS_UNIT_SKIP_TO_SYNC);
      return;
    }
    plan_portal_message(s, 'E', execute.portal, execute.max_rows);
    return;
  }
  case 'S':
    plan_sync(s);
    return;
  case 'H':
    if (s->cur >= 0) add_step(s, s->cur, PGS_STEP_FORWARD, PGS_PLACED_SESSION);
    return;
  case 'd':
  case 'c':
  case 'f':
    /* COPY data goes where the COPY went. */
    if (s->cur >= 0) add_step(s, s->cur, PGS_STEP_FORWARD, PGS_PLACED_SESSION);
    return;
  case 'F':
    /* Its function and arguments are not SQL pgshard can route (and a
     * call may write): refused, like anything else it cannot place. */
    add_error(s, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "the FunctionCall message is not routed; call the function in a query "
              "(SELECT f($1))");
    add_reply(s, 'Z', NULL);
    return;
  default:
    /* pgs_frontend_type_valid let nothing else through. */
    add_error(s, PGS_SQLSTATE_PROTOCOL_VIOLATION, "unexpected message type '%c'", type);
    add_reply(s, 'Z', NULL);
    return;
  }
}

void pgs_plan_cutover_retry(pgs_session_t *s, char type, const uint8_t *p, size_t total) {
  begin_plan(s);
  pgs_parse_msg_t parse;
  if (type == 'P' && pgs_parse_read_head(p + 5, total - 5, &parse) == PGS_OK)
    forget_stmt(s, parse.name); /* remembered when it first waited */
  add_error(s, "40001",
            "the shard map changed during this transaction (resharding cutover); retry the "
            "transaction");
  if (type == 'Q') add_reply(s, 'Z', NULL);
}

/* The message at in_pos is refused for going over the budget KEY: its
 * plan is one error (the rest of an extended unit is skipped to Sync). */
void pgs_plan_over_budget(pgs_session_t *s, const char *key, long long limit) {
  begin_plan(s);
  add_error(s, PGS_SQLSTATE_OUT_OF_MEMORY,
            "out of memory: this statement would take what pgshard keeps for %s over %s "
            "(%lld bytes); close prepared statements the session no longer needs",
            strcmp(key, "max_client_memory") ? "all clients" : "this client", key, limit);
}

/* The index in DB of the shard that was OLD_INDEX in OLD, or -1. */
static int same_shard(const pgs_database_t *old, int old_index, const pgs_database_t *db) {
  if (old_index < 0 || old_index >= old->nshards) return -1;
  return pgs_shardmap_find_shard(db, old->shards[old_index].name);
}

/* A prepared statement of a client that did not route (its Parse was not
 * analysed), analysed for one that now does. False: it cannot be read. */
static bool analyse_stmt(pgs_session_t *s, pgs_client_stmt_t *stmt) {
  const pgs_buf_t *pb = &stmt->parse_body;
  pgs_parse_msg_t parse;
  if (pgs_parse_read_after_name(pb->data, pb->len, &parse) != PGS_OK) return false;
  int ntypes = parse.ntypes;
  stmt->lexed = pgs_xmalloc(sizeof(*stmt->lexed));
  pgs_lex_init(stmt->lexed);
  if (pgs_lex(parse.query, parse.query_len, stmt->lexed) != PGS_OK) return false;
  stmt->plan = get_plan(s, stmt->lexed);
  if (stmt->plan->parse_failed) return false;
  stmt->ntypes = ntypes;
  stmt->type_oids = pgs_xcalloc((size_t)ntypes + 1, sizeof(uint32_t));
  for (int i = 0; i < ntypes; i++) stmt->type_oids[i] = pgs_parse_type_oid(&parse, i);
  return true;
}

static void reanalyse_stmts(pgs_session_t *s) {
  pgs_strmap_t *map = &s->stmts;
  for (size_t b = 0; b < map->nbuckets; b++) {
    for (pgs_strmap_entry_t *e = map->buckets[b], *next; e; e = next) {
      next = e->next;
      pgs_client_stmt_t *stmt = e->value;
      pgs_buf_free(&stmt->merge_body);
      stmt->merge_name[0] = '\0';
      if (stmt->lexed) {
        pgs_plan_unref(stmt->plan);
        stmt->plan = get_plan(s, stmt->lexed);
      } else if (s->routing && !analyse_stmt(s, stmt)) {
        /* Unreadable to the new map (the old one did not route): forgotten,
         * so a Bind of it gets 26000 rather than a guess. */
        pgs_strmap_remove(map, e->key);
        pgs_session_free_stmt(stmt);
      }
    }
  }
}
size_t pgs_plan_cost(const pgs_session_t *s, char type, const uint8_t *p, size_t total) {
  pgs_parse_msg_t parse;
  pgs_bind_msg_t bind;
  bool malformed = type == 'B' ? pgs_bind_read_head(p + 5, total - 5, &bind) != PGS_OK
                               : pgs_parse_read_head(p + 5, total - 5, &parse) != PGS_OK;
  if (malformed) return 0; /* judged where it is planned */
  if (type == 'B')         /* a portal, and for a merge the statement and Bind copied */
    return s->routing ? sizeof(pgs_portal_t) + 2 * total : 0;
  const char *name = parse.name;
  if (!s->routing && parse.name_len == 0) return 0; /* an unnamed statement is not kept */
  const uint8_t *body = parse.after_name;
  size_t len = parse.after_name_len;
  size_t cost = stmt_charge(s, name, len);
  const pgs_client_stmt_t *old = pgs_strmap_get(&s->stmts, name);
  if (old && old->parse_body.len == len && !memcmp(old->parse_body.data, body, len)) return 0;
  if (old) cost = cost > old->charged ? cost - old->charged : 0;
  return cost;
}

/* ---- a reload ---- */

bool pgs_session_move(pgs_session_t *s, const pgs_database_t *db, char sqlstate[6], char *message,
                      size_t cap) {
  const pgs_database_t *old = s->db;
  int hint = s->hint_shard >= 0 ? same_shard(old, s->hint_shard, db) : -1;
  if (s->hint_shard >= 0 && hint < 0) {
    snprintf(sqlstate, 6, "22023");
    snprintf(message, cap,
             "shard \"%s\" set by pgshard.shard is no longer in database \"%s\" (reload)",
             old->shards[s->hint_shard].name, s->dbname);
    return false;
  }
  pgs_key_t *tenant = NULL;
  if (s->tenant_text) {
    pgs_key_error_t why;
    tenant = typed_tenant(db, s->tenant_text, &why);
    if (tenant == NULL) {
      snprintf(sqlstate, 6, "%s", why.sqlstate);
      snprintf(message, cap, "tenant \"%s\" after reload: %s", s->tenant_text, why.message);
      return false;
    }
  }
  /* Per-shard state, by shard name. */
  int nslots = 2 * db->nshards;
  uint64_t *old_commit_ms = s->ryw_commit_ms, *old_lsn = s->ryw_lsn;
  per_shard_alloc(s, db->nshards);
  for (int i = 0; i < old->nshards; i++) {
    int j = same_shard(old, i, db);
    if (j < 0) continue;
    s->ryw_commit_ms[j] = old_commit_ms[i];
    s->ryw_lsn[j] = old_lsn[i];
  }
  free(old_commit_ms); /* the old block */
  int last = same_shard(old, s->last_shard, db);
  s->nslots = nslots;
  if (s->steps_cap < nslots + 4) {
    PGS_ASSERT(s->nsteps == 0);
    free(s->steps);
    s->steps = NULL;
    s->steps_cap = nslots + 4;
  }
  s->hint_shard = hint;
  s->last_shard = last >= 0 ? last : 0;
  if (!(s->linked & BIT(s->cur >= 0 ? s->cur : 0))) s->cur = -1;
  pgs_strmap_free(&s->portals, pgs_session_free_portal);
  pgs_strmap_init(&s->portals);
  s->db = db;
  s->routing = routes(s, db);
  if (tenant) take_tenant(s, tenant, s->tenant_text);
  reanalyse_stmts(s);
  return true;
}
