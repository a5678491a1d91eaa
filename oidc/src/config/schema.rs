//! APISIX's JSON schema for `openid-connect`, checked on the generic value before the typed parse.
//!
//! serde stops at the first type error; this pass walks the whole value and reports every
//! problem with its path, the way APISIX's schema check names `property "x" validation failed`.
//! It also normalises what APISIX accepts but the typed structs cannot hold: the legacy
//! `ssl_verify: "no"`, negative integers where APISIX has no minimum (read as the nearest value
//! that works, with a warning), numbers in `authorization_params`, unknown members of the objects
//! APISIX leaves open (dropped, with a warning). A value with a type error is removed, so the
//! typed parse and the semantic checks that follow still run on the rest of the config.

use serde_json::{Map, Value};

use super::Problem;

/// What one attribute must be.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    Str,
    Bool,
    /// `ssl_verify`: a boolean, or the legacy `"no"` APISIX's `check_schema` still converts.
    BoolOrNo,
    /// An integer at least this (APISIX's `minimum`, or shardgate's for its own attributes).
    IntMin(i64),
    /// An integer APISIX takes without a minimum. Below the floor it is read as the floor, with
    /// a warning saying what the value risks.
    IntFloor(i64, &'static str),
    Enum(&'static [&'static str]),
    /// A string APISIX leaves free, of which only these values do anything: another string is
    /// dropped (the default applies) with a warning saying what happens instead.
    EnumOrDefault(&'static [&'static str], &'static str),
    /// An array of strings: at least `min_items`, and header names (no `:`) when `headers`.
    Strs {
        min_items: usize,
        headers: bool,
    },
    Obj(&'static Obj),
    /// Any JSON object, kept as it is (`claim_schema`).
    AnyObj,
    /// `authorization_params`: scalar values, sent as strings.
    Params,
    /// `dpop.public_jwk`: an object without private key members.
    PublicJwk,
    /// Anything: parsed only to be named by `OidcConf::check` (unsupported attributes).
    Any,
    /// A flat lua-resty-openidc name that APISIX refuses in favour of the nested one.
    Reserved(&'static str),
}

/// An object's attributes. `open` objects (APISIX sets no `additionalProperties: false`) take
/// unknown members, which are dropped with a warning since nothing reads them.
#[derive(Debug)]
pub(crate) struct Obj {
    pub attrs: &'static [(&'static str, Ty)],
    pub open: bool,
    pub required: &'static [&'static str],
}

const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "client_secret_jwt",
];
const UNAUTH_ACTIONS: &[&str] = &["auth", "deny", "pass"];
const NEGATIVE_TIMEOUT: &str = "is negative, which lua-resty-session reads as no timeout";

