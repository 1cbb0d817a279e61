/*
 * admin.c — the admin console: `psql -d pgshard` as a user with admin =
 * true. Such a client never gets a server; every statement (admin.h) is
 * answered here as an ordinary result set, in the simple and the extended
 * protocol (psql, psycopg, a Grafana Postgres datasource).
 *
 * Authorisation is checked at login and again for every statement, against
 * the running config (a reload that takes admin away takes it at the next
 * statement): a user without admin = true gets 42501.
 *
 * What one worker knows it answers at once (SHOW SHARDS and NODES read the
 * health snapshot, CONFIG the config). What every worker holds (clients,
 * servers, pools, statistics) is gathered (gather.c: each worker fills its
 * part on its own thread, the answer comes back on the admin client's).
 * Meanwhile the admin client's input waits where it is (its state below),
 * so replies keep their order.
 *
 *   READY ----statement answered locally----> READY
 *   READY ----statement that gathers--------> GATHERING (input not read)
 *   GATHERING --every worker answered-------> rows sent, READY, input read on
 *   any -------client closes----------------> the gather, if any, is
 *                                             cancelled (its answer dropped)
 */
#include <ctype.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pgshard/admin.h"
#include "pgshard/analyze.h"
#include "pgshard/hold.h"
#include "pgshard/log.h"
#include "pgshard/mapsource.h"
#include "pgshard/monitor.h"
#include "pgshard/moves.h"
#include "pgshard/client.h"
#include "pgshard/console.h"
#include "pgshard/request.h"
#include "pgshard/route.h"
#include "pgshard/stats.h"
#include "pgshard/twophase.h"
#include "pgshard/gather.h"
#include "pgshard/listen.h"
#include "pgshard/mailbox.h"
#include "pgshard/pause.h"

#define ADMIN_MAX_STATEMENTS 256 /* extended protocol: named statements and portals kept */

#define OID_BOOL 16
#define OID_INT8 20
#define OID_TEXT 25
#define OID_FLOAT8 701

typedef struct admin_column {
  const char *name;
  uint32_t oid;
} admin_column_t;

typedef struct pgs_admin_session {
  pgs_strmap_t statements;     /* extended protocol: statement name -> text */
  pgs_strmap_t portals;        /* portal name -> text */
  bool skip_to_sync;           /* an error in this extended unit */
  pgs_gather_t *gather;        /* GATHERING: the answer it waits for */
  int gathering;               /* ... for what (pgs_admin_show_t, GATHER_KILL, GATHER_PAUSE) */
  char pause_db[PGS_MAX_NAME]; /* a PAUSE waiting: its database ("": all) */
  uint64_t hold_gen;           /* a RESHARD HOLD waiting: its hold (hold.h) */
  uint64_t release_ms;         /* a RESHARD RELEASE waiting for a RELOAD: since when */
  struct pause_timer *pause_timer;
  int reply_mode; /* ... and how it goes out (reply_mode_t) */
} pgs_admin_session_t;

/* How the answer of a gather goes out. */
typedef enum {
  REPLY_SIMPLE,  /* Query: RowDescription, rows, CommandComplete, ReadyForQuery */
  REPLY_EXECUTE, /* Execute: rows, CommandComplete */
} reply_mode_t;

/* The client connection's side (client.c), registered at start-up: this
 * file calls nothing above it. */
static const pgs_session_ops_t *connection;

void pgs_admin_set_session_ops(const pgs_session_ops_t *ops) { connection = ops; }

/* ---- result sets ---- */

/* pg_type.typlen of OID: -1 for text. */
static int16_t type_len(uint32_t oid) {
  if (oid == OID_INT8 || oid == OID_FLOAT8) return 8;
  return oid == OID_BOOL ? 1 : -1;
}

static void put_row_description(pgs_buf_t *b, const admin_column_t *cols, int n) {
  size_t start = pgs_msg_begin(b, 'T');
  pgs_buf_put_i16(b, (int16_t)n);
  for (int i = 0; i < n; i++) {
    pgs_buf_put_cstr(b, cols[i].name);
    pgs_buf_put_i32(b, 0); /* table */
    pgs_buf_put_i16(b, 0); /* column */
    pgs_buf_put_i32(b, (int32_t)cols[i].oid);
    pgs_buf_put_i16(b, type_len(cols[i].oid));
    pgs_buf_put_i32(b, -1); /* typmod */
    pgs_buf_put_i16(b, 0);  /* text */
  }
  pgs_msg_end(b, start);
}

/* A row being built: values appended one by one. */
typedef struct row {
  pgs_buf_t *b;
  size_t start;
} row_t;

static row_t row_begin(pgs_buf_t *b, int ncols) {
  row_t r = {b, pgs_msg_begin(b, 'D')};
  pgs_buf_put_i16(b, (int16_t)ncols);
  return r;
}

static void row_text(row_t *r, const char *value) {
  if (value == NULL) {
    pgs_buf_put_i32(r->b, -1);
    return;
  }
  size_t len = strlen(value);
  pgs_buf_put_i32(r->b, (int32_t)len);
  pgs_buf_put(r->b, value, len);
}

