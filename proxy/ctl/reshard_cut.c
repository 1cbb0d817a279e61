/*
 * reshard_cut.c — the verbs that end a resharding: cutover, cleanup, abort.
 *
 * cutover, in order (any failure before the switch releases the hold and
 * leaves the OLD map serving; rerun it):
 *   1. every move streaming, its streamer connected, lag under the bound
 *   2. RESHARD HOLD NEW on pgshard's console: statements whose shards
 *      differ under NEW wait; it answers once transactions open before it
 *      have ended, so no write to a moving key is in flight from here on
 *      (with map_source, on every live instance reporting there)
 *   3. a marker (pg_logical_emit_message) into each source's WAL, awaited
 *      in every target's state: the targets have every change before it
 *   4. sequences of the moving tables set on the targets at least as far
 *      as on the sources; targets' replicas replayed up to the targets'
 *      current WAL (a read after the switch may go to one)
 *   5. OLD's file gets NEW's text (OLD kept as OLD.pre-reshard-ID), RELOAD;
 *      with map_source in OLD, NEW's map is pushed there as a new version
 *      instead, and every live instance must serve it (map.c)
 *   6. phase switched, RESHARD RELEASE: the held statements run on NEW
 *   7. slots and publications dropped (the streamers have stopped)
 * cleanup: after cutover, the moved rows deleted from the sources.
 * abort: before cutover, everything start made removed; the sources were
 * never changed.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "pgshard/pgoutput.h"
#include "lab.h"
#include "reshard.h"

static PGconn *source_conn(const rs_plan_t *plan, const rs_source_t *src) {
  return rs_connect(&src->shard->primary, plan->old_db->name, false);
}

static PGconn *target_conn(const rs_plan_t *plan, const rs_move_t *m) {
  return rs_connect(&m->target->primary, plan->new_db->name, false);
}

/* Every move's state, on CONNS (a connection to each move's target) or
 * on connections of its own (CONNS NULL); false after printing when one
 * cannot be read. */
static bool read_states_on(const rs_plan_t *plan, PGconn **conns, rs_state_t *states) {
  for (int i = 0; i < plan->nmoves; i++) {
    PGconn *conn = conns ? conns[i] : target_conn(plan, &plan->moves[i]);
    bool ok = conn && rs_state_read(conn, plan, &plan->moves[i], &states[i]);
    if (conns == NULL) PQfinish(conn);
    if (!ok) return false;
  }
  return true;
}

static bool read_states(const rs_plan_t *plan, rs_state_t *states) {
  return read_states_on(plan, NULL, states);
}

static bool all_in_phase(const rs_plan_t *plan, const rs_state_t *states, const char *a,
                         const char *b) {
  for (int i = 0; i < plan->nmoves; i++)
    if (!states[i].found || (strcmp(states[i].phase, a) != 0 && (!b || strcmp(states[i].phase, b))))
      return false;
  return true;
}

static bool set_phase(const rs_plan_t *plan, const char *phase) {
  for (int i = 0; i < plan->nmoves; i++) {
    const rs_move_t *m = &plan->moves[i];
    PGconn *conn = target_conn(plan, m);
    const char *params[] = {plan->id, m->source->name, phase};
    bool ok = conn && rs_exec(conn, "setting the phase",
                              "update pgshard.reshard_move set phase = $3, updated_at = now() "
                              "where reshard_id = $1 and source = $2 and not mirror",
                              3, params);
    PQfinish(conn);
    if (!ok) return false;
  }
  return rs_mirror_all(plan);
}

