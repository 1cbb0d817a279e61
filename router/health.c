/*
 * health.c — the pure half of the monitor: turns check results into node
 * state (health.h). No I/O and no clock: every time comes in with the
 * result, so the tests can replay any sequence of checks exactly.
 *
 * Invariants kept here:
 *   - a shard has at most one writer; the writer is never readable;
 *   - the LSN history holds samples of one node only (history_node: the
 *     writer, or the last writer while there is none), oldest first, with
 *     non-decreasing times; it is cleared when another node becomes writer,
 *     since that node's LSNs are on another timeline;
 *   - down_epoch changes exactly once per up -> down transition.
 */
#include <stdio.h>
#include <string.h>

#include "pgshard/health.h"

/* ---- LSN history ---- */

static const pgs_lsn_sample_t *history_at(const pgs_lsn_history_t *h, int k) {
  /* K-th sample from the oldest. */
  int first = (h->head - h->count + PGS_LSN_HISTORY) % PGS_LSN_HISTORY;
  return &h->s[(first + k) % PGS_LSN_HISTORY];
}

void pgs_lsn_history_add(pgs_lsn_history_t *h, uint64_t ms, uint64_t lsn) {
  const pgs_lsn_sample_t *newest = pgs_lsn_history_newest(h);
  /* A late answer sent before the newest sample would break the time
   * order every search below relies on; the newer sample says more. */
  if (newest && ms < newest->ms) return;
  h->s[h->head].ms = ms;
  h->s[h->head].lsn = lsn;
  h->head = (h->head + 1) % PGS_LSN_HISTORY;
  if (h->count < PGS_LSN_HISTORY) h->count++;
}

const pgs_lsn_sample_t *pgs_lsn_history_newest(const pgs_lsn_history_t *h) {
  if (h->count == 0) return NULL;
  return &h->s[(h->head - 1 + PGS_LSN_HISTORY) % PGS_LSN_HISTORY];
}

const pgs_lsn_sample_t *pgs_lsn_history_after(const pgs_lsn_history_t *h, uint64_t after_ms) {
  /* Times are non-decreasing: walk back from the newest while still after. */
  const pgs_lsn_sample_t *found = NULL;
  for (int k = h->count - 1; k >= 0; k--) {
    const pgs_lsn_sample_t *s = history_at(h, k);
    if (s->ms <= after_ms) break;
    found = s;
  }
  return found;
}

