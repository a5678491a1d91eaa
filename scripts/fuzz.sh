#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in gateway/fuzz/ (cargo-fuzz + libFuzzer), each for a
# bounded time, on the stable toolchain. Prints executions, coverage and crashes per target; exits
# non-zero if any target crashed (the input is under gateway/fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   SECONDS per target (default 60); all targets by default
#   --sanitizer address|none                address (default): AddressSanitizer, which needs
#                                           RUSTC_BOOTSTRAP=1 for -Zsanitizer on stable (set here);
#                                           none: plain libFuzzer, no unstable flag at all
#   --smoke                                 what CI runs: a few seconds each, no sanitizer, a
#                                           quicker build (more codegen units)
#
# Installs cargo-fuzz from crates.io if it is missing. Corpora grow in gateway/fuzz/corpus/<target>
# (not committed; seeded from gateway/fuzz/seeds/<target>). gateway/fuzz/README.md has the rest.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CARGO_FUZZ_VERSION=0.13.2
seconds=60
sanitizer=address
smoke=0
targets=()
while [ $# -gt 0 ]; do
	case "$1" in
	--sanitizer)
		sanitizer=${2:?--sanitizer needs address or none}
		shift
		;;
	--smoke)
		smoke=1
		seconds=4
		sanitizer=none
		;;
	[0-9]*) seconds=$1 ;;
	-*) sg_die "unknown option $1" ;;
	*) targets+=("$1") ;;
	esac
	shift
done
case "$sanitizer" in address | none) ;; *) sg_die "--sanitizer must be address or none" ;; esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
	sg_log "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install)"
	cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cd "$SG_ROOT/gateway/fuzz"
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo fuzz list)
fi

# -Zsanitizer=address is an unstable flag; RUSTC_BOOTSTRAP=1 lets the stable compiler take it
# (cargo-fuzz's own flags -Cpasses=sancov-module etc. are stable). Harmless with --sanitizer none.
export RUSTC_BOOTSTRAP=1
build=(--release --sanitizer "$sanitizer")
[ "$smoke" = 1 ] && build+=(--codegen-units 16)
sg_log "building the fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
cargo fuzz build "${build[@]}" >"$SG_ROOT/gateway/fuzz/build.log" 2>&1 ||
	{ tail -n 40 "$SG_ROOT/gateway/fuzz/build.log" >&2; sg_die "cargo fuzz build failed"; }
sg_log "built in $(($(date +%s) - start))s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
rows=()
for t in "${targets[@]}"; do
	mkdir -p "corpus/$t" "artifacts/$t"
	before=$(find "artifacts/$t" -type f | wc -l)
	sg_log "fuzzing $t for ${seconds}s"
	set +e
	cargo fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- \
		-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
		-print_final_stats=1 >"$logs/$t" 2>&1
	rc=$?
	set -e
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -1)
	last=$(grep -E '^#[0-9]+' "$logs/$t" | tail -1 || true)
	cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
	ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
	corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
	crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
	if [ "$rc" -ne 0 ]; then
		failed+=("$t")
		grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY' "$logs/$t" | head -5 >&2 || true
		cp "$logs/$t" "artifacts/$t.log"
	fi
	rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s |' "$t" "$seconds" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")")
done

printf '\n| target | s | executions | exec/s | cov (edges) | features | corpus | new crashes |\n'
printf '|---|---|---|---|---|---|---|---|\n'
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
	sg_die "crashed: ${failed[*]} (inputs and logs in gateway/fuzz/artifacts/<target>/)"
fi
