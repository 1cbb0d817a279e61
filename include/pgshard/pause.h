/*
 * pause.h — PAUSE and RESUME of databases (pause.c).
 */
#ifndef PGSHARD_PAUSE_H
#define PGSHARD_PAUSE_H

#include "pgshard/common.h"

/* Admin PAUSE / RESUME of database DB (NULL: every database): a client of
 * a paused database waits before its next transaction. False when too many
 * databases are paused already. */
bool pgs_pause_set(const char *db, bool paused);
/* Whether DB is paused: cheap when nothing is. */
bool pgs_paused(const char *db);
/* What RESUME calls (after the table changed): the workers wake their
 * waiting clients. */
void pgs_pause_on_resume(void (*fn)(void));

#endif
