//! Phase 4: the upstream exchange.
//!
//! select node -> pool checkout or connect -> request head (hop-by-hop removed, framing regenerated,
//! X-Forwarded-*) -> request body (`relay`) -> response head (1xx relayed) -> `header_filter` ->
//! response body (`relay`) -> pool checkin; a failed attempt is retried on another node while the
//! request is replayable. WebSocket/Upgrade hands both connections to `tunnel` after 101.
//!
//! What goes in a head is decided here (the forwarding policy, the plugins' outcome); how it is
//! spelled is `http1::write`'s.

use std::rc::Rc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::{Stopwatch, monotonic_now};

use monoio::io::AsyncWriteRentExt;

use crate::error::{Error, UpstreamError};
use crate::http1::write::{self as w, OutFraming, Target, push_header};
use crate::http1::{self, BodyFraming, Method, ParseError, Parsed, is_hop_by_hop};
use crate::pipeline::{HeaderValue, ResponseCtx};
use crate::plugins::is_identity_header;
use crate::proxy::conn::{ClientConn, Next, PeerTrust, Summary, respond_error};
use crate::proxy::io::{ReadFail, WriteFail, read_more, write_all_vec};
use crate::proxy::{Compiled, Shard, ShardRoute};
use crate::route::HeadVars;
use crate::upstream::pool::UpConn;
use crate::upstream::{self, FailureKind, HashOn, PassHost, ShardUpstream};

use crate::proxy::relay::{MAX_TRAILER_BYTES, Relay, relay_body, stream_request_body};

/// Runs the exchange and writes the response (or an error response) to the client. Returns how
/// many bytes of `c.buf` the request used: the head stays in place for the access log and the
/// caller drains them afterwards (what follows is the next pipelined request).
pub async fn exchange(
    shard: &Shard,
    compiled: &Rc<Compiled>,
    route_idx: usize,
    c: &mut ClientConn,
) -> (Summary, Next, usize) {
    let route = &compiled.routes[route_idx];
    let up = &compiled.upstreams[route.upstream];
    let started = Stopwatch::start();
    match run(shard, compiled, up, route, c).await {
        Ok(done) => {
            let next = if let Some(conn) = done.tunnel {
                Next::Tunnel(conn, route.timeouts.read)
            } else if done.client_close || !c.head.keep_alive {
                Next::Close
            } else {
                Next::KeepAlive
            };
            let summary = Summary {
                status: done.status,
                bytes_out: done.bytes_out,
                upstream_us: Some(started.elapsed_micros()),
                error: done.error,
                close: matches!(next, Next::Close | Next::Tunnel(..)),
            };
            (summary, next, done.consumed)
        }
        Err(Fail {
            error,
            response_started,
            consumed,
        }) => {
            if response_started {
                // Headers already went out: the only honest signal left is closing the connection.
                let summary = Summary {
                    status: 0,
                    bytes_out: 0,
                    upstream_us: None,
                    error: Some(error),
                    close: true,
                };
                return (summary, Next::Close, 0);
            }
            let mut summary = respond_error(c, &error, c.head.method).await;
            summary.upstream_us = Some(started.elapsed_micros());
            // The request body may be half read: only a fully consumed request keeps the connection.
            // A response that said `Connection: close` ends the connection even when the request
            // was consumed (RFC 9112 9.6).
            match consumed {
                Some(n) if c.head.keep_alive && !summary.close => (summary, Next::KeepAlive, n),
                _ => (summary, Next::Close, 0),
            }
        }
    }
}

struct Done {
    status: u16,
    bytes_out: u64,
    /// Bytes of `c.buf` that belonged to this request (head + body).
    consumed: usize,
    client_close: bool,
    /// A failure after the response head was sent (the response was cut short).
    error: Option<Error>,
    /// After a 101: the upstream connection to tunnel bytes to.
    tunnel: Option<UpConn>,
}

pub(super) struct Fail {
    pub(super) error: Error,
    pub(super) response_started: bool,
    /// Some(n) when the whole request (n bytes of `c.buf`) was consumed, so keep-alive can go on.
    pub(super) consumed: Option<usize>,
}

