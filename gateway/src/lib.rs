//! shardgate: an edge API gateway on a thread-per-core io_uring runtime.
//!
//! The crate is laid out along the request's path:
//!
//! ```text
//! config/     APISIX-shaped YAML model (file.rs) -> compiled, per-shard types (build.rs)
//! http1/      sans-IO HTTP/1.1 codec: request/response heads, body framing, chunked
//! route/      compiled route table: host, uri (exact and prefix), methods, priority
//! upstream/   balancers, shard-local keep-alive pools, passive health
//! proxy/      the connection loop and the request pipeline as named phases
//! pipeline/   the Plugin trait and phases, the request context, the plugin registry
//! plugins/    one folder per plugin (openid_connect/: glue to the sans-IO `shardgate-oidc` crate)
//! admin/      /healthz /readyz /metrics
//! observe/    access log and shard-local metrics merged by an actor
//! error.rs    the gateway error enum and the ONE place an error becomes an HTTP response
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod error;
pub mod http1;
pub mod observe;
pub mod pipeline;
pub mod plugins;
pub mod proxy;
pub mod published;
pub mod route;
pub mod server;
pub mod upstream;
