/*
 * reshard_stream.c — a source's changes since its copy, applied to the
 * shards the new map names, until cutover or abort.
 *
 * pgshardctl is the logical replication client (pgoutput over a libpq
 * replication connection), not a PostgreSQL subscription: every change is
 * routed by the router's own code with the NEW map, so all four strategies
 * and both hash functions move exactly the keys the proxy will look for
 * there, with no second implementation of hashing in SQL.
 *
 * Per source transaction (Begin .. Commit):
 *   Begin      remember its commit position; no target is open yet
 *   Relation   the table's columns, their types and replica identity
 *   Insert     key of the new row -> NEW shard; the source's own: skipped;
 *              another: INSERT there
 *   Update     old and new keys -> shards: same target: UPDATE by identity;
 *              different: DELETE on the old one, INSERT on the new one
 *   Delete     key of the old row -> DELETE there by identity
 *   Message    a cut marker (pgshard_reshard, written by `cutover`)
 *   Truncate   stops the streamer: it would empty the target's own rows
 *   Commit     joins the batch; when the batch is flushed (between
 *              transactions: nothing more ready, or 1000 transactions, or
 *              50 ms, or a marker; never inside one), each
 *              target touched gets applied_lsn = the batch's end (and the
 *              marker) in its state row, in the same transaction as the
 *              rows, then COMMIT once every answer has been checked
 * A batch's statements go to a target pipelined (libpq pipeline mode): one
 * round trip for all of them, a second for the COMMIT.
 * A target opens its transaction (BEGIN) at its first change. A target
 * whose applied_lsn is already past a transaction's commit skips it, so
 * a transaction resent after a crash is applied once. The slot is told
 * (standby status, each second) a position only once every target has
 * committed up to it. Between transactions a keepalive's WAL end is a
 * position too: every commit before it has been sent.
 *
 * An UPDATE or DELETE that finds no row on its target means the target
 * is not what the copy and the stream made it: the streamer stops with the
 * error recorded (fail closed), as for TRUNCATE and a table whose columns
 * changed on the source (DDL: apply it on the target, then rerun start).
 */
#include <poll.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "pgshard/pgoutput.h"
#include "lab.h"
#include "reshard.h"

#define PG_EPOCH_UNIX_S 946684800LL
#define TICK_S 1.0
#define BATCH_MAX_TXNS 1000
#define BATCH_MAX_STATEMENTS 2000 /* queued on one target: answers stay small */
#define BATCH_MAX_S 0.05
#define SLOT_BUSY_WAIT_S 15.0 /* a killed streamer's walsender lets go of the slot within this */

typedef struct rel {
  uint32_t relid;
  char *name;
  const pgs_table_t *table; /* NEW map's; NULL: not a moving table */
  int ncols;
  char **cols;
  uint32_t *types;
  bool *ident;
  int key_col;
} rel_t;

typedef struct target {
  const rs_move_t *move;
  PGconn *conn;
  uint64_t applied;  /* its state's applied_lsn */
  uint64_t recorded; /* the last applied_lsn written while idle */
  bool open;         /* BEGIN sent: a batch's transaction, in pipeline mode */
  long long rows;
  /* What each statement sent in the batch must answer, in order: its name
   * for errors, whether it must have changed a row. */
  const char **expect_what;
  bool *expect_row;
  int nexpect, expect_cap;
} target_t;

typedef struct stream {
  const rs_plan_t *plan;
  const rs_source_t *src;
  PGconn *repl;
  PGconn *mirror; /* the source, for its copies of the targets' rows */
  target_t *targets;
  int ntargets;
  rel_t *rels;
  int nrels;
  bool in_tx;
  uint64_t final_lsn;
  char cut[64];
  uint64_t confirmed; /* every target has everything before it */
  int batch_txns;     /* source transactions applied but not yet committed */
  double batch_start;
  uint64_t batch_lsn; /* the end of the batch's last one */
  char batch_at[32];  /* its commit time (unix seconds) */
  char batch_cut[64]; /* a cut marker in the batch */
  char error[1024];
} stream_t;

