/*
 * mailbox.c — the only ways into a worker from another thread: each worker
 * has a mailbox (a mutex, fields for a new config, a snapshot, cancels,
 * drain and exit, and a list of tasks) and a uv_async handle that wakes its
 * loop, where worker.c takes what was posted. Nothing is posted once the
 * worker has closed its wakeup handle (stop_now in worker.c marks the
 * mailbox closed under the same lock first).
 */
#include <string.h>

#include "pgshard/mailbox.h"

static pgs_worker_t *workers;
static int nworkers;

void pgs_mailbox_register(pgs_worker_t *all, int n) {
  workers = all;
  nworkers = n;
}

/* Post to a worker: under its lock, and only while its wakeup handle is
 * open (stop_now marks it closed under the same lock before closing it). */
#define MAILBOX(worker, stmt)                                                                      \
  do {                                                                                             \
    uv_mutex_lock(&(worker)->mbox_lock);                                                           \
    if (!(worker)->mbox_closed) {                                                                  \
      stmt;                                                                                        \
      uv_async_send(&(worker)->wakeup);                                                            \
    }                                                                                              \
    uv_mutex_unlock(&(worker)->mbox_lock);                                                         \
  } while (0)

void pgs_mailbox_publish(pgs_snapshot_t *snapshot) {
  for (int i = 0; i < nworkers; i++) {
    pgs_worker_t *w = &workers[i];
    pgs_snapshot_t *old = NULL;
    MAILBOX(w, {
      old = w->mbox_snapshot;
      w->mbox_snapshot = pgs_snapshot_ref(snapshot);
    });
    if (old) pgs_snapshot_unref(old); /* never taken: a newer one replaces it */
  }
}

void pgs_mailbox_reload(pgs_config_t *config) {
  for (int i = 0; i < nworkers; i++) {
    pgs_worker_t *w = &workers[i];
    MAILBOX(w, {
      if (w->mbox_config) pgs_config_unref(w->mbox_config);
      w->mbox_config = pgs_config_ref(config);
    });
  }
}

bool pgs_mailbox_wait_reloaded(int timeout_ms) {
  for (int waited = 0;; waited++) {
    bool taken = true;
    for (int i = 0; i < nworkers && taken; i++) {
      pgs_worker_t *w = &workers[i];
      uv_mutex_lock(&w->mbox_lock);
      taken = w->mbox_closed || w->mbox_config == NULL;
      uv_mutex_unlock(&w->mbox_lock);
    }
    if (taken) return true;
    if (waited >= timeout_ms) return false;
    uv_sleep(1);
  }
}

static uint64_t reloads; /* atomic */

void pgs_mailbox_note_reloaded(void) { __atomic_add_fetch(&reloads, 1, __ATOMIC_RELEASE); }

uint64_t pgs_mailbox_reloads(void) { return __atomic_load_n(&reloads, __ATOMIC_ACQUIRE); }

void pgs_mailbox_drain(void) {
  for (int i = 0; i < nworkers; i++) MAILBOX(&workers[i], workers[i].mbox_drain = true);
}

int pgs_mailbox_count(void) { return nworkers; }

bool pgs_mailbox_post(int index, pgs_worker_fn fn, void *arg) {
  if (index < 0 || index >= nworkers) return false;
  pgs_worker_t *w = &workers[index];
  pgs_worker_task_t *task = pgs_xcalloc(1, sizeof(*task));
  task->run = fn;
  task->arg = arg;
  bool posted = false;
  MAILBOX(w, {
    *w->mbox_tasks_tail = task;
    w->mbox_tasks_tail = &task->next;
    posted = true;
  });
  if (!posted) free(task);
  return posted;
}

void pgs_mailbox_exit(void) {
  for (int i = 0; i < nworkers; i++) MAILBOX(&workers[i], workers[i].mbox_exit = true);
}

void pgs_mailbox_cancel(int32_t pid, int32_t key) {
  int index = pgs_mailbox_index_of_pid(pid);
  if (index < 0 || index >= nworkers) return;
  pgs_worker_t *w = &workers[index];
  MAILBOX(w, {
    if (w->mbox_ncancels < (int)PGS_ARRAY_LEN(w->mbox_cancels)) {
      w->mbox_cancels[w->mbox_ncancels].pid = pid;
      w->mbox_cancels[w->mbox_ncancels].key = key;
      w->mbox_ncancels++;
    }
  });
}

int pgs_mailbox_index_of_pid(int32_t pid) { return (int)((uint32_t)pid >> 24); }
