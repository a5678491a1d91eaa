//! Bodies through the real binary: chunked requests and responses (re-framed, trailers kept),
//! close-delimited responses re-framed for keep-alive, WebSocket tunnels, and gigabyte uploads and
//! downloads streamed with bounded gateway memory. Every test runs under both drivers.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::{Conn, Gateway, Seen, Upstream, config};

both_drivers!(
    chunked_request_is_reframed_with_trailers,
    chunked_and_close_delimited_responses_are_relayed,
    websocket_upgrade_tunnels_both_ways_only_when_enabled,
    gigabyte_upload_streams_with_bounded_memory,
    gigabyte_download_streams_with_bounded_memory,
    aborted_transfers_leave_the_gateway_serving,
);

fn chunked_request_is_reframed_with_trailers(driver: &str) {
    let up = Upstream::echo();
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 2);
    let mut conn = Conn::open(gw.addr());
    conn.send(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhel");
    // Pieces that split a chunk and a size line: the gateway must not wait for whole chunks.
    thread::sleep(Duration::from_millis(50));
    conn.send(b"lo \r\n");
    thread::sleep(Duration::from_millis(50));
    conn.send(b"5;ext=1\r\nworld\r\n0\r\nX-Trail: yes\r\n\r\n");
    let r = conn.read();
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.json()["body_len"], 11);
    let seen = &up.requests()[0];
    assert_eq!(seen.body, b"hello world", "content intact");
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(
        seen.header("trailer:X-Trail"),
        Some("yes"),
        "trailers forwarded: {:?}",
        seen.headers
    );
    // The connection carries the next request.
    assert_eq!(conn.get("x", "/after").status, 200);
}

fn chunked_and_close_delimited_responses_are_relayed(driver: &str) {
    let up = Upstream::with_handler(Arc::new(|seen: &Seen, s: &mut TcpStream| {
        match seen.target.as_str() {
            "/chunked" => {
                let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                            5\r\nhello\r\n6\r\n world\r\n0\r\nX-Up-Trail: t\r\n\r\n";
                s.write_all(resp.as_bytes()).is_ok()
            }
            "/close" => {
                // No framing: the body ends when the upstream closes.
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ");
                let _ = s.flush();
                thread::sleep(Duration::from_millis(50));
                let _ = s.write_all(b"close");
                false
            }
            _ => {
                let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                s.write_all(resp.as_bytes()).is_ok()
            }
        }
    }));
    let gw = Gateway::start_on(&config(&[&up.node()], "", "", ""), driver, 2);
    let mut conn = Conn::open(gw.addr());

    let r = conn.get("x", "/chunked");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("trailer:X-Up-Trail"), Some("t"), "{:?}", r.headers);

    let r = conn.get("x", "/close");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "re-framed as chunked for an HTTP/1.1 client"
    );
    assert_eq!(r.body, b"until close");
    assert_eq!(r.header("connection"), None, "keep-alive kept");

    // Same client connection, next request.
    let r = conn.get("x", "/plain");
    assert_eq!(r.body, b"ok");

    // An HTTP/1.0 client cannot read chunked: it gets the raw body and a close.
    let mut old = Conn::open(gw.addr());
    old.send(b"GET /close HTTP/1.0\r\nHost: x\r\n\r\n");
    let r = old.read();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body, b"until close");
}

fn websocket_upgrade_tunnels_both_ways_only_when_enabled(driver: &str) {
    let up = Upstream::with_handler(Arc::new(|seen: &Seen, s: &mut TcpStream| {
        if seen.header("upgrade").is_some() {
            let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
            if s.write_all(head.as_bytes()).is_err() {
                return false;
            }
            // Echo until the client side closes; bounded by the stream's read timeout.
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
        }
        let body = format!(
            "{{\"connection\":{:?},\"upgrade\":{:?}}}",
            seen.header("connection").unwrap_or(""),
            seen.header("upgrade").unwrap_or("")
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).is_ok()
    }));
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{}": 1 }}
routes:
  - id: ws
    uri: /ws
    enable_websocket: true
    upstream_id: app
  - id: plain
    uri: /plain
    upstream_id: app
"#,
        up.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };

    let mut conn = Conn::open(gw.addr());
    conn.send(upgrade("/ws").as_bytes());
    let r = conn.read();
    assert_eq!(r.status, 101, "{}", gw.log());
    assert_eq!(r.header("upgrade"), Some("websocket"));
    for msg in [&b"ping-1"[..], b"second message", b"x"] {
        conn.send(msg);
        let mut back = vec![0u8; msg.len()];
        conn.reader.read_exact(&mut back).expect("echo");
        assert_eq!(back, msg, "the tunnel echoes both ways");
    }
    let seen = &up.requests()[0];
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    drop(conn);

    // Without enable_websocket the Upgrade is not forwarded: a plain request.
    let mut conn = Conn::open(gw.addr());
    conn.send(upgrade("/plain").as_bytes());
    let r = conn.read();
    assert_eq!(r.status, 200, "{}", gw.log());
    let j = r.json();
    assert_eq!(j["upgrade"], "", "Upgrade must not be forwarded: {j}");
    assert_eq!(j["connection"], "", "Connection must not be forwarded: {j}");
    gw.assert_no_panic();
}

