/*
 * worker.c — event-loop threads. Each worker owns a libuv loop, its own
 * listening socket on the shared address (SO_REUSEPORT: the kernel spreads
 * connections), its clients, its pools and their servers. The kernel's
 * spread is a hash, uneven for few connections (an application pool of 16
 * can land 12 and 4): a worker that accepts a connection while another
 * has fewer clients hands the socket over (on_connection), so their counts
 * differ by at most one and neither loop carries most of the load. Other threads talk
 * to a worker only through its mailbox: fields under mbox_lock, then
 * uv_async_send.
 *
 * Life of a worker: running -> (SIGTERM) draining: listener closed, clients
 * closed as soon as they hold no server -> stopping: everything closed, the
 * loop runs until the last close callback, the thread ends.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "pgshard/log.h"
#include "pgshard/client.h"
#include "pgshard/console.h"
#include "pgshard/hold.h"
#include "pgshard/listen.h"
#include "pgshard/pool.h"
#include "pgshard/request.h"
#include "pgshard/server.h"
#include "pgshard/worker.h"
#include "pgshard/snapshot.h"
#include "pgshard/stats.h"
#include "pgshard/mailbox.h"
#include "pgshard/metrics.h"
#include "pgshard/pause.h"

#define TICK_MS 50

static pgs_worker_t *workers; /* also the mailbox's (mailbox.c) */
static int nworkers;
static int running; /* worker threads not yet ended (atomic) */

int pgs_workers_running(void) { return __atomic_load_n(&running, __ATOMIC_ACQUIRE); }

/* Clients a worker has or is being handed. */
static int load_of(pgs_worker_t *w) {
  return __atomic_load_n(&w->nclients, __ATOMIC_RELAXED) +
         __atomic_load_n(&w->incoming, __ATOMIC_RELAXED);
}

/* The worker with the fewest clients, when it has fewer than WORKER; -1.
 * Only workers that take connections themselves (maybe_accept: they know
 * the collations) and are not draining. */
static int less_loaded(pgs_worker_t *worker) {
  int best = -1, least = load_of(worker);
  for (int i = 0; i < nworkers; i++) {
    if (i == worker->index || !__atomic_load_n(&workers[i].accepting, __ATOMIC_ACQUIRE) ||
        __atomic_load_n(&workers[i].draining, __ATOMIC_RELAXED))
      continue;
    int load = load_of(&workers[i]);
    if (load < least) best = i, least = load;
  }
  return best;
}

static void adopt_connection(pgs_worker_t *worker, void *arg) {
  int fd = (int)(intptr_t)arg;
  __atomic_sub_fetch(&worker->incoming, 1, __ATOMIC_RELAXED);
  if (worker->draining) {
    close(fd);
    return;
  }
  (void)pgs_client_adopt(worker, fd);
}

static void free_handle(uv_handle_t *handle) { free(handle); }

/* Accept LISTENER's next connection for worker TO: its socket (a dup; the
 * handle accepting it closes here) goes through TO's mailbox. */
