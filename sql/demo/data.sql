-- data.sql — demo rows, run through pgshard after schema.sql by `make demo`.
--
-- Each generator below is a SELECT that writes one INSERT per row, and psql's
-- \gexec runs them one by one. A row-by-row INSERT carries its shard key as a
-- literal, so the proxy sends it to exactly one shard; a single
-- INSERT ... SELECT FROM generate_series would name no key and be refused as
-- a cross-shard write. The values are deterministic, so every run of the demo
-- shows the same data on the same shards.
--
-- 1,000 users and 4,000 orders (four per user).

\set ON_ERROR_STOP on

-- A reference table: one statement, written to every shard.
INSERT INTO countries (code, name, region) VALUES
    ('DE', 'Germany', 'eu'), ('FR', 'France', 'eu'), ('IT', 'Italy', 'eu'),
    ('ES', 'Spain', 'eu'), ('NL', 'Netherlands', 'eu'), ('PL', 'Poland', 'eu'),
    ('US', 'United States', 'us'), ('CA', 'Canada', 'us'), ('MX', 'Mexico', 'us');

SELECT format('INSERT INTO users (id, name, country, created_at) VALUES (%s, %L, %L, %L)',
              i,
              'user ' || i,
              (ARRAY['DE', 'FR', 'IT', 'ES', 'NL', 'PL', 'US', 'CA', 'MX'])[1 + i % 9],
              timestamptz '2024-01-01 00:00:00+00' + i * interval '7 hours')
FROM generate_series(1, 1000) AS i
\gexec

SELECT format('INSERT INTO orders (user_id, id, amount, status, created_at) VALUES (%s, %s, %s, %L, %L)',
              1 + (i - 1) % 1000,
              i,
              ((i * 7919) % 50000) / 100.0,
              (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + (i + i / 1000) % 4],
              timestamptz '2024-06-01 00:00:00+00' + i * interval '37 minutes')
FROM generate_series(1, 4000) AS i
\gexec
