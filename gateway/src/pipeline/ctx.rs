//! The request context a plugin phase gets: the parsed head, the client's address, the matched
//! route, request variables (computed on demand, the Cookie header parsed once per request), a
//! typed per-request slot, and a bounded request-body read. Never the socket.

use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

use shardgate_runtime::clock::monotonic_now;

use crate::http1::{BodyFraming, RequestHead, Span};
use crate::observe::metrics::ShardMetrics;
use crate::proxy::conn::ClientConn;
use crate::proxy::forward::strip_port;
use crate::proxy::io::read_more;

use super::Outcome;

/// Per-request state that lives in the connection and is reused, not reallocated: the parsed
/// cookies and what one phase leaves for the next.
#[derive(Default)]
pub struct RequestScratch {
    /// `(name, value)` spans into the request buffer, valid when `cookies_parsed`.
    cookies: Vec<(Span, Span)>,
    cookies_parsed: bool,
    /// One value per type: what a phase leaves for a later phase of this request.
    slots: Vec<Box<dyn Any>>,
}

impl RequestScratch {
    /// Called before each request.
    pub fn clear(&mut self) {
        self.cookies.clear();
        self.cookies_parsed = false;
        self.slots.clear();
    }

    /// Leaves `value` for later phases of this request (replacing a value of the same type).
    pub fn put<T: 'static>(&mut self, value: T) {
        match self.slots.iter_mut().find(|s| s.is::<T>()) {
            Some(s) => *s = Box::new(value),
            None => self.slots.push(Box::new(value)),
        }
    }

    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.slots.iter().find_map(|s| s.downcast_ref::<T>())
    }

    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.slots.iter_mut().find_map(|s| s.downcast_mut::<T>())
    }

    pub fn take<T: 'static>(&mut self) -> Option<T> {
        let i = self.slots.iter().position(|s| s.is::<T>())?;
        self.slots.swap_remove(i).downcast::<T>().ok().map(|b| *b)
    }
}

/// A request variable by APISIX's (nginx's) name, resolved once when the config is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// `uri`: the path, without the query.
    Uri,
    /// `request_uri`: the request target as sent.
    RequestUri,
    Host,
    RemoteAddr,
    /// `http` or `https`.
    Scheme,
    RequestMethod,
    QueryString,
    /// `arg_<name>`: a query parameter.
    Arg(String),
    /// `http_<name>`: a request header (`_` for `-`, case-insensitive), stored as the header name.
    Http(String),
    /// `cookie_<name>`.
    Cookie(String),
}

impl Var {
    /// APISIX's variable name to a [`Var`]; None for a variable shardgate does not compute.
    pub fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "host" => Var::Host,
            "remote_addr" => Var::RemoteAddr,
            "scheme" => Var::Scheme,
            "request_method" => Var::RequestMethod,
            "query_string" | "args" => Var::QueryString,
            _ => {
                if let Some(a) = name.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                    Var::Arg(a.to_owned())
                } else if let Some(h) = name.strip_prefix("http_").filter(|h| !h.is_empty()) {
                    Var::Http(h.replace('_', "-").to_ascii_lowercase())
                } else if let Some(c) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                    Var::Cookie(c.to_owned())
                } else {
                    return None;
                }
            }
        })
    }
}

