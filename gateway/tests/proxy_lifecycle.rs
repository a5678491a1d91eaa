//! Process lifecycle through the real binary: reload under traffic, graceful shutdown, the admin
//! endpoints, and `shardgate validate`. Tests that run shards do so under both drivers.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::{Conn, Gateway, Seen, Upstream, config, get, scratch_file, shardgate};

both_drivers!(
    reload_under_traffic_loses_no_request_and_rejects_bad_files,
    sigterm_drains_in_flight_refuses_new_and_exits_zero,
    sigterm_closes_websocket_tunnels_after_the_drain_time,
    admin_health_readiness_and_metrics,
);

const RELOADED: &str = "config reloaded and published";
const REJECTED: &str = "config reload rejected";

fn reload_under_traffic_loses_no_request_and_rejects_bad_files(driver: &str) {
    let a = Upstream::tagged("a");
    let b = Upstream::tagged("b");
    let yaml_a = config(&[&a.node()], "", "", "");
    let yaml_b = config(&[&b.node()], "", "", "");
    let gw = Gateway::start_on(&yaml_a, driver, 2);
    let addr = gw.addr();

    // Requests in a loop on keep-alive connections while the config changes underneath.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut results: Vec<(u16, String)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = Conn::open(addr);
            for i in 0..100_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                conn.send(format!("GET /load/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
                match support::read_response(&mut conn.reader, false) {
                    Ok(r) => {
                        let tag = r.header("x-upstream").unwrap_or("").to_owned();
                        let close = r.header("connection") == Some("close");
                        results.push((r.status, tag));
                        if close {
                            conn = Conn::open(addr);
                        }
                    }
                    Err(e) => {
                        results.push((0, e.to_string()));
                        conn = Conn::open(addr);
                    }
                }
                // New connections too, so both shards see traffic.
                if i % 10 == 0 {
                    conn = Conn::open(addr);
                }
            }
            results
        })
    };
    thread::sleep(Duration::from_millis(300));
    for k in 1..=4 {
        gw.reload(if k % 2 == 1 { &yaml_b } else { &yaml_a });
        assert!(
            gw.wait_log_count(RELOADED, k, Duration::from_secs(10)),
            "reload {k}:\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let results = client.join().expect("client thread");
    assert!(results.len() > 20, "too few requests: {}", results.len());
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(results.iter().any(|(_, t)| t == "a"));
    assert!(
        results.iter().any(|(_, t)| t == "b"),
        "no request reached the reloaded upstream"
    );

    // After a reload, the next request reaches the new upstream, also on a connection that was
    // already open and idle during the reload.
    let mut idle = Conn::open(addr);
    assert_eq!(idle.get("x", "/before").header("x-upstream"), Some("a"));
    gw.reload(&yaml_b);
    assert!(gw.wait_log_count(RELOADED, 5, Duration::from_secs(10)));
    assert_eq!(
        get(addr, "/fresh", &[]).header("x-upstream"),
        Some("b"),
        "a new connection uses the new config"
    );
    assert_eq!(
        idle.get("x", "/after").header("x-upstream"),
        Some("b"),
        "an idle keep-alive connection uses the new config for its next request"
    );

    // An invalid file is rejected with a log line; the old config keeps serving.
    gw.reload("routes: [ { uri: /x, upstream_id: nowhere } ]\n");
    assert!(
        gw.wait_log(REJECTED, Duration::from_secs(10)),
        "{}",
        gw.log()
    );
    gw.reload("gateway: [not yaml\n");
    assert!(gw.wait_log_count(REJECTED, 2, Duration::from_secs(10)));
    for i in 0..5 {
        let r = get(addr, &format!("/still/{i}"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-upstream"),
            Some("b"),
            "the previous config keeps serving"
        );
    }
    assert_eq!(gw.log().matches(RELOADED).count(), 5);
    gw.assert_no_panic();
}

fn sigterm_drains_in_flight_refuses_new_and_exits_zero(driver: &str) {
    let up = Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
        thread::sleep(Duration::from_secs(1));
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
            .is_ok()
    }));
    let mut gw = Gateway::start_on(
        &config(&[&up.node()], "shutdown_timeout: 10", "", ""),
        driver,
        2,
    );
    let addr = gw.addr();
    let mut idle = Conn::open(addr);
    let in_flight = thread::spawn(move || get(addr, "/slow", &[]));
    // Bounded wait until the upstream holds the request.
    for _ in 0..250 {
        if !up.requests().is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.requests().len(), 1, "{}", gw.log());

    gw.signal("TERM");
    assert!(gw.wait_log("shutdown requested", Duration::from_secs(5)));
    // Bounded: the listeners close promptly after the signal.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).is_err() {
            refused = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "new connections must be refused after SIGTERM");
    assert!(
        idle.closed_within(Duration::from_secs(5)),
        "idle keep-alive connections are closed at shutdown"
    );

    let r = in_flight.join().expect("client thread");
    assert_eq!(
        r.status,
        200,
        "the in-flight request completes: {}",
        gw.log()
    );
    assert_eq!(r.body, b"done");
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("exits within shutdown_timeout");
    assert!(status.success(), "exit status {status}");
    assert!(gw.log().contains("shardgate stopped"));
    gw.assert_no_panic();
}

