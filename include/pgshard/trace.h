/*
 * trace.h — a W3C trace context a client puts in its SQL, sqlcommenter
 * style: a comment holding traceparent='00-<trace id>-<parent id>-<flags>'
 * (router/trace.c). pgshard keeps the comment in what it sends and logs the
 * value with the request, so a trace can be followed from the application
 * through pgshard to the server's own log.
 */
#ifndef PGSHARD_TRACE_H
#define PGSHARD_TRACE_H

#include "pgshard/common.h"

/* "00-" 32 hex "-" 16 hex "-" 2 hex, and the NUL. */
#define PGS_TRACEPARENT_LEN 55
#define PGS_TRACEPARENT_BUF (PGS_TRACEPARENT_LEN + 1)

/* The first valid traceparent in a comment of SQL (LEN bytes; strings and
 * quoted identifiers are not looked into) copied to OUT: true when found.
 * Valid as W3C Trace Context says: lower-case hex, version not ff, trace
 * and parent ids not all zeros. A statement over twice PGS_TRACE_SCAN_MAX
 * bytes is searched in its head and tail only, where comments go. Dollar
 * quotes and backslash escapes are not followed: a false find can only
 * name a wrong trace in a log, never change where anything goes. */
#define PGS_TRACE_SCAN_MAX 4096
bool pgs_traceparent_find(const char *sql, size_t len, char out[PGS_TRACEPARENT_BUF]);
/* Whether TEXT (LEN bytes) is a valid traceparent value. */
bool pgs_traceparent_valid(const char *text, size_t len);

#endif
