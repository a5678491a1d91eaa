//! `real-ip`: APISIX's client address from a header or query argument (priority 23000,
//! `rewrite`).
//!
//! The address found becomes the request's `remote_addr` for every later phase (ip-restriction,
//! limit keys, `$remote_addr` in templates), the `X-Forwarded-For`/`X-Real-IP`/`Forwarded` sent
//! upstream, a `remote_addr` upstream hash and the access log. Routing happened before any plugin
//! ran, so a route's `remote_addrs` and `vars` match the peer's address, as on APISIX.
//!
//! As APISIX: with `trusted_addresses`, only a peer in them is believed; `http_x_forwarded_for`
//! reads the last `X-Forwarded-For` header and takes its last element, or with `recursive` the
//! right-most element that is not a trusted address; an address with a port (`1.2.3.4:80`,
//! `[::1]:80`) is taken without it; a value that is not an address leaves `remote_addr` alone.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use crate::pipeline::{Ctx, PhaseResult, Phases, Plugin, Problem, Step, Var};
use crate::route::IpSet;

fn no() -> bool {
    false
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealIpConf {
    pub source: String,
    #[serde(default)]
    pub trusted_addresses: Option<Vec<String>>,
    #[serde(default = "no")]
    pub recursive: bool,
}

#[derive(Debug)]
enum Source {
    /// `http_x_forwarded_for`: APISIX reads the header list itself (last header, last element).
    XForwardedFor,
    Var(Var),
}

#[derive(Debug)]
pub struct RealIp {
    source: Source,
    trusted: Option<IpSet>,
    recursive: bool,
}

impl RealIp {
    /// APISIX's schema and `check_schema`, each problem at its path.
    pub fn from_conf(conf: &RealIpConf, path: &str) -> Result<RealIp, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = if conf.source.is_empty() {
            problems.push(Problem::new(
                format!("{path}.source"),
                "must be at least 1 character",
            ));
            None
        } else if conf.source == "http_x_forwarded_for" {
            Some(Source::XForwardedFor)
        } else {
            match Var::parse(&conf.source) {
                Some(v) => Some(Source::Var(v)),
                None => {
                    problems.push(Problem::new(
                        format!("{path}.source"),
                        format!(
                            "`{}` is not a variable shardgate computes (use http_<header>, \
                             arg_<name> or cookie_<name>)",
                            conf.source
                        ),
                    ));
                    None
                }
            }
        };
        let trusted = match &conf.trusted_addresses {
            None => None,
            Some(list) if list.is_empty() => {
                problems.push(Problem::new(
                    format!("{path}.trusted_addresses"),
                    "must have at least one address",
                ));
                None
            }
            Some(list) => match IpSet::parse(list.iter().map(String::as_str)) {
                Ok(set) => Some(set),
                Err(bad) => {
                    let i = list.iter().position(|e| e == bad).unwrap_or(0);
                    problems.push(Problem::new(
                        format!("{path}.trusted_addresses[{i}]"),
                        format!("invalid ip address: {bad}"),
                    ));
                    None
                }
            },
        };
        match source {
            Some(source) if problems.is_empty() => Ok(RealIp {
                source,
                trusted,
                recursive: conf.recursive,
            }),
            _ => Err(problems),
        }
    }

    fn trusts(&self, addr: &[u8]) -> bool {
        let Some(set) = &self.trusted else {
            return false;
        };
        std::str::from_utf8(addr)
            .ok()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|ip| set.contains(ip))
    }

    /// The address element of an `X-Forwarded-For` value, as APISIX picks it.
    fn pick_forwarded<'a>(&self, value: &'a [u8]) -> &'a [u8] {
        let Some(last_comma) = value.iter().rposition(|b| *b == b',') else {
            return value;
        };
        if self.recursive && self.trusted.is_some() {
            // Right to left, the first element that is not a trusted proxy; all trusted: the
            // left-most.
            let mut elems = value.split(|b| *b == b',').map(<[u8]>::trim_ascii_start);
            let first = elems.next().unwrap_or_default();
            return elems.rev().find(|e| !self.trusts(e)).unwrap_or(first);
        }
        value[last_comma + 1..].trim_ascii_start()
    }
}

/// APISIX's `parse_addr`: `ip`, `ip:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; a port
/// must be 1 to 65535. None when the value is not an address.
pub fn parse_addr(v: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(v).ok()?.trim_ascii();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (s, None),
        }
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p >= 1)
    {
        return None;
    }
    host.parse().ok()
}

pub struct RealIpPlugin(Arc<RealIp>);

