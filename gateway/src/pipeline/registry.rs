//! The registry: every plugin the gateway knows, by APISIX name. Nothing outside this file names
//! a plugin: config validation, instance building, shard-local state and phase dispatch all go
//! through the types generated here from the one list at the bottom.
//!
//! Adding a plugin: implement [`Plugin`] in `plugins/<name>/` and add one line to the list.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use shardgate_runtime::gate::Shutdown;

use super::{BodyChunk, Ctx, LogInfo, PhaseResult, Phases, Plugin, Problem, RequestScratch};
use super::{ResponseCtx, Step};
use crate::config::RouteConf;
use crate::error::Error;

type AnyConf = Arc<dyn Any + Send + Sync>;
/// Attributes, path, warnings out -> the parsed attributes or the errors.
type ParseFn = fn(serde_json::Value, &str, &mut Vec<Problem>) -> Result<AnyConf, Vec<Problem>>;

/// One registered plugin, as the config side sees it.
pub struct PluginDef {
    pub name: &'static str,
    pub priority: i32,
    pub phases: Phases,
    parse: ParseFn,
    debug: fn(&(dyn Any + Send + Sync), &mut fmt::Formatter<'_>) -> fmt::Result,
    build: fn(&PluginConf, &PluginGlobals, &str) -> Result<Instance, String>,
    warnings: fn(&[(usize, RouteConf)]) -> Vec<Problem>,
}

/// One plugin's validated attributes at one place in the config (a route, a service, a global
/// rule, a plugin config). Cheap to clone.
#[derive(Clone)]
pub struct PluginConf {
    def: &'static PluginDef,
    conf: AnyConf,
}

impl PluginConf {
    pub fn name(&self) -> &'static str {
        self.def.name
    }

    pub fn priority(&self) -> i32 {
        self.def.priority
    }

    /// The attributes as plugin `P` parsed them; None when this is another plugin's.
    pub fn get<P: Plugin>(&self) -> Option<&P::Conf> {
        self.conf.downcast_ref::<P::Conf>()
    }

    /// Builds the instance shards run, once per config version; errors name `path`.
    pub fn build(&self, globals: &PluginGlobals, path: &str) -> Result<Instance, String> {
        (self.def.build)(self, globals, path)
    }
}

impl fmt::Debug for PluginConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.def.debug)(&*self.conf, f)
    }
}

/// A `plugins:` map (route, service, plugin config or global rule): APISIX name -> attributes.
#[derive(Clone, Default)]
pub struct RoutePlugins {
    map: BTreeMap<&'static str, PluginConf>,
}

impl RoutePlugins {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, name: &str) -> Option<&PluginConf> {
        self.map.get(name)
    }

    /// The attributes of plugin `P`, when this map has it.
    pub fn conf<P: Plugin>(&self) -> Option<&P::Conf> {
        self.map.get(P::NAME).and_then(|c| c.get::<P>())
    }

    /// Sets a plugin's attributes; returns the ones it replaced.
    pub fn insert(&mut self, conf: PluginConf) -> Option<PluginConf> {
        self.map.insert(conf.name(), conf)
    }

    /// By name.
    pub fn iter(&self) -> impl Iterator<Item = &PluginConf> {
        self.map.values()
    }

    /// APISIX's merge: `self`'s plugins over `base`'s, per plugin name (a plugin configured in
    /// both takes `self`'s attributes whole; attributes are not merged field by field).
    pub fn merged_over(&self, base: &RoutePlugins) -> RoutePlugins {
        let mut map = base.map.clone();
        for (k, v) in &self.map {
            map.insert(k, v.clone());
        }
        RoutePlugins { map }
    }

    /// In execution order: priority, highest first (APISIX), then name for a stable order.
    pub fn by_priority(&self) -> Vec<&PluginConf> {
        let mut v: Vec<&PluginConf> = self.map.values().collect();
        v.sort_by(|a, b| b.priority().cmp(&a.priority()).then(a.name().cmp(b.name())));
        v
    }
}

impl fmt::Debug for RoutePlugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

/// The registered plugin named `name`.
pub fn def(name: &str) -> Option<&'static PluginDef> {
    DEFS.iter().find(|d| d.name == name)
}

