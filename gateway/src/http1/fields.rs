//! What requests and responses share: turning httparse output into spans, the checks httparse does
//! not make, and one pass over the header fields that collects framing and connection facts.

use std::mem::MaybeUninit;

use super::{HeaderSpan, Limits, ParseError, STACK_HEADERS, Span};

/// httparse's per-parse scratch: a stack array, or one heap array when `max_headers` exceeds it.
pub(crate) struct Slots<'b> {
    stack: [MaybeUninit<httparse::Header<'b>>; STACK_HEADERS],
    heap: Vec<MaybeUninit<httparse::Header<'b>>>,
}

impl<'b> Slots<'b> {
    pub(crate) fn new() -> Self {
        Slots {
            stack: [const { MaybeUninit::uninit() }; STACK_HEADERS],
            heap: Vec::new(),
        }
    }

    /// Exactly `max_headers` slots, so httparse itself reports one header too many.
    pub(crate) fn get(&mut self, max_headers: usize) -> &mut [MaybeUninit<httparse::Header<'b>>] {
        if max_headers <= STACK_HEADERS {
            &mut self.stack[..max_headers]
        } else {
            self.heap.resize_with(max_headers, MaybeUninit::uninit);
            &mut self.heap[..]
        }
    }
}

/// The prefix of `buf` a head may occupy: anything past `max_header_bytes` cannot be part of an
/// acceptable head, so httparse never scans it. Capped below 4 GiB so every span fits a `u32`.
pub(crate) fn head_window<'b>(buf: &'b [u8], limits: &Limits) -> (&'b [u8], usize) {
    let max = limits.max_header_bytes.min(u32::MAX as usize);
    (&buf[..buf.len().min(max)], max)
}

/// The span of `part` when it lies inside `buf` (empty slices at any offset up to the end count).
pub(crate) fn span_in(buf: &[u8], part: &[u8]) -> Option<Span> {
    let base = buf.as_ptr() as usize;
    let start = (part.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(part.len())?;
    (end <= buf.len()).then(|| Span::new(start, end))
}

/// Spans for httparse's header list, appended to `out` (which the caller has cleared).
pub(crate) fn collect_headers(
    buf: &[u8],
    parsed: &[httparse::Header<'_>],
    out: &mut Vec<HeaderSpan>,
) -> Result<(), ParseError> {
    for h in parsed {
        let (Some(name), Some(value)) = (span_in(buf, h.name.as_bytes()), span_in(buf, h.value))
        else {
            return Err(ParseError::Malformed("header outside the parsed buffer"));
        };
        out.push(HeaderSpan { name, value });
    }
    Ok(())
}

/// httparse accepts a lone LF as a line ending; RFC 9112 2.2 lets a server do so, but a proxy that
/// does while the next hop does not is a request smuggling vector, so we refuse it.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    let Some((&first, rest)) = head.split_first() else {
        return false;
    };
    // Branch-free so it vectorizes: valid heads are scanned to the end anyway.
    let bare = head.iter().zip(rest).fold(0u32, |n, (&prev, &b)| {
        n | u32::from((b == b'\n') & (prev != b'\r'))
    });
    first == b'\n' || bare != 0
}

/// Which start line precedes the header section (they differ in where the version sits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartLine {
    Request,
    Response,
}

/// Turn an httparse error into our kind with a reason precise enough for a log line. This is the
/// error path, so it re-scans the buffer rather than slowing the happy path down.
pub(crate) fn map_httparse_error(buf: &[u8], err: httparse::Error, line: StartLine) -> ParseError {
    match err {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        httparse::Error::Version => classify_version(buf, line),
        httparse::Error::Token => ParseError::Malformed("invalid request-line"),
        httparse::Error::Status => ParseError::Malformed("invalid status-line"),
        httparse::Error::NewLine => ParseError::Malformed("invalid line ending"),
        httparse::Error::HeaderValue => {
            ParseError::Malformed("control character or bare CR in header value")
        }
        httparse::Error::HeaderName => diagnose_header_name(buf),
    }
}

/// Lines of `buf` without their line ending; a last line without LF is yielded as is.
fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn start_line(buf: &[u8]) -> &[u8] {
    lines(buf).find(|l| !l.is_empty()).unwrap_or(&[])
}

/// `HTTP/<digit>.<digit>` (or a prefix of it at least as long as `HTTP/<digit>`) is a version we
/// understand the shape of but do not speak; anything else is garbage.
fn classify_version(buf: &[u8], line: StartLine) -> ParseError {
    let first = start_line(buf);
    let token = match line {
        StartLine::Request => first.split(|&b| b == b' ').nth(2),
        StartLine::Response => first.split(|&b| b == b' ').next(),
    }
    .unwrap_or(&[]);
    let shape: &[fn(u8) -> bool] = &[
        |b| b == b'H',
        |b| b == b'T',
        |b| b == b'T',
        |b| b == b'P',
        |b| b == b'/',
        |b| b.is_ascii_digit(),
        |b| b == b'.',
        |b| b.is_ascii_digit(),
    ];
    let shaped = token.len() >= 6
        && token.len() <= shape.len()
        && token.iter().zip(shape).all(|(&b, f)| f(b));
    if shaped {
        ParseError::UnsupportedVersion
    } else {
        ParseError::Malformed("invalid HTTP version")
    }
}

