-- data.sql — demo rows, run through pgshard after schema.sql by `make demo`:
--   psql "host=127.0.0.1 port=6432 dbname=app user=app" -f sql/demo/data.sql
--
-- 9 countries, 1,000 users and 4,000 orders (four per user). The values are
-- computed from generate_series, so every run produces the same rows, and
-- ON CONFLICT DO NOTHING makes a second run add nothing.
--
-- users is sharded by id and orders by user_id (config/demo.ini), and pgshard
-- routes a statement by the key values it names. So the rows cannot come from
-- one INSERT ... SELECT (refused for a sharded table: the proxy cannot see
-- the keys a SELECT produces) nor from one multi-row INSERT (its rows are on
-- both shards, and cross_shard_writes = deny refuses that). Instead a SELECT
-- that reads no table (so it runs on one server, whichever) writes the
-- INSERT statements, and psql's \gexec sends each of them through pgshard,
-- which routes it by its key:
--   users:  one single-row INSERT per user, to the shard of its id;
--   orders: one four-row INSERT per user, all four rows with that user's
--           user_id, so to the user's shard.
-- countries is a reference table (not in the shard map): its one INSERT is
-- written on every shard.

\set ON_ERROR_STOP on

INSERT INTO countries (code, name, region) VALUES
    ('DE', 'Germany', 'eu'), ('FR', 'France', 'eu'), ('IT', 'Italy', 'eu'),
    ('ES', 'Spain', 'eu'), ('NL', 'Netherlands', 'eu'), ('PL', 'Poland', 'eu'),
    ('US', 'United States', 'us'), ('CA', 'Canada', 'us'), ('MX', 'Mexico', 'us')
ON CONFLICT (code) DO NOTHING;

-- users 1..1000: INSERT 0 1 for each new row, INSERT 0 0 on a second run
SELECT format(
         'INSERT INTO users (id, name, country, created_at) VALUES (%s, %L, %L, %L::timestamptz)'
         ' ON CONFLICT (id) DO NOTHING',
         i,
         'user ' || i,
         (ARRAY['DE', 'FR', 'IT', 'ES', 'NL', 'PL', 'US', 'CA', 'MX'])[1 + i % 9],
         to_char((timestamptz '2024-01-01 00:00:00+00' + i * interval '7 hours') AT TIME ZONE 'UTC',
                 'YYYY-MM-DD HH24:MI:SS+00'))
FROM generate_series(1, 1000) AS i
ORDER BY i
\gexec

-- orders 1..4000, order i belonging to user 1 + (i - 1) % 1000: one INSERT
-- per user with its four orders (INSERT 0 4, then INSERT 0 0)
SELECT format(
         'INSERT INTO orders (user_id, id, amount, status, created_at) VALUES %s'
         ' ON CONFLICT (user_id, id) DO NOTHING',
         string_agg(format('(%s, %s, %s, %L, %L::timestamptz)',
                           1 + (i - 1) % 1000,
                           i,
                           ((i * 7919) % 50000) / 100.0,
                           (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + (i + i / 1000) % 4],
                           to_char((timestamptz '2024-06-01 00:00:00+00' + i * interval '37 minutes')
                                   AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00')),
                    ', ' ORDER BY i))
FROM generate_series(1, 4000) AS i
GROUP BY 1 + (i - 1) % 1000
ORDER BY 1 + (i - 1) % 1000
\gexec
