//! The plugins, one folder each. Each implements `pipeline::Plugin` and is listed once in
//! `pipeline/registry.rs`; nothing else in the gateway names a plugin.
//!
//! - `openid_connect/`: APISIX's `openid-connect` (priority 2599, `rewrite` phase): bearer tokens,
//!   browser sessions, login, logout, back-channel logout.
//! - `response_rewrite/`: APISIX's `response-rewrite` (priority 899, `header_filter` and
//!   `body_filter`): status, response headers, body replacement and regex filters.
//! - `cors.rs`: APISIX's `cors` (priority 4000, `rewrite`): CORS headers, preflights answered.
//! - `ip_restriction.rs`: APISIX's `ip-restriction` (priority 3000, `access`).
//! - `redirect.rs`: APISIX's `redirect` (priority 900, `rewrite`).
//! - `real_ip.rs`: APISIX's `real-ip` (priority 23000, `rewrite`): `remote_addr` from a header.
//! - `request_id.rs`: APISIX's `request-id` (priority 12015, `rewrite`), W3C `traceparent`.
//! - `limit/`: `limit-count` (1002) and `limit-req` (1001), `access` phase, exact per process.
//! - `proxy_rewrite.rs`: `proxy-rewrite` (1008, `rewrite`): uri, regex_uri, host, method, headers.
//! - `vars.rs`: APISIX's `$var` templates, shared by the plugins that take them.

pub mod cors;
pub mod ip_restriction;
pub mod limit;
pub mod openid_connect;
pub mod proxy_rewrite;
pub mod real_ip;
pub mod redirect;
pub mod request_id;
pub mod response_rewrite;
pub mod vars;

pub use crate::pipeline::{
    HeaderValue, IDENTITY_HEADERS, Outcome, Response as PluginResponse, is_identity_header,
};
