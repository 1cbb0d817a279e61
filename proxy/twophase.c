/*
 * twophase.c — this process's two-phase commits in flight, and the recovery
 * that settles any instance's prepared transactions from the decision rows
 * kept in the shards (twophase.h).
 *
 * State, all under one mutex (tp.lock): this process's identity (a random
 * instance id, the next sequence number); the index — every gid of this
 * process from pgs_twophase_new_gid until pgs_twophase_done, with where its
 * commit is (SHOW TWOPHASE) and whether a worker still drives it; the set of
 * (database, shard) whose decision table recovery has seen or created
 * (pgs_twophase_new_gid refuses other decision shards); recovery's counters.
 *
 * Nothing here decides a transaction's outcome in memory: the decision shard
 * does, by committing the client's transaction with its commit row, or by
 * recovery's abort row getting in first. The index only keeps recovery from
 * settling (waiting on, or needlessly aborting) what a worker of this
 * process is finishing right now.
 *
 * Recovery connects with blocking libpq (bounded by connect_timeout,
 * statement_timeout and lock_timeout): at startup from the main thread,
 * later from the monitor's pass on the libuv thread pool — never on an event
 * loop. One pass runs at a time (tp.pass_lock).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pgshard/log.h"
#include "pgshard/io.h"
#include "pgshard/twophase.h"
#include "twophase_sql.h"

#define LIST_SQL                                                                                   \
  "SELECT gid, owner, (extract(epoch FROM now() - prepared) * 1000)::bigint "                      \
  "FROM pg_prepared_xacts WHERE database = current_database() "                                    \
  "AND starts_with(gid, '" PGS_GID_PREFIX "') ORDER BY prepared"

/* The recovery login: where it is, who it is, whether it may finish any
 * user's prepared transaction. */
#define SESSION_SQL "SELECT pg_is_in_recovery(), current_user, current_setting('is_superuser')"

#define TABLE_EXISTS_SQL "SELECT to_regclass('pgshard.twophase_decision') IS NOT NULL"

/* Recovery's decision: an abort row unless a row is there (or comes:
 * the primary key waits for a transaction inserting the gid). */
#define DECIDE_SQL                                                                                 \
  "INSERT INTO pgshard.twophase_decision (gid, owner, aborted) VALUES ($1, $2, true) "             \
  "ON CONFLICT (gid) DO NOTHING"
#define READ_SQL "SELECT owner, aborted FROM pgshard.twophase_decision WHERE gid = $1"

/* Rows that may be deleted once their gid is prepared nowhere; read before
 * the shards are listed (a commit row is visible only after every PREPARE
 * of its gid succeeded, so a listing that starts after this read sees every
 * gid of these rows still prepared). */
#define CLEANUP_CANDIDATES_SQL                                                                     \
  "SELECT gid FROM pgshard.twophase_decision WHERE NOT aborted OR decided_at < now() - "           \
  "make_interval(secs => %d) ORDER BY decided_at LIMIT %d"

/* Warnings given once (an unsettleable gid is met at every pass): at most
 * this many remembered. */
#define WARNED_MAX 4096

/* A gid of this process not settled yet. */
typedef struct entry {
  pgs_twophase_state_t state;
  bool released;     /* no worker drives it any more: recovery settles it */
  int held;          /* servers still running a statement on it (pgs_twophase_hold) */
  uint64_t made_ms;  /* pgs_twophase_new_gid */
  uint64_t since_ms; /* made, released or last answered, for PGS_TWOPHASE_IN_FLIGHT_MS */
} entry_t;

static struct {
  uv_mutex_t lock;
  uv_mutex_t pass_lock; /* one recovery pass at a time */
  bool initialized;
  uint64_t instance;
  uint64_t next_seq;
  pgs_strmap_t index;  /* gid -> entry_t */
  pgs_strmap_t ready;  /* "db/shard" -> NULL: its decision table exists */
  pgs_strmap_t warned; /* keys of warnings given once (first_warning) */
  pgs_twophase_counters_t counters;
  char fault[64]; /* PGSHARD_FAULT */
} tp;

/* ---- helpers ---- */

static uint64_t random_id(void) {
  uint64_t v = 0;
  while (v == 0) {
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
      v = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&v;
  }
  return v;
}

static void ready_key(char *out, size_t cap, const char *db, const char *shard) {
  snprintf(out, cap, "%s/%s", db, shard);
}

static void set_ready(const char *db, const char *shard, bool ready) {
  char key[PGS_MAX_NAME * 2 + 2];
  ready_key(key, sizeof(key), db, shard);
  uv_mutex_lock(&tp.lock);
  if (ready)
    pgs_strmap_put(&tp.ready, key, NULL);
  else
    (void)pgs_strmap_remove(&tp.ready, key);
  uv_mutex_unlock(&tp.lock);
}

static void entry_free(void *value) { free(value); }

/* ---- lifecycle ---- */

