//! Heap allocations per proxied request, counted in steady state.
//!
//! The real gateway runs in this process (one shard, the given driver) between a loopback client
//! and a loopback upstream that themselves never allocate in their loops (fixed buffers, std::net),
//! so every allocation the counting allocator sees during the measured requests is the gateway's
//! (its control thread included). Prints the figure and exits non-zero when it is not 0.
//!
//! `cargo bench -p shardgate-benches --bench alloc_proxy` (add `-- epoll` for the epoll driver,
//! `-- jwt` for requests carrying an RS256 bearer token through `openid-connect`: after the first
//! request every one is a verified-token cache hit; `-- opaque` for an opaque token checked by
//! introspection, every request after the first an introspection cache hit; `-- session` for a
//! browser request with a session cookie, every request after the first a session cache hit;
//! `-- plugins` for the `jwt` request from a browser app (with an `Origin`) on a route that also
//! carries `cors`, `limit-count`, `proxy-rewrite` and `request-id`, the loadtest's S6; `-- noop3` for the plain
//! request through a route carrying three plugins that do nothing in every phase, which needs
//! `--features test-plugins`: what the plugin seam itself costs).
//! `-- requests=N` measures N requests after N*2/5 of warm-up (default 50,000), e.g. to run the
//! bench under callgrind.
//!
//! The upstream pool's per-connection request cap is lifted so the count is the request path's
//! alone. `-- apisix-pool` keeps APISIX's default (`keepalive_pool.requests: 1000`): the shard
//! then opens a new upstream connection every 1000 requests, which costs a few allocations (the
//! socket's shared fd in monoio, the connection's buffer).
// Benchmarks time real processes and wait on them with wall-clock deadlines: they read the
// system clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use shardgate_gateway::server::{RunOptions, run_with};
use shardgate_runtime::gate::Shutdown;
use shardgate_runtime::shard::DriverChoice;

#[global_allocator]
static GLOBAL: shardgate_benches::CountingAlloc = shardgate_benches::CountingAlloc;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";

/// Serves every connection on its own thread: reads each request (head, and a body by
/// Content-Length) and writes `respond(request head)`. Nothing here allocates per request when
/// `respond` borrows, so the upstream adds nothing to the count.
fn serve_each<F>(listener: TcpListener, respond: F)
where
    F: Fn(&[u8]) -> Cow<'static, [u8]> + Clone + Send + 'static,
{
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let respond = respond.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let mut have = 0;
            loop {
                let n = match s.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                have += n;
                while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                    let used = end + 4 + content_length(&buf[..end]);
                    if have < used {
                        break;
                    }
                    if s.write_all(&respond(&buf[..end])).is_err() {
                        return;
                    }
                    buf.copy_within(used..have, 0);
                    have -= used;
                }
            }
        });
    }
}

/// The upstream: RESPONSE to every request.
fn upstream(listener: TcpListener) {
    serve_each(listener, |_| Cow::Borrowed(RESPONSE));
}

