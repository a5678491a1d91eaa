//! One client connection: keep-alive, pipelining, timeouts, and the request pipeline phases.
//!
//! Phases, in order (each a function below):
//! 1. `read_head`   parse with limits; 408 on header timeout, 400/431/505 on bad input
//! 2. `route`       host/uri/method -> compiled route; 404
//! 3. plugins       `rewrite`, `access`, `before_proxy` (pipeline::Chain): continue, answer (a
//!    success such as a login redirect), or fail (an error from the error map)
//! 4. `forward`     upstream exchange (see forward.rs), body streaming both ways; `header_filter`
//! 5. `log`         one access-log line, the metrics and the plugins' `log`, once per request
//!
//! Responses are written in request order because requests are handled one at a time: pipelined
//! requests simply wait in the read buffer.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::{Stopwatch, monotonic_now};

use crate::error::{self, Error};
use crate::http1::write::{end_head, push_header, write_simple_head};
use crate::http1::{self, BodyFraming, Method, Parsed, RequestHead, ResponseHead};
use crate::observe::redact::redact_target;
use crate::pipeline::{Ctx, LogInfo, Outcome, RequestScratch, Response, Step};
use crate::proxy::io::{ReadFail, Timer, read_more, write_all_vec};
use crate::proxy::stream::ClientStream;
use crate::proxy::{Compiled, Shard, forward, tunnel};

/// Per-connection state, reused for every request on the connection.
pub struct ClientConn {
    pub stream: ClientStream,
    /// Unconsumed bytes from the client: the current head, body bytes, pipelined requests.
    pub buf: Vec<u8>,
    /// Scratch for heads we write (upstream request, client response).
    pub out: Vec<u8>,
    pub head: RequestHead,
    pub resp: ResponseHead,
    pub outcome: Outcome,
    /// Per-request plugin state (parsed cookies, typed slots), cleared per request.
    pub scratch: RequestScratch,
    pub peer: SocketAddr,
    /// The client IP as text, computed once per connection for X-Forwarded-For / X-Real-IP.
    pub peer_ip: String,
    pub local_port: String,
    pub tls: bool,
    /// Requests served on this connection.
    pub served: u64,
    /// Deadline for whichever read or write (client or upstream side) is in flight.
    pub timer: Timer,
    /// The normal form of the current request's path when it differs from the raw path
    /// (`path_rewritten`); scratch reused across requests.
    pub path: Vec<u8>,
    pub path_rewritten: bool,
    /// The upstream node the current request's last attempt went to (index into the route's
    /// upstream), for the access log; reset per request.
    pub node: Option<usize>,
    /// The peer against `gateway.trusted_addresses`, decided per request (a reload may change
    /// the list).
    pub trust: PeerTrust,
}

/// Whether the peer's forwarding headers (`X-Forwarded-*`, `Forwarded`) are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTrust {
    /// No `gateway.trusted_addresses`: nobody's host and proto are believed, the client's
    /// `X-Forwarded-For` chain is kept (APISIX's default).
    NotConfigured,
    Trusted,
    /// Outside `gateway.trusted_addresses`: its `X-Forwarded-For` is dropped as well.
    Untrusted,
}

impl ClientConn {
    /// `remote_addr`: the address `real-ip` set for this request, else the peer's.
    pub fn remote_addr(&self) -> &str {
        match self.outcome.real_ip {
            Some(_) => &self.outcome.real_ip_text,
            None => &self.peer_ip,
        }
    }

    /// [`ClientConn::remote_addr`] as an address.
    pub fn remote_ip(&self) -> std::net::IpAddr {
        self.outcome.real_ip.unwrap_or_else(|| self.peer.ip())
    }

    /// The path routes match and plugins compare: the normal form (see `http1::path`).
    pub fn route_path(&self) -> &[u8] {
        if self.path_rewritten {
            &self.path
        } else {
            self.head.path_bytes(&self.buf)
        }
    }
}

