//! APISIX's `limit-req` (priority 1001, `access` phase) with the `local` policy: the leaky bucket
//! of lua-resty-limit-traffic's `resty.limit.req`. Each key has an `excess` (requests beyond the
//! rate, in thousandths) that drains at `rate` per second; a request adds one; when the excess
//! would pass `burst` the request is rejected with `rejected_code` (503). A request that passes with
//! an excess waits `excess / rate` seconds before it is proxied, unless `nodelay`. One bucket per
//! key for the whole process (see `limit/mod.rs`), so shards never each grant the rate.
//!
//! Not supported (refused by name): `policy: redis | redis-cluster`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Key, Params, ShardTable, Table, Tables, ms_since, now_ms};
use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem, Step};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    rate: f64,
    burst: f64,
    key: String,
    #[serde(default = "var")]
    key_type: String,
    #[serde(default = "local")]
    policy: String,
    #[serde(default = "c503")]
    rejected_code: i64,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: bool,
    #[serde(default)]
    allow_degradation: bool,
}

fn var() -> String {
    "var".into()
}
fn local() -> String {
    "local".into()
}
fn c503() -> i64 {
    503
}

/// Thousandths are 31 bits in a cell: `burst` up to this many requests.
const MAX_BURST: f64 = 2_000_000.0;

/// The validated attributes.
#[derive(Debug, Clone)]
pub struct LimitReqConf {
    /// Requests per second, in thousandths.
    pub rate_milli: u64,
    /// Requests beyond the rate allowed to queue, in thousandths.
    pub burst_milli: u64,
    pub key: Key,
    pub rejected_code: u16,
    pub rejected_msg: Option<String>,
    pub nodelay: bool,
    /// Accepted for compatibility: the `local` policy cannot fail, so it never applies.
    pub allow_degradation: bool,
}

