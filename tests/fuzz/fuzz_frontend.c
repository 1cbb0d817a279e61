/*
 * fuzz_frontend.c — libFuzzer harness for the codec as the proxy drives it
 * on client traffic after login (router/proto.c), and for the session
 * filter and analyzer the SQL of Query and Parse goes through
 * (router/session.c).
 *
 * Input: the first byte picks how many bytes arrive per read (1 to 64), the
 * rest is the client's stream. The stream is fed into a pgs_buf_t in those
 * chunks; after each, whole messages are framed with pgs_msg_peek, read
 * field by field with pgs_reader_t the way the proxy reads them (every field
 * of Parse, Bind, Describe, Close, Execute and Query), and consumed. A bad
 * length, an unknown type or a message over the cap ends the stream, as it
 * ends the client's connection. Bind and Describe naming a statement are
 * rewritten under another name, as the proxy does for its server-side
 * names, and the rewrite must frame and read back the same.
 *
 * Oracles beyond the sanitizers: every string read lies inside its message
 * and has the length reported; a failed read returns zero or NULL; no read
 * moves past the end. The typed readers of Parse, Bind, Describe, Close
 * and Execute accept exactly what the field-by-field reading here (which
 * follows postgres.c: unsigned counts, format count 0, 1 or the parameter
 * count, value lengths of -1 or more, nothing left over) accepts; what they
 * accept points inside the body and reads back the same fields, what they
 * refuse leaves a zeroed result; their head readers accept it too. A statement the session filter could not parse has
 * no operations and no effect but a pin; one it neither parsed nor pinned
 * is refused by PostgreSQL's grammar (libpg_query) too.
 */
#include <stdint.h>
#include <string.h>

#include <pg_query.h>

#include "pgshard/proto.h"
#include "pgshard/session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MESSAGE 8192 /* a small max_message_size, so ETOOBIG is reachable */

static void check_reader(const pgs_reader_t *r, const uint8_t *body, size_t len) {
  if (r->p < body || r->p > body + len || r->end != body + len) abort();
}

static const char *read_cstr(pgs_reader_t *r, const uint8_t *body, size_t len, size_t *slen) {
  size_t n = 0xdead;
  const char *s = pgs_read_cstr(r, &n);
  if (s == NULL) {
    if (!r->bad) abort();
    return NULL;
  }
  if ((const uint8_t *)s < body || (const uint8_t *)s + n >= body + len || s[n] != '\0' ||
      strlen(s) != n)
    abort();
  check_reader(r, body, len);
  if (slen) *slen = n;
  return s;
}

static void analyze_sql(const char *sql, size_t len) {
  if (!pgs_session_maybe(sql, len)) return;
  pgs_session_effects_t fx;
  pgs_session_analyze(sql, &fx);
  if (fx.nops < 0 || fx.nops > PGS_SESSION_MAX_OPS) abort();
  for (int i = 0; i < fx.nops; i++) {
    if (memchr(fx.ops[i].name, '\0', sizeof(fx.ops[i].name)) == NULL) abort();
    if ((fx.ops[i].kind == PGS_SET_OP_SET) != (fx.ops[i].sql != NULL)) abort();
  }
  if (fx.parse_failed) {
    /* Nothing was read from a statement that did not parse: no setting to
     * replay, no effect named. What pgshard could not analyse only within
     * its own limits (a lexer limit such as $99999, a chain or tree too
     * deep) pins the session, which is always safe. */
    if (fx.nops != 0 || (fx.flags & ~PGS_SESSION_PIN) != 0) abort();
    /* Not pinned means the server refuses the statement too, so it cannot
     * have changed the session: PostgreSQL's own grammar must reject it. */
    if (!(fx.flags & PGS_SESSION_PIN)) {
      PgQueryProtobufParseResult pr = pg_query_parse_protobuf(sql);
      bool accepted = pr.error == NULL;
      pg_query_free_protobuf_parse_result(pr);
      if (accepted) abort();
    }
  }
  pgs_session_effects_free(&fx);
}

/* Bind: portal, statement, parameter formats, parameter values, result
 * formats. Whether PostgreSQL would take it. */
static bool read_bind(pgs_reader_t *r, const uint8_t *body, size_t len, int *nvalues) {
  bool ok = true;
  read_cstr(r, body, len, NULL);
  read_cstr(r, body, len, NULL);
  int nformats = (uint16_t)pgs_read_i16(r);
  for (int i = 0; i < nformats && !r->bad; i++) pgs_read_i16(r);
  int nparams = (uint16_t)pgs_read_i16(r);
  if (nformats > 1 && nformats != nparams) ok = false;
  for (int i = 0; i < nparams && !r->bad; i++) {
    int32_t vlen = pgs_read_i32(r);
    if (vlen < -1) ok = false;
    if (vlen > 0 && pgs_read_bytes(r, (size_t)vlen) == NULL && !r->bad) abort();
  }
  int nresults = (uint16_t)pgs_read_i16(r);
  for (int i = 0; i < nresults && !r->bad; i++) pgs_read_i16(r);
  check_reader(r, body, len);
  *nvalues = nparams;
  return ok && !r->bad && pgs_reader_left(r) == 0;
}

