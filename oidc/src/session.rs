//! Sealed cookie sessions: AES-256-GCM under HKDF-derived keys, key rotation, compression, chunking.
//!
//! A session lives entirely in the browser. The cookie value is
//!
//! ```text
//! base64url( version(1) | key_id(4) | nonce(12) | AES-256-GCM( flags(1) | payload ) | tag(16) )
//! AAD = binding | cookie_name | version | key_id
//! binding = u16be(len) | provider | u16be(len) | client_id
//! ```
//!
//! * `key_id` is derived from the secret, so opening tries exactly one key even with fallbacks configured,
//!   and "sealed by a key we no longer have" is told apart from "tampered".
//! * The cookie name is bound into the AAD: a value lifted from another cookie (another route's session,
//!   a login-state cookie) does not open.
//! * So are the provider and the client id ([`SessionCodec::with_binding`]): routes that share
//!   `session.secret` and cookie name but trust another IdP or log in as another client cannot open
//!   each other's sessions or login state. Format version 1 had no binding; its cookies are refused
//!   as [`SessionError::UnsupportedVersion`] (one fresh login), never opened unbound.
//! * `flags` bit 0 says the payload is raw-deflated. Payloads above `compression_threshold` are
//!   deflated before encryption as lua-resty-session does, but only when that saves a cookie chunk or
//!   half the bytes: inflating costs every request far more than the rest of opening the cookie.
//! * A value that does not fit one cookie is split over `name`, `name2` .. `name9` (lua-resty-session 4.x
//!   names). When split, the first chunk starts with `<count>.`: `.` is outside the base64url alphabet, so
//!   a single-cookie value can never be mistaken for a counted one, and stale chunks left over from an
//!   earlier, bigger session are ignored instead of corrupting the value.
//!
//! Nothing here reads a clock or draws randomness on its own: callers pass `now` (unix seconds) and a
//! [`SecureRandom`].

use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use serde::{Deserialize, Serialize};

/// Re-exported so callers can build sessions and pass randomness without naming our dependencies.
pub use ring::rand::{SecureRandom, SystemRandom};
pub use serde_json::value::RawValue;

/// Browsers keep at most this many bytes of `name` + `value` per cookie (RFC 6265 section 6.1 minimum,
/// and what lua-resty-session sizes against).
pub const MAX_COOKIE_SIZE: usize = 4096;
/// `name`, `name2` .. `name9`: lua-resty-session's ceiling, and already more than most proxies accept.
pub const MAX_CHUNKS: usize = 9;
/// Payloads above this many bytes are deflated before sealing (lua-resty-session's default).
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;
/// Secrets shorter than this are rejected (APISIX `session.secret` has `minLength: 16`).
pub const MIN_SECRET_LEN: usize = 16;

/// 2: the AAD carries the provider/client binding (1 did not).
const FORMAT_VERSION: u8 = 2;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const FLAG_DEFLATE: u8 = 1;
/// Only authenticated plaintext is ever inflated, so this only guards against our own bugs and a leaked
/// key being used to build a decompression bomb.
const MAX_INFLATED: usize = 512 * 1024;
const HKDF_SALT: &[u8] = b"shardgate session cookie v1";

/// Everything that can go wrong building keys, sealing, or opening a session cookie.
///
/// Every opening failure means "no valid session" to the gateway; the variants exist for the log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("session secret is {len} bytes, it must be at least {min}")]
    SecretTooShort { len: usize, min: usize },
    #[error("cookie name {0:?} is not a valid cookie token")]
    InvalidCookieName(String),
    #[error("invalid cookie attribute {attr}: {reason}")]
    InvalidCookieAttr {
        attr: &'static str,
        reason: &'static str,
    },
    #[error(
        "session cookie needs {bytes} bytes but {MAX_CHUNKS} cookies of {MAX_COOKIE_SIZE} bytes hold at most \
         {limit}: store less in the session (session_contents: drop id_token/user) or shorten the cookie name"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error("malformed session cookie: {0}")]
    Malformed(&'static str),
    #[error("session cookie format version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error(
        "session cookie was sealed with a key this gateway does not have (secret rotated out, or differs between nodes)"
    )]
    UnknownKey,
    #[error(
        "session cookie failed authentication (tampered, truncated, moved from another cookie, or sealed \
         for another provider or client_id)"
    )]
    Decrypt,
    #[error("session payload: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("session expired: {0}")]
    Expired(Expiry),
    #[error("session cookie chunk {index} is missing")]
    MissingChunk { index: usize },
    #[error("session cookie {name:?} was sent more than once")]
    DuplicateChunk { name: String },
    #[error("two session secrets derive the same key id: choose a different secret")]
    KeyIdCollision,
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// Which timeout ended a session, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request for `idling_timeout` seconds.
    Idle { at: u64 },
    /// Not re-issued within `rolling_timeout` seconds.
    Rolling { at: u64 },
    /// Older than `absolute_timeout` seconds since login.
    Absolute { at: u64 },
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::Idle { at } => write!(f, "idling_timeout reached at {at}"),
            Expiry::Rolling { at } => write!(f, "rolling_timeout reached at {at}"),
            Expiry::Absolute { at } => write!(f, "absolute_timeout reached at {at}"),
        }
    }
}

