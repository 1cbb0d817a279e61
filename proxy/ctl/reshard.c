/*
 * reshard.c — `pgshardctl reshard plan|start|status|cutover|cleanup|abort
 * OLD NEW`: moving rows between shards with the application running.
 *
 * The verbs, each idempotent and safe to rerun after any of them died:
 *
 *   plan     the moves OLD -> NEW (source shard, target shard, tables), the
 *            rows each would move (counted on the sources by routing every
 *            key with the NEW map), and what must hold first: the table on
 *            the target, a replica identity with the shard key, wal_level.
 *   start    per source: a publication of its moving tables and a logical
 *            replication slot; the rows present at the slot's snapshot
 *            copied to their NEW shards (reshard_copy.c); then the changes
 *            since, applied as they come (reshard_stream.c), until cutover
 *            or abort. Runs in the foreground, one child per source.
 *   status   per move: phase, rows copied and applied, lag in bytes and
 *            seconds, whether its streamer is connected, errors.
 *   cutover  pgshard holds statements on moving keys (RESHARD HOLD NEW),
 *            a marker is written into each source's WAL and awaited on
 *            every target (the targets have everything before it), targets'
 *            replicas catch up, sequences are carried over, OLD's file gets
 *            NEW's text and pgshard reloads, then RESHARD RELEASE.
 *   cleanup  after cutover: the moved rows deleted on the sources, slots
 *            and publications dropped, phase cleaned.
 *   abort    before cutover: streamers stopped, slots and publications
 *            dropped, the copies deleted from the targets, state removed.
 *
 * State is in the cluster, not in a file: pgshard.reshard_move on each
 * target primary (sql/reshard.sql). The plan's id hashes the database name
 * and NEW's text, so reruns find their rows.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "pgshard/health.h"
#include "pgshard/pgoutput.h"
#include "lab.h"
#include "reshard.h"
#include "reshard_sql.h"

/* ---- small helpers ---- */

const char *rs_ident(const char *name, char *buf, size_t cap) {
  size_t o = 0;
  if (cap < 3) return "";
  buf[o++] = '"';
  for (const char *p = name; *p && o + 3 < cap; p++) {
    if (*p == '"') buf[o++] = '"';
    buf[o++] = *p;
  }
  buf[o++] = '"';
  buf[o] = '\0';
  return buf;
}

uint64_t rs_lsn(const char *text) {
  uint64_t lsn;
  return pgs_lsn_parse(text, &lsn) == PGS_OK ? lsn : 0;
}

void rs_free_strings(char **v, int n) {
  for (int i = 0; i < n; i++) free(v[i]);
  free(v);
}

static void trim_message(char *s) {
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ')) s[--n] = '\0';
}

PGconn *rs_connect(const pgs_node_t *node, const char *dbname, bool replication) {
  const char *keys[] = {"dbname",
                        "dbname",
                        "application_name",
                        "connect_timeout",
                        "options",
                        replication ? "replication" : NULL,
                        NULL};
  const char *values[] = {node->conninfo, node->dbname ? node->dbname : dbname,
                          "pgshardctl reshard", "10",
                          /* durable progress, and WAL sent at each commit (the cut waits) */
                          "-c client_min_messages=warning -c synchronous_commit=on",
                          replication ? "database" : NULL, NULL};
  /* The first dbname expands the node's conninfo; the second names the
   * database when the conninfo does not (a later key wins only when set). */
  if (node->dbname) keys[1] = "fallback_application_name", values[1] = "pgshardctl";
  PGconn *conn = PQconnectdbParams(keys, values, 1);
  if (PQstatus(conn) != CONNECTION_OK) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
    trim_message(msg);
    fprintf(stderr, "pgshardctl: cannot connect to %s:%d: %s\n", node->host, node->port, msg);
    PQfinish(conn);
    return NULL;
  }
  return conn;
}

PGresult *rs_query(PGconn *conn, const char *what, const char *sql, int nparams,
                   const char *const *params) {
  PGresult *res =
      nparams ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(conn, sql);
  ExecStatusType st = PQresultStatus(res);
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) return res;
  char msg[1024];
  snprintf(msg, sizeof(msg), "%s", res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
  if (msg[0] == '\0') snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
  trim_message(msg);
  fprintf(stderr, "pgshardctl: %s: %s\n", what, msg);
  PQclear(res);
  return NULL;
}

bool rs_exec(PGconn *conn, const char *what, const char *sql, int nparams,
             const char *const *params) {
  PGresult *res = rs_query(conn, what, sql, nparams, params);
  PQclear(res);
  return res != NULL;
}

int rs_route_text(const pgs_database_t *db, const pgs_table_t *table, const char *text, size_t len,
                  char *errbuf, size_t errcap) {
  pgs_key_t key;
  pgs_key_error_t err;
  if (pgs_key_from_text(table->type, text, len, &key, &err) != PGS_OK) {
    snprintf(errbuf, errcap, "key %.*s of table %s: %s", (int)(len > 64 ? 64 : len), text,
             table->name, err.message);
    return -1;
  }
  int shard = pgs_shardmap_route(db, table, &key, &err);
  if (shard < 0)
    snprintf(errbuf, errcap, "key %.*s of table %s: %s", (int)(len > 64 ? 64 : len), text,
             table->name, err.message);
  return shard;
}

