# pgshift — see README.md. `make demo` and `make test` are the two set-up commands.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# Where cargo puts binaries (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# The PostgreSQL binaries the tests and the demo use (initdb, pg_ctl, pg_dump, ...).
export PGSHIFT_PG_BINDIR ?= $(shell pg_config --bindir 2>/dev/null)

.PHONY: all build deps test test-only demo bench lint fmt clippy clean

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
bench:
	@./scripts/install-deps.sh --bench
	$(CARGO) build --release
	./bench/run.sh $(TARGET_DIR)/release/pgshift

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
