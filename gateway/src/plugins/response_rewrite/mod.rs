//! APISIX's `response-rewrite` (priority 899, `header_filter` and `body_filter`): changes the
//! status, adds, sets and removes response headers, and replaces the body (`body`, optionally
//! base64) or rewrites it with regex `filters`, all only when the `vars` condition matches the
//! response (`status`, `upstream_http_*`) and the request.
//!
//! A body change is decided per response in `header_filter`: a response whose body this plugin
//! leaves alone (no `body`/`filters`, or `vars` not matched) is relayed untouched, at no cost.
//! `body` discards the upstream's body (still read to its end, so the upstream connection stays
//! reusable) and sends the configured one. `filters` hold the whole body (at most
//! `max_resp_body_size` bytes; the rest is dropped, as APISIX truncates) and rewrite it once
//! it is complete.
//!
//! Differences from APISIX: `filters` regexes use Rust's syntax (no look-around or
//! backreferences; an unsupported one is a config error naming it) and its options `i`, `m`,
//! `s`, `x` (`j`, `o`, `u` are accepted and mean nothing here); in `replace`, `$1a` names a group
//! `1a` (write `${1}a`). A compressed upstream body (`Content-Encoding` other than `identity`) is
//! not decompressed: `filters` leave it untouched and a warning is logged (APISIX decodes gzip
//! and brotli). `$balancer_ip`-style upstream variables in header values resolve to empty.

use std::rc::Rc;
use std::sync::Arc;

use base64::Engine;
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::Value;

use crate::pipeline::{BodyChunk, Phases, Plugin, Problem, RequestScratch, ResponseCtx};
use crate::route::{Expr, VarSource};

const DEFAULT_MAX_BODY: u64 = 64 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    status_code: Option<i64>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    #[serde(default)]
    vars: Option<Value>,
    #[serde(default)]
    filters: Option<Vec<RawFilter>>,
    #[serde(default = "default_max_body")]
    max_resp_body_size: u64,
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    regex: String,
    #[serde(default)]
    scope: Scope,
    replace: String,
    #[serde(default = "default_options")]
    options: String,
}

fn default_options() -> String {
    "jo".into()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Once,
    Global,
}

/// A header value with `$var` / `${var}` / `${var ?? default}` references, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var {
        name: String,
        default: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// As APISIX's `core.utils.resolve_var`: `$name` (`[A-Za-z0-9_.]+`) or `${ name }` or
    /// `${name ?? default}`; a `$` after a backslash stays as written.
    fn parse(s: &str) -> Template {
        let b = s.as_bytes();
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'$' && (i == 0 || b[i - 1] != b'\\') {
                if b.get(i + 1) == Some(&b'{')
                    && let Some(end) = s[i + 2..].find('}')
                {
                    let inner = s[i + 2..i + 2 + end].trim();
                    if !inner.is_empty() {
                        let (name, default) = match inner.split_once("??") {
                            Some((n, d)) => (n.trim(), Some(d.trim().to_owned())),
                            None => (inner, None),
                        };
                        if !text.is_empty() {
                            parts.push(Part::Text(std::mem::take(&mut text)));
                        }
                        parts.push(Part::Var {
                            name: name.to_owned(),
                            default,
                        });
                        i += 2 + end + 1;
                        continue;
                    }
                }
                let len = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'.')
                    .count();
                if len > 0 {
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Var {
                        name: s[i + 1..i + 1 + len].to_owned(),
                        default: None,
                    });
                    i += 1 + len;
                    continue;
                }
            }
            // Copy one UTF-8 character.
            let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
            text.push_str(&s[i..i + ch_len]);
            i += ch_len;
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Template(parts)
    }

    fn render<V: VarSource + ?Sized>(&self, vars: &V) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var { name, default } => match vars.var(name) {
                    Some(v) => out.push_str(&String::from_utf8_lossy(v)),
                    None => out.push_str(default.as_deref().unwrap_or("")),
                },
            }
        }
        out
    }
}

