/*
 * reshard_copy.c — a source's copy phase: the rows present when its slot
 * was created, copied to the shards the new map names.
 *
 *   every target's state row -> phase copying (autocommit), before the old
 *       slot is dropped: a crash from here on redoes the whole copy
 *   drop the slot (stopping a streamer still on it), publish the tables,
 *   CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export') on the replication
 *       connection: the consistent point and a snapshot
 *   source: REPEATABLE READ under that snapshot; each target: BEGIN, delete
 *       what an earlier attempt copied (rows the OLD map puts on the source)
 *   per table: COPY TO on the source, cut into rows by the router's own COPY
 *       splitter routing with the NEW map, each row to its target's COPY FROM
 *   each target: phase streaming, applied_lsn = the consistent point, COMMIT
 *
 * A target's copy is one transaction: after a crash it is all there or not
 * at all, and its state says which. Changes after the snapshot come from
 * the slot (reshard_stream.c), starting exactly at the consistent point.
 */
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "pgshard/copy.h"
#include "pgshard/pgoutput.h"
#include "lab.h"
#include "reshard.h"

#define DELETE_BATCH 5000
#define COPY_MAX_ROW (256u * 1024 * 1024)

void pgs_ctl_copy_unescape(char *text, size_t *len) {
  size_t o = 0;
  for (size_t i = 0; i < *len; i++) {
    char c = text[i];
    if (c == '\\' && i + 1 < *len) {
      char e = text[++i];
      c = e == 'n'   ? '\n'
          : e == 't' ? '\t'
          : e == 'r' ? '\r'
          : e == 'b' ? '\b'
          : e == 'f' ? '\f'
          : e == 'v' ? '\v'
                     : e;
    }
    text[o++] = c;
  }
  *len = o;
}

/* ---- deleting by route ---- */

typedef struct tid_batch {
  char *text; /* {"(0,1)","(0,2)"} */
  size_t len, cap;
  int n;
} tid_batch_t;

static void batch_add(tid_batch_t *b, const char *tid, size_t len) {
  if (b->len + len + 8 > b->cap) {
    b->cap = (b->cap + len + 8) * 2;
    b->text = pgs_xrealloc(b->text, b->cap);
  }
  b->text[b->len++] = b->n ? ',' : '{';
  b->text[b->len++] = '"';
  memcpy(b->text + b->len, tid, len);
  b->len += len;
  b->text[b->len++] = '"';
  b->n++;
}

static bool batch_flush(PGconn *conn, const char *qtable, tid_batch_t *b, long long *count) {
  if (b->n == 0) return true;
  b->text[b->len++] = '}';
  b->text[b->len] = '\0';
  char sql[300];
  snprintf(sql, sizeof(sql), "delete from %s where ctid = any($1::tid[])", qtable);
  const char *params[] = {b->text};
  PGresult *res = rs_query(conn, "deleting moved rows", sql, 1, params);
  if (res) *count += atoll(PQcmdTuples(res));
  PQclear(res);
  b->len = 0;
  b->n = 0;
  return res != NULL;
}

