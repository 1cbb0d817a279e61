/*
 * route.h — the route decision: a plan (analyze.h) plus the statement's
 * values (lexer literals, Bind parameters) plus the session's routing state
 * (hint shard, tenant) -> which shards a statement runs on, or why it is
 * refused. Pure: no I/O; the proxy asks, then acts.
 *
 * Decisions (see config/DESIGN.md "Routing semantics"):
 *   ONE     every key maps to one shard (or a hint/tenant names it)
 *   ANY     no sharded table involved, a read: any one shard will do
 *   FANOUT  the statement runs, unchanged, on each shard of `shards`
 *           (DDL; writes to reference tables; writes without a key or with
 *           keys on several shards when cross_shard_writes = allow or 2pc,
 *           the proxy making them atomic under 2pc; COPY FROM STDIN, the
 *           proxy sending each shard its rows)
 *   SPLIT   a multi-row INSERT whose rows belong to several shards
 *           (cross_shard_writes = allow or 2pc): row_shard[i] is row i's
 *           shard; pgs_route_split_insert builds each shard's statement
 *   MERGE   a read on each shard of `shards`, the rows merged as
 *           plan->merge says (merge.h: pgs_merge_shard_sql is each
 *           shard's text, pgs_merge_limits the run's LIMIT/OFFSET)
 *   REFUSE  sqlstate + message (no "pgshard: " prefix: the proxy adds it)
 *
 * Statement kinds BEGIN/COMMIT/ROLLBACK/SESSION are the proxy's business
 * (they follow the session's transaction); pgs_route_plan answers ANY for
 * them, hint and tenant notwithstanding (ONE 0 in a one-shard database).
 */
#ifndef PGSHARD_ROUTE_H
#define PGSHARD_ROUTE_H

#include "pgshard/analyze.h"
#include "pgshard/config.h"
#include "pgshard/proto.h"
#include "pgshard/shardmap.h"

#define PGS_ROUTE_MAX_SHARDS 64 /* shards per database the router can address */

typedef enum {
  PGS_ROUTE_ONE,
  PGS_ROUTE_ANY,
  PGS_ROUTE_FANOUT,
  PGS_ROUTE_SPLIT,
  PGS_ROUTE_REFUSE,
  PGS_ROUTE_MERGE, /* a read on each shard of `shards`, rows merged
                       (plan->merge says how); also COPY ... TO STDOUT
                       concatenated */
} pgs_route_kind_t;

/* Bind parameter values, as the Bind message carries them. */
typedef struct pgs_param_values {
  int n;                      /* parameters in the Bind */
  const uint8_t *const *data; /* data[i]: the value's bytes (NULL when len[i] < 0) */
  const int32_t *len;         /* len[i]: byte length, -1 for SQL NULL */
  const int16_t *format;      /* format[i]: 0 text, 1 binary (already expanded
                                 from Bind's 0/1/n format codes) */
  const uint32_t *type_oid;   /* Parse-declared type of $i+1, 0 when unspecified;
                                 ntypes entries (may be fewer than n, or NULL) */
  int ntypes;
} pgs_param_values_t;

/* The session's routing state. */
typedef struct pgs_route_session {
  int hint_shard;          /* -1, or the shard a hint comment / SET pgshard.shard names */
  const pgs_key_t *tenant; /* SET pgshard.tenant / -c pgshard.tenant, typed by the
                              database's tenant_type; NULL when none */
} pgs_route_session_t;

typedef struct pgs_route {
  pgs_route_kind_t kind;
  int shard;        /* ONE: the shard; -1 otherwise */
  uint64_t shards;  /* ONE/FANOUT/SPLIT/MERGE: bit i set = shard i runs it;
                       ANY: every shard (any one will do); REFUSE: 0 */
  int *row_shard;   /* SPLIT: caller-provided array of plan->nrows entries,
                       filled with each row's shard (NULL: not wanted) */
  char sqlstate[6]; /* REFUSE */
  char message[256];
} pgs_route_t;

