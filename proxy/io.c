/*
 * io.c — one TCP connection's buffers: what came in, what goes out.
 *
 * Input: libuv reads into io->in; the owner parses from in_pos and tells us,
 * through in_want, how much it needs to make progress (a whole message), so
 * the buffer grows only as far as the largest message it must hold (capped
 * by in_max). Output: the owner queues segments during one processing batch
 * — pointers into the peer's input (no copy) or bytes it built in scratch —
 * and flushes once at the end. Flushing tries a synchronous write first; only
 * what the socket did not take is copied into wbuf (in flight) or qbuf (next
 * in line). After a flush no segment points anywhere, so the peer may
 * compact its input.
 *
 * Memory: a connection holds buffers only while it has bytes in them. Its
 * input buffer, its scratch and its segment array are taken when a read or a
 * batch starts and given back when everything in them is consumed or sent,
 * to a small cache per thread (read-chunk sized buffers and segment arrays),
 * so an idle connection costs its struct and nothing else, and a busy one
 * does not call malloc per request. Input goes back only while no batch of the
 * thread is open (its segments may point into any connection's input). wbuf and qbuf (output the socket did not
 * take) are freed once it has all gone out.
 *
 * TLS (io->tls, NULL on a plain connection, whose path is the one above
 * untouched): OpenSSL works through a BIO of ours, never on the socket.
 * libuv reads ciphertext into tls->raw, the BIO hands it to OpenSSL, and
 * SSL_read decrypts into io->in with the same caps and in_want as a plain
 * read, so owners see plaintext as before. What OpenSSL writes goes through
 * the BIO straight into wbuf (or qbuf while a write is in flight) and is
 * sent as plain output is. Two uses:
 *  - accept (a client's SSLRequest answered 'S'): pgshard is the TLS server,
 *    owns the SSL, and the handshake runs before any plaintext is read, so
 *    bytes a client sent before it (CVE-2021-23214) can only fail it;
 *  - adopt (a server libpq logged in to over TLS): libpq's SSL carries on
 *    with our BIO in place of libpq's, which is put back before PQfinish so
 *    libpq says goodbye (Terminate, close_notify) on its own socket.
 * Input decrypted but not yet read when reading stops stays in OpenSSL and
 * raw; no socket event will announce it, so restarting reading schedules
 * a pass on an idle handle (tls->resume), which pgs_io_close closes with
 * the socket before the owner's on_close runs.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "pgshard/log.h"
#include "pgshard/io.h"
#include "pgshard/tls.h"

/* Ciphertext kept unread (a partial record, or input OpenSSL could not yet
 * decrypt into a full io->in) before reading more is refused. */
#define TLS_RAW_MAX (4 * PGS_IO_READ_CHUNK)
/* Plaintext handed to SSL_write at once; the ciphertext is sent out every
 * TLS_SEND_BATCH bytes rather than after a whole large batch. */
#define TLS_WRITE_CHUNK (256 * 1024)
#define TLS_SEND_BATCH (256 * 1024)

typedef enum {
  TLS_HANDSHAKE, /* accept: handshake not finished; output is dropped */
  TLS_OPEN,      /* records flow both ways */
  TLS_CLOSED,    /* the peer sent close_notify */
  TLS_FAILED,    /* a fatal TLS error: nothing more is read or written */
} tls_state_t;

struct pgs_io_tls {
  SSL *ssl;
  BIO *bio;        /* ours, held by ssl */
  bool owned;      /* accept: SSL_free at the end; adopt: libpq's */
  BIO *saved_rbio; /* adopt: libpq's BIOs (a reference each), put back */
  BIO *saved_wbio;
  tls_state_t state;
  pgs_buf_t raw;  /* ciphertext read from the socket */
  size_t raw_pos; /* of raw, handed to OpenSSL */
  uv_idle_t resume;
  bool resume_init;
  int pending_closes; /* handles closing before on_close */
  char error[200];    /* why the session failed (UV_EPROTO) */
};

uint64_t pgs_now_ms(void) { return uv_hrtime() / 1000000; }
uint64_t pgs_now_us(void) { return uv_hrtime() / 1000; }

