#!/usr/bin/env bash
# pgshift benchmarks (`make bench`): prepare against pg_dump|pg_restore and pgcopydb,
# the swap's lock time under pgbench load, pgshift's peak memory at two data sizes,
# the time of the impact report (`swap --dry-run`) with recorded statements.
# Writes BENCHMARKS.md (and prints it).
#
#   bench/run.sh PATH/TO/pgshift
#
# Knobs (environment):
#   BENCH_SIZE_MB        dataset size, about (default 500)
#   BENCH_REPEAT         timed runs per tool; the best and the median are reported (default 3)
#   BENCH_JOBS           parallel jobs for every tool (default: CPUs)
#   BENCH_SMALL_SIZE_MB  the second dataset size for the memory check (default BENCH_SIZE_MB/4)
#   BENCH_SWAP_TABLES    table counts for the swap benchmark (default "10 100 1000 4000"); each
#                        count N also has a table partitioned into N/20 partitions
#   BENCH_SWAP_MODES     swap modes measured at each count (default "rename object")
#   BENCH_SWAP_SCALE     pgbench scale of the swap benchmark's databases (default 10, less when small)
#   BENCH_SWAP_SECONDS   pgbench duration per swap run (default 20); the swap starts at BENCH_SWAP_AT (8)
#   BENCH_SWAP_CLIENTS   pgbench clients (default 4); BENCH_SWAP_RATE: tps limit (default none)
#   BENCH_SWAP_IDLE      also time a swap with no load, as a reference (default 1; 0 to skip)
#   BENCH_FSYNC          fsync setting of both clusters (default on)
#   BENCH_TMPDIR         where clusters, dumps and logs go (default $TMPDIR, else /var/tmp)
#   BENCH_MANY_TABLES    tables of the many-tables dataset (default 4000), plus a table
#   BENCH_MANY_PARTITIONS   partitioned into this many partitions (default 200)
#   BENCH_MANY_REPEAT    timed runs per tool on it (default BENCH_REPEAT; each takes minutes)
#   BENCH_PRESERVED_TABLES  tables of the preserved-tables swap benchmark (default 1000)
#   BENCH_PRESERVED_COUNTS  how many of them are preserved, one swap each (default "0 100 200 400 500")
#   BENCH_IMPACT_TABLES  tables of the impact-report benchmark (default 1000)
#   BENCH_IMPACT_STATEMENTS  statements it records with pg_stat_statements (default 1000, at most 4 per table)
#   BENCH_ONLY           subset of "prepare rss swap preserved many impact" (default all six)
#   BENCH_OUT            report file (default BENCHMARKS.md at the repository root)
#   BENCH_KEEP_WORK=1    keep the scratch directory (logs) after the run
#   BENCH_BIN_STATIC     another pgshift binary (e.g. the static one from `make dist`) whose
#                        prepare runs in the same rounds, reported next to the first one's
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ $# -eq 1 ] || die "usage: bench/run.sh PATH/TO/pgshift"
[ -x "$1" ] || die "pgshift binary not found or not executable: $1 (build it with: cargo build --release)"
PGSHIFT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
PGSHIFT_STATIC=""
if [ -n "${BENCH_BIN_STATIC:-}" ]; then
  [ -x "$BENCH_BIN_STATIC" ] || die "BENCH_BIN_STATIC: not an executable file: $BENCH_BIN_STATIC"
  PGSHIFT_STATIC=$(cd "$(dirname "$BENCH_BIN_STATIC")" && pwd)/$(basename "$BENCH_BIN_STATIC")
fi

DEFAULT_SIZE_MB=500
BENCH_SIZE_MB=${BENCH_SIZE_MB:-$DEFAULT_SIZE_MB}
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_JOBS=${BENCH_JOBS:-$(nproc)}
BENCH_SMALL_SIZE_MB=${BENCH_SMALL_SIZE_MB:-$((BENCH_SIZE_MB / 4))}
BENCH_SWAP_TABLES=${BENCH_SWAP_TABLES:-10 100 1000 4000}
BENCH_SWAP_MODES=${BENCH_SWAP_MODES:-rename object}
BENCH_SWAP_SECONDS=${BENCH_SWAP_SECONDS:-20}
BENCH_SWAP_AT=${BENCH_SWAP_AT:-8}
BENCH_SWAP_CLIENTS=${BENCH_SWAP_CLIENTS:-4}
BENCH_SWAP_RATE=${BENCH_SWAP_RATE:-}
BENCH_SWAP_IDLE=${BENCH_SWAP_IDLE:-1}
BENCH_FSYNC=${BENCH_FSYNC:-on}
BENCH_MANY_TABLES=${BENCH_MANY_TABLES:-4000}
BENCH_MANY_PARTITIONS=${BENCH_MANY_PARTITIONS:-200}
BENCH_MANY_REPEAT=${BENCH_MANY_REPEAT:-$BENCH_REPEAT}
BENCH_PRESERVED_TABLES=${BENCH_PRESERVED_TABLES:-1000}
BENCH_PRESERVED_COUNTS=${BENCH_PRESERVED_COUNTS:-0 100 200 400 500}
BENCH_IMPACT_TABLES=${BENCH_IMPACT_TABLES:-1000}
BENCH_IMPACT_STATEMENTS=${BENCH_IMPACT_STATEMENTS:-1000}
BENCH_ONLY=${BENCH_ONLY:-prepare rss swap preserved many impact}
BENCH_OUT=${BENCH_OUT:-$ROOT/BENCHMARKS.md}
is_int() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }
for v in BENCH_SIZE_MB BENCH_REPEAT BENCH_JOBS BENCH_SMALL_SIZE_MB BENCH_SWAP_SECONDS BENCH_SWAP_AT BENCH_SWAP_CLIENTS \
  BENCH_MANY_TABLES BENCH_MANY_PARTITIONS BENCH_MANY_REPEAT BENCH_PRESERVED_TABLES BENCH_IMPACT_TABLES BENCH_IMPACT_STATEMENTS; do
  is_int "${!v}" || die "$v must be a positive integer, not '${!v}'"
done
for m in $BENCH_SWAP_MODES; do
  case $m in rename | object) ;; *) die "BENCH_SWAP_MODES: unknown mode '$m' (use rename, object)" ;; esac
