//! The upstream side through the real binary: 502/504 mapping with log lines, retries and passive
//! health, and the request/response header rules (pass_host, X-Forwarded-*, hop-by-hop removal).
//! Every test runs under both drivers.
#[macro_use]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::{Conn, Gateway, Seen, Upstream, dead_node, get, request};

both_drivers!(
    refused_upstream_is_502_and_slow_upstream_is_504,
    idempotent_requests_retry_and_dead_nodes_cool_down,
    forwarded_headers_pass_host_and_hop_by_hop_rules,
    pass_host_node_names_the_node_actually_used,
    idempotent_requests_retry_when_a_node_resets_before_answering,
    stale_pooled_connection_retry_uses_a_fresh_connection,
    route_timeout_replaces_the_upstreams,
    retry_timeout_bounds_when_a_retry_may_start,
);

fn refused_upstream_is_502_and_slow_upstream_is_504(driver: &str) {
    let slow = Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
        thread::sleep(Duration::from_secs(2));
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            .is_ok()
    }));
    let fast = Upstream::echo();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: down
    nodes: {{ "{dead}": 1 }}
  - id: fast
    nodes: {{ "{fast}": 1 }}
  - id: slow
    nodes: {{ "{slow}": 1 }}
    timeout: {{ connect: 1, send: 1, read: 1 }}
routes:
  - id: down
    uri: /down
    upstream_id: down
  - id: slow
    uri: /slow
    upstream_id: slow
  - id: fast
    uri: /fast
    upstream_id: fast
"#,
        dead = dead_node(),
        slow = slow.node(),
        fast = fast.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);

    let r = get(gw.addr(), "/down", &[]);
    assert_eq!(r.status, 502, "{}", gw.log());
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(
        gw.wait_log("upstream connect failed", Duration::from_secs(5)),
        "{}",
        gw.log()
    );

    let r = get(gw.addr(), "/slow", &[]);
    assert_eq!(r.status, 504, "{}", gw.log());
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        gw.wait_log("upstream read timed out", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("request failed"));

    // One keep-alive connection: after the first exchange the connection's timer is armed for
    // the (60 s) idle timeout; the slow request on it must still end at the 1 s read timeout,
    // not when the upstream answers after 2 s.
    let mut c = Conn::open(gw.addr());
    assert_eq!(c.get("gw.test", "/fast").status, 200, "{}", gw.log());
    let r = c.get("gw.test", "/slow");
    assert_eq!(r.status, 504, "{}", gw.log());
    assert_eq!(r.json()["error"], "upstream_timeout");
    gw.assert_no_panic();
}

/// APISIX's balancer takes the route's `timeout` instead of the upstream's, whole: it can shorten
/// the upstream's and lengthen it.
fn route_timeout_replaces_the_upstreams(driver: &str) {
    let slow = Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
        thread::sleep(Duration::from_secs(2));
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            .is_ok()
    }));
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: patient
    nodes: {{ "{slow}": 1 }}
  - id: hasty
    nodes: {{ "{slow}": 1 }}
    timeout: {{ connect: 1, send: 1, read: 1 }}
routes:
  - id: shortened
    uri: /shortened
    upstream_id: patient
    timeout: {{ connect: 1, send: 1, read: 1 }}
  - id: lengthened
    uri: /lengthened
    upstream_id: hasty
    timeout: {{ connect: 1, send: 1, read: 10 }}
  - id: upstreams
    uri: /upstreams
    upstream_id: hasty
"#,
        slow = slow.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);

    let r = get(gw.addr(), "/shortened", &[]);
    assert_eq!(r.status, 504, "{}", gw.log());
    assert_eq!(r.json()["error"], "upstream_timeout");

    let r = get(gw.addr(), "/lengthened", &[]);
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.body, b"late");

    // Without its own, a route on the same upstream keeps the upstream's.
    let r = get(gw.addr(), "/upstreams", &[]);
    assert_eq!(r.status, 504, "{}", gw.log());
    gw.assert_no_panic();
}

