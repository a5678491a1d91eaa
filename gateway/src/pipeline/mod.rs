//! The seam every plugin uses: the [`Plugin`] trait and its phases, the request context
//! ([`Ctx`]), and the registry that turns a route's `plugins:` map into running instances.
//!
//! ```text
//! config load (control)                 per config version (control)        per shard
//!  plugins: {name: attrs}  --registry-->  PluginConf (parsed, validated)
//!                                          --build--> Instance (Arc, Send)  --attach--> the plugin
//!                                                                                       (shard-local
//!                                                                                        caches kept
//!                                                                                        while its
//!                                                                                        config is
//!                                                                                        unchanged)
//! ```
//! Per request, in APISIX's order (global rules first, then the route's plugins by priority,
//! highest first): `rewrite`, `access`, `before_proxy`, then the upstream exchange, then
//! `header_filter` and `body_filter` on the response, and `log` once the response is written.
//! A phase answers [`Step::Continue`], [`Step::Respond`] (a complete response the gateway writes:
//! a login redirect, a logout page, a preflight answer) or an [`Error`] that the one error map
//! (`error.rs`) turns into a status. A success is never an error: it is not counted in
//! `shardgate_errors_total` nor logged as a rejection.
//!
//! Dispatch is static (an enum over the registered plugins, see `registry.rs`) and each plugin
//! declares the phases it implements ([`Phases`]), so a route pays only for the phases its plugins
//! use: a plugin without a `body_filter` leaves the response relay untouched.

pub mod ctx;
pub mod registry;
#[cfg(any(test, feature = "test-plugins"))]
pub mod testing;

use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

pub use ctx::{Ctx, RequestScratch, Var};
pub use registry::{Instance, PluginConf, PluginGlobals, RoutePlugins, ShardPlugin, ShardPlugins};

use crate::error::Error;
use crate::http1::{ResponseHead, Span};

/// A response the gateway writes on a plugin's behalf: a success ([`Step::Respond`]) or, inside
/// [`Error::Plugin`], a refusal (401, 403, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Stable short code for metrics and logs (`invalid_token`, `login_redirect`, ...).
    pub code: &'static str,
    /// Why, for the log line; never sent to the client unless the body says so on purpose.
    pub reason: String,
}

/// What a request phase decided.
#[derive(Debug)]
pub enum Step {
    /// Go on with the next plugin, phase, and eventually the upstream.
    Continue,
    /// Answer the client with this response; no upstream is contacted.
    Respond(Response),
}

/// A request phase's result: go on, answer, or fail with an error the error map turns into a status.
pub type PhaseResult = Result<Step, Error>;

/// The phases a plugin implements. The pipeline calls only these, so an unused phase (above all
/// `body_filter`, which would otherwise touch every response chunk) costs nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const REWRITE: Phases = Phases(1);
    pub const ACCESS: Phases = Phases(1 << 1);
    pub const BEFORE_PROXY: Phases = Phases(1 << 2);
    pub const HEADER_FILTER: Phases = Phases(1 << 3);
    pub const BODY_FILTER: Phases = Phases(1 << 4);
    pub const LOG: Phases = Phases(1 << 5);
    pub const ALL: Phases = Phases(0x3f);

    pub const fn with(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    pub const fn has(self, other: Phases) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, rhs: Phases) -> Phases {
        self.with(rhs)
    }
}

/// A header value the gateway writes upstream without copying when it can.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    /// Shared with a shard-local cache entry (e.g. a precomputed `X-Userinfo`).
    Shared(Rc<str>),
    Owned(String),
    /// A slice of the client's request head (e.g. the bearer token itself).
    Request(Span),
}

/// Response headers added on a plugin's every-request path, kept as the header lines the head
/// will carry (`Name: value\r\n`) in one buffer the connection keeps: a plugin copies a block it
/// rendered at config time, or a value, and the writer copies the whole block once. Values never
/// carry CR or LF: they come from the config or from request headers the parser accepted.
#[derive(Debug, Default)]
pub struct AddedHeaders {
    lines: Vec<u8>,
}

