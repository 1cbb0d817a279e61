/*
 * value.c — DataRow values of the types a cross-shard merge orders and
 * aggregates, decoded just far enough to compare and add them exactly as
 * PostgreSQL 15 does, and merged results printed byte for byte as one
 * server would have printed them.
 *
 * Invariants:
 *  - Nothing reads past a value's length: values are not NUL-terminated, so
 *    every parser takes (pointer, length) and fails (22P02 text, 22P03
 *    binary) rather than guess. A value is accepted only in the forms the
 *    server prints, plus the harmless variants its own input functions take
 *    (blanks around numbers, "inf", upper-case uuids ...).
 *  - Numerics are PostgreSQL's NumericVar: base-10000 digits, the weight of
 *    the first, a display scale; always stripped of leading and trailing
 *    zero digits (as make_result leaves them), so the weight alone orders
 *    magnitudes. At most PGS_VALUE_MAX_DIGITS digits (54000 beyond).
 *  - Comparing allocates nothing: numerics decode into arrays on the stack,
 *    bytea in escape or hex form is decoded as it is compared. No state is
 *    kept between calls, so worker threads share this module freely.
 *  - strtod/strtof/printf are used in the C locale (pgshard never calls
 *    setlocale), where they read and print the server's forms exactly.
 *  - Output follows the server's routines: numeric_out / numeric_send (what
 *    make_result leaves), float8out / float4out (the shortest string that
 *    reads back, fixed notation for decimal exponents -4..14, or -4..5 for
 *    real), int8out; avg is numeric_div's select_div_scale and rounding.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "pgshard/value.h"

#define NBASE 10000
#define DEC_DIGITS 4
#define MAX_DIGITS PGS_VALUE_MAX_DIGITS
/* An addition spans at most both operands and a carry; a sum this wide
 * whose operands do not overlap is over MAX_DIGITS anyway. */
#define ADD_SCRATCH (2 * MAX_DIGITS + 4)

/* numeric.c: limits of the on-disk format and of numeric_div's scale. */
#define NUMERIC_WEIGHT_MAX 32767
#define NUMERIC_DSCALE_MAX 0x3FFF
#define NUMERIC_MIN_SIG_DIGITS 16
#define NUMERIC_MAX_DISPLAY_SCALE 1000

/* numeric_send's sign words. */
#define WIRE_POS 0x0000
#define WIRE_NEG 0x4000
#define WIRE_NAN 0xC000
#define WIRE_PINF 0xD000
#define WIRE_NINF 0xF000

/* pgs_sum_t.sign for numeric sums. */
enum { SUM_POS = 0, SUM_NEG = 1, SUM_NAN = 2, SUM_PINF = 3, SUM_NINF = 4 };

/* timestamp.h: the valid range of timestamps, microseconds from 2000. */
#define MIN_TIMESTAMP INT64_C(-211813488000000000)
#define END_TIMESTAMP INT64_C(9223371331200000000)
#define USECS_PER_DAY INT64_C(86400000000)
/* date.h: the valid range of dates, days from 2000-01-01. */
#define MIN_DATE_DAYS (-2451545)
#define END_DATE_DAYS (2147483494 - 2451545)

/* ---- errors ---- */

PGS_PRINTF(3, 4)
static pgs_status_t fail(pgs_value_error_t *err, const char *sqlstate, const char *fmt, ...) {
  if (err) {
    snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", sqlstate);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
  }
  return PGS_EINVAL;
}

/* A value for a message: at most 48 bytes, cut on a UTF-8 boundary so the
 * ErrorResponse stays valid text, control bytes shown as '?'. */
static const char *show(const uint8_t *p, size_t len, char buf[64]) {
  size_t n = len;
  if (n > 48) {
    n = 48;
    while (n > 0 && (p[n] & 0xC0) == 0x80) n--;
  }
  for (size_t i = 0; i < n; i++) buf[i] = (p[i] < 0x20 || p[i] == 0x7F) ? '?' : (char)p[i];
  if (n < len) {
    memcpy(buf + n, "...", 4);
  } else {
    buf[n] = '\0';
  }
  return buf;
}

static const struct {
  uint32_t oid;
  const char *name;
} type_names[] = {
    {PGS_OID_BOOL, "boolean"},
    {PGS_OID_BYTEA, "bytea"},
    {18, "\"char\""},
    {PGS_OID_NAME, "name"},
    {PGS_OID_INT8, "bigint"},
    {PGS_OID_INT2, "smallint"},
    {PGS_OID_INT4, "integer"},
    {PGS_OID_TEXT, "text"},
    {PGS_OID_OID, "oid"},
    {114, "json"},
    {142, "xml"},
    {600, "point"},
    {650, "cidr"},
    {PGS_OID_FLOAT4, "real"},
    {PGS_OID_FLOAT8, "double precision"},
    {705, "unknown"},
    {790, "money"},
    {829, "macaddr"},
    {869, "inet"},
    {1000, "boolean[]"},
    {1005, "smallint[]"},
    {1007, "integer[]"},
    {1009, "text[]"},
    {1016, "bigint[]"},
    {1022, "double precision[]"},
    {PGS_OID_BPCHAR, "character"},
    {PGS_OID_VARCHAR, "character varying"},
    {PGS_OID_DATE, "date"},
    {PGS_OID_TIME, "time without time zone"},
    {PGS_OID_TIMESTAMP, "timestamp without time zone"},
    {PGS_OID_TIMESTAMPTZ, "timestamp with time zone"},
    {PGS_OID_INTERVAL, "interval"},
    {1231, "numeric[]"},
    {1266, "time with time zone"},
    {1560, "bit"},
    {1562, "bit varying"},
    {PGS_OID_NUMERIC, "numeric"},
    {2249, "record"},
    {PGS_OID_UUID, "uuid"},
    {3614, "tsvector"},
    {3802, "jsonb"},
};

static const char *type_name(uint32_t oid) {
  for (size_t i = 0; i < PGS_ARRAY_LEN(type_names); i++)
    if (type_names[i].oid == oid) return type_names[i].name;
  return NULL;
}

/* 0A000 naming the type: "cannot compare values of type interval (oid
 * 1186) across shards". */
static pgs_status_t fail_type(pgs_value_error_t *err, const char *verb, uint32_t oid) {
  const char *name = type_name(oid);
  if (name)
    return fail(err, "0A000", "cannot %s values of type %s (oid %u) across shards", verb, name,
                oid);
  return fail(err, "0A000", "cannot %s values of type oid %u across shards", verb, oid);
}

static pgs_status_t fail_syntax(pgs_value_error_t *err, uint32_t oid, const uint8_t *p,
                                size_t len) {
  char buf[64];
  return fail(err, "22P02", "invalid input syntax for type %s: \"%s\"", type_name(oid),
              show(p, len, buf));
}

static pgs_status_t fail_binary(pgs_value_error_t *err, uint32_t oid, const char *what) {
  return fail(err, "22P03", "incorrect binary data format for type %s: %s", type_name(oid), what);
}

static pgs_status_t fail_binary_length(pgs_value_error_t *err, uint32_t oid, size_t len,
                                       size_t want) {
  char what[80];
  snprintf(what, sizeof(what), "%zu bytes, expected %zu", len, want);
  return fail_binary(err, oid, what);
}

static pgs_status_t fail_too_long(pgs_value_error_t *err) {
  return fail(err, "54000",
              "numeric value too long to merge across shards (more than %d base-10000 digits)",
              MAX_DIGITS);
}

static pgs_status_t check_format(int format, pgs_value_error_t *err) {
  if (format == 0 || format == 1) return PGS_OK;
  return fail(err, "22P03", "unsupported format code: %d", format);
}

/* ---- small readers ---- */

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint64_t get_u64(const uint8_t *p) {
  return ((uint64_t)pgs_get_u32(p) << 32) | pgs_get_u32(p + 4);
}
static void put_u64(pgs_buf_t *out, uint64_t v) {
  uint8_t b[8];
  pgs_set_u32(b, (uint32_t)(v >> 32));
  pgs_set_u32(b + 4, (uint32_t)v);
  pgs_buf_put(out, b, 8);
}

/* isspace() in the C locale, which is what the server's input functions
 * skip around numbers. */
static bool is_blank(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

static void trim(const uint8_t **p, size_t *len) {
  while (*len > 0 && is_blank(**p)) (*p)++, (*len)--;
  while (*len > 0 && is_blank((*p)[*len - 1])) (*len)--;
}

/* Whether P[0..LEN) is WORD, ignoring case. */
static bool equals_ci(const uint8_t *p, size_t len, const char *word) {
  size_t n = strlen(word);
  if (len != n) return false;
  for (size_t i = 0; i < n; i++)
    if (lower(p[i]) != (uint8_t)word[i]) return false;
  return true;
}

/* Whether P[0..LEN) is a non-empty prefix of WORD, ignoring case. */
static bool prefix_ci(const uint8_t *p, size_t len, const char *word) {
  if (len == 0 || len > strlen(word)) return false;
  for (size_t i = 0; i < len; i++)
    if (lower(p[i]) != (uint8_t)word[i]) return false;
  return true;
}

static int bytes_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
  size_t n = alen < blen ? alen : blen;
  int c = n ? memcmp(a, b, n) : 0;
  if (c) return c < 0 ? -1 : 1;
  return (alen > blen) - (alen < blen);
}

/* ---- integers ---- */

/* int2in / int4in / int8in / oidin: blanks around, one sign, decimal digits,
 * within the type's range (oid also takes negative 32-bit values, as oidin,
 * read modulo 2^32). */
