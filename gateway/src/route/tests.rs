#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::RoutePlugins;
use std::sync::Arc;

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
        service: None,
        enable_websocket: false,
        keep_client_identity_headers: false,
        enabled: true,
        remote_addrs: IpSet::default(),
        vars: None,
        plugins: RoutePlugins::default(),
        timeout: None,
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
    assert!(check_uri_pattern("/a/*/b").is_ok());
    assert!(check_uri_pattern("/user/:id").is_ok());
    assert!(check_uri_pattern("/files/*path").is_ok());
    assert!(check_uri_pattern("/a*b/c").is_err());
    assert!(check_uri_pattern("/:a/*x/*y").is_err());
    assert!(check_uri_pattern("/user/:").is_err());
    assert!(check_uri_pattern("/:a/:b/:c/:d/:e/:f/:g/:h/:i").is_err());
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

fn with(mut r: RouteConf, f: impl FnOnce(&mut RouteConf)) -> RouteConf {
    f(&mut r);
    r
}

/// Strings for a request's variables.
struct Vars(&'static [(&'static str, &'static str)]);

impl VarSource for Vars {
    fn var(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    }
}

fn req<'a>(path: &'a str, remote: Option<&str>) -> Request<'a> {
    Request {
        host: None,
        path: path.as_bytes(),
        method: b"GET",
        remote_addr: remote.map(|r| r.parse().unwrap()),
    }
}

fn params(t: &RouteTable, path: &str) -> Option<(usize, Vec<(String, String)>)> {
    let m = t.find_match(&req(path, None), &NoVars)?;
    let names = t.param_names(&m);
    let values = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let range = m.captures.get(i).unwrap();
            (n.to_string(), path[range].to_string())
        })
        .collect();
    for n in names {
        assert!(m.param(t, path.as_bytes(), n).is_some());
    }
    Some((m.route, values))
}

