//! What `limit-count` and `limit-req` share: the limit key (`key` / `key_type`), and the
//! process-wide counters that make the `local` policy exact per process.
//!
//! # Why atomics, and not a lease of tokens per shard
//!
//! APISIX's `local` policy keeps its counters in an nginx shared dict: every worker of the process
//! sees one count, so N workers never each grant the full quota. shardgate keeps that guarantee
//! with one [`Cell`] per (limit, key) shared by every shard: a single `AtomicU64` holding the
//! whole state (window start and count for `limit-count`, excess and last time for `limit-req`),
//! updated by a compare-and-swap loop. Every decision is linearisable, so exactly `count` requests
//! pass in a window whatever the number of shards.
//!
//! The alternative in the brief, a shard-local token allocator borrowing batches from a budget
//! held by a control-side actor, is not exact without a reclaim protocol: tokens leased to an
//! idle shard are stranded while another shard rejects, so fewer than `count` pass; and granting
//! one token per message near the end of the budget puts a cross-thread round trip on the request
//! path. A CAS on one cache line costs tens of nanoseconds even when shards contend, takes no lock
//! and never waits for another thread.
//!
//! Finding the cell for a key takes no lock either: each shard caches `key -> Arc<Cell>` in a
//! shard-local map, so the process-wide map (behind a `Mutex`) is touched only the first time a
//! shard sees a key, and when it sweeps. The sweep (when the shared map has doubled since the last
//! one) retires cells whose window is over by swapping them to [`DEAD`]; a shard that finds its
//! cached cell dead drops it and asks the shared map again, so a key never has two live cells.

pub mod count;
pub mod req;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use shardgate_runtime::clock::Clock;

use crate::pipeline::{Ctx, Problem, Var};
use crate::plugins::vars::Template;

/// Keys come from clients (an address, a header): a seeded hasher, foldhash's (a fifth of
/// SipHash's instructions for a short key; the seed is random per process).
type KeyHasher = foldhash::quality::RandomState;

/// A retired cell's state: no update succeeds on it.
pub const DEAD: u64 = u64::MAX;

/// Milliseconds since the process started, truncated to 32 bits (the cells store it wrapping;
/// differences are taken as `i32`, so a window may be up to 24 days long). Read from the shard's
/// coarse clock: no syscall, 10 ms resolution.
pub fn now_ms() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(shardgate_runtime::clock::monotonic_now);
    let now = shardgate_runtime::clock::shard_clock().monotonic();
    let d = now.saturating_duration_since(epoch);
    // Modulo 2^32 as `as_millis() as u32`, without its 128-bit arithmetic.
    (d.as_secs() as u32)
        .wrapping_mul(1000)
        .wrapping_add(d.subsec_millis())
}

/// `b - a` on the wrapping millisecond clock, negative when shards' coarse clocks disagree by a
/// tick.
pub fn ms_since(a: u32, b: u32) -> i64 {
    i64::from(b.wrapping_sub(a) as i32)
}

/// One key's state, shared by every shard.
#[derive(Debug)]
pub struct Cell {
    state: AtomicU64,
}

impl Cell {
    fn new(state: u64) -> Cell {
        Cell {
            state: AtomicU64::new(state),
        }
    }

    /// Applies `f` atomically: `f(state)` gives the new state and the decision, or None to leave
    /// the state as is (with the decision). None when the cell was retired.
    pub fn update<T>(&self, mut f: impl FnMut(u64) -> (Option<u64>, T)) -> Option<T> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur == DEAD {
                return None;
            }
            let (next, out) = f(cur);
            let Some(next) = next else {
                return Some(out);
            };
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(out),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// The process-wide cells of one limit (a route's plugin, or a `group`).
#[derive(Debug)]
pub struct Table {
    inner: Mutex<TableInner>,
    /// The state a new key's cell starts with.
    initial: u64,
    /// Whether a cell's state is over (its window ended, its bucket drained) at a time in ms.
    expired: fn(u64, u32, &Params) -> bool,
    pub params: Params,
}

/// What `expired` needs to know about the limit.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// `limit-count`: the window in ms. `limit-req`: ms for the bucket to drain one request.
    pub a: u64,
    pub b: u64,
}

#[derive(Debug, Default)]
struct TableInner {
    map: HashMap<Box<[u8]>, Arc<Cell>>,
    sweep_at: usize,
}

const SWEEP_MIN: usize = 1024;