pgs_status_t pgs_twophase_start(const pgs_config_t *config) {
  PGS_UNUSED(config);
  if (!tp.initialized) {
    if (uv_mutex_init(&tp.lock) != 0 || uv_mutex_init(&tp.pass_lock) != 0) {
      pgs_error("2pc: cannot create a mutex");
      return PGS_ENOMEM;
    }
    pgs_strmap_init(&tp.index);
    pgs_strmap_init(&tp.ready);
    pgs_strmap_init(&tp.warned);
    tp.initialized = true;
  }
  const char *fault = getenv("PGSHARD_FAULT");
  if (fault && *fault) {
    snprintf(tp.fault, sizeof(tp.fault), "%s", fault);
    if (!strcmp(fault, "2pc_pause_after_decision"))
      pgs_warn("PGSHARD_FAULT=%s: a committing worker will pause there (a test-only setting)",
               fault);
    else if (strcmp(fault, "2pc_after_prepare") != 0 && strcmp(fault, "2pc_after_decision") != 0)
      pgs_warn("PGSHARD_FAULT=%s names no fault point", fault);
    else
      pgs_warn("PGSHARD_FAULT=%s: this pgshard will exit there (a test-only setting)", fault);
  }
  tp.instance = random_id();
  pgs_info("2pc: this process is instance %016" PRIx64
           "; commit decisions are kept in pgshard.twophase_decision on the shards",
           tp.instance);
  return PGS_OK;
}

void pgs_twophase_stop(void) {
  if (!tp.initialized) return;
  uv_mutex_lock(&tp.lock);
  pgs_strmap_free(&tp.index, entry_free);
  pgs_strmap_free(&tp.ready, NULL);
  pgs_strmap_free(&tp.warned, NULL);
  pgs_strmap_init(&tp.index);
  pgs_strmap_init(&tp.ready);
  pgs_strmap_init(&tp.warned);
  uv_mutex_unlock(&tp.lock);
}

bool pgs_twophase_active(void) { return tp.initialized; }

bool pgs_twophase_fault(const char *point) {
  if (tp.fault[0] == '\0' || strcmp(tp.fault, point) != 0) return false;
  pgs_log(PGS_LOG_FATAL, "PGSHARD_FAULT=%s: exiting now (test-only fault injection)", point);
  _exit(137);
}

void pgs_twophase_pause(const char *point) {
  if (tp.fault[0] == '\0' || strcmp(tp.fault, point) != 0) return;
  pgs_warn("PGSHARD_FAULT=%s: this worker sleeps 3 s (test-only fault injection)", point);
  uv_sleep(3000);
}

/* ---- this process's gids ---- */

pgs_status_t pgs_twophase_new_gid(const char *db, const char *shard, char out[PGS_GID_BUF],
                                  char *err, size_t errlen) {
  PGS_ASSERT(tp.initialized);
  char key[PGS_MAX_NAME * 2 + 2];
  ready_key(key, sizeof(key), db, shard);
  uv_mutex_lock(&tp.lock);
  if (!pgs_strmap_contains(&tp.ready, key)) {
    uv_mutex_unlock(&tp.lock);
    snprintf(err, errlen,
             "the two-phase commit decision table pgshard.twophase_decision is not ready on "
             "shard %s (pgshard's log says why)",
             shard);
    return PGS_ENOTFOUND;
  }
  if (tp.index.count >= PGS_TWOPHASE_MAX_IN_FLIGHT) {
    uv_mutex_unlock(&tp.lock);
    snprintf(err, errlen, "%d two-phase commits are unsettled", PGS_TWOPHASE_MAX_IN_FLIGHT);
    return PGS_ETOOBIG;
  }
  pgs_gid_format(out, tp.instance, pgs_gid_shard_hash(shard), ++tp.next_seq);
  entry_t *e = pgs_xcalloc(1, sizeof(*e));
  uint64_t now = pgs_now_ms();
  *e = (entry_t){.state = PGS_2PC_PREPARING, .made_ms = now, .since_ms = now};
  pgs_strmap_put(&tp.index, out, e);
  uv_mutex_unlock(&tp.lock);
  return PGS_OK;
}

void pgs_twophase_set_state(const char *gid, pgs_twophase_state_t state) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL) e->state = state;
  uv_mutex_unlock(&tp.lock);
}

uint64_t pgs_twophase_age_ms(const char *gid) {
  uv_mutex_lock(&tp.lock);
  const entry_t *e = pgs_strmap_get(&tp.index, gid);
  uint64_t now = pgs_now_ms();
  uint64_t age = e == NULL ? UINT64_MAX : now > e->made_ms ? now - e->made_ms : 0;
  uv_mutex_unlock(&tp.lock);
  return age;
}

