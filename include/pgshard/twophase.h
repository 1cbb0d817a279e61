/*
 * twophase.h — two-phase commit for writes that span shards
 * (cross_shard_writes = 2pc): transaction ids (gids), the decision records
 * kept in the shards, and the recovery that any pgshard instance runs to
 * settle prepared transactions left by any instance (itself, one that
 * crashed, one on another machine).
 *
 * The protocol (coordinator.c runs it, in the client's plan). A transaction
 * that wrote on several shards picks its decision shard D — the first
 * written shard in config order — and a gid naming D. Then, at once:
 *   on D:               INSERT INTO pgshard.twophase_decision (gid)
 *                       VALUES ('gid'), inside the client's transaction;
 *   on the other
 *   written shards:     PREPARE TRANSACTION 'gid';
 *   on read-only ones:  COMMIT.
 * If any of it failed: ROLLBACK on D, ROLLBACK PREPARED where it prepared.
 * Else a plain COMMIT on D is the commit point: D's part and the commit row
 * become durable and visible together, or not at all. Then COMMIT PREPARED
 * on the others (or ROLLBACK PREPARED when D's COMMIT failed). The client
 * hears "COMMIT" only after D's COMMIT succeeded.
 *
 * Recovery (pgs_twophase_recover) settles a prepared gid from its decision
 * shard's table: autocommit, under a lock_timeout,
 *   INSERT INTO pgshard.twophase_decision (gid, owner, aborted)
 *     VALUES ('gid', <the prepared xact's owner>, true) ON CONFLICT DO NOTHING
 * then reads the row. The primary key makes the INSERT wait while D's
 * transaction holding an uncommitted commit row is in progress, so recovery
 * never aborts a gid whose commit row will commit; and once the abort row is
 * in, the coordinator's INSERT fails (unique violation) and the transaction
 * rolls back. A row with aborted = false and owner = the prepared xact's
 * owner commits the gid; anything else rolls it back. Any instance may do
 * this for any gid: what it decides is what the row says, and the row is
 * written once.
 *
 * Gids: "pgshard_<instance>_<decision shard>_<seq>", at most 62 bytes:
 *   instance        16 hex digits, random per pgshard process;
 *   decision shard  16 hex digits, xxh64 (seed 0) of the decision shard's
 *                   name, mapped back to a shard of the current config;
 *   seq             decimal, per process, no leading zeros.
 * The decision log of earlier versions made gids of the same shape
 * (pgshard_<log owner>_<instance>_<seq>): their middle part names no shard,
 * so recovery leaves them alone with a warning.
 *
 * Layers: the gid format is pure (router/twophase_gid.c, unit-tested); the
 * registry of this process's gids in flight and recovery over libpq are in
 * proxy/twophase.c, thread-safe (one mutex).
 */
#ifndef PGSHARD_TWOPHASE_H
#define PGSHARD_TWOPHASE_H

#include "pgshard/common.h"
#include "pgshard/config.h"
#include "pgshard/strmap.h"

/* PostgreSQL's GIDSIZE: a gid is at most 199 bytes plus the NUL. */
#define PGS_GID_MAX 200
/* A buffer for a gid pgshard makes: at most 62 bytes plus the NUL. */
#define PGS_GID_BUF 64
#define PGS_GID_PREFIX "pgshard_"

/* This process's transactions whose outcome is not settled yet, at most:
 * pgs_twophase_new_gid fails beyond it (the transaction is refused). */
#define PGS_TWOPHASE_MAX_IN_FLIGHT 65536
/* A gid of this process that its worker still drives is left to it for this
 * long; past it, recovery settles the gid from the decision row like any
 * other, and the coordinator no longer commits it (so that an abort row
 * older than PGS_TWOPHASE_ABORT_ROW_KEEP_S can never meet its commit). */
#define PGS_TWOPHASE_IN_FLIGHT_MS 60000
/* A gid not driven by this process is settled once it has been prepared
 * this long (pg_prepared_xacts.prepared): younger ones most likely belong to
 * a live instance finishing them. The startup pass does not wait. */
#define PGS_TWOPHASE_MIN_AGE_MS 2000
/* The monitor runs a recovery pass this often (and whenever a shard's
 * writer comes back or changes). */
#define PGS_TWOPHASE_PASS_MS 5000
/* Recovery's connections: libpq connect_timeout (its minimum is 2 s),
 * statement_timeout, and the lock_timeout of the decision INSERT (waiting
 * for a live transaction's commit row: past it, the next pass tries). */
