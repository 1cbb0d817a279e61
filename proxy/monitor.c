/*
 * monitor.c — the health and lag monitor thread (monitor.h). It owns a libuv
 * loop, one libpq connection per node of every shard of every database
 * (PQconnectStart/PQconnectPoll, then PQsendQuery/PQconsumeInput on a
 * uv_poll), and the health state of every shard (health.h), which nothing
 * else touches.
 *
 * Checks run in rounds, one per lag_check_interval_ms (the smallest over the
 * databases). A round sends the check to every node whose connection is
 * idle, connects nodes that are up but have no connection, and reconnects
 * down nodes whose retry time has come. It ends when every node in it has
 * answered, or at the next tick: a check still unanswered then failed (the
 * connection is kept until the node is marked down; a connect attempt fails
 * only after server_connect_timeout_ms). At its end the results are applied
 * (the writer first, so replicas are measured against the newest primary
 * sample), the writer elected, changes logged, and a new snapshot handed to
 * the workers — every round, since LSNs move every round and
 * read-your-writes needs them.
 *
 * Other threads reach the monitor only through its mailbox (mutex +
 * uv_async): a new config, or stop.
 *
 * Two-phase commit recovery (twophase.h): every PGS_TWOPHASE_PASS_MS — and at once when a shard's writer comes back
 * up or changes — the monitor hands a recovery pass over every shard's
 * current writer to the libuv thread pool (uv_queue_work). The pass uses
 * blocking libpq on connections of its own, so the checks on this loop are
 * never delayed by it; one pass runs at a time.
 */
#include <string.h>

#include <libpq-fe.h>

#include "pgshard/collate.h"
#include "pgshard/log.h"
#include "pgshard/io.h"
#include "pgshard/monitor.h"
#include "pgshard/moves.h"
#include "pgshard/twophase.h"

#define CHECK_SQL                                                                                  \
  "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "       \
  "ELSE pg_current_wal_insert_lsn() END, pg_last_wal_receive_lsn()"

#define MIN_INTERVAL_MS 10

/* How often a primary is asked for its sharded tables' columns (what an
 * INSERT without a column list is given, planner.c), with its check. */
#define LAYOUT_INTERVAL_MS 1000

/* A resharding's moves (moves.h) are read from every writer as often, last
 * in the check's text (the table may be missing, and an error ends the
 * statements after it). Until the table is known to exist, the writer is
 * asked whether it does instead, so a database never resharded costs its
 * server no error a second. */
#define MOVES_SQL                                                                                  \
  "SELECT reshard_id, database, source, target, tables::text, phase, rows_copied, rows_applied, "  \
  "applied_lsn::text, extract(epoch from applied_commit_at)::float8, error, "                      \
  "extract(epoch from updated_at)::float8, mirror FROM pgshard.reshard_move "                      \
  "ORDER BY reshard_id, source, target"
#define MOVES_PROBE_SQL "SELECT pg_catalog.to_regclass('pgshard.reshard_move') IS NOT NULL"

/* Collations (what a merged ORDER BY or min/max over text compares by,
 * collate.h) are asked with the same check, as often, from every writer,
 * and from a configured primary with its first check (so the first
 * snapshots have them). A check counts when its own result comes: the
 * catalog queries after it never make it late. */

/* The answer to the check in flight, as far as it has come: its results
 * (the check's, then the layout's and the collations' when asked) may
 * arrive over several reads. */
typedef struct mon_reply {
  int results;  /* results read so far */
  bool checked; /* the check's came: node_done was told */
  bool ok;      /* the check's: a row that parsed */
  bool in_recovery;
  uint64_t lsn, receive;
  char err[256];
} mon_reply_t;

/* A node's monitor connection. */
typedef enum {
  MN_CLOSED,     /* no connection: not opened yet, lost, or the node is down
                    and waits for retry_at_ms */
  MN_CONNECTING, /* PQconnectPoll in progress, poll follows libpq's socket */
  MN_IDLE,       /* logged in, no query in flight (poll watches for EOF) */
  MN_BUSY,       /* the check query in flight since sent_ms */
} mon_conn_state_t;

static const char *const conn_state_names[] = {"closed", "connecting", "idle", "busy"};

typedef struct mon_node {
  /* Identity across reloads: (db, shard, conninfo as the config writes it). */
  char *db;
  char *shard;
  char *conninfo;
  char *connstr;   /* what libpq gets (conninfo_build) */
  char label[160]; /* "app.s0 replica 127.0.0.1:7301", for the log */
  mon_conn_state_t state;
  PGconn *pg;
  uv_poll_t *poll; /* heap: closed asynchronously, freed in its close_cb */
  int poll_fd;
  uint64_t connect_start_ms;
  uint64_t sent_ms;
  uint64_t check_start_us; /* the check's start: its connect, or its query's send */
  bool in_round;           /* part of the current round */
  bool has_result;         /* answered (or failed) in the current round */
  mon_reply_t reply;       /* MN_BUSY: the answer so far */
  pgs_check_result_t result;
  char last_error[256];
  /* Its database's sharded tables' columns (a primary's answer): the
   * query asking for them (NULL: no sharded table), the answer per table
   * in the config's order (NULL: not known), when last asked. */
  char *layout_sql;
  char **layout;
  int ntables;
  uint64_t layout_ms;
  bool layout_pending; /* asked with the check in flight */
  /* Its database's collations (collate.h): when last asked, whether
   * asked with the check in flight, its database part and collation list
   * as last answered (NULL: none yet), pg_collation's mark, and the answer's
   * number (from mon.coll_seq, new with every change). */
  bool configured_primary; /* its shard's first node in the config */
  uint64_t coll_ms;
  bool coll_pending;
  char *coll_db;
  char *coll_list;
  char coll_mark[PGS_COLLCAT_MARK_MAX];
  uint64_t coll_seq;
  /* A resharding's moves on it (pgshard.reshard_move, a writer's): whether
   * that table exists (-1 not known yet: probed), when last asked, whether
   * asked with the check in flight, the rows as last read (moves_read: read
   * at least once), and the last error logged (not again until another). */
  int moves_table;
  uint64_t moves_ms;
  bool moves_pending;
  bool moves_read;
  pgs_move_t *moves;
  int nmoves;
  char moves_error[160];
} mon_node_t;

typedef struct mon_shard {
  pgs_shard_health_t health; /* nodes[i] is conns[i]'s state */
  mon_node_t **conns;
} mon_shard_t;

typedef struct mon_db {
  char *name;
  pgs_lag_bounds_t bounds;
  mon_shard_t *shards;
  int nshards;
  pgs_collcat_t *collcat; /* from its writers' collation answers */
  uint64_t collcat_sig;   /* of the answers it was built from */
} mon_db_t;

static struct {
  uv_loop_t loop;
  uv_thread_t thread;
  uv_timer_t timer;
  uv_async_t wakeup;
  uv_mutex_t lock;
  bool started;
  pgs_publish_fn publish; /* where snapshots go */
  /* mailbox, under lock */
  pgs_config_t *mbox_config;
  bool mbox_stop;
  bool mbox_publish; /* the bans changed: publish now */
  /* replicas banned from the read set ("host:port"), under lock */
  char bans[PGS_MONITOR_MAX_BANS][300];
  int nbans;
  /* the monitor thread's own */
  pgs_config_t *config;
  mon_db_t *dbs;
  int ndbs;
  int interval_ms;
  bool round_open;
  bool round_starting; /* start_round is sending: do not end it yet */
  int pending;         /* nodes in the round not yet answered */
  uint64_t seq;
  uint64_t coll_seq; /* numbers the nodes' collation answers */
  bool stopping;
  /* two-phase commit recovery passes */
  uv_work_t twophase_work;
  pgs_twophase_target_t *twophase_targets; /* the running pass's */
  int twophase_ntargets;
  bool twophase_running;
  bool twophase_kick;        /* a writer came back: pass at the next tick */
  uint64_t twophase_next_ms; /* the next periodic pass */
  uv_timer_t twophase_timer; /* passes when the checks are further apart */
} mon;

