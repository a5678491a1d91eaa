//! `openid-connect` bearer tokens end to end: the real `shardgate` binary (two shards) in front of a
//! real loopback upstream, with tokens from the real test IdP (`scripts/idp/server.mjs`, npm
//! `oidc-provider`). Forged tokens are signed here with the test keys in `oidc/testdata/`.
//!
//! Every case asserts the status the client got and what the upstream saw (or that it saw
//! nothing). No fake IdP is needed: every fault below (rotation, unknown kids, IdP down,
//! revocation) is produced by the real one.
#![allow(clippy::unwrap_used)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use shardgate_oidc::jwt::{Alg, SigningKey, sign};
use support::{Gateway, Idp, Response, Upstream, get, read_response, repo_root, request};

const API: &str = "urn:shardgate:api";

// ---------------------------------------------------------------------------------------------
// Fixtures

/// One route: `id`, `uri`, and extra `openid-connect` attributes (YAML lines, unindented) added to
/// `discovery`, `bearer_only: true` and `client_id: gateway` (unless the extra lines name one).
struct Route<'a> {
    id: &'a str,
    uri: &'a str,
    extra: String,
}

fn route<'a>(id: &'a str, uri: &'a str, extra: &str) -> Route<'a> {
    Route {
        id,
        uri,
        extra: extra.to_string(),
    }
}

fn config(idp: &Idp, up: &Upstream, routes: &[Route<'_>]) -> String {
    let mut y = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\nroutes:\n",
        up.node()
    );
    for r in routes {
        y.push_str(&format!(
            "  - id: {}\n    uri: {}\n    upstream_id: app\n    plugins:\n      openid-connect:\n\
             \x20       discovery: {}\n        bearer_only: true\n",
            r.id,
            r.uri,
            idp.discovery()
        ));
        if !r.extra.lines().any(|l| l.starts_with("client_id:")) {
            y.push_str("        client_id: gateway\n");
        }
        for line in r.extra.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str("        ");
            y.push_str(line);
            y.push('\n');
        }
    }
    y
}

