-- workload.sql — what a psql user might run against the proxy once the demo
-- data is loaded (`make demo` runs it and then shows where each statement
-- went). Safe to run repeatedly: the one row it adds, it removes again.

\set ON_ERROR_STOP on
\pset footer off

\echo '== one user by primary key: a single shard (a replica, lag permitting)'
SELECT id, name, country, created_at FROM users WHERE id = 42;

\echo '== that user''s orders: the same shard, because orders is sharded by user_id'
SELECT id, amount, status FROM orders WHERE user_id = 42 ORDER BY id;

\echo '== a join on the shard key: stays on that shard'
SELECT u.name, count(o.id) AS orders, sum(o.amount) AS total
FROM users u JOIN orders o ON o.user_id = u.id
WHERE u.id = 42
GROUP BY u.name;

\echo '== a few users by key: only the shards that hold them'
SELECT id, name, country FROM users WHERE id IN (7, 420, 999) ORDER BY id;

\echo '== writes: the primary of the key''s shard'
INSERT INTO users (id, name, country) VALUES (1000001, 'demo visitor', 'NL');
UPDATE orders SET status = 'paid' WHERE user_id = 42 AND id = 42;

\echo '== read your own write (read_your_writes decides primary or a caught-up replica)'
SELECT id, name, country FROM users WHERE id = 1000001;

\echo '== no shard key: every shard, results merged by the proxy'
SELECT count(*) AS users FROM users;
SELECT status, count(*) AS orders, sum(amount) AS amount FROM orders GROUP BY status ORDER BY status;
SELECT country, count(*) AS users FROM users GROUP BY country ORDER BY users DESC, country LIMIT 3;
SELECT user_id, id, amount FROM orders ORDER BY amount DESC, user_id, id LIMIT 5;

\echo '== a reference table: read from one shard'
SELECT code, name FROM countries WHERE region = 'eu' ORDER BY code;

\echo '== clean up the demo write'
DELETE FROM users WHERE id = 1000001;