static void poll_cb(uv_poll_t *handle, int status, int events);
static void finish_round(uint64_t now);

/* ---- snapshots ---- */

/* Each table's columns as every shard's writer has them; NULL where one
 * has none yet or two differ (a change rolling out): then not known. */
static void publish_layouts(const mon_db_t *src, pgs_health_db_t *dst) {
  const mon_node_t *first = src->nshards > 0 ? src->shards[0].conns[0] : NULL;
  dst->ntables = first ? first->ntables : 0;
  if (dst->ntables == 0) return;
  dst->columns = pgs_xcalloc((size_t)dst->ntables, sizeof(char *));
  for (int t = 0; t < dst->ntables; t++) {
    const char *agreed = NULL;
    bool known = true;
    for (int s = 0; s < src->nshards && known; s++) {
      const mon_shard_t *sh = &src->shards[s];
      const mon_node_t *w = sh->health.writer >= 0 ? sh->conns[sh->health.writer] : NULL;
      const char *cols = w && w->ntables == dst->ntables ? w->layout[t] : NULL;
      known = cols != NULL && (agreed == NULL || !strcmp(agreed, cols));
      agreed = cols;
    }
    if (known && agreed) dst->columns[t] = pgs_xstrdup(agreed);
  }
}

/* The database's collations as every shard's writer has them, rebuilt
 * when one of their answers changed and every writer has answered; NULL
 * until then. While a shard has no writer, or a new one (a promoted
 * replica) has not answered yet, the last ones stay: a physical replica's
 * catalog is its primary's. */
static void publish_collations(mon_db_t *src, pgs_health_db_t *dst) {
  int n = src->nshards;
  const char *dbs[n > 0 ? n : 1], *lists[n > 0 ? n : 1];
  bool all = n > 0;
  uint64_t sig = 0x9e3779b97f4a7c15u;
  for (int s = 0; s < n; s++) {
    const mon_shard_t *sh = &src->shards[s];
    const mon_node_t *w = sh->health.writer >= 0 ? sh->conns[sh->health.writer] : NULL;
    dbs[s] = w ? w->coll_db : NULL;
    lists[s] = w ? w->coll_list : NULL;
    all = all && dbs[s] && lists[s];
    sig = (sig ^ (w ? w->coll_seq : 0)) * 0x100000001b3u + (uint64_t)s;
  }
  if (sig != src->collcat_sig && all) {
    pgs_collcat_unref(src->collcat);
    src->collcat = pgs_collcat_build(dbs, lists, n);
    src->collcat_sig = sig;
  }
  dst->collations = pgs_collcat_ref(src->collcat);
}

/* The moves of the database: each shard's as its writer read them (or, while
 * a new writer has not read them yet, another node of the shard that has:
 * a physical replica's table is its primary's), the rows naming DB->name. */
static int publish_moves(const mon_db_t *src, pgs_health_db_t *dst) {
  for (int s = 0; s < src->nshards; s++) {
    const mon_shard_t *sh = &src->shards[s];
    const mon_node_t *from = NULL;
    if (sh->health.writer >= 0 && sh->conns[sh->health.writer]->moves_read)
      from = sh->conns[sh->health.writer];
    for (int i = 0; i < sh->health.nnodes && from == NULL; i++)
      if (sh->conns[i]->moves_read) from = sh->conns[i];
    for (int m = 0; from && m < from->nmoves; m++)
      if (from->moves[m].database && !strcmp(from->moves[m].database, src->name))
        pgs_moves_add(&dst->moves, &dst->nmoves, &from->moves[m]);
  }
  return dst->nmoves;
}

static void publish(uint64_t now) {
  pgs_snapshot_t *snap = pgs_xcalloc(1, sizeof(*snap));
  snap->refcount = 1;
  snap->seq = ++mon.seq;
  snap->taken_ms = now;
  snap->config = pgs_config_ref(mon.config);
  snap->ndbs = mon.ndbs;
  snap->dbs = pgs_xcalloc((size_t)mon.ndbs, sizeof(*snap->dbs));
  for (int d = 0; d < mon.ndbs; d++) {
    const mon_db_t *src = &mon.dbs[d];
    pgs_health_db_t *dst = &snap->dbs[d];
    dst->name = pgs_xstrdup(src->name);
    dst->nshards = src->nshards;
    dst->shards = pgs_xcalloc((size_t)src->nshards, sizeof(*dst->shards));
    publish_layouts(src, dst);
    publish_collations(&mon.dbs[d], dst);
    snap->nmoves += publish_moves(src, dst);
    for (int s = 0; s < src->nshards; s++) {
      const pgs_shard_health_t *h = &src->shards[s].health;
      dst->shards[s] = *h; /* history by value */
      dst->shards[s].nodes = pgs_xmalloc(sizeof(*h->nodes) * (size_t)h->nnodes);
      memcpy(dst->shards[s].nodes, h->nodes, sizeof(*h->nodes) * (size_t)h->nnodes);
      /* Banned replicas leave the read set in what workers see only: their
       * checks and hysteresis go on, so an UNBAN finds them as they are. */
      const pgs_shard_t *cs = &mon.config->databases[d].shards[s];
      uv_mutex_lock(&mon.lock);
      for (int i = 1; i < h->nnodes && i <= cs->nreplicas && mon.nbans > 0; i++) {
        char name[300];
        snprintf(name, sizeof(name), "%s:%d", cs->replicas[i - 1].host, cs->replicas[i - 1].port);
        for (int b = 0; b < mon.nbans; b++) {
          if (strcmp(mon.bans[b], name) != 0) continue;
          dst->shards[s].nodes[i].banned = true;
          dst->shards[s].nodes[i].readable = false;
        }
      }
      uv_mutex_unlock(&mon.lock);
    }
  }
  mon.publish(snap); /* a reference per worker */
  pgs_snapshot_unref(snap);
}

/* ---- conninfo ---- */

/* The node's conninfo completed as the pools complete it, with the
 * monitor's login: a node naming no user logs in as the first [user.*]
 * whose password is plain text (only those can log in to a server). */
static char *conninfo_build(const pgs_config_t *config, const pgs_database_t *db,
                            const pgs_node_t *node) {
  const pgs_user_t *user = NULL;
  for (int i = 0; i < config->nusers && user == NULL; i++)
    if (config->users[i].password && config->users[i].scram_secret) user = &config->users[i];
  return pgs_node_conninfo(config, db, node, user, "application_name", "pgshard monitor");
}

/* ---- connections ---- */

