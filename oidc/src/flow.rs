//! Authorization code flow with PKCE, as pieces the gateway drives: login state, the authorize URL,
//! the callback, token endpoint forms and responses, ID token claim checks, refresh policy, logout
//! (RP-initiated and back-channel) and a shard-local revocation list.
//!
//! Each login keeps its `state`, `nonce` and PKCE verifier in its own short-lived sealed cookie
//! (`<session>_login_<first 8 chars of state>`), so several tabs logging in at once never overwrite
//! each other's state (APISIX #13712, oauth2-proxy #611).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::SecureRandom;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::session::{SessionCodec, SessionData, SessionError, login_cookie_prefix};

/// The `events` member a back-channel logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// lua-resty-openidc's `authorization_state_expires_in` / APISIX default.
pub const DEFAULT_LOGIN_MAX_AGE: u64 = 300;
/// lua-resty-openidc's `authorization_state_max_number`.
pub const DEFAULT_LOGIN_MAX_COUNT: usize = 10;
const LOGIN_NAME_STATE_CHARS: usize = 8;

/// Why a step of the flow failed; precise enough for a helpful 4xx page and a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    #[error("no login state found for this callback")]
    NoLoginState,
    #[error("login state is older than {max_age} s (started at {created_at})")]
    LoginExpired { created_at: u64, max_age: u64 },
    #[error("state parameter does not match the login state")]
    StateMismatch,
    #[error("callback is missing the {0} parameter")]
    MissingParam(&'static str),
    #[error("malformed callback: {0}")]
    MalformedCallback(&'static str),
    #[error(
        "callback iss {got:?} is not the expected issuer {expected:?} (RFC 9207 mix-up defence)"
    )]
    IssuerMismatch { expected: String, got: String },
    #[error("identity provider returned error {error:?}{}", fmt_description(.description))]
    IdpError {
        error: String,
        description: Option<String>,
    },
    #[error("token endpoint returned error {error:?}{} (HTTP {status})", fmt_description(.description))]
    TokenEndpoint {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("token endpoint answered HTTP {status} without an OAuth error body")]
    TokenEndpointHttp { status: u16 },
    #[error("pushed authorization request endpoint returned error {error:?}{} (HTTP {status})", fmt_description(.description))]
    ParEndpoint {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("malformed token response: {0}")]
    TokenResponse(String),
    #[error("ID token rejected: {0}")]
    IdToken(#[from] ClaimError),
    #[error("logout token rejected: {0}")]
    LogoutToken(ClaimError),
    #[error("login state cookie: {0}")]
    Session(#[from] SessionError),
    #[error("random number generator failed")]
    Rng,
}

fn fmt_description(d: &Option<String>) -> String {
    d.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl FlowError {
    /// Per RFC 6749 section 5.2 a refresh that fails with these codes will never succeed: drop the
    /// session. Everything else (5xx, `temporarily_unavailable`, network, malformed body) is transient:
    /// keep the session and retry later.
    pub fn is_fatal(&self) -> bool {
        match self {
            FlowError::TokenEndpoint { error, .. } => matches!(
                error.as_str(),
                "invalid_grant"
                    | "invalid_client"
                    | "unauthorized_client"
                    | "unsupported_grant_type"
                    | "invalid_scope"
                    | "invalid_request"
            ),
            FlowError::TokenEndpointHttp { status } => matches!(status, 400 | 401 | 403),
            FlowError::IdToken(_) => true,
            _ => false,
        }
    }

    /// The token endpoint refused the gateway's client authentication (RFC 6749 section 5.2).
    pub fn is_client_auth_refusal(&self) -> bool {
        matches!(self, FlowError::TokenEndpoint { error, .. }
            if error == "invalid_client" || error == "unauthorized_client")
    }

    /// The usual causes, for the error page and log line of a callback that found no login state
    /// (APISIX's most reported problem: "no session state found").
    pub fn likely_causes(&self) -> &'static [&'static str] {
        match self {
            FlowError::NoLoginState | FlowError::Session(_) => &[
                "redirect_uri equals the protected route's own URI, so a plain request to it is taken for a callback",
                "the login-state cookie was dropped: SameSite=Lax/Strict with response_mode=form_post, a Secure cookie over plain HTTP, or a cookie Path/Domain not covering redirect_uri",
                "the session secret differs between gateway nodes, or was rotated without keeping the old one in secret_fallbacks",
                "the login took longer than authorization_state_expires_in, or the callback URL was reloaded/bookmarked after it was used",
            ],
            FlowError::StateMismatch => &[
                "the callback belongs to another login (an old tab, a reloaded or bookmarked callback URL)",
                "a cross-site request forgery attempt",
            ],
            FlowError::LoginExpired { .. } => {
                &["the user took longer than authorization_state_expires_in to log in"]
            }
            FlowError::TokenEndpoint { error, .. } if error == "invalid_client" => &[
                "client_id or client_secret is not what the IdP has registered",
                "token_endpoint_auth_method is not the one the IdP expects for this client",
                "private_key_jwt: the IdP has another public key registered for this client than the one of client_rsa_private_key, or does not allow client_jwt_assertion_alg for it",
            ],
            FlowError::IssuerMismatch { .. } => &[
                "discovery points at a different issuer than the one that answered (mix-up attack or misconfigured issuer URL)",
            ],
            _ => &[],
        }
    }
}

/// What an ID token or logout token failed on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimError {
    #[error("payload is not a JSON object: {0}")]
    Malformed(String),
    #[error("missing claim {0}")]
    Missing(&'static str),
    #[error("iss {got:?} is not {expected:?}")]
    Issuer { expected: String, got: String },
    #[error("aud does not contain client_id {0:?}")]
    Audience(String),
    #[error("several audiences but no azp")]
    AzpMissing,
    #[error("azp {got:?} is not client_id {expected:?}")]
    Azp { expected: String, got: String },
    #[error("nonce does not match the login")]
    Nonce,
    #[error("expired at {exp} (now {now}, leeway {leeway})")]
    Expired { exp: u64, now: u64, leeway: u64 },
    #[error("issued in the future: iat {iat}, now {now}")]
    IssuedInFuture { iat: u64, now: u64 },
    #[error("authentication at {auth_time} is older than max_age {max_age}")]
    AuthTooOld { auth_time: u64, max_age: u64 },
    #[error("events does not carry the back-channel logout event")]
    NotLogoutEvent,
    #[error("a logout token must not carry a nonce")]
    NonceInLogoutToken,
    #[error("a logout token needs sid or sub")]
    NoSubject,
}

// ---------------------------------------------------------------------------------------------
// Login state and the authorize URL

/// One login in flight, sealed into its own cookie until the callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub code_verifier: Option<String>,
    #[serde(rename = "o")]
    pub original_url: String,
    #[serde(rename = "c")]
    pub created_at: u64,
    #[serde(rename = "r")]
    pub redirect_uri: String,
}

