/*
 * pool.c — server connections for one (database, user, shard node), shared
 * by the worker threads.
 *
 * Each worker has its own pool object for a node (pgs_pool_t: its servers
 * and its waiting clients, touched only on its thread), and the workers'
 * pools of one key share a pgs_pool_shared_t, which makes them one pool:
 *  - pool_size is one limit for the node, database and user across the
 *    process (as PgBouncer's default_pool_size): a server is counted in
 *    node->servers from the moment its connection attempt starts until it
 *    closes, wherever it is.
 *  - A worker whose clients wait while the node is at its limit says so
 *    (need[worker]) and asks the other workers to give it a server: a
 *    worker hands an idle server over at once (donate_task), and one it
 *    frees goes to the needing worker when its own clients do not wait, or
 *    when it holds more of the node's servers than the needing worker
 *    (each keeps a fair share under load). A server moves between threads
 *    by closing its libuv handle on one loop and opening a dup of the
 *    socket on the other's (pgs_server_detach/attach): it keeps its
 *    backend, TLS session and prepared statements.
 *  - The login parameters a server reported (server_version, ...) are
 *    learned once for every worker, so a client logs in on any worker
 *    without a server of its own.
 * The fast path (a server idle on the client's own worker) touches no
 * shared state; the shared counters change only when servers open, close
 * or move and when clients start or stop waiting at the limit.
 *
 * Every server is on exactly one of its pool's lists, matching its state:
 * connecting, idle, active (linked to a client, or resetting); a moving
 * server is on none. Clients that need a server and find none idle wait in
 * FIFO order in waiters; a freed server goes straight to the oldest waiter.
 *
 * Under session pooling a client's startup parameters are its servers'
 * startup parameters, so a pool also has those in its key: pools of one
 * node that differ only by them are siblings (their servers are not
 * interchangeable), and pool_size bounds the servers of all of them
 * together. A sibling at the limit makes room by closing an idle server of
 * another (maybe_connect, donate_task), or takes a server its owner frees
 * (pgs_pool_server_free).
 */
#include <string.h>

#include <libpq-fe.h>

#include "pgshard/log.h"
#include "pgshard/mailbox.h"
#include "pgshard/pool.h"
#include "pgshard/server.h"

/* The most workers there are (the config's limit on workers). */
#define POOL_MAX_WORKERS 64

/* One node for one database and user, siblings together. Lives as long as
 * the process. */
typedef struct pgs_pool_node {
  struct pgs_pool_node *next;
  char *key; /* database, user, shard and node conninfo, each ending with a NUL */
  size_t keylen;
  int servers; /* atomic: open or opening, every worker and sibling */
  int limit;   /* atomic: pool_size, as the config a worker applied last says */
} pgs_pool_node_t;

/* The workers' pools of one key (node and startup options). Lives as long
 * as the process. Atomics, except the parameters (under lock). */
typedef struct pgs_pool_shared {
  struct pgs_pool_shared *next;
  char *key; /* the node's key, then the startup options */
  size_t keylen;
  pgs_pool_node_t *node;
  int total_need;                 /* sum of need */
  int need[POOL_MAX_WORKERS];     /* clients waiting on worker i that its own
                                     connection attempts do not cover */
  int incoming[POOL_MAX_WORKERS]; /* servers on their way to worker i */
  int held[POOL_MAX_WORKERS];     /* servers worker i has (or opens) */
  int asked[POOL_MAX_WORKERS];    /* 1: a donate_task is posted to worker i */
  uv_mutex_t lock;
  pgs_param_t params[PGS_MAX_WELCOME_PARAMS];
  int nparams; /* -1: none learned yet */
} pgs_pool_shared_t;

static uv_once_t registry_once = UV_ONCE_INIT;
static uv_mutex_t registry_lock;
static pgs_pool_node_t *nodes;
static pgs_pool_shared_t *shareds;

static void registry_init(void) { uv_mutex_init(&registry_lock); }

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#define ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_ACQ_REL)

static void key_put(pgs_buf_t *b, const char *s) { pgs_buf_put(b, s, strlen(s) + 1); }

/* The shared part of the pools of (DBNAME, USERNAME, SHARD, CONNINFO,
 * OPTIONS), made on first use. */
