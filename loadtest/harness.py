#!/usr/bin/env python3
"""Load-test harness: shardgate against nginx/haproxy through one nginx upstream.

Run it through loadtest/run.sh (which builds the release binary first). Layout, per-core mode:
the proxy under test alone on CPU 0 (one worker/shard); wrk (one thread, 64 connections) and the
nginx upstream (`return 200`, one worker) together on CPU 1. Every pass records requests/s,
p50/p99/p99.9 and the proxy's CPU time per request (utime+stime of its process tree from /proc).
A pass during which other processes used more than --max-other of a core is retried (bounded),
then kept with a warning. Results: a markdown table on stdout and in loadtest/results/<ts>.md,
raw passes in loadtest/results/<ts>.csv, configs and logs in loadtest/results/<ts>/.
"""

import argparse
import csv
import datetime
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import chart  # loadtest/chart.py: the SVG written beside each report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")

UPSTREAM_PORT = 18081
PEER_PORTS = {
    "nginx": 18082,
    "haproxy": 18083,
    "haproxy-jwt": 18084,
    "shardgate-uring": 18085,
    "shardgate-epoll": 18086,
    "shardgate-uring-lean": 18087,
    "nginx-same-bytes": 18088,
}
# The "-lean" shardgate peer forwards what the haproxy and nginx peers forward (the client's
# Authorization header only): APISIX's default X-Access-Token and X-Userinfo headers off. The
# difference to the plain peer is what those headers cost, mostly in the upstream on CPU 1.
LEAN_YAML = "        set_access_token_header: false\n        set_userinfo_header: false\n"
# The converse: "nginx-same-bytes" is the nginx plain proxy made to forward as many bytes as shardgate
# does with APISIX's defaults (X-Forwarded-*, X-Access-Token, an X-Userinfo of the same length), with
# no authentication. It prices the upstream's share of those headers, so the auth cost stands alone.
IDP_PORT = 18090
# S5 (TLS): the test certificate of gateway/tests (self-signed, localhost/127.0.0.1; wrk does not verify).
TLS_CERT = os.path.join(ROOT, "gateway", "tests", "testdata", "tls-cert.pem")
TLS_KEY = os.path.join(ROOT, "gateway", "tests", "testdata", "tls-key.pem")
# A TLS shardgate peer listens with TLS on its port and in plain HTTP here above it.
PLAIN_PORT_OFFSET = 2000
ADMIN_PORT_OFFSET = 1000  # shardgate admin listens on its port + 1000
JWT_ISS = "https://idp.loadtest.invalid"
JWT_AUD = "urn:shardgate:api"
# Tried passes per kept pass when other processes are busy, and the cap on failed checks.
MAX_ATTEMPTS = 3


def rel(path):
    return os.path.relpath(path, ROOT)


def log(msg):
    sys.stderr.write("[loadtest] %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------- /proc accounting


def proc_children():
    """ppid -> [pid] for every process now alive."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def process_tree(pid):
    kids = proc_children()
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    """utime+stime (clock ticks) summed over pids; vanished processes count 0."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat; rest starts at field 3.
        total += int(rest[11]) + int(rest[12])
    return total


def voluntary_switches(pids):
    """Voluntary context switches over every thread of pids: how often the proxy went to sleep."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tasks:
            try:
                with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
                            break
            except OSError:
                continue
    return total


def system_busy_ticks():
    """user+nice+system over all CPUs. irq/softirq are left out: loopback networking charges them
    to no process, so counting them would mark every pass as disturbed."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def per_cpu_ticks():
    """cpu index -> (busy, total) ticks. Busy includes irq/softirq: the question here is whether a
    core had time left, and loopback networking runs in softirq on both of them."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            if not name[3:].isdigit():
                continue
            v = [int(x) for x in vals[:8]]
            idle = v[3] + v[4]  # idle + iowait
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def ipis_per_cpu():
    """cpu index -> interrupts that one CPU sent another (rescheduling + function-call IPIs). A
    wake-up of a task sleeping on the other core is one of these; in a VM sending one usually traps
    to the hypervisor."""
    out = {}
    with open("/proc/interrupts") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() in ("RES", "CAL"):
                for cpu, v in enumerate(rest.split()):
                    if not v.isdigit():
                        break
                    out[cpu] = out.get(cpu, 0) + int(v)
    return out


def tcp_out_segments():
    """Segments sent by every TCP socket on the host (loopback: sent = received)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])


def busy_fraction(before, after, cpu):
    if cpu not in before or cpu not in after:
        return float("nan")
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return busy / total if total > 0 else float("nan")


def children_cpu_ticks():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * CLK_TCK


# ---------------------------------------------------------------- processes


class Procs:
    """Every process we start, each in its own session, so stop_all() can end it and its
    children by its own process group id and nothing else."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, argv, env=None):
        logf = open(os.path.join(self.logdir, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True, cwd=self.logdir)
        logf.close()
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)


def port_open(port):
    import socket

    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def wait_ready(admin_port, timeout, data_ready=None):
    """True once /readyz answers 200 or, under valgrind, once `data_ready()` (the scenario's own
    check request on the data port) does.

    Under valgrind an idle io_uring shard blocks in io_uring_enter holding valgrind's lock, so the
    control thread that serves /readyz runs only now and then; the shard itself answers. A 2xx on
    the data port means the route is ready, which is what /readyz would have said."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % admin_port, timeout=2) as res:
                if res.status == 200:
                    return True
        except OSError:  # HTTPError (503) included
            pass
        if data_ready is not None and data_ready():
            return True
        time.sleep(0.2)
    return False


def http_status(port, headers, tls=False):
    import ssl

    req = urllib.request.Request("%s://127.0.0.1:%d/" % ("https" if tls else "http", port), headers=headers)
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=TLS_CERT)
        ctx.check_hostname = False
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as res:
            return res.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return "no answer (%s)" % e


def pin(cpus, argv, mode):
    return (["taskset", "-c", cpus] + argv) if mode == "percore" else argv


# ---------------------------------------------------------------- callgrind mode
# Requests/s and CPU time on a shared VM swing by tens of percent between passes; instructions do
# not. In --mode callgrind every proxy runs under valgrind's callgrind, the harness zeroes its
# counters before a pass and dumps them after, and reports user-space instructions per request.
# The kernel's share (socket calls, TCP over loopback) is not in these counts.


def callgrind_argv(outfile):
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + outfile]


def callgrind_pid(root_pid):
    """The process running the tool: Debian's `valgrind` is a wrapper script."""
    for pid in process_tree(root_pid):
        try:
            if os.path.basename(os.readlink("/proc/%d/exe" % pid)).startswith("callgrind-"):
                return pid
        except OSError:
            continue
    return None