static int64_t pg_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ((int64_t)ts.tv_sec - PG_EPOCH_UNIX_S) * 1000000 + ts.tv_nsec / 1000;
}

static bool fail(stream_t *s, const char *fmt, ...) PGS_PRINTF(2, 3);
static bool fail(stream_t *s, const char *fmt, ...) {
  if (s->error[0]) return false; /* the first error is the one to report */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->error, sizeof(s->error), fmt, ap);
  va_end(ap);
  size_t n = strlen(s->error);
  while (n > 0 && s->error[n - 1] == '\n') s->error[--n] = '\0';
  return false;
}

/* ---- relations ---- */

static void rel_clear(rel_t *r) {
  free(r->name);
  rs_free_strings(r->cols, r->ncols);
  free(r->types);
  free(r->ident);
  memset(r, 0, sizeof(*r));
}

static bool on_relation(stream_t *s, const pgs_lr_msg_t *m) {
  rel_t *r = NULL;
  for (int i = 0; i < s->nrels && !r; i++)
    if (s->rels[i].relid == m->relid) r = &s->rels[i];
  if (r == NULL) {
    s->rels = pgs_xrealloc(s->rels, sizeof(*s->rels) * (size_t)(s->nrels + 1));
    r = &s->rels[s->nrels++];
    memset(r, 0, sizeof(*r));
  }
  rel_clear(r);
  r->relid = m->relid;
  r->name = pgs_xstrdup(m->relname);
  r->table = pgs_shardmap_find_table(s->plan->new_db, m->relname);
  r->ncols = m->nrelcols;
  r->cols = pgs_xcalloc((size_t)m->nrelcols + 1, sizeof(*r->cols));
  r->types = pgs_xcalloc((size_t)m->nrelcols + 1, sizeof(*r->types));
  r->ident = pgs_xcalloc((size_t)m->nrelcols + 1, sizeof(*r->ident));
  r->key_col = -1;
  for (int i = 0; i < m->nrelcols; i++) {
    r->cols[i] = pgs_xstrdup(m->relcols[i].name);
    r->types[i] = m->relcols[i].type_oid;
    r->ident[i] = m->relcols[i].key;
    if (r->table && !strcmp(m->relcols[i].name, r->table->column)) r->key_col = i;
  }
  if (r->table && r->key_col < 0)
    return fail(s, "table %s on %s has no column %s any more (DDL during the move)", r->name,
                s->src->shard->name, r->table->column);
  return true;
}

static rel_t *find_rel(stream_t *s, uint32_t relid) {
  for (int i = 0; i < s->nrels; i++)
    if (s->rels[i].relid == relid) return &s->rels[i];
  return NULL;
}

/* ---- routing a row ---- */

/* The NEW shard index of TUPLE's key, or -1 after failing S. */
static int route_tuple(stream_t *s, const rel_t *r, const pgs_lr_tuple_t *t) {
  if (r->key_col >= t->ncols || t->cols[r->key_col].kind != PGS_LR_COL_TEXT) {
    fail(s, "a row of %s without its shard key %s in the change stream", r->name, r->table->column);
    return -1;
  }
  const pgs_lr_col_t *c = &t->cols[r->key_col];
  char err[512];
  int shard =
      rs_route_text(s->plan->new_db, r->table, (const char *)c->data, c->len, err, sizeof(err));
  if (shard < 0) fail(s, "%s", err);
  return shard;
}

/* The target for NEW shard SHARD: NULL with *STAYS when the row stays on
 * the source, NULL after failing S when no move covers it. */
static target_t *target_of(stream_t *s, int shard, bool *stays) {
  *stays = !strcmp(s->plan->new_db->shards[shard].name, s->src->shard->name);
  if (*stays) return NULL;
  for (int i = 0; i < s->ntargets; i++)
    if (s->targets[i].move->target_index == shard) return &s->targets[i];
  fail(s, "a change routes to shard %s, which no move of %s covers",
       s->plan->new_db->shards[shard].name, s->src->shard->name);
  return NULL;
}