/// What a browser session remembers. Field names are one or two letters on the wire because every byte
/// is repeated in every request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionData {
    /// Bumped by the gateway on every token refresh, so a refresh coordinator can tell generations apart.
    #[serde(rename = "v", default)]
    pub version: u32,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The IdP's session id (`sid` claim), the key for back-channel logout.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(rename = "ae", default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<u64>,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The raw ID token (JWS compact form), only when `session_contents` asks for it.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// Verified ID token claims as JSON, stored verbatim so `X-ID-Token` needs no re-serialisation.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub id_token_claims: Option<Box<RawValue>>,
    /// Userinfo response as JSON, stored verbatim (for `X-Userinfo`).
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Box<RawValue>>,
    #[serde(rename = "sc", default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(rename = "ca", default)]
    pub created_at: u64,
    /// Last request seen (idling_timeout).
    #[serde(rename = "ls", default)]
    pub last_seen: u64,
    /// Last re-issue (rolling_timeout).
    #[serde(rename = "ra", default)]
    pub rolled_at: u64,
    /// Last interactive authentication at the IdP (refresh_session_interval).
    #[serde(rename = "aa", default)]
    pub authenticated_at: u64,
}

impl SessionData {
    /// A fresh session for a login that completed at `now`.
    pub fn new(now: u64) -> Self {
        SessionData {
            created_at: now,
            last_seen: now,
            rolled_at: now,
            authenticated_at: now,
            ..SessionData::default()
        }
    }
}

/// lua-resty-session's timeouts, in seconds; 0 disables one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    pub idling: u64,
    pub rolling: u64,
    pub absolute: u64,
    /// How stale `last_seen` may get before a request re-issues the cookie just to record activity.
    pub touch_threshold: u64,
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        SessionTimeouts {
            idling: 900,
            rolling: 3600,
            absolute: 86400,
            touch_threshold: 60,
        }
    }
}

struct SealKey {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

/// The primary sealing key plus fallbacks that may still open older cookies.
pub struct SessionKeys {
    /// `keys[0]` seals; every key opens.
    keys: Vec<SealKey>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids are public (they travel in every cookie); key material never prints.
        let ids: Vec<String> = self.keys.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("SessionKeys")
            .field("key_ids", &ids)
            .finish()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl SessionKeys {
    /// Derives keys from `secret` (seals and opens) and `fallbacks` (open only), each >= 16 bytes.
    pub fn new(secret: &[u8], fallbacks: &[&[u8]]) -> Result<SessionKeys, SessionError> {
        let secrets: Vec<&[u8]> = std::iter::once(secret)
            .chain(fallbacks.iter().copied())
            .collect();
        let mut keys: Vec<SealKey> = Vec::with_capacity(secrets.len());
        for (i, s) in secrets.iter().enumerate() {
            let key = derive(s)?;
            // The same secret listed twice is harmless; keep one copy.
            if secrets[..i].contains(s) {
                continue;
            }
            // Distinct secrets sharing a 32-bit id would make `open` try the wrong key; refuse rather
            // than fail at random later (odds ~2^-32 per pair: the fix is any other secret).
            if keys.iter().any(|k| k.id == key.id) {
                return Err(SessionError::KeyIdCollision);
            }
            keys.push(key);
        }
        Ok(SessionKeys { keys })
    }

    /// The id stamped on cookies sealed now (hex), for log lines about rotation.
    pub fn primary_key_id(&self) -> String {
        self.keys.first().map(|k| hex(&k.id)).unwrap_or_default()
    }

    fn primary(&self) -> Result<&SealKey, SessionError> {
        self.keys
            .first()
            .ok_or(SessionError::Crypto("no session key"))
    }
}

fn derive(secret: &[u8]) -> Result<SealKey, SessionError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(SessionError::SecretTooShort {
            len: secret.len(),
            min: MIN_SECRET_LEN,
        });
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
    let okm = prk
        .expand(&[b"aes-256-gcm key"], &aead::AES_256_GCM)
        .map_err(|_| SessionError::Crypto("hkdf expand"))?;
    let aead = LessSafeKey::new(UnboundKey::from(okm));
    let mut id = [0u8; KEY_ID_LEN];
    prk.expand(&[b"key id"], Len(KEY_ID_LEN))
        .and_then(|okm| okm.fill(&mut id))
        .map_err(|_| SessionError::Crypto("hkdf expand"))?;
    Ok(SealKey { id, aead })
}

/// Seals and opens session cookies under one set of keys and timeouts.
#[derive(Debug)]
pub struct SessionCodec {
    keys: SessionKeys,
    timeouts: SessionTimeouts,
    compression_threshold: usize,
    /// The self-delimiting AAD prefix naming the provider and client (see the module doc).
    binding: Vec<u8>,
}

impl SessionCodec {
    pub fn new(keys: SessionKeys, timeouts: SessionTimeouts) -> SessionCodec {
        SessionCodec {
            keys,
            timeouts,
            compression_threshold: DEFAULT_COMPRESSION_THRESHOLD,
            binding: encode_binding("", ""),
        }
    }

