/*
 * shardmap.c — shard keys and routing. See shardmap.h.
 *
 * Three jobs, in this order in the file:
 *  1. Typing a key: text and binary forms of smallint/int/bigint, text, uuid,
 *     date and timestamptz into a pgs_key_t, with PostgreSQL's SQLSTATEs and
 *     messages for what PostgreSQL refuses. The invariant is that a key this
 *     file accepts has exactly the value PostgreSQL would give the same input
 *     (so it lands where the row is); forms PostgreSQL accepts that pgshard
 *     does not read (non-ISO dates, named time zones) are refused, never
 *     guessed. The one assumption is documented on pgs_key_t.zone_assumed.
 *  2. Hashing: XXH3-64 of the canonical encoding, and a re-implementation of
 *     PostgreSQL's partition hash (Bob Jenkins' lookup3 as PostgreSQL's
 *     hashfn.c runs it, the types' *hashextended functions, the partition
 *     seed and hash_combine64), written from the algorithm's description and
 *     checked against a real server (tests/unit/golden, tests/integration).
 *  3. Routing a typed key through a table's strategy.
 *  4. Rebalancing a database's xxh3 slot table for a new list of shards,
 *     moving as few slots as balance allows (pgshardctl reshard slots).
 * Nothing here allocates on the routing path.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#define XXH_INLINE_ALL /* libpg_query exports XXH symbols too: never link them */
#include <xxhash.h>

#include "pgshard/config.h"
#include "pgshard/shardmap.h"

/* PostgreSQL's calendar constants, as days or microseconds since its epoch
 * 2000-01-01 00:00 UTC. */
#define USECS_PER_SEC INT64_C(1000000)
#define USECS_PER_DAY INT64_C(86400000000)
#define DAYS_1970_TO_2000 10957
/* Julian day 0 (4714-11-24 BC) is the first valid date and timestamp. */
#define PG_MIN_DATE (-2451545)
/* Dates stop before 5874898-01-01, timestamps before 294277-01-01. */
#define PG_END_DATE (2147483494 - 2451545)
#define PG_MIN_TIMESTAMP INT64_C(-211813488000000000)
#define PG_END_TIMESTAMP INT64_C(9223371331200000000)
/* 'infinity' and '-infinity' */
#define PG_DATE_NOBEGIN INT32_MIN
#define PG_DATE_NOEND INT32_MAX
#define PG_TS_NOBEGIN INT64_MIN
#define PG_TS_NOEND INT64_MAX

/* Binary parameter type OIDs (pg_type.dat). */
#define OID_NAME 19
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_TEXT 25
#define OID_UNKNOWN 705
#define OID_BPCHAR 1042
#define OID_VARCHAR 1043
#define OID_DATE 1082
#define OID_TIMESTAMP 1114
#define OID_TIMESTAMPTZ 1184
#define OID_UUID 2950

static const char *const type_names[] = {"smallint", "int",  "bigint",     "text",
                                         "uuid",     "date", "timestamptz"};
/* The names PostgreSQL uses in its messages. */
static const char *const pg_type_names[] = {
    "smallint", "integer", "bigint", "text", "uuid", "date", "timestamp with time zone"};
static const char *const strategy_names[] = {"hash", "range", "geo", "tenant"};

const char *pgs_key_type_name(pgs_key_type_t type) {
  return (unsigned)type < PGS_ARRAY_LEN(type_names) ? type_names[type] : "?";
}

const char *pgs_strategy_name(pgs_strategy_t strategy) {
  return (unsigned)strategy < PGS_ARRAY_LEN(strategy_names) ? strategy_names[strategy] : "?";
}

bool pgs_key_type_parse(const char *name, pgs_key_type_t *out) {
  static const struct {
    const char *name;
    pgs_key_type_t type;
  } names[] = {
      {"smallint", PGS_TYPE_SMALLINT},
      {"int2", PGS_TYPE_SMALLINT},
      {"int", PGS_TYPE_INT},
      {"integer", PGS_TYPE_INT},
      {"int4", PGS_TYPE_INT},
      {"bigint", PGS_TYPE_BIGINT},
      {"int8", PGS_TYPE_BIGINT},
      {"text", PGS_TYPE_TEXT},
      {"uuid", PGS_TYPE_UUID},
      {"date", PGS_TYPE_DATE},
      {"timestamptz", PGS_TYPE_TIMESTAMPTZ},
  };
  for (size_t i = 0; i < PGS_ARRAY_LEN(names); i++) {
    if (!strcasecmp(name, names[i].name)) {
      *out = names[i].type;
      return true;
    }
  }
  return false;
}

bool pgs_strategy_parse(const char *name, pgs_strategy_t *out) {
  for (size_t i = 0; i < PGS_ARRAY_LEN(strategy_names); i++) {
    if (!strcasecmp(name, strategy_names[i])) {
      *out = (pgs_strategy_t)i;
      return true;
    }
  }
  return false;
}

/* ---- errors ---- */

/* Messages quote the input like PostgreSQL does, shortened so that they fit
 * pgs_key_error_t. */
#define QUOTE_MAX 80

static void quote_input(const char *text, size_t len, char *buf, size_t cap) {
  size_t n = 0;
  for (size_t i = 0; i < len && n + 4 < cap; i++) {
    if (i == QUOTE_MAX) {
      memcpy(buf + n, "...", 3);
      n += 3;
      break;
    }
    buf[n++] = text[i] == '\0' ? '?' : text[i];
  }
  buf[n] = '\0';
}

PGS_PRINTF(3, 4)
static pgs_status_t key_error(pgs_key_error_t *err, const char *sqlstate, const char *fmt, ...) {
  if (err != NULL) {
    memcpy(err->sqlstate, sqlstate, 5);
    err->sqlstate[5] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
  }
  return PGS_EINVAL;
}

static pgs_status_t syntax_error(pgs_key_error_t *err, pgs_key_type_t type, const char *text,
                                 size_t len, const char *sqlstate, const char *note) {
  char q[QUOTE_MAX + 8];
  quote_input(text, len, q, sizeof(q));
  return key_error(err, sqlstate, "invalid input syntax for type %s: \"%s\"%s", pg_type_names[type],
                   q, note);
}

static pgs_status_t range_error(pgs_key_error_t *err, pgs_key_type_t type, const char *text,
                                size_t len) {
  char q[QUOTE_MAX + 8];
  quote_input(text, len, q, sizeof(q));
  return key_error(err, "22003", "value \"%s\" is out of range for type %s", q,
                   pg_type_names[type]);
}

