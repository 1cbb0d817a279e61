/*
 * mailbox.h — posting to worker threads from any thread (mailbox.c).
 */
#ifndef PGSHARD_MAILBOX_H
#define PGSHARD_MAILBOX_H

#include "pgshard/proxy.h"

/* The workers (worker.c registers them once they are set up, and N 0
 * when they are gone). */
void pgs_mailbox_register(pgs_worker_t *workers, int n);
int pgs_mailbox_count(void);
/* Hand SNAPSHOT to every worker (each takes a reference). */
void pgs_mailbox_publish(pgs_snapshot_t *snapshot);
/* A reload: CONFIG to every worker (each takes a reference). */
void pgs_mailbox_reload(pgs_config_t *config);
/* Wait until every worker still running has taken the config posted last
 * (at most TIMEOUT_MS); false if one has not by then. */
bool pgs_mailbox_wait_reloaded(int timeout_ms);
/* Reloads every worker has taken since start (SHOW CONFIG's `reloads`: a
 * client that saw it grow knows its next statements use the new config). */
void pgs_mailbox_note_reloaded(void);
uint64_t pgs_mailbox_reloads(void);
void pgs_mailbox_drain(void);
void pgs_mailbox_exit(void);
/* Route a CancelRequest to the worker that owns PID. */
void pgs_mailbox_cancel(int32_t pid, int32_t key);
/* The worker a client's pid (its cancel key's pid) belongs to. */
int pgs_mailbox_index_of_pid(int32_t pid);
/* Run FN(worker, ARG) on worker INDEX's thread. False when that worker no
 * longer takes work (it is stopping): FN will not run. */
bool pgs_mailbox_post(int index, pgs_worker_fn fn, void *arg);

#endif
