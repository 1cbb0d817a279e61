/*
 * coordinator.h — two-phase commits across shards (coordinator.c): the phases as
 * steps of the client's plan, the decision in the log.
 */
#ifndef PGSHARD_COORDINATOR_H
#define PGSHARD_COORDINATOR_H

#include "pgshard/proxy.h"

/* Run PHASE (a TWOPC step the planner added, once every server has
 * answered the steps before it): it plans the steps that follow. The
 * first, PREPARE, names the transaction (its gid). */
void pgs_coordinator_run(pgs_client_t *client, pgs_twopc_phase_t phase);
/* The client goes away in the middle of a two-phase commit it will not
 * finish: the gid is recovery's. */
void pgs_coordinator_abandon(pgs_client_t *client);

#endif