/*
 * Decide where PLAN runs. LEXED is the lexed text the plan was made from (for
 * literal values; parameter numbers above lexed->nparams are literals);
 * PARAMS the Bind values (NULL for a simple Query: then a plan referring
 * to a Bind parameter is refused 08P01). OUT->row_shard may point at an
 * array of plan->nrows ints before the call.
 *
 * Key values are typed by their table's key type (pgs_key_from_text /
 * pgs_key_from_binary, binary type = Parse-declared OID, else the ref's
 * cast_type_oid, else the column type); `negate` negates integers; `array`
 * refs (= ANY($1)) are arrays in text ('{1,2,"x"}') or binary array format,
 * each non-NULL element a key. A NULL key value restricts nothing in WHERE
 * (it matches no row: it adds no shard) and is refused with 23502 in an
 * INSERT row. Key errors keep their SQLSTATE (22P02, 22003, geo 22023 ...).
 * A negated value of a non-integer key is 22P02, as is a multi-dimensional
 * or malformed text array; a malformed binary array is 22P03 (08P01 when
 * it runs short); an array of over 65536 elements is 54000. A refusal the
 * plan carries is passed on without analyze.c's "pgshard: " prefix.
 *
 * Targets (analyze.h):
 *   plan->refuse_sqlstate set            -> REFUSE with it
 *   ANY, kind READ/SESSION/BEGIN/COMMIT/ROLLBACK/COPY_TO -> ANY
 *   ANY, kind WRITE/DDL/OTHER/COPY_FROM  -> FANOUT to every shard (COPY into
 *                                           a reference table: every shard
 *                                           gets every row)
 *   KEYS -> the union of the keys' shards: one -> ONE; several ->
 *           same_shard_required: REFUSE 0A000; READ/COPY_TO: a cross-shard
 *           read (below) over those shards; WRITE (and any other kind):
 *           cross_shard_writes allow/2pc -> FANOUT to those shards, deny ->
 *           REFUSE 0A000 naming the policy. No key value at all (every key
 *           NULL): READ -> ANY, WRITE -> ONE shard 0 is wrong, so treat as
 *           ALL.
 *   ALL  -> READ/COPY_TO: a cross-shard read over every shard; WRITE:
 *           policy as above (FANOUT to all / REFUSE); DDL/OTHER: FANOUT to
 *           all.
 *   ROWS -> COPY_FROM (nrows 0): FANOUT to every shard (the proxy splits
 *           the CopyData rows by key). INSERT: every row's shard; all one ->
 *           ONE; several -> allow/2pc: SPLIT; deny: REFUSE 0A000.
 *   A cross-shard read (several shards, no hint or tenant naming one):
 *           cross_shard_reads = deny -> REFUSE 0A000 ("statement reads
 *           sharded table T without its shard key C and cross_shard_reads =
 *           deny", or "... reads keys on shards s0, s1 and ..."); no
 *           plan->merge (several statements, EXPLAIN, ...) -> REFUSE 0A000;
 *           plan->merge->refuse set -> REFUSE 0A000, the message ending in
 *           that text ("...: window functions cannot be merged across
 *           shards"); otherwise MERGE over those shards.
 *   With only one shard in the database every non-refused outcome is ONE 0.
 *
 * Session:
 *   hint_shard >= 0: the statement runs on that shard only (ONE), whatever
 *     its target, but a key that maps to another shard is refused (0A000:
 *     "key ... of table T belongs to shard X, not hinted shard Y"). Every
 *     key is still typed and routed, so a bad value is refused as without
 *     a hint. A hint past the database's shards is refused with 22023.
 *   tenant: like a hint naming the tenant's shard, and a key of a
 *     tenant-strategy table that is not the session's tenant is refused
 *     with 42501. A hint and a tenant naming different shards: 0A000.
 * A database of more than PGS_ROUTE_MAX_SHARDS shards is refused (54000).
 */
void pgs_route_plan(const pgs_database_t *db, const pgs_plan_t *plan, const pgs_lexed_t *lexed,
                    const pgs_param_values_t *params, const pgs_route_session_t *session,
                    pgs_route_t *out);

/* The shard a session tenant maps to (pinned or hashed), or -1 with ERR. */
int pgs_route_tenant_shard(const pgs_database_t *db, const pgs_key_t *tenant, pgs_key_error_t *err);

/* The shard KEY of TABLE goes to, checked against SESSION (NULL: none) as
 * pgs_route_plan checks each key of an INSERT row (hint, tenant), or -1
 * with ERR. COPY FROM routes its rows with it (copy.h). */
int pgs_route_key_shard(const pgs_database_t *db, const pgs_table_t *table, const pgs_key_t *key,
                        const pgs_route_session_t *session, pgs_key_error_t *err);

/*
 * SPLIT: the text of the INSERT LEXED stands for, keeping only the VALUES rows
 * whose row_shard[i] == SHARD, with every literal put back (strings quoted
 * afresh, E'...' when they hold a backslash). Appends a NUL-terminated text
 * to OUT (the NUL counted in out->len, as pgs_buf_put_cstr counts it).
 * PGS_EINVAL, with OUT as it was, when the VALUES rows cannot be found in
 * the text or their number is not NROWS (the proxy then refuses the
 * statement), and when no row belongs to SHARD.
 */
pgs_status_t pgs_route_split_insert(const pgs_lexed_t *lexed, const int *row_shard, int nrows,
                                    int shard, pgs_buf_t *out) PGS_MUST_USE;

/*
 * The parameters of SQL (LEN bytes, literals quoted: a split INSERT's text)
 * numbered afresh from $1 in the order they first appear, appended to OUT:
 * OLD_OF[k-1] is the old number of new parameter $k (room for NPARAMS),
 * *NUSED how many there are. PGS_EINVAL, OUT as it was, for a $n outside
 * 1..NPARAMS or glued to a name.
 */
pgs_status_t pgs_route_renumber_params(const char *sql, size_t len, int nparams, int *old_of,
                                       int *nused, pgs_buf_t *out) PGS_MUST_USE;

/* Rewrite a CommandComplete tag with a new row count: "INSERT 0 5" + 7 ->
 * "INSERT 0 7", "UPDATE 3" + 9 -> "UPDATE 9". Tags without a count are
 * copied, cut to CAP. Returns the count a tag carries (0 when none; a count
 * past UINT64_MAX reads as UINT64_MAX). Counted tags: INSERT, UPDATE,
 * DELETE, SELECT, COPY, MERGE, MOVE, FETCH. */
uint64_t pgs_route_tag_count(const char *tag);
void pgs_route_tag_with_count(const char *tag, uint64_t count, char *out, size_t cap);

#endif
