//! The gateway's error type and the one place where an error becomes an HTTP response.
//!
//! Every failure a request can meet is a variant here; [`respond`] is an exhaustive `match`, so a new
//! variant does not compile until someone decides its status. Nothing else in the gateway picks an
//! error status.

use std::fmt;

use crate::http1::ParseError;
use crate::http1::path::PathError;

/// Which side caused a failure: it decides the log level and whether a retry can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream (origin) misbehaved or was unreachable.
    Upstream,
    /// The identity provider was unreachable or answered nonsense.
    Idp,
    /// A bug or resource exhaustion in the gateway itself.
    Internal,
}

/// What went wrong talking to an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No node is configured or every node is cooling down after failures.
    NoHealthyNode,
    /// TCP connect failed (refused, unreachable, reset).
    ConnectFailed(String),
    /// TCP connect did not finish within `timeout.connect`.
    ConnectTimeout,
    /// The TLS handshake with an `https` upstream failed (certificate not trusted, wrong name,
    /// client certificate refused, protocol error).
    Tls(String),
    /// Writing the request took longer than `timeout.send`.
    SendTimeout,
    /// No (complete) response head within `timeout.read`.
    ReadTimeout,
    /// The upstream closed the connection before a complete response head.
    ClosedEarly,
    /// The upstream's response could not be parsed.
    BadResponse(ParseError),
    /// An I/O error after the connection was established.
    Io(String),
    /// A retry was due but `retry_timeout` had passed since the first attempt; the last
    /// attempt's failure is kept for the log.
    RetryTimeout {
        retries: u32,
        last: Box<UpstreamError>,
    },
}

/// Every way a request can fail before or while it is proxied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The request head or body framing is malformed, oversized or ambiguous.
    Parse(ParseError),
    /// The request path has no safe normal form (encoded `/`, `\`, `;`, control bytes, ...).
    Path(PathError),
    /// The client did not send a complete request head within `limits.header_timeout`.
    HeaderTimeout,
    /// The request body was cut short or was malformed while we streamed it.
    ClientBody(String),
    /// The request body is larger than `limits.client_max_body_size`.
    BodyTooLarge,
    /// The request body stalled (`client_body_timeout`) or trickled below `client_body_min_rate`.
    BodyTimeout,
    /// No route matches host, path and method.
    RouteNotFound,
    /// Upstream failures; `retryable` is set when nothing reached the upstream, so another node may be tried.
    Upstream {
        error: UpstreamError,
        retryable: bool,
    },
    /// A plugin refused the request (401, 403, a login that failed, ...): the response is ready.
    /// A plugin's successful answer (a redirect, a logout) is a `pipeline::Step::Respond`, never
    /// this.
    Plugin(crate::pipeline::Response),
    /// Something only an actor or the IdP can provide is not available yet (discovery not done).
    Unavailable(&'static str),
    /// The shard is shutting down and takes no new requests.
    ShuttingDown,
}

impl Error {
    /// The side a failure is blamed on (log level, metrics label).
    pub fn side(&self) -> Side {
        match self {
            Error::Parse(_)
            | Error::Path(_)
            | Error::HeaderTimeout
            | Error::ClientBody(_)
            | Error::BodyTooLarge
            | Error::BodyTimeout
            | Error::RouteNotFound => Side::Downstream,
            Error::Upstream { .. } => Side::Upstream,
            Error::Plugin(_) => Side::Downstream,
            Error::Unavailable(_) => Side::Idp,
            Error::ShuttingDown => Side::Internal,
        }
    }

