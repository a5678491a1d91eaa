//! `redirect`: APISIX's redirect plugin (priority 900, `rewrite`): `http_to_https`, `uri` with
//! variables, `regex_uri`, `ret_code`, `encode_uri`, `append_query_string`.
//!
//! The `uri` template is split into literal parts and variables once per config (APISIX caches
//! the same split per template); a request only looks the variables up and joins.
//!
//! Differences from APISIX: `http_to_https` redirects to the default https port (APISIX may pick
//! one of its `ssl.listen` ports or `plugin_attr.redirect.https_port`; shardgate has neither);
//! control bytes and bytes above 0x7e in the `Location` value are always percent-encoded (a
//! variable such as `$uri` is decoded, and must not be able to inject a header).

use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem, Response, Step};
use crate::route::VarSource;

fn default_ret_code() -> u16 {
    302
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConf {
    #[serde(default = "default_ret_code")]
    pub ret_code: u16,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub regex_uri: Option<Vec<String>>,
    #[serde(default)]
    pub http_to_https: Option<bool>,
    #[serde(default)]
    pub encode_uri: bool,
    #[serde(default)]
    pub append_query_string: bool,
}

/// One piece of a `uri` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// `$name` or `${name}`: a request variable (empty when the request has none).
    Var(String),
}

/// APISIX's template grammar (`redirect.lua`'s `reg`): `\$name` stays literal (backslash
/// included), `${name}` and `$name` are variables, a `$` not followed by a name is literal, and
/// a backslash not followed by `$name` is dropped (it matches no alternative of the pattern).
fn parse_template(t: &str) -> Vec<Part> {
    fn name_len(s: &[u8]) -> usize {
        s.iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count()
    }
    let b = t.as_bytes();
    let mut parts: Vec<Part> = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let n = if b.get(i + 1) == Some(&b'$') {
                    name_len(&b[i + 2..])
                } else {
                    0
                };
                if n > 0 {
                    lit.push_str(&t[i..i + 2 + n]);
                    i += 2 + n;
                } else {
                    i += 1;
                }
            }
            b'$' => {
                if b.get(i + 1) == Some(&b'{') {
                    let n = name_len(&b[i + 2..]);
                    if n > 0 && b.get(i + 2 + n) == Some(&b'}') {
                        if !lit.is_empty() {
                            parts.push(Part::Lit(std::mem::take(&mut lit)));
                        }
                        parts.push(Part::Var(t[i + 2..i + 2 + n].to_owned()));
                        i += 3 + n;
                        continue;
                    }
                }
                let n = name_len(&b[i + 1..]);
                if n > 0 {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(t[i + 1..i + 1 + n].to_owned()));
                    i += 1 + n;
                } else {
                    lit.push('$');
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while i < b.len() && b[i] != b'$' && b[i] != b'\\' {
                    i += 1;
                }
                lit.push_str(&t[start..i]);
            }
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    parts
}

/// Whether the request context computes variable `name` (see `Ctx`'s `VarSource`).
fn known_var(name: &str) -> bool {
    matches!(
        name,
        "uri"
            | "request_uri"
            | "args"
            | "query_string"
            | "host"
            | "request_method"
            | "remote_addr"
            | "server_port"
            | "scheme"
            | "server_protocol"
    ) || ["arg_", "http_", "cookie_"]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
}

/// nginx's template for `regex_uri`'s replacement (`$1`, `${1}`, `$$`) in the regex crate's
/// syntax, where `$1a` would name a group `1a`.
fn replacement(t: &str) -> String {
    let b = t.as_bytes();
    let mut out = String::with_capacity(t.len() + 4);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            if b.get(i + 1) == Some(&b'$') {
                out.push_str("$$");
                i += 2;
                continue;
            }
            let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n > 0 {
                out.push_str("${");
                out.push_str(&t[i + 1..i + 1 + n]);
                out.push('}');
                i += 1 + n;
                continue;
            }
            if b.get(i + 1) == Some(&b'{') {
                let n = b[i + 2..].iter().take_while(|c| c.is_ascii_digit()).count();
                if n > 0 && b.get(i + 2 + n) == Some(&b'}') {
                    out.push_str(&t[i..i + 3 + n]);
                    i += 3 + n;
                    continue;
                }
            }
            // A `$` that starts no group reference: literal.
            out.push_str("$$");
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i] != b'$' {
            i += 1;
        }
        out.push_str(&t[start..i]);
    }
    out
}

