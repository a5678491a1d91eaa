//! Which node gets a request: `nodes[].priority` (APISIX: lower priorities only when every higher
//! node is unavailable). Every test runs under both drivers.
#[macro_use]
mod support;

use support::{Gateway, Upstream, dead_node, get};

both_drivers!(backup_nodes_serve_only_when_every_primary_is_unavailable);

fn backup_nodes_serve_only_when_every_primary_is_unavailable(driver: &str) {
    let primary = Upstream::tagged("primary");
    let backup = Upstream::tagged("backup");
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
upstreams:
  - id: healthy
    nodes:
      - {{ host: 127.0.0.1, port: {pp}, weight: 1, priority: 10 }}
      - {{ host: 127.0.0.1, port: {bp}, weight: 100 }}
  - id: primary-down
    nodes:
      - {{ host: 127.0.0.1, port: {dp}, weight: 1, priority: 10 }}
      - {{ host: 127.0.0.1, port: {bp}, weight: 1, priority: -1 }}
routes:
  - id: healthy
    uri: /healthy/*
    upstream_id: healthy
  - id: down
    uri: /down/*
    upstream_id: primary-down
"#,
        pp = primary.addr.port(),
        bp = backup.addr.port(),
        dp = dead_node()
            .rsplit_once(':')
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default(),
    );
    let gw = Gateway::start_on(&yaml, driver, 2);
    for i in 0..20 {
        let r = get(gw.addr(), &format!("/healthy/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(
            r.header("x-upstream"),
            Some("primary"),
            "a lower priority is unused while a higher node is up, whatever its weight"
        );
    }
    assert!(backup.requests().is_empty());
    // The primary refuses connections: GETs move down to the backup, none fails.
    for i in 0..20 {
        let r = get(gw.addr(), &format!("/down/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(r.header("x-upstream"), Some("backup"));
    }
    assert_eq!(backup.requests().len(), 20);
    gw.assert_no_panic();
}
