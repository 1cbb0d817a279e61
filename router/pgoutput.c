/*
 * pgoutput.c — decoding the logical replication stream (pgoutput.h).
 *
 * A reader over one buffer: each get_* checks the bytes it needs are there
 * and fails the whole decode (rd->bad) otherwise, so the message decoders
 * read fields in protocol order without a check per field and test rd->bad
 * once at the end. Formats: PostgreSQL 15 docs, "Logical Replication
 * Message Formats" and "Streaming Replication Protocol".
 */
#include <inttypes.h>
#include <string.h>

#include "pgshard/pgoutput.h"

typedef struct reader {
  const uint8_t *p, *end;
  bool bad;
} reader_t;

static bool need(reader_t *rd, size_t n) {
  if (rd->bad || (size_t)(rd->end - rd->p) < n) {
    rd->bad = true;
    return false;
  }
  return true;
}

static uint8_t get8(reader_t *rd) { return need(rd, 1) ? *rd->p++ : 0; }

static uint16_t get16(reader_t *rd) {
  if (!need(rd, 2)) return 0;
  uint16_t v = (uint16_t)(rd->p[0] << 8 | rd->p[1]);
  rd->p += 2;
  return v;
}

static uint32_t get32(reader_t *rd) {
  if (!need(rd, 4)) return 0;
  uint32_t v =
      (uint32_t)rd->p[0] << 24 | (uint32_t)rd->p[1] << 16 | (uint32_t)rd->p[2] << 8 | rd->p[3];
  rd->p += 4;
  return v;
}

static uint64_t get64(reader_t *rd) {
  uint64_t hi = get32(rd);
  return hi << 32 | get32(rd);
}

/* A NUL-terminated string in the buffer. */
static const char *get_str(reader_t *rd) {
  if (rd->bad) return "";
  const uint8_t *nul = memchr(rd->p, '\0', (size_t)(rd->end - rd->p));
  if (nul == NULL) {
    rd->bad = true;
    return "";
  }
  const char *s = (const char *)rd->p;
  rd->p = nul + 1;
  return s;
}

static const uint8_t *get_bytes(reader_t *rd, size_t n) {
  if (!need(rd, n)) return NULL;
  const uint8_t *b = rd->p;
  rd->p += n;
  return b;
}

/* ---- the replication stream ---- */

pgs_status_t pgs_lr_frame_decode(const uint8_t *buf, size_t len, pgs_lr_frame_t *out) {
  reader_t rd = {buf, buf + len, false};
  memset(out, 0, sizeof(*out));
  out->kind = (char)get8(&rd);
  if (out->kind == 'w') {
    out->wal_start = get64(&rd);
    out->wal_end = get64(&rd);
    out->send_time = (int64_t)get64(&rd);
    out->payload = rd.p;
    out->payload_len = rd.bad ? 0 : (size_t)(rd.end - rd.p);
  } else if (out->kind == 'k') {
    out->wal_end = get64(&rd);
    out->send_time = (int64_t)get64(&rd);
    out->reply_requested = get8(&rd) != 0;
  } else {
    return PGS_EPROTO;
  }
  return rd.bad ? PGS_EPROTO : PGS_OK;
}

static uint8_t *put64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) *p++ = (uint8_t)(v >> (8 * i));
  return p;
}

size_t pgs_lr_status_encode(uint8_t out[34], uint64_t written, uint64_t flushed, uint64_t applied,
                            int64_t now, bool reply) {
  uint8_t *p = out;
  *p++ = 'r';
  p = put64(p, written);
  p = put64(p, flushed);
  p = put64(p, applied);
  p = put64(p, (uint64_t)now);
  *p++ = reply ? 1 : 0;
  return (size_t)(p - out);
}

/* ---- pgoutput messages ---- */

static void get_tuple(reader_t *rd, pgs_lr_tuple_t *t) {
  int n = get16(rd);
  if (rd->bad || n > PGS_LR_MAX_COLUMNS) {
    rd->bad = true;
    return;
  }
  t->ncols = n;
  t->cols = pgs_xcalloc((size_t)n + 1, sizeof(*t->cols));
  for (int i = 0; i < n && !rd->bad; i++) {
    pgs_lr_col_t *c = &t->cols[i];
    c->kind = (char)get8(rd);
    if (c->kind == PGS_LR_COL_TEXT || c->kind == PGS_LR_COL_BINARY) {
      c->len = get32(rd);
      c->data = get_bytes(rd, c->len);
    } else if (c->kind != PGS_LR_COL_NULL && c->kind != PGS_LR_COL_UNCHANGED) {
      rd->bad = true;
    }
  }
}

