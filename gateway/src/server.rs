//! Process orchestration: load the config, start the control thread (actors + admin) and one shard
//! per core, then turn signals into reloads and a graceful shutdown.
//!
//! ```text
//! main thread   signals ──Reload──► ConfigActor (control thread) ──publish──► every shard
//!               signals ──Terminate──► Shutdown::trigger ──► shards stop accepting, drain, exit
//! control       ConfigActor, MetricsActor (asks shards), admin listener, plugins' actors
//! shards        listeners (SO_REUSEPORT) ──► proxy::conn::serve
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardgate_runtime::actor::{Addr, Reply, mailbox};
use shardgate_runtime::gate::Shutdown;
use shardgate_runtime::shard::{DriverChoice, ShardInfo, ShardSet};
use shardgate_runtime::signals::{Signal, block_signals, spawn_signal_thread};
use shardgate_runtime::snapshot::Publisher;
use shardgate_runtime::{bind_reuseport, run_on_current_thread};

use crate::config;
use crate::config::etcd::client::Change;
use crate::config::etcd::watch::{EtcdStatus, Event};
use crate::config::etcd::{Objects, Skipped};
use crate::observe::metrics::{MetricsSnapshot, render_prometheus};
use crate::pipeline::{PluginGlobals, ShardPlugins};
use crate::proxy::stream::{self, ClientStream};
use crate::proxy::{Shard, conn};
use crate::published::Published;
use crate::upstream::health::HealthSnapshot;

/// Commands a shard accepts from the control side.
pub enum ShardCmd {
    Metrics(Reply<MetricsSnapshot>),
}

/// Options from the command line that override the file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub shards: Option<usize>,
    pub driver: Option<DriverChoice>,
}

/// State of the control thread, shared by its tasks (single thread: `Rc`).
pub struct Control {
    pub shutdown: Shutdown,
    pub shard_count: usize,
    pub shards_up: Arc<AtomicUsize>,
    pub shard_addrs: Arc<Mutex<Vec<Addr<ShardCmd>>>>,
    pub publisher: Arc<Publisher<Published>>,
    /// Every plugin's process-wide state (provider actors, ...).
    pub plugins: Arc<PluginGlobals>,
    pub(crate) config_path: PathBuf,
    version: RefCell<u64>,
    /// Set with `gateway.config_provider: etcd`.
    pub etcd: Option<EtcdSide>,
}

/// The control side of the etcd provider: what etcd holds now, and how it went.
pub struct EtcdSide {
    pub conf: config::EtcdConf,
    pub prefix: String,
    pub status: Arc<EtcdStatus>,
    objects: RefCell<Objects>,
    /// The skipped objects of the last publish, so each is logged once, not at every change.
    skipped: RefCell<Vec<Skipped>>,
}

impl EtcdSide {
    pub fn new(conf: config::EtcdConf, status: Arc<EtcdStatus>) -> EtcdSide {
        EtcdSide {
            prefix: conf.prefix.clone(),
            conf,
            status,
            objects: RefCell::new(Objects::new()),
            skipped: RefCell::new(Vec::new()),
        }
    }

    /// What etcd holds, as last delivered by the watch.
    pub fn objects(&self) -> std::cell::Ref<'_, Objects> {
        self.objects.borrow()
    }

    /// Applies one event from the etcd thread; returns its revision.
    fn apply(&self, event: Event) -> i64 {
        let mut objects = self.objects.borrow_mut();
        match event {
            Event::Full {
                revision,
                objects: all,
            } => {
                *objects = all.into_iter().collect();
                revision
            }
            Event::Changes { revision, changes } => {
                for c in changes {
                    match c {
                        Change::Put { key, value } => {
                            objects.insert(key, value);
                        }
                        Change::Delete { key } => {
                            objects.remove(&key);
                        }
                    }
                }
                revision
            }
        }
    }
}

