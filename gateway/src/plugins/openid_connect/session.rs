//! The browser side: authorization code + PKCE login, sealed cookie sessions, refresh, logout, and
//! the back-channel logout receiver. The protocol pieces are sans-IO in `shardgate_oidc::{flow,
//! session}`; this module reads the request, talks to the IdP through the provider actor, and
//! writes cookies and redirects.
//!
//! Request routing inside a protected route, in order:
//! `logout_path` -> logout; the redirect_uri path -> callback; `<logout_path>/backchannel` (POST)
//! -> back-channel logout; otherwise the session cookie (refreshing the access token when due),
//! and without a usable session `unauth_action` (302 to the IdP / 401 / pass).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use shardgate_oidc::cache::TtlCache;
use shardgate_oidc::client_auth::PreparedClientAuth;
use shardgate_oidc::config::{OidcConf, SameSite as ConfSameSite, UnauthAction};
use shardgate_oidc::discovery::ProviderMetadata;
use shardgate_oidc::flow::{
    self, AuthorizeParams, Callback, ClaimError, FlowError, IdTokenRules, LoginState, LogoutAction,
    ParResponse, TokenResponse, TokenState,
};
use shardgate_oidc::idp::client::Response;
use shardgate_oidc::idp::provider::{KidLookup, ProviderMsg, SharedCall};
use shardgate_oidc::jwt::{Alg, AlgPolicy, Jwt, TokenError, verify_signature};
use shardgate_oidc::session::{
    self, ChunkMask, CookieAttrs, RawValue, SameSite, SessionCodec, SessionData, SessionKeys,
    SessionTimeouts,
};

use super::RouteAuth;
use crate::error::Error;
use crate::pipeline::{Ctx, PhaseResult, Step};
use crate::plugins::{HeaderValue, PluginResponse};

/// Refresh answers are shared with requests still carrying the old cookie for this long.
const REFRESH_GRACE: Duration = Duration::from_secs(60);
/// Path suffix APISIX uses for the default redirect_uri.
const DEFAULT_REDIRECT_SUFFIX: &str = "/.apisix/redirect";

/// A route's session machinery on one shard.
pub struct SessionState {
    codec: SessionCodec,
    cookie_name: String,
    attrs: CookieAttrs,
    login_attrs: CookieAttrs,
    scratch: RefCell<Vec<u8>>,
    open_scratch: RefCell<Vec<u8>>,
    /// Cookies opened recently on this shard, by their exact bytes.
    opened: RefCell<TtlCache<Rc<OpenedSession>>>,
    backchannel_path: String,
}

impl SessionState {
    pub fn new(conf: &OidcConf) -> Result<SessionState, String> {
        let s = &conf.session;
        let secret = s
            .secret
            .as_ref()
            .ok_or("session.secret is required unless bearer_only")?;
        let fallbacks: Vec<&[u8]> = s
            .secret_fallbacks
            .iter()
            .map(|f| f.expose().as_bytes())
            .collect();
        let keys =
            SessionKeys::new(secret.expose().as_bytes(), &fallbacks).map_err(|e| e.to_string())?;
        let defaults = SessionTimeouts::default();
        let timeouts = SessionTimeouts {
            idling: s.idling_timeout,
            rolling: s.rolling_timeout,
            absolute: s.absolute_timeout,
            // Activity is recorded only once it is this old; with the default threshold an
            // idling_timeout under a minute would log out users who are active all along.
            touch_threshold: defaults.touch_threshold.min(s.idling_timeout / 4),
        };
        // Bound to the provider and client: routes sharing `session.secret` and cookie name but
        // trusting another IdP or client cannot replay each other's sessions or login state.
        let codec = SessionCodec::new(keys, timeouts)
            .with_compression_threshold(s.compression_threshold)
            .with_binding(&conf.discovery, &conf.client_id);
        let same_site = match s.cookie_same_site {
            ConfSameSite::Strict => SameSite::Strict,
            ConfSameSite::None => SameSite::None,
            _ => SameSite::Lax,
        };
        let attrs = CookieAttrs {
            path: s.cookie_path.clone(),
            domain: s.cookie_domain.clone(),
            secure: s.cookie_secure,
            http_only: s.cookie_http_only,
            same_site,
            max_age: None,
        };
        attrs.validate().map_err(|e| e.to_string())?;
        session::validate_cookie_name(&s.cookie_name).map_err(|e| e.to_string())?;
        // Login cookies must survive the cross-site redirect back from the IdP (a top-level GET):
        // Lax does; Strict would drop them, so they are never Strict.
        let login_attrs = CookieAttrs {
            same_site: if same_site == SameSite::Strict {
                SameSite::Lax
            } else {
                same_site
            },
            max_age: Some(conf.authorization_state_expires_in),
            ..attrs.clone()
        };
        Ok(SessionState {
            codec,
            cookie_name: s.cookie_name.clone(),
            attrs,
            login_attrs,
            scratch: RefCell::new(Vec::with_capacity(4096)),
            open_scratch: RefCell::new(Vec::with_capacity(4096)),
            opened: RefCell::new(TtlCache::new(4096)),
            backchannel_path: format!("{}/backchannel", conf.logout_path.trim_end_matches('/')),
        })
    }

    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }
}

fn cookie_values<'c>(c: &'c Ctx<'_>) -> impl Iterator<Item = &'c [u8]> {
    c.cookie_headers()
}

fn conf(auth: &RouteAuth) -> &OidcConf {
    &auth.route.conf
}

/// The session branch of the rewrite phase.
pub async fn rewrite(auth: &RouteAuth, c: &mut Ctx<'_>) -> PhaseResult {
    let Some(s) = &auth.session else {
        return unauthenticated_without_session(auth);
    };
    // Our cookies never reach the upstream.
    c.outcome().strip_cookie_prefix = Some(auth.cookie_prefix.clone());
    let now = auth.oidc.now_secs();
    let conf = conf(auth);
    let path = c.route_path();
    let is_logout = path == conf.logout_path.as_bytes();
    let is_backchannel =
        path == s.backchannel_path.as_bytes() && c.head().method == crate::http1::Method::Post;
    let is_cb = is_callback(conf, path);
    if is_logout {
        return logout(auth, s, c, now).await;
    }
    if is_backchannel {
        return backchannel_logout(auth, s, c, now).await;
    }
    if is_cb {
        return callback(auth, s, c, now).await;
    }
    // Fast path: the same cookie bytes as a session this shard already opened and checked.
    let hit = {
        let mut joined = s.scratch.borrow_mut();
        match session::collect_chunks(cookie_values(c), &s.cookie_name, &mut joined) {
            Ok(Some(_)) => s
                .opened
                .borrow()
                .get(&joined, auth.oidc.now_millis())
                .cloned(),
            _ => None,
        }
    };
    if let Some(open) = hit {
        if still_good(auth, s, &open.data, now) {
            apply_session_headers(c, &open.headers);
            return Ok(Step::Continue);
        }
        if let Some(cookies) = reusable_reissue(auth, s, &open, now) {
            apply_session_headers(c, &open.headers);
            c.outcome().response_headers.extend(
                cookies
                    .iter()
                    .map(|v| ("Set-Cookie".to_string(), v.clone())),
            );
            return Ok(Step::Continue);
        }
    }
    match open_session(auth, s, c, now) {
        Ok(Some(data)) if !auth.oidc.is_revoked(&data) => use_session(auth, s, c, data, now).await,
        Ok(Some(data)) => {
            tracing::info!(
                sub = data.sub.as_deref(),
                sid = data.sid.as_deref(),
                "session revoked by back-channel logout"
            );
            clear_session_cookies(s, c);
            unauthenticated(auth, s, c, now).await
        }
        Ok(None) => unauthenticated(auth, s, c, now).await,
        Err(e) => {
            // Tampered, truncated, foreign or expired: no session (never a 500).
            tracing::info!(reason = %e, "session cookie refused");
            clear_session_cookies(s, c);
            unauthenticated(auth, s, c, now).await
        }
    }
}

