//! `FileConfig` -> `Config`: every semantic check, all problems collected, no side effects
//! beyond checking that TLS files exist.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::file::{
    ActiveFile, DriverFile, EtcdFile, FileConfig, GatewayFile, Id, PassHostFile, PluginsFile,
    ProviderFile, RouteFile, SchemeFile, ServiceFile, ShardsFile, UpstreamFile,
    UpstreamTimeoutFile, UpstreamType,
};
use super::{
    ActiveCheck, ActiveKind, AdminConf, AdminKey, Balancer, Config, ConfigError, Driver, EtcdConf,
    GatewayConf, GlobalRuleConf, HashOn, HashVar, KeepalivePool, Limits, Loaded, Node, PassHost,
    PassiveHealth, Pem, Problem, Provider, RouteConf, RoutePlugins, Scheme, ServiceConf, Shards,
    TlsConf, UpstreamConf, UpstreamTimeout, UpstreamTls, merge,
};
use crate::route::{self, Method, MethodSet};

/// Collects errors and warnings while building.
struct Builder<'a> {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    base_dir: Option<&'a Path>,
}

impl Builder<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }

    fn unsupported(&mut self, path: &str, fields: &[(&'static str, bool)]) {
        for &(name, present) in fields {
            if present {
                let at = if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
                self.error(
                    at,
                    format!("APISIX attribute `{name}` is not supported by shardgate"),
                );
            }
        }
    }

    /// Seconds (floats allowed, as APISIX) to a Duration; `> 0` unless `allow_zero`.
    fn seconds(&mut self, path: &str, value: f64, allow_zero: bool) -> Duration {
        let ok = value.is_finite() && (value > 0.0 || (allow_zero && value == 0.0));
        match Duration::try_from_secs_f64(value) {
            Ok(d) if ok => d,
            _ => {
                let want = if allow_zero { ">= 0" } else { "> 0" };
                self.error(path, format!("must be a number of seconds {want}"));
                Duration::ZERO
            }
        }
    }

    fn listen(&mut self, path: &str, addrs: &[String]) -> Vec<SocketAddr> {
        if addrs.is_empty() {
            self.error(path, "needs at least one address");
        }
        let mut out = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            match addr.parse() {
                Ok(a) => out.push(a),
                Err(_) => self.error(
                    format!("{path}[{i}]"),
                    format!("`{addr}` is not an ip:port socket address (e.g. 0.0.0.0:9080)"),
                ),
            }
        }
        out
    }

    fn existing_file(&mut self, path: &str, file: &str) -> PathBuf {
        let mut resolved = PathBuf::from(file);
        if resolved.is_relative()
            && let Some(dir) = self.base_dir
        {
            resolved = dir.join(resolved);
        }
        if !resolved.is_file() {
            self.error(
                path,
                format!("file `{}` does not exist", resolved.display()),
            );
        }
        resolved
    }
}

