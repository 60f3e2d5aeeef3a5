-- N small tables for the swap benchmark (besides the pgbench tables), and a
-- table partitioned into PARTS partitions (none when PARTS is 0).
-- psql variables: n (how many), parts, tag (distinguishes source rows from destination rows).
SELECT format('CREATE TABLE %I (id bigserial PRIMARY KEY, val text NOT NULL, n integer);
               INSERT INTO %I (val, n) SELECT %L || g, g FROM generate_series(1, 10) g;',
              'swap_' || lpad(i::text, 4, '0'), 'swap_' || lpad(i::text, 4, '0'), :'tag')
  FROM generate_series(1, :n) i
\gexec
SELECT 'CREATE TABLE swap_parted (id bigint NOT NULL, val text, PRIMARY KEY (id)) PARTITION BY RANGE (id)'
 WHERE :parts > 0
\gexec
SELECT format('CREATE TABLE %I PARTITION OF swap_parted FOR VALUES FROM (%s) TO (%s)',
              'swap_parted_' || lpad(i::text, 4, '0'), (i - 1) * 100, i * 100)
  FROM generate_series(1, :parts) i
\gexec
SELECT format('INSERT INTO swap_parted SELECT g, %L FROM generate_series(0, %s) g', :'tag', :parts * 100 - 1)
 WHERE :parts > 0
\gexec
VACUUM ANALYZE;
CHECKPOINT;
