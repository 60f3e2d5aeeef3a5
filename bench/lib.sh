# Helpers for bench/run.sh: logging, throwaway clusters, psql, timing, statistics.
# Sourced, not run. Expects: WORK (scratch dir), PGBIN (PostgreSQL binaries).

say() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}

# Print the last lines of a log file to stderr (for failures).
show_tail() {
  local f=$1 n=${2:-30}
  if [ -s "$f" ]; then
    printf -- '--- last %s lines of %s ---\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
    printf -- '---\n' >&2
  fi
}

# Processes started in the background, ended by the cleanup trap.
BG_PIDS=()
forget_pid() {
  local keep=() p
  for p in "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do
    [ "$p" = "$1" ] || keep+=("$p")
  done
  BG_PIDS=("${keep[@]+"${keep[@]}"}")
}

# Send a signal to a process and all its descendants, deepest first.
kill_tree() {
  local pid=$1 sig=${2:-TERM} kids k
  kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
  for k in $kids; do
    kill_tree "$k" "$sig"
  done
  kill -"$sig" "$pid" 2>/dev/null || true
}

# Run a command with its output in a log file; on failure show the log and die.
# The command runs in the background and is waited for, so that a TERM or INT
# reaches the cleanup trap at once rather than after the command.
#   run_logged LOG DESCRIPTION cmd args...
run_logged() {
  local log=$1 what=$2
  shift 2
  local rc=0 pid
  "$@" >>"$log" 2>&1 </dev/null &
  pid=$!
  BG_PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  if [ "$rc" -ne 0 ]; then
    show_tail "$log" 40
    die "$what failed (exit $rc); full log: $log"
  fi
}

# Microseconds since the epoch (bash 5 EPOCHREALTIME, no fork).
now_us() {
  local t=$EPOCHREALTIME
  echo "${t/./}"
}

# Seconds between two now_us values, 2 decimals.
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e6 }'; }

# min / median / max of the numbers on stdin (one per line).
stat_min() { sort -g | head -n 1; }
stat_max() { sort -g | tail -n 1; }
stat_median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print ""; exit }
    if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# a / b with 2 decimals ("n/a" when b is empty or 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || b + 0 == 0 || a == "") print "n/a"; else printf "%.2f", a / b }'; }

# ---------------------------------------------------------------- clusters
# The servers run as the unprivileged `postgres` OS user when we are root (initdb
# and postgres refuse to run as root), as the current user otherwise.

as_server() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A TCP port on 127.0.0.1 nobody listens on right now.
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free TCP port found on 127.0.0.1"
}

STARTED_CLUSTERS=()

# init_cluster NAME [EXTRA_CONF] -> sets <NAME>_PORT and <NAME>_DIR; the cluster runs
# on 127.0.0.1. EXTRA_CONF: more postgresql.conf lines (e.g. shared_preload_libraries).
init_cluster() {
  local name=$1 dir="$WORK/$1" extra=${2:-}
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  as_server mkdir -p "$dir/sock"
  run_logged "$WORK/$name-initdb.log" "initdb of the $name cluster" \
    as_server "$PGBIN/initdb" -D "$dir/data" -U bench --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync
  as_server sh -c "echo \"include 'bench.conf'\" >> '$dir/data/postgresql.conf'"
  local port attempt rc
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$(free_port)
    as_server sh -c "cat > '$dir/data/bench.conf'" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
max_connections = 100
shared_buffers = 256MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
fsync = $BENCH_FSYNC
autovacuum = off
logging_collector = off
log_min_messages = warning
log_line_prefix = '%m [%p] %q%a '
lc_messages = 'C'
$extra
EOF
    rc=0
    as_server "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 120 start >"$WORK/$name-start.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
      STARTED_CLUSTERS+=("$dir")
      printf -v "${name}_PORT" '%s' "$port"
      printf -v "${name}_DIR" '%s' "$dir"
      return 0
    fi
    if ! grep -qE 'could not bind|Address already in use' "$dir/server.log" 2>/dev/null; then
      show_tail "$WORK/$name-start.log"
      show_tail "$dir/server.log"
      die "cannot start the $name cluster"
    fi
  done
  die "cannot start the $name cluster: no free port after 8 attempts"
}

stop_clusters() {
  local dir
  for dir in "${STARTED_CLUSTERS[@]+"${STARTED_CLUSTERS[@]}"}"; do
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_server "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
        as_server "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
  done
  STARTED_CLUSTERS=()
}

# url PORT DB
url() { printf 'postgresql://bench@127.0.0.1:%s/%s' "$1" "$2"; }

# q PORT DB SQL: one value/row set, unaligned, no headers, stop on error.
q() {
  "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U bench -d "$2" -c "$3"
}

# psql_file PORT DB FILE [psql -v args...]
psql_file() {
  local port=$1 db=$2 file=$3
  shift 3
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U bench -d "$db" "$@" -f "$file"
}

recreate_db() {
  local port=$1 db=$2
  q "$port" postgres "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  q "$port" postgres "CREATE DATABASE \"$db\"" >/dev/null
}

drop_db() { q "$1" postgres "DROP DATABASE IF EXISTS \"$2\" WITH (FORCE)" >/dev/null; }

# Flush what earlier runs left dirty, so the next timed run does not pay for it.
settle() {
  local port
  for port in "$@"; do
    q "$port" postgres "CHECKPOINT" >/dev/null
  done
  sync
}

# ---------------------------------------------------------------- content checks

# One line describing the user objects of SCHEMA in DB (extension members
# excluded): tables, indexes, constraints, sequences, total rows.
content_signature() {
  echo "$(catalog_signature "$@") rows=$(row_total "$@")"
}

# How many of SCHEMA's tables (extension members excluded) were ANALYZEd.
analyzed_tables() {
  local port=$1 db=$2 schema=$3
  q "$port" "$db" "SELECT count(*) FROM pg_stat_user_tables s WHERE s.schemaname = '$schema'
                     AND (s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL)
                     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                      AND d.objid = s.relid AND d.deptype = 'e')"
}

# Tables, indexes, constraints and sequences of SCHEMA, from the catalog.
catalog_signature() {
  local port=$1 db=$2 schema=$3
  q "$port" "$db" "
WITH t AS (
  SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = '$schema' AND c.relkind IN ('r', 'p')
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e'))
SELECT format('tables=%s indexes=%s constraints=%s sequences=%s',
  (SELECT count(*) FROM t),
  (SELECT count(*) FROM pg_index i WHERE i.indrelid IN (SELECT oid FROM t)),
  (SELECT count(*) FROM pg_constraint con WHERE con.conrelid IN (SELECT oid FROM t)
     AND con.contype IN ('p', 'u', 'f', 'c', 'x')),
  (SELECT count(*) FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
    WHERE n.nspname = '$schema' AND s.relkind = 'S'))"
}

# The exact row count of every table of SCHEMA (extension members excluded), summed;
# one query (and transaction) per table: counting thousands of tables in one
# transaction would need a lock per table at once.
row_total() {
  local port=$1 db=$2 schema=$3
  "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U bench -d "$db" <<EOSQL | awk '{ s += $1 } END { print s + 0 }'
SELECT format('SELECT count(*) FROM ONLY %I.%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = '$schema' AND c.relkind = 'r'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
\gexec
EOSQL
}