PGS_PRINTF(2, 3)
static void row_format(row_t *r, const char *fmt, ...) {
  char value[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(value, sizeof(value), fmt, ap);
  va_end(ap);
  row_text(r, value);
}

static void row_int(row_t *r, int64_t v) { row_format(r, "%lld", (long long)v); }
static void row_bool(row_t *r, bool v) { row_text(r, v ? "t" : "f"); }
static void row_end(row_t *r) { pgs_msg_end(r->b, r->start); }

static void put_complete(pgs_buf_t *b, const char *tag) {
  size_t start = pgs_msg_begin(b, 'C');
  pgs_buf_put_cstr(b, tag);
  pgs_msg_end(b, start);
}

/* ---- the columns of each SHOW ---- */

static const admin_column_t shards_cols[] = {
    {"database", OID_TEXT}, {"shard", OID_TEXT},         {"region", OID_TEXT},
    {"nodes", OID_INT8},    {"writer", OID_TEXT},        {"readable_replicas", OID_INT8},
    {"up_nodes", OID_INT8}, {"max_lag_bytes", OID_INT8}, {"max_lag_ms", OID_INT8},
};
static const admin_column_t nodes_cols[] = {
    {"database", OID_TEXT},
    {"shard", OID_TEXT},
    {"node", OID_INT8},
    {"role", OID_TEXT},
    {"host", OID_TEXT},
    {"port", OID_INT8},
    {"up", OID_BOOL},
    {"writer", OID_BOOL},
    {"in_read_set", OID_BOOL},
    {"in_recovery", OID_BOOL},
    {"lag_bytes", OID_INT8},
    {"lag_ms", OID_INT8},
    {"failed_checks", OID_INT8},
    {"last_check_ms_ago", OID_INT8},
    {"check_ms", OID_FLOAT8},
    {"banned", OID_BOOL},
};
static const admin_column_t pools_cols[] = {
    {"database", OID_TEXT},  {"user", OID_TEXT},       {"shard", OID_TEXT},
    {"node", OID_INT8},      {"cl_active", OID_INT8},  {"cl_waiting", OID_INT8},
    {"sv_active", OID_INT8}, {"sv_idle", OID_INT8},    {"sv_connecting", OID_INT8},
    {"pool_size", OID_INT8}, {"maxwait_ms", OID_INT8}, {"pool_mode", OID_TEXT},
};
static const admin_column_t clients_cols[] = {
    {"id", OID_INT8},      {"database", OID_TEXT}, {"user", OID_TEXT},    {"address", OID_TEXT},
    {"state", OID_TEXT},   {"tx", OID_TEXT},       {"servers", OID_INT8}, {"age_s", OID_INT8},
    {"idle_ms", OID_INT8}, {"worker", OID_INT8},   {"tenant", OID_TEXT},  {"pinned", OID_BOOL},
};
static const admin_column_t servers_cols[] = {
    {"pid", OID_INT8},      {"database", OID_TEXT}, {"user", OID_TEXT}, {"shard", OID_TEXT},
    {"node", OID_INT8},     {"state", OID_TEXT},    {"tx", OID_TEXT},   {"client", OID_INT8},
    {"state_ms", OID_INT8}, {"worker", OID_INT8},
};
static const admin_column_t stats_cols[] = {
    {"database", OID_TEXT},      {"requests", OID_INT8},      {"transactions", OID_INT8},
    {"queries", OID_INT8},       {"errors", OID_INT8},        {"refusals", OID_INT8},
    {"fanouts", OID_INT8},       {"twopc_commits", OID_INT8}, {"twopc_aborts", OID_INT8},
    {"bytes_in", OID_INT8},      {"bytes_out", OID_INT8},     {"avg_us", OID_INT8},
    {"p50_us", OID_INT8},        {"p95_us", OID_INT8},        {"p99_us", OID_INT8},
    {"error_classes", OID_TEXT},
};
static const admin_column_t queries_cols[] = {
    {"database", OID_TEXT}, {"query", OID_TEXT},      {"calls", OID_INT8},    {"errors", OID_INT8},
    {"fanouts", OID_INT8},  {"max_shards", OID_INT8}, {"total_ms", OID_INT8}, {"avg_us", OID_INT8},
    {"p50_us", OID_INT8},   {"p95_us", OID_INT8},     {"p99_us", OID_INT8},
};
#define QUERIES_SHOWN 100
static const admin_column_t config_cols[] = {
    {"section", OID_TEXT}, {"key", OID_TEXT}, {"value", OID_TEXT}};
static const admin_column_t version_cols[] = {{"version", OID_TEXT}};
/* One row per gid of this process in flight, then recovery's row (gid
 * NULL, state "recovery"): its counters, age_ms since its last pass. */
static const admin_column_t twophase_cols[] = {{"gid", OID_TEXT},
                                               {"state", OID_TEXT},
                                               {"driven_by", OID_TEXT},
                                               {"age_ms", OID_INT8},
                                               {"recovery_commits", OID_INT8},
                                               {"recovery_rollbacks", OID_INT8}};
static const admin_column_t listeners_cols[] = {
    {"database", OID_TEXT}, {"shard", OID_TEXT},         {"state", OID_TEXT},
    {"pid", OID_INT8},      {"user", OID_TEXT},          {"channels", OID_INT8},
    {"clients", OID_INT8},  {"notifications", OID_INT8}, {"reconnects", OID_INT8},
    {"worker", OID_INT8},
};
/* SHOW RESHARD: a row per move (kind 'move'), and while RESHARD HOLD holds
 * a row per database it holds (kind 'hold'); the other kind's columns are
 * NULL. */
static const admin_column_t reshard_cols[] = {
    {"kind", OID_TEXT},       {"reshard_id", OID_TEXT},    {"database", OID_TEXT},
    {"source", OID_TEXT},     {"target", OID_TEXT},        {"tables", OID_TEXT},
    {"phase", OID_TEXT},      {"rows_copied", OID_INT8},   {"rows_applied", OID_INT8},
    {"lag_bytes", OID_INT8},  {"lag_seconds", OID_FLOAT8}, {"error", OID_TEXT},
    {"held_since", OID_TEXT}, {"held_ms", OID_INT8},       {"release_in_ms", OID_INT8},
    {"new_config", OID_TEXT}, {"waiting", OID_INT8},
};
static const admin_column_t explain_cols[] = {{"item", OID_TEXT}, {"value", OID_TEXT}};
static const admin_column_t help_cols[] = {{"command", OID_TEXT}, {"description", OID_TEXT}};

typedef struct show_spec {
  const admin_column_t *cols;
  int ncols;
  bool gathers; /* every worker contributes */
} show_spec_t;

#define SPEC(cols, gathers)                                                                        \
  { cols, (int)PGS_ARRAY_LEN(cols), gathers }

static show_spec_t show_spec(pgs_admin_show_t what) {
  switch (what) {
  case PGS_SHOW_SHARDS:
    return (show_spec_t)SPEC(shards_cols, false);
  case PGS_SHOW_NODES:
    return (show_spec_t)SPEC(nodes_cols, false);
  case PGS_SHOW_POOLS:
    return (show_spec_t)SPEC(pools_cols, true);
  case PGS_SHOW_CLIENTS:
    return (show_spec_t)SPEC(clients_cols, true);
  case PGS_SHOW_SERVERS:
    return (show_spec_t)SPEC(servers_cols, true);
  case PGS_SHOW_STATS:
    return (show_spec_t)SPEC(stats_cols, true);
  case PGS_SHOW_QUERIES:
    return (show_spec_t)SPEC(queries_cols, true);
  case PGS_SHOW_CONFIG:
    return (show_spec_t)SPEC(config_cols, false);
  case PGS_SHOW_TWOPHASE:
    return (show_spec_t)SPEC(twophase_cols, false);
  case PGS_SHOW_LISTENERS:
    return (show_spec_t)SPEC(listeners_cols, true);
  case PGS_SHOW_RESHARD:
    return (show_spec_t)SPEC(reshard_cols, true);
  case PGS_SHOW_VERSION:
    return (show_spec_t)SPEC(version_cols, false);
  case PGS_SHOW_HELP:
  case PGS_SHOW_COUNT:
    break;
  }
  return (show_spec_t)SPEC(help_cols, false);
}

/* ---- what one worker answers alone ---- */

static const char *yes_no(bool v) { return v ? "true" : "false"; }

static void show_nodes(pgs_client_t *client, pgs_buf_t *b, bool per_node) {
  const pgs_config_t *config = client->worker->config;
  const pgs_snapshot_t *snap = client->worker->snapshot;
  uint64_t now = pgs_now_ms();
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_t *sh = &db->shards[s];
      const pgs_shard_health_t *h = pgs_snapshot_shard_of(snap, db, s);
      if (!per_node) {
        int readable = 0, up = 0;
        int64_t max_bytes = 0, max_ms = 0;
        for (int i = 0; h && i < h->nnodes; i++) {
          readable += h->nodes[i].readable;
          up += h->nodes[i].up;
          if (i > 0 && (int64_t)h->nodes[i].lag_bytes > max_bytes)
            max_bytes = (int64_t)h->nodes[i].lag_bytes;
          if (i > 0 && h->nodes[i].lag_ms > max_ms) max_ms = h->nodes[i].lag_ms;
        }
        const pgs_node_t *writer = h == NULL        ? &sh->primary
                                   : h->writer < 0  ? NULL
                                   : h->writer == 0 ? &sh->primary
                                                    : &sh->replicas[h->writer - 1];
        row_t r = row_begin(b, (int)PGS_ARRAY_LEN(shards_cols));
        row_text(&r, db->name);
        row_text(&r, sh->name);
        row_text(&r, sh->region);
        row_int(&r, 1 + sh->nreplicas);
        if (writer)
          row_format(&r, "%s:%d", writer->host, writer->port);
        else
          row_text(&r, NULL);
        row_int(&r, readable);
        row_int(&r, up);
        row_int(&r, max_bytes);
        row_int(&r, max_ms);
        row_end(&r);
        continue;
      }
      for (int i = 0; i <= sh->nreplicas; i++) {
        const pgs_node_t *node = i == 0 ? &sh->primary : &sh->replicas[i - 1];
        const pgs_node_state_t *ns = h && i < h->nnodes ? &h->nodes[i] : NULL;
        row_t r = row_begin(b, (int)PGS_ARRAY_LEN(nodes_cols));
        row_text(&r, db->name);
        row_text(&r, sh->name);
        row_int(&r, i);
        row_text(&r, i == 0 ? "primary" : "replica");
        row_text(&r, node->host);
        row_int(&r, node->port);
        if (ns) {
          row_bool(&r, ns->up);
          row_bool(&r, h->writer == i);
          row_bool(&r, ns->readable);
          row_bool(&r, ns->in_recovery);
          if (i > 0)
            row_int(&r, (int64_t)ns->lag_bytes);
          else
            row_text(&r, NULL);
          if (i > 0 && ns->lag_ms >= 0)
            row_int(&r, ns->lag_ms);
          else
            row_text(&r, NULL);
          row_int(&r, ns->failures);
          if (ns->checked_ms)
            row_int(&r, (int64_t)(now - ns->checked_ms));
          else
            row_text(&r, NULL);
          if (ns->check.count > 0)
            row_format(&r, "%.3f", (double)ns->check.last_us / 1000.0);
          else
            row_text(&r, NULL);
          row_bool(&r, ns->banned);
        } else {
          for (int k = 0; k < 10; k++) row_text(&r, NULL);
        }
        row_end(&r);
      }
    }
  }
}

/* ---- SHOW RESHARD ---- */

