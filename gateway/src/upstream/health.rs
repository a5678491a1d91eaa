//! Active health checks (APISIX `checks.active`), run on the control thread.
//!
//! ```text
//!  control thread: run() --probe tasks (connect / TLS / GET http_path)--> nodes
//!        | a node flips healthy <-> unhealthy
//!        v
//!  Publisher<HealthSnapshot> --> each shard's Local --> Shard::current() copies the flags into
//!                                                      its ShardNodes (Cells) between requests
//! ```
//!
//! The request path never looks at this module: a shard reads its own `ShardNode` flag. A snapshot
//! names the config version it was computed for; a shard ignores one for another version, and a
//! reload starts the checks of the new config with the states of nodes it kept (same upstream id
//! and node address).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::monotonic_now;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use shardgate_runtime::Shutdown;
use shardgate_runtime::snapshot::Publisher;

use super::tls::UpStream;
use crate::config::{ActiveCheck, ActiveKind};
use crate::published::Published;

/// Which nodes the active checks hold down, for one config version.
#[derive(Debug, Default)]
pub struct HealthSnapshot {
    /// `Published::version` these flags index into.
    pub config_version: u64,
    /// `down[upstream][node]`; an upstream without active checks has an empty list.
    pub down: Vec<Vec<bool>>,
}

/// What the control side needs to probe one upstream (built with the published config).
#[derive(Clone)]
pub struct ActiveSpec {
    pub check: ActiveCheck,
    /// For `type: https` probes.
    pub tls: Option<Arc<ClientConfig>>,
}

/// One probe's outcome, in lua-resty-healthcheck's terms.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    HttpFailure(u16),
    TcpFailure(String),
    Timeout,
    /// A status in neither list: counts for nothing.
    Neutral(u16),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success => f.write_str("success"),
            Outcome::HttpFailure(s) => write!(f, "status {s}"),
            Outcome::TcpFailure(e) => write!(f, "connect failed: {e}"),
            Outcome::Timeout => f.write_str("timed out"),
            Outcome::Neutral(s) => write!(f, "status {s} (neither list)"),
        }
    }
}

struct NodeState {
    healthy: Cell<bool>,
    successes: Cell<u32>,
    http_failures: Cell<u32>,
    tcp_failures: Cell<u32>,
    timeouts: Cell<u32>,
    next_due: Cell<Instant>,
    probing: Cell<bool>,
}

impl NodeState {
    fn new(now: Instant) -> NodeState {
        NodeState {
            healthy: Cell::new(true),
            successes: Cell::new(0),
            http_failures: Cell::new(0),
            tcp_failures: Cell::new(0),
            timeouts: Cell::new(0),
            next_due: Cell::new(now),
            probing: Cell::new(false),
        }
    }

    /// Applies an outcome; returns true when the node flipped.
    fn record(&self, c: &ActiveCheck, outcome: &Outcome) -> bool {
        let bump = |cell: &Cell<u32>| {
            cell.set(cell.get().saturating_add(1));
            cell.get()
        };
        let reset_bad = || {
            self.http_failures.set(0);
            self.tcp_failures.set(0);
            self.timeouts.set(0);
        };
        let healthy = self.healthy.get();
        let flip = match outcome {
            Outcome::Success => {
                reset_bad();
                !healthy && bump(&self.successes) >= c.successes
            }
            Outcome::Neutral(_) => false,
            bad => {
                self.successes.set(0);
                let (n, limit) = match bad {
                    Outcome::HttpFailure(_) => (bump(&self.http_failures), c.http_failures),
                    Outcome::TcpFailure(_) => (bump(&self.tcp_failures), c.tcp_failures),
                    _ => (bump(&self.timeouts), c.timeouts),
                };
                healthy && n >= limit
            }
        };
        if flip {
            self.healthy.set(!healthy);
            self.successes.set(0);
            reset_bad();
        }
        flip
    }
}

struct Target {
    upstream: usize,
    node: usize,
    upstream_id: String,
    node_key: String,
    addr: SocketAddr,
    /// Host header and TLS name.
    host: String,
    spec: ActiveSpec,
    state: Rc<NodeState>,
    inflight: Rc<Cell<usize>>,
}