static void check_inside(const void *p, size_t n, const uint8_t *body, size_t len) {
  const uint8_t *q = p;
  if (q == NULL || q < body || q > body + len || n > (size_t)(body + len - q)) abort();
}

static void check_zeroed(const void *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (((const uint8_t *)p)[i]) abort();
}

/* The typed readers on a body the field-by-field reading took (OK) or
 * refused; NVALUES is the Bind's parameter count it read. */
static void typed(char type, const uint8_t *body, size_t len, bool ok, int nvalues) {
  switch (type) {
  case 'P': {
    pgs_parse_msg_t m, head;
    if ((pgs_parse_read(body, len, &m) == PGS_OK) != ok) abort();
    if (!ok) {
      check_zeroed(&m, sizeof(m));
      return;
    }
    check_inside(m.name, m.name_len + 1, body, len);
    check_inside(m.query, m.query_len + 1, body, len);
    check_inside(m.type_oids, 4 * (size_t)m.ntypes, body, len);
    if (m.after_name + m.after_name_len != body + len ||
        m.after_query + m.after_query_len != body + len)
      abort();
    for (int i = 0; i < m.ntypes; i++) (void)pgs_parse_type_oid(&m, i);
    if (pgs_parse_read_head(body, len, &head) != PGS_OK || head.query != m.query ||
        head.after_name != m.after_name)
      abort();
    break;
  }
  case 'B': {
    pgs_bind_msg_t m, head;
    if ((pgs_bind_read(body, len, &m) == PGS_OK) != ok) abort();
    if (!ok) {
      check_zeroed(&m, sizeof(m));
      return;
    }
    if (m.nparams != nvalues) abort();
    check_inside(m.portal, m.portal_len + 1, body, len);
    check_inside(m.statement, m.statement_len + 1, body, len);
    check_inside(m.formats, 2 * (size_t)m.nformats, body, len);
    check_inside(m.params, m.params_len, body, len);
    check_inside(m.results, 2 * (size_t)m.nresults, body, len);
    size_t at = 0;
    const uint8_t *value;
    int32_t vlen;
    int n = 0;
    while (pgs_bind_next_value(&m, &at, &value, &vlen)) {
      if (vlen < 0 ? value != NULL : value == NULL) abort();
      if (value) check_inside(value, (size_t)vlen, body, len);
      (void)pgs_bind_param_format(&m, n);
      n++;
    }
    if (n != m.nparams || at != m.params_len) abort();
    if (pgs_bind_read_head(body, len, &head) != PGS_OK || head.statement != m.statement ||
        head.after_names != m.after_names)
      abort();
    break;
  }
  case 'D':
  case 'C': {
    pgs_describe_msg_t m;
    pgs_status_t st =
        type == 'D' ? pgs_describe_read(body, len, &m) : pgs_close_read(body, len, &m);
    if ((st == PGS_OK) != ok) abort();
    if (!ok) check_zeroed(&m, sizeof(m));
    if (ok && (m.name != (const char *)body + 1 || m.name_len + 2 != len)) abort();
    break;
  }
  case 'E': {
    pgs_execute_msg_t m;
    if ((pgs_execute_read(body, len, &m) == PGS_OK) != ok) abort();
    if (!ok) check_zeroed(&m, sizeof(m));
    if (ok && (m.portal != (const char *)body || m.portal_len + 5 != len)) abort();
    break;
  }
  default:
    break;
  }
}

/* What the proxy sends the server for a Bind or Describe of a prepared
 * statement: the same message under the server's name for the statement. */
static void rewrite(char type, const char *portal, size_t plen, uint8_t kind,
                    const pgs_reader_t *rest) {
  static const char server_name[] = "pgs_0123456789abcdef";
  pgs_buf_t b;
  pgs_buf_init(&b);
  size_t start = pgs_msg_begin(&b, type);
  if (type == 'B')
    pgs_buf_put(&b, portal, plen + 1);
  else
    pgs_buf_put_u8(&b, kind);
  pgs_buf_put_cstr(&b, server_name);
  size_t left = pgs_reader_left(rest);
  pgs_buf_put(&b, rest->p, left);
  pgs_msg_end(&b, start);

  char t;
  size_t total;
  if (pgs_msg_peek(b.data, b.len, SIZE_MAX, &t, &total) != PGS_OK || t != type || total != b.len)
    abort();
  size_t head = type == 'B' ? plen + 1 : 1;
  if (total != 5 + head + sizeof(server_name) + left) abort();
  pgs_reader_t r;
  pgs_reader_init(&r, b.data + 5, b.len - 5);
  if (type == 'B') {
    size_t n;
    const char *p = pgs_read_cstr(&r, &n);
    if (p == NULL || n != plen || memcmp(p, portal, plen) != 0) abort();
  } else if (pgs_read_u8(&r) != kind) {
    abort();
  }
  const char *name = pgs_read_cstr(&r, NULL);
  if (name == NULL || strcmp(name, server_name) != 0 || pgs_reader_left(&r) != left) abort();
  pgs_buf_free(&b);
}