static double wall_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* How far the target's apply is behind the source: the source's writer's
 * current WAL position (the monitor's last check) minus the move's
 * applied_lsn; -1 when either is not known. */
static int64_t move_lag_bytes(const pgs_snapshot_t *snap, const char *dbname, const pgs_move_t *m) {
  const pgs_database_t *db = pgs_config_find_database(snap->config, dbname);
  int source = db && m->source ? pgs_shardmap_find_shard(db, m->source) : -1;
  const pgs_shard_health_t *h = source >= 0 ? pgs_snapshot_shard(snap, dbname, source) : NULL;
  if (h == NULL || h->writer < 0 || !m->has_applied_lsn) return -1;
  const pgs_node_state_t *w = &h->nodes[h->writer];
  if (!w->up || w->lsn == 0) return -1;
  uint64_t current = pgs_lsn_record_end(w->lsn);
  return current > m->applied_lsn ? (int64_t)(current - m->applied_lsn) : 0;
}

static void move_row(pgs_buf_t *b, const pgs_snapshot_t *snap, const char *dbname,
                     const pgs_move_t *m, double now) {
  row_t r = row_begin(b, (int)PGS_ARRAY_LEN(reshard_cols));
  row_text(&r, "move");
  row_text(&r, m->reshard_id);
  row_text(&r, m->database);
  row_text(&r, m->source);
  row_text(&r, m->target);
  char tables[512] = "";
  size_t n = 0;
  for (int t = 0; t < m->ntables && n < sizeof(tables); t++)
    n += (size_t)snprintf(tables + n, sizeof(tables) - n, "%s%s", t ? ", " : "", m->tables[t]);
  row_text(&r, tables);
  row_text(&r, m->phase_name);
  row_int(&r, m->rows_copied);
  row_int(&r, m->rows_applied);
  int64_t lag = move_lag_bytes(snap, dbname, m);
  if (lag < 0)
    row_text(&r, NULL);
  else
    row_int(&r, lag);
  if (lag < 0 || (lag > 0 && m->applied_commit_at < 0))
    row_text(&r, NULL);
  else
    row_format(&r, "%.3f",
               lag > 0 && now > m->applied_commit_at ? now - m->applied_commit_at : 0.0);
  row_text(&r, m->error);
  for (int k = 0; k < 5; k++) row_text(&r, NULL);
  row_end(&r);
}

/* A worker's part of SHOW RESHARD: a record per client it holds. */
typedef struct held_client {
  char db[PGS_MAX_NAME];
} held_client_t;

static void part_reshard(pgs_worker_t *w, pgs_buf_t *b) {
  for (pgs_list_t *l = w->clients.next; l != &w->clients; l = l->next) {
    pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
    if (c->park != PGS_PARK_HELD || c->state == PGS_CL_CLOSING) continue;
    held_client_t h;
    memset(&h, 0, sizeof(h));
    snprintf(h.db, sizeof(h.db), "%s", c->dbname);
    pgs_buf_put(b, &h, sizeof(h));
  }
}

/* The clients held, of database DB (NULL: any), over every worker's part. */
static int64_t held_clients(pgs_gather_t *g, const char *db) {
  int64_t n = 0;
  for (int i = 0; i < pgs_gather_nparts(g); i++) {
    const pgs_buf_t *b = pgs_gather_part(g, i);
    for (size_t at = 0; at + sizeof(held_client_t) <= b->len; at += sizeof(held_client_t))
      n += db == NULL || !strcmp(((const held_client_t *)(b->data + at))->db, db);
  }
  return n;
}

/* A row of the hold: DB held (NULL: the hold holds no database). */
static void hold_row(pgs_buf_t *b, const pgs_hold_info_t *hold, const char *db, int64_t waiting) {
  uint64_t now = pgs_now_ms();
  row_t r = row_begin(b, (int)PGS_ARRAY_LEN(reshard_cols));
  row_text(&r, "hold");
  row_text(&r, NULL);
  row_text(&r, db);
  for (int k = 0; k < 3; k++) row_text(&r, NULL);
  row_text(&r, "held");
  for (int k = 0; k < 5; k++) row_text(&r, NULL);
  time_t since = (time_t)hold->since;
  struct tm tm;
  char when[64];
  gmtime_r(&since, &tm);
  size_t n = strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
  snprintf(when + n, sizeof(when) - n, ".%03d+00", (int)((hold->since - (double)since) * 1000));
  row_text(&r, when);
  row_int(&r, (int64_t)(now - hold->since_ms));
  row_int(&r, hold->deadline_ms > now ? (int64_t)(hold->deadline_ms - now) : 0);
  row_text(&r, hold->path);
  row_int(&r, waiting);
  row_end(&r);
}

/* The rows of SHOW RESHARD: the moves the snapshot has, then the hold (a
 * row per database it holds). */
static int emit_reshard(pgs_client_t *client, pgs_buf_t *out, pgs_gather_t *g) {
  const pgs_snapshot_t *snap = client->worker->snapshot;
  double now = wall_seconds();
  int rows = 0;
  for (int d = 0; snap && d < snap->ndbs; d++) {
    for (int i = 0; i < snap->dbs[d].nmoves; i++, rows++)
      move_row(out, snap, snap->dbs[d].name, &snap->dbs[d].moves[i], now);
  }
  pgs_hold_info_t hold;
  if (pgs_hold_info(&hold)) {
    for (int i = 0; i < hold.ndbs; i++, rows++)
      hold_row(out, &hold, hold.dbs[i], held_clients(g, hold.dbs[i]));
    if (hold.ndbs == 0) {
      hold_row(out, &hold, NULL, held_clients(g, NULL));
      rows++;
    }
    free(hold.dbs);
  }
  return rows;
}

static void config_row(pgs_buf_t *b, const char *section, const char *key, const char *value) {
  row_t r = row_begin(b, 3);
  row_text(&r, section);
  row_text(&r, key);
  row_text(&r, value);
  row_end(&r);
}

PGS_PRINTF(4, 5)
static void config_rowf(pgs_buf_t *b, const char *section, const char *key, const char *fmt, ...) {
  char value[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(value, sizeof(value), fmt, ap);
  va_end(ap);
  config_row(b, section, key, value);
}

/* Where the map this worker serves came from, and the source's state. */
static void show_map_source(pgs_buf_t *b, const pgs_config_t *c) {
  const char *p = "pgshard";
  pgs_mapsource_state_t st;
  pgs_mapsource_state(&st);
  /* With map_source: the version every worker serves (a reload is done
   * once each has it), not only this client's worker. */
  int64_t version = st.running ? st.served : c->map_version;
  config_rowf(b, p, "map_version", "%lld", (long long)version);
  config_row(b, p, "map_origin", version > 0 ? "map_source" : "file");
  if (c->map_source == NULL) return;
  char *shown = pgs_mapsource_conninfo_display(c->map_source);
  config_row(b, p, "map_source", shown);
  free(shown);
  char since[64] = "";
  if (st.since > 0) {
    time_t t = (time_t)st.since;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(since, sizeof(since), "%Y-%m-%d %H:%M:%S+00", &tm);
  }
  config_row(b, p, "map_source_state", st.connected ? "listening" : "stale");
  config_row(b, p, "map_source_since", since[0] ? since : NULL);
  config_row(b, p, "map_source_error", st.error[0] ? st.error : NULL);
  config_rowf(b, p, "map_held_version", "%lld", (long long)st.held);
  config_rowf(b, p, "map_refused", "%llu", (unsigned long long)st.nrefused);
  config_rowf(b, p, "map_refused_version", "%lld", (long long)st.refused);
  config_row(b, p, "instance", st.instance);
}

static void show_config(pgs_client_t *client, pgs_buf_t *b) {
  const pgs_config_t *c = client->worker->config;
  static const char *const auths[] = {"trust", "md5", "scram-sha-256"};
  static const char *const ryws[] = {"off", "window", "session", "lsn"};
  static const char *const xwrites[] = {"deny", "allow", "2pc"};
  const char *p = "pgshard";
  config_row(b, p, "config_file", c->path);
  config_rowf(b, p, "reloads", "%llu", (unsigned long long)pgs_mailbox_reloads());
  show_map_source(b, c);
  config_rowf(b, p, "listen", "%s:%d", c->listen_host, c->listen_port);
  config_rowf(b, p, "workers", "%d", c->workers);
  config_row(b, p, "auth", auths[c->auth]);
  config_row(b, p, "log_format", c->log_format == PGS_LOG_JSON ? "json" : "text");
  config_rowf(b, p, "max_client_conn", "%d", c->max_client_conn);
  config_rowf(b, p, "max_message_size", "%lld", (long long)c->max_message_size);
  config_rowf(b, p, "query_wait_timeout_ms", "%d", c->query_wait_timeout_ms);
  config_rowf(b, p, "server_connect_timeout_ms", "%d", c->server_connect_timeout_ms);
  config_rowf(b, p, "client_login_timeout_ms", "%d", c->client_login_timeout_ms);
  config_rowf(b, p, "server_idle_timeout_ms", "%d", c->server_idle_timeout_ms);
  config_rowf(b, p, "shutdown_timeout_ms", "%d", c->shutdown_timeout_ms);
  config_rowf(b, p, "client_idle_timeout_ms", "%d", c->client_idle_timeout_ms);
  config_rowf(b, p, "client_write_timeout_ms", "%d", c->client_write_timeout_ms);
  config_rowf(b, p, "idle_transaction_timeout_ms", "%d", c->idle_transaction_timeout_ms);
  config_rowf(b, p, "query_timeout_ms", "%d", c->query_timeout_ms);
  config_rowf(b, p, "log_min_duration_ms", "%d", c->log_min_duration_ms);
  config_row(b, p, "trace_comments", yes_no(c->trace_comments));
  config_rowf(b, p, "server_lifetime_ms", "%d", c->server_lifetime_ms);
  config_rowf(b, p, "max_client_memory", "%lld", (long long)c->max_client_memory);
  config_rowf(b, p, "max_total_client_memory", "%lld", (long long)c->max_total_client_memory);
  config_rowf(b, p, "max_merge_bytes", "%lld", (long long)c->max_merge_bytes);
  config_rowf(b, p, "max_notify_queue_bytes", "%lld", (long long)c->max_notify_queue_bytes);
  config_row(b, p, "twophase_recovery_user", c->twophase_recovery_user);
  for (int i = 0; i < c->nusers; i++) {
    char section[PGS_MAX_NAME + 8];
    snprintf(section, sizeof(section), "user.%s", c->users[i].name);
    config_row(b, section, "admin", yes_no(c->users[i].admin));
  }
  for (int d = 0; d < c->ndatabases; d++) {
    const pgs_database_t *db = &c->databases[d];
    char section[PGS_MAX_NAME + 12];
    snprintf(section, sizeof(section), "database.%s", db->name);
    config_row(b, section, "pool_mode",
               db->pool_mode == PGS_POOL_SESSION ? "session" : "transaction");
    config_rowf(b, section, "pool_size", "%d", db->pool_size);
    config_row(b, section, "read_your_writes", ryws[db->read_your_writes]);
    config_rowf(b, section, "ryw_window_ms", "%d", db->ryw_window_ms);
    config_rowf(b, section, "max_replica_lag_ms", "%d", db->max_replica_lag_ms);
    config_rowf(b, section, "max_replica_lag_bytes", "%lld", (long long)db->max_replica_lag_bytes);
    config_rowf(b, section, "lag_check_interval_ms", "%d", db->lag_check_interval_ms);
    config_rowf(b, section, "node_down_failures", "%d", db->node_down_failures);
    config_row(b, section, "lag_fallback",
               db->lag_fallback == PGS_FALLBACK_ERROR ? "error" : "primary");
    config_row(b, section, "cross_shard_reads", db->cross_shard_reads ? "allow" : "deny");
    config_row(b, section, "cross_shard_writes", xwrites[db->cross_shard_writes]);
    config_row(b, section, "tenant_isolation", db->tenant_strict ? "strict" : "shard");
    config_row(b, section, "hash", db->hash == PGS_HASH_POSTGRES ? "postgres" : "xxh3");
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_t *sh = &db->shards[s];
      char ssection[2 * PGS_MAX_NAME + 12];
      snprintf(ssection, sizeof(ssection), "shard.%s.%s", db->name, sh->name);
      config_rowf(b, ssection, "primary", "%s:%d", sh->primary.host, sh->primary.port);
      for (int i = 0; i < sh->nreplicas; i++)
        config_rowf(b, ssection, "replica", "%s:%d", sh->replicas[i].host, sh->replicas[i].port);
      if (sh->region) config_row(b, ssection, "region", sh->region);
    }
  }
}

static void show_help(pgs_buf_t *b) {
  for (int i = 0; i < PGS_SHOW_COUNT; i++) {
    char command[32] = "SHOW ";
    const char *word = pgs_admin_show_word((pgs_admin_show_t)i);
    for (size_t k = 0; word[k] && k + 6 < sizeof(command); k++)
      command[5 + k] = (char)toupper((unsigned char)word[k]);
    row_t r = row_begin(b, 2);
    row_text(&r, command);
    row_text(&r, pgs_admin_show_help((pgs_admin_show_t)i));
    row_end(&r);
  }
  static const char *const more[][2] = {
      {"RELOAD", "read the config file again (refused with its first error if it has any)"},
      {"EXPLAIN ROUTE [IN db] statement", "where a statement would run, and why"},
      {"BAN host:port", "take a replica out of the read set until UNBAN"},
      {"UNBAN host:port", "give a banned replica back to the read set"},
      {"PAUSE [db]", "new transactions wait; answers once running ones have finished"},
      {"RESHARD HOLD 'new.ini' [timeout_ms]",
       "statements that would run on other shards under new.ini wait; answers once open "
       "transactions have finished"},
      {"RESHARD RELEASE", "held statements go on (on the config a RELOAD before it loaded)"},
      {"RESUME [db]", "waiting clients go on"},
      {"KILL client_id", "close a client connection (its id as SHOW CLIENTS gives it)"},
      {"SHUTDOWN", "stop accepting, let transactions finish, exit (as SIGTERM)"},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(more); i++) {
    row_t r = row_begin(b, 2);
    row_text(&r, more[i][0]);
    row_text(&r, more[i][1]);
    row_end(&r);
  }
}

static void twophase_row(const char *gid, pgs_twophase_state_t state, bool released,
                         uint64_t age_ms, void *arg) {
  static const char *const states[] = {"preparing", "committing", "committed", "aborting"};
  row_t r = row_begin(arg, (int)PGS_ARRAY_LEN(twophase_cols));
  row_text(&r, gid);
  row_text(&r, (size_t)state < PGS_ARRAY_LEN(states) ? states[state] : "?");
  /* Its worker finishes it, or the recovery pass (a client gone, a shard
   * lost). */
  row_text(&r, released ? "recovery" : "client");
  row_int(&r, (int64_t)age_ms);
  row_text(&r, NULL);
  row_text(&r, NULL);
  row_end(&r);
}

static void twophase_recovery_row(pgs_buf_t *b) {
  pgs_twophase_counters_t c = pgs_twophase_counters();
  row_t r = row_begin(b, (int)PGS_ARRAY_LEN(twophase_cols));
  row_text(&r, NULL);
  row_text(&r, "recovery");
  row_text(&r, "recovery");
  if (c.last_pass_ms)
    row_int(&r, (int64_t)(pgs_now_ms() - c.last_pass_ms));
  else
    row_text(&r, NULL);
  row_int(&r, (int64_t)c.commits);
  row_int(&r, (int64_t)c.rollbacks);
  row_end(&r);
}

/* Rows of a SHOW one worker answers; returns the row count. */
static int show_local(pgs_client_t *client, pgs_admin_show_t what, pgs_buf_t *b) {
  size_t before = b->len;
  switch (what) {
  case PGS_SHOW_SHARDS:
    show_nodes(client, b, false);
    break;
  case PGS_SHOW_NODES:
    show_nodes(client, b, true);
    break;
  case PGS_SHOW_CONFIG:
    show_config(client, b);
    break;
  case PGS_SHOW_TWOPHASE:
    pgs_twophase_each(twophase_row, b);
    twophase_recovery_row(b);
    break;
  case PGS_SHOW_VERSION: {
    row_t r = row_begin(b, 1);
    row_format(&r, "pgshard %s", PGS_VERSION);
    row_end(&r);
    break;
  }
  default:
    show_help(b);
    break;
  }
  int rows = 0;
  for (size_t at = before; at < b->len; at += 1 + pgs_get_u32(b->data + at + 1)) rows++;
  return rows;
}

/* ---- what every worker contributes ---- */

static const char *client_state_name(const pgs_client_t *c) {
  switch (c->state) {
  case PGS_CL_STARTUP:
    return "startup";
  case PGS_CL_AUTH:
    return "auth";
  case PGS_CL_LOGIN:
    return "login";
  case PGS_CL_IDLE:
    return "idle";
  case PGS_CL_WAITING:
    return "waiting";
  case PGS_CL_ACTIVE:
    return "active";
  case PGS_CL_CLOSING:
    return "closing";
  }
  return "?";
}

static const char *server_state_name(pgs_server_state_t state) {
  switch (state) {
  case PGS_SV_CONNECTING:
    return "connecting";
  case PGS_SV_IDLE:
    return "idle";
  case PGS_SV_ACTIVE:
    return "active";
  case PGS_SV_RESETTING:
    return "resetting";
  case PGS_SV_CLOSING:
    return "closing";
  case PGS_SV_MOVING:
    return "moving";
  }
  return "?";
}

static void part_clients(pgs_worker_t *w, pgs_buf_t *b) {
  uint64_t now = pgs_now_ms();
  for (pgs_list_t *l = w->clients.next; l != &w->clients; l = l->next) {
    pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
    int servers = 0;
    for (int i = 0; i < c->session.nslots; i++) servers += c->servers[i] != NULL;
    row_t r = row_begin(b, (int)PGS_ARRAY_LEN(clients_cols));
    row_int(&r, c->cancel_pid);
    row_text(&r, c->dbname[0] ? c->dbname : NULL);
    row_text(&r, c->username[0] ? c->username : NULL);
    row_text(&r, c->peer);
    row_text(&r, c->admin ? "admin" : client_state_name(c));
    char tx[2] = {c->txstatus ? c->txstatus : 'I', '\0'};
    row_text(&r, tx);
    row_int(&r, servers);
    row_int(&r, (int64_t)((now - c->created_ms) / 1000));
    row_int(&r, (int64_t)(now - c->active_ms));
    row_int(&r, w->index);
    row_text(&r, c->session.tenant_text);
    row_bool(&r, c->session.pinned);
    row_end(&r);
  }
}

static void server_rows(pgs_worker_t *w, pgs_pool_t *pool, pgs_list_t *list, pgs_buf_t *b,
                        uint64_t now) {
  for (pgs_list_t *l = list->next; l != list; l = l->next) {
    pgs_server_t *s = pgs_container_of(l, pgs_server_t, link);
    row_t r = row_begin(b, (int)PGS_ARRAY_LEN(servers_cols));
    if (s->backend_pid)
      row_int(&r, s->backend_pid);
    else
      row_text(&r, NULL);
    row_text(&r, pool->dbname);
    row_text(&r, pool->username);
    row_text(&r, pool->shard);
    row_int(&r, pool->node);
    row_text(&r, server_state_name(s->state));
    char tx[2] = {s->txstatus ? s->txstatus : 'I', '\0'};
    row_text(&r, tx);
    if (s->client)
      row_int(&r, s->client->cancel_pid);
    else
      row_text(&r, NULL);
    row_int(&r, (int64_t)(now - s->state_since_ms));
    row_int(&r, w->index);
    row_end(&r);
  }
}

static void part_servers(pgs_worker_t *w, pgs_buf_t *b) {
  uint64_t now = pgs_now_ms();
  for (pgs_list_t *l = w->pools.next; l != &w->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    server_rows(w, pool, &pool->connecting, b, now);
    server_rows(w, pool, &pool->idle, b, now);
    server_rows(w, pool, &pool->active, b, now);
  }
}

/* One pool's numbers on one worker, merged by key at home. */
typedef struct pool_numbers {
  char db[PGS_MAX_NAME], user[PGS_MAX_NAME], shard[PGS_MAX_NAME];
  int node;
  bool session;
  int64_t cl_active, cl_waiting, sv_active, sv_idle, sv_connecting, size, maxwait_ms;
} pool_numbers_t;

static void part_pools(pgs_worker_t *w, pgs_buf_t *b) {
  uint64_t now = pgs_now_ms();
  for (pgs_list_t *l = w->pools.next; l != &w->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    pool_numbers_t n;
    memset(&n, 0, sizeof(n));
    snprintf(n.db, sizeof(n.db), "%s", pool->dbname);
    snprintf(n.user, sizeof(n.user), "%s", pool->username);
    snprintf(n.shard, sizeof(n.shard), "%s", pool->shard);
    n.node = pool->node;
    n.session = pool->mode == PGS_POOL_SESSION;
    for (pgs_list_t *s = pool->active.next; s != &pool->active; s = s->next)
      n.cl_active += pgs_container_of(s, pgs_server_t, link)->client != NULL;
    n.cl_waiting = pool->nwaiters;
    n.sv_active = pool->nactive;
    n.sv_idle = pool->nidle;
    n.sv_connecting = pool->nconnecting;
    /* pool_size as configured: the limit for every worker together. */
    const pgs_database_t *db = pgs_config_find_database(w->config, pool->dbname);
    n.size = db ? db->pool_size : pool->size;
    if (!pgs_list_empty(&pool->waiters)) {
      pgs_client_t *oldest = pgs_container_of(pool->waiters.next, pgs_client_t, wait_link);
      n.maxwait_ms = (int64_t)(now - oldest->wait_start_ms);
    }
    pgs_buf_put(b, &n, sizeof(n));
  }
}

static void part_queries(pgs_worker_t *w, pgs_buf_t *b) {
  if (w->queries && w->queries->n > 0)
    pgs_buf_put(b, w->queries->entries, (size_t)w->queries->n * sizeof(pgs_query_stats_t));
}

static int by_total_time(const void *a, const void *b) {
  const pgs_query_stats_t *x = a, *y = b;
  return x->total_us < y->total_us ? 1 : x->total_us > y->total_us ? -1 : 0;
}

static void emit_queries(pgs_buf_t *out, pgs_gather_t *g, int *rows) {
  pgs_query_stats_t *all = NULL;
  int n = 0;
  for (int i = 0; i < pgs_gather_nparts(g); i++) {
    const pgs_buf_t *b = pgs_gather_part(g, i);
    for (size_t at = 0; at + sizeof(pgs_query_stats_t) <= b->len; at += sizeof(pgs_query_stats_t)) {
      pgs_query_stats_t *q = pgs_xmalloc(sizeof(*q));
      memcpy(q, b->data + at, sizeof(*q));
      int k = 0;
      while (k < n && !(all[k].hash == q->hash && !strcmp(all[k].db, q->db))) k++;
      if (k == n) {
        all = pgs_xrealloc(all, (size_t)(n + 1) * sizeof(*all));
        all[n++] = *q;
      } else {
        if (!strcmp(all[k].text, "(text evicted)")) memcpy(all[k].text, q->text, sizeof(q->text));
        pgs_query_stats_merge(&all[k], q);
      }
      free(q);
    }
  }
  if (n > 1) qsort(all, (size_t)n, sizeof(*all), by_total_time);
  *rows = 0;
  for (int k = 0; k < n && *rows < QUERIES_SHOWN; k++) {
    const pgs_query_stats_t *q = &all[k];
    if (q->calls == 0) continue; /* seen, not finished yet */
    (*rows)++;
    row_t r = row_begin(out, (int)PGS_ARRAY_LEN(queries_cols));
    row_text(&r, q->db);
    row_text(&r, q->text);
    row_int(&r, (int64_t)q->calls);
    row_int(&r, (int64_t)q->errors);
    row_int(&r, (int64_t)q->fanouts);
    row_int(&r, q->max_shards);
    row_int(&r, (int64_t)(q->total_us / 1000));
    row_int(&r, (int64_t)(q->total_us / q->calls));
    row_int(&r, (int64_t)pgs_hist_quantile(&q->latency, 0.50));
    row_int(&r, (int64_t)pgs_hist_quantile(&q->latency, 0.95));
    row_int(&r, (int64_t)pgs_hist_quantile(&q->latency, 0.99));
    row_end(&r);
  }
  free(all);
}

static void part_stats(pgs_worker_t *w, pgs_buf_t *b) {
  for (int i = 0; i < w->nstats; i++) pgs_buf_put(b, w->stats[i], sizeof(pgs_db_stats_t));
}

/* ---- gathering ---- */

#define GATHER_KILL PGS_SHOW_COUNT        /* "what" of a KILL: the part says if it closed one */
#define GATHER_PAUSE (PGS_SHOW_COUNT + 1) /* a PAUSE waiting: transactions still running */
/* A RESHARD HOLD waiting for the transactions open at HOLD; a RESHARD
 * RELEASE waiting (RELEASE_WAIT_MS at most) for a RELOAD asked before it to
 * reach the workers. */
#define GATHER_HOLD (PGS_SHOW_COUNT + 2)
#define GATHER_RELEASE (PGS_SHOW_COUNT + 3)
#define RELEASE_WAIT_MS 5000
#define PAUSE_POLL_MS 20

/* Closes client ID if this worker has it. */
static bool kill_client(pgs_worker_t *w, int32_t id) {
  for (pgs_list_t *l = w->clients.next; l != &w->clients; l = l->next) {
    pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
    if (c->cancel_pid != id || c->state == PGS_CL_CLOSING) continue;
    pgs_info("client %d (%s@%s): killed from the admin console", c->cancel_pid, c->username,
             c->peer);
    pgs_session_fail(connection, c, PGS_SQLSTATE_ADMIN_SHUTDOWN,
                     "terminating connection due to administrator command");
    return true;
  }
  return false;
}

/* SHOW LISTENERS: a row per listener of the worker (listen.c). */
typedef struct listener_rows {
  pgs_buf_t *b;
  int worker;
} listener_rows_t;

static void listener_row(void *arg, const pgs_listener_info_t *info) {
  listener_rows_t *lr = arg;
  row_t r = row_begin(lr->b, (int)PGS_ARRAY_LEN(listeners_cols));
  row_text(&r, info->database);
  row_text(&r, info->shard);
  row_text(&r, info->state);
  if (info->backend_pid)
    row_int(&r, info->backend_pid);
  else
    row_text(&r, NULL);
  row_text(&r, info->user);
  row_int(&r, info->channels);
  row_int(&r, info->clients);
  row_int(&r, (int64_t)info->notifications);
  row_int(&r, (int64_t)info->reconnects);
  row_int(&r, lr->worker);
  row_end(&r);
}

static void gather_part(pgs_worker_t *w, pgs_buf_t *b, int what, int64_t param) {
  switch (what) {
  case PGS_SHOW_LISTENERS: {
    listener_rows_t lr = {.b = b, .worker = w->index};
    pgs_listen_each(w, listener_row, &lr);
    break;
  }
  case PGS_SHOW_CLIENTS:
    part_clients(w, b);
    break;
  case PGS_SHOW_SERVERS:
    part_servers(w, b);
    break;
  case PGS_SHOW_POOLS:
    part_pools(w, b);
    break;
  case PGS_SHOW_STATS:
    part_stats(w, b);
    break;
  case PGS_SHOW_QUERIES:
    part_queries(w, b);
    break;
  case PGS_SHOW_RESHARD:
    part_reshard(w, b);
    break;
  case GATHER_KILL:
    if (kill_client(w, (int32_t)param)) pgs_buf_put_u8(b, 1);
    break;
  case GATHER_PAUSE:
    /* A byte per client of a paused database still inside a transaction. */
    for (pgs_list_t *l = w->clients.next; l != &w->clients; l = l->next) {
      pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
      if (!c->admin && c->session.db && c->state != PGS_CL_CLOSING && c->park != PGS_PARK_PAUSED &&
          pgs_paused(c->dbname) && !pgs_request_between_transactions(c))
        pgs_buf_put_u8(b, 1);
    }
    break;
  case GATHER_HOLD:
    /* A byte per client of a held database inside a transaction (or a
     * statement) that began before the hold: the hold's own run on. */
    for (pgs_list_t *l = w->clients.next; l != &w->clients; l = l->next) {
      pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
      if (!c->admin && c->session.db && c->state != PGS_CL_CLOSING && c->park != PGS_PARK_HELD &&
          c->tx_hold != (uint64_t)param && pgs_hold_database((uint64_t)param, c->dbname) &&
          !pgs_request_between_transactions(c))
        pgs_buf_put_u8(b, 1);
    }
    break;
  default:
    break;
  }
}

static void admin_process(pgs_client_t *client);
static void emit_gathered(pgs_client_t *client, pgs_gather_t *g, int what, int mode);

static void start_gather(pgs_client_t *client, int what, reply_mode_t mode, int64_t param);

/* A PAUSE waits: ask again in a moment (the timer is the session's; it
 * may outlive the client, and then does nothing). */
typedef struct pause_timer {
  uv_timer_t timer;
  pgs_client_t *client; /* NULL once the client has gone */
} pause_timer_t;

static void pause_timer_closed(uv_handle_t *handle) { free(handle->data); }

static void pause_poll(uv_timer_t *timer) {
  pause_timer_t *pt = timer->data;
  pgs_admin_session_t *as = pt->client ? pt->client->admin_session : NULL;
  if (as)
    start_gather(pt->client, as->gathering, as->reply_mode,
                 as->gathering == GATHER_HOLD ? (int64_t)as->hold_gen : 0);
}

static bool pause_still_waits(pgs_client_t *client, pgs_gather_t *g) {
  pgs_admin_session_t *as = client->admin_session;
  bool busy = false;
  for (int i = 0; i < pgs_gather_nparts(g); i++) busy |= pgs_gather_part(g, i)->len > 0;
  if (as->gathering == GATHER_RELEASE)
    busy = pgs_hold_reloads_pending() && pgs_now_ms() - as->release_ms < RELEASE_WAIT_MS;
  bool waiting = as->gathering == GATHER_HOLD    ? pgs_hold_gen() == as->hold_gen
                 : as->gathering == GATHER_PAUSE ? pgs_paused(as->pause_db[0] ? as->pause_db : "")
                                                 : true;
  if (!busy || !waiting) return false;
  if (as->pause_timer == NULL) {
    as->pause_timer = pgs_xcalloc(1, sizeof(*as->pause_timer));
    uv_timer_init(&client->worker->loop, &as->pause_timer->timer);
    as->pause_timer->timer.data = as->pause_timer;
  }
  as->pause_timer->client = client;
  uv_timer_start(&as->pause_timer->timer, pause_poll, PAUSE_POLL_MS, 0);
  return true;
}

static void gather_done(pgs_gather_t *g, void *owner) {
  pgs_client_t *client = owner;
  pgs_admin_session_t *as = client->admin_session;
  as->gather = NULL;
  if ((as->gathering == GATHER_PAUSE || as->gathering == GATHER_HOLD ||
       as->gathering == GATHER_RELEASE) &&
      pause_still_waits(client, g))
    return;
  emit_gathered(client, g, as->gathering, as->reply_mode);
  pgs_io_start_reading(&client->io);
  admin_process(client);
}

/* Ask every worker (or, for KILL, the one that owns the client) for its
 * part of WHAT; the admin client reads nothing more until gather_done. */
static void start_gather(pgs_client_t *client, int what, reply_mode_t mode, int64_t param) {
  pgs_admin_session_t *as = client->admin_session;
  as->gathering = what;
  as->reply_mode = mode;
  pgs_io_stop_reading(&client->io);
  int only = what == GATHER_KILL ? pgs_mailbox_index_of_pid((int32_t)param) : -1;
  as->gather =
      pgs_gather_start(client->worker, only, what, param, gather_part, gather_done, client);
}

static void emit_pools(pgs_buf_t *out, pgs_gather_t *g, int *rows) {
  pool_numbers_t *all = NULL;
  int n = 0;
  for (int i = 0; i < pgs_gather_nparts(g); i++) {
    const pgs_buf_t *b = pgs_gather_part(g, i);
    for (size_t at = 0; at + sizeof(pool_numbers_t) <= b->len; at += sizeof(pool_numbers_t)) {
      pool_numbers_t p;
      memcpy(&p, b->data + at, sizeof(p));
      int k = 0;
      while (k < n && !(strcmp(all[k].db, p.db) == 0 && strcmp(all[k].user, p.user) == 0 &&
                        strcmp(all[k].shard, p.shard) == 0 && all[k].node == p.node))
        k++;
      if (k == n) {
        all = pgs_xrealloc(all, (size_t)(n + 1) * sizeof(*all));
        all[n++] = p;
        continue;
      }
      all[k].cl_active += p.cl_active;
      all[k].cl_waiting += p.cl_waiting;
      all[k].sv_active += p.sv_active;
      all[k].sv_idle += p.sv_idle;
      all[k].sv_connecting += p.sv_connecting;
      if (p.size > all[k].size) all[k].size = p.size;
      if (p.maxwait_ms > all[k].maxwait_ms) all[k].maxwait_ms = p.maxwait_ms;
    }
  }
  for (int k = 0; k < n; k++) {
    row_t r = row_begin(out, (int)PGS_ARRAY_LEN(pools_cols));
    row_text(&r, all[k].db);
    row_text(&r, all[k].user);
    row_text(&r, all[k].shard);
    row_int(&r, all[k].node);
    row_int(&r, all[k].cl_active);
    row_int(&r, all[k].cl_waiting);
    row_int(&r, all[k].sv_active);
    row_int(&r, all[k].sv_idle);
    row_int(&r, all[k].sv_connecting);
    row_int(&r, all[k].size);
    row_int(&r, all[k].maxwait_ms);
    row_text(&r, all[k].session ? "session" : "transaction");
    row_end(&r);
  }
  *rows = n;
  free(all);
}

/* Every worker's statistics of each database, merged (stats.h). */
static pgs_db_stats_t *merge_stats(pgs_gather_t *g, int *count) {
  pgs_db_stats_t *all = NULL;
  *count = 0;
  for (int i = 0; i < pgs_gather_nparts(g); i++) {
    const pgs_buf_t *b = pgs_gather_part(g, i);
    pgs_db_stats_merge_records(b->data, b->len / sizeof(pgs_db_stats_t), &all, count);
  }
  return all;
}

static void emit_stats(pgs_buf_t *out, pgs_gather_t *g, int *rows) {
  int n;
  pgs_db_stats_t *all = merge_stats(g, &n);
  for (int k = 0; k < n; k++) {
    const pgs_db_stats_t *s = &all[k];
    row_t r = row_begin(out, (int)PGS_ARRAY_LEN(stats_cols));
    row_text(&r, s->db);
    row_int(&r, (int64_t)s->requests);
    row_int(&r, (int64_t)s->transactions);
    row_int(&r, (int64_t)s->queries);
    row_int(&r, (int64_t)s->errors);
    row_int(&r, (int64_t)s->refusals);
    row_int(&r, (int64_t)s->fanouts);
    row_int(&r, (int64_t)s->twopc_commits);
    row_int(&r, (int64_t)s->twopc_aborts);
    row_int(&r, (int64_t)s->bytes_in);
    row_int(&r, (int64_t)s->bytes_out);
    row_int(&r, s->latency.count ? (int64_t)(s->latency.sum / s->latency.count) : 0);
    row_int(&r, (int64_t)pgs_hist_quantile(&s->latency, 0.50));
    row_int(&r, (int64_t)pgs_hist_quantile(&s->latency, 0.95));
    row_int(&r, (int64_t)pgs_hist_quantile(&s->latency, 0.99));
    char classes[PGS_ERROR_CLASSES * 24] = "";
    size_t len = 0;
    for (int c = 0; c < s->nerror_classes && len < sizeof(classes); c++)
      len +=
          (size_t)snprintf(classes + len, sizeof(classes) - len, "%s%s:%llu", c ? " " : "",
                           s->error_classes[c].cls, (unsigned long long)s->error_classes[c].count);
    row_text(&r, classes);
    row_end(&r);
  }
  *rows = n;
  free(all);
}

static void put_error(pgs_client_t *client, const char *sqlstate, const char *message);

/* ReadyForQuery (idle) to the console client, and what follows one. */
static void send_ready(pgs_client_t *client, pgs_buf_t *out) {
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_msg_ready(out, 'I');
  pgs_io_scratch_done(&client->io, mark);
  connection->after_ready(client, 'I');
}

/* RESHARD HOLD answered once the transactions open at HOLD have ended (an
 * error if the hold ended first); RESHARD RELEASE once the RELOADs asked
 * before it have reached the workers (or RELEASE_WAIT_MS went by). */
static void emit_hold(pgs_client_t *client, int what) {
  pgs_admin_session_t *as = client->admin_session;
  size_t mark = pgs_io_scratch_mark(&client->io);
  if (what == GATHER_RELEASE) {
    if (pgs_hold_reloads_pending())
      pgs_warn(
          "admin: RESHARD RELEASE: a RELOAD asked before it has not reached the workers "
          "after %d ms; releasing anyway",
          RELEASE_WAIT_MS);
    bool held = pgs_hold_end("RESHARD RELEASE");
    pgs_info("admin: RESHARD RELEASE by %s@%s%s", client->username, client->peer,
             held ? "" : " (nothing was held)");
    put_complete(pgs_io_scratch(&client->io), "RESHARD RELEASE");
    pgs_io_scratch_done(&client->io, mark);
    return;
  }
  if (pgs_hold_gen() == as->hold_gen) {
    put_complete(pgs_io_scratch(&client->io), "RESHARD HOLD");
    pgs_io_scratch_done(&client->io, mark);
    return;
  }
  pgs_io_scratch_done(&client->io, mark);
  put_error(client, "55000",
            "the hold ended (RESHARD RELEASE or its timeout) before the transactions open at "
            "RESHARD HOLD finished");
}

static void emit_gathered(pgs_client_t *client, pgs_gather_t *g, int what, int mode) {
  show_spec_t spec = show_spec((pgs_admin_show_t)what);
  pgs_buf_t *out = pgs_io_scratch(&client->io);
  size_t mark;
  if (what == GATHER_PAUSE) {
    mark = pgs_io_scratch_mark(&client->io);
    if (pgs_paused(client->admin_session->pause_db)) {
      put_complete(out, "PAUSE");
      pgs_io_scratch_done(&client->io, mark);
    } else {
      pgs_io_scratch_done(&client->io, mark);
      put_error(client, "55000", "RESUME came before the running transactions finished");
    }
  }
  if (what == GATHER_HOLD || what == GATHER_RELEASE) {
    emit_hold(client, what);
    if (mode == REPLY_SIMPLE) send_ready(client, out);
    return;
  }
  if (what == GATHER_PAUSE || what == GATHER_KILL) {
    bool killed = what == GATHER_PAUSE;
    for (int i = 0; i < pgs_gather_nparts(g); i++) killed |= pgs_gather_part(g, i)->len > 0;
    if (what == GATHER_PAUSE) {
      /* answered above */
    } else if (killed) {
      mark = pgs_io_scratch_mark(&client->io);
      put_complete(out, "KILL");
      pgs_io_scratch_done(&client->io, mark);
    } else {
      put_error(client, "42704", "no such client");
    }
    if (mode == REPLY_SIMPLE) send_ready(client, out);
    return;
  }
  mark = pgs_io_scratch_mark(&client->io);
  if (mode == REPLY_SIMPLE) put_row_description(out, spec.cols, spec.ncols);
  int rows = 0;
  if (what == PGS_SHOW_POOLS) {
    emit_pools(out, g, &rows);
  } else if (what == PGS_SHOW_STATS) {
    emit_stats(out, g, &rows);
  } else if (what == PGS_SHOW_QUERIES) {
    emit_queries(out, g, &rows);
  } else if (what == PGS_SHOW_RESHARD) {
    rows = emit_reshard(client, out, g);
  } else {
    for (int i = 0; i < pgs_gather_nparts(g); i++) {
      const pgs_buf_t *b = pgs_gather_part(g, i);
      pgs_buf_put(out, b->data, b->len);
      for (size_t at = 0; at < b->len; at += 1 + pgs_get_u32(b->data + at + 1)) rows++;
    }
  }
  char tag[32];
  snprintf(tag, sizeof(tag), "SHOW %d", rows);
  put_complete(out, tag);
  if (mode == REPLY_SIMPLE) {
    pgs_msg_ready(out, 'I');
    connection->after_ready(client, 'I');
  }
  pgs_io_scratch_done(&client->io, mark);
}

/* ---- commands ---- */

static bool still_admin(pgs_client_t *client) {
  const pgs_user_t *user = pgs_config_find_user(client->worker->config, client->username);
  return user && user->admin;
}

static void put_error(pgs_client_t *client, const char *sqlstate, const char *message) {
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_msg_error(pgs_io_scratch(&client->io), "ERROR", sqlstate, NULL, "%s", message);
  pgs_io_scratch_done(&client->io, mark);
}

/* ---- EXPLAIN ROUTE ---- */

static void item(pgs_buf_t *b, const char *name, const char *value) {
  row_t r = row_begin(b, 2);
  row_text(&r, name);
  row_text(&r, value);
  row_end(&r);
}

static const char *kind_name(pgs_stmt_kind_t kind) {
  static const char *const names[] = {"read",     "write",   "ddl",       "begin",   "commit",
                                      "rollback", "session", "copy from", "copy to", "other"};
  return (size_t)kind < PGS_ARRAY_LEN(names) ? names[kind] : "?";
}

static const char *route_name(pgs_route_kind_t kind) {
  switch (kind) {
  case PGS_ROUTE_ONE:
    return "one shard";
  case PGS_ROUTE_ANY:
    return "any one shard (touches no sharded table)";
  case PGS_ROUTE_FANOUT:
    return "every shard of the list, each its part";
  case PGS_ROUTE_SPLIT:
    return "split: each row to its shard";
  case PGS_ROUTE_REFUSE:
    return "refused";
  case PGS_ROUTE_MERGE:
    return "every shard of the list, rows merged";
  }
  return "?";
}

/* The shards of MASK, by name. */
static void shard_names(const pgs_database_t *db, uint64_t mask, char *out, size_t cap) {
  size_t n = 0;
  out[0] = '\0';
  for (int i = 0; i < db->nshards && i < 64; i++) {
    if (!(mask & ((uint64_t)1 << i))) continue;
    int w = snprintf(out + n, cap - n, "%s%s", n ? ", " : "", db->shards[i].name);
    if (w < 0 || (size_t)w >= cap - n) break;
    n += (size_t)w;
  }
}

/* How a key written in the statement maps: value, table, strategy, shard. */
static void explain_key(pgs_buf_t *b, const pgs_database_t *db, const pgs_lexed_t *lexed,
                        const pgs_key_ref_t *ref) {
  const pgs_table_t *t = ref->table;
  char line[512];
  int lit = (int)ref->param - lexed->nparams - 1;
  if (t == NULL) return;
  if (lit < 0 || lit >= lexed->nliterals) {
    snprintf(line, sizeof(line), "%s.%s = $%d (%s): decided at Bind", t->name, t->column,
             ref->param, pgs_strategy_name(t->strategy));
    item(b, "key", line);
    return;
  }
  const pgs_literal_t *l = &lexed->literals[lit];
  char value[256];
  snprintf(value, sizeof(value), "%s%.*s", ref->negate ? "-" : "",
           (int)(l->len > 200 ? 200 : l->len), lexed->values + l->offset);
  const char *text = value;
  size_t text_len = strlen(value);
  pgs_key_t key;
  pgs_key_error_t err;
  pgs_route_detail_t d;
  if (ref->array || pgs_key_from_text(t->type, text, text_len, &key, &err) != PGS_OK) {
    snprintf(line, sizeof(line), "%s.%s = %s (%s)%s", t->name, t->column, text,
             pgs_strategy_name(t->strategy), ref->array ? ": an array, each element routed" : "");
    item(b, "key", line);
    return;
  }
  int shard = pgs_shardmap_route_detail(db, t, &key, &d, &err);
  char how[160] = "";
  if (d.slot >= 0)
    snprintf(how, sizeof(how), ", slot %d", d.slot);
  else if (d.range >= 0)
    snprintf(how, sizeof(how), ", range %d", d.range);
  else if (d.region)
    snprintf(how, sizeof(how), ", region %s%s", d.region, d.geo_default ? " (default)" : "");
  else if (d.pinned)
    snprintf(how, sizeof(how), ", pinned tenant");
  else if (d.postgres_hash)
    snprintf(how, sizeof(how), ", partition hash");
  snprintf(line, sizeof(line), "%s.%s = %.64s (%s%s) -> %s", t->name, t->column, text,
           pgs_strategy_name(t->strategy), how, shard >= 0 ? db->shards[shard].name : err.message);
  item(b, "key", line);
}

/* EXPLAIN ROUTE: the router's decision for a statement, without running it
 * (no session: no tenant, SET pgshard.shard or read-your-writes state). */
static bool explain_route(pgs_client_t *client, const pgs_admin_cmd_t *cmd, pgs_buf_t *b,
                          int *rows) {
  const pgs_config_t *config = client->worker->config;
  const pgs_database_t *db = NULL;
  if (cmd->arg[0])
    db = pgs_config_find_database(config, cmd->arg);
  else if (config->ndatabases == 1)
    db = &config->databases[0];
  if (db == NULL) {
    put_error(client, PGS_SQLSTATE_INVALID_CATALOG,
              cmd->arg[0] ? "no such database" : "several databases: say EXPLAIN ROUTE IN db ...");
    return false;
  }
  pgs_lexed_t lexed;
  pgs_lex_init(&lexed);
  if (pgs_lex(cmd->statement, cmd->statement_len, &lexed) != PGS_OK) {
    pgs_lex_free(&lexed);
    put_error(client, PGS_SQLSTATE_SYNTAX_ERROR, "the statement cannot be read");
    return false;
  }
  pgs_plan_t *plan = pgs_analyze(db, &lexed);
  size_t before = b->len;
  char text[1024];
  item(b, "database", db->name);
  item(b, "statement", kind_name(plan->kind));
  if (plan->parse_failed) {
    item(b, "route", "refused: PostgreSQL's grammar does not read it (42601)");
  } else {
    pgs_route_session_t session = {.hint_shard = -1, .tenant = NULL};
    if (lexed.hint_shard[0]) {
      session.hint_shard = pgs_shardmap_find_shard(db, lexed.hint_shard);
      item(b, "hint", lexed.hint_shard);
    }
    pgs_param_values_t none = {0};
    pgs_route_t rt;
    memset(&rt, 0, sizeof(rt));
    int *row_shard = plan->nrows ? pgs_xcalloc((size_t)plan->nrows, sizeof(int)) : NULL;
    rt.row_shard = row_shard;
    if (lexed.hint_shard[0] && session.hint_shard < 0) {
      rt.kind = PGS_ROUTE_REFUSE;
      snprintf(rt.sqlstate, sizeof(rt.sqlstate), "22023");
      snprintf(rt.message, sizeof(rt.message), "unknown shard \"%s\" in hint", lexed.hint_shard);
    } else if (lexed.nparams > 0) {
      rt.kind = PGS_ROUTE_REFUSE;
      snprintf(rt.sqlstate, sizeof(rt.sqlstate), "-----");
      snprintf(rt.message, sizeof(rt.message),
               "the statement has $n parameters: its route is decided at Bind");
    } else {
      pgs_route_plan(db, plan, &lexed, &none, &session, &rt);
    }
    if (rt.kind == PGS_ROUTE_REFUSE && plan->refuse_sqlstate[0] && !rt.message[0])
      snprintf(rt.message, sizeof(rt.message), "%s", plan->refuse_message);
    if (rt.kind == PGS_ROUTE_REFUSE) {
      snprintf(text, sizeof(text), "refused (%s): %s", rt.sqlstate, rt.message);
      item(b, "route", text);
    } else {
      item(b, "route", route_name(rt.kind));
      uint64_t mask =
          rt.kind == PGS_ROUTE_ONE && rt.shard >= 0 ? (uint64_t)1 << rt.shard : rt.shards;
      shard_names(db, mask, text, sizeof(text));
      item(b, "shards", text);
      bool replicas = false;
      for (int i = 0; i < db->nshards; i++)
        if ((mask >> i) & 1) replicas |= db->shards[i].nreplicas > 0;
      if (plan->kind == PGS_STMT_READ && replicas)
        item(b, "server",
             "a replica in the read set (within max_replica_lag_*; read_your_writes may keep a "
             "session that wrote on the primary; lag_fallback when none qualifies); the primary "
             "inside a read-write transaction");
      else
        item(b, "server", "the shard's primary (the node writes go to)");
      if (rt.kind == PGS_ROUTE_FANOUT || rt.kind == PGS_ROUTE_SPLIT || rt.kind == PGS_ROUTE_MERGE) {
        if (plan->kind == PGS_STMT_WRITE || plan->kind == PGS_STMT_DDL || plan->runs_code) {
          static const char *const policy[] = {"deny (refused at run time)", "allow",
                                               "2pc (two-phase commit)"};
          item(b, "cross_shard_writes", policy[db->cross_shard_writes]);
        } else if (!db->cross_shard_reads) {
          item(b, "cross_shard_reads", "deny (refused at run time)");
        }
      }
    }
    for (int i = 0; i < plan->nkeys; i++) explain_key(b, db, &lexed, &plan->keys[i]);
    for (int i = 0; i < plan->nrows && i < 20; i++) explain_key(b, db, &lexed, &plan->rows[i]);
    const pgs_table_t *t = plan->table ? plan->table : plan->all_table;
    if (t && plan->nkeys == 0 && plan->nrows == 0) {
      snprintf(text, sizeof(text), "%s (%s on %s, no key in the statement)", t->name,
               pgs_strategy_name(t->strategy), t->column);
      item(b, "table", text);
    }
    free(row_shard);
  }
  pgs_plan_unref(plan);
  pgs_lex_free(&lexed);
  int n = 0;
  for (size_t at = before; at < b->len; at += 1 + pgs_get_u32(b->data + at + 1)) n++;
  *rows = n;
  return true;
}

/* BAN / UNBAN host:port: every replica at that address, in any database. */
static bool ban(pgs_client_t *client, const pgs_admin_cmd_t *cmd) {
  const pgs_config_t *config = client->worker->config;
  bool banning = cmd->kind == PGS_ADMIN_BAN;
  int replicas = 0, primaries = 0;
  const char *colon = strrchr(cmd->arg, ':');
  for (int d = 0; colon && d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_t *sh = &db->shards[s];
      char name[300];
      snprintf(name, sizeof(name), "%s:%d", sh->primary.host, sh->primary.port);
      primaries += !strcmp(name, cmd->arg);
      for (int i = 0; i < sh->nreplicas; i++) {
        snprintf(name, sizeof(name), "%s:%d", sh->replicas[i].host, sh->replicas[i].port);
        replicas += !strcmp(name, cmd->arg);
      }
    }
  }
  if (replicas == 0) {
    put_error(client, primaries ? PGS_SQLSTATE_FEATURE_NOT_SUPPORTED : "42704",
              primaries ? "only replicas can be banned (writes have nowhere else to go)"
                        : "no replica at that address (BAN host:port, as SHOW NODES gives it)");
    return true;
  }
  char host[256];
  size_t hlen = (size_t)(colon - cmd->arg);
  snprintf(host, sizeof(host), "%.*s", (int)(hlen < sizeof(host) ? hlen : sizeof(host) - 1),
           cmd->arg);
  if (!pgs_monitor_ban(host, atoi(colon + 1), banning)) {
    put_error(client, PGS_SQLSTATE_CONFIG_LIMIT,
              "cannot ban now: too many banned replicas, or the health monitor is not running");
    return true;
  }
  pgs_info("admin: %s %s by %s@%s", banning ? "BAN" : "UNBAN", cmd->arg, client->username,
           client->peer);
  size_t mark = pgs_io_scratch_mark(&client->io);
  put_complete(pgs_io_scratch(&client->io), banning ? "BAN" : "UNBAN");
  pgs_io_scratch_done(&client->io, mark);
  return true;
}