char **rs_table_columns(PGconn *conn, const char *table, const char *key_column, int *ncols,
                        int *key_pos) {
  const char *params[] = {table};
  PGresult *res = rs_query(conn, "reading the table's columns",
                           "select attname from pg_attribute where attrelid = "
                           "to_regclass(quote_ident($1)) and attnum > 0 and not attisdropped "
                           "and attgenerated = '' order by attnum",
                           1, params);
  if (res == NULL) return NULL;
  int n = PQntuples(res);
  char **cols = pgs_xcalloc((size_t)n + 1, sizeof(*cols));
  *key_pos = -1;
  for (int i = 0; i < n; i++) {
    cols[i] = pgs_xstrdup(PQgetvalue(res, i, 0));
    if (!strcmp(cols[i], key_column)) *key_pos = i;
  }
  *ncols = n;
  PQclear(res);
  return cols;
}

PGconn *rs_console_connect(const rs_plan_t *plan, const rs_options_t *opt) {
  char conninfo[1024];
  if (opt->admin) {
    snprintf(conninfo, sizeof(conninfo), "%s", opt->admin);
  } else {
    const pgs_config_t *c = plan->old_config;
    const pgs_user_t *admin = NULL;
    for (int i = 0; i < c->nusers && !admin; i++)
      if (c->users[i].admin) admin = &c->users[i];
    if (admin == NULL) {
      fprintf(stderr, "pgshardctl: OLD has no admin user: give --admin CONNINFO\n");
      return NULL;
    }
    const char *host = c->listen_host && strcmp(c->listen_host, "0.0.0.0") &&
                               strcmp(c->listen_host, "*") && strcmp(c->listen_host, "::")
                           ? c->listen_host
                           : "127.0.0.1";
    snprintf(conninfo, sizeof(conninfo), "host=%s port=%d dbname=pgshard user=%s%s%s", host,
             c->listen_port, admin->name,
             admin->password && strncmp(admin->password, "md5", 3) &&
                     strncmp(admin->password, "SCRAM-SHA-256$", 14)
                 ? " password="
                 : "",
             admin->password && strncmp(admin->password, "md5", 3) &&
                     strncmp(admin->password, "SCRAM-SHA-256$", 14)
                 ? admin->password
                 : "");
  }
  PGconn *conn = PQconnectdb(conninfo);
  if (PQstatus(conn) != CONNECTION_OK) {
    fprintf(stderr, "pgshardctl: pgshard's console: %s", PQerrorMessage(conn));
    PQfinish(conn);
    return NULL;
  }
  return conn;
}

/* ---- the plan ---- */

