//! Upstreams as one shard sees them: nodes with their keep-alive pools and passive health, and a
//! balancer. Built from the config snapshot on each shard; pools are inherited across reloads.

pub mod balance;
pub mod health;
pub mod pool;
pub mod tls;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::monotonic_now;

use std::os::fd::AsRawFd;

use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::error::UpstreamError;
use balance::Balancer;
use pool::{NodePool, PoolLimits, UpConn};
use tls::{TlsSpec, UpStream};

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

/// Passive health (APISIX `checks.passive`, or shardgate's `health`): after `tcp_failures`
/// connect/I-O failures, `timeouts` timeouts or `http_failures` responses with a status in
/// `http_statuses`, each counted in a row (0 = not counted), a node is skipped for `cooldown`.
#[derive(Clone, Debug)]
pub struct Passive {
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub http_failures: u32,
    pub http_statuses: Box<[u16]>,
    pub cooldown: Duration,
}

/// What went wrong on an exchange, for the passive counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Tcp,
    Timeout,
    Http,
}

/// One node on one shard.
pub struct ShardNode {
    /// `host:port` as configured; the key under which pools survive reloads.
    pub key: String,
    pub addr: SocketAddr,
    /// Host header value for `pass_host: node`.
    pub host_header: Rc<str>,
    pub pool: Rc<NodePool>,
    pub priority: i32,
    /// SNI and verified name, for an https upstream.
    pub server_name: Option<ServerName<'static>>,
    /// Consecutive failures per `FailureKind`.
    failures: [Cell<u32>; 3],
    down_until: Cell<Option<Instant>>,
    /// Held down by the active checks (copied from the control side's `HealthSnapshot`).
    pub active_down: Cell<bool>,
}

impl ShardNode {
    fn usable(&self, now: Instant) -> bool {
        !self.active_down.get() && self.down_until.get().is_none_or(|until| now >= until)
    }
}

/// One upstream on one shard.
pub struct ShardUpstream {
    pub id: Rc<str>,
    pub nodes: Vec<ShardNode>,
    balancer: Balancer,
    /// This shard's TLS connector for an https upstream.
    pub tls: Option<monoio_rustls::TlsConnector>,
    /// The distinct node priorities, highest first; one entry in the common case.
    levels: Vec<i32>,
    pub hash_on: Option<HashOn>,
    pub pass_host: PassHost,
    pub retries: u32,
    /// APISIX `retry_timeout`: no retry starts once this long has passed since the first attempt.
    pub retry_timeout: Option<Duration>,
    pub passive: Passive,
}

/// One node as the control side resolved it.
pub struct NodeSpec {
    /// `host:port` as configured.
    pub key: String,
    pub addr: SocketAddr,
    /// Host header value for `pass_host: node`.
    pub host_header: String,
    /// The bare host (no port, no brackets): the TLS server name unless one is set upstream-wide.
    pub host: String,
    pub weight: u32,
    pub priority: i32,
}

/// Everything needed to build a shard's view of an upstream.
pub struct UpstreamSpec {
    pub id: String,
    pub nodes: Vec<NodeSpec>,
    pub chash: Option<HashOn>,
    pub pass_host: PassHost,
    pub retries: u32,
    pub retry_timeout: Option<Duration>,
    pub passive: Passive,
    pub pool: PoolLimits,
    pub tls: Option<TlsSpec>,
    /// `checks.active`, for the control side's checker (shards do not read it).
    pub active: Option<health::ActiveSpec>,
}

