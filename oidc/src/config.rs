//! The `openid-connect` plugin configuration: APISIX's attribute names, types and defaults.
//!
//! Every attribute of APISIX's schema is here, plus the lua-resty-openidc pass-through options that
//! shardgate implements. Where APISIX's default is unsafe we take the safe one and say so on the
//! field (`accept_unsupported_alg`, `session.cookie_secure`). Attributes we do not implement are
//! still *parsed* (as [`IgnoredAny`]) so that [`OidcConf::check`] can name them in an explicit
//! "not supported by shardgate" error instead of a generic unknown-field typo error.
//!
//! Deserializing only checks shapes and types; [`OidcConf::check`] applies APISIX's `check_schema`
//! rules and our own, and returns every problem it finds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};

#[cfg(test)]
mod apisix_tests;
mod schema;

/// One configuration problem: where (a dotted path) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// One plugin config read by [`OidcConf::from_value`]. `conf` is there whenever the shapes
/// allowed a typed parse; the config is usable only when `errors` is empty.
#[derive(Debug)]
pub struct Loaded {
    pub conf: Option<OidcConf>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// A secret string. `Debug` never prints it, so a logged config cannot leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs the key material.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Client authentication at the token and introspection endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    ClientSecretJwt,
}

impl AuthMethod {
    /// The APISIX name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
        }
    }
}

/// What a request without credentials gets (APISIX `unauth_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnauthAction {
    /// 302 to the IdP's authorization endpoint.
    Auth,
    /// 401.
    Deny,
    /// Proxy the request without identity headers.
    Pass,
}

/// shardgate: what bearer routes do with DPoP-bound access tokens (RFC 9449).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpopBoundTokens {
    /// Every token must be DPoP-bound and come with a valid proof; plain bearer tokens are refused.
    Required,
    /// A token bound to a key (`cnf.jkt` in the JWT or `cnf` in the introspection answer) needs a
    /// valid proof; unbound tokens are plain bearer tokens as before.
    #[default]
    Optional,
    /// `cnf` is ignored: bound tokens are accepted as plain bearer tokens (pre-DPoP behaviour).
    Off,
}

fn dpop_proof_max_age() -> u64 {
    60
}

/// `client_jwt_assertion_alg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AssertionAlg {
    HS256,
    HS512,
    RS256,
    RS512,
    ES256,
    ES512,
}

impl AssertionAlg {
    fn is_hmac(self) -> bool {
        matches!(self, AssertionAlg::HS256 | AssertionAlg::HS512)
    }
}

/// `session.cookie_same_site`. `Default` means: send no SameSite attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
    Default,
}

/// `session.storage`. Only `cookie` is implemented; `redis` is parsed to be rejected by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStorage {
    Cookie,
    Redis,
}

// Defaults, one per attribute, named after it.
const SCOPE: &str = "openid";
const REALM: &str = "apisix";
const LOGOUT_PATH: &str = "/logout";
const TIMEOUT: u64 = 3;
const INTROSPECTION_EXPIRY_CLAIM: &str = "exp";
const CLIENT_JWT_ASSERTION_EXPIRES_IN: u64 = 60;
const ACCESS_TOKEN_EXPIRES_IN: u64 = 3600;
const IAT_SLACK: u64 = 120;
const JWK_EXPIRES_IN: u64 = 86_400;
const DISCOVERY_EXPIRES_IN: u64 = 86_400;
const INTROSPECTION_NEGATIVE_CACHE_TTL: u64 = 10;
const AUTHORIZATION_STATE_EXPIRES_IN: u64 = 300;
const AUTHORIZATION_STATE_MAX_NUMBER: u32 = 10;
const JWT_VERIFICATION_CACHE_SIZE: usize = 10_000;
const COOKIE_NAME: &str = "session";
const COOKIE_PATH: &str = "/";
const IDLING_TIMEOUT: u64 = 900;
const ROLLING_TIMEOUT: u64 = 3600;
const ABSOLUTE_TIMEOUT: u64 = 86_400;
const COMPRESSION_THRESHOLD: usize = 1024;
const AUDIENCE_CLAIM: &str = "aud";
/// lua-resty-session refuses shorter keys; so does APISIX's schema.
const MIN_SECRET_BYTES: usize = 16;

fn scope() -> String {
    SCOPE.to_owned()
}
fn realm() -> String {
    REALM.to_owned()
}
fn logout_path() -> String {
    LOGOUT_PATH.to_owned()
}
fn timeout() -> u64 {
    TIMEOUT
}
fn introspection_expiry_claim() -> String {
    INTROSPECTION_EXPIRY_CLAIM.to_owned()
}
fn client_jwt_assertion_expires_in() -> u64 {
    CLIENT_JWT_ASSERTION_EXPIRES_IN
}
fn access_token_expires_in() -> u64 {
    ACCESS_TOKEN_EXPIRES_IN
}
fn iat_slack() -> u64 {
    IAT_SLACK
}
fn jwk_expires_in() -> u64 {
    JWK_EXPIRES_IN
}
fn discovery_expires_in() -> u64 {
    DISCOVERY_EXPIRES_IN
}
fn introspection_negative_cache_ttl() -> u64 {
    INTROSPECTION_NEGATIVE_CACHE_TTL
}
fn authorization_state_expires_in() -> u64 {
    AUTHORIZATION_STATE_EXPIRES_IN
}
fn authorization_state_max_number() -> u32 {
    AUTHORIZATION_STATE_MAX_NUMBER
}
fn jwt_verification_cache_size() -> usize {
    JWT_VERIFICATION_CACHE_SIZE
}
fn client_secret_basic() -> AuthMethod {
    AuthMethod::ClientSecretBasic
}
fn unauth_action() -> UnauthAction {
    UnauthAction::Auth
}
fn cookie_name() -> String {
    COOKIE_NAME.to_owned()
}
fn cookie_path() -> String {
    COOKIE_PATH.to_owned()
}
fn cookie_same_site() -> SameSite {
    SameSite::Lax
}
fn session_storage() -> SessionStorage {
    SessionStorage::Cookie
}
fn idling_timeout() -> u64 {
    IDLING_TIMEOUT
}
fn rolling_timeout() -> u64 {
    ROLLING_TIMEOUT
}
fn compression_threshold() -> usize {
    COMPRESSION_THRESHOLD
}
fn audience_claim() -> String {
    AUDIENCE_CLAIM.to_owned()
}
fn yes() -> bool {
    true
}