static pgs_pool_shared_t *shared_for(const char *dbname, const char *username, const char *shard,
                                     const char *conninfo, const char *options) {
  pgs_buf_t b;
  pgs_buf_init(&b);
  key_put(&b, dbname);
  key_put(&b, username);
  key_put(&b, shard);
  key_put(&b, conninfo);
  size_t nodelen = b.len;
  if (options) key_put(&b, options);
  uv_once(&registry_once, registry_init);
  uv_mutex_lock(&registry_lock);
  pgs_pool_shared_t *sh = shareds;
  while (sh && (sh->keylen != b.len || memcmp(sh->key, b.data, b.len) != 0)) sh = sh->next;
  if (sh == NULL) {
    pgs_pool_node_t *node = nodes;
    while (node && (node->keylen != nodelen || memcmp(node->key, b.data, nodelen) != 0))
      node = node->next;
    if (node == NULL) {
      node = pgs_xcalloc(1, sizeof(*node));
      node->key = pgs_xmalloc(nodelen);
      memcpy(node->key, b.data, nodelen);
      node->keylen = nodelen;
      node->next = nodes;
      nodes = node;
    }
    sh = pgs_xcalloc(1, sizeof(*sh));
    sh->key = (char *)b.data;
    sh->keylen = b.len;
    sh->node = node;
    sh->nparams = -1;
    uv_mutex_init(&sh->lock);
    sh->next = shareds;
    shareds = sh;
  } else {
    free(b.data);
  }
  uv_mutex_unlock(&registry_lock);
  return sh;
}

