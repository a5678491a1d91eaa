//! `openid-connect` browser side end to end: the real `shardgate` binary (two shards), a real
//! loopback upstream that records what it receives, and the real test IdP (`oidc-provider`,
//! scripts/idp/) whose login form is filled over plain HTTP with a browser-like cookie jar.
//!
//! Every case asserts the status the client got and what the upstream saw (or that it saw
//! nothing). The only stand-in is one discovery document without `end_session_endpoint` (the real
//! IdP always has one); every other fault (code injection with a foreign nonce, rotated refresh
//! tokens, back-channel logout) is produced by the real IdP.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use support::{
    CookieJar, Gateway, Idp, Response, Seen, Upstream, free_port, get, idp_end_session, idp_login,
    query_param, read_response, request, split_url,
};

const SECRET: &str = "session-secret-for-tests-0123456789";
const OTHER_SECRET: &str = "another-session-secret-9876543210";
const HTML: (&str, &str) = ("Accept", "text/html,application/xhtml+xml");

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The plugin attributes every test starts from; `overrides` replace a key (or drop it when the
/// value is `-`) or add one.
fn oidc_attrs(discovery: &str, port: u16, overrides: &[(&str, &str)]) -> String {
    let mut attrs: Vec<(String, String)> = vec![
        ("client_id", "gateway".to_string()),
        ("client_secret", "gateway-secret".to_string()),
        ("discovery", discovery.to_string()),
        ("redirect_uri", format!("http://127.0.0.1:{port}/callback")),
        ("scope", "\"openid profile email\"".to_string()),
        ("logout_path", "/logout".to_string()),
        (
            "post_logout_redirect_uri",
            format!("http://127.0.0.1:{port}/logged-out"),
        ),
        ("set_userinfo_header", "true".to_string()),
        // Plain http on loopback: Secure cookies would never come back.
        (
            "session",
            format!("{{ secret: \"{SECRET}\", cookie_secure: false }}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in overrides {
        attrs.retain(|(key, _)| key != k);
        if *v != "-" {
            attrs.push((k.to_string(), v.to_string()));
        }
    }
    attrs
        .iter()
        .map(|(k, v)| format!("        {k}: {v}\n"))
        .collect()
}

fn gateway_yaml(up: &Upstream, attrs: &str) -> String {
    format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\n\
         routes:\n  - id: web\n    uri: /*\n    upstream_id: app\n    plugins:\n      openid-connect:\n{attrs}",
        up.node()
    )
}

/// One gateway (two shards) in front of one echo upstream, with the real IdP, and a browser.
struct Env {
    idp: Idp,
    up: Upstream,
    gw: Gateway,
    base: String,
    redirect_uri: String,
    browser: CookieJar,
}

/// Starts the IdP (with `idp_env` added to the redirect and post-logout URIs of the gateway's
/// port), the upstream and the gateway (`overrides` as in [`oidc_attrs`], `{issuer}` replaced).
fn start(idp_env: &[(&str, &str)], overrides: &[(&str, &str)]) -> Env {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let redirect_uri = format!("{base}/callback");
    let post_logout = format!("{base}/logged-out");
    let mut env: Vec<(&str, &str)> = vec![
        ("IDP_REDIRECT_URIS", &redirect_uri),
        ("IDP_POST_LOGOUT_URIS", &post_logout),
    ];
    env.extend(idp_env.iter().map(|(k, v)| (*k, *v)));
    let idp = Idp::start(&env);
    // `{issuer}` in an override is the IdP's issuer URL (known only once it listens).
    let overrides: Vec<(&str, String)> = overrides
        .iter()
        .map(|(k, v)| (*k, v.replace("{issuer}", &idp.issuer)))
        .collect();
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let up = Upstream::echo();
    let gw = start_gateway(port, &up, &oidc_attrs(&idp.discovery(), port, &overrides));
    Env {
        idp,
        up,
        gw,
        base,
        redirect_uri,
        browser: CookieJar::default(),
    }
}

fn start_gateway(port: u16, up: &Upstream, attrs: &str) -> Gateway {
    let gw = Gateway::start_with_port(port, &gateway_yaml(up, attrs), &["--shards", "2"]);
    gw.wait_providers_ready(Duration::from_secs(20));
    gw
}

impl Env {
    fn url(&self, target: &str) -> String {
        format!("{}{target}", self.base)
    }

    /// A browser navigation to `target` with the jar's cookies.
    fn browse(&mut self, target: &str) -> Response {
        let url = self.url(target);
        self.browser.get(&url, &[HTML])
    }

    /// Navigates to `target` without a session: must be a 302 to the IdP's authorization
    /// endpoint; returns the authorization URL.
    fn begin_login(&mut self, target: &str) -> String {
        let r = self.browse(target);
        assert_eq!(r.status, 302, "{}\n{}", r.text(), self.gw.log());
        let location = r.header("location").unwrap().to_string();
        assert!(
            location.starts_with(&format!("{}/auth?", self.idp.issuer)),
            "{location}"
        );
        location
    }

    /// A full login that started at `target`: returns the callback URL the IdP sent back.
    fn login_at_idp(&mut self, target: &str) -> String {
        let authorize = self.begin_login(target);
        idp_login(&mut self.browser, &authorize, &self.redirect_uri, "alice")
    }

    /// A full login through the callback, which must redirect back to `target`.
    fn login(&mut self, target: &str) {
        let callback = self.login_at_idp(target);
        let r = self.browser.get(&callback, &[HTML]);
        assert_eq!(r.status, 302, "callback: {}\n{}", r.text(), self.gw.log());
        assert_eq!(r.header("location"), Some(target));
        assert!(
            self.browser.value("session").is_some(),
            "no session cookie: {:?}",
            r.headers
        );
    }

    /// The `Cookie` header value carrying only our session chunks.
    fn session_cookie(&self) -> String {
        self.browser
            .cookies
            .iter()
            .filter(|c| c.name.starts_with("session") && !c.name.contains("_login_"))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn seen(&self) -> Vec<Seen> {
        self.up.requests()
    }

    fn last_seen(&self) -> Seen {
        self.seen().pop().expect("the upstream saw a request")
    }
}

fn b64_json(v: &str) -> Value {
    serde_json::from_slice(&STANDARD.decode(v).unwrap()).unwrap()
}

fn jwt_payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// Cookie names in a `Cookie` header value.
fn cookie_names(header: &str) -> Vec<String> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('=').map(|(n, _)| n.to_string()))
        .collect()
}

/// What every authenticated request must deliver to the upstream: the identity headers of
/// `sub`, and none of our cookies.
fn assert_identity(seen: &Seen, sub: &str) {
    let at = seen.header("x-access-token").expect("X-Access-Token");
    assert!(!at.is_empty());
    let id = b64_json(seen.header("x-id-token").expect("X-ID-Token"));
    assert_eq!(id["sub"], sub, "{id}");
    let user = b64_json(seen.header("x-userinfo").expect("X-Userinfo"));
    assert_eq!(user["sub"], sub, "{user}");
    let cookies = seen.header("cookie").unwrap_or("");
    for name in cookie_names(cookies) {
        assert!(
            !name.starts_with("session"),
            "our cookie {name} reached the upstream: {cookies}"
        );
    }
}

fn assert_login_page(r: &Response, causes: &[&str]) {
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    let body = r.text();
    assert!(body.contains("Likely causes"), "{body}");
    for cause in causes {
        assert!(
            body.contains(cause),
            "page does not mention {cause:?}: {body}"
        );
    }
}

fn set_cookies<'a>(r: &'a Response, prefix: &str) -> Vec<&'a str> {
    r.headers_all("set-cookie")
        .into_iter()
        .filter(|c| c.starts_with(prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Login

#[test]
fn full_login_with_a_confidential_client_reaches_the_upstream_with_the_identity() {
    let mut e = start(&[], &[]);
    e.browser.set("theme", "dark");
    let r = e.browse("/private?x=1");
    assert_eq!(r.status, 302);
    let authorize = r.header("location").unwrap().to_string();
    assert!(
        authorize.starts_with(&format!("{}/auth?", e.idp.issuer)),
        "{authorize}"
    );
    assert_eq!(
        query_param(&authorize, "client_id").as_deref(),
        Some("gateway")
    );
    assert_eq!(
        query_param(&authorize, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&authorize, "redirect_uri"),
        Some(e.redirect_uri.clone())
    );
    assert_eq!(
        query_param(&authorize, "scope").as_deref(),
        Some("openid profile email")
    );
    assert!(r.header("cache-control").unwrap().contains("no-store"));
    let state = query_param(&authorize, "state").unwrap();
    let login_cookie = format!("session_login_{}", &state[..8]);
    assert_eq!(
        set_cookies(&r, &format!("{login_cookie}=")).len(),
        1,
        "{:?}",
        r.headers
    );
    assert!(
        e.seen().is_empty(),
        "the upstream saw a request without a session"
    );

    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, "alice");
    assert_eq!(query_param(&callback, "state"), Some(state));
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    assert_eq!(r.header("location"), Some("/private?x=1"));
    assert!(!set_cookies(&r, "session=").is_empty());
    assert!(
        e.browser.value(&login_cookie).is_none(),
        "login cookie not cleared: {:?}",
        r.headers
    );
    assert!(e.seen().is_empty());

    // The session is reused: several requests, no IdP call at all.
    e.idp.reset_stats();
    for i in 0..3 {
        let r = e.browse("/private?x=1");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let seen = e.last_seen();
        assert_eq!(seen.target, "/private?x=1");
        assert_identity(&seen, "alice");
        let user = b64_json(seen.header("x-userinfo").unwrap());
        assert_eq!(user["email"], "alice@example.test");
        // Other cookies pass: ours and the IdP's (the jar is per host, as a browser's).
        let names = cookie_names(seen.header("cookie").unwrap());
        assert!(names.contains(&"theme".to_string()), "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with('_')),
            "the IdP's cookies were dropped: {names:?}"
        );
    }
    assert_eq!(e.seen().len(), 3);
    assert_eq!(e.idp.stats()["total"], 0, "{}", e.idp.stats());
}

fn pkce_login(client: &[(&str, &str)]) {
    let mut e = start(&[], client);
    let authorize = e.begin_login("/");
    let challenge = query_param(&authorize, "code_challenge").expect("code_challenge");
    assert_eq!(
        challenge.len(),
        43,
        "S256 of a 32-byte verifier, base64url: {challenge}"
    );
    assert_eq!(
        query_param(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, "alice");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    let r = e.browse("/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&e.last_seen(), "alice");
}

#[test]
fn pkce_login_with_the_confidential_client() {
    pkce_login(&[("use_pkce", "true")]);
}

#[test]
fn pkce_login_with_the_public_client_without_secret() {
    pkce_login(&[
        ("client_id", "spa"),
        ("client_secret", "-"),
        ("use_pkce", "true"),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Pushed Authorization Requests (RFC 9126)

/// The names of an URL's query parameters, in order.
fn query_names(url: &str) -> Vec<String> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn par_login_pushes_the_request_and_redirects_with_only_client_id_and_request_uri() {
    // `gateway-par` must push its authorization requests: the IdP refuses a plain one, so a login
    // that completes can only have gone through PAR.
    let mut e = start(
        &[],
        &[
            ("client_id", "gateway-par"),
            ("client_secret", "gateway-par-secret"),
            ("use_pkce", "true"),
            ("par", "{ enabled: true }"),
        ],
    );
    let plain = format!(
        "{}/auth?client_id=gateway-par&response_type=code&scope=openid&state=abcdefgh12345678&redirect_uri={}",
        e.idp.issuer,
        support::urlenc(&e.redirect_uri)
    );
    let refused = CookieJar::default().get(&plain, &[]);
    let location = refused.header("location").unwrap_or_default();
    assert!(
        location.starts_with(&e.redirect_uri)
            && query_param(location, "error").as_deref() == Some("invalid_request")
            && location.contains("Pushed+Authorization+Request+must+be+used"),
        "{} {location}",
        refused.status
    );

    e.idp.reset_stats();
    let authorize = e.begin_login("/private?x=1");
    assert_eq!(
        query_names(&authorize),
        ["client_id", "request_uri"],
        "{authorize}"
    );
    assert_eq!(
        query_param(&authorize, "client_id").as_deref(),
        Some("gateway-par")
    );
    assert!(
        query_param(&authorize, "request_uri")
            .is_some_and(|u| u.starts_with("urn:ietf:params:oauth:request_uri:")),
        "{authorize}"
    );
    assert_eq!(e.idp.path_count("/request"), 1, "{}", e.idp.stats());
    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, "alice");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    assert_eq!(r.header("location"), Some("/private?x=1"));
    let r = e.browse("/private");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&e.last_seen(), "alice");
    e.gw.assert_no_panic();
}

#[test]
fn par_with_an_explicit_endpoint_for_a_public_client() {
    // The public client authenticates at the PAR endpoint by client_id alone, at `par.endpoint`.
    let mut e = start(
        &[],
        &[
            ("client_id", "spa"),
            ("client_secret", "-"),
            ("use_pkce", "true"),
            ("par", "{ enabled: true, endpoint: \"{issuer}/request\" }"),
        ],
    );
    let authorize = e.begin_login("/");
    assert_eq!(
        query_names(&authorize),
        ["client_id", "request_uri"],
        "{authorize}"
    );
    assert_eq!(e.idp.path_count("/request"), 1);
    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, "alice");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    let r = e.browse("/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&e.last_seen(), "alice");
}

#[test]
fn a_push_the_idp_refuses_is_a_502_page_naming_its_error() {
    // `gateway` has no registered keys: the IdP refuses a private_key_jwt assertion. The browser
    // gets a page naming the IdP's error (a 502: the gateway's call to the IdP failed), never a
    // 500, and nothing reaches the upstream.
    let key = std::fs::read_to_string(support::repo_root().join("oidc/testdata/rsa1.pem")).unwrap();
    let key = serde_json::to_string(&key).unwrap();
    let e = start(
        &[],
        &[
            ("client_rsa_private_key", &key),
            (
                "par",
                "{ enabled: true, endpoint_auth_method: private_key_jwt }",
            ),
        ],
    );
    let r = CookieJar::default().get(&e.url("/"), &[HTML]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("invalid_client"), "{}", r.text());
    assert!(r.header("location").is_none());
    assert!(e.gw.wait_log("login flow failed", Duration::from_secs(5)));
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn nonce_login_works_and_a_code_with_a_foreign_nonce_is_refused() {
    // Without PKCE, the nonce is what binds a code to the browser's login: a code from login A
    // presented with login B's state (code injection) carries A's nonce.
    let mut e = start(&[], &[("use_nonce", "true")]);
    let authorize_a = e.begin_login("/a");
    let authorize_b = e.begin_login("/b");
    let nonce_a = query_param(&authorize_a, "nonce").expect("nonce");
    assert_ne!(Some(nonce_a), query_param(&authorize_b, "nonce"));
    let callback_a = idp_login(&mut e.browser, &authorize_a, &e.redirect_uri, "alice");
    let state_b = query_param(&authorize_b, "state").unwrap();
    let code_a = query_param(&callback_a, "code").unwrap();
    let iss = query_param(&callback_a, "iss").unwrap();
    let injected = format!(
        "{}?code={code_a}&state={state_b}&iss={}",
        e.redirect_uri,
        support::urlenc(&iss)
    );
    let r = e.browser.get(&injected, &[HTML]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("nonce"), "{}", r.text());
    assert!(e.browser.value("session").is_none());
    assert!(
        e.gw.wait_log("login flow failed", Duration::from_secs(5)),
        "{}",
        e.gw.log()
    );

    // Login B itself still completes (the IdP session makes it a straight redirect).
    let callback_b = idp_login(&mut e.browser, &authorize_b, &e.redirect_uri, "alice");
    let r = e.browser.get(&callback_b, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    assert_eq!(r.header("location"), Some("/b"));
    assert!(e.seen().is_empty());
    let r = e.browse("/b");
    assert_eq!(r.status, 200);
    assert_identity(&e.last_seen(), "alice");
    e.gw.assert_no_panic();
}

#[test]
fn a_stale_state_restarts_the_login_in_flight_and_a_missing_login_cookie_gets_a_4xx_page() {
    let mut e = start(&[], &[]);
    let callback = e.login_at_idp("/start?at=1");
    let state = query_param(&callback, "state").unwrap();
    let code = query_param(&callback, "code").unwrap();
    e.idp.reset_stats();

    // As APISIX on a state mismatch (a replayed or pruned callback): back to where the login
    // still in flight started, counted against the restart budget.
    // Another state altogether: no login cookie answers to it.
    let other = "Z".repeat(state.len());
    let r = e.browser.get(&callback.replace(&state, &other), &[HTML]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/start?at=1"));
    assert_eq!(
        set_cookies(&r, "session_restarts=").len(),
        1,
        "{:?}",
        r.headers
    );
    // Same cookie name (first 8 characters), different state: the sealed state does not match.
    let mut near = state.clone();
    near.replace_range(8.., &"Z".repeat(state.len() - 8));
    let r = e.browser.get(&callback.replace(&state, &near), &[HTML]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/start?at=1"));
    assert!(e.gw.wait_log(
        "state mismatch (replayed or pruned callback), restarting the authentication flow",
        Duration::from_secs(5)
    ));
    // An error page when nothing is in flight to go back to.
    let mut lone = CookieJar::default();
    let r = lone.get(&callback.replace(&state, &other), &[HTML]);
    assert_login_page(&r, &["SameSite", "secret", "redirect_uri"]);
    assert!(set_cookies(&r, "session_restarts=").is_empty());
    // The login cookie never came back (SameSite, another node's secret...).
    let (addr, target) = split_url(&callback);
    let r = get(addr, &target, &[HTML]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_login_page(
        &r,
        &[
            "SameSite",
            "secret",
            "redirect_uri equals the protected route",
        ],
    );
    assert!(e.gw.wait_log("login flow failed", Duration::from_secs(5)));
    // None of that spent the code.
    assert_eq!(e.idp.path_count("/token"), 0);
    assert!(e.seen().is_empty());

    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/start?at=1"));
    // The completed login resets the restart budget.
    assert!(
        r.headers_all("set-cookie")
            .iter()
            .any(|c| c.starts_with("session_restarts=;")),
        "{:?}",
        r.headers
    );
    assert!(e.browser.value("session_restarts").is_none());
    assert_eq!(e.idp.path_count("/token"), 1);
    let r = e.browse("/");
    assert_eq!(r.status, 200);
    assert_identity(&e.last_seen(), "alice");
    assert!(!code.is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn required_scopes_on_a_session_route_are_read_from_the_jwt_access_token() {
    // With a `resource`, the IdP issues a JWT access token whose `scope` claim holds the granted
    // resource scopes (APISIX's required-scopes tests).
    let overrides = |required: &'static str| {
        [
            ("scope", "\"openid read\""),
            (
                "authorization_params",
                "{ resource: \"urn:shardgate:api\" }",
            ),
            ("set_userinfo_header", "false"),
            ("required_scopes", required),
        ]
    };
    let mut e = start(&[], &overrides("[read]"));
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e.gw.log());
    let at = e.last_seen().header("x-access-token").unwrap().to_string();
    assert_eq!(jwt_payload(&at)["scope"], "read");

    let mut e = start(&[], &overrides("[read, admin]"));
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("required scopes admin not present"),
        "{}",
        r.text()
    );
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn a_session_failing_claim_schema_gets_401_with_the_bearer_challenge() {
    let schema = "{ type: object, required: [id_token], properties: { id_token: { type: object, \
                  required: [department] } } }";
    let mut e = start(&[], &[("claim_schema", schema)]);
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 401, "{}", r.text());
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(
        www.starts_with(
            "Bearer realm=\"apisix\", error=\"invalid_token\", error_description=\"claims do not match claim_schema: "
        ),
        "{www}"
    );
    assert!(www.contains("department"), "{www}");
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn a_login_with_an_es512_id_token_from_the_real_idp() {
    // The IdP signs this client's ID tokens ES512 with a P-521 key (RustCrypto's p521 verifies).
    let mut e = start(
        &[("IDP_ES512", "1")],
        &[
            ("client_id", "gateway-es512"),
            ("client_secret", "gateway-es512-secret"),
            ("set_raw_id_token_header", "true"),
        ],
    );
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e.gw.log());
    let seen = e.last_seen();
    assert_identity(&seen, "alice");
    let raw = seen.header("x-raw-id-token").expect("X-Raw-ID-Token");
    let head: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(head["alg"], "ES512", "{head}");
    e.gw.assert_no_panic();
}

/// The gateway as `gateway-pkjwt`: no client secret, ES512 client assertions signed with the
/// P-521 key in oidc/testdata/ec521.pem.
fn es512_private_key_jwt_overrides(key: &str) -> [(&'static str, &str); 5] {
    [
        ("client_id", "gateway-pkjwt"),
        ("client_secret", "-"),
        ("token_endpoint_auth_method", "private_key_jwt"),
        ("client_rsa_private_key", key),
        ("client_jwt_assertion_alg", "ES512"),
    ]
}

#[test]
fn a_login_authenticating_to_the_token_endpoint_with_es512_private_key_jwt() {
    // The IdP holds the public half of ec521.pem for `gateway-pkjwt` and accepts only ES512
    // assertions from it: the code exchange succeeds only if the gateway signed with P-521.
    let root = support::repo_root();
    let key = std::fs::read_to_string(root.join("oidc/testdata/ec521.pem")).unwrap();
    let key = serde_json::to_string(&key).unwrap();
    let jwks = root.join("oidc/testdata/jwks_p521.json");
    let mut e = start(
        &[
            ("IDP_ES512", "1"),
            ("IDP_CLIENT_JWKS", jwks.to_str().unwrap()),
        ],
        &es512_private_key_jwt_overrides(&key),
    );
    e.login("/");
    assert_eq!(e.idp.path_count("/token"), 1);
    let r = e.browse("/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e.gw.log());
    assert_identity(&e.last_seen(), "alice");
    e.gw.assert_no_panic();
}

#[test]
fn an_es512_client_assertion_the_idp_has_no_key_for_is_a_502_page_naming_invalid_client() {
    // Without IDP_CLIENT_JWKS the IdP registered another P-521 key for `gateway-pkjwt`: the
    // gateway's (valid, ES512) assertion does not verify there. The browser gets a page naming
    // the IdP's error, never a 500, and nothing reaches the upstream.
    let key =
        std::fs::read_to_string(support::repo_root().join("oidc/testdata/ec521.pem")).unwrap();
    let key = serde_json::to_string(&key).unwrap();
    let mut e = start(
        &[("IDP_ES512", "1")],
        &es512_private_key_jwt_overrides(&key),
    );
    let callback = e.login_at_idp("/");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 502, "{}\n{}", r.text(), e.gw.log());
    assert!(r.text().contains("invalid_client"), "{}", r.text());
    assert!(
        r.text()
            .contains("another public key registered for this client"),
        "{}",
        r.text()
    );
    assert!(e.browser.value("session").is_none());
    assert_eq!(e.idp.path_count("/token"), 1);
    assert!(e.gw.wait_log("login flow failed", Duration::from_secs(5)));
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

/// The failing callback of a login in flight (`state` from its authorization URL).
fn failing_callback(e: &Env, state: &str, error: &str) -> String {
    format!(
        "{}?error={error}&error_description=authentication_expired&state={state}",
        e.redirect_uri
    )
}

#[test]
fn a_temporarily_unavailable_idp_restarts_the_login_three_times_then_shows_the_error() {
    let mut e = start(&[], &[]);
    let authorize = e.begin_login("/page?x=1");
    let state = query_param(&authorize, "state").unwrap();
    let failing = failing_callback(&e, &state, "temporarily_unavailable");

    // APISIX TEST 6: the browser keeps following the restart into the same failure.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = e.browser.get(&failing, &[HTML]);
        if r.status == 302 {
            assert_eq!(r.header("location"), Some("/page?x=1"));
        } else {
            assert!(r.text().contains("temporarily_unavailable"), "{}", r.text());
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [302, 302, 302, 503, 503]);
    assert!(e.gw.wait_log(
        "temporarily unavailable identity provider, restarting the authentication flow",
        Duration::from_secs(5)
    ));
    assert!(e.gw.wait_log(
        "giving up after 3 restarts of the authentication flow",
        Duration::from_secs(5)
    ));

    // APISIX TEST 7: a completed login resets the budget, so a later failure of the first login
    // (still in flight) restarts again.
    e.login("/");
    assert!(e.browser.value("session_restarts").is_none());
    let r = e.browser.get(&failing, &[HTML]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/page?x=1"));
    // None of the failing callbacks reached the upstream.
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn only_a_get_naming_a_login_in_flight_restarts_on_temporarily_unavailable() {
    let mut e = start(&[], &[]);
    let authorize = e.begin_login("/");
    let state = query_param(&authorize, "state").unwrap();

    // APISIX TEST 3: other IdP errors are a deliberate outcome.
    let r = e
        .browser
        .get(&failing_callback(&e, &state, "access_denied"), &[HTML]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("access_denied"), "{}", r.text());
    // TEST 4: not a GET.
    let failing = failing_callback(&e, &state, "temporarily_unavailable");
    let r = e.browser.fetch("POST", &failing, &[HTML], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    // TEST 5: no cookie at all.
    let (addr, target) = split_url(&failing);
    assert_eq!(get(addr, &target, &[HTML]).status, 503);
    // TEST 8: a state this browser never had, or none: nothing restarts, no budget spent.
    let r = e.browser.get(
        &failing_callback(&e, &"Z".repeat(state.len()), "temporarily_unavailable"),
        &[HTML],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let r = e.browser.get(
        &format!("{}?error=temporarily_unavailable", e.redirect_uri),
        &[HTML],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(e.browser.value("session_restarts").is_none());
    // The real login still has its whole budget.
    for _ in 0..3 {
        let r = e.browser.get(&failing, &[HTML]);
        assert_eq!(r.status, 302, "{}", r.text());
        assert_eq!(r.header("location"), Some("/"));
    }
    assert_eq!(e.browser.get(&failing, &[HTML]).status, 503);
    // A counter the gateway did not seal buys nothing.
    e.browser.set("session_restarts", "AAAA");
    assert_eq!(e.browser.get(&failing, &[HTML]).status, 503);
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn a_replayed_callback_is_a_4xx_never_a_500() {
    let mut e = start(&[], &[]);
    let authorize = e.begin_login("/");
    let state = query_param(&authorize, "state").unwrap();
    let login_name = format!("session_login_{}", &state[..8]);
    let login_value = e.browser.value(&login_name).unwrap();
    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, "alice");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302);
    let first_session = e.browser.value("session").unwrap();

    // The same URL again: the login cookie was consumed.
    let r = e.browser.get(&callback, &[HTML]);
    assert_login_page(&r, &["SameSite"]);
    // A replay that also brings the old login cookie back: the IdP refuses the used code.
    e.idp.reset_stats();
    let (addr, target) = split_url(&callback);
    let cookie = format!("{login_name}={login_value}");
    let r = get(addr, &target, &[HTML, ("Cookie", &cookie)]);
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    assert!(r.text().contains("invalid_grant"), "{}", r.text());
    assert_eq!(e.idp.path_count("/token"), 1);
    assert!(
        set_cookies(&r, "session=").is_empty(),
        "a replay must not create a session"
    );
    assert_eq!(e.browser.value("session"), Some(first_session));
    assert!(e.seen().is_empty());
    e.gw.assert_no_panic();
}

#[test]
fn api_shaped_requests_without_a_session_get_401_not_a_redirect() {
    let e = start(&[], &[]);
    for headers in [
        vec![("Accept", "application/json")],
        vec![("X-Requested-With", "XMLHttpRequest"), ("Accept", "*/*")],
    ] {
        let r = get(e.gw.addr(), "/api/data", &headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert!(r.header("location").is_none());
        assert!(r.header("www-authenticate").is_some());
        assert!(
            set_cookies(&r, "session_login_").is_empty(),
            "no login starts for an API call"
        );
    }
    let r = get(e.gw.addr(), "/api/data", &[HTML]);
    assert_eq!(r.status, 302);
    assert!(e.seen().is_empty());
}

#[test]
fn three_tabs_logging_in_at_once_all_complete_in_reverse_order() {
    let mut e = start(&[], &[]);
    let tabs = ["/tab1", "/tab2", "/tab3"];
    let authorize: Vec<String> = tabs.iter().map(|t| e.begin_login(t)).collect();
    let logins = e
        .browser
        .names()
        .into_iter()
        .filter(|n| n.starts_with("session_login_"))
        .count();
    assert_eq!(logins, 3, "{:?}", e.browser.names());
    let callbacks: Vec<String> = authorize
        .iter()
        .map(|a| idp_login(&mut e.browser, a, &e.redirect_uri, "alice"))
        .collect();
    for (tab, callback) in tabs.iter().zip(&callbacks).rev() {
        let r = e.browser.get(callback, &[HTML]);
        assert_eq!(r.status, 302, "{tab}: {}\n{}", r.text(), e.gw.log());
        assert_eq!(r.header("location"), Some(*tab));
        let r = e.browse(tab);
        assert_eq!(r.status, 200, "{tab}");
        assert_eq!(e.last_seen().target, *tab);
        assert_identity(&e.last_seen(), "alice");
    }
    assert!(
        e.browser
            .names()
            .iter()
            .all(|n| !n.starts_with("session_login_")),
        "{:?}",
        e.browser.names()
    );
}

// ---------------------------------------------------------------------------------------------
// Refresh

#[test]
fn an_expired_access_token_is_refreshed_once_under_20_concurrent_requests() {
    // The `gateway` client's access tokens are opaque: IDP_OPAQUE_TTL is their lifetime.
    let mut e = start(&[("IDP_OPAQUE_TTL", "2")], &[]);
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 200);
    let old_at = e.last_seen().header("x-access-token").unwrap().to_string();
    thread::sleep(Duration::from_millis(3200));
    e.idp.reset_stats();
    let before = e.seen().len();

    let cookie = Arc::new(e.session_cookie());
    let barrier = Arc::new(Barrier::new(20));
    let addr = e.gw.addr();
    let workers: Vec<_> = (0..20)
        .map(|i| {
            let (cookie, barrier) = (cookie.clone(), barrier.clone());
            thread::spawn(move || {
                // Twenty connections: SO_REUSEPORT spreads them over both shards.
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                barrier.wait();
                let req = format!(
                    "GET /c{i} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
                );
                s.write_all(req.as_bytes()).unwrap();
                read_response(&mut BufReader::new(s), false).unwrap()
            })
        })
        .collect();
    let answers: Vec<Response> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i}: {}\n{}", r.text(), e.gw.log());
        assert!(
            !set_cookies(r, "session=").is_empty(),
            "request {i} got no refreshed cookie"
        );
    }
    assert_eq!(e.idp.path_count("/token"), 1, "{}", e.idp.stats());
    let seen = &e.seen()[before..];
    assert_eq!(seen.len(), 20);
    let new_at = seen[0].header("x-access-token").unwrap();
    assert_ne!(new_at, old_at);
    for s in seen {
        assert_eq!(
            s.header("x-access-token"),
            Some(new_at),
            "every request got the one refreshed token"
        );
        assert_identity(s, "alice");
    }
}

