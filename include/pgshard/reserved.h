/*
 * reserved.h — statement names pgshard keeps for itself.
 *
 * pgshard prepares clients' protocol-level statements on shared servers
 * under names derived from their text ("pgs_" and 16 hex digits). In
 * PostgreSQL those live in the same namespace as SQL PREPARE, so a client
 * writing EXECUTE pgs_... could run a statement another client prepared —
 * skipping routing, tenant checks and the write policy — and DEALLOCATE
 * pgs_... could drop it. Such names are refused in SQL. Pure: no I/O.
 */
#ifndef PGSHARD_RESERVED_H
#define PGSHARD_RESERVED_H

#include "pgshard/common.h"

#define PGS_RESERVED_PREFIX "pgs_"

/* Whether SQL (LEN bytes, NUL-terminated) names a prepared statement with
 * the reserved prefix in PREPARE, EXECUTE or DEALLOCATE; then its name is
 * copied to NAME (CAP bytes) and *PREPARES says whether it is a PREPARE.
 * A quick look rules out almost every statement before any parse. */
bool pgs_reserved_statement(const char *sql, size_t len, char *name, size_t cap, bool *prepares);

#endif