static pgs_status_t parse_int_text(uint32_t oid, const uint8_t *s, size_t len, int64_t *out,
                                   pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t n = len;
  trim(&p, &n);
  size_t i = 0;
  bool neg = false;
  if (i < n && (p[i] == '-' || p[i] == '+')) neg = p[i++] == '-';
  if (i == n) return fail_syntax(err, oid, s, len);
  uint64_t mag = 0;
  bool overflow = false;
  for (; i < n; i++) {
    if (!is_digit(p[i])) return fail_syntax(err, oid, s, len);
    unsigned d = p[i] - '0';
    if (mag > (UINT64_MAX - d) / 10)
      overflow = true;
    else
      mag = mag * 10 + d;
  }
  int64_t lo = INT64_MIN, hi = INT64_MAX;
  switch (oid) {
  case PGS_OID_INT2:
    lo = INT16_MIN, hi = INT16_MAX;
    break;
  case PGS_OID_INT4:
    lo = INT32_MIN, hi = INT32_MAX;
    break;
  case PGS_OID_OID:
    lo = INT32_MIN, hi = UINT32_MAX;
    break;
  }
  int64_t v = 0;
  if (!overflow) {
    if (neg && mag <= (uint64_t)INT64_MAX + 1)
      v = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    else if (!neg && mag <= (uint64_t)INT64_MAX)
      v = (int64_t)mag;
    else
      overflow = true;
  }
  if (overflow || v < lo || v > hi) {
    char buf[64];
    return fail(err, "22003", "value \"%s\" is out of range for type %s", show(s, len, buf),
                type_name(oid));
  }
  if (oid == PGS_OID_OID && v < 0) v += INT64_C(4294967296);
  *out = v;
  return PGS_OK;
}

/* An integer-valued type's value in either format, as int64. */
static pgs_status_t decode_int(uint32_t oid, int format, const uint8_t *p, size_t len, int64_t *out,
                               pgs_value_error_t *err) {
  if (format == 0) return parse_int_text(oid, p, len, out, err);
  size_t want = oid == PGS_OID_INT2 ? 2 : oid == PGS_OID_INT8 ? 8 : 4;
  if (len != want) return fail_binary_length(err, oid, len, want);
  switch (oid) {
  case PGS_OID_INT2:
    *out = (int16_t)get_u16(p);
    break;
  case PGS_OID_INT4:
    *out = (int32_t)pgs_get_u32(p);
    break;
  case PGS_OID_OID:
    *out = pgs_get_u32(p);
    break;
  default:
    *out = (int64_t)get_u64(p);
  }
  return PGS_OK;
}

/* ---- bool ---- */

/* boolin (parse_bool_with_len): t/true/y/yes/on/1 and f/false/n/no/off/0,
 * any case, any unambiguous prefix of the words, blanks around. */
static pgs_status_t parse_bool_text(const uint8_t *s, size_t len, int64_t *out,
                                    pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t n = len;
  trim(&p, &n);
  if (n > 0) {
    switch (lower(p[0])) {
    case 't':
      if (prefix_ci(p, n, "true")) return *out = 1, PGS_OK;
      break;
    case 'f':
      if (prefix_ci(p, n, "false")) return *out = 0, PGS_OK;
      break;
    case 'y':
      if (prefix_ci(p, n, "yes")) return *out = 1, PGS_OK;
      break;
    case 'n':
      if (prefix_ci(p, n, "no")) return *out = 0, PGS_OK;
      break;
    case 'o':
      /* "o" alone could be on or off */
      if (equals_ci(p, n, "on")) return *out = 1, PGS_OK;
      if (n >= 2 && prefix_ci(p, n, "off")) return *out = 0, PGS_OK;
      break;
    case '1':
      if (n == 1) return *out = 1, PGS_OK;
      break;
    case '0':
      if (n == 1) return *out = 0, PGS_OK;
      break;
    }
  }
  return fail_syntax(err, PGS_OID_BOOL, s, len);
}

/* ---- dates and times ---- */

/* Days from 2000-01-01 to a proleptic Gregorian date, Y astronomical (1 BC
 * is year 0), by Howard Hinnant's days_from_civil. */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468 - 10957;
}