void pgs_io_init(pgs_io_t *io, void *owner, size_t in_max) {
  memset(io, 0, sizeof(*io));
  io->owner = owner;
  io->in_max = in_max;
  io->tcp.data = io;
}

/* ---- the thread's cache of buffers ---- */

#define CACHE_MAX 64 /* buffers (16 KiB) and segment arrays (1.5 KiB) each */

static __thread void *chunk_cache[CACHE_MAX];
static __thread int nchunks;
static __thread pgs_io_seg_t *seg_cache[CACHE_MAX];
static __thread int nseg_arrays;
/* Connections of this thread with a batch not yet flushed: their segments
 * may point into any connection's input, which then is not given back. */
static __thread int open_batches;

/* An empty buffer gets a read chunk's capacity. */
static void chunk_take(pgs_buf_t *buf) {
  PGS_ASSERT(buf->data == NULL);
  buf->data = nchunks > 0 ? chunk_cache[--nchunks] : pgs_xmalloc(PGS_IO_READ_CHUNK);
  buf->cap = PGS_IO_READ_CHUNK;
  buf->len = 0;
}

/* BUF's memory goes back: to the cache if it is a read chunk. */
static void chunk_give(pgs_buf_t *buf) {
  if (buf->data && buf->cap == PGS_IO_READ_CHUNK && nchunks < CACHE_MAX)
    chunk_cache[nchunks++] = buf->data;
  else
    free(buf->data);
  pgs_buf_init(buf);
}

static void segs_take(pgs_io_t *io) {
  if (io->segs) return;
  open_batches++;
  io->segs =
      nseg_arrays > 0 ? seg_cache[--nseg_arrays] : pgs_xmalloc(PGS_IO_MAX_SEGS * sizeof(*io->segs));
}

static void segs_give(pgs_io_t *io) {
  PGS_ASSERT(io->nsegs == 0);
  if (io->segs == NULL) return;
  open_batches--;
  if (nseg_arrays < CACHE_MAX)
    seg_cache[nseg_arrays++] = io->segs;
  else
    free(io->segs);
  io->segs = NULL;
}

void pgs_io_thread_done(void) {
  while (nchunks > 0) free(chunk_cache[--nchunks]);
  while (nseg_arrays > 0) free(seg_cache[--nseg_arrays]);
}

pgs_buf_t *pgs_io_scratch(pgs_io_t *io) {
  if (io->scratch.data == NULL) chunk_take(&io->scratch);
  return &io->scratch;
}

static void tls_free(pgs_io_t *io);

void pgs_io_free_buffers(pgs_io_t *io) {
  if (io->detached) close(io->detached_fd);
  io->detached = false;
  if (io->tls) tls_free(io);
  chunk_give(&io->in);
  io->nsegs = 0;
  chunk_give(&io->scratch);
  segs_give(io);
  pgs_buf_free(&io->wbuf);
  pgs_buf_free(&io->qbuf);
}

/* How much more input may go into in now: what the owner wants, at least
 * a read chunk, never beyond in_max. */
static inline size_t input_room(const pgs_io_t *io) {
  size_t want = io->in_want > io->in.len ? io->in_want - io->in.len : 0;
  size_t room = want > PGS_IO_READ_CHUNK ? want : PGS_IO_READ_CHUNK;
  if (io->in.len + room > io->in_max) room = io->in_max > io->in.len ? io->in_max - io->in.len : 0;
  return room;
}

/* Room for ROOM more bytes of input (a cached chunk when that is enough). */
static void in_reserve(pgs_io_t *io, size_t room) {
  if (io->in.data == NULL && room <= PGS_IO_READ_CHUNK) chunk_take(&io->in);
  pgs_buf_reserve(&io->in, room);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  pgs_io_t *io = handle->data;
  size_t room = input_room(io);
  if (room == 0) {
    buf->base = NULL;
    buf->len = 0; /* libuv reports UV_ENOBUFS */
    return;
  }
  in_reserve(io, room);
  buf->base = (char *)io->in.data + io->in.len;
  buf->len = io->in.cap - io->in.len;
}

