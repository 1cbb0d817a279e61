/*
 * proto.c — PostgreSQL v3 wire-protocol codec. See proto.h.
 *
 * Invariants: builders always produce complete, correctly-sized messages;
 * readers never touch a byte outside [p, end); nothing here allocates except
 * pgs_buf_t growth.
 */
#include <stdarg.h>
#include <string.h>

#include "pgshard/proto.h"

void pgs_buf_init(pgs_buf_t *buf) { memset(buf, 0, sizeof(*buf)); }

void pgs_buf_free(pgs_buf_t *buf) {
  free(buf->data);
  memset(buf, 0, sizeof(*buf));
}

void pgs_buf_reserve(pgs_buf_t *buf, size_t extra) {
  if (buf->cap - buf->len >= extra) return;
  size_t cap = buf->cap ? buf->cap : 256;
  while (cap - buf->len < extra) cap *= 2;
  buf->data = pgs_xrealloc(buf->data, cap);
  buf->cap = cap;
}

void pgs_buf_put(pgs_buf_t *buf, const void *data, size_t len) {
  if (len == 0) return;
  pgs_buf_reserve(buf, len);
  memcpy(buf->data + buf->len, data, len);
  buf->len += len;
}

void pgs_buf_put_u8(pgs_buf_t *buf, uint8_t v) { pgs_buf_put(buf, &v, 1); }

void pgs_buf_put_i16(pgs_buf_t *buf, int16_t v) {
  uint8_t b[2] = {(uint8_t)((uint16_t)v >> 8), (uint8_t)v};
  pgs_buf_put(buf, b, 2);
}

void pgs_buf_put_i32(pgs_buf_t *buf, int32_t v) {
  uint8_t b[4];
  pgs_set_u32(b, (uint32_t)v);
  pgs_buf_put(buf, b, 4);
}

void pgs_buf_put_cstr(pgs_buf_t *buf, const char *s) { pgs_buf_put(buf, s, strlen(s) + 1); }

void pgs_buf_consume(pgs_buf_t *buf, size_t n) {
  PGS_ASSERT(n <= buf->len);
  if (n == 0) return;
  memmove(buf->data, buf->data + n, buf->len - n);
  buf->len -= n;
}

size_t pgs_msg_begin(pgs_buf_t *buf, char type) {
  pgs_buf_reserve(buf, 5);
  buf->data[buf->len++] = (uint8_t)type;
  size_t start = buf->len;
  buf->len += 4;
  return start;
}

void pgs_msg_end(pgs_buf_t *buf, size_t start) {
  pgs_set_u32(buf->data + start, (uint32_t)(buf->len - start));
}

void pgs_msg_error_raw(pgs_buf_t *buf, const char *severity, const char *sqlstate,
                       const char *message, const char *detail) {
  size_t start = pgs_msg_begin(buf, 'E');
  pgs_buf_put_u8(buf, 'S');
  pgs_buf_put_cstr(buf, severity);
  pgs_buf_put_u8(buf, 'V');
  pgs_buf_put_cstr(buf, severity);
  pgs_buf_put_u8(buf, 'C');
  pgs_buf_put_cstr(buf, sqlstate);
  pgs_buf_put_u8(buf, 'M');
  pgs_buf_put_cstr(buf, message);
  if (detail && *detail) {
    pgs_buf_put_u8(buf, 'D');
    pgs_buf_put_cstr(buf, detail);
  }
  pgs_buf_put_u8(buf, 0);
  pgs_msg_end(buf, start);
}

void pgs_msg_error(pgs_buf_t *buf, const char *severity, const char *sqlstate, const char *detail,
                   const char *fmt, ...) {
  char message[1024];
  int n = snprintf(message, sizeof(message), "pgshard: ");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message + n, sizeof(message) - (size_t)n, fmt, ap);
  va_end(ap);
  pgs_msg_error_raw(buf, severity, sqlstate, message, detail);
}

void pgs_msg_auth(pgs_buf_t *buf, int32_t code, const void *data, size_t len) {
  size_t start = pgs_msg_begin(buf, 'R');
  pgs_buf_put_i32(buf, code);
  pgs_buf_put(buf, data, len);
  pgs_msg_end(buf, start);
}

void pgs_msg_parameter_status(pgs_buf_t *buf, const char *name, const char *value) {
  size_t start = pgs_msg_begin(buf, 'S');
  pgs_buf_put_cstr(buf, name);
  pgs_buf_put_cstr(buf, value);
  pgs_msg_end(buf, start);
}

