//! `ip-restriction`: APISIX's allow/deny list on the client address (priority 3000, `access`).
//!
//! The address is `remote_addr` as the request context has it, so a `real-ip` that ran before
//! (priority 23000, `rewrite`) decides which client is checked. A refusal is an error response
//! (`{"message": ...}` with `response_code`), counted and logged as a rejection.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::Error;
use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem, Response, Step};
use crate::route::IpSet;

fn default_message() -> String {
    "Your IP address is not allowed".into()
}

fn default_code() -> u16 {
    403
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConf {
    #[serde(default = "default_message")]
    pub message: String,
    #[serde(default = "default_code")]
    pub response_code: u16,
    #[serde(default)]
    pub whitelist: Option<Vec<String>>,
    #[serde(default)]
    pub blacklist: Option<Vec<String>>,
}

/// The parsed list and the prepared refusal.
#[derive(Debug)]
pub struct IpRestriction {
    set: IpSet,
    /// True for `whitelist`: refuse what is not in the set.
    allow_list: bool,
    status: u16,
    /// `{"message": ...}`, encoded once.
    body: Vec<u8>,
}

fn ip_list(list: &[String], at: &str, problems: &mut Vec<Problem>) -> Option<IpSet> {
    if list.is_empty() {
        problems.push(Problem::new(at, "must have at least one address"));
        return None;
    }
    match IpSet::parse(list.iter().map(String::as_str)) {
        Ok(set) => Some(set),
        Err(bad) => {
            let i = list.iter().position(|e| e == bad).unwrap_or(0);
            problems.push(Problem::new(
                format!("{at}[{i}]"),
                format!("invalid ip address: `{bad}` is not an IPv4/IPv6 address or CIDR"),
            ));
            None
        }
    }
}

impl IpRestriction {
    /// APISIX's schema and `check_schema`, each problem at its path.
    pub fn from_conf(conf: &IpRestrictionConf, path: &str) -> Result<IpRestriction, Vec<Problem>> {
        let mut problems = Vec::new();
        if conf.message.is_empty() || conf.message.chars().count() > 1024 {
            problems.push(Problem::new(
                format!("{path}.message"),
                "must be 1 to 1024 characters",
            ));
        }
        if !(403..=404).contains(&conf.response_code) {
            problems.push(Problem::new(
                format!("{path}.response_code"),
                format!("expected {} to be 403 or 404", conf.response_code),
            ));
        }
        let list = match (&conf.whitelist, &conf.blacklist) {
            (Some(w), None) => {
                ip_list(w, &format!("{path}.whitelist"), &mut problems).map(|s| (s, true))
            }
            (None, Some(b)) => {
                ip_list(b, &format!("{path}.blacklist"), &mut problems).map(|s| (s, false))
            }
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    path,
                    "set `whitelist` or `blacklist`, not both",
                ));
                None
            }
            (None, None) => {
                problems.push(Problem::new(path, "`whitelist` or `blacklist` is required"));
                None
            }
        };
        match list {
            Some((set, allow_list)) if problems.is_empty() => Ok(IpRestriction {
                set,
                allow_list,
                status: conf.response_code,
                body: serde_json::json!({ "message": conf.message })
                    .to_string()
                    .into_bytes(),
            }),
            _ => Err(problems),
        }
    }

    /// Whether a client at `ip` is refused.
    pub fn refuses(&self, ip: IpAddr) -> bool {
        self.set.contains(ip) != self.allow_list
    }
}

pub struct IpRestrictionPlugin(Arc<IpRestriction>);

