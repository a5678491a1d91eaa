#!/usr/bin/env bash
# THE demo: the test IdP, a sample upstream and shardgate in front, all on 127.0.0.1.
#
#   scripts/demo.sh            build, start everything, wait for Ctrl-C
#   scripts/demo.sh --smoke    same, but run a few curl checks and exit (0 = demo works)
#   scripts/demo.sh --no-build use the existing target/release/shardgate
#
# Ports (env): DEMO_GATEWAY_PORT (9080), DEMO_ADMIN_PORT (9090), DEMO_IDP_PORT (9800),
# DEMO_UPSTREAM_PORT (18080). State (IdP keys, session secret, logs): DEMO_DIR (target/demo).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

smoke=0
build=1
for arg in "$@"; do
	case "$arg" in
	--smoke) smoke=1 ;;
	--no-build) build=0 ;;
	-h | --help)
		sed -n '2,10p' "$0"
		exit 0
		;;
	*) sg_die "unknown argument $arg (try --help)" ;;
	esac
done

GW_PORT=${DEMO_GATEWAY_PORT:-9080}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9090}
IDP_PORT=${DEMO_IDP_PORT:-9800}
UP_PORT=${DEMO_UPSTREAM_PORT:-18080}
DIR=${DEMO_DIR:-$SG_ROOT/target/demo}
GW_URL="http://127.0.0.1:$GW_PORT"
IDP_URL="http://127.0.0.1:$IDP_PORT"
BIN="$SG_ROOT/target/release/shardgate"

for port in "$GW_PORT" "$ADMIN_PORT" "$IDP_PORT" "$UP_PORT"; do
	sg_port_open "$port" && sg_die "port $port is already in use (override with DEMO_*_PORT)"
done

"$SG_ROOT/scripts/install.sh" --demo
if [ "$build" = 1 ]; then
	sg_log "building shardgate (release)"
	(cd "$SG_ROOT" && cargo build --release --quiet -p shardgate-gateway) || sg_die "cargo build failed"
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

# The committed config names the default ports; rewrite them when overridden.
sed -e "s/127\.0\.0\.1:9080/127.0.0.1:$GW_PORT/g" \
	-e "s/127\.0\.0\.1:9090/127.0.0.1:$ADMIN_PORT/g" \
	-e "s/127\.0\.0\.1:9800/127.0.0.1:$IDP_PORT/g" \
	-e "s/127\.0\.0\.1:18080/127.0.0.1:$UP_PORT/g" \
	"$SG_ROOT/scripts/demo/config.yaml" >"$DIR/config.yaml"

export OIDC_CLIENT_SECRET=gateway-secret
SESSION_SECRET=$(cat "$DIR/session-secret")
export SESSION_SECRET

sg_trap_cleanup

sg_spawn "$DIR/idp.log" env IDP_PORT="$IDP_PORT" IDP_KEYS="$DIR/idp-keys.json" \
	IDP_REDIRECT_URIS="$GW_URL/callback" IDP_POST_LOGOUT_URIS="$GW_URL/" \
	node "$SG_ROOT/scripts/idp/server.mjs"
sg_wait_ready "$DIR/idp.log" 20 "$SG_LAST_PID" >/dev/null || {
	tail -n 20 "$DIR/idp.log" >&2
	sg_die "IdP did not start"
}

sg_spawn "$DIR/upstream.log" python3 "$SG_ROOT/scripts/upstream/echo.py" --port "$UP_PORT"
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
	token=$(eval "$token_cmd")
	check "GET /api/ with an m2m token" 200 "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$GW_URL/api/hello")"
	check "GET /api/ without a token" 401 "$(curl -s -o /dev/null -w '%{http_code}' "$GW_URL/api/hello")"
	check "GET / in a browser without a session" 302 "$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: text/html' "$GW_URL/")"
	location=$(curl -s -o /dev/null -w '%{redirect_url}' -H 'Accept: text/html' "$GW_URL/")
	check "login redirect goes to the IdP" "$IDP_URL/auth" "${location%%\?*}"
	printf '%d passed, %d failed\n' $((4 - fail)) "$fail"
	[ "$fail" -eq 0 ]
	exit
fi

cat <<EOF

shardgate demo is running (logs in $DIR):
  open          $GW_URL/          (log in as any user, any password; /logout to log out)
  IdP           $IDP_URL/.well-known/openid-configuration
  upstream      http://127.0.0.1:$UP_PORT/  (echoes what the gateway forwards)
  admin         http://127.0.0.1:$ADMIN_PORT/metrics

  API call with a machine token:
    TOKEN=\$($token_cmd)
    curl -H "Authorization: Bearer \$TOKEN" $GW_URL/api/hello

Press Ctrl-C to stop everything.
EOF

# Stop when any of the three dies, or on Ctrl-C (the trap cleans up).
wait -n "${SG_PIDS[@]}" || true
sg_log "a demo process exited; stopping (see logs in $DIR)"