impl ShardUpstream {
    /// Builds the shard view, reusing the pools in `old_pools` (keyed by `upstream id/node key`).
    pub fn build(spec: &UpstreamSpec, old_pools: &HashMap<String, Rc<NodePool>>) -> ShardUpstream {
        let nodes: Vec<ShardNode> = spec
            .nodes
            .iter()
            .map(|n| {
                let pool = match old_pools.get(&pool_key(&spec.id, &n.key)) {
                    Some(p) => {
                        p.set_limits(spec.pool);
                        p.clone()
                    }
                    None => Rc::new(NodePool::new(spec.pool)),
                };
                ShardNode {
                    key: n.key.clone(),
                    addr: n.addr,
                    host_header: Rc::from(n.host_header.as_str()),
                    pool,
                    priority: n.priority,
                    server_name: spec.tls.as_ref().and_then(|t| {
                        t.server_name
                            .clone()
                            .or_else(|| ServerName::try_from(n.host.clone()).ok())
                    }),
                    failures: Default::default(),
                    down_until: Cell::new(None),
                    active_down: Cell::new(false),
                }
            })
            .collect();
        let weights: Vec<u32> = spec.nodes.iter().map(|n| n.weight).collect();
        let mut levels: Vec<i32> = spec.nodes.iter().map(|n| n.priority).collect();
        levels.sort_unstable_by(|a, b| b.cmp(a));
        levels.dedup();
        let balancer = if spec.chash.is_some() {
            Balancer::chash(&weights)
        } else {
            Balancer::round_robin(&weights)
        };
        ShardUpstream {
            id: Rc::from(spec.id.as_str()),
            nodes,
            balancer,
            tls: spec.tls.as_ref().map(tls::shard_connector),
            levels,
            hash_on: spec.chash.clone(),
            pass_host: spec.pass_host.clone(),
            retries: spec.retries,
            retry_timeout: spec.retry_timeout,
            passive: spec.passive.clone(),
        }
    }

    /// The pools of this upstream, for the next reload to inherit.
    pub fn export_pools(&self, into: &mut HashMap<String, Rc<NodePool>>) {
        for n in &self.nodes {
            into.insert(pool_key(&self.id, &n.key), n.pool.clone());
        }
    }

    /// Picks a node, skipping those cooling down and those in `exclude` (already tried), from the
    /// highest priority that has one (APISIX `nodes[].priority`: a retry moves down a level only
    /// once every node above is tried or down). When every node is down we still try one: a
    /// cool-down must never turn a flaky upstream into a dead one.
    pub fn pick(&self, key: &[u8], exclude: u64, now: Instant) -> Option<usize> {
        let fresh = |i: usize| i >= 64 || exclude & (1 << i) == 0;
        if let [_] = self.levels[..] {
            return self
                .balancer
                .pick(key, &|i| fresh(i) && self.nodes[i].usable(now))
                .or_else(|| self.balancer.pick(key, &fresh));
        }
        let at = |level: i32| move |i: usize| self.nodes[i].priority == level && fresh(i);
        self.levels
            .iter()
            .find_map(|&l| {
                let at = at(l);
                self.balancer
                    .pick(key, &|i| at(i) && self.nodes[i].usable(now))
            })
            .or_else(|| {
                self.levels
                    .iter()
                    .find_map(|&l| self.balancer.pick(key, &at(l)))
            })
    }

    pub fn report_success(&self, node: usize) {
        if let Some(n) = self.nodes.get(node) {
            for f in &n.failures {
                f.set(0);
            }
            n.down_until.set(None);
        }
    }

    /// After a response head: a status the passive check counts as a failure, or a success.
    /// Returns true when the node just entered its cool-down.
    pub fn report_status(&self, node: usize, status: u16, now: Instant) -> bool {
        if self.passive.http_failures > 0 && self.passive.http_statuses.contains(&status) {
            self.report_failure(node, FailureKind::Http, now)
        } else {
            self.report_success(node);
            false
        }
    }

    /// Counts a failure; returns true when the node just entered its cool-down.
    pub fn report_failure(&self, node: usize, kind: FailureKind, now: Instant) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let (counter, limit) = match kind {
            FailureKind::Tcp => (&n.failures[0], self.passive.tcp_failures),
            FailureKind::Timeout => (&n.failures[1], self.passive.timeouts),
            FailureKind::Http => (&n.failures[2], self.passive.http_failures),
        };
        let f = counter.get().saturating_add(1);
        counter.set(f);
        if limit > 0 && f >= limit {
            n.down_until.set(Some(now + self.passive.cooldown));
            for f in &n.failures {
                f.set(0);
            }
            return true;
        }
        false
    }
}

fn pool_key(upstream: &str, node: &str) -> String {
    format!("{upstream}/{node}")
}

