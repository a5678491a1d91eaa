//! Compact JWS (RFC 7515) as used by JWTs: split, decode, verify, sign.
//!
//! Verification is deliberately narrow: `alg: none` is never verifiable, the algorithm must
//! be on the caller's allow-list, HMAC algorithms only ever use a configured shared secret
//! (never bytes of a public key), and a key restricted to one `alg` only verifies that one.
//! Header members that point at keys (`jku`, `jwk`, `x5u`, `x5c`) are ignored: the token never
//! chooses where its key comes from.
//!
//! # Why not `jsonwebtoken`
//!
//! This module, [`crate::jwk`] and the PEM reader are written directly on ring (plus RustCrypto's
//! `p521` for ES512, which ring lacks, and its `rsa` for signing with RSA keys under 2048 bits,
//! which ring refuses). What `jsonwebtoken` would not give us:
//! * key selection over a JWKS by `kid` and `alg`, per-key `alg` restrictions, and a set that skips
//!   (and reports) the one unusable key an IdP publishes instead of failing, with an unknown `kid`
//!   told apart so the provider can refetch: `jsonwebtoken` checks one token against one key;
//! * keys prepared once per JWKS fetch, so a verification does no PEM, JSON or base64 work on keys,
//!   and a token parsed once (borrowed, no claims struct) for the signature, the claims and the
//!   upstream headers;
//! * APISIX's claim rules (`claim_validator` with a custom audience claim, `iat_slack` on
//!   `exp`/`nbf`/`iat`, `scope` strings and `scp` arrays) and an error per cause for
//!   RFC 6750 descriptions, where `jsonwebtoken` applies its own claim rules;
//! * no second full crypto stack: 10.x needs aws-lc-rs, or RustCrypto for every algorithm, beside
//!   ring (9.x, ring-based, is superseded by it and has no ES512);
//! * PKCS#1 `RSA PUBLIC KEY` PEM for `public_key`, which rustls-pki-types' PEM reader skips.
//!
//! `tests/differential.rs` holds this to `jsonwebtoken` 9 and rustls-pki-types' PEM reader: they
//! must agree on every valid and tampered token (RS/PS, ES256/384, EdDSA, HS; ES512 is outside
//! `jsonwebtoken` 9 and checked against openssl in `tests/es512.rs`; bit flips, swapped `alg`
//! including `none` and HMAC keyed with the public key, changed payload, wrong key, `exp`, `nbf`,
//! `iss`, `aud`) and on every PEM fixture and broken variant.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{hmac, rand, signature};
use serde::Deserialize;

use crate::jwk::{JwksError, KeySet, pem_decode};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. Each variant is precise enough for an `error_description` and a
/// log line; none of them carries token material beyond a short, truncated `kid` or `iss`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("unsupported signing algorithm")]
    UnsupportedAlg,
    #[error("signing algorithm {alg} is not allowed")]
    AlgNotAllowed { alg: Alg },
    #[error("unsigned tokens (alg none) are not accepted")]
    NoneAlg,
    #[error("token header has a critical extension this verifier does not understand")]
    UnsupportedCrit,
    #[error("no key with kid {kid:?}")]
    UnknownKid { kid: String },
    #[error("token has no kid and more than one key could verify it")]
    AmbiguousKey,
    #[error("no key is usable with the token's algorithm")]
    KeyAlgMismatch,
    #[error("signature verification failed")]
    BadSignature,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: i64, now: u64 },
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: u64 },
    #[error("token issued in the future at {iat} (now {now})")]
    IssuedInFuture { iat: i64, now: u64 },
    #[error("issuer {got:?} is not trusted")]
    IssuerMismatch { got: String },
    #[error("mismatched audience")]
    AudienceMismatch,
    #[error("required audience claim not present")]
    AudienceMissing,
    #[error("required claim {0} not present")]
    MissingClaim(&'static str),
    #[error("required scopes {missing} not present")]
    InsufficientScope { missing: String },
    #[error("claims do not match the schema: {0}")]
    SchemaMismatch(String),
}

impl TokenError {
    /// HTTP status for the bearer path, agreeing with [`TokenError::bearer_error`] as RFC 6750
    /// section 3.1 pairs them: 403 `insufficient_scope` for a valid token that lacks scopes, 401
    /// `invalid_token` for everything else. A token for another audience is "invalid for other
    /// reasons" (RFC 6750), so 401 (APISIX answers 403 with no RFC 6750 code; its
    /// `error_description` texts are kept).
    pub fn http_status(&self) -> u16 {
        match self.bearer_error() {
            "insufficient_scope" => 403,
            _ => 401,
        }
    }

