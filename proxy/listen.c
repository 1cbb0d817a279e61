/*
 * listen.c — LISTEN/NOTIFY in transaction pooling, without pinning a
 * client to a server (PgDog's design; PgBouncer has none).
 *
 * In transaction pooling a client's LISTEN reaches no server: the planner
 * makes it a step (PGS_STEP_LISTEN) that lands here. Each worker keeps a
 * registry, per database, of channel -> the clients listening on it, and
 * owns one listening connection per shard primary of that database (a
 * libpq connection of pgshard's own, never a client's, opened at the
 * database's first LISTEN on the worker with the credentials of the user
 * of that client — or the node's own user when its conninfo names one).
 * A listener runs LISTEN for the union of its database's channels and
 * UNLISTEN for those nobody listens on any more, one batch at a time, and
 * hands each NotificationResponse it gets (the sending backend's pid,
 * channel, payload, as PostgreSQL sent them) to every client of the
 * channel. A notification raised on any shard, by a client's NOTIFY or by
 * pg_notify() in a trigger, reaches them all.
 *
 * Per worker rather than process-wide: clients, their output and libuv
 * loops belong to one worker, so the registry needs no lock and a
 * notification is written by the thread that owns the client. The price
 * is one listening connection per database, shard and worker.
 *
 * As in PostgreSQL, a client gets notifications only between transactions:
 * one arriving while it is inside a transaction or a request waits in its
 * queue (at most max_notify_queue_bytes, also charged to max_client_memory)
 * and goes out right after the ReadyForQuery that ends the transaction.
 * Over the cap they are dropped — PostgreSQL never drops, but pgshard
 * must not grow without bound — and the client is told once, with a
 * WARNING notice, when it next gets its notifications. A LISTEN is
 * answered once every listener that is up has confirmed the channel, so
 * that a NOTIFY committed after the answer reaches the client. Inside a
 * transaction LISTEN and UNLISTEN apply at its COMMIT and are dropped at
 * its ROLLBACK (any error in the transaction counts as one, even one
 * rolled back to a savepoint); a channel new to the client is listened on
 * from the LISTEN already ("provisional"), so that the COMMIT finds it
 * confirmed, and what arrives on it before the transaction ends is not
 * handed over. An UNLISTEN in a statement a server runs (DISCARD ALL, a
 * multi-statement query) is applied quietly, without an answer.
 *
 * A lost listener (server restart, pg_terminate_backend) reconnects with
 * backoff and LISTENs every channel again; notifications raised while it
 * was away are lost. After a promotion (the health snapshot names another
 * writer) it moves to the new primary.
 */
#include <string.h>

#include <libpq-fe.h>

#include "pgshard/accounting.h"
#include "pgshard/listen.h"
#include "pgshard/log.h"
#include "pgshard/snapshot.h"

#define RETRY_MIN_MS 250    /* first reconnect after a loss */
#define RETRY_MAX_MS 10000  /* backoff doubles up to this */
#define LISTEN_WAIT_MS 5000 /* the longest a LISTEN waits for its listeners */

static const pgs_listen_ops_t *ops;

void pgs_listen_set_ops(const pgs_listen_ops_t *o) { ops = o; }

/* ---- the registry's objects ---- */

typedef enum {
  LS_DOWN,       /* no connection: opened at retry_at_ms (tick) */
  LS_CONNECTING, /* libpq's login, polled on its socket */
  LS_READY,      /* logged in, nothing in flight */
  LS_BUSY,       /* a batch of LISTEN/UNLISTEN in flight */
} listener_state_t;

static const char *const listener_state_names[] = {"down", "connecting", "ready", "busy"};

typedef struct listen_db listen_db_t;

/* pgshard's connection to one shard's primary for one database. */
typedef struct listener {
  listen_db_t *db;
  char shard[PGS_MAX_NAME];
  char *node_conninfo; /* the shard's primary as configured: identifies it across reloads */
  int node;            /* the node it connects to (0: the configured primary) */
  listener_state_t state;
  PGconn *pg;
  uv_poll_t *poll; /* on poll_fd, libpq's socket */
  int poll_fd;
  pgs_strmap_t applied;        /* channels LISTENed on this connection (values unused) */
  char (*batch)[PGS_MAX_NAME]; /* in flight: each channel, with '+' (LISTEN) or '-' */
  char *batch_ops;
  int nbatch;
  bool batch_failed;
  uint64_t state_since_ms;
  uint64_t retry_at_ms;
  uint64_t backoff_ms;
  int backend_pid;
  uint64_t notifications;
  uint64_t reconnects;
} listener_t;

/* The clients of one channel. */
typedef struct listen_channel {
  pgs_listen_client_t **clients;
  int nclients, cap;
} listen_channel_t;

/* One database's registry on a worker. */
struct listen_db {
  pgs_list_t link; /* registry's dbs */
  pgs_worker_t *worker;
  char name[PGS_MAX_NAME];
  char user[PGS_MAX_NAME]; /* whose credentials its listeners log in with */
  pgs_config_t *config;    /* the config its listeners were made for (a reference) */
  listener_t **listeners;
  int nlisteners;
  pgs_strmap_t channels; /* channel -> listen_channel_t */
  pgs_list_t waiters;    /* clients whose LISTEN waits for the listeners */
  int nclients;
};

