//! Bodies, both ways: the request body streamed to the upstream when it did not come with the
//! head, and the response body relayed to the client, re-framed when the client or the body
//! filters need it.
//!
//! Memory stays flat whatever the body size: bodies move through the connection's own buffers in
//! pieces of at most `BODY_CHUNK` bytes.

use std::time::{Duration, Instant};

use shardgate_runtime::clock::monotonic_now;

use crate::error::{Error, UpstreamError};
use crate::http1::write as w;
use crate::http1::{self, BodyFraming, ChunkEvent, ChunkedDecoder, is_hop_by_hop};
use crate::pipeline::BodyChunk;
use crate::pipeline::registry::Chain;
use crate::plugins::is_identity_header;
use crate::proxy::conn::ClientConn;
use crate::proxy::forward::{Fail, client_gone, in_tokens};
use crate::proxy::io::{ReadFail, Timer, WriteFail, read_more, write_all_vec, write_range};
use crate::upstream::pool::UpConn;

pub(super) const BODY_CHUNK: usize = 64 * 1024;
pub(super) const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Streams the request body that was not buffered with the head. Returns bytes of `c.buf` consumed.
pub(super) async fn stream_request_body(
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

/// The trailer fields of a request that may travel on; see [`TRAILER_DENY`].
fn write_allowed_trailers(
    out: &mut Vec<u8>,
    section: &[u8],
    connection_tokens: &[http1::Span],
    buf: &[u8],
) {
    w::trailer_fields(out, section, |name| {
        is_hop_by_hop(name)
            || in_tokens(name, connection_tokens, buf)
            || is_identity_header(name)
            || TRAILER_DENY.iter().any(|d| d.eq_ignore_ascii_case(name))
            || name.len() > 3 && name[..3].eq_ignore_ascii_case(b"if-")
            || name.eq_ignore_ascii_case(b"x-original-url")
            || name.eq_ignore_ascii_case(b"x-rewrite-url")
    });
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
pub(super) async fn relay_filtered(
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

pub(super) async fn relay_chunked(
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

pub(super) async fn relay_until_eof(
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
