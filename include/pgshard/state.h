/*
 * state.h — the states of a client's requests (state.c; exchange.h has the
 * tables): the only way they change.
 */
#ifndef PGSHARD_STATE_H
#define PGSHARD_STATE_H

#include "pgshard/proxy.h"

/* The client's request, unit and transaction states (exchange.h)
 * change only through these: checked against the engine's tables, logged. */
void pgs_state_set_request(pgs_client_t *client, pgs_req_state_t to);
void pgs_state_set_unit(pgs_client_t *client, pgs_unit_state_t to);
void pgs_state_set_tx(pgs_client_t *client, pgs_tx_state_t to);
/* A statement failed or was refused in the client's open transaction:
 * only its end is taken now. */
void pgs_state_tx_failed(pgs_client_t *client);
/* A reply the client waited for came: true when it was waiting (draining
 * or held), and the caller processes it again. */
bool pgs_state_resume(pgs_client_t *client);
/* The message at the client's read position is planned. */
static inline bool pgs_state_planned(const pgs_client_t *client) {
  return client->ex.req == PGS_REQ_RUNNING || client->ex.req == PGS_REQ_DRAINING;
}
/* An ErrorResponse went to the client during this message. */
void pgs_state_message_failed(pgs_client_t *client);

#endif