fn unauthenticated_without_session(auth: &RouteAuth) -> PhaseResult {
    match conf(auth).unauth_action {
        UnauthAction::Pass => Ok(Step::Continue),
        _ => Err(plain(
            401,
            "unauthorized",
            "no credentials",
            vec![("WWW-Authenticate".into(), auth.route.challenge.clone())],
        )),
    }
}

fn is_callback(conf: &OidcConf, path: &[u8]) -> bool {
    match &conf.redirect_uri {
        Some(uri) => url_path(uri).as_bytes() == path,
        None => path.ends_with(DEFAULT_REDIRECT_SUFFIX.as_bytes()),
    }
}

fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("/");
    path.split(['?', '#']).next().unwrap_or("/")
}

/// The redirect_uri of this request: the configured one, or APISIX's default `<uri>/.apisix/redirect`.
fn redirect_uri(conf: &OidcConf, c: &Ctx<'_>) -> String {
    if let Some(u) = &conf.redirect_uri {
        return u.clone();
    }
    let (scheme, host) = public_origin(c);
    let path = String::from_utf8_lossy(c.head().path.of(c.buf())).into_owned();
    let path = path
        .strip_suffix(DEFAULT_REDIRECT_SUFFIX)
        .unwrap_or(&path)
        .trim_end_matches('/')
        .to_string();
    format!("{scheme}://{host}{path}{DEFAULT_REDIRECT_SUFFIX}")
}

/// The scheme and host the browser used. From a peer in `gateway.trusted_addresses`: its
/// `Forwarded` (first element's `proto`, `host`), else its `X-Forwarded-Proto`/`-Host`, as
/// lua-resty-openidc reads them; anyone else's forwarding headers are ignored (APISIX overwrites
/// them), leaving this connection's scheme and `Host`.
fn public_origin(c: &Ctx<'_>) -> (String, String) {
    let mut scheme = if c.tls() { "https" } else { "http" }.to_owned();
    let mut host = c
        .head()
        .host
        .map(|h| String::from_utf8_lossy(h.of(c.buf())).into_owned())
        .unwrap_or_default();
    if c.peer_trusted() != Some(true) {
        return (scheme, host);
    }
    let first = |v: &[u8]| -> Option<String> {
        let v = v.split(|b| *b == b',').next()?.trim_ascii();
        (!v.is_empty()).then(|| String::from_utf8_lossy(v).into_owned())
    };
    let (mut fwd_proto, mut fwd_host) = (None, None);
    if let Some(f) = c.header("forwarded") {
        let element = f.split(|b| *b == b',').next().unwrap_or_default();
        for pair in element.split(|b| *b == b';') {
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let key = pair[..eq].trim_ascii();
            let value = pair[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            if value.is_empty() {
                continue;
            }
            let value = String::from_utf8_lossy(value).into_owned();
            if key.eq_ignore_ascii_case(b"proto") {
                fwd_proto.get_or_insert(value);
            } else if key.eq_ignore_ascii_case(b"host") {
                fwd_host.get_or_insert(value);
            }
        }
    }
    if let Some(p) = fwd_proto.or_else(|| c.header("x-forwarded-proto").and_then(first)) {
        scheme = p.to_ascii_lowercase();
    }
    if let Some(h) = fwd_host.or_else(|| c.header("x-forwarded-host").and_then(first)) {
        host = h;
    }
    (scheme, host)
}

/// Opens the request's session with the shard's reusable buffers (no allocation beyond the
/// returned session's own strings).
fn open_session(
    auth: &RouteAuth,
    s: &SessionState,
    c: &Ctx<'_>,
    now: u64,
) -> Result<Option<SessionData>, String> {
    let mut joined = s.scratch.borrow_mut();
    let mut plain = s.open_scratch.borrow_mut();
    let data = match session::collect_chunks(cookie_values(c), &s.cookie_name, &mut joined) {
        Ok(None) => return Ok(None),
        Ok(Some(_)) => s
            .codec
            .open_with(&joined, &s.cookie_name, now, &mut plain)
            .map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    };
    // The cookie is bound to the discovery URL; this also catches the issuer behind that URL
    // changing since login (checked whenever discovery is loaded, so an IdP outage does not end
    // sessions).
    if let (Some(iss), Some(meta)) = (&data.iss, provider_metadata(auth).ok())
        && *iss != meta.issuer
    {
        return Err(format!(
            "session was issued by {iss:?}, this route's provider is now {:?}",
            meta.issuer
        ));
    }
    Ok(Some(data))
}

fn clear_session_cookies(s: &SessionState, c: &mut Ctx<'_>) {
    let present = session::present_chunks(cookie_values(c), &s.cookie_name);
    let mut cookies = Vec::new();
    session::clear_cookie_headers(&s.cookie_name, present, &s.attrs, &mut cookies);
    c.outcome()
        .response_headers
        .extend(cookies.into_iter().map(|v| ("Set-Cookie".to_string(), v)));
}

fn provider_metadata(auth: &RouteAuth) -> Result<Arc<ProviderMetadata>, Error> {
    let st = auth.provider.as_ref().map(|(_, l)| l.load());
    match st.as_ref().and_then(|s| s.metadata.clone()) {
        Some(m) => Ok(m),
        None => Err(Error::Unavailable("OIDC discovery not loaded yet")),
    }
}

async fn idp_call(auth: &RouteAuth, call: SharedCall) -> Result<Arc<Response>, Error> {
    let Some((handle, _)) = &auth.provider else {
        return Err(Error::Unavailable("no identity provider"));
    };
    let timeout = conf(auth).timeout() + Duration::from_secs(1);
    match handle
        .addr
        .ask(|reply| ProviderMsg::Shared { call, reply }, timeout)
        .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "identity provider call failed");
            Err(Error::Unavailable("identity provider unreachable"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "identity provider call did not answer in time");
            Err(Error::Unavailable(
                "identity provider did not answer in time",
            ))
        }
    }
}

/// A token-endpoint POST (code exchange, refresh, revocation) with the route's client auth.
fn token_call(
    auth: &RouteAuth,
    url: &str,
    key: String,
    form: Vec<(String, String)>,
    grace: Option<Duration>,
    now: u64,
) -> Result<SharedCall, Error> {
    let mut body = shardgate_oidc::client_auth::FormBody::new();
    for (k, v) in &form {
        body.append(k, v);
    }
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    auth.route
        .token_auth
        .apply(url, now, &auth.oidc.random_id(), &mut body, &mut headers)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot authenticate to the token endpoint");
            Error::Unavailable("token endpoint client authentication failed")
        })?;
    Ok(SharedCall {
        key,
        method: "POST",
        url: url.to_string(),
        headers,
        body: body.into_bytes(),
        grace,
    })
}

