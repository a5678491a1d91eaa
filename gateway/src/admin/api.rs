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

use crate::config::etcd::client::{Client, EtcdError};
use crate::config::etcd::{self, KINDS, Objects};
use crate::config::{AdminKey, EtcdConf};
use crate::http1::Method;
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

pub async fn handle(control: &Control, keys: &[AdminKey], req: Request<'_>) -> Answer {
    let admin = match authorize(keys, &req) {
        Ok(a) => a,
        Err(a) => return a,
    };
    if !admin && req.method != Method::Get {
        return error(401, "invalid method for the viewer role");
    }
    let path = req.path.trim_end_matches('/');
    let (kind, id) = match path.split_once('/') {
        Some((k, i)) => (k, Some(i)),
        None => (path, None),
    };
    if !KINDS.contains(&kind) {
        return error(404, format!("unsupported resource type: {kind}"));
    }
    if id.is_some_and(|i| i.is_empty() || i.contains('/')) {
        return error(400, "invalid id");
    }
    let Some(etcd_side) = &control.etcd else {
        return read_file(control, req.method, kind, id);
    };
    let prefix = etcd_side.prefix.clone();
    let conf = etcd_side.conf.clone();
    match (req.method, id) {
        (Method::Get, None) => {
            let dir = format!("{prefix}/{kind}/");
            match on_etcd(&conf, move |c| c.range(&dir)).await {
                Ok((_, kvs)) => {
                    let list: Vec<Value> = kvs
                        .into_iter()
                        .filter_map(|(key, value)| {
                            let v = serde_json::from_str::<Value>(&value).ok()?;
                            Some(json!({ "key": key, "value": v }))
                        })
                        .collect();
                    answer(200, &json!({ "total": list.len(), "list": list }))
                }
                Err(e) => error(503, e),
            }
        }
        (Method::Get, Some(id)) => {
            let key = format!("{prefix}/{kind}/{id}");
            let k = key.clone();
            match on_etcd(&conf, move |c| c.get(&k)).await {
                Ok(Some(value)) => {
                    let v = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
                    answer(200, &json!({ "key": key, "value": v }))
                }
                Ok(None) => error(404, "Key not found"),
                Err(e) => error(503, e),
            }
        }
        (Method::Delete, Some(id)) => {
            let users = users_of(&prefix, &etcd_side.objects(), kind, id);
            if let Some(first) = users.first() {
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
            write(control, &conf, &prefix, req.method, kind, id, req.body).await
        }
        (Method::Delete, None) => error(400, "an id is required to delete"),
        _ => error(405, "method not allowed"),
    }
}

/// PUT (create or replace), POST (create with a new id), PATCH (merge into the stored value).
async fn write(
    control: &Control,
    conf: &EtcdConf,
    prefix: &str,
    method: Method,
    kind: &str,
    id: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut value: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(400, "invalid configuration: the body must be a JSON object"),
        Err(e) => return error(400, format!("invalid request body: {e}")),
    };
    let body_id = match &value["id"] {
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
        merge_patch(&mut stored, &value);
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
    match on_etcd(conf, move |c| c.put(&k, &t)).await {
        Ok(_) => answer(
            if existing.is_some() { 200 } else { 201 },
            &json!({ "key": key, "value": value }),
        ),
        Err(e) => error(503, e),
    }
}

/// The file provider: GET answers from the file (as written: `${VAR}` references are not
/// expanded, so secrets do not leak); writes are refused, as APISIX's standalone mode does.
fn read_file(control: &Control, method: Method, kind: &str, id: Option<&str>) -> Answer {
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
        None => {
            let list: Vec<Value> = items
                .iter()
                .enumerate()
                .map(|(i, v)| with_key(i, v).1)
                .collect();
            answer(200, &json!({ "total": list.len(), "list": list }))
        }
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
