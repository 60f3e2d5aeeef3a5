#!/usr/bin/env bash
# pgshift demo: two throwaway local PostgreSQL clusters, a sample PostGIS
# application migrated while a small client keeps using the destination
# (prepare, the impact report of `swap --dry-run`, swap), then status, list,
# verify and a rollback.
#
#   scripts/demo.sh <path-to-pgshift-binary>        (what `make demo` runs)
#
# Knobs: PGSHIFT_PG_BINDIR (default: pg_config --bindir), DEMO_OS_USER (the
# server's OS user when run as root, default postgres), DEMO_PRESERVED_TABLES
# (default users; empty to migrate without preserving any table), DEMO_KEEP=1
# (leave the clusters running and print how to reach them).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 <path-to-pgshift-binary>" >&2
  exit 2
fi
PGSHIFT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ -x "$PGSHIFT" ] || { echo "error: $1 is not an executable" >&2; exit 2; }

PGBIN=${PGSHIFT_PG_BINDIR:-$(pg_config --bindir 2>/dev/null || true)}
[ -x "$PGBIN/initdb" ] || { echo "error: no initdb in '$PGBIN' (install PostgreSQL or set PGSHIFT_PG_BINDIR)" >&2; exit 2; }
export PATH="$PGBIN:$PATH"
PRESERVED=${DEMO_PRESERVED_TABLES-users}

