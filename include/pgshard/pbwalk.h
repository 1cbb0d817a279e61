/*
 * pbwalk.h — one walk over a libpg_query parse tree (protobuf-c messages),
 * by their descriptors, for the analyses that look for something in an
 * expression (merge.c, collate.c). Pure; recursion bounded by MAX_DEPTH.
 */
#ifndef PGSHARD_PBWALK_H
#define PGSHARD_PBWALK_H

#include <stdbool.h>

#include <protobuf-c/protobuf-c.h>

typedef enum {
  PGS_WALK_ON,   /* go on, below this message too */
  PGS_WALK_SKIP, /* go on, but not below this message */
  PGS_WALK_STOP, /* found: the walk ends and returns true */
} pgs_walk_t;

typedef pgs_walk_t (*pgs_walk_fn)(const ProtobufCMessage *m, void *arg);

/* Calls VISIT on M (may be NULL) and every message below it, depth first,
 * in field order; true when VISIT stopped it, or when the tree is deeper
 * than MAX_DEPTH (then *TOO_DEEP is set, when given). */
bool pgs_pb_walk(const ProtobufCMessage *m, int max_depth, pgs_walk_fn visit, void *arg,
                 bool *too_deep);

#endif