    /// Binds every value sealed or opened by this codec to `provider` (the identity of the issuer
    /// the route trusts; the gateway passes its discovery URL, which is known at config time, so a
    /// session opens even while the IdP is unreachable) and `client_id`. A value sealed under
    /// another binding fails authentication like a tampered one.
    pub fn with_binding(mut self, provider: &str, client_id: &str) -> SessionCodec {
        self.binding = encode_binding(provider, client_id);
        self
    }

    pub fn with_compression_threshold(mut self, bytes: usize) -> SessionCodec {
        self.compression_threshold = bytes;
        self
    }

    pub fn timeouts(&self) -> &SessionTimeouts {
        &self.timeouts
    }

    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// Seals `data` into the values of `cookie_name`, `cookie_name2`, ... (see [`chunk_name`]).
    ///
    /// Refuses a session that is already expired at `now`, so the gateway never issues a cookie that
    /// its next request would reject.
    pub fn seal(
        &self,
        data: &SessionData,
        cookie_name: &str,
        now: u64,
        rng: &dyn SecureRandom,
    ) -> Result<Vec<String>, SessionError> {
        validate_cookie_name(cookie_name)?;
        self.check_expiry(data, now)?;
        let json = serde_json::to_vec(data)?;
        let value = self.seal_bytes(&json, cookie_name, rng)?;
        split_chunks(&value, cookie_name)
    }

    /// Opens the joined chunk values produced by [`collect_chunks`] and checks the timeouts.
    pub fn open(
        &self,
        chunks_joined: &[u8],
        cookie_name: &str,
        now: u64,
    ) -> Result<SessionData, SessionError> {
        self.open_with(chunks_joined, cookie_name, now, &mut Vec::new())
    }

    /// [`SessionCodec::open`] with a caller-owned scratch buffer: after warm-up the only allocations are
    /// the strings of the returned [`SessionData`].
    pub fn open_with(
        &self,
        chunks_joined: &[u8],
        cookie_name: &str,
        now: u64,
        scratch: &mut Vec<u8>,
    ) -> Result<SessionData, SessionError> {
        let json = self.open_bytes(chunks_joined, cookie_name, scratch)?;
        let data: SessionData = serde_json::from_slice(json)?;
        self.check_expiry(&data, now)?;
        Ok(data)
    }

    /// Rejects a session past any enabled timeout.
    pub fn check_expiry(&self, data: &SessionData, now: u64) -> Result<(), SessionError> {
        let t = &self.timeouts;
        if t.absolute > 0 {
            let at = data.created_at.saturating_add(t.absolute);
            if now >= at {
                return Err(SessionError::Expired(Expiry::Absolute { at }));
            }
        }
        if t.rolling > 0 {
            let at = data.rolled_at.saturating_add(t.rolling);
            if now >= at {
                return Err(SessionError::Expired(Expiry::Rolling { at }));
            }
        }
        if t.idling > 0 {
            let at = data.last_seen.saturating_add(t.idling);
            if now >= at {
                return Err(SessionError::Expired(Expiry::Idle { at }));
            }
        }
        Ok(())
    }

    /// Whether this request should carry a fresh Set-Cookie: activity older than `touch_threshold`
    /// (idling), or 3/4 of `rolling_timeout` used up.
    pub fn needs_reissue(&self, data: &SessionData, now: u64) -> bool {
        let t = &self.timeouts;
        let idle_due = t.idling > 0 && now.saturating_sub(data.last_seen) >= t.touch_threshold;
        let roll_due = t.rolling > 0 && now.saturating_sub(data.rolled_at) >= t.rolling / 4 * 3;
        idle_due || roll_due
    }