typedef struct pgs_listen_registry {
  pgs_list_t dbs;
  pgs_list_t flush; /* clients with notifications written, to flush */
  pgs_list_t ready; /* waiters to resume */
} pgs_listen_registry_t;

/* Channel names, in the order they came. */
typedef struct names {
  char (*v)[PGS_MAX_NAME];
  int n, cap;
} names_t;

/* A client's part (pgs_client_t.listen). */
struct pgs_listen_client {
  pgs_client_t *client;
  listen_db_t *db;
  names_t channels; /* it listens on */
  /* Its transaction's LISTEN/UNLISTEN, applied at COMMIT (ops 'L', 'U',
   * '*'), and the channels its LISTENs listen on already, given up at
   * ROLLBACK; any error in the transaction counts as a ROLLBACK, and so
   * does a ROLLBACK TO SAVEPOINT (its tag is "ROLLBACK"): savepoints are
   * not followed. */
  names_t pending;
  char *pending_ops;
  names_t provisional;
  bool tx_failed;
  /* Waiting for the listeners to confirm `waiting` (db->waiters). */
  pgs_list_t wait_link;
  char waiting[PGS_MAX_NAME];
  uint64_t wait_since_ms;
  bool wait_over; /* answered whatever the listeners say (they took too long) */
  /* Notifications held while it is inside a transaction or a request. */
  pgs_buf_t queue;
  uint64_t dropped;
  pgs_list_t flush_link; /* registry's flush */
};

static pgs_listen_registry_t *registry(pgs_worker_t *worker) {
  if (worker->listen == NULL) {
    worker->listen = pgs_xcalloc(1, sizeof(*worker->listen));
    pgs_list_init(&worker->listen->dbs);
    pgs_list_init(&worker->listen->flush);
    pgs_list_init(&worker->listen->ready);
  }
  return worker->listen;
}

static void listener_set_state(listener_t *l, listener_state_t to) {
  pgs_debug("listener %s/%s: %s -> %s", l->db->name, l->shard, listener_state_names[l->state],
            listener_state_names[to]);
  l->state = to;
  l->state_since_ms = pgs_now_ms();
}

/* ---- one listener's connection ---- */

static void reconcile(listener_t *l);
static void read_input(listener_t *l);
static void settle(listen_db_t *db);

static void poll_closed_cb(uv_handle_t *handle) { free(handle); }

static void close_poll(listener_t *l) {
  if (l->poll == NULL) return;
  uv_close((uv_handle_t *)l->poll, poll_closed_cb); /* stops watching the socket at once */
  l->poll = NULL;
}

static void free_batch(listener_t *l) {
  free(l->batch);
  free(l->batch_ops);
  l->batch = NULL;
  l->batch_ops = NULL;
  l->nbatch = 0;
  l->batch_failed = false;
}

/* The connection ends: nothing of it is kept. */
static void drop_connection(listener_t *l) {
  close_poll(l);
  if (l->pg) PQfinish(l->pg);
  l->pg = NULL;
  l->backend_pid = 0;
  pgs_strmap_free(&l->applied, NULL);
  pgs_strmap_init(&l->applied);
  free_batch(l);
}

/* Lost or never made (WHY, which may be libpq's: copied before the
 * connection goes): a new connection after a backoff. */
static void listener_lost(listener_t *l, const char *reason) {
  char why[256];
  size_t n = 0;
  for (const char *c = reason; *c && n + 1 < sizeof(why); c++) /* libpq's lines: one */
    why[n++] = *c == '\n' ? ' ' : *c;
  while (n > 0 && why[n - 1] == ' ') n--;
  why[n] = '\0';
  bool was_up = l->state == LS_READY || l->state == LS_BUSY;
  drop_connection(l);
  l->backoff_ms = l->backoff_ms ? l->backoff_ms * 2 : RETRY_MIN_MS;
  if (l->backoff_ms > RETRY_MAX_MS) l->backoff_ms = RETRY_MAX_MS;
  l->retry_at_ms = pgs_now_ms() + l->backoff_ms;
  listener_set_state(l, LS_DOWN);
  pgs_warn("listener %s/%s %s: %s; again in %llu ms%s", l->db->name, l->shard,
           was_up ? "lost" : "could not connect", why, (unsigned long long)l->backoff_ms,
           was_up ? " (notifications raised meanwhile are lost)" : "");
}

static bool watch(listener_t *l, int events);

static void on_poll(uv_poll_t *handle, int status, int events) {
  listener_t *l = handle->data;
  listen_db_t *db = l->db;
  if (l->state == LS_CONNECTING) {
    PostgresPollingStatusType st = PQconnectPoll(l->pg);
    if (st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING) {
      if (!watch(l, st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE))
        listener_lost(l, "cannot poll its socket");
      return;
    }
    if (st != PGRES_POLLING_OK) {
      listener_lost(l, PQerrorMessage(l->pg));
      settle(db); /* waiters do not wait for a listener that is down */
      return;
    }
    if (PQsetnonblocking(l->pg, 1) != 0 || !watch(l, UV_READABLE)) {
      listener_lost(l, "cannot read its socket");
      settle(db);
      return;
    }
    l->backend_pid = PQbackendPID(l->pg);
    l->backoff_ms = 0;
    listener_set_state(l, LS_READY);
    pgs_info("listener %s/%s connected (backend %d)", db->name, l->shard, l->backend_pid);
    reconcile(l);
    settle(db);
    return;
  }
  if (status < 0) {
    listener_lost(l, uv_strerror(status));
  } else {
    if (events & UV_WRITABLE) {
      int r = PQflush(l->pg);
      if (r < 0)
        listener_lost(l, PQerrorMessage(l->pg));
      else if (!watch(l, r ? UV_READABLE | UV_WRITABLE : UV_READABLE))
        listener_lost(l, "cannot poll its socket");
    }
    if ((events & UV_READABLE) && l->pg) read_input(l);
  }
  settle(db);
}

