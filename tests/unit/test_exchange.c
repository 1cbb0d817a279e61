/*
 * test_exchange.c — the request engine's reply verdicts (exchange.h),
 * scenario by scenario, with no server: each test pushes what the proxy
 * would have sent to one or more servers, plays the replies PostgreSQL
 * sends, and checks what the client sees of each (forwarded, swallowed,
 * counted, rewritten, or the fan's), the events the connection layer acts
 * on, and the states' transition tables.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/exchange.h"

/* ---- playing a server ---- */

typedef struct server {
  pgs_replies_t q;
  char forgotten[4][24];
  int nforgotten;
} server_t;

static void forget_cb(void *arg, const char *stmt) {
  server_t *s = arg;
  if (s->nforgotten < 4) snprintf(s->forgotten[s->nforgotten++], 24, "%s", stmt);
}

static void server_init(server_t *s) {
  memset(s, 0, sizeof(*s));
  pgs_replies_init(&s->q, forget_cb, s);
}

static const pgs_reply_rule_t CLIENT = {0};

static void push(server_t *s, pgs_expect_kind_t kind, pgs_reply_rule_t rule) {
  pgs_replies_push(&s->q, kind, rule, NULL);
}

/* One reply; body is a C string (its NUL included) or empty. */
static pgs_verdict_t reply(server_t *s, pgs_exchange_t *ex, char type, const char *body) {
  pgs_verdict_t v;
  size_t len = body ? strlen(body) + 1 : 0;
  pgs_replies_take(&s->q, ex, type, (const uint8_t *)(body ? body : ""), len, &v);
  return v;
}

static pgs_verdict_t ready(server_t *s, pgs_exchange_t *ex, char status) {
  pgs_verdict_t v;
  uint8_t b = (uint8_t)status;
  pgs_replies_take(&s->q, ex, 'Z', &b, 1, &v);
  return v;
}

/* An ErrorResponse body: severity, SQLSTATE, message. */
static size_t error_body(uint8_t *out, const char *severity, const char *code, const char *msg) {
  size_t n = 0;
  n += (size_t)sprintf((char *)out + n, "S%s", severity) + 1;
  n += (size_t)sprintf((char *)out + n, "V%s", severity) + 1;
  n += (size_t)sprintf((char *)out + n, "C%s", code) + 1;
  n += (size_t)sprintf((char *)out + n, "M%s", msg) + 1;
  out[n++] = 0;
  return n;
}

static pgs_verdict_t error(server_t *s, pgs_exchange_t *ex, const char *severity,
                           const char *code) {
  static uint8_t body[256]; /* the verdict's error fields point into it */
  size_t len = error_body(body, severity, code, "boom");
  pgs_verdict_t v;
  pgs_replies_take(&s->q, ex, 'E', body, len, &v);
  return v;
}

#define ACTION(v) ((pgs_reply_action_t)(v).action)

/* ---- scenarios ---- */

/* Extended-protocol units pipelined to two shards: each server's replies
 * are the client's, in order, and each unit's ReadyForQuery is. */
static void test_pipelined_units_over_two_shards(void **state) {
  server_t a, b;
  pgs_exchange_t ex = {0};
  server_init(&a);
  server_init(&b);
  pgs_expect_kind_t unit[] = {PGS_EXP_PARSE, PGS_EXP_BIND, PGS_EXP_DESCRIBE, PGS_EXP_EXECUTE,
                              PGS_EXP_SYNC};
  for (size_t i = 0; i < 5; i++) push(&a, unit[i], CLIENT);
  for (size_t i = 0; i < 5; i++) push(&b, unit[i], CLIENT);
  bool open_unit;
  assert_int_equal(pgs_replies_readies_owed(&a.q, &open_unit), 1);
  assert_false(open_unit);
  server_t *order[] = {&a, &b};
  for (int k = 0; k < 2; k++) {
    server_t *s = order[k];
    assert_int_equal(ACTION(reply(s, &ex, '1', NULL)), PGS_REPLY_FORWARD);
    assert_int_equal(ACTION(reply(s, &ex, '2', NULL)), PGS_REPLY_FORWARD);
    assert_int_equal(ACTION(reply(s, &ex, 'T', NULL)), PGS_REPLY_FORWARD);
    assert_int_equal(ACTION(reply(s, &ex, 'D', NULL)), PGS_REPLY_FORWARD);
    pgs_verdict_t v = reply(s, &ex, 'C', "SELECT 1");
    assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
    assert_true(v.events & PGS_RE_CLIENT_SEES);
    assert_int_equal(pgs_replies_pending(&s->q), 1); /* the Sync */
    v = ready(s, &ex, 'I');
    assert_int_equal(ACTION(v), PGS_REPLY_READY);
    assert_true(v.events & PGS_RE_READY);
    assert_int_equal(v.txstatus, 'I');
    assert_int_equal(pgs_replies_pending(&s->q), 0);
  }
  pgs_replies_free(&a.q);
  pgs_replies_free(&b.q);
}