/* The one place a connection changes state. */
static void set_state(mon_node_t *n, mon_conn_state_t state) {
  PGS_ASSERT(state == MN_CLOSED || (n->state == MN_CLOSED && state == MN_CONNECTING) ||
             (n->state == MN_CONNECTING && state == MN_IDLE) ||
             (n->state == MN_IDLE && state == MN_BUSY) ||
             (n->state == MN_BUSY && state == MN_IDLE));
  pgs_debug("monitor %s: %s -> %s", n->label, conn_state_names[n->state], conn_state_names[state]);
  n->state = state;
}

static void free_handle_cb(uv_handle_t *handle) { free(handle); }

static void poll_release(mon_node_t *n) {
  if (n->poll == NULL) return;
  uv_close((uv_handle_t *)n->poll, free_handle_cb); /* stops it now */
  n->poll = NULL;
  n->poll_fd = -1;
}

static void close_conn(mon_node_t *n) {
  poll_release(n);
  if (n->pg) PQfinish(n->pg);
  n->pg = NULL;
  if (n->state != MN_CLOSED) set_state(n, MN_CLOSED);
}

/* Record what node N's part of the round came to. Results outside a round
 * (a connection lost between rounds) are dropped: the next round finds the
 * connection closed and tries again. */
static void node_done(mon_node_t *n, bool ok, bool in_recovery, uint64_t lsn, uint64_t receive,
                      uint64_t now) {
  if (!mon.round_open || !n->in_round || n->has_result) return;
  n->has_result = true;
  n->result.ok = ok;
  n->result.in_recovery = in_recovery;
  n->result.lsn = lsn;
  n->result.receive_lsn = receive;
  n->result.sent_ms = n->sent_ms;
  n->result.done_ms = now;
  n->result.slow = false;
  n->result.duration_us = ok ? pgs_now_us() - n->check_start_us : 0;
  if (--mon.pending == 0 && !mon.round_starting) finish_round(now);
}

/* Keep libpq's message on one line for the log. */
static void set_error(mon_node_t *n, const char *why) {
  size_t len = 0;
  bool space = false;
  for (const char *p = why; *p && len + 1 < sizeof(n->last_error); p++) {
    bool blank = *p == '\n' || *p == '\t' || *p == ' ';
    if (blank && (space || len == 0)) continue;
    n->last_error[len++] = blank ? ' ' : *p;
    space = blank;
  }
  while (len > 0 && n->last_error[len - 1] == ' ') len--;
  n->last_error[len] = '\0';
}

static void conn_failed(mon_node_t *n, const char *why) {
  uint64_t now = pgs_now_ms();
  set_error(n, why && *why ? why : "connection lost");
  pgs_debug("monitor %s: %s", n->label, n->last_error);
  if (n->state != MN_BUSY) n->sent_ms = n->connect_start_ms; /* a login that failed */
  close_conn(n);
  node_done(n, false, false, 0, 0, now);
}

/* Watch libpq's current socket for EVENTS; false when it failed. */
static bool poll_watch(mon_node_t *n, int events) {
  int fd = PQsocket(n->pg);
  if (fd < 0) {
    conn_failed(n, "no socket");
    return false;
  }
  if (n->poll && n->poll_fd != fd) poll_release(n);
  if (n->poll == NULL) {
    n->poll = pgs_xcalloc(1, sizeof(*n->poll));
    int rc = uv_poll_init_socket(&mon.loop, n->poll, fd);
    if (rc != 0) {
      free(n->poll);
      n->poll = NULL;
      conn_failed(n, uv_strerror(rc));
      return false;
    }
    n->poll->data = n;
    n->poll_fd = fd;
  }
  int rc = uv_poll_start(n->poll, events, poll_cb);
  if (rc != 0) {
    conn_failed(n, uv_strerror(rc));
    return false;
  }
  return true;
}

static void ignore_notice(void *arg, const char *message) {
  PGS_UNUSED(arg);
  PGS_UNUSED(message);
}

static void send_check(mon_node_t *n, uint64_t now) {
  PGS_ASSERT(n->state == MN_IDLE);
  n->layout_pending = n->layout_sql && !n->result.in_recovery && n->result.ok &&
                      now - n->layout_ms >= LAYOUT_INTERVAL_MS;
  n->coll_pending = (n->result.ok ? !n->result.in_recovery : n->configured_primary) &&
                    (n->coll_ms == 0 || now - n->coll_ms >= LAYOUT_INTERVAL_MS);
  n->moves_pending = n->result.ok && !n->result.in_recovery &&
                     (n->moves_ms == 0 || now - n->moves_ms >= LAYOUT_INTERVAL_MS);
  const char *text = CHECK_SQL;
  pgs_buf_t both;
  pgs_buf_init(&both);
  if (n->layout_pending || n->coll_pending || n->moves_pending) {
    pgs_buf_put(&both, CHECK_SQL, sizeof(CHECK_SQL) - 1);
    if (n->layout_pending) {
      n->layout_ms = now;
      pgs_buf_put(&both, "; ", 2);
      pgs_buf_put(&both, n->layout_sql, strlen(n->layout_sql));
    }
    if (n->coll_pending) {
      n->coll_ms = now;
      char *sql = pgs_collcat_query(n->coll_mark);
      pgs_buf_put(&both, "; ", 2);
      pgs_buf_put(&both, sql, strlen(sql));
      free(sql);
    }
    if (n->moves_pending) {
      n->moves_ms = now;
      const char *sql = n->moves_table == 1 ? MOVES_SQL : MOVES_PROBE_SQL;
      pgs_buf_put(&both, "; ", 2);
      pgs_buf_put(&both, sql, strlen(sql));
    }
    pgs_buf_put_u8(&both, '\0');
    text = (const char *)both.data;
  }
  int sent = PQsendQuery(n->pg, text);
  pgs_buf_free(&both);
  if (!sent) {
    conn_failed(n, PQerrorMessage(n->pg));
    return;
  }
  n->sent_ms = now;
  memset(&n->reply, 0, sizeof(n->reply));
  set_state(n, MN_BUSY);
  int rc = PQflush(n->pg);
  if (rc < 0) {
    conn_failed(n, PQerrorMessage(n->pg));
    return;
  }
  (void)poll_watch(n, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void start_connect(mon_node_t *n, uint64_t now) {
  PGS_ASSERT(n->state == MN_CLOSED && n->pg == NULL);
  set_state(n, MN_CONNECTING);
  n->connect_start_ms = now;
  n->pg = PQconnectStart(n->connstr);
  if (n->pg == NULL) {
    conn_failed(n, "out of memory");
    return;
  }
  if (PQstatus(n->pg) == CONNECTION_BAD) {
    conn_failed(n, PQerrorMessage(n->pg));
    return;
  }
  PQsetNoticeProcessor(n->pg, ignore_notice, NULL);
  (void)poll_watch(n, UV_WRITABLE);
}

static void connect_step(mon_node_t *n) {
  PostgresPollingStatusType status = PQconnectPoll(n->pg);
  /* libpq may have closed its socket and opened another (the next address
   * of a host name) that got the same number: epoll dropped the old one
   * with its close, and libuv would not know. A fresh handle per step of
   * the login registers whatever socket libpq has now. */
  poll_release(n);
  switch (status) {
  case PGRES_POLLING_READING:
    (void)poll_watch(n, UV_READABLE);
    return;
  case PGRES_POLLING_WRITING:
    (void)poll_watch(n, UV_WRITABLE);
    return;
  case PGRES_POLLING_OK:
    if (PQsetnonblocking(n->pg, 1) != 0) {
      conn_failed(n, PQerrorMessage(n->pg));
      return;
    }
    set_state(n, MN_IDLE);
    pgs_debug("monitor %s: connected (backend %d)", n->label, PQbackendPID(n->pg));
    if (mon.round_open && n->in_round && !n->has_result)
      send_check(n, pgs_now_ms());
    else
      (void)poll_watch(n, UV_READABLE); /* notice a server that goes away */
    return;
  default:
    conn_failed(n, PQerrorMessage(n->pg));
    return;
  }
}

/* The check's one row: in_recovery, LSN, receive LSN. */
static bool parse_check(const PGresult *res, bool *in_recovery, uint64_t *lsn, uint64_t *receive,
                        char *err, size_t errlen) {
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    snprintf(err, errlen, "check failed: %s", PQresultErrorMessage(res));
    return false;
  }
  if (PQntuples(res) != 1 || PQnfields(res) != 3 || PQgetisnull(res, 0, 0) ||
      PQgetisnull(res, 0, 1)) {
    snprintf(err, errlen, "check returned no LSN");
    return false;
  }
  *in_recovery = PQgetvalue(res, 0, 0)[0] == 't';
  if (pgs_lsn_parse(PQgetvalue(res, 0, 1), lsn) != PGS_OK) {
    snprintf(err, errlen, "check returned a malformed LSN '%s'", PQgetvalue(res, 0, 1));
    return false;
  }
  *receive = 0;
  if (!PQgetisnull(res, 0, 2) && pgs_lsn_parse(PQgetvalue(res, 0, 2), receive) != PGS_OK)
    *receive = 0;
  return true;
}

/* The columns of each sharded table, one row each in the config's order
 * (NULL: no such table there). */
static void parse_layout(mon_node_t *n, const PGresult *res) {
  if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != n->ntables || PQnfields(res) != 1)
    return; /* asked again next time */
  for (int t = 0; t < n->ntables; t++) {
    free(n->layout[t]);
    n->layout[t] = PQgetisnull(res, t, 0) ? NULL : pgs_xstrdup(PQgetvalue(res, t, 0));
  }
}

