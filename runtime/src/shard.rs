//! Shards: one monoio runtime per thread, optionally pinned to a CPU.
//!
//! The io_uring ring is built with `COOP_TASKRUN | SINGLE_ISSUER`: without those flags io_uring
//! cost ~40% more CPU per request than epoll on the measured VMs (task-work IPIs). We never use
//! monoio's `FusionDriver`: when RLIMIT_MEMLOCK is too small for the real ring it panics instead
//! of falling back, so [`DriverChoice::Auto`] does the fallback itself and says why.
//!
//! Non-root deployments: each 1024-entry ring pins ~100 KiB of locked memory. Set
//! `LimitMEMLOCK=` (systemd) or `ulimit -l` to at least 1 MiB per shard, or grant CAP_IPC_LOCK;
//! otherwise `Auto` runs on epoll and logs a warning.

use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, Runtime, RuntimeBuilder};
use tracing::{debug, error, info, warn};

use crate::clock;
use crate::error::Error;

/// io_uring submission queue entries per shard (monoio's default too).
pub const DEFAULT_URING_ENTRIES: u32 = 1024;

/// Which I/O driver a shard should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring if the kernel and limits allow it, else epoll (with a warning).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl FromStr for DriverChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(DriverChoice::Auto),
            "uring" | "io_uring" => Ok(DriverChoice::Uring),
            "epoll" | "legacy" => Ok(DriverChoice::Epoll),
            other => Err(Error::UnknownDriver(other.to_owned())),
        }
    }
}

/// The driver a shard actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveDriver {
    Uring,
    Epoll,
}

impl fmt::Display for ActiveDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActiveDriver::Uring => "io_uring",
            ActiveDriver::Epoll => "epoll",
        })
    }
}

/// What a shard's `make` closure is told about itself.
#[derive(Clone, Copy, Debug)]
pub struct ShardInfo {
    /// 0-based shard index.
    pub id: usize,
    /// Number of shards in the set.
    pub count: usize,
    /// The driver this shard got.
    pub driver: ActiveDriver,
    /// The CPU the shard thread is pinned to; `None` when not pinned (or pinning failed).
    pub cpu: Option<usize>,
}

/// Builds a monoio runtime (timer enabled) on the current thread and runs `f(driver)` to
/// completion on it. `f` itself is called inside the runtime, so it may spawn tasks and bind
/// listeners. While it runs, [`clock::shard_clock`] is this shard's ticking coarse clock.
///
/// Must not be called from inside another monoio runtime.
pub fn run_on_current_thread<F, Fut>(choice: DriverChoice, f: F) -> io::Result<Fut::Output>
where
    F: FnOnce(ActiveDriver) -> Fut,
    Fut: Future,
{
    run_on_current_thread_with(choice, DEFAULT_URING_ENTRIES, f)
}

/// [`run_on_current_thread`] with an explicit io_uring ring size (entries above 32768 are
/// rejected by the kernel with EINVAL, which `Auto` treats like any other io_uring failure).
pub fn run_on_current_thread_with<F, Fut>(
    choice: DriverChoice,
    uring_entries: u32,
    f: F,
) -> io::Result<Fut::Output>
where
    F: FnOnce(ActiveDriver) -> Fut,
    Fut: Future,
{
    Ok(build(choice, uring_entries)?.run(f))
}

enum Built {
    Uring(Runtime<TimeDriver<IoUringDriver>>),
    Epoll(Runtime<TimeDriver<LegacyDriver>>),
}

impl Built {
    fn driver(&self) -> ActiveDriver {
        match self {
            Built::Uring(_) => ActiveDriver::Uring,
            Built::Epoll(_) => ActiveDriver::Epoll,
        }
    }

    fn run<F, Fut>(self, f: F) -> Fut::Output
    where
        F: FnOnce(ActiveDriver) -> Fut,
        Fut: Future,
    {
        let driver = self.driver();
        let shard = async move {
            // Installed inside the runtime because the clock's ticker is a task on it.
            let _clock = clock::install_shard_clock();
            f(driver).await
        };
        match self {
            Built::Uring(mut rt) => rt.block_on(shard),
            Built::Epoll(mut rt) => rt.block_on(shard),
        }
    }
}

fn build(choice: DriverChoice, uring_entries: u32) -> Result<Built, Error> {
    match choice {
        DriverChoice::Epoll => build_epoll().map(Built::Epoll),
        DriverChoice::Uring => build_uring(uring_entries).map(Built::Uring),
        DriverChoice::Auto => match build_uring(uring_entries) {
            Ok(rt) => Ok(Built::Uring(rt)),
            Err(err) => {
                warn!(
                    error = %err,
                    reason = fallback_reason(&err),
                    "io_uring unavailable, falling back to epoll; for non-root io_uring raise \
                     LimitMEMLOCK= (systemd) / ulimit -l to >= 1 MiB per shard or grant \
                     CAP_IPC_LOCK"
                );
                build_epoll().map(Built::Epoll)
            }
        },
    }
}

