/*
 * peers.c — cancel requests across a fleet (PgBouncer's peering).
 *
 * Behind a TCP load balancer a client's CancelRequest opens a new
 * connection, which may land on another pgshard than the one holding the
 * session. With `peer_id` and `peers` set, every session's cancel key
 * carries its instance's peer_id in its top byte (the other 24 bits stay
 * random); an instance that gets a CancelRequest for another peer's key
 * sends it on to that peer as a peer cancel (PGS_PEER_CANCEL_CODE), which
 * the peer handles as its own and never passes on. A key with no such peer
 * is dropped: a cancel is never applied to a session whose key it does not
 * match in full.
 *
 * A forward, on the worker's loop: resolve the peer's host
 * (uv_getaddrinfo), connect, write the 16-byte request, close. One timer
 * bounds the whole exchange (PGS_PEERS_TIMEOUT_MS); at most
 * PGS_PEERS_MAX_PENDING are on their way per worker. States:
 *   RESOLVING --addresses--> CONNECTING --connected--> WRITING --written--> closed
 *   any --failure or timer--> closed
 */
#include <string.h>

#include "pgshard/log.h"
#include "pgshard/peers.h"
#include "pgshard/proto.h"

int32_t pgs_peers_cancel_key(int peer_id, int32_t random) {
  if (peer_id <= 0) return random;
  return (int32_t)(((uint32_t)peer_id << 24) | ((uint32_t)random & 0xffffffu));
}

int pgs_peers_owner(const pgs_config_t *config, int32_t key) {
  if (config->peer_id <= 0) return 0;
  int peer = (int)((uint32_t)key >> 24);
  return peer == config->peer_id ? 0 : peer;
}

typedef struct forward {
  pgs_worker_t *worker;
  uv_getaddrinfo_t resolve;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  uv_timer_t timer;
  uint8_t packet[16];
  char where[300];
  int refs; /* the timer, the resolve request, the tcp handle: each until it is done */
  bool tcp_open;
  bool done;
} forward_t;

static int pending; /* forwards on their way, every worker (atomic) */

static void release(forward_t *f) {
  if (--f->refs > 0) return;
  __atomic_sub_fetch(&pending, 1, __ATOMIC_ACQ_REL);
  free(f);
}

static void handle_closed(uv_handle_t *handle) { release(handle->data); }

/* The exchange is over (WHY: NULL when the request went out). */
static void finish(forward_t *f, const char *why) {
  if (f->done) return;
  f->done = true;
  if (why)
    pgs_warn("cancel request for %s not passed on: %s", f->where, why);
  else
    pgs_debug("cancel request passed on to %s", f->where);
  uv_close((uv_handle_t *)&f->timer, handle_closed);
  if (f->tcp_open) uv_close((uv_handle_t *)&f->tcp, handle_closed);
}

static void on_timer(uv_timer_t *timer) {
  forward_t *f = timer->data;
  /* A resolve still queued is cancelled (its callback then says so). */
  (void)uv_cancel((uv_req_t *)&f->resolve);
  finish(f, "timeout");
}

static void on_written(uv_write_t *req, int status) {
  forward_t *f = req->data;
  finish(f, status == 0 ? NULL : uv_strerror(status));
}

static void on_connected(uv_connect_t *req, int status) {
  forward_t *f = req->data;
  if (f->done) return; /* closed meanwhile: status is UV_ECANCELED */
  if (status != 0) {
    finish(f, uv_strerror(status));
    return;
  }
  uv_buf_t buf = uv_buf_init((char *)f->packet, sizeof(f->packet));
  f->write.data = f;
  int rc = uv_write(&f->write, (uv_stream_t *)&f->tcp, &buf, 1, on_written);
  if (rc != 0) finish(f, uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  forward_t *f = req->data;
  if (!f->done && (status != 0 || res == NULL))
    finish(f, status ? uv_strerror(status) : "no address");
  if (!f->done) {
    int rc = uv_tcp_init(&f->worker->loop, &f->tcp);
    if (rc == 0) {
      f->tcp.data = f;
      f->tcp_open = true;
      f->refs++;
      f->connect.data = f;
      rc = uv_tcp_connect(&f->connect, &f->tcp, res->ai_addr, on_connected);
    }
    if (rc != 0) finish(f, uv_strerror(rc));
  }
  if (res) uv_freeaddrinfo(res);
  release(f);
}

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

void pgs_peers_forward_cancel(pgs_worker_t *worker, int peer, int32_t pid, int32_t key) {
  const pgs_config_t *config = worker->config;
  if (peer < 1 || peer > config->npeers) {
    pgs_info("cancel request for peer %d dropped: peers lists %d", peer, config->npeers);
    return;
  }
  int most = PGS_PEERS_MAX_PENDING * config->workers;
  if (__atomic_add_fetch(&pending, 1, __ATOMIC_ACQ_REL) > most) {
    __atomic_sub_fetch(&pending, 1, __ATOMIC_ACQ_REL);
    pgs_warn("cancel request for peer %d dropped: %d already on their way", peer, most);
    return;
  }
  forward_t *f = pgs_xcalloc(1, sizeof(*f));
  f->worker = worker;
  snprintf(f->where, sizeof(f->where), "peer %d (%s:%d)", peer, config->peer_hosts[peer - 1],
           config->peer_ports[peer - 1]);
  put_u32(f->packet, 16);
  put_u32(f->packet + 4, PGS_PEER_CANCEL_CODE);
  put_u32(f->packet + 8, (uint32_t)pid);
  put_u32(f->packet + 12, (uint32_t)key);
  uv_timer_init(&worker->loop, &f->timer);
  f->timer.data = f;
  f->refs = 2; /* the timer and the resolve */
  uv_timer_start(&f->timer, on_timer, PGS_PEERS_TIMEOUT_MS, 0);
  char port[8];
  snprintf(port, sizeof(port), "%d", config->peer_ports[peer - 1]);
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  f->resolve.data = f;
  int rc = uv_getaddrinfo(&worker->loop, &f->resolve, on_resolved, config->peer_hosts[peer - 1],
                          port, &hints);
  if (rc != 0) {
    finish(f, uv_strerror(rc));
    release(f); /* no resolve to wait for */
  }
}