/// The `openid-connect` plugin attributes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConf {
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// `.well-known/openid-configuration` URL. https, or http to a loopback host only.
    pub discovery: String,
    #[serde(default = "scope")]
    pub scope: String,
    /// Every listed scope must be granted, else 403.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default = "realm")]
    pub realm: String,
    #[serde(default)]
    pub bearer_only: bool,
    #[serde(default = "logout_path")]
    pub logout_path: String,
    pub post_logout_redirect_uri: Option<String>,
    /// Unset: the request URI plus `/.apisix/redirect`, as APISIX.
    pub redirect_uri: Option<String>,
    /// IdP HTTP timeout, seconds (>= 1).
    #[serde(default = "timeout")]
    pub timeout: u64,
    /// APISIX also accepts the string `"no"` here; so do we.
    #[serde(default = "yes", deserialize_with = "bool_or_yes_no")]
    pub ssl_verify: bool,
    /// shardgate: a PEM CA bundle trusted for IdP TLS in addition to the system roots (APISIX sets
    /// this globally with nginx's `lua_ssl_trusted_certificate`).
    pub ssl_ca_file: Option<String>,
    pub introspection_endpoint: Option<String>,
    #[serde(default = "client_secret_basic")]
    pub introspection_endpoint_auth_method: AuthMethod,
    /// Cap on the introspection cache TTL, seconds; 0 = the token's own expiry.
    #[serde(default)]
    pub introspection_interval: u64,
    #[serde(default = "introspection_expiry_claim")]
    pub introspection_expiry_claim: String,
    /// Client request headers copied onto the introspection call.
    #[serde(default)]
    pub introspection_addon_headers: Vec<String>,
    #[serde(default = "client_secret_basic")]
    pub token_endpoint_auth_method: AuthMethod,
    /// PEM public key for local JWT verification.
    pub public_key: Option<String>,
    #[serde(default)]
    pub use_jwks: bool,
    /// The one expected JWT `alg` (a string, as in APISIX).
    pub token_signing_alg_values_expected: Option<String>,
    #[serde(default)]
    pub use_pkce: bool,
    /// RFC 9126 Pushed Authorization Requests.
    #[serde(default)]
    pub par: Option<ParConf>,
    /// RFC 9449 DPoP as a client (proofs for the token, refresh and UserInfo calls).
    #[serde(default)]
    pub dpop: Option<DpopConf>,
    /// shardgate: DPoP-bound access tokens on bearer routes (resource-server side of RFC 9449).
    #[serde(default)]
    pub dpop_bound_tokens: DpopBoundTokens,
    /// shardgate: a proof's `iat` must be within this many seconds of now (either side); its
    /// `jti` is remembered as long.
    #[serde(default = "dpop_proof_max_age")]
    pub dpop_proof_max_age: u64,
    /// shardgate: proofs must carry a nonce the gateway issued (`DPoP-Nonce`, RFC 9449 section 9).
    #[serde(default)]
    pub dpop_nonce: bool,
    #[serde(default = "yes")]
    pub set_access_token_header: bool,
    #[serde(default)]
    pub access_token_in_authorization_header: bool,
    #[serde(default = "yes")]
    pub set_id_token_header: bool,
    #[serde(default)]
    pub set_raw_id_token_header: bool,
    #[serde(default = "yes")]
    pub set_userinfo_header: bool,
    #[serde(default)]
    pub set_refresh_token_header: bool,
    #[serde(default)]
    pub session: SessionConf,
    #[serde(default)]
    pub claim_validator: ClaimValidator,
    /// A JSON Schema, kept as a value for the validator to compile.
    pub claim_schema: Option<serde_json::Value>,
    #[serde(default = "unauth_action")]
    pub unauth_action: UnauthAction,
    /// shardgate: what an API-shaped request (`Accept: application/json` without `text/html`, or
    /// `X-Requested-With`) gets without credentials. Unset: `deny` when `unauth_action` is
    /// `auth` (a script cannot follow a redirect to a login page, a 401 it can act on), else the
    /// same as `unauth_action`. See [`OidcConf::api_unauth_action`].
    pub api_unauth_action: Option<UnauthAction>,
    pub proxy_opts: Option<ProxyOpts>,
    /// Extra authorization-request parameters; they override the defaults.
    #[serde(default)]
    pub authorization_params: BTreeMap<String, String>,
    pub client_rsa_private_key: Option<Secret>,
    pub client_rsa_private_key_id: Option<String>,
    #[serde(default = "client_jwt_assertion_expires_in")]
    pub client_jwt_assertion_expires_in: u64,
    /// Unset: RS256 for `private_key_jwt`, HS256 for `client_secret_jwt` (lua-resty-openidc).
    pub client_jwt_assertion_alg: Option<AssertionAlg>,
    /// Unset: the endpoint URL.
    pub client_jwt_assertion_audience: Option<String>,
    #[serde(default = "yes")]
    pub renew_access_token_on_expiry: bool,
    /// Assumed access-token lifetime when the token response has no `expires_in`.
    #[serde(default = "access_token_expires_in")]
    pub access_token_expires_in: u64,
    pub refresh_session_interval: Option<u64>,
    #[serde(default = "iat_slack")]
    pub iat_slack: u64,
    #[serde(default)]
    pub accept_none_alg: bool,
    /// APISIX defaults this to `true`, which accepts ID tokens with an alg it cannot verify
    /// *without checking the signature*. shardgate defaults to `false`.
    #[serde(default)]
    pub accept_unsupported_alg: bool,
    #[serde(default)]
    pub access_token_expires_leeway: u64,
    #[serde(default)]
    pub force_reauthorize: bool,
    #[serde(default)]
    pub use_nonce: bool,
    #[serde(default)]
    pub revoke_tokens_on_logout: bool,
    #[serde(default = "jwk_expires_in")]
    pub jwk_expires_in: u64,
    #[serde(default)]
    pub jwt_verification_cache_ignore: bool,
    pub cache_segment: Option<String>,
    /// Unset: everything is stored in the session.
    pub session_contents: Option<SessionContents>,

    // lua-resty-openidc pass-through options that shardgate implements.
    #[serde(default = "discovery_expires_in")]
    pub discovery_expires_in: u64,
    /// lua-resty-openidc defaults this to `false`; shardgate caches inactive answers by default
    /// (for `introspection_negative_cache_ttl`) so a flood of bad tokens is not a flood of IdP calls.
    #[serde(default = "yes")]
    pub introspection_enable_negative_cache: bool,
    /// shardgate: seconds an inactive introspection answer stays cached.
    #[serde(default = "introspection_negative_cache_ttl")]
    pub introspection_negative_cache_ttl: u64,
    #[serde(default)]
    pub introspection_cache_ignore: bool,
    #[serde(default = "authorization_state_expires_in")]
    pub authorization_state_expires_in: u64,
    #[serde(default = "authorization_state_max_number")]
    pub authorization_state_max_number: u32,
    /// Key for HS* bearer JWT verification.
    pub symmetric_key: Option<Secret>,
    /// shardgate: entries in each shard's verified-token cache.
    #[serde(default = "jwt_verification_cache_size")]
    pub jwt_verification_cache_size: usize,
    /// shardgate: remove the client's `Authorization` header (and the session cookie) before
    /// proxying (apache/apisix#13279).
    #[serde(default)]
    pub hide_credentials: bool,

    // Parsed only to be rejected by name in `check`.
    #[serde(default)]
    response_mode: Option<IgnoredAny>,
    #[serde(default)]
    prompt: Option<IgnoredAny>,
    #[serde(default)]
    display: Option<IgnoredAny>,
    #[serde(default)]
    redirect_uri_scheme: Option<IgnoredAny>,
    #[serde(default)]
    redirect_uri_path: Option<IgnoredAny>,
    #[serde(default)]
    redirect_after_logout_uri: Option<IgnoredAny>,
    #[serde(default)]
    redirect_after_logout_with_id_token_hint: Option<IgnoredAny>,
    #[serde(default)]
    introspection_params: Option<IgnoredAny>,
    #[serde(default)]
    introspection_token_param_name: Option<IgnoredAny>,
    #[serde(default)]
    introspection_lock_timeout: Option<IgnoredAny>,
    #[serde(default)]
    introspection_lock_exptime: Option<IgnoredAny>,
    #[serde(default)]
    auth_accept_token_as: Option<IgnoredAny>,
    #[serde(default)]
    auth_accept_token_as_header_name: Option<IgnoredAny>,
    #[serde(default)]
    pass_cookies: Option<IgnoredAny>,
    #[serde(default)]
    keepalive: Option<IgnoredAny>,
    #[serde(default)]
    http_version: Option<IgnoredAny>,
    #[serde(default)]
    lifecycle: Option<IgnoredAny>,
    #[serde(default, rename = "_meta")]
    meta: Option<IgnoredAny>,
}

