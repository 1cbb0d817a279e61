/*
 * test_planner.c — the request engine's planning half (planner.h),
 * scenario by scenario, with no server: a session over a shard map parsed
 * from text, the proxy's side played by a table of fake operations (the
 * health of each shard, the round robin, memory, refusals), client
 * messages built as a client sends them, and the steps each becomes
 * checked: where each goes and why (slot, placed), what the client sees of
 * its replies (rules), the replies pgshard makes itself, the fan it orders,
 * and the request, unit and transaction states. Between messages a small
 * stand-in for request.c "runs" the steps (the slots they reach join the
 * unit and the transaction, as issue() does).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgshard/moves.h"
#include "pgshard/planner.h"
#include "pgshard/shardmap.h"

#include "messages.h"

#define BIT(i) ((uint64_t)1 << (i))

#define SHARDS(DB)                                                                                 \
  "[shard." DB                                                                                     \
  ".s0]\nprimary = port=1\n"                                                                       \
  "[shard." DB ".s1]\nprimary = port=2\n"
#define TABLES(DB) "[table." DB ".users]\ncolumn = id\ntype = bigint\nstrategy = hash\n"

static const char config_text[] =
    "[user.app]\npassword = x\n"
    "[database.app]\n" SHARDS("app") TABLES("app")
    "[database.appw]\ncross_shard_writes = allow\n" SHARDS("appw") TABLES("appw")
    "[database.app2pc]\ncross_shard_writes = 2pc\n" SHARDS("app2pc") TABLES("app2pc")
    "[database.one]\n[shard.one.only]\nprimary = port=3\n"
    "[database.repl]\nread_your_writes = session\n"
    "[shard.repl.s0]\nprimary = port=4\nreplica = port=5\n"
    "[shard.repl.s1]\nprimary = port=6\nreplica = port=7\n" TABLES("repl")
    "[database.sess]\npool_mode = session\n" SHARDS("sess") TABLES("sess")
    "[database.rr]\n[shard.rr.s0]\nprimary = port=8\nreplica = port=9\nreplica = port=10\n";

static pgs_config_t *config;
static int64_t key_on[2]; /* a users.id on shard 0 and one on shard 1 */

/* ---- the proxy's side ---- */

typedef struct proxy {
  const pgs_shard_health_t *health; /* every shard alike; NULL: not known */
  uint32_t rr;
  int refused;
  char last_refusal[6];
  long long mem;
  bool owns_unnamed;
  const char *columns;
  const pgs_move_t *moves; /* a resharding's moves (moves.h) */
  int nmoves;
  const pgs_database_t *hold; /* a cutover hold's new map (hold.h) */
} proxy_t;

static uint64_t fake_now = 1000;

static const pgs_shard_health_t *fake_health(void *ctx, int shard) {
  return ((proxy_t *)ctx)->health;
}
static uint32_t fake_turn(void *ctx, bool advance) {
  proxy_t *p = ctx;
  return advance ? p->rr++ : p->rr;
}
static void fake_note_query(void *ctx, const pgs_lexed_t *lexed) {}
static void fake_charge(void *ctx, size_t add, size_t sub) {
  ((proxy_t *)ctx)->mem += (long long)add - (long long)sub;
}
static void fake_refused(void *ctx, const char *sqlstate) {
  proxy_t *p = ctx;
  p->refused++;
  snprintf(p->last_refusal, sizeof(p->last_refusal), "%s", sqlstate);
}
static bool fake_keys_utf8(void *ctx) { return true; }
static bool fake_owns_unnamed(void *ctx) { return ((proxy_t *)ctx)->owns_unnamed; }
static uint64_t fake_now_ms(void) { return fake_now; }
/* The catalog's columns of users ("id, name"), when known. */
static const char *fake_columns(void *ctx, const char *table) {
  return ((proxy_t *)ctx)->columns && !strcmp(table, "users") ? ((proxy_t *)ctx)->columns : NULL;
}

static const pgs_move_t *fake_moves(void *ctx, int *n) {
  *n = ((proxy_t *)ctx)->nmoves;
  return ((proxy_t *)ctx)->moves;
}
static const pgs_database_t *fake_hold(void *ctx) { return ((proxy_t *)ctx)->hold; }

static pgs_planner_ops_t ops = {
    .health = fake_health,
    .turn = fake_turn,
    .analyze = NULL, /* real_analyze, set per session */
    .note_query = fake_note_query,
    .charge = fake_charge,
    .refused = fake_refused,
    .keys_utf8 = fake_keys_utf8,
    .owns_unnamed = fake_owns_unnamed,
    .now_ms = fake_now_ms,
    .columns = fake_columns,
    .moves = fake_moves,
    .hold = fake_hold,
};

typedef struct fixture {
  pgs_session_t s;
  proxy_t proxy;
  const pgs_database_t *db;
} fixture_t;

/* The plans come from the analyser itself (no cache). */
static const pgs_database_t *analyze_db;
static pgs_plan_t *real_analyze(void *ctx, const pgs_lexed_t *lexed) {
  return pgs_analyze(analyze_db, lexed);
}

static fixture_t *open_session(const char *dbname) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->db = pgs_config_find_database(config, dbname);
  assert_non_null(f->db);
  analyze_db = f->db;
  ops.analyze = real_analyze;
  f->s.ops = &ops;
  f->s.ctx = &f->proxy;
  f->s.id = 1;
  f->s.user = "app";
  f->s.peer = "test";
  f->s.dbname = dbname;
  f->s.max_message_size = 1 << 20;
  pgs_strmap_init(&f->s.stmts);
  pgs_session_init(&f->s, f->db);
  return f;
}

static void close_session(fixture_t *f) {
  pgs_strmap_free(&f->s.stmts, pgs_session_free_stmt);
  pgs_session_free(&f->s);
  assert_int_equal(f->proxy.mem, 0); /* every statement and portal gave its bytes back */
  free(f);
}

/* ---- client messages ---- */

/* A Parse declaring one parameter of type OID (0: none). */
static void msg_parse(pgs_buf_t *b, const char *name, const char *sql, uint32_t oid) {
  put_parse(b, name, sql, oid ? 1 : 0, &oid);
}

/* A Bind of STMT to PORTAL with one text parameter (NULL: none). */
static void msg_bind(pgs_buf_t *b, const char *portal, const char *stmt, const char *param) {
  put_bind(b, portal, stmt, 0, NULL, param ? 1 : 0, &param, 0, NULL);
}

/* Plan the first message of B, with the rest of B as what follows it. */
static void plan(fixture_t *f, const pgs_buf_t *b) {
  size_t total = 1 + ((size_t)b->data[1] << 24 | (size_t)b->data[2] << 16 |
                      (size_t)b->data[3] << 8 | b->data[4]);
  pgs_plan_message(&f->s, (char)b->data[0], b->data, total, b->data + total, b->len - total);
}

static void plan_query(fixture_t *f, const char *sql) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  pgs_msg_query(&b, sql);
  plan(f, &b);
  pgs_buf_free(&b);
}

static void plan_empty(fixture_t *f, char type) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  pgs_msg_empty(&b, type);
  plan(f, &b);
  pgs_buf_free(&b);
}

/* What request.c does with the steps of a message of TYPE, reduced to
 * what planning sees of it: each slot reached is where the session is, in
 * the transaction (when one is open) and, for the extended protocol, in
 * the unit; then the plan is cleared. */
static void run(fixture_t *f, char type) {
  pgs_session_t *s = &f->s;
  bool extended = strchr("PBDECH", type) != NULL;
  for (int i = 0; i < s->nsteps; i++) {
    const pgs_step_t *st = &s->steps[i];
    if (st->shard < 0) continue;
    s->cur = st->shard;
    s->linked |= BIT(st->shard);
    if (pgs_exchange_in_tx(&s->ex) && st->op != PGS_STEP_SYNC) s->tx_mask |= BIT(st->shard);
    if (extended) s->unit_mask |= BIT(st->shard);
  }
  pgs_steps_clear(s);
  if (s->ex.unit == PGS_UNIT_SKIP_TO_SYNC && type == 'S') pgs_session_set_unit(s, PGS_UNIT_CLEAN);
}

/* ---- checks ---- */

static const pgs_step_t *step(fixture_t *f, int i) {
  assert_true(i < f->s.nsteps);
  return &f->s.steps[i];
}