/* RESHARD HOLD 'path' [timeout_ms]: the new config loaded as RELOAD loads
 * one (an error, and nothing held, if it has errors); answered once the
 * transactions open now have ended (hold.h). */
static bool reshard_hold(pgs_client_t *client, const pgs_admin_cmd_t *cmd, bool simple) {
  pgs_config_t *next = pgs_config_load(cmd->path);
  if (next == NULL || next->nerrors > 0) {
    char message[1400];
    snprintf(message, sizeof(message), "%s has errors; nothing is held (line %d: %s)", cmd->path,
             next && next->nerrors ? next->errors[0].line : 0,
             next && next->nerrors ? next->errors[0].message : "cannot be read");
    if (next) pgs_config_unref(next);
    put_error(client, "F0000", message);
    return true;
  }
  int64_t timeout = cmd->timeout_ms > 0 ? cmd->timeout_ms : PGS_HOLD_TIMEOUT_MS;
  int held = 0;
  uint64_t gen = pgs_hold_begin(next, client->worker->config, cmd->path, timeout, &held);
  pgs_config_unref(next);
  pgs_info("admin: RESHARD HOLD %s (%d database(s) whose map changes, at most %lld ms) by %s@%s",
           cmd->path, held, (long long)timeout, client->username, client->peer);
  client->admin_session->hold_gen = gen;
  start_gather(client, GATHER_HOLD, simple ? REPLY_SIMPLE : REPLY_EXECUTE, (int64_t)gen);
  return false;
}

