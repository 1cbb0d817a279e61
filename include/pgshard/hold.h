/*
 * hold.h — the resharding cutover's hold (hold.c): RESHARD HOLD '<new
 * config>' and RESHARD RELEASE in the admin console.
 *
 * While a hold is active, a statement of a client of a held database (one
 * whose map differs between the running config and the new one) that
 * would run on other shards (by name) under the new map waits, unplanned,
 * until the hold ends: RESHARD RELEASE, or its timeout. Statements that run
 * on the same shards under both maps go on. A transaction open when the
 * hold began is not held (the console answers HOLD once every such
 * transaction has ended); one that began under the hold is, and its held
 * statement fails with 40001 when the config it runs on is no longer the
 * workers' once released.
 *
 * A hold is identified by its generation, new with every hold (a HOLD
 * while one is active keeps it: the transactions begun under the first are
 * held by the second too). Workers read the generation with one atomic
 * load; 0 means none.
 */
#ifndef PGSHARD_HOLD_H
#define PGSHARD_HOLD_H

#include "pgshard/config.h"

#define PGS_HOLD_TIMEOUT_MS 30000 /* RESHARD HOLD without a timeout */

/* Hold under NEXT (a config without errors; the hold takes a reference),
 * loaded from PATH, for TIMEOUT_MS at most; RUNNING is the config the
 * workers run: its databases whose map differs from NEXT's are held.
 * Replaces the active hold, if any, keeping its generation. Returns the
 * generation and, in *NHELD, how many databases are held. */
uint64_t pgs_hold_begin(pgs_config_t *next, const pgs_config_t *running, const char *path,
                        int64_t timeout_ms, int *nheld);
/* End the active hold (WHY, for the log: "RESHARD RELEASE", "timeout");
 * the workers wake the clients it held (pgs_hold_on_release). False when
 * none was active. */
bool pgs_hold_end(const char *why);
/* The active hold's generation, 0 when none: the fast path. */
uint64_t pgs_hold_gen(void);
/* While hold GEN is active, the new config's database DB when DB is held
 * by it, else NULL. Worker threads only: each keeps a reference to the hold
 * it saw last, so the pointer stays valid on that thread until its next
 * call (or pgs_hold_thread_done). */
const pgs_database_t *pgs_hold_database(uint64_t gen, const char *db);
/* A worker ticks (NOW_MS, monotonic): a hold past its timeout ends, with a
 * warning in the log. */
void pgs_hold_tick(uint64_t now_ms);
/* What pgs_hold_end calls once the hold is gone: every worker wakes its
 * held clients (worker.c registers it). */
void pgs_hold_on_release(void (*fn)(void));
/* A worker thread ends: the hold it kept a reference to is let go. */
void pgs_hold_thread_done(void);

/* The active hold, for SHOW RESHARD. */
typedef struct pgs_hold_info {
  uint64_t gen;
  char path[1024];
  double since;              /* wall clock, seconds since the epoch */
  uint64_t since_ms;         /* monotonic */
  uint64_t deadline_ms;      /* monotonic: it ends by itself then */
  char (*dbs)[PGS_MAX_NAME]; /* the databases held (malloc'ed) */
  int ndbs;
} pgs_hold_info_t;
/* A copy of the active hold into OUT (free out->dbs); false when none. */
bool pgs_hold_info(pgs_hold_info_t *out);

/* Reloads asked from the console (RELOAD sends SIGHUP, main.c reloads on
 * its signal thread): RESHARD RELEASE waits until those asked before it
 * have reached the workers' mailboxes, so the clients it wakes run on the
 * reloaded config. pgs_hold_reload_ask before the signal; main.c reads
 * pgs_hold_reloads_asked before a reload and reports it done after. */
void pgs_hold_reload_ask(void);
uint64_t pgs_hold_reloads_asked(void);
void pgs_hold_reloads_done(uint64_t asked);
bool pgs_hold_reloads_pending(void);

#endif
