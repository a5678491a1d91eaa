//! Token verification end to end with real keys from `testdata/` (see its README).
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shardgate_oidc::cache::TtlCache;
use shardgate_oidc::claims::{AudienceRule, ClaimsPolicy, ClaimsView};
use shardgate_oidc::client_auth::{AuthMethod, ClientAuth, FormBody, JWT_BEARER_ASSERTION};
use shardgate_oidc::jwk::{JwkSet, JwksOptions, Key, KeySelectError, KeySet};
use shardgate_oidc::jwt::{
    Alg, AlgPolicy, AlgSet, Jwt, SigningKey, TokenError, sign, verify_signature,
};

const NOW: u64 = 1_700_000_000;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn text(name: &str) -> String {
    String::from_utf8(data(name)).unwrap()
}

fn signer(name: &str) -> SigningKey {
    SigningKey::from_pem(&text(name)).unwrap()
}

fn jwks() -> JwkSet {
    JwkSet::from_json(&data("jwks.json")).unwrap()
}

fn claims() -> String {
    format!(
        r#"{{"iss":"https://idp.test","sub":"alice","aud":"gateway","exp":{},"iat":{NOW},"scope":"openid read"}}"#,
        NOW + 300
    )
}

fn token(alg: Alg, kid: Option<&str>, key: &SigningKey) -> String {
    sign(alg, kid, claims().as_bytes(), key).unwrap()
}

fn verify(token: &str, keys: &KeySet, policy: &AlgPolicy) -> Result<(), TokenError> {
    verify_signature(&Jwt::parse(token)?, keys, policy)
}

fn all_algs() -> AlgPolicy {
    AlgPolicy {
        allowed: Alg::ALL.into_iter().collect(),
        allow_symmetric: true,
    }
}

#[test]
fn every_algorithm_signs_and_verifies() {
    let set = jwks();
    assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    let cases = [
        (Alg::RS256, "rsa1", "rsa1.pem"),
        (Alg::RS256, "rsa2", "rsa2.pem"),
        (Alg::RS384, "rsa2", "rsa2.pem"),
        (Alg::RS512, "rsa2", "rsa2.pem"),
        (Alg::PS256, "rsa2", "rsa2.pem"),
        (Alg::PS384, "rsa2", "rsa2.pem"),
        (Alg::PS512, "rsa2", "rsa2.pem"),
        (Alg::ES256, "ec256", "ec256.pem"),
        (Alg::ES384, "ec384", "ec384.pem"),
        (Alg::EdDSA, "ed25519", "ed25519.pem"),
    ];
    for (alg, kid, pem) in cases {
        let t = token(alg, Some(kid), &signer(pem));
        verify(&t, &set, &AlgPolicy::default()).unwrap_or_else(|e| panic!("{alg} {kid}: {e}"));
        let jwt = Jwt::parse(&t).unwrap();
        assert_eq!((jwt.alg(), jwt.kid()), (alg, Some(kid)));
        assert_eq!(jwt.payload(), claims().as_bytes());
    }

    let secret = b"an HS256 secret of 32 bytes long";
    let hs = KeySet::from_keys(vec![Key::symmetric(secret)]);
    for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
        let t = token(alg, None, &SigningKey::hmac(secret));
        verify(&t, &hs, &AlgPolicy::only(alg)).unwrap();
        let wrong = KeySet::from_keys(vec![Key::symmetric(b"another secret")]);
        assert_eq!(
            verify(&t, &wrong, &AlgPolicy::only(alg)),
            Err(TokenError::BadSignature)
        );
    }
}

