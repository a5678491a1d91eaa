//! Per-shard listeners.
//!
//! Every shard binds its own listener on the same address with SO_REUSEPORT, and the kernel
//! spreads incoming connections across them: no accept lock, no cross-shard hand-off.

use std::io;
use std::net::SocketAddr;

use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use crate::error::Error;

/// Binds a TCP listener with SO_REUSEPORT and SO_REUSEADDR. Call it once per shard per address,
/// inside that shard's runtime (the listener is registered with the shard's driver; monoio
/// panics when there is no current runtime).
///
/// `backlog` is clamped to `i32::MAX`; the kernel further caps it at `net.core.somaxconn`.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(i32::try_from(backlog).unwrap_or(i32::MAX));
    TcpListener::bind_with_config(addr, &opts).map_err(|source| Error::Bind { addr, source }.into())
}

/// Applies the per-connection socket options the gateway wants on accepted and connected
/// streams. Today that is TCP_NODELAY: responses are written whole, so Nagle only adds latency.
pub fn tune_stream(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}