pub fn parse_conf(
    value: serde_json::Value,
    path: &str,
    warnings: &mut Vec<Problem>,
) -> Result<LimitReqConf, Vec<Problem>> {
    let mut problems = Vec::new();
    if let Some(policy) = value.get("policy").and_then(|p| p.as_str()) {
        super::check_policy(policy, path, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    for name in ["rate", "burst", "key"] {
        if value.get(name).is_none() && value.is_object() {
            problems.push(Problem::new(
                path,
                format!("`rate`, `burst` and `key` are required (missing `{name}`)"),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let raw: Raw = crate::pipeline::registry::deserialize(value, path)?;
    if raw.rate.is_nan() || raw.rate <= 0.0 || raw.rate.is_infinite() {
        problems.push(Problem::new(
            format!("{path}.rate"),
            format!("must be a number > 0 (got {})", raw.rate),
        ));
    } else if raw.rate < 0.001 {
        problems.push(Problem::new(
            format!("{path}.rate"),
            "must be at least 0.001 in shardgate (the bucket counts thousandths)",
        ));
    }
    if raw.burst.is_nan() || raw.burst < 0.0 || raw.burst.is_infinite() {
        problems.push(Problem::new(
            format!("{path}.burst"),
            format!("must be a number >= 0 (got {})", raw.burst),
        ));
    } else if raw.burst > MAX_BURST {
        problems.push(Problem::new(
            format!("{path}.burst"),
            format!("must be at most {MAX_BURST} in shardgate"),
        ));
    }
    if !matches!(raw.key_type.as_str(), "var" | "var_combination") {
        problems.push(Problem::new(
            format!("{path}.key_type"),
            format!(
                "must be one of var, var_combination (got `{}`)",
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
    super::check_policy(&raw.policy, path, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(LimitReqConf {
        rate_milli: (raw.rate * 1000.0).round() as u64,
        burst_milli: (raw.burst * 1000.0).round() as u64,
        key: Key::parse(&raw.key, &raw.key_type, path, warnings),
        rejected_code,
        rejected_msg: raw.rejected_msg,
        nodelay: raw.nodelay,
        allow_degradation: raw.allow_degradation,
    })
}

/// Set in a cell's low half once the key has a record (`resty.limit.req`'s "no record yet").
const PRESENT: u32 = 1 << 31;

/// State: last request time (ms, wrapping) high, `PRESENT | excess` (thousandths) low.
fn pack(last: u32, excess: u64) -> u64 {
    (u64::from(last) << 32) | u64::from(PRESENT) | excess
}

/// `Params.a` is the rate in thousandths per second.
fn expired(s: u64, now: u32, p: &Params) -> bool {
    let (last, low) = ((s >> 32) as u32, s as u32);
    if low & PRESENT == 0 {
        return true;
    }
    let excess = u64::from(low & !PRESENT);
    let drained = p.a.saturating_mul(ms_since(last, now).unsigned_abs()) / 1000;
    drained >= excess + 1000
}

/// One request at `now` against a bucket: the new state and, when it passes, the delay in ms.
pub fn decide(
    state: u64,
    now: u32,
    rate_milli: u64,
    burst_milli: u64,
) -> (Option<u64>, Option<u64>) {
    let (last, low) = ((state >> 32) as u32, state as u32);
    let excess = if low & PRESENT == 0 {
        0
    } else {
        let prev = u64::from(low & !PRESENT);
        // resty.limit.req: excess - rate * |elapsed| / 1000 + 1000, floored at 0.
        let drained = rate_milli.saturating_mul(ms_since(last, now).unsigned_abs()) / 1000;
        (prev + 1000).saturating_sub(drained)
    };
    if excess > burst_milli {
        return (None, None);
    }
    (Some(pack(now, excess)), Some(excess * 1000 / rate_milli))
}

pub struct LimitReqInstance {
    conf: Arc<LimitReqConf>,
    table: Arc<Table>,
    fingerprint: u64,
}

#[derive(Default)]
pub struct LimitReqGlobal {
    tables: Tables,
}

pub struct LimitReq {
    conf: Arc<LimitReqConf>,
    table: ShardTable,
}

impl Plugin for LimitReq {
    const NAME: &'static str = "limit-req";
    const PRIORITY: i32 = 1001;
    const PHASES: Phases = Phases::ACCESS;
    type Conf = LimitReqConf;
    type Instance = LimitReqInstance;
    type Global = LimitReqGlobal;
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        warnings: &mut Vec<Problem>,
    ) -> Result<LimitReqConf, Vec<Problem>> {
        parse_conf(value, path, warnings)
    }

    fn global() -> Arc<LimitReqGlobal> {
        Arc::new(LimitReqGlobal::default())
    }

    fn shard_global(_shard: usize, _global: &Arc<LimitReqGlobal>) {}

    fn build(
        conf: Arc<LimitReqConf>,
        global: &LimitReqGlobal,
        path: &str,
    ) -> Result<LimitReqInstance, String> {
        let fingerprint = super::conf_hash(&*conf);
        let table = global
            .tables
            .get_or_make(format!("{path}:{fingerprint}"), || {
                Table::new(
                    0,
                    expired,
                    Params {
                        a: conf.rate_milli,
                        b: conf.burst_milli,
                    },
                )
            });
        Ok(LimitReqInstance {
            conf,
            table,
            fingerprint,
        })
    }

    fn fingerprint(instance: &LimitReqInstance) -> u64 {
        instance.fingerprint
    }

    fn attach(instance: Arc<LimitReqInstance>, _shard: &()) -> LimitReq {
        LimitReq {
            conf: instance.conf.clone(),
            table: ShardTable::new(instance.table.clone()),
        }
    }

    fn retain_used(global: &Arc<LimitReqGlobal>, _used: &[(&str, &LimitReqInstance)]) {
        global.tables.prune();
    }

    async fn access(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let conf = &*self.conf;
        let now = now_ms();
        let delay = conf.key.with(ctx, &self.table, |key| {
            self.table
                .update(key, |s| decide(s, now, conf.rate_milli, conf.burst_milli))
        });
        let Some(delay_ms) = delay else {
            return Err(super::rejected(
                conf.rejected_code,
                conf.rejected_msg.as_deref(),
                Vec::new(),
                "limit_req_rejected",
            ));
        };
        // APISIX sleeps for delays of 1 ms and more unless `nodelay`.
        if delay_ms >= 1 && !conf.nodelay {
            monoio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<LimitReqConf, Vec<Problem>> {
        parse_conf(v, "routes[0].plugins.limit-req", &mut Vec::new())
    }

    #[test]
    fn schema_table() {
        for v in [
            json!({"rate": 1, "burst": 0, "key": "remote_addr"}),
            json!({"rate": 0.5, "burst": 2.5, "key": "http_x_user", "rejected_code": 429,
                   "nodelay": true, "rejected_msg": "slow", "policy": "local",
                   "allow_degradation": true}),
            json!({"rate": 4, "burst": 2, "key": "$remote_addr $arg_id", "key_type": "var_combination"}),
        ] {
            assert!(
                parse(v.clone()).is_ok(),
                "{v}: {:?}",
                parse(v.clone()).err()
            );
        }
        let c = parse(json!({"rate": 1, "burst": 0, "key": "remote_addr"})).unwrap();
        assert_eq!(
            (c.rejected_code, c.nodelay, c.rate_milli),
            (503, false, 1000)
        );
        for (v, path, msg) in [
            (
                json!({"rate": 0, "burst": 0, "key": "remote_addr"}),
                "limit-req.rate",
                "> 0",
            ),
            (
                json!({"rate": -1, "burst": 0, "key": "remote_addr"}),
                "limit-req.rate",
                "> 0",
            ),
            (
                json!({"rate": 1, "burst": -1, "key": "remote_addr"}),
                "limit-req.burst",
                ">= 0",
            ),
            (
                json!({"rate": 1, "key": "remote_addr"}),
                "limit-req",
                "missing `burst`",
            ),
            (json!({"rate": 1, "burst": 1}), "limit-req", "missing `key`"),
            (
                json!({"rate": "1", "burst": 1, "key": "remote_addr"}),
                "limit-req.rate",
                "invalid type",
            ),
            (
                json!({"rate": 1, "burst": 1, "key": "remote_addr", "key_type": "constant"}),
                "limit-req.key_type",
                "var, var_combination",
            ),
            (
                json!({"rate": 1, "burst": 1, "key": "remote_addr", "rejected_code": 100}),
                "limit-req.rejected_code",
                "200 to 599",
            ),
            (
                json!({"rate": 1, "burst": 1, "key": "remote_addr", "policy": "redis"}),
                "limit-req.policy",
                "`redis` is not supported",
            ),
            (
                json!({"rate": 1, "burst": 1, "key": "remote_addr", "rejected_msg": ""}),
                "limit-req.rejected_msg",
                "empty",
            ),
            (
                json!({"rate": 1, "burst": 1, "key": "remote_addr", "delay": 1}),
                "limit-req.delay",
                "unknown field",
            ),
        ] {
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
    fn the_bucket_leaks_at_rate_and_holds_burst() {
        // rate 2/s, burst 1: at t=0 the first passes at once, the second waits 500 ms, the
        // third is rejected; 500 ms later one request drained.
        let (rate, burst) = (2000, 1000);
        let (s1, d1) = decide(0, 0, rate, burst);
        assert_eq!(d1, Some(0));
        let (s2, d2) = decide(s1.unwrap(), 0, rate, burst);
        assert_eq!(d2, Some(500));
        let s2 = s2.unwrap();
        assert_eq!(decide(s2, 0, rate, burst), (None, None));
        assert_eq!(decide(s2, 500, rate, burst).1, Some(500));
        assert_eq!(decide(s2, 1000, rate, burst).1, Some(0));
        assert!(!expired(s2, 400, &Params { a: rate, b: burst }));
        assert!(expired(s2, 1000, &Params { a: rate, b: burst }));
        // burst 0: a second request in the same instant is rejected.
        let s = decide(0, 7, 1000, 0).0.unwrap();
        assert_eq!(decide(s, 7, 1000, 0), (None, None));
        assert_eq!(decide(s, 1007, 1000, 0).1, Some(0));
    }
}
