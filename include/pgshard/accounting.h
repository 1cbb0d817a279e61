/*
 * accounting.h — what a client is charged (memory budgets) and counted
 * (errors by SQLSTATE class): accounting.c.
 */
#ifndef PGSHARD_ACCOUNTING_H
#define PGSHARD_ACCOUNTING_H

#include "pgshard/proxy.h"

/* An ErrorResponse (BODY) went to the client: its SQLSTATE class counted. */
void pgs_account_error(pgs_client_t *client, const uint8_t *body, size_t len);
/* Memory held for a client (statements, portals, merge rows): N bytes more
 * or fewer, in its count and the process's. */
void pgs_account_mem_add(pgs_client_t *client, size_t n);
void pgs_account_mem_sub(pgs_client_t *client, size_t n);
/* NULL when N more bytes fit the client's budget (its unsent output
 * counted) and the process's; else the config key that refuses them. */
const char *pgs_account_mem_refuses(const pgs_client_t *client, size_t n);

/* An error with SQLSTATE went to the client: counted by class, and the
 * first of its request remembered for the request's log line. */
void pgs_account_sqlstate(pgs_client_t *client, const char *sqlstate);
/* WORKER's counters for database DB (made on first use; kept until the
 * worker ends: clients keep pointers). */
struct pgs_db_stats *pgs_account_db_stats(pgs_worker_t *worker, const char *db);

#endif
