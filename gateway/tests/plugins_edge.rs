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

/// With `gateway.trusted_addresses` set, `http_to_https` believes X-Forwarded-Proto only from a
/// listed proxy: anyone else's "https" does not skip the redirect.
#[test]
fn redirect_believes_forwarded_proto_only_from_trusted_addresses() {
    let up = Upstream::echo();
    let yaml = |trusted: &str| {
        format!(
            "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
             \x20 trusted_addresses: [\"{trusted}\"]\n\
             upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n\
             routes:\n\
             \x20 - id: https\n    uri: /secure\n    upstream_id: app\n    plugins:\n      redirect:\n\
             \x20       http_to_https: true\n",
            node = up.node()
        )
    };
    let xfp = [("Host", "foo.com"), ("X-Forwarded-Proto", "https")];
    let untrusted = Gateway::start(&yaml("10.0.0.0/8"), &["--shards", "1"]);
    let r = get(untrusted.addr(), "/secure", &xfp);
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(r.header("location"), Some("https://foo.com/secure"));
    let trusted = Gateway::start(&yaml("127.0.0.0/8"), &["--shards", "1"]);
    assert_eq!(get(trusted.addr(), "/secure", &xfp).status, 200);
    assert_eq!(up.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// request-id

fn count_header(seen: &support::Seen, name: &str) -> usize {
    seen.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .count()
}

#[test]
fn request_id_is_generated_or_kept_sent_both_ways_logged_and_starts_a_trace() {
    use std::io::Write;
    let up = Upstream::echo();
    // An upstream that answers with its own id: the client gets that one, once.
    let own = Upstream::with_handler(std::sync::Arc::new(
        |_: &support::Seen, s: &mut std::net::TcpStream| {
            s.write_all(
                b"HTTP/1.1 200 OK\r\nX-Request-Id: from-upstream\r\nContent-Length: 2\r\n\r\nok",
            )
            .is_ok()
        },
    ));
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n  - id: own\n    nodes: {{ \"{own}\": 1 }}\n\
         routes:\n\
         \x20 - id: uuid\n    uri: /uuid\n    upstream_id: app\n    plugins:\n      request-id: {{}}\n\
         \x20 - id: range\n    uri: /range\n    upstream_id: app\n    plugins:\n      request-id:\n\
         \x20       header_name: X-Trace\n        include_in_response: false\n        algorithm: range_id\n\
         \x20       range_id: {{ length: 20, char_set: abcdef }}\n\
         \x20 - id: nano\n    uri: /nano\n    upstream_id: app\n    plugins:\n      request-id: {{ algorithm: nanoid }}\n\
         \x20 - id: own\n    uri: /own\n    upstream_id: own\n    plugins:\n      request-id: {{}}\n\
         \x20 - id: deny\n    uri: /deny\n    upstream_id: app\n    plugins:\n      request-id: {{}}\n\
         \x20     ip-restriction: {{ blacklist: [\"127.0.0.1\"] }}\n",
        node = up.node(),
        own = own.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    let uuid =
        regex::Regex::new("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
            .unwrap();
    let trace = regex::Regex::new("^00-[0-9a-f]{32}-[0-9a-f]{16}-01$").unwrap();

    // No id: one is generated, sent upstream and to the client, and a trace is started.
    let r = get(gw.addr(), "/uuid", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(uuid.is_match(&id), "{id}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    assert_eq!(count_header(&seen, "x-request-id"), 1);
    let started = seen.header("traceparent").unwrap().to_owned();
    assert!(trace.is_match(&started), "{started}");
    assert!(gw.wait_log(&id, Duration::from_secs(5)), "{}", gw.log());
    // Each request its own id and trace.
    let r2 = get(gw.addr(), "/uuid", &[]);
    assert_ne!(r2.header("x-request-id"), Some(id.as_str()));
    assert_ne!(
        up.requests().pop().unwrap().header("traceparent"),
        Some(started.as_str())
    );

    // The client's id and valid trace context pass through untouched.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        gw.addr(),
        "/uuid",
        &[
            ("X-Request-Id", "client-abc"),
            ("traceparent", tp),
            ("tracestate", "vendor=1"),
        ],
    );
    assert_eq!(r.header("x-request-id"), Some("client-abc"));
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-request-id"), Some("client-abc"));
    assert_eq!(count_header(&seen, "x-request-id"), 1);
    assert_eq!(seen.header("traceparent"), Some(tp));
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));
    assert!(gw.wait_log("client-abc", Duration::from_secs(5)));

    // An empty id is replaced (APISIX); an invalid traceparent is restarted without its
    // tracestate.
    let r = get(
        gw.addr(),
        "/uuid",
        &[
            ("X-Request-Id", ""),
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=1"),
        ],
    );
    let id = r.header("x-request-id").unwrap();
    assert!(uuid.is_match(id), "{id}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(count_header(&seen, "x-request-id"), 1);
    assert_eq!(seen.header("x-request-id"), Some(id));
    assert_eq!(count_header(&seen, "traceparent"), 1);
    assert!(trace.is_match(seen.header("traceparent").unwrap()));
    assert_eq!(seen.header("tracestate"), None);

    // range_id under another header name, not in the response.
    let r = get(gw.addr(), "/range", &[]);
    assert_eq!(r.header("x-trace"), None);
    assert_eq!(r.header("x-request-id"), None);
    let seen = up.requests().pop().unwrap();
    let v = seen.header("x-trace").unwrap();
    assert_eq!(v.len(), 20, "{v}");
    assert!(v.bytes().all(|b| b"abcdef".contains(&b)), "{v}");

    let r = get(gw.addr(), "/nano", &[]);
    let v = r.header("x-request-id").unwrap();
    assert_eq!(v.len(), 21, "{v}");
    assert_eq!(up.requests().pop().unwrap().header("x-request-id"), Some(v));

    // The upstream's own id wins in the response, as APISIX's header_filter.
    let r = get(gw.addr(), "/own", &[]);
    assert_eq!(r.headers_all("x-request-id"), vec!["from-upstream"]);

    // An answer from a plugin (ip-restriction's 403) carries the id too.
    let r = get(gw.addr(), "/deny", &[]);
    assert_eq!(r.status, 403);
    let id = r.header("x-request-id").unwrap();
    assert!(uuid.is_match(id), "{id}");
    assert!(gw.wait_log(id, Duration::from_secs(5)));
    // A request without the plugin has no id, and the next keep-alive request does not inherit
    // one (requests above each used a fresh connection; here two on one).
    let mut conn = support::Conn::open(gw.addr());
    let a = conn.get("localhost", "/uuid");
    let b = conn.get("localhost", "/nope");
    assert!(a.header("x-request-id").is_some());
    assert_eq!(b.status, 404);
    assert_eq!(b.header("x-request-id"), None);
}

#[test]
fn request_id_bad_attributes_are_refused_with_their_path() {
    let up = Upstream::echo();
    let yaml = with_plugins(
        &up,
        "request-id:\n  algorithm: range_id\n  range_id:\n    length: 5\n",
    );
    let path = support::scratch_file("request-id-bad.yaml", &yaml);
    let out = support::shardgate(&["validate", "-c", path.to_str().unwrap()]);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("routes[0].plugins.request-id.range_id.length: expected 5 to be 6 to 128"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// real-ip

#[test]
fn real_ip_sets_remote_addr_for_later_plugins_the_upstream_and_the_log() {
    let up = Upstream::echo();
    let yaml = format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n\
         routes:\n\
         \x20 - id: xff\n    uri: /xff\n    upstream_id: app\n    plugins:\n      real-ip:\n\
         \x20       source: http_x_forwarded_for\n        trusted_addresses: [\"192.128.0.0/16\", \"127.0.0.0/24\"]\n\
         \x20       recursive: true\n      ip-restriction: {{ whitelist: [\"1.1.1.1\", \"::2\"] }}\n\
         \x20 - id: untrusted\n    uri: /untrusted\n    upstream_id: app\n    plugins:\n      real-ip:\n\
         \x20       source: http_x_forwarded_for\n        trusted_addresses: [\"192.128.0.0/16\"]\n\
         \x20     ip-restriction: {{ whitelist: [\"1.1.1.1\"] }}\n\
         \x20 - id: arg\n    uri: /arg\n    upstream_id: app\n    plugins:\n      real-ip: {{ source: arg_realip }}\n\
         \x20     redirect: {{ uri: \"/seen/$remote_addr\" }}\n\
         \x20 - id: hdr\n    uri: /hdr\n    upstream_id: app\n    plugins:\n      real-ip: {{ source: http_x_real_ip }}\n\
         \x20 - id: routed\n    uri: /routed\n    upstream_id: app\n    remote_addrs: [\"1.1.1.1\"]\n\
         \x20   plugins:\n      real-ip: {{ source: http_x_real_ip }}\n",
        node = up.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);

    // Recursive: the right-most untrusted element; ip-restriction checks it.
    let r = get(
        gw.addr(),
        "/xff",
        &[("X-Forwarded-For", "1.1.1.1, 192.128.1.1, 127.0.0.1")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-real-ip"), Some("1.1.1.1"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("1.1.1.1, 192.128.1.1, 127.0.0.1, 1.1.1.1")
    );
    assert_eq!(
        seen.header("forwarded")
            .map(|f| f.starts_with("for=1.1.1.1;")),
        Some(true)
    );
    assert!(
        gw.wait_log("remote_addr=\"1.1.1.1\"", Duration::from_secs(5))
            || gw.wait_log("remote_addr=1.1.1.1", Duration::from_secs(1)),
        "{}",
        gw.log()
    );
    // An untrusted element nearer the gateway is the client.
    let r = get(
        gw.addr(),
        "/xff",
        &[("X-Forwarded-For", "1.1.1.1, 6.6.6.6, 127.0.0.1")],
    );
    assert_eq!(r.status, 403);
    // With a port, IPv6 with brackets, several headers (the last counts).
    assert_eq!(
        get(gw.addr(), "/xff", &[("X-Forwarded-For", "1.1.1.1:7090")]).status,
        200
    );
    assert_eq!(
        get(gw.addr(), "/xff", &[("X-Forwarded-For", "[::2]:80")]).status,
        200
    );
    assert_eq!(
        get(
            gw.addr(),
            "/xff",
            &[("X-Forwarded-For", "::1"), ("X-Forwarded-For", "::2")]
        )
        .status,
        200
    );
    // Missing, malformed, or a bad port: remote_addr stays the peer's (refused).
    assert_eq!(get(gw.addr(), "/xff", &[]).status, 403);
    assert_eq!(
        get(gw.addr(), "/xff", &[("X-Forwarded-For", "1.1.1")]).status,
        403
    );
    assert_eq!(
        get(gw.addr(), "/xff", &[("X-Forwarded-For", "1.1.1.1:65536")]).status,
        403
    );

    // A peer outside trusted_addresses is not believed.
    let r = get(gw.addr(), "/untrusted", &[("X-Forwarded-For", "1.1.1.1")]);
    assert_eq!(r.status, 403);

    // From a query argument, seen by a later plugin's `$remote_addr`.
    let r = get(gw.addr(), "/arg?realip=9.8.7.6", &[]);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("/seen/9.8.7.6"));
    let r = get(gw.addr(), "/arg?realip=nope", &[]);
    assert_eq!(r.header("location"), Some("/seen/127.0.0.1"));

    // From another header; the client's X-Real-IP is replaced by the address taken from it.
    let before = up.requests().len();
    let r = get(gw.addr(), "/hdr", &[("X-Real-IP", "2001:db8::7")]);
    assert_eq!(r.status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-real-ip"), Some("2001:db8::7"));
    assert_eq!(seen.header("x-forwarded-for"), Some("2001:db8::7"));
    assert_eq!(
        seen.header("forwarded")
            .map(|f| f.starts_with("for=\"[2001:db8::7]\";")),
        Some(true)
    );

    // Routing happened before real-ip (as APISIX): `remote_addrs` saw the peer.
    let r = get(gw.addr(), "/routed", &[("X-Real-IP", "1.1.1.1")]);
    assert_eq!(r.status, 404);
    assert_eq!(up.requests().len(), before + 1);
}

#[test]
fn real_ip_bad_attributes_are_refused_with_their_path() {
    let up = Upstream::echo();
    let yaml = with_plugins(
        &up,
        "real-ip:\n  source: http_x_forwarded_for\n  trusted_addresses: [\"127.0.0.1/33\"]\n",
    );
    let path = support::scratch_file("real-ip-bad.yaml", &yaml);
    let out = support::shardgate(&["validate", "-c", path.to_str().unwrap()]);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "routes[0].plugins.real-ip.trusted_addresses[0]: invalid ip address: 127.0.0.1/33"
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// gateway.trusted_addresses: forwarding headers believed only from listed proxies

#[test]
fn forwarded_host_and_proto_are_believed_only_from_trusted_addresses() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let yaml = |trusted: &str| {
        format!(
            "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
             \x20 trusted_addresses: [\"{trusted}\"]\n\
             upstreams:\n  - id: app\n    nodes: {{ \"{node}\": 1 }}\n\
             routes:\n\
             \x20 - id: login\n    uri: /hello\n    upstream_id: app\n    plugins:\n      openid-connect:\n\
             \x20       client_id: gateway\n        client_secret: gateway-secret\n        discovery: {disc}\n\
             \x20       session: {{ secret: \"session-secret-for-tests-0123456789\", cookie_secure: false }}\n\
             \x20 - id: open\n    uri: /open\n    upstream_id: app\n\
             \x20 - id: rip\n    uri: /rip\n    upstream_id: app\n    plugins:\n      real-ip:\n\
             \x20       source: http_x_forwarded_for\n        trusted_addresses: [\"127.0.0.0/24\"]\n\
             \x20     ip-restriction: {{ whitelist: [\"1.1.1.1\"] }}\n",
            node = up.node(),
            disc = idp.discovery()
        )
    };
    let redirect_uri = |gw: &Gateway, headers: &[(&str, &str)]| -> String {
        let mut h = vec![("Accept", "text/html")];
        h.extend_from_slice(headers);
        let r = get(gw.addr(), "/hello", &h);
        assert_eq!(r.status, 302, "{r:?}");
        let location = r.header("location").unwrap();
        support::query_param(location, "redirect_uri").unwrap()
    };

    // As APISIX's openid-connect2.t: a trusted proxy's X-Forwarded-Host/-Proto, or its
    // Forwarded before them, name the callback.
    let trusted = Gateway::start(&yaml("127.0.0.1"), &["--shards", "1"]);
    trusted.wait_providers_ready(Duration::from_secs(20));
    assert_eq!(
        redirect_uri(
            &trusted,
            &[
                ("Host", "internal-host:9080"),
                ("X-Forwarded-Host", "public.example.com:8443"),
                ("X-Forwarded-Proto", "https"),
            ]
        ),
        "https://public.example.com:8443/hello/.apisix/redirect"
    );
    assert_eq!(
        redirect_uri(
            &trusted,
            &[
                ("Host", "internal-host:9080"),
                ("X-Forwarded-Host", "should-be-ignored.com"),
                ("X-Forwarded-Proto", "http"),
                ("Forwarded", "host=\"cdn.example.com:443\";proto=\"https\""),
            ]
        ),
        "https://cdn.example.com:443/hello/.apisix/redirect"
    );
    // The trusted proxy's headers go upstream as it sent them, its chain extended.
    let r = get(
        trusted.addr(),
        "/open",
        &[
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-Host", "public.example.com"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Port", "443"),
            ("Forwarded", "for=1.1.1.1;proto=https"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("1.1.1.1, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example.com"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-port"), Some("443"));
    assert_eq!(seen.header("forwarded"), Some("for=1.1.1.1;proto=https"));
    assert_eq!(count_header(&seen, "forwarded"), 1);
    assert_eq!(
        get(trusted.addr(), "/rip", &[("X-Forwarded-For", "1.1.1.1")]).status,
        200
    );
    drop(trusted);

    // Anyone else's are ignored: the request's own Host and scheme.
    let untrusted = Gateway::start(&yaml("10.0.0.0/8"), &["--shards", "1"]);
    untrusted.wait_providers_ready(Duration::from_secs(20));
    assert_eq!(
        redirect_uri(
            &untrusted,
            &[("Host", "localhost:8888"), ("X-Forwarded-Host", "evil.com")]
        ),
        "http://localhost:8888/hello/.apisix/redirect"
    );
    assert_eq!(
        redirect_uri(
            &untrusted,
            &[
                ("Host", "localhost:8888"),
                ("Forwarded", "host=\"evil.com\";proto=\"https\""),
                ("X-Forwarded-Host", "also-evil.com"),
            ]
        ),
        "http://localhost:8888/hello/.apisix/redirect"
    );
    // Upstream: the gateway's own values, and the untrusted chain dropped (APISIX).
    let r = get(
        untrusted.addr(),
        "/open",
        &[
            ("Host", "localhost:8888"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-Host", "evil.com"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=1.1.1.1;proto=https"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=127.0.0.1;host=\"localhost:8888\";proto=http")
    );
    // As APISIX's real-ip.t TEST 24: the forged chain is gone before real-ip reads it.
    assert_eq!(
        get(untrusted.addr(), "/rip", &[("X-Forwarded-For", "1.1.1.1")]).status,
        403
    );
}
