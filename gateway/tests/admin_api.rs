//! APISIX's Admin API served by shardgate, against a real etcd member: two gateway processes on
//! one etcd, a route PUT through one's Admin API serves on both, a DELETE removes it from both;
//! keys and roles, validation before the write, referenced objects kept, read-only with a file.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::{Gateway, Response, Upstream, get, request};

const ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
const VIEWER_KEY: &str = "4054f7cf07e344346cd3f287985e76a2";

fn eventually(what: &str, gws: &[&Gateway], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let logs: Vec<String> = gws.iter().map(|g| g.log()).collect();
    panic!(
        "{what}: not reached within 30 s; logs:\n{}",
        logs.join("\n----\n")
    );
}

fn gateway(etcd: &Etcd) -> Gateway {
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin:
    listen: "127.0.0.1:{{admin}}"
    admin_key:
      - {{ name: admin, key: "$ENV://SG_TEST_ADMIN_KEY", role: admin }}
      - {{ name: viewer, key: "{VIEWER_KEY}", role: viewer }}
  config_provider: etcd
  etcd: {{ host: ["{}"], timeout: 3 }}
"#,
        etcd.endpoint()
    );
    Gateway::start_with_env(
        &yaml,
        &["--shards", "2"],
        &[("SG_TEST_ADMIN_KEY", ADMIN_KEY)],
    )
}

