# pgshift — see README.md. `make demo` and `make test` are the two set-up commands.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# Where cargo puts binaries (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# The PostgreSQL binaries the tests and the demo use (initdb, pg_ctl, pg_dump, ...).
export PGSHIFT_PG_BINDIR ?= $(shell pg_config --bindir 2>/dev/null)

# `make dist`: the static targets to build (default: this machine's arch, musl).
DIST_TARGETS ?=

.PHONY: all build deps test test-only demo bench dist dist-check lint fmt clippy clean

all: build

build:
	$(CARGO) build --release

## Install missing system packages (PostgreSQL server+client, PostGIS, clang for pg_query).
deps:
	@./scripts/install-deps.sh

## Build and run the whole suite against throwaway PostgreSQL clusters.
test: deps
	$(MAKE) --no-print-directory test-only

test-only:
	$(CARGO) test --all-targets --no-fail-fast -- --test-threads=2

## Start two throwaway clusters, migrate a sample database (prepare, the impact
## report of `swap --dry-run`, swap), then show status, list, verify and rollback.
demo: deps
	$(CARGO) build --release
	./scripts/demo.sh $(TARGET_DIR)/release/pgshift

## Benchmarks against pg_dump|pg_restore and pgcopydb; writes BENCHMARKS.md.
## BENCH_BIN=path runs that binary instead of building one; BENCH_BIN_STATIC=path
## (e.g. from make dist) adds its prepare next to the first binary's.
BENCH_BIN ?=
bench:
	@./scripts/install-deps.sh --bench
	$(if $(BENCH_BIN),,$(CARGO) build --release)
	./bench/run.sh $(or $(BENCH_BIN),$(TARGET_DIR)/release/pgshift)

## Static release binaries (musl) packed in dist/: pgshift-<version>-<target>.tar.gz + .sha256.
dist:
	@./scripts/install-deps.sh --dist $(DIST_TARGETS)
	CARGO="$(CARGO)" ./scripts/dist.sh $(DIST_TARGETS)

## Prove dist/'s archive for this machine: checksum, static, `env -i pgshift --version`,
## no password in /proc/<pid>/cmdline, a whole `env -i pgshift start` between two clusters.
dist-check: deps
	CARGO="$(CARGO)" ./scripts/dist-check.sh $(DIST_ARCHIVE)

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
