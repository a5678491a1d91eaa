#!/usr/bin/env bash
# THE test command (README and .ci/run call it). Stops at the first failing step and names it.
#
#   scripts/test.sh              everything
#   scripts/test.sh --no-install skip scripts/install.sh (tools already present)
#   scripts/test.sh --help       this text
#
# Integration tests find their helpers through the environment set here:
#   SHARDGATE_NODE   node binary          SHARDGATE_IDP  scripts/idp/server.mjs
#   SHARDGATE_ECHO   scripts/upstream/echo.py
#   SHARDGATE_BIN    the debug gateway binary (for the browser test)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install=1
for arg in "$@"; do
	case "$arg" in
	--no-install) install=0 ;;
	-h | --help)
		sed -n '2,10p' "$0"
		exit 0
		;;
	*) sg_die "unknown argument $arg (try --help)" ;;
	esac
done

cd "$SG_ROOT"
SHARDGATE_NODE=$(command -v node || true)
export SHARDGATE_NODE
export SHARDGATE_IDP="$SG_ROOT/scripts/idp/server.mjs"
export SHARDGATE_ECHO="$SG_ROOT/scripts/upstream/echo.py"
export SHARDGATE_BIN="$SG_ROOT/target/debug/shardgate"

step() {
	local name=$1 start rc
	shift
	printf '\n==> %s\n' "$name"
	start=$(date +%s)
	set +e
	"$@"
	rc=$?
	set -e
	if [ "$rc" -ne 0 ]; then
		printf '\n==> FAILED: %s (exit %d after %ds)\n' "$name" "$rc" "$(($(date +%s) - start))" >&2
		exit "$rc"
	fi
	printf '==> ok: %s (%ds)\n' "$name" "$(($(date +%s) - start))"
}

shell_syntax() {
	local f rc=0
	for f in scripts/*.sh loadtest/*.sh; do
		[ -f "$f" ] || continue
		bash -n "$f" || rc=1
	done
	# Parse only: py_compile would leave __pycache__ in the tree.
	for f in scripts/upstream/*.py loadtest/*.py; do
		[ -f "$f" ] || continue
		python3 -c 'import ast,sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f" || rc=1
	done
	return "$rc"
}

has_node_tests() {
	[ -d "$1" ] && [ -n "$(find "$1" -path '*/node_modules' -prune -o -type f \( -name '*.test.mjs' -o -name '*.test.js' -o -name '*.test.cjs' -o -name 'test.mjs' -o -name 'test-*.mjs' \) -print -quit)" ]
}

[ "$install" = 1 ] && step "install test dependencies" scripts/install.sh --test
[ -n "$SHARDGATE_NODE" ] || sg_die "node not found; run scripts/install.sh"

step "script syntax" shell_syntax
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo test" cargo test --workspace
# The cargo-fuzz targets replayed on stable (seeds, regressions, 20k seeded mutations): an
# instrumented cargo-fuzz build does not fit CI's time (gateway/fuzz/README.md).
step "fuzz targets, stable replay" env SHARDGATE_FUZZ_ITERS=20000 cargo test --quiet -p shardgate-gateway --test fuzz_replay
step "test IdP selftest" node --test scripts/idp/
if has_node_tests scripts/browser; then
	step "build gateway binary for the browser test" cargo build --quiet -p shardgate-gateway --bins
	step "browser test" node --test scripts/browser/
else
	printf '\n==> skipped: browser test (no tests in scripts/browser/)\n'
fi
printf '\n==> all steps passed\n'