pub(super) fn build(file: FileConfig, base_dir: Option<&Path>) -> Result<Loaded, ConfigError> {
    let mut b = Builder {
        problems: Vec::new(),
        warnings: Vec::new(),
        base_dir,
    };
    b.unsupported("", &file.unsupported());
    let gateway = gateway(&mut b, &file.gateway);
    if file.gateway.etcd.is_some() && file.gateway.config_provider == ProviderFile::File {
        b.warn(
            "gateway.etcd",
            "ignored: gateway.config_provider is `file` (set it to `etcd` to read objects from etcd)",
        );
    }

    let mut upstreams = Vec::with_capacity(file.upstreams.len() + file.routes.len());
    // id -> (position in the file, index in `upstreams`).
    let mut upstream_ids: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, up) in file.upstreams.iter().enumerate() {
        let path = format!("upstreams[{i}]");
        let id = match &up.id {
            Some(id) if !id.0.is_empty() => id.0.clone(),
            _ => {
                b.error(format!("{path}.id"), "required");
                continue;
            }
        };
        if let Some((first, _)) = upstream_ids.get(&id) {
            b.error(
                format!("{path}.id"),
                format!("duplicate id `{id}` (first used by upstreams[{first}])"),
            );
            continue;
        }
        upstream_ids.insert(id.clone(), (i, upstreams.len()));
        upstreams.push(upstream(&mut b, &path, id, up));
    }
    let index_of: HashMap<String, usize> = upstream_ids
        .into_iter()
        .map(|(id, (_, index))| (id, index))
        .collect();

    let mut services = Vec::with_capacity(file.services.len());
    let mut service_index = HashMap::new();
    for (i, s) in file.services.iter().enumerate() {
        let path = format!("services[{i}]");
        let Some(id) = object_id(
            &mut b,
            &path,
            s.id.as_ref(),
            &mut service_index,
            services.len(),
        ) else {
            continue;
        };
        services.push(service(&mut b, &path, id, s, &index_of, &mut upstreams));
    }
    let mut plugin_configs = Vec::with_capacity(file.plugin_configs.len());
    let mut plugin_config_index = HashMap::new();
    for (i, pc) in file.plugin_configs.iter().enumerate() {
        let path = format!("plugin_configs[{i}]");
        let Some(_) = object_id(
            &mut b,
            &path,
            pc.id.as_ref(),
            &mut plugin_config_index,
            plugin_configs.len(),
        ) else {
            continue;
        };
        plugin_configs.push(required_plugins(&mut b, &path, pc.plugins.as_ref()));
    }
    let mut global_rules = Vec::with_capacity(file.global_rules.len());
    let mut global_index = HashMap::new();
    for (i, g) in file.global_rules.iter().enumerate() {
        let path = format!("global_rules[{i}]");
        let Some(id) = object_id(&mut b, &path, g.id.as_ref(), &mut global_index, i) else {
            continue;
        };
        let plugins = required_plugins(&mut b, &path, g.plugins.as_ref());
        global_rules.push((i, GlobalRuleConf { id, plugins }));
    }
    let global_plugins = {
        let sets: Vec<&RoutePlugins> = global_rules.iter().map(|(_, g)| &g.plugins).collect();
        merge::global_plugins(&sets).unwrap_or_else(|clashes| {
            for (name, first, second) in clashes {
                b.error(
                    format!("global_rules[{}].plugins.{name}", global_rules[second].0),
                    format!(
                        "plugin `{name}` is also configured in global_rules[{}]; APISIX drops a \
                         plugin configured in two global rules, shardgate refuses the config",
                        global_rules[first].0
                    ),
                );
            }
            RoutePlugins::default()
        })
    };
    let refs = Refs {
        upstreams: &index_of,
        services: &services,
        service_index: &service_index,
        plugin_configs: &plugin_configs,
        plugin_config_index: &plugin_config_index,
    };

    let mut routes = Vec::with_capacity(file.routes.len());
    let mut route_ids: HashMap<String, usize> = HashMap::new();
    for (i, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let id =
            r.id.as_ref()
                .map_or_else(|| i.to_string(), |id| id.0.clone());
        if let Some(first) = route_ids.get(&id) {
            b.error(
                format!("{path}.id"),
                format!("duplicate id `{id}` (first used by routes[{first}])"),
            );
        } else {
            route_ids.insert(id.clone(), i);
        }
        if let Some(conf) = route(&mut b, &path, id, r, &refs, &mut upstreams) {
            routes.push((i, conf));
        }
    }
    b.warnings
        .extend(crate::pipeline::registry::warnings(&routes));

    if !b.problems.is_empty() {
        return Err(ConfigError {
            problems: b.problems,
        });
    }
    let config = Config {
        gateway,
        upstreams,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        services,
        global_rules: global_rules.into_iter().map(|(_, g)| g).collect(),
        global_plugins,
    };
    Ok(Loaded {
        config,
        warnings: b.warnings,
    })
}