static int days_in_month(int64_t y, int m) {
  static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

typedef struct scan {
  const uint8_t *p, *end;
} scan_t;

/* Reads MIN..MAX decimal digits into *V; false if fewer, or more follow. */
static bool scan_number(scan_t *s, int min, int max, int64_t *v) {
  int n = 0;
  *v = 0;
  while (s->p < s->end && is_digit(*s->p)) {
    if (++n > max) return false;
    *v = *v * 10 + (*s->p++ - '0');
  }
  return n >= min;
}

static bool scan_char(scan_t *s, char c) {
  if (s->p < s->end && *s->p == (uint8_t)c) return s->p++, true;
  return false;
}

/* " BC" or " AD" at the end of ISO output; true when BC. */
static bool scan_era(scan_t *s) {
  if (s->end - s->p == 3 && s->p[0] == ' ' && equals_ci(s->p + 1, 2, "bc")) {
    s->p += 3;
    return true;
  }
  if (s->end - s->p == 3 && s->p[0] == ' ' && equals_ci(s->p + 1, 2, "ad")) s->p += 3;
  return false;
}

/* YYYY-MM-DD (ISO, as date_out and timestamp_out print it; the year has
 * four or more digits). The era is read by the caller. */
static bool scan_ymd(scan_t *s, int64_t *y, int *m, int *d) {
  int64_t mm, dd;
  if (!scan_number(s, 1, 7, y) || !scan_char(s, '-') || !scan_number(s, 1, 2, &mm) ||
      !scan_char(s, '-') || !scan_number(s, 1, 2, &dd))
    return false;
  *m = (int)mm;
  *d = (int)dd;
  return true;
}

/* Days from 2000-01-01 of a year (BC when BC), month, day; false when no
 * such date. */
static bool ymd_days(int64_t y, int m, int d, bool bc, int64_t *days) {
  if (y < 1 || m < 1 || m > 12) return false;
  if (bc) y = 1 - y;
  if (d < 1 || d > days_in_month(y, m)) return false;
  *days = days_from_civil(y, m, d);
  return true;
}

/* HH:MM:SS[.ffffff] as microseconds; 24:00:00 is the end of a day. The
 * server rounds longer fractions while reading, but never prints one. */
static bool scan_time(scan_t *s, int64_t *usec) {
  int64_t h, m, sec, frac = 0;
  if (!scan_number(s, 1, 2, &h) || !scan_char(s, ':') || !scan_number(s, 2, 2, &m) ||
      !scan_char(s, ':') || !scan_number(s, 2, 2, &sec))
    return false;
  if (scan_char(s, '.')) {
    const uint8_t *start = s->p;
    if (!scan_number(s, 1, 6, &frac)) return false;
    for (long n = s->p - start; n < 6; n++) frac *= 10;
  }
  /* time_in takes a leap second (:60) as the next minute */
  if (h > 24 || m > 59 || sec > 60) return false;
  *usec = ((h * 60 + m) * 60 + sec) * 1000000 + frac;
  return *usec <= USECS_PER_DAY;
}

/* ISO offset as timestamptz_out prints it: +HH, +HH:MM or +HH:MM:SS (the
 * last for local mean time zones), in seconds east of Greenwich. */
static bool scan_offset(scan_t *s, int64_t *seconds) {
  if (s->p >= s->end || (*s->p != '+' && *s->p != '-')) return false;
  bool neg = *s->p++ == '-';
  int64_t h, m = 0, sec = 0;
  if (!scan_number(s, 1, 2, &h)) return false;
  if (scan_char(s, ':')) {
    if (!scan_number(s, 2, 2, &m)) return false;
    if (scan_char(s, ':') && !scan_number(s, 2, 2, &sec)) return false;
  }
  if (h > 15 || m > 59 || sec > 59) return false; /* TZDISP_LIMIT */
  *seconds = (h * 3600 + m * 60 + sec) * (neg ? -1 : 1);
  return true;
}

static bool scan_infinity(const uint8_t *p, size_t n, int *sign) {
  if (equals_ci(p, n, "infinity") || equals_ci(p, n, "+infinity")) return *sign = 1, true;
  if (equals_ci(p, n, "-infinity")) return *sign = -1, true;
  return false;
}

/* date_out: days from 2000-01-01, infinities as the binary format's
 * INT32_MIN / INT32_MAX so both formats order alike. */
static pgs_status_t parse_date_text(const uint8_t *s, size_t len, int64_t *out,
                                    pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t n = len;
  trim(&p, &n);
  int inf;
  if (scan_infinity(p, n, &inf)) return *out = inf > 0 ? INT32_MAX : INT32_MIN, PGS_OK;
  scan_t sc = {p, p + n};
  int64_t y, days;
  int m, d;
  if (!scan_ymd(&sc, &y, &m, &d)) return fail_syntax(err, PGS_OID_DATE, s, len);
  bool bc = scan_era(&sc);
  if (sc.p != sc.end || !ymd_days(y, m, d, bc, &days))
    return fail_syntax(err, PGS_OID_DATE, s, len);
  if (days < MIN_DATE_DAYS || days >= END_DATE_DAYS) {
    char buf[64];
    return fail(err, "22008", "date out of range: \"%s\"", show(s, len, buf));
  }
  *out = days;
  return PGS_OK;
}

/* timestamp_out / timestamptz_out (ISO): "YYYY-MM-DD HH:MM:SS[.ffffff]",
 * then for timestamptz the offset, then " BC". Microseconds from 2000 (UTC
 * for timestamptz), infinities as INT64_MIN / INT64_MAX like the binary
 * format. A timestamptz without an offset would be in the session's time
 * zone, which pgshard does not know, so it is an error. */
static pgs_status_t parse_timestamp_text(uint32_t oid, const uint8_t *s, size_t len, int64_t *out,
                                         pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t n = len;
  trim(&p, &n);
  int inf;
  if (scan_infinity(p, n, &inf)) return *out = inf > 0 ? INT64_MAX : INT64_MIN, PGS_OK;
  scan_t sc = {p, p + n};
  int64_t y, days, usec, offset = 0;
  int m, d;
  if (!scan_ymd(&sc, &y, &m, &d) || !(scan_char(&sc, ' ') || scan_char(&sc, 'T')) ||
      !scan_time(&sc, &usec))
    return fail_syntax(err, oid, s, len);
  if (oid == PGS_OID_TIMESTAMPTZ && !scan_offset(&sc, &offset))
    return fail_syntax(err, oid, s, len);
  bool bc = scan_era(&sc);
  if (sc.p != sc.end || !ymd_days(y, m, d, bc, &days)) return fail_syntax(err, oid, s, len);
  /* |days| < 2^32 and |usec| < 2^37, so this stays far inside int64 before
   * the range check: 2^32 * 86400e6 would not, hence the check on days. */
  if (days < MIN_DATE_DAYS - 1 || days > END_TIMESTAMP / USECS_PER_DAY + 1) goto out_of_range;
  int64_t t = days * USECS_PER_DAY + usec - offset * 1000000;
  if (t < MIN_TIMESTAMP || t >= END_TIMESTAMP) goto out_of_range;
  *out = t;
  return PGS_OK;
out_of_range:;
  char buf[64];
  return fail(err, "22008", "timestamp out of range: \"%s\"", show(s, len, buf));
}

static pgs_status_t parse_time_text(const uint8_t *s, size_t len, int64_t *out,
                                    pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t n = len;
  trim(&p, &n);
  scan_t sc = {p, p + n};
  if (!scan_time(&sc, out) || sc.p != sc.end) return fail_syntax(err, PGS_OID_TIME, s, len);
  return PGS_OK;
}

/* Types whose values order as one int64: bool, the integers, oid, date,
 * time, timestamp, timestamptz. */
static bool is_ordinal(uint32_t oid) {
  switch (oid) {
  case PGS_OID_BOOL:
  case PGS_OID_INT2:
  case PGS_OID_INT4:
  case PGS_OID_INT8:
  case PGS_OID_OID:
  case PGS_OID_DATE:
  case PGS_OID_TIME:
  case PGS_OID_TIMESTAMP:
  case PGS_OID_TIMESTAMPTZ:
    return true;
  }
  return false;
}

static pgs_status_t decode_ordinal(uint32_t oid, int format, const uint8_t *p, size_t len,
                                   int64_t *out, pgs_value_error_t *err) {
  switch (oid) {
  case PGS_OID_BOOL:
    if (format == 0) return parse_bool_text(p, len, out, err);
    if (len != 1) return fail_binary_length(err, oid, len, 1);
    *out = p[0] != 0; /* boolrecv */
    return PGS_OK;
  case PGS_OID_DATE:
    if (format == 0) return parse_date_text(p, len, out, err);
    if (len != 4) return fail_binary_length(err, oid, len, 4);
    *out = (int32_t)pgs_get_u32(p);
    return PGS_OK;
  case PGS_OID_TIME:
  case PGS_OID_TIMESTAMP:
  case PGS_OID_TIMESTAMPTZ:
    if (format == 0)
      return oid == PGS_OID_TIME ? parse_time_text(p, len, out, err)
                                 : parse_timestamp_text(oid, p, len, out, err);
    if (len != 8) return fail_binary_length(err, oid, len, 8);
    *out = (int64_t)get_u64(p);
    return PGS_OK;
  default:
    return decode_int(oid, format, p, len, out, err);
  }
}

/* ---- floats ---- */

/* float4in / float8in: strtof / strtod with blanks around, plus the
 * server's spellings of the special values. Results that underflow to
 * zero or overflow are errors there too; denormals are fine. */
static pgs_status_t parse_float_text(uint32_t oid, const uint8_t *s, size_t len, double *out,
                                     pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t n = len;
  trim(&p, &n);
  if (equals_ci(p, n, "nan")) return *out = NAN, PGS_OK;
  if (equals_ci(p, n, "infinity") || equals_ci(p, n, "+infinity") || equals_ci(p, n, "inf") ||
      equals_ci(p, n, "+inf"))
    return *out = INFINITY, PGS_OK;
  if (equals_ci(p, n, "-infinity") || equals_ci(p, n, "-inf")) return *out = -INFINITY, PGS_OK;
  char buf[512];
  if (n == 0 || n >= sizeof(buf) || memchr(p, '\0', n)) return fail_syntax(err, oid, s, len);
  memcpy(buf, p, n);
  buf[n] = '\0';
  char *end;
  errno = 0;
  double v = oid == PGS_OID_FLOAT4 ? (double)strtof(buf, &end) : strtod(buf, &end);
  if (end != buf + n) return fail_syntax(err, oid, s, len);
  if (errno == ERANGE && (v == 0 || isinf(v))) {
    char show_buf[64];
    return fail(err, "22003", "\"%s\" is out of range for type %s", show(s, len, show_buf),
                type_name(oid));
  }
  *out = v;
  return PGS_OK;
}

static pgs_status_t decode_float(uint32_t oid, int format, const uint8_t *p, size_t len,
                                 double *out, pgs_value_error_t *err) {
  if (format == 0) return parse_float_text(oid, p, len, out, err);
  if (oid == PGS_OID_FLOAT4) {
    if (len != 4) return fail_binary_length(err, oid, len, 4);
    uint32_t bits = pgs_get_u32(p);
    float f;
    memcpy(&f, &bits, 4);
    *out = f;
  } else {
    if (len != 8) return fail_binary_length(err, oid, len, 8);
    uint64_t bits = get_u64(p);
    memcpy(out, &bits, 8);
  }
  return PGS_OK;
}

/* float8_cmp_internal: NaN equals NaN and is above everything; -0 == 0. */
static int float_cmp(double a, double b) {
  if (isnan(a)) return isnan(b) ? 0 : 1;
  if (isnan(b)) return -1;
  return (a > b) - (a < b);
}

/*
 * The shortest digits float8out / float4out print: PostgreSQL's Ryu (d2s.c,
 * f2s.c) finds the fewest decimal digits strictly inside the interval of
 * values that read back as V, and of those the nearest to V. PostgreSQL
 * builds it with STRICTLY_SHORTEST 0: a decimal exactly on the interval's
 * edge (halfway to the neighbouring float) is never printed, even where
 * round-half-even would read it back as V ("9.999999999999999e+22", not
 * "1e+23"). (Ryu looks for exact edges only up to a decimal exponent of 21,
 * 9 for real; beyond, an exact edge needs more than 17 (9) digits, so it
 * could never be printed anyway.)
 *
 * Here, for a given length, the correctly rounded digits (printf is exact
 * in glibc) are the nearest candidate, and when they fall outside (the
 * interval is lopsided at powers of two) the neighbouring candidate on V's
 * other side may still be inside; lengths are bisected. The edges, being
 * halfway between two floats, are exact in long double; a candidate that
 * strtold cannot tell from an edge is compared with the edge's exact
 * decimal expansion. Where V lies exactly halfway between two candidates of
 * the shortest length, printf's round-half-even is taken (as Ryu does when
 * it sees the tie; checked against the server for 800,000 random values).
 */
_Static_assert(LDBL_MANT_DIG >= 55, "float edges must be exact in long double");

typedef struct shortest {
  long double lo, hi; /* the edges: halfway to the neighbouring values */
} shortest_t;

static void shortest_init(shortest_t *k, double v, bool single) {
  long double prev, next;
  if (single) {
    float f = (float)v;
    prev = nextafterf(f, 0);
    next = f == FLT_MAX ? (long double)f + ((long double)f - prev) : nextafterf(f, INFINITY);
  } else {
    prev = nextafter(v, 0);
    next = v == DBL_MAX ? (long double)v + ((long double)v - prev) : nextafter(v, INFINITY);
  }
  k->lo = ((long double)v + prev) / 2;
  k->hi = ((long double)v + next) / 2;
}

/* DIGITS[0..ND) times 10^(EXP - ND + 1) against X (> 0), exactly. */
static int decimal_cmp(const char *digits, int nd, int exp, long double x) {
  /* every long double halfway between two doubles has fewer than 800
   * significant digits, so this prints it exactly */
  char buf[1300];
  snprintf(buf, sizeof(buf), "%.1200Le", x);
  char *e = strchr(buf, 'e');
  int xexp = atoi(e + 1);
  if (exp != xexp) return exp < xexp ? -1 : 1;
  /* buf is "d.ddd...": digit i is at buf[i ? i + 1 : 0] */
  int xn = (int)(e - buf) - 1;
  for (int i = 0; i < nd || i < xn; i++) {
    char a = i < nd ? digits[i] : '0', b = i < xn ? buf[i ? i + 1 : 0] : '0';
    if (a != b) return a < b ? -1 : 1;
  }
  return 0;
}

/* Where DIGITS (ND, first nonzero) times 10^(EXP - ND + 1) lies: -1 at or
 * below the interval, 0 inside, 1 at or above. */
static int shortest_classify(const shortest_t *k, const char *digits, int nd, int exp) {
  /* "d.ddde-X" by hand: printf is most of the cost here */
  char buf[48];
  size_t n = 0;
  buf[n++] = digits[0];
  buf[n++] = '.';
  memcpy(buf + n, digits + 1, (size_t)nd - 1);
  n += (size_t)nd - 1;
  buf[n++] = 'e';
  if (exp < 0) buf[n++] = '-';
  for (int a = abs(exp), div = 1000; div > 0; div /= 10)
    if (a >= div || div == 1) buf[n++] = (char)('0' + a / div % 10);
  buf[n] = '\0';
  long double x = strtold(buf, NULL);
  if (x > k->lo && x < k->hi) return 0;
  if (x < k->lo) return -1;
  if (x > k->hi) return 1;
  /* strtold rounded onto an edge: compare with it exactly */
  int c = decimal_cmp(digits, nd, exp, x);
  if (x == k->lo) return c > 0 ? 0 : -1;
  return c < 0 ? 0 : 1;
}

/* The next P-digit decimal above (UP) or below DIGITS times 10^*EXP. */
static void step_digits(char *digits, int nd, int *exp, bool up) {
  if (up) {
    int i = nd - 1;
    while (i >= 0 && digits[i] == '9') digits[i--] = '0';
    if (i >= 0) {
      digits[i]++;
    } else {
      digits[0] = '1';
      (*exp)++;
    }
    return;
  }
  bool power = digits[0] == '1';
  for (int i = 1; i < nd; i++) power = power && digits[i] == '0';
  if (power) {
    memset(digits, '9', (size_t)nd);
    (*exp)--;
    return;
  }
  int i = nd - 1;
  while (digits[i] == '0') digits[i--] = '9';
  digits[i]--;
}

/* V's first 41 significant digits, correctly rounded (glibc's printf is
 * exact), from which each shorter length is rounded by hand. */
typedef struct long_digits {
  char d[48];
  int exp;
} long_digits_t;

static void split_e(const char *buf, char *digits, int *exp) {
  const char *c = buf;
  int nd = 0;
  for (; *c != 'e'; c++)
    if (*c != '.') digits[nd++] = *c;
  *exp = atoi(c + 1);
}

/* V to P significant digits, rounded half to even as printf("%.*e") does.
 * The 41 digits decide unless what follows digit P reads exactly "5000..."
 * there (the true tail may be a hair either side); then printf decides. */
static void round_digits(const long_digits_t *x, double v, int p, char *digits, int *exp) {
  memcpy(digits, x->d, (size_t)p);
  *exp = x->exp;
  const char *tail = x->d + p;
  bool zeros = true;
  for (int i = 1; i < 41 - p; i++) zeros = zeros && tail[i] == '0';
  if (tail[0] == '5' && zeros) {
    char buf[48];
    snprintf(buf, sizeof(buf), "%.*e", p - 1, v);
    split_e(buf, digits, exp);
    return;
  }
  if (tail[0] >= '5') {
    int i = p - 1;
    while (i >= 0 && digits[i] == '9') digits[i--] = '0';
    if (i >= 0) {
      digits[i]++;
    } else {
      digits[0] = '1';
      (*exp)++;
    }
  }
}

/* The P-digit candidate inside the interval, if there is one: the
 * correctly rounded digits, else their neighbour on V's other side. */
static bool shortest_try(const shortest_t *k, const long_digits_t *x, double v, int p,
                         char digits[24], int *exp10) {
  round_digits(x, v, p, digits, exp10);
  int where = shortest_classify(k, digits, p, *exp10);
  if (where == 0) return true;
  step_digits(digits, p, exp10, where < 0);
  return shortest_classify(k, digits, p, *exp10) == 0;
}

/* The digits (no trailing zeros) and decimal exponent of the first, of V
 * (finite, > 0) as Ryu prints it, in double or (SINGLE) real precision.
 * Returns the number of digits. A length that has a candidate inside the
 * interval makes every longer one have it too, so the shortest is found by
 * bisection: about four tries instead of up to seventeen. */
static int shortest_digits(double v, bool single, char digits[24], int *exp10) {
  shortest_t k;
  shortest_init(&k, v, single);
  long_digits_t x;
  char buf[64];
  snprintf(buf, sizeof(buf), "%.40e", v);
  split_e(buf, x.d, &x.exp);
  /* the full length always has a candidate: the rounded digits */
  int lo = 1, hi = single ? 9 : 17, found_p = hi, found_exp;
  char found[24];
  round_digits(&x, v, hi, found, &found_exp);
  hi--;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, e;
    char cand[24];
    if (shortest_try(&k, &x, v, mid, cand, &e)) {
      memcpy(found, cand, (size_t)mid);
      found_exp = e;
      found_p = mid;
      hi = mid - 1;
    } else {
      lo = mid + 1;
    }
  }
  int nd = found_p;
  while (nd > 1 && found[nd - 1] == '0') nd--;
  memcpy(digits, found, (size_t)nd);
  *exp10 = found_exp;
  return nd;
}

