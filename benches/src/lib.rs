//! Shared pieces of the micro-benchmarks: a counting global allocator, so each bench can prove its
//! hot path allocates nothing before it is timed. A bench opts in with
//! `#[global_allocator] static GLOBAL: shardgate_benches::CountingAlloc = shardgate_benches::CountingAlloc;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Forwards to the system allocator and counts allocations (and reallocations) and bytes.
pub struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static SHARD_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

const UNKNOWN: u8 = 0;
const PENDING: u8 = 1;
const SHARD: u8 = 2;
const OTHER: u8 = 3;

thread_local! {
    // A const-initialised Cell has no destructor, so reading it never allocates or registers one.
    static THREAD_KIND: Cell<u8> = const { Cell::new(UNKNOWN) };
}

/// Allocations (including reallocations) since the process started.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes requested by those allocations.
pub fn allocated_bytes() -> u64 {
    BYTES.load(Ordering::Relaxed)
}

/// Allocations made on the gateway's data-path threads (named `shard-N` by the runtime). The
/// whole-process count also sees the control thread's periodic work; this one is the request path.
pub fn shard_allocations() -> u64 {
    SHARD_ALLOCATIONS.load(Ordering::Relaxed)
}

fn on_shard_thread() -> bool {
    THREAD_KIND
        .try_with(|kind| match kind.get() {
            UNKNOWN => {
                // Looking the name up may itself allocate: PENDING keeps that from recursing.
                kind.set(PENDING);
                let shard = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("shard-"));
                kind.set(if shard { SHARD } else { OTHER });
                shard
            }
            k => k == SHARD,
        })
        .unwrap_or(false)
}

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if on_shard_thread() {
        SHARD_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is relaxed counter increments.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