impl AddedHeaders {
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.lines.extend_from_slice(name.as_bytes());
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }

    /// The buffer itself, for a plugin that writes lines in pieces (numbers between rendered
    /// text); it must leave only complete lines.
    pub fn raw(&mut self) -> &mut Vec<u8> {
        &mut self.lines
    }

    /// Appends complete header lines rendered beforehand.
    pub fn push_lines(&mut self, lines: &[u8]) {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\r\n"));
        self.lines.extend_from_slice(lines);
    }

    pub fn clear(&mut self) {
        self.lines.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The header lines, ready for a head.
    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    /// Each header as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.lines
            .split(|b| *b == b'\n')
            .filter_map(|l| l.strip_suffix(b"\r"))
            .filter_map(|l| {
                let colon = l.iter().position(|b| *b == b':')?;
                Some((&l[..colon], l[colon + 1..].trim_ascii_start()))
            })
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// What plugins add to the proxied exchange. Reused per connection: cleared, not reallocated.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Headers added to the upstream request (after the identity headers were stripped).
    pub upstream_headers: Vec<(&'static str, HeaderValue)>,
    /// Keep the client's `Authorization` header from the upstream (`hide_credentials`).
    pub strip_authorization: bool,
    /// Remove cookies whose name starts with this prefix from the upstream `Cookie` header.
    pub strip_cookie_prefix: Option<Rc<str>>,
    /// Headers added to the client response with values of their own (`Set-Cookie` for a
    /// refreshed session); the rare path.
    pub response_headers: Vec<(String, String)>,
    /// Headers added to the client response on a plugin's every-request path (`cors`): no
    /// allocation per request.
    pub response_added: AddedHeaders,
    /// Strip client-sent identity headers (`X-Access-Token`, `X-ID-Token`, ...) before proxying.
    pub strip_identity_headers: bool,
    /// Upstream response headers not relayed to the client (`header_filter`'s removals).
    pub response_remove: Vec<Rc<str>>,
    /// The request's id (`request-id`), for the id header and the access log line.
    pub request_id: RequestId,
    /// The client address `real-ip` took from the request: `remote_addr` for every later phase,
    /// the upstream's `X-Forwarded-For`/`X-Real-IP` and the access log (None: the peer's).
    pub real_ip: Option<std::net::IpAddr>,
    /// `real_ip` as text, written into a buffer the connection keeps.
    pub real_ip_text: String,
    /// The upstream request target (origin-form, path encoded, with the query) when a plugin
    /// rewrote it (`proxy-rewrite`); reused per connection.
    pub upstream_target: Vec<u8>,
    pub target_rewritten: bool,
    /// The upstream method when a plugin changed it.
    pub upstream_method: Option<&'static str>,
    /// The upstream `Host` when a plugin set it (over the upstream's `pass_host`).
    pub upstream_host: Option<Rc<str>>,
    /// Lower-case names of request headers not sent upstream (the client's and the plugins').
    pub drop_headers: Vec<Rc<str>>,
    /// Headers added upstream whose names come from the config.
    pub named_headers: Vec<(Rc<str>, HeaderValue)>,
}

impl Outcome {
    pub fn clear(&mut self) {
        self.upstream_headers.clear();
        self.strip_authorization = false;
        self.strip_cookie_prefix = None;
        self.response_headers.clear();
        self.response_added.clear();
        self.strip_identity_headers = false;
        self.response_remove.clear();
        self.request_id.clear();
        self.real_ip = None;
        self.real_ip_text.clear();
        self.target_rewritten = false;
        self.upstream_method = None;
        self.upstream_host = None;
        self.drop_headers.clear();
        self.named_headers.clear();
    }

    /// Makes `ip` the request's `remote_addr` (`real-ip`).
    pub fn set_real_ip(&mut self, ip: std::net::IpAddr) {
        use std::fmt::Write;
        self.real_ip_text.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.real_ip_text, "{ip}");
        self.real_ip = Some(ip);
    }
}