/// Names of every registered plugin, for error messages (the pipeline's own test plugins, in test
/// and bench builds only, are not advertised).
pub fn names() -> String {
    list().join(", ")
}

/// Every registered plugin's name, as the Admin API's `/plugins/list` gives them (the pipeline's
/// test plugins left out).
pub fn list() -> Vec<&'static str> {
    DEFS.iter()
        .map(|d| d.name)
        .filter(|n| !n.starts_with("test-"))
        .collect()
}

/// Parses a `plugins:` map (`entries` in file order) at `path` (`routes[0].plugins`) into the
/// plugins, the errors and the warnings; every problem names its path, an unknown plugin included.
pub fn parse_plugins(
    entries: &[(String, serde_json::Value)],
    path: &str,
) -> (RoutePlugins, Vec<Problem>, Vec<Problem>) {
    let mut out = RoutePlugins::default();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for (name, value) in entries {
        let at = format!("{path}.{name}");
        let Some(def) = def(name) else {
            problems.push(Problem::new(
                at,
                format!(
                    "plugin `{name}` is not supported by shardgate (supported: {})",
                    names()
                ),
            ));
            continue;
        };
        match (def.parse)(value.clone(), &at, &mut warnings) {
            Ok(conf) => {
                out.insert(PluginConf { def, conf });
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    (out, problems, warnings)
}

/// Every plugin's cross-route warnings over a loaded config.
pub fn warnings(routes: &[(usize, RouteConf)]) -> Vec<Problem> {
    DEFS.iter().flat_map(|d| (d.warnings)(routes)).collect()
}

/// Deserializes a plugin's attributes into `T`, a type error naming its full path.
pub fn deserialize<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    path: &str,
) -> Result<T, Vec<Problem>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." || inner.is_empty() {
            path.to_owned()
        } else {
            format!("{path}.{inner}")
        };
        vec![Problem::new(at, e.into_inner().to_string())]
    })
}

/// A route's plugins on one shard, in execution order: the global rules' first, then the route's
/// (each part sorted by priority), with the union of their phases.
#[derive(Default)]
pub struct Chain {
    pub plugins: Vec<ShardPlugin>,
    /// How many of `plugins` come from global rules.
    pub global: usize,
    pub phases: Phases,
}

impl Chain {
    pub fn new(plugins: Vec<ShardPlugin>, global: usize) -> Chain {
        let phases = plugins
            .iter()
            .fold(Phases::NONE, |acc, p| acc.with(p.phases()));
        Chain {
            plugins,
            global,
            phases,
        }
    }

    /// `rewrite`, `access` and `before_proxy` in APISIX's order: the global rules' rewrite and
    /// access, then the route's rewrite and access, then everyone's before_proxy. Stops at the
    /// first plugin that answers or fails.
    pub async fn request_phases(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let (global, route) = self.plugins.split_at(self.global.min(self.plugins.len()));
        for part in [global, route] {
            if self.phases.has(Phases::REWRITE) {
                for p in part {
                    if let Step::Respond(r) = p.rewrite(ctx).await? {
                        return Ok(Step::Respond(r));
                    }
                }
            }
            if self.phases.has(Phases::ACCESS) {
                for p in part {
                    if let Step::Respond(r) = p.access(ctx).await? {
                        return Ok(Step::Respond(r));
                    }
                }
            }
        }
        if self.phases.has(Phases::BEFORE_PROXY) {
            for p in &self.plugins {
                if let Step::Respond(r) = p.before_proxy(ctx).await? {
                    return Ok(Step::Respond(r));
                }
            }
        }
        Ok(Step::Continue)
    }

    pub fn header_filter(&self, resp: &mut ResponseCtx<'_>) -> Result<(), Error> {
        if self.phases.has(Phases::HEADER_FILTER) {
            for p in &self.plugins {
                p.header_filter(resp)?;
            }
        }
        Ok(())
    }

    pub fn has_body_filter(&self) -> bool {
        self.phases.has(Phases::BODY_FILTER)
    }

    pub fn body_filter(&self, chunk: &mut BodyChunk<'_>, scratch: &mut RequestScratch) {
        if self.phases.has(Phases::BODY_FILTER) {
            for p in &self.plugins {
                p.body_filter(chunk, scratch);
            }
        }
    }

