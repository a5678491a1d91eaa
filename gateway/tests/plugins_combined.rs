//! The plugins that ride with `openid-connect`, together on one route as APISIX routes carry them
//! (`cors` + `openid-connect` + `proxy-rewrite` + `limit-count`), through the real `shardgate`
//! binary against the real test IdP (opaque tokens, introspection: every question the gateway asks
//! the IdP is counted there) and a real loopback upstream that records what it receives.
//!
//! APISIX's order: every plugin's `rewrite` phase by priority (cors 4000, openid-connect 2599,
//! proxy-rewrite 1008), then every `access` phase (limit-count 1002), global rules' phases before
//! the route's.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Gateway, Idp, Response, Upstream, get, request};

const ORIGIN: &str = "http://app.example";

fn yaml(idp: &Idp, up: &Upstream, global_rules: &str, route_plugins: &str) -> String {
    format!(
        "gateway:\n  listen: [\"127.0.0.1:{{port}}\"]\n  admin: {{ listen: \"127.0.0.1:{{admin}}\" }}\n\
         upstreams:\n  - id: app\n    nodes: {{ \"{}\": 1 }}\n{global_rules}\
         routes:\n  - id: api\n    uri: /api/*\n    upstream_id: app\n    plugins:\n\
         \x20     cors:\n        allow_origins: \"{ORIGIN}\"\n        allow_methods: \"GET,POST\"\n\
         \x20       allow_headers: \"authorization\"\n        expose_headers: \"X-RateLimit-Remaining\"\n\
         \x20     openid-connect:\n        client_id: gateway\n        client_secret: gateway-secret\n\
         \x20       discovery: {}\n        bearer_only: true\n\
         \x20     proxy-rewrite:\n        regex_uri: [\"^/api/(.*)\", \"/internal/$1\"]\n\
         \x20       headers:\n          set: {{ X-Api-Version: v1 }}\n{route_plugins}",
        up.node(),
        idp.discovery(),
    )
}

fn start(yaml: &str) -> Gateway {
    // One shard: the introspection cache is shard-local, so with one shard "asked the IdP" is
    // exactly "this token was not seen before".
    let gw = Gateway::start(yaml, &["--shards", "1"]);
    gw.wait_providers_ready(Duration::from_secs(20));
    gw
}

fn call(gw: &Gateway, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    get(
        gw.addr(),
        path,
        &[("Origin", ORIGIN), ("Authorization", &auth)],
    )
}

fn introspections(idp: &Idp) -> u64 {
    idp.path_count("/token/introspection")
}

fn assert_cors(r: &Response) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(ORIGIN),
        "{r:?}"
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-RateLimit-Remaining")
    );
}

#[test]
fn cors_oidc_limit_count_and_proxy_rewrite_on_one_route_run_in_apisix_order() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let limit = "      limit-count:\n        count: 3\n        time_window: 3600\n        rejected_code: 429\n";
    let gw = start(&yaml(&idp, &up, "", limit));
    idp.reset_stats();

    // A preflight is answered by cors (rewrite, priority 4000) before openid-connect: no token
    // needed, nothing asked of the IdP, nothing sent upstream, and no quota spent (limit-count's
    // access phase never ran: no X-RateLimit-* headers).
    for _ in 0..5 {
        let pre = request(
            gw.addr(),
            "OPTIONS",
            "/api/items",
            &[
                ("Origin", ORIGIN),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
            b"",
        );
        assert_eq!(pre.status, 200, "{pre:?}");
        assert_eq!(pre.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(pre.header("access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(pre.header("x-ratelimit-limit"), None);
    }
    let asked: u64 = idp.stats()["paths"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(asked, 0, "{}", idp.stats());
    assert!(up.requests().is_empty(), "{:?}", up.requests());

    // An authenticated request: introspected once, counted (the preflights were not: 2 of 3
    // left), rewritten on its way to the upstream, CORS headers on the answer.
    let token = idp.client_credentials("m2m-opaque", "read", None);
    let r = call(&gw, "/api/items?page=2", &token);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
    assert_cors(&r);
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(introspections(&idp), 1);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/internal/items?page=2");
    assert_eq!(seen[0].header("x-api-version"), Some("v1"));
    assert_eq!(seen[0].header("x-access-token"), Some(token.as_str()));

    for remaining in ["1", "0"] {
        let r = call(&gw, "/api/items", &token);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    // The quota is spent: 429 with the CORS headers (the browser script can read it) and the
    // quota headers; neither the upstream nor the IdP hears of it (the token's introspection
    // answer is cached, and the limit refuses before anything is proxied).
    for _ in 0..5 {
        let r = call(&gw, "/api/items", &token);
        assert_eq!(r.status, 429, "{}", r.text());
        assert_cors(&r);
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(introspections(&idp), 1);

    // APISIX's order on one route puts authentication (rewrite) before the limit (access): a
    // request without a token is refused by openid-connect (401, not 429) and a token the gateway
    // has not seen is introspected before the limit refuses it. Keeping unseen tokens away from
    // the IdP takes the limit in a global rule (next test).
    let r = get(gw.addr(), "/api/items", &[("Origin", ORIGIN)]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_cors(&r);
    let fresh = idp.client_credentials("m2m-opaque", "read", None);
    let r = call(&gw, "/api/items", &fresh);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(introspections(&idp), 2);
    assert_eq!(up.requests().len(), 3);

    let metrics = gw.metrics();
    assert!(
        metrics.contains("shardgate_errors_total{code=\"limit_count_rejected\"} 6"),
        "{metrics}"
    );
    gw.assert_no_panic();
}

#[test]
fn limit_count_in_a_global_rule_refuses_before_the_idp_is_asked() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let global = "global_rules:\n  - id: 1\n    plugins:\n      limit-count:\n        count: 2\n        \
                  time_window: 3600\n        rejected_code: 429\n";
    let gw = start(&yaml(&idp, &up, global, ""));
    idp.reset_stats();

    for i in 0..2 {
        let token = idp.client_credentials("m2m-opaque", "read", None);
        let r = call(&gw, &format!("/api/items/{i}"), &token);
        assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log());
        assert_cors(&r);
    }
    assert_eq!(introspections(&idp), 2);
    let targets: Vec<String> = up.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/internal/items/0", "/internal/items/1"]);

    // A global rule's rewrite and access phases run before the route's: the limit refuses tokens
    // the gateway has never seen without asking the IdP about any of them.
    for _ in 0..5 {
        let unseen = idp.client_credentials("m2m-opaque", "read", None);
        let r = call(&gw, "/api/items/x", &unseen);
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    }
    assert_eq!(introspections(&idp), 2);
    assert_eq!(up.requests().len(), 2);
    gw.assert_no_panic();
}