#[derive(Debug)]
pub struct Filter {
    regex: Regex,
    global: bool,
    replace: Vec<u8>,
}

/// The validated attributes.
#[derive(Debug)]
pub struct ResponseRewriteConf {
    pub status_code: Option<u16>,
    /// `headers.add`: appended whatever the upstream sent.
    add: Vec<(String, Template)>,
    /// `headers.set` (and the old flat form): replace the upstream's values; an empty value
    /// removes the header (as nginx's `ngx.header[name] = ""`).
    set: Vec<(String, Template)>,
    remove: Vec<String>,
    /// `body`, base64-decoded when `body_base64`.
    pub body: Option<Vec<u8>>,
    vars: Option<Expr>,
    filters: Vec<Filter>,
    max_resp_body_size: usize,
}

fn header_name_ok(name: &str) -> bool {
    !name.is_empty() && !name.contains(':')
}

/// A header value from the schema's `string | number`.
fn header_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `headers` in either of APISIX's forms: `{add, set, remove}` or the old flat `{name: value}`.
fn parse_headers(conf: &mut ResponseRewriteConf, v: &Value, path: &str, errors: &mut Vec<Problem>) {
    let Value::Object(map) = v else {
        errors.push(Problem::new(path, "must be an object"));
        return;
    };
    let new_form = ["add", "set", "remove"]
        .iter()
        .any(|k| map.get(*k).is_some_and(|v| v.is_array() || v.is_object()));
    if !new_form {
        if map.is_empty() {
            errors.push(Problem::new(path, "must have at least one header"));
        }
        for (name, value) in map {
            if name.is_empty() {
                errors.push(Problem::new(path, "invalid field length in header"));
                continue;
            }
            if name.contains(':') {
                errors.push(Problem::new(
                    format!("{path}.{name}"),
                    "a header name may not contain `:`",
                ));
                continue;
            }
            match header_value(value) {
                Some(s) => conf.set.push((name.clone(), Template::parse(&s))),
                None => errors.push(Problem::new(
                    format!("{path}.{name}"),
                    "invalid type as header value (string or number expected)",
                )),
            }
        }
        return;
    }
    for (key, value) in map {
        let at = format!("{path}.{key}");
        match key.as_str() {
            "add" => {
                let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
                    errors.push(Problem::new(
                        at,
                        "must be a non-empty array of `Name: value`",
                    ));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{at}[{i}]");
                    // APISIX's pattern `^[^:]+:[^:]*[^/]$`, then `^([^:\s]+)\s*:\s*([^:]+)$`.
                    let parsed = item.as_str().and_then(|s| {
                        let (n, v) = s.split_once(':')?;
                        let (n, v) = (n.trim_end(), v.trim_start());
                        let ok = !n.is_empty()
                            && !n.contains(char::is_whitespace)
                            && !v.is_empty()
                            && !v.contains(':')
                            && !s.ends_with('/');
                        ok.then(|| (n.to_owned(), Template::parse(v)))
                    });
                    match parsed {
                        Some(p) => conf.add.push(p),
                        None => errors.push(Problem::new(
                            at,
                            "must be a string `Name: value` (no `:` in the value, not ending in `/`)",
                        )),
                    }
                }
            }
            "set" => {
                let Some(m) = value.as_object().filter(|m| !m.is_empty()) else {
                    errors.push(Problem::new(at, "must be a non-empty object"));
                    continue;
                };
                for (name, v) in m {
                    if !header_name_ok(name) {
                        errors.push(Problem::new(
                            format!("{at}.{name}"),
                            "invalid header name (empty or containing `:`)",
                        ));
                        continue;
                    }
                    match header_value(v) {
                        Some(s) => conf.set.push((name.clone(), Template::parse(&s))),
                        None => errors.push(Problem::new(
                            format!("{at}.{name}"),
                            "must be a string or a number",
                        )),
                    }
                }
            }
            "remove" => {
                let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
                    errors.push(Problem::new(
                        at,
                        "must be a non-empty array of header names",
                    ));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().filter(|s| header_name_ok(s)) {
                        Some(s) => conf.remove.push(s.to_owned()),
                        None => errors.push(Problem::new(
                            format!("{at}[{i}]"),
                            "must be a header name (a string without `:`)",
                        )),
                    }
                }
            }
            other => errors.push(Problem::new(
                at,
                format!("unknown attribute `{other}` (expected add, set or remove)"),
            )),
        }
    }
}