fn admin(gw: &Gateway, method: &str, path: &str, key: &str, body: &str) -> Response {
    request(
        gw.admin_addr(),
        method,
        path,
        &[("X-API-KEY", key), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

#[test]
fn a_route_put_through_one_gateway_serves_on_both() {
    let etcd = Etcd::start();
    let up = Upstream::echo();
    let a = gateway(&etcd);
    let b = gateway(&etcd);
    let both = [&a, &b];

    let r = admin(
        &a,
        "PUT",
        "/apisix/admin/upstreams/app",
        ADMIN_KEY,
        &format!(r#"{{"type":"roundrobin","nodes":{{"{}":1}}}}"#, up.node()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["key"], "/apisix/upstreams/app");
    assert_eq!(v["value"]["id"], "app");
    assert!(v["value"]["create_time"].is_u64(), "{v}");

    let r = admin(
        &a,
        "PUT",
        "/apisix/admin/routes/1",
        ADMIN_KEY,
        r#"{"uri":"/fleet","upstream_id":"app"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    eventually("both gateways serve the route", &both, || {
        get(a.addr(), "/fleet", &[]).status == 200 && get(b.addr(), "/fleet", &[]).status == 200
    });
    // What etcd holds is APISIX's value.
    let stored: serde_json::Value =
        serde_json::from_str(&etcd.get("/apisix/routes/1").expect("in etcd")).expect("json");
    assert_eq!(stored["uri"], "/fleet");
    assert_eq!(stored["id"], "1");

    // GET one and the list, through the other gateway, with the viewer key.
    let r = admin(&b, "GET", "/apisix/admin/routes/1", VIEWER_KEY, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["upstream_id"], "app");
    let r = admin(&b, "GET", "/apisix/admin/routes", VIEWER_KEY, "");
    assert_eq!(r.json()["total"], 1, "{}", r.text());
    assert_eq!(r.json()["list"][0]["key"], "/apisix/routes/1");

    // PATCH merges; the route moves.
    let r = admin(
        &a,
        "PATCH",
        "/apisix/admin/routes/1",
        ADMIN_KEY,
        r#"{"uri":"/moved"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["upstream_id"], "app");
    eventually("the patch serves on both", &both, || {
        get(b.addr(), "/moved", &[]).status == 200 && get(a.addr(), "/fleet", &[]).status == 404
    });

    // The upstream is in use: APISIX's rule keeps it.
    let r = admin(&b, "DELETE", "/apisix/admin/upstreams/app", ADMIN_KEY, "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("route [1]"),
        "{}",
        r.text()
    );

    let r = admin(&b, "DELETE", "/apisix/admin/routes/1", ADMIN_KEY, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/routes/1");
    eventually("both gateways stop serving it", &both, || {
        get(a.addr(), "/moved", &[]).status == 404 && get(b.addr(), "/moved", &[]).status == 404
    });
    let r = admin(&a, "GET", "/apisix/admin/routes/1", ADMIN_KEY, "");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error_msg"], "Key not found");
    // Not in use any more: it can go.
    eventually("the watch has seen the route go", &both, || {
        admin(&a, "DELETE", "/apisix/admin/upstreams/app", ADMIN_KEY, "").status == 200
    });
}

#[test]
fn keys_roles_and_validation_before_the_write() {
    let etcd = Etcd::start();
    let gw = gateway(&etcd);
    let r = admin(&gw, "GET", "/apisix/admin/routes", "wrong", "");
    assert_eq!(r.status, 401);
    assert!(r.json()["error_msg"].is_string());
    let r = request(gw.admin_addr(), "GET", "/apisix/admin/routes", &[], b"");
    assert_eq!(r.status, 401);
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/1",
        VIEWER_KEY,
        r#"{"uri":"/a"}"#,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(etcd.get("/apisix/routes/1"), None);

    // Refused by the same code as a file, before anything reaches etcd.
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/1",
        ADMIN_KEY,
        r#"{"urii":"/a"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("urii"),
        "{}",
        r.text()
    );
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/1",
        ADMIN_KEY,
        r#"{"uri":"/a","upstream_id":"nope"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("nope"),
        "{}",
        r.text()
    );
    let r = admin(&gw, "PUT", "/apisix/admin/routes/1", ADMIN_KEY, "not json");
    assert_eq!(r.status, 400);
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/1",
        ADMIN_KEY,
        r#"{"id":"2","uri":"/a"}"#,
    );
    assert_eq!(r.status, 400);
    let r = admin(&gw, "GET", "/apisix/admin/ssls", ADMIN_KEY, "");
    assert_eq!(r.status, 404);
    assert_eq!(etcd.get("/apisix/routes/1"), None);

    // POST makes an id.
    let r = admin(
        &gw,
        "POST",
        "/apisix/admin/upstreams",
        ADMIN_KEY,
        r#"{"nodes":{"127.0.0.1:1":1}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("/apisix/upstreams/"), "{key}");
    assert!(etcd.get(&key).is_some());
}

#[test]
fn the_admin_api_is_read_only_with_the_file_provider_and_off_without_keys() {
    let up = Upstream::echo();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin:
    listen: "127.0.0.1:{{admin}}"
    admin_key: [{{ name: admin, key: "{ADMIN_KEY}", role: admin }}]
upstreams:
  - id: app
    nodes: {{ "{}": 1 }}
routes:
  - id: r1
    uri: /a
    upstream_id: app
"#,
        up.node()
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    let r = admin(&gw, "GET", "/apisix/admin/routes/r1", ADMIN_KEY, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["uri"], "/a");
    let r = admin(&gw, "GET", "/apisix/admin/upstreams", ADMIN_KEY, "");
    assert_eq!(r.json()["total"], 1);
    // The list filters apply to the file's objects too.
    let r = admin(&gw, "GET", "/apisix/admin/routes?uri=^/a$", ADMIN_KEY, "");
    assert_eq!(r.json()["total"], 1, "{}", r.text());
    let r = admin(&gw, "GET", "/apisix/admin/routes?uri=/nope", ADMIN_KEY, "");
    assert_eq!(r.json()["total"], 0, "{}", r.text());
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/r2",
        ADMIN_KEY,
        r#"{"uri":"/b"}"#,
    );
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(
        r.json()["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("read-only")
    );

    let off = Gateway::start(
        "gateway:\n  listen: [\"127.0.0.1:{port}\"]\n  admin: { listen: \"127.0.0.1:{admin}\" }\n",
        &["--shards", "1"],
    );
    let r = admin(&off, "GET", "/apisix/admin/routes", ADMIN_KEY, "");
    assert_eq!(r.status, 404);
}
