//! The etcd config provider: APISIX's objects read from etcd (`<prefix>/routes/<id>`, ...) and
//! joined with the file's `gateway` section into one [`Config`], through the same parsing and
//! validation as a file.
//!
//! ```text
//! watch.rs (thread "etcd": full read, then a watch) --Event--> control thread: apply to Objects,
//!   assemble() --Config--> Published::build --> every shard
//! ```
//! - `client.rs` speaks etcd's v3 JSON gateway (the HTTP/1.1 + JSON face of its gRPC API, the one
//!   APISIX itself uses) over blocking std sockets: no async runtime, no protoc, no gRPC stack.
//! - A bad object is skipped and named by its key; the rest keeps serving. An object whose
//!   reference dangles because its target was skipped is skipped too, naming the reference.

pub mod client;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::de::DeserializeOwned;

use super::file::{
    FileConfig, GlobalRuleFile, Id, PluginConfigFile, ProviderFile, RouteFile, ServiceFile,
    UpstreamFile,
};
use super::{Config, ConfigError, Loaded, Problem};

/// The kinds shardgate reads, in APISIX's key names.
pub const KINDS: [&str; 5] = [
    "routes",
    "upstreams",
    "services",
    "plugin_configs",
    "global_rules",
];

/// APISIX kinds shardgate does not implement: an object there is skipped and named.
const UNSUPPORTED: [&str; 7] = [
    "ssls",
    "consumers",
    "consumer_groups",
    "plugin_metadata",
    "stream_routes",
    "protos",
    "secrets",
];

/// Every key under the prefix with its value, as read from etcd.
pub type Objects = BTreeMap<String, String>;

/// An object left out of the config, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub problems: Vec<String>,
}

/// What [`assemble`] produced: the caller's result for the config, its warnings, what was skipped.
pub struct Assembled<T> {
    pub value: T,
    pub warnings: Vec<Problem>,
    pub skipped: Vec<Skipped>,
}

/// `<prefix>/<kind>/<id>` -> (kind, id); None for keys outside APISIX's object layout (the kind's
/// own directory key, `<prefix>/data_plane/...`).
fn split_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (kind, id) = rest.split_once('/')?;
    (!id.is_empty() && !id.contains('/')).then_some((kind, id))
}

/// One kind's objects, in key order: (key, value).
#[derive(Default)]
struct Kind<'a> {
    keys: Vec<&'a str>,
}

/// Parses `value` as `T`, with the object's id taken from the key when the value has none.
fn parse_object<T: DeserializeOwned>(value: &str, id: &str) -> Result<T, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(value).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err("must be a JSON object".to_owned());
    };
    match obj.get("id") {
        None => {
            obj.insert("id".to_owned(), serde_json::Value::String(id.to_owned()));
        }
        Some(serde_json::Value::String(s)) if s == id => {}
        Some(serde_json::Value::Number(n)) if n.to_string() == id => {}
        Some(other) => {
            return Err(format!(
                "id: `{other}` does not match the id in the key (`{id}`)"
            ));
        }
    }
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        if path == "." {
            msg
        } else {
            format!("{path}: {msg}")
        }
    })
}

/// `routes[12].plugins.x` -> ("routes", 12).
fn entry_of(path: &str) -> Option<(&str, usize)> {
    let (kind, rest) = path.split_once('[')?;
    let (index, _) = rest.split_once(']')?;
    Some((kind, index.parse().ok()?))
}

