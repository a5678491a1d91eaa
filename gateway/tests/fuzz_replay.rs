//! The fuzz targets on the stable toolchain, without libFuzzer: every committed seed and crash
//! input of every target, then a bounded, seeded pseudo-random loop of mutations of them. The
//! harnesses are `gateway/fuzz/src/lib.rs`, included here as a module so `cargo test` builds them
//! with the workspace. Coverage-guided runs: `scripts/fuzz.sh` (gateway/fuzz/README.md).
//!
//! `SHARDGATE_FUZZ_ITERS` sets the mutations per target (default 1500).

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `seeds/<target>/` and `regressions/<target>/`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            match std::fs::read(&path) {
                Ok(bytes) => out.push((path, bytes)),
                Err(e) => panic!("reading {}: {e}", path.display()),
            }
        }
    }
    out
}

/// xorshift64*: deterministic, so a failure here reproduces with the same iteration count.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers under test, for insertions.
const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"%",
    b"%2f",
    b"%2e",
    b"/",
    b"..",
    b";",
    b":",
    b",",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b".",
    b"=",
    b"0",
    b"ffffffffffffffff",
    b"-1",
    b"\xff",
    b"\xc3\xa9",
    b" ",
    b"\t",
    b"chunked",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                let to = (from + 1 + rng.below(32)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            5 => {
                let end = (at + rng.below(16)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn iterations() -> usize {
    std::env::var("SHARDGATE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

#[test]
fn every_target_has_seeds() {
    for (name, _) in harness::TARGETS {
        assert!(
            !inputs(name).is_empty(),
            "gateway/fuzz/seeds/{name}/ has no seed input"
        );
    }
}

#[test]
fn fuzz_targets_in_the_cargo_fuzz_manifest_match_the_harness() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("gateway/fuzz/Cargo.toml: {e}"));
    for (name, _) in harness::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] of gateway/fuzz/Cargo.toml"
        );
        assert!(fuzz_dir().join(format!("fuzz_targets/{name}.rs")).exists());
    }
}

macro_rules! replay {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let target = stringify!($name);
            let run = harness::TARGETS
                .iter()
                .find(|(n, _)| *n == target)
                .map(|(_, f)| *f)
                .unwrap_or_else(|| panic!("no harness named {target}"));
            let corpus = inputs(target);
            for (path, bytes) in &corpus {
                let r = std::panic::catch_unwind(|| run(bytes));
                assert!(r.is_ok(), "{target} failed on {}", path.display());
            }
            let mut rng = Rng(0x5eed_0000 ^ target.len() as u64 * 0x9e37_79b9);
            for i in 0..iterations() {
                let input = if corpus.is_empty() || rng.below(10) == 0 {
                    (0..rng.below(64)).map(|_| rng.next() as u8).collect()
                } else {
                    let seed = &corpus[rng.below(corpus.len())].1;
                    let other = &corpus[rng.below(corpus.len())].1;
                    mutate(&mut rng, seed, other)
                };
                let r = std::panic::catch_unwind(|| run(&input));
                assert!(
                    r.is_ok(),
                    "{target} failed on mutation {i}: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    )*};
}

replay!(
    request_head,
    response_head,
    chunked,
    path_route,
    config_load,
    jwt,
    session,
    logout_token,
    idp_response,
);