/* Watch libpq's socket for EVENTS (a new handle when libpq moved to
 * another one during login). */
static bool watch(listener_t *l, int events) {
  int fd = PQsocket(l->pg);
  if (fd < 0) return false;
  if (l->poll && l->poll_fd != fd) close_poll(l);
  if (l->poll == NULL) {
    uv_poll_t *poll = pgs_xmalloc(sizeof(*poll));
    if (uv_poll_init_socket(&l->db->worker->loop, poll, fd) != 0) {
      free(poll);
      return false;
    }
    poll->data = l;
    l->poll = poll;
    l->poll_fd = fd;
  }
  return uv_poll_start(l->poll, events, on_poll) == 0;
}

/* The health snapshot's writer of the listener's shard, -1 when it names
 * none. */
static int writer_node(const listener_t *l) {
  pgs_worker_t *w = l->db->worker;
  const pgs_database_t *db = pgs_config_find_database(w->config, l->db->name);
  int shard = db ? pgs_shardmap_find_shard(db, l->shard) : -1;
  if (shard < 0 || w->snapshot == NULL) return -1;
  const pgs_shard_health_t *h = w->snapshot->config == w->config
                                    ? pgs_snapshot_shard(w->snapshot, db->name, shard)
                                    : pgs_snapshot_shard_of(w->snapshot, db, shard);
  if (h == NULL || h->writer < 0 || h->writer > db->shards[shard].nreplicas) return -1;
  return h->writer;
}

static void listener_connect(listener_t *l) {
  pgs_worker_t *w = l->db->worker;
  const pgs_database_t *db = pgs_config_find_database(w->config, l->db->name);
  int shard = db ? pgs_shardmap_find_shard(db, l->shard) : -1;
  const pgs_user_t *user = pgs_config_find_user(w->config, l->db->user);
  if (shard < 0 || user == NULL) {
    listener_lost(l, shard < 0 ? "its shard is no longer configured"
                               : "the user it logs in as is no longer configured");
    return;
  }
  int writer = writer_node(l);
  l->node = writer >= 0 ? writer : 0;
  const pgs_shard_t *sh = &db->shards[shard];
  const pgs_node_t *node = l->node == 0 ? &sh->primary : &sh->replicas[l->node - 1];
  char *conninfo =
      pgs_node_conninfo(w->config, db, node, user, "application_name", "pgshard_listen");
  l->pg = PQconnectStart(conninfo);
  free(conninfo);
  listener_set_state(l, LS_CONNECTING);
  if (l->pg == NULL || PQstatus(l->pg) == CONNECTION_BAD) {
    listener_lost(l, l->pg ? PQerrorMessage(l->pg) : "out of memory");
    return;
  }
  if (!watch(l, UV_WRITABLE)) listener_lost(l, "cannot poll its socket");
}

/* An identifier as PostgreSQL reads it back unchanged: in double quotes. */
static void put_quoted(pgs_buf_t *b, const char *name) {
  pgs_buf_put(b, "\"", 1);
  for (const char *p = name; *p; p++) {
    if (*p == '"') pgs_buf_put(b, "\"", 1);
    pgs_buf_put(b, p, 1);
  }
  pgs_buf_put(b, "\"", 1);
}

static bool has_clients(const listen_db_t *db, const char *channel) {
  const listen_channel_t *ch = pgs_strmap_get(&db->channels, channel);
  return ch && ch->nclients > 0;
}

static void batch_add(listener_t *l, int *cap, const char *channel, char op) {
  if (l->nbatch == *cap) {
    *cap = *cap ? 2 * *cap : 16;
    l->batch = pgs_xrealloc(l->batch, sizeof(*l->batch) * (size_t)*cap);
    l->batch_ops = pgs_xrealloc(l->batch_ops, (size_t)*cap);
  }
  snprintf(l->batch[l->nbatch], PGS_MAX_NAME, "%s", channel);
  l->batch_ops[l->nbatch++] = op;
}

/* Bring the connection's channels to the database's: one batch of LISTEN
 * and UNLISTEN statements, sent when nothing else is in flight. */
