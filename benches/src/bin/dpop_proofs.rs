//! Mints a DPoP-bound bearer token and a pool of single-use DPoP proofs for load scenario S7
//! (`loadtest/run.sh --scenarios S7`): wrk's Lua cannot sign, and each request needs a proof of
//! its own (the gateway refuses a replayed `jti`).
//!
//! `dpop_proofs TOKEN_KEY_PEM DPOP_KEY_PEM OUT_DIR COUNT HTU ISS AUD` writes into OUT_DIR:
//!   dpop_token.txt   one RS256 JWT signed with TOKEN_KEY_PEM (kid `loadtest`), the claims of
//!                    loadtest/tokens.py's tokens plus `cnf.jkt`, the thumbprint of DPOP_KEY_PEM
//!   dpop_proofs.txt  COUNT ES256 proofs by DPOP_KEY_PEM for `GET HTU`, each with its own `jti`,
//!                    `iat` now and `ath` of that token, one per line
//! The proofs are made with the gateway's own signer (`shardgate_oidc::dpop::DpopSigner`), as a
//! client library would make them; ring signs ES256 in microseconds, so 100k take seconds.
// Benchmarks time real processes and wait on them with wall-clock deadlines: they read the
// system clock directly (clippy.toml's disallowed-methods guards the product code only).
#![allow(clippy::disallowed_methods)]

use std::io::Write as _;

use shardgate_oidc::dpop::DpopSigner;
use shardgate_oidc::jwt::{Alg, SigningKey, sign};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("dpop_proofs: {msg}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        fail("usage: dpop_proofs TOKEN_KEY_PEM DPOP_KEY_PEM OUT_DIR COUNT HTU ISS AUD");
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| fail(format!("{p}: {e}")));
    let token_key = SigningKey::from_pem(&read(&args[1])).unwrap_or_else(|e| fail(e));
    let signer = DpopSigner::from_pem(&read(&args[2]), Alg::ES256).unwrap_or_else(|e| fail(e));
    let out = std::path::Path::new(&args[3]);
    let count: usize = args[4]
        .parse()
        .unwrap_or_else(|_| fail("COUNT is not a number"));
    let (htu, iss, aud) = (&args[5], &args[6], &args[7]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_else(|_| fail("clock before 1970"));

    let claims = format!(
        r#"{{"iss":"{iss}","aud":"{aud}","sub":"user-dpop","scope":"read write","iat":{now},"exp":{exp},"jti":"lt-dpop-{now}","cnf":{{"jkt":"{jkt}"}}}}"#,
        exp = now + 86400,
        jkt = signer.thumbprint()
    );
    let token = sign(Alg::RS256, Some("loadtest"), claims.as_bytes(), &token_key)
        .unwrap_or_else(|e| fail(e));
    std::fs::create_dir_all(out).unwrap_or_else(|e| fail(e));
    std::fs::write(out.join("dpop_token.txt"), format!("{token}\n")).unwrap_or_else(|e| fail(e));

    let path = out.join("dpop_proofs.txt");
    let file = std::fs::File::create(&path).unwrap_or_else(|e| fail(e));
    let mut w = std::io::BufWriter::new(file);
    for i in 0..count {
        // Unique across pools minted in the same second too (the gateway remembers every jti).
        let jti = format!("{now}-{}-{i}", std::process::id());
        let proof = signer
            .proof("GET", htu, now, &jti, None, Some(&token))
            .unwrap_or_else(|e| fail(e));
        writeln!(w, "{proof}").unwrap_or_else(|e| fail(e));
    }
    w.flush().unwrap_or_else(|e| fail(e));
}
