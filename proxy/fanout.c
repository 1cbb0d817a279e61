/*
 * fanout.c — a read that runs on several shards at once and reaches the
 * client as one result (the merge itself is router/merge_exec.c).
 *
 * A fan is started when request.c plans a merged statement: a simple Query
 * routed MERGE, or the Execute of a portal bound MERGE. Its parts (one per
 * slot) are sent without waiting for each other, with the fan rule (exchange.h) on their
 * expect entries, so every reply of a part comes here instead of going to
 * the client:
 *   RowDescription  the first describes the merge; in a simple Query it
 *                   is also the client's (hidden columns dropped): at
 *                   once when rows stream, else held and sent with them
 *   DataRow         the merge says: pass now (plain concatenation), hold,
 *                   or drop
 *   CommandComplete a part of an Execute is done
 *   ErrorResponse   the first is kept; the statement fails with it
 *   ReadyForQuery   a part of a Query is done (an Execute's part ends at
 *                   CommandComplete: its Sync, when the client sent it
 *                   while the parts ran, is request.c's)
 *   COPY messages   COPY ... TO STDOUT: one CopyOutResponse, every part's
 *                   CopyData, one CopyDone and "COPY n" with the sum
 * When the last part is done the held rows go out merged, then one
 * CommandComplete with the row count (or the error), then — for a Query —
 * the ReadyForQuery of the last part with the status over every shard.
 * Until then request.c holds back every later step (but an Execute's
 * Sync, sent at once), so replies stay in request order. A part whose
 * server skipped it after an earlier error of the unit (the client has that
 * error) ends the fan with nothing to report. Once the statement has
 * failed (a part's error, a part lost or never served, the merge) the
 * parts still running are cancelled: their rows would be dropped, and the
 * client would wait for them. Invariant: client->fan != NULL exactly while
 * parts run.
 */
#include <string.h>

#include "pgshard/accounting.h"
#include "pgshard/log.h"
#include "pgshard/fanout.h"
#include "pgshard/server.h"
#include "pgshard/snapshot.h"
#include "pgshard/stats.h"

static pgs_fan_t *fan_new(pgs_client_t *client, const pgs_fan_order_t *order) {
  PGS_ASSERT(client->fan == NULL);
  pgs_fan_t *fan = pgs_xcalloc(1, sizeof(*fan));
  pgs_plan_t *plan = order->plan;
  plan->refcount++;
  fan->plan = plan;
  fan->slots = order->slots;
  fan->simple = order->simple;
  fan->owner = client;
  fan->copy = plan->kind == PGS_STMT_COPY_TO || plan->kind == PGS_STMT_COPY_FROM;
  fan->streams = pgs_plan_streams(plan) && order->portal == NULL;
  fan->portal = order->portal;
  fan->max_rows = order->max_rows;
  fan->declare = order->declare;
  if (plan->merge) {
    fan->merge = pgs_merge_new(plan->merge, __builtin_popcountll(fan->slots), order->limit,
                               order->offset, (size_t)client->config->max_merge_bytes);
    /* Text sorts by the shards' collations, as their catalogs say. */
    pgs_merge_collate(fan->merge,
                      pgs_snapshot_collations(client->worker->snapshot, client->session.db->name),
                      client->session.ops->keys_utf8(client->session.ctx));
  }
  pgs_buf_init(&fan->head);
  pgs_buf_init(&fan->error);
  client->fan = fan;
  if (client->stats) client->stats->fanouts++;
  return fan;
}

void pgs_fan_free(pgs_fan_t *fan) {
  if (fan == NULL) return;
  if (fan->portal) {
    /* Gathered into: freed here when the client closed it meanwhile. */
    fan->portal->busy = false;
    if (fan->portal->closed) pgs_session_free_portal(fan->portal);
  }
  pgs_account_mem_sub(fan->owner, fan->charged);
  pgs_merge_free(fan->merge);
  pgs_copy_split_free(fan->split);
  for (int i = 0; fan->batch && i < 64; i++) pgs_buf_free(&fan->batch[i]);
  free(fan->batch);
  pgs_plan_unref(fan->plan);
  pgs_buf_free(&fan->head);
  pgs_buf_free(&fan->error);
  pgs_buf_free(&fan->rows);
  free(fan);
}

/* Part number of SLOT: parts are numbered by slot order. */
static int fan_part(const pgs_fan_t *fan, int slot) {
  uint64_t below = slot > 0 ? fan->slots & ((UINT64_C(1) << slot) - 1) : 0;
  return __builtin_popcountll(below);
}

