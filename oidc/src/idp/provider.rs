//! The provider actor: everything about one identity provider that must happen once per process.
//!
//! - discovery at start and every `discovery_expires_in`, retried with backoff on failure;
//! - JWKS at start, every `jwk_expires_in` (or sooner when the IdP's `Cache-Control: max-age` says
//!   so), and on an unknown `kid`: one refetch, single-flight across every shard, rate-limited,
//!   with a negative cache for kids that stay unknown;
//! - introspection single-flight: N shards asking about the same token make one IdP call.
//!
//! Each new state is published to every shard as an immutable snapshot ([`ProviderState`]). When
//! the IdP is down, the last good metadata and keys keep being served.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::monotonic_now;

use shardgate_runtime::actor::{Addr, Mailbox, Reply, mailbox};
use shardgate_runtime::gate::Shutdown;
use shardgate_runtime::snapshot::Publisher;

use crate::discovery::ProviderMetadata;
use crate::idp::client::{Client, ClientConfig, IdpError, Response};
use crate::jwk::KeySet;

/// Where a provider's state stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Discovery (or the first JWKS) has not succeeded yet.
    Pending(String),
    Ready,
}

/// What every shard sees of a provider; replaced wholesale on each change.
#[derive(Debug)]
pub struct ProviderState {
    pub generation: u64,
    pub status: Status,
    pub metadata: Option<Arc<ProviderMetadata>>,
    pub keys: Option<Arc<KeySet>>,
    /// The last error talking to the IdP, if the last attempt failed (logs, /readyz).
    pub last_error: Option<String>,
}

impl ProviderState {
    fn initial() -> ProviderState {
        ProviderState {
            generation: 0,
            status: Status::Pending("discovery not fetched yet".into()),
            metadata: None,
            keys: None,
            last_error: None,
        }
    }
}

/// The identity of a provider: routes with equal specs share one actor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProviderSpec {
    pub discovery_url: String,
    pub discovery_expires_in: Duration,
    pub jwk_expires_in: Duration,
    /// Fetch the JWKS (use_jwks, or ID-token checks in the code flow).
    pub need_jwks: bool,
    pub timeout: Duration,
    pub ssl_verify: bool,
    pub proxy: Option<ProxySpec>,
    /// Extra PEM CA bundle for the IdP's TLS (`ssl_ca_file`).
    pub ca_file: Option<String>,
}

/// `proxy_opts`: an HTTP CONNECT proxy for IdP calls.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProxySpec {
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub http_proxy_authorization: Option<String>,
    pub https_proxy_authorization: Option<String>,
    pub no_proxy: Vec<String>,
}

/// Answer to an unknown-kid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KidLookup {
    /// The kid is in the (possibly just refreshed) key set now published.
    Found,
    /// Still unknown after a refetch, or a refetch was not allowed yet (rate limit, negative cache).
    NotFound,
    /// The IdP could not be reached; the old keys still serve.
    Unavailable,
}

/// A prepared IdP request a shard wants made through the actor (single-flight by `key`).
#[derive(Debug)]
pub struct SharedCall {
    pub key: String,
    /// `GET` (userinfo) or `POST` (token, introspection, revocation).
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Keep a successful answer this long for later asks with the same key. Refresh uses it: a
    /// request still carrying the old cookie gets the tokens the first refresh obtained instead of
    /// redeeming a rotated refresh token a second time (which the IdP would refuse).
    pub grace: Option<Duration>,
}

pub enum ProviderMsg {
    UnknownKid {
        kid: String,
        reply: Reply<KidLookup>,
    },
    /// A POST made once for all identical concurrent asks (introspection, refresh).
    Shared {
        call: SharedCall,
        reply: Reply<Result<Arc<Response>, IdpError>>,
    },
    /// Refetch discovery and JWKS now (tests, admin).
    Refresh,
}