static void hand_over(pgs_worker_t *worker, uv_stream_t *listener, int to) {
  uv_tcp_t *tcp = pgs_xmalloc(sizeof(*tcp));
  uv_tcp_init(&worker->loop, tcp);
  uv_os_fd_t fd;
  int copy = -1;
  int rc = uv_accept(listener, (uv_stream_t *)tcp);
  if (rc == 0) rc = uv_fileno((uv_handle_t *)tcp, &fd);
  if (rc == 0 && (copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) rc = -errno;
  uv_close((uv_handle_t *)tcp, free_handle); /* the connection stays open in COPY */
  if (rc != 0) {
    pgs_warn("accept failed (for worker %d): %s", to, uv_strerror(rc));
    return;
  }
  __atomic_add_fetch(&workers[to].incoming, 1, __ATOMIC_RELAXED);
  if (!pgs_mailbox_post(to, adopt_connection, (void *)(intptr_t)copy)) {
    __atomic_sub_fetch(&workers[to].incoming, 1, __ATOMIC_RELAXED);
    (void)pgs_client_adopt(worker, copy); /* TO is stopping: this one keeps it */
  }
}

static void on_connection(uv_stream_t *listener, int status) {
  pgs_worker_t *worker = listener->data;
  if (status < 0) {
    pgs_warn("accept failed: %s", uv_strerror(status));
    return;
  }
  if (worker->draining) return;
  int to = less_loaded(worker);
  if (to >= 0)
    hand_over(worker, listener, to);
  else
    (void)pgs_client_accept(worker, listener);
}

/* A worker takes connections once the monitor has told it each
 * database's collations (a merged text ORDER BY needs them, and would be
 * refused "not known yet" before), or after ACCEPT_WAIT_MS whatever it
 * knows (a shard down at start): until then the port is closed, as a
 * server's is while it starts. */
#define ACCEPT_WAIT_MS 2000

static bool knows_collations(const pgs_worker_t *worker) {
  const pgs_config_t *c = worker->config;
  if (worker->snapshot == NULL) return false;
  for (int i = 0; i < c->ndatabases; i++)
    if (pgs_snapshot_collations(worker->snapshot, c->databases[i].name) == NULL) return false;
  return true;
}

static void maybe_accept(pgs_worker_t *worker, uint64_t now) {
  if (worker->accepting || !worker->listening || worker->draining) return;
  if (!knows_collations(worker) && now - worker->started_ms < ACCEPT_WAIT_MS) return;
  int rc = uv_listen((uv_stream_t *)&worker->listener, 1024, on_connection);
  if (rc != 0) {
    pgs_error("worker %d: cannot listen: %s", worker->index, uv_strerror(rc));
    return;
  }
  __atomic_store_n(&worker->accepting, true, __ATOMIC_RELEASE); /* read by others */
  if (worker->index == 0)
    pgs_info("accepting connections after %llu ms%s",
             (unsigned long long)(now - worker->started_ms),
             knows_collations(worker) ? "" : " (some databases' collations are not known yet)");
}

static void close_listener(pgs_worker_t *worker) {
  if (!worker->listening) return;
  worker->listening = false;
  uv_close((uv_handle_t *)&worker->listener, NULL);
}

static void close_pool_servers(pgs_list_t *list) {
  while (!pgs_list_empty(list)) {
    pgs_server_t *server = pgs_container_of(list->next, pgs_server_t, link);
    pgs_client_t *client = server->client;
    pgs_server_close(server, "shutting down");
    if (client) pgs_client_fail(client, PGS_SQLSTATE_ADMIN_SHUTDOWN, "shutting down");
  }
}

static void stop_now(pgs_worker_t *worker) {
  if (worker->stopping) return;
  worker->stopping = true;
  __atomic_store_n(&worker->draining, true, __ATOMIC_RELAXED); /* read by others */
  close_listener(worker);
  while (!pgs_list_empty(&worker->clients)) {
    pgs_client_t *client = pgs_container_of(worker->clients.next, pgs_client_t, link);
    pgs_client_fail(client, PGS_SQLSTATE_ADMIN_SHUTDOWN, "shutting down");
  }
  pgs_listen_stop(worker);
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next) {
    pgs_pool_t *pool = pgs_container_of(l, pgs_pool_t, link);
    close_pool_servers(&pool->connecting);
    close_pool_servers(&pool->idle);
    close_pool_servers(&pool->active);
  }
  uv_timer_stop(&worker->tick);
  uv_close((uv_handle_t *)&worker->tick, NULL);
  if (worker->metrics_on) uv_close((uv_handle_t *)&worker->metrics, NULL);
  worker->metrics_on = false;
  uv_mutex_lock(&worker->mbox_lock);
  worker->mbox_closed = true;
  uv_mutex_unlock(&worker->mbox_lock);
  uv_close((uv_handle_t *)&worker->wakeup, NULL);
}

static void drain_idle_clients(pgs_worker_t *worker) {
  for (pgs_list_t *l = worker->clients.next; l != &worker->clients;) {
    pgs_client_t *client = pgs_container_of(l, pgs_client_t, link);
    l = l->next;
    if (client->state == PGS_CL_IDLE && !pgs_exchange_in_tx(&client->session.ex) &&
        client->io.in_pos == client->io.in.len)
      pgs_client_fail(client, PGS_SQLSTATE_ADMIN_SHUTDOWN, "shutting down");
  }
}

