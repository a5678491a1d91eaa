//! `response-rewrite` through the running gateway against a real loopback upstream: status and
//! header changes, body replacement and regex filters on Content-Length, chunked and
//! close-delimited upstream bodies (the `body_filter` relay and its re-framing), the `vars`
//! condition on the response status, and bodies passing through untouched when no body change is
//! configured.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use support::{Gateway, Seen, Upstream, get, read_response, request};

const BIG: usize = 1024 * 1024;

/// Answers by path suffix: `/plain` (Content-Length), `/chunked`, `/close` (close-delimited),
/// `/error` (500), `/big` (1 MiB, Content-Length), `/gzip` (a `Content-Encoding: gzip` label).
fn upstream() -> Upstream {
    Upstream::with_handler(Arc::new(|seen: &Seen, s: &mut TcpStream| {
        let t = seen.target.as_str();
        let common = "Server: up\r\nX-Up: 1\r\nETag: \"abc\"\r\nContent-Type: text/plain";
        if t.ends_with("/chunked") {
            let r = format!(
                "HTTP/1.1 200 OK\r\n{common}\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Sum: 1\r\n\r\n"
            );
            s.write_all(r.as_bytes()).is_ok()
        } else if t.ends_with("/close") {
            let r = format!("HTTP/1.1 200 OK\r\n{common}\r\nConnection: close\r\n\r\nhello world");
            let _ = s.write_all(r.as_bytes());
            false
        } else if t.ends_with("/error") {
            let r = format!(
                "HTTP/1.1 500 Internal Server Error\r\n{common}\r\nContent-Length: 4\r\n\r\nboom"
            );
            s.write_all(r.as_bytes()).is_ok()
        } else if t.ends_with("/big") {
            let body: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
            let r = format!("HTTP/1.1 200 OK\r\n{common}\r\nContent-Length: {BIG}\r\n\r\n");
            s.write_all(r.as_bytes()).is_ok() && s.write_all(&body).is_ok()
        } else if t.ends_with("/gzip") {
            let r = format!(
                "HTTP/1.1 200 OK\r\n{common}\r\nContent-Encoding: gzip\r\nContent-Length: 11\r\n\r\nhello world"
            );
            s.write_all(r.as_bytes()).is_ok()
        } else {
            let r = format!("HTTP/1.1 200 OK\r\n{common}\r\nContent-Length: 11\r\n\r\nhello world");
            s.write_all(r.as_bytes()).is_ok()
        }
    }))
}

