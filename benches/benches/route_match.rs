//! Route lookup on a 56-route table mixing exact URIs, prefixes, exact and wildcard hosts,
//! method filters, `/:param` URIs and `vars`, built the way the gateway builds it:
//! YAML -> Config -> RouteTable.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shardgate_gateway::config::load_str_with_env;
use shardgate_gateway::route::{NoVars, Request, RouteTable, VarSource};

fn config_yaml() -> String {
    let mut yaml =
        String::from("upstreams:\n  - id: app\n    nodes: { \"127.0.0.1:18080\": 1 }\nroutes:\n");
    for i in 0..20 {
        let _ = writeln!(
            yaml,
            "  - {{ id: exact{i}, uri: /svc{i}/status, upstream_id: app }}"
        );
    }
    for i in 0..20 {
        let _ = writeln!(
            yaml,
            "  - {{ id: prefix{i}, uri: /api/v{i}/*, hosts: [api{}.example.com], methods: [GET, POST], upstream_id: app }}",
            i % 5
        );
    }
    for i in 0..10 {
        let _ = writeln!(
            yaml,
            "  - {{ id: wild{i}, uris: [/tenant/{i}/*, /t{i}], hosts: [\"*.t{i}.example.com\"], upstream_id: app }}"
        );
    }
    for i in 0..3 {
        let _ = writeln!(
            yaml,
            "  - {{ id: param{i}, uri: \"/users/{i}/:id/orders/:order\", upstream_id: app }}"
        );
    }
    for i in 0..3 {
        let _ = writeln!(
            yaml,
            "  - {{ id: vars{i}, uri: /canary/{i}/*, upstream_id: app, vars: [[\"http_x_canary\", \"==\", \"{i}\"], [\"arg_v\", \"~~\", \"^v[0-9]+$\"]] }}"
        );
    }
    yaml
}

/// The variables of the `vars_hit` request.
struct CanaryVars;

impl VarSource for CanaryVars {
    fn var(&self, name: &str) -> Option<&[u8]> {
        match name {
            "http_x_canary" => Some(b"2"),
            "arg_v" => Some(b"v12"),
            _ => None,
        }
    }
}

/// (name, Host header, path, method, expect a match)
type Case = (
    &'static str,
    Option<&'static [u8]>,
    &'static [u8],
    &'static [u8],
    bool,
);

fn route_match(c: &mut Criterion) {
    let loaded = match load_str_with_env(&config_yaml(), &|_| None) {
        Ok(loaded) => loaded,
        Err(e) => panic!("bench config is invalid:\n{e}"),
    };
    assert_eq!(loaded.config.routes.len(), 56);
    let table = RouteTable::build(&loaded.config.routes);
    let cases: [Case; 4] = [
        ("exact_hit", None, b"/svc17/status", b"GET", true),
        (
            "prefix_host_hit",
            Some(b"API3.example.com:9080"),
            b"/api/v18/users/42/orders",
            b"POST",
            true,
        ),
        (
            "wildcard_host_hit",
            Some(b"eu.west.t7.example.com"),
            b"/tenant/7/dashboard",
            b"GET",
            true,
        ),
        (
            "miss",
            Some(b"api1.example.com"),
            b"/nothing/here/at/all",
            b"GET",
            false,
        ),
    ];
    let mut group = c.benchmark_group("route_match");
    for (name, host, path, method, hit) in cases {
        assert_eq!(table.find(host, path, method).is_some(), hit, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| table.find(black_box(host), black_box(path), black_box(method)))
        });
    }
    let path: &[u8] = b"/users/1/42/orders/7";
    let req = Request {
        host: None,
        path,
        method: b"GET",
        remote_addr: None,
    };
    let m = table.find_match(&req, &NoVars);
    assert_eq!(
        m.and_then(|m| m.param(&table, path, "order")),
        Some(&b"7"[..])
    );
    group.bench_function("param_hit", |b| {
        b.iter(|| table.find_match(black_box(&req), &NoVars))
    });
    let req = Request {
        path: b"/canary/2/x",
        ..req
    };
    assert!(table.find_match(&req, &CanaryVars).is_some());
    group.bench_function("vars_hit", |b| {
        b.iter(|| table.find_match(black_box(&req), &CanaryVars))
    });
    group.finish();
}

criterion_group!(benches, route_match);
criterion_main!(benches);