    pub fn log(&self, info: &LogInfo<'_>) {
        if self.phases.has(Phases::LOG) {
            for p in &self.plugins {
                p.log(info);
            }
        }
    }
}

/// Generates, from the list of plugin types, the type-erased defs (config side), the process and
/// shard state holders, the instance and shard-local enums, and static phase dispatch (no boxing,
/// no allocation per call; a phase a plugin does not declare is skipped at compile time).
macro_rules! registry {
    ($( $field:ident : $ty:ty ),* $(,)?) => {
        static DEFS: &[PluginDef] = &[$(
            PluginDef {
                name: <$ty as Plugin>::NAME,
                priority: <$ty as Plugin>::PRIORITY,
                phases: <$ty as Plugin>::PHASES,
                parse: |value, path, warnings| {
                    <$ty as Plugin>::parse(value, path, warnings).map(|c| Arc::new(c) as AnyConf)
                },
                debug: |conf, f| match conf.downcast_ref::<<$ty as Plugin>::Conf>() {
                    Some(c) => fmt::Debug::fmt(c, f),
                    None => f.write_str("?"),
                },
                build: |conf, globals, path| {
                    let c = conf
                        .conf
                        .clone()
                        .downcast::<<$ty as Plugin>::Conf>()
                        .map_err(|_| format!("{path}: attributes of another plugin"))?;
                    <$ty as Plugin>::build(c, &globals.$field, path)
                        .map(|i| Instance::$field(Arc::new(i)))
                },
                warnings: <$ty as Plugin>::warnings,
            },
        )*];

        /// Process-wide state of every plugin (created once, shared by the control side and
        /// config loads).
        #[allow(non_snake_case)]
        pub struct PluginGlobals {
            $( $field: Arc<<$ty as Plugin>::Global>, )*
        }

        impl PluginGlobals {
            pub fn new() -> Arc<PluginGlobals> {
                Arc::new(PluginGlobals {
                    $( $field: <$ty as Plugin>::global(), )*
                })
            }

            /// Starts the plugins' control-side tasks; call on the control thread's runtime.
            pub fn start(&self, shutdown: &Shutdown) {
                $( <$ty as Plugin>::start(&self.$field, shutdown); )*
            }

            /// `/readyz`: ready when every plugin is, with `"key": value` JSON members.
            pub fn readiness(&self) -> (bool, String) {
                let mut ok = true;
                let mut parts = Vec::new();
                $(
                    if let Some((ready, key, value)) = <$ty as Plugin>::readiness(&self.$field) {
                        ok &= ready;
                        parts.push(format!("\"{key}\":{value}"));
                    }
                )*
                (ok, parts.join(","))
            }

            /// Tells every plugin which of its instances `published` (the config being served)
            /// uses; call after every publish and every rejected build.
            pub fn retain_used_by(&self, published: &crate::published::Published) {
                $(
                    let global = published.global_plugins.iter().map(|i| ("global_rules", i));
                    let routes = published
                        .routes
                        .iter()
                        .flat_map(|r| r.plugins.iter().map(move |i| (r.id.as_str(), i)));
                    let used: Vec<(&str, &<$ty as Plugin>::Instance)> = global
                        .chain(routes)
                        .filter_map(|(owner, i)| match i {
                            Instance::$field(x) => Some((owner, &**x)),
                            #[allow(unreachable_patterns)]
                            _ => None,
                        })
                        .collect();
                    <$ty as Plugin>::retain_used(&self.$field, &used);
                )*
            }

            /// Plugin counters for `/metrics`.
            pub fn counters(&self, out: &mut BTreeMap<String, u64>) {
                $( <$ty as Plugin>::counters(&self.$field, out); )*
            }
        }

        /// Per-shard state of every plugin.
        #[allow(non_snake_case)]
        pub struct ShardPlugins {
            $( $field: <$ty as Plugin>::ShardGlobal, )*
        }

        impl ShardPlugins {
            pub fn new(shard: usize, globals: &Arc<PluginGlobals>) -> ShardPlugins {
                ShardPlugins {
                    $( $field: <$ty as Plugin>::shard_global(shard, &globals.$field), )*
                }
            }
        }

        /// A plugin instance built for one config version, shared by every shard.
        #[derive(Clone)]
        #[allow(non_camel_case_types)]
        pub enum Instance {
            $( $field(Arc<<$ty as Plugin>::Instance>), )*
        }

        impl Instance {
            pub fn name(&self) -> &'static str {
                match self { $( Instance::$field(_) => <$ty as Plugin>::NAME, )* }
            }

            /// Equal across config versions when shard-local state may be kept.
            pub fn fingerprint(&self) -> u64 {
                match self { $( Instance::$field(i) => <$ty as Plugin>::fingerprint(i), )* }
            }

            /// The shard-local part of this instance.
            pub fn attach(&self, shard: &ShardPlugins) -> ShardPlugin {
                match self {
                    $( Instance::$field(i) => ShardPlugin::$field(Rc::new(
                        <$ty as Plugin>::attach(i.clone(), &shard.$field),
                    )), )*
                }
            }
        }

        /// An instance's shard-local part: what the pipeline runs.
        #[derive(Clone)]
        #[allow(non_camel_case_types)]
        pub enum ShardPlugin {
            $( $field(Rc<$ty>), )*
        }

        impl ShardPlugin {
            pub fn name(&self) -> &'static str {
                match self { $( ShardPlugin::$field(_) => <$ty as Plugin>::NAME, )* }
            }

            pub fn phases(&self) -> Phases {
                match self { $( ShardPlugin::$field(_) => <$ty as Plugin>::PHASES, )* }
            }

            pub async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
                match self {
                    $( ShardPlugin::$field(p) if <$ty as Plugin>::PHASES.has(Phases::REWRITE) => {
                        p.rewrite(ctx).await
                    } )*
                    #[allow(unreachable_patterns)]
                    _ => Ok(Step::Continue),
                }
            }

            pub async fn access(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
                match self {
                    $( ShardPlugin::$field(p) if <$ty as Plugin>::PHASES.has(Phases::ACCESS) => {
                        p.access(ctx).await
                    } )*
                    #[allow(unreachable_patterns)]
                    _ => Ok(Step::Continue),
                }
            }

            pub async fn before_proxy(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
                match self {
                    $( ShardPlugin::$field(p) if <$ty as Plugin>::PHASES.has(Phases::BEFORE_PROXY) => {
                        p.before_proxy(ctx).await
                    } )*
                    #[allow(unreachable_patterns)]
                    _ => Ok(Step::Continue),
                }
            }

            pub fn header_filter(&self, resp: &mut ResponseCtx<'_>) -> Result<(), Error> {
                match self {
                    $( ShardPlugin::$field(p) if <$ty as Plugin>::PHASES.has(Phases::HEADER_FILTER) => {
                        p.header_filter(resp)
                    } )*
                    #[allow(unreachable_patterns)]
                    _ => Ok(()),
                }
            }

            pub fn body_filter(&self, chunk: &mut BodyChunk<'_>, scratch: &mut RequestScratch) {
                match self {
                    $( ShardPlugin::$field(p) if <$ty as Plugin>::PHASES.has(Phases::BODY_FILTER) => {
                        p.body_filter(chunk, scratch)
                    } )*
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }

            pub fn log(&self, info: &LogInfo<'_>) {
                match self {
                    $( ShardPlugin::$field(p) if <$ty as Plugin>::PHASES.has(Phases::LOG) => {
                        p.log(info)
                    } )*
                    #[allow(unreachable_patterns)]
                    _ => {}
                }
            }
        }
    };
}

