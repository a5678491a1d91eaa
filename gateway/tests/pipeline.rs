//! The plugin pipeline seen from outside: a plugin's successful answer (a login redirect, a
//! logout) is a response, not an error. The real `shardgate` binary, the real test IdP, a real
//! loopback upstream.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Gateway, Idp, Upstream, free_port, get};

const HTML: (&str, &str) = ("Accept", "text/html");

#[test]
fn login_redirects_and_logouts_are_responses_not_errors() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let redirect_uri = format!("{base}/callback");
    let idp = Idp::start(&[
        ("IDP_REDIRECT_URIS", &redirect_uri),
        ("IDP_POST_LOGOUT_URIS", &format!("{base}/logged-out")),
    ]);
    let up = Upstream::echo();
    let yaml = format!(
        r#"gateway:
  listen: ["127.0.0.1:{{port}}"]
  admin: {{ listen: "127.0.0.1:{{admin}}" }}
upstreams:
  - id: app
    nodes: {{ "{node}": 1 }}
routes:
  - id: web
    uri: /*
    upstream_id: app
    plugins:
      openid-connect:
        client_id: gateway
        client_secret: gateway-secret
        discovery: {discovery}
        redirect_uri: {redirect_uri}
        logout_path: /logout
        post_logout_redirect_uri: {base}/logged-out
        session: {{ secret: "session-secret-for-tests-0123456789", cookie_secure: false }}
"#,
        node = up.node(),
        discovery = idp.discovery(),
    );
    let gw = Gateway::start_with_port(port, &yaml, &["--shards", "1"]);
    gw.wait_providers_ready(Duration::from_secs(20));

    let login = get(gw.addr(), "/private", &[HTML]);
    assert_eq!(login.status, 302, "{}", login.text());
    assert!(
        login.header("location").unwrap().starts_with(&idp.issuer),
        "{:?}",
        login.headers
    );
    let logout = get(gw.addr(), "/logout", &[HTML]);
    assert_eq!(logout.status, 302, "{}", logout.text());
    // Without a session there is no id_token_hint; the IdP's end_session still takes the user back.
    let to = logout.header("location").unwrap();
    assert!(
        to.starts_with(&idp.issuer) && to.contains("post_logout_redirect_uri"),
        "{to}"
    );
    // A refusal still is an error, next to them: a callback without its login state.
    let refused = get(gw.addr(), "/callback?state=forged&code=x", &[HTML]);
    assert_eq!(refused.status, 400, "{}", refused.text());

    let metrics = gw.metrics();
    assert!(
        metrics.contains("shardgate_http_requests_total{route=\"web\",code=\"302\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shardgate_errors_total{code=\"login_failed\"} 1"),
        "{metrics}"
    );
    for code in ["login_redirect", "logout"] {
        assert!(
            !metrics.contains(&format!("shardgate_errors_total{{code=\"{code}\"}}")),
            "{code} counted as an error:\n{metrics}"
        );
    }
    assert!(gw.wait_log("request rejected", Duration::from_secs(5)));
    let log = gw.log();
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("login_failed"), "{rejected:?}");
    assert!(up.requests().is_empty(), "nothing reached the upstream");
}
