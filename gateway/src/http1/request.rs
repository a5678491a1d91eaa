//! Request heads: the request-line, `Host`, and request body framing.

use super::fields::{
    self, FieldFacts, Slots, StartLine, collect_headers, has_bare_lf, head_window,
    is_valid_authority, map_httparse_error, scan_fields, span_in,
};
use super::{BodyFraming, HeaderSpan, Limits, Method, ParseError, Parsed, Span};

/// A parsed request head. Spans index the buffer given to [`parse_request`].
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    /// The raw request-target.
    pub target: Span,
    /// The path part. For absolute-form it is what follows the authority and may be empty (meaning
    /// `/`, see [`RequestHead::path_bytes`]); `*` for `OPTIONS *`; empty for CONNECT.
    pub path: Span,
    /// After `?`, without it.
    pub query: Option<Span>,
    /// 0 or 1.
    pub version_minor: u8,
    /// Reused across requests: a parse clears it and keeps the capacity.
    pub headers: Vec<HeaderSpan>,
    /// The `Host` value, or the authority of an absolute-form target (RFC 9112 3.2.2).
    pub host: Option<Span>,
    /// `None` (no Content-Length or Transfer-Encoding), `Length(n)` or `Chunked`.
    pub framing: BodyFraming,
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 10.1.1: ignored for HTTP/1.0).
    pub expect_continue: bool,
    /// `Connection` lists `upgrade` and an `Upgrade` field is present.
    pub upgrade: bool,
    /// Every token of every `Connection` field: the field names to remove before forwarding.
    pub connection_tokens: Vec<Span>,
    /// Bytes of the head including the final CRLF CRLF; the body starts here.
    pub head_len: usize,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestHead {
    pub fn new() -> Self {
        RequestHead {
            method: Method::Get,
            method_span: Span::default(),
            target: Span::default(),
            path: Span::default(),
            query: None,
            version_minor: 1,
            headers: Vec::new(),
            host: None,
            framing: BodyFraming::None,
            keep_alive: false,
            expect_continue: false,
            upgrade: false,
            connection_tokens: Vec::new(),
            head_len: 0,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        super::find_header(&self.headers, buf, name)
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values<'h, 'a: 'h, 'n: 'h>(
        &'h self,
        buf: &'a [u8],
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + 'h {
        super::find_headers(&self.headers, buf, name)
    }

    /// The path to route on and forward: `/` when an absolute-form target has an empty path.
    pub fn path_bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match self.path.of(buf) {
            [] if self.method != Method::Connect => b"/",
            p => p,
        }
    }

    /// Whether a field called `name` is listed in `Connection` (and so must not be forwarded).
    pub fn is_connection_listed(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_tokens
            .iter()
            .any(|t| t.of(buf).eq_ignore_ascii_case(name))
    }

    fn clear(&mut self) {
        self.method = Method::Get;
        self.method_span = Span::default();
        self.target = Span::default();
        self.path = Span::default();
        self.query = None;
        self.version_minor = 1;
        self.headers.clear();
        self.host = None;
        self.framing = BodyFraming::None;
        self.keep_alive = false;
        self.expect_continue = false;
        self.upgrade = false;
        self.connection_tokens.clear();
        self.head_len = 0;
    }
}

