//! Shared fixtures for the gateway's integration tests: the real `shardgate` binary with a config,
//! real loopback upstreams, the real test IdP (`scripts/idp/server.mjs`), and a small HTTP client.
//! Everything binds 127.0.0.1 only; every wait is bounded.
#![allow(dead_code)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

pub mod etcd;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A free loopback port (bound then released; the OS does not hand it out again immediately).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shardgate-test-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A running `shardgate` process.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    dir: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `yaml`, where `{port}` and `{admin}` are replaced by free ports.
    /// `args` are extra CLI arguments (e.g. `["--driver", "epoll", "--shards", "2"]`).
    pub fn start(yaml: &str, args: &[&str]) -> Gateway {
        Gateway::spawn(free_port(), yaml, args, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the process.
    pub fn start_with_env(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn(free_port(), yaml, args, env)
    }

    fn spawn(port: u16, yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let admin_port = free_port();
        let dir = scratch_dir("gw");
        let config_path = dir.join("config.yaml");
        let text = yaml
            .replace("{port}", &port.to_string())
            .replace("{admin}", &admin_port.to_string());
        std::fs::write(&config_path, text).expect("write config");
        let log_path = dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(args)
            .env("SHARDGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn shardgate");
        let mut gw = Gateway {
            child: Some(child),
            port,
            admin_port,
            config_path,
            log_path,
            dir,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("shardgate exited early ({status}):\n{}", self.log());
            }
            // The admin listener starts on the control thread, a moment after the shards.
            let admin_configured = std::fs::read_to_string(&self.config_path)
                .is_ok_and(|c| c.contains(&format!(":{}", self.admin_port)));
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && (!admin_configured || TcpStream::connect(("127.0.0.1", self.admin_port)).is_ok())
            {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "shardgate did not start listening within 20 s:\n{}",
            self.log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (bounded).
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Rewrites the config file (same `{port}` substitution) and sends SIGHUP.
    pub fn reload(&self, yaml: &str) {
        let text = yaml
            .replace("{port}", &self.port.to_string())
            .replace("{admin}", &self.admin_port.to_string());
        std::fs::write(&self.config_path, text).expect("write config");
        self.signal("HUP");
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn metrics(&self) -> String {
        get(self.admin_addr(), "/metrics", &[]).text()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one response from `r` (Content-Length, chunked or close-delimited). `head_request`
/// means the response has no body.
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    let mut status;
    let mut headers;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no response",
            ));
        }
        status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        if !(100..200).contains(&status) || status == 101 {
            break;
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 || status == 101 {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        resp.headers
                            .push((format!("trailer:{}", k.trim()), v.trim().to_string()));
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk);
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        resp.body = vec![0; n];
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("host") {
            req = req.replacen(&format!("Host: {addr}\r\n"), "", 1);
        }
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            has_len = true;
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() && !has_len {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").expect("response")
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers, b"")
}

/// Sends raw bytes and returns everything read until the peer closes (or 10 s).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// What a test upstream saw for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub type Handler = Arc<dyn Fn(&Seen, &mut TcpStream) -> bool + Send + Sync>;

/// A threaded HTTP/1.1 upstream on loopback that records what it receives. The default handler
/// answers 200 with a small JSON body and keeps the connection alive.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    pub fn echo() -> Upstream {
        Upstream::with_handler(Arc::new(|seen: &Seen, s: &mut TcpStream| {
            let body = serde_json::json!({
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect::<HashMap<_, _>>(),
                "body_len": seen.body.len(),
            })
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).is_ok()
        }))
    }

    /// `handler` writes the response; returning false closes the connection.
    pub fn with_handler(handler: Handler) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let connections = connections.clone();
            let seen = seen.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let seen = seen.clone();
                    let handler = handler.clone();
                    thread::spawn(move || serve_upstream_conn(stream, seen, handler));
                }
            });
        }
        Upstream {
            addr,
            connections,
            seen,
            stop,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn node(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_upstream_conn(stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, handler: Handler) {
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                let size = usize::from_str_radix(l.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                if size == 0 {
                    loop {
                        let mut t = String::new();
                        r.read_line(&mut t).ok();
                        if t.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = t.trim_end().split_once(':') {
                            headers.push((format!("trailer:{}", k.trim()), v.trim().to_string()));
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; size];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk);
                let mut crlf = String::new();
                r.read_line(&mut crlf).ok();
            }
        } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0; n];
            if r.read_exact(&mut body).is_err() {
                return;
            }
        }
        let s = Seen {
            method,
            target,
            headers,
            body,
        };
        if let Ok(mut v) = seen.lock() {
            v.push(Seen {
                body: s.body.iter().take(4096).copied().collect(),
                ..s.clone()
            });
        }
        if !handler(&s, &mut writer) {
            return;
        }
    }
}

