#!/usr/bin/env bash
# Install what pgshift's build and tests need on Debian/Ubuntu, skipping what is
# already there. Idempotent; needs root (or sudo) only when something is missing.
#   --bench   also install pgcopydb, GNU time and jq (for `make bench`)
#   --dist [TARGET...]
#             only what `make dist` needs to build static binaries: the C toolchain,
#             clang/libclang, musl-tools and the Rust std of each *-unknown-linux-musl
#             TARGET (default: this machine's arch). No PostgreSQL.
set -euo pipefail

want_bench=0
want_dist=0
dist_targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --bench) want_bench=1 ;;
    --dist) want_dist=1 ;;
    -*) echo "install-deps: error: unknown option $1 (use --bench or --dist)" >&2; exit 2 ;;
    *)
      [ "$want_dist" -eq 1 ] || { echo "install-deps: error: targets go after --dist" >&2; exit 2; }
      dist_targets+=("$1")
      ;;
  esac
  shift
done
[ ${#dist_targets[@]} -gt 0 ] || dist_targets=("$(uname -m)-unknown-linux-musl")

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif have sudo; then sudo "$@"; else echo "error: need root to run: $*" >&2; exit 1; fi; }

missing=()
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need_pkg() { pkg_installed "$1" || missing+=("$1"); }

if ! have apt-get; then
  echo "install-deps: not a Debian/Ubuntu system; install PostgreSQL (server, client, contrib), PostGIS 3, clang/libclang and Rust (for make dist: musl-gcc and rustup target add <arch>-unknown-linux-musl) yourself" >&2
  exit 0
fi

# `make dist`: the build toolchain and the musl targets, nothing else.
if [ "$want_dist" -eq 1 ]; then
  for t in "${dist_targets[@]}"; do
    case $t in
      "$(uname -m)"-unknown-linux-musl) ;;
      *-unknown-linux-musl)
        echo "install-deps: error: $t is another architecture than this machine's ($(uname -m)); build it on such a machine (the release workflow builds aarch64 on an arm64 runner)" >&2
        exit 2
        ;;
      *) echo "install-deps: error: $t is not a *-unknown-linux-musl target" >&2; exit 2 ;;
    esac
  done
  # pg_query compiles PostgreSQL's parser with musl-gcc and generates bindings with libclang.
  for p in clang libclang-dev make gcc musl-tools; do need_pkg "$p"; done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! have cargo && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "install-deps: installing Rust with rustup"
    have curl || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  have rustup || { echo "install-deps: error: adding the musl targets needs rustup (this Rust was not installed with it)" >&2; exit 1; }
  for t in "${dist_targets[@]}"; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  done
  echo "install-deps: ready for make dist (${dist_targets[*]})"
  exit 0
fi

# PostgreSQL: the distribution's default major version unless one is installed.
pg_major=""
if [ -d /usr/lib/postgresql ]; then
  pg_major=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)
fi
if [ -z "$pg_major" ] || [ ! -x "/usr/lib/postgresql/$pg_major/bin/initdb" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  pg_major=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
fi
need_pkg "postgresql-$pg_major"
need_pkg "postgresql-client-$pg_major"
need_pkg postgresql-contrib
need_pkg "postgresql-$pg_major-postgis-3"
# The tests of pgshift behind a connection pooler (tests/common/pooler.rs).
need_pkg pgbouncer
# pg_query builds PostgreSQL's parser from C and generates bindings with libclang.
need_pkg clang
need_pkg libclang-dev
need_pkg make
need_pkg gcc
need_pkg pkg-config
if [ "$want_bench" -eq 1 ]; then
  # bench/run.sh: pgcopydb (compared with), GNU time (max RSS), jq (pgshift's --json).
  need_pkg pgcopydb
  need_pkg time
  need_pkg jq
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's package starts a cluster on 5432; the tests do not need it.
if have pg_lsclusters && pg_lsclusters -h 2>/dev/null | grep -q online; then
  : # leave an existing server alone
fi

if ! have cargo && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "install-deps: installing Rust with rustup"
  have curl || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

id -u postgres >/dev/null 2>&1 || as_root useradd --system --no-create-home --shell /usr/sbin/nologin postgres
echo "install-deps: ready (PostgreSQL $pg_major at /usr/lib/postgresql/$pg_major/bin)"