/// An IdP call with a DPoP proof when the route has `dpop.enabled` (RFC 9449 5, 7): `build`
/// makes the call (again for the retry, so a client assertion's `jti` is not replayed), the
/// proof is added for its method and URL (with `ath` for `access_token`), and an answer asking
/// for a server nonce (`use_dpop_nonce` with `DPoP-Nonce`) is retried once with that nonce.
/// Without a DPoP key it is a plain [`idp_call`].
async fn dpop_idp_call(
    auth: &RouteAuth,
    now: u64,
    access_token: Option<&str>,
    build: impl Fn() -> Result<SharedCall, Error>,
) -> Result<Arc<Response>, Error> {
    let Some(signer) = auth.route.dpop_signer.clone() else {
        return idp_call(auth, build()?).await;
    };
    let with_proof = |nonce: Option<&str>| -> Result<SharedCall, Error> {
        let mut call = build()?;
        let proof = signer
            .proof(
                call.method,
                &call.url,
                now,
                &auth.oidc.random_id(),
                nonce,
                access_token,
            )
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign a DPoP proof");
                Error::Unavailable("DPoP proof signing failed")
            })?;
        call.headers.push(("DPoP".into(), proof));
        if nonce.is_some() {
            // Not the same call as the first (which the IdP refused): do not join it.
            call.key.push_str("\ndpop-nonce");
        }
        Ok(call)
    };
    let resp = idp_call(auth, with_proof(None)?).await?;
    match dpop_nonce_challenge(&resp) {
        Some(nonce) => {
            tracing::debug!("the IdP wants a DPoP nonce; retrying once with it");
            idp_call(auth, with_proof(Some(&nonce))?).await
        }
        None => Ok(resp),
    }
}

/// The nonce an IdP asks for: `DPoP-Nonce` with a 400 `use_dpop_nonce` error (token endpoint,
/// RFC 9449 8) or a 401 whose `WWW-Authenticate` says `use_dpop_nonce` (UserInfo, RFC 9449 9).
fn dpop_nonce_challenge(resp: &Response) -> Option<String> {
    let nonce = resp.header("dpop-nonce")?;
    let asks = match resp.status {
        400 => serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .is_some_and(|v| v.get("error").and_then(|e| e.as_str()) == Some("use_dpop_nonce")),
        401 => resp
            .header("www-authenticate")
            .is_some_and(|w| w.contains("use_dpop_nonce")),
        _ => false,
    };
    asks.then(|| nonce.to_string())
}

