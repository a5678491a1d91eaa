//! The upstream keep-alive pool never hands one client's response to another.
//!
//! The upstream here is purpose-built to misframe responses (a body on a HEAD answer or a 204,
//! bytes past Content-Length, a second response to one request): no real server can be made to
//! produce those faults on demand, and they are exactly what a desynchronised or hostile upstream
//! sends. The stray bytes are a complete forged response, the worst case: read as the next
//! response on that connection, it would be delivered to the next client. Every test runs under
//! both drivers.
#[macro_use]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Gateway, Seen, Upstream, request};

both_drivers!(
    misframed_responses_never_reach_the_next_client,
    a_post_never_meets_a_connection_closed_while_idle,
);

const FORGED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged";

/// Answers `/good/*` with its own target as the body; the other paths misframe their answer and
/// send [`FORGED`] after it, in the same write (`/now/...`) or, for `/late/...`, only once the
/// test says the client has its response (so the bytes reach an idle pooled connection).
fn misframing_upstream(go: Receiver<()>, written: Sender<()>) -> Upstream {
    let go = Mutex::new(go);
    let written = Mutex::new(written);
    Upstream::with_handler(Arc::new(move |seen: &Seen, s: &mut TcpStream| {
        let t = seen.target.as_str();
        if t.starts_with("/good/") {
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{t}", t.len());
            return s.write_all(resp.as_bytes()).is_ok();
        }
        let resp = if t.contains("/head-body/") {
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"
        } else if t.contains("/no-content/") {
            "HTTP/1.1 204 No Content\r\n\r\n"
        } else if t.contains("/short-length/") {
            // Declares 5 bytes, sends 5 + the forged response.
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        } else {
            // A second response to one request.
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        if t.starts_with("/late/") {
            // Without it Nagle would hold the forged bytes until the first part is acknowledged,
            // and "written" would not mean "arrived".
            let _ = s.set_nodelay(true);
            if s.write_all(resp.as_bytes()).is_err() {
                return false;
            }
            let _ = go.lock().map(|g| g.recv_timeout(Duration::from_secs(10)));
            let ok = s.write_all(FORGED.as_bytes()).is_ok();
            let _ = written.lock().map(|w| w.send(()));
            ok
        } else {
            s.write_all(format!("{resp}{FORGED}").as_bytes()).is_ok()
        }
    }))
}

fn misframed_responses_never_reach_the_next_client(driver: &str) {
    let (go_tx, go_rx) = channel();
    let (written_tx, written_rx) = channel();
    let up = misframing_upstream(go_rx, written_tx);
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{n}": 1 }}
routes:
  - id: r
    uri: /*
    upstream_id: app
"#,
        n = up.node()
    );
    // One shard: every client shares the one pool.
    let gw = Gateway::start_on(&yaml, driver, 1);
    let mut good = 0;
    let mut check_good = |gw: &Gateway| {
        good += 1;
        let path = format!("/good/{good}");
        let r = request(gw.addr(), "GET", &path, &[], b"");
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(
            r.text(),
            path,
            "a client got another request's response:\n{}",
            gw.log()
        );
    };
    check_good(&gw);

    let cases = [
        ("HEAD", "head-body", 200, ""),
        ("GET", "no-content", 204, ""),
        ("GET", "short-length", 200, "hello"),
        ("GET", "extra-response", 200, "ok"),
    ];
    for when in ["now", "late"] {
        for (method, case, status, body) in cases {
            let path = format!("/{when}/{case}/");
            let r = request(gw.addr(), method, &path, &[], b"");
            assert_eq!(r.status, status, "{method} {path}: {}", gw.log());
            assert_eq!(r.text(), body, "{method} {path}");
            if when == "late" {
                // The forged bytes land on the idle pooled connection before the next request.
                go_tx.send(()).expect("upstream waits");
                written_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("upstream wrote the forged bytes");
            }
            for _ in 0..2 {
                check_good(&gw);
            }
        }
    }
    assert!(
        gw.wait_log(
            "upstream sent bytes on an idle keep-alive connection",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );

    // Well-framed exchanges still share one pooled connection.
    let before = up.connections.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        check_good(&gw);
    }
    let after = up.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after - before <= 1,
        "good requests reuse the pool: {before} -> {after} connections"
    );
    gw.assert_no_panic();
}

/// An upstream that closes every connection after its response without announcing it (a server
/// whose keep-alive timeout is shorter than ours does the same between requests). A POST cannot be
/// retried once sent, so it must never be written to such a connection: the checkout sees the EOF
/// and opens a fresh one.
fn a_post_never_meets_a_connection_closed_while_idle(driver: &str) {
    let (closed_tx, closed_rx) = channel::<()>();
    let closed_tx = Mutex::new(closed_tx);
    let up = Upstream::with_handler(Arc::new(move |seen: &Seen, s: &mut TcpStream| {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            seen.target.len(),
            seen.target
        );
        let _ = s.write_all(resp.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = closed_tx.lock().map(|t| t.send(()));
        false
    }));
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: app
    nodes: {{ "{n}": 1 }}
routes:
  - id: r
    uri: /*
    upstream_id: app
"#,
        n = up.node()
    );
    let gw = Gateway::start_on(&yaml, driver, 1);
    for i in 0..4 {
        let path = format!("/post/{i}");
        let r = request(gw.addr(), "POST", &path, &[], b"payload");
        assert_eq!(r.status, 200, "POST {i}: {}", gw.log());
        assert_eq!(r.text(), path);
        // The FIN has been sent before the next request arrives.
        closed_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("upstream closed");
    }
    assert_eq!(
        up.requests().len(),
        4,
        "each POST reached the upstream once"
    );
    gw.assert_no_panic();
}