impl Plugin for RealIpPlugin {
    const NAME: &'static str = "real-ip";
    const PRIORITY: i32 = 23000;
    const PHASES: Phases = Phases::REWRITE;
    type Conf = RealIpConf;
    type Instance = RealIp;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<RealIpConf, Vec<Problem>> {
        let conf: RealIpConf = crate::pipeline::registry::deserialize(value, path)?;
        RealIp::from_conf(&conf, path)?;
        Ok(conf)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(conf: Arc<RealIpConf>, _global: &(), path: &str) -> Result<RealIp, String> {
        RealIp::from_conf(&conf, path).map_err(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
    fn fingerprint(_instance: &RealIp) -> u64 {
        0
    }
    fn attach(instance: Arc<RealIp>, _shard: &()) -> Self {
        RealIpPlugin(instance)
    }

    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let conf = &*self.0;
        if let Some(set) = &conf.trusted
            && !set.contains(ctx.peer().ip())
        {
            return Ok(Step::Continue);
        }
        let ip = match &conf.source {
            // With `gateway.trusted_addresses`, an untrusted peer's chain was dropped before any
            // plugin ran (APISIX).
            Source::XForwardedFor if ctx.peer_trusted() == Some(false) => None,
            Source::XForwardedFor => {
                let (head, buf) = (ctx.head(), ctx.buf());
                head.headers
                    .iter()
                    .rfind(|h| h.name.of(buf).eq_ignore_ascii_case(b"x-forwarded-for"))
                    .and_then(|h| parse_addr(conf.pick_forwarded(h.value.of(buf))))
            }
            Source::Var(var) => ctx.var(var).and_then(parse_addr),
        };
        // A missing or malformed address leaves the peer's, as APISIX (which only logs it).
        if let Some(ip) = ip {
            ctx.outcome().set_real_ip(ip);
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P: &str = "routes[0].plugins.real-ip";

    fn parse(json: serde_json::Value) -> Result<RealIp, Vec<String>> {
        let mut w = Vec::new();
        RealIpPlugin::parse(json, P, &mut w)
            .and_then(|c| RealIp::from_conf(&c, P))
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn schema_cases_from_apisix() {
        for ok in [
            serde_json::json!({"source": "http_x_forwarded_for"}),
            serde_json::json!({"source": "http_xff", "trusted_addresses": ["127.0.0.1", "::1/128"]}),
            serde_json::json!({"source": "arg_realip", "recursive": true}),
            serde_json::json!({"source": "http_x_real_ip", "trusted_addresses": ["10.0.0.0/8"]}),
        ] {
            assert!(
                parse(ok.clone()).is_ok(),
                "{ok}: {:?}",
                parse(ok.clone()).err()
            );
        }
        for (json, want) in [
            (
                serde_json::json!({}),
                format!("{P}: missing field `source`"),
            ),
            (
                serde_json::json!({"source": ""}),
                format!("{P}.source: must be at least 1"),
            ),
            (
                serde_json::json!({"source": "http_xff", "trusted_addresses": ["127.0.0.1/33"]}),
                format!("{P}.trusted_addresses[0]: invalid ip address: 127.0.0.1/33"),
            ),
            (
                serde_json::json!({"source": "http_xff", "trusted_addresses": ["::1", "::1/129"]}),
                format!("{P}.trusted_addresses[1]: invalid ip address: ::1/129"),
            ),
            (
                serde_json::json!({"source": "http_xff", "trusted_addresses": []}),
                format!("{P}.trusted_addresses: must have at least one"),
            ),
            (
                serde_json::json!({"source": "nope"}),
                format!("{P}.source: `nope` is not a variable"),
            ),
            (
                serde_json::json!({"source": "http_xff", "recursive": "yes"}),
                format!("{P}.recursive:"),
            ),
            (
                serde_json::json!({"source": "http_xff", "trusted": []}),
                format!("{P}.trusted: unknown field"),
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
    fn addresses_parse_as_apisix_parse_addr() {
        let ip = |s: &str| parse_addr(s.as_bytes()).map(|i| i.to_string());
        assert_eq!(ip("1.1.1.1").as_deref(), Some("1.1.1.1"));
        assert_eq!(ip("1.1.1.1:7090").as_deref(), Some("1.1.1.1"));
        assert_eq!(ip("::2").as_deref(), Some("::2"));
        assert_eq!(ip("[::2]").as_deref(), Some("::2"));
        assert_eq!(ip("[::2]:8080").as_deref(), Some("::2"));
        for bad in [
            "1.1.1",
            "1.1.1.1:65536",
            "1.1.1.1:0",
            "1.1.1.1:x",
            "[::2]x",
            "",
            "a.b",
        ] {
            assert_eq!(ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_for_element_as_apisix_picks_it() {
        let plain = parse(serde_json::json!({"source": "http_x_forwarded_for"})).unwrap();
        assert_eq!(plain.pick_forwarded(b"1.1.1.1"), b"1.1.1.1");
        assert_eq!(plain.pick_forwarded(b"::1, ::2"), b"::2");
        assert_eq!(plain.pick_forwarded(b"1.1.1.1,  2.2.2.2"), b"2.2.2.2");
        let rec = parse(serde_json::json!({
            "source": "http_x_forwarded_for", "recursive": true,
            "trusted_addresses": ["192.128.0.0/16", "127.0.0.0/24"]
        }))
        .unwrap();
        assert_eq!(
            rec.pick_forwarded(b"1.1.1.1, 192.128.1.1, 127.0.0.1"),
            b"1.1.1.1"
        );
        assert_eq!(
            rec.pick_forwarded(b"1.1.1.1, 6.6.6.6, 127.0.0.1"),
            b"6.6.6.6"
        );
        assert_eq!(rec.pick_forwarded(b"127.0.0.2, 127.0.0.1"), b"127.0.0.2");
        // recursive without trusted_addresses is the plain rule (APISIX).
        let rec_only =
            parse(serde_json::json!({"source": "http_x_forwarded_for", "recursive": true}))
                .unwrap();
        assert_eq!(rec_only.pick_forwarded(b"1.1.1.1, 2.2.2.2"), b"2.2.2.2");
    }
}