#[test]
fn with_rotating_refresh_tokens_the_old_cookie_still_works_within_the_grace_period() {
    let mut e = start(&[("IDP_OPAQUE_TTL", "2"), ("IDP_ROTATE_RT", "1")], &[]);
    e.login("/");
    let old_cookie = e.session_cookie();
    thread::sleep(Duration::from_millis(3200));
    e.idp.reset_stats();

    let r = e.browse("/one");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e.gw.log());
    assert!(!set_cookies(&r, "session=").is_empty());
    assert_ne!(e.session_cookie(), old_cookie);
    assert_eq!(e.idp.path_count("/token"), 1);
    let new_at = e.last_seen().header("x-access-token").unwrap().to_string();

    // Another tab still sends the cookie from before the refresh: its refresh token was rotated
    // away, yet the gateway answers from the refresh it already did instead of logging out.
    let r = get(e.gw.addr(), "/two", &[HTML, ("Cookie", &old_cookie)]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e.gw.log());
    assert_eq!(e.last_seen().target, "/two");
    assert_eq!(
        e.last_seen().header("x-access-token"),
        Some(new_at.as_str())
    );
    assert_eq!(
        e.idp.path_count("/token"),
        1,
        "the rotated refresh token was redeemed twice"
    );
    // Redeeming it twice would have made the IdP revoke the grant; the new token is live.
    let introspected = introspect(&e.idp, &new_at);
    assert_eq!(introspected["active"], true, "{introspected}");

    let r = e.browse("/three");
    assert_eq!(r.status, 200);
    assert_identity(&e.last_seen(), "alice");
}