/// 1 GiB each way, as the issue asks: measured at 1-3 s per direction and driver with the debug
/// build on a 2-core VM (loopback, 64 KiB pieces), so no smaller debug size is needed.
const BIG: u64 = 1 << 30;
/// Allowed gateway RSS growth over its idle baseline while streaming.
const RSS_BUDGET_KIB: u64 = 64 * 1024;
const PATTERN_PERIOD: usize = 251;
const PIECE: usize = 64 * 1024;

/// A repeating byte pattern long enough to slice any piece out of at any offset.
fn pattern() -> Vec<u8> {
    (0..PIECE + PATTERN_PERIOD)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect()
}

/// Samples the gateway's RSS until stopped; returns the maximum seen.
struct RssWatch {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: i32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, max) = (stop.clone(), max.clone());
            thread::spawn(move || {
                // Bounded: at most 10 minutes of samples even if the test never stops it.
                for _ in 0..12_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    max.fetch_max(support::rss_kib(pid), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssWatch {
            stop,
            max,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// Reads one request head from `r`; returns its lines (request line first), or None at EOF.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end().to_string();
        if l.is_empty() {
            return Some(lines);
        }
        lines.push(l);
    }
}

fn content_length(lines: &[String]) -> u64 {
    lines
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// A raw upstream serving one connection at a time with `serve(reader, writer)` until EOF.
fn raw_upstream(serve: fn(&mut BufReader<TcpStream>, &mut TcpStream) -> bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = BufReader::with_capacity(PIECE, s);
                while serve(&mut r, &mut w) {}
            });
        }
    });
    addr
}

