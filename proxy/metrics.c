/*
 * metrics.c — Prometheus text metrics at GET /metrics on metrics_listen.
 *
 * The endpoint lives on worker 0's loop. A scrape is one HTTP/1.x request
 * per connection (the response says Connection: close): the request head is
 * read (at most METRICS_MAX_REQUEST bytes, METRICS_TIMEOUT_MS to send it),
 * every worker's counters, pools and clients are gathered (gather.c), the
 * health snapshot and the config are read on worker 0, and the text goes
 * out. Anything but GET /metrics gets 404; a request too big or too slow is
 * closed.
 *
 *   READING --head complete, GET /metrics--> GATHERING --parts in--> WRITING --> closed
 *   READING --other request------------------------------------------> WRITING (404)
 *   any ------peer gone, timeout, error-------------------------------> closed (gather cancelled)
 *
 * Names and labels are listed in README ("Metrics").
 */
#include <stdarg.h>
#include <string.h>

#include "pgshard/listen.h"
#include "pgshard/log.h"
#include "pgshard/monitor.h"
#include "pgshard/stats.h"
#include "pgshard/gather.h"
#include "pgshard/mailbox.h"
#include "pgshard/metrics.h"

#define METRICS_MAX_REQUEST 8192
#define METRICS_TIMEOUT_MS 10000

typedef enum { METRICS_READING, METRICS_GATHERING, METRICS_WRITING, METRICS_CLOSING } conn_state_t;

typedef struct metrics_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wreq;
  pgs_worker_t *worker;
  conn_state_t state;
  int closing_handles;
  char head[METRICS_MAX_REQUEST];
  size_t head_len;
  pgs_gather_t *gather;
  pgs_buf_t out;
} metrics_conn_t;

/* ---- what each worker contributes ---- */

typedef struct pool_record {
  char db[PGS_MAX_NAME], user[PGS_MAX_NAME], shard[PGS_MAX_NAME];
  int node;
  int64_t active, idle, connecting, waiting, maxwait_ms;
} pool_record_t;

typedef struct clients_record {
  char db[PGS_MAX_NAME];
  int64_t active, waiting, idle; /* holding a server, waiting for one, neither */
} clients_record_t;

/* LISTEN/NOTIFY: a worker's listening connections of one shard. */
typedef struct listen_record {
  char db[PGS_MAX_NAME], shard[PGS_MAX_NAME];
  int64_t up, channels;
  uint64_t notifications;
} listen_record_t;

static void listen_row(void *arg, const pgs_listener_info_t *info) {
  pgs_buf_t *recs = arg;
  listen_record_t r;
  memset(&r, 0, sizeof(r));
  snprintf(r.db, sizeof(r.db), "%s", info->database);
  snprintf(r.shard, sizeof(r.shard), "%s", info->shard);
  r.up = !strcmp(info->state, "ready") || !strcmp(info->state, "busy");
  r.channels = info->channels;
  r.notifications = info->notifications;
  pgs_buf_put(recs, &r, sizeof(r));
}

/* A part: u32 count then the records, for stats, pools, clients, listeners
 * in turn. */
static void put_count(pgs_buf_t *b, uint32_t n) { pgs_buf_put(b, &n, sizeof(n)); }