impl Control {
    /// `/readyz`: config loaded, every shard serving, every plugin ready (providers discovered),
    /// and with the etcd provider, etcd's objects published once. etcd lost later does not make
    /// the gateway unready (it keeps serving the last good config, as APISIX does): the detail
    /// says so.
    pub fn readiness(&self) -> (bool, String) {
        let up = self.shards_up.load(Ordering::Acquire);
        let shards_ok = up == self.shard_count;
        let (plugins_ok, plugins_detail) = self.plugins.readiness();
        let (etcd_ok, etcd_detail) = match &self.etcd {
            None => (true, String::new()),
            Some(e) => {
                let s = e.status.get();
                let error = s.error.as_deref().map_or("null".to_owned(), |m| {
                    serde_json::to_string(m).unwrap_or_else(|_| "\"?\"".to_owned())
                });
                (
                    s.synced,
                    format!(
                        ",\"etcd\":{{\"synced\":{},\"connected\":{},\"revision\":{},\"skipped_objects\":{},\"error\":{error}}}",
                        s.synced, s.connected, s.revision, s.skipped
                    ),
                )
            }
        };
        let ready = shards_ok && plugins_ok && etcd_ok;
        let sep = if plugins_detail.is_empty() { "" } else { "," };
        let detail = format!(
            "{{\"ready\":{ready},\"config_version\":{},\"shards_up\":{up},\"shards\":{}{sep}{plugins_detail}{etcd_detail}}}\n",
            self.publisher.current().version,
            self.shard_count,
        );
        (ready, detail)
    }

    /// The metrics actor's job: ask every shard for its counters and merge them.
    pub async fn collect_metrics(&self) -> String {
        let addrs: Vec<Addr<ShardCmd>> = match self.shard_addrs.lock() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut snaps = Vec::with_capacity(addrs.len());
        for a in &addrs {
            match a.ask(ShardCmd::Metrics, Duration::from_secs(2)).await {
                Ok(s) => snaps.push(s),
                Err(e) => tracing::warn!(error = %e, "a shard did not answer the metrics request"),
            }
        }
        let mut extra = BTreeMap::new();
        self.plugins.counters(&mut extra);
        let mut out = render_prometheus(&snaps, &extra);
        if let Some(e) = &self.etcd {
            let s = e.status.get();
            let full = e.status.full_reads.load(Ordering::Relaxed);
            let compactions = e.status.compactions.load(Ordering::Relaxed);
            for (name, kind, help, value) in [
                (
                    "shardgate_etcd_connected",
                    "gauge",
                    "1 while the etcd watch is up; 0 while etcd is unreachable (the last good config keeps serving).",
                    u64::from(s.connected),
                ),
                (
                    "shardgate_etcd_revision",
                    "gauge",
                    "The etcd revision of the config being served.",
                    u64::try_from(s.revision).unwrap_or(0),
                ),
                (
                    "shardgate_etcd_skipped_objects",
                    "gauge",
                    "etcd objects left out of the config being served because they are invalid.",
                    s.skipped as u64,
                ),
                (
                    "shardgate_etcd_full_reads_total",
                    "counter",
                    "Full reads of the etcd prefix (start, reconnects, compactions).",
                    full,
                ),
                (
                    "shardgate_etcd_compactions_total",
                    "counter",
                    "Watches restarted because their revision was compacted.",
                    compactions,
                ),
            ] {
                use std::fmt::Write as _;
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        }
        out
    }

    /// Publishes `config` as the next version; Err (nothing published) when it does not build.
    fn publish(&self, config: config::Config) -> Result<u64, String> {
        let version = *self.version.borrow() + 1;
        let p = Arc::new(Published::build(version, config, &self.plugins)?);
        *self.version.borrow_mut() = version;
        self.publisher.publish(p.clone());
        self.plugins.retain_used_by(&p);
        Ok(version)
    }

    /// The etcd provider: the file's `gateway` section with etcd's objects, validated and
    /// published; invalid objects are left out and logged by key once.
    fn publish_etcd(&self, revision: i64) {
        let Some(etcd) = &self.etcd else {
            return;
        };
        let objects = etcd.objects.borrow();
        let result =
            config::etcd::assemble_file(&self.config_path, &etcd.prefix, &objects, &mut |c| {
                self.publish(c)
            });
        match result {
            Ok(a) => {
                for w in &a.warnings {
                    tracing::warn!(path = %w.path, "{}", w.message);
                }
                let mut before = etcd.skipped.borrow_mut();
                for s in &a.skipped {
                    if !before.contains(s) {
                        tracing::error!(key = %s.key, problems = %s.problems.join("; "), "etcd object skipped; the rest of the config is served");
                    }
                }
                etcd.status.update(|st| {
                    st.synced = true;
                    st.revision = revision;
                    st.skipped = a.skipped.len();
                    if st.connected {
                        st.error = None;
                    }
                });
                tracing::info!(
                    version = a.value,
                    revision,
                    objects = objects.len(),
                    skipped = a.skipped.len(),
                    "etcd config published to every shard"
                );
                *before = a.skipped;
            }
            Err(e) => {
                self.plugins.retain_used_by(&self.publisher.current());
                let problems = e.to_string();
                tracing::error!(revision, problems = %problems, "etcd config rejected; the previous config keeps serving");
                etcd.status.update(|st| {
                    st.error = Some(format!("config rejected: {}", problems.replace('\n', "; ")))
                });
            }
        }
    }

    /// The config actor's job on SIGHUP: load, validate, publish; a bad file changes nothing.
    fn reload(&self) {
        if let Some(e) = &self.etcd {
            // The file holds only `gateway`; the objects are etcd's.
            let revision = e.status.get().revision;
            self.publish_etcd(revision);
            return;
        }
        match config::load_file(&self.config_path) {
            Err(e) => {
                tracing::error!(path = %self.config_path.display(), problems = %e, "config reload rejected; the previous config keeps serving");
            }
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!(path = %w.path, "{}", w.message);
                }
                let version = *self.version.borrow() + 1;
                match Published::build(version, loaded.config, &self.plugins) {
                    Ok(p) => {
                        *self.version.borrow_mut() = version;
                        let p = Arc::new(p);
                        self.publisher.publish(p.clone());
                        self.plugins.retain_used_by(&p);
                        tracing::info!(version, "config reloaded and published to every shard");
                    }
                    Err(e) => {
                        self.plugins.retain_used_by(&self.publisher.current());
                        tracing::error!(problems = %e, "config reload rejected; the previous config keeps serving")
                    }
                }
            }
        }
    }
}