/// Find the first header line httparse would refuse for its name and say why.
fn diagnose_header_name(buf: &[u8]) -> ParseError {
    let mut seen_start = false;
    for line in lines(buf) {
        if !seen_start {
            // Empty lines before the start line are tolerated (RFC 9112 2.2).
            seen_start = !line.is_empty();
            continue;
        }
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return ParseError::Malformed("obs-fold: header line starts with whitespace");
        }
        if line[0] == b':' {
            return ParseError::Malformed("empty header name");
        }
        let name_end = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        if let Some(&bad) = line[..name_end].iter().find(|&&b| !is_tchar(b)) {
            return if matches!(bad, b' ' | b'\t') {
                ParseError::Malformed("whitespace between header name and colon")
            } else {
                ParseError::Malformed("invalid byte in header name")
            };
        }
    }
    ParseError::Malformed("invalid header name")
}

/// RFC 9110 5.6.2 token characters.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Characters of an authority (`host[:port]`, IP literals in brackets), RFC 3986 3.2 without
/// userinfo: enough to refuse whitespace, `/`, `@`, `?`, `#` and `\` that would confuse routing.
pub(crate) fn is_valid_authority(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// Trim optional whitespace (SP / HTAB) from both ends, returning the offsets within `s`.
fn trim_ows(s: &[u8]) -> (usize, usize) {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    (start, end)
}

/// What the `Transfer-Encoding` field lines (all of them, as one list) say.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TransferEncoding {
    pub present: bool,
    pub chunked_count: u32,
    pub final_is_chunked: bool,
    pub unknown_coding: bool,
}

/// Facts gathered in one pass over the header fields.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FieldFacts {
    pub host_count: u32,
    pub host: Option<Span>,
    pub content_length: Option<u64>,
    pub te: TransferEncoding,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
    pub conn_upgrade: bool,
    pub upgrade_header: bool,
    pub expect_continue: bool,
}

/// Walk the header fields once: parse framing headers strictly, split `Connection` into `tokens`.
pub(crate) fn scan_fields(
    buf: &[u8],
    headers: &[HeaderSpan],
    tokens: &mut Vec<Span>,
) -> Result<FieldFacts, ParseError> {
    let mut facts = FieldFacts::default();
    for h in headers {
        let name = h.name.of(buf);
        // Dispatch on length first: most fields are none of these and cost one compare.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                facts.host_count += 1;
                if facts.host.is_none() {
                    facts.host = Some(h.value);
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect")
                && h.value.of(buf).eq_ignore_ascii_case(b"100-continue") =>
            {
                facts.expect_continue = true;
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => facts.upgrade_header = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                connection_tokens(buf, h.value, tokens, &mut facts);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if facts.content_length.is_some() {
                    return Err(ParseError::Ambiguous("duplicate Content-Length"));
                }
                facts.content_length = Some(parse_content_length(h.value.of(buf))?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_codings(h.value.of(buf), &mut facts.te)?;
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// RFC 9110 8.6: `1*DIGIT`. A list (even of equal values) or a sign is refused rather than
/// repaired: two hops that repair it differently disagree on where the body ends.
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.contains(&b',') {
        return Err(ParseError::Ambiguous("Content-Length is a list"));
    }
    if value.is_empty() {
        return Err(ParseError::Malformed("empty Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(ParseError::Malformed("non-digit in Content-Length"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ParseError::Malformed("Content-Length overflows"))?;
    }
    Ok(n)
}

/// Transfer codings we recognise besides `chunked` (RFC 9112 7, IANA registry).
fn is_known_coding(name: &[u8]) -> bool {
    [
        &b"gzip"[..],
        b"x-gzip",
        b"deflate",
        b"compress",
        b"x-compress",
    ]
    .iter()
    .any(|c| c.eq_ignore_ascii_case(name))
}

/// Add one `Transfer-Encoding` field line's codings to `te`. Empty list elements are refused:
/// tolerating `, chunked` is exactly the kind of leniency a smuggler probes for.
fn transfer_codings(value: &[u8], te: &mut TransferEncoding) -> Result<(), ParseError> {
    te.present = true;
    for element in value.split(|&b| b == b',') {
        let (s, e) = trim_ows(element);
        let element = &element[s..e];
        if element.is_empty() {
            return Err(ParseError::Malformed("empty Transfer-Encoding element"));
        }
        let name_end = element
            .iter()
            .position(|&b| b == b';')
            .unwrap_or(element.len());
        let (ns, ne) = trim_ows(&element[..name_end]);
        let name = &element[ns..ne];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ParseError::Malformed("invalid transfer-coding"));
        }
        if name.eq_ignore_ascii_case(b"chunked") {
            if name_end != element.len() {
                return Err(ParseError::Malformed("chunked takes no parameters"));
            }
            te.chunked_count += 1;
            te.final_is_chunked = true;
        } else {
            te.unknown_coding |= !is_known_coding(name);
            te.final_is_chunked = false;
        }
    }
    Ok(())
}

/// Split a `Connection` value into its tokens (empty list elements skipped).
fn connection_tokens(buf: &[u8], value: Span, tokens: &mut Vec<Span>, facts: &mut FieldFacts) {
    let bytes = value.of(buf);
    let base = value.start as usize;
    let mut offset = 0;
    for element in bytes.split(|&b| b == b',') {
        let (s, e) = trim_ows(element);
        let token = &element[s..e];
        if !token.is_empty() {
            tokens.push(Span::new(base + offset + s, base + offset + e));
            if token.eq_ignore_ascii_case(b"close") {
                facts.conn_close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                facts.conn_keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                facts.conn_upgrade = true;
            }
        }
        offset += element.len() + 1;
    }
}

/// RFC 9112 9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
pub(crate) fn persistent(version_minor: u8, facts: &FieldFacts) -> bool {
    if facts.conn_close {
        false
    } else if version_minor >= 1 {
        true
    } else {
        facts.conn_keep_alive
    }
}