static void assert_reply(fixture_t *f, int i, char type, const char *tag) {
  const pgs_step_t *st = step(f, i);
  assert_int_equal(st->op, PGS_STEP_REPLY);
  assert_int_equal(st->shard, -1);
  assert_int_equal(st->reply, type);
  if (tag) assert_string_equal(st->text, tag);
}

static void assert_error(fixture_t *f, int i, const char *sqlstate) {
  const pgs_step_t *st = step(f, i);
  assert_int_equal(st->op, PGS_STEP_ERROR);
  assert_int_equal(st->shard, -1);
  assert_string_equal(st->text, sqlstate);
  assert_memory_equal(st->text + 6, "pgshard: ", 9);
}

static void assert_sent(fixture_t *f, int i, pgs_step_op_t op, int slot, pgs_placed_t placed) {
  const pgs_step_t *st = step(f, i);
  assert_int_equal(st->op, op);
  assert_int_equal(st->shard, slot);
  assert_int_equal(st->placed, placed);
}

static char key_text[2][24];

/* ---- scenarios ---- */

/* One shard, nothing to route: a plain pooler's pass-through. */
static void test_passthrough(void **state) {
  fixture_t *f = open_session("one");
  assert_false(f->s.routing);
  plan_query(f, "select 1");
  assert_int_equal(f->s.nsteps, 1);
  assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_PASSTHROUGH);
  assert_int_equal(f->s.ex.req, PGS_REQ_RUNNING);
  run(f, 'Q');
  assert_int_equal(f->s.ex.req, PGS_REQ_IDLE);

  /* A named Parse is remembered (the server gets it under pgshard's name). */
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "q1", "select $1::int", 0);
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 1);
  assert_sent(f, 0, PGS_STEP_PARSE, 0, PGS_PLACED_PASSTHROUGH);
  assert_non_null(f->s.steps[0].stmt);
  assert_memory_equal(f->s.steps[0].stmt->server_name, "pgs_", 4);
  assert_true(f->proxy.mem > 0);
  run(f, 'P');

  /* A Bind of a statement it never prepared is pgshard's 26000: no
   * client's name reaches a statement another client prepared. */
  b.len = 0;
  msg_bind(&b, "", "other", NULL);
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 1);
  assert_error(f, 0, "26000");
  assert_int_equal(f->s.ex.unit, PGS_UNIT_SKIP_TO_SYNC);
  assert_int_equal(f->proxy.refused, 1);
  run(f, 'B');

  /* Nor the unnamed one parsed by someone else on the shared server. */
  b.len = 0;
  msg_bind(&b, "", "", NULL);
  plan(f, &b);
  assert_error(f, 0, "26000");
  run(f, 'B');
  f->proxy.owns_unnamed = true;
  plan(f, &b);
  assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_PASSTHROUGH);
  run(f, 'B');

  /* Closing a named statement forgets only the client's name. */
  b.len = 0;
  put_target(&b, 'C', 'S', "q1");
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 1);
  assert_reply(f, 0, '3', NULL);
  assert_int_equal(f->s.stmts.count, 0);
  run(f, 'C');
  assert_int_equal(f->proxy.mem, 0);
  pgs_buf_free(&b);
  close_session(f);
}

/* A statement with its key goes to that shard's writer, for that reason. */
static void test_routed_by_key(void **state) {
  fixture_t *f = open_session("app");
  assert_true(f->s.routing);
  char sql[128];
  for (int shard = 0; shard < 2; shard++) {
    snprintf(sql, sizeof(sql), "select * from users where id = %s", key_text[shard]);
    plan_query(f, sql);
    assert_int_equal(f->s.nsteps, 1);
    assert_sent(f, 0, PGS_STEP_FORWARD, 2 * shard, PGS_PLACED_ROUTE);
    assert_int_equal(f->s.steps[0].node, 0);
    run(f, 'Q');
    assert_int_equal(f->s.last_shard, shard);
  }
  /* A statement pgshard cannot read is refused, never guessed. */
  plan_query(f, "select * from users where id = 'unterminated");
  assert_int_equal(f->s.nsteps, 2);
  assert_error(f, 0, "42601");
  assert_reply(f, 1, 'Z', NULL);
  run(f, 'Q');
  /* A write with no key on a deny database is refused with 0A000. */
  plan_query(f, "update users set name = 'x'");
  assert_error(f, 0, "0A000");
  assert_reply(f, 1, 'Z', NULL);
  run(f, 'Q');
  /* The FunctionCall message cannot be routed. */
  plan_empty(f, 'F');
  assert_error(f, 0, "0A000");
  run(f, 'F');
  /* Nor may a client name pgshard's own server-side statements. */
  plan_query(f, "prepare pgs_0123456789abcdef as select 1");
  assert_error(f, 0, "42939");
  run(f, 'Q');
  close_session(f);
}

/* A keyless write where cross-shard writes are allowed: the same Query on
 * each shard in turn, one CommandComplete counting all, one ReadyForQuery. */
static void test_fanout_counts(void **state) {
  fixture_t *f = open_session("appw");
  plan_query(f, "update users set name = 'x'");
  assert_int_equal(f->s.nsteps, 2);
  assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_ROUTE);
  assert_sent(f, 1, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  const pgs_step_t *first = step(f, 0), *last = step(f, 1);
  assert_true(first->drain_all);
  assert_int_equal(first->rule.complete, PGS_ON_COMPLETE_COUNT);
  assert_int_equal(first->rule.ready, PGS_ON_READY_IF_ERROR);
  assert_int_equal(first->rule.done, PGS_ON_DONE_FORWARD);
  assert_int_equal(last->rule.complete, PGS_ON_COMPLETE_SUM);
  assert_int_equal(last->rule.ready, PGS_ON_READY_CLIENT);
  assert_int_equal(last->rule.done, PGS_ON_DONE_SWALLOW);
  assert_false(f->s.ex.copies);
  run(f, 'Q');
  /* A table not in the map is a reference table, held: one shard's count is the answer. */
  plan_query(f, "delete from countries");
  assert_int_equal(f->s.nsteps, 2);
  assert_true(f->s.ex.copies);
  assert_int_equal(step(f, 1)->rule.rows, PGS_ON_ROWS_SWALLOW);
  run(f, 'Q');
  close_session(f);
}

/* A multi-row INSERT with parameters whose rows go to both shards
 * (pgJDBC's reWriteBatchedInserts): each shard's writer is bound its own
 * variant, rows and parameters renumbered, types and formats picked from
 * the client's; one BindComplete; the Execute's counts summed. */
static void test_split_bind(void **state) {
  fixture_t *f = open_session("appw");
  pgs_buf_t b;
  pgs_buf_init(&b);
  uint32_t oids[4] = {20, 25, 20, 25};
  put_parse(&b, "ins", "insert into users (id, name) values ($1, $2), ($3, $4)", 4, oids);
  plan(f, &b);
  run(f, 'P');
  b.len = 0;
  const char *values[4] = {key_text[1], "one", key_text[0], NULL};
  const int16_t formats[4] = {0, 0, 0, 1};
  put_bind(&b, "p", "ins", 4, formats, 4, values, 0, NULL);
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 2);
  for (int shard = 0; shard < 2; shard++) {
    const pgs_step_t *st = step(f, shard);
    assert_sent(f, shard, PGS_STEP_BIND_VARIANT, 2 * shard, PGS_PLACED_ROUTE);
    assert_int_equal(st->rule.done, shard == 0 ? PGS_ON_DONE_FORWARD : PGS_ON_DONE_SWALLOW);
    const pgs_variant_t *v = st->variant;
    assert_non_null(v);
    /* Shard 1 has the first row ($1, $2), shard 0 the second ($3, $4 as $1, $2). */
    const char *want = "insert into users (id, name) values ($1, $2)";
    assert_string_equal((const char *)v->body.data, want);
    const uint8_t *types = v->body.data + strlen(want) + 1;
    assert_int_equal(types[1], 2); /* two parameters: int8, text */
    assert_int_equal(types[5], 20);
    assert_int_equal(types[9], 25);
    assert_memory_equal(v->bind.data + 5, "p", 2);
    assert_memory_equal(v->bind.data + 7, v->name, strlen(v->name) + 1);
    const uint8_t *rest = v->bind.data + 7 + strlen(v->name) + 1;
    assert_int_equal(rest[1], 2);                  /* two format codes */
    assert_int_equal(rest[5], shard == 0 ? 1 : 0); /* shard 0's second is the binary NULL's */
    assert_int_equal(rest[7], 2);                  /* two values */
    size_t klen = strlen(key_text[shard]);
    assert_int_equal(rest[11], klen);
    assert_memory_equal(rest + 12, key_text[shard], klen);
  }
  assert_int_equal(f->s.portals.count, 1);
  run(f, 'B');
  b.len = 0;
  put_execute(&b, "p", 0);
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 2);
  assert_int_equal(step(f, 0)->rule.complete, PGS_ON_COMPLETE_COUNT);
  assert_true(step(f, 0)->drain_all);
  assert_int_equal(step(f, 1)->rule.complete, PGS_ON_COMPLETE_SUM);
  run(f, 'E');
  plan_empty(f, 'S');
  run(f, 'S');
  pgs_buf_free(&b);
  close_session(f);
}