/// A cheap, `Send` handle to a provider actor.
#[derive(Clone)]
pub struct ProviderHandle {
    pub spec: Arc<ProviderSpec>,
    pub addr: Addr<ProviderMsg>,
    pub state: Arc<Publisher<ProviderState>>,
    pub counters: Arc<Counters>,
}

impl ProviderHandle {
    /// Creates the handle and the mailbox the actor will run on (spawn it with [`run`]).
    pub fn new(spec: ProviderSpec) -> (ProviderHandle, Mailbox<ProviderMsg>) {
        let (addr, mb) = mailbox(4096);
        let handle = ProviderHandle {
            spec: Arc::new(spec),
            addr,
            state: Arc::new(Publisher::new(Arc::new(ProviderState::initial()))),
            counters: Arc::new(Counters::default()),
        };
        (handle, mb)
    }

    pub fn is_ready(&self) -> bool {
        self.state.current().status == Status::Ready
    }
}

/// Fetch counters, read by /metrics and by tests (lock-free, control-side only writes).
#[derive(Debug, Default)]
pub struct Counters {
    pub discovery_ok: std::sync::atomic::AtomicU64,
    pub discovery_err: std::sync::atomic::AtomicU64,
    pub jwks_ok: std::sync::atomic::AtomicU64,
    pub jwks_err: std::sync::atomic::AtomicU64,
    pub jwks_forced: std::sync::atomic::AtomicU64,
    pub kid_rate_limited: std::sync::atomic::AtomicU64,
    pub shared_calls: std::sync::atomic::AtomicU64,
    pub shared_coalesced: std::sync::atomic::AtomicU64,
}

