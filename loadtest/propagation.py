#!/usr/bin/env python3
"""Propagation: time from an etcd write to two gateways serving it, over N changes.

One etcd member (Debian's etcd-server), one loopback upstream, two shardgate processes
(`config_provider: etcd`, two shards each) on that etcd. Each change is a new route
`/p/<i>` PUT into etcd through its v3 JSON API (the clock starts just before the write is sent,
so the etcd commit is included). Each gateway is then polled on fresh connections (the kernel
spreads them over the shards) until it has answered 200 on `--streak` connections in a row; the
end of the first 200 of that run is when that gateway serves the change. A change's
propagation time is the later of the two. Prints p50/p90/p99/max; every wait is bounded.

    python3 loadtest/propagation.py [--changes 200] [--shardgate target/release/shardgate]
"""

import argparse
import base64
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import harness  # loadtest/harness.py: Procs, wait_port, wait_ready

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def etcd_call(port, path, body):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def etcd_put(port, key, value):
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    etcd_call(port, "/v3/kv/put", {"key": b64(key), "value": b64(value)})


def status(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        c.close()


class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def percentile(sorted_values, p):
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--streak", type=int, default=8, help="fresh connections in a row answering 200")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one change may take")
    ap.add_argument("--shardgate", default=os.path.join(ROOT, "target", "release", "shardgate"))
    args = ap.parse_args()
    if not 1 <= args.changes <= 10000:
        raise SystemExit("--changes 1..10000")
    # The processes start in a scratch directory: a relative path would not resolve there.
    args.shardgate = os.path.abspath(args.shardgate)
    for tool in ("etcd", args.shardgate):
        if not shutil.which(tool):
            raise SystemExit("%s not found (cargo build; scripts/install.sh --test installs etcd-server)" % tool)

    workdir = tempfile.mkdtemp(prefix="sg-propagation-")
    procs = harness.Procs(workdir)
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up = "127.0.0.1:%d" % upstream.server_address[1]
    try:
        client, peer = free_port(), free_port()
        etcd = procs.start("etcd", [
            "etcd", "--name=p", "--data-dir=" + os.path.join(workdir, "etcd"),
            "--listen-client-urls=http://127.0.0.1:%d" % client,
            "--advertise-client-urls=http://127.0.0.1:%d" % client,
            "--listen-peer-urls=http://127.0.0.1:%d" % peer,
            "--initial-advertise-peer-urls=http://127.0.0.1:%d" % peer,
            "--initial-cluster=p=http://127.0.0.1:%d" % peer])
        if not harness.wait_port(client, etcd, 20):
            raise SystemExit("etcd did not start (see %s/etcd.log)" % workdir)
        gateways = []
        for name in ("a", "b"):
            port, admin = free_port(), free_port()
            conf = os.path.join(workdir, name + ".yaml")
            with open(conf, "w") as f:
                f.write("gateway:\n  listen: [\"127.0.0.1:%d\"]\n  admin: { listen: \"127.0.0.1:%d\" }\n"
                        "  access_log: false\n  config_provider: etcd\n"
                        "  etcd: { host: [\"http://127.0.0.1:%d\"], timeout: 3 }\n" % (port, admin, client))
            gw = procs.start("gateway-" + name, [args.shardgate, "run", "-c", conf, "--shards", "2"])
            if not harness.wait_port(port, gw) or not harness.wait_ready(admin, 30):
                raise SystemExit("gateway %s not ready (see %s/gateway-%s.log)" % (name, workdir, name))
            gateways.append(port)

        times = []
        for i in range(args.changes):
            path = "/p/%d" % i
            value = json.dumps({"uri": path, "upstream": {"type": "roundrobin", "nodes": {up: 1}}})
            t0 = time.monotonic()
            etcd_put(client, "/apisix/routes/p%d" % i, value)
            # Both gateways polled in turn, so neither waits for the other's streak.
            first = {port: None for port in gateways}
            run = {port: 0 for port in gateways}
            while any(run[port] < args.streak for port in gateways):
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit("change %d not served by both within %.0f s" % (i, args.timeout))
                for port in gateways:
                    if run[port] >= args.streak:
                        continue
                    ok = status(port, path) == 200
                    # The end of the answering request: an upper bound of when it served.
                    end = time.monotonic()
                    if ok:
                        first[port] = end if run[port] == 0 else first[port]
                        run[port] += 1
                    else:
                        run[port] = 0
            done = [first[port] - t0 for port in gateways]
            times.append(max(done) * 1000.0)
        times.sort()
        print("propagation over %d changes, two gateways x two shards (ms): p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  mean %.1f"
              % (len(times), percentile(times, 50), percentile(times, 90), percentile(times, 99), times[-1],
                 statistics.mean(times)))
    finally:
        procs.stop_all()
        upstream.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
