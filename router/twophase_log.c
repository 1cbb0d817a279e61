/*
 * twophase_log.c — the pure part of two-phase commit (twophase.h): the gid
 * format, the decision log's record syntax, and the replay of a log's text
 * into the commits it still owes. No file, no clock, no lock: the proxy's
 * twophase.c reads the file and hands the text here.
 *
 * Parsing is strict on purpose. A gid is acted on (interpolated into COMMIT
 * PREPARED 'gid') only when pgs_gid_parse accepts it, which admits only
 * "pgshard_", lower-case hex, digits and underscores; a log line that is not
 * exactly a record is counted and skipped, never half-understood.
 */
#include <inttypes.h>
#include <string.h>

#include "pgshard/twophase.h"

#define HEX_DIGITS 16

size_t pgs_gid_format(char out[PGS_GID_BUF], uint64_t owner, uint64_t instance, uint64_t seq) {
  int n = snprintf(out, PGS_GID_BUF, PGS_GID_PREFIX "%016" PRIx64 "_%016" PRIx64 "_%" PRIu64, owner,
                   instance, seq);
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
  if (!parse_hex16(&p, &g.owner) || *p++ != '_') return false;
  if (!parse_hex16(&p, &g.instance) || *p++ != '_') return false;
  if (!parse_seq(p, &g.seq)) return false;
  if (out) *out = g;
  return true;
}

size_t pgs_twophase_log_header(char *out, size_t cap, uint64_t owner) {
  int n = snprintf(out, cap, PGS_TWOPHASE_LOG_MAGIC " %d owner=%016" PRIx64 "\n",
                   PGS_TWOPHASE_LOG_VERSION, owner);
  PGS_ASSERT(n > 0 && (size_t)n < cap);
  return (size_t)n;
}

static bool parse_header(const char *line, size_t len, uint64_t *owner) {
  char expect[64];
  int n = snprintf(expect, sizeof(expect),
                   PGS_TWOPHASE_LOG_MAGIC " %d owner=", PGS_TWOPHASE_LOG_VERSION);
  if (len > 0 && line[len - 1] == '\r') len--;
  if (len != (size_t)n + HEX_DIGITS || memcmp(line, expect, (size_t)n) != 0) return false;
  const char *p = line + n;
  return parse_hex16(&p, owner);
}

pgs_status_t pgs_twophase_log_parse_record(const char *line, size_t len,
                                           pgs_twophase_record_t *out) {
  if (len > 0 && line[len - 1] == '\r') len--;
  if (len < 3 || line[1] != ' ') return PGS_EINVAL;
  char kind = line[0];
  if (kind != 'C' && kind != 'A' && kind != 'D') return PGS_EINVAL;
  size_t glen = len - 2;
  if (glen >= PGS_GID_MAX || memchr(line + 2, '\0', glen) != NULL) return PGS_EINVAL;
  char gid[PGS_GID_MAX];
  memcpy(gid, line + 2, glen);
  gid[glen] = '\0';
  if (!pgs_gid_parse(gid, NULL)) return PGS_EINVAL;
  out->kind = kind;
  memcpy(out->gid, gid, glen + 1);
  return PGS_OK;
}

static void apply_record(pgs_twophase_replay_t *r, const pgs_twophase_record_t *rec,
                         pgs_strmap_t *aborted) {
  switch (rec->kind) {
  case 'C':
    /* A commit is final: an abort recorded for the same gid is void. */
    pgs_strmap_remove(aborted, rec->gid);
    pgs_strmap_put(&r->commits, rec->gid, NULL);
    break;
  case 'A':
    if (!pgs_strmap_contains(&r->commits, rec->gid)) pgs_strmap_put(aborted, rec->gid, NULL);
    break;
  case 'D':
    if (pgs_strmap_contains(&r->commits, rec->gid) || pgs_strmap_contains(aborted, rec->gid))
      r->done++;
    pgs_strmap_remove(&r->commits, rec->gid);
    pgs_strmap_remove(aborted, rec->gid);
    break;
  }
}

pgs_status_t pgs_twophase_replay(const char *text, size_t len, pgs_twophase_replay_t *out) {
  memset(out, 0, sizeof(*out));
  pgs_strmap_init(&out->commits);
  if (len == 0) return PGS_OK;
  const char *nl = memchr(text, '\n', len);
  if (nl == NULL || !parse_header(text, (size_t)(nl - text), &out->owner)) return PGS_EINVAL;
  out->has_header = true;
  /* Undone aborts matter only while the log is replayed: after a restart an
   * undecided gid of an earlier instance is rolled back anyway. */
  pgs_strmap_t aborted;
  pgs_strmap_init(&aborted);
  size_t pos = (size_t)(nl - text) + 1;
  int lineno = 1;
  while (pos < len) {
    lineno++;
    const char *line = text + pos;
    nl = memchr(line, '\n', len - pos);
    if (nl == NULL) {
      /* A write cut short by a crash: the record never counted. */
      out->torn_tail = true;
      break;
    }
    size_t llen = (size_t)(nl - line);
    pos += llen + 1;
    pgs_twophase_record_t rec;
    if (llen == 0) continue;
    if (pgs_twophase_log_parse_record(line, llen, &rec) != PGS_OK) {
      if (out->malformed++ == 0) out->first_bad_line = lineno;
      continue;
    }
    out->records++;
    apply_record(out, &rec, &aborted);
  }
  pgs_strmap_free(&aborted, NULL);
  return PGS_OK;
}

void pgs_twophase_replay_free(pgs_twophase_replay_t *replay) {
  pgs_strmap_free(&replay->commits, NULL);
}
