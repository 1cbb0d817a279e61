-- The decision records of pgshard's two-phase commits (include/pgshard/twophase.h),
-- one table on every shard primary of a database with cross_shard_writes = 2pc.
-- pgshard's recovery login runs this (compiled in from this file) when it first
-- reaches a shard; every statement is idempotent, and the advisory lock keeps
-- several pgshard instances starting at once from racing on CREATE.
--
-- A row is written once: by a committing transaction's INSERT (gid) inside its
-- own transaction on the decision shard (owner = its login, aborted = false), or
-- by recovery (aborted = true, the prepared transaction's owner). Clients may
-- only insert a gid (column privilege): they cannot pick owner or aborted, nor
-- read, change or delete rows. Recovery commits a gid only for a row with
-- aborted = false whose owner is the prepared transaction's owner.
BEGIN;
SELECT pg_advisory_xact_lock(7306085918164217344);
CREATE SCHEMA IF NOT EXISTS pgshard;
CREATE TABLE IF NOT EXISTS pgshard.twophase_decision (
  gid text PRIMARY KEY,
  owner name NOT NULL DEFAULT current_user,
  aborted boolean NOT NULL DEFAULT false,
  decided_at timestamptz NOT NULL DEFAULT now()
);
GRANT USAGE ON SCHEMA pgshard TO PUBLIC;
REVOKE ALL ON pgshard.twophase_decision FROM PUBLIC;
GRANT INSERT (gid) ON pgshard.twophase_decision TO PUBLIC;
COMMIT;