impl LoginState {
    /// The cookie this login lives in: `<session>_login_<first 8 chars of state>`.
    pub fn cookie_name(&self, session_name: &str) -> Option<String> {
        login_cookie_name(session_name, &self.state)
    }

    /// Seals this login into one cookie value bound to `cookie_name`.
    pub fn seal(
        &self,
        codec: &SessionCodec,
        cookie_name: &str,
        rng: &dyn SecureRandom,
    ) -> Result<String, FlowError> {
        let json = serde_json::to_vec(self).map_err(SessionError::from)?;
        Ok(codec.seal_bytes(&json, cookie_name, rng)?)
    }

    /// Opens a login cookie value; expiry is checked by [`check_callback`].
    pub fn open(
        codec: &SessionCodec,
        value: &[u8],
        cookie_name: &str,
        scratch: &mut Vec<u8>,
    ) -> Result<LoginState, FlowError> {
        let json = codec.open_bytes(value, cookie_name, scratch)?;
        Ok(serde_json::from_slice(json).map_err(SessionError::from)?)
    }
}

/// The login cookie for callback `state`, or `None` when `state` cannot be one of ours (too short,
/// or characters outside base64url): such a callback has no login state by construction.
pub fn login_cookie_name(session_name: &str, state: &str) -> Option<String> {
    let head = state.get(..LOGIN_NAME_STATE_CHARS)?;
    if !head
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(format!("{}{head}", login_cookie_prefix(session_name)))
}

/// The login cookies (name, value) a request carries for `session_name`.
pub fn login_cookies<'a>(
    cookie_header_values: impl Iterator<Item = &'a [u8]>,
    session_name: &str,
) -> Vec<(&'a [u8], &'a [u8])> {
    let prefix = login_cookie_prefix(session_name);
    let mut found = Vec::new();
    for header in cookie_header_values {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = pair[..eq].trim_ascii();
            if name.starts_with(prefix.as_bytes()) {
                found.push((name, pair[eq + 1..].trim_ascii()));
            }
        }
    }
    found
}

/// Which existing login cookies to expire before adding a new login: those older than `max_age`, and
/// the oldest beyond `max_count - 1` so that, with the new one, at most `max_count` remain. `existing`
/// is (cookie name, `created_at`); a cookie that no longer opens should be passed with `created_at` 0.
/// Returns indices into `existing`.
pub fn prune(existing: &[(&str, u64)], now: u64, max_age: u64, max_count: usize) -> Vec<usize> {
    let mut live: Vec<usize> = Vec::new();
    let mut expire: Vec<usize> = Vec::new();
    for (i, (_, created_at)) in existing.iter().enumerate() {
        if now.saturating_sub(*created_at) >= max_age || *created_at > now.saturating_add(max_age) {
            expire.push(i);
        } else {
            live.push(i);
        }
    }
    let keep = max_count.saturating_sub(1);
    if live.len() > keep {
        // Newest first; ties broken by position so the result is deterministic.
        live.sort_by(|&a, &b| existing[b].1.cmp(&existing[a].1).then(a.cmp(&b)));
        expire.extend(live.drain(keep..));
    }
    expire.sort_unstable();
    expire
}

/// Parameters of one authorization request.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeParams<'a> {
    pub authorization_endpoint: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub use_nonce: bool,
    pub use_pkce: bool,
    /// APISIX `authorization_params`: override defaults (scope, prompt, ...) or add parameters. The
    /// parameters that bind the callback to this login (`response_type`, `client_id`, `redirect_uri`,
    /// `state`, `nonce`, `code_challenge`, `code_challenge_method`) cannot be overridden.
    pub extra: &'a [(String, String)],
    pub prompt: Option<&'a str>,
}

