//! DPoP (RFC 9449) in the gateway: the resource-server check on bearer routes (a shardgate
//! extension: `dpop_bound_tokens`, `dpop_proof_max_age`, `dpop_nonce`) and the loading of the
//! client key APISIX's `dpop` object configures.
//!
//! Cost model: a token's verification (signature, claims, `cnf.jkt`) is cached as before; only a
//! token that is bound to a key pays the per-request proof check (one signature verification,
//! one SHA-256 for `ath`, one striped-lock insert for `jti`), since every request carries a new
//! proof. Unbound tokens pay one `Option` test.

use std::sync::Arc;

use shardgate_oidc::config::{DpopBoundTokens, OidcConf};
use shardgate_oidc::dpop::{
    DpopSigner, NonceIssuer, ProofError, ProofRequest, ReplayCache, ReplayVerdict, verify_proof,
};
use shardgate_oidc::jwt::Alg;

use super::RouteAuth;
use crate::error::Error;
use crate::pipeline::Ctx;
use crate::plugins::PluginResponse;

/// Proofs remembered at most (all routes, all shards). A `jti` is kept until its proof is too
/// old to be accepted (`iat + dpop_proof_max_age`), so this bounds proofs per window: about
/// 30 MB when full. A full stripe refuses new proofs (503) rather than forgetting live ones.
const REPLAY_CAPACITY: usize = 1 << 20;
/// A server nonce is valid for one to two of these periods.
const NONCE_PERIOD_SECS: u64 = 60;
/// The algorithms a proof may use, advertised in the `DPoP` challenge (`algs`).
const PROOF_ALGS: &str = "ES256 ES384 ES512 RS256 RS384 RS512 PS256 PS384 PS512 EdDSA";

/// Process-wide DPoP state: see [`ReplayCache`] for why one set serves every shard exactly.
pub struct DpopGuard {
    replay: ReplayCache,
    nonces: Option<NonceIssuer>,
}

impl DpopGuard {
    pub fn new() -> DpopGuard {
        let nonces = NonceIssuer::new(NONCE_PERIOD_SECS)
            .map_err(|_| {
                tracing::error!("no randomness for DPoP nonces: dpop_nonce routes refuse proofs")
            })
            .ok();
        DpopGuard {
            replay: ReplayCache::new(REPLAY_CAPACITY),
            nonces,
        }
    }
}

impl Default for DpopGuard {
    fn default() -> Self {
        Self::new()
    }
}

/// APISIX's `dpop` client key, loaded once per config (None unless `dpop.enabled`).
pub fn client_signer(conf: &OidcConf, path: &str) -> Result<Option<Arc<DpopSigner>>, String> {
    let Some(d) = conf.dpop.as_ref().filter(|d| d.enabled) else {
        return Ok(None);
    };
    let Some(pem) = &d.private_key else {
        return Err(format!(
            "{path}.dpop.private_key: required when dpop.enabled is true"
        ));
    };
    let alg = d
        .signing_alg
        .as_deref()
        .and_then(Alg::from_name)
        .unwrap_or(Alg::ES256);
    let signer = DpopSigner::from_pem(pem.expose(), alg)
        .map_err(|e| format!("{path}.dpop.private_key: {e}"))?;
    Ok(Some(Arc::new(signer)))
}

