//! APISIX's Admin API (v3 shape) on the admin listener: `GET/PUT/POST/PATCH/DELETE
//! /apisix/admin/{routes,upstreams,services,plugin_configs,global_rules}[/{id}]`, `X-API-KEY` with
//! `admin` and `viewer` roles, `{key, value}` and `{total, list}` bodies, `error_msg` on errors.
//!
//! - With `config_provider: etcd`, writes are validated with the file's code (the object joined
//!   with what etcd holds, as the provider would publish it) and then written to etcd; every
//!   gateway watching that etcd (this one included) applies them through its watch.
//! - With the file provider, it is read-only (GET, from the file), as APISIX's standalone mode.
//! - etcd calls are blocking: each runs on a short-lived thread and is awaited, so the control
//!   thread (config actor, /readyz, /metrics) never waits on etcd.

use serde_json::{Map, Value, json};

use crate::config::etcd::client::{Client, EtcdError, Kv};
use crate::config::etcd::{self, KINDS, Objects};
use crate::config::{AdminKey, EtcdConf};
use crate::http1::Method;
use crate::pipeline::registry;
use crate::published::Published;
use crate::server::Control;

/// An Admin API answer: status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

fn answer(status: u16, v: &Value) -> Answer {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    Answer { status, body }
}

fn error(status: u16, message: impl Into<String>) -> Answer {
    answer(status, &json!({ "error_msg": message.into() }))
}

/// The request as the Admin API needs it.
pub struct Request<'a> {
    pub method: Method,
    /// After `/apisix/admin/`.
    pub path: &'a str,
    /// After `?`, undecoded (empty without one).
    pub query: &'a str,
    pub api_key: Option<&'a str>,
    pub body: &'a [u8],
}

/// The role of the presented key; Err: the answer to send (401).
fn authorize(keys: &[AdminKey], req: &Request<'_>) -> Result<bool, Answer> {
    let Some(presented) = req.api_key else {
        return Err(error(401, "failed to check token"));
    };
    let found = keys.iter().find(|k| same_secret(&k.key, presented));
    match found {
        Some(k) => Ok(k.admin),
        None => Err(error(401, "failed to check token")),
    }
}

/// Compares digests with a full XOR fold, so neither the time taken nor a length difference says
/// how much of a guessed key matched.
fn same_secret(a: &str, b: &str) -> bool {
    let da = ring::digest::digest(&ring::digest::SHA256, a.as_bytes());
    let db = ring::digest::digest(&ring::digest::SHA256, b.as_bytes());
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Runs `f` with an etcd client on its own thread and awaits its result.
async fn on_etcd<T: Send + 'static>(
    conf: &EtcdConf,
    f: impl FnOnce(&mut Client) -> Result<T, EtcdError> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = flume::bounded(1);
    let conf = conf.clone();
    std::thread::Builder::new()
        .name("admin-etcd".into())
        .spawn(move || {
            let mut client = Client::new(conf.hosts, conf.timeout, conf.auth);
            let _ = tx.send(f(&mut client).map_err(|e| e.to_string()));
        })
        .map_err(|e| format!("cannot start a thread for etcd: {e}"))?;
    rx.recv_async()
        .await
        .unwrap_or_else(|_| Err("the etcd call did not answer".to_owned()))
}

fn now_secs() -> u64 {
    #[allow(clippy::disallowed_methods)] // wall-clock time for APISIX's create_time/update_time
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh id for POST: digits, time-ordered, as APISIX's generated ids are.
fn new_id() -> String {
    #[allow(clippy::disallowed_methods)] // wall-clock time only to make a unique id
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:020}", nanos / 1000)
}

