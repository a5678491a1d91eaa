//! The edge plugins (`cors`, `redirect`, `ip-restriction`, `real-ip`, `request-id`) through the
//! real `shardgate` binary, against real loopback upstreams (and the real test IdP where a plugin
//! meets `openid-connect`).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Gateway, Idp, Upstream, config, get, request};

/// The route `r` on `/*` with `plugins` (YAML lines, unindented).
fn with_plugins(up: &Upstream, plugins: &str) -> String {
    let mut extra = String::from("plugins:\n");
    for l in plugins.lines().filter(|l| !l.trim().is_empty()) {
        extra.push_str("  ");
        extra.push_str(l);
        extra.push('\n');
    }
    config(&[&up.node()], "", "", &extra)
}

// ---------------------------------------------------------------------------------------------
// cors

#[test]
fn cors_preflight_is_answered_before_authentication_and_refusals_carry_the_headers() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let yaml = with_plugins(
        &up,
        &format!(
            "cors:\n  allow_origins: \"http://app.example,https://other.example\"\n  \
             allow_methods: \"GET,POST\"\n  allow_headers: \"**\"\n  expose_headers: X-Id\n  \
             max_age: 600\n  allow_credential: true\n\
             openid-connect:\n  client_id: gateway\n  discovery: {}\n  bearer_only: true\n  use_jwks: true\n",
            idp.discovery()
        ),
    );
    let gw = Gateway::start(&yaml, &["--shards", "2"]);
    gw.wait_providers_ready(Duration::from_secs(20));
    idp.reset_stats();

    let pre = request(
        gw.addr(),
        "OPTIONS",
        "/api/items",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        b"",
    );
    assert_eq!(pre.status, 200, "{pre:?}");
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(pre.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("authorization,content-type")
    );
    assert_eq!(pre.header("access-control-max-age"), Some("600"));
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(pre.header("access-control-expose-headers"), Some("X-Id"));
    assert_eq!(pre.header("vary"), Some("Origin"));
    assert!(pre.body.is_empty());

    // A request without a token is refused by openid-connect, and the refusal carries the CORS
    // headers so the browser script can read the 401.
    let refused = get(
        gw.addr(),
        "/api/items",
        &[("Origin", "https://other.example")],
    );
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://other.example")
    );
    // An origin that is not listed gets no Access-Control-Allow-Origin.
    let foreign = get(
        gw.addr(),
        "/api/items",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(foreign.status, 401);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
    assert_eq!(foreign.header("vary"), Some("Origin"));

    // The upstream saw none of it, and the IdP was not asked about any of it.
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    let stats = idp.stats();
    let asked: u64 = stats["paths"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(asked, 0, "{stats}");
    let metrics = gw.metrics();
    assert!(
        !metrics.contains("shardgate_errors_total{code=\"cors_preflight\"}"),
        "{metrics}"
    );
}

#[test]
fn cors_defaults_and_regex_origins_on_proxied_responses() {
    let up = Upstream::echo();
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n\
         routes:\n  - id: star\n    uri: /star\n    upstream_id: app\n    plugins:\n      cors: {{}}\n\
         \x20 - id: re\n    uri: /re\n    upstream_id: app\n    plugins:\n      cors:\n\
         \x20       allow_origins_by_regex: [\"^https://[a-z]+\\\\.example\\\\.com$\"]\n\
         \x20       timing_allow_origins: \"**\"\n",
        node = up.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);

    let r = get(gw.addr(), "/star", &[("Origin", "http://anything")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("*"));
    assert_eq!(r.header("access-control-allow-headers"), Some("*"));
    assert_eq!(r.header("access-control-max-age"), Some("5"));
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);

    let r = get(gw.addr(), "/re", &[("Origin", "https://app.example.com")]);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(
        r.header("timing-allow-origin"),
        Some("https://app.example.com")
    );
    let r = get(
        gw.addr(),
        "/re",
        &[("Origin", "https://app.example.com.evil")],
    );
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.status, 200);

    // Any OPTIONS request is answered by the gateway, as APISIX does.
    let r = request(gw.addr(), "OPTIONS", "/star", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().len(), 3, "{:?}", up.requests());
}