/* Count one more server of POOL's node if the process is under its limit. */
static bool reserve_server(pgs_pool_t *pool) {
  pgs_pool_node_t *node = pool->shared->node;
  int n = LOAD(node->servers);
  while (n < pool->size)
    if (__atomic_compare_exchange_n(&node->servers, &n, n + 1, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
      ADD(pool->shared->held[pool->worker->index], 1);
      return true;
    }
  return false;
}

static int node_total(const pgs_pool_t *pool) { return LOAD(pool->shared->node->servers); }

/* Tell the other workers how many of POOL's waiting clients its own
 * connection attempts do not cover. */
static void publish_need(pgs_pool_t *pool) {
  int need = pool->nwaiters - pool->nconnecting;
  if (need < 0) need = 0;
  if (need == pool->published_need) return;
  pgs_pool_shared_t *sh = pool->shared;
  STORE(sh->need[pool->worker->index], need);
  ADD(sh->total_need, need - pool->published_need);
  pool->published_need = need;
}

/* The worker other than POOL's whose clients need a server of its key
 * most and are not sent one yet; -1: none. With FAIR, only one holding
 * fewer servers than POOL's worker (the caller's own clients wait too). */
static int needing_worker(const pgs_pool_t *pool, bool fair) {
  pgs_pool_shared_t *sh = pool->shared;
  if (LOAD(sh->total_need) - pool->published_need <= 0) return -1;
  int self = pool->worker->index, best = -1, best_need = 0;
  int n = pgs_mailbox_count();
  int mine = LOAD(sh->held[self]);
  for (int i = 0; i < n && i < POOL_MAX_WORKERS; i++) {
    if (i == self) continue;
    int need = LOAD(sh->need[i]) - LOAD(sh->incoming[i]);
    if (need <= best_need) continue;
    if (fair && LOAD(sh->held[i]) + 1 >= mine) continue;
    best = i;
    best_need = need;
  }
  return best;
}

/* The clients waiting in pools hear of servers through these (client.c):
 * pool.c calls nothing above it. */
static const pgs_pool_waiter_ops_t *waiter;

void pgs_pool_set_waiter_ops(const pgs_pool_waiter_ops_t *ops) { waiter = ops; }

static const pgs_node_t *shard_node(const pgs_database_t *db, int shard, int index) {
  const pgs_shard_t *sh = &db->shards[shard];
  return index == 0 ? &sh->primary : &sh->replicas[index - 1];
}

/* The node of SHARD whose conninfo is CONNINFO: its index, or -1. */
static int find_node(const pgs_database_t *db, int shard, const char *conninfo) {
  const pgs_shard_t *sh = &db->shards[shard];
  for (int i = 0; i <= sh->nreplicas; i++)
    if (!strcmp(shard_node(db, shard, i)->conninfo, conninfo)) return i;
  return -1;
}

/* The node's conninfo for USER, with STARTUP_OPTIONS (libpq options, may
 * be NULL) after any options the node's own conninfo gives. */
/* Whether every client of DB routes (several shards, or replicas): its
 * servers then run with standard_conforming_strings on from login, so no
 * role or database default, RESET or DISCARD ALL can make a server read a
 * string otherwise than pgshard's lexer did (request.c refuses a client's
 * own attempts to turn it off). */
static bool always_routes(const pgs_database_t *db) {
  if (db->nshards > 1) return true;
  for (int i = 0; i < db->nshards; i++)
    if (db->shards[i].nreplicas > 0) return true;
  return false;
}

static char *build_conninfo(const pgs_config_t *config, const pgs_database_t *db,
                            const pgs_user_t *user, int shard, int index,
                            const char *startup_options) {
  char *conninfo = pgs_node_conninfo(config, db, shard_node(db, shard, index), user,
                                     "fallback_application_name", "pgshard");
  const char *forced = always_routes(db) ? "-c standard_conforming_strings=on" : NULL;
  if (startup_options == NULL && forced == NULL) return conninfo;
  const char *node_options = NULL;
  PQconninfoOption *parsed = PQconninfoParse(conninfo, NULL);
  for (PQconninfoOption *o = parsed; o && o->keyword; o++)
    if (!strcmp(o->keyword, "options") && o->val && o->val[0]) node_options = o->val;
  pgs_buf_t b;
  pgs_buf_init(&b);
  pgs_buf_put(&b, conninfo, strlen(conninfo));
  pgs_buf_put(&b, " options='", 10);
  /* The node's own options, the client's startup parameters (session
   * pooling), then pgshard's: a later -c wins. */
  const char *parts[] = {node_options, startup_options, forced};
  bool first = true;
  for (size_t i = 0; i < PGS_ARRAY_LEN(parts); i++) {
    if (parts[i] == NULL) continue;
    if (!first) pgs_buf_put(&b, " ", 1);
    first = false;
    for (const char *p = parts[i]; *p; p++) {
      if (*p == '\'' || *p == '\\') pgs_buf_put(&b, "\\", 1);
      pgs_buf_put(&b, p, 1);
    }
  }
  pgs_buf_put(&b, "'", 1);
  /* PostgreSQL applies options before the startup packet's own parameters,
   * among them the application_name libpq sends: drop pgshard's fallback
   * when the client named its own. */
  if (startup_options && (!strncmp(startup_options, "-c application_name=", 20) ||
                          strstr(startup_options, " -c application_name=")))
    pgs_buf_put(&b, " fallback_application_name=''", 29);
  pgs_buf_put_u8(&b, 0);
  if (parsed) PQconninfoFree(parsed);
  free(conninfo);
  return (char *)b.data;
}

/* Whether A and B hold servers of one node for one database and user. */
static bool same_node(const pgs_pool_t *a, const pgs_pool_t *b) {
  return !strcmp(a->dbname, b->dbname) && !strcmp(a->username, b->username) &&
         !strcmp(a->shard, b->shard) && !strcmp(a->node_conninfo, b->node_conninfo);
}

static bool same_options(const char *a, const char *b) {
  return a == b || (a && b && !strcmp(a, b));
}

/* The login parameters another worker's server reported, if POOL has none. */
static void learn_params(pgs_pool_t *pool) {
  pgs_pool_shared_t *sh = pool->shared;
  uv_mutex_lock(&sh->lock);
  if (sh->nparams >= 0) {
    memcpy(pool->params, sh->params, sizeof(pgs_param_t) * (size_t)sh->nparams);
    pool->nparams = sh->nparams;
    pool->have_params = true;
  }
  uv_mutex_unlock(&sh->lock);
}

pgs_pool_t *pgs_pool_get(pgs_worker_t *worker, const pgs_config_t *config, const pgs_database_t *db,
                         const pgs_user_t *user, int shard, int node, const char *startup_options) {
  PGS_ASSERT(shard >= 0 && shard < db->nshards);
  const char *conninfo = shard_node(db, shard, node)->conninfo;
  bool siblings = false;
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    if (!strcmp(pool->dbname, db->name) && !strcmp(pool->username, user->name) &&
        !strcmp(pool->shard, db->shards[shard].name) && !strcmp(pool->node_conninfo, conninfo)) {
      if (same_options(pool->startup_options, startup_options)) {
        if (!pool->have_params) learn_params(pool);
        return pool;
      }
      siblings = true;
    }
  }
  pgs_pool_t *pool = pgs_xcalloc(1, sizeof(*pool));
  pool->worker = worker;
  snprintf(pool->dbname, sizeof(pool->dbname), "%s", db->name);
  snprintf(pool->username, sizeof(pool->username), "%s", user->name);
  snprintf(pool->shard, sizeof(pool->shard), "%s", db->shards[shard].name);
  pool->node_conninfo = pgs_xstrdup(conninfo);
  pool->startup_options = startup_options ? pgs_xstrdup(startup_options) : NULL;
  pool->node = node;
  pool->node_up = true; /* until a health snapshot says otherwise */
  pool->shared = shared_for(pool->dbname, pool->username, pool->shard, conninfo, startup_options);
  learn_params(pool);
  pgs_list_init(&pool->idle);
  pgs_list_init(&pool->active);
  pgs_list_init(&pool->connecting);
  pgs_list_init(&pool->waiters);
  pgs_pool_apply_config(pool, worker->config);
  if (pool->gone) {
    /* A node or user the running config dropped, for a client still on the
     * config that has it (it finishes its transaction there). */
    pool->conninfo = build_conninfo(config, db, user, shard, node, startup_options);
    pool->mode = db->pool_mode;
    pool->size = db->pool_size;
  }
  pgs_list_append(&worker->pools, &pool->link);
  if (siblings) {
    for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next) {
      pgs_pool_t *other = pgs_container_of(l, pgs_pool_t, link);
      if (same_node(other, pool)) other->has_siblings = true;
    }
  }
  return pool;
}