    /// The RFC 6750 `error` code for a `WWW-Authenticate: Bearer` challenge.
    pub fn bearer_error(&self) -> &'static str {
        match self {
            TokenError::InsufficientScope { .. } => "insufficient_scope",
            _ => "invalid_token",
        }
    }
}

/// JWS algorithms. `None` parses (so it can be named in errors) but never verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    /// ECDSA P-521 with SHA-512 (RustCrypto's `p521`: ring has no P-521).
    ES512,
    EdDSA,
    HS256,
    HS384,
    HS512,
    None,
}

impl Alg {
    pub const ALL: [Alg; 14] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::None,
    ];

    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::None => "none",
        }
    }

    pub fn is_symmetric(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    pub fn is_asymmetric(self) -> bool {
        !self.is_symmetric() && self != Alg::None
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Alg, TokenError> {
        Alg::from_name(s).ok_or(TokenError::UnsupportedAlg)
    }
}

/// A set of algorithms (a bit set: checking membership costs one AND).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet(u16);

impl AlgSet {
    pub const fn empty() -> AlgSet {
        AlgSet(0)
    }

    /// Every public-key algorithm.
    pub fn asymmetric() -> AlgSet {
        Alg::ALL.into_iter().filter(|a| a.is_asymmetric()).collect()
    }

    pub fn insert(&mut self, alg: Alg) {
        self.0 |= alg.bit();
    }

    pub fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Alg> for AlgSet {
    fn from_iter<I: IntoIterator<Item = Alg>>(iter: I) -> AlgSet {
        let mut set = AlgSet::empty();
        for a in iter {
            set.insert(a);
        }
        set
    }
}

/// Which algorithms a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgPolicy {
    /// From `token_signing_alg_values_expected`, or every asymmetric alg by default.
    pub allowed: AlgSet,
    /// HS* also needs this, so a shared secret is a deliberate choice.
    pub allow_symmetric: bool,
}

impl Default for AlgPolicy {
    fn default() -> Self {
        AlgPolicy {
            allowed: AlgSet::asymmetric(),
            allow_symmetric: false,
        }
    }
}

impl AlgPolicy {
    /// Only `alg` (APISIX's `token_signing_alg_values_expected` is a single string).
    pub fn only(alg: Alg) -> AlgPolicy {
        AlgPolicy {
            allowed: [alg].into_iter().collect(),
            allow_symmetric: alg.is_symmetric(),
        }
    }

    pub fn permits(&self, alg: Alg) -> bool {
        alg != Alg::None
            && self.allowed.contains(alg)
            && (self.allow_symmetric || !alg.is_symmetric())
    }
}

/// The protected header members this verifier looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A split and decoded compact JWS. The signature is not checked yet.
#[derive(Debug)]
pub struct Jwt<'a> {
    raw: &'a str,
    signing_input_len: usize,
    header: Header,
    /// Decoded payload followed by the decoded signature: one allocation per token.
    decoded: Vec<u8>,
    payload_len: usize,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    typ: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

impl<'a> Jwt<'a> {
    /// Splits `token` into exactly three base64url parts (no padding), decodes them and parses
    /// the header. Unknown `alg` names and any `crit` member are refused here.
    pub fn parse(token: &'a str) -> Result<Jwt<'a>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let mut parts = token.splitn(4, '.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        if h64.is_empty() || p64.is_empty() {
            return Err(TokenError::Malformed("empty header or payload"));
        }
        // Headers are small; decode on the stack.
        let mut hbuf = [0u8; 1024];
        let hlen = URL_SAFE_NO_PAD
            .decode_slice(h64, &mut hbuf)
            .map_err(|_| TokenError::Malformed("header is not base64url or over 1 KiB"))?;
        let header = parse_header(&hbuf[..hlen])?;

        let mut decoded = Vec::with_capacity(p64.len() / 4 * 3 + 3 + s64.len() / 4 * 3 + 3);
        URL_SAFE_NO_PAD
            .decode_vec(p64, &mut decoded)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let payload_len = decoded.len();
        URL_SAFE_NO_PAD
            .decode_vec(s64, &mut decoded)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        Ok(Jwt {
            raw: token,
            signing_input_len: h64.len() + 1 + p64.len(),
            header,
            decoded,
            payload_len,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn alg(&self) -> Alg {
        self.header.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// The decoded payload JSON (for [`crate::claims::ClaimsView::parse`] and `X-Userinfo`).
    pub fn payload(&self) -> &[u8] {
        &self.decoded[..self.payload_len]
    }

    pub fn signature(&self) -> &[u8] {
        &self.decoded[self.payload_len..]
    }

    /// `base64url(header) "." base64url(payload)`, the bytes the signature covers.
    pub fn signing_input(&self) -> &'a str {
        &self.raw[..self.signing_input_len]
    }

    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

fn parse_header(json: &[u8]) -> Result<Header, TokenError> {
    if json.first() != Some(&b'{') {
        return Err(TokenError::Malformed("header is not a JSON object"));
    }
    let raw: RawHeader<'_> = serde_json::from_slice(json)
        .map_err(|_| TokenError::Malformed("header is not valid JSON with a string alg"))?;
    if raw.crit.is_some() {
        // No extension is understood here, so any `crit` must be refused (RFC 7515 4.1.11).
        return Err(TokenError::UnsupportedCrit);
    }
    let alg = Alg::from_name(&raw.alg).ok_or(TokenError::UnsupportedAlg)?;
    let bounded = |s: std::borrow::Cow<'_, str>| -> Result<String, TokenError> {
        if s.len() > 256 {
            Err(TokenError::Malformed("header member longer than 256 bytes"))
        } else {
            Ok(s.into_owned())
        }
    };
    Ok(Header {
        alg,
        kid: raw.kid.map(bounded).transpose()?,
        typ: raw.typ.map(bounded).transpose()?,
    })
}

/// Checks the token's signature against `keys` under `policy`. Claims are not looked at.
pub fn verify_signature(
    jwt: &Jwt<'_>,
    keys: &KeySet,
    policy: &AlgPolicy,
) -> Result<(), TokenError> {
    let alg = jwt.alg();
    if alg == Alg::None {
        return Err(TokenError::NoneAlg);
    }
    if !policy.permits(alg) {
        return Err(TokenError::AlgNotAllowed { alg });
    }
    let key = keys.select(jwt.kid(), alg)?;
    key.verify(alg, jwt.signing_input().as_bytes(), jwt.signature())
}

/// Why a token could not be signed, or a signing key not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("algorithm {0} cannot be used with this key")]
    AlgKeyMismatch(Alg),
    #[error("algorithm {0} is not supported for signing")]
    UnsupportedAlg(Alg),
    #[error("private key rejected: {0}")]
    InvalidKey(String),
    #[error(transparent)]
    Pem(#[from] JwksError),
    #[error("signing failed")]
    Crypto,
}

/// A private key (or shared secret) for [`sign`].
pub enum SigningKey {
    Rsa(signature::RsaKeyPair),
    Ec {
        alg: Alg,
        pair: signature::EcdsaKeyPair,
    },
    /// P-521 (ES512), which ring lacks.
    EcP521(Box<p521::ecdsa::SigningKey>),
    /// RSA of 1024 to 2047 bits, which ring refuses to sign with: RustCrypto's `rsa`, taken
    /// only for keys ring will not load (APISIX accepts them; the config warns).
    RsaShort(Box<rsa::PrivateKey>),
    Ed25519(signature::Ed25519KeyPair),
    Hmac(Vec<u8>),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            SigningKey::Rsa(_) => "RSA",
            SigningKey::Ec { alg, .. } => alg.as_str(),
            SigningKey::EcP521(_) => "ES512",
            SigningKey::RsaShort(_) => "RSA (short)",
            SigningKey::Ed25519(_) => "Ed25519",
            SigningKey::Hmac(_) => "HMAC",
        };
        write!(f, "SigningKey({kind})")
    }
}

impl SigningKey {
    pub fn rsa_pkcs8_der(der: &[u8]) -> Result<SigningKey, SignError> {
        signature::RsaKeyPair::from_pkcs8(der)
            .map(SigningKey::Rsa)
            .or_else(|e| {
                use rsa::pkcs8::DecodePrivateKey as _;
                Self::rsa_short(rsa::PrivateKey::from_pkcs8_der(der).ok(), e)
            })
    }

    pub fn rsa_pkcs1_der(der: &[u8]) -> Result<SigningKey, SignError> {
        signature::RsaKeyPair::from_der(der)
            .map(SigningKey::Rsa)
            .or_else(|e| {
                use rsa::pkcs1::DecodeRsaPrivateKey as _;
                Self::rsa_short(rsa::PrivateKey::from_pkcs1_der(der).ok(), e)
            })
    }

    /// The fallback for an RSA key ring refused: taken only when it is short (1024 to 2047
    /// bits), so every other key keeps ring's checks and speed, and ring's error stands.
    fn rsa_short(
        key: Option<rsa::PrivateKey>,
        ring_error: ring::error::KeyRejected,
    ) -> Result<SigningKey, SignError> {
        use rsa::traits::PublicKeyParts as _;
        match key {
            Some(key)
                if (crate::jwk::MIN_LEGACY_RSA_BITS..crate::jwk::MIN_RSA_BITS)
                    .contains(&(key.n().bit_width_vartime() as usize)) =>
            {
                Ok(SigningKey::RsaShort(Box::new(key)))
            }
            _ => Err(SignError::InvalidKey(ring_error.to_string())),
        }
    }

    /// The modulus size of an RSA key under 2048 bits (signed with, but worth a warning).
    pub fn short_rsa_bits(&self) -> Option<usize> {
        use rsa::traits::PublicKeyParts as _;
        match self {
            SigningKey::RsaShort(key) => Some(key.n().bit_width_vartime() as usize),
            _ => None,
        }
    }

    /// An EC PKCS#8 key; the curve (P-256, P-384 or P-521) picks ES256, ES384 or ES512.
    pub fn ec_pkcs8(der: &[u8]) -> Result<SigningKey, SignError> {
        let rng = rand::SystemRandom::new();
        if let Ok(pair) = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &rng,
        ) {
            return Ok(SigningKey::Ec {
                alg: Alg::ES256,
                pair,
            });
        }
        if let Ok(pair) = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            der,
            &rng,
        ) {
            return Ok(SigningKey::Ec {
                alg: Alg::ES384,
                pair,
            });
        }
        use p521::pkcs8::DecodePrivateKey as _;
        p521::ecdsa::SigningKey::from_pkcs8_der(der)
            .map(|key| SigningKey::EcP521(Box::new(key)))
            .map_err(|e| SignError::InvalidKey(e.to_string()))
    }

    pub fn ed25519_pkcs8(der: &[u8]) -> Result<SigningKey, SignError> {
        // openssl writes PKCS#8 v1 (no embedded public key), which the checked variant refuses.
        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(SigningKey::Ed25519)
            .map_err(|e| SignError::InvalidKey(e.to_string()))
    }

    pub fn hmac(secret: &[u8]) -> SigningKey {
        SigningKey::Hmac(secret.to_vec())
    }

    /// A PEM private key: `PRIVATE KEY` (PKCS#8 RSA, EC P-256/P-384/P-521, Ed25519) or
    /// `RSA PRIVATE KEY` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<SigningKey, SignError> {
        let (label, der) = pem_decode(pem)?;
        match label.as_str() {
            "RSA PRIVATE KEY" => Self::rsa_pkcs1_der(&der),
            "PRIVATE KEY" => Self::rsa_pkcs8_der(&der)
                .or_else(|_| Self::ec_pkcs8(&der))
                .or_else(|_| Self::ed25519_pkcs8(&der))
                .map_err(|_| {
                    SignError::InvalidKey(
                        "PKCS#8 key is not RSA >= 1024, EC P-256/P-384/P-521 or Ed25519".into(),
                    )
                }),
            _ => Err(SignError::InvalidKey(format!(
                "unsupported PEM block {label:?}"
            ))),
        }
    }

    /// Whether `alg` can be produced with this key.
    pub fn supports(&self, alg: Alg) -> bool {
        use Alg::*;
        match self {
            SigningKey::Rsa(_) | SigningKey::RsaShort(_) => {
                matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
            }
            SigningKey::Ec { alg: own, .. } => *own == alg,
            SigningKey::EcP521(_) => alg == ES512,
            SigningKey::Ed25519(_) => alg == EdDSA,
            SigningKey::Hmac(_) => alg.is_symmetric(),
        }
    }

    /// The algorithm to use when none is configured.
    pub fn default_alg(&self) -> Alg {
        match self {
            SigningKey::Rsa(_) | SigningKey::RsaShort(_) => Alg::RS256,
            SigningKey::Ec { alg, .. } => *alg,
            SigningKey::EcP521(_) => Alg::ES512,
            SigningKey::Ed25519(_) => Alg::EdDSA,
            SigningKey::Hmac(_) => Alg::HS256,
        }
    }
}

