//! `gateway.config_provider: etcd` against a real etcd member (Debian's `etcd-server`, started on
//! loopback by the test): objects in APISIX's layout are served, changes are watched, a bad object
//! is skipped and named, and an unreachable or compacted etcd never takes the last good config away.
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

mod support;

use support::etcd::Etcd;

#[test]
fn etcd_fixture_keeps_data_across_a_restart() {
    let mut etcd = Etcd::start();
    etcd.put("/apisix/routes/1", r#"{"uri":"/a"}"#);
    assert_eq!(
        etcd.get("/apisix/routes/1").as_deref(),
        Some(r#"{"uri":"/a"}"#)
    );
    etcd.restart();
    assert_eq!(
        etcd.get("/apisix/routes/1").as_deref(),
        Some(r#"{"uri":"/a"}"#)
    );
    assert!(etcd.compact() > 1);
    etcd.delete("/apisix/routes/1");
    assert_eq!(etcd.get("/apisix/routes/1"), None);
}

use std::thread;
use std::time::{Duration, Instant};

use support::{Gateway, Upstream, get};

/// Polls `f` until it holds (bounded); the assertion is on the state, never on the time taken.
fn eventually(what: &str, gw: &Gateway, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what}: not reached within 30 s; gateway log:\n{}",
        gw.log()
    );
}

fn etcd_gateway(etcd: &Etcd) -> Gateway {
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  config_provider: etcd
  etcd:
    host: ["{}"]
    prefix: /apisix
    timeout: 3
"#,
        etcd.endpoint()
    );
    Gateway::start(&yaml, &["--shards", "2"])
}

fn status(gw: &Gateway, path: &str) -> u16 {
    get(gw.addr(), path, &[]).status
}

fn readyz(gw: &Gateway) -> serde_json::Value {
    get(gw.admin_addr(), "/readyz", &[]).json()
}

fn route(uri: &str, up: &Upstream) -> String {
    format!(
        r#"{{"uri":"{uri}","upstream":{{"type":"roundrobin","nodes":{{"{}":1}}}},"create_time":1700000000,"update_time":1700000000}}"#,
        up.node()
    )
}

