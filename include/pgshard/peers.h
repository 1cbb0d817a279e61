/*
 * peers.h — cancel requests across a fleet of pgshard (peers.c).
 */
#ifndef PGSHARD_PEERS_H
#define PGSHARD_PEERS_H

#include "pgshard/proxy.h"

/* The cancel key of a new session of an instance with PEER_ID (0: none):
 * RANDOM with PEER_ID in its top byte. */
int32_t pgs_peers_cancel_key(int peer_id, int32_t random);
/* The peer a cancel key belongs to under CONFIG: 0 when it is this
 * instance's (or CONFIG has no peers), else its place in peers (from 1). */
int pgs_peers_owner(const pgs_config_t *config, int32_t key);
/* Send a CancelRequest for (PID, KEY) to peer PEER (from 1) of WORKER's
 * config, in the background; dropped (logged) when it cannot be sent in
 * PGS_PEERS_TIMEOUT_MS or too many are on their way already. */
void pgs_peers_forward_cancel(pgs_worker_t *worker, int peer, int32_t pid, int32_t key);

#define PGS_PEERS_TIMEOUT_MS 2000
/* Forwards on their way from one worker, at most. */
#define PGS_PEERS_MAX_PENDING 256

#endif
