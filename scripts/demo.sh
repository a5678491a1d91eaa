#!/usr/bin/env bash
# THE demo: the test IdP, a sample upstream and shardgate in front (on 127.0.0.1 by default).
#
#   scripts/demo.sh                 build, start everything, wait for Ctrl-C
#   scripts/demo.sh --smoke         same, but run a few curl checks and exit (0 = demo works)
#   scripts/demo.sh --no-build      use the existing target/release/shardgate
#   scripts/demo.sh --public-url http://HOST:9080 [--bind 0.0.0.0|127.0.0.1]
#                                   open it from another machine: HOST is how browsers reach this
#                                   one; the IdP (port 9800) and /metrics (9090) follow on HOST.
#                                   --public-url alone binds 0.0.0.0 (gateway, admin and IdP).
#
# Env: DEMO_PUBLIC_URL, DEMO_BIND (as the flags); ports DEMO_GATEWAY_PORT (9080), DEMO_ADMIN_PORT
# (9090), DEMO_IDP_PORT (9800), DEMO_UPSTREAM_PORT (18080). State (IdP keys, session secret,
# logs): DEMO_DIR (target/demo).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

smoke=0
build=1
PUBLIC_URL=${DEMO_PUBLIC_URL:-}
BIND=${DEMO_BIND:-}
while [ $# -gt 0 ]; do
	case "$1" in
	--smoke) smoke=1 ;;
	--no-build) build=0 ;;
	--public-url) PUBLIC_URL=${2:?--public-url needs a URL}; shift ;;
	--public-url=*) PUBLIC_URL=${1#*=} ;;
	--bind) BIND=${2:?--bind needs an address}; shift ;;
	--bind=*) BIND=${1#*=} ;;
	-h | --help)
		sed -n '2,15p' "$0"
		exit 0
		;;
	*) sg_die "unknown argument $1 (try --help)" ;;
	esac
	shift
done

GW_PORT=${DEMO_GATEWAY_PORT:-9080}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9090}
IDP_PORT=${DEMO_IDP_PORT:-9800}
UP_PORT=${DEMO_UPSTREAM_PORT:-18080}
DIR=${DEMO_DIR:-$SG_ROOT/target/demo}
BIN="$SG_ROOT/target/release/shardgate"

