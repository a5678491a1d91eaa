//! Request-path normalisation: the path routes match and the upstream receives.
//!
//! Upstreams decode and normalise the path before they look at it, so a gateway that matched the
//! raw bytes could route `/%61pi/x`, `//api/x` or `/public/%2e%2e/api/x` to the public `/*` route
//! while the upstream serves `/api/x`. Routing therefore uses the normal form, as APISIX's `$uri`
//! does: percent-decoded, `//` merged, `.` and `..` segments resolved (RFC 3986 5.2.4).
//!
//! Refused (400), because upstreams read them differently and no one normal form is right for all:
//! - an encoded `/` (`%2F`): one segment to a decoding router, two to a framework that splits first;
//! - `\` and `%5C`: a path separator to Windows-backed and several Java/Node servers;
//! - NUL and other control bytes, raw or encoded, and `?`/`#` outside their places;
//! - an invalid escape (`%`, `%4`, `%zz`): each server repairs it its own way;
//! - a `..` that climbs above the root;
//! - `;` anywhere in the raw path. Tomcat, Jetty and Spring strip `;params` from every segment
//!   (`/api;x/secret` is `/api/secret` to them, `/..;/` is a dot-segment to Tomcat), while nginx,
//!   Python and Go keep `;` as data. Stripping would misroute the second kind, keeping it the
//!   first kind; refusing is the only choice every upstream agrees with. `%3B` is data for both
//!   kinds (they strip before decoding), so it is accepted and stays `%3B` upstream.
//!
//! Case is kept: `/API` and `/api` are different paths (RFC 3986 6.2.2.1), for routes as for
//! upstreams.
//!
//! What goes upstream is the normal form, re-encoded by [`encode_into`]: every byte outside
//! unreserved, sub-delims (but `;`), `:`, `@` and `/` is percent-encoded, so an upstream that
//! decodes sees exactly the path that was routed, and one that does not sees no ambiguity. The
//! query string is forwarded as received.
//!
//! Cost: a path without `%`, `\`, `;`, `//` or `/.` (and without control bytes) is already normal:
//! [`normalize`] scans it once and returns [`Normal::AsIs`] without touching `out`. Otherwise the
//! normal form is written into `out`, a buffer the caller reuses (no allocation once it has grown).

/// Why a path cannot be normalised safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("encoded slash (%2F) in the path")]
    EncodedSlash,
    #[error("backslash in the path")]
    Backslash,
    #[error("control byte in the path")]
    ControlByte,
    #[error("invalid percent-escape in the path")]
    BadEscape,
    #[error("`;` path parameter in the path")]
    Semicolon,
    #[error("`?` or `#` inside the path")]
    Delimiter,
    #[error("dot-segment above the root of the path")]
    AboveRoot,
}

/// Where the normal form is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normal {
    /// The raw path is its own normal form; `out` was not written.
    AsIs,
    /// The normal form (decoded bytes) is in `out`.
    Rewritten,
}

/// Byte classes for the single pass over the raw path.
const PLAIN: u8 = 0;
/// `%`, `\`, `;`, `?`, `#`, control bytes: the slow path decides.
const SPECIAL: u8 = 1;
/// Percent-encode this byte when writing the normal form upstream.
const ENCODE: u8 = 2;

