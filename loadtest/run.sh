#!/usr/bin/env bash
# Load test: shardgate vs nginx/haproxy through one nginx upstream, pinned.
#
#   loadtest/run.sh [--scenarios S0,S1,S2,S3,S4,S5,S6,S7] [--passes 3] [--duration 10] [--warmup 2]
#                   [--mode percore|allcores|callgrind] [--peers nginx,shardgate-uring,...] [--no-build]
#
# Prints a markdown table and writes loadtest/results/<timestamp>.{md,csv} (configs and logs in
# loadtest/results/<timestamp>/). Run it on an otherwise idle machine: passes during which other
# processes use more than 10% of a core are retried, then kept with a warning.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

build=1
args=()
for arg in "$@"; do
	case "$arg" in
	--no-build) build=0 ;;
	-h | --help)
		sed -n '2,10p' "$0"
		exec python3 "$SG_ROOT/loadtest/harness.py" --help
		;;
	*) args+=("$arg") ;;
	esac
done

profile=--all
case " $* " in *" callgrind "* | *"--mode=callgrind"*) profile=--callgrind ;; esac
"$SG_ROOT/scripts/install.sh" "$profile"
if [ "$build" = 1 ]; then
	# Both binaries by name: with a --bin filter cargo builds only the named ones, and a stale
	# target/release/shardgate would be measured without a word.
	sg_log "building shardgate (release)"
	if ! (cd "$SG_ROOT" && cargo build --release --quiet -p shardgate-gateway -p shardgate-benches --bin shardgate --bin session_cookies --bin dpop_proofs); then
		sg_log "warning: release build failed; shardgate rows will be reported as failed"
	fi
fi

exec python3 "$SG_ROOT/loadtest/harness.py" --command "loadtest/run.sh $*" "${args[@]}"