/* The statement has failed: the parts still running, but EXCEPT's (the
 * part whose error it is; -1: none), are cancelled rather than read to
 * their end. A COPY FROM's parts get CopyFail instead (copy_in_abort). */
static void fan_stop_parts(pgs_fan_t *fan, int except) {
  pgs_client_t *client = fan->owner;
  if (fan->copy_in) return;
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *server = client->servers[i];
    if (i == except || server == NULL || !(fan->slots & ~fan->done & (UINT64_C(1) << i))) continue;
    pgs_server_cancel_part(server, "another part of its cross-shard statement failed");
  }
}

/* The statement fails with an error pgshard makes up (the first error
 * wins: a part's own error may already be kept). */
static void fan_fail(pgs_fan_t *fan, const char *sqlstate, const char *message) {
  if (fan->error.len > 0) return;
  char text[400];
  snprintf(text, sizeof(text), "pgshard: %s", message);
  pgs_msg_error_raw(&fan->error, "ERROR", sqlstate, text, NULL);
  fan->own_error = true;
  fan_stop_parts(fan, -1);
}

/* The rows the merge holds now, charged to the client's memory; false
 * (the statement fails) when they go over its budget or the process's. */
static bool fan_charge(pgs_client_t *client, pgs_fan_t *fan) {
  size_t held = pgs_merge_held(fan->merge) + fan->rows.cap;
  if (held <= fan->charged) return true;
  const char *key = pgs_account_mem_refuses(client, held - fan->charged);
  if (key) {
    char message[300];
    snprintf(message, sizeof(message),
             "out of memory: the rows of this cross-shard result would take what pgshard keeps "
             "for %s over %s; add a LIMIT or a condition on the shard key",
             strcmp(key, "max_client_memory") ? "all clients" : "this client", key);
    fan_fail(fan, PGS_SQLSTATE_OUT_OF_MEMORY, message);
    return false;
  }
  pgs_account_mem_add(client, held - fan->charged);
  fan->charged = held;
  return true;
}

/* A row of a result fetched in parts, kept whole (DataRow M of TOTAL
 * bytes): bounded like the merge's own rows (max_merge_bytes) and charged
 * alike. */
static void fan_gather(pgs_client_t *client, pgs_fan_t *fan, const uint8_t *m, size_t total) {
  if (fan->rows.len + total > (size_t)client->config->max_merge_bytes) {
    char message[300];
    snprintf(message, sizeof(message),
             "a cross-shard result fetched in parts is gathered whole first, and this one is over "
             "max_merge_bytes (%lld); add a LIMIT or a condition on the shard key",
             (long long)client->config->max_merge_bytes);
    fan_fail(fan, "54000", message);
    return;
  }
  pgs_buf_put(&fan->rows, m, total);
  (void)fan_charge(client, fan);
}

static void fan_fail_merge(pgs_fan_t *fan) {
  const pgs_value_error_t *err = pgs_merge_error(fan->merge);
  fan_fail(fan, err->sqlstate[0] ? err->sqlstate : PGS_SQLSTATE_INTERNAL,
           err->message[0] ? err->message : "cross-shard merge failed");
}

/* A COPY FROM whose parts ran in transactions pgshard began (own_tx):
 * each server still linked commits, or rolls back when the COPY failed.
 * Their ReadyForQuery are last-of-n ones: the last is the client's. Nothing
 * but the end of a failed COMMIT reaches the client. */
static void fan_settle(pgs_client_t *client, pgs_fan_t *fan) {
  bool failed = fan->error.len > 0;
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *server = client->servers[i];
    if (server == NULL || !(fan->slots & (UINT64_C(1) << i))) continue;
    size_t mark = pgs_io_scratch_mark(&server->io);
    pgs_msg_query(pgs_io_scratch(&server->io), failed ? "ROLLBACK" : "COMMIT");
    pgs_io_scratch_done(&server->io, mark);
    pgs_reply_rule_t rule = {.complete = PGS_ON_COMPLETE_COUNT, .ready = PGS_ON_READY_LAST_OF_N};
    pgs_server_expect(server, PGS_EXP_QUERY, rule, NULL);
    client->session.ex.ready_pending++;
    if (pgs_server_flush(server) < 0) server->dirty = true;
  }
}

/* Every part is done: the rest of the result — the held RowDescription,
 * the rows, their CommandComplete or the error — into the client's output.
 * A skipped part leaves nothing to say: the unit's error went out. */