long long rs_delete_routed(PGconn *conn, const pgs_database_t *db, const char *table_name,
                           const char *name, bool keep) {
  const pgs_table_t *table = pgs_shardmap_find_table(db, table_name);
  char qt[200], qc[200], sql[512];
  rs_ident(table->name, qt, sizeof(qt));
  snprintf(sql, sizeof(sql), "copy (select ctid, %s from %s) to stdout",
           rs_ident(table->column, qc, sizeof(qc)), qt);
  /* The ctids are read first, deleted after: one COPY at a time. */
  tid_batch_t all = {0};
  PGresult *res = PQexec(conn, sql);
  if (PQresultStatus(res) != PGRES_COPY_OUT) {
    fprintf(stderr, "pgshardctl: reading %s: %s", table->name, PQerrorMessage(conn));
    PQclear(res);
    return -1;
  }
  PQclear(res);
  char *line, err[512];
  int n;
  bool ok = true;
  while ((n = PQgetCopyData(conn, &line, 0)) > 0) {
    char *tab = memchr(line, '\t', (size_t)n);
    size_t klen = tab ? (size_t)(line + n - tab - 1) : 0;
    while (klen > 0 && tab[klen] == '\n') klen--;
    if (tab && !(klen == 2 && tab[1] == '\\' && tab[2] == 'N')) {
      pgs_ctl_copy_unescape(tab + 1, &klen);
      int shard = rs_route_text(db, table, tab + 1, klen, err, sizeof(err));
      bool named = shard >= 0 && !strcmp(db->shards[shard].name, name);
      if (shard >= 0 && named != keep) batch_add(&all, line, (size_t)(tab - line));
    }
    PQfreemem(line);
  }
  while ((res = PQgetResult(conn)) != NULL) {
    if (PQresultStatus(res) != PGRES_COMMAND_OK) ok = false;
    PQclear(res);
  }
  long long count = 0;
  if (ok && all.n > 0) {
    /* Re-split the collected list into batches. */
    tid_batch_t b = {0};
    const char *p = all.text + 1, *end = all.text + all.len;
    while (ok && p < end) {
      const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
      batch_add(&b, p + 1, (size_t)(q - p - 1));
      p = q + 2;
      if (b.n == DELETE_BATCH) ok = batch_flush(conn, qt, &b, &count);
    }
    ok = ok && batch_flush(conn, qt, &b, &count);
    free(b.text);
  }
  free(all.text);
  return ok ? count : -1;
}

/* ---- the copy ---- */

typedef struct copy_target {
  const rs_move_t *move;
  PGconn *conn;     /* the copy's transaction */
  PGconn *progress; /* autocommit: phase and rows_copied while copying */
  bool in_copy;     /* a COPY FROM of the current table is open */
  long long rows;
} copy_target_t;

typedef struct copy_ctx {
  const rs_plan_t *plan;
  const rs_source_t *src;
  copy_target_t *targets;
  int ntargets;
  bool failed;
  char error[512];
} copy_ctx_t;

static void copy_row(void *arg, int shard, const uint8_t *row, size_t len) {
  copy_ctx_t *ctx = arg;
  if (shard < 0 || ctx->failed) return;
  const pgs_database_t *new = ctx->plan->new_db;
  if (!strcmp(new->shards[shard].name, ctx->src->shard->name)) return; /* stays */
  for (int i = 0; i < ctx->ntargets; i++) {
    copy_target_t *t = &ctx->targets[i];
    if (t->move->target_index != shard) continue;
    if (!t->in_copy || PQputCopyData(t->conn, (const char *)row, (int)len) != 1) break;
    t->rows++;
    return;
  }
  ctx->failed = true;
  snprintf(ctx->error, sizeof(ctx->error), "a row routes to shard %s, which no move of %s covers",
           new->shards[shard].name, ctx->src->shard->name);
}

static bool progress(copy_target_t *t, const rs_plan_t *plan, const char *sql) {
  char rows[32];
  snprintf(rows, sizeof(rows), "%lld", t->rows);
  const char *params[] = {plan->id, t->move->source->name, rows};
  return rs_exec(t->progress, "recording copy progress", sql, 3, params);
}

/* COPY one table from the source (in its snapshot transaction) into every
 * target whose move carries it. */
