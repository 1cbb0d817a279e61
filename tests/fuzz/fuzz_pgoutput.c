/*
 * fuzz_pgoutput.c — libFuzzer harness for the logical replication decoder
 * (router/pgoutput.c), which reads what a source shard's walsender sends
 * `pgshardctl reshard`.
 *
 * Input: one CopyData body. It is decoded as a replication frame and as a
 * pgoutput message, and the payload of an XLogData frame as a message too.
 * Oracles beyond the sanitizers: a refusal is PGS_EPROTO, and clear leaves
 * the message zeroed with nothing allocated (LeakSanitizer); an accepted
 * frame has the size its kind calls for and its fields are the input's
 * bytes; an accepted message points only inside the input (strings
 * NUL-terminated there) and, written out again from its fields, is the
 * input byte for byte, so nothing was skipped, read twice or invented.
 *
 * Run as the other harnesses (tests/fuzz/README.md), e.g.
 *   CC=clang cmake -S . -B build-fuzz -DPGS_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_pgoutput
 *   cp -r tests/fuzz/corpus/pgoutput /tmp/corpus-pgoutput
 *   build-fuzz/fuzz_pgoutput -max_total_time=60 /tmp/corpus-pgoutput
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgshard/pgoutput.h"
#include "pgshard/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}

static bool inside(const uint8_t *data, size_t size, const void *ptr, size_t len) {
  const uint8_t *p = ptr;
  return p >= data && p <= data + size && len <= (size_t)(data + size - p);
}

static bool string_inside(const uint8_t *data, size_t size, const char *s) {
  const uint8_t *p = (const uint8_t *)s;
  return p >= data && p < data + size && memchr(p, '\0', (size_t)(data + size - p)) != NULL;
}

static void put64(pgs_buf_t *b, uint64_t v) {
  pgs_buf_put_i32(b, (int32_t)(uint32_t)(v >> 32));
  pgs_buf_put_i32(b, (int32_t)(uint32_t)v);
}

static void put_tuple(pgs_buf_t *b, const uint8_t *data, size_t size, const pgs_lr_tuple_t *t) {
  if (t->ncols < 0 || t->ncols > PGS_LR_MAX_COLUMNS) abort();
  pgs_buf_put_i16(b, (int16_t)t->ncols);
  for (int i = 0; i < t->ncols; i++) {
    const pgs_lr_col_t *c = &t->cols[i];
    pgs_buf_put_u8(b, (uint8_t)c->kind);
    switch (c->kind) {
    case PGS_LR_COL_NULL:
    case PGS_LR_COL_UNCHANGED:
      if (c->data != NULL || c->len != 0) abort();
      break;
    case PGS_LR_COL_TEXT:
    case PGS_LR_COL_BINARY:
      if (c->data == NULL || !inside(data, size, c->data, c->len)) abort();
      pgs_buf_put_i32(b, (int32_t)c->len);
      pgs_buf_put(b, c->data, c->len);
      break;
    default:
      abort();
    }
  }
}

/* The message written out again from its fields. The flag bytes that are
 * read as one bit (a Commit's, a Relation column's, a Message's) are copied
 * from where the decoder must have read them, after checking the bit. */