impl Plugin for IpRestrictionPlugin {
    const NAME: &'static str = "ip-restriction";
    const PRIORITY: i32 = 3000;
    const PHASES: Phases = Phases::ACCESS;
    type Conf = IpRestrictionConf;
    type Instance = IpRestriction;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<IpRestrictionConf, Vec<Problem>> {
        let conf: IpRestrictionConf = crate::pipeline::registry::deserialize(value, path)?;
        IpRestriction::from_conf(&conf, path)?;
        Ok(conf)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(
        conf: Arc<IpRestrictionConf>,
        _global: &(),
        path: &str,
    ) -> Result<IpRestriction, String> {
        IpRestriction::from_conf(&conf, path).map_err(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
    fn fingerprint(_instance: &IpRestriction) -> u64 {
        0
    }
    fn attach(instance: Arc<IpRestriction>, _shard: &()) -> Self {
        IpRestrictionPlugin(instance)
    }

    async fn access(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let ip = ctx.remote_ip();
        if !self.0.refuses(ip) {
            return Ok(Step::Continue);
        }
        Err(Error::Plugin(Response {
            status: self.0.status,
            headers: Vec::new(),
            content_type: "application/json",
            body: self.0.body.clone(),
            code: "ip_restricted",
            reason: format!("client address {ip} is not allowed"),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<IpRestriction, Vec<String>> {
        let mut w = Vec::new();
        let path = "routes[0].plugins.ip-restriction";
        IpRestrictionPlugin::parse(json, path, &mut w)
            .and_then(|c| IpRestriction::from_conf(&c, path))
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn schema_cases_from_apisix() {
        for ok in [
            serde_json::json!({"whitelist": ["127.0.0.1", "113.74.26.106/24", "::1", "fe80::/32"]}),
            serde_json::json!({"blacklist": ["10.255.254.0/24"], "message": "Do you want to do something bad?", "response_code": 404}),
        ] {
            assert!(parse(ok.clone()).is_ok(), "{ok}");
        }
        let p = "routes[0].plugins.ip-restriction";
        for (json, want) in [
            (
                serde_json::json!({"whitelist": ["127.0.0.ab"]}),
                format!("{p}.whitelist[0]: invalid ip address"),
            ),
            (
                serde_json::json!({"blacklist": ["10.0.0.1", "::1/129"]}),
                format!("{p}.blacklist[1]: invalid ip address"),
            ),
            (
                serde_json::json!({"whitelist": []}),
                format!("{p}.whitelist: must have at least one"),
            ),
            (
                serde_json::json!({}),
                format!("{p}: `whitelist` or `blacklist` is required"),
            ),
            (
                serde_json::json!({"whitelist": ["::1"], "blacklist": ["::1"]}),
                format!("{p}: set `whitelist` or `blacklist`, not both"),
            ),
            (
                serde_json::json!({"whitelist": ["::1"], "message": ""}),
                format!("{p}.message: must be 1 to 1024"),
            ),
            (
                serde_json::json!({"whitelist": ["::1"], "message": "-1Aa#".repeat(205)}),
                format!("{p}.message: must be 1 to 1024"),
            ),
            (
                serde_json::json!({"whitelist": ["::1"], "response_code": 409}),
                format!("{p}.response_code: expected 409 to be 403 or 404"),
            ),
            (
                serde_json::json!({"whitelist": "::1"}),
                format!("{p}.whitelist:"),
            ),
        ] {
            let errs = parse(json.clone()).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.starts_with(&want)),
                "{json}: {errs:?}"
            );
        }
    }

    #[test]
    fn whitelist_and_blacklist_decide_on_cidrs() {
        let w = parse(serde_json::json!({"whitelist": ["10.0.0.0/8", "2001:db8::/32"]})).unwrap();
        assert!(!w.refuses("10.1.2.3".parse().unwrap()));
        assert!(!w.refuses("2001:db8::1".parse().unwrap()));
        assert!(w.refuses("11.0.0.1".parse().unwrap()));
        assert!(w.refuses("::1".parse().unwrap()));
        let b = parse(serde_json::json!({"blacklist": ["127.0.0.1"]})).unwrap();
        assert!(b.refuses("127.0.0.1".parse().unwrap()));
        assert!(b.refuses("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!b.refuses("127.0.0.2".parse().unwrap()));
        assert_eq!(b.body, br#"{"message":"Your IP address is not allowed"}"#);
        assert_eq!(b.status, 403);
    }
}
