/*
 * fanout.c — a read that runs on several shards at once and reaches the
 * client as one result (the merge itself is router/merge_exec.c).
 *
 * A fan is started when request.c plans a merged statement: a simple Query
 * routed MERGE, or the Execute of a portal bound MERGE. Its parts (one per
 * slot) are sent without waiting for each other, with PGS_EF_FAN on their
 * expect entries, so every reply of a part comes here instead of going to
 * the client:
 *   RowDescription  the first describes the merge; in a simple Query it
 *                   also goes to the client (hidden columns dropped)
 *   DataRow         the merge says: pass now (plain concatenation), hold,
 *                   or drop
 *   CommandComplete a part of an Execute is done
 *   ErrorResponse   the first is kept; the statement fails with it
 *   ReadyForQuery   a part of a Query is done
 *   COPY messages   COPY ... TO STDOUT: one CopyOutResponse, every part's
 *                   CopyData, one CopyDone and "COPY n" with the sum
 * When the last part is done the held rows go out merged, then one
 * CommandComplete with the row count (or the error), then — for a Query —
 * the ReadyForQuery of the last part with the status over every shard.
 * Until then request.c holds back every later step, so replies stay in
 * request order. Invariant: client->fan != NULL exactly while parts run.
 */
#include <string.h>

#include "pgshard/log.h"
#include "pgshard/proxy.h"

/* Rows held by one merge at most. */
#define FAN_MAX_MERGE_BYTES ((size_t)256 << 20)

pgs_fan_t *pgs_fan_start(pgs_client_t *client, pgs_plan_t *plan, uint64_t slots, int64_t limit,
                         int64_t offset, bool simple) {
  PGS_ASSERT(client->fan == NULL);
  pgs_fan_t *fan = pgs_xcalloc(1, sizeof(*fan));
  plan->refcount++;
  fan->plan = plan;
  fan->slots = slots;
  fan->simple = simple;
  fan->copy = plan->kind == PGS_STMT_COPY_TO;
  fan->merge = pgs_merge_new(plan->merge, __builtin_popcountll(slots), limit, offset,
                             FAN_MAX_MERGE_BYTES);
  pgs_buf_init(&fan->error);
  client->fan = fan;
  return fan;
}

void pgs_fan_free(pgs_fan_t *fan) {
  if (fan == NULL) return;
  pgs_merge_free(fan->merge);
  pgs_plan_unref(fan->plan);
  pgs_buf_free(&fan->error);
  free(fan);
}

/* Part number of SLOT: parts are numbered by slot order. */
static int fan_part(const pgs_fan_t *fan, int slot) {
  uint64_t below = slot > 0 ? fan->slots & ((UINT64_C(1) << slot) - 1) : 0;
  return __builtin_popcountll(below);
}

/* The statement fails with an error pgshard makes up (the first error
 * wins: a part's own error may already be kept). */
static void fan_fail(pgs_fan_t *fan, const char *sqlstate, const char *message) {
  if (fan->error.len > 0) return;
  char text[400];
  snprintf(text, sizeof(text), "pgshard: %s", message);
  pgs_msg_error_raw(&fan->error, "ERROR", sqlstate, text, NULL);
}

static void fan_fail_merge(pgs_fan_t *fan) {
  const pgs_value_error_t *err = pgs_merge_error(fan->merge);
  fan_fail(fan, err->sqlstate[0] ? err->sqlstate : PGS_SQLSTATE_INTERNAL,
           err->message[0] ? err->message : "cross-shard merge failed");
}

/* Every part is done: the rest of the result, its CommandComplete or the
 * error, into the client's output. */
static void fan_finish(pgs_client_t *client, pgs_fan_t *fan) {
  pgs_io_t *io = &client->io;
  size_t mark = pgs_io_scratch_mark(io);
  pgs_buf_t *out = pgs_io_scratch(io);
  uint64_t rows = 0;
  if (fan->error.len == 0 && !fan->copy && pgs_merge_finish(fan->merge, out, &rows) != PGS_OK)
    fan_fail_merge(fan);
  if (fan->error.len > 0) {
    pgs_buf_put(out, fan->error.data, fan->error.len);
    pgs_client_step_failed(client);
    if (!fan->simple) client->unit_failed = true; /* skip to Sync, as PostgreSQL */
  } else {
    char tag[48];
    if (fan->copy) {
      pgs_msg_empty(out, 'c');
      snprintf(tag, sizeof(tag), "COPY %llu", (unsigned long long)fan->copy_rows);
    } else {
      snprintf(tag, sizeof(tag), "SELECT %llu", (unsigned long long)rows);
    }
    size_t start = pgs_msg_begin(out, 'C');
    pgs_buf_put_cstr(out, tag);
    pgs_msg_end(out, start);
  }
  pgs_io_scratch_done(io, mark);
  client->fan = NULL;
  pgs_fan_free(fan);
}