static void tick_cb(uv_timer_t *timer) {
  pgs_worker_t *worker = timer->data;
  uint64_t now = pgs_now_ms();
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next)
    pgs_pool_tick(pgs_container_of(l, pgs_pool_t, link), now);
  uint64_t login_timeout = (uint64_t)worker->config->client_login_timeout_ms;
  for (pgs_list_t *l = worker->clients.next; l != &worker->clients;) {
    pgs_client_t *client = pgs_container_of(l, pgs_client_t, link);
    l = l->next;
    if ((client->state == PGS_CL_STARTUP || client->state == PGS_CL_AUTH) &&
        now - client->created_ms > login_timeout)
      pgs_client_fail(client, PGS_SQLSTATE_PROTOCOL_VIOLATION, "login timeout");
    else
      pgs_client_tick(client, now);
    /* Closing one client may hand its server to another, which may fail
     * and leave the list too: then start over (the closed ones are gone). */
    if (l != &worker->clients && pgs_container_of(l, pgs_client_t, link)->state == PGS_CL_CLOSING)
      l = worker->clients.next;
  }
  pgs_listen_tick(worker, now);
  pgs_hold_tick(now);
  maybe_accept(worker, now);
  if (worker->draining && !worker->stopping) {
    drain_idle_clients(worker);
    if (worker->nclients == 0 || now >= worker->drain_deadline_ms) stop_now(worker);
  }
}

/* A new health snapshot: routing reads it from now on; servers of nodes
 * marked down since the last one are not reused. */
static void worker_take_snapshot(pgs_worker_t *worker, pgs_snapshot_t *snapshot) {
  pgs_snapshot_t *old = worker->snapshot;
  worker->snapshot = snapshot;
  for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next)
    pgs_pool_apply_health(pgs_container_of(l, pgs_pool_t, link), snapshot);
  if (old) pgs_snapshot_unref(old);
}

static void wakeup_cb(uv_async_t *async) {
  pgs_worker_t *worker = async->data;
  pgs_config_t *config;
  bool drain, exit_now;
  int ncancels;
  struct {
    int32_t pid, key;
  } cancels[PGS_ARRAY_LEN(worker->mbox_cancels)];

  uv_mutex_lock(&worker->mbox_lock);
  config = worker->mbox_config;
  worker->mbox_config = NULL;
  pgs_snapshot_t *snapshot = worker->mbox_snapshot;
  worker->mbox_snapshot = NULL;
  drain = worker->mbox_drain;
  exit_now = worker->mbox_exit;
  ncancels = worker->mbox_ncancels;
  memcpy(cancels, worker->mbox_cancels, sizeof(cancels[0]) * (size_t)ncancels);
  worker->mbox_ncancels = 0;
  pgs_worker_task_t *tasks = worker->mbox_tasks;
  worker->mbox_tasks = NULL;
  worker->mbox_tasks_tail = &worker->mbox_tasks;
  uv_mutex_unlock(&worker->mbox_lock);

  if (config) {
    pgs_config_unref(worker->config);
    worker->config = config;
    /* Plans point into the old config; its clients analyse without cache. */
    pgs_plan_cache_clear(worker->plans);
    for (pgs_list_t *l = worker->pools.next; l != &worker->pools; l = l->next)
      pgs_pool_apply_config(pgs_container_of(l, pgs_pool_t, link), config);
  }
  if (snapshot) {
    worker_take_snapshot(worker, snapshot);
    maybe_accept(worker, pgs_now_ms());
  }
  for (int i = 0; i < ncancels; i++) {
    for (pgs_list_t *l = worker->clients.next; l != &worker->clients; l = l->next) {
      pgs_client_t *client = pgs_container_of(l, pgs_client_t, link);
      if (client->cancel_pid == cancels[i].pid && client->cancel_key == cancels[i].key) {
        pgs_client_cancel(client);
        break;
      }
    }
  }
  while (tasks) {
    pgs_worker_task_t *task = tasks;
    tasks = task->next;
    task->run(worker, task->arg);
    free(task);
  }
  if (exit_now) {
    stop_now(worker);
  } else if (drain && !worker->draining) {
    __atomic_store_n(&worker->draining, true, __ATOMIC_RELAXED); /* read by others */
    worker->drain_deadline_ms = pgs_now_ms() + (uint64_t)worker->config->shutdown_timeout_ms;
    close_listener(worker);
    drain_idle_clients(worker);
    if (worker->nclients == 0) stop_now(worker);
  }
}

