-- The many-tables dataset (`make bench`, part "many"): :tables small tables and a
-- table partitioned into :partitions, with keys, indexes, foreign keys and data.
-- psql variables: tables, partitions.
-- Committed every 200 tables: the source's lock table is default-sized too.

SELECT set_config('bench.tables', :'tables', false) AS many_tables,
       set_config('bench.partitions', :'partitions', false) AS many_partitions \gset

CREATE TABLE hub (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO hub SELECT g, 'hub ' || g FROM generate_series(1, 10) g;

-- t_00001 … : a bigserial key, a foreign key to the previous table, text, a second index.
DO $$
DECLARE
  n integer := current_setting('bench.tables')::integer;
  t text;
  prev text;
BEGIN
  FOR i IN 1..n LOOP
    t := 't_' || lpad(i::text, 5, '0');
    EXECUTE format('CREATE TABLE %I (id bigserial PRIMARY KEY, hub_id integer NOT NULL, prev_id bigint %s,
                                     name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())',
                   t, CASE WHEN prev IS NULL THEN '' ELSE format('REFERENCES %I', prev) END);
    EXECUTE format('CREATE INDEX ON %I (hub_id, name)', t);
    EXECUTE format('INSERT INTO %I (hub_id, prev_id, name) SELECT 1 + g %% 10, %s, %L || g FROM generate_series(1, 5) g',
                   t, CASE WHEN prev IS NULL THEN 'NULL' ELSE 'g' END, t);
    prev := t;
    IF i % 200 = 0 THEN
      COMMIT;
    END IF;
  END LOOP;
END $$;

-- events, partitioned by week.
CREATE TABLE events (
    id bigint NOT NULL,
    at date NOT NULL,
    hub_id integer NOT NULL REFERENCES hub,
    payload text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
DO $$
DECLARE
  n integer := current_setting('bench.partitions')::integer;
BEGIN
  FOR i IN 0..n - 1 LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                   'events_' || lpad(i::text, 4, '0'), date '2020-01-01' + 7 * i, date '2020-01-01' + 7 * (i + 1));
    IF i % 100 = 99 THEN
      COMMIT;
    END IF;
  END LOOP;
END $$;
CREATE INDEX ON events (hub_id);
INSERT INTO events
SELECT g, date '2020-01-01' + g % (7 * current_setting('bench.partitions')::integer), 1 + g % 10, 'event ' || g
  FROM generate_series(1, 100000) g;

VACUUM (FREEZE, ANALYZE);
CHECKPOINT;