/* The database's collations (collate.h): one row of encoding, default
 * provider, datcollate, daticulocale, glibc version, the columns with
 * other collations, pg_collation's mark and the list (NULL: unchanged). */
static void parse_collations(mon_node_t *n, const PGresult *res) {
  if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 8 ||
      PQgetisnull(res, 0, 6))
    return; /* asked again next time */
  bool fresh_list = !PQgetisnull(res, 0, 7);
  if (!fresh_list && n->coll_list == NULL) return; /* answered as known, but it is not */
  pgs_buf_t db;
  pgs_buf_init(&db);
  for (int f = 0; f < 5; f++) {
    const char *v = PQgetisnull(res, 0, f) ? "" : PQgetvalue(res, 0, f);
    pgs_buf_put(&db, v, strlen(v));
    pgs_buf_put_u8(&db, f < 4 ? '\t' : '\n');
  }
  const char *columns = PQgetisnull(res, 0, 5) ? "" : PQgetvalue(res, 0, 5);
  pgs_buf_put(&db, columns, strlen(columns) + 1);
  bool changed = fresh_list || n->coll_db == NULL || strcmp(n->coll_db, (char *)db.data) != 0;
  if (changed) {
    free(n->coll_db);
    n->coll_db = (char *)db.data;
    n->coll_seq = ++mon.coll_seq;
  } else {
    pgs_buf_free(&db);
  }
  if (fresh_list) {
    free(n->coll_list);
    n->coll_list = pgs_xstrdup(PQgetvalue(res, 0, 7));
    snprintf(n->coll_mark, sizeof(n->coll_mark), "%s", PQgetvalue(res, 0, 6));
  }
  /* The check it came with was published already: the workers need not
   * wait a round for it. */
  if (changed) publish(pgs_now_ms());
}

static void moves_clear(mon_node_t *n) {
  pgs_moves_free(n->moves, n->nmoves);
  n->moves = NULL;
  n->nmoves = 0;
}

