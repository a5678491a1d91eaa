//! `openid-connect`: the glue between the request pipeline and the `shardgate-oidc` crate.
//!
//! ```text
//! control thread                         every shard
//!  OidcShared (Plugin::Global)             ShardOidc (Plugin::ShardGlobal: clock, RNG, providers)
//!  OidcControl (its control-side hooks)     └─ RouteAuth per route instance (the Plugin)
//!   ├─ registry: ProviderSpec -> handle
//!   ├─ spawns provider actors  ──state──►         verified-token cache, negative cache,
//!   │    (discovery, JWKS, single-flight)         introspection cache, kid negative cache
//!   └─ revocation actor ◄──back-channel logout── (the shard that received it)
//!        owns the set, prunes ──snapshot──► every shard's Local<RevocationSet>
//! ```
//! A route's settings are prepared once per config load ([`OidcRoute`]: keys parsed, schema
//! compiled, client authentication loaded); the request path only looks things up.

pub mod bearer;
pub mod dpop;
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
use shardgate_oidc::flow::{LogoutSubject, RevocationSet};
use shardgate_oidc::idp::provider::{
    self, ProviderHandle, ProviderMsg, ProviderSpec, ProviderState,
};
use shardgate_runtime::actor::{self, Addr, Mailbox, Reply};
use shardgate_runtime::clock::{Clock, CoarseClock};
use shardgate_runtime::gate::Shutdown;
use shardgate_runtime::snapshot::{Local, Publisher};

use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem};

pub use prepare::OidcRoute;

/// Process-wide registry of provider actors, shared by the control thread and config loads.
pub struct OidcShared {
    /// Each provider with the token that stops its actor once no route uses it.
    providers: Mutex<HashMap<ProviderSpec, (ProviderHandle, Shutdown)>>,
    /// (route id, its provider) of the config being served, for per-route /metrics series.
    in_use: Mutex<Vec<(String, ProviderHandle)>>,
    /// Back-channel logouts in force. Only the revocation actor on the control thread publishes;
    /// shards read their `Local` copy (no lock, no shared atomic on the request path).
    revocations: Publisher<RevocationSet>,
    revoke_addr: Addr<RevokeMsg>,
    /// Taken by [`OidcControl::start`], which runs the actor.
    revoke_mailbox: Mutex<Option<Mailbox<RevokeMsg>>>,
    spawn_tx: flume::Sender<(ProviderHandle, Mailbox<ProviderMsg>, Shutdown)>,
    spawn_rx: flume::Receiver<(ProviderHandle, Mailbox<ProviderMsg>, Shutdown)>,
    /// DPoP `jti` replay set and nonce key: one per process, so every shard sees every proof
    /// and accepts every shard's nonces, and a reload does not forget proofs still in their window.
    dpop_guard: Arc<dpop::DpopGuard>,
}

impl OidcShared {
    pub fn new() -> Arc<OidcShared> {
        let (spawn_tx, spawn_rx) = flume::unbounded();
        let (revoke_addr, revoke_mailbox) = actor::mailbox(1024);
        Arc::new(OidcShared {
            providers: Mutex::new(HashMap::new()),
            in_use: Mutex::new(Vec::new()),
            revocations: Publisher::new(Arc::new(RevocationSet::default())),
            revoke_addr,
            revoke_mailbox: Mutex::new(Some(revoke_mailbox)),
            spawn_tx,
            spawn_rx,
            dpop_guard: Arc::new(dpop::DpopGuard::new()),
        })
    }

    pub fn dpop_guard(&self) -> Arc<dpop::DpopGuard> {
        self.dpop_guard.clone()
    }

    /// Hands a verified back-channel logout to the revocation actor and waits until the set that
    /// holds it has been published to every shard.
    pub async fn revoke(
        &self,
        issuer: &str,
        subject: LogoutSubject,
        until: u64,
    ) -> Result<(), shardgate_runtime::actor::AskError> {
        self.revoke_addr
            .ask(
                |reply| RevokeMsg {
                    issuer: issuer.to_owned(),
                    subject,
                    until,
                    reply,
                },
                std::time::Duration::from_secs(5),
            )
            .await
    }

