/*
 * steps.c — a client message's plan: the steps that carry it out (see
 * pgs_step_t), built by the planner (request.c) and the two-phase commit
 * coordinator (coordinator.c), run by request.c. A step's server node is
 * set by whoever knows it (the planner's placement); a step left at -1 is
 * placed when it runs.
 */
#include <stdarg.h>
#include <string.h>

#include "pgshard/accounting.h"
#include "pgshard/log.h"
#include "pgshard/state.h"
#include "pgshard/steps.h"
#include "pgshard/stats.h"

pgs_step_t *pgs_steps_add(pgs_client_t *client, int shard, pgs_step_op_t op, pgs_placed_t placed) {
  if (client->nsteps == client->steps_cap) { /* not expected: plans fit nshards + 4 */
    client->steps_cap *= 2;
    client->steps = pgs_xrealloc(client->steps, sizeof(*client->steps) * (size_t)client->steps_cap);
  }
  pgs_step_t *st = &client->steps[client->nsteps++];
  memset(st, 0, sizeof(*st));
  st->shard = (int16_t)shard;
  st->node = -1; /* the planner places it, or it is placed when it runs */
  st->op = (uint8_t)op;
  st->placed = (uint8_t)placed;
  return st;
}

void pgs_steps_reply(pgs_client_t *client, char reply, const char *tag) {
  pgs_step_t *st = pgs_steps_add(client, -1, PGS_STEP_REPLY, PGS_PLACED_NONE);
  st->reply = reply;
  if (tag) st->text = pgs_xstrdup(tag);
}

void pgs_steps_error(pgs_client_t *client, const char *sqlstate, const char *fmt, ...) {
  char message[1024];
  va_list ap;
  int n = snprintf(message, sizeof(message), "pgshard: ");
  va_start(ap, fmt);
  vsnprintf(message + n, sizeof(message) - (size_t)n, fmt, ap);
  va_end(ap);
  pgs_step_t *st = pgs_steps_add(client, -1, PGS_STEP_ERROR, PGS_PLACED_NONE);
  size_t mlen = strlen(message);
  st->text = pgs_xmalloc(6 + mlen + 1);
  memcpy(st->text, sqlstate, 5);
  st->text[5] = '\0';
  memcpy(st->text + 6, message, mlen + 1);
  pgs_state_tx_failed(client);
  if (client->stats) client->stats->refusals++;
  pgs_account_sqlstate(client, sqlstate);
  client->ex.request_failed = true;
}

void pgs_steps_inject(pgs_client_t *client, int slot, const char *text, pgs_reply_rule_t rule,
                      bool extended) {
  pgs_step_t *st = pgs_steps_add(client, slot, PGS_STEP_INJECT, PGS_PLACED_INTERNAL);
  st->text = pgs_xstrdup(text);
  st->rule = rule;
  st->extended = extended;
  st->internal = st->always = true;
}

void pgs_steps_clear(pgs_client_t *client) {
  for (int i = 0; i < client->nsteps; i++) {
    free(client->steps[i].text);
    client->steps[i].text = NULL;
  }
  client->nsteps = client->step_next = 0;
  pgs_state_set_request(client, PGS_REQ_IDLE);
  /* A two-phase commit ends with its message's steps; one whose steps were
   * dropped (the session failed under it) is recovery's now. */
  if (client->ex.tx == PGS_TX_PREPARING || client->ex.tx == PGS_TX_DECIDED)
    pgs_state_set_tx(client, PGS_TX_NONE);
}
