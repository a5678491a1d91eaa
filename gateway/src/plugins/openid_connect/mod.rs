//! `openid-connect`: the glue between the request pipeline and the `shardgate-oidc` crate.
//!
//! ```text
//! control thread                         every shard
//!  OidcShared (Plugin::Global)             ShardOidc (Plugin::ShardGlobal: clock, RNG, providers)
//!   ├─ registry: ProviderSpec -> handle      └─ RouteAuth per route instance (the Plugin)
//!   └─ spawns provider actors  ──state──►         verified-token cache, negative cache,
//!        (discovery, JWKS, single-flight)         introspection cache, kid negative cache
//! ```
//! A route's settings are prepared once per config load ([`OidcRoute`]: keys parsed, schema
//! compiled, client authentication loaded); the request path only looks things up.

pub mod bearer;
pub mod prepare;
pub mod session;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ring::rand::SecureRandom;
use shardgate_oidc::cache::TtlCache;
use shardgate_oidc::config::OidcConf;
use shardgate_oidc::idp::provider::{
    self, ProviderHandle, ProviderMsg, ProviderSpec, ProviderState,
};
use shardgate_runtime::actor::Mailbox;
use shardgate_runtime::clock::{Clock, CoarseClock};
use shardgate_runtime::gate::Shutdown;
use shardgate_runtime::snapshot::Local;

use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem};

pub use prepare::OidcRoute;

/// Process-wide registry of provider actors, shared by the control thread and config loads.
pub struct OidcShared {
    providers: Mutex<HashMap<ProviderSpec, ProviderHandle>>,
    /// Back-channel logouts, appended by whichever shard received them; every shard copies new
    /// entries into its own list when `revocation_version` moves (one relaxed load per session
    /// request, a cache line that is written only on logout).
    revocations: Mutex<Vec<(shardgate_oidc::flow::LogoutSubject, u64)>>,
    revocation_version: std::sync::atomic::AtomicU64,
    spawn_tx: flume::Sender<(ProviderHandle, Mailbox<ProviderMsg>)>,
    spawn_rx: flume::Receiver<(ProviderHandle, Mailbox<ProviderMsg>)>,
}

impl OidcShared {
    pub fn new() -> Arc<OidcShared> {
        let (spawn_tx, spawn_rx) = flume::unbounded();
        Arc::new(OidcShared {
            providers: Mutex::new(HashMap::new()),
            revocations: Mutex::new(Vec::new()),
            revocation_version: std::sync::atomic::AtomicU64::new(0),
            spawn_tx,
            spawn_rx,
        })
    }

    pub fn revocation_version(&self) -> u64 {
        self.revocation_version.load(Ordering::Acquire)
    }

    /// Revocations published after version `seen` (versions count entries).
    pub fn revocations_since(&self, seen: u64) -> Vec<(shardgate_oidc::flow::LogoutSubject, u64)> {
        let list = match self.revocations.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let from = usize::try_from(seen).unwrap_or(usize::MAX).min(list.len());
        list[from..].to_vec()
    }

    pub fn publish_revocation(&self, subject: shardgate_oidc::flow::LogoutSubject, until: u64) {
        let mut list = match self.revocations.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        list.push((subject, until));
        self.revocation_version
            .store(list.len() as u64, Ordering::Release);
    }

    /// The provider for `spec`, created (and queued for the control thread to run) on first use,
    /// so routes and reloads with the same IdP settings share one actor and one JWKS.
    pub fn provider(&self, spec: ProviderSpec) -> ProviderHandle {
        let mut map = match self.providers.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(h) = map.get(&spec) {
            return h.clone();
        }
        let (handle, mailbox) = ProviderHandle::new(spec.clone());
        let _ = self.spawn_tx.send((handle.clone(), mailbox));
        map.insert(spec, handle.clone());
        handle
    }

    fn all(&self) -> Vec<ProviderHandle> {
        match self.providers.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        }
    }
}

impl OidcShared {
    /// Starts the task that spawns provider actors; call on the control thread's runtime.
    fn start_spawner(&self, shutdown: Shutdown) {
        let rx = self.spawn_rx.clone();
        monoio::spawn(async move {
            loop {
                let next = monoio::select! {
                    n = rx.recv_async() => n,
                    _ = shutdown.wait() => return,
                };
                let Ok((handle, mailbox)) = next else { return };
                monoio::spawn(provider::run(handle, mailbox, shutdown.clone()));
            }
        });
    }

