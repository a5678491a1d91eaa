//! `gateway.config_provider: etcd` against a real etcd member (Debian's `etcd-server`, started on
//! loopback by the test): objects in APISIX's layout are served, changes are watched, a bad object
//! is skipped and named, and an unreachable or compacted etcd never takes the last good config away.

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