def callgrind_control(pid, option):
    res = subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError("callgrind_control %s: %s" % (option, (res.stderr or res.stdout).strip()[-200:]))


def callgrind_dumps(outfile):
    d, base = os.path.split(outfile)
    return {os.path.join(d, n) for n in os.listdir(d) if n.startswith(base + ".")}


def callgrind_new_total(outfile, before, timeout=30.0):
    """Ir in the dump that appeared since `before` (its `totals:` line is written last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(callgrind_dumps(outfile) - before):
            with open(path) as f:
                for line in f:
                    if line.startswith("totals:"):
                        return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError("no callgrind dump appeared for %s" % rel(outfile))


# ---------------------------------------------------------------- configs


# nginx reads a request head into a client_header_buffer_size buffer (stock: 1k); a longer head
# costs it a second read, an 8k buffer from large_client_header_buffers and a copy, per request.
# upstream_cost.py measured that step, not the extra bytes, as most of what a 1,680-byte request
# costs the upstream over a 680-byte one. Every nginx here (the upstream and the nginx peers) gets
# 4k, which holds every scenario's requests (S1/S2 upstream requests with APISIX's identity headers
# ~1.7 KiB, S3's ~2 KiB cookie), so no proxy is charged that step for the size of what it receives
# or forwards; `--nginx-header-buffer 1k` restores nginx's stock value (runs before this option).
NGINX_HEADER_BUFFER = "4k"


def nginx_conf(workdir, name, server_block, workers, master=True, header_buffer=NGINX_HEADER_BUFFER):
    tmp = os.path.join(workdir, name + "-tmp")
    os.makedirs(tmp, exist_ok=True)
    return """\
worker_processes %(workers)s;
daemon off;
master_process %(master)s;
pid %(dir)s/%(name)s.pid;
error_log %(dir)s/%(name)s-error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_header_buffer_size %(header_buffer)s;
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
%(server)s
}
""" % {"workers": workers, "dir": workdir, "name": name, "tmp": tmp, "server": server_block,
       "master": "on" if master else "off", "header_buffer": header_buffer}


def upstream_conf(workdir, header_buffer=NGINX_HEADER_BUFFER):
    server = """\
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / { return 200 "ok\\n"; }
    }""" % UPSTREAM_PORT
    return nginx_conf(workdir, "upstream", server, 1, header_buffer=header_buffer)


def nginx_proxy_conf(workdir, workers, name="nginx", userinfo_len=None, tls=False, master=True,
                     header_buffer=NGINX_HEADER_BUFFER):
    extra = ""
    listen_tls = ""
    if tls:
        listen_tls = " ssl;\n        ssl_certificate %s;\n        ssl_certificate_key %s;\n        ssl_session_cache off" % (
            TLS_CERT, TLS_KEY)
    if userinfo_len is not None:
        # What shardgate adds with APISIX's defaults. $http_authorization carries "Bearer " (7 bytes)
        # more than the bare token shardgate sends, so the X-Userinfo stand-in is 7 bytes shorter.
        extra = """\
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Access-Token $http_authorization;
            proxy_set_header X-Userinfo "%s";
""" % ("e" * max(userinfo_len - 7, 1))
    server = """\
    upstream up { server 127.0.0.1:%d; keepalive 128; }
    server {
        listen 127.0.0.1:%d backlog=4096%s;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
%s            proxy_buffering off;
        }
    }""" % (UPSTREAM_PORT, PEER_PORTS[name], listen_tls, extra)
    return nginx_conf(workdir, name, server, workers, master, header_buffer)


def haproxy_conf(threads, port, jwt_pub=None):
    checks = ""
    if jwt_pub:
        # Same checks the gateway makes: RS256 signature, issuer, audience, expiry.
        checks = """\
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny status 401 unless { var(txn.bearer) -m found }
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny status 401 unless { var(txn.alg) -m str RS256 }
    http-request deny status 401 unless { var(txn.iss) -m str %s }
    http-request deny status 401 unless { var(txn.aud) -m str %s }
    http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"%s") -m int 1 }
""" % (JWT_ISS, JWT_AUD, jwt_pub)
    return """\
global
    nbthread %(threads)d
    # Each connection is two fds (client + server); stay under the usual 20000 fd limit.
    maxconn 4096
    tune.bufsize 32768
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:%(port)d
%(checks)s    default_backend be
backend be
    server up 127.0.0.1:%(up)d maxconn 1000
""" % {"threads": threads, "port": port, "checks": checks, "up": UPSTREAM_PORT}


def userinfo_len(token):
    """Length of the X-Userinfo value shardgate sends for a JWT: standard base64 of its payload."""
    import base64

    payload = token.split(".")[1]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return len(base64.b64encode(raw))


def indent_pem(pem, spaces):
    pad = " " * spaces
    return "\n".join(pad + line for line in pem.strip().splitlines())


def shardgate_conf(port, shards, plugin_yaml, tls=False, extra_plugins=None):
    admin = port + ADMIN_PORT_OFFSET
    tls_block = ""
    if tls:
        tls_block = "  tls:\n    listen: [\"127.0.0.1:%d\"]\n    cert: %s\n    key: %s\n" % (port, TLS_CERT, TLS_KEY)
        port += PLAIN_PORT_OFFSET
    routes = """\
