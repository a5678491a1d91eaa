//! Routing on the normal form of the path (issue 12, item 1): every spelling of `/api/...` that an
//! upstream would decode or normalise into `/api/...` either reaches the protected `/api/*` route
//! (401 without a token, from the real IdP's bearer-only plugin) or is refused with 400. It never
//! reaches the public `/*` route's upstream as `/api/...`.
//!
//! The public upstreams are real servers that decode paths: nginx (its `$uri` is decoded, slashes
//! merged, dot-segments resolved; its own `location /api/` would serve the protected answer) and
//! `scripts/upstream/echo.py` (Python; reports the path as received and percent-decoded, which is
//! what Flask or Django route on).
#![allow(clippy::unwrap_used)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Gateway, Idp, Response, Upstream, free_port, read_response, repo_root};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx from Debian, one process in the foreground, answering with its own view of the path.
fn start_nginx() -> (Proc, SocketAddr, PathBuf) {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "shardgate-paths-nginx-{}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n\
         location /api/ {{ return 200 \"nginx-api $uri\\n\"; }}\n\
         location / {{ return 200 \"nginx-public $uri\\n\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Command::new(p).arg("-v").output().is_ok())
        .expect("nginx is installed by scripts/install.sh (nginx-light)");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let p = Proc(child);
    wait_listening(addr, "nginx");
    (p, addr, dir)
}

/// scripts/upstream/echo.py on an ephemeral port.
fn start_echo() -> (Proc, SocketAddr) {
    let script = std::env::var("SHARDGATE_ECHO")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("scripts/upstream/echo.py"));
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", "0", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn echo.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("echo.py said {line:?}"));
    (Proc(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One request with `target` written as given (no client-side normalisation).
fn send(gw: &Gateway, host: &str, target: &str) -> Response {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = Vec::new();
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(target.as_bytes());
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&req).unwrap();
    read_response(&mut BufReader::new(s), false).unwrap_or(Response {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
    })
}

struct Setup {
    _idp: Idp,
    _nginx: Proc,
    _echo: Proc,
    protected: Upstream,
    gw: Gateway,
}

fn setup() -> Setup {
    let idp = Idp::start(&[]);
    let (nginx, nginx_addr, _) = start_nginx();
    let (echo, echo_addr) = start_echo();
    let protected = Upstream::tagged("protected");
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
upstreams:
  - id: protected
    nodes: {{ "{p}": 1 }}
  - id: nginx
    nodes: {{ "{nginx_addr}": 1 }}
  - id: echo
    nodes: {{ "{echo_addr}": 1 }}
routes:
  - id: api
    uri: /api/*
    upstream_id: protected
    plugins:
      openid-connect:
        discovery: {disc}
        bearer_only: true
        use_jwks: true
        client_id: gateway
  - id: public-nginx
    uri: /*
    host: nginx.test
    upstream_id: nginx
  - id: public-echo
    uri: /*
    host: echo.test
    upstream_id: echo
"#,
        p = protected.node(),
        disc = idp.discovery(),
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    gw.wait_providers_ready(Duration::from_secs(30));
    Setup {
        _idp: idp,
        _nginx: nginx,
        _echo: echo,
        protected,
        gw,
    }
}

/// Spellings of `/api/x` (or of a path an upstream turns into `/api/...`).
const API_VARIANTS: &[(&str, u16)] = &[
    ("/api/x", 401),
    ("/%61pi/x", 401),
    ("/%61%70%69/x", 401),
    ("/%41pi/../api/x", 401),
    ("//api/x", 401),
    ("///api//x", 401),
    ("/./api/x", 401),
    ("/%2e/api/x", 401),
    ("/public/../api/x", 401),
    ("/public/%2e%2e/api/x", 401),
    ("/public/%2E%2E/api/x", 401),
    ("/public/.%2e/api/x", 401),
    ("/public/%2e%2e/%61pi//x", 401),
    ("/public/x/../../api/x", 401),
    ("/api/x/..", 401),
    // Refused: no normal form every upstream agrees on.
    ("/public/..%2Fapi/x", 400),
    ("/public%2f..%2fapi/x", 400),
    ("/api%2Fx", 400),
    ("/api;a/x", 400),
    ("/api/x;a", 400),
    ("/public/..;/api/x", 400),
    ("/public/%5C../api/x", 400),
    ("/public/%5c..%5capi/x", 400),
    ("/public/\\../api/x", 400),
    ("/api%00/x", 400),
    ("/api/x%0d%0a", 400),
    ("/public/%2", 400),
    ("/public/%zz/../api/x", 400),
    ("/../api/x", 400),
    ("/%2e%2e/api/x", 400),
    ("/public/../../api/x", 400),
];

#[test]
fn api_spellings_reach_the_protected_route_or_are_refused() {
    let s = setup();
    for host in ["nginx.test", "echo.test"] {
        for (target, want) in API_VARIANTS {
            let r = send(&s.gw, host, target);
            assert_eq!(
                r.status,
                *want,
                "{host} {target}: {}\n{}",
                r.text(),
                s.gw.log()
            );
            if *want == 400 {
                assert!(
                    r.text().contains("bad_path") || r.text().contains("bad_request"),
                    "{target}: {}",
                    r.text()
                );
            }
        }
    }
    assert!(
        s.protected.requests().is_empty(),
        "no token: the protected upstream saw nothing"
    );
    // Each refusal names its reason in the log.
    assert!(s.gw.log().contains("encoded slash"), "{}", s.gw.log());
    assert!(s.gw.log().contains("path parameter"), "{}", s.gw.log());
}

#[test]
fn public_upstreams_never_see_an_api_path() {
    let s = setup();
    // Case is significant: `/API/x` is a public path to routes and to these upstreams alike.
    let r = send(&s.gw, "nginx.test", "/API/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "nginx-public /API/x\n");
    let r = send(&s.gw, "echo.test", "/API/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["decoded_path"], "/API/x");

    // What is forwarded is the routed normal form, re-encoded; the query is kept as received.
    let r = send(
        &s.gw,
        "nginx.test",
        "/public//%61b/./c/../d%3Bx?q=%2F..%2Fapi",
    );
    assert_eq!(r.status, 200, "{}", s.gw.log());
    assert_eq!(r.text(), "nginx-public /public/ab/d;x\n");
    let r = send(
        &s.gw,
        "echo.test",
        "/public//%61b/./c/../d%3Bx%20y?q=%2F..%2Fapi&z",
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["path"], "/public/ab/d%3Bx%20y", "re-encoded upstream");
    assert_eq!(v["decoded_path"], "/public/ab/d;x y");
    assert_eq!(v["query"]["q"][0], "/../api");
    let r = send(&s.gw, "echo.test", "/caf%C3%A9/%7Euser");
    assert_eq!(r.json()["path"], "/caf%C3%A9/~user");
    assert_eq!(r.json()["decoded_path"], "/café/~user");
    // An already normal path is forwarded byte for byte.
    let r = send(&s.gw, "echo.test", "/public/x.y/~z?a=1");
    assert_eq!(r.json()["path"], "/public/x.y/~z");

    // However an `/api` spelling is sent, the public upstreams never answer for `/api/...`.
    for host in ["nginx.test", "echo.test"] {
        for (target, _) in API_VARIANTS {
            let r = send(&s.gw, host, target);
            let body = r.text();
            assert!(!body.contains("nginx-api"), "{target}: {body}");
            if r.status == 200 && host == "echo.test" {
                let decoded = r.json()["decoded_path"].as_str().unwrap_or("").to_string();
                assert!(!decoded.starts_with("/api"), "{target}: {decoded}");
            }
        }
    }
}
