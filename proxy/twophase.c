/*
 * twophase.c — the two-phase commit decision log and recovery (twophase.h).
 *
 * State, all under one mutex (tp.lock): the open log file, this process's
 * identity (the log's owner, a random instance id, the next sequence
 * number), and the index — every gid whose outcome is not settled: this
 * process's transactions from pgs_twophase_new_gid until
 * pgs_twophase_record_done, plus the undone commits the log held at
 * startup. Lookups never read the file; the index holds at most
 * PGS_TWOPHASE_MAX_IN_FLIGHT gids of this process.
 *
 * Invariants:
 *  - An entry's decision moves UNKNOWN -> COMMIT or UNKNOWN -> ABORT, once,
 *    under the lock. That is what makes the recovery pass safe next to the
 *    workers: recovery decides abort on a gid of this process that has been
 *    undecided too long in the same step that lets it roll the gid back, and
 *    record_commit then refuses.
 *  - A "C" record is on disk before record_commit returns OK. Threads
 *    committing at once share one fdatasync (group commit): whoever finds no
 *    sync running syncs everything written so far with the lock released;
 *    the others wait on tp.synced. The file is never swapped (compaction)
 *    while a sync runs.
 *  - The file is appended with whole lines; a failed append is cut back to
 *    the last whole line, so a record is either there or not.
 *  - One process holds the log (flock LOCK_EX on "<log>.lock", taken when
 *    the log is first opened and kept until pgs_twophase_stop): gids of
 *    this owner and another instance belong to a process that has ended.
 *
 * Recovery connects with blocking libpq (bounded by connect_timeout and
 * statement_timeout): at startup from the main thread, later from the
 * monitor's pass on the libuv thread pool — never on an event loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pgshard/log.h"
#include "pgshard/io.h"
#include "pgshard/twophase.h"

/* Exit status when a decision cannot be made durable (sysexits EX_IOERR). */
#define EXIT_LOG_SYNC_FAILED 74

#define LIST_SQL                                                                                   \
  "SELECT gid, owner FROM pg_prepared_xacts WHERE database = current_database() "                  \
  "AND starts_with(gid, '" PGS_GID_PREFIX "') ORDER BY prepared"

/* The recovery login: where it is, who it is, whether it may finish any
 * user's prepared transaction. */
#define SESSION_SQL "SELECT pg_is_in_recovery(), current_user, current_setting('is_superuser')"

/* Warnings given once (an unsettleable gid is met at every pass): at most
 * this many remembered. */
#define WARNED_MAX 4096

/* A gid the log knows and has not closed. */
typedef struct entry {
  pgs_twophase_decision_t decision; /* UNKNOWN: this process is still preparing it */
  bool own;                         /* made by this process (else: an undone commit from the log) */
  bool released;                    /* no worker drives it any more: recovery settles it */
  bool logged;                      /* a "C" or "A" went to the log: a "D" must close it */
  int held;          /* servers still running a statement on it (pgs_twophase_hold) */
  uint64_t since_ms; /* made, decided, released or last answered, for
                        PGS_TWOPHASE_IN_FLIGHT_MS */
} entry_t;

/* What recovery does with one prepared gid. */
typedef enum {
  ACT_LEAVE, /* this process's worker is on it */
  ACT_COMMIT,
  ACT_ROLLBACK,
  ACT_FOREIGN, /* not this log's gid: never touched */
} action_t;

static struct {
  uv_mutex_t lock;
  uv_cond_t synced;
  uv_mutex_t pass_lock; /* one recovery pass at a time */
  bool initialized;
  char *path;
  int fd;         /* -1: the log is not open */
  int lock_fd;    /* "<log>.lock", flocked; -1: not held */
  uint64_t size;  /* bytes in the file: where the next record goes */
  uint64_t owner; /* the log's, valid while fd >= 0 */
  uint64_t instance;
  uint64_t next_seq;
  pgs_strmap_t index;            /* gid -> entry_t */
  pgs_strmap_t warned;           /* keys of warnings given once (first_warning) */
  int nown;                      /* entries of this process */
  uint64_t written, synced_upto; /* "C" records appended / known durable */
  bool syncing;
  char fault[64];       /* PGSHARD_FAULT */
  char last_error[256]; /* the last open failure, logged once */
} tp = {.fd = -1, .lock_fd = -1};

/* ---- helpers ---- */

static uint64_t random_id(void) {
  uint64_t v = 0;
  while (v == 0) {
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
      v = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&v;
  }
  return v;
}

static bool any_database_uses_2pc(const pgs_config_t *config) {
  for (int i = 0; i < config->ndatabases; i++)
    if (config->databases[i].cross_shard_writes == PGS_XWRITE_2PC) return true;
  return false;
}