static bool copy_table(copy_ctx_t *ctx, PGconn *sconn, const char *name) {
  const pgs_table_t *table = pgs_shardmap_find_table(ctx->plan->new_db, name);
  int ncols, key_pos;
  char **cols = rs_table_columns(sconn, name, table->column, &ncols, &key_pos);
  if (cols == NULL || key_pos < 0) {
    snprintf(ctx->error, sizeof(ctx->error), "table %s on %s has no column %s", name,
             ctx->src->shard->name, table->column);
    rs_free_strings(cols, cols ? ncols : 0);
    return false;
  }
  size_t cap = 64;
  for (int i = 0; i < ncols; i++) cap += 2 * strlen(cols[i]) + 4;
  char *list = pgs_xmalloc(cap), qt[200], q[200];
  size_t o = 0;
  for (int i = 0; i < ncols; i++)
    o +=
        (size_t)snprintf(list + o, cap - o, "%s%s", i ? ", " : "", rs_ident(cols[i], q, sizeof(q)));
  rs_free_strings(cols, ncols);
  rs_ident(name, qt, sizeof(qt));
  char *sql = pgs_xmalloc(cap + 256);
  bool ok = true;
  for (int i = 0; i < ctx->ntargets && ok; i++) {
    copy_target_t *t = &ctx->targets[i];
    bool carries = false;
    for (int k = 0; k < t->move->ntables; k++) carries |= !strcmp(t->move->tables[k], name);
    if (!carries) continue;
    snprintf(sql, cap + 256, "copy %s (%s) from stdin", qt, list);
    PGresult *res = PQexec(t->conn, sql);
    t->in_copy = PQresultStatus(res) == PGRES_COPY_IN;
    if (!t->in_copy)
      snprintf(ctx->error, sizeof(ctx->error), "COPY into %s on %s: %s", name,
               t->move->target->name, PQerrorMessage(t->conn));
    ok = t->in_copy;
    PQclear(res);
  }
  snprintf(sql, cap + 256, "copy %s (%s) to stdout", qt, list);
  PGresult *res = ok ? PQexec(sconn, sql) : NULL;
  if (ok && PQresultStatus(res) != PGRES_COPY_OUT) {
    snprintf(ctx->error, sizeof(ctx->error), "COPY from %s on %s: %s", name, ctx->src->shard->name,
             PQerrorMessage(sconn));
    ok = false;
  }
  PQclear(res);
  free(sql);
  free(list);
  if (ok) {
    pgs_copy_spec_t spec;
    memset(&spec, 0, sizeof(spec));
    spec.format = PGS_COPY_TEXT;
    spec.delimiter = '\t';
    spec.ncolumns = ncols;
    spec.null_len = 2;
    memcpy(spec.null_string, "\\N", 3);
    pgs_copy_split_t *split = pgs_copy_split_new(&spec, ctx->plan->new_db, table, key_pos, ncols,
                                                 COPY_MAX_ROW, NULL, copy_row, ctx);
    pgs_key_error_t kerr;
    char *chunk;
    int n;
    double last = pgs_lab_now();
    while ((n = PQgetCopyData(sconn, &chunk, 0)) > 0) {
      if (ok && pgs_copy_split_feed(split, (const uint8_t *)chunk, (size_t)n, &kerr) != PGS_OK) {
        snprintf(ctx->error, sizeof(ctx->error), "table %s: %s", name, kerr.message);
        ok = false;
      }
      PQfreemem(chunk);
      if (pgs_lab_now() - last > 1.0) {
        last = pgs_lab_now();
        for (int i = 0; i < ctx->ntargets; i++)
          (void)progress(&ctx->targets[i], ctx->plan,
                         "update pgshard.reshard_move set rows_copied = $3, updated_at = now() "
                         "where reshard_id = $1 and source = $2 and not mirror");
      }
    }
    if (ok && pgs_copy_split_finish(split, &kerr) != PGS_OK) {
      snprintf(ctx->error, sizeof(ctx->error), "table %s: %s", name, kerr.message);
      ok = false;
    }
    pgs_copy_split_free(split);
    while ((res = PQgetResult(sconn)) != NULL) {
      if (PQresultStatus(res) != PGRES_COMMAND_OK && ok) {
        snprintf(ctx->error, sizeof(ctx->error), "COPY from %s: %s", name,
                 PQresultErrorMessage(res));
        ok = false;
      }
      PQclear(res);
    }
    ok = ok && !ctx->failed;
  }
  for (int i = 0; i < ctx->ntargets; i++) {
    copy_target_t *t = &ctx->targets[i];
    if (!t->in_copy) continue;
    t->in_copy = false;
    (void)PQputCopyEnd(t->conn, ok ? NULL : "pgshardctl: copy abandoned");
    while ((res = PQgetResult(t->conn)) != NULL) {
      if (PQresultStatus(res) != PGRES_COMMAND_OK && ok) {
        snprintf(ctx->error, sizeof(ctx->error), "COPY into %s on %s: %s", name,
                 t->move->target->name, PQresultErrorMessage(res));
        ok = false;
      }
      PQclear(res);
    }
  }
  return ok;
}