int64_t pgs_lag_ms(const pgs_lsn_history_t *h, uint64_t replay, uint64_t now) {
  const pgs_lsn_sample_t *newest = pgs_lsn_history_newest(h);
  if (newest == NULL) return -1;
  if (replay >= newest->lsn) return 0;
  /* The oldest sample past REPLAY: the primary had WAL then that the replica
   * still lacks. When every sample is past it, that is the oldest one, and
   * the lag is at least the history's span. */
  for (int k = 0; k < h->count; k++) {
    const pgs_lsn_sample_t *s = history_at(h, k);
    if (s->lsn > replay) return now > s->ms ? (int64_t)(now - s->ms) : 0;
  }
  return 0; /* not reached: the newest sample is past REPLAY */
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Up to 8 hex digits ending at END (exclusive) starting at *P. */
static bool parse_half(const char **p, char end, uint32_t *out) {
  uint32_t v = 0;
  int n = 0;
  for (; **p != end; (*p)++, n++) {
    int d = hex_digit(**p);
    if (d < 0 || n == 8) return false;
    v = (v << 4) | (uint32_t)d;
  }
  *out = v;
  return n > 0;
}

uint64_t pgs_lsn_record_end(uint64_t lsn) {
  const uint64_t page = 8192, short_header = 24, long_header = 40, min_segment = 1 << 20;
  if (lsn % page == short_header) return lsn - short_header;
  if (lsn % page == long_header && (lsn - long_header) % min_segment == 0) return lsn - long_header;
  return lsn;
}

pgs_status_t pgs_lsn_parse(const char *text, uint64_t *out) {
  uint32_t hi, lo;
  if (text == NULL) return PGS_EINVAL;
  const char *p = text;
  if (!parse_half(&p, '/', &hi)) return PGS_EINVAL;
  p++; /* the slash */
  if (!parse_half(&p, '\0', &lo)) return PGS_EINVAL;
  *out = ((uint64_t)hi << 32) | lo;
  return PGS_OK;
}

/* ---- check latency ---- */

const uint64_t pgs_check_bucket_us[PGS_CHECK_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
};

int pgs_check_bucket(uint64_t us) {
  int i = 0;
  while (i < PGS_CHECK_BUCKETS && us > pgs_check_bucket_us[i]) i++;
  return i;
}

void pgs_check_timing_add(pgs_check_timing_t *t, uint64_t us) {
  t->count++;
  t->sum_us += us;
  t->last_us = us;
  t->buckets[pgs_check_bucket(us)]++;
}

/* ---- applying a check ---- */

static bool within_bounds(const pgs_shard_health_t *sh, const pgs_node_state_t *n,
                          const pgs_lag_bounds_t *bounds) {
  if (n->lag_ms < 0) {
    /* No primary sample to measure against. With a writer that is up we
     * cannot vouch for the replica; with none, it holds the newest data
     * any node of the shard can serve. */
    return sh->writer < 0 || !sh->nodes[sh->writer].up;
  }
  return n->lag_ms <= bounds->max_lag_ms && (int64_t)n->lag_bytes <= bounds->max_lag_bytes;
}

/* The highest LSN among the shard's replicas that are up and replaying,
 * with node I at R's LSN. */
static uint64_t best_replica_lsn(const pgs_shard_health_t *sh, int i, const pgs_check_result_t *r) {
  uint64_t best = r->lsn;
  for (int k = 0; k < sh->nnodes; k++) {
    const pgs_node_state_t *o = &sh->nodes[k];
    if (k != i && o->up && o->in_recovery && o->lsn > best) best = o->lsn;
  }
  return best;
}

/* Whether a readable replica whose check is late (R slow) is within the
 * bounds even at its worst: as if it had replayed nothing since its last
 * answer. Its replay LSN has not gone back, so its lag now is at most the
 * lag of that LSN against the primary's samples, and at most the lag it
 * had then plus the time since; its byte lag at most the newest sample
 * minus that LSN. */
static bool late_within_bounds(const pgs_shard_health_t *sh, const pgs_node_state_t *n,
                               const pgs_check_result_t *r, const pgs_lag_bounds_t *bounds) {
  const pgs_lsn_sample_t *newest = pgs_lsn_history_newest(&sh->history);
  if (!n->readable || newest == NULL || n->lag_ms < 0 || r->done_ms < n->checked_ms) return false;
  int64_t ms = pgs_lag_ms(&sh->history, n->lsn, r->done_ms);
  int64_t since = n->lag_ms + (int64_t)(r->done_ms - n->checked_ms);
  if (since > ms) ms = since;
  uint64_t bytes = newest->lsn > n->lsn ? newest->lsn - n->lsn : 0;
  return ms <= bounds->max_lag_ms && (int64_t)bytes <= bounds->max_lag_bytes;
}

static void mark_failed(const pgs_shard_health_t *sh, pgs_node_state_t *n,
                        const pgs_check_result_t *r, const pgs_lag_bounds_t *bounds) {
  if (r->slow && n->up && r->done_ms - r->sent_ms < PGS_SLOW_CHECK_DOWN_MS) {
    /* Late on a live connection (a busy machine): not a failure. */
    if (late_within_bounds(sh, n, r, bounds)) return;
    n->good_checks = 0;
    n->readable = false;
    return;
  }
  n->good_checks = 0;
  n->readable = false; /* its lag is unknown from now on */
  n->failures++;
  int base = bounds->interval_ms > 0 ? bounds->interval_ms : 1;
  if (n->up) {
    if (n->failures < (bounds->down_failures > 0 ? bounds->down_failures : PGS_DOWN_FAILURES))
      return;
    n->up = false;
    n->down_epoch++;
    n->retry_backoff_ms = base < PGS_RETRY_MAX_MS ? base : PGS_RETRY_MAX_MS;
  } else {
    /* A reconnect attempt failed: wait twice as long. */
    int next = n->retry_backoff_ms > 0 ? n->retry_backoff_ms * 2 : base;
    n->retry_backoff_ms = next < PGS_RETRY_MAX_MS ? next : PGS_RETRY_MAX_MS;
  }
  n->retry_at_ms = r->done_ms + (uint64_t)n->retry_backoff_ms;
}

bool pgs_health_apply(pgs_shard_health_t *sh, int i, const pgs_check_result_t *r,
                      const pgs_lag_bounds_t *bounds) {
  PGS_ASSERT(i >= 0 && i < sh->nnodes);
  pgs_node_state_t *n = &sh->nodes[i];
  bool was_up = n->up, was_readable = n->readable, was_recovery = n->in_recovery;
  uint32_t was_epoch = n->down_epoch;

  if (!r->ok) {
    mark_failed(sh, n, r, bounds);
    return n->up != was_up || n->readable != was_readable || n->down_epoch != was_epoch;
  }

  n->failures = 0;
  n->checked_ms = r->done_ms;
  pgs_check_timing_add(&n->check, r->duration_us);
  n->in_recovery = r->in_recovery;
  n->lsn = r->lsn;
  n->receive_lsn = r->receive_lsn;
  if (!n->up) {
    /* Back: it proves itself for PGS_REJOIN_CHECKS checks like any replica
     * that left the read set. */
    n->up = true;
    n->good_checks = 0;
    n->retry_backoff_ms = 0;
    n->retry_at_ms = 0;
  }

  if (i == sh->writer) {
    if (!r->in_recovery) pgs_lsn_history_add(&sh->history, r->sent_ms, pgs_lsn_record_end(r->lsn));
    n->lag_bytes = 0;
    n->lag_ms = 0;
    n->readable = false;
    n->good_checks = 0;
  } else {
    const pgs_lsn_sample_t *newest = pgs_lsn_history_newest(&sh->history);
    n->lag_bytes = newest && newest->lsn > r->lsn ? newest->lsn - r->lsn : 0;
    n->lag_ms = pgs_lag_ms(&sh->history, r->lsn, r->done_ms);
    const pgs_node_state_t *w = sh->writer >= 0 ? &sh->nodes[sh->writer] : NULL;
    if (r->in_recovery && w && w->up && w->failures > 0) {
      /* The writer missed a check: the newest sample may be WAL it never
       * sent (a crash). Nothing changes until it answers or is down. */
    } else if (r->in_recovery && (w == NULL || !w->up) && r->lsn >= best_replica_lsn(sh, i, r)) {
      /* No writer: the replica furthest ahead holds the newest data the
       * shard can serve (the dead primary's last sample may count WAL it
       * never sent); the others are measured as usual. */
      n->lag_ms = 0;
      n->lag_bytes = 0;
      if (n->good_checks < PGS_REJOIN_CHECKS) n->good_checks++;
      if (n->good_checks >= PGS_REJOIN_CHECKS) n->readable = true;
    } else if (!r->in_recovery || !within_bounds(sh, n, bounds)) {
      /* Over a bound, or out of recovery: leaves at once. */
      n->good_checks = 0;
      n->readable = false;
    } else {
      if (n->good_checks < PGS_REJOIN_CHECKS) n->good_checks++;
      if (n->good_checks >= PGS_REJOIN_CHECKS) n->readable = true;
    }
  }
  return n->up != was_up || n->readable != was_readable || n->in_recovery != was_recovery;
}

/* ---- electing the writer ---- */

static bool can_write(const pgs_node_state_t *n) { return n->up && !n->in_recovery; }

bool pgs_health_elect(pgs_shard_health_t *sh, char *why, size_t cap) {
  int old = sh->writer, next = -1;
  if (cap) why[0] = '\0';
  if (old >= 0 && old < sh->nnodes && can_write(&sh->nodes[old])) {
    /* The writer stays while it can write, even when the configured
     * primary comes back out of recovery after a promotion: switching back
     * would lose what was written on the promoted node. */
    next = old;
  } else if (sh->nnodes > 0 && can_write(&sh->nodes[0])) {
    next = 0;
  } else {
    for (int i = 1; i < sh->nnodes; i++) {
      if (!can_write(&sh->nodes[i])) continue;
      if (next < 0 || sh->nodes[i].lsn > sh->nodes[next].lsn) next = i;
    }
  }
  if (next == old) return false;

  if (next >= 0 && cap) {
    if (next == 0)
      snprintf(why, cap, "the configured primary (node 0) writes again");
    else if (old < 0)
      snprintf(why, cap, "node %d is out of recovery (promoted) and takes writes", next);
    else
      snprintf(why, cap, "node %d is %s; node %d is out of recovery (promoted) and takes writes",
               old, sh->nodes[old].up ? "in recovery" : "down", next);
  } else if (cap) {
    snprintf(why, cap, "no node is up and out of recovery: writes fail until one is");
  }
  sh->writer = next;
  if (next >= 0 && next != sh->history_node) {
    /* Samples of another node say nothing about the new writer's WAL. */
    memset(&sh->history, 0, sizeof(sh->history));
    sh->history_node = next;
  }
  if (next >= 0) {
    sh->nodes[next].readable = false;
    sh->nodes[next].good_checks = 0;
    sh->nodes[next].lag_ms = 0;
    sh->nodes[next].lag_bytes = 0;
  }
  return true;
}
