//! APISIX's openid-connect schema and `check_schema`, attribute by attribute, as tables: each
//! case says whether APISIX accepts the value, and for a refusal, which path the error names.
//! Cases come from `apisix/plugins/openid-connect.lua` and `t/plugin/openid-connect*.t`.

#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::{Loaded, OidcConf};

const P: &str = "p";

fn base() -> Value {
    json!({
        "client_id": "a",
        "client_secret": "b",
        "discovery": "https://example.com/.well-known/openid-configuration",
        "session": { "secret": "jwcE5v3pM9VhqLxmxFOH9uZaLo8u7KQK" }
    })
}

/// `base()` with `value` at the dotted `path` (intermediate objects created).
fn with(path: &str, value: Value) -> Value {
    let mut v = base();
    let mut at = &mut v;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if at.get(*part).is_none() {
            at[*part] = json!({});
        }
        at = at.get_mut(*part).unwrap();
    }
    at[parts[parts.len() - 1]] = value;
    v
}

fn load(v: Value) -> Loaded {
    OidcConf::from_value(v, P)
}

fn errors(v: Value) -> Vec<String> {
    load(v).errors.iter().map(ToString::to_string).collect()
}

/// Asserts each value is accepted at `path`.
fn accepts(path: &str, values: &[Value]) {
    for value in values {
        let e = errors(with(path, value.clone()));
        assert!(e.is_empty(), "{path} = {value}: {e:?}");
    }
}

/// Asserts each value is refused with one error naming `path`.
fn refuses(path: &str, values: &[Value]) {
    for value in values {
        let e = errors(with(path, value.clone()));
        let want = format!("{P}.{path}");
        let named: Vec<&String> = e
            .iter()
            .filter(|e| e.starts_with(&format!("{want}:")) || e.starts_with(&format!("{want}[")))
            .collect();
        assert_eq!(named.len(), 1, "{path} = {value}: {e:?}");
    }
}

const STRINGS: &[&str] = &[
    "client_id",
    "client_secret",
    "realm",
    "introspection_expiry_claim",
    "token_signing_alg_values_expected",
    "client_rsa_private_key_id",
    "client_jwt_assertion_audience",
    "cache_segment",
    "session.cookie_name",
    "session.cookie_domain",
    "claim_validator.audience.claim",
    "proxy_opts.http_proxy_authorization",
    "proxy_opts.https_proxy_authorization",
    "proxy_opts.no_proxy",
    "par.endpoint",
    "dpop.private_key",
];

#[test]
fn string_attributes_refuse_numbers_booleans_and_arrays() {
    for path in STRINGS {
        refuses(path, &[json!(123), json!(true), json!(["x"]), json!({})]);
    }
    // APISIX TEST 2: `client_id = 123` fails "wrong type: expected string, got number".
    assert_eq!(
        errors(with("client_id", json!(123))),
        ["p.client_id: expected a string, got a number"]
    );
}

const BOOLEANS: &[&str] = &[
    "bearer_only",
    "use_jwks",
    "use_pkce",
    "set_access_token_header",
    "access_token_in_authorization_header",
    "set_id_token_header",
    "set_raw_id_token_header",
    "set_userinfo_header",
    "set_refresh_token_header",
    "renew_access_token_on_expiry",
    "accept_none_alg",
    "accept_unsupported_alg",
    "force_reauthorize",
    "use_nonce",
    "revoke_tokens_on_logout",
    "jwt_verification_cache_ignore",
    "session.cookie_secure",
    "session.cookie_http_only",
    "claim_validator.audience.required",
    "claim_validator.audience.match_with_client_id",
    "par.enabled",
    "dpop.enabled",
];

#[test]
fn boolean_attributes_refuse_strings_and_numbers() {
    for path in BOOLEANS {
        refuses(path, &[json!("true"), json!(1), json!("yes")]);
    }
    accepts("use_pkce", &[json!(true), json!(false)]);
}

