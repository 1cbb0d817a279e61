/*
 * common.h — what every pgshard module shares: the status codes (one X-macro
 * generates the enum and its strings so they cannot drift), the assertion
 * macro that stays on independently of NDEBUG, and the hard caps that bound
 * every buffer the proxy owns.
 */
#ifndef PGSHARD_COMMON_H
#define PGSHARD_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#define PGS_VERSION "0.1.0"

#define PGS_MUST_USE __attribute__((warn_unused_result))
#define PGS_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define PGS_UNUSED(x) ((void)(x))
#define PGS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
/* The struct of TYPE whose MEMBER is at PTR. */
#define pgs_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* name, description */
#define PGS_STATUS_MAP(X)                                                                          \
  X(OK, "success")                                                                                 \
  X(ENOMEM, "out of memory")                                                                       \
  X(EINVAL, "invalid argument")                                                                    \
  X(EPROTO, "protocol violation")                                                                  \
  X(ETOOBIG, "size over the configured limit")                                                     \
  X(EAGAIN, "need more data")                                                                      \
  X(ECONFIG, "invalid configuration")                                                              \
  X(EAUTH, "authentication failed")                                                                \
  X(EIO, "input/output error")                                                                     \
  X(ENOTFOUND, "not found")                                                                        \
  X(EUNSUPPORTED, "not supported")

typedef enum {
#define PGS_STATUS_ENUM(name, desc) PGS_##name,
  PGS_STATUS_MAP(PGS_STATUS_ENUM)
#undef PGS_STATUS_ENUM
} pgs_status_t;

const char *pgs_status_str(pgs_status_t status);

/* Hard limits. Configurable caps (max_message_size...) live in the config. */
#define PGS_MAX_STARTUP_PACKET 10000 /* same limit PostgreSQL enforces */
#define PGS_MAX_NAME 64              /* NAMEDATALEN */
#define PGS_MAX_PASSWORD 1024
#define PGS_MAX_PARAMS 64 /* startup parameters a client may send */

#ifdef PGS_DEBUG_ASSERT
#define PGS_ASSERT(cond)                                                                           \
  do {                                                                                             \
    if (!(cond)) pgs_assert_fail(#cond, __FILE__, __LINE__);                                       \
  } while (0)
#else
#define PGS_ASSERT(cond) ((void)0)
#endif
__attribute__((noreturn)) void pgs_assert_fail(const char *cond, const char *file, int line);

/* Allocation that aborts on failure: the proxy cannot do anything useful
 * once malloc fails, and checking every small allocation hides real logic. */
void *pgs_xmalloc(size_t size);
void *pgs_xcalloc(size_t n, size_t size);
void *pgs_xrealloc(void *p, size_t size);
char *pgs_xstrdup(const char *s);
char *pgs_xstrndup(const char *s, size_t n);
/* Everything left in F, NUL-terminated (malloc'ed); *LEN (may be NULL) its
 * length, which is less than strlen only when F holds a NUL byte. */
char *pgs_read_all(FILE *f, size_t *len);

#endif