static void metrics_part(pgs_worker_t *w, pgs_buf_t *b, int what, int64_t param) {
  PGS_UNUSED(what);
  PGS_UNUSED(param);
  put_count(b, (uint32_t)w->nstats);
  for (int i = 0; i < w->nstats; i++) pgs_buf_put(b, w->stats[i], sizeof(pgs_db_stats_t));
  uint32_t npools = 0;
  for (pgs_list_t *l = w->pools.next; l != &w->pools; l = l->next) npools++;
  put_count(b, npools);
  uint64_t now = pgs_now_ms();
  for (pgs_list_t *l = w->pools.next; l != &w->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    pool_record_t r;
    memset(&r, 0, sizeof(r));
    snprintf(r.db, sizeof(r.db), "%s", pool->dbname);
    snprintf(r.user, sizeof(r.user), "%s", pool->username);
    snprintf(r.shard, sizeof(r.shard), "%s", pool->shard);
    r.node = pool->node;
    r.active = pool->nactive;
    r.idle = pool->nidle;
    r.connecting = pool->nconnecting;
    r.waiting = pool->nwaiters;
    if (!pgs_list_empty(&pool->waiters))
      r.maxwait_ms =
          (int64_t)(now -
                    pgs_container_of(pool->waiters.next, pgs_client_t, wait_link)->wait_start_ms);
    pgs_buf_put(b, &r, sizeof(r));
  }
  clients_record_t *recs = NULL;
  uint32_t n = 0;
  for (pgs_list_t *l = w->clients.next; l != &w->clients; l = l->next) {
    pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
    if (c->session.db == NULL && !c->admin) continue; /* still logging in */
    const char *db = c->admin ? "pgshard" : c->session.db->name;
    uint32_t k = 0;
    while (k < n && strcmp(recs[k].db, db) != 0) k++;
    if (k == n) {
      recs = pgs_xrealloc(recs, (n + 1) * sizeof(*recs));
      memset(&recs[n], 0, sizeof(*recs));
      snprintf(recs[n].db, sizeof(recs[n].db), "%s", db);
      n++;
    }
    if (c->state == PGS_CL_WAITING)
      recs[k].waiting++;
    else if (c->state == PGS_CL_ACTIVE)
      recs[k].active++;
    else
      recs[k].idle++;
  }
  put_count(b, n);
  if (n) pgs_buf_put(b, recs, n * sizeof(*recs));
  free(recs);
  pgs_buf_t listens;
  pgs_buf_init(&listens);
  pgs_listen_each(w, listen_row, &listens);
  put_count(b, (uint32_t)(listens.len / sizeof(listen_record_t)));
  pgs_buf_put(b, listens.data, listens.len);
  pgs_buf_free(&listens);
}

/* ---- the text ---- */

PGS_PRINTF(2, 3)
static void put(pgs_buf_t *b, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n > 0) pgs_buf_put(b, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void family(pgs_buf_t *b, const char *name, const char *type, const char *help) {
  put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Reads COUNT then that many records of SIZE at *AT of B. */
static const uint8_t *records(const pgs_buf_t *b, size_t *at, size_t size, uint32_t *count) {
  *count = 0;
  if (*at + sizeof(uint32_t) > b->len) return NULL;
  memcpy(count, b->data + *at, sizeof(uint32_t));
  *at += sizeof(uint32_t);
  const uint8_t *p = b->data + *at;
  if (*at + (size_t)*count * size > b->len) {
    *count = 0;
    return NULL;
  }
  *at += (size_t)*count * size;
  return p;
}

/* The health monitor's check latency of every node, from the snapshot
 * (health.h): each family's lines together, as the text format wants. */
static void render_checks(pgs_buf_t *b, const pgs_config_t *config, const pgs_snapshot_t *snap) {
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 0)
      family(b, "pgshard_health_check_seconds", "histogram",
             "health checks that answered: connect (when needed) and lag query");
    else
      family(b, "pgshard_health_check_last_seconds", "gauge",
             "the latest health check that answered");
    for (int d = 0; d < config->ndatabases; d++) {
      const pgs_database_t *db = &config->databases[d];
      for (int s = 0; s < db->nshards; s++) {
        const pgs_shard_health_t *h = pgs_snapshot_shard_of(snap, db, s);
        for (int i = 0; h && i < h->nnodes; i++) {
          const pgs_check_timing_t *t = &h->nodes[i].check;
          char labels[256];
          snprintf(labels, sizeof(labels), "database=\"%s\",shard=\"%s\",node=\"%d\",role=\"%s\"",
                   db->name, db->shards[s].name, i, i == 0 ? "primary" : "replica");
          if (pass == 1) {
            if (t->count > 0)
              put(b, "pgshard_health_check_last_seconds{%s} %.6f\n", labels,
                  (double)t->last_us / 1e6);
            continue;
          }
          uint64_t cumulative = 0;
          for (int k = 0; k < PGS_CHECK_BUCKETS; k++) {
            cumulative += t->buckets[k];
            put(b, "pgshard_health_check_seconds_bucket{%s,le=\"%g\"} %llu\n", labels,
                (double)pgs_check_bucket_us[k] / 1e6, (unsigned long long)cumulative);
          }
          put(b, "pgshard_health_check_seconds_bucket{%s,le=\"+Inf\"} %llu\n", labels,
              (unsigned long long)t->count);
          put(b, "pgshard_health_check_seconds_sum{%s} %.6f\n", labels, (double)t->sum_us / 1e6);
          put(b, "pgshard_health_check_seconds_count{%s} %llu\n", labels,
              (unsigned long long)t->count);
        }
      }
    }
  }
}