fn build_uring(entries: u32) -> Result<Runtime<TimeDriver<IoUringDriver>>, Error> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun().setup_single_issuer();
    let tuned = RuntimeBuilder::<IoUringDriver>::new()
        .enable_timer()
        .with_entries(entries)
        .uring_builder(urb)
        .build();
    match tuned {
        Ok(rt) => Ok(rt),
        // Kernels before 5.19 (COOP_TASKRUN) / 6.0 (SINGLE_ISSUER) reject the flags with EINVAL;
        // a plain ring is slower but still io_uring, which the operator asked for.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            debug!(error = %err, "io_uring ring with COOP_TASKRUN|SINGLE_ISSUER refused, retrying plain");
            let plain = RuntimeBuilder::<IoUringDriver>::new()
                .enable_timer()
                .with_entries(entries)
                .build()
                .map_err(|source| Error::Driver {
                    driver: ActiveDriver::Uring,
                    source,
                })?;
            warn!(
                "io_uring running without COOP_TASKRUN/SINGLE_ISSUER (old kernel): expect more CPU per request"
            );
            Ok(plain)
        }
        Err(source) => Err(Error::Driver {
            driver: ActiveDriver::Uring,
            source,
        }),
    }
}

fn build_epoll() -> Result<Runtime<TimeDriver<LegacyDriver>>, Error> {
    // No `with_entries`: the legacy driver sizes its event buffer from it, and an io_uring-sized
    // value chosen for the ring has no meaning there.
    RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|source| Error::Driver {
            driver: ActiveDriver::Epoll,
            source,
        })
}

/// A human hint for why io_uring could not be set up.
pub(crate) fn fallback_reason(err: &Error) -> &'static str {
    let os = match err {
        Error::Driver { source, .. } => source.raw_os_error(),
        _ => None,
    };
    match os {
        Some(libc::ENOMEM) => "ring memory exceeds RLIMIT_MEMLOCK (raise LimitMEMLOCK)",
        Some(libc::ENOSYS) => "kernel built without io_uring",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring disabled (kernel.io_uring_disabled, seccomp or container policy)"
        }
        Some(libc::EINVAL) => "kernel rejected the ring parameters",
        _ => "unexpected io_uring setup error",
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    match affinity() {
        Ok(cpus) if !cpus.is_empty() => cpus,
        Ok(_) | Err(_) => (0..fallback_parallelism()).collect(),
    }
}

/// How many shards "one per core" means for this process (honours taskset/cgroup cpusets).
/// Reads the *calling thread's* affinity: call it from `main`, not from a pinned shard.
pub fn available_cores() -> usize {
    allowed_cpus().len().max(1)
}

fn fallback_parallelism() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

#[allow(unsafe_code)]
fn affinity() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array, so all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most `size_of::<cpu_set_t>()`
    // bytes into `set`, which is exactly its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
    // SAFETY: CPU_ISSET only reads bit `cpu` of `set`, and `cpu < CPU_SETSIZE` is in bounds.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// A running set of shard threads.
pub struct ShardSet {
    threads: Vec<(usize, JoinHandle<()>)>,
    drivers: Vec<ActiveDriver>,
}

/// What a shard thread reports once its runtime is built (or not).
type Ready = (usize, Result<(ActiveDriver, Option<usize>), Error>);

impl ShardSet {
    /// Spawns `count` threads named `shard-{id}`, each building its own runtime and then running
    /// `make(info)` on it. With `pin`, shard `id` is pinned to the `id % n`-th allowed CPU
    /// (a pinning failure is logged, not fatal).
    ///
    /// Startup is two-phase: every shard first builds its runtime and reports its driver; only
    /// when all succeeded does any shard run `make`. If one fails, none runs and the error names
    /// the shard, so a half-started gateway never serves.
    pub fn spawn<F, Fut>(
        count: usize,
        choice: DriverChoice,
        pin: bool,
        make: F,
    ) -> io::Result<ShardSet>
    where
        F: Fn(ShardInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        if count == 0 {
            return Err(Error::NoShards.into());
        }
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        let make = Arc::new(make);
        let (ready_tx, ready_rx) = flume::unbounded::<Ready>();
        let mut go_txs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);

