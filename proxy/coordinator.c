/*
 * coordinator.c — the coordinator of two-phase commits (cross_shard_writes =
 * 2pc): the phases of a commit as steps of the client's plan, with the
 * decision kept as a row on one of the written shards (twophase.h), the
 * transaction state through them.
 *
 * A transaction that wrote on several shards commits in phases, each a
 * TWOPC step that runs once every server has answered the steps before it
 * and plans the next ones. Its decision shard D is the first written shard
 * (lowest slot). The planner (planner.c) adds the first phase and sets the
 * transaction to preparing:
 *   PREPARE  the transaction gets its gid naming D (a D whose decision
 *        table recovery has not seen: ROLLBACK everywhere, 55000). It
 *        failed anywhere (a statement's error, a shard in 'E'): ROLLBACK
 *        everywhere. Else the commit row INSERT on D (inside the client's
 *        transaction), PREPARE TRANSACTION 'gid' on each other shard
 *        written, COMMIT on the others.
 *   DECIDE  the INSERT or a PREPARE failed (its error went to the client),
 *        or it all took over PGS_TWOPHASE_IN_FLIGHT_MS: ROLLBACK on D,
 *        ROLLBACK PREPARED on each that prepared. Else COMMIT on D: the
 *        commit point.
 *   COMPLETE  D's COMMIT failed (its error went to the client): ROLLBACK
 *        PREPARED on each that prepared. Else COMMIT PREPARED on each.
 *   FINISH  the gid is forgotten (or, after an error in COMMIT PREPARED,
 *        left to recovery), the client's CommandComplete and, for a simple
 *        Query, its ReadyForQuery.
 * A crash of pgshard or of a shard between the phases leaves prepared
 * transactions that any pgshard's recovery settles from D's row. A lost
 * connection to D during its COMMIT ends the client's session with 08006:
 * the outcome is known only to D, and recovery applies it everywhere.
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

/* The decision shard's slot: the first written shard in config order. */
static int decision_slot(uint64_t written) { return __builtin_ctzll(written); }

/* Each slot of MASK runs SQL, which names the gid. */
static void add_gid_sql(pgs_client_t *client, uint64_t mask, const char *sql,
                        pgs_reply_rule_t rule) {
  for (int i = 0; i < client->session.nslots; i++) {
    if (!(mask & BIT(i))) continue;
    pgs_steps_inject(&client->session, i, sql, rule, !client->session.twopc->simple);
    client->session.steps[client->session.nsteps - 1].gid = true;
  }
}

/* Each slot of MASK runs "VERB 'gid'". */
static void add_gid_injects(pgs_client_t *client, uint64_t mask, const char *verb,
                            pgs_reply_rule_t rule) {
  char sql[PGS_GID_MAX + 40];
  snprintf(sql, sizeof(sql), "%s '%s'", verb, client->session.twopc->gid);
  add_gid_sql(client, mask, sql, rule);
}

/* The slots of MASK whose server prepared the gid: a ROLLBACK PREPARED
 * elsewhere would only fail (and fill the server's log). */