fn inc(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// At most one forced (unknown-kid) JWKS refetch per this interval, per provider.
pub const FORCED_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Kids still unknown after a refetch are answered NotFound for this long without asking the IdP.
pub const NEGATIVE_KID_TTL: Duration = Duration::from_secs(60);
const MIN_JWKS_TTL: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Actor {
    handle: ProviderHandle,
    /// Outside any RefCell borrow: requests await while other tasks update the actor state.
    client: Rc<Client>,
    metadata: Option<Arc<ProviderMetadata>>,
    keys: Option<Arc<KeySet>>,
    generation: u64,
    last_error: Option<String>,
    next_discovery: Instant,
    next_jwks: Instant,
    backoff: Duration,
    last_forced: Option<Instant>,
    negative_kids: HashMap<String, Instant>,
    kid_waiters: Vec<(String, Reply<KidLookup>)>,
    forced_pending: bool,
}

type SharedReply = Reply<Result<Arc<Response>, IdpError>>;
/// Successful shared-call answers kept for their grace period, by key.
type RecentAnswers = HashMap<String, (Instant, Arc<Response>)>;

/// Runs the actor until `shutdown`; call on the control thread's runtime.
pub async fn run(handle: ProviderHandle, mailbox: Mailbox<ProviderMsg>, shutdown: Shutdown) {
    let spec = handle.spec.clone();
    let cfg = ClientConfig {
        timeout: spec.timeout,
        ssl_verify: spec.ssl_verify,
        ca_file: spec.ca_file.clone(),
        http_proxy: spec.proxy.as_ref().and_then(|p| p.http_proxy.clone()),
        https_proxy: spec.proxy.as_ref().and_then(|p| p.https_proxy.clone()),
        http_proxy_authorization: spec
            .proxy
            .as_ref()
            .and_then(|p| p.http_proxy_authorization.clone()),
        https_proxy_authorization: spec
            .proxy
            .as_ref()
            .and_then(|p| p.https_proxy_authorization.clone()),
        no_proxy: spec
            .proxy
            .as_ref()
            .map(|p| p.no_proxy.clone())
            .unwrap_or_default(),
        ..ClientConfig::default()
    };
    let client = match Client::new(cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(discovery = %spec.discovery_url, error = %e, "cannot build the IdP client");
            return;
        }
    };
    let now = monotonic_now();
    let actor = Rc::new(RefCell::new(Actor {
        handle,
        client: Rc::new(client),
        metadata: None,
        keys: None,
        generation: 0,
        last_error: None,
        next_discovery: now,
        next_jwks: now,
        backoff: Duration::from_millis(500),
        last_forced: None,
        negative_kids: HashMap::new(),
        kid_waiters: Vec::new(),
        forced_pending: false,
    }));
    let inflight: Rc<RefCell<HashMap<String, Vec<SharedReply>>>> =
        Rc::new(RefCell::new(HashMap::new()));
    // Successful answers kept for their `grace` period (refresh-token rotation).
    let recent: Rc<RefCell<RecentAnswers>> = Rc::new(RefCell::new(HashMap::new()));

    // Periodic discovery/JWKS maintenance runs as its own task so IdP latency never blocks the mailbox.
    {
        let actor = actor.clone();
        let shutdown = shutdown.clone();
        monoio::spawn(async move {
            loop {
                let wake = {
                    let a = actor.borrow();
                    a.next_discovery.min(if a.handle.spec.need_jwks {
                        a.next_jwks
                    } else {
                        a.next_discovery
                    })
                };
                monoio::select! {
                    _ = monoio::time::sleep_until(wake.into()) => {}
                    _ = shutdown.wait() => return,
                }
                maintain(&actor, false).await;
            }
        });
    }

    loop {
        let msg = monoio::select! {
            m = mailbox.recv() => m,
            _ = shutdown.wait() => None,
        };
        let Some(msg) = msg else { return };
        match msg {
            ProviderMsg::Refresh => {
                {
                    let mut a = actor.borrow_mut();
                    a.next_discovery = monotonic_now();
                    a.next_jwks = monotonic_now();
                }
                let actor = actor.clone();
                monoio::spawn(async move { maintain(&actor, false).await });
            }
            ProviderMsg::UnknownKid { kid, reply } => {
                let start_fetch = {
                    let mut a = actor.borrow_mut();
                    let now = monotonic_now();
                    a.negative_kids
                        .retain(|_, t| now.duration_since(*t) < NEGATIVE_KID_TTL);
                    if a.keys.as_ref().is_some_and(|k| k.contains_kid(&kid)) {
                        reply.send(KidLookup::Found);
                        false
                    } else if a.negative_kids.contains_key(&kid) {
                        reply.send(KidLookup::NotFound);
                        false
                    } else if a.forced_pending {
                        // Single flight: join the fetch already running.
                        a.kid_waiters.push((kid, reply));
                        false
                    } else if a
                        .last_forced
                        .is_some_and(|t| now.duration_since(t) < FORCED_REFETCH_INTERVAL)
                    {
                        inc(&a.handle.counters.kid_rate_limited);
                        // Not on the negative list: no refetch has seen this kid yet, and a key
                        // the IdP just rotated in must get its refetch once the interval is over.
                        reply.send(KidLookup::NotFound);
                        false
                    } else {
                        a.forced_pending = true;
                        a.last_forced = Some(now);
                        a.kid_waiters.push((kid, reply));
                        true
                    }
                };
                if start_fetch {
                    let actor = actor.clone();
                    monoio::spawn(async move {
                        let counters = actor.borrow().handle.counters.clone();
                        inc(&counters.jwks_forced);
                        let ok = maintain(&actor, true).await;
                        let mut a = actor.borrow_mut();
                        a.forced_pending = false;
                        let waiters = std::mem::take(&mut a.kid_waiters);
                        let now = monotonic_now();
                        for (kid, reply) in waiters {
                            let found = a.keys.as_ref().is_some_and(|k| k.contains_kid(&kid));
                            if found {
                                reply.send(KidLookup::Found);
                            } else if ok {
                                a.negative_kids.insert(kid, now);
                                reply.send(KidLookup::NotFound);
                            } else {
                                reply.send(KidLookup::Unavailable);
                            }
                        }
                    });
                }
            }
            ProviderMsg::Shared { call, reply } => {
                {
                    let mut recent = recent.borrow_mut();
                    let now = monotonic_now();
                    recent.retain(|_, (until, _)| *until > now);
                    if let Some((_, resp)) = recent.get(&call.key) {
                        inc(&actor.borrow().handle.counters.shared_coalesced);
                        reply.send(Ok(resp.clone()));
                        continue;
                    }
                }
                let first = {
                    let mut map = inflight.borrow_mut();
                    match map.get_mut(&call.key) {
                        Some(waiters) => {
                            inc(&actor.borrow().handle.counters.shared_coalesced);
                            waiters.push(reply);
                            false
                        }
                        None => {
                            map.insert(call.key.clone(), vec![reply]);
                            true
                        }
                    }
                };
                if first {
                    let actor = actor.clone();
                    let inflight = inflight.clone();
                    let recent = recent.clone();
                    monoio::spawn(async move {
                        let counters = actor.borrow().handle.counters.clone();
                        inc(&counters.shared_calls);
                        // The client is borrowed across an await: take a clone of what we need first.
                        let client = actor.borrow().client.clone();
                        let body = (call.method != "GET").then_some(call.body.as_slice());
                        let result = client
                            .request(call.method, &call.url, &call.headers, body)
                            .await;
                        let result = result.map(Arc::new);
                        if let (Some(grace), Ok(resp)) = (call.grace, &result)
                            && resp.status == 200
                        {
                            recent
                                .borrow_mut()
                                .insert(call.key.clone(), (monotonic_now() + grace, resp.clone()));
                        }
                        let waiters = inflight.borrow_mut().remove(&call.key).unwrap_or_default();
                        for w in waiters {
                            w.send(result.clone());
                        }
                    });
                }
            }
        }
    }
}