const PROTECTED_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// Starts a login: the URL to redirect the browser to, and the state to seal into its login cookie.
///
/// `state` and `nonce` are 16 random bytes, the PKCE verifier 32, all base64url.
pub fn start_login(
    params: &AuthorizeParams<'_>,
    original_url: &str,
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<(String, LoginState), FlowError> {
    let (query, login) = authorization_request(params, original_url, now, rng)?;
    let url = endpoint_with_query(
        params.authorization_endpoint,
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    Ok((url, login))
}

/// The authorization request's parameters (in the order they are sent) and the login state to
/// seal. [`start_login`] puts them in the authorization URL; with PAR (RFC 9126) they are POSTed
/// to the PAR endpoint instead (see [`par_form`]).
pub fn authorization_request(
    params: &AuthorizeParams<'_>,
    original_url: &str,
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<(Vec<(String, String)>, LoginState), FlowError> {
    let state = random_b64(rng, 16)?;
    let nonce = if params.use_nonce {
        Some(random_b64(rng, 16)?)
    } else {
        None
    };
    let code_verifier = if params.use_pkce {
        Some(random_b64(rng, 32)?)
    } else {
        None
    };
    let challenge = code_verifier.as_deref().map(pkce_challenge);

    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut query: Vec<(String, String)> = vec![
        pair("response_type", "code"),
        pair("client_id", params.client_id),
        pair("redirect_uri", params.redirect_uri),
        pair("scope", params.scope),
        pair("state", &state),
    ];
    if let Some(n) = &nonce {
        query.push(pair("nonce", n));
    }
    if let Some(c) = &challenge {
        query.push(pair("code_challenge", c));
        query.push(pair("code_challenge_method", "S256"));
    }
    if let Some(p) = params.prompt {
        query.push(pair("prompt", p));
    }
    for (k, v) in params.extra {
        if PROTECTED_PARAMS.contains(&k.as_str()) {
            continue;
        }
        match query.iter_mut().find(|(qk, _)| qk == k) {
            Some(slot) => slot.1.clone_from(v),
            None => query.push((k.clone(), v.clone())),
        }
    }
    let login = LoginState {
        state,
        nonce,
        code_verifier,
        original_url: original_url.to_owned(),
        created_at: now,
        redirect_uri: params.redirect_uri.to_owned(),
    };
    Ok((query, login))
}

/// `endpoint` with `pairs` appended to its query (any fragment dropped).
fn endpoint_with_query<'a>(
    endpoint: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let endpoint = endpoint.split_once('#').map_or(endpoint, |(e, _)| e);
    let mut url = String::with_capacity(endpoint.len() + 256);
    url.push_str(endpoint);
    match endpoint.find('?') {
        None => url.push('?'),
        Some(_) if endpoint.ends_with('?') || endpoint.ends_with('&') => {}
        Some(_) => url.push('&'),
    }
    append_form(&mut url, pairs);
    url
}

/// RFC 9126 section 2.1: the PAR request body is the authorization request's parameters. The
/// client authentication added to it next names the client itself (`client_id` in the form for
/// every method but `client_secret_basic`); the parameter is then left out here so it is not
/// sent twice (which the IdP must refuse, RFC 6749 section 3.1).
pub fn par_form(query: &[(String, String)], auth_adds_client_id: bool) -> Vec<(String, String)> {
    query
        .iter()
        .filter(|(k, _)| !(auth_adds_client_id && k == "client_id"))
        .cloned()
        .collect()
}

/// RFC 9126 section 2.4: the authorization request after a successful push carries only
/// `client_id` and `request_uri`.
pub fn par_authorize_url(
    authorization_endpoint: &str,
    client_id: &str,
    request_uri: &str,
) -> String {
    endpoint_with_query(
        authorization_endpoint,
        [("client_id", client_id), ("request_uri", request_uri)].into_iter(),
    )
}

/// The PAR endpoint's answer (RFC 9126 section 2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParResponse {
    pub request_uri: String,
    pub expires_in: Option<u64>,
}

impl ParResponse {
    /// 201 (or 200, which some servers send) with a JSON `request_uri`; an OAuth error body
    /// (section 2.3) or anything else is a [`FlowError::ParEndpoint`].
    pub fn parse(status: u16, body: &[u8]) -> Result<ParResponse, FlowError> {
        #[derive(Deserialize)]
        struct Ok {
            request_uri: String,
            #[serde(default, deserialize_with = "de_opt_u64")]
            expires_in: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Err {
            error: String,
            error_description: Option<String>,
        }
        if status == 200 || status == 201 {
            return match serde_json::from_slice::<Ok>(body) {
                Ok(ok) if !ok.request_uri.is_empty() => Ok(ParResponse {
                    request_uri: ok.request_uri,
                    expires_in: ok.expires_in,
                }),
                _ => Err(FlowError::ParEndpoint {
                    status,
                    error: "invalid_response".to_owned(),
                    description: Some("no request_uri in the answer".to_owned()),
                }),
            };
        }
        let (error, description) = match serde_json::from_slice::<Err>(body) {
            Ok(e) => (e.error, e.error_description),
            Err(_) => ("http_error".to_owned(), None),
        };
        Err(FlowError::ParEndpoint {
            status,
            error,
            description,
        })
    }
}

/// RFC 7636 S256: base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

fn random_b64(rng: &dyn SecureRandom, n: usize) -> Result<String, FlowError> {
    let mut buf = [0u8; 32];
    let buf = buf.get_mut(..n).ok_or(FlowError::Rng)?;
    rng.fill(buf).map_err(|_| FlowError::Rng)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// Appends `k=v&k=v` with `application/x-www-form-urlencoded` escaping (spaces as `%20`, which
/// every form and query parser reads).
pub fn append_form<'a>(out: &mut String, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, out);
        out.push('=');
        percent_encode(v, out);
    }
}

/// A token endpoint request body from [`token_request_form`] or [`refresh_request_form`].
pub fn encode_form(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    append_form(
        &mut out,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    out
}

fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Callback

/// The parameters of a request to the redirect_uri.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Parses the callback query (`code`, `state`, `iss`, `error`, `error_description`), percent-decoding.
/// A parameter sent twice is rejected (RFC 6749 section 3.1: "MUST NOT be included more than once"),
/// as is invalid percent-encoding or UTF-8. Other parameters are ignored.
pub fn parse_callback(query: &[u8]) -> Result<Callback, FlowError> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    let mut cb = Callback::default();
    for pair in query.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let slot = match k {
            b"code" => &mut cb.code,
            b"state" => &mut cb.state,
            b"iss" => &mut cb.iss,
            b"error" => &mut cb.error,
            b"error_description" => &mut cb.error_description,
            _ => continue,
        };
        if slot.is_some() {
            return Err(FlowError::MalformedCallback("parameter repeated"));
        }
        *slot = Some(percent_decode(v)?);
    }
    Ok(cb)
}

