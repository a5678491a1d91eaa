#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::RoutePlugins;

fn route(uris: &[&str], hosts: &[&str], methods: &[Method], priority: i64) -> RouteConf {
    let mut set = MethodSet::ANY;
    for &m in methods {
        set.insert(m);
    }
    RouteConf {
        id: String::new(),
        name: None,
        uris: uris.iter().map(|s| s.to_string()).collect(),
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        methods: set,
        priority,
        upstream: 0,
        enable_websocket: false,
        keep_client_identity_headers: false,
        enabled: true,
        plugins: RoutePlugins::default(),
    }
}

fn find(table: &RouteTable, host: Option<&str>, path: &str, method: &str) -> Option<usize> {
    table.find(host.map(str::as_bytes), path.as_bytes(), method.as_bytes())
}

#[test]
fn exact_uri_matches_only_itself() {
    let t = RouteTable::build(&[route(&["/hello"], &[], &[], 0)]);
    assert_eq!(find(&t, None, "/hello", "GET"), Some(0));
    assert_eq!(find(&t, None, "/hello/", "GET"), None);
    assert_eq!(find(&t, None, "/hell", "GET"), None);
    assert_eq!(find(&t, None, "/hello2", "GET"), None);
}

#[test]
fn prefix_uri_matches_below_but_not_the_bare_directory() {
    let t = RouteTable::build(&[route(&["/api/*"], &[], &[], 0)]);
    assert_eq!(find(&t, None, "/api/", "GET"), Some(0));
    assert_eq!(find(&t, None, "/api/v1/users", "GET"), Some(0));
    assert_eq!(find(&t, None, "/api", "GET"), None);
    assert_eq!(find(&t, None, "/apix", "GET"), None);
    let star = RouteTable::build(&[route(&["/api*"], &[], &[], 0)]);
    assert_eq!(find(&star, None, "/api", "GET"), Some(0));
    assert_eq!(find(&star, None, "/apix", "GET"), Some(0));
    let all = RouteTable::build(&[route(&["/*"], &[], &[], 0)]);
    assert_eq!(find(&all, None, "/", "GET"), Some(0));
    assert_eq!(find(&all, None, "/anything/at/all", "GET"), Some(0));
}

#[test]
fn any_of_several_uris_matches() {
    let t = RouteTable::build(&[route(&["/a", "/b/*"], &[], &[], 0)]);
    assert_eq!(find(&t, None, "/a", "GET"), Some(0));
    assert_eq!(find(&t, None, "/b/c", "GET"), Some(0));
    assert_eq!(find(&t, None, "/c", "GET"), None);
}

#[test]
fn exact_host_is_case_insensitive_and_ignores_the_port() {
    let t = RouteTable::build(&[route(&["/*"], &["api.example.com"], &[], 0)]);
    assert_eq!(find(&t, Some("api.example.com"), "/", "GET"), Some(0));
    assert_eq!(find(&t, Some("API.Example.COM:8443"), "/", "GET"), Some(0));
    assert_eq!(find(&t, Some("api.example.com."), "/", "GET"), Some(0));
    assert_eq!(find(&t, Some("www.example.com"), "/", "GET"), None);
    assert_eq!(
        find(&t, None, "/", "GET"),
        None,
        "a host route needs a Host"
    );
}

#[test]
fn wildcard_host_needs_at_least_one_label() {
    let t = RouteTable::build(&[route(&["/*"], &["*.example.com"], &[], 0)]);
    assert_eq!(find(&t, Some("a.example.com"), "/", "GET"), Some(0));
    assert_eq!(find(&t, Some("a.b.example.com:80"), "/", "GET"), Some(0));
    assert_eq!(find(&t, Some("example.com"), "/", "GET"), None);
    assert_eq!(find(&t, Some("badexample.com"), "/", "GET"), None);
    assert_eq!(find(&t, Some(".example.com"), "/", "GET"), None);
}

#[test]
fn ipv6_host_header_keeps_brackets_and_drops_port() {
    let mut buf = [0u8; MAX_HOST];
    assert_eq!(normalize_host(b"[::1]:8080", &mut buf), Some(&b"[::1]"[..]));
    assert_eq!(
        normalize_host(b"Example.COM:80", &mut buf),
        Some(&b"example.com"[..])
    );
    assert_eq!(normalize_host(b"", &mut buf), None);
    assert_eq!(normalize_host(b"[::1", &mut buf), None);
    let long = vec![b'a'; 300];
    assert_eq!(normalize_host(&long, &mut buf), None);
}

