/*
 * twophase.h — two-phase commit for writes that span shards
 * (cross_shard_writes = 2pc): transaction ids (gids), the decision log, and
 * the recovery that settles pgshard's prepared transactions after a crash of
 * pgshard or of a shard.
 *
 * The protocol. A transaction that wrote on several shards is given a gid
 * (pgs_twophase_new_gid) and runs PREPARE TRANSACTION 'gid' on each of them.
 * If every PREPARE succeeds, the commit decision is appended to the decision
 * log and made durable (pgs_twophase_record_commit: "C gid", fdatasync)
 * before any COMMIT PREPARED is sent; otherwise nothing (or "A gid") is
 * recorded and the prepared ones are rolled back. Once every shard has
 * answered, "D gid" closes the transaction. So a shard only ever commits a
 * gid whose "C" record is on disk, and recovery can apply *presumed abort*:
 * a prepared gid of an earlier pgshard process without a "C" record never
 * committed anywhere and is rolled back; one with a "C" record is committed
 * wherever it is still prepared.
 *
 * Gids: "pgshard_<owner>_<instance>_<seq>", at most 62 bytes:
 *   owner     16 hex digits, chosen when the decision log is created and
 *             kept in its header: which log decides this gid. Recovery
 *             touches only gids of its own log, never those of another
 *             pgshard (several proxies in front of the same shards each
 *             keep their own log; presumed abort on another proxy's gids
 *             would roll back its transactions in flight).
 *   instance  16 hex digits, random per pgshard process: a gid of an
 *             earlier instance whose decision is unknown is presumed
 *             aborted; one of this process may still be preparing.
 *   seq       decimal, per process.
 * Only one process holds a log at a time (an exclusive flock on the stable
 * file "<log>.lock" beside it), so a gid of this owner and another instance
 * belongs to a process that has ended.
 *
 * The log ([pgshard] twophase_log) is a text file, one record a line:
 *   pgshard-2pc-log 1 owner=<16 hex>   header, first line
 *   C <gid>                            commit decided (fdatasync'ed first)
 *   A <gid>                            abort decided (not synced: the
 *                                      absence of "C" means the same)
 *   D <gid>                            every shard has settled the gid
 * A "C" is final: an "A" after it is ignored. A torn last line (a crash
 * in the middle of a write) is ignored; its record never took effect, since
 * record_commit returns only after the line is synced. At startup the log
 * is rewritten with only its undone "C" records.
 *
 * Layers: the gid format, the record syntax and the replay of a log's text
 * are pure (router/twophase_log.c, unit-tested); the log file, the
 * in-memory decision index, and recovery over libpq are in
 * proxy/twophase.c. Everything in the proxy part is thread-safe (one
 * mutex): workers record decisions, the monitor's recovery pass reads them.
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
#define PGS_TWOPHASE_LOG_MAGIC "pgshard-2pc-log"
#define PGS_TWOPHASE_LOG_VERSION 1

/* This process's transactions whose outcome is not settled yet, at most:
 * pgs_twophase_new_gid fails beyond it (the transaction is refused). */
#define PGS_TWOPHASE_MAX_IN_FLIGHT 65536
/* A gid of this process that its worker has not decided for this long is
 * taken over by recovery: abort is decided, and the worker, coming back,
 * finds record_commit refuse and leaves the rollback to recovery. A decided
 * gid is the worker's until it is done or gives it up (its COMMIT or
 * ROLLBACK PREPARED are in flight: recovery would race them). */
#define PGS_TWOPHASE_IN_FLIGHT_MS 60000
/* The monitor runs a recovery pass this often (and whenever a shard's
 * writer comes back or changes) while the log is open. */
#define PGS_TWOPHASE_PASS_MS 5000
/* Recovery's connections: libpq connect_timeout (its minimum is 2 s) and
 * statement_timeout. */
#define PGS_TWOPHASE_CONNECT_TIMEOUT_S 2
#define PGS_TWOPHASE_STATEMENT_TIMEOUT_MS 5000
/* The running log is compacted after a pass once it is this big. */
#define PGS_TWOPHASE_COMPACT_BYTES (16 * 1024 * 1024)

typedef enum {
  PGS_2PC_UNKNOWN, /* no decision recorded (pending, or presumed abort) */
  PGS_2PC_COMMIT,
  PGS_2PC_ABORT,
} pgs_twophase_decision_t;

/* ---- pure part (router/twophase_log.c) ---- */

typedef struct pgs_gid {
  uint64_t owner;
  uint64_t instance;
  uint64_t seq;
} pgs_gid_t;

/* Write the gid of (OWNER, INSTANCE, SEQ) into OUT; returns its length. */
size_t pgs_gid_format(char out[PGS_GID_BUF], uint64_t owner, uint64_t instance, uint64_t seq);
/* Parse a gid made by pgs_gid_format, strictly: exactly that form (lower
 * case hex, no leading zeros in seq), so the gid needs no quoting in SQL.
 * False for anything else, other pgshard-looking names included. */
bool pgs_gid_parse(const char *gid, pgs_gid_t *out);

