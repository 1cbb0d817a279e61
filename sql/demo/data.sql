-- data.sql — demo rows, run through pgshard after schema.sql by `make demo`.
--
-- 9 countries, 1,000 users and 4,000 orders (four per user). The values are
-- computed from generate_series, so every run produces the same rows, and
-- ON CONFLICT DO NOTHING makes a second run add nothing.

\set ON_ERROR_STOP on

INSERT INTO countries (code, name, region) VALUES
    ('DE', 'Germany', 'eu'), ('FR', 'France', 'eu'), ('IT', 'Italy', 'eu'),
    ('ES', 'Spain', 'eu'), ('NL', 'Netherlands', 'eu'), ('PL', 'Poland', 'eu'),
    ('US', 'United States', 'us'), ('CA', 'Canada', 'us'), ('MX', 'Mexico', 'us')
ON CONFLICT (code) DO NOTHING;

INSERT INTO users (id, name, country, created_at)
SELECT i,
       'user ' || i,
       (ARRAY['DE', 'FR', 'IT', 'ES', 'NL', 'PL', 'US', 'CA', 'MX'])[1 + i % 9],
       timestamptz '2024-01-01 00:00:00+00' + i * interval '7 hours'
FROM generate_series(1, 1000) AS i
ON CONFLICT (id) DO NOTHING;

INSERT INTO orders (user_id, id, amount, status, created_at)
SELECT 1 + (i - 1) % 1000,
       i,
       ((i * 7919) % 50000) / 100.0,
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + (i + i / 1000) % 4],
       timestamptz '2024-06-01 00:00:00+00' + i * interval '37 minutes'
FROM generate_series(1, 4000) AS i
ON CONFLICT (user_id, id) DO NOTHING;