# URLs as browsers see them. With a public URL the IdP and the admin listener follow its host.
if [ -n "$PUBLIC_URL" ]; then
	PUBLIC_URL=${PUBLIC_URL%/}
	case "$PUBLIC_URL" in
	http://*) ;;
	*) sg_die "--public-url must be an http:// URL (the demo has no TLS): $PUBLIC_URL" ;;
	esac
	host=${PUBLIC_URL#http://}
	host=${host%%/*}
	case "$host" in
	\[*\]*) host=${host%%]*}] ;;
	*) host=${host%%:*} ;;
	esac
	[ -n "$host" ] || sg_die "no host in --public-url $PUBLIC_URL"
	GW_URL=$PUBLIC_URL
	IDP_URL="http://$host:$IDP_PORT"
	ADMIN_URL="http://$host:$ADMIN_PORT"
	BIND=${BIND:-0.0.0.0}
else
	BIND=${BIND:-127.0.0.1}
	show=$BIND
	[ "$show" = 0.0.0.0 ] && show=127.0.0.1
	GW_URL="http://$show:$GW_PORT"
	IDP_URL="http://$show:$IDP_PORT"
	ADMIN_URL="http://$show:$ADMIN_PORT"
fi
# Readiness waits and the smoke checks talk to the listeners on loopback.
case "$BIND" in
0.0.0.0 | 127.0.0.1) ;;
*) sg_die "--bind must be 0.0.0.0 (every interface) or 127.0.0.1, not $BIND" ;;
esac
LOCAL_GW="http://127.0.0.1:$GW_PORT"
LOCAL_IDP="http://127.0.0.1:$IDP_PORT"

for port in "$GW_PORT" "$ADMIN_PORT" "$IDP_PORT" "$UP_PORT"; do
	sg_port_open "$port" && sg_die "port $port is already in use (override with DEMO_*_PORT)"
done

"$SG_ROOT/scripts/install.sh" --demo
if [ "$build" = 1 ]; then
	if [ -x "$BIN" ]; then
		sg_log "building shardgate (release; only what changed, usually seconds)"
	else
		# Measured: ~10 core-minutes (5 minutes on 2 idle cores); a busy machine takes longer.
		cores=$(nproc 2>/dev/null || echo 2)
		est=$(((10 + cores - 1) / cores))
		[ "$est" -lt 2 ] && est=2
		sg_log "building shardgate (release) for the first time: about $est minutes on $cores idle cores; cargo's progress follows"
	fi
	started=$(date +%s)
	(cd "$SG_ROOT" && cargo build --release -p shardgate-gateway) || sg_die "cargo build failed"
	sg_log "build done in $(($(date +%s) - started)) s"
fi
[ -x "$BIN" ] || sg_die "$BIN missing (build it, or drop --no-build)"

mkdir -p "$DIR"
if [ ! -s "$DIR/idp-keys.json" ]; then
	node "$SG_ROOT/scripts/idp/genkeys.mjs" "$DIR/idp-keys.json" --kid demo-rs256 2>/dev/null
fi
# Kept across runs so browser sessions survive a demo restart.
if [ ! -s "$DIR/session-secret" ]; then
	(umask 077 && openssl rand -hex 32 >"$DIR/session-secret")
fi

# The committed config reads its addresses from these (shardgate expands ${VAR} when loading).
cp "$SG_ROOT/scripts/demo/config.yaml" "$DIR/config.yaml"
export DEMO_LISTEN="$BIND:$GW_PORT" DEMO_ADMIN_LISTEN="$BIND:$ADMIN_PORT" DEMO_UPSTREAM_PORT="$UP_PORT"
export DEMO_PUBLIC_URL="$GW_URL" DEMO_IDP_URL="$IDP_URL"

export OIDC_CLIENT_SECRET=gateway-secret
SESSION_SECRET=$(cat "$DIR/session-secret")
export SESSION_SECRET

sg_trap_cleanup

sg_spawn "$DIR/idp.log" env IDP_PORT="$IDP_PORT" IDP_HOST="$BIND" IDP_ISSUER="$IDP_URL" \
	IDP_KEYS="$DIR/idp-keys.json" \
	IDP_REDIRECT_URIS="$GW_URL/callback" IDP_POST_LOGOUT_URIS="$GW_URL/signed-out,$GW_URL/" \
	node "$SG_ROOT/scripts/idp/server.mjs"
sg_wait_ready "$DIR/idp.log" 20 "$SG_LAST_PID" >/dev/null || {
	tail -n 20 "$DIR/idp.log" >&2
	sg_die "IdP did not start"
}

sg_spawn "$DIR/upstream.log" python3 "$SG_ROOT/scripts/upstream/echo.py" --port "$UP_PORT" \
	--metrics-url "$ADMIN_URL/metrics" \
	--session-timeouts "idling_timeout=900 rolling_timeout=3600 absolute_timeout=86400"
sg_wait_port "$UP_PORT" 10 "$SG_LAST_PID" || sg_die "upstream did not start (see $DIR/upstream.log)"

"$BIN" validate -c "$DIR/config.yaml" || sg_die "shardgate rejected $DIR/config.yaml"
sg_spawn "$DIR/gateway.log" "$BIN" run -c "$DIR/config.yaml" --shards 1
sg_wait_port "$GW_PORT" 20 "$SG_LAST_PID" || {
	tail -n 20 "$DIR/gateway.log" >&2
	sg_die "gateway did not start"
}

token_cmd="curl -s -u m2m:m2m-secret -d grant_type=client_credentials -d scope=read $IDP_URL/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"

if [ "$smoke" = 1 ]; then
	fail=0
	check() { # check NAME EXPECTED ACTUAL
		if [ "$2" = "$3" ]; then
			printf 'ok   %s\n' "$1"
		else
			printf 'FAIL %s: expected %s, got %s\n' "$1" "$2" "$3"
			fail=$((fail + 1))
		fi
	}
	token=$(eval "${token_cmd/$IDP_URL/$LOCAL_IDP}")
	check "GET /api/ with an m2m token" 200 "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$LOCAL_GW/api/hello")"
	check "GET /api/ without a token" 401 "$(curl -s -o /dev/null -w '%{http_code}' "$LOCAL_GW/api/hello")"
	check "GET / in a browser without a session" 302 "$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: text/html' "$LOCAL_GW/")"
	location=$(curl -s -o /dev/null -w '%{redirect_url}' -H 'Accept: text/html' "$LOCAL_GW/")
	check "login redirect goes to the IdP" "$IDP_URL/auth" "${location%%\?*}"
	signed_out=$(curl -s -H 'Accept: text/html' "$LOCAL_GW/signed-out")
	check "the signed-out page needs no login" yes "$(grep -q 'You are signed out' <<<"$signed_out" && echo yes || echo no)"
	printf '%d passed, %d failed\n' $((5 - fail)) "$fail"
	[ "$fail" -eq 0 ]
	exit
fi

cat <<EOF

shardgate demo is running (logs in $DIR):
  open          $GW_URL/          (log in as any user, any password; "Log out" on the page)
  IdP           $IDP_URL/.well-known/openid-configuration
  upstream      http://127.0.0.1:$UP_PORT/  (echoes what the gateway forwards)
  metrics       $ADMIN_URL/metrics

  API call with a machine token:
    TOKEN=\$($token_cmd)
    curl -H "Authorization: Bearer \$TOKEN" $GW_URL/api/hello

Press Ctrl-C to stop everything.
EOF

# Stop when any of the three dies, or on Ctrl-C (the trap cleans up).
wait -n "${SG_PIDS[@]}" || true
sg_log "a demo process exited; stopping (see logs in $DIR)"