pub(crate) static ROOT: Obj = Obj {
    open: false,
    required: &["client_id", "discovery"],
    attrs: &[
        ("client_id", Ty::Str),
        ("client_secret", Ty::Str),
        ("discovery", Ty::Str),
        ("scope", Ty::Str),
        (
            "required_scopes",
            Ty::Strs {
                min_items: 0,
                headers: false,
            },
        ),
        ("realm", Ty::Str),
        ("bearer_only", Ty::Bool),
        ("logout_path", Ty::Str),
        ("post_logout_redirect_uri", Ty::Str),
        ("redirect_uri", Ty::Str),
        ("timeout", Ty::IntMin(1)),
        ("ssl_verify", Ty::BoolOrNo),
        ("ssl_ca_file", Ty::Str),
        ("introspection_endpoint", Ty::Str),
        (
            "introspection_endpoint_auth_method",
            Ty::EnumOrDefault(
                AUTH_METHODS,
                "client_secret_basic is used (APISIX would call the introspection endpoint \
                 without client credentials)",
            ),
        ),
        (
            "introspection_interval",
            Ty::IntFloor(0, "is negative: read as 0 (cache until the token expires)"),
        ),
        ("introspection_expiry_claim", Ty::Str),
        (
            "introspection_addon_headers",
            Ty::Strs {
                min_items: 1,
                headers: true,
            },
        ),
        (
            "token_endpoint_auth_method",
            Ty::EnumOrDefault(
                AUTH_METHODS,
                "client_secret_basic is used, as lua-resty-openidc falls back when the IdP \
                 advertises no other method",
            ),
        ),
        ("public_key", Ty::Str),
        ("use_jwks", Ty::Bool),
        ("token_signing_alg_values_expected", Ty::Str),
        ("use_pkce", Ty::Bool),
        ("par", Ty::Obj(&PAR)),
        ("dpop", Ty::Obj(&DPOP)),
        (
            "dpop_bound_tokens",
            Ty::Enum(&["required", "optional", "off"]),
        ),
        ("dpop_proof_max_age", Ty::IntMin(1)),
        ("dpop_nonce", Ty::Bool),
        ("set_access_token_header", Ty::Bool),
        ("access_token_in_authorization_header", Ty::Bool),
        ("set_id_token_header", Ty::Bool),
        ("set_raw_id_token_header", Ty::Bool),
        ("set_userinfo_header", Ty::Bool),
        ("set_refresh_token_header", Ty::Bool),
        ("session", Ty::Obj(&SESSION)),
        ("claim_validator", Ty::Obj(&CLAIM_VALIDATOR)),
        ("claim_schema", Ty::AnyObj),
        ("unauth_action", Ty::Enum(UNAUTH_ACTIONS)),
        ("api_unauth_action", Ty::Enum(UNAUTH_ACTIONS)),
        ("proxy_opts", Ty::Obj(&PROXY_OPTS)),
        ("authorization_params", Ty::Params),
        ("client_rsa_private_key", Ty::Str),
        ("client_rsa_private_key_id", Ty::Str),
        (
            "client_jwt_assertion_expires_in",
            Ty::IntFloor(
                1,
                "is below 1: read as 1 second, and most IdPs refuse an assertion that expires \
                 that soon",
            ),
        ),
        (
            "client_jwt_assertion_alg",
            Ty::Enum(&["HS256", "HS512", "RS256", "RS512", "ES256", "ES512"]),
        ),
        ("client_jwt_assertion_audience", Ty::Str),
        ("renew_access_token_on_expiry", Ty::Bool),
        (
            "access_token_expires_in",
            Ty::IntFloor(
                1,
                "is below 1: read as 1 second, so a token without expires_in is renewed on \
                 almost every request",
            ),
        ),
        (
            "refresh_session_interval",
            Ty::IntFloor(
                0,
                "is negative: read as 0, which re-authenticates on every request",
            ),
        ),
        (
            "iat_slack",
            Ty::IntFloor(0, "is negative: read as 0 (no clock skew allowed)"),
        ),
        ("accept_none_alg", Ty::Bool),
        ("accept_unsupported_alg", Ty::Bool),
        (
            "access_token_expires_leeway",
            Ty::IntFloor(0, "is negative: read as 0 (renew at expiry)"),
        ),
        ("force_reauthorize", Ty::Bool),
        ("use_nonce", Ty::Bool),
        ("revoke_tokens_on_logout", Ty::Bool),
        (
            "jwk_expires_in",
            Ty::IntFloor(
                1,
                "is below 1: read as 1 second, so the JWKS is fetched from the IdP again \
                 almost every second",
            ),
        ),
        ("jwt_verification_cache_ignore", Ty::Bool),
        ("cache_segment", Ty::Str),
        ("session_contents", Ty::Obj(&SESSION_CONTENTS)),
        // lua-resty-openidc options shardgate implements, and shardgate's own.
        ("discovery_expires_in", Ty::IntMin(0)),
        ("introspection_enable_negative_cache", Ty::Bool),
        ("introspection_negative_cache_ttl", Ty::IntMin(0)),
        ("introspection_cache_ignore", Ty::Bool),
        ("authorization_state_expires_in", Ty::IntMin(0)),
        ("authorization_state_max_number", Ty::IntMin(0)),
        ("symmetric_key", Ty::Str),
        ("jwt_verification_cache_size", Ty::IntMin(0)),
        ("hide_credentials", Ty::Bool),
        // lua-resty-openidc options shardgate does not implement: named by `check`.
        ("response_mode", Ty::Any),
        ("prompt", Ty::Any),
        ("display", Ty::Any),
        ("redirect_uri_scheme", Ty::Any),
        ("redirect_uri_path", Ty::Any),
        ("redirect_after_logout_uri", Ty::Any),
        ("redirect_after_logout_with_id_token_hint", Ty::Any),
        ("introspection_params", Ty::Any),
        ("introspection_token_param_name", Ty::Any),
        ("introspection_lock_timeout", Ty::Any),
        ("introspection_lock_exptime", Ty::Any),
        ("auth_accept_token_as", Ty::Any),
        ("auth_accept_token_as_header_name", Ty::Any),
        ("pass_cookies", Ty::Any),
        ("keepalive", Ty::Any),
        ("http_version", Ty::Any),
        ("lifecycle", Ty::Any),
        ("_meta", Ty::Any),
        // APISIX's `reserved_flat_opts`: the par/dpop objects own these.
        ("use_par", Ty::Reserved("par.enabled")),
        (
            "pushed_authorization_request_endpoint",
            Ty::Reserved("par.endpoint"),
        ),
        (
            "pushed_authorization_request_endpoint_auth_method",
            Ty::Reserved("par.endpoint_auth_method"),
        ),
        ("use_dpop", Ty::Reserved("dpop.enabled")),
        ("dpop_signing_alg", Ty::Reserved("dpop.signing_alg")),
        ("dpop_private_key", Ty::Reserved("dpop.private_key")),
        ("dpop_public_jwk", Ty::Reserved("dpop.public_jwk")),
    ],
};

