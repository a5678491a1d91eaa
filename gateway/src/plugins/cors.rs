//! `cors`: APISIX's CORS plugin (priority 4000, `rewrite`).
//!
//! APISIX answers every `OPTIONS` request itself with 200 in `rewrite` (so a preflight never
//! reaches the authentication plugins, which run later, nor the upstream), and adds the CORS
//! headers in `header_filter`, which nginx runs for every response: proxied, answered by a
//! plugin, or refused. Here the headers are computed once in `rewrite` (the request's `Origin` is
//! known there) and put in the outcome's response headers, which the gateway writes on every one
//! of those responses; a later 401 from `openid-connect` thus carries them, as on APISIX, so a
//! browser script can read it.
//!
//! Differences from APISIX: `allow_origins_by_metadata` is refused by name (shardgate has no
//! plugin metadata); `Vary: Origin` is also sent when `allow_origins_by_regex` decides the
//! origin (APISIX sends it only when `allow_origins` is not `*`, although the answer then varies
//! by origin too).

use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

use crate::pipeline::{AddedHeaders, Ctx, PhaseResult, Phases, Plugin, Problem, Response, Step};

/// APISIX's `origins_pattern`: `*`, `**`, `null`, or a comma-separated list of `scheme://host`.
const ORIGINS_PATTERN: &str = r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$";

/// What `allow_methods: "**"` stands for (APISIX's list).
const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

fn star() -> String {
    "*".into()
}

fn five() -> i64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConf {
    #[serde(default = "star")]
    pub allow_origins: String,
    #[serde(default = "star")]
    pub allow_methods: String,
    #[serde(default = "star")]
    pub allow_headers: String,
    #[serde(default)]
    pub expose_headers: Option<String>,
    #[serde(default = "five")]
    pub max_age: i64,
    #[serde(default)]
    pub allow_credential: bool,
    #[serde(default)]
    pub allow_origins_by_regex: Option<Vec<String>>,
    /// Refused by name: shardgate has no plugin metadata.
    #[serde(default)]
    pub allow_origins_by_metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub timing_allow_origins: Option<String>,
    #[serde(default)]
    pub timing_allow_origins_by_regex: Option<Vec<String>>,
}

/// An `allow_origins`-style attribute, decided once per config.
#[derive(Debug)]
enum Origins {
    /// `*`: the header says `*`.
    Any,
    /// `**`: the request's origin is echoed (or `*` without one).
    Echo,
    /// One origin (or `null`): sent as configured, whatever the request's origin (APISIX).
    One(String),
    /// Several: the request's origin when it is one of them, else no header.
    List(Vec<String>),
    /// `*_by_regex`: the request's origin when one of the (unanchored) patterns finds it.
    Regex(Regex),
}

impl Origins {
    fn from_list(s: &str) -> Origins {
        match s {
            "*" => Origins::Any,
            "**" => Origins::Echo,
            _ if s.contains(',') => Origins::List(s.split(',').map(str::to_owned).collect()),
            _ => Origins::One(s.to_owned()),
        }
    }

    /// The header value for a request with `origin`, if any.
    fn decide<'a>(&'a self, origin: Option<&'a str>) -> Option<&'a str> {
        match self {
            Origins::Any => Some("*"),
            Origins::Echo => Some(origin.unwrap_or("*")),
            Origins::One(o) => Some(o),
            Origins::List(l) => origin.filter(|o| l.iter().any(|x| x == o)),
            Origins::Regex(r) => origin.filter(|o| r.is_match(o)),
        }
    }
}

/// The plugin's attributes turned into the answer's parts.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    /// `Vary: Origin` when the answer depends on the request's origin.
    vary: bool,
    methods: String,
    /// None: `**`, echo `Access-Control-Request-Headers`.
    headers: Option<String>,
    expose: Option<String>,
    max_age: String,
    credential: bool,
    timing: Option<Origins>,
    /// The header lines that do not depend on the request, rendered once per config: a request
    /// copies them as blocks. `allow_line`: `Access-Control-Allow-Origin` when it is a constant
    /// (`*` or one origin); `mid`: methods, max age, expose; `tail`: configured allowed headers,
    /// credentials.
    allow_line: Option<Vec<u8>>,
    mid: Vec<u8>,
    tail: Vec<u8>,
}

