#!/usr/bin/env python3
"""Soak: minutes of mixed S0-S4 traffic against one shardgate; 0 errors, RSS and fds flat.

    python3 loadtest/soak.py [--minutes 10] [--connections 32] [--delay-ms 2] [--shards 1]

One gateway with five routes (/s0 plain, /s1 one bearer JWT, /s2 1000 JWTs, /s3 1000 session
cookies, /s4 an opaque token introspected at the test IdP), one nginx upstream and the test IdP,
set up as loadtest/harness.py sets up scenarios S0-S4 (its fixtures are reused). One wrk
(`soak.lua`) sends the five kinds round-robin for --minutes; every second the gateway's RSS
(VmRSS) and open file descriptors (/proc/PID/fd) are sampled. Writes
loadtest/results/soak-<ts>.{csv,svg,md}; exits 1 if any request failed (socket error, timeout,
or any status other than 2xx) or the gateway died. Loopback only; every process is stopped at
the end. The 1000 session cookies need target/release/session_cookies (loadtest/run.sh builds it).
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = harness.HERE
ROOT = harness.ROOT
# Own ports (harness.py uses 180xx), so a soak and a load run can't collide.
UPSTREAM_PORT = 18181
GATEWAY_PORT = 18185
ADMIN_PORT = 19185
IDP_PORT = 18190
S3_SECRET = "loadtest-session-secret-0123456789"


def gateway_yaml(shards, pub_pem):
    disc = "http://127.0.0.1:%d/.well-known/openid-configuration" % IDP_PORT
    jwt = (
        "        client_id: loadtest\n"
        "        discovery: %s\n"
        "        bearer_only: true\n"
        "        token_signing_alg_values_expected: RS256\n"
        "        claim_validator:\n"
        "          issuer:\n"
        "            valid_issuers: [\"%s\"]\n"
        "        public_key: |\n%s\n" % (disc, harness.JWT_ISS, harness.indent_pem(pub_pem, 10)))
    session = (
        "        client_id: gateway\n"
        "        client_secret: gateway-secret\n"
        "        discovery: %s\n"
        "        redirect_uri: http://127.0.0.1:%d/s3/callback\n"
        "        session:\n"
        "          secret: %s\n" % (disc, GATEWAY_PORT, S3_SECRET))
    opaque = (
        "        client_id: gateway\n"
        "        client_secret: gateway-secret\n"
        "        discovery: %s\n"
        "        bearer_only: true\n" % disc)
    routes = "routes:\n"
    for rid, plugin in (("s0", None), ("s1", jwt), ("s2", jwt), ("s3", session), ("s4", opaque)):
        routes += "  - id: %s\n    uri: /%s/*\n    upstream_id: up\n" % (rid, rid)
        if plugin:
            routes += "    plugins:\n      openid-connect:\n" + plugin
    return """\
gateway:
  listen: ["127.0.0.1:%d"]
  admin: { listen: "127.0.0.1:%d" }
  shards: %d
  access_log: false
upstreams:
  - id: up
    type: roundrobin
    nodes: { "127.0.0.1:%d": 1 }
    keepalive_pool: { size: 320, idle_timeout: 60 }
%s""" % (GATEWAY_PORT, ADMIN_PORT, shards, UPSTREAM_PORT, routes)


def upstream_conf(workdir):
    server = """\
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / { return 200 "ok\\n"; }
    }""" % UPSTREAM_PORT
    return harness.nginx_conf(workdir, "upstream", server, 1)


def tokens():
    d = os.path.join(ROOT, "target", "loadtest", "tokens")
    path = os.path.join(d, "tokens.txt")
    if not (os.path.exists(path) and time.time() - os.path.getmtime(path) < 12 * 3600):
        harness.log("generating RS256 key and 1000 tokens")
        subprocess.run([sys.executable, os.path.join(HERE, "tokens.py"), d, "--count", "1000", "--iss",
                        harness.JWT_ISS, "--aud", harness.JWT_AUD, "--ttl", "86400"], check=True)
    return d


def opaque_token():
    import base64

    req = urllib.request.Request("http://127.0.0.1:%d/token" % IDP_PORT, data=b"grant_type=client_credentials",
                                 headers={"Authorization": "Basic " + base64.b64encode(b"m2m-opaque:m2m-opaque-secret").decode(),
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=5) as res:
        return json.load(res)["access_token"]


def sample(pid):
    """(RSS KiB, open fds) of pid, or None once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        return rss, len(os.listdir("/proc/%d/fd" % pid))
    except (OSError, StopIteration):
        return None