    /// Records activity at `now` before a re-seal; also restarts the rolling window when it is due.
    pub fn touch(&self, data: &mut SessionData, now: u64) {
        let t = &self.timeouts;
        if t.rolling > 0 && now.saturating_sub(data.rolled_at) >= t.rolling / 4 * 3 {
            data.rolled_at = now;
        }
        data.last_seen = data.last_seen.max(now);
    }

    /// Seconds until the first enabled timeout ends this session, for the cookie's `Max-Age`, so the
    /// browser drops a dead cookie by itself. `None` when every timeout is disabled.
    pub fn max_age(&self, data: &SessionData, now: u64) -> Option<u64> {
        let t = &self.timeouts;
        [
            (t.absolute, data.created_at),
            (t.rolling, data.rolled_at),
            (t.idling, data.last_seen),
        ]
        .iter()
        .filter(|(limit, _)| *limit > 0)
        .map(|(limit, since)| since.saturating_add(*limit).saturating_sub(now))
        .min()
    }

    /// Seals arbitrary bytes into one base64url value bound to `cookie_name` (shared with login state).
    pub(crate) fn seal_bytes(
        &self,
        payload: &[u8],
        cookie_name: &str,
        rng: &dyn SecureRandom,
    ) -> Result<String, SessionError> {
        let (key, nonce, mut buf) = self.start_seal(1 + payload.len(), rng)?;
        buf.push(0);
        if payload.len() > self.compression_threshold {
            let mut enc = flate2::write::DeflateEncoder::new(buf, flate2::Compression::default());
            enc.write_all(payload)
                .map_err(|_| SessionError::Crypto("deflate"))?;
            buf = enc.finish().map_err(|_| SessionError::Crypto("deflate"))?;
            let compressed = buf.len() - HEADER_LEN - 1;
            if worth_deflating(payload.len(), compressed, cookie_name) {
                buf[HEADER_LEN] = FLAG_DEFLATE;
            } else {
                buf.truncate(HEADER_LEN + 1);
                buf.extend_from_slice(payload);
            }
        } else {
            buf.extend_from_slice(payload);
        }
        self.finish_seal(key, nonce, buf, cookie_name)
    }

    /// Seals `plaintext` as it is given: its first byte is the flags byte, the rest the payload
    /// (raw-deflated when flag bit 0 is set). For harnesses only (the fuzz targets): it reaches what
    /// runs after authentication (inflate, JSON, expiry) with bytes that [`SessionCodec::seal`]
    /// would never produce. Holding the codec already means holding the key, so this grants nothing.
    #[doc(hidden)]
    pub fn seal_plaintext(
        &self,
        plaintext: &[u8],
        cookie_name: &str,
        rng: &dyn SecureRandom,
    ) -> Result<String, SessionError> {
        let (key, nonce, mut buf) = self.start_seal(plaintext.len(), rng)?;
        buf.extend_from_slice(plaintext);
        self.finish_seal(key, nonce, buf, cookie_name)
    }