/// Room for a generated id or `traceparent` value, written in place: no allocation per request.
#[derive(Clone, Copy)]
pub struct IdBuf {
    bytes: [u8; IdBuf::CAP],
    len: u8,
}

impl IdBuf {
    pub const CAP: usize = 128;

    /// Takes `bytes`, truncated to [`IdBuf::CAP`].
    pub fn set(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(Self::CAP);
        self.bytes[..n].copy_from_slice(&bytes[..n]);
        self.len = n as u8;
    }

    /// The buffer to fill and the length the caller sets with [`IdBuf::set_len`].
    pub fn space(&mut self) -> &mut [u8; IdBuf::CAP] {
        &mut self.bytes
    }

    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(Self::CAP) as u8;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for IdBuf {
    fn default() -> Self {
        IdBuf {
            bytes: [0; IdBuf::CAP],
            len: 0,
        }
    }
}

impl fmt::Debug for IdBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

/// The request's id, as APISIX's `request-id` leaves it: the client's own (a slice of the request
/// head) or one generated here, sent upstream under `header` when generated, and to the client
/// when `in_response` (unless the upstream's response has its own). Plus a W3C `traceparent`
/// started for a request that came without one.
#[derive(Debug, Default)]
pub struct RequestId {
    /// The header name; None when no `request-id` ran for this request.
    pub header: Option<Rc<str>>,
    /// The client's value, when it sent one.
    pub from_client: Option<Span>,
    /// The generated value, when the client sent none.
    pub generated: IdBuf,
    pub in_response: bool,
    /// A `traceparent` started here (empty: the client's passes through, or none).
    pub traceparent: IdBuf,
}

impl RequestId {
    pub fn clear(&mut self) {
        self.header = None;
        self.from_client = None;
        self.generated.set_len(0);
        self.in_response = false;
        self.traceparent.set_len(0);
    }

    /// The id; `buf` is the request buffer (`from_client` indexes it).
    pub fn value<'a>(&'a self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.header.as_ref()?;
        Some(match self.from_client {
            Some(span) => span.of(buf),
            None => self.generated.as_bytes(),
        })
    }
}

/// The identity headers a client must never be able to set: they carry identity the gateway vouches for.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-access-token",
    "x-id-token",
    "x-userinfo",
    "x-refresh-token",
    "x-raw-id-token",
];

/// Whether `name` is one of [`IDENTITY_HEADERS`], ignoring case and counting `_` as `-`: CGI/WSGI
/// style servers map both to the same variable, so `X_Userinfo` would pass as `X-Userinfo`.
pub fn is_identity_header(name: &[u8]) -> bool {
    IDENTITY_HEADERS.iter().any(|i| {
        i.len() == name.len()
            && i.bytes().zip(name).all(|(a, &b)| {
                let b = if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                };
                a == b
            })
    })
}

/// The upstream's response head as `header_filter` sees it: read the status, the headers and the
/// request's variables; change the status, add, set and remove headers of the response the client
/// gets, and ask for the body to go through the `body_filter`s.
pub struct ResponseCtx<'a> {
    /// The status the client gets: the upstream's until a plugin changes it.
    pub status: u16,
    pub head: &'a ResponseHead,
    /// The bytes `head`'s spans index.
    pub buf: &'a [u8],
    /// The request's variables (`uri`, `http_*`, `remote_addr`, ...), as routing saw them.
    pub request: crate::route::HeadVars<'a>,
    /// Added to the client response after the upstream's own headers.
    pub add_headers: &'a mut Vec<(String, String)>,
    /// Upstream header names (case-insensitive) not relayed to the client.
    pub remove_headers: &'a mut Vec<Rc<str>>,
    /// This response's body goes through the route's `body_filter`s. Off unless a plugin turns
    /// it on here, so a route whose body filter has nothing to do for this response (a
    /// `vars` condition that did not match, no body change configured) relays the body
    /// untouched, at no cost. When on, the upstream's `Content-Length` is dropped and the
    /// filtered body is re-framed (chunked for HTTP/1.1 clients, close-delimited for HTTP/1.0
    /// ones): its length is known only after the last piece.
    pub filter_body: bool,
    /// What earlier phases left for later ones.
    pub scratch: &'a mut RequestScratch,
    /// `status` as text for the `status` variable (the upstream's).
    status_text: [u8; 3],
}