impl Table {
    pub fn new(initial: u64, expired: fn(u64, u32, &Params) -> bool, params: Params) -> Table {
        Table {
            inner: Mutex::new(TableInner {
                map: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
            initial,
            expired,
            params,
        }
    }

    /// The live cell for `key`, created when missing. Takes the lock: only on a shard's first
    /// sight of a key (see [`ShardTable`]).
    fn cell(&self, key: &[u8]) -> Arc<Cell> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = inner.map.get(key) {
            return c.clone();
        }
        if inner.map.len() >= inner.sweep_at {
            let now = now_ms();
            let (expired, params) = (self.expired, self.params);
            inner.map.retain(|_, c| {
                let s = c.state.load(Ordering::Acquire);
                // Retire only what is over; a cell updated since the load stays.
                !(expired(s, now, &params)
                    && c.state
                        .compare_exchange(s, DEAD, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok())
            });
            inner.sweep_at = (inner.map.len() * 2).max(SWEEP_MIN);
        }
        let c = Arc::new(Cell::new(self.initial));
        inner.map.insert(key.into(), c.clone());
        c
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shard's view of a [`Table`]: its own `key -> cell` map, so the request path takes no lock.
pub struct ShardTable {
    table: Arc<Table>,
    local: RefCell<HashMap<Box<[u8]>, Arc<Cell>, KeyHasher>>,
    /// Reused for keys built from several variables (`var_combination`).
    key_buf: RefCell<Vec<u8>>,
}

impl ShardTable {
    pub fn new(table: Arc<Table>) -> ShardTable {
        ShardTable {
            table,
            local: RefCell::new(HashMap::default()),
            key_buf: RefCell::new(Vec::new()),
        }
    }

    pub fn params(&self) -> &Params {
        &self.table.params
    }

    /// Applies `f` to `key`'s cell (see [`Cell::update`]).
    pub fn update<T>(&self, key: &[u8], mut f: impl FnMut(u64) -> (Option<u64>, T)) -> T {
        let mut local = self.local.borrow_mut();
        loop {
            // The hit path borrows the cell: no reference count touched per request.
            let retired = match local.get(key) {
                Some(cell) => match cell.update(&mut f) {
                    Some(out) => return out,
                    // Retired by a sweep: the shared map has a new cell (or will create one).
                    None => true,
                },
                None => false,
            };
            if retired {
                local.remove(key);
                continue;
            }
            if local.len() >= SWEEP_MIN {
                // Forget cells the shared map retired or that are over; they come back from the
                // shared map if their key is seen again.
                let now = now_ms();
                let t = &self.table;
                local.retain(|_, c| {
                    let s = c.state.load(Ordering::Relaxed);
                    s != DEAD && !(t.expired)(s, now, &t.params)
                });
            }
            local.insert(key.into(), self.table.cell(key));
        }
    }
}

/// `key_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `var`: one variable; None for a variable shardgate does not compute (always falls back).
    Var(Option<Var>),
    /// `var_combination`: a template such as `$remote_addr $http_x_user`.
    Combination(Template),
    /// `constant` (limit-count only): one counter for every request.
    Constant(String),
}

impl Key {
    /// Parses `key` for `key_type`; the warning names variables shardgate does not compute
    /// (APISIX then counts by `remote_addr`, as shardgate does).
    pub fn parse(key: &str, key_type: &str, path: &str, warnings: &mut Vec<Problem>) -> Key {
        match key_type {
            "var_combination" => {
                let t = Template::parse(key);
                for name in t.unknown_vars() {
                    warnings.push(Problem::new(
                        format!("{path}.key"),
                        format!(
                            "shardgate does not compute `${name}`: it resolves to nothing \
                             (when no variable resolves, requests are counted by remote_addr)"
                        ),
                    ));
                }
                Key::Combination(t)
            }
            "constant" => Key::Constant(key.to_owned()),
            _ => {
                let name = key.strip_prefix('$').unwrap_or(key);
                let var = Var::parse(name);
                if var.is_none() {
                    warnings.push(Problem::new(
                        format!("{path}.key"),
                        format!(
                            "shardgate does not compute the variable `{name}`: every request is \
                             counted by remote_addr, as APISIX does when the key is empty"
                        ),
                    ));
                }
                Key::Var(var)
            }
        }
    }

    /// Runs `f` with this request's key (APISIX: the variable's value, or `remote_addr` when it
    /// is empty). No allocation: a variable's value is a slice of the request, a combination is
    /// built in the shard's reused buffer.
    pub fn with<T>(&self, ctx: &mut Ctx<'_>, table: &ShardTable, f: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            Key::Constant(k) => f(k.as_bytes()),
            Key::Var(Some(v)) => match ctx.var(v) {
                Some(value) => f(value),
                None => f(ctx.remote_addr().as_bytes()),
            },
            Key::Var(None) => f(ctx.remote_addr().as_bytes()),
            Key::Combination(t) => {
                let mut buf = table.key_buf.borrow_mut();
                buf.clear();
                if t.resolve_into(ctx, &mut buf) == 0 {
                    buf.clear();
                    buf.extend_from_slice(ctx.remote_addr().as_bytes());
                }
                f(&buf)
            }
        }
    }
}

/// Where limits' tables live across config versions: a route's limit keeps its counters through a
/// reload that does not change it (by its place and attributes), a `group` by its name.
#[derive(Default)]
pub struct Tables {
    map: Mutex<HashMap<String, Weak<Table>>>,
}

impl Tables {
    /// The table registered under `id`, or a new one from `make`.
    pub fn get_or_make(&self, id: String, make: impl FnOnce() -> Table) -> Arc<Table> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = map.get(&id).and_then(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(make());
        map.insert(id, Arc::downgrade(&t));
        t
    }

    /// Forgets tables no config uses any more.
    pub fn prune(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
    }
}

/// A stable hash of a parsed config (its `Debug` form), for fingerprints and table ids.
pub fn conf_hash(conf: &impl std::fmt::Debug) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{conf:?}").hash(&mut h);
    h.finish()
}

/// `rejected_code` / `rejected_msg` as APISIX answers a limited request: the status, and
/// `{"error_msg": ...}` when a message is configured.
pub fn rejected(
    code: u16,
    msg: Option<&str>,
    headers: Vec<(String, String)>,
    what: &'static str,
) -> crate::error::Error {
    let body = match msg {
        Some(m) => {
            let mut b = serde_json::json!({ "error_msg": m })
                .to_string()
                .into_bytes();
            b.push(b'\n');
            b
        }
        None => format!("{{\"error\":\"{what}\"}}\n").into_bytes(),
    };
    crate::error::Error::Plugin(crate::pipeline::Response {
        status: code,
        headers,
        content_type: "application/json",
        body,
        code: what,
        reason: "rate limit exceeded".into(),
    })
}

/// `rejected_code`: an integer 200-599 (APISIX's schema), naming the path otherwise.
pub fn check_code(code: i64, path: &str, problems: &mut Vec<Problem>) -> u16 {
    if (200..=599).contains(&code) {
        code as u16
    } else {
        problems.push(Problem::new(
            format!("{path}.rejected_code"),
            format!("must be an integer from 200 to 599 (got {code})"),
        ));
        503
    }
}

/// `policy`: `local` only; the Redis policies belong to the scale-out work.
pub fn check_policy(policy: &str, path: &str, problems: &mut Vec<Problem>) {
    match policy {
        "local" => {}
        "redis" | "redis-cluster" | "redis-sentinel" => problems.push(Problem::new(
            format!("{path}.policy"),
            format!(
                "policy `{policy}` is not supported by shardgate yet (only `local`, which is exact \
                 per process)"
            ),
        )),
        other => problems.push(Problem::new(
            format!("{path}.policy"),
            format!("must be one of local, redis, redis-cluster (got `{other}`)"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn never(_: u64, _: u32, _: &Params) -> bool {
        false
    }

    #[test]
    fn a_shared_cell_grants_exactly_its_budget_across_threads() {
        // 8 threads each with their own ShardTable over one Table, 1000 attempts each,
        // budget 777: exactly 777 succeed.
        let table = Arc::new(Table::new(0, never, Params { a: 0, b: 0 }));
        let granted: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let t = table.clone();
                    s.spawn(move || {
                        let st = ShardTable::new(t);
                        (0..1000)
                            .filter(|_| {
                                st.update(b"k", |used| {
                                    if used < 777 {
                                        (Some(used + 1), true)
                                    } else {
                                        (None, false)
                                    }
                                })
                            })
                            .count() as u64
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 777);
    }

    #[test]
    fn a_retired_cell_is_replaced_once_for_every_shard() {
        fn always(_: u64, _: u32, _: &Params) -> bool {
            true
        }
        let table = Arc::new(Table::new(0, always, Params { a: 0, b: 0 }));
        let a = ShardTable::new(table.clone());
        let b = ShardTable::new(table.clone());
        let inc = |s: u64| (Some(s + 1), s + 1);
        assert_eq!(a.update(b"k", inc), 1);
        assert_eq!(b.update(b"k", inc), 2);
        // Fill the shared map so the next miss sweeps (every cell counts as over): `k` retires.
        for i in 0..SWEEP_MIN {
            a.update(format!("other{i}").as_bytes(), inc);
        }
        assert!(table.len() <= 2, "{}", table.len());
        // Both shards now land on one new cell for `k`.
        assert_eq!(b.update(b"k", inc), 1);
        assert_eq!(a.update(b"k", inc), 2);
    }
}