#[test]
fn ssl_verify_takes_a_boolean_or_the_legacy_no() {
    accepts("ssl_verify", &[json!(true), json!(false), json!("no")]);
    refuses("ssl_verify", &[json!("yes"), json!(1), json!("false")]);
    let l = load(with("ssl_verify", json!("no")));
    assert!(!l.conf.unwrap().ssl_verify);
    assert!(l.warnings.iter().any(|w| w.path == "p.ssl_verify"));
}

#[test]
fn timeout_has_apisix_minimum_of_one() {
    accepts("timeout", &[json!(1), json!(30), json!(3.0)]);
    refuses("timeout", &[json!(0), json!(-1), json!(1.5), json!("3")]);
    assert_eq!(
        errors(with("timeout", json!(0))),
        ["p.timeout: must be at least 1"]
    );
}

/// Integers APISIX takes without a minimum: accepted, a warning below what works.
#[test]
fn integers_without_apisix_minimum_warn_instead_of_refusing() {
    for (path, floor) in [
        ("client_jwt_assertion_expires_in", 1),
        ("access_token_expires_in", 1),
        ("jwk_expires_in", 1),
        ("refresh_session_interval", 0),
        ("iat_slack", 0),
        ("access_token_expires_leeway", 0),
        ("introspection_interval", 0),
        ("session.idling_timeout", 0),
        ("session.rolling_timeout", 0),
        ("session.absolute_timeout", 0),
        ("session.cookie.lifetime", 0),
    ] {
        accepts(path, &[json!(floor), json!(floor + 100)]);
        refuses(path, &[json!("60"), json!(1.5), json!(true)]);
        for low in [floor - 1, -5] {
            let l = load(with(path, json!(low)));
            assert!(l.errors.is_empty(), "{path} = {low}: {:?}", l.errors);
            let w: Vec<_> = l
                .warnings
                .iter()
                .filter(|w| w.path == format!("p.{path}"))
                .collect();
            assert_eq!(w.len(), 1, "{path} = {low}: {:?}", l.warnings);
            assert!(w[0].message.starts_with(&low.to_string()), "{w:?}");
        }
    }
    let c = load(with("jwk_expires_in", json!(0))).conf.unwrap();
    assert_eq!(c.jwk_expires_in, 1);
    let c = load(with("session.idling_timeout", json!(-1)))
        .conf
        .unwrap();
    assert_eq!(c.session.idling_timeout, 0);
}

#[test]
fn enums_refuse_values_outside_apisix_lists() {
    accepts(
        "unauth_action",
        &[json!("auth"), json!("deny"), json!("pass")],
    );
    refuses("unauth_action", &[json!("redirect"), json!(1)]);
    accepts(
        "session.cookie_same_site",
        &[json!("Strict"), json!("Lax"), json!("Default")],
    );
    refuses("session.cookie_same_site", &[json!("lax"), json!("none")]);
    // TEST 63: PS256 is not in the enum.
    refuses("client_jwt_assertion_alg", &[json!("PS256"), json!("none")]);
    // TEST 52b: DPoP signing_alg enum, checked while DPoP is off.
    refuses("dpop.signing_alg", &[json!("HS256")]);
    accepts(
        "dpop.signing_alg",
        &[json!("ES256"), json!("RS256"), json!("PS256")],
    );
    // TEST 74: unknown PAR method.
    refuses("par.endpoint_auth_method", &[json!("bogus")]);
    accepts(
        "par.endpoint_auth_method",
        &[json!("client_secret_post"), json!("client_secret_basic")],
    );
    accepts(
        "token_endpoint_auth_method",
        &[json!("client_secret_post"), json!("client_secret_jwt")],
    );
    refuses("token_endpoint_auth_method", &[json!(7)]);
    refuses("session.storage", &[json!("memcached")]);
}

#[test]
fn arrays_check_every_item() {
    accepts("required_scopes", &[json!([]), json!(["a", "b"])]);
    refuses("required_scopes", &[json!("a"), json!([1])]);
    accepts("introspection_addon_headers", &[json!(["X-A", "X-B"])]);
    // minItems 1 and pattern ^[^:]+$
    refuses(
        "introspection_addon_headers",
        &[json!([]), json!(["a:b"]), json!("X-A")],
    );
    accepts(
        "claim_validator.issuer.valid_issuers",
        &[json!(["https://i"])],
    );
    refuses(
        "claim_validator.issuer.valid_issuers",
        &[json!([1]), json!("i")],
    );
}

