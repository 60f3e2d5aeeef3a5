-- The benchmark dataset, besides the pgbench tables (`pgbench -i` runs first).
-- psql variables: geo_rows, doc_rows, small_tables.

CREATE EXTENSION IF NOT EXISTS postgis;

-- A PostGIS table: points with a GiST index and a btree index.
CREATE TABLE places (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    geom geometry(Point, 4326) NOT NULL,
    category integer NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO places (geom, category, name, created_at)
SELECT ST_SetSRID(ST_MakePoint(random() * 360 - 180, random() * 170 - 85), 4326),
       (random() * 50)::integer,
       'place ' || g,
       timestamptz '2020-01-01 00:00:00+00' + g * interval '17 seconds'
  FROM generate_series(1, :geo_rows) g;
CREATE INDEX places_geom_idx ON places USING gist (geom);
CREATE INDEX places_created_at_idx ON places (created_at);

-- A wide table: text (hex, barely compressible, ~530 bytes, every 50th row
-- ~4 kB and TOASTed), jsonb, an array; a GIN index on the jsonb.
CREATE TABLE documents (
    id bigserial PRIMARY KEY,
    title text NOT NULL,
    body text NOT NULL,
    attrs jsonb NOT NULL,
    tags text[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO documents (title, body, attrs, tags, updated_at)
SELECT 'Document ' || g,
       (SELECT string_agg(md5((g * 131 + i)::text), ' ')
          FROM generate_series(1, CASE WHEN g % 50 = 0 THEN 128 ELSE 16 END) i),
       jsonb_build_object(
           'owner', 'user' || (g % 1000),
           'score', g % 97,
           'active', g % 3 = 0,
           'flags', jsonb_build_array(g % 2 = 0, g % 5 = 0),
           'meta', jsonb_build_object('hash', md5(g::text), 'n', g, 'kind', 'k' || (g % 13))),
       ARRAY['t' || (g % 10), 't' || (g % 7)],
       timestamptz '2021-01-01 00:00:00+00' + g * interval '1 minute'
  FROM generate_series(1, :doc_rows) g;
CREATE INDEX documents_attrs_idx ON documents USING gin (attrs jsonb_path_ops);
CREATE INDEX documents_updated_at_idx ON documents (updated_at);

-- Many small tables: a primary key (bigserial) and a few rows each.
SELECT format('CREATE TABLE %I (id bigserial PRIMARY KEY, code text NOT NULL, val integer, note text);
               INSERT INTO %I (code, val, note) SELECT ''c'' || g, g, ''row '' || g FROM generate_series(1, 5) g;',
              'small_' || lpad(i::text, 4, '0'), 'small_' || lpad(i::text, 4, '0'))
  FROM generate_series(1, :small_tables) i
\gexec

-- Settle the source: hint bits set, visibility map and statistics current, so no
-- tool pays for the first read of freshly written rows.
VACUUM (FREEZE, ANALYZE);
CHECKPOINT;