/* Drop SRC's slot (stopping its walsender) and its publication. */
static bool drop_replication(const rs_plan_t *plan, const rs_source_t *src) {
  PGconn *conn = source_conn(plan, src);
  const char *slot[] = {src->slot}, *pub[] = {src->publication};
  bool ok = conn && rs_exec(conn, "stopping the slot's walsender",
                            "select pg_terminate_backend(active_pid) from pg_replication_slots "
                            "where slot_name = $1 and active_pid is not null",
                            1, slot);
  /* A terminated walsender lets go of its slot a moment later. */
  for (int i = 0; ok && i < 100; i++) {
    PGresult *res = rs_query(conn, "dropping the slot",
                             "select pg_drop_replication_slot(slot_name) from "
                             "pg_replication_slots where slot_name = $1 and not active",
                             1, slot);
    PQclear(res);
    PGresult *left = rs_query(conn, "looking for the slot",
                              "select 1 from pg_replication_slots where slot_name = $1", 1, slot);
    bool gone = left && PQntuples(left) == 0;
    PQclear(left);
    if (gone) break;
    if (i == 99) ok = false, fprintf(stderr, "pgshardctl: slot %s stays in use\n", src->slot);
    pgs_lab_sleep_ms(50);
  }
  PGresult *res = ok ? rs_query(conn, "looking for the publication",
                                "select 1 from pg_publication where pubname = $1", 1, pub)
                     : NULL;
  if (res && PQntuples(res) > 0) {
    char q[200], sql[300];
    snprintf(sql, sizeof(sql), "drop publication %s", rs_ident(src->publication, q, sizeof(q)));
    ok = rs_exec(conn, "dropping the publication", sql, 0, NULL);
  }
  PQclear(res);
  PQfinish(conn);
  return ok;
}

/* Wait (at most SECONDS) for SRC's streamer to leave its slot by itself:
 * it does within a second of seeing its moves switched. */
static bool wait_slot_idle(const rs_plan_t *plan, const rs_source_t *src, double seconds) {
  PGconn *conn = source_conn(plan, src);
  const char *params[] = {src->slot};
  double until = pgs_lab_now() + seconds;
  bool idle = false;
  while (conn && !idle && pgs_lab_now() < until) {
    PGresult *res = rs_query(conn, "looking at the slot",
                             "select coalesce((select not active from pg_replication_slots where "
                             "slot_name = $1), true)",
                             1, params);
    idle = res && !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    if (!idle) pgs_lab_sleep_ms(20);
  }
  PQfinish(conn);
  return conn != NULL;
}

/* ---- pgshard's console ---- */

static bool console(PGconn *conn, const char *fmt, ...) PGS_PRINTF(2, 3);
static bool console(PGconn *conn, const char *fmt, ...) {
  char sql[PATH_MAX + 128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof(sql), fmt, ap);
  va_end(ap);
  return rs_exec(conn, sql, sql, 0, NULL);
}

/* SHOW CONFIG's `reloads`: reloads every worker of pgshard has taken; -1
 * when it cannot be read. */
static long long console_reloads(PGconn *conn) {
  PGresult *res = rs_query(conn, "SHOW CONFIG", "SHOW CONFIG", 0, NULL);
  long long n = -1;
  for (int i = 0; res && i < PQntuples(res); i++)
    for (int c = 0; c + 1 < PQnfields(res); c++)
      if (!strcmp(PQgetvalue(res, i, c), "reloads")) n = atoll(PQgetvalue(res, i, c + 1));
  PQclear(res);
  return n;
}

/* RELOAD, answered once sent; then wait until every worker runs it. */
static bool reload_and_wait(PGconn *conn, double deadline) {
  long long before = console_reloads(conn);
  if (before < 0 || !console(conn, "RELOAD")) return false;
  while (pgs_lab_now() < deadline) {
    long long n = console_reloads(conn);
    if (n < 0) return false;
    if (n > before) return true;
    pgs_lab_sleep_ms(5);
  }
  fprintf(stderr, "pgshardctl: pgshard did not finish reloading in time\n");
  return false;
}

/* ---- cutover ---- */

/* TABLE's columns on CONN, "name type" lines in name order (caller
 * frees; NULL after printing the error). */
static char *table_shape(PGconn *conn, const char *table) {
  const char *params[] = {table};
  PGresult *res = rs_query(conn, "reading the table's columns",
                           "select coalesce(string_agg(attname || ' ' || format_type(atttypid, "
                           "atttypmod), E'\\n' order by attname), '') from pg_attribute where "
                           "attrelid = to_regclass(quote_ident($1)) and attnum > 0 and not "
                           "attisdropped",
                           1, params);
  char *shape = res ? pgs_xstrdup(PQgetvalue(res, 0, 0)) : NULL;
  PQclear(res);
  return shape;
}

/* Each moving table has the same columns on the target as on its source:
 * DDL made during the move (through pgshard, it reached the old map's
 * shards only) must be made on the target before the target serves. */