impl Fail {
    pub(super) fn up(error: UpstreamError, consumed: Option<usize>) -> Fail {
        Fail {
            error: Error::Upstream {
                error,
                retryable: false,
            },
            response_started: false,
            consumed,
        }
    }
}

fn hash_key<'a>(c: &'a ClientConn, on: &HashOn) -> &'a [u8] {
    let buf = &c.buf;
    match on {
        HashOn::RemoteAddr => c.remote_addr().as_bytes(),
        HashOn::Uri => c.route_path(),
        HashOn::Host => c.head.host.map(|h| h.of(buf)).unwrap_or(b""),
        HashOn::Query => c.head.query.map(|q| q.of(buf)).unwrap_or(b""),
        HashOn::Header(name) => c.head.header(buf, name).unwrap_or(b""),
        HashOn::Arg(name) => c
            .head
            .query
            .map(|q| q.of(buf))
            .and_then(|q| {
                q.split(|b| *b == b'&').find_map(|kv| {
                    let (k, v) = match kv.iter().position(|b| *b == b'=') {
                        Some(i) => (&kv[..i], &kv[i + 1..]),
                        None => (kv, &b""[..]),
                    };
                    (k == name.as_bytes()).then_some(v)
                })
            })
            .unwrap_or(b""),
        HashOn::Cookie(name) => c
            .head
            .headers
            .iter()
            .filter(|h| h.name.of(buf).eq_ignore_ascii_case(b"cookie"))
            .find_map(|h| {
                h.value.of(buf).split(|b| *b == b';').find_map(|kv| {
                    let kv = kv.trim_ascii();
                    let i = kv.iter().position(|b| *b == b'=')?;
                    (&kv[..i] == name.as_bytes()).then_some(&kv[i + 1..])
                })
            })
            .unwrap_or(b""),
    }
}