#[test]
fn cors_bad_attributes_are_refused_with_their_path() {
    let up = Upstream::echo();
    let yaml = with_plugins(
        &up,
        "cors:\n  allow_credential: true\n  allow_origins: \"**\"\n",
    );
    let path = support::scratch_file("cors-bad.yaml", &yaml);
    let out = support::shardgate(&["validate", "-c", path.to_str().unwrap()]);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("routes[0].plugins.cors.allow_methods: you can not set '*'"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// ip-restriction

#[test]
fn ip_restriction_refuses_with_message_and_code_and_lets_listed_clients_through() {
    let up = Upstream::echo();
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n\
         routes:\n\
         \x20 - id: allow\n    uri: /allow\n    upstream_id: app\n    plugins:\n      ip-restriction:\n\
         \x20       whitelist: [\"127.0.0.0/24\", \"::1\"]\n\
         \x20 - id: deny\n    uri: /deny\n    upstream_id: app\n    plugins:\n      ip-restriction:\n\
         \x20       blacklist: [\"127.0.0.1\"]\n        message: \"Do you want to do something bad?\"\n\
         \x20       response_code: 404\n\
         \x20 - id: other\n    uri: /other\n    upstream_id: app\n    plugins:\n      ip-restriction:\n\
         \x20       whitelist: [\"10.0.0.0/8\"]\n",
        node = up.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    assert_eq!(get(gw.addr(), "/allow", &[]).status, 200);
    let r = get(gw.addr(), "/deny", &[]);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"message": "Do you want to do something bad?"})
    );
    let r = get(gw.addr(), "/other", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        serde_json::json!({"message": "Your IP address is not allowed"})
    );
    assert_eq!(up.requests().len(), 1);
    assert!(
        gw.wait_log("ip_restricted", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    assert!(
        gw.metrics()
            .contains("shardgate_errors_total{code=\"ip_restricted\"} 2"),
        "{}",
        gw.metrics()
    );
}

// ---------------------------------------------------------------------------------------------
// redirect

#[test]
fn redirect_templates_regexes_and_http_to_https() {
    let up = Upstream::echo();
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n\
         routes:\n\
         \x20 - id: tpl\n    uri: /hello\n    upstream_id: app\n    plugins:\n      redirect:\n\
         \x20       uri: \"$uri/test/a$${{arg_name}}c\"\n        ret_code: 301\n        append_query_string: true\n\
         \x20 - id: re\n    uri: /test/*\n    upstream_id: app\n    plugins:\n      redirect:\n\
         \x20       regex_uri: [\"^/test/(.*)\", \"http://test.com/$${{1}}\"]\n        encode_uri: true\n\
         \x20 - id: https\n    uri: /secure\n    upstream_id: app\n    plugins:\n      redirect:\n\
         \x20       http_to_https: true\n",
        node = up.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    let r = get(gw.addr(), "/hello?name=json", &[]);
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("/hello/test/ajsonc?name=json"));

    let r = get(gw.addr(), "/test/with%20space", &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("http://test.com/with%20space"));

    let r = get(gw.addr(), "/secure?a=1", &[("Host", "foo.com")]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://foo.com/secure?a=1"));
    let r = request(
        gw.addr(),
        "POST",
        "/secure",
        &[("Host", "foo.com:8080")],
        b"x",
    );
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://foo.com/secure"));
    // Already https behind a proxy: proxied.
    let r = get(gw.addr(), "/secure", &[("X-Forwarded-Proto", "https")]);
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().len(), 1);
    // A redirect is an answer, not an error.
    assert!(
        !gw.metrics().contains("code=\"redirect\""),
        "{}",
        gw.metrics()
    );
}