static void fan_finish(pgs_client_t *client, pgs_fan_t *fan) {
  pgs_io_t *io = &client->io;
  size_t mark = pgs_io_scratch_mark(io);
  pgs_buf_t *out = pgs_io_scratch(io);
  uint64_t rows = 0;
  client->fan = NULL;
  if (fan->skipped) {
    if (!fan->synced) pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
    pgs_fan_free(fan);
    return;
  }
  /* A cursor's RowDescription goes out with each FETCH, not now. */
  if (!fan->declare) pgs_buf_put(out, fan->head.data, fan->head.len);
  pgs_buf_t *result = fan->portal ? &fan->rows : out;
  if (fan->error.len == 0 && !fan->copy && pgs_merge_finish(fan->merge, result, &rows) != PGS_OK)
    fan_fail_merge(fan);
  if (fan->error.len > 0) {
    pgs_buf_put(out, fan->error.data, fan->error.len);
    if (fan->error.len > 5) pgs_account_error(client, fan->error.data + 5, fan->error.len - 5);
    pgs_session_message_failed(&client->session);
    /* An error of pgshard's own inside a transaction aborts it, as any
     * error would in PostgreSQL (no server failed to say so). */
    if (fan->own_error) pgs_session_tx_failed(&client->session);
    if (fan->declare) { /* a failed DECLARE leaves no cursor */
      pgs_session_drop_cursor(&client->session, fan->portal);
      fan->portal = NULL;
    }
    /* Skip to Sync, as PostgreSQL, unless the Sync is out already. */
    if (!fan->simple && !fan->synced) pgs_session_set_unit(&client->session, PGS_UNIT_SKIP_TO_SYNC);
  } else if (fan->portal) {
    /* Gathered: the portal hands its rows out, the first ones now; a
     * cursor's with each FETCH. */
    pgs_portal_gathered(fan->portal, &fan->rows, fan->declare ? &fan->head : NULL);
    if (fan->declare) {
      size_t start = pgs_msg_begin(out, 'C');
      pgs_buf_put_cstr(out, "DECLARE CURSOR");
      pgs_msg_end(out, start);
    } else {
      (void)pgs_portal_fetch(fan->portal, fan->max_rows, PGS_FETCH_EXECUTE, out);
    }
  } else {
    char tag[48];
    if (fan->copy) {
      if (!fan->copy_in) pgs_msg_empty(out, 'c');
      snprintf(tag, sizeof(tag), "COPY %llu", (unsigned long long)fan->copy_rows);
    } else {
      snprintf(tag, sizeof(tag), "SELECT %llu", (unsigned long long)rows);
    }
    size_t start = pgs_msg_begin(out, 'C');
    pgs_buf_put_cstr(out, tag);
    pgs_msg_end(out, start);
  }
  pgs_io_scratch_done(io, mark);
  if (fan->own_tx) fan_settle(client, fan);
  pgs_fan_free(fan);
}

/* A part is done; the last one finishes the statement. */
static bool fan_part_done(pgs_client_t *client, pgs_fan_t *fan, int slot) {
  fan->done |= UINT64_C(1) << slot;
  if (fan->done != fan->slots) return false;
  fan_finish(client, fan);
  return true;
}

static pgs_fan_action_t fan_describe(pgs_fan_t *fan, const uint8_t *m, size_t total) {
  if (fan->error.len > 0) return PGS_FAN_DROP;
  if (!pgs_merge_described(fan->merge) &&
      pgs_merge_describe(fan->merge, m + 5, total - 5) != PGS_OK) {
    fan_fail_merge(fan);
    return PGS_FAN_DROP;
  }
  if ((!fan->simple && !fan->declare) || fan->sent_head) return PGS_FAN_DROP;
  fan->sent_head = true;
  if (fan->streams) return PGS_FAN_FORWARD; /* no hidden column */
  /* Nothing else goes out before the end: sent with the rows, the client
   * reads the whole result at once. */
  pgs_merge_client_rowdesc(fan->plan->merge, m + 5, total - 5, &fan->head);
  return PGS_FAN_DROP;
}

/* ---- COPY ... FROM STDIN ----
 *
 * The COPY runs on every shard (on every shard of a reference table, each
 * row going to all). Each of the client's CopyData payloads is cut into
 * rows by the splitter (router/copy.c) and each shard gets one CopyData of
 * its rows; CopyDone and CopyFail go to every part. The first error — a
 * row pgshard cannot place, a shard's own error, rows for two shards under
 * cross_shard_writes = deny — ends the COPY everywhere: the other parts get
 * a CopyFail (so none of them keeps its rows), the client gets that first
 * error, and its remaining CopyData is dropped. */

