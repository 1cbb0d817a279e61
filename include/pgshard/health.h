/*
 * health.h — what the monitor knows about every node, and the pure logic
 * that turns check results into it: lag in bytes and in time, hysteresis,
 * down/up with backoff, promotion. No I/O: the monitor thread (monitor.h)
 * feeds check results in; workers read the published snapshot.
 *
 * Time lag is measured without trusting the replica's clock or
 * pg_last_xact_replay_timestamp() (wrong when the primary is idle): the
 * monitor keeps a short history of (time the check was sent, primary LSN).
 * A replica whose replay LSN R is at or past the newest primary sample has
 * lag 0; otherwise its lag is now minus the time of the oldest sample whose
 * LSN is past R (the primary had WAL then that the replica still lacks).
 * With no such sample in the history, the lag is at least the history's
 * span: now minus the oldest sample.
 */
#ifndef PGSHARD_HEALTH_H
#define PGSHARD_HEALTH_H

#include "pgshard/common.h"

#define PGS_LSN_HISTORY 1024  /* primary samples kept per shard */
#define PGS_REJOIN_CHECKS 3   /* checks within bounds before a replica rejoins */
#define PGS_DOWN_FAILURES 3   /* default of node_down_failures */
#define PGS_RETRY_MAX_MS 5000 /* backoff cap between reconnects to a down node */

typedef struct pgs_lsn_sample {
  uint64_t ms;  /* when the check query was sent (monotonic ms) */
  uint64_t lsn; /* the primary's pg_current_wal_lsn() */
} pgs_lsn_sample_t;

/* Ring of primary samples, oldest first; times never decrease (a sample
 * older than the newest is ignored). */
typedef struct pgs_lsn_history {
  pgs_lsn_sample_t s[PGS_LSN_HISTORY];
  int head, count;
} pgs_lsn_history_t;

void pgs_lsn_history_add(pgs_lsn_history_t *h, uint64_t ms, uint64_t lsn);
/* The newest sample, or NULL. */
const pgs_lsn_sample_t *pgs_lsn_history_newest(const pgs_lsn_history_t *h);
/* The first sample sent after AFTER_MS (for read-your-writes: an LSN at or
 * past a commit that completed at AFTER_MS), or NULL. */
const pgs_lsn_sample_t *pgs_lsn_history_after(const pgs_lsn_history_t *h, uint64_t after_ms);
/* Time lag (ms) of a replica at REPLAY at time NOW, as described above; 0
 * when caught up; -1 when the history is empty (unknown). */
int64_t pgs_lag_ms(const pgs_lsn_history_t *h, uint64_t replay, uint64_t now);

/* Parse "16/B374D848" (pg_lsn text). PGS_EINVAL when malformed. */
pgs_status_t pgs_lsn_parse(const char *text, uint64_t *out) PGS_MUST_USE;
/* A primary's insert position as WAL a replica can replay to: at the start
 * of a page PostgreSQL reports the position after the page header (24
 * bytes, 40 at a segment's start), which no record ends at; an idle
 * primary would otherwise look 24 or 40 bytes ahead of its replicas. */
uint64_t pgs_lsn_record_end(uint64_t insert_lsn);

/* How long the checks of one node that answered took, from the start of
 * the connect (a check that follows a login) or the send of the query to
 * its answer: a Prometheus histogram with fixed buckets from 0.5 ms to 5 s
 * (an upper bound counts as inside its bucket, as Prometheus' le), each
 * bucket counted alone (the export makes them cumulative). A check that
 * failed has no latency: it is not counted. */
#define PGS_CHECK_BUCKETS 13
extern const uint64_t pgs_check_bucket_us[PGS_CHECK_BUCKETS]; /* upper bounds, µs */

typedef struct pgs_check_timing {
  uint64_t count;
  uint64_t sum_us;
  uint64_t last_us;                        /* the latest check's, 0 before the first */
  uint64_t buckets[PGS_CHECK_BUCKETS + 1]; /* the last: past the largest bound */
} pgs_check_timing_t;

/* One more check that answered after US microseconds. */
void pgs_check_timing_add(pgs_check_timing_t *t, uint64_t us);
/* The bucket of US: the first whose bound is >= US, PGS_CHECK_BUCKETS past
 * them all. */
int pgs_check_bucket(uint64_t us);