void pgs_msg_backend_key(pgs_buf_t *buf, int32_t pid, int32_t key) {
  size_t start = pgs_msg_begin(buf, 'K');
  pgs_buf_put_i32(buf, pid);
  pgs_buf_put_i32(buf, key);
  pgs_msg_end(buf, start);
}

void pgs_msg_ready(pgs_buf_t *buf, char status) {
  size_t start = pgs_msg_begin(buf, 'Z');
  pgs_buf_put_u8(buf, (uint8_t)status);
  pgs_msg_end(buf, start);
}

void pgs_msg_empty(pgs_buf_t *buf, char type) {
  size_t start = pgs_msg_begin(buf, type);
  pgs_msg_end(buf, start);
}

void pgs_msg_query(pgs_buf_t *buf, const char *sql) {
  size_t start = pgs_msg_begin(buf, 'Q');
  pgs_buf_put_cstr(buf, sql);
  pgs_msg_end(buf, start);
}

void pgs_reader_init(pgs_reader_t *r, const void *data, size_t len) {
  r->p = data;
  r->end = r->p + len;
  r->bad = false;
}

size_t pgs_reader_left(const pgs_reader_t *r) { return (size_t)(r->end - r->p); }

const uint8_t *pgs_read_bytes(pgs_reader_t *r, size_t n) {
  if (r->bad || pgs_reader_left(r) < n) {
    r->bad = true;
    return NULL;
  }
  const uint8_t *p = r->p;
  r->p += n;
  return p;
}

uint8_t pgs_read_u8(pgs_reader_t *r) {
  const uint8_t *p = pgs_read_bytes(r, 1);
  return p ? p[0] : 0;
}

int16_t pgs_read_i16(pgs_reader_t *r) {
  const uint8_t *p = pgs_read_bytes(r, 2);
  return p ? (int16_t)(((uint16_t)p[0] << 8) | p[1]) : 0;
}

int32_t pgs_read_i32(pgs_reader_t *r) {
  const uint8_t *p = pgs_read_bytes(r, 4);
  return p ? (int32_t)pgs_get_u32(p) : 0;
}

const char *pgs_read_cstr(pgs_reader_t *r, size_t *len) {
  if (r->bad) return NULL;
  const uint8_t *nul = memchr(r->p, 0, pgs_reader_left(r));
  if (nul == NULL) {
    r->bad = true;
    return NULL;
  }
  const char *s = (const char *)r->p;
  if (len) *len = (size_t)(nul - r->p);
  r->p = nul + 1;
  return s;
}

pgs_status_t pgs_msg_peek(const uint8_t *p, size_t avail, size_t max, char *type, size_t *total) {
  if (avail < 5) return PGS_EAGAIN;
  uint32_t len = pgs_get_u32(p + 1);
  *type = (char)p[0];
  if (len < 4 || len > 0x7fffffffu) return PGS_EPROTO;
  *total = (size_t)len + 1;
  if (*total > max) return PGS_ETOOBIG;
  return PGS_OK;
}

bool pgs_frontend_type_valid(char type) {
  switch (type) {
  case 'Q': /* Query */
  case 'P': /* Parse */
  case 'B': /* Bind */
  case 'D': /* Describe */
  case 'E': /* Execute */
  case 'C': /* Close */
  case 'S': /* Sync */
  case 'H': /* Flush */
  case 'X': /* Terminate */
  case 'F': /* FunctionCall */
  case 'd': /* CopyData */
  case 'c': /* CopyDone */
  case 'f': /* CopyFail */
  case 'p': /* PasswordMessage / SASL responses */
    return true;
  default:
    return false;
  }
}