/// A discovery document, an empty key set (the bench verifies with `public_key`) and an
/// introspection endpoint that calls every token active: with discovery answered once, no provider
/// retries push snapshots to the shard while requests are counted.
fn discovery(listener: TcpListener) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let doc = format!(
        r#"{{"issuer":"https://idp.bench","jwks_uri":"http://127.0.0.1:{port}/jwks","introspection_endpoint":"http://127.0.0.1:{port}/introspect","authorization_endpoint":"http://127.0.0.1:{port}/auth","token_endpoint":"http://127.0.0.1:{port}/token"}}"#
    );
    serve_each(listener, move |head| {
        let body = if head.starts_with(b"GET /jwks") {
            r#"{"keys":[]}"#
        } else if head.starts_with(b"POST /introspect") {
            r#"{"active":true,"sub":"bench","client_id":"bench","scope":"read write","exp":4102444800}"#
        } else {
            doc.as_str()
        };
        Cow::Owned(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
}

const SESSION_SECRET: &str = "alloc-bench-session-secret-0123456789";

/// A session sealed as the gateway seals one after a login (access token, claims, userinfo).
/// The codec is bound to the route's discovery URL and client id, as the gateway's is.
fn session_cookie(discovery: &str) -> String {
    use shardgate_oidc::session::{
        RawValue, SessionCodec, SessionData, SessionKeys, SessionTimeouts, SystemRandom,
    };
    let keys = SessionKeys::new(SESSION_SECRET.as_bytes(), &[]).expect("session keys");
    let codec =
        SessionCodec::new(keys, SessionTimeouts::default()).with_binding(discovery, "bench");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = format!(
        r#"{{"iss":"https://idp.bench","sub":"bench","aud":"bench","exp":{},"iat":{now},"email":"bench@example.test"}}"#,
        now + 3600
    );
    let mut data = SessionData::new(now);
    data.sub = Some("bench".into());
    data.iss = Some("https://idp.bench".into());
    data.access_token = Some(format!("at-{}", "a".repeat(600)));
    data.access_token_expires_at = Some(now + 3600);
    data.id_token_claims = RawValue::from_string(claims.clone()).ok();
    data.user = RawValue::from_string(claims).ok();
    // Ahead of now, so the measured requests never reach the once-a-minute re-issue.
    data.last_seen = now + 3600;
    data.rolled_at = now;
    let chunks = codec
        .seal(&data, "session", now, &SystemRandom::new())
        .expect("seal");
    chunks
        .iter()
        .enumerate()
        .map(|(j, v)| format!("{}={v}", shardgate_oidc::session::chunk_name("session", j)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn content_length(head: &[u8]) -> usize {
    const NAME: &[u8] = b"content-length:";
    head.split(|&b| b == b'\n')
        .find(|l| l.len() > NAME.len() && l[..NAME.len()].eq_ignore_ascii_case(NAME))
        .and_then(|l| std::str::from_utf8(&l[NAME.len()..]).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `n` requests on one keep-alive connection, reading each response fully.
fn client(req: &[u8], n: usize, s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        s.write_all(req).expect("write");
        let mut have = 0;
        loop {
            let r = s.read(&mut buf[have..]).expect("read");
            assert!(r > 0, "gateway closed the connection");
            have += r;
            if let Some(end) = find(&buf[..have], b"\r\n\r\n")
                && have >= end + 4 + 3
            {
                assert!(buf.starts_with(b"HTTP/1.1 200"), "unexpected response");
                break;
            }
        }
    }
}

/// Waits until the gateway answers `req` with 200 on a fresh connection: routes that need discovery
/// answer 503 until the provider has it, which takes longer on a busy machine.
fn wait_ready(req: &[u8], addr: (&str, u16)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        let mut buf = [0u8; 512];
        let ok = TcpStream::connect(addr)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(req)?;
                let n = s.read(&mut buf)?;
                last = String::from_utf8_lossy(&buf[..n]).into_owned();
                Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
            })
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never answered 200; its last answer:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let driver = if std::env::args().any(|a| a == "epoll") {
        DriverChoice::Epoll
    } else {
        DriverChoice::Uring
    };
    let plugins = std::env::args().any(|a| a == "plugins");
    let jwt = plugins || std::env::args().any(|a| a == "jwt");
    let apisix_pool = std::env::args().any(|a| a == "apisix-pool");
    let pool = if apisix_pool {
        ""
    } else {
        "    keepalive_pool: { requests: 100000000 }\n"
    };
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../oidc/testdata");
    let idp = TcpListener::bind("127.0.0.1:0").expect("bind discovery");
    let idp_port = idp.local_addr().expect("addr").port();
    std::thread::spawn(move || discovery(idp));
    let opaque = std::env::args().any(|a| a == "opaque");
    let session = std::env::args().any(|a| a == "session");
    let noop3 = std::env::args().any(|a| a == "noop3");
    if noop3 && !cfg!(feature = "test-plugins") {
        eprintln!("`-- noop3` needs `cargo bench -p shardgate-benches --features test-plugins`");
        std::process::exit(2);
    }
    let n: usize = std::env::args()
        .find_map(|a| {
            a.strip_prefix("requests=")
                .map(|v| v.parse().expect("requests=N"))
        })
        .unwrap_or(50_000);
    let (plugin, req) = if noop3 {
        let plugin =
            "    plugins:\n      test-noop-1: {}\n      test-noop-2: {}\n      test-noop-3: {}\n";
        let req =
            b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\n\r\n";
        (plugin.to_string(), req.to_vec())
    } else if session {
        let plugin = format!(
            "    plugins:\n      openid-connect:\n        client_id: bench\n        client_secret: bench-secret\n        discovery: http://127.0.0.1:{idp_port}/.well-known/openid-configuration\n        redirect_uri: http://bench/callback\n        session:\n          secret: {SESSION_SECRET}\n"
        );
        let req = format!(
            "GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAccept: text/html\r\nCookie: {}\r\n\r\n",
            session_cookie(&format!(
                "http://127.0.0.1:{idp_port}/.well-known/openid-configuration"
            ))
        );
        (plugin, req.into_bytes())
    } else if opaque {
        let plugin = format!(
            "    plugins:\n      openid-connect:\n        client_id: bench\n        client_secret: bench-secret\n        discovery: http://127.0.0.1:{idp_port}/.well-known/openid-configuration\n        bearer_only: true\n"
        );
        let req = b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAuthorization: Bearer opaque-bench-token-0123456789abcdef\r\n\r\n";
        (plugin, req.to_vec())
    } else if jwt {
        let key_pem = std::fs::read_to_string(testdata.join("rsa1.pem")).expect("test key");
        let pub_pem = std::fs::read_to_string(testdata.join("rsa1.pub.pem")).expect("test key");
        let key = shardgate_oidc::jwt::SigningKey::from_pem(&key_pem).expect("signing key");
        let claims = br#"{"iss":"https://idp.bench","sub":"bench","aud":"urn:bench","scope":"read write","exp":4102444800,"iat":1700000000}"#;
        let token =
            shardgate_oidc::jwt::sign(shardgate_oidc::jwt::Alg::RS256, Some("k1"), claims, &key)
                .expect("sign");
        let indented: String = pub_pem
            .lines()
            .map(|l| format!("          {l}\n"))
            .collect();
        let mut plugin = format!(
            "    plugins:\n      openid-connect:\n        client_id: bench\n        discovery: http://127.0.0.1:{idp_port}/.well-known/openid-configuration\n        bearer_only: true\n        claim_validator: {{ issuer: {{ valid_issuers: [\"https://idp.bench\"] }} }}\n        public_key: |\n{indented}"
        );
        let mut origin = "";
        if plugins {
            // A quota the run never reaches: every request is counted and passes.
            plugin.push_str(
                "      cors:\n        allow_origins: \"http://app.bench\"\n        allow_methods: \"GET,POST\"\n        expose_headers: \"X-RateLimit-Remaining\"\n\
                 \x20     limit-count:\n        count: 4000000000\n        time_window: 2000000\n\
                 \x20     proxy-rewrite:\n        regex_uri: [\"^/(.*)\", \"/v1/$1\"]\n        headers:\n          set: { X-Api-Version: v1 }\n\
                 \x20     request-id: {}\n",
            );
            origin = "Origin: http://app.bench\r\n";
        }
        let req = format!(
            "GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\n{origin}Authorization: Bearer {token}\r\n\r\n"
        );
        (plugin, req.into_bytes())
    } else {
        let req =
            b"GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\n\r\n";
        (String::new(), req.to_vec())
    };
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let up_port = up.local_addr().expect("addr").port();
    std::thread::spawn(move || upstream(up));
    let gw_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = std::env::temp_dir().join(format!("shardgate-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "gateway:\n  listen: [\"127.0.0.1:{gw_port}\"]\n  shards: 1\n  access_log: false\n\
             upstreams:\n  - id: up\n    nodes: {{ \"127.0.0.1:{up_port}\": 1 }}\n{pool}\
             routes:\n  - id: all\n    uri: /*\n    upstream_id: up\n{plugin}"
        ),
    )
    .expect("config");
    let shutdown = Shutdown::new();
    let (_tx, signals) = flume::unbounded();
    let gw = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            run_with(
                RunOptions {
                    config_path: cfg,
                    shards: Some(1),
                    driver: Some(driver),
                },
                shutdown,
                signals,
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", gw_port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("gateway did not start: {e}"),
        }
    };
    s.set_nodelay(true).expect("nodelay");
    wait_ready(&req, ("127.0.0.1", gw_port));
    // Warm-up: pools, buffers, caches and hash maps reach their steady size.
    client(&req, n * 2 / 5, &mut s);
    let before = shardgate_benches::allocations();
    let shard_before = shardgate_benches::shard_allocations();
    let t = Instant::now();
    client(&req, n, &mut s);
    let elapsed = t.elapsed();
    let allocs = shardgate_benches::allocations() - before;
    let shard_allocs = shardgate_benches::shard_allocations() - shard_before;
    println!(
        "driver {driver:?}{}{}: {n} proxied requests; on the shard thread {shard_allocs} heap allocations ({:.4} per request); in the whole process {allocs} ({:.4} per request); {:.1} us/request wall, client and upstream included",
        if plugins {
            ", RS256 bearer token (cache hits) + cors, limit-count, proxy-rewrite, request-id"
        } else if jwt {
            ", RS256 bearer token (cache hits)"
        } else if opaque {
            ", opaque bearer token (introspection cache hits)"
        } else if session {
            ", session cookie (session cache hits)"
        } else if noop3 {
            ", three no-op plugins"
        } else {
            ""
        },
        if apisix_pool {
            ", new upstream connection every 1000 requests"
        } else {
            ""
        },
        shard_allocs as f64 / n as f64,
        allocs as f64 / n as f64,
        elapsed.as_micros() as f64 / n as f64
    );
    shutdown.trigger();
    drop(s);
    let _ = gw.join();
    let _ = std::fs::remove_dir_all(&dir);
    // The request path must not allocate at all; reconnects may, a few times per 1000 requests.
    let limit = if apisix_pool { 0.01 } else { 0.0 };
    if shard_allocs as f64 / n as f64 > limit {
        std::process::exit(1);
    }
}
