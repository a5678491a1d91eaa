//! APISIX's `services`, `plugin_configs` and `global_rules` through the real binary: a route takes
//! its service's upstream and hosts, the plugins of its service and plugin_config, and the global
//! rules' plugins before its own (checked with `openid-connect` against the real test IdP).
#![allow(clippy::unwrap_used)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use support::{Gateway, Idp, Upstream, get};

#[test]
fn routes_take_upstream_hosts_and_plugins_from_service_and_plugin_config() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let oidc = format!(
        "      openid-connect:\n        client_id: gateway\n        bearer_only: true\n        use_jwks: true\n        discovery: {}\n",
        idp.discovery()
    );
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  shards: 1
upstreams:
  - id: app
    nodes: {{ "{node}": 1 }}
services:
  - id: shop
    upstream_id: app
    hosts: [shop.test]
  - id: locked
    upstream_id: app
    plugins:
{oidc}plugin_configs:
  - id: auth
    plugins:
{oidc}routes:
  - {{ id: inherits, uri: /svc/*, service_id: shop }}
  - {{ id: own-hosts, uri: /svc/*, service_id: shop, hosts: [own.test] }}
  - {{ id: by-service, uri: /locked/*, service_id: locked }}
  - {{ id: by-plugin-config, uri: /pc/*, upstream_id: app, plugin_config_id: auth }}
  - {{ id: open, uri: /open/*, service_id: shop, hosts: [shop.test], plugin_config_id: none }}
"#,
        node = up.node()
    )
    // A plugin_config with no plugins, for the last route.
    .replace("routes:\n", "  - id: none\n    plugins: {}\nroutes:\n");
    let gw = Gateway::start(&yaml, &[]);
    let cases: &[(&str, &str, u16)] = &[
        ("/svc/a", "shop.test", 200),
        ("/svc/a", "own.test", 200),
        ("/svc/a", "other.test", 404),
        ("/locked/a", "x.test", 401),
        ("/pc/a", "x.test", 401),
        ("/open/a", "shop.test", 200),
    ];
    for (path, host, status) in cases {
        let r = get(gw.addr(), path, &[("Host", host)]);
        assert_eq!(
            r.status,
            *status,
            "{path} on {host}: {}\n{}",
            r.text(),
            gw.log()
        );
    }
    assert_eq!(up.requests().len(), 3);
}

/// A plugin in a global rule runs for every routed request before the route's plugins, as
/// APISIX's global rules do: `openid-connect` in a global rule puts routes that carry no plugin of
/// their own behind the real IdP (no token 401, a JWT from the IdP 200), and the route's own
/// instance still applies after it on a route that has one.
#[test]
fn a_plugin_in_a_global_rule_runs_on_every_route() {
    let idp = Idp::start(&[]);
    let up = Upstream::echo();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  shards: 2
upstreams:
  - id: app
    nodes: {{ "{node}": 1 }}
routes:
  - {{ id: a, uri: /a/*, upstream_id: app }}
  - {{ id: b, uri: /b/*, upstream_id: app }}
  - id: scoped
    uri: /scoped/*
    upstream_id: app
    plugins:
      openid-connect:
        client_id: gateway
        bearer_only: true
        use_jwks: true
        discovery: {discovery}
        required_scopes: [admin]
global_rules:
  - id: 1
    plugins:
      openid-connect:
        client_id: gateway
        bearer_only: true
        use_jwks: true
        discovery: {discovery}
"#,
        node = up.node(),
        discovery = idp.discovery()
    );
    let gw = Gateway::start(&yaml, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(gw.admin_addr(), "/readyz", &[]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready\n{}",
            gw.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for path in ["/a/x", "/b/x", "/scoped/x"] {
        let r = get(gw.addr(), path, &[]);
        assert_eq!(
            r.status,
            401,
            "{path} without a token: {}\n{}",
            r.text(),
            gw.log()
        );
    }
    assert!(
        up.requests().is_empty(),
        "an unauthenticated request reached the upstream"
    );
    let token = idp.client_credentials("m2m", "read", Some("urn:shardgate:api"));
    let auth = format!("Bearer {token}");
    for path in ["/a/x", "/b/x"] {
        let r = get(gw.addr(), path, &[("Authorization", &auth)]);
        assert_eq!(
            r.status,
            200,
            "{path} with a token: {}\n{}",
            r.text(),
            gw.log()
        );
    }
    // The global rule lets the token through; the route's own instance then wants a scope the
    // token lacks.
    let r = get(gw.addr(), "/scoped/x", &[("Authorization", &auth)]);
    assert_eq!(r.status, 403, "{}\n{}", r.text(), gw.log());
    assert_eq!(up.requests().len(), 2);
}
