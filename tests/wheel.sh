#!/usr/bin/env bash
# The wheel test: builds the wheel with scripts/build-wheel (arguments go to it, e.g.
# `--profile dev`), installs it into a fresh virtual environment, and runs `cdc --version` and
# `cdc demo --seconds 5` from there with a clean environment, as an Airflow worker would.
# .ci/run runs it; it needs python3 with venv, and the demo's local Postgres binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "wheel test FAILED: $*" >&2; exit 1; }

scripts/build-wheel "$@"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
wheel=$(ls target/wheels/cdc-"$version"-*.whl)

venv=$(mktemp -d /tmp/cdc-wheel-test.XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv/env"
"$venv/env/bin/pip" install -q "$wheel"
cdc="$venv/env/bin/cdc"
[ -x "$cdc" ] || fail "pip did not install $cdc"

# The binary names no directory of the build machine: it finds the library pip installed.
runpath=$(readelf -d "$cdc" | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p')
[ "$runpath" = '$ORIGIN/../lib/cdc' ] || fail "rpath is '$runpath', expected \$ORIGIN/../lib/cdc"
lib=$(ldd "$cdc" | sed -n 's/.*libduckdb.so => \([^ ]*\).*/\1/p')
[ -n "$lib" ] && [ "$(realpath "$lib")" = "$(realpath "$venv/env/lib/cdc/libduckdb.so")" ] \
  || fail "libduckdb.so not resolved inside the environment: $(ldd "$cdc" | grep duckdb)"

# A clean environment, without sbin on PATH (a scheduler's usual PATH).
run() { env -i PATH="$venv/env/bin:/usr/bin:/bin" HOME="$venv" "$cdc" "$@"; }
[ "$(run --version)" = "cdc $version" ] || fail "cdc --version printed '$(run --version)'"
out=$(run demo --seconds 5 2>&1) || fail "cdc demo failed: $out"
echo "$out" | tail -3
echo "$out" | grep -q "are identical to the source's" || fail "the demo did not end identical: $out"
echo "wheel test passed: $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) installs and runs"