void pgs_twophase_done(const char *gid) {
  uv_mutex_lock(&tp.lock);
  free(pgs_strmap_remove(&tp.index, gid));
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_release(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL) {
    e->released = true;
    e->since_ms = pgs_now_ms();
  }
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_hold(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL) e->held++;
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_unhold(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL && e->held > 0) {
    e->held--;
    e->since_ms = pgs_now_ms();
  }
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_each(pgs_twophase_each_fn fn, void *arg) {
  if (!tp.initialized) return;
  uint64_t now = pgs_now_ms();
  uv_mutex_lock(&tp.lock);
  for (size_t b = 0; b < tp.index.nbuckets; b++)
    for (const pgs_strmap_entry_t *e = tp.index.buckets[b]; e; e = e->next) {
      const entry_t *en = e->value;
      fn(e->key, en->state, en->released, now > en->made_ms ? now - en->made_ms : 0, arg);
    }
  uv_mutex_unlock(&tp.lock);
}

pgs_twophase_counters_t pgs_twophase_counters(void) {
  pgs_twophase_counters_t c = {0};
  if (!tp.initialized) return c;
  uv_mutex_lock(&tp.lock);
  c = tp.counters;
  uv_mutex_unlock(&tp.lock);
  return c;
}

/* ---- recovery ---- */

/* A gid of this process that recovery keeps its hands off: one a worker
 * still drives — preparing, for PGS_TWOPHASE_IN_FLIGHT_MS (then the
 * coordinator will not commit it any more); deciding or decided, until the
 * worker is done or gives it up, for it is sending COMMIT or ROLLBACK
 * (PREPARED) and recovery would only race it — or one a server still
 * settles for a worker that gave it up (pgs_twophase_hold). */
static bool driven(const char *gid, uint64_t now) {
  uv_mutex_lock(&tp.lock);
  const entry_t *e = pgs_strmap_get(&tp.index, gid);
  bool d = false;
  if (e != NULL) {
    bool recent = now - e->since_ms < PGS_TWOPHASE_IN_FLIGHT_MS;
    if (!e->released)
      d = e->state != PGS_2PC_PREPARING || recent;
    else
      d = e->held > 0 && recent;
  }
  uv_mutex_unlock(&tp.lock);
  return d;
}

static void ignore_notice(void *arg, const char *message) {
  PGS_UNUSED(arg);
  PGS_UNUSED(message);
}

/* libpq's message on one line, runs of blanks as one space. */
static const char *one_line(const char *msg, char *out, size_t cap) {
  size_t n = 0;
  bool space = false;
  for (const char *p = msg; *p && n + 1 < cap; p++) {
    bool blank = *p == '\n' || *p == '\t' || *p == ' ';
    if (blank && (space || n == 0)) continue;
    out[n++] = blank ? ' ' : *p;
    space = blank;
  }
  while (n > 0 && out[n - 1] == ' ') n--;
  out[n] = '\0';
  return out;
}

static bool exec_ok(PGconn *pg, const char *sql, ExecStatusType want, PGresult **out) {
  PGresult *res = PQexec(pg, sql);
  bool ok = res && PQresultStatus(res) == want;
  if (out)
    *out = res;
  else
    PQclear(res);
  return ok;
}

/* The monitor's login: the first [user.*] with a plain-text password (only
 * those can log in to a server). */
static const pgs_user_t *monitor_user(const pgs_config_t *config) {
  for (int i = 0; i < config->nusers; i++)
    if (config->users[i].password && config->users[i].scram_secret) return &config->users[i];
  return NULL;
}

/* The login a pass lists prepared transactions with. */
static const pgs_user_t *listing_user(const pgs_config_t *config) {
  const pgs_user_t *user = NULL;
  if (config->twophase_recovery_user)
    user = pgs_config_find_user(config, config->twophase_recovery_user);
  return user ? user : monitor_user(config);
}

/* True the first time KEY is warned about. The set is emptied when it grows
 * past WARNED_MAX, so a warning can come back, at most that rarely. */
static bool first_warning(const char *key) {
  uv_mutex_lock(&tp.lock);
  bool first = !pgs_strmap_contains(&tp.warned, key);
  if (first) {
    if (tp.warned.count >= WARNED_MAX) {
      pgs_strmap_free(&tp.warned, NULL);
      pgs_strmap_init(&tp.warned);
    }
    pgs_strmap_put(&tp.warned, key, NULL);
  }
  uv_mutex_unlock(&tp.lock);
  return first;
}

/* Log in to NODE of DB as a pool would log USER in, with recovery's
 * connect_timeout and statement_timeout. NULL, with libpq's reason in ERR,
 * when that fails. */
static PGconn *recovery_connect(const pgs_config_t *config, const pgs_database_t *db,
                                const pgs_node_t *node, const pgs_user_t *user, char *err,
                                size_t errlen) {
  char *base =
      pgs_node_conninfo(config, db, node, user, "application_name", "pgshard 2pc recovery");
  size_t cilen = strlen(base) + 32;
  char *ci = pgs_xmalloc(cilen);
  /* libpq takes the last of a repeated key. */
  snprintf(ci, cilen, "%s connect_timeout=%d", base, PGS_TWOPHASE_CONNECT_TIMEOUT_S);
  /* Both may hold a password. */
  explicit_bzero(base, strlen(base));
  free(base);
  PGconn *pg = PQconnectdb(ci);
  explicit_bzero(ci, cilen);
  free(ci);
  char set[96];
  snprintf(set, sizeof(set), "SET statement_timeout = %d; SET lock_timeout = %d",
           PGS_TWOPHASE_STATEMENT_TIMEOUT_MS, PGS_TWOPHASE_LOCK_TIMEOUT_MS);
  if (pg == NULL || PQstatus(pg) != CONNECTION_OK || !exec_ok(pg, set, PGRES_COMMAND_OK, NULL)) {
    one_line(pg ? PQerrorMessage(pg) : "out of memory", err, errlen);
    if (pg) PQfinish(pg);
    return NULL;
  }
  PQsetNoticeProcessor(pg, ignore_notice, NULL);
  return pg;
}

/* A login of one pass on one shard as the owner of some prepared gids:
 * opened at the first such gid, kept for the others. */
typedef struct owner_login {
  PGconn *pg;    /* NULL: recovery cannot log in as the owner, */
  char why[384]; /* for this reason */
} owner_login_t;

static void owner_login_free(void *value) {
  owner_login_t *o = value;
  if (o->pg) PQfinish(o->pg);
  free(o);
}

/* A connection to T's writer logged in as OWNER (a [user.*] of that name,
 * as pools log it in), from LOGINS or opened now; NULL with WHY set when
 * there can be none. */
static PGconn *owner_connect(const pgs_twophase_target_t *t, const char *owner,
                             pgs_strmap_t *logins, const char **why) {
  owner_login_t *o = pgs_strmap_get(logins, owner);
  if (o == NULL) {
    o = pgs_xcalloc(1, sizeof(*o));
    const pgs_user_t *user = pgs_config_find_user(t->config, owner);
    if (user == NULL) {
      snprintf(o->why, sizeof(o->why), "no [user.%s] to log in as%s", owner,
               t->config->twophase_recovery_user ? " and twophase_recovery_user is not a superuser"
                                                 : " and no twophase_recovery_user is set");
    } else if (t->node->user && strcmp(t->node->user, owner) != 0) {
      snprintf(o->why, sizeof(o->why), "the node's conninfo logs in as %s, not as %s",
               t->node->user, owner);
    } else {
      char err[256];
      o->pg = recovery_connect(t->config, t->database, t->node, user, err, sizeof(err));
      if (o->pg == NULL) snprintf(o->why, sizeof(o->why), "cannot log in as %s: %s", owner, err);
    }
    pgs_strmap_put(logins, owner, o);
  }
  *why = o->why;
  return o->pg;
}

/* One target's connection for a pass. */
typedef struct shard_conn {
  PGconn *pg;          /* the listing login; NULL: not reached */
  char *me;            /* its current_user */
  bool superuser;      /* it may finish anyone's prepared transaction */
  bool table;          /* pgshard.twophase_decision exists there */
  bool listed;         /* every prepared gid there was looked at */
  pgs_strmap_t owners; /* owner -> owner_login_t, opened as needed */
  char **candidates;   /* decision rows to delete once prepared nowhere */
  int ncandidates;
} shard_conn_t;

/* What a decision row says. */
typedef struct decision {
  bool known;    /* a row was read; else: wait for a later pass */
  bool inserted; /* recovery's abort row went in now */
  bool aborted;
  char owner[PGS_MAX_NAME + 1];
} decision_t;

static bool is_2pc(const pgs_twophase_target_t *t) {
  return t->database->cross_shard_writes == PGS_XWRITE_2PC;
}

/* Make sure C's shard has the decision table: created by sql/twophase.sql
 * when it is missing. Marks the shard ready (or not) for new gids. */
static void ensure_table(const pgs_twophase_target_t *t, shard_conn_t *c) {
  char msg[512];
  PGresult *res = NULL;
  c->table = exec_ok(c->pg, TABLE_EXISTS_SQL, PGRES_TUPLES_OK, &res) && PQntuples(res) == 1 &&
             PQgetvalue(res, 0, 0)[0] == 't';
  PQclear(res);
  if (!c->table) {
    res = PQexec(c->pg, TWOPHASE_SQL);
    c->table = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (c->table) {
      pgs_info("2pc: created pgshard.twophase_decision on %s.%s", t->db, t->shard);
    } else {
      one_line(res ? PQresultErrorMessage(res) : PQerrorMessage(c->pg), msg, sizeof(msg));
      char key[PGS_MAX_NAME * 2 + 64];
      snprintf(key, sizeof(key), "no table %s.%s", t->db, t->shard);
      if (first_warning(key))
        pgs_error(
            "2pc: cannot create pgshard.twophase_decision on %s.%s (%s); two-phase "
            "commits deciding there are refused until it can",
            t->db, t->shard, msg);
      (void)exec_ok(c->pg, "ROLLBACK", PGRES_COMMAND_OK, NULL);
    }
    PQclear(res);
  }
  set_ready(t->db, t->shard, c->table);
}

/* Connect to T's writer, check where it is, make sure of the table and read
 * the cleanup candidates. False (C->pg NULL) when the shard cannot be used
 * in this pass. */
static bool open_target(const pgs_twophase_target_t *t, shard_conn_t *c, bool startup) {
  pgs_log_level_t quiet = startup ? PGS_LOG_WARNING : PGS_LOG_DEBUG;
  char msg[512];
  if (t->node == NULL) {
    if (pgs_log_enabled(quiet))
      pgs_log(quiet, "2pc: %s.%s has no writer now: its prepared transactions wait", t->db,
              t->shard);
    return false;
  }
  c->pg =
      recovery_connect(t->config, t->database, t->node, listing_user(t->config), msg, sizeof(msg));
  if (c->pg == NULL) {
    if (pgs_log_enabled(quiet))
      pgs_log(quiet,
              "2pc: cannot reach %s.%s to settle prepared transactions (%s); trying again "
              "later",
              t->db, t->shard, msg);
    return false;
  }
  PGresult *res = NULL;
  if (!exec_ok(c->pg, SESSION_SQL, PGRES_TUPLES_OK, &res) || PQntuples(res) != 1) {
    pgs_warn("2pc: %s.%s: %s", t->db, t->shard, one_line(PQerrorMessage(c->pg), msg, sizeof(msg)));
    goto fail;
  }
  bool in_recovery = PQgetvalue(res, 0, 0)[0] == 't';
  c->me = pgs_xstrdup(PQgetvalue(res, 0, 1));
  c->superuser = !strcmp(PQgetvalue(res, 0, 2), "on");
  PQclear(res);
  res = NULL;
  if (in_recovery) {
    if (pgs_log_enabled(quiet))
      pgs_log(quiet, "2pc: %s.%s: its writer is in recovery; prepared transactions wait", t->db,
              t->shard);
    goto fail;
  }
  if (t->config->twophase_recovery_user && !c->superuser) {
    snprintf(msg, sizeof(msg), "not superuser %s %s.%s", c->me, t->db, t->shard);
    if (first_warning(msg))
      pgs_warn(
          "2pc: twophase_recovery_user = %s logs in to %s.%s as %s, which is not a "
          "superuser there: other users' prepared transactions are settled as their owners",
          t->config->twophase_recovery_user, t->db, t->shard, c->me);
  }
  ensure_table(t, c);
  if (!c->table) return true;
  char sql[256];
  snprintf(sql, sizeof(sql), CLEANUP_CANDIDATES_SQL, PGS_TWOPHASE_ABORT_ROW_KEEP_S,
           PGS_TWOPHASE_CLEANUP_BATCH);
  if (exec_ok(c->pg, sql, PGRES_TUPLES_OK, &res)) {
    c->ncandidates = PQntuples(res);
    c->candidates = pgs_xcalloc((size_t)(c->ncandidates ? c->ncandidates : 1), sizeof(char *));
    for (int i = 0; i < c->ncandidates; i++) c->candidates[i] = pgs_xstrdup(PQgetvalue(res, i, 0));
  } else {
    pgs_warn("2pc: %s.%s: reading decision rows: %s", t->db, t->shard,
             one_line(PQerrorMessage(c->pg), msg, sizeof(msg)));
  }
  PQclear(res);
  return true;

fail:
  PQclear(res);
  PQfinish(c->pg);
  c->pg = NULL;
  return false;
}

static void close_target(shard_conn_t *c) {
  pgs_strmap_free(&c->owners, owner_login_free);
  for (int i = 0; i < c->ncandidates; i++) free(c->candidates[i]);
  free(c->candidates);
  free(c->me);
  if (c->pg) PQfinish(c->pg);
}

/* GID's decision row on its decision shard D (through DC, its pass
 * connection), recovery's abort row inserted first when there is none:
 * OWNER is the prepared transaction's. *WHY says why it is unknown. */
static decision_t decide(const pgs_twophase_target_t *d, shard_conn_t *dc, const char *gid,
                         const char *owner, const char **why, char *msg, size_t msglen) {
  decision_t out = {0};
  const char *params[2] = {gid, owner};
  PGresult *res = PQexecParams(dc->pg, DECIDE_SQL, 2, NULL, params, NULL, NULL, 0);
  const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
    if (state && !strcmp(state, "55P03")) {
      *why = "a transaction on its decision shard is writing its row; the next pass decides";
    } else {
      if (state && !strcmp(state, "42P01")) set_ready(d->db, d->shard, false);
      snprintf(msg, msglen, "recording a decision on %s.%s: ", d->db, d->shard);
      size_t n = strlen(msg);
      one_line(res ? PQresultErrorMessage(res) : PQerrorMessage(dc->pg), msg + n, msglen - n);
      *why = msg;
    }
    PQclear(res);
    return out;
  }
  out.inserted = !strcmp(PQcmdTuples(res), "1");
  PQclear(res);
  res = PQexecParams(dc->pg, READ_SQL, 1, NULL, params, NULL, NULL, 0);
  if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
    out.known = true;
    snprintf(out.owner, sizeof(out.owner), "%s", PQgetvalue(res, 0, 0));
    out.aborted = PQgetvalue(res, 0, 1)[0] == 't';
  } else {
    snprintf(msg, msglen, "reading the decision on %s.%s: ", d->db, d->shard);
    size_t n = strlen(msg);
    one_line(res ? PQresultErrorMessage(res) : PQerrorMessage(dc->pg), msg + n, msglen - n);
    *why = msg;
  }
  PQclear(res);
  return out;
}

