//! Client-side hardening through the real binary (issue 12): `Connection: close` honoured after an
//! early response, silent connections closed at `header_timeout`, request body bounds, trailers,
//! upgraded connections, forwarded headers, the access log.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use std::sync::Arc;

use support::{Conn, Gateway, Seen, Upstream, config, dead_node, get};

both_drivers!(
    a_response_that_says_close_ends_the_connection,
    silent_connections_are_closed_at_header_timeout,
    request_trailers_carry_no_controlled_fields,
    client_forwarding_and_path_override_headers_are_replaced_or_removed,
    access_log_is_one_line_per_request_without_secrets,
    request_bodies_over_client_max_body_size_get_413,
    trickled_or_stalled_request_bodies_get_408,
    websocket_tunnels_count_as_connections_and_close_when_idle,
);

/// RFC 9112 9.6: after a response with `Connection: close`, a pipelined request on the same
/// connection is never processed.
fn a_response_that_says_close_ends_the_connection(driver: &str) {
    let up = Upstream::echo();
    let dead = dead_node();
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\n  - id: dead\n    nodes: {{ \"{dead}\": 1 }}\n    retries: 0\n\
         routes:\n  - id: live\n    uri: /live/*\n    upstream_id: app\n  - id: dead\n    uri: /dead\n    upstream_id: dead\n",
        up.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    let next = b"GET /live/next HTTP/1.1\r\nHost: x\r\n\r\n";
    // 404 for a request with a body (fully buffered), 502 for a POST whose body was consumed: both
    // say close, and the request behind each must not reach the upstream.
    for first in [
        &b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"POST /dead HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        &b"GET /public/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"[..],
    ] {
        let mut c = Conn::open(gw.addr());
        let mut both = first.to_vec();
        both.extend_from_slice(next);
        c.send(&both);
        let r = c.read();
        assert!(
            matches!(r.status, 400 | 404 | 502),
            "{}: {r:?}",
            String::from_utf8_lossy(first)
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            c.closed_within(Duration::from_secs(10)),
            "{}: a second response came",
            String::from_utf8_lossy(first)
        );
    }
    assert!(
        up.requests().is_empty(),
        "pipelined requests after a close were forwarded: {:?}",
        up.requests()
            .iter()
            .map(|s| s.target.clone())
            .collect::<Vec<_>>()
    );
    // Without a body and without close, a 404 keeps the connection.
    let mut c = Conn::open(gw.addr());
    assert_eq!(c.get("x", "/nowhere").status, 404);
    assert_eq!(c.get("x", "/live/y").status, 200);
    gw.assert_no_panic();
}

/// A connection that never sends a byte gets `header_timeout`, not `idle_timeout`: a crowd of
/// them cannot hold `max_connections` and lock out real clients.
fn silent_connections_are_closed_at_header_timeout(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "limits: { header_timeout: 1, idle_timeout: 600, max_connections: 20 }",
            "",
            "",
        ),
        driver,
        1,
    );
    let mut silent: Vec<TcpStream> = (0..20)
        .map(|_| {
            let s = TcpStream::connect(gw.addr()).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20))).ok();
            s
        })
        .collect();
    // Each is closed without a response, long before idle_timeout (600 s).
    for s in &mut silent {
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "silent connection still open after 20 s"
            ),
        }
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    }
    // A real client gets through afterwards.
    assert_eq!(get(gw.addr(), "/real", &[]).status, 200, "{}", gw.log());
    // Between requests a keep-alive connection keeps idle_timeout: still open after header_timeout.
    let mut ka = Conn::open(gw.addr());
    assert_eq!(ka.get("x", "/one").status, 200);
    assert!(!ka.closed_within(Duration::from_secs(3)));
    assert_eq!(ka.get("x", "/two").status, 200);
    gw.assert_no_panic();
}

