/*
 * binds.h — Bind parameter values for unit tests of the router (route.h's
 * pgs_param_values_t), as a client's Bind carries them: text or binary,
 * with the Parse-declared type OID. Header-only: each test program is one
 * file.
 */
#ifndef PGSHARD_TEST_BINDS_H
#define PGSHARD_TEST_BINDS_H

#include <string.h>

#include "pgshard/route.h"

typedef struct binds {
  int n;
  const uint8_t *data[8];
  int32_t len[8];
  int16_t format[8];
  uint32_t oid[8];
  uint8_t raw[8][8]; /* bind_int's bytes */
  pgs_param_values_t values;
} binds_t;

static inline void bind_value(binds_t *b, const void *data, int32_t len, int16_t format,
                              uint32_t oid) {
  b->data[b->n] = data;
  b->len[b->n] = len;
  b->format[b->n] = format;
  b->oid[b->n] = oid;
  b->n++;
}

/* Text format, declared type OID (0: unspecified). */
static inline void bind_text_typed(binds_t *b, const char *text, uint32_t oid) {
  bind_value(b, text, (int32_t)strlen(text), 0, oid);
}

static inline void bind_text(binds_t *b, const char *text) { bind_text_typed(b, text, 0); }

static inline void bind_binary(binds_t *b, const void *data, size_t len, uint32_t declared) {
  bind_value(b, data, (int32_t)len, 1, declared);
}

/* A BYTES-byte big-endian integer in binary format. */
static inline void bind_int(binds_t *b, int64_t v, int bytes, uint32_t oid) {
  for (int i = 0; i < bytes; i++) b->raw[b->n][i] = (uint8_t)((uint64_t)v >> (8 * (bytes - 1 - i)));
  bind_value(b, b->raw[b->n], bytes, 1, oid);
}

static inline void bind_null(binds_t *b) { bind_value(b, NULL, -1, 0, 0); }

static inline const pgs_param_values_t *params_of(binds_t *b) {
  b->values = (pgs_param_values_t){.n = b->n,
                                   .data = b->data,
                                   .len = b->len,
                                   .format = b->format,
                                   .type_oid = b->oid,
                                   .ntypes = b->n};
  return &b->values;
}

#endif
