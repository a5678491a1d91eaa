//! The fuzz harnesses: one function per target, each feeding arbitrary bytes to the sans-IO code of
//! `shardgate-gateway` and `shardgate-oidc` the way the gateway calls it, and asserting what must hold
//! for every input (no panic, spans inside the buffer, a split read decodes like a whole one, a
//! sealed value opens to what was sealed).
//!
//! The logic stays in the crates; the libFuzzer targets in `fuzz_targets/` are one line each. The
//! same functions are replayed on stable by `gateway/tests/fuzz_replay.rs` (seed corpus, crash
//! regressions and a bounded pseudo-random loop), which includes this file as a module.

use std::sync::OnceLock;

use shardgate_gateway::config;
use shardgate_gateway::http1::path::{self, Normal, PathError};
use shardgate_gateway::http1::{
    self, BodyFraming, ChunkEvent, ChunkedDecoder, Limits, Method, ParseError, Parsed, RequestHead,
    ResponseHead,
};
use shardgate_gateway::route::RouteTable;
use shardgate_oidc::claims::{AudienceRule, ClaimsPolicy, ClaimsView};
use shardgate_oidc::discovery::ProviderMetadata;
use shardgate_oidc::flow::{self, LoginState, Revocations, TokenResponse};
use shardgate_oidc::idp::client as idp_client;
use shardgate_oidc::introspect::IntrospectionResponse;
use shardgate_oidc::jwk::{Key, KeySet};
use shardgate_oidc::jwt::{self, Alg, AlgPolicy, Jwt, SigningKey};
use shardgate_oidc::session::{
    self, SessionCodec, SessionData, SessionKeys, SessionTimeouts, SystemRandom,
};

/// A harness: arbitrary bytes in, a panic on any broken invariant.
pub type Harness = fn(&[u8]);

/// Every target by name.
pub const TARGETS: &[(&str, Harness)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("path_route", path_route),
    ("config_load", config_load),
    ("jwt", jwt),
    ("session", session),
    ("logout_token", logout_token),
    ("idp_response", idp_response),
];

/// "Now" for every time check: fixed, so a run is reproducible.
const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://idp.example.com";
const CLIENT_ID: &str = "gateway";
const HMAC_SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
const SESSION_SECRET: &[u8] = b"a session secret of 32+ bytes!!!";
const COOKIE: &str = "session";

/// Pops the first byte as a mode selector.
fn split_mode(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => (0, data),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1 heads and bodies

/// A request head as the connection loop reads it: parsed again from the start of the buffer after
/// every read, so a head accepted whole must be `Partial` (never an error) at every shorter length.
pub fn request_head(data: &[u8]) {
    let limits = Limits::default();
    let mut head = RequestHead::new();
    let Ok(Parsed::Complete) = http1::parse_request(data, &limits, &mut head) else {
        return;
    };
    let n = head.head_len;
    assert!(n <= data.len() && n >= 4);
    assert_eq!(&data[n - 4..n], b"\r\n\r\n", "a head ends with CRLF CRLF");
    for h in &head.headers {
        assert!(h.name.end as usize <= n && h.value.end as usize <= n);
        assert!(!h.name.is_empty());
    }
    for span in [head.method_span, head.target, head.path]
        .into_iter()
        .chain(head.query)
        .chain(head.host)
        .chain(head.connection_tokens.iter().copied())
    {
        assert!(span.start <= span.end && span.end as usize <= n);
    }
    assert!(head.version_minor <= 1);
    if head.method != Method::Connect {
        assert!(!head.path_bytes(data).is_empty());
    }
    if let BodyFraming::Length(_) | BodyFraming::Chunked = head.framing {
        assert!(
            head.header(data, "content-length").is_some()
                || head.header(data, "transfer-encoding").is_some()
        );
    }
    let _ = head.is_connection_listed(data, b"keep-alive");

    // The same head alone parses the same.
    let (method, target, framing, keep_alive) =
        (head.method, head.target, head.framing, head.keep_alive);
    let mut again = RequestHead::new();
    assert_eq!(
        http1::parse_request(&data[..n], &limits, &mut again),
        Ok(Parsed::Complete)
    );
    assert_eq!(
        (again.head_len, again.method, again.target, again.framing),
        (n, method, target, framing)
    );
    assert_eq!(again.keep_alive, keep_alive);
    // Any shorter read of it is "valid so far".
    let cut = usize::from(data[0]) * n / 256;
    assert_eq!(
        http1::parse_request(&data[..cut], &limits, &mut again),
        Ok(Parsed::Partial),
        "a prefix ({cut} of {n} bytes) of an accepted head was refused"
    );
}

/// A response head; the first byte picks the method of the request it answers.
pub fn response_head(data: &[u8]) {
    let (mode, buf) = split_mode(data);
    let method = match mode % 4 {
        0 => Method::Get,
        1 => Method::Head,
        2 => Method::Connect,
        _ => Method::Post,
    };
    let limits = Limits::default();
    let mut head = ResponseHead::new();
    let Ok(Parsed::Complete) = http1::parse_response(buf, &limits, method, &mut head) else {
        return;
    };
    let n = head.head_len;
    assert!(n <= buf.len());
    assert!((100..=999).contains(&head.status));
    for h in &head.headers {
        assert!(h.name.end as usize <= n && h.value.end as usize <= n);
    }
    assert!(head.reason.end as usize <= n);
    if method == Method::Head || head.status == 204 || head.status == 304 || head.is_interim() {
        assert_eq!(
            head.framing,
            BodyFraming::None,
            "a body where none may follow"
        );
    }
    if head.framing == BodyFraming::CloseDelimited {
        assert!(
            !head.keep_alive,
            "a close-delimited body on a kept connection"
        );
    }
    let (status, framing) = (head.status, head.framing);
    let mut again = ResponseHead::new();
    assert_eq!(
        http1::parse_response(&buf[..n], &limits, method, &mut again),
        Ok(Parsed::Complete)
    );
    assert_eq!(
        (again.head_len, again.status, again.framing),
        (n, status, framing)
    );
    let cut = usize::from(mode) * n / 256;
    assert_eq!(
        http1::parse_response(&buf[..cut], &limits, method, &mut again),
        Ok(Parsed::Partial),
        "a prefix ({cut} of {n} bytes) of an accepted head was refused"
    );
}

/// What a chunked body decoded to, fed one way or another.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Done { body: Vec<u8>, trailers: Vec<u8> },
    Failed(ParseError),
    NeedMore { body: Vec<u8> },
}