/* float8out / float4out with extra_float_digits = 1 (the default): the
 * shortest exact digits, fixed notation for decimal exponents from -4 up
 * to 14 (real: 5), else d.ddde+XX, as PostgreSQL's Ryu formatting. */
static void put_float_text(double v, bool single, pgs_buf_t *out) {
  char s[64];
  size_t n = 0;
  if (isnan(v) || isinf(v)) {
    const char *word = isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
    pgs_buf_put(out, word, strlen(word));
    return;
  }
  if (signbit(v)) s[n++] = '-';
  if (v == 0) {
    s[n++] = '0';
    pgs_buf_put(out, s, n);
    return;
  }
  char digits[24];
  int exp = 0;
  int nd = shortest_digits(fabs(v), single, digits, &exp);
  if (exp >= -4 && exp < (single ? 6 : 15)) {
    if (exp < 0) {
      s[n++] = '0';
      s[n++] = '.';
      for (int i = -1; i > exp; i--) s[n++] = '0';
      memcpy(s + n, digits, (size_t)nd);
      n += (size_t)nd;
    } else {
      for (int i = 0; i <= exp || i < nd; i++) {
        if (i == exp + 1) s[n++] = '.';
        s[n++] = i < nd ? digits[i] : '0';
      }
    }
  } else {
    s[n++] = digits[0];
    if (nd > 1) {
      s[n++] = '.';
      memcpy(s + n, digits + 1, (size_t)nd - 1);
      n += (size_t)nd - 1;
    }
    n += (size_t)snprintf(s + n, sizeof(s) - n, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
  }
  pgs_buf_put(out, s, n);
}

static void put_float_binary(double v, bool single, pgs_buf_t *out) {
  if (single) {
    float f = (float)v;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    pgs_buf_put_i32(out, (int32_t)bits);
  } else {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    put_u64(out, bits);
  }
}

/* ---- numeric ---- */

enum numeric_kind { NUM_FINITE, NUM_NAN, NUM_PINF, NUM_NINF };

/* A NumericVar: the value is the sum of digits[i] * 10000^(weight - i),
 * stripped (digits[0] and digits[ndigits-1] nonzero; zero has no digits,
 * weight 0 and is not negative). DIGITS points at storage owned elsewhere. */
typedef struct numeric {
  int kind; /* enum numeric_kind */
  bool neg;
  int weight;
  int dscale;
  int ndigits;
  int16_t *digits;
} numeric_t;

static int digit_at(const numeric_t *n, int weight) {
  int i = n->weight - weight;
  return i >= 0 && i < n->ndigits ? n->digits[i] : 0;
}

/* make_result's normal form: no zero digits at either end. */
static void numeric_strip(numeric_t *n) {
  while (n->ndigits > 0 && n->digits[0] == 0) {
    n->digits++;
    n->ndigits--;
    n->weight--;
  }
  while (n->ndigits > 0 && n->digits[n->ndigits - 1] == 0) n->ndigits--;
  if (n->ndigits == 0) {
    n->weight = 0;
    n->neg = false;
  }
}

/* Collects base-10000 digits from the most significant down, skipping
 * leading zeros and holding back trailing ones, so only the digits that
 * make_result would keep count against MAX_DIGITS. */
typedef struct digit_sink {
  numeric_t *n;
  int16_t *store;
  int zeros; /* zero digits seen after the last nonzero one */
  bool started;
} digit_sink_t;

static bool sink_put(digit_sink_t *k, int d) {
  if (!k->started) {
    if (d == 0) {
      k->n->weight--;
      return true;
    }
    k->started = true;
  }
  if (d == 0) {
    k->zeros++;
    return true;
  }
  if (k->n->ndigits + k->zeros + 1 > MAX_DIGITS) return false;
  while (k->zeros > 0) k->store[k->n->ndigits++] = 0, k->zeros--;
  k->store[k->n->ndigits++] = (int16_t)d;
  return true;
}

/* numeric_in (set_var_from_str): blanks around, sign, digits with one
 * optional point, optional exponent; NaN and the infinities in any case.
 * STORE holds MAX_DIGITS digits. */
static pgs_status_t numeric_from_text(const uint8_t *s, size_t len, numeric_t *n, int16_t *store,
                                      pgs_value_error_t *err) {
  const uint8_t *p = s;
  size_t len_trimmed = len;
  trim(&p, &len_trimmed);
  memset(n, 0, sizeof(*n));
  n->digits = store;
  if (equals_ci(p, len_trimmed, "nan")) return n->kind = NUM_NAN, PGS_OK;
  if (equals_ci(p, len_trimmed, "infinity") || equals_ci(p, len_trimmed, "+infinity") ||
      equals_ci(p, len_trimmed, "inf") || equals_ci(p, len_trimmed, "+inf"))
    return n->kind = NUM_PINF, PGS_OK;
  if (equals_ci(p, len_trimmed, "-infinity") || equals_ci(p, len_trimmed, "-inf"))
    return n->kind = NUM_NINF, PGS_OK;

  size_t i = 0, end = len_trimmed;
  if (i < end && (p[i] == '+' || p[i] == '-')) n->neg = p[i++] == '-';
  size_t first = i;
  long intdigits = 0, fracdigits = 0;
  bool point = false;
  for (; i < end; i++) {
    if (is_digit(p[i]))
      point ? fracdigits++ : intdigits++;
    else if (p[i] == '.' && !point)
      point = true;
    else
      break;
  }
  size_t last = i;
  if (intdigits + fracdigits == 0) return fail_syntax(err, PGS_OID_NUMERIC, s, len);
  long exponent = 0;
  if (i < end && (p[i] == 'e' || p[i] == 'E')) {
    i++;
    bool eneg = false;
    if (i < end && (p[i] == '+' || p[i] == '-')) eneg = p[i++] == '-';
    if (i == end) return fail_syntax(err, PGS_OID_NUMERIC, s, len);
    for (; i < end && is_digit(p[i]); i++) {
      exponent = exponent * 10 + (p[i] - '0');
      /* set_var_from_str's bound; the value itself must then still fit
       * numeric's weight and scale limits, checked below */
      if (exponent >= INT32_MAX / 2) goto overflow;
    }
    if (eneg) exponent = -exponent;
  }
  if (i != end) return fail_syntax(err, PGS_OID_NUMERIC, s, len);

  long dweight = intdigits - 1 + exponent; /* decimal weight of the first digit */
  long dscale = fracdigits - exponent;
  if (dscale < 0) dscale = 0;
  long weight =
      dweight >= 0 ? (dweight + DEC_DIGITS) / DEC_DIGITS - 1 : -((-dweight - 1) / DEC_DIGITS + 1);
  /* decimal places of the first base-10000 digit above the first digit */
  long pos = (weight + 1) * DEC_DIGITS - (dweight + 1);
  if (dscale > NUMERIC_DSCALE_MAX) goto overflow;
  n->weight = (int)weight;
  n->dscale = (int)dscale;
  digit_sink_t sink = {n, store, 0, false};
  int acc = 0;
  for (size_t k = first; k < last; k++) {
    if (p[k] == '.') continue;
    acc = acc * 10 + (p[k] - '0');
    if (++pos == DEC_DIGITS) {
      if (!sink_put(&sink, acc)) return fail_too_long(err);
      acc = 0;
      pos = 0;
    }
  }
  if (pos > 0) {
    while (pos++ < DEC_DIGITS) acc *= 10;
    if (!sink_put(&sink, acc)) return fail_too_long(err);
  }
  numeric_strip(n);
  if (n->weight > NUMERIC_WEIGHT_MAX) goto overflow;
  return PGS_OK;
overflow:
  return fail(err, "22003", "value overflows numeric format");
}

/* numeric_recv: ndigits, weight, sign, dscale, then the digits, each
 * checked as the server does. Digits past dscale are cut (numeric_recv's
 * trunc_var), then the value is stripped. STORE holds MAX_DIGITS digits. */
static pgs_status_t numeric_from_binary(const uint8_t *p, size_t len, numeric_t *n, int16_t *store,
                                        pgs_value_error_t *err) {
  memset(n, 0, sizeof(*n));
  n->digits = store;
  if (len < 8) return fail_binary_length(err, PGS_OID_NUMERIC, len, 8);
  int nd = get_u16(p);
  int weight = (int16_t)get_u16(p + 2);
  int sign = get_u16(p + 4);
  int dscale = get_u16(p + 6);
  if (len != 8 + 2 * (size_t)nd)
    return fail_binary_length(err, PGS_OID_NUMERIC, len, 8 + 2 * (size_t)nd);
  if (sign != WIRE_POS && sign != WIRE_NEG && sign != WIRE_NAN && sign != WIRE_PINF &&
      sign != WIRE_NINF)
    return fail_binary(err, PGS_OID_NUMERIC, "invalid sign");
  if (dscale > NUMERIC_DSCALE_MAX) return fail_binary(err, PGS_OID_NUMERIC, "invalid scale");
  const uint8_t *dp = p + 8;
  for (int i = 0; i < nd; i++)
    if (get_u16(dp + 2 * i) >= NBASE) return fail_binary(err, PGS_OID_NUMERIC, "invalid digit");
  if (sign == WIRE_NAN) return n->kind = NUM_NAN, PGS_OK;
  if (sign == WIRE_PINF) return n->kind = NUM_PINF, PGS_OK;
  if (sign == WIRE_NINF) return n->kind = NUM_NINF, PGS_OK;
  n->neg = sign == WIRE_NEG;
  n->dscale = dscale;
  /* the last digit dscale shows: index weight + ceil(dscale / 4) */
  int keep = weight + (dscale + DEC_DIGITS - 1) / DEC_DIGITS + 1;
  if (keep < 0) keep = 0;
  if (keep > nd) keep = nd;
  int cut = 1; /* what trunc_var takes off the last kept digit */
  if (keep == weight + (dscale + DEC_DIGITS - 1) / DEC_DIGITS + 1 && dscale % DEC_DIGITS)
    for (int k = dscale % DEC_DIGITS; k < DEC_DIGITS; k++) cut *= 10;
  int lo = 0, hi = keep; /* nonzero digits are in [lo, hi) */
  while (lo < hi && get_u16(dp + 2 * lo) == 0) lo++;
  while (hi > lo) {
    int d = get_u16(dp + 2 * (hi - 1));
    if (hi == keep) d -= d % cut;
    if (d != 0) break;
    hi--;
  }
  if (hi - lo > MAX_DIGITS) return fail_too_long(err);
  for (int i = lo; i < hi; i++) {
    int d = get_u16(dp + 2 * i);
    if (i == keep - 1) d -= d % cut;
    store[i - lo] = (int16_t)d;
  }
  n->ndigits = hi - lo;
  n->weight = weight - lo;
  numeric_strip(n);
  return PGS_OK;
}

static pgs_status_t decode_numeric(int format, const uint8_t *p, size_t len, numeric_t *n,
                                   int16_t *store, pgs_value_error_t *err) {
  return format == 0 ? numeric_from_text(p, len, n, store, err)
                     : numeric_from_binary(p, len, n, store, err);
}

/* |A| against |B|, both finite and stripped. */
static int numeric_cmp_abs(const numeric_t *a, const numeric_t *b) {
  if (a->ndigits == 0 || b->ndigits == 0) return (a->ndigits > 0) - (b->ndigits > 0);
  if (a->weight != b->weight) return a->weight > b->weight ? 1 : -1;
  int n = a->ndigits < b->ndigits ? a->ndigits : b->ndigits;
  for (int i = 0; i < n; i++)
    if (a->digits[i] != b->digits[i]) return a->digits[i] > b->digits[i] ? 1 : -1;
  return (a->ndigits > b->ndigits) - (a->ndigits < b->ndigits);
}

/* cmp_numerics: -Infinity < numbers < Infinity < NaN, NaN equals NaN. */
static int numeric_cmp(const numeric_t *a, const numeric_t *b) {
  static const int rank[] = {[NUM_NINF] = 0, [NUM_FINITE] = 1, [NUM_PINF] = 2, [NUM_NAN] = 3};
  if (a->kind != b->kind) return rank[a->kind] < rank[b->kind] ? -1 : 1;
  if (a->kind != NUM_FINITE) return 0;
  int sa = a->ndigits == 0 ? 0 : a->neg ? -1 : 1;
  int sb = b->ndigits == 0 ? 0 : b->neg ? -1 : 1;
  if (sa != sb) return sa < sb ? -1 : 1;
  int c = numeric_cmp_abs(a, b);
  return sa < 0 ? -c : c;
}

/* R = A + B (finite, stripped) into STORE of ADD_SCRATCH digits, stripped.
 * 54000 when the result cannot have MAX_DIGITS digits or fewer. */
static pgs_status_t numeric_add(const numeric_t *a, const numeric_t *b, numeric_t *r,
                                int16_t *store, pgs_value_error_t *err) {
  if (b->ndigits == 0 || a->ndigits == 0) {
    const numeric_t *x = a->ndigits ? a : b;
    *r = *x;
    r->digits = store;
    r->dscale = a->dscale > b->dscale ? a->dscale : b->dscale;
    if (x->ndigits) memcpy(store, x->digits, (size_t)x->ndigits * sizeof(int16_t));
    return PGS_OK;
  }
  /* the larger magnitude first, so a subtraction never goes below zero */
  bool subtract = a->neg != b->neg;
  if (subtract && numeric_cmp_abs(a, b) < 0) {
    const numeric_t *t = a;
    a = b;
    b = t;
  }
  int hi = (a->weight > b->weight ? a->weight : b->weight) + 1;
  int alo = a->weight - a->ndigits + 1, blo = b->weight - b->ndigits + 1;
  int lo = alo < blo ? alo : blo;
  if ((long)hi - lo + 1 > ADD_SCRATCH) return fail_too_long(err);
  int span = hi - lo + 1, carry = 0;
  for (int w = lo; w <= hi; w++) {
    int v = digit_at(a, w) + (subtract ? -digit_at(b, w) : digit_at(b, w)) + carry;
    carry = v >= NBASE ? 1 : v < 0 ? -1 : 0;
    store[hi - w] = (int16_t)(v - carry * NBASE);
  }
  r->kind = NUM_FINITE;
  r->neg = a->neg;
  r->weight = hi;
  r->dscale = a->dscale > b->dscale ? a->dscale : b->dscale;
  r->ndigits = span;
  r->digits = store;
  numeric_strip(r);
  if (r->ndigits > MAX_DIGITS) return fail_too_long(err);
  if (r->weight > NUMERIC_WEIGHT_MAX) return fail(err, "22003", "value overflows numeric format");
  return PGS_OK;
}

/* int64 as a numeric of scale 0 (int64_to_numeric); STORE has 5 digits. */
static void numeric_from_int64(int64_t v, numeric_t *n, int16_t store[5]) {
  uint64_t mag = v < 0 ? -(uint64_t)v : (uint64_t)v;
  int16_t rev[5];
  int k = 0;
  for (; mag > 0; mag /= NBASE) rev[k++] = (int16_t)(mag % NBASE);
  memset(n, 0, sizeof(*n));
  n->neg = v < 0;
  n->weight = k - 1;
  n->ndigits = k;
  n->digits = store;
  for (int i = 0; i < k; i++) store[i] = rev[k - 1 - i];
  numeric_strip(n);
}

/* numeric_out (get_str_from_var): the integer part without leading
 * zeros ("0" when none), then exactly dscale decimals. */
static void put_numeric_text(const numeric_t *n, pgs_buf_t *out) {
  if (n->kind != NUM_FINITE) {
    const char *word = n->kind == NUM_NAN ? "NaN" : n->kind == NUM_PINF ? "Infinity" : "-Infinity";
    pgs_buf_put(out, word, strlen(word));
    return;
  }
  pgs_buf_reserve(out, (size_t)(n->weight > 0 ? n->weight + 1 : 1) * DEC_DIGITS + 2 +
                           (size_t)n->dscale + DEC_DIGITS);
  if (n->neg) pgs_buf_put_u8(out, '-');
  if (n->weight < 0) pgs_buf_put_u8(out, '0');
  char four[8];
  for (int w = n->weight; w >= 0; w--) {
    int len = snprintf(four, sizeof(four), w == n->weight ? "%d" : "%04d", digit_at(n, w));
    pgs_buf_put(out, four, (size_t)len);
  }
  if (n->dscale > 0) pgs_buf_put_u8(out, '.');
  for (int w = -1, left = n->dscale; left > 0; w--, left -= DEC_DIGITS) {
    snprintf(four, sizeof(four), "%04d", digit_at(n, w));
    pgs_buf_put(out, four, left < DEC_DIGITS ? (size_t)left : DEC_DIGITS);
  }
}

/* numeric_send. The infinities carry display scale 32: that is what the
 * server's NUMERIC_DSCALE reads from their header, and it sends it. */
static void put_numeric_binary(const numeric_t *n, pgs_buf_t *out) {
  int sign = WIRE_POS, dscale = n->dscale;
  switch (n->kind) {
  case NUM_NAN:
    sign = WIRE_NAN, dscale = 0;
    break;
  case NUM_PINF:
    sign = WIRE_PINF, dscale = 32;
    break;
  case NUM_NINF:
    sign = WIRE_NINF, dscale = 32;
    break;
  default:
    sign = n->neg ? WIRE_NEG : WIRE_POS;
  }
  int nd = n->kind == NUM_FINITE ? n->ndigits : 0;
  pgs_buf_reserve(out, 8 + 2 * (size_t)nd);
  pgs_buf_put_i16(out, (int16_t)nd);
  pgs_buf_put_i16(out, (int16_t)(nd ? n->weight : 0));
  pgs_buf_put_i16(out, (int16_t)(uint16_t)sign);
  pgs_buf_put_i16(out, (int16_t)dscale);
  for (int i = 0; i < nd; i++) pgs_buf_put_i16(out, n->digits[i]);
}

static void put_numeric(const numeric_t *n, int format, pgs_buf_t *out) {
  if (format == 0)
    put_numeric_text(n, out);
  else
    put_numeric_binary(n, out);
}

/* select_div_scale: at least 16 significant digits, at least either
 * operand's display scale, at most 1000. */
static int select_div_scale(const numeric_t *a, const numeric_t *b) {
  int w1 = 0, f1 = 0, w2 = 0, f2 = 0;
  /* stripped, so the first digit is the first nonzero one */
  if (a->ndigits) w1 = a->weight, f1 = a->digits[0];
  if (b->ndigits) w2 = b->weight, f2 = b->digits[0];
  int qweight = w1 - w2;
  if (f1 <= f2) qweight--;
  int rscale = NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS;
  if (rscale < a->dscale) rscale = a->dscale;
  if (rscale < b->dscale) rscale = b->dscale;
  if (rscale < 0) rscale = 0;
  if (rscale > NUMERIC_MAX_DISPLAY_SCALE) rscale = NUMERIC_MAX_DISPLAY_SCALE;
  return rscale;
}

/*
 * Q = A / COUNT (COUNT > 0) rounded to RSCALE decimals, half away from
 * zero: numeric_div's div_var(..., round = true), which computes exact
 * digits one position past RSCALE and rounds on that digit. The divisor is
 * a machine integer, so this is short division with a 128-bit remainder.
 * Q's digits are malloc'ed into *OWNED (an avg is computed once per output
 * row, not per comparison).
 */
static void numeric_div_count(const numeric_t *a, int64_t count, int rscale, numeric_t *q,
                              int16_t **owned) {
  /* weights from hi (one spare for a rounding carry) down to lo, the
   * base-10000 digit holding decimal place rscale + 1 */
  int top = a->ndigits && a->weight > 0 ? a->weight : 0;
  int hi = top + 1, lo = -((rscale + DEC_DIGITS) / DEC_DIGITS);
  int nd = hi - lo + 1;
  int16_t *d = pgs_xcalloc((size_t)nd, sizeof(int16_t));
  unsigned __int128 rem = 0;
  for (int w = top; w >= lo; w--) {
    rem = rem * NBASE + (unsigned)digit_at(a, w);
    d[hi - w] = (int16_t)(rem / (uint64_t)count);
    rem %= (uint64_t)count;
  }
  /* the decimal digit after rscale decides; then everything past rscale
   * goes */
  int round_w = -((rscale + DEC_DIGITS) / DEC_DIGITS), round_off = rscale % DEC_DIGITS;
  static const int pow10[] = {1, 10, 100, 1000, 10000};
  int round_digit = d[hi - round_w] / pow10[DEC_DIGITS - 1 - round_off] % 10;
  d[hi - round_w] = (int16_t)(d[hi - round_w] - d[hi - round_w] % pow10[DEC_DIGITS - round_off]);
  if (round_digit >= 5) {
    /* one unit at decimal place rscale */
    int w = round_off ? round_w : round_w + 1;
    int carry = round_off ? pow10[DEC_DIGITS - round_off] : 1;
    for (; carry && w <= hi; w++) {
      int v = d[hi - w] + carry;
      carry = v >= NBASE;
      d[hi - w] = (int16_t)(v - carry * NBASE);
    }
  }
  memset(q, 0, sizeof(*q));
  q->neg = a->neg;
  q->weight = hi;
  q->dscale = rscale;
  q->ndigits = nd;
  q->digits = d;
  numeric_strip(q);
  *owned = d;
}

/* ---- bytea ---- */

/* Reads a bytea's text form byte by byte: hex ("\x" then pairs of hex
 * digits, blanks allowed between pairs, as hex_decode) or escape (bytes,
 * "\\" and "\ooo"), so comparing needs no buffer. */
typedef struct bytea_reader {
  const uint8_t *p, *end;
  bool hex;
} bytea_reader_t;

static int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static void bytea_open(bytea_reader_t *r, const uint8_t *p, size_t len) {
  r->hex = len >= 2 && p[0] == '\\' && p[1] == 'x';
  r->p = p + (r->hex ? 2 : 0);
  r->end = p + len;
}

/* 1 and the next byte in *OUT, 0 at the end, -1 when malformed. */
static int bytea_next(bytea_reader_t *r, uint8_t *out) {
  if (r->hex) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\t' || *r->p == '\r'))
      r->p++;
    if (r->p == r->end) return 0;
    if (r->end - r->p < 2) return -1;
    int h = hex_value(r->p[0]), l = hex_value(r->p[1]);
    if (h < 0 || l < 0) return -1;
    r->p += 2;
    *out = (uint8_t)(h << 4 | l);
    return 1;
  }
  if (r->p == r->end) return 0;
  if (*r->p != '\\') return *out = *r->p++, 1;
  if (r->end - r->p >= 2 && r->p[1] == '\\') return r->p += 2, *out = '\\', 1;
  if (r->end - r->p >= 4 && r->p[1] >= '0' && r->p[1] <= '3' && r->p[2] >= '0' && r->p[2] <= '7' &&
      r->p[3] >= '0' && r->p[3] <= '7') {
    *out = (uint8_t)((r->p[1] - '0') << 6 | (r->p[2] - '0') << 3 | (r->p[3] - '0'));
    r->p += 4;
    return 1;
  }
  return -1;
}

