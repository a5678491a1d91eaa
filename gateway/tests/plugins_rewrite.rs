//! `proxy-rewrite` through the running gateway against a real loopback upstream that echoes what it
//! received: uri templates with variables and route parameters, regex_uri captures, host, method,
//! headers add/set/remove, and the path rules a rewritten uri keeps (issue 12).
#![allow(clippy::unwrap_used)]

mod support;

use support::{Gateway, Upstream, get};

fn gateway(up: &Upstream) -> Gateway {
    let yaml = format!(
        r#"gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
upstreams:
  - id: app
    nodes: {{ "{node}": 1 }}
routes:
  - id: tpl
    uri: /api/:ver/*rest
    upstream_id: app
    plugins:
      proxy-rewrite:
        uri: /v/$ver/$rest?from=$remote_addr
        host: backend.example:8080
        method: POST
        headers:
          add: {{ X-Added: "in=$http_x_in" }}
          set: {{ X-Api-Version: v2, X-In: replaced }}
          remove: [User-Agent]
  - id: regex
    uri: /old/*
    upstream_id: app
    plugins:
      proxy-rewrite:
        regex_uri: ["^/old/([^/]+)/([^/]+)$", "/new/$2/$${{1}}", "^/old/(.*)", "/single/$1"]
        headers: {{ X-Flat: "cap=$1" }}
  - id: files
    uri: /p/*
    upstream_id: app
    plugins:
      proxy-rewrite:
        regex_uri: ["^/p/(.*)", "/files/$1"]
  - id: dots
    uri: /dots/*
    upstream_id: app
    plugins:
      proxy-rewrite:
        regex_uri: ["^/dots/(.*)", "/base/sub/../$1"]
  - id: climb
    uri: /climb/*
    upstream_id: app
    plugins:
      proxy-rewrite:
        regex_uri: ["^/climb/(.*)", "/../../$1"]
  - id: slash
    uri: /slash/*
    upstream_id: app
    plugins:
      proxy-rewrite:
        uri: /a%2F$uri
"#,
        node = up.node()
    );
    Gateway::start(&yaml, &["--shards", "1"])
}

#[test]
fn uri_template_host_method_and_headers() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let r = get(
        gw.addr(),
        "/api/2/a/b?q=1",
        &[
            ("X-In", "hello"),
            ("User-Agent", "probe/1"),
            ("X-Api-Version", "v0"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["method"], "POST");
    // Route parameters and variables in the template; the client's query appended with `&`.
    assert_eq!(seen["target"], "/v/2/a/b?from=127.0.0.1&q=1");
    let h = &seen["headers"];
    assert_eq!(h["host"], "backend.example:8080");
    assert_eq!(h["x-added"], "in=hello");
    assert_eq!(h["x-api-version"], "v2");
    assert_eq!(h["x-in"], "replaced");
    assert!(h.get("user-agent").is_none(), "{h}");
    // The client's host still reaches the upstream as X-Forwarded-Host.
    assert_eq!(h["x-forwarded-host"], "127.0.0.1");
    // Exactly one copy of a `set` header (the client's is dropped).
    let reqs = up.requests();
    let last = reqs.last().unwrap();
    assert_eq!(
        last.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-api-version"))
            .count(),
        1
    );
}

#[test]
fn regex_uri_takes_the_first_matching_pair_and_its_captures() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let r = get(gw.addr(), "/old/a/b", &[("X-Flat", "client")]).json();
    assert_eq!(r["target"], "/new/b/a");
    // Header values see the captures of the pair that matched.
    assert_eq!(r["headers"]["x-flat"], "cap=a");
    let r = get(gw.addr(), "/old/x/y/z?k=v", &[]).json();
    assert_eq!(r["target"], "/single/x/y/z?k=v");
}

#[test]
fn a_rewritten_path_stays_a_safe_normal_form() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    // A `?` decoded from the client's path is data, never a query separator.
    assert_eq!(
        get(gw.addr(), "/p/a%3Fb", &[]).json()["target"],
        "/files/a%3Fb"
    );
    // A `%` decoded from the client's path is not decoded a second time.
    assert_eq!(
        get(gw.addr(), "/p/%2541", &[]).json()["target"],
        "/files/%2541"
    );
    // Non-ASCII and spaces leave encoded.
    assert_eq!(
        get(gw.addr(), "/p/a%20b", &[]).json()["target"],
        "/files/a%20b"
    );
    // Dot-segments written in the config resolve like a client's would.
    assert_eq!(get(gw.addr(), "/dots/x", &[]).json()["target"], "/base/x");
    let before = up.requests().len();
    // A rewrite that climbs above the root, or brings an encoded slash, has no safe normal
    // form: 400, and nothing reaches the upstream.
    let r = get(gw.addr(), "/climb/x", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_path");
    let r = get(gw.addr(), "/slash/x", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.requests().len(), before);
    assert!(gw.log().contains("bad_path") || gw.log().contains("refused request path"));
    gw.assert_no_panic();
}