#[derive(Debug)]
enum Target {
    Template(Vec<Part>),
    Regex(Regex, String),
    /// `http_to_https: true` (`false` redirects nothing, as APISIX).
    Https,
    Nothing,
}

#[derive(Debug)]
pub struct Redirect {
    target: Target,
    ret_code: u16,
    encode_uri: bool,
    append_query_string: bool,
}

impl Redirect {
    /// APISIX's schema and `check_schema`, each problem at its path; unknown variables in `uri`
    /// are warnings (they expand to nothing, as on APISIX).
    pub fn from_conf(
        conf: &RedirectConf,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<Redirect, Vec<Problem>> {
        let mut problems = Vec::new();
        if conf.ret_code < 200 {
            problems.push(Problem::new(
                format!("{path}.ret_code"),
                format!("expected {} to be at least 200", conf.ret_code),
            ));
        }
        let set = [
            conf.uri.is_some(),
            conf.regex_uri.is_some(),
            conf.http_to_https.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            problems.push(Problem::new(
                path,
                "exactly one of `uri`, `regex_uri` and `http_to_https` is required",
            ));
        }
        if conf.http_to_https == Some(true) && conf.append_query_string {
            problems.push(Problem::new(
                format!("{path}.append_query_string"),
                "only one of `http_to_https` and `append_query_string` can be configured.",
            ));
        }
        let mut target = Target::Nothing;
        if let Some(uri) = &conf.uri {
            if uri.chars().count() < 2 {
                problems.push(Problem::new(
                    format!("{path}.uri"),
                    "must be at least 2 characters",
                ));
            }
            let parts = parse_template(uri);
            for p in &parts {
                if let Part::Var(v) = p
                    && !known_var(v)
                {
                    warnings.push(Problem::new(
                        format!("{path}.uri"),
                        format!(
                            "variable `${v}` is not computed by shardgate: it expands to nothing"
                        ),
                    ));
                }
            }
            target = Target::Template(parts);
        }
        if let Some(r) = &conf.regex_uri {
            if r.len() != 2 {
                problems.push(Problem::new(
                    format!("{path}.regex_uri"),
                    "must be [regular expression, replacement]",
                ));
            } else {
                match Regex::new(&r[0]) {
                    Ok(re) => target = Target::Regex(re, replacement(&r[1])),
                    Err(e) => problems.push(Problem::new(
                        format!("{path}.regex_uri[0]"),
                        format!("invalid regex_uri ({}, {}): {e}", r[0], r[1]),
                    )),
                }
            }
        }
        if conf.http_to_https == Some(true) {
            target = Target::Https;
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Redirect {
            target,
            ret_code: conf.ret_code,
            encode_uri: conf.encode_uri,
            append_query_string: conf.append_query_string,
        })
    }
}

/// nginx's `ngx_escape_uri(..., NGX_ESCAPE_URI)`: space, `#`, `%`, `?`, control bytes and bytes
/// above 0x7e.
fn escape_uri(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        if b <= 0x20 || b >= 0x7f || matches!(b, b'#' | b'%' | b'?') {
            push_pct(b, out);
        } else {
            out.push(b);
        }
    }
}

fn push_pct(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// The `Location` value as text: control bytes and bytes above 0x7e percent-encoded whatever the
/// configuration (a header value must not carry them).
fn header_safe(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if !(0x20..0x7f).contains(&b) {
            push_pct(b, &mut out);
        } else {
            out.push(b);
        }
    }
    // Only ASCII is left.
    String::from_utf8(out).unwrap_or_default()
}

