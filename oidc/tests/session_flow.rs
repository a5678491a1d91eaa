//! Behaviour of the sealed session cookie codec and the authorization code flow pieces.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use ring::rand::SystemRandom;
use serde_json::value::RawValue;
use shardgate_oidc::flow::{
    self, AuthorizeParams, Callback, ClaimError, FlowError, IdTokenRules, LoginState, LogoutAction,
    LogoutSubject, Revocations, TokenResponse, TokenState,
};
use shardgate_oidc::session::{
    self, ChunkMask, CookieAttrs, Expiry, MAX_COOKIE_SIZE, SameSite, SessionCodec, SessionData,
    SessionError, SessionKeys, SessionTimeouts,
};

const SECRET: &[u8] = b"0123456789abcdef-primary";
const OLD_SECRET: &[u8] = b"0123456789abcdef-old-one";
const NOW: u64 = 1_700_000_000;

fn codec_with(secret: &[u8], fallbacks: &[&[u8]]) -> SessionCodec {
    SessionCodec::new(
        SessionKeys::new(secret, fallbacks).unwrap(),
        SessionTimeouts::default(),
    )
}

fn codec() -> SessionCodec {
    codec_with(SECRET, &[])
}

fn small_session() -> SessionData {
    let mut s = SessionData::new(NOW);
    s.sub = Some("user-1".into());
    s.sid = Some("idp-session-1".into());
    s.iss = Some("https://idp.example.com".into());
    s.access_token = Some("at.at.at".into());
    s.access_token_expires_at = Some(NOW + 300);
    s.refresh_token = Some("rt".into());
    s.scope = Some("openid profile".into());
    s
}

/// Pseudo-random base64url text: incompressible, like real JWTs.
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

/// Seals, builds the Cookie header a browser would send back, collects and opens it.
fn roundtrip(codec: &SessionCodec, data: &SessionData, name: &str) -> (Vec<String>, SessionData) {
    let chunks = codec.seal(data, name, NOW, &SystemRandom::new()).unwrap();
    let header = cookie_header(name, &chunks);
    let mut joined = Vec::new();
    let got = session::collect_chunks([header.as_bytes()].into_iter(), name, &mut joined)
        .unwrap()
        .unwrap();
    assert_eq!(got.count, chunks.len());
    let opened = codec.open(&joined, name, NOW + 1).unwrap();
    (chunks, opened)
}

fn cookie_header(name: &str, chunks: &[String]) -> String {
    chunks
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{}={v}", session::chunk_name(name, i)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn joined_value(name: &str, chunks: &[String]) -> Vec<u8> {
    let header = cookie_header(name, chunks);
    let mut joined = Vec::new();
    session::collect_chunks([header.as_bytes()].into_iter(), name, &mut joined)
        .unwrap()
        .unwrap();
    joined
}

// ------------------------------------------------------------------------------------------------
// Sealing and opening

#[test]
fn small_session_roundtrips_in_one_cookie() {
    let data = small_session();
    let (chunks, opened) = roundtrip(&codec(), &data, "session");
    assert_eq!(chunks.len(), 1);
    assert!(
        !chunks[0].contains('.'),
        "a single chunk carries no count prefix"
    );
    assert_eq!(opened.sub.as_deref(), Some("user-1"));
    assert_eq!(opened.sid.as_deref(), Some("idp-session-1"));
    assert_eq!(opened.access_token.as_deref(), Some("at.at.at"));
    assert_eq!(opened.access_token_expires_at, Some(NOW + 300));
    assert_eq!(opened.created_at, NOW);
    assert!(opened.user.is_none());
}