fn introspect(idp: &Idp, token: &str) -> Value {
    let body = format!("token={}", support::urlenc(token));
    let auth = format!(
        "Basic {}",
        support::base64_encode(b"gateway:gateway-secret")
    );
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

// ---------------------------------------------------------------------------------------------
// Logout

#[test]
fn logout_revokes_tokens_and_redirects_to_end_session_with_id_token_hint() {
    let mut e = start(&[], &[("revoke_tokens_on_logout", "true")]);
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 200);
    let at = e.last_seen().header("x-access-token").unwrap().to_string();
    let upstream_before = e.seen().len();
    e.idp.reset_stats();

    let r = e.browse("/logout");
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/session/end?", e.idp.issuer)),
        "{location}"
    );
    let hint = query_param(&location, "id_token_hint").expect("id_token_hint");
    assert_eq!(jwt_payload(&hint)["sub"], "alice");
    let post_logout = format!("{}/logged-out", e.base);
    assert_eq!(
        query_param(&location, "post_logout_redirect_uri"),
        Some(post_logout.clone())
    );
    let cleared = set_cookies(&r, "session=");
    assert!(
        cleared.iter().any(|c| c.contains("Max-Age=0")),
        "{:?}",
        r.headers
    );
    assert!(e.browser.value("session").is_none());
    assert_eq!(
        e.seen().len(),
        upstream_before,
        "/logout must not reach the upstream"
    );
    // RFC 7009: the refresh token and the access token.
    assert_eq!(
        e.idp.path_count("/token/revocation"),
        2,
        "{}",
        e.idp.stats()
    );
    assert_eq!(introspect(&e.idp, &at)["active"], false);

    // The IdP honours the hint and the registered post-logout URI.
    let done = idp_end_session(&mut e.browser, &location);
    assert!((300..400).contains(&done.status), "{}", done.text());
    assert!(
        done.header("location").unwrap().starts_with(&post_logout),
        "{:?}",
        done.headers
    );
    let r = e.browse("/");
    assert_eq!(r.status, 302, "no session after logout");
    assert_eq!(e.seen().len(), upstream_before);
}

