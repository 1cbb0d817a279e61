/*
 * stats.h — what pgshard counts about the requests it serves, per database:
 * counters and a latency histogram that workers fill without locks (each
 * worker its own) and the admin console and /metrics merge on demand.
 *
 * The histogram keeps every latency in microseconds in one of
 * PGS_HIST_BUCKETS buckets: exact below 16 µs, then 8 buckets per power of
 * two, so a percentile read from it is within 1/16 (6.25%) of the true
 * value; it is 4 KiB per database per worker, and merging is adding.
 */
#ifndef PGSHARD_STATS_H
#define PGSHARD_STATS_H

#include "pgshard/common.h"

#define PGS_HIST_BUCKETS 496 /* 16 exact + 60 powers of two x 8 */
#define PGS_ERROR_CLASSES 24 /* SQLSTATE classes counted per database */

typedef struct pgs_hist {
  uint64_t count;
  uint64_t sum; /* of the values, µs */
  uint64_t buckets[PGS_HIST_BUCKETS];
} pgs_hist_t;

void pgs_hist_add(pgs_hist_t *h, uint64_t value);
void pgs_hist_merge(pgs_hist_t *into, const pgs_hist_t *from);
/* The value at quantile Q (0..1) as the middle of its bucket; 0 when empty. */
uint64_t pgs_hist_quantile(const pgs_hist_t *h, double q);
/* The bucket of VALUE and the smallest value past bucket I (its exclusive
 * upper bound), for exporting cumulative counts. */
int pgs_hist_bucket(uint64_t value);
uint64_t pgs_hist_bucket_end(int i);

/* One database's counters on one worker (or merged over all). */
typedef struct pgs_db_stats {
  char db[PGS_MAX_NAME];
  uint64_t requests;     /* client requests answered (Query, or up to Sync) */
  uint64_t transactions; /* ReadyForQuery 'I' after a request */
  uint64_t queries;      /* Query and Execute messages */
  uint64_t bytes_in;     /* from clients */
  uint64_t bytes_out;    /* to clients */
  uint64_t errors;       /* requests that sent the client an error */
  uint64_t refusals;     /* errors pgshard made itself (a statement it refused) */
  uint64_t fanouts;      /* reads run on several shards and merged */
  uint64_t twopc_commits;
  uint64_t twopc_aborts;
  pgs_hist_t latency; /* per request, µs, first message to ReadyForQuery */
  /* ErrorResponses clients got, by SQLSTATE class (its first two
   * characters); classes past PGS_ERROR_CLASSES count as "??". */
  struct {
    char cls[3];
    uint64_t count;
  } error_classes[PGS_ERROR_CLASSES];
  int nerror_classes;
} pgs_db_stats_t;

/* One more error of SQLSTATE in ST. */
void pgs_db_stats_error(pgs_db_stats_t *st, const char *sqlstate);

void pgs_db_stats_merge(pgs_db_stats_t *into, const pgs_db_stats_t *from);

/* One normalised statement (literals as $n: the plan cache's text) on one
 * worker, for SHOW QUERIES. */
#define PGS_QUERY_TEXT 256
#define PGS_QUERY_STATS_MAX 500 /* statements a worker keeps: the least costly goes */
typedef struct pgs_query_stats {
  uint64_t hash; /* of the normalised text */
  char db[PGS_MAX_NAME];
  char text[PGS_QUERY_TEXT]; /* cut */
  uint64_t calls, errors, fanouts, total_us;
  int max_shards; /* most shards one call ran on */
  pgs_hist_t latency;
} pgs_query_stats_t;

/* A worker's statements: at most PGS_QUERY_STATS_MAX, found by an open-
 * addressed index on the hash (a lookup per request must not scan). */
#define PGS_QUERY_INDEX 1024 /* power of two, over twice PGS_QUERY_STATS_MAX */
typedef struct pgs_query_table {
  pgs_query_stats_t entries[PGS_QUERY_STATS_MAX];
  int n;
  int16_t index[PGS_QUERY_INDEX]; /* entry + 1, 0: empty; may point at an entry reused since */
  int used;                       /* index slots not empty */
} pgs_query_table_t;

/* The entry of HASH in DB, made from TEXT when new: when the table is full
 * it replaces the entry with the least total time. */
pgs_query_stats_t *pgs_query_stats_get(pgs_query_table_t *table, const char *db, uint64_t hash,
                                       const char *text);
void pgs_query_stats_merge(pgs_query_stats_t *into, const pgs_query_stats_t *from);
/* Merge COUNT records stored back to back at P (maybe unaligned) into *ALL
 * (*N entries, malloc'ed, grown as needed), one entry per database. */
void pgs_db_stats_merge_records(const void *p, size_t count, pgs_db_stats_t **all, int *n);

#endif