/// Connects to a node (and, for https, completes the TLS handshake) within `timeout.connect`.
pub async fn connect(
    up: &ShardUpstream,
    node: &ShardNode,
    timeout: Duration,
) -> Result<UpConn, UpstreamError> {
    let deadline = monotonic_now() + timeout;
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(node.addr)).await {
        Err(_) => return Err(UpstreamError::ConnectTimeout),
        Ok(Err(e)) => return Err(UpstreamError::ConnectFailed(e.to_string())),
        Ok(Ok(stream)) => stream,
    };
    // Small request/response exchanges: never wait for Nagle.
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let stream = match (&up.tls, &node.server_name) {
        (None, _) => UpStream::Plain(stream),
        (Some(connector), Some(name)) => {
            let left = deadline.saturating_duration_since(monotonic_now());
            match monoio::time::timeout(left, connector.connect(name.clone(), stream)).await {
                Err(_) => return Err(UpstreamError::ConnectTimeout),
                Ok(Err(e)) => return Err(UpstreamError::Tls(tls::describe(e))),
                Ok(Ok(s)) => UpStream::Tls(Box::new(s)),
            }
        }
        (Some(_), None) => {
            return Err(UpstreamError::Tls(format!(
                "`{}` is not a valid TLS server name",
                node.key
            )));
        }
    };
    Ok(UpConn {
        stream,
        fd,
        buf: Vec::with_capacity(16 * 1024),
        requests: 0,
        idle_since: monotonic_now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(priorities: &[i32]) -> UpstreamSpec {
        UpstreamSpec {
            id: "u".into(),
            nodes: priorities
                .iter()
                .enumerate()
                .map(|(i, p)| NodeSpec {
                    key: format!("127.0.0.1:{}", 1000 + i),
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    host_header: String::new(),
                    host: "127.0.0.1".into(),
                    weight: 1,
                    priority: *p,
                })
                .collect(),
            chash: None,
            pass_host: PassHost::Pass,
            retries: 2,
            retry_timeout: None,
            passive: Passive {
                tcp_failures: 1,
                timeouts: 1,
                http_failures: 2,
                http_statuses: Box::new([500]),
                cooldown: Duration::from_secs(10),
            },
            pool: PoolLimits {
                size: 1,
                idle_timeout: Duration::from_secs(1),
                max_requests: 1,
            },
            tls: None,
            active: None,
        }
    }

    #[test]
    fn lower_priorities_only_when_every_higher_node_is_tried_or_down() {
        let up = ShardUpstream::build(&spec(&[0, 10, 10, -1]), &HashMap::new());
        let now = monotonic_now();
        let picks: Vec<usize> = (0..6).map(|_| up.pick(b"", 0, now).unwrap()).collect();
        assert!(picks.iter().all(|i| *i == 1 || *i == 2), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        // Retries walk down: both 10s tried -> 0, then -1.
        assert_eq!(up.pick(b"", 0b0110, now), Some(0));
        assert_eq!(up.pick(b"", 0b0111, now), Some(3));
        // Down (cooling) nodes count as unavailable.
        up.report_failure(1, FailureKind::Tcp, now);
        up.report_failure(2, FailureKind::Timeout, now);
        assert_eq!(up.pick(b"", 0, now), Some(0));
        up.report_failure(0, FailureKind::Tcp, now);
        assert_eq!(up.pick(b"", 0, now), Some(3));
        // Every node down: the highest priority is still tried rather than failing outright.
        up.report_failure(3, FailureKind::Tcp, now);
        let p = up.pick(b"", 0, now).unwrap();
        assert!(p == 1 || p == 2, "{p}");
        // A node back up takes its level's traffic again.
        up.report_success(0);
        assert_eq!(up.pick(b"", 0, now), Some(0));
    }

    #[test]
    fn passive_counts_each_kind_of_failure_in_a_row() {
        let up = ShardUpstream::build(&spec(&[0, 0]), &HashMap::new());
        let now = monotonic_now();
        // http_failures: 2 with [500]: any other status in between (a success) resets the count.
        assert!(!up.report_status(0, 500, now));
        assert!(!up.report_status(0, 200, now));
        assert!(!up.report_status(0, 500, now));
        assert!(!up.report_status(0, 404, now));
        assert!(!up.report_status(0, 500, now));
        assert!(
            up.report_status(0, 500, now),
            "two counted statuses in a row"
        );
        assert!(!up.nodes[0].usable(now));
        assert!(
            up.nodes[0].usable(now + Duration::from_secs(10)),
            "cool-down ends"
        );
        // tcp_failures: 1.
        assert!(up.report_failure(1, FailureKind::Tcp, now));
    }
}
