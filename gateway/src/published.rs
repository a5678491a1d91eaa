//! What the control side publishes to every shard for one config version: the validated config
//! turned into exactly what the data path reads (route table, resolved upstream nodes, prepared
//! plugin settings). Built once per load on the control thread; shards never parse or resolve.

use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::config::{self, Balancer, Config, HashVar};
use crate::http1;
use crate::pipeline::{Instance, PluginGlobals};
use crate::route::RouteTable;
use crate::upstream::pool::PoolLimits;
use crate::upstream::{HashOn, NodeSpec, PassHost, Passive, Timeouts, UpstreamSpec, health, tls};
use rustls::pki_types::ServerName;

/// Timeouts and limits the connection loop applies.
#[derive(Clone, Debug)]
pub struct ProxyLimits {
    pub http: http1::Limits,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub client_max_body_size: u64,
    pub client_body_timeout: Duration,
    pub client_body_min_rate: u64,
}

/// A route as shards need it.
pub struct PublishedRoute {
    pub id: String,
    pub upstream: usize,
    pub websocket: bool,
    pub keep_identity_headers: bool,
    /// The route's `timeout`, else its upstream's: resolved here so the exchange reads one place.
    pub timeouts: Timeouts,
    /// The route's plugin instances in execution order (priority, highest first).
    pub plugins: Vec<Instance>,
}

pub struct Published {
    pub version: u64,
    pub table: RouteTable,
    pub routes: Vec<PublishedRoute>,
    /// The global rules' plugin instances in execution order: every routed request runs them
    /// before its route's plugins (APISIX's `run_global_rules`).
    pub global_plugins: Vec<Instance>,
    pub upstreams: Vec<UpstreamSpec>,
    pub limits: ProxyLimits,
    pub access_log: bool,
    /// `gateway.trusted_addresses`: whose forwarding headers are believed (None: nobody's, and
    /// the client's `X-Forwarded-For` chain is kept, as APISIX without it).
    pub trusted_addresses: Option<crate::route::IpSet>,
    /// `gateway.tls`'s certificate, read at load and at every reload: shards that see a new one
    /// build a new acceptor, so a renewed certificate is served without a restart.
    pub tls_key: Option<crate::proxy::stream::CertKey>,
    pub config: Config,
}

