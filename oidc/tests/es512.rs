//! ES512 (ECDSA P-521 with SHA-512) with real keys from `testdata/`: ID and bearer tokens verify
//! through the same key sets and policies as the other algorithms, client assertions sign with
//! it, and a key on another curve never stands in for P-521.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shardgate_oidc::client_auth::{AuthMethod, ClientAuth, ClientAuthError, FormBody};
use shardgate_oidc::jwk::{EcCurve, Key, KeyKind, KeySet};
use shardgate_oidc::jwt::{
    Alg, AlgPolicy, Jwt, SignError, SigningKey, TokenError, sign, verify_signature,
};

fn text(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn p521_jwks() -> KeySet {
    KeySet::from_json(text("jwks_p521.json").as_bytes()).unwrap()
}

fn verify(token: &str, keys: &KeySet) -> Result<(), TokenError> {
    verify_signature(&Jwt::parse(token)?, keys, &AlgPolicy::default())
}

const CLAIMS: &str = r#"{"iss":"https://idp.test","sub":"alice","aud":"gateway","exp":1700000300}"#;

#[test]
fn es512_tokens_sign_and_verify_from_jwks_and_pem() {
    let set = p521_jwks();
    assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    assert_eq!(set.keys()[0].kind(), KeyKind::Ec(EcCurve::P521));
    let key = SigningKey::from_pem(&text("ec521.pem")).unwrap();
    assert_eq!(key.default_alg(), Alg::ES512);
    let t = sign(Alg::ES512, Some("ec521"), CLAIMS.as_bytes(), &key).unwrap();
    let jwt = Jwt::parse(&t).unwrap();
    assert_eq!(jwt.alg(), Alg::ES512);
    assert_eq!(
        jwt.signature().len(),
        132,
        "RFC 7518: r || s, 66 bytes each"
    );
    verify(&t, &set).unwrap();
    // The same key as an APISIX `public_key` PEM.
    let pem = KeySet::from_keys(vec![Key::from_public_pem(&text("ec521.pub.pem")).unwrap()]);
    verify(&t, &pem).unwrap();
}

/// Signed by openssl (testdata/es512_jwt.py), not by this crate.
#[test]
fn es512_token_signed_by_openssl_verifies() {
    verify(text("es512.jwt").trim(), &p521_jwks()).unwrap();
}

#[test]
fn tampered_es512_tokens_fail() {
    let set = p521_jwks();
    let t = text("es512.jwt").trim().to_owned();
    let (head, sig) = t.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[70] ^= 1;
    let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw));
    assert_eq!(verify(&flipped, &set), Err(TokenError::BadSignature));

    let (h, rest) = t.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let evil = URL_SAFE_NO_PAD.encode(CLAIMS.replace("alice", "admin"));
    assert_eq!(
        verify(&format!("{h}.{evil}.{s}"), &set),
        Err(TokenError::BadSignature)
    );
    // A truncated signature is a bad signature, not a panic.
    let short = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw[..64]));
    assert_eq!(verify(&short, &set), Err(TokenError::BadSignature));
}

#[test]
fn curves_never_stand_in_for_each_other() {
    let p256 = SigningKey::from_pem(&text("ec256.pem")).unwrap();
    let p521 = SigningKey::from_pem(&text("ec521.pem")).unwrap();
    assert!(matches!(
        sign(Alg::ES512, None, CLAIMS.as_bytes(), &p256),
        Err(SignError::AlgKeyMismatch(Alg::ES512))
    ));
    assert!(matches!(
        sign(Alg::ES256, None, CLAIMS.as_bytes(), &p521),
        Err(SignError::AlgKeyMismatch(Alg::ES256))
    ));
    // An ES512 header over a P-256 signature is refused by a P-256 key...
    let es256 = sign(Alg::ES256, Some("ec521"), CLAIMS.as_bytes(), &p256).unwrap();
    let relabelled = {
        let (_, rest) = es256.split_once('.').unwrap();
        let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES512","kid":"ec521"}"#);
        format!("{head}.{rest}")
    };
    let p256_set = KeySet::from_keys(vec![Key::from_public_pem(&text("ec256.pub.pem")).unwrap()]);
    assert!(verify(&relabelled, &p256_set).is_err());
    // ...and does not verify against the P-521 key either.
    assert!(verify(&relabelled, &p521_jwks()).is_err());
}

#[test]
fn es512_client_assertions() {
    for configured in [None, Some(Alg::ES512)] {
        let auth = ClientAuth {
            method: AuthMethod::PrivateKeyJwt,
            client_id: "gateway".into(),
            private_key_pem: Some(text("ec521.pem")),
            assertion_alg: configured,
            assertion_lifetime_secs: 60,
            ..Default::default()
        };
        let (mut form, mut headers) = (FormBody::new(), Vec::new());
        auth.apply(
            "https://idp.test/token",
            1_700_000_000,
            "jti-1",
            &mut form,
            &mut headers,
        )
        .unwrap();
        let body = String::from_utf8(form.as_bytes().to_vec()).unwrap();
        let assertion = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("client_assertion="))
            .unwrap();
        let jwt = Jwt::parse(assertion).unwrap();
        assert_eq!(jwt.alg(), Alg::ES512);
        verify_signature(&jwt, &p521_jwks(), &AlgPolicy::default()).unwrap();
    }
    // ES512 configured with a P-256 key used to be signed as ES256; now it does not load.
    let wrong = ClientAuth {
        method: AuthMethod::PrivateKeyJwt,
        client_id: "gateway".into(),
        private_key_pem: Some(text("ec256.pem")),
        assertion_alg: Some(Alg::ES512),
        ..Default::default()
    };
    assert!(matches!(
        wrong.prepare(),
        Err(ClientAuthError::AlgMismatch {
            alg: Alg::ES512,
            ..
        })
    ));
}
