/*
 * exchange.h — the request engine's pure core: what each server owes a
 * client, what becomes of every reply, and the request and transaction
 * states of a session, each changed through one checked setter.
 *
 * The proxy sends a client's messages to one or several servers (one per
 * shard slot). For every message that gets an answer it pushes an
 * expected reply on that server's queue (pgs_replies_t), with a rule
 * (pgs_reply_rule_t) saying what the client sees of it: forwarded as it
 * is, swallowed, counted into the one CommandComplete of a fan-out, the
 * last ReadyForQuery of several, and so on. When a reply arrives,
 * pgs_replies_take decides with no I/O: it returns a verdict (the action
 * and the events the connection layer acts on) and keeps the queue and the
 * session's reply bookkeeping (pgs_exchange_t) in step. Everything here can
 * be driven by a unit test that plays a server's replies.
 *
 * Invariants:
 *   - replies arrive in the order requests were pushed; each request's
 *     last reply pops its entry (ReadyForQuery for Sync and Query);
 *   - after an ErrorResponse in the extended protocol the server skips to
 *     Sync, and so does the queue (entries popped, a Parse's statement
 *     forgotten through the forget callback);
 *   - a reply that does not fit the queue is a protocol error: the verdict
 *     says so and the connection is closed by the caller, never guessed at.
 */
#ifndef PGSHARD_EXCHANGE_H
#define PGSHARD_EXCHANGE_H

#include "pgshard/common.h"
#include "pgshard/proto.h"

/* ---- expected replies ---- */

/* What a request sent to a server will answer with, in order. */
typedef enum {
  PGS_EXP_PARSE,       /* ParseComplete */
  PGS_EXP_BIND,        /* BindComplete */
  PGS_EXP_DESCRIBE,    /* [ParameterDescription] RowDescription | NoData */
  PGS_EXP_EXECUTE,     /* ... CommandComplete | EmptyQuery | PortalSuspended */
  PGS_EXP_CLOSE,       /* CloseComplete */
  PGS_EXP_SYNC,        /* ReadyForQuery */
  PGS_EXP_QUERY,       /* simple query or function call: ... ReadyForQuery */
  PGS_EXP_SYNTH_PARSE, /* no server reply: pgshard sends ParseComplete itself */
  PGS_EXP_SYNTH_CLOSE, /* no server reply: pgshard sends CloseComplete itself */
} pgs_expect_kind_t;

/* Completions (ParseComplete, BindComplete, CloseComplete) and
 * descriptions (ParameterDescription, RowDescription, NoData). */
typedef enum {
  PGS_ON_DONE_FORWARD,
  PGS_ON_DONE_SWALLOW, /* a later part of a fan-out: the first part sent them */
} pgs_on_done_t;

/* DataRow. */
typedef enum {
  PGS_ON_ROWS_FORWARD,
  PGS_ON_ROWS_SWALLOW, /* a copy's rows, the same as the part that sent them */
} pgs_on_rows_t;

/* CommandComplete. */
typedef enum {
  PGS_ON_COMPLETE_FORWARD,
  PGS_ON_COMPLETE_COUNT, /* swallowed, its row count added to the exchange's sum */
  PGS_ON_COMPLETE_SUM,   /* the client's, with the count of every earlier part added */
} pgs_on_complete_t;

/* ReadyForQuery. */
typedef enum {
  PGS_ON_READY_CLIENT,    /* the client's, with its status over every shard */
  PGS_ON_READY_DROP,      /* swallowed, error or not (pgshard answers later) */
  PGS_ON_READY_IF_ERROR,  /* swallowed unless an error went to the client */
  PGS_ON_READY_LAST_OF_N, /* one of several Syncs sent at once: the last to
                             arrive is the client's */
} pgs_on_ready_t;

/* ErrorResponse (not FATAL: a FATAL is the server going away). */
typedef enum {
  PGS_ON_ERROR_OWNER,    /* the client's when the reply is; pgshard's own
                            statement failing is fatal for the session */
  PGS_ON_ERROR_CLIENT,   /* the client's even for pgshard's own statement */
  PGS_ON_ERROR_EXPECTED, /* pgshard's own statement whose failure is expected */
} pgs_on_error_t;

/* What the client sees of the replies to one request. The zero value is a
 * client's own request: everything forwarded. */
typedef struct pgs_reply_rule {
  uint8_t done;     /* pgs_on_done_t */
  uint8_t rows;     /* pgs_on_rows_t */
  uint8_t complete; /* pgs_on_complete_t */
  uint8_t ready;    /* pgs_on_ready_t */
  uint8_t error;    /* pgs_on_error_t */
  bool internal;    /* pgshard's own request: its replies are not the client's */
  bool fan;         /* a part of the client's merged read: the fan decides */
  bool prepares;    /* PREPARE TRANSACTION of a 2PC: success is reported */
  bool capture;     /* pgshard's own query whose row holds a logging-in
                       client's parameter values */
  int16_t hide;     /* > 0: a merged portal's RowDescription, this many hidden
                       columns dropped */
} pgs_reply_rule_t;

