/*
 * value.h — result column values as PostgreSQL sends them in DataRow (text
 * or binary format), understood well enough to merge rows of several
 * shards exactly as one server would have produced them: order them,
 * combine count/sum/min/max/avg. Pure: no I/O.
 *
 * Types are known by OID (from a RowDescription). Values are the bytes of
 * one DataRow field (never SQL NULL: callers handle NULL themselves).
 * A value that does not parse for its type, or a type this module does
 * not know, is an error for the caller to report (never a guess): the
 * merge then refuses with the SQLSTATE and message in pgs_value_error_t.
 *
 * Text formats are those of PostgreSQL 15 with its default output settings
 * (DateStyle ISO, IntervalStyle postgres, extra_float_digits 1, bytea hex).
 * Text columns compare bytewise (the C collation; the merge compares text
 * under other collations with collate.h); bpchar ignores trailing blanks,
 * as PostgreSQL.
 */
#ifndef PGSHARD_VALUE_H
#define PGSHARD_VALUE_H

#include "pgshard/common.h"
#include "pgshard/proto.h"

/* Type OIDs (pg_type.h). */
#define PGS_OID_BOOL 16
#define PGS_OID_BYTEA 17
#define PGS_OID_NAME 19
#define PGS_OID_INT8 20
#define PGS_OID_INT2 21
#define PGS_OID_INT4 23
#define PGS_OID_TEXT 25
#define PGS_OID_OID 26
#define PGS_OID_FLOAT4 700
#define PGS_OID_FLOAT8 701
#define PGS_OID_BPCHAR 1042
#define PGS_OID_VARCHAR 1043
#define PGS_OID_DATE 1082
#define PGS_OID_TIME 1083
#define PGS_OID_TIMESTAMP 1114
#define PGS_OID_TIMESTAMPTZ 1184
#define PGS_OID_INTERVAL 1186
#define PGS_OID_NUMERIC 1700
#define PGS_OID_UUID 2950

/* The longest numeric pgshard handles, in base-10000 digits once leading
 * and trailing zero digits are stripped (4000 significant decimal digits);
 * longer values and sums are refused with 54000. */
#define PGS_VALUE_MAX_DIGITS 1000

/* What the merge needs to know about a failure. */
typedef struct pgs_value_error {
  char sqlstate[6]; /* 22P02 bad text, 22P03 bad binary, 22003 overflow,
                       22008 date/time out of range, 54000 numeric too
                       long, 0A000 a type pgshard cannot compare/sum */
  char message[200];
} pgs_value_error_t;

/* Whether values of type OID can be compared (ORDER BY, min, max). */
bool pgs_value_comparable(uint32_t oid);

/*
 * Compare two non-NULL values A and B of type OID, both in FORMAT (0 text,
 * 1 binary). *RESULT < 0, 0, > 0. Numbers compare by value (numeric "1.0"
 * equals "1.00"; NaN sorts above every number, as in PostgreSQL; floats:
 * -0 equals 0, NaN equals NaN and is greatest, Infinity/-Infinity), dates
 * and timestamps by time ("infinity"/"-infinity", BC years), text bytewise
 * (bpchar without trailing blanks), uuid and bytea by bytes, bool false <
 * true. PGS_EINVAL with ERR when a value does not parse or the type is not
 * comparable.
 */
pgs_status_t pgs_value_compare(uint32_t oid, int format, const uint8_t *a, size_t alen,
                               const uint8_t *b, size_t blen, int *result,
                               pgs_value_error_t *err) PGS_MUST_USE;

/*
 * Equality as grouping and DISTINCT see it (PostgreSQL's = of the type):
 * whether equal values of type OID always have equal bytes in one format
 * (not so for numeric 1.0 and 1.00, float -0 and 0, bpchar with trailing
 * blanks); a hash that equal non-NULL values share (from SEED); and
 * whether two values of OID in FORMAT are equal (numeric and floats by
 * value, NaN equal to NaN; bpchar without trailing blanks; other types
 * by their bytes). PGS_EINVAL with ERR when a value does not parse.
 */
bool pgs_value_bytes_equal(uint32_t oid);
pgs_status_t pgs_value_hash(uint32_t oid, int format, const uint8_t *a, size_t alen, uint64_t seed,
                            uint64_t *hash, pgs_value_error_t *err) PGS_MUST_USE;
pgs_status_t pgs_value_equal(uint32_t oid, int format, const uint8_t *a, size_t alen,
                             const uint8_t *b, size_t blen, bool *equal,
                             pgs_value_error_t *err) PGS_MUST_USE;

