//! APISIX's `proxy-rewrite` (priority 1008, `rewrite` phase): what the upstream receives instead of
//! the client's request: `uri` (a `$var` template) or `regex_uri` (pattern/replacement pairs, the
//! first matching pattern wins, `$1`/`${1}` for its captures), `host`, `method`, and
//! `headers.add/set/remove` (or the older flat `headers: {name: value}` form, which sets), with
//! `$var` and `$1` in header values.
//!
//! # The rewritten path stays a safe normal form
//!
//! The client's path was normalised before routing (`http1::path`), and `$uri` and the captures
//! of `regex_uri` are that decoded normal form. Every value inserted into the new uri (a variable, a
//! capture, the unmatched rest of the path) is percent-encoded first (`?`, `#`, `%`, `;`, `\` ...
//! included), so it can neither introduce a query nor be decoded twice; the configured literal
//! text is taken as written. The path part is then normalised again with the same rules as a
//! client's path: dot-segments resolved, an encoded `/` (`%2F`), a backslash, a control byte or a
//! `..` above the root refused with 400 (`bad_path`, logged), and the normal form re-encoded for
//! the upstream. So the upstream sees exactly the path the gateway computed, and whatever a client
//! puts into a capture cannot widen it.
//!
//! `use_real_request_uri_unsafe: true` is refused: it would send the raw request target and undo
//! that normalisation.

use std::rc::Rc;
use std::sync::Arc;

use regex::bytes::{CaptureLocations, Regex};
use serde::Deserialize;

use crate::error::Error;
use crate::http1::path::{Normal, encode_into, normalize};
use crate::pipeline::{Ctx, HeaderValue, PhaseResult, Phases, Plugin, Problem, Step};
use crate::plugins::vars::{Piece, Template, VarRef};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    regex_uri: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    use_real_request_uri_unsafe: bool,
}

/// APISIX's method enum.
const METHODS: [&str; 14] = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK",
    "UNLOCK", "PATCH", "TRACE",
];

/// One piece of a `regex_uri` replacement (ngx.re.sub's template: `$N`, `${N}`, `$$`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repl {
    Lit(String),
    Group(usize),
}

/// A header value: a template over variables and `regex_uri` captures.
#[derive(Clone, Debug)]
pub struct ValueTpl {
    pub template: Template,
    /// The value when it has no variable (sent without building a string per request).
    pub fixed: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Headers {
    pub add: Vec<(String, ValueTpl)>,
    pub set: Vec<(String, ValueTpl)>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

/// The validated attributes.
#[derive(Debug, Clone)]
pub struct ProxyRewriteConf {
    pub uri: Option<Template>,
    pub regex_uri: Vec<(String, Vec<Repl>)>,
    pub host: Option<String>,
    pub method: Option<&'static str>,
    pub headers: Headers,
}

/// ngx.re.sub's replacement: `$0`..`$N`, `${N}`, `$$` for a dollar; any other `$` is an error.
fn parse_repl(s: &str) -> Result<Vec<Repl>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let n = s[i..].chars().next().map_or(1, char::len_utf8);
            lit.push_str(&s[i..i + n]);
            i += n;
            continue;
        }
        let (digits, next) = match b.get(i + 1) {
            Some(b'$') => {
                lit.push('$');
                i += 2;
                continue;
            }
            Some(b'{') => {
                let start = i + 2;
                let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
                if end == start || b.get(end) != Some(&b'}') {
                    return Err(format!("invalid capturing variable name at `{}`", &s[i..]));
                }
                (&s[start..end], end + 1)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = i + 1;
                let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
                (&s[start..end], end)
            }
            _ => return Err(format!("invalid capturing variable name at `{}`", &s[i..])),
        };
        let n: usize = digits
            .parse()
            .map_err(|_| format!("capture number `{digits}` too large"))?;
        if !lit.is_empty() {
            out.push(Repl::Lit(std::mem::take(&mut lit)));
        }
        out.push(Repl::Group(n));
        i = next;
    }
    if !lit.is_empty() {
        out.push(Repl::Lit(lit));
    }
    Ok(out)
}

fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers a rewrite must not touch: they frame the request or the connection, or are set by the
/// gateway itself (`host` has its own attribute).
fn reserved_header(lower: &str) -> bool {
    matches!(
        lower,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-connection"
            | "expect"
    )
}

