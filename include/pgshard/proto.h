/*
 * proto.h — the PostgreSQL v3 wire-protocol codec: growable byte buffers,
 * message builders, a bounds-checked reader, framing, the startup packet and
 * typed readers of the extended query protocol's client messages.
 * No I/O and no knowledge of connections: the proxy feeds it bytes and sends
 * what it builds.
 *
 * Framing: every message after startup is  type(1) | length(4, includes
 * itself) | body(length - 4). The startup packet has no type byte.
 */
#ifndef PGSHARD_PROTO_H
#define PGSHARD_PROTO_H

#include "pgshard/common.h"

#define PGS_PROTOCOL_3_0 196608 /* 3 << 16 */
#define PGS_CANCEL_REQUEST_CODE 80877102
#define PGS_SSL_REQUEST_CODE 80877103
#define PGS_GSSENC_REQUEST_CODE 80877104
/* A CancelRequest one pgshard passes to the peer that owns the session
 * (peers.c): never passed on again, so a misconfigured fleet cannot bounce
 * it. Not a PostgreSQL code. */
#define PGS_PEER_CANCEL_CODE 80877123 /* 1234.5699 */

/* Authentication request codes ('R' messages). */
#define PGS_AUTHREQ_OK 0
#define PGS_AUTHREQ_CLEARTEXT 3
#define PGS_AUTHREQ_MD5 5
#define PGS_AUTHREQ_SASL 10
#define PGS_AUTHREQ_SASL_CONTINUE 11
#define PGS_AUTHREQ_SASL_FINAL 12

/* SQLSTATEs pgshard itself raises. */
#define PGS_SQLSTATE_PROTOCOL_VIOLATION "08P01"
#define PGS_SQLSTATE_CONNECTION_FAILURE "08006"
#define PGS_SQLSTATE_CANNOT_CONNECT "08001"
#define PGS_SQLSTATE_INVALID_PASSWORD "28P01"
#define PGS_SQLSTATE_INVALID_AUTHORIZATION "28000"
#define PGS_SQLSTATE_INVALID_CATALOG "3D000"
#define PGS_SQLSTATE_TOO_MANY_CONNECTIONS "53300"
#define PGS_SQLSTATE_CONFIG_LIMIT "53400"
#define PGS_SQLSTATE_FEATURE_NOT_SUPPORTED "0A000"
#define PGS_SQLSTATE_ADMIN_SHUTDOWN "57P01"
#define PGS_SQLSTATE_QUERY_CANCELED "57014"
#define PGS_SQLSTATE_INTERNAL "XX000"
#define PGS_SQLSTATE_OUT_OF_MEMORY "53200"
#define PGS_SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT "25P03"
#define PGS_SQLSTATE_IDLE_SESSION_TIMEOUT "57P05"
#define PGS_SQLSTATE_INSUFFICIENT_PRIVILEGE "42501"
#define PGS_SQLSTATE_SYNTAX_ERROR "42601"

typedef struct pgs_buf {
  uint8_t *data;
  size_t len; /* bytes held */
  size_t cap;
} pgs_buf_t;

void pgs_buf_init(pgs_buf_t *buf);
void pgs_buf_free(pgs_buf_t *buf);
/* Make room for EXTRA more bytes beyond len. */
void pgs_buf_reserve(pgs_buf_t *buf, size_t extra);
void pgs_buf_put(pgs_buf_t *buf, const void *data, size_t len);
void pgs_buf_put_u8(pgs_buf_t *buf, uint8_t v);
void pgs_buf_put_i16(pgs_buf_t *buf, int16_t v);
void pgs_buf_put_i32(pgs_buf_t *buf, int32_t v);
void pgs_buf_put_cstr(pgs_buf_t *buf, const char *s);
/* Drop the first N bytes (compaction after they were consumed). */
void pgs_buf_consume(pgs_buf_t *buf, size_t n);

/* Start a message of TYPE; returns the offset its length must be patched at. */
size_t pgs_msg_begin(pgs_buf_t *buf, char type);
void pgs_msg_end(pgs_buf_t *buf, size_t start);

/* Builders: each appends one complete message to BUF. */
PGS_PRINTF(5, 6)
void pgs_msg_error(pgs_buf_t *buf, const char *severity, const char *sqlstate, const char *detail,
                   const char *fmt, ...);