static bool same_columns(const rs_plan_t *plan) {
  bool ok = true;
  for (int i = 0; i < plan->nmoves && ok; i++) {
    const rs_move_t *m = &plan->moves[i];
    PGconn *sconn = rs_connect(&m->source->primary, plan->old_db->name, false);
    PGconn *tconn = sconn ? target_conn(plan, m) : NULL;
    ok = tconn != NULL;
    for (int t = 0; ok && t < m->ntables; t++) {
      char *a = table_shape(sconn, m->tables[t]), *b = table_shape(tconn, m->tables[t]);
      ok = a && b;
      if (ok && strcmp(a, b) != 0) {
        fprintf(stderr,
                "pgshardctl: table %s has other columns on %s than on %s (DDL during the "
                "move?): make them the same, then cut over\n",
                m->tables[t], m->target->name, m->source->name);
        ok = false;
      }
      free(a);
      free(b);
    }
    PQfinish(sconn);
    PQfinish(tconn);
  }
  return ok;
}

/* The worst lag in bytes over the moves, from their STATES and each
 * source's position now. False after printing when a source cannot be
 * read. Sets *LISTENING false when a source has no streamer on its slot. */
static bool worst_lag(const rs_plan_t *plan, const rs_state_t *states, long long *bytes,
                      bool *listening) {
  *bytes = 0;
  *listening = true;
  for (int s = 0; s < plan->nsources; s++) {
    const rs_source_t *src = &plan->sources[s];
    PGconn *conn = source_conn(plan, src);
    const char *params[] = {src->slot};
    PGresult *res = conn ? rs_query(conn, "reading the source",
                                    "select pg_current_wal_lsn(), coalesce((select active from "
                                    "pg_replication_slots where slot_name = $1), false)",
                                    1, params)
                         : NULL;
    bool ok = res != NULL;
    uint64_t current = ok ? rs_lsn(PQgetvalue(res, 0, 0)) : 0;
    if (ok && strcmp(PQgetvalue(res, 0, 1), "t") != 0) *listening = false;
    PQclear(res);
    PQfinish(conn);
    if (!ok) return false;
    for (int i = 0; i < src->nmoves; i++) {
      const rs_state_t *st = &states[src->moves[i]];
      long long b = current > st->applied_lsn ? (long long)(current - st->applied_lsn) : 0;
      if (b > *bytes) *bytes = b;
    }
  }
  return true;
}

/* Write the cut marker into every source and wait until every target has
 * applied it. */
static bool mark_and_wait(const rs_plan_t *plan, const char *kind, double deadline) {
  uint8_t rnd[8];
  if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) memset(rnd, 7, sizeof(rnd));
  char token[40];
  snprintf(token, sizeof(token), "%s-%02x%02x%02x%02x%02x%02x%02x%02x", kind, rnd[0], rnd[1],
           rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
  for (int s = 0; s < plan->nsources; s++) {
    PGconn *conn = source_conn(plan, &plan->sources[s]);
    const char *params[] = {RS_MESSAGE_PREFIX, token};
    bool ok = conn && rs_exec(conn, "writing the cut marker",
                              "select pg_logical_emit_message(true, $1, $2)", 2, params);
    PQfinish(conn);
    if (!ok) return false;
  }
  rs_state_t *states = pgs_xcalloc((size_t)plan->nmoves, sizeof(*states));
  PGconn **conns = pgs_xcalloc((size_t)plan->nmoves, sizeof(*conns));
  bool ok = true;
  for (int i = 0; i < plan->nmoves && ok; i++) ok = (conns[i] = target_conn(plan, &plan->moves[i]));
  bool applied = false;
  while (ok && !applied && pgs_lab_now() < deadline) {
    if (!read_states_on(plan, conns, states)) break;
    applied = true;
    for (int i = 0; i < plan->nmoves; i++) applied = applied && !strcmp(states[i].cut_token, token);
    if (!applied) pgs_lab_sleep_ms(2);
  }
  if (ok && !applied)
    fprintf(stderr, "pgshardctl: the targets did not apply the cut marker in time\n");
  for (int i = 0; i < plan->nmoves; i++) PQfinish(conns[i]);
  free(conns);
  free(states);
  return applied;
}

/* Before the hold: no move stopped, a streamer on every slot, the same
 * columns on both sides; then wait (at most --wait-ms) until the moves
 * have caught up: under --max-lag-bytes, and a probe marker written into
 * each source's WAL applied on every target within --max-lag-seconds. The
 * cut's own marker then waits for little, inside the hold. */
