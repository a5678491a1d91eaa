//! DPoP (RFC 9449) on bearer routes, end to end: the real `shardgate` binary (two shards), a real
//! loopback upstream, and DPoP-bound tokens from the real test IdP (`scripts/idp/server.mjs`,
//! npm `oidc-provider` with its `dPoP` feature). The client side (the proofs a client sends) is
//! `shardgate_oidc::dpop::DpopSigner` with the test keys in `oidc/tests/data/`.
//!
//! Every case asserts the status and `WWW-Authenticate` the client got and whether the upstream
//! saw the request.
#![allow(clippy::unwrap_used)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use shardgate_oidc::dpop::DpopSigner;
use shardgate_oidc::jwt::Alg;
use support::{Gateway, Idp, Response, Upstream, base64_encode, get, request, urlenc};

const API: &str = "urn:shardgate:api";
const EC_PEM: &str = include_str!("../../oidc/tests/data/dpop_es256.pem");
const RSA_PEM: &str = include_str!("../../oidc/tests/data/dpop_rsa2048.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jti() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(idp: &Idp, up: &Upstream, routes: &[(&str, &str, &str)]) -> String {
    let mut y = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\nroutes:\n",
        up.node()
    );
    for (id, uri, extra) in routes {
        y.push_str(&format!(
            "  - id: {id}\n    uri: {uri}\n    upstream_id: app\n    plugins:\n      openid-connect:\n\
             \x20       discovery: {}\n        bearer_only: true\n        client_id: gateway\n",
            idp.discovery()
        ));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str("        ");
            y.push_str(line);
            y.push('\n');
        }
    }
    y
}

