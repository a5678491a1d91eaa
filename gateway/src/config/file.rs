//! The YAML shape, field for field: APISIX standalone (`routes`, `upstreams`) plus `gateway`.
//!
//! Only shapes and types are checked here. APISIX attributes shardgate does not implement are
//! parsed as `Option<IgnoredAny>` so `build.rs` can name them in an "unsupported" error, which a
//! user can tell apart from the unknown-field error a typo gets.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub gateway: GatewayFile,
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    #[serde(default)]
    pub plugin_configs: Vec<PluginConfigFile>,
    #[serde(default)]
    pub global_rules: Vec<GlobalRuleFile>,
    // APISIX standalone sections shardgate does not implement.
    #[serde(default)]
    pub consumers: Option<IgnoredAny>,
    #[serde(default)]
    pub consumer_groups: Option<IgnoredAny>,
    #[serde(default)]
    pub ssls: Option<IgnoredAny>,
    #[serde(default)]
    pub plugin_metadata: Option<IgnoredAny>,
    #[serde(default)]
    pub stream_routes: Option<IgnoredAny>,
    #[serde(default)]
    pub protos: Option<IgnoredAny>,
    #[serde(default)]
    pub secrets: Option<IgnoredAny>,
}

impl FileConfig {
    pub fn unsupported(&self) -> [(&'static str, bool); 7] {
        [
            ("consumers", self.consumers.is_some()),
            ("consumer_groups", self.consumer_groups.is_some()),
            ("ssls", self.ssls.is_some()),
            ("plugin_metadata", self.plugin_metadata.is_some()),
            ("stream_routes", self.stream_routes.is_some()),
            ("protos", self.protos.is_some()),
            ("secrets", self.secrets.is_some()),
        ]
    }
}

// Defaults, one per attribute, named after it.
pub(crate) const LISTEN: &str = "0.0.0.0:9080";
pub(crate) const TLS_LISTEN: &str = "0.0.0.0:9443";
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;
pub(crate) const MAX_HEADERS: usize = 100;
pub(crate) const HEADER_TIMEOUT: f64 = 10.0;
pub(crate) const IDLE_TIMEOUT: f64 = 60.0;
pub(crate) const MAX_CONNECTIONS: usize = 20_000;
pub(crate) const MAX_BODY_BUFFER: usize = 64 * 1024;
/// nginx's `client_body_timeout`.
pub(crate) const CLIENT_BODY_TIMEOUT: f64 = 60.0;
pub(crate) const CLIENT_BODY_MIN_RATE: u64 = 1024;
pub(crate) const SHUTDOWN_TIMEOUT: f64 = 30.0;
/// APISIX leaves upstream timeouts to nginx's `proxy_*_timeout`, 60 s each.
pub(crate) const UPSTREAM_TIMEOUT: f64 = 60.0;
pub(crate) const KEEPALIVE_POOL_SIZE: usize = 320;
pub(crate) const KEEPALIVE_POOL_IDLE_TIMEOUT: f64 = 60.0;
pub(crate) const KEEPALIVE_POOL_REQUESTS: u32 = 1000;
/// shardgate passive health: consecutive failures before a node is skipped...
pub(crate) const HEALTH_FAILURES: u32 = 3;
/// ...and for how long.
pub(crate) const HEALTH_COOL_DOWN: f64 = 10.0;
// APISIX `checks.passive` defaults.
pub(crate) const PASSIVE_HEALTHY_SUCCESSES: u32 = 5;
pub(crate) const PASSIVE_UNHEALTHY_HTTP_FAILURES: u32 = 5;
pub(crate) const PASSIVE_UNHEALTHY_TCP_FAILURES: u32 = 2;
pub(crate) const PASSIVE_UNHEALTHY_TIMEOUTS: u32 = 7;
pub(crate) const PASSIVE_UNHEALTHY_HTTP_STATUSES: [u16; 3] = [429, 500, 503];
pub(crate) const ROUTE_STATUS: u8 = 1;

fn listen() -> Vec<String> {
    vec![LISTEN.to_owned()]
}
fn tls_listen() -> Vec<String> {
    vec![TLS_LISTEN.to_owned()]
}
fn max_header_bytes() -> usize {
    MAX_HEADER_BYTES
}
fn max_headers() -> usize {
    MAX_HEADERS
}
fn header_timeout() -> f64 {
    HEADER_TIMEOUT
}
fn idle_timeout() -> f64 {
    IDLE_TIMEOUT
}
fn max_connections() -> usize {
    MAX_CONNECTIONS
}
fn client_body_timeout() -> f64 {
    CLIENT_BODY_TIMEOUT
}
fn client_body_min_rate() -> u64 {
    CLIENT_BODY_MIN_RATE
}
fn max_body_buffer() -> usize {
    MAX_BODY_BUFFER
}
fn shutdown_timeout() -> f64 {
    SHUTDOWN_TIMEOUT
}
fn upstream_timeout() -> f64 {
    UPSTREAM_TIMEOUT
}
fn keepalive_pool_size() -> usize {
    KEEPALIVE_POOL_SIZE
}
fn keepalive_pool_idle_timeout() -> f64 {
    KEEPALIVE_POOL_IDLE_TIMEOUT
}
fn keepalive_pool_requests() -> u32 {
    KEEPALIVE_POOL_REQUESTS
}
fn health_failures() -> u32 {
    HEALTH_FAILURES
}
fn health_cool_down() -> f64 {
    HEALTH_COOL_DOWN
}
fn passive_healthy_successes() -> u32 {
    PASSIVE_HEALTHY_SUCCESSES
}
fn passive_unhealthy_http_failures() -> u32 {
    PASSIVE_UNHEALTHY_HTTP_FAILURES
}
fn passive_unhealthy_tcp_failures() -> u32 {
    PASSIVE_UNHEALTHY_TCP_FAILURES
}
fn passive_unhealthy_timeouts() -> u32 {
    PASSIVE_UNHEALTHY_TIMEOUTS
}
fn passive_unhealthy_http_statuses() -> Vec<u16> {
    PASSIVE_UNHEALTHY_HTTP_STATUSES.to_vec()
}
fn route_status() -> u8 {
    ROUTE_STATUS
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayFile {
    #[serde(default = "listen")]
    pub listen: Vec<String>,
    pub tls: Option<TlsFile>,
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub shards: ShardsFile,
    #[serde(default)]
    pub driver: DriverFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default = "shutdown_timeout")]
    pub shutdown_timeout: f64,
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Where routes, upstreams, services, plugin_configs and global_rules come from.
    #[serde(default)]
    pub config_provider: ProviderFile,
    /// APISIX's `deployment.etcd`, for `config_provider: etcd`.
    pub etcd: Option<EtcdFile>,
    /// APISIX's `apisix.trusted_addresses`: the proxies whose `X-Forwarded-*` and `Forwarded`
    /// headers are believed.
    pub trusted_addresses: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProviderFile {
    #[default]
    File,
    Etcd,
}

pub(crate) const ETCD_HOST: &str = "http://127.0.0.1:2379";
pub(crate) const ETCD_PREFIX: &str = "/apisix";
/// APISIX's `deployment.etcd.timeout` default, seconds.
pub(crate) const ETCD_TIMEOUT: f64 = 30.0;

fn etcd_host() -> Vec<String> {
    vec![ETCD_HOST.to_owned()]
}
fn etcd_prefix() -> String {
    ETCD_PREFIX.to_owned()
}
fn etcd_timeout() -> f64 {
    ETCD_TIMEOUT
}

/// APISIX `deployment.etcd`, same names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdFile {
    #[serde(default = "etcd_host")]
    pub host: Vec<String>,
    #[serde(default = "etcd_prefix")]
    pub prefix: String,
    #[serde(default = "etcd_timeout")]
    pub timeout: f64,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Parsed to be named in an "unsupported" error: etcd over TLS is not implemented yet.
    #[serde(default)]
    pub tls: Option<IgnoredAny>,
}

