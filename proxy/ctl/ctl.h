/*
 * ctl.h — pgshardctl's command entry points, dispatched from pgshardctl.c.
 * Each takes the arguments after its own name and returns the process exit
 * status: 0 success, 1 failure (already reported on stderr), 2 usage error.
 */
#ifndef PGSHARD_CTL_H
#define PGSHARD_CTL_H

/* `pgshardctl lab up|status|down|lag ...` (lab.c). */
int pgs_ctl_lab(int argc, char **argv);

#endif
