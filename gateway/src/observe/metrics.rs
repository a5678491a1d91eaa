//! Shard-local metrics (plain `Cell`s and hdrhistograms, no atomics on the request path) and their
//! merge into Prometheus text, done by the metrics actor when `/metrics` is scraped.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;

use hdrhistogram::Histogram;

/// Latency histograms cover 1 us .. 60 s with 3 significant digits.
fn new_hist() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure would be a bug in this line.
    #[allow(clippy::unwrap_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// Counters of one route on one shard; inherited across reloads by route id.
#[derive(Default)]
pub struct RouteStats {
    by_status: RefCell<Vec<(u16, u64)>>,
}

impl RouteStats {
    pub fn record(&self, status: u16) {
        let mut v = self.by_status.borrow_mut();
        match v.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => v.push((status, 1)),
        }
    }
}

/// Everything one shard counts.
pub struct ShardMetrics {
    pub shard: usize,
    routes: RefCell<HashMap<Rc<str>, Rc<RouteStats>>>,
    /// Requests that matched no route, by status.
    pub unrouted: Rc<RouteStats>,
    total_us: RefCell<Histogram<u64>>,
    upstream_us: RefCell<Histogram<u64>>,
    pub open_connections: Cell<i64>,
    pub accepted: Cell<u64>,
    pub requests: Cell<u64>,
    errors: RefCell<Vec<(&'static str, u64)>>,
    /// Extra counters owned by plugins (`openid-connect` cache hits, JWKS fetches seen, ...).
    pub plugin_counters: RefCell<BTreeMap<String, u64>>,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        ShardMetrics {
            shard,
            routes: RefCell::new(HashMap::new()),
            unrouted: Rc::new(RouteStats::default()),
            total_us: RefCell::new(new_hist()),
            upstream_us: RefCell::new(new_hist()),
            open_connections: Cell::new(0),
            accepted: Cell::new(0),
            requests: Cell::new(0),
            errors: RefCell::new(Vec::new()),
            plugin_counters: RefCell::new(BTreeMap::new()),
        }
    }

    /// The stats of a route id, created on first use (at config compile time, not per request).
    pub fn route(&self, id: &str) -> Rc<RouteStats> {
        let mut routes = self.routes.borrow_mut();
        if let Some(s) = routes.get(id) {
            return s.clone();
        }
        let s = Rc::new(RouteStats::default());
        routes.insert(Rc::from(id), s.clone());
        s
    }

    pub fn record_latency(&self, total_us: u64, upstream_us: Option<u64>) {
        let _ = self
            .total_us
            .borrow_mut()
            .record(total_us.clamp(1, 60_000_000));
        if let Some(u) = upstream_us {
            let _ = self.upstream_us.borrow_mut().record(u.clamp(1, 60_000_000));
        }
    }

    pub fn record_error(&self, code: &'static str) {
        let mut v = self.errors.borrow_mut();
        match v.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => v.push((code, 1)),
        }
    }

    pub fn bump(&self, counter: &str, by: u64) {
        let mut m = self.plugin_counters.borrow_mut();
        match m.get_mut(counter) {
            Some(n) => *n += by,
            None => {
                m.insert(counter.to_string(), by);
            }
        }
    }

    /// A `Send` copy for the metrics actor.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut routes = Vec::new();
        for (id, s) in self.routes.borrow().iter() {
            for (status, n) in s.by_status.borrow().iter() {
                routes.push((id.to_string(), *status, *n));
            }
        }
        for (status, n) in self.unrouted.by_status.borrow().iter() {
            routes.push((String::new(), *status, *n));
        }
        MetricsSnapshot {
            shard: self.shard,
            routes,
            total_us: self.total_us.borrow().clone(),
            upstream_us: self.upstream_us.borrow().clone(),
            open_connections: self.open_connections.get(),
            accepted: self.accepted.get(),
            requests: self.requests.get(),
            errors: self
                .errors
                .borrow()
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
                .collect(),
            counters: self.plugin_counters.borrow().clone(),
        }
    }
}

/// One shard's metrics at one instant.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    pub shard: usize,
    /// (route id or "" for unrouted, status, count)
    pub routes: Vec<(String, u16, u64)>,
    pub total_us: Histogram<u64>,
    pub upstream_us: Histogram<u64>,
    pub open_connections: i64,
    pub accepted: u64,
    pub requests: u64,
    pub errors: Vec<(String, u64)>,
    pub counters: BTreeMap<String, u64>,
}

const BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// Merges shard snapshots into Prometheus text exposition format.
pub fn render_prometheus(shards: &[MetricsSnapshot], extra: &BTreeMap<String, u64>) -> String {
    let mut out = String::with_capacity(4096);
    let mut by_route: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut counters: BTreeMap<String, u64> = extra.clone();
    let mut total = new_hist();
    let mut upstream = new_hist();
    for s in shards {
        for (r, st, n) in &s.routes {
            *by_route.entry((r.clone(), *st)).or_default() += n;
        }
        for (c, n) in &s.errors {
            *errors.entry(c.clone()).or_default() += n;
        }
        for (c, n) in &s.counters {
            *counters.entry(c.clone()).or_default() += n;
        }
        let _ = total.add(&s.total_us);
        let _ = upstream.add(&s.upstream_us);
    }

    out.push_str("# HELP shardgate_requests_total Requests answered, by route and status.\n");
    out.push_str("# TYPE shardgate_requests_total counter\n");
    for ((route, status), n) in &by_route {
        let _ = writeln!(
            out,
            "shardgate_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            escape(route)
        );
    }
    out.push_str("# HELP shardgate_errors_total Requests that failed, by error code.\n");
    out.push_str("# TYPE shardgate_errors_total counter\n");
    for (code, n) in &errors {
        let _ = writeln!(
            out,
            "shardgate_errors_total{{code=\"{}\"}} {n}",
            escape(code)
        );
    }
    histogram(
        &mut out,
        "shardgate_request_duration_seconds",
        "Total request latency.",
        &total,
    );
    histogram(
        &mut out,
        "shardgate_upstream_duration_seconds",
        "Upstream latency (connect to response end).",
        &upstream,
    );

    out.push_str("# HELP shardgate_open_connections Client connections open now.\n");
    out.push_str("# TYPE shardgate_open_connections gauge\n");
    for s in shards {
        let _ = writeln!(
            out,
            "shardgate_open_connections{{shard=\"{}\"}} {}",
            s.shard, s.open_connections
        );
    }
    out.push_str("# HELP shardgate_shard_requests_total Requests handled per shard.\n");
    out.push_str("# TYPE shardgate_shard_requests_total counter\n");
    for s in shards {
        let _ = writeln!(
            out,
            "shardgate_shard_requests_total{{shard=\"{}\"}} {}",
            s.shard, s.requests
        );
    }
    out.push_str(
        "# HELP shardgate_shard_connections_accepted_total Connections accepted per shard.\n",
    );
    out.push_str("# TYPE shardgate_shard_connections_accepted_total counter\n");
    for s in shards {
        let _ = writeln!(
            out,
            "shardgate_shard_connections_accepted_total{{shard=\"{}\"}} {}",
            s.shard, s.accepted
        );
    }
    // Plugin counters are named `metric{label="v"}` already; group them by metric name for TYPE lines.
    let mut last = String::new();
    for (name, n) in &counters {
        let metric = name.split('{').next().unwrap_or(name);
        if metric != last {
            let _ = writeln!(out, "# TYPE {metric} counter");
            last = metric.to_string();
        }
        let _ = writeln!(out, "{name} {n}");
    }
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for b in BUCKETS_US {
        let n = h.count_between(0, b);
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", b as f64 / 1e6);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let sum: f64 = h
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum();
    let _ = writeln!(out, "{name}_sum {}", sum / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_shards() {
        let a = ShardMetrics::new(0);
        let b = ShardMetrics::new(1);
        a.route("api").record(200);
        a.route("api").record(200);
        b.route("api").record(200);
        b.route("api").record(502);
        a.record_latency(300, Some(200));
        b.record_latency(3000, None);
        let text = render_prometheus(&[a.snapshot(), b.snapshot()], &BTreeMap::new());
        assert!(
            text.contains("shardgate_requests_total{route=\"api\",status=\"200\"} 3"),
            "{text}"
        );
        assert!(text.contains("shardgate_requests_total{route=\"api\",status=\"502\"} 1"));
        assert!(text.contains("shardgate_request_duration_seconds_count 2"));
        assert!(text.contains("shardgate_upstream_duration_seconds_count 1"));
    }
}