#[test]
fn routes_without_hosts_match_any_host() {
    let t = RouteTable::build(&[route(&["/x"], &[], &[], 0)]);
    assert_eq!(find(&t, Some("whatever.test"), "/x", "GET"), Some(0));
    assert_eq!(find(&t, None, "/x", "GET"), Some(0));
    let long = "a".repeat(400);
    assert_eq!(find(&t, Some(&long), "/x", "GET"), Some(0));
}

#[test]
fn methods_filter_and_empty_means_all() {
    let t = RouteTable::build(&[
        route(&["/m"], &[], &[Method::Get, Method::Post], 0),
        route(&["/m"], &[], &[], 0),
    ]);
    assert_eq!(find(&t, None, "/m", "GET"), Some(0));
    assert_eq!(find(&t, None, "/m", "POST"), Some(0));
    assert_eq!(find(&t, None, "/m", "DELETE"), Some(1));
    assert_eq!(
        find(&t, None, "/m", "get"),
        Some(1),
        "method tokens are case-sensitive"
    );
    assert_eq!(find(&t, None, "/m", "PROPFIND"), Some(1));
    let only = RouteTable::build(&[route(&["/m"], &[], &[Method::Put], 0)]);
    assert_eq!(find(&only, None, "/m", "GET"), None);
}

#[test]
fn higher_priority_wins() {
    let t = RouteTable::build(&[route(&["/p"], &[], &[], 0), route(&["/p"], &[], &[], 10)]);
    assert_eq!(find(&t, None, "/p", "GET"), Some(1));
    // Priority applies across different patterns too: a prefix with a higher priority wins.
    let t = RouteTable::build(&[route(&["/p"], &[], &[], 0), route(&["/*"], &[], &[], 5)]);
    assert_eq!(find(&t, None, "/p", "GET"), Some(1));
    let negative = RouteTable::build(&[route(&["/p"], &[], &[], -1), route(&["/*"], &[], &[], 0)]);
    assert_eq!(find(&negative, None, "/p", "GET"), Some(1));
}

#[test]
fn exact_beats_prefix() {
    let t = RouteTable::build(&[route(&["/a/*"], &[], &[], 0), route(&["/a/b"], &[], &[], 0)]);
    assert_eq!(find(&t, None, "/a/b", "GET"), Some(1));
    assert_eq!(find(&t, None, "/a/c", "GET"), Some(0));
}

#[test]
fn longer_prefix_beats_shorter() {
    let t = RouteTable::build(&[
        route(&["/*"], &[], &[], 0),
        route(&["/a/*"], &[], &[], 0),
        route(&["/a/b/*"], &[], &[], 0),
    ]);
    assert_eq!(find(&t, None, "/a/b/c", "GET"), Some(2));
    assert_eq!(find(&t, None, "/a/x", "GET"), Some(1));
    assert_eq!(find(&t, None, "/x", "GET"), Some(0));
}

#[test]
fn longer_prefix_that_excludes_the_method_falls_back_to_shorter() {
    let t = RouteTable::build(&[
        route(&["/*"], &[], &[], 0),
        route(&["/a/*"], &[], &[Method::Post], 0),
    ]);
    assert_eq!(find(&t, None, "/a/x", "GET"), Some(0));
    assert_eq!(find(&t, None, "/a/x", "POST"), Some(1));
}

#[test]
fn host_specific_beats_hostless_and_exact_host_beats_wildcard() {
    let t = RouteTable::build(&[
        route(&["/*"], &[], &[], 0),
        route(&["/*"], &["*.example.com"], &[], 0),
        route(&["/*"], &["api.example.com"], &[], 0),
    ]);
    assert_eq!(find(&t, Some("api.example.com"), "/", "GET"), Some(2));
    assert_eq!(find(&t, Some("www.example.com"), "/", "GET"), Some(1));
    assert_eq!(find(&t, Some("other.test"), "/", "GET"), Some(0));
}