/* Every part still copying gets a CopyFail. */
static void copy_in_abort(pgs_client_t *client, pgs_fan_t *fan, const char *why) {
  for (int i = 0; i < client->session.nslots; i++) {
    uint64_t bit = UINT64_C(1) << i;
    pgs_server_t *server = client->servers[i];
    if (!(fan->slots & bit) || (fan->copy_ended & bit) || server == NULL) continue;
    fan->copy_ended |= bit;
    size_t mark = pgs_io_scratch_mark(&server->io);
    pgs_buf_t *b = pgs_io_scratch(&server->io);
    size_t start = pgs_msg_begin(b, 'f');
    pgs_buf_put_cstr(b, why);
    pgs_msg_end(b, start);
    pgs_io_scratch_done(&server->io, mark);
    if (pgs_server_flush(server) < 0) server->dirty = true;
  }
}

static void copy_in_fail(pgs_client_t *client, pgs_fan_t *fan, const char *sqlstate,
                         const char *message) {
  fan_fail(fan, sqlstate, message);
  copy_in_abort(client, fan, message);
}

static void copy_row_cb(void *ctx, int shard, const uint8_t *row, size_t len) {
  pgs_client_t *client = ctx;
  pgs_fan_t *fan = client->fan;
  if (fan->error.len > 0) return;
  if (shard >= 0) {
    fan->copy_shards |= UINT64_C(1) << shard;
    if (client->session.db->cross_shard_writes == PGS_XWRITE_DENY &&
        __builtin_popcountll(fan->copy_shards) > 1) {
      copy_in_fail(client, fan, PGS_SQLSTATE_FEATURE_NOT_SUPPORTED,
                   "COPY rows belong to several shards (cross_shard_writes = deny); set "
                   "cross_shard_writes = allow or 2pc, or copy each shard's rows with a "
                   "pgshard.shard hint");
      return;
    }
  }
  for (int i = 0; i < client->session.nslots; i++) {
    if (!(fan->slots & (UINT64_C(1) << i)) || (shard >= 0 && i != 2 * shard)) continue;
    pgs_buf_put(&fan->batch[i], row, len);
  }
}

pgs_fan_t *pgs_fan_start(pgs_client_t *client, const pgs_fan_order_t *order) {
  pgs_plan_t *plan = order->plan;
  pgs_fan_t *fan = fan_new(client, order);
  if (!order->copy_in) return fan;
  fan->copy_in = true;
  fan->own_tx = order->own_tx;
  fan->batch = pgs_xcalloc(64, sizeof(*fan->batch));
  if (plan->table)
    fan->split = pgs_copy_split_new(
        order->spec, client->session.db, plan->table, plan->copy_key_column, order->spec->ncolumns,
        (size_t)client->config->max_message_size, &order->route, copy_row_cb, client);
  return fan;
}

/* Each part's batch as one CopyData. */
static void copy_in_flush(pgs_client_t *client, pgs_fan_t *fan) {
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_buf_t *batch = &fan->batch[i];
    pgs_server_t *server = client->servers[i];
    if (batch->len == 0) continue;
    if (server && fan->error.len == 0) {
      size_t mark = pgs_io_scratch_mark(&server->io);
      pgs_buf_t *b = pgs_io_scratch(&server->io);
      size_t start = pgs_msg_begin(b, 'd');
      pgs_buf_put(b, batch->data, batch->len);
      pgs_msg_end(b, start);
      pgs_io_scratch_done(&server->io, mark);
    }
    batch->len = 0;
  }
}

void pgs_fan_copy_message(pgs_client_t *client, char type, const uint8_t *p, size_t total) {
  pgs_fan_t *fan = client->fan;
  if (fan->error.len > 0) return; /* failed: the rest of the data is dropped */
  pgs_key_error_t err;
  pgs_status_t st = PGS_OK;
  if (fan->split && type == 'd') {
    st = pgs_copy_split_feed(fan->split, p + 5, total - 5, &err);
  } else if (fan->split && type == 'c') {
    st = pgs_copy_split_finish(fan->split, &err);
  }
  if (st != PGS_OK) {
    copy_in_fail(client, fan, err.sqlstate, err.message);
    return;
  }
  if (fan->error.len > 0) return; /* a row the policy refuses */
  copy_in_flush(client, fan);
  if (fan->split && type == 'd') return;
  /* CopyDone, CopyFail, or a reference table's data: to every part. */
  for (int i = 0; i < client->session.nslots; i++) {
    pgs_server_t *server = client->servers[i];
    if ((fan->slots & (UINT64_C(1) << i)) && server) pgs_io_emit(&server->io, p, total);
  }
}