/// RFC 9126 Pushed Authorization Requests, with APISIX's schema: with `enabled`, the authorization
/// request's parameters are POSTed to `endpoint` (else the discovery document's
/// `pushed_authorization_request_endpoint`) with the client authentication of
/// `endpoint_auth_method` (else the token endpoint's), and the browser is sent to the authorization
/// endpoint with only `client_id` and the `request_uri` the IdP answered.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParConf {
    #[serde(default)]
    pub enabled: bool,
    pub endpoint: Option<String>,
    pub endpoint_auth_method: Option<AuthMethod>,
}

/// RFC 9449 DPoP as a client, with APISIX's schema and key checks (see `check_par_dpop`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConf {
    #[serde(default)]
    pub enabled: bool,
    /// `ES256` (APISIX's default), `RS256` or `PS256`.
    pub signing_alg: Option<String>,
    pub private_key: Option<Secret>,
    pub public_jwk: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Session cookie settings (lua-resty-session names and defaults).
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "SessionFile")]
pub struct SessionConf {
    /// At least 16 bytes; required unless `bearer_only`.
    pub secret: Option<Secret>,
    /// shardgate: previous secrets still accepted when opening a cookie, so a rotation does not
    /// log everyone out. New cookies are always sealed with `secret`.
    pub secret_fallbacks: Vec<Secret>,
    pub cookie_name: String,
    pub cookie_path: String,
    pub cookie_domain: Option<String>,
    /// lua-resty-session leaves `Secure` off unless asked; shardgate sets it by default.
    pub cookie_secure: bool,
    pub cookie_http_only: bool,
    pub cookie_same_site: SameSite,
    /// Seconds; 0 disables the timeout (as lua-resty-session).
    pub idling_timeout: u64,
    pub rolling_timeout: u64,
    /// Also set by the deprecated `session.cookie.lifetime`.
    pub absolute_timeout: u64,
    pub storage: SessionStorage,
    /// shardgate: session payloads larger than this many bytes are deflated before sealing.
    pub compression_threshold: usize,
    redis: bool,
}

impl Default for SessionConf {
    fn default() -> Self {
        SessionConf {
            secret: None,
            secret_fallbacks: Vec::new(),
            cookie_name: cookie_name(),
            cookie_path: cookie_path(),
            cookie_domain: None,
            cookie_secure: true,
            cookie_http_only: true,
            cookie_same_site: cookie_same_site(),
            idling_timeout: IDLING_TIMEOUT,
            rolling_timeout: ROLLING_TIMEOUT,
            absolute_timeout: ABSOLUTE_TIMEOUT,
            storage: SessionStorage::Cookie,
            compression_threshold: COMPRESSION_THRESHOLD,
            redis: false,
        }
    }
}

impl SessionConf {
    pub fn idling_timeout(&self) -> Duration {
        Duration::from_secs(self.idling_timeout)
    }
    pub fn rolling_timeout(&self) -> Duration {
        Duration::from_secs(self.rolling_timeout)
    }
    pub fn absolute_timeout(&self) -> Duration {
        Duration::from_secs(self.absolute_timeout)
    }
}

/// The file shape of `session`, before the deprecated alias is folded in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    secret: Option<Secret>,
    #[serde(default)]
    secret_fallbacks: Vec<Secret>,
    #[serde(default = "cookie_name")]
    cookie_name: String,
    #[serde(default = "cookie_path")]
    cookie_path: String,
    cookie_domain: Option<String>,
    #[serde(default = "yes")]
    cookie_secure: bool,
    #[serde(default = "yes")]
    cookie_http_only: bool,
    #[serde(default = "cookie_same_site")]
    cookie_same_site: SameSite,
    #[serde(default = "idling_timeout")]
    idling_timeout: u64,
    #[serde(default = "rolling_timeout")]
    rolling_timeout: u64,
    absolute_timeout: Option<u64>,
    cookie: Option<LegacyCookie>,
    #[serde(default = "session_storage")]
    storage: SessionStorage,
    #[serde(default = "compression_threshold")]
    compression_threshold: usize,
    #[serde(default)]
    redis: Option<IgnoredAny>,
}

/// APISIX 2.x `session.cookie.lifetime`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyCookie {
    lifetime: Option<u64>,
}

impl TryFrom<SessionFile> for SessionConf {
    type Error = String;