static void reconcile(listener_t *l) {
  if (l->state != LS_READY) return;
  listen_db_t *db = l->db;
  int cap = 0;
  for (size_t b = 0; b < db->channels.nbuckets; b++)
    for (pgs_strmap_entry_t *e = db->channels.buckets[b]; e; e = e->next)
      if (((listen_channel_t *)e->value)->nclients > 0 && !pgs_strmap_contains(&l->applied, e->key))
        batch_add(l, &cap, e->key, '+');
  for (size_t b = 0; b < l->applied.nbuckets; b++)
    for (pgs_strmap_entry_t *e = l->applied.buckets[b]; e; e = e->next)
      if (!has_clients(db, e->key)) batch_add(l, &cap, e->key, '-');
  if (l->nbatch == 0) return;
  pgs_buf_t sql;
  pgs_buf_init(&sql);
  for (int i = 0; i < l->nbatch; i++) {
    pgs_buf_put(&sql, l->batch_ops[i] == '+' ? "LISTEN " : "UNLISTEN ",
                l->batch_ops[i] == '+' ? 7 : 9);
    put_quoted(&sql, l->batch[i]);
    pgs_buf_put(&sql, ";", 1);
  }
  pgs_buf_put_u8(&sql, 0);
  int sent = PQsendQuery(l->pg, (const char *)sql.data);
  pgs_buf_free(&sql);
  if (!sent) {
    listener_lost(l, PQerrorMessage(l->pg));
    return;
  }
  listener_set_state(l, LS_BUSY);
  int r = PQflush(l->pg);
  if (r < 0)
    listener_lost(l, PQerrorMessage(l->pg));
  else if (!watch(l, r ? UV_READABLE | UV_WRITABLE : UV_READABLE))
    listener_lost(l, "cannot poll its socket");
}

static void deliver(listen_db_t *db, const PGnotify *n);

/* What the server sent: the batch's results, notifications. */
static void read_input(listener_t *l) {
  if (!PQconsumeInput(l->pg)) {
    listener_lost(l, PQerrorMessage(l->pg));
    return;
  }
  while (l->state == LS_BUSY && !PQisBusy(l->pg)) {
    PGresult *res = PQgetResult(l->pg);
    if (res == NULL) {
      if (l->batch_failed) {
        listener_lost(l, "its LISTEN/UNLISTEN failed");
        return;
      }
      for (int i = 0; i < l->nbatch; i++) {
        if (l->batch_ops[i] == '+')
          pgs_strmap_put(&l->applied, l->batch[i], l);
        else
          (void)pgs_strmap_remove(&l->applied, l->batch[i]);
      }
      free_batch(l);
      listener_set_state(l, LS_READY);
      break;
    }
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
      pgs_warn("listener %s/%s: %s", l->db->name, l->shard, PQresultErrorMessage(res));
      l->batch_failed = true;
    }
    PQclear(res);
  }
  PGnotify *n;
  while ((n = PQnotifies(l->pg)) != NULL) {
    l->notifications++;
    deliver(l->db, n);
    PQfreemem(n);
  }
  if (PQstatus(l->pg) == CONNECTION_BAD) {
    listener_lost(l, PQerrorMessage(l->pg));
    return;
  }
  reconcile(l); /* what changed while the batch was in flight */
}

static listener_t *listener_new(listen_db_t *db, const pgs_database_t *conf, int shard) {
  listener_t *l = pgs_xcalloc(1, sizeof(*l));
  l->db = db;
  snprintf(l->shard, sizeof(l->shard), "%s", conf->shards[shard].name);
  l->node_conninfo = pgs_xstrdup(conf->shards[shard].primary.conninfo);
  pgs_strmap_init(&l->applied);
  l->state = LS_DOWN;
  l->state_since_ms = pgs_now_ms();
  return l;
}

static void listener_free(listener_t *l) {
  drop_connection(l);
  pgs_strmap_free(&l->applied, NULL);
  free(l->node_conninfo);
  free(l);
}

/* ---- databases ---- */

/* The listeners of DB's shards under the worker's config: those of shards
 * that keep their name and primary are kept (their channels with them). */
static void db_follow_config(listen_db_t *db) {
  pgs_worker_t *w = db->worker;
  if (db->config == w->config) return;
  const pgs_database_t *conf = pgs_config_find_database(w->config, db->name);
  int n = conf ? conf->nshards : 0;
  listener_t **next = pgs_xcalloc((size_t)(n > 0 ? n : 1), sizeof(*next));
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < db->nlisteners; j++) {
      listener_t *l = db->listeners[j];
      if (l && !strcmp(l->shard, conf->shards[i].name) &&
          !strcmp(l->node_conninfo, conf->shards[i].primary.conninfo)) {
        next[i] = l;
        db->listeners[j] = NULL;
        break;
      }
    }
    if (next[i] == NULL) next[i] = listener_new(db, conf, i);
  }
  for (int j = 0; j < db->nlisteners; j++)
    if (db->listeners[j]) listener_free(db->listeners[j]);
  free(db->listeners);
  db->listeners = next;
  db->nlisteners = n;
  if (db->config) pgs_config_unref(db->config);
  db->config = pgs_config_ref(w->config);
}

static listen_db_t *db_get(pgs_worker_t *worker, const char *name, const char *user) {
  pgs_listen_registry_t *reg = registry(worker);
  for (pgs_list_t *l = reg->dbs.next; l != &reg->dbs; l = l->next) {
    listen_db_t *db = pgs_container_of(l, listen_db_t, link);
    if (!strcmp(db->name, name)) return db;
  }
  listen_db_t *db = pgs_xcalloc(1, sizeof(*db));
  db->worker = worker;
  snprintf(db->name, sizeof(db->name), "%s", name);
  snprintf(db->user, sizeof(db->user), "%s", user);
  pgs_strmap_init(&db->channels);
  pgs_list_init(&db->waiters);
  pgs_list_append(&reg->dbs, &db->link);
  db_follow_config(db);
  return db;
}