/// PCRE option letters (`ngx.re`) to a compiled regex.
fn compile_filter(f: &RawFilter, at: &str) -> Result<Filter, Problem> {
    if f.regex.is_empty() {
        return Err(Problem::new(format!("{at}.regex"), "must not be empty"));
    }
    let mut b = RegexBuilder::new(&f.regex);
    for o in f.options.chars() {
        match o {
            'i' => {
                b.case_insensitive(true);
            }
            'm' => {
                b.multi_line(true);
            }
            's' => {
                b.dot_matches_new_line(true);
            }
            'x' => {
                b.ignore_whitespace(true);
            }
            // JIT, compile once, UTF-8: how PCRE runs, not what matches.
            'j' | 'o' | 'u' => {}
            other => {
                return Err(Problem::new(
                    format!("{at}.options"),
                    format!("regex option `{other}` is not supported (i, m, s, x, j, o, u)"),
                ));
            }
        }
    }
    let regex = b.build().map_err(|e| {
        Problem::new(
            format!("{at}.regex"),
            format!("regex \"{}\" validation failed: {e}", f.regex),
        )
    })?;
    Ok(Filter {
        regex,
        global: f.scope == Scope::Global,
        replace: f.replace.as_bytes().to_vec(),
    })
}

impl ResponseRewriteConf {
    fn parse(value: Value, path: &str) -> Result<ResponseRewriteConf, Vec<Problem>> {
        let raw: Raw = crate::pipeline::registry::deserialize(value, path)?;
        let mut errors = Vec::new();
        let mut conf = ResponseRewriteConf {
            status_code: None,
            add: Vec::new(),
            set: Vec::new(),
            remove: Vec::new(),
            body: None,
            vars: None,
            filters: Vec::new(),
            max_resp_body_size: usize::MAX,
        };
        if let Some(s) = raw.status_code {
            match u16::try_from(s) {
                Ok(s) if (200..=598).contains(&s) => conf.status_code = Some(s),
                _ => errors.push(Problem::new(
                    format!("{path}.status_code"),
                    format!("expected {s} to be between 200 and 598"),
                )),
            }
        }
        if let Some(h) = &raw.headers {
            parse_headers(&mut conf, h, &format!("{path}.headers"), &mut errors);
        }
        if raw.body.is_some() && raw.filters.is_some() {
            errors.push(Problem::new(
                format!("{path}.filters"),
                "`body` and `filters` exclude each other",
            ));
        }
        match (raw.body, raw.body_base64) {
            (Some(b), true) => {
                match base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .ok()
                    .filter(|_| !b.is_empty())
                {
                    Some(d) => conf.body = Some(d),
                    None => errors.push(Problem::new(
                        format!("{path}.body"),
                        "invalid base64 content",
                    )),
                }
            }
            (None, true) => errors.push(Problem::new(
                format!("{path}.body"),
                "invalid base64 content (body_base64 without a body)",
            )),
            (b, false) => conf.body = b.map(String::into_bytes),
        }
        if let Some(v) = &raw.vars {
            match Expr::compile(v) {
                Ok(e) => conf.vars = Some(e),
                Err(e) => errors.push(Problem::new(
                    format!("{path}.vars{}", e.at),
                    format!("failed to validate the 'vars' expression: {}", e.message),
                )),
            }
        }
        if let Some(filters) = &raw.filters {
            if filters.is_empty() {
                errors.push(Problem::new(
                    format!("{path}.filters"),
                    "must have at least one filter",
                ));
            }
            for (i, f) in filters.iter().enumerate() {
                match compile_filter(f, &format!("{path}.filters[{i}]")) {
                    Ok(f) => conf.filters.push(f),
                    Err(p) => errors.push(p),
                }
            }
        }
        if raw.max_resp_body_size < 1 {
            errors.push(Problem::new(
                format!("{path}.max_resp_body_size"),
                "must be at least 1",
            ));
        }
        conf.max_resp_body_size = usize::try_from(raw.max_resp_body_size).unwrap_or(usize::MAX);
        if errors.is_empty() {
            Ok(conf)
        } else {
            Err(errors)
        }
    }