impl Published {
    /// Prepares `config` for the shards. Fails (with every problem, one per line) when a node
    /// name does not resolve or a plugin's keys/schema do not load: a reload then changes nothing.
    pub fn build(
        version: u64,
        config: Config,
        plugins: &PluginGlobals,
    ) -> Result<Published, String> {
        let mut problems = Vec::new();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let mut system_roots = None;
        for (i, u) in config.upstreams.iter().enumerate() {
            let mut nodes = Vec::with_capacity(u.nodes.len());
            for n in &u.nodes {
                match n.addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                    Some(addr) => {
                        let host = if n.port == u.scheme.default_port() {
                            n.host.clone()
                        } else {
                            n.addr.clone()
                        };
                        nodes.push(NodeSpec {
                            key: n.addr.clone(),
                            addr,
                            host_header: host,
                            host: n.host.clone(),
                            weight: n.weight,
                            priority: n.priority,
                        });
                    }
                    None => {
                        problems.push(format!("upstreams[{i}].nodes: cannot resolve {}", n.addr))
                    }
                }
            }
            let tls = match &u.tls {
                Some(t) => {
                    match tls::client_config(t, &format!("upstreams[{i}].tls"), &mut || {
                        system_roots
                            .get_or_insert_with(tls::load_system_roots)
                            .clone()
                    }) {
                        Ok(config) => Some(tls::TlsSpec {
                            config,
                            server_name: match &u.pass_host {
                                config::PassHost::Rewrite(h) => {
                                    match ServerName::try_from(strip_port(h).to_owned()) {
                                        Ok(n) => Some(n),
                                        Err(_) => {
                                            problems.push(format!(
                                                "upstreams[{i}].upstream_host: `{h}` is not a valid TLS server name"
                                            ));
                                            None
                                        }
                                    }
                                }
                                _ => None,
                            },
                        }),
                        Err(e) => {
                            problems.push(e);
                            None
                        }
                    }
                }
                None => None,
            };
            let active = u.active.as_ref().map(|check| {
                let tls = (check.kind == config::ActiveKind::Https).then(|| {
                    // The probe trusts what the upstream trusts and shows its client certificate.
                    let probe = config::UpstreamTls {
                        verify: check.https_verify_certificate,
                        ca_cert: u.tls.as_ref().and_then(|t| t.ca_cert.clone()),
                        client_cert: u.tls.as_ref().and_then(|t| t.client_cert.clone()),
                    };
                    let path = format!("upstreams[{i}].checks.active");
                    tls::client_config(&probe, &path, &mut || {
                        system_roots
                            .get_or_insert_with(tls::load_system_roots)
                            .clone()
                    })
                });
                let tls = match tls {
                    Some(Ok(cfg)) => Some(cfg),
                    Some(Err(e)) => {
                        problems.push(e);
                        None
                    }
                    None => None,
                };
                health::ActiveSpec {
                    check: check.clone(),
                    tls,
                }
            });
            let chash = match &u.balancer {
                Balancer::RoundRobin => None,
                Balancer::Chash(on) => Some(match on {
                    config::HashOn::Var(HashVar::RemoteAddr) => HashOn::RemoteAddr,
                    config::HashOn::Var(HashVar::Uri | HashVar::RequestUri) => HashOn::Uri,
                    config::HashOn::Var(HashVar::Host) => HashOn::Host,
                    config::HashOn::Var(HashVar::QueryString) => HashOn::Query,
                    config::HashOn::Var(HashVar::Arg(a)) => HashOn::Arg(a.clone()),
                    config::HashOn::Header(h) => HashOn::Header(h.clone()),
                    config::HashOn::Cookie(c) => HashOn::Cookie(c.clone()),
                }),
            };
            upstreams.push(UpstreamSpec {
                id: u.id.clone(),
                nodes,
                chash,
                pass_host: match &u.pass_host {
                    config::PassHost::Pass => PassHost::Pass,
                    config::PassHost::Node => PassHost::Node,
                    config::PassHost::Rewrite(h) => PassHost::Rewrite(h.clone()),
                },
                retries: u.retries,
                retry_timeout: u.retry_timeout,
                passive: Passive {
                    tcp_failures: u.health.tcp_failures,
                    timeouts: u.health.timeouts,
                    http_failures: u.health.http_failures,
                    http_statuses: u.health.http_statuses.clone().into_boxed_slice(),
                    cooldown: u.health.cool_down,
                },
                pool: PoolLimits {
                    size: u.keepalive_pool.size,
                    idle_timeout: u.keepalive_pool.idle_timeout,
                    max_requests: u.keepalive_pool.requests,
                },
                tls,
                active,
            });
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let mut instances = Vec::with_capacity(r.plugins.len());
            for p in r.plugins.by_priority() {
                match p.build(plugins, &format!("routes[{i}].plugins.{}", p.name())) {
                    Ok(inst) => instances.push(inst),
                    Err(e) => problems.push(e),
                }
            }
            routes.push(PublishedRoute {
                id: r.id.clone(),
                upstream: r.upstream,
                websocket: r.enable_websocket,
                keep_identity_headers: r.keep_client_identity_headers,
                timeouts: timeouts(r.timeout.unwrap_or(config.upstreams[r.upstream].timeout)),
                plugins: instances,
            });
        }
        // Config merged the global rules into one set (a plugin in two rules is refused there).
        let mut global_plugins = Vec::with_capacity(config.global_plugins.len());
        for p in config.global_plugins.by_priority() {
            match p.build(plugins, &format!("global_rules.plugins.{}", p.name())) {
                Ok(inst) => global_plugins.push(inst),
                Err(e) => problems.push(e),
            }
        }
        let tls_key = match &config.gateway.tls {
            Some(t) => match crate::proxy::stream::load_cert_key(&t.cert, &t.key) {
                Ok(k) => Some(k),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        let l = &config.gateway.limits;
        Ok(Published {
            version,
            table: RouteTable::build(&config.routes),
            routes,
            global_plugins,
            upstreams,
            limits: ProxyLimits {
                http: http1::Limits {
                    max_header_bytes: l.max_header_bytes,
                    max_headers: l.max_headers,
                },
                header_timeout: l.header_timeout,
                idle_timeout: l.idle_timeout,
                client_max_body_size: l.client_max_body_size,
                client_body_timeout: l.client_body_timeout,
                client_body_min_rate: l.client_body_min_rate,
            },
            access_log: config.gateway.access_log,
            trusted_addresses: config.gateway.trusted_addresses.clone(),
            tls_key,
            config,
        })
    }
}

fn timeouts(t: config::UpstreamTimeout) -> Timeouts {
    Timeouts {
        connect: t.connect,
        send: t.send,
        read: t.read,
    }
}

/// `host[:port]` or `[v6][:port]` without the port (and brackets), for a TLS server name.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(v6, _)| v6);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}