static void encode(pgs_buf_t *b, const uint8_t *data, size_t size, const pgs_lr_msg_t *m) {
  pgs_buf_put_u8(b, (uint8_t)m->kind);
  switch (m->kind) {
  case 'B':
    put64(b, m->lsn);
    put64(b, (uint64_t)m->commit_time);
    pgs_buf_put_i32(b, (int32_t)m->xid);
    break;
  case 'C':
    pgs_buf_put_u8(b, data[1]);
    put64(b, m->lsn);
    put64(b, m->end_lsn);
    put64(b, (uint64_t)m->commit_time);
    break;
  case 'O':
    put64(b, m->lsn);
    if (!string_inside(data, size, m->prefix)) abort();
    pgs_buf_put_cstr(b, m->prefix);
    break;
  case 'R':
    pgs_buf_put_i32(b, (int32_t)m->relid);
    if (!string_inside(data, size, m->nspname) || !string_inside(data, size, m->relname)) abort();
    pgs_buf_put_cstr(b, m->nspname);
    pgs_buf_put_cstr(b, m->relname);
    pgs_buf_put_u8(b, (uint8_t)m->replident);
    if (m->nrelcols < 0 || m->nrelcols > PGS_LR_MAX_COLUMNS) abort();
    pgs_buf_put_i16(b, (int16_t)m->nrelcols);
    for (int i = 0; i < m->nrelcols; i++) {
      const pgs_lr_relcol_t *c = &m->relcols[i];
      if (!string_inside(data, size, c->name) || (const uint8_t *)c->name == data) abort();
      uint8_t flags = ((const uint8_t *)c->name)[-1];
      if (c->key != ((flags & 1) != 0)) abort();
      pgs_buf_put_u8(b, flags);
      pgs_buf_put_cstr(b, c->name);
      pgs_buf_put_i32(b, (int32_t)c->type_oid);
      pgs_buf_put_i32(b, c->typmod);
    }
    break;
  case 'Y':
    pgs_buf_put_i32(b, (int32_t)m->relid);
    if (!string_inside(data, size, m->nspname) || !string_inside(data, size, m->relname)) abort();
    pgs_buf_put_cstr(b, m->nspname);
    pgs_buf_put_cstr(b, m->relname);
    break;
  case 'I':
    pgs_buf_put_i32(b, (int32_t)m->relid);
    if (m->old_kind != 0 || m->old_tuple.cols != NULL) abort();
    pgs_buf_put_u8(b, 'N');
    put_tuple(b, data, size, &m->new_tuple);
    break;
  case 'U':
  case 'D':
    pgs_buf_put_i32(b, (int32_t)m->relid);
    if (m->old_kind == 'K' || m->old_kind == 'O') {
      pgs_buf_put_u8(b, (uint8_t)m->old_kind);
      put_tuple(b, data, size, &m->old_tuple);
    } else if (m->old_kind != 0 || m->kind == 'D' || m->old_tuple.cols != NULL) {
      abort();
    }
    if (m->kind == 'U') {
      pgs_buf_put_u8(b, 'N');
      put_tuple(b, data, size, &m->new_tuple);
    } else if (m->new_tuple.cols != NULL) {
      abort();
    }
    break;
  case 'T':
    if (m->nrelids < 0) abort();
    pgs_buf_put_i32(b, m->nrelids);
    pgs_buf_put_u8(b, m->truncate_options);
    for (int i = 0; i < m->nrelids; i++) pgs_buf_put_i32(b, (int32_t)m->relids[i]);
    break;
  case 'M':
    if (m->transactional != ((data[1] & 1) != 0)) abort();
    pgs_buf_put_u8(b, data[1]);
    put64(b, m->lsn);
    if (!string_inside(data, size, m->prefix)) abort();
    pgs_buf_put_cstr(b, m->prefix);
    if (m->content == NULL || !inside(data, size, m->content, m->content_len)) abort();
    pgs_buf_put_i32(b, (int32_t)m->content_len);
    pgs_buf_put(b, m->content, m->content_len);
    break;
  default:
    abort(); /* accepted, but not a kind pgoutput.h names */
  }
}

static void check_message(const uint8_t *data, size_t size) {
  pgs_lr_msg_t m;
  memset(&m, 0, sizeof(m));
  pgs_status_t status = pgs_lr_msg_decode(data, size, &m);
  if (status == PGS_OK) {
    if (size == 0 || m.kind != (char)data[0]) abort();
    pgs_buf_t again;
    pgs_buf_init(&again);
    encode(&again, data, size, &m);
    if (again.len != size || memcmp(again.data, data, size) != 0) abort();
    pgs_buf_free(&again);
  } else if (status != PGS_EPROTO) {
    abort();
  }
  pgs_lr_msg_clear(&m);
  static const pgs_lr_msg_t zero;
  if (memcmp(&m, &zero, sizeof(m)) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_message(data, size);

  pgs_lr_frame_t f;
  pgs_status_t status = pgs_lr_frame_decode(data, size, &f);
  if (status != PGS_OK) {
    if (status != PGS_EPROTO) abort();
    return 0;
  }
  switch (f.kind) {
  case 'w':
    if (size < 25 || f.wal_start != be64(data + 1) || f.wal_end != be64(data + 9) ||
        f.send_time != (int64_t)be64(data + 17) || f.reply_requested)
      abort();
    if (f.payload != data + 25 || f.payload_len != size - 25) abort();
    check_message(f.payload, f.payload_len);
    break;
  case 'k':
    if (size < 18 || f.wal_start != 0 || f.wal_end != be64(data + 1) ||
        f.send_time != (int64_t)be64(data + 9) || f.reply_requested != (data[17] != 0) ||
        f.payload != NULL || f.payload_len != 0)
      abort();
    break;
  default:
    abort();
  }
  return 0;
}
