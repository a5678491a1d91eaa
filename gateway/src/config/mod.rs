//! Configuration: an APISIX-shaped YAML file in, a validated [`Config`] out.
//!
//! ```text
//! text --env.rs--> text with ${VAR} expanded --file.rs (serde)--> FileConfig --build.rs--> Config
//! ```
//! - `env.rs` expands `${VAR}` and `${VAR:-default}` (`$${` is a literal `${`). It works on the raw
//!   text, so quote values that may contain YAML syntax: `client_secret: "${SECRET}"`.
//! - `file.rs` mirrors the file field for field; type errors name their path
//!   (`routes[0].upstream.nodes: invalid type ...`) via serde_path_to_error.
//! - `secret_ref.rs` resolves APISIX secret references (`$ENV://NAME`, `$ENV://NAME/field`) in
//!   plugin attributes, at every load and reload; other secret managers are refused by name.
//! - `build.rs` does every semantic check, collecting all problems, and compiles the types the
//!   proxy uses: `Duration`s, parsed addresses, upstream indexes, plugin attributes validated by
//!   the plugin registry (`pipeline::registry`).
//!
//! Loading has no side effects beyond reading the file and checking that TLS files exist.

mod build;
mod env;
pub mod etcd;
mod file;
mod merge;
mod secret_ref;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use shardgate_oidc::config::{OidcConf, Problem};

pub use crate::pipeline::{PluginConf, RoutePlugins};

use crate::route::{Expr, IpSet, MethodSet};

/// A validated configuration, published to every shard as an `Arc`.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConf,
    /// Top-level upstreams first, in file order, then inline route upstreams (id `route:<id>`).
    pub upstreams: Vec<UpstreamConf>,
    /// In file order, disabled routes included (they never match).
    pub routes: Vec<RouteConf>,
    /// APISIX `services`, in file order.
    pub services: Vec<ServiceConf>,
    /// APISIX `global_rules`, in file order.
    pub global_rules: Vec<GlobalRuleConf>,
    /// Every global rule's plugins in one set, as APISIX runs them (before the route's).
    pub global_plugins: RoutePlugins,
}

/// The loaded configuration plus the warnings worth logging.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", DisplayProblems(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem::new(path, message)],
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConf {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsConf>,
    pub admin: Option<AdminConf>,
    pub shards: Shards,
    /// The CLI `--driver` overrides this.
    pub driver: Driver,
    pub limits: Limits,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_timeout: Duration,
    pub access_log: bool,
    /// Where the APISIX objects come from.
    pub provider: Provider,
    /// `gateway.trusted_addresses` (APISIX's `apisix.trusted_addresses`); None: not configured.
    pub trusted_addresses: Option<crate::route::IpSet>,
}

/// `gateway.config_provider`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// The objects are in this file (APISIX standalone).
    File,
    /// The objects are in etcd in APISIX's layout; the file holds only `gateway`.
    Etcd(EtcdConf),
}

/// `gateway.etcd` (APISIX `deployment.etcd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConf {
    /// `host:port` of each member, tried in order.
    pub hosts: Vec<String>,
    /// Without a trailing `/` (`/apisix`).
    pub prefix: String,
    /// Connect and request timeout.
    pub timeout: Duration,
    /// etcd authentication (user, password).
    pub auth: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct TlsConf {
    pub listen: Vec<SocketAddr>,
    /// Resolved against the config file's directory when loaded from a file.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConf {
    pub listen: SocketAddr,
    /// Admin API keys; empty: no Admin API (only /healthz, /readyz, /metrics).
    pub keys: Vec<AdminKey>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub name: String,
    pub key: String,
    /// false: `viewer` (GET only).
    pub admin: bool,
}

impl fmt::Debug for AdminKey {
    // The key is a secret: never in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminKey")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    /// One per available core.
    Auto,
    /// At least 1.
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when it works here, else epoll.
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers; more is a 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Time to receive a complete request head.
    pub header_timeout: Duration,
    /// Keep-alive idle time between requests.
    pub idle_timeout: Duration,
    /// Per shard.
    pub max_connections: usize,
    /// Largest request body buffered in memory (the rest is streamed).
    pub max_body_buffer: usize,
    /// Larger request bodies are refused with 413; 0 = unlimited.
    pub client_max_body_size: u64,
    /// Longest wait for the next piece of a request body (408 after it).
    pub client_body_timeout: Duration,
    /// After `client_body_timeout`, a body must keep arriving at this average rate (bytes per
    /// second); 0 turns the check off.
    pub client_body_min_rate: u64,
}