fn gateway(b: &mut Builder<'_>, g: &GatewayFile) -> GatewayConf {
    let listen = b.listen("gateway.listen", &g.listen);
    let tls = g.tls.as_ref().map(|tls| TlsConf {
        listen: b.listen("gateway.tls.listen", &tls.listen),
        cert: b.existing_file("gateway.tls.cert", &tls.cert),
        key: b.existing_file("gateway.tls.key", &tls.key),
    });
    let admin = g
        .admin
        .as_ref()
        .and_then(|admin| match admin.listen.parse() {
            Ok(listen) => Some(AdminConf {
                listen,
                keys: admin_keys(b, &admin.admin_key),
            }),
            Err(_) => {
                b.error(
                    "gateway.admin.listen",
                    format!(
                        "`{}` is not an ip:port socket address (e.g. 127.0.0.1:9090)",
                        admin.listen
                    ),
                );
                None
            }
        });
    let shards = match g.shards {
        ShardsFile::Auto => Shards::Auto,
        ShardsFile::Count(n) => Shards::Count(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let driver = match g.driver {
        DriverFile::Auto => Driver::Auto,
        DriverFile::Uring => Driver::Uring,
        DriverFile::Epoll => Driver::Epoll,
    };
    let l = &g.limits;
    for (name, value) in [
        ("max_header_bytes", l.max_header_bytes),
        ("max_headers", l.max_headers),
        ("max_connections", l.max_connections),
        ("max_body_buffer", l.max_body_buffer),
    ] {
        if value == 0 {
            b.error(format!("gateway.limits.{name}"), "must be at least 1");
        }
    }
    let limits = Limits {
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
        header_timeout: b.seconds("gateway.limits.header_timeout", l.header_timeout, false),
        idle_timeout: b.seconds("gateway.limits.idle_timeout", l.idle_timeout, false),
        max_connections: l.max_connections,
        max_body_buffer: l.max_body_buffer,
        client_max_body_size: l.client_max_body_size,
        client_body_timeout: b.seconds(
            "gateway.limits.client_body_timeout",
            l.client_body_timeout,
            false,
        ),
        client_body_min_rate: l.client_body_min_rate,
    };
    GatewayConf {
        listen,
        tls,
        admin,
        shards,
        driver,
        limits,
        shutdown_timeout: b.seconds("gateway.shutdown_timeout", g.shutdown_timeout, true),
        access_log: g.access_log,
        provider: provider(b, g),
        trusted_addresses: trusted_addresses(b, g),
    }
}

/// `gateway.trusted_addresses`: addresses and CIDRs, at least one.
fn trusted_addresses(b: &mut Builder<'_>, g: &GatewayFile) -> Option<route::IpSet> {
    let list = g.trusted_addresses.as_ref()?;
    if list.is_empty() {
        b.error("gateway.trusted_addresses", "needs at least one address");
        return None;
    }
    let mut ok = true;
    for (i, entry) in list.iter().enumerate() {
        if route::IpSet::parse([entry.as_str()]).is_err() {
            b.error(
                format!("gateway.trusted_addresses[{i}]"),
                format!("invalid ip address: `{entry}` is not an IPv4/IPv6 address or CIDR"),
            );
            ok = false;
        }
    }
    ok.then(|| route::IpSet::parse(list.iter().map(String::as_str)).unwrap_or_default())
}

/// `gateway.admin.admin_key`: names unique, keys non-empty, `$ENV://NAME` read from the
/// environment (APISIX's secret reference).
fn admin_keys(b: &mut Builder<'_>, keys: &[super::file::AdminKeyFile]) -> Vec<AdminKey> {
    let mut out: Vec<AdminKey> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let path = format!("gateway.admin.admin_key[{i}]");
        let key = match k.key.strip_prefix("$ENV://") {
            Some(var) => match std::env::var(var) {
                Ok(v) => v,
                Err(_) => {
                    b.error(
                        format!("{path}.key"),
                        format!("environment variable `{var}` is not set"),
                    );
                    continue;
                }
            },
            None => k.key.clone(),
        };
        if key.is_empty() {
            b.error(format!("{path}.key"), "must not be empty");
            continue;
        }
        if out.iter().any(|o| o.name == k.name) {
            b.error(
                format!("{path}.name"),
                format!("duplicate name `{}`", k.name),
            );
            continue;
        }
        out.push(AdminKey {
            name: k.name.clone(),
            key,
            admin: k.role == super::file::AdminRoleFile::Admin,
        });
    }
    out
}

fn provider(b: &mut Builder<'_>, g: &GatewayFile) -> Provider {
    match g.config_provider {
        ProviderFile::File => Provider::File,
        ProviderFile::Etcd => {
            let default = EtcdFile {
                host: vec![super::file::ETCD_HOST.to_owned()],
                prefix: super::file::ETCD_PREFIX.to_owned(),
                timeout: super::file::ETCD_TIMEOUT,
                user: None,
                password: None,
                tls: None,
            };
            let e = g.etcd.as_ref().unwrap_or(&default);
            b.unsupported("gateway.etcd", &[("tls", e.tls.is_some())]);
            if e.host.is_empty() {
                b.error("gateway.etcd.host", "needs at least one etcd member");
            }
            let mut hosts = Vec::with_capacity(e.host.len());
            for (i, h) in e.host.iter().enumerate() {
                let path = format!("gateway.etcd.host[{i}]");
                if h.starts_with("https://") {
                    b.error(
                        path,
                        format!(
                            "`{h}`: etcd over TLS is not supported by shardgate yet (use http://)"
                        ),
                    );
                    continue;
                }
                let rest = h.strip_prefix("http://").unwrap_or(h).trim_end_matches('/');
                match parse_host_port(rest, 2379) {
                    Some((host, port)) if !rest.contains('/') => {
                        let host = if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host
                        };
                        hosts.push(format!("{host}:{port}"));
                    }
                    _ => b.error(
                        path,
                        format!("`{h}` is not an etcd address (http://host:port)"),
                    ),
                }
            }
            let prefix = e.prefix.trim_end_matches('/').to_owned();
            if !prefix.starts_with('/') {
                b.error(
                    "gateway.etcd.prefix",
                    format!(
                        "`{}` must start with `/` (APISIX's default is /apisix)",
                        e.prefix
                    ),
                );
            }
            let auth = match (&e.user, &e.password) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                (None, None) => None,
                (Some(_), None) => {
                    b.error("gateway.etcd.password", "required with `user`");
                    None
                }
                (None, Some(_)) => {
                    b.error("gateway.etcd.user", "required with `password`");
                    None
                }
            };
            Provider::Etcd(EtcdConf {
                hosts,
                prefix,
                timeout: b.seconds("gateway.etcd.timeout", e.timeout, false),
                auth,
            })
        }
    }
}