/// Chunked request trailers reach the upstream only with fields a client may set there: never
/// identity headers, credentials, Host, framing, hop-by-hop or forwarding fields.
fn request_trailers_carry_no_controlled_fields(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 1);
    let mut conn = Conn::open(gw.addr());
    conn.send(
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: X-Hop\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Checksum: abc\r\nAuthorization: Bearer forged\r\nX-Userinfo: e30\r\n\
          X_Access_Token: forged\r\nHost: evil.example\r\nContent-Length: 99\r\n\
          Transfer-Encoding: chunked\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
          Cookie: s=1\r\nX-Hop: 1\r\nProxy-Authorization: x\r\nIf-Match: *\r\nX-Also: ok\r\n\r\n",
    );
    let r = conn.read();
    assert_eq!(r.status, 200, "{}", gw.log());
    let seen = &up.requests()[0];
    assert_eq!(seen.body, b"hello");
    let trailers: Vec<&str> = seen
        .headers
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("trailer:"))
        .collect();
    assert_eq!(trailers, ["X-Checksum", "X-Also"], "{:?}", seen.headers);
    assert_eq!(conn.get("x", "/after").status, 200);
}

/// `Forwarded` is replaced by the gateway's own element; `X-Forwarded-Prefix`, `X-Original-URL`
/// and `X-Rewrite-URL` from clients are removed (frameworks route or build links on them).
fn client_forwarding_and_path_override_headers_are_replaced_or_removed(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 1);
    let r = get(
        gw.addr(),
        "/public/x",
        &[
            ("Host", "client.example:8080"),
            ("Forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
            ("X-Forwarded-Prefix", "/evil"),
            ("X-Original-URL", "/api/admin"),
            ("x-rewrite-url", "/api/admin"),
        ],
    );
    assert_eq!(r.status, 200, "{}", gw.log());
    let seen = up.requests().pop().expect("seen");
    let all = |n: &str| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        all("forwarded"),
        ["for=127.0.0.1;host=\"client.example:8080\";proto=http"]
    );
    for h in ["x-forwarded-prefix", "x-original-url", "x-rewrite-url"] {
        assert!(all(h).is_empty(), "{h} must be removed: {:?}", seen.headers);
    }
    assert_eq!(seen.target, "/public/x");
}

/// The access log never records credentials from the query, and a refused or failed request is
/// one line (the access line with its reason), not two.
fn access_log_is_one_line_per_request_without_secrets(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 1);
    let r = get(
        gw.addr(),
        "/cb?code=SECRET1&state=SECRET2&x=visible&access_token=SECRET3&session_state=SECRET4",
        &[],
    );
    assert_eq!(r.status, 200);
    // The upstream still gets the query as sent.
    assert!(up.requests()[0].target.contains("code=SECRET1"));
    assert_eq!(get(gw.addr(), "/bad%2fpath-marker", &[]).status, 400);
    assert!(gw.wait_log("bad%2fpath-marker", Duration::from_secs(5)));
    assert!(gw.wait_log("x=visible", Duration::from_secs(5)));
    let log = gw.log();
    for secret in ["SECRET1", "SECRET2", "SECRET3", "SECRET4"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    assert!(
        log.contains("code=REDACTED&state=REDACTED&x=visible"),
        "{log}"
    );
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("path-marker")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("request rejected") && lines[0].contains("encoded slash"));
    assert!(lines[0].contains("status=400"), "{}", lines[0]);
}