/// `shardgate run`: returns the process exit code.
pub fn run(opts: RunOptions) -> i32 {
    if let Err(e) = block_signals() {
        tracing::error!(error = %e, "cannot block signals");
        return 1;
    }
    let signals = match spawn_signal_thread() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the signal thread");
            return 1;
        }
    };
    run_with(opts, Shutdown::new(), signals)
}

/// How long upgraded tunnels get, once the drain time is over, to shut their sockets down.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Runs the gateway until `shutdown` is triggered (by a `Signal::Terminate` on `signals`, or by
/// the caller). Embedders (benches) pass their own channel instead of the process signals.
pub fn run_with(opts: RunOptions, shutdown: Shutdown, signals: flume::Receiver<Signal>) -> i32 {
    let loaded = match config::load_file(&opts.config_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}", config::report(&opts.config_path, &e.to_string()));
            return 2;
        }
    };
    for w in &loaded.warnings {
        tracing::warn!(path = %w.path, "{}", w.message);
    }
    let cfg = loaded.config;
    let shard_count = match (opts.shards, cfg.gateway.shards) {
        (Some(n), _) | (None, config::Shards::Count(n)) => n,
        (None, config::Shards::Auto) => shardgate_runtime::available_cores(),
    }
    .max(1);
    let driver = opts.driver.unwrap_or(match cfg.gateway.driver {
        config::Driver::Auto => DriverChoice::Auto,
        config::Driver::Uring => DriverChoice::Uring,
        config::Driver::Epoll => DriverChoice::Epoll,
    });
    let etcd_conf = match &cfg.gateway.provider {
        config::Provider::Etcd(e) => Some(e.clone()),
        config::Provider::File => None,
    };
    let listen = cfg.gateway.listen.clone();
    let tls = cfg.gateway.tls.clone();
    let admin = cfg.gateway.admin.as_ref().map(|a| a.listen);
    let shutdown_timeout = cfg.gateway.shutdown_timeout;
    let max_conns_per_shard = (cfg.gateway.limits.max_connections / shard_count).max(1);

    let plugins = PluginGlobals::new();
    let published = match Published::build(1, cfg, &plugins) {
        Ok(p) => {
            plugins.retain_used_by(&p);
            p
        }
        Err(e) => {
            eprintln!("{}", config::report(&opts.config_path, &e.to_string()));
            return 2;
        }
    };
    let publisher = Arc::new(Publisher::new(Arc::new(published)));
    let health = Arc::new(Publisher::new(Arc::new(HealthSnapshot::default())));
    let shards_up = Arc::new(AtomicUsize::new(0));
    let shard_addrs: Arc<Mutex<Vec<Addr<ShardCmd>>>> = Arc::new(Mutex::new(Vec::new()));

    // Shards.
    let shard_set = {
        let publisher = publisher.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        let shards_up = shards_up.clone();
        let shard_addrs = shard_addrs.clone();
        let listen = listen.clone();
        let tls = tls.clone();
        let plugins = plugins.clone();
        ShardSet::spawn(shard_count, driver, true, move |info: ShardInfo| {
            let publisher = publisher.clone();
            let health = health.clone();
            let shutdown = shutdown.clone();
            let shards_up = shards_up.clone();
            let shard_addrs = shard_addrs.clone();
            let listen = listen.clone();
            let tls = tls.clone();
            let plugins = plugins.clone();
            async move {
                let plugins = ShardPlugins::new(info.id, &plugins);
                run_shard(
                    info,
                    publisher,
                    health,
                    shutdown,
                    shards_up,
                    shard_addrs,
                    Listen { plain: listen, tls },
                    max_conns_per_shard,
                    shutdown_timeout,
                    plugins,
                )
                .await
            }
        })
    };
    let shard_set = match shard_set {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start shards");
            return 1;
        }
    };
    let drivers: Vec<String> = shard_set.drivers().iter().map(|d| d.to_string()).collect();
    let listen_list: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    tracing::info!(shards = shard_count, drivers = %drivers.join(","), listen = %listen_list.join(","), "shardgate started");

    // Control thread: config actor, metrics, admin, OIDC providers.
    let control_thread = {
        let shutdown = shutdown.clone();
        let publisher = publisher.clone();
        let shards_up = shards_up.clone();
        let shard_addrs = shard_addrs.clone();
        let config_path = opts.config_path.clone();
        let plugins = plugins.clone();
        let health = health.clone();
        let (reload_tx, reload_rx) = flume::unbounded::<()>();
        let signal_shutdown = shutdown.clone();
        // The etcd provider's thread: blocking HTTP to etcd, events to the config actor.
        let (etcd_tx, etcd_rx) = flume::unbounded::<Event>();
        let etcd = etcd_conf.map(|conf| {
            let status = Arc::new(EtcdStatus::default());
            let side = EtcdSide::new(conf.clone(), status.clone());
            let shutdown = shutdown.clone();
            let tx = etcd_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("etcd".into())
                .spawn(move || config::etcd::watch::run(conf, tx, status, shutdown));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the etcd thread");
            }
            side
        });
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while let Ok(sig) = signals.recv() {
                    match sig {
                        Signal::Reload => {
                            let _ = reload_tx.send(());
                        }
                        Signal::Terminate => {
                            tracing::info!("shutdown requested: draining in-flight requests");
                            signal_shutdown.trigger();
                            break;
                        }
                    }
                }
            })
            .ok();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let res = run_on_current_thread(DriverChoice::Epoll, |_| async move {
                    plugins.start(&shutdown);
                    let control = Rc::new(Control {
                        shutdown: shutdown.clone(),
                        shard_count,
                        shards_up,
                        shard_addrs,
                        publisher,
                        plugins,
                        config_path,
                        version: RefCell::new(1),
                        etcd,
                    });
                    // Kept so the file provider's (empty) etcd channel never reports closed.
                    let _etcd_tx = etcd_tx;
                    monoio::spawn(crate::upstream::health::run(
                        control.publisher.clone(),
                        health,
                        shutdown.clone(),
                    ));
                    if let Some(addr) = admin {
                        let c = control.clone();
                        monoio::spawn(async move {
                            if let Err(e) = crate::admin::serve(addr, c).await {
                                tracing::error!(%addr, error = %e, "admin listener failed");
                            }
                        });
                    }
                    loop {
                        let event = monoio::select! {
                            r = reload_rx.recv_async() => match r {
                                Ok(()) => None,
                                Err(_) => break,
                            },
                            e = etcd_rx.recv_async() => match e {
                                Ok(e) => Some(e),
                                Err(_) => break,
                            },
                            _ = control.shutdown.wait() => break,
                        };
                        match (event, &control.etcd) {
                            (Some(first), Some(side)) => {
                                // A burst of changes is applied as one publish.
                                let mut revision = side.apply(first);
                                while let Ok(more) = etcd_rx.try_recv() {
                                    revision = side.apply(more);
                                }
                                control.publish_etcd(revision);
                            }
                            (Some(_), None) => {}
                            (None, _) => control.reload(),
                        }
                    }
                });
                if let Err(e) = res {
                    tracing::error!(error = %e, "control thread failed");
                }
            })
    };
    if let Err(e) = &control_thread {
        tracing::error!(error = %e, "cannot start the control thread");
        return 1;
    }

    shard_set.join();
    shutdown.trigger();
    if let Ok(t) = control_thread {
        let _ = t.join();
    }
    tracing::info!("shardgate stopped");
    0
}

