//! APISIX's `limit-count` (priority 1002, `access` phase) with the `local` policy: a fixed window
//! per key that starts with the key's first request and lasts `time_window` seconds; at most
//! `count` requests pass in it, exactly, across every shard (see `limit/mod.rs` for how).
//!
//! A passing request gets `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//! (seconds until the window ends, rounded up) on its response when `show_limit_quota_header`; a
//! rejected one gets `rejected_code` (503) with the same headers (remaining 0), and
//! `{"error_msg": rejected_msg}` when a message is configured.
//!
//! Not supported (refused by name): `policy: redis | redis-cluster | redis-sentinel`, `rules`,
//! `window_type: sliding`, a `count` or `time_window` given as a variable string.

use std::sync::Arc;

use serde::Deserialize;

use super::{Key, Params, ShardTable, Table, Tables, ms_since, now_ms};
use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem, Step};

/// Beyond this a window would outlast the wrapping millisecond clock (`limit/mod.rs`).
const MAX_WINDOW_SECS: u64 = 2_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    count: Option<serde_json::Value>,
    #[serde(default)]
    time_window: Option<serde_json::Value>,
    #[serde(default = "fixed")]
    window_type: String,
    #[serde(default)]
    rules: Option<serde_json::Value>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default = "remote_addr")]
    key: String,
    #[serde(default = "var")]
    key_type: String,
    #[serde(default = "c503")]
    rejected_code: i64,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default = "local")]
    policy: String,
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    #[serde(default = "no_sync")]
    sync_interval: f64,
}

fn fixed() -> String {
    "fixed".into()
}
fn remote_addr() -> String {
    "remote_addr".into()
}
fn var() -> String {
    "var".into()
}
fn c503() -> i64 {
    503
}
fn local() -> String {
    "local".into()
}
fn yes() -> bool {
    true
}
fn no_sync() -> f64 {
    -1.0
}

/// The validated attributes.
#[derive(Debug, Clone)]
pub struct LimitCountConf {
    pub count: u64,
    pub time_window: u64,
    pub key: Key,
    pub group: Option<String>,
    pub rejected_code: u16,
    pub rejected_msg: Option<String>,
    pub show_limit_quota_header: bool,
    /// Accepted for compatibility: the `local` policy cannot fail, so it never applies.
    pub allow_degradation: bool,
}

/// A positive integer attribute (`count`, `time_window`).
fn positive(v: Option<serde_json::Value>, name: &str, path: &str, p: &mut Vec<Problem>) -> u64 {
    let at = format!("{path}.{name}");
    match v {
        None => {
            p.push(Problem::new(
                path,
                format!("`count` and `time_window` are required (missing `{name}`)"),
            ));
            0
        }
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(n) if n > 0 => n,
            _ => {
                p.push(Problem::new(
                    at,
                    format!("must be an integer > 0 (got {n})"),
                ));
                0
            }
        },
        Some(serde_json::Value::String(s)) => {
            p.push(Problem::new(
                at,
                format!(
                    "a variable `{name}` (`{s}`) is not supported by shardgate: give an integer"
                ),
            ));
            0
        }
        Some(other) => {
            p.push(Problem::new(
                at,
                format!("must be an integer > 0 (got {other})"),
            ));
            0
        }
    }
}