/* A read that failed or hit EOF: reading stops and the owner is told.
 * Returns whether it did (nothing was read). */
/* A read that brought nothing leaves an empty input buffer, which goes back
 * at once: a crowd of clients leaving together (their EOFs come in one
 * epoll batch, each given a chunk by alloc_cb) would otherwise hold a
 * chunk each until its close completes. */
static void give_back_empty_input(pgs_io_t *io) {
  if (io->in.len == 0 && open_batches == 0) chunk_give(&io->in);
}

static bool read_ended(pgs_io_t *io, ssize_t nread) {
  if (nread >= 0) return false;
  give_back_empty_input(io);
  if (nread == UV_EOF) io->eof = true;
  pgs_io_stop_reading(io);
  io->on_error(io, (int)nread);
  return true;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  pgs_io_t *io = stream->data;
  if (nread == 0) {
    give_back_empty_input(io);
    return;
  }
  if (read_ended(io, nread)) return;
  io->in.len += (size_t)nread;
  io->read_total += (uint64_t)nread;
  io->on_read(io);
}

static void tls_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static void tls_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void tls_schedule(pgs_io_t *io);

int pgs_io_start_reading(pgs_io_t *io) {
  if (io->reading || !io->open) return 0;
  int rc = io->tls ? uv_read_start((uv_stream_t *)&io->tcp, tls_alloc_cb, tls_read_cb)
                   : uv_read_start((uv_stream_t *)&io->tcp, alloc_cb, read_cb);
  if (rc == 0) io->reading = true;
  if (rc == 0 && io->tls) tls_schedule(io);
  return rc;
}

void pgs_io_stop_reading(pgs_io_t *io) {
  if (!io->reading) return;
  uv_read_stop((uv_stream_t *)&io->tcp);
  io->reading = false;
}

void pgs_io_emit(pgs_io_t *io, const void *ptr, size_t len) {
  if (len == 0) return;
  segs_take(io);
  if (io->nsegs > 0) {
    pgs_io_seg_t *last = &io->segs[io->nsegs - 1];
    if (last->ptr && last->ptr + last->len == (const uint8_t *)ptr) {
      last->len += len;
      return;
    }
  }
  if (io->nsegs == PGS_IO_MAX_SEGS) {
    /* Out of segments: copy into scratch instead. */
    size_t mark = io->scratch.len;
    pgs_buf_put(&io->scratch, ptr, len);
    pgs_io_scratch_done(io, mark);
    return;
  }
  io->segs[io->nsegs++] = (pgs_io_seg_t){.ptr = ptr, .off = 0, .len = len};
}

void pgs_io_scratch_done(pgs_io_t *io, size_t mark) {
  size_t len = io->scratch.len - mark;
  if (len == 0) return;
  segs_take(io);
  if (io->nsegs > 0) {
    pgs_io_seg_t *last = &io->segs[io->nsegs - 1];
    if (last->ptr == NULL && last->off + last->len == mark) {
      last->len += len;
      return;
    }
  }
  if (io->nsegs == PGS_IO_MAX_SEGS) {
    /* Fold everything so far into one scratch segment. */
    pgs_buf_t all;
    pgs_buf_init(&all);
    for (int i = 0; i < io->nsegs; i++) {
      pgs_io_seg_t *s = &io->segs[i];
      pgs_buf_put(&all, s->ptr ? s->ptr : io->scratch.data + s->off, s->len);
    }
    pgs_buf_put(&all, io->scratch.data + mark, len);
    chunk_give(&io->scratch);
    io->scratch = all;
    io->segs[0] = (pgs_io_seg_t){.ptr = NULL, .off = 0, .len = all.len};
    io->nsegs = 1;
    return;
  }
  io->segs[io->nsegs++] = (pgs_io_seg_t){.ptr = NULL, .off = mark, .len = len};
}

bool pgs_io_has_output(const pgs_io_t *io) { return io->nsegs > 0 || io->writing; }

size_t pgs_io_backlog(const pgs_io_t *io) { return io->wbuf.len + io->qbuf.len; }