static void render(metrics_conn_t *mc, pgs_gather_t *g) {
  pgs_buf_t *b = &mc->out;
  const pgs_config_t *config = mc->worker->config;
  pgs_db_stats_t *stats = NULL;
  int nstats = 0;
  pool_record_t *pools = NULL;
  int npools = 0;
  clients_record_t *clients = NULL;
  int nclients = 0;
  listen_record_t *listens = NULL;
  int nlistens = 0;
  for (int i = 0; i < pgs_gather_nparts(g); i++) {
    const pgs_buf_t *part = pgs_gather_part(g, i);
    size_t at = 0;
    uint32_t n;
    const uint8_t *p = records(part, &at, sizeof(pgs_db_stats_t), &n);
    if (p) pgs_db_stats_merge_records(p, n, &stats, &nstats);
    p = records(part, &at, sizeof(pool_record_t), &n);
    for (uint32_t k = 0; k < n; k++) {
      pool_record_t r;
      memcpy(&r, p + k * sizeof(r), sizeof(r));
      int j = 0;
      while (j < npools && !(strcmp(pools[j].db, r.db) == 0 && strcmp(pools[j].user, r.user) == 0 &&
                             strcmp(pools[j].shard, r.shard) == 0 && pools[j].node == r.node))
        j++;
      if (j == npools) {
        pools = pgs_xrealloc(pools, (size_t)(npools + 1) * sizeof(*pools));
        pools[npools++] = r;
        continue;
      }
      pools[j].active += r.active;
      pools[j].idle += r.idle;
      pools[j].connecting += r.connecting;
      pools[j].waiting += r.waiting;
      if (r.maxwait_ms > pools[j].maxwait_ms) pools[j].maxwait_ms = r.maxwait_ms;
    }
    p = records(part, &at, sizeof(clients_record_t), &n);
    for (uint32_t k = 0; k < n; k++) {
      clients_record_t r;
      memcpy(&r, p + k * sizeof(r), sizeof(r));
      int j = 0;
      while (j < nclients && strcmp(clients[j].db, r.db) != 0) j++;
      if (j == nclients) {
        clients = pgs_xrealloc(clients, (size_t)(nclients + 1) * sizeof(*clients));
        clients[nclients++] = r;
        continue;
      }
      clients[j].active += r.active;
      clients[j].waiting += r.waiting;
      clients[j].idle += r.idle;
    }
    p = records(part, &at, sizeof(listen_record_t), &n);
    for (uint32_t k = 0; k < n; k++) {
      listen_record_t r;
      memcpy(&r, p + k * sizeof(r), sizeof(r));
      int j = 0;
      while (j < nlistens &&
             !(strcmp(listens[j].db, r.db) == 0 && strcmp(listens[j].shard, r.shard) == 0))
        j++;
      if (j == nlistens) {
        listens = pgs_xrealloc(listens, (size_t)(nlistens + 1) * sizeof(*listens));
        listens[nlistens++] = r;
        continue;
      }
      listens[j].up += r.up;
      listens[j].channels += r.channels;
      listens[j].notifications += r.notifications;
    }
  }

  family(b, "pgshard_up", "gauge", "1 while pgshard answers");
  put(b, "pgshard_up 1\n");
  family(b, "pgshard_workers", "gauge", "event-loop threads");
  put(b, "pgshard_workers %d\n", pgs_mailbox_count());
  family(b, "pgshard_map_version", "gauge",
         "version of the shard map served (map_source; 0: the config file's)");
  put(b, "pgshard_map_version %lld\n", (long long)config->map_version);

  family(b, "pgshard_clients", "gauge", "client connections by state");
  for (int j = 0; j < nclients; j++) {
    put(b, "pgshard_clients{database=\"%s\",state=\"active\"} %lld\n", clients[j].db,
        (long long)clients[j].active);
    put(b, "pgshard_clients{database=\"%s\",state=\"waiting\"} %lld\n", clients[j].db,
        (long long)clients[j].waiting);
    put(b, "pgshard_clients{database=\"%s\",state=\"idle\"} %lld\n", clients[j].db,
        (long long)clients[j].idle);
  }

  family(b, "pgshard_servers", "gauge", "server connections by state");
  for (int j = 0; j < npools; j++) {
    const pool_record_t *r = &pools[j];
    const char *states[] = {"active", "idle", "connecting"};
    int64_t values[] = {r->active, r->idle, r->connecting};
    for (int k = 0; k < 3; k++)
      put(b,
          "pgshard_servers{database=\"%s\",user=\"%s\",shard=\"%s\",node=\"%d\",state=\"%s\"} "
          "%lld\n",
          r->db, r->user, r->shard, r->node, states[k], (long long)values[k]);
  }
  family(b, "pgshard_listen_connections", "gauge",
         "LISTEN/NOTIFY: pgshard's listening connections that are up (one per worker)");
  for (int j = 0; j < nlistens; j++)
    put(b, "pgshard_listen_connections{database=\"%s\",shard=\"%s\"} %lld\n", listens[j].db,
        listens[j].shard, (long long)listens[j].up);
  family(b, "pgshard_listen_channels", "gauge",
         "LISTEN/NOTIFY: channels LISTENed on pgshard's connections, summed over workers");
  for (int j = 0; j < nlistens; j++)
    put(b, "pgshard_listen_channels{database=\"%s\",shard=\"%s\"} %lld\n", listens[j].db,
        listens[j].shard, (long long)listens[j].channels);
  family(b, "pgshard_notifications_total", "counter",
         "LISTEN/NOTIFY: notifications pgshard's listening connections received");
  for (int j = 0; j < nlistens; j++)
    put(b, "pgshard_notifications_total{database=\"%s\",shard=\"%s\"} %llu\n", listens[j].db,
        listens[j].shard, (unsigned long long)listens[j].notifications);
  free(listens);
  family(b, "pgshard_pool_waiting_clients", "gauge", "clients waiting for a server");
  for (int j = 0; j < npools; j++)
    put(b,
        "pgshard_pool_waiting_clients{database=\"%s\",user=\"%s\",shard=\"%s\",node=\"%d\"} %lld\n",
        pools[j].db, pools[j].user, pools[j].shard, pools[j].node, (long long)pools[j].waiting);
  family(b, "pgshard_pool_max_wait_seconds", "gauge", "longest current wait for a server");
  for (int j = 0; j < npools; j++)
    put(b,
        "pgshard_pool_max_wait_seconds{database=\"%s\",user=\"%s\",shard=\"%s\",node=\"%d\"} "
        "%.3f\n",
        pools[j].db, pools[j].user, pools[j].shard, pools[j].node,
        (double)pools[j].maxwait_ms / 1000.0);

  static const struct {
    const char *name, *help;
    size_t offset;
  } counters[] = {
      {"pgshard_requests_total", "requests answered (a Query, or messages up to Sync)",
       offsetof(pgs_db_stats_t, requests)},
      {"pgshard_transactions_total", "transactions ended (ReadyForQuery idle)",
       offsetof(pgs_db_stats_t, transactions)},
      {"pgshard_queries_total", "Query and Execute messages", offsetof(pgs_db_stats_t, queries)},
      {"pgshard_errors_total", "requests that sent the client an error",
       offsetof(pgs_db_stats_t, errors)},
      {"pgshard_refusals_total", "errors pgshard made itself", offsetof(pgs_db_stats_t, refusals)},
      {"pgshard_fanouts_total", "reads run on several shards and merged",
       offsetof(pgs_db_stats_t, fanouts)},
      {"pgshard_twopc_commits_total", "two-phase commits decided commit",
       offsetof(pgs_db_stats_t, twopc_commits)},
      {"pgshard_twopc_aborts_total", "two-phase commits rolled back",
       offsetof(pgs_db_stats_t, twopc_aborts)},
      {"pgshard_received_bytes_total", "bytes from clients", offsetof(pgs_db_stats_t, bytes_in)},
      {"pgshard_sent_bytes_total", "bytes to clients", offsetof(pgs_db_stats_t, bytes_out)},
  };
  for (size_t c = 0; c < PGS_ARRAY_LEN(counters); c++) {
    family(b, counters[c].name, "counter", counters[c].help);
    for (int j = 0; j < nstats; j++) {
      uint64_t v;
      memcpy(&v, (const char *)&stats[j] + counters[c].offset, sizeof(v));
      put(b, "%s{database=\"%s\"} %llu\n", counters[c].name, stats[j].db, (unsigned long long)v);
    }
  }
  family(b, "pgshard_client_errors_total", "counter",
         "ErrorResponses clients got, by SQLSTATE class (\"??\": other classes)");
  for (int j = 0; j < nstats; j++)
    for (int k = 0; k < stats[j].nerror_classes; k++)
      put(b, "pgshard_client_errors_total{database=\"%s\",class=\"%s\"} %llu\n", stats[j].db,
          stats[j].error_classes[k].cls, (unsigned long long)stats[j].error_classes[k].count);
  /* Bucket bounds at powers of two microseconds are bucket edges of the
   * histogram (stats.h): the cumulative counts are exact. */
  family(b, "pgshard_request_duration_seconds", "histogram",
         "request latency, first message to ReadyForQuery");
  for (int j = 0; j < nstats; j++) {
    const pgs_hist_t *h = &stats[j].latency;
    uint64_t cumulative = 0;
    int bucket = 0;
    for (int e = 6; e <= 25; e++) { /* 64 µs .. 33.5 s */
      uint64_t bound = (uint64_t)1 << e;
      while (bucket < PGS_HIST_BUCKETS && pgs_hist_bucket_end(bucket) <= bound)
        cumulative += h->buckets[bucket++];
      put(b, "pgshard_request_duration_seconds_bucket{database=\"%s\",le=\"%.6f\"} %llu\n",
          stats[j].db, (double)bound / 1e6, (unsigned long long)cumulative);
    }
    put(b, "pgshard_request_duration_seconds_bucket{database=\"%s\",le=\"+Inf\"} %llu\n",
        stats[j].db, (unsigned long long)h->count);
    put(b, "pgshard_request_duration_seconds_sum{database=\"%s\"} %.6f\n", stats[j].db,
        (double)h->sum / 1e6);
    put(b, "pgshard_request_duration_seconds_count{database=\"%s\"} %llu\n", stats[j].db,
        (unsigned long long)h->count);
  }

  const pgs_snapshot_t *snap = mc->worker->snapshot;
  family(b, "pgshard_node_up", "gauge", "1 when the health monitor reaches the node");
  family(b, "pgshard_node_writer", "gauge", "1 for the node writes of its shard go to");
  family(b, "pgshard_node_in_read_set", "gauge", "1 for a replica that takes reads");
  family(b, "pgshard_replica_lag_bytes", "gauge", "WAL bytes a replica has not replayed");
  family(b, "pgshard_replica_lag_seconds", "gauge", "how far behind a replica's replay is");
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_health_t *h = pgs_snapshot_shard_of(snap, db, s);
      for (int i = 0; h && i < h->nnodes; i++) {
        const pgs_node_state_t *ns = &h->nodes[i];
        char labels[256];
        snprintf(labels, sizeof(labels), "database=\"%s\",shard=\"%s\",node=\"%d\",role=\"%s\"",
                 db->name, db->shards[s].name, i, i == 0 ? "primary" : "replica");
        put(b, "pgshard_node_up{%s} %d\n", labels, ns->up ? 1 : 0);
        put(b, "pgshard_node_writer{%s} %d\n", labels, h->writer == i ? 1 : 0);
        if (i == 0) continue;
        put(b, "pgshard_node_in_read_set{%s} %d\n", labels, ns->readable ? 1 : 0);
        put(b, "pgshard_replica_lag_bytes{%s} %llu\n", labels, (unsigned long long)ns->lag_bytes);
        if (ns->lag_ms >= 0)
          put(b, "pgshard_replica_lag_seconds{%s} %.3f\n", labels, (double)ns->lag_ms / 1000.0);
      }
    }
  }
  render_checks(b, config, snap);
  free(stats);
  free(pools);
  free(clients);
}