const fn classes() -> [u8; 256] {
    let mut t = [PLAIN; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let special = c < 0x20 || c == 0x7f || matches!(c, b'%' | b'\\' | b';' | b'?' | b'#');
        let keep = c.is_ascii_alphanumeric()
            || matches!(
                c,
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
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        t[b] = if special { SPECIAL } else { PLAIN } | if keep { 0 } else { ENCODE };
        b += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

/// Normalises `raw` (an origin-form path, without the query). See the module doc for the rules.
/// `out` is cleared and written only when the result is [`Normal::Rewritten`].
pub fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Result<Normal, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut prev = 0u8;
    let mut simple = true;
    for &b in raw {
        if CLASS[b as usize] & SPECIAL != 0 || (prev == b'/' && (b == b'/' || b == b'.')) {
            simple = false;
            break;
        }
        prev = b;
    }
    if simple {
        return Ok(Normal::AsIs);
    }
    out.clear();
    rewrite(raw, out)?;
    if out.as_slice() == raw {
        return Ok(Normal::AsIs);
    }
    Ok(Normal::Rewritten)
}

/// The slow path: decode, then append segment by segment, merging slashes and resolving dots.
fn rewrite(raw: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    // `out` always starts with `/` and holds complete segments, each preceded by `/`; the segment
    // being decoded is appended after `seg_start` and judged when its `/` (or the end) arrives.
    out.push(b'/');
    let mut seg_start = out.len();
    let mut i = 1;
    while i <= raw.len() {
        let b = if i == raw.len() { b'/' } else { raw[i] };
        match b {
            b'/' => {
                let seg = &out[seg_start..];
                let at_end = i == raw.len();
                if seg.is_empty() {
                    // `//` merges; a trailing `/` stays (already in `out`).
                } else if seg == b"." {
                    out.truncate(seg_start);
                } else if seg == b".." {
                    // Drop `..` and the segment before it.
                    out.truncate(seg_start - 1);
                    if out.is_empty() {
                        return Err(PathError::AboveRoot);
                    }
                    let parent = out.iter().rposition(|&c| c == b'/').unwrap_or(0);
                    out.truncate(parent + 1);
                } else if !at_end {
                    out.push(b'/');
                }
                seg_start = out.len();
                i += 1;
            }
            b'%' => {
                let (Some(&h), Some(&l)) = (raw.get(i + 1), raw.get(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                    return Err(PathError::BadEscape);
                };
                let d = h << 4 | l;
                match d {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    _ if d < 0x20 || d == 0x7f => return Err(PathError::ControlByte),
                    _ => out.push(d),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'?' | b'#' => return Err(PathError::Delimiter),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlByte),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // A final segment was appended without its `/`; a final `.`/`..` left `/` behind, which
    // RFC 3986 keeps (`/a/.` is `/a/`).
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `normal` (a normal form from [`normalize`]) to `out`, percent-encoding every byte an
/// upstream could read as something other than path data (see the module doc).
pub fn encode_into(normal: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Runs of bytes that stay are copied whole: most paths have no byte to encode.
    let mut rest = normal;
    while let Some(i) = rest.iter().position(|&b| CLASS[b as usize] & ENCODE != 0) {
        let b = rest[i];
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        let mut out = b"garbage".to_vec();
        match normalize(raw.as_bytes(), &mut out)? {
            Normal::AsIs => Ok(raw.to_string()),
            Normal::Rewritten => Ok(String::from_utf8_lossy(&out).into_owned()),
        }
    }

    #[test]
    fn already_normal_paths_are_as_is() {
        for p in [
            "/",
            "/api/x",
            "/a/b/",
            "/a.b/c",
            "/v1.2/x",
            "/API/x",
            "/a:b@c/!$&'()*+,=~_-",
        ] {
            let mut out = Vec::new();
            assert_eq!(normalize(p.as_bytes(), &mut out), Ok(Normal::AsIs), "{p}");
            assert!(out.is_empty(), "{p}: fast path must not write");
        }
        // Slow-path candidates whose normal form is themselves.
        for p in [
            "/.well-known/openid-configuration",
            "/a/.x",
            "/a/...",
            "/a/..b",
        ] {
            assert_eq!(
                normalize(p.as_bytes(), &mut Vec::new()),
                Ok(Normal::AsIs),
                "{p}"
            );
        }
    }

    #[test]
    fn normal_forms() {
        let table = [
            ("/%61pi/x", "/api/x"),
            ("/%41PI/x", "/API/x"),
            ("//api/x", "/api/x"),
            ("/api//x", "/api/x"),
            ("///api///x//", "/api/x/"),
            ("/public/../api/x", "/api/x"),
            ("/public/%2e%2e/api/x", "/api/x"),
            ("/public/%2E%2e/api/x", "/api/x"),
            ("/public/.%2e/api/x", "/api/x"),
            ("/./api/x", "/api/x"),
            ("/%2e/api/x", "/api/x"),
            ("/api/x/.", "/api/x/"),
            ("/api/x/..", "/api/"),
            ("/api/..", "/"),
            ("/..%2e", "/..."),
            ("/a/b/../../api", "/api"),
            ("/a%20b", "/a b"),
            ("/a%3Bb", "/a;b"),
            ("/a%3fb", "/a?b"),
            ("/a%25b", "/a%b"),
            ("/caf%C3%A9", "/café"),
            ("/%2e%2e%2e", "/..."),
            ("/a/%2e%2ex", "/a/..x"),
        ];
        for (raw, want) in table {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refused() {
        let table = [
            ("", PathError::NotAbsolute),
            ("api", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/public/..%2Fapi/x", PathError::EncodedSlash),
            ("/api%2fx", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%5Cb", PathError::Backslash),
            ("/a%5cb", PathError::Backslash),
            ("/a%00b", PathError::ControlByte),
            ("/a\0b", PathError::ControlByte),
            ("/a%0Ab", PathError::ControlByte),
            ("/a%7fb", PathError::ControlByte),
            ("/a\tb", PathError::ControlByte),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%%41", PathError::BadEscape),
            ("/api;x/secret", PathError::Semicolon),
            ("/api/secret;x", PathError::Semicolon),
            ("/public/..;/api/x", PathError::Semicolon),
            ("/a?b", PathError::Delimiter),
            ("/a#b", PathError::Delimiter),
            ("/..", PathError::AboveRoot),
            ("/../api", PathError::AboveRoot),
            ("/a/../../api", PathError::AboveRoot),
            ("/%2e%2e/api", PathError::AboveRoot),
            ("//../api", PathError::AboveRoot),
        ];
        for (raw, want) in table {
            assert_eq!(norm(raw), Err(want), "{raw:?}");
        }
    }

    /// Normalising is idempotent once the normal form is re-encoded: what the upstream decodes is
    /// what was routed.
    #[test]
    fn encode_round_trips() {
        for raw in [
            "/%61pi/x",
            "/a%20b",
            "/a%3Bb",
            "/a%3fb",
            "/a%23b",
            "/a%25b",
            "/caf%C3%A9",
            "/a%22%3C%3E%60%7B%7D%7C%5E%5B%5D",
        ] {
            let mut normal = Vec::new();
            assert_eq!(
                normalize(raw.as_bytes(), &mut normal),
                Ok(Normal::Rewritten)
            );
            let mut wire = Vec::new();
            encode_into(&normal, &mut wire);
            let mut again = Vec::new();
            let n = normalize(&wire, &mut again).expect("encoded form is valid");
            let decoded = if n == Normal::AsIs { &wire } else { &again };
            assert_eq!(decoded, &normal, "{raw}");
            assert!(!wire.contains(&b';') && !wire.contains(&b'?') && !wire.contains(&b' '));
        }
        let mut wire = Vec::new();
        encode_into(b"/a;b?c d%e", &mut wire);
        assert_eq!(wire, b"/a%3Bb%3Fc%20d%25e");
    }
}