/// Feeds `input` to a fresh decoder in pieces of the given sizes (the rest in one piece), keeping
/// the decoder's contract: bytes it did not consume come again, in front of what arrives next.
fn decode_pieces(input: &[u8], pieces: &mut dyn Iterator<Item = usize>) -> Decoded {
    const MAX_TRAILERS: usize = 1024;
    let mut dec = ChunkedDecoder::new(MAX_TRAILERS);
    let mut body = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        let take = pieces.next().unwrap_or(usize::MAX).min(input.len() - fed);
        pending.extend_from_slice(&input[fed..fed + take]);
        fed += take;
        loop {
            match dec.decode(&pending) {
                Err(e) => return Decoded::Failed(e),
                Ok((used, event)) => {
                    assert!(used <= pending.len());
                    match event {
                        ChunkEvent::Data(span) => {
                            assert!(span.end as usize <= used && !span.is_empty());
                            body.extend_from_slice(span.of(&pending));
                        }
                        ChunkEvent::Trailers(span) => {
                            assert!(span.end as usize <= used);
                            assert!(dec.is_done());
                            assert!(span.len() <= MAX_TRAILERS);
                            let trailers = span.of(&pending).to_vec();
                            // A finished decoder consumes nothing more.
                            assert_eq!(dec.decode(b"0\r\n\r\n"), Ok((0, ChunkEvent::End)));
                            return Decoded::Done { body, trailers };
                        }
                        ChunkEvent::End => unreachable!("End before Trailers"),
                        ChunkEvent::NeedMore => {
                            pending.drain(..used);
                            break;
                        }
                    }
                    pending.drain(..used);
                }
            }
        }
        if fed == input.len() {
            return Decoded::NeedMore { body };
        }
    }
}

/// The chunked decoder: the whole input at once and the same input split at fuzzer-chosen points
/// must decode to the same body, trailers and verdict.
pub fn chunked(data: &[u8]) {
    let (seed, input) = split_mode(data);
    let whole = decode_pieces(input, &mut std::iter::empty());
    let mut state = u32::from(seed) | 0x100;
    let mut sizes = std::iter::from_fn(|| {
        // xorshift: cheap, deterministic splits of 1..=16 bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Some((state % 16 + 1) as usize)
    });
    let split = decode_pieces(input, &mut sizes);
    let one_by_one = decode_pieces(input, &mut std::iter::repeat(1));
    assert_eq!(whole, split, "split reads decoded differently");
    assert_eq!(whole, one_by_one, "byte-by-byte reads decoded differently");
}