/// Produces a compact JWS over `claims_json` (which must be the JSON payload).
pub fn sign(
    alg: Alg,
    kid: Option<&str>,
    claims_json: &[u8],
    key: &SigningKey,
) -> Result<String, SignError> {
    if alg == Alg::None {
        return Err(SignError::UnsupportedAlg(alg));
    }
    if !key.supports(alg) {
        return Err(SignError::AlgKeyMismatch(alg));
    }
    let mut header = String::with_capacity(64);
    header.push_str(r#"{"alg":""#);
    header.push_str(alg.as_str());
    header.push_str(r#"","typ":"JWT""#);
    if let Some(kid) = kid {
        header.push_str(r#","kid":"#);
        header.push_str(&serde_json::to_string(kid).map_err(|_| SignError::Crypto)?);
    }
    header.push('}');

    sign_with_header(alg, &header, claims_json, key)
}

/// Produces a compact JWS with a caller-built protected header (DPoP proofs carry `typ`
/// `dpop+jwt` and the public `jwk`). `header_json` must name `alg` itself.
pub fn sign_with_header(
    alg: Alg,
    header_json: &str,
    claims_json: &[u8],
    key: &SigningKey,
) -> Result<String, SignError> {
    if alg == Alg::None {
        return Err(SignError::UnsupportedAlg(alg));
    }
    if !key.supports(alg) {
        return Err(SignError::AlgKeyMismatch(alg));
    }
    let header = header_json;
    let mut out = String::with_capacity((header.len() + claims_json.len()) * 4 / 3 + 700);
    URL_SAFE_NO_PAD.encode_string(header.as_bytes(), &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json, &mut out);
    let sig = raw_signature(alg, out.as_bytes(), key)?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&sig, &mut out);
    Ok(out)
}

fn raw_signature(alg: Alg, message: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let rng = rand::SystemRandom::new();
    match key {
        SigningKey::Rsa(pair) => {
            let padding: &'static dyn signature::RsaEncoding = match alg {
                Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                Alg::PS256 => &signature::RSA_PSS_SHA256,
                Alg::PS384 => &signature::RSA_PSS_SHA384,
                Alg::PS512 => &signature::RSA_PSS_SHA512,
                _ => return Err(SignError::AlgKeyMismatch(alg)),
            };
            let mut sig = vec![0u8; pair.public().modulus_len()];
            pair.sign(padding, &rng, message, &mut sig)
                .map_err(|_| SignError::Crypto)?;
            Ok(sig)
        }
        SigningKey::Ec { pair, .. } => Ok(pair
            .sign(&rng, message)
            .map_err(|_| SignError::Crypto)?
            .as_ref()
            .to_vec()),
        SigningKey::EcP521(key) => {
            use p521::ecdsa::signature::Signer as _;
            // RFC 6979 deterministic nonces: no RNG involved. JWS wants the fixed r || s form.
            let sig: p521::ecdsa::Signature =
                key.try_sign(message).map_err(|_| SignError::Crypto)?;
            Ok(sig.to_bytes().to_vec())
        }
        SigningKey::RsaShort(key) => rsa_short_signature(alg, message, key),
        SigningKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        SigningKey::Hmac(secret) => {
            let algorithm = match alg {
                Alg::HS256 => hmac::HMAC_SHA256,
                Alg::HS384 => hmac::HMAC_SHA384,
                Alg::HS512 => hmac::HMAC_SHA512,
                _ => return Err(SignError::AlgKeyMismatch(alg)),
            };
            Ok(hmac::sign(&hmac::Key::new(algorithm, secret), message)
                .as_ref()
                .to_vec())
        }
    }
}

/// RSASSA-PKCS1-v1_5 or RSASSA-PSS (salt as long as the hash, as ring does) with a short key;
/// the private operation is blinded with the OS RNG.
fn rsa_short_signature(
    alg: Alg,
    message: &[u8],
    key: &rsa::PrivateKey,
) -> Result<Vec<u8>, SignError> {
    use sha2::{Digest as _, Sha256, Sha384, Sha512};
    let signed = match alg {
        Alg::RS256 => key.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message)),
        Alg::RS384 => key.sign(rsa::Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message)),
        Alg::RS512 => key.sign(rsa::Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message)),
        Alg::PS256 => key.sign(rsa::pss::Pss::<Sha256>::new(), &Sha256::digest(message)),
        Alg::PS384 => key.sign(rsa::pss::Pss::<Sha384>::new(), &Sha384::digest(message)),
        Alg::PS512 => key.sign(rsa::pss::Pss::<Sha512>::new(), &Sha512::digest(message)),
        _ => return Err(SignError::AlgKeyMismatch(alg)),
    };
    signed.map_err(|_| SignError::Crypto)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::jwk::Key;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn alg_names_round_trip() {
        for alg in Alg::ALL {
            assert_eq!(alg.as_str().parse::<Alg>().unwrap(), alg);
        }
        assert!("HS1".parse::<Alg>().is_err());
        assert!("NONE".parse::<Alg>().is_err());
    }

    #[test]
    fn default_policy_is_asymmetric_only() {
        let p = AlgPolicy::default();
        assert!(p.permits(Alg::RS256) && p.permits(Alg::EdDSA) && p.permits(Alg::PS512));
        assert!(!p.permits(Alg::HS256) && !p.permits(Alg::None));
        let hs = AlgPolicy {
            allowed: [Alg::HS256].into_iter().collect(),
            allow_symmetric: false,
        };
        assert!(!hs.permits(Alg::HS256));
        assert!(AlgPolicy::only(Alg::HS256).permits(Alg::HS256));
    }

    #[test]
    fn parse_shapes() {
        let h = b64(r#"{"alg":"HS256","kid":"a\"b"}"#);
        let p = b64(r#"{"sub":"x"}"#);
        let jwt_str = format!("{h}.{p}.AAAA");
        let jwt = Jwt::parse(&jwt_str).unwrap();
        assert_eq!(jwt.kid(), Some("a\"b"));
        assert_eq!(jwt.payload(), br#"{"sub":"x"}"#);
        assert_eq!(jwt.signature(), [0, 0, 0]);
        assert_eq!(jwt.signing_input(), format!("{h}.{p}"));

        for bad in [
            String::new(),
            format!("{h}.{p}"),
            format!("{h}.{p}.AAAA.AAAA"),
            format!(".{p}.AAAA"),
            format!("{h}==.{p}.AAAA"),
            format!("{h}.{p}.A"),
            format!("{}.{p}.", b64("[]")),
            format!("{}.{p}.", b64(r#"{"alg":5}"#)),
        ] {
            assert!(
                matches!(Jwt::parse(&bad), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        let crit = format!("{}.{p}.", b64(r#"{"alg":"RS256","crit":["exp"],"exp":1}"#));
        assert_eq!(Jwt::parse(&crit).unwrap_err(), TokenError::UnsupportedCrit);
        let unknown = format!("{}.{p}.", b64(r#"{"alg":"RS1"}"#));
        assert_eq!(
            Jwt::parse(&unknown).unwrap_err(),
            TokenError::UnsupportedAlg
        );
        assert_eq!(
            Jwt::parse(&"a".repeat(MAX_TOKEN_LEN + 1)).unwrap_err(),
            TokenError::TooLarge
        );
    }

    #[test]
    fn hmac_round_trip_and_policy() {
        let key = SigningKey::hmac(b"0123456789abcdef0123456789abcdef");
        let keys = KeySet::from_keys(vec![Key::symmetric(b"0123456789abcdef0123456789abcdef")]);
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
            let token = sign(alg, None, br#"{"sub":"a"}"#, &key).unwrap();
            let jwt = Jwt::parse(&token).unwrap();
            assert_eq!(
                verify_signature(&jwt, &keys, &AlgPolicy::default()),
                Err(TokenError::AlgNotAllowed { alg })
            );
            verify_signature(&jwt, &keys, &AlgPolicy::only(alg)).unwrap();
        }
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        let jwt = Jwt::parse(&none).unwrap();
        let all = AlgPolicy {
            allowed: Alg::ALL.into_iter().collect(),
            allow_symmetric: true,
        };
        assert_eq!(
            verify_signature(&jwt, &keys, &all),
            Err(TokenError::NoneAlg)
        );
        assert!(sign(Alg::RS256, None, b"{}", &key).is_err());
    }
}
