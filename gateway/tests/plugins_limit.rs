//! `limit-count` and `limit-req` through the running gateway against a real loopback upstream:
//! the quota headers, the rejection APISIX answers with, and exactness across shards (N shards
//! never each grant the full quota).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Conn, Gateway, Upstream, config, get};

fn gateway(up: &Upstream, plugins: &str, shards: usize) -> Gateway {
    let yaml = config(&[&up.node()], "", "", &format!("plugins:\n{plugins}"));
    Gateway::start(&yaml, &["--shards", &shards.to_string()])
}

#[test]
fn limit_count_counts_per_key_with_quota_headers_then_rejects() {
    let up = Upstream::echo();
    let gw = gateway(
        &up,
        "  limit-count:\n    count: 2\n    time_window: 60\n    key: http_x_user\n    rejected_code: 429\n    rejected_msg: slow down",
        2,
    );
    let a = [("X-User", "alice")];
    let r1 = get(gw.addr(), "/x", &a);
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(r1.header("X-RateLimit-Limit"), Some("2"));
    assert_eq!(r1.header("X-RateLimit-Remaining"), Some("1"));
    let reset: u64 = r1.header("X-RateLimit-Reset").unwrap().parse().unwrap();
    assert!((59..=60).contains(&reset), "{reset}");
    let r2 = get(gw.addr(), "/x", &a);
    assert_eq!(r2.status, 200);
    assert_eq!(r2.header("X-RateLimit-Remaining"), Some("0"));
    let r3 = get(gw.addr(), "/x", &a);
    assert_eq!(r3.status, 429, "{}", r3.text());
    assert_eq!(r3.json()["error_msg"], "slow down");
    assert_eq!(r3.header("X-RateLimit-Limit"), Some("2"));
    assert_eq!(r3.header("X-RateLimit-Remaining"), Some("0"));
    // Another key has its own window; a request without the header counts by remote_addr.
    assert_eq!(get(gw.addr(), "/x", &[("X-User", "bob")]).status, 200);
    assert_eq!(get(gw.addr(), "/x", &[]).status, 200);
    // Only the passing requests reached the upstream.
    assert_eq!(up.requests().len(), 4);
    // A refusal is logged and counted as one, not a 500.
    assert!(
        gw.metrics()
            .contains("shardgate_errors_total{code=\"limit_count_rejected\"} 1"),
        "{}",
        gw.metrics()
    );
    gw.assert_no_panic();
}

#[test]
fn limit_count_without_quota_headers_answers_503_by_default() {
    let up = Upstream::echo();
    let gw = gateway(
        &up,
        "  limit-count:\n    count: 1\n    time_window: 60\n    key_type: constant\n    key: everyone\n    show_limit_quota_header: false",
        1,
    );
    let r1 = get(gw.addr(), "/", &[]);
    assert_eq!(r1.status, 200);
    assert_eq!(r1.header("X-RateLimit-Limit"), None);
    let r2 = get(gw.addr(), "/", &[("X-Forwarded-For", "10.0.0.9")]);
    assert_eq!(r2.status, 503, "{}", r2.text());
    assert_eq!(r2.header("X-RateLimit-Remaining"), None);
}

/// Sends `per_conn` keep-alive GETs on each of `conns` connections at once; returns the count
/// of each status.
fn hammer(gw: &Gateway, conns: usize, per_conn: usize, headers: &str) -> (usize, usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let addr = gw.addr();
    std::thread::scope(|s| {
        for _ in 0..conns {
            let (ok, limited, other) = (ok.clone(), limited.clone(), other.clone());
            s.spawn(move || {
                let mut c = Conn::open(addr);
                let req = format!("GET /x HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
                for _ in 0..per_conn {
                    c.send(req.as_bytes());
                    let r = c.read();
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        503 => limited.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                    if r.header("connection") == Some("close") {
                        c = Conn::open(addr);
                    }
                }
            });
        }
    });
    (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

#[test]
fn limit_count_is_exact_across_four_shards() {
    let up = Upstream::echo();
    // A window of an hour cannot roll during the test.
    let gw = gateway(
        &up,
        "  limit-count:\n    count: 1000\n    time_window: 3600",
        4,
    );
    let (ok, limited, other) = hammer(&gw, 50, 200, "");
    assert_eq!((ok, limited, other), (1000, 9000, 0));
    assert_eq!(up.requests().len(), 1000);
    // Every shard served some of the requests (the test is about shards sharing a count).
    let metrics = gw.metrics();
    for shard in 0..4 {
        let line = format!("shardgate_shard_requests_total{{shard=\"{shard}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "shard {shard} served nothing:\n{metrics}");
    }
    gw.assert_no_panic();
}

#[test]
fn limit_req_is_exact_across_four_shards_and_rejects_beyond_burst() {
    let up = Upstream::echo();
    // 0.001 requests per second drains one request in 1000 s: only the burst (plus the first
    // request) passes during the test. nodelay: the burst passes without waiting.
    let gw = gateway(
        &up,
        "  limit-req:\n    rate: 0.001\n    burst: 9\n    key: remote_addr\n    nodelay: true",
        4,
    );
    let (ok, limited, other) = hammer(&gw, 20, 25, "");
    assert_eq!((ok, limited, other), (10, 490, 0));
    assert_eq!(up.requests().len(), 10);
    gw.assert_no_panic();
}

#[test]
fn limit_req_delays_within_burst_and_answers_rejected_msg_beyond() {
    let up = Upstream::echo();
    let gw = gateway(
        &up,
        "  limit-req:\n    rate: 5\n    burst: 1\n    key: http_x_user\n    rejected_code: 429\n    rejected_msg: too many",
        1,
    );
    let u = [("X-User", "carol")];
    std::thread::scope(|s| {
        // Three at once from one key: one passes, one waits its turn (1/rate) and passes, the
        // third is beyond the burst.
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| get(gw.addr(), "/", &u)))
            .collect();
        let mut statuses: Vec<u16> = hs.into_iter().map(|h| h.join().unwrap().status).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 200, 429]);
    });
    let r = get(gw.addr(), "/", &[("X-User", "dave")]);
    assert_eq!(r.status, 200);
    // After the bucket drained (1 request in 200 ms at rate 5), carol passes again.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(gw.addr(), "/", &u).status, 200);
    gw.assert_no_panic();
}

#[test]
fn redis_policies_and_unsupported_attributes_are_refused_by_name() {
    let up = Upstream::echo();
    for (plugin, needle) in [
        (
            "  limit-count:\n    count: 1\n    time_window: 1\n    policy: redis\n    redis_host: 127.0.0.1",
            "routes[0].plugins.limit-count.policy: policy `redis` is not supported",
        ),
        (
            "  limit-req:\n    rate: 1\n    burst: 1\n    key: remote_addr\n    policy: redis-cluster",
            "routes[0].plugins.limit-req.policy: policy `redis-cluster` is not supported",
        ),
        (
            "  limit-count:\n    count: 0\n    time_window: 1",
            "routes[0].plugins.limit-count.count: must be an integer > 0",
        ),
    ] {
        let yaml = config(&[&up.node()], "", "", &format!("plugins:\n{plugin}"));
        let path = support::scratch_file(
            "limit.yaml",
            &yaml.replace("{port}", "1").replace("{admin}", "2"),
        );
        let out = support::shardgate(&["validate", "-c", path.to_str().unwrap()]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(needle), "{needle}\n{text}");
    }
}
