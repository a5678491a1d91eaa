//! Which node gets a request: `nodes[].priority` (APISIX: lower priorities only when every higher
//! node is unavailable) and `checks.active` (probes from the control side take a node out and put
//! it back). Every test runs under both drivers.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{Gateway, Seen, Upstream, dead_node, get};

both_drivers!(
    backup_nodes_serve_only_when_every_primary_is_unavailable,
    active_checks_take_a_node_out_and_back_while_traffic_flows,
    passive_checks_count_the_configured_failure_statuses,
);

fn backup_nodes_serve_only_when_every_primary_is_unavailable(driver: &str) {
    let primary = Upstream::tagged("primary");
    let backup = Upstream::tagged("backup");
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: healthy
    nodes:
      - {{ host: 127.0.0.1, port: {pp}, weight: 1, priority: 10 }}
      - {{ host: 127.0.0.1, port: {bp}, weight: 100 }}
  - id: primary-down
    nodes:
      - {{ host: 127.0.0.1, port: {dp}, weight: 1, priority: 10 }}
      - {{ host: 127.0.0.1, port: {bp}, weight: 1, priority: -1 }}
routes:
  - id: healthy
    uri: /healthy/*
    upstream_id: healthy
  - id: down
    uri: /down/*
    upstream_id: primary-down
"#,
        pp = primary.addr.port(),
        bp = backup.addr.port(),
        dp = dead_node()
            .rsplit_once(':')
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default(),
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    for i in 0..20 {
        let r = get(gw.addr(), &format!("/healthy/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(
            r.header("x-upstream"),
            Some("primary"),
            "a lower priority is unused while a higher node is up, whatever its weight"
        );
    }
    assert!(backup.requests().is_empty());
    // The primary refuses connections: GETs move down to the backup, none fails.
    for i in 0..20 {
        let r = get(gw.addr(), &format!("/down/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(r.header("x-upstream"), Some("backup"));
    }
    assert_eq!(backup.requests().len(), 20);
    gw.assert_no_panic();
}

/// Node `b` answers its health endpoint with 500 while `sick` is set; traffic keeps flowing from
/// another thread the whole time and no request may fail.
fn active_checks_take_a_node_out_and_back_while_traffic_flows(driver: &str) {
    let a = Upstream::tagged("a");
    let sick = Arc::new(AtomicBool::new(false));
    let b = {
        let sick = sick.clone();
        Upstream::with_handler(Arc::new(move |seen: &Seen, s: &mut TcpStream| {
            let status = if seen.target == "/health" && sick.load(Ordering::Relaxed) {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let resp = format!("HTTP/1.1 {status}\r\nX-Upstream: b\r\nContent-Length: 2\r\n\r\nok");
            s.write_all(resp.as_bytes()).is_ok()
        }))
    };
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{a}": 1, "{b}": 1 }}
    checks:
      active:
        http_path: /health
        req_headers: ["X-Probe: shardgate"]
        healthy: {{ interval: 1, successes: 1 }}
        unhealthy: {{ interval: 1, http_failures: 1 }}
routes:
  - id: r
    uri: /t/*
    upstream_id: app
"#,
        a = a.node(),
        b = b.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    let traffic_to_b = || {
        b.requests()
            .iter()
            .filter(|s| s.target.starts_with("/t/"))
            .count()
    };

    // Background traffic, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let traffic = {
        let (stop, statuses, addr) = (stop.clone(), statuses.clone(), gw.addr());
        thread::spawn(move || {
            let started = Instant::now();
            for i in 0..5000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let r = get(addr, &format!("/t/bg{i}"), &[]);
                if let Ok(mut s) = statuses.lock() {
                    s.push(r.status);
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // Both nodes take traffic while healthy; the probes carry req_headers.
    let mut i = 0;
    let mut next = |gw: &Gateway| {
        i += 1;
        let r = get(gw.addr(), &format!("/t/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", gw.log());
        r.header("x-upstream").unwrap_or_default().to_owned()
    };
    assert!(
        (0..200).any(|_| next(&gw) == "b"),
        "b takes traffic while healthy"
    );
    let probe = b
        .requests()
        .into_iter()
        .find(|s| s.target == "/health")
        .expect("b was probed");
    assert_eq!(probe.header("x-probe"), Some("shardgate"));

    // b's health endpoint fails: the check takes it out, and it stops receiving traffic.
    sick.store(true, Ordering::Relaxed);
    assert!(
        gw.wait_log("upstream node marked unhealthy", Duration::from_secs(10)),
        "{}",
        gw.log()
    );
    let mut run = 0;
    for _ in 0..400 {
        if next(&gw) == "a" {
            run += 1;
        } else {
            run = 0;
        }
        if run == 16 {
            break;
        }
    }
    assert_eq!(run, 16, "both shards apply the verdict: {}", gw.log());
    let before = traffic_to_b();
    for _ in 0..40 {
        assert_eq!(next(&gw), "a", "an unhealthy node gets no traffic");
    }
    assert_eq!(traffic_to_b(), before);

    // Healthy again: back in.
    sick.store(false, Ordering::Relaxed);
    assert!(
        gw.wait_log("upstream node healthy again", Duration::from_secs(10)),
        "{}",
        gw.log()
    );
    assert!(
        (0..400).any(|_| next(&gw) == "b"),
        "b takes traffic again: {}",
        gw.log()
    );

    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic thread");
    let statuses = statuses.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        statuses.len() > 10,
        "background traffic ran: {}",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| *s == 200),
        "0 failed requests: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    gw.assert_no_panic();
}

/// `checks.passive.unhealthy.http_statuses`/`http_failures`: a node answering 500 is skipped after
/// two such answers in a row (for `health.cool_down`).
fn passive_checks_count_the_configured_failure_statuses(driver: &str) {
    let good = Upstream::tagged("good");
    let bad = Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
        s.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nX-Upstream: bad\r\nContent-Length: 0\r\n\r\n",
        )
        .is_ok()
    }));
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{g}": 1, "{b}": 1 }}
    health: {{ cool_down: 60 }}
    checks:
      passive:
        unhealthy: {{ http_statuses: [500], http_failures: 2 }}
routes:
  - id: r
    uri: /*
    upstream_id: app
"#,
        g = good.node(),
        b = bad.node()
    );
    // One shard: passive counts are per shard.
    let gw = Gateway::start_on(&yaml, driver, 1);
    let statuses: Vec<u16> = (0..20)
        .map(|i| get(gw.addr(), &format!("/p/{i}"), &[]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        2,
        "two 500s in a row take the node out: {statuses:?}"
    );
    assert_eq!(bad.requests().len(), 2);
    assert!(
        gw.wait_log(
            "node answered failure statuses repeatedly",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );
    gw.assert_no_panic();
}