done
for n in $BENCH_SWAP_TABLES; do
  is_int "$n" && [ "$n" -ge 10 ] || die "BENCH_SWAP_TABLES: each count must be an integer >= 10, not '$n'"
done
[ -z "$BENCH_SWAP_RATE" ] || is_int "$BENCH_SWAP_RATE" || die "BENCH_SWAP_RATE must be a positive integer"
[ "$BENCH_SWAP_AT" -lt "$BENCH_SWAP_SECONDS" ] || die "BENCH_SWAP_AT must be less than BENCH_SWAP_SECONDS"
case $BENCH_FSYNC in on | off) ;; *) die "BENCH_FSYNC must be on or off" ;; esac
case $BENCH_SWAP_IDLE in 0 | 1) ;; *) die "BENCH_SWAP_IDLE must be 0 or 1" ;; esac
want() { [[ " $BENCH_ONLY " == *" $1 "* ]]; }
for part in $BENCH_ONLY; do
  case $part in prepare | rss | swap | preserved | many | impact) ;; *) die "BENCH_ONLY: unknown part '$part' (use prepare, rss, swap, preserved, many, impact)" ;; esac
done
[ "$BENCH_PRESERVED_TABLES" -ge 10 ] && [ "$BENCH_PRESERVED_TABLES" -le 9999 ] || die "BENCH_PRESERVED_TABLES must be between 10 and 9999"
for p in $BENCH_PRESERVED_COUNTS; do
  [[ $p =~ ^[0-9]+$ ]] && [ "$p" -le "$BENCH_PRESERVED_TABLES" ] ||
    die "BENCH_PRESERVED_COUNTS: each count must be an integer from 0 to BENCH_PRESERVED_TABLES, not '$p'"
done
[ "$BENCH_IMPACT_TABLES" -ge 10 ] && [ "$BENCH_IMPACT_TABLES" -le 9999 ] || die "BENCH_IMPACT_TABLES must be between 10 and 9999"
[ "$BENCH_IMPACT_STATEMENTS" -le $((4 * BENCH_IMPACT_TABLES)) ] ||
  die "BENCH_IMPACT_STATEMENTS must be at most 4 × BENCH_IMPACT_TABLES (four statement shapes per table)"

# Size knobs: everything scales with the dataset size; the 300 small tables do not.
SCALE_F=$(awk -v s="$BENCH_SIZE_MB" -v d="$DEFAULT_SIZE_MB" 'BEGIN { printf "%.4f", s / d }')
if [ -z "${BENCH_SWAP_SCALE:-}" ]; then
  BENCH_SWAP_SCALE=$(awk -v f="$SCALE_F" 'BEGIN { s = int(10 * f + 0.5); if (s < 4) s = 4; if (s > 10) s = 10; print s }')
fi
is_int "$BENCH_SWAP_SCALE" || die "BENCH_SWAP_SCALE must be a positive integer"

# ---------------------------------------------------------------- tools
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
  PGOPTIONS PGSSLMODE PGAPPNAME PGCONNECT_TIMEOUT PGTARGETSESSIONATTRS
while IFS='=' read -r name _; do
  case $name in PGSHIFT_*) unset "$name" ;; esac
done < <(env)
if [ -z "${PGBIN:-}" ]; then
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    PGBIN=$(pg_config --bindir)
  else
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
fi
[ -n "$PGBIN" ] || die "PostgreSQL server binaries not found; run scripts/install-deps.sh --bench or set PGBIN"
for t in initdb pg_ctl postgres psql pg_dump pg_restore pgbench vacuumdb; do
  [ -x "$PGBIN/$t" ] || die "$t not found in $PGBIN; run scripts/install-deps.sh --bench (or set PGBIN)"
done
export PATH="$PGBIN:$PATH" PGSHIFT_PG_BINDIR="$PGBIN"
want prepare && { command -v pgcopydb >/dev/null 2>&1 || die "pgcopydb not found; run scripts/install-deps.sh --bench (Debian package pgcopydb)"; }
[ -x /usr/bin/time ] && /usr/bin/time --version 2>&1 | grep -q GNU ||
  die "GNU time (/usr/bin/time) not found; run scripts/install-deps.sh --bench (Debian package time)"
command -v jq >/dev/null 2>&1 || die "jq not found; run scripts/install-deps.sh --bench (Debian package jq)"
if [ "$(id -u)" -eq 0 ]; then
  id -u postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user to run the servers (scripts/install-deps.sh creates it)"
  command -v runuser >/dev/null 2>&1 || die "runuser not found (package util-linux)"
fi

# ---------------------------------------------------------------- scratch dir and cleanup
TMP_ROOT=${BENCH_TMPDIR:-${TMPDIR:-/var/tmp}}
[ -d "$TMP_ROOT" ] && [ -w "$TMP_ROOT" ] || die "BENCH_TMPDIR $TMP_ROOT is not a writable directory"
# Source (two datasets), destination, a dump, and WAL up to max_wal_size on each cluster.
need_mb=$((BENCH_SIZE_MB * 6 + 8192))
free_mb=$(df -Pm "$TMP_ROOT" | awk 'NR == 2 { print $4 }')
[ "$free_mb" -ge "$need_mb" ] || die "$TMP_ROOT has $free_mb MB free; the benchmark needs about $need_mb MB (set BENCH_TMPDIR)"
WORK=$(mktemp -d "$TMP_ROOT/pgshift-bench.XXXXXX")
chmod 0755 "$WORK"

