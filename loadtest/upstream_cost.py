#!/usr/bin/env python3
"""What a bigger forwarded request costs the upstream: the loadtest's nginx upstream alone on CPU 1,
wrk on CPU 0 sending requests padded to a given size, the upstream's CPU time per request measured
from /proc. No proxy in between.

    python3 loadtest/upstream_cost.py [--sizes 680,1680] [--header-buffers 1k,4k] [--passes 3] [--duration 6]

The default sizes are what the upstream receives per S1 request: ~680 bytes from the nginx and
haproxy peers (the client's Authorization header), ~1680 from shardgate with APISIX's default
identity headers (X-Forwarded-*, the token again in X-Access-Token, X-Userinfo). In the pinned
layout the upstream shares CPU 1 with wrk, so its extra work lowers every proxy's requests/s in
that scenario. Each size is measured with nginx's stock client_header_buffer_size (1k) and with the
load test's (harness.NGINX_HEADER_BUFFER), which tells the cost of the bytes from the cost of
nginx's large-header path. For each buffer, the first size is the base of the ratios. Results are
printed; nothing is written.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402  (same upstream config and port as the load test)


def ticks(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def run_wrk(port, size, seconds):
    # wrk sends "GET / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n" + our header + "\r\n".
    base = len("GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port) + len("X-Pad: \r\n")
    pad = "p" * max(size - base, 1)
    argv = ["taskset", "-c", "0", "wrk", "-t1", "-c64", "-d%ds" % seconds, "-H", "X-Pad: " + pad,
            "http://127.0.0.1:%d/" % port]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    line = next((ln for ln in out.splitlines() if "requests in" in ln), None)
    if line is None:
        raise SystemExit("wrk printed no result:\n" + out)
    return int(line.split()[0])


def measure(buffer, sizes, duration, pass_no, results):
    """One pass over sizes with the upstream's client_header_buffer_size = buffer; appends
    (upstream us/request, req/s) to results[size]."""
    work = tempfile.mkdtemp(prefix="sg-upstream-cost-")
    conf = os.path.join(work, "upstream.conf")
    with open(conf, "w") as f:
        f.write(harness.upstream_conf(work, buffer))
    up = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", work, "-c", conf, "-e",
                           os.path.join(work, "error.log")], stderr=subprocess.DEVNULL)
    try:
        if not harness.wait_port(harness.UPSTREAM_PORT, up):
            raise SystemExit("upstream nginx did not start (see %s)" % work)
        time.sleep(0.3)  # the master forks its worker after binding
        workers = harness.process_tree(up.pid)
        for size in sizes:
            t0 = ticks(workers)
            n = run_wrk(harness.UPSTREAM_PORT, size, duration)
            t1 = ticks(workers)
            us = (t1 - t0) / harness.CLK_TCK * 1e6 / max(n, 1)
            results[size].append((us, n / duration))
            print("buffer %-3s pass %d  %5d-byte requests: %6.2f us upstream CPU/request  %7.0f req/s" % (
                buffer, pass_no, size, us, n / duration), flush=True)
    finally:
        up.terminate()
        up.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="680,1680", help="request sizes in bytes, comma-separated")
    ap.add_argument("--header-buffers", default="1k," + harness.NGINX_HEADER_BUFFER,
                    help="the upstream's client_header_buffer_size values to compare, comma-separated")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6, help="seconds per run")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit("%s not found (scripts/install.sh installs it)" % tool)
    if harness.port_open(harness.UPSTREAM_PORT):
        raise SystemExit("port %d is busy (a load test running?)" % harness.UPSTREAM_PORT)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    buffers = [b.strip() for b in args.header_buffers.split(",") if b.strip()]
    by_buffer = {b: {s: [] for s in sizes} for b in buffers}
    # Buffers alternate within each pass, so the host's drift over minutes spreads over all of them.
    for p in range(1, args.passes + 1):
        for b in buffers:
            measure(b, sizes, args.duration, p, by_buffer[b])
    print()
    for b in buffers:
        first = None  # each buffer's first size is the base of its ratios
        for size in sizes:
            us = statistics.median(r[0] for r in by_buffer[b][size])
            rps = statistics.median(r[1] for r in by_buffer[b][size])
            extra = "" if first is None else "  (%+.2f us, %.2fx)" % (us - first, us / first)
            first = us if first is None else first
            print("buffer %-3s %5d bytes: median %.2f us upstream CPU/request, %.0f req/s%s" % (b, size, us, rps, extra))


if __name__ == "__main__":
    main()
