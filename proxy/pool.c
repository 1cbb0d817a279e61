/*
 * pool.c — server connections for one (database, user, shard) on one worker,
 * all to that shard's primary.
 *
 * Every server is on exactly one of the pool's lists, matching its state:
 * connecting, idle, active (linked to a client, or resetting). Clients that
 * need a server and find none idle wait in FIFO order in waiters; a freed
 * server goes straight to the oldest waiter. The pool opens servers lazily
 * up to its share of pool_size; it never holds more than that.
 *
 * The pool also remembers the parameters the server reported at login
 * (server_version, server_encoding, ...), which every client of the pool is
 * told at its own login.
 *
 * Under session pooling a client's startup parameters are its servers'
 * startup parameters, so a pool also has those in its key: pools of one node
 * that differ only by them are siblings, and pool_size bounds the servers of
 * all of them together. A sibling at the limit makes room by closing an idle
 * server of another (maybe_connect), or takes a server its owner frees
 * (pgs_pool_server_free).
 */
#include <string.h>

#include <libpq-fe.h>

#include "pgshard/log.h"
#include "pgshard/pool.h"
#include "pgshard/server.h"

int pgs_pool_share(int pool_size, int workers, int index) {
  int share = pool_size / workers + (index < pool_size % workers ? 1 : 0);
  return share > 0 ? share : 1;
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

pgs_pool_t *pgs_pool_get(pgs_worker_t *worker, const pgs_config_t *config, const pgs_database_t *db,
                         const pgs_user_t *user, int shard, int node, const char *startup_options) {
  PGS_ASSERT(shard >= 0 && shard < db->nshards);
  const char *conninfo = shard_node(db, shard, node)->conninfo;
  bool siblings = false;
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    if (!strcmp(pool->dbname, db->name) && !strcmp(pool->username, user->name) &&
        !strcmp(pool->shard, db->shards[shard].name) && !strcmp(pool->node_conninfo, conninfo)) {
      if (same_options(pool->startup_options, startup_options)) return pool;
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
    pool->size = pgs_pool_share(db->pool_size, config->workers, worker->index);
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
  pool->size = pgs_pool_share(db->pool_size, config->workers, pool->worker->index);
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
    break;
  }
  *count = NULL;
  return NULL;
}

static const char *const server_state_names[] = {"connecting", "idle", "active", "resetting",
                                                 "closing"};

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
  } else {
    pgs_list_append(&server->worker->closing, &server->link);
  }
  pgs_debug("server %d (%s/%s): %s -> %s", server->backend_pid, pool->dbname, pool->username,
            server_state_names[server->state], server_state_names[state]);
  server->state = state;
  server->state_since_ms = pgs_now_ms();
}

static int total_servers(const pgs_pool_t *pool) {
  return pool->nidle + pool->nactive + pool->nconnecting;
}

/* Servers of POOL's node for its database and user, siblings included. */
static int node_servers(const pgs_pool_t *pool) {
  if (!pool->has_siblings) return total_servers(pool);
  int n = 0;
  for (pgs_list_t *l = pool->worker->pools.next; l != &pool->worker->pools; l = l->next) {
    const pgs_pool_t *other = pgs_container_of(l, pgs_pool_t, link);
    if (same_node(other, pool)) n += total_servers(other);
  }
  return n;
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

/* Close the oldest idle server of a sibling of POOL, to make room for one of
 * POOL's own. Returns whether there was one. */
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

static void maybe_connect(pgs_pool_t *pool) {
  /* One connection attempt per waiting client, within the pool's share of
   * the node's pool_size. */
  while (pool->nconnecting < pool->nwaiters && total_servers(pool) < pool->size &&
         !pool->worker->stopping) {
    if (node_servers(pool) >= pool->size && !close_idle_sibling(pool)) break;
    pgs_server_connect(pool);
  }
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
}

void pgs_pool_server_free(pgs_pool_t *pool, pgs_server_t *server) {
  server->client = NULL;
  int lifetime = pool->worker->config->server_lifetime_ms;
  bool too_old = lifetime > 0 && pgs_now_ms() - server->born_ms >= (uint64_t)lifetime;
  if (server->dirty || pool->worker->stopping || node_servers(pool) > pool->size ||
      (pool->gone && pgs_list_empty(&pool->waiters)) || too_old) {
    pgs_server_close(server, server->dirty ? "not reusable"
                             : pool->gone  ? "node or user no longer configured"
                             : too_old     ? "server_lifetime_ms reached"
                                           : "pool shrinking");
    maybe_connect(pool);
    return;
  }
  if (!pgs_list_empty(&pool->waiters)) {
    pgs_client_t *client = pgs_container_of(pool->waiters.next, pgs_client_t, wait_link);
    pgs_pool_cancel_wait(pool, client);
    pgs_pool_set_state(server, PGS_SV_ACTIVE);
    waiter->served(client, server);
    return;
  }
  pgs_pool_t *sibling = waiting_sibling(pool);
  if (sibling && node_servers(pool) >= pool->size) {
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
