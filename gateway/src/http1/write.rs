//! Head writers, the parsers' mirror: the responses the gateway sends to clients (its own
//! answers and relayed upstream responses) and the request heads it sends upstream.
//!
//! Every writer appends to the caller's reusable buffer and allocates nothing else, so a
//! steady-state request writes its heads without touching the heap. Which fields a head carries
//! is the caller's decision (the proxy's forwarding policy, the plugins' headers); how each line
//! is spelled, and what HTTP/1.1 itself says must not be relayed, is decided here.

use std::ops::Range;

use super::{BodyFraming, ResponseHead, is_hop_by_hop, path};

/// The interim response a client that sent `Expect: 100-continue` waits for.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the body after a head the gateway writes is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    /// No framing field: no body, or one that ends when the connection closes.
    Unframed,
    Length(u64),
    Chunked,
}

/// Decimal digits of `n`: on every head (status, Content-Length), where itoa's two digits per
/// step take a third of a division loop's instructions.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The empty line that ends a head.
pub fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// `HTTP/1.1 <status> <reason>\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// The head of a response the gateway answers itself (the error map's, a plugin's, the admin
/// API's), up to its own fields: the caller adds more and ends it with [`end_head`].
pub fn write_simple_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    len: usize,
    close: bool,
    no_store: bool,
) {
    status_line(out, status, reason(status).as_bytes());
    out.extend_from_slice(b"Server: shardgate\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_u64(out, len as u64);
    out.extend_from_slice(b"\r\n");
    if no_store {
        out.extend_from_slice(b"Cache-Control: no-store\r\n");
    }
    if close {
        connection_close(out);
    }
}

/// The framing field for a body delimited as `f`.
pub fn framing(out: &mut Vec<u8>, f: OutFraming) {
    match f {
        OutFraming::Unframed => {}
        OutFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
}

pub fn connection_close(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Connection: close\r\n");
}

/// The status line and fields of the upstream response `resp` (parsed from `buf`) as relayed to
/// the client with `status` (a plugin may have changed it: the upstream's reason then no longer
/// fits). Dropped: hop-by-hop fields and those its `Connection` names (but the `Transfer-Encoding`
/// of a response without a body, a HEAD's or a 304's, which describes the GET's body),
/// `Content-Length` when `drop_length` (the body goes out with other framing), and what `skip`
/// says.
/// The caller adds its own fields, [`framing`], and ends the head.
pub fn relayed_response_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    buf: &[u8],
    status: u16,
    drop_length: bool,
    mut skip: impl FnMut(&[u8]) -> bool,
) {
    let upstream_reason = resp.reason.of(buf);
    if upstream_reason.is_empty() || status != resp.status {
        status_line(out, status, reason(status).as_bytes());
    } else {
        status_line(out, status, upstream_reason);
    }
    for h in &resp.headers {
        let name = h.name.of(buf);
        if (is_hop_by_hop(name)
            || resp
                .connection_tokens
                .iter()
                .any(|t| t.of(buf).eq_ignore_ascii_case(name)))
            && !(resp.framing == BodyFraming::None
                && name.eq_ignore_ascii_case(b"transfer-encoding"))
        {
            continue;
        }
        if drop_length && name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if skip(name) {
            continue;
        }
        push_header(out, name, h.value.of(buf));
    }
}

/// The request-target of a request head the gateway sends upstream.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// Sent exactly as given (an origin-form or `*` target as received, or a plugin's, already
    /// encoded with its query).
    AsIs(&'a [u8]),
    /// A path in its normal (decoded) form, percent-encoded on the way out (`path::encode_into`).
    Normal {
        path: &'a [u8],
        query: Option<&'a [u8]>,
    },
    /// An encoded path: an absolute-form target sent on in origin-form.
    Origin {
        path: &'a [u8],
        query: Option<&'a [u8]>,
    },
}

/// `<method> <target> HTTP/1.1\r\n`.
pub fn request_line(out: &mut Vec<u8>, method: &[u8], target: Target<'_>) {
    out.extend_from_slice(method);
    out.push(b' ');
    let query = match target {
        Target::AsIs(t) => {
            out.extend_from_slice(t);
            None
        }
        Target::Normal { path, query } => {
            path::encode_into(path, out);
            query
        }
        Target::Origin { path, query } => {
            out.extend_from_slice(path);
            query
        }
    };
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q);
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// `Host: <value>\r\n`; returns where the value is in `out`, for [`replace_value`].
pub fn host_field(out: &mut Vec<u8>, value: &[u8]) -> Range<usize> {
    out.extend_from_slice(b"Host: ");
    let start = out.len();
    out.extend_from_slice(value);
    let at = start..out.len();
    out.extend_from_slice(b"\r\n");
    at
}

/// Replaces the field value at `at` in a written head with `value` when it differs (a retry's
/// node with `pass_host: node`); returns where the value is now.
pub fn replace_value(out: &mut Vec<u8>, at: Range<usize>, value: &[u8]) -> Range<usize> {
    if out.get(at.clone()) == Some(value) {
        return at;
    }
    let start = at.start;
    out.splice(at, value.iter().copied());
    start..start + value.len()
}

/// What the gateway tells the upstream about the client and the connection it came on.
pub struct Forwarding<'a> {
    /// The `X-Forwarded-For` chain the client sent, when it is kept.
    pub prior_for: Option<&'a [u8]>,
    /// The client's address (`remote_addr`).
    pub remote: &'a [u8],
    pub proto: &'a [u8],
    pub host: &'a [u8],
    pub port: &'a [u8],
    /// A trusted peer's own `Forwarded`, sent on instead of ours.
    pub forwarded: Option<&'a [u8]>,
    /// The client's `Host`, for our `Forwarded`'s `host=`.
    pub client_host: &'a [u8],
    pub tls: bool,
}

/// `X-Forwarded-For` (the prior chain with `remote` appended, as nginx's
/// `$proxy_add_x_forwarded_for`), `X-Real-IP`, `X-Forwarded-Proto/Host/Port` and `Forwarded`.
pub fn forwarding_fields(out: &mut Vec<u8>, f: &Forwarding<'_>) {
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prior) = f.prior_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(f.remote);
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(f.remote);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(f.proto);
    out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
    out.extend_from_slice(f.host);
    out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
    out.extend_from_slice(f.port);
    out.extend_from_slice(b"\r\n");
    match f.forwarded {
        Some(v) => push_header(out, b"Forwarded", v),
        None => rfc7239_forwarded(out, f.remote, f.client_host, f.tls),
    }
}

/// RFC 7239 `Forwarded` as the gateway saw the request: frameworks take host and proto from its
/// first element, which a client-supplied value would own.
fn rfc7239_forwarded(out: &mut Vec<u8>, remote: &[u8], client_host: &[u8], tls: bool) {
    out.extend_from_slice(b"Forwarded: for=");
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

/// A `Cookie` field with the cookies whose name starts with `prefix` left out (the gateway's own
/// session cookie); no field at all when none is left.
pub fn cookie_without(out: &mut Vec<u8>, value: &[u8], prefix: &[u8]) {
    let mark = out.len();
    out.extend_from_slice(b"Cookie: ");
    let start = out.len();
    for part in value.split(|b| *b == b';') {
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

/// Copies the field lines of a trailer `section` (validated by the chunked decoder: `name:value`
/// lines, each with its CRLF) except those whose name `deny` refuses.
pub fn trailer_fields(out: &mut Vec<u8>, section: &[u8], deny: impl Fn(&[u8]) -> bool) {
    for line in section.split_inclusive(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if !deny(&line[..colon]) {
            out.extend_from_slice(line);
        }
    }
}