fn value_tpl(v: &serde_json::Value, at: &str, problems: &mut Vec<Problem>) -> Option<ValueTpl> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Array(_) => {
            problems.push(Problem::new(
                at,
                "a list of values is not supported by shardgate: give one string",
            ));
            return None;
        }
        other => {
            problems.push(Problem::new(
                at,
                format!("must be a string or a number (got {other})"),
            ));
            return None;
        }
    };
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        problems.push(Problem::new(at, "invalid value character in header"));
        return None;
    }
    let template = Template::parse(&s);
    let fixed = (!template.has_vars()).then(|| {
        template
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Lit(l) => l.as_str(),
                Piece::Var(_) => "",
            })
            .collect()
    });
    Some(ValueTpl { template, fixed })
}

fn header_map(
    map: &serde_json::Map<String, serde_json::Value>,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(String, ValueTpl)> {
    if map.is_empty() {
        problems.push(Problem::new(at, "must have at least one header"));
    }
    let mut out = Vec::new();
    for (name, v) in map {
        let here = format!("{at}.{name}");
        if !valid_field_name(name) {
            problems.push(Problem::new(&here, "invalid field character in header"));
            continue;
        }
        if reserved_header(&name.to_ascii_lowercase()) {
            problems.push(Problem::new(
                &here,
                "this header frames the request or is the gateway's own (use `host` for Host); \
                 shardgate does not let a rewrite change it",
            ));
            continue;
        }
        if let Some(t) = value_tpl(v, &here, problems) {
            out.push((name.clone(), t));
        }
    }
    out
}

pub fn parse_conf(
    value: serde_json::Value,
    path: &str,
    _warnings: &mut Vec<Problem>,
) -> Result<ProxyRewriteConf, Vec<Problem>> {
    if value.as_object().is_some_and(|m| m.is_empty()) {
        return Err(vec![Problem::new(
            path,
            "at least one of uri, regex_uri, host, method, headers is required",
        )]);
    }
    let raw: Raw = crate::pipeline::registry::deserialize(value, path)?;
    let mut problems = Vec::new();
    if raw.use_real_request_uri_unsafe {
        problems.push(Problem::new(
            format!("{path}.use_real_request_uri_unsafe"),
            "`true` is refused by shardgate: the raw request target would undo the path \
             normalisation routes matched on",
        ));
    }
    if let Some(u) = &raw.uri
        && (u.is_empty() || u.len() > 4096 || !u.starts_with('/'))
    {
        problems.push(Problem::new(
            format!("{path}.uri"),
            "must start with `/` and be 1 to 4096 characters",
        ));
    }
    let mut regex_uri = Vec::new();
    if let Some(r) = &raw.regex_uri {
        let at = format!("{path}.regex_uri");
        if r.len() < 2 || r.len() % 2 != 0 {
            problems.push(Problem::new(
                &at,
                "The length of regex_uri should be an even number (pattern, replacement pairs)",
            ));
        } else {
            for (i, pair) in r.chunks(2).enumerate() {
                let re = Regex::new(&pair[0]);
                let repl = parse_repl(&pair[1]);
                match (re, repl) {
                    (Ok(re), Ok(repl)) => {
                        if let Some(n) = repl.iter().find_map(|p| match p {
                            Repl::Group(n) if *n >= re.captures_len() => Some(*n),
                            _ => None,
                        }) {
                            problems.push(Problem::new(
                                format!("{at}[{}]", 2 * i + 1),
                                format!("`${n}`: the pattern has no capture group {n}"),
                            ));
                        } else {
                            regex_uri.push((pair[0].clone(), repl));
                        }
                    }
                    (Err(e), _) => problems.push(Problem::new(
                        format!("{at}[{}]", 2 * i),
                        format!("invalid regex_uri pattern: {e}"),
                    )),
                    (_, Err(e)) => problems.push(Problem::new(
                        format!("{at}[{}]", 2 * i + 1),
                        format!("invalid regex_uri replacement: {e}"),
                    )),
                }
            }
        }
    }
    if let Some(h) = &raw.host {
        let (name, port) = match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h.as_str(), None),
        };
        let ok_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        let ok_port = port
            .is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
        if !ok_name || !ok_port {
            problems.push(Problem::new(
                format!("{path}.host"),
                "must match ^[0-9a-zA-Z-.]+(:\\d{1,5})?$",
            ));
        }
    }
    let method = match raw.method.as_deref() {
        None => None,
        Some("HEAD") => {
            problems.push(Problem::new(
                format!("{path}.method"),
                "`HEAD` is refused by shardgate: the client's request expects a body HEAD's \
                 answer does not have",
            ));
            None
        }
        Some(m) => match METHODS.iter().find(|x| **x == m) {
            Some(x) => Some(*x),
            None => {
                problems.push(Problem::new(
                    format!("{path}.method"),
                    format!("must be one of {} (got `{m}`)", METHODS.join(", ")),
                ));
                None
            }
        },
    };
    let mut headers = Headers::default();
    if let Some(h) = &raw.headers {
        let at = format!("{path}.headers");
        let new_form = ["add", "set", "remove"]
            .iter()
            .any(|k| h.get(*k).is_some_and(|v| v.is_object() || v.is_array()));
        if h.is_empty() {
            problems.push(Problem::new(&at, "must have at least one header"));
        } else if new_form {
            for (k, v) in h {
                let here = format!("{at}.{k}");
                match (k.as_str(), v) {
                    ("add", serde_json::Value::Object(m)) => {
                        headers.add = header_map(m, &here, &mut problems)
                    }
                    ("set", serde_json::Value::Object(m)) => {
                        headers.set = header_map(m, &here, &mut problems)
                    }
                    ("remove", serde_json::Value::Array(names)) => {
                        if names.is_empty() {
                            problems.push(Problem::new(&here, "must have at least one name"));
                        }
                        for (i, n) in names.iter().enumerate() {
                            match n.as_str() {
                                Some(n) if valid_field_name(n) => {
                                    let lower = n.to_ascii_lowercase();
                                    if reserved_header(&lower) {
                                        problems.push(Problem::new(
                                            format!("{here}[{i}]"),
                                            "this header frames the request or is the \
                                             gateway's own; a rewrite does not remove it",
                                        ));
                                    } else {
                                        headers.remove.push(lower);
                                    }
                                }
                                _ => problems.push(Problem::new(
                                    format!("{here}[{i}]"),
                                    "must be a header name (a string without `:`)",
                                )),
                            }
                        }
                    }
                    ("add" | "set", _) => {
                        problems.push(Problem::new(&here, "must be an object of headers"))
                    }
                    ("remove", _) => {
                        problems.push(Problem::new(&here, "must be a list of header names"))
                    }
                    _ => problems.push(Problem::new(
                        &here,
                        format!(
                            "unknown field `{k}`, expected one of `add`, `set`, `remove` (or \
                             the flat form `{{name: value}}` alone)"
                        ),
                    )),
                }
            }
        } else {
            headers.set = header_map(h, &at, &mut problems);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ProxyRewriteConf {
        uri: raw.uri.as_deref().map(Template::parse),
        regex_uri,
        host: raw.host,
        method,
        headers,
    })
}

