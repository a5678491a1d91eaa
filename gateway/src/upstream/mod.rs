//! Upstreams as one shard sees them: nodes with their keep-alive pools and passive health, and a
//! balancer. Built from the config snapshot on each shard; pools are inherited across reloads.

pub mod balance;
pub mod pool;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::error::UpstreamError;
use balance::Balancer;
use pool::{NodePool, PoolLimits, UpConn};

/// How the upstream `Host` header is chosen (APISIX `pass_host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassHost {
    /// The client's Host.
    Pass,
    /// The node's `host[:port]`.
    Node,
    /// A fixed `upstream_host`.
    Rewrite(String),
}

/// What the chash balancer hashes (APISIX `hash_on` + `key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    RemoteAddr,
    Uri,
    Host,
    /// The whole query string.
    Query,
    /// `arg_<name>`: a query argument.
    Arg(String),
    Header(String),
    Cookie(String),
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

/// Passive health: after `failures` consecutive failures a node is skipped for `cooldown`.
#[derive(Clone, Copy, Debug)]
pub struct Passive {
    pub failures: u32,
    pub cooldown: Duration,
}

/// One node on one shard.
pub struct ShardNode {
    /// `host:port` as configured; the key under which pools survive reloads.
    pub key: String,
    pub addr: SocketAddr,
    /// Host header value for `pass_host: node`.
    pub host_header: Rc<str>,
    pub pool: Rc<NodePool>,
    consecutive_failures: Cell<u32>,
    down_until: Cell<Option<Instant>>,
}

impl ShardNode {
    fn usable(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|until| now >= until)
    }
}

/// One upstream on one shard.
pub struct ShardUpstream {
    pub id: Rc<str>,
    pub nodes: Vec<ShardNode>,
    balancer: Balancer,
    pub hash_on: Option<HashOn>,
    pub pass_host: PassHost,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub passive: Passive,
}

/// Everything needed to build a shard's view of an upstream.
pub struct UpstreamSpec {
    pub id: String,
    /// (`host:port` key, resolved address, Host header value, weight)
    pub nodes: Vec<(String, SocketAddr, String, u32)>,
    pub chash: Option<HashOn>,
    pub pass_host: PassHost,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub passive: Passive,
    pub pool: PoolLimits,
}

impl ShardUpstream {
    /// Builds the shard view, reusing the pools in `old_pools` (keyed by `upstream id/node key`).
    pub fn build(spec: &UpstreamSpec, old_pools: &HashMap<String, Rc<NodePool>>) -> ShardUpstream {
        let nodes: Vec<ShardNode> = spec
            .nodes
            .iter()
            .map(|(key, addr, host, _)| {
                let pool = match old_pools.get(&pool_key(&spec.id, key)) {
                    Some(p) => {
                        p.set_limits(spec.pool);
                        p.clone()
                    }
                    None => Rc::new(NodePool::new(spec.pool)),
                };
                ShardNode {
                    key: key.clone(),
                    addr: *addr,
                    host_header: Rc::from(host.as_str()),
                    pool,
                    consecutive_failures: Cell::new(0),
                    down_until: Cell::new(None),
                }
            })
            .collect();
        let weights: Vec<u32> = spec.nodes.iter().map(|n| n.3).collect();
        let balancer = if spec.chash.is_some() {
            Balancer::chash(&weights)
        } else {
            Balancer::round_robin(&weights)
        };
        ShardUpstream {
            id: Rc::from(spec.id.as_str()),
            nodes,
            balancer,
            hash_on: spec.chash.clone(),
            pass_host: spec.pass_host.clone(),
            timeouts: spec.timeouts,
            retries: spec.retries,
            passive: spec.passive,
        }
    }

    /// The pools of this upstream, for the next reload to inherit.
    pub fn export_pools(&self, into: &mut HashMap<String, Rc<NodePool>>) {
        for n in &self.nodes {
            into.insert(pool_key(&self.id, &n.key), n.pool.clone());
        }
    }

    /// Picks a node, skipping those cooling down and those in `exclude` (already tried). When every
    /// node is down we still try one: a cool-down must never turn a flaky upstream into a dead one.
    pub fn pick(&self, key: &[u8], exclude: u64, now: Instant) -> Option<usize> {
        let fresh = |i: usize| i >= 64 || exclude & (1 << i) == 0;
        self.balancer
            .pick(key, &|i| fresh(i) && self.nodes[i].usable(now))
            .or_else(|| self.balancer.pick(key, &fresh))
    }

    pub fn report_success(&self, node: usize) {
        if let Some(n) = self.nodes.get(node) {
            n.consecutive_failures.set(0);
            n.down_until.set(None);
        }
    }

    /// Counts a failure; returns true when the node just entered its cool-down.
    pub fn report_failure(&self, node: usize, now: Instant) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let f = n.consecutive_failures.get().saturating_add(1);
        n.consecutive_failures.set(f);
        if self.passive.failures > 0 && f >= self.passive.failures {
            n.down_until.set(Some(now + self.passive.cooldown));
            n.consecutive_failures.set(0);
            return true;
        }
        false
    }
}

fn pool_key(upstream: &str, node: &str) -> String {
    format!("{upstream}/{node}")
}

/// Connects to a node within `timeout.connect`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<UpConn, UpstreamError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Err(_) => Err(UpstreamError::ConnectTimeout),
        Ok(Err(e)) => Err(UpstreamError::ConnectFailed(e.to_string())),
        Ok(Ok(stream)) => {
            // Small request/response exchanges: never wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok(UpConn {
                stream,
                buf: Vec::with_capacity(16 * 1024),
                requests: 0,
                idle_since: Instant::now(),
            })
        }
    }
}