/// How the client presented its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// The resource-server check, run after the token itself was verified (or found in the cache).
/// `jkt` is the token's `cnf.jkt`, if it is bound.
pub fn check(
    auth: &RouteAuth,
    c: &Ctx<'_>,
    token: &str,
    scheme: Scheme,
    jkt: Option<&str>,
    now: u64,
) -> Result<(), Error> {
    let conf = &auth.route.conf;
    let m = c.metrics();
    let Some(jkt) = jkt else {
        if conf.dpop_bound_tokens == DpopBoundTokens::Required || scheme == Scheme::Dpop {
            m.bump("shardgate_oidc_dpop_total{result=\"unbound_token\"}", 1);
            return Err(refuse(
                auth,
                "invalid_token",
                "the token is not DPoP-bound",
                None,
            ));
        }
        return Ok(());
    };
    if conf.dpop_bound_tokens == DpopBoundTokens::Off {
        return Ok(());
    }
    if scheme == Scheme::Bearer {
        m.bump("shardgate_oidc_dpop_total{result=\"bearer_use\"}", 1);
        return Err(refuse(
            auth,
            "invalid_token",
            "a DPoP-bound token must be sent with the DPoP scheme and a proof",
            None,
        ));
    }
    let result =
        proof_of(c).and_then(|proof| {
            let buf = c.buf();
            let head = c.head();
            let htm = std::str::from_utf8(head.method_span.of(buf)).unwrap_or_default();
            let host = head
                .host
                .and_then(|h| std::str::from_utf8(h.of(buf)).ok())
                .unwrap_or_default();
            let path = std::str::from_utf8(head.path.of(buf)).unwrap_or_default();
            let path = if path.is_empty() { "/" } else { path };
            let htu = format!("{}://{host}{path}", c.scheme());
            let req = ProofRequest {
                htm,
                htu: &htu,
                access_token: token,
                jkt: Some(jkt),
                now,
                max_age: conf.dpop_proof_max_age,
            };
            let checked = verify_proof(proof, &req)?;
            if conf.dpop_nonce {
                let ok =
                    auth.route.dpop_guard.nonces.as_ref().is_some_and(|n| {
                        checked.nonce.as_deref().is_some_and(|v| n.accepts(v, now))
                    });
                if !ok {
                    return Err(ProofError::UseNonce);
                }
            }
            Ok(checked)
        });
    let checked = match result {
        Ok(p) => p,
        Err(e) => {
            m.bump(metric_label(&e), 1);
            tracing::info!(route = c.route_id(), reason = %e, "DPoP proof refused");
            let nonce = (e == ProofError::UseNonce)
                .then(|| {
                    auth.route
                        .dpop_guard
                        .nonces
                        .as_ref()
                        .map(|n| n.current(now))
                })
                .flatten();
            return Err(refuse(auth, e.code(), &e.to_string(), nonce));
        }
    };
    let until = checked.iat.saturating_add(conf.dpop_proof_max_age);
    match auth
        .route
        .dpop_guard
        .replay
        .check(&checked.jkt, &checked.jti, now, until)
    {
        ReplayVerdict::Fresh => {
            m.bump("shardgate_oidc_dpop_total{result=\"ok\"}", 1);
            Ok(())
        }
        ReplayVerdict::Replayed => {
            m.bump("shardgate_oidc_dpop_total{result=\"replayed\"}", 1);
            tracing::info!(route = c.route_id(), "DPoP proof replayed");
            let e = ProofError::Replayed;
            Err(refuse(auth, e.code(), &e.to_string(), None))
        }
        ReplayVerdict::Full => {
            m.bump("shardgate_oidc_dpop_total{result=\"replay_cache_full\"}", 1);
            tracing::warn!("DPoP replay cache full: refusing proofs until entries age out");
            Err(Error::Unavailable("DPoP replay cache full"))
        }
    }
}

/// The one `DPoP` header's value.
fn proof_of<'c>(c: &'c Ctx<'_>) -> Result<&'c str, ProofError> {
    let buf = c.buf();
    let mut it = c
        .head()
        .headers
        .iter()
        .filter(|h| h.name.of(buf).eq_ignore_ascii_case(b"dpop"));
    let first = it.next().ok_or(ProofError::Missing)?;
    if it.next().is_some() {
        return Err(ProofError::Multiple);
    }
    std::str::from_utf8(first.value.of(buf)).map_err(|_| ProofError::Malformed("not ASCII"))
}

fn metric_label(e: &ProofError) -> &'static str {
    match e {
        ProofError::Missing => "shardgate_oidc_dpop_total{result=\"missing\"}",
        ProofError::UseNonce => "shardgate_oidc_dpop_total{result=\"use_nonce\"}",
        ProofError::KeyMismatch => "shardgate_oidc_dpop_total{result=\"wrong_key\"}",
        ProofError::Htu | ProofError::Htm => "shardgate_oidc_dpop_total{result=\"wrong_target\"}",
        ProofError::Iat => "shardgate_oidc_dpop_total{result=\"stale\"}",
        ProofError::Replayed => "shardgate_oidc_dpop_total{result=\"replayed\"}",
        _ => "shardgate_oidc_dpop_total{result=\"invalid\"}",
    }
}

/// 401 with `WWW-Authenticate: DPoP ... error="..."` (RFC 9449 section 7.1), plus a fresh
/// `DPoP-Nonce` when the error is `use_dpop_nonce`.
fn refuse(auth: &RouteAuth, error: &'static str, desc: &str, nonce: Option<String>) -> Error {
    let realm = auth
        .route
        .challenge
        .strip_prefix("Bearer")
        .unwrap_or(" realm=\"shardgate\"");
    let clean: String = desc
        .chars()
        .map(|ch| {
            if ch == '"' || ch == '\\' || ch.is_control() {
                '\''
            } else {
                ch
            }
        })
        .collect();
    let www = format!(
        "DPoP{realm}, algs=\"{PROOF_ALGS}\", error=\"{error}\", error_description=\"{clean}\""
    );
    let mut headers = vec![("WWW-Authenticate".to_string(), www)];
    if let Some(n) = nonce {
        headers.push(("DPoP-Nonce".to_string(), n));
    }
    let body = serde_json::json!({ "error": error, "error_description": desc }).to_string() + "\n";
    Error::Plugin(PluginResponse {
        status: 401,
        headers,
        content_type: "application/json",
        body: body.into_bytes(),
        code: error,
        reason: desc.to_string(),
    })
}
