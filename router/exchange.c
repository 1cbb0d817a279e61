/*
 * exchange.c — the verdict on each server reply, the queue of replies a
 * server owes, and the checked state setters of a session. See exchange.h.
 *
 * pgs_replies_take is the one place that decides what a client sees of a
 * server's reply. It is a function of the queue's head (the request the
 * reply answers, with its rule), the queue's skipping state and the
 * session's reply bookkeeping; it returns a verdict and touches nothing
 * else, so the connection layer only carries it out.
 */
#include <string.h>

#include "pgshard/exchange.h"
#include "pgshard/route.h"

/* ---- the queue ---- */

void pgs_replies_init(pgs_replies_t *q, pgs_forget_cb forget, void *arg) {
  memset(q, 0, sizeof(*q));
  q->forget = forget;
  q->forget_arg = arg;
}

void pgs_replies_free(pgs_replies_t *q) {
  free(q->ring);
  q->ring = NULL;
  q->head = q->len = q->cap = 0;
}

void pgs_replies_push(pgs_replies_t *q, pgs_expect_kind_t kind, pgs_reply_rule_t rule,
                      const char *stmt) {
  if (q->len == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 64;
    pgs_expect_t *ring = pgs_xmalloc(cap * sizeof(*ring));
    for (size_t i = 0; i < q->len; i++) ring[i] = q->ring[(q->head + i) % q->cap];
    free(q->ring);
    q->ring = ring;
    q->cap = cap;
    q->head = 0;
  }
  pgs_expect_t *e = &q->ring[(q->head + q->len) % q->cap];
  e->kind = (uint8_t)kind;
  e->rule = rule;
  size_t n = stmt ? strnlen(stmt, sizeof(e->stmt) - 1) : 0; /* cut as snprintf would */
  memcpy(e->stmt, stmt ? stmt : "", n);
  e->stmt[n] = '\0';
  q->len++;
}

pgs_expect_t *pgs_replies_front(pgs_replies_t *q) { return q->len ? &q->ring[q->head] : NULL; }

void pgs_replies_pop(pgs_replies_t *q) {
  PGS_ASSERT(q->len > 0);
  q->head = (q->head + 1) % q->cap;
  q->len--;
}

bool pgs_replies_skips_next(const pgs_replies_t *q) {
  if (!q->skipping) return false;
  for (size_t i = 0; i < q->len; i++)
    if (q->ring[(q->head + i) % q->cap].kind == PGS_EXP_SYNC) return false;
  return true;
}

int pgs_replies_readies_owed(const pgs_replies_t *q, bool *open_unit) {
  int readies = 0;
  *open_unit = false;
  for (size_t i = 0; i < q->len; i++) {
    const pgs_expect_t *e = &q->ring[(q->head + i) % q->cap];
    if (e->rule.internal) continue;
    bool ends = e->kind == PGS_EXP_SYNC || e->kind == PGS_EXP_QUERY;
    readies += ends;
    *open_unit = !ends;
  }
  return readies;
}

char pgs_replies_pop_synthetic(pgs_replies_t *q) {
  pgs_expect_t *e = pgs_replies_front(q);
  if (e == NULL || (e->kind != PGS_EXP_SYNTH_PARSE && e->kind != PGS_EXP_SYNTH_CLOSE)) return 0;
  char type = e->kind == PGS_EXP_SYNTH_PARSE ? '1' : '3';
  pgs_replies_pop(q);
  return type;
}

/* After an error in the extended protocol the server skips every message
 * up to the next Sync: so do the replies it owes. A fan part queued behind
 * the failed message is skipped too and the fan must hear of it (its own
 * errors reach it as replies). FAILED_FAN: the failed message was a fan
 * part itself. */
static bool skip_to_sync(pgs_replies_t *q, bool failed_fan) {
  pgs_expect_t *front;
  bool part_skipped = false;
  while ((front = pgs_replies_front(q)) && front->kind != PGS_EXP_SYNC) {
    if (front->kind == PGS_EXP_PARSE && front->stmt[0] && q->forget)
      q->forget(q->forget_arg, front->stmt);
    part_skipped |= !failed_fan && front->rule.fan;
    pgs_replies_pop(q);
  }
  return part_skipped;
}