    /// The primary key, a fresh nonce and `version | key_id | nonce` with room for `plain_len` more.
    fn start_seal(
        &self,
        plain_len: usize,
        rng: &dyn SecureRandom,
    ) -> Result<(&SealKey, [u8; NONCE_LEN], Vec<u8>), SessionError> {
        let key = self.keys.primary()?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| SessionError::Crypto("random nonce"))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + plain_len + TAG_LEN);
        buf.push(FORMAT_VERSION);
        buf.extend_from_slice(&key.id);
        buf.extend_from_slice(&nonce);
        Ok((key, nonce, buf))
    }

    /// Encrypts `buf[HEADER_LEN..]` in place and base64url-encodes the whole value.
    fn finish_seal(
        &self,
        key: &SealKey,
        nonce: [u8; NONCE_LEN],
        mut buf: Vec<u8>,
        cookie_name: &str,
    ) -> Result<String, SessionError> {
        let mut aad = Vec::with_capacity(self.binding.len() + cookie_name.len() + 1 + KEY_ID_LEN);
        aad.extend_from_slice(&self.binding);
        aad.extend_from_slice(cookie_name.as_bytes());
        aad.extend_from_slice(&buf[..1 + KEY_ID_LEN]);
        let (_, body) = buf.split_at_mut(HEADER_LEN);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                body,
            )
            .map_err(|_| SessionError::Crypto("seal"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(&buf))
    }

    /// Opens one base64url value; the returned slice borrows `scratch`.
    pub(crate) fn open_bytes<'s>(
        &self,
        value: &[u8],
        cookie_name: &str,
        scratch: &'s mut Vec<u8>,
    ) -> Result<&'s [u8], SessionError> {
        // Lay the buffer out as `binding | name | version | key_id | nonce | ciphertext` so the
        // AAD (`binding | name | version | key_id`) is one contiguous slice and needs no buffer of
        // its own.
        let n = self.binding.len() + cookie_name.len();
        scratch.clear();
        scratch.extend_from_slice(&self.binding);
        scratch.extend_from_slice(cookie_name.as_bytes());
        URL_SAFE_NO_PAD
            .decode_vec(value, scratch)
            .map_err(|_| SessionError::Malformed("not base64url"))?;
        if scratch.len() < n + HEADER_LEN + 1 + TAG_LEN {
            return Err(SessionError::Malformed("too short"));
        }
        if scratch[n] != FORMAT_VERSION {
            return Err(SessionError::UnsupportedVersion(scratch[n]));
        }
        let (head, body) = scratch.split_at_mut(n + HEADER_LEN);
        let (aad, nonce) = head.split_at(n + 1 + KEY_ID_LEN);
        let key_id = &aad[n + 1..];
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SessionError::Malformed("nonce"))?;

        // Ids are unique per `SessionKeys::new`, so this is the one key worth trying.
        let key = self
            .keys
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(SessionError::UnknownKey)?;
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| SessionError::Decrypt)?
            .len();

        let start = n + HEADER_LEN;
        let flags = scratch[start];
        let payload = start + 1..start + plain_len;
        match flags {
            0 => Ok(&scratch[payload]),
            FLAG_DEFLATE => inflate_tail(scratch, payload),
            _ => Err(SessionError::Malformed("unknown flags")),
        }
    }
}

/// `u16be(len) | provider | u16be(len) | client_id`: length-prefixed so no two pairs encode alike.
fn encode_binding(provider: &str, client_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + provider.len() + client_id.len());
    for part in [provider, client_id] {
        // Config validation bounds URLs and client ids far below 64 KiB; clamp rather than wrap so
        // an absurd value still binds (to its first 64 KiB) instead of aliasing a short one.
        let bytes = &part.as_bytes()[..part.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Whether a deflated payload is worth its cost. Inflating costs every request that carries the
/// cookie far more than the rest of opening it (measured: ~30 us vs ~9 us for a 3 KiB session of
/// tokens, which deflate by only ~25% as base64 text). So deflate only where it matters: when it saves
/// a cookie chunk (or makes the session fit at all), or halves the size (a large userinfo).
fn worth_deflating(raw: usize, deflated: usize, cookie_name: &str) -> bool {
    let chunks = |plain: usize| {
        let b64 = ((HEADER_LEN + 1 + plain + TAG_LEN) * 4).div_ceil(3);
        chunks_needed(b64, cookie_name).unwrap_or(MAX_CHUNKS + 1)
    };
    deflated.saturating_mul(2) <= raw || chunks(deflated) < chunks(raw)
}

/// Inflates `scratch[range]` into the space after it and returns the inflated slice.
fn inflate_tail(
    scratch: &mut Vec<u8>,
    range: std::ops::Range<usize>,
) -> Result<&[u8], SessionError> {
    let out_start = scratch.len();
    let mut inflater = flate2::Decompress::new(false);
    let mut want = (range.len() * 4).clamp(1024, MAX_INFLATED);
    loop {
        // Zero-filling once per growth keeps the split below safe code; after warm-up `scratch`
        // already has the capacity, so this is a memset, not an allocation.
        scratch.resize(out_start + want, 0);
        let (src, dst) = scratch.split_at_mut(out_start);
        let consumed = inflater.total_in() as usize;
        let produced = inflater.total_out() as usize;
        let input = src
            .get(range.start + consumed..range.end)
            .ok_or(SessionError::Malformed("inflate"))?;
        // `Finish` on a first call asks miniz for one-shot inflation, which fails outright when the
        // output is too small instead of letting us grow it; `None` streams.
        let status = inflater
            .decompress(input, &mut dst[produced..], flate2::FlushDecompress::None)
            .map_err(|_| SessionError::Malformed("inflate"))?;
        let produced = inflater.total_out() as usize;
        match status {
            flate2::Status::StreamEnd => {
                scratch.truncate(out_start + produced);
                return Ok(&scratch[out_start..]);
            }
            _ if produced < want && inflater.total_in() as usize == range.len() => {
                return Err(SessionError::Malformed("truncated deflate stream"));
            }
            _ if want >= MAX_INFLATED => {
                return Err(SessionError::Malformed("inflated payload too large"));
            }
            _ => want = (want * 2).min(MAX_INFLATED),
        }
    }
}

/// The name of chunk `index` (0-based): `name`, `name2`, ... `name9`.
pub fn chunk_name(name: &str, index: usize) -> String {
    if index == 0 {
        name.to_owned()
    } else {
        format!("{name}{}", index + 1)
    }
}

/// Bytes of value that `n` chunk cookies of `name` hold. Chunk i (0-based) is named `name` or
/// `name<i+1>`; the first chunk of a split value also carries the two-byte `<n>.` prefix.
fn chunk_capacity(n: usize, name: &str) -> usize {
    (0..n)
        .map(|i| {
            let name_len = name.len() + usize::from(i > 0);
            let prefix = if n > 1 && i == 0 { 2 } else { 0 };
            MAX_COOKIE_SIZE.saturating_sub(name_len + prefix)
        })
        .sum()
}

/// The fewest chunks that hold a `len`-byte value, if at most [`MAX_CHUNKS`] do.
fn chunks_needed(len: usize, name: &str) -> Option<usize> {
    (1..=MAX_CHUNKS).find(|&n| len <= chunk_capacity(n, name))
}

fn split_chunks(value: &str, name: &str) -> Result<Vec<String>, SessionError> {
    let total = value.len();
    let Some(count) = chunks_needed(total, name) else {
        return Err(SessionError::TooLarge {
            bytes: total,
            limit: chunk_capacity(MAX_CHUNKS, name),
        });
    };
    let mut out = Vec::with_capacity(count);
    let mut rest = value;
    for i in 0..count {
        let name_len = name.len() + usize::from(i > 0);
        let prefix = if count > 1 && i == 0 { 2 } else { 0 };
        let room = MAX_COOKIE_SIZE - name_len - prefix;
        // base64url is ASCII, so every byte offset is a char boundary.
        let (part, tail) = rest.split_at(room.min(rest.len()));
        rest = tail;
        if prefix > 0 {
            out.push(format!("{count}.{part}"));
        } else {
            out.push(part.to_owned());
        }
    }
    Ok(out)
}

/// Which chunk cookies (bit i = chunk i, 0-based) a request carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkMask(pub u16);

impl ChunkMask {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, index: usize) -> bool {
        index < 16 && self.0 & (1 << index) != 0
    }

    /// The chunks at or beyond `count`: stale leftovers to expire after writing a `count`-chunk value.
    pub fn beyond(self, count: usize) -> ChunkMask {
        if count >= 16 {
            ChunkMask(0)
        } else {
            ChunkMask(self.0 & !((1u16 << count) - 1))
        }
    }

    /// Cookie names of the chunks in this mask.
    pub fn names(self, name: &str) -> impl Iterator<Item = String> + '_ {
        (0..MAX_CHUNKS)
            .filter(move |&i| self.contains(i))
            .map(move |i| chunk_name(name, i))
    }
}

