/*
 * worker.h — worker threads (worker.c), each one event loop with its clients,
 * servers and pools; work handed to them (gather.c); the metrics endpoint
 * (metrics.c).
 */
#ifndef PGSHARD_WORKER_H
#define PGSHARD_WORKER_H

#include "pgshard/proxy.h"

int pgs_workers_start(pgs_config_t *config, int *listen_fds, int nfds) PGS_MUST_USE;
void pgs_workers_reload(pgs_config_t *config);
/* Hand SNAPSHOT to every worker (each takes a reference). */
void pgs_workers_publish(pgs_snapshot_t *snapshot);
void pgs_workers_drain(void);
void pgs_workers_exit(void);
void pgs_workers_join(void);
int pgs_workers_running(void);
/* Route a CancelRequest to the worker that owns PID. */
void pgs_workers_cancel(int32_t pid, int32_t key);
int pgs_worker_index_of_pid(int32_t pid);
int pgs_workers_count(void);
/* Admin PAUSE / RESUME of database DB (NULL: every database): a client of
 * a paused database waits before its next transaction. pgs_paused is cheap
 * when nothing is paused. RESUME wakes every worker's waiting clients. */
/* False when too many databases are paused already. */
bool pgs_pause_set(const char *db, bool paused);
bool pgs_paused(const char *db);
/* Serve GET /metrics at ADDRESS (HOST:PORT) on WORKER's loop (metrics.c). */
int pgs_metrics_start(pgs_worker_t *worker, uv_tcp_t *listener, const char *address);
/* Run FN(worker, ARG) on worker INDEX's thread. False when that worker no
 * longer takes work (it is stopping): FN will not run. */
bool pgs_worker_post(int index, pgs_worker_fn fn, void *arg);
/* Asking workers for parts of an answer (gather.c): PART(worker, buffer,
 * WHAT, PARAM) runs on every worker's thread (ONLY >= 0: that worker's
 * alone), each filling its own buffer; then DONE(gather, OWNER) runs on
 * HOME's thread with every part, unless the owner cancelled first (then
 * never). The gather is freed after DONE returns or at the cancel. */
typedef struct pgs_gather pgs_gather_t;
typedef void (*pgs_gather_part_fn)(pgs_worker_t *worker, pgs_buf_t *part, int what, int64_t param);
typedef void (*pgs_gather_done_fn)(pgs_gather_t *gather, void *owner);
pgs_gather_t *pgs_gather_start(pgs_worker_t *home, int only, int what, int64_t param,
                               pgs_gather_part_fn part, pgs_gather_done_fn done, void *owner);
void pgs_gather_cancel(pgs_gather_t *gather);
int pgs_gather_nparts(const pgs_gather_t *gather);
const pgs_buf_t *pgs_gather_part(const pgs_gather_t *gather, int i);
/* This worker's counters for database DB (made on first use). */
struct pgs_db_stats *pgs_worker_stats(pgs_worker_t *worker, const char *db);

#endif