/// Parse a request head from the start of `buf`.
///
/// `Partial` means "valid so far": append more bytes and call again with the whole buffer. A
/// buffer that already holds `max_header_bytes` without a complete head is `HeaderTooLarge`.
/// On `Partial` or an error the contents of `head` are unspecified.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<Parsed, ParseError> {
    head.clear();
    let (window, max_bytes) = head_window(buf, limits);
    let mut slots = Slots::new();
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        window,
        slots.get(limits.max_headers),
    );
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => {
            return Err(ParseError::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(map_httparse_error(window, e, StartLine::Request)),
    };
    if has_bare_lf(&window[..head_len]) {
        return Err(ParseError::Malformed("bare LF line ending"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ParseError::Malformed("incomplete request-line"));
    };
    let (Some(method_span), Some(target_span)) = (
        span_in(window, method.as_bytes()),
        span_in(window, target.as_bytes()),
    ) else {
        return Err(ParseError::Malformed(
            "request-line outside the parsed buffer",
        ));
    };
    head.method = Method::from_bytes(method.as_bytes());
    head.method_span = method_span;
    head.target = target_span;
    // httparse only accepts HTTP/1.0 and HTTP/1.1.
    head.version_minor = version;
    head.head_len = head_len;
    collect_headers(window, req.headers, &mut head.headers)?;

    let target = parse_target(window, target_span, head.method)?;
    head.path = target.path;
    head.query = target.query;

    let facts = scan_fields(window, &head.headers, &mut head.connection_tokens)?;
    head.host = host(window, version, &facts, &target)?;
    head.framing = request_framing(version, &facts)?;
    head.keep_alive = fields::persistent(version, &facts);
    head.expect_continue = version >= 1 && facts.expect_continue;
    head.upgrade = facts.conn_upgrade && facts.upgrade_header;
    Ok(Parsed::Complete)
}

/// RFC 9112 3.2: exactly one `Host` (on HTTP/1.1, at least one) with a valid value; an
/// absolute-form authority takes precedence over it, and must name the same host and port: a hop
/// in front that routes or caches on `Host` would otherwise see another site than we route to.
fn host(
    buf: &[u8],
    version: u8,
    facts: &FieldFacts,
    target: &Target,
) -> Result<Option<Span>, ParseError> {
    if facts.host_count > 1 {
        return Err(ParseError::Malformed("more than one Host header"));
    }
    if version >= 1 && facts.host_count == 0 {
        return Err(ParseError::Malformed("HTTP/1.1 request without Host"));
    }
    if let Some(h) = facts.host
        && !is_valid_authority(h.of(buf))
    {
        return Err(ParseError::Malformed("invalid Host value"));
    }
    if let (Some(a), Some(h), Some(port)) = (target.authority, facts.host, target.default_port)
        && !same_authority(a.of(buf), h.of(buf), port)
    {
        return Err(ParseError::Malformed(
            "absolute-form authority differs from Host",
        ));
    }
    Ok(target.authority.or(facts.host))
}

/// Host names compare without case; a missing or empty port is the scheme's default.
fn same_authority(a: &[u8], b: &[u8], default_port: &[u8]) -> bool {
    let (ah, ap) = split_host_port(a);
    let (bh, bp) = split_host_port(b);
    ah.eq_ignore_ascii_case(bh) && ap.unwrap_or(default_port) == bp.unwrap_or(default_port)
}

/// `host[:port]` or `[v6][:port]`; an empty port counts as none (RFC 3986 3.2.3).
fn split_host_port(a: &[u8]) -> (&[u8], Option<&[u8]>) {
    let host_end = if a.first() == Some(&b'[') {
        a.iter().position(|&b| b == b']').map_or(a.len(), |i| i + 1)
    } else {
        a.iter().position(|&b| b == b':').unwrap_or(a.len())
    };
    let port = a[host_end..].strip_prefix(b":").filter(|p| !p.is_empty());
    (&a[..host_end], port)
}

/// RFC 9112 6.1 and 6.3, refusing rather than repairing every shape two hops could read
/// differently.
fn request_framing(version: u8, facts: &FieldFacts) -> Result<BodyFraming, ParseError> {
    let te = &facts.te;
    if !te.present {
        return Ok(match facts.content_length {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::None,
        });
    }
    if facts.content_length.is_some() {
        return Err(ParseError::Ambiguous(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if version == 0 {
        return Err(ParseError::Ambiguous(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if te.chunked_count > 1 {
        return Err(ParseError::Ambiguous("chunked applied more than once"));
    }
    if te.unknown_coding {
        return Err(ParseError::Malformed("unknown transfer-coding"));
    }
    if !te.final_is_chunked {
        return Err(ParseError::Ambiguous(
            "Transfer-Encoding does not end in chunked",
        ));
    }
    Ok(BodyFraming::Chunked)
}

struct Target {
    path: Span,
    query: Option<Span>,
    authority: Option<Span>,
    /// The scheme's port for an absolute-form target (which must then agree with `Host`).
    default_port: Option<&'static [u8]>,
}

/// RFC 9112 3.2: origin-form, absolute-form (http/https), authority-form (CONNECT only) or
/// asterisk-form (OPTIONS only). Fragments never belong in a request-target.
fn parse_target(buf: &[u8], target: Span, method: Method) -> Result<Target, ParseError> {
    let bytes = target.of(buf);
    let base = target.start as usize;
    if bytes.contains(&b'#') {
        return Err(ParseError::Malformed("fragment in request-target"));
    }
    if method == Method::Connect {
        return authority_form(bytes, base);
    }
    if bytes == b"*" {
        return if method == Method::Options {
            Ok(Target {
                path: target,
                query: None,
                authority: None,
                default_port: None,
            })
        } else {
            Err(ParseError::Malformed(
                "asterisk-form target without OPTIONS",
            ))
        };
    }
    if bytes.first() == Some(&b'/') {
        let (path, query) = split_query(base, bytes);
        return Ok(Target {
            path,
            query,
            authority: None,
            default_port: None,
        });
    }
    let (scheme_len, default_port): (usize, &'static [u8]) =
        if starts_with_ignore_case(bytes, b"http://") {
            (7, b"80")
        } else if starts_with_ignore_case(bytes, b"https://") {
            (8, b"443")
        } else {
            return Err(ParseError::Malformed("invalid request-target"));
        };
    let rest = &bytes[scheme_len..];
    let auth_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..auth_len];
    if authority.is_empty() || !is_valid_authority(authority) {
        // `is_valid_authority` also refuses `@`: userinfo is deprecated (RFC 9110 4.2.4) and a
        // classic way to make two hops see different hosts.
        return Err(ParseError::Malformed(
            "invalid authority in absolute-form target",
        ));
    }
    let auth_start = base + scheme_len;
    let (path, query) = split_query(auth_start + auth_len, &rest[auth_len..]);
    Ok(Target {
        path,
        query,
        authority: Some(Span::new(auth_start, auth_start + auth_len)),
        default_port: Some(default_port),
    })
}

/// `host:port`, with a non-empty host and a numeric port.
fn authority_form(bytes: &[u8], base: usize) -> Result<Target, ParseError> {
    let colon = bytes.iter().rposition(|&b| b == b':');
    let valid = match colon {
        Some(c) => {
            let port = &bytes[c + 1..];
            c > 0
                && (1..=5).contains(&port.len())
                && port.iter().all(u8::is_ascii_digit)
                && is_valid_authority(bytes)
        }
        None => false,
    };
    if !valid {
        return Err(ParseError::Malformed("CONNECT target is not host:port"));
    }
    let end = base + bytes.len();
    Ok(Target {
        path: Span::new(end, end),
        query: None,
        authority: Some(Span::new(base, end)),
        default_port: None,
    })
}

/// Split `bytes` (starting at buffer offset `base`) at the first `?`.
fn split_query(base: usize, bytes: &[u8]) -> (Span, Option<Span>) {
    match bytes.iter().position(|&b| b == b'?') {
        Some(q) => (
            Span::new(base, base + q),
            Some(Span::new(base + q + 1, base + bytes.len())),
        ),
        None => (Span::new(base, base + bytes.len()), None),
    }
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}