    /// A short stable code for the response body and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Parse(ParseError::HeaderTooLarge) | Error::Parse(ParseError::TooManyHeaders) => {
                "request_header_too_large"
            }
            Error::Parse(_) => "bad_request",
            Error::Path(_) => "bad_path",
            Error::HeaderTimeout => "request_timeout",
            Error::ClientBody(_) => "bad_request_body",
            Error::BodyTooLarge => "request_body_too_large",
            Error::BodyTimeout => "request_body_timeout",
            Error::RouteNotFound => "route_not_found",
            Error::Upstream { error, .. } => match error {
                UpstreamError::ConnectTimeout
                | UpstreamError::SendTimeout
                | UpstreamError::ReadTimeout => "upstream_timeout",
                UpstreamError::NoHealthyNode => "no_healthy_upstream",
                _ => "upstream_unavailable",
            },
            Error::Plugin(r) => r.code,
            Error::Unavailable(_) => "temporarily_unavailable",
            Error::ShuttingDown => "shutting_down",
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::NoHealthyNode => f.write_str("upstream: no healthy node"),
            UpstreamError::ConnectFailed(e) => write!(f, "upstream connect failed: {e}"),
            UpstreamError::ConnectTimeout => f.write_str("upstream connect timed out"),
            UpstreamError::Tls(e) => write!(f, "upstream TLS handshake failed: {e}"),
            UpstreamError::SendTimeout => f.write_str("upstream send timed out"),
            UpstreamError::ReadTimeout => f.write_str("upstream read timed out"),
            UpstreamError::ClosedEarly => {
                f.write_str("upstream closed the connection before a response")
            }
            UpstreamError::BadResponse(e) => write!(f, "upstream sent a malformed response: {e}"),
            UpstreamError::Io(e) => write!(f, "upstream i/o: {e}"),
            UpstreamError::RetryTimeout { retries, last } => write!(
                f,
                "upstream retry_timeout reached after {retries} retries; last attempt: {last}"
            ),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse(e) => write!(f, "malformed request: {e}"),
            Error::Path(e) => write!(f, "refused request path: {e}"),
            Error::HeaderTimeout => f.write_str("request head not received within header_timeout"),
            Error::ClientBody(e) => write!(f, "request body: {e}"),
            Error::BodyTooLarge => f.write_str("request body larger than client_max_body_size"),
            Error::BodyTimeout => f.write_str(
                "request body stalled or slower than client_body_timeout/client_body_min_rate",
            ),
            Error::RouteNotFound => f.write_str("no route matches"),
            Error::Upstream { error, .. } => error.fmt(f),
            Error::Plugin(r) => write!(f, "{}: {}", r.code, r.reason),
            Error::Unavailable(what) => write!(f, "temporarily unavailable: {what}"),
            Error::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

/// A response the gateway writes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    /// Extra headers (name, value), e.g. `WWW-Authenticate` or `Location`.
    pub headers: Vec<(String, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Close the client connection after this response (framing can no longer be trusted).
    pub close: bool,
}

/// The ONE mapping from an error to what the client sees.
pub fn respond(err: &Error) -> ErrorResponse {
    let json = |status: u16, close: bool| ErrorResponse {
        status,
        headers: Vec::new(),
        content_type: "application/json",
        body: format!("{{\"error\":\"{}\"}}\n", err.code()).into_bytes(),
        close,
    };
    match err {
        Error::Parse(ParseError::HeaderTooLarge) | Error::Parse(ParseError::TooManyHeaders) => {
            json(431, true)
        }
        Error::Parse(ParseError::UnsupportedVersion) => json(505, true),
        // Any other framing doubt means we cannot know where the next request starts: close.
        Error::Parse(_) => json(400, true),
        // Framing is intact: the connection may go on (`finish_early` decides about the body).
        Error::Path(_) => json(400, false),
        Error::HeaderTimeout => json(408, true),
        Error::ClientBody(_) => json(400, true),
        // The rest of the body is not read: the connection cannot carry another request.
        Error::BodyTooLarge => json(413, true),
        Error::BodyTimeout => json(408, true),
        Error::RouteNotFound => json(404, false),
        Error::Upstream { error, .. } => match error {
            UpstreamError::ConnectTimeout
            | UpstreamError::SendTimeout
            | UpstreamError::ReadTimeout => json(504, false),
            UpstreamError::NoHealthyNode
            | UpstreamError::ConnectFailed(_)
            | UpstreamError::Tls(_)
            | UpstreamError::ClosedEarly
            | UpstreamError::BadResponse(_)
            | UpstreamError::Io(_)
            // APISIX answers 502 once `retry_timeout` has passed, whatever the last failure.
            | UpstreamError::RetryTimeout { .. } => json(502, false),
        },
        Error::Plugin(r) => ErrorResponse {
            status: r.status,
            headers: r.headers.clone(),
            content_type: r.content_type,
            body: r.body.clone(),
            close: false,
        },
        Error::Unavailable(_) => json(503, false),
        Error::ShuttingDown => json(503, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            respond(&Error::Parse(ParseError::HeaderTooLarge)).status,
            431
        );
        assert_eq!(
            respond(&Error::Parse(ParseError::TooManyHeaders)).status,
            431
        );
        assert_eq!(
            respond(&Error::Parse(ParseError::Malformed("x"))).status,
            400
        );
        assert!(respond(&Error::Parse(ParseError::Ambiguous("x"))).close);
        assert_eq!(respond(&Error::HeaderTimeout).status, 408);
        assert_eq!(respond(&Error::Path(PathError::EncodedSlash)).status, 400);
        assert_eq!(respond(&Error::RouteNotFound).status, 404);
        let refused = Error::Upstream {
            error: UpstreamError::ConnectFailed("refused".into()),
            retryable: true,
        };
        assert_eq!(respond(&refused).status, 502);
        let slow = Error::Upstream {
            error: UpstreamError::ReadTimeout,
            retryable: false,
        };
        assert_eq!(respond(&slow).status, 504);
        assert_eq!(respond(&Error::Unavailable("discovery")).status, 503);
    }

    #[test]
    fn not_found_body_is_small_json() {
        let r = respond(&Error::RouteNotFound);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, b"{\"error\":\"route_not_found\"}\n");
    }
}