/// Built once per config version: the regexes compiled.
pub struct ProxyRewriteInstance {
    conf: Arc<ProxyRewriteConf>,
    regexes: Vec<Regex>,
    /// Per pattern, its literal when it has the shape `^literal(.*)` (see [`literal_prefix`]).
    prefixes: Vec<Option<Box<[u8]>>>,
    fingerprint: u64,
}

/// The literal of a `regex_uri` pattern of the shape `^literal(.*)` or `^literal(.*)$` (the one
/// most APISIX configs use), with a literal of letters, digits, `/`, `_` and `-` only. Such a
/// pattern is matched by comparing bytes when the rest of the path is ASCII without a line feed:
/// there `.` matches every byte, so the captures are exactly the regex engine's, for a tenth of
/// its cost; any other path goes to the engine.
fn literal_prefix(pattern: &str) -> Option<Box<[u8]>> {
    let body = pattern.strip_prefix('^')?;
    let lit = body
        .strip_suffix("(.*)$")
        .or_else(|| body.strip_suffix("(.*)"))?;
    lit.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        .then(|| lit.as_bytes().into())
}

/// Whether `path` matches `^lit(.*)`: None when it cannot (no such prefix), Some(true) when it
/// does with the captures [`literal_prefix`] describes, Some(false) when only the regex engine can
/// tell (a byte outside ASCII or a line feed in the rest).
fn prefix_match(lit: &[u8], path: &[u8]) -> Option<bool> {
    let rest = path.strip_prefix(lit)?;
    Some(rest.iter().all(|b| b.is_ascii() && *b != b'\n'))
}