/* A keyless read: a fan ordered on every shard at once, rows merged. */
static void test_merged_read(void **state) {
  fixture_t *f = open_session("app");
  plan_query(f, "select name from users order by id"); /* id: a hidden column */
  assert_non_null(f->s.fan_order->plan);
  assert_int_equal(f->s.fan_order->slots, BIT(0) | BIT(2));
  assert_true(f->s.fan_order->simple);
  assert_false(f->s.fan_order->copy_in);
  assert_false(pgs_plan_streams(f->s.fan_order->plan)); /* sorted: out at the end */
  assert_int_equal(f->s.nsteps, 2);
  for (int i = 0; i < 2; i++) {
    assert_sent(f, i, PGS_STEP_QUERY, 2 * i, PGS_PLACED_ROUTE); /* the shards' variant */
    assert_non_null(strstr(step(f, i)->text, "id"));
    assert_true(step(f, i)->rule.fan);
    assert_true(step(f, i)->concurrent);
  }
  assert_true(step(f, 0)->drain_others); /* the fan's output is out only at its end */
  run(f, 'Q');
  assert_null(f->s.fan_order); /* a plan not started is let go with its steps */
  close_session(f);
}

/* BEGIN is answered by pgshard; the transaction reaches shards as it goes;
 * COMMIT goes to each it reached, or is answered when it reached none. */
static void test_deferred_begin(void **state) {
  fixture_t *f = open_session("app");
  plan_query(f, "begin");
  assert_int_equal(f->s.nsteps, 2);
  assert_reply(f, 0, 'C', "BEGIN");
  assert_reply(f, 1, 'Z', NULL);
  assert_int_equal(f->s.ex.tx, PGS_TX_OPEN);
  assert_string_equal(f->s.begin_sql, "begin");
  run(f, 'Q');
  plan_query(f, "commit");
  assert_reply(f, 0, 'C', "COMMIT");
  assert_int_equal(f->s.ex.tx, PGS_TX_NONE);
  run(f, 'Q');

  plan_query(f, "begin");
  run(f, 'Q');
  char sql[128];
  snprintf(sql, sizeof(sql), "insert into users (id, name) values (%s, 'a')", key_text[1]);
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  assert_int_equal(f->s.tx_mask, BIT(2));
  assert_int_equal(f->s.tx_write_shard, 1);
  /* Writing on the other shard too would make it cross-shard (deny): the
   * statement is refused and the transaction aborted, as in PostgreSQL. */
  snprintf(sql, sizeof(sql), "insert into users (id, name) values (%s, 'b')", key_text[0]);
  plan_query(f, sql);
  assert_error(f, 0, "0A000");
  assert_int_equal(f->s.ex.tx, PGS_TX_ABORTED);
  run(f, 'Q');
  plan_query(f, "select 1");
  assert_error(f, 0, "25P02");
  run(f, 'Q');
  plan_query(f, "commit"); /* ends an aborted transaction: ROLLBACK on its shard */
  assert_int_equal(f->s.nsteps, 1);
  assert_sent(f, 0, PGS_STEP_QUERY, 2, PGS_PLACED_SESSION);
  assert_string_equal(step(f, 0)->text, "ROLLBACK");
  assert_true(step(f, 0)->always);
  assert_int_equal(f->s.ex.tx, PGS_TX_NONE);
  assert_int_equal(f->s.tx_mask, 0);
  run(f, 'Q');
  close_session(f);
}

/* Under 2pc a transaction that wrote on two shards commits in phases: the
 * planner hands it to the coordinator as one TWOPC step. */
static void test_twopc_commit(void **state) {
  fixture_t *f = open_session("app2pc");
  plan_query(f, "begin");
  run(f, 'Q');
  char sql[128];
  for (int shard = 0; shard < 2; shard++) {
    snprintf(sql, sizeof(sql), "update users set name = 'x' where id = %s", key_text[shard]);
    plan_query(f, sql);
    assert_sent(f, 0, PGS_STEP_FORWARD, 2 * shard, PGS_PLACED_ROUTE);
    run(f, 'Q');
  }
  assert_int_equal(f->s.tx_wrote, BIT(0) | BIT(1));
  plan_query(f, "commit");
  assert_int_equal(f->s.nsteps, 1);
  assert_int_equal(step(f, 0)->op, PGS_STEP_TWOPC);
  assert_int_equal(step(f, 0)->phase, PGS_2PC_PREPARE);
  assert_true(step(f, 0)->always);
  assert_int_equal(f->s.ex.tx, PGS_TX_PREPARING);
  assert_int_equal(f->s.twopc->slots, BIT(0) | BIT(2));
  assert_int_equal(f->s.twopc->written, BIT(0) | BIT(2));
  assert_true(f->s.twopc->tag && f->s.twopc->simple);
  assert_string_equal(f->s.twopc->gid, ""); /* named when it prepares */
  run(f, 'Q');
  assert_int_equal(f->s.ex.tx, PGS_TX_NONE); /* cleared with its steps */
  /* At rest the session keeps no working memory: no steps, no 2PC state
   * (a gid left to recovery would keep it). */
  pgs_session_rest(&f->s);
  assert_null(f->s.steps);
  assert_null(f->s.twopc);
  assert_string_equal(pgs_session_twopc_gid(&f->s), "");

  /* A keyless write outside a transaction is made atomic the same way:
   * BEGIN on each shard, the statement with no ReadyForQuery of its own,
   * then the commit's phases. */
  f->s.tx_wrote = 0;
  plan_query(f, "update users set name = 'y'");
  assert_int_equal(f->s.nsteps, 5);
  assert_sent(f, 0, PGS_STEP_INJECT, 0, PGS_PLACED_INTERNAL);
  assert_string_equal(step(f, 0)->text, "BEGIN");
  assert_sent(f, 1, PGS_STEP_INJECT, 2, PGS_PLACED_INTERNAL);
  assert_sent(f, 2, PGS_STEP_FORWARD, 0, PGS_PLACED_ROUTE);
  assert_sent(f, 3, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  assert_int_equal(step(f, 2)->rule.ready, PGS_ON_READY_DROP);
  assert_int_equal(step(f, 3)->rule.ready, PGS_ON_READY_DROP);
  assert_int_equal(step(f, 4)->op, PGS_STEP_TWOPC);
  assert_false(f->s.twopc->tag);
  run(f, 'Q');
  /* In the extended protocol outside a transaction it is refused. */
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "", "update users set name = 'z'", 0);
  plan(f, &b);
  run(f, 'P');
  b.len = 0;
  msg_bind(&b, "", "", NULL);
  plan(f, &b);
  assert_error(f, 0, "0A000");
  assert_int_equal(f->s.ex.unit, PGS_UNIT_SKIP_TO_SYNC);
  run(f, 'B');
  pgs_buf_free(&b);
  close_session(f);
}

/* libpq pipelines Parse/Bind/Execute/Sync: the Parse goes where the Bind
 * that follows it will route; the unit's Sync goes to every shard it
 * reached, the last ReadyForQuery being the client's. */