/// Joins the file (`gateway` only) with the etcd objects and validates the result as a file is.
/// `finish` turns a valid [`Config`] into what is published (it may still fail, with problems
/// one per line starting with their path, as `Published::build` does). Objects whose problems
/// name them are left out and the rest is tried again, until it passes or a problem names no
/// object (then the whole config is refused: a `gateway` problem, say).
pub fn assemble<T>(
    file_text: &str,
    base_dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    prefix: &str,
    objects: &Objects,
    finish: &mut dyn FnMut(Config) -> Result<T, String>,
) -> Result<Assembled<T>, ConfigError> {
    let text =
        super::env::interpolate(file_text, env).map_err(|problems| ConfigError { problems })?;
    // Checked once: the file's own problems are not the objects'.
    let base = super::parse(&text, env)?;
    check_file_has_no_objects(&base)?;
    drop(base);

    let mut skipped: Vec<Skipped> = Vec::new();
    let mut kinds: HashMap<&str, Kind<'_>> = HashMap::new();
    for (key, value) in objects {
        let Some((kind, _)) = split_key(prefix, key) else {
            continue;
        };
        if value.trim().is_empty() || value == "init_dir" {
            continue;
        }
        if KINDS.contains(&kind) {
            kinds.entry(kind).or_default().keys.push(key.as_str());
        } else if UNSUPPORTED.contains(&kind) {
            skipped.push(Skipped {
                key: key.clone(),
                problems: vec![format!(
                    "APISIX object type `{kind}` is not supported by shardgate"
                )],
            });
        }
    }
    let mut excluded: BTreeSet<&str> = BTreeSet::new();
    let mut reasons: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // Each round leaves out at least one more object, so this ends.
    loop {
        let mut file = super::parse(&text, env)?;
        let mut order: HashMap<&str, Vec<&str>> = HashMap::new();
        for kind in KINDS {
            let keys = kinds
                .get(kind)
                .map(|k| k.keys.as_slice())
                .unwrap_or_default();
            for &key in keys {
                if excluded.contains(key) {
                    continue;
                }
                let value = &objects[key];
                let id = split_key(prefix, key).map_or("", |(_, id)| id);
                let parsed = match kind {
                    "routes" => parse_object::<RouteFile>(value, id).map(|o| file.routes.push(o)),
                    "upstreams" => {
                        parse_object::<UpstreamFile>(value, id).map(|o| file.upstreams.push(o))
                    }
                    "services" => {
                        parse_object::<ServiceFile>(value, id).map(|o| file.services.push(o))
                    }
                    "plugin_configs" => parse_object::<PluginConfigFile>(value, id)
                        .map(|o| file.plugin_configs.push(o)),
                    _ => {
                        parse_object::<GlobalRuleFile>(value, id).map(|o| file.global_rules.push(o))
                    }
                };
                match parsed {
                    Ok(()) => order.entry(kind).or_default().push(key),
                    Err(e) => {
                        excluded.insert(key);
                        reasons.entry(key).or_default().push(e);
                    }
                }
            }
        }
        let top_upstreams = file.upstreams.len();
        let route_ids: Vec<Option<Id>> = file.routes.iter().map(|r| r.id.clone()).collect();
        let service_ids: Vec<Option<Id>> = file.services.iter().map(|s| s.id.clone()).collect();
        let (unresolved, resolved) = super::resolve_secret_refs(&mut file, env);
        let mut problems: Vec<(String, String)> = unresolved
            .into_iter()
            .map(|p| (p.path.clone(), p.message.clone()))
            .collect();
        if problems.is_empty() {
            match super::build::build(file, base_dir) {
                Err(mut e) => {
                    resolved.scrub(&mut e.problems);
                    problems.extend(e.problems.into_iter().map(|p| (p.path, p.message)));
                }
                Ok(Loaded {
                    config,
                    mut warnings,
                }) => {
                    resolved.scrub(&mut warnings);
                    let inline: Vec<String> = config.upstreams
                        [top_upstreams.min(config.upstreams.len())..]
                        .iter()
                        .map(|u| u.id.clone())
                        .collect();
                    match finish(config) {
                        Ok(value) => {
                            for (key, problems) in reasons {
                                skipped.push(Skipped {
                                    key: key.to_owned(),
                                    problems,
                                });
                            }
                            skipped.sort_by(|a, b| a.key.cmp(&b.key));
                            return Ok(Assembled {
                                value,
                                warnings,
                                skipped,
                            });
                        }
                        Err(lines) => {
                            for line in lines.lines().filter(|l| !l.trim().is_empty()) {
                                let (path, message) = line.split_once(": ").unwrap_or((line, ""));
                                // An inline upstream (`upstreams[n]` past the top-level ones)
                                // belongs to its route or service.
                                let path = match entry_of(path) {
                                    Some(("upstreams", i)) if i >= top_upstreams => {
                                        match inline.get(i - top_upstreams).and_then(|id| {
                                            owner_of_inline(id, &route_ids, &service_ids)
                                        }) {
                                            Some(owner) => owner,
                                            None => path.to_owned(),
                                        }
                                    }
                                    _ => path.to_owned(),
                                };
                                problems.push((path, message.to_owned()));
                            }
                        }
                    }
                }
            }
        }
        let mut progress = false;
        let mut unplaced = Vec::new();
        for (path, message) in problems {
            let key = entry_of(&path).and_then(|(kind, i)| order.get(kind)?.get(i).copied());
            match key {
                Some(key) => {
                    let inner = path.split_once(']').map_or("", |(_, rest)| rest);
                    let inner = inner.strip_prefix('.').unwrap_or(inner);
                    let line = if inner.is_empty() {
                        message
                    } else {
                        format!("{inner}: {message}")
                    };
                    reasons.entry(key).or_default().push(line);
                    progress |= excluded.insert(key);
                }
                None => unplaced.push(Problem::new(path, message)),
            }
        }
        if !unplaced.is_empty() || !progress {
            if unplaced.is_empty() {
                unplaced.push(Problem::new("etcd", "the objects could not be validated"));
            }
            return Err(ConfigError { problems: unplaced });
        }
    }
}

