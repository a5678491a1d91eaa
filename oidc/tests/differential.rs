//! Differential test of the hand-written JWS/JWK/PEM code against `jsonwebtoken` 9 and
//! rustls-pki-types' PEM reader.
//!
//! Every token below, valid or tampered, is judged by both verifiers configured alike (the key's
//! algorithms only, `iss`, `aud`, `exp`, `nbf` with no leeway), and they must agree on accept or
//! reject; the valid ones must be accepted by both, so agreement can not come from both refusing
//! everything. Keys: the RSA fixtures in `testdata/` (ring cannot generate RSA keys) and EC P-256,
//! P-384 and Ed25519 keys generated afresh on every run. ES512 is not in `jsonwebtoken` 9
//! (`tests/es512.rs` checks it against openssl); here it only appears as a swapped-in `alg`.
#![allow(clippy::unwrap_used)]
// Tests wait on real processes and sockets with wall-clock deadlines: they read the system
// clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde_json::{Value, json};
use shardgate_oidc::claims::{AudienceRule, ClaimsPolicy, ClaimsView};
use shardgate_oidc::jwk::{Key, KeySet, pem_decode};
use shardgate_oidc::jwt::{Alg, AlgPolicy, Jwt, SigningKey, sign, verify_signature};

const ISS: &str = "https://idp.test";
const AUD: &str = "gateway";
const KID: &str = "k1";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn testdata(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A key pair under test: how each library signs with it and verifies with its public half.
struct Pair {
    name: &'static str,
    algs: Vec<Alg>,
    /// Our signer.
    signer: SigningKey,
    /// jsonwebtoken's signer.
    encoding: EncodingKey,
    /// Public key as SPKI PEM (or the HMAC secret).
    public_pem: String,
    symmetric: Option<Vec<u8>>,
}

impl Pair {
    fn rsa(name: &'static str, file: &str) -> Pair {
        let private = testdata(&format!("{file}.pem"));
        Pair {
            name,
            algs: vec![
                Alg::RS256,
                Alg::RS384,
                Alg::RS512,
                Alg::PS256,
                Alg::PS384,
                Alg::PS512,
            ],
            signer: SigningKey::from_pem(&private).unwrap(),
            encoding: EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
            public_pem: testdata(&format!("{file}.pub.pem")),
            symmetric: None,
        }
    }

    fn ec(name: &'static str, alg: Alg) -> Pair {
        let (ring_alg, spki_prefix) = match alg {
            Alg::ES256 => (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                "3059301306072a8648ce3d020106082a8648ce3d030107034200",
            ),
            Alg::ES384 => (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                "3076301006072a8648ce3d020106052b81040022036200",
            ),
            _ => unreachable!(),
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(ring_alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(ring_alg, pkcs8.as_ref(), &rng).unwrap();
        let mut spki = hex(spki_prefix);
        spki.extend_from_slice(pair.public_key().as_ref());
        Pair {
            name,
            algs: vec![alg],
            signer: SigningKey::ec_pkcs8(pkcs8.as_ref()).unwrap(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public_pem: pem("PUBLIC KEY", &spki),
            symmetric: None,
        }
    }

    fn ed25519(name: &'static str) -> Pair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = hex("302a300506032b6570032100");
        spki.extend_from_slice(pair.public_key().as_ref());
        Pair {
            name,
            algs: vec![Alg::EdDSA],
            signer: SigningKey::ed25519_pkcs8(pkcs8.as_ref()).unwrap(),
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_pem: pem("PUBLIC KEY", &spki),
            symmetric: None,
        }
    }

    fn hmac(name: &'static str, secret: &[u8]) -> Pair {
        Pair {
            name,
            algs: vec![Alg::HS256, Alg::HS384, Alg::HS512],
            signer: SigningKey::hmac(secret),
            encoding: EncodingKey::from_secret(secret),
            public_pem: String::new(),
            symmetric: Some(secret.to_vec()),
        }
    }

    /// Our verifier: the signature under an allow-list of this key's algorithms, then the claims.
    fn ours_accepts(&self, token: &str, now: u64) -> bool {
        let key = match &self.symmetric {
            Some(secret) => Key::symmetric(secret),
            None => match Key::from_public_pem(&self.public_pem) {
                Ok(k) => k,
                Err(_) => return false,
            },
        };
        let keys = KeySet::from_keys(vec![key.with_kid(KID)]);
        let policy = AlgPolicy {
            allowed: self.algs.iter().copied().collect(),
            allow_symmetric: self.symmetric.is_some(),
        };
        let Ok(jwt) = Jwt::parse(token) else {
            return false;
        };
        if verify_signature(&jwt, &keys, &policy).is_err() {
            return false;
        }
        let Ok(view) = ClaimsView::parse(jwt.payload()) else {
            return false;
        };
        let claims = ClaimsPolicy {
            valid_issuers: vec![ISS.into()],
            audience: Some(AudienceRule {
                claim: "aud".into(),
                required: true,
                expected: vec![AUD.into()],
            }),
            require_exp: true,
            ..ClaimsPolicy::default()
        };
        claims.check(&view, now).is_ok()
    }

    /// jsonwebtoken, configured the same way.
    fn reference_accepts(&self, token: &str) -> bool {
        let key = match &self.symmetric {
            Some(secret) => DecodingKey::from_secret(secret),
            None => {
                let pem = self.public_pem.as_bytes();
                let parsed = match self.algs[0] {
                    Alg::ES256 | Alg::ES384 => DecodingKey::from_ec_pem(pem),
                    Alg::EdDSA => DecodingKey::from_ed_pem(pem),
                    _ => DecodingKey::from_rsa_pem(pem),
                };
                match parsed {
                    Ok(k) => k,
                    Err(_) => return false,
                }
            }
        };
        let algs: Vec<Algorithm> = self.algs.iter().map(|a| reference_alg(*a)).collect();
        let mut v = Validation::new(algs[0]);
        v.algorithms = algs;
        v.leeway = 0;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[ISS]);
        v.set_audience(&[AUD]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<Value>(token, &key, &v).is_ok()
    }
}

fn reference_alg(alg: Alg) -> Algorithm {
    match alg {
        Alg::RS256 => Algorithm::RS256,
        Alg::RS384 => Algorithm::RS384,
        Alg::RS512 => Algorithm::RS512,
        Alg::PS256 => Algorithm::PS256,
        Alg::PS384 => Algorithm::PS384,
        Alg::PS512 => Algorithm::PS512,
        Alg::ES256 => Algorithm::ES256,
        Alg::ES384 => Algorithm::ES384,
        Alg::EdDSA => Algorithm::EdDSA,
        Alg::HS256 => Algorithm::HS256,
        Alg::HS384 => Algorithm::HS384,
        Alg::HS512 => Algorithm::HS512,
        other => panic!("no reference algorithm for {other}"),
    }
}

fn claims(now: u64, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut c = json!({
        "iss": ISS, "sub": "alice", "aud": AUD,
        "iat": now - 10, "nbf": now - 10, "exp": now + 300,
    });
    edit(&mut c);
    serde_json::to_vec(&c).unwrap()
}

fn parts(token: &str) -> (Value, Vec<u8>, Vec<u8>) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let p = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let s = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (serde_json::from_slice(&h).unwrap(), p, s)
}

fn join(header: &Value, payload: &[u8], sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

fn hmac_token(alg: Alg, header: &Value, payload: &[u8], secret: &[u8]) -> String {
    let ring_alg = match alg {
        Alg::HS256 => ring::hmac::HMAC_SHA256,
        Alg::HS384 => ring::hmac::HMAC_SHA384,
        _ => ring::hmac::HMAC_SHA512,
    };
    let mut h = header.clone();
    h["alg"] = json!(alg.as_str());
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring_alg, secret), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

const ALL_NAMES: [&str; 14] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512", "none",
];

/// Every (case, token, expected) for one key and algorithm.
fn cases(p: &Pair, other: &Pair, alg: Alg, now: u64) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let ours = |payload: &[u8]| sign(alg, Some(KID), payload, &p.signer).unwrap();
    let valid = ours(&claims(now, |_| {}));
    out.push(("valid, signed by us".into(), valid.clone(), true));
    let mut header = jsonwebtoken::Header::new(reference_alg(alg));
    header.kid = Some(KID.into());
    let reference_signed: Value = serde_json::from_slice(&claims(now, |_| {})).unwrap();
    out.push((
        "valid, signed by jsonwebtoken".into(),
        jsonwebtoken::encode(&header, &reference_signed, &p.encoding).unwrap(),
        true,
    ));
    out.push((
        "valid, aud among several".into(),
        ours(&claims(now, |c| c["aud"] = json!(["api", AUD]))),
        true,
    ));

    let (h, payload, sig) = parts(&valid);
    for bit in [0, 7, sig.len() * 4, sig.len() * 8 - 1] {
        let mut s = sig.clone();
        s[bit / 8] ^= 1 << (bit % 8);
        out.push((
            format!("signature bit {bit} flipped"),
            join(&h, &payload, &s),
            false,
        ));
    }
    out.push((
        "signature truncated".into(),
        join(&h, &payload, &sig[..sig.len() - 1]),
        false,
    ));
    out.push(("signature empty".into(), join(&h, &payload, &[]), false));
    for name in ALL_NAMES {
        if name == alg.as_str() {
            continue;
        }
        let mut swapped = h.clone();
        swapped["alg"] = json!(name);
        out.push((
            format!("header alg -> {name}"),
            join(&swapped, &payload, &sig),
            false,
        ));
    }
    let mut none = h.clone();
    none["alg"] = json!("none");
    out.push((
        "alg none, no signature".into(),
        join(&none, &payload, &[]),
        false,
    ));
    if p.symmetric.is_none() {
        // Alg confusion: an HMAC over the token keyed with the verifier's public key material.
        let der = pem_decode(&p.public_pem).unwrap().1;
        for (what, secret) in [("PEM", p.public_pem.as_bytes().to_vec()), ("DER", der)] {
            for hs in [Alg::HS256, Alg::HS384, Alg::HS512] {
                out.push((
                    format!("{hs} keyed with the public key {what}"),
                    hmac_token(hs, &h, &payload, &secret),
                    false,
                ));
            }
        }
    }
    let mut changed: Value = serde_json::from_slice(&payload).unwrap();
    changed["sub"] = json!("mallory");
    out.push((
        "payload changed".into(),
        join(&h, &serde_json::to_vec(&changed).unwrap(), &sig),
        false,
    ));
    out.push((
        "signed by another key".into(),
        sign(alg, Some(KID), &claims(now, |_| {}), &other.signer).unwrap(),
        false,
    ));
    out.push((
        "expired".into(),
        ours(&claims(now, |c| c["exp"] = json!(now - 100))),
        false,
    ));
    out.push((
        "not yet valid".into(),
        ours(&claims(now, |c| c["nbf"] = json!(now + 100))),
        false,
    ));
    out.push((
        "no exp".into(),
        ours(&claims(now, |c| {
            c.as_object_mut().unwrap().remove("exp");
        })),
        false,
    ));
    out.push((
        "wrong issuer".into(),
        ours(&claims(now, |c| c["iss"] = json!("https://evil.test"))),
        false,
    ));
    out.push((
        "wrong audience".into(),
        ours(&claims(now, |c| c["aud"] = json!("other-api"))),
        false,
    ));
    out.push((
        "no audience".into(),
        ours(&claims(now, |c| {
            c.as_object_mut().unwrap().remove("aud");
        })),
        false,
    ));
    out.push((
        "two segments".into(),
        valid.rsplit_once('.').unwrap().0.into(),
        false,
    ));
    out.push(("four segments".into(), format!("{valid}.x"), false));
    out
}

#[test]
fn our_verifier_agrees_with_jsonwebtoken_on_valid_and_tampered_tokens() {
    let now = now();
    let pairs = [
        Pair::rsa("rsa1", "rsa1"),
        Pair::rsa("rsa2", "rsa2"),
        Pair::ec("ec256-a", Alg::ES256),
        Pair::ec("ec256-b", Alg::ES256),
        Pair::ec("ec384-a", Alg::ES384),
        Pair::ec("ec384-b", Alg::ES384),
        Pair::ed25519("ed25519-a"),
        Pair::ed25519("ed25519-b"),
        Pair::hmac("hmac-a", b"an HMAC secret of at least 32 bytes"),
        Pair::hmac("hmac-b", b"another HMAC secret, 32 bytes long"),
    ];
    let mut disagreements = Vec::new();
    let mut judged = 0;
    for (i, p) in pairs.iter().enumerate() {
        // The pair's sibling of the same kind is the "another key".
        let other = &pairs[i ^ 1];
        for &alg in &p.algs {
            for (what, token, valid) in cases(p, other, alg, now) {
                let ours = p.ours_accepts(&token, now);
                let reference = p.reference_accepts(&token);
                judged += 1;
                if ours != reference || ours != valid {
                    disagreements.push(format!(
                        "{} {alg} {what}: ours {ours}, jsonwebtoken {reference}, expected {valid}",
                        p.name
                    ));
                }
            }
        }
    }
    assert!(judged > 500, "{judged}");
    assert!(
        disagreements.is_empty(),
        "{} of {judged}:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

/// Our PEM reader and rustls-pki-types' agree on every fixture and on broken variants of them:
/// same label and DER when both accept, and the same answer otherwise.
#[test]
fn our_pem_reader_agrees_with_pki_types() {
    let kind_label = |k: SectionKind| match k {
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        _ => "other",
    };
    let mut inputs: Vec<(String, String)> = Vec::new();
    for file in [
        "rsa1.pem",
        "rsa1.pub.pem",
        "rsa1.pkcs1.pem",
        "rsa2.pem",
        "rsa2.pub.pem",
        "ec256.pem",
        "ec256.pub.pem",
        "ec384.pem",
        "ec384.pub.pem",
        "ed25519.pem",
        "ed25519.pub.pem",
        "rsa1024.pub.pem",
    ] {
        let text = testdata(file);
        let body_line = text.lines().nth(1).unwrap().to_string();
        inputs.push((file.into(), text.clone()));
        inputs.push((format!("{file} CRLF"), text.replace('\n', "\r\n")));
        inputs.push((
            format!("{file} with text around"),
            format!("a comment line\n{text}trailing text\n"),
        ));
        inputs.push((
            format!("{file} without END"),
            text.lines()
                .filter(|l| !l.starts_with("-----END"))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
        inputs.push((
            format!("{file} END of another label"),
            text.replace("-----END ", "-----END X"),
        ));
        inputs.push((
            format!("{file} bad base64"),
            text.replacen(&body_line, &format!("{}!", &body_line[1..]), 1),
        ));
        inputs.push((
            format!("{file} no BEGIN"),
            text.lines()
                .filter(|l| !l.starts_with("-----BEGIN"))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    inputs.push(("empty".into(), String::new()));
    // The one deliberate difference: PKCS#1 public keys (APISIX `public_key` accepts them), which
    // pki-types has no section kind for and skips.
    let pkcs1 = testdata("rsa1.pkcs1.pub.pem");
    assert_eq!(pem_decode(&pkcs1).unwrap().0, "RSA PUBLIC KEY");
    assert!(Key::from_public_pem(&pkcs1).is_ok());
    assert!(<(SectionKind, Vec<u8>)>::from_pem_slice(pkcs1.as_bytes()).is_err());
    let mut disagreements = Vec::new();
    for (what, text) in &inputs {
        let ours = pem_decode(text).ok();
        let theirs = <(SectionKind, Vec<u8>)>::from_pem_slice(text.as_bytes()).ok();
        let same = match (&ours, &theirs) {
            (Some((label, der)), Some((kind, der2))) => label == kind_label(*kind) && der == der2,
            (None, None) => true,
            _ => false,
        };
        if !same {
            disagreements.push(format!(
                "{what}: ours {:?}, pki-types {:?}",
                ours.as_ref().map(|(l, d)| (l, d.len())),
                theirs.as_ref().map(|(k, d)| (k, d.len()))
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {}:\n{}",
        disagreements.len(),
        inputs.len(),
        disagreements.join("\n")
    );
}
