//! APISIX's `$var` templates (`core.utils.resolve_var`): a string where `$name` or `${name}` is
//! replaced by a request variable, `\$` stays a literal `$`, and a variable the request does not
//! carry becomes the empty string. Parsed once when the config is loaded; resolving appends to a
//! caller-owned buffer, so a reused buffer makes it allocation-free.

use crate::pipeline::{Ctx, Var};

/// A variable reference in a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VarRef {
    /// A variable shardgate computes.
    Known(Var),
    /// `$1`..`$9`-style or other names: looked up among the route's URI parameters
    /// (`/:name`) at request time, else empty.
    Other(String),
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(VarRef),
}

/// A parsed template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Template {
    /// Parses `s` as lua-resty-core's `resolve_var` reads it (`(\\)?\$(\{(\w+)\}|(\w+))`).
    pub fn parse(s: &str) -> Template {
        let b = s.as_bytes();
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && b.get(i + 1) == Some(&b'$') {
                // `\$name` is the literal text `$name` (the backslash is dropped).
                lit.push('$');
                i += 2;
                continue;
            }
            if b[i] == b'$' {
                let (name, next) = if b.get(i + 1) == Some(&b'{') {
                    let start = i + 2;
                    let end = start + b[start..].iter().take_while(|c| is_word(**c)).count();
                    if end > start && b.get(end) == Some(&b'}') {
                        (Some(&s[start..end]), end + 1)
                    } else {
                        (None, i + 1)
                    }
                } else {
                    let start = i + 1;
                    let end = start + b[start..].iter().take_while(|c| is_word(**c)).count();
                    if end > start {
                        (Some(&s[start..end]), end)
                    } else {
                        (None, i + 1)
                    }
                };
                if let Some(name) = name {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(match Var::parse(name) {
                        Some(v) => VarRef::Known(v),
                        None => VarRef::Other(name.to_owned()),
                    }));
                    i = next;
                    continue;
                }
            }
            // Copy one UTF-8 character.
            let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
            lit.push_str(&s[i..i + ch_len]);
            i += ch_len;
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Template { pieces }
    }

    /// Whether the template has a variable at all.
    pub fn has_vars(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Var(_)))
    }

    /// The variables shardgate does not compute (and that are no URI parameter of `params`).
    pub fn unknown_vars<'a>(&'a self) -> impl Iterator<Item = &'a str> + 'a {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(VarRef::Other(n)) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Appends the resolved template to `out`; returns how many variables resolved to a value
    /// (APISIX's `n_resolved`: `var_combination` falls back to `remote_addr` when it is 0).
    pub fn resolve_into(&self, ctx: &mut Ctx<'_>, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Var(v) => {
                    if let Some(value) = resolve(ctx, v) {
                        out.extend_from_slice(value);
                        n += 1;
                    }
                }
            }
        }
        n
    }
}

/// A variable's value for this request: a computed variable, else a route URI parameter.
pub fn resolve<'c>(ctx: &'c mut Ctx<'_>, v: &VarRef) -> Option<&'c [u8]> {
    match v {
        VarRef::Known(var) => ctx.var(var),
        VarRef::Other(name) => ctx.param(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &Template) -> Vec<String> {
        t.pieces
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => format!("L({s})"),
                Piece::Var(VarRef::Known(v)) => format!("V({v:?})"),
                Piece::Var(VarRef::Other(n)) => format!("O({n})"),
            })
            .collect()
    }

    #[test]
    fn templates_parse_as_resolve_var_reads_them() {
        let cases: &[(&str, &[&str])] = &[
            ("plain", &["L(plain)"]),
            ("$remote_addr", &["V(RemoteAddr)"]),
            (
                "$remote_addr $http_x_user",
                &["V(RemoteAddr)", "L( )", "V(Http(\"x-user\"))"],
            ),
            ("/v2${uri}x", &["L(/v2)", "V(Uri)", "L(x)"]),
            ("/u/$id/", &["L(/u/)", "O(id)", "L(/)"]),
            ("cost \\$5", &["L(cost $5)"]),
            ("$ and ${ and ${} and $-", &["L($ and ${ and ${} and $-)"]),
            ("$arg_page", &["V(Arg(\"page\"))"]),
            ("ü$host", &["L(ü)", "V(Host)"]),
        ];
        for (input, want) in cases {
            assert_eq!(names(&Template::parse(input)), *want, "{input}");
        }
    }
}