#define PGS_TWOPHASE_CONNECT_TIMEOUT_S 2
#define PGS_TWOPHASE_STATEMENT_TIMEOUT_MS 5000
#define PGS_TWOPHASE_LOCK_TIMEOUT_MS 3000
/* Decision rows whose gid is prepared nowhere are deleted by a pass that
 * listed every shard of the database, at most this many per shard and
 * pass; abort rows only once this old (see PGS_TWOPHASE_IN_FLIGHT_MS). */
#define PGS_TWOPHASE_CLEANUP_BATCH 1000
#define PGS_TWOPHASE_ABORT_ROW_KEEP_S 600

/* ---- pure part (router/twophase_gid.c) ---- */

typedef struct pgs_gid {
  uint64_t instance;
  uint64_t shard_hash; /* pgs_gid_shard_hash of the decision shard's name */
  uint64_t seq;
} pgs_gid_t;

/* Write the gid of (INSTANCE, SHARD_HASH, SEQ) into OUT; returns its
 * length. */
size_t pgs_gid_format(char out[PGS_GID_BUF], uint64_t instance, uint64_t shard_hash, uint64_t seq);
/* Parse a gid made by pgs_gid_format, strictly: exactly that form (lower
 * case hex, no leading zeros in seq), so the gid needs no quoting in SQL.
 * False for anything else, other pgshard-looking names included. */
bool pgs_gid_parse(const char *gid, pgs_gid_t *out);
/* The hash a gid carries for the decision shard named SHARD_NAME. */
uint64_t pgs_gid_shard_hash(const char *shard_name);
/* The index in DB of the shard GID names as its decision shard, -1 when
 * none of DB's shards has that name's hash. */
int pgs_gid_decision_shard(const pgs_database_t *db, const pgs_gid_t *gid);

/* ---- this process's gids (proxy/twophase.c) ---- */

/* Where a gid of this process is, for SHOW TWOPHASE. */
typedef enum {
  PGS_2PC_PREPARING,  /* the decision row and the PREPAREs are on their way */
  PGS_2PC_COMMITTING, /* COMMIT sent to the decision shard: the commit point */
  PGS_2PC_COMMITTED,  /* the decision shard committed: COMMIT PREPARED sent */
  PGS_2PC_ABORTING,   /* ROLLBACK (PREPARED) sent */
} pgs_twophase_state_t;

/* Startup, in the main thread before any worker or the monitor runs: reads
 * PGSHARD_FAULT and picks this process's instance id. */
pgs_status_t pgs_twophase_start(const pgs_config_t *config) PGS_MUST_USE;
/* Forget everything (after workers and monitor have stopped). */
void pgs_twophase_stop(void);
/* Recovery passes are due (the module was started). */
bool pgs_twophase_active(void);

/* A new gid, written into OUT, for a transaction of database DB about to
 * commit in two phases with decision shard SHARD. It is registered as in
 * flight for this process: recovery leaves it to its worker for
 * PGS_TWOPHASE_IN_FLIGHT_MS unless released. PGS_ENOTFOUND (ERR says why)
 * when SHARD's decision table is not known to be usable (recovery could not
 * create it, or has not reached the shard yet), PGS_ETOOBIG when
 * PGS_TWOPHASE_MAX_IN_FLIGHT transactions are unsettled: do not prepare,
 * refuse the commit. */
pgs_status_t pgs_twophase_new_gid(const char *db, const char *shard, char out[PGS_GID_BUF],
                                  char *err, size_t errlen) PGS_MUST_USE;
/* GID moves to STATE (SHOW TWOPHASE). */
void pgs_twophase_set_state(const char *gid, pgs_twophase_state_t state);
/* Milliseconds since GID was made; UINT64_MAX when it is not in flight. */
uint64_t pgs_twophase_age_ms(const char *gid);
/* Every shard of GID has answered: the gid is forgotten. */
void pgs_twophase_done(const char *gid);
/* The worker gives GID up without finishing it (a shard connection was
 * lost, a COMMIT PREPARED failed, the client went away): recovery settles
 * it from the decision row at its next pass. */
void pgs_twophase_release(const char *gid);
/* A server still runs a statement naming GID (PREPARE TRANSACTION, COMMIT
 * or ROLLBACK PREPARED) for a worker that gave it up: recovery leaves GID
 * alone until every such server has answered (pgs_twophase_unhold) or
 * PGS_TWOPHASE_IN_FLIGHT_MS has passed. Not needed for safety (the row
 * decides), it spares recovery a race it would only wait on. */
