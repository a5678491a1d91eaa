#!/usr/bin/env python3
"""SVG chart of a load-test run, written by hand (no plotting library).

    python3 loadtest/chart.py RESULTS.csv [-o RESULTS.svg] [--title TEXT]

harness.py calls write_svg() after every run, beside its .md and .csv. Per scenario, one row:
requests/s and CPU microseconds per request for each peer (bar = median over the kept passes,
whisker = the lowest and highest pass), and latency percentiles p50 to p99.99 per peer from wrk's
distribution (median over passes; log scale). Only the CSV columns scenario, peer, kept, rps,
cpu_us, p50, p75, p90, p95, p99, p999, p9999 are read; a column a run did not record is skipped.
"""

import argparse
import csv
import html
import math
import statistics
import sys

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f", "#bab0ac"]
# (CSV column, label, percentile) for the latency plot; wrk reports microseconds.
PERCENTILES = [("p50", "p50", 50.0), ("p75", "p75", 75.0), ("p90", "p90", 90.0), ("p95", "p95", 95.0),
               ("p99", "p99", 99.0), ("p999", "p99.9", 99.9), ("p9999", "p99.99", 99.99)]
ROW_H = 250
PANEL_W = 330
GAP = 30
LEFT = 20
TOP = 60


def esc(s):
    return html.escape(str(s), quote=True)


def num(row, key):
    try:
        v = float(row.get(key, ""))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def collect(rows):
    """{scenario: {peer: {metric: [values per kept pass]}}}, in first-seen order."""
    out = {}
    for r in rows:
        if str(r.get("kept", "1")) not in ("1", "True", "true"):
            continue
        peers = out.setdefault(r["scenario"], {})
        m = peers.setdefault(r["peer"], {})
        for key in ["rps", "cpu_us"] + [p[0] for p in PERCENTILES]:
            v = num(r, key)
            if v is not None and v > 0:
                m.setdefault(key, []).append(v)
    return out