fn percent_decode(v: &[u8]) -> Result<String, FlowError> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = v.get(i + 1).and_then(|&h| char::from(h).to_digit(16));
                let lo = v.get(i + 2).and_then(|&l| char::from(l).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FlowError::MalformedCallback("bad percent-encoding"));
                };
                // Two hex digits always fit a byte.
                out.push(
                    u8::try_from(hi * 16 + lo)
                        .map_err(|_| FlowError::MalformedCallback("bad percent-encoding"))?,
                );
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FlowError::MalformedCallback("not UTF-8"))
}

/// Checks a callback against the login it claims to finish: IdP `error` first (a denied consent is
/// the common case), then `code`/`state` presence, login age, `state` (constant time) and RFC 9207
/// `iss` when the IdP sent one and the issuer is known.
pub fn check_callback(
    cb: &Callback,
    login: &LoginState,
    expected_issuer: Option<&str>,
    now: u64,
    max_age: u64,
) -> Result<(), FlowError> {
    if let Some(error) = &cb.error {
        return Err(FlowError::IdpError {
            error: error.clone(),
            description: cb.error_description.clone(),
        });
    }
    let state = cb
        .state
        .as_deref()
        .ok_or(FlowError::MissingParam("state"))?;
    if cb.code.as_deref().is_none_or(str::is_empty) {
        return Err(FlowError::MissingParam("code"));
    }
    if now.saturating_sub(login.created_at) >= max_age {
        return Err(FlowError::LoginExpired {
            created_at: login.created_at,
            max_age,
        });
    }
    if !constant_time_eq(state.as_bytes(), login.state.as_bytes()) {
        return Err(FlowError::StateMismatch);
    }
    if let (Some(got), Some(expected)) = (cb.iss.as_deref(), expected_issuer)
        && got != expected
    {
        return Err(FlowError::IssuerMismatch {
            expected: expected.to_owned(),
            got: got.to_owned(),
        });
    }
    Ok(())
}

/// Whether `login` is the live login that callback `cb` names: the same `state` (compared in
/// constant time) and not older than `max_age`.
pub fn callback_names_login(cb: &Callback, login: &LoginState, now: u64, max_age: u64) -> bool {
    cb.state
        .as_deref()
        .is_some_and(|s| constant_time_eq(s.as_bytes(), login.state.as_bytes()))
        && now.saturating_sub(login.created_at) < max_age
}

// ---------------------------------------------------------------------------------------------
// Restarting a failed login (APISIX's openid-connect)

/// APISIX's `MAX_AUTH_FLOW_RESTARTS`: consecutive restarts of the login from failed callbacks
/// before the failure is shown, so an IdP that keeps failing cannot send a browser round forever.
pub const MAX_AUTH_FLOW_RESTARTS: u8 = 3;

/// Why a failed callback sends the browser back to where its login started instead of to an
/// error page, as APISIX does: the browser is mid-navigation, and a fresh login usually works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// `error=temporarily_unavailable` for a login this browser started (Keycloak answers so
    /// after its own login session expired). Other IdP errors (`access_denied`, ...) are a
    /// deliberate outcome and are never retried.
    TemporarilyUnavailable,
    /// A code for a login this browser no longer holds or holds expired (a replayed, reloaded
    /// or pruned callback).
    StaleState,
}

impl RestartCause {
    pub fn describe(self) -> &'static str {
        match self {
            RestartCause::TemporarilyUnavailable => {
                "authorization callback reported a temporarily unavailable identity provider"
            }
            RestartCause::StaleState => "state mismatch (replayed or pruned callback)",
        }
    }
}

/// Whether `e`, the failure of callback `cb`, restarts the login. `names_own_login`: the login
/// cookie found for the callback's state is the very login it names ([`callback_names_login`]);
/// a forged `temporarily_unavailable` with a state this browser never had restarts nothing, so
/// it cannot spend the restart budget of a real login.
pub fn restart_cause(cb: &Callback, e: &FlowError, names_own_login: bool) -> Option<RestartCause> {
    match e {
        FlowError::IdpError { error, .. }
            if error == "temporarily_unavailable" && names_own_login =>
        {
            Some(RestartCause::TemporarilyUnavailable)
        }
        FlowError::NoLoginState | FlowError::StateMismatch | FlowError::LoginExpired { .. }
            if cb.error.is_none() && cb.code.as_deref().is_some_and(|c| !c.is_empty()) =>
        {
            Some(RestartCause::StaleState)
        }
        _ => None,
    }
}

/// The cookie counting consecutive restarts: `<session>_restarts`. It starts with the session
/// cookie's name, so it never reaches the upstream either.
pub fn restarts_cookie_name(session_name: &str) -> String {
    format!("{session_name}_restarts")
}

#[derive(Serialize, Deserialize)]
struct Restarts {
    #[serde(rename = "n")]
    count: u8,
}

