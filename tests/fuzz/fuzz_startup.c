/*
 * fuzz_startup.c — libFuzzer harness for the startup packet parser
 * (pgs_startup_parse in router/proto.c), the first thing a client sends and
 * so the first bytes from the network pgshard reads.
 *
 * Input: the packet body, after its 4-byte length. Oracles beyond the
 * sanitizers: a refusal leaves a NUL-terminated reason; an accepted request
 * has exactly the size its code calls for; an accepted StartupMessage points
 * only inside the input and, written out again, is the input byte for byte,
 * so nothing was skipped or invented. pgs_startup_get must find each name's
 * first value.
 */
#include <stdint.h>
#include <string.h>

#include "pgshard/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool inside(const uint8_t *data, size_t size, const char *s) {
  const uint8_t *p = (const uint8_t *)s;
  return p >= data && p < data + size && memchr(p, '\0', (size_t)(data + size - p)) != NULL;
}

static void check_message(const uint8_t *data, size_t size, const pgs_startup_t *s) {
  if (s->nparams < 0 || s->nparams > PGS_MAX_PARAMS) abort();
  pgs_buf_t again;
  pgs_buf_init(&again);
  pgs_buf_put_i32(&again, s->code);
  for (int i = 0; i < s->nparams; i++) {
    if (!inside(data, size, s->names[i]) || !inside(data, size, s->values[i])) abort();
    if (s->names[i][0] == '\0') abort(); /* an empty name is the terminator */
    pgs_buf_put_cstr(&again, s->names[i]);
    pgs_buf_put_cstr(&again, s->values[i]);

    const char *found = pgs_startup_get(s, s->names[i]);
    int first = 0;
    while (strcmp(s->names[first], s->names[i]) != 0) first++;
    if (found != s->values[first]) abort();
  }
  pgs_buf_put_u8(&again, 0);
  if (again.len != size || memcmp(again.data, data, size) != 0) abort();
  pgs_buf_free(&again);

  /* What the proxy asks for at login. */
  static const char *const wanted[] = {
      "user", "database", "options", "application_name", "replication", "client_encoding", ""};
  for (size_t i = 0; i < PGS_ARRAY_LEN(wanted); i++) {
    const char *v = pgs_startup_get(s, wanted[i]);
    if (v && !inside(data, size, v)) abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The proxy refuses longer packets before parsing, as PostgreSQL does. */
  if (size > PGS_MAX_STARTUP_PACKET) return 0;

  pgs_startup_t s;
  char err[256];
  memset(err, 'x', sizeof(err));
  pgs_status_t status = pgs_startup_parse(data, size, &s, err, sizeof(err));
  if (status != PGS_OK) {
    if (status != PGS_EPROTO && status != PGS_EUNSUPPORTED) abort();
    if (memchr(err, '\0', sizeof(err)) == NULL || err[0] == '\0') abort();
    if (status == PGS_EUNSUPPORTED && strncmp(err, "unsupported frontend protocol", 29) != 0)
      abort();
    return 0;
  }
  switch (s.code) {
  case PGS_SSL_REQUEST_CODE:
  case PGS_GSSENC_REQUEST_CODE:
    if (size != 4 || s.nparams != 0) abort();
    break;
  case PGS_CANCEL_REQUEST_CODE:
    if (size != 12 || s.nparams != 0) abort();
    if (s.cancel_pid != (int32_t)pgs_get_u32(data + 4) ||
        s.cancel_key != (int32_t)pgs_get_u32(data + 8))
      abort();
    break;
  case PGS_PROTOCOL_3_0:
    check_message(data, size, &s);
    break;
  default:
    abort();
  }
  return 0;
}