CLEANED=0
cleanup() {
  [ "$CLEANED" -eq 1 ] && return
  CLEANED=1
  # A second INT/TERM (Ctrl-C twice, or a child signalling its process group)
  # must not cut the cleanup short.
  trap '' INT TERM
  local pid
  for pid in "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do
    kill_tree "$pid" TERM
  done
  for pid in "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do
    wait "$pid" 2>/dev/null || true
  done
  stop_clusters
  if [ "${BENCH_KEEP_WORK:-0}" = 1 ]; then
    say "scratch directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'say "interrupted; cleaning up"; cleanup; exit 130' INT
trap 'say "terminated; cleaning up"; cleanup; exit 143' TERM

[ "$BENCH_JOBS" -le "$(nproc)" ] ||
  say "WARNING: BENCH_JOBS=$BENCH_JOBS is more than the $(nproc) CPUs; pgshift caps its jobs at the CPU count, the other tools do not"
say "scratch directory $WORK (size ${BENCH_SIZE_MB} MB, ${BENCH_REPEAT} runs per tool, ${BENCH_JOBS} jobs)"
init_cluster SRC
init_cluster DST
say "source cluster on port $SRC_PORT, destination cluster on port $DST_PORT (fsync=$BENCH_FSYNC)"
[ "$(q "$SRC_PORT" postgres "SELECT count(*) FROM pg_available_extensions WHERE name = 'postgis'")" = 1 ] ||
  die "PostGIS is not installed for $PGBIN; run scripts/install-deps.sh --bench"

# ---------------------------------------------------------------- dataset
# build_dataset DB SIZE_MB: pgbench tables, places (PostGIS), documents, 300 small tables.
build_dataset() {
  local db=$1 size=$2 f scale geo docs
  f=$(awk -v s="$size" -v d="$DEFAULT_SIZE_MB" 'BEGIN { printf "%.4f", s / d }')
  scale=$(awk -v f="$f" 'BEGIN { s = int(10 * f + 0.5); print (s < 1 ? 1 : s) }')
  geo=$(awk -v f="$f" 'BEGIN { n = int(1000000 * f + 0.5); print (n < 10000 ? 10000 : n) }')
  docs=$(awk -v f="$f" 'BEGIN { n = int(130000 * f + 0.5); print (n < 2000 ? 2000 : n) }')
  say "building dataset $db (~${size} MB): pgbench scale $scale, $geo places, $docs documents, 300 small tables"
  recreate_db "$SRC_PORT" "$db"
  run_logged "$WORK/dataset-$db.log" "pgbench -i on $db" \
    "$PGBIN/pgbench" -i -q -s "$scale" -I dtGvpf -h 127.0.0.1 -p "$SRC_PORT" -U bench "$db"
  run_logged "$WORK/dataset-$db.log" "building the dataset $db" \
    psql_file "$SRC_PORT" "$db" "$HERE/dataset.sql" -v geo_rows="$geo" -v doc_rows="$docs" -v small_tables=300
  eval "DS_${db}_SCALE=$scale DS_${db}_GEO=$geo DS_${db}_DOCS=$docs"
}

db_size_mb() { q "$1" "$2" "SELECT round(pg_database_size(current_database()) / 1048576.0)"; }

# Rows and sizes of the big tables, as Markdown table rows.
describe_dataset() {
  local db=$1
  q "$SRC_PORT" "$db" "
SELECT format('| %s | %s | %s MB | %s MB | %s |', c.relname, to_char(c.reltuples::bigint, 'FM999,999,999,999'),
              round(pg_table_size(c.oid) / 1048576.0, 1), round(pg_indexes_size(c.oid) / 1048576.0, 1),
              (SELECT string_agg(am.amname, ', ' ORDER BY am.amname) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_am am ON am.oid = ic.relam WHERE i.indrelid = c.oid))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE 'small\_%' AND c.relname <> 'spatial_ref_sys'
 ORDER BY pg_total_relation_size(c.oid) DESC"
  q "$SRC_PORT" "$db" "
SELECT format('| small_0001 … small_%s | %s (5 each) | %s MB | %s MB | btree |', lpad(count(*)::text, 4, '0'),
              sum(c.reltuples::bigint), round(sum(pg_table_size(c.oid)) / 1048576.0, 1), round(sum(pg_indexes_size(c.oid)) / 1048576.0, 1))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname LIKE 'small\_%'"
}

if want prepare || want rss; then
  build_dataset bench_main "$BENCH_SIZE_MB"
  MAIN_DB_MB=$(db_size_mb "$SRC_PORT" bench_main)
  MAIN_SIG=$(content_signature "$SRC_PORT" bench_main public)
  say "bench_main: $MAIN_DB_MB MB; $MAIN_SIG"
fi

# ---------------------------------------------------------------- tool runs
SRC_MAIN=$(url "$SRC_PORT" bench_main)

# pgshift prepare SRC_DB into a fresh destination DST_DB; sets RUN_SECS, RUN_RSS_KB
# (max RSS of pgshift and its children, GNU time), RUN_HWM_KB (pgshift's own peak, VmHWM).
# With a 4th argument `keep`, the destination database is used as it is; a 5th names
# another pgshift binary (default: the one under test). PREPARE_ARGS (an array, empty
# unless set) adds arguments to prepare.
PREPARE_ARGS=()
run_pgshift() {
  local label=$1 src_db=$2 dst_db=$3 dir="$WORK/$1" bin=${5:-$PGSHIFT}
  mkdir -p "$dir"
  [ "${4:-}" = keep ] || recreate_db "$DST_PORT" "$dst_db"
  settle "$SRC_PORT" "$DST_PORT"
  local t0 t1 pid rc=0
  t0=$(now_us)
  (cd "$dir" && exec /usr/bin/time -f '%M' -o "$dir/time.txt" "$bin" prepare \
    --source "$(url "$SRC_PORT" "$src_db")" --dest "$(url "$DST_PORT" "$dst_db")" \
    --jobs "$BENCH_JOBS" --json --state-dir "$dir" --dump-dir "$dir/dump" "${PREPARE_ARGS[@]+"${PREPARE_ARGS[@]}"}" \
    >"$dir/out.json" 2>"$dir/log.txt") &
  pid=$!
  BG_PIDS+=("$pid")
  sample_hwm "$pid" "$dir/hwm.txt"
  wait "$pid" || rc=$?
  t1=$(now_us)
  forget_pid "$pid"
  if [ "$rc" -ne 0 ]; then
    show_tail "$dir/log.txt" 40
    die "pgshift prepare ($label) failed (exit $rc)"
  fi
  RUN_SECS=$(secs_between "$t0" "$t1")
  RUN_RSS_KB=$(tail -n 1 "$dir/time.txt")
  RUN_HWM_KB=$(cat "$dir/hwm.txt" 2>/dev/null || echo 0)
}

# Poll pgshift's VmHWM (peak resident set) while it runs. PARENT is /usr/bin/time;
# pgshift is its only child. The last sample is at most 0.1 s old when it exits.
sample_hwm() {
  local parent=$1 out=$2 child="" k v rest
  echo 0 >"$out"
  while kill -0 "$parent" 2>/dev/null; do
    if [ -z "$child" ]; then
      # (the file has no final newline: read fills child and returns 1)
      read -r child _ <"/proc/$parent/task/$parent/children" 2>/dev/null || true
    fi
    if [ -n "$child" ] && [ -r "/proc/$child/status" ]; then
      while read -r k v rest; do
        [ "$k" = "VmHWM:" ] && echo "$v" >"$out"
      done <"/proc/$child/status" 2>/dev/null || true
    fi
    sleep 0.1
  done
}

run_dump_restore() {
  local dst_db=$1 src_url=${2:-$SRC_MAIN} dir="$WORK/dumprestore"
  rm -rf "$dir"
  mkdir -p "$dir"
  recreate_db "$DST_PORT" "$dst_db"
  settle "$SRC_PORT" "$DST_PORT"
  local t0 t1 t2 t3
  t0=$(now_us)
  run_logged "$dir/log.txt" "pg_dump -Fd -j $BENCH_JOBS" \
    "$PGBIN/pg_dump" -Fd -j "$BENCH_JOBS" -f "$dir/dump" "$src_url"
  t1=$(now_us)
  run_logged "$dir/log.txt" "pg_restore -j $BENCH_JOBS" \
    "$PGBIN/pg_restore" -j "$BENCH_JOBS" -d "$(url "$DST_PORT" "$dst_db")" "$dir/dump"
  t2=$(now_us)
  RUN_SECS=$(secs_between "$t0" "$t2")
  RUN_DUMP_SECS=$(secs_between "$t0" "$t1")
  RUN_RESTORE_SECS=$(secs_between "$t1" "$t2")
  RUN_DUMP_MB=$(du -sm "$dir/dump" | awk '{ print $1 }')
}

# Not part of the timed baseline: what ANALYZE adds after pg_restore (which does not analyze).
analyze_after_restore() {
  local dst_db=$1 t0 t1
  t0=$(now_us)
  run_logged "$WORK/dumprestore/log.txt" "vacuumdb --analyze-only" \
    "$PGBIN/vacuumdb" --analyze-only -q -j "$BENCH_JOBS" -d "$(url "$DST_PORT" "$dst_db")"
  t1=$(now_us)
  RUN_ANALYZE_SECS=$(secs_between "$t0" "$t1")
}

run_pgcopydb() {
  local dst_db=$1 dir="$WORK/pgcopydb"
  rm -rf "$dir"
  mkdir -p "$dir"
  recreate_db "$DST_PORT" "$dst_db"
  settle "$SRC_PORT" "$DST_PORT"
  local t0 t1
  t0=$(now_us)
  # In its own session: on a signal pgcopydb signals its whole process group.
  run_logged "$dir/log.txt" "pgcopydb clone" \
    setsid --wait pgcopydb clone --source "$SRC_MAIN" --target "$(url "$DST_PORT" "$dst_db")" \
    --table-jobs "$BENCH_JOBS" --index-jobs "$BENCH_JOBS" --dir "$dir/work"
  t1=$(now_us)
  RUN_SECS=$(secs_between "$t0" "$t1")
}

# After a run (not timed): does the destination hold what the source holds?
check_content() {
  local tool=$1 db=$2 schema=$3 sig analyzed
  sig=$(content_signature "$DST_PORT" "$db" "$schema")
  analyzed=$(analyzed_tables "$DST_PORT" "$db" "$schema")
  if [ "$sig" = "$MAIN_SIG" ]; then
    echo "$tool ok analyzed=$analyzed" >>"$WORK/content.txt"
  else
    say "WARNING: $tool's result differs from the source: $sig (source: $MAIN_SIG)"
    echo "$tool MISMATCH $sig analyzed=$analyzed" >>"$WORK/content.txt"
  fi
}

TOOLS=(pgshift dumprestore pgcopydb)
[ -z "$PGSHIFT_STATIC" ] || TOOLS+=(pgshift_static)
: >"$WORK/prepare.tsv"
: >"$WORK/content.txt"
if want prepare; then
  for round in $(seq 1 "$BENCH_REPEAT"); do
    # Rotate the order every round: A B C, B C A, C A B, ...
    for i in "${!TOOLS[@]}"; do
      tool=${TOOLS[$(((i + round - 1) % ${#TOOLS[@]}))]}
      say "round $round/$BENCH_REPEAT: $tool"
      case $tool in
        pgshift)
          run_pgshift "pgshift-$round" bench_main bench_dst
          jq -c '.phases_ms' "$WORK/pgshift-$round/out.json" >"$WORK/pgshift-$round/phases.json"
          printf '%s\t%s\t%s\t%s\t%s\n' pgshift "$round" "$RUN_SECS" "$RUN_RSS_KB" "$RUN_HWM_KB" >>"$WORK/prepare.tsv"
          if [ "$round" -eq 1 ]; then check_content pgshift bench_dst shadow; fi
          ;;
        pgshift_static)
          run_pgshift "pgshift_static-$round" bench_main bench_dst "" "$PGSHIFT_STATIC"
          printf '%s\t%s\t%s\t%s\t%s\n' pgshift_static "$round" "$RUN_SECS" "$RUN_RSS_KB" "$RUN_HWM_KB" >>"$WORK/prepare.tsv"
          if [ "$round" -eq 1 ]; then check_content pgshift_static bench_dst shadow; fi
          ;;
        dumprestore)
          run_dump_restore bench_dst
          if [ "$round" -eq 1 ]; then check_content dumprestore bench_dst public; fi
          analyze_after_restore bench_dst
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' dumprestore "$round" "$RUN_SECS" "$RUN_DUMP_SECS" "$RUN_RESTORE_SECS" "$RUN_ANALYZE_SECS" "$RUN_DUMP_MB" >>"$WORK/prepare.tsv"
          ;;
        pgcopydb)
          run_pgcopydb bench_dst
          printf '%s\t%s\t%s\n' pgcopydb "$round" "$RUN_SECS" >>"$WORK/prepare.tsv"
          if [ "$round" -eq 1 ]; then check_content pgcopydb bench_dst public; fi
          ;;
      esac
      say "  $tool: $RUN_SECS s"
      drop_db "$DST_PORT" bench_dst
    done
  done
fi

# ---------------------------------------------------------------- memory at two sizes
if want rss; then
  if ! want prepare; then
    say "memory at ${BENCH_SIZE_MB} MB: pgshift prepare"
    run_pgshift rss-main bench_main bench_dst
    printf '%s\t%s\t%s\t%s\t%s\n' pgshift rss "$RUN_SECS" "$RUN_RSS_KB" "$RUN_HWM_KB" >>"$WORK/prepare.tsv"
    drop_db "$DST_PORT" bench_dst
  fi
  build_dataset bench_small "$BENCH_SMALL_SIZE_MB"
  SMALL_DB_MB=$(db_size_mb "$SRC_PORT" bench_small)
  say "memory at ${BENCH_SMALL_SIZE_MB} MB: pgshift prepare"
  run_pgshift rss-small bench_small bench_dst
  SMALL_SECS=$RUN_SECS SMALL_RSS_KB=$RUN_RSS_KB SMALL_HWM_KB=$RUN_HWM_KB
  drop_db "$DST_PORT" bench_dst
  drop_db "$SRC_PORT" bench_small
fi

# ---------------------------------------------------------------- swap under pgbench load
# Per-transaction pgbench logs (-l): client tx latency_us script epoch_s epoch_us [lag].
# Prints: worst latency (ms) of transactions overlapping [from, to] (epoch µs), p99
# latency (ms) of the whole run, worst latency outside the window, failed transactions
# in the logs, transactions in the window.
latency_stats() {
  local from=$1 to=$2 lat="$WORK/latencies.txt" p99
  shift 2
  : >"$lat"
  cat "$@" | awk -v from="$from" -v to="$to" -v lat="$lat" '
    $3 ~ /^[0-9]+$/ {
      end = $5 * 1000000 + $6; start = end - $3
      print $3 > lat
      if (end >= from && start <= to) { if ($3 > win) win = $3; nwin++ }
      else if ($3 > out) out = $3
      next
    }
    { failed++ }
    END { printf "%.1f %.1f %d %d\n", win / 1000, out / 1000, failed, nwin }' >"$WORK/latency_summary.txt"
  p99=$(sort -n "$lat" | awk '{ v[NR] = $1 } END { p = int(NR * 0.99); if (p < 1) p = 1; printf "%.1f", v[p] / 1000 }')
  read -r win out failed nwin <"$WORK/latency_summary.txt"
  echo "$win $p99 $out $failed $nwin"
}

# pgshift swap on the destination database DB in MODE, with the state dir of its
# prepare; writes DIR/swap.json and DIR/swap.log. A swap refused because its
# transaction would not fit the lock table sets SWAP_REFUSED (the refusal) and
# aborts the prepared migration; any other failure ends the benchmark. pgbench keeps
# writing tables that are not preserved: those writes are discarded on purpose
# (--allow-discard all).
pgshift_swap() {
  local dir=$1 db=$2 mode=$3 rc=0
  SWAP_REFUSED=""
  (cd "$dir" && "$PGSHIFT" swap --dest "$(url "$DST_PORT" "$db")" --json --state-dir "$dir" --swap-mode "$mode" --allow-discard all \
    >"$dir/swap.json" 2>"$dir/swap.log") || rc=$?
  if [ "$rc" -ne 0 ] && grep -q 'lock-table slots' "$dir/swap.log"; then
    SWAP_REFUSED=$(grep '^error: ' "$dir/swap.log" | head -n 1)
    "$PGSHIFT" abort --dest "$(url "$DST_PORT" "$db")" --state-dir "$dir" >"$dir/abort.log" 2>&1 ||
      die "pgshift abort after a refused swap ($dir) failed"
    return 0
  fi
  if [ "$rc" -ne 0 ]; then
    show_tail "$dir/swap.log"
    die "pgshift swap ($dir) failed (exit $rc)"
  fi
}

# needed/capacity lock-table slots from a refusal line
refusal_slots() { sed -E 's/.*needs about ([0-9]+) lock-table slots.*holds ([0-9]+) .*/\1 of \2/' <<<"$1"; }

PGBENCH_THREADS=$((BENCH_SWAP_CLIENTS < 2 ? BENCH_SWAP_CLIENTS : 2))

# swap_under_load DIR DB MODE [pgbench args...]: pgbench on the destination database DB
# (tpcb-like, weight 9, and the read script, weight 1, plus the arguments given) for
# BENCH_SWAP_SECONDS, and `pgshift swap` in MODE BENCH_SWAP_AT seconds into it, with the
# state dir DIR/prepare (pgbench's logs and output in DIR). Sets SWAP_REFUSED (see
# pgshift_swap) and, when the swap went through: LOCK_MS, ATTEMPTS, MOVED, SWAP_WALL_MS,
# WORST, P99, OUTSIDE, NWIN (see latency_stats), PROCESSED, FAILED, TPS, ABORTED, PGB_RC.
swap_under_load() {
  local dir=$1 db=$2 mode=$3 pgb s0 s1 failed_log rate_args=()
  shift 3
  [ -n "$BENCH_SWAP_RATE" ] && rate_args=(-R "$BENCH_SWAP_RATE")
  "$PGBIN/pgbench" -n -M prepared -c "$BENCH_SWAP_CLIENTS" -j "$PGBENCH_THREADS" -T "$BENCH_SWAP_SECONDS" \
    "${rate_args[@]+"${rate_args[@]}"}" -l --log-prefix="$dir/pgbench_log" --failures-detailed \
    -b tpcb-like@9 -f "$HERE/swap_read.pgbench@1" "$@" \
    -h 127.0.0.1 -p "$DST_PORT" -U bench "$db" >"$dir/pgbench.out" 2>"$dir/pgbench.err" &
  pgb=$!
  BG_PIDS+=("$pgb")
  sleep "$BENCH_SWAP_AT"
  kill -0 "$pgb" 2>/dev/null || {
    show_tail "$dir/pgbench.err"
    die "pgbench ended before the swap"
  }
  s0=$(now_us)
  pgshift_swap "$dir/prepare" "$db" "$mode"
  s1=$(now_us)
  PGB_RC=0
  wait "$pgb" || PGB_RC=$?
  forget_pid "$pgb"
  [ -z "$SWAP_REFUSED" ] || return 0
  LOCK_MS=$(jq -r '.lock_held_ms' "$dir/prepare/swap.json")
  ATTEMPTS=$(jq -r '.attempts' "$dir/prepare/swap.json")
  MOVED=$(jq -r '.moved_in' "$dir/prepare/swap.json")
  SWAP_WALL_MS=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%d", (b - a) / 1000 }')
  read -r WORST P99 OUTSIDE failed_log NWIN < <(latency_stats $((s0 - 1000000)) $((s1 + 1000000)) "$dir"/pgbench_log.*)
  PROCESSED=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1] + 0 }' "$dir/pgbench.out")
  FAILED=$(awk -F': ' '/^number of failed transactions/ { print $2 + 0 }' "$dir/pgbench.out")
  TPS=$(awk '/^tps = / { printf "%.0f", $3 }' "$dir/pgbench.out")
  ABORTED=$(grep -c 'aborted' "$dir/pgbench.err" || true)
  [ -n "$FAILED" ] || FAILED=$failed_log
  if [ "$PGB_RC" -ne 0 ]; then
    say "WARNING: pgbench exited with status $PGB_RC during the swap in $dir"
    show_tail "$dir/pgbench.err" 10
  fi
}
: >"$WORK/swap.tsv"
if want swap; then
  for n in $BENCH_SWAP_TABLES; do
    parts=$((n / 20))
    say "swap with $n tables (+ $parts partitions, pgbench tables, scale $BENCH_SWAP_SCALE): building source and destination"
    mkdir -p "$WORK/swap-$n"
    for side in SRC DST; do
      port_var="${side}_PORT"
      port=${!port_var}
      db="swap_$n"
      recreate_db "$port" "$db"
      run_logged "$WORK/swap-$n/build.log" "pgbench -i ($side, $n tables)" \
        "$PGBIN/pgbench" -i -q -s "$BENCH_SWAP_SCALE" -I dtGvpf -h 127.0.0.1 -p "$port" -U bench "$db"
      run_logged "$WORK/swap-$n/build.log" "creating $n tables ($side)" \
        psql_file "$port" "$db" "$HERE/swap_tables.sql" -v n="$n" -v parts="$parts" -v tag="$side"
    done
    for mode in $BENCH_SWAP_MODES; do
      sdir="$WORK/swap-$n/$mode"
      mkdir -p "$sdir"
      lock_idle_ms="-"
      if [ "$BENCH_SWAP_IDLE" = 1 ]; then
        say "swap with $n tables, $mode mode: pgshift prepare, then swap with no load (reference)"
        run_pgshift "swap-$n/$mode/idle" "swap_$n" "swap_$n" keep
        pgshift_swap "$sdir/idle" "swap_$n" "$mode"
        if [ -n "$SWAP_REFUSED" ]; then
          say "  $n tables, $mode mode: refused: $SWAP_REFUSED"
          printf '%s\t-\trefused\t-\t-\t-\t-\t-\t0\t0\t0\t0\t-\t-\t-\t-\t%s\t%s\n' "$n" "$mode" "$(refusal_slots "$SWAP_REFUSED")" >>"$WORK/swap.tsv"
          continue
        fi
        lock_idle_ms=$(jq -r '.lock_held_ms' "$sdir/idle/swap.json")
      fi
      say "swap with $n tables, $mode mode: pgshift prepare"
      run_pgshift "swap-$n/$mode/prepare" "swap_$n" "swap_$n" keep
      swap_prepare_secs=$RUN_SECS
      say "swap with $n tables, $mode mode: pgbench for ${BENCH_SWAP_SECONDS}s, swap at ${BENCH_SWAP_AT}s"
      swap_under_load "$sdir" "swap_$n" "$mode"
      if [ -n "$SWAP_REFUSED" ]; then
        say "  $n tables, $mode mode: refused under load: $SWAP_REFUSED"
        printf '%s\t-\trefused\t-\t-\t-\t-\t-\t0\t0\t0\t0\t-\t-\t-\t%s\t%s\t%s\n' "$n" "$lock_idle_ms" "$mode" "$(refusal_slots "$SWAP_REFUSED")" >>"$WORK/swap.tsv"
        continue
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$MOVED" "$LOCK_MS" "$ATTEMPTS" "$SWAP_WALL_MS" \
        "$WORST" "$P99" "$OUTSIDE" "${PROCESSED:-0}" "${FAILED:-0}" "$ABORTED" "$PGB_RC" "$TPS" "$swap_prepare_secs" "$NWIN" "$lock_idle_ms" "$mode" "" >>"$WORK/swap.tsv"
      say "  $n tables, $mode mode: lock held ${LOCK_MS} ms, worst latency in the swap window ${WORST} ms, failed ${FAILED:-?}, aborted clients $ABORTED"
    done
    drop_db "$SRC_PORT" "swap_$n"
    drop_db "$DST_PORT" "swap_$n"
  done
