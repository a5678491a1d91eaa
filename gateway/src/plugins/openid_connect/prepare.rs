//! Turning a route's `openid-connect` attributes into ready-to-use values, once per config load:
//! keys parsed, the claim schema compiled, client authentication loaded, the provider chosen.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use shardgate_oidc::claims::{AudienceRule, CompiledSchema};
use shardgate_oidc::client_auth::{AuthMethod, ClientAuth, PreparedClientAuth};
use shardgate_oidc::config::OidcConf;
use shardgate_oidc::idp::provider::{ProviderHandle, ProviderSpec, ProxySpec};
use shardgate_oidc::jwk::{Key, KeySet};
use shardgate_oidc::jwt::{Alg, AlgPolicy, AlgSet};

use super::{OidcShared, RouteAuth};
use crate::config::RouteConf;
use crate::pipeline::Problem;

/// How bearer tokens are checked on a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// Local JWT verification with the provider's JWKS (`use_jwks`).
    Jwks,
    /// Local JWT verification with `public_key` / `symmetric_key`.
    StaticKey,
    /// RFC 7662 introspection.
    Introspection,
}

/// A route's prepared `openid-connect` settings (shared by every shard, immutable).
pub struct OidcRoute {
    pub conf: Arc<OidcConf>,
    /// Changes whenever any attribute changes: shards keep caches across reloads only when equal.
    pub fingerprint: u64,
    pub provider: Option<ProviderHandle>,
    pub check: TokenCheck,
    pub static_keys: Option<Arc<KeySet>>,
    pub alg_policy: AlgPolicy,
    pub audience: Option<AudienceRule>,
    pub schema: Option<CompiledSchema>,
    pub introspection_auth: PreparedClientAuth,
    /// Client authentication at the token endpoint (code exchange, refresh, revocation).
    pub token_auth: PreparedClientAuth,
    /// Client authentication at the PAR endpoint, when `par.enabled` (and not bearer_only):
    /// `par.endpoint_auth_method`, else the token endpoint's (as APISIX).
    pub par_auth: Option<PreparedClientAuth>,
    /// `WWW-Authenticate: Bearer realm="<realm>"` prefix, built once.
    pub challenge: String,
    /// Process-wide DPoP replay set and nonce key (resource-server side).
    pub dpop_guard: Arc<super::dpop::DpopGuard>,
    /// The gateway's own DPoP key as a client (`dpop.enabled`).
    pub dpop_signer: Option<Arc<shardgate_oidc::dpop::DpopSigner>>,
}

impl std::fmt::Debug for OidcRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcRoute")
            .field("fingerprint", &self.fingerprint)
            .field("check", &self.check)
            .finish()
    }
}

