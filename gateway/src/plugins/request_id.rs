//! `request-id`: APISIX's request id plugin (priority 12015, `rewrite`).
//!
//! The client's id is kept when it sends a non-empty one; otherwise an id is generated into a
//! fixed buffer in the connection's outcome (no allocation) from a shard-local generator, sent
//! upstream under `header_name`, and, with `include_in_response`, to the client unless the
//! upstream's response carries its own. The id is a field of the access log line
//! (`request_id`). A request without a W3C `traceparent` gets one started (version 00, random
//! trace and parent ids, sampled), sent upstream; a client's `traceparent` passes through
//! untouched.
//!
//! Ids are unique identifiers, not secrets: the generator is xoshiro256++ seeded per shard from
//! the system's CSPRNG (APISIX's `uuid` uses LuaJIT's `math.random` the same way).
//!
//! Differences from APISIX: `header_name` must be a header token; `range_id.char_set` must be
//! ASCII and `range_id.length` at most 128 (the id is written into a fixed buffer).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use ring::rand::SecureRandom;
use serde::Deserialize;
use shardgate_runtime::clock::Clock;

use crate::pipeline::{Ctx, IdBuf, PhaseResult, Phases, Plugin, Problem, Step};

/// APISIX's default `range_id.char_set` (with its `IGK`, kept so ids look the same).
const DEFAULT_CHAR_SET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIGKLMNOPQRSTUVWXYZ0123456789";
/// The standard nanoid alphabet: 64 characters, so 6 bits pick one without bias.
const NANOID_ALPHABET: &[u8; 64] =
    b"-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const NANOID_SIZE: usize = 21;
const HEX: &[u8; 16] = b"0123456789abcdef";
/// KSUID's epoch (Segment's: 2014-05-13T16:53:20Z) and alphabet; an id is 27 characters.
const KSUID_EPOCH: u64 = 1_400_000_000;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const KSUID_LEN: usize = 27;

fn default_header() -> String {
    "X-Request-Id".into()
}

fn yes() -> bool {
    true
}

fn default_length() -> i64 {
    16
}

