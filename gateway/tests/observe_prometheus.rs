//! `/metrics` checked by Prometheus's own tools: `promtool check metrics` accepts the exposition,
//! a real Prometheus (Debian's `prometheus` package, installed by `scripts/install.sh --test`)
//! scrapes the admin listener and answers a query for the request counter, and every query of
//! `packaging/grafana-dashboard.json` uses a metric this scrape returned and runs in Prometheus.
//! Everything listens on 127.0.0.1; every wait is bounded.
#![allow(clippy::unwrap_used)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{Gateway, Idp, Upstream, free_port, get, repo_root, urlenc};

const API: &str = "urn:shardgate:api";

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("`{name}` not found: run scripts/install.sh --test (Debian package `prometheus`)");
}

/// A gateway with a plain route and a bearer-token route, after traffic that touches every metric
/// family: 200s, a 404, a rejected token, cache misses and hits, a discovery and a JWKS fetch.
fn gateway_with_traffic(idp: &Idp, up: &Upstream) -> Gateway {
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\nroutes:\n\
         \x20 - id: api\n    uri: /api/*\n    upstream_id: app\n    plugins:\n      openid-connect:\n\
         \x20       client_id: gateway\n        discovery: {}\n        bearer_only: true\n        use_jwks: true\n\
         \x20 - id: web\n    uri: /web/*\n    upstream_id: app\n",
        up.node(),
        idp.discovery()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(gw.admin_addr(), "/readyz", &[]).status != 200 {
        assert!(Instant::now() < deadline, "not ready:\n{}", gw.log());
        thread::sleep(Duration::from_millis(50));
    }
    let token = idp.client_credentials("m2m", "read", Some(API));
    let auth = format!("Bearer {token}");
    for _ in 0..3 {
        assert_eq!(
            get(gw.addr(), "/api/x", &[("Authorization", &auth)]).status,
            200
        );
    }
    assert_eq!(
        get(
            gw.addr(),
            "/api/x",
            &[("Authorization", "Bearer not.a.jwt")]
        )
        .status,
        401
    );
    assert_eq!(get(gw.addr(), "/web/page", &[]).status, 200);
    assert_eq!(get(gw.addr(), "/nowhere", &[]).status, 404);
    gw
}

/// Metric family names in an exposition (`_bucket`/`_sum`/`_count` folded into their histogram).
fn families(text: &str) -> BTreeSet<String> {
    let mut histograms = BTreeSet::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
            if kind == "histogram" {
                histograms.insert(name.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| histograms.contains(*f)))
            .unwrap_or(name);
        out.insert(family.to_string());
    }
    out
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("shardgate-prom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: shardgate\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; `None` while Prometheus is not up yet.
    fn query(&self, q: &str) -> Option<serde_json::Value> {
        std::net::TcpStream::connect(self.addr).ok()?;
        let r = get(
            self.addr,
            &format!("/api/v1/query?query={}", urlenc(q)),
            &[],
        );
        serde_json::from_str(&r.text()).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = gateway_with_traffic(&idp, &up);
    let text = gw.metrics();

    // promtool: the format and Prometheus's naming lints.
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n--- exposition:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let scraped = families(&text);
    for want in [
        "shardgate_build_info",
        "shardgate_http_requests_total",
        "shardgate_errors_total",
        "shardgate_request_duration_seconds",
        "shardgate_upstream_duration_seconds",
        "shardgate_oidc_token_cache_total",
        "shardgate_oidc_rejections_total",
        "shardgate_oidc_jwks_fetches_total",
        "shardgate_oidc_discovery_fetches_total",
    ] {
        assert!(scraped.contains(want), "{want} not scraped:\n{text}");
    }

    // A real Prometheus scrapes the admin listener; its query API returns the request counter.
    let prom = Prometheus::start(gw.admin_addr());
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        let v = prom.query("shardgate_http_requests_total{route=\"api\",code=\"200\"}");
        if let Some(result) = v
            .as_ref()
            .and_then(|v| v["data"]["result"].as_array())
            .filter(|r| !r.is_empty())
        {
            break result.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus returned no request counter within 60 s: {v:?}\n{}",
            prom.log()
        );
        thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(series[0]["metric"]["job"], "shardgate", "{series:?}");
    assert_eq!(series[0]["value"][1], "3", "{series:?}");
    let up_q = prom.query("up{job=\"shardgate\"}").unwrap();
    assert_eq!(up_q["data"]["result"][0]["value"][1], "1", "{up_q}");

    // The Grafana dashboard: every query names only metrics this scrape returned, and runs.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("packaging/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("shardgate_"))
            .collect();
        assert!(!names.is_empty(), "query uses no shardgate metric: {expr}");
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| scraped.contains(*f)))
                .unwrap_or(name);
            assert!(
                scraped.contains(family),
                "dashboard query uses `{name}`, which the scrape did not return: {expr}"
            );
        }
        if expr.starts_with("label_values") {
            continue;
        }
        let runnable = expr
            .replace("$__rate_interval", "1m")
            .replace("=~\"$instance\"", "=~\".*\"");
        let v = prom.query(&runnable).unwrap();
        assert_eq!(
            v["status"], "success",
            "Prometheus refused `{runnable}`: {v}"
        );
    }
}

#[test]
fn families_folds_histogram_series() {
    let text = "# TYPE a histogram\na_bucket{le=\"1\"} 1\na_sum 1\na_count 1\n# TYPE b_count counter\nb_count 2\n";
    let f: Vec<String> = families(text).into_iter().collect();
    assert_eq!(f, ["a", "b_count"]);
}