static const char *field(const PGresult *res, int row, int col) {
  return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* One row of pgshard.reshard_move (MOVES_SQL's columns) into M; false when
 * it does not read (its tables are not a text[]). */
static bool parse_move(const PGresult *res, int row, pgs_move_t *m) {
  memset(m, 0, sizeof(*m));
  m->reshard_id = (char *)field(res, row, 0);
  m->database = (char *)field(res, row, 1);
  m->source = (char *)field(res, row, 2);
  m->target = (char *)field(res, row, 3);
  if (!pgs_moves_parse_array(field(res, row, 4), &m->tables, &m->ntables)) return false;
  m->phase_name = (char *)field(res, row, 5);
  m->phase = pgs_move_phase_parse(m->phase_name);
  m->rows_copied = field(res, row, 6) ? strtoll(field(res, row, 6), NULL, 10) : 0;
  m->rows_applied = field(res, row, 7) ? strtoll(field(res, row, 7), NULL, 10) : 0;
  m->has_applied_lsn =
      field(res, row, 8) && pgs_lsn_parse(field(res, row, 8), &m->applied_lsn) == PGS_OK;
  m->applied_commit_at = field(res, row, 9) ? strtod(field(res, row, 9), NULL) : -1;
  m->error = (char *)field(res, row, 10);
  m->updated_at = field(res, row, 11) ? strtod(field(res, row, 11), NULL) : -1;
  m->mirror = field(res, row, 12) && field(res, row, 12)[0] == 't';
  return true;
}

/* The answer to the probe (does pgshard.reshard_move exist?) or to
 * MOVES_SQL. A missing table or schema is no move; another error keeps the
 * rows read before (fail closed) and is logged once. */
static void parse_moves(mon_node_t *n, const PGresult *res) {
  bool probe = n->moves_table != 1;
  if (PQresultStatus(res) != PGRES_TUPLES_OK) {
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state && (!strcmp(state, "42P01") || !strcmp(state, "3F000"))) {
      n->moves_table = 0;
      moves_clear(n);
      n->moves_read = true;
      return;
    }
    char why[sizeof(n->moves_error)];
    snprintf(why, sizeof(why), "%s", PQresultErrorMessage(res));
    why[strcspn(why, "\n")] = '\0';
    if (strcmp(why, n->moves_error) != 0)
      pgs_warn("monitor %s: cannot read pgshard.reshard_move: %s", n->label, why);
    snprintf(n->moves_error, sizeof(n->moves_error), "%s", why);
    return;
  }
  n->moves_error[0] = '\0';
  if (probe) {
    bool exists = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    n->moves_table = exists;
    if (exists) n->moves_ms = 0; /* its rows with the next check */
    if (!exists) moves_clear(n);
    n->moves_read = n->moves_read || !exists;
    return;
  }
  if (PQnfields(res) != 13) return;
  moves_clear(n);
  for (int r = 0; r < PQntuples(res); r++) {
    pgs_move_t m;
    if (parse_move(res, r, &m)) {
      pgs_moves_append(&n->moves, &n->nmoves, &m);
      for (int t = 0; t < m.ntables; t++) free(m.tables[t]);
      free(m.tables);
    }
  }
  n->moves_read = true;
}

static void io_step(mon_node_t *n, int events) {
  if (events & UV_WRITABLE) {
    int rc = PQflush(n->pg);
    if (rc < 0) {
      conn_failed(n, PQerrorMessage(n->pg));
      return;
    }
    if (rc == 0 && !poll_watch(n, UV_READABLE)) return;
  }
  if (!(events & UV_READABLE)) return;
  if (!PQconsumeInput(n->pg)) {
    conn_failed(n, PQerrorMessage(n->pg));
    return;
  }
  if (n->state == MN_IDLE) {
    /* Nothing asked: the server is telling us it goes away. */
    if (PQstatus(n->pg) == CONNECTION_BAD) conn_failed(n, PQerrorMessage(n->pg));
    return;
  }
  mon_reply_t *r = &n->reply;
  while (!PQisBusy(n->pg)) {
    PGresult *res = PQgetResult(n->pg);
    if (res == NULL) {
      /* The query is over. */
      set_state(n, MN_IDLE);
      if (PQstatus(n->pg) == CONNECTION_BAD) {
        conn_failed(n, PQerrorMessage(n->pg));
        return;
      }
      if (!r->checked) {
        set_error(n, "check returned nothing");
        node_done(n, false, false, 0, 0, pgs_now_ms());
      }
      return;
    }
    int at = r->results++;
    if (at == 1 && n->layout_pending) parse_layout(n, res);
    if (at == 1 + n->layout_pending && n->coll_pending) parse_collations(n, res);
    if (at == 1 + n->layout_pending + n->coll_pending && n->moves_pending) parse_moves(n, res);
    if (at == 0) {
      /* The check's answer counts now, whatever follows it. */
      r->ok = parse_check(res, &r->in_recovery, &r->lsn, &r->receive, r->err, sizeof(r->err));
      r->checked = true;
      PQclear(res);
      if (!r->ok) set_error(n, r->err);
      node_done(n, r->ok, r->in_recovery, r->lsn, r->receive, pgs_now_ms());
      if (n->pg == NULL) return; /* the round it ended closed the connection */
      continue;
    }
    PQclear(res);
  }
  if (PQstatus(n->pg) == CONNECTION_BAD) conn_failed(n, PQerrorMessage(n->pg));
}

static void poll_cb(uv_poll_t *handle, int status, int events) {
  mon_node_t *n = handle->data;
  if (n->state == MN_CLOSED) return;
  if (status < 0) {
    /* libuv reports POLLERR (a refused connect, a reset) as UV_EBADF and
     * stops the handle; libpq has the real reason. */
    bool libpq_failed = n->state == MN_CONNECTING ? PQconnectPoll(n->pg) == PGRES_POLLING_FAILED
                                                  : !PQconsumeInput(n->pg);
    conn_failed(n, libpq_failed ? PQerrorMessage(n->pg) : uv_strerror(status));
    return;
  }
  switch (n->state) {
  case MN_CONNECTING:
    connect_step(n);
    break;
  case MN_IDLE:
  case MN_BUSY:
    io_step(n, events);
    break;
  case MN_CLOSED:
    break;
  }
}

/* ---- rounds ---- */

static void start_round(uint64_t now) {
  mon.round_open = true;
  mon.round_starting = true;
  mon.pending = 0;
  for (int d = 0; d < mon.ndbs; d++) {
    for (int s = 0; s < mon.dbs[d].nshards; s++) {
      mon_shard_t *sh = &mon.dbs[d].shards[s];
      for (int i = 0; i < sh->health.nnodes; i++) {
        mon_node_t *n = sh->conns[i];
        const pgs_node_state_t *st = &sh->health.nodes[i];
        n->has_result = false;
        n->in_round = false;
        bool closed_waiting = n->state == MN_CLOSED && !st->up && now < st->retry_at_ms;
        if (closed_waiting) continue;
        /* Its last check answered, the catalog queries sent with it still
         * run: it sits this round out (its health stays as it is). */
        if (n->state == MN_BUSY && n->reply.checked) continue;
        n->in_round = true;
        mon.pending++;
        switch (n->state) {
        case MN_CLOSED:
          n->check_start_us = pgs_now_us();
          start_connect(n, now); /* the check follows the login */
          break;
        case MN_IDLE:
          n->check_start_us = pgs_now_us();
          send_check(n, now);
          break;
        case MN_CONNECTING: /* still logging in */
        case MN_BUSY:       /* the last check is still unanswered (timed from its start) */
          break;
        }
      }
    }
  }
  mon.round_starting = false;
  if (mon.pending == 0) finish_round(now);
}

static const char *node_role(const pgs_shard_health_t *h, int i) {
  if (i == h->writer) return i == 0 ? "primary" : "promoted primary";
  return i == 0 ? "configured primary" : "replica";
}

static void log_changes(const mon_db_t *db, const mon_shard_t *sh, const pgs_node_state_t *before) {
  const pgs_shard_health_t *h = &sh->health;
  for (int i = 0; i < h->nnodes; i++) {
    const pgs_node_state_t *was = &before[i], *now = &h->nodes[i];
    const mon_node_t *n = sh->conns[i];
    if (was->up && !now->up)
      pgs_error(
          "%s is DOWN after %d failed checks (%s); pooled connections dropped, "
          "retrying in %d ms",
          n->label, now->failures, n->last_error, now->retry_backoff_ms);
    else if (!was->up && now->up)
      pgs_warn("%s is UP again (%s)", n->label,
               now->in_recovery ? "in recovery" : "not in recovery");
    if (was->readable && !now->readable) {
      if (!now->up || now->failures > 0 || (n->has_result && !n->result.ok))
        pgs_warn("%s leaves the read set: check failed (%s)", n->label, n->last_error);
      else if (!now->in_recovery)
        pgs_warn("%s leaves the read set: not in recovery", n->label);
      else
        pgs_warn(
            "%s leaves the read set: lag %lld ms, %llu bytes (max_replica_lag_ms = %lld, "
            "max_replica_lag_bytes = %lld)",
            n->label, (long long)now->lag_ms, (unsigned long long)now->lag_bytes,
            (long long)db->bounds.max_lag_ms, (long long)db->bounds.max_lag_bytes);
    } else if (!was->readable && now->readable) {
      pgs_info("%s joins the read set: lag %lld ms, %llu bytes", n->label, (long long)now->lag_ms,
               (unsigned long long)now->lag_bytes);
    }
    if (i != h->writer && !now->in_recovery && now->up && was->in_recovery && h->writer >= 0)
      pgs_error("%s is out of recovery but %s still writes: it takes neither writes nor reads",
                n->label, sh->conns[h->writer]->label);
  }
}

static void finish_round(uint64_t now) {
  mon.round_open = false;
  for (int d = 0; d < mon.ndbs; d++) {
    mon_db_t *db = &mon.dbs[d];
    for (int s = 0; s < db->nshards; s++) {
      mon_shard_t *sh = &db->shards[s];
      pgs_shard_health_t *h = &sh->health;
      int nn = h->nnodes;
      /* Unanswered checks failed; a login fails only at its timeout. A
       * check sent late in the round (right after a login) is given until
       * the end of the next one rather than failed for a short deadline. */
      for (int i = 0; i < nn; i++) {
        mon_node_t *n = sh->conns[i];
        if (!n->in_round || n->has_result) continue;
        if (n->state == MN_BUSY && now - n->sent_ms >= (uint64_t)mon.interval_ms / 2) {
          snprintf(n->last_error, sizeof(n->last_error), "check not answered in %llu ms",
                   (unsigned long long)(now - n->sent_ms));
          n->has_result = true;
          n->result = (pgs_check_result_t){
              .ok = false, .slow = true, .sent_ms = n->sent_ms, .done_ms = now};
        } else if (n->state == MN_CONNECTING &&
                   now - n->connect_start_ms >= (uint64_t)mon.config->server_connect_timeout_ms) {
          snprintf(n->last_error, sizeof(n->last_error), "timeout while connecting");
          close_conn(n);
          n->has_result = true;
          n->result =
              (pgs_check_result_t){.ok = false, .sent_ms = n->connect_start_ms, .done_ms = now};
        }
      }
      pgs_node_state_t before[nn > 0 ? nn : 1];
      memcpy(before, h->nodes, sizeof(*h->nodes) * (size_t)nn);
      int old_writer = h->writer;
      /* The writer first: replicas are measured against its new sample. */
      if (h->writer >= 0 && sh->conns[h->writer]->has_result)
        pgs_health_apply(h, h->writer, &sh->conns[h->writer]->result, &db->bounds);
      for (int i = 0; i < nn; i++)
        if (i != old_writer && sh->conns[i]->has_result)
          pgs_health_apply(h, i, &sh->conns[i]->result, &db->bounds);
      char why[256];
      bool elected = pgs_health_elect(h, why, sizeof(why));
      log_changes(db, sh, before);
      /* Prepared transactions waiting for this shard can be settled now. */
      if (h->writer >= 0 && (h->writer != old_writer || !before[h->writer].up) &&
          h->nodes[h->writer].up)
        mon.twophase_kick = true;
      if (elected) {
        const char *shard = sh->conns[0]->shard;
        if (h->writer < 0)
          pgs_error("%s.%s: NO PRIMARY: %s", db->name, shard, why);
        else if (h->writer != 0)
          pgs_error("%s.%s: PROMOTION: writes now go to %s (%s): %s", db->name, shard,
                    sh->conns[h->writer]->label, node_role(h, h->writer), why);
        else
          pgs_warn("%s.%s: writes go to %s again: %s", db->name, shard, sh->conns[h->writer]->label,
                   why);
      }
      for (int i = 0; i < nn; i++) {
        sh->conns[i]->in_round = false;
        /* A node just marked down reconnects at retry_at_ms, not on a hung
         * line (a reconnect attempt in progress is left to finish). */
        if (before[i].up && !h->nodes[i].up) close_conn(sh->conns[i]);
      }
    }
  }
  publish(now);
}

/* ---- two-phase commit recovery ---- */

static void twophase_work_cb(uv_work_t *req) {
  PGS_UNUSED(req);
  int unsettled = pgs_twophase_recover(mon.twophase_targets, mon.twophase_ntargets, false);
  if (unsettled) pgs_debug("2pc: %d shard(s) not settled in this pass", unsettled);
}

static void twophase_after_cb(uv_work_t *req, int status) {
  PGS_UNUSED(req);
  PGS_UNUSED(status);
  pgs_twophase_targets_free(mon.twophase_targets, mon.twophase_ntargets);
  mon.twophase_targets = NULL;
  mon.twophase_ntargets = 0;
  mon.twophase_running = false;
}

/* Start a recovery pass on the thread pool when one is due: every shard's
 * current writer (none while it is down: the shard waits for the pass after
 * it comes back). */
static void twophase_maybe_pass(uint64_t now) {
  if (mon.stopping || mon.twophase_running) return;
  if (!mon.twophase_kick && now < mon.twophase_next_ms) return;
  if (!pgs_twophase_active()) return;
  int n = 0;
  for (int d = 0; d < mon.ndbs; d++) n += mon.dbs[d].nshards;
  pgs_twophase_target_t *targets = pgs_xcalloc((size_t)(n ? n : 1), sizeof(*targets));
  int k = 0;
  for (int d = 0; d < mon.ndbs; d++) {
    /* mon.dbs was built from mon.config: the same databases, shards and
     * nodes in the same order (dbs_build). */
    const pgs_database_t *cdb = &mon.config->databases[d];
    PGS_ASSERT(!strcmp(cdb->name, mon.dbs[d].name) && cdb->nshards == mon.dbs[d].nshards);
    for (int s = 0; s < mon.dbs[d].nshards; s++, k++) {
      const mon_shard_t *sh = &mon.dbs[d].shards[s];
      const pgs_shard_t *cs = &cdb->shards[s];
      int w = sh->health.writer;
      targets[k].db = pgs_xstrdup(mon.dbs[d].name);
      targets[k].shard = pgs_xstrdup(sh->conns[0]->shard);
      targets[k].config = pgs_config_ref(mon.config);
      targets[k].database = cdb;
      if (w >= 0 && sh->health.nodes[w].up)
        targets[k].node = w == 0 ? &cs->primary : &cs->replicas[w - 1];
    }
  }
  mon.twophase_targets = targets;
  mon.twophase_ntargets = n;
  int rc = uv_queue_work(&mon.loop, &mon.twophase_work, twophase_work_cb, twophase_after_cb);
  if (rc != 0) {
    pgs_warn("2pc: cannot start a recovery pass: %s", uv_strerror(rc));
    twophase_after_cb(&mon.twophase_work, rc);
  } else {
    mon.twophase_running = true;
  }
  mon.twophase_kick = false;
  mon.twophase_next_ms = now + PGS_TWOPHASE_PASS_MS;
}

static void tick_cb(uv_timer_t *timer) {
  PGS_UNUSED(timer);
  uint64_t now = pgs_now_ms();
  if (mon.round_open) finish_round(now);
  start_round(now);
  twophase_maybe_pass(now);
}

/* The periodic pass is due every PGS_TWOPHASE_PASS_MS whatever the
 * lag_check_interval_ms of the checks' tick (an hour, say). */
static void twophase_tick_cb(uv_timer_t *timer) {
  PGS_UNUSED(timer);
  twophase_maybe_pass(pgs_now_ms());
}

/* ---- building state from a config ---- */

static void node_free(mon_node_t *n) {
  close_conn(n);
  free(n->db);
  free(n->shard);
  free(n->conninfo);
  free(n->connstr);
  for (int t = 0; t < n->ntables; t++) free(n->layout[t]);
  free(n->layout);
  free(n->layout_sql);
  free(n->coll_db);
  free(n->coll_list);
  moves_clear(n);
  free(n);
}

/* The query asking a primary for DB's sharded tables' columns, one row per
 * table in the config's order: the names PostgreSQL would list for
 * INSERT without a column list, quoted as needed. NULL: no sharded table. */
static char *layout_sql_build(const pgs_database_t *db) {
  if (db->shardmap.ntables == 0) return NULL;
  pgs_buf_t b;
  pgs_buf_init(&b);
  static const char head[] =
      "SELECT (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM "
      "pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass(t) AND attnum > 0 AND "
      "NOT attisdropped) FROM unnest(ARRAY[";
  pgs_buf_put(&b, head, sizeof(head) - 1);
  for (int t = 0; t < db->shardmap.ntables; t++) {
    if (t > 0) pgs_buf_put_u8(&b, ',');
    pgs_buf_put_u8(&b, '\'');
    for (const char *c = db->shardmap.tables[t].name; *c; c++) {
      if (*c == '\'') pgs_buf_put_u8(&b, '\'');
      pgs_buf_put_u8(&b, (uint8_t)*c);
    }
    pgs_buf_put_u8(&b, '\'');
  }
  static const char tail[] = "]::text[]) WITH ORDINALITY AS x(t, n) ORDER BY n";
  pgs_buf_put(&b, tail, sizeof(tail));
  return (char *)b.data;
}

/* N asks for DB's layout (the tables' order may have changed: forgotten). */
static void node_layout_reset(mon_node_t *n, const pgs_database_t *db) {
  for (int t = 0; t < n->ntables; t++) free(n->layout[t]);
  free(n->layout);
  free(n->layout_sql);
  n->layout_sql = layout_sql_build(db);
  n->ntables = db->shardmap.ntables;
  n->layout = n->ntables ? pgs_xcalloc((size_t)n->ntables, sizeof(char *)) : NULL;
  n->layout_ms = 0;
}

static void dbs_free(mon_db_t *dbs, int ndbs, bool free_nodes) {
  for (int d = 0; d < ndbs; d++) {
    for (int s = 0; s < dbs[d].nshards; s++) {
      mon_shard_t *sh = &dbs[d].shards[s];
      if (free_nodes)
        for (int i = 0; i < sh->health.nnodes; i++)
          if (sh->conns[i]) node_free(sh->conns[i]);
      free(sh->conns);
      free(sh->health.nodes);
    }
    free(dbs[d].shards);
    free(dbs[d].name);
    pgs_collcat_unref(dbs[d].collcat);
  }
  free(dbs);
}

static int interval_of(const pgs_config_t *config) {
  int interval = 0;
  for (int d = 0; d < config->ndatabases; d++) {
    int v = config->databases[d].lag_check_interval_ms;
    if (interval == 0 || v < interval) interval = v;
  }
  if (interval == 0) interval = 100;
  return interval < MIN_INTERVAL_MS ? MIN_INTERVAL_MS : interval;
}

/* Take the old node matching (db, shard, conninfo) out of OLD, or NULL. */
static mon_node_t *take_old(mon_db_t *old, int nold, const char *db, const char *shard,
                            const char *conninfo, pgs_node_state_t *state, int *old_index,
                            mon_shard_t **old_shard) {
  for (int d = 0; d < nold; d++) {
    if (strcmp(old[d].name, db) != 0) continue;
    for (int s = 0; s < old[d].nshards; s++) {
      mon_shard_t *sh = &old[d].shards[s];
      for (int i = 0; i < sh->health.nnodes; i++) {
        mon_node_t *n = sh->conns[i];
        if (n == NULL || strcmp(n->shard, shard) != 0 || strcmp(n->conninfo, conninfo) != 0)
          continue;
        *state = sh->health.nodes[i];
        *old_index = i;
        *old_shard = sh;
        sh->conns[i] = NULL;
        return n;
      }
    }
  }
  return NULL;
}

static mon_shard_t *find_old_shard(mon_db_t *old, int nold, const char *db, const char *shard) {
  for (int d = 0; d < nold; d++) {
    if (strcmp(old[d].name, db) != 0) continue;
    for (int s = 0; s < old[d].nshards; s++) {
      mon_shard_t *sh = &old[d].shards[s];
      for (int i = 0; i < sh->health.nnodes; i++)
        if (sh->conns[i] && !strcmp(sh->conns[i]->shard, shard)) return sh;
    }
  }
  return NULL;
}

/* Health and connections for CONFIG; nodes found in OLD (same database,
 * shard name and conninfo) move over with their state and connection, the
 * rest of OLD is left for the caller to free. */
static mon_db_t *dbs_build(const pgs_config_t *config, mon_db_t *old, int nold, int interval) {
  mon_db_t *dbs = pgs_xcalloc((size_t)(config->ndatabases ? config->ndatabases : 1), sizeof(*dbs));
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *cdb = &config->databases[d];
    mon_db_t *db = &dbs[d];
    db->name = pgs_xstrdup(cdb->name);
    db->bounds.max_lag_ms = cdb->max_replica_lag_ms;
    db->bounds.max_lag_bytes = cdb->max_replica_lag_bytes;
    db->bounds.interval_ms = interval;
    db->bounds.down_failures = cdb->node_down_failures;
    db->nshards = cdb->nshards;
    db->shards = pgs_xcalloc((size_t)(cdb->nshards ? cdb->nshards : 1), sizeof(*db->shards));
    for (int s = 0; s < cdb->nshards; s++) {
      const pgs_shard_t *cs = &cdb->shards[s];
      mon_shard_t *sh = &db->shards[s];
      int nn = 1 + cs->nreplicas;
      /* Before nodes are taken out of it: the old shard's writer and history. */
      mon_shard_t *old_sh = find_old_shard(old, nold, cdb->name, cs->name);
      int old_writer = old_sh ? old_sh->health.writer : -1;
      int old_history = old_sh ? old_sh->health.history_node : -1;
      sh->health.nnodes = nn;
      sh->health.nodes = pgs_xcalloc((size_t)nn, sizeof(*sh->health.nodes));
      sh->health.writer = 0;
      sh->health.history_node = 0;
      sh->conns = pgs_xcalloc((size_t)nn, sizeof(*sh->conns));
      int writer = -2, history = -2;
      for (int i = 0; i < nn; i++) {
        const pgs_node_t *cn = i == 0 ? &cs->primary : &cs->replicas[i - 1];
        pgs_node_state_t state;
        int old_index = -1;
        mon_shard_t *from = NULL;
        mon_node_t *n =
            take_old(old, nold, cdb->name, cs->name, cn->conninfo, &state, &old_index, &from);
        if (n == NULL) {
          n = pgs_xcalloc(1, sizeof(*n));
          n->db = pgs_xstrdup(cdb->name);
          n->shard = pgs_xstrdup(cs->name);
          n->conninfo = pgs_xstrdup(cn->conninfo);
          n->poll_fd = -1;
          n->moves_table = -1;
          memset(&state, 0, sizeof(state));
          state.up = true; /* until checks say otherwise */
          state.in_recovery = i > 0;
          state.lag_ms = -1;
          /* Never checked, never misbehaved: the first check within bounds
           * makes a replica readable. Later rejoins need every check. */
          state.good_checks = i > 0 ? PGS_REJOIN_CHECKS - 1 : 0;
        } else if (from == old_sh) {
          if (old_index == old_writer) writer = i;
          if (old_index == old_history) history = i;
        }
        free(n->connstr);
        n->connstr = conninfo_build(config, cdb, cn);
        node_layout_reset(n, cdb);
        n->configured_primary = i == 0;
        snprintf(n->label, sizeof(n->label), "%s.%s %s %s:%d", cdb->name, cs->name,
                 i == 0 ? "primary" : "replica", cn->host, cn->port);
        sh->conns[i] = n;
        sh->health.nodes[i] = state;
      }
      if (old_sh && history >= 0) {
        sh->health.history = old_sh->health.history;
        sh->health.history_node = history;
      }
      if (old_sh) sh->health.writer = writer >= 0 ? writer : (old_writer < 0 ? -1 : 0);
      if (sh->health.writer >= 0 && sh->health.writer != sh->health.history_node) {
        memset(&sh->health.history, 0, sizeof(sh->health.history));
        sh->health.history_node = sh->health.writer;
      }
    }
  }
  return dbs;
}