/* byteacmp on the decoded bytes of two text forms; both are read to the
 * end so a malformed tail is an error even after a difference. */
static pgs_status_t bytea_cmp_text(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                                   int *result, pgs_value_error_t *err) {
  bytea_reader_t ra, rb;
  bytea_open(&ra, a, alen);
  bytea_open(&rb, b, blen);
  int c = 0;
  for (;;) {
    uint8_t x = 0, y = 0;
    int ga = bytea_next(&ra, &x), gb = bytea_next(&rb, &y);
    if (ga < 0) return fail_syntax(err, PGS_OID_BYTEA, a, alen);
    if (gb < 0) return fail_syntax(err, PGS_OID_BYTEA, b, blen);
    if (ga == 0 && gb == 0) break;
    if (c == 0) c = ga == 0 ? -1 : gb == 0 ? 1 : (x > y) - (x < y);
  }
  *result = c;
  return PGS_OK;
}

/* ---- uuid ---- */

/* uuid_in (string_to_uuid): optional braces, 32 hex digits, a hyphen
 * allowed after any group of four. */
static pgs_status_t parse_uuid_text(const uint8_t *s, size_t len, uint8_t out[16],
                                    pgs_value_error_t *err) {
  size_t i = 0;
  bool braces = len > 0 && s[0] == '{';
  if (braces) i++;
  for (int k = 0; k < 16; k++) {
    if (len - i < 2) return fail_syntax(err, PGS_OID_UUID, s, len);
    int h = hex_value(s[i]), l = hex_value(s[i + 1]);
    if (h < 0 || l < 0) return fail_syntax(err, PGS_OID_UUID, s, len);
    out[k] = (uint8_t)(h << 4 | l);
    i += 2;
    if (i < len && s[i] == '-' && k % 2 == 1 && k < 15) i++;
  }
  if (braces) {
    if (i == len || s[i] != '}') return fail_syntax(err, PGS_OID_UUID, s, len);
    i++;
  }
  if (i != len) return fail_syntax(err, PGS_OID_UUID, s, len);
  return PGS_OK;
}