uint64_t pgs_io_accepted(const pgs_io_t *io) {
  size_t pending = io->qbuf.len;
  if (io->open) pending += uv_stream_get_write_queue_size((const uv_stream_t *)&io->tcp);
  return io->queued_total - pending;
}

static void write_cb(uv_write_t *req, int status);

static int start_write(pgs_io_t *io) {
  uv_buf_t b = uv_buf_init((char *)io->wbuf.data, (unsigned)io->wbuf.len);
  io->wreq = pgs_xmalloc(sizeof(*io->wreq));
  io->wreq->data = io;
  int rc = uv_write(io->wreq, (uv_stream_t *)&io->tcp, &b, 1, write_cb);
  if (rc == 0) {
    io->writing = true;
  } else {
    free(io->wreq);
    io->wreq = NULL;
  }
  return rc;
}

static void tls_lost(pgs_io_t *io);

static void write_cb(uv_write_t *req, int status) {
  pgs_io_t *io = req->data;
  free(req);
  io->wreq = NULL;
  io->writing = false;
  io->wbuf.len = 0;
  if (status < 0) {
    if (io->tls) tls_lost(io);
    if (status != UV_ECANCELED && io->on_error) io->on_error(io, status);
    return;
  }
  if (io->qbuf.len > 0) {
    pgs_buf_t tmp = io->wbuf;
    io->wbuf = io->qbuf;
    io->qbuf = tmp;
    int rc = start_write(io);
    if (rc < 0 && io->on_error) io->on_error(io, rc);
    return;
  }
  /* All out: the copies' memory goes. */
  pgs_buf_free(&io->wbuf);
  pgs_buf_free(&io->qbuf);
  if (io->on_drained) io->on_drained(io);
}

static void reset_batch(pgs_io_t *io) {
  io->nsegs = 0;
  chunk_give(&io->scratch);
  segs_give(io);
}

static int tls_flush(pgs_io_t *io);

int pgs_io_flush(pgs_io_t *io) {
  if (io->nsegs == 0) return 0;
  if (!io->open) {
    reset_batch(io);
    return UV_EPIPE;
  }
  if (io->tls) return tls_flush(io);
  if (io->writing) {
    for (int i = 0; i < io->nsegs; i++) {
      pgs_io_seg_t *s = &io->segs[i];
      pgs_buf_put(&io->qbuf, s->ptr ? s->ptr : io->scratch.data + s->off, s->len);
      io->queued_total += s->len;
      io->out_total += s->len;
    }
    reset_batch(io);
    return 0;
  }
  uv_buf_t bufs[PGS_IO_MAX_SEGS] = {{0}};
  size_t total = 0;
  for (int i = 0; i < io->nsegs; i++) {
    pgs_io_seg_t *s = &io->segs[i];
    bufs[i] = uv_buf_init((char *)(s->ptr ? s->ptr : io->scratch.data + s->off), (unsigned)s->len);
    total += s->len;
  }
  io->out_total += total;
  int written = uv_try_write((uv_stream_t *)&io->tcp, bufs, (unsigned)io->nsegs);
  if (written == UV_EAGAIN) written = 0;
  if (written < 0) {
    reset_batch(io);
    return written;
  }
  if ((size_t)written < total) {
    size_t skip = (size_t)written;
    for (int i = 0; i < io->nsegs; i++) {
      if (skip >= bufs[i].len) {
        skip -= bufs[i].len;
        continue;
      }
      pgs_buf_put(&io->wbuf, bufs[i].base + skip, bufs[i].len - skip);
      io->queued_total += bufs[i].len - skip;
      skip = 0;
    }
    reset_batch(io);
    return start_write(io);
  }
  reset_batch(io);
  return 0;
}

void pgs_io_compact(pgs_io_t *io) {
  PGS_ASSERT(io->in_pos <= io->in.len);
  if (io->in_pos == 0) return;
  pgs_buf_consume(&io->in, io->in_pos);
  io->in_pos = 0;
  /* Empty and nobody's output points into it: the buffer goes back. */
  give_back_empty_input(io);
}

static void tls_close(pgs_io_t *io);

