-- N small tables for the swap benchmark (besides the pgbench tables).
-- psql variables: n (how many), tag (distinguishes source rows from destination rows).
SELECT format('CREATE TABLE %I (id bigserial PRIMARY KEY, val text NOT NULL, n integer);
               INSERT INTO %I (val, n) SELECT %L || g, g FROM generate_series(1, 10) g;',
              'swap_' || lpad(i::text, 4, '0'), 'swap_' || lpad(i::text, 4, '0'), :'tag')
  FROM generate_series(1, :n) i
\gexec
VACUUM ANALYZE;
CHECKPOINT;
