/*
 * messages.h — frontend messages as a client sends them (Parse, Bind,
 * Describe/Close, Execute), for the unit tests of the codec and the
 * planner. Header-only: each test program is one file.
 */
#ifndef PGSHARD_TEST_MESSAGES_H
#define PGSHARD_TEST_MESSAGES_H

#include <string.h>

#include "pgshard/proto.h"

static inline void put_parse(pgs_buf_t *b, const char *name, const char *query, int ntypes,
                             const uint32_t *oids) {
  size_t start = pgs_msg_begin(b, 'P');
  pgs_buf_put_cstr(b, name);
  pgs_buf_put_cstr(b, query);
  pgs_buf_put_i16(b, (int16_t)(uint16_t)ntypes);
  for (int i = 0; i < ntypes; i++) pgs_buf_put_i32(b, (int32_t)(oids ? oids[i] : 0));
  pgs_msg_end(b, start);
}

/* A Bind of NPARAMS values VALUES (NULL for SQL NULL), text of each. */
static inline void put_bind(pgs_buf_t *b, const char *portal, const char *statement, int nformats,
                            const int16_t *formats, int nparams, const char *const *values,
                            int nresults, const int16_t *results) {
  size_t start = pgs_msg_begin(b, 'B');
  pgs_buf_put_cstr(b, portal);
  pgs_buf_put_cstr(b, statement);
  pgs_buf_put_i16(b, (int16_t)(uint16_t)nformats);
  for (int i = 0; i < nformats; i++) pgs_buf_put_i16(b, formats[i]);
  pgs_buf_put_i16(b, (int16_t)(uint16_t)nparams);
  for (int i = 0; i < nparams; i++) {
    const char *v = values ? values[i] : NULL;
    pgs_buf_put_i32(b, v ? (int32_t)strlen(v) : -1);
    if (v) pgs_buf_put(b, v, strlen(v));
  }
  pgs_buf_put_i16(b, (int16_t)(uint16_t)nresults);
  for (int i = 0; i < nresults; i++) pgs_buf_put_i16(b, results[i]);
  pgs_msg_end(b, start);
}

static inline void put_target(pgs_buf_t *b, char type, char kind, const char *name) {
  size_t start = pgs_msg_begin(b, type);
  pgs_buf_put_u8(b, (uint8_t)kind);
  pgs_buf_put_cstr(b, name);
  pgs_msg_end(b, start);
}

static inline void put_execute(pgs_buf_t *b, const char *portal, int32_t max_rows) {
  size_t start = pgs_msg_begin(b, 'E');
  pgs_buf_put_cstr(b, portal);
  pgs_buf_put_i32(b, max_rows);
  pgs_msg_end(b, start);
}

#endif
