//! `shardgate validate` on openid-connect configs, as a user runs it: secret references resolved
//! from the real process environment and never printed, warnings for what APISIX accepts but is
//! risky, every problem of a bad file listed.

use std::process::Command;

mod support;

use support::scratch_file;

const CLIENT_SECRET: &str = "client-secret-from-the-environment";
const SESSION_JSON: &str = r#"{"secret":"session-secret-from-json-0123456789"}"#;

fn validate(yaml: &str) -> (i32, String) {
    let file = scratch_file("oidc.yaml", yaml);
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["validate", "-c"])
        .arg(&file)
        .env("SG_TEST_CLIENT_SECRET", CLIENT_SECRET)
        .env("SG_TEST_SESSION", SESSION_JSON)
        .output()
        .expect("run shardgate validate");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), all)
}

fn route(oidc: &str) -> String {
    format!(
        r#"
upstreams:
  - id: app
    nodes: {{ "127.0.0.1:18080": 1 }}
routes:
  - id: app
    uri: /app/*
    upstream_id: app
    plugins:
      openid-connect:
{oidc}"#
    )
}

#[test]
fn secret_references_resolve_and_are_never_printed() {
    let (code, out) = validate(&route(
        r#"        client_id: gateway
        client_secret: $ENV://SG_TEST_CLIENT_SECRET
        discovery: http://idp.example.com/.well-known/openid-configuration
        scope: profile
        session: { secret: "$ENV://SG_TEST_SESSION/secret" }
"#,
    ));
    assert_eq!(code, 0, "{out}");
    for warned in [
        "warning: routes[0].plugins.openid-connect.discovery: uses plain http",
        "warning: routes[0].plugins.openid-connect.scope: does not include `openid`",
    ] {
        assert!(out.contains(warned), "missing {warned:?} in:\n{out}");
    }
    assert!(
        !out.contains(CLIENT_SECRET) && !out.contains("session-secret-from-json"),
        "{out}"
    );
}

#[test]
fn a_bad_file_lists_every_problem_without_secret_values() {
    let (code, out) = validate(&route(
        r#"        client_id: 123
        client_secret: $ENV://SG_TEST_UNSET
        discovery: https://idp.example.com/.well-known/openid-configuration
        ssl_verify: "yes"
        use_par: true
        session: { secret: "$ENV://SG_TEST_CLIENT_SECRET/field" }
        proxy_opts: { https_proxy_authorization: "$secret://vault/oidc/proxy" }
"#,
    ));
    assert_eq!(code, 2, "{out}");
    let at = "routes[0].plugins.openid-connect";
    for line in [
        format!("{at}.client_id: expected a string, got a number"),
        format!(
            "{at}.client_secret: secret reference $ENV://SG_TEST_UNSET: environment variable SG_TEST_UNSET is not set"
        ),
        format!("{at}.ssl_verify: expected a boolean (or the legacy \"no\"), got a string"),
        format!("{at}.use_par: is not allowed, use `par.enabled` instead"),
        format!(
            "{at}.session.secret: secret reference $ENV://SG_TEST_CLIENT_SECRET/field: environment variable SG_TEST_CLIENT_SECRET is not a JSON object (the /field form reads one)"
        ),
        format!(
            "{at}.proxy_opts.https_proxy_authorization: secret manager \"vault\" is not supported by shardgate (use an $ENV:// reference)"
        ),
    ] {
        assert_eq!(
            out.lines().filter(|l| *l == line).count(),
            1,
            "{line:?} not reported once in:\n{out}"
        );
    }
    assert!(!out.contains(CLIENT_SECRET), "{out}");
}
