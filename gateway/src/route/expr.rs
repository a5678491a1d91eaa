//! Route `vars`: lua-resty-expr v1, compiled once per config.
//!
//! Grammar (as `resty.expr.v1`):
//! - a rule list `[c1, c2, ...]` is an AND of its items; an empty list is always true;
//! - `["OR", c1, c2, ...]`, `["AND", ...]`, `["!OR", ...]`, `["!AND", ...]` (case-insensitive,
//!   at least two operands) combine nested rules; the outermost value must be a list of rules
//!   or start with one of these operators;
//! - a condition is `[var, op, value]`, `[var, "!", op, value]` (negated) or `[var, value]`
//!   (`==`). Operators (case-insensitive): `==`, `~=`, `>`, `>=`, `<`, `<=`, `~~` (regex
//!   search), `~*` (case-insensitive regex search), `in`, `has`, `ipmatch`.
//!
//! Comparison follows lua-resty-expr on string variables: `==`/`~=` against a number compare
//! numerically (a non-number variable is unequal); `>`... compare numerically and are false
//! when either side is not a number; a missing variable equals only `null` and matches no
//! regex. Differences: `has` looks for the value among the variable's comma-separated elements
//! (lua-resty-expr only looks into Lua tables, which no variable here is); regexes use Rust's
//! syntax (no look-around or backreferences), an unsupported one is a config error; a
//! two-element condition keeps its value's case (lua-resty-expr lowercases it by accident).

use regex::bytes::{Regex, RegexBuilder};
use serde_json::Value;

use super::ip::IpSet;

/// Where an expression reads request variables (`uri`, `host`, `arg_*`, `http_*`, ...).
pub trait VarSource {
    /// The variable's value, or None when the request has no such variable.
    fn var(&self, name: &str) -> Option<&[u8]>;
}

/// A request with no variables at all.
pub struct NoVars;

impl VarSource for NoVars {
    fn var(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// A compiled `vars` expression.
#[derive(Debug)]
pub struct Expr {
    /// None: the empty rule, always true.
    root: Option<Node>,
}

#[derive(Debug)]
enum Node {
    Logic {
        or: bool,
        negate: bool,
        items: Box<[Node]>,
    },
    Cond {
        var: Box<str>,
        op: Op,
        negate: bool,
    },
}

#[derive(Debug)]
enum Op {
    Eq(Operand),
    Ne(Operand),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Regex(Regex),
    /// Texts; a number in the list never equals a variable (Lua compares types).
    In(Box<[Option<Box<[u8]>>]>),
    Has(Box<[u8]>),
    IpMatch(IpSet),
}

#[derive(Debug)]
enum Operand {
    Text(Box<[u8]>),
    Number(f64),
    Null,
}

/// Why an expression is refused: the index path inside the rule (`[1][0]`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub at: String,
    pub message: String,
}

fn err<T>(at: &str, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        at: at.to_owned(),
        message: message.into(),
    })
}

impl Expr {
    /// Compiles APISIX's `vars` value (already parsed from YAML/JSON).
    pub fn compile(rule: &Value) -> Result<Expr, ExprError> {
        let Value::Array(items) = rule else {
            return err("", "must be an array of rules");
        };
        if items.is_empty() {
            return Ok(Expr { root: None });
        }
        if !items[0].is_array() && logic_op(&items[0]).is_none() {
            return err(
                "",
                "rule should be wrapped inside brackets: `[[\"arg_name\", \"==\", \"json\"]]`",
            );
        }
        Ok(Expr {
            root: Some(compile_rule(items, "")?),
        })
    }

    pub fn eval<V: VarSource + ?Sized>(&self, vars: &V) -> bool {
        self.root.as_ref().is_none_or(|n| n.eval(vars))
    }
}

/// `(or, negate)` for a logical operator name.
fn logic_op(v: &Value) -> Option<(bool, bool)> {
    let s = v.as_str()?;
    match s.to_ascii_uppercase().as_str() {
        "AND" => Some((false, false)),
        "OR" => Some((true, false)),
        "!AND" => Some((false, true)),
        "!OR" => Some((true, true)),
        _ => None,
    }
}

fn compile_rule(items: &[Value], at: &str) -> Result<Node, ExprError> {
    if items.is_empty() {
        return err(at, "rule too short");
    }
    if items[0].is_array() {
        let mut nodes = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            nodes.push(compile_item(item, &format!("{at}[{i}]"))?);
        }
        return Ok(Node::Logic {
            or: false,
            negate: false,
            items: nodes.into(),
        });
    }
    if let Some((or, negate)) = logic_op(&items[0]) {
        if items.len() <= 2 {
            return err(
                at,
                "rule too short: a logical operator needs two or more rules",
            );
        }
        let mut nodes = Vec::with_capacity(items.len() - 1);
        for (i, item) in items.iter().enumerate().skip(1) {
            nodes.push(compile_item(item, &format!("{at}[{i}]"))?);
        }
        return Ok(Node::Logic {
            or,
            negate,
            items: nodes.into(),
        });
    }
    compile_cond(items, at)
}

fn compile_item(item: &Value, at: &str) -> Result<Node, ExprError> {
    match item {
        Value::Array(items) => compile_rule(items, at),
        _ => err(at, "must be an array (a condition or a nested rule)"),
    }
}