/// Refreshes discovery and/or JWKS when due (or now when `force_jwks`). Returns whether the JWKS
/// fetch (when attempted) succeeded.
async fn maintain(actor: &Rc<RefCell<Actor>>, force_jwks: bool) -> bool {
    let now = monotonic_now();
    let (due_discovery, due_jwks, url) = {
        let a = actor.borrow();
        let dd = a.metadata.is_none() || now >= a.next_discovery;
        let dj = a.handle.spec.need_jwks && (force_jwks || a.keys.is_none() || now >= a.next_jwks);
        (dd, dj, a.handle.spec.discovery_url.clone())
    };
    let mut changed = false;
    let mut ok = true;
    if due_discovery {
        let res = get(actor, &url).await.and_then(|r| {
            if r.status != 200 {
                return Err(format!("discovery answered HTTP {}", r.status));
            }
            ProviderMetadata::from_json(&r.body, None).map_err(|e| e.to_string())
        });
        // RFC 8414: an OpenID configuration without introspection_endpoint may still have one
        // in the authorization server metadata.
        let res = match res {
            Ok(mut m) if m.introspection_endpoint.is_none() => {
                let as_url = format!(
                    "{}/.well-known/oauth-authorization-server",
                    m.issuer.trim_end_matches('/')
                );
                if let Ok(r) = get(actor, &as_url).await
                    && r.status == 200
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body)
                    && let Some(ep) = v.get("introspection_endpoint").and_then(|e| e.as_str())
                    && (ep.starts_with("https://") || ep.starts_with("http://"))
                {
                    m.introspection_endpoint = Some(ep.to_string());
                }
                Ok(m)
            }
            other => other,
        };
        let mut a = actor.borrow_mut();
        match res {
            Ok(m) => {
                inc(&a.handle.counters.discovery_ok);
                let m = Arc::new(m);
                if a.metadata.as_deref() != Some(&*m) {
                    changed = true;
                    tracing::info!(issuer = %m.issuer, "OIDC discovery loaded");
                }
                a.metadata = Some(m);
                a.next_discovery = monotonic_now() + a.handle.spec.discovery_expires_in;
                a.backoff = Duration::from_millis(500);
                if a.last_error.take().is_some() {
                    changed = true;
                }
            }
            Err(e) => {
                inc(&a.handle.counters.discovery_err);
                tracing::warn!(discovery = %url, error = %e, retry_in_seconds = a.backoff.as_secs_f64(), "OIDC discovery failed; keeping the last good metadata");
                a.next_discovery = monotonic_now() + a.backoff;
                a.backoff = (a.backoff * 2).min(MAX_BACKOFF);
                a.last_error = Some(e);
                changed = true;
                ok = false;
            }
        }
    }
    let jwks_uri = actor
        .borrow()
        .metadata
        .as_ref()
        .and_then(|m| m.jwks_uri.clone());
    if due_jwks {
        match jwks_uri {
            None => {
                let mut a = actor.borrow_mut();
                if a.metadata.is_some() {
                    a.last_error = Some("discovery document has no jwks_uri".into());
                    changed = true;
                }
                ok = false;
            }
            Some(uri) => {
                let res = get(actor, &uri).await;
                let mut a = actor.borrow_mut();
                match res.and_then(|r| {
                    if r.status != 200 {
                        return Err(format!("jwks_uri answered HTTP {}", r.status));
                    }
                    let max_age = r.header("cache-control").and_then(max_age);
                    KeySet::from_json(&r.body)
                        .map(|k| (k, max_age))
                        .map_err(|e| e.to_string())
                }) {
                    Ok((keys, max_age)) => {
                        inc(&a.handle.counters.jwks_ok);
                        for s in keys.skipped() {
                            tracing::info!(
                                kid = s.kid.as_deref(),
                                reason = s.reason,
                                "JWK skipped"
                            );
                        }
                        let same = a
                            .keys
                            .as_ref()
                            .is_some_and(|k| k.fingerprint() == keys.fingerprint());
                        if !same {
                            changed = true;
                            for k in keys.keys().iter().filter(|k| k.is_short_rsa()) {
                                tracing::warn!(
                                    kid = k.kid(),
                                    bits = k.rsa_bits(),
                                    "JWK is an RSA key under 2048 bits: accepted (only RS256 and \
                                     RS512 tokens verify with it), but a key that short can be \
                                     factored, and tokens then forged"
                                );
                            }
                            tracing::info!(jwks = %uri, keys = keys.len(), kids = %keys.kids().collect::<Vec<_>>().join(","), "JWKS loaded");
                        }
                        a.keys = Some(Arc::new(keys));
                        let ttl = match max_age {
                            Some(s) => Duration::from_secs(s).min(a.handle.spec.jwk_expires_in),
                            None => a.handle.spec.jwk_expires_in,
                        };
                        a.next_jwks = monotonic_now() + ttl.max(MIN_JWKS_TTL);
                    }
                    Err(e) => {
                        inc(&a.handle.counters.jwks_err);
                        tracing::warn!(jwks = %uri, error = %e, "JWKS fetch failed; the last good keys keep serving");
                        a.next_jwks = monotonic_now() + a.backoff;
                        a.backoff = (a.backoff * 2).min(MAX_BACKOFF);
                        a.last_error = Some(e);
                        changed = true;
                        ok = false;
                    }
                }
            }
        }
    }
    if changed {
        let mut a = actor.borrow_mut();
        a.generation += 1;
        let ready = a.metadata.is_some() && (!a.handle.spec.need_jwks || a.keys.is_some());
        let status = if ready {
            Status::Ready
        } else {
            Status::Pending(
                a.last_error
                    .clone()
                    .unwrap_or_else(|| "discovery not fetched yet".into()),
            )
        };
        let state = ProviderState {
            generation: a.generation,
            status,
            metadata: a.metadata.clone(),
            keys: a.keys.clone(),
            last_error: a.last_error.clone(),
        };
        a.handle.state.publish(Arc::new(state));
    }
    ok
}

async fn get(actor: &Rc<RefCell<Actor>>, url: &str) -> Result<Response, String> {
    let client = actor.borrow().client.clone();
    client.get(url, &[]).await.map_err(|e| e.to_string())
}

fn max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').find_map(|d| {
        d.trim()
            .strip_prefix("max-age=")
            .and_then(|v| v.trim().parse().ok())
    })
}
