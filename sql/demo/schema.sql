-- schema.sql — the demo schema, run through pgshard by `make demo`:
--   psql "host=127.0.0.1 port=6432 dbname=app user=app" -f sql/demo/schema.sql
--
-- Safe to run again: every object is created only when it is missing, so a
-- second `make demo` keeps the tables (and data.sql then adds nothing).
--
-- The demo database is sharded over two shards (config/demo.ini), and pgshard
-- sends this DDL to every shard's primary; each replica gets it by streaming
-- replication. users is sharded by id and orders by user_id (the same key,
-- so a user's orders live on the user's shard and a join on the key stays on
-- one shard); countries, a small table every shard needs, is not in the
-- shard map, so it is a reference table: written on every shard, read from
-- one. That is why ids come from the application rather than a sequence
-- (each shard would hand out the same values) and why orders has no foreign
-- key to users (PostgreSQL checks one only within one server, which would
-- hold here only because the two tables share their shard key).

\set ON_ERROR_STOP on
-- no "already exists, skipping" notices on a second run
SET client_min_messages = warning;

CREATE TABLE IF NOT EXISTS countries (
    code   text PRIMARY KEY,          -- ISO 3166 alpha-2
    name   text NOT NULL,
    region text NOT NULL              -- eu | us
);

CREATE TABLE IF NOT EXISTS users (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    country    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS orders (
    user_id    bigint NOT NULL,
    id         bigint NOT NULL,
    amount     numeric(10, 2) NOT NULL CHECK (amount >= 0),
    status     text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, id)
);

CREATE INDEX IF NOT EXISTS orders_status ON orders (status);