fn compile_cond(items: &[Value], at: &str) -> Result<Node, ExprError> {
    let (var, op, value, negate) = match items {
        [var, not, op, value] => {
            if not.as_str() != Some("!") {
                return err(
                    at,
                    "bad 'not' expression: the second of four elements must be `!`",
                );
            }
            (var, op, Some(value), true)
        }
        [var, op, value] => (var, op, Some(value), false),
        [var, value] => (var, value, None, false),
        _ => return err(at, "invalid expression: expected [var, op, value]"),
    };
    let Some(var) = var.as_str().filter(|v| !v.is_empty()) else {
        return err(at, "invalid expression: the variable name must be a string");
    };
    let (op_name, value) = match value {
        Some(value) => match op.as_str() {
            Some(op) => (op.to_ascii_lowercase(), value),
            None => return err(at, "invalid expression: the operator must be a string"),
        },
        // `[var, value]` means `==`.
        None => ("==".to_owned(), op),
    };
    let op = match op_name.as_str() {
        "==" => Op::Eq(operand(value, at)?),
        "~=" => Op::Ne(operand(value, at)?),
        ">" | ">=" | "<" | "<=" => {
            let n = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => lua_tonumber(s.as_bytes()),
                _ => None,
            };
            let Some(n) = n else {
                return err(at, format!("`{op_name}` needs a number"));
            };
            match op_name.as_str() {
                ">" => Op::Gt(n),
                ">=" => Op::Ge(n),
                "<" => Op::Lt(n),
                _ => Op::Le(n),
            }
        }
        "~~" | "~*" => {
            let Some(pattern) = value.as_str() else {
                return err(at, format!("`{op_name}` needs a regular expression string"));
            };
            match RegexBuilder::new(pattern)
                .case_insensitive(op_name == "~*")
                .build()
            {
                Ok(re) => Op::Regex(re),
                Err(e) => return err(at, format!("invalid regular expression: {e}")),
            }
        }
        "in" => {
            let Value::Array(list) = value else {
                return err(at, "`in` needs an array of values");
            };
            let mut out = Vec::with_capacity(list.len());
            for v in list {
                out.push(match v {
                    Value::String(s) => Some(s.as_bytes().into()),
                    Value::Number(_) | Value::Bool(_) | Value::Null => None,
                    _ => return err(at, "`in` needs an array of strings or numbers"),
                });
            }
            Op::In(out.into())
        }
        "has" => match value {
            Value::String(s) => Op::Has(s.as_bytes().into()),
            _ => return err(at, "`has` needs a string"),
        },
        "ipmatch" => {
            let list: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if list.is_empty() {
                return err(
                    at,
                    "invalid ip address: `ipmatch` needs an address, a CIDR or a list of them",
                );
            }
            match IpSet::parse(list.iter().copied()) {
                Ok(set) => Op::IpMatch(set),
                Err(bad) => return err(at, format!("invalid ip address `{bad}`")),
            }
        }
        other => return err(at, format!("invalid operator '{other}'")),
    };
    Ok(Node::Cond {
        var: var.into(),
        op,
        negate,
    })
}

fn operand(value: &Value, at: &str) -> Result<Operand, ExprError> {
    match value {
        Value::String(s) => Ok(Operand::Text(s.as_bytes().into())),
        Value::Number(n) => match n.as_f64() {
            Some(n) => Ok(Operand::Number(n)),
            None => err(at, "number out of range"),
        },
        Value::Null => Ok(Operand::Null),
        _ => err(at, "the value must be a string, a number or null"),
    }
}

impl Node {
    fn eval<V: VarSource + ?Sized>(&self, vars: &V) -> bool {
        match self {
            Node::Logic { or, negate, items } => {
                let result = if *or {
                    items.iter().any(|n| n.eval(vars))
                } else {
                    items.iter().all(|n| n.eval(vars))
                };
                result != *negate
            }
            Node::Cond { var, op, negate } => op.test(vars.var(var)) != *negate,
        }
    }
}

impl Op {
    fn test(&self, value: Option<&[u8]>) -> bool {
        match self {
            Op::Eq(Operand::Null) => value.is_none(),
            Op::Ne(Operand::Null) => value.is_some(),
            Op::Eq(Operand::Text(t)) => value == Some(&**t),
            Op::Ne(Operand::Text(t)) => value != Some(&**t),
            Op::Eq(Operand::Number(n)) => value.and_then(lua_tonumber) == Some(*n),
            Op::Ne(Operand::Number(n)) => value.and_then(lua_tonumber) != Some(*n),
            Op::Gt(n) => value.and_then(lua_tonumber).is_some_and(|v| v > *n),
            Op::Ge(n) => value.and_then(lua_tonumber).is_some_and(|v| v >= *n),
            Op::Lt(n) => value.and_then(lua_tonumber).is_some_and(|v| v < *n),
            Op::Le(n) => value.and_then(lua_tonumber).is_some_and(|v| v <= *n),
            Op::Regex(re) => value.is_some_and(|v| re.is_match(v)),
            Op::In(list) => value.is_some_and(|v| list.iter().flatten().any(|t| **t == *v)),
            Op::Has(t) => {
                value.is_some_and(|v| v.split(|&b| b == b',').any(|e| e.trim_ascii() == &**t))
            }
            Op::IpMatch(set) => value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .is_some_and(|ip| set.contains(ip)),
        }
    }
}

/// Lua's `tonumber` on a string: surrounding whitespace allowed, decimal (with exponent) or
/// `0x` hexadecimal; no `inf`/`nan` words.
pub(crate) fn lua_tonumber(s: &[u8]) -> Option<f64> {
    let s = s.trim_ascii();
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if let Some(hex) = digits
        .strip_prefix(b"0x")
        .or_else(|| digits.strip_prefix(b"0X"))
    {
        if hex.is_empty() || hex.len() > 16 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let text = std::str::from_utf8(hex).ok()?;
        let v = u64::from_str_radix(text, 16).ok()? as f64;
        return Some(if neg { -v } else { v });
    }
    if s.is_empty()
        || !s
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}