/// `route:<id>` / `service:<id>` (an inline upstream's id) -> `routes[i]` / `services[i]`.
fn owner_of_inline(id: &str, routes: &[Option<Id>], services: &[Option<Id>]) -> Option<String> {
    let (kind, owner) = id.split_once(':')?;
    let (list, name) = match kind {
        "route" => (routes, "routes"),
        "service" => (services, "services"),
        _ => return None,
    };
    let i = list
        .iter()
        .position(|o| o.as_ref().is_some_and(|o| o.0 == owner))?;
    Some(format!("{name}[{i}]"))
}

/// With `config_provider: etcd` the objects live in etcd only: objects in the file would be
/// silently shadowed (APISIX ignores apisix.yaml then), so they are refused by name.
pub(super) fn check_file_has_no_objects(file: &FileConfig) -> Result<(), ConfigError> {
    if file.gateway.config_provider != ProviderFile::Etcd {
        return Ok(());
    }
    let present = [
        ("routes", !file.routes.is_empty()),
        ("upstreams", !file.upstreams.is_empty()),
        ("services", !file.services.is_empty()),
        ("plugin_configs", !file.plugin_configs.is_empty()),
        ("global_rules", !file.global_rules.is_empty()),
    ];
    let problems: Vec<Problem> = present
        .iter()
        .filter(|(_, p)| *p)
        .map(|(name, _)| {
            Problem::new(
                *name,
                format!(
                    "with gateway.config_provider: etcd, {name} come from etcd (<prefix>/{name}/<id>); remove them from the file"
                ),
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// Reads the file and assembles it with `objects` (see [`assemble`]).
pub fn assemble_file<T>(
    path: &Path,
    prefix: &str,
    objects: &Objects,
    finish: &mut dyn FnMut(Config) -> Result<T, String>,
) -> Result<Assembled<T>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(path.display().to_string(), format!("cannot read: {e}")))?;
    assemble(
        &text,
        path.parent(),
        &|name| std::env::var(name).ok(),
        prefix,
        objects,
        finish,
    )
}

#[cfg(test)]
mod tests;