/// What a plugin phase sees of the request. Built per request over the connection's state; the
/// stream itself stays out of reach (reading a body goes through [`Ctx::read_body`]).
pub struct Ctx<'a> {
    conn: &'a mut ClientConn,
    metrics: &'a ShardMetrics,
    route_id: &'a str,
    /// The route table and the match, for the route's URI parameters (`/:name`).
    params: Option<(&'a crate::route::RouteTable, crate::route::Match)>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        conn: &'a mut ClientConn,
        metrics: &'a ShardMetrics,
        route_id: &'a str,
    ) -> Self {
        Ctx {
            conn,
            metrics,
            route_id,
            params: None,
        }
    }

    /// The match the route table made, so plugins can read the route's URI parameters.
    pub(crate) fn with_params(
        mut self,
        table: &'a crate::route::RouteTable,
        m: crate::route::Match,
    ) -> Self {
        self.params = Some((table, m));
        self
    }

    /// The value of the matched route's URI parameter `name` (`/:name`, `/*name`), a range of
    /// the normal-form path the route matched.
    pub fn param(&self, name: &str) -> Option<&[u8]> {
        let (table, m) = self.params.as_ref()?;
        m.param(table, self.conn.route_path(), name)
    }

    /// The parsed request head; its spans index [`Ctx::buf`].
    pub fn head(&self) -> &RequestHead {
        &self.conn.head
    }

    /// The bytes the head's spans index (head, then any body bytes already received).
    pub fn buf(&self) -> &[u8] {
        &self.conn.buf
    }

    /// What the plugins add to the proxied exchange (upstream headers, response headers).
    pub fn outcome(&mut self) -> &mut Outcome {
        &mut self.conn.outcome
    }

    /// The request head, its bytes and the outcome at once: a plugin that derives response or
    /// upstream headers from request headers writes them without copying the request's values
    /// first.
    pub fn head_and_outcome(&mut self) -> (&RequestHead, &[u8], &mut Outcome) {
        let c = &mut *self.conn;
        (&c.head, &c.buf, &mut c.outcome)
    }

    /// What earlier phases of this request left (typed slots).
    pub fn scratch(&mut self) -> &mut RequestScratch {
        &mut self.conn.scratch
    }

    pub fn peer(&self) -> SocketAddr {
        self.conn.peer
    }

    /// `remote_addr`: the client's IP as text: the peer's (computed once per connection), or the
    /// one `real-ip` set for this request.
    pub fn remote_addr(&self) -> &str {
        self.conn.remote_addr()
    }

    /// [`Ctx::remote_addr`] as an address.
    pub fn remote_ip(&self) -> std::net::IpAddr {
        self.conn.remote_ip()
    }

    /// Whether the peer is in `gateway.trusted_addresses` (None: the list is not configured).
    pub fn peer_trusted(&self) -> Option<bool> {
        match self.conn.trust {
            crate::proxy::conn::PeerTrust::NotConfigured => None,
            crate::proxy::conn::PeerTrust::Trusted => Some(true),
            crate::proxy::conn::PeerTrust::Untrusted => Some(false),
        }
    }

    /// True when the client connection is TLS (`scheme` is `https`).
    pub fn tls(&self) -> bool {
        self.conn.tls
    }

    pub fn scheme(&self) -> &'static str {
        if self.conn.tls { "https" } else { "http" }
    }

    /// The matched route's id.
    pub fn route_id(&self) -> &str {
        self.route_id
    }

    /// The shard's metrics (plugin counters).
    pub fn metrics(&self) -> &'a ShardMetrics {
        self.metrics
    }

    /// `uri`: the normal form of the request path, the one routes matched (percent-decoded,
    /// slashes merged, dot-segments resolved).
    pub fn route_path(&self) -> &[u8] {
        self.conn.route_path()
    }

    pub fn query(&self) -> Option<&[u8]> {
        self.conn.head.query.map(|q| q.of(&self.conn.buf))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.conn.head.header(&self.conn.buf, name)
    }

    /// Every `Cookie` header value, as sent (for cookies split over several headers or chunks).
    pub fn cookie_headers(&self) -> impl Iterator<Item = &[u8]> {
        self.conn.head.header_values(&self.conn.buf, "cookie")
    }

    /// The value of cookie `name`; the Cookie headers are parsed once per request.
    pub fn cookie(&mut self, name: &str) -> Option<&[u8]> {
        self.parse_cookies();
        let buf = &self.conn.buf;
        self.conn
            .scratch
            .cookies
            .iter()
            .find(|(n, _)| n.of(buf) == name.as_bytes())
            .map(|(_, v)| v.of(buf))
    }

    fn parse_cookies(&mut self) {
        let c = &mut *self.conn;
        if c.scratch.cookies_parsed {
            return;
        }
        c.scratch.cookies_parsed = true;
        for h in &c.head.headers {
            if !h.name.of(&c.buf).eq_ignore_ascii_case(b"cookie") {
                continue;
            }
            let base = h.value.start as usize;
            let value = h.value.of(&c.buf);
            let mut at = 0usize;
            for part in value.split(|b| *b == b';') {
                let start = at;
                at += part.len() + 1;
                let Some(eq) = part.iter().position(|b| *b == b'=') else {
                    continue;
                };
                let name = trim_span(base + start, &part[..eq]);
                let val = trim_span(base + start + eq + 1, &part[eq + 1..]);
                if !name.is_empty() {
                    c.scratch.cookies.push((name, val));
                }
            }
        }
    }

    /// `arg_<name>`: the raw (still percent-encoded) value of query parameter `name` (names
    /// compared case-insensitively, as nginx's `$arg_*`).
    pub fn arg(&self, name: &str) -> Option<&[u8]> {
        crate::route::query_arg(self.query()?, name.as_bytes())
    }

    /// A request variable; None when the request does not carry it.
    pub fn var(&mut self, var: &Var) -> Option<&[u8]> {
        match var {
            Var::Cookie(name) => self.cookie(name),
            _ => self.var_ref(var),
        }
    }

    /// Every variable except `cookie_*` without `&mut` (cookies are parsed into the scratch).
    pub fn var_ref(&self, var: &Var) -> Option<&[u8]> {
        let buf = &self.conn.buf;
        let head = &self.conn.head;
        match var {
            Var::Uri => Some(self.conn.route_path()),
            Var::RequestUri => Some(head.target.of(buf)),
            Var::Host => head.host.map(|h| strip_port(h.of(buf))),
            Var::RemoteAddr => Some(self.conn.remote_addr().as_bytes()),
            Var::Scheme => Some(self.scheme().as_bytes()),
            Var::RequestMethod => Some(head.method_span.of(buf)),
            Var::QueryString => head.query.map(|q| q.of(buf)),
            Var::Arg(name) => self.arg(name),
            Var::Http(name) => head.header(buf, name),
            Var::Cookie(name) => head.header_values(buf, "cookie").find_map(|v| {
                v.split(|b| *b == b';').find_map(|kv| {
                    let kv = kv.trim_ascii();
                    let i = kv.iter().position(|b| *b == b'=')?;
                    (kv[..i].trim_ascii() == name.as_bytes()).then(|| kv[i + 1..].trim_ascii())
                })
            }),
        }
    }

    /// The request body, read fully (at most `max` bytes, Content-Length framing only), for the
    /// few requests a plugin answers itself with a body (a back-channel logout POST). The bytes
    /// stay in the connection buffer: the request counts as consumed once answered.
    pub async fn read_body(&mut self, max: usize) -> Result<&[u8], &'static str> {
        let c = &mut *self.conn;
        let n = match c.head.framing {
            BodyFraming::None => return Ok(&[]),
            BodyFraming::Length(n) => usize::try_from(n).map_err(|_| "request body too large")?,
            _ => return Err("a chunked body is not accepted here"),
        };
        if n > max {
            return Err("request body too large");
        }
        let deadline = monotonic_now() + Duration::from_secs(10);
        while c.buf.len() < c.head.head_len + n {
            let buf = std::mem::take(&mut c.buf);
            let (r, buf) =
                read_more(&mut c.stream, buf, 8 * 1024, Some(c.timer.until(deadline))).await;
            c.buf = buf;
            if r.is_err() {
                return Err("request body not received");
            }
        }
        Ok(&c.buf[c.head.head_len..c.head.head_len + n])
    }
}