async fn run(
    shard: &Shard,
    compiled: &Rc<Compiled>,
    up: &ShardUpstream,
    route: &ShardRoute,
    c: &mut ClientConn,
) -> Result<Done, Fail> {
    let websocket = route.websocket;
    let keep_identity = route.keep_identity_headers;
    let head_len = c.head.head_len;
    // The method the upstream gets (a plugin may change it; never to or from HEAD) decides
    // idempotency for retries and how its response is framed.
    let method = match c.outcome.upstream_method {
        Some(m) => Method::from_bytes(m.as_bytes()),
        None => c.head.method,
    };
    let upgrade = websocket && c.head.upgrade;
    // The whole request is replayable on another connection only when it is already buffered.
    let buffered_body = match c.head.framing {
        BodyFraming::None => Some(0usize),
        BodyFraming::Length(n) => usize::try_from(n)
            .ok()
            .filter(|n| c.buf.len() - head_len >= *n),
        BodyFraming::Chunked | BodyFraming::CloseDelimited => None,
    };
    let replayable = buffered_body.is_some() && method.is_idempotent() && !upgrade;
    let limits = &compiled.published.limits;
    if let BodyFraming::Length(n) = c.head.framing
        && limits.client_max_body_size > 0
        && n > limits.client_max_body_size
    {
        // Refused before an upstream is picked (and before any `100 Continue`).
        return Err(Fail {
            error: Error::BodyTooLarge,
            response_started: false,
            consumed: None,
        });
    }
    if c.head.framing == BodyFraming::Chunked {
        // The body bytes that came with the head are checked before an upstream is picked: a
        // framing error in them is refused without the upstream seeing even the head. (Later
        // ones abort a streamed body before its last chunk, so the upstream never sees a complete
        // request either.)
        let received = http1::scan_received(&c.buf[head_len..], MAX_TRAILER_BYTES);
        let error = match received {
            Err(e) => Some(Error::Parse(e)),
            Ok(n) if limits.client_max_body_size > 0 && n > limits.client_max_body_size => {
                Some(Error::BodyTooLarge)
            }
            Ok(_) => None,
        };
        if let Some(error) = error {
            return Err(Fail {
                error,
                response_started: false,
                consumed: None,
            });
        }
    }

    let mut node_host = build_request_head(compiled, up, c, upgrade, keep_identity);
    // Small buffered bodies ride in the same write as the head.
    if let Some(n) = buffered_body {
        let b = &c.buf[head_len..head_len + n];
        c.out.extend_from_slice(b);
    }

    let mut tried: u64 = 0;
    let mut attempts = 0u32;
    let mut stale_retry_used = false;
    // APISIX `retry_timeout`: a retry due after this instant is not made (the request gets 502).
    // It bounds when the last retry may start, not each attempt's own timeouts.
    let retry_deadline = up.retry_timeout.map(|t| monotonic_now() + t);
    let retry_too_late = |attempts: u32, last: UpstreamError| -> Option<UpstreamError> {
        retry_deadline
            .is_some_and(|d| monotonic_now() > d)
            .then(|| UpstreamError::RetryTimeout {
                retries: attempts,
                last: Box::new(last),
            })
    };
    loop {
        let now = monotonic_now();
        let key = match &up.hash_on {
            Some(on) => hash_key(c, on),
            None => b"",
        };
        let Some(node_idx) = up.pick(key, tried, now) else {
            return Err(Fail::up(UpstreamError::NoHealthyNode, None));
        };
        let node = &up.nodes[node_idx];
        c.node = Some(node_idx);
        if let Some(at) = node_host.clone() {
            node_host = Some(w::replace_value(
                &mut c.out,
                at,
                node.host_header.as_bytes(),
            ));
        }
        // After a stale pooled connection failed, the retry connects afresh: the other idle
        // connections were returned as early and are as likely to be closed already.
        let pooled = if stale_retry_used {
            None
        } else {
            node.pool.checkout(now, &node.key)
        };
        let (mut conn, reused) = match pooled {
            Some(conn) => (conn, true),
            None => match upstream::connect(up, node, route.timeouts.connect).await {
                Ok(conn) => {
                    node.pool.opened.set(node.pool.opened.get() + 1);
                    (conn, false)
                }
                Err(e) => {
                    let kind = match e {
                        UpstreamError::ConnectTimeout => FailureKind::Timeout,
                        _ => FailureKind::Tcp,
                    };
                    if up.report_failure(node_idx, kind, monotonic_now()) {
                        tracing::warn!(upstream = %up.id, node = %node.key, "node failed repeatedly: cooling down");
                    }
                    if let UpstreamError::Tls(reason) = &e {
                        // Usually configuration (name, trust, client certificate): say so plainly.
                        tracing::warn!(upstream = %up.id, node = %node.key, %reason, "upstream TLS handshake failed");
                    } else {
                        tracing::info!(upstream = %up.id, node = %node.key, error = %e, "upstream connect failed");
                    }
                    let mut e = e;
                    if attempts < up.retries && method.is_idempotent() {
                        match retry_too_late(attempts, e) {
                            Some(late) => e = late,
                            None => {
                                attempts += 1;
                                if node_idx < 64 {
                                    tried |= 1 << node_idx;
                                }
                                continue;
                            }
                        }
                    }
                    return Err(Fail {
                        error: Error::Upstream {
                            error: e,
                            retryable: true,
                        },
                        response_started: false,
                        consumed: buffered_body.map(|n| head_len + n),
                    });
                }
            },
        };
        conn.requests += 1;

        // Send the head (+ buffered body).
        let out = std::mem::take(&mut c.out);
        let send_deadline = monotonic_now() + route.timeouts.send;
        let (res, out) =
            write_all_vec(&mut conn.stream, out, Some(c.timer.until(send_deadline))).await;
        c.out = out;
        if let Err(e) = res {
            // A pooled connection the upstream closed while idle: try once on a fresh one. Only
            // after an I/O error: a timed-out write keeps the buffer, so there is nothing to resend.
            if reused && replayable && !stale_retry_used && matches!(e, WriteFail::Io(_)) {
                stale_retry_used = true;
                continue;
            }
            let kind = match e {
                WriteFail::Timeout => FailureKind::Timeout,
                WriteFail::Io(_) => FailureKind::Tcp,
            };
            up.report_failure(node_idx, kind, monotonic_now());
            let err = match e {
                WriteFail::Timeout => UpstreamError::SendTimeout,
                WriteFail::Io(e) => UpstreamError::Io(e.to_string()),
            };
            return Err(Fail::up(err, buffered_body.map(|n| head_len + n)));
        }

        // Stream the rest of the request body, when it was not buffered.
        let mut consumed = head_len + buffered_body.unwrap_or(0);
        if buffered_body.is_none() {
            if c.head.expect_continue {
                let (r, _) = c.stream.write_all(w::CONTINUE).await;
                if r.is_err() {
                    return Err(Fail {
                        error: client_gone(),
                        response_started: true,
                        consumed: None,
                    });
                }
            }
            consumed = stream_request_body(c, &mut conn, route.timeouts.send, limits).await?;
        }

        // Response head.
        let read_deadline = monotonic_now() + route.timeouts.read;
        match read_response_head(
            c,
            &mut conn,
            method,
            read_deadline,
            &compiled.published.limits.http,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                let nothing_received = conn.buf.is_empty();
                if reused
                    && replayable
                    && !stale_retry_used
                    && nothing_received
                    && matches!(e, UpstreamError::ClosedEarly | UpstreamError::Io(_))
                {
                    stale_retry_used = true;
                    continue;
                }
                let kind = match e {
                    UpstreamError::ReadTimeout => Some(FailureKind::Timeout),
                    UpstreamError::ClosedEarly | UpstreamError::Io(_) => Some(FailureKind::Tcp),
                    _ => None,
                };
                if let Some(kind) = kind {
                    up.report_failure(node_idx, kind, monotonic_now());
                }
                // As nginx's `proxy_next_upstream error timeout` (APISIX's retries): a replayable
                // request whose node failed before any response byte goes to another node.
                let mut e = e;
                if kind.is_some() && replayable && nothing_received && attempts < up.retries {
                    match retry_too_late(attempts, e) {
                        Some(late) => e = late,
                        None => {
                            attempts += 1;
                            if node_idx < 64 {
                                tried |= 1 << node_idx;
                            }
                            continue;
                        }
                    }
                }
                return Err(Fail::up(e, Some(consumed)));
            }
        }
        if up.report_status(node_idx, c.resp.status, monotonic_now()) {
            tracing::warn!(upstream = %up.id, node = %up.nodes[node_idx].key, status = c.resp.status, "node answered failure statuses repeatedly: cooling down");
        }

        if c.resp.status == 101 {
            if !upgrade {
                return Err(Fail::up(
                    UpstreamError::BadResponse(ParseError::Malformed(
                        "101 without an upgrade request",
                    )),
                    None,
                ));
            }
            return switch_protocols(c, conn, consumed).await;
        }
        return relay_response(shard, c, conn, node_idx, up, route, consumed).await;
    }
}