/* ---- the thread ---- */

static void close_all(void) {
  for (int d = 0; d < mon.ndbs; d++)
    for (int s = 0; s < mon.dbs[d].nshards; s++)
      for (int i = 0; i < mon.dbs[d].shards[s].health.nnodes; i++)
        close_conn(mon.dbs[d].shards[s].conns[i]);
}

static void apply_config(pgs_config_t *config) {
  /* The round in progress is abandoned (its answers would be for nodes that
   * may be gone); the kept connections finish their query and go on. */
  mon.round_open = false;
  int interval = interval_of(config);
  mon_db_t *old = mon.dbs;
  int nold = mon.ndbs;
  mon.dbs = dbs_build(config, old, nold, interval);
  mon.ndbs = config->ndatabases;
  dbs_free(old, nold, true); /* nodes not taken over */
  pgs_config_unref(mon.config);
  mon.config = config;
  for (int d = 0; d < mon.ndbs; d++)
    for (int s = 0; s < mon.dbs[d].nshards; s++)
      for (int i = 0; i < mon.dbs[d].shards[s].health.nnodes; i++)
        mon.dbs[d].shards[s].conns[i]->in_round = false;
  /* Workers route on a snapshot of their own config only: give them one now. */
  publish(pgs_now_ms());
  /* A database now under 2pc needs its decision tables checked before its
   * first cross-shard commit. */
  mon.twophase_kick = true;
  mon.interval_ms = interval;
  uv_timer_start(&mon.timer, tick_cb, 0, (uint64_t)interval);
  pgs_info("monitor: checking every node each %d ms", interval);
}