// The plugins, one line each: `field: Type` (Type implements `Plugin`).
#[cfg(not(any(test, feature = "test-plugins")))]
registry! {
    openid_connect: crate::plugins::openid_connect::RouteAuth,
    response_rewrite: crate::plugins::response_rewrite::ResponseRewrite,
    cors: crate::plugins::cors::CorsPlugin,
    ip_restriction: crate::plugins::ip_restriction::IpRestrictionPlugin,
    redirect: crate::plugins::redirect::RedirectPlugin,
    request_id: crate::plugins::request_id::RequestIdPlugin,
    real_ip: crate::plugins::real_ip::RealIpPlugin,
    limit_count: crate::plugins::limit::count::LimitCount,
    limit_req: crate::plugins::limit::req::LimitReq,
    proxy_rewrite: crate::plugins::proxy_rewrite::ProxyRewrite,
}

// Test and bench builds add plugins that only exist to exercise the pipeline (`testing.rs`).
#[cfg(any(test, feature = "test-plugins"))]
registry! {
    openid_connect: crate::plugins::openid_connect::RouteAuth,
    response_rewrite: crate::plugins::response_rewrite::ResponseRewrite,
    cors: crate::plugins::cors::CorsPlugin,
    ip_restriction: crate::plugins::ip_restriction::IpRestrictionPlugin,
    redirect: crate::plugins::redirect::RedirectPlugin,
    request_id: crate::plugins::request_id::RequestIdPlugin,
    real_ip: crate::plugins::real_ip::RealIpPlugin,
    limit_count: crate::plugins::limit::count::LimitCount,
    limit_req: crate::plugins::limit::req::LimitReq,
    proxy_rewrite: crate::plugins::proxy_rewrite::ProxyRewrite,
    noop_1: super::testing::Noop<1>,
    noop_2: super::testing::Noop<2>,
    noop_3: super::testing::Noop<3>,
    test_header_hi: super::testing::TestHeader<true>,
    test_header_lo: super::testing::TestHeader<false>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::published::Published;

    fn plugins(json: &str) -> RoutePlugins {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).unwrap();
        let entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
        let (plugins, errors, _) = parse_plugins(&entries, "routes[0].plugins");
        assert!(errors.is_empty(), "{errors:?}");
        plugins
    }

    #[test]
    fn a_routes_plugins_run_by_priority_highest_first() {
        let yaml = r#"
upstreams: [{ id: app, nodes: { "127.0.0.1:1": 1 } }]
routes:
  - id: r
    uri: /
    upstream_id: app
    plugins:
      test-header-lo: { value: lo }
      test-noop-2: {}
      test-header-hi: { value: hi }
"#;
        let loaded = crate::config::load_str(yaml).unwrap();
        let p = Published::build(1, loaded.config, &PluginGlobals::new()).unwrap();
        let names: Vec<&str> = p.routes[0].plugins.iter().map(|i| i.name()).collect();
        assert_eq!(names, ["test-header-hi", "test-noop-2", "test-header-lo"]);
    }

    #[test]
    fn merging_takes_the_overriding_maps_attributes_whole_per_plugin() {
        let base = plugins(r#"{"test-header-hi": {"value": "service"}, "test-noop-1": {}}"#);
        let route = plugins(r#"{"test-header-hi": {"value": "route", "respond": 204}}"#);
        let merged = route.merged_over(&base);
        assert_eq!(merged.len(), 2);
        let hi = merged
            .conf::<crate::pipeline::testing::TestHeader<true>>()
            .unwrap();
        assert_eq!((hi.value.as_str(), hi.respond), ("route", Some(204)));
        let order: Vec<&str> = merged.by_priority().iter().map(|c| c.name()).collect();
        assert_eq!(order, ["test-header-hi", "test-noop-1"]);
    }

    #[test]
    fn attribute_problems_and_unknown_plugins_name_their_path() {
        let entries = vec![
            (
                "test-header-lo".to_string(),
                serde_json::json!({ "value": "x", "respond": 99 }),
            ),
            (
                "test-header-hi".to_string(),
                serde_json::json!({ "value": "x", "colour": "red" }),
            ),
            ("key-auth".to_string(), serde_json::json!({})),
        ];
        let (plugins, errors, _) = parse_plugins(&entries, "routes[3].plugins");
        assert!(plugins.is_empty());
        let paths: Vec<&str> = errors.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[3].plugins.test-header-lo.respond",
                "routes[3].plugins.test-header-hi.colour",
                "routes[3].plugins.key-auth",
            ]
        );
        assert!(errors[1].message.contains("colour"), "{errors:?}");
        assert!(
            errors[2].message.contains(&format!(
                "plugin `key-auth` is not supported by shardgate (supported: {})",
                names()
            )) && names().starts_with("openid-connect, "),
            "{errors:?}"
        );
    }
}
