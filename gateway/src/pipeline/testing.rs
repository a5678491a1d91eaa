//! Plugins that exist only to exercise the pipeline, registered in test builds and with the
//! `test-plugins` feature (benches): never in a release binary built on its own.
//!
//! - `test-noop-1`..`test-noop-3`: every request phase, `header_filter` and `log`, doing nothing
//!   (what the seam itself costs).
//! - `test-header-hi` (priority 3000) and `test-header-lo` (priority 100): append their `value` to
//!   the upstream header `X-Plugin-Order` in `rewrite`, and, with `respond: <status>`, answer the
//!   request themselves (a success response, never an error).

use std::sync::Arc;

use serde::Deserialize;

use super::{Ctx, HeaderValue, PhaseResult, Phases, Plugin, Problem, Response, Step};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopConf {}

/// A plugin that declares every request phase, `header_filter` and `log`, and does nothing.
pub struct Noop<const N: u8>;

macro_rules! noop_name {
    ($($n:literal => $name:literal),*) => {
        const fn noop_name(n: u8) -> &'static str {
            match n { $($n => $name,)* _ => "test-noop" }
        }
    };
}
noop_name!(1 => "test-noop-1", 2 => "test-noop-2", 3 => "test-noop-3");

impl<const N: u8> Plugin for Noop<N> {
    const NAME: &'static str = noop_name(N);
    const PRIORITY: i32 = 1000 + N as i32;
    const PHASES: Phases = Phases::REWRITE
        .with(Phases::ACCESS)
        .with(Phases::BEFORE_PROXY)
        .with(Phases::HEADER_FILTER)
        .with(Phases::LOG);
    type Conf = NoopConf;
    type Instance = ();
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<NoopConf, Vec<Problem>> {
        super::registry::deserialize(value, path)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(_conf: Arc<NoopConf>, _global: &(), _path: &str) -> Result<(), String> {
        Ok(())
    }
    fn fingerprint(_instance: &()) -> u64 {
        0
    }
    fn attach(_instance: Arc<()>, _shard: &()) -> Self {
        Noop
    }
    async fn rewrite(&self, _ctx: &mut Ctx<'_>) -> PhaseResult {
        Ok(Step::Continue)
    }
    async fn access(&self, _ctx: &mut Ctx<'_>) -> PhaseResult {
        Ok(Step::Continue)
    }
    async fn before_proxy(&self, _ctx: &mut Ctx<'_>) -> PhaseResult {
        Ok(Step::Continue)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestHeaderConf {
    pub value: String,
    /// Answer with this status instead of proxying.
    #[serde(default)]
    pub respond: Option<u16>,
}

/// Appends its `value` to `X-Plugin-Order` upstream (order is observable), or answers itself.
pub struct TestHeader<const HI: bool>(Arc<TestHeaderConf>);

impl<const HI: bool> Plugin for TestHeader<HI> {
    const NAME: &'static str = if HI {
        "test-header-hi"
    } else {
        "test-header-lo"
    };
    const PRIORITY: i32 = if HI { 3000 } else { 100 };
    const PHASES: Phases = Phases::REWRITE;
    type Conf = TestHeaderConf;
    type Instance = Arc<TestHeaderConf>;
    type Global = ();
    type ShardGlobal = ();

    fn parse(
        value: serde_json::Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<TestHeaderConf, Vec<Problem>> {
        let conf: TestHeaderConf = super::registry::deserialize(value, path)?;
        if let Some(s) = conf.respond
            && !(200..=599).contains(&s)
        {
            return Err(vec![Problem::new(
                format!("{path}.respond"),
                "must be 200-599",
            )]);
        }
        Ok(conf)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) {}
    fn build(
        conf: Arc<TestHeaderConf>,
        _global: &(),
        _path: &str,
    ) -> Result<Arc<TestHeaderConf>, String> {
        Ok(conf)
    }
    fn fingerprint(instance: &Arc<TestHeaderConf>) -> u64 {
        instance.value.len() as u64
    }
    fn attach(instance: Arc<Arc<TestHeaderConf>>, _shard: &()) -> Self {
        TestHeader((*instance).clone())
    }
    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        if let Some(status) = self.0.respond {
            return Ok(Step::Respond(Response {
                status,
                headers: vec![("X-Plugin".into(), self.0.value.clone())],
                content_type: "text/plain",
                body: format!("{}\n", self.0.value).into_bytes(),
                code: "test_respond",
                reason: "test plugin answered".into(),
            }));
        }
        ctx.outcome()
            .upstream_headers
            .push(("X-Plugin-Order", HeaderValue::Owned(self.0.value.clone())));
        Ok(Step::Continue)
    }
}
