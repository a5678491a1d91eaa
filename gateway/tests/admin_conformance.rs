//! Admin API conformance: the request/response pairs of APISIX's Admin API documentation
//! (docs/en/latest/admin-api.md: "Example API usage" of Route, Service, Upstream, Global Rule,
//! Plugin Config and Plugin; "Force Delete"; the V3 body format, paging and filtering), sent to
//! shardgate's Admin API over a real etcd member. Bodies are the documentation's own.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::etcd::Etcd;
use support::{Gateway, Response, request};

const ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
const VIEWER_KEY: &str = "4054f7cf07e344346cd3f287985e76a2";

fn gateway(etcd: &Etcd) -> Gateway {
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin:
    listen: "127.0.0.1:{{admin}}"
    admin_key:
      - {{ name: admin, key: "{ADMIN_KEY}", role: admin }}
      - {{ name: viewer, key: "{VIEWER_KEY}", role: viewer }}
  config_provider: etcd
  etcd: {{ host: ["{}"], timeout: 3 }}
"#,
        etcd.endpoint()
    );
    Gateway::start(&yaml, &["--shards", "1"])
}

fn call(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    request(
        gw.admin_addr(),
        method,
        path,
        &[
            ("X-API-KEY", ADMIN_KEY),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// The call answers `status`; its JSON body is returned.
fn expect(gw: &Gateway, method: &str, path: &str, body: &str, status: u16) -> Value {
    let r = call(gw, method, path, body);
    assert_eq!(
        r.status,
        status,
        "{method} {path} {body}\n-> {}\n{}",
        r.text(),
        gw.log()
    );
    r.json()
}

fn stored(etcd: &Etcd, key: &str) -> Value {
    serde_json::from_str(&etcd.get(key).unwrap_or_else(|| panic!("{key} not in etcd")))
        .expect("JSON in etcd")
}

#[test]
fn routes_as_documented() {
    let etcd = Etcd::start();
    let gw = gateway(&etcd);
    // Create a route.
    let v = expect(
        &gw,
        "PUT",
        "/apisix/admin/routes/1",
        r#"{
            "uri": "/index.html",
            "hosts": ["foo.com", "*.bar.com"],
            "remote_addrs": ["127.0.0.0/8"],
            "methods": ["PUT", "GET"],
            "enable_websocket": true,
            "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}
        }"#,
        201,
    );
    assert_eq!(v["key"], "/apisix/routes/1");
    assert_eq!(v["value"]["id"], "1");
    assert_eq!(v["value"]["uri"], "/index.html");
    assert_eq!(v["value"]["hosts"], json!(["foo.com", "*.bar.com"]));
    assert!(v["value"]["create_time"].is_u64() && v["value"]["update_time"].is_u64());
    assert_eq!(
        stored(&etcd, "/apisix/routes/1")["methods"],
        json!(["PUT", "GET"])
    );

    // Add an upstream node, update its weight, delete a node.
    let nodes = |v: &Value| v["value"]["upstream"]["nodes"].clone();
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"upstream": {"nodes": {"127.0.0.1:1981": 1}}}"#,
        200,
    );
    assert_eq!(nodes(&v), json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 1}));
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"upstream": {"nodes": {"127.0.0.1:1981": 10}}}"#,
        200,
    );
    assert_eq!(
        nodes(&v),
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 10})
    );
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"upstream": {"nodes": {"127.0.0.1:1980": null}}}"#,
        200,
    );
    assert_eq!(nodes(&v), json!({"127.0.0.1:1981": 10}));
    // An array is replaced whole.
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"methods": ["GET", "POST"]}"#,
        200,
    );
    assert_eq!(v["value"]["methods"], json!(["GET", "POST"]));
    // Sub path PATCH replaces the attribute.
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1/upstream/nodes",
        r#"{"127.0.0.1:1982": 1}"#,
        200,
    );
    assert_eq!(nodes(&v), json!({"127.0.0.1:1982": 1}));
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1/methods",
        r#"["POST", "DELETE", "PATCH"]"#,
        200,
    );
    assert_eq!(v["value"]["methods"], json!(["POST", "DELETE", "PATCH"]));
    // Disable, enable.
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"status": 0}"#,
        200,
    );
    assert_eq!(v["value"]["status"], 0);
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"status": 1}"#,
        200,
    );
    assert_eq!(v["value"]["status"], 1);
    assert_eq!(v["value"]["uri"], "/index.html");
    assert_eq!(stored(&etcd, "/apisix/routes/1")["status"], 1);

    // V3 single-resource shape: key, value, createdIndex, modifiedIndex.
    let v = expect(&gw, "GET", "/apisix/admin/routes/1", "", 200);
    assert_eq!(v["key"], "/apisix/routes/1");
    let created = v["createdIndex"].as_i64().expect("createdIndex");
    let modified = v["modifiedIndex"].as_i64().expect("modifiedIndex");
    assert!(modified > created, "{v}");

    // A route that expires (`?ttl=`): etcd removes it when its lease ends.
    expect(
        &gw,
        "PUT",
        "/apisix/admin/routes/2?ttl=2",
        r#"{"uri": "/aa/index.html", "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}"#,
        201,
    );
    assert!(etcd.get("/apisix/routes/2").is_some());
    let deadline = Instant::now() + Duration::from_secs(30);
    while etcd.get("/apisix/routes/2").is_some() {
        assert!(Instant::now() < deadline, "the ttl route never expired");
        thread::sleep(Duration::from_millis(200));
    }
    let v = expect(&gw, "GET", "/apisix/admin/routes/2", "", 404);
    assert_eq!(v["error_msg"], "Key not found");
}