#[test]
fn routes_put_in_etcd_serve_and_deleted_ones_stop() {
    let etcd = Etcd::start();
    let up = Upstream::echo();
    etcd.put("/apisix/routes/1", &route("/one", &up));
    let gw = etcd_gateway(&etcd);
    eventually("the route read at start serves", &gw, || {
        status(&gw, "/one") == 200
    });
    let r = readyz(&gw);
    assert_eq!(r["ready"], true, "{r}");
    assert_eq!(r["etcd"]["synced"], true, "{r}");
    assert_eq!(r["etcd"]["connected"], true, "{r}");

    // A change made while the gateway runs arrives through the watch.
    etcd.put("/apisix/routes/2", &route("/two", &up));
    eventually("a route PUT in etcd serves", &gw, || {
        status(&gw, "/two") == 200
    });
    etcd.delete("/apisix/routes/1");
    eventually("a route DELETEd in etcd stops", &gw, || {
        status(&gw, "/one") == 404
    });
    assert_eq!(status(&gw, "/two"), 200);

    // A referenced upstream, changed on its own, takes effect on the route using it.
    let other = Upstream::echo();
    etcd.put(
        "/apisix/upstreams/u1",
        &format!(r#"{{"nodes":{{"{}":1}}}}"#, up.node()),
    );
    etcd.put("/apisix/routes/3", r#"{"uri":"/three","upstream_id":"u1"}"#);
    eventually("a route with upstream_id serves", &gw, || {
        status(&gw, "/three") == 200
    });
    let before = other.requests().len();
    etcd.put(
        "/apisix/upstreams/u1",
        &format!(r#"{{"nodes":{{"{}":1}}}}"#, other.node()),
    );
    eventually("the upstream change is served", &gw, || {
        status(&gw, "/three") == 200 && other.requests().len() > before
    });
}

#[test]
fn a_bad_object_is_skipped_named_and_the_rest_serves() {
    let etcd = Etcd::start();
    let up = Upstream::echo();
    let gw = etcd_gateway(&etcd);
    eventually("ready", &gw, || readyz(&gw)["ready"] == true);
    etcd.put(
        "/apisix/routes/bad",
        r#"{"uri":"/bad","upstream_id":"missing"}"#,
    );
    etcd.put("/apisix/routes/typo", r#"{"urii":"/typo"}"#);
    etcd.put("/apisix/routes/good", &route("/good", &up));
    eventually("the good route serves", &gw, || status(&gw, "/good") == 200);
    assert!(
        gw.wait_log("/apisix/routes/bad", Duration::from_secs(10)),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("etcd object skipped"), "{log}");
    assert!(log.contains("/apisix/routes/typo"), "{log}");
    assert!(log.contains("urii"), "{log}");
    assert!(log.contains("missing"), "{log}");
    assert_eq!(status(&gw, "/bad"), 404);
    assert_eq!(readyz(&gw)["etcd"]["skipped_objects"], 2);
    assert!(
        gw.metrics().contains("shardgate_etcd_skipped_objects 2"),
        "{}",
        gw.metrics()
    );
    // Fixed in etcd, it serves.
    etcd.put("/apisix/routes/bad", &route("/bad", &up));
    eventually("the fixed route serves", &gw, || status(&gw, "/bad") == 200);
}

#[test]
fn etcd_down_keeps_the_last_config_and_changes_made_meanwhile_arrive() {
    let mut etcd = Etcd::start();
    let up = Upstream::echo();
    etcd.put("/apisix/routes/1", &route("/one", &up));
    let gw = etcd_gateway(&etcd);
    eventually("serves", &gw, || status(&gw, "/one") == 200);

    etcd.offline(|meanwhile| {
        eventually("etcd reported down", &gw, || {
            readyz(&gw)["etcd"]["connected"] == false
        });
        // The last good config keeps serving, and the gateway stays ready.
        for _ in 0..20 {
            assert_eq!(status(&gw, "/one"), 200);
        }
        let r = readyz(&gw);
        assert_eq!(r["ready"], true, "{r}");
        assert!(r["etcd"]["error"].is_string(), "{r}");
        assert!(gw.metrics().contains("shardgate_etcd_connected 0"));
        meanwhile.put("/apisix/routes/2", &route("/two", &up));
        meanwhile.delete("/apisix/routes/1");
    });
    eventually("the changes made while etcd was away arrive", &gw, || {
        status(&gw, "/two") == 200 && status(&gw, "/one") == 404
    });
    eventually("etcd reported up", &gw, || {
        readyz(&gw)["etcd"]["connected"] == true
    });
    assert!(gw.metrics().contains("shardgate_etcd_connected 1"));
}

#[test]
fn a_compacted_revision_forces_a_full_read() {
    let mut etcd = Etcd::start();
    let up = Upstream::echo();
    etcd.put("/apisix/routes/1", &route("/one", &up));
    let gw = etcd_gateway(&etcd);
    eventually("serves", &gw, || status(&gw, "/one") == 200);
    etcd.offline(|meanwhile| {
        eventually("etcd reported down", &gw, || {
            readyz(&gw)["etcd"]["connected"] == false
        });
        meanwhile.put("/apisix/routes/2", &route("/two", &up));
        meanwhile.delete("/apisix/routes/1");
        meanwhile.put("/apisix/unrelated", "x");
        meanwhile.compact();
    });
    eventually("the full read after the compaction is served", &gw, || {
        status(&gw, "/two") == 200 && status(&gw, "/one") == 404
    });
    let m = gw.metrics();
    assert!(m.contains("shardgate_etcd_compactions_total 1"), "{m}");
    assert!(m.contains("shardgate_etcd_full_reads_total 2"), "{m}");
}

#[test]
fn etcd_unreachable_at_start_is_retried_and_readyz_says_why() {
    let port = support::free_port();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  config_provider: etcd
  etcd: {{ host: ["http://127.0.0.1:{port}"], timeout: 1 }}
"#
    );
    let gw = Gateway::start(&yaml, &["--shards", "1"]);
    eventually("readyz names the etcd problem", &gw, || {
        let r = get(gw.admin_addr(), "/readyz", &[]);
        r.status == 503
            && r.json()["etcd"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot reach etcd"))
    });
    assert_eq!(readyz(&gw)["etcd"]["synced"], false);
}

/// `shardgate validate --etcd -c FILE`: exit status and everything printed.
fn validate_etcd(yaml: &str) -> (i32, String) {
    let file = support::scratch_file("etcd.yaml", yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["validate", "--etcd", "-c"])
        .arg(&file)
        .output()
        .expect("run shardgate validate --etcd");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

#[test]
fn validate_etcd_reports_every_invalid_object_by_key() {
    let etcd = Etcd::start();
    let up = Upstream::echo();
    let yaml = format!(
        "gateway:\n  config_provider: etcd\n  etcd: {{ host: [\"{}\"], prefix: /apisix, timeout: 3 }}\n",
        etcd.endpoint()
    );
    etcd.put("/apisix/routes/good", &route("/good", &up));
    let (code, out) = validate_etcd(&yaml);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok"), "{out}");

    etcd.put("/apisix/routes/typo", r#"{"urii":"/typo"}"#);
    etcd.put(
        "/apisix/routes/dangling",
        r#"{"uri":"/d","upstream_id":"missing"}"#,
    );
    etcd.put("/apisix/upstreams/notjson", "{nodes");
    let (code, out) = validate_etcd(&yaml);
    assert_eq!(code, 2, "{out}");
    for needle in [
        "/apisix/routes/typo: ",
        "urii",
        "/apisix/routes/dangling: ",
        "missing",
        "/apisix/upstreams/notjson: not valid JSON",
        "3 of 4 keys",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    assert!(!out.contains("/apisix/routes/good"), "{out}");

    // The file must say where etcd is.
    let (code, out) = validate_etcd("gateway: {}\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("config_provider: etcd"), "{out}");

    // etcd down: said so, not "valid".
    let port = support::free_port();
    let (code, out) = validate_etcd(&format!(
        "gateway:\n  config_provider: etcd\n  etcd: {{ host: [\"http://127.0.0.1:{port}\"], timeout: 1 }}\n"
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot reach etcd"), "{out}");
}

#[test]
fn a_cluster_member_killed_mid_watch_changes_nothing_for_traffic() {
    let mut cluster = support::etcd::EtcdCluster::start();
    let up = Upstream::echo();
    cluster.put("/apisix/routes/1", &route("/one", &up));
    let hosts = cluster
        .endpoints()
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  config_provider: etcd
  etcd: {{ host: [{hosts}], timeout: 2 }}
"#
    );
    let gw = Gateway::start(&yaml, &["--shards", "2"]);
    eventually("serves", &gw, || status(&gw, "/one") == 200);
    // The watch is on the first member that answered: the first one listed.
    etcd_watching(&gw);
    cluster.kill(0);
    assert!(
        gw.wait_log("etcd unreachable", Duration::from_secs(20)),
        "the watch did not notice the member going: {}",
        gw.log()
    );
    for _ in 0..20 {
        assert_eq!(status(&gw, "/one"), 200);
    }
    // Written through a surviving member: the watch moves to another member and sees it.
    cluster.put("/apisix/routes/2", &route("/two", &up));
    eventually("a change after the kill arrives", &gw, || {
        status(&gw, "/two") == 200
    });
    eventually("etcd reported up again", &gw, || {
        readyz(&gw)["etcd"]["connected"] == true
    });
    cluster.delete("/apisix/routes/1");
    eventually("a delete after the kill arrives", &gw, || {
        status(&gw, "/one") == 404
    });
    assert_eq!(readyz(&gw)["ready"], true);
    // The killed member rejoins; a second member killed still leaves a quorum of two.
    cluster.restart(0);
    cluster.kill(1);
    cluster.put("/apisix/routes/3", &route("/three", &up));
    eventually("a change after the second kill arrives", &gw, || {
        status(&gw, "/three") == 200
    });
    gw.assert_no_panic();
}

fn etcd_watching(gw: &Gateway) {
    eventually("the etcd watch is up", gw, || {
        readyz(gw)["etcd"]["connected"] == true
    });
}