/// Seals a restart count into a value for the cookie `cookie_name`; sealed so a client cannot
/// wind it back by accident or design.
pub fn seal_restarts(
    codec: &SessionCodec,
    cookie_name: &str,
    count: u8,
    rng: &dyn SecureRandom,
) -> Result<String, FlowError> {
    let json = serde_json::to_vec(&Restarts { count }).map_err(SessionError::from)?;
    Ok(codec.seal_bytes(&json, cookie_name, rng)?)
}

/// The restart count in a `<session>_restarts` value; one that does not open counts as the
/// whole budget spent (a forged or foreign counter must not buy more restarts).
pub fn open_restarts(codec: &SessionCodec, value: &[u8], cookie_name: &str) -> u8 {
    let mut scratch = Vec::new();
    codec
        .open_bytes(value, cookie_name, &mut scratch)
        .ok()
        .and_then(|json| serde_json::from_slice::<Restarts>(json).ok())
        .map_or(MAX_AUTH_FLOW_RESTARTS, |r| r.count)
}

/// Equality whose time depends only on the lengths (ring's helper is deprecated).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

/// The authorization_code grant body (client authentication is added by `client_auth`).
pub fn token_request_form(
    code: &str,
    redirect_uri: &str,
    code_verifier: Option<&str>,
) -> Vec<(String, String)> {
    let mut form = vec![
        ("grant_type".to_owned(), "authorization_code".to_owned()),
        ("code".to_owned(), code.to_owned()),
        ("redirect_uri".to_owned(), redirect_uri.to_owned()),
    ];
    if let Some(v) = code_verifier {
        form.push(("code_verifier".to_owned(), v.to_owned()));
    }
    form
}

/// The refresh_token grant body.
pub fn refresh_request_form(refresh_token: &str, scope: Option<&str>) -> Vec<(String, String)> {
    let mut form = vec![
        ("grant_type".to_owned(), "refresh_token".to_owned()),
        ("refresh_token".to_owned(), refresh_token.to_owned()),
    ];
    if let Some(s) = scope {
        form.push(("scope".to_owned(), s.to_owned()));
    }
    form
}

/// A successful token endpoint response (RFC 6749 section 5.1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    /// Some IdPs send it as a string ("3600"); both are accepted.
    #[serde(default, deserialize_with = "de_opt_u64")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenResponse {
    /// Parses a token endpoint answer: an OAuth error body (any status) becomes
    /// [`FlowError::TokenEndpoint`], another non-2xx [`FlowError::TokenEndpointHttp`].
    pub fn parse(status: u16, body: &[u8]) -> Result<TokenResponse, FlowError> {
        Self::parse_with(status, body, false)
    }

    /// [`TokenResponse::parse`] for a client that sent a DPoP proof: `token_type` may then be
    /// `DPoP` (RFC 9449 5) as well as `Bearer` (an IdP without DPoP support ignores the proof).
    pub fn parse_with(status: u16, body: &[u8], dpop: bool) -> Result<TokenResponse, FlowError> {
        if let Ok(e) = serde_json::from_slice::<OAuthErrorBody>(body) {
            return Err(FlowError::TokenEndpoint {
                status,
                error: e.error,
                description: e.error_description,
            });
        }
        if !(200..300).contains(&status) {
            return Err(FlowError::TokenEndpointHttp { status });
        }
        let t: TokenResponse =
            serde_json::from_slice(body).map_err(|e| FlowError::TokenResponse(e.to_string()))?;
        if t.access_token.is_empty() {
            return Err(FlowError::TokenResponse("empty access_token".to_owned()));
        }
        if let Some(tt) = &t.token_type
            && !tt.eq_ignore_ascii_case("bearer")
            && !(dpop && tt.eq_ignore_ascii_case("dpop"))
        {
            return Err(FlowError::TokenResponse(format!(
                "token_type {tt:?} is not Bearer"
            )));
        }
        Ok(t)
    }

    /// Whether the IdP bound the access token to our DPoP key.
    pub fn is_dpop(&self) -> bool {
        self.token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop"))
    }

    /// Stores these tokens in `session` at `now`. A refresh response without a new refresh token
    /// keeps the old one (RFC 6749 section 6); `default_expires_in` stands in for a missing
    /// `expires_in` (lua-resty-openidc: `access_token_expires_in`, 3600).
    pub fn apply_to(self, session: &mut SessionData, now: u64, default_expires_in: u64) {
        let expires_in = self.expires_in.unwrap_or(default_expires_in);
        session.access_token = Some(self.access_token);
        session.access_token_expires_at = Some(now.saturating_add(expires_in));
        if let Some(rt) = self.refresh_token {
            session.refresh_token = Some(rt);
        }
        // The granted scopes, as APISIX reads them for `required_scopes`: the access token's
        // `scope` claim when it is a JWT, else the token response's `scope`.
        if let Some(s) =
            jwt_scope(session.access_token.as_deref().unwrap_or_default()).or(self.scope)
        {
            session.scope = Some(s);
        }
        session.version = session.version.wrapping_add(1);
    }
}

/// The `scope` claim of a JWT access token (a space-separated string), read without checking the
/// signature: the token came straight from the token endpoint over the gateway's own connection,
/// which is what vouches for it here (as lua-resty-jwt's `load_jwt` in APISIX). An opaque token
/// has none.
pub fn jwt_scope(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(Deserialize)]
    struct Claims {
        scope: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Claims>(&json).ok()?.scope? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Whether the session's access token can be forwarded as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No expiry known, or more than `leeway` seconds left.
    Fresh,
    /// Still valid but within `leeway` of expiry: refresh now, the old token may still be used if the
    /// refresh fails transiently.
    NeedsRefresh,
    /// Past expiry: refresh (or re-authenticate) before forwarding anything.
    Expired,
}