void pgs_twophase_hold(const char *gid);
void pgs_twophase_unhold(const char *gid);

/* SHOW TWOPHASE: FN is called for each gid of this process in flight, under
 * the module's lock, so it must not call back into this module. */
typedef void (*pgs_twophase_each_fn)(const char *gid, pgs_twophase_state_t state, bool released,
                                     uint64_t age_ms, void *arg);
void pgs_twophase_each(pgs_twophase_each_fn fn, void *arg);
/* What recovery did in this process so far. */
typedef struct pgs_twophase_counters {
  uint64_t commits;      /* COMMIT PREPARED run by recovery */
  uint64_t rollbacks;    /* ROLLBACK PREPARED run by recovery */
  uint64_t passes;       /* passes finished */
  uint64_t rows_deleted; /* decision rows cleaned up */
  uint64_t last_pass_ms; /* pgs_now_ms() at the end of the last pass, 0: none */
} pgs_twophase_counters_t;
pgs_twophase_counters_t pgs_twophase_counters(void);

/* Fault injection for tests. PGSHARD_FAULT (read once at startup) names a
 * point; pgs_twophase_fault(POINT) with that name logs and ends the process
 * with _exit(137) (as SIGKILL would), and otherwise returns false. Points
 * (called by coordinator.c):
 *   "2pc_after_prepare"   every other shard has prepared and the commit row
 *                         is inserted on the decision shard, not committed
 *   "2pc_after_decision"  the decision shard committed, no COMMIT PREPARED
 *                         sent */
bool pgs_twophase_fault(const char *point);
/* The same knob for a pause: PGSHARD_FAULT naming POINT makes the calling
 * worker sleep 3 s there (a test stops a shard meanwhile). Point:
 *   "2pc_pause_after_decision"  the decision shard committed, no COMMIT
 *                               PREPARED sent yet */
void pgs_twophase_pause(const char *point);

/* ---- recovery (proxy/twophase.c) ---- */

/* One shard's writer to settle prepared transactions on. Recovery logs in
 * to NODE as pools do (pgs_node_conninfo): to list, create the decision
 * table and decide, as twophase_recovery_user when configured, else as the
 * monitor does; to settle a gid, through that login when it is a superuser
 * or the gid's owner, else as the owner (the [user.*] of that name). */
typedef struct pgs_twophase_target {
  char *db;                       /* config database name, for the log */
  char *shard;                    /* shard name, for the log */
  pgs_config_t *config;           /* a reference (targets_free drops it) */
  const pgs_database_t *database; /* in config */
  const pgs_node_t *node;         /* its writer, in config; NULL: it has none now */
} pgs_twophase_target_t;

/* One recovery pass, blocking (libpq, connect_timeout, statement_timeout
 * and lock_timeout bounded), over the targets of databases with
 * cross_shard_writes = 2pc: on each, create the decision table if this
 * process has not seen it there yet (sql/twophase.sql), list
 * `pg_prepared_xacts` with the "pgshard_" prefix and settle every gid not
 * driven by this process (and at least PGS_TWOPHASE_MIN_AGE_MS old, unless
 * STARTUP) from its decision shard's row, as twophase.h says. Then, for a
 * database every shard of which was listed, delete decision rows whose gid
 * is prepared nowhere. Every settlement is logged at info. STARTUP makes
 * unreachable shards warnings (else debug). Returns the number of targets
 * that could not be settled fully. One pass runs at a time. */
int pgs_twophase_recover(const pgs_twophase_target_t *targets, int ntargets, bool startup);
/* The startup pass: every database's configured primaries. Call after
 * pgs_twophase_start, before the workers accept clients. Returns what
 * pgs_twophase_recover returns. */
int pgs_twophase_recover_config(pgs_config_t *config);
void pgs_twophase_targets_free(pgs_twophase_target_t *targets, int ntargets);
/* Startup: when twophase_recovery_user is set, log in as it to every
 * database's configured primary and check it is a superuser there.
 * PGS_ECONFIG (logged) when a primary says it is not; a primary that cannot
 * be reached is a warning. PGS_OK when the key is not set. */
pgs_status_t pgs_twophase_check_recovery_user(const pgs_config_t *config) PGS_MUST_USE;

#endif