/* ---- states ---- */

static const char *const req_names[] = {"idle", "running", "draining", "held"};
static const char *const unit_names[] = {"clean", "skip-to-sync"};
static const char *const tx_names[] = {"none", "open", "aborted", "preparing", "decided"};

const char *pgs_req_state_name(pgs_req_state_t state) {
  return (unsigned)state < PGS_REQ_NSTATES ? req_names[state] : "?";
}
const char *pgs_unit_state_name(pgs_unit_state_t state) {
  return (unsigned)state < PGS_UNIT_NSTATES ? unit_names[state] : "?";
}
const char *pgs_tx_state_name(pgs_tx_state_t state) {
  return (unsigned)state < PGS_TX_NSTATES ? tx_names[state] : "?";
}

/* Rows: from; columns: to. Staying put is always allowed; so is going
 * back to IDLE (a refusal or a lost server ends the request anywhere). A
 * held client is planned again when what held it ended before a reply
 * woke it (its own next bytes came first). */
static const bool req_ok[PGS_REQ_NSTATES][PGS_REQ_NSTATES] = {
    /*              idle  running draining held */
    [PGS_REQ_IDLE] = {1, 1, 0, 1},
    [PGS_REQ_RUNNING] = {1, 1, 1, 0},
    [PGS_REQ_DRAINING] = {1, 1, 1, 0},
    [PGS_REQ_HELD] = {1, 1, 0, 1},
};

/* A transaction ends (NONE) from anywhere: COMMIT, ROLLBACK, a failed
 * two-phase commit, a lost session. */
static const bool tx_ok[PGS_TX_NSTATES][PGS_TX_NSTATES] = {
    /*                 none open aborted preparing decided */
    [PGS_TX_NONE] = {1, 1, 0, 1, 0},    [PGS_TX_OPEN] = {1, 1, 1, 1, 0},
    [PGS_TX_ABORTED] = {1, 0, 1, 0, 0}, [PGS_TX_PREPARING] = {1, 0, 0, 1, 1},
    [PGS_TX_DECIDED] = {1, 0, 0, 0, 1},
};

bool pgs_req_transition_ok(pgs_req_state_t from, pgs_req_state_t to) {
  return (unsigned)from < PGS_REQ_NSTATES && (unsigned)to < PGS_REQ_NSTATES && req_ok[from][to];
}

bool pgs_tx_transition_ok(pgs_tx_state_t from, pgs_tx_state_t to) {
  return (unsigned)from < PGS_TX_NSTATES && (unsigned)to < PGS_TX_NSTATES && tx_ok[from][to];
}

bool pgs_exchange_set_req(pgs_exchange_t *ex, pgs_req_state_t to) {
  bool ok = pgs_req_transition_ok((pgs_req_state_t)ex->req, to);
  ex->req = (uint8_t)to;
  return ok;
}

bool pgs_exchange_set_unit(pgs_exchange_t *ex, pgs_unit_state_t to) {
  ex->unit = (uint8_t)to;
  return (unsigned)to < PGS_UNIT_NSTATES;
}

bool pgs_exchange_set_tx(pgs_exchange_t *ex, pgs_tx_state_t to) {
  bool ok = pgs_tx_transition_ok((pgs_tx_state_t)ex->tx, to);
  ex->tx = (uint8_t)to;
  return ok;
}

void pgs_exchange_new_message(pgs_exchange_t *ex) {
  ex->sum = 0;
  ex->copies = false;
  ex->message_error = false;
}

/* ---- the verdict ---- */

static void protocol_error(pgs_verdict_t *v, const char *what) {
  v->action = PGS_REPLY_DROP;
  v->events |= PGS_RE_PROTOCOL;
  v->problem = what;
}

