//! Bodies, both ways: the request body streamed to the upstream when it did not come with the
//! head, and the response body relayed to the client, re-framed when the client or the body
//! filters need it.
//!
//! Memory stays flat whatever the body size: bodies move through the connection's own buffers in
//! pieces of at most `BODY_CHUNK` bytes.

use std::ops::Range;
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

/// How the response body goes to the client.
pub(super) struct Relay<'a> {
    /// Re-framed as chunked for an HTTP/1.1 client; else sent as it is decoded (a length, or the
    /// end of the connection).
    pub chunk_out: bool,
    /// The route's body filters, when `header_filter` asked for them.
    pub filters: Option<&'a Chain>,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Relays the upstream's response body, delimited by `framing`, after the head waiting in
/// `c.out`, adding what is written to the client to `bytes_out`. One loop for every framing:
/// decode what is buffered, frame it for the client (or hand it to the body filters first), send,
/// read more. A length-delimited body that needs no re-framing goes to the client straight from
/// the read buffer once the head is out.
pub(super) async fn relay_body(
    c: &mut ClientConn,
    conn: &mut UpConn,
    framing: BodyFraming,
    r: &Relay<'_>,
    bytes_out: &mut u64,
) -> Result<(), (Error, bool)> {
    let mut source = Source::new(framing);
    // With filters, what one read brought goes through them as one piece.
    let mut piece: Vec<u8> = match r.filters {
        Some(_) => Vec::with_capacity(BODY_CHUNK),
        None => Vec::new(),
    };
    let mut saw_trailers = false;
    loop {
        let mut pos = 0;
        let mut end = false;
        let mut direct = None;
        loop {
            let (n, step) = source
                .decode(&conn.buf[pos..])
                .map_err(|e| cut(UpstreamError::BadResponse(e)))?;
            let base = pos;
            pos += n;
            match step {
                Piece::Data(d) => {
                    let d = base + d.start..base + d.end;
                    if r.filters.is_some() {
                        piece.extend_from_slice(&conn.buf[d]);
                    } else if matches!(source, Source::Length(_))
                        && !r.chunk_out
                        && c.out.is_empty()
                    {
                        direct = Some(d);
                        break;
                    } else {
                        frame(&mut c.out, &conn.buf[d], r.chunk_out);
                    }
                }
                Piece::Trailers(t) => {
                    // Filtered bodies drop them: they describe the body as the upstream sent it.
                    if r.filters.is_none() {
                        saw_trailers = true;
                        if r.chunk_out {
                            c.out.extend_from_slice(http1::LAST_CHUNK);
                            c.out
                                .extend_from_slice(&conn.buf[base + t.start..base + t.end]);
                            c.out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                Piece::End => {
                    end = true;
                    break;
                }
                Piece::NeedMore => break,
            }
        }
        if let Some(d) = direct {
            let buf = std::mem::take(&mut conn.buf);
            let (res, mut buf) = write_range(
                &mut c.stream,
                buf,
                d.start,
                d.end,
                Some(c.timer.until(monotonic_now() + r.write_timeout)),
            )
            .await;
            buf.drain(..pos);
            conn.buf = buf;
            *bytes_out += d.len() as u64;
            res.map_err(|_| (client_gone(), false))?;
            continue;
        }
        conn.buf.drain(..pos);
        if let Some(filters) = r.filters
            && (end || !piece.is_empty())
        {
            filters.body_filter(
                &mut BodyChunk {
                    data: &mut piece,
                    last: end,
                },
                &mut c.scratch,
            );
            if !piece.is_empty() {
                frame(&mut c.out, &piece, r.chunk_out);
            }
            piece.clear();
        }
        if end && r.chunk_out && !saw_trailers {
            c.out.extend_from_slice(b"0\r\n\r\n");
        }
        // Unfiltered bytes go out before waiting for more; filtered ones are gathered up to a
        // chunk, as the filters may shrink or hold them.
        if !c.out.is_empty() && (r.filters.is_none() || end || c.out.len() >= BODY_CHUNK) {
            send(c, r.write_timeout, bytes_out).await?;
        }
        if end {
            return Ok(());
        }
        let buf = std::mem::take(&mut conn.buf);
        let (res, buf) = read_more(
            &mut conn.stream,
            buf,
            BODY_CHUNK,
            Some(c.timer.until(monotonic_now() + r.read_timeout)),
        )
        .await;
        conn.buf = buf;
        match res {
            Ok(_) => {}
            Err(ReadFail::Eof) if matches!(source, Source::UntilClose { .. }) => {
                source = Source::UntilClose { eof: true };
            }
            Err(e) => return Err(cut(source.read_failure(e, r.filters.is_some()))),
        }
    }
}

fn cut(error: UpstreamError) -> (Error, bool) {
    (
        Error::Upstream {
            error,
            retryable: false,
        },
        true,
    )
}

/// Appends `data` to `out` as the client gets it: one chunk, or as it is.
fn frame(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if chunked {
        http1::write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Writes `c.out` to the client and empties it.
async fn send(
    c: &mut ClientConn,
    timeout: Duration,
    bytes_out: &mut u64,
) -> Result<(), (Error, bool)> {
    let out = std::mem::take(&mut c.out);
    let (res, mut out) = write_all_vec(
        &mut c.stream,
        out,
        Some(c.timer.until(monotonic_now() + timeout)),
    )
    .await;
    *bytes_out += out.len() as u64;
    out.clear();
    c.out = out;
    res.map_err(|_| (client_gone(), false))
}

/// The upstream body's delimitation, decoded in place: pieces are ranges of the read buffer.
enum Source {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the upstream closes; `eof` once it has.
    UntilClose {
        eof: bool,
    },
}

/// One decoding step over the buffered bytes, as a range of the bytes it was given.
enum Piece {
    Data(Range<usize>),
    /// A chunked body's trailer section (the field lines, without the final CRLF).
    Trailers(Range<usize>),
    End,
    NeedMore,
}

impl Source {
    fn new(framing: BodyFraming) -> Source {
        match framing {
            BodyFraming::Length(n) => Source::Length(n),
            BodyFraming::None => Source::Length(0),
            BodyFraming::Chunked => Source::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES)),
            BodyFraming::CloseDelimited => Source::UntilClose { eof: false },
        }
    }

    /// The next piece of `buf`, and how many of its bytes that used.
    fn decode(&mut self, buf: &[u8]) -> Result<(usize, Piece), http1::ParseError> {
        let span = |s: http1::Span| s.start as usize..s.end as usize;
        Ok(match self {
            Source::Length(0) => (0, Piece::End),
            Source::Length(_) if buf.is_empty() => (0, Piece::NeedMore),
            Source::Length(remaining) => {
                let take = buf
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                (take, Piece::Data(0..take))
            }
            Source::Chunked(dec) => {
                let (n, ev) = dec.decode(buf)?;
                let piece = match ev {
                    ChunkEvent::Data(s) => Piece::Data(span(s)),
                    ChunkEvent::Trailers(s) => Piece::Trailers(span(s)),
                    ChunkEvent::End => Piece::End,
                    ChunkEvent::NeedMore => Piece::NeedMore,
                };
                (n, piece)
            }
            Source::UntilClose { .. } if !buf.is_empty() => (buf.len(), Piece::Data(0..buf.len())),
            Source::UntilClose { eof: true } => (0, Piece::End),
            Source::UntilClose { eof: false } => (0, Piece::NeedMore),
        })
    }

    /// What a failed read in the middle of the body is logged and counted as: the labels the
    /// per-framing relays gave before they became this one (a plain relay's timed-out read of
    /// a length or chunked body counts as a closed connection, an until-close body's failed
    /// read as a timeout), kept so the refactor changes no metric.
    fn read_failure(&self, e: ReadFail, filtered: bool) -> UpstreamError {
        match (filtered, self, e) {
            (true, _, ReadFail::Timeout) => UpstreamError::ReadTimeout,
            (true, _, _) => UpstreamError::ClosedEarly,
            (false, Source::UntilClose { .. }, _) => UpstreamError::ReadTimeout,
            (false, _, _) => UpstreamError::ClosedEarly,
        }
    }
}