static void test_pipelined_units(void **state) {
  fixture_t *f = open_session("app");
  pgs_buf_t b;
  pgs_buf_init(&b);
  for (int shard = 1; shard >= 0; shard--) {
    b.len = 0;
    msg_parse(&b, "by_id", "select * from users where id = $1", 20);
    msg_bind(&b, "", "by_id", key_text[shard]);
    put_execute(&b, "", 0);
    pgs_msg_empty(&b, 'S');
    plan(f, &b); /* the Parse, with the Bind in sight */
    assert_int_equal(f->s.nsteps, 1);
    assert_sent(f, 0, PGS_STEP_PARSE, 2 * shard, PGS_PLACED_ROUTE);
    run(f, 'P');
    b.len = 0;
    msg_bind(&b, "", "by_id", key_text[shard]);
    plan(f, &b);
    assert_int_equal(f->s.nsteps, 1);
    assert_sent(f, 0, PGS_STEP_FORWARD, 2 * shard, PGS_PLACED_ROUTE);
    run(f, 'B');
    b.len = 0;
    put_execute(&b, "", 0);
    plan(f, &b);
    assert_sent(f, 0, PGS_STEP_FORWARD, 2 * shard, PGS_PLACED_ROUTE);
    run(f, 'E');
  }
  assert_int_equal(f->s.unit_mask, BIT(0) | BIT(2));
  plan_empty(f, 'S');
  assert_int_equal(f->s.nsteps, 2);
  for (int i = 0; i < 2; i++) {
    assert_sent(f, i, PGS_STEP_SYNC, 2 * i, PGS_PLACED_SESSION);
    assert_int_equal(step(f, i)->rule.ready, PGS_ON_READY_LAST_OF_N);
    assert_true(step(f, i)->concurrent && step(f, i)->always);
  }
  assert_int_equal(f->s.ex.ready_pending, 2);
  assert_int_equal(f->s.unit_mask, 0);
  assert_int_equal(f->s.portals.count, 0); /* outside a transaction: portals end */
  run(f, 'S');
  /* A Parse with no Bind in sight goes where the session is. */
  b.len = 0;
  msg_parse(&b, "later", "select * from users where id = $1", 20);
  plan(f, &b);
  assert_sent(f, 0, PGS_STEP_PARSE, f->s.cur, PGS_PLACED_SESSION);
  run(f, 'P');
  /* A bare Sync is answered by pgshard. */
  f->s.unit_mask = 0;
  plan_empty(f, 'S');
  assert_int_equal(f->s.nsteps, 1);
  assert_reply(f, 0, 'Z', NULL);
  run(f, 'S');
  /* A Flush goes where the session is; with no server, nowhere. */
  plan_empty(f, 'H');
  assert_sent(f, 0, PGS_STEP_FORWARD, f->s.cur, PGS_PLACED_SESSION);
  run(f, 'H');
  f->s.cur = -1;
  plan_empty(f, 'H');
  assert_int_equal(f->s.nsteps, 0);
  run(f, 'H');
  pgs_buf_free(&b);
  close_session(f);
}

/* A merged portal: bound on one part at once, on the others with their
 * Execute. */
static void test_merged_portal(void **state) {
  fixture_t *f = open_session("app");
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "all", "select id from users", 0);
  plan(f, &b);
  run(f, 'P');
  b.len = 0;
  msg_bind(&b, "p", "all", NULL);
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 1);
  assert_true(step(f, 0)->merged);
  int bound = step(f, 0)->shard;
  run(f, 'B');
  pgs_portal_t *portal = pgs_strmap_get(&f->s.portals, "p");
  assert_non_null(portal);
  assert_int_equal(portal->mask, BIT(0) | BIT(2));
  assert_int_equal(portal->unbound, (BIT(0) | BIT(2)) & ~BIT(bound));
  b.len = 0;
  put_target(&b, 'D', 'P', "p");
  plan(f, &b);
  assert_sent(f, 0, PGS_STEP_FORWARD, bound, PGS_PLACED_ROUTE);
  run(f, 'D');
  b.len = 0;
  put_execute(&b, "p", 0);
  plan(f, &b);
  assert_non_null(f->s.fan_order->plan);
  assert_false(f->s.fan_order->simple);
  assert_null(f->s.fan_order->portal); /* whole: the rows stream out */
  assert_int_equal(f->s.nsteps, 2);
  assert_sent(f, 0, PGS_STEP_FAN_EXEC, 0, PGS_PLACED_ROUTE);
  assert_sent(f, 1, PGS_STEP_FAN_EXEC, 2, PGS_PLACED_ROUTE);
  assert_true(step(f, 0)->drain_all); /* plain concatenation: streams */
  run(f, 'E');
  pgs_buf_free(&b);
  close_session(f);
}

/* A DataRow of one int4 column holding V. */
static void put_row(pgs_buf_t *b, int v) {
  char text[16];
  int n = snprintf(text, sizeof(text), "%d", v);
  size_t start = pgs_msg_begin(b, 'D');
  pgs_buf_put_i16(b, 1);
  pgs_buf_put_i32(b, n);
  pgs_buf_put(b, text, (size_t)n);
  pgs_msg_end(b, start);
}

/* The types of the messages in B, as a string ("DDs"). */
static void message_types(const pgs_buf_t *b, char *out, size_t cap) {
  size_t n = 0;
  for (size_t at = 0; at + 5 <= b->len && n + 1 < cap; at += 1 + pgs_get_u32(b->data + at + 1))
    out[n++] = (char)b->data[at];
  out[n] = '\0';
}

/* A merged portal fetched in parts (a driver's fetch size): the first
 * Execute with a row limit gathers the whole result through a fan; the
 * next ones are answered from the gathered rows, PortalSuspended between
 * chunks, as PostgreSQL answers them. */
static void test_merged_portal_in_parts(void **state) {
  fixture_t *f = open_session("app");
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "all", "select id from users order by id", 0);
  plan(f, &b);
  run(f, 'P');
  b.len = 0;
  msg_bind(&b, "p", "all", NULL);
  plan(f, &b);
  run(f, 'B');
  b.len = 0;
  put_execute(&b, "p", 2);
  plan(f, &b);
  pgs_portal_t *portal = pgs_strmap_get(&f->s.portals, "p");
  assert_ptr_equal(f->s.fan_order->portal, portal);
  assert_int_equal(f->s.fan_order->max_rows, 2);
  assert_false(f->s.fan_order->declare);
  assert_true(step(f, 0)->drain_others); /* gathered: out only at its end */
  run(f, 'E');
  /* The fan (the proxy's) gathered 5 rows and sent the first 2. */
  pgs_buf_t rows, out;
  pgs_buf_init(&rows);
  pgs_buf_init(&out);
  for (int i = 1; i <= 5; i++) put_row(&rows, i);
  long long before = f->proxy.mem;
  pgs_portal_gathered(portal, &rows, NULL);
  assert_true(f->proxy.mem > before); /* charged to the session */
  assert_int_equal(pgs_portal_fetch(portal, 2, PGS_FETCH_EXECUTE, &out), 2);
  char types[16];
  message_types(&out, types, sizeof(types));
  assert_string_equal(types, "DDs");
  /* The next Execute: no server, the next rows. */
  b.len = 0;
  put_execute(&b, "p", 2);
  plan(f, &b);
  assert_int_equal(f->s.nsteps, 1);
  assert_int_equal(step(f, 0)->op, PGS_STEP_ROWS);
  assert_int_equal(step(f, 0)->shard, -1);
  assert_int_equal(step(f, 0)->rows, 2);
  assert_string_equal(step(f, 0)->text, "p");
  assert_null(f->s.fan_order);
  run(f, 'E');
  out.len = 0;
  assert_int_equal(pgs_portal_fetch(portal, 2, PGS_FETCH_EXECUTE, &out), 2);
  out.len = 0;
  assert_int_equal(pgs_portal_fetch(portal, 2, PGS_FETCH_EXECUTE, &out), 1);
  message_types(&out, types, sizeof(types));
  assert_string_equal(types, "DC"); /* the last chunk's count, as PostgreSQL */
  assert_non_null(memmem(out.data, out.len, "SELECT 1", 9));
  /* Bound again: the gathered rows go, and their charge. */
  b.len = 0;
  msg_bind(&b, "p", "all", NULL);
  plan(f, &b);
  run(f, 'B');
  assert_false(portal->gathered);
  assert_int_equal(f->proxy.mem, before);
  /* A Sync outside a transaction ends the portals; one a fan still gathers
   * into (asyncpg's fetchrow: Execute 1 and Sync in one write) is left to
   * the fan, which frees it when done (fanout.c). */
  portal->busy = true;
  plan_empty(f, 'S');
  assert_true(portal->closed);
  assert_null(pgs_strmap_get(&f->s.portals, "p"));
  run(f, 'S');
  portal->busy = false;
  pgs_session_free_portal(portal); /* as the fan does */
  pgs_buf_free(&out);
  pgs_buf_free(&b);
  close_session(f); /* and every byte was given back */
}