#[test]
fn required_attributes() {
    for name in ["client_id", "discovery"] {
        let mut v = base();
        v.as_object_mut().unwrap().remove(name);
        assert_eq!(errors(v), [format!("p.{name}: is required")]);
    }
}

/// TEST 41: no session while bearer_only is false. A given session needs its secret even when
/// bearer_only (the session schema's `required`).
#[test]
fn session_secret_rules() {
    let mut v = base();
    v.as_object_mut().unwrap().remove("session");
    assert_eq!(
        errors(v.clone()),
        ["p.session.secret: required unless bearer_only"]
    );
    v["bearer_only"] = json!(true);
    v["use_jwks"] = json!(true);
    assert!(errors(v.clone()).is_empty());
    v["session"] = json!({ "cookie_name": "s" });
    assert_eq!(errors(v), ["p.session.secret: is required"]);
    refuses(
        "session.secret",
        &[json!("short"), json!(1234567890123456_u64)],
    );
}

/// TESTs 42-50: who may go without client_secret.
#[test]
fn client_secret_requirement() {
    let rsa = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAK\n-----END RSA PRIVATE KEY-----";
    let no_secret = |extra: Value| {
        let mut v = base();
        let m = v.as_object_mut().unwrap();
        m.remove("client_secret");
        for (k, x) in extra.as_object().unwrap() {
            m.insert(k.clone(), x.clone());
        }
        errors(v)
            .into_iter()
            .any(|e| e.starts_with("p.client_secret: required"))
    };
    assert!(!no_secret(json!({ "bearer_only": true, "use_jwks": true })));
    assert!(no_secret(
        json!({ "bearer_only": true, "introspection_endpoint": "https://e/introspect" })
    ));
    assert!(!no_secret(
        json!({ "token_endpoint_auth_method": "private_key_jwt", "client_rsa_private_key": rsa })
    ));
    assert!(!no_secret(json!({ "use_pkce": true })));
    assert!(no_secret(json!({})));
    assert!(no_secret(json!({
        "bearer_only": true, "introspection_endpoint": "https://e/i",
        "token_endpoint_auth_method": "private_key_jwt", "client_rsa_private_key": rsa
    })));
    assert!(no_secret(json!({
        "introspection_endpoint_auth_method": "private_key_jwt", "client_rsa_private_key": rsa
    })));
}

/// TEST 67: the flat names the par/dpop objects own.
#[test]
fn flat_par_and_dpop_names_are_refused_naming_the_nested_one() {
    for (flat, owner, value) in [
        ("use_par", "par.enabled", json!(true)),
        (
            "pushed_authorization_request_endpoint",
            "par.endpoint",
            json!("https://e/par"),
        ),
        (
            "pushed_authorization_request_endpoint_auth_method",
            "par.endpoint_auth_method",
            json!("private_key_jwt"),
        ),
        ("use_dpop", "dpop.enabled", json!(true)),
        ("dpop_signing_alg", "dpop.signing_alg", json!("RS256")),
        (
            "dpop_private_key",
            "dpop.private_key",
            json!("plaintext-key"),
        ),
        (
            "dpop_public_jwk",
            "dpop.public_jwk",
            json!({ "kty": "RSA" }),
        ),
    ] {
        assert_eq!(
            errors(with(flat, value)),
            [format!("p.{flat}: is not allowed, use `{owner}` instead")]
        );
    }
}

