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

void pgs_log(pgs_log_level_t level, const char *fmt, ...) {
  char message[2048], line[4600], stamp[64];
  struct timeval tv;
  struct tm tm;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  size_t sl = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + sl, sizeof(stamp) - sl, ".%03dZ", (int)(tv.tv_usec / 1000));
  int n;
  if (log_json) {
    char escaped[4200];
    json_escape(escaped, sizeof(escaped), message);
    n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"pid\":%d,\"msg\":\"%s\"}\n",
                 stamp, level_names[level], (int)getpid(), escaped);
  } else {
    n = snprintf(line, sizeof(line), "%s [%d] %s: %s\n", stamp, (int)getpid(), level_names[level],
                 message);
  }
  if (n > (int)sizeof(line) - 1) n = (int)sizeof(line) - 1;
  ssize_t rc = write(STDERR_FILENO, line, (size_t)n);
  (void)rc;
}
