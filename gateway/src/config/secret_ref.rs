//! APISIX secret references in plugin attributes, resolved when the config is loaded (and so
//! again on every reload).
//!
//! - `$ENV://NAME` is the variable's value; `$ENV://NAME/field` reads the variable as a JSON
//!   object and takes its `field` (APISIX's `core.env.fetch_by_uri`). The prefix is matched
//!   case-insensitively, as APISIX does.
//! - `$secret://manager/...` needs a secret manager (vault, aws, gcp): none is implemented, so the
//!   reference is refused naming the manager, rather than used verbatim as a password.
//!
//! Messages name the reference and the path, never the resolved value.

use serde_json::Value;

use super::Problem;

const ENV_PREFIX: &str = "$ENV://";
const SECRET_PREFIX: &str = "$secret://";

/// The references resolved in one load: where, which, and to what. Later checks may quote a
/// value they refuse (a type error echoing the string), so their problems go through
/// [`Resolved::scrub`] before anything prints them. No `Debug`: it holds the values.
#[derive(Default)]
pub(crate) struct Resolved(Vec<(String, String, String)>);

impl Resolved {
    /// Replaces, in each problem at a resolved path or one of its parents, the resolved value
    /// with the reference it came from.
    pub(crate) fn scrub(&self, problems: &mut [Problem]) {
        for p in problems {
            for (path, reference, value) in &self.0 {
                let covers = path == &p.path
                    || path
                        .strip_prefix(p.path.as_str())
                        .is_some_and(|rest| rest.starts_with(['.', '[']));
                if covers && !value.is_empty() && p.message.contains(value.as_str()) {
                    p.message = p
                        .message
                        .replace(value.as_str(), &format!("<value of {reference}>"));
                }
            }
        }
    }
}

/// Replaces every secret reference among the string values under `value` (object members and
/// array items, at any depth); a reference that cannot be resolved is a problem at its path.
pub(crate) fn resolve(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    resolved: &mut Resolved,
) {
    match value {
        Value::String(s) => {
            if !s.starts_with('$') {
                return;
            }
            match resolve_one(s, env) {
                Some(Ok(value)) => {
                    let reference = std::mem::replace(s, value.clone());
                    resolved.0.push((path.to_owned(), reference, value));
                }
                Some(Err(message)) => problems.push(Problem::new(path, message)),
                None => {}
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve(item, &format!("{path}[{i}]"), env, problems, resolved);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                resolve(item, &format!("{path}.{key}"), env, problems, resolved);
            }
        }
        _ => {}
    }
}

/// None: not a reference. The error never holds the variable's value.
fn resolve_one(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Result<String, String>> {
    if let Some(head) = s.get(..ENV_PREFIX.len())
        && head.eq_ignore_ascii_case(ENV_PREFIX)
    {
        return Some(resolve_env(&s[ENV_PREFIX.len()..], env));
    }
    let rest = s.strip_prefix(SECRET_PREFIX)?;
    Some(Err(match rest.split_once('/') {
        Some((manager, _)) if !manager.is_empty() => format!(
            "secret manager {manager:?} is not supported by shardgate (use an $ENV:// reference)"
        ),
        _ => format!("malformed secret reference {s:?}: expected $secret://<manager>/<id>/<key>"),
    }))
}

fn resolve_env(reference: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, field) = match reference.split_once('/') {
        Some((name, field)) => (name, Some(field).filter(|f| !f.is_empty())),
        None => (reference, None),
    };
    if name.is_empty() {
        return Err("malformed secret reference: $ENV:// needs a variable name".to_owned());
    }
    let Some(raw) = env(name) else {
        return Err(format!(
            "secret reference $ENV://{reference}: environment variable {name} is not set"
        ));
    };
    let Some(field) = field else {
        return Ok(raw);
    };
    let not_object = || {
        format!(
            "secret reference $ENV://{reference}: environment variable {name} is not a JSON \
             object (the /{field} form reads one)"
        )
    };
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&raw) else {
        return Err(not_object());
    };
    match map.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!(
            "secret reference $ENV://{reference}: field {field} of {name} is not a string, \
             number or boolean"
        )),
        None => Err(format!(
            "secret reference $ENV://{reference}: {name} has no field {field}"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cret-value".to_owned()),
            "JSON" => Some(r#"{"client_secret":"from-json","port":8443,"nested":{}}"#.to_owned()),
            _ => None,
        }
    }

    fn run(mut v: Value) -> (Value, Vec<String>) {
        let mut problems = Vec::new();
        resolve(&mut v, "p", &env, &mut problems, &mut Resolved::default());
        (v, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn env_references_resolve_anywhere_in_the_tree() {
        let (v, e) = run(json!({
            "client_secret": "$ENV://SECRET",
            "session": { "secret": "$env://JSON/client_secret" },
            "list": ["$ENV://JSON/port", "plain", "$notaref"],
            "n": 1
        }));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(v["client_secret"], "s3cret-value");
        assert_eq!(v["session"]["secret"], "from-json");
        assert_eq!(v["list"], json!(["8443", "plain", "$notaref"]));
    }

    #[test]
    fn unresolvable_references_are_named_without_values() {
        let (_, e) = run(json!({
            "a": "$ENV://MISSING",
            "b": "$ENV://SECRET/field",
            "c": "$ENV://JSON/absent",
            "d": "$ENV://JSON/nested",
            "e": "$ENV://",
            "f": "$secret://vault/kv/key",
            "g": "$secret://nomanager",
        }));
        assert_eq!(
            e,
            [
                "p.a: secret reference $ENV://MISSING: environment variable MISSING is not set",
                "p.b: secret reference $ENV://SECRET/field: environment variable SECRET is not a JSON object (the /field form reads one)",
                "p.c: secret reference $ENV://JSON/absent: JSON has no field absent",
                "p.d: secret reference $ENV://JSON/nested: field nested of JSON is not a string, number or boolean",
                "p.e: malformed secret reference: $ENV:// needs a variable name",
                "p.f: secret manager \"vault\" is not supported by shardgate (use an $ENV:// reference)",
                "p.g: malformed secret reference \"$secret://nomanager\": expected $secret://<manager>/<id>/<key>",
            ]
        );
        assert!(e.iter().all(|m| !m.contains("s3cret-value")));
    }

    #[test]
    fn problems_in_resolved_values_quote_the_reference_not_the_value() {
        let mut v = json!({ "a": "$ENV://SECRET", "b": { "c": ["$ENV://JSON/client_secret"] } });
        let mut resolved = Resolved::default();
        resolve(&mut v, "p", &env, &mut Vec::new(), &mut resolved);
        let mut problems = vec![
            Problem::new("p.a", "invalid value \"s3cret-value\""),
            Problem::new("p.b", "bad: from-json, again from-json"),
            Problem::new("p.x", "s3cret-value elsewhere is not this reference's"),
            Problem::new("p.ab", "s3cret-value under a sibling name"),
        ];
        resolved.scrub(&mut problems);
        let got: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "p.a: invalid value \"<value of $ENV://SECRET>\"",
                "p.b: bad: <value of $ENV://JSON/client_secret>, again <value of $ENV://JSON/client_secret>",
                "p.x: s3cret-value elsewhere is not this reference's",
                "p.ab: s3cret-value under a sibling name",
            ]
        );
    }
}
