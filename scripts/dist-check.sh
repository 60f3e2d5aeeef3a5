#!/usr/bin/env bash
# `make dist-check`: prove a release archive from `make dist` works on this machine
# the way an operator will use it.
#
#   scripts/dist-check.sh [ARCHIVE]
#       default: dist/pgshift-<version>-<this arch>-unknown-linux-musl.tar.gz
#
# 1. the archive matches its .sha256 file; the binary has no dynamic dependencies;
# 2. `env -i pgshift --version` (nothing in the environment at all);
# 3. a password given in --dest is not in /proc/<pid>/cmdline while pgshift retries
#    a refused connection;
# 4. two throwaway clusters (scram-sha-256 over TCP), a sample database, and
#    `env -i pgshift start --source URL --dest URL`: no PATH, HOME, PG* or PGSHIFT_*
#    variable, only the two URLs on the command line; then the destination's tables
#    are compared with the source's.
#
# Needs the PostgreSQL server binaries (scripts/install-deps.sh) and, as root, the
# `postgres` OS user to run the clusters.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "dist-check: error: $*" >&2; exit 1; }
say() { echo "dist-check: $*" >&2; }

if [ $# -ge 1 ]; then
  archive=$1
else
  pkgid=$(cd "$ROOT" && "${CARGO:-cargo}" pkgid)
  archive="$ROOT/dist/pgshift-${pkgid##*[#@]}-$(uname -m)-unknown-linux-musl.tar.gz"
fi
[ -f "$archive" ] || die "$archive not found (run make dist first)"
archive=$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")

PGBIN=${PGBIN:-$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found (scripts/install-deps.sh, or set PGBIN)"
if [ "$(id -u)" -eq 0 ]; then
  id -u postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user for the clusters"
  as_server() { runuser -u postgres -- "$@"; }
else
  as_server() { "$@"; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgshift-dist-check.XXXXXX")
chmod 0755 "$WORK"
CLUSTERS=()
cleanup() {
  local d
  for d in "${CLUSTERS[@]+"${CLUSTERS[@]}"}"; do
    as_server "$PGBIN/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. checksum, unpack, static
(cd "$(dirname "$archive")" && sha256sum -c "$(basename "$archive").sha256" >/dev/null) ||
  die "$archive does not match its .sha256 file"
tar -xzf "$archive" -C "$WORK"
bin=$(echo "$WORK"/pgshift-*/pgshift)
[ -x "$bin" ] || die "no pgshift in $archive"
if readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)' || readelf -l "$bin" | grep -q 'program interpreter'; then
  die "$bin is not statically linked"
fi
command -v file >/dev/null && say "$(file -b "$bin")"

# 2. --version with nothing in the environment
version=$(env -i "$bin" --version)
case $version in "pgshift "*"(commit "*) say "$version" ;; *) die "unexpected --version output: $version" ;; esac

# 3. the password is out of /proc/<pid>/cmdline while pgshift waits
port=$(( 20000 + RANDOM % 20000 ))
env -i "$bin" list --connect-timeout 60s --dest "postgresql://app:Secr3tPassw0rd@127.0.0.1:$port/shop" \
  >/dev/null 2>&1 &
pid=$!
sleep 1
cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" || true)
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
case $cmdline in
  *Secr3tPassw0rd*) die "the password is visible in /proc/$pid/cmdline: $cmdline" ;;
  *"app:***@127.0.0.1"*) say "cmdline while connecting: $cmdline" ;;
  *) die "unexpected /proc/$pid/cmdline: $cmdline" ;;
esac

# 4. two clusters, a sample database, env -i start
start_cluster() { # NAME -> sets PORT (not in a subshell: CLUSTERS must survive for cleanup)
  local dir="$WORK/$1" p
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  as_server sh -c "umask 077; echo 'pw $1' > '$dir/pwfile'"
  as_server "$PGBIN/initdb" -D "$dir/data" -U admin --pwfile="$dir/pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
    die "initdb $1 failed: $(tail -n 5 "$dir/initdb.log")"
  for _ in 1 2 3 4 5; do
    p=$(( 20000 + RANDOM % 20000 ))
    if as_server "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$p -c unix_socket_directories='$dir' -c fsync=off" \
      start >/dev/null 2>&1; then
      CLUSTERS+=("$dir")
      PORT=$p
      return 0
    fi
  done
  die "cannot start the $1 cluster: $(tail -n 5 "$dir/server.log")"
}
q() { PGPASSWORD="pw $1" "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$2" -U admin -d "$3" -c "$4"; }

start_cluster src
src_port=$PORT
start_cluster dst
dst_port=$PORT
q src "$src_port" postgres "CREATE DATABASE shop" >/dev/null
q dst "$dst_port" postgres "CREATE DATABASE shop" >/dev/null
q src "$src_port" shop "
CREATE TABLE customers (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, created timestamptz DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, total numeric(10,2), note text);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 500;
INSERT INTO customers (email) SELECT 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO orders (customer_id, total, note) SELECT 1 + g % 2000, g % 1000, repeat('x', g % 50) FROM generate_series(1, 20000) g;" >/dev/null
q dst "$dst_port" shop "CREATE TABLE legacy (id int PRIMARY KEY); INSERT INTO legacy VALUES (1);" >/dev/null

enc() { printf '%s' "$1" | sed 's/ /%20/g'; }
src_url="postgresql://admin:$(enc 'pw src')@127.0.0.1:$src_port/shop"
dst_url="postgresql://admin:$(enc 'pw dst')@127.0.0.1:$dst_port/shop"
mkdir "$WORK/run"
say "env -i $bin start --source postgresql://admin:***@127.0.0.1:$src_port/shop --dest postgresql://admin:***@127.0.0.1:$dst_port/shop"
if ! (cd "$WORK/run" && env -i "$bin" start --source "$src_url" --dest "$dst_url" >"$WORK/start.out" 2>"$WORK/start.err"); then
  cat "$WORK/start.err" >&2
  die "env -i pgshift start failed"
fi
sed 's/^/  | /' "$WORK/start.out" >&2
grep -q 'pw src\|pw%20src\|pw dst\|pw%20dst' "$WORK/start.out" "$WORK/start.err" && die "a password is in pgshift's output"
signature="SELECT (SELECT count(*) FROM public.customers), (SELECT count(*) FROM public.orders),
  (SELECT sum(total) FROM public.orders), (SELECT count(*) FROM public.big_orders),
  (SELECT last_value FROM public.orders_id_seq)"
want=$(q src "$src_port" shop "$signature")
got=$(q dst "$dst_port" shop "$signature")
[ "$want" = "$got" ] || die "the destination differs from the source: $got (source: $want)"
backup=$(q dst "$dst_port" shop "SELECT count(*) FROM pg_tables WHERE schemaname LIKE 'backup\_%' AND tablename = 'legacy'")
[ "$backup" = 1 ] || die "the replaced public (table legacy) is not in a backup schema"
say "ok: the destination's public holds the source's data ($got); the old public is a backup"