pgs_fan_action_t pgs_fan_reply(pgs_client_t *client, int slot, char type, const uint8_t *m,
                               size_t total) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL || !(fan->slots & (UINT64_C(1) << slot))) return PGS_FAN_DROP;
  switch (type) {
  case 'T':
    return fan_describe(fan, m, total);
  case 'D': {
    if (fan->error.len > 0) return PGS_FAN_DROP;
    if (!pgs_merge_described(fan->merge)) {
      fan_fail(fan, PGS_SQLSTATE_PROTOCOL_VIOLATION, "a shard sent rows before describing them");
      return PGS_FAN_DROP;
    }
    switch (pgs_merge_row(fan->merge, fan_part(fan, slot), m + 5, total - 5)) {
    case PGS_MERGE_PASS:
      if (fan->portal == NULL) return PGS_FAN_FORWARD;
      fan_gather(client, fan, m, total);
      return PGS_FAN_DROP;
    case PGS_MERGE_FAILED:
      fan_fail_merge(fan);
      return PGS_FAN_DROP;
    case PGS_MERGE_HELD:
      (void)fan_charge(client, fan);
      return PGS_FAN_DROP;
    default:
      return PGS_FAN_DROP;
    }
  }
  case 'G': /* CopyInResponse, CopyOutResponse: the first one goes out */
  case 'H':
    if (fan->sent_head || fan->error.len > 0) return PGS_FAN_DROP;
    fan->sent_head = true;
    return PGS_FAN_FORWARD;
  case 'd':
    return fan->error.len > 0 ? PGS_FAN_DROP : PGS_FAN_FORWARD;
  case 'E':
    if (fan->error.len == 0) {
      pgs_buf_put(&fan->error, m, total);
      fan_stop_parts(fan, slot);
    }
    fan->copy_ended |= UINT64_C(1) << slot;
    if (fan->copy_in) copy_in_abort(client, fan, "a shard failed");
    if (!fan->simple) fan_part_done(client, fan, slot);
    return PGS_FAN_DROP;
  case 'C':
    fan->copy_ended |= UINT64_C(1) << slot;
    if (fan->copy) fan->copy_rows += pgs_route_tag_count((const char *)m + 5);
    if (!fan->simple) fan_part_done(client, fan, slot);
    return PGS_FAN_DROP;
  case 'I':
  case 's':
    if (!fan->simple) fan_part_done(client, fan, slot);
    return PGS_FAN_DROP;
  case 'Z':
    if (!fan->simple || !fan_part_done(client, fan, slot)) return PGS_FAN_DROP;
    /* The last part: the client's ReadyForQuery, unless its parts'
     * transactions are still ending (fan_settle). */
    return client->session.ex.ready_pending > 0 ? PGS_FAN_DROP : PGS_FAN_READY;
  case 'N':
  case 'S':
  case 'A':
    return PGS_FAN_FORWARD;
  default: /* NoData, CopyDone, ParameterDescription: the merge answers for them */
    return PGS_FAN_DROP;
  }
}

bool pgs_fan_part_lost(pgs_client_t *client, int slot, const char *why) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL || !(fan->slots & (UINT64_C(1) << slot))) return false;
  if (fan->copy_in) {
    fan->copy_ended |= UINT64_C(1) << slot;
    copy_in_fail(client, fan, PGS_SQLSTATE_CONNECTION_FAILURE, why);
  } else {
    fan_fail(fan, PGS_SQLSTATE_CONNECTION_FAILURE, why);
  }
  bool simple = fan->simple;
  if (!fan_part_done(client, fan, slot) || !simple) return false;
  /* Its own will not come (nor, settling, before the others end theirs). */
  return client->session.ex.ready_pending == 0;
}

bool pgs_fan_parts_unserved(pgs_client_t *client, uint64_t slots, const char *sqlstate,
                            const char *why) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL) return false;
  slots &= fan->slots & ~fan->done;
  if (fan->copy_in) {
    fan->copy_ended |= slots; /* never started: nothing to fail there */
    copy_in_fail(client, fan, sqlstate, why);
  } else {
    fan_fail(fan, sqlstate, why);
  }
  bool simple = fan->simple;
  fan->done |= slots;
  if (fan->done != fan->slots) return false; /* the parts sent end it when they answer */
  fan_finish(client, fan);
  /* No part's will come (nor, settling, before the parts end theirs). */
  return simple && client->session.ex.ready_pending == 0;
}

void pgs_fan_part_skipped(pgs_client_t *client, int slot) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL || fan->simple || !(fan->slots & (UINT64_C(1) << slot))) return;
  fan->skipped = true;
  fan_part_done(client, fan, slot);
}