/// Normalises the current request's path into `c.path`. `*` (OPTIONS) and CONNECT's authority
/// are not paths and route as they are.
fn normalize_path(c: &mut ClientConn) -> Result<(), http1::path::PathError> {
    c.path_rewritten = false;
    c.node = None;
    let raw = c.head.path_bytes(&c.buf);
    if raw.first() != Some(&b'/') {
        return Ok(());
    }
    if http1::path::normalize(raw, &mut c.path)? == http1::path::Normal::Rewritten {
        c.path_rewritten = true;
    }
    Ok(())
}

/// Whether the connection may carry another request.
pub enum Next {
    KeepAlive,
    Close,
    /// The upstream answered 101: the connection becomes a byte tunnel to it, closed after the
    /// given time without a byte either way (the upstream's `timeout.read`).
    Tunnel(crate::upstream::pool::UpConn, Duration),
}

/// What the access log and metrics need about one request.
pub struct Summary {
    pub status: u16,
    pub bytes_out: u64,
    pub upstream_us: Option<u64>,
    pub error: Option<Error>,
    /// The response said `Connection: close`: nothing more may be read on the connection
    /// (RFC 9112 9.6), however the request ended.
    pub close: bool,
}

/// Serves one accepted connection (TLS already negotiated for a TLS listener) until it closes.
pub async fn serve(shard: Rc<Shard>, stream: ClientStream, peer: SocketAddr, local_port: u16) {
    shard.metrics.accepted.set(shard.metrics.accepted.get() + 1);
    shard
        .metrics
        .open_connections
        .set(shard.metrics.open_connections.get() + 1);
    let tls = stream.is_tls();
    let mut c = ClientConn {
        stream,
        buf: Vec::with_capacity(8 * 1024),
        out: Vec::with_capacity(8 * 1024),
        head: RequestHead::new(),
        resp: ResponseHead::new(),
        outcome: Outcome::default(),
        scratch: RequestScratch::default(),
        peer,
        peer_ip: peer.ip().to_string(),
        local_port: local_port.to_string(),
        tls,
        served: 0,
        timer: Timer::on_shard(),
        path: Vec::new(),
        path_rewritten: false,
        node: None,
        trust: PeerTrust::NotConfigured,
    };
    loop {
        let compiled = shard.current();
        match read_head(&shard, &compiled, &mut c).await {
            Ok(started) => {
                // The head may have waited through a reload (an idle keep-alive connection):
                // the request is served with the config current when it arrived.
                let compiled = shard.current();
                let Some(_guard) = shard.gate.enter() else {
                    break;
                };
                let next = handle(&shard, &compiled, &mut c, started).await;
                c.served += 1;
                match next {
                    Next::KeepAlive if !shard.shutdown.is_triggered() => {}
                    Next::KeepAlive | Next::Close => break,
                    // Still an open connection (the gauge, `max_connections`) and still in the
                    // gate, so shutdown closes it when the drain time ends.
                    Next::Tunnel(up, idle) => {
                        tunnel::tunnel(c.stream, up, idle, &shard.gate).await;
                        break;
                    }
                }
            }
            Err(HeadFail::Closed) => break,
            Err(HeadFail::Bad(err)) => {
                let started = Stopwatch::start();
                c.outcome.clear();
                let summary = respond_error(&mut c, &err, Method::Get).await;
                log(&shard, &compiled, &c, None, started, &summary, true);
                break;
            }
        }
    }
    shard
        .metrics
        .open_connections
        .set(shard.metrics.open_connections.get() - 1);
}

enum HeadFail {
    /// EOF, idle timeout, shutdown or a reset while idle: close quietly.
    Closed,
    /// Answer with an error, then close.
    Bad(Error),
}

