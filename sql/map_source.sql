-- The shard map kept in PostgreSQL ([pgshard] map_source = CONNINFO), run
-- by every pgshard when it connects there and by `pgshardctl map push`.
--
-- pgshard.map: one row per version of the map. BODY is ini text holding the
-- map's sections (every section but [pgshard], which stays in each
-- instance's file). Versions only grow; the highest is the one to serve.
-- A new version is inserted and announced with NOTIFY pgshard_map, '<version>'
-- in the same transaction, so a listener reads it committed.
--
-- pgshard.instance: one row per pgshard (ID: host:port of its listener
-- unless set), written about once a second: the version it serves and when
-- it was last seen. An instance not seen for a few seconds is not live.
--
-- The advisory lock keeps pgshard instances that start together from
-- racing on the catalog (CREATE ... IF NOT EXISTS is not atomic).
BEGIN;
SELECT pg_advisory_xact_lock(7226381473560111);
CREATE SCHEMA IF NOT EXISTS pgshard;
CREATE TABLE IF NOT EXISTS pgshard.map (
  version bigint PRIMARY KEY CHECK (version > 0),
  body text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  note text
);
CREATE TABLE IF NOT EXISTS pgshard.instance (
  id text PRIMARY KEY,
  listen text,
  pid int,
  map_version bigint,
  started_at timestamptz,
  seen_at timestamptz
);
COMMIT;
