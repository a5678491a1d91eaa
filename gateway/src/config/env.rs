//! `${VAR}` / `${VAR:-default}` expansion on the raw config text.
//!
//! As in a shell, the default applies when the variable is unset *or empty*. `$${` writes a
//! literal `${`. A reference must close on its own line. Every problem is reported, each with
//! its line number, so one run shows all the variables a deployment forgot.

use super::Problem;

pub(super) fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let at = || format!("line {}", index + 1);
        let mut rest = line;
        while let Some(start) = rest.find('$') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
                continue;
            }
            let Some(body_start) = tail.strip_prefix("${") else {
                out.push('$');
                rest = &tail[1..];
                continue;
            };
            let Some(end) = body_start.find('}') else {
                problems.push(Problem::new(
                    at(),
                    "unterminated `${` (expected `}` on the same line)",
                ));
                rest = "";
                break;
            };
            let body = &body_start[..end];
            rest = &body_start[end + 1..];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            if !is_var_name(name) {
                problems.push(Problem::new(
                    at(),
                    format!("`${{{body}}}`: `{name}` is not a valid environment variable name"),
                ));
                continue;
            }
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => problems.push(Problem::new(
                    at(),
                    format!("environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"),
                )),
            }
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