pub fn parse_conf(
    value: serde_json::Value,
    path: &str,
    warnings: &mut Vec<Problem>,
) -> Result<LimitCountConf, Vec<Problem>> {
    // A Redis policy brings attributes (`redis_host`, ...) the local schema does not know: name
    // the policy, not the first unknown attribute.
    let mut problems = Vec::new();
    if let Some(policy) = value.get("policy").and_then(|p| p.as_str()) {
        super::check_policy(policy, path, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    let raw: Raw = crate::pipeline::registry::deserialize(value, path)?;
    if raw.rules.is_some() {
        problems.push(Problem::new(
            format!("{path}.rules"),
            "APISIX attribute `rules` is not supported by shardgate (give `count` and `time_window`)",
        ));
        return Err(problems);
    }
    let count = positive(raw.count, "count", path, &mut problems);
    let time_window = positive(raw.time_window, "time_window", path, &mut problems);
    if count > u64::from(u32::MAX) - 1 {
        problems.push(Problem::new(
            format!("{path}.count"),
            format!("must be at most {} in shardgate", u32::MAX - 1),
        ));
    }
    if time_window > MAX_WINDOW_SECS {
        problems.push(Problem::new(
            format!("{path}.time_window"),
            format!("must be at most {MAX_WINDOW_SECS} seconds in shardgate (about 23 days)"),
        ));
    }
    match raw.window_type.as_str() {
        "fixed" => {}
        "sliding" => problems.push(Problem::new(
            format!("{path}.window_type"),
            "window_type `sliding` is not supported by shardgate (only `fixed`)",
        )),
        other => problems.push(Problem::new(
            format!("{path}.window_type"),
            format!("must be one of fixed, sliding (got `{other}`)"),
        )),
    }
    if !matches!(
        raw.key_type.as_str(),
        "var" | "var_combination" | "constant"
    ) {
        problems.push(Problem::new(
            format!("{path}.key_type"),
            format!(
                "must be one of var, var_combination, constant (got `{}`)",
                raw.key_type
            ),
        ));
    }
    let rejected_code = super::check_code(raw.rejected_code, path, &mut problems);
    if raw.rejected_msg.as_deref() == Some("") {
        problems.push(Problem::new(
            format!("{path}.rejected_msg"),
            "must not be empty",
        ));
    }
    if raw.policy != "local" {
        super::check_policy(&raw.policy, path, &mut problems);
    }
    if raw.sync_interval != -1.0 {
        warnings.push(Problem::new(
            format!("{path}.sync_interval"),
            "only used by the Redis policies; ignored with `local`",
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let key = Key::parse(&raw.key, &raw.key_type, path, warnings);
    Ok(LimitCountConf {
        count,
        time_window,
        key,
        group: raw.group,
        rejected_code,
        rejected_msg: raw.rejected_msg,
        show_limit_quota_header: raw.show_limit_quota_header,
        allow_degradation: raw.allow_degradation,
    })
}

/// State: the window's start (ms, wrapping) in the high half, requests counted in the low half.
fn pack(start: u32, used: u32) -> u64 {
    (u64::from(start) << 32) | u64::from(used)
}

fn unpack(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

/// `Params.a` is the window in ms.
fn expired(s: u64, now: u32, p: &Params) -> bool {
    let (start, used) = unpack(s);
    used == 0 || ms_since(start, now) >= p.a as i64
}

/// What one request got: passed or not, the remaining quota, ms until the window ends.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub passed: bool,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// One request against a cell's state at `now`: the new state and the decision.
pub fn decide(state: u64, now: u32, count: u64, window_ms: u64) -> (Option<u64>, Decision) {
    let (start, used) = unpack(state);
    let elapsed = ms_since(start, now);
    if used == 0 || elapsed >= window_ms as i64 {
        return (
            Some(pack(now, 1)),
            Decision {
                passed: true,
                remaining: count - 1,
                reset_ms: window_ms,
            },
        );
    }
    let reset_ms = (window_ms as i64 - elapsed.max(0)) as u64;
    if u64::from(used) < count {
        (
            Some(pack(start, used + 1)),
            Decision {
                passed: true,
                remaining: count - u64::from(used) - 1,
                reset_ms,
            },
        )
    } else {
        (
            None,
            Decision {
                passed: false,
                remaining: 0,
                reset_ms,
            },
        )
    }
}

/// Built once per config version.
pub struct LimitCountInstance {
    conf: Arc<LimitCountConf>,
    table: Arc<Table>,
    fingerprint: u64,
}

/// Process-wide: the tables, by route place and attributes or by group.
#[derive(Default)]
pub struct LimitCountGlobal {
    tables: Tables,
}

/// The shard-local part: the shard's key cache over the instance's table.
pub struct LimitCount {
    conf: Arc<LimitCountConf>,
    table: ShardTable,
    /// `X-RateLimit-Limit: <count>\r\nX-RateLimit-Remaining: `, rendered once: a passing request
    /// writes two numbers between constant text.
    quota_head: Vec<u8>,
}

pub const LIMIT_HEADER: &str = "X-RateLimit-Limit";
pub const REMAINING_HEADER: &str = "X-RateLimit-Remaining";
pub const RESET_HEADER: &str = "X-RateLimit-Reset";

impl Plugin for LimitCount {
    const NAME: &'static str = "limit-count";
    const PRIORITY: i32 = 1002;
    const PHASES: Phases = Phases::ACCESS;
    type Conf = LimitCountConf;
    type Instance = LimitCountInstance;
    type Global = LimitCountGlobal;
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<LimitCountConf, Vec<Problem>> {
        parse_conf(value, path, warnings)
    }

    fn warnings(routes: &[(usize, crate::config::RouteConf)]) -> Vec<Problem> {
        // APISIX refuses a group whose routes disagree ("group conf mismatched"); shardgate's
        // loader checks plugins one at a time, so it warns, and each distinct set of attributes
        // counts on its own.
        let mut seen: std::collections::HashMap<&str, (usize, u64)> = Default::default();
        let mut out = Vec::new();
        for (i, r) in routes {
            let Some(c) = r.plugins.conf::<LimitCount>() else {
                continue;
            };
            let Some(g) = c.group.as_deref() else {
                continue;
            };
            let h = super::conf_hash(c);
            match seen.get(g) {
                Some((first, h0)) if *h0 != h => out.push(Problem::new(
                    format!("routes[{i}].plugins.limit-count.group"),
                    format!(
                        "group `{g}` has other attributes on routes[{first}]: APISIX refuses \
                         this (group conf mismatched); shardgate counts them separately"
                    ),
                )),
                Some(_) => {}
                None => {
                    seen.insert(g, (*i, h));
                }
            }
        }
        out
    }

    fn global() -> Arc<LimitCountGlobal> {
        Arc::new(LimitCountGlobal::default())
    }

    fn shard_global(_shard: usize, _global: &Arc<LimitCountGlobal>) {}

    fn build(
        conf: Arc<LimitCountConf>,
        global: &LimitCountGlobal,
        path: &str,
    ) -> Result<LimitCountInstance, String> {
        let fingerprint = super::conf_hash(&*conf);
        let id = match &conf.group {
            Some(g) => format!("group:{g}:{fingerprint}"),
            None => format!("{path}:{fingerprint}"),
        };
        let window_ms = conf.time_window * 1000;
        let table = global.tables.get_or_make(id, || {
            Table::new(
                0,
                expired,
                Params {
                    a: window_ms,
                    b: conf.count,
                },
            )
        });
        Ok(LimitCountInstance {
            conf,
            table,
            fingerprint,
        })
    }

    fn fingerprint(instance: &LimitCountInstance) -> u64 {
        instance.fingerprint
    }

    fn attach(instance: Arc<LimitCountInstance>, _shard: &()) -> LimitCount {
        let quota_head = format!(
            "{LIMIT_HEADER}: {}\r\n{REMAINING_HEADER}: ",
            instance.conf.count
        )
        .into_bytes();
        LimitCount {
            conf: instance.conf.clone(),
            table: ShardTable::new(instance.table.clone()),
            quota_head,
        }
    }

    fn retain_used(global: &Arc<LimitCountGlobal>, _used: &[(&str, &LimitCountInstance)]) {
        global.tables.prune();
    }

    async fn access(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let conf = &*self.conf;
        let window_ms = conf.time_window * 1000;
        let now = now_ms();
        let d = conf.key.with(ctx, &self.table, |key| {
            self.table
                .update(key, |s| decide(s, now, conf.count, window_ms))
        });
        let reset = d.reset_ms.div_ceil(1000);
        if !d.passed {
            let headers = if conf.show_limit_quota_header {
                vec![
                    (LIMIT_HEADER.to_owned(), conf.count.to_string()),
                    (REMAINING_HEADER.to_owned(), "0".to_owned()),
                    (RESET_HEADER.to_owned(), reset.to_string()),
                ]
            } else {
                Vec::new()
            };
            return Err(super::rejected(
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                headers,
                "limit_count_rejected",
            ));
        }
        if conf.show_limit_quota_header {
            let out = ctx.outcome().response_added.raw();
            out.extend_from_slice(&self.quota_head);
            out.extend_from_slice(itoa::Buffer::new().format(d.remaining).as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(RESET_HEADER.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<LimitCountConf, Vec<Problem>> {
        parse_conf(v, "routes[0].plugins.limit-count", &mut Vec::new())
    }

    #[test]
    fn schema_table() {
        use serde_json::json;
        let ok = [
            json!({"count": 2, "time_window": 60}),
            json!({"count": 2, "time_window": 60, "rejected_code": 429, "key": "http_x_user"}),
            json!({"count": 1, "time_window": 1, "key_type": "var_combination",
                   "key": "$remote_addr $http_x_user", "rejected_msg": "slow down"}),
            json!({"count": 5, "time_window": 10, "key_type": "constant", "key": "all",
                   "group": "g1", "show_limit_quota_header": false, "policy": "local",
                   "allow_degradation": true}),
        ];
        for v in ok {
            assert!(
                parse(v.clone()).is_ok(),
                "{v}: {:?}",
                parse(v.clone()).err()
            );
        }
        let c = parse(json!({"count": 2, "time_window": 60})).unwrap();
        assert_eq!(c.rejected_code, 503);
        assert!(c.show_limit_quota_header);
        assert_eq!(c.key, Key::Var(Some(crate::pipeline::Var::RemoteAddr)));
        let bad = [
            (
                json!({"count": 0, "time_window": 60}),
                "limit-count.count",
                "integer > 0",
            ),
            (
                json!({"count": -1, "time_window": 60}),
                "limit-count.count",
                "integer > 0",
            ),
            (
                json!({"count": 1.5, "time_window": 60}),
                "limit-count.count",
                "integer > 0",
            ),
            (json!({"count": 2}), "limit-count", "time_window"),
            (
                json!({"count": 2, "time_window": "$arg_w"}),
                "limit-count.time_window",
                "variable",
            ),
            (
                json!({"count": 2, "time_window": 60, "rejected_code": 600}),
                "limit-count.rejected_code",
                "200 to 599",
            ),
            (
                json!({"count": 2, "time_window": 60, "rejected_code": 199}),
                "limit-count.rejected_code",
                "200 to 599",
            ),
            (
                json!({"count": 2, "time_window": 60, "rejected_msg": ""}),
                "limit-count.rejected_msg",
                "empty",
            ),
            (
                json!({"count": 2, "time_window": 60, "key_type": "header"}),
                "limit-count.key_type",
                "var, var_combination, constant",
            ),
            (
                json!({"count": 2, "time_window": 60, "policy": "redis", "redis_host": "127.0.0.1"}),
                "limit-count.policy",
                "`redis` is not supported",
            ),
            (
                json!({"count": 2, "time_window": 60, "policy": "redis-cluster"}),
                "limit-count.policy",
                "`redis-cluster` is not supported",
            ),
            (
                json!({"count": 2, "time_window": 60, "policy": "memcached"}),
                "limit-count.policy",
                "must be one of",
            ),
            (
                json!({"count": 2, "time_window": 60, "window_type": "sliding"}),
                "limit-count.window_type",
                "sliding",
            ),
            (
                json!({"rules": [{"count": 1, "time_window": 1, "key": "$remote_addr"}]}),
                "limit-count.rules",
                "not supported",
            ),
            (
                json!({"count": 2, "time_window": 60, "colour": "red"}),
                "limit-count.colour",
                "unknown field",
            ),
            (
                json!({"count": 2, "time_window": 60, "show_limit_quota_header": "yes"}),
                "limit-count.show_limit_quota_header",
                "boolean",
            ),
            (
                json!({"count": 2, "time_window": 3_000_000}),
                "limit-count.time_window",
                "at most",
            ),
        ];
        for (v, path, msg) in bad {
            let errs = parse(v.clone()).expect_err(&v.to_string());
            assert!(
                errs.iter()
                    .any(|e| e.path == format!("routes[0].plugins.{path}")
                        && e.message.contains(msg)),
                "{v}: {errs:?}"
            );
        }
    }

    #[test]
    fn unknown_key_variables_warn_and_fall_back() {
        let mut w = Vec::new();
        let c = parse_conf(
            serde_json::json!({"count": 1, "time_window": 1, "key": "consumer_name"}),
            "p",
            &mut w,
        )
        .unwrap();
        assert_eq!(c.key, Key::Var(None));
        assert!(
            w[0].path == "p.key" && w[0].message.contains("remote_addr"),
            "{w:?}"
        );
    }

    #[test]
    fn a_fixed_window_counts_then_rejects_then_restarts() {
        let (count, win) = (3, 1000);
        let mut s = 0;
        let mut got = Vec::new();
        for now in [5u32, 100, 200, 300, 999] {
            let (next, d) = decide(s, now, count, win);
            if let Some(n) = next {
                s = n;
            }
            got.push((d.passed, d.remaining, d.reset_ms));
        }
        assert_eq!(
            got,
            [
                (true, 2, 1000),
                (true, 1, 905),
                (true, 0, 805),
                (false, 0, 705),
                (false, 0, 6)
            ]
        );
        // The window started at 5 ends at 1005.
        let (next, d) = decide(s, 1005, count, win);
        assert!(d.passed && d.remaining == 2 && next.is_some());
        // Wrapping clock: a window started just before the wrap still counts after it.
        let s = pack(u32::MAX - 10, 3);
        assert!(!decide(s, 20, count, win).1.passed);
        // A shard whose coarse clock is a tick behind the window's start is inside it.
        let s = pack(500, 3);
        assert_eq!(decide(s, 495, count, win).1.reset_ms, 1000);
    }
}