#[test]
fn logout_without_end_session_endpoint_redirects_to_post_logout_uri() {
    // The real IdP always advertises end_session_endpoint; serve its discovery document without
    // it (everything else, keys and endpoints included, stays the real IdP).
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let redirect_uri = format!("{base}/callback");
    let idp = Idp::start(&[("IDP_REDIRECT_URIS", &redirect_uri)]);
    let mut doc = get(idp.addr(), "/.well-known/openid-configuration", &[]).json();
    doc.as_object_mut().unwrap().remove("end_session_endpoint");
    let doc = doc.to_string();
    let discovery_server = Upstream::with_handler(Arc::new(move |_: &Seen, s: &mut TcpStream| {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{doc}",
            doc.len()
        );
        s.write_all(resp.as_bytes()).is_ok()
    }));
    let discovery = format!(
        "http://{}/.well-known/openid-configuration",
        discovery_server.node()
    );
    let up = Upstream::echo();
    let gw = start_gateway(port, &up, &oidc_attrs(&discovery, port, &[]));
    let mut e = Env {
        idp,
        up,
        gw,
        base,
        redirect_uri,
        browser: CookieJar::default(),
    };
    e.login("/");
    assert_eq!(e.browse("/").status, 200);

    // As APISIX (TEST 36): post_logout_redirect_uri stands in for the endpoint and is passed
    // along as the parameter; the ID token is not handed to the application.
    let r = e.browse("/logout");
    assert_eq!(r.status, 302, "{}", r.text());
    let logged_out = format!("{}/logged-out", e.base);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{logged_out}?")),
        "{location}"
    );
    assert_eq!(
        query_param(location, "post_logout_redirect_uri").as_deref(),
        Some(logged_out.as_str())
    );
    assert_eq!(query_param(location, "id_token_hint"), None);
    assert!(e.browser.value("session").is_none());
    assert_eq!(e.browse("/").status, 302);
    assert_eq!(e.seen().len(), 1);
}