/// Prepares one route's plugin; `path` names the config location for errors.
pub fn prepare(conf: Arc<OidcConf>, shared: &OidcShared, path: &str) -> Result<OidcRoute, String> {
    let fingerprint = fingerprint(&conf);
    let check = if conf.use_jwks {
        TokenCheck::Jwks
    } else if conf.public_key.is_some() || conf.symmetric_key.is_some() {
        TokenCheck::StaticKey
    } else {
        TokenCheck::Introspection
    };
    let mut keys = Vec::new();
    if let Some(pem) = &conf.public_key {
        keys.push(Key::from_public_pem(pem).map_err(|e| format!("{path}.public_key: {e}"))?);
    }
    if let Some(secret) = &conf.symmetric_key {
        keys.push(Key::symmetric(secret.expose().as_bytes()));
    }
    let static_keys = (!keys.is_empty()).then(|| Arc::new(KeySet::from_keys(keys)));

    let mut alg_policy = match &conf.token_signing_alg_values_expected {
        Some(name) => {
            let alg = Alg::from_name(name).ok_or_else(|| {
                format!("{path}.token_signing_alg_values_expected: unknown algorithm {name:?}")
            })?;
            AlgPolicy::only(alg)
        }
        None => AlgPolicy::default(),
    };
    if conf.symmetric_key.is_some() {
        alg_policy.allow_symmetric = true;
        if conf.token_signing_alg_values_expected.is_none() {
            let mut set = AlgSet::asymmetric();
            for a in [Alg::HS256, Alg::HS384, Alg::HS512] {
                set.insert(a);
            }
            alg_policy.allowed = set;
        }
    }

    let a = &conf.claim_validator.audience;
    let audience =
        (a.required || a.match_with_client_id || a.claim != "aud").then(|| AudienceRule {
            claim: a.claim.clone(),
            required: a.required || a.match_with_client_id,
            expected: if a.match_with_client_id {
                vec![conf.client_id.clone()]
            } else {
                Vec::new()
            },
        });
    let schema = match &conf.claim_schema {
        Some(s) => {
            Some(CompiledSchema::compile(s).map_err(|e| format!("{path}.claim_schema: {e}"))?)
        }
        None => None,
    };
    // Only routes that introspect need introspection credentials (a public PKCE client has none).
    let introspection_method = if check == TokenCheck::Introspection && conf.bearer_enabled() {
        auth_method(conf.introspection_endpoint_auth_method)
    } else {
        AuthMethod::None
    };
    let introspection_auth = client_auth(&conf, introspection_method)
        .prepare()
        .map_err(|e| format!("{path}: introspection client authentication: {e}"))?;
    // bearer_only routes never call the token endpoint; a public client with PKCE and no
    // credentials authenticates by client_id alone.
    let public_pkce =
        conf.use_pkce && conf.client_secret.is_none() && conf.client_rsa_private_key.is_none();
    let token_method = if conf.bearer_only || public_pkce {
        AuthMethod::None
    } else {
        auth_method(conf.token_endpoint_auth_method)
    };
    let token_auth = client_auth(&conf, token_method);
    let token_auth = token_auth
        .prepare()
        .map_err(|e| format!("{path}: token endpoint client authentication: {e}"))?;
    let par_auth = match conf.par.as_ref().filter(|p| p.enabled && !conf.bearer_only) {
        Some(par) => {
            let method = par.endpoint_auth_method.map_or(token_method, auth_method);
            Some(
                client_auth(&conf, method)
                    .prepare()
                    .map_err(|e| format!("{path}.par: PAR endpoint client authentication: {e}"))?,
            )
        }
        None => None,
    };
    let proxy = conf.proxy_opts.as_ref().map(|p| ProxySpec {
        http_proxy: p.http_proxy.clone(),
        https_proxy: p.https_proxy.clone(),
        http_proxy_authorization: p
            .http_proxy_authorization
            .as_ref()
            .map(|s| s.expose().to_string()),
        https_proxy_authorization: p
            .https_proxy_authorization
            .as_ref()
            .map(|s| s.expose().to_string()),
        no_proxy: p
            .no_proxy
            .as_deref()
            .map(|n| {
                n.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    });
    let spec = ProviderSpec {
        discovery_url: conf.discovery.clone(),
        discovery_expires_in: Duration::from_secs(conf.discovery_expires_in.max(1)),
        jwk_expires_in: Duration::from_secs(conf.jwk_expires_in.max(1)),
        need_jwks: conf.use_jwks || !conf.bearer_only,
        timeout: conf.timeout(),
        ssl_verify: conf.ssl_verify,
        proxy,
        ca_file: conf.ssl_ca_file.clone(),
    };
    let provider = Some(shared.provider(spec));
    let challenge = format!(
        "Bearer realm=\"{}\"",
        conf.realm.replace(['"', '\\', '\r', '\n'], "")
    );
    let dpop_signer = super::dpop::client_signer(&conf, path)?;
    let dpop_guard = shared.dpop_guard();
    Ok(OidcRoute {
        dpop_guard,
        dpop_signer,
        conf,
        fingerprint,
        provider,
        check,
        static_keys,
        alg_policy,
        audience,
        schema,
        introspection_auth,
        token_auth,
        par_auth,
        challenge,
    })
}

/// Debug output covers every attribute but prints secrets redacted, so the secrets are hashed
/// explicitly: a new `session.secret` must rebuild the shard state that depends on it.
fn fingerprint(conf: &OidcConf) -> u64 {
    let mut h = DefaultHasher::new();
    format!("{conf:?}").hash(&mut h);
    let secrets = [
        conf.client_secret.as_ref(),
        conf.session.secret.as_ref(),
        conf.symmetric_key.as_ref(),
        conf.client_rsa_private_key.as_ref(),
        conf.dpop.as_ref().and_then(|d| d.private_key.as_ref()),
    ];
    for s in secrets {
        s.map(|s| s.expose()).hash(&mut h);
    }
    for s in &conf.session.secret_fallbacks {
        s.expose().hash(&mut h);
    }
    h.finish()
}

/// The route's client credentials, presented with `method`.
fn client_auth(conf: &OidcConf, method: AuthMethod) -> ClientAuth {
    let secret = |s: &shardgate_oidc::config::Secret| s.expose().to_string();
    ClientAuth {
        method,
        client_id: conf.client_id.clone(),
        client_secret: conf.client_secret.as_ref().map(secret),
        private_key_pem: conf.client_rsa_private_key.as_ref().map(secret),
        key_id: conf.client_rsa_private_key_id.clone(),
        assertion_alg: conf
            .client_jwt_assertion_alg
            .and_then(|a| Alg::from_name(&format!("{a:?}"))),
        assertion_lifetime_secs: conf.client_jwt_assertion_expires_in,
        assertion_audience: conf.client_jwt_assertion_audience.clone(),
    }
}

fn auth_method(m: shardgate_oidc::config::AuthMethod) -> AuthMethod {
    use shardgate_oidc::config::AuthMethod as C;
    match m {
        C::ClientSecretBasic => AuthMethod::ClientSecretBasic,
        C::ClientSecretPost => AuthMethod::ClientSecretPost,
        C::ClientSecretJwt => AuthMethod::ClientSecretJwt,
        C::PrivateKeyJwt => AuthMethod::PrivateKeyJwt,
    }
}

/// APISIX's most reported failure is a `redirect_uri` that is also a page users visit: the
/// plugin treats the visit as the login callback and fails with "no session state found".
/// The opposite mistake, a callback path no protected route serves, never completes a login.
pub fn redirect_uri_warnings(routes: &[(usize, RouteConf)]) -> Vec<Problem> {
    let mut warnings = Vec::new();
    let protected: Vec<&(usize, RouteConf)> = routes
        .iter()
        .filter(|(_, r)| r.enabled && r.plugins.conf::<RouteAuth>().is_some())
        .collect();
    for (i, route) in routes {
        let Some(oidc) = route.plugins.conf::<RouteAuth>() else {
            continue;
        };
        if oidc.bearer_only {
            continue;
        }
        let Some(redirect) = oidc.redirect_uri.as_deref() else {
            continue;
        };
        let Some(callback) = uri_path(redirect) else {
            continue;
        };
        let at = format!("routes[{i}].plugins.openid-connect.redirect_uri");
        let mut served = false;
        for (j, other) in &protected {
            for uri in &other.uris {
                let (clash, matches) = match uri.strip_suffix('*') {
                    Some(prefix) => (
                        callback == prefix || callback == prefix.trim_end_matches('/'),
                        callback.starts_with(prefix),
                    ),
                    None => (callback == uri, callback == uri),
                };
                served |= matches;
                if clash {
                    warnings.push(Problem::new(
                        at.clone(),
                        format!(
                            "path `{callback}` is also the URI `{uri}` of protected route `{}` \
                             (routes[{j}]): visiting it is treated as the login callback and fails \
                             with \"no session state found\"; use a dedicated callback path",
                            other.id
                        ),
                    ));
                }
            }
        }
        if !served {
            warnings.push(Problem::new(
                at,
                format!(
                    "path `{callback}` is not matched by any route with openid-connect, so the \
                     IdP's callback cannot complete the login"
                ),
            ));
        }
    }
    warnings
}

/// The path of an absolute URL or of a path-only URI, without query or fragment.
fn uri_path(uri: &str) -> Option<&str> {
    let rest = match uri.split_once("://") {
        Some((_, after)) => &after[after.find('/')?..],
        None => uri,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    Some(&rest[..end])
}