    fn try_from(file: SessionFile) -> Result<Self, String> {
        let absolute_timeout = match (file.absolute_timeout, file.cookie) {
            (Some(_), Some(LegacyCookie { lifetime: Some(_) })) => {
                return Err(
                    "set `absolute_timeout` or the deprecated `cookie.lifetime`, not both"
                        .to_owned(),
                );
            }
            (Some(t), _) => t,
            (None, Some(LegacyCookie { lifetime: Some(t) })) => t,
            (None, _) => ABSOLUTE_TIMEOUT,
        };
        Ok(SessionConf {
            secret: file.secret,
            secret_fallbacks: file.secret_fallbacks,
            cookie_name: file.cookie_name,
            cookie_path: file.cookie_path,
            cookie_domain: file.cookie_domain,
            cookie_secure: file.cookie_secure,
            cookie_http_only: file.cookie_http_only,
            cookie_same_site: file.cookie_same_site,
            idling_timeout: file.idling_timeout,
            rolling_timeout: file.rolling_timeout,
            absolute_timeout,
            storage: file.storage,
            compression_threshold: file.compression_threshold,
            redis: file.redis.is_some(),
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimValidator {
    #[serde(default)]
    pub issuer: IssuerValidator,
    #[serde(default)]
    pub audience: AudienceValidator,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerValidator {
    /// Unset: the discovery document's `issuer` (fail-closed when discovery is down).
    #[serde(default)]
    pub valid_issuers: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceValidator {
    #[serde(default = "audience_claim")]
    pub claim: String,
    #[serde(default)]
    pub required: bool,
    /// Implies `required`.
    #[serde(default)]
    pub match_with_client_id: bool,
}

impl Default for AudienceValidator {
    fn default() -> Self {
        AudienceValidator {
            claim: audience_claim(),
            required: false,
            match_with_client_id: false,
        }
    }
}

/// `session_contents`: which parts go into the session. Listed-and-true parts are stored.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionContents {
    #[serde(default)]
    pub access_token: bool,
    #[serde(default)]
    pub id_token: bool,
    #[serde(default)]
    pub enc_id_token: bool,
    #[serde(default)]
    pub user: bool,
}

/// Outbound proxy for IdP calls (HTTP CONNECT for https).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyOpts {
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub http_proxy_authorization: Option<Secret>,
    pub https_proxy_authorization: Option<Secret>,
    pub no_proxy: Option<String>,
}

/// Private key type, as far as `check` needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    Rsa,
    Ec,
    Unknown,
}

impl OidcConf {
    /// The IdP HTTP timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// What API-shaped requests without credentials get (see the field).
    pub fn api_unauth_action(&self) -> UnauthAction {
        match (self.api_unauth_action, self.unauth_action) {
            (Some(action), _) => action,
            (None, UnauthAction::Auth) => UnauthAction::Deny,
            (None, other) => other,
        }
    }

    /// Whether the bearer branch runs (APISIX: bearer_only, or any token validator configured).
    pub fn bearer_enabled(&self) -> bool {
        self.bearer_only
            || self.introspection_endpoint.is_some()
            || self.public_key.is_some()
            || self.use_jwks
    }

    /// APISIX `check_schema` plus shardgate's own rules. `path` prefixes every problem, e.g.
    /// `routes[0].plugins.openid-connect`. Returns every problem found, in field order.
    pub fn check(&self, path: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let at = |field: &str| format!("{path}.{field}");

        for (name, present) in self.unsupported_fields() {
            if present {
                out.push(Problem::new(at(name), unsupported(name)));
            }
        }
        self.check_par_dpop(path, &mut out);
        if self.client_id.is_empty() {
            out.push(Problem::new(at("client_id"), "must not be empty"));
        }
        if parse_http_url(&self.discovery).is_none() {
            out.push(Problem::new(at("discovery"), "must be an http(s) URL"));
        }
        if self.client_secret.is_none() && self.client_secret_required() {
            out.push(Problem::new(
                at("client_secret"),
                "required unless bearer_only with public_key/use_jwks, or private_key_jwt, or \
                 use_pkce",
            ));
        }
        if self.timeout < 1 {
            out.push(Problem::new(at("timeout"), "must be at least 1 (seconds)"));
        }
        for (name, value) in [
            ("jwk_expires_in", self.jwk_expires_in),
            ("discovery_expires_in", self.discovery_expires_in),
            (
                "authorization_state_expires_in",
                self.authorization_state_expires_in,
            ),
            (
                "client_jwt_assertion_expires_in",
                self.client_jwt_assertion_expires_in,
            ),
            ("access_token_expires_in", self.access_token_expires_in),
        ] {
            if value < 1 {
                out.push(Problem::new(at(name), "must be at least 1 (seconds)"));
            }
        }
        if self.authorization_state_max_number < 1 {
            out.push(Problem::new(
                at("authorization_state_max_number"),
                "must be at least 1",
            ));
        }
        if self.introspection_enable_negative_cache && self.introspection_negative_cache_ttl < 1 {
            out.push(Problem::new(
                at("introspection_negative_cache_ttl"),
                "must be at least 1 (seconds) while introspection_enable_negative_cache is on",
            ));
        }
        if self.jwt_verification_cache_size < 1 {
            out.push(Problem::new(
                at("jwt_verification_cache_size"),
                "must be at least 1",
            ));
        }
        if !self.logout_path.starts_with('/') {
            out.push(Problem::new(at("logout_path"), "must start with `/`"));
        }
        for (name, value) in [
            ("redirect_uri", &self.redirect_uri),
            ("post_logout_redirect_uri", &self.post_logout_redirect_uri),
        ] {
            if let Some(uri) = value
                && !(uri.starts_with('/') || parse_http_url(uri).is_some())
            {
                out.push(Problem::new(
                    at(name),
                    "must be an http(s) URL or a path starting with `/`",
                ));
            }
        }
        if let Some(endpoint) = &self.introspection_endpoint
            && parse_http_url(endpoint).is_none()
        {
            out.push(Problem::new(
                at("introspection_endpoint"),
                "must be an http(s) URL",
            ));
        }
        for (i, header) in self.introspection_addon_headers.iter().enumerate() {
            if header.is_empty() || header.contains(':') {
                out.push(Problem::new(
                    format!("{path}.introspection_addon_headers[{i}]"),
                    "must be a header name (non-empty, no `:`)",
                ));
            }
        }
        if let Some(pem) = &self.public_key
            && !pem.contains("-----BEGIN")
        {
            out.push(Problem::new(at("public_key"), "must be a PEM public key"));
        }
        if let Some(key) = &self.symmetric_key
            && key.expose().is_empty()
        {
            out.push(Problem::new(at("symmetric_key"), "must not be empty"));
        }
        self.check_client_assertion(path, &mut out);
        self.check_session(path, &mut out);
        if let Some(schema) = &self.claim_schema
            && !schema.is_object()
        {
            out.push(Problem::new(
                at("claim_schema"),
                "must be a JSON Schema object",
            ));
        }
        out
    }

    /// What is accepted but risky, as warnings naming the attribute and the risk.
    pub fn warnings(&self, path: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let at = |field: &str| format!("{path}.{field}");
        let proxy = self.proxy_opts.as_ref();
        for (name, url) in [
            ("discovery", Some(&self.discovery)),
            (
                "introspection_endpoint",
                self.introspection_endpoint.as_ref(),
            ),
            ("redirect_uri", self.redirect_uri.as_ref()),
            (
                "post_logout_redirect_uri",
                self.post_logout_redirect_uri.as_ref(),
            ),
            (
                "par.endpoint",
                self.par.as_ref().and_then(|p| p.endpoint.as_ref()),
            ),
            (
                "proxy_opts.http_proxy",
                proxy.and_then(|p| p.http_proxy.as_ref()),
            ),
            (
                "proxy_opts.https_proxy",
                proxy.and_then(|p| p.https_proxy.as_ref()),
            ),
        ] {
            if url.is_some_and(|u| is_remote_plain_http(u)) {
                out.push(Problem::new(
                    at(name),
                    "uses plain http to a non-loopback host: tokens, secrets and the IdP's \
                     answers cross the network unencrypted and unauthenticated",
                ));
            }
        }
        if !self.bearer_only && self.scope.split(' ').all(|s| s != "openid") {
            out.push(Problem::new(
                at("scope"),
                "does not include `openid`: the IdP may issue no ID token, and logins then fail",
            ));
        }
        if !self.bearer_only
            && let Some(uri) = &self.redirect_uri
            && uri.starts_with('/')
        {
            out.push(Problem::new(
                at("redirect_uri"),
                "is relative: the callback URL sent to the IdP is built from each request's \
                 scheme and Host header, so it must be registered for every host clients use",
            ));
        }
        if let Some(pem) = &self.public_key
            && let Ok(key) = crate::jwk::Key::from_public_pem(pem)
            && let Some(bits) = key.rsa_bits().filter(|_| key.is_short_rsa())
        {
            out.push(Problem::new(
                at("public_key"),
                format!(
                    "is a {bits}-bit RSA key: under {} bits it can be factored by a \
                     well-resourced attacker, who could then forge tokens; only RS256 and RS512 \
                     tokens verify with it",
                    crate::jwk::MIN_RSA_BITS
                ),
            ));
        }
        // Signing keys ring refuses for being short are signed with through RustCrypto's `rsa`.
        let short_private = |pem: Option<&Secret>| {
            pem.and_then(|k| crate::jwt::SigningKey::from_pem(k.expose()).ok())
                .and_then(|k| k.short_rsa_bits())
        };
        if let Some(bits) = short_private(self.client_rsa_private_key.as_ref()) {
            out.push(Problem::new(
                at("client_rsa_private_key"),
                format!(
                    "is a {bits}-bit RSA key: under {} bits it can be factored by a \
                     well-resourced attacker, who could then sign client assertions as this \
                     client; the IdP may also refuse them",
                    crate::jwk::MIN_RSA_BITS
                ),
            ));
        }
        if let Some(bits) = short_private(self.dpop.as_ref().and_then(|d| d.private_key.as_ref())) {
            out.push(Problem::new(
                at("dpop.private_key"),
                format!(
                    "is a {bits}-bit RSA key: under {} bits it can be factored by a \
                     well-resourced attacker, who could then forge DPoP proofs for the tokens \
                     bound to it; the IdP may also refuse them",
                    crate::jwk::MIN_RSA_BITS
                ),
            ));
        }
        if !self.ssl_verify {
            out.push(Problem::new(
                at("ssl_verify"),
                "is off: IdP certificates are not verified, so anyone on the path can \
                 impersonate the IdP",
            ));
        }
        out
    }

    /// Reads one plugin config from its generic value (YAML or JSON): APISIX's schema, then the
    /// typed parse, then [`OidcConf::check`] and [`OidcConf::warnings`]. Every problem is
    /// reported, each path once (a path with a type error gets no further problems).
    pub fn from_value(mut value: serde_json::Value, path: &str) -> Loaded {
        let mut found = schema::Findings::default();
        schema::check(&mut value, path, &mut found);
        let mut errors = found.errors;
        let mut warnings = found.warnings;
        if let Some(map) = value.as_object_mut() {
            // Reported above when missing or mistyped; a placeholder lets the rest be checked.
            for name in ["client_id", "discovery"] {
                map.entry(name)
                    .or_insert_with(|| serde_json::Value::String(String::new()));
            }
        }
        let conf = match serde_json::from_value::<OidcConf>(value) {
            Ok(conf) => {
                errors.extend(conf.check(path));
                warnings.extend(conf.warnings(path));
                Some(conf)
            }
            Err(e) => {
                if errors.is_empty() {
                    errors.push(Problem::new(path, e.to_string()));
                }
                None
            }
        };
        let mut seen: Vec<String> = Vec::new();
        errors.retain(|p| {
            let covered = seen.iter().any(|s| {
                p.path == *s
                    || p.path
                        .strip_prefix(s.as_str())
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
            });
            if !covered {
                seen.push(p.path.clone());
            }
            !covered
        });
        warnings.dedup();
        Loaded {
            conf,
            errors,
            warnings,
        }
    }

    /// APISIX's `par`/`dpop` rules. Their checks apply while disabled too, as in APISIX.
    fn check_par_dpop(&self, path: &str, out: &mut Vec<Problem>) {
        if let Some(par) = self.par.as_ref().filter(|p| p.enabled) {
            // A PAR endpoint that is not a URL cannot work; APISIX fails at login with a 500.
            if let Some(endpoint) = &par.endpoint
                && parse_http_url(endpoint).is_none()
            {
                out.push(Problem::new(
                    format!("{path}.par.endpoint"),
                    "must be an http(s) URL",
                ));
            }
            if let Some(method) = par.endpoint_auth_method
                && !self.bearer_only
            {
                let (needs, present) = match method {
                    AuthMethod::PrivateKeyJwt => (
                        "client_rsa_private_key",
                        self.client_rsa_private_key.is_some(),
                    ),
                    AuthMethod::ClientSecretJwt => ("client_secret", self.client_secret.is_some()),
                    _ => ("", true),
                };
                if !present {
                    out.push(Problem::new(
                        format!("{path}.par.endpoint_auth_method"),
                        format!(
                            "{} requires `{needs}` when par.enabled is true",
                            method.as_str()
                        ),
                    ));
                }
            }
        }
        if let Some(dpop) = self.dpop.as_ref().filter(|d| d.enabled) {
            let before = out.len();
            for (name, present) in [
                ("private_key", dpop.private_key.is_some()),
                ("public_jwk", dpop.public_jwk.is_some()),
            ] {
                if !present {
                    out.push(Problem::new(
                        format!("{path}.dpop.{name}"),
                        "required when dpop.enabled is true",
                    ));
                }
            }
            if let Some(jwk) = &dpop.public_jwk {
                let at = format!("{path}.dpop.public_jwk");
                let kty = jwk.get("kty").and_then(|v| v.as_str()).unwrap_or_default();
                let members: &[&str] = match kty {
                    "EC" => &["crv", "x", "y"],
                    "RSA" => &["e", "n"],
                    _ => {
                        out.push(Problem::new(at, format!("kty {kty:?} is not supported")));
                        return;
                    }
                };
                for m in members {
                    if jwk
                        .get(*m)
                        .and_then(|v| v.as_str())
                        .is_none_or(str::is_empty)
                    {
                        out.push(Problem::new(
                            at.clone(),
                            format!("kty {kty:?} requires a non-empty string `{m}`"),
                        ));
                        return;
                    }
                }
                let alg = dpop.signing_alg.as_deref().unwrap_or("ES256");
                let (want_kty, want_crv) = match alg {
                    "ES256" => ("EC", Some("P-256")),
                    _ => ("RSA", None),
                };
                let crv = jwk.get("crv").and_then(|v| v.as_str());
                if kty != want_kty || want_crv.is_some_and(|c| crv != Some(c)) {
                    out.push(Problem::new(
                        format!("{path}.dpop.signing_alg"),
                        format!(
                            "{alg} requires an {want_kty}{} dpop.public_jwk",
                            want_crv.map(|c| format!(" {c}")).unwrap_or_default()
                        ),
                    ));
                }
                // APISIX: the proof is signed with the private key and advertises the JWK, so
                // both must be halves of one pair (else the IdP gets proofs it cannot verify).
                if out.len() == before
                    && let Some(pem) = &dpop.private_key
                {
                    match crate::dpop::private_key_jwk(pem.expose()) {
                        Err(e) => out.push(Problem::new(format!("{path}.dpop.private_key"), e)),
                        Ok(derived) => {
                            let mismatch = std::iter::once(&"kty")
                                .chain(members.iter())
                                .find(|m| derived.get(**m) != jwk.get(**m));
                            if let Some(m) = mismatch {
                                let got =
                                    derived.get(*m).and_then(|v| v.as_str()).unwrap_or("absent");
                                out.push(Problem::new(
                                    format!("{path}.dpop.public_jwk"),
                                    format!(
                                        "is not the public key of dpop.private_key: {m} is {got:?}"
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    fn unsupported_fields(&self) -> [(&'static str, bool); 18] {
        [
            ("response_mode", self.response_mode.is_some()),
            ("prompt", self.prompt.is_some()),
            ("display", self.display.is_some()),
            ("redirect_uri_scheme", self.redirect_uri_scheme.is_some()),
            ("redirect_uri_path", self.redirect_uri_path.is_some()),
            (
                "redirect_after_logout_uri",
                self.redirect_after_logout_uri.is_some(),
            ),
            (
                "redirect_after_logout_with_id_token_hint",
                self.redirect_after_logout_with_id_token_hint.is_some(),
            ),
            ("introspection_params", self.introspection_params.is_some()),
            (
                "introspection_token_param_name",
                self.introspection_token_param_name.is_some(),
            ),
            (
                "introspection_lock_timeout",
                self.introspection_lock_timeout.is_some(),
            ),
            (
                "introspection_lock_exptime",
                self.introspection_lock_exptime.is_some(),
            ),
            ("auth_accept_token_as", self.auth_accept_token_as.is_some()),
            (
                "auth_accept_token_as_header_name",
                self.auth_accept_token_as_header_name.is_some(),
            ),
            ("pass_cookies", self.pass_cookies.is_some()),
            ("keepalive", self.keepalive.is_some()),
            ("http_version", self.http_version.is_some()),
            ("lifecycle", self.lifecycle.is_some()),
            ("_meta", self.meta.is_some()),
        ]
    }

    /// APISIX `check_schema`: who may go without a client secret.
    fn client_secret_required(&self) -> bool {
        if self.bearer_only {
            !(self.public_key.is_some()
                || self.use_jwks
                || self.introspection_endpoint_auth_method == AuthMethod::PrivateKeyJwt)
        } else {
            !(self.token_endpoint_auth_method == AuthMethod::PrivateKeyJwt || self.use_pkce)
        }
    }

    fn check_client_assertion(&self, path: &str, out: &mut Vec<Problem>) {
        let pkjwt = self.token_endpoint_auth_method == AuthMethod::PrivateKeyJwt
            || self.introspection_endpoint_auth_method == AuthMethod::PrivateKeyJwt;
        let csjwt = self.token_endpoint_auth_method == AuthMethod::ClientSecretJwt
            || self.introspection_endpoint_auth_method == AuthMethod::ClientSecretJwt;
        let key_type = self
            .client_rsa_private_key
            .as_ref()
            .map(|k| private_key_type(k.expose()));
        if pkjwt && key_type.is_none() {
            out.push(Problem::new(
                format!("{path}.client_rsa_private_key"),
                "required by private_key_jwt",
            ));
        }
        if key_type == Some(KeyType::Unknown) {
            out.push(Problem::new(
                format!("{path}.client_rsa_private_key"),
                "must be a PEM RSA or EC private key",
            ));
        }
        if csjwt && self.client_secret.is_none() {
            out.push(Problem::new(
                format!("{path}.client_secret"),
                "required by client_secret_jwt",
            ));
        }
        let Some(alg) = self.client_jwt_assertion_alg else {
            return;
        };
        let alg_path = format!("{path}.client_jwt_assertion_alg");
        let want = match alg {
            AssertionAlg::RS256 | AssertionAlg::RS512 => Some(KeyType::Rsa),
            AssertionAlg::ES256 | AssertionAlg::ES512 => Some(KeyType::Ec),
            AssertionAlg::HS256 | AssertionAlg::HS512 => None,
        };
        if alg.is_hmac() {
            if pkjwt && !csjwt {
                out.push(Problem::new(
                    alg_path,
                    format!("{alg:?} cannot sign private_key_jwt"),
                ));
            }
        } else if csjwt && !pkjwt {
            out.push(Problem::new(
                alg_path,
                format!("{alg:?} cannot sign client_secret_jwt"),
            ));
        } else if let (Some(want), Some(have)) = (want, key_type)
            && have != KeyType::Unknown
            && have != want
        {
            out.push(Problem::new(
                alg_path,
                format!("{alg:?} does not match the {have:?} key in client_rsa_private_key"),
            ));
        } else if let Some(want) = match alg {
            AssertionAlg::ES256 => Some("P-256"),
            AssertionAlg::ES512 => Some("P-521"),
            _ => None,
        } && let Some(have) = self
            .client_rsa_private_key
            .as_ref()
            .and_then(|k| ec_curve(k.expose()))
            && have != want
        {
            // An EC key on another curve would sign a token its `alg` does not describe.
            out.push(Problem::new(
                alg_path,
                format!("{alg:?} requires a client_rsa_private_key on curve {want}, got {have}"),
            ));
        }
    }

    fn check_session(&self, path: &str, out: &mut Vec<Problem>) {
        let s = &self.session;
        let at = |field: &str| format!("{path}.session.{field}");
        match &s.secret {
            None if !self.bearer_only => {
                out.push(Problem::new(at("secret"), "required unless bearer_only"));
            }
            Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => {
                out.push(Problem::new(
                    at("secret"),
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            _ => {}
        }
        for (i, secret) in s.secret_fallbacks.iter().enumerate() {
            if secret.expose().len() < MIN_SECRET_BYTES {
                out.push(Problem::new(
                    format!("{path}.session.secret_fallbacks[{i}]"),
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
        }
        if s.storage == SessionStorage::Redis {
            out.push(Problem::new(
                at("storage"),
                "`redis` is not supported by shardgate (use `cookie`)",
            ));
        }
        if s.redis {
            out.push(Problem::new(at("redis"), unsupported("session.redis")));
        }
        if s.cookie_name.is_empty() || !s.cookie_name.bytes().all(is_cookie_name_byte) {
            out.push(Problem::new(
                at("cookie_name"),
                "must be a valid cookie name",
            ));
        }
        if !s.cookie_path.starts_with('/') {
            out.push(Problem::new(at("cookie_path"), "must start with `/`"));
        }
        if s.cookie_same_site == SameSite::None && !s.cookie_secure {
            out.push(Problem::new(
                at("cookie_same_site"),
                "`None` requires cookie_secure: true (browsers drop it otherwise)",
            ));
        }
    }
}

fn unsupported(name: &str) -> String {
    format!("APISIX attribute `{name}` is not supported by shardgate")
}

/// RFC 6265 token characters.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `url` is plain http to a host that is not loopback (APISIX's `check_https` warns).
fn is_remote_plain_http(url: &str) -> bool {
    parse_http_url(url).is_some_and(|(https, host)| !https && !is_loopback_host(host))
}

/// `(is_https, host)` of an absolute http(s) URL, or None.
fn parse_http_url(url: &str) -> Option<(bool, &str)> {
    let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
        (true, rest)
    } else {
        (false, strip_prefix_ignore_case(url, "http://")?)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then_some((https, host))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// RSA or EC, from the PEM label or, for PKCS#8, the algorithm OID in the DER.
fn private_key_type(pem: &str) -> KeyType {
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        return KeyType::Rsa;
    }
    if pem.contains("BEGIN EC PRIVATE KEY") {
        return KeyType::Ec;
    }
    let Some(body) = pem_body(pem, "PRIVATE KEY") else {
        return KeyType::Unknown;
    };
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return KeyType::Unknown;
    };
    // rsaEncryption 1.2.840.113549.1.1.1 and id-ecPublicKey 1.2.840.10045.2.1.
    const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    // The AlgorithmIdentifier sits in the first few dozen bytes of a PKCS#8 structure.
    let head = &der[..der.len().min(48)];
    if head.windows(RSA_OID.len()).any(|w| w == RSA_OID) {
        KeyType::Rsa
    } else if head.windows(EC_OID.len()).any(|w| w == EC_OID) {
        KeyType::Ec
    } else {
        KeyType::Unknown
    }
}

/// The named curve of a PEM EC private key (PKCS#8 or SEC1), from its curve OID.
fn ec_curve(pem: &str) -> Option<&'static str> {
    let body = pem_body(pem, "PRIVATE KEY").or_else(|| pem_body(pem, "EC PRIVATE KEY"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    const CURVES: [(&[u8], &str); 3] = [
        (
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            "P-256",
        ),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], "P-384"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], "P-521"),
    ];
    CURVES
        .iter()
        .find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid))
        .map(|(_, name)| *name)
}

/// The base64 body between `-----BEGIN <label>-----` and `-----END <label>-----`, whitespace removed.
fn pem_body(pem: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    Some(
        pem[start..stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    )
}

/// `ssl_verify`: a boolean, or APISIX's legacy `"no"` / `"yes"`.
fn bool_or_yes_no<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean (or \"yes\"/\"no\")")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v {
                "yes" => Ok(true),
                "no" => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> OidcConf {
        serde_json::from_value(v).unwrap()
    }

    fn minimal() -> serde_json::Value {
        json!({
            "client_id": "gw",
            "client_secret": "s3cret",
            "discovery": "https://idp.example.com/.well-known/openid-configuration",
            "session": { "secret": "0123456789abcdef" }
        })
    }

    fn messages(conf: &OidcConf) -> Vec<String> {
        conf.check("p").iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn defaults_follow_apisix_except_the_unsafe_ones() {
        let c = parse(minimal());
        assert_eq!(c.scope, "openid");
        assert_eq!(c.realm, "apisix");
        assert!(!c.bearer_only);
        assert_eq!(c.logout_path, "/logout");
        assert_eq!(c.timeout, 3);
        assert_eq!(c.timeout(), Duration::from_secs(3));
        assert!(c.ssl_verify);
        assert_eq!(
            c.introspection_endpoint_auth_method,
            AuthMethod::ClientSecretBasic
        );
        assert_eq!(c.token_endpoint_auth_method, AuthMethod::ClientSecretBasic);
        assert_eq!(c.introspection_interval, 0);
        assert_eq!(c.introspection_expiry_claim, "exp");
        assert!(c.set_access_token_header && c.set_id_token_header && c.set_userinfo_header);
        assert!(!c.access_token_in_authorization_header);
        assert!(!c.set_raw_id_token_header && !c.set_refresh_token_header);
        assert_eq!(c.unauth_action, UnauthAction::Auth);
        assert_eq!(c.api_unauth_action(), UnauthAction::Deny);
        assert_eq!(c.client_jwt_assertion_expires_in, 60);
        assert!(c.renew_access_token_on_expiry);
        assert_eq!(c.access_token_expires_in, 3600);
        assert_eq!(c.iat_slack, 120);
        assert!(!c.accept_none_alg);
        assert!(!c.accept_unsupported_alg, "safe default, unlike APISIX");
        assert_eq!(c.access_token_expires_leeway, 0);
        assert!(!c.force_reauthorize && !c.use_nonce && !c.revoke_tokens_on_logout);
        assert_eq!(c.jwk_expires_in, 86_400);
        assert!(!c.jwt_verification_cache_ignore);
        assert_eq!(c.discovery_expires_in, 86_400);
        assert!(c.introspection_enable_negative_cache);
        assert_eq!(c.introspection_negative_cache_ttl, 10);
        assert!(!c.introspection_cache_ignore);
        assert_eq!(c.authorization_state_expires_in, 300);
        assert_eq!(c.authorization_state_max_number, 10);
        assert_eq!(c.jwt_verification_cache_size, 10_000);
        assert!(!c.hide_credentials);
        assert!(c.session_contents.is_none());
        assert!(!c.bearer_enabled());
        let s = &c.session;
        assert_eq!(s.cookie_name, "session");
        assert_eq!(s.cookie_path, "/");
        assert!(s.cookie_secure, "safe default, unlike lua-resty-session");
        assert!(s.cookie_http_only);
        assert_eq!(s.cookie_same_site, SameSite::Lax);
        assert_eq!(
            (s.idling_timeout, s.rolling_timeout, s.absolute_timeout),
            (900, 3600, 86_400)
        );
        assert_eq!(s.storage, SessionStorage::Cookie);
        assert_eq!(s.compression_threshold, 1024);
        assert_eq!(c.claim_validator.audience.claim, "aud");
        assert!(!c.claim_validator.audience.required);
        assert!(c.check("p").is_empty(), "{:?}", c.check("p"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse(minimal());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"));
        assert!(!dbg.contains("0123456789abcdef"));
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn short_session_secret_is_rejected_unless_bearer_only() {
        let mut v = minimal();
        v["session"]["secret"] = json!("short");
        assert_eq!(
            messages(&parse(v.clone())),
            ["p.session.secret: must be at least 16 bytes"]
        );
        v["session"] = json!({});
        assert_eq!(
            messages(&parse(v.clone())),
            ["p.session.secret: required unless bearer_only"]
        );
        v["bearer_only"] = json!(true);
        assert!(messages(&parse(v)).is_empty());
    }

    #[test]
    fn client_secret_requirement_follows_check_schema() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("client_secret");
        assert!(messages(&parse(v.clone()))[0].starts_with("p.client_secret: required"));
        v["use_pkce"] = json!(true);
        assert!(messages(&parse(v.clone())).is_empty());
        let mut b = minimal();
        b.as_object_mut().unwrap().remove("client_secret");
        b["bearer_only"] = json!(true);
        assert_eq!(messages(&parse(b.clone())).len(), 1);
        b["use_jwks"] = json!(true);
        assert!(messages(&parse(b)).is_empty());
    }

    #[test]
    fn discovery_over_remote_http_is_a_warning_and_non_urls_are_refused() {
        for (url, ok) in [
            (
                "https://idp.example.com/.well-known/openid-configuration",
                true,
            ),
            (
                "http://127.0.0.1:9000/.well-known/openid-configuration",
                true,
            ),
            ("http://localhost/.well-known/openid-configuration", true),
            ("http://[::1]:8080/x", true),
            (
                "http://idp.example.com/.well-known/openid-configuration",
                false,
            ),
            ("ftp://idp", false),
            ("idp.example.com", false),
        ] {
            let mut v = minimal();
            v["discovery"] = json!(url);
            let c = parse(v);
            assert_eq!(
                messages(&c).is_empty(),
                url.contains("://") && !url.starts_with("ftp"),
                "{url}"
            );
            let warned = c.warnings("p").iter().any(|w| w.path == "p.discovery");
            assert_eq!(warned, !ok && url.starts_with("http:"), "{url}");
        }
    }

    #[test]
    fn timeout_must_be_at_least_one() {
        let mut v = minimal();
        v["timeout"] = json!(0);
        assert_eq!(
            messages(&parse(v)),
            ["p.timeout: must be at least 1 (seconds)"]
        );
    }

    #[test]
    fn unimplemented_options_are_named() {
        let mut v = minimal();
        v["response_mode"] = json!("form_post");
        v["pass_cookies"] = json!("a b");
        v["dpop"] = json!({ "enabled": false, "signing_alg": "ES256" });
        v["session"]["storage"] = json!("redis");
        v["session"]["redis"] = json!({ "host": "127.0.0.1" });
        let got = messages(&parse(v));
        assert_eq!(
            got,
            [
                "p.response_mode: APISIX attribute `response_mode` is not supported by shardgate",
                "p.pass_cookies: APISIX attribute `pass_cookies` is not supported by shardgate",
                "p.session.storage: `redis` is not supported by shardgate (use `cookie`)",
                "p.session.redis: APISIX attribute `session.redis` is not supported by shardgate",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_type_errors() {
        let mut v = minimal();
        v["client_secrte"] = json!("x");
        let err = serde_json::from_value::<OidcConf>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `client_secrte`"), "{err}");
    }

    #[test]
    fn deprecated_cookie_lifetime_maps_to_absolute_timeout() {
        let mut v = minimal();
        v["session"]["cookie"] = json!({ "lifetime": 7200 });
        assert_eq!(parse(v.clone()).session.absolute_timeout, 7200);
        v["session"]["absolute_timeout"] = json!(60);
        assert!(serde_json::from_value::<OidcConf>(v).is_err());
    }

    #[test]
    fn ssl_verify_accepts_legacy_no() {
        let mut v = minimal();
        v["ssl_verify"] = json!("no");
        assert!(!parse(v.clone()).ssl_verify);
        v["ssl_verify"] = json!("maybe");
        assert!(serde_json::from_value::<OidcConf>(v).is_err());
    }

    const RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----";
    const EC_PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----";

    #[test]
    fn assertion_alg_must_match_key_type() {
        assert_eq!(private_key_type(RSA_PKCS8), KeyType::Rsa);
        assert_eq!(private_key_type(EC_PKCS8), KeyType::Ec);
        let mut v = minimal();
        v["token_endpoint_auth_method"] = json!("private_key_jwt");
        assert_eq!(
            messages(&parse(v.clone())),
            ["p.client_rsa_private_key: required by private_key_jwt"]
        );
        v["client_rsa_private_key"] = json!(RSA_PKCS8);
        v["client_jwt_assertion_alg"] = json!("ES256");
        assert_eq!(
            messages(&parse(v.clone())),
            [
                "p.client_jwt_assertion_alg: ES256 does not match the Rsa key in client_rsa_private_key"
            ]
        );
        v["client_jwt_assertion_alg"] = json!("RS256");
        assert!(messages(&parse(v.clone())).is_empty());
        v["client_jwt_assertion_alg"] = json!("HS256");
        assert_eq!(
            messages(&parse(v)),
            ["p.client_jwt_assertion_alg: HS256 cannot sign private_key_jwt"]
        );
    }

    #[test]
    fn same_site_none_needs_secure_and_header_names_are_checked() {
        let mut v = minimal();
        v["session"]["cookie_same_site"] = json!("None");
        v["session"]["cookie_secure"] = json!(false);
        v["introspection_addon_headers"] = json!(["X-Ok", "Bad:Name"]);
        assert_eq!(
            messages(&parse(v)),
            [
                "p.introspection_addon_headers[1]: must be a header name (non-empty, no `:`)",
                "p.session.cookie_same_site: `None` requires cookie_secure: true (browsers drop it otherwise)",
            ]
        );
    }

    #[test]
    fn api_unauth_action_follows_unauth_action_unless_set() {
        let mut v = minimal();
        v["unauth_action"] = json!("pass");
        assert_eq!(parse(v.clone()).api_unauth_action(), UnauthAction::Pass);
        v["api_unauth_action"] = json!("auth");
        assert_eq!(parse(v).api_unauth_action(), UnauthAction::Auth);
    }
}