/* ReadyForQuery: ends a Sync or a Query. */
static void take_ready(pgs_replies_t *q, pgs_exchange_t *ex, const pgs_expect_t *front,
                       const uint8_t *body, size_t len, pgs_verdict_t *v) {
  if (len != 1 || front == NULL || (front->kind != PGS_EXP_SYNC && front->kind != PGS_EXP_QUERY)) {
    protocol_error(v, "unexpected ReadyForQuery");
    return;
  }
  pgs_reply_rule_t rule = front->rule;
  v->events |= PGS_RE_READY;
  v->txstatus = (char)body[0];
  q->skipping = false;
  pgs_replies_pop(q);
  v->action = PGS_REPLY_DROP;
  if (rule.internal) {
    if (q->internal_failed) {
      /* A reset that failed is never reused; a failed restore of the
       * client's session state fails the client. */
      q->internal_failed = false;
      v->events |= PGS_RE_DIRTY;
      if (ex) v->events |= PGS_RE_RESTORE_FAILED;
      return;
    }
    if (rule.capture && ex) v->events |= PGS_RE_LOGIN_DONE;
    return;
  }
  if (ex == NULL) return;
  switch (rule.ready) {
  case PGS_ON_READY_LAST_OF_N:
    if (ex->ready_pending > 1) {
      ex->ready_pending--;
      return;
    }
    ex->ready_pending = 0;
    v->action = PGS_REPLY_READY;
    return;
  case PGS_ON_READY_IF_ERROR:
    if (ex->message_error) v->action = PGS_REPLY_READY;
    return;
  case PGS_ON_READY_DROP:
    return;
  default:
    v->action = PGS_REPLY_READY;
    return;
  }
}

/* ErrorResponse. */
static void take_error(pgs_replies_t *q, pgs_exchange_t *ex, const pgs_expect_t *front,
                       const uint8_t *body, size_t len, pgs_verdict_t *v) {
  v->events |= PGS_RE_ERROR;
  pgs_error_parse(body, len, &v->error);
  if (front == NULL || !strcmp(v->error.severity, "FATAL") || !strcmp(v->error.severity, "PANIC")) {
    /* Not an answer to anything: the server is going away. The client
     * hears of it unless the reply is its fan's (which hears of it as the
     * part's loss). */
    v->events |= PGS_RE_DIRTY | PGS_RE_FATAL;
    v->action = ex && !(front && front->rule.fan) ? PGS_REPLY_FORWARD : PGS_REPLY_DROP;
    return;
  }
  pgs_reply_rule_t rule = front->rule;
  /* A counted statement that failed has no sum to report. */
  if (ex && (rule.complete == PGS_ON_COMPLETE_COUNT || rule.complete == PGS_ON_COMPLETE_SUM))
    ex->sum = 0;
  if (front->kind == PGS_EXP_QUERY) {
    /* pgshard's own query failed: fatal for the session unless its error
     * is expected or is the client's to see. */
    if (rule.internal && rule.error == PGS_ON_ERROR_OWNER) q->internal_failed = true;
  } else {
    q->skipping = true;
    if (skip_to_sync(q, rule.fan)) v->events |= PGS_RE_PART_SKIPPED;
  }
  bool visible = ex && (!rule.internal || rule.error == PGS_ON_ERROR_CLIENT);
  if (!visible) {
    v->action = rule.fan && ex ? PGS_REPLY_FAN : PGS_REPLY_DROP;
    return;
  }
  v->events |= PGS_RE_CLIENT_SEES | PGS_RE_CLIENT_ERROR;
  ex->message_error = true;
  v->action = rule.fan ? PGS_REPLY_FAN : PGS_REPLY_FORWARD;
}