/* ---- applying ---- */

/* Queue STATEMENT (text parameters) on T's pipeline, expecting WHAT (and
 * a changed row when ONE_ROW) when the batch is read back. */
static bool send_on(stream_t *s, target_t *t, const char *sql, int nparams, const Oid *types,
                    const char *const *values, const char *what, bool one_row) {
  if (!PQsendQueryParams(t->conn, sql, nparams, types, values, NULL, NULL, 0))
    return fail(s, "%s on %s: %s", what, t->move->target->name, PQerrorMessage(t->conn));
  if (t->nexpect == t->expect_cap) {
    t->expect_cap = t->expect_cap ? 2 * t->expect_cap : 64;
    t->expect_what = pgs_xrealloc(t->expect_what, sizeof(*t->expect_what) * (size_t)t->expect_cap);
    t->expect_row = pgs_xrealloc(t->expect_row, sizeof(*t->expect_row) * (size_t)t->expect_cap);
  }
  t->expect_what[t->nexpect] = what;
  t->expect_row[t->nexpect++] = one_row;
  return true;
}

/* T's transaction for the current batch: pipeline mode and BEGIN, queued.
 * False when T has the source transaction already (skip) or on failure. */
static bool open_target(stream_t *s, target_t *t, bool *skip) {
  *skip = t->applied > s->final_lsn;
  if (*skip || t->open) return !*skip;
  if (!PQenterPipelineMode(t->conn))
    return fail(s, "pipeline mode on %s: %s", t->move->target->name, PQerrorMessage(t->conn));
  t->open = true;
  t->rows = 0;
  t->nexpect = 0;
  return send_on(s, t, "begin", 0, NULL, NULL, "BEGIN", false);
}

/* Sync T's pipeline and read every answer in order: the first error or
 * row-less UPDATE/DELETE fails S. Leaves pipeline mode. */
static bool read_back(stream_t *s, target_t *t) {
  bool ok = PQpipelineSync(t->conn) == 1;
  if (!ok) fail(s, "sync on %s: %s", t->move->target->name, PQerrorMessage(t->conn));
  for (int i = 0; ok && i < t->nexpect; i++) {
    PGresult *res = PQgetResult(t->conn);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK)
      ok = fail(s, "%s on %s: %s", t->expect_what[i], t->move->target->name,
                res ? PQresultErrorMessage(res) : PQerrorMessage(t->conn));
    else if (t->expect_row[i] && atoll(PQcmdTuples(res)) == 0)
      ok = fail(s,
                "%s on %s found no row: the target is not what the copy and the stream "
                "made it",
                t->expect_what[i], t->move->target->name);
    PQclear(res);
    PQclear(PQgetResult(t->conn)); /* the NULL after each statement's answer */
  }
  /* Whatever is left (after an error: aborted answers), then the sync. */
  for (int guard = 0; guard < 2 * t->nexpect + 4; guard++) {
    PGresult *res = PQgetResult(t->conn);
    ExecStatusType st = PQresultStatus(res);
    PQclear(res);
    if (st == PGRES_PIPELINE_SYNC) break;
  }
  t->nexpect = 0;
  t->open = false;
  if (!PQexitPipelineMode(t->conn) && ok)
    ok = fail(s, "leaving pipeline mode on %s: %s", t->move->target->name, PQerrorMessage(t->conn));
  if (!ok) PQclear(PQexec(t->conn, "rollback"));
  return ok;
}

typedef struct sqlbuf {
  char *text;
  size_t len, cap;
  int nparams;
  const char **values;
  int *lengths;
  Oid *types;
} sqlbuf_t;