/// Discards the request body, checking it against the pattern; answers with the byte count and
/// whether every byte matched.
fn sink(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> bool {
    let Some(head) = read_head(r) else {
        return false;
    };
    let pat = pattern();
    let mut left = content_length(&head);
    let mut got: u64 = 0;
    let mut intact = true;
    let mut buf = vec![0u8; PIECE];
    while left > 0 {
        let want = usize::try_from(left.min(PIECE as u64)).unwrap_or(PIECE);
        let n = match r.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let off = (got % PATTERN_PERIOD as u64) as usize;
        intact &= buf[..n] == pat[off..off + n];
        got += n as u64;
        left -= n as u64;
    }
    let body = format!("{got} {intact}");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(resp.as_bytes()).is_ok()
}

/// Answers every request with `BIG` pattern bytes, generated as they are written.
fn source(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> bool {
    let Some(head) = read_head(r) else {
        return false;
    };
    let size = if head[0].contains("/small") { 10 } else { BIG };
    let pat = pattern();
    if w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut sent: u64 = 0;
    while sent < size {
        let n = usize::try_from((size - sent).min(PIECE as u64)).unwrap_or(PIECE);
        let off = (sent % PATTERN_PERIOD as u64) as usize;
        if w.write_all(&pat[off..off + n]).is_err() {
            return false;
        }
        sent += n as u64;
    }
    true
}

/// The gateway's RSS once it has served a request and settled.
fn baseline_rss(gw: &Gateway, method: &str, body: &[u8]) -> u64 {
    let r = support::request(gw.addr(), method, "/small", &[], body);
    assert_eq!(r.status, 200, "{}", gw.log());
    thread::sleep(Duration::from_millis(200));
    gw.rss_kib()
}

fn gigabyte_upload_streams_with_bounded_memory(driver: &str) {
    let up = raw_upstream(sink);
    let gw = Gateway::start_on(&config(&[&up.to_string()], "", "", ""), driver, 2);
    let baseline = baseline_rss(&gw, "POST", &pattern()[..10]);
    let watch = RssWatch::start(gw.pid());
    let started = Instant::now();

    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n").as_bytes(),
    )
    .expect("head");
    let pat = pattern();
    let mut sent: u64 = 0;
    while sent < BIG {
        let n = usize::try_from((BIG - sent).min(PIECE as u64)).unwrap_or(PIECE);
        let off = (sent % PATTERN_PERIOD as u64) as usize;
        s.write_all(&pat[off..off + n]).expect("body");
        sent += n as u64;
    }
    let r = support::read_response(&mut BufReader::new(s), false).expect("response");
    let elapsed = started.elapsed();
    let peak = watch.finish();
    let after = gw.rss_kib();
    assert_eq!(r.status, 200, "{}", gw.log());
    assert_eq!(
        r.text(),
        format!("{BIG} true"),
        "the upstream got every byte intact"
    );
    eprintln!(
        "upload 1 GiB via {driver}: {elapsed:?}, rss baseline {baseline} KiB, peak {peak} KiB, after {after} KiB"
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_BUDGET_KIB,
        "gateway RSS grew from {baseline} KiB to {peak} KiB while streaming"
    );
    assert!(after.saturating_sub(baseline) < RSS_BUDGET_KIB);
}

fn gigabyte_download_streams_with_bounded_memory(driver: &str) {
    let up = raw_upstream(source);
    let gw = Gateway::start_on(&config(&[&up.to_string()], "", "", ""), driver, 2);
    let baseline = baseline_rss(&gw, "GET", b"");
    let watch = RssWatch::start(gw.pid());
    let started = Instant::now();

    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s.write_all(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut r = BufReader::with_capacity(PIECE, s);
    let head = read_head(&mut r).expect("response head");
    assert!(head[0].contains(" 200 "), "{head:?}\n{}", gw.log());
    assert_eq!(content_length(&head), BIG);
    let pat = pattern();
    let mut got: u64 = 0;
    let mut intact = true;
    let mut buf = vec![0u8; PIECE];
    while got < BIG {
        let want = usize::try_from((BIG - got).min(PIECE as u64)).unwrap_or(PIECE);
        let n = r.read(&mut buf[..want]).expect("body");
        assert!(n > 0, "the gateway closed after {got} bytes");
        let off = (got % PATTERN_PERIOD as u64) as usize;
        intact &= buf[..n] == pat[off..off + n];
        got += n as u64;
    }
    let elapsed = started.elapsed();
    let peak = watch.finish();
    let after = gw.rss_kib();
    assert!(
        intact,
        "downloaded bytes differ from what the upstream sent"
    );
    eprintln!(
        "download 1 GiB via {driver}: {elapsed:?}, rss baseline {baseline} KiB, peak {peak} KiB, after {after} KiB"
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_BUDGET_KIB,
        "gateway RSS grew from {baseline} KiB to {peak} KiB while streaming"
    );
    assert!(after.saturating_sub(baseline) < RSS_BUDGET_KIB);
}

fn aborted_transfers_leave_the_gateway_serving(driver: &str) {
    let sink_addr = raw_upstream(sink);
    let source_addr = raw_upstream(source);
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: sink
    nodes: {{ "{sink_addr}": 1 }}
  - id: source
    nodes: {{ "{source_addr}": 1 }}
routes:
  - id: up
    uri: /up/*
    upstream_id: sink
  - id: down
    uri: /down/*
    upstream_id: source
"#
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    let pat = pattern();
    for round in 0..3 {
        // Upload cut short: the head promises 1 GiB, the client leaves after 1 MiB.
        let mut s = TcpStream::connect(gw.addr()).expect("connect");
        s.write_all(
            format!("POST /up/{round} HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n")
                .as_bytes(),
        )
        .expect("head");
        for _ in 0..16 {
            s.write_all(&pat[..PIECE]).expect("body");
        }
        drop(s);

        // Download cut short: the client reads 1 MiB of 1 GiB and leaves.
        let mut s = TcpStream::connect(gw.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.write_all(format!("GET /down/{round} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("request");
        let mut buf = vec![0u8; PIECE];
        let mut got = 0;
        while got < (1 << 20) {
            let n = s.read(&mut buf).expect("download");
            assert!(n > 0, "closed early: {}", gw.log());
            got += n;
        }
        drop(s);

        // Both routes still serve complete requests.
        let r = support::request(gw.addr(), "POST", "/up/ok", &[], &pat[..10]);
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(r.text(), "10 true");
        let r = support::get(gw.addr(), "/down/small", &[]);
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(r.body, &pat[..10]);
    }
    gw.assert_no_panic();
}
