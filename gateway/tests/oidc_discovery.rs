//! Discovery edge cases against the real IdP.
//!
//! The real `oidc-provider` always advertises `introspection_endpoint` in its OpenID configuration
//! and serves no RFC 8414 document, so a small loopback stand-in serves both documents (the
//! OpenID one without the endpoint, the RFC 8414 one with it); tokens, introspection and client
//! authentication stay the real IdP's.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Gateway, Idp, Seen, Upstream, get};

fn json_response(s: &mut TcpStream, status: &str, body: &str) -> bool {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).is_ok()
}

#[test]
fn introspection_endpoint_comes_from_rfc8414_metadata_when_discovery_lacks_it() {
    let idp = Idp::start(&[]);
    let real = get(idp.addr(), "/.well-known/openid-configuration", &[]).json();
    let introspection = real["introspection_endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();

    // The stand-in learns its own address after binding, so its documents are filled in then.
    let docs: Arc<Mutex<(String, String)>> = Arc::new(Mutex::new((String::new(), String::new())));
    let served = docs.clone();
    let stand_in = Upstream::with_handler(Arc::new(move |seen: &Seen, s: &mut TcpStream| {
        let (oidc, rfc8414) = served.lock().map(|d| d.clone()).unwrap_or_default();
        match seen.target.as_str() {
            "/.well-known/openid-configuration" => json_response(s, "200 OK", &oidc),
            "/.well-known/oauth-authorization-server" => json_response(s, "200 OK", &rfc8414),
            _ => json_response(s, "404 Not Found", "{}"),
        }
    }));
    let issuer = format!("http://{}", stand_in.node());
    let mut oidc = real.clone();
    let o = oidc.as_object_mut().expect("object");
    o.remove("introspection_endpoint");
    o.insert("issuer".into(), issuer.clone().into());
    let rfc8414 = serde_json::json!({ "issuer": issuer, "introspection_endpoint": introspection });
    *docs.lock().expect("docs") = (oidc.to_string(), rfc8414.to_string());

    let up = Upstream::echo();
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\nroutes:\n  - id: api\n    uri: /*\n    upstream_id: app\n\
         \x20   plugins:\n      openid-connect:\n        client_id: gateway\n        client_secret: gateway-secret\n\
         \x20       discovery: {issuer}/.well-known/openid-configuration\n        bearer_only: true\n",
        up.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "2"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(gw.admin_addr(), "/readyz", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "provider never ready:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = idp.client_credentials("m2m-opaque", "read", None);
    let r = get(
        gw.addr(),
        "/x",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(idp.path_count("/token/introspection"), 1);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-access-token"), Some(token.as_str()));
    let bad = get(
        gw.addr(),
        "/x",
        &[("Authorization", "Bearer not-a-real-token")],
    );
    assert_eq!(bad.status, 401);
    assert_eq!(
        up.requests().len(),
        1,
        "the upstream never sees a refused token"
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("shardgate_oidc_introspection_calls_total 2"),
        "{metrics}"
    );
}

/// Two routes on one IdP with different provider settings (JWKS vs introspection), optionally
/// only the first.
fn two_routes_on_one_idp(up: &Upstream, discovery: &str, with_b: bool) -> String {
    let route = |id: &str, use_jwks: bool| {
        format!(
            "  - id: {id}\n    uri: /{id}/*\n    upstream_id: app\n    plugins:\n      openid-connect:\n\
             \x20       client_id: gateway\n        client_secret: gateway-secret\n\
             \x20       discovery: {discovery}\n        bearer_only: true\n        use_jwks: {use_jwks}\n"
        )
    };
    let mut yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\nroutes:\n{}",
        up.node(),
        route("a", true)
    );
    if with_b {
        yaml.push_str(&route("b", false));
    }
    yaml
}

/// The value of the series `name{labels}` in a Prometheus text page.
fn series(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    let key = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().expect("counter value"))
}

#[test]
fn provider_series_are_per_route_and_a_removed_provider_goes_with_its_route() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let d = idp.discovery();
    let gw = Gateway::start(&two_routes_on_one_idp(&up, &d, true), &["--shards", "2"]);
    gw.wait_providers_ready(Duration::from_secs(20));
    let labels = |route: &str, outcome: &str| {
        format!("route=\"{route}\",discovery=\"{d}\",outcome=\"{outcome}\"")
    };
    let metrics = gw.metrics();
    let jwks = "shardgate_oidc_jwks_fetches_total";
    let discovery = "shardgate_oidc_discovery_fetches_total";
    // Route a's provider fetched the JWKS; b's (introspection) did not: two series, neither
    // overwriting the other.
    assert!(
        series(&metrics, jwks, &labels("a", "ok")).is_some_and(|n| n >= 1),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, jwks, &labels("b", "ok")),
        Some(0),
        "{metrics}"
    );
    for route in ["a", "b"] {
        assert!(
            series(&metrics, discovery, &labels(route, "ok")).is_some_and(|n| n >= 1),
            "{route}: {metrics}"
        );
    }
    let ready = get(gw.admin_addr(), "/readyz", &[]).json();
    assert_eq!(
        ready["providers"].as_array().map(Vec::len),
        Some(2),
        "{ready}"
    );

    // Reload without route b: its provider leaves the registry, its actor stops, its series go.
    gw.reload(&two_routes_on_one_idp(&up, &d, false));
    assert!(
        gw.wait_log(
            "identity provider no longer used by any route",
            Duration::from_secs(10)
        ),
        "{}",
        gw.log()
    );
    let metrics = gw.metrics();
    assert!(!metrics.contains("route=\"b\""), "{metrics}");
    assert!(
        series(&metrics, jwks, &labels("a", "ok")).is_some(),
        "{metrics}"
    );
    let ready = get(gw.admin_addr(), "/readyz", &[]);
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json()["providers"].as_array().map(Vec::len),
        Some(1),
        "{}",
        ready.text()
    );
    // Route a still verifies tokens with its provider's keys.
    let token = idp.client_credentials("m2m", "read", None);
    let r = get(
        gw.addr(),
        "/a/x",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_eq!(get(gw.addr(), "/b/x", &[]).status, 404);
    gw.assert_no_panic();
}
