/*
 * coordinator.c — the coordinator of two-phase commits (cross_shard_writes =
 * 2pc): the phases of a commit as steps of the client's plan, the decision
 * in the log (twophase.h), the transaction state through them.
 *
 * A transaction that wrote on several shards commits in phases, each a
 * TWOPC step that runs once every server has answered the steps before it
 * and plans the next ones. The planner (planner.c) adds the first and sets
 * the transaction to preparing:
 *   PREPARE  the transaction gets its gid (registered in the log; a log that
 *        cannot: ROLLBACK everywhere, 58030). It failed anywhere (a
 *        statement's error, a shard in 'E'): ROLLBACK everywhere. Else
 *        PREPARE TRANSACTION 'gid' on each shard written, COMMIT on the
 *        others.
 *   DECIDE  a PREPARE failed (its error went to the client): ROLLBACK
 *        PREPARED on each that prepared. Else the commit is recorded
 *        durably in the decision log (twophase.h), then COMMIT PREPARED on
 *        each. When recovery decided abort meanwhile (the PREPAREs took
 *        over PGS_TWOPHASE_IN_FLIGHT_MS) the rollback is its own
 *        (transaction: decided).
 *   FINISH  done: "D gid" in the log, the client's CommandComplete and, for a
 *        simple Query, its ReadyForQuery.
 * A crash of pgshard or of a shard between the phases leaves prepared
 * transactions that recovery settles from the log (presumed abort).
 *
 * The coordinator builds steps (planner.h) and reads its servers' answers
 * (transaction status, a PREPARE that succeeded); request.c runs the steps
 * and calls it for each phase. Its steps are placed when they run: each
 * goes to the writer of its shard as it is then. */

#include <string.h>

#include "pgshard/log.h"
#include "pgshard/coordinator.h"
#include "pgshard/stats.h"
#include "pgshard/twophase.h"

#define BIT(i) ((uint64_t)1 << (i))
/* pgshard's own statements whose failure is the client's to see, or
 * expected (exchange.h). */
#define CLIENT_ERROR pgs_rule_internal(PGS_ON_ERROR_CLIENT)
#define EXPECTED_ERROR pgs_rule_internal(PGS_ON_ERROR_EXPECTED)

static void count(pgs_client_t *client, bool commit) {
  if (client->stats == NULL) return;
  if (commit)
    client->stats->twopc_commits++;
  else
    client->stats->twopc_aborts++;
}

static void add_twopc(pgs_client_t *client, pgs_twopc_phase_t phase) {
  pgs_step_t *st = pgs_steps_add(&client->session, -1, PGS_STEP_TWOPC, PGS_PLACED_NONE);
  st->phase = (uint8_t)phase;
  st->always = true;
}

/* Each slot of MASK runs a statement naming the gid. */
static void add_gid_injects(pgs_client_t *client, uint64_t mask, const char *verb,
                            pgs_reply_rule_t rule) {
  char sql[PGS_GID_MAX + 40];
  snprintf(sql, sizeof(sql), "%s '%s'", verb, client->session.twopc.gid);
  for (int i = 0; i < client->session.nslots; i++) {
    if (!(mask & BIT(i))) continue;
    pgs_steps_inject(&client->session, i, sql, rule, !client->session.twopc.simple);
    client->session.steps[client->session.nsteps - 1].gid = true;
  }
}

/* The slots of MASK whose server prepared the gid: a ROLLBACK PREPARED
 * elsewhere would only fail (and fill the server's log). */
static uint64_t prepared_slots(const pgs_client_t *client, uint64_t mask) {
  uint64_t prepared = 0;
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if ((mask & BIT(i)) && s && s->gid_prepared && !strcmp(s->gid, client->session.twopc.gid))
      prepared |= BIT(i);
  }
  return prepared;
}

/* A reply of the commit: it goes out even after an error (the error is
 * what a failed PREPARE sent; the ReadyForQuery must follow). */
static void add_twopc_reply(pgs_client_t *client, char reply, const char *tag) {
  pgs_steps_reply(&client->session, reply, tag);
  client->session.steps[client->session.nsteps - 1].always = true;
}