/* The target of T's database for its shard SHARD, -1 when the pass has
 * none. */
static int target_of(const pgs_twophase_target_t *targets, int ntargets,
                     const pgs_database_t *database, const char *shard) {
  for (int i = 0; i < ntargets; i++)
    if (targets[i].database == database && !strcmp(targets[i].shard, shard)) return i;
  return -1;
}

/* Settle the prepared gids on target I. Gids still prepared afterwards go
 * into LEFT. False when the shard could not be settled fully. */
static bool settle_target(const pgs_twophase_target_t *targets, shard_conn_t *conns, int ntargets,
                          int i, bool startup, pgs_strmap_t *left) {
  const pgs_twophase_target_t *t = &targets[i];
  shard_conn_t *c = &conns[i];
  pgs_log_level_t quiet = startup ? PGS_LOG_WARNING : PGS_LOG_DEBUG;
  char msg[512], key[PGS_GID_MAX + 128];
  PGresult *res = NULL;
  if (!exec_ok(c->pg, LIST_SQL, PGRES_TUPLES_OK, &res)) {
    pgs_warn("2pc: %s.%s: listing prepared transactions: %s", t->db, t->shard,
             one_line(PQerrorMessage(c->pg), msg, sizeof(msg)));
    PQclear(res);
    return false;
  }
  bool ok = true;
  uint64_t now = pgs_now_ms();
  int k;
  for (k = 0; k < PQntuples(res); k++) {
    const char *gid = PQgetvalue(res, k, 0);
    const char *owner = PQgetvalue(res, k, 1);
    long long age = strtoll(PQgetvalue(res, k, 2), NULL, 10);
    pgs_strmap_put(left, gid, NULL); /* until settled below */
    pgs_gid_t g;
    if (!pgs_gid_parse(gid, &g)) {
      snprintf(key, sizeof(key), "foreign %s %s.%s", gid, t->db, t->shard);
      if (first_warning(key))
        pgs_warn("2pc: %s on %s.%s left alone: not a gid pgshard makes", gid, t->db, t->shard);
      continue;
    }
    if (driven(gid, now)) continue;
    if (!startup && age < PGS_TWOPHASE_MIN_AGE_MS) continue;
    int ds = pgs_gid_decision_shard(t->database, &g);
    int di = ds < 0 ? -1 : target_of(targets, ntargets, t->database, t->database->shards[ds].name);
    if (ds < 0) {
      snprintf(key, sizeof(key), "noshard %s %s.%s", gid, t->db, t->shard);
      if (first_warning(key))
        pgs_warn(
            "2pc: %s on %s.%s left alone: it names no shard of database %s as its decision "
            "shard (a gid of the decision log of pgshard before 2pc decisions were kept in "
            "the shards, or of another shard map): settle it by hand",
            gid, t->db, t->shard, t->db);
      continue;
    }
    if (di < 0 || conns[di].pg == NULL || !conns[di].table) {
      if (pgs_log_enabled(quiet))
        pgs_log(quiet, "2pc: %s on %s.%s waits for its decision shard %s", gid, t->db, t->shard,
                t->database->shards[ds].name);
      ok = false;
      continue;
    }
    const char *why = "";
    decision_t d = decide(&targets[di], &conns[di], gid, owner, &why, msg, sizeof(msg));
    if (!d.known) {
      pgs_log(strchr(why, ':') ? PGS_LOG_WARNING : PGS_LOG_DEBUG, "2pc: %s on %s.%s: %s", gid,
              t->db, t->shard, why);
      ok = false;
      continue;
    }
    bool commit = !d.aborted && !strcmp(d.owner, owner);
    char reason[256];
    if (commit)
      snprintf(reason, sizeof(reason), "commit recorded on %s", targets[di].shard);
    else if (d.inserted)
      snprintf(reason, sizeof(reason), "no commit recorded on %s: abort recorded now",
               targets[di].shard);
    else if (d.aborted)
      snprintf(reason, sizeof(reason), "abort recorded on %s", targets[di].shard);
    else
      snprintf(reason, sizeof(reason), "the commit row on %s is %s's, not the owner %s's",
               targets[di].shard, d.owner, owner);
    PGconn *conn = c->pg;
    if (!c->superuser && strcmp(owner, c->me) != 0) {
      const char *rwhy = "";
      conn = owner_connect(t, owner, &c->owners, &rwhy);
      if (conn == NULL) {
        snprintf(key, sizeof(key), "%s %s.%s", gid, t->db, t->shard);
        if (first_warning(key))
          pgs_warn("2pc: cannot settle %s on %s.%s, prepared by %s: %s; it stays prepared", gid,
                   t->db, t->shard, owner, rwhy);
        ok = false;
        continue;
      }
    }
    /* pgs_gid_parse admitted only [a-z0-9_]: no quoting needed. */
    char sql[PGS_GID_MAX + 32];
    snprintf(sql, sizeof(sql), "%s PREPARED '%s'", commit ? "COMMIT" : "ROLLBACK", gid);
    PGresult *r = PQexec(conn, sql);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      pgs_info("2pc: %s %s on %s.%s (%s)", commit ? "committed" : "rolled back", gid, t->db,
               t->shard, reason);
      uv_mutex_lock(&tp.lock);
      if (commit)
        tp.counters.commits++;
      else
        tp.counters.rollbacks++;
      uv_mutex_unlock(&tp.lock);
      (void)pgs_strmap_remove(left, gid);
    } else if (state && !strcmp(state, "42704")) {
      pgs_debug("2pc: %s on %s.%s was settled meanwhile", gid, t->db, t->shard);
      (void)pgs_strmap_remove(left, gid);
    } else {
      pgs_warn("2pc: %s PREPARED %s on %s.%s (prepared by %s) failed: %s; trying again later",
               commit ? "COMMIT" : "ROLLBACK", gid, t->db, t->shard, owner,
               one_line(r ? PQresultErrorMessage(r) : PQerrorMessage(conn), msg, sizeof(msg)));
      ok = false;
    }
    PQclear(r);
    /* An owner's login lost fails that owner's next gids only; the
     * listing login lost leaves the rest of the list unseen. */
    if (PQstatus(c->pg) != CONNECTION_OK) {
      ok = false;
      break;
    }
  }
  c->listed = k == PQntuples(res);
  PQclear(res);
  return ok;
}