#[derive(Debug, Clone)]
pub struct UpstreamConf {
    pub id: String,
    pub balancer: Balancer,
    pub nodes: Vec<Node>,
    pub scheme: Scheme,
    /// Set exactly when `scheme` is https.
    pub tls: Option<UpstreamTls>,
    pub pass_host: PassHost,
    pub timeout: UpstreamTimeout,
    pub keepalive_pool: KeepalivePool,
    /// Default as APISIX: number of nodes - 1. Which requests may be retried is the proxy's call.
    pub retries: u32,
    /// None: no limit (APISIX `retry_timeout: 0`).
    pub retry_timeout: Option<Duration>,
    pub health: PassiveHealth,
    /// APISIX `checks.active`: probes run by the control side.
    pub active: Option<ActiveCheck>,
}

/// APISIX `checks.active`. A node is marked down after `tcp_failures` failed connects,
/// `timeouts` timed-out probes or `http_failures` answers in `unhealthy_statuses` in a row, and up
/// again after `successes` answers in `healthy_statuses` (or connects, for `tcp`) in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub kind: ActiveKind,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Host header (and TLS name) of the probe; the node's host when absent.
    pub host: Option<String>,
    /// Probe this port instead of the node's.
    pub port: Option<u16>,
    pub http_path: String,
    pub https_verify_certificate: bool,
    /// `Name: value` lines added to the probe request.
    pub req_headers: Vec<(String, String)>,
    pub healthy_interval: Duration,
    pub healthy_statuses: Vec<u16>,
    pub successes: u32,
    pub unhealthy_interval: Duration,
    pub unhealthy_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveKind {
    Http,
    Https,
    Tcp,
}

/// How an `https` upstream is verified and authenticated (APISIX `tls` + shardgate's `ca_cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Verify the server's certificate and name (default true; APISIX's default is false).
    pub verify: bool,
    /// Trust these instead of the system roots.
    pub ca_cert: Option<Pem>,
    /// mTLS: certificate chain and key.
    pub client_cert: Option<(Pem, Pem)>,
}

/// PEM material: inline text (as APISIX stores it) or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    Inline(String),
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `host:port`, IPv6 in brackets; what to connect to.
    pub addr: String,
    /// Without brackets.
    pub host: String,
    pub port: u16,
    /// 0 = never picked.
    pub weight: u32,
    /// Higher first; a lower priority only when every node above it is unavailable (APISIX).
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    RoundRobin,
    /// Consistent hashing on a request value.
    Chash(HashOn),
}

/// APISIX `hash_on` + `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Var(HashVar),
    /// Lowercase header name.
    Header(String),
    Cookie(String),
}

