/*
 * gather.c — asking every worker (or one) for part of an answer, each on its
 * own thread, and getting the parts back on the asking worker's thread.
 *
 * The admin console and the metrics endpoint need state that workers own
 * and touch without locks: their clients, pools, counters. A gather posts
 * a task to each worker's mailbox; each fills its own part buffer (nobody
 * else writes it) and the last one to finish posts the completion to the
 * home worker, where done(gather, owner) reads every part. The atomic
 * pending count orders the parts' writes before that read.
 *
 * The owner may go away first (the admin client disconnects): it cancels,
 * done is then never called, and the gather is freed by whichever side lets
 * go last (two references: the owner's and the workers').
 */
#include <string.h>

#include "pgshard/gather.h"
#include "pgshard/mailbox.h"

struct pgs_gather {
  int refs;    /* atomic: the owner's side and the workers' side */
  int pending; /* atomic: parts not yet filled */
  int home;
  bool cancelled; /* home thread only */
  pgs_gather_part_fn part;
  pgs_gather_done_fn done;
  void *owner;
  int what;
  int64_t param;
  int nparts;
  pgs_buf_t *parts;
};

static void gather_unref(pgs_gather_t *g) {
  if (__atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
  for (int i = 0; i < g->nparts; i++) pgs_buf_free(&g->parts[i]);
  free(g->parts);
  free(g);
}

static void gather_done(pgs_worker_t *home, void *arg) {
  pgs_gather_t *g = arg;
  PGS_UNUSED(home);
  if (!g->cancelled) {
    g->cancelled = true; /* the owner's reference goes with this call */
    g->done(g, g->owner);
    gather_unref(g);
  }
  gather_unref(g);
}

static void part_finished(pgs_gather_t *g) {
  if (__atomic_sub_fetch(&g->pending, 1, __ATOMIC_ACQ_REL) > 0) return;
  if (!pgs_mailbox_post(g->home, gather_done, g)) {
    /* The home worker is stopping: its owner goes with it and cancels (or
     * already has) on that thread; only the workers' side is let go here. */
    gather_unref(g);
  }
}

static void gather_part(pgs_worker_t *w, void *arg) {
  pgs_gather_t *g = arg;
  g->part(w, &g->parts[w->index], g->what, g->param);
  part_finished(g);
}

pgs_gather_t *pgs_gather_start(pgs_worker_t *home, int only, int what, int64_t param,
                               pgs_gather_part_fn part, pgs_gather_done_fn done, void *owner) {
  pgs_gather_t *g = pgs_xcalloc(1, sizeof(*g));
  g->refs = 2;
  g->home = home->index;
  g->part = part;
  g->done = done;
  g->owner = owner;
  g->what = what;
  g->param = param;
  g->nparts = pgs_mailbox_count();
  g->parts = pgs_xcalloc((size_t)g->nparts, sizeof(*g->parts));
  g->pending = only >= 0 ? 1 : g->nparts;
  if (only >= g->nparts || only < -1) { /* no such worker: nothing to ask */
    part_finished(g);
    return g;
  }
  for (int i = 0, n = g->nparts; i < n; i++) {
    if (only >= 0 && i != only) continue;
    if (!pgs_mailbox_post(i, gather_part, g)) part_finished(g); /* stopping: no part */
  }
  return g;
}

void pgs_gather_cancel(pgs_gather_t *g) {
  if (g == NULL || g->cancelled) return;
  g->cancelled = true;
  gather_unref(g);
}

int pgs_gather_nparts(const pgs_gather_t *g) { return g->nparts; }
const pgs_buf_t *pgs_gather_part(const pgs_gather_t *g, int i) { return &g->parts[i]; }