pub struct RedirectPlugin(Arc<Redirect>);

impl Plugin for RedirectPlugin {
    const NAME: &'static str = "redirect";
    const PRIORITY: i32 = 900;
    const PHASES: Phases = Phases::REWRITE;
    type Conf = RedirectConf;
    type Instance = Redirect;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<RedirectConf, Vec<Problem>> {
        let conf: RedirectConf = crate::pipeline::registry::deserialize(value, path)?;
        Redirect::from_conf(&conf, path, warnings)?;
        Ok(conf)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(conf: Arc<RedirectConf>, _global: &(), path: &str) -> Result<Redirect, String> {
        Redirect::from_conf(&conf, path, &mut Vec::new()).map_err(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
    fn fingerprint(_instance: &Redirect) -> u64 {
        0
    }
    fn attach(instance: Arc<Redirect>, _shard: &()) -> Self {
        RedirectPlugin(instance)
    }

    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let r = &*self.0;
        let mut ret_code = r.ret_code;
        let mut location: Vec<u8> = Vec::new();
        match &r.target {
            Target::Nothing => return Ok(Step::Continue),
            Target::Https => {
                // APISIX takes the scheme from X-Forwarded-Proto when the client sends one; with
                // `gateway.trusted_addresses` set, only a listed proxy's is believed (the same
                // decision the forwarding headers sent upstream follow).
                let forwarded = match ctx.peer_trusted() {
                    Some(false) => None,
                    _ => ctx.header("x-forwarded-proto"),
                };
                let https = match forwarded {
                    Some(p) => p == b"https",
                    None => ctx.tls(),
                };
                if https {
                    return Ok(Step::Continue);
                }
                location.extend_from_slice(b"https://");
                location.extend_from_slice(VarSource::var(ctx, "host").unwrap_or_default());
                location.extend_from_slice(VarSource::var(ctx, "request_uri").unwrap_or_default());
                let method = ctx.head().method_span.of(ctx.buf());
                ret_code = if method == b"GET" || method == b"HEAD" {
                    301
                } else {
                    308
                };
            }
            Target::Template(parts) => {
                for p in parts {
                    match p {
                        Part::Lit(s) => location.extend_from_slice(s.as_bytes()),
                        Part::Var(v) => {
                            location.extend_from_slice(VarSource::var(ctx, v).unwrap_or_default())
                        }
                    }
                }
            }
            Target::Regex(re, rep) => {
                let uri = String::from_utf8_lossy(ctx.route_path());
                if !re.is_match(&uri) {
                    return Ok(Step::Continue);
                }
                location = re.replacen(&uri, 1, rep.as_str()).into_owned().into_bytes();
            }
        }
        if r.encode_uri {
            let q = location.iter().position(|b| *b == b'?');
            let (path, rest) = location.split_at(q.unwrap_or(location.len()));
            let mut enc = Vec::with_capacity(location.len() + 8);
            escape_uri(path, &mut enc);
            enc.extend_from_slice(rest);
            location = enc;
        }
        if r.append_query_string
            && let Some(q) = ctx.query()
        {
            location.push(if location.contains(&b'?') { b'&' } else { b'?' });
            location.extend_from_slice(q);
        }
        Ok(Step::Respond(Response {
            status: ret_code,
            headers: vec![("Location".into(), header_safe(&location))],
            content_type: "text/plain",
            body: Vec::new(),
            code: "redirect",
            reason: "redirected".into(),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<(Redirect, Vec<String>), Vec<String>> {
        let mut w = Vec::new();
        let path = "routes[0].plugins.redirect";
        let r = RedirectPlugin::parse(json, path, &mut w)
            .and_then(|c| Redirect::from_conf(&c, path, &mut Vec::new()))
            .map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        Ok((r, w.iter().map(ToString::to_string).collect()))
    }

    #[test]
    fn templates_split_as_apisix() {
        use Part::*;
        let lit = |s: &str| Lit(s.into());
        let var = |s: &str| Var(s.into());
        assert_eq!(
            parse_template("$uri/test/add"),
            [var("uri"), lit("/test/add")]
        );
        assert_eq!(
            parse_template("$uri/test/a${arg_name}c"),
            [var("uri"), lit("/test/a"), var("arg_name"), lit("c")]
        );
        assert_eq!(parse_template("/foo$$uri"), [lit("/foo$"), var("uri")]);
        assert_eq!(
            parse_template("\\$uri/foo$uri\\$uri/bar"),
            [lit("\\$uri/foo"), var("uri"), lit("\\$uri/bar")]
        );
        assert_eq!(
            parse_template("https://$host$request_uri"),
            [lit("https://"), var("host"), var("request_uri")]
        );
        assert_eq!(parse_template("a\\b$"), [lit("ab$")]);
    }

    #[test]
    fn regex_replacements_take_nginx_group_syntax() {
        assert_eq!(replacement("http://test.com/${1}"), "http://test.com/${1}");
        assert_eq!(replacement("/$1a/$2"), "/${1}a/${2}");
        assert_eq!(replacement("/$$x$"), "/$$x$$");
        let re = Regex::new("^/test/(.*)").unwrap();
        assert_eq!(
            re.replacen("/test/1", 1, replacement("/x/$1b").as_str()),
            "/x/1b"
        );
    }

    #[test]
    fn schema_cases_from_apisix() {
        for ok in [
            serde_json::json!({"uri": "/test/add", "ret_code": 301}),
            serde_json::json!({"http_to_https": true}),
            serde_json::json!({"regex_uri": ["^/test/(.*)", "http://test.com/${1}"], "ret_code": 301, "encode_uri": true}),
            serde_json::json!({"uri": "$uri", "append_query_string": true}),
        ] {
            assert!(
                parse(ok.clone()).is_ok(),
                "{ok}: {:?}",
                parse(ok.clone()).err()
            );
        }
        let p = "routes[0].plugins.redirect";
        for (json, want) in [
            (
                serde_json::json!({"uri": "/x", "ret_code": 100}),
                format!("{p}.ret_code: expected 100 to be at least 200"),
            ),
            (serde_json::json!({}), format!("{p}: exactly one of")),
            (
                serde_json::json!({"uri": "/x", "http_to_https": true}),
                format!("{p}: exactly one of"),
            ),
            (
                serde_json::json!({"http_to_https": true, "append_query_string": true}),
                format!("{p}.append_query_string: only one of"),
            ),
            (
                serde_json::json!({"uri": "/"}),
                format!("{p}.uri: must be at least 2"),
            ),
            (
                serde_json::json!({"regex_uri": ["^/t"]}),
                format!("{p}.regex_uri: must be"),
            ),
            (
                serde_json::json!({"regex_uri": ["^/(t", "/"]}),
                format!("{p}.regex_uri[0]: invalid regex_uri"),
            ),
            (serde_json::json!({"uri": 1}), format!("{p}.uri:")),
            (
                serde_json::json!({"url": "/x"}),
                format!("{p}.url: unknown field"),
            ),
        ] {
            let errs = parse(json.clone()).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.starts_with(&want)),
                "{json}: {errs:?}"
            );
        }
        let (_, warnings) = parse(serde_json::json!({"uri": "$uri/$bad_var/bar"})).unwrap();
        assert_eq!(
            warnings,
            [format!(
                "{p}.uri: variable `$bad_var` is not computed by shardgate: it expands to nothing"
            )]
        );
    }

    #[test]
    fn encoding_follows_nginx_and_headers_stay_safe() {
        let mut out = Vec::new();
        escape_uri(b"/with space#%?\xc3\xa9", &mut out);
        assert_eq!(out, b"/with%20space%23%25%3F%C3%A9");
        assert_eq!(header_safe(b"/a\r\nSet-Cookie: x"), "/a%0D%0ASet-Cookie: x");
    }
}