/// The nginx variables APISIX allows as a chash key that shardgate computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashVar {
    RemoteAddr,
    Uri,
    RequestUri,
    Host,
    QueryString,
    /// `arg_<name>`: a query parameter.
    Arg(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The `Host` header sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassHost {
    /// The client's.
    Pass,
    /// The chosen node's `host[:port]`.
    Node,
    /// This value (`upstream_host`).
    Rewrite(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeout {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepalivePool {
    /// Idle connections kept per upstream (per shard).
    pub size: usize,
    pub idle_timeout: Duration,
    /// Requests served on one connection before it is closed.
    pub requests: u32,
}

/// Passive health: a node that fails this many times in a row is skipped for `cool_down`, then
/// tried again; `successes` consecutive successes make it healthy, a failure re-ejects it.
/// A count of 0 disables that kind of failure. Without APISIX `checks.passive`, only connect
/// failures and timeouts count (`health.failures`, default 3); with it, APISIX's thresholds apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub http_failures: u32,
    /// Response statuses that count as an HTTP failure.
    pub http_statuses: Vec<u16>,
    pub successes: u32,
    pub cool_down: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConf {
    pub id: String,
    pub name: Option<String>,
    /// Patterns as written: exact, or prefix with a trailing `*`.
    pub uris: Vec<String>,
    /// Lowercase; exact or `*.suffix`. Empty: any host.
    pub hosts: Vec<String>,
    pub methods: MethodSet,
    pub priority: i64,
    /// Index into `Config::upstreams`: the route's own, else its service's.
    pub upstream: usize,
    /// Index into `Config::services` (`service_id`).
    pub service: Option<usize>,
    pub enable_websocket: bool,
    /// shardgate extension: forward client-sent identity headers (`X-Userinfo`, ...) instead of
    /// removing them. Only for upstreams behind another gateway that sets them.
    pub keep_client_identity_headers: bool,
    /// APISIX `status: 1`.
    pub enabled: bool,
    /// `remote_addrs` (or `remote_addr`); empty: any client.
    pub remote_addrs: IpSet,
    /// `vars`, compiled; None: no condition.
    pub vars: Option<Arc<Expr>>,
    /// The effective set: the service's, overridden per plugin by the plugin_config's,
    /// overridden by the route's own (see merge.rs).
    pub plugins: RoutePlugins,
    /// APISIX route `timeout`: when set, used instead of the upstream's (the whole object, as
    /// APISIX's balancer does; a missing member is nginx's 60 s default, as for upstreams).
    pub timeout: Option<UpstreamTimeout>,
}

#[derive(Debug, Clone)]
pub struct ServiceConf {
    pub id: String,
    /// Index into `Config::upstreams`.
    pub upstream: Option<usize>,
    /// Lowercase; used by routes that set no hosts.
    pub hosts: Vec<String>,
    pub enable_websocket: Option<bool>,
    pub plugins: RoutePlugins,
}

#[derive(Debug, Clone)]
pub struct GlobalRuleConf {
    pub id: String,
    pub plugins: RoutePlugins,
}

/// What `validate` and a failed start print: a line naming the file and the count, then the
/// problems one per line, each starting with its path (`routes[0].uri: ...`).
pub fn report(file: &Path, problems: &str) -> String {
    let n = problems.lines().filter(|l| !l.trim().is_empty()).count();
    format!(
        "{}: {n} problem{} in the config:\n{problems}",
        file.display(),
        if n == 1 { "" } else { "s" }
    )
}

/// A hint for serde's "unknown field `x`, expected one of `a`, `b`" when one of the expected
/// names is a near miss (a typo), e.g. `listn` -> `listen`.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split("expected one of ")
        .nth(1)
        .or(rest.split("expected ").nth(1))?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|cand| (edit_distance(field, cand), cand))
        .min()?;
    (best.0 <= 2 && best.0 < field.len()).then(|| format!("did you mean `{}`?", best.1))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Load and validate a file. Relative TLS paths are resolved against its directory.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(path.display().to_string(), format!("cannot read: {e}")))?;
    load(&text, &|name| std::env::var(name).ok(), path.parent())
}

/// Load and validate YAML text, expanding `${VAR}` from the process environment.
pub fn load_str(text: &str) -> Result<Loaded, ConfigError> {
    load(text, &|name| std::env::var(name).ok(), None)
}

/// Load and validate YAML text with an injected environment.
pub fn load_str_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    load(text, env, None)
}

fn load(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: Option<&Path>,
) -> Result<Loaded, ConfigError> {
    let text = env::interpolate(text, env).map_err(|problems| ConfigError { problems })?;
    let mut file = parse(&text, env)?;
    etcd::check_file_has_no_objects(&file)?;
    let (unresolved, resolved) = resolve_secret_refs(&mut file, env);
    match build::build(file, base_dir) {
        Ok(mut loaded) if unresolved.is_empty() => {
            resolved.scrub(&mut loaded.warnings);
            Ok(loaded)
        }
        Ok(_) => Err(ConfigError {
            problems: unresolved,
        }),
        Err(mut e) => {
            // The unresolved reference itself is the problem at its path, not what it fails.
            e.problems
                .retain(|p| !unresolved.iter().any(|u| u.path == p.path));
            resolved.scrub(&mut e.problems);
            e.problems.splice(0..0, unresolved);
            Err(e)
        }
    }
}

/// Resolves `$ENV://` references in every plugin's attributes (see `secret_ref.rs`): the
/// problems of the references that did not resolve, and the ones that did, to scrub later
/// problems with.
fn resolve_secret_refs(
    file: &mut file::FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<Problem>, secret_ref::Resolved) {
    let mut problems = Vec::new();
    let mut resolved = secret_ref::Resolved::default();
    let mut sets: Vec<(String, &mut file::PluginsFile)> = Vec::new();
    for (i, route) in file.routes.iter_mut().enumerate() {
        sets.push((format!("routes[{i}]"), &mut route.plugins));
    }
    for (i, service) in file.services.iter_mut().enumerate() {
        sets.push((format!("services[{i}]"), &mut service.plugins));
    }
    for (i, pc) in file.plugin_configs.iter_mut().enumerate() {
        if let Some(plugins) = pc.plugins.as_mut() {
            sets.push((format!("plugin_configs[{i}]"), plugins));
        }
    }
    for (i, rule) in file.global_rules.iter_mut().enumerate() {
        if let Some(plugins) = rule.plugins.as_mut() {
            sets.push((format!("global_rules[{i}]"), plugins));
        }
    }
    for (at, plugins) in sets {
        for (name, value) in plugins.0.iter_mut() {
            let path = format!("{at}.plugins.{name}");
            secret_ref::resolve(value, &path, env, &mut problems, &mut resolved);
        }
    }
    (problems, resolved)
}

fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<file::FileConfig, ConfigError> {
    // An empty document (or only comments, like APISIX's `#END`) is an empty config.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(file::FileConfig::default());
    }
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let first = path_problem("", e);
        // serde stops at the first type error: look at each route and upstream on its own so
        // one bad entry does not hide the problems of the others. The first error keeps the
        // whole-document parser's wording (with its line); the others are from other entries.
        let entry = top_entry(&first.path).to_owned();
        let mut problems = vec![first];
        problems.extend(
            parse_each(text, env)
                .into_iter()
                .filter(|p| top_entry(&p.path) != entry),
        );
        ConfigError { problems }
    })
}

/// The file entry a path is in: `routes[3]`, `upstreams[0]`, `gateway`.
fn top_entry(path: &str) -> &str {
    let end = path
        .find(']')
        .map(|i| i + 1)
        .filter(|&i| !path[..i].contains('.'))
        .or_else(|| path.find('.'))
        .unwrap_or(path.len());
    &path[..end]
}

/// A serde error as a problem at `prefix` + its path.
fn path_problem(prefix: &str, e: serde_path_to_error::Error<yaml_serde::Error>) -> Problem {
    let inner = e.path().to_string();
    let path = match (prefix.is_empty(), inner == ".") {
        (_, true) => prefix.to_owned(),
        (true, false) => inner.clone(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    };
    let message = e.into_inner().to_string();
    // The YAML deserializer prefixes some messages with the path, or with the parent's path.
    let parent = inner.rsplit_once('.').map_or("", |(p, _)| p);
    let message = [inner.as_str(), parent]
        .iter()
        .filter(|p| !p.is_empty() && **p != ".")
        .find_map(|p| message.strip_prefix(p).and_then(|m| m.strip_prefix(": ")))
        .map_or(message.clone(), str::to_owned);
    let message = match did_you_mean(&message) {
        Some(hint) => format!("{message} ({hint})"),
        None => message,
    };
    Problem::new(path, message)
}

/// Every type error in the file, each route and upstream deserialized on its own (and each
/// route's plugins checked by the registry). Empty when the text is not even a YAML mapping.
fn parse_each(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let Ok(mut doc) = yaml_serde::from_str::<yaml_serde::Value>(text) else {
        return Vec::new();
    };
    if doc.apply_merge().is_err() {
        return Vec::new();
    }
    let Some(top) = doc.as_mapping_mut() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for section in ["upstreams", "routes"] {
        let Some(value) = top.remove(section) else {
            continue;
        };
        let Some(items) = value.as_sequence() else {
            let one = yaml_serde::Mapping::from_iter([(section.into(), value)]);
            if let Err(e) = serde_path_to_error::deserialize::<_, file::FileConfig>(
                yaml_serde::Value::Mapping(one),
            ) {
                problems.push(path_problem("", e));
            }
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{section}[{i}]");
            if section == "upstreams" {
                if let Err(e) = serde_path_to_error::deserialize::<_, file::UpstreamFile>(item) {
                    problems.push(path_problem(&at, e));
                }
                continue;
            }
            match serde_path_to_error::deserialize::<_, file::RouteFile>(item) {
                Err(e) => problems.push(path_problem(&at, e)),
                Ok(route) => {
                    let mut entries = route.plugins.0;
                    let mut unresolved = Vec::new();
                    let mut resolved = secret_ref::Resolved::default();
                    for (name, value) in entries.iter_mut() {
                        let path = format!("{at}.plugins.{name}");
                        secret_ref::resolve(value, &path, env, &mut unresolved, &mut resolved);
                    }
                    let (_, mut errors, _) = crate::pipeline::registry::parse_plugins(
                        &entries,
                        &format!("{at}.plugins"),
                    );
                    errors.retain(|p| !unresolved.iter().any(|u| u.path == p.path));
                    resolved.scrub(&mut errors);
                    problems.extend(unresolved);
                    problems.extend(errors);
                }
            }
        }
    }
    if let Err(e) = serde_path_to_error::deserialize::<_, file::FileConfig>(doc) {
        problems.push(path_problem("", e));
    }
    problems
}

#[cfg(test)]
mod tests;