def nice_max(v):
    """A round axis maximum at or above v."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for f in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if f * exp >= v:
            return f * exp
    return 10 * exp


def fmt(v):
    if v >= 10000:
        return "%.0fk" % (v / 1000)
    if v >= 1000:
        return "%.1fk" % (v / 1000)
    if v >= 10:
        return "%.0f" % v
    return "%.2g" % v


def bars(out, x0, y0, title, unit, peers, key, colors):
    """Horizontal bars: median per peer, whisker from the lowest to the highest pass."""
    items = [(p, vals[key]) for p, vals in peers.items() if vals.get(key)]
    out.append('<text x="%d" y="%d" class="h">%s</text>' % (x0, y0 + 14, esc(title)))
    if not items:
        out.append('<text x="%d" y="%d" class="s">no data</text>' % (x0, y0 + 40))
        return
    label_w = 120
    plot_w = PANEL_W - label_w - 10
    top = y0 + 30
    bar_h = min(22, (ROW_H - 70) // max(len(items), 1))
    vmax = nice_max(max(max(v) for _, v in items))
    for i, (peer, vals) in enumerate(items):
        y = top + i * bar_h
        med = statistics.median(vals)
        w = plot_w * med / vmax
        lo, hi = min(vals), max(vals)
        out.append('<text x="%d" y="%d" class="s" text-anchor="end">%s</text>'
                   % (x0 + label_w - 6, y + bar_h * 0.7, esc(peer)))
        out.append('<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: median %s %s over %d passes '
                   '(%s to %s)</title></rect>' % (x0 + label_w, y + 2, w, bar_h - 4, colors[peer], esc(peer),
                                                   fmt(med), esc(unit), len(vals), fmt(lo), fmt(hi)))
        if hi > lo:
            xl, xh = x0 + label_w + plot_w * lo / vmax, x0 + label_w + plot_w * hi / vmax
            ym = y + bar_h / 2
            out.append('<path d="M%.1f %.1fH%.1fM%.1f %.1fV%.1fM%.1f %.1fV%.1f" class="w"/>'
                       % (xl, ym, xh, xl, ym - 4, ym + 4, xh, ym - 4, ym + 4))
        out.append('<text x="%.1f" y="%.1f" class="v">%s</text>'
                   % (x0 + label_w + max(w, plot_w * hi / vmax) + 4, y + bar_h * 0.7, fmt(med)))
    axis_y = top + len(items) * bar_h + 4
    out.append('<path d="M%d %dH%d" class="a"/>' % (x0 + label_w, axis_y, x0 + label_w + plot_w))
    out.append('<text x="%d" y="%d" class="s">0</text>' % (x0 + label_w, axis_y + 14))
    out.append('<text x="%d" y="%d" class="s" text-anchor="end">%s %s</text>'
               % (x0 + label_w + plot_w, axis_y + 14, fmt(vmax), esc(unit)))


def percentiles(out, x0, y0, peers, colors):
    """Latency (ms, log scale) against percentile (log scale of 1/(1-p))."""
    out.append('<text x="%d" y="%d" class="h">latency by percentile (ms, log scale)</text>' % (x0, y0 + 14))
    series = {}
    for peer, vals in peers.items():
        pts = [(pct, statistics.median(vals[key]) / 1000.0) for key, _, pct in PERCENTILES if vals.get(key)]
        if pts:
            series[peer] = pts
    if not series:
        out.append('<text x="%d" y="%d" class="s">no data</text>' % (x0, y0 + 40))
        return
    left, top, w, h = x0 + 40, y0 + 30, PANEL_W - 60, ROW_H - 80
    used = [p for p in PERCENTILES if any(pct == p[2] for pts in series.values() for pct, _ in pts)]
    xs = {pct: math.log10(1 / (1 - pct / 100.0)) for _, _, pct in used}
    xmin, xmax = min(xs.values()), max(xs.values())
    all_ms = [v for pts in series.values() for _, v in pts]
    lo = 10 ** math.floor(math.log10(max(min(all_ms), 1e-3)))
    hi = 10 ** math.ceil(math.log10(max(all_ms)))
    if hi <= lo:
        hi = lo * 10

    def px(pct):
        return left + (w * (xs[pct] - xmin) / (xmax - xmin) if xmax > xmin else w / 2)

    def py(ms):
        return top + h - h * (math.log10(max(ms, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    decade = lo
    while decade <= hi * 1.0001:
        y = py(decade)
        out.append('<path d="M%d %.1fH%d" class="g"/>' % (left, y, left + w))
        out.append('<text x="%d" y="%.1f" class="s" text-anchor="end">%s</text>' % (left - 4, y + 4, fmt(decade)))
        decade *= 10
    for _, label, pct in used:
        x = px(pct)
        out.append('<path d="M%.1f %dV%d" class="g"/>' % (x, top, top + h))
        out.append('<text x="%.1f" y="%d" class="s" text-anchor="middle">%s</text>' % (x, top + h + 14, esc(label)))
    for peer, pts in series.items():
        d = " ".join("%s%.1f %.1f" % ("M" if i == 0 else "L", px(pct), py(ms)) for i, (pct, ms) in enumerate(pts))
        out.append('<path d="%s" fill="none" stroke="%s" stroke-width="2"><title>%s</title></path>'
                   % (d, colors[peer], esc(peer)))
        for pct, ms in pts:
            out.append('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"><title>%s p%s: %.2f ms</title></circle>'
                       % (px(pct), py(ms), colors[peer], esc(peer), ("%g" % pct), ms))


def render(rows, title):
    data = collect(rows)
    peer_names = []
    for peers in data.values():
        for p in peers:
            if p not in peer_names:
                peer_names.append(p)
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(peer_names)}
    width = LEFT * 2 + 3 * PANEL_W + 2 * GAP
    height = TOP + max(len(data), 1) * ROW_H + 40
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12">' % (width, height, width, height),
           '<style>.t{font-size:16px;font-weight:bold}.h{font-size:13px;font-weight:bold}.s{font-size:11px;fill:#444}'
           '.v{font-size:10px;fill:#222}.a{stroke:#888}.g{stroke:#e4e4e4}.w{stroke:#222;stroke-width:1.2;fill:none}'
           '</style>',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="26" class="t">%s</text>' % (LEFT, esc(title)),
           '<text x="%d" y="44" class="s">bars: median over passes; whiskers: lowest to highest pass; '
           'latency: median over passes of wrk&#39;s percentiles, colours as in the bars</text>' % LEFT]
    if not data:
        out.append('<text x="%d" y="%d">no kept passes</text>' % (LEFT, TOP + 20))
    for i, (sc, peers) in enumerate(data.items()):
        y0 = TOP + i * ROW_H
        out.append('<text x="%d" y="%d" class="h" fill="#000">%s</text>' % (LEFT, y0 + 2, esc(sc)))
        bars(out, LEFT, y0 + 6, "requests/s (higher is better)", "req/s", peers, "rps", colors)
        bars(out, LEFT + PANEL_W + GAP, y0 + 6, "CPU us per request (lower is better)", "us", peers, "cpu_us", colors)
        percentiles(out, LEFT + 2 * (PANEL_W + GAP), y0 + 6, peers, colors)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(csv_path, svg_path, title):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(svg_path, "w") as f:
        f.write(render(rows, title))
    return svg_path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("-o", "--out", default="")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    out = args.out or (args.csv[:-4] if args.csv.endswith(".csv") else args.csv) + ".svg"
    write_svg(args.csv, out, args.title or "shardgate load test: " + args.csv.rsplit("/", 1)[-1])
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
