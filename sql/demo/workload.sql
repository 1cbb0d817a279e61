-- workload.sql — what a psql user might run against the proxy once the demo
-- data is loaded; `make demo` runs it through pgshard. Each query also shows
-- the server that answered it (inet_server_port(): 6500 is s0's primary,
-- 6510 s1's, in config/demo.ini), so the output says where statements went.
-- `build/pgshardctl route config/demo.ini app users ID` names the shard of
-- an id; with config/demo.ini users 2, 42 and 999 are on s0, users 1, 7 and
-- 1000001 on s1. Safe to run repeatedly: the rows it adds, it removes again
-- (and an interrupted run's leftovers do not get in the way of the next).
--
-- Some statements near the end are refused by pgshard on purpose (writes
-- across shards under cross_shard_writes = deny, a window function over
-- every shard); their errors are expected.

\set ON_ERROR_STOP on
\pset footer off

\echo '== one user by primary key: the statement goes to the shard of its id'
SELECT id, name, country, inet_server_port() AS server_port FROM users WHERE id = 42;
SELECT id, name, country, inet_server_port() AS server_port FROM users WHERE id = 7;

\echo '== that user''s orders: orders is sharded by user_id, so they are on the user''s shard'
SELECT id, amount, status, inet_server_port() AS server_port FROM orders WHERE user_id = 7 ORDER BY id;

\echo '== a join on the shard key, for an IN list whose ids share a shard (2, 42, 999: s0)'
SELECT u.id, u.name, count(o.id) AS orders, sum(o.amount) AS total,
       inet_server_port() AS server_port
FROM users u JOIN orders o ON o.user_id = u.id
WHERE u.id IN (2, 42, 999)
GROUP BY u.id, u.name
ORDER BY u.id;

\echo '== the reference table countries: on every shard, a read goes to one'
SELECT code, name, inet_server_port() AS server_port FROM countries WHERE region = 'us' ORDER BY code;

\echo '== rows per shard: a hint sends a statement without a shard key to one shard'
/* pgshard: shard=s0 */ SELECT 's0' AS shard, inet_server_port() AS server_port,
       (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM orders) AS orders,
       (SELECT count(*) FROM countries) AS countries;
SET pgshard.shard = 's1';
SELECT 's1' AS shard, inet_server_port() AS server_port,
       (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM orders) AS orders,
       (SELECT count(*) FROM countries) AS countries;
\echo '-- SET pgshard.shard holds until RESET: s1''s orders by status'
SELECT status, count(*) AS orders, sum(amount) AS amount FROM orders GROUP BY status ORDER BY status;
RESET pgshard.shard;

\echo '== reads without a shard key run on both shards and are merged into one result'
SELECT count(*) AS users, min(id) AS lowest_id, max(id) AS highest_id FROM users;
\echo '-- an IN list whose ids are on both shards (7 on s1, 42 on s0):'
SELECT id, name FROM users WHERE id IN (7, 42) ORDER BY id;
\echo '-- the largest orders over both shards (each shard sends its top 5, pgshard merges):'
SELECT user_id, id, amount FROM orders ORDER BY amount DESC, user_id, id LIMIT 5;
\echo '-- orders per status over both shards (partial groups merged; avg from sum and count):'
SELECT status, count(*) AS orders, sum(amount) AS amount, avg(amount) AS average
FROM orders GROUP BY status ORDER BY status;

\echo '== a write transaction on one shard: a new user (1000001, on s1) and an order, read back inside it'
BEGIN;
INSERT INTO users (id, name, country) VALUES (1000001, 'demo visitor', 'NL')
    ON CONFLICT (id) DO NOTHING;
INSERT INTO orders (user_id, id, amount) VALUES (1000001, 1000001, 19.99)
    ON CONFLICT (user_id, id) DO NOTHING;
UPDATE orders SET status = 'paid' WHERE user_id = 1000001 AND id = 1000001;
SELECT u.name, o.amount, o.status, inet_server_port() AS server_port,
       pg_is_in_recovery() AS is_replica
FROM users u JOIN orders o ON o.user_id = u.id
WHERE u.id = 1000001;
COMMIT;

\echo '== read your own write, after the commit'
SELECT id, name, country, inet_server_port() AS server_port FROM users WHERE id = 1000001;

\echo '== COPY out through the proxy'
\copy (SELECT code, name FROM countries WHERE region = 'us' ORDER BY code) TO STDOUT WITH (FORMAT csv, HEADER)
\echo

\echo '== refused by pgshard, on purpose: each error below is expected (its SQLSTATE, 0A000, follows ERROR:), and the session stays usable'
\set ON_ERROR_STOP off
\set VERBOSITY verbose
\echo '-- a window function over every shard (it cannot be merged exactly):'
SELECT id, rank() OVER (ORDER BY id) FROM users;
\echo '-- one INSERT with rows on both shards (1000002 on s1, 1000003 on s0; cross_shard_writes = deny):'
INSERT INTO users (id, name, country) VALUES (1000002, 'visitor 2', 'US'), (1000003, 'visitor 3', 'DE')
    ON CONFLICT (id) DO NOTHING;
\echo '-- one transaction writing on both shards (42 on s0, then 7 on s1):'
BEGIN;
UPDATE users SET name = name WHERE id = 42;
UPDATE users SET name = name WHERE id = 7;
ROLLBACK;
\set VERBOSITY default
\set ON_ERROR_STOP on
\echo '-- and the session goes on:'
SELECT id, name, inet_server_port() AS server_port FROM users WHERE id = 42;

\echo '== clean up the demo write'
BEGIN;
DELETE FROM orders WHERE user_id = 1000001;
DELETE FROM users WHERE id = 1000001;
COMMIT;
-- only there if a refusal above ever let them through
DELETE FROM users WHERE id = 1000002;
DELETE FROM users WHERE id = 1000003;
