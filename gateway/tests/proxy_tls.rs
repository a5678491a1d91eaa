//! TLS termination on the shards (`gateway.tls`): a real rustls client through the real binary to a
//! plain upstream, under both drivers; bad handshakes are dropped with a log line and the listener
//! keeps serving; a certificate that does not load stops start-up with its config path.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::{Gateway, Upstream, free_port, read_response, repo_root};

fn testdata(name: &str) -> PathBuf {
    repo_root().join("gateway/tests/testdata").join(name)
}

fn config(up: &Upstream, tls_port: u16) -> String {
    format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  shards: 2
  tls:
    listen: ["127.0.0.1:{tls_port}"]
    cert: {cert}
    key: {key}
upstreams:
  - id: app
    nodes: {{ "{node}": 1 }}
routes:
  - id: all
    uri: /*
    upstream_id: app
"#,
        cert = testdata("tls-cert.pem").display(),
        key = testdata("tls-key.pem").display(),
        node = up.node()
    )
}

fn pem_cert(name: &str) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_file(testdata(name)).expect("test cert")
}

/// Trusts both test certificates, so the rotation test can tell which one was served.
fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for name in ["tls-cert.pem", "tls2-cert.pem"] {
        roots.add(pem_cert(name)).expect("trust the test cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(port: u16) -> Tls {
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(client_config(), name).expect("client");
    rustls::StreamOwned::new(conn, tcp)
}

fn tls_requests_reach_the_upstream(driver: &str) {
    let up = Upstream::echo();
    let tls_port = free_port();
    let gw = Gateway::start(&config(&up, tls_port), &["--driver", driver]);
    let mut s = connect(tls_port);
    let mut r = BufReader::new(&mut s);
    // Two requests on one TLS connection: keep-alive works through the TLS stream.
    for path in ["/one", "/two"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        r.get_mut().write_all(req.as_bytes()).expect("write");
        let res = read_response(&mut r, false).expect("response");
        assert_eq!(res.status, 200, "{}", gw.log());
    }
    assert_eq!(
        r.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/one");
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen[0].header("x-forwarded-port"),
        Some(tls_port.to_string().as_str())
    );
    // The plain listener still answers plain HTTP, and says so upstream.
    let plain = support::get(gw.addr(), "/plain", &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(up.requests()[2].header("x-forwarded-proto"), Some("http"));
}

#[test]
fn tls_requests_reach_the_upstream_uring() {
    tls_requests_reach_the_upstream("uring");
}

#[test]
fn tls_requests_reach_the_upstream_epoll() {
    tls_requests_reach_the_upstream("epoll");
}

#[test]
fn plain_http_and_garbage_on_the_tls_port_are_dropped_with_a_log_line() {
    let up = Upstream::echo();
    let tls_port = free_port();
    let gw = Gateway::start(&config(&up, tls_port), &[]);
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0, 0][..],
    ] {
        let answer = support::raw(SocketAddr::from(([127, 0, 0, 1], tls_port)), bytes);
        // No HTTP answer in clear text: at most a TLS alert record before the close.
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        gw.wait_log("TLS handshake failed", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    // The listener keeps serving.
    let mut s = connect(tls_port);
    s.write_all(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let res = read_response(&mut BufReader::new(&mut s), false).expect("response");
    assert_eq!(res.status, 200, "{}", gw.log());
    assert!(gw.metrics().contains("tls_handshake"), "{}", gw.metrics());
}

#[test]
fn a_certificate_that_does_not_load_stops_start_up_with_its_config_path() {
    let up = Upstream::echo();
    let dir = std::env::temp_dir().join(format!("shardgate-tls-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let not_a_cert = dir.join("cert.pem");
    std::fs::write(&not_a_cert, "this is not PEM\n").expect("write");
    let yaml = config(&up, free_port())
        .replace("{port}", &free_port().to_string())
        .replace("{admin}", &free_port().to_string())
        .replace(
            &testdata("tls-cert.pem").display().to_string(),
            &not_a_cert.display().to_string(),
        );
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, yaml).expect("write");
    let validate = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["validate", "-c"])
        .arg(&cfg)
        .output()
        .expect("validate");
    assert_eq!(validate.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&validate.stderr).contains("gateway.tls.cert"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.tls.cert"), "{err}");
}

#[test]
fn handshakes_in_progress_count_against_max_connections() {
    let up = Upstream::echo();
    let tls_port = free_port();
    let yaml = config(&up, tls_port).replace(
        "  shards: 2\n",
        "  shards: 1\n  limits: { max_connections: 2 }\n",
    );
    let gw = Gateway::start(&yaml, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    // The start-up readiness probe's connection must be gone before the slots are counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw
        .metrics()
        .contains("shardgate_open_connections{shard=\"0\"} 0")
    {
        assert!(std::time::Instant::now() < deadline, "{}", gw.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two clients that connect and never start their handshake hold both slots.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect(tls_port);
    let refused = third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .and_then(|_| read_response(&mut BufReader::new(&mut third), false).map(|_| ()));
    assert!(
        refused.is_err(),
        "a third connection was served: {}",
        gw.metrics()
    );
    assert!(
        gw.metrics()
            .contains("shardgate_errors_total{code=\"max_connections\"}"),
        "{}",
        gw.metrics()
    );
    // Once they go away, the listener serves again.
    drop(idle);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect(tls_port);
        let ok = s
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .and_then(|_| read_response(&mut BufReader::new(&mut s), false))
            .map(|r| r.status == 200)
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The certificate the server presented on a fresh connection (after one request).
fn served_cert(port: u16) -> rustls_pki_types::CertificateDer<'static> {
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let res = read_response(&mut BufReader::new(&mut s), false).expect("response");
    assert_eq!(res.status, 200);
    s.conn.peer_certificates().expect("peer certificates")[0].clone()
}

#[test]
fn a_reload_serves_a_renewed_certificate_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let up = Upstream::echo();
    let tls_port = free_port();
    let yaml = config(&up, tls_port);
    let gw = Gateway::start(&yaml, &[]);
    assert_eq!(served_cert(tls_port), pem_cert("tls-cert.pem"));
    // A renewed certificate: a new connection gets it after SIGHUP, on every shard.
    let renewed = yaml
        .replace("tls-cert.pem", "tls2-cert.pem")
        .replace("tls-key.pem", "tls2-key.pem");
    gw.reload(&renewed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(0..8).all(|_| served_cert(tls_port) == pem_cert("tls2-cert.pem")) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A key that does not match its certificate: the reload is rejected, the renewed one stays.
    let mismatched = renewed.replace("tls2-key.pem", "tls-key.pem");
    gw.reload(&mismatched);
    assert!(
        gw.wait_log("config reload rejected", Duration::from_secs(10)),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("do not fit together"), "{}", gw.log());
    for _ in 0..4 {
        assert_eq!(served_cert(tls_port), pem_cert("tls2-cert.pem"));
    }
}
