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

/// What an idle keep-alive connection's socket holds, seen without consuming anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleState {
    /// Nothing to read and still open.
    Clean,
    /// The peer closed it (or reset it).
    Closed,
    /// Bytes are waiting that nobody asked for.
    Unsolicited,
}

/// A non-blocking one-byte `MSG_PEEK` on an idle connection, as nginx's idle-connection read
/// handler does: a reused connection must hold neither bytes nor an EOF. MSG_DONTWAIT keeps it
/// non-blocking whatever mode the driver left the socket in; nothing is consumed.
#[allow(unsafe_code)]
/// `fd` must be a socket the caller owns and keeps open (a TLS stream over a socket does not lend
/// the socket out, so callers keep its raw fd).
pub fn idle_state(fd: std::os::fd::RawFd) -> IdleState {
    let mut byte = 0u8;
    // SAFETY: the buffer is one byte on the stack and `recv` writes at most its length; a stale
    // fd can only make the call fail (EBADF, seen as Closed) or peek, never consume, bytes.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => IdleState::Closed,
        n if n > 0 => IdleState::Unsolicited,
        _ => match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => IdleState::Clean,
            _ => IdleState::Closed,
        },
    }
}