    /// Entries in the revocation set as last published.
    pub fn revocations_in_force(&self) -> usize {
        self.revocations.current().len()
    }

    /// The provider for `spec`, created (and queued for the control thread to run) on first use,
    /// so routes and reloads with the same IdP settings share one actor and one JWKS.
    pub fn provider(&self, spec: ProviderSpec) -> ProviderHandle {
        let mut map = match self.providers.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some((h, _)) = map.get(&spec) {
            return h.clone();
        }
        let (handle, mailbox) = ProviderHandle::new(spec.clone());
        let stop = Shutdown::new();
        let _ = self.spawn_tx.send((handle.clone(), mailbox, stop.clone()));
        map.insert(spec, (handle.clone(), stop));
        handle
    }

    /// Makes `published` the config whose providers are kept: every other provider (a route
    /// removed by a reload, or created by a reload that was then rejected) leaves the registry,
    /// its actor stops, and its /metrics series go. Call after every publish and every rejected
    /// build, with the config being served.
    pub fn retain_used(&self, routes: &[(&str, &OidcRoute)]) {
        let used: Vec<(String, ProviderHandle)> = routes
            .iter()
            .filter_map(|(id, r)| Some((id.to_string(), r.provider.clone()?)))
            .collect();
        {
            let mut map = match self.providers.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.retain(|spec, (_, stop)| {
                let keep = used.iter().any(|(_, h)| *h.spec == *spec);
                if !keep {
                    tracing::info!(discovery = %spec.discovery_url, "identity provider no longer used by any route: its actor stops");
                    stop.trigger();
                }
                keep
            });
        }
        match self.in_use.lock() {
            Ok(mut u) => *u = used,
            Err(p) => *p.into_inner() = used,
        }
    }

    fn all(&self) -> Vec<ProviderHandle> {
        match self.providers.lock() {
            Ok(m) => m.values().map(|(h, _)| h.clone()).collect(),
            Err(p) => p.into_inner().values().map(|(h, _)| h.clone()).collect(),
        }
    }