/// A session value reassembled from the request's cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// How many chunks the value was split into.
    pub count: usize,
    /// Every chunk cookie the request carried, including stale ones beyond `count`.
    pub present: ChunkMask,
}

/// Index of `cookie` as a chunk of `name`: `name` -> 0, `name2` -> 1, ... `name9` -> 8.
fn chunk_index(cookie: &[u8], name: &[u8]) -> Option<usize> {
    let rest = cookie.strip_prefix(name)?;
    match rest {
        [] => Some(0),
        [d @ b'2'..=b'9'] => Some(usize::from(d - b'1')),
        _ => None,
    }
}

/// `a=b; c="d"` pairs of one Cookie header value: (name, value, whole trimmed pair). Pairs without `=`
/// are skipped, as browsers never send them for cookies we set.
fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    // memchr, not a byte loop: session cookies are several KiB and scanned on every request.
    split_semicolons(header).filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = memchr::memchr(b'=', pair)?;
        let name = pair[..eq].trim_ascii();
        let mut value = pair[eq + 1..].trim_ascii();
        if let [b'"', inner @ .., b'"'] = value {
            value = inner;
        }
        if name.is_empty() {
            None
        } else {
            Some((name, value, pair))
        }
    })
}

/// `header.split(|b| *b == b';')`, with the separators found by SIMD.
pub fn split_semicolons(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b';', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Reassembles the session value named `name` from the request's Cookie header values into `out`
/// (which is cleared first). `Ok(None)` means the request carries no first chunk at all.
///
/// Chunks are matched by name, not by position in the header, since browsers order cookies by path
/// length and creation time, not by name. A missing chunk or a needed chunk sent twice (two cookies
/// with the same name from different Domain/Path) is an error: guessing would open a wrong value.
pub fn collect_chunks<'a>(
    cookie_header_values: impl Iterator<Item = &'a [u8]>,
    name: &str,
    out: &mut Vec<u8>,
) -> Result<Option<Collected>, SessionError> {
    out.clear();
    let mut parts: [Option<&'a [u8]>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    let mut present = ChunkMask(0);
    let mut dups = ChunkMask(0);
    for header in cookie_header_values {
        for (cookie, value, _) in cookie_pairs(header) {
            if let Some(i) = chunk_index(cookie, name.as_bytes()) {
                if parts[i].is_some() {
                    dups.0 |= 1 << i;
                }
                parts[i] = Some(value);
                present.0 |= 1 << i;
            }
        }
    }
    let Some(first) = parts[0] else {
        return Ok(None);
    };
    let (count, first) = match first {
        [d @ b'2'..=b'9', b'.', rest @ ..] => (usize::from(d - b'0'), rest),
        _ => (1, first),
    };
    // Duplicates beyond `count` are stale leftovers and do not matter.
    if let Some(i) = (0..count).find(|&i| dups.contains(i)) {
        return Err(SessionError::DuplicateChunk {
            name: chunk_name(name, i),
        });
    }
    out.extend_from_slice(first);
    for (i, part) in parts.iter().enumerate().take(count).skip(1) {
        let part = part.ok_or(SessionError::MissingChunk { index: i + 1 })?;
        out.extend_from_slice(part);
    }
    Ok(Some(Collected { count, present }))
}

/// Which chunks of `name` the request carried, for clearing after a failed open or on logout.
pub fn present_chunks<'a>(
    cookie_header_values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> ChunkMask {
    let mut present = ChunkMask(0);
    for header in cookie_header_values {
        for (cookie, _, _) in cookie_pairs(header) {
            if let Some(i) = chunk_index(cookie, name.as_bytes()) {
                present.0 |= 1 << i;
            }
        }
    }
    present
}

/// The prefix of every login-state cookie of session cookie `session_name`.
pub fn login_cookie_prefix(session_name: &str) -> String {
    format!("{session_name}_login_")
}

fn is_login_cookie(cookie: &[u8], session_name: &[u8]) -> bool {
    cookie
        .strip_prefix(session_name)
        .is_some_and(|rest| rest.starts_with(b"_login_"))
}

/// Copies `cookie_header` into `out` without the session chunks and login-state cookies of any of
/// `session_names`, keeping every other cookie byte for byte. Returns how many cookies were removed;
/// an empty `out` means the header should be dropped altogether.
pub fn strip_cookies(cookie_header: &[u8], session_names: &[&str], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut removed = 0;
    for pair in cookie_header.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let name = pair
            .iter()
            .position(|&b| b == b'=')
            .map_or(pair, |eq| pair[..eq].trim_ascii());
        let ours = session_names.iter().any(|s| {
            chunk_index(name, s.as_bytes()).is_some() || is_login_cookie(name, s.as_bytes())
        });
        if ours {
            removed += 1;
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    removed
}

/// `SameSite` attribute. `None` needs `Secure`, so it always emits it (browsers drop the cookie
/// otherwise, which surfaces later as "no session state found").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    Strict,
    #[default]
    Lax,
    None,
}

/// Attributes shared by every cookie the gateway sets for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    pub max_age: Option<u64>,
}