    /// Ready when every provider in use has its discovery (and JWKS when needed).
    pub fn readiness(&self) -> (bool, String) {
        let mut ok = true;
        let mut parts = Vec::new();
        for h in self.all() {
            let st = h.state.current();
            let ready = h.is_ready();
            ok &= ready;
            let detail = match &st.status {
                provider::Status::Ready => "ready".to_string(),
                provider::Status::Pending(why) => why.clone(),
            };
            parts.push(format!(
                "{{\"discovery\":{},\"ready\":{ready},\"detail\":{}}}",
                json_str(&h.spec.discovery_url),
                json_str(&detail)
            ));
        }
        (ok, format!("[{}]", parts.join(",")))
    }

    /// Provider counters for /metrics.
    pub fn counters(&self, out: &mut BTreeMap<String, u64>) {
        for h in self.all() {
            let c = &h.counters;
            let d = json_str(&h.spec.discovery_url);
            let mut put = |name: &str, outcome: &str, v: &std::sync::atomic::AtomicU64| {
                out.insert(
                    format!("{name}{{discovery={d},outcome=\"{outcome}\"}}"),
                    v.load(Ordering::Relaxed),
                );
            };
            put(
                "shardgate_oidc_discovery_fetches_total",
                "ok",
                &c.discovery_ok,
            );
            put(
                "shardgate_oidc_discovery_fetches_total",
                "error",
                &c.discovery_err,
            );
            put("shardgate_oidc_jwks_fetches_total", "ok", &c.jwks_ok);
            put("shardgate_oidc_jwks_fetches_total", "error", &c.jwks_err);
            put(
                "shardgate_oidc_jwks_unknown_kid_refetches_total",
                "started",
                &c.jwks_forced,
            );
            put(
                "shardgate_oidc_jwks_unknown_kid_refetches_total",
                "rate_limited",
                &c.kid_rate_limited,
            );
            put(
                "shardgate_oidc_idp_shared_calls_total",
                "sent",
                &c.shared_calls,
            );
            put(
                "shardgate_oidc_idp_shared_calls_total",
                "coalesced",
                &c.shared_coalesced,
            );
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Shard side: what every route's auth on this shard shares.
#[derive(Clone)]
pub struct ShardOidc {
    inner: Rc<ShardOidcInner>,
}

struct ShardOidcInner {
    shard: usize,
    shared: Arc<OidcShared>,
    clock: CoarseClock,
    rng: ring::rand::SystemRandom,
    /// Provider snapshots attached on this shard, by discovery URL + settings.
    providers: RefCell<HashMap<ProviderSpec, Local<ProviderState>>>,
}

impl ShardOidc {
    pub fn new(shard: usize, shared: Arc<OidcShared>) -> ShardOidc {
        ShardOidc {
            inner: Rc::new(ShardOidcInner {
                shard,
                shared,
                clock: shardgate_runtime::clock::shard_clock(),
                rng: ring::rand::SystemRandom::new(),
                providers: RefCell::new(HashMap::new()),
            }),
        }
    }

    pub fn now_secs(&self) -> u64 {
        self.inner.clock.unix_secs()
    }

    pub fn now_millis(&self) -> u64 {
        self.inner.clock.unix_millis()
    }

    pub fn shard(&self) -> usize {
        self.inner.shard
    }

    pub fn shared(&self) -> &OidcShared {
        &self.inner.shared
    }

    /// A random URL-safe id (`jti`, state, nonce).
    pub fn random_id(&self) -> String {
        let mut b = [0u8; 16];
        if self.inner.rng.fill(&mut b).is_err() {
            // The system RNG does not fail on Linux; a predictable jti would only weaken replay
            // detection at the IdP, so fall back to time rather than panicking.
            b[..8].copy_from_slice(&self.now_millis().to_le_bytes());
        }
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
    }

    pub fn rng(&self) -> &ring::rand::SystemRandom {
        &self.inner.rng
    }

    /// The shard-local snapshot of a provider (attached once per shard).
    fn provider_state(&self, handle: &ProviderHandle) -> Local<ProviderState> {
        let mut map = self.inner.providers.borrow_mut();
        if let Some(l) = map.get(&*handle.spec) {
            return l.clone();
        }
        let local = handle.state.subscribe().attach();
        map.insert((*handle.spec).clone(), local.clone());
        local
    }
}

/// One route's authentication on one shard, with its caches. Rebuilt only when the route's
/// plugin config changes (its fingerprint), so caches survive unrelated reloads.
pub struct RouteAuth {
    pub route: Arc<OidcRoute>,
    pub oidc: ShardOidc,
    pub provider: Option<(ProviderHandle, Local<ProviderState>)>,
    pub verified: RefCell<TtlCache<Rc<bearer::Verified>>>,
    pub rejected: RefCell<TtlCache<bearer::Rejected>>,
    pub introspected: RefCell<TtlCache<Rc<bearer::Verified>>>,
    pub policy: RefCell<Option<(u64, Rc<shardgate_oidc::claims::ClaimsPolicy>)>>,
    /// Cookie sessions (absent with `bearer_only`).
    pub session: Option<session::SessionState>,
    /// Prefix of our cookies, removed from the upstream Cookie header.
    pub cookie_prefix: Rc<str>,
}

impl RouteAuth {
    pub fn new(route: Arc<OidcRoute>, oidc: &ShardOidc) -> RouteAuth {
        let provider = route
            .provider
            .as_ref()
            .map(|h| (h.clone(), oidc.provider_state(h)));
        let cap = route.conf.jwt_verification_cache_size.max(16);
        let session = if route.conf.bearer_only {
            None
        } else {
            match session::SessionState::new(&route.conf) {
                Ok(s) => Some(s),
                Err(e) => {
                    // Config validation requires a valid secret; reaching here means a bug there.
                    tracing::error!(error = %e, "cookie sessions disabled on this route");
                    None
                }
            }
        };
        let cookie_prefix: Rc<str> = Rc::from(route.conf.session.cookie_name.as_str());
        RouteAuth {
            session,
            cookie_prefix,
            oidc: oidc.clone(),
            provider,
            verified: RefCell::new(TtlCache::new(cap)),
            rejected: RefCell::new(TtlCache::new(cap.min(4096))),
            introspected: RefCell::new(TtlCache::new(cap)),
            policy: RefCell::new(None),
            route,
        }
    }
}

/// APISIX's `openid-connect`: one [`RouteAuth`] per route instance per shard.
impl Plugin for RouteAuth {
    const NAME: &'static str = "openid-connect";
    const PRIORITY: i32 = 2599;
    const PHASES: Phases = Phases::REWRITE;
    type Conf = OidcConf;
    type Instance = OidcRoute;
    type Global = OidcShared;
    type ShardGlobal = ShardOidc;

    fn parse(value: serde_yaml::Value, path: &str) -> Result<OidcConf, Vec<Problem>> {
        let conf: OidcConf = crate::pipeline::registry::deserialize(value, path)?;
        let problems = conf.check(path);
        if problems.is_empty() {
            Ok(conf)
        } else {
            Err(problems)
        }
    }

    fn warnings(routes: &[(usize, crate::config::RouteConf)]) -> Vec<Problem> {
        prepare::redirect_uri_warnings(routes)
    }

    fn global() -> Arc<OidcShared> {
        OidcShared::new()
    }

    fn shard_global(shard: usize, global: &Arc<OidcShared>) -> ShardOidc {
        ShardOidc::new(shard, global.clone())
    }

    fn build(conf: Arc<OidcConf>, global: &OidcShared, path: &str) -> Result<OidcRoute, String> {
        prepare::prepare(conf, global, path)
    }

    fn fingerprint(instance: &OidcRoute) -> u64 {
        instance.fingerprint
    }

    fn attach(instance: Arc<OidcRoute>, shard: &ShardOidc) -> RouteAuth {
        RouteAuth::new(instance, shard)
    }

    fn readiness(global: &OidcShared) -> Option<(bool, &'static str, String)> {
        let (ok, detail) = global.readiness();
        Some((ok, "providers", detail))
    }

    fn counters(global: &OidcShared, out: &mut BTreeMap<String, u64>) {
        global.counters(out);
    }

    fn start(global: &Arc<OidcShared>, shutdown: &Shutdown) {
        global.start_spawner(shutdown.clone());
    }

    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let out = ctx.outcome();
        out.strip_identity_headers = true;
        if self.route.conf.hide_credentials {
            out.strip_authorization = true;
        }
        bearer::rewrite(self, ctx).await
    }
}