fn upstream(b: &mut Builder<'_>, path: &str, id: String, up: &UpstreamFile) -> UpstreamConf {
    b.unsupported(path, &up.unsupported());
    let scheme = match up.scheme {
        SchemeFile::Http => Scheme::Http,
        SchemeFile::Https => Scheme::Https,
        other => {
            let name = format!("{other:?}").to_ascii_lowercase();
            b.error(
                format!("{path}.scheme"),
                format!("`{name}` is not supported by shardgate (http or https)"),
            );
            Scheme::Http
        }
    };
    let balancer = match up.kind {
        UpstreamType::Roundrobin => {
            if up.hash_on.is_some() || up.key.is_some() {
                b.warn(
                    format!("{path}.hash_on"),
                    "`hash_on`/`key` only apply to `type: chash`; ignored",
                );
            }
            Balancer::RoundRobin
        }
        UpstreamType::Chash => Balancer::Chash(hash_on(b, path, up)),
        UpstreamType::Ewma | UpstreamType::LeastConn => {
            let name = if up.kind == UpstreamType::Ewma {
                "ewma"
            } else {
                "least_conn"
            };
            b.error(
                format!("{path}.type"),
                format!(
                    "APISIX balancer `{name}` is not supported by shardgate (roundrobin or chash)"
                ),
            );
            Balancer::RoundRobin
        }
    };
    let nodes = nodes(b, path, up, scheme);
    let tls = upstream_tls(b, path, up, scheme);
    let pass_host = match (up.pass_host, &up.upstream_host) {
        (PassHostFile::Pass, _) => PassHost::Pass,
        (PassHostFile::Node, _) => PassHost::Node,
        (PassHostFile::Rewrite, Some(host)) if !host.is_empty() => PassHost::Rewrite(host.clone()),
        (PassHostFile::Rewrite, _) => {
            b.error(
                format!("{path}.upstream_host"),
                "required when pass_host is `rewrite`",
            );
            PassHost::Pass
        }
    };
    let timeout = timeout(b, path, &up.timeout);
    let keepalive_pool = KeepalivePool {
        size: up.keepalive_pool.size,
        idle_timeout: b.seconds(
            &format!("{path}.keepalive_pool.idle_timeout"),
            up.keepalive_pool.idle_timeout,
            true,
        ),
        requests: up.keepalive_pool.requests,
    };
    if up.keepalive_pool.requests == 0 {
        b.error(
            format!("{path}.keepalive_pool.requests"),
            "must be at least 1",
        );
    }
    let retry_timeout = b.seconds(&format!("{path}.retry_timeout"), up.retry_timeout, true);
    let retries = up
        .retries
        .unwrap_or_else(|| u32::try_from(nodes.len().saturating_sub(1)).unwrap_or(u32::MAX));
    UpstreamConf {
        id,
        balancer,
        nodes,
        scheme,
        tls,
        pass_host,
        timeout,
        keepalive_pool,
        retries,
        retry_timeout: (!retry_timeout.is_zero()).then_some(retry_timeout),
        health: health(b, path, up),
        active: up
            .checks
            .as_ref()
            .and_then(|c| c.active.as_ref())
            .map(|a| active(b, &format!("{path}.checks.active"), a)),
    }
}

fn upstream_tls(
    b: &mut Builder<'_>,
    path: &str,
    up: &UpstreamFile,
    scheme: Scheme,
) -> Option<UpstreamTls> {
    if scheme != Scheme::Https {
        if up.tls.is_some() {
            b.error(format!("{path}.tls"), "only applies to `scheme: https`");
        }
        return None;
    }
    let Some(t) = &up.tls else {
        return Some(UpstreamTls {
            verify: true,
            ca_cert: None,
            client_cert: None,
        });
    };
    let path = format!("{path}.tls");
    if t.client_cert_id.is_some() {
        b.error(
            format!("{path}.client_cert_id"),
            "APISIX attribute `client_cert_id` is not supported by shardgate (ssls objects); \
             use client_cert and client_key",
        );
    }
    let pem = |b: &mut Builder<'_>, name: &str, v: &str| {
        if v.trim_start().starts_with("-----BEGIN") {
            Pem::Inline(v.to_owned())
        } else {
            Pem::File(b.existing_file(&format!("{path}.{name}"), v))
        }
    };
    let client_cert = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((pem(b, "client_cert", c), pem(b, "client_key", k))),
        (None, None) => None,
        (Some(_), None) => {
            b.error(format!("{path}.client_key"), "required with client_cert");
            None
        }
        (None, Some(_)) => {
            b.error(format!("{path}.client_cert"), "required with client_key");
            None
        }
    };
    let verify = t.verify.unwrap_or(true);
    if !verify {
        b.warn(
            format!("{path}.verify"),
            "false: the upstream's certificate is not verified (anyone on the path can impersonate it)",
        );
        if t.ca_cert.is_some() {
            b.warn(format!("{path}.ca_cert"), "unused with `verify: false`");
        }
    }
    let ca_cert = t.ca_cert.as_deref().map(|c| pem(b, "ca_cert", c));
    Some(UpstreamTls {
        verify,
        ca_cert,
        client_cert,
    })
}

