#!/usr/bin/env bash
# `make dist`: fully static pgshift binaries (musl), packed as
#   dist/pgshift-<version>-<target>.tar.gz   (pgshift, README.md)
#   dist/pgshift-<version>-<target>.tar.gz.sha256   (`sha256sum -c` format)
#
#   scripts/dist.sh [TARGET...]     default: <this machine's arch>-unknown-linux-musl
#
# Each binary is checked to have no dynamic dependencies and no program
# interpreter, and is run (`--version`) when this machine can run it. The archives
# are reproducible for a given commit (sorted, owner 0, mtime of the commit).
# Install what it needs first: scripts/install-deps.sh --dist [TARGET...].
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DIST_DIR=${DIST_DIR:-$ROOT/dist}

die() { echo "dist: error: $*" >&2; exit 1; }
say() { echo "dist: $*" >&2; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("$(uname -m)-unknown-linux-musl")

pkgid=$("$CARGO" pkgid)
version=${pkgid##*[#@]}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the version from \`cargo pkgid\` ($pkgid)"
# Archive timestamps: the commit's time, so the same commit gives the same archive.
epoch=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)

mkdir -p "$DIST_DIR"
for target in "${targets[@]}"; do
  case $target in
    *-unknown-linux-musl) ;;
    *) die "$target: only static *-unknown-linux-musl targets are built here" ;;
  esac
  say "building $target"
  "$CARGO" build --locked --profile dist --target "$target"
  bin="$TARGET_DIR/$target/dist/pgshift"
  [ -x "$bin" ] || die "$bin was not built"

  # Static: no shared libraries, no dynamic loader.
  if readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$bin needs shared libraries: $(readelf -d "$bin" | grep '(NEEDED)' | tr -s ' ' | paste -sd ';' -)"
  fi
  if readelf -l "$bin" 2>/dev/null | grep -q 'program interpreter'; then
    die "$bin asks for a dynamic loader"
  fi
  if [ "${target%%-*}" = "$(uname -m)" ]; then
    say "$("$bin" --version)"
  else
    say "$target: cannot run it on $(uname -m); not smoke-tested"
  fi

  name="pgshift-$version-$target"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir "$stage/$name"
  install -m 0755 "$bin" "$stage/$name/pgshift"
  install -m 0644 README.md "$stage/$name/README.md"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$stage" -cf - "$name" | gzip -9n >"$DIST_DIR/$name.tar.gz"
  (cd "$DIST_DIR" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
  rm -rf "$stage"
  trap - EXIT
  say "$DIST_DIR/$name.tar.gz ($(du -h "$DIST_DIR/$name.tar.gz" | cut -f1)), sha256 $(cut -d' ' -f1 "$DIST_DIR/$name.tar.gz.sha256")"
done