fn line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn check_origins(value: &str, at: String, pattern: &Regex, problems: &mut Vec<Problem>) {
    if !pattern.is_match(value) {
        problems.push(Problem::new(
            at,
            format!(
                "`{value}` is not `*`, `**`, `null` or a comma-separated list of \
                 `scheme://host[:port]` origins"
            ),
        ));
    }
}

/// `allow_origins_by_regex`-style lists: at least one item, unique, 1-4096 characters each, each
/// a valid regular expression; joined with `|` as APISIX does.
fn regex_list(list: &[String], at: &str, problems: &mut Vec<Problem>) -> Option<Regex> {
    if list.is_empty() {
        problems.push(Problem::new(at, "must have at least one pattern"));
        return None;
    }
    let mut ok = true;
    for (i, r) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if r.is_empty() || r.len() > 4096 {
            problems.push(Problem::new(here, "must be 1 to 4096 characters"));
            ok = false;
        } else if list[..i].contains(r) {
            problems.push(Problem::new(here, "duplicate pattern"));
            ok = false;
        } else if let Err(e) = Regex::new(r) {
            problems.push(Problem::new(
                here,
                format!("not a valid regular expression: {e}"),
            ));
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let joined = list.join("|");
    match Regex::new(&joined) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(Problem::new(at, format!("patterns do not combine: {e}")));
            None
        }
    }
}

