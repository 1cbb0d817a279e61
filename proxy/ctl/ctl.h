/*
 * ctl.h — pgshardctl's command entry points, dispatched from pgshardctl.c.
 * Each takes the arguments after its own name and returns the process exit
 * status: 0 success, 1 failure (already reported on stderr), 2 usage error.
 */
#ifndef PGSHARD_CTL_H
#define PGSHARD_CTL_H

/* `pgshardctl lab up|status|down|lag ...` (lab.c). */
int pgs_ctl_lab(int argc, char **argv);

/* `pgshardctl route [-v] [--stdin] FILE DB TABLE [KEY]` (route.c). */
int pgs_ctl_route(int argc, char **argv);

/* `pgshardctl diff [--exit-code] OLD NEW` (diff.c). Differs from the rule
 * above like diff(1): 0 the report was printed (whether or not keys move;
 * with --exit-code, 1 when some do), 2 a config is unreadable or invalid,
 * or usage. */
int pgs_ctl_diff(int argc, char **argv);

/* `pgshardctl reshard slots OLD NEW [DB]` (slots.c): prints the [slots.DB]
 * section for NEW rebalanced from OLD's slot table. Takes the arguments
 * after "slots"; 0 printed, 2 usage or an invalid config. */
int pgs_ctl_reshard_slots(int argc, char **argv);

struct pgs_config;
/* Loads FILE; prints every error with its line on stderr and returns NULL
 * when it has any (route.c). */
struct pgs_config *pgs_ctl_load_config(const char *path);

#endif