/* A simple Query fanned out to three shards: the first part's
 * description, every part's rows, one CommandComplete with the sum of the
 * counts, one ReadyForQuery. */
static void test_fanout_counts_into_one_reply(void **state) {
  server_t s[3];
  pgs_exchange_t ex = {0};
  pgs_exchange_new_message(&ex);
  for (int i = 0; i < 3; i++) {
    server_init(&s[i]);
    pgs_reply_rule_t rule = CLIENT;
    if (i > 0) rule.done = PGS_ON_DONE_SWALLOW;
    if (i < 2) {
      rule.complete = PGS_ON_COMPLETE_COUNT;
      rule.ready = PGS_ON_READY_IF_ERROR;
    } else {
      rule.complete = PGS_ON_COMPLETE_SUM;
    }
    push(&s[i], PGS_EXP_QUERY, rule);
  }
  const char *tags[] = {"UPDATE 2", "UPDATE 0", "UPDATE 5"};
  for (int i = 0; i < 3; i++) {
    pgs_verdict_t v = reply(&s[i], &ex, 'T', NULL);
    assert_int_equal(ACTION(v), i == 0 ? PGS_REPLY_FORWARD : PGS_REPLY_DROP);
    assert_int_equal(ACTION(reply(&s[i], &ex, 'D', NULL)), PGS_REPLY_FORWARD);
    v = reply(&s[i], &ex, 'C', tags[i]);
    if (i < 2) {
      assert_int_equal(ACTION(v), PGS_REPLY_DROP);
    } else {
      assert_int_equal(ACTION(v), PGS_REPLY_SUM);
      assert_int_equal(v.count, 7);
    }
    v = ready(&s[i], &ex, 'I');
    assert_int_equal(ACTION(v), i < 2 ? PGS_REPLY_DROP : PGS_REPLY_READY);
  }
  assert_int_equal(ex.sum, 0); /* handed over with the SUM */
  for (int i = 0; i < 3; i++) pgs_replies_free(&s[i].q);
}

/* A fan-out writing copies (a reference table): one shard's count, not
 * the sum, and the copies' rows (RETURNING) only once. */