async fn unauthenticated(
    auth: &RouteAuth,
    s: &SessionState,
    c: &mut Ctx<'_>,
    now: u64,
) -> PhaseResult {
    let conf = conf(auth);
    let api_shaped = c.header("x-requested-with").is_some()
        || c.header("accept")
            .is_some_and(|a| contains(a, b"application/json"));
    let action = if api_shaped {
        conf.api_unauth_action()
    } else {
        conf.unauth_action
    };
    match action {
        UnauthAction::Pass => Ok(Step::Continue),
        UnauthAction::Deny => Err(plain(
            401,
            "unauthorized",
            "no session",
            response_cookies(
                c,
                vec![("WWW-Authenticate".into(), auth.route.challenge.clone())],
            ),
        )),
        UnauthAction::Auth => start_login(auth, s, c, now, None).await,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

async fn start_login(
    auth: &RouteAuth,
    s: &SessionState,
    c: &mut Ctx<'_>,
    now: u64,
    prompt: Option<&str>,
) -> PhaseResult {
    let conf = conf(auth);
    let meta = provider_metadata(auth)?;
    let Some(endpoint) = meta.authorization_endpoint.as_deref() else {
        return Err(Error::Unavailable(
            "the IdP advertises no authorization_endpoint",
        ));
    };
    let redirect = redirect_uri(conf, c);
    let extra: Vec<(String, String)> = conf
        .authorization_params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let params = AuthorizeParams {
        authorization_endpoint: endpoint,
        client_id: &conf.client_id,
        redirect_uri: &redirect,
        scope: &conf.scope,
        use_nonce: conf.use_nonce,
        use_pkce: conf.use_pkce,
        extra: &extra,
        prompt,
    };
    let original = String::from_utf8_lossy(c.head().target.of(c.buf())).into_owned();
    let (url, login) = match &auth.route.par_auth {
        None => flow::start_login(&params, &original, now, auth.oidc.rng()).map_err(flow_page)?,
        Some(par_auth) => {
            let (query, login) =
                flow::authorization_request(&params, &original, now, auth.oidc.rng())
                    .map_err(flow_page)?;
            let request_uri =
                push_authorization_request(auth, par_auth, &meta, &query, now).await?;
            (
                flow::par_authorize_url(endpoint, &conf.client_id, &request_uri),
                login,
            )
        }
    };
    let Some(name) = login.cookie_name(&s.cookie_name) else {
        return Err(Error::Unavailable("login state could not be named"));
    };
    let value = login
        .seal(&s.codec, &name, auth.oidc.rng())
        .map_err(flow_page)?;
    let mut headers = vec![
        ("Location".to_string(), url),
        (
            "Cache-Control".to_string(),
            "no-cache, no-store, max-age=0".to_string(),
        ),
    ];
    // Many tabs may log in at once: each login has its own cookie; old ones are pruned.
    let mut cookies = Vec::new();
    {
        let existing = flow::login_cookies(cookie_values(c), &s.cookie_name);
        let mut scratch = Vec::new();
        let aged: Vec<(String, u64)> = existing
            .iter()
            .map(|(n, v)| {
                let n = String::from_utf8_lossy(n).into_owned();
                let created = LoginState::open(&s.codec, v, &n, &mut scratch)
                    .map(|l| l.created_at)
                    .unwrap_or(0);
                (n, created)
            })
            .collect();
        let refs: Vec<(&str, u64)> = aged.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        for i in flow::prune(
            &refs,
            now,
            conf.authorization_state_expires_in,
            conf.authorization_state_max_number as usize,
        ) {
            session::clear_cookie(&aged[i].0, &s.login_attrs, &mut cookies);
        }
    }
    session::set_cookie_headers(&name, &[value], &s.login_attrs, &mut cookies);
    headers.extend(cookies.into_iter().map(|v| ("Set-Cookie".to_string(), v)));
    Ok(Step::Respond(PluginResponse {
        status: 302,
        headers,
        content_type: "text/plain",
        body: b"redirecting to the identity provider\n".to_vec(),
        code: "login_redirect",
        reason: "no session: redirect to the identity provider".into(),
    }))
}

/// RFC 9126: POSTs the authorization request's parameters to the PAR endpoint (`par.endpoint`,
/// else discovery's) and returns the `request_uri` the browser then takes to the authorization
/// endpoint. Each push is its own call (keyed by the login's unique `state`, never shared).
async fn push_authorization_request(
    auth: &RouteAuth,
    par_auth: &PreparedClientAuth,
    meta: &ProviderMetadata,
    query: &[(String, String)],
    now: u64,
) -> Result<String, Error> {
    let conf = conf(auth);
    let endpoint = conf
        .par
        .as_ref()
        .and_then(|p| p.endpoint.as_deref())
        .or(meta.pushed_authorization_request_endpoint.as_deref());
    let Some(endpoint) = endpoint else {
        tracing::error!(
            "par.enabled is on, but par.endpoint is unset and the IdP's discovery document has \
             no pushed_authorization_request_endpoint"
        );
        return Err(Error::Unavailable(
            "the IdP advertises no pushed_authorization_request_endpoint",
        ));
    };
    let state = query
        .iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let adds_client_id =
        par_auth.method() != shardgate_oidc::client_auth::AuthMethod::ClientSecretBasic;
    let mut body = shardgate_oidc::client_auth::FormBody::new();
    for (k, v) in flow::par_form(query, adds_client_id) {
        body.append(&k, &v);
    }
    let mut headers = vec![(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    par_auth
        .apply(
            endpoint,
            now,
            &auth.oidc.random_id(),
            &mut body,
            &mut headers,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot authenticate to the PAR endpoint");
            Error::Unavailable("PAR endpoint client authentication failed")
        })?;
    let call = SharedCall {
        key: format!("par\n{state}"),
        method: "POST",
        url: endpoint.to_string(),
        headers,
        body: body.into_bytes(),
        grace: None,
    };
    let resp = idp_call(auth, call).await?;
    match ParResponse::parse(resp.status, &resp.body) {
        Ok(par) => Ok(par.request_uri),
        Err(e) => Err(flow_page(e)),
    }
}

async fn callback(auth: &RouteAuth, s: &SessionState, c: &mut Ctx<'_>, now: u64) -> PhaseResult {
    let conf = conf(auth);
    let query = c
        .head()
        .query
        .map(|q| q.of(c.buf()).to_vec())
        .unwrap_or_default();
    let cb: Callback = flow::parse_callback(&query).map_err(flow_page)?;
    let state = cb.state.clone().unwrap_or_default();
    let (login_name, login) = match find_login(s, c, &state) {
        Ok(found) => found,
        Err(e) => return restart_or_fail(auth, s, c, now, &cb, None, e),
    };
    let meta = provider_metadata(auth)?;
    if let Err(e) = flow::check_callback(
        &cb,
        &login,
        Some(&meta.issuer),
        now,
        conf.authorization_state_expires_in,
    ) {
        return restart_or_fail(auth, s, c, now, &cb, Some(&login), e);
    }
    let code = cb.code.clone().unwrap_or_default();
    let Some(token_endpoint) = meta.token_endpoint.as_deref() else {
        return Err(Error::Unavailable("the IdP advertises no token_endpoint"));
    };
    let form = flow::token_request_form(&code, &login.redirect_uri, login.code_verifier.as_deref());
    let resp = dpop_idp_call(auth, now, None, || {
        token_call(
            auth,
            token_endpoint,
            format!("code\n{code}"),
            form.clone(),
            None,
            now,
        )
    })
    .await?;
    let dpop = auth.route.dpop_signer.is_some();
    let tokens = TokenResponse::parse_with(resp.status, &resp.body, dpop).map_err(flow_page)?;
    if dpop && !tokens.is_dpop() {
        tracing::warn!(
            "dpop.enabled but the IdP issued bearer tokens (token_type is not DPoP): they are not sender-constrained"
        );
    }

    let mut data = SessionData::new(now);
    data.iss = Some(meta.issuer.clone());
    let id_token = tokens.id_token.clone();
    if let Some(raw) = &id_token {
        let payload = verify_id_token(auth, raw).await?;
        let rules = IdTokenRules {
            issuer: &meta.issuer,
            client_id: &conf.client_id,
            nonce: login.nonce.as_deref(),
            leeway: conf.iat_slack,
            max_age: None,
        };
        let info = flow::check_id_token_claims(&payload, &rules, now).map_err(flow_page)?;
        data.sub = Some(info.sub.clone());
        data.sid = info.sid.clone();
        data.id_token_claims =
            RawValue::from_string(String::from_utf8_lossy(&payload).into_owned()).ok();
    }
    let contents = conf.session_contents.as_ref();
    let keep = |f: fn(&shardgate_oidc::config::SessionContents) -> bool| contents.is_none_or(f);
    if conf.set_userinfo_header
        && keep(|c| c.user)
        && let (Some(ep), true) = (
            meta.userinfo_endpoint.as_deref(),
            !tokens.access_token.is_empty(),
        )
    {
        // A DPoP-bound token goes as `Authorization: DPoP` with a proof carrying `ath`.
        let bound = dpop && tokens.is_dpop();
        let scheme = if bound { "DPoP" } else { "Bearer" };
        let build = || {
            Ok(SharedCall {
                key: format!("userinfo\n{}", tokens.access_token),
                method: "GET",
                url: ep.to_string(),
                headers: vec![(
                    "Authorization".into(),
                    format!("{scheme} {}", tokens.access_token),
                )],
                body: Vec::new(),
                grace: None,
            })
        };
        let answer = if bound {
            dpop_idp_call(auth, now, Some(&tokens.access_token), build).await
        } else {
            match build() {
                Ok(call) => idp_call(auth, call).await,
                Err(e) => Err(e),
            }
        };
        match answer {
            Ok(r) if r.status == 200 => {
                let user: Option<Box<RawValue>> = serde_json::from_slice(&r.body).ok();
                // lua-resty-openidc keeps userinfo only when it is about the same subject.
                let same_sub = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v.get("sub").and_then(|s| s.as_str()).map(str::to_string))
                    .is_some_and(|sub| data.sub.as_deref().is_none_or(|own| own == sub));
                if same_sub {
                    data.user = user;
                }
            }
            Ok(r) => tracing::warn!(status = r.status, "userinfo refused; continuing without it"),
            Err(_) => tracing::warn!("userinfo unavailable; continuing without it"),
        }
    }
    tokens.apply_to(&mut data, now, conf.access_token_expires_in);
    if !keep(|c| c.access_token) {
        data.access_token = None;
        data.refresh_token = None;
    }
    if keep(|c| c.enc_id_token) || conf.set_raw_id_token_header {
        data.id_token = id_token;
    }
    if !keep(|c| c.id_token) {
        data.id_token_claims = None;
    }
    let mut cookies = Vec::new();
    let present = session::present_chunks(cookie_values(c), &s.cookie_name);
    seal_into(s, &data, now, auth, present, &mut cookies)?;
    session::clear_cookie(&login_name, &s.login_attrs, &mut cookies);
    // A completed login resets the restart budget (as APISIX's first authenticated request).
    let restarts = flow::restarts_cookie_name(&s.cookie_name);
    if cookie_value(c, &restarts).is_some() {
        session::clear_cookie(&restarts, &s.login_attrs, &mut cookies);
    }
    let target =
        flow::safe_redirect_target(login.original_url.as_bytes()).unwrap_or_else(|| "/".into());
    tracing::info!(sub = data.sub.as_deref(), "login completed");
    let mut headers = vec![
        ("Location".to_string(), target),
        ("Cache-Control".into(), "no-store".into()),
    ];
    headers.extend(cookies.into_iter().map(|v| ("Set-Cookie".to_string(), v)));
    Ok(Step::Respond(PluginResponse {
        status: 302,
        headers,
        content_type: "text/plain",
        body: b"logged in\n".to_vec(),
        code: "login_complete",
        reason: "login completed".into(),
    }))
}

/// The login cookie named by callback `state`, opened.
fn find_login(
    s: &SessionState,
    c: &Ctx<'_>,
    state: &str,
) -> Result<(String, LoginState), FlowError> {
    let name = flow::login_cookie_name(&s.cookie_name, state).ok_or(FlowError::NoLoginState)?;
    let value = flow::login_cookies(cookie_values(c), &s.cookie_name)
        .into_iter()
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| v.to_vec())
        .ok_or(FlowError::NoLoginState)?;
    let login = LoginState::open(&s.codec, &value, &name, &mut Vec::new())?;
    Ok((name, login))
}

/// The value of cookie `name` in the request, if it carries one.
fn cookie_value<'c>(c: &'c Ctx<'_>, name: &str) -> Option<&'c [u8]> {
    cookie_values(c)
        .flat_map(session::split_semicolons)
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .next()
}

/// A failed callback, as APISIX answers it: a GET whose failure is one APISIX restarts on
/// ([`flow::restart_cause`]) sends the browser back to where its login started, at most
/// [`flow::MAX_AUTH_FLOW_RESTARTS`] times in a row (counted in a sealed cookie, reset by a
/// completed login); anything else, or a spent budget, is the error page.
fn restart_or_fail(
    auth: &RouteAuth,
    s: &SessionState,
    c: &mut Ctx<'_>,
    now: u64,
    cb: &Callback,
    login: Option<&LoginState>,
    e: FlowError,
) -> PhaseResult {
    // Without the login it names, the IdP's own error still says more than "no login state".
    let e = match (e, &cb.error) {
        (FlowError::NoLoginState | FlowError::Session(_), Some(error)) => FlowError::IdpError {
            error: error.clone(),
            description: cb.error_description.clone(),
        },
        (e, _) => e,
    };
    let max_age = conf(auth).authorization_state_expires_in;
    let own = login.is_some_and(|l| flow::callback_names_login(cb, l, now, max_age));
    let cause = flow::restart_cause(cb, &e, own);
    let target = match cause {
        _ if c.head().method != crate::http1::Method::Get => None,
        Some(flow::RestartCause::TemporarilyUnavailable) => login.map(|l| l.original_url.clone()),
        // The callback's own login is gone: go back to where the newest login still in flight
        // started (APISIX: the session's original_url), else to where this expired one did.
        Some(flow::RestartCause::StaleState) => {
            newest_live_login(s, c, now, max_age).or_else(|| login.map(|l| l.original_url.clone()))
        }
        None => None,
    };
    let (Some(cause), Some(target)) = (cause, target) else {
        return Err(flow_page(e));
    };
    let name = flow::restarts_cookie_name(&s.cookie_name);
    let spent = cookie_value(c, &name).map_or(0, |v| flow::open_restarts(&s.codec, v, &name));
    if spent >= flow::MAX_AUTH_FLOW_RESTARTS {
        tracing::error!(
            error = %e,
            restarts = spent,
            "login failed (giving up after {spent} restarts of the authentication flow)"
        );
        return Err(flow_page(e));
    }
    let value =
        flow::seal_restarts(&s.codec, &name, spent + 1, auth.oidc.rng()).map_err(flow_page)?;
    let mut cookies = Vec::new();
    session::set_cookie_headers(&name, &[value], &s.login_attrs, &mut cookies);
    let target = flow::safe_redirect_target(target.as_bytes()).unwrap_or_else(|| "/".into());
    tracing::warn!(
        error = %e,
        restart = spent + 1,
        "{}, restarting the authentication flow",
        cause.describe()
    );
    let mut headers = vec![
        ("Location".to_string(), target),
        ("Cache-Control".into(), "no-store".into()),
    ];
    headers.extend(cookies.into_iter().map(|v| ("Set-Cookie".to_string(), v)));
    Ok(Step::Respond(PluginResponse {
        status: 302,
        headers,
        content_type: "text/plain",
        body: b"restarting the login\n".to_vec(),
        code: "login_restart",
        reason: cause.describe().into(),
    }))
}

/// Where the newest login this browser still has in flight started.
fn newest_live_login(s: &SessionState, c: &Ctx<'_>, now: u64, max_age: u64) -> Option<String> {
    let mut scratch = Vec::new();
    flow::login_cookies(cookie_values(c), &s.cookie_name)
        .into_iter()
        .filter_map(|(n, v)| {
            let n = std::str::from_utf8(n).ok()?;
            LoginState::open(&s.codec, v, n, &mut scratch).ok()
        })
        .filter(|l| now.saturating_sub(l.created_at) < max_age)
        .max_by_key(|l| l.created_at)
        .map(|l| l.original_url)
}

/// Seals `data` into Set-Cookie values, and expires chunks the request carried beyond the new
/// count (a session that shrank would otherwise leave its old tail in the browser, sent along on
/// every request until the browser drops it).
fn seal_into(
    s: &SessionState,
    data: &SessionData,
    now: u64,
    auth: &RouteAuth,
    present: ChunkMask,
    out: &mut Vec<String>,
) -> Result<(), Error> {
    let chunks = s.codec.seal(data, &s.cookie_name, now, auth.oidc.rng()).map_err(|e| {
        tracing::error!(error = %e, "cannot seal the session cookie (use session_contents to store less)");
        Error::Plugin(PluginResponse {
            status: 500,
            headers: Vec::new(),
            content_type: "text/plain",
            body: format!("the session does not fit in cookies: {e}\n").into_bytes(),
            code: "session_too_large",
            reason: e.to_string(),
        })
    })?;
    let attrs = CookieAttrs {
        max_age: s.codec.max_age(data, now),
        ..s.attrs.clone()
    };
    session::set_cookie_headers(&s.cookie_name, &chunks, &attrs, out);
    session::clear_cookie_headers(&s.cookie_name, present.beyond(chunks.len()), &s.attrs, out);
    Ok(())
}

/// Verifies an ID token's signature with the provider's keys (one unknown-kid refetch allowed).
async fn verify_id_token(auth: &RouteAuth, raw: &str) -> Result<Vec<u8>, Error> {
    let conf = conf(auth);
    let jwt = Jwt::parse(raw).map_err(id_token_error)?;
    if jwt.alg() == Alg::None {
        if conf.accept_none_alg {
            tracing::warn!("accepting an unsigned ID token (accept_none_alg)");
            return Ok(jwt.payload().to_vec());
        }
        return Err(id_token_error(TokenError::NoneAlg));
    }
    let Some((handle, local)) = &auth.provider else {
        return Err(Error::Unavailable("no identity provider"));
    };
    let policy = AlgPolicy::default();
    let mut st = local.load();
    let Some(mut keys) = st.keys.clone() else {
        return Err(Error::Unavailable("JWKS not loaded yet"));
    };
    let mut result = verify_signature(&jwt, &keys, &policy);
    if let Err(TokenError::UnknownKid { kid }) = &result {
        let lookup = handle
            .addr
            .ask(
                |reply| ProviderMsg::UnknownKid {
                    kid: kid.clone(),
                    reply,
                },
                conf.timeout() + Duration::from_secs(1),
            )
            .await
            .unwrap_or(KidLookup::Unavailable);
        if lookup == KidLookup::Found {
            st = Rc::new(handle.state.current());
            if let Some(k) = st.keys.clone() {
                keys = k;
            }
            result = verify_signature(&jwt, &keys, &policy);
        }
    }
    match result {
        Ok(()) => Ok(jwt.payload().to_vec()),
        Err(TokenError::UnsupportedAlg | TokenError::AlgNotAllowed { .. })
            if conf.accept_unsupported_alg =>
        {
            tracing::warn!(alg = %jwt.alg(), "ID token signature NOT verified (accept_unsupported_alg)");
            Ok(jwt.payload().to_vec())
        }
        Err(e) => Err(id_token_error(e)),
    }
}

fn id_token_error(e: TokenError) -> Error {
    flow_page(FlowError::IdToken(ClaimError::Malformed(format!(
        "signature: {e}"
    ))))
}

async fn use_session(
    auth: &RouteAuth,
    s: &SessionState,
    c: &mut Ctx<'_>,
    mut data: SessionData,
    now: u64,
) -> PhaseResult {
    let conf = conf(auth);
    // force_reauthorize: once the access token is due, run the authorization flow again
    // instead of redeeming the refresh token. (Re-running it on every request, fresh session or
    // not, would send the browser round in a loop after each callback.)
    let token_due =
        flow::access_token_state(&data, now, conf.access_token_expires_leeway) != TokenState::Fresh;
    if (conf.force_reauthorize && token_due)
        || flow::needs_reauthentication(&data, now, conf.refresh_session_interval)
    {
        return start_login(
            auth,
            s,
            c,
            now,
            conf.refresh_session_interval.map(|_| "none"),
        )
        .await;
    }
    let mut reissue = s.codec.needs_reissue(&data, now);
    let mut refreshed = false;
    match flow::access_token_state(&data, now, conf.access_token_expires_leeway) {
        TokenState::Fresh => {}
        state => {
            refreshed = true;
            if conf.renew_access_token_on_expiry && data.refresh_token.is_some() {
                match refresh(auth, &mut data, now).await {
                    Ok(()) => reissue = true,
                    Err(RefreshFail::Fatal(why)) => {
                        tracing::info!(sub = data.sub.as_deref(), reason = %why, "refresh refused by the IdP: session ended");
                        clear_session_cookies(s, c);
                        return unauthenticated(auth, s, c, now).await;
                    }
                    Err(RefreshFail::Transient(why)) if state == TokenState::NeedsRefresh => {
                        tracing::warn!(reason = %why, "refresh failed; the current access token is still valid");
                    }
                    Err(RefreshFail::Transient(why)) => {
                        tracing::warn!(reason = %why, "refresh failed and the access token expired");
                        return Err(Error::Unavailable(
                            "token refresh failed: identity provider unavailable",
                        ));
                    }
                }
            } else if state == TokenState::Expired {
                clear_session_cookies(s, c);
                return unauthenticated(auth, s, c, now).await;
            }
        }
    }
    check_session_claims(auth, &data)?;
    let headers = session_headers(auth, &data);
    apply_session_headers(c, &headers);
    if reissue {
        let presented = (!refreshed).then(|| data.clone());
        s.codec.touch(&mut data, now);
        let mut cookies = Vec::new();
        let present = session::present_chunks(cookie_values(c), &s.cookie_name);
        seal_into(s, &data, now, auth, present, &mut cookies)?;
        c.outcome().response_headers.extend(
            cookies
                .iter()
                .map(|v| ("Set-Cookie".to_string(), v.clone())),
        );
        // Remember the re-sealed cookie for the one presented: the tabs of one browser send
        // the old cookie in parallel until the first Set-Cookie lands, and a client that never
        // stores cookies would otherwise cost a compress-and-seal on every request.
        if let Some(presented) = presented {
            // No await happened since `open_session`, so the scratch still holds this cookie.
            let key = s.scratch.borrow();
            let entry = Rc::new(OpenedSession {
                data: presented,
                headers,
                reissued: Some(Reissued {
                    cookies: cookies.into(),
                    sealed_at: now,
                }),
            });
            s.opened
                .borrow_mut()
                .insert(&key, entry, auth.oidc.now_millis() + OPENED_TTL_MS);
        }
    } else if !refreshed && still_good(auth, s, &data, now) {
        // No await happened since `open_session`, so the scratch still holds this cookie.
        let key = s.scratch.borrow();
        let entry = Rc::new(OpenedSession {
            data,
            headers,
            reissued: None,
        });
        s.opened
            .borrow_mut()
            .insert(&key, entry, auth.oidc.now_millis() + OPENED_TTL_MS);
    }
    Ok(Step::Continue)
}

/// The Set-Cookie values sealed for this very cookie less than `touch_threshold` ago, when the
/// presented session is otherwise still good: the same answer a fresh re-seal would give, give
/// or take the seconds since. The presented cookie's own timeouts still apply.
fn reusable_reissue<'a>(
    auth: &RouteAuth,
    s: &SessionState,
    open: &'a OpenedSession,
    now: u64,
) -> Option<&'a [String]> {
    let r = open.reissued.as_ref()?;
    let conf = conf(auth);
    let fresh = now.saturating_sub(r.sealed_at) < s.codec.timeouts().touch_threshold.max(1);
    (fresh
        && !auth.oidc.is_revoked(&open.data)
        && s.codec.check_expiry(&open.data, now).is_ok()
        && flow::access_token_state(&open.data, now, conf.access_token_expires_leeway)
            == TokenState::Fresh
        && !flow::needs_reauthentication(&open.data, now, conf.refresh_session_interval))
    .then_some(&r.cookies[..])
}

