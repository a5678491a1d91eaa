//! Sans-IO HTTP/1.1 codec: request and response heads read and written, body framing, chunked
//! bodies.
//!
//! Bytes in, parsed structure out: nothing here reads a socket or a clock. A parsed head does not own
//! or copy the bytes it came from; it holds [`Span`]s into the caller's buffer, so the caller keeps
//! that buffer alive (and unmoved in content) for as long as it uses the head.
//!
//! The scanner is `httparse`; everything it lets through that RFC 9112 or request smuggling says we
//! must refuse is checked here: bare LF line endings, conflicting or repeated framing headers,
//! `Transfer-Encoding` shapes, the request-target forms, and `Host`.
//!
//! Steady state does not allocate: [`RequestHead`] and [`ResponseHead`] are meant to be reused, and a
//! parse clears their vectors but keeps the capacity. httparse's scratch array lives on the stack
//! (up to [`STACK_HEADERS`] slots; a larger `max_headers` falls back to one heap array per parse).
//! The writers in [`write`] append to the caller's buffer and allocate nothing else.

mod chunked;
mod error;
mod fields;
pub mod path;
mod request;
mod response;
#[cfg(test)]
mod tests;
pub mod write;

pub use chunked::{
    ChunkEvent, ChunkedDecoder, LAST_CHUNK, MAX_CHUNK_LINE, scan_received, write_chunk_header,
};
pub use error::ParseError;
pub use request::{RequestHead, parse_request};
pub use response::{ResponseHead, parse_response};

/// How many header slots httparse gets on the stack before a parse falls back to the heap.
pub const STACK_HEADERS: usize = 128;

/// A byte range inside the buffer a head or body chunk was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes this span covers in `buf`; empty when `buf` is not the buffer it came from and is
    /// too short, so a mix-up shows as missing data rather than a panic.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Callers guarantee `start <= end <= u32::MAX` (every buffer we span is capped below 4 GiB).
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
}

/// One header field line: name and value (value without surrounding whitespace).
#[derive(Clone, Copy, Debug)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// Size bounds for one head.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes from the first byte of the head up to and including the final CRLF CRLF.
    pub max_header_bytes: usize,
    /// Header field lines.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32768,
            max_headers: 100,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    /// Any other valid token; the exact bytes are in `RequestHead::method_span`.
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 9.1): `get` is an `Other` method, not `Get`.
    pub fn from_bytes(bytes: &[u8]) -> Method {
        match bytes {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// RFC 9110 9.2.2: a retry of these cannot change the outcome, so a failed upstream attempt may
    /// be repeated.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }

    /// The method name; `Other` has none (`"OTHER"`), its bytes are at `RequestHead::method_span`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "OTHER",
        }
    }
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body follows.
    None,
    /// Exactly this many bytes follow.
    Length(u64),
    /// A chunked body follows: feed it to a [`ChunkedDecoder`].
    Chunked,
    /// The body runs until the peer closes (responses only).
    CloseDelimited,
}

/// Outcome of a successful parse call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is complete; see `head_len` for the bytes it used.
    Complete,
    /// Valid so far; read more bytes and parse the whole buffer again.
    Partial,
}

/// RFC 9110 7.6.1 hop-by-hop fields a proxy never forwards, plus the `Proxy-*` family that only
/// concerns the hop it was sent to. Fields named in `Connection` are hop-by-hop too: see
/// `connection_tokens` on the heads.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const FIXED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    if name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-") {
        return true;
    }
    FIXED.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// First value of the header `name` (case-insensitive) among `headers`.
pub(crate) fn find_header<'a>(
    headers: &[HeaderSpan],
    buf: &'a [u8],
    name: &str,
) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| h.value.of(buf))
}

/// Every value of the header `name` (case-insensitive) among `headers`, in order.
pub(crate) fn find_headers<'h, 'a: 'h, 'n: 'h>(
    headers: &'h [HeaderSpan],
    buf: &'a [u8],
    name: &'n str,
) -> impl Iterator<Item = &'a [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
        .map(move |h| h.value.of(buf))
}
