//! Bearer JWT costs: uncached RS256 and ES256 (parse + signature + claims), a verified-token
//! cache hit on a 1 KiB token among 10k entries, and the claims check alone.
//!
//! Before measuring, the binary checks that a cache hit allocates nothing (it counts calls
//! into the global allocator) and exits non-zero if it does.

use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use shardgate_oidc::cache::TtlCache;
use shardgate_oidc::claims::{AudienceRule, ClaimsPolicy, ClaimsView};
use shardgate_oidc::jwk::JwkSet;
use shardgate_oidc::jwt::{Alg, AlgPolicy, Jwt, SigningKey, sign, verify_signature};

#[global_allocator]
static GLOBAL: shardgate_benches::CountingAlloc = shardgate_benches::CountingAlloc;

const NOW: u64 = 1_700_000_000;
const JWKS: &str = include_str!("../../oidc/testdata/jwks.json");
const RSA_KEY: &str = include_str!("../../oidc/testdata/rsa1.pem");
const EC_KEY: &str = include_str!("../../oidc/testdata/ec256.pem");

/// Keycloak-shaped access-token claims (~500 bytes, as in the runtime measurements).
fn claims_json() -> String {
    format!(
        r#"{{"exp":{},"iat":{NOW},"auth_time":{NOW},"jti":"6f1c1c5e-8a4e-4c55-9a0b-0d8c1d7a9f11","iss":"https://idp.example.com/realms/shardgate","aud":["gateway","account"],"sub":"3f5e8c2a-1b7d-4e9f-a6c4-2d8b0e1f7a93","typ":"Bearer","azp":"gateway","sid":"b8a4d2e6-0c1f-4a7b-9e3d-5f6a8b2c4d1e","acr":"1","allowed-origins":["https://app.example.com"],"realm_access":{{"roles":["offline_access","uma_authorization","user"]}},"scope":"openid profile email read","email_verified":true,"name":"Alice Example","preferred_username":"alice","email":"alice@example.com"}}"#,
        NOW + 3600
    )
}

fn policy() -> ClaimsPolicy {
    ClaimsPolicy {
        valid_issuers: vec!["https://idp.example.com/realms/shardgate".into()],
        audience: Some(AudienceRule {
            claim: "aud".into(),
            required: true,
            expected: vec!["gateway".into()],
        }),
        required_scopes: vec!["read".into()],
        leeway_secs: 120,
        require_exp: false,
    }
}

fn full_check(
    token: &str,
    keys: &JwkSet,
    alg_policy: &AlgPolicy,
    claims_policy: &ClaimsPolicy,
) -> bool {
    let Ok(jwt) = Jwt::parse(token) else {
        return false;
    };
    if verify_signature(&jwt, keys, alg_policy).is_err() {
        return false;
    }
    ClaimsView::parse(jwt.payload()).is_ok_and(|c| claims_policy.check(&c, NOW).is_ok())
}

fn check_cache_hit_does_not_allocate(cache: &TtlCache<u64>, key: &[u8]) {
    for _ in 0..16 {
        black_box(cache.get(black_box(key), NOW * 1000));
    }
    let before = shardgate_benches::allocations();
    for _ in 0..1000 {
        black_box(cache.get(black_box(key), NOW * 1000));
    }
    let n = shardgate_benches::allocations() - before;
    if n != 0 {
        eprintln!("TtlCache::get allocated {n} times over 1000 hits; expected none");
        std::process::exit(1);
    }
}

fn benches(c: &mut Criterion) {
    let keys = JwkSet::from_json(JWKS.as_bytes()).expect("test JWKS parses");
    let alg_policy = AlgPolicy::default();
    let claims_policy = policy();
    let claims = claims_json();
    let rs = sign(
        Alg::RS256,
        Some("rsa1"),
        claims.as_bytes(),
        &SigningKey::from_pem(RSA_KEY).expect("rsa key"),
    )
    .expect("sign RS256");
    let es = sign(
        Alg::ES256,
        Some("ec256"),
        claims.as_bytes(),
        &SigningKey::from_pem(EC_KEY).expect("ec key"),
    )
    .expect("sign ES256");
    assert!(
        full_check(&rs, &keys, &alg_policy, &claims_policy),
        "RS256 token must verify"
    );
    assert!(
        full_check(&es, &keys, &alg_policy, &claims_policy),
        "ES256 token must verify"
    );

    let mut g = c.benchmark_group("jwt_verify");
    g.bench_function("rs256_uncached_verify_and_claims", |b| {
        b.iter(|| full_check(black_box(&rs), &keys, &alg_policy, &claims_policy))
    });
    g.bench_function("es256_uncached_verify_and_claims", |b| {
        b.iter(|| full_check(black_box(&es), &keys, &alg_policy, &claims_policy))
    });

    // 10k distinct ~1 KiB tokens, like S2 with a warm cache.
    let mut cache = TtlCache::new(10_000);
    let base = &rs[..1000.min(rs.len())];
    for i in 0..10_000u64 {
        cache.insert(format!("{base}{i:08}").as_bytes(), i, (NOW + 3600) * 1000);
    }
    let hit = format!("{base}{:08}", 4242);
    check_cache_hit_does_not_allocate(&cache, hit.as_bytes());
    g.bench_function("cache_hit_1k_token_10k_entries", |b| {
        b.iter(|| cache.get(black_box(hit.as_bytes()), NOW * 1000).copied())
    });

    g.bench_function("claims_parse_and_check", |b| {
        b.iter(|| {
            ClaimsView::parse(black_box(claims.as_bytes()))
                .is_ok_and(|c| claims_policy.check(&c, NOW).is_ok())
        })
    });
    g.finish();
}

criterion_group!(jwt, benches);

fn main() {
    jwt();
    Criterion::default().configure_from_args().final_summary();
}