/* Delete C's candidate rows whose gid LEFT does not hold (prepared
 * nowhere in the database, as listed after the candidates were read). */
static void cleanup_target(const pgs_twophase_target_t *t, shard_conn_t *c,
                           const pgs_strmap_t *left) {
  pgs_buf_t sql;
  pgs_buf_init(&sql);
  const char *head = "DELETE FROM pgshard.twophase_decision WHERE gid IN (";
  pgs_buf_put(&sql, head, strlen(head));
  int n = 0;
  for (int i = 0; i < c->ncandidates; i++) {
    if (pgs_strmap_contains(left, c->candidates[i])) continue;
    char *lit = PQescapeLiteral(c->pg, c->candidates[i], strlen(c->candidates[i]));
    if (lit == NULL) continue;
    if (n++) pgs_buf_put_u8(&sql, ',');
    pgs_buf_put(&sql, lit, strlen(lit));
    PQfreemem(lit);
  }
  pgs_buf_put(&sql, ")", 2); /* with the NUL */
  if (n > 0) {
    PGresult *res = PQexec(c->pg, (const char *)sql.data);
    char msg[512];
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
      uint64_t deleted = strtoull(PQcmdTuples(res), NULL, 10);
      pgs_debug("2pc: %s.%s: %" PRIu64 " settled decision row(s) deleted", t->db, t->shard,
                deleted);
      uv_mutex_lock(&tp.lock);
      tp.counters.rows_deleted += deleted;
      uv_mutex_unlock(&tp.lock);
    } else {
      pgs_warn("2pc: %s.%s: deleting settled decision rows: %s", t->db, t->shard,
               one_line(res ? PQresultErrorMessage(res) : PQerrorMessage(c->pg), msg, sizeof(msg)));
    }
    PQclear(res);
  }
  pgs_buf_free(&sql);
}

