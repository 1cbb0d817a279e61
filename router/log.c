/*
 * log.c — see log.h. Lives in the pure library because it only formats and
 * writes to stderr; both programs use it.
 */
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "pgshard/log.h"

static bool log_json;
static bool log_debug;

static const char *const level_names[] = {"debug", "info", "warning", "error", "fatal"};

void pgs_log_setup(bool json, bool debug) {
  log_json = json;
  log_debug = debug;
}

bool pgs_log_enabled(pgs_log_level_t level) { return level != PGS_LOG_DEBUG || log_debug; }

static size_t json_escape(char *out, size_t cap, const char *in) {
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)in; *p && n + 7 < cap; p++) {
    if (*p == '"' || *p == '\\') {
      out[n++] = '\\';
      out[n++] = (char)*p;
    } else if (*p < 0x20) {
      n += (size_t)snprintf(out + n, cap - n, "\\u%04x", *p);
    } else {
      out[n++] = (char)*p;
    }
  }
  out[n] = '\0';
  return n;
}

static void log_line(pgs_log_level_t level, const char *event, const pgs_log_field_t *fields,
                     int nfields, const char *message) {
  char line[8192], stamp[64];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  size_t sl = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + sl, sizeof(stamp) - sl, ".%03dZ", (int)(tv.tv_usec / 1000));
  size_t n;
  if (log_json) {
    char escaped[4200];
    json_escape(escaped, sizeof(escaped), message);
    n = (size_t)snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"pid\":%d", stamp,
                         level_names[level], (int)getpid());
    if (event && n < sizeof(line))
      n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"event\":\"%s\"", event);
    if (n < sizeof(line))
      n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"msg\":\"%s\"", escaped);
    for (int i = 0; i < nfields && n < sizeof(line); i++) {
      if (fields[i].value == NULL) continue;
      json_escape(escaped, sizeof(escaped), fields[i].value);
      n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"%s\":\"%s\"", fields[i].key, escaped);
    }
    if (n < sizeof(line)) n += (size_t)snprintf(line + n, sizeof(line) - n, "}\n");
  } else {
    n = (size_t)snprintf(line, sizeof(line), "%s [%d] %s: %s", stamp, (int)getpid(),
                         level_names[level], message);
    for (int i = 0; i < nfields && n < sizeof(line); i++)
      if (fields[i].value)
        n += (size_t)snprintf(line + n, sizeof(line) - n, " %s=%s", fields[i].key, fields[i].value);
    if (n < sizeof(line)) n += (size_t)snprintf(line + n, sizeof(line) - n, "\n");
  }
  if (n > sizeof(line) - 1) {
    n = sizeof(line) - 1;
    line[n - 1] = '\n';
  }
  ssize_t rc = write(STDERR_FILENO, line, n);
  (void)rc;
}

void pgs_log(pgs_log_level_t level, const char *fmt, ...) {
  char message[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  log_line(level, NULL, NULL, 0, message);
}

void pgs_log_event(pgs_log_level_t level, const char *event, const pgs_log_field_t *fields,
                   int nfields, const char *fmt, ...) {
  char message[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  log_line(level, event, fields, nfields, message);
}
