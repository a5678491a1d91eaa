//! Request variables for route `vars`, read straight from a parsed request head.
//!
//! This adapter is what the connection loop has today; the plugin pipeline's request context
//! will implement [`VarSource`] itself (computing each variable once per request) and take
//! these helpers with it. Every value is a slice of the request buffer or a constant: nothing
//! is allocated. Values are as sent (`arg_*` and `cookie_*` are not percent-decoded, as
//! nginx's `$arg_*` and `$cookie_*`).

use crate::http1::RequestHead;

use super::expr::VarSource;

/// The variables of one request, looked up on demand.
pub struct HeadVars<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
    /// `uri`: the normalised path (decoded, dot-segments resolved), as nginx's `$uri`.
    pub uri: &'a [u8],
    /// The client address as text.
    pub remote_addr: &'a str,
    pub server_port: &'a str,
    pub tls: bool,
}

impl VarSource for HeadVars<'_> {
    fn var(&self, name: &str) -> Option<&[u8]> {
        let buf = self.buf;
        let head = self.head;
        if let Some(arg) = name.strip_prefix("arg_") {
            return query_arg(head.query?.of(buf), arg.as_bytes());
        }
        if let Some(field) = name.strip_prefix("http_") {
            return head
                .headers
                .iter()
                .find(|h| var_names_field(field.as_bytes(), h.name.of(buf)))
                .map(|h| h.value.of(buf));
        }
        if let Some(cookie) = name.strip_prefix("cookie_") {
            return head
                .header_values(buf, "cookie")
                .find_map(|v| cookie_value(v, cookie.as_bytes()));
        }
        match name {
            "uri" => Some(self.uri),
            "request_uri" => Some(head.target.of(buf)),
            "args" | "query_string" => head.query.map(|q| q.of(buf)),
            "host" => head.host.map(|h| host_without_port(h.of(buf))),
            "request_method" => Some(head.method_span.of(buf)),
            "remote_addr" => Some(self.remote_addr.as_bytes()),
            "server_port" => Some(self.server_port.as_bytes()),
            "scheme" => Some(if self.tls { b"https" } else { b"http" }),
            "server_protocol" => Some(if head.version_minor == 0 {
                b"HTTP/1.0"
            } else {
                b"HTTP/1.1"
            }),
            _ => None,
        }
    }
}

/// nginx's `$http_<name>`: lowercase, `-` written as `_`.
pub fn var_names_field(var: &[u8], field: &[u8]) -> bool {
    var.len() == field.len()
        && var.iter().zip(field).all(|(&v, &f)| {
            let f = if f == b'-' {
                b'_'
            } else {
                f.to_ascii_lowercase()
            };
            v.to_ascii_lowercase() == f
        })
}

/// The raw value of the first `name=` in a query string (`name` alone gives an empty value).
pub fn query_arg<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        // nginx compares argument names case-insensitively.
        key.eq_ignore_ascii_case(name).then_some(value)
    })
}

/// The value of cookie `name` in one `Cookie` header value.
pub fn cookie_value<'c>(header: &'c [u8], name: &[u8]) -> Option<&'c [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().position(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}
