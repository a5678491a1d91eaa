//! JSON Web Key sets (RFC 7517) turned into verification keys that are ready to use.
//!
//! Every key is decoded and checked once, when the set is loaded, so a signature check does
//! no JSON, base64 or PEM work: it hands ring the prepared bytes. Keys that are malformed or
//! unsupported are skipped (and listed in [`KeySet::skipped`]) instead of failing the whole
//! set, because one exotic key published by an IdP must not take down every route using it.
//!
//! Symmetric (`oct`) keys are only accepted when the caller opts in: a set that mixes shared
//! secrets with public keys invites algorithm-confusion mistakes.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::{digest, hmac, signature};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::jwt::{Alg, TokenError};

/// Why a JWK set (or a single configured key) could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    #[error("JWK set is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JWK set has no `keys` array")]
    NoKeysArray,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("PEM: {0}")]
    Pem(&'static str),
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySelectError {
    #[error("no key with kid {kid:?}")]
    UnknownKid { kid: String },
    #[error("token has no kid and several keys could verify it")]
    AmbiguousKey,
    #[error("no key is usable with this algorithm")]
    AlgMismatch,
}

impl From<KeySelectError> for TokenError {
    fn from(e: KeySelectError) -> Self {
        match e {
            KeySelectError::UnknownKid { kid } => TokenError::UnknownKid { kid },
            KeySelectError::AmbiguousKey => TokenError::AmbiguousKey,
            KeySelectError::AlgMismatch => TokenError::KeyAlgMismatch,
        }
    }
}

/// Elliptic curves: P-256 and P-384 verify with ring, P-521 with RustCrypto's `p521`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

/// The family of a key, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec(EcCurve),
    Ed25519,
    Symmetric,
}

enum Material {
    /// DER `RSAPublicKey` (PKCS#1), the form ring's RSA verifiers take.
    Rsa {
        der: Box<[u8]>,
        bits: usize,
    },
    /// Uncompressed SEC1 point (`04 || x || y`).
    Ec {
        curve: EcCurve,
        point: Box<[u8]>,
    },
    /// P-521: the point, and the key decoded from it once (decoding validates the point).
    EcP521 {
        point: Box<[u8]>,
        key: Box<p521::ecdsa::VerifyingKey>,
    },
    Ed25519 {
        x: [u8; 32],
    },
    Symmetric(Box<SymmetricKeys>),
}

/// One ring HMAC key per hash, so a verify does not re-derive the padded key.
struct SymmetricKeys {
    hs256: hmac::Key,
    hs384: hmac::Key,
    hs512: hmac::Key,
    fingerprint: [u8; 32],
}

/// One verification key, prepared.
pub struct Key {
    kid: Option<String>,
    alg: Option<Alg>,
    material: Material,
}

impl std::fmt::Debug for Key {
    // Never print symmetric key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind())
            .finish()
    }
}

impl Key {
    /// A key from an APISIX `public_key` PEM: SPKI `PUBLIC KEY` (RSA, EC P-256/P-384, Ed25519)
    /// or PKCS#1 `RSA PUBLIC KEY`. The key has no `kid`, so it matches any token `kid`.
    pub fn from_public_pem(pem: &str) -> Result<Key, JwksError> {
        let (label, der) = pem_decode(pem)?;
        let material = match label.as_str() {
            "PUBLIC KEY" => material_from_spki(&der)?,
            "RSA PUBLIC KEY" => rsa_material(der)?,
            _ => {
                return Err(JwksError::Pem(
                    "expected a PUBLIC KEY or RSA PUBLIC KEY block",
                ));
            }
        };
        Ok(Key {
            kid: None,
            alg: None,
            material,
        })
    }

    /// A shared secret for HS256/HS384/HS512.
    pub fn symmetric(secret: &[u8]) -> Key {
        let fingerprint = sha256(&[b"oct", secret]);
        Key {
            kid: None,
            alg: None,
            material: Material::Symmetric(Box::new(SymmetricKeys {
                hs256: hmac::Key::new(hmac::HMAC_SHA256, secret),
                hs384: hmac::Key::new(hmac::HMAC_SHA384, secret),
                hs512: hmac::Key::new(hmac::HMAC_SHA512, secret),
                fingerprint,
            })),
        }
    }

