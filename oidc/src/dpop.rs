//! RFC 9449 DPoP (Demonstrating Proof of Possession), both sides:
//!
//! - [`DpopSigner`]: the proofs the gateway signs as an OAuth client (APISIX's `dpop` object) for
//!   its token, refresh and UserInfo calls;
//! - [`verify_proof`]: the checks the gateway makes as a resource server on a DPoP-bound access
//!   token (a shardgate extension), with [`ReplayCache`] for `jti` and [`NonceIssuer`] for
//!   server-provided nonces.
//!
//! Sans-IO like the rest of the crate: callers pass `now`, the request's method and URL, and
//! get a proof or a verdict back.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac, rand};
use serde::Deserialize;

use crate::jwk::Key;
use crate::jwt::{Alg, Jwt, SignError, SigningKey, sign_with_header};

/// Proofs longer than this are refused before any decoding (an RSA-4096 proof is about 1.5 KiB).
pub const MAX_PROOF_LEN: usize = 8 * 1024;
/// `jti` values longer than this are refused (they are hashed, but a bound keeps logs sane).
const MAX_JTI_LEN: usize = 256;

/// Why a proof was refused. All but [`ProofError::UseNonce`] are `invalid_dpop_proof`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("DPoP proof required for a DPoP-bound token")]
    Missing,
    #[error("more than one DPoP header")]
    Multiple,
    #[error("malformed DPoP proof: {0}")]
    Malformed(&'static str),
    #[error("DPoP proof typ is not dpop+jwt")]
    Typ,
    #[error("DPoP proof alg is not an asymmetric algorithm shardgate verifies")]
    Alg,
    #[error("DPoP proof jwk rejected: {0}")]
    Jwk(&'static str),
    #[error("DPoP proof signature verification failed")]
    Signature,
    #[error("DPoP proof key is not the key the token is bound to")]
    KeyMismatch,
    #[error("DPoP proof htm does not match the request method")]
    Htm,
    #[error("DPoP proof htu does not match the request URL")]
    Htu,
    #[error("DPoP proof iat is outside the accepted window")]
    Iat,
    #[error("DPoP proof ath does not match the access token")]
    Ath,
    #[error("DPoP proof jti was already used")]
    Replayed,
    #[error("DPoP proof needs a fresh server nonce")]
    UseNonce,
}

impl ProofError {
    /// The RFC 9449 section 7.1 / 12.2 error code for `WWW-Authenticate: DPoP error="..."`.
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK given as a JSON object.
/// Only the required members of its `kty` count, in lexicographic order.
pub fn jwk_thumbprint(jwk: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let s = |m: &str| jwk.get(m).and_then(|v| v.as_str());
    let canonical = match s("kty")? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            json_str(s("crv")?),
            json_str(s("x")?),
            json_str(s("y")?)
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            json_str(s("e")?),
            json_str(s("n")?)
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            json_str(s("crv")?),
            json_str(s("x")?)
        ),
        _ => return None,
    };
    Some(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

fn json_str(v: &str) -> String {
    serde_json::Value::String(v.to_owned()).to_string()
}

/// `ath`: base64url(SHA-256(access token)).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// The gateway's DPoP key as a client: signs one proof per IdP request.
pub struct DpopSigner {
    key: SigningKey,
    alg: Alg,
    jwk: serde_json::Map<String, serde_json::Value>,
    /// `{"typ":"dpop+jwt","alg":..,"jwk":{..}}`, built once.
    header: String,
    jkt: String,
}

impl std::fmt::Debug for DpopSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopSigner")
            .field("alg", &self.alg)
            .field("jkt", &self.jkt)
            .finish()
    }
}