impl<'a> ResponseCtx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        head: &'a ResponseHead,
        buf: &'a [u8],
        request: crate::route::HeadVars<'a>,
        add_headers: &'a mut Vec<(String, String)>,
        remove_headers: &'a mut Vec<Rc<str>>,
        scratch: &'a mut RequestScratch,
    ) -> Self {
        let s = head.status.min(999);
        let status_text = [
            b'0' + (s / 100) as u8,
            b'0' + (s / 10 % 10) as u8,
            b'0' + (s % 10) as u8,
        ];
        ResponseCtx {
            status: head.status,
            head,
            buf,
            request,
            add_headers,
            remove_headers,
            filter_body: false,
            scratch,
            status_text,
        }
    }

    /// The first value of the upstream's header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(self.buf, name)
    }

    /// Removes header `name` (case-insensitive) from the client response: the upstream's and any
    /// an earlier plugin added.
    pub fn remove_header(&mut self, name: &Rc<str>) {
        self.add_headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if !self
            .remove_headers
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
        {
            self.remove_headers.push(name.clone());
        }
    }

    /// Replaces every value of header `name` with `value`.
    pub fn set_header(&mut self, name: &Rc<str>, value: String) {
        self.remove_header(name);
        self.add_headers.push((name.to_string(), value));
    }
}

/// Response variables first (`status`, `upstream_status`, `upstream_http_<name>`), then the
/// request's.
impl crate::route::VarSource for ResponseCtx<'_> {
    fn var(&self, name: &str) -> Option<&[u8]> {
        match name {
            "status" | "upstream_status" => Some(&self.status_text),
            _ => match name.strip_prefix("upstream_http_") {
                Some(field) => self
                    .head
                    .headers
                    .iter()
                    .find(|h| crate::route::var_names_field(field.as_bytes(), h.name.of(self.buf)))
                    .map(|h| h.value.of(self.buf)),
                None => self.request.var(name),
            },
        }
    }
}

/// One piece of a response body as `body_filter` sees it. A filter may rewrite `data` in place
/// (its length may change) or empty it (to hold the bytes back for a later call). Only
/// responses for which a `header_filter` turned [`ResponseCtx::filter_body`] on get here.
pub struct BodyChunk<'a> {
    pub data: &'a mut Vec<u8>,
    /// True on the last call for this response (`data` may be empty).
    pub last: bool,
}

/// What `log` sees about the finished request.
pub struct LogInfo<'a> {
    pub status: u16,
    pub bytes_out: u64,
    pub upstream_us: Option<u64>,
    pub total_us: u64,
    /// The error the request ended with, if any.
    pub error: Option<&'a Error>,
    pub scratch: &'a RequestScratch,
}

/// A problem in a plugin's configuration, with its path (`routes[0].plugins.<name>.<attr>`).
pub type Problem = shardgate_oidc::config::Problem;