/// `client_max_body_size` (APISIX's name; 0 = unlimited): Content-Length and chunked bodies.
fn request_bodies_over_client_max_body_size_get_413(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "limits: { client_max_body_size: 10 }",
            "",
            "",
        ),
        driver,
        1,
    );
    let cases: [(&[u8], u16); 5] = [
        (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789", 200),
        (b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n0123456789X", 413),
        // Announced too large, nothing sent yet (with Expect: no 100 Continue first).
        (b"POST /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n", 200),
        (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n6789X\r\n0\r\n\r\n", 413),
    ];
    for (req, want) in cases {
        let mut c = Conn::open(gw.addr());
        c.send(req);
        let r = c.read();
        assert_eq!(
            r.status,
            want,
            "{}\n{}",
            String::from_utf8_lossy(req),
            gw.log()
        );
        if want == 413 {
            assert_eq!(r.json()["error"], "request_body_too_large");
            assert!(c.closed_within(Duration::from_secs(10)));
        }
    }
    let targets: Vec<String> = up.requests().iter().map(|s| s.target.clone()).collect();
    assert!(targets.contains(&"/a".to_string()) && targets.contains(&"/d".to_string()));
    assert!(
        !targets.iter().any(|t| t == "/b" || t == "/c" || t == "/e"),
        "{targets:?}"
    );
}

/// A body that stalls for `client_body_timeout`, or trickles below `client_body_min_rate` after
/// that grace, is answered 408 and the connection (and the upstream one) closed.
fn trickled_or_stalled_request_bodies_get_408(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "limits: { client_body_timeout: 1, client_body_min_rate: 1000 }",
            "",
            "",
        ),
        driver,
        1,
    );
    for head in [
        &b"POST /trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"[..],
        &b"POST /trickle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
    ] {
        let mut c = Conn::open(gw.addr());
        c.send(head);
        let chunked = head.windows(7).any(|w| w == b"chunked");
        // One byte every 100 ms (well within the 1 s per-read timeout, far below 1000 B/s),
        // for at most 20 s, from another thread while this one waits for the answer.
        let mut w = c.writer.try_clone().expect("clone");
        let trickle = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                let piece: &[u8] = if chunked { b"1\r\nx\r\n" } else { b"x" };
                if w.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = c.read();
        assert_eq!(r.status, 408, "{}", gw.log());
        assert_eq!(r.json()["error"], "request_body_timeout");
        assert!(c.closed_within(Duration::from_secs(10)));
        drop(c);
        trickle.join().ok();
    }
    // A stalled body: half sent, then nothing.
    let mut c = Conn::open(gw.addr());
    c.send(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234");
    assert_eq!(c.read().status, 408);
    // An ordinary body is unaffected.
    let mut c = Conn::open(gw.addr());
    c.send(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.read().status, 200);
}

/// An upgraded connection stays an open connection (gauge and `max_connections`) and is closed
/// after the upstream's `timeout.read` without a byte either way.
fn websocket_tunnels_count_as_connections_and_close_when_idle(driver: &str) {
    let up = Upstream::with_handler(Arc::new(|_: &Seen, s: &mut TcpStream| {
        let head =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return false;
                    }
                }
            }
        }
    }));
    let gw = Gateway::start_on(
        &config(
            &[&up.node()],
            "limits: { max_connections: 1 }",
            "timeout: { connect: 5, send: 5, read: 2 }",
            "enable_websocket: true",
        ),
        driver,
        1,
    );
    let gauge = || {
        gw.metrics()
            .lines()
            .find(|l| l.starts_with("shardgate_open_connections{"))
            .and_then(|l| l.rsplit(' ').next().map(str::to_string))
            .unwrap_or_default()
    };
    // The start-up probe's connection may still be counted for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge() != "0" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ws = Conn::open(gw.addr());
    ws.send(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(ws.read().status, 101, "{}", gw.log());
    ws.send(b"ping");
    let mut back = [0u8; 4];
    ws.reader.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");
    assert_eq!(gauge(), "1", "the tunnel is an open connection");
    // max_connections: 1 is held by the tunnel: another client is refused.
    let mut other = TcpStream::connect(gw.addr()).expect("connect");
    other.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = other.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = Vec::new();
    let _ = other.read_to_end(&mut out);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    // Silence both ways for timeout.read (2 s): both sides are closed.
    assert!(
        ws.closed_within(Duration::from_secs(15)),
        "idle tunnel not closed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge() != "0" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gauge(), "0");
    gw.assert_no_panic();
}