    /// Sets the key id (for keys built from PEM or secrets).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Key {
        self.kid = Some(kid.into());
        self
    }

    /// Restricts the key to one algorithm, as a JWK `alg` member does.
    pub fn with_alg(mut self, alg: Alg) -> Key {
        self.alg = Some(alg);
        self
    }

    /// One public JWK (RFC 7517), as a DPoP proof's `jwk` header carries it.
    pub fn from_jwk(value: serde_json::Value) -> Result<Key, &'static str> {
        key_from_jwk(value, JwksOptions::default())
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Option<Alg> {
        self.alg
    }

    pub fn kind(&self) -> KeyKind {
        match &self.material {
            Material::Rsa { .. } => KeyKind::Rsa,
            Material::Ec { curve, .. } => KeyKind::Ec(*curve),
            Material::EcP521 { .. } => KeyKind::Ec(EcCurve::P521),
            Material::Ed25519 { .. } => KeyKind::Ed25519,
            Material::Symmetric(_) => KeyKind::Symmetric,
        }
    }

    pub fn is_symmetric(&self) -> bool {
        matches!(self.material, Material::Symmetric(_))
    }

    /// RSA modulus size in bits, for logs.
    pub fn rsa_bits(&self) -> Option<usize> {
        match &self.material {
            Material::Rsa { bits, .. } => Some(*bits),
            _ => None,
        }
    }

    /// Whether this is an RSA key under [`MIN_RSA_BITS`]: accepted (APISIX takes it), but a
    /// key that short can be factored by a well-resourced attacker, who can then forge tokens.
    pub fn is_short_rsa(&self) -> bool {
        self.rsa_bits().is_some_and(|bits| bits < MIN_RSA_BITS)
    }

    /// Whether this key may verify a token signed with `alg`: the material must fit the
    /// algorithm (an RSA key never verifies HS256, whatever bytes are around) and a key
    /// restricted by its own `alg` only verifies that one. A short RSA key verifies only the
    /// algorithms ring has legacy verifiers for.
    pub fn supports(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        use Alg::*;
        matches!((&self.material, alg), (Material::Rsa { .. }, RS256 | RS512))
            || matches!(
                (&self.material, alg),
                (
                    Material::Rsa { bits, .. },
                    RS384 | PS256 | PS384 | PS512
                ) if *bits >= MIN_RSA_BITS
            )
            || matches!(
                (&self.material, alg),
                (
                    Material::Ec {
                        curve: EcCurve::P256,
                        ..
                    },
                    ES256
                ) | (
                    Material::Ec {
                        curve: EcCurve::P384,
                        ..
                    },
                    ES384
                ) | (Material::EcP521 { .. }, ES512)
                    | (Material::Ed25519 { .. }, EdDSA)
                    | (Material::Symmetric(_), HS256 | HS384 | HS512)
            )
    }

    /// Checks `signature` over `message`. Callers go through [`crate::jwt::verify_signature`],
    /// which applies the algorithm policy first.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        if !self.supports(alg) {
            return Err(TokenError::KeyAlgMismatch);
        }
        let ok = match &self.material {
            Material::Rsa { der, bits } if *bits < MIN_RSA_BITS => {
                let params: &'static dyn signature::VerificationAlgorithm = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                    Alg::RS512 => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
                    _ => return Err(TokenError::KeyAlgMismatch),
                };
                signature::UnparsedPublicKey::new(params, &der[..])
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Rsa { der, .. } => {
                let params: &'static dyn signature::VerificationAlgorithm = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(TokenError::KeyAlgMismatch),
                };
                signature::UnparsedPublicKey::new(params, &der[..])
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Ec { curve, point } => {
                let params = match curve {
                    EcCurve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    EcCurve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                    EcCurve::P521 => return Err(TokenError::KeyAlgMismatch),
                };
                signature::UnparsedPublicKey::new(params, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Material::EcP521 { key, .. } => {
                use p521::ecdsa::signature::Verifier as _;
                p521::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|sig| key.verify(message, &sig).is_ok())
            }
            Material::Ed25519 { x } => signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            Material::Symmetric(keys) => {
                let key = match alg {
                    Alg::HS256 => &keys.hs256,
                    Alg::HS384 => &keys.hs384,
                    Alg::HS512 => &keys.hs512,
                    _ => return Err(TokenError::KeyAlgMismatch),
                };
                // hmac::verify compares in constant time.
                hmac::verify(key, message, sig).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }

    fn fingerprint_into(&self, ctx: &mut digest::Context) {
        ctx.update(self.kid.as_deref().unwrap_or("").as_bytes());
        ctx.update(&[0]);
        ctx.update(self.alg.map_or("", Alg::as_str).as_bytes());
        ctx.update(&[0]);
        match &self.material {
            Material::Rsa { der, .. } => ctx.update(der),
            Material::Ec { point, .. } | Material::EcP521 { point, .. } => ctx.update(point),
            Material::Ed25519 { x } => ctx.update(x),
            // Only a hash of the secret goes into the fingerprint, so it can be logged.
            Material::Symmetric(keys) => ctx.update(&keys.fingerprint),
        }
        ctx.update(&[0xff]);
    }
}

/// Options for [`KeySet::from_json_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JwksOptions {
    /// Accept `kty: oct` keys. Off by default: published key sets should never hold secrets.
    pub allow_symmetric: bool,
}