impl Default for GatewayFile {
    fn default() -> Self {
        GatewayFile {
            listen: listen(),
            tls: None,
            admin: None,
            shards: ShardsFile::Auto,
            driver: DriverFile::Auto,
            limits: LimitsFile::default(),
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            access_log: true,
            config_provider: ProviderFile::File,
            etcd: None,
            trusted_addresses: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    #[serde(default = "tls_listen")]
    pub listen: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub listen: String,
    /// APISIX's `deployment.admin.admin_key`: the Admin API is served when it is set.
    #[serde(default)]
    pub admin_key: Vec<AdminKeyFile>,
}

/// One Admin API key (APISIX's names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminKeyFile {
    pub name: String,
    /// The secret, or `$ENV://NAME`.
    pub key: String,
    pub role: AdminRoleFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdminRoleFile {
    Admin,
    Viewer,
}

/// `shards: auto` or a count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardsFile {
    #[default]
    Auto,
    Count(u64),
}

impl<'de> Deserialize<'de> for ShardsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ShardsFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or an integer >= 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ShardsFile, E> {
                if v == 0 {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
                }
                Ok(ShardsFile::Count(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ShardsFile, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ShardsFile, E> {
                match v {
                    "auto" => Ok(ShardsFile::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DriverFile {
    #[default]
    Auto,
    Uring,
    Epoll,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    #[serde(default = "max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "max_headers")]
    pub max_headers: usize,
    #[serde(default = "header_timeout")]
    pub header_timeout: f64,
    #[serde(default = "idle_timeout")]
    pub idle_timeout: f64,
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    #[serde(default = "max_body_buffer")]
    pub max_body_buffer: usize,
    /// APISIX's `client_max_body_size` (bytes; 0 = unlimited).
    #[serde(default)]
    pub client_max_body_size: u64,
    #[serde(default = "client_body_timeout")]
    pub client_body_timeout: f64,
    #[serde(default = "client_body_min_rate")]
    pub client_body_min_rate: u64,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_body_buffer: MAX_BODY_BUFFER,
            client_max_body_size: 0,
            client_body_timeout: CLIENT_BODY_TIMEOUT,
            client_body_min_rate: CLIENT_BODY_MIN_RATE,
        }
    }
}

/// APISIX ids may be strings or integers; we keep them as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    pub id: Option<Id>,
    #[serde(rename = "type", default)]
    pub kind: UpstreamType,
    pub hash_on: Option<String>,
    pub key: Option<String>,
    pub nodes: Option<NodesFile>,
    #[serde(default)]
    pub scheme: SchemeFile,
    #[serde(default)]
    pub pass_host: PassHostFile,
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub timeout: UpstreamTimeoutFile,
    #[serde(default)]
    pub keepalive_pool: KeepalivePoolFile,
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_timeout: f64,
    pub checks: Option<ChecksFile>,
    /// shardgate's own passive health settings.
    #[serde(default)]
    pub health: HealthFile,
    // Metadata: accepted, no behaviour.
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default, rename = "desc")]
    _desc: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(default, rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    pub tls: Option<UpstreamTlsFile>,
    // APISIX attributes shardgate does not implement.
    #[serde(default)]
    pub discovery_type: Option<IgnoredAny>,
    #[serde(default)]
    pub discovery_args: Option<IgnoredAny>,
    #[serde(default)]
    pub service_name: Option<IgnoredAny>,
}

impl UpstreamFile {
    pub fn unsupported(&self) -> [(&'static str, bool); 3] {
        [
            ("discovery_type", self.discovery_type.is_some()),
            ("discovery_args", self.discovery_args.is_some()),
            ("service_name", self.service_name.is_some()),
        ]
    }
}

/// APISIX upstream `tls`, plus shardgate's `ca_cert`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsFile {
    /// PEM text (as APISIX stores it) or a file path.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    #[serde(default)]
    pub client_cert_id: Option<IgnoredAny>,
    /// APISIX's default is false (no verification); shardgate verifies unless told not to.
    pub verify: Option<bool>,
    /// shardgate extension: trust these CA certificates (PEM text or a file) instead of the
    /// system roots.
    pub ca_cert: Option<String>,
}

/// The balancer. APISIX's other types are parsed to be named in an "unsupported" error.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UpstreamType {
    #[default]
    Roundrobin,
    Chash,
    Ewma,
    LeastConn,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SchemeFile {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
    Tcp,
    Tls,
    Udp,
    Kafka,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PassHostFile {
    #[default]
    Pass,
    Node,
    Rewrite,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTimeoutFile {
    #[serde(default = "upstream_timeout")]
    pub connect: f64,
    #[serde(default = "upstream_timeout")]
    pub send: f64,
    #[serde(default = "upstream_timeout")]
    pub read: f64,
}

impl Default for UpstreamTimeoutFile {
    fn default() -> Self {
        UpstreamTimeoutFile {
            connect: UPSTREAM_TIMEOUT,
            send: UPSTREAM_TIMEOUT,
            read: UPSTREAM_TIMEOUT,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepalivePoolFile {
    #[serde(default = "keepalive_pool_size")]
    pub size: usize,
    #[serde(default = "keepalive_pool_idle_timeout")]
    pub idle_timeout: f64,
    #[serde(default = "keepalive_pool_requests")]
    pub requests: u32,
}

impl Default for KeepalivePoolFile {
    fn default() -> Self {
        KeepalivePoolFile {
            size: KEEPALIVE_POOL_SIZE,
            idle_timeout: KEEPALIVE_POOL_IDLE_TIMEOUT,
            requests: KEEPALIVE_POOL_REQUESTS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    #[serde(default = "health_failures")]
    pub failures: u32,
    #[serde(default = "health_cool_down")]
    pub cool_down: f64,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            failures: HEALTH_FAILURES,
            cool_down: HEALTH_COOL_DOWN,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChecksFile {
    pub active: Option<ActiveFile>,
    pub passive: Option<PassiveFile>,
}

/// APISIX `checks.active` (lua-resty-healthcheck), with APISIX's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActiveFile {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default = "active_timeout")]
    pub timeout: f64,
    #[serde(default = "active_concurrency")]
    pub concurrency: usize,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(default = "active_http_path")]
    pub http_path: String,
    #[serde(default = "yes")]
    pub https_verify_certificate: bool,
    #[serde(default)]
    pub req_headers: Vec<String>,
    #[serde(default)]
    pub healthy: ActiveHealthyFile,
    #[serde(default)]
    pub unhealthy: ActiveUnhealthyFile,
    // APISIX attributes shardgate does not implement.
    #[serde(default)]
    pub http_method: Option<IgnoredAny>,
    #[serde(default)]
    pub http_req_body: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActiveHealthyFile {
    #[serde(default = "active_interval")]
    pub interval: f64,
    #[serde(default = "active_healthy_http_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "active_healthy_successes")]
    pub successes: u32,
}

impl Default for ActiveHealthyFile {
    fn default() -> Self {
        ActiveHealthyFile {
            interval: active_interval(),
            http_statuses: active_healthy_http_statuses(),
            successes: active_healthy_successes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActiveUnhealthyFile {
    #[serde(default = "active_interval")]
    pub interval: f64,
    #[serde(default = "active_unhealthy_http_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "active_unhealthy_http_failures")]
    pub http_failures: u32,
    #[serde(default = "active_unhealthy_tcp_failures")]
    pub tcp_failures: u32,
    #[serde(default = "active_unhealthy_timeouts")]
    pub timeouts: u32,
}

impl Default for ActiveUnhealthyFile {
    fn default() -> Self {
        ActiveUnhealthyFile {
            interval: active_interval(),
            http_statuses: active_unhealthy_http_statuses(),
            http_failures: active_unhealthy_http_failures(),
            tcp_failures: active_unhealthy_tcp_failures(),
            timeouts: active_unhealthy_timeouts(),
        }
    }
}

fn active_timeout() -> f64 {
    1.0
}
fn active_concurrency() -> usize {
    10
}
fn active_http_path() -> String {
    "/".to_owned()
}
fn active_interval() -> f64 {
    1.0
}
fn active_healthy_http_statuses() -> Vec<u16> {
    vec![200, 302]
}
fn active_healthy_successes() -> u32 {
    2
}
fn active_unhealthy_http_statuses() -> Vec<u16> {
    vec![429, 404, 500, 501, 502, 503, 504, 505]
}
fn active_unhealthy_http_failures() -> u32 {
    5
}
fn active_unhealthy_tcp_failures() -> u32 {
    2
}
fn active_unhealthy_timeouts() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveFile {
    /// APISIX: `http` (default), `https` or `tcp`; only decides which failures count.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub healthy: PassiveHealthyFile,
    #[serde(default)]
    pub unhealthy: PassiveUnhealthyFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveHealthyFile {
    #[serde(default)]
    pub http_statuses: Option<IgnoredAny>,
    #[serde(default = "passive_healthy_successes")]
    pub successes: u32,
}

impl Default for PassiveHealthyFile {
    fn default() -> Self {
        PassiveHealthyFile {
            http_statuses: None,
            successes: PASSIVE_HEALTHY_SUCCESSES,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveUnhealthyFile {
    #[serde(default = "passive_unhealthy_http_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "passive_unhealthy_http_failures")]
    pub http_failures: u32,
    #[serde(default = "passive_unhealthy_tcp_failures")]
    pub tcp_failures: u32,
    #[serde(default = "passive_unhealthy_timeouts")]
    pub timeouts: u32,
}

impl Default for PassiveUnhealthyFile {
    fn default() -> Self {
        PassiveUnhealthyFile {
            http_statuses: passive_unhealthy_http_statuses(),
            http_failures: PASSIVE_UNHEALTHY_HTTP_FAILURES,
            tcp_failures: PASSIVE_UNHEALTHY_TCP_FAILURES,
            timeouts: PASSIVE_UNHEALTHY_TIMEOUTS,
        }
    }
}

/// `nodes`: APISIX accepts a map `"host:port": weight` or a list of `{host, port, weight}`.
#[derive(Debug)]
pub(crate) struct NodesFile(pub Vec<NodeFile>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeFile {
    pub host: String,
    pub port: Option<u16>,
    pub weight: u32,
    /// APISIX: nodes of a lower priority are used only when every higher one is unavailable.
    #[serde(default)]
    pub priority: i32,
    /// Accepted, no behaviour.
    #[serde(default, rename = "metadata")]
    _metadata: Option<IgnoredAny>,
}

impl<'de> Deserialize<'de> for NodesFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodesFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of \"host:port\": weight, or a list of {host, port, weight}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodesFile, A::Error> {
                let mut nodes = Vec::new();
                // The port stays inside `host` here; build.rs splits and checks it.
                while let Some((host, weight)) = map.next_entry::<String, u32>()? {
                    nodes.push(NodeFile {
                        host,
                        port: None,
                        weight,
                        priority: 0,
                        _metadata: None,
                    });
                }
                Ok(NodesFile(nodes))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodesFile, A::Error> {
                let mut nodes = Vec::new();
                while let Some(node) = seq.next_element::<NodeFile>()? {
                    nodes.push(node);
                }
                Ok(NodesFile(nodes))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub id: Option<Id>,
    pub name: Option<String>,
    #[serde(default, rename = "desc")]
    _desc: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: Option<BTreeMap<String, String>>,
    pub uri: Option<String>,
    pub uris: Option<Vec<String>>,
    pub host: Option<String>,
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub priority: i64,
    pub upstream_id: Option<Id>,
    pub upstream: Option<UpstreamFile>,
    /// None: the service's, else off.
    pub enable_websocket: Option<bool>,
    /// shardgate extension (not an APISIX attribute).
    #[serde(default)]
    pub keep_client_identity_headers: bool,
    #[serde(default = "route_status")]
    pub status: u8,
    #[serde(default)]
    pub plugins: PluginsFile,
    pub service_id: Option<Id>,
    pub plugin_config_id: Option<Id>,
    #[serde(default, rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(default, rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    /// lua-resty-expr rules; compiled in build.rs.
    #[serde(default)]
    pub vars: Option<serde_json::Value>,
    pub remote_addr: Option<String>,
    pub remote_addrs: Option<Vec<String>>,
    // APISIX attributes shardgate does not implement.
    #[serde(default)]
    pub filter_func: Option<IgnoredAny>,
    #[serde(default)]
    pub script: Option<IgnoredAny>,
    #[serde(default)]
    pub script_id: Option<IgnoredAny>,
    /// APISIX: replaces the upstream's `timeout` for this route's requests.
    pub timeout: Option<UpstreamTimeoutFile>,
}

impl RouteFile {
    /// Lua code APISIX runs: shardgate has no Lua.
    pub fn lua(&self) -> [(&'static str, bool); 3] {
        [
            ("filter_func", self.filter_func.is_some()),
            ("script", self.script.is_some()),
            ("script_id", self.script_id.is_some()),
        ]
    }
}

/// APISIX `services`: what routes referring to it by `service_id` share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceFile {
    pub id: Option<Id>,
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default, rename = "desc")]
    _desc: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(default, rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    #[serde(default)]
    pub plugins: PluginsFile,
    pub upstream: Option<UpstreamFile>,
    pub upstream_id: Option<Id>,
    pub enable_websocket: Option<bool>,
    pub hosts: Option<Vec<String>>,
    /// Lua code APISIX runs.
    #[serde(default)]
    pub script: Option<IgnoredAny>,
}

/// APISIX `plugin_configs`: a plugin set routes refer to by `plugin_config_id`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PluginConfigFile {
    pub id: Option<Id>,
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default, rename = "desc")]
    _desc: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(default, rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    /// Required, as APISIX.
    pub plugins: Option<PluginsFile>,
}

/// APISIX `global_rules`: plugins that run for every request, before the route's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GlobalRuleFile {
    pub id: Option<Id>,
    #[serde(default, rename = "create_time")]
    _create_time: Option<IgnoredAny>,
    #[serde(default, rename = "update_time")]
    _update_time: Option<IgnoredAny>,
    /// Required, as APISIX.
    pub plugins: Option<PluginsFile>,
}

/// `plugins`: plugin name -> attributes, in file order. The registry (`pipeline::registry`)
/// validates each against its plugin's schema in build.rs, so every problem names its path.
#[derive(Debug, Default)]
pub(crate) struct PluginsFile(pub Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for PluginsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PluginsFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of plugin name to plugin configuration")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PluginsFile, A::Error> {
                let mut plugins: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if plugins.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format_args!("duplicate plugin `{name}`")));
                    }
                    let value = map.next_value()?;
                    plugins.push((name, value));
                }
                Ok(PluginsFile(plugins))
            }
        }
        d.deserialize_map(V)
    }
}
