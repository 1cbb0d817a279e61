/*
 * steps.h — a client message's plan (steps.c): the steps that carry it out.
 */
#ifndef PGSHARD_STEPS_H
#define PGSHARD_STEPS_H

#include "pgshard/proxy.h"

/* A message's plan. A step for SHARD (a slot, -1: no server);
 * its node is -1 (placed when it runs) unless the planner sets it. */
pgs_step_t *pgs_steps_add(pgs_client_t *client, int shard, pgs_step_op_t op, pgs_placed_t placed);
/* A reply pgshard makes itself: REPLY's type, TAG for CommandComplete. */
void pgs_steps_reply(pgs_client_t *client, char reply, const char *tag);
/* An ErrorResponse pgshard makes ("pgshard: " and the message); the
 * transaction, if open, is aborted. */
PGS_PRINTF(3, 4)
void pgs_steps_error(pgs_client_t *client, const char *sqlstate, const char *fmt, ...);
/* TEXT as pgshard's own statement on SLOT (EXTENDED: inside an extended
 * unit, with a Sync of its own); RULE: what becomes of its replies. */
void pgs_steps_inject(pgs_client_t *client, int slot, const char *text, pgs_reply_rule_t rule,
                      bool extended);
/* Forget the planned steps of the message at in_pos. */
void pgs_steps_clear(pgs_client_t *client);

#endif
