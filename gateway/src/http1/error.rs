//! The one error type of the HTTP/1.1 codec.

/// Why a head or a chunked body was refused.
///
/// The kinds are what the connection loop maps to a status (431 for the size kinds, 505 for the
/// version, 400 otherwise); the `&'static str` is a short reason meant for one log line.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The head is longer than `Limits::max_header_bytes` (possibly before it is even complete).
    #[error("header section larger than the configured limit")]
    HeaderTooLarge,
    /// The head has more field lines than `Limits::max_headers`.
    #[error("more header fields than the configured limit")]
    TooManyHeaders,
    /// The bytes are not an HTTP/1.1 message we accept.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The body framing could be read two ways (the request smuggling shapes).
    #[error("ambiguous message framing: {0}")]
    Ambiguous(&'static str),
    /// The chunked body is broken.
    #[error("bad chunked body: {0}")]
    BadChunk(&'static str),
    /// A syntactically valid version other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
}