/// TESTs 53c, 54d, 55e, 77: the par/dpop objects, checked while disabled as in APISIX.
#[test]
fn par_and_dpop_objects() {
    // Staged key material while DPoP is off is valid (TEST 77).
    for dpop in [
        json!({ "public_jwk": { "kty": "RSA", "e": "AQAB", "n": "abc" } }),
        json!({ "enabled": false, "signing_alg": "ES256", "public_jwk": { "kty": "RSA" } }),
        json!({ "enabled": false, "private_key": "not-a-key",
                "public_jwk": { "kty": "EC", "crv": "P-384", "x": "x", "y": "y" } }),
    ] {
        assert!(errors(with("dpop", dpop.clone())).is_empty(), "{dpop}");
    }
    // Private members are refused even while off (schema level, TEST 55e).
    refuses(
        "dpop.public_jwk",
        &[
            json!({ "kty": "RSA", "e": "AQAB", "n": "abc", "d": "x" }),
            json!("jwk"),
        ],
    );
    refuses("dpop.unknown", &[json!(1)]);
    refuses("par.unknown", &[json!(1)]);
    accepts(
        "par",
        &[json!({ "enabled": false, "endpoint": "https://e/par" })],
    );
    // On: APISIX's checks (TEST 54d).
    let e = errors(with("dpop", json!({ "enabled": true })));
    assert_eq!(
        e,
        [
            "p.dpop.private_key: required when dpop.enabled is true",
            "p.dpop.public_jwk: required when dpop.enabled is true",
        ]
    );
    // TEST 53c: PAR on without an endpoint (discovery's is used at login).
    assert!(errors(with("par", json!({ "enabled": true }))).is_empty());
    // On, an endpoint that is not a URL cannot work (APISIX: a 500 at login).
    let e = errors(with(
        "par",
        json!({ "enabled": true, "endpoint": "example.com/par" }),
    ));
    assert_eq!(e, ["p.par.endpoint: must be an http(s) URL"]);
    assert!(
        errors(with(
            "par",
            json!({ "enabled": false, "endpoint": "example.com/par" })
        ))
        .is_empty()
    );
    let e = errors(with(
        "par",
        json!({ "enabled": true, "endpoint_auth_method": "private_key_jwt" }),
    ));
    assert!(
        e.contains(&"p.par.endpoint_auth_method: private_key_jwt requires `client_rsa_private_key` when par.enabled is true".to_owned()),
        "{e:?}"
    );
}

/// Objects APISIX leaves open take unknown members, with a warning; closed ones refuse them.
#[test]
fn open_objects_warn_closed_objects_refuse() {
    for path in [
        "session.cookie.extra",
        "proxy_opts.extra",
        "session_contents.extra",
        "claim_validator.extra",
        "claim_validator.issuer.extra",
        "claim_validator.audience.extra",
    ] {
        let l = load(with(path, json!(1)));
        assert!(l.errors.is_empty(), "{path}: {:?}", l.errors);
        assert!(
            l.warnings.iter().any(|w| w.path == format!("p.{path}")),
            "{path}: {:?}",
            l.warnings
        );
    }
    refuses("session.extra", &[json!(1)]);
    refuses("client_secrte", &[json!("x")]);
}

#[test]
fn objects_and_free_form_attributes() {
    accepts("claim_schema", &[json!({ "type": "object" })]);
    refuses("claim_schema", &[json!("schema"), json!([])]);
    // Any scalar query parameter; sent as text.
    accepts(
        "authorization_params",
        &[json!({ "prompt": "login", "max_age": 300, "x": true })],
    );
    refuses("authorization_params", &[json!("prompt=login")]);
    refuses("authorization_params.nested", &[json!({ "a": 1 })]);
    let c = load(with("authorization_params", json!({ "max_age": 300 })))
        .conf
        .unwrap();
    assert_eq!(c.authorization_params["max_age"], "300");
    refuses("session", &[json!("s")]);
    refuses("proxy_opts", &[json!(true)]);
}

/// `validate` must see every problem: type errors do not hide each other or the checks after.
#[test]
fn every_problem_is_reported_each_path_once() {
    let mut v = base();
    v["client_id"] = json!(1);
    v["timeout"] = json!("3");
    v["ssl_verify"] = json!("yes");
    v["session"]["secret"] = json!("short");
    v["use_par"] = json!(true);
    let e = errors(v);
    assert_eq!(
        e,
        [
            "p.client_id: expected a string, got a number",
            "p.ssl_verify: expected a boolean (or the legacy \"no\"), got a string",
            "p.timeout: expected an integer, got a string",
            "p.use_par: is not allowed, use `par.enabled` instead",
            "p.session.secret: must be at least 16 bytes",
        ]
    );
}