static char *read_all(int fd, size_t *len) {
  size_t cap = 65536, n = 0;
  char *buf = pgs_xmalloc(cap);
  for (;;) {
    if (n == cap) buf = pgs_xrealloc(buf, cap *= 2);
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      free(buf);
      return NULL;
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  *len = n;
  return buf;
}

/* ---- the log file (callers hold tp.lock) ---- */

/* Append "KIND gid\n". A failed append is cut back to the last whole line. */
static bool append_locked(char kind, const char *gid) {
  char line[PGS_GID_MAX + 4];
  if (tp.fd < 0) return false;
  int n = snprintf(line, sizeof(line), "%c %s\n", kind, gid);
  if (pgs_twophase_file_write_all(tp.fd, line, (size_t)n)) {
    tp.size += (uint64_t)n;
    return true;
  }
  int err = errno;
  if (ftruncate(tp.fd, (off_t)tp.size) != 0) {
    /* The torn line stays: the next record, starting with an upper-case
     * letter, fuses with it into a malformed line, which replay skips. */
    pgs_error("2pc: %s: cannot cut back a failed write: %s", tp.path, strerror(errno));
  }
  pgs_error("2pc: cannot write to %s: %s", tp.path, strerror(err));
  return false;
}

/* Replace the log by one holding the header and "C gid" for every gid of
 * COMMITS (keys; when FROM_INDEX, only entries decided COMMIT), synced.
 * Returns the new file's descriptor, or -1 with ERR set. */
static int rewrite_locked(uint64_t owner, const pgs_strmap_t *commits, bool from_index,
                          uint64_t *size, char *err, size_t errlen) {
  pgs_buf_t buf;
  pgs_buf_init(&buf);
  char header[128];
  pgs_buf_put(&buf, header, pgs_twophase_log_header(header, sizeof(header), owner));
  for (size_t i = 0; i < commits->nbuckets; i++) {
    for (const pgs_strmap_entry_t *e = commits->buckets[i]; e; e = e->next) {
      if (from_index && ((const entry_t *)e->value)->decision != PGS_2PC_COMMIT) continue;
      pgs_buf_put(&buf, "C ", 2);
      pgs_buf_put(&buf, e->key, strlen(e->key));
      pgs_buf_put_u8(&buf, '\n');
    }
  }
  int fd = pgs_twophase_file_replace(tp.path, (const char *)buf.data, buf.len, err, errlen);
  if (fd >= 0) {
    if (err[0]) pgs_warn("2pc: %s", err);
    *size = buf.len;
  }
  pgs_buf_free(&buf);
  return fd;
}

/* Open the log at tp.path (creating it when CREATE), replay it into the
 * index, compact it and keep it open and locked. PGS_ENOTFOUND: it does
 * not exist and CREATE is false. */
static pgs_status_t open_locked(bool create, char *err, size_t errlen) {
  PGS_ASSERT(tp.fd < 0);
  if (!create && access(tp.path, F_OK) != 0 && errno == ENOENT) return PGS_ENOTFOUND;
  /* The lock comes first: only its holder may read the log and replace it. */
  bool locked_now = tp.lock_fd < 0;
  if (locked_now && pgs_twophase_file_lock(tp.path, &tp.lock_fd, err, errlen) != PGS_OK)
    return PGS_EIO;
  pgs_status_t rc = PGS_EIO;
  char *text = NULL;
  int fd = open(tp.path, O_RDONLY | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open %s: %s", tp.path, strerror(errno));
    goto fail;
  }
  size_t len = 0;
  text = read_all(fd, &len);
  close(fd);
  if (text == NULL) {
    snprintf(err, errlen, "cannot read %s: %s", tp.path, strerror(errno));
    goto fail;
  }
  pgs_twophase_replay_t replay;
  if (pgs_twophase_replay(text, len, &replay) != PGS_OK) {
    snprintf(err, errlen,
             "%s is not a pgshard 2PC decision log (its first line is not \"%s %d owner=...\")",
             tp.path, PGS_TWOPHASE_LOG_MAGIC, PGS_TWOPHASE_LOG_VERSION);
    rc = PGS_ECONFIG;
    goto fail;
  }
  free(text);
  text = NULL;
  if (replay.malformed)
    pgs_warn("2pc: %s: %d malformed line(s) skipped, the first on line %d", tp.path,
             replay.malformed, replay.first_bad_line);
  if (replay.torn_tail) pgs_warn("2pc: %s: a torn last line (a write cut short) skipped", tp.path);
  uint64_t owner = replay.has_header ? replay.owner : random_id();
  uint64_t size = 0;
  int nfd = rewrite_locked(owner, &replay.commits, false, &size, err, errlen);
  if (nfd < 0) {
    pgs_twophase_replay_free(&replay);
    goto fail;
  }
  tp.fd = nfd;
  tp.size = size;
  tp.owner = owner;
  tp.written = tp.synced_upto = 0;
  uint64_t now = pgs_now_ms();
  for (size_t i = 0; i < replay.commits.nbuckets; i++) {
    for (const pgs_strmap_entry_t *e = replay.commits.buckets[i]; e; e = e->next) {
      if (pgs_strmap_contains(&tp.index, e->key)) continue;
      entry_t *en = pgs_xcalloc(1, sizeof(*en));
      *en =
          (entry_t){.decision = PGS_2PC_COMMIT, .released = true, .logged = true, .since_ms = now};
      pgs_strmap_put(&tp.index, e->key, en);
    }
  }
  pgs_info("2pc: decision log %s%s (owner %016" PRIx64
           "): %zu commit(s) to finish; this "
           "process is instance %016" PRIx64,
           tp.path, replay.has_header ? "" : " created", owner, replay.commits.count, tp.instance);
  pgs_twophase_replay_free(&replay);
  tp.last_error[0] = '\0';
  return PGS_OK;

fail:
  /* A lock taken for a log that cannot be used is not kept. */
  free(text);
  if (locked_now) {
    close(tp.lock_fd);
    tp.lock_fd = -1;
  }
  return rc;
}

/* Open on demand (a worker's first 2PC commit); an error is logged once. */
static bool ensure_open_locked(void) {
  if (tp.fd >= 0) return true;
  if (tp.path == NULL) return false;
  char err[256];
  if (open_locked(true, err, sizeof(err)) == PGS_OK) return true;
  if (strcmp(err, tp.last_error) != 0) {
    pgs_error("2pc: %s: cross-shard commits are refused until it can be opened", err);
    snprintf(tp.last_error, sizeof(tp.last_error), "%s", err);
  }
  return false;
}

/* Make every "C" written so far durable; returns with tp.lock held. */
static void sync_commits_locked(uint64_t upto) {
  while (tp.synced_upto < upto) {
    if (tp.syncing) {
      uv_cond_wait(&tp.synced, &tp.lock);
      continue;
    }
    tp.syncing = true;
    uint64_t target = tp.written;
    int fd = tp.fd;
    uv_mutex_unlock(&tp.lock);
    int rc = fdatasync(fd);
    int err = errno;
    uv_mutex_lock(&tp.lock);
    tp.syncing = false;
    if (rc != 0) {
      /* Whether the record reached the disk is unknown now (Linux may drop
       * the dirty pages and report success next time). Going on could roll
       * back what a restart would commit; exiting lets recovery settle
       * every shard by what the disk says. */
      pgs_log(PGS_LOG_FATAL,
              "2pc: cannot sync %s: %s; exiting so that recovery settles the "
              "transactions by what is on disk",
              tp.path, strerror(err));
      _exit(EXIT_LOG_SYNC_FAILED);
    }
    if (target > tp.synced_upto) tp.synced_upto = target;
    uv_cond_broadcast(&tp.synced);
  }
}

/* Rewrite the log with only the undone commits (startup did this already;
 * this keeps a long-running log small). */
static void compact_locked(void) {
  while (tp.syncing) uv_cond_wait(&tp.synced, &tp.lock);
  char err[256];
  uint64_t size = 0;
  int fd = rewrite_locked(tp.owner, &tp.index, true, &size, err, sizeof(err));
  if (fd < 0) {
    pgs_warn("2pc: compacting the decision log: %s", err);
    return;
  }
  close(tp.fd);
  tp.fd = fd;
  uint64_t before = tp.size;
  tp.size = size;
  /* Everything decided so far is in the new, synced file. */
  tp.synced_upto = tp.written;
  uv_cond_broadcast(&tp.synced);
  pgs_info("2pc: decision log %s compacted from %" PRIu64 " to %" PRIu64 " bytes", tp.path, before,
           size);
}

static void entry_free(void *value) { free(value); }

/* Close GID: "D" if anything was recorded for it, and forget it. */
static void done_locked(const char *gid) {
  entry_t *e = pgs_strmap_remove(&tp.index, gid);
  if (e == NULL) return;
  if (e->logged) (void)append_locked('D', gid);
  if (e->own) tp.nown--;
  free(e);
}

/* ---- lifecycle ---- */

pgs_status_t pgs_twophase_start(const pgs_config_t *config) {
  if (!tp.initialized) {
    if (uv_mutex_init(&tp.lock) != 0 || uv_mutex_init(&tp.pass_lock) != 0 ||
        uv_cond_init(&tp.synced) != 0) {
      pgs_error("2pc: cannot create a mutex");
      return PGS_ENOMEM;
    }
    pgs_strmap_init(&tp.index);
    pgs_strmap_init(&tp.warned);
    tp.initialized = true;
  }
  const char *fault = getenv("PGSHARD_FAULT");
  if (fault && *fault) {
    snprintf(tp.fault, sizeof(tp.fault), "%s", fault);
    if (!strcmp(fault, "2pc_pause_after_decision"))
      pgs_warn("PGSHARD_FAULT=%s: a committing worker will pause there (a test-only setting)",
               fault);
    else if (strcmp(fault, "2pc_after_prepare") != 0 && strcmp(fault, "2pc_after_decision") != 0)
      pgs_warn("PGSHARD_FAULT=%s names no fault point", fault);
    else
      pgs_warn("PGSHARD_FAULT=%s: this pgshard will exit there (a test-only setting)", fault);
  }
  tp.instance = random_id();
  free(tp.path);
  tp.path = pgs_xstrdup(config->twophase_log);
  bool wanted = any_database_uses_2pc(config);
  char err[256];
  uv_mutex_lock(&tp.lock);
  pgs_status_t rc = open_locked(wanted, err, sizeof(err));
  uv_mutex_unlock(&tp.lock);
  if (rc == PGS_OK || rc == PGS_ENOTFOUND) return PGS_OK;
  if (wanted) {
    pgs_error("2pc: %s (cross_shard_writes = 2pc needs its decision log; see twophase_log)", err);
    return rc;
  }
  snprintf(tp.last_error, sizeof(tp.last_error), "%s", err);
  pgs_warn("2pc: %s; prepared transactions are not recovered", err);
  return PGS_OK;
}

void pgs_twophase_reload(const pgs_config_t *config) {
  if (!tp.initialized) return;
  if (strcmp(config->twophase_log, tp.path) != 0)
    pgs_warn("reload: twophase_log changes take effect after a restart (still %s)", tp.path);
  if (!any_database_uses_2pc(config)) return;
  uv_mutex_lock(&tp.lock);
  (void)ensure_open_locked();
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_stop(void) {
  if (!tp.initialized) return;
  uv_mutex_lock(&tp.lock);
  while (tp.syncing) uv_cond_wait(&tp.synced, &tp.lock);
  if (tp.fd >= 0) close(tp.fd);
  tp.fd = -1;
  if (tp.lock_fd >= 0) close(tp.lock_fd);
  tp.lock_fd = -1;
  pgs_strmap_free(&tp.index, entry_free);
  pgs_strmap_free(&tp.warned, NULL);
  tp.nown = 0;
  free(tp.path);
  tp.path = NULL;
  uv_mutex_unlock(&tp.lock);
}

bool pgs_twophase_active(void) {
  if (!tp.initialized) return false;
  uv_mutex_lock(&tp.lock);
  bool open = tp.fd >= 0;
  uv_mutex_unlock(&tp.lock);
  return open;
}

bool pgs_twophase_fault(const char *point) {
  if (tp.fault[0] == '\0' || strcmp(tp.fault, point) != 0) return false;
  pgs_log(PGS_LOG_FATAL, "PGSHARD_FAULT=%s: exiting now (test-only fault injection)", point);
  _exit(137);
}

void pgs_twophase_pause(const char *point) {
  if (tp.fault[0] == '\0' || strcmp(tp.fault, point) != 0) return;
  pgs_warn("PGSHARD_FAULT=%s: this worker sleeps 3 s (test-only fault injection)", point);
  uv_sleep(3000);
}

/* ---- decisions ---- */

pgs_status_t pgs_twophase_new_gid(char out[PGS_GID_BUF]) {
  PGS_ASSERT(tp.initialized);
  uv_mutex_lock(&tp.lock);
  if (!ensure_open_locked()) {
    uv_mutex_unlock(&tp.lock);
    return PGS_EIO;
  }
  if (tp.nown >= PGS_TWOPHASE_MAX_IN_FLIGHT) {
    uv_mutex_unlock(&tp.lock);
    pgs_warn("2pc: %d transactions unsettled; refusing another", PGS_TWOPHASE_MAX_IN_FLIGHT);
    return PGS_ETOOBIG;
  }
  pgs_gid_format(out, tp.owner, tp.instance, ++tp.next_seq);
  entry_t *e = pgs_xcalloc(1, sizeof(*e));
  *e = (entry_t){.decision = PGS_2PC_UNKNOWN, .own = true, .since_ms = pgs_now_ms()};
  pgs_strmap_put(&tp.index, out, e);
  tp.nown++;
  uv_mutex_unlock(&tp.lock);
  return PGS_OK;
}

pgs_status_t pgs_twophase_record_commit(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  pgs_status_t rc = PGS_OK;
  if (e == NULL || !e->own) {
    pgs_error("2pc: commit of %s refused: not a transaction of this process in flight", gid);
    rc = PGS_ENOTFOUND;
  } else if (e->decision != PGS_2PC_UNKNOWN) {
    pgs_warn("2pc: commit of %s refused: %s was decided already%s", gid,
             e->decision == PGS_2PC_ABORT ? "abort" : "commit",
             e->released ? " (by recovery: the transaction was in flight too long)" : "");
    rc = PGS_EINVAL;
  } else if (!append_locked('C', gid)) {
    rc = PGS_EIO;
  }
  if (rc != PGS_OK) {
    uv_mutex_unlock(&tp.lock);
    return rc;
  }
  e->decision = PGS_2PC_COMMIT;
  e->logged = true;
  e->since_ms = pgs_now_ms();
  sync_commits_locked(++tp.written);
  uv_mutex_unlock(&tp.lock);
  pgs_twophase_fault("2pc_after_decision");
  return PGS_OK;
}

void pgs_twophase_record_abort(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e == NULL) {
    pgs_debug("2pc: abort of %s: not in flight (settled already)", gid);
  } else if (e->decision == PGS_2PC_COMMIT) {
    pgs_error("2pc: abort of %s ignored: its commit is decided and final", gid);
  } else if (e->decision == PGS_2PC_UNKNOWN) {
    e->decision = PGS_2PC_ABORT;
    e->since_ms = pgs_now_ms();
    /* Not synced: without it the gid is presumed aborted all the same. */
    e->logged = append_locked('A', gid);
  }
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_record_done(const char *gid) {
  uv_mutex_lock(&tp.lock);
  done_locked(gid);
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_release(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL) {
    if (e->decision == PGS_2PC_UNKNOWN) {
      e->decision = PGS_2PC_ABORT;
      e->logged = append_locked('A', gid);
    }
    e->released = true;
    e->since_ms = pgs_now_ms();
  }
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_hold(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL) e->held++;
  uv_mutex_unlock(&tp.lock);
}

void pgs_twophase_unhold(const char *gid) {
  uv_mutex_lock(&tp.lock);
  entry_t *e = pgs_strmap_get(&tp.index, gid);
  if (e != NULL && e->held > 0) {
    e->held--;
    e->since_ms = pgs_now_ms();
  }
  uv_mutex_unlock(&tp.lock);
}

pgs_twophase_decision_t pgs_twophase_decision(const char *gid) {
  uv_mutex_lock(&tp.lock);
  const entry_t *e = pgs_strmap_get(&tp.index, gid);
  pgs_twophase_decision_t d = e ? e->decision : PGS_2PC_UNKNOWN;
  uv_mutex_unlock(&tp.lock);
  return d;
}

void pgs_twophase_each(pgs_twophase_each_fn fn, void *arg) {
  if (!tp.initialized) return;
  uint64_t now = pgs_now_ms();
  uv_mutex_lock(&tp.lock);
  for (size_t b = 0; b < tp.index.nbuckets; b++)
    for (const pgs_strmap_entry_t *e = tp.index.buckets[b]; e; e = e->next) {
      const entry_t *en = e->value;
      fn(e->key, en->decision, en->own, en->released, now > en->since_ms ? now - en->since_ms : 0,
         arg);
    }
  uv_mutex_unlock(&tp.lock);
}

bool pgs_twophase_is_own_instance(const char *gid) {
  pgs_gid_t g;
  if (!pgs_gid_parse(gid, &g)) return false;
  uv_mutex_lock(&tp.lock);
  bool own = tp.fd >= 0 && g.owner == tp.owner && g.instance == tp.instance;
  uv_mutex_unlock(&tp.lock);
  return own;
}

/* ---- recovery ---- */

/* An entry recovery keeps its hands off: one a worker still drives —
 * undecided, for PGS_TWOPHASE_IN_FLIGHT_MS (then recovery decides abort);
 * decided, until the worker is done or gives it up, for it is sending
 * COMMIT or ROLLBACK PREPARED and recovery would only race it — or one a
 * server still settles for a worker that gave it up (pgs_twophase_hold). */
static bool driven(const entry_t *e, uint64_t now) {
  if (!e->own) return false;
  bool recent = now - e->since_ms < PGS_TWOPHASE_IN_FLIGHT_MS;
  if (!e->released) return e->decision != PGS_2PC_UNKNOWN || recent;
  return e->held > 0 && recent;
}

/* What to do with GID, prepared on some shard; WHY says why, for the log.
 * An undecided gid of this process past PGS_TWOPHASE_IN_FLIGHT_MS is decided
 * abort here, under the lock, so its worker can no longer commit it. */
static action_t classify(const char *gid, uint64_t now, const char **why) {
  pgs_gid_t g;
  if (!pgs_gid_parse(gid, &g)) {
    *why = "not a gid pgshard makes";
    return ACT_FOREIGN;
  }
  uv_mutex_lock(&tp.lock);
  action_t act;
  if (tp.fd < 0 || g.owner != tp.owner) {
    *why = "made by a pgshard with another decision log";
    act = ACT_FOREIGN;
  } else {
    entry_t *e = pgs_strmap_get(&tp.index, gid);
    bool own = g.instance == tp.instance;
    if (e == NULL) {
      *why = own ? "no commit decided" : "no commit decided before a crash: presumed abort";
      act = ACT_ROLLBACK;
    } else if (driven(e, now)) {
      *why = "in flight";
      act = ACT_LEAVE;
    } else if (e->decision == PGS_2PC_COMMIT) {
      *why = e->own ? "its commit was interrupted" : "decided before a crash";
      act = ACT_COMMIT;
    } else if (e->decision == PGS_2PC_ABORT) {
      *why = "abort decided";
      act = ACT_ROLLBACK;
    } else {
      e->decision = PGS_2PC_ABORT;
      e->logged = append_locked('A', gid);
      *why = e->released ? "given up by its worker" : "undecided for too long: abort decided";
      act = ACT_ROLLBACK;
    }
    if (e != NULL && act != ACT_LEAVE) e->released = true;
  }
  uv_mutex_unlock(&tp.lock);
  return act;
}

static void ignore_notice(void *arg, const char *message) {
  PGS_UNUSED(arg);
  PGS_UNUSED(message);
}

/* libpq's message on one line, runs of blanks as one space. */
static const char *one_line(const char *msg, char *out, size_t cap) {
  size_t n = 0;
  bool space = false;
  for (const char *p = msg; *p && n + 1 < cap; p++) {
    bool blank = *p == '\n' || *p == '\t' || *p == ' ';
    if (blank && (space || n == 0)) continue;
    out[n++] = blank ? ' ' : *p;
    space = blank;
  }
  while (n > 0 && out[n - 1] == ' ') n--;
  out[n] = '\0';
  return out;
}

static bool exec_ok(PGconn *pg, const char *sql, ExecStatusType want, PGresult **out) {
  PGresult *res = PQexec(pg, sql);
  bool ok = res && PQresultStatus(res) == want;
  if (out)
    *out = res;
  else
    PQclear(res);
  return ok;
}

/* The monitor's login: the first [user.*] with a plain-text password (only
 * those can log in to a server). */
static const pgs_user_t *monitor_user(const pgs_config_t *config) {
  for (int i = 0; i < config->nusers; i++)
    if (config->users[i].password && config->users[i].scram_secret) return &config->users[i];
  return NULL;
}

/* The login a pass lists prepared transactions with. */
static const pgs_user_t *listing_user(const pgs_config_t *config) {
  const pgs_user_t *user = NULL;
  if (config->twophase_recovery_user)
    user = pgs_config_find_user(config, config->twophase_recovery_user);
  return user ? user : monitor_user(config);
}

/* True the first time KEY is warned about. The set is emptied when it grows
 * past WARNED_MAX, so a warning can come back, at most that rarely. */
static bool first_warning(const char *key) {
  uv_mutex_lock(&tp.lock);
  bool first = !pgs_strmap_contains(&tp.warned, key);
  if (first) {
    if (tp.warned.count >= WARNED_MAX) {
      pgs_strmap_free(&tp.warned, NULL);
      pgs_strmap_init(&tp.warned);
    }
    pgs_strmap_put(&tp.warned, key, NULL);
  }
  uv_mutex_unlock(&tp.lock);
  return first;
}

/* Log in to NODE of DB as a pool would log USER in, with recovery's
 * connect_timeout and statement_timeout. NULL, with libpq's reason in ERR,
 * when that fails. */
static PGconn *recovery_connect(const pgs_config_t *config, const pgs_database_t *db,
                                const pgs_node_t *node, const pgs_user_t *user, char *err,
                                size_t errlen) {
  char *base =
      pgs_node_conninfo(config, db, node, user, "application_name", "pgshard 2pc recovery");
  size_t cilen = strlen(base) + 32;
  char *ci = pgs_xmalloc(cilen);
  /* libpq takes the last of a repeated key. */
  snprintf(ci, cilen, "%s connect_timeout=%d", base, PGS_TWOPHASE_CONNECT_TIMEOUT_S);
  /* Both may hold a password. */
  explicit_bzero(base, strlen(base));
  free(base);
  PGconn *pg = PQconnectdb(ci);
  explicit_bzero(ci, cilen);
  free(ci);
  char set[64];
  snprintf(set, sizeof(set), "SET statement_timeout = %d", PGS_TWOPHASE_STATEMENT_TIMEOUT_MS);
  if (pg == NULL || PQstatus(pg) != CONNECTION_OK || !exec_ok(pg, set, PGRES_COMMAND_OK, NULL)) {
    one_line(pg ? PQerrorMessage(pg) : "out of memory", err, errlen);
    if (pg) PQfinish(pg);
    return NULL;
  }
  PQsetNoticeProcessor(pg, ignore_notice, NULL);
  return pg;
}

/* A login of one pass on one shard as the owner of some prepared gids:
 * opened at the first such gid, kept for the others. */
typedef struct owner_login {
  PGconn *pg;    /* NULL: recovery cannot log in as the owner, */
  char why[384]; /* for this reason */
} owner_login_t;

static void owner_login_free(void *value) {
  owner_login_t *o = value;
  if (o->pg) PQfinish(o->pg);
  free(o);
}

/* A connection to T's writer logged in as OWNER (a [user.*] of that name,
 * as pools log it in), from LOGINS or opened now; NULL with WHY set when
 * there can be none. */
static PGconn *owner_connect(const pgs_twophase_target_t *t, const char *owner,
                             pgs_strmap_t *logins, const char **why) {
  owner_login_t *o = pgs_strmap_get(logins, owner);
  if (o == NULL) {
    o = pgs_xcalloc(1, sizeof(*o));
    const pgs_user_t *user = pgs_config_find_user(t->config, owner);
    if (user == NULL) {
      snprintf(o->why, sizeof(o->why), "no [user.%s] to log in as%s", owner,
               t->config->twophase_recovery_user ? " and twophase_recovery_user is not a superuser"
                                                 : " and no twophase_recovery_user is set");
    } else if (t->node->user && strcmp(t->node->user, owner) != 0) {
      snprintf(o->why, sizeof(o->why), "the node's conninfo logs in as %s, not as %s",
               t->node->user, owner);
    } else {
      char err[256];
      o->pg = recovery_connect(t->config, t->database, t->node, user, err, sizeof(err));
      if (o->pg == NULL) snprintf(o->why, sizeof(o->why), "cannot log in as %s: %s", owner, err);
    }
    pgs_strmap_put(logins, owner, o);
  }
  *why = o->why;
  return o->pg;
}

/* Settle this log's prepared gids on one shard. Each is finished by its
 * owner (pg_prepared_xacts.owner) or a superuser, as PostgreSQL demands:
 * through the listing login when it is one of them, else logged in as the
 * owner. Gids left prepared (in flight, a statement failed, the owner out of
 * reach) go into LEFT. *LISTED: every prepared gid of the shard was looked
 * at, so one not in LEFT is prepared there no more. False when the shard
 * could not be settled fully. */
static bool settle_target(const pgs_twophase_target_t *t, bool startup, pgs_strmap_t *left,
                          bool *listed) {
  pgs_log_level_t quiet = startup ? PGS_LOG_WARNING : PGS_LOG_DEBUG;
  char msg[512];
  *listed = false;
  if (t->node == NULL) {
    if (pgs_log_enabled(quiet))
      pgs_log(quiet, "2pc: %s.%s has no writer now: its prepared transactions wait", t->db,
              t->shard);
    return false;
  }
  bool ok = true;
  PGresult *res = NULL;
  char *me = NULL;
  pgs_strmap_t owners;
  pgs_strmap_init(&owners);
  PGconn *pg =
      recovery_connect(t->config, t->database, t->node, listing_user(t->config), msg, sizeof(msg));
  if (pg == NULL) {
    if (pgs_log_enabled(quiet))
      pgs_log(quiet,
              "2pc: cannot reach %s.%s to settle prepared transactions (%s); trying again "
              "later",
              t->db, t->shard, msg);
    ok = false;
    goto out;
  }
  if (!exec_ok(pg, SESSION_SQL, PGRES_TUPLES_OK, &res) || PQntuples(res) != 1) {
    pgs_warn("2pc: %s.%s: %s", t->db, t->shard, one_line(PQerrorMessage(pg), msg, sizeof(msg)));
    ok = false;
    goto out;
  }
  bool in_recovery = PQgetvalue(res, 0, 0)[0] == 't';
  me = pgs_xstrdup(PQgetvalue(res, 0, 1));
  bool superuser = !strcmp(PQgetvalue(res, 0, 2), "on");
  PQclear(res);
  res = NULL;
  if (in_recovery) {
    if (pgs_log_enabled(quiet))
      pgs_log(quiet, "2pc: %s.%s: its writer is in recovery; prepared transactions wait", t->db,
              t->shard);
    ok = false;
    goto out;
  }
  if (t->config->twophase_recovery_user && !superuser) {
    snprintf(msg, sizeof(msg), "not superuser %s %s.%s", me, t->db, t->shard);
    if (first_warning(msg))
      pgs_warn(
          "2pc: twophase_recovery_user = %s logs in to %s.%s as %s, which is not a "
          "superuser there: other users' prepared transactions are settled as their owners",
          t->config->twophase_recovery_user, t->db, t->shard, me);
  }
  if (!exec_ok(pg, LIST_SQL, PGRES_TUPLES_OK, &res)) {
    pgs_warn("2pc: %s.%s: listing prepared transactions: %s", t->db, t->shard,
             one_line(PQerrorMessage(pg), msg, sizeof(msg)));
    ok = false;
    goto out;
  }
  uint64_t now = pgs_now_ms();
  int i;
  for (i = 0; i < PQntuples(res); i++) {
    const char *gid = PQgetvalue(res, i, 0);
    const char *owner = PQgetvalue(res, i, 1);
    const char *why = "";
    action_t act = classify(gid, now, &why);
    if (act == ACT_FOREIGN) {
      if (pgs_log_enabled(quiet))
        pgs_log(quiet, "2pc: %s on %s.%s left alone: %s", gid, t->db, t->shard, why);
      continue;
    }
    if (act == ACT_LEAVE) {
      pgs_strmap_put(left, gid, NULL);
      continue;
    }
    PGconn *conn = pg;
    if (!superuser && strcmp(owner, me) != 0) {
      const char *reason = "";
      conn = owner_connect(t, owner, &owners, &reason);
      if (conn == NULL) {
        snprintf(msg, sizeof(msg), "%s %s.%s", gid, t->db, t->shard);
        if (first_warning(msg))
          pgs_warn("2pc: cannot settle %s on %s.%s, prepared by %s: %s; it stays prepared", gid,
                   t->db, t->shard, owner, reason);
        pgs_strmap_put(left, gid, NULL);
        ok = false;
        continue;
      }
    }
    /* pgs_gid_parse admitted only [a-z0-9_]: no quoting needed. */
    char sql[PGS_GID_MAX + 32];
    bool commit = act == ACT_COMMIT;
    snprintf(sql, sizeof(sql), "%s PREPARED '%s'", commit ? "COMMIT" : "ROLLBACK", gid);
    PGresult *r = PQexec(conn, sql);
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
      pgs_info("2pc: %s %s on %s.%s (%s)", commit ? "committed" : "rolled back", gid, t->db,
               t->shard, why);
    } else if (state && !strcmp(state, "42704")) {
      pgs_debug("2pc: %s on %s.%s was settled meanwhile", gid, t->db, t->shard);
    } else {
      pgs_warn("2pc: %s PREPARED %s on %s.%s (prepared by %s) failed: %s; trying again later",
               commit ? "COMMIT" : "ROLLBACK", gid, t->db, t->shard, owner,
               one_line(r ? PQresultErrorMessage(r) : PQerrorMessage(conn), msg, sizeof(msg)));
      pgs_strmap_put(left, gid, NULL);
      ok = false;
    }
    PQclear(r);
    /* An owner's login lost fails that owner's next gids only; the
     * listing login lost leaves the rest of the list unseen. */
    if (PQstatus(pg) != CONNECTION_OK) {
      ok = false;
      break;
    }
  }
  *listed = i == PQntuples(res);

out:
  PQclear(res);
  pgs_strmap_free(&owners, owner_login_free);
  free(me);
  if (pg) PQfinish(pg);
  return ok;
}

int pgs_twophase_recover(const pgs_twophase_target_t *targets, int ntargets, bool startup) {
  if (!pgs_twophase_active()) return 0;
  uv_mutex_lock(&tp.pass_lock);
  /* Decided gids no worker drives, as the pass starts: once every shard
   * has been listed and none holds one of them any more, it is done. */
  pgs_strmap_t candidates, left;
  pgs_strmap_init(&candidates);
  pgs_strmap_init(&left);
  uint64_t now = pgs_now_ms();
  uv_mutex_lock(&tp.lock);
  for (size_t i = 0; i < tp.index.nbuckets; i++)
    for (const pgs_strmap_entry_t *e = tp.index.buckets[i]; e; e = e->next) {
      const entry_t *en = e->value;
      if (en->decision != PGS_2PC_UNKNOWN && !driven(en, now))
        pgs_strmap_put(&candidates, e->key, NULL);
    }
  uv_mutex_unlock(&tp.lock);

  int unsettled = 0, unlisted = 0;
  for (int i = 0; i < ntargets; i++) {
    bool listed = false;
    if (!settle_target(&targets[i], startup, &left, &listed)) unsettled++;
    if (!listed) unlisted++;
  }

  uv_mutex_lock(&tp.lock);
  if (unlisted == 0) {
    for (size_t i = 0; i < candidates.nbuckets; i++)
      for (const pgs_strmap_entry_t *e = candidates.buckets[i]; e; e = e->next) {
        const entry_t *en = pgs_strmap_get(&tp.index, e->key);
        if (en == NULL || pgs_strmap_contains(&left, e->key) || driven(en, pgs_now_ms())) continue;
        pgs_debug("2pc: %s is settled on every shard", e->key);
        done_locked(e->key);
      }
  }
  if (tp.fd >= 0 && tp.size > PGS_TWOPHASE_COMPACT_BYTES) compact_locked();
  uv_mutex_unlock(&tp.lock);
  pgs_strmap_free(&candidates, NULL);
  pgs_strmap_free(&left, NULL);
  uv_mutex_unlock(&tp.pass_lock);
  return unsettled;
}

void pgs_twophase_targets_free(pgs_twophase_target_t *targets, int ntargets) {
  for (int i = 0; i < ntargets; i++) {
    free(targets[i].db);
    free(targets[i].shard);
    pgs_config_unref(targets[i].config);
  }
  free(targets);
}

int pgs_twophase_recover_config(pgs_config_t *config) {
  if (!pgs_twophase_active()) return 0;
  int n = 0;
  for (int d = 0; d < config->ndatabases; d++) n += config->databases[d].nshards;
  pgs_twophase_target_t *targets = pgs_xcalloc((size_t)(n ? n : 1), sizeof(*targets));
  int k = 0;
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++, k++) {
      targets[k].db = pgs_xstrdup(db->name);
      targets[k].shard = pgs_xstrdup(db->shards[s].name);
      targets[k].config = pgs_config_ref(config);
      targets[k].database = db;
      if (db->shards[s].has_primary) targets[k].node = &db->shards[s].primary;
    }
  }
  int unsettled = pgs_twophase_recover(targets, n, true);
  if (unsettled)
    pgs_warn("2pc: %d shard(s) not settled at startup; the monitor tries again every %d ms",
             unsettled, PGS_TWOPHASE_PASS_MS);
  pgs_twophase_targets_free(targets, n);
  return unsettled;
}