/* Drop SLOT on the source if it exists, stopping whoever streams from it. */
static bool drop_slot(PGconn *sconn, const char *slot) {
  const char *params[] = {slot};
  return rs_exec(sconn, "stopping the slot's walsender",
                 "select pg_terminate_backend(active_pid) from pg_replication_slots "
                 "where slot_name = $1 and active_pid is not null",
                 1, params) &&
         rs_exec(sconn, "dropping the slot",
                 "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                 "where slot_name = $1",
                 1, params);
}

/* The source's publication of exactly SRC's tables. */
static bool publish(PGconn *sconn, const rs_source_t *src) {
  size_t cap = 64;
  for (int i = 0; i < src->ntables; i++) cap += 2 * strlen(src->tables[i]) + 4;
  char *list = pgs_xmalloc(cap), q[200], qp[200];
  size_t o = 0;
  for (int i = 0; i < src->ntables; i++)
    o += (size_t)snprintf(list + o, cap - o, "%s%s", i ? ", " : "",
                          rs_ident(src->tables[i], q, sizeof(q)));
  const char *params[] = {src->publication};
  PGresult *res = rs_query(sconn, "looking for the publication",
                           "select 1 from pg_publication where pubname = $1", 1, params);
  bool exists = res && PQntuples(res) > 0;
  bool ok = res != NULL;
  PQclear(res);
  char *sql = pgs_xmalloc(cap + 256);
  snprintf(sql, cap + 256,
           exists ? "alter publication %s set table %s" : "create publication %s for table %s",
           rs_ident(src->publication, qp, sizeof(qp)), list);
  ok = ok && rs_exec(sconn, "publishing the moving tables", sql, 0, NULL);
  free(sql);
  free(list);
  return ok;
}

/* Whether the copy is done for every target and the slot still exists. */
static bool copy_done(const rs_plan_t *plan, const rs_source_t *src, PGconn *sconn,
                      copy_target_t *targets, bool *done) {
  *done = true;
  for (int i = 0; i < src->nmoves; i++) {
    rs_state_t st;
    if (!rs_state_read(targets[i].conn, plan, targets[i].move, &st)) return false;
    if (!st.found || !strcmp(st.phase, "copying")) *done = false;
  }
  const char *params[] = {src->slot};
  PGresult *res = rs_query(sconn, "looking for the slot",
                           "select 1 from pg_replication_slots where slot_name = $1", 1, params);
  if (res == NULL) return false;
  bool slot = PQntuples(res) > 0;
  PQclear(res);
  if (*done && !slot) {
    fprintf(stderr,
            "pgshardctl: slot %s on %s is gone although its moves were copied: "
            "abort the reshard and start it again\n",
            src->slot, src->shard->name);
    return false;
  }
  return true;
}