/* The header line (with its newline) for OWNER; returns its length. */
size_t pgs_twophase_log_header(char *out, size_t cap, uint64_t owner);

/* One record of the log: KIND is 'C', 'A' or 'D'. */
typedef struct pgs_twophase_record {
  char kind;
  char gid[PGS_GID_MAX];
} pgs_twophase_record_t;

/* Parse one line (without its newline; a trailing '\r' is allowed).
 * PGS_EINVAL when it is not a record (bad kind, bad gid, extra text). */
pgs_status_t pgs_twophase_log_parse_record(const char *line, size_t len,
                                           pgs_twophase_record_t *out) PGS_MUST_USE;

/* What a log's text says. */
typedef struct pgs_twophase_replay {
  bool has_header;
  uint64_t owner;       /* from the header */
  pgs_strmap_t commits; /* gid -> NULL: "C" records without a "D" */
  int records;          /* well-formed records read */
  int done;             /* gids closed by "D" */
  int malformed;        /* lines that are not records, with their numbers: */
  int first_bad_line;   /* the first such line (1-based), 0 when none */
  bool torn_tail;       /* the text ended in the middle of a line */
} pgs_twophase_replay_t;

/* Replay TEXT (a whole log file): the header, then every record in order.
 * An empty text is a fresh log (no header). PGS_EINVAL when a non-empty
 * text does not start with a valid header (then OUT holds nothing to
 * free); otherwise PGS_OK, malformed lines counted and skipped. The caller
 * frees OUT with pgs_twophase_replay_free. */
pgs_status_t pgs_twophase_replay(const char *text, size_t len,
                                 pgs_twophase_replay_t *out) PGS_MUST_USE;
void pgs_twophase_replay_free(pgs_twophase_replay_t *replay);

/* ---- the log file (proxy/twophase_file.c) ---- */

/* Make this process the owner of the log at LOG_PATH: an exclusive,
 * non-blocking flock on "<LOG_PATH>.lock" (created if missing, never
 * renamed or deleted, unlike the log, which every replacement renames
 * over). PGS_OK: *LOCK_FD holds the lock until it is closed (at exit).
 * PGS_EIO with ERR set: another process holds it, or the file cannot be
 * opened. */
/* Write LEN bytes of DATA to FD, across short writes and EINTR. */
bool pgs_twophase_file_write_all(int fd, const char *data, size_t len);
pgs_status_t pgs_twophase_file_lock(const char *log_path, int *lock_fd, char *err,
                                    size_t errlen) PGS_MUST_USE;
/* Replace the log at LOG_PATH by a file holding TEXT: written to a
 * temporary file of a unique name beside it (mkostemp), synced, renamed
 * over LOG_PATH. Returns the new log's descriptor, open for appending; ERR
 * is empty, or says why the directory could not be synced (the rename may
 * then not survive a crash: worth a warning). -1 with ERR set on failure,
 * the log untouched and no temporary file left. */
int pgs_twophase_file_replace(const char *log_path, const char *text, size_t len, char *err,
                              size_t errlen);

/* ---- the decision log (proxy/twophase.c) ---- */

/* Startup, in the main thread before any worker or the monitor runs: reads
 * PGSHARD_FAULT, picks this process's instance id, and opens the log at
 * config->twophase_log when it exists or a database uses
 * cross_shard_writes = 2pc (creating it then). Opening replays and
 * compacts it and takes an exclusive lock. A log that exists but cannot be
 * used (locked by another pgshard, unreadable, not a pgshard log) is an
 * error when a database uses 2pc (PGS_EIO / PGS_ECONFIG, logged), and
 * otherwise a warning: recovery then stays off. A log not opened at
 * startup is created at the first pgs_twophase_new_gid. */
pgs_status_t pgs_twophase_start(const pgs_config_t *config) PGS_MUST_USE;
/* SIGHUP: the log file stays the one opened at startup (a new
 * twophase_log is warned about and used after a restart); a database that
 * now uses 2pc makes pgshard open (create) the log now. */
void pgs_twophase_reload(const pgs_config_t *config);
/* Close the log (after workers and monitor have stopped). */
void pgs_twophase_stop(void);
/* The log is open: recovery passes have something to decide with. */
bool pgs_twophase_active(void);

/* A new gid for a transaction about to PREPARE on several shards, written
 * into OUT. It is registered as in flight for this process: recovery
 * leaves it alone for PGS_TWOPHASE_IN_FLIGHT_MS unless released. Opens
 * (creates) the log if needed. PGS_ETOOBIG when PGS_TWOPHASE_MAX_IN_FLIGHT
 * transactions are unsettled, PGS_EIO when the log cannot be opened: do
 * not prepare, refuse the commit. */