static long gcd_long(long a, long b) {
  while (b) {
    long t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* Marks in MARK (by NEW's shard index) the shards the hashed keys of
 * SOURCE (by OLD) go to under NEW: hash tables and unpinned tenants. */
static void hash_targets(const pgs_database_t *old, const pgs_database_t *new, const char *source,
                         bool *mark) {
  if (old->hash != new->hash) {
    for (int i = 0; i < new->nshards; i++) mark[i] = true;
  } else if (new->hash == PGS_HASH_XXH3) {
    for (int slot = 0; slot < PGS_HASH_SLOTS; slot++)
      if (!strcmp(old->shards[pgs_shardmap_slot_owner(old, slot)].name, source))
        mark[pgs_shardmap_slot_owner(new, slot)] = true;
  } else {
    long l = (long)old->nshards / gcd_long(old->nshards, new->nshards) * new->nshards;
    for (long r = 0; r < l; r++)
      if (!strcmp(old->shards[r % old->nshards].name, source)) mark[r % new->nshards] = true;
  }
}

static void range_targets(const pgs_database_t *old, const pgs_table_t *ot,
                          const pgs_database_t *new, const pgs_table_t *nt, const char *source,
                          bool *mark) {
  int n;
  const pgs_key_t **bounds = pgs_ctl_range_bounds(ot, nt, &n);
  /* Every segment between bounds starts at one of them (or -infinity). */
  for (int i = -1; i < n; i++) {
    int a = pgs_ctl_range_owner(old, ot, i < 0 ? NULL : bounds[i]);
    int b = pgs_ctl_range_owner(new, nt, i < 0 ? NULL : bounds[i]);
    if (a >= 0 && b >= 0 && !strcmp(old->shards[a].name, source)) mark[b] = true;
  }
  free(bounds);
}

/* Tenants pinned in either map, and geo values listed in either. */
static void listed_targets(const pgs_database_t *old, const pgs_database_t *new,
                           pgs_strategy_t strategy, const char *source, bool *mark) {
  const pgs_shardmap_t *maps[2] = {&old->shardmap, &new->shardmap};
  for (int m = 0; m < 2; m++) {
    int n = strategy == PGS_STRATEGY_TENANT ? maps[m]->ntenants : maps[m]->ngeo;
    for (int i = 0; i < n; i++) {
      const char *value =
          strategy == PGS_STRATEGY_TENANT ? maps[m]->tenants[i].raw : maps[m]->geo[i].value;
      pgs_route_detail_t da, db_;
      int a = pgs_ctl_probe_route(old, strategy, value, &da);
      int b = pgs_ctl_probe_route(new, strategy, value, &db_);
      if (a >= 0 && b >= 0 && !strcmp(old->shards[a].name, source)) mark[b] = true;
    }
  }
}

/* Geo values in no list go to the default region's shards (hashed among
 * them): every shard of NEW's default region, when SOURCE is in OLD's. */
static void geo_default_targets(const pgs_database_t *old, const pgs_database_t *new,
                                const char *source, bool *mark) {
  const char *od = old->shardmap.geo_default, *nd = new->shardmap.geo_default;
  int s = pgs_shardmap_find_shard(old, source);
  if (od == NULL || nd == NULL || s < 0 || old->shards[s].region == NULL ||
      strcmp(old->shards[s].region, od) != 0)
    return;
  for (int i = 0; i < new->nshards; i++)
    if (new->shards[i].region && !strcmp(new->shards[i].region, nd)) mark[i] = true;
}

static void table_targets(const pgs_database_t *old, const pgs_table_t *ot,
                          const pgs_database_t *new, const pgs_table_t *nt, const char *source,
                          bool *mark) {
  switch (nt->strategy) {
  case PGS_STRATEGY_HASH:
    hash_targets(old, new, source, mark);
    break;
  case PGS_STRATEGY_RANGE:
    range_targets(old, ot, new, nt, source, mark);
    break;
  case PGS_STRATEGY_TENANT:
    hash_targets(old, new, source, mark);
    listed_targets(old, new, PGS_STRATEGY_TENANT, source, mark);
    break;
  case PGS_STRATEGY_GEO:
    listed_targets(old, new, PGS_STRATEGY_GEO, source, mark);
    geo_default_targets(old, new, source, mark);
    break;
  }
  int self = pgs_shardmap_find_shard(new, source);
  if (self >= 0) mark[self] = false; /* keys staying on SOURCE */
}

static void add_string(char ***v, int *n, const char *s) {
  for (int i = 0; i < *n; i++)
    if (!strcmp((*v)[i], s)) return;
  *v = pgs_xrealloc(*v, sizeof(**v) * (size_t)(*n + 1));
  (*v)[(*n)++] = pgs_xstrdup(s);
}

static rs_move_t *find_move(rs_plan_t *plan, const pgs_shard_t *source, int target) {
  for (int i = 0; i < plan->nmoves; i++)
    if (plan->moves[i].source == source && plan->moves[i].target_index == target)
      return &plan->moves[i];
  plan->moves = pgs_xrealloc(plan->moves, sizeof(*plan->moves) * (size_t)(plan->nmoves + 1));
  rs_move_t *m = &plan->moves[plan->nmoves++];
  memset(m, 0, sizeof(*m));
  m->old_db = plan->old_db;
  m->new_db = plan->new_db;
  m->source = source;
  m->target_index = target;
  m->target = &plan->new_db->shards[target];
  return m;
}

/* Refusals before anything is computed: what a move cannot carry. */
static bool plan_check_tables(const pgs_database_t *old, const pgs_database_t *new) {
  bool ok = true;
  for (int i = 0; i < new->shardmap.ntables; i++) {
    const pgs_table_t *nt = &new->shardmap.tables[i];
    const pgs_table_t *ot = pgs_shardmap_find_table(old, nt->name);
    if (ot == NULL) {
      fprintf(stderr,
              "pgshardctl: table %s is sharded by NEW only: reshard moves rows of "
              "tables sharded in both maps\n",
              nt->name);
      ok = false;
    } else if (ot->type != nt->type || strcmp(ot->column, nt->column) != 0) {
      fprintf(stderr,
              "pgshardctl: table %s changes its shard key (%s %s -> %s %s): not "
              "supported by reshard\n",
              nt->name, ot->column, pgs_key_type_name(ot->type), nt->column,
              pgs_key_type_name(nt->type));
      ok = false;
    }
  }
  for (int i = 0; i < old->shardmap.ntables; i++)
    if (pgs_shardmap_find_table(new, old->shardmap.tables[i].name) == NULL) {
      fprintf(stderr,
              "pgshardctl: table %s is sharded by OLD only: reshard moves rows of "
              "tables sharded in both maps\n",
              old->shardmap.tables[i].name);
      ok = false;
    }
  return ok;
}

static void plan_sources(rs_plan_t *plan) {
  for (int i = 0; i < plan->nmoves; i++) {
    rs_move_t *m = &plan->moves[i];
    rs_source_t *src = NULL;
    for (int j = 0; j < plan->nsources && !src; j++)
      if (plan->sources[j].shard == m->source) src = &plan->sources[j];
    if (src == NULL) {
      plan->sources =
          pgs_xrealloc(plan->sources, sizeof(*plan->sources) * (size_t)(plan->nsources + 1));
      src = &plan->sources[plan->nsources++];
      memset(src, 0, sizeof(*src));
      src->old_db = plan->old_db;
      src->new_db = plan->new_db;
      src->shard = m->source;
      snprintf(src->slot, sizeof(src->slot), "pgshard_%s_%s", plan->id, m->source->name);
      snprintf(src->publication, sizeof(src->publication), "pgshard_%s", plan->id);
    }
    src->moves = pgs_xrealloc(src->moves, sizeof(*src->moves) * (size_t)(src->nmoves + 1));
    src->moves[src->nmoves++] = i;
    for (int t = 0; t < m->ntables; t++) add_string(&src->tables, &src->ntables, m->tables[t]);
  }
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
  const uint8_t *p = data;
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

/* The id: database name and NEW's text. */
static bool plan_id(rs_plan_t *plan) {
  FILE *f = fopen(plan->new_path, "rb");
  if (f == NULL) {
    fprintf(stderr, "pgshardctl: %s: %s\n", plan->new_path, strerror(errno));
    return false;
  }
  uint64_t h = fnv1a(0xcbf29ce484222325ULL, plan->new_db->name, strlen(plan->new_db->name) + 1);
  char buf[8192];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) h = fnv1a(h, buf, n);
  fclose(f);
  snprintf(plan->id, sizeof(plan->id), "%016llx", (unsigned long long)h);
  return true;
}

void rs_plan_free(rs_plan_t *plan) {
  for (int i = 0; i < plan->nmoves; i++)
    rs_free_strings(plan->moves[i].tables, plan->moves[i].ntables);
  for (int i = 0; i < plan->nsources; i++) {
    rs_free_strings(plan->sources[i].tables, plan->sources[i].ntables);
    free(plan->sources[i].moves);
  }
  free(plan->moves);
  free(plan->sources);
  pgs_config_unref(plan->old_config);
  pgs_config_unref(plan->new_config);
  memset(plan, 0, sizeof(*plan));
}

static bool same_files(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  bool same = fa && fb;
  while (same) {
    int ca = fgetc(fa), cb = fgetc(fb);
    same = ca == cb;
    if (ca == EOF) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

/* After a cutover OLD's file holds NEW's text; the map the rows came from
 * is then in the copy cutover kept (OLD.pre-reshard-ID). */
static bool plan_after_switch(rs_plan_t *plan, const char *dbname) {
  char backup[4096];
  snprintf(backup, sizeof(backup), "%s.pre-reshard-%s", plan->old_path, plan->id);
  if (!same_files(plan->old_path, plan->new_path) || access(backup, R_OK) != 0) return true;
  pgs_config_unref(plan->old_config);
  plan->old_config = pgs_ctl_load_config(backup);
  plan->old_db = plan->old_config ? pgs_config_find_database(plan->old_config, dbname) : NULL;
  if (plan->old_db == NULL) fprintf(stderr, "pgshardctl: %s: no database %s\n", backup, dbname);
  return plan->old_db != NULL;
}

/* Loads OLD and NEW and computes the moves of database DBNAME (NULL: the
 * one database whose map changes). Exit status on failure (2 usage or
 * config, 1 refused), 0 on success. */
static int plan_load(rs_plan_t *plan, const char *old_path, const char *new_path,
                     const char *dbname) {
  memset(plan, 0, sizeof(*plan));
  plan->old_path = old_path;
  plan->new_path = new_path;
  plan->old_config = pgs_ctl_load_config(old_path);
  plan->new_config = plan->old_config ? pgs_ctl_load_config(new_path) : NULL;
  if (plan->new_config == NULL) return 2;
  for (int i = 0; i < plan->new_config->ndatabases && !dbname; i++) {
    const pgs_database_t *n = &plan->new_config->databases[i];
    if (pgs_config_find_database(plan->old_config, n->name) &&
        (plan->new_config->ndatabases == 1 || n->shardmap.ntables > 0))
      dbname = n->name;
  }
  plan->old_db = dbname ? pgs_config_find_database(plan->old_config, dbname) : NULL;
  plan->new_db = dbname ? pgs_config_find_database(plan->new_config, dbname) : NULL;
  if (plan->old_db == NULL || plan->new_db == NULL) {
    fprintf(stderr, "pgshardctl: database %s is not in both configs\n", dbname ? dbname : "(any)");
    return 2;
  }
  if (!plan_id(plan)) return 1;
  if (!plan_after_switch(plan, dbname)) return 2;
  if (!plan_check_tables(plan->old_db, plan->new_db)) return 1;
  const pgs_database_t *old = plan->old_db, *new = plan->new_db;
  bool *mark = pgs_xcalloc((size_t) new->nshards + 1, sizeof(*mark));
  for (int t = 0; t < new->shardmap.ntables; t++) {
    const pgs_table_t *nt = &new->shardmap.tables[t];
    const pgs_table_t *ot = pgs_shardmap_find_table(old, nt->name);
    for (int s = 0; s < old->nshards; s++) {
      memset(mark, 0, sizeof(*mark) * (size_t) new->nshards);
      table_targets(old, ot, new, nt, old->shards[s].name, mark);
      for (int k = 0; k < new->nshards; k++) {
        if (!mark[k]) continue;
        rs_move_t *m = find_move(plan, &old->shards[s], k);
        add_string(&m->tables, &m->ntables, nt->name);
      }
    }
  }
  free(mark);
  plan_sources(plan);
  return 0;
}

/* ---- the state in the cluster ---- */

static PGconn *connect_target(const rs_move_t *m) {
  return rs_connect(&m->target->primary, m->new_db->name, false);
}

static PGconn *connect_source(const rs_source_t *src) {
  return rs_connect(&src->shard->primary, src->old_db->name, false);
}

bool rs_state_mirror(PGconn *tconn, PGconn *sconn, const rs_plan_t *plan, const rs_move_t *move) {
  const char *params[] = {plan->id, move->source->name, move->target->name};
  PGresult *res = rs_query(tconn, "reading the move for its mirror",
                           "select database, tables::text, phase, slot_name, publication, "
                           "consistent_lsn::text, applied_lsn::text, applied_commit_at::text, "
                           "rows_copied::text, rows_applied::text, error from "
                           "pgshard.reshard_move where reshard_id = $1 and source = $2 and "
                           "target = $3 and not mirror",
                           3, params);
  if (res == NULL) return false;
  bool ok;
  if (PQntuples(res) == 0) {
    ok = rs_exec(sconn, "removing the move's mirror",
                 "delete from pgshard.reshard_move where reshard_id = $1 and source = $2 and "
                 "target = $3 and mirror",
                 3, params);
  } else {
    const char *v[14] = {plan->id, move->source->name, move->target->name};
    for (int c = 0; c < 11; c++) v[3 + c] = PQgetisnull(res, 0, c) ? NULL : PQgetvalue(res, 0, c);
    ok = rs_exec(sconn, "mirroring the move",
                 "insert into pgshard.reshard_move (reshard_id, source, target, database, tables, "
                 "phase, slot_name, publication, consistent_lsn, applied_lsn, applied_commit_at, "
                 "rows_copied, rows_applied, error, mirror) values ($1, $2, $3, $4, $5, $6, $7, "
                 "$8, $9, $10, $11, $12, $13, $14, true) on conflict (reshard_id, source, target) "
                 "do update set tables = excluded.tables, phase = excluded.phase, "
                 "consistent_lsn = excluded.consistent_lsn, applied_lsn = excluded.applied_lsn, "
                 "applied_commit_at = excluded.applied_commit_at, rows_copied = "
                 "excluded.rows_copied, rows_applied = excluded.rows_applied, error = "
                 "excluded.error, updated_at = now() where pgshard.reshard_move.mirror",
                 14, v);
  }
  PQclear(res);
  return ok;
}

bool rs_mirror_all(const rs_plan_t *plan) {
  bool ok = true;
  for (int i = 0; i < plan->nmoves; i++) {
    const rs_move_t *m = &plan->moves[i];
    PGconn *tconn = connect_target(m);
    PGconn *sconn = tconn ? rs_connect(&m->source->primary, plan->old_db->name, false) : NULL;
    ok = sconn && rs_state_mirror(tconn, sconn, plan, m) && ok;
    PQfinish(tconn);
    PQfinish(sconn);
  }
  return ok;
}

bool rs_state_read(PGconn *conn, const rs_plan_t *plan, const rs_move_t *move, rs_state_t *out) {
  memset(out, 0, sizeof(*out));
  /* No table yet (start has not created it): no state, not an error. */
  PGresult *res = rs_query(conn, "looking for pgshard.reshard_move",
                           "select to_regclass('pgshard.reshard_move') is not null", 0, NULL);
  bool exists = res && !strcmp(PQgetvalue(res, 0, 0), "t");
  PQclear(res);
  if (res == NULL || !exists) return res != NULL;
  const char *params[] = {plan->id, move->source->name, move->target->name};
  res = rs_query(conn, "reading the move's state",
                 "select phase, consistent_lsn, applied_lsn, rows_copied, rows_applied, "
                 "applied_commit_at, cut_token, error from pgshard.reshard_move "
                 "where reshard_id = $1 and source = $2 and target = $3 and not mirror",
                 3, params);
  if (res == NULL) return false;
  if (PQntuples(res) == 1) {
    out->found = true;
    snprintf(out->phase, sizeof(out->phase), "%s", PQgetvalue(res, 0, 0));
    if (!PQgetisnull(res, 0, 1)) out->consistent_lsn = rs_lsn(PQgetvalue(res, 0, 1));
    if (!PQgetisnull(res, 0, 2)) out->applied_lsn = rs_lsn(PQgetvalue(res, 0, 2));
    out->rows_copied = atoll(PQgetvalue(res, 0, 3));
    out->rows_applied = atoll(PQgetvalue(res, 0, 4));
    snprintf(out->applied_commit_at, sizeof(out->applied_commit_at), "%s", PQgetvalue(res, 0, 5));
    snprintf(out->cut_token, sizeof(out->cut_token), "%s", PQgetvalue(res, 0, 6));
    snprintf(out->error, sizeof(out->error), "%s", PQgetvalue(res, 0, 7));
  }
  PQclear(res);
  return true;
}

void rs_state_error(PGconn *conn, const rs_plan_t *plan, const rs_move_t *move, const char *error) {
  const char *params[] = {plan->id, move->source->name, error};
  (void)rs_exec(conn, "recording the move's error",
                "update pgshard.reshard_move set error = $3, updated_at = now() "
                "where reshard_id = $1 and source = $2 and not mirror",
                3, params);
}

static char *tables_array(const rs_move_t *m) {
  size_t cap = 4;
  for (int i = 0; i < m->ntables; i++) cap += 2 * strlen(m->tables[i]) + 4;
  char *s = pgs_xmalloc(cap);
  size_t o = 0;
  s[o++] = '{';
  for (int i = 0; i < m->ntables; i++) {
    if (i) s[o++] = ',';
    s[o++] = '"';
    for (const char *p = m->tables[i]; *p; p++) {
      if (*p == '"' || *p == '\\') s[o++] = '\\';
      s[o++] = *p;
    }
    s[o++] = '"';
  }
  s[o++] = '}';
  s[o] = '\0';
  return s;
}

/* The state row of every move, created (phase copying) when missing;
 * another unfinished reshard of the database refuses. */
static bool state_create(const rs_plan_t *plan) {
  for (int i = 0; i < plan->nsources; i++) {
    PGconn *conn = connect_source(&plan->sources[i]);
    bool ok = conn && rs_exec(conn, "creating pgshard.reshard_move", RESHARD_SQL, 0, NULL);
    PQfinish(conn);
    if (!ok) return false;
  }
  for (int i = 0; i < plan->nmoves; i++) {
    const rs_move_t *m = &plan->moves[i];
    PGconn *conn = connect_target(m);
    if (conn == NULL) return false;
    bool ok = rs_exec(conn, "creating pgshard.reshard_move", RESHARD_SQL, 0, NULL);
    const char *p1[] = {plan->id, m->new_db->name};
    PGresult *res =
        ok ? rs_query(conn, "reading pgshard.reshard_move",
                      "select distinct reshard_id from pgshard.reshard_move where "
                      "database = $2 and reshard_id <> $1 and phase <> 'cleaned' and not mirror",
                      2, p1)
           : NULL;
    if (res && PQntuples(res) > 0) {
      fprintf(stderr,
              "pgshardctl: shard %s has another resharding of database %s in progress (id %s): "
              "finish it (cutover, cleanup) or abort it first\n",
              m->target->name, m->new_db->name, PQgetvalue(res, 0, 0));
      ok = false;
    }
    PQclear(res);
    char *tables = tables_array(m);
    char slot[PGS_MAX_NAME], pub[PGS_MAX_NAME];
    snprintf(slot, sizeof(slot), "pgshard_%s_%s", plan->id, m->source->name);
    snprintf(pub, sizeof(pub), "pgshard_%s", plan->id);
    const char *p2[] = {plan->id, m->new_db->name, m->source->name, m->target->name, tables, slot,
                        pub};
    ok = ok && rs_exec(conn, "recording the move",
                       "insert into pgshard.reshard_move (reshard_id, database, source, target, "
                       "tables, phase, slot_name, publication) values ($1, $2, $3, $4, $5, "
                       "'copying', $6, $7) on conflict (reshard_id, source, target) do update set "
                       "tables = excluded.tables, updated_at = now()",
                       7, p2);
    free(tables);
    PQfinish(conn);
    if (!ok) return false;
  }
  return true;
}

/* ---- plan ---- */

/* Counts, for table TABLE on SOURCE, the rows whose key NEW routes to each
 * of NEW's shards (COUNTS, by index). */
static bool count_rows(PGconn *conn, const pgs_database_t *new, const pgs_table_t *table,
                       long long *counts) {
  char qt[200], qc[200], sql[512];
  snprintf(sql, sizeof(sql), "copy (select %s from %s) to stdout",
           rs_ident(table->column, qc, sizeof(qc)), rs_ident(table->name, qt, sizeof(qt)));
  PGresult *res = PQexec(conn, sql);
  if (PQresultStatus(res) != PGRES_COPY_OUT) {
    fprintf(stderr, "pgshardctl: counting %s: %s", table->name, PQerrorMessage(conn));
    PQclear(res);
    return false;
  }
  PQclear(res);
  char *line;
  int n;
  bool ok = true;
  char err[512];
  while ((n = PQgetCopyData(conn, &line, 0)) > 0) {
    size_t len = (size_t)n;
    while (len > 0 && line[len - 1] == '\n') len--;
    char *text = line;
    pgs_ctl_copy_unescape(text, &len);
    int shard = rs_route_text(new, table, text, len, err, sizeof(err));
    if (shard < 0 && ok) fprintf(stderr, "pgshardctl: %s\n", err), ok = false;
    if (shard >= 0) counts[shard]++;
    PQfreemem(line);
  }
  res = PQgetResult(conn);
  ok = ok && PQresultStatus(res) == PGRES_COMMAND_OK;
  PQclear(res);
  while ((res = PQgetResult(conn)) != NULL) PQclear(res);
  return ok;
}

/* What must hold on SOURCE and each target before a move: the table on
 * both, a replica identity carrying the shard key, wal_level logical. */
static bool check_prerequisites(const rs_plan_t *plan, const rs_source_t *src, PGconn *sconn) {
  bool ok = true;
  PGresult *res = rs_query(sconn, "reading wal_level", "show wal_level", 0, NULL);
  if (res && strcmp(PQgetvalue(res, 0, 0), "logical") != 0) {
    printf("  problem: %s has wal_level = %s; logical is needed (restart after changing)\n",
           src->shard->name, PQgetvalue(res, 0, 0));
    ok = false;
  }
  PQclear(res);
  for (int t = 0; t < src->ntables; t++) {
    const pgs_table_t *table = pgs_shardmap_find_table(plan->new_db, src->tables[t]);
    const char *params[] = {table->name, table->column};
    res = rs_query(sconn, "reading the replica identity",
                   "select c.relreplident, exists (select 1 from pg_index i join pg_attribute a "
                   "on a.attrelid = i.indrelid and a.attnum = any(i.indkey) where i.indrelid = "
                   "c.oid and (i.indisreplident or (c.relreplident = 'd' and i.indisprimary)) "
                   "and a.attname = $2) from pg_class c where c.oid = "
                   "to_regclass(quote_ident($1))",
                   2, params);
    if (res && PQntuples(res) == 0) {
      printf("  problem: table %s does not exist on %s\n", table->name, src->shard->name);
      ok = false;
    } else if (res && strcmp(PQgetvalue(res, 0, 0), "f") != 0 &&
               strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
      printf(
          "  problem: table %s on %s has no replica identity with its shard key %s "
          "(a primary key including it, REPLICA IDENTITY USING INDEX, or FULL)\n",
          table->name, src->shard->name, table->column);
      ok = false;
    }
    PQclear(res);
  }
  for (int i = 0; i < src->nmoves; i++) {
    const rs_move_t *m = &plan->moves[src->moves[i]];
    PGconn *tconn = connect_target(m);
    if (tconn == NULL) return false;
    for (int t = 0; t < m->ntables; t++) {
      const char *params[] = {m->tables[t]};
      res = rs_query(tconn, "looking for the table", "select to_regclass(quote_ident($1))", 1,
                     params);
      if (res && PQgetisnull(res, 0, 0)) {
        printf(
            "  problem: table %s does not exist on target %s: create it first "
            "(pg_dump --schema-only -t %s from %s, restored there)\n",
            m->tables[t], m->target->name, m->tables[t], src->shard->name);
        ok = false;
      }
      PQclear(res);
    }
    PQfinish(tconn);
  }
  return ok;
}

static int verb_plan(const rs_plan_t *plan) {
  printf("reshard %s: database %s, %s -> %s\n", plan->id, plan->new_db->name, plan->old_path,
         plan->new_path);
  if (plan->nmoves == 0) {
    printf("nothing moves\n");
    return 0;
  }
  bool ok = true;
  long long *counts = pgs_xcalloc((size_t)plan->new_db->nshards, sizeof(*counts));
  for (int s = 0; s < plan->nsources; s++) {
    const rs_source_t *src = &plan->sources[s];
    PGconn *conn = connect_source(src);
    if (conn == NULL) {
      ok = false;
      continue;
    }
    for (int i = 0; i < src->nmoves; i++) {
      const rs_move_t *m = &plan->moves[src->moves[i]];
      printf("move %s -> %s:", m->source->name, m->target->name);
      for (int t = 0; t < m->ntables; t++) {
        const pgs_table_t *table = pgs_shardmap_find_table(plan->new_db, m->tables[t]);
        memset(counts, 0, sizeof(*counts) * (size_t)plan->new_db->nshards);
        if (!count_rows(conn, plan->new_db, table, counts)) ok = false;
        printf("%s %s (%lld rows)", t ? "," : "", m->tables[t], counts[m->target_index]);
      }
      printf("\n");
    }
    if (!check_prerequisites(plan, src, conn)) ok = false;
    PQfinish(conn);
  }
  free(counts);
  printf("%s\n", ok ? "ready: pgshardctl reshard start OLD NEW" : "not ready");
  return ok ? 0 : 1;
}

/* ---- start ---- */

/* Rows copied into a shard pgshard serves would be seen twice by its
 * fan-outs, and changed twice by its cross-shard writes, unless pgshard
 * refuses those first (it reads the moves from the targets about once a
 * second): before copying into such a shard, wait until pgshard's SHOW
 * RESHARD lists every such move. */
static bool proxy_sees_moves(const rs_plan_t *plan, const rs_options_t *opt) {
  bool needed = false;
  for (int i = 0; i < plan->nmoves; i++)
    needed |= pgs_shardmap_find_shard(plan->old_db, plan->moves[i].target->name) >= 0;
  if (!needed) return true;
  PGconn *conn = rs_console_connect(plan, opt);
  if (conn == NULL) {
    fprintf(stderr,
            "pgshardctl: rows move into a shard pgshard serves: it must know before "
            "they are copied (give --admin CONNINFO of its console)\n");
    return false;
  }
  bool seen = false;
  for (int tries = 0; !seen && tries < 300; tries++) {
    PGresult *res = rs_query(conn, "SHOW RESHARD", "SHOW RESHARD", 0, NULL);
    if (res == NULL) break;
    int cid = PQfnumber(res, "reshard_id"), csrc = PQfnumber(res, "source"),
        ctgt = PQfnumber(res, "target");
    seen = cid >= 0 && csrc >= 0 && ctgt >= 0;
    for (int i = 0; seen && i < plan->nmoves; i++) {
      const rs_move_t *m = &plan->moves[i];
      if (pgs_shardmap_find_shard(plan->old_db, m->target->name) < 0) continue;
      bool listed = false;
      for (int r = 0; r < PQntuples(res) && !listed; r++)
        listed = !strcmp(PQgetvalue(res, r, cid), plan->id) &&
                 !strcmp(PQgetvalue(res, r, csrc), m->source->name) &&
                 !strcmp(PQgetvalue(res, r, ctgt), m->target->name);
      seen = listed;
    }
    PQclear(res);
    if (!seen) {
      pgs_lab_sleep_ms(50);
    }
  }
  PQfinish(conn);
  if (!seen) fprintf(stderr, "pgshardctl: pgshard's SHOW RESHARD does not list the moves\n");
  return seen;
}

/* One source's streamer, in a child process: copy if not done, then
 * stream. Exit status as rs_stream_source. */
static int run_source(const rs_plan_t *plan, const rs_source_t *src, pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGTERM);  /* a killed `start` takes its streamers along */
  if (getppid() != parent) return 1; /* ... also when it died before that */
  PGconn *repl = rs_connect(&src->shard->primary, src->old_db->name, true);
  if (repl == NULL) return 1;
  int rc = rs_copy_source(plan, src, repl) ? rs_stream_source(plan, src, repl) : 1;
  PQfinish(repl);
  return rc;
}

static int verb_start(const rs_plan_t *plan, const rs_options_t *opt) {
  if (plan->nmoves == 0) {
    printf("reshard %s: nothing moves\n", plan->id);
    return 0;
  }
  for (int s = 0; s < plan->nsources; s++) {
    PGconn *conn = connect_source(&plan->sources[s]);
    bool ok = conn && check_prerequisites(plan, &plan->sources[s], conn);
    PQfinish(conn);
    if (!ok) return 1;
  }
  if (!state_create(plan) || !rs_mirror_all(plan) || !proxy_sees_moves(plan, opt)) return 1;
  fflush(stdout);
  pid_t *pids = pgs_xcalloc((size_t)plan->nsources, sizeof(*pids)), parent = getpid();
  for (int s = 0; s < plan->nsources; s++) {
    pids[s] = fork();
    if (pids[s] == 0) _exit(run_source(plan, &plan->sources[s], parent));
    if (pids[s] < 0) {
      fprintf(stderr, "pgshardctl: fork: %s\n", strerror(errno));
      return 1;
    }
  }
  int rc = 0;
  for (int s = 0; s < plan->nsources; s++) {
    int status;
    while (waitpid(pids[s], &status, 0) < 0 && errno == EINTR) continue;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
  }
  free(pids);
  printf("reshard %s: %s\n", plan->id, rc ? "a streamer stopped (see status)" : "streamers done");
  return rc;
}

/* ---- status ---- */

static int verb_status(const rs_plan_t *plan) {
  printf("reshard %s: database %s\n", plan->id, plan->new_db->name);
  printf("%-8s %-8s %-10s %12s %12s %14s %10s %-9s %s\n", "source", "target", "phase",
         "rows_copied", "rows_applied", "lag_bytes", "lag_s", "streamer", "error");
  int rc = 0;
  for (int s = 0; s < plan->nsources; s++) {
    const rs_source_t *src = &plan->sources[s];
    PGconn *sconn = connect_source(src);
    uint64_t current = 0;
    bool active = false;
    if (sconn) {
      const char *params[] = {src->slot};
      PGresult *res = rs_query(sconn, "reading the source's position",
                               "select pg_current_wal_lsn(), coalesce((select active from "
                               "pg_replication_slots where slot_name = $1), false)",
                               1, params);
      if (res) {
        current = rs_lsn(PQgetvalue(res, 0, 0));
        active = !strcmp(PQgetvalue(res, 0, 1), "t");
      }
      PQclear(res);
    }
    for (int i = 0; i < src->nmoves; i++) {
      const rs_move_t *m = &plan->moves[src->moves[i]];
      PGconn *tconn = connect_target(m);
      rs_state_t st;
      if (tconn == NULL || !rs_state_read(tconn, plan, m, &st)) {
        rc = 1;
        PQfinish(tconn);
        continue;
      }
      double lag_s = 0;
      long long lag_b =
          st.applied_lsn && current > st.applied_lsn ? (long long)(current - st.applied_lsn) : 0;
      if (lag_b > 0 && st.applied_commit_at[0]) {
        const char *params[] = {st.applied_commit_at};
        PGresult *res =
            rs_query(tconn, "lag", "select extract(epoch from now() - $1::timestamptz)", 1, params);
        if (res) lag_s = atof(PQgetvalue(res, 0, 0));
        PQclear(res);
      }
      printf("%-8s %-8s %-10s %12lld %12lld %14lld %10.1f %-9s %s\n", m->source->name,
             m->target->name, st.found ? st.phase : "(none)", st.rows_copied, st.rows_applied,
             lag_b, lag_s, active ? "connected" : "-", st.error);
      PQfinish(tconn);
    }
    PQfinish(sconn);
  }
  return rc;
}

/* ---- dispatch ---- */

static void reshard_usage(FILE *out) {
  fprintf(out,
          "usage: pgshardctl reshard plan|start|status|cutover|cleanup|abort OLD NEW [options]\n"
          "       pgshardctl reshard slots OLD NEW [DATABASE]\n"
          "Moves rows between shards while the application runs (README: \"Changing the\n"
          "shard map\"). OLD is the config pgshard runs on, NEW the map to move to.\n"
          "Options: --database DB (when several databases change)\n"
          "         --admin CONNINFO (cutover, abort: pgshard's admin console; default\n"
          "           OLD's listen address as its first admin user, dbname=pgshard)\n"
          "         --max-lag-bytes N, --max-lag-seconds S (cutover: hold only once every\n"
          "           move lags less; default 16777216 and 1), --wait-ms N (for that; 60000)\n"
          "         --timeout-ms N (cutover: the longest write hold; default 10000)\n");
}

int pgs_ctl_reshard(int argc, char **argv) {
  if (argc >= 1 && !strcmp(argv[0], "slots")) return pgs_ctl_reshard_slots(argc - 1, argv + 1);
  if (argc < 3) {
    reshard_usage(argc >= 1 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help")) ? stdout
                                                                                      : stderr);
    return argc >= 1 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help")) ? 0 : 2;
  }
  rs_options_t opt = {.max_lag_bytes = 16 * 1024 * 1024,
                      .max_lag_seconds = 1.0,
                      .wait_ms = 60000,
                      .timeout_ms = 10000};
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--database") && i + 1 < argc) {
      opt.database = argv[++i];
    } else if (!strcmp(argv[i], "--admin") && i + 1 < argc) {
      opt.admin = argv[++i];
    } else if (!strcmp(argv[i], "--max-lag-bytes") && i + 1 < argc) {
      opt.max_lag_bytes = atoll(argv[++i]);
    } else if (!strcmp(argv[i], "--max-lag-seconds") && i + 1 < argc) {
      opt.max_lag_seconds = atof(argv[++i]);
    } else if (!strcmp(argv[i], "--wait-ms") && i + 1 < argc) {
      opt.wait_ms = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc) {
      opt.timeout_ms = atoi(argv[++i]);
    } else {
      reshard_usage(stderr);
      return 2;
    }
  }
  rs_plan_t plan;
  int rc = plan_load(&plan, argv[1], argv[2], opt.database);
  if (rc == 0) {
    const char *verb = argv[0];
    if (!strcmp(verb, "plan"))
      rc = verb_plan(&plan);
    else if (!strcmp(verb, "start"))
      rc = verb_start(&plan, &opt);
    else if (!strcmp(verb, "status"))
      rc = verb_status(&plan);
    else if (!strcmp(verb, "cutover"))
      rc = rs_verb_cutover(&plan, &opt);
    else if (!strcmp(verb, "cleanup"))
      rc = rs_verb_cleanup(&plan);
    else if (!strcmp(verb, "abort"))
      rc = rs_verb_abort(&plan, &opt);
    else {
      reshard_usage(stderr);
      rc = 2;
    }
  }
  rs_plan_free(&plan);
  return rc;
}