/// The real test identity provider (`oidc-provider`, see scripts/idp/README.md).
pub struct Idp {
    child: Option<Child>,
    pub issuer: String,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
}

/// Asks a stalled node process for its diagnostic report and returns the JavaScript stack in it.
fn node_report_stack(child: &Child, dir: &Path) -> String {
    let _ = Command::new("kill")
        .args(["-USR2", &child.id().to_string()])
        .status();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(250));
        let report = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "json"))
        });
        if let Some(text) = report.and_then(|p| std::fs::read_to_string(p).ok())
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return v["javascriptStack"].to_string();
        }
    }
    "(no diagnostic report)".to_string()
}

impl Idp {
    /// Starts the IdP with extra `IDP_*` environment. `IDP_PORT` may be given to reuse a port.
    pub fn start(env: &[(&str, &str)]) -> Idp {
        let node = std::env::var("SHARDGATE_NODE").unwrap_or_else(|_| "node".to_string());
        let script = repo_root().join("scripts/idp/server.mjs");
        assert!(
            repo_root().join("scripts/idp/node_modules").exists(),
            "the test IdP is not installed: run scripts/install.sh (or scripts/test.sh)"
        );
        // Retries: on a loaded 2-core CI machine a node start has been seen to stall (twice in a
        // row once, the process alive and silent). Another process is cheaper than a flaky suite;
        // each stall asks node for a diagnostic report (SIGUSR2) so the failure shows where the
        // JavaScript stood.
        let mut attempt = 0;
        let (child, issuer, log_path) = loop {
            attempt += 1;
            let dir = scratch_dir("idp");
            let log_path = dir.join("idp.log");
            let log = std::fs::File::create(&log_path).expect("idp log");
            let mut cmd = Command::new(&node);
            cmd.arg("--report-on-signal")
                .arg("--report-signal=SIGUSR2")
                .arg(format!("--report-directory={}", dir.display()))
                .arg(&script)
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log));
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn node");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if let Some(rest) = line.trim().strip_prefix("READY ") {
                        let _ = tx.send(rest.to_string());
                    }
                    line.clear();
                }
            });
            match rx.recv_timeout(Duration::from_secs(45)) {
                Ok(issuer) => break (child, issuer, log_path),
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let stack = node_report_stack(&child, &dir);
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if attempt >= 3 {
                        panic!(
                            "IdP did not start in 3 tries (exit status {status:?}): {log}\nJS stack: {stack}"
                        );
                    }
                    eprintln!(
                        "IdP did not start (exit status {status:?}); retrying: {log}\nJS stack: {stack}"
                    );
                }
            }
        };
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("issuer port");
        Idp {
            child: Some(child),
            issuer,
            port,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_path,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn discovery(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port with changed environment (key rotation: another `IDP_KEYS`).
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.stop();
        let port = self.port.to_string();
        let mut all: Vec<(&str, &str)> = vec![("IDP_PORT", port.as_str())];
        all.extend(env.iter().copied());
        let mut new = Idp::start(&all);
        self.issuer = new.issuer.clone();
        self.log_path = new.log_path.clone();
        self.child = new.child.take();
    }

    /// Request counts by path (`GET /__stats`).
    pub fn stats(&self) -> serde_json::Value {
        get(self.addr(), "/__stats", &[]).json()
    }

    pub fn path_count(&self, path: &str) -> u64 {
        self.stats()["paths"][path].as_u64().unwrap_or(0)
    }

    pub fn reset_stats(&self) {
        request(self.addr(), "POST", "/__stats/reset", &[], b"");
    }

    /// POST /token with client_secret_basic; returns the JSON answer.
    pub fn token(&self, client: &str, secret: &str, form: &[(&str, &str)]) -> serde_json::Value {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlenc(k), urlenc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let basic = base64_encode(format!("{client}:{secret}").as_bytes());
        let auth = format!("Basic {basic}");
        let r = request(
            self.addr(),
            "POST",
            "/token",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &auth),
            ],
            body.as_bytes(),
        );
        r.json()
    }

    /// A client-credentials access token.
    pub fn client_credentials(&self, client: &str, scope: &str, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let j = self.token(client, &format!("{client}-secret"), &form);
        j["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {j}"))
            .to_string()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn urlenc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