pgs_status_t pgs_startup_parse(const uint8_t *body, size_t len, pgs_startup_t *out, char *err,
                               size_t errlen) {
  pgs_reader_t r;
  memset(out, 0, sizeof(*out));
  pgs_reader_init(&r, body, len);
  out->code = pgs_read_i32(&r);
  if (r.bad) {
    snprintf(err, errlen, "invalid startup packet length");
    return PGS_EPROTO;
  }
  switch (out->code) {
  case PGS_SSL_REQUEST_CODE:
  case PGS_GSSENC_REQUEST_CODE:
    if (pgs_reader_left(&r) != 0) {
      snprintf(err, errlen, "invalid length of SSL/GSS request packet");
      return PGS_EPROTO;
    }
    return PGS_OK;
  case PGS_CANCEL_REQUEST_CODE:
  case PGS_PEER_CANCEL_CODE:
    out->cancel_pid = pgs_read_i32(&r);
    out->cancel_key = pgs_read_i32(&r);
    if (r.bad || pgs_reader_left(&r) != 0) {
      snprintf(err, errlen, "invalid length of cancel request packet");
      return PGS_EPROTO;
    }
    return PGS_OK;
  case PGS_PROTOCOL_3_0:
    break;
  default:
    snprintf(err, errlen, "unsupported frontend protocol %d.%d: server supports 3.0 to 3.0",
             out->code >> 16, out->code & 0xffff);
    return PGS_EUNSUPPORTED;
  }
  for (;;) {
    size_t nlen;
    const char *name = pgs_read_cstr(&r, &nlen);
    if (name == NULL) {
      snprintf(err, errlen, "invalid startup packet layout: expected terminator as last byte");
      return PGS_EPROTO;
    }
    if (nlen == 0) break;
    const char *value = pgs_read_cstr(&r, NULL);
    if (value == NULL) {
      snprintf(err, errlen, "invalid startup packet layout: missing value for \"%s\"", name);
      return PGS_EPROTO;
    }
    if (out->nparams == PGS_MAX_PARAMS) {
      snprintf(err, errlen, "too many startup parameters (at most %d)", PGS_MAX_PARAMS);
      return PGS_EPROTO;
    }
    out->names[out->nparams] = name;
    out->values[out->nparams] = value;
    out->nparams++;
  }
  if (pgs_reader_left(&r) != 0) {
    snprintf(err, errlen, "invalid startup packet layout: expected terminator as last byte");
    return PGS_EPROTO;
  }
  return PGS_OK;
}

const char *pgs_startup_get(const pgs_startup_t *s, const char *name) {
  for (int i = 0; i < s->nparams; i++)
    if (!strcmp(s->names[i], name)) return s->values[i];
  return NULL;
}

/* ---- the extended query protocol's client messages ---- */

/* A count as PostgreSQL reads it (pq_getmsgint: unsigned). */
static int read_count(pgs_reader_t *r) { return (uint16_t)pgs_read_i16(r); }

/* R's message ends exactly where it was read up to. */
static bool read_all(const pgs_reader_t *r) { return !r->bad && pgs_reader_left(r) == 0; }

pgs_status_t pgs_parse_read_after_name(const uint8_t *data, size_t len, pgs_parse_msg_t *out) {
  pgs_reader_t r;
  memset(out, 0, sizeof(*out));
  pgs_reader_init(&r, data, len);
  const char *query = pgs_read_cstr(&r, &out->query_len);
  const uint8_t *after_query = r.p;
  int ntypes = read_count(&r);
  const uint8_t *type_oids = pgs_read_bytes(&r, 4 * (size_t)ntypes);
  if (!read_all(&r)) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  out->query = query;
  out->ntypes = ntypes;
  out->type_oids = type_oids;
  out->after_name = data;
  out->after_name_len = len;
  out->after_query = after_query;
  out->after_query_len = (size_t)(r.end - after_query);
  return PGS_OK;
}

pgs_status_t pgs_parse_read(const uint8_t *body, size_t len, pgs_parse_msg_t *out) {
  pgs_reader_t r;
  size_t name_len;
  pgs_reader_init(&r, body, len);
  const char *name = pgs_read_cstr(&r, &name_len);
  if (name == NULL) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  if (pgs_parse_read_after_name(r.p, pgs_reader_left(&r), out) != PGS_OK) return PGS_EPROTO;
  out->name = name;
  out->name_len = name_len;
  return PGS_OK;
}

pgs_status_t pgs_parse_read_head(const uint8_t *body, size_t len, pgs_parse_msg_t *out) {
  pgs_reader_t r;
  memset(out, 0, sizeof(*out));
  pgs_reader_init(&r, body, len);
  const char *name = pgs_read_cstr(&r, &out->name_len);
  const uint8_t *after_name = r.p;
  const char *query = pgs_read_cstr(&r, &out->query_len);
  if (r.bad) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  out->name = name;
  out->query = query;
  out->after_name = after_name;
  out->after_name_len = (size_t)(r.end - after_name);
  out->after_query = r.p;
  out->after_query_len = pgs_reader_left(&r);
  return PGS_OK;
}

uint32_t pgs_parse_type_oid(const pgs_parse_msg_t *m, int i) {
  PGS_ASSERT(i >= 0 && i < m->ntypes);
  return pgs_get_u32(m->type_oids + 4 * (size_t)i);
}