/// Which `regex_uri` pattern matched, and how.
#[derive(Clone, Copy)]
enum Matched {
    /// By the regex engine: the captures are in `locs[i]`.
    Regex(usize),
    /// By its literal prefix (group 1 is the rest of the path).
    Prefix(usize),
}

impl Matched {
    fn index(self) -> usize {
        match self {
            Matched::Regex(i) | Matched::Prefix(i) => i,
        }
    }
}

/// The shard-local part: header names and fixed values as `Rc<str>` (pushed per request without
/// allocating), reusable capture slots and buffers.
pub struct ProxyRewrite {
    inst: Arc<ProxyRewriteInstance>,
    host: Option<Rc<str>>,
    add: Vec<(Rc<str>, Option<Rc<str>>)>,
    set: Vec<(Rc<str>, Option<Rc<str>>)>,
    /// Lower-case names of `set` and `remove`: the client's copies are not sent.
    drop: Vec<Rc<str>>,
    locs: Vec<std::cell::RefCell<CaptureLocations>>,
    buf: std::cell::RefCell<(Vec<u8>, Vec<u8>)>,
}

/// Appends `value` percent-encoded as a path piece (see the module doc: inserted values never
/// bring a `?` or an escape of their own).
fn push_encoded(out: &mut Vec<u8>, value: &[u8]) {
    encode_into(value, out);
}

impl ProxyRewrite {
    /// `out` = the new origin-form target (path encoded, query), or an error for a path with no
    /// safe normal form.
    fn build_target(&self, ctx: &mut Ctx<'_>, matched: Option<Matched>) -> Result<bool, Error> {
        let conf = &*self.inst.conf;
        let mut bufs = self.buf.borrow_mut();
        let (raw, norm) = &mut *bufs;
        raw.clear();
        if let Some(t) = &conf.uri {
            for p in &t.pieces {
                match p {
                    Piece::Lit(s) => raw.extend_from_slice(s.as_bytes()),
                    Piece::Var(v) => {
                        if let Some(value) = crate::plugins::vars::resolve(ctx, v) {
                            push_encoded(raw, value);
                        }
                    }
                }
            }
        } else if let Some(m) = matched {
            let path = ctx.route_path();
            let (start, end) = self.group(m, 0, path.len()).unwrap_or((0, 0));
            // ngx.re.sub: the first match is replaced, the rest of the path kept.
            push_encoded(raw, &path[..start]);
            for piece in &conf.regex_uri[m.index()].1 {
                match piece {
                    Repl::Lit(s) => raw.extend_from_slice(s.as_bytes()),
                    Repl::Group(n) => {
                        if let Some((a, b)) = self.group(m, *n, path.len()) {
                            push_encoded(raw, &path[a..b]);
                        }
                    }
                }
            }
            push_encoded(raw, &path[end..]);
        } else {
            return Ok(false);
        }
        // The first `?` can only be a literal of the config: inserted values are encoded.
        let (path_part, query_part) = match raw.iter().position(|b| *b == b'?') {
            Some(q) => (&raw[..q], Some(&raw[q + 1..])),
            None => (&raw[..], None),
        };
        let normal = match normalize(path_part, norm) {
            Ok(Normal::AsIs) => path_part,
            Ok(Normal::Rewritten) => &norm[..],
            Err(e) => return Err(Error::Path(e)),
        };
        let mut target = std::mem::take(&mut ctx.outcome().upstream_target);
        target.clear();
        encode_into(normal, &mut target);
        if let Some(q) = query_part {
            target.push(b'?');
            // Control bytes in the query are encoded so they never reach the request line.
            for &b in q {
                if b < 0x20 || b == 0x7f || b == b' ' || b == b'#' {
                    target.extend_from_slice(format!("%{b:02X}").as_bytes());
                } else {
                    target.push(b);
                }
            }
        }
        if let Some(args) = ctx.query() {
            target.push(if query_part.is_some() { b'&' } else { b'?' });
            target.extend_from_slice(args);
        }
        let o = ctx.outcome();
        o.upstream_target = target;
        o.target_rewritten = true;
        Ok(true)
    }

