-- The state of a resharding, kept in the cluster (on each move's target
-- shard primary), written by `pgshardctl reshard` and read by every pgshard
-- (SHOW RESHARD, and to refuse what would break while rows move).
--
-- One row per move: the rows of TABLES whose shard is SOURCE under the old
-- map and TARGET (this server's shard) under the new one. RESHARD_ID names
-- the change (database, old map, new map: 16 hex digits), so rerunning a
-- verb finds its own rows. Progress columns are written in the same
-- transaction as the rows they describe, so after a crash they are exact.
--
-- phase:
--   copying    the slot exists, the rows present at its snapshot are being
--              copied (one transaction per target: all or nothing)
--   streaming  copied; changes since the snapshot are applied as they come
--   switched   the new map serves; the source's copies await `cleanup`
--   cleaned    the source's copies are deleted; slot and publication gone
-- An aborted move's row is deleted.
--
-- Each source also keeps a copy of its moves' rows (mirror = true), a
-- second or so behind, so that a pgshard that serves only the old map's
-- shards sees every move (SHOW RESHARD) although a new target is not one of
-- its servers. The target's row is the truth; pgshardctl reads only those.
--
-- pgshardctl runs this file (idempotent) on every source and target
-- before a move.
CREATE SCHEMA IF NOT EXISTS pgshard;

CREATE TABLE IF NOT EXISTS pgshard.reshard_move (
    reshard_id        text        NOT NULL,
    database          text        NOT NULL,
    source            text        NOT NULL,
    target            text        NOT NULL,
    tables            text[]      NOT NULL,
    phase             text        NOT NULL
        CHECK (phase IN ('copying', 'streaming', 'switched', 'cleaned')),
    slot_name         text        NOT NULL,
    publication       text        NOT NULL,
    consistent_lsn    pg_lsn,       -- the slot's snapshot: copied rows are as of it
    applied_lsn       pg_lsn,       -- end of the last source transaction applied (or skipped) here
    applied_commit_at timestamptz,  -- that transaction's commit time on the source
    rows_copied       bigint      NOT NULL DEFAULT 0,
    rows_applied      bigint      NOT NULL DEFAULT 0,
    copy_started_at   timestamptz,
    copy_finished_at  timestamptz,
    cut_token         text,         -- the last cutover marker applied (pg_logical_emit_message)
    error             text,         -- why the streamer stopped, until a rerun clears it
    updated_at        timestamptz NOT NULL DEFAULT now(),
    mirror            boolean     NOT NULL DEFAULT false,  -- a source's copy of the target's row
    PRIMARY KEY (reshard_id, source, target)
);
