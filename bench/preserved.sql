-- Functions of the preserved-tables swap benchmark, on both sides (so they are in
-- public before and after the swap). The tables are swap_tables.sql's swap_0001 … swap_N.
-- bench_touch(i): one insert into swap_<i> (its bigserial draws the id), as an
-- application writing a preserved table would.
CREATE FUNCTION bench_touch(i integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('INSERT INTO %I (val, n) VALUES ($1, $2)', 'swap_' || lpad(i::text, 4, '0'))
    USING 'pgbench', i;
END $$;
-- bench_pgbench_rows(p): rows written by bench_touch into swap_0001 … swap_<p>.
CREATE FUNCTION bench_pgbench_rows(p integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  total bigint := 0;
  c bigint;
BEGIN
  FOR i IN 1 .. p LOOP
    EXECUTE format('SELECT count(*) FROM %I WHERE val = $1', 'swap_' || lpad(i::text, 4, '0'))
      INTO c USING 'pgbench';
    total := total + c;
  END LOOP;
  RETURN total;
END $$;
