//! Response heads: the status-line and response body framing.

use super::fields::{
    self, Slots, StartLine, collect_headers, has_bare_lf, head_window, map_httparse_error,
    scan_fields,
};
use super::{BodyFraming, HeaderSpan, Limits, Method, ParseError, Parsed, Span};

/// A parsed response head. Spans index the buffer given to [`parse_response`].
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// 0 or 1.
    pub version_minor: u8,
    /// The reason-phrase (may be empty).
    pub reason: Span,
    /// Reused across responses: a parse clears it and keeps the capacity.
    pub headers: Vec<HeaderSpan>,
    pub framing: BodyFraming,
    /// False whenever the body is close-delimited or the framing had to be guessed.
    pub keep_alive: bool,
    /// Every token of every `Connection` field: the field names to remove before forwarding.
    pub connection_tokens: Vec<Span>,
    /// Bytes of the head including the final CRLF CRLF; the body starts here.
    pub head_len: usize,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseHead {
    pub fn new() -> Self {
        ResponseHead {
            status: 0,
            version_minor: 1,
            reason: Span::default(),
            headers: Vec::new(),
            framing: BodyFraming::None,
            keep_alive: false,
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

    /// Whether a field called `name` is listed in `Connection` (and so must not be forwarded).
    pub fn is_connection_listed(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_tokens
            .iter()
            .any(|t| t.of(buf).eq_ignore_ascii_case(name))
    }

    /// 1xx other than 101: an interim response, the final one follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    fn clear(&mut self) {
        self.status = 0;
        self.version_minor = 1;
        self.reason = Span::default();
        self.headers.clear();
        self.framing = BodyFraming::None;
        self.keep_alive = false;
        self.connection_tokens.clear();
        self.head_len = 0;
    }
}

/// Parse a response head from the start of `buf`. `request_method` is the method of the request
/// this answers: HEAD => no body; 1xx/204/304 => no body; CONNECT 2xx => no body (a tunnel follows).
///
/// `Partial` means "valid so far": append more bytes and call again with the whole buffer. On
/// `Partial` or an error the contents of `head` are unspecified.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    request_method: Method,
    head: &mut ResponseHead,
) -> Result<Parsed, ParseError> {
    head.clear();
    let (window, max_bytes) = head_window(buf, limits);
    let mut slots = Slots::new();
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        window,
        slots.get(limits.max_headers),
    );
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => {
            return Err(ParseError::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(map_httparse_error(window, e, StartLine::Response)),
    };
    let head_bytes = &window[..head_len];
    if has_bare_lf(head_bytes) {
        return Err(ParseError::Malformed("bare LF line ending"));
    }
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(ParseError::Malformed("incomplete status-line"));
    };
    if !(100..=599).contains(&code) {
        return Err(ParseError::Malformed("status code out of range"));
    }
    head.status = code;
    head.version_minor = version;
    head.reason = reason_span(head_bytes);
    head.head_len = head_len;
    collect_headers(window, resp.headers, &mut head.headers)?;

    let facts = scan_fields(window, &head.headers, &mut head.connection_tokens)?;
    let te = &facts.te;
    if te.present && version == 0 {
        // RFC 9112 6.1: such framing is faulty; a proxy cannot trust either reading of it.
        return Err(ParseError::Ambiguous(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    }
    if te.chunked_count > 1 {
        return Err(ParseError::Ambiguous("chunked applied more than once"));
    }
    head.keep_alive = fields::persistent(version, &facts);
    let no_body = request_method == Method::Head
        || (100..200).contains(&code)
        || code == 204
        || code == 304
        || (request_method == Method::Connect && (200..300).contains(&code));
    head.framing = if no_body {
        BodyFraming::None
    } else if te.present {
        // RFC 9112 6.3 (3): Transfer-Encoding overrides Content-Length, but a message carrying
        // both may be an attempt at smuggling, so the connection is not reused after it.
        if facts.content_length.is_some() {
            head.keep_alive = false;
        }
        if te.final_is_chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::CloseDelimited
        }
    } else if let Some(n) = facts.content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::CloseDelimited
    };
    if head.framing == BodyFraming::CloseDelimited {
        head.keep_alive = false;
    }
    Ok(Parsed::Complete)
}

/// The reason-phrase of a status-line httparse has validated (`HTTP/1.x NNN[ reason]CRLF`, after
/// optional empty lines). Computed here because httparse hands back a detached `""` for reasons
/// containing obs-text.
fn reason_span(head: &[u8]) -> Span {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    // "HTTP/1.1 200" is 12 bytes; a reason follows only after one more space.
    let reason_start = if head.get(start + 12) == Some(&b' ') {
        start + 13
    } else {
        start + 12
    };
    let reason_start = reason_start.min(head.len());
    let reason_end = head[reason_start..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(head.len(), |p| reason_start + p);
    Span::new(reason_start, reason_end)
}