/// A key that was left out of a set, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub kid: Option<String>,
    pub reason: &'static str,
}

/// A set of prepared verification keys.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<SkippedKey>,
    fingerprint: [u8; 32],
}

/// The name the JWKS endpoint gives it; the same type serves configured keys.
pub type JwkSet = KeySet;

impl KeySet {
    /// Parses a JWKS document, public keys only.
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, JwksError> {
        Self::from_json_with(bytes, JwksOptions::default())
    }

    pub fn from_json_with(bytes: &[u8], opts: JwksOptions) -> Result<KeySet, JwksError> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Option<Vec<serde_json::Value>>,
        }
        let doc: Doc = serde_json::from_slice(bytes)?;
        let raw_keys = doc.keys.ok_or(JwksError::NoKeysArray)?;
        let mut keys = Vec::with_capacity(raw_keys.len());
        let mut skipped = Vec::new();
        for value in raw_keys {
            let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            match key_from_jwk(value, opts) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(SkippedKey { kid, reason }),
            }
        }
        Ok(Self::build(keys, skipped))
    }

    /// A set made of configured keys (e.g. one `public_key` PEM, or a shared secret).
    pub fn from_keys(keys: Vec<Key>) -> KeySet {
        Self::build(keys, Vec::new())
    }

    fn build(keys: Vec<Key>, skipped: Vec<SkippedKey>) -> KeySet {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for key in &keys {
            key.fingerprint_into(&mut ctx);
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ctx.finish().as_ref());
        KeySet {
            keys,
            skipped,
            fingerprint,
        }
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s of the usable keys, in document order.
    pub fn kids(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().filter_map(Key::kid)
    }

    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// Keys that were left out, with the reason (for a warning log on load).
    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// SHA-256 over the usable keys' ids, algs and material, in order. Two fetches of the
    /// same keys give the same value whatever the JSON formatting, so a refetch can tell
    /// whether anything changed.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Picks the key for a token.
    ///
    /// With a `kid`: the first key with that id that supports `alg`. When no key carries
    /// that id, a set whose keys have no ids at all (a configured `public_key`) falls back to
    /// the rule for tokens without `kid`. Without a `kid`: exactly one key must support
    /// `alg`, otherwise the choice would be a guess.
    pub fn select(&self, kid: Option<&str>, alg: Alg) -> Result<&Key, KeySelectError> {
        if let Some(kid) = kid {
            let mut seen = false;
            for key in self.keys.iter().filter(|k| k.kid() == Some(kid)) {
                seen = true;
                if key.supports(alg) {
                    return Ok(key);
                }
            }
            if seen {
                return Err(KeySelectError::AlgMismatch);
            }
            if self.keys.is_empty() || self.keys.iter().any(|k| k.kid.is_some()) {
                return Err(KeySelectError::UnknownKid {
                    kid: truncate(kid, 128).to_owned(),
                });
            }
        }
        let mut found = None;
        for key in self.keys.iter().filter(|k| k.supports(alg)) {
            if found.is_some() {
                return Err(KeySelectError::AmbiguousKey);
            }
            found = Some(key);
        }
        found.ok_or(KeySelectError::AlgMismatch)
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary (for values echoed into errors).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(rename = "use", default)]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

fn key_from_jwk(value: serde_json::Value, opts: JwksOptions) -> Result<Key, &'static str> {
    let raw: RawJwk =
        serde_json::from_value(value).map_err(|_| "member with a wrong type or missing kty")?;
    match raw.use_.as_deref() {
        None | Some("sig") => {}
        Some(_) => return Err("use is not sig"),
    }
    if let Some(ops) = &raw.key_ops
        && !ops.iter().any(|op| op == "verify")
    {
        return Err("key_ops does not include verify");
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => match Alg::from_name(name) {
            Some(Alg::None) | None => return Err("unsupported alg"),
            Some(a) => Some(a),
        },
    };
    let b64u = |field: &Option<String>, what: &'static str| -> Result<Vec<u8>, &'static str> {
        let s = field.as_deref().ok_or(what)?;
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| what)
    };
    let material = match raw.kty.as_str() {
        "RSA" => {
            if raw.n.is_some() || raw.e.is_some() {
                let n = b64u(&raw.n, "bad or missing RSA n")?;
                let e = b64u(&raw.e, "bad or missing RSA e")?;
                rsa_material(rsa_public_key_der(&n, &e))
                    .map_err(|_| "RSA key rejected (size or exponent)")?
            } else {
                let cert = raw
                    .x5c
                    .as_ref()
                    .and_then(|c| c.first())
                    .ok_or("RSA key has neither n/e nor x5c")?;
                let der = STANDARD.decode(cert).map_err(|_| "x5c[0] is not base64")?;
                let material = material_from_cert(&der)?;
                if !matches!(material, Material::Rsa { .. }) {
                    return Err("x5c[0] does not hold an RSA key");
                }
                material
            }
        }
        "EC" => {
            let (curve, len) = match raw.crv.as_deref() {
                Some("P-256") => (EcCurve::P256, 32),
                Some("P-384") => (EcCurve::P384, 48),
                Some("P-521") => (EcCurve::P521, 66),
                _ => return Err("unsupported EC curve"),
            };
            let x = b64u(&raw.x, "bad or missing EC x")?;
            let y = b64u(&raw.y, "bad or missing EC y")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinate has the wrong length");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ec_material(curve, point.into_boxed_slice())
                .map_err(|_| "EC point is not on the curve")?
        }
        "OKP" => {
            if raw.crv.as_deref() != Some("Ed25519") {
                return Err("unsupported OKP curve");
            }
            let x = b64u(&raw.x, "bad or missing OKP x")?;
            Material::Ed25519 {
                x: x.try_into().map_err(|_| "Ed25519 key is not 32 bytes")?,
            }
        }
        "oct" => {
            if !opts.allow_symmetric {
                return Err("symmetric keys are not allowed in this set");
            }
            let k = b64u(&raw.k, "bad or missing oct k")?;
            if k.is_empty() {
                return Err("empty symmetric key");
            }
            Key::symmetric(&k).material
        }
        _ => return Err("unsupported kty"),
    };
    let key = Key {
        kid: raw.kid,
        alg,
        material,
    };
    if let Some(alg) = alg
        && !key.supports(alg)
    {
        return Err("alg does not fit the key type");
    }
    Ok(key)
}

