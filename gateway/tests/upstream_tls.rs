//! `scheme: https` upstreams against a real TLS server: Debian's nginx with the test CA's
//! certificates (testdata/upstream-tls). Verification against a configured CA, the system roots,
//! or off; the server name from `upstream_host` or the node; mTLS accepted and refused; pooled
//! TLS connections reused. Every test runs under both drivers.
#[macro_use]
mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use support::{Conn, Gateway, free_port, repo_root};

both_drivers!(https_upstreams_verify_name_and_trust_and_speak_mtls);

fn testdata(name: &str) -> String {
    repo_root()
        .join("gateway/tests/testdata/upstream-tls")
        .join(name)
        .display()
        .to_string()
}

/// nginx serving HTTPS on two ports: `open` asks for a client certificate but does not require one,
/// `mtls` requires one signed by the test CA. Both answer with what the handshake carried.
struct Nginx {
    child: Child,
    dir: PathBuf,
    open: u16,
    mtls: u16,
}

impl Nginx {
    fn start() -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "shardgate-nginx-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let (open, mtls) = (free_port(), free_port());
        let d = dir.display();
        let server = |port: u16, verify: &str, body: &str| {
            format!(
                r#"
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {ca};
    ssl_verify_client {verify};
    location / {{ return 200 "{body}\n"; }}
  }}"#,
                cert = testdata("server-cert.pem"),
                key = testdata("server-key.pem"),
                ca = testdata("ca-cert.pem"),
            )
        };
        let conf = format!(
            r#"
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 128; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000;
{open_server}
{mtls_server}
}}
"#,
            open_server = server(
                open,
                "optional",
                "sni=$ssl_server_name client=$ssl_client_verify conn=$connection"
            ),
            mtls_server = server(mtls, "on", "mtls client=$ssl_client_s_dn"),
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        let n = Nginx {
            child,
            dir,
            open,
            mtls,
        };
        for port in [open, mtls] {
            let mut up = false;
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                thread::sleep(Duration::from_millis(25));
            }
            assert!(up, "nginx did not listen on {port}: {}", n.log());
        }
        n
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A YAML block scalar of `file`'s contents (APISIX stores PEM inline), indented by `indent`.
fn inline_pem(file: &str, indent: usize) -> String {
    let text = std::fs::read_to_string(testdata(file)).expect("pem");
    let pad = " ".repeat(indent);
    let mut out = String::from("|\n");
    for line in text.lines() {
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn https_upstreams_verify_name_and_trust_and_speak_mtls(driver: &str) {
    let nginx = Nginx::start();
    let ca = testdata("ca-cert.pem");
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: by-name
    scheme: https
    nodes: {{ "127.0.0.1:{open}": 1 }}
    pass_host: rewrite
    upstream_host: upstream.test
    tls: {{ ca_cert: {ca} }}
  - id: by-ip
    scheme: https
    nodes: {{ "127.0.0.1:{open}": 1 }}
    tls: {{ ca_cert: {ca} }}
  - id: wrong-name
    scheme: https
    nodes: {{ "127.0.0.1:{open}": 1 }}
    pass_host: rewrite
    upstream_host: wrong.test
    tls: {{ ca_cert: {ca} }}
  - id: system-roots
    scheme: https
    nodes: {{ "127.0.0.1:{open}": 1 }}
    pass_host: rewrite
    upstream_host: upstream.test
  - id: no-verify
    scheme: https
    nodes: {{ "127.0.0.1:{open}": 1 }}
    pass_host: rewrite
    upstream_host: wrong.test
    tls: {{ verify: false }}
  - id: mtls
    scheme: https
    nodes: {{ "127.0.0.1:{mtls}": 1 }}
    pass_host: rewrite
    upstream_host: upstream.test
    tls:
      ca_cert: {ca}
      client_cert: {client_cert}
      client_key: {client_key}
  - id: mtls-without-cert
    scheme: https
    nodes: {{ "127.0.0.1:{mtls}": 1 }}
    pass_host: rewrite
    upstream_host: upstream.test
    tls: {{ ca_cert: {ca} }}
routes:
  - {{ id: by-name, uri: /by-name/*, upstream_id: by-name }}
  - {{ id: by-ip, uri: /by-ip/*, upstream_id: by-ip }}
  - {{ id: wrong-name, uri: /wrong-name/*, upstream_id: wrong-name }}
  - {{ id: system-roots, uri: /system-roots/*, upstream_id: system-roots }}
  - {{ id: no-verify, uri: /no-verify/*, upstream_id: no-verify }}
  - {{ id: mtls, uri: /mtls/*, upstream_id: mtls }}
  - {{ id: mtls-without-cert, uri: /mtls-without-cert/*, upstream_id: mtls-without-cert }}
"#,
        open = nginx.open,
        mtls = nginx.mtls,
        client_cert = inline_pem("client-cert.pem", 8),
        client_key = testdata("client-key.pem"),
    );
    // One shard: one pool, so keep-alive reuse shows in nginx's connection numbers.
    let gw = Gateway::start_on(&yaml, driver, 1);
    let mut c = Conn::open(gw.addr());

    // Verified against the configured CA, SNI from upstream_host; the pool reuses the TLS stream.
    let mut conns = Vec::new();
    for i in 0..5 {
        let r = c.get("gw.test", &format!("/by-name/{i}"));
        assert_eq!(r.status, 200, "{}\n{}", gw.log(), nginx.log());
        let text = r.text();
        assert!(
            text.starts_with("sni=upstream.test client=NONE conn="),
            "{text}"
        );
        conns.push(text.trim().rsplit('=').next().map(str::to_owned));
    }
    assert!(
        conns.windows(2).all(|w| w[0] == w[1]),
        "one pooled TLS connection serves them all: {conns:?}"
    );

    // An IP node: verified against the certificate's IP address, no SNI sent.
    let r = c.get("gw.test", "/by-ip/x");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(r.text().starts_with("sni= client=NONE"), "{}", r.text());

    // A name the certificate does not carry: 502 and a log line that says why.
    let r = c.get("gw.test", "/wrong-name/x");
    assert_eq!(r.status, 502, "{}", gw.log());
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(
        gw.wait_log("upstream TLS handshake failed", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    assert!(
        gw.log()
            .lines()
            .any(|l| l.contains("upstream TLS handshake failed")
                && l.contains("wrong-name")
                && l.contains("certificate not valid for name \"wrong.test\"")),
        "{}",
        gw.log()
    );

    // Verification is on by default: the system roots do not know the test CA.
    let r = c.get("gw.test", "/system-roots/x");
    assert_eq!(r.status, 502, "{}", gw.log());
    assert!(
        gw.wait_log(
            "invalid peer certificate: UnknownIssuer",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );

    // `tls.verify: false` accepts the certificate whatever the name.
    let r = c.get("gw.test", "/no-verify/x");
    assert_eq!(r.status, 200, "{}", gw.log());
    assert!(r.text().starts_with("sni=wrong.test "), "{}", r.text());

    // mTLS: the client certificate (inline PEM, as APISIX stores it) is accepted...
    let r = c.get("gw.test", "/mtls/x");
    assert_eq!(r.status, 200, "{}\n{}", gw.log(), nginx.log());
    assert_eq!(r.text().trim(), "mtls client=CN=shardgate test client");
    // ...and without one nginx refuses the request.
    let r = c.get("gw.test", "/mtls-without-cert/x");
    assert_eq!(r.status, 400, "{}", gw.log());
    assert!(
        r.text().contains("No required SSL certificate"),
        "{}",
        r.text()
    );
    gw.assert_no_panic();
}