// ---------------------------------------------------------------------------------------------
// Helpers for the proxy integration tests (proxy_*.rs).

/// Defines one `#[test]` per I/O driver for each listed `fn name(driver: &str)`: `name::uring` and
/// `name::epoll`. Use with `#[macro_use] mod support;`.
#[allow(unused_macros)]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    super::$name("uring")
                }
                #[test]
                fn epoll() {
                    super::$name("epoll")
                }
            }
        )*
    };
}

/// CLI arguments for a gateway on `driver` with `shards` shards.
pub fn driver_args(driver: &str, shards: usize) -> Vec<String> {
    vec![
        "--driver".into(),
        driver.into(),
        "--shards".into(),
        shards.to_string(),
    ]
}

impl Gateway {
    /// [`Gateway::start`] on `driver` with `shards` shards.
    pub fn start_on(yaml: &str, driver: &str, shards: usize) -> Gateway {
        let args = driver_args(driver, shards);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Gateway::start(yaml, &args)
    }

    /// Waits until `needle` occurs at least `n` times in the log (bounded).
    pub fn wait_log_count(&self, needle: &str, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The gateway's resident set size in KiB (`VmRSS` from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Panics when the log shows a panic (a hostile input must never crash a shard).
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    }
}

/// `VmRSS` of a process in KiB (0 when it cannot be read).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// A minimal config: `gateway` (listen + admin + `gateway_extra` lines), one upstream `app` with
/// `nodes` (+ `upstream_extra` lines), one route `r` on `/*` (+ `route_extra` lines). The extras
/// are YAML lines without indentation; they are indented here.
pub fn config(
    nodes: &[&str],
    gateway_extra: &str,
    upstream_extra: &str,
    route_extra: &str,
) -> String {
    let indent = |text: &str, n: usize| -> String {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"{n}\": 1")).collect();
    format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n{}\
         upstreams:\n  - id: app\n    nodes: {{ {} }}\n{}\
         routes:\n  - id: r\n    uri: /*\n    upstream_id: app\n{}",
        indent(gateway_extra, 2),
        nodes.join(", "),
        indent(upstream_extra, 4),
        indent(route_extra, 4),
    )
}

/// A loopback address with nothing listening on it.
pub fn dead_node() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl Upstream {
    /// Like [`Upstream::echo`], plus an `"upstream": tag` field and an `X-Upstream: tag` header, to
    /// tell upstreams apart.
    pub fn tagged(tag: &'static str) -> Upstream {
        Upstream::with_handler(Arc::new(move |seen: &Seen, s: &mut TcpStream| {
            let body = serde_json::json!({
                "upstream": tag,
                "method": seen.method,
                "target": seen.target,
                "body_len": seen.body.len(),
            })
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nX-Upstream: {tag}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).is_ok()
        }))
    }
}

/// A keep-alive client connection: requests are written as given, responses read one by one.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let writer = s.try_clone().expect("clone");
        Conn {
            reader: BufReader::new(s),
            writer,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    pub fn read(&mut self) -> Response {
        read_response(&mut self.reader, false).expect("response")
    }

    /// A keep-alive GET of `path` (Host: `host`).
    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        self.read()
    }

    /// Reads one CRLF-terminated line.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("read line");
        l
    }

    /// True when the peer closes the connection within `within` (EOF or reset); false on a timeout
    /// or when data arrives instead.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.reader.get_ref().set_read_timeout(Some(within)).ok();
        let mut b = [0u8; 1];
        let r = self.reader.read(&mut b);
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok();
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// Sends raw bytes; returns what came back and whether the peer closed the connection (within 10 s).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false);
            }
            // A reset after the response still means "closed".
            Err(_) => return (out, true),
        }
    }
}

/// The status code of the first status line in `bytes` (0 when there is none).
pub fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Runs the `shardgate` binary with `args` to completion (for `validate`).
pub fn shardgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(args)
        .output()
        .expect("run shardgate")
}

/// Writes `text` to a fresh scratch file and returns its path.
pub fn scratch_file(name: &str, text: &str) -> PathBuf {
    let path = scratch_dir("file").join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

// ---------------------------------------------------------------------------------------------
// Helpers for the browser-side openid-connect tests (oidc_session*.rs): a gateway on a port chosen
// beforehand, a browser-like cookie jar, and the IdP's login form driven over plain HTTP.

impl Gateway {
    /// Like [`Gateway::start`], on `port` (from [`free_port`]) instead of a fresh one: for URIs the
    /// IdP must know before the gateway starts (redirect_uri, backchannel_logout_uri).
    pub fn start_with_port(port: u16, yaml: &str, args: &[&str]) -> Gateway {
        Gateway::spawn(port, yaml, args, &[])
    }

    /// Waits until `/readyz` answers 200 (discovery and keys loaded for every route).
    pub fn wait_providers_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // The admin listener may come up a moment after the proxy listener.
            let r = TcpStream::connect(self.admin_addr())
                .ok()
                .map(|_| get(self.admin_addr(), "/readyz", &[]));
            if r.as_ref().is_some_and(|r| r.status == 200) {
                return;
            }
            let detail = r
                .map(|r| r.text())
                .unwrap_or_else(|| "admin listener not up".into());
            assert!(
                Instant::now() < deadline,
                "providers not ready: {detail}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Splits `http://127.0.0.1:<port>/path?query` into the address and the request target.
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse::<SocketAddr>()
        .unwrap_or_else(|_| panic!("not an ip:port URL: {url}"));
    (addr, target.to_string())
}

/// `location` (absolute, or a path) resolved against `base`.
pub fn resolve_url(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (addr, _) = split_url(base);
    format!("http://{addr}{location}")
}

/// Query parameter `name` of `url`, percent-decoded.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1.split('#').next().unwrap_or("");
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

pub fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One stored cookie.
#[derive(Debug, Clone)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: String,
}

/// A browser's cookies for 127.0.0.1. As in browsers, cookies do not depend on the port, so the
/// gateway also receives the IdP's cookies (the "other cookies" it must pass through). Cookies
/// are scoped by Path, replaced by name+path, and dropped by an empty value, `Max-Age<=0` or an
/// `Expires` in 1970 (how oidc-provider clears them).
#[derive(Debug, Clone, Default)]
pub struct CookieJar {
    pub cookies: Vec<Cookie>,
}

impl CookieJar {
    /// Stores every `Set-Cookie` of `resp`.
    pub fn store(&mut self, resp: &Response) {
        for line in resp.headers_all("set-cookie") {
            self.store_line(line);
        }
    }

    pub fn store_line(&mut self, line: &str) {
        let mut parts = line.split(';').map(str::trim);
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let mut path = "/".to_string();
        let mut expired = value.is_empty();
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            match k.to_ascii_lowercase().as_str() {
                "path" if !v.is_empty() => path = v.to_string(),
                "max-age" => expired |= v.parse::<i64>().is_ok_and(|n| n <= 0),
                "expires" => expired |= v.contains("1970"),
                _ => {}
            }
        }
        self.cookies.retain(|c| !(c.name == name && c.path == path));
        if !expired {
            self.cookies.push(Cookie {
                name: name.to_string(),
                value: value.to_string(),
                path,
            });
        }
    }

    /// The `Cookie` header a browser sends with a request for `target` (empty when none).
    pub fn header_for(&self, target: &str) -> String {
        let path = target.split(['?', '#']).next().unwrap_or("/");
        self.cookies
            .iter()
            .filter(|c| {
                path == c.path
                    || path.starts_with(&if c.path.ends_with('/') {
                        c.path.clone()
                    } else {
                        format!("{}/", c.path)
                    })
            })
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The value of the first cookie called `name`.
    pub fn value(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.cookies.iter().map(|c| c.name.clone()).collect()
    }

    /// Sets `name` for path `/`, replacing what was there.
    pub fn set(&mut self, name: &str, value: &str) {
        self.store_line(&format!("{name}={value}; Path=/"));
    }

    /// Removes every cookie whose name `matches`.
    pub fn remove_where(&mut self, matches: impl Fn(&str) -> bool) {
        self.cookies.retain(|c| !matches(&c.name));
    }

    /// One request to an absolute `http://ip:port/...` URL with this jar's cookies; stores the
    /// answer's cookies. Redirects are returned, never followed.
    pub fn fetch(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let (addr, target) = split_url(url);
        let cookie = self.header_for(&target);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !cookie.is_empty() {
            all.push(("Cookie", &cookie));
        }
        let resp = request(addr, method, &target, &all, body);
        self.store(&resp);
        resp
    }

    pub fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Response {
        self.fetch("GET", url, headers, b"")
    }
}

/// The `action` of the first `<form>` in `html`.
pub fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let tag = &form[..form.find('>')?];
    attr_value(tag, "action")
}

/// The `value` of the `<input>` (or `<button>`) named `name` in `html`.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    attr_value(&html[start..end], "value")
}

fn attr_value(tag: &str, attr: &str) -> Option<String> {
    let needle = format!("{attr}=\"");
    let from = tag.find(&needle)? + needle.len();
    let len = tag[from..].find('"')?;
    Some(tag[from..from + len].replace("&amp;", "&"))
}

/// Drives the IdP from `authorize_url` as a person would: follows redirects, fills the dev login
/// form with `login` (any password), confirms consent, and stops at the redirect to
/// `redirect_uri`, which it returns (with `code`, `state` and `iss`). The Rust twin of
/// `interactiveLogin` in scripts/idp/harness.mjs.
pub fn idp_login(
    jar: &mut CookieJar,
    authorize_url: &str,
    redirect_uri: &str,
    login: &str,
) -> String {
    let mut url = authorize_url.to_string();
    let mut form: Option<String> = None;
    for step in 0..20 {
        if url.starts_with(redirect_uri) {
            return url;
        }
        let resp = match form.take() {
            Some(body) => jar.fetch(
                "POST",
                &url,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                body.as_bytes(),
            ),
            None => jar.get(&url, &[]),
        };
        if (300..400).contains(&resp.status)
            && let Some(location) = resp.header("location")
        {
            url = resolve_url(&url, location);
            continue;
        }
        let html = resp.text();
        assert_eq!(
            resp.status,
            200,
            "login step {step}: {} at {url}: {}",
            resp.status,
            html.chars().take(300).collect::<String>()
        );
        let (Some(action), Some(prompt)) = (form_action(&html), input_value(&html, "prompt"))
        else {
            panic!("login step {step}: no interaction form at {url}");
        };
        let mut body = format!("prompt={}", urlenc(&prompt));
        if prompt == "login" {
            body.push_str(&format!("&login={}&password=any", urlenc(login)));
        }
        url = resolve_url(&url, &action);
        form = Some(body);
    }
    panic!("login did not reach {redirect_uri} in 20 steps (last {url})");
}

/// Ends the person's session at the IdP (`end_session_url`, e.g. `<issuer>/session/end` with
/// or without `id_token_hint`): shows the confirm page, then POSTs it with `logout=yes`. The IdP
/// sends back-channel logout tokens before it answers. Returns the confirm POST's response (a
/// redirect to the post-logout URI).
pub fn idp_end_session(jar: &mut CookieJar, end_session_url: &str) -> Response {
    let page = jar.get(end_session_url, &[]);
    let html = page.text();
    assert_eq!(page.status, 200, "end_session page: {html}");
    let action = form_action(&html).expect("end_session form action");
    let xsrf = input_value(&html, "xsrf").expect("end_session xsrf field");
    let body = format!("xsrf={}&logout=yes", urlenc(&xsrf));
    jar.fetch(
        "POST",
        &resolve_url(end_session_url, &action),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}