void pgs_msg_error_raw(pgs_buf_t *buf, const char *severity, const char *sqlstate,
                       const char *message, const char *detail);
void pgs_msg_auth(pgs_buf_t *buf, int32_t code, const void *data, size_t len);
void pgs_msg_parameter_status(pgs_buf_t *buf, const char *name, const char *value);
void pgs_msg_backend_key(pgs_buf_t *buf, int32_t pid, int32_t key);
void pgs_msg_ready(pgs_buf_t *buf, char status);
void pgs_msg_empty(pgs_buf_t *buf, char type); /* ParseComplete, CloseComplete ... */
void pgs_msg_query(pgs_buf_t *buf, const char *sql);

/* Bounds-checked reader over one message body. Any read past the end sets
 * bad and returns zero/NULL, so callers check once at the end. */
typedef struct pgs_reader {
  const uint8_t *p;
  const uint8_t *end;
  bool bad;
} pgs_reader_t;

void pgs_reader_init(pgs_reader_t *r, const void *data, size_t len);
uint8_t pgs_read_u8(pgs_reader_t *r);
int16_t pgs_read_i16(pgs_reader_t *r);
int32_t pgs_read_i32(pgs_reader_t *r);
/* A NUL-terminated string; returns NULL (and sets bad) if none in bounds. */
const char *pgs_read_cstr(pgs_reader_t *r, size_t *len);
const uint8_t *pgs_read_bytes(pgs_reader_t *r, size_t n);
size_t pgs_reader_left(const pgs_reader_t *r);

static inline uint32_t pgs_get_u32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void pgs_set_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Look at a typed message at P with AVAIL bytes. On PGS_OK, *TYPE and *TOTAL
 * (type byte + length field + body) describe it; the body may not all be
 * there yet. PGS_EAGAIN: fewer than 5 bytes. PGS_EPROTO: length below 4.
 * PGS_ETOOBIG: total over MAX. */
pgs_status_t pgs_msg_peek(const uint8_t *p, size_t avail, size_t max, char *type,
                          size_t *total) PGS_MUST_USE;

/* True for the message types a frontend may send after startup. */
bool pgs_frontend_type_valid(char type);

/* The startup packet (after its 4-byte length): a request code or protocol
 * version, then for a StartupMessage name/value pairs. */
typedef struct pgs_startup {
  int32_t code; /* PGS_PROTOCOL_3_0 or one of the *_REQUEST_CODE values */
  int32_t cancel_pid;
  int32_t cancel_key;
  int nparams;
  const char *names[PGS_MAX_PARAMS]; /* point into the parsed packet */
  const char *values[PGS_MAX_PARAMS];
} pgs_startup_t;

/* Parse BODY (the packet after its length field). PGS_EPROTO with a reason in
 * ERR for malformed packets, PGS_EUNSUPPORTED for protocol versions other
 * than 3.0 (ERR says which). */
pgs_status_t pgs_startup_parse(const uint8_t *body, size_t len, pgs_startup_t *out, char *err,
                               size_t errlen) PGS_MUST_USE;
const char *pgs_startup_get(const pgs_startup_t *s, const char *name);

/* ---- the extended query protocol's client messages ----
 *
 * Each reader takes one message body (after type and length) and checks it
 * as PostgreSQL's postgres.c does: strings end inside the body, counts are
 * unsigned 16-bit (pq_getmsgint), a Bind's parameter format count is 0, 1 or
 * its parameter count, a value's length is -1 (NULL) or a length that fits,
 * and the body is consumed exactly. Malformed: PGS_EPROTO and *OUT zeroed.
 * Nothing is copied or allocated: pointers point into the body, which must
 * outlive them. What PostgreSQL checks against the statement (how many
 * parameters, result columns, which format codes exist) is not checked. */

/* Parse: statement name, query text, declared parameter types. */
typedef struct pgs_parse_msg {
  const char *name; /* "" for the unnamed statement */
  size_t name_len;
  const char *query; /* NUL-terminated in the body */
  size_t query_len;
  int ntypes;                /* 0..65535 */
  const uint8_t *type_oids;  /* ntypes OIDs, 4 bytes each: pgs_parse_type_oid() */
  const uint8_t *after_name; /* the body after the name's NUL: text, count, OIDs */
  size_t after_name_len;
  const uint8_t *after_query; /* the count and OIDs as they came */
  size_t after_query_len;
} pgs_parse_msg_t;