void pgs_pool_apply_config(pgs_pool_t *pool, const pgs_config_t *config) {
  const pgs_database_t *db = pgs_config_find_database(config, pool->dbname);
  const pgs_user_t *user = pgs_config_find_user(config, pool->username);
  int shard = db ? pgs_shardmap_find_shard(db, pool->shard) : -1;
  int node = shard >= 0 ? find_node(db, shard, pool->node_conninfo) : -1;
  if (node < 0 || user == NULL) {
    /* Gone: clients on an older config finish on it; idle servers go now,
     * the others when they are freed with nobody waiting. */
    pool->gone = true;
    while (!pgs_list_empty(&pool->idle))
      pgs_server_close(pgs_container_of(pool->idle.next, pgs_server_t, link),
                       "node or user no longer configured");
    return;
  }
  pool->gone = false;
  pool->node = node;
  pool->node_up = true; /* until a health snapshot says otherwise */
  free(pool->conninfo);
  pool->conninfo = build_conninfo(config, db, user, shard, node, pool->startup_options);
  pool->mode = db->pool_mode;
  pool->size = db->pool_size;
  STORE(pool->shared->node->limit, pool->size);
}

static pgs_list_t *list_for(pgs_pool_t *pool, pgs_server_state_t state, int **count) {
  switch (state) {
  case PGS_SV_CONNECTING:
    *count = &pool->nconnecting;
    return &pool->connecting;
  case PGS_SV_IDLE:
    *count = &pool->nidle;
    return &pool->idle;
  case PGS_SV_ACTIVE:
  case PGS_SV_RESETTING:
    *count = &pool->nactive;
    return &pool->active;
  case PGS_SV_CLOSING:
  case PGS_SV_MOVING:
    break;
  }
  *count = NULL;
  return NULL;
}

static const char *const server_state_names[] = {"connecting", "idle",    "active",
                                                 "resetting",  "closing", "moving"};

