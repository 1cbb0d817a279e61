/*
 * pgoutput.h — the logical replication stream as PostgreSQL 15's pgoutput
 * plugin writes it (protocol version 1, text tuples), read without I/O, for
 * `pgshardctl reshard`, which applies a source shard's changes to the shards
 * a new map names.
 *
 * Two layers, both decoding a buffer the caller owns (every pointer in a
 * result points into it, valid while it is):
 *   the replication stream's CopyData: 'w' XLogData (a WAL range and one
 *   pgoutput message) and 'k' primary keepalive; and the standby status
 *   update a client sends back ('r');
 *   the pgoutput messages: Begin, Commit, Origin, Relation, Type, Insert,
 *   Update, Delete, Truncate, Message (logical decoding messages, with
 *   `messages 'true'`).
 * Every length is checked against the buffer: a short or malformed message
 * is PGS_EPROTO, never a read past the end.
 */
#ifndef PGSHARD_PGOUTPUT_H
#define PGSHARD_PGOUTPUT_H

#include "pgshard/common.h"

#define PGS_LR_MAX_COLUMNS 1664 /* MaxTupleAttributeNumber */

/* ---- the replication stream ---- */

typedef struct pgs_lr_frame {
  char kind;              /* 'w' XLogData or 'k' keepalive */
  uint64_t wal_start;     /* 'w': where the message's WAL starts */
  uint64_t wal_end;       /* the server's WAL end ('w' and 'k') */
  int64_t send_time;      /* microseconds since 2000-01-01 */
  bool reply_requested;   /* 'k': answer now or be disconnected */
  const uint8_t *payload; /* 'w': the pgoutput message */
  size_t payload_len;
} pgs_lr_frame_t;

pgs_status_t pgs_lr_frame_decode(const uint8_t *buf, size_t len, pgs_lr_frame_t *out) PGS_MUST_USE;

/* A standby status update ('r', 34 bytes) into OUT: WRITTEN, FLUSHED,
 * APPLIED positions, NOW (microseconds since 2000-01-01), REPLY asks the
 * server to answer at once. Returns its length. */
size_t pgs_lr_status_encode(uint8_t out[34], uint64_t written, uint64_t flushed, uint64_t applied,
                            int64_t now, bool reply);

/* ---- pgoutput messages ---- */

typedef enum {
  PGS_LR_COL_NULL = 'n',
  PGS_LR_COL_UNCHANGED = 'u', /* an unchanged TOASTed value, not sent */
  PGS_LR_COL_TEXT = 't',
  PGS_LR_COL_BINARY = 'b',
} pgs_lr_col_kind_t;

typedef struct pgs_lr_col {
  char kind; /* pgs_lr_col_kind_t */
  const uint8_t *data;
  uint32_t len;
} pgs_lr_col_t;

typedef struct pgs_lr_tuple {
  int ncols;
  pgs_lr_col_t *cols; /* ncols entries, owned by the message (pgs_lr_msg_clear) */
} pgs_lr_tuple_t;

typedef struct pgs_lr_relcol {
  bool key; /* part of the replica identity */
  const char *name;
  uint32_t type_oid;
  int32_t typmod;
} pgs_lr_relcol_t;

typedef struct pgs_lr_msg {
  char kind; /* 'B' 'C' 'O' 'R' 'Y' 'I' 'U' 'D' 'T' 'M' */
  /* B: final_lsn, commit_time, xid. C: lsn (commit), end_lsn, commit_time. */
  uint64_t lsn, end_lsn;
  int64_t commit_time;
  uint32_t xid;
  /* R, I, U, D: the relation. */
  uint32_t relid;
  /* R */
  const char *nspname, *relname;
  char replident; /* 'd' default, 'n' nothing, 'f' full, 'i' index */
  int nrelcols;
  pgs_lr_relcol_t *relcols; /* owned */
  /* I: new. U: old (when old_kind is 'K' or 'O') and new. D: old. */
  char old_kind; /* 'K' identity columns only, 'O' the whole old row, 0 none */
  pgs_lr_tuple_t old_tuple, new_tuple;
  /* T */
  int nrelids;
  uint32_t *relids; /* owned */
  uint8_t truncate_options;
  /* M: transactional or not, its LSN, prefix, content. O: name in prefix. */
  bool transactional;
  const char *prefix;
  const uint8_t *content;
  uint32_t content_len;
} pgs_lr_msg_t;

/* Decode pgoutput message BUF (the payload of an XLogData) into OUT, which
 * must be zeroed or cleared. Strings point into BUF (NUL-terminated there,
 * as the protocol writes them). */
pgs_status_t pgs_lr_msg_decode(const uint8_t *buf, size_t len, pgs_lr_msg_t *out) PGS_MUST_USE;
/* Free what OUT owns and zero it. */
void pgs_lr_msg_clear(pgs_lr_msg_t *msg);

/* "X/Y" LSN text, as PostgreSQL prints pg_lsn (CAP >= 24); health.h's
 * pgs_lsn_parse reads it back. */
void pgs_lsn_format(uint64_t lsn, char *buf, size_t cap);

#endif