/* A part is done; the last one finishes the statement. */
static bool fan_part_done(pgs_client_t *client, pgs_fan_t *fan, int slot) {
  fan->done |= UINT64_C(1) << slot;
  if (fan->done != fan->slots) return false;
  fan_finish(client, fan);
  return true;
}

static pgs_fan_action_t fan_describe(pgs_client_t *client, pgs_fan_t *fan, const uint8_t *m,
                                     size_t total) {
  if (fan->error.len > 0) return PGS_FAN_DROP;
  if (!pgs_merge_described(fan->merge) &&
      pgs_merge_describe(fan->merge, m + 5, total - 5) != PGS_OK) {
    fan_fail_merge(fan);
    return PGS_FAN_DROP;
  }
  if (!fan->simple || fan->sent_head) return PGS_FAN_DROP;
  fan->sent_head = true;
  if (fan->plan->merge->nhidden == 0) return PGS_FAN_FORWARD;
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_merge_client_rowdesc(fan->plan->merge, m + 5, total - 5, pgs_io_scratch(&client->io));
  pgs_io_scratch_done(&client->io, mark);
  return PGS_FAN_DROP;
}

pgs_fan_action_t pgs_fan_reply(pgs_client_t *client, int slot, char type, const uint8_t *m,
                               size_t total) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL || !(fan->slots & (UINT64_C(1) << slot))) return PGS_FAN_DROP;
  switch (type) {
  case 'T':
    return fan_describe(client, fan, m, total);
  case 'D': {
    if (fan->error.len > 0) return PGS_FAN_DROP;
    if (!pgs_merge_described(fan->merge)) {
      fan_fail(fan, PGS_SQLSTATE_PROTOCOL_VIOLATION, "a shard sent rows before describing them");
      return PGS_FAN_DROP;
    }
    switch (pgs_merge_row(fan->merge, fan_part(fan, slot), m + 5, total - 5)) {
    case PGS_MERGE_PASS:
      return PGS_FAN_FORWARD;
    case PGS_MERGE_FAILED:
      fan_fail_merge(fan);
      return PGS_FAN_DROP;
    default:
      return PGS_FAN_DROP;
    }
  }
  case 'H': /* CopyOutResponse: the first one goes out */
    if (fan->sent_head || fan->error.len > 0) return PGS_FAN_DROP;
    fan->sent_head = true;
    return PGS_FAN_FORWARD;
  case 'd':
    return fan->error.len > 0 ? PGS_FAN_DROP : PGS_FAN_FORWARD;
  case 'E':
    if (fan->error.len == 0) pgs_buf_put(&fan->error, m, total);
    if (!fan->simple) fan_part_done(client, fan, slot);
    return PGS_FAN_DROP;
  case 'C':
    if (fan->copy) fan->copy_rows += pgs_route_tag_count((const char *)m + 5);
    if (!fan->simple) fan_part_done(client, fan, slot);
    return PGS_FAN_DROP;
  case 'I':
  case 's':
    if (!fan->simple) fan_part_done(client, fan, slot);
    return PGS_FAN_DROP;
  case 'Z':
    return fan->simple && fan_part_done(client, fan, slot) ? PGS_FAN_READY : PGS_FAN_DROP;
  case 'N':
  case 'S':
  case 'A':
    return PGS_FAN_FORWARD;
  default: /* NoData, CopyDone, ParameterDescription: the merge answers for them */
    return PGS_FAN_DROP;
  }
}

void pgs_fan_part_lost(pgs_client_t *client, int slot, const char *why) {
  pgs_fan_t *fan = client->fan;
  if (fan == NULL || !(fan->slots & (UINT64_C(1) << slot))) return;
  fan_fail(fan, PGS_SQLSTATE_CONNECTION_FAILURE, why);
  bool simple = fan->simple;
  if (!fan_part_done(client, fan, slot) || !simple) return;
  /* Its ReadyForQuery will not come: pgshard answers for it. */
  char status = pgs_client_ready_status(client);
  size_t mark = pgs_io_scratch_mark(&client->io);
  pgs_msg_ready(pgs_io_scratch(&client->io), status);
  pgs_io_scratch_done(&client->io, mark);
  pgs_client_after_ready(client, status);
}
