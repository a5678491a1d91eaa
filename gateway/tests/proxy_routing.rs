//! APISIX route matching through the real binary: URI parameters, `vars` and `remote_addrs`
//! choose between routes (a route whose conditions fail is skipped for the next candidate).
mod support;

use support::{Gateway, Upstream, get};

/// (path, request headers, status, the upstream that serves it)
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
    &'static str,
);

#[test]
fn vars_parameters_and_remote_addrs_pick_the_route() {
    let canary = Upstream::echo();
    let stable = Upstream::echo();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  shards: 1
upstreams:
  - id: canary
    nodes: {{ "{canary}": 1 }}
  - id: stable
    nodes: {{ "{stable}": 1 }}
routes:
  - id: canary
    uri: /users/:id/orders/*rest
    upstream_id: canary
    vars: [["http_x_canary", "==", "1"], ["OR", ["arg_v", ">=", 2], ["cookie_beta", "~*", "^YES$"]]]
  - id: stable
    uri: /users/:id/orders/*rest
    upstream_id: stable
  - id: local-only
    uri: /admin/*
    remote_addrs: ["127.0.0.0/8"]
    upstream_id: canary
  - id: nobody
    uri: /private/*
    remote_addrs: ["10.0.0.0/8", "2001:db8::/32"]
    upstream_id: canary
"#,
        canary = canary.node(),
        stable = stable.node()
    );
    let gw = Gateway::start(&yaml, &[]);
    let cases: &[Case] = &[
        (
            "/users/7/orders/9/items?v=3",
            &[("X-Canary", "1")],
            200,
            "canary",
        ),
        ("/users/7/orders/?v=1", &[("X-Canary", "1")], 200, "stable"),
        (
            "/users/7/orders/9",
            &[("X-Canary", "1"), ("Cookie", "a=b; beta=yes")],
            200,
            "canary",
        ),
        ("/users/7/orders/9?v=3", &[], 200, "stable"),
        ("/users/7/orders", &[("X-Canary", "1")], 404, ""),
        ("/users//orders/1", &[("X-Canary", "1")], 404, ""),
        ("/admin/x", &[], 200, "canary"),
        ("/private/x", &[], 404, ""),
    ];
    for (path, headers, status, upstream) in cases {
        let before = (canary.requests().len(), stable.requests().len());
        let r = get(gw.addr(), path, headers);
        assert_eq!(r.status, *status, "{path} {headers:?}\n{}", gw.log());
        let after = (canary.requests().len(), stable.requests().len());
        let went = match (after.0 - before.0, after.1 - before.1) {
            (1, 0) => "canary",
            (0, 1) => "stable",
            _ => "",
        };
        assert_eq!(went, *upstream, "{path} {headers:?}");
    }
}