/* Run CMD. Returns false when it gathers (the answer comes later); else
 * its reply (without RowDescription unless SIMPLE) is in the output. */
static bool run_command(pgs_client_t *client, const pgs_admin_cmd_t *cmd, bool simple) {
  pgs_buf_t *out = pgs_io_scratch(&client->io);
  size_t mark;
  if (cmd->kind != PGS_ADMIN_EMPTY && cmd->kind != PGS_ADMIN_SET && !still_admin(client)) {
    put_error(client, PGS_SQLSTATE_INSUFFICIENT_PRIVILEGE,
              "the admin console needs a user with admin = true");
    return true;
  }
  switch (cmd->kind) {
  case PGS_ADMIN_EMPTY:
    mark = pgs_io_scratch_mark(&client->io);
    pgs_msg_empty(out, 'I');
    pgs_io_scratch_done(&client->io, mark);
    return true;
  case PGS_ADMIN_SET:
    mark = pgs_io_scratch_mark(&client->io);
    put_complete(out, "SET");
    pgs_io_scratch_done(&client->io, mark);
    return true;
  case PGS_ADMIN_SHOW: {
    show_spec_t spec = show_spec(cmd->show);
    if (spec.gathers) {
      start_gather(client, cmd->show, simple ? REPLY_SIMPLE : REPLY_EXECUTE, 0);
      return false;
    }
    mark = pgs_io_scratch_mark(&client->io);
    if (simple) put_row_description(out, spec.cols, spec.ncols);
    int rows = show_local(client, cmd->show, out);
    char tag[32];
    snprintf(tag, sizeof(tag), "SHOW %d", rows);
    put_complete(out, tag);
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  case PGS_ADMIN_RELOAD: {
    const char *path = client->worker->config->path;
    pgs_config_t *next = path ? pgs_config_load(path) : NULL;
    if (next == NULL || next->nerrors > 0) {
      char message[600];
      snprintf(message, sizeof(message), "%s has errors; the running config is kept (line %d: %s)",
               path ? path : "the config", next && next->nerrors ? next->errors[0].line : 0,
               next && next->nerrors ? next->errors[0].message : "cannot be read");
      if (next) pgs_config_unref(next);
      put_error(client, "F0000", message);
      return true;
    }
    pgs_config_unref(next);
    pgs_info("admin: RELOAD by %s@%s", client->username, client->peer);
    pgs_hold_reload_ask();  /* a RESHARD RELEASE after it waits for it */
    kill(getpid(), SIGHUP); /* the signal thread reloads, as for an operator's SIGHUP */
    mark = pgs_io_scratch_mark(&client->io);
    put_complete(out, "RELOAD");
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  case PGS_ADMIN_SHUTDOWN:
    pgs_info("admin: SHUTDOWN by %s@%s", client->username, client->peer);
    mark = pgs_io_scratch_mark(&client->io);
    put_complete(out, "SHUTDOWN");
    pgs_io_scratch_done(&client->io, mark);
    kill(getpid(), SIGTERM);
    return true;
  case PGS_ADMIN_KILL:
    if (cmd->client_id <= 0 || cmd->client_id > INT32_MAX || cmd->client_id == client->cancel_pid) {
      put_error(client, "42704",
                cmd->client_id == client->cancel_pid
                    ? "KILL of the admin session itself: close it instead"
                    : "no such client");
      return true;
    }
    start_gather(client, GATHER_KILL, simple ? REPLY_SIMPLE : REPLY_EXECUTE,
                 (int32_t)cmd->client_id);
    return false;
  case PGS_ADMIN_EXPLAIN_ROUTE: {
    pgs_buf_t rows_buf;
    pgs_buf_init(&rows_buf);
    int rows;
    if (explain_route(client, cmd, &rows_buf, &rows)) {
      mark = pgs_io_scratch_mark(&client->io);
      if (simple) put_row_description(out, explain_cols, (int)PGS_ARRAY_LEN(explain_cols));
      pgs_buf_put(out, rows_buf.data, rows_buf.len);
      put_complete(out, "EXPLAIN");
      pgs_io_scratch_done(&client->io, mark);
    }
    pgs_buf_free(&rows_buf);
    return true;
  }
  case PGS_ADMIN_BAN:
  case PGS_ADMIN_UNBAN:
    return ban(client, cmd);
  case PGS_ADMIN_RESHARD_HOLD:
    return reshard_hold(client, cmd, simple);
  case PGS_ADMIN_RESHARD_RELEASE:
    /* Clients it wakes must find the config a RELOAD before it asked for. */
    client->admin_session->release_ms = pgs_now_ms();
    start_gather(client, GATHER_RELEASE, simple ? REPLY_SIMPLE : REPLY_EXECUTE, 0);
    return false;
  case PGS_ADMIN_PAUSE:
  case PGS_ADMIN_RESUME: {
    bool pausing = cmd->kind == PGS_ADMIN_PAUSE;
    if (cmd->arg[0] && pgs_config_find_database(client->worker->config, cmd->arg) == NULL) {
      put_error(client, PGS_SQLSTATE_INVALID_CATALOG, "no such database");
      return true;
    }
    if (!pgs_pause_set(cmd->arg[0] ? cmd->arg : NULL, pausing)) {
      put_error(client, PGS_SQLSTATE_CONFIG_LIMIT, "too many paused databases");
      return true;
    }
    pgs_info("admin: %s %s by %s@%s", pausing ? "PAUSE" : "RESUME",
             cmd->arg[0] ? cmd->arg : "(every database)", client->username, client->peer);
    if (pausing) {
      /* Answered once no transaction of a paused database runs. */
      snprintf(client->admin_session->pause_db, PGS_MAX_NAME, "%.63s", cmd->arg);
      start_gather(client, GATHER_PAUSE, simple ? REPLY_SIMPLE : REPLY_EXECUTE, 0);
      return false;
    }
    mark = pgs_io_scratch_mark(&client->io);
    put_complete(out, "RESUME");
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  }
  put_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED, "this admin command is not supported yet");
  return true;
}

/* The columns CMD answers with, for Describe: false when it has none. */
static bool command_columns(const pgs_admin_cmd_t *cmd, show_spec_t *spec) {
  if (cmd->kind == PGS_ADMIN_EXPLAIN_ROUTE) {
    *spec = (show_spec_t)SPEC(explain_cols, false);
    return true;
  }
  if (cmd->kind != PGS_ADMIN_SHOW) return false;
  *spec = show_spec(cmd->show);
  return true;
}

/* ---- the protocol ---- */

static void free_text(void *p) { free(p); }

static bool parse_text(pgs_client_t *client, const char *text, size_t len, pgs_admin_cmd_t *cmd) {
  char err[256];
  if (pgs_admin_parse(text, len, cmd, err, sizeof(err)) == PGS_OK) return true;
  put_error(client, PGS_SQLSTATE_SYNTAX_ERROR, err);
  return false;
}

/* One extended-protocol message. Returns false when it started a gather. */
static bool extended_message(pgs_client_t *client, char type, const uint8_t *body, size_t len) {
  pgs_admin_session_t *as = client->admin_session;
  pgs_buf_t *out = pgs_io_scratch(&client->io);
  size_t mark;
  if (type == 'S') {
    as->skip_to_sync = false;
    mark = pgs_io_scratch_mark(&client->io);
    pgs_msg_ready(out, 'I');
    pgs_io_scratch_done(&client->io, mark);
    connection->after_ready(client, 'I');
    return true;
  }
  if (type == 'H') return true;
  if (as->skip_to_sync) return true;
  /* Each message is read whole, as PostgreSQL reads it; malformed: 08P01. */
  pgs_parse_msg_t parse;
  pgs_bind_msg_t bind;
  pgs_describe_msg_t target; /* Describe, Close: 'S' statement or 'P' portal, and its name */
  pgs_execute_msg_t execute;
  switch (type) {
  case 'P': {
    if (pgs_parse_read(body, len, &parse) != PGS_OK) break;
    const char *name = parse.name, *text = parse.query;
    pgs_admin_cmd_t cmd;
    if (!parse_text(client, text, parse.query_len, &cmd)) {
      as->skip_to_sync = true;
      return true;
    }
    if (as->statements.count >= ADMIN_MAX_STATEMENTS &&
        !pgs_strmap_contains(&as->statements, name)) {
      put_error(client, "53400", "too many prepared statements on the admin console");
      as->skip_to_sync = true;
      return true;
    }
    free(pgs_strmap_put(&as->statements, name, pgs_xstrdup(text)));
    mark = pgs_io_scratch_mark(&client->io);
    pgs_msg_empty(out, '1');
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  case 'B': {
    if (pgs_bind_read(body, len, &bind) != PGS_OK) break;
    const char *name = bind.portal;
    const char *text = pgs_strmap_get(&as->statements, bind.statement);
    if (text == NULL) {
      put_error(client, "26000", "prepared statement does not exist");
      as->skip_to_sync = true;
      return true;
    }
    if (as->portals.count >= ADMIN_MAX_STATEMENTS && !pgs_strmap_contains(&as->portals, name)) {
      put_error(client, "53400", "too many portals on the admin console");
      as->skip_to_sync = true;
      return true;
    }
    free(pgs_strmap_put(&as->portals, name, pgs_xstrdup(text)));
    mark = pgs_io_scratch_mark(&client->io);
    pgs_msg_empty(out, '2');
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  case 'D': {
    if (pgs_describe_read(body, len, &target) != PGS_OK) break;
    char which = target.kind;
    const char *text = pgs_strmap_get(which == 'S' ? &as->statements : &as->portals, target.name);
    if (text == NULL) {
      put_error(client, which == 'S' ? "26000" : "34000",
                which == 'S' ? "prepared statement does not exist" : "portal does not exist");
      as->skip_to_sync = true;
      return true;
    }
    pgs_admin_cmd_t cmd;
    if (!parse_text(client, text, strlen(text), &cmd)) {
      as->skip_to_sync = true;
      return true;
    }
    mark = pgs_io_scratch_mark(&client->io);
    if (which == 'S') {
      size_t start = pgs_msg_begin(out, 't');
      pgs_buf_put_i16(out, 0);
      pgs_msg_end(out, start);
    }
    show_spec_t spec;
    if (command_columns(&cmd, &spec))
      put_row_description(out, spec.cols, spec.ncols);
    else
      pgs_msg_empty(out, 'n');
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  case 'E': {
    if (pgs_execute_read(body, len, &execute) != PGS_OK) break;
    const char *text = pgs_strmap_get(&as->portals, execute.portal);
    if (text == NULL) {
      put_error(client, "34000", "portal does not exist");
      as->skip_to_sync = true;
      return true;
    }
    pgs_admin_cmd_t cmd;
    if (!parse_text(client, text, strlen(text), &cmd)) {
      as->skip_to_sync = true;
      return true;
    }
    return run_command(client, &cmd, false);
  }
  case 'C': {
    if (pgs_close_read(body, len, &target) != PGS_OK) break;
    free(pgs_strmap_remove(target.kind == 'S' ? &as->statements : &as->portals, target.name));
    mark = pgs_io_scratch_mark(&client->io);
    pgs_msg_empty(out, '3');
    pgs_io_scratch_done(&client->io, mark);
    return true;
  }
  default:
    put_error(client, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
              "this message is not supported on the admin console");
    as->skip_to_sync = true;
    return true;
  }
  put_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid message");
  as->skip_to_sync = true;
  return true;
}

static void admin_process(pgs_client_t *client) {
  pgs_io_t *io = &client->io;
  pgs_admin_session_t *as = client->admin_session;
  while (as->gather == NULL && client->state != PGS_CL_CLOSING) {
    char type;
    size_t total;
    const uint8_t *p = io->in.data + io->in_pos;
    pgs_status_t st = pgs_request_next_message(client, &type, &total);
    if (st == PGS_EAGAIN) break;
    if (st != PGS_OK) return;
    io->in_pos += total;
    if (client->request_start_us == 0) client->request_start_us = pgs_now_us();
    if (type == 'X') {
      connection->close(client);
      return;
    }
    if (type == 'Q') {
      size_t len;
      pgs_reader_t r;
      pgs_reader_init(&r, p + 5, total - 5);
      const char *text = pgs_read_cstr(&r, &len);
      pgs_admin_cmd_t cmd;
      bool answered = true;
      if (text == NULL)
        put_error(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "invalid Query message");
      else if (parse_text(client, text, len, &cmd))
        answered = run_command(client, &cmd, true);
      if (!answered) break; /* the gather sends the rest */
      size_t mark = pgs_io_scratch_mark(io);
      pgs_msg_ready(pgs_io_scratch(io), 'I');
      pgs_io_scratch_done(io, mark);
      connection->after_ready(client, 'I');
      continue;
    }
    if (!extended_message(client, type, p + 5, total - 5)) break;
  }
  if (pgs_io_flush(io) < 0) {
    connection->close(client);
    return;
  }
  pgs_io_compact(io);
}

/* ---- entry points (proxy.h) ---- */

void pgs_admin_login(pgs_client_t *client) {
  if (client->user == NULL || !client->user->admin) {
    pgs_session_fail(connection, client, PGS_SQLSTATE_INSUFFICIENT_PRIVILEGE,
                     "user \"%s\" may not use the admin console (admin = true)", client->username);
    return;
  }
  client->admin = true;
  client->admin_session = pgs_xcalloc(1, sizeof(*client->admin_session));
  pgs_strmap_init(&client->admin_session->statements);
  pgs_strmap_init(&client->admin_session->portals);
  pgs_buf_t *out = pgs_io_scratch(&client->io);
  size_t mark = pgs_io_scratch_mark(&client->io);
  static const char *const params[][2] = {
      {"server_version", "15.0 (pgshard admin console)"},
      {"server_encoding", "UTF8"},
      {"client_encoding", "UTF8"},
      {"DateStyle", "ISO, MDY"},
      {"IntervalStyle", "postgres"},
      {"integer_datetimes", "on"},
      {"standard_conforming_strings", "on"},
      {"TimeZone", "UTC"},
      {"is_superuser", "off"},
      {"application_name", ""},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(params); i++)
    pgs_msg_parameter_status(out, params[i][0], params[i][1]);
  pgs_msg_parameter_status(out, "session_authorization", client->username);
  pgs_msg_backend_key(out, client->cancel_pid, client->cancel_key);
  pgs_msg_ready(out, 'I');
  pgs_io_scratch_done(&client->io, mark);
  connection->after_ready(client, 'I');
  pgs_info("client %d (%s@%s) opened the admin console", client->cancel_pid, client->username,
           client->peer);
}

void pgs_admin_process(pgs_client_t *client) { admin_process(client); }

void pgs_admin_free(pgs_client_t *client) {
  pgs_admin_session_t *as = client->admin_session;
  if (as == NULL) return;
  pgs_gather_cancel(as->gather);
  if (as->pause_timer) {
    as->pause_timer->client = NULL;
    uv_close((uv_handle_t *)&as->pause_timer->timer, pause_timer_closed);
  }
  pgs_strmap_free(&as->statements, free_text);
  pgs_strmap_free(&as->portals, free_text);
  free(as);
  client->admin_session = NULL;
}