/// JSON merge patch (RFC 7396), APISIX's PATCH.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Which objects refer to `kind`/`id` (APISIX refuses to delete those).
fn users_of(prefix: &str, objects: &Objects, kind: &str, id: &str) -> Vec<String> {
    let field = match kind {
        "upstreams" => "upstream_id",
        "services" => "service_id",
        "plugin_configs" => "plugin_config_id",
        _ => return Vec::new(),
    };
    let mut users = Vec::new();
    for (key, value) in objects {
        let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let Some((user_kind, user_id)) = rest.split_once('/') else {
            continue;
        };
        if user_kind != "routes" && user_kind != "services" {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(value) else {
            continue;
        };
        let refers = match &v[field] {
            Value::String(s) => s == id,
            Value::Number(n) => n.to_string() == id,
            _ => false,
        };
        if refers {
            users.push(format!("{} [{user_id}]", user_kind.trim_end_matches('s')));
        }
    }
    users
}

/// APISIX's id syntax: 1-64 of letters, digits, `-`, `.`, `_`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn percent_decode(v: &str) -> String {
    let v = v.as_bytes();
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= v.len() => {
                match std::str::from_utf8(&v[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2` -> decoded pairs (a later repeat wins, as APISIX takes the last value).
fn query_args(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

fn arg<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    args.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `{key, value, createdIndex, modifiedIndex}`, APISIX v3's shape of one stored object.
fn item(kv: &Kv) -> Option<Value> {
    let value = serde_json::from_str::<Value>(&kv.value).ok()?;
    Some(json!({
        "key": kv.key,
        "value": value,
        "createdIndex": kv.create_revision,
        "modifiedIndex": kv.mod_revision,
    }))
}

/// APISIX's list query: `name`, `label`, `uri` and `filter` (`service_id`, `upstream_id` on routes)
/// narrow the list and `total` counts what is left; `page`/`page_size` then cut a page of it, in
/// creation order.
fn list(kind: &str, mut items: Vec<(i64, Value)>, args: &[(String, String)]) -> Answer {
    let regex = |name: &str| -> Result<Option<regex::Regex>, Answer> {
        match arg(args, name) {
            None | Some("") => Ok(None),
            Some(p) => regex::Regex::new(p)
                .map(Some)
                .map_err(|e| error(400, format!("invalid {name} pattern: {e}"))),
        }
    };
    let name = match regex("name") {
        Ok(r) => r,
        Err(a) => return a,
    };
    let uri = match regex("uri") {
        Ok(r) => r,
        Err(a) => return a,
    };
    let label = arg(args, "label").filter(|l| !l.is_empty());
    let filters: Vec<(String, String)> = arg(args, "filter").map(query_args).unwrap_or_default();
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    items.retain(|(_, item)| {
        let v = &item["value"];
        if let Some(re) = &name
            && !v["name"].as_str().is_some_and(|n| re.is_match(n))
        {
            return false;
        }
        if let Some(l) = label
            && !v["labels"].as_object().is_some_and(|m| m.contains_key(l))
        {
            return false;
        }
        if let Some(re) = &uri {
            let one = v["uri"].as_str().is_some_and(|u| re.is_match(u));
            let many = v["uris"]
                .as_array()
                .is_some_and(|us| us.iter().filter_map(Value::as_str).any(|u| re.is_match(u)));
            if !one && !many {
                return false;
            }
        }
        filters.iter().all(|(k, want)| {
            // Fields APISIX does not filter on are ignored, as APISIX does (with a warning).
            if kind != "routes" || !matches!(k.as_str(), "service_id" | "upstream_id") {
                return true;
            }
            text(&v[k.as_str()]).is_some_and(|have| &have == want)
        })
    });
    let total = items.len();
    let page = arg(args, "page").and_then(|p| p.parse::<usize>().ok());
    let page_size = arg(args, "page_size").and_then(|p| p.parse::<usize>().ok());
    if let (Some(page), Some(size)) = (page, page_size) {
        if !(10..=500).contains(&size) {
            return error(400, "page_size must be between 10 and 500");
        }
        items.sort_by_key(|(created, _)| *created);
        let from = (page.max(1) - 1).saturating_mul(size);
        items = items.into_iter().skip(from).take(size).collect();
    }
    let list: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
    answer(200, &json!({ "total": total, "list": list }))
}

/// `/apisix/admin/plugins/list`, `/apisix/admin/plugins/{name}`, `/apisix/admin/schema/...`.
fn plugins(path: &str) -> Answer {
    if path == "plugins/list" {
        return answer(200, &json!(registry::list()));
    }
    let name = path
        .strip_prefix("schema/plugins/")
        .or_else(|| path.strip_prefix("plugins/"));
    match name {
        Some(name) if registry::def(name).is_none() || name.starts_with("test-") => {
            error(404, format!("plugin not found: {name}"))
        }
        // Attributes are checked by each plugin's code (the same code a file goes through), not
        // by a JSON Schema: there is none to hand out, and an invented one would disagree with
        // what a PUT accepts.
        _ => error(
            501,
            "shardgate publishes no JSON Schema: PUT the object and its error_msg names every problem by path",
        ),
    }
}

pub async fn handle(control: &Control, keys: &[AdminKey], req: Request<'_>) -> Answer {
    let admin = match authorize(keys, &req) {
        Ok(a) => a,
        Err(a) => return a,
    };
    if !admin && req.method != Method::Get {
        return error(401, "invalid method for the viewer role");
    }
    let path = req.path.trim_end_matches('/');
    let args = query_args(req.query);
    if path == "plugins/list" || path.starts_with("plugins/") || path.starts_with("schema/") {
        if req.method != Method::Get {
            return error(405, "method not allowed");
        }
        return plugins(path);
    }
    let mut parts = path.splitn(3, '/');
    let kind = parts.next().unwrap_or("");
    let id = parts.next();
    let sub = parts.next();
    if kind == "ssls" {
        return error(
            404,
            "ssls are not supported by shardgate: its TLS listener serves the one certificate of gateway.tls (cert, key), not certificates chosen by SNI from ssls objects",
        );
    }
    if !KINDS.contains(&kind) {
        return error(404, format!("unsupported resource type: {kind}"));
    }
    if id.is_some_and(|i| !valid_id(i)) {
        return error(400, "invalid id: 1 to 64 of letters, digits, `-`, `.`, `_`");
    }
    if sub.is_some() && req.method != Method::Patch {
        return error(404, "a sub path is only for PATCH");
    }
    let Some(etcd_side) = &control.etcd else {
        return read_file(control, req.method, kind, id, &args);
    };
    let prefix = etcd_side.prefix.clone();
    let conf = etcd_side.conf.clone();
    match (req.method, id) {
        (Method::Get, None) => {
            let dir = format!("{prefix}/{kind}/");
            match on_etcd(&conf, move |c| c.range_kvs(&dir)).await {
                Ok(kvs) => {
                    let items = kvs
                        .iter()
                        .filter_map(|kv| Some((kv.create_revision, item(kv)?)))
                        .collect();
                    list(kind, items, &args)
                }
                Err(e) => error(503, e),
            }
        }
        (Method::Get, Some(id)) => {
            let key = format!("{prefix}/{kind}/{id}");
            match on_etcd(&conf, move |c| c.get_kv(&key)).await {
                Ok(Some(kv)) => match item(&kv) {
                    Some(v) => answer(200, &v),
                    None => error(500, format!("{}: the stored value is not JSON", kv.key)),
                },
                Ok(None) => error(404, "Key not found"),
                Err(e) => error(503, e),
            }
        }
        (Method::Delete, Some(id)) => {
            // APISIX's `?force=true` deletes even what is in use (any other value does not).
            let force = arg(&args, "force") == Some("true");
            // What etcd holds now, not what this gateway's watch has seen yet: a route written a
            // moment ago through another gateway counts.
            let dir = format!("{prefix}/");
            let objects: Objects = match on_etcd(&conf, move |c| c.range(&dir)).await {
                Ok((_, kvs)) => kvs.into_iter().collect(),
                Err(e) => return error(503, e),
            };
            let users = users_of(&prefix, &objects, kind, id);
            if let Some(first) = users.first().filter(|_| !force) {
                return error(
                    400,
                    format!(
                        "can not delete this {}, {first} is still using it now",
                        kind.trim_end_matches('s')
                    ),
                );
            }
            let key = format!("{prefix}/{kind}/{id}");
            let k = key.clone();
            match on_etcd(&conf, move |c| c.delete(&k)).await {
                Ok(0) => error(404, "Key not found"),
                Ok(_) => answer(200, &json!({ "deleted": "1", "key": key })),
                Err(e) => error(503, e),
            }
        }
        (Method::Put | Method::Post | Method::Patch, _) => {
            let ttl = match arg(&args, "ttl").map(str::parse::<u64>) {
                None => None,
                Some(Ok(t)) if t > 0 => Some(t),
                Some(_) => return error(400, "ttl must be a positive number of seconds"),
            };
            let target = Target { kind, id, sub, ttl };
            write(control, &conf, &prefix, req.method, target, req.body).await
        }
        (Method::Delete, None) => error(400, "an id is required to delete"),
        _ => error(405, "method not allowed"),
    }
}

/// What a write addresses: `kind/id[/sub/path]` and APISIX's `?ttl=`.
struct Target<'a> {
    kind: &'a str,
    id: Option<&'a str>,
    /// PATCH `/routes/1/upstream/nodes`: the attribute replaced whole.
    sub: Option<&'a str>,
    ttl: Option<u64>,
}

/// PUT (create or replace), POST (create with a new id), PATCH (merge into the stored value, or
/// replace the attribute at a sub path).
async fn write(
    control: &Control,
    conf: &EtcdConf,
    prefix: &str,
    method: Method,
    target: Target<'_>,
    body: &[u8],
) -> Answer {
    let Target { kind, id, sub, ttl } = target;
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(400, format!("invalid request body: {e}")),
    };
    let mut value = match (body, sub) {
        (v @ Value::Object(_), None) => v,
        (_, None) => {
            return error(400, "invalid configuration: the body must be a JSON object");
        }
        (v, Some(_)) => v,
    };
    let body_id = match &value["id"] {
        _ if sub.is_some() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        _ => {
            return error(
                400,
                "invalid configuration: id must be a string or an integer",
            );
        }
    };
    let id = match (method, id, body_id) {
        (Method::Post, Some(_), _) => {
            return error(405, "POST creates: use PUT to write a given id");
        }
        (Method::Post, None, _) => new_id(),
        (Method::Patch, None, _) => return error(400, "an id is required to patch"),
        (_, Some(path_id), Some(body_id)) if path_id != body_id => {
            return error(
                400,
                format!("wrong id: `{body_id}` in the body, `{path_id}` in the path"),
            );
        }
        (_, Some(path_id), _) => path_id.to_owned(),
        (_, None, Some(body_id)) => body_id,
        (_, None, None) => return error(400, "missing id"),
    };
    if !valid_id(&id) {
        return error(400, "invalid id: 1 to 64 of letters, digits, `-`, `.`, `_`");
    }
    let key = format!("{prefix}/{kind}/{id}");
    let existing = {
        let k = key.clone();
        match on_etcd(conf, move |c| c.get(&k)).await {
            Ok(v) => v.and_then(|v| serde_json::from_str::<Value>(&v).ok()),
            Err(e) => return error(503, e),
        }
    };
    if method == Method::Patch {
        let Some(mut stored) = existing.clone() else {
            return error(404, "Key not found");
        };
        match sub {
            None => merge_patch(&mut stored, &value),
            Some(sub) => {
                let mut at = &mut stored;
                let names: Vec<&str> = sub.split('/').collect();
                for (i, name) in names.iter().enumerate() {
                    if name.is_empty() {
                        return error(400, format!("invalid sub path: {sub}"));
                    }
                    let Value::Object(o) = at else {
                        return error(
                            400,
                            format!(
                                "invalid sub path: {} is not an object",
                                names[..i].join("/")
                            ),
                        );
                    };
                    at = o.entry((*name).to_owned()).or_insert(Value::Null);
                }
                *at = value;
            }
        }
        value = stored;
    }
    let now = now_secs();
    if let Value::Object(o) = &mut value {
        o.insert("id".to_owned(), Value::String(id.clone()));
        let created = existing
            .as_ref()
            .and_then(|e| e.get("create_time").cloned())
            .unwrap_or(json!(now));
        o.insert("create_time".to_owned(), created);
        o.insert("update_time".to_owned(), json!(now));
    }
    let text = value.to_string();
    // Validated as the provider will see it: what etcd holds (as last watched) plus this object.
    if let Some(side) = &control.etcd {
        let mut objects = side.objects().clone();
        objects.insert(key.clone(), text.clone());
        let result = etcd::assemble_file(&control.config_path, prefix, &objects, &mut |c| {
            Published::build(0, c, &control.plugins).map(|_| ())
        });
        // Building instances may have started plugin state no published config uses.
        control.plugins.retain_used_by(&control.publisher.current());
        match result {
            Ok(a) => {
                if let Some(s) = a.skipped.iter().find(|s| s.key == key) {
                    return error(
                        400,
                        format!("invalid configuration: {}", s.problems.join("; ")),
                    );
                }
            }
            Err(e) => {
                return error(
                    400,
                    format!(
                        "invalid configuration: {}",
                        e.to_string().replace('\n', "; ")
                    ),
                );
            }
        }
    }
    let (k, t) = (key.clone(), text);
    match on_etcd(conf, move |c| c.put_ttl(&k, &t, ttl)).await {
        Ok(_) => answer(
            if existing.is_some() { 200 } else { 201 },
            &json!({ "key": key, "value": value }),
        ),
        Err(e) => error(503, e),
    }
}

/// The file provider: GET answers from the file (as written: `${VAR}` references are not
/// expanded, so secrets do not leak); writes are refused, as APISIX's standalone mode does.
fn read_file(
    control: &Control,
    method: Method,
    kind: &str,
    id: Option<&str>,
    args: &[(String, String)],
) -> Answer {
    if method != Method::Get {
        return error(
            405,
            "the Admin API is read-only with gateway.config_provider: file (change the file and reload)",
        );
    }
    let text = match std::fs::read_to_string(&control.config_path) {
        Ok(t) => t,
        Err(e) => return error(500, format!("cannot read the config file: {e}")),
    };
    let doc: Value = match yaml_serde::from_str(&text) {
        Ok(d) => d,
        Err(e) => return error(500, format!("cannot parse the config file: {e}")),
    };
    let items = doc[kind].as_array().cloned().unwrap_or_default();
    let with_key = |i: usize, v: &Value| {
        let id = match &v["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => i.to_string(),
        };
        (
            id.clone(),
            json!({ "key": format!("/apisix/{kind}/{id}"), "value": v }),
        )
    };
    match id {
        // File order stands in for creation order when paging.
        None => list(
            kind,
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (i as i64, with_key(i, v).1))
                .collect(),
            args,
        ),
        Some(want) => match items
            .iter()
            .enumerate()
            .map(|(i, v)| with_key(i, v))
            .find(|(id, _)| id == want)
        {
            Some((_, v)) => answer(200, &v),
            None => error(404, "Key not found"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_is_rfc7396() {
        let mut t = json!({"uri": "/a", "plugins": {"x": {"a": 1}}, "desc": "d"});
        merge_patch(
            &mut t,
            &json!({"uri": "/b", "plugins": {"x": {"b": 2}}, "desc": null}),
        );
        assert_eq!(t, json!({"uri": "/b", "plugins": {"x": {"a": 1, "b": 2}}}));
    }

    #[test]
    fn query_args_are_decoded_and_the_last_repeat_wins() {
        let args = query_args("filter=service_id%3D1%26upstream_id%3Du&name=a+b&page=1&page=2&x");
        assert_eq!(arg(&args, "filter"), Some("service_id=1&upstream_id=u"));
        assert_eq!(arg(&args, "name"), Some("a b"));
        assert_eq!(arg(&args, "page"), Some("2"));
        assert_eq!(arg(&args, "x"), Some(""));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert!(valid_id("a-B_9.z") && !valid_id("") && !valid_id("a b"));
        assert!(!valid_id(&"x".repeat(65)));
    }

    #[test]
    fn users_of_finds_routes_and_services() {
        let objects: Objects = [
            ("/apisix/routes/1", r#"{"upstream_id":"u"}"#),
            ("/apisix/services/s", r#"{"upstream_id":"u"}"#),
            ("/apisix/routes/2", r#"{"upstream_id":"v","service_id":7}"#),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            users_of("/apisix", &objects, "upstreams", "u"),
            ["route [1]", "service [s]"]
        );
        assert_eq!(
            users_of("/apisix", &objects, "services", "7"),
            ["route [2]"]
        );
        assert!(users_of("/apisix", &objects, "routes", "1").is_empty());
    }
}