#[test]
fn forged_signatures_fail() {
    let set = jwks();
    let t = token(Alg::RS256, Some("rsa1"), &signer("rsa1.pem"));
    let (head, sig) = t.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 1;
    let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw));
    assert_eq!(
        verify(&flipped, &set, &AlgPolicy::default()),
        Err(TokenError::BadSignature)
    );

    // Same signature, different payload.
    let (h, rest) = t.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let evil = URL_SAFE_NO_PAD.encode(claims().replace("alice", "admin"));
    assert_eq!(
        verify(&format!("{h}.{evil}.{s}"), &set, &AlgPolicy::default()),
        Err(TokenError::BadSignature)
    );

    // Signed by rsa2 but claiming rsa1's kid.
    let other = token(Alg::RS256, Some("rsa1"), &signer("rsa2.pem"));
    assert_eq!(
        verify(&other, &set, &AlgPolicy::default()),
        Err(TokenError::BadSignature)
    );
    // Empty signature.
    assert_eq!(
        verify(&format!("{head}."), &set, &AlgPolicy::default()),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn alg_none_is_always_rejected() {
    let body = URL_SAFE_NO_PAD.encode(claims());
    for header in [r#"{"alg":"none"}"#, r#"{"alg":"none","kid":"rsa1"}"#] {
        let t = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
        assert_eq!(verify(&t, &jwks(), &all_algs()), Err(TokenError::NoneAlg));
        let hs = KeySet::from_keys(vec![Key::symmetric(b"s")]);
        assert_eq!(verify(&t, &hs, &all_algs()), Err(TokenError::NoneAlg));
    }
    for header in [r#"{"alg":"None"}"#, r#"{"alg":"NONE"}"#, r#"{"alg":""}"#] {
        let t = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
        assert_eq!(
            verify(&t, &jwks(), &all_algs()),
            Err(TokenError::UnsupportedAlg)
        );
    }
}

#[test]
fn hmac_with_public_key_bytes_is_alg_confusion_and_fails() {
    let n = {
        let doc: serde_json::Value = serde_json::from_slice(&data("jwks.json")).unwrap();
        URL_SAFE_NO_PAD
            .decode(doc["keys"][0]["n"].as_str().unwrap())
            .unwrap()
    };
    let secrets = [
        data("rsa1.pub.pem"),
        data("rsa1.pub.der"),
        data("ec256.pub.pem"),
        n,
    ];
    let asymmetric_sets = [
        jwks(),
        KeySet::from_keys(vec![Key::from_public_pem(&text("rsa1.pub.pem")).unwrap()]),
        KeySet::from_keys(vec![Key::from_public_pem(&text("ec256.pub.pem")).unwrap()]),
    ];
    for secret in &secrets {
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
            for kid in [None, Some("rsa1"), Some("ec256")] {
                let t = token(alg, kid, &SigningKey::hmac(secret));
                for set in &asymmetric_sets {
                    // Even a policy that allows everything finds no key able to check an HMAC.
                    let err = verify(&t, set, &all_algs()).unwrap_err();
                    assert!(
                        matches!(
                            err,
                            TokenError::KeyAlgMismatch | TokenError::UnknownKid { .. }
                        ),
                        "{alg} {kid:?}: {err:?}"
                    );
                    assert_eq!(
                        verify(&t, set, &AlgPolicy::default()),
                        Err(TokenError::AlgNotAllowed { alg })
                    );
                }
            }
        }
    }
}

#[test]
fn key_selection() {
    let set = jwks();
    // kid of a key that is not in this set.
    let t = token(Alg::RS256, Some("rsa-from-elsewhere"), &signer("rsa1.pem"));
    assert_eq!(
        verify(&t, &set, &AlgPolicy::default()),
        Err(TokenError::UnknownKid {
            kid: "rsa-from-elsewhere".into()
        })
    );

    // No kid and a single compatible key.
    let t = token(Alg::ES256, None, &signer("ec256.pem"));
    verify(&t, &set, &AlgPolicy::default()).unwrap();
    let single =
        JwkSet::from_json(&rewrite_keys(|keys| keys.retain(|k| k["kid"] == "rsa1"))).unwrap();
    verify(
        &token(Alg::RS256, None, &signer("rsa1.pem")),
        &single,
        &AlgPolicy::default(),
    )
    .unwrap();

    // No kid and two RSA keys able to check RS256.
    let t = token(Alg::RS256, None, &signer("rsa1.pem"));
    assert_eq!(
        verify(&t, &set, &AlgPolicy::default()),
        Err(TokenError::AmbiguousKey)
    );
    assert_eq!(
        set.select(None, Alg::RS256).unwrap_err(),
        KeySelectError::AmbiguousKey
    );
    // ...but only rsa2 can do RS384 (rsa1 is pinned to RS256), so that is not ambiguous.
    verify(
        &token(Alg::RS384, None, &signer("rsa2.pem")),
        &set,
        &AlgPolicy::default(),
    )
    .unwrap();

    // rsa1's JWK says alg RS256: an RS512 token naming it is refused before any crypto.
    let t = token(Alg::RS512, Some("rsa1"), &signer("rsa1.pem"));
    assert_eq!(
        verify(&t, &set, &AlgPolicy::default()),
        Err(TokenError::KeyAlgMismatch)
    );
    // ES384 token naming an ES256 key.
    let t = token(Alg::ES384, Some("ec256"), &signer("ec384.pem"));
    assert_eq!(
        verify(&t, &set, &AlgPolicy::default()),
        Err(TokenError::KeyAlgMismatch)
    );

    // Policy pinned to one alg.
    let t = token(Alg::ES256, Some("ec256"), &signer("ec256.pem"));
    assert_eq!(
        verify(&t, &set, &AlgPolicy::only(Alg::RS256)),
        Err(TokenError::AlgNotAllowed { alg: Alg::ES256 })
    );
    let policy = AlgPolicy {
        allowed: [Alg::RS256, Alg::ES256].into_iter().collect::<AlgSet>(),
        allow_symmetric: false,
    };
    verify(&t, &set, &policy).unwrap();
}