/* The one place a server changes state: moves it between lists. */
void pgs_pool_set_state(pgs_server_t *server, pgs_server_state_t state) {
  pgs_pool_t *pool = server->pool;
  int *count;
  PGS_ASSERT(server->state != PGS_SV_CLOSING);
  PGS_ASSERT(state != PGS_SV_CONNECTING);
  pgs_list_t *from = list_for(pool, server->state, &count);
  if (from) {
    pgs_list_remove(&server->link);
    (*count)--;
  }
  pgs_list_t *to = list_for(pool, state, &count);
  if (to) {
    if (state == PGS_SV_IDLE)
      pgs_list_append(&pool->idle, &server->link); /* LIFO reuse takes from the tail */
    else
      pgs_list_append(to, &server->link);
    (*count)++;
  } else if (state == PGS_SV_MOVING) {
    pgs_list_init(&server->link);
  } else {
    pgs_list_append(&server->worker->closing, &server->link);
    ADD(pool->shared->node->servers, -1);
    ADD(pool->shared->held[server->worker->index], -1);
  }
  pgs_debug("server %d (%s/%s): %s -> %s", server->backend_pid, pool->dbname, pool->username,
            server_state_names[server->state], server_state_names[state]);
  server->state = state;
  server->state_since_ms = pgs_now_ms();
}

static int total_servers(const pgs_pool_t *pool) {
  return pool->nidle + pool->nactive + pool->nconnecting;
}

/* A sibling of POOL with clients waiting that no connection attempt serves. */
static pgs_pool_t *waiting_sibling(const pgs_pool_t *pool) {
  if (!pool->has_siblings) return NULL;
  for (pgs_list_t *l = pool->worker->pools.next; l != &pool->worker->pools; l = l->next) {
    pgs_pool_t *other = pgs_container_of(l, pgs_pool_t, link);
    if (other != pool && same_node(other, pool) && other->nwaiters > other->nconnecting)
      return other;
  }
  return NULL;
}

/* Close the oldest idle server of a sibling of POOL on this worker, to make
 * room for one of POOL's own. Returns whether there was one. */
static bool close_idle_sibling(pgs_pool_t *pool) {
  if (!pool->has_siblings) return false;
  for (pgs_list_t *l = pool->worker->pools.next; l != &pool->worker->pools; l = l->next) {
    pgs_pool_t *other = pgs_container_of(l, pgs_pool_t, link);
    if (other == pool || !same_node(other, pool) || other->nidle == 0) continue;
    pgs_server_close(pgs_container_of(other->idle.next, pgs_server_t, link),
                     "pool_size reached: room for other startup parameters");
    return true;
  }
  return false;
}

/* ---- servers moving between workers ---- */

static void donate_task(pgs_worker_t *worker, void *arg);

/* Ask every other worker to hand POOL's worker an idle server of its key
 * (one task per worker at a time). */
static void ask_donors(pgs_pool_t *pool) {
  pgs_pool_shared_t *sh = pool->shared;
  int self = pool->worker->index, n = pgs_mailbox_count();
  for (int i = 0; i < n && i < POOL_MAX_WORKERS; i++) {
    int no = 0;
    if (i == self || !__atomic_compare_exchange_n(&sh->asked[i], &no, 1, false, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_ACQUIRE))
      continue;
    if (!pgs_mailbox_post(i, donate_task, sh)) STORE(sh->asked[i], 0);
  }
}

static void arrive_task(pgs_worker_t *worker, void *arg);
static void maybe_connect(pgs_pool_t *pool);

/* SERVER's handle is closed on the giving worker: post it to the other. */
static void moved_off(uv_handle_t *handle) {
  pgs_server_t *server = ((pgs_io_t *)handle->data)->owner;
  if (pgs_mailbox_post(server->move_to, arrive_task, server)) return;
  /* That worker is stopping: the server stays here, and closes. */
  pgs_pool_shared_t *sh = server->pool->shared;
  ADD(sh->incoming[server->move_to], -1);
  ADD(sh->held[server->move_to], -1);
  ADD(sh->held[server->worker->index], 1);
  if (pgs_server_attach(server, server->worker) != 0)
    pgs_server_close(server, "cannot move to another worker");
  else
    pgs_server_close(server, "its worker is stopping");
}

/* Hand SERVER (idle or just freed, of POOL) to worker TO. */
static bool give_server(pgs_pool_t *pool, pgs_server_t *server, int to) {
  if (!pgs_server_movable(server)) return false;
  pgs_pool_shared_t *sh = pool->shared;
  pgs_pool_set_state(server, PGS_SV_MOVING);
  server->move_to = to;
  ADD(sh->incoming[to], 1);
  ADD(sh->held[to], 1);
  ADD(sh->held[pool->worker->index], -1);
  if (pgs_server_detach(server, moved_off) != 0) {
    ADD(sh->incoming[to], -1);
    ADD(sh->held[to], -1);
    ADD(sh->held[pool->worker->index], 1);
    pgs_server_close(server, "cannot move to another worker");
    return true;
  }
  pgs_debug("server %d (%s/%s): to worker %d", server->backend_pid, pool->dbname, pool->username,
            to);
  return true;
}