/* One node as the workers see it. */
typedef struct pgs_node_state {
  bool up;          /* reachable (not marked down) */
  bool in_recovery; /* pg_is_in_recovery() at the last check */
  bool readable;    /* a replica that may take reads now (bounds + hysteresis) */
  bool banned;      /* an operator took it out of the read set (admin BAN) */
  bool writer;      /* the node writes go to (configured primary, or promoted) */
  uint64_t lsn;     /* replica: replay LSN; primary: current LSN */
  uint64_t receive_lsn;
  uint64_t lag_bytes;   /* replicas: newest primary LSN - replay LSN */
  int64_t lag_ms;       /* replicas: see above; -1 unknown */
  uint64_t checked_ms;  /* when its last check completed */
  int failures;         /* consecutive failed checks */
  int good_checks;      /* consecutive checks within bounds (replicas) */
  uint32_t down_epoch;  /* bumped each time it is marked down: pooled
                          connections from before are dropped */
  uint64_t retry_at_ms; /* down: next reconnect attempt */
  int retry_backoff_ms;
  pgs_check_timing_t check; /* its checks' latency */
} pgs_node_state_t;

/* What one check of a node returned. */
/* A check not answered in time on a connection that is still open counts
 * toward marking the node down only once it has waited this long: a busy
 * machine delays answers without the node being gone. Meanwhile a replica
 * stays in the read set only while it would be within the bounds even had
 * it replayed nothing since its last answer (pgs_health_apply). */
#define PGS_SLOW_CHECK_DOWN_MS 2000

typedef struct pgs_check_result {
  bool ok;   /* the query answered */
  bool slow; /* !ok: not answered yet, the connection still open */
  bool in_recovery;
  uint64_t lsn; /* current LSN (primary) or replay LSN (replica) */
  uint64_t receive_lsn;
  uint64_t sent_ms; /* when the query was sent */
  uint64_t done_ms;
  uint64_t duration_us; /* ok: the connect if it needed one, and the query */
} pgs_check_result_t;

/* Bounds a replica must stay within to take reads. */
typedef struct pgs_lag_bounds {
  int64_t max_lag_ms;
  int64_t max_lag_bytes;
  int interval_ms;   /* lag_check_interval_ms: the base of the reconnect backoff */
  int down_failures; /* node_down_failures: failed checks in a row that mark a node
                        down (0: PGS_DOWN_FAILURES) */
} pgs_lag_bounds_t;

/* A shard: configured primary at nodes[0], replicas after it. */
typedef struct pgs_shard_health {
  pgs_node_state_t *nodes;
  int nnodes;
  int writer;                /* index of the node writes go to, -1 none (all down) */
  int history_node;          /* the node whose LSNs history holds: the writer, or
                             the last one while there is none */
  pgs_lsn_history_t history; /* samples of the writer's LSN */
} pgs_shard_health_t;

/* Apply the check result R of node I to shard SH (pure; the monitor calls
 * it on its own copy, the writer first in each round so replicas are
 * measured against the newest primary sample). Updates up/down
 * (PGS_DOWN_FAILURES failures in a row mark a node down, bump down_epoch
 * and schedule a retry with doubling backoff from bounds->interval_ms up to
 * PGS_RETRY_MAX_MS; a success brings it up), the writer's LSN history,
 * replicas' lags, readable (leaves at once when over a bound, not in
 * recovery, down, or when a check fails — its lag is unknown then; a
 * check that is only late (R slow) takes it out only when the lag it
 * could have by now, had it replayed nothing since its last answer, is
 * over a bound; rejoins after PGS_REJOIN_CHECKS good checks in a row,
 * counted in good_checks). A lag that cannot be measured (no primary sample yet) is
 * out of bounds while the shard has a writer that is up, and within them
 * when it has none (the replica then holds the newest data any node of the
 * shard can serve). Times come from R: sent_ms for primary samples, done_ms
 * as "now" for lags and retries; a check that answered adds R's duration_us
 * to the node's check timing. Returns true when up, readable,
 * in_recovery or down_epoch changed (LSNs and lags change every check). */
bool pgs_health_apply(pgs_shard_health_t *sh, int i, const pgs_check_result_t *r,
                      const pgs_lag_bounds_t *bounds);

/* Decide which node writes (after a round of checks): the current writer
 * while it is up and not in recovery (so the configured primary while it is
 * fine, and a promoted replica stays writer when the old primary comes back
 * out of recovery: switching back would lose what was written since); else
 * the configured primary when it is up and not in recovery; else a replica
 * that is up and not in recovery (promoted) — the one with the highest LSN
 * when several; else -1. Never two: a node out of recovery that is not the
 * writer is not readable either. A new writer starts a new history (kept
 * while there is no writer, so replicas are still measured against the last
 * primary WAL seen). Returns true when the writer changed; WHY gets a
 * sentence for the log. */
bool pgs_health_elect(pgs_shard_health_t *sh, char *why, size_t cap);

#endif
