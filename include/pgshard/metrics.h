/*
 * metrics.h — the Prometheus endpoint (metrics.c).
 */
#ifndef PGSHARD_METRICS_H
#define PGSHARD_METRICS_H

#include "pgshard/proxy.h"

/* Serve GET /metrics at ADDRESS (HOST:PORT) on WORKER's loop. */
int pgs_metrics_start(pgs_worker_t *worker, uv_tcp_t *listener, const char *address);

#endif
