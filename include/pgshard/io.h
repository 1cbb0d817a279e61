/*
 * io.h — one connection's I/O (io.c): reading into a capped buffer, a batch of
 * output segments flushed with one write, TLS on either side, and the
 * monotonic clock every module uses.
 */
#ifndef PGSHARD_IO_H
#define PGSHARD_IO_H

#include <uv.h>
#include "pgshard/proto.h"

/* Monotonic clock (io.c). */
uint64_t pgs_now_ms(void);
uint64_t pgs_now_us(void);

#define PGS_IO_MAX_SEGS 64
#define PGS_IO_READ_CHUNK 16384
#define PGS_IO_HIGH_WATER (1024 * 1024) /* queued output that pauses the source */

typedef struct pgs_io pgs_io_t;
struct pgs_io_tls; /* io.c */
struct ssl_ctx_st;
struct ssl_st;
typedef void (*pgs_io_read_cb)(pgs_io_t *io);
typedef void (*pgs_io_event_cb)(pgs_io_t *io, int status);

typedef struct pgs_io_seg {
  const uint8_t *ptr; /* NULL: scratch bytes at off */
  size_t off;
  size_t len;
} pgs_io_seg_t;

struct pgs_io {
  uv_tcp_t tcp;
  void *owner;
  pgs_buf_t in;       /* received bytes */
  size_t in_pos;      /* bytes of in already consumed by the owner */
  size_t in_want;     /* total bytes the owner needs to make progress */
  size_t in_max;      /* cap on in (largest message accepted + a read chunk) */
  pgs_io_seg_t *segs; /* this batch's output (PGS_IO_MAX_SEGS, taken for a batch) */
  int nsegs;
  pgs_buf_t scratch;                /* bytes built for this batch */
  pgs_buf_t wbuf;                   /* in flight in uv_write */
  pgs_buf_t qbuf;                   /* waiting for wbuf to finish */
  uint64_t queued_total;            /* bytes ever put in wbuf or qbuf (see pgs_io_accepted) */
  uint64_t read_total;              /* bytes ever read */
  uint64_t out_total;               /* bytes ever flushed (written or queued) */
  uint64_t counted_in, counted_out; /* of those, already in the owner's statistics */
  uv_write_t *wreq;                 /* the write in flight (writing), freed when it ends */
  bool writing;
  bool reading;
  bool open; /* tcp initialised and not closing */
  bool eof;
  bool detached; /* pgs_io_detach: between loops, the socket in detached_fd */
  int detached_fd;
  struct pgs_io_tls *tls;    /* NULL: plaintext (see io.c) */
  pgs_io_read_cb on_read;    /* new bytes in in */
  pgs_io_event_cb on_error;  /* read/write failure or EOF (status < 0) */
  pgs_io_read_cb on_drained; /* all queued output written */
  uv_close_cb on_close;
};

void pgs_io_init(pgs_io_t *io, void *owner, size_t in_max);
/* A thread that ran connections lets go of the buffers it keeps for them. */
void pgs_io_thread_done(void);
void pgs_io_free_buffers(pgs_io_t *io);
int pgs_io_start_reading(pgs_io_t *io);
void pgs_io_stop_reading(pgs_io_t *io);
/* Queue LEN bytes at PTR (which must stay valid until pgs_io_flush). */
void pgs_io_emit(pgs_io_t *io, const void *ptr, size_t len);
/* Scratch output: build into pgs_io_scratch(io) after noting
 * mark = pgs_io_scratch_mark(io), then pgs_io_scratch_done(io, mark). */
pgs_buf_t *pgs_io_scratch(pgs_io_t *io);
static inline size_t pgs_io_scratch_mark(pgs_io_t *io) { return io->scratch.len; }
void pgs_io_scratch_done(pgs_io_t *io, size_t mark);
bool pgs_io_has_output(const pgs_io_t *io);
/* Write the batch: synchronously as far as the socket takes it, the rest
 * copied and queued. Returns 0 or a libuv error. */
int pgs_io_flush(pgs_io_t *io) PGS_MUST_USE;
/* Output queued beyond the socket: the source should pause above high water. */
size_t pgs_io_backlog(const pgs_io_t *io);
/* Bytes of the backlog the socket has taken so far (a counter): it stands
 * still while the peer reads nothing. */
uint64_t pgs_io_accepted(const pgs_io_t *io);
/* Drop consumed input (after the batch that parsed it was flushed). */
void pgs_io_compact(pgs_io_t *io);
void pgs_io_close(pgs_io_t *io);
/* What a status given to on_error means (a TLS failure's reason for
 * UV_EPROTO on a TLS connection). */
const char *pgs_io_error_text(const pgs_io_t *io, int status);
/* From now on pgshard is the TLS server of this connection (its SSLRequest
 * was answered 'S'): the handshake runs on what is read next, then the
 * owner reads and writes plaintext as before. 0 or a libuv error. */
int pgs_io_tls_accept(pgs_io_t *io, struct ssl_ctx_st *ctx) PGS_MUST_USE;
/* Carry on SSL, the session libpq established at login on this
 * connection's socket (io's tcp is a dup of it). SSL stays libpq's:
 * pgs_io_tls_release gives it back before PQfinish. 0 or a libuv error. */
int pgs_io_tls_adopt(pgs_io_t *io, struct ssl_st *ssl) PGS_MUST_USE;
void pgs_io_tls_release(pgs_io_t *io);
/* Moving a quiet connection to another thread's loop: pgs_io_detach closes
 * its handle on this loop, keeping the socket (a dup of it) and any TLS
 * session; DONE runs once the handle is closed, when the io may go to
 * another thread, where pgs_io_attach opens it on that loop (reading
 * stopped). Only a connection with nothing unsent and nothing unread may
 * move (pgs_io_quiet). detach returns 0 or a libuv error (the io is then
 * untouched); attach 0 or a libuv error (the socket is then closed). */
bool pgs_io_quiet(const pgs_io_t *io);
int pgs_io_detach(pgs_io_t *io, uv_close_cb done) PGS_MUST_USE;
int pgs_io_attach(pgs_io_t *io, uv_loop_t *loop) PGS_MUST_USE;
/* TLS is on and its handshake done. */
bool pgs_io_tls_active(const pgs_io_t *io);
/* The SSL of a connection pgshard accepted TLS on, else NULL. */
struct ssl_st *pgs_io_tls_session(const pgs_io_t *io);

#endif
