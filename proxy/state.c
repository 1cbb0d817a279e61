/*
 * state.c — the states of a client's requests (exchange.h): the request
 * being served, its extended-protocol unit, and the transaction pgshard keeps
 * across shards.
 *
 * The request, unit and transaction states change only here: each change
 * is checked against the engine's transition table and logged at debug
 * level. A change the table refuses is an engine bug: logged as an error
 * (and fatal under PGSHARD_STRICT, as the tests run), and made anyway so
 * that production behaves as it did before the check. */
#include <stdlib.h>

#include "pgshard/log.h"
#include "pgshard/state.h"

static void engine_bug(const pgs_client_t *client, const char *what, const char *from,
                       const char *to) {
  pgs_error("client %d: %s state %s -> %s is not a transition of the engine", client->cancel_pid,
            what, from, to);
  if (getenv("PGSHARD_STRICT")) abort();
}

void pgs_state_set_request(pgs_client_t *client, pgs_req_state_t to) {
  pgs_req_state_t from = (pgs_req_state_t)client->ex.req;
  if (from == to) return;
  if (!pgs_exchange_set_req(&client->ex, to))
    engine_bug(client, "request", pgs_req_state_name(from), pgs_req_state_name(to));
  pgs_debug("client %d: request %s -> %s", client->cancel_pid, pgs_req_state_name(from),
            pgs_req_state_name(to));
}

void pgs_state_set_unit(pgs_client_t *client, pgs_unit_state_t to) {
  pgs_unit_state_t from = (pgs_unit_state_t)client->ex.unit;
  if (from == to) return;
  if (!pgs_exchange_set_unit(&client->ex, to))
    engine_bug(client, "unit", pgs_unit_state_name(from), pgs_unit_state_name(to));
  pgs_debug("client %d: unit %s -> %s", client->cancel_pid, pgs_unit_state_name(from),
            pgs_unit_state_name(to));
}

void pgs_state_set_tx(pgs_client_t *client, pgs_tx_state_t to) {
  pgs_tx_state_t from = (pgs_tx_state_t)client->ex.tx;
  if (from == to) return;
  if (!pgs_exchange_set_tx(&client->ex, to))
    engine_bug(client, "transaction", pgs_tx_state_name(from), pgs_tx_state_name(to));
  pgs_debug("client %d: transaction %s -> %s", client->cancel_pid, pgs_tx_state_name(from),
            pgs_tx_state_name(to));
}

void pgs_state_tx_failed(pgs_client_t *client) {
  if (client->ex.tx == PGS_TX_OPEN) pgs_state_set_tx(client, PGS_TX_ABORTED);
}

bool pgs_state_resume(pgs_client_t *client) {
  switch (client->ex.req) {
  case PGS_REQ_DRAINING:
    pgs_state_set_request(client, PGS_REQ_RUNNING);
    return true;
  case PGS_REQ_HELD:
    pgs_state_set_request(client, PGS_REQ_IDLE);
    return true;
  default:
    return false;
  }
}

void pgs_state_message_failed(pgs_client_t *client) {
  client->ex.message_error = true;
  client->ex.request_failed = true;
}