/// Phase 1: wait for and parse one request head.
async fn read_head(
    shard: &Shard,
    compiled: &Compiled,
    c: &mut ClientConn,
) -> Result<Stopwatch, HeadFail> {
    let limits = &compiled.published.limits;
    // Started at the first byte of the request: the access log's latency and the header deadline.
    let mut first_byte: Option<Stopwatch> = None;
    let mut header_deadline: Option<Instant> = None;
    loop {
        if !c.buf.is_empty() {
            let started = *first_byte.get_or_insert_with(Stopwatch::start);
            header_deadline.get_or_insert_with(|| started.started() + limits.header_timeout);
            match http1::parse_request(&c.buf, &limits.http, &mut c.head) {
                Ok(Parsed::Complete) => return Ok(started),
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(HeadFail::Bad(Error::Parse(e))),
            }
        }
        let buf = std::mem::take(&mut c.buf);
        let (res, buf) = match header_deadline {
            // Waiting for the first byte of a request: between requests the idle timeout applies,
            // but a new connection gets only header_timeout for its first byte, or silent
            // connections would hold `max_connections` slots for idle_timeout each. Shutdown
            // closes idle connections instead of waiting for them.
            None => {
                let wait = if c.served == 0 {
                    limits.header_timeout
                } else {
                    limits.idle_timeout
                };
                let deadline = monotonic_now() + wait;
                let read = read_more(&mut c.stream, buf, 8 * 1024, Some(c.timer.until(deadline)));
                monoio::select! {
                    r = read => r,
                    _ = shard.shutdown.wait() => return Err(HeadFail::Closed),
                }
            }
            Some(d) => read_more(&mut c.stream, buf, 8 * 1024, Some(c.timer.until(d))).await,
        };
        c.buf = buf;
        match res {
            Ok(_) => {
                if c.buf.len() > limits.http.max_header_bytes + 8 * 1024
                    && header_deadline.is_some()
                {
                    // parse_request reports HeaderTooLarge itself; this only bounds the buffer.
                    continue;
                }
            }
            Err(ReadFail::Timeout) if header_deadline.is_some() => {
                return Err(HeadFail::Bad(Error::HeaderTimeout));
            }
            Err(_) => return Err(HeadFail::Closed),
        }
    }
}

/// Phases 2-5 for one parsed request.
async fn handle(
    shard: &Shard,
    compiled: &Rc<Compiled>,
    c: &mut ClientConn,
    started: Stopwatch,
) -> Next {
    let method = c.head.method;
    // What the previous request's plugins left (CORS headers, a request id) must not reach this
    // request's answers, the early ones (400, 404) included.
    c.outcome.clear();
    c.trust = match &compiled.published.trusted_addresses {
        None => PeerTrust::NotConfigured,
        Some(set) if set.contains(c.peer.ip()) => PeerTrust::Trusted,
        Some(_) => PeerTrust::Untrusted,
    };
    // Phase 2: route, on the normal form of the path (http1::path): the upstream decodes and
    // normalises the path, so matching raw bytes would let `/%61pi/x` or `/public/../api/x` pass
    // a public route and be served as `/api/x`.
    if let Err(e) = normalize_path(c) {
        let err = Error::Path(e);
        let summary = respond_error(c, &err, method).await;
        log(shard, compiled, c, None, started, &summary, false);
        return finish_early(c, &summary);
    }
    let path = c.route_path();
    let host = c.head.host.map(|h| h.of(&c.buf));
    let method_token = c.head.method_span.of(&c.buf);
    let req = crate::route::Request {
        host,
        path,
        method: method_token,
        remote_addr: Some(c.peer.ip()),
    };
    // Until the plugin pipeline's request context exists, `vars` read the head directly.
    let vars = crate::route::HeadVars {
        head: &c.head,
        buf: &c.buf,
        uri: path,
        remote_addr: &c.peer_ip,
        server_port: &c.local_port,
        tls: c.tls,
    };
    let matched = compiled.published.table.find_match(&req, &vars);
    let Some(m) = matched else {
        let err = Error::RouteNotFound;
        let summary = respond_error(c, &err, method).await;
        log(shard, compiled, c, None, started, &summary, false);
        return finish_early(c, &summary);
    };
    let route_idx = m.route;
    let route = &compiled.routes[route_idx];

    // Phase 3: the plugins' request phases.
    if !route.plugins.plugins.is_empty() {
        c.scratch.clear();
        let mut ctx =
            Ctx::new(c, &shard.metrics, &route.id).with_params(&compiled.published.table, m);
        let step = route.plugins.request_phases(&mut ctx).await;
        let summary = match step {
            Ok(Step::Continue) => None,
            Ok(Step::Respond(r)) => Some(respond_plugin(c, &r, method).await),
            Err(err) => Some(respond_error(c, &err, method).await),
        };
        if let Some(summary) = summary {
            log(
                shard,
                compiled,
                c,
                Some(route_idx),
                started,
                &summary,
                false,
            );
            return finish_early(c, &summary);
        }
    }

    // Phase 4: forward.
    let (summary, next, consumed) = forward::exchange(shard, compiled, route_idx, c).await;
    log(
        shard,
        compiled,
        c,
        Some(route_idx),
        started,
        &summary,
        false,
    );
    if matches!(next, Next::KeepAlive) {
        c.buf.drain(..consumed.min(c.buf.len()));
    }
    next
}