/* Worker WORKER's pool of SH, if it has one. */
static pgs_pool_t *pool_of(pgs_worker_t *worker, const pgs_pool_shared_t *sh) {
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    if (pool->shared == sh) return pool;
  }
  return NULL;
}

/* On a worker asked for servers of SH: its idle ones go to the workers
 * that need them; at the limit with none to give, an idle server of a
 * sibling makes room. */
static void donate_task(pgs_worker_t *worker, void *arg) {
  pgs_pool_shared_t *sh = arg;
  STORE(sh->asked[worker->index], 0);
  pgs_pool_t *pool = pool_of(worker, sh);
  bool gave = false;
  int to;
  while (pool && !pool->gone && pool->nidle > 0 && (to = needing_worker(pool, false)) >= 0) {
    if (!give_server(pool, pgs_container_of(pool->idle.prev, pgs_server_t, link), to)) break;
    gave = true;
  }
  if (gave || LOAD(sh->node->servers) < LOAD(sh->node->limit)) return;
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next) {
    pgs_pool_t *other = pgs_container_of(l, pgs_pool_t, link);
    if (other->shared != sh && other->shared->node == sh->node && other->nidle > 0 &&
        other->nwaiters == 0) {
      pgs_server_close(pgs_container_of(other->idle.next, pgs_server_t, link),
                       "pool_size reached: room for other startup parameters");
      return;
    }
  }
}

/* On the worker SERVER was given to. */
static void arrive_task(pgs_worker_t *worker, void *arg) {
  pgs_server_t *server = arg;
  pgs_pool_shared_t *sh = server->pool->shared;
  ADD(sh->incoming[worker->index], -1);
  /* A worker that needs a server of SH has a pool of it (need is only
   * published by one), and pools last as long as their worker. */
  pgs_pool_t *pool = pool_of(worker, sh);
  PGS_ASSERT(pool != NULL);
  server->pool = pool;
  /* Its node went down since it was opened (as this worker heard it): it
   * is not reused here either. */
  if (server->down_epoch != pool->down_epoch) server->dirty = true;
  if (pgs_server_attach(server, worker) != 0) {
    pgs_server_close(server, "cannot move to another worker");
    maybe_connect(pool);
    return;
  }
  pgs_pool_server_free(pool, server);
}

/* ---- servers for clients ---- */

static void maybe_connect(pgs_pool_t *pool) {
  /* One connection attempt per waiting client, within the node's pool_size
   * for the whole process (counted as the attempt starts). */
  while (pool->nconnecting < pool->nwaiters && !pool->worker->stopping) {
    if (!reserve_server(pool) && !(close_idle_sibling(pool) && reserve_server(pool))) break;
    pgs_server_connect(pool);
  }
  /* Asked when its clients start to need servers: while they go on
   * needing, a server freed elsewhere comes on its own (server_free), and
   * the tick asks again. Asking at every wait would wake the other workers
   * once a transaction under load. */
  bool needed = pool->published_need > 0;
  publish_need(pool);
  if (!needed && pool->published_need > 0 && !pool->worker->stopping) ask_donors(pool);
}

void pgs_pool_request(pgs_pool_t *pool, pgs_client_t *client) {
  if (pool->nidle > 0 && pool->have_params) {
    pgs_server_t *server = pgs_container_of(pool->idle.prev, pgs_server_t, link);
    pgs_pool_set_state(server, PGS_SV_ACTIVE);
    waiter->served(client, server);
    return;
  }
  client->wait_start_ms = pgs_now_ms();
  pgs_list_append(&pool->waiters, &client->wait_link);
  pool->nwaiters++;
  maybe_connect(pool);
}

void pgs_pool_cancel_wait(pgs_pool_t *pool, pgs_client_t *client) {
  if (pgs_list_empty(&client->wait_link)) return;
  pgs_list_remove(&client->wait_link);
  pool->nwaiters--;
  if (pool->published_need > 0) publish_need(pool);
}