// ---------------------------------------------------------------------------------------------
// Routing

const ROUTES_YAML: &str = r#"
upstreams:
  - id: app
    nodes: { "127.0.0.1:1980": 1 }
routes:
  - { id: public, uri: "/*", upstream_id: app }
  - { id: api, uri: "/api/*", upstream_id: app }
  - { id: admin, uris: ["/api/admin/*", "/admin"], methods: [GET, POST], upstream_id: app, priority: 5 }
  - { id: exact, uri: /login, upstream_id: app }
  - { id: host, uri: "/api/*", hosts: ["*.example.com", "api.test"], upstream_id: app }
  - { id: off, uri: /off, status: 0, upstream_id: app }
"#;

fn routes() -> &'static (config::Config, RouteTable) {
    static ROUTES: OnceLock<(config::Config, RouteTable)> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let loaded = config::load_str_with_env(ROUTES_YAML, &|_| None)
            .unwrap_or_else(|e| panic!("the routing fixture is a valid config: {e}"));
        let table = RouteTable::build(&loaded.config.routes);
        (loaded.config, table)
    })
}

fn uri_matches(pattern: &str, path: &[u8]) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix.as_bytes()),
        None => pattern.as_bytes() == path,
    }
}

/// Whether the raw bytes justify refusing `raw` as `err`.
fn refusal_is_justified(raw: &[u8], err: PathError) -> bool {
    let has_escape = |pred: &dyn Fn(u8) -> bool| {
        raw.windows(3).any(|w| {
            w[0] == b'%'
                && std::str::from_utf8(&w[1..])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .is_some_and(pred)
        })
    };
    let control = |b: u8| b < 0x20 || b == 0x7f;
    match err {
        PathError::NotAbsolute => raw.first() != Some(&b'/'),
        PathError::EncodedSlash => has_escape(&|b| b == b'/'),
        PathError::Backslash => raw.contains(&b'\\') || has_escape(&|b| b == b'\\'),
        PathError::ControlByte => raw.iter().any(|&b| control(b)) || has_escape(&control),
        PathError::BadEscape => raw.iter().enumerate().any(|(i, &b)| {
            b == b'%'
                && !(raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        }),
        PathError::Semicolon => raw.contains(&b';'),
        PathError::Delimiter => raw.contains(&b'?') || raw.contains(&b'#'),
        // A `..`, possibly encoded (`%2e`), must be there.
        PathError::AboveRoot => raw
            .windows(2)
            .any(|w| w == b".." || w == b"%2" || w == b".%"),
    }
}

/// The normal form of `raw` (or why it is refused), checking what every normal form must be:
/// absolute, no `//`, no dot-segment, and the bytes forwarded upstream normalise to it again.
pub fn normal_form(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::new();
    let normal = match path::normalize(raw, &mut out) {
        Err(e) => {
            assert!(
                refusal_is_justified(raw, e),
                "refused as {e:?} without cause"
            );
            return Err(e);
        }
        Ok(Normal::AsIs) => raw.to_vec(),
        Ok(Normal::Rewritten) => {
            assert_ne!(out.as_slice(), raw, "Rewritten to the same bytes");
            out
        }
    };
    assert_eq!(normal.first(), Some(&b'/'));
    assert!(
        !normal.windows(2).any(|w| w == b"//"),
        "// left in {normal:?}"
    );
    for seg in normal.split(|b| *b == b'/') {
        assert!(
            seg != b"." && seg != b"..",
            "a dot-segment left in {normal:?}"
        );
    }
    let mut upstream = Vec::new();
    path::encode_into(&normal, &mut upstream);
    let mut again = Vec::new();
    let reread = match path::normalize(&upstream, &mut again) {
        Ok(Normal::AsIs) => upstream.clone(),
        Ok(Normal::Rewritten) => again,
        Err(e) => panic!("the forwarded path {upstream:?} is refused: {e:?}"),
    };
    assert_eq!(reread, normal, "the upstream would read another path");
    Ok(normal)
}

/// Normalise, then route on the normal form as the connection loop does, on
/// `host \n path \n method`: the route found must match, and "none found" must mean that no
/// host-independent route matches.
pub fn path_route(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let host = parts.next().filter(|h| !h.is_empty());
    let raw = parts.next().unwrap_or(b"/");
    let method = parts.next().unwrap_or(b"GET");
    let Ok(path) = normal_form(raw) else {
        return;
    };
    let (cfg, table) = routes();
    match table.find(host, &path, method) {
        Some(i) => {
            let route = &cfg.routes[i];
            assert!(route.enabled, "a disabled route matched");
            assert!(route.methods.allows(method));
            assert!(route.uris.iter().any(|u| uri_matches(u, &path)));
        }
        None => {
            for route in &cfg.routes {
                assert!(
                    !(route.enabled
                        && route.hosts.is_empty()
                        && route.methods.allows(method)
                        && route.uris.iter().any(|u| uri_matches(u, &path))),
                    "route {} matches but none was found",
                    route.id
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// The config loader on arbitrary text: a config or a list of problems, never a panic; an
/// accepted config builds a route table.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name {
        "ADMIN_KEY" | "OIDC_CLIENT_SECRET" | "SESSION_SECRET" => {
            Some("0123456789abcdef0123".to_owned())
        }
        _ => None,
    };
    match config::load_str_with_env(text, &env) {
        Ok(loaded) => {
            let table = RouteTable::build(&loaded.config.routes);
            let _ = table.find(Some(b"example.com"), b"/", b"GET");
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JWT / JWK

struct Keys {
    jwks: KeySet,
    hmac_set: KeySet,
    hmac: SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        jwks: KeySet::from_json(include_bytes!("../../../oidc/testdata/jwks.json"))
            .unwrap_or_else(|e| panic!("the test JWKS loads: {e}")),
        hmac_set: KeySet::from_keys(vec![Key::symmetric(HMAC_SECRET).with_kid("hs")]),
        hmac: SigningKey::hmac(HMAC_SECRET),
    })
}

fn claims_policy() -> ClaimsPolicy {
    ClaimsPolicy {
        valid_issuers: vec![ISSUER.to_owned()],
        audience: Some(AudienceRule {
            claim: "aud".to_owned(),
            required: true,
            expected: vec![CLIENT_ID.to_owned()],
        }),
        required_scopes: vec!["read".to_owned()],
        leeway_secs: 120,
        require_exp: true,
    }
}

/// Checks a token the way a bearer route does: parse, signature under the route's policy, claims.
fn verify_like_a_route(token: &str, keys: &KeySet, policy: &AlgPolicy) -> Option<Vec<u8>> {
    let jwt = Jwt::parse(token).ok()?;
    assert!(jwt.signing_input().len() < token.len());
    let verified = jwt::verify_signature(&jwt, keys, policy);
    if verified.is_err() {
        return None;
    }
    assert_ne!(jwt.alg(), Alg::None, "an unsigned token verified");
    if let Ok(view) = ClaimsView::parse(jwt.payload()) {
        let _ = claims_policy().check(&view, NOW);
        let _ = view.scopes().count();
        let _ = view.cache_until(NOW, 300);
    }
    Some(jwt.payload().to_vec())
}

/// `payload` signed with the fuzzing secret, when it can be a token at all (a JWS with an empty
/// payload or over `MAX_TOKEN_LEN` is refused by `Jwt::parse` by design).
fn sign_hs256(payload: &[u8]) -> Option<String> {
    if payload.is_empty() {
        return None;
    }
    let token = jwt::sign(Alg::HS256, Some("hs"), payload, &keys().hmac)
        .unwrap_or_else(|e| panic!("HS256 signs any payload: {e}"));
    (token.len() <= jwt::MAX_TOKEN_LEN).then_some(token)
}

/// What any HS256 verifier must insist on: three parts, a header whose `alg` is HS256, and a last
/// part that is exactly the unpadded base64url of HMAC-SHA256 over the first two (ring directly).
fn hs256_reference(token: &str) -> bool {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let alg_is_hs256 = b64
        .decode(h)
        .ok()
        .and_then(|header| serde_json::from_slice::<serde_json::Value>(&header).ok())
        .and_then(|v| v.get("alg")?.as_str().map(|a| a == "HS256"))
        .unwrap_or(false);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HMAC_SECRET);
    let tag = ring::hmac::sign(&key, format!("{h}.{p}").as_bytes());
    alg_is_hs256 && sig == b64.encode(tag)
}

/// JWS parse and verify, JWKS and PEM parsing, claims. The first byte picks the mode.
pub fn jwt(data: &[u8]) {
    let (mode, rest) = split_mode(data);
    let k = keys();
    match mode % 4 {
        // A token from the wire, against the IdP's keys and against a shared secret.
        0 => {
            let token = String::from_utf8_lossy(rest);
            let _ = verify_like_a_route(&token, &k.jwks, &AlgPolicy::default());
            let hs = verify_like_a_route(&token, &k.hmac_set, &AlgPolicy::only(Alg::HS256));
            assert!(
                hs.is_none() || hs256_reference(&token),
                "HS256 accepted a bad MAC"
            );
        }
        // A JWK set from the IdP: every key it keeps can be selected and refuses a foreign signature.
        1 => {
            if let Ok(set) = KeySet::from_json(rest) {
                let _ = set.fingerprint();
                let token = jwt::sign(Alg::HS256, None, br#"{"sub":"x"}"#, &k.hmac)
                    .unwrap_or_else(|e| panic!("HS256 signs: {e}"));
                for key in set.keys() {
                    for alg in [Alg::RS256, Alg::PS256, Alg::ES256, Alg::ES384, Alg::EdDSA] {
                        // A key named by a kid no other key has is found (without a kid, or
                        // with a shared one, the choice may be refused as ambiguous).
                        let unique = key
                            .kid()
                            .is_some_and(|kid| set.kids().filter(|k| *k == kid).count() == 1);
                        if key.supports(alg) && unique {
                            assert!(set.select(key.kid(), alg).is_ok());
                        }
                    }
                    let _ = key.rsa_bits();
                }
                let policy = AlgPolicy::only(Alg::HS256);
                if let Ok(jwt) = Jwt::parse(&token) {
                    let _ = jwt::verify_signature(&jwt, &set, &policy);
                }
            }
        }
        // PEM public and private keys (configured `public_key`, `private_key_jwt` keys).
        2 => {
            let text = String::from_utf8_lossy(rest);
            let _ = Key::from_public_pem(&text);
            if let Ok(key) = SigningKey::from_pem(&text) {
                let alg = key.default_alg();
                let token = jwt::sign(alg, Some("k"), b"{}", &key);
                assert!(token.is_ok(), "a loaded key cannot sign with its own alg");
            }
        }
        // Claims we signed ourselves: the signature must verify, and the claims are checked.
        _ => {
            let Some(token) = sign_hs256(rest) else {
                return;
            };
            let payload = verify_like_a_route(&token, &k.hmac_set, &AlgPolicy::only(Alg::HS256));
            assert_eq!(
                payload.as_deref(),
                Some(rest),
                "a signed token did not verify"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions

fn codec() -> &'static SessionCodec {
    static CODEC: OnceLock<SessionCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let keys = SessionKeys::new(SESSION_SECRET, &[])
            .unwrap_or_else(|e| panic!("the session secret is valid: {e}"));
        // Timeouts off: the round trip below must not depend on the fuzzed timestamps.
        let timeouts = SessionTimeouts {
            idling: 0,
            rolling: 0,
            absolute: 0,
            touch_threshold: 0,
        };
        SessionCodec::new(keys, timeouts)
            .with_binding(ISSUER, CLIENT_ID)
            .with_compression_threshold(64)
    })
}

/// Session cookies. The first byte picks the mode.
pub fn session(data: &[u8]) {
    let (mode, rest) = split_mode(data);
    let codec = codec();
    let rng = SystemRandom::new();
    let mut joined = Vec::new();
    let mut scratch = Vec::new();
    match mode % 3 {
        // Cookie headers from a browser (or an attacker): reassemble the chunks and open them.
        0 => {
            let headers = rest.split(|b| *b == b'\n');
            if let Ok(Some(collected)) = session::collect_chunks(headers, COOKIE, &mut joined) {
                assert!((1..=session::MAX_CHUNKS).contains(&collected.count));
                let opened = codec.open_with(&joined, COOKIE, NOW, &mut scratch);
                assert!(opened.is_err(), "a cookie nobody sealed opened");
                let login = LoginState::open(codec, &joined, COOKIE, &mut scratch);
                assert!(login.is_err(), "a login cookie nobody sealed opened");
            }
            let present = session::present_chunks(rest.split(|b| *b == b'\n'), COOKIE);
            let _ = present.names(COOKIE).count();
        }
        // What runs after authentication: flags, inflate, JSON, with arbitrary plaintext.
        1 => {
            let value = codec
                .seal_plaintext(rest, COOKIE, &rng)
                .unwrap_or_else(|e| panic!("sealing raw bytes: {e}"));
            if let Ok(data) = codec.open_with(value.as_bytes(), COOKIE, NOW, &mut scratch) {
                let _ = codec.max_age(&data, NOW);
                let _ = codec.needs_reissue(&data, NOW);
            }
            let _ = LoginState::open(codec, value.as_bytes(), COOKIE, &mut scratch);
            // Bound to another cookie name, it must not open.
            assert!(
                codec
                    .open_with(value.as_bytes(), "other", NOW, &mut scratch)
                    .is_err()
            );
        }
        // A session the gateway could hold: seal, split into cookies, collect, open, compare.
        _ => {
            let Ok(data) = serde_json::from_slice::<SessionData>(rest) else {
                return;
            };
            let Ok(chunks) = codec.seal(&data, COOKIE, NOW, &rng) else {
                return;
            };
            let header = chunks
                .iter()
                .enumerate()
                .rev()
                .map(|(i, v)| format!("{}={v}", session::chunk_name(COOKIE, i)))
                .collect::<Vec<_>>()
                .join("; ");
            let collected =
                session::collect_chunks(std::iter::once(header.as_bytes()), COOKIE, &mut joined);
            assert!(
                matches!(collected, Ok(Some(_))),
                "our own cookies: {collected:?}"
            );
            let opened = codec
                .open_with(&joined, COOKIE, NOW, &mut scratch)
                .unwrap_or_else(|e| panic!("a sealed session did not open: {e}"));
            let before = serde_json::to_vec(&data).unwrap_or_default();
            let after = serde_json::to_vec(&opened).unwrap_or_default();
            assert_eq!(before, after, "the session changed through seal and open");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Back-channel logout

/// Back-channel logout tokens: from the wire, or claims we sign so the claim checks are reached.
pub fn logout_token(data: &[u8]) {
    let (mode, rest) = split_mode(data);
    let k = keys();
    let policy = AlgPolicy::only(Alg::HS256);
    let payload = if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        let Ok(jwt) = Jwt::parse(&token) else {
            return;
        };
        let verified = jwt::verify_signature(&jwt, &k.hmac_set, &policy).is_ok();
        assert!(
            !verified || hs256_reference(&token),
            "HS256 accepted a bad MAC"
        );
        let _ = jwt::verify_signature(&jwt, &k.jwks, &AlgPolicy::default());
        // Also judge the claims of the unverified token: the checks must hold up on any bytes.
        jwt.payload().to_vec()
    } else {
        let Some(token) = sign_hs256(rest) else {
            return;
        };
        let jwt = Jwt::parse(&token).unwrap_or_else(|e| panic!("our own token parses: {e}"));
        assert!(jwt::verify_signature(&jwt, &k.hmac_set, &policy).is_ok());
        jwt.payload().to_vec()
    };
    let Ok(subject) = flow::check_logout_token_claims(&payload, ISSUER, CLIENT_ID, NOW, 60) else {
        return;
    };
    assert!(subject.sid.is_some() || subject.sub.is_some());
    let mut revocations = Revocations::new(16);
    revocations.revoke(&subject, NOW + 3600);
    let mut victim = SessionData::new(subject.iat.min(NOW));
    victim.sid = subject.sid.clone();
    victim.sub = subject.sub.clone();
    victim.iss = Some(ISSUER.to_owned());
    assert!(
        revocations.is_revoked(&victim),
        "the session a logout token names is still valid"
    );
    revocations.prune(NOW + 3601);
}

// ---------------------------------------------------------------------------------------------
// IdP responses

/// The IdP client's response parser, then the body parsers behind it (discovery, JWKS, token,
/// introspection). The first byte carries `head_only`, `eof` and the body limit.
pub fn idp_response(data: &[u8]) {
    let (mode, buf) = split_mode(data);
    let head_only = mode & 1 != 0;
    let eof = mode & 2 != 0;
    let max_body = 16usize << (mode >> 4);
    let Ok(Some((resp, reusable))) = idp_client::parse_response(buf, head_only, eof, max_body)
    else {
        return;
    };
    assert!(
        resp.body.len() <= max_body,
        "a body over the limit was accepted"
    );
    assert!(resp.body.len() <= buf.len());
    if head_only {
        assert!(resp.body.is_empty());
    }
    let _ = reusable;
    let body = &resp.body;
    let _ = resp.header("content-type");
    let _ = ProviderMetadata::from_json(body, Some(ISSUER));
    let _ = KeySet::from_json(body);
    let _ = TokenResponse::parse(resp.status, body);
    if let Ok(r) = IntrospectionResponse::parse(body) {
        let _ = r.scopes().count();
        let _ = r.ttl(NOW, 60, "exp");
    }
    let _ = flow::parse_callback(body);
}