pub(super) fn client_gone() -> Error {
    Error::ClientBody("client connection closed".into())
}

/// Request head for the upstream: method, target, filtered headers, our headers, framing.
/// Returns where the Host value is in `c.out` when it names a node (`pass_host: node`).
fn build_request_head(
    compiled: &Compiled,
    up: &ShardUpstream,
    c: &mut ClientConn,
    upgrade: bool,
    keep_identity: bool,
) -> Option<std::ops::Range<usize>> {
    let buf = &c.buf;
    let head = &c.head;
    let out = &mut c.out;
    let mut node_host = None;
    out.clear();
    let method = match c.outcome.upstream_method {
        Some(m) => m.as_bytes(),
        None => head.method_span.of(buf),
    };
    // The upstream gets the path that was routed: the raw target when it is already normal, else
    // the normal form re-encoded (http1::path), with the query as received. absolute-form targets
    // are sent on in origin-form.
    let target = head.target.of(buf);
    let query = head.query.map(|q| q.of(buf));
    let target = if c.outcome.target_rewritten {
        // A plugin's target (proxy-rewrite): already a normal form, encoded, with its query.
        Target::AsIs(&c.outcome.upstream_target)
    } else if !c.path_rewritten && (target.first() == Some(&b'/') || target == b"*") {
        Target::AsIs(target)
    } else if c.path_rewritten {
        Target::Normal {
            path: &c.path,
            query,
        }
    } else {
        Target::Origin {
            path: head.path_bytes(buf),
            query,
        }
    };
    w::request_line(out, method, target);
    let client_host = head.host.map(|h| h.of(buf)).unwrap_or(b"");
    match &up.pass_host {
        // A plugin's Host (proxy-rewrite's `host`) wins over `pass_host`, as in APISIX.
        _ if c.outcome.upstream_host.is_some() => {
            let h = c.outcome.upstream_host.as_deref().unwrap_or("");
            w::host_field(out, h.as_bytes());
        }
        PassHost::Pass => {
            w::host_field(out, client_host);
        }
        PassHost::Node => {
            // The balancer has not picked yet: the first node's value holds the place, and
            // `w::replace_value` replaces it once a node is chosen.
            let first = up.nodes.first().map(|n| n.host_header.as_bytes());
            node_host = Some(w::host_field(out, first.unwrap_or(b"")));
        }
        PassHost::Rewrite(h) => {
            w::host_field(out, h.as_bytes());
        }
    }

    // Client-sent identity headers go on every route unless it opts out; a plugin that sets them
    // strips them whatever the route says.
    let strip_identity = c.outcome.strip_identity_headers || !keep_identity;
    let strip_auth = c.outcome.strip_authorization;
    let mut xff_prev: Option<&[u8]> = None;
    let rid = &c.outcome.request_id;
    // request-id replaces what it regenerates: a client's empty id header, and an invalid
    // `traceparent` with its `tracestate`.
    let replaced_id = rid.header.as_deref().filter(|_| rid.from_client.is_none());
    let replaced_trace = !rid.traceparent.is_empty();
    // A peer in `gateway.trusted_addresses` keeps the forwarding headers it sent (APISIX restores
    // them for a trusted peer); everyone else's are replaced by what the gateway saw.
    let trusted = c.trust == PeerTrust::Trusted;
    let mut kept = ForwardedSent::default();
    for h in &head.headers {
        let name = h.name.of(buf);
        let value = h.value.of(buf);
        if trusted && !value.is_empty() {
            kept.note(name, value);
        }
        if is_hop_by_hop(name)
            || in_tokens(name, &head.connection_tokens, buf)
            || is_path_or_forwarding_override(name)
        {
            continue;
        }
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => continue,
            6 if name.eq_ignore_ascii_case(b"expect") => continue,
            6 if name.eq_ignore_ascii_case(b"cookie") => {
                if let Some(prefix) = &c.outcome.strip_cookie_prefix {
                    w::cookie_without(out, value, prefix.as_bytes());
                    continue;
                }
            }
            9 if name.eq_ignore_ascii_case(b"x-real-ip") => continue,
            10 if replaced_trace && name.eq_ignore_ascii_case(b"tracestate") => continue,
            11 if replaced_trace && name.eq_ignore_ascii_case(b"traceparent") => continue,
            13 if strip_auth && name.eq_ignore_ascii_case(b"authorization") => continue,
            14 if name.eq_ignore_ascii_case(b"content-length") => continue,
            15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => {
                // With a trust boundary, an untrusted peer's chain is dropped (APISIX).
                if c.trust != PeerTrust::Untrusted {
                    xff_prev = Some(value);
                }
                continue;
            }
            16 | 17
                if name.eq_ignore_ascii_case(b"x-forwarded-host")
                    || name.eq_ignore_ascii_case(b"x-forwarded-port")
                    || name.eq_ignore_ascii_case(b"x-forwarded-proto") =>
            {
                continue;
            }
            _ => {}
        }
        if strip_identity && is_identity_header(name) {
            continue;
        }
        if replaced_id.is_some_and(|id| name.eq_ignore_ascii_case(id.as_bytes())) {
            continue;
        }
        if is_dropped(&c.outcome.drop_headers, name) {
            continue;
        }
        push_header(out, name, value);
    }
    // `remote_addr` (the peer's, or the client's as `real-ip` found it) is appended, as nginx's
    // `$proxy_add_x_forwarded_for`.
    let remote = match c.outcome.real_ip {
        Some(_) => c.outcome.real_ip_text.as_bytes(),
        None => c.peer_ip.as_bytes(),
    };
    w::forwarding_fields(
        out,
        &w::Forwarding {
            prior_for: xff_prev,
            remote,
            proto: match kept.proto {
                Some(v) => v,
                None if c.tls => b"https",
                None => b"http",
            },
            host: kept.host.unwrap_or(strip_port(client_host)),
            port: kept.port.unwrap_or(c.local_port.as_bytes()),
            // A trusted peer's own `Forwarded` goes on in place of ours.
            forwarded: kept.forwarded,
            client_host,
            tls: c.tls,
        },
    );
    for (name, value) in &c.outcome.upstream_headers {
        // A later plugin's `set`/`remove` (proxy-rewrite) replaces an earlier plugin's header.
        if !c.outcome.drop_headers.is_empty()
            && is_dropped(&c.outcome.drop_headers, name.as_bytes())
        {
            continue;
        }
        push_header(out, name.as_bytes(), header_value(value, buf));
    }
    for (name, value) in &c.outcome.named_headers {
        push_header(out, name.as_bytes(), header_value(value, buf));
    }
    // request-id: a generated id goes upstream (a client's own is among its headers already),
    // and a started `traceparent` with it.
    if let Some(name) = replaced_id {
        push_header(out, name.as_bytes(), rid.generated.as_bytes());
    }
    if replaced_trace {
        push_header(out, b"traceparent", rid.traceparent.as_bytes());
    }
    // The body goes on as received (a Content-Length), else re-chunked.
    w::framing(
        out,
        match head.framing {
            BodyFraming::None => OutFraming::Unframed,
            BodyFraming::Length(n) => OutFraming::Length(n),
            BodyFraming::Chunked | BodyFraming::CloseDelimited => OutFraming::Chunked,
        },
    );
    if upgrade {
        if let Some(u) = head.header(buf, "upgrade") {
            push_header(out, b"Upgrade", u);
        }
        push_header(out, b"Connection", b"upgrade");
    }
    w::end_head(out);
    let _ = compiled;
    node_host
}

