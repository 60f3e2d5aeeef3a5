#!/usr/bin/env bash
# Install what pgshift's build and tests need on Debian/Ubuntu, skipping what is
# already there. Idempotent; needs root (or sudo) only when something is missing.
#   --bench   also install pgcopydb, GNU time and jq (for `make bench`)
set -euo pipefail

want_bench=0
[ "${1:-}" = "--bench" ] && want_bench=1

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif have sudo; then sudo "$@"; else echo "error: need root to run: $*" >&2; exit 1; fi; }

missing=()
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need_pkg() { pkg_installed "$1" || missing+=("$1"); }

if ! have apt-get; then
  echo "install-deps: not a Debian/Ubuntu system; install PostgreSQL (server, client, contrib), PostGIS 3, clang/libclang and Rust yourself" >&2
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