#[test]
fn services_upstreams_global_rules_plugin_configs_as_documented() {
    let etcd = Etcd::start();
    let gw = gateway(&etcd);

    // Service: create, add/update/delete a node, replace the nodes by sub path.
    expect(
        &gw,
        "PUT",
        "/apisix/admin/services/201",
        r#"{
            "plugins": {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 503, "key": "remote_addr"}},
            "enable_websocket": true,
            "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}
        }"#,
        201,
    );
    let nodes = |v: &Value| v["value"]["upstream"]["nodes"].clone();
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/services/201",
        r#"{"upstream": {"nodes": {"127.0.0.1:1981": 1}}}"#,
        200,
    );
    assert_eq!(nodes(&v), json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 1}));
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/services/201",
        r#"{"upstream": {"nodes": {"127.0.0.1:1981": 10}}}"#,
        200,
    );
    assert_eq!(
        nodes(&v),
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 10})
    );
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/services/201",
        r#"{"upstream": {"nodes": {"127.0.0.1:1980": null}}}"#,
        200,
    );
    assert_eq!(nodes(&v), json!({"127.0.0.1:1981": 10}));
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/services/201/upstream/nodes",
        r#"{"127.0.0.1:1982": 1}"#,
        200,
    );
    assert_eq!(nodes(&v), json!({"127.0.0.1:1982": 1}));
    assert_eq!(v["value"]["plugins"]["limit-count"]["count"], 2);

    // Upstream: the same steps on `nodes`.
    expect(
        &gw,
        "PUT",
        "/apisix/admin/upstreams/100",
        r#"{"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}"#,
        201,
    );
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/upstreams/100",
        r#"{"nodes": {"127.0.0.1:1981": 1}}"#,
        200,
    );
    assert_eq!(
        v["value"]["nodes"],
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 1})
    );
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/upstreams/100",
        r#"{"nodes": {"127.0.0.1:1981": 10}}"#,
        200,
    );
    assert_eq!(
        v["value"]["nodes"],
        json!({"127.0.0.1:1980": 1, "127.0.0.1:1981": 10})
    );
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/upstreams/100",
        r#"{"nodes": {"127.0.0.1:1980": null}}"#,
        200,
    );
    assert_eq!(v["value"]["nodes"], json!({"127.0.0.1:1981": 10}));
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/upstreams/100/nodes",
        r#"{"127.0.0.1:1982": 1}"#,
        200,
    );
    assert_eq!(v["value"]["nodes"], json!({"127.0.0.1:1982": 1}));
    assert_eq!(v["value"]["type"], "roundrobin");

    // Force delete: an upstream in use by a route (numeric ids, as in the documentation).
    expect(
        &gw,
        "PUT",
        "/apisix/admin/upstreams/1",
        r#"{"nodes": {"127.0.0.1:8080": 1}, "type": "roundrobin"}"#,
        201,
    );
    let v = expect(
        &gw,
        "PUT",
        "/apisix/admin/routes/1",
        r#"{"uri": "/*", "upstream_id": 1}"#,
        201,
    );
    assert_eq!(v["value"]["upstream_id"], 1);
    assert_eq!(v["key"], "/apisix/routes/1");
    let in_use =
        json!({"error_msg": "can not delete this upstream, route [1] is still using it now"});
    assert_eq!(
        expect(&gw, "DELETE", "/apisix/admin/upstreams/1", "", 400),
        in_use
    );
    assert_eq!(
        expect(
            &gw,
            "DELETE",
            "/apisix/admin/upstreams/1?force=anyvalue",
            "",
            400
        ),
        in_use
    );
    assert_eq!(
        expect(
            &gw,
            "DELETE",
            "/apisix/admin/upstreams/1?force=true",
            "",
            200
        ),
        json!({"deleted": "1", "key": "/apisix/upstreams/1"})
    );
    assert_eq!(etcd.get("/apisix/upstreams/1"), None);
    expect(&gw, "DELETE", "/apisix/admin/routes/1", "", 200);

    // Global rule: plugins only; sub path PATCH of `plugins`.
    let v = expect(
        &gw,
        "PUT",
        "/apisix/admin/global_rules/1",
        r#"{"plugins": {"ip-restriction": {"whitelist": ["127.0.0.0/8"]}}}"#,
        201,
    );
    assert_eq!(v["key"], "/apisix/global_rules/1");
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/global_rules/1/plugins",
        r#"{"ip-restriction": {"whitelist": ["10.0.0.0/8", "127.0.0.1"]}}"#,
        200,
    );
    assert_eq!(
        v["value"]["plugins"]["ip-restriction"]["whitelist"],
        json!(["10.0.0.0/8", "127.0.0.1"])
    );
    // Refused by the plugin's own checks, before etcd.
    let v = expect(
        &gw,
        "PATCH",
        "/apisix/admin/global_rules/1/plugins",
        r#"{"ip-restriction": {"whitelist": ["not an address"]}}"#,
        400,
    );
    assert!(
        v["error_msg"].as_str().unwrap_or("").contains("whitelist"),
        "{v}"
    );
    expect(&gw, "DELETE", "/apisix/admin/global_rules/1", "", 200);

    // Plugin config: plugins, desc, labels; in use by a route, it stays.
    let v = expect(
        &gw,
        "PUT",
        "/apisix/admin/plugin_configs/1",
        r#"{"desc": "customer xxxx", "labels": {"version": "v2", "build": "16", "env": "production"},
            "plugins": {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 503}}}"#,
        201,
    );
    assert_eq!(v["value"]["desc"], "customer xxxx");
    expect(
        &gw,
        "PUT",
        "/apisix/admin/routes/pc",
        r#"{"uri": "/pc", "plugin_config_id": 1, "upstream_id": "100"}"#,
        201,
    );
    let v = expect(&gw, "DELETE", "/apisix/admin/plugin_configs/1", "", 400);
    assert_eq!(
        v["error_msg"],
        "can not delete this plugin_config, route [pc] is still using it now"
    );
}