    fn changes_body(&self) -> bool {
        self.body.is_some() || !self.filters.is_empty()
    }
}

/// The shard-local part: the attributes, with header names shared into the response context
/// without copying.
pub struct ResponseRewrite {
    conf: Arc<ResponseRewriteConf>,
    set_names: Vec<Rc<str>>,
    remove_names: Vec<Rc<str>>,
}

/// What `body_filter` keeps between pieces of one response when `filters` need the whole body.
struct HeldBody(Vec<u8>);

/// Response headers that describe the upstream's body, dropped when the body is replaced (as
/// APISIX's `clear_header_as_body_modified`).
const BODY_HEADERS: [&str; 3] = ["content-encoding", "last-modified", "etag"];

impl Plugin for ResponseRewrite {
    const NAME: &'static str = "response-rewrite";
    const PRIORITY: i32 = 899;
    const PHASES: Phases = Phases::HEADER_FILTER.with(Phases::BODY_FILTER);
    type Conf = ResponseRewriteConf;
    type Instance = Arc<ResponseRewriteConf>;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<ResponseRewriteConf, Vec<Problem>> {
        ResponseRewriteConf::parse(value, path)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(
        conf: Arc<ResponseRewriteConf>,
        _global: &(),
        _path: &str,
    ) -> Result<Arc<ResponseRewriteConf>, String> {
        Ok(conf)
    }
    fn fingerprint(_instance: &Arc<ResponseRewriteConf>) -> u64 {
        // No shard-local state worth keeping across versions.
        0
    }
    fn attach(instance: Arc<Arc<ResponseRewriteConf>>, _shard: &()) -> Self {
        let conf = (*instance).clone();
        ResponseRewrite {
            set_names: conf.set.iter().map(|(n, _)| Rc::from(n.as_str())).collect(),
            remove_names: conf.remove.iter().map(|n| Rc::from(n.as_str())).collect(),
            conf,
        }
    }

    fn header_filter(&self, resp: &mut ResponseCtx<'_>) -> Result<(), crate::error::Error> {
        let conf = &*self.conf;
        if let Some(vars) = &conf.vars
            && !vars.eval(&*resp)
        {
            return Ok(());
        }
        if let Some(s) = conf.status_code {
            resp.status = s;
        }
        if conf.changes_body() {
            let encoded = resp
                .header("content-encoding")
                .is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity"));
            if conf.body.is_none() && encoded {
                tracing::warn!(
                    plugin = Self::NAME,
                    "filters not applied: the upstream body is compressed (Content-Encoding)"
                );
            } else {
                resp.filter_body = true;
                for h in BODY_HEADERS {
                    resp.remove_header(&Rc::from(h));
                }
            }
        }
        // add, then set, then remove, as APISIX.
        for (name, value) in &conf.add {
            let v = value.render(&*resp);
            resp.add_headers.push((name.clone(), v));
        }
        for ((_, value), name) in conf.set.iter().zip(&self.set_names) {
            let v = value.render(&*resp);
            if v.is_empty() {
                resp.remove_header(name);
            } else {
                resp.set_header(name, v);
            }
        }
        for name in &self.remove_names {
            resp.remove_header(name);
        }
        Ok(())
    }

    fn body_filter(&self, chunk: &mut BodyChunk<'_>, scratch: &mut RequestScratch) {
        let conf = &*self.conf;
        if let Some(body) = &conf.body {
            // The upstream's body is read to its end (keeping its connection reusable) and
            // replaced by ours on the last piece.
            chunk.data.clear();
            if chunk.last {
                chunk.data.extend_from_slice(body);
            }
            return;
        }
        if conf.filters.is_empty() {
            return;
        }
        let max = conf.max_resp_body_size;
        if !chunk.last {
            let held = match scratch.get_mut::<HeldBody>() {
                Some(h) => h,
                None => {
                    scratch.put(HeldBody(Vec::new()));
                    match scratch.get_mut::<HeldBody>() {
                        Some(h) => h,
                        None => return,
                    }
                }
            };
            let room = max.saturating_sub(held.0.len());
            held.0
                .extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
            chunk.data.clear();
            return;
        }
        let mut body = scratch.take::<HeldBody>().map(|h| h.0).unwrap_or_default();
        body.extend_from_slice(chunk.data);
        body.truncate(max);
        for f in &conf.filters {
            let replaced = if f.global {
                f.regex.replace_all(&body, &f.replace[..])
            } else {
                f.regex.replace(&body, &f.replace[..])
            };
            if let std::borrow::Cow::Owned(b) = replaced {
                body = b;
            }
        }
        *chunk.data = body;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ResponseRewriteConf, Vec<Problem>> {
        ResponseRewriteConf::parse(v, "routes[0].plugins.response-rewrite")
    }

    fn err_paths(v: Value) -> Vec<(String, String)> {
        parse(v)
            .unwrap_err()
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect()
    }

    #[test]
    fn apisix_documentation_examples_are_accepted() {
        let c = parse(serde_json::json!({
            "body": "{\"code\":\"ok\",\"message\":\"new json body\"}",
            "headers": { "set": { "X-Server-id": 3, "X-Server-status": "on",
                                  "X-Server-balancer-addr": "$balancer_ip:$balancer_port" } },
            "vars": [["status", "==", 200]]
        }))
        .unwrap();
        assert_eq!(c.set.len(), 3);
        assert!(c.vars.is_some());
        let c = parse(serde_json::json!({
            "filters": [{ "regex": "X-Amzn-Trace-Id", "scope": "global", "replace": "X-Amzn-Trace-Id-Replace" }]
        }))
        .unwrap();
        assert!(c.filters[0].global);
        let c = parse(serde_json::json!({ "body": "SGVsbG8K", "body_base64": true })).unwrap();
        assert_eq!(c.body.as_deref(), Some(&b"Hello\n"[..]));
        // The old flat headers form.
        let c = parse(serde_json::json!({ "headers": { "X-Server-id": 3, "Content-Type": "" } }))
            .unwrap();
        assert_eq!(c.set.len(), 2);
        let c = parse(
            serde_json::json!({ "headers": { "add": ["X-Server-test:a"], "remove": ["Server"] } }),
        )
        .unwrap();
        assert_eq!((c.add.len(), c.remove.len()), (1, 1));
        assert_eq!(c.add[0].0, "X-Server-test");
    }

    #[test]
    fn invalid_attributes_are_refused_with_their_path() {
        let base = "routes[0].plugins.response-rewrite";
        let cases = [
            (
                serde_json::json!({ "status_code": 599 }),
                format!("{base}.status_code"),
                "598",
            ),
            (
                serde_json::json!({ "status_code": 199 }),
                format!("{base}.status_code"),
                "200",
            ),
            (
                serde_json::json!({ "body": 1 }),
                format!("{base}.body"),
                "string",
            ),
            (
                serde_json::json!({ "headers": { "": 2 } }),
                format!("{base}.headers"),
                "invalid field length",
            ),
            (
                serde_json::json!({ "headers": { "X-Name": [] } }),
                format!("{base}.headers.X-Name"),
                "header value",
            ),
            (
                serde_json::json!({ "body": "a", "body_base64": true }),
                format!("{base}.body"),
                "base64",
            ),
            (
                serde_json::json!({ "body": "", "body_base64": true }),
                format!("{base}.body"),
                "base64",
            ),
            (
                serde_json::json!({ "body_base64": true }),
                format!("{base}.body"),
                "base64",
            ),
            (
                serde_json::json!({ "vars": ["status", "==", 200] }),
                format!("{base}.vars"),
                "vars",
            ),
            (
                serde_json::json!({ "body": "x", "filters": [{"regex": "a", "replace": "b"}] }),
                format!("{base}.filters"),
                "exclude",
            ),
            (
                serde_json::json!({ "filters": [] }),
                format!("{base}.filters"),
                "at least one",
            ),
            (
                serde_json::json!({ "filters": [{"regex": "", "replace": "b"}] }),
                format!("{base}.filters[0].regex"),
                "empty",
            ),
            (
                serde_json::json!({ "filters": [{"regex": "(", "replace": "b"}] }),
                format!("{base}.filters[0].regex"),
                "validation failed",
            ),
            (
                serde_json::json!({ "filters": [{"regex": "a"}] }),
                base.to_string(),
                "replace",
            ),
            (
                serde_json::json!({ "filters": [{"regex": "a", "replace": "b", "scope": "all"}] }),
                format!("{base}.filters[0].scope"),
                "unknown variant",
            ),
            (
                serde_json::json!({ "filters": [{"regex": "a", "replace": "b", "options": "jz"}] }),
                format!("{base}.filters[0].options"),
                "`z`",
            ),
            (
                serde_json::json!({ "headers": { "add": ["NoColon"] } }),
                format!("{base}.headers.add[0]"),
                "Name: value",
            ),
            (
                serde_json::json!({ "headers": { "remove": ["A:b"] } }),
                format!("{base}.headers.remove[0]"),
                "header name",
            ),
            (
                serde_json::json!({ "max_resp_body_size": 0 }),
                format!("{base}.max_resp_body_size"),
                "at least 1",
            ),
            (
                serde_json::json!({ "colour": "red" }),
                base.to_string(),
                "colour",
            ),
        ];
        for (v, path, msg) in cases {
            let errs = err_paths(v.clone());
            assert!(
                errs.iter()
                    .any(|(p, m)| p.starts_with(&path) && m.contains(msg)),
                "{v}: {errs:?} (wanted {path}: {msg})"
            );
        }
    }

    struct Vars;
    impl VarSource for Vars {
        fn var(&self, name: &str) -> Option<&[u8]> {
            match name {
                "remote_addr" => Some(b"127.0.0.1"),
                "uri" => Some(b"/x"),
                _ => None,
            }
        }
    }

    #[test]
    fn header_templates_resolve_variables_as_apisix() {
        let cases = [
            ("$remote_addr", "127.0.0.1"),
            (
                "from $remote_addr to $balancer_ip:$balancer_port",
                "from 127.0.0.1 to :",
            ),
            ("${uri}/a", "/x/a"),
            ("${ nope ?? fallback }!", "fallback!"),
            ("cost \\$5", "cost \\$5"),
            ("plain", "plain"),
            ("$", "$"),
            ("é$uri", "é/x"),
        ];
        for (t, want) in cases {
            assert_eq!(Template::parse(t).render(&Vars), want, "{t}");
        }
    }

    #[test]
    fn filters_rewrite_the_held_body_once_or_globally_and_truncate_first() {
        let conf = parse(serde_json::json!({
            "filters": [
                { "regex": "hello", "replace": "HELLO" },
                { "regex": "o", "scope": "global", "replace": "0", "options": "i" }
            ],
            "max_resp_body_size": 20
        }))
        .unwrap();
        let p = ResponseRewrite::attach(Arc::new(Arc::new(conf)), &());
        let mut scratch = RequestScratch::default();
        let mut out = Vec::new();
        for (piece, last) in [
            (&b"hello world, "[..], false),
            (b"hello you, and more", true),
        ] {
            let mut data = piece.to_vec();
            p.body_filter(
                &mut BodyChunk {
                    data: &mut data,
                    last,
                },
                &mut scratch,
            );
            out.extend_from_slice(&data);
        }
        // Truncated to 20 bytes ("hello world, hello y"), then "hello"->"HELLO" once, o/O->0.
        assert_eq!(String::from_utf8(out).unwrap(), "HELL0 w0rld, hell0 y");
    }
}