static bool copy_run(copy_ctx_t *ctx, PGconn *sconn, PGconn *repl) {
  const rs_plan_t *plan = ctx->plan;
  const rs_source_t *src = ctx->src;
  for (int i = 0; i < ctx->ntargets; i++)
    if (!progress(&ctx->targets[i], plan,
                  "update pgshard.reshard_move set phase = 'copying', rows_copied = $3, "
                  "consistent_lsn = null, applied_lsn = null, error = null, copy_started_at = "
                  "now(), copy_finished_at = null, updated_at = now() "
                  "where reshard_id = $1 and source = $2 and not mirror"))
      return false;
  if (!drop_slot(sconn, src->slot) || !publish(sconn, src)) return false;
  char q[200], sql[300];
  snprintf(sql, sizeof(sql), "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'export')",
           rs_ident(src->slot, q, sizeof(q)));
  PGresult *slot = rs_query(repl, "creating the replication slot", sql, 0, NULL);
  if (slot == NULL) return false;
  char lsn[32], snapshot[64];
  snprintf(lsn, sizeof(lsn), "%s", PQgetvalue(slot, 0, 1));
  snprintf(snapshot, sizeof(snapshot), "%s", PQgetvalue(slot, 0, 2));
  PQclear(slot);
  const char *sp[] = {snapshot};
  bool ok = rs_exec(sconn, "the copy's snapshot", "begin isolation level repeatable read read only",
                    0, NULL);
  snprintf(sql, sizeof(sql), "set transaction snapshot '%s'", snapshot);
  ok = ok && rs_exec(sconn, "the copy's snapshot", sql, 0, NULL);
  PGS_UNUSED(sp);
  for (int i = 0; i < ctx->ntargets && ok; i++) {
    copy_target_t *t = &ctx->targets[i];
    ok = rs_exec(t->conn, "starting the copy", "begin", 0, NULL);
    for (int k = 0; k < t->move->ntables && ok; k++)
      ok =
          rs_delete_routed(t->conn, plan->old_db, t->move->tables[k], src->shard->name, false) >= 0;
  }
  double started = pgs_lab_now();
  for (int k = 0; k < src->ntables && ok; k++) {
    ok = copy_table(ctx, sconn, src->tables[k]);
    if (!ok) fprintf(stderr, "pgshardctl: %s\n", ctx->error);
  }
  /* For tests: a window in which the copy has run but not committed. */
  const char *pause = getenv("PGSHARD_RESHARD_TEST_COPY_PAUSE_MS");
  if (ok && pause) {
    printf("copy %s: pausing before commit (test)\n", src->shard->name);
    fflush(stdout);
    pgs_lab_sleep_ms(atoi(pause));
  }
  for (int i = 0; i < ctx->ntargets && ok; i++) {
    copy_target_t *t = &ctx->targets[i];
    char rows[32];
    snprintf(rows, sizeof(rows), "%lld", t->rows);
    const char *params[] = {plan->id, src->shard->name, lsn, rows};
    ok = rs_exec(t->conn, "finishing the copy",
                 "update pgshard.reshard_move set phase = 'streaming', consistent_lsn = $3, "
                 "applied_lsn = $3, rows_copied = $4, copy_finished_at = now(), error = null, "
                 "updated_at = now() where reshard_id = $1 and source = $2 and not mirror",
                 4, params) &&
         rs_exec(t->conn, "committing the copy", "commit", 0, NULL);
  }
  (void)rs_exec(sconn, "ending the snapshot", ok ? "commit" : "rollback", 0, NULL);
  for (int i = 0; i < ctx->ntargets && ok; i++)
    ok = rs_state_mirror(ctx->targets[i].progress, sconn, plan, ctx->targets[i].move);
  double took = pgs_lab_now() - started;
  for (int i = 0; i < ctx->ntargets && ok; i++)
    printf("copy %s -> %s: %lld rows in %.2f s (%.0f rows/s), streaming from %s\n",
           src->shard->name, ctx->targets[i].move->target->name, ctx->targets[i].rows, took,
           took > 0 ? (double)ctx->targets[i].rows / took : 0.0, lsn);
  fflush(stdout);
  return ok;
}

bool rs_copy_source(const rs_plan_t *plan, const rs_source_t *src, PGconn *repl) {
  copy_ctx_t ctx = {.plan = plan, .src = src, .ntargets = src->nmoves};
  ctx.targets = pgs_xcalloc((size_t)src->nmoves, sizeof(*ctx.targets));
  PGconn *sconn = rs_connect(&src->shard->primary, src->old_db->name, false);
  bool ok = sconn != NULL;
  for (int i = 0; i < src->nmoves && ok; i++) {
    copy_target_t *t = &ctx.targets[i];
    t->move = &plan->moves[src->moves[i]];
    t->conn = rs_connect(&t->move->target->primary, plan->new_db->name, false);
    t->progress = t->conn ? rs_connect(&t->move->target->primary, plan->new_db->name, false) : NULL;
    ok = t->progress != NULL;
  }
  bool done = false;
  ok = ok && copy_done(plan, src, sconn, ctx.targets, &done);
  if (ok && !done) {
    ok = copy_run(&ctx, sconn, repl);
    if (!ok) {
      for (int i = 0; i < ctx.ntargets; i++)
        if (ctx.targets[i].progress)
          rs_state_error(ctx.targets[i].progress, plan, ctx.targets[i].move,
                         ctx.error[0] ? ctx.error : "the copy failed (see pgshardctl's output)"),
              (void)(sconn &&
                     rs_state_mirror(ctx.targets[i].progress, sconn, plan, ctx.targets[i].move));
    }
  }
  for (int i = 0; i < src->nmoves; i++) {
    PQfinish(ctx.targets[i].conn);
    PQfinish(ctx.targets[i].progress);
  }
  free(ctx.targets);
  PQfinish(sconn);
  return ok;
}