say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
run()  { printf '\033[2m$ pgshift %s\033[0m\n' "$*"; "$PGSHIFT" "$@"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgshift-demo.XXXXXX")
chmod 755 "$WORK"
RUN_AS=""
if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=${DEMO_OS_USER:-postgres}
  id "$RUN_AS" >/dev/null 2>&1 || { echo "error: running as root needs an unprivileged OS user for the servers; user $RUN_AS does not exist (set DEMO_OS_USER)" >&2; exit 2; }
fi
as_server() {
  if [ -n "$RUN_AS" ]; then
    if command -v runuser >/dev/null 2>&1; then runuser -u "$RUN_AS" -- "$@"; else su -s /bin/sh "$RUN_AS" -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}

CLIENT_PID=""
cleanup() {
  local rc=$?
  [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null && wait "$CLIENT_PID" 2>/dev/null || true
  if [ "${DEMO_KEEP:-0}" = 1 ] && [ $rc -eq 0 ]; then
    echo "clusters left running in $WORK (source port $SRC_PORT, destination port $DST_PORT)"
    return
  fi
  for c in src dst; do
    [ -f "$WORK/$c/postmaster.pid" ] && as_server pg_ctl stop -D "$WORK/$c" -m immediate >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
  [ $rc -eq 0 ] || echo "demo failed (exit $rc)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "error: no free port" >&2; exit 1
}

start_cluster() { # name port
  local dir="$WORK/$1"
  mkdir -p "$dir" "$WORK/$1-sock"
  [ -n "$RUN_AS" ] && chown "$RUN_AS" "$dir" "$WORK/$1-sock"
  as_server initdb -D "$dir" -U demo --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  cat >>"$dir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$WORK/$1-sock'
fsync = off
synchronous_commit = off
timezone = 'UTC'
shared_preload_libraries = 'pg_stat_statements'
EOF
  as_server pg_ctl start -D "$dir" -l "$dir/server.log" -w -t 60 >/dev/null
}

say "Starting two throwaway clusters in $WORK"
SRC_PORT=$(free_port); start_cluster src "$SRC_PORT"
DST_PORT=$(free_port); while [ "$DST_PORT" = "$SRC_PORT" ]; do DST_PORT=$(free_port); done
start_cluster dst "$DST_PORT"
SRC="postgresql://demo@127.0.0.1:$SRC_PORT/shop"
DST="postgresql://demo@127.0.0.1:$DST_PORT/shop"
note "source:      $SRC"
note "destination: $DST"
psql_src() { psql -X -q -v ON_ERROR_STOP=1 -At "$SRC" "$@"; }
psql_dst() { psql -X -q -v ON_ERROR_STOP=1 -At "$DST" "$@"; }
for port in "$SRC_PORT" "$DST_PORT"; do
  psql -X -q -At "postgresql://demo@127.0.0.1:$port/postgres" -c "CREATE DATABASE shop"
done

say "The destination serves v1 of the shop (with its users, who keep signing up)"
psql_dst <<'SQL'
CREATE EXTENSION postgis;
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz DEFAULT now());
INSERT INTO users (name, email) SELECT 'customer' || g, 'c' || g || '@example.com' FROM generate_series(1, 200) g;
CREATE TABLE products (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2));
INSERT INTO products (title, price) SELECT 'old product ' || g, g FROM generate_series(1, 50) g;
CREATE TABLE stores (id serial PRIMARY KEY, name text, location geometry(Point, 4326));
INSERT INTO stores (name, location) VALUES ('Old Town', ST_SetSRID(ST_MakePoint(13.40, 52.52), 4326));
CREATE FUNCTION catalog_version() RETURNS text LANGUAGE sql AS $$ SELECT 'v1' $$;
-- The statements the application runs, for the impact report (the library is
-- preloaded above; the setup's own statements are forgotten before the client starts).
CREATE EXTENSION pg_stat_statements;
SQL
note "v1: $(psql_dst -c "SELECT count(*) FROM products") products, $(psql_dst -c "SELECT count(*) FROM users") users, catalog $(psql_dst -c "SELECT catalog_version()")"

say "The source holds v2: a new catalog, stores with geometry, a view and a function"
psql_src <<'SQL'
CREATE EXTENSION postgis;
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz DEFAULT now(), marketing_opt_in boolean DEFAULT false);
CREATE TABLE products (id serial PRIMARY KEY, title text NOT NULL, price numeric(10,2), tags text[]);
INSERT INTO products (title, price, tags) SELECT 'product ' || g, g * 1.5, ARRAY['new'] FROM generate_series(1, 5000) g;
CREATE TABLE stores (id serial PRIMARY KEY, name text, location geometry(Point, 4326));
CREATE INDEX stores_location ON stores USING gist (location);
INSERT INTO stores (name, location) SELECT 'store ' || g, ST_SetSRID(ST_MakePoint(13 + g / 100.0, 52 + g / 100.0), 4326) FROM generate_series(1, 300) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int REFERENCES products (id), store_id int REFERENCES stores (id), qty int);
INSERT INTO orders (product_id, store_id, qty) SELECT (g % 5000) + 1, (g % 300) + 1, g % 7 + 1 FROM generate_series(1, 20000) g;
CREATE VIEW store_sales AS SELECT s.name, sum(o.qty) AS items FROM stores s JOIN orders o ON o.store_id = s.id GROUP BY s.name;
CREATE FUNCTION catalog_version() RETURNS text LANGUAGE sql AS $$ SELECT 'v2' $$;
CREATE FUNCTION stores_near(lon float8, lat float8, km float8) RETURNS SETOF stores LANGUAGE sql STABLE
  AS $$ SELECT * FROM stores WHERE ST_DWithin(location::geography, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, km * 1000) $$;
SQL
note "v2: $(psql_src -c "SELECT count(*) FROM products") products, $(psql_src -c "SELECT count(*) FROM orders") orders, $(psql_src -c "SELECT count(*) FROM stores") stores"

say "A client keeps using the destination: a sign-up and two catalog reads every 100 ms"
psql_dst -c "SELECT pg_stat_statements_reset()" >/dev/null
CLIENT_LOG="$WORK/client.log"
(
  i=0
  while :; do
    i=$((i + 1))
    if psql -X -q -At "$DST" -c "INSERT INTO users (name, email) VALUES ('signup$i', 'signup$i@example.com')" \
                          -c "SELECT catalog_version(), count(*) FROM products" \
                          -c "SELECT * FROM products WHERE id = $(( i % 50 + 1 ))" >>"$CLIENT_LOG" 2>&1; then
      echo "ok" >>"$CLIENT_LOG.status"
    else
      echo "failed" >>"$CLIENT_LOG.status"
    fi
    sleep 0.1
  done
) &
CLIENT_PID=$!
sleep 1
note "client running (pid $CLIENT_PID)"