impl Cors {
    /// APISIX's schema and `check_schema`, each problem at its path.
    pub fn from_conf(conf: &CorsConf, path: &str) -> Result<Cors, Vec<Problem>> {
        let mut problems = Vec::new();
        // The pattern is a constant: it compiles.
        let pattern =
            Regex::new(ORIGINS_PATTERN).map_err(|e| vec![Problem::new(path, e.to_string())])?;
        check_origins(
            &conf.allow_origins,
            format!("{path}.allow_origins"),
            &pattern,
            &mut problems,
        );
        if let Some(t) = &conf.timing_allow_origins {
            check_origins(
                t,
                format!("{path}.timing_allow_origins"),
                &pattern,
                &mut problems,
            );
        }
        if conf.allow_origins_by_metadata.is_some() {
            problems.push(Problem::new(
                format!("{path}.allow_origins_by_metadata"),
                "is not supported by shardgate (no plugin metadata); list the origins in \
                 `allow_origins` or `allow_origins_by_regex`",
            ));
        }
        if conf.allow_credential {
            let star = [
                ("allow_origins", Some(&conf.allow_origins)),
                ("allow_methods", Some(&conf.allow_methods)),
                ("allow_headers", Some(&conf.allow_headers)),
                ("expose_headers", conf.expose_headers.as_ref()),
                ("timing_allow_origins", conf.timing_allow_origins.as_ref()),
            ]
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| v == "*"));
            if let Some((name, _)) = star {
                problems.push(Problem::new(
                    format!("{path}.{name}"),
                    "you can not set '*' for other option when 'allow_credential' is true \
                     (use `**` to echo the request's value, or list the values)",
                ));
            }
        }
        let by_regex = conf
            .allow_origins_by_regex
            .as_deref()
            .and_then(|l| regex_list(l, &format!("{path}.allow_origins_by_regex"), &mut problems));
        let timing_regex = conf.timing_allow_origins_by_regex.as_deref().and_then(|l| {
            regex_list(
                l,
                &format!("{path}.timing_allow_origins_by_regex"),
                &mut problems,
            )
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        let regex_decides = by_regex.is_some();
        let origins = match by_regex {
            // APISIX: when `allow_origins_by_regex` is set, only it decides.
            Some(r) => Origins::Regex(r),
            None => Origins::from_list(&conf.allow_origins),
        };
        let timing = match (timing_regex, &conf.timing_allow_origins) {
            (Some(r), _) => Some(Origins::Regex(r)),
            (None, Some(t)) => Some(Origins::from_list(t)),
            (None, None) => None,
        };
        Ok(Cors {
            origins,
            vary: conf.allow_origins != "*" || regex_decides,
            methods: if conf.allow_methods == "**" {
                ALL_METHODS.to_owned()
            } else {
                conf.allow_methods.clone()
            },
            headers: (conf.allow_headers != "**").then(|| conf.allow_headers.clone()),
            expose: conf.expose_headers.clone().filter(|e| !e.is_empty()),
            max_age: conf.max_age.to_string(),
            credential: conf.allow_credential,
            timing,
            allow_line: None,
            mid: Vec::new(),
            tail: Vec::new(),
        }
        .rendered())
    }

    fn rendered(mut self) -> Cors {
        self.allow_line = match &self.origins {
            Origins::Any | Origins::One(_) => self.origins.decide(None).map(|allow| {
                let mut l = Vec::new();
                line(&mut l, "Access-Control-Allow-Origin", allow);
                l
            }),
            _ => None,
        };
        line(&mut self.mid, "Access-Control-Allow-Methods", &self.methods);
        line(&mut self.mid, "Access-Control-Max-Age", &self.max_age);
        if let Some(e) = &self.expose {
            line(&mut self.mid, "Access-Control-Expose-Headers", e);
        }
        if let Some(h) = &self.headers {
            line(&mut self.tail, "Access-Control-Allow-Headers", h);
        }
        if self.credential {
            line(&mut self.tail, "Access-Control-Allow-Credentials", "true");
        }
        self
    }

    /// The response headers for a request with `origin` (and, for `allow_headers: "**"`, its
    /// `Access-Control-Request-Headers`), in APISIX's order.
    pub fn headers(
        &self,
        origin: Option<&str>,
        request_headers: Option<&str>,
        out: &mut AddedHeaders,
    ) {
        if self.vary {
            out.push_lines(b"Vary: Origin\r\n");
        }
        if let Some(allow) = self.origins.decide(origin) {
            match &self.allow_line {
                Some(l) => out.push_lines(l),
                None => out.push("Access-Control-Allow-Origin", allow.as_bytes()),
            }
            out.push_lines(&self.mid);
            if self.headers.is_none()
                && let Some(h) = request_headers
            {
                out.push("Access-Control-Allow-Headers", h.as_bytes());
            }
            out.push_lines(&self.tail);
        }
        // APISIX: Timing-Allow-Origin only when the decided value is the request's origin or `*`.
        if let Some(t) = &self.timing
            && let Some(v) = t.decide(origin)
            && (v == "*" || Some(v) == origin)
        {
            out.push("Timing-Allow-Origin", v.as_bytes());
        }
    }
}

/// The shard-local part: the prepared attributes (no shard state).
pub struct CorsPlugin(Arc<Cors>);

