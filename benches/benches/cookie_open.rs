//! Cost of turning a request's session cookies back into a `SessionData`: the S3 hot path.
//!
//! The session is realistic for a Keycloak-style IdP (~3 KiB of tokens and userinfo, which seals into
//! two cookies). Besides criterion's timings, the bench counts heap allocations per open with a
//! counting global allocator and prints them, since allocations are what a reusable scratch buffer
//! is supposed to remove.
#![allow(unsafe_code)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shardgate_oidc::session::{
    self, RawValue, SessionCodec, SessionData, SessionKeys, SessionTimeouts, SystemRandom,
};

#[global_allocator]
static GLOBAL: shardgate_benches::CountingAlloc = shardgate_benches::CountingAlloc;

const NOW: u64 = 1_700_000_000;
const NAME: &str = "session";

/// Deterministic base64url noise standing in for signed tokens (which do not compress much).
fn noise(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % 64) as usize])
        })
        .collect()
}

fn jwt(len: usize, seed: u64) -> String {
    let t = noise(len, seed);
    format!("{}.{}.{}", &t[..36], &t[36..len - 342], &t[len - 342..])
}

fn realistic_session() -> SessionData {
    let mut s = SessionData::new(NOW);
    s.sub = Some("f:7c1b3a54-1f0e-4b8e-9d52-3c0a9a1f6e21:alice".into());
    s.sid = Some("0b7e3c1e-4b5d-4a2f-8f1e-2d9c7a6b5e4f".into());
    s.iss = Some("https://idp.example.com/realms/main".into());
    s.access_token = Some(jwt(1450, 1));
    s.access_token_expires_at = Some(NOW + 300);
    s.refresh_token = Some(jwt(850, 2));
    s.id_token = Some(jwt(1250, 3));
    s.scope = Some("openid profile email".into());
    let user = r#"{"sub":"f:7c1b3a54-1f0e-4b8e-9d52-3c0a9a1f6e21:alice","email_verified":true,"name":"Alice Example","preferred_username":"alice","given_name":"Alice","family_name":"Example","email":"alice@example.com","groups":["/staff","/staff/engineering","/vpn-users"]}"#;
    s.user = RawValue::from_string(user.to_owned()).ok();
    s
}

fn bench(c: &mut Criterion) {
    let keys = SessionKeys::new(
        b"bench secret, 32 bytes long.....",
        &[b"an older secret for rotation...."],
    )
    .expect("keys");
    let codec = SessionCodec::new(keys, SessionTimeouts::default());
    let data = realistic_session();
    let chunks = codec
        .seal(&data, NAME, NOW, &SystemRandom::new())
        .expect("seal");
    assert_eq!(
        chunks.len(),
        2,
        "the bench is meant to exercise a two-chunk cookie"
    );
    let header = format!(
        "_ga=GA1.2.123456789.1700000000; lang=en; {NAME}={}; theme=dark; {NAME}2={}",
        chunks[0], chunks[1]
    );

    let mut joined = Vec::new();
    let mut scratch = Vec::new();
    let open = |joined: &mut Vec<u8>, scratch: &mut Vec<u8>| -> SessionData {
        session::collect_chunks([header.as_bytes()].into_iter(), NAME, joined)
            .expect("collect")
            .expect("present");
        codec
            .open_with(joined, NAME, NOW + 10, scratch)
            .expect("open")
    };

    // Warm the reusable buffers, then count one steady-state open.
    black_box(open(&mut joined, &mut scratch));
    let (a0, b0) = (
        shardgate_benches::allocations(),
        shardgate_benches::allocated_bytes(),
    );
    let opened = black_box(open(&mut joined, &mut scratch));
    let (a1, b1) = (
        shardgate_benches::allocations(),
        shardgate_benches::allocated_bytes(),
    );
    let field_bytes: usize = [
        &opened.sub,
        &opened.sid,
        &opened.iss,
        &opened.access_token,
        &opened.refresh_token,
        &opened.id_token,
        &opened.scope,
    ]
    .iter()
    .filter_map(|f| f.as_ref().map(String::len))
    .sum::<usize>()
        + opened.user.as_ref().map_or(0, |u| u.get().len());
    drop(opened);
    let s0 = shardgate_benches::allocations();
    let mut scratch_only = Vec::new();
    black_box(
        codec
            .open_with(&joined, NAME, NOW + 10, &mut scratch_only)
            .expect("open"),
    );
    let cold = shardgate_benches::allocations() - s0;
    println!(
        "cookie_open: cookie {} B in {} chunks; steady-state collect+open: {} allocations \
         ({} bytes; the returned SessionData's fields hold {field_bytes}); cold scratch: {cold} allocations",
        chunks.iter().map(String::len).sum::<usize>(),
        chunks.len(),
        a1 - a0,
        b1 - b0,
    );

    let mut g = c.benchmark_group("cookie_open");
    g.bench_function("collect_and_open_2_chunks", |b| {
        b.iter(|| black_box(open(&mut joined, &mut scratch)));
    });
    g.bench_function("open_joined", |b| {
        b.iter(|| {
            black_box(
                codec
                    .open_with(black_box(&joined), NAME, NOW + 10, &mut scratch)
                    .expect("open"),
            )
        });
    });
    // A session whose userinfo is large and repetitive (hundreds of groups) is deflated: what
    // inflating costs on the hot path.
    let mut big = data.clone();
    let groups: Vec<String> = (0..150)
        .map(|i| format!("\"/org/team-{i}/members\""))
        .collect();
    let user = format!(r#"{{"sub":"alice","groups":[{}]}}"#, groups.join(","));
    big.user = RawValue::from_string(user).ok();
    let deflated = codec
        .seal(&big, NAME, NOW, &SystemRandom::new())
        .expect("seal");
    let deflated_header: String = deflated
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{}={v}; ", session::chunk_name(NAME, i)))
        .collect();
    let mut deflated_joined = Vec::new();
    session::collect_chunks(
        [deflated_header.as_bytes()].into_iter(),
        NAME,
        &mut deflated_joined,
    )
    .expect("collect")
    .expect("present");
    println!(
        "cookie_open: deflated session (userinfo with 150 groups) cookie {} B in {} chunks",
        deflated_joined.len(),
        deflated.len()
    );
    g.bench_function("open_joined_deflated", |b| {
        b.iter(|| {
            black_box(
                codec
                    .open_with(black_box(&deflated_joined), NAME, NOW + 10, &mut scratch)
                    .expect("open"),
            )
        });
    });
    let mut stripped = Vec::new();
    g.bench_function("strip_cookies", |b| {
        b.iter(|| {
            black_box(session::strip_cookies(
                black_box(header.as_bytes()),
                &[NAME],
                &mut stripped,
            ))
        });
    });
    let rng = SystemRandom::new();
    g.bench_function("seal_2_chunks", |b| {
        b.iter(|| black_box(codec.seal(&data, NAME, NOW, &rng).expect("seal")));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
