/*
 * gather.h — asking every worker for its part of an answer (gather.c): the
 * admin console's SHOW commands and the metrics endpoint.
 */
#ifndef PGSHARD_GATHER_H
#define PGSHARD_GATHER_H

#include "pgshard/proxy.h"

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

#endif