/* ---- the connection ---- */

static void conn_closed_cb(uv_handle_t *handle) {
  metrics_conn_t *mc = handle->data;
  if (--mc->closing_handles > 0) return;
  pgs_buf_free(&mc->out);
  free(mc);
}

static void conn_close(metrics_conn_t *mc) {
  if (mc->state == METRICS_CLOSING) return;
  mc->state = METRICS_CLOSING;
  pgs_gather_cancel(mc->gather);
  mc->gather = NULL;
  mc->closing_handles = 2;
  uv_close((uv_handle_t *)&mc->timer, conn_closed_cb);
  uv_close((uv_handle_t *)&mc->tcp, conn_closed_cb);
}

static void write_cb(uv_write_t *req, int status) {
  PGS_UNUSED(status);
  conn_close(req->data);
}

static void respond(metrics_conn_t *mc, const char *status, const char *body, size_t len) {
  pgs_buf_t head;
  pgs_buf_init(&head);
  char line[256];
  int n = snprintf(line, sizeof(line),
                   "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                   status, len);
  pgs_buf_put(&head, line, (size_t)n);
  pgs_buf_put(&head, body, len);
  pgs_buf_free(&mc->out);
  mc->out = head;
  mc->state = METRICS_WRITING;
  uv_buf_t buf = uv_buf_init((char *)mc->out.data, (unsigned)mc->out.len);
  mc->wreq.data = mc;
  uv_read_stop((uv_stream_t *)&mc->tcp);
  if (uv_write(&mc->wreq, (uv_stream_t *)&mc->tcp, &buf, 1, write_cb) != 0) conn_close(mc);
}

static void gather_done(pgs_gather_t *g, void *owner) {
  metrics_conn_t *mc = owner;
  mc->gather = NULL;
  pgs_buf_t body;
  pgs_buf_init(&body);
  pgs_buf_t saved = mc->out;
  mc->out = body;
  render(mc, g);
  body = mc->out;
  mc->out = saved;
  respond(mc, "200 OK", (const char *)body.data, body.len);
  pgs_buf_free(&body);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  metrics_conn_t *mc = handle->data;
  PGS_UNUSED(suggested);
  *buf = uv_buf_init(mc->head + mc->head_len, (unsigned)(sizeof(mc->head) - mc->head_len - 1));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  metrics_conn_t *mc = stream->data;
  PGS_UNUSED(buf);
  if (nread < 0) {
    conn_close(mc);
    return;
  }
  if (mc->state != METRICS_READING) return;
  mc->head_len += (size_t)nread;
  mc->head[mc->head_len] = '\0';
  if (strstr(mc->head, "\r\n\r\n") == NULL && strstr(mc->head, "\n\n") == NULL) {
    if (mc->head_len + 1 >= sizeof(mc->head)) conn_close(mc); /* too big */
    return;
  }
  if (!strncmp(mc->head, "GET /metrics ", 13) || !strncmp(mc->head, "GET /metrics?", 13)) {
    mc->state = METRICS_GATHERING;
    uv_read_stop(stream);
    mc->gather = pgs_gather_start(mc->worker, -1, 0, 0, metrics_part, gather_done, mc);
    return;
  }
  static const char not_found[] = "pgshard: only GET /metrics is served here\n";
  respond(mc, "404 Not Found", not_found, sizeof(not_found) - 1);
}

static void timeout_cb(uv_timer_t *timer) { conn_close(timer->data); }

static void on_connection(uv_stream_t *listener, int status) {
  pgs_worker_t *worker = listener->data;
  if (status < 0) return;
  metrics_conn_t *mc = pgs_xcalloc(1, sizeof(*mc));
  mc->worker = worker;
  uv_tcp_init(&worker->loop, &mc->tcp);
  uv_timer_init(&worker->loop, &mc->timer);
  mc->tcp.data = mc;
  mc->timer.data = mc;
  if (uv_accept(listener, (uv_stream_t *)&mc->tcp) != 0 ||
      uv_read_start((uv_stream_t *)&mc->tcp, alloc_cb, read_cb) != 0) {
    conn_close(mc);
    return;
  }
  uv_timer_start(&mc->timer, timeout_cb, METRICS_TIMEOUT_MS, 0);
}

int pgs_metrics_start(pgs_worker_t *worker, uv_tcp_t *listener, const char *address) {
  char host[256];
  int port;
  const char *colon = strrchr(address, ':');
  if (colon == NULL || colon == address || (size_t)(colon - address) >= sizeof(host))
    return UV_EINVAL;
  const char *h = address;
  size_t hlen = (size_t)(colon - address);
  if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
    h++;
    hlen -= 2;
  }
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  port = atoi(colon + 1);
  struct sockaddr_storage addr;
  int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                             : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (rc != 0) return rc;
  if ((rc = uv_tcp_init(&worker->loop, listener)) != 0) return rc;
  listener->data = worker;
  if ((rc = uv_tcp_bind(listener, (const struct sockaddr *)&addr, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *)listener, 64, on_connection)) != 0) {
    uv_close((uv_handle_t *)listener, NULL);
    return rc;
  }
  pgs_info("metrics at http://%s/metrics", address);
  return 0;
}
