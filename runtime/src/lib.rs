//! shardgate-runtime: the thread-per-core substrate the gateway runs on. It knows nothing of HTTP.
//!
//! ```text
//!   main: signals::block_signals() ──> spawn_signal_thread() ──Signal──> control
//!                                                                          │
//!   control threads (actors)                       shards (one pinned thread per core, monoio)
//!  ┌───────────────────────────┐  Addr::tell/ask  ┌──────────────────────────────────────────┐
//!  │ Mailbox<M> loop           │ <─────────────── │ shard-0: bind_reuseport ─> conn tasks    │
//!  │ Publisher<T>::publish ────┼────────────────> │   Local<T>::load() -> Rc<Arc<T>>         │
//!  │ Shutdown::trigger() ──────┼─ wakes ────────> │   Gate::enter() / close() / drained()    │
//!  └───────────────────────────┘                  │   clock::shard_clock() (10 ms ticks)     │
//!                                                 │ shard-1: ... same, shares nothing ...    │
//!                                                 └──────────────────────────────────────────┘
//! ```
//!
//! - [`shard`]: [`ShardSet`] starts one monoio runtime per thread (io_uring with COOP_TASKRUN,
//!   or epoll; `Auto` falls back and says why), pinned round-robin to the allowed CPUs.
//! - [`listener`]: SO_REUSEPORT listeners, one per shard per address; the kernel balances.
//! - [`actor`]: bounded mailboxes; `Addr` works from any thread, `ask` has a deadline, and a
//!   shard awaiting a reply keeps serving everything else.
//! - [`snapshot`]: immutable values (config, JWKS) published once and swapped in by each shard;
//!   the request path clones a shard-local `Rc`, never a shared atomic.
//! - [`clock`]: the only place time is read; coarse per shard, manual in tests.
//! - [`gate`]: process-wide `Shutdown` plus a shard-local in-flight `Gate` for draining.
//! - [`signals`]: SIGHUP -> reload, SIGTERM/SIGINT -> terminate, as messages.
//!
//! Unsafe code is limited to libc calls in `shard` (CPU affinity), `signals`, and the idle-socket
//! peek in `listener`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod actor;
pub mod clock;
pub mod error;
pub mod gate;
pub mod listener;
mod notify;
pub mod shard;
pub mod signals;
pub mod snapshot;

pub use actor::{Addr, AskError, Closed, Mailbox, Reply, mailbox};
pub use clock::{Clock, CoarseClock, ManualClock, SystemClock, shard_clock};
pub use error::Error;
pub use gate::{Gate, GateGuard, LocalShutdown, Shutdown};
pub use listener::{IdleState, bind_reuseport, idle_state, tune_stream};
pub use shard::{
    ActiveDriver, DriverChoice, ShardInfo, ShardSet, available_cores, run_on_current_thread,
    run_on_current_thread_with,
};
pub use signals::{Signal, block_signals, spawn_signal_thread};
pub use snapshot::{Local, Publisher, Subscription};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    /// The thread-crossing types must stay `Send`/`Sync`; shard-local ones are `!Send` by design
    /// (Rc inside), which the compiler enforces wherever they are misused.
    #[test]
    fn thread_crossing_types_are_send() {
        send_sync::<Addr<String>>();
        send::<Mailbox<String>>();
        send::<Reply<Vec<u8>>>();
        send_sync::<Publisher<String>>();
        send::<Subscription<String>>();
        send_sync::<Shutdown>();
        send_sync::<ManualClock>();
        send_sync::<SystemClock>();
        send_sync::<Error>();
        send_sync::<AskError>();
    }
}