pgs_status_t pgs_twophase_check_recovery_user(const pgs_config_t *config) {
  if (config->twophase_recovery_user == NULL) return PGS_OK;
  const pgs_user_t *user = pgs_config_find_user(config, config->twophase_recovery_user);
  PGS_ASSERT(user != NULL); /* the config checked it */
  pgs_status_t rc = PGS_OK;
  char msg[512];
  for (int d = 0; d < config->ndatabases; d++) {
    const pgs_database_t *db = &config->databases[d];
    for (int s = 0; s < db->nshards; s++) {
      const pgs_shard_t *shard = &db->shards[s];
      if (!shard->has_primary) continue;
      PGconn *pg = recovery_connect(config, db, &shard->primary, user, msg, sizeof(msg));
      PGresult *res = NULL;
      if (pg == NULL || !exec_ok(pg, SESSION_SQL, PGRES_TUPLES_OK, &res) || PQntuples(res) != 1) {
        pgs_warn(
            "2pc: cannot check that twophase_recovery_user = %s is a superuser on %s.%s: "
            "%s",
            user->name, db->name, shard->name,
            pg ? one_line(PQerrorMessage(pg), msg, sizeof(msg)) : msg);
      } else if (strcmp(PQgetvalue(res, 0, 2), "on") != 0) {
        pgs_error(
            "2pc: twophase_recovery_user = %s logs in to %s.%s as %s, which is not a "
            "superuser there (finishing other users' prepared transactions needs one)",
            user->name, db->name, shard->name, PQgetvalue(res, 0, 1));
        rc = PGS_ECONFIG;
      }
      PQclear(res);
      if (pg) PQfinish(pg);
    }
  }
  return rc;
}
