//! The bearer-token path: extract, check against the shard-local caches, verify locally (JWKS or a
//! static key) or by introspection, apply the claim rules, and set the upstream headers.
//!
//! A cache hit allocates nothing: the entry carries the precomputed `X-Userinfo` value and the
//! token itself is forwarded as a slice of the request head.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use shardgate_oidc::claims::{ClaimsPolicy, ClaimsView};
use shardgate_oidc::idp::provider::{KidLookup, ProviderMsg, SharedCall};
use shardgate_oidc::introspect::{IntrospectionRequest, IntrospectionResponse};
use shardgate_oidc::jwk::KeySet;
use shardgate_oidc::jwt::{Jwt, TokenError, verify_signature};

use super::RouteAuth;
use super::dpop::{self, Scheme};
use super::prepare::TokenCheck;
use crate::error::Error;
use crate::http1::Span;
use crate::pipeline::{Ctx, PhaseResult, Step};
use crate::plugins::{HeaderValue, PluginResponse};
use shardgate_oidc::config::DpopBoundTokens;

/// A token that passed every check, with what the upstream headers need.
#[derive(Debug)]
pub struct Verified {
    /// `X-Userinfo`: base64 of the JWT payload or the introspection JSON (APISIX's encoding).
    pub userinfo_b64: Option<Rc<str>>,
    /// `Authorization: Bearer <token>` when `access_token_in_authorization_header`.
    pub authorization: Option<Rc<str>>,
    /// Provider key generation the signature was checked with (0: static key / introspection).
    pub generation: u64,
    /// `cnf.jkt`: the token is DPoP-bound to this key thumbprint (RFC 9449 6).
    pub jkt: Option<Rc<str>>,
}

/// A token that failed, remembered briefly so a replayed bad token costs a lookup, not a verify.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub status: u16,
    pub error: &'static str,
    pub description: Rc<str>,
}

/// Short negative cache for tokens that failed verification.
const NEGATIVE_TTL_MS: u64 = 10_000;
/// Verified JWTs are re-verified at least this often even when `exp` is far away.
const MAX_VERIFIED_TTL_SECS: u64 = 3600;
/// How long the provider actor keeps an introspection answer for asks that arrive just after
/// it. A shard that gets such an answer caches it for the full TTL, so a revocation can show up
/// at most this much later than `introspection_interval` says: keep it well below one second.
const INTROSPECTION_JOIN_GRACE: Duration = Duration::from_millis(500);