fn hash_on(b: &mut Builder<'_>, path: &str, up: &UpstreamFile) -> HashOn {
    let kind = up.hash_on.as_deref().unwrap_or("vars");
    let Some(key) = up.key.as_deref().filter(|k| !k.is_empty()) else {
        b.error(format!("{path}.key"), "required with `type: chash`");
        return HashOn::Var(HashVar::RemoteAddr);
    };
    match kind {
        "vars" => HashOn::Var(match key {
            "remote_addr" => HashVar::RemoteAddr,
            "uri" => HashVar::Uri,
            "request_uri" => HashVar::RequestUri,
            "host" => HashVar::Host,
            "query_string" => HashVar::QueryString,
            _ => match key.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                Some(arg) => HashVar::Arg(arg.to_owned()),
                None => {
                    b.error(
                        format!("{path}.key"),
                        format!(
                            "variable `{key}` is not supported by shardgate (remote_addr, uri, \
                             request_uri, host, query_string, arg_<name>)"
                        ),
                    );
                    HashVar::RemoteAddr
                }
            },
        }),
        "header" => HashOn::Header(key.to_ascii_lowercase()),
        "cookie" => HashOn::Cookie(key.to_owned()),
        "consumer" | "vars_combinations" => {
            b.error(
                format!("{path}.hash_on"),
                format!(
                    "APISIX `hash_on: {kind}` is not supported by shardgate (vars, header, cookie)"
                ),
            );
            HashOn::Var(HashVar::RemoteAddr)
        }
        other => {
            b.error(
                format!("{path}.hash_on"),
                format!("unknown value `{other}` (vars, header, cookie)"),
            );
            HashOn::Var(HashVar::RemoteAddr)
        }
    }
}