int pgs_twophase_recover(const pgs_twophase_target_t *targets, int ntargets, bool startup) {
  if (!pgs_twophase_active()) return 0;
  uv_mutex_lock(&tp.pass_lock);
  /* Gids of this process no worker drives, as the pass starts: once every
   * shard has been listed and none holds one of them, they are forgotten. */
  pgs_strmap_t given_up;
  pgs_strmap_init(&given_up);
  uint64_t now = pgs_now_ms();
  uv_mutex_lock(&tp.lock);
  for (size_t b = 0; b < tp.index.nbuckets; b++)
    for (const pgs_strmap_entry_t *e = tp.index.buckets[b]; e; e = e->next) {
      const entry_t *en = e->value;
      if (en->released && (en->held == 0 || now - en->since_ms >= PGS_TWOPHASE_IN_FLIGHT_MS))
        pgs_strmap_put(&given_up, e->key, NULL);
    }
  uv_mutex_unlock(&tp.lock);
  shard_conn_t *conns = pgs_xcalloc((size_t)(ntargets ? ntargets : 1), sizeof(*conns));
  for (int i = 0; i < ntargets; i++) pgs_strmap_init(&conns[i].owners);
  int unsettled = 0;
  /* Every connection first: a gid's decision shard may come later in the
   * list, and the cleanup candidates must be read before any listing. */
  for (int i = 0; i < ntargets; i++) {
    if (!is_2pc(&targets[i])) continue;
    if (!open_target(&targets[i], &conns[i], startup)) unsettled++;
  }
  pgs_strmap_t left;
  pgs_strmap_init(&left);
  for (int i = 0; i < ntargets; i++) {
    if (conns[i].pg == NULL) continue;
    if (!settle_target(targets, conns, ntargets, i, startup, &left)) unsettled++;
  }
  /* A database every shard of which was listed: its rows of gids prepared
   * nowhere are finished. */
  for (int i = 0; i < ntargets; i++) {
    if (conns[i].pg == NULL || !conns[i].table || conns[i].ncandidates == 0) continue;
    bool all = true;
    for (int j = 0; j < ntargets && all; j++)
      if (targets[j].database == targets[i].database) all = conns[j].listed;
    if (all) cleanup_target(&targets[i], &conns[i], &left);
  }
  bool all_listed = true;
  for (int i = 0; i < ntargets; i++)
    if (is_2pc(&targets[i]) && !conns[i].listed) all_listed = false;
  uv_mutex_lock(&tp.lock);
  for (size_t b = 0; all_listed && b < given_up.nbuckets; b++)
    for (const pgs_strmap_entry_t *e = given_up.buckets[b]; e; e = e->next)
      if (!pgs_strmap_contains(&left, e->key)) free(pgs_strmap_remove(&tp.index, e->key));
  uv_mutex_unlock(&tp.lock);
  pgs_strmap_free(&given_up, NULL);
  pgs_strmap_free(&left, NULL);
  for (int i = 0; i < ntargets; i++) close_target(&conns[i]);
  free(conns);
  uv_mutex_lock(&tp.lock);
  tp.counters.passes++;
  tp.counters.last_pass_ms = pgs_now_ms();
  uv_mutex_unlock(&tp.lock);
  uv_mutex_unlock(&tp.pass_lock);
  return unsettled;
}