static void free_channel(void *p) {
  listen_channel_t *ch = p;
  free(ch->clients);
  free(ch);
}

static void db_free(listen_db_t *db) {
  for (int i = 0; i < db->nlisteners; i++)
    if (db->listeners[i]) listener_free(db->listeners[i]);
  free(db->listeners);
  pgs_strmap_free(&db->channels, free_channel);
  if (db->config) pgs_config_unref(db->config);
  pgs_list_remove(&db->link);
  free(db);
}

/* Every listener works towards the database's channels; one never
 * started is started now. */
static void db_kick(listen_db_t *db) {
  for (int i = 0; i < db->nlisteners; i++) {
    listener_t *l = db->listeners[i];
    if (l->state == LS_DOWN && l->retry_at_ms == 0 && l->backoff_ms == 0)
      listener_connect(l);
    else
      reconcile(l);
  }
}

/* Whether CHANNEL is LISTENed on by every listener that is up (or on its
 * way up): a NOTIFY committed from now on reaches pgshard. */
static bool confirmed(const listen_db_t *db, const char *channel) {
  for (int i = 0; i < db->nlisteners; i++) {
    const listener_t *l = db->listeners[i];
    if (l->state != LS_DOWN && !pgs_strmap_contains(&l->applied, channel)) return false;
  }
  return true;
}

/* ---- a client's channels ---- */

static int names_find(const names_t *n, const char *name) {
  for (int i = 0; i < n->n; i++)
    if (!strcmp(n->v[i], name)) return i;
  return -1;
}

static void names_add(names_t *n, const char *name) {
  if (n->n == n->cap) {
    n->cap = n->cap ? 2 * n->cap : 4;
    n->v = pgs_xrealloc(n->v, sizeof(*n->v) * (size_t)n->cap);
  }
  snprintf(n->v[n->n++], PGS_MAX_NAME, "%s", name);
}

static void names_remove(names_t *n, int at) {
  memmove(n->v[at], n->v[n->n - 1], PGS_MAX_NAME);
  n->n--;
}

static void names_free(names_t *n) {
  free(n->v);
  memset(n, 0, sizeof(*n));
}

static pgs_listen_client_t *client_part(pgs_client_t *client) {
  if (client->listen) return client->listen;
  pgs_listen_client_t *lc = pgs_xcalloc(1, sizeof(*lc));
  lc->client = client;
  lc->db = db_get(client->worker, client->dbname, client->username);
  lc->db->nclients++;
  pgs_list_init(&lc->wait_link);
  pgs_list_init(&lc->flush_link);
  pgs_buf_init(&lc->queue);
  client->listen = lc;
  /* The user the listeners log in as may be gone since (a reload). */
  if (pgs_config_find_user(client->worker->config, lc->db->user) == NULL)
    snprintf(lc->db->user, sizeof(lc->db->user), "%s", client->username);
  return lc;
}

static void subscribe(pgs_listen_client_t *lc, const char *channel) {
  if (names_find(&lc->channels, channel) >= 0) return;
  names_add(&lc->channels, channel);
  listen_channel_t *ch = pgs_strmap_get(&lc->db->channels, channel);
  if (ch == NULL) {
    ch = pgs_xcalloc(1, sizeof(*ch));
    pgs_strmap_put(&lc->db->channels, channel, ch);
  }
  if (ch->nclients == ch->cap) {
    ch->cap = ch->cap ? 2 * ch->cap : 4;
    ch->clients = pgs_xrealloc(ch->clients, sizeof(*ch->clients) * (size_t)ch->cap);
  }
  ch->clients[ch->nclients++] = lc;
}

static void unsubscribe(pgs_listen_client_t *lc, const char *channel) {
  int at = names_find(&lc->channels, channel);
  if (at < 0) return;
  names_remove(&lc->channels, at);
  listen_channel_t *ch = pgs_strmap_get(&lc->db->channels, channel);
  if (ch == NULL) return;
  for (int i = 0; i < ch->nclients; i++) {
    if (ch->clients[i] != lc) continue;
    ch->clients[i] = ch->clients[--ch->nclients];
    break;
  }
  /* The listeners UNLISTEN it (reconcile reads their own lists). */
  if (ch->nclients == 0) free_channel(pgs_strmap_remove(&lc->db->channels, channel));
}

static void unsubscribe_all(pgs_listen_client_t *lc) {
  while (lc->channels.n > 0) {
    char channel[PGS_MAX_NAME];
    memcpy(channel, lc->channels.v[lc->channels.n - 1], PGS_MAX_NAME);
    unsubscribe(lc, channel);
  }
}

static void apply(pgs_listen_client_t *lc, char what, const char *channel) {
  if (what == 'L')
    subscribe(lc, channel);
  else if (what == 'U')
    unsubscribe(lc, channel);
  else
    unsubscribe_all(lc);
}

static void add_pending(pgs_listen_client_t *lc, char what, const char *channel) {
  if (lc->pending.n == lc->pending.cap)
    lc->pending_ops =
        pgs_xrealloc(lc->pending_ops, (size_t)(lc->pending.cap ? 2 * lc->pending.cap : 4));
  lc->pending_ops[lc->pending.n] = what;
  names_add(&lc->pending, channel);
}

