//! Phase 4: the upstream exchange.
//!
//! select node -> pool checkout or connect -> request head (hop-by-hop removed, framing regenerated,
//! X-Forwarded-*) -> request body (streamed, bounded) -> response head (1xx relayed) -> response
//! body (streamed, re-framed) -> pool checkin. WebSocket/Upgrade becomes a byte tunnel after 101.
//!
//! Memory stays flat whatever the body size: bodies move through the connection's own buffers in
//! pieces of at most `BODY_CHUNK` bytes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use shardgate_runtime::clock::{Stopwatch, monotonic_now};

use monoio::io::AsyncWriteRentExt;

use crate::error::{Error, UpstreamError};
use crate::http1::{
    self, BodyFraming, ChunkEvent, ChunkedDecoder, Method, ParseError, Parsed, is_hop_by_hop,
};
use crate::pipeline::registry::Chain;
use crate::pipeline::{BodyChunk, HeaderValue, ResponseCtx};
use crate::plugins::is_identity_header;
use crate::proxy::conn::{
    ClientConn, Next, PeerTrust, Summary, push_header, push_u64, reason, respond_error,
};
use crate::proxy::io::{ReadFail, Timer, WriteFail, read_more, write_all_vec, write_range};
use crate::proxy::{Compiled, Shard, ShardRoute};
use crate::route::HeadVars;
use crate::upstream::pool::UpConn;
use crate::upstream::{self, FailureKind, HashOn, PassHost, ShardUpstream};

const BODY_CHUNK: usize = 64 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;

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

struct Fail {
    error: Error,
    response_started: bool,
    /// Some(n) when the whole request (n bytes of `c.buf`) was consumed, so keep-alive can go on.
    consumed: Option<usize>,
}

