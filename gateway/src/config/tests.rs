#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use shardgate_oidc::config::{SameSite, UnauthAction};

use super::*;
use crate::route::Method;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(yaml: &str) -> Loaded {
    match load_str_with_env(yaml, &no_env) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match load_str_with_env(yaml, &no_env) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

fn has(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

const MINIMAL: &str = r#"
upstreams:
  - id: app
    nodes: { "127.0.0.1:18080": 1 }
routes:
  - id: r
    uri: /*
    upstream_id: app
"#;

#[test]
fn empty_config_gets_every_gateway_default() {
    for text in ["", "\n", "#END\n"] {
        let c = load(text).config;
        let g = &c.gateway;
        assert_eq!(
            g.listen,
            vec!["0.0.0.0:9080".parse::<SocketAddr>().unwrap()]
        );
        assert!(g.tls.is_none() && g.admin.is_none());
        assert_eq!(g.shards, Shards::Auto);
        assert_eq!(g.driver, Driver::Auto);
        assert_eq!(g.limits.max_header_bytes, 32_768);
        assert_eq!(g.limits.max_headers, 100);
        assert_eq!(g.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(g.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(g.limits.max_connections, 20_000);
        assert_eq!(g.limits.max_body_buffer, 65_536);
        assert_eq!(g.shutdown_timeout, Duration::from_secs(30));
        assert!(g.access_log);
        assert!(c.routes.is_empty() && c.upstreams.is_empty());
    }
}

#[test]
fn upstream_and_route_defaults() {
    let c = load(MINIMAL).config;
    let u = &c.upstreams[0];
    assert_eq!(u.id, "app");
    assert_eq!(u.balancer, Balancer::RoundRobin);
    assert_eq!(
        u.nodes,
        vec![Node {
            addr: "127.0.0.1:18080".into(),
            host: "127.0.0.1".into(),
            port: 18080,
            weight: 1,
            priority: 0
        }]
    );
    assert_eq!(u.scheme, Scheme::Http);
    assert_eq!(u.pass_host, PassHost::Pass);
    let sixty = Duration::from_secs(60);
    assert_eq!(
        u.timeout,
        UpstreamTimeout {
            connect: sixty,
            send: sixty,
            read: sixty
        }
    );
    assert_eq!(
        u.keepalive_pool,
        KeepalivePool {
            size: 320,
            idle_timeout: sixty,
            requests: 1000
        }
    );
    assert_eq!(u.retries, 0, "APISIX: nodes - 1");
    assert_eq!(u.retry_timeout, None);
    assert_eq!(
        u.health,
        PassiveHealth {
            tcp_failures: 3,
            timeouts: 3,
            http_failures: 0,
            http_statuses: vec![],
            successes: 1,
            cool_down: Duration::from_secs(10)
        }
    );
    let r = &c.routes[0];
    assert_eq!(r.id, "r");
    assert_eq!(r.uris, ["/*"]);
    assert!(r.hosts.is_empty() && r.methods.is_any());
    assert_eq!(r.priority, 0);
    assert_eq!(r.upstream, 0);
    assert!(r.enabled && !r.enable_websocket);
    assert!(r.plugins.is_empty());
}

#[test]
fn full_gateway_section_parses() {
    let dir = temp_dir("tls");
    std::fs::write(dir.join("cert.pem"), "x").unwrap();
    std::fs::write(dir.join("key.pem"), "x").unwrap();
    let yaml = r#"
gateway:
  listen: ["127.0.0.1:8080", "[::1]:8080"]
  tls: { listen: ["0.0.0.0:8443"], cert: cert.pem, key: key.pem }
  admin: { listen: "127.0.0.1:9090" }
  shards: 2
  driver: epoll
  limits: { max_header_bytes: 8192, max_headers: 50, header_timeout: 2.5, idle_timeout: 5, max_connections: 10, max_body_buffer: 1024 }
  shutdown_timeout: 0
  access_log: false
"#;
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let g = load_file(&path).unwrap().config.gateway;
    assert_eq!(g.listen.len(), 2);
    let tls = g.tls.unwrap();
    assert_eq!(
        tls.cert,
        dir.join("cert.pem"),
        "relative to the config file"
    );
    assert_eq!(
        tls.listen,
        vec!["0.0.0.0:8443".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        g.admin.unwrap().listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(g.shards, Shards::Count(2));
    assert_eq!(g.driver, Driver::Epoll);
    assert_eq!(g.limits.header_timeout, Duration::from_millis(2500));
    assert_eq!(g.shutdown_timeout, Duration::ZERO);
    assert!(!g.access_log);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_tls_files_and_bad_listen_addresses_are_named() {
    let e = errors(
        r#"
gateway:
  listen: ["localhost:80", "0.0.0.0:9080"]
  tls: { cert: /nonexistent/cert.pem, key: /nonexistent/key.pem }
  admin: { listen: "9090" }
"#,
    );
    assert!(
        has(
            &e,
            "gateway.listen[0]: `localhost:80` is not an ip:port socket address"
        ),
        "{e:?}"
    );
    assert!(
        has(
            &e,
            "gateway.tls.cert: file `/nonexistent/cert.pem` does not exist"
        ),
        "{e:?}"
    );
    assert!(has(&e, "gateway.tls.key: file"), "{e:?}");
    assert!(has(&e, "gateway.admin.listen: `9090` is not"), "{e:?}");
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn shards_must_be_auto_or_positive() {
    assert!(has(
        &errors("gateway: { shards: 0 }"),
        "gateway.shards: invalid value"
    ));
    assert!(has(
        &errors("gateway: { shards: many }"),
        "gateway.shards: invalid value"
    ));
}

#[test]
fn type_errors_name_their_path() {
    // Plugin attributes are validated with the rest of the file, so the upstream is there: the
    // type error is the one problem.
    let e = errors(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
routes:
  - id: r
    uri: /
    upstream_id: app
    plugins:
      openid-connect:
        client_id: c
        discovery: https://idp.example.com/.well-known/openid-configuration
        session: { secret: [not, a, string] }
"#,
    );
    // Every problem is reported (the missing client_secret and upstream too), each path once.
    let at_secret: Vec<&String> = e
        .iter()
        .filter(|e| e.starts_with("routes[0].plugins.openid-connect.session.secret"))
        .collect();
    assert_eq!(
        at_secret,
        ["routes[0].plugins.openid-connect.session.secret: expected a string, got an array"],
        "{e:?}"
    );
    let e = errors("upstreams:\n  - id: a\n    nodes: { \"h:1\": heavy }\n");
    assert!(e[0].starts_with("upstreams[0].nodes"), "{e:?}");
    let e = errors("gateway:\n  limits: { max_headers: -1 }\n");
    assert!(
        e[0].starts_with("gateway.limits.max_headers: invalid type: integer `-1`"),
        "{e:?}"
    );
}

#[test]
fn unknown_field_is_a_typo_error_and_apisix_field_is_unsupported() {
    let typo = errors("routes:\n  - id: r\n    uri: /\n    upstream_id: a\n    methds: [GET]\n");
    assert!(
        has(&typo, "routes[0].methds: unknown field `methds`"),
        "{typo:?}"
    );
    assert!(has(&typo, "(did you mean `methods`?)"), "{typo:?}");
    let e = errors(
        r#"
consumers: []
upstreams:
  - id: app
    nodes: { "127.0.0.1:1": 1 }
    scheme: https
    tls: { client_cert_id: 1 }
    discovery_type: dns
routes:
  - id: r
    uri: /
    upstream_id: app
    service_id: 1
    filter_func: "function() end"
"#,
    );
    for field in [
        "consumers: APISIX attribute `consumers`",
        "upstreams[0].tls.client_cert_id: APISIX attribute `client_cert_id` is not supported by shardgate",
        "upstreams[0].discovery_type: APISIX attribute `discovery_type`",
        "routes[0].service_id: service \"1\" not found in services",
        "routes[0].filter_func: APISIX attribute `filter_func` is Lua code",
    ] {
        assert!(has(&e, field), "missing {field:?} in {e:?}");
    }
    assert_eq!(e.len(), 5, "{e:?}");
}

#[test]
fn unknown_plugins_are_named() {
    let e = errors(&format!(
        "{MINIMAL}    plugins: {{ key-auth: {{}}, syslog: {{ host: x }} }}\n"
    ));
    let supported = crate::pipeline::registry::names();
    assert!(supported.starts_with("openid-connect"), "{supported}");
    assert_eq!(
        e,
        [
            format!(
                "routes[0].plugins.key-auth: plugin `key-auth` is not supported by shardgate (supported: {supported})"
            ),
            format!(
                "routes[0].plugins.syslog: plugin `syslog` is not supported by shardgate (supported: {supported})"
            ),
        ]
    );
}

#[test]
fn env_interpolation_set_default_and_missing() {
    let env: HashMap<&str, &str> = [("PORT", "18081"), ("EMPTY", "")].into();
    let lookup = |name: &str| env.get(name).map(|v| v.to_string());
    let yaml = "upstreams:\n  - id: ${ID:-app}\n    nodes: { \"127.0.0.1:${PORT}\": 1 }\n    upstream_host: \"${EMPTY:-fallback}$${LITERAL}\"\n    pass_host: rewrite\n";
    let c = load_str_with_env(yaml, &lookup).unwrap().config;
    assert_eq!(c.upstreams[0].id, "app");
    assert_eq!(c.upstreams[0].nodes[0].port, 18081);
    assert_eq!(
        c.upstreams[0].pass_host,
        PassHost::Rewrite("fallback${LITERAL}".into())
    );

    let e = load_str_with_env(
        "a: ${MISSING}\nb: ok\nc: ${ALSO_MISSING} ${1BAD}\nd: ${UNCLOSED\n",
        &lookup,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "line 1: environment variable `MISSING` is not set (use `${MISSING:-default}` for a default)\n\
         line 3: environment variable `ALSO_MISSING` is not set (use `${ALSO_MISSING:-default}` for a default)\n\
         line 3: `${1BAD}`: `1BAD` is not a valid environment variable name\n\
         line 4: unterminated `${` (expected `}` on the same line)"
    );
}

#[test]
fn load_str_reads_the_process_environment() {
    // PATH is set in every test environment; the value only needs to survive as a string.
    let loaded = load_str("gateway: { access_log: true }\n# ${PATH}\n");
    assert!(loaded.is_ok());
}

#[test]
fn duplicate_ids_are_reported() {
    let e = errors(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
  - { id: app, nodes: { "127.0.0.1:2": 1 } }
routes:
  - { id: r, uri: /a, upstream_id: app }
  - { id: r, uri: /b, upstream_id: app }
"#,
    );
    assert_eq!(
        e,
        [
            "upstreams[1].id: duplicate id `app` (first used by upstreams[0])",
            "routes[1].id: duplicate id `r` (first used by routes[0])",
        ]
    );
}

#[test]
fn route_cross_checks_collect_every_problem() {
    let e = errors(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
routes:
  - { id: a, uri: /a, uris: [/b], upstream_id: app }
  - { id: b, uri: /b, upstream_id: nope }
  - { id: c, uri: /c }
  - { id: d, uri: /d, upstream_id: app, upstream: { nodes: { "127.0.0.1:1": 1 } } }
  - { id: e, upstream_id: app }
  - { id: f, uri: "no-slash", host: "a.*.com", methods: [get, GET], status: 2, upstream_id: app }
  - { id: g, uri: /g, host: a.com, hosts: [b.com], upstream_id: app }
"#,
    );
    let want = [
        "routes[0].uris: set `uri` or `uris`, not both",
        "routes[1].upstream_id: no upstream with id `nope`",
        "routes[2]: needs `upstream_id` or `upstream`",
        "routes[3].upstream: set `upstream_id` or `upstream`, not both",
        "routes[4]: needs `uri` or `uris`",
        "routes[5].uri: must start with `/`",
        "routes[5].host: must be a host name or `*.suffix`",
        "routes[5].methods[0]: `get` is not one of",
        "routes[5].status: must be 0 (disabled) or 1 (enabled)",
        "routes[6].hosts: set `host` or `hosts`, not both",
    ];
    for w in want {
        assert!(has(&e, w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn upstream_cross_checks() {
    let e = errors(
        r#"
upstreams:
  - { nodes: { "127.0.0.1:1": 1 } }
  - id: weights
    nodes: { "127.0.0.1:1": 0, "127.0.0.1:2": 0 }
  - id: addrs
    nodes: { "bad host:1": 1, "127.0.0.1:99999": 1, "[::1]:80": 1, "h:0": 1 }
  - { id: rewrite, pass_host: rewrite, nodes: { "a:1": 1 } }
  - { id: chash, type: chash, nodes: { "a:1": 1 } }
  - { id: ewma, type: ewma, nodes: { "a:1": 1 } }
  - { id: grpc, scheme: grpc, nodes: { "a:1": 1 } }
  - { id: timeouts, timeout: { connect: 0, read: -1 }, nodes: { "a:1": 1 } }
  - { id: active, checks: { active: { type: grpc } }, nodes: { "a:1": 1 } }
  - { id: empty, nodes: {} }
  - { id: consumer, type: chash, hash_on: consumer, key: x, nodes: { "a:1": 1 } }
  - { id: badvar, type: chash, key: http_x, nodes: { "a:1": 1 } }
"#,
    );
    let want = [
        "upstreams[0].id: required",
        "upstreams[1].nodes: at least one node needs a weight > 0",
        "upstreams[2].nodes[0]: `bad host:1` is not a valid host:port",
        "upstreams[2].nodes[1]: `127.0.0.1:99999` is not a valid host:port",
        "upstreams[2].nodes[3]: `h:0` is not a valid host:port",
        "upstreams[3].upstream_host: required when pass_host is `rewrite`",
        "upstreams[4].key: required with `type: chash`",
        "upstreams[5].type: APISIX balancer `ewma` is not supported by shardgate",
        "upstreams[6].scheme: `grpc` is not supported by shardgate",
        "upstreams[7].timeout.connect: must be a number of seconds > 0",
        "upstreams[7].timeout.read: must be a number of seconds > 0",
        "upstreams[8].checks.active.type: unknown value `grpc` (http, https, tcp)",
        "upstreams[9].nodes: needs at least one node",
        "upstreams[10].hash_on: APISIX `hash_on: consumer` is not supported",
        "upstreams[11].key: variable `http_x` is not supported",
    ];
    for w in want {
        assert!(has(&e, w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn route_timeout_replaces_the_upstreams() {
    let c = load(
        r#"
upstreams:
  - { id: app, timeout: { connect: 5, send: 6, read: 7 }, nodes: { "127.0.0.1:1": 1 } }
routes:
  - { id: own, uri: /a, upstream_id: app, timeout: { connect: 0.5, send: 1, read: 2.5 } }
  - { id: partial, uri: /b, upstream_id: app, timeout: { read: 3 } }
  - { id: inherits, uri: /c, upstream_id: app }
"#,
    )
    .config;
    let own = c.routes[0].timeout.unwrap();
    assert_eq!(
        (own.connect, own.send, own.read),
        (
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_millis(2500)
        )
    );
    // APISIX hands the route's object to the balancer as a whole: nothing comes from the upstream.
    let partial = c.routes[1].timeout.unwrap();
    assert_eq!(
        (partial.connect, partial.send, partial.read),
        (
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(3)
        )
    );
    assert_eq!(c.routes[2].timeout, None);

    let e = errors(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
routes:
  - { id: zero, uri: /a, upstream_id: app, timeout: { connect: 0, send: -1, read: 1 } }
"#,
    );
    for w in [
        "routes[0].timeout.connect: must be a number of seconds > 0",
        "routes[0].timeout.send: must be a number of seconds > 0",
    ] {
        assert!(has(&e, w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), 2, "{e:?}");
    let typo = errors("routes:\n  - { id: r, uri: /, upstream_id: a, timeout: { reed: 1 } }\n");
    assert!(
        has(&typo, "routes[0].timeout.reed: unknown field `reed`"),
        "{typo:?}"
    );
}

#[test]
fn nodes_in_every_apisix_shape() {
    let c = load(
        r#"
upstreams:
  - id: map
    scheme: https
    nodes: { "Example.COM": 2, "[::1]:8443": 1, "10.0.0.1:80": 0 }
  - id: list
    type: chash
    hash_on: header
    key: X-User
    retries: 5
    retry_timeout: 0.5
    pass_host: rewrite
    upstream_host: internal.example
    timeout: { connect: 0.25, send: 1, read: 2 }
    keepalive_pool: { size: 8, idle_timeout: 0, requests: 10 }
    nodes:
      - { host: 127.0.0.1, port: 18080, weight: 1 }
      - { host: "::1", port: 18081, weight: 3, priority: 5 }
      - { host: backend.local, port: 80, weight: 1, priority: -1, metadata: { zone: a } }
"#,
    )
    .config;
    let map = &c.upstreams[0];
    assert_eq!(
        map.nodes[0],
        Node {
            addr: "example.com:443".into(),
            host: "example.com".into(),
            port: 443,
            weight: 2,
            priority: 0
        }
    );
    assert_eq!(
        map.nodes[1],
        Node {
            addr: "[::1]:8443".into(),
            host: "::1".into(),
            port: 8443,
            weight: 1,
            priority: 0
        }
    );
    assert_eq!(map.nodes[2].weight, 0);
    assert_eq!(map.retries, 2);
    let list = &c.upstreams[1];
    assert_eq!(
        list.balancer,
        Balancer::Chash(HashOn::Header("x-user".into()))
    );
    assert_eq!(list.nodes[1].addr, "[::1]:18081");
    assert_eq!(list.nodes[2].addr, "backend.local:80");
    let priorities: Vec<i32> = list.nodes.iter().map(|n| n.priority).collect();
    assert_eq!(priorities, [0, 5, -1], "APISIX's default priority is 0");
    assert_eq!(list.retries, 5);
    assert_eq!(list.retry_timeout, Some(Duration::from_millis(500)));
    assert_eq!(list.pass_host, PassHost::Rewrite("internal.example".into()));
    assert_eq!(list.timeout.connect, Duration::from_millis(250));
    assert_eq!(
        list.keepalive_pool,
        KeepalivePool {
            size: 8,
            idle_timeout: Duration::ZERO,
            requests: 10
        }
    );
}

#[test]
fn passive_checks_and_own_health_settings() {
    let c = load(
        r#"
upstreams:
  - id: apisix
    nodes: { "a:1": 1 }
    checks:
      passive:
        healthy: { successes: 2 }
        unhealthy: { http_failures: 4, tcp_failures: 1, timeouts: 2 }
    health: { cool_down: 30 }
  - id: defaults
    nodes: { "a:1": 1 }
    checks: { passive: {} }
  - id: ours
    nodes: { "a:1": 1 }
    health: { failures: 5, cool_down: 1.5 }
"#,
    )
    .config;
    let h = &c.upstreams[0].health;
    assert_eq!(
        (h.tcp_failures, h.timeouts, h.http_failures, h.successes),
        (1, 2, 4, 2)
    );
    assert_eq!(h.http_statuses, vec![429, 500, 503]);
    assert_eq!(h.cool_down, Duration::from_secs(30));
    let d = &c.upstreams[1].health;
    assert_eq!(
        (d.tcp_failures, d.timeouts, d.http_failures, d.successes),
        (2, 7, 5, 5)
    );
    let o = &c.upstreams[2].health;
    assert_eq!((o.tcp_failures, o.timeouts, o.http_failures), (5, 5, 0));
    assert_eq!(o.cool_down, Duration::from_millis(1500));
}

#[test]
fn inline_upstreams_get_a_synthetic_id_and_index() {
    let c = load(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
routes:
  - id: 7
    uris: [/a, /b/*]
    host: API.example.com
    methods: [GET, POST]
    priority: -3
    enable_websocket: true
    upstream: { nodes: { "127.0.0.1:2": 1 } }
  - { uri: /x, upstream_id: app, status: 0 }
"#,
    )
    .config;
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(c.upstreams[1].id, "route:7");
    let r = &c.routes[0];
    assert_eq!(r.id, "7");
    assert_eq!(r.upstream, 1);
    assert_eq!(r.hosts, ["api.example.com"]);
    assert_eq!(
        r.methods.iter().collect::<Vec<_>>(),
        [Method::Get, Method::Post]
    );
    assert_eq!(r.priority, -3);
    assert!(r.enable_websocket);
    assert_eq!(
        c.routes[1].id, "1",
        "APISIX standalone: the index when no id"
    );
    assert!(!c.routes[1].enabled);
}

const OIDC_ROUTE: &str = r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
routes:
  - id: protected
    uri: /app/*
    upstream_id: app
    plugins:
      openid-connect:
        client_id: gw
        client_secret: secret
        discovery: http://127.0.0.1:9000/.well-known/openid-configuration
        session: { secret: 0123456789abcdef }
"#;

#[test]
fn openid_connect_problems_carry_the_route_path() {
    let yaml = OIDC_ROUTE
        .replace("0123456789abcdef", "short")
        .replace("http://127.0.0.1:9000", "http://idp.example.com")
        + "        response_mode: form_post\n";
    let e = errors(&yaml);
    assert_eq!(
        e,
        [
            "routes[0].plugins.openid-connect.response_mode: APISIX attribute `response_mode` is not supported by shardgate",
            "routes[0].plugins.openid-connect.session.secret: must be at least 16 bytes",
        ]
    );
    // Plain http to a remote IdP works, as in APISIX, with a warning naming the risk.
    let remote = OIDC_ROUTE.replace("http://127.0.0.1:9000", "http://idp.example.com");
    let w = load(&remote).warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].path, "routes[0].plugins.openid-connect.discovery");
    assert!(
        w[0].message
            .starts_with("uses plain http to a non-loopback host")
    );
}

#[test]
fn redirect_uri_equal_to_a_protected_route_is_a_warning() {
    let ok = load(&format!(
        "{OIDC_ROUTE}        redirect_uri: https://gw.example.com/app/callback\n"
    ));
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);

    let clash = load(&format!(
        "{OIDC_ROUTE}        redirect_uri: https://gw.example.com/app/\n  - id: home\n    uri: /home\n    upstream_id: app\n"
    ));
    assert_eq!(clash.warnings.len(), 1, "{:?}", clash.warnings);
    assert_eq!(
        clash.warnings[0].path,
        "routes[0].plugins.openid-connect.redirect_uri"
    );
    assert!(clash.warnings[0].message.contains("no session state found"));

    // A relative redirect_uri also gets its own warning (the URL is built from the Host header).
    let not_relative = |w: Vec<Problem>| -> Vec<Problem> {
        w.into_iter()
            .filter(|w| !w.message.starts_with("is relative"))
            .collect()
    };
    let exact =
        OIDC_ROUTE.replace("uri: /app/*", "uri: /login") + "        redirect_uri: /login?x=1\n";
    let w = not_relative(load(&exact).warnings);
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("`/login`"), "{w:?}");

    let unserved = not_relative(
        load(&format!(
            "{OIDC_ROUTE}        redirect_uri: /elsewhere/cb\n"
        ))
        .warnings,
    );
    assert_eq!(unserved.len(), 1);
    assert!(
        unserved[0]
            .message
            .contains("not matched by any route with openid-connect")
    );
}

/// The example from APISIX's openid-connect docs (Authorization code flow), plus options.
#[test]
fn realistic_apisix_openid_connect_config_parses() {
    let yaml = r#"
routes:
  - id: auth-with-oidc
    uri: /anything/*
    plugins:
      openid-connect:
        bearer_only: false
        session:
          secret: ${SESSION_SECRET:-change-me-to-a-long-random-value}
          cookie: { lifetime: 7200 }
        client_id: apisix
        client_secret: ${OIDC_CLIENT_SECRET}
        discovery: https://keycloak.example.com/realms/quickstart-realm/.well-known/openid-configuration
        scope: openid profile
        redirect_uri: http://127.0.0.1:9080/anything/callback
        logout_path: /anything/logout
        post_logout_redirect_uri: https://example.com/
        use_pkce: true
        unauth_action: auth
        required_scopes: [profile]
        set_userinfo_header: true
        ssl_verify: false
        timeout: 10
        introspection_endpoint_auth_method: client_secret_post
        claim_validator:
          issuer: { valid_issuers: ["https://keycloak.example.com/realms/quickstart-realm"] }
          audience: { required: true, match_with_client_id: true }
        session_contents: { access_token: true, id_token: true, user: true }
        authorization_params: { prompt: login, kc_idp_hint: github }
        claim_schema:
          type: object
          properties: { email: { type: string } }
          required: [email]
        par: { enabled: false }
        dpop: { enabled: false }
        proxy_opts: { no_proxy: localhost }
    upstream:
      type: roundrobin
      nodes:
        "httpbin.org:80": 1
#END
"#;
    let env = |name: &str| (name == "OIDC_CLIENT_SECRET").then(|| "from-env".to_owned());
    let loaded = load_str_with_env(yaml, &env).unwrap();
    let oidc = loaded.config.routes[0]
        .plugins
        .conf::<crate::plugins::openid_connect::RouteAuth>()
        .unwrap();
    assert_eq!(oidc.client_secret.as_ref().unwrap().expose(), "from-env");
    assert_eq!(oidc.session.absolute_timeout, 7200);
    assert_eq!(oidc.session.cookie_same_site, SameSite::Lax);
    assert_eq!(oidc.unauth_action, UnauthAction::Auth);
    assert!(!oidc.ssl_verify);
    assert_eq!(oidc.authorization_params["kc_idp_hint"], "github");
    assert!(oidc.claim_validator.audience.match_with_client_id);
    // APISIX warns on ssl_verify: false too (check_tls_bool); nothing else here is risky.
    let warned: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        warned,
        ["routes[0].plugins.openid-connect.ssl_verify"],
        "{:?}",
        loaded.warnings
    );
    let dbg = format!("{:?}", loaded.config);
    assert!(
        !dbg.contains("from-env") && !dbg.contains("change-me"),
        "secrets leak into Debug"
    );
}

#[test]
fn config_error_display_is_one_line_per_problem() {
    let e = ConfigError {
        problems: vec![Problem::new("a.b", "bad"), Problem::new("", "worse")],
    };
    assert_eq!(e.to_string(), "a.b: bad\nworse");
}

#[test]
fn load_file_reports_unreadable_files() {
    let e = load_file(Path::new("/nonexistent/shardgate.yaml")).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert!(e.problems[0].message.starts_with("cannot read"));
}

#[test]
fn config_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Config>();
    check::<Loaded>();
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardgate-config-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn route_vars_remote_addrs_and_parameters_load_and_match() {
    let loaded = load(
        r#"
upstreams:
  - id: app
    nodes: { "127.0.0.1:18080": 1 }
routes:
  - id: canary
    uri: /user/:id
    upstream_id: app
    vars: [["http_x_canary", "==", "1"], ["OR", ["arg_v", "~~", "^2"], ["arg_v", "==", null]]]
    remote_addrs: ["10.0.0.0/8", "::1"]
  - id: stable
    uri: /user/:id
    remote_addr: 10.0.0.0/8
    upstream_id: app
"#,
    );
    let routes = &loaded.config.routes;
    assert!(routes[0].vars.is_some() && routes[1].vars.is_none());
    let table = crate::route::RouteTable::build(routes);
    let req = |remote: &str| crate::route::Request {
        host: None,
        path: b"/user/7",
        method: b"GET",
        remote_addr: Some(remote.parse().unwrap()),
    };
    struct Canary;
    impl crate::route::VarSource for Canary {
        fn var(&self, name: &str) -> Option<&[u8]> {
            (name == "http_x_canary").then_some(b"1")
        }
    }
    let m = table.find_match(&req("10.1.1.1"), &Canary).unwrap();
    assert_eq!(m.route, 0);
    assert_eq!(m.param(&table, b"/user/7", "id"), Some(&b"7"[..]));
    assert_eq!(
        table
            .find_match(&req("10.1.1.1"), &crate::route::NoVars)
            .map(|m| m.route),
        Some(1)
    );
    assert_eq!(
        table.find_match(&req("::1"), &Canary).map(|m| m.route),
        Some(0)
    );
    assert_eq!(table.find_match(&req("11.0.0.1"), &Canary), None);
}

#[test]
fn bad_vars_remote_addrs_and_parameters_name_their_path() {
    let e = errors(
        r#"
upstreams:
  - id: app
    nodes: { "127.0.0.1:18080": 1 }
routes:
  - id: a
    uri: /x
    upstream_id: app
    vars: [["arg_a", "==", "1"], ["arg_b", "=~", "x"]]
  - id: b
    uris: [/ok/:id, "/bad/*a/*b"]
    upstream_id: app
    remote_addrs: ["10.0.0.0/8", "nope"]
  - id: c
    uri: /x
    upstream_id: app
    remote_addr: 10.0.0.1
    remote_addrs: ["10.0.0.2"]
  - id: d
    uri: /x
    upstream_id: app
    filter_func: "function(vars) return true end"
"#,
    );
    for needle in [
        "routes[0].vars[1]: failed to validate the 'vars' expression: invalid operator '=~'",
        "routes[1].uris[1]: only one `*` segment per URI",
        "routes[1].remote_addrs[1]: `nope` is not an IPv4/IPv6 address or CIDR",
        "routes[2].remote_addrs: set `remote_addr` or `remote_addrs`, not both",
        "routes[3].filter_func: APISIX attribute `filter_func` is Lua code, which shardgate cannot run",
    ] {
        assert!(has(&e, needle), "missing {needle:?} in {e:?}");
    }
    assert_eq!(e.len(), 5, "{e:?}");
}

#[test]
fn https_upstream_tls_settings() {
    let c = load(
        r#"
upstreams:
  - { id: default, scheme: https, nodes: { "a:1": 1 } }
  - id: full
    scheme: https
    nodes: { "a:1": 1 }
    tls:
      verify: false
      client_cert: |
        -----BEGIN CERTIFICATE-----
        MIIB
        -----END CERTIFICATE-----
      client_key: "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
  - { id: plain, nodes: { "a:1": 1 } }
"#,
    );
    let u = &c.config.upstreams;
    assert_eq!(
        u[0].tls,
        Some(UpstreamTls {
            verify: true,
            ca_cert: None,
            client_cert: None
        }),
        "https verifies against the system roots unless told otherwise (APISIX: verify false)"
    );
    assert_eq!(u[0].nodes[0].port, 1);
    let full = u[1].tls.as_ref().expect("tls");
    assert!(!full.verify);
    assert!(matches!(
        &full.client_cert,
        Some((Pem::Inline(c), Pem::Inline(k))) if c.starts_with("-----BEGIN CERTIFICATE")
            && k.starts_with("-----BEGIN PRIVATE KEY")
    ));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.to_string().contains("upstreams[1].tls.verify: false")),
        "{:?}",
        c.warnings
    );
    assert_eq!(u[2].tls, None);

    let e = errors(
        r#"
upstreams:
  - { id: a, nodes: { "a:1": 1 }, tls: { verify: true } }
  - { id: b, scheme: https, nodes: { "a:1": 1 }, tls: { client_cert: "-----BEGIN x" } }
  - { id: c, scheme: https, nodes: { "a:1": 1 }, tls: { client_key: k.pem } }
  - { id: d, scheme: https, nodes: { "a:1": 1 }, tls: { ca_cert: /nonexistent/ca.pem } }
"#,
    );
    let want = [
        "upstreams[0].tls: only applies to `scheme: https`",
        "upstreams[1].tls.client_key: required with client_cert",
        "upstreams[2].tls.client_cert: required with client_key",
        "upstreams[3].tls.ca_cert: file `/nonexistent/ca.pem` does not exist",
    ];
    for w in want {
        assert!(has(&e, w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
    let e = errors(
        "upstreams:\n  - { id: e, scheme: https, nodes: { \"a:1\": 1 }, tls: { verfy: false } }\n",
    );
    assert!(
        has(&e, "upstreams[0].tls.verfy: unknown field `verfy`"),
        "{e:?}"
    );
}

#[test]
fn a_typo_in_a_key_gets_a_hint_and_no_repeated_path() {
    let e = load_str("gateway:\n  listn: [\"127.0.0.1:1\"]\n").expect_err("typo");
    let text = e.to_string();
    assert!(
        text.starts_with("gateway.listn: unknown field `listn`"),
        "{text}"
    );
    assert!(text.contains("(did you mean `listen`?)"), "{text}");
    // A name far from every expected one gets no guess.
    let e = load_str("gateway:\n  zzzzzzzz: 1\n").expect_err("unknown");
    assert!(!e.to_string().contains("did you mean"), "{e}");
}

#[test]
fn the_report_names_the_file_and_counts_the_problems() {
    let text = super::report(
        std::path::Path::new("/etc/shardgate/config.yaml"),
        "routes[0].uri: required\nroutes[1].uri: required",
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "/etc/shardgate/config.yaml: 2 problems in the config:"
    );
    assert_eq!(lines[1], "routes[0].uri: required");
    assert_eq!(lines.len(), 3);
}

/// An `openid-connect` block whose `client_id` tells which object it came from.
fn oidc_block(indent: &str, client_id: &str) -> String {
    format!(
        "{indent}openid-connect:\n\
         {indent}  client_id: {client_id}\n\
         {indent}  client_secret: secret\n\
         {indent}  bearer_only: true\n\
         {indent}  discovery: http://127.0.0.1:9000/.well-known/openid-configuration\n"
    )
}

fn client_id(plugins: &RoutePlugins) -> Option<&str> {
    plugins
        .conf::<crate::plugins::openid_connect::RouteAuth>()
        .map(|o| o.client_id.as_str())
}

#[test]
fn plugins_merge_route_over_plugin_config_over_service() {
    let p = "      ";
    let r = "    ";
    let yaml = format!(
        r#"
upstreams:
  - {{ id: app, nodes: {{ "127.0.0.1:1": 1 }} }}
services:
  - id: svc
    upstream_id: app
    plugins:
{svc}plugin_configs:
  - id: pc
    plugins:
{pc}  - id: empty
    plugins: {{}}
routes:
  - {{ id: all-three, uri: /a, service_id: svc, plugin_config_id: pc, plugins: {{ openid-connect: {{ client_id: route, client_secret: s, bearer_only: true, discovery: "http://127.0.0.1:9000/.well-known/openid-configuration" }} }} }}
  - {{ id: svc-pc, uri: /b, service_id: svc, plugin_config_id: pc }}
  - {{ id: svc-only, uri: /c, service_id: svc }}
  - {{ id: svc-empty-pc, uri: /d, service_id: svc, plugin_config_id: empty }}
  - {{ id: pc-only, uri: /e, upstream_id: app, plugin_config_id: pc }}
  - {{ id: none, uri: /f, upstream_id: app }}
  - id: route-over-service
    uri: /g
    service_id: svc
    plugins:
{route}"#,
        svc = oidc_block(p, "service"),
        pc = oidc_block(p, "plugin_config"),
        route = oidc_block(&format!("{r}  "), "route"),
    );
    let c = load(&yaml).config;
    let got: Vec<Option<&str>> = c.routes.iter().map(|r| client_id(&r.plugins)).collect();
    assert_eq!(
        got,
        [
            Some("route"),
            Some("plugin_config"),
            Some("service"),
            Some("service"),
            Some("plugin_config"),
            None,
            Some("route"),
        ]
    );
    assert_eq!(c.services.len(), 1);
    assert_eq!(client_id(&c.services[0].plugins), Some("service"));
    assert_eq!(c.routes[0].service, Some(0));
    assert_eq!(c.routes[5].service, None);
    assert_eq!(client_id(&c.global_plugins), None);
}

#[test]
fn global_rules_form_one_set_and_a_plugin_in_two_rules_is_refused() {
    let p = "      ";
    let yaml = format!(
        r#"
upstreams:
  - {{ id: app, nodes: {{ "127.0.0.1:1": 1 }} }}
global_rules:
  - id: 1
    plugins:
{g}  - id: 2
    plugins: {{}}
routes:
  - {{ id: r, uri: /a, upstream_id: app }}
"#,
        g = oidc_block(p, "global"),
    );
    let c = load(&yaml).config;
    assert_eq!(client_id(&c.global_plugins), Some("global"));
    assert_eq!(c.global_rules.len(), 2);
    assert_eq!(c.global_rules[0].id, "1");
    assert_eq!(client_id(&c.global_rules[1].plugins), None);
    // The route keeps its own (empty) set: global rules run in addition, not merged in.
    assert_eq!(client_id(&c.routes[0].plugins), None);

    let twice = yaml.replace(
        "  - id: 2\n    plugins: {}\n",
        &format!("  - id: 2\n    plugins:\n{}", oidc_block(p, "again")),
    );
    let e = errors(&twice);
    assert_eq!(
        e,
        [
            "global_rules[1].plugins.openid-connect: plugin `openid-connect` is also configured in \
             global_rules[0]; APISIX drops a plugin configured in two global rules, shardgate \
             refuses the config"
        ]
    );
}

#[test]
fn services_give_routes_their_upstream_hosts_and_websocket() {
    let c = load(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
  - { id: other, nodes: { "127.0.0.1:2": 1 } }
services:
  - id: svc
    name: shop
    desc: the shop
    labels: { team: a }
    upstream_id: app
    hosts: [Shop.Example.com, "*.shop.example.com"]
    enable_websocket: true
  - id: inline
    upstream: { nodes: { "127.0.0.1:3": 1 } }
routes:
  - { id: inherit, uri: /a, service_id: svc }
  - { id: own, uri: /b, service_id: svc, upstream_id: other, hosts: [own.example.com], enable_websocket: false }
  - { id: inline, uri: /c, service_id: inline }
"#,
    )
    .config;
    let [inherit, own, inline] = &c.routes[..] else {
        panic!("three routes");
    };
    assert_eq!(c.upstreams[inherit.upstream].id, "app");
    assert_eq!(inherit.hosts, ["shop.example.com", "*.shop.example.com"]);
    assert!(inherit.enable_websocket);
    assert_eq!(c.upstreams[own.upstream].id, "other");
    assert_eq!(own.hosts, ["own.example.com"]);
    assert!(!own.enable_websocket);
    assert_eq!(c.upstreams[inline.upstream].id, "service:inline");
    assert!(inline.hosts.is_empty() && !inline.enable_websocket);
    // The inherited hosts route requests.
    let table = crate::route::RouteTable::build(&c.routes);
    assert_eq!(
        table.find(Some(b"a.shop.example.com"), b"/a", b"GET"),
        Some(0)
    );
    assert_eq!(table.find(Some(b"other.example.com"), b"/a", b"GET"), None);
}

#[test]
fn dangling_references_and_missing_ids_name_both_paths() {
    let e = errors(
        r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
services:
  - { id: svc, upstream_id: nope }
  - { id: bare }
  - { upstream_id: app }
  - { id: svc, upstream_id: app }
  - { id: lua, upstream_id: app, script: "local x = 1 -- lua" }
plugin_configs:
  - { id: pc }
  - { id: pc2, plugins: {}, }
  - { id: pc2, plugins: {} }
global_rules:
  - { plugins: {} }
routes:
  - { id: r0, uri: /a, service_id: svc1 }
  - { id: r1, uri: /b, upstream_id: app, plugin_config_id: pc9 }
  - { id: r2, uri: /c, service_id: bare }
  - { id: r3, uri: /d, upstream_id: app, plugins: { key-auth: {} } }
"#,
    );
    let want = [
        "services[0].upstream_id: upstream \"nope\" not found in upstreams",
        "services[2].id: required",
        "services[3].id: duplicate id `svc` in services",
        "services[4].script: APISIX attribute `script` is Lua code, which shardgate cannot run",
        "plugin_configs[0].plugins: required",
        "plugin_configs[2].id: duplicate id `pc2` in plugin_configs",
        "global_rules[0].id: required",
        "routes[0].service_id: service \"svc1\" not found in services",
        "routes[1].plugin_config_id: plugin_config \"pc9\" not found in plugin_configs",
        "routes[2]: needs `upstream_id` or `upstream`: neither the route nor its service `bare` has one",
        "routes[3].plugins.key-auth: plugin `key-auth` is not supported by shardgate",
    ];
    for w in want {
        assert!(has(&e, w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn active_checks_take_apisix_names_and_defaults() {
    let c = load(
        r#"
upstreams:
  - id: defaults
    nodes: { "a:1": 1 }
    checks: { active: {} }
  - id: full
    nodes: { "a:1": 1 }
    checks:
      active:
        type: https
        timeout: 0.5
        concurrency: 3
        host: health.example
        port: 8443
        http_path: /status
        https_verify_certificate: false
        req_headers: ["X-Probe: 1", "User-Agent: probe"]
        healthy: { interval: 2, http_statuses: [200], successes: 1 }
        unhealthy: { interval: 3, http_statuses: [500], http_failures: 1, tcp_failures: 1, timeouts: 1 }
"#,
    );
    let d = c.config.upstreams[0].active.as_ref().expect("active");
    assert_eq!(
        *d,
        ActiveCheck {
            kind: ActiveKind::Http,
            timeout: Duration::from_secs(1),
            concurrency: 10,
            host: None,
            port: None,
            http_path: "/".into(),
            https_verify_certificate: true,
            req_headers: Vec::new(),
            healthy_interval: Duration::from_secs(1),
            healthy_statuses: vec![200, 302],
            successes: 2,
            unhealthy_interval: Duration::from_secs(1),
            unhealthy_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        },
        "APISIX's checks.active defaults"
    );
    let f = c.config.upstreams[1].active.as_ref().expect("active");
    assert_eq!(f.kind, ActiveKind::Https);
    assert_eq!(f.port, Some(8443));
    assert_eq!(f.host.as_deref(), Some("health.example"));
    assert!(!f.https_verify_certificate);
    assert_eq!(
        f.req_headers,
        [
            ("X-Probe".into(), "1".into()),
            ("User-Agent".into(), "probe".into())
        ]
    );
    assert_eq!(f.unhealthy_interval, Duration::from_secs(3));
    assert_eq!(
        (f.http_failures, f.tcp_failures, f.timeouts, f.successes),
        (1, 1, 1, 1)
    );

    let e = errors(
        r#"
upstreams:
  - id: bad
    nodes: { "a:1": 1 }
    checks:
      active:
        http_path: "no-slash"
        concurrency: 0
        req_headers: ["no colon"]
        http_method: POST
        healthy: { successes: 0, http_statuses: [99] }
        unhealthy: { interval: 0, timeouts: 255 }
"#,
    );
    let want = [
        "upstreams[0].checks.active.http_path: must be an origin-form path",
        "upstreams[0].checks.active.concurrency: must be at least 1",
        "upstreams[0].checks.active.req_headers[0]: must be `Name: value`",
        "upstreams[0].checks.active.http_method: APISIX attribute `http_method` is not supported",
        "upstreams[0].checks.active.healthy.successes: must be 1-254",
        "upstreams[0].checks.active.healthy.http_statuses[0]: must be 200-599",
        "upstreams[0].checks.active.unhealthy.interval: must be a number of seconds > 0",
        "upstreams[0].checks.active.unhealthy.timeouts: must be 1-254",
    ];
    for w in want {
        assert!(has(&e, w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn secret_references_resolve_at_each_load_and_never_show() {
    let yaml = OIDC_ROUTE
        .replace("client_secret: secret", "client_secret: $ENV://OIDC_SECRET")
        .replace(
            "session: { secret: 0123456789abcdef }",
            "session: { secret: \"$env://OIDC_JSON/session\" }",
        );
    let first = |name: &str| match name {
        "OIDC_SECRET" => Some("first-client-secret".to_owned()),
        "OIDC_JSON" => Some(r#"{"session":"first-session-secret-0123"}"#.to_owned()),
        _ => None,
    };
    let loaded = load_str_with_env(&yaml, &first).unwrap();
    let oidc = loaded.config.routes[0]
        .plugins
        .conf::<crate::plugins::openid_connect::RouteAuth>()
        .unwrap();
    assert_eq!(
        oidc.client_secret.as_ref().unwrap().expose(),
        "first-client-secret"
    );
    assert_eq!(
        oidc.session.secret.as_ref().unwrap().expose(),
        "first-session-secret-0123"
    );
    assert!(!format!("{:?}", loaded.config).contains("first-"));

    // A reload resolves again: a rotated variable is picked up.
    let rotated = |name: &str| match name {
        "OIDC_SECRET" => Some("rotated-client-secret".to_owned()),
        other => first(other),
    };
    let reloaded = load_str_with_env(&yaml, &rotated).unwrap();
    let oidc = reloaded.config.routes[0]
        .plugins
        .conf::<crate::plugins::openid_connect::RouteAuth>()
        .unwrap();
    assert_eq!(
        oidc.client_secret.as_ref().unwrap().expose(),
        "rotated-client-secret"
    );

    // Unresolvable: one problem at the path, naming the reference and not the value.
    let short = |name: &str| match name {
        "OIDC_JSON" => Some(r#"{"session":"too-short"}"#.to_owned()),
        _ => None,
    };
    let e = load_str_with_env(&yaml, &short).unwrap_err().to_string();
    assert_eq!(
        e,
        "routes[0].plugins.openid-connect.client_secret: secret reference $ENV://OIDC_SECRET: environment variable OIDC_SECRET is not set\n\
         routes[0].plugins.openid-connect.session.secret: must be at least 16 bytes"
    );
    let vault = OIDC_ROUTE.replace(
        "client_secret: secret",
        "client_secret: $secret://vault/oidc/client_secret",
    );
    assert_eq!(
        errors(&vault),
        [
            "routes[0].plugins.openid-connect.client_secret: secret manager \"vault\" is not supported by shardgate (use an $ENV:// reference)"
        ]
    );
}

#[test]
fn secret_references_resolve_in_services_and_plugin_configs() {
    let block = |indent: &str| {
        format!(
            "{indent}openid-connect:\n{indent}  client_id: c\n{indent}  client_secret: $ENV://OIDC_SECRET\n\
             {indent}  bearer_only: true\n\
             {indent}  discovery: http://127.0.0.1:9000/.well-known/openid-configuration\n"
        )
    };
    let yaml = format!(
        "upstreams:\n  - {{ id: app, nodes: {{ \"127.0.0.1:1\": 1 }} }}\n\
         services:\n  - id: s\n    upstream_id: app\n    plugins:\n{}\
         plugin_configs:\n  - id: p\n    plugins:\n{}\
         routes:\n  - {{ id: a, uri: /a, service_id: s }}\n  - {{ id: b, uri: /b, upstream_id: app, plugin_config_id: p }}\n",
        block("      "),
        block("      ")
    );
    let env = |name: &str| (name == "OIDC_SECRET").then(|| "resolved-secret".to_owned());
    let loaded = load_str_with_env(&yaml, &env).unwrap();
    for route in &loaded.config.routes {
        let oidc = route
            .plugins
            .conf::<crate::plugins::openid_connect::RouteAuth>()
            .unwrap();
        assert_eq!(
            oidc.client_secret.as_ref().unwrap().expose(),
            "resolved-secret"
        );
    }
    let e = errors(&yaml);
    assert!(
        has(&e, "services[0].plugins.openid-connect.client_secret")
            && has(&e, "plugin_configs[0].plugins.openid-connect.client_secret"),
        "{e:?}"
    );
}

/// A resolved value that a plugin then refuses is quoted by its reference, never by its value,
/// in the whole-file parse and in the per-entry one `validate` runs after a type error.
#[test]
fn problems_in_resolved_values_never_show_the_value() {
    let yaml = r#"
upstreams:
  - { id: app, nodes: { "127.0.0.1:1": 1 } }
routes:
  - id: r
    uri: /r
    upstream_id: app
    plugins:
      redirect: { regex_uri: ["$ENV://REDIRECT_RE", "/x"] }
"#;
    let env = |name: &str| (name == "REDIRECT_RE").then(|| "(unclosed-secret-regex".to_owned());
    for yaml in [yaml.to_owned(), format!("{yaml}  - {{ id: t, uri: 7 }}\n")] {
        let e = load_str_with_env(&yaml, &env).unwrap_err().to_string();
        assert!(!e.contains("unclosed-secret-regex"), "{e}");
        assert!(
            e.contains("routes[0].plugins.redirect.regex_uri[0]: invalid regex_uri (<value of $ENV://REDIRECT_RE>, /x)"),
            "{e}"
        );
    }
}

/// One bad route (or upstream) does not hide the problems of the others: `validate` lists them
/// all, each path once.
#[test]
fn type_errors_in_several_entries_are_all_reported() {
    let yaml = r#"
gateway:
  limits: { max_headers: many }
upstreams:
  - id: a
    nodes: { "h:1": heavy }
  - id: b
    nodes: { "127.0.0.1:1": 1 }
routes:
  - id: r1
    uri: 7
    priority: high
    upstream_id: b
  - id: r2
    uri: /ok
    upstream_id: b
    plugins:
      openid-connect:
        client_id: 123
        client_secret: $ENV://MISSING_SECRET
        discovery: https://idp.example.com/.well-known/openid-configuration
        ssl_verify: "yes"
        session: { secret: "$ENV://MISSING_SESSION" }
  - id: r3
    uris: /not-a-list
    upstream_id: b
"#;
    let e = errors(yaml);
    let paths: Vec<&str> = e.iter().map(|p| p.split(": ").next().unwrap()).collect();
    for want in [
        "upstreams[0].nodes.h:1",
        "routes[0].uri",
        "routes[1].plugins.openid-connect.client_id",
        "routes[1].plugins.openid-connect.client_secret",
        "routes[1].plugins.openid-connect.ssl_verify",
        "routes[1].plugins.openid-connect.session.secret",
        "routes[2].uris",
        "gateway.limits.max_headers",
    ] {
        assert_eq!(
            paths.iter().filter(|p| **p == want).count(),
            1,
            "{want} in {e:#?}"
        );
    }
    assert!(
        e.contains(&"routes[1].plugins.openid-connect.session.secret: secret reference $ENV://MISSING_SESSION: environment variable MISSING_SESSION is not set".to_owned()),
        "{e:#?}"
    );
}

#[test]
fn gateway_trusted_addresses_load_and_bad_entries_name_their_path() {
    let c = load(
        r#"
gateway:
  trusted_addresses: ["10.0.0.0/8", "::1"]
upstreams:
  - id: app
    nodes: { "127.0.0.1:18080": 1 }
routes:
  - id: a
    uri: /x
    upstream_id: app
"#,
    )
    .config;
    let set = c.gateway.trusted_addresses.as_ref().unwrap();
    assert!(set.contains("10.1.2.3".parse().unwrap()));
    assert!(set.contains("::1".parse().unwrap()));
    assert!(!set.contains("11.0.0.1".parse().unwrap()));
    assert!(
        load(
            "upstreams:\n  - id: app\n    nodes: { \"127.0.0.1:18080\": 1 }\n\
         routes:\n  - id: a\n    uri: /x\n    upstream_id: app\n"
        )
        .config
        .gateway
        .trusted_addresses
        .is_none()
    );

    for (list, needle) in [
        (
            "[\"10.0.0.0/8\", \"10.0.0.0/33\"]",
            "gateway.trusted_addresses[1]: invalid ip address: `10.0.0.0/33`",
        ),
        (
            "[]",
            "gateway.trusted_addresses: needs at least one address",
        ),
    ] {
        let e = errors(&format!(
            "gateway:\n  trusted_addresses: {list}\nupstreams:\n  - id: app\n    nodes: {{ \"127.0.0.1:18080\": 1 }}\n\
             routes:\n  - id: a\n    uri: /x\n    upstream_id: app\n"
        ));
        assert!(has(&e, needle), "missing {needle:?} in {e:?}");
    }
}