static pgs_status_t decode_uuid(int format, const uint8_t *p, size_t len, uint8_t out[16],
                                pgs_value_error_t *err) {
  if (format == 0) return parse_uuid_text(p, len, out, err);
  if (len != 16) return fail_binary_length(err, PGS_OID_UUID, len, 16);
  memcpy(out, p, 16);
  return PGS_OK;
}

/* ---- comparing ---- */

bool pgs_value_comparable(uint32_t oid) {
  switch (oid) {
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8:
  case PGS_OID_NUMERIC:
  case PGS_OID_TEXT:
  case PGS_OID_VARCHAR:
  case PGS_OID_NAME:
  case PGS_OID_BPCHAR:
  case PGS_OID_BYTEA:
  case PGS_OID_UUID:
    return true;
  }
  return is_ordinal(oid);
}

/* bpchar's significant length: trailing blanks do not count (bcTruelen). */
static size_t bpchar_length(const uint8_t *p, size_t len) {
  while (len > 0 && p[len - 1] == ' ') len--;
  return len;
}

pgs_status_t pgs_value_compare(uint32_t oid, int format, const uint8_t *a, size_t alen,
                               const uint8_t *b, size_t blen, int *result, pgs_value_error_t *err) {
  if (!pgs_value_comparable(oid)) return fail_type(err, "compare", oid);
  if (check_format(format, err) != PGS_OK) return PGS_EINVAL;
  if (is_ordinal(oid)) {
    int64_t x, y;
    if (decode_ordinal(oid, format, a, alen, &x, err) != PGS_OK ||
        decode_ordinal(oid, format, b, blen, &y, err) != PGS_OK)
      return PGS_EINVAL;
    *result = (x > y) - (x < y);
    return PGS_OK;
  }
  switch (oid) {
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8: {
    double x, y;
    if (decode_float(oid, format, a, alen, &x, err) != PGS_OK ||
        decode_float(oid, format, b, blen, &y, err) != PGS_OK)
      return PGS_EINVAL;
    *result = float_cmp(x, y);
    return PGS_OK;
  }
  case PGS_OID_NUMERIC: {
    int16_t sa[MAX_DIGITS], sb[MAX_DIGITS];
    numeric_t x, y;
    if (decode_numeric(format, a, alen, &x, sa, err) != PGS_OK ||
        decode_numeric(format, b, blen, &y, sb, err) != PGS_OK)
      return PGS_EINVAL;
    *result = numeric_cmp(&x, &y);
    return PGS_OK;
  }
  case PGS_OID_BPCHAR:
    *result = bytes_cmp(a, bpchar_length(a, alen), b, bpchar_length(b, blen));
    return PGS_OK;
  case PGS_OID_BYTEA:
    if (format == 0) return bytea_cmp_text(a, alen, b, blen, result, err);
    *result = bytes_cmp(a, alen, b, blen);
    return PGS_OK;
  case PGS_OID_UUID: {
    uint8_t x[16], y[16];
    if (decode_uuid(format, a, alen, x, err) != PGS_OK ||
        decode_uuid(format, b, blen, y, err) != PGS_OK)
      return PGS_EINVAL;
    *result = bytes_cmp(x, 16, y, 16);
    return PGS_OK;
  }
  default: /* text, varchar, name: the C collation */
    *result = bytes_cmp(a, alen, b, blen);
    return PGS_OK;
  }
}