/// The forwarding headers a trusted peer sent (first non-empty value of each), passed on.
#[derive(Default)]
struct ForwardedSent<'a> {
    proto: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    port: Option<&'a [u8]>,
    forwarded: Option<&'a [u8]>,
}

impl<'a> ForwardedSent<'a> {
    fn note(&mut self, name: &[u8], value: &'a [u8]) {
        let slot = match name.len() {
            9 if name.eq_ignore_ascii_case(b"forwarded") => &mut self.forwarded,
            16 if name.eq_ignore_ascii_case(b"x-forwarded-host") => &mut self.host,
            16 if name.eq_ignore_ascii_case(b"x-forwarded-port") => &mut self.port,
            17 if name.eq_ignore_ascii_case(b"x-forwarded-proto") => &mut self.proto,
            _ => return,
        };
        slot.get_or_insert(value);
    }
}

/// Client fields an upstream could take as the gateway's statement about the request: `Forwarded`
/// (replaced by ours), `X-Forwarded-Prefix` (Spring, ASP.NET build links and redirects under
/// it; the gateway strips no prefix), `X-Original-URL` and `X-Rewrite-URL` (Symfony, Zend and IIS
/// route on them instead of the request path, which would undo routing on the path). APISIX
/// passes these through; at the edge nothing legitimate sets them.
fn is_path_or_forwarding_override(name: &[u8]) -> bool {
    [
        &b"forwarded"[..],
        b"x-forwarded-prefix",
        b"x-original-url",
        b"x-rewrite-url",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

/// `host` without a port (`[v6]` keeps its brackets).
pub(crate) fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|b| *b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|b| *b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

fn header_value<'a>(value: &'a HeaderValue, buf: &'a [u8]) -> &'a [u8] {
    match value {
        HeaderValue::Shared(s) => s.as_bytes(),
        HeaderValue::Owned(s) => s.as_bytes(),
        HeaderValue::Request(span) => span.of(buf),
    }
}

/// Whether a plugin asked for header `name` not to go upstream (`drop` holds lower-case names).
fn is_dropped(drop: &[Rc<str>], name: &[u8]) -> bool {
    drop.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(name))
}

pub(super) fn in_tokens(name: &[u8], tokens: &[http1::Span], buf: &[u8]) -> bool {
    tokens.iter().any(|t| t.of(buf).eq_ignore_ascii_case(name))
}

/// Reads until a final (non-1xx) response head is parsed into `c.resp`; 1xx heads are relayed.
async fn read_response_head(
    c: &mut ClientConn,
    conn: &mut UpConn,
    method: Method,
    deadline: Instant,
    limits: &http1::Limits,
) -> Result<(), UpstreamError> {
    loop {
        if !conn.buf.is_empty() {
            match http1::parse_response(&conn.buf, limits, method, &mut c.resp) {
                Ok(Parsed::Complete) => {
                    let status = c.resp.status;
                    if (100..200).contains(&status) && status != 101 {
                        // Interim response (100 Continue, 103 Early Hints): relay to 1.1 clients, drop it otherwise.
                        let n = c.resp.head_len;
                        if c.head.version_minor == 1 && status != 100 {
                            let (r, _) = c.stream.write_all(conn.buf[..n].to_vec()).await;
                            if r.is_err() {
                                return Err(UpstreamError::Io("client gone".into()));
                            }
                        }
                        conn.buf.drain(..n);
                        continue;
                    }
                    return Ok(());
                }
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(UpstreamError::BadResponse(e)),
            }
        }
        let buf = std::mem::take(&mut conn.buf);
        let (r, buf) = read_more(
            &mut conn.stream,
            buf,
            16 * 1024,
            Some(c.timer.until(deadline)),
        )
        .await;
        conn.buf = buf;
        match r {
            Ok(_) => {}
            Err(ReadFail::Timeout) => return Err(UpstreamError::ReadTimeout),
            Err(ReadFail::Eof) => return Err(UpstreamError::ClosedEarly),
            Err(ReadFail::Io(e)) => return Err(UpstreamError::Io(e.to_string())),
        }
    }
}

/// Writes the response head and streams the body to the client, then returns the upstream
/// connection to the pool when it is clean.
async fn relay_response(
    shard: &Shard,
    c: &mut ClientConn,
    mut conn: UpConn,
    _node_idx: usize,
    up: &ShardUpstream,
    route: &ShardRoute,
    consumed: usize,
) -> Result<Done, Fail> {
    let _ = shard;
    // header_filter: plugins see the upstream's head and may change the status, add, set and
    // remove headers, and ask for the body to go through the body filters.
    let (status, filter_body) = {
        let uri = if c.path_rewritten {
            &c.path[..]
        } else {
            c.head.path_bytes(&c.buf)
        };
        let mut rctx = ResponseCtx::new(
            &c.resp,
            &conn.buf,
            HeadVars {
                head: &c.head,
                buf: &c.buf,
                uri,
                remote_addr: &c.peer_ip,
                server_port: &c.local_port,
                tls: c.tls,
            },
            &mut c.outcome.response_headers,
            &mut c.outcome.response_remove,
            &mut c.scratch,
        );
        if let Err(error) = route.plugins.header_filter(&mut rctx) {
            return Err(Fail {
                error,
                response_started: false,
                consumed: Some(consumed),
            });
        }
        // Only a route with a body filter may take the filtered path: one test per response.
        let filter = rctx.filter_body && route.plugins.has_body_filter();
        (rctx.status, filter)
    };
    let framing = c.resp.framing;
    let client_11 = c.head.version_minor == 1;
    // Close-delimited bodies are re-framed as chunked for HTTP/1.1 clients so keep-alive survives;
    // so are filtered bodies (their length is unknown until the last piece).
    let reframe = framing != BodyFraming::None
        && (filter_body || matches!(framing, BodyFraming::Chunked | BodyFraming::CloseDelimited));
    let chunk_out = client_11 && reframe;
    let client_close = !c.head.keep_alive || (!client_11 && reframe);

    let resp_head_len = c.resp.head_len;
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    let remove = &c.outcome.response_remove;
    w::relayed_response_head(
        &mut out,
        &c.resp,
        &conn.buf,
        status,
        framing != BodyFraming::None || filter_body,
        // header_filter's removals (response-rewrite).
        |name| {
            !remove.is_empty()
                && remove
                    .iter()
                    .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
        },
    );
    for (k, v) in &c.outcome.response_headers {
        push_header(&mut out, k.as_bytes(), v.as_bytes());
    }
    out.extend_from_slice(c.outcome.response_added.as_bytes());
    // request-id's `include_in_response`, unless the upstream answered with its own id.
    let rid = &c.outcome.request_id;
    if rid.in_response
        && let Some(name) = &rid.header
        && c.resp.header(&conn.buf, name).is_none_or(|v| v.is_empty())
        && let Some(id) = rid.value(&c.buf)
    {
        push_header(&mut out, name.as_bytes(), id);
    }
    w::framing(
        &mut out,
        match framing {
            BodyFraming::Length(n) if !reframe => OutFraming::Length(n),
            _ if chunk_out => OutFraming::Chunked,
            _ => OutFraming::Unframed,
        },
    );
    if client_close {
        w::connection_close(&mut out);
    }
    w::end_head(&mut out);
    conn.buf.drain(..resp_head_len);

    let mut bytes_out: u64 = 0;
    // A body that ends with the connection leaves nothing to reuse.
    let upstream_clean = c.resp.keep_alive && framing != BodyFraming::CloseDelimited;
    c.out = out;
    let relay = Relay {
        chunk_out,
        // A response without a body has nothing to filter.
        filters: (filter_body && framing != BodyFraming::None).then_some(&route.plugins),
        read_timeout: route.timeouts.read,
        write_timeout: route.timeouts.send.max(Duration::from_secs(30)),
    };
    let body_result = relay_body(c, &mut conn, framing, &relay, &mut bytes_out).await;
    if let Err((err, _)) = body_result {
        return Ok(Done {
            status,
            bytes_out,
            consumed,
            client_close: true,
            error: Some(err),
            tunnel: None,
        });
    }
    if upstream_clean && conn.buf.is_empty() {
        // A node's pool keeps the connection for the next request on this shard.
        let node = up
            .nodes
            .iter()
            .position(|n| Rc::ptr_eq(&n.pool, &up.nodes[_node_idx].pool));
        if let Some(i) = node {
            up.nodes[i].pool.checkin(conn, monotonic_now());
        }
    }
    Ok(Done {
        status,
        bytes_out,
        consumed,
        client_close,
        error: None,
        tunnel: None,
    })
}

/// After a 101: relay the head to the client and hand the upstream connection to the caller,
/// which owns the client stream and runs the byte tunnel (`conn::tunnel`).
async fn switch_protocols(
    c: &mut ClientConn,
    mut conn: UpConn,
    consumed: usize,
) -> Result<Done, Fail> {
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    // The 101 head is relayed as received: its Connection/Upgrade headers are the handshake.
    out.extend_from_slice(&conn.buf);
    conn.buf.clear();
    let (r, o) = write_all_vec(&mut c.stream, out, None).await;
    c.out = o;
    c.out.clear();
    if r.is_err() {
        return Err(Fail {
            error: client_gone(),
            response_started: true,
            consumed: None,
        });
    }
    // Bytes the client sent after its upgrade request belong to the new protocol.
    if c.buf.len() > consumed {
        let extra = c.buf[consumed..].to_vec();
        let (r, _) = conn.stream.write_all(extra).await;
        if r.is_err() {
            return Err(Fail {
                error: client_gone(),
                response_started: true,
                consumed: None,
            });
        }
    }
    let bytes_out = c.resp.head_len as u64;
    Ok(Done {
        status: 101,
        bytes_out,
        consumed,
        client_close: true,
        error: None,
        tunnel: Some(conn),
    })
}
