//! Request smuggling shapes through the real binary (issue 12): every head or chunked body that
//! two HTTP/1.1 parsers could split differently gets a clean 400 (then close), one access-log line
//! with the reason, and not one byte reaches the upstream. The upstream here records raw bytes, so
//! "nothing reached it" means nothing, not "nothing it could parse".
//!
//! Checked against the fixes of issue 12 by reverting each in turn (2026-12-03, at 9a553fa): with
//! the absolute-form authority check off, "absolute-form with a different Host" got a 200 from the
//! upstream instead of 400; with the received chunked bytes not scanned before an upstream is
//! picked, a bad chunk ("chunk size 0x", "chunk data longer than its size") was refused only after
//! the head had reached the upstream ("the upstream received ..."). Both drivers failed each time.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{Gateway, config, raw_exchange, status_of};

both_drivers!(
    smuggling_shapes_get_400_and_never_reach_the_upstream,
    tab_as_whitespace_is_one_reading_for_both_hops,
);

/// A loopback upstream that keeps every byte it receives and answers each read with a fixed
/// 200 (enough for the control requests, which are small and arrive in one segment).
struct RecordingUpstream {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RecordingUpstream {
    fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, n, s) = (bytes.clone(), connections.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                n.fetch_add(1, Ordering::Relaxed);
                let b = b.clone();
                thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    let mut buf = [0u8; 8192];
                    while let Ok(k) = conn.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        if let Ok(mut all) = b.lock() {
                            all.extend_from_slice(&buf[..k]);
                        }
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if conn.write_all(ok).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        RecordingUpstream {
            addr,
            bytes,
            connections,
            stop,
        }
    }