pgs_status_t pgs_parse_read(const uint8_t *body, size_t len, pgs_parse_msg_t *out) PGS_MUST_USE;
/* The same for a Parse body without its statement name (what a proxy keeps
 * of a Parse, to send it again under a name of its own): name is NULL,
 * after_name is DATA. */
pgs_status_t pgs_parse_read_after_name(const uint8_t *data, size_t len,
                                       pgs_parse_msg_t *out) PGS_MUST_USE;
/* Only the name and the text, for a proxy that passes the rest on for the
 * server to judge: ntypes and type_oids stay 0/NULL, after_query is the
 * rest unread. */
pgs_status_t pgs_parse_read_head(const uint8_t *body, size_t len,
                                 pgs_parse_msg_t *out) PGS_MUST_USE;
/* Declared type I (0 <= I < ntypes); 0 means unspecified. */
uint32_t pgs_parse_type_oid(const pgs_parse_msg_t *m, int i);

/* Bind: portal, statement, parameter formats and values, result formats. */
typedef struct pgs_bind_msg {
  const char *portal; /* "" for the unnamed portal */
  size_t portal_len;
  const char *statement;
  size_t statement_len;
  const uint8_t *after_names; /* the body after the statement name's NUL */
  size_t after_names_len;
  int nformats;           /* 0 (all text), 1 (for all) or nparams */
  const uint8_t *formats; /* nformats int16 codes: pgs_bind_param_format() */
  int nparams;            /* 0..65535 */
  const uint8_t *params;  /* nparams values: int32 length (-1: NULL), bytes */
  size_t params_len;      /* their bytes: the result format count follows */
  int nresults;           /* result format codes, 0..65535 */
  const uint8_t *results; /* nresults int16 codes, as they came */
} pgs_bind_msg_t;

pgs_status_t pgs_bind_read(const uint8_t *body, size_t len, pgs_bind_msg_t *out) PGS_MUST_USE;
/* Only the two names, for a proxy that passes the rest on for the server to
 * judge: the counts stay 0 and after_names is the rest unread. */
pgs_status_t pgs_bind_read_head(const uint8_t *body, size_t len, pgs_bind_msg_t *out) PGS_MUST_USE;
/* The parameter values of M (from pgs_bind_read) in order. Start with
 * *AT = 0; each call gives the next value in *VALUE and *LEN (NULL and -1
 * for SQL NULL) and moves *AT past it. False after the last. */
bool pgs_bind_next_value(const pgs_bind_msg_t *m, size_t *at, const uint8_t **value, int32_t *len);
/* The format code of parameter I (0 <= I < nparams): no codes mean text,
 * one code applies to every parameter, else each has its own. */
int16_t pgs_bind_param_format(const pgs_bind_msg_t *m, int i);

/* Describe and Close: 'S' a prepared statement or 'P' a portal, its name. */
typedef struct pgs_target_msg {
  char kind; /* 'S' or 'P'; any other is malformed */
  const char *name;
  size_t name_len;
} pgs_describe_msg_t, pgs_close_msg_t;

pgs_status_t pgs_describe_read(const uint8_t *body, size_t len,
                               pgs_describe_msg_t *out) PGS_MUST_USE;
pgs_status_t pgs_close_read(const uint8_t *body, size_t len, pgs_close_msg_t *out) PGS_MUST_USE;

/* Execute: a portal and the most rows to return (0 or less: all). */
typedef struct pgs_execute_msg {
  const char *portal;
  size_t portal_len;
  int32_t max_rows;
} pgs_execute_msg_t;

pgs_status_t pgs_execute_read(const uint8_t *body, size_t len, pgs_execute_msg_t *out) PGS_MUST_USE;

/* Fields of an ErrorResponse/NoticeResponse body, for logging and checks. */
typedef struct pgs_error_fields {
  const char *severity;
  const char *sqlstate;
  const char *message;
} pgs_error_fields_t;
void pgs_error_parse(const uint8_t *body, size_t len, pgs_error_fields_t *out);

#endif