fn material_from_cert(der: &[u8]) -> Result<Material, &'static str> {
    let cert_der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&cert_der)
        .map_err(|_| "x5c[0] is not a valid certificate")?;
    let spki = cert.subject_public_key_info();
    material_from_spki(spki.as_ref()).map_err(|_| "unsupported key in x5c certificate")
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// An uncompressed point on `curve`. ring checks P-256/P-384 points at verify time; P-521 is
/// decoded (and so checked) here, once.
fn ec_material(curve: EcCurve, point: Box<[u8]>) -> Result<Material, JwksError> {
    if curve == EcCurve::P521 {
        let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
            .map_err(|_| JwksError::InvalidKey("P-521 point is not on the curve"))?;
        return Ok(Material::EcP521 {
            point,
            key: Box::new(key),
        });
    }
    Ok(Material::Ec { curve, point })
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
fn material_from_spki(der: &[u8]) -> Result<Material, JwksError> {
    const BAD: JwksError = JwksError::InvalidKey("malformed SubjectPublicKeyInfo");
    let mut outer = der::Reader::new(der);
    let mut spki = der::Reader::new(outer.expect(der::SEQUENCE).ok_or(BAD)?);
    if !outer.is_empty() {
        return Err(BAD);
    }
    let mut alg_id = der::Reader::new(spki.expect(der::SEQUENCE).ok_or(BAD)?);
    let bits = spki.expect(der::BIT_STRING).ok_or(BAD)?;
    let key = match bits.split_first() {
        Some((0, rest)) => rest,
        _ => return Err(BAD),
    };
    let oid = alg_id.expect(der::OID).ok_or(BAD)?;
    if oid == OID_RSA {
        rsa_material(key.to_vec())
    } else if oid == OID_EC {
        let curve_oid = alg_id.expect(der::OID).ok_or(BAD)?;
        let (curve, len) = if curve_oid == OID_P256 {
            (EcCurve::P256, 65)
        } else if curve_oid == OID_P384 {
            (EcCurve::P384, 97)
        } else if curve_oid == OID_P521 {
            (EcCurve::P521, 133)
        } else {
            return Err(JwksError::InvalidKey("unsupported EC curve"));
        };
        if key.len() != len || key[0] != 0x04 {
            return Err(JwksError::InvalidKey("EC point is not uncompressed"));
        }
        ec_material(curve, key.into())
    } else if oid == OID_ED25519 {
        let x: [u8; 32] = key
            .try_into()
            .map_err(|_| JwksError::InvalidKey("Ed25519 key is not 32 bytes"))?;
        Ok(Material::Ed25519 { x })
    } else {
        Err(JwksError::InvalidKey("unsupported public key algorithm"))
    }
}

/// RSA keys at least this long verify every RSA algorithm; shorter ones (down to
/// [`MIN_LEGACY_RSA_BITS`]) are accepted as APISIX accepts them, but verify RS256 and RS512 only
/// (ring has legacy verifiers for those two) and are worth a warning: see [`Key::is_short_rsa`].
pub const MIN_RSA_BITS: usize = 2048;
/// Below this, no verifier here takes the key: it is refused at load.
pub const MIN_LEGACY_RSA_BITS: usize = 1024;

/// Checks a DER `RSAPublicKey` and keeps it. Keys under 1024 bits (or over ring's 8192) are
/// refused here rather than failing every verify later.
fn rsa_material(der: Vec<u8>) -> Result<Material, JwksError> {
    const BAD: JwksError = JwksError::InvalidKey("malformed RSAPublicKey");
    let mut outer = der::Reader::new(&der);
    let mut seq = der::Reader::new(outer.expect(der::SEQUENCE).ok_or(BAD)?);
    let n = der::positive_integer(seq.expect(der::INTEGER).ok_or(BAD)?).ok_or(BAD)?;
    let e = der::positive_integer(seq.expect(der::INTEGER).ok_or(BAD)?).ok_or(BAD)?;
    if !outer.is_empty() || !seq.is_empty() {
        return Err(BAD);
    }
    let bits = n.len() * 8 - n[0].leading_zeros() as usize;
    if bits < MIN_LEGACY_RSA_BITS {
        return Err(JwksError::InvalidKey("RSA key shorter than 1024 bits"));
    }
    if bits > 8192 {
        return Err(JwksError::InvalidKey("RSA key longer than 8192 bits"));
    }
    // ring accepts odd exponents from 3 up to 2^33 - 1.
    if e.len() > 5 || e[e.len() - 1] & 1 == 0 || (e.len() == 1 && e[0] < 3) {
        return Err(JwksError::InvalidKey("unsupported RSA exponent"));
    }
    Ok(Material::Rsa {
        der: der.into_boxed_slice(),
        bits,
    })
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` from JWK n/e.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    der::write_unsigned_integer(&mut body, n);
    der::write_unsigned_integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    der::write_header(&mut out, der::SEQUENCE, body.len());
    out.extend_from_slice(&body);
    out
}

/// Decodes the first PEM block: returns its label and DER bytes.
pub fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), JwksError> {
    let begin = pem
        .find("-----BEGIN ")
        .ok_or(JwksError::Pem("no BEGIN line"))?;
    let rest = &pem[begin + "-----BEGIN ".len()..];
    let label_end = rest
        .find("-----")
        .ok_or(JwksError::Pem("unterminated BEGIN line"))?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body
        .find(&end_marker)
        .ok_or(JwksError::Pem("no matching END line"))?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|_| JwksError::Pem("body is not base64"))?;
    Ok((label.to_owned(), der))
}

/// Just enough DER to read SubjectPublicKeyInfo / RSAPublicKey and write RSAPublicKey.
mod der {
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;

    pub struct Reader<'a> {
        input: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(input: &'a [u8]) -> Self {
            Reader { input }
        }

        pub fn is_empty(&self) -> bool {
            self.input.is_empty()
        }

        /// Reads one TLV with the given tag and returns its value; `None` on any mismatch
        /// or malformed length (definite, minimal lengths only).
        pub fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
            let (&t, rest) = self.input.split_first()?;
            if t != tag {
                return None;
            }
            let (&first, mut rest) = rest.split_first()?;
            let len = if first < 0x80 {
                usize::from(first)
            } else {
                let n = usize::from(first & 0x7f);
                if n == 0 || n > 2 || rest.len() < n {
                    return None;
                }
                let mut len = 0usize;
                for &b in &rest[..n] {
                    len = (len << 8) | usize::from(b);
                }
                if len < 0x80 || (n == 2 && len < 0x100) {
                    return None;
                }
                rest = &rest[n..];
                len
            };
            if rest.len() < len {
                return None;
            }
            let (value, rest) = rest.split_at(len);
            self.input = rest;
            Some(value)
        }
    }

    /// The magnitude of a non-negative INTEGER without its sign byte; `None` for negative,
    /// zero or non-minimal encodings.
    pub fn positive_integer(value: &[u8]) -> Option<&[u8]> {
        match value {
            [] => None,
            [0] => None,
            [0, next, ..] if *next < 0x80 => None,
            [0, rest @ ..] => Some(rest),
            [first, ..] if *first >= 0x80 => None,
            v => Some(v),
        }
    }

    pub fn write_header(out: &mut Vec<u8>, tag: u8, len: usize) {
        out.push(tag);
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
    }

    pub fn write_unsigned_integer(out: &mut Vec<u8>, mut magnitude: &[u8]) {
        while let [0, rest @ ..] = magnitude {
            magnitude = rest;
        }
        let pad = magnitude.first().is_none_or(|b| *b >= 0x80);
        write_header(out, INTEGER, magnitude.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn der_integer_round_trip() {
        let mut out = Vec::new();
        der::write_unsigned_integer(&mut out, &[0, 0, 0x80, 1]);
        assert_eq!(out, [0x02, 0x03, 0x00, 0x80, 0x01]);
        let mut r = der::Reader::new(&out);
        assert_eq!(
            der::positive_integer(r.expect(der::INTEGER).unwrap()),
            Some(&[0x80, 0x01][..])
        );
    }

    #[test]
    fn der_reader_rejects_truncated_and_long_form_abuse() {
        assert!(
            der::Reader::new(&[0x30, 0x05, 0x01])
                .expect(der::SEQUENCE)
                .is_none()
        );
        assert!(
            der::Reader::new(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0])
                .expect(der::SEQUENCE)
                .is_none()
        );
        assert!(
            der::Reader::new(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff])
                .expect(der::SEQUENCE)
                .is_none()
        );
        assert!(der::Reader::new(&[]).expect(der::SEQUENCE).is_none());
    }

    #[test]
    fn skips_bad_keys_but_keeps_the_rest() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"},
            {"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"},
            {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
            {"kty":"OKP","kid":"enc","use":"enc","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","kid":"ok","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":7}
        ]}"#;
        let set = KeySet::from_json(doc).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["ok"]);
        let reasons: Vec<_> = set
            .skipped()
            .iter()
            .map(|s| (s.kid.as_deref(), s.reason))
            .collect();
        assert_eq!(reasons.len(), 5);
        assert_eq!(
            reasons[0],
            (Some("short"), "RSA key rejected (size or exponent)")
        );
        assert_eq!(
            reasons[2],
            (Some("secret"), "symmetric keys are not allowed in this set")
        );
        assert_eq!(reasons[3], (Some("enc"), "use is not sig"));

        let with_oct = KeySet::from_json_with(
            doc,
            JwksOptions {
                allow_symmetric: true,
            },
        )
        .unwrap();
        assert!(with_oct.contains_kid("secret"));
    }

    #[test]
    fn not_a_set() {
        assert!(matches!(
            KeySet::from_json(b"{}"),
            Err(JwksError::NoKeysArray)
        ));
        assert!(matches!(KeySet::from_json(b"[1"), Err(JwksError::Json(_))));
    }

    #[test]
    fn pem_errors() {
        assert!(Key::from_public_pem("nothing here").is_err());
        assert!(
            Key::from_public_pem("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----")
                .is_err()
        );
        assert!(
            Key::from_public_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
        assert!(
            Key::from_public_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .is_err()
        );
    }
}