/* pgshard's own request: replies swallowed. */
static inline pgs_reply_rule_t pgs_rule_internal(pgs_on_error_t error) {
  pgs_reply_rule_t rule = {.internal = true, .error = (uint8_t)error};
  return rule;
}

typedef struct pgs_expect {
  uint8_t kind; /* pgs_expect_kind_t */
  pgs_reply_rule_t rule;
  char stmt[24]; /* PARSE: the server statement name, forgotten on failure */
} pgs_expect_t;

/* Called for each Parse skipped after an error: the server never prepared
 * STMT. */
typedef void (*pgs_forget_cb)(void *arg, const char *stmt);

/* What one server owes, in order, and how its replies stand. */
typedef struct pgs_replies {
  pgs_expect_t *ring;
  size_t head, len, cap;
  bool skipping;        /* an error in the extended protocol: skipping to Sync */
  bool internal_failed; /* pgshard's own query failed: fatal at its ReadyForQuery */
  pgs_forget_cb forget;
  void *forget_arg;
} pgs_replies_t;

void pgs_replies_init(pgs_replies_t *q, pgs_forget_cb forget, void *arg);
void pgs_replies_free(pgs_replies_t *q);
void pgs_replies_push(pgs_replies_t *q, pgs_expect_kind_t kind, pgs_reply_rule_t rule,
                      const char *stmt);
static inline size_t pgs_replies_pending(const pgs_replies_t *q) { return q->len; }
/* The entry at the head (oldest), NULL when nothing is owed. */
pgs_expect_t *pgs_replies_front(pgs_replies_t *q);
void pgs_replies_pop(pgs_replies_t *q);
/* The server skips what it is sent next: an error left it skipping to a
 * Sync that is not on its way yet. */
bool pgs_replies_skips_next(const pgs_replies_t *q);
/* What a client still waits for from a server that is lost: the
 * ReadyForQuery of each of its own Syncs and Queries owed; *OPEN_UNIT: the
 * last of its requests owed is not one of those (a unit without its Sync). */
int pgs_replies_readies_owed(const pgs_replies_t *q, bool *open_unit);
/* When the head is a reply pgshard makes itself, pop it and return its
 * type ('1' ParseComplete, '3' CloseComplete); 0 when it is not one. The
 * client is sent it unless the server is skipping to Sync. */
char pgs_replies_pop_synthetic(pgs_replies_t *q);

/* ---- a session's reply bookkeeping ---- */

/* The request being served (the message at the client's read position). */
typedef enum {
  PGS_REQ_IDLE,     /* no message planned: the next one is read */
  PGS_REQ_RUNNING,  /* the message is planned; its steps are being sent */
  PGS_REQ_DRAINING, /* planned; a step waits until other servers have
                       answered what they were sent */
  PGS_REQ_HELD,     /* nothing planned: the next message waits for a merged
                       read or for the ReadyForQuery of Syncs sent at once */
  PGS_REQ_NSTATES
} pgs_req_state_t;

/* An extended-protocol unit (the messages up to a Sync). */
typedef enum {
  PGS_UNIT_CLEAN,        /* no error so far */
  PGS_UNIT_SKIP_TO_SYNC, /* an error went out: messages are dropped until Sync,
                            as PostgreSQL does */
  PGS_UNIT_NSTATES
} pgs_unit_state_t;

/* The transaction pgshard keeps for the client across shards. */
typedef enum {
  PGS_TX_NONE,      /* none of pgshard's (a server's own, from a statement
                       sent as it is, shows in its ReadyForQuery status) */
  PGS_TX_OPEN,      /* BEGIN answered by pgshard, begun on each shard it reaches */
  PGS_TX_ABORTED,   /* a statement failed or was refused in it: only its end
                       is taken */
  PGS_TX_PREPARING, /* two-phase commit: PREPARE TRANSACTION on the writers */
  PGS_TX_DECIDED,   /* two-phase commit: deciding (COMMIT on the decision
                       shard) or decided, COMMIT or ROLLBACK PREPARED on the
                       other writers */
  PGS_TX_NSTATES
} pgs_tx_state_t;

/* The phases of a two-phase commit, each a step run once every server has
 * answered the steps before it (see proxy/coordinator.c). */
typedef enum {
  PGS_2PC_PREPARE,  /* the commit row on the decision shard, PREPARE TRANSACTION
                       on the other writers, COMMIT elsewhere */
  PGS_2PC_DECIDE,   /* COMMIT on the decision shard (the commit point), or
                       ROLLBACK and ROLLBACK PREPARED */
  PGS_2PC_COMPLETE, /* COMMIT PREPARED (or ROLLBACK PREPARED when the
                       decision shard's COMMIT failed) */
  PGS_2PC_FINISH,   /* forget the gid; the client's replies */
} pgs_twopc_phase_t;