#[test]
fn ties_keep_config_order() {
    let t = RouteTable::build(&[route(&["/t"], &[], &[], 0), route(&["/t"], &[], &[], 0)]);
    assert_eq!(find(&t, None, "/t", "GET"), Some(0));
    let t = RouteTable::build(&[route(&["/t/*"], &[], &[], 3), route(&["/t/*"], &[], &[], 3)]);
    assert_eq!(find(&t, None, "/t/x", "GET"), Some(0));
}

#[test]
fn disabled_routes_never_match() {
    let mut off = route(&["/d"], &[], &[], 100);
    off.enabled = false;
    let t = RouteTable::build(&[off, route(&["/*"], &[], &[], 0)]);
    assert_eq!(find(&t, None, "/d", "GET"), Some(1));
    let mut only = route(&["/d"], &[], &[], 0);
    only.enabled = false;
    assert_eq!(find(&RouteTable::build(&[only]), None, "/d", "GET"), None);
}

#[test]
fn empty_table_matches_nothing() {
    let t = RouteTable::build(&[]);
    assert_eq!(find(&t, Some("x"), "/", "GET"), None);
}

#[test]
fn hostile_inputs_do_not_panic() {
    let t = RouteTable::build(&[route(
        &["/a/*", "/b"],
        &["*.x.io", "y.io"],
        &[Method::Get],
        0,
    )]);
    for host in [
        &b""[..],
        b":",
        b"[",
        b"]:",
        b"[]",
        b"\xff\xfe",
        b"..",
        b"*.x.io",
        b" y.io ",
    ] {
        for path in [&b""[..], b"/", b"\x00", b"/a/", b"/b"] {
            let _ = t.find(Some(host), path, b"GET");
        }
    }
    assert_eq!(t.find(Some(b" y.io "), b"/b", b"GET"), Some(0));
}

#[test]
fn uri_and_host_patterns_are_checked() {
    assert!(check_uri_pattern("/ok/*").is_ok());
    assert!(check_uri_pattern("/*").is_ok());
    assert!(check_uri_pattern("no-slash").is_err());
    assert!(check_uri_pattern("/a/*/b").is_err());
    assert!(check_uri_pattern("/user/:id").is_err());
    assert!(check_uri_pattern("/a?b=c").is_err());
    assert!(check_host_pattern("api.example.com").is_ok());
    assert!(check_host_pattern("*.example.com").is_ok());
    assert!(check_host_pattern("api.*.com").is_err());
    assert!(check_host_pattern("api.example.com:80").is_err());
    assert!(check_host_pattern("*").is_err());
    assert!(check_host_pattern("a..b").is_err());
}

#[test]
fn method_set_round_trips() {
    let mut set = MethodSet::ANY;
    assert!(set.is_any() && set.allows(b"ANYTHING"));
    set.insert(Method::Purge);
    set.insert(Method::Get);
    assert_eq!(
        set.iter().map(Method::as_str).collect::<Vec<_>>(),
        ["GET", "PURGE"]
    );
    assert!(!set.allows(b"POST"));
}

#[test]
fn config_to_table_to_find() {
    let yaml = r#"
upstreams:
  - id: app
    nodes: { "127.0.0.1:18080": 1 }
routes:
  - id: catch-all
    uri: /*
    upstream_id: app
  - id: api
    uris: [/api/*, /v2/api/*]
    hosts: [api.example.com, "*.api.example.com"]
    methods: [GET, POST]
    upstream_id: app
  - id: health
    uri: /healthz
    upstream_id: app
  - id: off
    uri: /healthz
    priority: 100
    status: 0
    upstream_id: app
"#;
    let loaded = crate::config::load_str_with_env(yaml, &|_| None).unwrap();
    let t = RouteTable::build(&loaded.config.routes);
    let id = |i: Option<usize>| i.map(|i| loaded.config.routes[i].id.as_str());
    assert_eq!(
        id(find(&t, Some("api.example.com:9080"), "/api/users", "GET")),
        Some("api")
    );
    assert_eq!(
        id(find(&t, Some("eu.api.example.com"), "/v2/api/x", "POST")),
        Some("api")
    );
    assert_eq!(
        id(find(&t, Some("api.example.com"), "/api/users", "DELETE")),
        Some("catch-all")
    );
    assert_eq!(
        id(find(&t, Some("other.test"), "/api/users", "GET")),
        Some("catch-all")
    );
    assert_eq!(id(find(&t, None, "/healthz", "GET")), Some("health"));
}

#[test]
fn route_table_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RouteTable>();
}
