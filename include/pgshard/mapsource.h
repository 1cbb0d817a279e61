/*
 * mapsource.h — the shard map kept in PostgreSQL ([pgshard] map_source =
 * CONNINFO; sql/map_source.sql): a thread of its own keeps one libpq
 * connection there, LISTENs on channel pgshard_map, reads the latest
 * version of the map when notified (and after every connect, since a
 * notification may have been missed while it was away), validates it with
 * the file's [pgshard] section, and asks main.c for a reload (SIGHUP: the
 * one reload path) when it holds a version the workers do not serve yet.
 * About once a second it upserts this instance's row in pgshard.instance
 * with the version the workers serve.
 *
 * Fail closed: a version that does not validate is refused (logged,
 * counted) and the held one kept; while the source is unreachable the
 * held version keeps serving (SHOW CONFIG says since when). Before any
 * version was read (none in the table, or the source down at startup) the
 * file's own map sections serve, as version 0.
 */
#ifndef PGSHARD_MAPSOURCE_H
#define PGSHARD_MAPSOURCE_H

#include "pgshard/config.h"

#define PGS_MAP_CHANNEL "pgshard_map"

/* Start the thread for CONFIG's map_source (CONFIG read from PATH), after
 * the signals are blocked: it sends SIGHUP to the process. Waits up to
 * about WAIT_MS for its first attempt to read the latest version, so a
 * pgshard whose source is up starts on that version. Returns 0, or -1 when
 * the thread cannot be created. */
int pgs_mapsource_start(const pgs_config_t *config, const char *path, int wait_ms) PGS_MUST_USE;
/* Stop the thread (promptly: it polls with a timeout). */
void pgs_mapsource_stop(void);
/* The version held (the latest that validated) and its text (malloc'ed,
 * the caller frees it): false when none is (no map_source, or none read). */
bool pgs_mapsource_held(char **body, int64_t *version);
/* The config of the version held, built when it was read, while the
 * config file is the same file, unchanged since (a reference the caller
 * drops); NULL otherwise: build it from pgs_mapsource_held. */
pgs_config_t *pgs_mapsource_config(void);
/* The workers now serve VERSION (0: the file's map); it reaches this
 * instance's heartbeat row at once. Also makes the thread read the latest
 * version again (SIGHUP re-reads the source). */
void pgs_mapsource_served(int64_t version);

typedef struct pgs_mapsource_state {
  bool running;       /* map_source is set and its thread runs */
  bool connected;     /* listening now */
  double since;       /* wall-clock seconds: connected, or unreachable, since */
  char error[256];    /* why it is unreachable ("" when connected) */
  int64_t held;       /* version held (0: none) */
  int64_t served;     /* version every worker serves (0: the file's map) */
  int64_t refused;    /* the latest version refused (0: none) */
  uint64_t nrefused;  /* versions refused since start */
  char instance[128]; /* this instance's id in pgshard.instance */
} pgs_mapsource_state_t;
void pgs_mapsource_state(pgs_mapsource_state_t *out);

/* CONNINFO without its password, for display. malloc'ed. */
char *pgs_mapsource_conninfo_display(const char *conninfo);

#endif
