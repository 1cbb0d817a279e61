/*
 * accounting.c — what a client is charged and counted: the memory held for
 * it (statements, portals, merged rows) against max_client_memory and, for
 * every client together, max_total_client_memory; and the errors it is
 * sent, by SQLSTATE class, in its database's statistics. A leaf: it calls
 * nothing else of the proxy.
 */
#include <stdio.h>
#include <string.h>

#include "pgshard/accounting.h"
#include "pgshard/stats.h"

/* Bytes held for every client of the process (atomic: workers share it). */
static size_t total_held;

void pgs_account_mem_add(pgs_client_t *client, size_t n) {
  client->mem_held += n;
  __atomic_add_fetch(&total_held, n, __ATOMIC_RELAXED);
}

void pgs_account_mem_sub(pgs_client_t *client, size_t n) {
  PGS_ASSERT(client->mem_held >= n);
  client->mem_held -= n;
  __atomic_sub_fetch(&total_held, n, __ATOMIC_RELAXED);
}

const char *pgs_account_mem_refuses(const pgs_client_t *client, size_t n) {
  const pgs_config_t *config = client->config;
  if (client->mem_held + pgs_io_backlog(&client->io) + n > (size_t)config->max_client_memory)
    return "max_client_memory";
  if (__atomic_load_n(&total_held, __ATOMIC_RELAXED) + n > (size_t)config->max_total_client_memory)
    return "max_total_client_memory";
  return NULL;
}

void pgs_account_sqlstate(pgs_client_t *client, const char *sqlstate) {
  /* The request's first error is the one its log line names. */
  if (sqlstate && client->request_sqlstate[0] == '\0')
    snprintf(client->request_sqlstate, sizeof(client->request_sqlstate), "%.5s", sqlstate);
  if (client->stats) pgs_db_stats_error(client->stats, sqlstate);
}

void pgs_account_error(pgs_client_t *client, const uint8_t *body, size_t len) {
  /* The SQLSTATE field ('C') of the ErrorResponse BODY. */
  const char *sqlstate = NULL;
  for (size_t at = 0; at + 1 < len && body[at];) {
    const char *value = (const char *)body + at + 1;
    size_t vlen = strnlen(value, len - at - 1);
    if (body[at] == 'C') sqlstate = value;
    at += 1 + vlen + 1;
  }
  pgs_account_sqlstate(client, sqlstate);
}

pgs_db_stats_t *pgs_account_db_stats(pgs_worker_t *worker, const char *db) {
  for (int i = 0; i < worker->nstats; i++)
    if (!strcmp(worker->stats[i]->db, db)) return worker->stats[i];
  worker->stats =
      pgs_xrealloc(worker->stats, (size_t)(worker->nstats + 1) * sizeof(*worker->stats));
  pgs_db_stats_t *st = pgs_xcalloc(1, sizeof(*st));
  snprintf(st->db, sizeof(st->db), "%s", db);
  worker->stats[worker->nstats++] = st;
  return st;
}
