/*
 * stats.c — the latency histogram and the merging of per-worker counters
 * (stats.h). Bucket i < 16 holds exactly the value i; above, a value with
 * its highest bit at position e (e >= 4) goes to 16 + (e - 4) * 8 + the
 * three bits below the highest.
 */
#include <stdio.h>
#include <string.h>

#include "pgshard/stats.h"

#include <stdlib.h>

int pgs_hist_bucket(uint64_t value) {
  if (value < 16) return (int)value;
  int e = 63 - __builtin_clzll(value);
  int sub = (int)((value >> (e - 3)) & 7);
  return 16 + (e - 4) * 8 + sub;
}

/* The smallest value of bucket I. */
static uint64_t bucket_start(int i) {
  if (i < 16) return (uint64_t)i;
  int e = (i - 16) / 8 + 4, sub = (i - 16) % 8;
  return ((uint64_t)1 << e) | ((uint64_t)sub << (e - 3));
}

uint64_t pgs_hist_bucket_end(int i) {
  return i + 1 < PGS_HIST_BUCKETS ? bucket_start(i + 1) : UINT64_MAX;
}

void pgs_hist_add(pgs_hist_t *h, uint64_t value) {
  h->count++;
  h->sum += value;
  h->buckets[pgs_hist_bucket(value)]++;
}

void pgs_hist_merge(pgs_hist_t *into, const pgs_hist_t *from) {
  into->count += from->count;
  into->sum += from->sum;
  for (int i = 0; i < PGS_HIST_BUCKETS; i++) into->buckets[i] += from->buckets[i];
}

uint64_t pgs_hist_quantile(const pgs_hist_t *h, double q) {
  if (h->count == 0) return 0;
  if (q < 0) q = 0;
  if (q > 1) q = 1;
  /* The rank of the value wanted, 1-based: the smallest with rank/count >= q. */
  uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < PGS_HIST_BUCKETS; i++) {
    seen += h->buckets[i];
    if (seen >= rank) {
      uint64_t lo = bucket_start(i), hi = pgs_hist_bucket_end(i);
      return i < 16 ? lo : lo + (hi - lo) / 2;
    }
  }
  return bucket_start(PGS_HIST_BUCKETS - 1);
}

static void add_error_class(pgs_db_stats_t *st, const char *cls, uint64_t n) {
  int i = 0;
  while (i < st->nerror_classes && strcmp(st->error_classes[i].cls, cls) != 0) i++;
  if (i == st->nerror_classes) {
    if (st->nerror_classes == PGS_ERROR_CLASSES) {
      /* Full: the last entry becomes the "??" bucket. */
      i = PGS_ERROR_CLASSES - 1;
      memcpy(st->error_classes[i].cls, "??", 3);
    } else {
      st->nerror_classes++;
      memcpy(st->error_classes[i].cls, cls, 3);
      st->error_classes[i].count = 0;
    }
  }
  st->error_classes[i].count += n;
}

void pgs_db_stats_error(pgs_db_stats_t *st, const char *sqlstate) {
  char cls[3] = "??";
  if (sqlstate && strlen(sqlstate) >= 2) {
    cls[0] = sqlstate[0];
    cls[1] = sqlstate[1];
  }
  add_error_class(st, cls, 1);
}

void pgs_db_stats_merge(pgs_db_stats_t *into, const pgs_db_stats_t *from) {
  for (int i = 0; i < from->nerror_classes && i < PGS_ERROR_CLASSES; i++)
    add_error_class(into, from->error_classes[i].cls, from->error_classes[i].count);
  into->requests += from->requests;
  into->transactions += from->transactions;
  into->queries += from->queries;
  into->bytes_in += from->bytes_in;
  into->bytes_out += from->bytes_out;
  into->errors += from->errors;
  into->refusals += from->refusals;
  into->fanouts += from->fanouts;
  into->twopc_commits += from->twopc_commits;
  into->twopc_aborts += from->twopc_aborts;
  pgs_hist_merge(&into->latency, &from->latency);
}

void pgs_db_stats_merge_records(const void *p, size_t count, pgs_db_stats_t **all, int *n) {
  for (size_t k = 0; k < count; k++) {
    pgs_db_stats_t s;
    memcpy(&s, (const char *)p + k * sizeof(s), sizeof(s));
    int j = 0;
    while (j < *n && strcmp((*all)[j].db, s.db) != 0) j++;
    if (j == *n) {
      *all = pgs_xrealloc(*all, (size_t)(*n + 1) * sizeof(**all));
      memset(&(*all)[j], 0, sizeof(**all));
      memcpy((*all)[j].db, s.db, sizeof(s.db));
      (*n)++;
    }
    pgs_db_stats_merge(&(*all)[j], &s);
  }
}

static void index_rebuild(pgs_query_table_t *t) {
  memset(t->index, 0, sizeof(t->index));
  t->used = 0;
  for (int i = 0; i < t->n; i++) {
    size_t slot = t->entries[i].hash & (PGS_QUERY_INDEX - 1);
    while (t->index[slot]) slot = (slot + 1) & (PGS_QUERY_INDEX - 1);
    t->index[slot] = (int16_t)(i + 1);
    t->used++;
  }
}

pgs_query_stats_t *pgs_query_stats_get(pgs_query_table_t *t, const char *db, uint64_t hash,
                                       const char *text) {
  size_t slot = hash & (PGS_QUERY_INDEX - 1);
  for (; t->index[slot]; slot = (slot + 1) & (PGS_QUERY_INDEX - 1)) {
    pgs_query_stats_t *q = &t->entries[t->index[slot] - 1];
    if (q->hash == hash && !strcmp(q->db, db)) return q;
  }
  int at;
  if (t->n < PGS_QUERY_STATS_MAX) {
    at = t->n++;
  } else {
    at = 0;
    for (int i = 1; i < t->n; i++)
      if (t->entries[i].total_us < t->entries[at].total_us) at = i;
  }
  pgs_query_stats_t *q = &t->entries[at];
  memset(q, 0, sizeof(*q));
  q->hash = hash;
  snprintf(q->db, sizeof(q->db), "%s", db);
  snprintf(q->text, sizeof(q->text), "%s", text);
  /* A reused entry leaves its old slots pointing at it: lookups of the old
   * hash pass them by. Rebuilt before the probes get long. */
  if (t->used >= PGS_QUERY_INDEX * 3 / 4) {
    index_rebuild(t);
  } else {
    t->index[slot] = (int16_t)(at + 1);
    t->used++;
  }
  return q;
}

void pgs_query_stats_merge(pgs_query_stats_t *into, const pgs_query_stats_t *from) {
  into->calls += from->calls;
  into->errors += from->errors;
  into->fanouts += from->fanouts;
  into->total_us += from->total_us;
  if (from->max_shards > into->max_shards) into->max_shards = from->max_shards;
  pgs_hist_merge(&into->latency, &from->latency);
}