/* ---- equality and cross-type comparison ---- */

bool pgs_value_bytes_equal(uint32_t oid) {
  switch (oid) {
  case PGS_OID_NUMERIC:
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8:
  case PGS_OID_BPCHAR:
    return false;
  }
  return true;
}

pgs_status_t pgs_value_hash(uint32_t oid, int format, const uint8_t *a, size_t alen, uint64_t seed,
                            uint64_t *hash, pgs_value_error_t *err) {
  if (check_format(format, err) != PGS_OK) return PGS_EINVAL;
  switch (oid) {
  case PGS_OID_NUMERIC: {
    int16_t store[MAX_DIGITS];
    numeric_t n;
    if (decode_numeric(format, a, alen, &n, store, err) != PGS_OK) return PGS_EINVAL;
    /* Stripped, so equal values have equal digits; the display scale is
     * what differs between 1.0 and 1.00 and is left out. */
    uint64_t head = (uint64_t)n.kind;
    size_t ndigits = 0;
    if (n.kind == NUM_FINITE) {
      head |= (uint64_t)n.neg << 4 | (uint64_t)(uint32_t)n.weight << 8;
      ndigits = (size_t)n.ndigits;
    }
    *hash = XXH3_64bits_withSeed(n.digits, ndigits * sizeof(int16_t),
                                 seed ^ XXH3_64bits(&head, sizeof(head)));
    return PGS_OK;
  }
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8: {
    double v;
    if (decode_float(oid, format, a, alen, &v, err) != PGS_OK) return PGS_EINVAL;
    if (v == 0) v = 0; /* -0 */
    uint64_t bits;
    if (isnan(v))
      bits = UINT64_C(0x7ff8000000000000);
    else
      memcpy(&bits, &v, sizeof(bits));
    *hash = XXH3_64bits_withSeed(&bits, sizeof(bits), seed);
    return PGS_OK;
  }
  case PGS_OID_BPCHAR:
    *hash = XXH3_64bits_withSeed(a, bpchar_length(a, alen), seed);
    return PGS_OK;
  default:
    *hash = XXH3_64bits_withSeed(a, alen, seed);
    return PGS_OK;
  }
}

pgs_status_t pgs_value_equal(uint32_t oid, int format, const uint8_t *a, size_t alen,
                             const uint8_t *b, size_t blen, bool *equal, pgs_value_error_t *err) {
  if (pgs_value_bytes_equal(oid)) {
    *equal = alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
    return PGS_OK;
  }
  /* numeric, float, bpchar: equal as the order says (bpchar without its
   * trailing blanks, bytewise). */
  int cmp;
  if (pgs_value_compare(oid, format, a, alen, b, blen, &cmp, err) != PGS_OK) return PGS_EINVAL;
  *equal = cmp == 0;
  return PGS_OK;
}

/* How a type takes part in a comparison with another type. */
typedef enum {
  CLASS_OTHER,   /* only with itself */
  CLASS_INT,     /* int2, int4, int8: exactly, as int64 */
  CLASS_NUMERIC, /* with integers exactly; with floats as float8 */
  CLASS_FLOAT,   /* float4, float8: as float8 */
  CLASS_TEXT,    /* text, varchar, name, bpchar: as text */
} compare_class_t;

static compare_class_t compare_class(uint32_t oid) {
  switch (oid) {
  case PGS_OID_INT2:
  case PGS_OID_INT4:
  case PGS_OID_INT8:
    return CLASS_INT;
  case PGS_OID_NUMERIC:
    return CLASS_NUMERIC;
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8:
    return CLASS_FLOAT;
  case PGS_OID_TEXT:
  case PGS_OID_VARCHAR:
  case PGS_OID_NAME:
  case PGS_OID_BPCHAR:
    return CLASS_TEXT;
  }
  return CLASS_OTHER;
}

static bool number_class(compare_class_t c) {
  return c == CLASS_INT || c == CLASS_NUMERIC || c == CLASS_FLOAT;
}

bool pgs_value_comparable_with(uint32_t a, uint32_t b) {
  if (!pgs_value_comparable(a) || !pgs_value_comparable(b)) return false;
  if (a == b) return a != PGS_OID_BYTEA; /* bytea's two formats: not mixed here */
  compare_class_t ca = compare_class(a), cb = compare_class(b);
  return (number_class(ca) && number_class(cb)) || (ca == CLASS_TEXT && cb == CLASS_TEXT);
}

/* A number of any numeric type as a double, as PostgreSQL's casts to
 * float8 make it (numeric through its text, as numeric_float8). */
static pgs_status_t number_double(uint32_t oid, int format, const uint8_t *p, size_t len,
                                  double *out, pgs_value_error_t *err) {
  switch (compare_class(oid)) {
  case CLASS_INT: {
    int64_t v;
    if (decode_int(oid, format, p, len, &v, err) != PGS_OK) return PGS_EINVAL;
    *out = (double)v;
    return PGS_OK;
  }
  case CLASS_FLOAT:
    return decode_float(oid, format, p, len, out, err);
  default: {
    if (format == 0) return parse_float_text(PGS_OID_FLOAT8, p, len, out, err);
    int16_t store[MAX_DIGITS];
    numeric_t n;
    if (decode_numeric(format, p, len, &n, store, err) != PGS_OK) return PGS_EINVAL;
    pgs_buf_t text;
    pgs_buf_init(&text);
    put_numeric_text(&n, &text);
    pgs_status_t st = parse_float_text(PGS_OID_FLOAT8, text.data, text.len, out, err);
    pgs_buf_free(&text);
    return st;
  }
  }
}

/* A number of an integer type or numeric as a numeric; STORE holds
 * MAX_DIGITS digits. */
static pgs_status_t number_numeric(uint32_t oid, int format, const uint8_t *p, size_t len,
                                   numeric_t *out, int16_t *store, pgs_value_error_t *err) {
  if (oid == PGS_OID_NUMERIC) return decode_numeric(format, p, len, out, store, err);
  int64_t v;
  if (decode_int(oid, format, p, len, &v, err) != PGS_OK) return PGS_EINVAL;
  numeric_from_int64(v, out, store);
  return PGS_OK;
}

pgs_status_t pgs_value_compare_mixed(uint32_t aoid, int aformat, const uint8_t *a, size_t alen,
                                     uint32_t boid, int bformat, const uint8_t *b, size_t blen,
                                     int *result, pgs_value_error_t *err) {
  if (aoid == boid && aformat == bformat)
    return pgs_value_compare(aoid, aformat, a, alen, b, blen, result, err);
  if (!pgs_value_comparable_with(aoid, boid)) {
    const char *na = type_name(aoid), *nb = type_name(boid);
    if (na && nb)
      return fail(err, "0A000", "cannot compare values of types %s and %s across shards", na, nb);
    return fail(err, "0A000", "cannot compare values of types oid %u and oid %u across shards",
                aoid, boid);
  }
  if (check_format(aformat, err) != PGS_OK || check_format(bformat, err) != PGS_OK)
    return PGS_EINVAL;
  compare_class_t ca = compare_class(aoid), cb = compare_class(boid);
  if (ca == CLASS_TEXT) {
    /* A text value's binary form is its text; bpchar meets the others as
     * text, without its trailing blanks (the cast rtrims). */
    size_t la = aoid == PGS_OID_BPCHAR && boid != PGS_OID_BPCHAR ? bpchar_length(a, alen) : alen;
    size_t lb = boid == PGS_OID_BPCHAR && aoid != PGS_OID_BPCHAR ? bpchar_length(b, blen) : blen;
    return pgs_value_compare(aoid == boid ? aoid : PGS_OID_TEXT, 0, a, la, b, lb, result, err);
  }
  if (ca == CLASS_FLOAT || cb == CLASS_FLOAT) {
    double x, y;
    if (number_double(aoid, aformat, a, alen, &x, err) != PGS_OK ||
        number_double(boid, bformat, b, blen, &y, err) != PGS_OK)
      return PGS_EINVAL;
    *result = float_cmp(x, y);
    return PGS_OK;
  }
  if (ca == CLASS_INT && cb == CLASS_INT) {
    int64_t x, y;
    if (decode_int(aoid, aformat, a, alen, &x, err) != PGS_OK ||
        decode_int(boid, bformat, b, blen, &y, err) != PGS_OK)
      return PGS_EINVAL;
    *result = (x > y) - (x < y);
    return PGS_OK;
  }
  if (number_class(ca)) {
    int16_t sa[MAX_DIGITS], sb[MAX_DIGITS];
    numeric_t x, y;
    if (number_numeric(aoid, aformat, a, alen, &x, sa, err) != PGS_OK ||
        number_numeric(boid, bformat, b, blen, &y, sb, err) != PGS_OK)
      return PGS_EINVAL;
    *result = numeric_cmp(&x, &y);
    return PGS_OK;
  }
  /* One type in two formats. */
  if (is_ordinal(aoid)) {
    int64_t x, y;
    if (decode_ordinal(aoid, aformat, a, alen, &x, err) != PGS_OK ||
        decode_ordinal(boid, bformat, b, blen, &y, err) != PGS_OK)
      return PGS_EINVAL;
    *result = (x > y) - (x < y);
    return PGS_OK;
  }
  uint8_t x[16], y[16]; /* uuid */
  if (decode_uuid(aformat, a, alen, x, err) != PGS_OK ||
      decode_uuid(bformat, b, blen, y, err) != PGS_OK)
    return PGS_EINVAL;
  *result = bytes_cmp(x, 16, y, 16);
  return PGS_OK;
}