fn idempotent_requests_retry_and_dead_nodes_cool_down(driver: &str) {
    let live = Upstream::echo();
    let dead = dead_node();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: guarded
    nodes: {{ "{live}": 1, "{dead}": 1 }}
    health: {{ failures: 3, cool_down: 60 }}
  - id: unguarded
    nodes: {{ "{live}": 1, "{dead}": 1 }}
    health: {{ failures: 0 }}
routes:
  - id: guarded
    uri: /g/*
    upstream_id: guarded
  - id: unguarded
    uri: /u/*
    upstream_id: unguarded
"#,
        live = live.node()
    );
    // One shard: passive health is per shard, and one shard makes the failure count exact.
    let gw = Gateway::start_on(&yaml, driver, 1);
    // The forward phase logs each connect attempt that failed; "request failed" lines quote the
    // same words as their reason, so they are left out.
    let connect_failures = || {
        gw.log()
            .lines()
            .filter(|l| l.contains("upstream connect failed") && !l.contains("request failed"))
            .count()
    };

    // GETs are retried on the live node: none fails.
    for i in 0..10 {
        let r = get(gw.addr(), &format!("/g/{i}"), &[]);
        assert_eq!(r.status, 200, "GET {i}: {}", gw.log());
    }
    assert!(
        gw.wait_log("cooling down", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    let failures = connect_failures();
    assert_eq!(
        failures,
        3,
        "the dead node is tried until it cools down:\n{}",
        gw.log()
    );
    for i in 0..10 {
        assert_eq!(get(gw.addr(), &format!("/g/more{i}"), &[]).status, 200);
    }
    assert_eq!(
        connect_failures(),
        failures,
        "a cooling node is skipped:\n{}",
        gw.log()
    );

    // Without cool-down, GETs still all succeed through retries...
    for i in 0..4 {
        assert_eq!(get(gw.addr(), &format!("/u/{i}"), &[]).status, 200);
    }
    // ...but a POST that met the dead node is not retried.
    let before = connect_failures();
    let statuses: Vec<u16> = (0..4)
        .map(|i| request(gw.addr(), "POST", &format!("/u/post{i}"), &[], b"payload").status)
        .collect();
    let bad = statuses.iter().filter(|s| **s == 502).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    assert!(
        bad >= 1,
        "round robin must have sent a POST to the dead node: {statuses:?}"
    );
    assert!(bad < 4, "{statuses:?}");
    // Bounded wait for the log lines of the last request to be written.
    for _ in 0..100 {
        if connect_failures() >= before + bad {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        connect_failures(),
        before + bad,
        "one attempt per failed POST, no retry:\n{}",
        gw.log()
    );
    let posts_seen = live
        .requests()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(
        posts_seen,
        4 - bad,
        "a failed POST never reached the live node"
    );
    gw.assert_no_panic();
}

fn forwarded_headers_pass_host_and_hop_by_hop_rules(driver: &str) {
    let up = Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
        let resp = "HTTP/1.1 200 OK\r\nConnection: X-Up-Hop\r\nX-Up-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                    Proxy-Thing: y\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok";
        s.write_all(resp.as_bytes()).is_ok()
    }));
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: pass
    nodes: {{ "{n}": 1 }}
  - id: node
    nodes: {{ "{n}": 1 }}
    pass_host: node
  - id: rewrite
    nodes: {{ "{n}": 1 }}
    pass_host: rewrite
    upstream_host: backend.internal
routes:
  - id: pass
    uri: /pass
    upstream_id: pass
  - id: node
    uri: /node
    upstream_id: node
  - id: rewrite
    uri: /rewrite
    upstream_id: rewrite
  - id: keep
    uri: /keep
    upstream_id: pass
    keep_client_identity_headers: true
"#,
        n = up.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    let port = gw.port.to_string();
    let r = get(
        gw.addr(),
        "/pass",
        &[
            ("Host", "client.example:8080"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "spoofed.example"),
            ("X-Forwarded-Port", "1"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Access-Token", "client-token"),
            ("X-Userinfo", "client-userinfo"),
            ("X-ID-Token", "client-id-token"),
            ("X_Refresh_Token", "client-refresh"),
            ("x-raw-id-token", "client-raw"),
            ("X-Custom", "kept"),
        ],
    );
    assert_eq!(r.status, 200, "{}", gw.log());
    // Response hop-by-hop headers are removed, end-to-end ones kept.
    assert_eq!(r.header("x-kept"), Some("1"));
    for h in ["x-up-hop", "keep-alive", "proxy-thing"] {
        assert_eq!(
            r.header(h),
            None,
            "response header {h} must not reach the client"
        );
    }
    let seen = up.requests().pop().expect("request seen");
    assert_eq!(
        seen.header("host"),
        Some("client.example:8080"),
        "pass_host: pass"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("client.example"));
    assert_eq!(seen.header("x-forwarded-port"), Some(port.as_str()));
    let count = |name: &str| {
        seen.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    };
    for h in [
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
    ] {
        assert_eq!(count(h), 1, "{h} is set once, replacing the client's");
    }
    for h in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(seen.header(h), None, "hop-by-hop {h} must be removed");
    }
    // Client-sent identity headers never reach an upstream, with or without openid-connect on
    // the route (an upstream cannot tell who set them), in any case and with `_` for `-`.
    for h in [
        "x-access-token",
        "x-userinfo",
        "x-id-token",
        "x_refresh_token",
        "x-raw-id-token",
    ] {
        assert_eq!(seen.header(h), None, "identity header {h} must be removed");
    }
    assert_eq!(seen.header("x-custom"), Some("kept"));

    // A route that opts out (`keep_client_identity_headers`) passes them on.
    let r = get(
        gw.addr(),
        "/keep",
        &[
            ("Host", "client.example"),
            ("X-Userinfo", "client-userinfo"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.requests().pop().expect("request seen");
    assert_eq!(seen.header("x-userinfo"), Some("client-userinfo"));

    assert_eq!(
        get(gw.addr(), "/node", &[("Host", "client.example")]).status,
        200
    );
    let seen = up.requests().pop().expect("request seen");
    assert_eq!(
        seen.header("host"),
        Some(up.node().as_str()),
        "pass_host: node"
    );

    assert_eq!(
        get(gw.addr(), "/rewrite", &[("Host", "client.example")]).status,
        200
    );
    let seen = up.requests().pop().expect("request seen");
    assert_eq!(
        seen.header("host"),
        Some("backend.internal"),
        "pass_host: rewrite"
    );
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("client.example"),
        "X-Forwarded-Host keeps the client's host"
    );
}

/// Regression: the Host for `pass_host: node` was the first node's for every node.
fn pass_host_node_names_the_node_actually_used(driver: &str) {
    let a = Upstream::echo();
    let b = Upstream::echo();
    let dead = dead_node();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{dead}": 1, "{a}": 1, "{b}": 1 }}
    pass_host: node
    retries: 2
    health: {{ failures: 0 }}
routes:
  - id: r
    uri: /*
    upstream_id: app
"#,
        a = a.node(),
        b = b.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    // Round robin over three nodes, the dead one retried elsewhere: both live nodes get requests,
    // some of them as retries.
    for i in 0..6 {
        let r = get(gw.addr(), &format!("/n/{i}"), &[("Host", "client.example")]);
        assert_eq!(r.status, 200, "{}", gw.log());
    }
    for up in [&a, &b] {
        let seen = up.requests();
        assert!(!seen.is_empty(), "round robin reaches every live node");
        for s in &seen {
            assert_eq!(
                s.header("host"),
                Some(up.node().as_str()),
                "Host must name the node that got the request"
            );
        }
    }
}

/// Regression (loadtest/faults.py): a node that accepted the request and then closed without a
/// response head failed the GET with 502; nginx (`proxy_next_upstream error`) and APISIX retry it
/// on another node. A POST is still never retried.
fn idempotent_requests_retry_when_a_node_resets_before_answering(driver: &str) {
    let live = Upstream::echo();
    let resetter = Upstream::with_handler(Arc::new(|_: &Seen, _: &mut TcpStream| false));
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{live}": 1, "{resetter}": 1 }}
    retries: 1
    health: {{ failures: 0 }}
routes:
  - id: r
    uri: /*
    upstream_id: app
"#,
        live = live.node(),
        resetter = resetter.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    for i in 0..8 {
        let r = get(gw.addr(), &format!("/get/{i}"), &[]);
        assert_eq!(r.status, 200, "GET {i}: {}", gw.log());
    }
    assert!(
        resetter.requests().len() >= 2,
        "round robin sent GETs to the resetting node"
    );
    let statuses: Vec<u16> = (0..4)
        .map(|i| request(gw.addr(), "POST", &format!("/post/{i}"), &[], b"payload").status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    let bad = statuses.iter().filter(|s| **s == 502).count();
    assert!(bad >= 1, "a POST met the resetting node: {statuses:?}");
    let posts_seen = live
        .requests()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts_seen, 4 - bad, "a failed POST is not retried");
    gw.assert_no_panic();
}

/// Regression (loadtest/faults.py, early-close under wrk): after a pooled connection turned out
/// closed, the GET's one retry took the next pooled connection, as stale as the first, and failed
/// with 502. Here the upstream drops every connection on its second request without answering
/// (it looks alive while idle); two pooled connections make the retry meet the second one.
fn stale_pooled_connection_retry_uses_a_fresh_connection(driver: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let per_conn: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let up = {
        let per_conn = per_conn.clone();
        Upstream::with_handler(Arc::new(move |seen: &Seen, s: &mut TcpStream| {
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let n = {
                let mut m = per_conn.lock().expect("upstream map");
                let n = m.entry(peer).or_insert(0);
                *n += 1;
                *n
            };
            if n > 1 {
                return false;
            }
            if seen.target.starts_with("/hold") {
                // Keeps both first requests in flight together: two upstream connections.
                thread::sleep(Duration::from_millis(300));
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_ok()
        }))
    };
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{up}": 1 }}
    health: {{ failures: 0 }}
routes:
  - id: r
    uri: /*
    upstream_id: app
"#,
        up = up.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    let addr = gw.addr();
    let held: Vec<_> = (0..2)
        .map(|i| thread::spawn(move || get(addr, &format!("/hold/{i}"), &[]).status))
        .collect();
    for h in held {
        assert_eq!(h.join().expect("client thread"), 200, "{}", gw.log());
    }
    assert_eq!(
        per_conn.lock().expect("upstream map").len(),
        2,
        "two pooled upstream connections"
    );
    let r = get(gw.addr(), "/after", &[]);
    assert_eq!(
        r.status,
        200,
        "the retry must not take another pooled connection: {}",
        gw.log()
    );
    gw.assert_no_panic();
}

/// APISIX `retry_timeout`: a retry that would start after it has passed since the first attempt is
/// not made and the request gets 502 with the reason logged. Nodes are in priority order (slow1,
/// slow2, good), each slow node answering after 3 s against a 0.5 s read timeout. With the
/// deadline check reverted (2026-12-03, at 9a553fa) `/short` retried through to the good node: 200
/// where 502 is asserted, on both drivers.
fn retry_timeout_bounds_when_a_retry_may_start(driver: &str) {
    let slow = || {
        Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
            thread::sleep(Duration::from_secs(3));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
                .is_ok()
        }))
    };
    let (slow1, slow2, good) = (slow(), slow(), Upstream::echo());
    let node = |u: &Upstream, priority: i32| {
        format!(
            "{{ host: 127.0.0.1, port: {}, weight: 1, priority: {priority} }}",
            u.addr.port()
        )
    };
    let nodes = format!(
        "[{}, {}, {}]",
        node(&slow1, 2),
        node(&slow2, 1),
        node(&good, 0)
    );
    let upstream = |id: &str, extra: &str| {
        format!(
            "  - id: {id}\n    nodes: {nodes}\n    retries: 2\n    timeout: {{ connect: 1, send: 1, read: 0.5 }}\n    health: {{ failures: 0 }}\n{extra}"
        )
    };
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\nupstreams:\n{}{}{}\
         routes:\n  - {{ id: none, uri: /none, upstream_id: none }}\n  - {{ id: short, uri: /short, upstream_id: short }}\n  - {{ id: mid, uri: /mid, upstream_id: mid }}\n",
        upstream("none", ""),
        upstream("short", "    retry_timeout: 0.2\n"),
        upstream("mid", "    retry_timeout: 0.8\n"),
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    let seen = || {
        (
            slow1.requests().len(),
            slow2.requests().len(),
            good.requests().len(),
        )
    };

    // No limit: both retries are made and the third node answers.
    let r = get(gw.addr(), "/none", &[]);
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(seen(), (1, 1, 1));

    // The first attempt times out after 0.5 s, past the 0.2 s limit: no retry at all.
    let r = get(gw.addr(), "/short", &[]);
    assert_eq!(r.status, 502, "{}", gw.log());
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert_eq!(seen(), (2, 1, 1), "no retry after retry_timeout");
    assert!(
        gw.wait_log(
            "upstream retry_timeout reached after 0 retries; last attempt: upstream read timed out",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );

    // 0.8 s: the first retry starts at 0.5 s, the second would start at 1 s and is not made.
    let r = get(gw.addr(), "/mid", &[]);
    assert_eq!(r.status, 502, "{}", gw.log());
    assert_eq!(seen(), (3, 2, 1), "one retry within retry_timeout");
    assert!(
        gw.wait_log(
            "retry_timeout reached after 1 retries",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );
    gw.assert_no_panic();
}