static void test_fanout_of_copies_reports_one_count(void **state) {
  server_t s[2];
  pgs_exchange_t ex = {0};
  pgs_exchange_new_message(&ex);
  ex.copies = true;
  server_init(&s[0]);
  server_init(&s[1]);
  push(&s[0], PGS_EXP_QUERY,
       (pgs_reply_rule_t){.complete = PGS_ON_COMPLETE_COUNT, .ready = PGS_ON_READY_IF_ERROR});
  push(&s[1], PGS_EXP_QUERY,
       (pgs_reply_rule_t){.done = PGS_ON_DONE_SWALLOW,
                          .rows = PGS_ON_ROWS_SWALLOW,
                          .complete = PGS_ON_COMPLETE_SUM});
  assert_int_equal(ACTION(reply(&s[0], &ex, 'D', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(reply(&s[0], &ex, 'C', "INSERT 0 3")), PGS_REPLY_DROP);
  assert_int_equal(ACTION(ready(&s[0], &ex, 'I')), PGS_REPLY_DROP);
  assert_int_equal(ACTION(reply(&s[1], &ex, 'D', NULL)), PGS_REPLY_DROP);
  pgs_verdict_t v = reply(&s[1], &ex, 'C', "INSERT 0 3");
  assert_int_equal(ACTION(v), PGS_REPLY_SUM);
  assert_int_equal(v.count, 3);
  pgs_replies_free(&s[0].q);
  pgs_replies_free(&s[1].q);
}

/* A fan-out whose first part fails: the error is the client's, and the
 * ReadyForQuery held back for the sum goes out after it. */
static void test_fanout_part_error_releases_ready(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  pgs_exchange_new_message(&ex);
  server_init(&s);
  push(&s, PGS_EXP_QUERY,
       (pgs_reply_rule_t){.complete = PGS_ON_COMPLETE_COUNT, .ready = PGS_ON_READY_IF_ERROR});
  pgs_verdict_t v = error(&s, &ex, "ERROR", "23505");
  assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
  assert_true(v.events & PGS_RE_CLIENT_ERROR);
  assert_true(v.events & PGS_RE_ERROR);
  assert_string_equal(v.error.sqlstate, "23505");
  assert_true(ex.message_error);
  assert_false(s.q.skipping); /* a Query ends at its own ReadyForQuery */
  v = ready(&s, &ex, 'I');
  assert_int_equal(ACTION(v), PGS_REPLY_READY);
  /* The next message starts clean. */
  pgs_exchange_new_message(&ex);
  assert_false(ex.message_error);
  pgs_replies_free(&s.q);
}

/* A transaction reaching a shard late: pgshard's BEGIN goes first and its
 * replies are swallowed; the client's statement's are the client's. A
 * BEGIN that fails is fatal for the session at its ReadyForQuery. */
static void test_deferred_begin(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  push(&s, PGS_EXP_QUERY, pgs_rule_internal(PGS_ON_ERROR_OWNER));
  push(&s, PGS_EXP_QUERY, CLIENT);
  assert_int_equal(ACTION(reply(&s, &ex, 'C', "BEGIN")), PGS_REPLY_DROP);
  pgs_verdict_t v = ready(&s, &ex, 'T');
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  assert_int_equal(v.txstatus, 'T');
  assert_int_equal(ACTION(reply(&s, &ex, 'C', "INSERT 0 1")), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(ready(&s, &ex, 'T')), PGS_REPLY_READY);

  push(&s, PGS_EXP_QUERY, pgs_rule_internal(PGS_ON_ERROR_OWNER));
  v = error(&s, &ex, "ERROR", "25001");
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  assert_false(v.events & PGS_RE_CLIENT_ERROR);
  assert_true(s.q.internal_failed);
  v = ready(&s, &ex, 'E');
  assert_true(v.events & PGS_RE_RESTORE_FAILED);
  assert_true(v.events & PGS_RE_DIRTY);
  assert_false(s.q.internal_failed);
  /* The same failure with no client linked (a reset): never reused, no
   * client to fail. */
  push(&s, PGS_EXP_QUERY, pgs_rule_internal(PGS_ON_ERROR_OWNER));
  (void)error(&s, NULL, "ERROR", "XX000");
  v = ready(&s, NULL, 'I');
  assert_true(v.events & PGS_RE_DIRTY);
  assert_false(v.events & PGS_RE_RESTORE_FAILED);
  pgs_replies_free(&s.q);
}

/* The phases of a two-phase commit as replies: PREPARE TRANSACTION's
 * success is reported and swallowed, its failure is the client's; an
 * expected failure (ROLLBACK PREPARED of what did not prepare) is
 * nobody's. */
static void test_twophase_replies(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  pgs_reply_rule_t prepare = pgs_rule_internal(PGS_ON_ERROR_CLIENT);
  prepare.prepares = true;
  push(&s, PGS_EXP_QUERY, prepare);
  pgs_verdict_t v = reply(&s, &ex, 'C', "PREPARE TRANSACTION");
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  assert_true(v.events & PGS_RE_GID_PREPARED);
  assert_int_equal(ACTION(ready(&s, &ex, 'I')), PGS_REPLY_DROP);

  push(&s, PGS_EXP_QUERY, prepare);
  v = error(&s, &ex, "ERROR", "40001");
  assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
  assert_true(v.events & PGS_RE_CLIENT_ERROR);
  assert_false(v.events & PGS_RE_GID_PREPARED);
  assert_false(s.q.internal_failed);
  v = ready(&s, &ex, 'I');
  assert_false(v.events & PGS_RE_RESTORE_FAILED);

  push(&s, PGS_EXP_QUERY, pgs_rule_internal(PGS_ON_ERROR_EXPECTED));
  v = error(&s, &ex, "ERROR", "42704");
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  assert_false(s.q.internal_failed);
  assert_int_equal(ACTION(ready(&s, &ex, 'I')), PGS_REPLY_DROP);
  pgs_replies_free(&s.q);
}

/* Transaction states: BEGIN, an error, the end; a two-phase commit's
 * phases; what no engine path may do. */
static void test_transaction_states(void **state) {
  pgs_exchange_t ex = {0};
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_OPEN));
  assert_true(pgs_exchange_in_tx(&ex));
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_ABORTED));
  assert_true(pgs_exchange_in_tx(&ex));
  assert_false(pgs_exchange_set_tx(&ex, PGS_TX_OPEN)); /* only its end is taken */
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_NONE));
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_OPEN));
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_PREPARING));
  assert_false(pgs_exchange_in_tx(&ex));
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_DECIDED));
  assert_true(pgs_exchange_set_tx(&ex, PGS_TX_NONE));
  assert_false(pgs_tx_transition_ok(PGS_TX_NONE, PGS_TX_DECIDED)); /* decide what never prepared */
  assert_false(pgs_tx_transition_ok(PGS_TX_ABORTED, PGS_TX_PREPARING)); /* commit an aborted one */
  assert_false(pgs_tx_transition_ok(PGS_TX_DECIDED, PGS_TX_PREPARING));
  assert_true(pgs_tx_transition_ok(PGS_TX_PREPARING, PGS_TX_NONE)); /* failed, rolled back */
  assert_string_equal(pgs_tx_state_name(PGS_TX_DECIDED), "decided");
}