/* ---- notifications to clients ---- */

/* Between transactions and requests: where PostgreSQL would send it a
 * notification. */
static bool client_between(const pgs_client_t *c) {
  return (c->state == PGS_CL_IDLE || c->state == PGS_CL_ACTIVE) && c->txstatus == 'I' &&
         c->request_start_us == 0 && !pgs_session_planned(&c->session) && c->fan == NULL &&
         c->session.ex.ready_pending == 0;
}

/* The WARNING that notifications were dropped, once, before what it gets
 * next. */
static void put_dropped_notice(pgs_listen_client_t *lc) {
  if (lc->dropped == 0) return;
  pgs_io_t *io = &lc->client->io;
  char message[300];
  snprintf(message, sizeof(message),
           "pgshard: %llu notifications for this session were dropped: more than "
           "max_notify_queue_bytes (%lld) waited for it to end its transaction or read its "
           "results",
           (unsigned long long)lc->dropped, (long long)lc->client->config->max_notify_queue_bytes);
  size_t mark = pgs_io_scratch_mark(io);
  pgs_msg_error_raw(pgs_io_scratch(io), "WARNING", "01000", message, NULL);
  pgs_io_scratch(io)->data[mark] = 'N'; /* a NoticeResponse */
  pgs_io_scratch_done(io, mark);
  pgs_info("client %d (%s@%s): %llu notifications dropped (max_notify_queue_bytes)",
           lc->client->cancel_pid, lc->client->username, lc->client->peer,
           (unsigned long long)lc->dropped);
  lc->dropped = 0;
}

/* The held notifications into the client's output (flushed by the
 * caller). */
static void put_queue(pgs_listen_client_t *lc) {
  pgs_io_t *io = &lc->client->io;
  if (lc->queue.len > 0) {
    size_t mark = pgs_io_scratch_mark(io);
    pgs_buf_put(pgs_io_scratch(io), lc->queue.data, lc->queue.len);
    pgs_io_scratch_done(io, mark);
    pgs_account_mem_sub(lc->client, lc->queue.len);
    lc->queue.len = 0;
    if (lc->queue.cap > 64 * 1024) pgs_buf_free(&lc->queue); /* a burst's room goes back */
  }
  put_dropped_notice(lc);
}

/* Notification M (LEN bytes) for LC's client: out now when it is between
 * transactions (flushed once the listener's input is handled), else held. */
static void notify_client(pgs_listen_client_t *lc, const uint8_t *m, size_t len) {
  pgs_client_t *c = lc->client;
  size_t cap = (size_t)c->config->max_notify_queue_bytes;
  if (client_between(c) && lc->queue.len == 0) {
    /* Its output not yet written (this burst's included) stays under the
     * cap too: a client that does not read makes pgshard hold no more. */
    if (pgs_io_backlog(&c->io) + c->io.scratch.len + len > cap) {
      lc->dropped++;
      return;
    }
    put_dropped_notice(lc);
    size_t mark = pgs_io_scratch_mark(&c->io);
    pgs_buf_put(pgs_io_scratch(&c->io), m, len);
    pgs_io_scratch_done(&c->io, mark);
    pgs_list_remove(&lc->flush_link);
    pgs_list_append(&registry(c->worker)->flush, &lc->flush_link);
    return;
  }
  if (lc->queue.len + len > cap || pgs_account_mem_refuses(c, len)) {
    lc->dropped++;
    return;
  }
  pgs_buf_put(&lc->queue, m, len);
  pgs_account_mem_add(c, len);
}

static void deliver(listen_db_t *db, const PGnotify *n) {
  listen_channel_t *ch = pgs_strmap_get(&db->channels, n->relname);
  if (ch == NULL || ch->nclients == 0) return;
  pgs_buf_t m;
  pgs_buf_init(&m);
  size_t start = pgs_msg_begin(&m, 'A');
  pgs_buf_put_i32(&m, n->be_pid);
  pgs_buf_put_cstr(&m, n->relname);
  pgs_buf_put_cstr(&m, n->extra ? n->extra : "");
  pgs_msg_end(&m, start);
  for (int i = 0; i < ch->nclients; i++) notify_client(ch->clients[i], m.data, m.len);
  pgs_buf_free(&m);
}

/* After a listener's event: written notifications go out, and LISTENs
 * whose channel is confirmed (or whose listeners went down) are answered.
 * Either may close or run a client, which may change the lists: each
 * client is taken off its list before. */
static void settle(listen_db_t *db) {
  pgs_listen_registry_t *reg = registry(db->worker);
  for (pgs_list_t *l = db->waiters.next; l != &db->waiters;) {
    pgs_listen_client_t *lc = pgs_container_of(l, pgs_listen_client_t, wait_link);
    l = l->next;
    if (lc->wait_over || confirmed(db, lc->waiting)) {
      pgs_list_remove(&lc->wait_link);
      pgs_list_append(&reg->ready, &lc->wait_link);
    }
  }
  while (!pgs_list_empty(&reg->flush)) {
    pgs_listen_client_t *lc = pgs_container_of(reg->flush.next, pgs_listen_client_t, flush_link);
    pgs_list_remove(&lc->flush_link);
    if (pgs_io_flush(&lc->client->io) < 0) ops->close(lc->client);
  }
  while (!pgs_list_empty(&reg->ready)) {
    pgs_listen_client_t *lc = pgs_container_of(reg->ready.next, pgs_listen_client_t, wait_link);
    pgs_list_remove(&lc->wait_link);
    ops->resume(lc->client);
  }
}