void pgs_io_close(pgs_io_t *io) {
  if (!io->open) return;
  if (io->tls) {
    tls_close(io);
    return;
  }
  io->open = false;
  pgs_io_stop_reading(io);
  uv_close((uv_handle_t *)&io->tcp, io->on_close);
}

static void tls_handle_closed(uv_handle_t *handle);
static bool tls_has_input(const pgs_io_t *io);

bool pgs_io_quiet(const pgs_io_t *io) {
  if (!io->open || io->eof || io->writing || io->nsegs > 0 || io->wbuf.len > 0 ||
      io->qbuf.len > 0 || io->in_pos < io->in.len)
    return false;
  return io->tls == NULL || (io->tls->state == TLS_OPEN && !tls_has_input(io));
}

/* The handle goes; the socket stays, as a dup (the handle's own descriptor
 * closes with it). DONE becomes on_close: the owner sets its own again
 * after attach. */
int pgs_io_detach(pgs_io_t *io, uv_close_cb done) {
  PGS_ASSERT(pgs_io_quiet(io) && !io->detached);
  uv_os_fd_t fd;
  int rc = uv_fileno((const uv_handle_t *)&io->tcp, &fd);
  if (rc != 0) return rc;
  int copy = dup(fd);
  if (copy < 0) return -errno;
  io->detached = true;
  io->detached_fd = copy;
  io->on_close = done;
  pgs_io_stop_reading(io);
  io->open = false;
  struct pgs_io_tls *t = io->tls;
  if (t && t->resume_init) {
    /* The idle handle belongs to this loop too: attach makes a new one. */
    t->resume_init = false;
    t->pending_closes = 2;
    uv_close((uv_handle_t *)&t->resume, tls_handle_closed);
    uv_close((uv_handle_t *)&io->tcp, tls_handle_closed);
    return 0;
  }
  uv_close((uv_handle_t *)&io->tcp, done);
  return 0;
}

int pgs_io_attach(pgs_io_t *io, uv_loop_t *loop) {
  PGS_ASSERT(!io->open && io->detached);
  int fd = io->detached_fd;
  io->detached = false;
  int rc = uv_tcp_init(loop, &io->tcp);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  io->tcp.data = io;
  io->open = true; /* a handle to close, socket or not */
  rc = uv_tcp_open(&io->tcp, fd);
  if (rc != 0) close(fd);
  return rc;
}

const char *pgs_io_error_text(const pgs_io_t *io, int status) {
  if (status == UV_EPROTO && io->tls && io->tls->error[0]) return io->tls->error;
  return uv_strerror(status);
}

/* ---- TLS ---- */

/* The BIO OpenSSL reads and writes through: its data is the io, or NULL
 * once the io let go of a session libpq still holds (writes are then
 * dropped, reads see the end). */
static int bio_write(BIO *bio, const char *data, int len) {
  pgs_io_t *io = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (io == NULL || !io->open || len <= 0) return len;
  pgs_buf_put(io->writing ? &io->qbuf : &io->wbuf, data, (size_t)len);
  io->queued_total += (size_t)len;
  return len;
}

