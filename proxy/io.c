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
 */
#include <string.h>

#include "pgshard/log.h"
#include "pgshard/proxy.h"

void pgs_io_init(pgs_io_t *io, void *owner, size_t in_max) {
  memset(io, 0, sizeof(*io));
  io->owner = owner;
  io->in_max = in_max;
  io->tcp.data = io;
}

void pgs_io_free_buffers(pgs_io_t *io) {
  pgs_buf_free(&io->in);
  pgs_buf_free(&io->scratch);
  pgs_buf_free(&io->wbuf);
  pgs_buf_free(&io->qbuf);
}

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  pgs_io_t *io = handle->data;
  size_t want = io->in_want > io->in.len ? io->in_want - io->in.len : 0;
  size_t room = want > PGS_IO_READ_CHUNK ? want : PGS_IO_READ_CHUNK;
  if (io->in.len + room > io->in_max) room = io->in_max > io->in.len ? io->in_max - io->in.len : 0;
  if (room == 0) {
    buf->base = NULL;
    buf->len = 0; /* libuv reports UV_ENOBUFS */
    return;
  }
  pgs_buf_reserve(&io->in, room);
  buf->base = (char *)io->in.data + io->in.len;
  buf->len = io->in.cap - io->in.len;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  pgs_io_t *io = stream->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread == UV_EOF) io->eof = true;
    pgs_io_stop_reading(io);
    io->on_error(io, (int)nread);
    return;
  }
  io->in.len += (size_t)nread;
  io->read_total += (uint64_t)nread;
  io->on_read(io);
}

int pgs_io_start_reading(pgs_io_t *io) {
  if (io->reading || !io->open) return 0;
  int rc = uv_read_start((uv_stream_t *)&io->tcp, alloc_cb, read_cb);
  if (rc == 0) io->reading = true;
  return rc;
}

void pgs_io_stop_reading(pgs_io_t *io) {
  if (!io->reading) return;
  uv_read_stop((uv_stream_t *)&io->tcp);
  io->reading = false;
}

void pgs_io_emit(pgs_io_t *io, const void *ptr, size_t len) {
  if (len == 0) return;
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
    pgs_buf_free(&io->scratch);
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
  int rc = uv_write(&io->wreq, (uv_stream_t *)&io->tcp, &b, 1, write_cb);
  if (rc == 0) io->writing = true;
  return rc;
}

static void write_cb(uv_write_t *req, int status) {
  pgs_io_t *io = pgs_container_of(req, pgs_io_t, wreq);
  io->writing = false;
  io->wbuf.len = 0;
  if (status < 0) {
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
  if (io->on_drained) io->on_drained(io);
}

static void reset_batch(pgs_io_t *io) {
  io->nsegs = 0;
  io->scratch.len = 0;
  if (io->scratch.cap > 1024 * 1024) pgs_buf_free(&io->scratch);
}

int pgs_io_flush(pgs_io_t *io) {
  if (io->nsegs == 0) return 0;
  if (!io->open) {
    reset_batch(io);
    return UV_EPIPE;
  }
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
  if (io->in.len == 0 && io->in.cap > 4 * PGS_IO_READ_CHUNK) pgs_buf_free(&io->in);
}

void pgs_io_close(pgs_io_t *io) {
  if (!io->open) return;
  io->open = false;
  pgs_io_stop_reading(io);
  uv_close((uv_handle_t *)&io->tcp, io->on_close);
}
