//! The I/O half of the relying party: an HTTP/1.1 client for IdP calls and the provider actor
//! (discovery, JWKS rotation, unknown-kid refetch, single-flight shared calls). Everything else in
//! this crate is sans-IO and is driven by these and by the gateway.

pub mod client;
pub mod provider;