pub fn access_token_state(session: &SessionData, now: u64, leeway: u64) -> TokenState {
    match session.access_token_expires_at {
        None => TokenState::Fresh,
        Some(exp) if now >= exp => TokenState::Expired,
        Some(exp) if now.saturating_add(leeway) >= exp => TokenState::NeedsRefresh,
        Some(_) => TokenState::Fresh,
    }
}

/// `refresh_session_interval`: whether to send the user through a `prompt=none` authorization.
pub fn needs_reauthentication(
    session: &SessionData,
    now: u64,
    refresh_session_interval: Option<u64>,
) -> bool {
    refresh_session_interval.is_some_and(|i| now >= session.authenticated_at.saturating_add(i))
}

// ---------------------------------------------------------------------------------------------
// ID token claims

/// What an ID token must satisfy (OIDC Core 3.1.3.7).
#[derive(Debug, Clone, Copy)]
pub struct IdTokenRules<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The login's nonce; `None` on refresh, where the IdP need not repeat it.
    pub nonce: Option<&'a str>,
    pub leeway: u64,
    /// The `max_age` the authorization request asked for; requires `auth_time`.
    pub max_age: Option<u64>,
}

/// Claims of a verified ID token the session keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTokenInfo {
    pub sub: String,
    pub sid: Option<String>,
    pub exp: u64,
    pub iat: u64,
    pub auth_time: Option<u64>,
}

#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sub: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    aud: Option<Audience<'a>>,
    #[serde(borrow, default)]
    azp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    nonce: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    jti: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    iat: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_u64")]
    auth_time: Option<u64>,
    #[serde(borrow, default)]
    events: Option<HashMap<Cow<'a, str>, &'a serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    fn contains(&self, id: &str) -> bool {
        match self {
            Audience::One(a) => a == id,
            Audience::Many(v) => v.iter().any(|a| a == id),
        }
    }

    fn len(&self) -> usize {
        match self {
            Audience::One(_) => 1,
            Audience::Many(v) => v.len(),
        }
    }
}

fn parse_claims(payload: &[u8]) -> Result<RawClaims<'_>, ClaimError> {
    serde_json::from_slice(payload).map_err(|e| ClaimError::Malformed(e.to_string()))
}

fn check_iss_aud(c: &RawClaims<'_>, issuer: &str, client_id: &str) -> Result<(), ClaimError> {
    let iss = c.iss.as_deref().ok_or(ClaimError::Missing("iss"))?;
    if iss != issuer {
        return Err(ClaimError::Issuer {
            expected: issuer.to_owned(),
            got: iss.to_owned(),
        });
    }
    let aud = c.aud.as_ref().ok_or(ClaimError::Missing("aud"))?;
    if !aud.contains(client_id) {
        return Err(ClaimError::Audience(client_id.to_owned()));
    }
    Ok(())
}

fn check_iat(c: &RawClaims<'_>, now: u64, leeway: u64) -> Result<u64, ClaimError> {
    let iat = c.iat.ok_or(ClaimError::Missing("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(ClaimError::IssuedInFuture { iat, now });
    }
    Ok(iat)
}

/// Checks the claims of an ID token whose signature was already verified; `payload` is the decoded
/// JWS payload.
pub fn check_id_token_claims(
    payload: &[u8],
    rules: &IdTokenRules<'_>,
    now: u64,
) -> Result<IdTokenInfo, FlowError> {
    let c = parse_claims(payload)?;
    check_iss_aud(&c, rules.issuer, rules.client_id)?;
    let several = c.aud.as_ref().is_some_and(|a| a.len() > 1);
    match c.azp.as_deref() {
        None if several => return Err(ClaimError::AzpMissing.into()),
        Some(azp) if azp != rules.client_id => {
            return Err(ClaimError::Azp {
                expected: rules.client_id.to_owned(),
                got: azp.to_owned(),
            }
            .into());
        }
        _ => {}
    }
    if let Some(expected) = rules.nonce {
        let got = c.nonce.as_deref().ok_or(ClaimError::Missing("nonce"))?;
        if !constant_time_eq(got.as_bytes(), expected.as_bytes()) {
            return Err(ClaimError::Nonce.into());
        }
    }
    let exp = c.exp.ok_or(ClaimError::Missing("exp"))?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(ClaimError::Expired {
            exp,
            now,
            leeway: rules.leeway,
        }
        .into());
    }
    let iat = check_iat(&c, now, rules.leeway)?;
    let sub = c
        .sub
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ClaimError::Missing("sub"))?;
    if let Some(max_age) = rules.max_age {
        let auth_time = c.auth_time.ok_or(ClaimError::Missing("auth_time"))?;
        if now
            > auth_time
                .saturating_add(max_age)
                .saturating_add(rules.leeway)
        {
            return Err(ClaimError::AuthTooOld { auth_time, max_age }.into());
        }
    }
    Ok(IdTokenInfo {
        sub: sub.to_owned(),
        sid: c.sid.map(Cow::into_owned),
        exp,
        iat,
        auth_time: c.auth_time,
    })
}

