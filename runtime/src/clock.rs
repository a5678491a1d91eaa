//! Time, read from one place.
//!
//! Everything above the runtime reads time through [`Clock`] so that protocol code stays
//! deterministic in tests ([`ManualClock`]) and cheap on the hot path ([`CoarseClock`]).
//!
//! Inside a shard started by [`run_on_current_thread`](crate::shard::run_on_current_thread) or
//! [`ShardSet`](crate::shard::ShardSet), [`shard_clock()`] returns that shard's coarse clock: its
//! cached values are refreshed by a ticker task every [`TICK`] (10 ms), so a read is a `Cell`
//! load, not a syscall. Outside a shard, `shard_clock()` returns a *live* clock that reads the
//! system clock on every call, so control threads and plain tests are never handed stale time.

// The one module allowed to read the system clock (clippy.toml's disallowed-methods).
#![allow(clippy::disallowed_methods)]

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a shard's coarse clock is refreshed. Token `exp`/`nbf` checks and cache TTLs work in
/// seconds, so 10 ms of staleness is invisible to them.
pub const TICK: Duration = Duration::from_millis(10);

/// A source of time. Implementations must be cheap: the request path reads them.
pub trait Clock {
    /// Seconds since the Unix epoch (wall clock; may jump when the system clock is set).
    fn unix_secs(&self) -> u64;
    /// Milliseconds since the Unix epoch (wall clock).
    fn unix_millis(&self) -> u64;
    /// A monotonic instant, for timeouts and durations.
    fn monotonic(&self) -> Instant;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn unix_secs(&self) -> u64 {
        (**self).unix_secs()
    }
    fn unix_millis(&self) -> u64 {
        (**self).unix_millis()
    }
    fn monotonic(&self) -> Instant {
        (**self).monotonic()
    }
}

impl<C: Clock + ?Sized> Clock for Rc<C> {
    fn unix_secs(&self) -> u64 {
        (**self).unix_secs()
    }
    fn unix_millis(&self) -> u64 {
        (**self).unix_millis()
    }
    fn monotonic(&self) -> Instant {
        (**self).monotonic()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn unix_secs(&self) -> u64 {
        (**self).unix_secs()
    }
    fn unix_millis(&self) -> u64 {
        (**self).unix_millis()
    }
    fn monotonic(&self) -> Instant {
        (**self).monotonic()
    }
}

fn system_unix_millis() -> u64 {
    // A system clock set before 1970 is a broken host, not hostile input: report the epoch.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The real clock, read on every call. `Send + Sync`; for control threads and actors.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_secs(&self) -> u64 {
        system_unix_millis() / 1000
    }
    fn unix_millis(&self) -> u64 {
        system_unix_millis()
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A shard-local clock whose values are cached and refreshed by [`tick`](CoarseClock::tick)
/// (and by the ticker task of [`start`](CoarseClock::start)). `!Send`; clones share the cache.
#[derive(Clone, Debug)]
pub struct CoarseClock {
    inner: Option<Rc<Cached>>,
}

#[derive(Debug)]
struct Cached {
    unix_millis: Cell<u64>,
    monotonic: Cell<Instant>,
}

impl CoarseClock {
    /// A clock with values cached now; they only move when [`tick`](Self::tick) is called.
    pub fn new() -> Self {
        CoarseClock {
            inner: Some(Rc::new(Cached {
                unix_millis: Cell::new(system_unix_millis()),
                monotonic: Cell::new(Instant::now()),
            })),
        }
    }

    /// A clock that reads the system clock on every call (what `shard_clock()` returns outside a
    /// shard). `tick()` is a no-op on it.
    pub fn live() -> Self {
        CoarseClock { inner: None }
    }

    /// Must be called inside a monoio runtime with the timer enabled: spawns a task that calls
    /// `tick()` every `period`. The task ends once every clone of the returned clock is dropped.
    pub fn start(period: Duration) -> Self {
        let clock = CoarseClock::new();
        if let Some(cached) = &clock.inner {
            let weak = Rc::downgrade(cached);
            monoio::spawn(ticker(weak, period));
        }
        clock
    }

    /// Refreshes the cached values from the system clock.
    pub fn tick(&self) {
        if let Some(cached) = &self.inner {
            cached.refresh();
        }
    }

    /// True for a clock made by [`live`](Self::live).
    pub fn is_live(&self) -> bool {
        self.inner.is_none()
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        CoarseClock::new()
    }
}

impl Cached {
    fn refresh(&self) {
        self.unix_millis.set(system_unix_millis());
        self.monotonic.set(Instant::now());
    }
}

async fn ticker(cached: Weak<Cached>, period: Duration) {
    let mut interval = monoio::time::interval(period);
    // After a long stall (a slow request hogging the shard) one catch-up tick is enough.
    interval.set_missed_tick_behavior(monoio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match cached.upgrade() {
            Some(cached) => cached.refresh(),
            None => return,
        }
    }
}

impl Clock for CoarseClock {
    fn unix_secs(&self) -> u64 {
        self.unix_millis() / 1000
    }
    fn unix_millis(&self) -> u64 {
        match &self.inner {
            Some(cached) => cached.unix_millis.get(),
            None => system_unix_millis(),
        }
    }
    fn monotonic(&self) -> Instant {
        match &self.inner {
            Some(cached) => cached.monotonic.get(),
            None => Instant::now(),
        }
    }
}

thread_local! {
    static SHARD_CLOCK: RefCell<Option<CoarseClock>> = const { RefCell::new(None) };
}

/// This shard's coarse clock, or a live clock outside a shard (see the module docs).
pub fn shard_clock() -> CoarseClock {
    SHARD_CLOCK
        .with(|c| c.borrow().clone())
        .unwrap_or_else(CoarseClock::live)
}

/// Monotonic "now" for deadlines, timer wake-ups and idle marks. It reads the system's monotonic
/// clock (a vDSO call, no syscall) rather than the shard's cached instant on purpose: monoio's
/// timers fire on the real clock, and a "sleep until `due`, then check `now >= due`" loop fed a
/// cached instant up to a tick behind would find nothing due, sleep until a deadline already past,
/// wake at once and spin without ever yielding to the ticker that would refresh the cache.
/// Cached time (token `exp`, cache TTLs) is read through [`shard_clock()`].
pub fn monotonic_now() -> Instant {
    Instant::now()
}

/// Measures a duration precisely (latency figures in microseconds), where a coarse clock's 10 ms
/// steps would erase the figure. Reads the system's monotonic clock (a vDSO call, no syscall)
/// when started and when read; nothing else should measure time.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch {
    started: Instant,
}

impl Stopwatch {
    /// Starts measuring now.
    pub fn start() -> Self {
        Stopwatch {
            started: Instant::now(),
        }
    }