fn nodes(b: &mut Builder<'_>, path: &str, up: &UpstreamFile, scheme: Scheme) -> Vec<Node> {
    let Some(file_nodes) = &up.nodes else {
        b.error(format!("{path}.nodes"), "required");
        return Vec::new();
    };
    let mut out = Vec::with_capacity(file_nodes.0.len());
    for (i, node) in file_nodes.0.iter().enumerate() {
        let at = format!("{path}.nodes[{i}]");
        let parsed = match node.port {
            // List form: `host` is a bare host (an IPv6 literal may come with or without brackets).
            Some(port) => parse_host(&node.host).map(|host| (host, port)),
            // Map form: the key is `host[:port]`.
            None => parse_host_port(&node.host, scheme.default_port()),
        };
        match parsed {
            Some((host, port)) => {
                let addr = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                out.push(Node {
                    addr,
                    host,
                    port,
                    weight: node.weight,
                    priority: node.priority,
                });
            }
            None => b.error(at, format!("`{}` is not a valid host:port", node.host)),
        }
    }
    if out.is_empty() && file_nodes.0.is_empty() {
        b.error(format!("{path}.nodes"), "needs at least one node");
    } else if !out.is_empty() && out.iter().all(|n| n.weight == 0) {
        b.error(
            format!("{path}.nodes"),
            "at least one node needs a weight > 0",
        );
    }
    out
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`. None when malformed.
fn parse_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => default_port,
            _ => parse_port(after.strip_prefix(':')?)?,
        };
        return v6.parse::<Ipv6Addr>().ok().map(|ip| (ip.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => parse_host(host).zip(parse_port(port)),
        None => parse_host(s).map(|h| (h, default_port)),
    }
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|&p| p != 0 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// An IPv4/IPv6 address or a DNS host name, normalized (lowercase, no brackets).
fn parse_host(s: &str) -> Option<String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| s.to_ascii_lowercase())
}

fn health(b: &mut Builder<'_>, path: &str, up: &UpstreamFile) -> PassiveHealth {
    let cool_down = b.seconds(
        &format!("{path}.health.cool_down"),
        up.health.cool_down,
        false,
    );
    let Some(checks) = &up.checks else {
        return PassiveHealth {
            tcp_failures: up.health.failures,
            timeouts: up.health.failures,
            http_failures: 0,
            http_statuses: Vec::new(),
            successes: 1,
            cool_down,
        };
    };
    let Some(passive) = &checks.passive else {
        return PassiveHealth {
            tcp_failures: up.health.failures,
            timeouts: up.health.failures,
            http_failures: 0,
            http_statuses: Vec::new(),
            successes: 1,
            cool_down,
        };
    };
    if passive.healthy.http_statuses.is_some() {
        b.error(
            format!("{path}.checks.passive.healthy.http_statuses"),
            "APISIX attribute `checks.passive.healthy.http_statuses` is not supported by shardgate",
        );
    }
    let tcp_only = passive.kind.as_deref() == Some("tcp");
    match passive.kind.as_deref() {
        None | Some("http" | "https" | "tcp") => {}
        Some(other) => b.error(
            format!("{path}.checks.passive.type"),
            format!("unknown value `{other}` (http, https, tcp)"),
        ),
    }
    let u = &passive.unhealthy;
    for (i, status) in u.http_statuses.iter().enumerate() {
        if !(200..=599).contains(status) {
            b.error(
                format!("{path}.checks.passive.unhealthy.http_statuses[{i}]"),
                "must be 200-599",
            );
        }
    }
    PassiveHealth {
        tcp_failures: u.tcp_failures,
        timeouts: u.timeouts,
        http_failures: if tcp_only { 0 } else { u.http_failures },
        http_statuses: if tcp_only {
            Vec::new()
        } else {
            u.http_statuses.clone()
        },
        successes: passive.healthy.successes.max(1),
        cool_down,
    }
}

fn active(b: &mut Builder<'_>, path: &str, a: &ActiveFile) -> ActiveCheck {
    let kind = match a.kind.as_deref() {
        None | Some("http") => ActiveKind::Http,
        Some("https") => ActiveKind::Https,
        Some("tcp") => ActiveKind::Tcp,
        Some(other) => {
            b.error(
                format!("{path}.type"),
                format!("unknown value `{other}` (http, https, tcp)"),
            );
            ActiveKind::Http
        }
    };
    for (name, set) in [
        ("http_method", a.http_method.is_some()),
        ("http_req_body", a.http_req_body.is_some()),
    ] {
        if set {
            b.error(
                format!("{path}.{name}"),
                format!("APISIX attribute `{name}` is not supported by shardgate (probes are GET)"),
            );
        }
    }
    if a.concurrency == 0 {
        b.error(format!("{path}.concurrency"), "must be at least 1");
    }
    if !a.http_path.starts_with('/') || a.http_path.bytes().any(|c| c <= b' ' || c == 0x7f) {
        b.error(
            format!("{path}.http_path"),
            "must be an origin-form path starting with `/` (no spaces or control characters)",
        );
    }
    let mut req_headers = Vec::with_capacity(a.req_headers.len());
    for (i, h) in a.req_headers.iter().enumerate() {
        match h.split_once(':') {
            Some((n, v))
                if !n.is_empty()
                    && n.bytes().all(|c| c.is_ascii_graphic() && c != b':')
                    && !v.bytes().any(|c| c == b'\r' || c == b'\n') =>
            {
                req_headers.push((n.to_owned(), v.trim().to_owned()));
            }
            _ => b.error(format!("{path}.req_headers[{i}]"), "must be `Name: value`"),
        }
    }
    let count = |b: &mut Builder<'_>, name: &str, v: u32| {
        if !(1..=254).contains(&v) {
            b.error(format!("{path}.{name}"), "must be 1-254");
        }
        v
    };
    let successes = count(b, "healthy.successes", a.healthy.successes);
    let http_failures = count(b, "unhealthy.http_failures", a.unhealthy.http_failures);
    let tcp_failures = count(b, "unhealthy.tcp_failures", a.unhealthy.tcp_failures);
    let timeouts = count(b, "unhealthy.timeouts", a.unhealthy.timeouts);
    for (name, statuses) in [
        ("healthy.http_statuses", &a.healthy.http_statuses),
        ("unhealthy.http_statuses", &a.unhealthy.http_statuses),
    ] {
        for (i, s) in statuses.iter().enumerate() {
            if !(200..=599).contains(s) {
                b.error(format!("{path}.{name}[{i}]"), "must be 200-599");
            }
        }
    }
    ActiveCheck {
        kind,
        timeout: b.seconds(&format!("{path}.timeout"), a.timeout, false),
        concurrency: a.concurrency.max(1),
        host: a.host.clone().filter(|h| !h.is_empty()),
        port: a.port.filter(|p| *p != 0),
        http_path: a.http_path.clone(),
        https_verify_certificate: a.https_verify_certificate,
        req_headers,
        healthy_interval: b.seconds(
            &format!("{path}.healthy.interval"),
            a.healthy.interval,
            false,
        ),
        healthy_statuses: a.healthy.http_statuses.clone(),
        successes,
        unhealthy_interval: b.seconds(
            &format!("{path}.unhealthy.interval"),
            a.unhealthy.interval,
            false,
        ),
        unhealthy_statuses: a.unhealthy.http_statuses.clone(),
        http_failures,
        tcp_failures,
        timeouts,
    }
}

fn route(
    b: &mut Builder<'_>,
    path: &str,
    id: String,
    r: &RouteFile,
    refs: &Refs<'_>,
    upstreams: &mut Vec<UpstreamConf>,
) -> Option<RouteConf> {
    let service = r.service_id.as_ref().and_then(|sid| {
        let found = refs.service_index.get(&sid.0).copied();
        if found.is_none() {
            b.error(
                format!("{path}.service_id"),
                format!("service \"{}\" not found in services", sid.0),
            );
        }
        found
    });
    let service_conf = service.map(|s| &refs.services[s]);
    let plugin_config = r.plugin_config_id.as_ref().and_then(|pid| {
        let found = refs.plugin_config_index.get(&pid.0).copied();
        if found.is_none() {
            b.error(
                format!("{path}.plugin_config_id"),
                format!("plugin_config \"{}\" not found in plugin_configs", pid.0),
            );
        }
        found
    });
    for (name, present) in r.lua() {
        if present {
            b.error(
                format!("{path}.{name}"),
                format!(
                    "APISIX attribute `{name}` is Lua code, which shardgate cannot run \
                     (match on request variables with `vars`)"
                ),
            );
        }
    }
    let uris = match (&r.uri, &r.uris) {
        (Some(_), Some(_)) => {
            b.error(format!("{path}.uris"), "set `uri` or `uris`, not both");
            Vec::new()
        }
        (Some(uri), None) => vec![(format!("{path}.uri"), uri.clone())],
        (None, Some(uris)) if !uris.is_empty() => uris
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("{path}.uris[{i}]"), u.clone()))
            .collect(),
        (None, Some(_)) => {
            b.error(format!("{path}.uris"), "needs at least one URI");
            Vec::new()
        }
        (None, None) => {
            b.error(path, "needs `uri` or `uris`");
            Vec::new()
        }
    };
    for (at, uri) in &uris {
        if let Err(message) = route::check_uri_pattern(uri) {
            b.error(at.clone(), message);
        }
    }
    let hosts = match (&r.host, &r.hosts) {
        (Some(_), Some(_)) => {
            b.error(format!("{path}.hosts"), "set `host` or `hosts`, not both");
            Vec::new()
        }
        (Some(host), None) => vec![(format!("{path}.host"), host)],
        (None, Some(hosts)) => hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("{path}.hosts[{i}]"), h))
            .collect(),
        // APISIX: a route without hosts takes its service's.
        (None, None) => service_conf.map_or_else(Vec::new, |svc| {
            svc.hosts.iter().map(|h| (String::new(), h)).collect()
        }),
    };
    for (at, host) in hosts.iter().filter(|(at, _)| !at.is_empty()) {
        if let Err(message) = route::check_host_pattern(host) {
            b.error(at.clone(), message);
        }
    }
    let mut methods = MethodSet::ANY;
    for (i, name) in r.methods.iter().enumerate() {
        match Method::from_token(name.as_bytes()) {
            Some(m) => methods.insert(m),
            None => b.error(
                format!("{path}.methods[{i}]"),
                format!("`{name}` is not one of GET POST PUT DELETE PATCH HEAD OPTIONS CONNECT TRACE PURGE"),
            ),
        }
    }
    let enabled = match r.status {
        1 => true,
        0 => false,
        _ => {
            b.error(
                format!("{path}.status"),
                "must be 0 (disabled) or 1 (enabled)",
            );
            true
        }
    };
    let upstream = match (&r.upstream_id, &r.upstream) {
        (Some(_), Some(_)) => {
            b.error(
                format!("{path}.upstream"),
                "set `upstream_id` or `upstream`, not both",
            );
            None
        }
        (Some(up_id), None) => match refs.upstreams.get(&up_id.0) {
            Some(&index) => Some(index),
            None => {
                b.error(
                    format!("{path}.upstream_id"),
                    format!("no upstream with id `{}`", up_id.0),
                );
                None
            }
        },
        (None, Some(inline)) => {
            let conf = upstream(
                b,
                &format!("{path}.upstream"),
                format!("route:{id}"),
                inline,
            );
            upstreams.push(conf);
            Some(upstreams.len() - 1)
        }
        (None, None) => match service_conf {
            Some(svc) => svc.upstream,
            // A missing service is already reported.
            None if r.service_id.is_some() => None,
            None => {
                b.error(path, "needs `upstream_id` or `upstream`");
                None
            }
        },
    };
    if upstream.is_none()
        && let Some(svc) = service_conf
        && r.upstream_id.is_none()
        && r.upstream.is_none()
    {
        b.error(
            path,
            format!(
                "needs `upstream_id` or `upstream`: neither the route nor its service `{}` has one",
                svc.id
            ),
        );
    }
    let own = plugins(b, &format!("{path}.plugins"), &r.plugins);
    let plugins = merge::route_plugins(
        service_conf.map(|s| &s.plugins),
        plugin_config.map(|p| &refs.plugin_configs[p]),
        &own,
    );
    let remote_addrs = route_remote_addrs(b, path, r);
    let vars = r.vars.as_ref().and_then(|v| match route::Expr::compile(v) {
        Ok(expr) => Some(Arc::new(expr)),
        Err(e) => {
            b.error(
                format!("{path}.vars{}", e.at),
                format!("failed to validate the 'vars' expression: {}", e.message),
            );
            None
        }
    });
    Some(RouteConf {
        id,
        name: r.name.clone(),
        uris: uris.into_iter().map(|(_, u)| u).collect(),
        hosts: hosts
            .into_iter()
            .map(|(_, h)| h.to_ascii_lowercase())
            .collect(),
        methods,
        priority: r.priority,
        upstream: upstream?,
        service,
        enable_websocket: r
            .enable_websocket
            .or(service_conf.and_then(|s| s.enable_websocket))
            .unwrap_or(false),
        keep_client_identity_headers: r.keep_client_identity_headers,
        enabled,
        remote_addrs,
        vars,
        plugins,
        timeout: r.timeout.as_ref().map(|t| timeout(b, path, t)),
    })
}

/// APISIX's `timeout` object (an upstream's, or a route's that replaces it), at `{path}.timeout`.
fn timeout(b: &mut Builder<'_>, path: &str, t: &UpstreamTimeoutFile) -> UpstreamTimeout {
    UpstreamTimeout {
        connect: b.seconds(&format!("{path}.timeout.connect"), t.connect, false),
        send: b.seconds(&format!("{path}.timeout.send"), t.send, false),
        read: b.seconds(&format!("{path}.timeout.read"), t.read, false),
    }
}

/// The ids of services, plugin_configs and upstreams, for routes to refer to.
struct Refs<'a> {
    upstreams: &'a HashMap<String, usize>,
    services: &'a [ServiceConf],
    service_index: &'a HashMap<String, usize>,
    plugin_configs: &'a [RoutePlugins],
    plugin_config_index: &'a HashMap<String, usize>,
}

/// A required, unique id; registers `index` under it.
fn object_id(
    b: &mut Builder<'_>,
    path: &str,
    id: Option<&Id>,
    ids: &mut HashMap<String, usize>,
    index: usize,
) -> Option<String> {
    let id = match id {
        Some(id) if !id.0.is_empty() => id.0.clone(),
        _ => {
            b.error(format!("{path}.id"), "required");
            return None;
        }
    };
    if ids.contains_key(&id) {
        let kind = path.split('[').next().unwrap_or(path);
        b.error(
            format!("{path}.id"),
            format!("duplicate id `{id}` in {kind}"),
        );
        return None;
    }
    ids.insert(id.clone(), index);
    Some(id)
}

/// A `plugins:` map (of a route, service, plugin config or global rule) validated by the
/// registry; `path` names the map (`routes[0].plugins`).
fn plugins(b: &mut Builder<'_>, path: &str, file: &PluginsFile) -> RoutePlugins {
    let (plugins, mut problems, mut warnings) =
        crate::pipeline::registry::parse_plugins(&file.0, path);
    b.problems.append(&mut problems);
    b.warnings.append(&mut warnings);
    plugins
}

fn required_plugins(b: &mut Builder<'_>, path: &str, file: Option<&PluginsFile>) -> RoutePlugins {
    match file {
        Some(file) => plugins(b, &format!("{path}.plugins"), file),
        None => {
            b.error(format!("{path}.plugins"), "required");
            RoutePlugins::default()
        }
    }
}

fn service(
    b: &mut Builder<'_>,
    path: &str,
    id: String,
    s: &ServiceFile,
    upstream_index: &HashMap<String, usize>,
    upstreams: &mut Vec<UpstreamConf>,
) -> ServiceConf {
    if s.script.is_some() {
        b.error(
            format!("{path}.script"),
            "APISIX attribute `script` is Lua code, which shardgate cannot run",
        );
    }
    let upstream = match (&s.upstream_id, &s.upstream) {
        (Some(_), Some(_)) => {
            b.error(
                format!("{path}.upstream"),
                "set `upstream_id` or `upstream`, not both",
            );
            None
        }
        (Some(up_id), None) => {
            let found = upstream_index.get(&up_id.0).copied();
            if found.is_none() {
                b.error(
                    format!("{path}.upstream_id"),
                    format!("upstream \"{}\" not found in upstreams", up_id.0),
                );
            }
            found
        }
        (None, Some(inline)) => {
            let conf = upstream(
                b,
                &format!("{path}.upstream"),
                format!("service:{id}"),
                inline,
            );
            upstreams.push(conf);
            Some(upstreams.len() - 1)
        }
        (None, None) => None,
    };
    let hosts = s.hosts.as_deref().unwrap_or_default();
    if s.hosts.is_some() && hosts.is_empty() {
        b.error(format!("{path}.hosts"), "needs at least one host");
    }
    for (i, host) in hosts.iter().enumerate() {
        if let Err(message) = route::check_host_pattern(host) {
            b.error(format!("{path}.hosts[{i}]"), message);
        }
    }
    ServiceConf {
        id,
        upstream,
        hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        enable_websocket: s.enable_websocket,
        plugins: plugins(b, &format!("{path}.plugins"), &s.plugins),
    }
}

/// `remote_addr` or `remote_addrs`: addresses and CIDRs, IPv4 or IPv6.
fn route_remote_addrs(b: &mut Builder<'_>, path: &str, r: &RouteFile) -> route::IpSet {
    let entries: Vec<(String, &str)> = match (&r.remote_addr, &r.remote_addrs) {
        (Some(_), Some(_)) => {
            b.error(
                format!("{path}.remote_addrs"),
                "set `remote_addr` or `remote_addrs`, not both",
            );
            return route::IpSet::default();
        }
        (Some(one), None) => vec![(format!("{path}.remote_addr"), one.as_str())],
        (None, Some(list)) if list.is_empty() => {
            b.error(format!("{path}.remote_addrs"), "needs at least one address");
            return route::IpSet::default();
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("{path}.remote_addrs[{i}]"), a.as_str()))
            .collect(),
        (None, None) => return route::IpSet::default(),
    };
    for (at, entry) in &entries {
        if route::IpSet::parse([*entry]).is_err() {
            b.error(
                at.clone(),
                format!("`{entry}` is not an IPv4/IPv6 address or CIDR"),
            );
        }
    }
    route::IpSet::parse(entries.iter().map(|(_, e)| *e)).unwrap_or_default()
}