/// After answering without reading the request body, the body's bytes would be taken for the next
/// request: consume it when it is already buffered, otherwise close. A response that announced
/// `Connection: close` always closes: a pipelined request after it is never processed.
fn finish_early(c: &mut ClientConn, summary: &Summary) -> Next {
    if summary.close {
        return Next::Close;
    }
    let head_len = c.head.head_len;
    match c.head.framing {
        BodyFraming::None => {
            c.buf.drain(..head_len);
            if c.head.keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        BodyFraming::Length(n) if (c.buf.len() - head_len) as u64 >= n && c.head.keep_alive => {
            // `n` fits in the buffer, so it fits in usize.
            c.buf.drain(..head_len + n as usize);
            Next::KeepAlive
        }
        _ => Next::Close,
    }
}

/// Writes the response for `err` (the one mapping in `error::respond`).
pub async fn respond_error(c: &mut ClientConn, err: &Error, method: Method) -> Summary {
    let r = error::respond(err);
    let answer = Answer {
        status: r.status,
        content_type: r.content_type,
        headers: &r.headers,
        body: &r.body,
    };
    write_answer(c, answer, r.close, method, Some(err.clone())).await
}

/// Writes a response a plugin answered with (a success: a redirect, a logout page): not an
/// error, so it is neither counted in `shardgate_errors_total` nor logged as a rejection.
pub async fn respond_plugin(c: &mut ClientConn, r: &Response, method: Method) -> Summary {
    let answer = Answer {
        status: r.status,
        content_type: r.content_type,
        headers: &r.headers,
        body: &r.body,
    };
    write_answer(c, answer, false, method, None).await
}

/// A complete small response the gateway writes itself (the error map's or a plugin's).
struct Answer<'a> {
    status: u16,
    content_type: &'a str,
    headers: &'a [(String, String)],
    body: &'a [u8],
}

/// Writes `a` with the plugins' response headers (`Set-Cookie`) added. The connection closes
/// when asked to, when the client did not keep it alive, or when an unread request body would
/// otherwise be taken for the next request.
async fn write_answer(
    c: &mut ClientConn,
    a: Answer<'_>,
    close: bool,
    method: Method,
    error: Option<Error>,
) -> Summary {
    let close = close || !c.head.keep_alive || !matches!(c.head.framing, BodyFraming::None);
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    let own_cache_control = a
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("cache-control"));
    write_simple_head(
        &mut out,
        a.status,
        a.content_type,
        a.body.len(),
        close,
        !own_cache_control,
    );
    for (k, v) in a.headers.iter().chain(c.outcome.response_headers.iter()) {
        push_header(&mut out, k.as_bytes(), v.as_bytes());
    }
    out.extend_from_slice(c.outcome.response_added.as_bytes());
    let rid = &c.outcome.request_id;
    if rid.in_response
        && let Some(name) = &rid.header
        && let Some(id) = rid.value(&c.buf)
    {
        push_header(&mut out, name.as_bytes(), id);
    }
    end_head(&mut out);
    if method != Method::Head {
        out.extend_from_slice(a.body);
    }
    let len = out.len() as u64;
    let (res, out) = write_all_vec(
        &mut c.stream,
        out,
        Some(c.timer.until(monotonic_now() + Duration::from_secs(30))),
    )
    .await;
    c.out = out;
    Summary {
        status: a.status,
        bytes_out: if res.is_ok() { len } else { 0 },
        upstream_us: None,
        error,
        close,
    }
}