fn rewrite_keys(f: impl FnOnce(&mut Vec<serde_json::Value>)) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    f(doc["keys"].as_array_mut().unwrap());
    serde_json::to_vec(&doc).unwrap()
}

#[test]
fn encryption_keys_are_ignored() {
    let doc = rewrite_keys(|keys| keys[0]["use"] = "enc".into());
    let set = JwkSet::from_json(&doc).unwrap();
    assert!(!set.contains_kid("rsa1"));
    assert_eq!(set.skipped()[0].kid.as_deref(), Some("rsa1"));
    let t = token(Alg::RS256, Some("rsa1"), &signer("rsa1.pem"));
    assert_eq!(
        verify(&t, &set, &AlgPolicy::default()),
        Err(TokenError::UnknownKid { kid: "rsa1".into() })
    );

    let doc = rewrite_keys(|keys| keys[2]["key_ops"] = serde_json::json!(["encrypt"]));
    assert!(!JwkSet::from_json(&doc).unwrap().contains_kid("ec256"));
}

#[test]
fn symmetric_jwks_only_when_allowed() {
    let doc = rewrite_keys(|keys| {
        keys.push(serde_json::json!({"kty":"oct","kid":"hs","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}))
    });
    let public_only = JwkSet::from_json(&doc).unwrap();
    assert!(!public_only.contains_kid("hs"));
    let with_oct = JwkSet::from_json_with(
        &doc,
        JwksOptions {
            allow_symmetric: true,
        },
    )
    .unwrap();
    let t = token(
        Alg::HS256,
        Some("hs"),
        &SigningKey::hmac(b"secret-secret-secret"),
    );
    verify(&t, &with_oct, &AlgPolicy::only(Alg::HS256)).unwrap();
    assert_eq!(
        verify(&t, &public_only, &AlgPolicy::only(Alg::HS256)),
        Err(TokenError::UnknownKid { kid: "hs".into() })
    );
}

#[test]
fn x5c_only_rsa_key_verifies() {
    let set = JwkSet::from_json(&data("jwks_x5c.json")).unwrap();
    assert_eq!(set.kids().collect::<Vec<_>>(), ["rsa2-x5c"]);
    let t = token(Alg::RS256, Some("rsa2-x5c"), &signer("rsa2.pem"));
    verify(&t, &set, &AlgPolicy::default()).unwrap();
    let wrong = token(Alg::RS256, Some("rsa2-x5c"), &signer("rsa1.pem"));
    assert_eq!(
        verify(&wrong, &set, &AlgPolicy::default()),
        Err(TokenError::BadSignature)
    );

    let bad = br#"{"keys":[{"kty":"RSA","kid":"junk","x5c":["AAAA"]}]}"#;
    assert_eq!(
        JwkSet::from_json(bad).unwrap().skipped()[0].reason,
        "x5c[0] is not a valid certificate"
    );
}

#[test]
fn pem_public_keys_verify() {
    let cases = [
        ("rsa1.pub.pem", "rsa1.pem", Alg::RS256),
        ("rsa1.pkcs1.pub.pem", "rsa1.pem", Alg::PS256),
        ("rsa1.pub.pem", "rsa1.pkcs1.pem", Alg::RS512),
        ("ec256.pub.pem", "ec256.pem", Alg::ES256),
        ("ec384.pub.pem", "ec384.pem", Alg::ES384),
        ("ed25519.pub.pem", "ed25519.pem", Alg::EdDSA),
    ];
    for (public, private, alg) in cases {
        let set = KeySet::from_keys(vec![Key::from_public_pem(&text(public)).unwrap()]);
        // A configured key has no kid, so it serves tokens with or without one.
        for kid in [None, Some("whatever")] {
            let t = token(alg, kid, &signer(private));
            verify(&t, &set, &AlgPolicy::default())
                .unwrap_or_else(|e| panic!("{public} {alg}: {e}"));
        }
    }
    let rsa = Key::from_public_pem(&text("rsa1.pub.pem")).unwrap();
    assert_eq!(rsa.rsa_bits(), Some(2048));
    assert!(!rsa.is_short_rsa());
}

/// ring cannot sign with an RSA key under 2048 bits; APISIX can, so such a key (1024 to 2047
/// bits) signs through RustCrypto's `rsa` (the config warns). Every signature is checked by
/// another implementation: RS256/RS512 by ring's legacy verifiers, PS256 by `rsa`'s verifier.
#[test]
fn short_rsa_private_keys_sign_and_the_signatures_verify() {
    let public = Key::from_public_pem(&text("rsa1024.pub.pem")).unwrap();
    let set = KeySet::from_keys(vec![public]);
    for pem in ["rsa1024.pem", "rsa1024.pkcs1.pem"] {
        let key = signer(pem);
        assert_eq!(key.short_rsa_bits(), Some(1024), "{pem}");
        assert_eq!(key.default_alg(), Alg::RS256);
        for alg in [Alg::RS256, Alg::RS512] {
            let t = token(alg, Some("k"), &key);
            verify(&t, &set, &all_algs()).unwrap_or_else(|e| panic!("{pem} {alg}: {e}"));
            // The signature covers the payload.
            let (head, rest) = t.split_once('.').unwrap();
            let (_, sig) = rest.split_once('.').unwrap();
            let evil = URL_SAFE_NO_PAD.encode(claims().replace("alice", "admin"));
            assert_eq!(
                verify(&format!("{head}.{evil}.{sig}"), &set, &all_algs()),
                Err(TokenError::BadSignature)
            );
        }
    }
    // PS256 (a DPoP signing_alg APISIX offers): ring has no legacy PSS verifier.
    let t = token(Alg::PS256, None, &signer("rsa1024.pem"));
    let (input, sig) = t.rsplit_once('.').unwrap();
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(sig.len(), 128);
    use rsa::pkcs8::DecodePublicKey as _;
    use sha2::Digest as _;
    let rsa_public = rsa::PublicKey::from_public_key_der(&data("rsa1024.pub.der")).unwrap();
    let pss = || rsa::pss::Pss::<sha2::Sha256>::new();
    rsa_public
        .verify(pss(), &sha2::Sha256::digest(input.as_bytes()), &sig)
        .unwrap();
    assert!(
        rsa_public
            .verify(pss(), &sha2::Sha256::digest(b"another input"), &sig)
            .is_err()
    );
    // Keys ring takes stay on ring.
    assert_eq!(signer("rsa1.pem").short_rsa_bits(), None);
}

/// APISIX accepts RSA keys under 2048 bits; so does shardgate (the config gets a warning), and
/// they verify the algorithms ring has legacy verifiers for: RS256 and RS512, never PS*/RS384.
#[test]
fn short_rsa_public_keys_verify_rs256_and_rs512_only() {
    let key = Key::from_public_pem(&text("rsa1024.pub.pem")).unwrap();
    assert_eq!(key.rsa_bits(), Some(1024));
    assert!(key.is_short_rsa());
    for alg in [Alg::RS256, Alg::RS512] {
        assert!(key.supports(alg), "{alg:?}");
    }
    for alg in [Alg::RS384, Alg::PS256, Alg::PS384, Alg::PS512, Alg::ES256] {
        assert!(!key.supports(alg), "{alg:?}");
    }
    let set = KeySet::from_keys(vec![key]);
    let tokens = text("rsa1024.jwt");
    let tokens: Vec<&str> = tokens.lines().collect();
    // Signed by openssl (testdata/rsa1024_jwt.py): RS256, RS512, PS256.
    verify(tokens[0], &set, &all_algs()).unwrap();
    verify(tokens[1], &set, &all_algs()).unwrap();
    assert!(verify(tokens[2], &set, &all_algs()).is_err());
    // A tampered payload fails under the legacy verifier too.
    let (head, rest) = tokens[0].split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let evil = URL_SAFE_NO_PAD.encode(claims().replace("alice", "admin"));
    assert_eq!(
        verify(&format!("{head}.{evil}.{sig}"), &set, &all_algs()),
        Err(TokenError::BadSignature)
    );
    // A DPoP proof by such a key is the client's choice of key, not configuration: refused,
    // though openssl signed it correctly (testdata/rsa1024_jwt.py).
    let proof = text("rsa1024_dpop.jwt");
    let req = shardgate_oidc::dpop::ProofRequest {
        htm: "GET",
        htu: "https://api.test/r",
        access_token: "tok",
        jkt: None,
        now: NOW,
        max_age: 60,
    };
    assert_eq!(
        shardgate_oidc::dpop::verify_proof(proof.trim(), &req)
            .unwrap_err()
            .to_string(),
        "DPoP proof jwk rejected: RSA key shorter than 2048 bits"
    );
    // Under 1024 bits nothing verifies: still refused.
    let err = Key::from_public_pem(&text("rsa512.pub.pem")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid key: RSA key shorter than 1024 bits"
    );
}

#[test]
fn fingerprint_tracks_content_not_formatting() {
    let a = jwks();
    let compact: serde_json::Value = serde_json::from_slice(&data("jwks.json")).unwrap();
    let b = JwkSet::from_json(&serde_json::to_vec(&compact).unwrap()).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let c = JwkSet::from_json(&rewrite_keys(|keys| keys.truncate(4))).unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_eq!(
        a.kids().collect::<Vec<_>>(),
        ["rsa1", "rsa2", "ec256", "ec384", "ed25519"]
    );
}

fn check(payload: &str, policy: &ClaimsPolicy, now: u64) -> Result<(), TokenError> {
    policy.check(&ClaimsView::parse(payload.as_bytes())?, now)
}

#[test]
fn time_claims_with_and_without_leeway() {
    let strict = ClaimsPolicy::default();
    let lenient = ClaimsPolicy {
        leeway_secs: 120,
        ..Default::default()
    };
    let exp = format!(r#"{{"exp":{NOW}}}"#);
    assert_eq!(
        check(&exp, &strict, NOW),
        Err(TokenError::Expired {
            exp: NOW as i64,
            now: NOW
        })
    );
    assert_eq!(check(&exp, &strict, NOW - 1), Ok(()));
    assert_eq!(check(&exp, &lenient, NOW + 119), Ok(()));
    assert!(matches!(
        check(&exp, &lenient, NOW + 120),
        Err(TokenError::Expired { .. })
    ));

    let nbf = format!(r#"{{"nbf":{}}}"#, NOW + 60);
    assert_eq!(
        check(&nbf, &strict, NOW),
        Err(TokenError::NotYetValid {
            nbf: (NOW + 60) as i64,
            now: NOW
        })
    );
    assert_eq!(check(&nbf, &lenient, NOW), Ok(()));
    assert_eq!(check(&nbf, &strict, NOW + 60), Ok(()));

    let iat = format!(r#"{{"iat":{}}}"#, NOW + 60);
    assert_eq!(
        check(&iat, &strict, NOW),
        Err(TokenError::IssuedInFuture {
            iat: (NOW + 60) as i64,
            now: NOW
        })
    );
    assert_eq!(check(&iat, &lenient, NOW), Ok(()));

    // Fractional NumericDate and absurd values do not wrap.
    assert!(matches!(
        check(r#"{"exp":1.5}"#, &lenient, NOW),
        Err(TokenError::Expired { .. })
    ));
    assert_eq!(
        check(r#"{"exp":1e300,"nbf":-1e300}"#, &lenient, NOW),
        Ok(())
    );
    assert_eq!(
        check(
            r#"{"exp":9223372036854775807}"#,
            &ClaimsPolicy {
                leeway_secs: u64::MAX,
                ..Default::default()
            },
            NOW
        ),
        Ok(())
    );
}

#[test]
fn issuer() {
    let policy = ClaimsPolicy {
        valid_issuers: vec!["https://idp.test".into(), "https://idp2.test".into()],
        ..Default::default()
    };
    assert_eq!(
        check(r#"{"iss":"https://idp2.test"}"#, &policy, NOW),
        Ok(())
    );
    assert_eq!(
        check(r#"{"iss":"https://idp.test/"}"#, &policy, NOW),
        Err(TokenError::IssuerMismatch {
            got: "https://idp.test/".into()
        })
    );
    assert_eq!(
        check(r#"{"sub":"x"}"#, &policy, NOW),
        Err(TokenError::MissingClaim("iss"))
    );
    assert_eq!(
        check(r#"{"iss":"anything"}"#, &ClaimsPolicy::default(), NOW),
        Ok(())
    );
}

#[test]
fn audience() {
    let rule = |required, expected: &[&str]| ClaimsPolicy {
        audience: Some(AudienceRule {
            claim: "aud".into(),
            required,
            expected: expected.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    };
    // match_with_client_id: required, expected = [client_id]
    let by_client = rule(true, &["gateway"]);
    assert_eq!(check(r#"{"aud":"gateway"}"#, &by_client, NOW), Ok(()));
    assert_eq!(
        check(r#"{"aud":["api","gateway"]}"#, &by_client, NOW),
        Ok(())
    );
    assert_eq!(
        check(r#"{"aud":["api"]}"#, &by_client, NOW),
        Err(TokenError::AudienceMismatch)
    );
    assert_eq!(
        check(r#"{"aud":"gateway2"}"#, &by_client, NOW),
        Err(TokenError::AudienceMismatch)
    );
    assert_eq!(
        check(r#"{"aud":[]}"#, &by_client, NOW),
        Err(TokenError::AudienceMismatch)
    );
    assert_eq!(
        check("{}", &by_client, NOW),
        Err(TokenError::AudienceMissing)
    );
    // required only: presence.
    assert_eq!(check(r#"{"aud":"x"}"#, &rule(true, &[]), NOW), Ok(()));
    assert_eq!(
        check("{}", &rule(true, &[]), NOW),
        Err(TokenError::AudienceMissing)
    );
    // not required: absent passes, present must match.
    assert_eq!(check("{}", &rule(false, &["gateway"]), NOW), Ok(()));
    assert_eq!(
        check(r#"{"aud":"x"}"#, &rule(false, &["gateway"]), NOW),
        Err(TokenError::AudienceMismatch)
    );
    // RFC 6750: invalid_token is a 401; status and code agree for every audience failure.
    for e in [TokenError::AudienceMismatch, TokenError::AudienceMissing] {
        assert_eq!((e.http_status(), e.bearer_error()), (401, "invalid_token"));
    }
    // aud of the wrong type is malformed.
    assert!(matches!(
        check(r#"{"aud":5}"#, &by_client, NOW),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn scopes_from_scope_and_scp() {
    let policy = ClaimsPolicy {
        required_scopes: vec!["read".into(), "write".into()],
        ..Default::default()
    };
    assert_eq!(
        check(r#"{"scope":"openid read write"}"#, &policy, NOW),
        Ok(())
    );
    assert_eq!(check(r#"{"scp":["write","read"]}"#, &policy, NOW), Ok(()));
    assert_eq!(check(r#"{"scp":"read write"}"#, &policy, NOW), Ok(()));
    assert_eq!(
        check(r#"{"scope":"read","scp":["write"]}"#, &policy, NOW),
        Ok(())
    );
    let err = check(r#"{"scope":"openid readwrite"}"#, &policy, NOW).unwrap_err();
    assert_eq!(
        err,
        TokenError::InsufficientScope {
            missing: "read write".into()
        }
    );
    assert_eq!(
        (err.http_status(), err.bearer_error()),
        (403, "insufficient_scope")
    );
    assert_eq!(
        check(r#"{"scope":"write"}"#, &policy, NOW),
        Err(TokenError::InsufficientScope {
            missing: "read".into()
        })
    );
    assert_eq!(check("{}", &ClaimsPolicy::default(), NOW), Ok(()));
}

#[test]
fn full_bearer_path_with_cache() {
    let set = jwks();
    let policy = ClaimsPolicy {
        valid_issuers: vec!["https://idp.test".into()],
        required_scopes: vec!["read".into()],
        leeway_secs: 120,
        ..Default::default()
    };
    let mut cache: TtlCache<()> = TtlCache::new(16);
    let t = token(Alg::ES256, Some("ec256"), &signer("ec256.pem"));
    let now_ms = NOW * 1000;
    assert!(cache.get(t.as_bytes(), now_ms).is_none());
    let jwt = Jwt::parse(&t).unwrap();
    verify_signature(&jwt, &set, &AlgPolicy::default()).unwrap();
    let claims = ClaimsView::parse(jwt.payload()).unwrap();
    policy.check(&claims, NOW).unwrap();
    cache.insert(t.as_bytes(), (), claims.cache_until(NOW, 600) * 1000);
    assert!(cache.get(t.as_bytes(), now_ms + 299_999).is_some());
    assert!(
        cache.get(t.as_bytes(), now_ms + 300_000).is_none(),
        "the entry ends with the token's exp"
    );
    assert_eq!((cache.hits(), cache.misses()), (1, 2));
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn garbage_and_truncated_tokens_never_panic() {
    let set = jwks();
    let policy = all_algs();
    let claims_policy = ClaimsPolicy {
        valid_issuers: vec!["https://idp.test".into()],
        audience: Some(AudienceRule {
            claim: "aud".into(),
            required: true,
            expected: vec!["gateway".into()],
        }),
        required_scopes: vec!["read".into()],
        ..Default::default()
    };
    let seeds = [
        token(Alg::RS256, Some("rsa1"), &signer("rsa1.pem")),
        token(Alg::ES256, Some("ec256"), &signer("ec256.pem")),
        token(Alg::EdDSA, None, &signer("ed25519.pem")),
    ];
    let alphabet =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/{}\" \x00\xff";
    let mut rng = Lcg(0x5eed);
    let run = |s: &str| {
        if let Ok(jwt) = Jwt::parse(s) {
            let _ = verify_signature(&jwt, &set, &policy);
            if let Ok(c) = ClaimsView::parse(jwt.payload()) {
                let _ = claims_policy.check(&c, NOW);
            }
        }
    };
    for seed in &seeds {
        // Every truncation.
        for end in 0..=seed.len() {
            run(&seed[..end]);
        }
        // Random byte mutations, insertions and deletions.
        for _ in 0..2000 {
            let mut bytes = seed.clone().into_bytes();
            for _ in 0..=(rng.next() % 4) {
                let pos = (rng.next() as usize) % bytes.len();
                let b = alphabet[(rng.next() as usize) % alphabet.len()];
                match rng.next() % 3 {
                    0 => bytes[pos] = b,
                    1 => bytes.insert(pos, b),
                    _ => {
                        bytes.remove(pos);
                    }
                }
            }
            run(&String::from_utf8_lossy(&bytes));
        }
    }
    // Random well-formed base64url parts holding random JSON-ish text.
    for _ in 0..2000 {
        let len = (rng.next() % 64) as usize;
        let junk: Vec<u8> = (0..len)
            .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
            .collect();
        let header = format!(
            r#"{{"alg":"RS256","kid":"rsa1","x":{}}}"#,
            String::from_utf8_lossy(&junk)
        );
        let t = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(&junk),
            URL_SAFE_NO_PAD.encode(&junk)
        );
        run(&t);
    }
    assert_eq!(
        Jwt::parse(&"e".repeat(20_000)).unwrap_err(),
        TokenError::TooLarge
    );
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body)
        .unwrap()
        .split('&')
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.replace("%3A", ":"))
        })
}

#[test]
fn client_assertions_verify_with_the_matching_public_key() {
    let endpoint = "https://idp.test/token";
    let cases = [
        ("rsa1.pem", "rsa1.pub.pem", None, Alg::RS256),
        (
            "rsa1.pkcs1.pem",
            "rsa1.pub.pem",
            Some(Alg::PS256),
            Alg::PS256,
        ),
        ("ec256.pem", "ec256.pub.pem", None, Alg::ES256),
        ("ed25519.pem", "ed25519.pub.pem", None, Alg::EdDSA),
    ];
    for (private, public, configured, expected_alg) in cases {
        let auth = ClientAuth {
            method: AuthMethod::PrivateKeyJwt,
            client_id: "gateway".into(),
            private_key_pem: Some(text(private)),
            key_id: Some("client-key-1".into()),
            assertion_alg: configured,
            assertion_lifetime_secs: 60,
            ..Default::default()
        };
        let (mut form, mut headers) = (FormBody::new(), Vec::new());
        auth.apply(endpoint, NOW, "jti-1", &mut form, &mut headers)
            .unwrap();
        assert!(headers.is_empty());
        assert_eq!(
            form_field(form.as_bytes(), "client_assertion_type").unwrap(),
            JWT_BEARER_ASSERTION
        );
        assert_eq!(form_field(form.as_bytes(), "client_id").unwrap(), "gateway");
        let assertion = form_field(form.as_bytes(), "client_assertion").unwrap();
        let jwt = Jwt::parse(&assertion).unwrap();
        assert_eq!((jwt.alg(), jwt.kid()), (expected_alg, Some("client-key-1")));
        let set = KeySet::from_keys(vec![Key::from_public_pem(&text(public)).unwrap()]);
        verify_signature(&jwt, &set, &AlgPolicy::default()).unwrap();
        let c: serde_json::Value = serde_json::from_slice(jwt.payload()).unwrap();
        assert_eq!(c["iss"], "gateway");
        assert_eq!(c["sub"], "gateway");
        assert_eq!(c["aud"], endpoint);
        assert_eq!(c["jti"], "jti-1");
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["exp"], NOW + 60);
    }

    // A mismatched configured alg is a load-time error.
    let bad = ClientAuth {
        method: AuthMethod::PrivateKeyJwt,
        client_id: "gateway".into(),
        private_key_pem: Some(text("ec256.pem")),
        assertion_alg: Some(Alg::RS256),
        ..Default::default()
    };
    assert!(bad.prepare().is_err());

    // client_secret_jwt: HS256 with the secret, audience override.
    let auth = ClientAuth {
        method: AuthMethod::ClientSecretJwt,
        client_id: "gateway".into(),
        client_secret: Some("shared secret".into()),
        assertion_audience: Some("https://idp.test".into()),
        assertion_lifetime_secs: 30,
        ..Default::default()
    };
    let prepared = auth.prepare().unwrap();
    let (mut form, mut headers) = (FormBody::new(), Vec::new());
    form.append("grant_type", "authorization_code");
    prepared
        .apply(endpoint, NOW, "jti-2", &mut form, &mut headers)
        .unwrap();
    assert!(
        form.as_bytes()
            .starts_with(b"grant_type=authorization_code&client_id=gateway&")
    );
    let assertion = form_field(form.as_bytes(), "client_assertion").unwrap();
    let jwt = Jwt::parse(&assertion).unwrap();
    let set = KeySet::from_keys(vec![Key::symmetric(b"shared secret")]);
    verify_signature(&jwt, &set, &AlgPolicy::only(Alg::HS256)).unwrap();
    let c: serde_json::Value = serde_json::from_slice(jwt.payload()).unwrap();
    assert_eq!(
        (c["aud"].as_str(), c["exp"].as_u64()),
        (Some("https://idp.test"), Some(NOW + 30))
    );
    assert_eq!(jwt.kid(), None);
}

#[test]
fn basic_auth_header() {
    let auth = ClientAuth {
        method: AuthMethod::ClientSecretBasic,
        client_id: "gate way:1".into(),
        client_secret: Some("p@ss:w/rd+é".into()),
        ..Default::default()
    };
    let (mut form, mut headers) = (FormBody::new(), Vec::new());
    auth.apply("https://idp.test/token", NOW, "j", &mut form, &mut headers)
        .unwrap();
    assert!(form.is_empty());
    let (name, value) = &headers[0];
    assert_eq!(name, "Authorization");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "gate+way%3A1:p%40ss%3Aw%2Frd%2B%C3%A9"
    );
}