fn trim_span(offset: usize, bytes: &[u8]) -> Span {
    let lead = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let trail = bytes[lead..]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    Span::new(offset + lead, offset + bytes.len() - trail)
}

/// The variables route `vars` expressions read (`route::VarSource`), with the same meaning as at
/// routing time (`route::HeadVars`): a plugin evaluating an expression sees what the router saw.
impl crate::route::VarSource for Ctx<'_> {
    fn var(&self, name: &str) -> Option<&[u8]> {
        let c = &*self.conn;
        let (buf, head) = (&c.buf[..], &c.head);
        if let Some(arg) = name.strip_prefix("arg_") {
            return crate::route::query_arg(head.query?.of(buf), arg.as_bytes());
        }
        if let Some(field) = name.strip_prefix("http_") {
            return head
                .headers
                .iter()
                .find(|h| crate::route::var_names_field(field.as_bytes(), h.name.of(buf)))
                .map(|h| h.value.of(buf));
        }
        if let Some(cookie) = name.strip_prefix("cookie_") {
            return head
                .header_values(buf, "cookie")
                .find_map(|v| crate::route::cookie_value(v, cookie.as_bytes()));
        }
        match name {
            "uri" => Some(c.route_path()),
            "request_uri" => Some(head.target.of(buf)),
            "args" | "query_string" => head.query.map(|q| q.of(buf)),
            "host" => head.host.map(|h| strip_port(h.of(buf))),
            "request_method" => Some(head.method_span.of(buf)),
            "remote_addr" => Some(c.remote_addr().as_bytes()),
            "server_port" => Some(c.local_port.as_bytes()),
            "scheme" => Some(if c.tls { b"https" } else { b"http" }),
            "server_protocol" => Some(if head.version_minor == 0 {
                b"HTTP/1.0"
            } else {
                b"HTTP/1.1"
            }),
            _ => None,
        }
    }
}