export PGSHIFT_STATE_DIR="$WORK/state"
if [ -n "$PRESERVED" ]; then
  say "pgshift prepare: restore v2 into shadow, keep '$PRESERVED' in sync"
  run prepare --source "$SRC" --dest "$DST" --preserved-tables "$PRESERVED"
  SWAP_ARGS=()
else
  say "pgshift prepare: restore v2 into shadow (DEMO_PRESERVED_TABLES is empty: no table preserved)"
  run prepare --source "$SRC" --dest "$DST"
  # The client's sign-ups since prepare would be lost: the swap refuses unless told.
  SWAP_ARGS=(--allow-discard users)
fi

say "pgshift swap --dry-run: what the swap will do to the running application"
note "(pg_stat_statements recorded the client's statements; each is checked against v2)"
printf '\033[2m$ pgshift swap --dest %s --dry-run %s\033[0m   (the impact report; the objects and the SQL left out here)\n' "$DST" "${SWAP_ARGS[*]+"${SWAP_ARGS[*]}"}"
"$PGSHIFT" swap --dest "$DST" --dry-run "${SWAP_ARGS[@]+"${SWAP_ARGS[@]}"}" |
  sed -n '/^Impact on the running application/,/^public -> /p' | sed '$d'
note "psql does not prepare statements, so this client is not hurt by the changed result type;"
note "an application using pgx, psycopg 3 or node-postgres would be (see README: What the swap does to a running application)"

say "pgshift swap: make v2 public in one short transaction"
run swap --dest "$DST" "${SWAP_ARGS[@]+"${SWAP_ARGS[@]}"}"
sleep 0.5
note "destination now: catalog $(psql_dst -c "SELECT catalog_version()"), $(psql_dst -c "SELECT count(*) FROM products") products, $(psql_dst -c "SELECT count(*) FROM users") users"
note "PostGIS through the default search_path: $(psql_dst -c "SELECT name || ' at ' || ST_AsText(location) FROM stores ORDER BY id LIMIT 1")"
note "stores within 5 km of (13.05, 52.05): $(psql_dst -c "SELECT count(*) FROM stores_near(13.05, 52.05, 5)")"

say "pgshift status"
run status --dest "$DST"

say "pgshift list"
run list --dest "$DST"
BACKUP_TS=$("$PGSHIFT" list --dest "$DST" --json | sed -n 's/^ *"timestamp": \([0-9]*\),*$/\1/p' | head -n 1)

say "pgshift verify --timestamp $BACKUP_TS"
run verify --dest "$DST" --timestamp "$BACKUP_TS"

say "pgshift rollback --latest --keep-tables users (v1 again, keeping everyone who signed up)"
signups_before=$(psql_dst -c "SELECT count(*) FROM users")
run rollback --dest "$DST" --latest --keep-tables users
sleep 0.5
note "destination now: catalog $(psql_dst -c "SELECT catalog_version()"), $(psql_dst -c "SELECT count(*) FROM products") products, $(psql_dst -c "SELECT count(*) FROM users") users (had $signups_before)"
note "PostGIS still resolves: $(psql_dst -c "SELECT name || ' at ' || ST_AsText(location) FROM stores ORDER BY id LIMIT 1")"

say "pgshift list (the replaced public is a backup too: a rollback can be rolled back)"
run list --dest "$DST"

say "pgshift status"
run status --dest "$DST"

kill "$CLIENT_PID" 2>/dev/null || true
wait "$CLIENT_PID" 2>/dev/null || true
CLIENT_PID=""
ok=$(grep -c '^ok$' "$CLIENT_LOG.status" || true)
failed=$(grep -c '^failed$' "$CLIENT_LOG.status" || true)
say "Client: $ok rounds succeeded, $failed failed during the whole demo"
if [ "$failed" -gt 0 ]; then
  note "client errors:"
  grep -i error "$CLIENT_LOG" | sort | uniq -c | head -n 5 | sed 's/^/   /'
fi
say "Done; the clusters are removed on exit"