static bool check_ready(const rs_plan_t *plan, rs_state_t *states, const rs_options_t *opt) {
  for (int i = 0; i < plan->nmoves; i++)
    if (states[i].error[0]) {
      fprintf(stderr, "pgshardctl: move %s -> %s stopped: %s\n", plan->moves[i].source->name,
              plan->moves[i].target->name, states[i].error);
      return false;
    }
  if (!same_columns(plan)) return false;
  double until = pgs_lab_now() + opt->wait_ms / 1000.0;
  long long bytes = 0;
  double took = 0;
  bool listening = true;
  while (pgs_lab_now() < until) {
    if (!read_states(plan, states) || !worst_lag(plan, states, &bytes, &listening)) return false;
    if (!listening) {
      fprintf(stderr,
              "pgshardctl: a source's slot has no streamer: is `pgshardctl reshard "
              "start` running?\n");
      return false;
    }
    if (bytes > opt->max_lag_bytes) {
      pgs_lab_sleep_ms(200);
      continue;
    }
    double t = pgs_lab_now();
    bool applied = mark_and_wait(plan, "probe", until);
    took = pgs_lab_now() - t;
    if (applied && took <= opt->max_lag_seconds) return true;
  }
  fprintf(stderr,
          "pgshardctl: the moves have not caught up in %d ms (lag %lld bytes; a marker took "
          "%.1f s to apply; bounds %lld bytes, %.1f s): try again later\n",
          opt->wait_ms, bytes, took, opt->max_lag_bytes, opt->max_lag_seconds);
  return false;
}

/* Each moving table's sequences: on the target at least where they are on
 * its sources. */
static bool carry_sequences(const rs_plan_t *plan) {
  for (int i = 0; i < plan->nmoves; i++) {
    const rs_move_t *m = &plan->moves[i];
    PGconn *sconn = rs_connect(&m->source->primary, plan->old_db->name, false);
    PGconn *tconn = sconn ? target_conn(plan, m) : NULL;
    bool ok = tconn != NULL;
    for (int t = 0; ok && t < m->ntables; t++) {
      const char *params[] = {m->tables[t]};
      PGresult *res = rs_query(
          sconn, "reading sequences",
          "select s, (select last_value from pg_sequences q where "
          "format('%I.%I', q.schemaname, q.sequencename)::regclass = s::regclass) from "
          "(select pg_get_serial_sequence(quote_ident($1), attname) s from pg_attribute where "
          "attrelid = to_regclass(quote_ident($1)) and attnum > 0 and not attisdropped) x "
          "where s is not null",
          1, params);
      ok = res != NULL;
      for (int r = 0; ok && r < PQntuples(res); r++) {
        if (PQgetisnull(res, r, 1)) continue; /* never used */
        const char *p2[] = {PQgetvalue(res, r, 0), PQgetvalue(res, r, 1)};
        ok = rs_exec(tconn, "carrying a sequence",
                     "select setval($1::regclass, greatest($2::bigint, (select coalesce("
                     "last_value, 1) from pg_sequences q where format('%I.%I', q.schemaname, "
                     "q.sequencename)::regclass = $1::regclass)))",
                     2, p2);
      }
      PQclear(res);
    }
    PQfinish(sconn);
    PQfinish(tconn);
    if (!ok) return false;
  }
  return true;
}

/* The targets' replicas have replayed what the targets had now. */
static bool replicas_caught_up(const rs_plan_t *plan, double deadline) {
  for (int i = 0; i < plan->nmoves; i++) {
    PGconn *conn = target_conn(plan, &plan->moves[i]);
    PGresult *res = conn ? rs_query(conn, "reading the target's position",
                                    "select pg_current_wal_lsn()::text", 0, NULL)
                         : NULL;
    bool ok = false;
    if (res) {
      const char *params[] = {PQgetvalue(res, 0, 0)};
      while (!ok && pgs_lab_now() < deadline) {
        PGresult *r2 = rs_query(conn, "reading the target's replicas",
                                "select coalesce(bool_and(replay_lsn >= $1::pg_lsn), true) "
                                "from pg_stat_replication where application_name <> "
                                "'pgshardctl reshard'",
                                1, params);
        ok = r2 && !strcmp(PQgetvalue(r2, 0, 0), "t");
        PQclear(r2);
        if (!ok) pgs_lab_sleep_ms(2);
      }
      if (!ok)
        fprintf(stderr, "pgshardctl: the replicas of %s did not catch up in time\n",
                plan->moves[i].target->name);
    }
    PQclear(res);
    PQfinish(conn);
    if (!ok) return false;
  }
  return true;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 8192, n = 0, got;
  char *buf = pgs_xmalloc(cap);
  while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) buf = pgs_xrealloc(buf, cap *= 2);
  }
  fclose(f);
  *len = n;
  return buf;
}