routes:
  - id: all
    uri: /*
    upstream_id: up
"""
    if plugin_yaml:
        routes += "    plugins:\n      openid-connect:\n" + plugin_yaml + (extra_plugins or "")
    # Access logs off, as in the nginx and haproxy peers' configs.
    return """\
gateway:
  listen: ["127.0.0.1:%d"]
  admin: { listen: "127.0.0.1:%d" }
%s  shards: %d
  access_log: false
upstreams:
  - id: up
    type: roundrobin
    nodes: { "127.0.0.1:%d": 1 }
    keepalive_pool: { size: 320, idle_timeout: 60 }
%s""" % (port, admin, tls_block, shards, UPSTREAM_PORT, routes)


# ---------------------------------------------------------------- scenarios

# S6: what rides with openid-connect on a browser-facing API route. The quota is never reached in a
# run (no request is refused), so every request pays the full pass through each plugin.
S6_ORIGIN = "http://app.loadtest.invalid"
S6_PLUGINS = (
    "      cors:\n"
    "        allow_origins: \"%s\"\n"
    "        allow_methods: \"GET,POST\"\n"
    "        expose_headers: \"X-RateLimit-Remaining\"\n"
    "      limit-count:\n"
    "        count: 4000000000\n"
    "        time_window: 2000000\n"
    "      proxy-rewrite:\n"
    "        regex_uri: [\"^/(.*)\", \"/v1/$1\"]\n"
    "        headers:\n"
    "          set: { X-Api-Version: v1 }\n"
    "      request-id: {}\n" % S6_ORIGIN
)


class Scenario:
    def __init__(self, name, title, peers):
        self.name = name
        self.title = title
        self.peers = peers
        self.wrk_headers = []  # fixed -H values
        self.header_file = None  # rotating values (wrk.lua)
        self.header_name = "Authorization"
        self.header_prefix = ""
        self.check_headers = {}
        self.plugin_yaml = None  # shardgate openid-connect block (indented 8)
        self.extra_plugins = None  # S6: more plugins on the route (names indented 6)
        self.jwt_pub = None  # haproxy jwt_verify key
        self.userinfo_len = None  # nginx-same-bytes: X-Userinfo length shardgate sends (S1, S2)
        self.tls = False  # S5: clients speak TLS to the proxies (not to `direct`)
        self.skip_reason = None
        self.needs_idp = False  # start scripts/idp/server.mjs (S3, S4)
        self.dpop = False  # S7: a pool of single-use DPoP proofs per peer (Run.dpop_pool)


def build_scenarios(names, ctx):
    """Scenario definitions. Each one names its peers and how requests are authenticated."""
    out = []
    proxies = ["shardgate-uring", "shardgate-epoll"]
    for name in names:
        if name == "S0":
            sc = Scenario(name, "plain proxy", ["direct", "nginx", "haproxy"] + proxies)
        elif name in ("S1", "S2", "S5", "S6", "S7"):
            title = {"S1": "bearer RS256 JWT, one token", "S2": "bearer RS256 JWT, 1000 tokens rotating",
                     "S5": "S1 over TLS (keep-alive; nginx and shardgate terminate TLS)",
                     "S6": "S1 + cors, limit-count, proxy-rewrite, request-id",
                     "S7": "S1 with a DPoP-bound token (cnf.jkt): a new ES256 proof per request"}[name]
            if name == "S5":
                sc = Scenario(name, title, ["nginx"] + proxies + ["shardgate-uring-lean"])
                sc.tls = True
            elif name == "S6":
                # nginx stays the reference every table divides by; it proxies without the plugins.
                sc = Scenario(name, title, ["nginx"] + proxies)
                sc.extra_plugins = S6_PLUGINS
            elif name == "S7":
                # nginx forwards the same headers unchecked: the reference, as in S6.
                sc = Scenario(name, title, ["nginx"] + proxies)
                sc.dpop = True
            else:
                sc = Scenario(name, title, ["nginx", "haproxy-jwt"] + proxies + ["shardgate-uring-lean", "nginx-same-bytes"])
            tok = ctx.tokens()
            first = open(os.path.join(tok, "token.txt")).read().strip()
            sc.userinfo_len = userinfo_len(first)
            if name in ("S1", "S5"):
                sc.wrk_headers = ["Authorization: Bearer " + first]
            elif name == "S7":
                # Each peer gets its bound token and a pool of proofs for its own port (Run.dpop_pool);
                # wrk.lua sends them as the `DPoP` header from an offset, each once.
                sc.header_name = "DPoP"
            elif name == "S6":
                # A browser app's request: the Origin makes cors answer with its headers.
                sc.wrk_headers = ["Authorization: Bearer " + first, "Origin: " + S6_ORIGIN]
            else:
                sc.header_file = os.path.join(tok, "tokens.txt")
                sc.header_prefix = "Bearer "
            sc.check_headers = {"Authorization": "Bearer " + first}
            if name == "S6":
                sc.check_headers["Origin"] = S6_ORIGIN
            sc.jwt_pub = os.path.join(tok, "pub.pem")
            pem = open(sc.jwt_pub).read()
            # APISIX requires `discovery`; the tokens are checked against `public_key` and an explicit
            # issuer list, so the IdP is only contacted at start-up (discovery), never per request.
            sc.plugin_yaml = (
                "        client_id: loadtest\n"
                "        discovery: http://127.0.0.1:%d/.well-known/openid-configuration\n"
                "        bearer_only: true\n"
                "        token_signing_alg_values_expected: RS256\n"
                "        claim_validator:\n"
                "          issuer:\n"
                "            valid_issuers: [\"https://idp.loadtest.invalid\"]\n"
                "        public_key: |\n%s\n" % (IDP_PORT, indent_pem(pem, 10))
            )
            if sc.dpop:
                # The pool is minted before the peer starts (under callgrind that takes a minute):
                # proofs stay fresh for the whole run. The route is S1's otherwise.
                sc.plugin_yaml += "        dpop_proof_max_age: 900\n"
            sc.needs_idp = True
        elif name == "S3":
            sc = Scenario(name, "session cookie", ["nginx"] + proxies)
            secret = os.environ.get("LOADTEST_S3_SECRET", "loadtest-session-secret-0123456789")
            cookies = os.environ.get("LOADTEST_S3_COOKIES")
            if not cookies:
                # Sessions sealed by the gateway's own codec (benches/src/bin/session_cookies.rs),
                # ~2 KiB each (random signatures do not deflate), 1000 of them rotating.
                minter = os.path.join(ROOT, "target", "release", "session_cookies")
                cookies = os.path.join(ROOT, "target", "loadtest", "cookies.txt")
                if os.access(minter, os.X_OK):
                    os.makedirs(os.path.dirname(cookies), exist_ok=True)
                    subprocess.run([minter, cookies, "1000", secret, "http://127.0.0.1:%d" % IDP_PORT], check=True)
            if not cookies or not os.path.exists(cookies):
                sc.skip_reason = ("needs target/release/session_cookies (loadtest/run.sh builds it) or "
                                  "LOADTEST_S3_COOKIES with session.secret = LOADTEST_S3_SECRET")
            else:
                sc.header_file = cookies
                sc.header_name = "Cookie"
                first = open(cookies).readline().strip()
                sc.check_headers = {"Cookie": first, "Accept": "text/html"}
                sc.plugin_yaml = (
                    "        client_id: gateway\n"
                    "        client_secret: gateway-secret\n"
                    "        discovery: http://127.0.0.1:%d/.well-known/openid-configuration\n"
                    "        redirect_uri: http://127.0.0.1:9080/callback\n"
                    "        session:\n"
                    "          secret: %s\n" % (IDP_PORT, secret)
                )
                sc.needs_idp = True
        elif name == "S4":
            sc = Scenario(name, "opaque token, introspection cache hits", ["nginx"] + proxies)
            sc.needs_idp = True
            sc.plugin_yaml = (
                "        client_id: gateway\n"
                "        client_secret: gateway-secret\n"
                "        discovery: http://127.0.0.1:%d/.well-known/openid-configuration\n"
                "        bearer_only: true\n" % IDP_PORT
            )
        else:
            raise SystemExit("unknown scenario %s (known: S0 S1 S2 S3 S4 S5 S6 S7)" % name)
        out.append(sc)
    return out


# ---------------------------------------------------------------- the run


class Peer:
    def __init__(self, name):
        self.name = name
        self.port = UPSTREAM_PORT if name == "direct" else PEER_PORTS[name]
        self.proc = None
        self.status = "ok"
        self.passes = []
        self.cg_out = None  # callgrind mode: the tool's output file (dumps are cg_out.N)
        self.cg_pid = None
        self.token = None  # S7: the DPoP-bound token and this peer's proofs (each used once)
        self.proofs = None
        self.proofs_file = None
        self.proofs_used = 0


class Run:
    def __init__(self, args):
        self.args = args
        self.stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.resdir = os.path.join(HERE, "results")
        self.workdir = os.path.join(self.resdir, self.stamp)
        os.makedirs(self.workdir, exist_ok=True)
        self.procs = Procs(self.workdir)
        self.upstream = None
        self.idp = None
        self.rows = []
        self.warnings = []
        self._tokens = None
        self.callgrind = args.mode == "callgrind"
        one = args.mode in ("percore", "callgrind")
        self.workers = 1 if one else os.cpu_count() or 2
        self.wrk_threads = 1 if one else 2
        self.started = time.monotonic()
        self.plan_units = 0.0
        self.done_units = 0.0
        self.passes_done = 0
        self.passes_total = 0

    # -- fixtures

    def tokens(self):
        if self._tokens is None:
            # Cached across runs under target/: signing 1000 tokens in Python takes seconds.
            d = os.path.join(ROOT, "target", "loadtest", "tokens")
            fresh = os.path.exists(os.path.join(d, "tokens.txt")) and \
                time.time() - os.path.getmtime(os.path.join(d, "tokens.txt")) < 12 * 3600
            if not fresh:
                log("generating RS256 key and 1000 tokens")
                subprocess.run([sys.executable, os.path.join(HERE, "tokens.py"), d, "--count", "1000",
                                "--iss", JWT_ISS, "--aud", JWT_AUD, "--ttl", "86400"], check=True)
            self._tokens = d
        return self._tokens

    def dpop_pool(self, peer, count):
        """S7: a token like S1's (same key, same claims) bound to oidc/tests/data/dpop_es256.pem by
        `cnf.jkt`, and `count` proofs for GET http://127.0.0.1:<peer port>/ (the htu the gateway
        rebuilds from Host), by benches/src/bin/dpop_proofs.rs: Python's standard library cannot
        sign ES256, ring does it in microseconds."""
        minter = os.path.join(ROOT, "target", "release", "dpop_proofs")
        if not os.access(minter, os.X_OK):
            raise RuntimeError("S7 needs target/release/dpop_proofs (loadtest/run.sh builds it)")
        d = os.path.join(self.tokens(), "dpop-" + peer.name)
        res = subprocess.run([minter, os.path.join(self.tokens(), "key.pem"),
                              os.path.join(ROOT, "oidc", "tests", "data", "dpop_es256.pem"), d, str(count),
                              "http://127.0.0.1:%d/" % peer.port, JWT_ISS, JWT_AUD], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError("dpop_proofs failed: %s" % res.stderr.strip()[-200:])
        peer.token = open(os.path.join(d, "dpop_token.txt")).read().strip()
        peer.proofs_file = os.path.join(d, "dpop_proofs.txt")
        peer.proofs = open(peer.proofs_file).read().split()
        peer.proofs_used = 0

    def next_proof(self, peer):
        if peer.proofs_used >= len(peer.proofs):
            raise RuntimeError("DPoP proof pool of %d exhausted: raise --dpop-proofs" % len(peer.proofs))
        peer.proofs_used += 1
        return peer.proofs[peer.proofs_used - 1]

    def check_headers(self, sc, peer):
        """Headers of the requests that check a peer before load; S7's each need a proof of their own."""
        if not sc.dpop:
            return sc.check_headers
        return {"Authorization": "DPoP " + peer.token, "DPoP": self.next_proof(peer)}

    def start_upstream(self):
        path = os.path.join(self.workdir, "upstream.conf")
        with open(path, "w") as f:
            f.write(upstream_conf(self.workdir, self.args.nginx_header_buffer))
        self.upstream = self.procs.start("upstream", pin("1", [self.args.nginx, "-p", self.workdir, "-c", path,
                                                               "-e", os.path.join(self.workdir, "upstream-error.log")],
                                                         self.args.mode))
        if not wait_port(UPSTREAM_PORT, self.upstream):
            raise SystemExit("upstream nginx did not start (see %s/upstream.log)" % rel(self.workdir))

    def start_idp(self):
        if self.idp is not None:
            return self.idp
        env = dict(os.environ, IDP_PORT=str(IDP_PORT), IDP_OPAQUE_TTL="86400", IDP_AT_TTL="86400")
        self.idp = self.procs.start("idp", pin("1", ["node", os.path.join(ROOT, "scripts", "idp", "server.mjs")],
                                               self.args.mode), env)
        if not wait_port(IDP_PORT, self.idp):
            raise SystemExit("test IdP did not start (see %s/idp.log; run scripts/install.sh)" % rel(self.workdir))
        return self.idp

    def opaque_token(self):
        import base64

        data = b"grant_type=client_credentials"
        req = urllib.request.Request("http://127.0.0.1:%d/token" % IDP_PORT, data=data, headers={
            "Authorization": "Basic " + base64.b64encode(b"m2m-opaque:m2m-opaque-secret").decode(),
            "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=5) as res:
            return json.load(res)["access_token"]

    # -- peers

    def start_peer(self, sc, peer):
        a = self.args
        cpu0 = "0"
        if peer.name == "direct":
            peer.proc = self.upstream
            return
        if peer.name in ("nginx", "nginx-same-bytes"):
            path = os.path.join(self.workdir, "%s-%s.conf" % (peer.name, sc.name))
            with open(path, "w") as f:
                # Under callgrind one process serves, so the counts are that process's alone.
                f.write(nginx_proxy_conf(self.workdir, self.workers, peer.name,
                                         sc.userinfo_len if peer.name == "nginx-same-bytes" else None, sc.tls,
                                         master=not self.callgrind, header_buffer=a.nginx_header_buffer))
            argv = [a.nginx, "-p", self.workdir, "-c", path,
                    "-e", os.path.join(self.workdir, "%s-error.log" % peer.name)]
        elif peer.name in ("haproxy", "haproxy-jwt"):
            path = os.path.join(self.workdir, "%s-%s.cfg" % (peer.name, sc.name))
            with open(path, "w") as f:
                f.write(haproxy_conf(self.workers, peer.port, sc.jwt_pub if peer.name == "haproxy-jwt" else None))
            argv = [a.haproxy, "-db", "-f", path]
        else:
            if not a.shardgate or not os.access(a.shardgate, os.X_OK):
                peer.status = "failed: no shardgate binary (build failed?)"
                return
            path = os.path.join(self.workdir, "%s-%s.yaml" % (peer.name, sc.name))
            plugin = sc.plugin_yaml
            if peer.name.endswith("-lean") and plugin:
                plugin += LEAN_YAML
            with open(path, "w") as f:
                f.write(shardgate_conf(peer.port, self.workers, plugin, sc.tls, sc.extra_plugins))
            check = subprocess.run([a.shardgate, "validate", "-c", path], capture_output=True, text=True)
            if check.returncode != 0:
                first = (check.stderr or check.stdout).strip().splitlines()[:1]
                peer.status = "failed: config rejected (%s)" % (first[0] if first else "exit %d" % check.returncode)
                return
            driver = peer.name.split("-")[1]
            argv = [a.shardgate, "run", "-c", path, "--shards", str(self.workers), "--driver", driver]
        if self.callgrind:
            peer.cg_out = os.path.join(self.workdir, "%s-%s.callgrind" % (peer.name, sc.name))
            argv = callgrind_argv(peer.cg_out) + argv
        peer.proc = self.procs.start("%s-%s" % (peer.name, sc.name), pin(cpu0, argv, a.mode))
        if not wait_port(peer.port, peer.proc, 90.0 if self.callgrind else 15.0):
            peer.status = "failed: did not start (see %s/%s-%s.log)" % (rel(self.workdir), peer.name, sc.name)
            self.procs.stop(peer.proc)
            peer.proc = None
        elif self.callgrind:
            peer.cg_pid = callgrind_pid(peer.proc.pid)
            if peer.cg_pid is None:
                peer.status = "failed: no callgrind process under %d" % peer.proc.pid

    def check_peer(self, sc, peer):
        if peer.status != "ok":
            return
        # Routes that need discovery answer 503 until it is in.
        tls = sc.tls and peer.name != "direct"

        def data_ready():
            status = http_status(peer.port, self.check_headers(sc, peer), tls)
            return isinstance(status, int) and 200 <= status < 300

        if peer.name.startswith("shardgate") and not wait_ready(
                peer.port + ADMIN_PORT_OFFSET, 60.0 if self.callgrind else 15.0,
                data_ready if self.callgrind else None):
            peer.status = "failed: /readyz not 200 (discovery?)"
            return
        status = http_status(peer.port, self.check_headers(sc, peer), tls)
        if not (isinstance(status, int) and 200 <= status < 300):
            peer.status = "failed: HTTP %s before load" % status

    # -- measuring

    def wrk_argv(self, sc, peer, seconds):
        argv = ["wrk", "-t%d" % self.wrk_threads, "-c%d" % self.args.connections, "-d%ds" % seconds, "--latency",
                "-s", os.path.join(HERE, "wrk.lua")]
        if self.callgrind:
            # Under callgrind a proxy is 20-50x slower (S7: ~100 requests/s, p99 near wrk's default
            # 2 s timeout): a late answer is still an answer, and only instructions are counted.
            argv += ["--timeout", "30s"]
        for h in sc.wrk_headers:
            argv += ["-H", h]
        if sc.dpop:
            argv += ["-H", "Authorization: DPoP " + peer.token]
        scheme = "https" if sc.tls and peer.name != "direct" else "http"
        argv.append("%s://127.0.0.1:%d/" % (scheme, peer.port))
        return pin("1", argv, self.args.mode)

    def wrk_env(self, sc, peer):
        env = dict(os.environ)
        if sc.header_file:
            env.update(SG_HEADER_FILE=sc.header_file, SG_HEADER_NAME=sc.header_name, SG_HEADER_PREFIX=sc.header_prefix)
        if sc.dpop:
            # Single use: this run starts after every proof the peer has seen, and stops at the end.
            env.update(SG_HEADER_FILE=peer.proofs_file, SG_HEADER_NAME=sc.header_name, SG_HEADER_PREFIX="",
                       SG_HEADER_OFFSET=str(peer.proofs_used), SG_HEADER_ONCE="1", SG_THREADS=str(self.wrk_threads))
        return env

    def one_pass(self, sc, peer, seconds):
        peer_pids = process_tree(peer.proc.pid)
        up_pids = process_tree(self.upstream.pid)
        ours_pids = set(peer_pids) | set(up_pids) | {os.getpid()}
        if self.idp is not None:
            ours_pids |= set(process_tree(self.idp.pid))
        ours_pids = sorted(ours_pids)
        if self.callgrind:
            dumps = callgrind_dumps(peer.cg_out)
            callgrind_control(peer.cg_pid, "--zero")
        p0, o0, s0, c0 = cpu_ticks(peer_pids), cpu_ticks(ours_pids), system_busy_ticks(), children_cpu_ticks()
        k0, v0, i0, g0 = per_cpu_ticks(), voluntary_switches(peer_pids), ipis_per_cpu(), tcp_out_segments()
        t0 = time.monotonic()
        res = subprocess.run(self.wrk_argv(sc, peer, seconds), capture_output=True, text=True,
                             env=self.wrk_env(sc, peer), timeout=seconds + 60)
        wall = time.monotonic() - t0
        p1, o1, s1, c1 = cpu_ticks(peer_pids), cpu_ticks(ours_pids), system_busy_ticks(), children_cpu_ticks()
        k1, v1, i1, g1 = per_cpu_ticks(), voluntary_switches(peer_pids), ipis_per_cpu(), tcp_out_segments()
        ir = 0
        if self.callgrind:
            callgrind_control(peer.cg_pid, "--dump=pass")
            ir = callgrind_new_total(peer.cg_out, dumps)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("SGRESULT ")), None)
        if res.returncode != 0 or line is None:
            raise RuntimeError("wrk failed (exit %d): %s" % (res.returncode, (res.stderr or res.stdout).strip()[-300:]))
        r = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
        if sc.dpop:
            # Requests still in flight when wrk stopped may have used a proof too.
            peer.proofs_used += r["requests"] + self.args.connections
            if peer.proofs_used > len(peer.proofs):
                raise RuntimeError("DPoP proof pool of %d exhausted: raise --dpop-proofs" % len(peer.proofs))
        requests = max(r["requests"], 1)
        errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        ours = (o1 - o0) + (c1 - c0)
        other_core = max(0.0, ((s1 - s0) - ours) / CLK_TCK / wall)
        return {
            "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50": r["p50"], "p75": r.get("p75", 0), "p90": r["p90"], "p95": r.get("p95", 0), "p99": r["p99"],
            "p999": r["p999"], "p9999": r.get("p9999", 0),
            "cpu_us": (p1 - p0) / CLK_TCK * 1e6 / requests,
            "requests": r["requests"], "errors": errors, "status_errors": r["status"],
            "other_core": other_core, "ir": ir / requests,
            "cpu0_busy": busy_fraction(k0, k1, 0), "cpu1_busy": busy_fraction(k0, k1, 1),
            "sleeps": (v1 - v0) / requests,
            "ipi0": (i1.get(0, 0) - i0.get(0, 0)) / requests, "ipi1": (i1.get(1, 0) - i0.get(1, 0)) / requests,
            "segs": (g1 - g0) / requests,
        }

    def progress(self, sc, peer, pass_no):
        """One line per pass: where the run is, and a time estimate from the passes so far."""
        elapsed = time.monotonic() - self.started
        left = max(self.plan_units - self.done_units, 0.0)
        if self.done_units > 0:
            eta = elapsed / self.done_units * left
        else:
            eta = left * (self.args.duration + 2)
        log("progress: %s %s pass %d of %d (%d of %d in the run), %s elapsed, about %s left" % (
            sc.name, peer.name, pass_no, self.args.passes, self.passes_done + 1, self.passes_total,
            clock(elapsed), clock(eta)))

    def measure(self, sc, peer, pass_no):
        self.progress(sc, peer, pass_no)
        try:
            self._measure(sc, peer, pass_no)
        finally:
            self.done_units += 1
            self.passes_done += 1

    def _measure(self, sc, peer, pass_no):
        for attempt in range(1, MAX_ATTEMPTS + 1):
            m = self.one_pass(sc, peer, self.args.duration)
            # Instruction counts do not depend on what else the machine runs.
            noisy = m["other_core"] > self.args.max_other and not self.callgrind
            bad = m["errors"] > 0.01 * max(m["requests"], 1)
            last = attempt == MAX_ATTEMPTS
            keep = not bad and (not noisy or last)
            self.rows.append(dict(scenario=sc.name, peer=peer.name, pass_no=pass_no, attempt=attempt, kept=int(keep), **m))
            if self.callgrind:
                log("%s %-16s pass %d: %8.0f instructions/request over %d requests%s" % (
                    sc.name, peer.name, pass_no, m["ir"], m["requests"],
                    "  (%d errors)" % m["errors"] if m["errors"] else ""))
            else:
                log("%s %-16s pass %d try %d: %8.0f req/s  p99 %6.2f ms  %6.1f us CPU/req  CPU0/1 busy %3.0f%%/%3.0f%%"
                    "  sleeps %.3f/req  IPIs to CPU0/1 %.3f/%.3f/req  %.2f segs/req  other %3.0f%% of a core%s" % (
                        sc.name, peer.name, pass_no, attempt, m["rps"], m["p99"] / 1000, m["cpu_us"],
                        m["cpu0_busy"] * 100, m["cpu1_busy"] * 100, m["sleeps"], m["ipi0"], m["ipi1"], m["segs"], m["other_core"] * 100,
                        "  (%d errors)" % m["errors"] if m["errors"] else ""))
            if bad:
                peer.status = "failed: %d errors / %d requests (%d non-2xx)" % (m["errors"], m["requests"], m["status_errors"])
                return
            if keep:
                if noisy:
                    self.warnings.append("%s %s pass %d kept although other processes used %.0f%% of a core"
                                         % (sc.name, peer.name, pass_no, m["other_core"] * 100))
                peer.passes.append(dict(m, pass_no=pass_no))
                return
            time.sleep(1)

    def guarded(self, peer, fn, *args):
        """A wrk failure or a dead peer fails that peer, not the whole run."""
        if peer.status != "ok":
            return
        try:
            fn(*args)
        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
            peer.status = "failed: %s" % str(e).splitlines()[0][:200]
            log("%s: %s" % (peer.name, peer.status))
            return
        if peer.proc is not None and peer.proc.poll() is not None:
            peer.status = "failed: exited during the run (exit %s)" % peer.proc.returncode

    def selected_peers(self, sc):
        return [n for n in sc.peers if (not self.args.peers or n in self.args.peers)
                and not (self.callgrind and n == "direct")]  # no proxy to count

    def run_scenario(self, sc):
        peers = [Peer(n) for n in self.selected_peers(sc)]
        if sc.skip_reason:
            return peers, sc.skip_reason
        if sc.needs_idp:
            self.start_idp()
            if sc.name == "S4":
                token = self.opaque_token()
                sc.wrk_headers = ["Authorization: Bearer " + token]
                sc.check_headers = {"Authorization": "Bearer " + token}
        try:
            for peer in peers:
                if sc.dpop:
                    log("%s %s: minting %d DPoP proofs" % (sc.name, peer.name, self.args.dpop_proofs))
                    self.guarded(peer, self.dpop_pool, peer, self.args.dpop_proofs)
                if peer.status == "ok":
                    self.start_peer(sc, peer)
                    self.guarded(peer, self.check_peer, sc, peer)
                if peer.status != "ok":
                    log("%s %s: %s" % (sc.name, peer.name, peer.status))
            live = [p for p in peers if p.status == "ok"]
            for peer in live:
                if self.args.warmup > 0:
                    self.guarded(peer, self.one_pass, sc, peer, self.args.warmup)
                    self.done_units += (self.args.warmup + 1) / float(self.args.duration + 1)
            for pass_no in range(1, self.args.passes + 1):
                # Rotate the order so slow drift (thermal, other tenants) does not favour a peer.
                shift = (pass_no - 1) % max(len(live), 1)
                for peer in live[shift:] + live[:shift]:
                    if peer.status == "ok":
                        self.guarded(peer, self.measure, sc, peer, pass_no)
        finally:
            for peer in peers:
                if peer.proc is not None and peer.proc is not self.upstream:
                    self.procs.stop(peer.proc)
        return peers, None

    # -- reporting

    def write_csv(self):
        path = os.path.join(self.resdir, self.stamp + ".csv")
        cols = ["scenario", "peer", "pass_no", "attempt", "kept", "rps", "p50", "p75", "p90", "p95", "p99", "p999",
                "p9999", "cpu_us",
                "requests", "errors", "status_errors", "other_core", "ir", "cpu0_busy", "cpu1_busy", "sleeps",
                "ipi0", "ipi1", "segs"]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for row in self.rows:
                w.writerow({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
        return path


def clock(seconds):
    """12s, 3m05s, 1h02m."""
    s = int(seconds)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % divmod(s, 60)
    return "%dh%02dm" % (s // 3600, s % 3600 // 60)


def median(values):
    return statistics.median(values) if values else float("nan")


def spread(values):
    if len(values) < 2:
        return "-"
    m = statistics.median(values)
    return "%.0f%%" % ((max(values) - min(values)) / m * 100) if m else "-"


def summarize(peer):
    ps = peer.passes
    return {
        "rps": median([p["rps"] for p in ps]),
        "p50": median([p["p50"] for p in ps]) / 1000,
        "p99": median([p["p99"] for p in ps]) / 1000,
        "p999": median([p["p999"] for p in ps]) / 1000,
        "cpu": median([p["cpu_us"] for p in ps]),
        "ir": median([p["ir"] for p in ps]),
        "cpu0_busy": median([p["cpu0_busy"] for p in ps]),
        "cpu1_busy": median([p["cpu1_busy"] for p in ps]),
        "sleeps": median([p["sleeps"] for p in ps]),
        "ipi0": median([p.get("ipi0", 0.0) for p in ps]),
        "ipi1": median([p.get("ipi1", 0.0) for p in ps]),
        "segs": median([p.get("segs", 0.0) for p in ps]),
        "ir_spread": spread([p["ir"] for p in ps]),
        "spread": "%s / %s" % (spread([p["rps"] for p in ps]), spread([p["cpu_us"] for p in ps])),
    }


def scenario_table(sc, peers, skip):
    lines = ["### %s: %s" % (sc.name, sc.title), ""]
    if skip:
        return lines + ["skipped: %s" % skip, ""]
    lines += ["| peer | req/s | p50 ms | p99 ms | p99.9 ms | CPU us/req | req/s x nginx | CPU x nginx | spread (req/s / CPU) "
              "| CPU 0 / 1 busy | sleeps/req | IPIs to CPU 0 / 1 per req | TCP segments/req |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sums = {p.name: summarize(p) for p in peers if p.status == "ok" and p.passes}
    ref = sums.get("nginx")
    for p in peers:
        if p.name not in sums:
            reason = p.status if p.status != "ok" else "failed: no pass kept"
            lines.append("| %s | %s | | | | | | | | | | | |" % (p.name, reason))
            continue
        s = sums[p.name]
        x_rps = "%.2f" % (s["rps"] / ref["rps"]) if ref else "-"
        x_cpu = "%.2f" % (s["cpu"] / ref["cpu"]) if ref and ref["cpu"] else "-"
        lines.append("| %s | %.0f | %.2f | %.2f | %.2f | %.1f | %s | %s | %s | %.0f%% / %.0f%% | %.3f | %.3f / %.3f | %.2f |" % (
            p.name, s["rps"], s["p50"], s["p99"], s["p999"], s["cpu"], x_rps, x_cpu, s["spread"],
            s["cpu0_busy"] * 100, s["cpu1_busy"] * 100, s["sleeps"], s["ipi0"], s["ipi1"], s["segs"]))
    ref_name = "haproxy-jwt" if "haproxy-jwt" in sums else None
    if ref_name:
        for name in ("shardgate-uring", "shardgate-epoll", "shardgate-uring-lean"):
            if name in sums:
                lines.append("")
                cpu_x = sums[name]["cpu"] / sums[ref_name]["cpu"]
                lines.append("%s / %s: req/s %.2fx, CPU per request %.2fx (requests per proxy CPU-second %.2fx)" % (
                    name, ref_name, sums[name]["rps"] / sums[ref_name]["rps"], cpu_x, 1 / cpu_x if cpu_x else 0))
    paired = paired_lines(peers, sums)
    if paired:
        lines += ["", "Paired by pass (peers in one pass run back to back, so slow host drift mostly cancels; median and range):", ""]
        lines += paired
    lines.append("")
    return lines


def instructions_table(sc, peers, skip):
    lines = ["### %s: %s" % (sc.name, sc.title), ""]
    if skip:
        return lines + ["skipped: %s" % skip, ""]
    lines += ["| peer | instructions / request | x nginx | spread | requests counted |", "|---|---|---|---|---|"]
    sums = {p.name: summarize(p) for p in peers if p.status == "ok" and p.passes}
    ref = sums.get("nginx")
    for p in peers:
        if p.name not in sums:
            lines.append("| %s | %s | | | |" % (p.name, p.status if p.status != "ok" else "failed: no pass kept"))
            continue
        s = sums[p.name]
        lines.append("| %s | %.0f | %s | %s | %d |" % (
            p.name, s["ir"], "%.2f" % (s["ir"] / ref["ir"]) if ref and ref["ir"] else "-", s["ir_spread"],
            sum(m["requests"] for m in p.passes)))
    for ref_name in ("haproxy-jwt", "nginx-same-bytes"):
        if ref_name not in sums or not sums[ref_name]["ir"]:
            continue
        for name in ("shardgate-uring", "shardgate-epoll", "shardgate-uring-lean"):
            if name in sums and not (ref_name == "nginx-same-bytes" and name.endswith("-lean")):
                lines += ["", "%s / %s: %.2fx the instructions per request" % (
                    name, ref_name, sums[name]["ir"] / sums[ref_name]["ir"])]
    lines.append("")
    return lines


def paired_lines(peers, sums):
    """Per-pass ratios against nginx (and haproxy-jwt): peers run back to back within a pass, so a
    ratio taken inside one pass is less exposed to the host's slow swings than a ratio of medians."""
    by_name = {p.name: {m["pass_no"]: m for m in p.passes} for p in peers if p.name in sums}
    out = []
    for ref_name in ("nginx", "haproxy-jwt", "nginx-same-bytes"):
        ref = by_name.get(ref_name)
        if not ref:
            continue
        for name in ("shardgate-uring", "shardgate-epoll", "shardgate-uring-lean"):
            if ref_name == "nginx-same-bytes" and name.endswith("-lean"):
                continue  # lean forwards fewer bytes than this peer: not a like-for-like pair
            mine = by_name.get(name)
            if not mine:
                continue
            common = sorted(set(ref) & set(mine))
            if len(common) < 2:
                continue
            rps = [mine[k]["rps"] / ref[k]["rps"] for k in common]
            cpu = [mine[k]["cpu_us"] / ref[k]["cpu_us"] for k in common if ref[k]["cpu_us"]]
            out.append("- %s / %s over %d passes: req/s %.2fx (%.2f-%.2f), CPU per request %.2fx (%.2f-%.2f)" % (
                name, ref_name, len(common), median(rps), min(rps), max(rps),
                median(cpu), min(cpu) if cpu else 0, max(cpu) if cpu else 0))
    return out


def git_rev():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _interrupt(_signo, _frame):
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="S0")
    ap.add_argument("--peers", default="", help="comma list to run only some peers (default: all of each scenario)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--mode", choices=["percore", "allcores", "callgrind"], default="percore",
                    help="callgrind: count each proxy's instructions per request instead of timing it")
    ap.add_argument("--max-other", type=float, default=0.10, help="fraction of a core other processes may use")
    ap.add_argument("--shardgate", default=os.path.join(ROOT, "target", "release", "shardgate"))
    ap.add_argument("--nginx-header-buffer", default=NGINX_HEADER_BUFFER, metavar="SIZE",
                    help="client_header_buffer_size of the upstream and the nginx peers (nginx's stock value is 1k)")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    ap.add_argument("--dpop-proofs", type=int, default=0, metavar="N",
                    help="S7: single-use DPoP proofs minted per peer; more than the run sends (default: "
                         "40000 under callgrind, else 20000 per second of warm-up and passes)")
    ap.add_argument("--command", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    if not 1 <= args.passes <= 50 or not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        raise SystemExit("--passes 1..50, --duration 1..600, --warmup 0..60")
    if args.dpop_proofs <= 0:
        # Under callgrind a shardgate serves a few hundred requests a second; natively tens of
        # thousands. A retried pass needs more: the run then stops that peer with a clear error.
        seconds = args.warmup + args.passes * args.duration
        args.dpop_proofs = 40000 if args.mode == "callgrind" else 20000 * seconds + 1000
    extra = {"percore": ("taskset",), "callgrind": ("valgrind", "callgrind_control")}.get(args.mode, ())
    for tool in ("wrk", args.nginx, args.haproxy) + extra:
        if not shutil.which(tool):
            raise SystemExit("%s not found: run scripts/install.sh" % tool)
    busy = [p for p in list(PEER_PORTS.values()) + [UPSTREAM_PORT, IDP_PORT] if port_open(p)]
    if busy:
        raise SystemExit("ports already in use: %s (another load run?)" % busy)

    run = Run(args)
    # SIGTERM/SIGINT unwind through the finally below, which stops every process we started.
    signal.signal(signal.SIGTERM, _interrupt)
    results = []
    try:
        scenarios = build_scenarios([s.strip() for s in args.scenarios.split(",") if s.strip()], run)
        # The plan, for the progress lines: every measured pass of every peer that will run (a
        # warm-up counts as its share of a pass).
        run.plan_units = sum(
            len(run.selected_peers(sc)) * (args.passes + (args.warmup + 1) / float(args.duration + 1))
            for sc in scenarios if not sc.skip_reason)
        run.passes_total = sum(len(run.selected_peers(sc)) * args.passes for sc in scenarios if not sc.skip_reason)
        run.start_upstream()
        for sc in scenarios:
            log("scenario %s: %s" % (sc.name, sc.title))
            peers, skip = run.run_scenario(sc)
            results.append((sc, peers, skip))
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        run.procs.stop_all()

    uname = os.uname()
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    out = ["# shardgate load test %s" % run.stamp, "",
           "- command: `%s`" % (args.command or "loadtest/run.sh"),
           "- commit %s; kernel %s; %s x %d; mode %s" % (git_rev(), uname.release, cpu_model, os.cpu_count() or 0, args.mode),
           "- wrk -t%d -c%d, %d s runs after a %d s warm-up, %d passes, medians; spread = (max-min)/median"
           % (run.wrk_threads, args.connections, args.duration, args.warmup, args.passes),
           "- nginx (upstream and peers) `client_header_buffer_size %s`" % args.nginx_header_buffer]
    if run.callgrind:
        out += ["- every proxy under `valgrind --tool=callgrind`, one worker/shard, nothing pinned; counters zeroed "
                "before each pass and dumped after it, so start-up and warm-up are not counted",
                "- instructions / request: user-space instructions of the proxy's process (all its threads) / "
                "requests wrk completed; the kernel's work (socket calls, TCP over loopback) is not counted", ""]
    else:
        out += ["- layout: proxy on CPU 0 (1 worker/shard); wrk + nginx upstream (`return 200`, 1 worker) on CPU 1"
                if args.mode == "percore" else "- layout: nothing pinned, one worker/shard per core",
                "- CPU us/req: utime+stime of the proxy's processes / requests (direct: the upstream's)",
                "- CPU 0 / 1 busy: share of each core not idle during the pass (`/proc/stat`, irq and softirq "
                "included); a core near 100% is what capped requests/s",
                "- sleeps/req: voluntary context switches of the proxy's threads / requests: how often it ran out "
                "of work and waited (each wake-up costs CPU, dearly in a VM)",
                "- IPIs to CPU 0 / 1 per req: rescheduling + function-call interrupts each core received "
                "(`/proc/interrupts`), mostly wake-ups sent by the other core; TCP segments/req: host-wide "
                "`OutSegs` (`/proc/net/snmp`) / requests", ""]
    for sc, peers, skip in results:
        out += (instructions_table if run.callgrind else scenario_table)(sc, peers, skip)
    if run.warnings:
        out += ["Warnings:", ""] + ["- " + w for w in run.warnings] + [""]
    text = "\n".join(out)
    md = os.path.join(run.resdir, run.stamp + ".md")
    with open(md, "w") as f:
        f.write(text)
    csv_path = run.write_csv()
    svg_path = None
    if not run.callgrind:
        svg_path = chart.write_svg(csv_path, os.path.join(run.resdir, run.stamp + ".svg"),
                                   "shardgate load test %s (%s, commit %s)" % (run.stamp, args.mode, git_rev()))
    print(text)
    log("wrote %s, %s%s (configs and logs in %s/)" % (
        rel(md), rel(csv_path), " and " + rel(svg_path) if svg_path else "", rel(run.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