static void worker_main(void *arg) {
  pgs_worker_t *worker = arg;
  uv_run(&worker->loop, UV_RUN_DEFAULT);
  pgs_hold_thread_done();
  while (!pgs_list_empty(&worker->pools)) {
    pgs_pool_t *pool = pgs_container_of(worker->pools.next, pgs_pool_t, link);
    pgs_pool_destroy(pool);
  }
  pgs_io_thread_done();
  pgs_debug("worker %d stopped", worker->index);
  __atomic_sub_fetch(&running, 1, __ATOMIC_ACQ_REL);
}

static int worker_init(pgs_worker_t *worker, int index, pgs_config_t *config, int fd) {
  int rc;
  memset(worker, 0, sizeof(*worker));
  worker->index = index;
  worker->config = pgs_config_ref(config);
  worker->plans = pgs_plan_cache_new(PGS_WORKER_PLANS);
  pgs_list_init(&worker->clients);
  pgs_list_init(&worker->closing);
  pgs_list_init(&worker->pools);
  worker->mbox_tasks_tail = &worker->mbox_tasks;
  if ((rc = uv_loop_init(&worker->loop)) != 0) goto fail_loop;
  if ((rc = uv_mutex_init(&worker->mbox_lock)) != 0) goto fail_mutex;
  if ((rc = uv_async_init(&worker->loop, &worker->wakeup, wakeup_cb)) != 0) goto fail_async;
  worker->wakeup.data = worker;
  uv_timer_init(&worker->loop, &worker->tick);
  worker->tick.data = worker;
  uv_timer_start(&worker->tick, tick_cb, TICK_MS, TICK_MS);
  if ((rc = uv_tcp_init(&worker->loop, &worker->listener)) != 0) goto fail_listener;
  worker->listener.data = worker;
  worker->listening = true;
  if ((rc = uv_tcp_open(&worker->listener, fd)) != 0) goto fail_listener;
  worker->started_ms = pgs_now_ms(); /* it listens from maybe_accept */
  return 0;
fail_listener:
  /* Handles on a loop that never ran are closed when the process exits. */
fail_async:
  uv_mutex_destroy(&worker->mbox_lock);
fail_mutex:
fail_loop:
  pgs_plan_cache_free(worker->plans);
  pgs_config_unref(worker->config);
  return rc;
}

/* What pgs_workers_join frees of a worker whose loop has ended. */
static void worker_free(pgs_worker_t *w) {
  uv_loop_close(&w->loop);
  uv_mutex_destroy(&w->mbox_lock);
  if (w->mbox_config) pgs_config_unref(w->mbox_config);
  if (w->mbox_snapshot) pgs_snapshot_unref(w->mbox_snapshot);
  if (w->snapshot) pgs_snapshot_unref(w->snapshot);
  pgs_plan_cache_free(w->plans);
  pgs_config_unref(w->config);
  free(w->queries);
  for (int i = 0; i < w->nstats; i++) free(w->stats[i]);
  free(w->stats);
  /* Tasks posted after its loop ended never ran: their owners gave up. */
  while (w->mbox_tasks) {
    pgs_worker_task_t *task = w->mbox_tasks;
    w->mbox_tasks = task->next;
    free(task);
  }
}

/* On each worker after a RESUME: its waiting clients of databases no
 * longer paused go on. */
static void resume_clients(pgs_worker_t *w, void *arg) {
  PGS_UNUSED(arg);
  for (pgs_list_t *l = w->clients.next; l != &w->clients;) {
    pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
    l = l->next;
    if (c->park != PGS_PARK_PAUSED || pgs_paused(c->dbname)) continue;
    c->park = PGS_PARK_NONE;
    (void)pgs_io_start_reading(&c->io);
    pgs_client_process(c);
  }
}