        for id in 0..count {
            let cpu = if cpus.is_empty() {
                None
            } else {
                Some(cpus[id % cpus.len()])
            };
            let (go_tx, go_rx) = flume::bounded::<()>(1);
            let ready_tx = ready_tx.clone();
            let make = Arc::clone(&make);
            let spawned = thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || shard_main(id, count, choice, cpu, ready_tx, go_rx, make));
            match spawned {
                Ok(handle) => {
                    threads.push((id, handle));
                    go_txs.push(go_tx);
                }
                Err(source) => {
                    // Dropping `go_txs` tells the shards already started to exit without running.
                    drop(go_txs);
                    join_all(threads);
                    return Err(Error::ShardSpawn { id, source }.into());
                }
            }
        }
        // Only the shards hold senders now: if one dies before reporting, `recv` ends instead of
        // waiting forever.
        drop(ready_tx);

        let mut drivers = vec![ActiveDriver::Epoll; count];
        let mut failure = None;
        for _ in 0..count {
            match ready_rx.recv() {
                Ok((id, Ok((driver, cpu)))) => {
                    info!(shard = id, %driver, cpu, "shard ready");
                    drivers[id] = driver;
                }
                Ok((id, Err(err))) => {
                    failure.get_or_insert(Error::ShardSpawn {
                        id,
                        source: err.into(),
                    });
                }
                Err(_) => {
                    let id = first_finished(&threads).unwrap_or(0);
                    failure.get_or_insert(Error::ShardLost { id });
                    break;
                }
            }
        }
        if let Some(err) = failure {
            drop(go_txs);
            join_all(threads);
            return Err(err.into());
        }
        for go in &go_txs {
            // A shard that died after reporting shows up at join; nothing to undo here.
            let _ = go.send(());
        }
        Ok(ShardSet { threads, drivers })
    }

    /// The driver each shard got, indexed by shard id.
    pub fn drivers(&self) -> Vec<ActiveDriver> {
        self.drivers.clone()
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Always false: a set has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Waits for every shard thread to finish. A shard that panicked is logged.
    pub fn join(self) {
        join_all(self.threads);
    }
}

fn first_finished(threads: &[(usize, JoinHandle<()>)]) -> Option<usize> {
    threads
        .iter()
        .find(|(_, handle)| handle.is_finished())
        .map(|(id, _)| *id)
}

fn join_all(threads: Vec<(usize, JoinHandle<()>)>) {
    for (id, handle) in threads {
        if handle.join().is_err() {
            error!(shard = id, "shard thread panicked");
        }
    }
}

fn shard_main<F, Fut>(
    id: usize,
    count: usize,
    choice: DriverChoice,
    cpu: Option<usize>,
    ready: flume::Sender<Ready>,
    go: flume::Receiver<()>,
    make: Arc<F>,
) where
    F: Fn(ShardInfo) -> Fut,
    Fut: Future<Output = ()>,
{
    let cpu = cpu.and_then(|cpu| match monoio::utils::bind_to_cpu_set(Some(cpu)) {
        Ok(()) => Some(cpu),
        Err(err) => {
            warn!(shard = id, cpu, error = %err, "could not pin shard to its CPU; running unpinned");
            None
        }
    });
    let built = match build(choice, DEFAULT_URING_ENTRIES) {
        Ok(built) => {
            let _ = ready.send((id, Ok((built.driver(), cpu))));
            built
        }
        Err(err) => {
            let _ = ready.send((id, Err(err)));
            return;
        }
    };
    drop(ready);
    if go.recv().is_err() {
        return;
    }
    built.run(|driver| {
        make(ShardInfo {
            id,
            count,
            driver,
            cpu,
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_choice_parses() {
        assert_eq!(
            "auto".parse::<DriverChoice>().ok(),
            Some(DriverChoice::Auto)
        );
        assert_eq!(
            "uring".parse::<DriverChoice>().ok(),
            Some(DriverChoice::Uring)
        );
        assert_eq!(
            "io_uring".parse::<DriverChoice>().ok(),
            Some(DriverChoice::Uring)
        );
        assert_eq!(
            "epoll".parse::<DriverChoice>().ok(),
            Some(DriverChoice::Epoll)
        );
        assert!(matches!(
            "kqueue".parse::<DriverChoice>(),
            Err(Error::UnknownDriver(s)) if s == "kqueue"
        ));
        assert_eq!(ActiveDriver::Uring.to_string(), "io_uring");
        assert_eq!(ActiveDriver::Epoll.to_string(), "epoll");
    }

    #[test]
    fn fallback_reasons_name_the_cause() {
        let driver = |errno| Error::Driver {
            driver: ActiveDriver::Uring,
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(fallback_reason(&driver(libc::ENOMEM)).contains("LimitMEMLOCK"));
        assert!(fallback_reason(&driver(libc::ENOSYS)).contains("without io_uring"));
        assert!(fallback_reason(&driver(libc::EPERM)).contains("io_uring_disabled"));
        assert!(fallback_reason(&driver(libc::EINVAL)).contains("parameters"));
    }

    #[test]
    fn allowed_cpus_is_nonempty_and_sorted() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(available_cores(), cpus.len());
    }
}