/// The checker actor: runs until shutdown on the control thread's runtime.
pub async fn run(
    config: Arc<Publisher<Published>>,
    out: Arc<Publisher<HealthSnapshot>>,
    shutdown: Shutdown,
) {
    let mut version = 0u64;
    let mut targets: Vec<Rc<Target>> = Vec::new();
    let mut shape: Vec<usize> = Vec::new();
    let changed = Rc::new(Cell::new(false));
    loop {
        let published = config.current();
        if published.version != version {
            version = published.version;
            (targets, shape) = plan(&published, &targets);
            publish(&out, version, &shape, &targets);
        }
        let now = monotonic_now();
        for t in &targets {
            let due = t.state.next_due.get() <= now;
            if due && !t.state.probing.get() && t.inflight.get() < t.spec.check.concurrency {
                t.state.probing.set(true);
                t.inflight.set(t.inflight.get() + 1);
                let (t, changed) = (t.clone(), changed.clone());
                monoio::spawn(async move {
                    let outcome = probe(&t).await;
                    let c = &t.spec.check;
                    if t.state.record(c, &outcome) {
                        changed.set(true);
                        if t.state.healthy.get() {
                            tracing::info!(upstream = %t.upstream_id, node = %t.node_key, %outcome, "upstream node healthy again (active check)");
                        } else {
                            tracing::warn!(upstream = %t.upstream_id, node = %t.node_key, %outcome, "upstream node marked unhealthy (active check)");
                        }
                    }
                    let interval = if t.state.healthy.get() {
                        c.healthy_interval
                    } else {
                        c.unhealthy_interval
                    };
                    t.state.next_due.set(monotonic_now() + interval);
                    t.state.probing.set(false);
                    t.inflight.set(t.inflight.get().saturating_sub(1));
                });
            }
        }
        if changed.replace(false) {
            publish(&out, version, &shape, &targets);
        }
        // Intervals are whole seconds in APISIX: a 100 ms tick is precise enough and costs the
        // control thread nothing measurable; without checks only reloads are watched.
        let tick = if targets.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        };
        monoio::select! {
            _ = monoio::time::sleep(tick) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The probe targets of a config, keeping the state of nodes that were already checked.
fn plan(published: &Published, old: &[Rc<Target>]) -> (Vec<Rc<Target>>, Vec<usize>) {
    let mut kept: HashMap<(&str, &str), Rc<NodeState>> = HashMap::new();
    for t in old {
        kept.insert(
            (t.upstream_id.as_str(), t.node_key.as_str()),
            t.state.clone(),
        );
    }
    let now = monotonic_now();
    let mut targets = Vec::new();
    let mut shape = Vec::with_capacity(published.upstreams.len());
    for (ui, u) in published.upstreams.iter().enumerate() {
        let Some(spec) = &u.active else {
            shape.push(0);
            continue;
        };
        shape.push(u.nodes.len());
        let inflight = Rc::new(Cell::new(0));
        for (ni, n) in u.nodes.iter().enumerate() {
            let state = kept
                .get(&(u.id.as_str(), n.key.as_str()))
                .cloned()
                .unwrap_or_else(|| Rc::new(NodeState::new(now)));
            let mut addr = n.addr;
            if let Some(port) = spec.check.port {
                addr.set_port(port);
            }
            targets.push(Rc::new(Target {
                upstream: ui,
                node: ni,
                upstream_id: u.id.clone(),
                node_key: n.key.clone(),
                addr,
                host: spec.check.host.clone().unwrap_or_else(|| n.host.clone()),
                spec: spec.clone(),
                state,
                inflight: inflight.clone(),
            }));
        }
    }
    (targets, shape)
}

fn publish(out: &Publisher<HealthSnapshot>, version: u64, shape: &[usize], targets: &[Rc<Target>]) {
    let mut down: Vec<Vec<bool>> = shape.iter().map(|n| vec![false; *n]).collect();
    for t in targets {
        if let Some(flag) = down.get_mut(t.upstream).and_then(|d| d.get_mut(t.node)) {
            *flag = !t.state.healthy.get();
        }
    }
    out.publish(Arc::new(HealthSnapshot {
        config_version: version,
        down,
    }));
}

async fn probe(t: &Target) -> Outcome {
    let c = &t.spec.check;
    match monoio::time::timeout(c.timeout, exchange(t)).await {
        Err(_) => Outcome::Timeout,
        Ok(o) => o,
    }
}

async fn exchange(t: &Target) -> Outcome {
    let c = &t.spec.check;
    let tcp = match TcpStream::connect_addr(t.addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::TcpFailure(e.to_string()),
    };
    if c.kind == ActiveKind::Tcp {
        return Outcome::Success;
    }
    let mut stream = match (&c.kind, &t.spec.tls) {
        (ActiveKind::Https, Some(cfg)) => {
            let Ok(name) = ServerName::try_from(t.host.clone()) else {
                return Outcome::TcpFailure(format!("`{}` is not a valid TLS name", t.host));
            };
            match monoio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
            {
                Ok(s) => UpStream::Tls(Box::new(s)),
                Err(e) => return Outcome::TcpFailure(super::tls::describe(e)),
            }
        }
        _ => UpStream::Plain(tcp),
    };
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shardgate-healthcheck\r\nConnection: close\r\n",
        c.http_path,
        host_header(&t.host, t.addr.port(), c.kind)
    );
    for (n, v) in &c.req_headers {
        req.push_str(n);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let (r, _) = stream.write_all(req.into_bytes()).await;
    if let Err(e) = r {
        return Outcome::TcpFailure(e.to_string());
    }
    // Only the status line matters.
    let mut head: Vec<u8> = Vec::with_capacity(256);
    loop {
        if let Some(status) = status_code(&head) {
            return if c.unhealthy_statuses.contains(&status) {
                Outcome::HttpFailure(status)
            } else if c.healthy_statuses.contains(&status) {
                Outcome::Success
            } else {
                Outcome::Neutral(status)
            };
        }
        if head.len() >= 4096 || head.contains(&b'\n') {
            return Outcome::TcpFailure("not an HTTP response".into());
        }
        let buf = Vec::with_capacity(512);
        let (r, buf) = stream.read(buf).await;
        match r {
            Ok(0) => return Outcome::TcpFailure("closed before a status line".into()),
            Ok(_) => head.extend_from_slice(&buf),
            Err(e) => return Outcome::TcpFailure(e.to_string()),
        }
    }
}

fn host_header(host: &str, port: u16, kind: ActiveKind) -> String {
    let default = if kind == ActiveKind::Https { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == default {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// `HTTP/1.x NNN` once the status line is complete.
fn status_code(head: &[u8]) -> Option<u16> {
    let end = head.iter().position(|b| *b == b'\n')?;
    let line = &head[..end];
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// A shard's view: applies a snapshot's flags to the shard's compiled upstreams.
pub fn apply(snapshot: &HealthSnapshot, config_version: u64, upstreams: &[super::ShardUpstream]) {
    if snapshot.config_version != config_version {
        return;
    }
    for (u, flags) in upstreams.iter().zip(&snapshot.down) {
        for (n, down) in u.nodes.iter().zip(flags) {
            n.active_down.set(*down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> ActiveCheck {
        ActiveCheck {
            kind: ActiveKind::Http,
            timeout: Duration::from_secs(1),
            concurrency: 1,
            host: None,
            port: None,
            http_path: "/".into(),
            https_verify_certificate: true,
            req_headers: Vec::new(),
            healthy_interval: Duration::from_secs(1),
            healthy_statuses: vec![200, 302],
            successes: 2,
            unhealthy_interval: Duration::from_secs(1),
            unhealthy_statuses: vec![500],
            http_failures: 3,
            tcp_failures: 2,
            timeouts: 3,
        }
    }

    #[test]
    fn thresholds_count_consecutive_outcomes_of_one_kind() {
        let c = check();
        let s = NodeState::new(monotonic_now());
        assert!(!s.record(&c, &Outcome::HttpFailure(500)));
        assert!(!s.record(&c, &Outcome::HttpFailure(500)));
        // A success in between starts the count again.
        assert!(!s.record(&c, &Outcome::Success));
        assert!(!s.record(&c, &Outcome::HttpFailure(500)));
        assert!(!s.record(&c, &Outcome::HttpFailure(500)));
        assert!(
            !s.record(&c, &Outcome::Neutral(418)),
            "neutral counts for nothing"
        );
        assert!(s.record(&c, &Outcome::HttpFailure(500)), "third in a row");
        assert!(!s.healthy.get());
        assert!(!s.record(&c, &Outcome::Success));
        assert!(!s.record(&c, &Outcome::TcpFailure("refused".into())));
        assert!(!s.record(&c, &Outcome::Success));
        assert!(s.record(&c, &Outcome::Success), "two successes in a row");
        assert!(s.healthy.get());
        assert!(!s.record(&c, &Outcome::TcpFailure("refused".into())));
        assert!(s.record(&c, &Outcome::TcpFailure("refused".into())));
        assert!(!s.healthy.get());
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), None);
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2x0 OK\r\n"), None);
    }
}