static void wakeup_cb(uv_async_t *async) {
  PGS_UNUSED(async);
  uv_mutex_lock(&mon.lock);
  pgs_config_t *config = mon.mbox_config;
  mon.mbox_config = NULL;
  bool stop = mon.mbox_stop;
  bool publish_now = mon.mbox_publish;
  mon.mbox_publish = false;
  uv_mutex_unlock(&mon.lock);
  if (mon.stopping) {
    if (config) pgs_config_unref(config);
    return;
  }
  if (stop) {
    if (config) pgs_config_unref(config);
    mon.stopping = true;
    mon.round_open = false;
    close_all();
    uv_timer_stop(&mon.timer);
    uv_close((uv_handle_t *)&mon.timer, NULL);
    uv_close((uv_handle_t *)&mon.twophase_timer, NULL);
    uv_close((uv_handle_t *)&mon.wakeup, NULL);
    return;
  }
  if (config)
    apply_config(config);
  else if (publish_now)
    publish(pgs_now_ms());
}

static void monitor_main(void *arg) {
  PGS_UNUSED(arg);
  uv_run(&mon.loop, UV_RUN_DEFAULT);
  pgs_debug("monitor stopped");
}

int pgs_monitor_start(pgs_config_t *config, pgs_publish_fn publish_fn) {
  int rc;
  PGS_ASSERT(!mon.started);
  memset(&mon, 0, sizeof(mon));
  mon.publish = publish_fn;
  if ((rc = uv_loop_init(&mon.loop)) != 0) goto fail_loop;
  if ((rc = uv_mutex_init(&mon.lock)) != 0) goto fail_mutex;
  if ((rc = uv_async_init(&mon.loop, &mon.wakeup, wakeup_cb)) != 0) goto fail_async;
  if ((rc = uv_timer_init(&mon.loop, &mon.timer)) != 0) goto fail_timer;
  if ((rc = uv_timer_init(&mon.loop, &mon.twophase_timer)) != 0) goto fail_twophase_timer;
  mon.config = pgs_config_ref(config);
  mon.interval_ms = interval_of(config);
  mon.dbs = dbs_build(config, NULL, 0, mon.interval_ms);
  mon.ndbs = config->ndatabases;
  /* main.c ran the startup recovery pass just now. */
  mon.twophase_next_ms = pgs_now_ms() + PGS_TWOPHASE_PASS_MS;
  /* Routing never starts without a snapshot: every node up, the configured
   * primaries writing, no replica readable before its first check. */
  publish(pgs_now_ms());
  uv_timer_start(&mon.timer, tick_cb, 0, (uint64_t)mon.interval_ms);
  uv_timer_start(&mon.twophase_timer, twophase_tick_cb, PGS_TWOPHASE_PASS_MS, PGS_TWOPHASE_PASS_MS);
  if ((rc = uv_thread_create(&mon.thread, monitor_main, NULL)) != 0) goto fail_thread;
  __atomic_store_n(&mon.started, true, __ATOMIC_RELEASE);
  pgs_info("monitor: checking every node each %d ms", mon.interval_ms);
  return 0;

fail_thread:
  dbs_free(mon.dbs, mon.ndbs, true);
  mon.dbs = NULL;
  pgs_config_unref(mon.config);
  mon.config = NULL;
  uv_close((uv_handle_t *)&mon.twophase_timer, NULL);
fail_twophase_timer:
  uv_close((uv_handle_t *)&mon.timer, NULL);
fail_timer:
  uv_close((uv_handle_t *)&mon.wakeup, NULL);
  uv_run(&mon.loop, UV_RUN_DEFAULT); /* runs the close callbacks */
fail_async:
  uv_mutex_destroy(&mon.lock);
fail_mutex:
  uv_loop_close(&mon.loop);
fail_loop:
  pgs_error("monitor: %s", uv_strerror(rc));
  return rc;
}

