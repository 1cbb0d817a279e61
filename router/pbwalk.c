/*
 * pbwalk.c — the walk of pbwalk.h: each message's fields that hold
 * messages (one, repeated, or the set member of a oneof), in order.
 */
#include "pgshard/pbwalk.h"

static bool walk(const ProtobufCMessage *m, int depth, int max_depth, pgs_walk_fn visit, void *arg,
                 bool *too_deep) {
  if (m == NULL) return false;
  if (depth > max_depth) {
    if (too_deep) *too_deep = true;
    return true;
  }
  pgs_walk_t what = visit(m, arg);
  if (what != PGS_WALK_ON) return what == PGS_WALK_STOP;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = (const char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t count = *(const size_t *)(const void *)(base + f->quantifier_offset);
      ProtobufCMessage *const *items =
          *(ProtobufCMessage *const *const *)(const void *)(base + f->offset);
      for (size_t j = 0; j < count; j++)
        if (walk(items[j], depth + 1, max_depth, visit, arg, too_deep)) return true;
    } else {
      if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
          *(const uint32_t *)(const void *)(base + f->quantifier_offset) != f->id)
        continue;
      if (walk(*(ProtobufCMessage *const *)(const void *)(base + f->offset), depth + 1, max_depth,
               visit, arg, too_deep))
        return true;
    }
  }
  return false;
}

bool pgs_pb_walk(const ProtobufCMessage *m, int max_depth, pgs_walk_fn visit, void *arg,
                 bool *too_deep) {
  return walk(m, 0, max_depth, visit, arg, too_deep);
}
