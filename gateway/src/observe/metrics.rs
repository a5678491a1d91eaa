//! Shard-local metrics (plain `Cell`s, no atomics on the request path) and their merge into
//! Prometheus text, done by the metrics actor when `/metrics` is scraped.
//!
//! Names follow Prometheus's conventions (`_total` counters, `_seconds` histograms, units in the
//! name) and APISIX's labels where APISIX has the metric (`route`, `code` as in `apisix_http_status`).
//! Label values come from the config (route ids) or from small fixed sets (status codes, error
//! codes), never from request data, so the number of series is bounded by the config.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;

/// Upper bounds of the latency buckets, in microseconds (+Inf is implicit).
const BUCKETS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const NBUCKETS: usize = BUCKETS_US.len() + 1;

/// A fixed-bucket latency histogram: a bucket lookup and three increments per observation.
#[derive(Default)]
struct Buckets {
    counts: [Cell<u64>; NBUCKETS],
    sum_us: Cell<u64>,
}

impl Buckets {
    fn observe(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        let c = &self.counts[i];
        c.set(c.get() + 1);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
    }

    fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].get()),
            sum_us: self.sum_us.get(),
        }
    }
}

/// One histogram's counts at one instant (non-cumulative, the last bucket is +Inf).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistSnapshot {
    pub counts: [u64; NBUCKETS],
    pub sum_us: u64,
}