#[test]
fn backchannel_logout_from_the_idp_ends_the_gateway_session_on_every_shard() {
    let port = free_port();
    let backchannel = format!("http://127.0.0.1:{port}/logout/backchannel");
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let idp = Idp::start(&[
        ("IDP_REDIRECT_URIS", &redirect_uri),
        ("IDP_BACKCHANNEL_URI", &backchannel),
    ]);
    let up = Upstream::echo();
    let gw = start_gateway(port, &up, &oidc_attrs(&idp.discovery(), port, &[]));
    let base = format!("http://127.0.0.1:{port}");
    let mut e = Env {
        idp,
        up,
        gw,
        base,
        redirect_uri,
        browser: CookieJar::default(),
    };
    e.login("/");
    let r = e.browse("/");
    assert_eq!(r.status, 200);
    let id = b64_json(e.last_seen().header("x-id-token").unwrap());
    assert!(
        id["sid"].is_string(),
        "the ID token carries the IdP session id: {id}"
    );
    let cookie = e.session_cookie();

    // A forged logout token changes nothing.
    let r = request(
        e.gw.addr(),
        "POST",
        "/logout/backchannel",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"logout_token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.AAAA",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        get(e.gw.addr(), "/still", &[HTML, ("Cookie", &cookie)]).status,
        200
    );
    let upstream_before = e.seen().len();

    // The person logs out at the IdP (not through the gateway): the IdP POSTs a logout_token to
    // the gateway before it answers.
    let issuer = e.idp.issuer.clone();
    let done = idp_end_session(&mut e.browser, &format!("{issuer}/session/end"));
    assert!((300..400).contains(&done.status), "{}", done.text());
    assert!(
        e.gw.wait_log("back-channel logout", Duration::from_secs(10)),
        "no back-channel logout arrived:\n{}\n{}",
        e.gw.log(),
        std::fs::read_to_string(&e.idp.log_path).unwrap_or_default()
    );
    // The cookie is intact, but the session is gone on whichever shard a connection lands.
    for i in 0..6 {
        let r = get(
            e.gw.addr(),
            &format!("/after{i}"),
            &[HTML, ("Cookie", &cookie)],
        );
        assert_eq!(
            r.status,
            302,
            "request {i} after back-channel logout: {}",
            r.text()
        );
        let r = get(
            e.gw.addr(),
            "/api",
            &[("Accept", "application/json"), ("Cookie", &cookie)],
        );
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        e.seen().len(),
        upstream_before,
        "a revoked session reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Cookies

#[test]
fn a_session_larger_than_4k_is_chunked_and_reassembled() {
    let mut e = start(
        &[],
        &[(
            "session",
            &format!(
                "{{ secret: \"{SECRET}\", cookie_secure: false, compression_threshold: 1000000 }}"
            ),
        )],
    );
    // A long login name lands in the ID token (raw and claims) and userinfo several times over.
    // Pseudo-random letters, so that nothing would compress it away either.
    let mut x: u32 = 12345;
    let login: String = (0..700)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b'a' + ((x >> 16) % 26) as u8)
        })
        .collect();
    let authorize = e.begin_login("/big");
    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, &login);
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    let chunks = set_cookies(&r, "session");
    let chunks: Vec<&str> = chunks
        .into_iter()
        .filter(|c| !c.starts_with("session_login_"))
        .collect();
    assert!(chunks.len() >= 3, "expected several chunks: {chunks:?}");
    for (i, c) in chunks.iter().enumerate() {
        let pair = c.split(';').next().unwrap();
        let name = pair.split('=').next().unwrap();
        let expected = if i == 0 {
            "session".to_string()
        } else {
            format!("session{}", i + 1)
        };
        assert_eq!(name, expected);
        assert!(
            pair.len() - 1 <= 4096,
            "{name}: {} bytes of name+value",
            pair.len() - 1
        );
    }

    let r = e.browse("/big");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e.gw.log());
    let seen = e.last_seen();
    assert_identity(&seen, &login);
    assert_eq!(
        b64_json(seen.header("x-userinfo").unwrap())["preferred_username"],
        login.as_str()
    );

    // The first chunk gone (say, replaced by another tab), the tail left behind: the next
    // login seals one cookie and expires the tail instead of leaving it in every request.
    let tail = chunks.len();
    // The IdP's own cookies go too, so that it asks who logs in instead of remembering.
    e.browser
        .remove_where(|n| n == "session" || !n.starts_with("session"));
    let callback = e.login_at_idp("/small");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), e.gw.log());
    for i in 2..=tail {
        let name = format!("session{i}=");
        let expired = set_cookies(&r, &name);
        assert_eq!(expired.len(), 1, "{name} not expired: {:?}", r.headers);
        assert!(expired[0].contains("Max-Age=0"), "{}", expired[0]);
    }
    assert_eq!(
        e.session_cookie().matches("session").count(),
        1,
        "{}",
        e.session_cookie()
    );
    assert_eq!(e.browse("/small").status, 200);
    assert_identity(&e.last_seen(), "alice");
}

