/*
 * twophase_gid.c — the pure part of two-phase commit (twophase.h): the gid
 * format, and which shard of a database a gid names as its decision shard.
 * No I/O, no clock, no lock.
 *
 * Parsing is strict on purpose. A gid is acted on (interpolated into COMMIT
 * PREPARED 'gid' and into the decision table's statements) only when
 * pgs_gid_parse accepts it, which admits only "pgshard_", lower-case hex,
 * digits and underscores.
 */
#include <inttypes.h>
#include <string.h>

#include <xxhash.h>

#include "pgshard/twophase.h"

#define HEX_DIGITS 16

size_t pgs_gid_format(char out[PGS_GID_BUF], uint64_t instance, uint64_t shard_hash, uint64_t seq) {
  int n = snprintf(out, PGS_GID_BUF, PGS_GID_PREFIX "%016" PRIx64 "_%016" PRIx64 "_%" PRIu64,
                   instance, shard_hash, seq);
  PGS_ASSERT(n > 0 && n < PGS_GID_BUF);
  return (size_t)n;
}

/* Exactly 16 lower-case hex digits at *P, advancing it. */
static bool parse_hex16(const char **p, uint64_t *out) {
  uint64_t v = 0;
  for (int i = 0; i < HEX_DIGITS; i++) {
    char c = (*p)[i];
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return false;
    v = v << 4 | (uint64_t)d;
  }
  *p += HEX_DIGITS;
  *out = v;
  return true;
}

/* A decimal uint64 without leading zeros (so each value has one spelling)
 * running to the end of the string. */
static bool parse_seq(const char *p, uint64_t *out) {
  if (*p == '\0' || (p[0] == '0' && p[1] != '\0')) return false;
  uint64_t v = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9') return false;
    uint64_t d = (uint64_t)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

bool pgs_gid_parse(const char *gid, pgs_gid_t *out) {
  pgs_gid_t g;
  const char *p = gid;
  size_t plen = strlen(PGS_GID_PREFIX);
  if (strncmp(p, PGS_GID_PREFIX, plen) != 0) return false;
  p += plen;
  if (!parse_hex16(&p, &g.instance) || *p++ != '_') return false;
  if (!parse_hex16(&p, &g.shard_hash) || *p++ != '_') return false;
  if (!parse_seq(p, &g.seq)) return false;
  if (out) *out = g;
  return true;
}

uint64_t pgs_gid_shard_hash(const char *shard_name) {
  return XXH64(shard_name, strlen(shard_name), 0);
}

int pgs_gid_decision_shard(const pgs_database_t *db, const pgs_gid_t *gid) {
  for (int s = 0; s < db->nshards; s++)
    if (pgs_gid_shard_hash(db->shards[s].name) == gid->shard_hash) return s;
  return -1;
}