static int bio_read(BIO *bio, char *out, int len) {
  pgs_io_t *io = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (io == NULL || len <= 0) return 0;
  struct pgs_io_tls *t = io->tls;
  size_t avail = t->raw.len - t->raw_pos;
  if (avail == 0) {
    if (io->eof) return 0;
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t n = avail < (size_t)len ? avail : (size_t)len;
  memcpy(out, t->raw.data + t->raw_pos, n);
  t->raw_pos += n;
  return (int)n;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr) {
  (void)bio;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *bio) {
  BIO_set_init(bio, 1);
  return 1;
}

static BIO_METHOD *bio_method;
static uv_once_t bio_method_once = UV_ONCE_INIT;

static void bio_method_make(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pgshard io");
  if (m == NULL || !BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
      !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
    if (m) BIO_meth_free(m);
    return;
  }
  bio_method = m;
}

static BIO *bio_new(pgs_io_t *io) {
  uv_once(&bio_method_once, bio_method_make);
  BIO *bio = bio_method ? BIO_new(bio_method) : NULL;
  if (bio) BIO_set_data(bio, io);
  return bio;
}

/* Records of ours were never sent (a write failed or was cancelled): the
 * session cannot go on, nor be handed back to libpq. */
static void tls_lost(pgs_io_t *io) {
  if (io->tls->state == TLS_OPEN || io->tls->state == TLS_HANDSHAKE) io->tls->state = TLS_FAILED;
}

/* A fatal error of SSL call RET: remembered for pgs_io_error_text. */
static int tls_failed(pgs_io_t *io, int ret) {
  struct pgs_io_tls *t = io->tls;
  int e = SSL_get_error(t->ssl, ret);
  char why[160];
  if (e == SSL_ERROR_SSL)
    pgs_tls_error_text(why, sizeof(why), "protocol error");
  else
    snprintf(why, sizeof(why), "%s", io->eof ? "connection closed" : "unexpected failure");
  ERR_clear_error();
  snprintf(t->error, sizeof(t->error), "TLS: %s", why);
  t->state = TLS_FAILED;
  return UV_EPROTO;
}

/* Send what OpenSSL wrote into wbuf, as pgs_io_flush sends plain output:
 * synchronously as far as the socket takes it, the rest by uv_write. */
static int tls_send(pgs_io_t *io) {
  if (io->writing || io->wbuf.len == 0 || !io->open) return 0;
  uv_buf_t b = uv_buf_init((char *)io->wbuf.data, (unsigned)io->wbuf.len);
  int written = uv_try_write((uv_stream_t *)&io->tcp, &b, 1);
  if (written == UV_EAGAIN) written = 0;
  if (written < 0) {
    io->wbuf.len = 0;
    tls_lost(io);
    return written;
  }
  pgs_buf_consume(&io->wbuf, (size_t)written);
  return io->wbuf.len > 0 ? start_write(io) : 0;
}

static int tls_flush(pgs_io_t *io) {
  struct pgs_io_tls *t = io->tls;
  int rc = 0;
  if (t->state != TLS_OPEN) {
    /* Before the handshake ends nothing may go out in the clear; after a
     * failure nothing can go out at all. */
    reset_batch(io);
    return t->state == TLS_HANDSHAKE ? 0 : UV_EPROTO;
  }
  ERR_clear_error();
  for (int i = 0; i < io->nsegs && rc == 0; i++) {
    pgs_io_seg_t *s = &io->segs[i];
    const uint8_t *p = s->ptr ? s->ptr : io->scratch.data + s->off;
    size_t left = s->len;
    while (left > 0 && rc == 0) {
      int n = (int)(left < TLS_WRITE_CHUNK ? left : TLS_WRITE_CHUNK);
      int w = SSL_write(t->ssl, p, n);
      if (w <= 0) {
        rc = tls_failed(io, w);
        break;
      }
      p += w;
      left -= (size_t)w;
      io->out_total += (uint64_t)w; /* plaintext: what the statistics count */
      if (!io->writing && io->wbuf.len >= TLS_SEND_BATCH) rc = tls_send(io);
    }
  }
  reset_batch(io);
  if (rc == 0) rc = tls_send(io);
  return rc;
}

static bool tls_has_input(const pgs_io_t *io) {
  const struct pgs_io_tls *t = io->tls;
  return t->raw_pos < t->raw.len || (t->state == TLS_OPEN && SSL_has_pending(t->ssl));
}

/* The connection cannot go on: stop and tell the owner. */
static void tls_report(pgs_io_t *io, int status) {
  if (!io->open) return;
  pgs_io_stop_reading(io);
  io->on_error(io, status);
}

/* Run the handshake and decrypt input into in, handing it to the owner,
 * for as long as it reads and there is input. */
static void tls_pump(pgs_io_t *io) {
  struct pgs_io_tls *t = io->tls;
  while (io->open && io->reading) {
    if (t->state == TLS_HANDSHAKE) {
      ERR_clear_error();
      int r = SSL_do_handshake(t->ssl);
      int sent = tls_send(io); /* our flight */
      if (r != 1) {
        if (SSL_get_error(t->ssl, r) != SSL_ERROR_WANT_READ) {
          tls_report(io, tls_failed(io, r));
        } else if (sent < 0) {
          tls_report(io, sent);
        }
        return;
      }
      t->state = TLS_OPEN;
      if (sent < 0) {
        tls_report(io, sent);
        return;
      }
    }
    if (t->state != TLS_OPEN) return;
    size_t room = input_room(io);
    size_t cap_room = io->in.cap - io->in.len;
    if (cap_room > room && io->in.len + cap_room <= io->in_max) room = cap_room;
    size_t got = 0;
    int status = 0;
    if (room > 0) in_reserve(io, room);
    ERR_clear_error();
    while (got < room) {
      size_t ask = room - got;
      int n = SSL_read(t->ssl, io->in.data + io->in.len, ask > INT_MAX ? INT_MAX : (int)ask);
      if (n > 0) {
        io->in.len += (size_t)n;
        io->read_total += (uint64_t)n;
        got += (size_t)n;
        continue;
      }
      int e = SSL_get_error(t->ssl, n);
      if (e == SSL_ERROR_WANT_READ) break;
      if (e == SSL_ERROR_ZERO_RETURN) {
        t->state = TLS_CLOSED;
        io->eof = true;
        status = UV_EOF;
      } else {
        status = tls_failed(io, n);
      }
      break;
    }
    int sent = tls_send(io); /* what reading made OpenSSL say (alerts, key updates) */
    if (status == 0 && sent < 0) status = sent;
    if (got > 0) io->on_read(io);
    if (status != 0) {
      tls_report(io, status);
      return;
    }
    if (got == 0) {
      /* As a plain read with no room left: the message is too large. */
      if (room == 0 && tls_has_input(io)) tls_report(io, UV_ENOBUFS);
      return;
    }
  }
}

static void tls_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  pgs_io_t *io = handle->data;
  struct pgs_io_tls *t = io->tls;
  if (t->raw_pos > 0) {
    pgs_buf_consume(&t->raw, t->raw_pos);
    t->raw_pos = 0;
  }
  if (t->raw.len >= TLS_RAW_MAX) {
    buf->base = NULL;
    buf->len = 0; /* libuv reports UV_ENOBUFS */
    return;
  }
  if (t->raw.data == NULL) chunk_take(&t->raw);
  pgs_buf_reserve(&t->raw, PGS_IO_READ_CHUNK);
  buf->base = (char *)t->raw.data + t->raw.len;
  buf->len = t->raw.cap - t->raw.len;
}

