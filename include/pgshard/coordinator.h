/*
 * coordinator.h — two-phase commits across shards (coordinator.c): the phases as
 * steps of the client's plan, the decision in the log.
 */
#ifndef PGSHARD_COORDINATOR_H
#define PGSHARD_COORDINATOR_H

#include "pgshard/proxy.h"

/* Whether committing writes on
 * WRITTEN_SHARDS takes two phases (cross_shard_writes = 2pc, several). */
bool pgs_coordinator_needed(const pgs_client_t *client, uint64_t written_shards);
/* Commit SLOTS (WRITTEN of them wrote) in two phases: a gid, then the
 * PREPARE phase as a step. SIMPLE: a simple Query (pgshard sends its
 * ReadyForQuery); TAG: the client said COMMIT (answer "COMMIT"). */
void pgs_coordinator_begin(pgs_client_t *client, uint64_t slots, uint64_t written, bool simple,
                           bool tag);
/* Run PHASE (a TWOPC step, once every server has answered the steps
 * before it): it plans the steps that follow. */
void pgs_coordinator_run(pgs_client_t *client, pgs_twopc_phase_t phase);
/* The client goes away in the middle of a two-phase commit it will not
 * finish: the gid is recovery's. */
void pgs_coordinator_abandon(pgs_client_t *client);

#endif