static bool write_file(const char *path, const char *text, size_t len) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  bool ok = f && fwrite(text, 1, len, f) == len;
  if (f && fclose(f) != 0) ok = false;
  if (ok && rename(tmp, path) != 0) ok = false;
  if (!ok) fprintf(stderr, "pgshardctl: writing %s: %s\n", path, strerror(errno));
  return ok;
}

/* OLD's file gets NEW's text; OLD is kept beside it. */
static bool switch_file(const rs_plan_t *plan) {
  size_t olen = 0, nlen = 0;
  char *old = read_file(plan->old_path, &olen), *new = read_file(plan->new_path, &nlen);
  bool ok = old && new;
  if (ok && !(olen == nlen && !memcmp(old, new, olen))) {
    char backup[PATH_MAX];
    snprintf(backup, sizeof(backup), "%s.pre-reshard-%s", plan->old_path, plan->id);
    ok = (access(backup, F_OK) == 0 || write_file(backup, old, olen)) &&
         write_file(plan->old_path, new, nlen);
  }
  free(old);
  free(new);
  return ok;
}

/* NEW serves. With map_source in OLD's [pgshard]: NEW's map pushed as a
 * new version, then every live instance reporting to the source must
 * serve it (not only the one whose console holds). Else OLD's file gets
 * NEW's text and the console's pgshard reloads. */
static bool switch_map(const rs_plan_t *plan, PGconn *admin, double deadline) {
  const char *source = plan->old_config->map_source;
  if (source == NULL) return switch_file(plan) && reload_and_wait(admin, deadline + 5);
  char note[128];
  snprintf(note, sizeof(note), "reshard %s cutover", plan->id);
  int64_t version;
  double committed_at;
  if (pgs_ctl_map_push_file(source, plan->old_path, plan->new_path, note, &version,
                            &committed_at) != 0)
    return false;
  int wait_ms = (int)((deadline + 5 - pgs_lab_now()) * 1000);
  return pgs_ctl_map_wait(source, version, wait_ms > 0 ? wait_ms : 0, PGS_CTL_MAP_LIVE_SECONDS) ==
         0;
}

/* With map_source, the other live pgshard reporting there hold too: the
 * consoles at the listen addresses they report (a wildcard address as
 * 127.0.0.1), logged in as the first console was. */
#define FLEET_MAX 64
typedef struct fleet {
  PGconn *conns[FLEET_MAX];
  int n;
} fleet_t;

static bool fleet_connect(const rs_plan_t *plan, PGconn *admin, fleet_t *fleet) {
  const char *source = plan->old_config->map_source;
  if (source == NULL) return true;
  char **listens = NULL;
  int n = pgs_ctl_map_live_instances(source, PGS_CTL_MAP_LIVE_SECONDS, &listens);
  if (n < 0) return false;
  char self[300];
  snprintf(self, sizeof(self), "%s:%s", PQhost(admin), PQport(admin));
  bool ok = true;
  for (int i = 0; i < n && ok; i++) {
    char *colon = strrchr(listens[i], ':');
    if (colon == NULL || !strcmp(listens[i], self)) continue;
    *colon = '\0';
    const char *host = listens[i];
    if (!strcmp(host, "0.0.0.0") || !strcmp(host, "*") || !strcmp(host, "::")) host = "127.0.0.1";
    char at[300];
    snprintf(at, sizeof(at), "%s:%s", host, colon + 1);
    if (!strcmp(at, self)) continue;
    if (fleet->n == FLEET_MAX) {
      fprintf(stderr, "pgshardctl: more than %d live pgshard instances\n", FLEET_MAX);
      ok = false;
      break;
    }
    const char *keys[] = {"host", "port", "dbname", "user", "password", "connect_timeout", NULL};
    const char *values[] = {host, colon + 1, "pgshard", PQuser(admin), PQpass(admin), "5", NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 0);
    if (PQstatus(conn) != CONNECTION_OK) {
      fprintf(stderr, "pgshardctl: the console of pgshard %s: %s", at, PQerrorMessage(conn));
      PQfinish(conn);
      ok = false;
      break;
    }
    fleet->conns[fleet->n++] = conn;
  }
  for (int i = 0; i < n; i++) free(listens[i]);
  free(listens);
  return ok;
}