static void tls_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  pgs_io_t *io = stream->data;
  if (nread == 0 || read_ended(io, nread)) return;
  struct pgs_io_tls *t = io->tls;
  t->raw.len += (size_t)nread;
  tls_pump(io);
  if (io->tls == t && t->raw_pos == t->raw.len) {
    t->raw_pos = 0;
    chunk_give(&t->raw);
  }
}

static void tls_resume_cb(uv_idle_t *idle) {
  pgs_io_t *io = idle->data;
  uv_idle_stop(idle);
  if (io->open && io->reading) tls_pump(io);
}

/* Reading (re)started with input already in hand: decrypt it on the next
 * loop iteration, not inside the caller. */
static void tls_schedule(pgs_io_t *io) {
  struct pgs_io_tls *t = io->tls;
  if (!tls_has_input(io)) return;
  if (!t->resume_init) {
    if (uv_idle_init(io->tcp.loop, &t->resume) != 0) return;
    t->resume.data = io;
    t->resume_init = true;
  }
  uv_idle_start(&t->resume, tls_resume_cb);
}

static struct pgs_io_tls *tls_new(pgs_io_t *io, SSL *ssl, bool owned) {
  struct pgs_io_tls *t = pgs_xcalloc(1, sizeof(*t));
  t->ssl = ssl;
  t->owned = owned;
  t->bio = bio_new(io);
  if (t->bio == NULL) {
    free(t);
    return NULL;
  }
  return t;
}