/// Accepted with a warning naming the attribute and the risk.
#[test]
fn stricter_than_apisix_is_now_a_warning() {
    let warned = |v: Value, path: &str| {
        let l = load(v);
        assert!(l.errors.is_empty(), "{path}: {:?}", l.errors);
        assert!(
            l.warnings.iter().any(|w| w.path == format!("p.{path}")),
            "{path}: {:?}",
            l.warnings
        );
    };
    warned(with("scope", json!("profile email")), "scope");
    warned(
        with("discovery", json!("http://idp.example.com/.well-known/x")),
        "discovery",
    );
    warned(with("redirect_uri", json!("/callback")), "redirect_uri");
    warned(
        with("introspection_endpoint", json!("http://idp.example.com/i")),
        "introspection_endpoint",
    );
    warned(
        with(
            "proxy_opts.http_proxy",
            json!("http://proxy.example.com:3128"),
        ),
        "proxy_opts.http_proxy",
    );
    // bearer-only never asks for an ID token, so no scope warning there.
    let mut v = with("scope", json!("api"));
    v["bearer_only"] = json!(true);
    assert!(load(v).warnings.iter().all(|w| w.path != "p.scope"));
}

/// APISIX takes an RSA `public_key` of any size; under 2048 bits it is a warning naming the
/// risk, and a key no verifier takes (under 1024 bits) stays an error at load.
#[test]
fn short_rsa_public_key_is_a_warning() {
    let key = |name: &str| {
        std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let conf = |pem: String| {
        let mut v = base();
        v["bearer_only"] = json!(true);
        v["public_key"] = json!(pem);
        load(v)
    };
    let l = conf(key("rsa1024.pub.pem"));
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let w: Vec<String> = l
        .warnings
        .iter()
        .filter(|w| w.path == "p.public_key")
        .map(ToString::to_string)
        .collect();
    assert_eq!(w.len(), 1, "{:?}", l.warnings);
    assert!(
        w[0].starts_with("p.public_key: is a 1024-bit RSA key: under 2048 bits"),
        "{w:?}"
    );
    let l = conf(key("rsa1.pub.pem"));
    assert!(l.errors.is_empty() && l.warnings.iter().all(|w| w.path != "p.public_key"));
}

/// APISIX signs with RSA private keys of any size: under 2048 bits (which ring refuses) they
/// sign through RustCrypto's `rsa`, with a warning naming the attribute and the risk.
#[test]
fn short_rsa_private_keys_are_a_warning() {
    let pem = std::fs::read_to_string(format!(
        "{}/testdata/rsa1024.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let warned = |l: &Loaded, path: &str| -> Vec<String> {
        l.warnings
            .iter()
            .filter(|w| w.path == path)
            .map(ToString::to_string)
            .collect()
    };
    let mut v = base();
    v["token_endpoint_auth_method"] = json!("private_key_jwt");
    v["client_rsa_private_key"] = json!(pem);
    v["client_jwt_assertion_alg"] = json!("RS256");
    let l = load(v);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    let w = warned(&l, "p.client_rsa_private_key");
    assert_eq!(w.len(), 1, "{:?}", l.warnings);
    assert!(
        w[0].starts_with(
            "p.client_rsa_private_key: is a 1024-bit RSA key: under 2048 bits it can be factored"
        ),
        "{w:?}"
    );
    let jwk = derived(&pem);
    assert_eq!(jwk["kty"], "RSA");
    for alg in ["RS256", "PS256"] {
        let d =
            json!({ "enabled": true, "signing_alg": alg, "private_key": pem, "public_jwk": jwk });
        let l = load(with("dpop", d));
        assert!(l.errors.is_empty(), "{alg}: {:?}", l.errors);
        let w = warned(&l, "p.dpop.private_key");
        assert_eq!(w.len(), 1, "{:?}", l.warnings);
        assert!(w[0].contains("forge DPoP proofs"), "{w:?}");
        // It signs: a proof by it carries the same public key.
        let signer = crate::dpop::DpopSigner::from_pem(&pem, alg.parse().unwrap()).unwrap();
        assert_eq!(Value::Object(signer.public_jwk().clone()), jwk);
        signer
            .proof("POST", "https://idp.test/token", 1, "j", None, None)
            .unwrap();
    }
    // A 2048-bit key: no warning.
    let mut v = base();
    v["token_endpoint_auth_method"] = json!("private_key_jwt");
    v["client_rsa_private_key"] = json!(DPOP_RSA);
    assert!(warned(&load(v), "p.client_rsa_private_key").is_empty());
}

/// APISIX's schema leaves the endpoint auth methods free strings, and lua-resty-openidc ignores
/// one it does not implement: accepted with a warning, the default in its place.
#[test]
fn unknown_endpoint_auth_methods_are_a_warning() {
    for path in [
        "token_endpoint_auth_method",
        "introspection_endpoint_auth_method",
    ] {
        let l = load(with(path, json!("tls_client_auth")));
        assert!(l.errors.is_empty(), "{path}: {:?}", l.errors);
        let w: Vec<String> = l
            .warnings
            .iter()
            .filter(|w| w.path == format!("p.{path}"))
            .map(ToString::to_string)
            .collect();
        assert_eq!(w.len(), 1, "{path}: {:?}", l.warnings);
        assert!(w[0].contains("\"tls_client_auth\" is not a client authentication method"));
        let conf = l.conf.unwrap();
        assert_eq!(
            conf.token_endpoint_auth_method.as_str(),
            "client_secret_basic"
        );
        assert_eq!(
            conf.introspection_endpoint_auth_method.as_str(),
            "client_secret_basic"
        );
        refuses(path, &[json!(7), json!(true)]);
    }
    // The PAR object is closed with an enum in APISIX too: still refused.
    refuses("par.endpoint_auth_method", &[json!("tls_client_auth")]);
}

#[test]
fn yaml_nulls_are_absent() {
    accepts("client_secret_missing_is_fine", &[]);
    let v = with("realm", Value::Null);
    let l = load(v);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert_eq!(l.conf.unwrap().realm, "apisix");
}

/// TEST 80: the assertion key must fit the algorithm, curve included (ES512 on a P-256 key used
/// to be signed as ES256).
#[test]
fn client_assertion_key_must_match_alg_and_curve() {
    let p256 = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/ec256.pem"));
    let p521 = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/ec521.pem"));
    let rsa = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rsa1.pem"));
    let conf = |key: &str, alg: &str| {
        let mut v = base();
        v["token_endpoint_auth_method"] = json!("private_key_jwt");
        v["client_rsa_private_key"] = json!(key);
        v["client_jwt_assertion_alg"] = json!(alg);
        errors(v)
    };
    assert!(conf(p521, "ES512").is_empty());
    assert!(conf(p256, "ES256").is_empty());
    assert!(conf(rsa, "RS512").is_empty());
    assert_eq!(
        conf(p256, "ES512"),
        [
            "p.client_jwt_assertion_alg: ES512 requires a client_rsa_private_key on curve P-521, got P-256"
        ]
    );
    assert_eq!(
        conf(p521, "ES256"),
        [
            "p.client_jwt_assertion_alg: ES256 requires a client_rsa_private_key on curve P-256, got P-521"
        ]
    );
    assert_eq!(
        conf(rsa, "ES512"),
        ["p.client_jwt_assertion_alg: ES512 does not match the Rsa key in client_rsa_private_key"]
    );
}

const DPOP_EC: &str = include_str!("../../tests/data/dpop_es256.pem");
const DPOP_RSA: &str = include_str!("../../tests/data/dpop_rsa2048.pem");

fn derived(pem: &str) -> Value {
    Value::Object(crate::dpop::private_key_jwk(pem).unwrap())
}

/// TESTs 51a, 76, 79: an enabled `dpop` needs a private key that loads, has a private half, and
/// is the pair of `public_jwk`.
#[test]
fn dpop_key_pair_checks() {
    let ec_jwk = derived(DPOP_EC);
    let rsa_jwk = derived(DPOP_RSA);
    // A real pair is accepted, for each alg (TEST 51a).
    for (alg, pem, jwk) in [
        ("ES256", DPOP_EC, &ec_jwk),
        ("RS256", DPOP_RSA, &rsa_jwk),
        ("PS256", DPOP_RSA, &rsa_jwk),
    ] {
        let d =
            json!({ "enabled": true, "signing_alg": alg, "private_key": pem, "public_jwk": jwk });
        assert!(errors(with("dpop", d)).is_empty(), "{alg}");
    }
    let refused = |d: Value| -> Vec<String> { errors(with("dpop", d)) };
    // Not a key (TEST 76).
    let e = refused(
        json!({ "enabled": true, "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----", "public_jwk": ec_jwk }),
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("p.dpop.private_key: is not a valid key"),
        "{e:?}"
    );
    // An EC key for RS256 with an RSA JWK: the halves differ in kty (TEST 76).
    let e = refused(
        json!({ "enabled": true, "signing_alg": "RS256", "private_key": DPOP_EC, "public_jwk": { "kty": "RSA", "e": "AQAB", "n": "abc" } }),
    );
    assert_eq!(
        e,
        ["p.dpop.public_jwk: is not the public key of dpop.private_key: kty is \"EC\""]
    );
    // A public key only; another P-256 key; a P-384 key (TEST 79).
    let public_only = include_str!("../../tests/data/dpop_es256_public.pem");
    let e = refused(json!({ "enabled": true, "private_key": public_only, "public_jwk": ec_jwk }));
    assert_eq!(e, ["p.dpop.private_key: has no private key in it"]);
    let mut other = ec_jwk.clone();
    other["x"] = rsa_jwk["e"].clone();
    let e = refused(json!({ "enabled": true, "private_key": DPOP_EC, "public_jwk": other }));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("p.dpop.public_jwk: is not the public key of dpop.private_key: x is"),
        "{e:?}"
    );
    let p384 = include_str!("../../tests/data/dpop_p384.pem");
    let e = refused(json!({ "enabled": true, "private_key": p384, "public_jwk": ec_jwk }));
    assert_eq!(
        e,
        ["p.dpop.public_jwk: is not the public key of dpop.private_key: crv is \"P-384\""]
    );
}

/// TEST 75: PAR authentication methods that have their credential, and the ones PAR never reaches.
#[test]
fn par_auth_methods_with_their_credential() {
    const RSA_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----";
    let cases = [
        json!({ "par": { "enabled": true } }),
        json!({ "par": { "enabled": true, "endpoint_auth_method": "client_secret_post" } }),
        json!({ "par": { "enabled": true, "endpoint_auth_method": "client_secret_jwt" } }),
        json!({ "client_rsa_private_key": RSA_KEY,
                "par": { "enabled": true, "endpoint_auth_method": "private_key_jwt" } }),
        // bearer_only never runs the authorization code flow, so PAR is unreachable.
        json!({ "bearer_only": true, "public_key": "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----",
                "par": { "enabled": true, "endpoint_auth_method": "private_key_jwt" } }),
    ];
    for extra in cases {
        let mut v = base();
        v["use_pkce"] = json!(true);
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = errors(v);
        assert!(e.is_empty(), "{extra}: {e:?}");
    }
    // TEST 74: the credential a PAR method needs is missing.
    let mut v = base();
    v.as_object_mut().unwrap().remove("client_secret");
    v["use_pkce"] = json!(true);
    v["par"] = json!({ "enabled": true, "endpoint_auth_method": "client_secret_jwt" });
    assert!(
        errors(v).contains(&"p.par.endpoint_auth_method: client_secret_jwt requires `client_secret` when par.enabled is true".to_owned())
    );
}