void pgs_twophase_targets_free(pgs_twophase_target_t *targets, int ntargets) {
  for (int i = 0; i < ntargets; i++) {
    free(targets[i].db);
    free(targets[i].shard);
    pgs_config_unref(targets[i].config);
  }
  free(targets);
}

int pgs_twophase_recover_config(pgs_config_t *config) {
  if (!pgs_twophase_active()) return 0;
  int n = 0;
  for (int d = 0; d < config->ndatabases; d++) n += config->databases[d].nshards;
  pgs_twophase_target_t *targets = pgs_xcalloc((size_t)(n ? n : 1), sizeof(*targets));
  int k = 0;
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++, k++) {
      targets[k].db = pgs_xstrdup(db->name);
      targets[k].shard = pgs_xstrdup(db->shards[s].name);
      targets[k].config = pgs_config_ref(config);
      targets[k].database = db;
      if (db->shards[s].has_primary) targets[k].node = &db->shards[s].primary;
    }
  }
  int unsettled = pgs_twophase_recover(targets, n, true);
  if (unsettled)
    pgs_warn("2pc: %d shard(s) not settled at startup; the monitor tries again every %d ms",
             unsettled, PGS_TWOPHASE_PASS_MS);
  pgs_twophase_targets_free(targets, n);
  return unsettled;
}

