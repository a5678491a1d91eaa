//! The smallest end-to-end check: a request goes through the real binary to a real upstream.
mod support;

use support::{Gateway, Upstream, get};

#[test]
fn proxies_a_get_and_sets_forwarding_headers() {
    let up = Upstream::echo();
    let yaml = format!(
        r#"
gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
  shards: 2
upstreams:
  - id: app
    nodes: {{ "{}": 1 }}
routes:
  - id: all
    uri: /*
    upstream_id: app
"#,
        up.node()
    );
    let gw = Gateway::start(&yaml, &[]);
    let r = get(gw.addr(), "/hello?x=1", &[("X-Forwarded-For", "10.0.0.1")]);
    assert_eq!(r.status, 200, "{}", gw.log());
    let seen = &up.requests()[0];
    assert_eq!(seen.target, "/hello?x=1");
    assert_eq!(seen.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("connection"), None);
    let missing = get(gw.addr(), "/", &[("Host", "x")]);
    assert_eq!(missing.status, 200);
    assert!(
        gw.metrics()
            .contains("shardgate_http_requests_total{route=\"all\",code=\"200\"} 2")
    );
}