static bool fleet_each(fleet_t *fleet, const char *sql) {
  bool ok = true;
  for (int i = 0; i < fleet->n; i++) ok = console(fleet->conns[i], "%s", sql) && ok;
  return ok;
}

static void fleet_close(fleet_t *fleet) {
  for (int i = 0; i < fleet->n; i++) PQfinish(fleet->conns[i]);
  fleet->n = 0;
}

int rs_verb_cutover(const rs_plan_t *plan, const rs_options_t *opt) {
  rs_state_t *states = pgs_xcalloc((size_t)plan->nmoves + 1, sizeof(*states));
  int rc = 1;
  PGconn *admin = NULL;
  fleet_t fleet = {.n = 0};
  if (!read_states(plan, states)) goto out;
  if (all_in_phase(plan, states, "switched", "cleaned")) {
    /* A rerun after a cutover died past the switch: finish its last steps. */
    if ((admin = rs_console_connect(plan, opt)) != NULL) {
      (void)console(admin, "RESHARD RELEASE");
      if (fleet_connect(plan, admin, &fleet)) (void)fleet_each(&fleet, "RESHARD RELEASE");
    }
    rc = 0;
    for (int s = 0; s < plan->nsources; s++)
      if (!drop_replication(plan, &plan->sources[s])) rc = 1;
    printf("reshard %s: already cut over\n", plan->id);
    goto out;
  }
  if (!all_in_phase(plan, states, "streaming", "switched")) {
    fprintf(stderr, "pgshardctl: every move must be streaming first (see status)\n");
    goto out;
  }
  if (!check_ready(plan, states, opt) || (admin = rs_console_connect(plan, opt)) == NULL) goto out;
  char new_path[PATH_MAX];
  if (realpath(plan->new_path, new_path) == NULL) {
    fprintf(stderr, "pgshardctl: %s: %s\n", plan->new_path, strerror(errno));
    goto out;
  }
  double t0 = pgs_lab_now(), deadline = t0 + opt->timeout_ms / 1000.0;
  if (!fleet_connect(plan, admin, &fleet)) goto out;
  if (!console(admin, "RESHARD HOLD '%s' %d", new_path, 3 * opt->timeout_ms)) goto out;
  char hold[PATH_MAX + 64];
  snprintf(hold, sizeof(hold), "RESHARD HOLD '%s' %d", new_path, 3 * opt->timeout_ms);
  bool held = fleet_each(&fleet, hold);
  /* Each step's end, for the report: holds answered, marker applied,
   * sequences, replicas, file and reload, phase, release. */
  double at[7] = {pgs_lab_now()};
  bool ok = held && mark_and_wait(plan, "cut", deadline) && (at[1] = pgs_lab_now()) &&
            carry_sequences(plan) && (at[2] = pgs_lab_now()) &&
            replicas_caught_up(plan, deadline) && (at[3] = pgs_lab_now()) &&
            pgs_lab_now() < deadline && switch_map(plan, admin, deadline) &&
            (at[4] = pgs_lab_now()) && set_phase(plan, "switched") && (at[5] = pgs_lab_now());
  bool released = console(admin, "RESHARD RELEASE");
  released = fleet_each(&fleet, "RESHARD RELEASE") && released;
  at[6] = pgs_lab_now();
  if (!ok) {
    fprintf(stderr, "pgshardctl: cutover failed; the old map still serves (rerun cutover)\n");
    goto out;
  }
  printf(
      "reshard %s: cut over; statements on moving keys held %.0f ms (hold %.0f, marker "
      "%.0f, sequences %.0f, replicas %.0f, switch and reload %.0f, phase %.0f, release "
      "%.0f)\n",
      plan->id, (at[6] - t0) * 1000, (at[0] - t0) * 1000, (at[1] - at[0]) * 1000,
      (at[2] - at[1]) * 1000, (at[3] - at[2]) * 1000, (at[4] - at[3]) * 1000,
      (at[5] - at[4]) * 1000, (at[6] - at[5]) * 1000);
  if (!released) fprintf(stderr, "pgshardctl: RESHARD RELEASE failed: it releases itself\n");
  rc = 0;
  for (int s = 0; s < plan->nsources; s++)
    if (!wait_slot_idle(plan, &plan->sources[s], 5.0) || !drop_replication(plan, &plan->sources[s]))
      rc = 1;
out:
  fleet_close(&fleet);
  PQfinish(admin);
  free(states);
  return rc;
}