typedef struct pgs_exchange {
  uint8_t req;         /* pgs_req_state_t */
  uint8_t unit;        /* pgs_unit_state_t */
  uint8_t tx;          /* pgs_tx_state_t */
  bool message_error;  /* an ErrorResponse went to the client during this message */
  bool request_failed; /* ... during the request (up to its ReadyForQuery) */
  bool tx_read_only;   /* the open transaction began READ ONLY: replicas may serve it */
  bool copies;         /* the fan-out writes copies (DDL, reference tables):
                         report one shard's count, not the sum */
  int ready_pending;   /* PGS_ON_READY_LAST_OF_N ReadyForQuery still to come */
  uint64_t sum;        /* rows counted by fan-out parts so far */
} pgs_exchange_t;

const char *pgs_req_state_name(pgs_req_state_t state);
const char *pgs_unit_state_name(pgs_unit_state_t state);
const char *pgs_tx_state_name(pgs_tx_state_t state);
/* Whether each state may follow FROM; the setters below change it only
 * through these tables. A transition the table refuses is still made (the
 * engine's behaviour does not depend on the check) and returns false: the
 * caller logs it as an engine bug (and stops under PGSHARD_STRICT). */
bool pgs_req_transition_ok(pgs_req_state_t from, pgs_req_state_t to);
bool pgs_tx_transition_ok(pgs_tx_state_t from, pgs_tx_state_t to);
bool pgs_exchange_set_req(pgs_exchange_t *ex, pgs_req_state_t to) PGS_MUST_USE;
bool pgs_exchange_set_unit(pgs_exchange_t *ex, pgs_unit_state_t to) PGS_MUST_USE;
bool pgs_exchange_set_tx(pgs_exchange_t *ex, pgs_tx_state_t to) PGS_MUST_USE;
/* The client is in a transaction pgshard began (open or aborted). */
static inline bool pgs_exchange_in_tx(const pgs_exchange_t *ex) {
  return ex->tx == PGS_TX_OPEN || ex->tx == PGS_TX_ABORTED;
}
/* A new message is planned: its reply bookkeeping starts over. */
void pgs_exchange_new_message(pgs_exchange_t *ex);

/* ---- the verdict on one reply ---- */

typedef enum {
  PGS_REPLY_DROP,    /* swallowed */
  PGS_REPLY_FORWARD, /* to the client as it is */
  PGS_REPLY_READY,   /* a ReadyForQuery with the client's status over every shard */
  PGS_REPLY_SUM,     /* CommandComplete with verdict.count rows */
  PGS_REPLY_HIDE,    /* RowDescription with verdict.hide hidden columns dropped */
  PGS_REPLY_FAN,     /* the client's merged read decides (fanout.c) */
} pgs_reply_action_t;

/* Events of a reply the connection layer acts on (pgs_verdict_t.events). */
enum {
  PGS_RE_PROTOCOL = 0x001,       /* not what the queue expects: close the server
                                    (verdict.problem says why) */
  PGS_RE_READY = 0x002,          /* ReadyForQuery: verdict.txstatus is the server's */
  PGS_RE_DIRTY = 0x004,          /* the server must not be reused */
  PGS_RE_ERROR = 0x008,          /* an ErrorResponse (verdict.error parsed) */
  PGS_RE_FATAL = 0x010,          /* ... FATAL, or answering nothing: the server goes */
  PGS_RE_RESTORE_FAILED = 0x020, /* pgshard's own query for the client failed:
                                    the client fails (session state not restored,
                                    or its startup parameters refused at login) */
  PGS_RE_LOGIN_DONE = 0x040,     /* the capture query of a logging-in client ended */
  PGS_RE_LOGIN_ROW = 0x080,      /* ... and this DataRow holds its values */
  PGS_RE_CLIENT_SEES = 0x100,    /* a result or status the client's session tracks */
  PGS_RE_CLIENT_ERROR = 0x200,   /* an ErrorResponse went to the client */
  PGS_RE_PARAMETER = 0x400,      /* ParameterStatus: verdict.name = verdict.value */
  PGS_RE_GID_PREPARED = 0x800,   /* a 2PC PREPARE TRANSACTION succeeded */
  PGS_RE_PART_SKIPPED = 0x1000,  /* a fan part queued behind a failed message was
                                    skipped by the server */
};

typedef struct pgs_verdict {
  uint8_t action; /* pgs_reply_action_t */
  uint16_t events;
  char txstatus;       /* PGS_RE_READY */
  int16_t hide;        /* PGS_REPLY_HIDE */
  uint64_t count;      /* PGS_REPLY_SUM: the rows of every part */
  const char *problem; /* PGS_RE_PROTOCOL */
  char problem_buf[64];
  pgs_error_fields_t error; /* PGS_RE_ERROR */
  const char *name, *value; /* PGS_RE_PARAMETER (in the message body) */
} pgs_verdict_t;

/* Decide what the reply (TYPE, BODY of LEN bytes) of the server owing Q
 * does. EX: the linked client's exchange, NULL when no client is linked
 * (a server resetting, or one whose client left). */
void pgs_replies_take(pgs_replies_t *q, pgs_exchange_t *ex, char type, const uint8_t *body,
                      size_t len, pgs_verdict_t *v);

#endif