fn check_session_claims(auth: &RouteAuth, data: &SessionData) -> Result<(), Error> {
    let conf = conf(auth);
    if !conf.required_scopes.is_empty() {
        // Granted scopes: the access token's claim or the token response (kept at login and
        // refresh), else the ID token's `scope` claim, as APISIX. Unknown grants are refused,
        // never taken as granted.
        let id_token_scope = || {
            data.id_token_claims.as_ref().and_then(|c| {
                serde_json::from_str::<serde_json::Value>(c.get())
                    .ok()?
                    .get("scope")?
                    .as_str()
                    .map(str::to_owned)
            })
        };
        let have = data
            .scope
            .clone()
            .or_else(id_token_scope)
            .unwrap_or_default();
        let missing: Vec<&str> = conf
            .required_scopes
            .iter()
            .map(String::as_str)
            .filter(|w| !have.split_ascii_whitespace().any(|h| h == *w))
            .collect();
        if !missing.is_empty() {
            return Err(plain(
                403,
                "insufficient_scope",
                &format!("required scopes {} not present", missing.join(" ")),
                Vec::new(),
            ));
        }
    }
    if let Some(schema) = &auth.route.schema {
        let v = serde_json::json!({
            "user": data.user.as_ref().and_then(|u| serde_json::from_str::<serde_json::Value>(u.get()).ok()),
            "access_token": data.access_token,
            "id_token": data.id_token_claims.as_ref().and_then(|u| serde_json::from_str::<serde_json::Value>(u.get()).ok()),
        });
        if let Err(e) = schema.validate(&v) {
            let why = format!("claims do not match claim_schema: {e}");
            // APISIX answers a session that fails claim_schema as an invalid token, challenge
            // included; the description is made safe for a quoted header parameter.
            let quoted: String = why
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
                "{}, error=\"invalid_token\", error_description=\"{quoted}\"",
                auth.route.challenge
            );
            return Err(plain(
                401,
                "invalid_session",
                &why,
                vec![("WWW-Authenticate".into(), www)],
            ));
        }
    }
    Ok(())
}

