//! APISIX's `services` and `plugin_configs` through the real binary: a route takes its
//! service's upstream and hosts, and the plugins of its service and plugin_config (checked with
//! `openid-connect` against the real test IdP: no token is a 401 only where the plugin applies).
#![allow(clippy::unwrap_used)]

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

/// Global rules are validated and merged, but running them needs the plugin pipeline: until it
/// exists a plugin in a global rule is refused by `validate` (and so at start and reload), never
/// silently skipped.
#[test]
fn a_plugin_in_a_global_rule_is_refused_until_global_rules_run() {
    let dir = std::env::temp_dir().join(format!("shardgate-global-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let validate = |yaml: &str| {
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let base = "upstreams:\n  - { id: app, nodes: { \"127.0.0.1:1\": 1 } }\n\
                routes:\n  - { id: r, uri: /a, upstream_id: app }\nglobal_rules:\n";
    let (code, text) = validate(&format!("{base}  - {{ id: 1, plugins: {{}} }}\n"));
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = validate(&format!(
        "{base}  - id: 1\n    plugins:\n      openid-connect: {{ client_id: c, client_secret: s, \
         bearer_only: true, discovery: \"http://127.0.0.1:1/.well-known/openid-configuration\" }}\n"
    ));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("global_rules: plugin `openid-connect` in a global rule is not run"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