fn yaml(node: &str) -> String {
    format!(
        r#"gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
upstreams:
  - id: app
    nodes: {{ "{node}": 1 }}
routes:
  - id: body
    uri: /body/*
    upstream_id: app
    plugins:
      response-rewrite:
        body: "new body\n"
        headers: {{ "X-Server-id": 3, "X-Server-status": "on", "Content-Type": "" }}
  - id: vars
    uri: /vars/*
    upstream_id: app
    plugins:
      response-rewrite:
        body: "new body3\n"
        status_code: 403
        vars: [["status", "==", 500]]
  - id: filters
    uri: /filters/*
    upstream_id: app
    plugins:
      response-rewrite:
        filters:
          - {{ regex: "o", scope: global, replace: "0" }}
          - {{ regex: "HELL0", replace: "bye", options: "i" }}
  - id: headers
    uri: /headers/*
    upstream_id: app
    plugins:
      response-rewrite:
        status_code: 202
        headers:
          add: ["X-Added: $remote_addr", "X-Path: $${{uri}}"]
          set: {{ Server: gateway }}
          remove: ["X-Up"]
  - id: b64
    uri: /b64/*
    upstream_id: app
    plugins:
      response-rewrite: {{ body: "SGVsbG8K", body_base64: true }}
"#
    )
}

#[test]
fn body_headers_status_vars_and_filters_as_apisix() {
    let up = upstream();
    let gw = Gateway::start(&yaml(&up.node()), &["--shards", "1"]);
    let addr = gw.addr();

    // `body` replaces a Content-Length body; the flat headers form sets and ("") removes.
    let r = get(addr, "/body/plain", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "new body\n");
    assert_eq!(r.header("x-server-id"), Some("3"));
    assert_eq!(r.header("x-server-status"), Some("on"));
    assert_eq!(r.header("content-type"), None, "{:?}", r.headers);
    // The upstream's validators describe a body the client no longer gets.
    assert_eq!(r.header("etag"), None, "{:?}", r.headers);
    assert_eq!(r.header("x-up"), Some("1"));
    // And a chunked one, and a close-delimited one.
    for path in ["/body/chunked", "/body/close"] {
        let r = get(addr, path, &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "new body\n"), "{path}");
    }

    // `vars` on the response status: only the 500 is rewritten.
    let r = get(addr, "/vars/error", &[]);
    assert_eq!((r.status, r.text().as_str()), (403, "new body3\n"));
    let r = get(addr, "/vars/plain", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    assert_eq!(r.header("content-length"), Some("11"), "{:?}", r.headers);
    assert_eq!(r.header("etag"), Some("\"abc\""));

    // `filters` in order (once / global, options), whatever the upstream's framing.
    for path in ["/filters/plain", "/filters/chunked", "/filters/close"] {
        let r = get(addr, path, &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "bye w0rld"), "{path}");
        assert_eq!(r.header("content-length"), None, "{path}: {:?}", r.headers);
    }
    // A compressed body is not filtered (not decompressed here): it passes through as sent.
    let r = get(addr, "/filters/gzip", &[]);
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.header("content-encoding"), Some("gzip"));

    // Headers add (with variables), set, remove and a status: the body is untouched and keeps
    // its Content-Length.
    let r = get(addr, "/headers/plain", &[]);
    assert_eq!((r.status, r.text().as_str()), (202, "hello world"));
    assert_eq!(r.header("content-length"), Some("11"));
    assert_eq!(r.header("x-added"), Some("127.0.0.1"));
    assert_eq!(r.header("x-path"), Some("/headers/plain"));
    assert_eq!(r.headers_all("server"), ["gateway"]);
    assert_eq!(r.header("x-up"), None);
    assert_eq!(r.header("etag"), Some("\"abc\""));

    let r = get(addr, "/b64/plain", &[]);
    assert_eq!(r.text(), "Hello\n");
    gw.assert_no_panic();
}

#[test]
fn rewritten_bodies_are_reframed_and_keep_alive_survives() {
    let up = upstream();
    let gw = Gateway::start(&yaml(&up.node()), &["--shards", "1"]);
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    // Two rewritten responses and a plain one on one client connection: each is re-framed as
    // chunked, the upstream connection goes back to the pool after each.
    for (path, body) in [
        ("/body/plain", "new body\n"),
        ("/filters/chunked", "bye w0rld"),
        ("/vars/plain", "hello world"),
        ("/body/big", "new body\n"),
    ] {
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.text(), body, "{path}");
        if path != "/vars/plain" {
            assert_eq!(resp.header("transfer-encoding"), Some("chunked"), "{path}");
        }
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the upstream connection was reused after rewritten bodies"
    );

    // An HTTP/1.0 client gets a rewritten body delimited by the connection's close.
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /filters/plain HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.ends_with("\r\n\r\nbye w0rld"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    gw.assert_no_panic();
}

#[test]
fn a_large_body_passes_through_untouched_when_no_body_change_is_configured() {
    let up = upstream();
    let gw = Gateway::start(&yaml(&up.node()), &["--shards", "1"]);
    let r = request(gw.addr(), "GET", "/headers/big", &[], b"");
    assert_eq!(r.status, 202);
    assert_eq!(r.header("content-length"), Some(BIG.to_string().as_str()));
    assert_eq!(r.body.len(), BIG);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8)
    );
    // A HEAD keeps no body whatever the plugin says.
    let r = request(gw.addr(), "HEAD", "/body/plain", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

#[test]
fn validate_names_the_attribute_path() {
    let up = upstream();
    let bad = yaml(&up.node()).replace("status_code: 403", "status_code: 599");
    let dir = std::env::temp_dir().join(format!("rr-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, bad.replace("{port}", "1").replace("{admin}", "2")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[1].plugins.response-rewrite.status_code"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