fn start(idp: &Idp, up: &Upstream, routes: &[(&str, &str, &str)]) -> Gateway {
    let gw = Gateway::start(&config(idp, up, routes), &["--shards", "2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::net::TcpStream::connect(gw.admin_addr()).is_ok()
            && get(gw.admin_addr(), "/readyz", &[]).status == 200
        {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "providers not ready\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client-credentials token bound to `key` (a DPoP proof on the token request).
fn bound_token(idp: &Idp, client: &str, resource: Option<&str>, key: &DpopSigner) -> Value {
    let mut body = format!("grant_type=client_credentials&scope={}", urlenc("read"));
    if let Some(r) = resource {
        body.push_str(&format!("&resource={}", urlenc(r)));
    }
    let proof = key
        .proof(
            "POST",
            &format!("{}/token", idp.issuer),
            now(),
            &jti(),
            None,
            None,
        )
        .unwrap();
    let basic = format!(
        "Basic {}",
        base64_encode(format!("{client}:{client}-secret").as_bytes())
    );
    let r = request(
        idp.addr(),
        "POST",
        "/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &basic),
            ("DPoP", &proof),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "token request: {}", r.text());
    r.json()
}

fn payload(jwt: &str) -> Value {
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// `GET path` with `Authorization: <scheme> <token>` and the proof, if any.
fn call(gw: &Gateway, path: &str, scheme: &str, token: &str, proof: Option<&str>) -> Response {
    let auth = format!("{scheme} {token}");
    let mut h = vec![("Authorization", auth.as_str())];
    if let Some(p) = proof {
        h.push(("DPoP", p));
    }
    get(gw.addr(), path, &h)
}

fn proof_for(gw: &Gateway, key: &DpopSigner, path: &str, token: &str) -> String {
    key.proof(
        "GET",
        &format!("http://{}{path}", gw.addr()),
        now(),
        &jti(),
        None,
        Some(token),
    )
    .unwrap()
}

fn assert_refused(r: &Response, error: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with("DPoP ") && www.contains(&format!("error=\"{error}\"")),
        "{what}: WWW-Authenticate {www:?}"
    );
    assert!(www.contains("algs=\""), "{what}: {www:?}");
}

#[test]
fn dpop_bound_jwt_and_introspected_tokens_need_a_valid_fresh_proof() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start(
        &idp,
        &up,
        &[
            ("jwt", "/jwt/*", "use_jwks: true"),
            (
                "intro",
                "/intro/*",
                "client_secret: gateway-secret\nintrospection_interval: 30",
            ),
            (
                "required",
                "/required/*",
                "use_jwks: true\ndpop_bound_tokens: required",
            ),
            ("off", "/off/*", "use_jwks: true\ndpop_bound_tokens: off"),
        ],
    );
    let key = DpopSigner::from_pem(EC_PEM, Alg::ES256).unwrap();
    let other = DpopSigner::from_pem(RSA_PEM, Alg::RS256).unwrap();

    // The IdP bound the token to our key.
    let answer = bound_token(&idp, "m2m", Some(API), &key);
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    let token = answer["access_token"].as_str().unwrap().to_string();
    assert_eq!(payload(&token)["cnf"]["jkt"], key.thumbprint());

    // A valid proof: 200, the upstream sees the request.
    let seen = up.requests().len();
    let r = call(
        &gw,
        "/jwt/a",
        "DPoP",
        &token,
        Some(&proof_for(&gw, &key, "/jwt/a", &token)),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(up.requests().len(), seen + 1);
    // A second request with its own proof: the token comes from the cache, the proof is checked.
    let r = call(
        &gw,
        "/jwt/a",
        "DPoP",
        &token,
        Some(&proof_for(&gw, &key, "/jwt/a", &token)),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Replayed: the same proof again, on fresh connections (two shards: each replay is refused
    // whichever shard the connection lands on).
    let p = proof_for(&gw, &key, "/jwt/b", &token);
    assert_eq!(call(&gw, "/jwt/b", "DPoP", &token, Some(&p)).status, 200);
    let seen = up.requests().len();
    for _ in 0..6 {
        let r = call(&gw, "/jwt/b", "DPoP", &token, Some(&p));
        assert_refused(&r, "invalid_dpop_proof", "replayed proof");
        assert!(r.text().contains("already used"), "{}", r.text());
    }
    // Wrong htu: a proof for another path.
    let p = proof_for(&gw, &key, "/jwt/other", &token);
    let r = call(&gw, "/jwt/c", "DPoP", &token, Some(&p));
    assert_refused(&r, "invalid_dpop_proof", "wrong htu");
    assert!(r.text().contains("htu"), "{}", r.text());
    // Wrong htm.
    let p = key
        .proof(
            "POST",
            &format!("http://{}/jwt/c", gw.addr()),
            now(),
            &jti(),
            None,
            Some(&token),
        )
        .unwrap();
    assert_refused(
        &call(&gw, "/jwt/c", "DPoP", &token, Some(&p)),
        "invalid_dpop_proof",
        "wrong htm",
    );
    // Wrong key: a well-formed proof by a key the token is not bound to.
    let p = proof_for(&gw, &other, "/jwt/c", &token);
    let r = call(&gw, "/jwt/c", "DPoP", &token, Some(&p));
    assert_refused(&r, "invalid_dpop_proof", "wrong key");
    assert!(r.text().contains("not the key"), "{}", r.text());
    // Stale iat.
    let p = key
        .proof(
            "GET",
            &format!("http://{}/jwt/c", gw.addr()),
            now() - 600,
            &jti(),
            None,
            Some(&token),
        )
        .unwrap();
    assert_refused(
        &call(&gw, "/jwt/c", "DPoP", &token, Some(&p)),
        "invalid_dpop_proof",
        "stale",
    );
    // ath of another token.
    let p = proof_for(&gw, &key, "/jwt/c", "another-token");
    assert_refused(
        &call(&gw, "/jwt/c", "DPoP", &token, Some(&p)),
        "invalid_dpop_proof",
        "ath",
    );
    // Missing proof.
    let r = call(&gw, "/jwt/c", "DPoP", &token, None);
    assert_refused(&r, "invalid_dpop_proof", "missing proof");
    // Plain bearer use of the bound token, with or without a proof.
    let r = call(&gw, "/jwt/c", "Bearer", &token, None);
    assert_refused(&r, "invalid_token", "bound token as bearer");
    let p = proof_for(&gw, &key, "/jwt/c", &token);
    assert_refused(
        &call(&gw, "/jwt/c", "Bearer", &token, Some(&p)),
        "invalid_token",
        "bearer + proof",
    );
    assert_eq!(
        up.requests().len(),
        seen,
        "no refused request reached the upstream"
    );

    // An unbound token: a bearer token as before on `optional` routes, refused on `required`.
    let plain = idp.client_credentials("m2m", "read", Some(API));
    assert!(payload(&plain).get("cnf").is_none());
    let auth = format!("Bearer {plain}");
    assert_eq!(
        get(gw.addr(), "/jwt/d", &[("Authorization", &auth)]).status,
        200
    );
    let r = get(gw.addr(), "/required/d", &[("Authorization", &auth)]);
    assert_refused(&r, "invalid_token", "unbound token on a required route");
    // ... and not with the DPoP scheme.
    let p = proof_for(&gw, &key, "/jwt/d", &plain);
    assert_refused(
        &call(&gw, "/jwt/d", "DPoP", &plain, Some(&p)),
        "invalid_token",
        "unbound DPoP",
    );
    // `required` accepts a bound token with its proof; `off` takes it as a bearer token.
    let p = proof_for(&gw, &key, "/required/e", &token);
    assert_eq!(
        call(&gw, "/required/e", "DPoP", &token, Some(&p)).status,
        200
    );
    assert_eq!(call(&gw, "/off/e", "Bearer", &token, None).status, 200);

    // Opaque token: `cnf` comes from the introspection answer.
    let answer = bound_token(&idp, "m2m-opaque", None, &key);
    let opaque = answer["access_token"].as_str().unwrap().to_string();
    assert_eq!(opaque.split('.').count(), 1, "opaque: {answer}");
    let p = proof_for(&gw, &key, "/intro/a", &opaque);
    let r = call(&gw, "/intro/a", "DPoP", &opaque, Some(&p));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    // Cached introspection, still a proof per request.
    assert_refused(
        &call(&gw, "/intro/a", "DPoP", &opaque, Some(&p)),
        "invalid_dpop_proof",
        "replay",
    );
    assert_refused(
        &call(&gw, "/intro/a", "Bearer", &opaque, None),
        "invalid_token",
        "opaque as bearer",
    );
    let p = proof_for(&gw, &other, "/intro/a", &opaque);
    assert_refused(
        &call(&gw, "/intro/a", "DPoP", &opaque, Some(&p)),
        "invalid_dpop_proof",
        "wrong key",
    );

    let m = gw.metrics();
    assert!(
        m.contains("shardgate_oidc_dpop_total{result=\"replayed\"}"),
        "{m}"
    );
    gw.assert_no_panic();
}

#[test]
fn dpop_nonce_routes_hand_out_a_nonce_and_then_accept_it() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let gw = start(
        &idp,
        &up,
        &[("n", "/n/*", "use_jwks: true\ndpop_nonce: true")],
    );
    let key = DpopSigner::from_pem(EC_PEM, Alg::ES256).unwrap();
    let token = bound_token(&idp, "m2m", Some(API), &key)["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{}/n/a", gw.addr());
    // No nonce: use_dpop_nonce, with one to use.
    let p = key
        .proof("GET", &url, now(), &jti(), None, Some(&token))
        .unwrap();
    let r = call(&gw, "/n/a", "DPoP", &token, Some(&p));
    assert_refused(&r, "use_dpop_nonce", "no nonce");
    let nonce = r
        .header("dpop-nonce")
        .expect("DPoP-Nonce header")
        .to_string();
    // A nonce we made up: refused the same way.
    let p = key
        .proof("GET", &url, now(), &jti(), Some("made-up"), Some(&token))
        .unwrap();
    assert_refused(
        &call(&gw, "/n/a", "DPoP", &token, Some(&p)),
        "use_dpop_nonce",
        "bad nonce",
    );
    // The nonce the gateway gave: accepted, on whichever shard the next connection lands.
    for _ in 0..4 {
        let p = key
            .proof("GET", &url, now(), &jti(), Some(&nonce), Some(&token))
            .unwrap();
        let r = call(&gw, "/n/a", "DPoP", &token, Some(&p));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------------------------
// The gateway as a DPoP client (APISIX's `dpop` object): login, userinfo and refresh.

const HTML: (&str, &str) = ("Accept", "text/html,application/xhtml+xml");

/// YAML for one login route with `dpop.enabled` and the ES256 test key.
fn login_yaml(idp: &Idp, up: &Upstream, port: u16, key: &DpopSigner) -> String {
    let pem = EC_PEM.trim().replace('\n', "\\n");
    let jwk = Value::Object(key.public_jwk().clone());
    format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\n\
         routes:\n  - id: web\n    uri: /*\n    upstream_id: app\n    plugins:\n      openid-connect:\n\
         \x20       client_id: gateway\n        client_secret: gateway-secret\n\
         \x20       discovery: {}\n        redirect_uri: http://127.0.0.1:{port}/callback\n\
         \x20       scope: \"openid profile email\"\n        set_userinfo_header: true\n\
         \x20       session: {{ secret: \"session-secret-for-tests-0123456789\", cookie_secure: false }}\n\
         \x20       dpop: {{ enabled: true, signing_alg: ES256, private_key: \"{pem}\", public_jwk: {jwk} }}\n",
        up.node(),
        idp.discovery()
    )
}

fn introspect(idp: &Idp, token: &str) -> Value {
    let body = format!("token={}", urlenc(token));
    let auth = format!("Basic {}", base64_encode(b"gateway:gateway-secret"));
    request(
        idp.addr(),
        "POST",
        "/token/introspection",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &auth),
        ],
        body.as_bytes(),
    )
    .json()
}

/// Logs in through the gateway with DPoP on; returns the access token the upstream saw.
fn dpop_login(idp_env: &[(&str, &str)]) -> (Idp, Upstream, Gateway, support::CookieJar, String) {
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let redirect_uri = format!("{base}/callback");
    let mut env = vec![("IDP_REDIRECT_URIS", redirect_uri.as_str())];
    env.extend(idp_env.iter().copied());
    let idp = Idp::start(&env);
    let up = Upstream::echo();
    let key = DpopSigner::from_pem(EC_PEM, Alg::ES256).unwrap();
    let gw = Gateway::start_with_port(port, &login_yaml(&idp, &up, port, &key), &["--shards", "2"]);
    gw.wait_providers_ready(Duration::from_secs(20));
    let mut jar = support::CookieJar::default();
    let r = jar.get(&format!("{base}/private"), &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), gw.log());
    let authorize = r.header("location").unwrap().to_string();
    let callback = support::idp_login(&mut jar, &authorize, &redirect_uri, "alice");
    let r = jar.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "callback: {}\n{}", r.text(), gw.log());
    let r = jar.get(&format!("{base}/private"), &[HTML]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    let seen = up.requests().pop().unwrap();
    // UserInfo answered (it wants `Authorization: DPoP` and a proof for a bound token).
    let user = seen.header("x-userinfo").expect("X-Userinfo");
    let user: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(user)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(user["email"], "alice@example.test", "{user}");
    let at = seen.header("x-access-token").unwrap().to_string();
    (idp, up, gw, jar, at)
}

#[test]
fn a_dpop_login_gets_tokens_bound_to_the_gateway_key_and_refreshes_them_bound() {
    let key = DpopSigner::from_pem(EC_PEM, Alg::ES256).unwrap();
    let (idp, up, gw, mut jar, at) = dpop_login(&[("IDP_OPAQUE_TTL", "2")]);
    let info = introspect(&idp, &at);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["token_type"], "DPoP", "{info}");
    assert_eq!(info["cnf"]["jkt"], key.thumbprint(), "{info}");

    // The access token expires; the refresh (with a proof by the same key) gets a bound one.
    std::thread::sleep(Duration::from_millis(3200));
    idp.reset_stats();
    let base = format!("http://{}", gw.addr());
    let r = jar.get(&format!("{base}/after"), &[HTML]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(idp.path_count("/token"), 1, "{}", idp.stats());
    let new_at = up
        .requests()
        .pop()
        .unwrap()
        .header("x-access-token")
        .unwrap()
        .to_string();
    assert_ne!(new_at, at);
    let info = introspect(&idp, &new_at);
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(
        info["cnf"]["jkt"],
        key.thumbprint(),
        "refreshed token not bound: {info}"
    );
    gw.assert_no_panic();
}

#[test]
fn an_idp_that_requires_dpop_nonces_gets_them_on_a_single_retry() {
    let key = DpopSigner::from_pem(EC_PEM, Alg::ES256).unwrap();
    let (idp, _up, gw, _jar, at) = dpop_login(&[("IDP_DPOP_NONCE", "1")]);
    let info = introspect(&idp, &at);
    assert_eq!(info["cnf"]["jkt"], key.thumbprint(), "{info}");
    // Each of the code exchange and userinfo was answered use_dpop_nonce once, then retried.
    let stats = idp.stats();
    assert_eq!(stats["paths"]["/token"], 2, "{stats}");
    assert_eq!(stats["paths"]["/me"], 2, "{stats}");
    gw.assert_no_panic();
}
