//! Differential check of the path normaliser (`http1::path::normalize`) against a reference:
//! Python's `urllib.parse.unquote_to_bytes` then `posixpath.normpath`, over generated paths.
//!
//! Where the two differ by design, the reference is adjusted or the refusal class is asserted:
//! - refusals (encoded `/`, `\`, control bytes, bad escapes, `;`, `?`/`#`): the normaliser must
//!   refuse exactly the paths whose raw bytes contain one of them, with that class;
//! - a `..` above the root: normpath clamps it to `/`, the normaliser refuses it (AboveRoot);
//! - a leading `//`: normpath keeps exactly two (POSIX), the normaliser merges every `//`;
//! - a trailing `/` (or a final `.`/`..` segment): normpath drops it, the normaliser keeps it.

use std::io::Write as _;
use std::process::{Command, Stdio};

use shardgate_gateway::http1::path::{Normal, PathError, normalize};

/// Every refusal class the raw bytes call for (the normaliser reports whichever it meets first);
/// empty when the reference should agree.
fn expected_refusals(raw: &[u8]) -> Vec<PathError> {
    let escape = |i: usize| -> Option<u8> {
        let h = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
        u8::from_str_radix(h, 16)
            .ok()
            .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let mut all = Vec::new();
    for (i, &b) in raw.iter().enumerate() {
        let refusal = match b {
            b'%' => match escape(i) {
                None => Some(PathError::BadEscape),
                Some(b'/') => Some(PathError::EncodedSlash),
                Some(b'\\') => Some(PathError::Backslash),
                Some(d) if d < 0x20 || d == 0x7f => Some(PathError::ControlByte),
                Some(_) => None,
            },
            b'\\' => Some(PathError::Backslash),
            b';' => Some(PathError::Semicolon),
            b'?' | b'#' => Some(PathError::Delimiter),
            _ if b < 0x20 || b == 0x7f => Some(PathError::ControlByte),
            _ => None,
        };
        all.extend(refusal);
    }
    all
}

const PIECES: &[&str] = &[
    "/", "/", "/", "//", "a", "api", "admin", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%61",
    "%41", "%7e", "~", "%25", "%2525", "%20", "+", "%c3%a9", "é", "%3b", "%3f", "%23", "%2f",
    "%2F", "%5c", "\\", ";", "?", "#", "%00", "%7f", "%", "%4", "%zz", "x.y", "...", "-", "@",
];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn generated(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut p = String::from("/");
        for _ in 0..1 + rng.below(8) {
            p.push_str(PIECES[rng.below(PIECES.len())]);
        }
        out.push(p.into_bytes());
    }
    out
}

/// The reference's answers, one per path: `Some(normpath(unquote(path)))` with the adjustments in
/// the module doc, or `None` when a `..` climbs above the root.
fn reference(paths: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    const SCRIPT: &str = r#"
import sys, posixpath, urllib.parse
for line in sys.stdin.read().split():
    raw = bytes.fromhex(line)
    dec = urllib.parse.unquote_to_bytes(raw)
    segs = [s for s in dec.split(b"/") if s not in (b"", b".")]
    depth, above = 0, False
    for s in dec.split(b"/"):
        if s == b"..":
            if depth == 0: above = True
            depth = max(depth - 1, 0)
        elif s not in (b"", b"."):
            depth += 1
    if above:
        print("-"); continue
    norm = posixpath.normpath(b"/" + dec.lstrip(b"/"))
    last = dec.split(b"/")[-1]
    if norm != b"/" and (dec.endswith(b"/") or last in (b".", b"..")):
        norm += b"/"
    print(norm.hex() or "00")
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 (the reference) must be installed: {e}"));
    let input: String = paths.iter().map(|p| hex(p) + "\n").collect();
    child
        .stdin
        .take()
        .map(|mut s| s.write_all(input.as_bytes()))
        .transpose()
        .unwrap_or_else(|e| panic!("writing to python3: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(out.status.success(), "the reference script failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| (l != "-").then(|| unhex(l)))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[test]
fn normaliser_agrees_with_python_normpath_over_generated_paths() {
    let paths = generated(20_000);
    let reference = reference(&paths);
    assert_eq!(reference.len(), paths.len());
    let (mut agreed, mut refused) = (0, 0);
    for (raw, want) in paths.iter().zip(&reference) {
        let shown = String::from_utf8_lossy(raw);
        let mut out = Vec::new();
        let got = normalize(raw, &mut out).map(|n| match n {
            Normal::AsIs => raw.clone(),
            Normal::Rewritten => out.clone(),
        });
        let mut classes = expected_refusals(raw);
        if !classes.is_empty() {
            if want.is_none() {
                classes.push(PathError::AboveRoot);
            }
            assert!(
                got.as_ref().is_err_and(|e| classes.contains(e)),
                "{shown}: must be refused as one of {classes:?}, got {got:?}"
            );
            refused += 1;
            continue;
        }
        match want {
            None => assert_eq!(got, Err(PathError::AboveRoot), "{shown}: climbs above /"),
            Some(want) => {
                let got = got.unwrap_or_else(|e| panic!("{shown}: refused as {e:?}"));
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(want),
                    "{shown}: differs from normpath(unquote(path))"
                );
                agreed += 1;
            }
        }
    }
    // The generator must exercise both sides.
    assert!(
        agreed > 2_000 && refused > 2_000,
        "agreed {agreed}, refused {refused}"
    );
}