#[test]
fn large_compressible_session_is_deflated_and_roundtrips() {
    let mut data = small_session();
    let groups: Vec<String> = (0..200).map(|i| format!("\"group-{i}\"")).collect();
    let user = format!(
        r#"{{"sub":"user-1","groups":[{}],"email":"a@example.com"}}"#,
        groups.join(",")
    );
    let json_len = user.len();
    data.user = Some(RawValue::from_string(user.clone()).unwrap());
    data.id_token_claims =
        Some(RawValue::from_string(r#"{"iss":"x","n":[1,2,3]}"#.into()).unwrap());
    let (chunks, opened) = roundtrip(&codec(), &data, "session");
    assert_eq!(chunks.len(), 1);
    assert!(
        chunks[0].len() < json_len / 2,
        "deflate should shrink {json_len} bytes, got {}",
        chunks[0].len()
    );
    assert_eq!(
        opened.user.unwrap().get(),
        user,
        "raw JSON is stored verbatim"
    );
    assert_eq!(
        opened.id_token_claims.unwrap().get(),
        r#"{"iss":"x","n":[1,2,3]}"#
    );
}

#[test]
fn compression_threshold_is_respected() {
    let mut data = small_session();
    data.user = Some(RawValue::from_string(format!(r#"{{"x":"{}"}}"#, "a".repeat(2000))).unwrap());
    let never = codec().with_compression_threshold(usize::MAX);
    let plain = never.seal(&data, "s", NOW, &SystemRandom::new()).unwrap();
    let packed = codec().seal(&data, "s", NOW, &SystemRandom::new()).unwrap();
    assert!(plain.concat().len() > 2000);
    assert!(packed.concat().len() < 500);
    // Either form opens with either codec: compression is flagged inside the cookie.
    assert!(codec().open(&joined_value("s", &plain), "s", NOW).is_ok());
    assert!(never.open(&joined_value("s", &packed), "s", NOW).is_ok());
}

#[test]
fn big_incompressible_session_is_chunked_within_browser_limits() {
    let mut data = small_session();
    data.access_token = Some(noise(3000, 1));
    data.id_token = Some(noise(3000, 2));
    data.refresh_token = Some(noise(1500, 3));
    let name = "session";
    let (chunks, opened) = roundtrip(&codec(), &data, name);
    // Base64 text still deflates by about a quarter (6 bits of entropy per byte), so ~7.5 KB of
    // tokens take two or three cookies.
    assert!(chunks.len() >= 2);
    assert!(chunks[0].starts_with(&format!("{}.", chunks.len())));
    let mut headers = Vec::new();
    session::set_cookie_headers(name, &chunks, &CookieAttrs::default(), &mut headers);
    for (i, h) in headers.iter().enumerate() {
        let pair = h.split(';').next().unwrap();
        let (n, v) = pair.split_once('=').unwrap();
        assert_eq!(n, session::chunk_name(name, i));
        assert!(
            n.len() + v.len() <= MAX_COOKIE_SIZE,
            "chunk {i} is {} bytes",
            n.len() + v.len()
        );
    }
    assert_eq!(opened.id_token, data.id_token);
    assert_eq!(opened.access_token, data.access_token);
}

#[test]
fn chunking_boundary_exactly_at_the_limit() {
    // "sess" + value == 4096 exactly must stay one cookie; two more bytes of value need two.
    let name = "sess";
    let codec = codec().with_compression_threshold(usize::MAX);
    let rng = SystemRandom::new();
    let mut data = SessionData::new(NOW);
    let mut at_limit = None;
    for len in 2900..3200 {
        data.access_token = Some(noise(len, 9));
        let chunks = codec.seal(&data, name, NOW, &rng).unwrap();
        let size = name.len() + chunks[0].len();
        if chunks.len() == 1 && size == MAX_COOKIE_SIZE {
            at_limit = Some(len);
        }
        if chunks.len() == 2 {
            assert!(
                at_limit.is_some(),
                "went to two chunks at len {len} without hitting the limit exactly"
            );
            for (i, c) in chunks.iter().enumerate() {
                assert!(session::chunk_name(name, i).len() + c.len() <= MAX_COOKIE_SIZE);
            }
            assert_eq!(
                codec
                    .open(&joined_value(name, &chunks), name, NOW)
                    .unwrap()
                    .access_token,
                data.access_token
            );
            return;
        }
    }
    panic!("never needed a second chunk");
}

#[test]
fn over_nine_chunks_is_too_large_and_says_what_to_do() {
    let mut data = small_session();
    data.id_token = Some(noise(40_000, 4));
    let err = codec()
        .seal(&data, "session", NOW, &SystemRandom::new())
        .unwrap_err();
    let SessionError::TooLarge { bytes, limit } = err else {
        panic!("{err:?}")
    };
    assert!(bytes > limit);
    assert!(limit > 8 * 4000 && limit < 9 * MAX_COOKIE_SIZE);
    let msg = SessionError::TooLarge { bytes, limit }.to_string();
    assert!(msg.contains("session_contents"), "{msg}");
}

#[test]
fn tampering_with_any_byte_is_rejected() {
    let chunks = codec()
        .seal(&small_session(), "session", NOW, &SystemRandom::new())
        .unwrap();
    let value = chunks[0].as_bytes();
    for i in 0..value.len() {
        for replacement in [b'A', b'_', b'z'] {
            if value[i] == replacement {
                continue;
            }
            let mut bad = value.to_vec();
            bad[i] = replacement;
            assert!(
                codec().open(&bad, "session", NOW).is_err(),
                "byte {i} -> {replacement}"
            );
        }
    }
    // Characters outside base64url are malformed, not a panic.
    let mut bad = value.to_vec();
    bad[3] = b'.';
    assert!(matches!(
        codec().open(&bad, "session", NOW),
        Err(SessionError::Malformed(_))
    ));
}

#[test]
fn truncated_or_empty_cookies_are_rejected() {
    let chunks = codec()
        .seal(&small_session(), "session", NOW, &SystemRandom::new())
        .unwrap();
    let value = chunks[0].as_bytes();
    for len in 0..value.len() {
        assert!(
            codec().open(&value[..len], "session", NOW).is_err(),
            "prefix of {len}"
        );
    }
    let mut longer = value.to_vec();
    longer.extend_from_slice(b"AAAA");
    assert!(codec().open(&longer, "session", NOW).is_err());
}

#[test]
fn a_value_does_not_open_under_another_cookie_name() {
    let chunks = codec()
        .seal(&small_session(), "session_a", NOW, &SystemRandom::new())
        .unwrap();
    let err = codec()
        .open(chunks[0].as_bytes(), "session_b", NOW)
        .unwrap_err();
    assert!(matches!(err, SessionError::Decrypt), "{err:?}");
}

#[test]
fn a_value_opens_only_under_the_provider_and_client_it_was_sealed_for() {
    let rng = SystemRandom::new();
    let idp_a = "https://a.example/.well-known/openid-configuration";
    let idp_b = "https://b.example/.well-known/openid-configuration";
    let a = codec().with_binding(idp_a, "web");
    let sealed = a.seal(&small_session(), "session", NOW, &rng).unwrap();
    assert_eq!(
        a.open(sealed[0].as_bytes(), "session", NOW).unwrap().sub,
        small_session().sub
    );
    // Same secret and cookie name; another IdP, another client, both, no binding, and a pair
    // whose concatenation is the same bytes: none opens it.
    for (what, other) in [
        ("another provider", codec().with_binding(idp_b, "web")),
        ("another client", codec().with_binding(idp_a, "spa")),
        ("both", codec().with_binding(idp_b, "spa")),
        ("unbound", codec()),
        (
            "shifted boundary",
            codec().with_binding(&idp_a[..idp_a.len() - 1], "nweb"),
        ),
    ] {
        let err = other
            .open(sealed[0].as_bytes(), "session", NOW)
            .unwrap_err();
        assert!(matches!(err, SessionError::Decrypt), "{what}: {err:?}");
    }
    // Login state is bound the same way.
    let login = LoginState {
        state: "s".repeat(43),
        nonce: None,
        code_verifier: None,
        redirect_uri: "https://app.example/cb".into(),
        original_url: "/".into(),
        created_at: NOW,
    };
    let value = login.seal(&a, "session_login_x", &rng).unwrap();
    assert!(LoginState::open(&a, value.as_bytes(), "session_login_x", &mut Vec::new()).is_ok());
    let b = codec().with_binding(idp_b, "web");
    assert!(LoginState::open(&b, value.as_bytes(), "session_login_x", &mut Vec::new()).is_err());
}

#[test]
fn a_format_1_cookie_without_binding_is_refused_as_unsupported() {
    let rng = SystemRandom::new();
    let sealed = codec()
        .with_binding("https://a.example/", "web")
        .seal(&small_session(), "session", NOW, &rng)
        .unwrap();
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&sealed[0])
        .unwrap();
    raw[0] = 1;
    let v1 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
    let err = codec()
        .with_binding("https://a.example/", "web")
        .open(v1.as_bytes(), "session", NOW)
        .unwrap_err();
    assert!(
        matches!(err, SessionError::UnsupportedVersion(1)),
        "{err:?}"
    );
}

#[test]
fn key_rotation_keeps_old_cookies_and_seals_with_the_new_primary() {
    let rng = SystemRandom::new();
    let old = codec_with(OLD_SECRET, &[]);
    let rotated = codec_with(SECRET, &[OLD_SECRET]);
    let new_only = codec_with(SECRET, &[]);

    let old_cookie = old.seal(&small_session(), "session", NOW, &rng).unwrap();
    assert_eq!(
        rotated
            .open(old_cookie[0].as_bytes(), "session", NOW)
            .unwrap()
            .sub
            .as_deref(),
        Some("user-1")
    );

    let new_cookie = rotated
        .seal(&small_session(), "session", NOW, &rng)
        .unwrap();
    assert!(
        new_only
            .open(new_cookie[0].as_bytes(), "session", NOW)
            .is_ok(),
        "sealed with the primary"
    );
    assert!(matches!(
        old.open(new_cookie[0].as_bytes(), "session", NOW),
        Err(SessionError::UnknownKey)
    ));

    // Once the old secret is dropped from the fallbacks its cookies stop opening, with a precise reason.
    assert!(matches!(
        new_only.open(old_cookie[0].as_bytes(), "session", NOW),
        Err(SessionError::UnknownKey)
    ));
    assert_ne!(old.keys().primary_key_id(), rotated.keys().primary_key_id());
    assert_eq!(
        new_only.keys().primary_key_id(),
        rotated.keys().primary_key_id()
    );
}

#[test]
fn secrets_must_be_long_enough() {
    assert!(matches!(
        SessionKeys::new(b"short", &[]),
        Err(SessionError::SecretTooShort { len: 5, min: 16 })
    ));
    assert!(SessionKeys::new(SECRET, &[b"short"]).is_err());
    // The same secret twice is not a collision.
    assert!(SessionKeys::new(SECRET, &[SECRET]).is_ok());
}

#[test]
fn idle_rolling_and_absolute_timeouts_name_their_reason() {
    let c = codec();
    let mut d = small_session();
    assert!(c.check_expiry(&d, NOW + 899).is_ok());
    assert!(matches!(
        c.check_expiry(&d, NOW + 900),
        Err(SessionError::Expired(Expiry::Idle { at })) if at == NOW + 900
    ));

    d.last_seen = NOW + 3500;
    assert!(matches!(
        c.check_expiry(&d, NOW + 3600),
        Err(SessionError::Expired(Expiry::Rolling { .. }))
    ));

    d.rolled_at = NOW + 86_000;
    d.last_seen = NOW + 86_390;
    assert!(matches!(
        c.check_expiry(&d, NOW + 86_400),
        Err(SessionError::Expired(Expiry::Absolute { .. }))
    ));

    // Disabled timeouts (0) never expire anything.
    let forever = SessionCodec::new(
        SessionKeys::new(SECRET, &[]).unwrap(),
        SessionTimeouts {
            idling: 0,
            rolling: 0,
            absolute: 0,
            touch_threshold: 60,
        },
    );
    assert!(forever.check_expiry(&small_session(), u64::MAX).is_ok());
    assert_eq!(forever.max_age(&small_session(), NOW), None);
}

#[test]
fn open_rejects_an_expired_cookie_and_seal_refuses_one() {
    let c = codec();
    let chunks = c
        .seal(&small_session(), "session", NOW, &SystemRandom::new())
        .unwrap();
    let err = c
        .open(chunks[0].as_bytes(), "session", NOW + 901)
        .unwrap_err();
    assert!(err.to_string().contains("idling_timeout"), "{err}");
    assert!(
        c.seal(&small_session(), "session", NOW + 901, &SystemRandom::new())
            .is_err()
    );
}

#[test]
fn reissue_is_due_after_the_touch_threshold_or_three_quarters_of_rolling() {
    let c = codec();
    let mut d = small_session();
    assert!(!c.needs_reissue(&d, NOW + 59));
    assert!(c.needs_reissue(&d, NOW + 60));
    c.touch(&mut d, NOW + 60);
    assert_eq!(d.last_seen, NOW + 60);
    assert_eq!(d.rolled_at, NOW, "rolling window not due yet");
    assert!(!c.needs_reissue(&d, NOW + 100));

    d.last_seen = NOW + 2699;
    assert!(c.needs_reissue(&d, NOW + 2700), "3/4 of 3600");
    c.touch(&mut d, NOW + 2700);
    assert_eq!(d.rolled_at, NOW + 2700);
    // Cookie Max-Age follows the first timeout to end: idle (900 s from the touch).
    assert_eq!(c.max_age(&d, NOW + 2700), Some(900));
}

// ------------------------------------------------------------------------------------------------
// Cookie headers

#[test]
fn cookie_header_parsing_edge_cases() {
    let mut out = Vec::new();
    // Spaces, tabs, quotes, other cookies around ours, and our chunks in any order.
    let h1: &[u8] = b"  other=1 ;session2=\"BBB\";\tsessionid=x; session=2.AAA ;";
    let got = session::collect_chunks([h1].into_iter(), "session", &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(got.count, 2);
    assert_eq!(out, b"AAABBB");
    assert_eq!(got.present, ChunkMask(0b11));

    // Chunks split over several Cookie headers (HTTP/2 style) join too.
    let got = session::collect_chunks(
        [&b"session=2.AAA"[..], b"x=y; session2=CC"].into_iter(),
        "session",
        &mut out,
    )
    .unwrap()
    .unwrap();
    assert_eq!((got.count, out.as_slice()), (2, &b"AAACC"[..]));

    // A stale third chunk from a bigger session is ignored but reported for clearing.
    let got = session::collect_chunks(
        [&b"session=AAA; session3=old"[..]].into_iter(),
        "session",
        &mut out,
    )
    .unwrap()
    .unwrap();
    assert_eq!((got.count, out.as_slice()), (1, &b"AAA"[..]));
    assert_eq!(got.present.beyond(got.count), ChunkMask(0b100));

    // Missing and duplicated chunks are errors, not guesses.
    assert!(matches!(
        session::collect_chunks(
            [&b"session=3.A; session3=C"[..]].into_iter(),
            "session",
            &mut out
        ),
        Err(SessionError::MissingChunk { index: 2 })
    ));
    assert!(matches!(
        session::collect_chunks(
            [&b"session=A; session=B"[..]].into_iter(),
            "session",
            &mut out
        ),
        Err(SessionError::DuplicateChunk { .. })
    ));
    // A duplicate of a needed chunk is caught even after a harmless stale duplicate.
    assert!(matches!(
        session::collect_chunks([&b"session5=a; session5=b; session=A; session=B"[..]].into_iter(), "session", &mut out),
        Err(SessionError::DuplicateChunk { name }) if name == "session"
    ));
    assert!(
        session::collect_chunks(
            [&b"session5=a; session5=b; session=A"[..]].into_iter(),
            "session",
            &mut out
        )
        .is_ok()
    );
    // No first chunk: no session (a lone chunk 2 is only stale).
    assert_eq!(
        session::collect_chunks([&b"session2=A; a=b"[..]].into_iter(), "session", &mut out)
            .unwrap(),
        None
    );
    assert_eq!(
        session::collect_chunks([&b""[..], b";;; =x; noeq"].into_iter(), "session", &mut out)
            .unwrap(),
        None
    );
    assert_eq!(
        session::present_chunks([&b"session2=A; session9=b"[..]].into_iter(), "session"),
        ChunkMask(0b1_0000_0010)
    );
}

#[test]
fn strip_cookies_removes_only_ours() {
    let mut out = Vec::new();
    let header = b"a=1; session=2.AA; sessionid=keep; session2=BB;  session_login_abcdefgh=L ; b=\"q r\"; session_x=keep";
    let removed = session::strip_cookies(header, &["session"], &mut out);
    assert_eq!(removed, 3);
    assert_eq!(out, b"a=1; sessionid=keep; b=\"q r\"; session_x=keep");

    assert_eq!(
        session::strip_cookies(b"session=A", &["session"], &mut out),
        1
    );
    assert!(out.is_empty(), "nothing left: drop the header");
    assert_eq!(
        session::strip_cookies(b"r1=A; r2=B; c=d", &["r1", "r2"], &mut out),
        2
    );
    assert_eq!(out, b"c=d");
}

#[test]
fn set_and_clear_cookie_headers() {
    let attrs = CookieAttrs {
        path: "/app".into(),
        domain: Some("example.com".into()),
        secure: true,
        http_only: true,
        same_site: SameSite::Lax,
        max_age: Some(900),
    };
    attrs.validate().unwrap();
    let mut out = Vec::new();
    session::set_cookie_headers("s", &["2.AA".into(), "BB".into()], &attrs, &mut out);
    assert_eq!(
        out[0],
        "s=2.AA; Path=/app; Domain=example.com; Max-Age=900; Secure; HttpOnly; SameSite=Lax"
    );
    assert!(out[1].starts_with("s2=BB; "));

    out.clear();
    session::clear_cookie_headers("s", ChunkMask(0b101), &attrs, &mut out);
    assert_eq!(out.len(), 2);
    assert!(
        out[0].starts_with("s=; Path=/app; Domain=example.com; Max-Age=0"),
        "{}",
        out[0]
    );
    assert!(out[1].starts_with("s3=; "));

    // SameSite=None without Secure is dropped by browsers: Secure is always emitted with it.
    let none = CookieAttrs {
        secure: false,
        same_site: SameSite::None,
        max_age: None,
        ..CookieAttrs::default()
    };
    out.clear();
    session::set_cookie_headers("s", &["A".into()], &none, &mut out);
    assert_eq!(out[0], "s=A; Path=/; Secure; HttpOnly; SameSite=None");
}

#[test]
fn header_injection_through_names_or_attributes_is_refused() {
    assert!(session::validate_cookie_name("session").is_ok());
    for bad in ["", "a b", "a;b", "a=b", "a\r\nb", "é"] {
        assert!(session::validate_cookie_name(bad).is_err(), "{bad:?}");
    }
    assert!(
        codec()
            .seal(&small_session(), "bad;name", NOW, &SystemRandom::new())
            .is_err()
    );
    let bad_path = CookieAttrs {
        path: "/;\r\nSet-Cookie: x=y".into(),
        ..CookieAttrs::default()
    };
    assert!(bad_path.validate().is_err());
    let bad_domain = CookieAttrs {
        domain: Some("a.com; x".into()),
        ..CookieAttrs::default()
    };
    assert!(bad_domain.validate().is_err());
}

// ------------------------------------------------------------------------------------------------
// Login

fn authorize_params<'a>(endpoint: &'a str, extra: &'a [(String, String)]) -> AuthorizeParams<'a> {
    AuthorizeParams {
        authorization_endpoint: endpoint,
        client_id: "gate way",
        redirect_uri: "https://app.example.com/cb?x=1",
        scope: "openid profile",
        use_nonce: true,
        use_pkce: true,
        extra,
        prompt: None,
    }
}

fn query_of(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').unwrap().1;
    q.split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            let cb = flow::parse_callback(format!("code={v}").as_bytes()).unwrap();
            (k.to_owned(), cb.code.unwrap())
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str())
}

#[test]
fn pkce_s256_matches_rfc7636_appendix_b() {
    assert_eq!(
        flow::pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn start_login_builds_a_complete_authorize_url() {
    let (url, login) = flow::start_login(
        &authorize_params("https://idp.example.com/auth", &[]),
        "/orig?a=b",
        NOW,
        &SystemRandom::new(),
    )
    .unwrap();
    assert!(
        url.starts_with("https://idp.example.com/auth?response_type=code&"),
        "{url}"
    );
    assert!(!url.contains(' '), "{url}");
    let q = query_of(&url);
    assert_eq!(param(&q, "client_id"), Some("gate way"));
    assert_eq!(
        param(&q, "redirect_uri"),
        Some("https://app.example.com/cb?x=1")
    );
    assert!(url.contains("redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb%3Fx%3D1"));
    assert_eq!(param(&q, "scope"), Some("openid profile"));
    assert_eq!(param(&q, "state"), Some(login.state.as_str()));
    assert_eq!(param(&q, "nonce"), login.nonce.as_deref());
    assert_eq!(param(&q, "code_challenge_method"), Some("S256"));
    let verifier = login.code_verifier.as_deref().unwrap();
    assert_eq!(verifier.len(), 43, "32 bytes base64url");
    assert_eq!(
        param(&q, "code_challenge"),
        Some(flow::pkce_challenge(verifier).as_str())
    );
    assert_eq!(login.state.len(), 22, "16 bytes base64url");
    assert_eq!(param(&q, "prompt"), None);
    assert_eq!(login.original_url, "/orig?a=b");
    assert_eq!(login.created_at, NOW);
    assert_eq!(login.redirect_uri, "https://app.example.com/cb?x=1");
}

#[test]
fn start_login_appends_to_an_existing_query_and_applies_overrides() {
    let extra = vec![
        ("scope".to_owned(), "openid email".to_owned()),
        ("state".to_owned(), "attacker".to_owned()),
        ("kc_idp_hint".to_owned(), "google".to_owned()),
    ];
    let mut p = authorize_params("https://idp.example.com/auth?tenant=t1", &extra);
    p.use_nonce = false;
    p.use_pkce = false;
    p.prompt = Some("none");
    let (url, login) = flow::start_login(&p, "/", NOW, &SystemRandom::new()).unwrap();
    assert!(
        url.starts_with("https://idp.example.com/auth?tenant=t1&response_type=code&"),
        "{url}"
    );
    let q = query_of(&url);
    assert_eq!(param(&q, "scope"), Some("openid email"));
    assert_eq!(
        param(&q, "state"),
        Some(login.state.as_str()),
        "state cannot be overridden"
    );
    assert_eq!(q.iter().filter(|(k, _)| k == "state").count(), 1);
    assert_eq!(param(&q, "kc_idp_hint"), Some("google"));
    assert_eq!(param(&q, "prompt"), Some("none"));
    assert_eq!(param(&q, "nonce"), None);
    assert_eq!(param(&q, "code_challenge"), None);
    assert!(login.nonce.is_none() && login.code_verifier.is_none());
}

#[test]
fn state_is_drawn_from_the_injected_rng() {
    #[allow(deprecated)]
    let fixed = ring::test::rand::FixedByteRandom { byte: 0xab };
    let (_, a) =
        flow::start_login(&authorize_params("https://i/a", &[]), "/", NOW, &fixed).unwrap();
    let (_, b) =
        flow::start_login(&authorize_params("https://i/a", &[]), "/", NOW, &fixed).unwrap();
    assert_eq!(a, b, "deterministic with a fixed rng");
    assert_eq!(a.state, "q6urq6urq6urq6urq6urqw");
}

#[test]
fn many_logins_in_flight_stay_separate() {
    let rng = SystemRandom::new();
    let c = codec();
    let p = authorize_params("https://idp/auth", &[]);
    let logins: Vec<LoginState> = (0..5)
        .map(|i| {
            flow::start_login(&p, &format!("/tab{i}"), NOW + i, &rng)
                .unwrap()
                .1
        })
        .collect();
    let sealed: Vec<(String, String)> = logins
        .iter()
        .map(|l| {
            let name = l.cookie_name("session").unwrap();
            let value = l.seal(&c, &name, &rng).unwrap();
            (name, value)
        })
        .collect();
    let names: std::collections::HashSet<&str> = sealed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 5, "one cookie per login");

    let header = sealed
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
        + "; session=zzz";
    let found = flow::login_cookies([header.as_bytes()].into_iter(), "session");
    assert_eq!(found.len(), 5);

    // The callback of tab 3 finds exactly its own state.
    let mut scratch = Vec::new();
    let cb = Callback {
        code: Some("c".into()),
        state: Some(logins[3].state.clone()),
        ..Callback::default()
    };
    let name = flow::login_cookie_name("session", cb.state.as_deref().unwrap()).unwrap();
    let (_, value) = found.iter().find(|(n, _)| *n == name.as_bytes()).unwrap();
    let login = LoginState::open(&c, value, &name, &mut scratch).unwrap();
    assert_eq!(login, logins[3]);
    flow::check_callback(&cb, &login, None, NOW + 10, 300).unwrap();
    // Another tab's cookie value does not open under this name.
    assert!(LoginState::open(&c, sealed[0].1.as_bytes(), &name, &mut scratch).is_err());
    // A state that could not be ours has no cookie name at all.
    assert_eq!(flow::login_cookie_name("session", "short"), None);
    assert_eq!(flow::login_cookie_name("session", "ab;cd=efgh"), None);
}

#[test]
fn prune_expires_by_age_then_keeps_the_newest() {
    let existing = [
        ("a", NOW - 400),
        ("b", NOW - 10),
        ("c", NOW - 20),
        ("d", NOW - 30),
        ("e", 0),
    ];
    assert_eq!(flow::prune(&existing, NOW, 300, 10), vec![0, 4]);
    // Room for the new login: with max 3, keep the two newest live ones (b, c).
    assert_eq!(flow::prune(&existing, NOW, 300, 3), vec![0, 3, 4]);
    assert_eq!(flow::prune(&existing, NOW, 300, 1), vec![0, 1, 2, 3, 4]);
    assert!(flow::prune(&[], NOW, 300, 10).is_empty());
}

#[test]
fn parse_callback_decodes_and_rejects_repeats() {
    let cb =
        flow::parse_callback(b"?code=a%2Bb&state=s1&iss=https%3A%2F%2Fidp&session_state=x&foo")
            .unwrap();
    assert_eq!(cb.code.as_deref(), Some("a+b"));
    assert_eq!(cb.state.as_deref(), Some("s1"));
    assert_eq!(cb.iss.as_deref(), Some("https://idp"));
    let cb = flow::parse_callback(b"error=access_denied&error_description=User+said+no&state=s")
        .unwrap();
    assert_eq!(cb.error.as_deref(), Some("access_denied"));
    assert_eq!(cb.error_description.as_deref(), Some("User said no"));
    assert!(matches!(
        flow::parse_callback(b"state=a&state=b"),
        Err(FlowError::MalformedCallback(_))
    ));
    assert!(flow::parse_callback(b"code=%G1").is_err());
    assert_eq!(flow::parse_callback(b"").unwrap(), Callback::default());
}

#[test]
fn check_callback_failures() {
    let login = LoginState {
        state: "state-123456".into(),
        nonce: None,
        code_verifier: None,
        original_url: "/".into(),
        created_at: NOW,
        redirect_uri: "https://app/cb".into(),
    };
    let ok = Callback {
        code: Some("c".into()),
        state: Some("state-123456".into()),
        ..Callback::default()
    };
    flow::check_callback(&ok, &login, Some("https://idp"), NOW + 1, 300).unwrap();

    let wrong = Callback {
        state: Some("state-123457".into()),
        ..ok.clone()
    };
    let err = flow::check_callback(&wrong, &login, None, NOW, 300).unwrap_err();
    assert!(matches!(err, FlowError::StateMismatch));
    assert!(!err.likely_causes().is_empty());

    let iss = Callback {
        iss: Some("https://evil".into()),
        ..ok.clone()
    };
    assert!(matches!(
        flow::check_callback(&iss, &login, Some("https://idp"), NOW, 300),
        Err(FlowError::IssuerMismatch { .. })
    ));
    let iss_ok = Callback {
        iss: Some("https://idp".into()),
        ..ok.clone()
    };
    flow::check_callback(&iss_ok, &login, Some("https://idp"), NOW, 300).unwrap();

    let denied = Callback {
        error: Some("access_denied".into()),
        error_description: Some("no".into()),
        ..ok.clone()
    };
    let err = flow::check_callback(&denied, &login, None, NOW, 300).unwrap_err();
    assert_eq!(
        err.to_string(),
        "identity provider returned error \"access_denied\": no"
    );

    let no_code = Callback {
        code: None,
        ..ok.clone()
    };
    assert!(matches!(
        flow::check_callback(&no_code, &login, None, NOW, 300),
        Err(FlowError::MissingParam("code"))
    ));
    let no_state = Callback {
        state: None,
        ..ok.clone()
    };
    assert!(matches!(
        flow::check_callback(&no_state, &login, None, NOW, 300),
        Err(FlowError::MissingParam("state"))
    ));
    assert!(matches!(
        flow::check_callback(&ok, &login, None, NOW + 300, 300),
        Err(FlowError::LoginExpired { .. })
    ));

    let causes = FlowError::NoLoginState.likely_causes().join("\n");
    for needle in ["redirect_uri", "SameSite", "secret"] {
        assert!(causes.contains(needle), "{needle}");
    }
}

// ------------------------------------------------------------------------------------------------
// Token endpoint

#[test]
fn token_request_forms() {
    let f = flow::token_request_form("the code", "https://app/cb", Some("ver"));
    assert_eq!(
        flow::encode_form(&f),
        "grant_type=authorization_code&code=the%20code&redirect_uri=https%3A%2F%2Fapp%2Fcb&code_verifier=ver"
    );
    let f = flow::refresh_request_form("rt", Some("openid email"));
    assert_eq!(
        flow::encode_form(&f),
        "grant_type=refresh_token&refresh_token=rt&scope=openid%20email"
    );
    assert_eq!(flow::refresh_request_form("rt", None).len(), 2);
}

#[test]
fn token_responses_and_error_classes() {
    let t = TokenResponse::parse(
        200,
        br#"{"access_token":"at","token_type":"bearer","expires_in":"300","refresh_token":"rt2","id_token":"x.y.z"}"#,
    )
    .unwrap();
    assert_eq!(t.expires_in, Some(300));
    let mut s = small_session();
    t.apply_to(&mut s, NOW + 10, 3600);
    assert_eq!(s.access_token.as_deref(), Some("at"));
    assert_eq!(s.access_token_expires_at, Some(NOW + 310));
    assert_eq!(s.refresh_token.as_deref(), Some("rt2"));
    assert_eq!(s.version, 1);

    // A refresh without a new refresh token keeps the old one.
    TokenResponse::parse(200, br#"{"access_token":"at3","expires_in":60}"#)
        .unwrap()
        .apply_to(&mut s, NOW, 3600);
    assert_eq!(s.refresh_token.as_deref(), Some("rt2"));

    let err = TokenResponse::parse(
        400,
        br#"{"error":"invalid_grant","error_description":"expired"}"#,
    )
    .unwrap_err();
    assert!(matches!(&err, FlowError::TokenEndpoint { error, .. } if error == "invalid_grant"));
    assert!(err.is_fatal());
    let err = TokenResponse::parse(503, br#"{"error":"temporarily_unavailable"}"#).unwrap_err();
    assert!(!err.is_fatal());
    let err = TokenResponse::parse(502, b"<html>bad gateway</html>").unwrap_err();
    assert!(matches!(err, FlowError::TokenEndpointHttp { status: 502 }));
    assert!(!err.is_fatal());
    assert!(TokenResponse::parse(200, b"{}").is_err());
    assert!(TokenResponse::parse(200, br#"{"access_token":"a","token_type":"DPoP"}"#).is_err());
}

/// APISIX's required-scopes tests: the session's granted scopes come from the access token's
/// `scope` claim when it is a JWT, else from the token response.
#[test]
fn granted_scopes_come_from_a_jwt_access_token_first() {
    use base64::Engine as _;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let jwt = |claims: &str| format!("{}.{}.c2ln", b64(r#"{"alg":"RS256"}"#), b64(claims));
    let body = |at: &str| {
        format!(r#"{{"access_token":"{at}","token_type":"Bearer","scope":"openid profile"}}"#)
    };
    let scope_after = |at: &str| {
        let mut s = small_session();
        TokenResponse::parse(200, body(at).as_bytes())
            .unwrap()
            .apply_to(&mut s, NOW, 3600);
        s.scope
    };
    let with_claim = jwt(r#"{"sub":"a","scope":"read admin"}"#);
    assert_eq!(scope_after(&with_claim).as_deref(), Some("read admin"));
    assert_eq!(flow::jwt_scope(&with_claim).as_deref(), Some("read admin"));
    // No claim, a claim that is not a string, an opaque token: the token response's.
    for at in [
        jwt(r#"{"sub":"a"}"#),
        jwt(r#"{"scope":["read"]}"#),
        "opaque-token".to_string(),
        "a.b.c".to_string(),
    ] {
        assert_eq!(scope_after(&at).as_deref(), Some("openid profile"), "{at}");
    }
}

#[test]
fn access_token_refresh_policy() {
    let mut s = small_session();
    s.access_token_expires_at = Some(NOW + 100);
    assert_eq!(flow::access_token_state(&s, NOW, 30), TokenState::Fresh);
    assert_eq!(
        flow::access_token_state(&s, NOW + 70, 30),
        TokenState::NeedsRefresh
    );
    assert_eq!(
        flow::access_token_state(&s, NOW + 100, 30),
        TokenState::Expired
    );
    s.access_token_expires_at = None;
    assert_eq!(
        flow::access_token_state(&s, u64::MAX, 30),
        TokenState::Fresh
    );
    assert!(!flow::needs_reauthentication(&s, NOW + 10, None));
    assert!(flow::needs_reauthentication(&s, NOW + 10, Some(10)));
    assert!(!flow::needs_reauthentication(&s, NOW + 9, Some(10)));
}

// ------------------------------------------------------------------------------------------------
// ID token claims

fn rules() -> IdTokenRules<'static> {
    IdTokenRules {
        issuer: "https://idp",
        client_id: "gw",
        nonce: Some("n-1"),
        leeway: 60,
        max_age: None,
    }
}

fn id_claims(over: serde_json::Value) -> Vec<u8> {
    let mut base = serde_json::json!({
        "iss": "https://idp", "aud": "gw", "sub": "u1", "nonce": "n-1", "sid": "s1",
        "exp": NOW + 300, "iat": NOW, "auth_time": NOW - 50
    });
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    serde_json::to_vec(&base).unwrap()
}

fn claim_err(over: serde_json::Value, rules: &IdTokenRules<'_>) -> ClaimError {
    match flow::check_id_token_claims(&id_claims(over), rules, NOW) {
        Err(FlowError::IdToken(e)) => e,
        other => panic!("expected an ID token error, got {other:?}"),
    }
}

#[test]
fn id_token_claims_accept_a_valid_token() {
    let info =
        flow::check_id_token_claims(&id_claims(serde_json::json!({})), &rules(), NOW).unwrap();
    assert_eq!(info.sub, "u1");
    assert_eq!(info.sid.as_deref(), Some("s1"));
    assert_eq!(info.exp, NOW + 300);
    // Several audiences are fine with azp naming us; a refresh (no nonce expected) is fine too.
    let multi = serde_json::json!({"aud": ["other", "gw"], "azp": "gw"});
    flow::check_id_token_claims(&id_claims(multi), &rules(), NOW).unwrap();
    let refresh = IdTokenRules {
        nonce: None,
        ..rules()
    };
    flow::check_id_token_claims(
        &id_claims(serde_json::json!({"nonce": null})),
        &refresh,
        NOW,
    )
    .unwrap();
    // Within leeway.
    flow::check_id_token_claims(
        &id_claims(serde_json::json!({"exp": NOW - 30, "iat": NOW + 30})),
        &rules(),
        NOW,
    )
    .unwrap();
}

#[test]
fn id_token_claims_each_failure_kind() {
    use serde_json::json;
    let r = rules();
    assert!(matches!(
        claim_err(json!({"iss": "https://evil"}), &r),
        ClaimError::Issuer { .. }
    ));
    assert_eq!(
        claim_err(json!({"iss": null}), &r),
        ClaimError::Missing("iss")
    );
    assert_eq!(
        claim_err(json!({"aud": "other"}), &r),
        ClaimError::Audience("gw".into())
    );
    assert_eq!(
        claim_err(json!({"aud": ["a", "b"]}), &r),
        ClaimError::Audience("gw".into())
    );
    assert_eq!(
        claim_err(json!({"aud": null}), &r),
        ClaimError::Missing("aud")
    );
    assert_eq!(
        claim_err(json!({"aud": ["gw", "b"]}), &r),
        ClaimError::AzpMissing
    );
    assert!(matches!(
        claim_err(json!({"azp": "other"}), &r),
        ClaimError::Azp { .. }
    ));
    assert_eq!(claim_err(json!({"nonce": "n-2"}), &r), ClaimError::Nonce);
    assert_eq!(
        claim_err(json!({"nonce": null}), &r),
        ClaimError::Missing("nonce")
    );
    assert!(matches!(
        claim_err(json!({"exp": NOW - 60}), &r),
        ClaimError::Expired { .. }
    ));
    assert_eq!(
        claim_err(json!({"exp": null}), &r),
        ClaimError::Missing("exp")
    );
    assert!(matches!(
        claim_err(json!({"iat": NOW + 61}), &r),
        ClaimError::IssuedInFuture { .. }
    ));
    assert_eq!(
        claim_err(json!({"iat": null}), &r),
        ClaimError::Missing("iat")
    );
    assert_eq!(
        claim_err(json!({"sub": null}), &r),
        ClaimError::Missing("sub")
    );
    assert_eq!(
        claim_err(json!({"sub": ""}), &r),
        ClaimError::Missing("sub")
    );
    let max_age = IdTokenRules {
        max_age: Some(10),
        leeway: 0,
        ..rules()
    };
    assert!(matches!(
        claim_err(json!({}), &max_age),
        ClaimError::AuthTooOld { .. }
    ));
    assert_eq!(
        claim_err(json!({"auth_time": null}), &max_age),
        ClaimError::Missing("auth_time")
    );
    assert!(matches!(
        claim_err(json!({"exp": "soon"}), &r),
        ClaimError::Malformed(_)
    ));
    assert!(matches!(
        flow::check_id_token_claims(b"[1,2]", &r, NOW),
        Err(FlowError::IdToken(ClaimError::Malformed(_)))
    ));
    assert!(flow::check_id_token_claims(b"\xff\xfe", &r, NOW).is_err());
}

// ------------------------------------------------------------------------------------------------
// Redirects and logout

#[test]
fn safe_redirect_target_allows_only_same_origin_paths() {
    assert_eq!(flow::safe_redirect_target(b"/").as_deref(), Some("/"));
    assert_eq!(
        flow::safe_redirect_target(b"/app/x?y=1&z#frag").as_deref(),
        Some("/app/x?y=1&z#frag")
    );
    assert_eq!(
        flow::safe_redirect_target("/caf\u{e9} x".as_bytes()).as_deref(),
        Some("/caf%C3%A9%20x")
    );
    for bad in [
        &b"//evil.com"[..],
        b"/\\evil.com",
        b"https://evil.com/",
        b"javascript:alert(1)",
        b"evil.com",
        b"",
        b"/ok\r\nSet-Cookie: x=y",
        b"/\t/evil.com",
        b"/x\0",
    ] {
        assert_eq!(
            flow::safe_redirect_target(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A backslash later in the path is harmless once escaped.
    assert_eq!(
        flow::safe_redirect_target(b"/a\\b").as_deref(),
        Some("/a%5Cb")
    );
}

#[test]
fn logout_redirect_cases() {
    assert_eq!(
        flow::logout_redirect(Some("https://idp/logout"), Some("x.y.z"), Some("https://app/bye?a=1")),
        LogoutAction::RedirectTo(
            "https://idp/logout?id_token_hint=x.y.z&post_logout_redirect_uri=https%3A%2F%2Fapp%2Fbye%3Fa%3D1".into()
        )
    );
    assert_eq!(
        flow::logout_redirect(Some("https://idp/logout?client=1"), Some("t"), None),
        LogoutAction::RedirectTo("https://idp/logout?client=1&id_token_hint=t".into())
    );
    assert_eq!(
        flow::logout_redirect(Some("https://idp/logout"), None, None),
        LogoutAction::RedirectTo("https://idp/logout".into())
    );
    assert_eq!(
        flow::logout_redirect(None, Some("t"), Some("https://app/bye")),
        LogoutAction::RedirectTo(
            "https://app/bye?post_logout_redirect_uri=https%3A%2F%2Fapp%2Fbye".into()
        )
    );
    // APISIX TEST 36, and a URI that has a query already (lua-resty-openidc's combine_uri).
    assert_eq!(
        flow::logout_redirect(None, None, Some("https://iresty.com")),
        LogoutAction::RedirectTo(
            "https://iresty.com?post_logout_redirect_uri=https%3A%2F%2Firesty.com".into()
        )
    );
    assert_eq!(
        flow::logout_redirect(Some(""), Some("t"), Some("/bye?a=1")),
        LogoutAction::RedirectTo("/bye?a=1&post_logout_redirect_uri=%2Fbye%3Fa%3D1".into())
    );
    assert_eq!(
        flow::logout_redirect(None, Some("t"), None),
        LogoutAction::LoggedOutPage
    );
}

fn logout_claims(over: serde_json::Value) -> Vec<u8> {
    let mut base = serde_json::json!({
        "iss": "https://idp", "aud": ["gw"], "iat": NOW, "jti": "j1", "sid": "s1", "sub": "u1",
        "events": { flow::BACKCHANNEL_LOGOUT_EVENT: {} }
    });
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    serde_json::to_vec(&base).unwrap()
}

fn logout_err(over: serde_json::Value) -> ClaimError {
    match flow::check_logout_token_claims(&logout_claims(over), "https://idp", "gw", NOW, 60) {
        Err(FlowError::LogoutToken(e)) => e,
        other => panic!("expected a logout token error, got {other:?}"),
    }
}

#[test]
fn logout_token_checks() {
    use serde_json::json;
    let s =
        flow::check_logout_token_claims(&logout_claims(json!({})), "https://idp", "gw", NOW, 60)
            .unwrap();
    assert_eq!(
        s,
        LogoutSubject {
            sid: Some("s1".into()),
            sub: Some("u1".into()),
            iat: NOW,
            jti: Some("j1".into())
        }
    );
    let sub_only = logout_claims(json!({"sid": null}));
    assert!(flow::check_logout_token_claims(&sub_only, "https://idp", "gw", NOW, 60).is_ok());

    assert!(matches!(
        logout_err(json!({"iss": "https://x"})),
        ClaimError::Issuer { .. }
    ));
    assert_eq!(
        logout_err(json!({"aud": "other"})),
        ClaimError::Audience("gw".into())
    );
    assert_eq!(logout_err(json!({"iat": null})), ClaimError::Missing("iat"));
    assert!(matches!(
        logout_err(json!({"iat": NOW + 100})),
        ClaimError::IssuedInFuture { .. }
    ));
    assert!(matches!(
        logout_err(json!({"exp": NOW - 61})),
        ClaimError::Expired { .. }
    ));
    assert_eq!(
        logout_err(json!({"events": null})),
        ClaimError::Missing("events")
    );
    assert_eq!(
        logout_err(json!({"events": {"http://other": {}}})),
        ClaimError::NotLogoutEvent
    );
    assert_eq!(
        logout_err(json!({"events": {flow::BACKCHANNEL_LOGOUT_EVENT: "yes"}})),
        ClaimError::NotLogoutEvent
    );
    assert_eq!(
        logout_err(json!({"nonce": "n"})),
        ClaimError::NonceInLogoutToken
    );
    assert_eq!(
        logout_err(json!({"sid": null, "sub": null})),
        ClaimError::NoSubject
    );
}

#[test]
fn revocation_list_by_sid_and_by_sub() {
    let mut r = Revocations::new(3);
    let mut s = small_session();
    assert!(!r.is_revoked(&s));

    r.revoke(
        &LogoutSubject {
            sid: Some("idp-session-1".into()),
            sub: None,
            iat: NOW,
            jti: None,
        },
        NOW + 100,
    );
    assert!(r.is_revoked(&s));
    s.sid = Some("idp-session-2".into());
    assert!(!r.is_revoked(&s));

    // By sub: sessions created at or before the logout are revoked; a later login is not.
    r.revoke(
        &LogoutSubject {
            sid: None,
            sub: Some("user-1".into()),
            iat: NOW + 5,
            jti: None,
        },
        NOW + 200,
    );
    assert!(r.is_revoked(&s));
    let later = SessionData {
        created_at: NOW + 6,
        ..s.clone()
    };
    assert!(!r.is_revoked(&later));

    // Bounded: a full list evicts the entry that expires soonest.
    r.revoke(
        &LogoutSubject {
            sid: Some("b".into()),
            sub: None,
            iat: NOW,
            jti: None,
        },
        NOW + 300,
    );
    r.revoke(
        &LogoutSubject {
            sid: Some("c".into()),
            sub: None,
            iat: NOW,
            jti: None,
        },
        NOW + 400,
    );
    assert_eq!(r.len(), 3);
    let first = SessionData {
        sid: Some("idp-session-1".into()),
        sub: None,
        ..small_session()
    };
    assert!(!r.is_revoked(&first), "evicted as soonest to expire");

    r.prune(NOW + 300);
    assert_eq!(r.len(), 1, "only c lives past NOW+300");
    r.prune(NOW + 400);
    assert!(r.is_empty());
}
