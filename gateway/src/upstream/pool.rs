//! Shard-local keep-alive pool of upstream connections, one per node.
//!
//! A pool belongs to exactly one shard (`Rc`, no locks). It survives config reloads: the compiled
//! per-shard upstreams reuse the pool of a node whose address did not change.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

/// An idle upstream connection plus the read buffer that travels with it.
pub struct UpConn {
    pub stream: TcpStream,
    /// Bytes read from the upstream that were not consumed yet (normally empty between requests).
    pub buf: Vec<u8>,
    /// Requests served on this connection so far (`keepalive_pool.requests`).
    pub requests: u32,
    pub idle_since: Instant,
}

/// Pool limits, from `keepalive_pool`.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    pub size: usize,
    pub idle_timeout: Duration,
    pub max_requests: u32,
}

/// Idle connections to one node, most recently used last (LIFO keeps the hot ones warm).
pub struct NodePool {
    idle: RefCell<Vec<UpConn>>,
    limits: Cell<PoolLimits>,
    /// Connections ever opened; tests and metrics read it to prove reuse.
    pub opened: Cell<u64>,
}

impl NodePool {
    pub fn new(limits: PoolLimits) -> NodePool {
        NodePool {
            idle: RefCell::new(Vec::with_capacity(limits.size.min(64))),
            limits: Cell::new(limits),
            opened: Cell::new(0),
        }
    }

    /// New config, same node: keep the connections, apply the new limits.
    pub fn set_limits(&self, limits: PoolLimits) {
        self.limits.set(limits);
        let mut idle = self.idle.borrow_mut();
        if idle.len() > limits.size {
            let excess = idle.len() - limits.size;
            idle.drain(..excess);
        }
    }

    /// Takes the most recently used connection that has not idled out.
    pub fn checkout(&self, now: Instant) -> Option<UpConn> {
        let limits = self.limits.get();
        let mut idle = self.idle.borrow_mut();
        while let Some(conn) = idle.pop() {
            if now.saturating_duration_since(conn.idle_since) < limits.idle_timeout {
                return Some(conn);
            }
            // Older ones are even staler (LIFO): drop them all.
            idle.clear();
        }
        None
    }

    /// Returns a connection after a complete exchange, unless the pool is full or it served enough.
    pub fn checkin(&self, mut conn: UpConn, now: Instant) {
        let limits = self.limits.get();
        if limits.size == 0 || conn.requests >= limits.max_requests || !conn.buf.is_empty() {
            return;
        }
        conn.idle_since = now;
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= limits.size {
            idle.remove(0);
        }
        idle.push(conn);
    }

    pub fn idle_len(&self) -> usize {
        self.idle.borrow().len()
    }
}