void pgs_pool_server_free(pgs_pool_t *pool, pgs_server_t *server) {
  server->client = NULL;
  int lifetime = pool->worker->config->server_lifetime_ms;
  bool too_old = lifetime > 0 && pgs_now_ms() - server->born_ms >= (uint64_t)lifetime;
  if (server->dirty || pool->worker->stopping || node_total(pool) > pool->size ||
      (pool->gone && pgs_list_empty(&pool->waiters)) || too_old) {
    pgs_server_close(server, server->dirty ? "not reusable"
                             : pool->gone  ? "node or user no longer configured"
                             : too_old     ? "server_lifetime_ms reached"
                                           : "pool shrinking");
    maybe_connect(pool);
    return;
  }
  /* Another worker's clients wait for this key: it goes there when none
   * wait here, or when this worker holds more of the node than that one. */
  if (!pool->gone) {
    int to = needing_worker(pool, !pgs_list_empty(&pool->waiters));
    if (to >= 0) {
      if (server->state != PGS_SV_IDLE) pgs_pool_set_state(server, PGS_SV_IDLE);
      if (give_server(pool, server, to)) return;
    }
  }
  if (!pgs_list_empty(&pool->waiters)) {
    pgs_client_t *client = pgs_container_of(pool->waiters.next, pgs_client_t, wait_link);
    pgs_pool_cancel_wait(pool, client);
    pgs_pool_set_state(server, PGS_SV_ACTIVE);
    waiter->served(client, server);
    return;
  }
  pgs_pool_t *sibling = waiting_sibling(pool);
  if (sibling && node_total(pool) >= pool->size) {
    /* Its clients have other startup parameters: they need a server of
     * their own, in this one's place. */
    pgs_server_close(server, "pool_size reached: room for other startup parameters");
    maybe_connect(sibling);
    return;
  }
  pgs_pool_set_state(server, PGS_SV_IDLE);
}

void pgs_pool_server_connected(pgs_pool_t *pool, pgs_server_t *server) {
  static const char *const names[] = {"application_name",
                                      "client_encoding",
                                      "DateStyle",
                                      "default_transaction_read_only",
                                      "in_hot_standby",
                                      "integer_datetimes",
                                      "IntervalStyle",
                                      "is_superuser",
                                      "server_encoding",
                                      "server_version",
                                      "session_authorization",
                                      "standard_conforming_strings",
                                      "TimeZone",
                                      NULL};
  pool->nparams = 0;
  for (int i = 0; names[i] && pool->nparams < PGS_MAX_WELCOME_PARAMS; i++) {
    const char *value = PQparameterStatus(server->pg, names[i]);
    if (value == NULL) continue;
    pgs_param_t *p = &pool->params[pool->nparams++];
    snprintf(p->name, sizeof(p->name), "%s", names[i]);
    snprintf(p->value, sizeof(p->value), "%s", value);
  }
  pool->have_params = true;
  pgs_pool_shared_t *sh = pool->shared;
  uv_mutex_lock(&sh->lock);
  memcpy(sh->params, pool->params, sizeof(pgs_param_t) * (size_t)pool->nparams);
  sh->nparams = pool->nparams;
  uv_mutex_unlock(&sh->lock);
  pool->last_error[0] = '\0';
  pgs_pool_server_free(pool, server);
}

void pgs_pool_server_failed(pgs_pool_t *pool, pgs_server_t *server, const char *error) {
  snprintf(pool->last_error, sizeof(pool->last_error), "%s", error);
  pool->last_failure_ms = pgs_now_ms();
  pgs_server_close(server, error);
  /* Waiters beyond what the remaining attempts can serve are refused now
   * rather than left to time out: the server is not answering. */
  while (pool->nwaiters > pool->nconnecting + pool->nidle + pool->nactive) {
    pgs_client_t *client = pgs_container_of(pool->waiters.prev, pgs_client_t, wait_link);
    pgs_pool_cancel_wait(pool, client);
    char message[1024];
    snprintf(message, sizeof(message), "cannot connect to shard %s of database \"%s\": %s",
             pool->shard, pool->dbname, error);
    waiter->unserved(client, PGS_SQLSTATE_CONNECTION_FAILURE, message);
  }
  publish_need(pool);
}