pgs_status_t pgs_twophase_check_recovery_user(const pgs_config_t *config) {
  if (config->twophase_recovery_user == NULL) return PGS_OK;
  const pgs_user_t *user = pgs_config_find_user(config, config->twophase_recovery_user);
  PGS_ASSERT(user != NULL); /* the config checked it */
  pgs_status_t rc = PGS_OK;
  char msg[512];
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_t *shard = &db->shards[s];
      if (!shard->has_primary) continue;
      PGconn *pg = recovery_connect(config, db, &shard->primary, user, msg, sizeof(msg));
      PGresult *res = NULL;
      if (pg == NULL || !exec_ok(pg, SESSION_SQL, PGRES_TUPLES_OK, &res) || PQntuples(res) != 1) {
        pgs_warn(
            "2pc: cannot check that twophase_recovery_user = %s is a superuser on %s.%s: "
            "%s",
            user->name, db->name, shard->name,
            pg ? one_line(PQerrorMessage(pg), msg, sizeof(msg)) : msg);
      } else if (strcmp(PQgetvalue(res, 0, 2), "on") != 0) {
        pgs_error(
            "2pc: twophase_recovery_user = %s logs in to %s.%s as %s, which is not a "
            "superuser there (finishing other users' prepared transactions needs one)",
            user->name, db->name, shard->name, PQgetvalue(res, 0, 1));
        rc = PGS_ECONFIG;
      }
      PQclear(res);
      if (pg) PQfinish(pg);
    }
  }
  return rc;
}
