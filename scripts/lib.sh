# shellcheck shell=bash
# Shared helpers for scripts/*.sh and loadtest/run.sh. Source it; it sets no shell options.

SG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SG_ROOT

sg_log() { printf '%s\n' "[$(basename "$0")] $*" >&2; }
sg_die() {
	printf '%s\n' "[$(basename "$0")] error: $*" >&2
	exit 1
}

# Run as root, or through sudo when we are not root and sudo exists.
sg_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		sg_die "need root for: $*"
	fi
}

# A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
sg_free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

sg_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# sg_wait_port PORT [TIMEOUT_SECONDS] [PID]: wait until something accepts on 127.0.0.1:PORT.
# Fails early when PID (the process expected to listen) has died.
sg_wait_port() {
	local port=$1 timeout=${2:-20} pid=${3:-} i
	for ((i = 0; i < timeout * 10; i++)); do
		sg_port_open "$port" && return 0
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			sg_log "process $pid exited before listening on $port"
			return 1
		fi
		sleep 0.1
	done
	sg_log "nothing listening on 127.0.0.1:$port after ${timeout}s"
	return 1
}

# sg_wait_ready FILE [TIMEOUT_SECONDS] [PID]: wait for a "READY <url>" line in FILE, print the url.
sg_wait_ready() {
	local file=$1 timeout=${2:-20} pid=${3:-} i line
	for ((i = 0; i < timeout * 10; i++)); do
		line=$(grep -m1 '^READY ' "$file" 2>/dev/null || true)
		if [ -n "$line" ]; then
			printf '%s\n' "${line#READY }"
			return 0
		fi
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			sg_log "process $pid exited before READY"
			return 1
		fi
		sleep 0.1
	done
	sg_log "no READY line in $file after ${timeout}s"
	return 1
}

# Background processes started through sg_spawn are stopped by sg_cleanup, which sg_trap_cleanup
# installs for EXIT, INT and TERM. Only the PIDs we started are signalled.
SG_PIDS=()

# sg_spawn LOGFILE CMD...: start CMD in the background, stdout+stderr to LOGFILE; sets SG_LAST_PID.
sg_spawn() {
	local logfile=$1
	shift
	"$@" >"$logfile" 2>&1 &
	SG_LAST_PID=$!
	SG_PIDS+=("$SG_LAST_PID")
}

sg_cleanup() {
	local pid i alive
	for pid in "${SG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	# Give them up to 5 s to drain, then insist.
	for ((i = 0; i < 50; i++)); do
		alive=0
		for pid in "${SG_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ "$alive" -eq 0 ] && break
		sleep 0.1
	done
	for pid in "${SG_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
	SG_PIDS=()
}

sg_trap_cleanup() {
	trap 'sg_cleanup' EXIT
	trap 'sg_cleanup; exit 130' INT
	trap 'sg_cleanup; exit 143' TERM
}
