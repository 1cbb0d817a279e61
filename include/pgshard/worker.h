/*
 * worker.h — worker threads (worker.c), each one event loop with its clients,
 * servers and pools. Other threads reach them through mailbox.h.
 */
#ifndef PGSHARD_WORKER_H
#define PGSHARD_WORKER_H

#include "pgshard/proxy.h"

int pgs_workers_start(pgs_config_t *config, int *listen_fds, int nfds) PGS_MUST_USE;
/* Wait for every worker thread to end (after a drain or an exit). */
void pgs_workers_join(void);
int pgs_workers_running(void);

#endif