impl HistSnapshot {
    fn add(&mut self, o: &HistSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The latencies of the request being logged. The `log` phase records them with
/// [`ShardMetrics::record_latency`] just before it counts the request on its route, which then
/// files them under that route; sharing the cell keeps the phase's two calls unchanged.
type Latest = Rc<Cell<Option<(u64, Option<u64>)>>>;

/// Counters of one route on one shard; inherited across reloads by route id.
pub struct RouteStats {
    by_status: RefCell<Vec<(u16, u64)>>,
    latest: Latest,
    request: Buckets,
    upstream: Buckets,
}

impl RouteStats {
    fn new(latest: Latest) -> RouteStats {
        RouteStats {
            by_status: RefCell::new(Vec::new()),
            latest,
            request: Buckets::default(),
            upstream: Buckets::default(),
        }
    }

    pub fn record(&self, status: u16) {
        let mut v = self.by_status.borrow_mut();
        match v.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => v.push((status, 1)),
        }
        if let Some((total_us, upstream_us)) = self.latest.take() {
            self.request.observe(total_us);
            if let Some(u) = upstream_us {
                self.upstream.observe(u);
            }
        }
    }
}

/// Everything one shard counts.
pub struct ShardMetrics {
    pub shard: usize,
    routes: RefCell<HashMap<Rc<str>, Rc<RouteStats>>>,
    /// Requests that matched no route, by status.
    pub unrouted: Rc<RouteStats>,
    latest: Latest,
    pub open_connections: Cell<i64>,
    pub accepted: Cell<u64>,
    pub requests: Cell<u64>,
    errors: RefCell<Vec<(&'static str, u64)>>,
    /// Extra counters owned by plugins (`openid-connect` cache hits, JWKS fetches seen, ...).
    pub plugin_counters: RefCell<BTreeMap<String, u64>>,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let latest: Latest = Rc::new(Cell::new(None));
        ShardMetrics {
            shard,
            routes: RefCell::new(HashMap::new()),
            unrouted: Rc::new(RouteStats::new(latest.clone())),
            latest,
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
        let s = Rc::new(RouteStats::new(self.latest.clone()));
        routes.insert(Rc::from(id), s.clone());
        s
    }

    /// Latencies of the request about to be counted on its route (see [`Latest`]).
    pub fn record_latency(&self, total_us: u64, upstream_us: Option<u64>) {
        self.latest.set(Some((total_us, upstream_us)));
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
        let mut latency = Vec::new();
        let mut add = |id: &str, s: &RouteStats| {
            for (status, n) in s.by_status.borrow().iter() {
                routes.push((id.to_string(), *status, *n));
            }
            let (req, up) = (s.request.snapshot(), s.upstream.snapshot());
            if req.count() > 0 || up.count() > 0 {
                latency.push((id.to_string(), req, up));
            }
        };
        for (id, s) in self.routes.borrow().iter() {
            add(id, s);
        }
        add("", &self.unrouted);
        MetricsSnapshot {
            shard: self.shard,
            routes,
            latency,
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
    /// (route id or "", request latency, upstream latency)
    pub latency: Vec<(String, HistSnapshot, HistSnapshot)>,
    pub open_connections: i64,
    pub accepted: u64,
    pub requests: u64,
    pub errors: Vec<(String, u64)>,
    pub counters: BTreeMap<String, u64>,
}

/// `# HELP` text of the counters plugins and the OIDC control side report by name.
const PLUGIN_HELP: [(&str, &str); 8] = [
    (
        "shardgate_oidc_token_cache_total",
        "openid-connect verified-token cache lookups, by result.",
    ),
    (
        "shardgate_oidc_rejections_total",
        "openid-connect bearer tokens rejected, by reason.",
    ),
    (
        "shardgate_oidc_introspection_calls_total",
        "openid-connect token introspection calls to the identity provider.",
    ),
    (
        "shardgate_oidc_introspection_duration_seconds_total",
        "Time spent in token introspection calls to the identity provider.",
    ),
    (
        "shardgate_oidc_discovery_fetches_total",
        "OpenID Connect discovery document fetches, by provider and outcome.",
    ),
    (
        "shardgate_oidc_jwks_fetches_total",
        "JWKS fetches, by provider and outcome.",
    ),
    (
        "shardgate_oidc_jwks_unknown_kid_refetches_total",
        "JWKS refetches for an unknown key id, by provider and outcome.",
    ),
    (
        "shardgate_oidc_idp_shared_calls_total",
        "Identity provider calls made once for all shards, by provider and outcome.",
    ),
];

/// Counters kept in microseconds (integers on the hot path) and exposed in seconds.
const MICROS_SUFFIX: &str = "_microseconds_total";

/// Merges shard snapshots into Prometheus text exposition format.
pub fn render_prometheus(shards: &[MetricsSnapshot], extra: &BTreeMap<String, u64>) -> String {
    let mut out = String::with_capacity(8192);
    let mut by_route: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let mut latency: BTreeMap<String, (HistSnapshot, HistSnapshot)> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut counters: BTreeMap<String, u64> = extra.clone();
    for s in shards {
        for (r, st, n) in &s.routes {
            *by_route.entry((r.clone(), *st)).or_default() += n;
        }
        for (r, req, up) in &s.latency {
            let e = latency.entry(r.clone()).or_default();
            e.0.add(req);
            e.1.add(up);
        }
        for (c, n) in &s.errors {
            *errors.entry(c.clone()).or_default() += n;
        }
        for (c, n) in &s.counters {
            *counters.entry(c.clone()).or_default() += n;
        }
    }

    out.push_str("# HELP shardgate_build_info The running shardgate's version.\n");
    out.push_str("# TYPE shardgate_build_info gauge\n");
    let _ = writeln!(
        out,
        "shardgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    out.push_str(
        "# HELP shardgate_http_requests_total Requests answered, by route (\"\" when none matched) and HTTP status code.\n",
    );
    out.push_str("# TYPE shardgate_http_requests_total counter\n");
    for ((route, status), n) in &by_route {
        let _ = writeln!(
            out,
            "shardgate_http_requests_total{{route=\"{}\",code=\"{status}\"}} {n}",
            escape(route)
        );
    }
    out.push_str(
        "# HELP shardgate_errors_total Requests that failed or were rejected, by error code.\n",
    );
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
        "Request latency from the first byte of the request to the last byte of the response, by route.",
        latency.iter().map(|(r, (req, _))| (r.as_str(), req)),
    );
    histogram(
        &mut out,
        "shardgate_upstream_duration_seconds",
        "Upstream latency (connect to response end), by route.",
        latency.iter().map(|(r, (_, up))| (r.as_str(), up)),
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
    // Plugin counters are named `metric{label="v"}` already; group them by metric name for the
    // HELP and TYPE lines (the map is sorted, so one metric's series are adjacent).
    let mut last = String::new();
    for (name, n) in &counters {
        let (metric, labels) = match name.find('{') {
            Some(i) => name.split_at(i),
            None => (name.as_str(), ""),
        };
        let (metric, value) = match metric.strip_suffix(MICROS_SUFFIX) {
            Some(stem) => (
                format!("{stem}_seconds_total"),
                format!("{}", *n as f64 / 1e6),
            ),
            None => (metric.to_string(), n.to_string()),
        };
        if metric != last {
            let help = PLUGIN_HELP
                .iter()
                .find(|(m, _)| *m == metric)
                .map_or("A counter reported by a plugin.", |(_, h)| *h);
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} counter");
            last = metric.clone();
        }
        let _ = writeln!(out, "{metric}{labels} {value}");
    }
    out
}

fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, &'a HistSnapshot)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (route, h) in series {
        let route = escape(route);
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = h.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{route=\"{route}\"}} {}",
            h.sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {count}");
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `log` phase does for one request.
    fn log(m: &ShardMetrics, route: &str, status: u16, total_us: u64, upstream_us: Option<u64>) {
        m.record_latency(total_us, upstream_us);
        if route.is_empty() {
            m.unrouted.record(status);
        } else {
            m.route(route).record(status);
        }
    }

    #[test]
    fn merges_shards() {
        let a = ShardMetrics::new(0);
        let b = ShardMetrics::new(1);
        log(&a, "api", 200, 300, Some(200));
        log(&a, "api", 200, 400, Some(300));
        log(&b, "api", 200, 3000, Some(2000));
        log(&b, "api", 502, 3000, None);
        log(&b, "", 404, 50, None);
        let text = render_prometheus(&[a.snapshot(), b.snapshot()], &BTreeMap::new());
        for line in [
            "shardgate_http_requests_total{route=\"api\",code=\"200\"} 3",
            "shardgate_http_requests_total{route=\"api\",code=\"502\"} 1",
            "shardgate_http_requests_total{route=\"\",code=\"404\"} 1",
            "shardgate_request_duration_seconds_count{route=\"api\"} 4",
            "shardgate_request_duration_seconds_count{route=\"\"} 1",
            "shardgate_request_duration_seconds_bucket{route=\"api\",le=\"0.0005\"} 2",
            "shardgate_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 4",
            "shardgate_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 4",
            "shardgate_request_duration_seconds_sum{route=\"api\"} 0.0067",
            "shardgate_upstream_duration_seconds_count{route=\"api\"} 3",
            "shardgate_build_info{version=\"",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn every_metric_has_help_and_type_and_units_are_seconds() {
        let a = ShardMetrics::new(0);
        log(&a, "api", 200, 300, Some(200));
        a.bump("shardgate_oidc_token_cache_total{result=\"hit\"}", 2);
        a.bump(
            "shardgate_oidc_introspection_duration_microseconds_total",
            1_500_000,
        );
        a.bump("shardgate_oidc_made_up_total", 1);
        let mut extra = BTreeMap::new();
        extra.insert(
            "shardgate_oidc_jwks_fetches_total{discovery=\"x\",outcome=\"ok\"}".to_string(),
            1,
        );
        let text = render_prometheus(&[a.snapshot()], &extra);
        let mut helped = std::collections::HashSet::new();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or_default().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap_or_default().to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(helped.contains(family), "no HELP before {line}");
                assert!(typed.contains(family), "no TYPE before {line}");
            }
        }
        assert!(
            text.contains("shardgate_oidc_introspection_duration_seconds_total 1.5\n"),
            "{text}"
        );
        assert!(!text.contains("microseconds"), "{text}");
    }
}