static PAR: Obj = Obj {
    open: false,
    required: &[],
    attrs: &[
        ("enabled", Ty::Bool),
        ("endpoint", Ty::Str),
        ("endpoint_auth_method", Ty::Enum(AUTH_METHODS)),
    ],
};

static DPOP: Obj = Obj {
    open: false,
    required: &[],
    attrs: &[
        ("enabled", Ty::Bool),
        ("signing_alg", Ty::Enum(&["ES256", "RS256", "PS256"])),
        ("private_key", Ty::Str),
        ("public_jwk", Ty::PublicJwk),
    ],
};

static SESSION: Obj = Obj {
    open: false,
    // APISIX requires `secret` whenever a `session` object is given (bearer_only or not).
    required: &["secret"],
    attrs: &[
        ("secret", Ty::Str),
        (
            "secret_fallbacks",
            Ty::Strs {
                min_items: 0,
                headers: false,
            },
        ),
        ("cookie_name", Ty::Str),
        ("cookie_path", Ty::Str),
        ("cookie_domain", Ty::Str),
        ("cookie_secure", Ty::Bool),
        ("cookie_http_only", Ty::Bool),
        (
            "cookie_same_site",
            Ty::Enum(&["Strict", "Lax", "None", "Default"]),
        ),
        ("idling_timeout", Ty::IntFloor(0, NEGATIVE_TIMEOUT)),
        ("rolling_timeout", Ty::IntFloor(0, NEGATIVE_TIMEOUT)),
        ("absolute_timeout", Ty::IntFloor(0, NEGATIVE_TIMEOUT)),
        ("cookie", Ty::Obj(&SESSION_COOKIE)),
        ("storage", Ty::Enum(&["cookie", "redis"])),
        ("redis", Ty::Any),
        ("compression_threshold", Ty::IntMin(0)),
    ],
};

static SESSION_COOKIE: Obj = Obj {
    open: true,
    required: &[],
    attrs: &[("lifetime", Ty::IntFloor(0, NEGATIVE_TIMEOUT))],
};

static CLAIM_VALIDATOR: Obj = Obj {
    open: true,
    required: &[],
    attrs: &[
        ("issuer", Ty::Obj(&ISSUER)),
        ("audience", Ty::Obj(&AUDIENCE)),
    ],
};

static ISSUER: Obj = Obj {
    open: true,
    required: &[],
    attrs: &[(
        "valid_issuers",
        Ty::Strs {
            min_items: 0,
            headers: false,
        },
    )],
};

static AUDIENCE: Obj = Obj {
    open: true,
    required: &[],
    attrs: &[
        ("claim", Ty::Str),
        ("required", Ty::Bool),
        ("match_with_client_id", Ty::Bool),
    ],
};

static PROXY_OPTS: Obj = Obj {
    open: true,
    required: &[],
    attrs: &[
        ("http_proxy", Ty::Str),
        ("https_proxy", Ty::Str),
        ("http_proxy_authorization", Ty::Str),
        ("https_proxy_authorization", Ty::Str),
        ("no_proxy", Ty::Str),
    ],
};

/// lua-resty-openidc's `session_contents` (not in APISIX's schema, which passes it through).
static SESSION_CONTENTS: Obj = Obj {
    open: true,
    required: &[],
    attrs: &[
        ("access_token", Ty::Bool),
        ("id_token", Ty::Bool),
        ("enc_id_token", Ty::Bool),
        ("user", Ty::Bool),
    ],
};

/// Problems found by the pass. `errored` holds every path that got an error, so later passes
/// can report each path once.
#[derive(Default)]
pub(crate) struct Findings {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Findings {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Problem::new(path, message));
    }
    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }
}