impl DpopSigner {
    /// Loads a PEM private key for `alg` (`ES256`, `RS256` or `PS256`, APISIX's choices) and
    /// derives its public JWK. Errors say what is wrong with the key, never its bytes.
    pub fn from_pem(pem: &str, alg: Alg) -> Result<DpopSigner, String> {
        if !matches!(alg, Alg::ES256 | Alg::RS256 | Alg::PS256) {
            return Err(format!(
                "{alg} is not a DPoP signing_alg (ES256, RS256, PS256)"
            ));
        }
        let (key, jwk) = load_private_key(pem)?;
        if !key.supports(alg) {
            return Err(format!("cannot sign {alg} (wrong key type or curve)"));
        }
        let jkt = jwk_thumbprint(&jwk).ok_or("cannot compute the JWK thumbprint")?;
        let header = serde_json::json!({ "typ": "dpop+jwt", "alg": alg.as_str(), "jwk": jwk });
        Ok(DpopSigner {
            key,
            alg,
            header: header.to_string(),
            jwk,
            jkt,
        })
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public JWK derived from the private key.
    pub fn public_jwk(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.jwk
    }

    /// RFC 7638 thumbprint of the key: what a bound token's `cnf.jkt` holds.
    pub fn thumbprint(&self) -> &str {
        &self.jkt
    }

    /// One proof for `htm htu`. `htu` is taken without query and fragment (RFC 9449 4.2).
    /// `access_token` adds `ath` (resource requests such as UserInfo); `nonce` is the last
    /// `DPoP-Nonce` the server sent.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        now: u64,
        jti: &str,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<String, SignError> {
        let htu = htu.split(['?', '#']).next().unwrap_or(htu);
        let mut claims = serde_json::json!({
            "jti": jti,
            "htm": htm,
            "htu": htu,
            "iat": now,
        });
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        if let Some(t) = access_token {
            claims["ath"] = access_token_hash(t).into();
        }
        sign_with_header(
            self.alg,
            &self.header,
            claims.to_string().as_bytes(),
            &self.key,
        )
    }
}

/// The public JWK of a PEM private key, as APISIX derives it to compare with `dpop.public_jwk`:
/// `kty` and, for EC, `crv`, `x`, `y`; for RSA, `e`, `n`. P-521 keys give `kty` and `crv` only
/// (DPoP here signs with P-256 or RSA, so the comparison stops at `crv`).
pub fn private_key_jwk(pem: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    load_private_key(pem).map(|(_, jwk)| jwk)
}

fn load_private_key(
    pem: &str,
) -> Result<(SigningKey, serde_json::Map<String, serde_json::Value>), String> {
    if let Ok((label, _)) = crate::jwk::pem_decode(pem)
        && label.contains("PUBLIC KEY")
    {
        return Err("has no private key in it".into());
    }
    let key = SigningKey::from_pem(pem).map_err(|e| format!("is not a valid key: {e}"))?;
    let mut jwk = serde_json::Map::new();
    match &key {
        SigningKey::Ec { alg, pair } => {
            use ring::signature::KeyPair as _;
            let (crv, len) = match alg {
                Alg::ES256 => ("P-256", 32),
                _ => ("P-384", 48),
            };
            let point = pair.public_key().as_ref();
            if point.len() != 1 + 2 * len {
                return Err("is not a valid key: unexpected EC point length".into());
            }
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), crv.into());
            jwk.insert(
                "x".into(),
                URL_SAFE_NO_PAD.encode(&point[1..1 + len]).into(),
            );
            jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(&point[1 + len..]).into());
        }
        SigningKey::EcP521(_) => {
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), "P-521".into());
        }
        SigningKey::Rsa(pair) => {
            let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
            let strip = |b: &[u8]| -> Vec<u8> {
                let zeros = b.iter().take_while(|x| **x == 0).count();
                b[zeros..].to_vec()
            };
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("e".into(), URL_SAFE_NO_PAD.encode(strip(&public.e)).into());
            jwk.insert("n".into(), URL_SAFE_NO_PAD.encode(strip(&public.n)).into());
        }
        SigningKey::RsaShort(key) => {
            use rsa::traits::PublicKeyParts as _;
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert("e".into(), URL_SAFE_NO_PAD.encode(key.e_bytes()).into());
            jwk.insert("n".into(), URL_SAFE_NO_PAD.encode(key.n_bytes()).into());
        }
        SigningKey::Ed25519(_) => {
            jwk.insert("kty".into(), "OKP".into());
        }
        SigningKey::Hmac(_) => return Err("has no private key in it".into()),
    }
    Ok((key, jwk))
}