impl Default for CookieAttrs {
    fn default() -> Self {
        CookieAttrs {
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
        }
    }
}

impl CookieAttrs {
    /// Checks `path` and `domain` cannot break out of the Set-Cookie header; call once at config time.
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |s: &str| {
            s.bytes()
                .any(|b| b == b';' || b.is_ascii_control() || b == b',')
        };
        if !self.path.starts_with('/') || bad(&self.path) {
            return Err(SessionError::InvalidCookieAttr {
                attr: "path",
                reason: "must start with / and hold no ; , or controls",
            });
        }
        if let Some(d) = &self.domain
            && (d.is_empty() || bad(d) || d.bytes().any(|b| b == b' '))
        {
            return Err(SessionError::InvalidCookieAttr {
                attr: "domain",
                reason: "must be a non-empty host name",
            });
        }
        Ok(())
    }

    fn write_suffix(&self, max_age: Option<u64>, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "; Path={}", self.path);
        if let Some(d) = &self.domain {
            let _ = write!(out, "; Domain={d}");
        }
        if let Some(m) = max_age {
            let _ = write!(out, "; Max-Age={m}");
        }
        if self.secure || self.same_site == SameSite::None {
            out.push_str("; Secure");
        }
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
    }
}

/// Rejects names that are not an RFC 6265 token (they would split or inject into headers).
pub fn validate_cookie_name(name: &str) -> Result<(), SessionError> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        });
    if ok {
        Ok(())
    } else {
        Err(SessionError::InvalidCookieName(name.to_owned()))
    }
}

