//! shardgate-oidc: a sans-IO OpenID Connect relying party.
//!
//! Nothing here opens a socket or reads a clock: callers pass `now` (unix seconds) and bytes in,
//! and get decisions, request bodies and cookies out. The gateway's shards and actors do the I/O.
//!
//! ```text
//! config        APISIX `openid-connect` attributes, names and defaults (serde)
//! discovery     provider metadata (.well-known/openid-configuration)
//! dpop          RFC 9449 proofs: signing as a client, checking as a resource server, jti replay, nonces
//! jwk           JWK sets: RSA (n/e, x5c), EC P-256/P-384, OKP Ed25519, symmetric keys
//! jwt           compact JWS: split, decode, verify (alg allow-list, no `none`, no alg confusion), sign
//! claims        exp/nbf/iat, issuer, audience, scopes (`scope` and `scp`)
//! cache         bounded shard-local TTL caches (verified tokens, introspection), negative entries
//! introspect    RFC 7662 request/response, cache TTL policy
//! client_auth   client_secret_basic/post/jwt, private_key_jwt
//! session       sealed session cookies: AES-256-GCM, HKDF, key rotation, compression, chunking
//! flow          authorization code + PKCE: authorize URL, login state, callback, ID token checks, logout
//! ```
#![forbid(unsafe_code)]

pub mod cache;
pub mod claims;
pub mod client_auth;
pub mod config;
pub mod discovery;
pub mod dpop;
pub mod flow;
pub mod idp;
pub mod introspect;
pub mod jwk;
pub mod jwt;
pub mod session;