enum Fail {
    Reject(Rejected),
    /// Something only the IdP can answer is unavailable: 503, not cached.
    Unavailable(&'static str, String),
}

impl From<TokenError> for Fail {
    fn from(e: TokenError) -> Fail {
        Fail::Reject(Rejected {
            status: e.http_status(),
            error: e.bearer_error(),
            description: Rc::from(e.to_string()),
        })
    }
}

pub async fn rewrite(auth: &RouteAuth, c: &mut Ctx<'_>) -> PhaseResult {
    let conf = &auth.route.conf;
    if !conf.bearer_enabled() {
        return super::session::rewrite(auth, c).await;
    }
    let accept_dpop = conf.dpop_bound_tokens != DpopBoundTokens::Off;
    let (span, scheme) = match extract_token(c, accept_dpop) {
        Err(resp) => return Err(Error::Plugin(resp)),
        Ok(None) => {
            if conf.bearer_only {
                return Err(challenge(auth, None));
            }
            return super::session::rewrite(auth, c).await;
        }
        Ok(Some(found)) => found,
    };
    let Ok(token) = std::str::from_utf8(span.of(c.buf())) else {
        return Err(reject(auth, &bad_token("token is not ASCII")));
    };
    let now_ms = auth.oidc.now_millis();
    let m = c.metrics();

    let introspection = auth.route.check == TokenCheck::Introspection;
    let use_cache = if introspection {
        !conf.introspection_cache_ignore
    } else {
        !conf.jwt_verification_cache_ignore
    };
    let cache = if introspection {
        &auth.introspected
    } else {
        &auth.verified
    };
    if use_cache {
        let hit = cache.borrow().get(token.as_bytes(), now_ms).cloned();
        if let Some(v) = hit
            && (v.generation == 0 || v.generation == current_generation(auth))
        {
            m.bump("shardgate_oidc_token_cache_total{result=\"hit\"}", 1);
            dpop::check(auth, c, token, scheme, v.jkt.as_deref(), now_ms / 1000)?;
            apply(auth, c, span, &v);
            return Ok(Step::Continue);
        }
        m.bump("shardgate_oidc_token_cache_total{result=\"miss\"}", 1);
    }
    let rejected = auth
        .rejected
        .borrow()
        .get(token.as_bytes(), now_ms)
        .cloned();
    if let Some(r) = rejected {
        m.bump(
            "shardgate_oidc_rejections_total{reason=\"negative_cache\"}",
            1,
        );
        return Err(reject(auth, &r));
    }

    let now = now_ms / 1000;
    let result = if introspection {
        // Every call here reaches the IdP (or joins a call in flight): cache hits returned above.
        let started = shardgate_runtime::clock::Stopwatch::start();
        let r = introspect(auth, c, token, now).await;
        m.bump("shardgate_oidc_introspection_calls_total", 1);
        m.bump(
            "shardgate_oidc_introspection_duration_microseconds_total",
            started.elapsed_micros(),
        );
        r
    } else {
        verify_jwt(auth, token, now).await
    };
    match result {
        Ok((v, ttl_secs)) => {
            let v = Rc::new(v);
            if use_cache && ttl_secs > 0 {
                cache
                    .borrow_mut()
                    .insert(token.as_bytes(), v.clone(), now_ms + ttl_secs * 1000);
            }
            // The token is good (and cached as such); a bad proof refuses this request only.
            dpop::check(auth, c, token, scheme, v.jkt.as_deref(), now)?;
            apply(auth, c, span, &v);
            Ok(Step::Continue)
        }
        Err(Fail::Reject(r)) => {
            m.bump(
                &format!("shardgate_oidc_rejections_total{{reason=\"{}\"}}", r.error),
                1,
            );
            // Introspection routes remember refusals only as long as their negative-cache
            // settings allow: an operator who turned it off wants the IdP asked every time.
            let ttl_ms = if !introspection {
                Some(NEGATIVE_TTL_MS)
            } else if conf.introspection_enable_negative_cache {
                Some(conf.introspection_negative_cache_ttl.max(1) * 1000)
            } else {
                None
            };
            if let Some(ttl_ms) = ttl_ms {
                auth.rejected
                    .borrow_mut()
                    .insert(token.as_bytes(), r.clone(), now_ms + ttl_ms);
            }
            Err(reject(auth, &r))
        }
        Err(Fail::Unavailable(what, detail)) => {
            m.bump(
                "shardgate_oidc_rejections_total{reason=\"idp_unavailable\"}",
                1,
            );
            tracing::warn!(route_discovery = %auth.route.conf.discovery, %detail, "{what}");
            Err(Error::Unavailable(what))
        }
    }
}

fn current_generation(auth: &RouteAuth) -> u64 {
    match &auth.provider {
        Some((_, local)) if auth.route.check == TokenCheck::Jwks => local.load().generation,
        _ => 0,
    }
}

/// `Authorization: Bearer <token>` (case-insensitive scheme), else `X-Access-Token`, as APISIX;
/// `Authorization: DPoP <token>` too unless `dpop_bound_tokens: off` (RFC 9449 7.1).
/// A header without a space is a 400; another scheme means "no token".
///
/// More than one `Authorization` header is a 400 too (it is not a list header): only one can be
/// verified, and an upstream that reads another would trust a credential nobody checked.
fn extract_token(c: &Ctx<'_>, accept_dpop: bool) -> Result<Option<(Span, Scheme)>, PluginResponse> {
    let buf = c.buf();
    let mut authorization = c
        .head()
        .headers
        .iter()
        .filter(|h| h.name.of(buf).eq_ignore_ascii_case(b"authorization"));
    if let Some(h) = authorization.next() {
        if authorization.next().is_some() {
            return Err(bad_request(
                b"{\"error\":\"invalid_request\",\"error_description\":\"more than one Authorization header\"}\n",
                "more than one Authorization header",
            ));
        }
        let v = h.value.of(buf);
        let Some(sp) = v.iter().position(|b| *b == b' ') else {
            return Err(bad_request(
                b"{\"error\":\"invalid_request\",\"error_description\":\"Invalid Authorization header format\"}\n",
                "invalid Authorization header format",
            ));
        };
        let scheme = if v[..sp].eq_ignore_ascii_case(b"bearer") {
            Scheme::Bearer
        } else if accept_dpop && v[..sp].eq_ignore_ascii_case(b"dpop") {
            Scheme::Dpop
        } else {
            return Ok(None);
        };
        let rest = &v[sp + 1..];
        let skip = rest.iter().take_while(|b| **b == b' ').count();
        let start = h.value.start + (sp + 1 + skip) as u32;
        if start >= h.value.end {
            return Ok(None);
        }
        return Ok(Some((
            Span {
                start,
                end: h.value.end,
            },
            scheme,
        )));
    }
    Ok(c.head()
        .headers
        .iter()
        .find(|h| h.name.of(buf).eq_ignore_ascii_case(b"x-access-token"))
        .map(|h| (h.value, Scheme::Bearer)))
}

fn bad_request(body: &[u8], reason: &'static str) -> PluginResponse {
    PluginResponse {
        status: 400,
        headers: Vec::new(),
        content_type: "application/json",
        body: body.to_vec(),
        code: "invalid_request",
        reason: reason.into(),
    }
}

fn apply(auth: &RouteAuth, c: &mut Ctx<'_>, token: Span, v: &Verified) {
    let conf = &auth.route.conf;
    let out = c.outcome();
    if conf.set_access_token_header {
        match &v.authorization {
            Some(a) => {
                out.strip_authorization = true;
                out.upstream_headers
                    .push(("Authorization", HeaderValue::Shared(a.clone())));
            }
            None => out
                .upstream_headers
                .push(("X-Access-Token", HeaderValue::Request(token))),
        }
    }
    if let Some(u) = &v.userinfo_b64 {
        out.upstream_headers
            .push(("X-Userinfo", HeaderValue::Shared(u.clone())));
    }
}

/// `cnf.jkt` of a JWT payload or an introspection answer (RFC 9449 6.1, 6.2).
fn bound_jkt(json: &[u8]) -> Option<Rc<str>> {
    #[derive(serde::Deserialize)]
    struct Cnf {
        jkt: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct WithCnf {
        cnf: Option<Cnf>,
    }
    serde_json::from_slice::<WithCnf>(json)
        .ok()
        .and_then(|w| w.cnf)
        .and_then(|c| c.jkt)
        .map(Rc::from)
}

fn verified(auth: &RouteAuth, token: &str, payload: &[u8], generation: u64) -> Verified {
    let conf = &auth.route.conf;
    Verified {
        userinfo_b64: conf
            .set_userinfo_header
            .then(|| Rc::from(base64::engine::general_purpose::STANDARD.encode(payload))),
        authorization: (conf.set_access_token_header && conf.access_token_in_authorization_header)
            .then(|| Rc::from(format!("Bearer {token}"))),
        generation,
        jkt: if conf.dpop_bound_tokens == DpopBoundTokens::Off {
            None
        } else {
            bound_jkt(payload)
        },
    }
}

/// The claim rules, rebuilt only when the provider's metadata changes (issuer from discovery).
fn claims_policy(auth: &RouteAuth, include_issuer: bool) -> Result<Rc<ClaimsPolicy>, Fail> {
    let generation = auth
        .provider
        .as_ref()
        .map(|(_, l)| l.load().generation)
        .unwrap_or(0);
    let key = generation * 2 + u64::from(include_issuer);
    if let Some((g, p)) = &*auth.policy.borrow()
        && *g == key
    {
        return Ok(p.clone());
    }
    let conf = &auth.route.conf;
    let mut valid_issuers = conf.claim_validator.issuer.valid_issuers.clone();
    if include_issuer && valid_issuers.is_empty() {
        // APISIX falls back to the discovery issuer and fails closed without it.
        let state = auth.provider.as_ref().map(|(_, l)| l.load());
        match state.as_ref().and_then(|s| s.metadata.as_ref()) {
            Some(m) => valid_issuers.push(m.issuer.clone()),
            None => {
                return Err(Fail::Unavailable(
                    "issuer validation unavailable: discovery not loaded",
                    String::new(),
                ));
            }
        }
    }
    let policy = Rc::new(ClaimsPolicy {
        valid_issuers,
        audience: auth.route.audience.clone(),
        required_scopes: conf.required_scopes.clone(),
        leeway_secs: conf.iat_slack,
        require_exp: false,
    });
    *auth.policy.borrow_mut() = Some((key, policy.clone()));
    Ok(policy)
}

async fn verify_jwt(auth: &RouteAuth, token: &str, now: u64) -> Result<(Verified, u64), Fail> {
    let jwt = Jwt::parse(token)?;
    let (keys, generation): (Arc<KeySet>, u64) = match auth.route.check {
        TokenCheck::StaticKey => match &auth.route.static_keys {
            Some(k) => (k.clone(), 0),
            None => {
                return Err(Fail::Unavailable(
                    "no verification key configured",
                    String::new(),
                ));
            }
        },
        _ => {
            let Some((_, local)) = &auth.provider else {
                return Err(Fail::Unavailable(
                    "no identity provider configured",
                    String::new(),
                ));
            };
            let st = local.load();
            match &st.keys {
                Some(k) => (k.clone(), st.generation),
                None => {
                    return Err(Fail::Unavailable(
                        "JWKS not loaded yet",
                        st.last_error.clone().unwrap_or_default(),
                    ));
                }
            }
        }
    };
    let policy = &auth.route.alg_policy;
    let (keys, generation) = match verify_signature(&jwt, &keys, policy) {
        Ok(()) => (keys, generation),
        Err(TokenError::UnknownKid { kid }) if auth.route.check == TokenCheck::Jwks => {
            let Some((handle, local)) = &auth.provider else {
                return Err(TokenError::UnknownKid { kid }.into());
            };
            let timeout = auth.route.conf.timeout() + Duration::from_secs(1);
            let lookup = handle
                .addr
                .ask(
                    |reply| ProviderMsg::UnknownKid {
                        kid: kid.clone(),
                        reply,
                    },
                    timeout,
                )
                .await
                .unwrap_or(KidLookup::Unavailable);
            match lookup {
                KidLookup::NotFound => return Err(TokenError::UnknownKid { kid }.into()),
                KidLookup::Unavailable => {
                    return Err(Fail::Unavailable(
                        "unknown kid and the IdP's JWKS is unreachable",
                        kid,
                    ));
                }
                KidLookup::Found => {
                    // The reply can overtake the snapshot on its way to this shard: read the
                    // publisher directly on this (rare) path.
                    let st = local.load();
                    let st = if st.keys.as_ref().is_some_and(|k| k.contains_kid(&kid)) {
                        st
                    } else {
                        Rc::new(handle.state.current())
                    };
                    let Some(k) = st.keys.clone() else {
                        return Err(TokenError::UnknownKid { kid }.into());
                    };
                    verify_signature(&jwt, &k, policy)?;
                    (k, st.generation)
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    let _ = keys;
    let claims = ClaimsView::parse(jwt.payload())?;
    claims_policy(auth, true)?.check(&claims, now)?;
    check_schema(auth, jwt.payload())?;
    let ttl = claims
        .cache_until(now, MAX_VERIFIED_TTL_SECS)
        .saturating_sub(now);
    Ok((verified(auth, token, jwt.payload(), generation), ttl))
}

fn check_schema(auth: &RouteAuth, json: &[u8]) -> Result<(), Fail> {
    if let Some(schema) = &auth.route.schema {
        let value: serde_json::Value = serde_json::from_slice(json)
            .map_err(|_| Fail::from(TokenError::Malformed("claims are not JSON")))?;
        schema
            .validate(&value)
            .map_err(|e| Fail::from(TokenError::SchemaMismatch(e)))?;
    }
    Ok(())
}

async fn introspect(
    auth: &RouteAuth,
    c: &Ctx<'_>,
    token: &str,
    now: u64,
) -> Result<(Verified, u64), Fail> {
    let conf = &auth.route.conf;
    let Some((handle, local)) = &auth.provider else {
        return Err(Fail::Unavailable(
            "no identity provider configured",
            String::new(),
        ));
    };
    let endpoint = match &conf.introspection_endpoint {
        Some(e) => e.clone(),
        None => {
            let st = local.load();
            match st
                .metadata
                .as_ref()
                .map(|m| m.introspection_endpoint.clone())
            {
                Some(Some(e)) => e,
                Some(None) => {
                    return Err(Fail::Unavailable(
                        "the IdP advertises no introspection_endpoint",
                        String::new(),
                    ));
                }
                None => {
                    return Err(Fail::Unavailable(
                        "discovery not loaded yet",
                        st.last_error.clone().unwrap_or_default(),
                    ));
                }
            }
        }
    };
    let addon: Vec<(String, String)> = conf
        .introspection_addon_headers
        .iter()
        .filter_map(|name| {
            c.header(name)
                .map(|v| (name.clone(), String::from_utf8_lossy(v).into_owned()))
        })
        .collect();
    let mut req = IntrospectionRequest::new(token);
    req.addon_headers = &addon;
    let jti = auth.oidc.random_id();
    let (body, headers) = req
        .build(&auth.route.introspection_auth, &endpoint, now, &jti)
        .map_err(|e| Fail::Unavailable("cannot build the introspection request", e.to_string()))?;
    let call = SharedCall {
        key: format!("introspect\n{}\n{}\n{token}", endpoint, conf.client_id),
        method: "POST",
        url: endpoint,
        headers,
        body,
        // A shard whose request arrives just after the shared call answered, but before the
        // shard that asked first has cached the answer, would otherwise start a second call:
        // the actor keeps the answer briefly so such late asks join it (one IdP call for N
        // shards x M concurrent requests). The actor keeps any 200 answer, "not active" ones
        // too, so not when the operator asked for no caching at all, nor when refusals must
        // reach the IdP every time (`introspection_enable_negative_cache: false`).
        grace: (!conf.introspection_cache_ignore && conf.introspection_enable_negative_cache)
            .then_some(INTROSPECTION_JOIN_GRACE),
    };
    let timeout = conf.timeout() + Duration::from_secs(1);
    let resp = match handle
        .addr
        .ask(|reply| ProviderMsg::Shared { call, reply }, timeout)
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(Fail::Unavailable(
                "introspection endpoint unreachable",
                e.to_string(),
            ));
        }
        Err(e) => {
            return Err(Fail::Unavailable(
                "introspection did not answer in time",
                format!("{e:?}"),
            ));
        }
    };
    if resp.status != 200 {
        return Err(Fail::Unavailable(
            "introspection endpoint refused the call (check the client credentials)",
            format!("HTTP {}", resp.status),
        ));
    }
    let parsed = IntrospectionResponse::parse(&resp.body).map_err(|e| {
        Fail::Unavailable(
            "introspection answer is not valid RFC 7662 JSON",
            e.to_string(),
        )
    })?;
    if !parsed.active {
        let r = Rejected {
            status: 401,
            error: "invalid_token",
            description: Rc::from("token is not active"),
        };
        // The caller keeps it in the negative cache per the route's settings.
        return Err(Fail::Reject(r));
    }
    let claims = ClaimsView::parse(parsed.raw())?;
    // APISIX does no issuer check on introspection; an explicit valid_issuers list still applies.
    claims_policy(auth, false)?.check(&claims, now)?;
    check_schema(auth, parsed.raw())?;
    let ttl = parsed
        .ttl(
            now,
            conf.introspection_interval,
            &conf.introspection_expiry_claim,
        )
        .unwrap_or(0);
    Ok((verified(auth, token, parsed.raw(), 0), ttl))
}

fn bad_token(why: &str) -> Rejected {
    Rejected {
        status: 401,
        error: "invalid_token",
        description: Rc::from(why),
    }
}

/// 401 without an error code: no credentials at all (RFC 6750 3.1).
fn challenge(auth: &RouteAuth, _why: Option<&str>) -> Error {
    Error::Plugin(PluginResponse {
        status: 401,
        headers: vec![("WWW-Authenticate".into(), auth.route.challenge.clone())],
        content_type: "application/json",
        body: b"{\"error\":\"unauthorized\",\"error_description\":\"no bearer token\"}\n".to_vec(),
        code: "no_credentials",
        reason: "no credentials".into(),
    })
}

fn reject(auth: &RouteAuth, r: &Rejected) -> Error {
    let desc: String = r
        .description
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
        "{}, error=\"{}\", error_description=\"{}\"",
        auth.route.challenge, r.error, desc
    );
    let body = serde_json::json!({ "error": r.error, "error_description": &*r.description })
        .to_string()
        + "\n";
    Error::Plugin(PluginResponse {
        status: r.status,
        headers: vec![("WWW-Authenticate".into(), www)],
        content_type: "application/json",
        body: body.into_bytes(),
        code: r.error,
        reason: r.description.to_string(),
    })
}