    fn received(&self) -> Vec<u8> {
        self.bytes.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn clear(&self) {
        if let Ok(mut b) = self.bytes.lock() {
            b.clear();
        }
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn post(te_or_cl_lines: &str, body: &str) -> Vec<u8> {
    format!("POST /s HTTP/1.1\r\nHost: gw.test\r\n{te_or_cl_lines}\r\n{body}").into_bytes()
}

const CHUNKED: &str = "Transfer-Encoding: chunked\r\n";

fn smuggling_shapes_get_400_and_never_reach_the_upstream(driver: &str) {
    let up = RecordingUpstream::start();
    let gw = Gateway::start_on(&config(&[&up.addr.to_string()], "", "", ""), driver, 1);
    // The second request is what a smuggler hopes the upstream reads as a request of its own.
    let hidden = "GET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CL and TE together",
            post(
                &format!("Content-Length: 4\r\n{CHUNKED}"),
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE before CL",
            post(
                &format!("{CHUNKED}Content-Length: 40\r\n"),
                &format!("0\r\n\r\n{hidden}"),
            ),
        ),
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        ),
        (
            "TE identity",
            post(
                "Transfer-Encoding: identity\r\nContent-Length: 3\r\n",
                "abc",
            ),
        ),
        (
            "space before colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "tab before colon",
            post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "vertical tab in value",
            post("Transfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "vertical tab after value",
            post("Transfer-Encoding: chunked\x0b\r\n", "0\r\n\r\n"),
        ),
        (
            "form feed in value",
            post("Transfer-Encoding: \x0cchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "duplicate TE lines",
            post(&format!("{CHUNKED}{CHUNKED}"), "0\r\n\r\n"),
        ),
        (
            "chunked twice in one line",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "chunkedx",
            post("Transfer-Encoding: chunkedx\r\n", "0\r\n\r\n"),
        ),
        (
            "xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "quoted chunked",
            post("Transfer-Encoding: \"chunked\"\r\n", "0\r\n\r\n"),
        ),
        (
            "chunked with a parameter",
            post("Transfer-Encoding: chunked;q=1\r\n", "0\r\n\r\n"),
        ),
        (
            "chunked not last",
            post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
        ),
        (
            "TE on HTTP/1.0",
            format!("POST /s HTTP/1.0\r\nHost: gw.test\r\n{CHUNKED}\r\n0\r\n\r\n").into_bytes(),
        ),
        (
            "TE folded onto the previous line",
            post("X-A: 1\r\n Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE name folded",
            post("Transfer-\r\n Encoding: chunked\r\n", "0\r\n\r\n"),
        ),
        ("CL with plus sign", post("Content-Length: +3\r\n", "abc")),
        ("CL with minus sign", post("Content-Length: -3\r\n", "abc")),
        ("CL hex", post("Content-Length: 0x3\r\n", "abc")),
        (
            "CL comma list, equal",
            post("Content-Length: 3, 3\r\n", "abc"),
        ),
        (
            "CL comma list, differing",
            post("Content-Length: 3, 30\r\n", "abc"),
        ),
        (
            "CL duplicates differing",
            post("Content-Length: 3\r\nContent-Length: 30\r\n", "abc"),
        ),
        (
            "CL duplicates equal",
            post("Content-Length: 3\r\ncontent-length: 3\r\n", "abc"),
        ),
        (
            "CL with inner space",
            post("Content-Length: 1 3\r\n", "abcdefghijklm"),
        ),
        (
            "CL with a vertical tab",
            post("Content-Length: \x0b3\r\n", "abc"),
        ),
        (
            "CL with a leading line fold",
            post("Content-Length:\r\n 3\r\n", "abc"),
        ),
        ("CL empty", post("Content-Length: \r\n", "")),
        (
            "CL overflows u64",
            post("Content-Length: 18446744073709551616\r\n", "abc"),
        ),
        (
            "bare LF in the head",
            b"POST /s HTTP/1.1\nHost: gw.test\nContent-Length: 3\n\nabc".to_vec(),
        ),
        (
            "bare LF ends the head",
            b"POST /s HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\nabc".to_vec(),
        ),
        (
            "bare CR in a value",
            post("X-A: a\rContent-Length: 3\r\n", "abc"),
        ),
        (
            "obs-fold",
            post("X-A: 1\r\n  folded\r\nContent-Length: 3\r\n", "abc"),
        ),
        ("NUL in a value", post("X-A: a\0b\r\n", "")),
        ("NUL in a name", post("X-\0A: b\r\n", "")),
        (
            "chunk size over 16 hex digits",
            post(CHUNKED, &format!("1{}\r\nx\r\n0\r\n\r\n", "0".repeat(16))),
        ),
        (
            "chunk size with leading zeros past 16 digits",
            post(
                CHUNKED,
                &format!("{}5\r\nhello\r\n0\r\n\r\n", "0".repeat(16)),
            ),
        ),
        ("chunk size 0x", post(CHUNKED, "0x5\r\nhello\r\n0\r\n\r\n")),
        (
            "chunk size signed",
            post(CHUNKED, "+5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size not hex",
            post(CHUNKED, "g\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk size missing",
            post(CHUNKED, "\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "space after chunk size",
            post(CHUNKED, "5 \r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "bare LF after chunk size",
            post(CHUNKED, &format!("5\nhello\r\n0\r\n\r\n{hidden}")),
        ),
        (
            "bare CR after chunk size",
            post(CHUNKED, "5\rhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk data longer than its size",
            post(CHUNKED, &format!("3\r\nhello\r\n0\r\n\r\n{hidden}")),
        ),
        (
            "chunk data without CRLF",
            post(CHUNKED, "5\r\nhello0\r\n\r\n"),
        ),
        ("chunk extension over 4 KiB", post(CHUNKED, &long_ext)),
        (
            "bare LF inside a chunk extension",
            post(CHUNKED, "5;a=b\nc\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "NUL inside a chunk extension",
            post(CHUNKED, "5;a=\0\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "bare LF in the trailer section",
            post(CHUNKED, "5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
        ),
        (
            "folded trailer",
            post(CHUNKED, "5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n"),
        ),
        (
            "absolute-form with a different Host",
            b"GET http://internal.test/s HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form with userinfo",
            b"GET http://gw.test@internal.test/s HTTP/1.1\r\nHost: internal.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form without Host",
            b"GET http://gw.test/s HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "two Host headers",
            b"GET /s HTTP/1.1\r\nHost: gw.test\r\nHost: internal.test\r\n\r\n".to_vec(),
        ),
        (
            "Host with a path",
            b"GET /s HTTP/1.1\r\nHost: gw.test/admin\r\n\r\n".to_vec(),
        ),
    ];
    let mut rejected = gw.log().matches("request rejected").count();
    for (name, req) in &cases {
        up.clear();
        let (resp, closed) = raw_exchange(gw.addr(), req);
        assert_eq!(
            status_of(&resp),
            400,
            "{name}: got {:?}\n{}",
            String::from_utf8_lossy(&resp),
            gw.log()
        );
        assert!(
            closed,
            "{name}: the connection must be closed after a framing error"
        );
        assert_eq!(
            resp.windows(12).filter(|w| w == b"HTTP/1.1 200").count(),
            0,
            "{name}: a smuggled request was answered"
        );
        rejected += 1;
        assert!(
            gw.wait_log_count("request rejected", rejected, Duration::from_secs(5)),
            "{name}: the refusal is logged once\n{}",
            gw.log()
        );
        let got = up.received();
        assert!(
            got.is_empty(),
            "{name}: the upstream received {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(
        up.connections.load(Ordering::Relaxed),
        0,
        "no upstream connection was even opened"
    );
    // The refusals are framing refusals, each with its reason in the log.
    let log = gw.log();
    for reason in [
        "both Content-Length and Transfer-Encoding",
        "chunked applied more than once",
        "unknown transfer-coding",
        "Content-Length is a list",
        "duplicate Content-Length",
        "bare LF line ending",
        "chunk size has more than 16 digits",
        "chunk size line too long",
        "absolute-form authority differs from Host",
    ] {
        assert!(log.contains(reason), "no log line says {reason:?}\n{log}");
    }
    // And a well-formed request still goes through on the same gateway.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (resp, _) = raw_exchange(
        gw.addr(),
        b"POST /s HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(status_of(&resp), 200, "{}", gw.log());
    while up.received().len() < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(up.received().ends_with(b"\r\n\r\nabc"));
    gw.assert_no_panic();
}

/// HTAB is whitespace around a field value (RFC 9110 5.6.3), so `Transfer-Encoding:\tchunked` is a
/// valid chunked request, not a smuggling shape: the gateway reads it as chunked and sends the
/// upstream a body it re-frames itself, so both hops agree on where it ends. An absolute-form
/// target whose authority matches Host (any case, default port written or not) also passes.
fn tab_as_whitespace_is_one_reading_for_both_hops(driver: &str) {
    let up = RecordingUpstream::start();
    let gw = Gateway::start_on(&config(&[&up.addr.to_string()], "", "", ""), driver, 1);
    let (resp, _) = raw_exchange(
        gw.addr(),
        b"POST /t HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding:\tchunked\t\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&resp), 200, "{}", gw.log());
    let (resp, _) = raw_exchange(
        gw.addr(),
        b"GET HTTP://GW.test:80/abs HTTP/1.1\r\nHost: gw.TEST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&resp), 200, "{}", gw.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        text.contains("Transfer-Encoding: chunked\r\n")
            && text.contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            && text.contains("GET /abs HTTP/1.1\r\nHost: GW.test:80\r\n")
    };
    while !want(&up.received()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let got = up.received();
    assert!(want(&got), "{}", String::from_utf8_lossy(&got));
    gw.assert_no_panic();
}