/// Accepts a JSON integer, a float (some IdPs emit `1.7e9`) or a decimal string.
fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative number of seconds")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("negative time"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Some(v as u64))
            } else {
                Err(E::custom("time out of range"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| E::custom("not a number"))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

// ---------------------------------------------------------------------------------------------
// Redirects and logout

/// The post-login redirect target, only if it is a same-origin path (`/x?y#z`): no scheme, no
/// `//host` or `/\host` (browsers read both as another host), no control characters anywhere
/// (browsers strip tab/CR/LF inside URLs, turning `/\t/evil` into `//evil`). Non-ASCII bytes and
/// characters that cannot appear in a Location header are percent-encoded.
pub fn safe_redirect_target(original: &[u8]) -> Option<String> {
    match original {
        [b'/', b'/' | b'\\', ..] | [] => return None,
        [b'/', ..] => {}
        _ => return None,
    }
    if original.iter().any(|&b| b.is_ascii_control()) {
        return None;
    }
    let mut out = String::with_capacity(original.len());
    for &b in original {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'`' | b'{' | b'}' | b'|' | b'^'
            )
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Some(out)
}

/// What to answer a logout request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutAction {
    RedirectTo(String),
    /// No endpoint and nowhere to go: render the "Logged Out" page.
    LoggedOutPage,
}

/// RP-initiated logout as lua-resty-openidc does it: to the `end_session_endpoint` (or APISIX's
/// `redirect_after_logout_uri`, passed in its place) with `id_token_hint` and
/// `post_logout_redirect_uri`. Without an endpoint but with a `post_logout_redirect_uri` (IdPs
/// without end_session: Auth0, Cognito, Google), APISIX makes that URI lua-resty-openidc's
/// `redirect_after_logout_uri`: the browser goes there, with the `post_logout_redirect_uri`
/// parameter and no `id_token_hint` (the ID token is not handed to the application).
pub fn logout_redirect(
    end_session_endpoint: Option<&str>,
    id_token_hint: Option<&str>,
    post_logout_redirect_uri: Option<&str>,
) -> LogoutAction {
    let Some(endpoint) = end_session_endpoint.filter(|e| !e.is_empty()) else {
        return match post_logout_redirect_uri.filter(|u| !u.is_empty()) {
            Some(u) => {
                let mut url = u.to_owned();
                url.push(if u.contains('?') { '&' } else { '?' });
                append_form(&mut url, std::iter::once(("post_logout_redirect_uri", u)));
                LogoutAction::RedirectTo(url)
            }
            None => LogoutAction::LoggedOutPage,
        };
    };
    let mut params: Vec<(&str, &str)> = Vec::with_capacity(2);
    if let Some(h) = id_token_hint {
        params.push(("id_token_hint", h));
    }
    if let Some(u) = post_logout_redirect_uri {
        params.push(("post_logout_redirect_uri", u));
    }
    let mut url = endpoint.to_owned();
    if !params.is_empty() {
        match endpoint.find('?') {
            None => url.push('?'),
            Some(_) if endpoint.ends_with('?') || endpoint.ends_with('&') => {}
            Some(_) => url.push('&'),
        }
        append_form(&mut url, params.into_iter());
    }
    LogoutAction::RedirectTo(url)
}

/// Who a back-channel logout token logs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutSubject {
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub iat: u64,
    /// For a replay cache; not required here since many IdPs' tokens predate the final spec.
    pub jti: Option<String>,
}

/// Checks the claims of a signature-verified logout token (OIDC Back-Channel Logout 1.0 section 2.6).
pub fn check_logout_token_claims(
    payload: &[u8],
    issuer: &str,
    client_id: &str,
    now: u64,
    leeway: u64,
) -> Result<LogoutSubject, FlowError> {
    let inner = || -> Result<LogoutSubject, ClaimError> {
        let c = parse_claims(payload)?;
        check_iss_aud(&c, issuer, client_id)?;
        let iat = check_iat(&c, now, leeway)?;
        if let Some(exp) = c.exp
            && now >= exp.saturating_add(leeway)
        {
            return Err(ClaimError::Expired { exp, now, leeway });
        }
        let events = c.events.as_ref().ok_or(ClaimError::Missing("events"))?;
        let event = events
            .get(BACKCHANNEL_LOGOUT_EVENT)
            .ok_or(ClaimError::NotLogoutEvent)?;
        if !event.get().trim_start().starts_with('{') {
            return Err(ClaimError::NotLogoutEvent);
        }
        if c.nonce.is_some() {
            return Err(ClaimError::NonceInLogoutToken);
        }
        let sid = c.sid.map(Cow::into_owned).filter(|s| !s.is_empty());
        let sub = c.sub.map(Cow::into_owned).filter(|s| !s.is_empty());
        if sid.is_none() && sub.is_none() {
            return Err(ClaimError::NoSubject);
        }
        Ok(LogoutSubject {
            sid,
            sub,
            iat,
            jti: c.jti.map(Cow::into_owned),
        })
    };
    inner().map_err(FlowError::LogoutToken)
}

/// A bounded, shard-local deny-list fed by back-channel logouts.
///
/// `sid` entries revoke exactly that IdP session; `sub` entries revoke every session of the user
/// created at or before the logout (a later login is not affected). Entries live until `until`
/// (the gateway passes `now + absolute_timeout`: no cookie can outlive that).
#[derive(Debug, Clone)]
pub struct Revocations {
    sids: HashMap<String, u64>,
    /// sub -> (sessions created at or before this are revoked, entry expiry)
    subs: HashMap<String, (u64, u64)>,
    capacity: usize,
}