/* SQL cursors: one over several shards is gathered at DECLARE and FETCH is
 * answered from it; one over one shard lives there and FETCH follows it;
 * either ends with its transaction unless WITH HOLD. */
static void test_sql_cursors(void **state) {
  fixture_t *f = open_session("app");
  plan_query(f, "declare c cursor for select id from users order by id");
  assert_error(f, 0, "25P01"); /* WITHOUT HOLD needs a transaction */
  run(f, 'Q');
  plan_query(f, "begin");
  run(f, 'Q');
  plan_query(f, "declare c cursor for select id from users order by id");
  assert_non_null(f->s.fan_order->plan);
  assert_true(f->s.fan_order->declare && f->s.fan_order->simple);
  pgs_portal_t *cursor = pgs_strmap_get(&f->s.cursors, "c");
  assert_ptr_equal(f->s.fan_order->portal, cursor);
  assert_int_equal(f->s.nsteps, 2);
  assert_sent(f, 0, PGS_STEP_QUERY, 0, PGS_PLACED_ROUTE); /* the query itself */
  assert_sent(f, 1, PGS_STEP_QUERY, 2, PGS_PLACED_ROUTE);
  assert_string_equal(step(f, 0)->text, " select id from users order by id");
  run(f, 'Q');
  pgs_buf_t rows, head, out;
  pgs_buf_init(&rows);
  pgs_buf_init(&head);
  pgs_buf_init(&out);
  for (int i = 1; i <= 3; i++) put_row(&rows, i);
  pgs_msg_empty(&head, 'T'); /* stands for its RowDescription */
  pgs_portal_gathered(cursor, &rows, &head);
  plan_query(f, "fetch 2 from c");
  assert_int_equal(f->s.nsteps, 2);
  assert_int_equal(step(f, 0)->op, PGS_STEP_ROWS);
  assert_int_equal(step(f, 0)->fetch, PGS_FETCH_FETCH);
  assert_int_equal(step(f, 0)->rows, 2);
  assert_reply(f, 1, 'Z', NULL);
  run(f, 'Q');
  char types[16];
  assert_int_equal(pgs_portal_fetch(cursor, 2, PGS_FETCH_FETCH, &out), 2);
  message_types(&out, types, sizeof(types));
  assert_string_equal(types, "TDDC");
  plan_query(f, "move all in c");
  assert_int_equal(step(f, 0)->fetch, PGS_FETCH_MOVE);
  assert_int_equal(step(f, 0)->rows, 0);
  run(f, 'Q');
  plan_query(f, "fetch prior from c");
  assert_error(f, 0, "0A000");
  run(f, 'Q');
  assert_int_equal(f->s.ex.tx, PGS_TX_ABORTED); /* an error aborts it, as in PostgreSQL */
  plan_query(f, "rollback");
  run(f, 'Q');
  assert_null(pgs_strmap_get(&f->s.cursors, "c"));

  /* WITH HOLD outside a transaction; CLOSE answered by pgshard. */
  plan_query(f, "declare h cursor with hold for select id from users");
  assert_true(f->s.fan_order->declare);
  run(f, 'Q');
  plan_query(f, "close h");
  assert_reply(f, 0, 'C', "CLOSE CURSOR");
  run(f, 'Q');
  assert_null(pgs_strmap_get(&f->s.cursors, "h"));

  /* Over one shard: DECLARE goes there, FETCH follows it. */
  plan_query(f, "begin");
  run(f, 'Q');
  char sql[128];
  snprintf(sql, sizeof(sql), "declare one cursor for select * from users where id = %s",
           key_text[1]);
  plan_query(f, sql);
  assert_null(f->s.fan_order);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  f->s.linked |= BIT(0);
  plan_query(f, "fetch 1 from one");
  assert_int_equal(f->s.nsteps, 1);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  plan_query(f, "commit");
  run(f, 'Q');
  assert_null(pgs_strmap_get(&f->s.cursors, "one"));
  pgs_buf_free(&out);
  close_session(f);
}

/* COPY into a sharded table: on each shard's writer at once, rows split by
 * key by the fan the plan orders; outside a transaction each part runs in a
 * transaction of pgshard's. */
static void test_copy_in(void **state) {
  fixture_t *f = open_session("app");
  plan_query(f, "copy users (id, name) from stdin");
  assert_non_null(f->s.fan_order->plan);
  assert_true(f->s.fan_order->copy_in);
  assert_true(f->s.fan_order->own_tx);
  assert_int_equal(f->s.fan_order->slots, BIT(0) | BIT(2));
  assert_int_equal(f->s.fan_order->spec->ncolumns, 2);
  assert_int_equal(f->s.nsteps, 4);
  assert_sent(f, 0, PGS_STEP_INJECT, 0, PGS_PLACED_INTERNAL);
  assert_true(step(f, 0)->concurrent);
  assert_sent(f, 2, PGS_STEP_FORWARD, 0, PGS_PLACED_ROUTE);
  assert_sent(f, 3, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  assert_true(step(f, 2)->rule.fan);
  run(f, 'Q');
  /* Its data goes where the COPY went. */
  f->s.cur = 2;
  plan_empty(f, 'c');
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_SESSION);
  run(f, 'c');
  close_session(f);
}

/* pgshard's own settings are answered by pgshard and steer what follows. */
static void test_pgshard_settings(void **state) {
  fixture_t *f = open_session("app");
  plan_query(f, "set pgshard.shard = 's1'");
  assert_int_equal(f->s.nsteps, 2);
  assert_reply(f, 0, 'C', "SET");
  assert_reply(f, 1, 'Z', NULL);
  assert_int_equal(f->s.hint_shard, 1);
  run(f, 'Q');
  plan_query(f, "select count(*) from users");
  assert_int_equal(f->s.nsteps, 1);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  plan_query(f, "set pgshard.shard = 'nowhere'");
  assert_error(f, 0, "22023");
  run(f, 'Q');
  assert_int_equal(f->s.hint_shard, 1);
  plan_query(f, "reset pgshard.shard");
  assert_reply(f, 0, 'C', "RESET");
  assert_int_equal(f->s.hint_shard, -1);
  run(f, 'Q');
  /* Mixed with anything else it is refused. */
  plan_query(f, "set pgshard.shard = 's0'; set work_mem = '1MB'");
  assert_error(f, 0, "0A000");
  run(f, 'Q');
  /* SET goes wherever the session holds servers. */
  f->s.linked = BIT(0) | BIT(2);
  plan_query(f, "set work_mem = '1MB'");
  assert_int_equal(f->s.nsteps, 2);
  assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_SESSION);
  assert_sent(f, 1, PGS_STEP_FORWARD, 2, PGS_PLACED_SESSION);
  assert_int_equal(f->s.ntx_ops, 1);
  run(f, 'Q');
  pgs_session_clear_tx_ops(&f->s);
  close_session(f);
}

/* Reads go to a replica that qualifies, round robin; a session that wrote
 * reads its writes on the primary (read_your_writes = session); without a
 * readable replica, the primary. */
static void test_replica_placement(void **state) {
  fixture_t *f = open_session("repl");
  pgs_node_state_t nodes[2] = {
      {.up = true, .writer = true, .lsn = 100},
      {.up = true, .in_recovery = true, .readable = true, .lsn = 100},
  };
  pgs_shard_health_t health = {.nodes = nodes, .nnodes = 2, .writer = 0};
  f->proxy.health = &health;
  char sql[128];
  snprintf(sql, sizeof(sql), "select * from users where id = %s", key_text[1]);
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 3, PGS_PLACED_ROUTE);
  assert_int_equal(step(f, 0)->node, 1);
  assert_int_equal(f->s.picked[1], 1);
  assert_int_equal(f->proxy.rr, 1);
  run(f, 'Q');
  /* Not readable (lagging): the primary. */
  nodes[1].readable = false;
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  nodes[1].readable = true;
  /* A write, committed: this session now reads on primaries. */
  snprintf(sql, sizeof(sql), "update users set name = 'x' where id = %s", key_text[1]);
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  assert_int_equal(f->s.tx_wrote, BIT(1));
  pgs_session_tx_done(&f->s, fake_now);
  assert_true(f->s.wrote_ever);
  snprintf(sql, sizeof(sql), "select * from users where id = %s", key_text[1]);
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  /* Unless it asks for replicas. */
  plan_query(f, "set pgshard.route = 'replica'");
  run(f, 'Q');
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 3, PGS_PLACED_ROUTE);
  run(f, 'Q');
  /* No primary accepting writes: a write is refused (08006), not guessed. */
  nodes[0].up = false;
  health.writer = -1;
  snprintf(sql, sizeof(sql), "update users set name = 'y' where id = %s", key_text[1]);
  plan_query(f, sql);
  assert_error(f, 0, "08006");
  run(f, 'Q');
  close_session(f);
}