/// (path, the route and captures expected)
type ParamCase = (
    &'static str,
    Option<(usize, &'static [(&'static str, &'static str)])>,
);

#[test]
fn parameter_table() {
    let t = RouteTable::build(&[
        route(&["/user/:id"], &[], &[], 0),
        route(&["/user/:id/posts/:post"], &[], &[], 0),
        route(&["/files/*path"], &[], &[], 0),
        route(&["/a/*/z"], &[], &[], 0),
        route(&["/m/*mid/:last"], &[], &[], 0),
        route(&["/slash/:x/"], &[], &[], 0),
        route(&["/user/me"], &[], &[], 0),
    ]);
    let p = |path| params(&t, path);
    let kv = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    // (path, expected route, expected captures)
    let table: &[ParamCase] = &[
        ("/user/42", Some((0, &[("id", "42")]))),
        ("/user/me", Some((6, &[]))),
        ("/user/", None),
        ("/user", None),
        ("/user/42/", None),
        ("/user/42/extra", None),
        ("/user/a.b", Some((0, &[("id", "a.b")]))),
        ("/user/7/posts/9", Some((1, &[("id", "7"), ("post", "9")]))),
        ("/user/7/posts/", None),
        ("/files/", Some((2, &[("path", "")]))),
        ("/files/a/b/c.txt", Some((2, &[("path", "a/b/c.txt")]))),
        ("/files", None),
        ("/a/b/z", Some((3, &[]))),
        ("/a/b/c/z", Some((3, &[]))),
        ("/a//z", Some((3, &[]))),
        ("/a/z", None),
        ("/a/b/zz", None),
        (
            "/m/x/y/last",
            Some((4, &[("mid", "x/y"), ("last", "last")])),
        ),
        ("/m/x/", None),
        ("/slash/1/", Some((5, &[("x", "1")]))),
        ("/slash/1", None),
    ];
    for (path, want) in table {
        let want = want.map(|(r, caps)| (r, kv(caps)));
        assert_eq!(p(path), want, "{path}");
    }
}

#[test]
fn parameter_routes_rank_as_prefixes_of_their_literal_part() {
    let t = RouteTable::build(&[
        route(&["/*"], &[], &[], 0),
        route(&["/api/:version/*"], &[], &[], 0),
        route(&["/api/v1/*"], &[], &[], 0),
    ]);
    // The longer literal prefix wins, as radixtree walks prefixes longest first.
    assert_eq!(find(&t, None, "/api/v1/users", "GET"), Some(2));
    assert_eq!(find(&t, None, "/api/v2/users", "GET"), Some(1));
    // A parameter route that does not match the whole path falls through.
    assert_eq!(find(&t, None, "/api/v2", "GET"), Some(0));
}

/// (rule as JSON, variables, expected)
type VarsCase = (&'static str, &'static [(&'static str, &'static str)], bool);

#[test]
fn vars_table() {
    let cases: &[VarsCase] = &[
        (r#"[]"#, &[], true),
        (r#"[["arg_a", "==", "json"]]"#, &[("arg_a", "json")], true),
        (r#"[["arg_a", "==", "json"]]"#, &[("arg_a", "JSON")], false),
        (r#"[["arg_a", "==", "json"]]"#, &[], false),
        (r#"[["arg_a", "json"]]"#, &[("arg_a", "json")], true),
        (r#"[["arg_a", "==", null]]"#, &[], true),
        (r#"[["arg_a", "==", null]]"#, &[("arg_a", "")], false),
        (r#"[["arg_a", "~=", "x"]]"#, &[], true),
        (r#"[["arg_a", "~=", "x"]]"#, &[("arg_a", "x")], false),
        (r#"[["arg_n", "==", 18]]"#, &[("arg_n", "18.0")], true),
        (r#"[["arg_n", "==", 18]]"#, &[("arg_n", " 0x12 ")], true),
        (r#"[["arg_n", "==", 18]]"#, &[("arg_n", "eighteen")], false),
        (r#"[["arg_n", "~=", 18]]"#, &[("arg_n", "eighteen")], true),
        (r#"[["arg_n", ">", 18]]"#, &[("arg_n", "19")], true),
        (r#"[["arg_n", ">", "18"]]"#, &[("arg_n", "18")], false),
        (r#"[["arg_n", ">=", 18]]"#, &[("arg_n", "18")], true),
        (r#"[["arg_n", "<", 18]]"#, &[("arg_n", "-1")], true),
        (r#"[["arg_n", "<=", 18]]"#, &[("arg_n", "18.5")], false),
        (r#"[["arg_n", "<", 18]]"#, &[("arg_n", "inf")], false),
        (r#"[["arg_n", ">", 18]]"#, &[], false),
        (r#"[["http_x", "~~", "^a+b$"]]"#, &[("http_x", "aab")], true),
        (r#"[["http_x", "~~", "b"]]"#, &[("http_x", "abc")], true),
        (r#"[["http_x", "~~", "^A"]]"#, &[("http_x", "abc")], false),
        (r#"[["http_x", "~*", "^A"]]"#, &[("http_x", "abc")], true),
        (r#"[["http_x", "~~", "."]]"#, &[], false),
        (r#"[["arg_c", "in", ["a", "b"]]]"#, &[("arg_c", "b")], true),
        (r#"[["arg_c", "IN", ["a", "b"]]]"#, &[("arg_c", "c")], false),
        (r#"[["arg_c", "in", [1, 2]]]"#, &[("arg_c", "1")], false),
        (
            r#"[["http_l", "has", "b"]]"#,
            &[("http_l", "a, b ,c")],
            true,
        ),
        (r#"[["http_l", "has", "b"]]"#, &[("http_l", "ab")], false),
        (r#"[["arg_a", "!", "==", "x"]]"#, &[("arg_a", "x")], false),
        (r#"[["arg_a", "!", "==", "x"]]"#, &[("arg_a", "y")], true),
        (r#"[["arg_a", "!", "~~", "^x"]]"#, &[], true),
        (
            r#"[["remote_addr", "ipmatch", ["10.0.0.0/8", "::1"]]]"#,
            &[("remote_addr", "10.2.3.4")],
            true,
        ),
        (
            r#"[["remote_addr", "ipmatch", "10.0.0.0/8"]]"#,
            &[("remote_addr", "11.2.3.4")],
            false,
        ),
        // AND of the list.
        (
            r#"[["arg_a", "==", "1"], ["arg_b", "==", "2"]]"#,
            &[("arg_a", "1"), ("arg_b", "2")],
            true,
        ),
        (
            r#"[["arg_a", "==", "1"], ["arg_b", "==", "2"]]"#,
            &[("arg_a", "1"), ("arg_b", "3")],
            false,
        ),
        // OR, !OR, AND, !AND and nesting.
        (
            r#"["OR", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]"#,
            &[("arg_b", "2")],
            true,
        ),
        (
            r#"["or", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]"#,
            &[("arg_b", "3")],
            false,
        ),
        (
            r#"["!OR", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]"#,
            &[("arg_b", "3")],
            true,
        ),
        (
            r#"["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]"#,
            &[("arg_a", "1"), ("arg_b", "2")],
            false,
        ),
        (
            r#"["AND", ["arg_a", "==", "1"], ["OR", ["arg_b", "==", "2"], ["arg_c", "==", "3"]]]"#,
            &[("arg_a", "1"), ("arg_c", "3")],
            true,
        ),
        (
            r#"["AND", ["arg_a", "==", "1"], ["OR", ["arg_b", "==", "2"], ["arg_c", "==", "3"]]]"#,
            &[("arg_a", "2"), ("arg_c", "3")],
            false,
        ),
        (
            r#"[["arg_a", "==", "1"], ["OR", ["arg_b", "==", "2"], [["arg_c", "==", "3"], ["arg_d", "==", "4"]]]]"#,
            &[("arg_a", "1"), ("arg_c", "3"), ("arg_d", "4")],
            true,
        ),
        (
            r#"[["arg_a", "==", "1"], ["OR", ["arg_b", "==", "2"], [["arg_c", "==", "3"], ["arg_d", "==", "4"]]]]"#,
            &[("arg_a", "1"), ("arg_c", "3")],
            false,
        ),
    ];
    for (rule, vars, want) in cases {
        let value: serde_json::Value = serde_json::from_str(rule).unwrap();
        let expr = Expr::compile(&value).unwrap_or_else(|e| panic!("{rule}: {e:?}"));
        assert_eq!(expr.eval(&Vars(vars)), *want, "{rule} with {vars:?}");
    }
}

#[test]
fn bad_vars_are_refused_with_the_position() {
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"a": 1}"#, "", "must be an array"),
        (r#"["arg_a", "==", "x"]"#, "", "wrapped inside brackets"),
        (r#"[["arg_a", "=", "x"]]"#, "[0]", "invalid operator '='"),
        (
            r#"[["arg_a", "?", "==", "x"]]"#,
            "[0]",
            "bad 'not' expression",
        ),
        (r#"[["arg_a"]]"#, "[0]", "invalid expression"),
        (
            r#"[["arg_a", "==", "1"], ["arg_b", "~~", "(?=x)"]]"#,
            "[1]",
            "invalid regular expression",
        ),
        (r#"["OR", ["arg_a", "==", "1"]]"#, "", "rule too short"),
        (r#"[["arg_a", ">", "abc"]]"#, "[0]", "needs a number"),
        (r#"[["arg_a", "in", "abc"]]"#, "[0]", "needs an array"),
        (
            r#"[["remote_addr", "ipmatch", "10.0.0.0/33"]]"#,
            "[0]",
            "invalid ip address",
        ),
        (
            r#"[["OR", ["a", "==", "1"], "x"]]"#,
            "[0][2]",
            "must be an array",
        ),
        (
            r#"[["arg_a", "==", true]]"#,
            "[0]",
            "string, a number or null",
        ),
    ];
    for (rule, at, message) in cases {
        let value: serde_json::Value = serde_json::from_str(rule).unwrap();
        let e = Expr::compile(&value).unwrap_err();
        assert_eq!(e.at, *at, "{rule}: {e:?}");
        assert!(e.message.contains(message), "{rule}: {e:?}");
    }
}

#[test]
fn a_route_whose_vars_do_not_match_is_skipped_for_the_next_candidate() {
    let value: serde_json::Value =
        serde_json::from_str(r#"[["http_x_canary", "==", "1"]]"#).unwrap();
    let canary = Arc::new(Expr::compile(&value).unwrap());
    let t = RouteTable::build(&[
        route(&["/*"], &[], &[], 0),
        with(route(&["/api/*"], &[], &[], 0), |r| {
            r.vars = Some(canary.clone())
        }),
        with(route(&["/api/*"], &[], &[], 0), |r| r.vars = Some(canary)),
        route(&["/api/*"], &[], &[], 0),
    ]);
    let on = Vars(&[("http_x_canary", "1")]);
    let off = Vars(&[("http_x_canary", "0")]);
    assert_eq!(
        t.find_match(&req("/api/x", None), &on).map(|m| m.route),
        Some(1)
    );
    assert_eq!(
        t.find_match(&req("/api/x", None), &off).map(|m| m.route),
        Some(3)
    );
    assert_eq!(
        t.find_match(&req("/api/x", None), &NoVars).map(|m| m.route),
        Some(3)
    );
}

#[test]
fn remote_addrs_table() {
    let set = |list: &[&str]| IpSet::parse(list.iter().copied()).unwrap();
    let t = RouteTable::build(&[
        route(&["/*"], &[], &[], 0),
        with(route(&["/*"], &[], &[], 1), |r| {
            r.remote_addrs = set(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"])
        }),
    ]);
    let cases: &[(Option<&str>, usize)] = &[
        (Some("10.1.2.3"), 1),
        (Some("11.1.2.3"), 0),
        (Some("192.168.1.7"), 1),
        (Some("192.168.1.8"), 0),
        (Some("::ffff:10.9.9.9"), 1),
        (Some("2001:db8:1::5"), 1),
        (Some("2001:db9::5"), 0),
        (None, 0),
    ];
    for (remote, want) in cases {
        let got = t.find_match(&req("/", *remote), &NoVars).map(|m| m.route);
        assert_eq!(got, Some(*want), "{remote:?}");
    }
    assert!(IpSet::parse(["10.0.0.0/33"]).is_err());
    assert!(IpSet::parse(["::1/129"]).is_err());
    assert!(IpSet::parse(["10.0.0"]).is_err());
    assert!(set(&["0.0.0.0/0"]).contains("1.2.3.4".parse().unwrap()));
    assert!(!set(&["0.0.0.0/0"]).contains("::1".parse().unwrap()));
}

#[test]
fn head_vars_read_the_request() {
    let buf = b"GET /p/a?x=1&Y=two&flag HTTP/1.1\r\nHost: Api.Example:8080\r\nX-Canary-Id: 7\r\nCookie: a=1; sid = s2 \r\n\r\n";
    let mut head = crate::http1::RequestHead::new();
    let limits = crate::http1::Limits::default();
    assert!(matches!(
        crate::http1::parse_request(buf, &limits, &mut head),
        Ok(crate::http1::Parsed::Complete)
    ));
    let v = HeadVars {
        head: &head,
        buf,
        uri: b"/p/a",
        remote_addr: "127.0.0.9",
        server_port: "9080",
        tls: false,
    };
    let get = |n: &str| v.var(n).map(|b| String::from_utf8_lossy(b).into_owned());
    assert_eq!(get("uri").as_deref(), Some("/p/a"));
    assert_eq!(get("request_uri").as_deref(), Some("/p/a?x=1&Y=two&flag"));
    assert_eq!(get("args").as_deref(), Some("x=1&Y=two&flag"));
    assert_eq!(get("arg_x").as_deref(), Some("1"));
    assert_eq!(get("arg_y").as_deref(), Some("two"));
    assert_eq!(get("arg_flag").as_deref(), Some(""));
    assert_eq!(get("arg_z"), None);
    assert_eq!(get("host").as_deref(), Some("Api.Example"));
    assert_eq!(get("http_x_canary_id").as_deref(), Some("7"));
    assert_eq!(get("http_x_canary"), None);
    assert_eq!(get("cookie_sid").as_deref(), Some("s2"));
    assert_eq!(get("cookie_a").as_deref(), Some("1"));
    assert_eq!(get("cookie_b"), None);
    assert_eq!(get("remote_addr").as_deref(), Some("127.0.0.9"));
    assert_eq!(get("scheme").as_deref(), Some("http"));
    assert_eq!(get("request_method").as_deref(), Some("GET"));
    assert_eq!(get("server_port").as_deref(), Some("9080"));
    assert_eq!(get("nonexistent"), None);
}
