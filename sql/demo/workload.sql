-- workload.sql — what a psql user might run against the proxy once the demo
-- data is loaded; `make demo` runs it through pgshard. Each query also shows
-- the server that answered it (inet_server_port(), pg_is_in_recovery()), so
-- the output says where statements went. Safe to run repeatedly: the rows it
-- adds, it removes again (and an interrupted run's leftovers do not get in
-- the way of the next).

\set ON_ERROR_STOP on
\pset footer off

\echo '== who answers: the server behind this statement'
SELECT inet_server_port() AS server_port, pg_is_in_recovery() AS is_replica;

\echo '== one user by primary key'
SELECT id, name, country, created_at FROM users WHERE id = 42;

\echo '== that user''s orders'
SELECT id, amount, status FROM orders WHERE user_id = 42 ORDER BY id;

\echo '== a join: orders and total per user'
SELECT u.id, u.name, count(o.id) AS orders, sum(o.amount) AS total
FROM users u JOIN orders o ON o.user_id = u.id
WHERE u.id IN (7, 42, 999)
GROUP BY u.id, u.name
ORDER BY u.id;

\echo '== a write transaction: a new user and an order, read back inside it'
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

\echo '== aggregates over the whole table'
SELECT count(*) AS users FROM users;
SELECT status, count(*) AS orders, sum(amount) AS amount FROM orders GROUP BY status ORDER BY status;
SELECT country, count(*) AS users FROM users GROUP BY country ORDER BY users DESC, country LIMIT 3;
SELECT user_id, id, amount FROM orders ORDER BY amount DESC, user_id, id LIMIT 5;

\echo '== COPY out through the proxy'
\copy (SELECT code, name FROM countries WHERE region = 'us' ORDER BY code) TO STDOUT WITH (FORMAT csv, HEADER)
\echo

\echo '== clean up the demo write'
BEGIN;
DELETE FROM orders WHERE user_id = 1000001;
DELETE FROM users WHERE id = 1000001;
COMMIT;