    /// When it was started (for a deadline counted from the same moment).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since [`start`](Self::start).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time since [`start`](Self::start) in whole microseconds, saturating.
    pub fn elapsed_micros(&self) -> u64 {
        u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Installs a ticking clock as this thread's shard clock until the guard drops. Called by the
/// shard runners inside the freshly built runtime.
pub(crate) fn install_shard_clock() -> ShardClockGuard {
    let clock = CoarseClock::start(TICK);
    let previous = SHARD_CLOCK.with(|c| c.borrow_mut().replace(clock));
    ShardClockGuard { previous }
}

pub(crate) struct ShardClockGuard {
    previous: Option<CoarseClock>,
}

impl Drop for ShardClockGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SHARD_CLOCK.with(|c| *c.borrow_mut() = previous);
    }
}

/// A clock for tests: starts at a given Unix time and moves only when told. Clones share state;
/// `Send + Sync`, so one clock can drive a test and an actor thread together.
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<Manual>,
}

#[derive(Debug)]
struct Manual {
    unix_millis: AtomicU64,
    // Monotonic time is `origin + offset`; it only moves forward, by `advance`.
    origin: Instant,
    offset_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock reading `unix_secs` seconds after the epoch.
    pub fn new(unix_secs: u64) -> Self {
        ManualClock {
            inner: Arc::new(Manual {
                unix_millis: AtomicU64::new(unix_secs.saturating_mul(1000)),
                origin: Instant::now(),
                offset_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Moves both wall and monotonic time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.unix_millis.fetch_add(millis, Ordering::Relaxed);
        self.inner.offset_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sets wall time (as a system clock step would); monotonic time is unaffected.
    pub fn set_unix_secs(&self, unix_secs: u64) {
        self.set_unix_millis(unix_secs.saturating_mul(1000));
    }

    /// Sets wall time in milliseconds; monotonic time is unaffected.
    pub fn set_unix_millis(&self, unix_millis: u64) {
        self.inner.unix_millis.store(unix_millis, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn unix_secs(&self) -> u64 {
        self.unix_millis() / 1000
    }
    fn unix_millis(&self) -> u64 {
        self.inner.unix_millis.load(Ordering::Relaxed)
    }
    fn monotonic(&self) -> Instant {
        let offset = Duration::from_nanos(self.inner.offset_nanos.load(Ordering::Relaxed));
        self.inner.origin + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_700_000_000);
        let t0 = clock.monotonic();
        assert_eq!(clock.unix_secs(), 1_700_000_000);
        assert_eq!(clock.unix_millis(), 1_700_000_000_000);
        assert_eq!(clock.monotonic(), t0);

        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.unix_millis(), 1_700_000_001_500);
        assert_eq!(clock.unix_secs(), 1_700_000_001);
        assert_eq!(clock.monotonic() - t0, Duration::from_millis(1500));

        // A wall-clock step leaves monotonic time alone.
        clock.set_unix_secs(10);
        assert_eq!(clock.unix_secs(), 10);
        assert_eq!(clock.monotonic() - t0, Duration::from_millis(1500));

        let shared = clock.clone();
        shared.advance(Duration::from_secs(5));
        assert_eq!(clock.unix_secs(), 15);
    }

    #[test]
    fn coarse_clock_holds_until_tick() {
        let clock = CoarseClock::new();
        let before = clock.monotonic();
        let millis = clock.unix_millis();
        // Without a tick the cached values never move, however often they are read.
        for _ in 0..1000 {
            assert_eq!(clock.monotonic(), before);
            assert_eq!(clock.unix_millis(), millis);
        }
        std::thread::sleep(Duration::from_millis(2));
        clock.tick();
        assert!(clock.monotonic() > before);
        assert!(clock.unix_millis() >= millis);
        assert!(!clock.is_live());
    }

    #[test]
    fn outside_a_shard_the_clock_is_live() {
        let clock = shard_clock();
        assert!(clock.is_live());
        let a = clock.monotonic();
        std::thread::sleep(Duration::from_millis(1));
        assert!(clock.monotonic() > a);
        let sys = SystemClock.unix_secs();
        assert!(clock.unix_secs().abs_diff(sys) <= 1);
    }
}
