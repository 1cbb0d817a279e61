/*
 * common.c — status strings, assertion failure and aborting allocators.
 */
#include <string.h>

#include "pgshard/common.h"

const char *pgs_status_str(pgs_status_t status) {
  switch (status) {
#define PGS_STATUS_CASE(name, desc)                                                                \
  case PGS_##name:                                                                                 \
    return desc;
    PGS_STATUS_MAP(PGS_STATUS_CASE)
#undef PGS_STATUS_CASE
  }
  return "unknown status";
}

void pgs_assert_fail(const char *cond, const char *file, int line) {
  fprintf(stderr, "pgshard: assertion failed: %s (%s:%d)\n", cond, file, line);
  abort();
}

static void *check_alloc(void *p) {
  if (p == NULL) {
    fprintf(stderr, "pgshard: out of memory\n");
    abort();
  }
  return p;
}

void *pgs_xmalloc(size_t size) { return check_alloc(malloc(size ? size : 1)); }
void *pgs_xcalloc(size_t n, size_t size) { return check_alloc(calloc(n ? n : 1, size ? size : 1)); }
void *pgs_xrealloc(void *p, size_t size) { return check_alloc(realloc(p, size ? size : 1)); }
char *pgs_xstrdup(const char *s) { return check_alloc(strdup(s)); }
char *pgs_xstrndup(const char *s, size_t n) { return check_alloc(strndup(s, n)); }

char *pgs_read_all(FILE *f, size_t *len) {
  size_t cap = 8192, n = 0, got;
  char *buf = pgs_xmalloc(cap + 1);
  while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) buf = pgs_xrealloc(buf, (cap *= 2) + 1);
  }
  buf[n] = '\0';
  if (len) *len = n;
  return buf;
}
