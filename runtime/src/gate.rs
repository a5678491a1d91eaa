//! Shutdown: a process-wide trigger and a shard-local in-flight gate.
//!
//! ```text
//!  signal thread --trigger()--> Shutdown --wait() wakes--> every shard's accept loop
//!                                                          |  stop accepting, gate.close()
//!                                                          v
//!                          requests hold GateGuards --> gate.drained(timeout) --> shard exits
//! ```

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::notify::LocalNotify;

/// A one-shot, process-wide shutdown trigger. `Clone + Send + Sync`.
///
/// Waiting uses a flume channel that is never sent on: `trigger()` drops its only sender, which
/// wakes every pending `recv` on every thread at once (no polling, no waker bookkeeping here).
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

struct ShutdownInner {
    triggered: AtomicBool,
    sender: Mutex<Option<flume::Sender<()>>>,
    receiver: flume::Receiver<()>,
}

impl Shutdown {
    pub fn new() -> Self {
        let (sender, receiver) = flume::bounded(1);
        Shutdown {
            inner: Arc::new(ShutdownInner {
                triggered: AtomicBool::new(false),
                sender: Mutex::new(Some(sender)),
                receiver,
            }),
        }
    }

    /// Starts shutdown; idempotent, callable from any thread.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::Release);
        // A poisoned lock only means another trigger panicked mid-way; the Option is still valid.
        let sender = self
            .inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// Completes once `trigger()` has been called (immediately if it already was). Usable in any
    /// shard's runtime (monoio `sync` carries the cross-thread wake) and in any other executor.
    pub async fn wait(&self) {
        // The channel is never sent on, so this only returns on disconnect, i.e. after trigger.
        let _ = self.inner.receiver.recv_async().await;
    }

    /// A shard-local view of this shutdown for hot paths: waiting on it touches no shared state
    /// (the global channel is awaited once per shard, by a task this spawns). Call inside a
    /// shard's runtime.
    pub fn local(&self) -> LocalShutdown {
        let local = LocalShutdown {
            inner: Rc::new(LocalShutdownInner::default()),
        };
        if self.is_triggered() {
            local.inner.triggered.set(true);
            return local;
        }
        let global = self.clone();
        let inner = Rc::clone(&local.inner);
        monoio::spawn(async move {
            global.wait().await;
            inner.triggered.set(true);
            inner.notify.notify_all();
        });
        local
    }

    /// Blocking `wait`, for plain threads.
    pub fn wait_blocking(&self) {
        let _ = self.inner.receiver.recv();
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Shard-local shutdown signal (see [`Shutdown::local`]): `!Send`, no atomics, cheap to await
/// per connection.
#[derive(Clone)]
pub struct LocalShutdown {
    inner: Rc<LocalShutdownInner>,
}

#[derive(Default)]
struct LocalShutdownInner {
    triggered: Cell<bool>,
    notify: LocalNotify,
}

impl LocalShutdown {
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// Completes once the process-wide shutdown was triggered.
    pub async fn wait(&self) {
        while !self.inner.triggered.get() {
            self.inner.notify.notified().await;
        }
    }
}

/// A shard-local count of in-flight work that refuses new entries once closed. `!Send`; clones
/// share the count.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Rc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    closed: Cell<bool>,
    in_flight: Cell<usize>,
    idle: LocalNotify,
    // Set when the drain time is over: long-lived work (upgraded tunnels) ends itself then.
    expired: Cell<bool>,
    expiry: LocalNotify,
}

impl Gate {
    pub fn new() -> Self {
        Gate::default()
    }

    /// Registers one unit of work (a connection or a request); `None` once the gate is closed.
    pub fn enter(&self) -> Option<GateGuard> {
        if self.inner.closed.get() {
            return None;
        }
        self.inner.in_flight.set(self.inner.in_flight.get() + 1);
        Some(GateGuard {
            inner: Rc::clone(&self.inner),
        })
    }

    /// Refuses further `enter`s; work already inside continues.
    pub fn close(&self) {
        self.inner.closed.set(true);
        if self.inner.in_flight.get() == 0 {
            self.inner.idle.notify_all();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Ends the drain time: every [`expired`](Self::expired) waiter wakes. For work that would
    /// otherwise never end on its own (an upgraded tunnel), so it can close its sockets cleanly
    /// instead of being dropped when the shard's runtime goes away.
    pub fn expire(&self) {
        self.inner.expired.set(true);
        self.inner.expiry.notify_all();
    }

    pub fn is_expired(&self) -> bool {
        self.inner.expired.get()
    }

    /// Completes once [`expire`](Self::expire) was called (immediately if it was).
    pub async fn expired(&self) {
        while !self.inner.expired.get() {
            self.inner.expiry.notified().await;
        }
    }

    /// Waits until no guard is held, up to `timeout`; true if drained. Does not close the gate:
    /// call [`close`](Self::close) first, or new work can keep it busy. Needs the monoio timer
    /// (every shard runtime has it).
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait_idle = async {
            // Bounded by the number of times the count reaches zero while work keeps entering.
            while self.inner.in_flight.get() > 0 {
                self.inner.idle.notified().await;
            }
        };
        monoio::time::timeout(timeout, wait_idle).await.is_ok()
    }
}

/// Proof of one unit of in-flight work; dropping it leaves the gate.
pub struct GateGuard {
    inner: Rc<GateInner>,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let left = self.inner.in_flight.get().saturating_sub(1);
        self.inner.in_flight.set(left);
        if left == 0 {
            self.inner.idle.notify_all();
        }
    }
}