static void message(char type, const uint8_t *body, size_t len) {
  pgs_reader_t r;
  size_t n, plen = 0, slen = 0;
  const char *s, *portal = NULL;
  uint8_t kind = 0;
  pgs_reader_init(&r, body, len);
  switch (type) {
  case 'Q':
    s = read_cstr(&r, body, len, &n);
    if (s) analyze_sql(s, n);
    break;
  case 'P': {
    read_cstr(&r, body, len, NULL);
    s = read_cstr(&r, body, len, &n);
    if (s) analyze_sql(s, n);
    int ntypes = (uint16_t)pgs_read_i16(&r);
    for (int i = 0; i < ntypes && !r.bad; i++) pgs_read_i32(&r);
    check_reader(&r, body, len);
    typed(type, body, len, !r.bad && pgs_reader_left(&r) == 0, 0);
    break;
  }
  case 'B':
  case 'D':
    if (type == 'B')
      portal = read_cstr(&r, body, len, &plen);
    else
      kind = pgs_read_u8(&r);
    s = read_cstr(&r, body, len, &slen);
    if (!r.bad && slen > 0 && (type == 'B' || kind == 'S')) rewrite(type, portal, plen, kind, &r);
    if (type == 'B') {
      int nvalues = 0;
      pgs_reader_init(&r, body, len);
      bool ok = read_bind(&r, body, len, &nvalues);
      typed(type, body, len, ok, nvalues);
    } else {
      typed(type, body, len, !r.bad && pgs_reader_left(&r) == 0 && (kind == 'S' || kind == 'P'), 0);
    }
    break;
  case 'C':
    kind = pgs_read_u8(&r);
    read_cstr(&r, body, len, NULL);
    typed(type, body, len, !r.bad && pgs_reader_left(&r) == 0 && (kind == 'S' || kind == 'P'), 0);
    break;
  case 'E':
    read_cstr(&r, body, len, NULL);
    pgs_read_i32(&r);
    typed(type, body, len, !r.bad && pgs_reader_left(&r) == 0, 0);
    break;
  case 'p': { /* SASLInitialResponse: mechanism, length, data */
    read_cstr(&r, body, len, NULL);
    int32_t dlen = pgs_read_i32(&r);
    if (!r.bad && dlen >= 0 && (size_t)dlen == pgs_reader_left(&r) &&
        pgs_read_bytes(&r, (size_t)dlen) == NULL)
      abort();
    break;
  }
  default:
    break;
  }
  check_reader(&r, body, len);

  /* The same bytes as a server's ErrorResponse/NoticeResponse body. */
  pgs_error_fields_t f;
  pgs_error_parse(body, len, &f);
  if (f.severity == NULL || f.sqlstate == NULL || f.message == NULL) abort();
  const uint8_t *m = (const uint8_t *)f.message;
  if (*f.message && (m < body || m >= body + len)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = 1 + data[0] % 64;
  data++;
  size--;

  pgs_buf_t in;
  pgs_buf_init(&in);
  size_t fed = 0;
  bool open = true;
  while (open && fed < size) {
    size_t n = size - fed < chunk ? size - fed : chunk;
    pgs_buf_put(&in, data + fed, n);
    fed += n;
    for (;;) {
      char type = 0;
      size_t total = 0;
      pgs_status_t st = pgs_msg_peek(in.data, in.len, MAX_MESSAGE, &type, &total);
      if (st == PGS_EAGAIN) {
        if (in.len >= 5) abort();
        break;
      }
      if (st == PGS_EPROTO || st == PGS_ETOOBIG || !pgs_frontend_type_valid(type)) {
        open = false; /* the proxy sends an ErrorResponse and closes */
        break;
      }
      if (st != PGS_OK || total < 5 || total > MAX_MESSAGE || type != (char)in.data[0]) abort();
      if (in.len < total) break; /* the rest of the body is still on its way */
      /* Copied to its own allocation so ASan sees any read past its end. */
      uint8_t *body = pgs_xmalloc(total - 5);
      memcpy(body, in.data + 5, total - 5);
      message(type, body, total - 5);
      free(body);
      pgs_buf_consume(&in, total);
      if (type == 'X') {
        open = false;
        break;
      }
    }
  }
  pgs_buf_free(&in);
  return 0;
}