pgs_status_t pgs_bind_read_head(const uint8_t *body, size_t len, pgs_bind_msg_t *out) {
  pgs_reader_t r;
  memset(out, 0, sizeof(*out));
  pgs_reader_init(&r, body, len);
  const char *portal = pgs_read_cstr(&r, &out->portal_len);
  const char *statement = pgs_read_cstr(&r, &out->statement_len);
  if (r.bad) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  out->portal = portal;
  out->statement = statement;
  out->after_names = r.p;
  out->after_names_len = pgs_reader_left(&r);
  return PGS_OK;
}

pgs_status_t pgs_bind_read(const uint8_t *body, size_t len, pgs_bind_msg_t *out) {
  if (pgs_bind_read_head(body, len, out) != PGS_OK) return PGS_EPROTO;
  pgs_reader_t r;
  pgs_reader_init(&r, out->after_names, out->after_names_len);
  out->nformats = read_count(&r);
  out->formats = pgs_read_bytes(&r, 2 * (size_t)out->nformats);
  out->nparams = read_count(&r);
  if (out->nformats > 1 && out->nformats != out->nparams) r.bad = true;
  out->params = r.p;
  /* At most 65535 rounds, each reading at least 4 bytes or failing. */
  for (int i = 0; i < out->nparams && !r.bad; i++) {
    int32_t n = pgs_read_i32(&r);
    if (n < -1)
      r.bad = true;
    else if (n > 0)
      pgs_read_bytes(&r, (size_t)n);
  }
  out->params_len = (size_t)(r.p - out->params);
  out->nresults = read_count(&r);
  out->results = pgs_read_bytes(&r, 2 * (size_t)out->nresults);
  if (!read_all(&r)) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  return PGS_OK;
}

bool pgs_bind_next_value(const pgs_bind_msg_t *m, size_t *at, const uint8_t **value, int32_t *len) {
  /* M was checked when read; these bounds only keep a misuse inside it. */
  if (*at >= m->params_len || m->params_len - *at < 4) return false;
  const uint8_t *p = m->params + *at;
  int32_t n = (int32_t)pgs_get_u32(p);
  if (n > 0 && (size_t)n > m->params_len - *at - 4) return false;
  *value = n >= 0 ? p + 4 : NULL;
  *len = n >= 0 ? n : -1;
  *at += 4 + (n > 0 ? (size_t)n : 0);
  return true;
}

int16_t pgs_bind_param_format(const pgs_bind_msg_t *m, int i) {
  PGS_ASSERT(i >= 0 && i < m->nparams);
  if (m->nformats == 0) return 0;
  const uint8_t *f = m->formats + 2 * (m->nformats == 1 ? 0 : (size_t)i);
  return (int16_t)(((uint16_t)f[0] << 8) | f[1]);
}

static pgs_status_t read_target(const uint8_t *body, size_t len, pgs_describe_msg_t *out) {
  pgs_reader_t r;
  memset(out, 0, sizeof(*out));
  pgs_reader_init(&r, body, len);
  char kind = (char)pgs_read_u8(&r);
  const char *name = pgs_read_cstr(&r, &out->name_len);
  if (!read_all(&r) || (kind != 'S' && kind != 'P')) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  out->kind = kind;
  out->name = name;
  return PGS_OK;
}

pgs_status_t pgs_describe_read(const uint8_t *body, size_t len, pgs_describe_msg_t *out) {
  return read_target(body, len, out);
}

pgs_status_t pgs_close_read(const uint8_t *body, size_t len, pgs_close_msg_t *out) {
  return read_target(body, len, out);
}

pgs_status_t pgs_execute_read(const uint8_t *body, size_t len, pgs_execute_msg_t *out) {
  pgs_reader_t r;
  memset(out, 0, sizeof(*out));
  pgs_reader_init(&r, body, len);
  const char *portal = pgs_read_cstr(&r, &out->portal_len);
  int32_t max_rows = pgs_read_i32(&r);
  if (!read_all(&r)) {
    memset(out, 0, sizeof(*out));
    return PGS_EPROTO;
  }
  out->portal = portal;
  out->max_rows = max_rows;
  return PGS_OK;
}

void pgs_error_parse(const uint8_t *body, size_t len, pgs_error_fields_t *out) {
  pgs_reader_t r;
  out->severity = out->sqlstate = out->message = "";
  pgs_reader_init(&r, body, len);
  for (;;) {
    uint8_t field = pgs_read_u8(&r);
    if (r.bad || field == 0) return;
    const char *value = pgs_read_cstr(&r, NULL);
    if (value == NULL) return;
    if (field == 'S')
      out->severity = value;
    else if (field == 'C')
      out->sqlstate = value;
    else if (field == 'M')
      out->message = value;
  }
}