static void test_request_states(void **state) {
  pgs_exchange_t ex = {0};
  assert_true(pgs_exchange_set_req(&ex, PGS_REQ_RUNNING));
  assert_true(pgs_exchange_set_req(&ex, PGS_REQ_DRAINING));
  assert_true(pgs_exchange_set_req(&ex, PGS_REQ_RUNNING));
  assert_false(pgs_req_transition_ok(PGS_REQ_RUNNING, PGS_REQ_HELD));
  assert_true(pgs_exchange_set_req(&ex, PGS_REQ_IDLE));
  assert_false(pgs_req_transition_ok(PGS_REQ_IDLE, PGS_REQ_DRAINING)); /* nothing planned */
  assert_true(pgs_exchange_set_req(&ex, PGS_REQ_HELD));
  assert_false(pgs_req_transition_ok(PGS_REQ_HELD, PGS_REQ_DRAINING));
  assert_true(pgs_exchange_set_req(&ex, PGS_REQ_RUNNING)); /* woken by its own bytes */
  /* A refused transition is still made: the check reports, it does not
   * change what the engine does. */
  assert_false(pgs_exchange_set_req(&ex, PGS_REQ_HELD));
  assert_int_equal(ex.req, PGS_REQ_HELD);
  for (int s = 0; s < PGS_REQ_NSTATES; s++)
    assert_true(pgs_req_transition_ok((pgs_req_state_t)s, PGS_REQ_IDLE));
  assert_false(pgs_req_transition_ok(PGS_REQ_NSTATES, PGS_REQ_IDLE));
  assert_string_equal(pgs_req_state_name(PGS_REQ_DRAINING), "draining");
}

/* COPY FROM STDIN: the CopyInResponse and the final CommandComplete are
 * the client's; COPY TO's data too. */
