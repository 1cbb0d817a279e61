/*
 * log.h — logging to stderr, as text or one JSON object a line
 * (log_format = json). Thread-safe: each line is formatted in full and
 * written with one write(2).
 */
#ifndef PGSHARD_LOG_H
#define PGSHARD_LOG_H

#include "pgshard/common.h"

typedef enum {
  PGS_LOG_DEBUG,
  PGS_LOG_INFO,
  PGS_LOG_WARNING,
  PGS_LOG_ERROR,
  PGS_LOG_FATAL
} pgs_log_level_t;

void pgs_log_setup(bool json, bool debug);
bool pgs_log_enabled(pgs_log_level_t level);
PGS_PRINTF(2, 3) void pgs_log(pgs_log_level_t level, const char *fmt, ...);

/* A line with named fields: in JSON each is a key of the object (after ts,
 * level, pid, event, msg); in text they follow the message as key=value. */
typedef struct pgs_log_field {
  const char *key;
  const char *value; /* NULL: left out */
} pgs_log_field_t;
PGS_PRINTF(5, 6)
void pgs_log_event(pgs_log_level_t level, const char *event, const pgs_log_field_t *fields,
                   int nfields, const char *fmt, ...);

#define pgs_debug(...)                                                                             \
  do {                                                                                             \
    if (pgs_log_enabled(PGS_LOG_DEBUG)) pgs_log(PGS_LOG_DEBUG, __VA_ARGS__);                       \
  } while (0)
#define pgs_info(...) pgs_log(PGS_LOG_INFO, __VA_ARGS__)
#define pgs_warn(...) pgs_log(PGS_LOG_WARNING, __VA_ARGS__)
#define pgs_error(...) pgs_log(PGS_LOG_ERROR, __VA_ARGS__)

#endif