/* ---- sums ---- */

bool pgs_sum_supported(uint32_t oid) {
  switch (oid) {
  case PGS_OID_INT2:
  case PGS_OID_INT4:
  case PGS_OID_INT8:
  case PGS_OID_NUMERIC:
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8:
    return true;
  }
  return false;
}

void pgs_sum_init(pgs_sum_t *sum, uint32_t oid) {
  memset(sum, 0, sizeof(*sum));
  sum->oid = oid;
}

void pgs_sum_free(pgs_sum_t *sum) {
  free(sum->digits);
  sum->digits = NULL;
  sum->cap = 0;
  sum->ndigits = 0;
}

/* The numeric a sum holds, viewing its digits. */
static numeric_t sum_numeric(const pgs_sum_t *sum) {
  numeric_t n = {NUM_FINITE,  sum->sign == SUM_NEG, sum->weight,
                 sum->dscale, sum->ndigits,         sum->digits};
  if (sum->sign == SUM_NAN) n.kind = NUM_NAN;
  if (sum->sign == SUM_PINF) n.kind = NUM_PINF;
  if (sum->sign == SUM_NINF) n.kind = NUM_NINF;
  if (n.kind != NUM_FINITE) n.ndigits = 0;
  return n;
}

/* numeric_add with the special values: NaN wins, opposite infinities make
 * NaN, an infinity absorbs every number (as the server's sum and avg). */
static pgs_status_t sum_add_numeric(pgs_sum_t *sum, const numeric_t *x, pgs_value_error_t *err) {
  if (sum->sign == SUM_NAN) return PGS_OK;
  if (x->kind == NUM_NAN) return sum->sign = SUM_NAN, PGS_OK;
  if (x->kind != NUM_FINITE) {
    int s = x->kind == NUM_PINF ? SUM_PINF : SUM_NINF;
    if (sum->sign == SUM_POS || sum->sign == SUM_NEG)
      sum->sign = s;
    else if (sum->sign != s)
      sum->sign = SUM_NAN;
    return PGS_OK;
  }
  if (sum->sign != SUM_POS && sum->sign != SUM_NEG) return PGS_OK;
  numeric_t cur = sum_numeric(sum), r = {0};
  int16_t store[ADD_SCRATCH];
  if (numeric_add(&cur, x, &r, store, err) != PGS_OK) return PGS_EINVAL;
  if (r.ndigits > sum->cap) {
    int cap = sum->cap ? sum->cap : 8;
    while (cap < r.ndigits) cap *= 2;
    sum->digits = pgs_xrealloc(sum->digits, (size_t)cap * sizeof(int16_t));
    sum->cap = cap;
  }
  if (r.ndigits) memcpy(sum->digits, r.digits, (size_t)r.ndigits * sizeof(int16_t));
  sum->ndigits = r.ndigits;
  sum->weight = r.weight;
  sum->sign = r.neg ? SUM_NEG : SUM_POS;
  if (x->dscale > sum->dscale) sum->dscale = x->dscale;
  return PGS_OK;
}

static const char *int_range_message(uint32_t oid) {
  return oid == PGS_OID_INT2   ? "smallint out of range"
         : oid == PGS_OID_INT4 ? "integer out of range"
                               : "bigint out of range";
}

pgs_status_t pgs_sum_add(pgs_sum_t *sum, int format, const uint8_t *value, size_t len,
                         pgs_value_error_t *err) {
  if (!pgs_sum_supported(sum->oid)) return fail_type(err, "sum", sum->oid);
  if (check_format(format, err) != PGS_OK) return PGS_EINVAL;
  switch (sum->oid) {
  case PGS_OID_NUMERIC: {
    int16_t store[MAX_DIGITS];
    numeric_t x;
    if (decode_numeric(format, value, len, &x, store, err) != PGS_OK) return PGS_EINVAL;
    if (sum_add_numeric(sum, &x, err) != PGS_OK) return PGS_EINVAL;
    break;
  }
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8: {
    double x;
    if (decode_float(sum->oid, format, value, len, &x, err) != PGS_OK) return PGS_EINVAL;
    /* float4pl / float8pl: overflow to infinity from finite operands is
     * an error; infinities and NaN pass through */
    if (!sum->any) {
      /* sum() is strict with no initial state: the first value is the sum
       * as it is (-0 stays -0) */
      sum->f = x;
      break;
    }
    double r = sum->f + x;
    bool inf = sum->oid == PGS_OID_FLOAT4 ? isinf((float)r) : isinf(r);
    if (inf && !isinf(sum->f) && !isinf(x))
      return fail(err, "22003", "value out of range: overflow");
    sum->f = r;
    break;
  }
  default: {
    int64_t x, r;
    if (decode_int(sum->oid, format, value, len, &x, err) != PGS_OK) return PGS_EINVAL;
    /* kept within the sum's own type, so it can always be sent as one */
    int64_t lo = sum->oid == PGS_OID_INT2   ? INT16_MIN
                 : sum->oid == PGS_OID_INT4 ? INT32_MIN
                                            : INT64_MIN;
    int64_t hi = sum->oid == PGS_OID_INT2   ? INT16_MAX
                 : sum->oid == PGS_OID_INT4 ? INT32_MAX
                                            : INT64_MAX;
    if (__builtin_add_overflow(sum->i, x, &r) || r < lo || r > hi)
      return fail(err, "22003", "%s", int_range_message(sum->oid));
    sum->i = r;
  }
  }
  sum->any = true;
  return PGS_OK;
}

void pgs_sum_output(const pgs_sum_t *sum, int format, pgs_buf_t *out) {
  switch (sum->oid) {
  case PGS_OID_NUMERIC: {
    numeric_t n = sum_numeric(sum);
    put_numeric(&n, format, out);
    return;
  }
  case PGS_OID_FLOAT4:
  case PGS_OID_FLOAT8: {
    bool single = sum->oid == PGS_OID_FLOAT4;
    double v = single ? (double)(float)sum->f : sum->f;
    if (format == 0)
      put_float_text(v, single, out);
    else
      put_float_binary(v, single, out);
    return;
  }
  case PGS_OID_INT2:
    if (format)
      pgs_buf_put_i16(out, (int16_t)sum->i);
    else
      pgs_value_put_int8(sum->i, format, out);
    return;
  case PGS_OID_INT4:
    if (format)
      pgs_buf_put_i32(out, (int32_t)sum->i);
    else
      pgs_value_put_int8(sum->i, format, out);
    return;
  }
  pgs_value_put_int8(sum->i, format, out);
}

/* ---- avg ---- */

pgs_status_t pgs_value_avg(const pgs_sum_t *sum, int64_t count, uint32_t result_oid, int format,
                           pgs_buf_t *out, pgs_value_error_t *err) {
  if (check_format(format, err) != PGS_OK) return PGS_EINVAL;
  if (count <= 0) return fail(err, "22012", "avg over %lld values", (long long)count);
  bool float_sum = sum->oid == PGS_OID_FLOAT4 || sum->oid == PGS_OID_FLOAT8;
  if (result_oid == PGS_OID_FLOAT8 && float_sum) {
    /* float8_avg: Sx / N in double, Sx accumulated from 0 (so a sum of
     * -0 is +0 there) */
    double v = (0.0 + sum->f) / (double)count;
    if (format == 0)
      put_float_text(v, false, out);
    else
      put_float_binary(v, false, out);
    return PGS_OK;
  }
  if (result_oid != PGS_OID_NUMERIC || float_sum || !pgs_sum_supported(sum->oid)) {
    const char *rn = type_name(result_oid), *sn = type_name(sum->oid);
    return fail(err, "0A000", "cannot compute avg as %s (oid %u) from a sum of %s (oid %u)",
                rn ? rn : "an unknown type", result_oid, sn ? sn : "an unknown type", sum->oid);
  }
  /* int8_avg / numeric_poly_avg / numeric_avg: numeric_div(sum, count) */
  int16_t sum_store[5], count_store[5];
  numeric_t dividend, divisor;
  if (sum->oid == PGS_OID_NUMERIC)
    dividend = sum_numeric(sum);
  else
    numeric_from_int64(sum->i, &dividend, sum_store);
  if (dividend.kind != NUM_FINITE) {
    put_numeric(&dividend, format, out); /* NaN or an infinity over a positive count */
    return PGS_OK;
  }
  numeric_from_int64(count, &divisor, count_store);
  numeric_t q;
  int16_t *owned;
  numeric_div_count(&dividend, count, select_div_scale(&dividend, &divisor), &q, &owned);
  put_numeric(&q, format, out);
  free(owned);
  return PGS_OK;
}

/* ---- counts ---- */

pgs_status_t pgs_value_int8(uint32_t oid, int format, const uint8_t *value, size_t len,
                            int64_t *out, pgs_value_error_t *err) {
  if (oid != PGS_OID_INT8 && oid != PGS_OID_INT4 && oid != PGS_OID_INT2)
    return fail_type(err, "count", oid);
  if (check_format(format, err) != PGS_OK) return PGS_EINVAL;
  return decode_int(oid, format, value, len, out, err);
}

void pgs_value_put_int8(int64_t v, int format, pgs_buf_t *out) {
  if (format) {
    put_u64(out, (uint64_t)v);
    return;
  }
  char buf[24];
  int n = snprintf(buf, sizeof(buf), "%lld", (long long)v);
  pgs_buf_put(out, buf, (size_t)n);
}