/// What the request a proof is checked against looks like.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The request method as received.
    pub htm: &'a str,
    /// `scheme://host[:port]/path` as the client addressed it (no query).
    pub htu: &'a str,
    /// The access token the proof must be bound to (`ath`).
    pub access_token: &'a str,
    /// The token's `cnf.jkt`, when it is bound.
    pub jkt: Option<&'a str>,
    pub now: u64,
    /// `iat` must be within this many seconds of `now`, either side.
    pub max_age: u64,
}

/// What a valid proof tells the caller (the replay check needs `jti` and `iat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct ProofHeader {
    typ: Option<String>,
    jwk: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<serde_json::Number>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// Members that only a private JWK has (RFC 7517/7518): a proof carrying one is refused.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Checks a DPoP proof (RFC 9449 4.3) for a resource request: syntax, `typ`, an asymmetric `alg`,
/// the public `jwk` (and that it is the token's key), the signature, `htm`, `htu`, `iat`, `ath`.
/// Replay (`jti`) and nonce checks are the caller's, with [`ReplayCache`] and [`NonceIssuer`].
pub fn verify_proof(proof: &str, req: &ProofRequest<'_>) -> Result<CheckedProof, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::Malformed("proof is too large"));
    }
    let jwt = Jwt::parse(proof).map_err(|_| ProofError::Malformed("not a compact JWS"))?;
    let alg = jwt.alg();
    if alg == Alg::None || alg.is_symmetric() {
        return Err(ProofError::Alg);
    }
    let h64 = proof.split('.').next().unwrap_or_default();
    let header_json = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| ProofError::Malformed("header is not base64url"))?;
    let header: ProofHeader = serde_json::from_slice(&header_json)
        .map_err(|_| ProofError::Malformed("header is not a JSON object"))?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(ProofError::Typ);
    }
    let jwk = header.jwk.ok_or(ProofError::Jwk("no jwk header"))?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::Jwk("jwk holds private key members"));
    }
    let jkt = jwk_thumbprint(&jwk).ok_or(ProofError::Jwk("unsupported kty or missing members"))?;
    // Compare the thumbprint before the (costly) signature check: a proof by another key is
    // refused for the price of one SHA-256.
    if let Some(bound) = req.jkt
        && !constant_time_eq(bound.as_bytes(), jkt.as_bytes())
    {
        return Err(ProofError::KeyMismatch);
    }
    let key = Key::from_jwk(serde_json::Value::Object(jwk)).map_err(ProofError::Jwk)?;
    // Configured keys under 2048 bits are taken with a warning (APISIX parity); a client's proof
    // key is its own choice, and binding tokens to a factorable key protects nothing.
    if key.is_short_rsa() {
        return Err(ProofError::Jwk("RSA key shorter than 2048 bits"));
    }
    key.verify(alg, jwt.signing_input().as_bytes(), jwt.signature())
        .map_err(|_| ProofError::Signature)?;
    let claims: ProofClaims = serde_json::from_slice(jwt.payload())
        .map_err(|_| ProofError::Malformed("claims are not a JSON object of strings"))?;
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(ProofError::Malformed("missing or oversized jti"))?;
    if claims.htm.as_deref() != Some(req.htm) {
        return Err(ProofError::Htm);
    }
    let htu = claims.htu.ok_or(ProofError::Htu)?;
    match (normalize_htu(&htu), normalize_htu(req.htu)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return Err(ProofError::Htu),
    }
    let iat = claims
        .iat
        .and_then(|n| n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)))
        .ok_or(ProofError::Iat)?;
    if iat.saturating_add(req.max_age) < req.now || iat > req.now.saturating_add(req.max_age) {
        return Err(ProofError::Iat);
    }
    let ath = claims.ath.ok_or(ProofError::Ath)?;
    if !constant_time_eq(
        ath.as_bytes(),
        access_token_hash(req.access_token).as_bytes(),
    ) {
        return Err(ProofError::Ath);
    }
    Ok(CheckedProof {
        jkt,
        jti,
        iat,
        nonce: claims.nonce,
    })
}