static void test_copy(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  push(&s, PGS_EXP_QUERY, CLIENT);
  assert_int_equal(ACTION(reply(&s, &ex, 'G', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(reply(&s, &ex, 'C', "COPY 3")), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(ready(&s, &ex, 'I')), PGS_REPLY_READY);
  push(&s, PGS_EXP_QUERY, CLIENT);
  assert_int_equal(ACTION(reply(&s, &ex, 'H', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(reply(&s, &ex, 'd', "1\n")), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(reply(&s, &ex, 'c', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(reply(&s, &ex, 'C', "COPY 1")), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(ready(&s, &ex, 'I')), PGS_REPLY_READY);
  pgs_replies_free(&s.q);
}

/* Flush: the replies of a unit arrive before its Sync is sent; the queue
 * is then empty, and a lost server owes the client a unit without Sync. */
static void test_flush_without_sync(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  push(&s, PGS_EXP_PARSE, CLIENT);
  push(&s, PGS_EXP_DESCRIBE, CLIENT);
  bool open_unit;
  assert_int_equal(pgs_replies_readies_owed(&s.q, &open_unit), 0);
  assert_true(open_unit);
  assert_int_equal(ACTION(reply(&s, &ex, '1', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(ACTION(reply(&s, &ex, 't', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(pgs_replies_pending(&s.q), 1); /* a ParameterDescription pops nothing */
  assert_int_equal(ACTION(reply(&s, &ex, 'n', NULL)), PGS_REPLY_FORWARD);
  assert_int_equal(pgs_replies_pending(&s.q), 0);
  pgs_replies_free(&s.q);
}

/* An error in the extended protocol: the server skips to Sync and so do
 * the replies it owes; a Parse it skipped is forgotten; what pgshard
 * sends before the Sync is on its way would be skipped too. */
static void test_skip_to_sync(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  pgs_replies_push(&s.q, PGS_EXP_BIND, CLIENT, NULL);
  pgs_replies_push(&s.q, PGS_EXP_PARSE, pgs_rule_internal(PGS_ON_ERROR_CLIENT), "pgs_abc");
  pgs_replies_push(&s.q, PGS_EXP_EXECUTE, CLIENT, NULL);
  assert_false(pgs_replies_skips_next(&s.q));
  pgs_verdict_t v = error(&s, &ex, "ERROR", "22P02");
  assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
  assert_true(s.q.skipping);
  assert_int_equal(pgs_replies_pending(&s.q), 0);
  assert_int_equal(s.nforgotten, 1);
  assert_string_equal(s.forgotten[0], "pgs_abc");
  assert_true(pgs_replies_skips_next(&s.q)); /* no Sync on its way */
  push(&s, PGS_EXP_SYNC, CLIENT);
  assert_false(pgs_replies_skips_next(&s.q));
  v = ready(&s, &ex, 'I');
  assert_int_equal(ACTION(v), PGS_REPLY_READY);
  assert_false(s.q.skipping);

  /* A client pipelining past the failure: messages sent after the error
   * reached the server were skipped as well, their replies never come. */
  push(&s, PGS_EXP_EXECUTE, CLIENT);
  push(&s, PGS_EXP_SYNC, CLIENT);
  (void)error(&s, &ex, "ERROR", "22012");
  push(&s, PGS_EXP_PARSE, CLIENT);
  push(&s, PGS_EXP_SYNC, CLIENT);
  v = ready(&s, &ex, 'I'); /* the first Sync's */
  assert_int_equal(ACTION(v), PGS_REPLY_READY);
  assert_int_equal(pgs_replies_pending(&s.q), 2);
  pgs_replies_free(&s.q);
}

/* A fan part queued behind a failed message of the unit is skipped by the
 * server: the fan hears of it. */
static void test_fan_part_skipped(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  pgs_reply_rule_t fan = {.fan = true};
  push(&s, PGS_EXP_BIND, CLIENT);
  push(&s, PGS_EXP_EXECUTE, fan);
  pgs_verdict_t v = error(&s, &ex, "ERROR", "42P01");
  assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
  assert_true(v.events & PGS_RE_PART_SKIPPED);
  /* The fan's own part failing is the fan's reply, not a skip. */
  push(&s, PGS_EXP_EXECUTE, fan);
  push(&s, PGS_EXP_SYNC, CLIENT);
  s.q.skipping = false;
  v = error(&s, &ex, "ERROR", "42P01");
  assert_int_equal(ACTION(v), PGS_REPLY_FAN);
  assert_false(v.events & PGS_RE_PART_SKIPPED);
  pgs_replies_free(&s.q);
}

/* Syncs sent to every server of a unit at once: the last ReadyForQuery
 * to arrive is the client's. */
static void test_last_of_n_ready(void **state) {
  server_t s[3];
  pgs_exchange_t ex = {0};
  ex.ready_pending = 3;
  for (int i = 0; i < 3; i++) {
    server_init(&s[i]);
    push(&s[i], PGS_EXP_SYNC, (pgs_reply_rule_t){.ready = PGS_ON_READY_LAST_OF_N});
  }
  assert_int_equal(ACTION(ready(&s[2], &ex, 'I')), PGS_REPLY_DROP);
  assert_int_equal(ACTION(ready(&s[0], &ex, 'I')), PGS_REPLY_DROP);
  assert_int_equal(ACTION(ready(&s[1], &ex, 'I')), PGS_REPLY_READY);
  assert_int_equal(ex.ready_pending, 0);
  for (int i = 0; i < 3; i++) pgs_replies_free(&s[i].q);
}

/* A merged read's parts: every reply goes to the fan, pgshard's own
 * Describe's too; a merged portal's Describe keeps its hidden columns
 * hidden. */
static void test_fan_and_hidden_columns(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  pgs_reply_rule_t fan = {.fan = true};
  pgs_reply_rule_t describe = fan;
  describe.internal = true;
  push(&s, PGS_EXP_DESCRIBE, describe);
  push(&s, PGS_EXP_EXECUTE, fan);
  assert_int_equal(ACTION(reply(&s, &ex, 'T', NULL)), PGS_REPLY_FAN);
  assert_int_equal(ACTION(reply(&s, &ex, 'D', NULL)), PGS_REPLY_FAN);
  pgs_verdict_t v = reply(&s, &ex, 'C', "SELECT 1");
  assert_int_equal(ACTION(v), PGS_REPLY_FAN);
  assert_true(v.events & PGS_RE_CLIENT_SEES);
  assert_int_equal(pgs_replies_pending(&s.q), 0);

  push(&s, PGS_EXP_DESCRIBE, (pgs_reply_rule_t){.hide = 2});
  v = reply(&s, &ex, 'T', NULL);
  assert_int_equal(ACTION(v), PGS_REPLY_HIDE);
  assert_int_equal(v.hide, 2);
  /* No client: nothing is anybody's. */
  push(&s, PGS_EXP_EXECUTE, fan);
  assert_int_equal(ACTION(reply(&s, NULL, 'D', NULL)), PGS_REPLY_DROP);
  pgs_replies_free(&s.q);
}

/* A FATAL is the server going away: the client's, unless a fan's part
 * (the fan hears of it as the part's loss); nothing owed is no answer. */
static void test_fatal(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  push(&s, PGS_EXP_QUERY, CLIENT);
  pgs_verdict_t v = error(&s, &ex, "FATAL", "57P01");
  assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
  assert_true(v.events & PGS_RE_FATAL);
  assert_true(v.events & PGS_RE_DIRTY);
  pgs_replies_free(&s.q);
  server_init(&s);
  push(&s, PGS_EXP_QUERY, (pgs_reply_rule_t){.fan = true});
  v = error(&s, &ex, "FATAL", "57P01");
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  assert_true(v.events & PGS_RE_FATAL);
  pgs_replies_free(&s.q);
  server_init(&s);
  v = error(&s, &ex, "ERROR", "XX000"); /* owed nothing */
  assert_true(v.events & PGS_RE_FATAL);
  pgs_replies_free(&s.q);
}

/* What does not fit the queue is a protocol error, never a guess. */
static void test_protocol_errors(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  pgs_verdict_t v = reply(&s, &ex, '2', NULL);
  assert_true(v.events & PGS_RE_PROTOCOL);
  assert_string_equal(v.problem, "unexpected completion message");
  push(&s, PGS_EXP_BIND, CLIENT);
  v = reply(&s, &ex, '1', NULL); /* ParseComplete for a Bind */
  assert_true(v.events & PGS_RE_PROTOCOL);
  v = ready(&s, &ex, 'I'); /* ReadyForQuery for a Bind */
  assert_true(v.events & PGS_RE_PROTOCOL);
  assert_string_equal(v.problem, "unexpected ReadyForQuery");
  v = reply(&s, &ex, 'R', NULL);
  assert_true(v.events & PGS_RE_PROTOCOL);
  v = reply(&s, &ex, '!', NULL);
  assert_true(v.events & PGS_RE_PROTOCOL);
  assert_string_equal(v.problem, "unknown message type 0x21");
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  pgs_replies_free(&s.q);
}

/* Replies pgshard makes itself, at the head of the queue. */
static void test_synthetic(void **state) {
  server_t s;
  server_init(&s);
  push(&s, PGS_EXP_SYNTH_PARSE, CLIENT);
  push(&s, PGS_EXP_SYNTH_CLOSE, CLIENT);
  push(&s, PGS_EXP_BIND, CLIENT);
  assert_int_equal(pgs_replies_pop_synthetic(&s.q), '1');
  assert_int_equal(pgs_replies_pop_synthetic(&s.q), '3');
  assert_int_equal(pgs_replies_pop_synthetic(&s.q), 0);
  assert_int_equal(pgs_replies_pending(&s.q), 1);
  pgs_replies_free(&s.q);
}

/* A logging-in client's parameters, read by pgshard's own query; a
 * ParameterStatus from a client's SET. */
static void test_login_capture_and_parameters(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  pgs_reply_rule_t capture = pgs_rule_internal(PGS_ON_ERROR_OWNER);
  capture.capture = true;
  push(&s, PGS_EXP_QUERY, capture);
  assert_int_equal(ACTION(reply(&s, &ex, 'T', NULL)), PGS_REPLY_DROP);
  pgs_verdict_t v = reply(&s, &ex, 'D', NULL);
  assert_int_equal(ACTION(v), PGS_REPLY_DROP);
  assert_true(v.events & PGS_RE_LOGIN_ROW);
  (void)reply(&s, &ex, 'C', "SELECT 1");
  v = ready(&s, &ex, 'I');
  assert_true(v.events & PGS_RE_LOGIN_DONE);

  push(&s, PGS_EXP_QUERY, CLIENT);
  const char ps[] = "TimeZone\0UTC";
  pgs_replies_take(&s.q, &ex, 'S', (const uint8_t *)ps, sizeof(ps), &v);
  assert_int_equal(ACTION(v), PGS_REPLY_FORWARD);
  assert_true(v.events & PGS_RE_PARAMETER);
  assert_string_equal(v.name, "TimeZone");
  assert_string_equal(v.value, "UTC");
  const char bad[] = {'x'};
  pgs_replies_take(&s.q, &ex, 'S', (const uint8_t *)bad, sizeof(bad), &v);
  assert_false(v.events & PGS_RE_PARAMETER);
  pgs_replies_free(&s.q);
}

/* The queue grows past its first ring and keeps its order. */
static void test_queue_grows_in_order(void **state) {
  server_t s;
  pgs_exchange_t ex = {0};
  server_init(&s);
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 100; i++) {
      push(&s, PGS_EXP_BIND, CLIENT);
      push(&s, PGS_EXP_SYNC, CLIENT);
    }
    for (int i = 0; i < 100; i++) {
      assert_int_equal(ACTION(reply(&s, &ex, '2', NULL)), PGS_REPLY_FORWARD);
      assert_int_equal(ACTION(ready(&s, &ex, 'I')), PGS_REPLY_READY);
    }
    assert_int_equal(pgs_replies_pending(&s.q), 0);
  }
  pgs_replies_free(&s.q);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pipelined_units_over_two_shards),
      cmocka_unit_test(test_fanout_counts_into_one_reply),
      cmocka_unit_test(test_fanout_of_copies_reports_one_count),
      cmocka_unit_test(test_fanout_part_error_releases_ready),
      cmocka_unit_test(test_deferred_begin),
      cmocka_unit_test(test_twophase_replies),
      cmocka_unit_test(test_transaction_states),
      cmocka_unit_test(test_request_states),
      cmocka_unit_test(test_copy),
      cmocka_unit_test(test_flush_without_sync),
      cmocka_unit_test(test_skip_to_sync),
      cmocka_unit_test(test_fan_part_skipped),
      cmocka_unit_test(test_last_of_n_ready),
      cmocka_unit_test(test_fan_and_hidden_columns),
      cmocka_unit_test(test_fatal),
      cmocka_unit_test(test_protocol_errors),
      cmocka_unit_test(test_synthetic),
      cmocka_unit_test(test_login_capture_and_parameters),
      cmocka_unit_test(test_queue_grows_in_order),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