fi

# ---------------------------------------------------------------- swap with preserved tables
# What preserved tables add to the swap's lock time: the final sync replays what their
# changelogs still hold, drops their triggers and carries their sequences inside the locks.
# One source and destination pair with the pgbench tables and BENCH_PRESERVED_TABLES small
# tables (swap_tables.sql); for each count P: prepare preserving swap_0001 … swap_<P>, a
# swap with no load (reference), prepare again, then the swap under the same pgbench load
# as above plus a script writing the preserved tables (bench/preserved_write.pgbench,
# weight 2, when P > 0). Every write it made must be in the new public: the rows counted
# after the run, less those before it, against pgbench's successful transactions.
: >"$WORK/preserved.tsv"
if want preserved; then
  n=$BENCH_PRESERVED_TABLES
  db="preserved_$n"
  pdir0="$WORK/preserved"
  mkdir -p "$pdir0"
  say "swap with preserved tables ($n tables, pgbench tables, scale $BENCH_SWAP_SCALE): building source and destination"
  for side in SRC DST; do
    port_var="${side}_PORT"
    port=${!port_var}
    recreate_db "$port" "$db"
    run_logged "$pdir0/build.log" "pgbench -i ($side, preserved)" \
      "$PGBIN/pgbench" -i -q -s "$BENCH_SWAP_SCALE" -I dtGvpf -h 127.0.0.1 -p "$port" -U bench "$db"
    run_logged "$pdir0/build.log" "creating $n tables ($side)" \
      psql_file "$port" "$db" "$HERE/swap_tables.sql" -v n="$n" -v parts=0 -v tag="$side"
    run_logged "$pdir0/build.log" "preserved-tables functions ($side)" psql_file "$port" "$db" "$HERE/preserved.sql"
  done
  for p in $BENCH_PRESERVED_COUNTS; do
    sdir="$pdir0/p$p"
    mkdir -p "$sdir"
    PREPARE_ARGS=()
    [ "$p" -eq 0 ] || PREPARE_ARGS=(--preserved-tables "$(seq -f 'swap_%04g' -s, 1 "$p")")
    say "swap with $p preserved tables: pgshift prepare, then swap with no load (reference)"
    run_pgshift "preserved/p$p/idle" "$db" "$db" keep
    pgshift_swap "$sdir/idle" "$db" rename
    if [ -n "$SWAP_REFUSED" ]; then
      # Each preserved table's final sync takes lock-table slots inside the swap.
      say "  $p preserved tables: refused: $SWAP_REFUSED"
      printf '%s\trefused\t-\t-\t-\t-\t-\t-\t-\t0\t0\t0\t0\t-\t%s\n' "$p" "$(refusal_slots "$SWAP_REFUSED")" >>"$WORK/preserved.tsv"
      PREPARE_ARGS=()
      continue
    fi
    lock_idle_ms=$(jq -r '.lock_held_ms' "$sdir/idle/swap.json")
    say "swap with $p preserved tables: pgshift prepare"
    run_pgshift "preserved/p$p/prepare" "$db" "$db" keep
    prepare_secs=$RUN_SECS
    PREPARE_ARGS=()
    rows_before=$(q "$DST_PORT" "$db" "SELECT bench_pgbench_rows($p)")
    write_args=()
    [ "$p" -eq 0 ] || write_args=(-f "$HERE/preserved_write.pgbench@2" -D "npres=$p")
    say "swap with $p preserved tables: pgbench for ${BENCH_SWAP_SECONDS}s, swap at ${BENCH_SWAP_AT}s"
    swap_under_load "$sdir" "$db" rename "${write_args[@]+"${write_args[@]}"}"
    if [ -n "$SWAP_REFUSED" ]; then
      say "  $p preserved tables: refused under load: $SWAP_REFUSED"
      printf '%s\trefused\t%s\t-\t-\t-\t-\t-\t-\t0\t0\t0\t0\t%s\t%s\n' "$p" "$lock_idle_ms" "$prepare_secs" "$(refusal_slots "$SWAP_REFUSED")" >>"$WORK/preserved.tsv"
      continue
    fi
    # Successful transactions of the third script (script numbers start at 0).
    writes=$(cat "$sdir"/pgbench_log.* | awk '$4 == 2 && $3 ~ /^[0-9]+$/ { w++ } END { print w + 0 }')
    rows_after=$(q "$DST_PORT" "$db" "SELECT bench_pgbench_rows($p)")
    arrived=$((rows_after - rows_before))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$LOCK_MS" "$lock_idle_ms" "$ATTEMPTS" "$SWAP_WALL_MS" \
      "$WORST" "$P99" "$OUTSIDE" "$TPS" "${FAILED:-0}" "$ABORTED" "$writes" "$arrived" "$prepare_secs" >>"$WORK/preserved.tsv"
    say "  $p preserved tables: lock held ${LOCK_MS} ms (${lock_idle_ms} ms with no load), worst latency in the swap window ${WORST} ms, failed ${FAILED:-?}, writes to preserved tables $writes, arrived $arrived"
    [ "$arrived" -eq "$writes" ] ||
      say "WARNING: $writes writes to the preserved tables succeeded, $arrived rows arrived in the new public"
  done
  drop_db "$SRC_PORT" "$db"
  drop_db "$DST_PORT" "$db"