/// Starts the gateway on two shards and waits until `/readyz` says every provider is ready.
fn start_gateway(idp: &Idp, up: &Upstream, routes: &[Route<'_>]) -> Gateway {
    let gw = Gateway::start(&config(idp, up, routes), &["--shards", "2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The admin listener may come up a moment after the proxy listener.
        let r = TcpStream::connect(gw.admin_addr())
            .ok()
            .map(|_| get(gw.admin_addr(), "/readyz", &[]));
        if r.as_ref().is_some_and(|r| r.status == 200) {
            return gw;
        }
        let detail = r
            .map(|r| r.text())
            .unwrap_or_else(|| "admin listener not up".into());
        assert!(
            Instant::now() < deadline,
            "providers not ready: {detail}\n{}",
            gw.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn call(gw: &Gateway, path: &str, token: &str) -> Response {
    let auth = bearer(token);
    get(gw.addr(), path, &[("Authorization", &auth)])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unique() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{n:x}")
}

fn testdata(name: &str) -> PathBuf {
    repo_root().join("oidc/testdata").join(name)
}

/// The test key `rsa1` (never published by the IdP: tokens it signs are forgeries there).
fn rsa1() -> SigningKey {
    SigningKey::from_pem(&std::fs::read_to_string(testdata("rsa1.pem")).unwrap()).unwrap()
}

fn b64url_json(s: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
}

fn jwt_parts(token: &str) -> (Value, Vec<u8>) {
    let mut it = token.split('.');
    let header = b64url_json(it.next().unwrap());
    let payload = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (header, payload)
}

fn kid_of(token: &str) -> String {
    jwt_parts(token).0["kid"].as_str().unwrap().to_string()
}

/// Claims the gateway would accept from the IdP, for forging with keys it must not accept.
fn idp_claims(idp: &Idp, extra: Value) -> Vec<u8> {
    let mut c = json!({
        "iss": idp.issuer, "sub": "mallory", "aud": API, "client_id": "m2m",
        "iat": now(), "exp": now() + 300, "scope": "read write admin",
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

/// Every value of a header the upstream received.
fn seen_all(seen: &support::Seen, name: &str) -> Vec<String> {
    seen.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn last_seen(up: &Upstream) -> support::Seen {
    up.requests()
        .last()
        .cloned()
        .expect("the upstream saw a request")
}

/// Asserts a 401 `invalid_token` challenge that never reached the upstream.
#[track_caller]
fn assert_invalid_token(gw: &Gateway, up: &Upstream, path: &str, token: &str, what: &str) {
    let before = up.requests().len();
    let r = call(gw, path, token);
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.starts_with("Bearer realm=\"apisix\""), "{what}: {www}");
    assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
    assert_eq!(
        up.requests().len(),
        before,
        "{what}: the upstream saw a rejected token"
    );
}

fn revoke(idp: &Idp, token: &str) {
    let form = format!(
        "token={}&token_type_hint=access_token",
        support::urlenc(token)
    );
    let auth = format!("Basic {}", STANDARD.encode("gateway:gateway-secret"));
    let r = request(
        idp.addr(),
        "POST",
        "/token/revocation",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &auth),
        ],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "revocation: {}", r.text());
}

/// `(access_token, refresh_token)` from the password grant.
fn password_grant(idp: &Idp, client: &str, user: &str) -> (String, String) {
    let j = idp.token(
        client,
        &format!("{client}-secret"),
        &[
            ("grant_type", "password"),
            ("username", user),
            ("password", "pass"),
        ],
    );
    (
        j["access_token"].as_str().unwrap().into(),
        j["refresh_token"].as_str().unwrap().into(),
    )
}

fn refresh_grant(idp: &Idp, client: &str, rt: &str) -> (String, String) {
    let j = idp.token(
        client,
        &format!("{client}-secret"),
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    );
    let at = j["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("refresh: {j}"));
    (at.into(), j["refresh_token"].as_str().unwrap().into())
}

/// `node scripts/idp/genkeys.mjs` (RS256).
fn genkeys(file: &Path, kid: &str, append: bool) {
    let node = std::env::var("SHARDGATE_NODE").unwrap_or_else(|_| "node".to_string());
    let mut cmd = Command::new(node);
    cmd.arg(repo_root().join("scripts/idp/genkeys.mjs"))
        .arg(file)
        .args(["--kid", kid]);
    if append {
        cmd.arg("--append");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "genkeys: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "shardgate-oidc-bearer-{}-{tag}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One keep-alive client connection: its requests all land on the same shard, and so meet that
/// shard's caches.
struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    fn open(gw: &Gateway) -> KeepAlive {
        let s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        KeepAlive(BufReader::new(s))
    }

    fn call(&mut self, path: &str, token: &str) -> Response {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
        self.0.get_mut().write_all(req.as_bytes()).unwrap();
        read_response(&mut self.0, false).unwrap()
    }
}

/// Sends the same request on `n` connections at once: all connect first, then all write together.
fn concurrent(addr: std::net::SocketAddr, path: &str, token: &str, n: usize) -> Vec<Response> {
    let barrier = Barrier::new(n);
    thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let req = format!(
                        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                    );
                    barrier.wait();
                    c.write_all(req.as_bytes()).unwrap();
                    read_response(&mut BufReader::new(c), false).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn jwt_tokens_reach_the_upstream_with_apisix_headers() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start_gateway(
        &idp,
        &up,
        &[
            route("plain", "/plain/*", "use_jwks: true"),
            route(
                "authz",
                "/authz/*",
                "use_jwks: true\naccess_token_in_authorization_header: true",
            ),
            route(
                "hidden",
                "/hidden/*",
                "use_jwks: true\nhide_credentials: true",
            ),
        ],
    );

    // Client credentials: X-Access-Token is the token, X-Userinfo base64 of the payload JSON, and
    // the identity headers the client tried to smuggle in are gone.
    let token = idp.client_credentials("m2m", "read write", Some(API));
    let auth = bearer(&token);
    let r = get(
        gw.addr(),
        "/plain/x",
        &[
            ("Authorization", &auth),
            ("X-Userinfo", "eyJzdWIiOiJhZG1pbiJ9"),
            ("X-ID-Token", "spoofed"),
            ("X-Access-Token", "spoofed"),
            ("X-Refresh-Token", "spoofed"),
        ],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    let seen = last_seen(&up);
    let (_, payload) = jwt_parts(&token);
    assert_eq!(seen_all(&seen, "x-access-token"), vec![token.clone()]);
    assert_eq!(
        seen_all(&seen, "x-userinfo"),
        vec![STANDARD.encode(&payload)]
    );
    let userinfo: Value =
        serde_json::from_slice(&STANDARD.decode(seen.header("x-userinfo").unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        (userinfo["sub"].as_str(), userinfo["aud"].as_str()),
        (Some("m2m"), Some(API))
    );
    assert!(seen_all(&seen, "x-id-token").is_empty());
    assert!(seen_all(&seen, "x-refresh-token").is_empty());
    // Without hide_credentials the client's own Authorization goes through, as in APISIX.
    assert_eq!(seen.header("authorization"), Some(auth.as_str()));

    // access_token_in_authorization_header: the token travels in Authorization only.
    let r = get(
        gw.addr(),
        "/authz/x",
        &[("Authorization", &auth), ("X-Access-Token", "spoofed")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = last_seen(&up);
    assert_eq!(seen_all(&seen, "authorization"), vec![auth.clone()]);
    assert!(
        seen_all(&seen, "x-access-token").is_empty(),
        "{:?}",
        seen.headers
    );

    // hide_credentials: the client's Authorization never reaches the upstream.
    let r = call(&gw, "/hidden/x", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = last_seen(&up);
    assert!(
        seen_all(&seen, "authorization").is_empty(),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen_all(&seen, "x-access-token"), vec![token.clone()]);

    // The token may come in X-Access-Token instead of Authorization (APISIX).
    let r = get(gw.addr(), "/plain/y", &[("X-Access-Token", &token)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        seen_all(&last_seen(&up), "x-access-token"),
        vec![token.clone()]
    );

    // Password grant, then a token from the refresh_token grant.
    let (at, rt) = password_grant(&idp, "pw", "alice");
    let r = call(&gw, "/plain/pw", &at);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        seen_all(&last_seen(&up), "x-access-token"),
        vec![at.clone()]
    );
    let (refreshed, _) = refresh_grant(&idp, "pw", &rt);
    assert_ne!(refreshed, at);
    let r = call(&gw, "/plain/refreshed", &refreshed);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = last_seen(&up);
    assert_eq!(seen.target, "/plain/refreshed");
    let userinfo: Value =
        serde_json::from_slice(&STANDARD.decode(seen.header("x-userinfo").unwrap()).unwrap())
            .unwrap();
    assert_eq!(userinfo["sub"], "alice");

    // A repeated token is a cache hit; /readyz and /metrics tell the operator what happened.
    let r = call(&gw, "/plain/again", &token);
    assert_eq!(r.status, 200);
    let ready = get(gw.admin_addr(), "/readyz", &[]);
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(ready["providers"][0]["ready"], true, "{ready}");
    assert_eq!(ready["providers"][0]["discovery"], idp.discovery());
    let metrics = gw.metrics();
    for needle in [
        "shardgate_oidc_jwks_fetches_total{",
        "shardgate_oidc_discovery_fetches_total{",
        "shardgate_oidc_token_cache_total{result=\"hit\"}",
        "shardgate_oidc_token_cache_total{result=\"miss\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
    assert_eq!(up.requests().len(), 7);
}

#[test]
fn es512_bearer_tokens_from_the_real_idp_verify_and_a_tampered_one_is_refused() {
    // JWT access tokens signed ES512 with the IdP's P-521 key.
    let idp = Idp::start(&[("IDP_ES512", "1"), ("IDP_AT_ALG", "ES512")]);
    let up = Upstream::echo();
    let gw = start_gateway(&idp, &up, &[route("plain", "/plain/*", "use_jwks: true")]);
    let token = idp.client_credentials("m2m", "read", Some(API));
    let (head, _) = jwt_parts(&token);
    assert_eq!(head["alg"], "ES512", "{head}");
    let r = call(&gw, "/plain/x", &token);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(
        last_seen(&up).header("x-access-token"),
        Some(token.as_str())
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut sig = parts[2].clone().into_bytes();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(sig).unwrap();
    assert_invalid_token(
        &gw,
        &up,
        "/plain/x",
        &parts.join("."),
        "tampered ES512 signature",
    );
    gw.assert_no_panic();
}

#[test]
fn bad_jwts_are_refused_before_the_upstream() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let rsa1_pub = std::fs::read_to_string(testdata("rsa1.pub.pem")).unwrap();
    let mut static_key = String::from("public_key: |\n");
    for l in rsa1_pub.lines() {
        static_key.push_str("  ");
        static_key.push_str(l);
        static_key.push('\n');
    }
    let gw = start_gateway(
        &idp,
        &up,
        &[
            route("jwt", "/jwt/*", "use_jwks: true"),
            route(
                "scoped",
                "/scoped/*",
                "use_jwks: true\nrequired_scopes: [admin]",
            ),
            route(
                "aud",
                "/aud/*",
                // The route's client_id is the API's resource indicator, so match_with_client_id
                // accepts tokens minted for that resource and nothing else.
                "use_jwks: true\nclient_id: \"urn:shardgate:api\"\nclaim_validator: { audience: { match_with_client_id: true } }",
            ),
            route(
                "iss",
                "/iss/*",
                "use_jwks: true\nclaim_validator: { issuer: { valid_issuers: [\"https://other.example\"] } }",
            ),
            route("short", "/short/*", "use_jwks: true\niat_slack: 0"),
            route(
                "static",
                "/static/*",
                &format!("{static_key}required_scopes: [admin]"),
            ),
        ],
    );
    let good = idp.client_credentials("m2m", "read write", Some(API));
    let short = idp.client_credentials("m2m-short", "read", Some(API));
    let r = call(&gw, "/short/x", &short);
    assert_eq!(
        r.status,
        200,
        "short-lived token before expiry: {}",
        r.text()
    );
    let expires_at = Instant::now() + Duration::from_secs(3);
    let kid = kid_of(&good);
    let (_, payload) = jwt_parts(&good);

    // No token / malformed header.
    let before = up.requests().len();
    let r = get(gw.addr(), "/jwt/x", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"apisix\"")
    );
    let r = get(gw.addr(), "/jwt/x", &[("Authorization", "Bearer")]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = get(
        gw.addr(),
        "/jwt/x",
        &[("Authorization", &format!("Bearer{good}"))],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.requests().len(), before);

    // Forged signature: the IdP's token with one signature byte flipped.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    sig[10] ^= 0x01;
    parts[2] = URL_SAFE_NO_PAD.encode(&sig);
    assert_invalid_token(
        &gw,
        &up,
        "/jwt/x",
        &parts.join("."),
        "flipped signature byte",
    );
    // Claims changed under the IdP's signature.
    let mut tampered: Value = serde_json::from_slice(&payload).unwrap();
    tampered["scope"] = json!("read write admin");
    let t = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        URL_SAFE_NO_PAD.encode(tampered.to_string()),
        parts[2]
    );
    assert_invalid_token(&gw, &up, "/scoped/x", &t, "tampered claims");

    // alg none, with and without a signature part.
    let none_header =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
    let none_payload = URL_SAFE_NO_PAD.encode(&payload);
    assert_invalid_token(
        &gw,
        &up,
        "/jwt/x",
        &format!("{none_header}.{none_payload}."),
        "alg none",
    );
    assert_invalid_token(
        &gw,
        &up,
        "/jwt/x",
        &format!("{none_header}.{none_payload}.{}", parts[2]),
        "alg none + sig",
    );

    // Algorithm confusion: HS256 keyed with the public key material the gateway trusts.
    let jwks = get(idp.addr(), "/jwks", &[]).json();
    let idp_jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()
        .clone();
    for secret in [
        idp_jwk.to_string().into_bytes(),
        URL_SAFE_NO_PAD
            .decode(idp_jwk["n"].as_str().unwrap())
            .unwrap(),
    ] {
        let t = sign(Alg::HS256, Some(&kid), &payload, &SigningKey::hmac(&secret)).unwrap();
        assert_invalid_token(
            &gw,
            &up,
            "/jwt/x",
            &t,
            "HS256 keyed with the IdP's public key",
        );
    }
    let t = sign(
        Alg::HS256,
        None,
        &idp_claims(&idp, json!({})),
        &SigningKey::hmac(rsa1_pub.as_bytes()),
    )
    .unwrap();
    assert_invalid_token(
        &gw,
        &up,
        "/static/x",
        &t,
        "HS256 keyed with the configured public_key PEM",
    );

    // A kid from another key set (oidc/testdata/jwks.json), and our key under the IdP's kid.
    let t = sign(
        Alg::RS256,
        Some("rsa1"),
        &idp_claims(&idp, json!({})),
        &rsa1(),
    )
    .unwrap();
    assert_invalid_token(&gw, &up, "/jwt/x", &t, "kid from another key set");
    let t = sign(
        Alg::RS256,
        Some(&kid),
        &idp_claims(&idp, json!({})),
        &rsa1(),
    )
    .unwrap();
    assert_invalid_token(&gw, &up, "/jwt/x", &t, "foreign key under the IdP's kid");

    // Garbage.
    for g in [
        "garbage",
        "a.b.c",
        "..",
        "eyJhbGciOiJSUzI1NiJ9.e30",
        "eyJhbGciOiJSUzI1NiJ9.%%%.xyz",
        &"x".repeat(5000),
    ] {
        assert_invalid_token(&gw, &up, "/jwt/x", g, &format!("garbage {:.20}", g));
    }

    // Scopes: the `scope` string lacks admin -> 403 insufficient_scope; with it -> 200.
    let before = up.requests().len();
    let r = call(&gw, "/scoped/x", &good);
    assert_eq!(r.status, 403, "{}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert_eq!(up.requests().len(), before);
    let admin = idp.client_credentials("m2m", "read admin", Some(API));
    assert_eq!(call(&gw, "/scoped/x", &admin).status, 200);
    assert_eq!(seen_all(&last_seen(&up), "x-access-token"), vec![admin]);
    // ...and as an `scp` array (forged with our key, trusted through public_key on /static).
    let before = up.requests().len();
    let no_admin = sign(
        Alg::RS256,
        None,
        &idp_claims(&idp, json!({"scope": null, "scp": ["read", "write"]})),
        &rsa1(),
    )
    .unwrap();
    let r = call(&gw, "/static/x", &no_admin);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("error=\"insufficient_scope\"")
    );
    assert_eq!(up.requests().len(), before);
    let with_admin = sign(
        Alg::RS256,
        None,
        &idp_claims(&idp, json!({"scope": null, "scp": ["read", "admin"]})),
        &rsa1(),
    )
    .unwrap();
    let r = call(&gw, "/static/x", &with_admin);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        seen_all(&last_seen(&up), "x-access-token"),
        vec![with_admin]
    );

    // Audience: a token for another API is refused: 401 invalid_token (RFC 6750 pairs the code
    // with 401; APISIX's 403 carries no RFC 6750 code), with APISIX's description.
    let other = idp.client_credentials("m2m-other", "read", None);
    let other_claims: Value = serde_json::from_slice(&jwt_parts(&other).1).unwrap();
    assert_eq!(other_claims["aud"], "urn:other:api");
    let before = up.requests().len();
    let r = call(&gw, "/aud/x", &other);
    assert_eq!(r.status, 401, "{}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(
        www.contains("error_description=\"mismatched audience\""),
        "{www}"
    );
    assert_eq!(r.json()["error"], "invalid_token");
    // The refusal is cached (negative cache): the second answer must agree.
    assert_eq!(call(&gw, "/aud/x", &other).status, 401);
    assert_eq!(up.requests().len(), before);
    assert_eq!(call(&gw, "/aud/x", &good).status, 200);

    // Issuer: valid_issuers names someone else -> 401.
    assert_invalid_token(&gw, &up, "/iss/x", &good, "wrong issuer");

    // Expired: m2m-short lives 2 s, iat_slack 0; the cached verification must not outlive exp.
    let wait = expires_at.saturating_duration_since(Instant::now());
    thread::sleep(wait);
    assert_invalid_token(&gw, &up, "/short/x", &short, "expired");

    // Every rejection above was logged with its reason and counted.
    let metrics = gw.metrics();
    assert!(
        metrics.contains("shardgate_oidc_rejections_total{reason=\"invalid_token\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shardgate_oidc_rejections_total{reason=\"insufficient_scope\"}"),
        "{metrics}"
    );
}

#[test]
fn opaque_tokens_are_introspected_cached_and_revocable() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let intro = "client_secret: gateway-secret\nintrospection_interval: 1";
    let gw = start_gateway(
        &idp,
        &up,
        &[
            route("intro", "/intro/*", intro),
            route("cached", "/cached/*", "client_secret: gateway-secret"),
        ],
    );

    // Active opaque token -> 200, X-Userinfo is base64 of the introspection answer.
    let token = idp.client_credentials("m2m-opaque", "read", None);
    assert_eq!(
        token.split('.').count(),
        1,
        "expected an opaque token: {token}"
    );
    let r = call(&gw, "/intro/x", &token);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    let seen = last_seen(&up);
    assert_eq!(seen_all(&seen, "x-access-token"), vec![token.clone()]);
    let info: Value =
        serde_json::from_slice(&STANDARD.decode(seen.header("x-userinfo").unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        (info["active"].as_bool(), info["client_id"].as_str()),
        (Some(true), Some("m2m-opaque"))
    );

    // Single flight: 20 concurrent requests, new token, 20 connections -> one introspection per
    // shard at most; repeats are cache hits.
    let fresh = idp.client_credentials("m2m-opaque", "read", None);
    let before = idp.path_count("/token/introspection");
    let seen_before = up.requests().len();
    let answers = concurrent(gw.addr(), "/cached/x", &fresh, 20);
    assert!(
        answers.iter().all(|r| r.status == 200),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let calls = idp.path_count("/token/introspection") - before;
    assert!(
        (1..=2).contains(&calls),
        "{calls} introspection calls for one token on 2 shards"
    );
    assert_eq!(up.requests().len(), seen_before + 20);
    for _ in 0..10 {
        assert_eq!(call(&gw, "/cached/y", &fresh).status, 200);
    }
    assert_eq!(
        idp.path_count("/token/introspection") - before,
        calls,
        "repeats must hit the cache"
    );

    // Revoked at the IdP -> 401 once the 1 s cache TTL has passed.
    revoke(&idp, &token);
    // Password grant with opaque tokens: B replaces A through the refresh_token grant.
    let (a, rt) = password_grant(&idp, "pw-opaque", "bob");
    let (b, _) = refresh_grant(&idp, "pw-opaque", &rt);
    assert_eq!(call(&gw, "/intro/a", &a).status, 200);
    assert_eq!(call(&gw, "/intro/b", &b).status, 200);
    let seen = last_seen(&up);
    assert_eq!(seen.target, "/intro/b");
    let info: Value =
        serde_json::from_slice(&STANDARD.decode(seen.header("x-userinfo").unwrap()).unwrap())
            .unwrap();
    assert_eq!(info["sub"], "bob");
    revoke(&idp, &a);
    thread::sleep(Duration::from_millis(2100));
    assert_invalid_token(
        &gw,
        &up,
        "/intro/x",
        &token,
        "revoked client-credentials token",
    );
    assert_invalid_token(&gw, &up, "/intro/a", &a, "revoked replaced token");
    let r = call(&gw, "/intro/b", &b);
    assert_eq!(
        r.status,
        200,
        "the refreshed token survives its predecessor's revocation: {}",
        r.text()
    );
    assert_eq!(last_seen(&up).target, "/intro/b");
    // A token the IdP never issued.
    assert_invalid_token(
        &gw,
        &up,
        "/intro/x",
        "not-a-token-the-idp-knows",
        "unknown opaque token",
    );

    let metrics = gw.metrics();
    assert!(
        metrics.contains("shardgate_oidc_idp_shared_calls_total{"),
        "{metrics}"
    );
}

#[test]
fn rotated_keys_are_picked_up_without_restarting_the_gateway() {
    let dir = scratch("rotation");
    let keys = dir.join("keys.json");
    genkeys(&keys, "k1", false);
    let keys_s = keys.to_str().unwrap();
    let mut idp = Idp::start(&[("IDP_KEYS", keys_s)]);
    let up = Upstream::echo();
    let gw = start_gateway(&idp, &up, &[route("jwt", "/jwt/*", "use_jwks: true")]);

    let old = idp.client_credentials("m2m", "read", Some(API));
    assert_eq!(kid_of(&old), "k1");
    assert_eq!(call(&gw, "/jwt/old", &old).status, 200);

    // Rotation: k2 signs from now on, k1 stays published (overlap).
    genkeys(&keys, "k2", true);
    idp.restart(&[("IDP_KEYS", keys_s)]);
    let jwks_before = idp.path_count("/jwks");
    let new = idp.client_credentials("m2m", "read", Some(API));
    assert_eq!(kid_of(&new), "k2");
    let r = call(&gw, "/jwt/new", &new);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    let seen = last_seen(&up);
    assert_eq!(
        (seen.target.as_str(), seen.header("x-access-token")),
        ("/jwt/new", Some(new.as_str()))
    );
    assert_eq!(
        idp.path_count("/jwks") - jwks_before,
        1,
        "one refetch for the unknown kid"
    );
    // Both keys now serve, on both shards (fresh connections land on either).
    for _ in 0..6 {
        assert_eq!(call(&gw, "/jwt/old", &old).status, 200);
        assert_eq!(call(&gw, "/jwt/new", &new).status, 200);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flood_of_unknown_kids_costs_a_bounded_number_of_jwks_fetches() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start_gateway(&idp, &up, &[route("jwt", "/jwt/*", "use_jwks: true")]);
    let good = idp.client_credentials("m2m", "read", Some(API));
    assert_eq!(call(&gw, "/jwt/x", &good).status, 200);
    let seen_before = up.requests().len();
    let jwks_before = idp.path_count("/jwks");

    let claims = idp_claims(&idp, json!({}));
    let key = rsa1();
    let tag = unique();
    let tokens: Vec<String> = (0..200)
        .map(|i| sign(Alg::RS256, Some(&format!("flood-{tag}-{i}")), &claims, &key).unwrap())
        .collect();
    let statuses: Vec<(u16, String)> = thread::scope(|s| {
        let handles: Vec<_> = tokens
            .chunks(25)
            .map(|chunk| {
                let gw = &gw;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|t| {
                            let r = call(gw, "/jwt/x", t);
                            (
                                r.status,
                                r.header("www-authenticate").unwrap_or_default().to_string(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(statuses.len(), 200);
    for (status, www) in &statuses {
        assert_eq!(*status, 401);
        assert!(www.contains("error=\"invalid_token\""), "{www}");
    }
    let fetches = idp.path_count("/jwks") - jwks_before;
    assert!(
        fetches <= 2,
        "{fetches} JWKS fetches for a flood of 200 unknown kids"
    );
    assert_eq!(
        up.requests().len(),
        seen_before,
        "the upstream saw a forged token"
    );
    // The flood did not disturb real tokens.
    assert_eq!(call(&gw, "/jwt/y", &good).status, 200);
    assert_eq!(last_seen(&up).target, "/jwt/y");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("shardgate_oidc_jwks_unknown_kid_refetches_total{"),
        "{metrics}"
    );
}

#[test]
fn with_the_idp_down_known_keys_keep_serving_and_introspection_answers_503() {
    let mut idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start_gateway(
        &idp,
        &up,
        &[
            route("jwt", "/jwt/*", "use_jwks: true"),
            route("intro", "/intro/*", "client_secret: gateway-secret"),
        ],
    );
    let seen_token = idp.client_credentials("m2m", "read", Some(API));
    let unseen_token = idp.client_credentials("m2m", "write", Some(API));
    let unseen_pw = password_grant(&idp, "pw", "carol").0;
    let opaque_seen = idp.client_credentials("m2m-opaque", "read", None);
    let opaque_unseen = idp.client_credentials("m2m-opaque", "read", None);
    let mut conn = KeepAlive::open(&gw);
    assert_eq!(conn.call("/jwt/x", &seen_token).status, 200);
    assert_eq!(conn.call("/intro/x", &opaque_seen).status, 200);

    idp.stop();
    // Nothing listens on the IdP's port any more.
    assert!(TcpStream::connect(idp.addr()).is_err());

    for (path, token) in [
        ("/jwt/seen", &seen_token),
        ("/jwt/unseen", &unseen_token),
        ("/jwt/pw", &unseen_pw),
    ] {
        for _ in 0..3 {
            let r = call(&gw, path, token);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let seen = last_seen(&up);
            assert_eq!(
                (seen.target.as_str(), seen.header("x-access-token")),
                (path, Some(token.as_str()))
            );
        }
    }
    // A cached introspection answer still serves (on the shard that cached it: caches are
    // shard-local); a new opaque token needs the IdP -> 503.
    let r = conn.call("/intro/cached", &opaque_seen);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_seen(&up).target, "/intro/cached");
    let r = conn.call("/jwt/seen-again", &seen_token);
    assert_eq!(r.status, 200, "{}", r.text());
    let before = up.requests().len();
    let r = call(&gw, "/intro/new", &opaque_unseen);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(up.requests().len(), before);
    assert!(
        gw.wait_log("introspection endpoint unreachable", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    // Forgeries are still refused while the IdP is away.
    let forged = sign(
        Alg::RS256,
        Some(&kid_of(&seen_token)),
        &idp_claims(&idp, json!({})),
        &rsa1(),
    )
    .unwrap();
    assert_invalid_token(
        &gw,
        &up,
        "/jwt/x",
        &forged,
        "forged token while the IdP is down",
    );
}

#[test]
fn introspection_negative_cache_follows_its_settings() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start_gateway(
        &idp,
        &up,
        &[
            route(
                "short",
                "/short/*",
                "client_secret: gateway-secret\nintrospection_negative_cache_ttl: 1",
            ),
            route(
                "off",
                "/off/*",
                "client_secret: gateway-secret\nintrospection_enable_negative_cache: false",
            ),
        ],
    );
    let calls = || idp.path_count("/token/introspection");
    // One connection: negative entries are shard-local.
    let mut conn = KeepAlive::open(&gw);

    // Negative caching off: every request for an unknown token asks the IdP again.
    let bogus = format!("bogus-off-{}", unique());
    let before = calls();
    for _ in 0..3 {
        assert_eq!(conn.call("/off/x", &bogus).status, 401);
    }
    assert_eq!(
        calls() - before,
        3,
        "introspection_enable_negative_cache: false still cached the answer"
    );

    // A 1 s negative TTL: cached within it, asked again after it.
    let bogus = format!("bogus-short-{}", unique());
    let before = calls();
    assert_eq!(conn.call("/short/x", &bogus).status, 401);
    assert_eq!(conn.call("/short/x", &bogus).status, 401);
    assert_eq!(
        calls() - before,
        1,
        "the inactive answer is negatively cached"
    );
    thread::sleep(Duration::from_millis(2100));
    assert_eq!(conn.call("/short/x", &bogus).status, 401);
    assert_eq!(
        calls() - before,
        2,
        "introspection_negative_cache_ttl: 1 kept the entry for longer"
    );
    assert!(up.requests().is_empty());
}

#[test]
fn a_second_authorization_header_is_refused() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start_gateway(&idp, &up, &[route("jwt", "/jwt/*", "use_jwks: true")]);
    let good = idp.client_credentials("m2m", "read", Some(API));
    let auth = bearer(&good);
    // The gateway verifies the first header; an upstream reading the last one would trust a
    // credential nobody checked. Authorization is not a list header (RFC 9110 11.6.2): 400.
    for (first, second) in [
        (auth.as_str(), "Bearer forged"),
        ("Bearer forged", auth.as_str()),
        (auth.as_str(), "Basic YTpi"),
    ] {
        let r = get(
            gw.addr(),
            "/jwt/x",
            &[("Authorization", first), ("Authorization", second)],
        );
        assert_eq!(r.status, 400, "{first:.12} + {second:.12}: {}", r.text());
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    assert_eq!(call(&gw, "/jwt/x", &good).status, 200);
}

#[test]
fn a_kid_refused_by_the_refetch_rate_limit_is_not_locked_out_after_it() {
    let dir = scratch("ratelimit");
    let keys = dir.join("keys.json");
    genkeys(&keys, "r1", false);
    let keys_s = keys.to_str().unwrap();
    let mut idp = Idp::start(&[("IDP_KEYS", keys_s)]);
    let up = Upstream::echo();
    let gw = start_gateway(&idp, &up, &[route("jwt", "/jwt/*", "use_jwks: true")]);

    // A bogus kid spends the forced refetch...
    let forged = sign(
        Alg::RS256,
        Some("bogus"),
        &idp_claims(&idp, json!({})),
        &rsa1(),
    )
    .unwrap();
    assert_invalid_token(&gw, &up, "/jwt/x", &forged, "bogus kid");
    let refetched = Instant::now();
    // ...so a real rotation right after is refused until the rate limit allows another refetch.
    genkeys(&keys, "r2", true);
    idp.restart(&[("IDP_KEYS", keys_s)]);
    let early = idp.client_credentials("m2m", "read", Some(API));
    assert_eq!(kid_of(&early), "r2");
    assert_invalid_token(
        &gw,
        &up,
        "/jwt/early",
        &early,
        "new kid inside the refetch rate limit",
    );
    // Once the interval (10 s) has passed the new kid gets its refetch: the earlier refusal must
    // not have put it on the 60 s list of kids that a refetch proved unknown.
    thread::sleep(Duration::from_secs(11).saturating_sub(refetched.elapsed()));
    let late = idp.client_credentials("m2m", "read", Some(API));
    let r = call(&gw, "/jwt/late", &late);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(last_seen(&up).target, "/jwt/late");
    let _ = std::fs::remove_dir_all(&dir);
}
