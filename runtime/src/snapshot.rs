//! Snapshots: one immutable value published from the control side, swapped in by every shard.
//!
//! ```text
//!  Publisher (control) --publish(Arc<T>)--> per-subscriber slot + doorbell (flume, cap 1)
//!                                                   |
//!  shard: Subscription::attach() -> task: doorbell.recv_async() -> swap Local's Rc<Arc<T>>
//!  request path: local.load() -> Rc<Arc<T>>   (a non-atomic Rc increment, no shared atomics)
//! ```
//!
//! Each subscriber keeps only the newest value: publishing faster than a shard swaps skips
//! intermediate versions and never queues them, so a stalled shard costs one `Arc`, not a
//! backlog. A request that cloned the `Rc` keeps its version alive until it finishes, so a
//! swap never pulls a value out from under in-flight work.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use crate::notify::LocalNotify;

/// The control-side owner of a snapshot. `Send + Sync`.
pub struct Publisher<T> {
    state: Mutex<PublisherState<T>>,
}

struct PublisherState<T> {
    version: u64,
    current: Arc<T>,
    subscribers: Vec<Outbox<T>>,
}

/// The publisher's end of one subscriber.
struct Outbox<T> {
    slot: Arc<Slot<T>>,
    doorbell: flume::Sender<()>,
}

/// The newest value not yet taken by the subscriber.
struct Slot<T> {
    latest: Mutex<Option<(u64, Arc<T>)>>,
}

impl<T> Slot<T> {
    fn put(&self, version: u64, value: Arc<T>) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some((version, value));
    }

    fn take(&self) -> Option<(u64, Arc<T>)> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl<T: Send + Sync + 'static> Publisher<T> {
    /// A publisher whose first value (version 0) is `initial`.
    pub fn new(initial: Arc<T>) -> Self {
        Publisher {
            state: Mutex::new(PublisherState {
                version: 0,
                current: initial,
                subscribers: Vec::new(),
            }),
        }
    }

    /// Makes `value` current and delivers it to every live subscriber; returns its version.
    pub fn publish(&self, value: Arc<T>) -> u64 {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version;
        state.current = Arc::clone(&value);
        state.subscribers.retain(|sub| {
            sub.slot.put(version, Arc::clone(&value));
            match sub.doorbell.try_send(()) {
                // Full: a ring is already pending and the subscriber will find the new slot.
                Ok(()) | Err(flume::TrySendError::Full(())) => true,
                // The subscriber (or its shard) is gone: forget it.
                Err(flume::TrySendError::Disconnected(())) => false,
            }
        });
        version
    }

    /// The current value.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.lock().current)
    }

    /// The current version (0 until the first `publish`).
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// A new subscriber starting at the current value; send it to a shard and `attach` it there.
    pub fn subscribe(&self) -> Subscription<T> {
        let mut state = self.lock();
        let slot = Arc::new(Slot {
            latest: Mutex::new(None),
        });
        let (doorbell, ring) = flume::bounded(1);
        state.subscribers.push(Outbox {
            slot: Arc::clone(&slot),
            doorbell,
        });
        Subscription {
            version: state.version,
            value: Arc::clone(&state.current),
            slot,
            ring,
        }
    }

    /// Live subscribers (those whose shard has not dropped its end), as of the last publish.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PublisherState<T>> {
        // Poison means a panic while holding the lock; every field is still consistent because
        // each update is a single assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .version;
        f.debug_struct("Publisher")
            .field("version", &version)
            .finish()
    }
}

/// A subscriber in transit to its shard. `Send`.
pub struct Subscription<T> {
    version: u64,
    value: Arc<T>,
    slot: Arc<Slot<T>>,
    ring: flume::Receiver<()>,
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// Inside a shard's runtime: spawns the local task that swaps in new versions and returns the
    /// shard-local handle. The task ends when the `Publisher` is dropped or every `Local` clone is.
    pub fn attach(self) -> Local<T> {
        let Subscription {
            mut version,
            mut value,
            slot,
            ring,
        } = self;
        // A publish between `subscribe` and `attach` is already in the slot.
        if let Some((v, newer)) = slot.take() {
            version = v;
            value = newer;
        }
        let local = Local {
            inner: Rc::new(LocalInner {
                current: RefCell::new(Rc::new(value)),
                version: Cell::new(version),
                closed: Cell::new(false),
                changed: LocalNotify::default(),
            }),
        };
        monoio::spawn(swapper(Rc::downgrade(&local.inner), slot, ring));
        local
    }

    /// The version this subscription starts at.
    pub fn version(&self) -> u64 {
        self.version
    }
}

async fn swapper<T>(
    local: std::rc::Weak<LocalInner<T>>,
    slot: Arc<Slot<T>>,
    ring: flume::Receiver<()>,
) {
    // Ends when the publisher is dropped (doorbell disconnected) or the shard let go of Local.
    while ring.recv_async().await.is_ok() {
        let Some(local) = local.upgrade() else { return };
        if let Some((version, value)) = slot.take() {
            local.swap(version, value);
        }
    }
    if let Some(local) = local.upgrade() {
        local.closed.set(true);
        local.changed.notify_all();
    }
}

/// The shard-local view of a snapshot. `!Send`; clones share the same current value.
pub struct Local<T> {
    inner: Rc<LocalInner<T>>,
}

struct LocalInner<T> {
    // Rc over Arc on purpose: the Arc crosses threads once per publish, the Rc is what each
    // request clones, and a non-atomic increment keeps shards off a shared cache line.
    #[allow(clippy::redundant_allocation)]
    current: RefCell<Rc<Arc<T>>>,
    version: Cell<u64>,
    closed: Cell<bool>,
    changed: LocalNotify,
}

impl<T> LocalInner<T> {
    fn swap(&self, version: u64, value: Arc<T>) {
        // Versions only grow: the slot holds the newest, but guard against a stale re-delivery.
        if version <= self.version.get() {
            return;
        }
        *self.current.borrow_mut() = Rc::new(value);
        self.version.set(version);
        self.changed.notify_all();
    }
}

impl<T> Clone for Local<T> {
    fn clone(&self) -> Self {
        Local {
            inner: Rc::clone(&self.inner),
        }
    }
}

impl<T> Local<T> {
    /// The current value. Hold it for the whole request: a swap mid-request does not affect it.
    #[allow(clippy::redundant_allocation)]
    pub fn load(&self) -> Rc<Arc<T>> {
        Rc::clone(&self.inner.current.borrow())
    }

    /// The version of the current value.
    pub fn version(&self) -> u64 {
        self.inner.version.get()
    }

    /// Waits until the version differs from `seen`, and returns the new version; `None` when the
    /// publisher is gone and no newer version will come. Lets a shard rebuild local state (route
    /// table, pools) on a new config:
    ///
    /// ```ignore
    /// let mut seen = local.version();
    /// while let Some(v) = local.changed(seen).await { rebuild(&local.load()); seen = v; }
    /// ```
    pub async fn changed(&self, seen: u64) -> Option<u64> {
        loop {
            let version = self.inner.version.get();
            if version != seen {
                return Some(version);
            }
            if self.inner.closed.get() {
                return None;
            }
            self.inner.changed.notified().await;
        }
    }
}

impl<T> fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("version", &self.version())
            .finish()
    }
}
