#!/usr/bin/env bash
# Idempotent installs for tests, the demo and load runs (Debian, as root or with sudo).
# Quiet when everything is already there. Apt is touched only for what is missing.
#
#   scripts/install.sh            everything (load tests too: nginx-light, haproxy, wrk)
#   scripts/install.sh --demo     only what `scripts/demo.sh` needs (node, the IdP's npm deps, curl, openssl, python3)
#   scripts/install.sh --test     only what `scripts/test.sh` needs (the demo's, plus chromium for the browser
#                                 test, prometheus for the metrics test, systemd-analyze for the unit,
#                                 etcd-server and etcd-client for the etcd provider's tests)
#   scripts/install.sh --callgrind everything, plus valgrind (`loadtest/run.sh --mode callgrind`)
#
# Env: SG_SKIP_APT=1 skips system packages (then missing tools are only reported).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

profile=all
case "${1:-}" in
--demo) profile="demo" ;;
--test) profile="test" ;;
--callgrind) profile="callgrind" ;;
"" | --all) ;;
*) sg_die "usage: $0 [--demo|--test|--all|--callgrind]" ;;
esac

# command -> Debian package that provides it
declare -A PKG_FOR=(
	[node]=nodejs
	[npm]=npm
	[curl]=curl
	[ps]=procps
	[openssl]=openssl
	[python3]=python3
)
if [ "$profile" != demo ]; then
	# promtool and prometheus: the metrics test checks /metrics with them.
	PKG_FOR+=([chromium]=chromium [chromedriver]=chromium-driver [promtool]=prometheus [systemd-analyze]=systemd)
	# etcd and etcdctl: the etcd config provider's tests start their own member on loopback.
	PKG_FOR+=([etcd]=etcd-server [etcdctl]=etcd-client)
fi
if [ "$profile" = all ] || [ "$profile" = callgrind ]; then
	PKG_FOR+=([nginx]=nginx-light [haproxy]=haproxy [wrk]=wrk [taskset]=util-linux)
fi
if [ "$profile" = callgrind ]; then
	PKG_FOR+=([valgrind]=valgrind)
fi

missing=()
for cmd in "${!PKG_FOR[@]}"; do
	# nginx-light and nginx both ship /usr/sbin/nginx, which root's PATH has but others may not.
	if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
		missing+=("${PKG_FOR[$cmd]}")
	fi
done

if [ "${#missing[@]}" -gt 0 ]; then
	if [ "${SG_SKIP_APT:-0}" = 1 ]; then
		sg_log "missing packages (SG_SKIP_APT=1, not installing): ${missing[*]}"
	else
		sg_log "installing: ${missing[*]}"
		log=$(mktemp)
		export DEBIAN_FRONTEND=noninteractive
		if ! { sg_as_root apt-get update -qq && sg_as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
			tail -n 30 "$log" >&2
			rm -f "$log"
			sg_die "apt-get install failed for: ${missing[*]}"
		fi
		rm -f "$log"
		# Debian starts these services on install; our runs start their own instances.
		for svc in nginx haproxy prometheus etcd; do
			if [[ " ${missing[*]} " == *" ${svc}"* ]] && command -v systemctl >/dev/null 2>&1; then
				sg_as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
			fi
		done
	fi
fi

# npm deps: reinstall when node_modules is absent or older than the lockfile.
npm_ci() {
	local dir=$1 stamp
	[ -f "$dir/package.json" ] || return 0
	stamp="$dir/node_modules/.package-lock.json"
	if [ -f "$stamp" ] && [ -f "$dir/package-lock.json" ] && [ ! "$dir/package-lock.json" -nt "$stamp" ]; then
		return 0
	fi
	command -v npm >/dev/null 2>&1 || sg_die "npm missing; cannot install $dir"
	local log
	log=$(mktemp)
	if [ -f "$dir/package-lock.json" ]; then
		(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1 || {
			tail -n 30 "$log" >&2
			rm -f "$log"
			sg_die "npm ci failed in $dir"
		}
	else
		(cd "$dir" && npm install --no-audit --no-fund --loglevel=error) >"$log" 2>&1 || {
			tail -n 30 "$log" >&2
			rm -f "$log"
			sg_die "npm install failed in $dir"
		}
	fi
	rm -f "$log"
}

npm_ci "$SG_ROOT/scripts/idp"
[ "$profile" = demo ] || npm_ci "$SG_ROOT/scripts/browser"