fi

# ---------------------------------------------------------------- many tables
# prepare of BENCH_MANY_TABLES tables (+ a BENCH_MANY_PARTITIONS-partition table) on
# the default-configured clusters (max_locks_per_transaction 64), against pg_dump |
# pg_restore of the same database.
: >"$WORK/many.tsv"
: >"$WORK/many_content.txt"
if want many; then
  recreate_db "$SRC_PORT" bench_many
  say "many tables: building bench_many ($BENCH_MANY_TABLES tables, a table of $BENCH_MANY_PARTITIONS partitions)"
  run_logged "$WORK/dataset-many.log" "building bench_many" \
    psql_file "$SRC_PORT" bench_many "$HERE/many_tables.sql" -v tables="$BENCH_MANY_TABLES" -v partitions="$BENCH_MANY_PARTITIONS"
  MANY_SIG=$(catalog_signature "$SRC_PORT" bench_many public)
  MANY_ROWS=$(row_total "$SRC_PORT" bench_many public)
  MANY_DB_MB=$(db_size_mb "$SRC_PORT" bench_many)
  for round in $(seq 1 "$BENCH_MANY_REPEAT"); do
    for i in 0 1; do
      tool=$([ $(((i + round) % 2)) -eq 1 ] && echo pgshift || echo dumprestore)
      say "many tables, round $round/$BENCH_MANY_REPEAT: $tool"
      case $tool in
        pgshift)
          run_pgshift "many-$round" bench_many many_dst
          jq -c '.phases_ms' "$WORK/many-$round/out.json" >"$WORK/many-$round/phases.json"
          printf '%s\t%s\t%s\n' pgshift "$round" "$RUN_SECS" >>"$WORK/many.tsv"
          schema=shadow
          ;;
        dumprestore)
          run_dump_restore many_dst "$(url "$SRC_PORT" bench_many)"
          printf '%s\t%s\t%s\t%s\t%s\n' dumprestore "$round" "$RUN_SECS" "$RUN_DUMP_SECS" "$RUN_RESTORE_SECS" >>"$WORK/many.tsv"
          schema=public
          ;;
      esac
      say "  $tool: $RUN_SECS s"
      if [ "$round" -eq 1 ]; then
        sig=$(catalog_signature "$DST_PORT" many_dst "$schema")
        rows=$(row_total "$DST_PORT" many_dst "$schema")
        if [ "$sig" = "$MANY_SIG" ] && [ "$rows" = "$MANY_ROWS" ]; then
          echo "$tool ok" >>"$WORK/many_content.txt"
        else
          say "WARNING: $tool's result differs from the source: $sig rows=$rows (source: $MANY_SIG rows=$MANY_ROWS)"
          echo "$tool MISMATCH $sig rows=$rows" >>"$WORK/many_content.txt"
        fi
      fi
      drop_db "$DST_PORT" many_dst
    done
  done
  drop_db "$SRC_PORT" bench_many