/// An upgraded (WebSocket) tunnel is in flight like a request: it keeps working while the gateway
/// drains, and when `shutdown_timeout` is over both of its sides are closed (the client's and the
/// upstream's) and the process exits 0.
fn sigterm_closes_websocket_tunnels_after_the_drain_time(driver: &str) {
    // A real WebSocket-style upstream: answers the upgrade, echoes, and records when the gateway
    // closed its side.
    let upstream_closed = Arc::new(AtomicUsize::new(0));
    let closed = upstream_closed.clone();
    let up = Upstream::with_handler(Arc::new(move |_: &Seen, s: &mut TcpStream| {
        let head =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return false;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
                Err(e) => {
                    // A reset is a close too; a read timeout (60 s) is not.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                    return false;
                }
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return false;
                    }
                }
            }
        }
    }));
    // The tunnel's idle timeout (timeout.read) is far beyond the drain time: only shutdown can
    // end it here.
    let mut gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "shutdown_timeout: 2",
            "timeout: { connect: 5, send: 5, read: 120 }",
            "enable_websocket: true",
        ),
        driver,
        1,
    );
    let mut ws = Conn::open(gw.addr());
    ws.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(ws.read().status, 101, "{}", gw.log());
    let echo = |ws: &mut Conn, what: &[u8; 4]| {
        ws.send(what);
        let mut back = [0u8; 4];
        ws.reader.read_exact(&mut back).expect("echo");
        assert_eq!(&back, what);
    };
    echo(&mut ws, b"ping");

    gw.signal("TERM");
    assert!(gw.wait_log("shutdown requested", Duration::from_secs(5)));
    // Draining: the tunnel still carries bytes both ways.
    echo(&mut ws, b"pong");
    assert_eq!(upstream_closed.load(Ordering::SeqCst), 0);

    // After the drain time both sides are closed: the client sees EOF, the upstream sees EOF.
    assert!(
        ws.closed_within(Duration::from_secs(20)),
        "the client side of the tunnel was not closed: {}",
        gw.log()
    );
    for _ in 0..500 {
        if upstream_closed.load(Ordering::SeqCst) > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        upstream_closed.load(Ordering::SeqCst),
        1,
        "the upstream side of the tunnel was not closed: {}",
        gw.log()
    );
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("exits after shutdown_timeout");
    assert!(status.success(), "exit status {status}");
    assert!(
        gw.log()
            .contains("tunnels closed at the end of the drain time"),
        "{}",
        gw.log()
    );
    gw.assert_no_panic();
}

fn admin_health_readiness_and_metrics(driver: &str) {
    let up = Upstream::echo();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
upstreams:
  - id: app
    nodes: {{ "{}": 1 }}
routes:
  - id: api
    uri: /api/*
    upstream_id: app
"#,
        up.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    let health = get(gw.admin_addr(), "/healthz", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    // Readiness follows the shards coming up: bounded wait.
    let mut ready = get(gw.admin_addr(), "/readyz", &[]);
    for _ in 0..100 {
        if ready.status == 200 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        ready = get(gw.admin_addr(), "/readyz", &[]);
    }
    assert_eq!(ready.status, 200, "{}", ready.text());
    let j = ready.json();
    assert_eq!(j["ready"], true);
    assert_eq!(j["shards_up"], 2);
    assert_eq!(j["shards"], 2);

    for i in 0..3 {
        assert_eq!(get(gw.addr(), &format!("/api/{i}"), &[]).status, 200);
    }
    assert_eq!(get(gw.addr(), "/nope", &[]).status, 404);
    let m = gw.metrics();
    for line in [
        "shardgate_http_requests_total{route=\"api\",code=\"200\"} 3",
        "shardgate_http_requests_total{route=\"\",code=\"404\"} 1",
        "shardgate_errors_total{code=\"route_not_found\"} 1",
        "# TYPE shardgate_request_duration_seconds histogram",
        "shardgate_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"} 3",
        "shardgate_request_duration_seconds_bucket{route=\"\",le=\"+Inf\"} 1",
        "shardgate_request_duration_seconds_count{route=\"api\"} 3",
        "shardgate_request_duration_seconds_count{route=\"\"} 1",
        "shardgate_upstream_duration_seconds_count{route=\"api\"} 3",
    ] {
        assert!(m.contains(line), "missing `{line}` in:\n{m}");
    }
    assert!(m.contains("shardgate_request_duration_seconds_bucket{route=\"api\",le=\"0.1\"}"));
    assert_eq!(get(gw.admin_addr(), "/other", &[]).status, 404);
}

#[test]
fn validate_accepts_good_and_lists_every_problem_of_a_bad_file() {
    let good = scratch_file(
        "good.yaml",
        &config(&["127.0.0.1:18080"], "", "", "")
            .replace("{port}", "19080")
            .replace("{admin}", "19090"),
    );
    let out = shardgate(&["validate", "-c", good.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = scratch_file(
        "bad.yaml",
        r#"
gateway:
  listen: ["127.0.0.1:1"]
  limits: { header_timeout: -1 }
upstreams:
  - id: app
    nodes: { "127.0.0.1:notaport": 1 }
    timeout: { read: 0 }
routes:
  - id: a
    uri: /a
    upstream_id: missing
  - id: b
    upstream_id: app
    plugins:
      limit-count: {}
"#,
    );
    let out = shardgate(&["validate", "-c", bad.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for path in [
        "gateway.limits.header_timeout",
        "upstreams[0].nodes[0]",
        "upstreams[0].timeout.read",
        "routes[0].upstream_id",
        "routes[1]",
        "routes[1].plugins.limit-count",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&format!("{path}:"))),
            "`{path}` not reported:\n{stderr}"
        );
    }

    // A YAML syntax error names where it is.
    let broken = scratch_file("broken.yaml", "gateway:\n  listen: [1\n");
    let out = shardgate(&["validate", "-c", broken.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line"));

    let missing = broken.with_file_name("missing.yaml");
    let missing = shardgate(&["validate", "-c", missing.to_str().expect("utf-8 path")]);
    assert_eq!(missing.status.code(), Some(2));
}