static uint64_t prepared_slots(const pgs_client_t *client, uint64_t mask) {
  uint64_t prepared = 0;
  for (int i = 0; i < client->session.nslots; i++) {
    const pgs_server_t *s = client->servers[i];
    if ((mask & BIT(i)) && s && s->gid_prepared && !strcmp(s->gid, client->session.twopc->gid))
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

/* An error of pgshard's own for the client, before the rollback. */
static void add_twopc_error(pgs_client_t *client, const char *sqlstate, const char *message) {
  pgs_steps_error(&client->session, sqlstate, "%s", message);
  /* It goes out, and no "COMMIT" after it. */
  client->session.steps[client->session.nsteps - 1].always = true;
  pgs_session_message_failed(&client->session);
}

void pgs_coordinator_run(pgs_client_t *client, pgs_twopc_phase_t phase) {
  bool simple = client->session.twopc->simple;
  uint64_t slots = client->session.twopc->slots, written = client->session.twopc->written;
  int dslot = decision_slot(written);
  uint64_t others = written & ~BIT(dslot);
  const pgs_database_t *db = client->session.db;
  switch (phase) {
  case PGS_2PC_PREPARE: {
    char why[256], message[400];
    if (pgs_twophase_new_gid(db->name, db->shards[dslot / 2].name, client->session.twopc->gid, why,
                             sizeof(why)) != PGS_OK) {
      client->session.twopc->gid[0] = '\0';
      snprintf(message, sizeof(message),
               "could not start a two-phase commit: %s; the transaction is rolled back", why);
      add_twopc_error(client, "55000", message);
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
      pgs_twophase_done(client->session.twopc->gid);
      client->session.twopc->gid[0] = '\0';
      for (int i = 0; i < client->session.nslots; i++)
        if (slots & BIT(i))
          pgs_steps_inject(&client->session, i, "ROLLBACK", EXPECTED_ERROR, !simple);
      if (!client->session.ex.message_error && client->session.twopc->tag)
        add_twopc_reply(client, 'C', "ROLLBACK");
      if (simple) add_twopc_reply(client, 'Z', NULL);
      return;
    }
    /* pgs_gid_format made only [a-z0-9_]: no quoting needed. */
    char insert[PGS_GID_MAX + 80];
    snprintf(insert, sizeof(insert), "INSERT INTO pgshard.twophase_decision (gid) VALUES ('%s')",
             client->session.twopc->gid);
    add_gid_sql(client, BIT(dslot), insert, CLIENT_ERROR);
    pgs_reply_rule_t prepare = CLIENT_ERROR;
    prepare.prepares = true;
    add_gid_injects(client, others, "PREPARE TRANSACTION", prepare);
    for (int i = 0; i < client->session.nslots; i++)
      if ((slots & ~written) & BIT(i))
        pgs_steps_inject(&client->session, i, "COMMIT", CLIENT_ERROR, !simple);
    add_twopc(client, PGS_2PC_DECIDE);
    return;
  }
  case PGS_2PC_DECIDE: {
    pgs_session_set_tx(&client->session, PGS_TX_DECIDED);
    bool failed = client->session.ex.message_error;
    if (!failed && pgs_twophase_age_ms(client->session.twopc->gid) > PGS_TWOPHASE_IN_FLIGHT_MS) {
      char message[200];
      snprintf(message, sizeof(message),
               "the two-phase commit took over %d ms to prepare; the transaction is rolled "
               "back",
               PGS_TWOPHASE_IN_FLIGHT_MS);
      add_twopc_error(client, "40000", message);
      failed = true;
    }
    if (failed) {
      count(client, false);
      pgs_twophase_set_state(client->session.twopc->gid, PGS_2PC_ABORTING);
      pgs_steps_inject(&client->session, dslot, "ROLLBACK", EXPECTED_ERROR, !simple);
      add_gid_injects(client, prepared_slots(client, others), "ROLLBACK PREPARED", EXPECTED_ERROR);
      add_twopc(client, PGS_2PC_FINISH);
      return;
    }
    (void)pgs_twophase_fault("2pc_after_prepare");
    pgs_twophase_set_state(client->session.twopc->gid, PGS_2PC_COMMITTING);
    /* The commit point: D's part and the commit row, together. */
    add_gid_sql(client, BIT(dslot), "COMMIT", CLIENT_ERROR);
    add_twopc(client, PGS_2PC_COMPLETE);
    return;
  }
  case PGS_2PC_COMPLETE: {
    if (client->session.ex.message_error) {
      count(client, false);
      const pgs_server_t *d = client->servers[dslot];
      if (d == NULL || d->state != PGS_SV_ACTIVE || d->txstatus != 'I') {
        /* No ReadyForQuery after the error (a FATAL, the connection going):
         * whether D committed is its row's to tell, and recovery reads it. */
        pgs_twophase_release(client->session.twopc->gid);
        client->session.twopc->gid[0] = '\0';
        add_twopc(client, PGS_2PC_FINISH);
        return;
      }
      /* D's COMMIT failed and D goes on (a deferred constraint, say):
       * nothing committed. */
      pgs_twophase_set_state(client->session.twopc->gid, PGS_2PC_ABORTING);
      add_gid_injects(client, prepared_slots(client, others), "ROLLBACK PREPARED", EXPECTED_ERROR);
      add_twopc(client, PGS_2PC_FINISH);
      return;
    }
    count(client, true);
    client->session.twopc->committed = true;
    pgs_twophase_set_state(client->session.twopc->gid, PGS_2PC_COMMITTED);
    (void)pgs_twophase_fault("2pc_after_decision");
    pgs_twophase_pause("2pc_pause_after_decision");
    add_gid_injects(client, others, "COMMIT PREPARED", CLIENT_ERROR);
    add_twopc(client, PGS_2PC_FINISH);
    return;
  }
  default:
    /* An error in COMMIT PREPARED leaves the gid to recovery, which
     * commits it from D's row. */
    if (client->session.twopc->gid[0] && client->session.ex.message_error &&
        client->session.twopc->committed)
      pgs_twophase_release(client->session.twopc->gid);
    else if (client->session.twopc->gid[0])
      pgs_twophase_done(client->session.twopc->gid);
    if (!client->session.ex.message_error && client->session.twopc->tag)
      add_twopc_reply(client, 'C', "COMMIT");
    if (simple) add_twopc_reply(client, 'Z', NULL);
    client->session.twopc->gid[0] = '\0';
    pgs_session_set_tx(&client->session, PGS_TX_NONE);
    return;
  }
}

void pgs_coordinator_abandon(pgs_client_t *client) {
  /* Recovery settles it from the decision row. */
  pgs_twopc_t *twopc = client->session.twopc;
  if (twopc == NULL) return;
  if (twopc->gid[0]) pgs_twophase_release(twopc->gid);
  twopc->gid[0] = '\0';
}