fi

# ---------------------------------------------------------------- the impact report
# A third cluster with pg_stat_statements preloaded (the others stay as they are):
# source and destination databases with N tables each; in the new version (the
# source) every 100th table gains a column and another every 100th is dropped.
# pgshift prepare, then the application's M distinct statements are recorded on the
# destination (the application keeps running between prepare and swap; recording
# them after prepare also keeps prepare's own statements, about four per table, from
# evicting them), then `pgshift swap --dry-run --json` (the whole report) is timed.
# pg_stat_statements.max leaves room for everything: the report also reads and
# leaves out prepare's statements, as it would on a real destination.
: >"$WORK/impact.tsv"
if want impact; then
  idir="$WORK/impact"
  mkdir -p "$idir"
  n=$BENCH_IMPACT_TABLES
  m=$BENCH_IMPACT_STATEMENTS
  pgss_max=$((10 * n + 2 * m))
  [ "$pgss_max" -ge 10000 ] || pgss_max=10000
  init_cluster IMP "shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.max = $pgss_max"
  say "impact report with $n tables and $m recorded statements: building source and destination"
  for db in impact_src impact_dst; do
    recreate_db "$IMP_PORT" "$db"
    run_logged "$idir/build.log" "creating $n tables ($db)" \
      psql_file "$IMP_PORT" "$db" "$HERE/swap_tables.sql" -v n="$n" -v parts=0 -v tag="$db"
  done
  q "$IMP_PORT" impact_src "DO \$\$ DECLARE r record; BEGIN
    FOR r IN SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
                AND relname LIKE 'swap\_%' AND substr(relname, 6)::int % 100 IN (0, 50) LOOP
      IF substr(r.relname, 6)::int % 100 = 0 THEN
        EXECUTE format('ALTER TABLE %I ADD COLUMN extra int', r.relname);
      ELSE
        EXECUTE format('DROP TABLE %I', r.relname);
      END IF;
    END LOOP; END \$\$" >/dev/null
  q "$IMP_PORT" impact_dst "CREATE EXTENSION pg_stat_statements" >/dev/null
  q "$IMP_PORT" impact_dst "SELECT pg_stat_statements_reset()" >/dev/null
  say "impact report: pgshift prepare"
  rc=0
  (cd "$idir" && "$PGSHIFT" prepare --source "$(url "$IMP_PORT" impact_src)" --dest "$(url "$IMP_PORT" impact_dst)" \
    --jobs "$BENCH_JOBS" --json --state-dir "$idir" >"$idir/prepare.json" 2>"$idir/prepare.log") || rc=$?
  if [ "$rc" -ne 0 ]; then
    show_tail "$idir/prepare.log"
    die "pgshift prepare (impact report) failed (exit $rc)"
  fi
  run_logged "$idir/build.log" "recording $m statements" \
    psql_file "$IMP_PORT" impact_dst "$HERE/impact_workload.sql" -v n="$n" -v m="$m" -o /dev/null
  recorded=$(q "$IMP_PORT" impact_dst "SELECT count(*) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                                        WHERE d.datname = current_database() AND s.query ~ '^SELECT .* FROM swap_'")
  [ "$recorded" -eq "$m" ] ||
    die "pg_stat_statements holds $recorded of the $m statements (evicted? pg_stat_statements.max = $pgss_max)"
  : >"$idir/times.txt"
  for round in $(seq 1 "$BENCH_REPEAT"); do
    settle "$IMP_PORT"
    t0=$(now_us)
    (cd "$idir" && "$PGSHIFT" swap --dest "$(url "$IMP_PORT" impact_dst)" --dry-run --json --state-dir "$idir" \
      >"$idir/dry-$round.json" 2>"$idir/dry-$round.log") || rc=$?
    t1=$(now_us)
    if [ "$rc" -ne 0 ]; then
      show_tail "$idir/dry-$round.log"
      die "pgshift swap --dry-run (impact report) failed (exit $rc)"
    fi
    echo "$(secs_between "$t0" "$t1")" >>"$idir/times.txt"
    say "  impact report, run $round: $(tail -n 1 "$idir/times.txt") s"
  done
  jq -r --arg n "$n" --arg rec "$recorded" '.swap.impact | [$n, $rec, .statements.checked, (.statements.unchecked | length),
      (.statements.failing | length), (.statements.result_type_changed | length), (.hazards | length)] | @tsv' \
    "$idir/dry-1.json" | tr -d '\n' >>"$WORK/impact.tsv"
  printf '\t%s\t%s\t%s\n' "$(stat_min <"$idir/times.txt")" "$(stat_median <"$idir/times.txt")" \
    "$(paste -sd ' ' "$idir/times.txt")" >>"$WORK/impact.tsv"
  drop_db "$IMP_PORT" impact_src
  drop_db "$IMP_PORT" impact_dst
fi

# ---------------------------------------------------------------- report
. "$HERE/report.sh"
write_report >"$WORK/report.md"
cp "$WORK/report.md" "$BENCH_OUT"
cat "$WORK/report.md"
say "report written to $BENCH_OUT"
