//! What the access log may record of a request-target: query parameters that carry credentials
//! (OAuth codes and tokens, `state`, client secrets) are logged as `REDACTED`.

use std::borrow::Cow;

/// Query parameter names whose values never reach a log line.
const SECRET_PARAMS: [&str; 8] = [
    "code",
    "state",
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "client_secret",
    "session_state",
];

fn is_secret(name: &str) -> bool {
    SECRET_PARAMS.contains(&name)
}

/// `target` with the values of [`SECRET_PARAMS`] replaced by `REDACTED`. Borrows (no allocation)
/// when the query has none of them.
pub fn redact_target(target: &str) -> Cow<'_, str> {
    let Some(q) = target.find('?') else {
        return Cow::Borrowed(target);
    };
    let query = &target[q + 1..];
    let any = query
        .split('&')
        .any(|kv| kv.split_once('=').is_some_and(|(k, _)| is_secret(k)));
    if !any {
        return Cow::Borrowed(target);
    }
    let mut out = String::with_capacity(target.len());
    out.push_str(&target[..=q]);
    for (i, kv) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match kv.split_once('=') {
            Some((k, _)) if is_secret(k) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(kv),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let table = [
            ("/cb?code=abc&state=xyz", "/cb?code=REDACTED&state=REDACTED"),
            (
                "/cb?state=s&session_state=t&iss=https%3A%2F%2Fidp",
                "/cb?state=REDACTED&session_state=REDACTED&iss=https%3A%2F%2Fidp",
            ),
            (
                "/x?a=1&access_token=t&id_token=i&refresh_token=r&token=k&client_secret=c&b",
                "/x?a=1&access_token=REDACTED&id_token=REDACTED&refresh_token=REDACTED&token=REDACTED&client_secret=REDACTED&b",
            ),
            ("/x?code=", "/x?code=REDACTED"),
        ];
        for (raw, want) in table {
            assert_eq!(redact_target(raw), want, "{raw}");
        }
    }

    #[test]
    fn targets_without_secrets_are_borrowed() {
        for t in [
            "/",
            "/a/b",
            "/a?b=1&c",
            "/a?codes=1&xstate=2&code",
            "/a?Code=1",
        ] {
            assert!(
                matches!(redact_target(t), Cow::Borrowed(s) if s == t),
                "{t}"
            );
        }
    }
}
