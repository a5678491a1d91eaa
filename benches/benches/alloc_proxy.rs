//! Heap allocations per proxied request, counted in steady state.
//!
//! The real gateway runs in this process (one shard, the given driver) between a loopback client
//! and a loopback upstream that themselves never allocate in their loops (fixed buffers, std::net),
//! so every allocation the counting allocator sees during the measured requests is the gateway's
//! (its control thread included). Prints the figure and exits non-zero when it is not 0.
//!
//! `cargo bench -p shardgate-benches --bench alloc_proxy` (add `-- epoll` for the epoll driver,
//! `-- jwt` for requests carrying an RS256 bearer token through `openid-connect`: after the first
//! request every one is a verified-token cache hit).

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

/// Answers every request head with RESPONSE; no allocation per request.
fn upstream(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
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
                    if s.write_all(RESPONSE).is_err() {
                        return;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
            }
        });
    }
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

fn main() {
    let driver = if std::env::args().any(|a| a == "epoll") {
        DriverChoice::Epoll
    } else {
        DriverChoice::Uring
    };
    let jwt = std::env::args().any(|a| a == "jwt");
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../oidc/testdata");
    let (plugin, req) = if jwt {
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
        let plugin = format!(
            "    plugins:\n      openid-connect:\n        client_id: bench\n        discovery: http://127.0.0.1:9/.well-known/openid-configuration\n        bearer_only: true\n        claim_validator: {{ issuer: {{ valid_issuers: [\"https://idp.bench\"] }} }}\n        public_key: |\n{indented}"
        );
        let req = format!(
            "GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: alloc-bench\r\nAuthorization: Bearer {token}\r\n\r\n"
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
             upstreams:\n  - id: up\n    nodes: {{ \"127.0.0.1:{up_port}\": 1 }}\n\
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
    // Warm-up: pools, buffers, caches and hash maps reach their steady size.
    client(&req, 20_000, &mut s);
    let n = 50_000;
    let before = shardgate_benches::allocations();
    let t = Instant::now();
    client(&req, n, &mut s);
    let elapsed = t.elapsed();
    let allocs = shardgate_benches::allocations() - before;
    println!(
        "driver {driver:?}{}: {n} proxied requests, {allocs} heap allocations in the whole process = {:.4} per request ({:.1} us/request wall, client and upstream included)",
        if jwt {
            ", RS256 bearer token (cache hits)"
        } else {
            ""
        },
        allocs as f64 / n as f64,
        elapsed.as_micros() as f64 / n as f64
    );
    shutdown.trigger();
    drop(s);
    let _ = gw.join();
    let _ = std::fs::remove_dir_all(&dir);
    if allocs as f64 / n as f64 >= 0.01 {
        std::process::exit(1);
    }
}