/// The acceptor for the certificate the shard's current config carries (rebuilt when it changed)
/// and the handshake's time limit, `limits.header_timeout` of the same config. None (the
/// connection is dropped) only if that config has no certificate or it will not load.
fn current_acceptor(
    shard: &Shard,
    cached: &mut Option<(stream::CertKey, stream::Acceptor)>,
) -> Option<(stream::Acceptor, Duration)> {
    let compiled = shard.current();
    let timeout = compiled.published.limits.header_timeout;
    let key = compiled.published.tls_key.as_ref()?;
    if let Some((k, a)) = cached.as_ref()
        && Arc::ptr_eq(k, key)
    {
        return Some((a.clone(), timeout));
    }
    match stream::acceptor(key) {
        Ok(a) => {
            *cached = Some((key.clone(), a.clone()));
            Some((a, timeout))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot build the TLS config");
            shard.metrics.record_error("tls_config");
            None
        }
    }
}

/// What a shard listens on.
struct Listen {
    plain: Vec<std::net::SocketAddr>,
    tls: Option<config::TlsConf>,
}

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    info: ShardInfo,
    publisher: Arc<Publisher<Published>>,
    health: Arc<Publisher<HealthSnapshot>>,
    shutdown: Shutdown,
    shards_up: Arc<AtomicUsize>,
    shard_addrs: Arc<Mutex<Vec<Addr<ShardCmd>>>>,
    listen: Listen,
    max_conns: usize,
    shutdown_timeout: Duration,
    plugins: ShardPlugins,
) {
    let local = publisher.subscribe().attach();
    let shard = Shard::new(
        info,
        local,
        health.subscribe().attach(),
        shutdown.clone(),
        plugins,
    );
    shardgate_runtime::clock::shard_clock();

    let (addr, cmds) = mailbox::<ShardCmd>(64);
    match shard_addrs.lock() {
        Ok(mut a) => a.push(addr),
        Err(p) => p.into_inner().push(addr),
    }
    {
        let shard = shard.clone();
        monoio::spawn(async move {
            while let Some(cmd) = cmds.recv().await {
                match cmd {
                    ShardCmd::Metrics(reply) => reply.send(shard.metrics.snapshot()),
                }
            }
        });
    }

    let tls_addrs = listen
        .tls
        .as_ref()
        .map(|t| t.listen.clone())
        .unwrap_or_default();
    let addrs = listen
        .plain
        .iter()
        .map(|a| (*a, false))
        .chain(tls_addrs.iter().map(|a| (*a, true)));
    let mut listeners = Vec::new();
    for (a, tls) in addrs {
        match bind_reuseport(a, 4096) {
            Ok(l) => listeners.push((l, a.port(), tls)),
            Err(e) => {
                tracing::error!(shard = info.id, addr = %a, error = %e, "cannot listen; this shard stops");
                shutdown.trigger();
                return;
            }
        }
    }
    shards_up.fetch_add(1, Ordering::AcqRel);
    tracing::debug!(shard = info.id, driver = %info.driver, "shard serving");

    let mut accept_tasks = Vec::new();
    for (listener, port, tls) in listeners {
        let shard = shard.clone();
        accept_tasks.push(monoio::spawn(async move {
            // This listener's own TLS config on this shard, rebuilt when a reload publishes a new
            // certificate: rustls' session cache sits behind a lock, so configs never shared
            // between cores keep it uncontended; handshakes already running keep theirs.
            let mut tls_acceptor: Option<(stream::CertKey, stream::Acceptor)> = None;
            loop {
                let accepted = monoio::select! {
                    a = listener.accept() => a,
                    _ = shard.shutdown.wait() => break,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        if shard.metrics.open_connections.get() as usize >= max_conns {
                            // Over the limit: refuse fast rather than queue without bound.
                            drop(stream);
                            shard.metrics.record_error("max_connections");
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let acceptor = if tls {
                            match current_acceptor(&shard, &mut tls_acceptor) {
                                Some(a) => Some(a),
                                None => continue,
                            }
                        } else {
                            None
                        };
                        let shard = shard.clone();
                        match acceptor {
                            None => {
                                monoio::spawn(conn::serve(
                                    shard,
                                    ClientStream::Plain(stream),
                                    peer,
                                    port,
                                ));
                            }
                            Some((acceptor, handshake_timeout)) => {
                                // A handshake in progress counts as an open connection, so
                                // `max_connections` also bounds a flood of slow handshakes.
                                let open = &shard.metrics.open_connections;
                                open.set(open.get() + 1);
                                monoio::spawn(async move {
                                    let hs = monoio::time::timeout(
                                        handshake_timeout,
                                        acceptor.accept(stream),
                                    )
                                    .await;
                                    // conn::serve counts the connection itself from here on.
                                    let open = &shard.metrics.open_connections;
                                    open.set(open.get() - 1);
                                    match hs {
                                        Ok(Ok(tls)) => {
                                            let s = ClientStream::Tls(Box::new(tls));
                                            conn::serve(shard, s, peer, port).await;
                                        }
                                        Ok(Err(e)) => {
                                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                                            shard.metrics.record_error("tls_handshake");
                                        }
                                        Err(_) => {
                                            tracing::info!(%peer, "TLS handshake timed out");
                                            shard.metrics.record_error("tls_handshake_timeout");
                                        }
                                    }
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        monoio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    shutdown.wait().await;
    for t in accept_tasks {
        t.await;
    }
    shard.gate.close();
    let drained = shard.gate.drained(shutdown_timeout).await;
    if !drained {
        let in_flight = shard.gate.in_flight();
        // Upgraded tunnels never end on their own: tell them the drain time is over, and give
        // them a moment to shut down both of their sockets (a FIN, or a TLS close_notify) rather
        // than vanish with the runtime. Requests still in flight are abandoned as before.
        shard.gate.expire();
        let closed = shard.gate.drained(TUNNEL_CLOSE_GRACE).await;
        tracing::warn!(
            shard = info.id,
            in_flight,
            still_open = shard.gate.in_flight(),
            all_closed = closed,
            "shutdown_timeout reached with requests in flight; tunnels closed at the end of the drain time"
        );
    }
    shards_up.fetch_sub(1, Ordering::AcqRel);
}