impl Plugin for CorsPlugin {
    const NAME: &'static str = "cors";
    const PRIORITY: i32 = 4000;
    const PHASES: Phases = Phases::REWRITE;
    type Conf = CorsConf;
    type Instance = Cors;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<CorsConf, Vec<Problem>> {
        let conf: CorsConf = crate::pipeline::registry::deserialize(value, path)?;
        Cors::from_conf(&conf, path)?;
        Ok(conf)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(conf: Arc<CorsConf>, _global: &(), path: &str) -> Result<Cors, String> {
        Cors::from_conf(&conf, path).map_err(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
    fn fingerprint(_instance: &Cors) -> u64 {
        0
    }
    fn attach(instance: Arc<Cors>, _shard: &()) -> Self {
        CorsPlugin(instance)
    }

    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let (head, buf, outcome) = ctx.head_and_outcome();
        let cors = &*self.0;
        // Header values that are not UTF-8 are no origin a browser sends: treated as absent. A
        // constant answer (`*`, one origin, no timing origins) looks at neither header.
        let origin = if cors.allow_line.is_none() || cors.timing.is_some() {
            head.header(buf, "origin")
                .and_then(|o| std::str::from_utf8(o).ok())
        } else {
            None
        };
        let request_headers = if cors.headers.is_none() {
            head.header(buf, "access-control-request-headers")
                .and_then(|o| std::str::from_utf8(o).ok())
        } else {
            None
        };
        self.0
            .headers(origin, request_headers, &mut outcome.response_added);
        if ctx.head().method_span.of(ctx.buf()) == b"OPTIONS" {
            // APISIX answers every OPTIONS request here, before any authentication plugin.
            return Ok(Step::Respond(Response {
                status: 200,
                headers: Vec::new(),
                content_type: "text/plain",
                body: Vec::new(),
                code: "cors_preflight",
                reason: "CORS preflight answered".into(),
            }));
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Cors, Vec<String>> {
        let mut w = Vec::new();
        CorsPlugin::parse(json, "routes[0].plugins.cors", &mut w)
            .and_then(|c| Cors::from_conf(&c, "routes[0].plugins.cors"))
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    fn answer(c: &Cors, origin: Option<&str>, acrh: Option<&str>) -> Vec<(String, String)> {
        let mut out = AddedHeaders::default();
        c.headers(origin, acrh, &mut out);
        out.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    fn get<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn schema_accepts_apisix_documented_configs() {
        for ok in [
            serde_json::json!({}),
            serde_json::json!({"allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "allow_credential": true}),
            serde_json::json!({"allow_origins": "http://a.com,https://b.com:8443", "max_age": -1}),
            serde_json::json!({"allow_origins": "null"}),
            serde_json::json!({"allow_origins_by_regex": [".*\\.test\\.com$"], "allow_credential": true, "allow_origins": "http://x.com", "allow_methods": "GET", "allow_headers": "a"}),
            serde_json::json!({"timing_allow_origins": "http://a.com", "timing_allow_origins_by_regex": ["a"]}),
            serde_json::json!({"expose_headers": "X-A,X-B"}),
        ] {
            assert!(
                parse(ok.clone()).is_ok(),
                "{ok}: {:?}",
                parse(ok.clone()).err()
            );
        }
    }

    #[test]
    fn schema_refusals_name_the_attribute() {
        let cases = [
            (
                serde_json::json!({"allow_origins": "a.com"}),
                "routes[0].plugins.cors.allow_origins:",
            ),
            (
                serde_json::json!({"allow_origins": "http://a.com,b"}),
                "routes[0].plugins.cors.allow_origins:",
            ),
            (
                serde_json::json!({"timing_allow_origins": "x"}),
                "routes[0].plugins.cors.timing_allow_origins:",
            ),
            (
                serde_json::json!({"allow_credential": true}),
                "routes[0].plugins.cors.allow_origins: you can not set '*'",
            ),
            (
                serde_json::json!({"allow_credential": true, "allow_origins": "**", "allow_methods": "GET", "allow_headers": "**", "expose_headers": "*"}),
                "routes[0].plugins.cors.expose_headers: you can not set '*'",
            ),
            (
                serde_json::json!({"allow_origins_by_regex": ["("]}),
                "routes[0].plugins.cors.allow_origins_by_regex[0]: not a valid regular expression",
            ),
            (
                serde_json::json!({"allow_origins_by_regex": []}),
                "routes[0].plugins.cors.allow_origins_by_regex: must have at least one",
            ),
            (
                serde_json::json!({"allow_origins_by_regex": ["a", "a"]}),
                "routes[0].plugins.cors.allow_origins_by_regex[1]: duplicate",
            ),
            (
                serde_json::json!({"allow_origins_by_metadata": ["key_1"]}),
                "routes[0].plugins.cors.allow_origins_by_metadata: is not supported",
            ),
            (
                serde_json::json!({"max_age": "5"}),
                "routes[0].plugins.cors.max_age:",
            ),
            (
                serde_json::json!({"allow_credential": "yes"}),
                "routes[0].plugins.cors.allow_credential:",
            ),
            (
                serde_json::json!({"allow_origin": "*"}),
                "routes[0].plugins.cors.allow_origin: unknown field `allow_origin`",
            ),
        ];
        for (json, want) in cases {
            let errs = parse(json.clone()).err().unwrap_or_default();
            assert!(errs.iter().any(|e| e.starts_with(want)), "{json}: {errs:?}");
        }
    }

    #[test]
    fn defaults_answer_star_without_vary() {
        let c = parse(serde_json::json!({})).unwrap();
        let h = answer(&c, Some("http://a.com"), None);
        assert_eq!(
            h,
            [
                ("Access-Control-Allow-Origin".into(), "*".into()),
                ("Access-Control-Allow-Methods".into(), "*".into()),
                ("Access-Control-Max-Age".into(), "5".into()),
                ("Access-Control-Allow-Headers".into(), "*".into()),
            ]
        );
    }

    #[test]
    fn origin_lists_echo_a_listed_origin_only() {
        let c = parse(serde_json::json!({"allow_origins": "http://a.com,https://b.com"})).unwrap();
        let h = answer(&c, Some("https://b.com"), None);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://b.com")
        );
        assert_eq!(get(&h, "vary"), Some("Origin"));
        let h = answer(&c, Some("https://evil.com"), None);
        assert_eq!(get(&h, "access-control-allow-origin"), None);
        assert_eq!(get(&h, "access-control-allow-methods"), None);
        assert_eq!(get(&h, "vary"), Some("Origin"));
        // One configured origin is sent as is (APISIX).
        let c = parse(serde_json::json!({"allow_origins": "http://a.com"})).unwrap();
        let h = answer(&c, Some("http://other.com"), None);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("http://a.com"));
    }

    #[test]
    fn double_star_echoes_origin_methods_and_headers() {
        let c = parse(serde_json::json!({
            "allow_origins": "**", "allow_methods": "**", "allow_headers": "**",
            "expose_headers": "X-Id", "max_age": 60, "allow_credential": true
        }))
        .unwrap();
        let h = answer(&c, Some("http://x.io"), Some("authorization,x-a"));
        assert_eq!(get(&h, "access-control-allow-origin"), Some("http://x.io"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some(ALL_METHODS));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("authorization,x-a")
        );
        assert_eq!(get(&h, "access-control-expose-headers"), Some("X-Id"));
        assert_eq!(get(&h, "access-control-max-age"), Some("60"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        let h = answer(&c, None, None);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&h, "access-control-allow-headers"), None);
    }

    #[test]
    fn regex_decides_alone_and_timing_follows_its_rule() {
        let c = parse(serde_json::json!({
            "allow_origins": "http://listed.com",
            "allow_origins_by_regex": ["^http://.*\\.test\\.com$"],
            "timing_allow_origins": "http://t.com,http://u.com"
        }))
        .unwrap();
        let h = answer(&c, Some("http://a.test.com"), None);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("http://a.test.com")
        );
        assert_eq!(get(&h, "timing-allow-origin"), None);
        let h = answer(&c, Some("http://listed.com"), None);
        assert_eq!(get(&h, "access-control-allow-origin"), None);
        let h = answer(&c, Some("http://u.com"), None);
        assert_eq!(get(&h, "timing-allow-origin"), Some("http://u.com"));
        // With the default `*` and a regex, the answer still varies by origin.
        let c = parse(serde_json::json!({"allow_origins_by_regex": ["a"]})).unwrap();
        assert_eq!(
            get(&answer(&c, Some("http://a"), None), "vary"),
            Some("Origin")
        );
    }
}