/*
 * Comparing values of two types, each in its own format, as PostgreSQL's
 * cross-type operators do: integers with each other exactly, integers
 * with numeric exactly, any number with a float as float8 (numeric read
 * as float8in reads its text), text, varchar, name and bpchar as text
 * (bpchar without its trailing blanks); one type in two formats by value.
 * pgs_value_comparable_with says which pairs; others are 0A000.
 */
bool pgs_value_comparable_with(uint32_t a, uint32_t b);
pgs_status_t pgs_value_compare_mixed(uint32_t aoid, int aformat, const uint8_t *a, size_t alen,
                                     uint32_t boid, int bformat, const uint8_t *b, size_t blen,
                                     int *result, pgs_value_error_t *err) PGS_MUST_USE;

/*
 * A running sum of values of one type, the way PostgreSQL's sum() and
 * avg() accumulate: int2/int4/int8 and numeric exactly (arbitrary
 * precision decimal, display scale = the largest input's, as numeric_add),
 * float4/float8 in double precision. The type is the column's type as the
 * shards return it: sum(int4) comes back as int8, sum(int8) as numeric, so
 * merging partial sums means adding int8 or numeric values.
 */
typedef struct pgs_sum {
  uint32_t oid; /* the type of the values added */
  bool any;     /* at least one value added (else the sum is NULL) */
  int64_t i;    /* int2/int4/int8, kept within the type's own range */
  double f;     /* float4/float8 */
  /* numeric: sign, weight and digits in base 10000 as PostgreSQL keeps them */
  int sign;   /* 0 positive, 1 negative, 2 NaN, 3 Infinity, 4 -Infinity */
  int weight; /* base-10000 exponent of digits[0] */
  int dscale; /* decimal digits after the point to display */
  int ndigits;
  int16_t *digits; /* malloc'ed, ndigits of 0..9999, no zero at either end */
  int cap;         /* digits allocated */
} pgs_sum_t;

void pgs_sum_init(pgs_sum_t *sum, uint32_t oid);
void pgs_sum_free(pgs_sum_t *sum);
/* Whether OID can be summed here. */
bool pgs_sum_supported(uint32_t oid);
/* Add one non-NULL value in FORMAT. 22003 when an int8 sum overflows (as
 * PostgreSQL's "bigint out of range"; an int2/int4 sum must stay within
 * its own type, "smallint/integer out of range", so it can be sent as one),
 * or a float sum overflows from finite values; 22P02/22P03 when it does not
 * parse, 54000 when a numeric passes PGS_VALUE_MAX_DIGITS. */
pgs_status_t pgs_sum_add(pgs_sum_t *sum, int format, const uint8_t *value, size_t len,
                         pgs_value_error_t *err) PGS_MUST_USE;
/* Append the sum in FORMAT (0 text, 1 binary) of the sum's own type, as
 * PostgreSQL would print it: int8 as an integer, numeric with its display
 * scale ("12.50"), floats in the shortest form that reads back exactly
 * ("0.1", "1e+20", "Infinity", "NaN"). The caller knows whether any value
 * was added (sum->any) and writes NULL otherwise. */
void pgs_sum_output(const pgs_sum_t *sum, int format, pgs_buf_t *out);

/*
 * avg() from a merged sum and count: what PostgreSQL's avg returns.
 * RESULT_OID is the avg column's type in the RowDescription: numeric for
 * int2/int4/int8/numeric arguments (sum / count with numeric_div's result
 * scale: select_div_scale, rounded half away from zero), float8 for
 * float4/float8 arguments. COUNT > 0 (the caller writes NULL for 0).
 * Appends the value in FORMAT. PGS_EINVAL with ERR, appending nothing,
 * for a combination it cannot compute (0A000) or COUNT <= 0 (22012).
 */
pgs_status_t pgs_value_avg(const pgs_sum_t *sum, int64_t count, uint32_t result_oid, int format,
                           pgs_buf_t *out, pgs_value_error_t *err) PGS_MUST_USE;

/* A count (int8; int2 and int4 are read too) value in FORMAT: text digits
 * or big-endian bytes. 0A000 for other types. */
pgs_status_t pgs_value_int8(uint32_t oid, int format, const uint8_t *value, size_t len,
                            int64_t *out, pgs_value_error_t *err) PGS_MUST_USE;
void pgs_value_put_int8(int64_t v, int format, pgs_buf_t *out);

#endif