static pgs_status_t datetime_error(pgs_key_error_t *err, const char *sqlstate, const char *what,
                                   const char *text, size_t len) {
  char q[QUOTE_MAX + 8];
  quote_input(text, len, q, sizeof(q));
  return key_error(err, sqlstate, "%s: \"%s\"", what, q);
}

/* ---- text input ---- */

/* PostgreSQL trims with isspace() in the C locale. */
static bool pg_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* pg_strtoint16/32/64: optional blanks, sign, at least one digit, blanks.
 * Overflow is reported as soon as it happens, before trailing junk is seen,
 * as PostgreSQL does. */
static pgs_status_t parse_integer(pgs_key_type_t type, const char *text, size_t len, int64_t *out,
                                  pgs_key_error_t *err) {
  uint64_t limit = type == PGS_TYPE_SMALLINT ? INT16_MAX
                   : type == PGS_TYPE_INT    ? INT32_MAX
                                             : (uint64_t)INT64_MAX;
  size_t p = 0;
  bool negative = false;
  while (p < len && pg_space(text[p])) p++;
  if (p < len && (text[p] == '-' || text[p] == '+')) negative = text[p++] == '-';
  if (negative) limit++;
  if (p >= len || !is_digit(text[p])) return syntax_error(err, type, text, len, "22P02", "");
  uint64_t acc = 0;
  while (p < len && is_digit(text[p])) {
    unsigned digit = (unsigned)(text[p++] - '0');
    if (acc > (limit - digit) / 10) return range_error(err, type, text, len);
    acc = acc * 10 + digit;
  }
  while (p < len && pg_space(text[p])) p++;
  if (p != len) return syntax_error(err, type, text, len, "22P02", "");
  *out = negative ? (int64_t)(0 - acc) : (int64_t)acc;
  return PGS_OK;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* uuid_in: an optional brace pair around 32 hex digits, with a hyphen
 * allowed after any group of four; nothing else, not even blanks. */
static pgs_status_t parse_uuid(const char *text, size_t len, uint8_t out[16],
                               pgs_key_error_t *err) {
  size_t p = 0;
  bool braces = len > 0 && text[0] == '{';
  if (braces) p++;
  for (int i = 0; i < 16; i++) {
    if (p + 2 > len) goto bad;
    int hi = hex_value(text[p]), lo = hex_value(text[p + 1]);
    if (hi < 0 || lo < 0) goto bad;
    out[i] = (uint8_t)(hi << 4 | lo);
    p += 2;
    if (p < len && text[p] == '-' && i % 2 == 1 && i < 15) p++;
  }
  if (braces) {
    if (p >= len || text[p] != '}') goto bad;
    p++;
  }
  if (p == len) return PGS_OK;
bad:
  return syntax_error(err, PGS_TYPE_UUID, text, len, "22P02", "");
}

/* Days from 1970-01-01 to Y-M-D in the proleptic Gregorian calendar (the one
 * PostgreSQL uses for every date), Y astronomical (1 BC is year 0). The
 * usual era computation: 400-year cycles of 146097 days, years starting in
 * March so that the leap day comes last. */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = era * 400 + yoe + (*m <= 2);
}

