//! The plugins, one folder each. Each implements `pipeline::Plugin` and is listed once in
//! `pipeline/registry.rs`; nothing else in the gateway names a plugin.
//!
//! - `openid_connect/`: APISIX's `openid-connect` (priority 2599, `rewrite` phase): bearer tokens,
//!   browser sessions, login, logout, back-channel logout.
//! - `cors.rs`: APISIX's `cors` (priority 4000, `rewrite`): CORS headers, preflights answered.
//! - `ip_restriction.rs`: APISIX's `ip-restriction` (priority 3000, `access`).
//! - `redirect.rs`: APISIX's `redirect` (priority 900, `rewrite`).

pub mod cors;
pub mod ip_restriction;
pub mod openid_connect;
pub mod redirect;

pub use crate::pipeline::{
    HeaderValue, IDENTITY_HEADERS, Outcome, Response as PluginResponse, is_identity_header,
};