/// Flips one character in the middle of the `session` cookie value.
fn tamper(cookie: &str) -> String {
    let (name, value) = cookie.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    format!("{name}={}", String::from_utf8(bytes).unwrap())
}

#[test]
fn tampered_truncated_and_foreign_cookies_are_no_session_and_fallback_secrets_still_open() {
    let mut e = start(&[], &[]);
    e.login("/");
    let cookie = e.session_cookie();
    assert!(!cookie.contains(';'), "one chunk expected: {cookie}");
    let (_, value) = cookie.split_once('=').unwrap();
    let upstream_before = e.seen().len();
    for (what, bad) in [
        ("tampered", tamper(&cookie)),
        (
            "truncated",
            format!("session={}", &value[..value.len() - 10]),
        ),
        ("garbage", "session=not-a-sealed-cookie".to_string()),
    ] {
        let r = get(e.gw.addr(), "/", &[HTML, ("Cookie", &bad)]);
        assert_eq!(r.status, 302, "{what}: {}", r.text());
        assert!(
            !set_cookies(&r, "session=").is_empty(),
            "{what}: the broken cookie is cleared"
        );
        let r = get(
            e.gw.addr(),
            "/",
            &[("Accept", "application/json"), ("Cookie", &bad)],
        );
        assert_eq!(r.status, 401, "{what}: {}", r.text());
    }
    assert_eq!(e.seen().len(), upstream_before);
    assert_eq!(
        get(e.gw.addr(), "/", &[HTML, ("Cookie", &cookie)]).status,
        200
    );
    e.gw.assert_no_panic();

    // The same cookie at a gateway with another secret: foreign, no session.
    let other = |fallbacks: &str| {
        let port = free_port();
        let session = format!("{{ secret: \"{OTHER_SECRET}\", cookie_secure: false{fallbacks} }}");
        start_gateway(
            port,
            &e.up,
            &oidc_attrs(&e.idp.discovery(), port, &[("session", &session)]),
        )
    };
    let rotated = other("");
    let r = get(rotated.addr(), "/", &[HTML, ("Cookie", &cookie)]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(e.seen().len(), upstream_before + 1);
    drop(rotated);

    // Rotated with the old secret kept in secret_fallbacks: the old cookie still opens.
    let rotated = other(&format!(", secret_fallbacks: [\"{SECRET}\"]"));
    let r = get(rotated.addr(), "/fallback", &[HTML, ("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), rotated.log());
    let seen = e.last_seen();
    assert_eq!(seen.target, "/fallback");
    assert_identity(&seen, "alice");
}

#[test]
fn an_active_session_outlives_a_short_idling_timeout_and_an_idle_one_ends() {
    let session = format!("{{ secret: \"{SECRET}\", cookie_secure: false, idling_timeout: 4 }}");
    let mut e = start(&[], &[("session", &session)]);
    e.login("/");
    // Activity every second keeps pushing the idle deadline out, well past 4 s in all.
    for i in 0..7 {
        thread::sleep(Duration::from_secs(1));
        let r = e.browse("/active");
        assert_eq!(
            r.status,
            200,
            "request {i} of an active session: {}",
            r.text()
        );
    }
    assert_identity(&e.last_seen(), "alice");
    let seen = e.seen().len();
    thread::sleep(Duration::from_millis(5500));
    let r = e.browse("/idle");
    assert_eq!(r.status, 302, "an idle session must end");
    assert_eq!(e.seen().len(), seen);
}

/// `GET target` `n` times on one keep-alive connection (so on one shard) with only `cookie`.
fn get_on_one_connection(e: &Env, target: &str, cookie: &str, n: usize) -> Vec<Response> {
    let mut s = TcpStream::connect(e.gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    (0..n)
        .map(|_| {
            let req = format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/html\r\nCookie: {cookie}\r\n\r\n",
                e.gw.addr()
            );
            s.write_all(req.as_bytes()).unwrap();
            read_response(&mut r, false).unwrap()
        })
        .collect()
}

#[test]
fn a_cookie_due_for_reissue_is_resealed_once_and_keeps_its_own_idle_deadline() {
    // idling_timeout 6 s: re-issue is due once the cookie's activity is 1 s old (a quarter).
    let session = format!("{{ secret: \"{SECRET}\", cookie_secure: false, idling_timeout: 6 }}");
    let mut e = start(&[], &[("session", &session)]);
    e.login("/");
    let old = e.session_cookie();
    thread::sleep(Duration::from_millis(1300));
    // A client that never stores cookies (or tabs racing the first Set-Cookie) keeps sending
    // the old one: every answer carries the same re-sealed cookie instead of a new seal each.
    let rs = get_on_one_connection(&e, "/stale", &old, 3);
    let first: Vec<&str> = set_cookies(&rs[0], "session=");
    assert_eq!(rs[0].status, 200, "{}", rs[0].text());
    assert_eq!(first.len(), 1, "{:?}", rs[0].headers);
    for r in &rs[1..] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(set_cookies(r, "session="), first, "re-sealed again");
    }
    assert_identity(&e.last_seen(), "alice");
    // Once the remembered re-seal is itself due, the old cookie gets a newer one.
    thread::sleep(Duration::from_millis(1300));
    let later = get_on_one_connection(&e, "/stale", &old, 1).remove(0);
    assert_eq!(later.status, 200, "{}", later.text());
    let newer = set_cookies(&later, "session=");
    assert_eq!(newer.len(), 1);
    assert_ne!(newer, first, "a stale re-seal was handed out again");
    let newer_cookie = newer[0].split(';').next().unwrap().to_string();
    // The old cookie still ends 6 s after its own last activity, however often it was
    // re-sealed; the cookie sealed at ~2.6 s lives on.
    thread::sleep(Duration::from_millis(3900));
    let dead = get_on_one_connection(&e, "/stale", &old, 1).remove(0);
    assert_eq!(
        dead.status, 302,
        "the old cookie outlived its idling_timeout"
    );
    let alive = get_on_one_connection(&e, "/fresh", &newer_cookie, 1).remove(0);
    assert_eq!(alive.status, 200, "{}", alive.text());
    assert_eq!(e.last_seen().target, "/fresh");
}

#[test]
fn after_login_the_browser_returns_only_to_a_same_origin_url() {
    let mut e = start(&[], &[]);
    let authorize = e.begin_login("//evil.example/steal");
    let callback = idp_login(&mut e.browser, &authorize, &e.redirect_uri, "alice");
    let r = e.browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some("/"), "open redirect after login");
    assert_eq!(e.browse("/").status, 200);
}

#[test]
fn a_refresh_the_idp_refuses_ends_the_session() {
    let mut e = start(
        &[("IDP_OPAQUE_TTL", "2")],
        &[("set_refresh_token_header", "true")],
    );
    e.login("/");
    assert_eq!(e.browse("/").status, 200);
    let rt = e
        .last_seen()
        .header("x-refresh-token")
        .expect("X-Refresh-Token")
        .to_string();
    // Revoking the refresh token ends the grant at the IdP (the user logged out elsewhere, say).
    let body = format!(
        "token={}&token_type_hint=refresh_token",
        support::urlenc(&rt)
    );
    let auth = format!(
        "Basic {}",
        support::base64_encode(b"gateway:gateway-secret")
    );
    let r = request(
        e.idp.addr(),
        "POST",
        "/token/revocation",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &auth),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    thread::sleep(Duration::from_millis(3200));
    let seen = e.seen().len();
    let cookie = e.session_cookie();

    let r = get(
        e.gw.addr(),
        "/api",
        &[("Accept", "application/json"), ("Cookie", &cookie)],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = e.browse("/page");
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.header("location")
            .unwrap()
            .starts_with(&format!("{}/auth?", e.idp.issuer))
    );
    assert!(
        e.browser.value("session").is_none(),
        "the dead session's cookie is cleared"
    );
    assert_eq!(
        e.seen().len(),
        seen,
        "an expired, unrefreshable session reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions bound to their provider and client

/// Two routes on one gateway and one IdP, logging in as the `gateway` and `spa` clients, sharing
/// `session.secret` and the cookie name: route A's session cookie must not authenticate on B.
#[test]
fn a_session_sealed_for_one_client_does_not_authenticate_on_a_route_with_another() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let cb_a = format!("{base}/a/callback");
    let cb_b = format!("{base}/b/callback");
    let idp = Idp::start(&[("IDP_REDIRECT_URIS", &format!("{cb_a},{cb_b}"))]);
    let up = Upstream::echo();
    let attrs_a = oidc_attrs(
        &idp.discovery(),
        port,
        &[("redirect_uri", &cb_a), ("logout_path", "/a/logout")],
    );
    let attrs_b = oidc_attrs(
        &idp.discovery(),
        port,
        &[
            ("client_id", "spa"),
            ("client_secret", "-"),
            ("use_pkce", "true"),
            ("redirect_uri", &cb_b),
            ("logout_path", "/b/logout"),
        ],
    );
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\n\
         routes:\n  - id: a\n    uri: /a/*\n    upstream_id: app\n    plugins:\n      openid-connect:\n{attrs_a}\
         \x20 - id: b\n    uri: /b/*\n    upstream_id: app\n    plugins:\n      openid-connect:\n{attrs_b}",
        up.node()
    );
    let gw = Gateway::start_with_port(port, &yaml, &["--shards", "2"]);
    gw.wait_providers_ready(Duration::from_secs(20));

    let mut browser = CookieJar::default();
    let r = browser.get(&format!("{base}/a/x"), &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), gw.log());
    let authorize = r.header("location").unwrap().to_string();
    assert_eq!(
        query_param(&authorize, "client_id").as_deref(),
        Some("gateway")
    );
    let callback = idp_login(&mut browser, &authorize, &cb_a, "alice");
    let r = browser.get(&callback, &[HTML]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), gw.log());
    let cookie = format!("session={}", browser.value("session").expect("session"));
    let r = get(gw.addr(), "/a/x", &[HTML, ("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&up.requests().pop().unwrap(), "alice");
    let seen = up.requests().len();

    // The same cookie on route B: no session, whichever way B answers that.
    let r = get(gw.addr(), "/b/x", &[HTML, ("Cookie", &cookie)]);
    assert_eq!(r.status, 302, "{}\n{}", r.text(), gw.log());
    let location = r.header("location").unwrap();
    assert_eq!(query_param(location, "client_id").as_deref(), Some("spa"));
    let r = get(
        gw.addr(),
        "/b/x",
        &[("Accept", "application/json"), ("Cookie", &cookie)],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(up.requests().len(), seen, "route B let the session through");
    assert!(
        gw.wait_log("session cookie refused", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    // Still good where it was issued.
    assert_eq!(
        get(gw.addr(), "/a/y", &[HTML, ("Cookie", &cookie)]).status,
        200
    );
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------------------------
// Logout from another site

#[test]
fn a_cross_site_logout_is_refused_and_a_same_site_one_logs_out() {
    let mut e = start(&[], &[]);
    e.login("/");
    let cookie = e.session_cookie();
    let foreign_origins = [
        "http://evil.example",
        "null",
        &format!("http://127.0.0.1:{}", e.gw.addr().port() + 1),
    ];
    let mut refused: Vec<Vec<(&str, &str)>> = vec![
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors"),
        ],
    ];
    for origin in &foreign_origins {
        refused.push(vec![("Origin", origin)]);
    }
    for headers in &refused {
        let mut all = vec![HTML, ("Cookie", cookie.as_str())];
        all.extend(headers.iter().copied());
        let r = get(e.gw.addr(), "/logout", &all);
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        assert!(r.text().contains("cross_site_logout"), "{}", r.text());
        assert!(
            set_cookies(&r, "session").is_empty(),
            "{headers:?}: the session was cleared: {:?}",
            r.headers
        );
        // The session still works.
        assert_eq!(e.browse("/still").status, 200, "{headers:?}");
    }
    assert!(e.gw.wait_log("cross-site logout refused", Duration::from_secs(5)));
    assert_eq!(
        e.seen().len(),
        refused.len(),
        "/logout reached the upstream"
    );

    // A same-origin request (a link or form on the app itself) logs out.
    let origin = e.base.clone();
    let url = e.url("/logout");
    let r = e.browser.get(
        &url,
        &[HTML, ("Sec-Fetch-Site", "same-origin"), ("Origin", &origin)],
    );
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(e.browser.value("session").is_none());
    assert_eq!(e.browse("/").status, 302);

    // So does a typed URL or bookmark (`none`).
    e.login("/");
    let r = e.browser.get(&url, &[HTML, ("Sec-Fetch-Site", "none")]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(e.browser.value("session").is_none());
    e.gw.assert_no_panic();
}