/// The upstream identity headers of a session, computed once per opened cookie.
struct SessionHeaders {
    headers: Vec<(&'static str, Rc<str>)>,
    /// The access token goes in `Authorization`, replacing the client's.
    strip_authorization: bool,
}

fn session_headers(auth: &RouteAuth, data: &SessionData) -> SessionHeaders {
    let conf = conf(auth);
    let b64 = |s: &str| Rc::from(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
    let mut headers = Vec::with_capacity(5);
    let mut strip_authorization = false;
    if conf.set_access_token_header
        && let Some(at) = &data.access_token
    {
        if conf.access_token_in_authorization_header {
            strip_authorization = true;
            headers.push(("Authorization", Rc::from(format!("Bearer {at}"))));
        } else {
            headers.push(("X-Access-Token", Rc::from(at.as_str())));
        }
    }
    if conf.set_id_token_header
        && let Some(claims) = &data.id_token_claims
    {
        headers.push(("X-ID-Token", b64(claims.get())));
    }
    if conf.set_userinfo_header
        && let Some(user) = &data.user
    {
        headers.push(("X-Userinfo", b64(user.get())));
    }
    if conf.set_refresh_token_header
        && let Some(rt) = &data.refresh_token
    {
        headers.push(("X-Refresh-Token", Rc::from(rt.as_str())));
    }
    if conf.set_raw_id_token_header
        && let Some(t) = &data.id_token
    {
        headers.push(("X-Raw-ID-Token", Rc::from(t.as_str())));
    }
    SessionHeaders {
        headers,
        strip_authorization,
    }
}

fn apply_session_headers(c: &mut Ctx<'_>, h: &SessionHeaders) {
    if h.strip_authorization {
        c.outcome().strip_authorization = true;
    }
    for (name, value) in &h.headers {
        c.outcome()
            .upstream_headers
            .push((name, HeaderValue::Shared(value.clone())));
    }
}

/// A session cookie this shard opened and found good: later requests with the same cookie bytes
/// skip decryption, parsing and header encoding (the timeouts, revocations and token expiry are
/// still checked on every request).
pub struct OpenedSession {
    data: SessionData,
    headers: SessionHeaders,
    /// Set when this cookie was due for re-issue: what was sent back for it.
    reissued: Option<Reissued>,
}

struct Reissued {
    cookies: Rc<[String]>,
    sealed_at: u64,
}

/// How long an opened session is remembered (it is re-checked on every hit anyway).
const OPENED_TTL_MS: u64 = 30_000;

/// The cheap per-request checks a remembered session must still pass to be used as is.
fn still_good(auth: &RouteAuth, s: &SessionState, data: &SessionData, now: u64) -> bool {
    let conf = conf(auth);
    !auth.oidc.is_revoked(data)
        && s.codec.check_expiry(data, now).is_ok()
        && !s.codec.needs_reissue(data, now)
        && flow::access_token_state(data, now, conf.access_token_expires_leeway)
            == TokenState::Fresh
        && !flow::needs_reauthentication(data, now, conf.refresh_session_interval)
}

enum RefreshFail {
    /// The IdP refused the refresh token (RFC 6749 5.2): the session is over.
    Fatal(String),
    /// Network or 5xx: try again on a later request.
    Transient(String),
}

/// One refresh per refresh token across every shard (single-flight in the provider actor); the
/// answer is kept for a grace period so requests still carrying the old cookie get the same new
/// tokens instead of redeeming a rotated refresh token again.
async fn refresh(auth: &RouteAuth, data: &mut SessionData, now: u64) -> Result<(), RefreshFail> {
    let conf = conf(auth);
    let meta = provider_metadata(auth).map_err(|e| RefreshFail::Transient(e.to_string()))?;
    let endpoint = meta
        .token_endpoint
        .clone()
        .ok_or_else(|| RefreshFail::Transient("no token_endpoint".into()))?;
    let Some(rt) = data.refresh_token.clone() else {
        return Err(RefreshFail::Fatal("no refresh token".into()));
    };
    let form = flow::refresh_request_form(&rt, Some(&conf.scope));
    // With DPoP the refresh carries a proof by the same key, so the new tokens are bound to it
    // too (and a public client's refresh token, bound at issue, is usable at all).
    let resp = dpop_idp_call(auth, now, None, || {
        token_call(
            auth,
            &endpoint,
            format!("refresh\n{rt}"),
            form.clone(),
            Some(REFRESH_GRACE),
            now,
        )
    })
    .await
    .map_err(|e| RefreshFail::Transient(e.to_string()))?;
    let dpop = auth.route.dpop_signer.is_some();
    match TokenResponse::parse_with(resp.status, &resp.body, dpop) {
        Ok(tokens) => {
            if let Some(raw) = &tokens.id_token {
                // A refreshed ID token must still be ours and signed; the nonce is not repeated.
                if let Ok(payload) = verify_id_token(auth, raw).await {
                    let rules = IdTokenRules {
                        issuer: &meta.issuer,
                        client_id: &conf.client_id,
                        nonce: None,
                        leeway: conf.iat_slack,
                        max_age: None,
                    };
                    if flow::check_id_token_claims(&payload, &rules, now).is_ok() {
                        data.id_token_claims =
                            RawValue::from_string(String::from_utf8_lossy(&payload).into_owned())
                                .ok();
                        if data.id_token.is_some() {
                            data.id_token = Some(raw.clone());
                        }
                    }
                }
            }
            tokens.apply_to(data, now, conf.access_token_expires_in);
            data.version = data.version.wrapping_add(1);
            Ok(())
        }
        Err(e) if e.is_fatal() => Err(RefreshFail::Fatal(e.to_string())),
        Err(e) => Err(RefreshFail::Transient(e.to_string())),
    }
}

async fn logout(auth: &RouteAuth, s: &SessionState, c: &mut Ctx<'_>, now: u64) -> PhaseResult {
    if let Some(why) = cross_site(c) {
        tracing::warn!(reason = %why, "cross-site logout refused; the session stays");
        return Err(plain(
            403,
            "cross_site_logout",
            &format!("logout must come from this site ({why})"),
            vec![("Cache-Control".into(), "no-store".into())],
        ));
    }
    let conf = conf(auth);
    let data = open_session(auth, s, c, now).ok().flatten();
    let mut cookies = Vec::new();
    let present = session::present_chunks(cookie_values(c), &s.cookie_name);
    session::clear_cookie_headers(&s.cookie_name, present, &s.attrs, &mut cookies);
    let meta = provider_metadata(auth).ok();
    if conf.revoke_tokens_on_logout
        && let (Some(d), Some(ep)) = (
            &data,
            meta.as_ref().and_then(|m| m.revocation_endpoint.clone()),
        )
    {
        for (token, hint) in [
            (&d.refresh_token, "refresh_token"),
            (&d.access_token, "access_token"),
        ] {
            if let Some(t) = token {
                let form = vec![
                    ("token".to_string(), t.clone()),
                    ("token_type_hint".to_string(), hint.to_string()),
                ];
                if let Ok(call) = token_call(auth, &ep, format!("revoke\n{t}"), form, None, now) {
                    match idp_call(auth, call).await {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            tracing::warn!(status = r.status, hint, "token revocation refused")
                        }
                        Err(_) => tracing::warn!(hint, "token revocation failed"),
                    }
                }
            }
        }
    }
    let hint = data.as_ref().and_then(|d| d.id_token.as_deref());
    let end_session = meta
        .as_ref()
        .and_then(|m| m.end_session_endpoint.as_deref());
    let action = flow::logout_redirect(end_session, hint, conf.post_logout_redirect_uri.as_deref());
    tracing::info!(sub = data.as_ref().and_then(|d| d.sub.as_deref()), "logout");
    let mut headers: Vec<(String, String)> = cookies
        .into_iter()
        .map(|v| ("Set-Cookie".to_string(), v))
        .collect();
    headers.push(("Cache-Control".into(), "no-store".into()));
    match action {
        LogoutAction::RedirectTo(url) => {
            headers.push(("Location".into(), url));
            Ok(Step::Respond(PluginResponse {
                status: 302,
                headers,
                content_type: "text/plain",
                body: b"logged out\n".to_vec(),
                code: "logout",
                reason: "logout".into(),
            }))
        }
        LogoutAction::LoggedOutPage => Ok(Step::Respond(PluginResponse {
            status: 200,
            headers,
            content_type: "text/html; charset=utf-8",
            body: b"<!doctype html><html><head><title>Logged out</title></head><body><p>You have been logged out.</p></body></html>\n".to_vec(),
            code: "logout",
            reason: "logout".into(),
        })),
    }
}

/// Why a logout request came from another site, if it did: any page could otherwise log a user
/// out with an image tag (logout CSRF). Browsers say where a request came from in
/// `Sec-Fetch-Site` (`cross-site` is refused; `same-origin`, `same-site` and `none`, a typed URL or
/// bookmark, pass) and in `Origin` (which must name this request's own host). A request with neither
/// (a plain link click in an older browser, curl) passes, as a user clicking "log out" must.
fn cross_site(c: &Ctx<'_>) -> Option<String> {
    for site in c.head().header_values(c.buf(), "sec-fetch-site") {
        if site.trim_ascii().eq_ignore_ascii_case(b"cross-site") {
            return Some("Sec-Fetch-Site: cross-site".into());
        }
    }
    let host = c.head().host.map(|h| h.of(c.buf())).unwrap_or_default();
    for origin in c.head().header_values(c.buf(), "origin") {
        let origin = origin.trim_ascii();
        // `scheme://host[:port]`; the scheme is not compared because TLS may end in front of us.
        let authority = origin
            .windows(3)
            .position(|w| w == b"://")
            .map(|i| &origin[i + 3..]);
        if authority.is_none_or(|a| a.is_empty() || !a.eq_ignore_ascii_case(host)) {
            return Some(format!(
                "Origin {} is not this route's origin",
                String::from_utf8_lossy(origin)
            ));
        }
    }
    None
}

/// OIDC Back-Channel Logout 1.0: the IdP POSTs `logout_token`; every session with its sid (or
/// sub) is refused from now on, on every shard, until it would have expired anyway.
async fn backchannel_logout(
    auth: &RouteAuth,
    _s: &SessionState,
    c: &mut Ctx<'_>,
    now: u64,
) -> PhaseResult {
    let conf = conf(auth);
    let body = c
        .read_body(64 * 1024)
        .await
        .map_err(|why| plain(400, "invalid_request", why, Vec::new()))?
        .to_vec();
    let token = form_value(&body, "logout_token")
        .ok_or_else(|| plain(400, "invalid_request", "missing logout_token", Vec::new()))?;
    let meta = provider_metadata(auth)?;
    let payload = match verify_id_token(auth, &token).await {
        Ok(p) => p,
        Err(_) => {
            return Err(plain(
                400,
                "invalid_request",
                "logout_token signature is not valid",
                Vec::new(),
            ));
        }
    };
    let subject = flow::check_logout_token_claims(
        &payload,
        &meta.issuer,
        &conf.client_id,
        now,
        conf.iat_slack,
    )
    .map_err(|e| plain(400, "invalid_request", &e.to_string(), Vec::new()))?;
    // The longest a session sealed before now can live: `absolute_timeout`. Without one, an
    // active session never ends by itself, so neither may its revocation (the set's capacity
    // bounds it).
    let until = match conf.session.absolute_timeout {
        0 => u64::MAX,
        t => now.saturating_add(t),
    };
    let (sid, sub) = (subject.sid.clone(), subject.sub.clone());
    if let Err(e) = auth
        .oidc
        .shared()
        .revoke(&meta.issuer, subject, until)
        .await
    {
        tracing::error!(
            sid = sid.as_deref(),
            sub = sub.as_deref(),
            error = %e,
            "back-channel logout could not be recorded"
        );
        return Err(Error::Unavailable(
            "back-channel logout could not be recorded",
        ));
    }
    tracing::info!(
        sid = sid.as_deref(),
        sub = sub.as_deref(),
        "back-channel logout: sessions revoked on every shard"
    );
    Ok(Step::Respond(PluginResponse {
        status: 200,
        headers: vec![("Cache-Control".into(), "no-store".into())],
        content_type: "text/plain",
        body: Vec::new(),
        code: "backchannel_logout",
        reason: "back-channel logout".into(),
    }))
}

fn form_value(body: &[u8], name: &str) -> Option<String> {
    body.split(|b| *b == b'&').find_map(|kv| {
        let (k, v) = match kv.iter().position(|b| *b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        (k == name.as_bytes()).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < v.len() => {
                let h = std::str::from_utf8(&v[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Attaches any Set-Cookie (cleared broken cookies) already collected to a response.
fn response_cookies(c: &mut Ctx<'_>, mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers.append(&mut c.outcome().response_headers);
    headers
}

fn plain(status: u16, code: &'static str, why: &str, headers: Vec<(String, String)>) -> Error {
    let body = serde_json::json!({ "error": code, "error_description": why }).to_string() + "\n";
    Error::Plugin(PluginResponse {
        status,
        headers,
        content_type: "application/json",
        body: body.into_bytes(),
        code,
        reason: why.to_string(),
    })
}

/// A flow failure as a helpful 4xx page (never a 500), with the likely causes spelled out.
fn flow_page(e: FlowError) -> Error {
    let status = match &e {
        FlowError::TokenEndpointHttp { .. } | FlowError::ParEndpoint { .. } => 502,
        // The IdP refused the gateway's own credentials: nothing the browser can fix, so the
        // same answer as a refused PAR push rather than a 4xx blaming the request.
        _ if e.is_client_auth_refusal() => 502,
        // What is left of a restarted login the IdP kept failing.
        FlowError::IdpError { error, .. } if error == "temporarily_unavailable" => 503,
        _ => 400,
    };
    let causes = e.likely_causes();
    let mut html = String::from(
        "<!doctype html><html><head><title>Login failed</title></head><body><h1>Login could not be completed</h1>",
    );
    html.push_str(&format!("<p>{}</p>", escape_html(&e.to_string())));
    if !causes.is_empty() {
        html.push_str("<p>Likely causes:</p><ul>");
        for cause in causes {
            html.push_str(&format!("<li>{}</li>", escape_html(cause)));
        }
        html.push_str("</ul>");
    }
    html.push_str("<p><a href=\"/\">Start again</a></p></body></html>\n");
    tracing::warn!(error = %e, likely_causes = %causes.join("; "), "login flow failed");
    Error::Plugin(PluginResponse {
        status,
        headers: vec![("Cache-Control".into(), "no-store".into())],
        content_type: "text/html; charset=utf-8",
        body: html.into_bytes(),
        code: "login_failed",
        reason: e.to_string(),
    })
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