/* RESUME (pause.c): every worker's waiting clients go on. */
static void resume_all(void) {
  for (int i = 0; i < nworkers; i++) (void)pgs_mailbox_post(i, resume_clients, NULL);
}

/* On each worker once a cutover hold has ended (hold.c): the clients it
 * held plan their message again (after the config a RELOAD posted before,
 * which the mailbox hands over first). */
static void release_clients(pgs_worker_t *w, void *arg) {
  PGS_UNUSED(arg);
  for (pgs_list_t *l = w->clients.next; l != &w->clients;) {
    pgs_client_t *c = pgs_container_of(l, pgs_client_t, link);
    l = l->next;
    if (c->park != PGS_PARK_HELD || c->state == PGS_CL_CLOSING) continue;
    c->park = PGS_PARK_WOKEN;
    (void)pgs_io_start_reading(&c->io);
    pgs_client_process(c);
    /* As in tick_cb: the next one may have closed meanwhile. */
    if (l != &w->clients && pgs_container_of(l, pgs_client_t, link)->state == PGS_CL_CLOSING)
      l = w->clients.next;
  }
}

static void release_all(void) {
  for (int i = 0; i < nworkers; i++) (void)pgs_mailbox_post(i, release_clients, NULL);
}

int pgs_workers_start(pgs_config_t *config, int *listen_fds, int nfds) {
  int rc = 0, started = 0;
  /* Lower layers report upwards through these: none calls above itself. */
  pgs_server_set_owner(&pgs_request_server_owner);
  pgs_server_set_pool_ops(&pgs_pool_server_ops);
  pgs_pool_set_waiter_ops(&pgs_client_waiter_ops);
  pgs_request_set_session_ops(&pgs_client_session_ops);
  pgs_listen_set_ops(&pgs_request_listen_ops);
  pgs_admin_set_session_ops(&pgs_client_session_ops);
  pgs_pause_on_resume(resume_all);
  pgs_hold_on_release(release_all);
  workers = pgs_xcalloc((size_t)nfds, sizeof(*workers));
  for (nworkers = 0; nworkers < nfds; nworkers++) {
    if ((rc = worker_init(&workers[nworkers], nworkers, config, listen_fds[nworkers])) != 0) {
      pgs_error("worker %d: %s", nworkers, uv_strerror(rc));
      goto unwind;
    }
  }
  pgs_mailbox_register(workers, nworkers);
  if (config->metrics_listen && config->metrics_listen[0]) {
    rc = pgs_metrics_start(&workers[0], &workers[0].metrics, config->metrics_listen);
    if (rc != 0) {
      pgs_error("metrics_listen %s: %s", config->metrics_listen, uv_strerror(rc));
      goto unwind;
    }
    workers[0].metrics_on = true;
  }
  running = nfds;
  for (; started < nfds; started++) {
    if ((rc = uv_thread_create(&workers[started].thread, worker_main, &workers[started])) != 0) {
      pgs_error("cannot start worker thread: %s", uv_strerror(rc));
      goto unwind;
    }
  }
  return 0;
unwind:
  /* Every worker set up stops as at exit: those with a thread in it, the
   * others on this thread (their loop runs just long enough to close). */
  running = nworkers;
  pgs_mailbox_register(workers, nworkers);
  pgs_mailbox_exit();
  for (int i = 0; i < nworkers; i++) {
    if (i < started)
      uv_thread_join(&workers[i].thread);
    else
      worker_main(&workers[i]);
    worker_free(&workers[i]);
  }
  pgs_mailbox_register(NULL, 0);
  free(workers);
  workers = NULL;
  nworkers = 0;
  return rc;
}

void pgs_workers_join(void) {
  for (int i = 0; i < nworkers; i++) uv_thread_join(&workers[i].thread);
  pgs_mailbox_register(NULL, 0);
  for (int i = 0; i < nworkers; i++) worker_free(&workers[i]);
  free(workers);
  workers = NULL;
  nworkers = 0;
}
