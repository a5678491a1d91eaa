//! Client-side connection behaviour through the real binary: keep-alive, pipelining, malformed
//! input, header and idle timeouts, `Expect: 100-continue`, and routing. Every I/O test runs under
//! both drivers.
#[macro_use]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use support::{Conn, Gateway, Upstream, config, get, raw_exchange, request, status_of};

both_drivers!(
    keep_alive_reuses_one_client_and_one_upstream_connection,
    pipelined_requests_are_answered_in_order,
    malformed_requests_are_refused_and_closed,
    header_timeout_is_408_and_idle_connections_close,
    expect_continue_gets_100_before_the_body,
    unrouted_is_404_json_and_routes_match_host_method_priority,
);

fn keep_alive_reuses_one_client_and_one_upstream_connection(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 2);
    let mut conn = Conn::open(gw.addr());
    for i in 0..50 {
        let r = conn.get("example.test", &format!("/ka/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", gw.log());
        assert_eq!(r.json()["target"], format!("/ka/{i}"));
        assert_eq!(
            r.header("connection"),
            None,
            "the client connection must stay open"
        );
    }
    let upstream_conns = up.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=2).contains(&upstream_conns),
        "{upstream_conns} upstream connections for 50 requests"
    );
    assert_eq!(up.requests().len(), 50);
    assert!(
        !conn.closed_within(Duration::from_millis(200)),
        "the client connection must still be open"
    );
}

fn pipelined_requests_are_answered_in_order(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 2);
    let mut conn = Conn::open(gw.addr());
    let mut all = Vec::new();
    for i in 0..10 {
        all.extend_from_slice(format!("GET /pipe/{i} HTTP/1.1\r\nHost: p.test\r\n\r\n").as_bytes());
    }
    // One write: all ten requests arrive together.
    conn.send(&all);
    for i in 0..10 {
        let r = conn.read();
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(
            r.json()["target"],
            format!("/pipe/{i}"),
            "responses must come back in request order"
        );
    }
}

fn malformed_requests_are_refused_and_closed(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "limits: { max_header_bytes: 4096, max_headers: 20 }",
            "",
            "",
        ),
        driver,
        2,
    );
    let big = "a".repeat(5000);
    let mut many = String::new();
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CL+TE",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        ("duplicate CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), 400),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".into(), 400),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".into(), 400),
        ("space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n".into(), 400),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".into(), 400),
        ("bare LF", "GET / HTTP/1.1\nHost: x\n\n".into(), 400),
        ("oversized head", format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"), 431),
        ("too many headers", format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"), 431),
        ("HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n".into(), 505),
    ];
    for (name, req, want) in &cases {
        let (resp, closed) = raw_exchange(gw.addr(), req.as_bytes());
        assert_eq!(
            status_of(&resp),
            *want,
            "{name}: got {:?}\n{}",
            String::from_utf8_lossy(&resp),
            gw.log()
        );
        assert!(
            closed,
            "{name}: the connection must be closed after the error"
        );
        // Still serving, and nothing crashed.
        let ok = get(gw.addr(), "/after", &[]);
        assert_eq!(ok.status, 200, "{name}: the gateway must keep serving");
    }
    gw.assert_no_panic();
    assert!(
        gw.log().contains("request rejected"),
        "each refusal is logged"
    );
    // The framing errors never reach the upstream as a request of their own.
    assert!(
        up.requests()
            .iter()
            .all(|s| s.target == "/after" || s.method == "POST")
    );
}

fn header_timeout_is_408_and_idle_connections_close(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "limits: { header_timeout: 1, idle_timeout: 1 }",
            "",
            "",
        ),
        driver,
        2,
    );
    // Half a head, then silence.
    let mut half = Conn::open(gw.addr());
    half.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n");
    let r = half.read();
    assert_eq!(r.status, 408, "{}", gw.log());
    assert!(
        half.closed_within(Duration::from_secs(5)),
        "the connection closes after a 408"
    );

    // A served keep-alive connection that then stays silent is closed by idle_timeout.
    let mut idle = Conn::open(gw.addr());
    assert_eq!(idle.get("x", "/one").status, 200);
    assert!(
        idle.closed_within(Duration::from_secs(10)),
        "idle keep-alive connection must be closed"
    );

    // A connection that never sends a byte is closed too, without a response.
    let mut silent = TcpStream::connect(gw.addr()).expect("connect");
    silent.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut silent, &mut out);
    assert!(
        out.is_empty(),
        "an idle close sends nothing: {:?}",
        String::from_utf8_lossy(&out)
    );
    let _ = silent.write_all(b"x");
    gw.assert_no_panic();
}

fn expect_continue_gets_100_before_the_body(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 2);
    let mut conn = Conn::open(gw.addr());
    conn.send(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let status_line = conn.line();
    assert!(
        status_line.starts_with("HTTP/1.1 100"),
        "expected 100 Continue first, got {status_line:?}"
    );
    assert_eq!(conn.line(), "\r\n", "a 100 response has no headers here");
    conn.send(b"hello world");
    let r = conn.read();
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.json()["body_len"], 11);
    let seen = &up.requests()[0];
    assert_eq!(seen.body, b"hello world");
    assert_eq!(
        seen.header("expect"),
        None,
        "the gateway answered the expectation itself"
    );
    // The connection keeps working afterwards.
    assert_eq!(conn.get("x", "/next").status, 200);
}

fn unrouted_is_404_json_and_routes_match_host_method_priority(driver: &str) {
    let a = Upstream::tagged("a");
    let b = Upstream::tagged("b");
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: a
    nodes: {{ "{a}": 1 }}
  - id: b
    nodes: {{ "{b}": 1 }}
routes:
  - id: host-a
    uri: /h/*
    hosts: ["a.example.com"]
    upstream_id: a
  - id: host-any
    uri: /h/*
    upstream_id: b
  - id: post-only
    uri: /m
    methods: [POST]
    upstream_id: a
  - id: low
    uri: /p
    priority: 0
    upstream_id: b
  - id: high
    uri: /p
    priority: 10
    upstream_id: a
"#,
        a = a.node(),
        b = b.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    let tag = |r: &support::Response| r.header("x-upstream").map(str::to_owned);

    let missing = get(gw.addr(), "/nowhere", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert!(missing.body.len() < 100, "small body: {}", missing.text());
    assert_eq!(missing.json()["error"], "route_not_found");

    let r = get(gw.addr(), "/h/1", &[("Host", "a.example.com")]);
    assert_eq!(tag(&r).as_deref(), Some("a"), "host match wins");
    let r = get(gw.addr(), "/h/1", &[("Host", "a.example.com:8080")]);
    assert_eq!(tag(&r).as_deref(), Some("a"), "host match ignores the port");
    let r = get(gw.addr(), "/h/1", &[("Host", "other.example.com")]);
    assert_eq!(
        tag(&r).as_deref(),
        Some("b"),
        "other hosts fall to the host-less route"
    );

    assert_eq!(request(gw.addr(), "POST", "/m", &[], b"x").status, 200);
    assert_eq!(
        get(gw.addr(), "/m", &[]).status,
        404,
        "a method mismatch is no route"
    );

    let r = get(gw.addr(), "/p", &[]);
    assert_eq!(
        tag(&r).as_deref(),
        Some("a"),
        "the higher priority route wins"
    );
}