void pgs_replies_take(pgs_replies_t *q, pgs_exchange_t *ex, char type, const uint8_t *body,
                      size_t len, pgs_verdict_t *v) {
  memset(v, 0, offsetof(pgs_verdict_t, problem_buf));
  v->problem_buf[0] = '\0';
  /* The rule of the request this reply answers as it stood before any
   * skipping: a fan's or a hidden-column describe's reply is decided by
   * it (a ReadyForQuery after a skipped part still reaches the fan). */
  pgs_expect_t *before = pgs_replies_front(q);
  bool fan = before && before->rule.fan;
  int16_t hide = before ? before->rule.hide : 0;
  if (type == 'Z' && q->skipping && before && before->kind != PGS_EXP_SYNC) {
    /* Messages sent after the error reached the server were skipped by it
     * too (a pipelining client kept sending): their replies never come. */
    if (skip_to_sync(q, false)) v->events |= PGS_RE_PART_SKIPPED;
  }
  pgs_expect_t *front = pgs_replies_front(q);
  bool internal = front && front->rule.internal;
  pgs_reply_rule_t rule = front ? front->rule : (pgs_reply_rule_t){0};
  bool visible = !internal && ex != NULL;
  pgs_reply_action_t shown = visible ? PGS_REPLY_FORWARD : PGS_REPLY_DROP;

  switch (type) {
  case 'Z':
    take_ready(q, ex, front, body, len, v);
    break;
  case '1':
  case '2':
  case '3': {
    static const pgs_expect_kind_t want[] = {PGS_EXP_PARSE, PGS_EXP_BIND, PGS_EXP_CLOSE};
    if (front == NULL || front->kind != want[type - '1']) {
      protocol_error(v, "unexpected completion message");
      return;
    }
    pgs_replies_pop(q);
    v->action = rule.done == PGS_ON_DONE_SWALLOW ? PGS_REPLY_DROP : shown;
    break;
  }
  case 'T':
  case 'n':
  case 't':
    if (type != 't' && front && front->kind == PGS_EXP_DESCRIBE) pgs_replies_pop(q);
    v->action = rule.done == PGS_ON_DONE_SWALLOW ? PGS_REPLY_DROP : shown;
    if (type == 'T' && hide > 0 && v->action == PGS_REPLY_FORWARD) {
      v->action = PGS_REPLY_HIDE;
      v->hide = hide;
    }
    break;
  case 'C':
  case 'I':
  case 's':
    if (front && front->kind == PGS_EXP_EXECUTE) pgs_replies_pop(q);
    if (type == 'C' && rule.prepares) v->events |= PGS_RE_GID_PREPARED;
    if (!visible) {
      v->action = PGS_REPLY_DROP;
      break;
    }
    v->events |= PGS_RE_CLIENT_SEES;
    v->action = PGS_REPLY_FORWARD;
    if (type == 'C' && rule.complete == PGS_ON_COMPLETE_COUNT) {
      if (!ex->copies) ex->sum += pgs_route_tag_count((const char *)body);
      v->action = PGS_REPLY_DROP;
    } else if (type == 'C' && rule.complete == PGS_ON_COMPLETE_SUM) {
      v->count = ex->sum + pgs_route_tag_count((const char *)body);
      ex->sum = 0;
      v->action = PGS_REPLY_SUM;
    }
    break;
  case 'E':
    take_error(q, ex, front, body, len, v);
    return; /* decides the fan's part itself */
  case 'K':
  case 'R':
    protocol_error(v, "authentication message after login");
    return;
  case 'D': /* DataRow */
    if (internal && rule.capture && ex) v->events |= PGS_RE_LOGIN_ROW;
    v->action = rule.rows == PGS_ON_ROWS_SWALLOW ? PGS_REPLY_DROP : shown;
    break;
  case 'S': { /* ParameterStatus: the value a client's SET came to */
    pgs_reader_t r;
    pgs_reader_init(&r, body, len);
    v->name = pgs_read_cstr(&r, NULL);
    v->value = pgs_read_cstr(&r, NULL);
    if (ex && !r.bad) v->events |= PGS_RE_PARAMETER;
    if (visible) v->events |= PGS_RE_CLIENT_SEES;
    v->action = shown;
    break;
  }
  case 'N': /* NoticeResponse */
  case 'A': /* NotificationResponse */
  case 'G': /* CopyInResponse */
  case 'H': /* CopyOutResponse */
  case 'W': /* CopyBothResponse */
  case 'd': /* CopyData */
  case 'c': /* CopyDone */
  case 'V': /* FunctionCallResponse */
    v->action = shown;
    break;
  default:
    snprintf(v->problem_buf, sizeof(v->problem_buf), "unknown message type 0x%02x",
             (unsigned char)type);
    protocol_error(v, v->problem_buf);
    return;
  }
  /* A part of the client's merged read: the fan decides what goes out. */
  if (fan && ex && !(v->events & (PGS_RE_PROTOCOL | PGS_RE_RESTORE_FAILED)))
    v->action = PGS_REPLY_FAN;
}
