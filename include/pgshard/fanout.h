/*
 * fanout.h — a read (or COPY) running on several shards at once, its parts
 * merged into one result (fanout.c).
 */
#ifndef PGSHARD_FANOUT_H
#define PGSHARD_FANOUT_H

#include "pgshard/proxy.h"

/* The fan ORDER (planner.h) names: a read on several shards at once, rows
 * merged; or COPY ... FROM STDIN on each, which takes the client's
 * CopyData, CopyDone and CopyFail (pgs_fan_copy_message) until it ends
 * (own_tx: each part runs in a transaction begun on its server, committed
 * when every part succeeded, else rolled back). */
pgs_fan_t *pgs_fan_start(pgs_client_t *client, const pgs_fan_order_t *order);
void pgs_fan_free(pgs_fan_t *fan);
/* A reply (whole message M of TOTAL bytes) from the server in SLOT to a
 * part of the client's fan. */
pgs_fan_action_t pgs_fan_reply(pgs_client_t *client, int slot, char type, const uint8_t *m,
                               size_t total);
/* One of the client's COPY messages (P, TOTAL bytes) while a COPY FROM
 * fan runs: split, copied or dropped (after a failure). */
void pgs_fan_copy_message(pgs_client_t *client, char type, const uint8_t *p, size_t total);
/* The server of SLOT, running a part, was lost: the statement fails. True
 * when the client's ReadyForQuery is owed now (the caller sends it). */
bool pgs_fan_part_lost(pgs_client_t *client, int slot, const char *why);
/* The parts of SLOTS got no server (connect refused, pool timeout) and
 * were never sent: the statement fails with SQLSTATE/WHY, and ends when
 * the parts that were sent have answered. True when the client's
 * ReadyForQuery is owed now (the caller sends it). */
bool pgs_fan_parts_unserved(pgs_client_t *client, uint64_t slots, const char *sqlstate,
                            const char *why);
/* An error of an earlier message of the unit (already the client's) made
 * the server of SLOT skip its part: the fan reports nothing. */
void pgs_fan_part_skipped(pgs_client_t *client, int slot);

#endif
