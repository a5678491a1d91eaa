#!/usr/bin/env python3
"""Faults under load: a failing IdP, failing upstreams, 10,000 idle keep-alive connections.

    python3 loadtest/faults.py [idp] [upstream] [conns]     # default: all three, ~2 minutes

idp       wrk sends bearer JWTs (one token, signed by a key the gateway has cached) while the IdP's
          discovery and JWKS endpoints hang, answer 500, answer garbage, then rotate keys (12 s
          each). Tokens with never-seen kids, one a second, force JWKS refetches into each fault
          (`timeout: 1`). Asserts: 0 failed wrk requests, each fault was actually served to the
          gateway, no probe hung, and after the rotation a token signed by the new key is accepted.
upstream  an upstream that resets before the response head, resets mid-body, closes every
          keep-alive connection right after its response, or is slower than `timeout.read`.
          Asserts: GETs are retried to a healthy node, POSTs are not retried and get 502, a
          slow upstream gets 504, a reset mid-body reaches the client as a truncated body and a
          closed connection (never a complete wrong response, never a hang), and the pool never
          hands out a closed connection (POSTs, which can't be retried, all succeed against the
          upstream that closes after every response).
conns     10,000 concurrent keep-alive connections on one shard, each one request answered and
          then left open: gateway RSS and fds before, with all open, and after closing.

The IdP and the failing upstream are purpose-built fakes in this process: a real IdP (the
oidc-provider fixture) or nginx can't be made to hang, send garbage, or reset mid-body on demand.
The healthy upstream is nginx, as in loadtest/harness.py. Loopback only; every phase is bounded in
time and every process is stopped at the end. Exit 1 if any assertion fails. Writes
loadtest/results/faults-<ts>.md.
"""

import argparse
import datetime
import http.client
import json
import os
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import tokens as tokmod  # noqa: E402

HERE = harness.HERE
ROOT = harness.ROOT
# Own ports (harness.py uses 180xx, soak.py 181xx).
NGINX_PORT = 18281
FAKE_UP_PORT = 18282
GATEWAY_PORT = 18285
ADMIN_PORT = 19285
FAKE_IDP_PORT = 18290
ISSUER = "http://127.0.0.1:%d" % FAKE_IDP_PORT
CLIENT_TIMEOUT = 15.0  # a request that takes longer than this counts as a hang


def log(msg):
    harness.log(msg)


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, what):
        log("%s %s" % ("ok  " if ok else "FAIL", what))
        if not ok:
            self.items.append(what)
        return ok


# ---------------------------------------------------------------- the fake IdP