void pgs_monitor_reload(pgs_config_t *config) {
  if (!mon.started) return;
  uv_mutex_lock(&mon.lock);
  if (mon.mbox_config) pgs_config_unref(mon.mbox_config);
  mon.mbox_config = pgs_config_ref(config);
  uv_mutex_unlock(&mon.lock);
  uv_async_send(&mon.wakeup);
}

bool pgs_monitor_ban(const char *host, int port, bool banned) {
  char name[300];
  snprintf(name, sizeof(name), "%s:%d", host, port);
  bool ok = true;
  /* Not before the monitor runs (its lock is not made yet) or once stopping. */
  if (!__atomic_load_n(&mon.started, __ATOMIC_ACQUIRE)) return false;
  uv_mutex_lock(&mon.lock);
  int at = 0;
  while (at < mon.nbans && strcmp(mon.bans[at], name) != 0) at++;
  if (banned && at == mon.nbans) {
    if (mon.nbans < PGS_MONITOR_MAX_BANS)
      snprintf(mon.bans[mon.nbans++], sizeof(mon.bans[0]), "%s", name);
    else
      ok = false;
  } else if (!banned && at < mon.nbans) {
    memmove(mon.bans[at], mon.bans[at + 1], sizeof(mon.bans[0]) * (size_t)(mon.nbans - at - 1));
    mon.nbans--;
  }
  mon.mbox_publish = true;
  uv_mutex_unlock(&mon.lock);
  uv_async_send(&mon.wakeup);
  return ok;
}

void pgs_monitor_stop(void) {
  if (!mon.started) return;
  uv_mutex_lock(&mon.lock);
  mon.mbox_stop = true;
  uv_mutex_unlock(&mon.lock);
  uv_async_send(&mon.wakeup);
  uv_thread_join(&mon.thread);
  /* Every handle is closed: the loop ended only after their callbacks. */
  (void)uv_loop_close(&mon.loop);
  uv_mutex_destroy(&mon.lock);
  if (mon.mbox_config) pgs_config_unref(mon.mbox_config);
  dbs_free(mon.dbs, mon.ndbs, true);
  pgs_config_unref(mon.config);
  __atomic_store_n(&mon.started, false, __ATOMIC_RELEASE);
  mon.dbs = NULL;
  mon.config = NULL;
}