#[test]
fn lists_paging_filters_plugins_and_refusals() {
    let etcd = Etcd::start();
    let gw = gateway(&etcd);
    for i in 0..12 {
        let name = if i % 2 == 0 { "test-even" } else { "odd" };
        let labels = if i < 3 {
            r#", "labels": {"env": "prod"}"#
        } else {
            ""
        };
        let service = if i == 5 {
            r#", "service_id": "s1""#
        } else {
            ""
        };
        if i == 5 {
            expect(
                &gw,
                "PUT",
                "/apisix/admin/services/s1",
                r#"{"upstream": {"nodes": {"127.0.0.1:1980": 1}}}"#,
                201,
            );
        }
        expect(
            &gw,
            "PUT",
            &format!("/apisix/admin/routes/r{i}"),
            &format!(
                r#"{{"uri": "/foo/{i}", "name": "{name}"{labels}{service}, "upstream": {{"nodes": {{"127.0.0.1:1980": 1}}}}}}"#
            ),
            201,
        );
    }
    // Multiple resources: list + total, each with key/value/createdIndex/modifiedIndex.
    let v = expect(&gw, "GET", "/apisix/admin/routes", "", 200);
    assert_eq!(v["total"], 12);
    assert_eq!(v["list"].as_array().map(Vec::len), Some(12));
    assert!(v["list"][0]["createdIndex"].is_i64(), "{v}");
    // Paging, in creation order: 12 routes, pages of 10.
    let v = expect(
        &gw,
        "GET",
        "/apisix/admin/routes?page=2&page_size=10",
        "",
        200,
    );
    assert_eq!(v["total"], 12);
    let keys: Vec<&str> = v["list"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["key"].as_str())
        .collect();
    assert_eq!(keys, ["/apisix/routes/r10", "/apisix/routes/r11"]);
    let v = expect(
        &gw,
        "GET",
        "/apisix/admin/routes?page=1&page_size=5",
        "",
        400,
    );
    assert_eq!(v["error_msg"], "page_size must be between 10 and 500");
    // Filtering: name, label, uri; an empty value does not restrict.
    let v = expect(
        &gw,
        "GET",
        "/apisix/admin/routes?name=test&uri=foo&label=",
        "",
        200,
    );
    assert_eq!(v["total"], 6);
    let v = expect(&gw, "GET", "/apisix/admin/routes?label=env", "", 200);
    assert_eq!(v["total"], 3);
    let v = expect(&gw, "GET", "/apisix/admin/routes?uri=/foo/1", "", 200);
    // /foo/1, /foo/10, /foo/11 (a pattern, as APISIX's).
    assert_eq!(v["total"], 3);
    // Reference filter.
    let v = expect(
        &gw,
        "GET",
        "/apisix/admin/routes?filter=service_id%3Ds1",
        "",
        200,
    );
    assert_eq!(v["total"], 1);
    assert_eq!(v["list"][0]["key"], "/apisix/routes/r5");

    // Plugins.
    let r = request(
        gw.admin_addr(),
        "GET",
        "/apisix/admin/plugins/list",
        &[("X-API-KEY", VIEWER_KEY)],
        b"",
    );
    assert_eq!(r.status, 200);
    let names = r.json();
    for p in ["openid-connect", "limit-count", "cors", "ip-restriction"] {
        assert!(
            names.as_array().is_some_and(|a| a.contains(&json!(p))),
            "{names}"
        );
    }
    assert!(!names.as_array().is_some_and(|a| {
        a.iter()
            .any(|n| n.as_str().is_some_and(|n| n.starts_with("test-")))
    }));
    let v = expect(&gw, "GET", "/apisix/admin/plugins/key-auth", "", 404);
    assert_eq!(v["error_msg"], "plugin not found: key-auth");
    let v = expect(
        &gw,
        "GET",
        "/apisix/admin/schema/plugins/limit-count",
        "",
        501,
    );
    assert!(
        v["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("no JSON Schema"),
        "{v}"
    );

    // ssls: refused by name, with what to use instead; nothing reaches etcd.
    let v = expect(
        &gw,
        "PUT",
        "/apisix/admin/ssls/1",
        r#"{"cert": "x", "key": "y", "snis": ["a.test"]}"#,
        404,
    );
    assert!(
        v["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("gateway.tls"),
        "{v}"
    );
    assert_eq!(etcd.get("/apisix/ssls/1"), None);
    let v = expect(&gw, "GET", "/apisix/admin/consumers", "", 404);
    assert_eq!(v["error_msg"], "unsupported resource type: consumers");
    // APISIX's id syntax.
    expect(
        &gw,
        "PUT",
        "/apisix/admin/routes/bad%20id",
        r#"{"uri": "/x"}"#,
        400,
    );
    // A sub path is for PATCH only.
    expect(&gw, "GET", "/apisix/admin/routes/r1/uri", "", 404);
}