/// Phase 5: the access-log line and the metrics, once per request.
fn log(
    shard: &Shard,
    compiled: &Compiled,
    c: &ClientConn,
    route: Option<usize>,
    started: Stopwatch,
    s: &Summary,
    bad_head: bool,
) {
    let total_us = started.elapsed_micros();
    let m = &shard.metrics;
    m.requests.set(m.requests.get() + 1);
    m.record_latency(total_us, s.upstream_us);
    let mut upstream_node = "";
    let route_id = match route {
        Some(i) => {
            let r = &compiled.routes[i];
            if let Some(n) = c.node
                && let Some(node) = compiled
                    .upstreams
                    .get(r.upstream)
                    .and_then(|u| u.nodes.get(n))
            {
                upstream_node = &node.key;
            }
            r.stats.record(s.status);
            r.plugins.log(&LogInfo {
                status: s.status,
                bytes_out: s.bytes_out,
                upstream_us: s.upstream_us,
                total_us,
                error: s.error.as_ref(),
                scratch: &c.scratch,
            });
            &*r.id
        }
        None => {
            m.unrouted.record(s.status);
            ""
        }
    };
    // One line per request: a refusal or failure is the access line with its reason (warn when
    // the upstream side or the gateway failed), or, with the access log off, the only line.
    let reason = s.error.as_ref().map(tracing::field::display);
    let warn = s
        .error
        .as_ref()
        .is_some_and(|e| e.side() != error::Side::Downstream);
    if let Some(e) = &s.error {
        m.record_error(e.code());
    }
    let message = match (&s.error, warn) {
        (None, _) => "",
        (Some(_), false) => "request rejected",
        (Some(_), true) => "request failed",
    };
    let (method, path) = if bad_head {
        ("-", Cow::Borrowed("-"))
    } else {
        (
            std::str::from_utf8(c.head.method_span.of(&c.buf)).unwrap_or("-"),
            std::str::from_utf8(c.head.target.of(&c.buf))
                .map(redact_target)
                .unwrap_or(Cow::Borrowed("-")),
        )
    };
    let path = &*path;
    // The request's id (request-id), absent without the plugin.
    let request_id = c
        .outcome
        .request_id
        .value(&c.buf)
        .and_then(|v| std::str::from_utf8(v).ok());
    // The client's address as real-ip found it; absent when it is the peer's.
    let remote_addr = c.outcome.real_ip.map(|_| c.outcome.real_ip_text.as_str());
    macro_rules! line {
        ($level:ident, $($target:tt)*) => {
            tracing::$level!(
                $($target)*
                method,
                path,
                status = s.status,
                bytes = s.bytes_out,
                upstream_ms = s.upstream_us.map(|u| u as f64 / 1000.0),
                total_ms = total_us as f64 / 1000.0,
                route = route_id,
                upstream = upstream_node,
                shard = shard.info.id,
                peer = %c.peer,
                remote_addr,
                request_id,
                reason,
                "{message}"
            )
        };
    }
    match (compiled.published.access_log, warn) {
        (true, false) => line!(info, target: "access",),
        (true, true) => line!(warn, target: "access",),
        (false, _) if s.error.is_none() => {}
        (false, false) => line!(info,),
        (false, true) => line!(warn,),
    }
}