impl Fail {
    fn up(error: UpstreamError, consumed: Option<usize>) -> Fail {
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
        if let Some(range) = node_host.clone() {
            set_node_host(
                &mut c.out,
                range,
                node.host_header.as_bytes(),
                &mut node_host,
            );
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
                let (r, _) = c
                    .stream
                    .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
                    .await;
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

fn client_gone() -> Error {
    Error::ClientBody("client connection closed".into())
}

/// With `pass_host: node` the Host value must name the node picked for this attempt, which a retry
/// may change: rewrite the value in place when it differs.
fn set_node_host(
    out: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    host: &[u8],
    node_host: &mut Option<std::ops::Range<usize>>,
) {
    if out.get(range.clone()) != Some(host) {
        let start = range.start;
        out.splice(range, host.iter().copied());
        *node_host = Some(start..start + host.len());
    }
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
    match c.outcome.upstream_method {
        Some(m) => out.extend_from_slice(m.as_bytes()),
        None => out.extend_from_slice(head.method_span.of(buf)),
    }
    out.push(b' ');
    // The upstream gets the path that was routed: the raw target when it is already normal, else
    // the normal form re-encoded (http1::path), with the query as received. absolute-form targets
    // are sent on in origin-form.
    let target = head.target.of(buf);
    if c.outcome.target_rewritten {
        // A plugin's target (proxy-rewrite): already a normal form, encoded, with its query.
        out.extend_from_slice(&c.outcome.upstream_target);
    } else if !c.path_rewritten && (target.first() == Some(&b'/') || target == b"*") {
        out.extend_from_slice(target);
    } else {
        if c.path_rewritten {
            http1::path::encode_into(&c.path, out);
        } else {
            out.extend_from_slice(head.path_bytes(buf));
        }
        if let Some(q) = head.query {
            out.push(b'?');
            out.extend_from_slice(q.of(buf));
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    let client_host = head.host.map(|h| h.of(buf)).unwrap_or(b"");
    match &up.pass_host {
        // A plugin's Host (proxy-rewrite's `host`) wins over `pass_host`, as in APISIX.
        _ if c.outcome.upstream_host.is_some() => {
            if let Some(h) = &c.outcome.upstream_host {
                out.extend_from_slice(h.as_bytes());
            }
        }
        PassHost::Pass => out.extend_from_slice(client_host),
        PassHost::Node => {
            // The balancer has not picked yet: the first node's value holds the place, and
            // `set_node_host` replaces it once a node is chosen.
            let start = out.len();
            out.extend_from_slice(
                up.nodes
                    .first()
                    .map(|n| n.host_header.as_bytes())
                    .unwrap_or(b""),
            );
            node_host = Some(start..out.len());
        }
        PassHost::Rewrite(h) => out.extend_from_slice(h.as_bytes()),
    }
    out.extend_from_slice(b"\r\n");

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
                    write_filtered_cookie(out, value, prefix.as_bytes());
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
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = xff_prev {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(remote);
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(remote);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(match kept.proto {
        Some(v) => v,
        None if c.tls => b"https",
        None => b"http",
    });
    out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
    out.extend_from_slice(kept.host.unwrap_or(strip_port(client_host)));
    out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
    out.extend_from_slice(kept.port.unwrap_or(c.local_port.as_bytes()));
    if let Some(v) = kept.forwarded {
        out.extend_from_slice(b"\r\nForwarded: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    } else {
        write_forwarded(out, remote, client_host, c.tls);
    }
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
    match head.framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked | BodyFraming::CloseDelimited => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
    }
    if upgrade {
        if let Some(u) = head.header(buf, "upgrade") {
            push_header(out, b"Upgrade", u);
        }
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let _ = compiled;
    node_host
}

/// Client fields an upstream could take as the gateway's statement about the request: `Forwarded`
/// (replaced by ours), `X-Forwarded-Prefix` (Spring, ASP.NET build links and redirects under
/// it; the gateway strips no prefix), `X-Original-URL` and `X-Rewrite-URL` (Symfony, Zend and IIS
/// route on them instead of the request path, which would undo routing on the path). APISIX
/// passes these through; at the edge nothing legitimate sets them.
/// RFC 7239 `Forwarded` (after `\r\n` of the previous line), replacing the client's like
/// X-Forwarded-Host/Proto: frameworks take host and proto from the first element, which a
/// client-supplied value would own.
fn write_forwarded(out: &mut Vec<u8>, remote: &[u8], client_host: &[u8], tls: bool) {
    out.extend_from_slice(b"\r\nForwarded: for=");
    if remote.contains(&b':') {
        out.extend_from_slice(b"\"[");
        out.extend_from_slice(remote);
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(remote);
    }
    if !client_host.is_empty() {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(client_host);
        out.push(b'"');
    }
    out.extend_from_slice(if tls { b";proto=https" } else { b";proto=http" });
    out.extend_from_slice(b"\r\n");
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

fn in_tokens(name: &[u8], tokens: &[http1::Span], buf: &[u8]) -> bool {
    tokens.iter().any(|t| t.of(buf).eq_ignore_ascii_case(name))
}

/// Copies a Cookie header without the cookies whose name starts with `prefix` (our session).
fn write_filtered_cookie(out: &mut Vec<u8>, value: &[u8], prefix: &[u8]) {
    let mark = out.len();
    out.extend_from_slice(b"Cookie: ");
    let start = out.len();
    for part in shardgate_oidc::session::split_semicolons(value) {
        let part = part.trim_ascii();
        if part.is_empty() || part.starts_with(prefix) {
            continue;
        }
        if out.len() > start {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(part);
    }
    if out.len() == start {
        out.truncate(mark);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Streams the request body that was not buffered with the head. Returns bytes of `c.buf` consumed.
async fn stream_request_body(
    c: &mut ClientConn,
    conn: &mut UpConn,
    send_timeout: Duration,
    limits: &crate::published::ProxyLimits,
) -> Result<usize, Fail> {
    let head_len = c.head.head_len;
    let mut clock = BodyClock {
        started: monotonic_now(),
        received: 0,
        per_read: limits.client_body_timeout,
        min_rate: limits.client_body_min_rate,
    };
    match c.head.framing {
        BodyFraming::Length(n) => {
            let mut remaining = n;
            let mut pos = head_len;
            loop {
                let avail =
                    (c.buf.len() - pos).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                if avail > 0 {
                    let buf = std::mem::take(&mut c.buf);
                    let (r, buf) = write_range(
                        &mut conn.stream,
                        buf,
                        pos,
                        pos + avail,
                        Some(c.timer.until(monotonic_now() + send_timeout)),
                    )
                    .await;
                    c.buf = buf;
                    r.map_err(send_fail)?;
                    pos += avail;
                    remaining -= avail as u64;
                    clock.received += avail as u64;
                }
                if remaining == 0 {
                    return Ok(pos);
                }
                // Keep the head for the log; reuse the space after it.
                c.buf.truncate(head_len);
                pos = head_len;
                read_client_body(
                    c,
                    clock.deadline(),
                    "client closed before the whole body was received",
                )
                .await?;
            }
        }
        BodyFraming::Chunked => {
            let mut dec = ChunkedDecoder::new(MAX_TRAILER_BYTES);
            let mut pos = head_len;
            let mut wire: Vec<u8> = Vec::with_capacity(BODY_CHUNK + 64);
            let mut saw_trailers = false;
            let mut data_total: u64 = 0;
            loop {
                let (n, ev) = dec.decode(&c.buf[pos..]).map_err(|e| Fail {
                    error: Error::Parse(e),
                    response_started: false,
                    consumed: None,
                })?;
                let base = pos;
                pos += n;
                match ev {
                    ChunkEvent::Data(span) => {
                        let data = &c.buf[base + span.start as usize..base + span.end as usize];
                        data_total += data.len() as u64;
                        if limits.client_max_body_size > 0
                            && data_total > limits.client_max_body_size
                        {
                            return Err(Fail {
                                error: Error::BodyTooLarge,
                                response_started: false,
                                consumed: None,
                            });
                        }
                        http1::write_chunk_header(&mut wire, data.len());
                        wire.extend_from_slice(data);
                        wire.extend_from_slice(b"\r\n");
                        if wire.len() >= BODY_CHUNK {
                            wire = flush(conn, &mut c.timer, wire, send_timeout).await?;
                        }
                    }
                    ChunkEvent::Trailers(span) => {
                        saw_trailers = true;
                        wire.extend_from_slice(http1::LAST_CHUNK);
                        write_allowed_trailers(
                            &mut wire,
                            &c.buf[base + span.start as usize..base + span.end as usize],
                            &c.head.connection_tokens,
                            &c.buf,
                        );
                        wire.extend_from_slice(b"\r\n");
                    }
                    ChunkEvent::End => {
                        if !saw_trailers {
                            wire.extend_from_slice(b"0\r\n\r\n");
                        }
                        flush(conn, &mut c.timer, wire, send_timeout).await?;
                        return Ok(pos);
                    }
                    ChunkEvent::NeedMore => {
                        if !wire.is_empty() {
                            wire = flush(conn, &mut c.timer, wire, send_timeout).await?;
                        }
                        // Drop what was decoded, keep the head and any partial chunk line.
                        clock.received += (pos - head_len) as u64;
                        c.buf.drain(head_len..pos);
                        pos = head_len;
                        read_client_body(
                            c,
                            clock.deadline(),
                            "client closed inside a chunked body",
                        )
                        .await?;
                    }
                }
            }
        }
        BodyFraming::None | BodyFraming::CloseDelimited => Ok(head_len),
    }
}

/// Fields never forwarded in a request trailer section: what the gateway controls in the head
/// (routing, framing, credentials, the forwarding headers it sets) and what RFC 9110 6.5.1 forbids
/// in trailers (with every `If-*` conditional). An upstream that merges trailers into the header fields would otherwise take a
/// client's `Authorization`, `Host` or `X-Userinfo` as the gateway's.
const TRAILER_DENY: [&[u8]; 19] = [
    b"host",
    b"content-length",
    b"content-type",
    b"content-encoding",
    b"content-range",
    b"authorization",
    b"cookie",
    b"expect",
    b"max-forwards",
    b"pragma",
    b"range",
    b"cache-control",
    b"x-real-ip",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-proto",
    b"x-forwarded-prefix",
];

/// Copies the trailer field lines of `section` (validated by the chunked decoder: `name:value`
/// lines, each with its CRLF) that may travel in a trailer; see [`TRAILER_DENY`].
fn write_allowed_trailers(
    out: &mut Vec<u8>,
    section: &[u8],
    connection_tokens: &[http1::Span],
    buf: &[u8],
) {
    for line in section.split_inclusive(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let denied = is_hop_by_hop(name)
            || in_tokens(name, connection_tokens, buf)
            || is_identity_header(name)
            || TRAILER_DENY.iter().any(|d| d.eq_ignore_ascii_case(name))
            || name.len() > 3 && name[..3].eq_ignore_ascii_case(b"if-")
            || name.eq_ignore_ascii_case(b"x-original-url")
            || name.eq_ignore_ascii_case(b"x-rewrite-url");
        if !denied {
            out.extend_from_slice(line);
        }
    }
}

/// When the next piece of a request body must have arrived: within `client_body_timeout` of the
/// last one, and, with a minimum rate, no later than the time the bytes so far earn at that rate
/// (after one `client_body_timeout` of grace). A body trickled byte by byte holds an upstream
/// connection only that long.
struct BodyClock {
    started: Instant,
    received: u64,
    per_read: Duration,
    min_rate: u64,
}

impl BodyClock {
    fn deadline(&self) -> Instant {
        let next = monotonic_now() + self.per_read;
        if self.min_rate == 0 {
            return next;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        next.min(self.started + self.per_read + earned)
    }
}

/// Appends more request-body bytes from the client to `c.buf`.
async fn read_client_body(c: &mut ClientConn, deadline: Instant, on_eof: &str) -> Result<(), Fail> {
    let buf = std::mem::take(&mut c.buf);
    let (r, buf) = read_more(
        &mut c.stream,
        buf,
        BODY_CHUNK,
        Some(c.timer.until(deadline)),
    )
    .await;
    c.buf = buf;
    r.map(|_| ()).map_err(|e| Fail {
        error: match e {
            ReadFail::Timeout => Error::BodyTimeout,
            _ => Error::ClientBody(on_eof.into()),
        },
        response_started: false,
        consumed: None,
    })
}

fn send_fail(e: WriteFail) -> Fail {
    let err = match e {
        WriteFail::Timeout => UpstreamError::SendTimeout,
        WriteFail::Io(e) => UpstreamError::Io(e.to_string()),
    };
    Fail::up(err, None)
}

async fn flush(
    conn: &mut UpConn,
    timer: &mut Timer,
    wire: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Fail> {
    let deadline = Some(timer.until(monotonic_now() + timeout));
    let (r, mut wire) = write_all_vec(&mut conn.stream, wire, deadline).await;
    r.map_err(send_fail)?;
    wire.clear();
    Ok(wire)
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
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(&mut out, u64::from(status));
    out.push(b' ');
    let reason_bytes = c.resp.reason.of(&conn.buf);
    if reason_bytes.is_empty() || status != c.resp.status {
        out.extend_from_slice(reason(status).as_bytes());
    } else {
        out.extend_from_slice(reason_bytes);
    }
    out.extend_from_slice(b"\r\n");
    let removing = !c.outcome.response_remove.is_empty();
    for h in &c.resp.headers {
        let name = h.name.of(&conn.buf);
        if is_hop_by_hop(name) || in_tokens(name, &c.resp.connection_tokens, &conn.buf) {
            // TE on a HEAD/304 response describes the GET's body: keep it there.
            if !(framing == BodyFraming::None && name.eq_ignore_ascii_case(b"transfer-encoding")) {
                continue;
            }
        }
        if (framing != BodyFraming::None || filter_body)
            && name.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        if removing
            && c.outcome
                .response_remove
                .iter()
                .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_header(&mut out, name, h.value.of(&conn.buf));
    }
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
    match framing {
        BodyFraming::Length(n) if !reframe => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ if chunk_out => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        _ => {}
    }
    if client_close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    conn.buf.drain(..resp_head_len);

    let write_timeout = route.timeouts.send.max(Duration::from_secs(30));
    let read_timeout = route.timeouts.read;
    let mut bytes_out: u64 = 0;
    let mut upstream_clean = c.resp.keep_alive;

    // Body.
    let body_result: Result<(), (Error, bool)> = match framing {
        BodyFraming::Length(_) | BodyFraming::Chunked if filter_body => {
            relay_filtered(
                c,
                &mut conn,
                out,
                &route.plugins,
                chunk_out,
                read_timeout,
                write_timeout,
                &mut bytes_out,
            )
            .await
        }
        BodyFraming::CloseDelimited if filter_body => {
            upstream_clean = false;
            relay_filtered(
                c,
                &mut conn,
                out,
                &route.plugins,
                chunk_out,
                read_timeout,
                write_timeout,
                &mut bytes_out,
            )
            .await
        }
        BodyFraming::None => {
            let (r, o) = write_all_vec(
                &mut c.stream,
                out,
                Some(c.timer.until(monotonic_now() + write_timeout)),
            )
            .await;
            bytes_out += o.len() as u64;
            c.out = o;
            r.map_err(|_| (client_gone(), false))
        }
        BodyFraming::Length(n) => {
            let mut remaining = n;
            let first = conn.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            out.extend_from_slice(&conn.buf[..first]);
            conn.buf.drain(..first);
            remaining -= first as u64;
            let (r, o) = write_all_vec(
                &mut c.stream,
                out,
                Some(c.timer.until(monotonic_now() + write_timeout)),
            )
            .await;
            bytes_out += o.len() as u64;
            c.out = o;
            let mut result = r.map_err(|_| (client_gone(), false));
            while result.is_ok() && remaining > 0 {
                let buf = std::mem::take(&mut conn.buf);
                let (r, buf) = read_more(
                    &mut conn.stream,
                    buf,
                    BODY_CHUNK,
                    Some(c.timer.until(monotonic_now() + read_timeout)),
                )
                .await;
                conn.buf = buf;
                if r.is_err() {
                    upstream_clean = false;
                    result = Err((
                        Error::Upstream {
                            error: UpstreamError::ClosedEarly,
                            retryable: false,
                        },
                        true,
                    ));
                    break;
                }
                let take = conn
                    .buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let buf = std::mem::take(&mut conn.buf);
                let (w, mut buf) = write_range(
                    &mut c.stream,
                    buf,
                    0,
                    take,
                    Some(c.timer.until(monotonic_now() + write_timeout)),
                )
                .await;
                buf.drain(..take);
                conn.buf = buf;
                remaining -= take as u64;
                bytes_out += take as u64;
                if w.is_err() {
                    upstream_clean = false;
                    result = Err((client_gone(), false));
                }
            }
            result
        }
        BodyFraming::Chunked => {
            relay_chunked(
                c,
                &mut conn,
                out,
                chunk_out,
                read_timeout,
                write_timeout,
                &mut bytes_out,
            )
            .await
        }
        BodyFraming::CloseDelimited => {
            upstream_clean = false;
            relay_until_eof(
                c,
                &mut conn,
                out,
                chunk_out,
                read_timeout,
                write_timeout,
                &mut bytes_out,
            )
            .await
        }
    };
    // The None and Length paths handed the head buffer back; the others consumed it.
    if c.out.capacity() == 0 {
        c.out = Vec::with_capacity(8 * 1024);
    }
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

/// The upstream body as decoded pieces, whatever its framing: the filtered relay reads it
/// through this and frames what the filters leave on its own.
enum BodySource {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl BodySource {
    fn new(framing: BodyFraming) -> BodySource {
        match framing {
            BodyFraming::Length(n) => BodySource::Length(n),
            BodyFraming::Chunked => BodySource::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES)),
            BodyFraming::CloseDelimited => BodySource::UntilClose,
            BodyFraming::None => BodySource::Length(0),
        }
    }

    /// Appends the next decoded bytes to `dst` (reading from the upstream when none are
    /// buffered); true when the body ended. A chunked body's trailers are dropped: they describe
    /// the body as the upstream sent it.
    async fn next(
        &mut self,
        conn: &mut UpConn,
        timer: &mut Timer,
        read_timeout: Duration,
        dst: &mut Vec<u8>,
    ) -> Result<bool, (Error, bool)> {
        let cut = |error| {
            (
                Error::Upstream {
                    error,
                    retryable: false,
                },
                true,
            )
        };
        loop {
            match self {
                BodySource::Length(remaining) => {
                    if *remaining == 0 {
                        return Ok(true);
                    }
                    if !conn.buf.is_empty() {
                        let take = conn
                            .buf
                            .len()
                            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                        dst.extend_from_slice(&conn.buf[..take]);
                        conn.buf.drain(..take);
                        *remaining -= take as u64;
                        return Ok(*remaining == 0);
                    }
                }
                BodySource::Chunked(dec) => {
                    let mut pos = 0;
                    loop {
                        let (n, ev) = dec
                            .decode(&conn.buf[pos..])
                            .map_err(|e| cut(UpstreamError::BadResponse(e)))?;
                        let base = pos;
                        pos += n;
                        match ev {
                            ChunkEvent::Data(span) => dst.extend_from_slice(
                                &conn.buf[base + span.start as usize..base + span.end as usize],
                            ),
                            ChunkEvent::Trailers(_) => {}
                            ChunkEvent::End => {
                                conn.buf.drain(..pos);
                                return Ok(true);
                            }
                            ChunkEvent::NeedMore => break,
                        }
                    }
                    conn.buf.drain(..pos);
                    if !dst.is_empty() {
                        return Ok(false);
                    }
                }
                BodySource::UntilClose => {
                    if !conn.buf.is_empty() {
                        dst.extend_from_slice(&conn.buf);
                        conn.buf.clear();
                        return Ok(false);
                    }
                }
            }
            let buf = std::mem::take(&mut conn.buf);
            let (r, buf) = read_more(
                &mut conn.stream,
                buf,
                BODY_CHUNK,
                Some(timer.until(monotonic_now() + read_timeout)),
            )
            .await;
            conn.buf = buf;
            match r {
                Ok(_) => {}
                Err(ReadFail::Eof) if matches!(self, BodySource::UntilClose) => return Ok(true),
                Err(ReadFail::Timeout) => return Err(cut(UpstreamError::ReadTimeout)),
                Err(_) => return Err(cut(UpstreamError::ClosedEarly)),
            }
        }
    }
}

/// The relay for a response whose body goes through the route's body filters: each decoded
/// piece is handed to the filters, then framed for the client (chunked when `chunk_out`, else
/// delimited by closing the connection).
#[allow(clippy::too_many_arguments)]
async fn relay_filtered(
    c: &mut ClientConn,
    conn: &mut UpConn,
    mut out: Vec<u8>,
    plugins: &Chain,
    chunk_out: bool,
    read_timeout: Duration,
    write_timeout: Duration,
    bytes_out: &mut u64,
) -> Result<(), (Error, bool)> {
    let mut source = BodySource::new(c.resp.framing);
    let mut piece: Vec<u8> = Vec::with_capacity(BODY_CHUNK);
    loop {
        piece.clear();
        let last = source
            .next(conn, &mut c.timer, read_timeout, &mut piece)
            .await?;
        plugins.body_filter(
            &mut BodyChunk {
                data: &mut piece,
                last,
            },
            &mut c.scratch,
        );
        if !piece.is_empty() {
            if chunk_out {
                http1::write_chunk_header(&mut out, piece.len());
                out.extend_from_slice(&piece);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&piece);
            }
        }
        if last && chunk_out {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if last || out.len() >= BODY_CHUNK {
            let (r, mut o) = write_all_vec(
                &mut c.stream,
                out,
                Some(c.timer.until(monotonic_now() + write_timeout)),
            )
            .await;
            *bytes_out += o.len() as u64;
            r.map_err(|_| (client_gone(), false))?;
            o.clear();
            out = o;
        }
        if last {
            c.out = out;
            return Ok(());
        }
    }
}

async fn relay_chunked(
    c: &mut ClientConn,
    conn: &mut UpConn,
    mut out: Vec<u8>,
    chunk_out: bool,
    read_timeout: Duration,
    write_timeout: Duration,
    bytes_out: &mut u64,
) -> Result<(), (Error, bool)> {
    let mut dec = ChunkedDecoder::new(MAX_TRAILER_BYTES);
    let mut pos = 0usize;
    let mut saw_trailers = false;
    loop {
        let (n, ev) = dec.decode(&conn.buf[pos..]).map_err(|e| {
            (
                Error::Upstream {
                    error: UpstreamError::BadResponse(e),
                    retryable: false,
                },
                true,
            )
        })?;
        let base = pos;
        pos += n;
        match ev {
            ChunkEvent::Data(span) => {
                let data = &conn.buf[base + span.start as usize..base + span.end as usize];
                if chunk_out {
                    http1::write_chunk_header(&mut out, data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(data);
                }
            }
            ChunkEvent::Trailers(span) => {
                saw_trailers = true;
                if chunk_out {
                    out.extend_from_slice(http1::LAST_CHUNK);
                    out.extend_from_slice(
                        &conn.buf[base + span.start as usize..base + span.end as usize],
                    );
                    out.extend_from_slice(b"\r\n");
                }
            }
            ChunkEvent::End => {
                if chunk_out && !saw_trailers {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                conn.buf.drain(..pos);
                let (r, o) = write_all_vec(
                    &mut c.stream,
                    out,
                    Some(c.timer.until(monotonic_now() + write_timeout)),
                )
                .await;
                *bytes_out += o.len() as u64;
                return r.map_err(|_| (client_gone(), false));
            }
            ChunkEvent::NeedMore => {
                conn.buf.drain(..pos);
                pos = 0;
                if !out.is_empty() {
                    let (r, mut o) = write_all_vec(
                        &mut c.stream,
                        out,
                        Some(c.timer.until(monotonic_now() + write_timeout)),
                    )
                    .await;
                    *bytes_out += o.len() as u64;
                    r.map_err(|_| (client_gone(), false))?;
                    o.clear();
                    out = o;
                }
                let buf = std::mem::take(&mut conn.buf);
                let (r, buf) = read_more(
                    &mut conn.stream,
                    buf,
                    BODY_CHUNK,
                    Some(c.timer.until(monotonic_now() + read_timeout)),
                )
                .await;
                conn.buf = buf;
                if r.is_err() {
                    return Err((
                        Error::Upstream {
                            error: UpstreamError::ClosedEarly,
                            retryable: false,
                        },
                        true,
                    ));
                }
            }
        }
    }
}

async fn relay_until_eof(
    c: &mut ClientConn,
    conn: &mut UpConn,
    mut out: Vec<u8>,
    chunk_out: bool,
    read_timeout: Duration,
    write_timeout: Duration,
    bytes_out: &mut u64,
) -> Result<(), (Error, bool)> {
    loop {
        if !conn.buf.is_empty() {
            if chunk_out {
                http1::write_chunk_header(&mut out, conn.buf.len());
                out.extend_from_slice(&conn.buf);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&conn.buf);
            }
            conn.buf.clear();
        }
        if !out.is_empty() {
            let (r, mut o) = write_all_vec(
                &mut c.stream,
                out,
                Some(c.timer.until(monotonic_now() + write_timeout)),
            )
            .await;
            *bytes_out += o.len() as u64;
            r.map_err(|_| (client_gone(), false))?;
            o.clear();
            out = o;
        }
        let buf = std::mem::take(&mut conn.buf);
        let (r, buf) = read_more(
            &mut conn.stream,
            buf,
            BODY_CHUNK,
            Some(c.timer.until(monotonic_now() + read_timeout)),
        )
        .await;
        conn.buf = buf;
        match r {
            Ok(_) => {}
            Err(ReadFail::Eof) => {
                if chunk_out {
                    out.extend_from_slice(b"0\r\n\r\n");
                    let (r, o) = write_all_vec(
                        &mut c.stream,
                        out,
                        Some(c.timer.until(monotonic_now() + write_timeout)),
                    )
                    .await;
                    *bytes_out += o.len() as u64;
                    r.map_err(|_| (client_gone(), false))?;
                }
                return Ok(());
            }
            Err(_) => {
                return Err((
                    Error::Upstream {
                        error: UpstreamError::ReadTimeout,
                        retryable: false,
                    },
                    true,
                ));
            }
        }
    }
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

/// Copies bytes both ways until either side closes, or until `idle` passes without a byte in
/// either direction (APISIX's upstream `timeout.read` for upgraded connections); both
/// connections end with it.
pub async fn tunnel(
    client: crate::proxy::stream::ClientStream,
    upstream: UpConn,
    idle: Duration,
    gate: &shardgate_runtime::Gate,
) {
    use crate::proxy::stream::ClientStream;
    use crate::upstream::tls::UpStream;
    use monoio::io::Splitable;
    match (client, upstream.stream) {
        (ClientStream::Plain(c), UpStream::Plain(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), u.into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
        (ClientStream::Tls(c), UpStream::Plain(u)) => {
            let ((cr, cw), (ur, uw)) = ((*c).into_split(), u.into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
        (ClientStream::Plain(c), UpStream::Tls(u)) => {
            let ((cr, cw), (ur, uw)) = (c.into_split(), (*u).into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
        (ClientStream::Tls(c), UpStream::Tls(u)) => {
            let ((cr, cw), (ur, uw)) = ((*c).into_split(), (*u).into_split());
            copy_both(cr, cw, ur, uw, idle, gate).await;
        }
    }
}

/// Moves bytes from `r` to `w`, stamping `last` at every read, until EOF or an error.
async fn copy_stamped<R, W>(r: &mut R, w: &mut W, last: &std::cell::Cell<Instant>)
where
    R: monoio::io::AsyncReadRent,
    W: monoio::io::AsyncWriteRent,
{
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        last.set(monotonic_now());
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn copy_both<CR, CW, UR, UW>(
    mut cr: CR,
    mut cw: CW,
    mut ur: UR,
    mut uw: UW,
    idle: Duration,
    gate: &shardgate_runtime::Gate,
) where
    CR: monoio::io::AsyncReadRent,
    CW: monoio::io::AsyncWriteRent,
    UR: monoio::io::AsyncReadRent,
    UW: monoio::io::AsyncWriteRent,
{
    let last = std::cell::Cell::new(monotonic_now());
    let both = async {
        monoio::join!(
            copy_stamped(&mut cr, &mut uw, &last),
            copy_stamped(&mut ur, &mut cw, &last)
        );
    };
    let watch = async {
        loop {
            let due = last.get() + idle;
            if monotonic_now() >= due {
                return;
            }
            monoio::time::sleep_until(due.into()).await;
        }
    };
    let ended = monoio::select! {
        _ = both => false,
        _ = watch => true,
        _ = gate.expired() => true,
    };
    if ended {
        // Idle or the drain time is over: shut both sides down (FIN, or TLS close_notify) so
        // client and upstream see a clean end rather than a reset; bounded, as a peer that does
        // not read could hold a TLS shutdown's write forever.
        let close = async {
            let _ = monoio::join!(cw.shutdown(), uw.shutdown());
        };
        let _ = monoio::time::timeout(Duration::from_secs(1), close).await;
    }
}
