-- The recorded workload of the impact-report benchmark: :m distinct statements
-- over the :n tables of swap_tables.sql, run once each so that pg_stat_statements
-- records them. Statement i reads table t = (i - 1) % n + 1; its shape (by key, by
-- value, SELECT *, an aggregate) cycles with t, shifted on every pass over the
-- tables, so that every shape is used and the tables the new version changes
-- (every 100th gains a column, t % 100 = 0; another is dropped, t % 100 = 50) are
-- read by SELECT * and by key on the first pass: those statements change result
-- type and fail.
SELECT format(CASE ((i - 1) % :n + 1 + 2 + (i - 1) / :n) % 4
                WHEN 0 THEN 'SELECT val FROM %I WHERE id = 1'
                WHEN 1 THEN 'SELECT n FROM %I WHERE val = ''x'''
                WHEN 2 THEN 'SELECT * FROM %I WHERE id = 2'
                ELSE 'SELECT count(*) FROM %I WHERE n > 3' END,
              'swap_' || lpad(((i - 1) % :n + 1)::text, 4, '0'))
  FROM generate_series(1, :m) i
\gexec