impl Revocations {
    pub fn new(capacity: usize) -> Revocations {
        Revocations {
            sids: HashMap::new(),
            subs: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.sids.len() + self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sids.is_empty() && self.subs.is_empty()
    }

    /// Records a logout. With a full list, expired entries go first, then the soonest-to-expire.
    pub fn revoke(&mut self, subject: &LogoutSubject, until: u64) {
        let needed = usize::from(subject.sid.is_some())
            + usize::from(subject.sid.is_none() && subject.sub.is_some());
        while self.len() + needed > self.capacity && self.evict_one() {}
        // With a sid the IdP names one session precisely; only fall back to the broader sub.
        if let Some(sid) = &subject.sid {
            let e = self.sids.entry(sid.clone()).or_insert(until);
            *e = (*e).max(until);
        } else if let Some(sub) = &subject.sub {
            let e = self.subs.entry(sub.clone()).or_insert((subject.iat, until));
            e.0 = e.0.max(subject.iat);
            e.1 = e.1.max(until);
        }
    }

    fn evict_one(&mut self) -> bool {
        let sid = self
            .sids
            .iter()
            .min_by_key(|(_, until)| **until)
            .map(|(k, u)| (k.clone(), *u));
        let sub = self
            .subs
            .iter()
            .min_by_key(|(_, (_, until))| *until)
            .map(|(k, (_, u))| (k.clone(), *u));
        match (sid, sub) {
            (Some((k, a)), Some((_, b))) if a <= b => self.sids.remove(&k).is_some(),
            (_, Some((k, _))) => self.subs.remove(&k).is_some(),
            (Some((k, _)), None) => self.sids.remove(&k).is_some(),
            (None, None) => false,
        }
    }

    /// Whether `session` was logged out by the IdP.
    pub fn is_revoked(&self, session: &SessionData) -> bool {
        if self.is_empty() {
            return false;
        }
        if let Some(sid) = &session.sid
            && self.sids.contains_key(sid)
        {
            return true;
        }
        if let Some(sub) = &session.sub
            && let Some((cutoff, _)) = self.subs.get(sub)
        {
            return session.created_at <= *cutoff;
        }
        false
    }

    /// Drops entries whose `until` has passed.
    pub fn prune(&mut self, now: u64) {
        self.sids.retain(|_, until| *until > now);
        self.subs.retain(|_, (_, until)| *until > now);
    }
}

/// Every back-channel logout still in force, by issuer: a `sid` or `sub` logged out at one IdP
/// says nothing about another IdP's sessions.
///
/// The gateway's control side owns one, prunes it, and publishes immutable copies to the shards,
/// which only read them ([`RevocationSet::is_revoked`]).
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    by_issuer: HashMap<String, Revocations>,
}

impl RevocationSet {
    /// Entries kept per issuer; past this the soonest-to-expire go first (see [`Revocations`]).
    pub const CAPACITY_PER_ISSUER: usize = 100_000;

    pub fn len(&self) -> usize {
        self.by_issuer.values().map(Revocations::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// Records a logout by `issuer`'s back channel, in force until `until` (unix seconds).
    pub fn revoke(&mut self, issuer: &str, subject: &LogoutSubject, until: u64) {
        self.by_issuer
            .entry(issuer.to_owned())
            .or_insert_with(|| Revocations::new(Self::CAPACITY_PER_ISSUER))
            .revoke(subject, until);
    }

    /// Drops entries whose `until` has passed; returns whether anything was dropped.
    pub fn prune(&mut self, now: u64) -> bool {
        let before = self.len();
        for r in self.by_issuer.values_mut() {
            r.prune(now);
        }
        self.by_issuer.retain(|_, r| !r.is_empty());
        self.len() != before
    }

    /// Whether `session` was logged out by its issuer. A session without `iss` is checked against
    /// the empty issuer only.
    pub fn is_revoked(&self, session: &SessionData) -> bool {
        if self.by_issuer.is_empty() {
            return false;
        }
        self.by_issuer
            .get(session.iss.as_deref().unwrap_or(""))
            .is_some_and(|r| r.is_revoked(session))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_is_form_safe() {
        let mut s = String::new();
        percent_encode("a b&c=d/é~", &mut s);
        assert_eq!(s, "a%20b%26c%3Dd%2F%C3%A9~");
        assert_eq!(percent_decode(b"a+b%20c%2F%C3%A9").unwrap(), "a b c/é");
        assert!(percent_decode(b"%2").is_err());
        assert!(percent_decode(b"%zz").is_err());
        assert!(percent_decode(b"%FF").is_err());
    }

    #[test]
    fn revocation_sets_are_per_issuer_and_pruned() {
        let subject = |sid: &str| LogoutSubject {
            sid: Some(sid.into()),
            sub: None,
            iat: 100,
            jti: None,
        };
        let session = |iss: &str, sid: &str| SessionData {
            iss: Some(iss.into()),
            sid: Some(sid.into()),
            created_at: 50,
            ..SessionData::default()
        };
        let mut set = RevocationSet::default();
        set.revoke("https://a", &subject("s1"), 200);
        set.revoke("https://b", &subject("s2"), 300);
        assert!(set.is_revoked(&session("https://a", "s1")));
        assert!(
            !set.is_revoked(&session("https://b", "s1")),
            "another IdP's sid"
        );
        assert!(set.is_revoked(&session("https://b", "s2")));
        assert_eq!(set.len(), 2);
        assert!(!set.prune(199));
        assert!(set.prune(200));
        assert_eq!(set.len(), 1);
        assert!(!set.is_revoked(&session("https://a", "s1")));
        assert!(set.prune(300));
        assert!(set.is_empty());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn numeric_dates_accept_floats_and_strings() {
        let c = parse_claims(br#"{"exp": 1.7e9, "iat": "1600000000", "auth_time": 5}"#).unwrap();
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.iat, Some(1_600_000_000));
        assert_eq!(c.auth_time, Some(5));
        assert!(parse_claims(br#"{"exp": -1}"#).is_err());
    }
}