pgs_status_t pgs_twophase_new_gid(char out[PGS_GID_BUF]) PGS_MUST_USE;
/* Decide commit: append "C gid" and fdatasync it (group commit: threads
 * deciding at once share one fdatasync). Blocks for the sync. PGS_OK: the
 * commit is decided and durable; send COMMIT PREPARED to every shard.
 * Anything else: no commit was decided (the log could not be written — the
 * partial line is cut off —, or recovery took the gid over after
 * PGS_TWOPHASE_IN_FLIGHT_MS: PGS_EINVAL, abort decided, or PGS_ENOTFOUND,
 * settled and forgotten). After a log failure: ROLLBACK PREPARED on every
 * shard that prepared it; after a takeover recovery settles it. If fdatasync itself fails the outcome on disk is unknown,
 * and pgshard exits at once (like PostgreSQL's PANIC on fsync failure)
 * so that recovery, reading what is on disk, settles every shard the same
 * way. Calls pgs_twophase_fault("2pc_after_decision") after the sync. */
pgs_status_t pgs_twophase_record_commit(const char *gid) PGS_MUST_USE;
/* Decide abort ("A gid", not synced). Ignored (logged) after a commit. */
void pgs_twophase_record_abort(const char *gid);
/* Every shard of GID has answered its COMMIT PREPARED / ROLLBACK PREPARED
 * (SQLSTATE 42704, no such prepared transaction, counts as answered:
 * recovery may have settled it first): "D gid", and the gid is forgotten.
 * Only then — a shard left prepared after "D" would be rolled back. */
void pgs_twophase_record_done(const char *gid);
/* The worker gives GID up without finishing it (a shard connection was
 * lost): recovery settles it at its next pass, committing if a commit was
 * decided, rolling back otherwise (an undecided gid is decided abort now). */
void pgs_twophase_release(const char *gid);
/* A server still runs a statement naming GID (PREPARE TRANSACTION, COMMIT
 * or ROLLBACK PREPARED) for a worker that gave it up: recovery leaves GID
 * alone until every such server has answered (pgs_twophase_unhold) or
 * PGS_TWOPHASE_IN_FLIGHT_MS has passed, so that it never settles a gid a
 * server is settling too. */
void pgs_twophase_hold(const char *gid);
void pgs_twophase_unhold(const char *gid);
/* The recorded decision for GID (UNKNOWN: none, including gids of other
 * processes whose decision was never recorded: presumed abort). */
pgs_twophase_decision_t pgs_twophase_decision(const char *gid);
/* GID was made by this pgshard process. */
bool pgs_twophase_is_own_instance(const char *gid);
/* Every gid the log has not closed (SHOW TWOPHASE): FN is called for each
 * under the log's lock, so it must not call back into this module. */
typedef void (*pgs_twophase_each_fn)(const char *gid, pgs_twophase_decision_t decision, bool own,
                                     bool released, uint64_t age_ms, void *arg);
void pgs_twophase_each(pgs_twophase_each_fn fn, void *arg);

/* Fault injection for tests. PGSHARD_FAULT (read once at startup) names a
 * point; pgs_twophase_fault(POINT) with that name logs and ends the process
 * with _exit(137) (as SIGKILL would), and otherwise returns false. Points:
 *   "2pc_after_prepare"   every shard has prepared, nothing recorded yet
 *                         (called by the commit flow in request.c)
 *   "2pc_after_decision"  the "C" record is synced, no COMMIT PREPARED sent
 *                         (called inside pgs_twophase_record_commit) */
bool pgs_twophase_fault(const char *point);
/* The same knob for a pause: PGSHARD_FAULT naming POINT makes the calling
 * worker sleep 3 s there (a test stops a shard meanwhile). Point:
 *   "2pc_pause_after_decision"  the commit is recorded, no COMMIT PREPARED
 *                               sent yet (called by request.c) */
void pgs_twophase_pause(const char *point);

/* ---- recovery (proxy/twophase.c) ---- */

/* One shard's writer to settle prepared transactions on. Recovery logs in
 * to NODE as pools do (pgs_node_conninfo): to list, as twophase_recovery_user
 * when configured, else as the monitor does; to settle a gid, through that
 * login when it is a superuser or the gid's owner, else as the owner (the
 * [user.*] of that name). */
typedef struct pgs_twophase_target {
  char *db;                       /* config database name, for the log */
  char *shard;                    /* shard name, for the log */
  pgs_config_t *config;           /* a reference (targets_free drops it) */
  const pgs_database_t *database; /* in config */
  const pgs_node_t *node;         /* its writer, in config; NULL: it has none now */
} pgs_twophase_target_t;

/* One recovery pass, blocking (libpq, connect_timeout and statement_timeout
 * bounded): on every target, list `pg_prepared_xacts` of its database with
 * the "pgshard_" prefix and settle the gids of this log: a commit decided
 * -> COMMIT PREPARED; an abort decided, or no decision and an earlier
 * instance -> ROLLBACK PREPARED (presumed abort); no decision and this
 * process, within PGS_TWOPHASE_IN_FLIGHT_MS -> left (in flight). Gids of
 * other logs are left alone (logged). A gid whose owner recovery cannot log
 * in as (not a [user.*], no superuser recovery login) is left and warned
 * about once. Every settlement is logged at info. When every target was
 * listed, decided gids that no target holds any more get their "D".
 * STARTUP makes unreachable shards warnings (else debug). Returns the
 * number of targets that could not be settled fully (down, in recovery, a
 * statement failed, an owner out of reach). Does nothing (returns 0)
 * without a log. One pass runs at a time. */
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
