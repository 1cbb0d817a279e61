/*
 * trace.c — finding a client's W3C traceparent in its SQL comments (see
 * trace.h). sqlcommenter puts key='value' pairs, comma-separated and
 * URL-encoded, in a trailing C-style comment; some clients put the
 * traceparent in a leading one, or in a -- comment. Every comment is
 * looked into, nothing else: a traceparent inside a string literal is data.
 */
#include <string.h>

#include "pgshard/trace.h"

static bool lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}

static bool all_zero(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '0') return false;
  return true;
}

bool pgs_traceparent_valid(const char *t, size_t len) {
  if (len != PGS_TRACEPARENT_LEN || t[2] != '-' || t[35] != '-' || t[52] != '-') return false;
  if (!lower_hex(t, 2) || !lower_hex(t + 3, 32) || !lower_hex(t + 36, 16) || !lower_hex(t + 53, 2))
    return false;
  if (t[0] == 'f' && t[1] == 'f') return false; /* version ff is invalid */
  return !all_zero(t + 3, 32) && !all_zero(t + 36, 16);
}

/* A traceparent in the comment text C (N bytes): traceparent='value' or
 * traceparent=value, the value possibly with its dashes URL-encoded (%2D,
 * as sqlcommenter writes them). */
static bool in_comment(const char *c, size_t n, char out[PGS_TRACEPARENT_BUF]) {
  static const char key[] = "traceparent";
  const size_t klen = sizeof(key) - 1;
  for (size_t at = 0; at + klen < n; at++) {
    if (memcmp(c + at, key, klen) != 0) continue;
    if (at > 0 && (c[at - 1] == '_' || (c[at - 1] >= 'a' && c[at - 1] <= 'z'))) continue;
    size_t i = at + klen;
    while (i < n && c[i] == ' ') i++;
    if (i >= n || c[i] != '=') continue;
    i++;
    while (i < n && c[i] == ' ') i++;
    bool quoted = i < n && c[i] == '\'';
    if (quoted) i++;
    char value[PGS_TRACEPARENT_BUF];
    size_t v = 0;
    while (i < n && v < PGS_TRACEPARENT_LEN) {
      if (c[i] == '%' && i + 2 < n && c[i + 1] == '2' && (c[i + 2] == 'D' || c[i + 2] == 'd')) {
        value[v++] = '-';
        i += 3;
      } else if (c[i] == '\'' || c[i] == ',' || c[i] == ' ' || c[i] == '*') {
        break;
      } else {
        value[v++] = c[i++];
      }
    }
    bool ended = i >= n || c[i] == '\'' || c[i] == ',' || c[i] == ' ' || c[i] == '*';
    if (v == PGS_TRACEPARENT_LEN && ended && pgs_traceparent_valid(value, v)) {
      memcpy(out, value, v);
      out[v] = '\0';
      return true;
    }
  }
  return false;
}

bool pgs_traceparent_find(const char *sql, size_t len, char out[PGS_TRACEPARENT_BUF]) {
  if (len > 2 * PGS_TRACE_SCAN_MAX) {
    /* The head and the tail, where comments go: the middle is data. */
    return pgs_traceparent_find(sql, PGS_TRACE_SCAN_MAX, out) ||
           pgs_traceparent_find(sql + len - PGS_TRACE_SCAN_MAX, PGS_TRACE_SCAN_MAX, out);
  }
  size_t i = 0;
  while (i < len) {
    char ch = sql[i];
    if (ch == '\'' || ch == '"') { /* a string or quoted identifier: skip it */
      i++;
      while (i < len && sql[i] != ch) i++;
      i++;
    } else if (ch == '/' && i + 1 < len && sql[i + 1] == '*') {
      size_t start = i + 2;
      const char *end = NULL;
      for (size_t j = start; j + 1 < len; j++)
        if (sql[j] == '*' && sql[j + 1] == '/') {
          end = sql + j;
          break;
        }
      size_t n = end ? (size_t)(end - (sql + start)) : len - start;
      if (in_comment(sql + start, n, out)) return true;
      i = start + n + 2;
    } else if (ch == '-' && i + 1 < len && sql[i + 1] == '-') {
      size_t start = i + 2, j = start;
      while (j < len && sql[j] != '\n') j++;
      if (in_comment(sql + start, j - start, out)) return true;
      i = j;
    } else {
      i++;
    }
  }
  return false;
}
