//! The crate's one error family.
//!
//! Public functions that mirror std or monoio (`run_on_current_thread`, `ShardSet::spawn`,
//! `bind_reuseport`, signals) return `std::io::Result` so callers can `?` them next to other I/O;
//! the `io::Error` wraps an [`Error`] that names what was being done, keeps the OS error kind,
//! and can be recovered with `io::Error::get_ref()` + `downcast_ref::<Error>()`.

use std::io;
use std::net::SocketAddr;

use crate::shard::ActiveDriver;

/// What went wrong in the runtime substrate, with the context the bare OS error lacks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel or the process limits refused to build a runtime on this driver.
    #[error("building the {driver} runtime: {source}")]
    Driver {
        driver: ActiveDriver,
        source: io::Error,
    },
    /// The OS refused to start a shard thread.
    #[error("starting shard {id}: {source}")]
    ShardSpawn { id: usize, source: io::Error },
    /// A shard thread died (panicked) before it reported whether its runtime was built.
    #[error("shard {id} exited during startup")]
    ShardLost { id: usize },
    /// `ShardSet::spawn` was asked for zero shards.
    #[error("a shard set needs at least one shard")]
    NoShards,
    /// Binding a listener failed (port in use, address not local, ...).
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// Signal mask or signal thread setup failed.
    #[error("signal setup: {0}")]
    Signal(io::Error),
    /// A driver name that is none of `auto`, `uring` (`io_uring`), `epoll`.
    #[error("unknown driver {0:?}: expected auto, uring or epoll")]
    UnknownDriver(String),
    /// An actor request failed.
    #[error(transparent)]
    Ask(#[from] AskError),
}

impl Error {
    fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Driver { source, .. }
            | Error::ShardSpawn { source, .. }
            | Error::Bind { source, .. }
            | Error::Signal(source) => source.kind(),
            Error::ShardLost { .. } => io::ErrorKind::Other,
            Error::NoShards | Error::UnknownDriver(_) => io::ErrorKind::InvalidInput,
            Error::Ask(AskError::Timeout) => io::ErrorKind::TimedOut,
            Error::Ask(_) => io::ErrorKind::BrokenPipe,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// Why [`Addr::ask`](crate::actor::Addr::ask) produced no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// Every `Mailbox` of the actor is gone: the actor stopped.
    #[error("actor stopped: its mailbox is closed")]
    Closed,
    /// No answer before the deadline (the request may still be processed later).
    #[error("actor did not answer in time")]
    Timeout,
    /// The actor dropped the `Reply` without sending a value.
    #[error("actor dropped the reply without answering")]
    Dropped,
}