/* Transaction pooling at the end of a transaction: the servers go back. */
static void release_servers(fixture_t *f) {
  f->s.linked = 0;
  f->s.cur = -1;
}

/* Reads take the replicas in turn, one turn per read, whichever protocol
 * carries them: a simple Query, an unnamed Parse/Bind/Execute/Sync sent
 * together (the Parse placed by its Bind), a Bind of a named statement.
 * (pgbench -M extended: every unit of a worker went to one replica.) */
/* The unnamed statement's Bind (placed on shard 0's replica slot, on the
 * replica node PARSED_ON its Parse went to) and Execute, planned and run. */
static void bind_and_execute(fixture_t *f, pgs_buf_t *b, int parsed_on) {
  b->len = 0;
  msg_bind(b, "", "", "1");
  plan(f, b);
  assert_int_equal(step(f, 0)->shard, 1);
  assert_int_equal(f->s.picked[0], parsed_on);
  run(f, 'B');
  b->len = 0;
  put_execute(b, "", 0);
  plan(f, b);
  run(f, 'E');
}

static void test_replica_round_robin(void **state) {
  fixture_t *f = open_session("rr");
  pgs_node_state_t nodes[3] = {
      {.up = true, .writer = true, .lsn = 100},
      {.up = true, .in_recovery = true, .readable = true, .lsn = 100},
      {.up = true, .in_recovery = true, .readable = true, .lsn = 100},
  };
  pgs_shard_health_t health = {.nodes = nodes, .nnodes = 3, .writer = 0};
  f->proxy.health = &health;
  int served[3] = {0, 0, 0}, last = -1;
  for (int i = 0; i < 6; i++) {
    plan_query(f, "select 1");
    assert_int_equal(step(f, 0)->shard, 1);
    assert_int_not_equal(f->s.picked[0], last);
    last = f->s.picked[0];
    served[last]++;
    run(f, 'Q');
    release_servers(f);
  }
  assert_int_equal(served[1], 3);
  assert_int_equal(served[2], 3);

  pgs_buf_t b;
  pgs_buf_init(&b);
  for (int i = 0; i < 6; i++) {
    b.len = 0;
    msg_parse(&b, "", "select $1::int", 0);
    msg_bind(&b, "", "", "1");
    put_execute(&b, "", 0);
    pgs_msg_empty(&b, 'S');
    uint32_t rr = f->proxy.rr;
    plan(f, &b); /* the Parse, its Bind in sight */
    assert_int_equal(step(f, 0)->op, PGS_STEP_PARSE);
    assert_int_equal(step(f, 0)->shard, 1);
    int parsed_on = f->s.picked[0];
    assert_int_not_equal(parsed_on, last);
    run(f, 'P');
    bind_and_execute(f, &b, parsed_on); /* the Bind follows its Parse */
    plan_empty(f, 'S');
    run(f, 'S');
    release_servers(f);
    assert_int_equal(f->proxy.rr, rr + 1); /* one turn per unit */
    last = parsed_on;
    served[last]++;
  }
  assert_int_equal(served[1], 6);
  assert_int_equal(served[2], 6);

  /* Two reads in one unit: one replica, one turn. */
  uint32_t rr = f->proxy.rr;
  for (int k = 0; k < 2; k++) {
    b.len = 0;
    msg_parse(&b, "", "select $1::int", 0);
    msg_bind(&b, "", "", "1");
    put_execute(&b, "", 0);
    plan(f, &b);
    assert_int_equal(step(f, 0)->shard, 1);
    if (k == 0) assert_int_not_equal(f->s.picked[0], last);
    if (k == 1) assert_int_equal(f->s.picked[0], last);
    last = f->s.picked[0];
    run(f, 'P');
    bind_and_execute(f, &b, last);
  }
  plan_empty(f, 'S');
  run(f, 'S');
  release_servers(f);
  assert_int_equal(f->proxy.rr, rr + 1);

  /* A named statement, then its Binds alone: each Bind takes a turn. */
  b.len = 0;
  msg_parse(&b, "q", "select $1::int", 0);
  plan(f, &b);
  run(f, 'P');
  plan_empty(f, 'S');
  run(f, 'S');
  release_servers(f);
  for (int i = 0; i < 4; i++) {
    b.len = 0;
    msg_bind(&b, "", "q", "1");
    plan(f, &b);
    assert_int_equal(step(f, 0)->shard, 1);
    assert_int_not_equal(f->s.picked[0], last);
    last = f->s.picked[0];
    run(f, 'B');
    plan_empty(f, 'S');
    run(f, 'S');
    release_servers(f);
  }
  pgs_buf_free(&b);
  close_session(f);
}

/* Over the memory budget: the message's plan is one error. */
static void test_over_budget(void **state) {
  fixture_t *f = open_session("app");
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "big", "select * from users where id = $1", 20);
  assert_true(pgs_plan_cost(&f->s, 'P', b.data, b.len) > b.len);
  pgs_plan_over_budget(&f->s, "max_client_memory", 1000);
  assert_int_equal(f->s.nsteps, 1);
  assert_error(f, 0, "53200");
  assert_string_equal(f->proxy.last_refusal, "53200");
  run(f, 'P');
  plan(f, &b);
  run(f, 'P');
  assert_int_equal(pgs_plan_cost(&f->s, 'P', b.data, b.len), 0); /* the same again: kept */
  pgs_buf_free(&b);
  close_session(f);
}

/* A reload: the session moves to the new map, per-shard state by shard
 * name; one whose hint the new map cannot place is refused, unchanged. */
static void test_move_to_reloaded_map(void **state) {
  fixture_t *f = open_session("app");
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "by_id", "select * from users where id = $1", 20);
  plan(f, &b);
  run(f, 'P');
  pgs_buf_free(&b);
  f->s.ryw_lsn[1] = 77;
  f->s.last_shard = 1;
  plan_query(f, "set pgshard.shard = 's1'");
  run(f, 'Q');
  /* The new map: s1 first, s0 dropped. */
  pgs_config_t *next = pgs_config_parse_string(
      "[user.app]\npassword = x\n[database.app]\n[shard.app.s1]\nprimary = port=2\n"
      "[shard.app.s2]\nprimary = port=9\n"
      "[table.app.users]\ncolumn = id\ntype = bigint\nstrategy = hash\n");
  assert_int_equal(next->nerrors, 0);
  const pgs_database_t *db = pgs_config_find_database(next, "app");
  char sqlstate[6], message[640];
  analyze_db = db;
  assert_true(pgs_session_move(&f->s, db, sqlstate, message, sizeof(message)));
  assert_ptr_equal(f->s.db, db);
  assert_int_equal(f->s.hint_shard, 0);  /* s1, now first */
  assert_int_equal(f->s.last_shard, 0);  /* s1 too */
  assert_int_equal(f->s.ryw_lsn[0], 77); /* carried by name */
  assert_int_equal(f->s.ryw_lsn[1], 0);
  const pgs_client_stmt_t *stmt = pgs_strmap_get(&f->s.stmts, "by_id");
  assert_non_null(stmt);
  assert_non_null(stmt->plan); /* analysed again on the new map */
  /* Back to a map without s1: the hint cannot be placed. */
  const pgs_database_t *app = pgs_config_find_database(config, "app");
  pgs_config_t *third = pgs_config_parse_string(
      "[user.app]\npassword = x\n[database.app]\n[shard.app.s0]\nprimary = port=1\n");
  assert_int_equal(third->nerrors, 0);
  assert_false(pgs_session_move(&f->s, pgs_config_find_database(third, "app"), sqlstate, message,
                                sizeof(message)));
  assert_string_equal(sqlstate, "22023");
  assert_non_null(strstr(message, "shard \"s1\" set by pgshard.shard"));
  assert_ptr_equal(f->s.db, db); /* unchanged */
  analyze_db = app;
  assert_true(pgs_session_move(&f->s, app, sqlstate, message, sizeof(message)));
  close_session(f);
  pgs_config_unref(third);
  pgs_config_unref(next);
}

