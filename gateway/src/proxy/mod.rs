//! The data path: one [`Shard`] per core, its listeners, and the per-connection loop.
//!
//! ```text
//! accept ─► conn::serve ─► read_head ─► route ─► plugins: rewrite, access, before_proxy
//!                ▲                                  ─► forward::exchange (header_filter) ─► log
//!                └──────────────────── keep-alive / pipelining ◄──────────┘
//! ```
//! The phases are spelled out in `conn.rs` in that order; `forward.rs` owns everything that talks
//! to the upstream (node selection, pool, request head, bodies, response relay, upgrades). The
//! plugins run through `pipeline::Chain`, built here per route and shard from the published
//! instances.

pub mod conn;
pub mod forward;
pub mod io;
pub mod relay;
pub mod stream;
pub mod tunnel;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use shardgate_runtime::gate::{Gate, LocalShutdown, Shutdown};
use shardgate_runtime::shard::ShardInfo;
use shardgate_runtime::snapshot::Local;

use crate::observe::metrics::{RouteStats, ShardMetrics};
use crate::pipeline::registry::Chain;
use crate::pipeline::{ShardPlugin, ShardPlugins};
use crate::published::Published;
use crate::upstream::health::{self, HealthSnapshot};
use crate::upstream::pool::NodePool;
use crate::upstream::{ShardUpstream, Timeouts};

/// A route as one shard runs it.
pub struct ShardRoute {
    pub id: Rc<str>,
    pub upstream: usize,
    pub websocket: bool,
    /// `keep_client_identity_headers`: forward client-sent `X-Userinfo` & co. (off by default).
    pub keep_identity_headers: bool,
    /// The route's `timeout`, else its upstream's.
    pub timeouts: Timeouts,
    /// Global rules' plugins, then the route's, in execution order.
    pub plugins: Chain,
    pub stats: Rc<RouteStats>,
}

/// The shard's compiled view of one published config version.
pub struct Compiled {
    /// The snapshot version this was compiled from (`Local::version`).
    pub local_version: u64,
    pub version: u64,
    pub published: Rc<Arc<Published>>,
    pub upstreams: Vec<ShardUpstream>,
    pub routes: Vec<ShardRoute>,
    /// The active-check snapshot version last copied into `upstreams` (`Local::version`).
    health_version: Cell<u64>,
}

/// Everything a shard owns. Never shared with another thread.
pub struct Shard {
    pub info: ShardInfo,
    published: Local<Published>,
    /// Active health checks' verdicts, published by the control side.
    health: Local<HealthSnapshot>,
    compiled: RefCell<Rc<Compiled>>,
    pub metrics: ShardMetrics,
    pub gate: Gate,
    /// Shard-local view of the process shutdown: connections await it without shared state.
    pub shutdown: LocalShutdown,
    /// Plugins' shard-local parts (caches) by owner, plugin and fingerprint: they survive reloads
    /// while the plugin's attributes are unchanged.
    plugin_state: RefCell<HashMap<String, ShardPlugin>>,
    pub plugins: ShardPlugins,
}

impl Shard {
    pub fn new(
        info: ShardInfo,
        published: Local<Published>,
        health: Local<HealthSnapshot>,
        shutdown: Shutdown,
        plugins: ShardPlugins,
    ) -> Rc<Shard> {
        let metrics = ShardMetrics::new(info.id);
        let plugin_state = RefCell::new(HashMap::new());
        let snap = published.load();
        let compiled = compile(
            &snap,
            published.version(),
            &HashMap::new(),
            &metrics,
            &plugin_state,
            &plugins,
        );
        Rc::new(Shard {
            info,
            published,
            health,
            compiled: RefCell::new(Rc::new(compiled)),
            metrics,
            gate: Gate::new(),
            shutdown: shutdown.local(),
            plugin_state,
            plugins,
        })
    }

    /// The config to serve the next request with. A new published version is compiled here,
    /// between requests; requests in flight keep the `Rc` they started with.
    pub fn current(&self) -> Rc<Compiled> {
        let version = self.published.version();
        {
            let c = self.compiled.borrow();
            if c.local_version == version {
                self.sync_health(&c);
                return c.clone();
            }
        }
        let snap = self.published.load();
        let mut pools = HashMap::new();
        for u in &self.compiled.borrow().upstreams {
            u.export_pools(&mut pools);
        }
        let compiled = Rc::new(compile(
            &snap,
            version,
            &pools,
            &self.metrics,
            &self.plugin_state,
            &self.plugins,
        ));
        self.sync_health(&compiled);
        *self.compiled.borrow_mut() = compiled.clone();
        tracing::info!(
            shard = self.info.id,
            version = compiled.version,
            "shard switched to new config"
        );
        compiled
    }
}

impl Shard {
    /// Copies a new active-check verdict into the nodes, between requests: the request path only
    /// reads its own node flags (one version compare per request when nothing changed).
    fn sync_health(&self, c: &Compiled) {
        let v = self.health.version();
        if c.health_version.get() != v {
            health::apply(&self.health.load(), c.version, &c.upstreams);
            c.health_version.set(v);
        }
    }
}

// `Local::load` hands out `Rc<Arc<_>>` so a request never touches the shared refcount.
#[allow(clippy::redundant_allocation)]
fn compile(
    snap: &Rc<Arc<Published>>,
    local_version: u64,
    pools: &HashMap<String, Rc<NodePool>>,
    metrics: &ShardMetrics,
    plugin_state: &RefCell<HashMap<String, ShardPlugin>>,
    plugins: &ShardPlugins,
) -> Compiled {
    let upstreams = snap
        .upstreams
        .iter()
        .map(|spec| ShardUpstream::build(spec, pools))
        .collect();
    let mut old_state = plugin_state.borrow_mut();
    let mut new_state = HashMap::new();
    let routes = snap
        .routes
        .iter()
        .map(|r| {
            // A global rule's instance is attached once per shard and shared by every route's
            // chain, so its shard-local state (caches) is one, not one per route.
            let mut attach = |owner: &str, i: &crate::pipeline::Instance| {
                let key = format!("{owner}#{}#{}", i.name(), i.fingerprint());
                let p = match new_state.get(&key).or_else(|| old_state.get(&key)) {
                    Some(p) => p.clone(),
                    None => i.attach(plugins),
                };
                new_state.insert(key, p.clone());
                p
            };
            let mut chain: Vec<ShardPlugin> =
                Vec::with_capacity(snap.global_plugins.len() + r.plugins.len());
            chain.extend(snap.global_plugins.iter().map(|i| attach("global", i)));
            chain.extend(
                r.plugins
                    .iter()
                    .map(|i| attach(&format!("route:{}", r.id), i)),
            );
            ShardRoute {
                id: Rc::from(r.id.as_str()),
                upstream: r.upstream,
                websocket: r.websocket,
                keep_identity_headers: r.keep_identity_headers,
                timeouts: r.timeouts,
                plugins: Chain::new(chain, snap.global_plugins.len()),
                stats: metrics.route(&r.id),
            }
        })
        .collect();
    *old_state = new_state;
    Compiled {
        local_version,
        version: snap.version,
        published: snap.clone(),
        upstreams,
        health_version: Cell::new(u64::MAX),
        routes,
    }
}