/// Checks and normalises `value` (the plugin's attributes) in place.
pub(crate) fn check(value: &mut Value, path: &str, out: &mut Findings) {
    match value {
        Value::Object(map) => check_obj(&ROOT, map, path, out),
        other => out.error(
            path,
            format!("expected an object, got {}", type_name(other)),
        ),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn check_obj(obj: &Obj, map: &mut Map<String, Value>, path: &str, out: &mut Findings) {
    // A YAML `key:` with no value is a null: absent, as a nil is in Lua.
    map.retain(|_, v| !v.is_null());
    for name in obj.required {
        if !map.contains_key(*name) {
            out.error(&join(path, name), "is required");
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let at = join(path, &key);
        let keep = match obj.attrs.iter().find(|(name, _)| *name == key) {
            Some((_, ty)) => match map.get_mut(&key) {
                Some(v) => check_value(*ty, v, &at, out),
                None => true,
            },
            None if obj.open => {
                out.warn(
                    &at,
                    "unknown attribute, ignored (APISIX leaves this object open, so a \
                     misspelt name here is not an error)",
                );
                false
            }
            None => {
                out.error(&at, "unknown attribute");
                false
            }
        };
        if !keep {
            map.remove(&key);
        }
    }
}

/// Returns whether to keep the value (false: drop it, an error or warning was recorded).
fn check_value(ty: Ty, v: &mut Value, at: &str, out: &mut Findings) -> bool {
    let expected = match ty {
        Ty::Str => {
            if v.is_string() {
                return true;
            }
            "a string"
        }
        Ty::Bool => {
            if v.is_boolean() {
                return true;
            }
            "a boolean"
        }
        Ty::BoolOrNo => {
            if v.as_str() == Some("no") {
                *v = Value::Bool(false);
                return true;
            }
            if v.is_boolean() {
                return true;
            }
            "a boolean (or the legacy \"no\")"
        }
        Ty::IntMin(min) => {
            if let Some(i) = integer(v) {
                if i < min {
                    out.error(at, format!("must be at least {min}"));
                    return false;
                }
                *v = Value::from(i);
                return true;
            }
            "an integer"
        }
        Ty::IntFloor(floor, risk) => {
            if let Some(i) = integer(v) {
                if i < floor {
                    out.warn(at, format!("{i} {risk}"));
                    *v = Value::from(floor);
                } else {
                    *v = Value::from(i);
                }
                return true;
            }
            "an integer"
        }
        Ty::Enum(values) => {
            if let Some(s) = v.as_str() {
                if values.contains(&s) {
                    return true;
                }
                out.error(at, format!("must be one of: {}", values.join(", ")));
                return false;
            }
            "a string"
        }
        Ty::EnumOrDefault(values, instead) => {
            if let Some(s) = v.as_str() {
                if values.contains(&s) {
                    return true;
                }
                out.warn(
                    at,
                    format!(
                        "{s:?} is not a client authentication method shardgate or \
                         lua-resty-openidc implements ({}): ignored, {instead}",
                        values.join(", ")
                    ),
                );
                return false;
            }
            "a string"
        }
        Ty::Strs { min_items, headers } => {
            if let Some(items) = v.as_array_mut() {
                if items.len() < min_items {
                    out.error(at, format!("must have at least {min_items} item(s)"));
                    return false;
                }
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{at}[{i}]");
                    match item.as_str() {
                        None => {
                            out.error(&at, format!("expected a string, got {}", type_name(item)));
                            ok = false;
                        }
                        Some(h) if headers && (h.is_empty() || h.contains(':')) => {
                            out.error(&at, "must be a header name (non-empty, no `:`)");
                            ok = false;
                        }
                        Some(_) => {}
                    }
                }
                return ok;
            }
            "an array of strings"
        }
        Ty::Obj(obj) => {
            if let Some(map) = v.as_object_mut() {
                check_obj(obj, map, at, out);
                return true;
            }
            "an object"
        }
        Ty::AnyObj => {
            if v.is_object() {
                return true;
            }
            "an object"
        }
        Ty::Params => {
            if let Some(map) = v.as_object_mut() {
                let mut ok = true;
                for (name, value) in map.iter_mut() {
                    match value {
                        Value::String(_) => {}
                        // Sent in the query string, where every value is text.
                        Value::Number(n) => *value = Value::String(n.to_string()),
                        Value::Bool(b) => *value = Value::String(b.to_string()),
                        other => {
                            out.error(
                                &join(at, name),
                                format!(
                                    "expected a string, number or boolean, got {}",
                                    type_name(other)
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                return ok;
            }
            "an object"
        }
        Ty::PublicJwk => {
            if let Some(map) = v.as_object() {
                const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
                if let Some(member) = PRIVATE.iter().find(|m| map.contains_key(**m)) {
                    out.error(
                        at,
                        format!("must be a public key: it holds the private member `{member}`"),
                    );
                    return false;
                }
                return true;
            }
            "an object"
        }
        Ty::Any => return true,
        Ty::Reserved(owner) => {
            out.error(at, format!("is not allowed, use `{owner}` instead"));
            return false;
        }
    };
    out.error(at, format!("expected {expected}, got {}", type_name(v)));
    false
}

/// An integral JSON number (`3.0` counts, as in Lua), or None.
fn integer(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    #[allow(clippy::cast_possible_truncation)]
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