/* ---- what the client's session tells ---- */

static void put_complete(pgs_client_t *client, const char *tag) {
  if (tag == NULL) return; /* quiet: a server answers */
  size_t mark = pgs_io_scratch_mark(&client->io);
  size_t start = pgs_msg_begin(pgs_io_scratch(&client->io), 'C');
  pgs_buf_put_cstr(pgs_io_scratch(&client->io), tag);
  pgs_msg_end(pgs_io_scratch(&client->io), start);
  pgs_io_scratch_done(&client->io, mark);
}

/* LISTEN of CHANNEL (in a transaction or not): answered once every
 * listener that is up has it, or LISTEN_WAIT_MS later. */
static pgs_listen_result_t listen_confirmed(pgs_listen_client_t *lc, const char *channel) {
  if (lc->waiting[0] && !strcmp(lc->waiting, channel) && lc->wait_over) {
    lc->waiting[0] = '\0'; /* answered after LISTEN_WAIT_MS, whatever the listeners said */
    put_complete(lc->client, "LISTEN");
    return PGS_LISTEN_DONE;
  }
  db_kick(lc->db);
  if (confirmed(lc->db, channel)) {
    lc->waiting[0] = '\0';
    pgs_list_remove(&lc->wait_link);
    put_complete(lc->client, "LISTEN");
    return PGS_LISTEN_DONE;
  }
  if (strcmp(lc->waiting, channel) != 0) {
    snprintf(lc->waiting, sizeof(lc->waiting), "%s", channel);
    lc->wait_since_ms = pgs_now_ms();
    lc->wait_over = false;
  }
  pgs_list_remove(&lc->wait_link);
  pgs_list_append(&lc->db->waiters, &lc->wait_link);
  return PGS_LISTEN_WAIT;
}

pgs_listen_result_t pgs_listen_step(pgs_client_t *client, char what, const char *channel,
                                    char txstatus, bool quiet) {
  const char *tag = quiet ? NULL : what == 'L' ? "LISTEN" : "UNLISTEN";
  if (txstatus == 'E' && quiet) return PGS_LISTEN_DONE; /* the server refuses the statement */
  if (txstatus == 'E') {
    size_t mark = pgs_io_scratch_mark(&client->io);
    pgs_msg_error_raw(pgs_io_scratch(&client->io), "ERROR", "25P02",
                      "current transaction is aborted, commands ignored until end of "
                      "transaction block",
                      NULL);
    pgs_io_scratch_done(&client->io, mark);
    return PGS_LISTEN_FAILED;
  }
  if (client->listen == NULL && what != 'L') {
    put_complete(client, tag); /* nothing to give up */
    return PGS_LISTEN_DONE;
  }
  pgs_listen_client_t *lc = client_part(client);
  bool again = lc->waiting[0] && !strcmp(lc->waiting, channel); /* it waited: run again */
  if (txstatus == 'T') {
    /* Applied at COMMIT. A new channel is listened on from now on, so that
     * the COMMIT's answer finds it confirmed; what arrives for it before
     * then is not the client's (it was not listening yet) and is dropped
     * at the end of the transaction, as is the channel at a ROLLBACK. */
    if (!again) add_pending(lc, what, channel);
    if (what != 'L') {
      put_complete(client, tag);
      return PGS_LISTEN_DONE;
    }
    if (names_find(&lc->channels, channel) < 0) {
      subscribe(lc, channel);
      names_add(&lc->provisional, channel);
    }
    return listen_confirmed(lc, channel);
  }
  if (what != 'L') {
    apply(lc, what, channel);
    db_kick(lc->db);
    put_complete(client, tag);
    return PGS_LISTEN_DONE;
  }
  subscribe(lc, channel);
  return listen_confirmed(lc, channel);
}

void pgs_listen_client_message(pgs_client_t *client, char type, const uint8_t *body, size_t len) {
  pgs_listen_client_t *lc = client->listen;
  if (lc == NULL || (lc->pending.n == 0 && lc->provisional.n == 0)) return;
  if (type == 'E' || (type == 'C' && len >= 8 && !memcmp(body, "ROLLBACK", 8)))
    lc->tx_failed = true;
}

/* Held notifications of the channels in NAMES are dropped. */
static void drop_queued(pgs_listen_client_t *lc, const names_t *names) {
  pgs_buf_t *q = &lc->queue;
  size_t out = 0, before = q->len;
  for (size_t at = 0; at + 5 <= q->len;) {
    size_t total = 1 + (size_t)pgs_get_u32(q->data + at + 1);
    const char *channel = (const char *)q->data + at + 9; /* after the type, length, pid */
    if (names_find(names, channel) < 0) {
      memmove(q->data + out, q->data + at, total);
      out += total;
    }
    at += total;
  }
  q->len = out;
  if (before > out) pgs_account_mem_sub(lc->client, before - out);
}