    /// The index of the first `regex_uri` pattern that matches `path` (its captures in `locs`).
    fn matched_index(&self, path: &[u8]) -> Option<Matched> {
        for (i, re) in self.inst.regexes.iter().enumerate() {
            if let Some(Some(lit)) = self.inst.prefixes.get(i) {
                match prefix_match(lit, path) {
                    Some(true) => return Some(Matched::Prefix(i)),
                    // Without the literal the pattern cannot match.
                    None => continue,
                    Some(false) => {}
                }
            }
            let mut locs = self.locs[i].borrow_mut();
            if re.captures_read(&mut locs, path).is_some() {
                return Some(Matched::Regex(i));
            }
        }
        None
    }

    /// Capture group `n` of the match, as a range of the path.
    fn group(&self, m: Matched, n: usize, path_len: usize) -> Option<(usize, usize)> {
        match m {
            Matched::Regex(i) => self.locs[i].borrow().get(n),
            Matched::Prefix(i) => {
                let lit = self.inst.prefixes.get(i)?.as_ref()?;
                match n {
                    0 => Some((0, path_len)),
                    1 => Some((lit.len(), path_len)),
                    _ => None,
                }
            }
        }
    }

    /// A header value: captures (`$1`) from `regex_uri`, then variables.
    fn header_value(
        &self,
        ctx: &mut Ctx<'_>,
        tpl: &ValueTpl,
        fixed: &Option<Rc<str>>,
        matched: Option<Matched>,
    ) -> HeaderValue {
        if let Some(f) = fixed {
            return HeaderValue::Shared(f.clone());
        }
        let mut out = Vec::new();
        for p in &tpl.template.pieces {
            match p {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Var(VarRef::Other(name)) if name.bytes().all(|b| b.is_ascii_digit()) => {
                    let n: usize = name.parse().unwrap_or(usize::MAX);
                    if let Some(m) = matched {
                        let path = ctx.route_path();
                        if let Some((a, b)) = self.group(m, n, path.len()) {
                            out.extend_from_slice(&path[a..b]);
                        }
                    }
                }
                Piece::Var(v) => {
                    if let Some(value) = crate::plugins::vars::resolve(ctx, v) {
                        out.extend_from_slice(value);
                    }
                }
            }
        }
        // A value from the request never carries CR/LF (the head parser refuses them), and the
        // decoded path refuses control bytes; drop them anyway rather than split a header.
        out.retain(|b| *b != b'\r' && *b != b'\n' && *b != 0);
        HeaderValue::Owned(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Plugin for ProxyRewrite {
    const NAME: &'static str = "proxy-rewrite";
    const PRIORITY: i32 = 1008;
    const PHASES: Phases = Phases::REWRITE;
    type Conf = ProxyRewriteConf;
    type Instance = ProxyRewriteInstance;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<ProxyRewriteConf, Vec<Problem>> {
        parse_conf(value, path, warnings)
    }

    fn global() -> Arc<()> {
        Arc::new(())
    }

    fn shard_global(_shard: usize, _global: &Arc<()>) {}

    fn build(
        conf: Arc<ProxyRewriteConf>,
        _global: &(),
        path: &str,
    ) -> Result<ProxyRewriteInstance, String> {
        let mut regexes = Vec::new();
        for (p, _) in &conf.regex_uri {
            regexes.push(Regex::new(p).map_err(|e| format!("{path}.regex_uri: {e}"))?);
        }
        let prefixes = conf
            .regex_uri
            .iter()
            .map(|(p, _)| literal_prefix(p))
            .collect();
        Ok(ProxyRewriteInstance {
            fingerprint: super::limit::conf_hash(&*conf),
            conf,
            regexes,
            prefixes,
        })
    }

    fn fingerprint(instance: &ProxyRewriteInstance) -> u64 {
        instance.fingerprint
    }

    fn attach(inst: Arc<ProxyRewriteInstance>, _shard: &()) -> ProxyRewrite {
        let conf = &*inst.conf;
        let pairs = |v: &[(String, ValueTpl)]| -> Vec<(Rc<str>, Option<Rc<str>>)> {
            v.iter()
                .map(|(n, t)| (Rc::from(n.as_str()), t.fixed.as_deref().map(Rc::from)))
                .collect()
        };
        let drop = conf
            .headers
            .set
            .iter()
            .map(|(n, _)| Rc::from(n.to_ascii_lowercase().as_str()))
            .chain(conf.headers.remove.iter().map(|n| Rc::from(n.as_str())))
            .collect();
        ProxyRewrite {
            host: conf.host.as_deref().map(Rc::from),
            add: pairs(&conf.headers.add),
            set: pairs(&conf.headers.set),
            drop,
            locs: inst
                .regexes
                .iter()
                .map(|r| std::cell::RefCell::new(r.capture_locations()))
                .collect(),
            buf: Default::default(),
            inst,
        }
    }

    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let conf = &*self.inst.conf;
        let matched = if conf.uri.is_none() && !self.inst.regexes.is_empty() {
            self.matched_index(ctx.route_path())
        } else {
            None
        };
        if conf.uri.is_some() || matched.is_some() {
            self.build_target(ctx, matched)?;
        }
        if let Some(h) = &self.host {
            ctx.outcome().upstream_host = Some(h.clone());
        }
        if let Some(m) = conf.method
            && ctx.head().method != crate::http1::Method::Head
        {
            ctx.outcome().upstream_method = Some(m);
        }
        for (i, (name, fixed)) in self.add.iter().enumerate() {
            let v = self.header_value(ctx, &conf.headers.add[i].1, fixed, matched);
            ctx.outcome().named_headers.push((name.clone(), v));
        }
        for (i, (name, fixed)) in self.set.iter().enumerate() {
            let v = self.header_value(ctx, &conf.headers.set[i].1, fixed, matched);
            ctx.outcome().named_headers.push((name.clone(), v));
        }
        let o = ctx.outcome();
        for d in &self.drop {
            o.drop_headers.push(d.clone());
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ProxyRewriteConf, Vec<Problem>> {
        parse_conf(v, "routes[0].plugins.proxy-rewrite", &mut Vec::new())
    }

    #[test]
    fn literal_prefix_matches_as_the_regex_engine_does() {
        assert!(literal_prefix("^/api/(.*)").is_some());
        assert!(literal_prefix("^/a-b_c/(.*)$").is_some());
        for not_literal in [
            "/api/(.*)",
            "^/a.b/(.*)",
            "^/(.*)/x",
            "^/(?i)a(.*)",
            "^/a+(.*)",
            "^/a/(.+)",
        ] {
            assert!(literal_prefix(not_literal).is_none(), "{not_literal}");
        }
        let paths: [&[u8]; 10] = [
            b"/",
            b"/api",
            b"/api/",
            b"/api/x/y",
            b"/apix/y",
            b"/API/x",
            b"/api/\xc3\xa9",
            b"/api/a\nb",
            b"/api/\xff",
            b"/a-b_c/z",
        ];
        for pattern in ["^/(.*)", "^/api/(.*)", "^/api/(.*)$", "^/a-b_c/(.*)"] {
            let lit = literal_prefix(pattern).unwrap();
            let re = Regex::new(pattern).unwrap();
            for path in paths {
                let mut locs = re.capture_locations();
                let by_engine = re.captures_read(&mut locs, path).is_some();
                match prefix_match(&lit, path) {
                    None => assert!(!by_engine, "{pattern} {path:?}"),
                    Some(false) => {}
                    Some(true) => {
                        assert!(by_engine, "{pattern} {path:?}");
                        assert_eq!(locs.get(0), Some((0, path.len())), "{pattern} {path:?}");
                        assert_eq!(
                            locs.get(1),
                            Some((lit.len(), path.len())),
                            "{pattern} {path:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn replacement_templates_parse_as_ngx_re_sub() {
        assert_eq!(
            parse_repl("/v2/$1/${2}x$$").unwrap(),
            [
                Repl::Lit("/v2/".into()),
                Repl::Group(1),
                Repl::Lit("/".into()),
                Repl::Group(2),
                Repl::Lit("x$".into())
            ]
        );
        assert_eq!(
            parse_repl("$12a").unwrap(),
            [Repl::Group(12), Repl::Lit("a".into())]
        );
        assert!(parse_repl("/$x").is_err());
        assert!(parse_repl("/${x}").is_err());
        assert!(parse_repl("/$").is_err());
    }

    #[test]
    fn schema_table() {
        for v in [
            json!({"uri": "/test/home.html"}),
            json!({"uri": "/v2$uri", "host": "api.example.com:8080", "method": "POST"}),
            json!({"regex_uri": ["^/iresty/(.*)/(.*)/(.*)", "/$1_$2_$3"]}),
            json!({"regex_uri": ["^/a/(.*)", "/b/$1", "^/c/(.*)", "/d/${1}"]}),
            json!({"headers": {"X-Api-Version": "v1", "X-Num": 1}}),
            json!({"headers": {"add": {"X-Add": "$remote_addr"}, "set": {"X-Set": "s"}, "remove": ["User-Agent"]}}),
            json!({"host": "localhost"}),
        ] {
            assert!(
                parse(v.clone()).is_ok(),
                "{v}: {:?}",
                parse(v.clone()).err()
            );
        }
        let p = "routes[0].plugins.proxy-rewrite";
        for (v, path, msg) in [
            (json!({}), p.to_string(), "at least one"),
            (
                json!({"uri": "no-slash"}),
                format!("{p}.uri"),
                "start with `/`",
            ),
            (json!({"uri": ""}), format!("{p}.uri"), "start with `/`"),
            (
                json!({"regex_uri": ["^/a"]}),
                format!("{p}.regex_uri"),
                "even number",
            ),
            (
                json!({"regex_uri": ["^/a", "/b", "^/c"]}),
                format!("{p}.regex_uri"),
                "even number",
            ),
            (
                json!({"regex_uri": ["^/a/(", "/b"]}),
                format!("{p}.regex_uri[0]"),
                "invalid regex_uri pattern",
            ),
            (
                json!({"regex_uri": ["^/a/(.*)", "/b/$2"]}),
                format!("{p}.regex_uri[1]"),
                "no capture group 2",
            ),
            (
                json!({"regex_uri": ["^/a/(.*)", "/b/$x"]}),
                format!("{p}.regex_uri[1]"),
                "invalid capturing variable",
            ),
            (json!({"host": "a b"}), format!("{p}.host"), "must match"),
            (
                json!({"host": "a:123456"}),
                format!("{p}.host"),
                "must match",
            ),
            (
                json!({"method": "get"}),
                format!("{p}.method"),
                "must be one of",
            ),
            (json!({"method": "HEAD"}), format!("{p}.method"), "refused"),
            (
                json!({"headers": {}}),
                format!("{p}.headers"),
                "at least one",
            ),
            (
                json!({"headers": {"X:Bad": "v"}}),
                format!("{p}.headers.X:Bad"),
                "invalid field character",
            ),
            (
                json!({"headers": {"X-A": "a\r\nb"}}),
                format!("{p}.headers.X-A"),
                "invalid value character",
            ),
            (
                json!({"headers": {"X-A": true}}),
                format!("{p}.headers.X-A"),
                "string or a number",
            ),
            (
                json!({"headers": {"Content-Length": "1"}}),
                format!("{p}.headers.Content-Length"),
                "frames the request",
            ),
            (
                json!({"headers": {"set": {"Host": "x"}}}),
                format!("{p}.headers.set.Host"),
                "use `host`",
            ),
            (
                json!({"headers": {"add": {"X-A": "1"}, "bogus": {}}}),
                format!("{p}.headers.bogus"),
                "unknown field",
            ),
            (
                json!({"headers": {"remove": []}}),
                format!("{p}.headers.remove"),
                "at least one",
            ),
            (
                json!({"headers": {"remove": ["Transfer-Encoding"]}}),
                format!("{p}.headers.remove[0]"),
                "frames the request",
            ),
            (
                json!({"use_real_request_uri_unsafe": true}),
                format!("{p}.use_real_request_uri_unsafe"),
                "refused",
            ),
            (
                json!({"uri": "/a", "scheme": "https"}),
                format!("{p}.scheme"),
                "unknown field",
            ),
        ] {
            let errs = parse(v.clone()).expect_err(&v.to_string());
            assert!(
                errs.iter()
                    .any(|e| e.path == path && e.message.contains(msg)),
                "{v}: {errs:?}"
            );
        }
    }
}
