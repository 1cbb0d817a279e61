-- schema.sql — the demo schema, run through pgshard by `make demo`:
--   psql "host=127.0.0.1 port=6432 dbname=app user=app" -f sql/demo/schema.sql
--
-- DDL goes to every shard. users is sharded by id and orders by user_id, with
-- the same key type, so a user's orders live on the user's shard and joins on
-- the key stay on one shard. countries is not in the shard map: a reference
-- table, written on every shard and read from any one.
--
-- Ids are given by the application, never by a sequence: each shard would
-- hand out the same serial values. There is no foreign key from orders to
-- users because PostgreSQL can only check it within one shard.

DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS users;
DROP TABLE IF EXISTS countries;

CREATE TABLE countries (
    code   text PRIMARY KEY,          -- ISO 3166 alpha-2
    name   text NOT NULL,
    region text NOT NULL              -- eu | us, as in [geo.app]
);

CREATE TABLE users (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    country    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    user_id    bigint NOT NULL,       -- the shard key: the user's shard
    id         bigint NOT NULL,
    amount     numeric(10, 2) NOT NULL CHECK (amount >= 0),
    status     text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, id)
);

CREATE INDEX orders_status ON orders (status);
