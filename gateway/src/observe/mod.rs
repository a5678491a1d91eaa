//! Observability: shard-local metrics merged on scrape. The access log is written by the
//! connection loop's `log` phase (`proxy::conn`), through `tracing` with target `access`.

pub mod metrics;
pub mod redact;