    fn in_use(&self) -> Vec<(String, ProviderHandle)> {
        match self.in_use.lock() {
            Ok(u) => u.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// A back-channel logout on its way to the revocation actor.
pub struct RevokeMsg {
    issuer: String,
    subject: LogoutSubject,
    until: u64,
    reply: Reply<()>,
}

/// How often the revocation actor drops entries that no session can need any more, when no
/// logout arrives to do it.
const REVOCATION_PRUNE_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// The revocation actor: the one owner of the set. Every change (a logout, or entries expiring)
/// publishes a fresh immutable copy; shards swap it in on their own.
async fn run_revocations(shared: Arc<OidcShared>, mailbox: Mailbox<RevokeMsg>, shutdown: Shutdown) {
    let clock = shardgate_runtime::clock::shard_clock();
    let mut set = RevocationSet::default();
    loop {
        let msg = monoio::select! {
            m = mailbox.recv() => m,
            _ = monoio::time::sleep(REVOCATION_PRUNE_PERIOD) => {
                if set.prune(clock.unix_secs()) {
                    shared.revocations.publish(Arc::new(set.clone()));
                }
                continue;
            }
            _ = shutdown.wait() => return,
        };
        let Some(RevokeMsg {
            issuer,
            subject,
            until,
            reply,
        }) = msg
        else {
            return;
        };
        set.prune(clock.unix_secs());
        set.revoke(&issuer, &subject, until);
        // A copy per logout: logouts are rare next to requests, and shards then read with no
        // lock at all.
        shared.revocations.publish(Arc::new(set.clone()));
        tracing::debug!(entries = set.len(), "revocation set published");
        reply.send(());
    }
}

/// Control-thread side: runs provider actors and reports readiness and counters.
pub struct OidcControl {
    shared: Arc<OidcShared>,
}

impl OidcControl {
    /// The control-side view of `shared` (readiness, counters) without starting anything.
    pub fn of(shared: Arc<OidcShared>) -> OidcControl {
        OidcControl { shared }
    }

    /// Starts the task that spawns provider actors; call on the control thread's runtime.
    pub fn start(shared: Arc<OidcShared>, shutdown: Shutdown) -> OidcControl {
        let revoke_mailbox = match shared.revoke_mailbox.lock() {
            Ok(mut m) => m.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(mailbox) = revoke_mailbox {
            monoio::spawn(run_revocations(shared.clone(), mailbox, shutdown.clone()));
        }
        let rx = shared.spawn_rx.clone();
        monoio::spawn(async move {
            loop {
                let next = monoio::select! {
                    n = rx.recv_async() => n,
                    _ = shutdown.wait() => return,
                };
                let Ok((handle, mailbox, stop)) = next else {
                    return;
                };
                // The actor stops on shutdown or when no route uses it any more.
                let global = shutdown.clone();
                let relay = stop.clone();
                monoio::spawn(async move {
                    monoio::select! {
                        _ = global.wait() => relay.trigger(),
                        _ = relay.wait() => {}
                    }
                });
                monoio::spawn(provider::run(handle, mailbox, stop));
            }
        });
        OidcControl { shared }
    }

    /// Ready when every provider in use has its discovery (and JWKS when needed).
    pub fn readiness(&self) -> (bool, String) {
        let mut ok = true;
        let mut parts = Vec::new();
        for h in self.shared.all() {
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

    /// Provider counters for /metrics, one series per route and its provider: routes on one IdP
    /// with different provider settings have their own actors and counts, and routes sharing
    /// one actor each show its (shared) count.
    pub fn counters(&self, out: &mut BTreeMap<String, u64>) {
        for (route, h) in self.shared.in_use() {
            let c = &h.counters;
            let d = json_str(&h.spec.discovery_url);
            let r = json_str(&route);
            let mut put = |name: &str, outcome: &str, v: &std::sync::atomic::AtomicU64| {
                out.insert(
                    format!("{name}{{route={r},discovery={d},outcome=\"{outcome}\"}}"),
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

/// A provider snapshot attached on a shard, and the publisher it follows.
type AttachedProvider = (
    std::sync::Weak<Publisher<ProviderState>>,
    Local<ProviderState>,
);

struct ShardOidcInner {
    shard: usize,
    shared: Arc<OidcShared>,
    clock: CoarseClock,
    rng: ring::rand::SystemRandom,
    /// Provider snapshots attached on this shard, by discovery URL + settings, with the publisher
    /// each came from: a provider removed by a reload and configured again is a new actor with a
    /// new publisher, and must not be served the old one's frozen snapshot.
    providers: RefCell<HashMap<ProviderSpec, AttachedProvider>>,
    /// Back-channel logouts in force, as the revocation actor last published them.
    revocations: Local<RevocationSet>,
}

impl ShardOidc {
    pub fn new(shard: usize, shared: Arc<OidcShared>) -> ShardOidc {
        let revocations = shared.revocations.subscribe().attach();
        ShardOidc {
            inner: Rc::new(ShardOidcInner {
                shard,
                shared,
                clock: shardgate_runtime::clock::shard_clock(),
                rng: ring::rand::SystemRandom::new(),
                providers: RefCell::new(HashMap::new()),
                revocations,
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

    /// Whether a back-channel logout ended `session` (one shard-local snapshot read).
    pub fn is_revoked(&self, session: &shardgate_oidc::session::SessionData) -> bool {
        self.inner.revocations.load().is_revoked(session)
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
        if let Some((from, l)) = map.get(&*handle.spec)
            && from
                .upgrade()
                .is_some_and(|p| Arc::ptr_eq(&p, &handle.state))
        {
            return l.clone();
        }
        // Providers whose every handle is gone (removed by a reload) leave this shard too.
        map.retain(|_, (from, _)| from.strong_count() > 0);
        let local = handle.state.subscribe().attach();
        map.insert(
            (*handle.spec).clone(),
            (Arc::downgrade(&handle.state), local.clone()),
        );
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

    fn parse(
        value: serde_json::Value,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<OidcConf, Vec<Problem>> {
        let loaded = OidcConf::from_value(value, path);
        warnings.extend(loaded.warnings);
        match loaded.conf {
            Some(conf) if loaded.errors.is_empty() => Ok(conf),
            _ => Err(loaded.errors),
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

    fn readiness(global: &Arc<OidcShared>) -> Option<(bool, &'static str, String)> {
        let (ok, detail) = OidcControl::of(global.clone()).readiness();
        Some((ok, "providers", detail))
    }

    fn counters(global: &Arc<OidcShared>, out: &mut BTreeMap<String, u64>) {
        OidcControl::of(global.clone()).counters(out);
    }

    fn retain_used(global: &Arc<OidcShared>, used: &[(&str, &OidcRoute)]) {
        global.retain_used(used);
    }

    fn start(global: &Arc<OidcShared>, shutdown: &Shutdown) {
        OidcControl::start(global.clone(), shutdown.clone());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shardgate_oidc::session::SessionData;

    fn subject(sid: &str) -> LogoutSubject {
        LogoutSubject {
            sid: Some(sid.into()),
            sub: None,
            iat: 0,
            jti: None,
        }
    }

    fn session(sid: &str) -> SessionData {
        SessionData {
            iss: Some("https://idp".into()),
            sid: Some(sid.into()),
            ..SessionData::default()
        }
    }

    /// The revocation actor prunes what can no longer matter and every subscriber (one per
    /// shard) sees each logout once `revoke` returns.
    #[test]
    fn revocations_are_published_to_every_shard_and_expired_ones_pruned() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = OidcShared::new();
            let shutdown = Shutdown::new();
            let _control = OidcControl::start(shared.clone(), shutdown.clone());
            let shards = [
                ShardOidc::new(0, shared.clone()),
                ShardOidc::new(1, shared.clone()),
            ];
            let now = shardgate_runtime::clock::shard_clock().unix_secs();
            // Already past its lifetime: kept only until the next change.
            shared
                .revoke("https://idp", subject("old"), now - 1)
                .await
                .unwrap();
            assert_eq!(shared.revocations_in_force(), 1);
            shared
                .revoke("https://idp", subject("new"), u64::MAX)
                .await
                .unwrap();
            assert_eq!(
                shared.revocations_in_force(),
                1,
                "the expired entry was pruned"
            );
            // Shards swap the snapshot in on their own task.
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            for shard in &shards {
                assert!(shard.is_revoked(&session("new")));
                assert!(!shard.is_revoked(&session("old")));
                assert!(!shard.is_revoked(&SessionData {
                    iss: Some("https://other-idp".into()),
                    ..session("new")
                }));
            }
            shutdown.trigger();
        });
    }

    /// A provider removed by a reload and configured again (same settings) is a new actor: the
    /// shard must follow its snapshots, not keep the old actor's.
    #[test]
    fn a_provider_configured_again_gets_a_fresh_snapshot_on_the_shard() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let shard = ShardOidc::new(0, OidcShared::new());
            let spec = ProviderSpec {
                discovery_url: "http://127.0.0.1:1/.well-known/openid-configuration".into(),
                discovery_expires_in: std::time::Duration::from_secs(60),
                jwk_expires_in: std::time::Duration::from_secs(60),
                need_jwks: true,
                timeout: std::time::Duration::from_secs(1),
                ssl_verify: true,
                proxy: None,
                ca_file: None,
            };
            let (old, _old_mailbox) = ProviderHandle::new(spec.clone());
            let old_local = shard.provider_state(&old);
            let (new, _new_mailbox) = ProviderHandle::new(spec);
            let new_local = shard.provider_state(&new);
            new.state.publish(new.state.current());
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            assert_eq!(new_local.version(), 1, "the new actor's snapshot");
            assert_eq!(old_local.version(), 0);
            // The same handle again: the same attachment.
            assert_eq!(shard.provider_state(&new).version(), 1);
        });
    }
}