void pgs_pool_tick(pgs_pool_t *pool, uint64_t now) {
  const pgs_config_t *config = pool->worker->config;
  /* Waiters are in arrival order: stop at the first that may still wait. */
  while (!pgs_list_empty(&pool->waiters)) {
    pgs_client_t *client = pgs_container_of(pool->waiters.next, pgs_client_t, wait_link);
    if (now - client->wait_start_ms < (uint64_t)config->query_wait_timeout_ms) break;
    pgs_pool_cancel_wait(pool, client);
    char message[300];
    snprintf(message, sizeof(message),
             "no server connection for shard %s of database \"%s\" within %d ms (pool_size %d)",
             pool->shard, pool->dbname, config->query_wait_timeout_ms, pool->size);
    waiter->unserved(client, PGS_SQLSTATE_TOO_MANY_CONNECTIONS, message);
  }
  /* Close servers idle too long (oldest first: the head of idle). */
  while (config->server_idle_timeout_ms > 0 && !pgs_list_empty(&pool->idle)) {
    pgs_server_t *server = pgs_container_of(pool->idle.next, pgs_server_t, link);
    if (now - server->state_since_ms < (uint64_t)config->server_idle_timeout_ms) break;
    pgs_server_close(server, "idle timeout");
  }
  /* Clients of another worker need a server of this key: an idle one goes
   * (donate_task does this at once when asked; this catches the rest). */
  int to;
  while (!pool->gone && pool->nidle > 0 && (to = needing_worker(pool, false)) >= 0)
    if (!give_server(pool, pgs_container_of(pool->idle.prev, pgs_server_t, link), to)) break;
  /* Connection attempts that take too long. */
  for (pgs_list_t *l = pool->connecting.next; l != &pool->connecting;) {
    pgs_server_t *server = pgs_container_of(l, pgs_server_t, link);
    l = l->next;
    if (server->poll == NULL)
      pgs_pool_server_failed(pool, server, server->last_error);
    else if (now - server->state_since_ms > (uint64_t)config->server_connect_timeout_ms)
      pgs_pool_server_failed(pool, server, "timeout while connecting");
  }
  maybe_connect(pool);
  if (pool->published_need > 0 && !pool->worker->stopping) ask_donors(pool);
}

void pgs_pool_apply_health(pgs_pool_t *pool, const pgs_snapshot_t *snapshot) {
  const pgs_database_t *db = pgs_config_find_database(snapshot->config, pool->dbname);
  int shard = db ? pgs_shardmap_find_shard(db, pool->shard) : -1;
  int node = shard >= 0 ? find_node(db, shard, pool->node_conninfo) : -1;
  const pgs_shard_health_t *sh = node >= 0 ? pgs_snapshot_shard(snapshot, db->name, shard) : NULL;
  if (sh == NULL || node >= sh->nnodes) return;
  const pgs_node_state_t *ns = &sh->nodes[node];
  pool->node_up = ns->up;
  if (ns->down_epoch != pool->down_epoch) {
    /* The node went down since these servers were opened: none is reused. */
    pool->down_epoch = ns->down_epoch;
    while (!pgs_list_empty(&pool->idle))
      pgs_server_close(pgs_container_of(pool->idle.next, pgs_server_t, link), "node marked down");
    for (pgs_list_t *l = pool->active.next; l != &pool->active; l = l->next)
      pgs_container_of(l, pgs_server_t, link)->dirty = true;
  }
}

void pgs_pool_destroy(pgs_pool_t *pool) {
  PGS_ASSERT(total_servers(pool) == 0 && pool->nwaiters == 0);
  publish_need(pool);
  pgs_list_remove(&pool->link);
  free(pool->node_conninfo);
  free(pool->startup_options);
  free(pool->conninfo);
  free(pool);
}

/* ---- what servers tell their pool (server.c) ---- */

static void server_connected(pgs_server_t *server) {
  pgs_pool_server_connected(server->pool, server);
}

static void server_failed(pgs_server_t *server, const char *error) {
  pgs_pool_server_failed(server->pool, server, error);
}

static void server_free(pgs_server_t *server) { pgs_pool_server_free(server->pool, server); }

const pgs_server_pool_ops_t pgs_pool_server_ops = {
    .set_state = pgs_pool_set_state,
    .connected = server_connected,
    .failed = server_failed,
    .free = server_free,
};
