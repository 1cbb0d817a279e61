/*
 * ctl.h — pgshardctl's command entry points, dispatched from pgshardctl.c.
 * Each takes the arguments after its own name and returns the process exit
 * status: 0 success, 1 failure (already reported on stderr), 2 usage error.
 */
#ifndef PGSHARD_CTL_H
#define PGSHARD_CTL_H

#include "pgshard/config.h"

/* `pgshardctl lab up|status|down|lag ...` (lab.c). */
int pgs_ctl_lab(int argc, char **argv);

/* `pgshardctl route [-v] [--stdin] FILE DB TABLE [KEY]` (route.c). */
int pgs_ctl_route(int argc, char **argv);

/* `pgshardctl diff [--exit-code] OLD NEW` (diff.c). Differs from the rule
 * above like diff(1): 0 the report was printed (whether or not keys move;
 * with --exit-code, 1 when some do), 2 a config is unreadable or invalid,
 * or usage. */
int pgs_ctl_diff(int argc, char **argv);

/* `pgshardctl map push|show|status|wait ...` (map.c). */
int pgs_ctl_map(int argc, char **argv);
/* Validate MAP_TEXT (a config's map sections; LABEL names it in errors)
 * with CONFIG_PATH's [pgshard] section (NULL: defaults), then insert it as
 * the next version at CONNINFO and NOTIFY, in one transaction: VERSION is
 * the new version, COMMITTED_AT (wall-clock seconds) when the commit
 * returned. When the latest version holds the same text, nothing is
 * inserted: VERSION is that one, COMMITTED_AT 0. 0 or 1 (reported). */
int pgs_ctl_map_push_text(const char *conninfo, const char *config_path, const char *map_text,
                          const char *label, const char *note, int64_t *version,
                          double *committed_at);
/* The same for FILE's map sections (read from FILE, which may hold a
 * [pgshard] section: it is left out). */
int pgs_ctl_map_push_file(const char *conninfo, const char *config_path, const char *file,
                          const char *note, int64_t *version, double *committed_at);
/* An instance is live while its heartbeat is at most this many seconds old. */
#define PGS_CTL_MAP_LIVE_SECONDS 3
/* The listen addresses ("host:port", malloc'ed, in *LISTENS, malloc'ed)
 * of the instances reporting to CONNINFO seen within LIVE_SECONDS; their
 * count, or -1 (reported). */
int pgs_ctl_map_live_instances(const char *conninfo, int live_seconds, char ***listens);
/* Wait until every live instance reporting to CONNINFO (heartbeat at most
 * LIVE_SECONDS old) serves VERSION or later, TIMEOUT_MS at most. 0 or 1. */
int pgs_ctl_map_wait(const char *conninfo, int64_t version, int timeout_ms, int live_seconds);

/* `pgshardctl reshard VERB OLD NEW ...` (reshard.c). */
int pgs_ctl_reshard(int argc, char **argv);

/* The shard owning keys from LOW (NULL: -infinity) upward in range table T
 * of DB, or -1 (diff.c). */
int pgs_ctl_range_owner(const pgs_database_t *db, const pgs_table_t *t, const pgs_key_t *low);
/* The bounds of range tables A and B together, sorted, each once (N of
 * them): every bound of either map cuts the key space into segments that
 * each maps to one shard. Caller frees the array (diff.c). */
const pgs_key_t **pgs_ctl_range_bounds(const pgs_table_t *a, const pgs_table_t *b, int *n);
/* The shard VALUE (as written in a config) routes to in DB as a tenant or
 * geo value (STRATEGY), with D's region set for geo; -1 when refused or not
 * of DB's type (diff.c). */
int pgs_ctl_probe_route(const pgs_database_t *db, pgs_strategy_t strategy, const char *value,
                        pgs_route_detail_t *d);
/* Undo COPY text format's backslash escapes of one field in place (LEN
 * updated) (reshard_copy.c). */
void pgs_ctl_copy_unescape(char *text, size_t *len);

/* `pgshardctl reshard slots OLD NEW [DB]` (slots.c): prints the [slots.DB]
 * section for NEW rebalanced from OLD's slot table. Takes the arguments
 * after "slots"; 0 printed, 2 usage or an invalid config. */
int pgs_ctl_reshard_slots(int argc, char **argv);

/* Loads FILE; prints every error with its line on stderr and returns NULL
 * when it has any (route.c). */
struct pgs_config *pgs_ctl_load_config(const char *path);

#endif