/// A plugin: APISIX's name, priority and schema, how it is built once per config version, its
/// shard-local part, and its phases. Every phase has a default that does nothing; [`Plugin::PHASES`]
/// lists the ones the plugin implements (the pipeline calls no other).
///
/// `Self` is the shard-local part (it may hold `Rc`/`RefCell` caches): one per instance per shard,
/// kept across config reloads while the instance's [`Plugin::fingerprint`] is unchanged.
#[allow(async_fn_in_trait)] // shards are single-threaded: no Send bound wanted on phase futures
pub trait Plugin: Sized + 'static {
    /// APISIX's plugin name (`openid-connect`).
    const NAME: &'static str;
    /// APISIX's priority: higher runs first within a phase.
    const PRIORITY: i32;
    /// The phases implemented below.
    const PHASES: Phases;

    /// The validated attributes.
    type Conf: fmt::Debug + Send + Sync + 'static;
    /// Built once per config version from `Conf` on the control side and shared by every shard.
    type Instance: Send + Sync + 'static;
    /// Process-wide state (actors, registries), created once with the registry.
    type Global: Send + Sync + 'static;
    /// Per-shard state shared by all of this plugin's instances on a shard.
    type ShardGlobal: 'static;

    /// Parses and validates the attributes (YAML or JSON, as a generic value); errors and
    /// `warnings` name their path under `path`.
    fn parse(
        value: serde_json::Value,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<Self::Conf, Vec<Problem>>;
    /// Cross-object checks over a whole config (warnings only), e.g. a callback path no route serves.
    /// `routes` are `(position in the file, route)`; find this plugin's config with
    /// `route.plugins.conf::<Self>()`.
    fn warnings(_routes: &[(usize, crate::config::RouteConf)]) -> Vec<Problem> {
        Vec::new()
    }
    fn global() -> Arc<Self::Global>;
    fn shard_global(shard: usize, global: &Arc<Self::Global>) -> Self::ShardGlobal;
    /// Prepares an instance (keys parsed, schemas compiled). An error names `path`.
    fn build(
        conf: Arc<Self::Conf>,
        global: &Self::Global,
        path: &str,
    ) -> Result<Self::Instance, String>;
    /// Equal across versions when the shard-local state (caches) may be kept.
    fn fingerprint(instance: &Self::Instance) -> u64;
    /// The shard-local part of an instance.
    fn attach(instance: Arc<Self::Instance>, shard: &Self::ShardGlobal) -> Self;
    /// Readiness for `/readyz`: `(ready, JSON key, JSON value)`; None when the plugin has nothing
    /// to say.
    fn readiness(_global: &Arc<Self::Global>) -> Option<(bool, &'static str, String)> {
        None
    }
    /// Counters for `/metrics` (`name{labels}` -> value).
    fn counters(_global: &Arc<Self::Global>, _out: &mut std::collections::BTreeMap<String, u64>) {}
    /// After every publish (and every rejected build, with the config being served): the
    /// instances that config uses, with their route ids, so process-wide state no route uses any
    /// more (an IdP's actor) can go.
    fn retain_used(_global: &Arc<Self::Global>, _used: &[(&str, &Self::Instance)]) {}
    /// Starts control-side tasks (on the control thread's runtime).
    fn start(_global: &Arc<Self::Global>, _shutdown: &shardgate_runtime::gate::Shutdown) {}

    async fn rewrite(&self, _ctx: &mut Ctx<'_>) -> PhaseResult {
        Ok(Step::Continue)
    }
    async fn access(&self, _ctx: &mut Ctx<'_>) -> PhaseResult {
        Ok(Step::Continue)
    }
    async fn before_proxy(&self, _ctx: &mut Ctx<'_>) -> PhaseResult {
        Ok(Step::Continue)
    }
    /// The upstream's response head, before it is written to the client.
    fn header_filter(&self, _resp: &mut ResponseCtx<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// Each piece of the response body, in order, before it is written to the client.
    fn body_filter(&self, _chunk: &mut BodyChunk<'_>, _scratch: &mut RequestScratch) {}
    /// Once per request, after the response was written (or failed).
    fn log(&self, _info: &LogInfo<'_>) {}
}

#[cfg(test)]
mod identity_tests {
    use super::is_identity_header;

    #[test]
    fn identity_header_names_match_any_case_and_underscores() {
        for n in [
            "X-Userinfo",
            "x_userinfo",
            "X_ID_TOKEN",
            "x-Access_Token",
            "X-Raw-Id-Token",
        ] {
            assert!(is_identity_header(n.as_bytes()), "{n}");
        }
        for n in ["X-Userinfo2", "Authorization", "X-Id", "x-id_tokens"] {
            assert!(!is_identity_header(n.as_bytes()), "{n}");
        }
    }
}
