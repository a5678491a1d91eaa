//! Plugins run inside the request pipeline (`proxy::pipeline`). Today there is one, `openid-connect`,
//! which runs in the `rewrite` phase as APISIX's does (priority 2599).
//!
//! A plugin either lets the request continue, adding what the upstream should see ([`Outcome`]),
//! or answers for itself ([`PluginResponse`]: 401, 403, a 302 to the identity provider, ...).

pub mod openid_connect;

use std::rc::Rc;

use crate::http1::Span;

/// A response a plugin writes instead of proxying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Stable short code for metrics and logs (`invalid_token`, `insufficient_scope`, ...).
    pub code: &'static str,
    /// Why, for the log line; never sent to the client unless the body says so on purpose.
    pub reason: String,
}

/// A header value the pipeline writes upstream without copying when it can.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    /// Shared with a shard-local cache entry (e.g. a precomputed `X-Userinfo`).
    Shared(Rc<str>),
    Owned(String),
    /// A slice of the client's request head (e.g. the bearer token itself).
    Request(Span),
}

/// What a plugin adds to the proxied exchange. Reused per connection: cleared, not reallocated.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Headers added to the upstream request (after the identity headers were stripped).
    pub upstream_headers: Vec<(&'static str, HeaderValue)>,
    /// Keep the client's `Authorization` header from the upstream (`hide_credentials`).
    pub strip_authorization: bool,
    /// Remove cookies whose name starts with this prefix from the upstream `Cookie` header.
    pub strip_cookie_prefix: Option<Rc<str>>,
    /// Headers added to the client response (`Set-Cookie` for a refreshed session).
    pub response_headers: Vec<(String, String)>,
    /// Strip client-sent identity headers (`X-Access-Token`, `X-ID-Token`, ...) before proxying.
    pub strip_identity_headers: bool,
}

impl Outcome {
    pub fn clear(&mut self) {
        self.upstream_headers.clear();
        self.strip_authorization = false;
        self.strip_cookie_prefix = None;
        self.response_headers.clear();
        self.strip_identity_headers = false;
    }
}

/// The identity headers a client must never be able to set: they carry identity the gateway vouches for.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-access-token",
    "x-id-token",
    "x-userinfo",
    "x-refresh-token",
    "x-raw-id-token",
];

/// Whether `name` is one of [`IDENTITY_HEADERS`], ignoring case and counting `_` as `-`: CGI/WSGI
/// style servers map both to the same variable, so `X_Userinfo` would pass as `X-Userinfo`.
pub fn is_identity_header(name: &[u8]) -> bool {
    IDENTITY_HEADERS.iter().any(|i| {
        i.len() == name.len()
            && i.bytes().zip(name).all(|(a, &b)| {
                let b = if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                };
                a == b
            })
    })
}

#[cfg(test)]
mod tests {
    use super::is_identity_header;

    #[test]
    fn identity_header_names_match_any_case_and_underscores() {
        for n in [
            "X-Userinfo",
            "x_userinfo",
            "X_ID_TOKEN",
            "x-Access_Token",
            "X-Raw-Id-Token",
        ] {
            assert!(is_identity_header(n.as_bytes()), "{n}");
        }
        for n in ["X-Userinfo2", "Authorization", "X-Id", "x-id_tokens"] {
            assert!(!is_identity_header(n.as_bytes()), "{n}");
        }
    }
}