/// RFC 9449 4.3 step 9: `htu` without query and fragment, compared after RFC 3986 syntax-based
/// normalisation: scheme and host case-folded, a default port dropped, an empty path as `/`.
pub fn normalize_htu(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    if let Some(stripped) = authority.strip_suffix(default_port) {
        authority = stripped.to_string();
    }
    Some(format!("{scheme}://{authority}{path}"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seen `(jkt, jti)` pairs, until their proofs would be refused for age anyway.
///
/// One set for the whole process, shared by every shard, so a proof replayed on a connection
/// that landed on another shard is caught too (exact, not per shard). It is striped: a check
/// locks one of [`REPLAY_STRIPES`] small maps, chosen by the pair's hash, for one insert; two
/// shards contend only when they check pairs of the same stripe at the same instant. Only
/// DPoP-bound requests come here, and they already pay a signature verification (tens of
/// microseconds) that dwarfs the lock.
pub struct ReplayCache {
    stripes: Box<[Mutex<HashMap<u128, u64>>]>,
    per_stripe: usize,
}

pub const REPLAY_STRIPES: usize = 64;

/// Why a `jti` could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    Replayed,
    /// The stripe is full of proofs that are all still within their window: refuse rather than
    /// forget (forgetting would let a replay through).
    Full,
}

impl ReplayCache {
    /// `capacity` proofs in all (rounded up to a multiple of the stripe count).
    pub fn new(capacity: usize) -> ReplayCache {
        let per_stripe = capacity.div_ceil(REPLAY_STRIPES).max(16);
        ReplayCache {
            stripes: (0..REPLAY_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_stripe,
        }
    }

    /// Records the pair until `until` (unix seconds); `Replayed` if it is already there.
    pub fn check(&self, jkt: &str, jti: &str, now: u64, until: u64) -> ReplayVerdict {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(jkt.as_bytes());
        ctx.update(&[0]);
        ctx.update(jti.as_bytes());
        let d = ctx.finish();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.as_ref()[..16]);
        let id = u128::from_le_bytes(id);
        let stripe = &self.stripes[(id as usize) % REPLAY_STRIPES];
        let mut map = match stripe.lock() {
            Ok(m) => m,
            // A panic while holding the lock cannot leave the map inconsistent (single inserts).
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(exp) = map.get(&id)
            && *exp >= now
        {
            return ReplayVerdict::Replayed;
        }
        if map.len() >= self.per_stripe {
            map.retain(|_, exp| *exp >= now);
            if map.len() >= self.per_stripe {
                return ReplayVerdict::Full;
            }
        }
        map.insert(id, until);
        ReplayVerdict::Fresh
    }
}

/// Server-provided DPoP nonces (RFC 9449 section 9) without per-client state: a nonce is a time
/// bucket and its HMAC under a per-process random key, valid in its bucket and the next one.
/// One issuer per process, so every shard accepts every shard's nonces.
pub struct NonceIssuer {
    key: hmac::Key,
    period: u64,
}

impl NonceIssuer {
    pub fn new(period_secs: u64) -> Result<NonceIssuer, ring::error::Unspecified> {
        let rng = rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)?;
        Ok(NonceIssuer {
            key,
            period: period_secs.max(1),
        })
    }

    fn for_bucket(&self, bucket: u64) -> String {
        let tag = hmac::sign(&self.key, &bucket.to_be_bytes());
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&bucket.to_be_bytes());
        raw[8..].copy_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: u64) -> String {
        self.for_bucket(now / self.period)
    }

    /// Whether `nonce` was issued by this process in the current or the previous period.
    pub fn accepts(&self, nonce: &str, now: u64) -> bool {
        let mut raw = [0u8; 24];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(24) => {}
            _ => return false,
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[..8]);
        let bucket = u64::from_be_bytes(b);
        let cur = now / self.period;
        if bucket != cur && bucket.saturating_add(1) != cur {
            return false;
        }
        // The tag is truncated to 16 bytes, which ring's verify does not take: compare here.
        let tag = hmac::sign(&self.key, &bucket.to_be_bytes());
        constant_time_eq(&tag.as_ref()[..16], &raw[8..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_PEM: &str = include_str!("../tests/data/dpop_es256.pem");
    const RSA_PEM: &str = include_str!("../tests/data/dpop_rsa2048.pem");

    fn req<'a>(jkt: Option<&'a str>, now: u64) -> ProofRequest<'a> {
        ProofRequest {
            htm: "GET",
            htu: "https://api.example.test/v1/things",
            access_token: "tok",
            jkt,
            now,
            max_age: 60,
        }
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 section 3.1.
        let jwk: serde_json::Value = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(jwk.as_object().expect("object")).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn signed_proofs_verify_and_every_check_bites() {
        for (pem, alg) in [
            (EC_PEM, Alg::ES256),
            (RSA_PEM, Alg::RS256),
            (RSA_PEM, Alg::PS256),
        ] {
            let s = DpopSigner::from_pem(pem, alg).expect("key loads");
            let jkt = s.thumbprint().to_string();
            let now = 1_700_000_000;
            let p = s
                .proof(
                    "GET",
                    "https://API.example.test:443/v1/things?x=1",
                    now,
                    "j1",
                    None,
                    Some("tok"),
                )
                .expect("signs");
            let ok = verify_proof(&p, &req(Some(&jkt), now)).expect("valid proof");
            assert_eq!(
                (ok.jti.as_str(), ok.iat, ok.jkt.as_str()),
                ("j1", now, jkt.as_str())
            );
            assert_eq!(
                verify_proof(&p, &req(Some("other"), now)),
                Err(ProofError::KeyMismatch)
            );
            let mut post = req(Some(&jkt), now);
            post.htm = "POST";
            assert_eq!(verify_proof(&p, &post), Err(ProofError::Htm));
            let mut other = req(Some(&jkt), now);
            other.htu = "https://api.example.test/v1/other";
            assert_eq!(verify_proof(&p, &other), Err(ProofError::Htu));
            let mut tok = req(Some(&jkt), now);
            tok.access_token = "another";
            assert_eq!(verify_proof(&p, &tok), Err(ProofError::Ath));
            assert_eq!(
                verify_proof(&p, &req(Some(&jkt), now + 61)),
                Err(ProofError::Iat)
            );
            assert_eq!(
                verify_proof(&p, &req(Some(&jkt), now - 61)),
                Err(ProofError::Iat)
            );
            // Tampered payload: signature fails.
            let mut parts: Vec<String> = p.split('.').map(str::to_string).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(br#"{"jti":"j2","htm":"GET","htu":"https://api.example.test/v1/things","iat":1700000000,"ath":"x"}"#);
            assert_eq!(
                verify_proof(&parts.join("."), &req(Some(&jkt), now)),
                Err(ProofError::Signature)
            );
        }
    }

    #[test]
    fn proofs_without_the_dpop_shape_are_refused() {
        let s = DpopSigner::from_pem(EC_PEM, Alg::ES256).expect("key");
        let claims = br#"{"jti":"j","htm":"GET","htu":"https://api.example.test/v1/things","iat":1,"ath":"x"}"#;
        let key = SigningKey::from_pem(EC_PEM).expect("key");
        let jwk = serde_json::Value::Object(s.public_jwk().clone());
        let typ_jwt = format!(r#"{{"typ":"JWT","alg":"ES256","jwk":{jwk}}}"#);
        let p = sign_with_header(Alg::ES256, &typ_jwt, claims, &key).expect("sign");
        assert_eq!(verify_proof(&p, &req(None, 1)), Err(ProofError::Typ));
        let no_jwk = r#"{"typ":"dpop+jwt","alg":"ES256"}"#;
        let p = sign_with_header(Alg::ES256, no_jwk, claims, &key).expect("sign");
        assert!(matches!(
            verify_proof(&p, &req(None, 1)),
            Err(ProofError::Jwk(_))
        ));
        let mut private = s.public_jwk().clone();
        private.insert("d".into(), "AAAA".into());
        let with_d = format!(
            r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{}}}"#,
            serde_json::Value::Object(private)
        );
        let p = sign_with_header(Alg::ES256, &with_d, claims, &key).expect("sign");
        assert!(matches!(
            verify_proof(&p, &req(None, 1)),
            Err(ProofError::Jwk(_))
        ));
        let hs = SigningKey::hmac(b"0123456789abcdef0123456789abcdef");
        let p = sign_with_header(
            Alg::HS256,
            r#"{"typ":"dpop+jwt","alg":"HS256","jwk":{"kty":"oct","k":"AA"}}"#,
            claims,
            &hs,
        )
        .expect("sign");
        assert_eq!(verify_proof(&p, &req(None, 1)), Err(ProofError::Alg));
        assert!(matches!(
            verify_proof("a.b", &req(None, 1)),
            Err(ProofError::Malformed(_))
        ));
    }

    #[test]
    fn signer_refuses_mismatched_algs() {
        assert!(DpopSigner::from_pem(EC_PEM, Alg::RS256).is_err());
        assert!(DpopSigner::from_pem(RSA_PEM, Alg::ES256).is_err());
        assert!(DpopSigner::from_pem(EC_PEM, Alg::ES384).is_err());
        assert!(DpopSigner::from_pem("not a pem", Alg::ES256).is_err());
    }

    #[test]
    fn replay_cache_is_exact_and_expires() {
        let c = ReplayCache::new(64);
        assert_eq!(c.check("k", "a", 100, 160), ReplayVerdict::Fresh);
        assert_eq!(c.check("k", "a", 120, 180), ReplayVerdict::Replayed);
        assert_eq!(c.check("other", "a", 120, 180), ReplayVerdict::Fresh);
        assert_eq!(c.check("k", "a", 161, 221), ReplayVerdict::Fresh);
        // A full stripe of live entries refuses instead of forgetting.
        let c = ReplayCache::new(0);
        let mut full = false;
        for i in 0..20_000 {
            if c.check("k", &i.to_string(), 0, 100) == ReplayVerdict::Full {
                full = true;
                break;
            }
        }
        assert!(full);
        // Across threads, exactly one of many concurrent checks of one pair is fresh.
        let c = std::sync::Arc::new(ReplayCache::new(1024));
        let fresh: usize = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    usize::from(c.check("k", "same", 1, 2) == ReplayVerdict::Fresh)
                })
            })
            .map(|t| t.join().expect("thread"))
            .sum();
        assert_eq!(fresh, 1);
    }

    #[test]
    fn nonces_are_valid_two_periods_and_unforgeable() {
        let n = NonceIssuer::new(60).expect("rng");
        let v = n.current(1000);
        assert!(n.accepts(&v, 1000));
        assert!(n.accepts(&v, 1079));
        assert!(!n.accepts(&v, 1140));
        assert!(!n.accepts("garbage", 1000));
        let other = NonceIssuer::new(60).expect("rng");
        assert!(!other.accepts(&v, 1000));
    }

    #[test]
    fn htu_normalisation() {
        assert_eq!(
            normalize_htu("HTTPS://Example.test:443/a?b#c").as_deref(),
            Some("https://example.test/a")
        );
        assert_eq!(
            normalize_htu("http://h:8080").as_deref(),
            Some("http://h:8080/")
        );
        assert_eq!(normalize_htu("ftp://h/"), None);
        assert_eq!(normalize_htu("https://u@h/"), None);
    }
}