fn default_char_set() -> String {
    DEFAULT_CHAR_SET.into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConf {
    #[serde(default = "default_header")]
    pub header_name: String,
    #[serde(default = "yes")]
    pub include_in_response: bool,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub range_id: RangeIdConf,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Uuid,
    Uuidv7,
    Nanoid,
    #[serde(rename = "range_id")]
    RangeId,
    Ksuid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeIdConf {
    #[serde(default = "default_length")]
    pub length: i64,
    #[serde(default = "default_char_set")]
    pub char_set: String,
}

impl Default for RangeIdConf {
    fn default() -> Self {
        RangeIdConf {
            length: default_length(),
            char_set: default_char_set(),
        }
    }
}

/// The prepared attributes, built on the control side (each shard keeps its own `Rc` of the
/// header name).
#[derive(Debug)]
pub struct RequestIdInstance {
    header: Arc<str>,
    include_in_response: bool,
    algorithm: Algorithm,
    range_len: usize,
    char_set: Box<[u8]>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl RequestIdInstance {
    /// APISIX's schema, each problem at its path.
    pub fn from_conf(conf: &RequestIdConf, path: &str) -> Result<RequestIdInstance, Vec<Problem>> {
        let mut problems = Vec::new();
        if !is_token(&conf.header_name) {
            problems.push(Problem::new(
                format!("{path}.header_name"),
                format!("`{}` is not a header name", conf.header_name),
            ));
        }
        let r = &conf.range_id;
        if r.length < 6 || r.length > IdBuf::CAP as i64 {
            problems.push(Problem::new(
                format!("{path}.range_id.length"),
                format!("expected {} to be 6 to {}", r.length, IdBuf::CAP),
            ));
        }
        if r.char_set.len() < 6 || !r.char_set.is_ascii() {
            problems.push(Problem::new(
                format!("{path}.range_id.char_set"),
                "must be at least 6 ASCII characters",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(RequestIdInstance {
            header: conf.header_name.as_str().into(),
            include_in_response: conf.include_in_response,
            algorithm: conf.algorithm,
            range_len: r.length as usize,
            char_set: r.char_set.as_bytes().into(),
        })
    }
}

/// A shard's id generator: xoshiro256++ (Blackman and Vigna), seeded from the system CSPRNG.
pub struct ShardRng {
    s: Cell<[u64; 4]>,
}

impl ShardRng {
    pub fn seeded() -> ShardRng {
        let mut seed = [0u8; 32];
        // The system CSPRNG failing is a broken host; the shard id and the address of the seed
        // still make shards differ.
        if ring::rand::SystemRandom::new().fill(&mut seed).is_err() {
            let addr = &seed as *const _ as u64;
            seed[..8].copy_from_slice(&addr.to_le_bytes());
        }
        let mut s = [0u64; 4];
        for (i, w) in s.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&seed[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(b);
        }
        if s == [0; 4] {
            s[0] = 0x9e37_79b9_7f4a_7c15;
        }
        ShardRng { s: Cell::new(s) }
    }

    pub fn next_u64(&self) -> u64 {
        let mut s = self.s.get();
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        self.s.set(s);
        out
    }

    pub fn fill(&self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Both hex digits of every byte value: one load per byte instead of two (ids on every request).
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

fn hex(bytes: &[u8], out: &mut [u8]) -> usize {
    assert!(out.len() >= 2 * bytes.len(), "room for the hex digits");
    for (o, b) in out.chunks_exact_mut(2).zip(bytes) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
    2 * bytes.len()
}

/// The 160-bit big-endian number `raw` in base 62, zero-padded to 27 digits (KSUID's text form).
fn base62_27(raw: &[u8; 20], out: &mut [u8]) -> usize {
    // Five big-endian u32 limbs, divided by 62 in place until zero.
    let mut limbs = [0u32; 5];
    for (i, l) in limbs.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        b.copy_from_slice(&raw[i * 4..i * 4 + 4]);
        *l = u32::from_be_bytes(b);
    }
    let mut digits = [b'0'; KSUID_LEN];
    let mut at = KSUID_LEN;
    while limbs.iter().any(|l| *l != 0) && at > 0 {
        let mut rem = 0u64;
        for l in limbs.iter_mut() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / 62) as u32;
            rem = cur % 62;
        }
        at -= 1;
        digits[at] = BASE62[rem as usize];
    }
    out[..KSUID_LEN].copy_from_slice(&digits);
    KSUID_LEN
}

/// `xxxxxxxx-xxxx-Vxxx-vxxx-xxxxxxxxxxxx` from 16 bytes whose version and variant are set.
fn uuid_text(r: &[u8; 16], out: &mut [u8]) -> usize {
    let mut at = 0;
    for (i, range) in [0..4, 4..6, 6..8, 8..10, 10..16].into_iter().enumerate() {
        if i > 0 {
            out[at] = b'-';
            at += 1;
        }
        at += hex(&r[range], &mut out[at..]);
    }
    at
}

impl RequestIdInstance {
    /// Writes a new id into `out`; returns its length.
    fn generate(&self, rng: &ShardRng, out: &mut [u8; IdBuf::CAP]) -> usize {
        match self.algorithm {
            Algorithm::Uuid => {
                let mut r = [0u8; 16];
                rng.fill(&mut r);
                r[6] = (r[6] & 0x0f) | 0x40;
                r[8] = (r[8] & 0x3f) | 0x80;
                uuid_text(&r, out)
            }
            Algorithm::Uuidv7 => {
                let mut r = [0u8; 16];
                rng.fill(&mut r);
                let ms = shardgate_runtime::clock::shard_clock().unix_millis();
                r[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
                r[6] = (r[6] & 0x0f) | 0x70;
                r[8] = (r[8] & 0x3f) | 0x80;
                uuid_text(&r, out)
            }
            Algorithm::Nanoid => {
                let mut r = [0u8; NANOID_SIZE];
                rng.fill(&mut r);
                for (o, b) in out.iter_mut().zip(r) {
                    *o = NANOID_ALPHABET[usize::from(b & 63)];
                }
                NANOID_SIZE
            }
            Algorithm::Ksuid => {
                let secs = shardgate_runtime::clock::shard_clock().unix_secs();
                let mut raw = [0u8; 20];
                let stamp = secs.saturating_sub(KSUID_EPOCH).min(u64::from(u32::MAX)) as u32;
                raw[..4].copy_from_slice(&stamp.to_be_bytes());
                rng.fill(&mut raw[4..]);
                base62_27(&raw, out)
            }
            Algorithm::RangeId => {
                let n = self.char_set.len() as u64;
                for o in out.iter_mut().take(self.range_len) {
                    *o = self.char_set[(rng.next_u64() % n) as usize];
                }
                self.range_len
            }
        }
    }
}

/// A W3C trace context `traceparent`: `00-<trace-id>-<parent-id>-01`, ids random and non-zero.
fn start_traceparent(rng: &ShardRng, out: &mut [u8; IdBuf::CAP]) -> usize {
    let mut ids = [0u8; 24];
    rng.fill(&mut ids);
    // All-zero ids are invalid; one set bit makes both non-zero.
    ids[15] |= 1;
    ids[23] |= 1;
    out[..3].copy_from_slice(b"00-");
    let mut at = 3 + hex(&ids[..16], &mut out[3..]);
    out[at] = b'-';
    at += 1;
    at += hex(&ids[16..], &mut out[at..]);
    out[at..at + 3].copy_from_slice(b"-01");
    at + 3
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// W3C Trace Context's `traceparent`: `version-traceid-parentid-flags`, lower-case hex, ids not
/// all zero, version `ff` invalid; version 00 is exactly 55 bytes, a later version may append
/// `-`-separated fields.
fn valid_traceparent(v: &[u8]) -> bool {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let hex = is_lower_hex(version) && is_lower_hex(trace) && is_lower_hex(parent);
    if !hex || !is_lower_hex(flags) || version == b"ff" {
        return false;
    }
    if trace.iter().all(|b| *b == b'0') || parent.iter().all(|b| *b == b'0') {
        return false;
    }
    match version {
        b"00" => v.len() == 55,
        _ => v.len() == 55 || v[55] == b'-',
    }
}

pub struct RequestIdPlugin {
    inst: Arc<RequestIdInstance>,
    /// The header name shared with each request's outcome without a copy.
    header: Rc<str>,
    rng: Rc<ShardRng>,
}

impl Plugin for RequestIdPlugin {
    const NAME: &'static str = "request-id";
    const PRIORITY: i32 = 12015;
    const PHASES: Phases = Phases::REWRITE;
    type Conf = RequestIdConf;
    type Instance = RequestIdInstance;
    type Global = ();
    type ShardGlobal = Rc<ShardRng>;

    fn parse(
        value: serde_json::Value,
        path: &str,
        _warnings: &mut Vec<Problem>,
    ) -> Result<RequestIdConf, Vec<Problem>> {
        let conf: RequestIdConf = crate::pipeline::registry::deserialize(value, path)?;
        RequestIdInstance::from_conf(&conf, path)?;
        Ok(conf)
    }
    fn global() -> Arc<()> {
        Arc::new(())
    }
    fn shard_global(_shard: usize, _global: &Arc<()>) -> Rc<ShardRng> {
        Rc::new(ShardRng::seeded())
    }
    fn build(
        conf: Arc<RequestIdConf>,
        _global: &(),
        path: &str,
    ) -> Result<RequestIdInstance, String> {
        RequestIdInstance::from_conf(&conf, path).map_err(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
    fn fingerprint(_instance: &RequestIdInstance) -> u64 {
        0
    }
    fn attach(instance: Arc<RequestIdInstance>, shard: &Rc<ShardRng>) -> Self {
        RequestIdPlugin {
            header: Rc::from(&*instance.header),
            inst: instance,
            rng: shard.clone(),
        }
    }

    async fn rewrite(&self, ctx: &mut Ctx<'_>) -> PhaseResult {
        let (head, buf, outcome) = ctx.head_and_outcome();
        let rid = &mut outcome.request_id;
        rid.header = Some(self.header.clone());
        rid.in_response = self.inst.include_in_response;
        rid.from_client = head
            .headers
            .iter()
            .find(|h| {
                h.name.of(buf).eq_ignore_ascii_case(self.header.as_bytes())
                    && !h.value.of(buf).is_empty()
            })
            .map(|h| h.value);
        if rid.from_client.is_none() {
            let n = self.inst.generate(&self.rng, rid.generated.space());
            rid.generated.set_len(n);
        }
        // A valid `traceparent` passes through; an invalid one is replaced (with its
        // `tracestate`, which W3C ties to it), as a missing one is started.
        if !head
            .header(buf, "traceparent")
            .is_some_and(valid_traceparent)
        {
            let n = start_traceparent(&self.rng, rid.traceparent.space());
            rid.traceparent.set_len(n);
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<RequestIdInstance, Vec<String>> {
        let mut w = Vec::new();
        let path = "routes[0].plugins.request-id";
        RequestIdPlugin::parse(json, path, &mut w)
            .and_then(|c| RequestIdInstance::from_conf(&c, path))
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    fn id(inst: &RequestIdInstance, rng: &ShardRng) -> String {
        let mut out = [0u8; IdBuf::CAP];
        let n = inst.generate(rng, &mut out);
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn schema_cases_from_apisix() {
        for ok in [
            serde_json::json!({}),
            serde_json::json!({"header_name": "X-Trace", "include_in_response": false, "algorithm": "nanoid"}),
            serde_json::json!({"algorithm": "range_id", "range_id": {"length": 6, "char_set": "abcdef"}}),
            serde_json::json!({"algorithm": "range_id", "range_id": {}}),
            serde_json::json!({"algorithm": "uuidv7"}),
            serde_json::json!({"algorithm": "ksuid"}),
        ] {
            assert!(
                parse(ok.clone()).is_ok(),
                "{ok}: {:?}",
                parse(ok.clone()).err()
            );
        }
        let p = "routes[0].plugins.request-id";
        for (json, want) in [
            (
                serde_json::json!({"algorithm": "bad_algorithm"}),
                format!("{p}.algorithm: unknown variant"),
            ),
            (
                serde_json::json!({"algorithm": "range_id", "range_id": {"length": 5}}),
                format!("{p}.range_id.length: expected 5 to be 6 to 128"),
            ),
            (
                serde_json::json!({"range_id": {"char_set": "abc"}}),
                format!("{p}.range_id.char_set: must be at least 6"),
            ),
            (
                serde_json::json!({"header_name": "X Id"}),
                format!("{p}.header_name: `X Id` is not a header name"),
            ),
            (
                serde_json::json!({"header_name": 1}),
                format!("{p}.header_name:"),
            ),
            (
                serde_json::json!({"include_in_response": "yes"}),
                format!("{p}.include_in_response:"),
            ),
            (
                serde_json::json!({"range_id": {"size": 8}}),
                format!("{p}.range_id.size: unknown field"),
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
    fn ids_have_their_algorithms_shapes_and_differ() {
        let rng = ShardRng::seeded();
        let uuid = parse(serde_json::json!({})).unwrap();
        let a = id(&uuid, &rng);
        let b = id(&uuid, &rng);
        assert_ne!(a, b);
        let re = regex::Regex::new(
            "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        )
        .unwrap();
        assert!(re.is_match(&a), "{a}");
        let v7 = parse(serde_json::json!({"algorithm": "uuidv7"})).unwrap();
        let v = id(&v7, &rng);
        assert_eq!(v.as_bytes()[14], b'7', "{v}");
        let nano = parse(serde_json::json!({"algorithm": "nanoid"})).unwrap();
        let n = id(&nano, &rng);
        assert_eq!(n.len(), 21);
        assert!(n.bytes().all(|c| NANOID_ALPHABET.contains(&c)), "{n}");
        let ks = parse(serde_json::json!({"algorithm": "ksuid"})).unwrap();
        let k = id(&ks, &rng);
        assert_eq!(k.len(), 27, "{k}");
        assert!(k.bytes().all(|c| BASE62.contains(&c)), "{k}");
        assert_ne!(k, id(&ks, &rng));
        let range = parse(serde_json::json!({"algorithm": "range_id", "range_id": {"length": 40, "char_set": "xyz123"}})).unwrap();
        let r = id(&range, &rng);
        assert_eq!(r.len(), 40);
        assert!(r.bytes().all(|c| b"xyz123".contains(&c)), "{r}");
        let mut tp = [0u8; IdBuf::CAP];
        let len = start_traceparent(&rng, &mut tp);
        let tp = std::str::from_utf8(&tp[..len]).unwrap();
        let re = regex::Regex::new("^00-[0-9a-f]{32}-[0-9a-f]{16}-01$").unwrap();
        assert!(re.is_match(tp), "{tp}");
        assert!(valid_traceparent(tp.as_bytes()));
    }

    #[test]
    fn ksuid_text_is_base62_of_the_160_bit_number() {
        let mut out = [0u8; IdBuf::CAP];
        assert_eq!(base62_27(&[0; 20], &mut out), 27);
        assert_eq!(&out[..27], b"000000000000000000000000000");
        // Segment's maximum KSUID (all bits set).
        base62_27(&[0xff; 20], &mut out);
        assert_eq!(&out[..27], b"aWgEPTl1tmebfsQzFP4bxwgy80V");
        let mut one = [0u8; 20];
        one[19] = 63;
        base62_27(&one, &mut out);
        assert_eq!(&out[..27], b"000000000000000000000000011");
    }

    #[test]
    fn traceparent_validation_follows_w3c() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(ok.as_bytes()));
        assert!(valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(!valid_traceparent(bad.as_bytes()), "{bad}");
        }
    }
}