static void sql_add(sqlbuf_t *b, const char *fmt, ...) PGS_PRINTF(2, 3);
static void sql_add(sqlbuf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (b->len + (size_t)n + 1 > b->cap) {
    b->cap = (b->len + (size_t)n + 1) * 2;
    b->text = pgs_xrealloc(b->text, b->cap);
  }
  va_start(ap, fmt);
  vsnprintf(b->text + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* The next parameter: COL's value (text; NULL for SQL NULL). */
static int sql_param(sqlbuf_t *b, const pgs_lr_col_t *col, Oid type) {
  int i = b->nparams++;
  b->values = pgs_xrealloc(b->values, sizeof(*b->values) * (size_t)b->nparams);
  b->lengths = pgs_xrealloc(b->lengths, sizeof(*b->lengths) * (size_t)b->nparams);
  b->types = pgs_xrealloc(b->types, sizeof(*b->types) * (size_t)b->nparams);
  b->values[i] = col->kind == PGS_LR_COL_TEXT ? (const char *)col->data : NULL;
  b->lengths[i] = (int)col->len;
  b->types[i] = type;
  return i + 1;
}

static void sql_free(sqlbuf_t *b) {
  free(b->text);
  free(b->values);
  free(b->lengths);
  free(b->types);
}

/* Text parameters need NUL-terminated values: copies made here (libpq
 * has them in its buffer once sent). */
static bool run_sql(stream_t *s, target_t *t, sqlbuf_t *b, const char *what, bool one_row) {
  char **copies = pgs_xcalloc((size_t)b->nparams + 1, sizeof(*copies));
  for (int i = 0; i < b->nparams; i++)
    if (b->values[i]) {
      copies[i] = pgs_xstrndup(b->values[i], (size_t)b->lengths[i]);
      b->values[i] = copies[i];
    }
  bool ok = send_on(s, t, b->text, b->nparams, b->types, b->values, what, one_row);
  rs_free_strings(copies, b->nparams);
  t->rows++;
  return ok;
}

static bool apply_insert(stream_t *s, target_t *t, const rel_t *r, const pgs_lr_tuple_t *row) {
  sqlbuf_t b = {0};
  char q[200];
  sql_add(&b, "insert into %s (", rs_ident(r->name, q, sizeof(q)));
  int n = 0;
  for (int i = 0; i < r->ncols && i < row->ncols; i++) {
    if (row->cols[i].kind == PGS_LR_COL_UNCHANGED) {
      sql_free(&b);
      return fail(s,
                  "a row of %s moves shard with an unchanged TOAST value (%s) the stream "
                  "does not carry",
                  r->name, r->cols[i]);
    }
    sql_add(&b, "%s%s", n++ ? ", " : "", rs_ident(r->cols[i], q, sizeof(q)));
  }
  sql_add(&b, ") values (");
  for (int i = 0; i < r->ncols && i < row->ncols; i++)
    sql_add(&b, "%s$%d", i ? ", " : "", sql_param(&b, &row->cols[i], r->types[i]));
  sql_add(&b, ")");
  bool ok = run_sql(s, t, &b, "INSERT", false);
  sql_free(&b);
  return ok;
}

/* WHERE by the replica identity, values from IDENT (old tuple or new). */
static void where_identity(sqlbuf_t *b, const rel_t *r, const pgs_lr_tuple_t *ident) {
  char q[200];
  int n = 0;
  sql_add(b, " where ");
  for (int i = 0; i < r->ncols && i < ident->ncols; i++) {
    if (!r->ident[i]) continue;
    const pgs_lr_col_t *c = &ident->cols[i];
    if (c->kind == PGS_LR_COL_NULL)
      sql_add(b, "%s%s is null", n++ ? " and " : "", rs_ident(r->cols[i], q, sizeof(q)));
    else
      sql_add(b, "%s%s = $%d", n++ ? " and " : "", rs_ident(r->cols[i], q, sizeof(q)),
              sql_param(b, c, r->types[i]));
  }
}

static bool apply_delete(stream_t *s, target_t *t, const rel_t *r, const pgs_lr_tuple_t *ident) {
  sqlbuf_t b = {0};
  char q[200];
  sql_add(&b, "delete from %s", rs_ident(r->name, q, sizeof(q)));
  where_identity(&b, r, ident);
  bool ok = run_sql(s, t, &b, "DELETE", true);
  sql_free(&b);
  return ok;
}

static bool apply_update(stream_t *s, target_t *t, const rel_t *r, const pgs_lr_tuple_t *ident,
                         const pgs_lr_tuple_t *row) {
  sqlbuf_t b = {0};
  char q[200];
  sql_add(&b, "update %s set ", rs_ident(r->name, q, sizeof(q)));
  int n = 0;
  for (int i = 0; i < r->ncols && i < row->ncols; i++) {
    if (row->cols[i].kind == PGS_LR_COL_UNCHANGED) continue;
    sql_add(&b, "%s%s = $%d", n++ ? ", " : "", rs_ident(r->cols[i], q, sizeof(q)),
            sql_param(&b, &row->cols[i], r->types[i]));
  }
  where_identity(&b, r, ident);
  bool ok = n == 0 || run_sql(s, t, &b, "UPDATE", true);
  sql_free(&b);
  return ok;
}

/* Apply to shard SHARD's target (nothing when the row stays or the
 * target has the transaction already). KIND: 'I', 'U' or 'D'. */
static bool apply_on(stream_t *s, int shard, char kind, const rel_t *r, const pgs_lr_tuple_t *ident,
                     const pgs_lr_tuple_t *row) {
  bool stays, skip;
  target_t *t = target_of(s, shard, &stays);
  if (t == NULL) return stays;
  if (!open_target(s, t, &skip)) return skip;
  if (kind == 'I') return apply_insert(s, t, r, row);
  if (kind == 'D') return apply_delete(s, t, r, ident);
  return apply_update(s, t, r, ident, row);
}

static bool on_change(stream_t *s, const pgs_lr_msg_t *m) {
  const rel_t *r = find_rel(s, m->relid);
  if (r == NULL) return fail(s, "a change to relation %u before its description", m->relid);
  if (r->table == NULL) return true; /* not a moving table (published by someone else?) */
  const pgs_lr_tuple_t *old = m->old_kind ? &m->old_tuple : NULL;
  if (m->kind == 'I') {
    int to = route_tuple(s, r, &m->new_tuple);
    return to >= 0 && apply_on(s, to, 'I', r, NULL, &m->new_tuple);
  }
  if (m->kind == 'D') {
    int from = route_tuple(s, r, old);
    return from >= 0 && apply_on(s, from, 'D', r, old, NULL);
  }
  const pgs_lr_tuple_t *ident = old ? old : &m->new_tuple;
  int to = route_tuple(s, r, &m->new_tuple);
  int from = to >= 0 ? route_tuple(s, r, ident) : -1;
  if (from < 0) return false;
  if (from == to) return apply_on(s, to, 'U', r, ident, &m->new_tuple);
  /* The key moved between shards: out of one, into the other. */
  return apply_on(s, from, 'D', r, ident, NULL) && apply_on(s, to, 'I', r, NULL, &m->new_tuple);
}

/* The batch: source transactions applied in one target transaction each
 * while more of the stream is ready, so a busy source costs a round trip
 * per change rather than four per transaction. Flushed when the stream has
 * nothing ready, at BATCH_MAX_TXNS or BATCH_MAX_S, and at a cut marker.
 * Every open target records the batch's end (and the marker) with its rows
 * and commits; only then is the position confirmed to the slot. */
static bool flush_batch(stream_t *s) {
  /* Never inside a source transaction (the stream paused in one): a target
   * commits whole transactions only, those its applied_lsn covers, or a
   * rerun would apply again what it committed of one. */
  if (s->batch_txns == 0 || s->in_tx) return true;
  char lsn[32];
  pgs_lsn_format(s->batch_lsn, lsn, sizeof(lsn));
  bool ok = true;
  for (int i = 0; i < s->ntargets; i++) {
    target_t *t = &s->targets[i];
    if (!t->open) continue;
    char rows[32];
    snprintf(rows, sizeof(rows), "%lld", t->rows);
    const char *params[] = {s->plan->id, s->src->shard->name,
                            lsn,         s->batch_at,
                            rows,        s->batch_cut[0] ? s->batch_cut : NULL};
    ok = ok &&
         send_on(s, t,
                 "update pgshard.reshard_move set applied_lsn = $3, applied_commit_at = "
                 "to_timestamp($4), rows_applied = rows_applied + $5, cut_token = coalesce($6, "
                 "cut_token), updated_at = now() where reshard_id = $1 and source = $2 and not "
                 "mirror",
                 6, NULL, params, "recording the position", true);
    /* Every answer checked before COMMIT: an UPDATE or DELETE that found no
     * row leaves nothing of the batch behind. */
    if (!read_back(s, t)) ok = false;
    if (ok) {
      PGresult *res = PQexec(t->conn, "commit");
      if (PQresultStatus(res) != PGRES_COMMAND_OK)
        ok = fail(s, "COMMIT on %s: %s", t->move->target->name, PQerrorMessage(t->conn));
      PQclear(res);
    }
    if (ok) t->applied = t->recorded = s->batch_lsn;
  }
  if (!ok) return false;
  s->confirmed = s->batch_lsn;
  s->batch_txns = 0;
  s->batch_cut[0] = '\0';
  return true;
}

/* Commit of a source transaction: it joins the batch. A marker opens
 * every target (each records it) and flushes at once. */
static bool on_commit(stream_t *s, const pgs_lr_msg_t *m) {
  bool skip;
  for (int i = 0; i < s->ntargets && s->cut[0]; i++)
    if (!open_target(s, &s->targets[i], &skip) && !skip) return false;
  if (s->batch_txns++ == 0) s->batch_start = pgs_lab_now();
  s->batch_lsn = m->end_lsn;
  snprintf(s->batch_at, sizeof(s->batch_at), "%.6f",
           (double)m->commit_time / 1e6 + (double)PG_EPOCH_UNIX_S);
  if (s->cut[0]) snprintf(s->batch_cut, sizeof(s->batch_cut), "%s", s->cut);
  s->in_tx = false;
  s->cut[0] = '\0';
  bool full = false;
  for (int i = 0; i < s->ntargets; i++) full |= s->targets[i].nexpect >= BATCH_MAX_STATEMENTS;
  if (s->batch_cut[0] || full || s->batch_txns >= BATCH_MAX_TXNS ||
      pgs_lab_now() - s->batch_start >= BATCH_MAX_S)
    return flush_batch(s);
  return true;
}

static bool on_message(stream_t *s, const uint8_t *payload, size_t len) {
  pgs_lr_msg_t m;
  memset(&m, 0, sizeof(m));
  if (pgs_lr_msg_decode(payload, len, &m) != PGS_OK) {
    pgs_lr_msg_clear(&m);
    return fail(s, "a malformed pgoutput message (type %c)", len ? payload[0] : '?');
  }
  bool ok = true;
  switch (m.kind) {
  case 'B':
    s->in_tx = true;
    s->final_lsn = m.lsn;
    s->cut[0] = '\0';
    break;
  case 'C':
    ok = on_commit(s, &m);
    break;
  case 'R':
    ok = on_relation(s, &m);
    break;
  case 'I':
  case 'U':
  case 'D':
    ok = on_change(s, &m);
    break;
  case 'T':
    ok = fail(s, "TRUNCATE of a moving table on %s during the move: abort the reshard",
              s->src->shard->name);
    break;
  case 'M':
    if (m.transactional && !strcmp(m.prefix, RS_MESSAGE_PREFIX))
      snprintf(s->cut, sizeof(s->cut), "%.*s", (int)m.content_len, (const char *)m.content);
    break;
  default: /* Origin, Type */
    break;
  }
  pgs_lr_msg_clear(&m);
  return ok;
}

/* ---- the loop ---- */

static bool send_status(stream_t *s, bool reply) {
  uint8_t buf[34];
  size_t n =
      pgs_lr_status_encode(buf, s->confirmed, s->confirmed, s->confirmed, pg_now_us(), reply);
  if (PQputCopyData(s->repl, (const char *)buf, (int)n) != 1 || PQflush(s->repl) != 0)
    return fail(s, "sending the position to %s: %s", s->src->shard->name, PQerrorMessage(s->repl));
  return true;
}

/* Each second: idle targets' applied_lsn follows the confirmed position
 * (for the lag shown by status); whether the moves are still streaming.
 * Sets *DONE when every move is switched or gone (aborted). */
static bool tick(stream_t *s, bool *done) {
  *done = true;
  char lsn[32];
  pgs_lsn_format(s->confirmed, lsn, sizeof(lsn));
  for (int i = 0; i < s->ntargets; i++) {
    target_t *t = &s->targets[i];
    if (!s->in_tx && !t->open && s->confirmed > t->recorded) {
      const char *params[] = {s->plan->id, s->src->shard->name, lsn};
      if (!rs_exec(t->conn, "recording the position",
                   "update pgshard.reshard_move set applied_lsn = greatest(applied_lsn, $3), "
                   "updated_at = now() where reshard_id = $1 and source = $2 and not mirror",
                   3, params))
        return fail(s, "recording the position on %s", t->move->target->name);
      t->recorded = s->confirmed;
      if (t->applied < s->confirmed) t->applied = s->confirmed;
    }
    rs_state_t st;
    if (t->open) {
      *done = false;
      continue;
    }
    if (!rs_state_mirror(t->conn, s->mirror, s->plan, t->move))
      return fail(s, "mirroring the state on %s", s->src->shard->name);
    if (!rs_state_read(t->conn, s->plan, t->move, &st)) return fail(s, "reading the state");
    if (st.found && !strcmp(st.phase, "streaming")) *done = false;
  }
  return true;
}

/* Whether every move of S is switched (or gone): the stream ending then
 * is the cutover's doing, not a failure. */
static bool stream_switched(stream_t *s) {
  for (int i = 0; i < s->ntargets; i++) {
    rs_state_t st;
    target_t *t = &s->targets[i];
    if (t->conn == NULL || t->open || !rs_state_read(t->conn, s->plan, t->move, &st)) return false;
    if (st.found && strcmp(st.phase, "switched") != 0 && strcmp(st.phase, "cleaned") != 0)
      return false;
  }
  return true;
}

static bool start_replication(stream_t *s) {
  char q[200], sql[400];
  snprintf(sql, sizeof(sql),
           "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names '%s', "
           "messages 'true')",
           rs_ident(s->src->slot, q, sizeof(q)), s->src->publication);
  /* A streamer killed a moment ago may still hold the slot (its walsender
   * has not noticed yet: 55006): try again for a while. */
  for (double deadline = pgs_lab_now() + SLOT_BUSY_WAIT_S;;) {
    PGresult *res = PQexec(s->repl, sql);
    bool ok = PQresultStatus(res) == PGRES_COPY_BOTH;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    bool busy = !ok && state && !strcmp(state, "55006");
    PQclear(res);
    if (ok) return true;
    if (!busy || pgs_lab_now() >= deadline)
      return fail(s, "START_REPLICATION on %s: %s", s->src->shard->name, PQerrorMessage(s->repl));
    pgs_lab_sleep_ms(200);
  }
}

static bool on_frame(stream_t *s, const uint8_t *buf, size_t len) {
  pgs_lr_frame_t f;
  if (pgs_lr_frame_decode(buf, len, &f) != PGS_OK)
    return fail(s, "a malformed replication message from %s", s->src->shard->name);
  if (f.kind == 'k') {
    /* Between transactions, every commit before the server's end was sent. */
    if (!s->in_tx && s->batch_txns == 0 && f.wal_end > s->confirmed) s->confirmed = f.wal_end;
    return !f.reply_requested || send_status(s, false);
  }
  return on_message(s, f.payload, f.payload_len);
}

/* Read and apply until done or failed; returns 0 or 1. */
static int stream_loop(stream_t *s) {
  double last = 0;
  for (;;) {
    char *buf;
    int n = PQgetCopyData(s->repl, &buf, 1);
    if (n > 0) {
      bool ok = on_frame(s, (const uint8_t *)buf, (size_t)n);
      PQfreemem(buf);
      if (!ok) return 1;
    } else if (n == 0) {
      if (!flush_batch(s)) return 1; /* nothing more ready: commit the whole transactions */
      struct pollfd pfd = {.fd = PQsocket(s->repl), .events = POLLIN};
      (void)poll(&pfd, 1, 200);
      if (!PQconsumeInput(s->repl))
        return fail(s, "reading from %s: %s", s->src->shard->name, PQerrorMessage(s->repl)), 1;
    } else {
      return fail(s, "the replication stream from %s ended: %s", s->src->shard->name,
                  PQerrorMessage(s->repl)),
             1;
    }
    if (pgs_lab_now() - last >= TICK_S) {
      last = pgs_lab_now();
      bool done;
      if (!send_status(s, false) || !tick(s, &done)) return 1;
      if (done) return 0;
    }
  }
}

int rs_stream_source(const rs_plan_t *plan, const rs_source_t *src, PGconn *repl) {
  stream_t s = {.plan = plan, .src = src, .repl = repl, .ntargets = src->nmoves};
  s.targets = pgs_xcalloc((size_t)src->nmoves, sizeof(*s.targets));
  s.mirror = rs_connect(&src->shard->primary, plan->old_db->name, false);
  bool ok = s.mirror != NULL;
  for (int i = 0; i < src->nmoves && ok; i++) {
    target_t *t = &s.targets[i];
    t->move = &plan->moves[src->moves[i]];
    t->conn = rs_connect(&t->move->target->primary, plan->new_db->name, false);
    rs_state_t st;
    ok = t->conn && rs_state_read(t->conn, plan, t->move, &st) && st.found;
    if (ok) {
      t->applied = t->recorded = st.applied_lsn;
      (void)rs_exec(t->conn, "clearing the error",
                    "update pgshard.reshard_move set error = null where reshard_id = $1 and "
                    "source = $2",
                    2, (const char *[]){plan->id, src->shard->name});
    }
  }
  int rc = 1;
  if (ok && start_replication(&s)) {
    printf("stream %s: applying changes\n", src->shard->name);
    fflush(stdout);
    rc = stream_loop(&s);
  }
  if (rc != 0 && stream_switched(&s)) rc = 0; /* cutover took the slot away: done */
  if (rc != 0 && s.error[0]) {
    fprintf(stderr, "pgshardctl: stream %s: %s\n", src->shard->name, s.error);
    for (int i = 0; i < s.ntargets; i++) {
      target_t *t = &s.targets[i];
      if (t->conn == NULL) continue;
      if (t->open) { /* a batch never read back: its answers, then roll back */
        (void)read_back(&s, t);
        PQclear(PQexec(t->conn, "rollback"));
      }
      rs_state_error(t->conn, plan, t->move, s.error);
      if (s.mirror) (void)rs_state_mirror(t->conn, s.mirror, plan, t->move);
    }
  }
  for (int i = 0; i < s.ntargets; i++) {
    PQfinish(s.targets[i].conn);
    free(s.targets[i].expect_what);
    free(s.targets[i].expect_row);
  }
  PQfinish(s.mirror);
  free(s.targets);
  for (int i = 0; i < s.nrels; i++) rel_clear(&s.rels[i]);
  free(s.rels);
  return rc;
}
