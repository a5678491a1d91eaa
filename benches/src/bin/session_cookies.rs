//! Mints realistic session cookies for load scenario S3 (`loadtest/run.sh --scenarios S3`).
//!
//! `session_cookies OUT_FILE COUNT SECRET ISSUER [EXTRA_USERINFO_BYTES]` writes COUNT `Cookie` header values, one per line,
//! each a session sealed exactly as the gateway seals one after a login: a ~900-byte JWT access
//! token with a random (incompressible) signature, a refresh token, ID token claims and userinfo:
//! about 2 KiB sealed and deflated, as after a real login. `last_seen` is set one
//! hour ahead so a multi-minute run measures the steady session path and never the once-a-minute
//! cookie re-issue (which a real browser would pick up, and wrk would not). Each is bound to
//! discovery `ISSUER/.well-known/openid-configuration` and client_id `gateway`, as the S3 route is.
// Benchmarks time real processes and wait on them with wall-clock deadlines: they read the
// system clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

use base64::Engine as _;
use shardgate_oidc::session::{
    RawValue, SecureRandom, SessionCodec, SessionData, SessionKeys, SessionTimeouts, SystemRandom,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!("usage: session_cookies OUT_FILE COUNT SECRET ISSUER [EXTRA_USERINFO_BYTES]");
        std::process::exit(2);
    }
    let count: usize = args[2].parse().unwrap_or(1);
    let keys = match SessionKeys::new(args[3].as_bytes(), &[]) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("session secret: {e}");
            std::process::exit(2);
        }
    };
    // Sessions are bound to the route's discovery URL and client_id: those of the S3 route
    // (loadtest/harness.py, loadtest/soak.py) at this issuer.
    let discovery = format!("{}/.well-known/openid-configuration", args[4]);
    let codec =
        SessionCodec::new(keys, SessionTimeouts::default()).with_binding(&discovery, "gateway");
    let rng = SystemRandom::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    // Signatures and refresh tokens are random bytes in real sessions: incompressible, so the
    // cookie is as large as a real one after the codec's deflate.
    let random = |n: usize| {
        let mut buf = vec![0u8; n];
        if rng.fill(&mut buf).is_err() {
            eprintln!("system random source failed");
            std::process::exit(1);
        }
        b64(&buf)
    };
    // Optional: a userinfo with a larger profile (an opaque attribute of random bytes), for sessions
    // of several KiB.
    let extra: usize = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut out = String::new();
    for i in 0..count {
        let claims = format!(
            r#"{{"iss":"{iss}","sub":"user-{i}","aud":"gateway","exp":{exp},"iat":{now},"scope":"openid profile email","sid":"sid-{i}","email":"user{i}@example.test","name":"User {i}","preferred_username":"user{i}","groups":["staff","engineering","on-call"]}}"#,
            iss = args[4],
            exp = now + 3600
        );
        let access_token = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"rs-ephemeral","typ":"at+jwt"}"#),
            b64(claims.as_bytes()),
            random(256)
        );
        let mut data = SessionData::new(now);
        data.sub = Some(format!("user-{i}"));
        data.sid = Some(format!("sid-{i}"));
        data.iss = Some(args[4].clone());
        data.access_token = Some(access_token);
        data.access_token_expires_at = Some(now + 3600);
        data.refresh_token = Some(random(32));
        data.scope = Some("openid profile email".into());
        data.id_token_claims = RawValue::from_string(claims.clone()).ok();

        let user = if extra > 0 {
            let base = claims.trim_end_matches('}');
            format!(
                r#"{base},"profile_attributes":"{}"}}"#,
                random(extra * 3 / 4)
            )
        } else {
            claims
        };
        data.user = RawValue::from_string(user).ok();
        data.last_seen = now + 3600;
        data.rolled_at = now;
        let chunks = match codec.seal(&data, "session", now, &rng) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("seal: {e}");
                std::process::exit(1);
            }
        };
        let header: Vec<String> = chunks
            .iter()
            .enumerate()
            .map(|(j, v)| format!("{}={v}", shardgate_oidc::session::chunk_name("session", j)))
            .collect();
        out.push_str(&header.join("; "));
        out.push('\n');
    }
    if let Err(e) = std::fs::write(&args[1], out) {
        eprintln!("{}: {e}", args[1]);
        std::process::exit(1);
    }
}