static int days_in_month(int64_t y, int m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

/* Reads up to MAX digits (at least MIN) at *P. */
static bool read_digits(const char *text, size_t len, size_t *p, int min, int max, int64_t *out) {
  int64_t v = 0;
  int n = 0;
  while (*p < len && is_digit(text[*p]) && n < max) {
    v = v * 10 + (text[*p] - '0');
    (*p)++;
    n++;
  }
  *out = v;
  return n >= min && !(*p < len && is_digit(text[*p]));
}

static bool match_word(const char *text, size_t len, size_t p, const char *word) {
  size_t wl = strlen(word);
  return p <= len && len - p >= wl && !strncasecmp(text + p, word, wl);
}

/* The special words datetime input knows. Returns 1 with *OUT set for the
 * fixed ones, -1 for the ones that depend on the clock (refused), 0 when
 * TEXT (trimmed) is no special word. */
static int special_datetime(const char *text, size_t len, bool timestamp, int64_t *out) {
  static const char *const clock_words[] = {"now", "today", "tomorrow", "yesterday", "allballs"};
  if (len == 8 && !strncasecmp(text, "infinity", 8)) {
    *out = timestamp ? PG_TS_NOEND : PG_DATE_NOEND;
    return 1;
  }
  if (len == 9 && !strncasecmp(text, "-infinity", 9)) {
    *out = timestamp ? PG_TS_NOBEGIN : PG_DATE_NOBEGIN;
    return 1;
  }
  if (len == 5 && !strncasecmp(text, "epoch", 5)) {
    *out = timestamp ? -DAYS_1970_TO_2000 * USECS_PER_DAY : -DAYS_1970_TO_2000;
    return 1;
  }
  for (size_t i = 0; i < PGS_ARRAY_LEN(clock_words); i++)
    if (strlen(clock_words[i]) == len && !strncasecmp(text, clock_words[i], len)) return -1;
  return 0;
}

#define ISO_NOTE " (pgshard reads shard-key dates and times in ISO 8601 form only)"

typedef struct datetime_fields {
  int64_t year; /* astronomical after BC handling */
  int month, day;
  int hour, minute, second;
  int64_t fsec; /* microseconds, may be 1000000 after rounding */
  bool has_time;
  bool has_zone;
  int64_t zone_seconds; /* east of UTC */
  bool bc;
} datetime_fields_t;

/* Fractional seconds as PostgreSQL computes them: strtod of ".digits" times
 * a million, rounded by rint(), so that inputs with more than six digits
 * round exactly as the server rounds them. */
static int64_t fraction_usecs(const char *digits, size_t n) {
  if (n <= 6) {
    int64_t v = 0;
    for (size_t i = 0; i < 6; i++) v = v * 10 + (i < n ? digits[i] - '0' : 0);
    return v;
  }
  char buf[80];
  if (n > sizeof(buf) - 3) n = sizeof(buf) - 3;
  buf[0] = '0';
  buf[1] = '.';
  memcpy(buf + 2, digits, n);
  buf[n + 2] = '\0';
  return (int64_t)rint(strtod(buf, NULL) * 1000000.0);
}

/* Up to 9 digits at *P (PostgreSQL's strtoint on a zone part). */
static bool read_number(const char *text, size_t len, size_t *p, int64_t *out) {
  size_t start = *p;
  if (!read_digits(text, len, p, 1, 9, out)) return false;
  return *p > start;
}

/* A numeric zone after the sign at TEXT[*P] (DecodeTimezone): H[H...] with
 * optional :MM[:SS]; without colons, three or more digits are HHMM. Returns
 * 0, 1 syntax, 3 out of range. */
static int parse_zone_offset(const char *text, size_t len, size_t *p, int64_t *seconds) {
  int sign = text[*p] == '-' ? -1 : 1;
  int64_t hh, mm = 0, ss = 0;
  size_t start = ++*p;
  if (!read_number(text, len, p, &hh)) return 1;
  if (*p < len && text[*p] == ':') {
    ++*p;
    if (!read_number(text, len, p, &mm)) return 1;
    if (*p < len && text[*p] == ':') {
      ++*p;
      if (!read_number(text, len, p, &ss)) return 1;
    }
  } else if (*p - start > 2) {
    mm = hh % 100;
    hh /= 100;
  }
  if (hh > 15 || mm > 59 || ss > 59) return 3;
  *seconds = sign * (hh * 3600 + mm * 60 + ss);
  return 0;
}

/* ISO 8601 forms of date and timestamptz input:
 *   DATE [('T' | blanks) TIME] [blanks] [ZONE] [blanks BC]
 *   DATE = Y{4,7}-M[M]-D[D]    TIME = H[H]:M[M][:S[S][.fff...]]
 *   ZONE = Z | UTC | GMT | +H... (see parse_zone_offset)
 * Returns 0 on success, else the kind of failure: 1 syntax, 2 field out of
 * range, 3 zone out of range, 4 a named time zone (not read: that needs the
 * tz database). */
static int parse_iso_datetime(const char *text, size_t len, datetime_fields_t *f) {
  size_t p = 0;
  int64_t v;
  memset(f, 0, sizeof(*f));
  if (!read_digits(text, len, &p, 4, 7, &f->year)) return 1;
  if (p >= len || text[p] != '-') return 1;
  p++;
  if (!read_digits(text, len, &p, 1, 2, &v)) return 1;
  f->month = (int)v;
  if (p >= len || text[p] != '-') return 1;
  p++;
  if (!read_digits(text, len, &p, 1, 2, &v)) return 1;
  f->day = (int)v;

  if (p < len && (text[p] == 'T' || text[p] == 't' || pg_space(text[p]))) {
    size_t q = p + 1;
    while (q < len && pg_space(text[q])) q++;
    if (q < len && is_digit(text[q])) {
      p = q;
      if (!read_digits(text, len, &p, 1, 2, &v)) return 1;
      f->hour = (int)v;
      if (p >= len || text[p] != ':') return 1;
      p++;
      if (!read_digits(text, len, &p, 1, 2, &v)) return 1;
      f->minute = (int)v;
      if (p < len && text[p] == ':') {
        p++;
        if (!read_digits(text, len, &p, 1, 2, &v)) return 1;
        f->second = (int)v;
        if (p < len && text[p] == '.') {
          size_t start = ++p;
          while (p < len && is_digit(text[p])) p++;
          f->fsec = fraction_usecs(text + start, p - start);
        }
      }
      f->has_time = true;
    } else if (text[p] == 'T' || text[p] == 't') {
      return 1;
    }
  }
  size_t before_zone = p;
  while (p < len && pg_space(text[p])) p++;
  bool blank_before_zone = p > before_zone;
  if (p < len && (text[p] == '+' || text[p] == '-')) {
    int rc = parse_zone_offset(text, len, &p, &f->zone_seconds);
    if (rc != 0) return rc;
    f->has_zone = true;
  } else if ((match_word(text, len, p, "utc") || match_word(text, len, p, "gmt")) &&
             (p + 3 == len || !isalpha((unsigned char)text[p + 3]))) {
    p += 3;
    f->has_zone = true;
  } else if (p < len && (text[p] == 'Z' || text[p] == 'z') &&
             (p + 1 == len || !isalpha((unsigned char)text[p + 1]))) {
    p++;
    f->has_zone = true;
  }
  while (p < len && pg_space(text[p])) p++;
  if (match_word(text, len, p, "bc") && (p + 2 == len || pg_space(text[p + 2]))) {
    f->bc = true;
    p += 2;
    while (p < len && pg_space(text[p])) p++;
  }
  if (p != len) {
    /* A word where the zone goes: a zone name or abbreviation (CET,
     * Europe/Berlin) that only the server's tz database can read. */
    if (!f->has_zone && !f->bc && blank_before_zone && isalpha((unsigned char)text[p])) return 4;
    return 1;
  }

  if (f->year == 0 || f->month < 1 || f->month > 12) return 2;
  if (f->bc) f->year = 1 - f->year;
  if (f->day < 1 || f->day > days_in_month(f->year, f->month)) return 2;
  if (f->hour > 24 || f->minute > 59 || f->second > 60 || f->fsec > USECS_PER_SEC ||
      (f->hour == 24 && (f->minute > 0 || f->second > 0 || f->fsec > 0)))
    return 2;
  return 0;
}

#define ZONE_NOTE "named time zones cannot be read in shard keys (give a numeric offset, Z or UTC)"

/* What date and timestamptz input share: trim, the special words
 * (infinity, epoch; clock words refused), then the ISO fields. On PGS_OK
 * either *SPECIAL is true and OUT holds the value, or F holds the fields. */
static pgs_status_t read_datetime(const char *text, size_t len, pgs_key_type_t type,
                                  datetime_fields_t *f, int64_t *out, bool *special,
                                  pgs_key_error_t *err) {
  bool timestamp = type == PGS_TYPE_TIMESTAMPTZ;
  size_t s = 0, e = len;
  while (s < e && pg_space(text[s])) s++;
  while (e > s && pg_space(text[e - 1])) e--;
  int word = special_datetime(text + s, e - s, timestamp, out);
  *special = word == 1;
  if (word == 1) return PGS_OK;
  if (word == -1)
    return datetime_error(err, "0A000",
                          timestamp ? "timestamp input that depends on the current time cannot be "
                                      "a shard key"
                                    : "date input that depends on the current date cannot be a "
                                      "shard key",
                          text, len);
  /* date_in reads the timestamp forms too and keeps only the date. */
  switch (parse_iso_datetime(text + s, e - s, f)) {
  case 0:
    return PGS_OK;
  case 2:
    return datetime_error(err, "22008", "date/time field value out of range", text, len);
  case 3:
    return datetime_error(err, "22009", "time zone displacement out of range", text, len);
  case 4:
    return datetime_error(err, "0A000", ZONE_NOTE, text, len);
  default:
    return syntax_error(err, type, text, len, "22007", ISO_NOTE);
  }
}

/* PostgreSQL's IS_VALID_JULIAN on an astronomical year and a month: from
 * 4714-11 BC to 5874898-05, whatever the day. */
static bool julian_month_valid(int64_t year, int month) {
  return (year > -4713 || (year == -4713 && month >= 11)) &&
         (year < 5874898 || (year == 5874898 && month < 6));
}

static pgs_status_t parse_date(const char *text, size_t len, int64_t *out, pgs_key_error_t *err) {
  datetime_fields_t f;
  bool special;
  pgs_status_t st = read_datetime(text, len, PGS_TYPE_DATE, &f, out, &special, err);
  if (st != PGS_OK || special) return st;
  int64_t days = days_from_civil(f.year, f.month, f.day) - DAYS_1970_TO_2000;
  if (days < PG_MIN_DATE || days >= PG_END_DATE)
    return datetime_error(err, "22008", "date out of range", text, len);
  *out = days;
  return PGS_OK;
}

static pgs_status_t parse_timestamptz(const char *text, size_t len, int64_t *out,
                                      bool *zone_assumed, pgs_key_error_t *err) {
  datetime_fields_t f;
  bool special;
  *zone_assumed = false;
  pgs_status_t st = read_datetime(text, len, PGS_TYPE_TIMESTAMPTZ, &f, out, &special, err);
  if (st != PGS_OK || special) return st;
  /* tm2timestamp, step by step: the local date must be in the Julian-day
   * range by year and month (IS_VALID_JULIAN: so 4714-11-23 BC 23:00-02,
   * which is 4714-11-24 BC in UTC, is a timestamp), its microseconds must
   * fit in 64 bits (years past 294276 do not: days * USECS_PER_DAY would
   * wrap), and the result moved to UTC must lie in the timestamp range. */
  if (!julian_month_valid(f.year, f.month))
    return datetime_error(err, "22008", "timestamp out of range", text, len);
  int64_t days = days_from_civil(f.year, f.month, f.day) - DAYS_1970_TO_2000;
  int64_t time = ((int64_t)f.hour * 3600 + f.minute * 60 + f.second) * USECS_PER_SEC + f.fsec;
  int64_t t;
  if (__builtin_mul_overflow(days, USECS_PER_DAY, &t) || __builtin_add_overflow(t, time, &t) ||
      __builtin_sub_overflow(t, f.zone_seconds * USECS_PER_SEC, &t) || t < PG_MIN_TIMESTAMP ||
      t >= PG_END_TIMESTAMP)
    return datetime_error(err, "22008", "timestamp out of range", text, len);
  *zone_assumed = !f.has_zone;
  *out = t;
  return PGS_OK;
}

static void key_init(pgs_key_t *key, pgs_key_type_t type) {
  key->type = type;
  key->i = 0;
  key->text_len = 0;
  key->zone_assumed = false;
  memset(key->uuid, 0, sizeof(key->uuid));
}

static pgs_status_t set_text(const char *text, size_t len, pgs_key_t *out, pgs_key_error_t *err) {
  if (len > PGS_KEY_MAX_TEXT)
    return key_error(err, "22001", "shard key value too long (%zu bytes; the limit is %d)", len,
                     PGS_KEY_MAX_TEXT);
  if (memchr(text, '\0', len) != NULL)
    return key_error(err, "22021", "invalid byte sequence for encoding \"UTF8\": 0x00");
  memcpy(out->text, text, len);
  out->text_len = len;
  return PGS_OK;
}

pgs_status_t pgs_key_from_text(pgs_key_type_t type, const char *text, size_t len, pgs_key_t *out,
                               pgs_key_error_t *err) {
  key_init(out, type);
  switch (type) {
  case PGS_TYPE_SMALLINT:
  case PGS_TYPE_INT:
  case PGS_TYPE_BIGINT:
    return parse_integer(type, text, len, &out->i, err);
  case PGS_TYPE_TEXT:
    return set_text(text, len, out, err);
  case PGS_TYPE_UUID:
    return parse_uuid(text, len, out->uuid, err);
  case PGS_TYPE_DATE:
    return parse_date(text, len, &out->i, err);
  case PGS_TYPE_TIMESTAMPTZ:
    return parse_timestamptz(text, len, &out->i, &out->zone_assumed, err);
  }
  return key_error(err, "XX000", "unknown key type %d", (int)type);
}

/* ---- binary input ---- */

static uint64_t read_be(const uint8_t *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

/* A binary value of the wrong size: PostgreSQL's receive functions report
 * running short as a protocol violation and leftover bytes as a bad binary
 * representation. */
static pgs_status_t size_error(pgs_key_error_t *err, size_t len, size_t want) {
  if (len < want) return key_error(err, "08P01", "insufficient data left in message");
  return key_error(err, "22P03", "incorrect binary data format in bind parameter");
}

static pgs_status_t type_mismatch(pgs_key_error_t *err, pgs_key_type_t type, uint32_t oid) {
  return key_error(err, "42804", "a binary parameter of type OID %u cannot be a %s shard key", oid,
                   pgs_key_type_name(type));
}

pgs_status_t pgs_key_from_binary(pgs_key_type_t type, uint32_t type_oid, const uint8_t *data,
                                 size_t len, pgs_key_t *out, pgs_key_error_t *err) {
  key_init(out, type);
  switch (type) {
  case PGS_TYPE_SMALLINT:
  case PGS_TYPE_INT:
  case PGS_TYPE_BIGINT: {
    if (type_oid == 0)
      type_oid = type == PGS_TYPE_SMALLINT ? OID_INT2 : type == PGS_TYPE_INT ? OID_INT4 : OID_INT8;
    size_t want = type_oid == OID_INT2 ? 2 : type_oid == OID_INT4 ? 4 : 8;
    if (type_oid != OID_INT2 && type_oid != OID_INT4 && type_oid != OID_INT8)
      return type_mismatch(err, type, type_oid);
    if (len != want) return size_error(err, len, want);
    uint64_t raw = read_be(data, want);
    int64_t v = want == 2 ? (int16_t)raw : want == 4 ? (int32_t)(uint32_t)raw : (int64_t)raw;
    int64_t lo = type == PGS_TYPE_SMALLINT ? INT16_MIN
                 : type == PGS_TYPE_INT    ? INT32_MIN
                                           : INT64_MIN;
    int64_t hi = type == PGS_TYPE_SMALLINT ? INT16_MAX
                 : type == PGS_TYPE_INT    ? INT32_MAX
                                           : INT64_MAX;
    if (v < lo || v > hi) {
      char buf[24];
      int n = snprintf(buf, sizeof(buf), "%lld", (long long)v);
      return range_error(err, type, buf, (size_t)n);
    }
    out->i = v;
    return PGS_OK;
  }
  case PGS_TYPE_TEXT:
    if (type_oid != 0 && type_oid != OID_TEXT && type_oid != OID_VARCHAR &&
        type_oid != OID_BPCHAR && type_oid != OID_NAME && type_oid != OID_UNKNOWN)
      return type_mismatch(err, type, type_oid);
    /* character(n) compares with text after losing its trailing blanks. */
    if (type_oid == OID_BPCHAR)
      while (len > 0 && data[len - 1] == ' ') len--;
    return set_text((const char *)data, len, out, err);
  case PGS_TYPE_UUID:
    if (type_oid != 0 && type_oid != OID_UUID) return type_mismatch(err, type, type_oid);
    if (len != 16) return size_error(err, len, 16);
    memcpy(out->uuid, data, 16);
    return PGS_OK;
  case PGS_TYPE_DATE: {
    if (type_oid != 0 && type_oid != OID_DATE) return type_mismatch(err, type, type_oid);
    if (len != 4) return size_error(err, len, 4);
    int32_t days = (int32_t)(uint32_t)read_be(data, 4);
    if (days != PG_DATE_NOBEGIN && days != PG_DATE_NOEND &&
        (days < PG_MIN_DATE || days >= PG_END_DATE))
      return key_error(err, "22008", "date out of range");
    out->i = days;
    return PGS_OK;
  }
  case PGS_TYPE_TIMESTAMPTZ: {
    if (type_oid != 0 && type_oid != OID_TIMESTAMPTZ && type_oid != OID_TIMESTAMP)
      return type_mismatch(err, type, type_oid);
    if (len != 8) return size_error(err, len, 8);
    int64_t t = (int64_t)read_be(data, 8);
    if (t != PG_TS_NOBEGIN && t != PG_TS_NOEND && (t < PG_MIN_TIMESTAMP || t >= PG_END_TIMESTAMP))
      return key_error(err, "22008", "timestamp out of range");
    out->i = t;
    out->zone_assumed = type_oid == OID_TIMESTAMP;
    return PGS_OK;
  }
  }
  return key_error(err, "XX000", "unknown key type %d", (int)type);
}

/* ---- canonical encoding, comparison, printing ---- */

static void write_be(uint8_t *p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

size_t pgs_key_encode(const pgs_key_t *key, uint8_t *buf, size_t cap) {
  switch (key->type) {
  case PGS_TYPE_SMALLINT:
  case PGS_TYPE_INT:
  case PGS_TYPE_BIGINT:
  case PGS_TYPE_TIMESTAMPTZ:
    PGS_ASSERT(cap >= 8);
    write_be(buf, (uint64_t)key->i, 8);
    return 8;
  case PGS_TYPE_DATE:
    PGS_ASSERT(cap >= 4);
    write_be(buf, (uint32_t)(int32_t)key->i, 4);
    return 4;
  case PGS_TYPE_UUID:
    PGS_ASSERT(cap >= 16);
    memcpy(buf, key->uuid, 16);
    return 16;
  case PGS_TYPE_TEXT:
    PGS_ASSERT(cap >= key->text_len);
    memcpy(buf, key->text, key->text_len);
    return key->text_len;
  }
  return 0;
}

/* Text compares byte-wise, like COLLATE "C": range bounds on text columns
 * mean byte order, whatever the database's collation. */
int pgs_key_compare(const pgs_key_t *a, const pgs_key_t *b) {
  switch (a->type) {
  case PGS_TYPE_TEXT: {
    size_t n = a->text_len < b->text_len ? a->text_len : b->text_len;
    int c = memcmp(a->text, b->text, n);
    if (c != 0) return c < 0 ? -1 : 1;
    return a->text_len < b->text_len ? -1 : a->text_len > b->text_len;
  }
  case PGS_TYPE_UUID: {
    int c = memcmp(a->uuid, b->uuid, 16);
    return c < 0 ? -1 : c > 0;
  }
  default:
    return a->i < b->i ? -1 : a->i > b->i;
  }
}

static void format_date(int64_t days, char *buf, size_t cap, int *year_bc) {
  int64_t y;
  int m, d;
  civil_from_days(days + DAYS_1970_TO_2000, &y, &m, &d);
  *year_bc = y <= 0;
  snprintf(buf, cap, "%04lld-%02d-%02d", (long long)(y <= 0 ? 1 - y : y), m, d);
}

void pgs_key_format(const pgs_key_t *key, char *buf, size_t cap) {
  if (cap == 0) return;
  switch (key->type) {
  case PGS_TYPE_SMALLINT:
  case PGS_TYPE_INT:
  case PGS_TYPE_BIGINT:
    snprintf(buf, cap, "%lld", (long long)key->i);
    return;
  case PGS_TYPE_TEXT: {
    size_t n = key->text_len < cap - 1 ? key->text_len : cap - 1;
    memcpy(buf, key->text, n);
    buf[n] = '\0';
    return;
  }
  case PGS_TYPE_UUID: {
    const uint8_t *u = key->uuid;
    snprintf(buf, cap, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
    return;
  }
  case PGS_TYPE_DATE: {
    if (key->i == PG_DATE_NOEND || key->i == PG_DATE_NOBEGIN) {
      snprintf(buf, cap, "%s", key->i == PG_DATE_NOEND ? "infinity" : "-infinity");
      return;
    }
    char date[32];
    int bc;
    format_date(key->i, date, sizeof(date), &bc);
    snprintf(buf, cap, "%s%s", date, bc ? " BC" : "");
    return;
  }
  case PGS_TYPE_TIMESTAMPTZ: {
    if (key->i == PG_TS_NOEND || key->i == PG_TS_NOBEGIN) {
      snprintf(buf, cap, "%s", key->i == PG_TS_NOEND ? "infinity" : "-infinity");
      return;
    }
    int64_t days = key->i / USECS_PER_DAY, rest = key->i % USECS_PER_DAY;
    if (rest < 0) {
      rest += USECS_PER_DAY;
      days--;
    }
    char date[32], frac[16] = "";
    int bc;
    format_date(days, date, sizeof(date), &bc);
    int64_t secs = rest / USECS_PER_SEC, usecs = rest % USECS_PER_SEC;
    if (usecs) {
      snprintf(frac, sizeof(frac), ".%06lld", (long long)usecs);
      for (size_t n = strlen(frac); n > 1 && frac[n - 1] == '0'; n--) frac[n - 1] = '\0';
    }
    snprintf(buf, cap, "%s %02d:%02d:%02d%s+00%s", date, (int)(secs / 3600), (int)(secs / 60 % 60),
             (int)(secs % 60), frac, bc ? " BC" : "");
    return;
  }
  }
  buf[0] = '\0';
}

/* ---- hashing ---- */

uint64_t pgs_key_hash_xxh3(const pgs_key_t *key) {
  /* A text key is its own encoding: hash it where it is. */
  if (key->type == PGS_TYPE_TEXT) return XXH3_64bits(key->text, key->text_len);
  uint8_t buf[16];
  size_t n = pgs_key_encode(key, buf, sizeof(buf));
  /* Told to the compiler: XXH3's paths for longer input, inlined, are dead
   * (gcc -O3 warns of their reads past buf otherwise). */
  if (n > sizeof(buf)) __builtin_unreachable();
  return XXH3_64bits(buf, n);
}

/*
 * PostgreSQL's hash functions are Bob Jenkins' lookup3 ("hashlittle"), with
 * the 64-bit "extended" variants mixing a seed into the initial state and
 * returning both final words. The partition hash of a one-column key is
 * hash_combine64(0, typhashextended(value, HASH_PARTITION_SEED)).
 */
#define PG_HASH_PARTITION_SEED UINT64_C(0x7A5B22367996DCFD)
#define PG_HASH_INIT (UINT32_C(0x9e3779b9) + UINT32_C(3923095))

static inline uint32_t rot32(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

#define JENKINS_MIX(a, b, c)                                                                       \
  do {                                                                                             \
    a -= c;                                                                                        \
    a ^= rot32(c, 4);                                                                              \
    c += b;                                                                                        \
    b -= a;                                                                                        \
    b ^= rot32(a, 6);                                                                              \
    a += c;                                                                                        \
    c -= b;                                                                                        \
    c ^= rot32(b, 8);                                                                              \
    b += a;                                                                                        \
    a -= c;                                                                                        \
    a ^= rot32(c, 16);                                                                             \
    c += b;                                                                                        \
    b -= a;                                                                                        \
    b ^= rot32(a, 19);                                                                             \
    a += c;                                                                                        \
    c -= b;                                                                                        \
    c ^= rot32(b, 4);                                                                              \
    b += a;                                                                                        \
  } while (0)

#define JENKINS_FINAL(a, b, c)                                                                     \
  do {                                                                                             \
    c ^= b;                                                                                        \
    c -= rot32(b, 14);                                                                             \
    a ^= c;                                                                                        \
    a -= rot32(c, 11);                                                                             \
    b ^= a;                                                                                        \
    b -= rot32(a, 25);                                                                             \
    c ^= b;                                                                                        \
    c -= rot32(b, 16);                                                                             \
    a ^= c;                                                                                        \
    a -= rot32(c, 4);                                                                              \
    b ^= a;                                                                                        \
    b -= rot32(a, 14);                                                                             \
    c ^= b;                                                                                        \
    c -= rot32(b, 24);                                                                             \
  } while (0)

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* hash_bytes_extended: bytes read as little-endian words whatever the
 * machine (PostgreSQL reads native words; every platform we build for is
 * little-endian, and a big-endian PostgreSQL would hash differently). In the
 * tail, the first byte of the third word is left for the length. */
static uint64_t pg_hash_bytes_extended(const uint8_t *k, size_t len, uint64_t seed) {
  uint32_t a, b, c;
  a = b = c = PG_HASH_INIT + (uint32_t)len;
  if (seed != 0) {
    a += (uint32_t)(seed >> 32);
    b += (uint32_t)seed;
    JENKINS_MIX(a, b, c);
  }
  while (len >= 12) {
    a += le32(k);
    b += le32(k + 4);
    c += le32(k + 8);
    JENKINS_MIX(a, b, c);
    k += 12;
    len -= 12;
  }
  switch (len) {
  case 11:
    c += (uint32_t)k[10] << 24;
    /* fall through */
  case 10:
    c += (uint32_t)k[9] << 16;
    /* fall through */
  case 9:
    c += (uint32_t)k[8] << 8;
    /* fall through */
  case 8:
    b += (uint32_t)k[7] << 24;
    /* fall through */
  case 7:
    b += (uint32_t)k[6] << 16;
    /* fall through */
  case 6:
    b += (uint32_t)k[5] << 8;
    /* fall through */
  case 5:
    b += k[4];
    /* fall through */
  case 4:
    a += (uint32_t)k[3] << 24;
    /* fall through */
  case 3:
    a += (uint32_t)k[2] << 16;
    /* fall through */
  case 2:
    a += (uint32_t)k[1] << 8;
    /* fall through */
  case 1:
    a += k[0];
    break;
  default:
    break;
  }
  JENKINS_FINAL(a, b, c);
  return (uint64_t)b << 32 | c;
}

/* hash_bytes_uint32_extended: one word, seeded. */
static uint64_t pg_hash_uint32_extended(uint32_t k, uint64_t seed) {
  uint32_t a, b, c;
  a = b = c = PG_HASH_INIT + 4;
  if (seed != 0) {
    a += (uint32_t)(seed >> 32);
    b += (uint32_t)seed;
    JENKINS_MIX(a, b, c);
  }
  a += k;
  JENKINS_FINAL(a, b, c);
  return (uint64_t)b << 32 | c;
}

/* hashint8extended folds the high word into the low one, inverted for
 * negative values, so that every integer width hashes a value alike
 * (hashint2extended and hashint4extended hash the sign-extended int32). */
static uint64_t pg_hashint8extended(int64_t v, uint64_t seed) {
  uint32_t lo = (uint32_t)v;
  uint32_t hi = (uint32_t)((uint64_t)v >> 32);
  lo ^= v >= 0 ? hi : ~hi;
  return pg_hash_uint32_extended(lo, seed);
}

static uint64_t pg_hash_combine64(uint64_t a, uint64_t b) {
  a ^= b + UINT64_C(0x49a0f4dd15e5a8e3) + (a << 54) + (a >> 7);
  return a;
}

uint64_t pgs_key_hash_postgres(const pgs_key_t *key) {
  uint64_t h;
  switch (key->type) {
  case PGS_TYPE_SMALLINT:
  case PGS_TYPE_INT:
  case PGS_TYPE_BIGINT:
  case PGS_TYPE_TIMESTAMPTZ: /* timestamp_hash_extended is hashint8extended */
    h = pg_hashint8extended(key->i, PG_HASH_PARTITION_SEED);
    break;
  case PGS_TYPE_DATE: /* date is an int4 */
    h = pg_hash_uint32_extended((uint32_t)(int32_t)key->i, PG_HASH_PARTITION_SEED);
    break;
  case PGS_TYPE_UUID:
    h = pg_hash_bytes_extended(key->uuid, 16, PG_HASH_PARTITION_SEED);
    break;
  case PGS_TYPE_TEXT: /* hashtextextended under a deterministic collation */
  default:
    h = pg_hash_bytes_extended((const uint8_t *)key->text, key->text_len, PG_HASH_PARTITION_SEED);
    break;
  }
  return pg_hash_combine64(0, h);
}

/* ---- routing ---- */

int pgs_shardmap_slot(const pgs_key_t *key) {
  return (int)(pgs_key_hash_xxh3(key) % PGS_HASH_SLOTS);
}

int pgs_shardmap_slot_shard(int slot, int nshards) {
  return (int)((int64_t)slot * nshards / PGS_HASH_SLOTS);
}

int pgs_shardmap_slot_owner(const pgs_database_t *db, int slot) {
  return db->slot_shard ? db->slot_shard[slot] : pgs_shardmap_slot_shard(slot, db->nshards);
}

const pgs_table_t *pgs_shardmap_find_table(const pgs_database_t *db, const char *name) {
  for (int i = 0; i < db->shardmap.ntables; i++)
    if (!strcmp(db->shardmap.tables[i].name, name)) return &db->shardmap.tables[i];
  return NULL;
}

int pgs_shardmap_find_shard(const pgs_database_t *db, const char *name) {
  for (int i = 0; i < db->nshards; i++)
    if (!strcmp(db->shards[i].name, name)) return i;
  return -1;
}

const pgs_geo_value_t *pgs_shardmap_find_geo(const pgs_shardmap_t *map, const pgs_key_t *key) {
  int lo = 0, hi = map->ngeo;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    int c = pgs_key_compare(map->geo[mid].key, key);
    if (c == 0) return &map->geo[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

const pgs_tenant_pin_t *pgs_shardmap_find_tenant(const pgs_shardmap_t *map, const pgs_key_t *key) {
  int lo = 0, hi = map->ntenants;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    int c = pgs_key_compare(map->tenants[mid].key, key);
    if (c == 0) return &map->tenants[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

int pgs_shardmap_region_shards(const pgs_database_t *db, const char *region, int *out, int cap) {
  int n = 0;
  for (int i = 0; i < db->nshards; i++) {
    if (db->shards[i].region == NULL || strcmp(db->shards[i].region, region) != 0) continue;
    if (n < cap) out[n] = i;
    n++;
  }
  return n;
}

static void detail_init(pgs_route_detail_t *d) {
  memset(d, 0, sizeof(*d));
  d->shard = -1;
  d->slot = -1;
  d->range = -1;
}

int pgs_shardmap_hash_shard(const pgs_database_t *db, const pgs_key_t *key,
                            pgs_route_detail_t *detail) {
  pgs_route_detail_t local;
  if (detail == NULL) detail = &local;
  detail_init(detail);
  if (db->nshards <= 0) return -1;
  detail->hashed = true;
  if (db->hash == PGS_HASH_POSTGRES) {
    detail->postgres_hash = true;
    detail->hash = pgs_key_hash_postgres(key);
    detail->shard = (int)(detail->hash % (uint64_t)db->nshards);
  } else {
    detail->hash = pgs_key_hash_xxh3(key);
    detail->slot = (int)(detail->hash % PGS_HASH_SLOTS);
    detail->shard = pgs_shardmap_slot_owner(db, detail->slot);
  }
  return detail->shard;
}

static int route_range(const pgs_table_t *table, const pgs_key_t *key, pgs_route_detail_t *d,
                       pgs_key_error_t *err) {
  /* The last range whose low is <= KEY (open lows sort first). */
  int lo = 0, hi = table->nranges;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    const pgs_range_t *r = &table->ranges[mid];
    if (!r->has_low || pgs_key_compare(r->low, key) <= 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  int i = lo - 1;
  if (i >= 0) {
    const pgs_range_t *r = &table->ranges[i];
    if (!r->has_high || pgs_key_compare(key, r->high) < 0) {
      d->range = i;
      d->shard = r->shard;
      return r->shard;
    }
  }
  char text[128];
  pgs_key_format(key, text, sizeof(text));
  key_error(err, "22023", "value \"%s\" of column %s is in no range of table %s", text,
            table->column, table->name);
  return -1;
}

static int route_geo(const pgs_database_t *db, const pgs_table_t *table, const pgs_key_t *key,
                     pgs_route_detail_t *d, pgs_key_error_t *err) {
  const pgs_geo_value_t *g = pgs_shardmap_find_geo(&db->shardmap, key);
  const char *region = g ? g->region : db->shardmap.geo_default;
  char text[128];
  if (region == NULL) {
    pgs_key_format(key, text, sizeof(text));
    key_error(err, "22023", "value \"%s\" of column %s is in no region of [geo.%s]", text,
              table->column, db->name);
    return -1;
  }
  d->region = region;
  d->geo_default = g == NULL;
  int n = pgs_shardmap_region_shards(db, region, NULL, 0);
  if (n == 0) {
    key_error(err, "22023", "region %s of [geo.%s] has no shard", region, db->name);
    return -1;
  }
  /* Several shards in the region: spread over them by xxh3 slot, in the
   * default layout over the region's shards (never by [slots.DB], which
   * is for the database's whole shard list). */
  int pick = 0;
  if (n > 1) {
    d->hashed = true;
    d->hash = pgs_key_hash_xxh3(key);
    d->slot = (int)(d->hash % PGS_HASH_SLOTS);
    pick = pgs_shardmap_slot_shard(d->slot, n);
  }
  for (int i = 0, seen = 0; i < db->nshards; i++) {
    if (db->shards[i].region && !strcmp(db->shards[i].region, region) && seen++ == pick) {
      d->shard = i;
      break;
    }
  }
  return d->shard;
}

int pgs_shardmap_route_detail(const pgs_database_t *db, const pgs_table_t *table,
                              const pgs_key_t *key, pgs_route_detail_t *detail,
                              pgs_key_error_t *err) {
  pgs_route_detail_t local;
  if (detail == NULL) detail = &local;
  detail_init(detail);
  if (key->type != table->type) {
    key_error(err, "42804", "a %s key cannot route table %s (column %s is %s)",
              pgs_key_type_name(key->type), table->name, table->column,
              pgs_key_type_name(table->type));
    return -1;
  }
  if (db->nshards <= 0) {
    key_error(err, "XX000", "database %s has no shard", db->name);
    return -1;
  }
  switch (table->strategy) {
  case PGS_STRATEGY_HASH:
    return pgs_shardmap_hash_shard(db, key, detail);
  case PGS_STRATEGY_RANGE:
    return route_range(table, key, detail, err);
  case PGS_STRATEGY_GEO:
    return route_geo(db, table, key, detail, err);
  case PGS_STRATEGY_TENANT: {
    const pgs_tenant_pin_t *pin = pgs_shardmap_find_tenant(&db->shardmap, key);
    if (pin != NULL) {
      detail->pinned = true;
      detail->shard = pin->shard;
      return pin->shard;
    }
    return pgs_shardmap_hash_shard(db, key, detail);
  }
  }
  key_error(err, "XX000", "table %s has an unknown strategy", table->name);
  return -1;
}

int pgs_shardmap_route(const pgs_database_t *db, const pgs_table_t *table, const pgs_key_t *key,
                       pgs_key_error_t *err) {
  return pgs_shardmap_route_detail(db, table, key, NULL, err);
}

void pgs_shardmap_free(pgs_shardmap_t *map) {
  for (int i = 0; i < map->ntables; i++) {
    pgs_table_t *t = &map->tables[i];
    free(t->name);
    free(t->column);
    for (int r = 0; r < t->nranges; r++) {
      free(t->ranges[r].low);
      free(t->ranges[r].high);
    }
    free(t->ranges);
  }
  free(map->tables);
  for (int i = 0; i < map->ngeo; i++) {
    free(map->geo[i].value);
    free(map->geo[i].region);
    free(map->geo[i].key);
  }
  free(map->geo);
  free(map->geo_default);
  for (int i = 0; i < map->ntenants; i++) {
    free(map->tenants[i].key);
    free(map->tenants[i].raw);
  }
  free(map->tenants);
  memset(map, 0, sizeof(*map));
}

/* ---- rebalancing the slot table ---- */

typedef struct slot_count {
  int shard;
  int count;
} slot_count_t;

/* Most slots first, config order among equals. */
static int by_count_desc(const void *pa, const void *pb) {
  const slot_count_t *a = pa, *b = pb;
  if (a->count != b->count) return a->count > b->count ? -1 : 1;
  return a->shard - b->shard;
}

/* Each new shard's share of the slots: PGS_HASH_SLOTS / N, one more for the
 * PGS_HASH_SLOTS % N shards that keep the most (they then give up least). */
static void slot_quotas(const int *count, int n, int *quota) {
  slot_count_t *order = pgs_xcalloc((size_t)n, sizeof(*order));
  for (int i = 0; i < n; i++) order[i] = (slot_count_t){i, count[i]};
  qsort(order, (size_t)n, sizeof(*order), by_count_desc);
  for (int i = 0; i < n; i++) quota[order[i].shard] = PGS_HASH_SLOTS / n + (i < PGS_HASH_SLOTS % n);
  free(order);
}

/* Gives the free slots of OUT (-1) to the shards under quota: the one
 * lacking most first (config order among equals), each its whole lack as
 * the next free slots in slot order, so they arrive in runs. */
static void fill_free_slots(int16_t *out, int *count, const int *quota, int n) {
  int next = 0;
  for (;;) {
    int pick = -1;
    for (int i = 0; i < n; i++)
      if (quota[i] > count[i] && (pick < 0 || quota[i] - count[i] > quota[pick] - count[pick]))
        pick = i;
    if (pick < 0) return;
    while (count[pick] < quota[pick] && next < PGS_HASH_SLOTS) {
      if (out[next] < 0) {
        out[next] = (int16_t)pick;
        count[pick]++;
      }
      next++;
    }
    if (count[pick] < quota[pick]) return; /* cannot happen: quotas sum to the slots */
  }
}

/* OLD's owner of each slot as an index into NEW_NAMES (-1: a removed shard);
 * counts what each new shard keeps. */
static void keep_slots(const pgs_database_t *old, const char *const *new_names, int new_n,
                       int16_t *out, int *count) {
  int *to = pgs_xcalloc((size_t)old->nshards + 1, sizeof(*to));
  for (int o = 0; o < old->nshards; o++) {
    to[o] = -1;
    for (int i = 0; i < new_n && to[o] < 0; i++)
      if (!strcmp(old->shards[o].name, new_names[i])) to[o] = i;
  }
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    int o = pgs_shardmap_slot_owner(old, slot);
    out[slot] = (int16_t)(o >= 0 && o < old->nshards ? to[o] : -1);
    if (out[slot] >= 0) count[out[slot]]++;
  }
  free(to);
}

int pgs_shardmap_rebalance_slots(const pgs_database_t *old, const char *const *new_names, int new_n,
                                 int16_t *out) {
  if (new_n <= 0) return -1;
  int *count = pgs_xcalloc((size_t)new_n, sizeof(*count));
  int *quota = pgs_xcalloc((size_t)new_n, sizeof(*quota));
  keep_slots(old, new_names, new_n, out, count);
  slot_quotas(count, new_n, quota);
  /* A shard over its share gives up its highest slots. */
  for (int slot = PGS_HASH_SLOTS - 1; slot >= 0; slot--) {
    int s = out[slot];
    if (s >= 0 && count[s] > quota[s]) {
      out[slot] = -1;
      count[s]--;
    }
  }
  fill_free_slots(out, count, quota, new_n);
  int moved = 0;
  for (int slot = 0; slot < PGS_HASH_SLOTS; slot++) {
    int o = pgs_shardmap_slot_owner(old, slot);
    const char *was = o >= 0 && o < old->nshards ? old->shards[o].name : "";
    moved += strcmp(was, new_names[out[slot]]) != 0;
  }
  free(count);
  free(quota);
  return moved;
}