/* Reading switches to the TLS callbacks. */
static int tls_restart_reading(pgs_io_t *io) {
  if (!io->reading) return 0;
  pgs_io_stop_reading(io);
  return pgs_io_start_reading(io);
}

int pgs_io_tls_accept(pgs_io_t *io, struct ssl_ctx_st *ctx) {
  PGS_ASSERT(io->tls == NULL);
  SSL *ssl = SSL_new(ctx);
  if (ssl == NULL) return UV_ENOMEM;
  struct pgs_io_tls *t = tls_new(io, ssl, true);
  if (t == NULL) {
    SSL_free(ssl);
    return UV_ENOMEM;
  }
  SSL_set_bio(ssl, t->bio, t->bio);
  SSL_set_accept_state(ssl);
  t->state = TLS_HANDSHAKE;
  io->tls = t;
  return tls_restart_reading(io);
}

int pgs_io_tls_adopt(pgs_io_t *io, struct ssl_st *ssl) {
  PGS_ASSERT(io->tls == NULL);
  struct pgs_io_tls *t = tls_new(io, ssl, false);
  if (t == NULL) return UV_ENOMEM;
  t->saved_rbio = SSL_get_rbio(ssl);
  t->saved_wbio = SSL_get_wbio(ssl);
  if (t->saved_rbio) BIO_up_ref(t->saved_rbio);
  if (t->saved_wbio && t->saved_wbio != t->saved_rbio) BIO_up_ref(t->saved_wbio);
  SSL_set_bio(ssl, t->bio, t->bio);
  SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
  t->state = TLS_OPEN;
  io->tls = t;
  return tls_restart_reading(io);
}

void pgs_io_tls_release(pgs_io_t *io) {
  struct pgs_io_tls *t = io->tls;
  if (t == NULL || t->owned || t->ssl == NULL) return;
  if (t->state == TLS_OPEN && !io->writing && io->wbuf.len == 0 && io->qbuf.len == 0) {
    /* Nothing of ours is unsent: libpq's next record follows our last. The
     * references we hold become the SSL's; ours goes. */
    SSL_set_bio(t->ssl, t->saved_rbio, t->saved_wbio);
  } else {
    /* Records of ours never went out: libpq's goodbye would not decrypt.
     * It goes nowhere instead. */
    BIO_set_data(t->bio, NULL);
    if (t->saved_wbio && t->saved_wbio != t->saved_rbio) BIO_free(t->saved_wbio);
    if (t->saved_rbio) BIO_free(t->saved_rbio);
  }
  t->saved_rbio = t->saved_wbio = NULL;
  t->ssl = NULL;
  t->bio = NULL;
}

static void tls_free(pgs_io_t *io) {
  struct pgs_io_tls *t = io->tls;
  if (t->owned)
    SSL_free(t->ssl);
  else
    pgs_io_tls_release(io);
  chunk_give(&t->raw);
  free(t);
  io->tls = NULL;
}

static void tls_handle_closed(uv_handle_t *handle) {
  pgs_io_t *io = handle->data;
  if (--io->tls->pending_closes == 0) io->on_close((uv_handle_t *)&io->tcp);
}

static void tls_close(pgs_io_t *io) {
  struct pgs_io_tls *t = io->tls;
  if (t->owned && t->state == TLS_OPEN) {
    /* close_notify, sent with whatever precedes it (best effort). A server
     * session's goodbye is libpq's (pgs_io_tls_release). */
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0) ERR_clear_error();
    (void)tls_send(io);
  }
  io->open = false;
  pgs_io_stop_reading(io);
  if (!t->resume_init) {
    uv_close((uv_handle_t *)&io->tcp, io->on_close);
    return;
  }
  t->pending_closes = 2;
  uv_close((uv_handle_t *)&t->resume, tls_handle_closed);
  uv_close((uv_handle_t *)&io->tcp, tls_handle_closed);
}

bool pgs_io_tls_active(const pgs_io_t *io) { return io->tls && io->tls->state == TLS_OPEN; }

struct ssl_st *pgs_io_tls_session(const pgs_io_t *io) {
  return io->tls && io->tls->owned ? io->tls->ssl : NULL;
}