class FakeIdp:
    """Discovery + JWKS whose behaviour switches on demand: ok, hang, 500, garbage, rotated."""

    def __init__(self, jwk_a, jwk_b):
        self.mode = "ok"
        self.served = {}  # mode -> requests answered (or hung) in that mode
        self.jwk_a, self.jwk_b = jwk_a, jwk_b
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def do_GET(self):
                mode = idp.mode
                idp.served[mode] = idp.served.get(mode, 0) + 1
                if mode == "hang":
                    # Hold the request while the fault lasts (bounded), then drop it unanswered.
                    end = time.monotonic() + 20
                    while idp.mode == "hang" and time.monotonic() < end:
                        time.sleep(0.05)
                    self.close_connection = True
                    return
                if mode == "500":
                    return self.send(500, b"internal error")
                if mode == "garbage":
                    return self.send(200, b"\x00\xffnot json{{", "application/json")
                if self.path.startswith("/.well-known/openid-configuration"):
                    doc = {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks",
                           "authorization_endpoint": ISSUER + "/auth", "token_endpoint": ISSUER + "/token",
                           "id_token_signing_alg_values_supported": ["RS256"],
                           "response_types_supported": ["code"], "subject_types_supported": ["public"]}
                    return self.send(200, json.dumps(doc).encode(), "application/json")
                if self.path.startswith("/jwks"):
                    keys = [idp.jwk_b, idp.jwk_a] if mode == "rotated" else [idp.jwk_a]
                    return self.send(200, json.dumps({"keys": keys}).encode(), "application/json")
                self.send(404, b"not found")

            def send(self, status, body, ctype="text/plain"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                # The gateway honours max-age: every JWKS answer expires in a second.
                self.send_header("Cache-Control", "max-age=1")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", FAKE_IDP_PORT), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.mode = "ok"
        self.server.shutdown()
        self.server.server_close()


def rsa_jwk(key_dir, kid):
    p = tokmod.rsa_params(os.path.join(key_dir, "key.pem"))
    n = p["n"].to_bytes((p["n"].bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": tokmod.b64url(n), "e": "AQAB"}


def make_key(key_dir, kid):
    """An RSA key (made once, under target/) and one token it signs, iss = the fake IdP."""
    subprocess.run([sys.executable, os.path.join(HERE, "tokens.py"), key_dir, "--count", "1", "--iss", ISSUER,
                    "--aud", "faults", "--ttl", "86400", "--kid", kid], check=True, capture_output=True)
    return rsa_jwk(key_dir, kid), open(os.path.join(key_dir, "token.txt")).read().strip()


# ---------------------------------------------------------------- the fake upstream


def linger_reset(conn):
    """Close with RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class FakeUpstream:
    """Raw-socket HTTP/1.1 server, one thread per connection; the path picks the fault:
    /ok, /early-close (answers keep-alive, then closes at once), /reset-head (RST, no answer),
    /reset-body (head + part of the body, then RST), /slow (answers after 3 s)."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.connections = 0
        self.requests = 0
        self.closed_early = 0  # /early-close connections closed so far
        self.stopped = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        conn.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        conn.close()
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        conn.close()
                        return
                    buf += chunk
                buf = buf[length:]
                self.requests += 1
                if "/reset-head" in path:
                    return linger_reset(conn)
                if "/reset-body" in path:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                    time.sleep(0.05)
                    return linger_reset(conn)
                if "/slow" in path:
                    time.sleep(3)
                body = b"ok " + path.encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                if "/early-close" in path:
                    # Keep-alive was not refused, yet the connection ends now: what an upstream
                    # with a short keepalive_timeout does to an idle pooled connection.
                    conn.close()
                    self.closed_early += 1
                    return
        except OSError:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.sock.close()


# ---------------------------------------------------------------- gateway and nginx


def nginx_upstream(procs, workdir):
    server = """\
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / { return 200 "ok\\n"; }
    }""" % NGINX_PORT
    conf = os.path.join(workdir, "upstream.conf")
    with open(conf, "w") as f:
        f.write(harness.nginx_conf(workdir, "upstream", server, 1))
    p = procs.start("upstream", ["nginx", "-p", workdir, "-c", conf, "-e", os.path.join(workdir, "upstream-error.log")])
    if not harness.wait_port(NGINX_PORT, p):
        raise SystemExit("nginx upstream did not start (see %s)" % harness.rel(workdir))
    return p


def start_gateway(procs, workdir, name, body, shards=1):
    conf = os.path.join(workdir, name + ".yaml")
    with open(conf, "w") as f:
        f.write("gateway:\n  listen: [\"127.0.0.1:%d\"]\n  admin: { listen: \"127.0.0.1:%d\" }\n"
                "  shards: %d\n  access_log: false\n%s" % (GATEWAY_PORT, ADMIN_PORT, shards, body))
    args = ARGS
    check = subprocess.run([args.shardgate, "validate", "-c", conf], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit("config %s rejected: %s" % (conf, (check.stderr or check.stdout).strip()[:300]))
    gw = procs.start("gateway-" + name, [args.shardgate, "run", "-c", conf, "--shards", str(shards)])
    if not harness.wait_port(GATEWAY_PORT, gw) or not harness.wait_ready(ADMIN_PORT, 30):
        raise SystemExit("gateway %s not ready (see %s/gateway-%s.log)" % (name, harness.rel(workdir), name))
    return gw


def request(method, path, headers=None, body=None):
    """(status, body), or (None, "head: <error>") when no response head came, or
    (None, "body: <error>") when the head came and the body broke off. A fresh connection each."""
    c = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=CLIENT_TIMEOUT)
    stage = "head"
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        stage = "body"
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        return None, "%s: %s %s" % (stage, type(e).__name__, e)
    finally:
        c.close()


def wrk(path, seconds, connections, headers=()):
    argv = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s", "-s",
            os.path.join(HERE, "wrk.lua")]
    for h in headers:
        argv += ["-H", h]
    argv.append("http://127.0.0.1:%d%s" % (GATEWAY_PORT, path))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wrk_result(p, seconds):
    out, _ = p.communicate(timeout=seconds + 60)
    line = next((ln for ln in out.splitlines() if ln.startswith("SGRESULT ")), None)
    if line is None:
        raise SystemExit("wrk printed no result: %s" % out[-400:])
    r = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


# ---------------------------------------------------------------- phases


def phase_idp(procs, workdir, fails, report):
    keys = os.path.join(ROOT, "target", "loadtest", "faults-keys")
    jwk_a, token_a = make_key(os.path.join(keys, "a"), "faults-a")
    jwk_b, token_b = make_key(os.path.join(keys, "b"), "faults-b")
    idp = FakeIdp(jwk_a, jwk_b)
    try:
        nginx_upstream(procs, workdir)
        gw = start_gateway(procs, workdir, "idp", """\
upstreams:
  - id: up
    nodes: { "127.0.0.1:%d": 1 }
routes:
  - id: api
    uri: /api/*
    upstream_id: up
    plugins:
      openid-connect:
        client_id: faults
        discovery: %s/.well-known/openid-configuration
        bearer_only: true
        use_jwks: true
        jwk_expires_in: 1
        timeout: 1
""" % (NGINX_PORT, ISSUER))
        auth = {"Authorization": "Bearer " + token_a}
        status, body = request("GET", "/api/x", auth)
        if not fails.check(status == 200, "idp: token A accepted before load (got %s %r)" % (status, body[:100])):
            return
        # The gateway refetches JWKS on its own at most every 30 s (and backs off after failures), so
        # each fault is met on purpose: once a second a probe token with a kid never seen before asks
        # for a forced refetch (the gateway allows one per 10 s; a fault lasts 12 s). Probes get 401
        # (or 503 while the IdP fails); only their time is checked: no probe may hang.
        params = tokmod.rsa_params(os.path.join(keys, "a", "key.pem"))
        now = int(time.time())
        schedule = [("ok", 4), ("hang", 12), ("ok", 3), ("500", 12), ("ok", 3), ("garbage", 12), ("ok", 3),
                    ("rotated", 12)]
        total = sum(s for _, s in schedule)
        w = wrk("/api/x", total, 16, ["Authorization: Bearer " + token_a])
        end, probes, probe_slowest, probe_status = time.monotonic(), 0, 0.0, {}
        for mode, secs in schedule:
            idp.mode = mode
            log("idp: %s for %d s" % (mode, secs))
            end += secs
            # No probe during the rotation: the new key's first token gets the refetch below.
            while mode in ("hang", "500", "garbage") and time.monotonic() < end - 1:
                probes += 1
                probe = tokmod.make_jwt(params, {"iss": ISSUER, "aud": "faults", "sub": "probe", "iat": now,
                                                 "exp": now + 3600}, "probe-%d-%d" % (now, probes))
                t = time.monotonic()
                status, _ = request("GET", "/api/probe", {"Authorization": "Bearer " + probe})
                probe_slowest = max(probe_slowest, time.monotonic() - t)
                probe_status[status] = probe_status.get(status, 0) + 1
                time.sleep(max(0.0, 1 - (time.monotonic() - t)))
            time.sleep(max(0.0, end - time.monotonic() - (1 if mode == "rotated" else 0)))
        # Still rotated: a token signed by the new key (unknown kid until refetched) is accepted.
        status_b, body_b = request("GET", "/api/x", {"Authorization": "Bearer " + token_b})
        r = wrk_result(w, total)
        idp.mode = "ok"
        fails.check(r["errors"] == 0 and r["requests"] > 0,
                    "idp: %d requests during hang/500/garbage/rotation, %d failed (connect %d read %d write %d "
                    "status %d timeout %d)" % (r["requests"], r["errors"], r["connect"], r["read"], r["write"],
                                               r["status"], r["timeout"]))
        for mode in ("hang", "500", "garbage", "rotated"):
            fails.check(idp.served.get(mode, 0) > 0, "idp: the gateway met the %s fault (%d IdP requests)"
                        % (mode, idp.served.get(mode, 0)))
        fails.check(probe_slowest < 5, "idp: %d unknown-kid probes answered %s, slowest in %.1f s"
                    % (probes, probe_status, probe_slowest))
        fails.check(status_b == 200, "idp: after rotation, a token signed by the new key is accepted (got %s)" % status_b)
        fails.check(gw.poll() is None, "idp: gateway alive")
        report.append("| IdP faults during load: JWKS + discovery hang, 500, garbage (12 s each), then key "
                      "rotation (12 s); refetches forced by unknown-kid probes | %d S1 requests (wrk -c16, %d s), %d failed; "
                      "IdP requests met per fault: hang %d, 500 %d, garbage %d, rotated %d; new-key token after "
                      "rotation: %s |" % (r["requests"], total, r["errors"], idp.served.get("hang", 0),
                                          idp.served.get("500", 0), idp.served.get("garbage", 0),
                                          idp.served.get("rotated", 0), status_b))
    finally:
        procs.stop_all()
        idp.stop()


def phase_upstream(procs, workdir, fails, report):
    fake = FakeUpstream(FAKE_UP_PORT)
    try:
        nginx_upstream(procs, workdir)
        gw = start_gateway(procs, workdir, "upstream", """\
upstreams:
  - id: fake
    nodes: { "127.0.0.1:%(fake)d": 1 }
    timeout: { connect: 2, send: 2, read: 1 }
    keepalive_pool: { size: 32, idle_timeout: 60 }
  - id: pair
    nodes: { "127.0.0.1:%(fake)d": 1, "127.0.0.1:%(nginx)d": 1 }
    retries: 1
    timeout: { connect: 2, send: 2, read: 1 }
    health: { failures: 0 }  # never cooled down: every request the balancer gives it meets the fault
routes:
  - id: pair
    uri: /pair/*
    upstream_id: pair
  - id: fake
    uri: /*
    upstream_id: fake
""" % {"fake": FAKE_UP_PORT, "nginx": NGINX_PORT})
        rows = []

        def run(label, method, path, n, ok, gap=0.0, body=None, before=None):
            seen, bad, t_max = {}, [], 0.0
            for i in range(n):
                if before:
                    before(i)
                t = time.monotonic()
                status, data = request(method, "%s/%d" % (path, i), body=body)
                t_max = max(t_max, time.monotonic() - t)
                key = status if status is not None else " ".join(data.split()[:2])
                seen[key] = seen.get(key, 0) + 1
                if not ok(status, data, "%s/%d" % (path, i)):
                    bad.append((status, data[:80] if isinstance(data, bytes) else data[:120]))
                if gap:
                    time.sleep(gap)
            desc = ", ".join("%s x%d" % (k, v) for k, v in sorted(seen.items(), key=str))
            fails.check(not bad, "upstream: %s: %s (slowest %.2f s)%s" % (label, desc, t_max,
                                                                          "; unexpected: %s" % bad[:3] if bad else ""))
            rows.append("%s: %s" % (label, desc))

        def right(status, data, path):
            return status == 200 and data == b"ok " + path.encode()

        # The pool: every response is followed by the upstream closing. Each request waits until the
        # upstream has closed the previous connection (so its FIN is there to see, as after any idle
        # time); POST can't be retried, so a dead pooled connection handed out shows as a 502.
        def after_close(base):
            def wait(i):
                end = time.monotonic() + 5
                while fake.closed_early < base + i and time.monotonic() < end:
                    time.sleep(0.001)
            return wait

        c0 = fake.connections
        run("POST /early-close x200", "POST", "/early-close", 200, right, body=b"hello",
            before=after_close(fake.closed_early))
        run("GET /early-close x200", "GET", "/early-close", 200, right, before=after_close(fake.closed_early))
        fails.check(fake.connections - c0 >= 400, "upstream: a new upstream connection per request after early "
                    "closes (%d connections for 400 requests)" % (fake.connections - c0))
        # Under concurrency the FIN can race the next checkout; GETs may be retried, never fail.
        w = wrk("/early-close", 5, 8)
        r = wrk_result(w, 5)
        fails.check(r["errors"] == 0, "upstream: wrk GET /early-close 5 s -c8: %d requests, %d errors"
                    % (r["requests"], r["errors"]))
        rows.append("wrk GET /early-close 5 s -c8: %d requests, %d errors" % (r["requests"], r["errors"]))
        run("GET /reset-head x20 (one node)", "GET", "/reset-head", 20, lambda s, d, p: s == 502)
        run("POST /reset-head x20 (one node)", "POST", "/reset-head", 20, lambda s, d, p: s == 502, body=b"x")
        run("GET /pair/reset-head x40 (reset node + nginx, retries 1)", "GET", "/pair/reset-head", 40,
            lambda s, d, p: s == 200 and d == b"ok\n")
        run("POST /pair/reset-head x40", "POST", "/pair/reset-head", 40,
            lambda s, d, p: s == 502 or (s == 200 and d == b"ok\n"), body=b"x")
        run("GET /slow x5 (3 s > timeout.read 1 s)", "GET", "/slow", 5, lambda s, d, p: s == 504)
        run("POST /slow x5", "POST", "/slow", 5, lambda s, d, p: s == 504, body=b"x")

        def truncated(status, data, path):
            # Head already sent: the client must see a short body on a closed connection
            # (cut by FIN or RST), or a 502 if the head was held back; never a timeout.
            return status == 502 or (status is None and data.startswith("body:") and "timed out" not in data)

        run("GET /reset-body x10 (RST after 1000 of 100000 bytes)", "GET", "/reset-body", 10, truncated)
        run("GET /ok x200 after all faults", "GET", "/ok", 200, right)
        fails.check(gw.poll() is None, "upstream: gateway alive")
        report.append("| Upstream faults: " + "; ".join(rows) + " |")
    finally:
        procs.stop_all()
        fake.stop()


def rss_fds(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def phase_conns(procs, workdir, fails, report, count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # This client and the gateway (which inherits the limit) each hold `count` sockets and a few more.
    want = count + 4000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want) if hard != resource.RLIM_INFINITY else hard))
    except (ValueError, OSError) as e:
        fails.check(False, "conns: cannot raise RLIMIT_NOFILE to %d (hard %d): %s" % (want, hard, e))
        return
    try:
        nginx_upstream(procs, workdir)
        gw = start_gateway(procs, workdir, "conns", """\
  limits: { max_connections: %d, idle_timeout: 120 }
upstreams:
  - id: up
    nodes: { "127.0.0.1:%d": 1 }
routes:
  - id: all
    uri: /*
    upstream_id: up
""" % (count + 1000, NGINX_PORT))
        for _ in range(200):
            request("GET", "/warm")
        time.sleep(1)
        base = rss_fds(gw.pid)
        sel = selectors.DefaultSelector()
        socks, answered, failed = [], 0, 0
        req = b"GET /conn HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        deadline = time.monotonic() + 120
        batch = 500  # bounds how many requests are in flight to the upstream at once
        while (len(socks) < count or answered + failed < len(socks)) and time.monotonic() < deadline:
            if len(socks) < count and len(socks) - answered - failed < batch:
                for _ in range(min(batch, count - len(socks))):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", GATEWAY_PORT))
                    sel.register(s, selectors.EVENT_WRITE, [b""])
                    socks.append(s)
            for key, ev in sel.select(timeout=1):
                s, acc = key.fileobj, key.data
                if ev & selectors.EVENT_WRITE:
                    try:
                        s.send(req)
                        sel.modify(s, selectors.EVENT_READ, acc)
                    except OSError:
                        failed += 1
                        sel.unregister(s)
                    continue
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                acc[0] += chunk
                if not chunk:
                    failed += 1
                    sel.unregister(s)
                elif acc[0].startswith(b"HTTP/1.1 200") and acc[0].endswith(b"ok\n"):
                    answered += 1
                    sel.unregister(s)
        time.sleep(2)
        held = rss_fds(gw.pid)
        open_now = sum(1 for s in socks if s.fileno() >= 0)
        per_conn = (held[0] - base[0]) * 1024.0 / max(answered, 1)
        fails.check(answered == count and failed == 0,
                    "conns: %d connections opened, %d answered 200, %d failed" % (len(socks), answered, failed))
        fails.check(held[1] >= base[1] + answered, "conns: the gateway holds them all (%d fds, was %d)"
                    % (held[1], base[1]))
        for s in socks:
            s.close()
        sel.close()
        time.sleep(3)
        after = rss_fds(gw.pid)
        fails.check(gw.poll() is None, "conns: gateway alive")
        log("conns: RSS %d KiB -> %d KiB with %d open (%.0f bytes per connection) -> %d KiB after closing; "
            "fds %d -> %d -> %d" % (base[0], held[0], open_now, per_conn, after[0], base[1], held[1], after[1]))
        report.append("| %d concurrent keep-alive connections on one shard (each one request answered, then "
                      "held open) | %d answered, %d failed; RSS %.1f -> %.1f MiB = %.0f bytes per connection; "
                      "fds %d -> %d; after closing: %.1f MiB, %d fds |" % (
                          count, answered, failed, base[0] / 1024, held[0] / 1024, per_conn, base[1], held[1],
                          after[0] / 1024, after[1]))
    finally:
        procs.stop_all()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


ARGS = None


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phases", nargs="*", help="idp, upstream, conns (default: all)")
    ap.add_argument("--connections", type=int, default=10000, help="conns phase: how many (max 30000)")
    ap.add_argument("--shardgate", default=os.path.join(ROOT, "target", "release", "shardgate"))
    ARGS = args = ap.parse_args()
    args.phases = args.phases or ["idp", "upstream", "conns"]
    if any(p not in ("idp", "upstream", "conns") for p in args.phases):
        raise SystemExit("phases: idp, upstream, conns")
    if not 1 <= args.connections <= 30000:
        raise SystemExit("--connections 1..30000")
    for tool in ("wrk", "nginx", "openssl", args.shardgate):
        if not shutil.which(tool):
            raise SystemExit("%s not found (loadtest/run.sh builds shardgate; scripts/install.sh the tools)" % tool)
    busy = [p for p in (NGINX_PORT, FAKE_UP_PORT, GATEWAY_PORT, ADMIN_PORT, FAKE_IDP_PORT) if harness.port_open(p)]
    if busy:
        raise SystemExit("ports already in use: %s (another faults run?)" % busy)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = os.path.join(HERE, "results", "faults-" + stamp)
    os.makedirs(workdir, exist_ok=True)
    procs = harness.Procs(workdir)
    fails, report = Failures(), []
    try:
        for phase in args.phases:
            log("phase %s" % phase)
            if phase == "idp":
                phase_idp(procs, workdir, fails, report)
            elif phase == "upstream":
                phase_upstream(procs, workdir, fails, report)
            else:
                phase_conns(procs, workdir, fails, report, args.connections)
    finally:
        procs.stop_all()
    text = "\n".join(["- command: `python3 loadtest/faults.py %s`" % " ".join(sys.argv[1:]), "",
                      "| fault / load | result |", "|---|---|"] + report +
                     ["", "Failed checks: %s" % ("; ".join(fails.items) if fails.items else "none"), ""])
    with open(os.path.join(HERE, "results", "faults-%s.md" % stamp), "w") as f:
        f.write(text)
    print(text)
    return 1 if fails.items else 0


if __name__ == "__main__":
    sys.exit(main())