/* ---- cleanup ---- */

int rs_verb_cleanup(const rs_plan_t *plan) {
  rs_state_t *states = pgs_xcalloc((size_t)plan->nmoves + 1, sizeof(*states));
  int rc = 1;
  if (!read_states(plan, states)) goto out;
  if (!all_in_phase(plan, states, "switched", "cleaned")) {
    fprintf(stderr, "pgshardctl: cleanup comes after cutover (see status)\n");
    goto out;
  }
  rc = 0;
  for (int s = 0; s < plan->nsources && rc == 0; s++) {
    const rs_source_t *src = &plan->sources[s];
    if (!drop_replication(plan, src)) {
      rc = 1;
      break;
    }
    PGconn *conn = source_conn(plan, src);
    bool ok = conn && rs_exec(conn, "cleanup", "begin", 0, NULL);
    for (int t = 0; ok && t < src->ntables; t++) {
      long long n = rs_delete_routed(conn, plan->new_db, src->tables[t], src->shard->name, true);
      ok = n >= 0;
      if (ok) printf("cleanup %s: %lld rows of %s deleted\n", src->shard->name, n, src->tables[t]);
    }
    ok = ok && rs_exec(conn, "cleanup", "commit", 0, NULL);
    PQfinish(conn);
    if (!ok) rc = 1;
  }
  if (rc == 0 && !set_phase(plan, "cleaned")) rc = 1;
  if (rc == 0) printf("reshard %s: cleaned\n", plan->id);
out:
  free(states);
  return rc;
}

/* ---- abort ---- */

int rs_verb_abort(const rs_plan_t *plan, const rs_options_t *opt) {
  rs_state_t *states = pgs_xcalloc((size_t)plan->nmoves + 1, sizeof(*states));
  int rc = 1;
  if (!read_states(plan, states)) goto out;
  for (int i = 0; i < plan->nmoves; i++)
    if (states[i].found &&
        (!strcmp(states[i].phase, "switched") || !strcmp(states[i].phase, "cleaned"))) {
      fprintf(stderr,
              "pgshardctl: the new map serves already (cut over): to undo, reshard "
              "back from NEW to OLD\n");
      goto out;
    }
  /* A hold left by a failed cutover goes (best effort: pgshard may be down;
   * it releases itself anyway). */
  PGconn *admin = opt->admin || plan->old_config ? rs_console_connect(plan, opt) : NULL;
  if (admin) (void)console(admin, "RESHARD RELEASE");
  PQfinish(admin);
  rc = 0;
  for (int s = 0; s < plan->nsources; s++)
    if (!drop_replication(plan, &plan->sources[s])) rc = 1;
  for (int i = 0; rc == 0 && i < plan->nmoves; i++) {
    const rs_move_t *m = &plan->moves[i];
    PGconn *conn = target_conn(plan, m);
    bool ok = conn && rs_exec(conn, "abort", "begin", 0, NULL);
    long long total = 0;
    for (int t = 0; ok && t < m->ntables && states[i].found; t++) {
      long long n = rs_delete_routed(conn, plan->old_db, m->tables[t], m->source->name, false);
      ok = n >= 0;
      total += n;
    }
    const char *params[] = {plan->id, m->source->name};
    ok = ok &&
         (!states[i].found || rs_exec(conn, "abort",
                                      "delete from pgshard.reshard_move where reshard_id = $1 and "
                                      "source = $2 and not mirror",
                                      2, params)) &&
         rs_exec(conn, "abort", "commit", 0, NULL);
    if (ok)
      printf("abort %s -> %s: %lld copied rows deleted\n", m->source->name, m->target->name, total);
    PQfinish(conn);
    if (!ok) rc = 1;
  }
  if (rc == 0 && !rs_mirror_all(plan)) rc = 1; /* the sources' copies go too */
  if (rc == 0) printf("reshard %s: aborted; the old map serves as before\n", plan->id);
out:
  free(states);
  return rc;
}