void pgs_coordinator_run(pgs_client_t *client, pgs_twopc_phase_t phase) {
  bool simple = client->session.twopc.simple;
  uint64_t slots = client->session.twopc.slots, written = client->session.twopc.written;
  switch (phase) {
  case PGS_2PC_PREPARE: {
    if (pgs_twophase_new_gid(client->session.twopc.gid) != PGS_OK) {
      client->session.twopc.gid[0] = '\0';
      pgs_steps_error(&client->session, "58030",
                      "could not start a two-phase commit (the decision log is not usable); "
                      "the transaction is rolled back");
      client->session.steps[client->session.nsteps - 1].always = true;
      pgs_session_message_failed(&client->session);
      for (int i = 0; i < client->session.nslots; i++)
        if (slots & BIT(i))
          pgs_steps_inject(&client->session, i, "ROLLBACK", EXPECTED_ERROR, !simple);
      if (simple) add_twopc_reply(client, 'Z', NULL);
      pgs_session_set_tx(&client->session, PGS_TX_NONE);
      return;
    }
    bool failed = client->session.ex.message_error;
    for (int i = 0; i < client->session.nslots; i++)
      if ((slots & BIT(i)) && client->servers[i] && client->servers[i]->txstatus == 'E')
        failed = true;
    if (failed) {
      count(client, false);
      pgs_twophase_record_abort(client->session.twopc.gid);
      pgs_twophase_record_done(client->session.twopc.gid);
      for (int i = 0; i < client->session.nslots; i++)
        if (slots & BIT(i))
          pgs_steps_inject(&client->session, i, "ROLLBACK", EXPECTED_ERROR, !simple);
      if (!client->session.ex.message_error && client->session.twopc.tag)
        add_twopc_reply(client, 'C', "ROLLBACK");
      if (simple) add_twopc_reply(client, 'Z', NULL);
      return;
    }
    pgs_reply_rule_t prepare = CLIENT_ERROR;
    prepare.prepares = true;
    add_gid_injects(client, written, "PREPARE TRANSACTION", prepare);
    for (int i = 0; i < client->session.nslots; i++)
      if ((slots & ~written) & BIT(i))
        pgs_steps_inject(&client->session, i, "COMMIT", CLIENT_ERROR, !simple);
    add_twopc(client, PGS_2PC_DECIDE);
    return;
  }
  case PGS_2PC_DECIDE: {
    pgs_session_set_tx(&client->session, PGS_TX_DECIDED);
    if (!client->session.ex.message_error) (void)pgs_twophase_fault("2pc_after_prepare");
    pgs_status_t rc = client->session.ex.message_error
                          ? PGS_OK
                          : pgs_twophase_record_commit(client->session.twopc.gid);
    /* Decided abort, or settled and forgotten: recovery took the gid over. */
    bool taken = rc == PGS_EINVAL || rc == PGS_ENOTFOUND;
    if (client->session.ex.message_error || rc != PGS_OK) {
      count(client, false);
      if (rc != PGS_OK) {
        if (taken)
          pgs_steps_error(&client->session, "40000",
                          "the two-phase commit took over %d ms to prepare; recovery rolled the "
                          "transaction back",
                          PGS_TWOPHASE_IN_FLIGHT_MS);
        else
          pgs_steps_error(&client->session, "58030",
                          "could not record the commit decision of a two-phase commit; the "
                          "transaction is rolled back");
        /* It goes out, and no "COMMIT" after it. */
        client->session.steps[client->session.nsteps - 1].always = true;
        pgs_session_message_failed(&client->session);
      }
      if (taken) {
        /* Recovery decided abort and rolls the gid back on every shard: the
         * worker leaves it to it rather than race its ROLLBACK PREPARED. */
        client->session.twopc.gid[0] = '\0';
      } else {
        pgs_twophase_record_abort(client->session.twopc.gid);
        add_gid_injects(client, prepared_slots(client, written), "ROLLBACK PREPARED",
                        EXPECTED_ERROR);
      }
      add_twopc(client, PGS_2PC_FINISH);
      return;
    }
    count(client, true);
    pgs_twophase_pause("2pc_pause_after_decision");
    add_gid_injects(client, written, "COMMIT PREPARED", CLIENT_ERROR);
    add_twopc(client, PGS_2PC_FINISH);
    return;
  }
  default:
    /* An error in COMMIT PREPARED leaves the gid to recovery (decided), as
     * does an abort recovery decided (the decide phase forgot the gid). */
    if (client->session.twopc.gid[0] && client->session.ex.message_error &&
        pgs_twophase_decision(client->session.twopc.gid) == PGS_2PC_COMMIT)
      pgs_twophase_release(client->session.twopc.gid);
    else if (client->session.twopc.gid[0])
      pgs_twophase_record_done(client->session.twopc.gid);
    if (!client->session.ex.message_error && client->session.twopc.tag)
      add_twopc_reply(client, 'C', "COMMIT");
    if (simple) add_twopc_reply(client, 'Z', NULL);
    client->session.twopc.gid[0] = '\0';
    pgs_session_set_tx(&client->session, PGS_TX_NONE);
    return;
  }
}

void pgs_coordinator_abandon(pgs_client_t *client) {
  /* Recovery settles it now: the decision taken, or abort when none was. */
  if (client->session.twopc.gid[0]) pgs_twophase_release(client->session.twopc.gid);
  client->session.twopc.gid[0] = '\0';
}