/* The text of the Query in the session's rewritten message. */
static const char *rewritten_sql(fixture_t *f) {
  assert_true(f->s.rewritten);
  assert_int_equal(f->s.message.data[0], 'Q');
  return (const char *)f->s.message.data + 5;
}

/* INSERT INTO t VALUES without a column list: planned (and sent) with the
 * catalog's columns named, once they are known; refused before. */
static void test_insert_without_columns(void **state) {
  fixture_t *f = open_session("app");
  char sql[160];
  snprintf(sql, sizeof(sql), "insert into users values (%s, 'x')", key_text[1]);
  plan_query(f, sql);
  assert_error(f, 0, "0A000"); /* the columns are not known yet */
  assert_false(f->s.rewritten);
  run(f, 'Q');
  f->proxy.columns = "id, name";
  plan_query(f, sql);
  assert_int_equal(f->s.nsteps, 1);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  snprintf(sql, sizeof(sql), "insert into users (id, name) values (%s, 'x')", key_text[1]);
  assert_string_equal(rewritten_sql(f), sql);
  run(f, 'Q');
  /* Aliases, quotes, schemas, comments and SELECT without FROM. */
  static const char *const shapes[][2] = {
      {"INSERT INTO users AS u VALUES (%s, 'y')", "INSERT INTO users AS u (id, name) VALUES"},
      {"insert /* c */ into public . \"users\" values (%s, 'y')",
       "insert /* c */ into public . \"users\" (id, name) values"},
      {"insert into users select %s, 'y'", "insert into users (id, name) select"},
  };
  for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
    snprintf(sql, sizeof(sql), shapes[i][0], key_text[0]);
    plan_query(f, sql);
    assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_ROUTE);
    assert_memory_equal(rewritten_sql(f), shapes[i][1], strlen(shapes[i][1]));
    run(f, 'Q');
  }
  /* No values to route by: refused as before. */
  plan_query(f, "insert into users default values");
  assert_int_equal(step(f, 0)->op, PGS_STEP_ERROR);
  assert_false(f->s.rewritten);
  run(f, 'Q');
  /* The extended protocol: the statement is prepared with the list, and
   * its Bind routes by the key. */
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "ins", "insert into users values ($1, 'p')", 20);
  plan(f, &b);
  const pgs_client_stmt_t *stmt = pgs_strmap_get(&f->s.stmts, "ins");
  assert_non_null(stmt);
  assert_string_equal((const char *)stmt->parse_body.data,
                      "insert into users (id, name) values ($1, 'p')");
  assert_int_equal(stmt->ntypes, 1);
  assert_int_equal(stmt->type_oids[0], 20);
  run(f, 'P');
  b.len = 0;
  msg_bind(&b, "", "ins", key_text[1]);
  plan(f, &b);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'B');
  pgs_buf_free(&b);
  close_session(f);
}

/* A SET through the extended protocol (pgJDBC's setup SETs): taken by the
 * session when its portal is executed, as a Query's SET is when sent; the
 * session is not pinned. Pass-through and routing alike. */
static void test_prepared_set(void **state) {
  for (int routing = 0; routing < 2; routing++) {
    fixture_t *f = open_session(routing ? "app" : "one");
    f->proxy.owns_unnamed = true;
    pgs_buf_t b;
    pgs_buf_init(&b);
    msg_parse(&b, "", "SET extra_float_digits = 3", 0);
    plan(f, &b);
    run(f, 'P');
    assert_false(f->s.pinned);
    assert_int_equal(f->s.ntx_ops, 0); /* not run yet */
    b.len = 0;
    msg_bind(&b, "", "", NULL);
    plan(f, &b);
    run(f, 'B');
    assert_int_equal(f->s.ntx_ops, 0);
    b.len = 0;
    put_execute(&b, "", 0);
    plan(f, &b);
    assert_int_equal(f->s.nsteps, 1);
    assert_int_equal(step(f, 0)->op, PGS_STEP_FORWARD);
    run(f, 'E');
    assert_int_equal(f->s.ntx_ops, 1);
    assert_string_equal(f->s.tx_ops[0].name, "extra_float_digits");
    assert_string_equal(f->s.tx_ops[0].sql, "SET extra_float_digits = 3");
    assert_false(f->s.pinned);
    /* A named statement, bound to a named portal, executed twice. */
    b.len = 0;
    msg_parse(&b, "tz", "SET TIME ZONE 'UTC'", 0);
    plan(f, &b);
    run(f, 'P');
    b.len = 0;
    msg_bind(&b, "p", "tz", NULL);
    plan(f, &b);
    run(f, 'B');
    b.len = 0;
    put_execute(&b, "p", 0);
    plan(f, &b);
    run(f, 'E');
    assert_int_equal(f->s.ntx_ops, 2);
    /* A portal of another statement under the same name takes nothing. */
    b.len = 0;
    msg_parse(&b, "q", "select 1", 0);
    plan(f, &b);
    run(f, 'P');
    b.len = 0;
    msg_bind(&b, "p", "q", NULL);
    plan(f, &b);
    run(f, 'B');
    b.len = 0;
    put_execute(&b, "p", 0);
    plan(f, &b);
    run(f, 'E');
    assert_int_equal(f->s.ntx_ops, 2);
    assert_false(f->s.pinned);
    pgs_session_clear_tx_ops(&f->s);
    /* State that cannot be replayed still pins. */
    b.len = 0;
    msg_parse(&b, "", "LOAD 'auto_explain'", 0);
    plan(f, &b);
    run(f, 'P');
    assert_true(f->s.pinned);
    pgs_buf_free(&b);
    close_session(f);
  }
}

static void assert_listen(fixture_t *f, int i, char what, const char *channel) {
  const pgs_step_t *st = step(f, i);
  assert_int_equal(st->op, PGS_STEP_LISTEN);
  assert_int_equal(st->shard, -1);
  assert_int_equal(st->placed, PGS_PLACED_NONE);
  assert_int_equal(st->reply, what);
  assert_string_equal(st->text, channel);
}

/* Transaction pooling: LISTEN and UNLISTEN reach no server, in a simple
 * query or through the protocol, routing or pass-through: a LISTEN step
 * (the proxy's listeners) with the channel as PostgreSQL folds it. The
 * session is not pinned; NOTIFY still goes to the first shard's primary.
 * Session pooling passes LISTEN through and pins, as before. */