def svg_plot(rows, title):
    """Two stacked line charts (RSS MiB, open fds) over seconds, as a standalone SVG."""
    w, h, left, top, gap = 760, 180, 70, 40, 50
    ts = [r[0] for r in rows]
    t_max = max(ts[-1], 1)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">'
           % (w + left + 20, top + 2 * h + gap + 40),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="20" font-size="14">%s</text>' % (left, title)]
    for k, (label, col, color) in enumerate((("RSS (MiB)", 1, "#1f77b4"), ("open fds", 2, "#d62728"))):
        y0 = top + k * (h + gap)
        vals = [r[col] for r in rows]
        hi = max(vals) * 1.1 or 1
        out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>' % (left, y0, w, h))
        for frac in (0, 0.5, 1):
            y = y0 + h - frac * h
            out.append('<text x="%d" y="%.1f" text-anchor="end">%.0f</text>' % (left - 6, y + 4, hi * frac))
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>' % (left, left + w, y, y))
        out.append('<text x="%d" y="%d">%s</text>' % (left + 6, y0 + 16, label))
        pts = " ".join("%.1f,%.1f" % (left + t / t_max * w, y0 + h - v / hi * h) for t, v in zip(ts, vals))
        out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (color, pts))
    ybase = top + 2 * h + gap
    for frac in (0, 0.25, 0.5, 0.75, 1):
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>' % (left + frac * w, ybase + 16, t_max * frac))
    out.append('<text x="%d" y="%d" text-anchor="middle">seconds</text>' % (left + w / 2, ybase + 34))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def check(port, path, headers):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            return res.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return str(e)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--delay-ms", type=int, default=2, help="pause before each request on a connection (0: flat out)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--shardgate", default=os.path.join(ROOT, "target", "release", "shardgate"))
    ap.add_argument("--session-cookies", default=os.path.join(ROOT, "target", "release", "session_cookies"))
    args = ap.parse_args()
    if not 0.1 <= args.minutes <= 120 or not 1 <= args.connections <= 1000:
        raise SystemExit("--minutes 0.1..120, --connections 1..1000")
    for tool in ("wrk", "nginx", "node", args.shardgate, args.session_cookies):
        if not shutil.which(tool):
            raise SystemExit("%s not found (loadtest/run.sh builds the binaries; scripts/install.sh the tools)" % tool)
    busy = [p for p in (UPSTREAM_PORT, GATEWAY_PORT, ADMIN_PORT, IDP_PORT) if harness.port_open(p)]
    if busy:
        raise SystemExit("ports already in use: %s (another soak?)" % busy)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    resdir = os.path.join(HERE, "results")
    workdir = os.path.join(resdir, "soak-" + stamp)
    os.makedirs(workdir, exist_ok=True)
    procs = harness.Procs(workdir)
    try:
        tok = tokens()
        cookies = os.path.join(workdir, "cookies.txt")
        subprocess.run([args.session_cookies, cookies, "1000", S3_SECRET, "http://127.0.0.1:%d" % IDP_PORT], check=True)
        with open(os.path.join(workdir, "upstream.conf"), "w") as f:
            f.write(upstream_conf(workdir))
        up = procs.start("upstream", ["nginx", "-p", workdir, "-c", os.path.join(workdir, "upstream.conf"),
                                      "-e", os.path.join(workdir, "upstream-error.log")])
        idp = procs.start("idp", ["node", os.path.join(ROOT, "scripts", "idp", "server.mjs")],
                          dict(os.environ, IDP_PORT=str(IDP_PORT), IDP_OPAQUE_TTL="86400", IDP_AT_TTL="86400"))
        if not harness.wait_port(UPSTREAM_PORT, up) or not harness.wait_port(IDP_PORT, idp, 30):
            raise SystemExit("upstream or IdP did not start (logs in %s)" % harness.rel(workdir))
        conf = os.path.join(workdir, "gateway.yaml")
        with open(conf, "w") as f:
            f.write(gateway_yaml(args.shards, open(os.path.join(tok, "pub.pem")).read()))
        gw = procs.start("gateway", [args.shardgate, "run", "-c", conf, "--shards", str(args.shards)])
        if not harness.wait_port(GATEWAY_PORT, gw) or not harness.wait_ready(ADMIN_PORT, 30):
            raise SystemExit("gateway not ready (see %s/gateway.log)" % harness.rel(workdir))
        jwt = open(os.path.join(tok, "token.txt")).read().strip()
        opaque = opaque_token()
        first_cookie = open(cookies).readline().strip()
        for path, headers in (("/s0/", {}), ("/s1/", {"Authorization": "Bearer " + jwt}),
                              ("/s3/", {"Cookie": first_cookie, "Accept": "text/html"}),
                              ("/s4/", {"Authorization": "Bearer " + opaque})):
            status = check(GATEWAY_PORT, path, headers)
            if status != 200:
                raise SystemExit("%s answered %s before load (see %s/gateway.log)" % (path, status, harness.rel(workdir)))

        seconds = int(args.minutes * 60)
        env = dict(os.environ, SG_SOAK_JWT=jwt, SG_SOAK_JWTS=os.path.join(tok, "tokens.txt"),
                   SG_SOAK_COOKIES=cookies, SG_SOAK_OPAQUE=opaque, SG_SOAK_DELAY_MS=str(args.delay_ms))
        wrk_out = open(os.path.join(workdir, "wrk.out"), "w+")
        wrk = subprocess.Popen(["wrk", "-t1", "-c%d" % args.connections, "-d%ds" % seconds, "--timeout", "10s",
                                "-s", os.path.join(HERE, "soak.lua"), "http://127.0.0.1:%d/" % GATEWAY_PORT],
                               stdout=wrk_out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        harness.log("soak: %d s, %d connections, delay %d ms; sampling gateway pid %d"
                    % (seconds, args.connections, args.delay_ms, gw.pid))
        rows, t0 = [], time.monotonic()
        deadline = t0 + seconds + 60
        while wrk.poll() is None and time.monotonic() < deadline:
            s = sample(gw.pid)
            if s is None:
                break
            rows.append((round(time.monotonic() - t0, 1), s[0] / 1024.0, s[1]))
            time.sleep(max(0.0, t0 + len(rows) - time.monotonic()))
        if wrk.poll() is None:
            procs.procs.append(wrk)  # stopped below, by its own process group
            raise SystemExit("wrk did not finish in time")
        wrk_out.seek(0)
        text = wrk_out.read()
        line = next((ln for ln in text.splitlines() if ln.startswith("SGSOAK ")), None)
        if line is None:
            raise SystemExit("wrk printed no result: %s" % text[-500:])
        r = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
        alive = gw.poll() is None
    finally:
        procs.stop_all()

    base = os.path.join(resdir, "soak-" + stamp)
    with open(base + ".csv", "w") as f:
        f.write("t_s,rss_mib,fds\n")
        for t, rss, fds in rows:
            f.write("%.1f,%.2f,%d\n" % (t, rss, fds))
    errors = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    minute = [x for x in rows if x[0] <= 60] or rows
    last = [x for x in rows if x[0] >= rows[-1][0] - 60] or rows
    rss_first, rss_last = statistics.median(x[1] for x in minute), statistics.median(x[1] for x in last)
    fds = [x[2] for x in rows]
    title = "shardgate soak %s: %d requests, %d errors, mixed S0-S4" % (stamp, r["requests"], errors)
    with open(base + ".svg", "w") as f:
        f.write(svg_plot(rows, title))
    summary = "\n".join([
        "- command: `python3 loadtest/soak.py --minutes %g --connections %d --delay-ms %d --shards %d`"
        % (args.minutes, args.connections, args.delay_ms, args.shards),
        "- %d requests in %d s (%.0f req/s, p99 %.1f ms), round-robin over /s0-/s4" % (
            r["requests"], seconds, r["requests"] / max(seconds, 1), r["p99"] / 1000),
        "- errors: %d non-2xx, %d connect, %d read, %d write, %d timeout; gateway %s at the end" % (
            r["non2xx"], r["connect"], r["read"], r["write"], r["timeout"], "alive" if alive else "DEAD"),
        "- RSS (MiB): median of the first minute %.1f, of the last minute %.1f (%+.1f), max %.1f" % (
            rss_first, rss_last, rss_last - rss_first, max(x[1] for x in rows)),
        "- open fds: min %d, max %d, at the end %d (%d samples, one per second)" % (min(fds), max(fds), fds[-1], len(rows)),
        ""])
    with open(base + ".md", "w") as f:
        f.write(summary)
    print(summary)
    harness.log("wrote %s.{csv,svg,md}" % harness.rel(base))
    return 0 if errors == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
