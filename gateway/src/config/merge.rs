//! APISIX's plugin merging, computed once per config at build time.
//!
//! - Route, plugin_config and service (apisix/plugin_config.lua `merge`, then apisix/plugin.lua
//!   `merge_service_route`): the plugin_config adds the plugins the route does not configure,
//!   then the result replaces the service's plugin of the same name. Per plugin name, the route
//!   wins over the plugin_config, which wins over the service; a plugin's config is taken whole,
//!   never merged attribute by attribute.
//! - Global rules (apisix/plugin.lua `merge_global_rules`): every rule's plugins form one set
//!   that runs before the route's. APISIX drops a plugin configured in two global rules (with
//!   an error in its log); shardgate refuses that config instead, since a dropped
//!   authentication plugin would fail open.
//!
//! The per-name override itself is `RoutePlugins::merged_over` (pipeline/registry.rs).

use super::RoutePlugins;

/// The effective plugins of a route.
pub(super) fn route_plugins(
    service: Option<&RoutePlugins>,
    plugin_config: Option<&RoutePlugins>,
    route: &RoutePlugins,
) -> RoutePlugins {
    let mut merged = service.cloned().unwrap_or_default();
    if let Some(plugin_config) = plugin_config {
        merged = plugin_config.merged_over(&merged);
    }
    route.merged_over(&merged)
}

/// One set from every global rule, in order; `Err((name, first, second))` when two rules
/// (indexes into `rules`) configure the same plugin.
pub(super) fn global_plugins(
    rules: &[&RoutePlugins],
) -> Result<RoutePlugins, Vec<(&'static str, usize, usize)>> {
    let mut merged = RoutePlugins::default();
    let mut owner: Vec<(&'static str, usize)> = Vec::new();
    let mut clashes = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for plugin in rule.iter() {
            let name = plugin.name();
            match owner.iter().find(|(n, _)| *n == name) {
                Some(&(_, first)) => clashes.push((name, first, i)),
                None => owner.push((name, i)),
            }
        }
        merged = rule.merged_over(&merged);
    }
    if clashes.is_empty() {
        Ok(merged)
    } else {
        Err(clashes)
    }
}