static void test_listen(void **state) {
  for (int routing = 0; routing < 2; routing++) {
    fixture_t *f = open_session(routing ? "app" : "one");
    f->proxy.owns_unnamed = true;
    plan_query(f, "LISTEN Orders");
    assert_int_equal(f->s.nsteps, 2);
    assert_listen(f, 0, 'L', "orders");
    assert_reply(f, 1, 'Z', NULL);
    run(f, 'Q');
    plan_query(f, "unlisten \"Orders\"");
    assert_listen(f, 0, 'U', "Orders");
    run(f, 'Q');
    plan_query(f, "UNLISTEN *");
    assert_listen(f, 0, '*', "");
    run(f, 'Q');
    assert_false(f->s.pinned);
    assert_int_equal(f->s.ntx_ops, 0);
    /* LISTEN only as a statement of its own. */
    plan_query(f, "LISTEN a; SELECT 1");
    assert_error(f, 0, "0A000");
    assert_reply(f, 1, 'Z', NULL);
    run(f, 'Q');
    /* An UNLISTEN among other statements (asyncpg's pool reset), and
     * DISCARD ALL: the channels go quietly, the query to the server. */
    plan_query(f, "CLOSE ALL; UNLISTEN *; RESET ALL");
    assert_listen(f, 0, '*', "");
    assert_true(step(f, 0)->internal);
    assert_sent(f, 1, PGS_STEP_FORWARD, 0, routing ? PGS_PLACED_SESSION : PGS_PLACED_PASSTHROUGH);
    run(f, 'Q');
    plan_query(f, "DISCARD ALL");
    assert_listen(f, 0, '*', "");
    assert_true(step(f, 0)->internal);
    assert_int_equal(step(f, 1)->op, PGS_STEP_FORWARD);
    run(f, 'Q');
    pgs_session_clear_tx_ops(&f->s);
    plan_query(f, "NOTIFY orders, 'x'");
    assert_sent(f, 0, PGS_STEP_FORWARD, 0, routing ? PGS_PLACED_ROUTE : PGS_PLACED_PASSTHROUGH);
    run(f, 'Q');
    /* Parse, Bind, Describe, Execute: only the Execute does it. */
    pgs_buf_t b;
    pgs_buf_init(&b);
    msg_parse(&b, "l", "LISTEN \"Mixed\"", 0);
    plan(f, &b);
    if (routing)
      assert_reply(f, 0, '1', NULL); /* answered: the statement stays pgshard's */
    else
      assert_sent(f, 0, PGS_STEP_PARSE, 0, PGS_PLACED_PASSTHROUGH); /* harmless until run */
    run(f, 'P');
    b.len = 0;
    msg_bind(&b, "p", "l", NULL);
    plan(f, &b);
    if (routing)
      assert_reply(f, 0, '2', NULL);
    else
      assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_PASSTHROUGH);
    run(f, 'B');
    b.len = 0;
    put_execute(&b, "p", 0);
    plan(f, &b);
    assert_int_equal(f->s.nsteps, 1);
    assert_listen(f, 0, 'L', "Mixed");
    assert_false(step(f, 0)->internal); /* answered by pgshard */
    run(f, 'E');
    assert_false(f->s.pinned);
    assert_int_equal(f->s.ntx_ops, 0);
    plan_empty(f, 'S');
    run(f, 'S');
    pgs_buf_free(&b);
    if (routing) {
      /* Inside a transaction: a step too (the proxy keeps it for the
       * COMMIT); a ROLLBACK that reached no server is pgshard's. */
      plan_query(f, "BEGIN");
      run(f, 'Q');
      plan_query(f, "LISTEN t");
      assert_listen(f, 0, 'L', "t");
      run(f, 'Q');
      plan_query(f, "ROLLBACK");
      assert_reply(f, 0, 'C', "ROLLBACK");
      run(f, 'Q');
    }
    close_session(f);
  }
  fixture_t *f = open_session("sess");
  plan_query(f, "LISTEN orders");
  assert_sent(f, 0, PGS_STEP_FORWARD, 0, PGS_PLACED_ROUTE);
  assert_true(f->s.pinned);
  run(f, 'Q');
  close_session(f);
}

/* A resharding: while rows of users move into s1, a statement reaching s1
 * without its key is refused (55000), one by key is not; under a cutover
 * hold whose map swaps the shards (every key moves), a statement by key
 * waits (held, nothing planned), its Parse with it when its Bind is in
 * sight, while a read over both shards and one touching no sharded table
 * go on; a transaction that must retry gets 40001. */
static void test_reshard(void **state) {
  fixture_t *f = open_session("appw");
  char *tables[] = {"users"};
  pgs_move_t move = {.reshard_id = "0011223344556677",
                     .database = "appw",
                     .source = "s0",
                     .target = "s1",
                     .tables = tables,
                     .ntables = 1,
                     .phase = PGS_MOVE_STREAMING};
  f->proxy.moves = &move;
  f->proxy.nmoves = 1;
  plan_query(f, "update users set name = 'x'");
  assert_int_equal(f->s.nsteps, 2);
  assert_error(f, 0, "55000");
  assert_non_null(strstr(f->s.steps[0].text + 6, "table \"users\" has rows moving"));
  assert_reply(f, 1, 'Z', NULL);
  run(f, 'Q');
  char sql[128];
  snprintf(sql, sizeof(sql), "update users set name = 'x' where id = %s", key_text[1]);
  plan_query(f, sql);
  assert_sent(f, 0, PGS_STEP_FORWARD, 2, PGS_PLACED_ROUTE);
  run(f, 'Q');
  f->proxy.moves = NULL;
  f->proxy.nmoves = 0;

  pgs_config_t *next = pgs_config_parse_string(
      "[user.app]\npassword = x\n[database.appw]\ncross_shard_writes = allow\n"
      "[shard.appw.s1]\nprimary = port=2\n[shard.appw.s0]\nprimary = port=1\n" TABLES("appw"));
  assert_int_equal(next->nerrors, 0);
  f->proxy.hold = pgs_config_find_database(next, "appw");
  snprintf(sql, sizeof(sql), "select * from users where id = %s", key_text[0]);
  plan_query(f, sql);
  assert_true(f->s.held);
  assert_int_equal(f->s.nsteps, 0);
  assert_int_equal(f->proxy.refused, 1); /* the 55000 only */
  pgs_steps_clear(&f->s);
  plan_query(f, "select count(*) from users");
  assert_false(f->s.held);
  assert_int_equal(f->s.nsteps, 2); /* a merged read: a fan over both */
  run(f, 'Q');
  plan_query(f, "select 1");
  assert_false(f->s.held);
  run(f, 'Q');
  /* Parse, Bind, Execute, Sync at once: the Parse waits for its Bind. */
  pgs_buf_t b;
  pgs_buf_init(&b);
  msg_parse(&b, "", "select * from users where id = $1", 20);
  msg_bind(&b, "", "", key_text[1]);
  plan(f, &b);
  assert_true(f->s.held);
  assert_int_equal(f->s.nsteps, 0);
  pgs_steps_clear(&f->s);
  /* Released on a changed map inside its transaction: 40001. */
  f->proxy.hold = NULL;
  plan_query(f, "begin");
  run(f, 'Q');
  pgs_buf_t q;
  pgs_buf_init(&q);
  pgs_msg_query(&q, sql);
  pgs_plan_cutover_retry(&f->s, 'Q', q.data, q.len);
  assert_int_equal(f->s.nsteps, 2);
  assert_error(f, 0, "40001");
  assert_non_null(strstr(f->s.steps[0].text + 6, "retry the transaction"));
  assert_reply(f, 1, 'Z', NULL);
  assert_int_equal(f->s.ex.tx, PGS_TX_ABORTED);
  run(f, 'Q');
  plan_query(f, "rollback");
  run(f, 'Q');
  pgs_buf_free(&q);
  pgs_buf_free(&b);
  close_session(f);
  pgs_config_unref(next);
}

static int group_setup(void **state) {
  config = pgs_config_parse_string(config_text);
  for (int i = 0; i < config->nerrors; i++)
    print_message("line %d: %s\n", config->errors[i].line, config->errors[i].message);
  if (config->nerrors) return -1;
  const pgs_database_t *app = pgs_config_find_database(config, "app");
  const pgs_table_t *users = pgs_shardmap_find_table(app, "users");
  bool found[2] = {false, false};
  for (int64_t i = 1; i < 1000 && !(found[0] && found[1]); i++) {
    pgs_key_t k = {.type = PGS_TYPE_BIGINT, .i = i};
    int shard = pgs_shardmap_route(app, users, &k, NULL);
    if (shard >= 0 && shard < 2 && !found[shard]) {
      found[shard] = true;
      key_on[shard] = i;
      snprintf(key_text[shard], sizeof(key_text[shard]), "%lld", (long long)i);
    }
  }
  /* Every database names its shards and tables alike: keys land alike. */
  return found[0] && found[1] ? 0 : -1;
}

static int group_teardown(void **state) {
  pgs_config_unref(config);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_passthrough),
      cmocka_unit_test(test_listen),
      cmocka_unit_test(test_routed_by_key),
      cmocka_unit_test(test_fanout_counts),
      cmocka_unit_test(test_split_bind),
      cmocka_unit_test(test_merged_read),
      cmocka_unit_test(test_deferred_begin),
      cmocka_unit_test(test_twopc_commit),
      cmocka_unit_test(test_pipelined_units),
      cmocka_unit_test(test_merged_portal),
      cmocka_unit_test(test_copy_in),
      cmocka_unit_test(test_pgshard_settings),
      cmocka_unit_test(test_replica_placement),
      cmocka_unit_test(test_replica_round_robin),
      cmocka_unit_test(test_over_budget),
      cmocka_unit_test(test_move_to_reloaded_map),
      cmocka_unit_test(test_merged_portal_in_parts),
      cmocka_unit_test(test_sql_cursors),
      cmocka_unit_test(test_insert_without_columns),
      cmocka_unit_test(test_prepared_set),
      cmocka_unit_test(test_reshard),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