void pgs_listen_after_ready(pgs_client_t *client, char status) {
  pgs_listen_client_t *lc = client->listen;
  if (lc == NULL) return;
  bool in_tx = lc->pending.n > 0 || lc->provisional.n > 0;
  if (status == 'E') {
    if (in_tx) lc->tx_failed = true;
    return;
  }
  if (status != 'I') return;
  if (in_tx) {
    drop_queued(lc, &lc->provisional);
    if (lc->tx_failed) {
      for (int i = 0; i < lc->provisional.n; i++) unsubscribe(lc, lc->provisional.v[i]);
    } else {
      for (int i = 0; i < lc->pending.n; i++) apply(lc, lc->pending_ops[i], lc->pending.v[i]);
    }
    lc->pending.n = 0;
    lc->provisional.n = 0;
    db_kick(lc->db);
  }
  lc->tx_failed = false;
  put_queue(lc); /* after the ReadyForQuery, flushed with it */
}

void pgs_listen_client_gone(pgs_client_t *client) {
  pgs_listen_client_t *lc = client->listen;
  if (lc == NULL) return;
  unsubscribe_all(lc);
  db_kick(lc->db);
  lc->db->nclients--;
  pgs_list_remove(&lc->wait_link);
  pgs_list_remove(&lc->flush_link);
  if (lc->queue.len) pgs_account_mem_sub(client, lc->queue.len);
  pgs_buf_free(&lc->queue);
  names_free(&lc->channels);
  names_free(&lc->pending);
  names_free(&lc->provisional);
  free(lc->pending_ops);
  free(lc);
  client->listen = NULL;
}

/* ---- the worker's tick ---- */

void pgs_listen_tick(pgs_worker_t *worker, uint64_t now) {
  if (worker->listen == NULL) return;
  pgs_listen_registry_t *reg = worker->listen;
  for (pgs_list_t *dl = reg->dbs.next; dl != &reg->dbs;) {
    listen_db_t *db = pgs_container_of(dl, listen_db_t, link);
    dl = dl->next;
    if (db->nclients == 0 && db->channels.count == 0) {
      db_free(db); /* nobody of it listens on this worker any more */
      continue;
    }
    db_follow_config(db);
    uint64_t timeout = (uint64_t)worker->config->server_connect_timeout_ms;
    for (int i = 0; i < db->nlisteners; i++) {
      listener_t *l = db->listeners[i];
      int writer = writer_node(l);
      if (l->state == LS_DOWN && writer >= 0 && writer != l->node)
        l->retry_at_ms = now; /* a promotion: no backoff for the new primary */
      if (l->state == LS_DOWN && now >= l->retry_at_ms) {
        if (db->channels.count > 0) {
          if (l->backoff_ms) l->reconnects++;
          listener_connect(l);
        }
      } else if (l->state == LS_CONNECTING && timeout > 0 && now - l->state_since_ms > timeout) {
        listener_lost(l, "connection timed out (server_connect_timeout_ms)");
      } else if ((l->state == LS_READY || l->state == LS_BUSY) && writer >= 0 &&
                 writer != l->node) {
        pgs_info("listener %s/%s: the shard's primary moved: listening there", db->name, l->shard);
        drop_connection(l);
        listener_set_state(l, LS_DOWN);
        l->backoff_ms = 0;
        l->reconnects++;
        listener_connect(l);
      }
    }
    for (pgs_list_t *l = db->waiters.next; l != &db->waiters; l = l->next) {
      pgs_listen_client_t *lc = pgs_container_of(l, pgs_listen_client_t, wait_link);
      if (now - lc->wait_since_ms >= LISTEN_WAIT_MS && !lc->wait_over) {
        pgs_warn(
            "client %d (%s@%s): LISTEN %s answered before every shard's listener "
            "confirmed it (%d ms)",
            lc->client->cancel_pid, lc->client->username, lc->client->peer, lc->waiting,
            LISTEN_WAIT_MS);
        lc->wait_over = true;
      }
    }
    settle(db);
  }
}

void pgs_listen_stop(pgs_worker_t *worker) {
  if (worker->listen == NULL) return;
  pgs_listen_registry_t *reg = worker->listen;
  while (!pgs_list_empty(&reg->dbs)) {
    listen_db_t *db = pgs_container_of(reg->dbs.next, listen_db_t, link);
    while (!pgs_list_empty(&db->waiters)) pgs_list_remove(db->waiters.next);
    db_free(db);
  }
  free(reg);
  worker->listen = NULL;
}

void pgs_listen_each(pgs_worker_t *worker, void (*row)(void *arg, const pgs_listener_info_t *info),
                     void *arg) {
  if (worker->listen == NULL) return;
  for (pgs_list_t *dl = worker->listen->dbs.next; dl != &worker->listen->dbs; dl = dl->next) {
    listen_db_t *db = pgs_container_of(dl, listen_db_t, link);
    for (int i = 0; i < db->nlisteners; i++) {
      const listener_t *l = db->listeners[i];
      pgs_listener_info_t info = {
          .database = db->name,
          .shard = l->shard,
          .state = listener_state_names[l->state],
          .user = db->user,
          .backend_pid = l->backend_pid,
          .channels = (int)l->applied.count,
          .clients = db->nclients,
          .notifications = l->notifications,
          .reconnects = l->reconnects,
      };
      row(arg, &info);
    }
  }
}