static void decode_relation(reader_t *rd, pgs_lr_msg_t *m) {
  m->relid = get32(rd);
  m->nspname = get_str(rd);
  m->relname = get_str(rd);
  m->replident = (char)get8(rd);
  int n = get16(rd);
  if (rd->bad || n > PGS_LR_MAX_COLUMNS) {
    rd->bad = true;
    return;
  }
  m->nrelcols = n;
  m->relcols = pgs_xcalloc((size_t)n + 1, sizeof(*m->relcols));
  for (int i = 0; i < n && !rd->bad; i++) {
    m->relcols[i].key = (get8(rd) & 1) != 0;
    m->relcols[i].name = get_str(rd);
    m->relcols[i].type_oid = get32(rd);
    m->relcols[i].typmod = (int32_t)get32(rd);
  }
}

/* Update and Delete: an optional ('K'/'O') or required old tuple. */
static void decode_old(reader_t *rd, pgs_lr_msg_t *m, bool required) {
  uint8_t tag = get8(rd);
  if (tag == 'K' || tag == 'O') {
    m->old_kind = (char)tag;
    get_tuple(rd, &m->old_tuple);
    if (m->kind == 'U') tag = get8(rd);
  } else if (required) {
    rd->bad = true;
    return;
  }
  if (m->kind == 'U') {
    if (tag != 'N') rd->bad = true;
    get_tuple(rd, &m->new_tuple);
  }
}

static void decode_truncate(reader_t *rd, pgs_lr_msg_t *m) {
  uint32_t n = get32(rd);
  m->truncate_options = get8(rd);
  if (rd->bad || n > (uint32_t)(rd->end - rd->p) / 4) {
    rd->bad = true;
    return;
  }
  m->nrelids = (int)n;
  m->relids = pgs_xcalloc((size_t)n + 1, sizeof(*m->relids));
  for (uint32_t i = 0; i < n; i++) m->relids[i] = get32(rd);
}

pgs_status_t pgs_lr_msg_decode(const uint8_t *buf, size_t len, pgs_lr_msg_t *m) {
  reader_t rd = {buf, buf + len, false};
  m->kind = (char)get8(&rd);
  switch (m->kind) {
  case 'B':
    m->lsn = get64(&rd);
    m->commit_time = (int64_t)get64(&rd);
    m->xid = get32(&rd);
    break;
  case 'C':
    (void)get8(&rd); /* flags, unused */
    m->lsn = get64(&rd);
    m->end_lsn = get64(&rd);
    m->commit_time = (int64_t)get64(&rd);
    break;
  case 'O':
    m->lsn = get64(&rd);
    m->prefix = get_str(&rd);
    break;
  case 'R':
    decode_relation(&rd, m);
    break;
  case 'Y':
    m->relid = get32(&rd); /* the type's OID */
    m->nspname = get_str(&rd);
    m->relname = get_str(&rd);
    break;
  case 'I':
    m->relid = get32(&rd);
    if (get8(&rd) != 'N') rd.bad = true;
    get_tuple(&rd, &m->new_tuple);
    break;
  case 'U':
  case 'D':
    m->relid = get32(&rd);
    decode_old(&rd, m, m->kind == 'D');
    break;
  case 'T':
    decode_truncate(&rd, m);
    break;
  case 'M':
    m->transactional = (get8(&rd) & 1) != 0;
    m->lsn = get64(&rd);
    m->prefix = get_str(&rd);
    m->content_len = get32(&rd);
    m->content = get_bytes(&rd, m->content_len);
    break;
  default:
    return PGS_EPROTO;
  }
  if (!rd.bad && rd.p != rd.end) rd.bad = true; /* trailing bytes: not what we think */
  return rd.bad ? PGS_EPROTO : PGS_OK;
}

void pgs_lr_msg_clear(pgs_lr_msg_t *m) {
  free(m->old_tuple.cols);
  free(m->new_tuple.cols);
  free(m->relcols);
  free(m->relids);
  memset(m, 0, sizeof(*m));
}

void pgs_lsn_format(uint64_t lsn, char *buf, size_t cap) {
  snprintf(buf, cap, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32), (uint32_t)lsn);
}