/// Appends one `Set-Cookie` value per chunk (`name`, `name2`, ...). `attrs` must have passed
/// [`CookieAttrs::validate`] and `name` [`validate_cookie_name`].
pub fn set_cookie_headers(
    name: &str,
    value_chunks: &[String],
    attrs: &CookieAttrs,
    out: &mut Vec<String>,
) {
    for (i, value) in value_chunks.iter().enumerate() {
        let mut h = String::with_capacity(name.len() + 1 + value.len() + 80);
        h.push_str(name);
        if i > 0 {
            h.push_str(&(i + 1).to_string());
        }
        h.push('=');
        h.push_str(value);
        attrs.write_suffix(attrs.max_age, &mut h);
        out.push(h);
    }
}

/// Appends an expiring `Set-Cookie` (`Max-Age=0`) for every chunk of `name` in `present`.
pub fn clear_cookie_headers(
    name: &str,
    present: ChunkMask,
    attrs: &CookieAttrs,
    out: &mut Vec<String>,
) {
    for cookie in present.names(name) {
        clear_cookie(&cookie, attrs, out);
    }
}

/// Appends an expiring `Set-Cookie` for one cookie (a login-state cookie, say).
pub fn clear_cookie(cookie_name: &str, attrs: &CookieAttrs, out: &mut Vec<String>) {
    let mut h = String::with_capacity(cookie_name.len() + 80);
    h.push_str(cookie_name);
    h.push('=');
    attrs.write_suffix(Some(0), &mut h);
    out.push(h);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn split_semicolons_matches_slice_split() {
        let cases: [&[u8]; 8] = [
            b"",
            b";",
            b";;",
            b"a=1",
            b"a=1;",
            b";a=1",
            b"a=1; b=2;c=3 ;; d",
            b"session=abc; session2=def; other=x",
        ];
        for case in cases {
            let ours: Vec<&[u8]> = split_semicolons(case).collect();
            let std: Vec<&[u8]> = case.split(|b| *b == b';').collect();
            assert_eq!(ours, std, "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn chunk_index_matches_only_our_names() {
        assert_eq!(chunk_index(b"session", b"session"), Some(0));
        assert_eq!(chunk_index(b"session2", b"session"), Some(1));
        assert_eq!(chunk_index(b"session9", b"session"), Some(8));
        assert_eq!(chunk_index(b"session1", b"session"), None);
        assert_eq!(chunk_index(b"session10", b"session"), None);
        assert_eq!(chunk_index(b"sessionid", b"session"), None);
        assert_eq!(chunk_index(b"sess", b"session"), None);
    }

    #[test]
    fn mask_beyond_keeps_only_stale_chunks() {
        let m = ChunkMask(0b1_0000_0111);
        assert_eq!(m.beyond(2), ChunkMask(0b1_0000_0100));
        assert_eq!(m.beyond(0), m);
        assert_eq!(m.beyond(16), ChunkMask(0));
        assert_eq!(m.names("s").collect::<Vec<_>>(), ["s", "s2", "s3", "s9"]);
    }

    #[test]
    fn split_fills_first_chunks_and_prefixes_count() {
        let v = "A".repeat(MAX_COOKIE_SIZE * 2);
        let chunks = split_chunks(&v, "sess").unwrap();
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].starts_with("3."));
        assert_eq!(chunks[0].len() + "sess".len(), MAX_COOKIE_SIZE);
        assert_eq!(chunks[1].len() + "sess2".len(), MAX_COOKIE_SIZE);
        let joined: usize = chunks.iter().map(String::len).sum::<usize>() - 2;
        assert_eq!(joined, v.len());
    }

    #[test]
    fn deflate_only_when_it_saves_a_chunk_or_half() {
        // Both fit one cookie and deflate saved only a quarter: keep it raw, inflating costs more.
        assert!(!worth_deflating(3000, 2250, "session"));
        // Raw needs two cookies, deflated one.
        assert!(worth_deflating(3100, 2325, "session"));
        // Halved (repetitive userinfo).
        assert!(worth_deflating(2000, 1000, "session"));
        // Raw does not fit at all, deflated does.
        assert!(worth_deflating(28_000, 20_000, "session"));
    }

    #[test]
    fn inflate_rejects_garbage() {
        let mut scratch = b"xx\x01\x02\x03".to_vec();
        assert!(inflate_tail(&mut scratch, 2..5).is_err());
    }
}
