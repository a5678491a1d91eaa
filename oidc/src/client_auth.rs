//! Client authentication at the token, introspection and revocation endpoints
//! (RFC 6749 2.3, OIDC Core 9, RFC 7523): `client_secret_basic`, `client_secret_post`,
//! `client_secret_jwt`, `private_key_jwt` and `none`.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::jwt::{Alg, SignError, SigningKey, sign};

/// `client_assertion_type` for JWT client assertions (RFC 7523 2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientAuthError {
    #[error("unknown client authentication method {0:?}")]
    UnknownMethod(String),
    #[error("{0} needs a client_secret")]
    MissingSecret(&'static str),
    #[error("private_key_jwt needs a private key")]
    MissingPrivateKey,
    #[error("client assertion alg {alg} does not fit {method}")]
    AlgMismatch { alg: Alg, method: &'static str },
    #[error("client assertion: {0}")]
    Sign(#[from] SignError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    ClientSecretJwt,
    PrivateKeyJwt,
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }
}

impl FromStr for AuthMethod {
    type Err = ClientAuthError;
    fn from_str(s: &str) -> Result<AuthMethod, ClientAuthError> {
        Ok(match s {
            "client_secret_basic" => AuthMethod::ClientSecretBasic,
            "client_secret_post" => AuthMethod::ClientSecretPost,
            "client_secret_jwt" => AuthMethod::ClientSecretJwt,
            "private_key_jwt" => AuthMethod::PrivateKeyJwt,
            "none" => AuthMethod::None,
            other => return Err(ClientAuthError::UnknownMethod(other.to_owned())),
        })
    }
}

/// How the gateway authenticates itself as an OAuth client.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    pub method: AuthMethod,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// PEM private key for `private_key_jwt` (PKCS#8 RSA/EC/Ed25519 or PKCS#1 RSA).
    pub private_key_pem: Option<String>,
    /// `kid` header of the assertion, so the IdP can pick the registered key.
    pub key_id: Option<String>,
    /// Defaults: RS256 (or the key's curve alg) for private_key_jwt, HS256 for client_secret_jwt.
    pub assertion_alg: Option<Alg>,
    /// APISIX `client_jwt_assertion_expires_in` (60 s there).
    pub assertion_lifetime_secs: u64,
    /// `aud` of the assertion; the endpoint URL when unset.
    pub assertion_audience: Option<String>,
}

impl ClientAuth {
    /// Loads and checks the signing key once (parsing an RSA key costs far more than using
    /// it), so configuration errors surface at load time and each request only signs.
    pub fn prepare(&self) -> Result<PreparedClientAuth, ClientAuthError> {
        let key = match self.method {
            AuthMethod::ClientSecretBasic
            | AuthMethod::ClientSecretPost
            | AuthMethod::ClientSecretJwt => {
                let secret = self
                    .client_secret
                    .as_deref()
                    .ok_or(ClientAuthError::MissingSecret(self.method.as_str()))?;
                (self.method == AuthMethod::ClientSecretJwt)
                    .then(|| SigningKey::hmac(secret.as_bytes()))
            }
            AuthMethod::PrivateKeyJwt => {
                let pem = self
                    .private_key_pem
                    .as_deref()
                    .ok_or(ClientAuthError::MissingPrivateKey)?;
                Some(SigningKey::from_pem(pem)?)
            }
            AuthMethod::None => None,
        };
        let alg = match &key {
            Some(key) => {
                let alg = self.assertion_alg.unwrap_or_else(|| key.default_alg());
                if !key.supports(alg) {
                    return Err(ClientAuthError::AlgMismatch {
                        alg,
                        method: self.method.as_str(),
                    });
                }
                alg
            }
            None => Alg::None,
        };
        Ok(PreparedClientAuth {
            conf: self.clone(),
            key,
            alg,
        })
    }

    /// One-shot form of [`PreparedClientAuth::apply`]; parses the key on every call.
    pub fn apply(
        &self,
        endpoint_url: &str,
        now: u64,
        jti: &str,
        form: &mut FormBody,
        headers: &mut Vec<(String, String)>,
    ) -> Result<(), ClientAuthError> {
        self.prepare()?.apply(endpoint_url, now, jti, form, headers)
    }
}

/// A [`ClientAuth`] with its key loaded.
#[derive(Debug)]
pub struct PreparedClientAuth {
    conf: ClientAuth,
    key: Option<SigningKey>,
    alg: Alg,
}

impl PreparedClientAuth {
    pub fn method(&self) -> AuthMethod {
        self.conf.method
    }

    pub fn client_id(&self) -> &str {
        &self.conf.client_id
    }

    /// Adds the credentials for a request to `endpoint_url`: an `Authorization` header, form
    /// fields, or a signed assertion. `jti` must be unique per request (the caller has the RNG).
    pub fn apply(
        &self,
        endpoint_url: &str,
        now: u64,
        jti: &str,
        form: &mut FormBody,
        headers: &mut Vec<(String, String)>,
    ) -> Result<(), ClientAuthError> {
        let conf = &self.conf;
        match conf.method {
            AuthMethod::ClientSecretBasic => {
                let secret = conf.client_secret.as_deref().unwrap_or_default();
                headers.push((
                    "Authorization".to_owned(),
                    basic_authorization(&conf.client_id, secret),
                ));
            }
            AuthMethod::ClientSecretPost => {
                form.append("client_id", &conf.client_id);
                form.append(
                    "client_secret",
                    conf.client_secret.as_deref().unwrap_or_default(),
                );
            }
            AuthMethod::ClientSecretJwt | AuthMethod::PrivateKeyJwt => {
                let Some(key) = &self.key else {
                    return Err(ClientAuthError::MissingPrivateKey);
                };
                let aud = conf.assertion_audience.as_deref().unwrap_or(endpoint_url);
                let claims = serde_json::json!({
                    "iss": conf.client_id,
                    "sub": conf.client_id,
                    "aud": aud,
                    "jti": jti,
                    "iat": now,
                    "exp": now.saturating_add(conf.assertion_lifetime_secs.max(1)),
                });
                let kid = if conf.method == AuthMethod::PrivateKeyJwt {
                    conf.key_id.as_deref()
                } else {
                    None
                };
                let assertion = sign(self.alg, kid, claims.to_string().as_bytes(), key)?;
                form.append("client_id", &conf.client_id);
                form.append("client_assertion_type", JWT_BEARER_ASSERTION);
                form.append("client_assertion", &assertion);
            }
            AuthMethod::None => form.append("client_id", &conf.client_id),
        }
        Ok(())
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` as RFC 6749 2.3.1 requires, so a `:`
/// or non-ASCII byte in either part survives.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let mut raw = Vec::with_capacity(client_id.len() + client_secret.len() + 8);
    form_urlencode_into(&mut raw, client_id);
    raw.push(b':');
    form_urlencode_into(&mut raw, client_secret);
    let mut out = String::with_capacity(6 + raw.len() * 4 / 3 + 4);
    out.push_str("Basic ");
    STANDARD.encode_string(&raw, &mut out);
    out
}

/// Appends `s` encoded as `application/x-www-form-urlencoded` (WHATWG URL): ASCII
/// alphanumerics and `*-._` stay, space becomes `+`, every other byte `%XX`.
pub fn form_urlencode_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => {
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
            }
        }
    }
}

/// An `application/x-www-form-urlencoded` request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormBody {
    buf: Vec<u8>,
}

impl FormBody {
    pub const CONTENT_TYPE: &'static str = "application/x-www-form-urlencoded";

    pub fn new() -> FormBody {
        FormBody::default()
    }

    pub fn append(&mut self, name: &str, value: &str) {
        if !self.buf.is_empty() {
            self.buf.push(b'&');
        }
        form_urlencode_into(&mut self.buf, name);
        self.buf.push(b'=');
        form_urlencode_into(&mut self.buf, value);
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        let mut f = FormBody::new();
        f.append("token", "a b+c&d=e/é~");
        f.append("k*-._", "");
        assert_eq!(f.as_bytes(), b"token=a+b%2Bc%26d%3De%2F%C3%A9%7E&k*-._=");
    }

    #[test]
    fn basic_encodes_special_characters() {
        let h = basic_authorization("my client:1", "s3cr:t/+%");
        let raw = STANDARD.decode(h.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(raw, b"my+client%3A1:s3cr%3At%2F%2B%25");
    }

    #[test]
    fn methods_parse_and_check_their_inputs() {
        for m in [
            "client_secret_basic",
            "client_secret_post",
            "client_secret_jwt",
            "private_key_jwt",
            "none",
        ] {
            assert_eq!(m.parse::<AuthMethod>().unwrap().as_str(), m);
        }
        assert!("tls_client_auth".parse::<AuthMethod>().is_err());
        let auth = ClientAuth {
            method: AuthMethod::ClientSecretPost,
            client_id: "c".into(),
            ..Default::default()
        };
        assert!(matches!(
            auth.prepare(),
            Err(ClientAuthError::MissingSecret(_))
        ));
        let auth = ClientAuth {
            method: AuthMethod::ClientSecretJwt,
            client_id: "c".into(),
            client_secret: Some("s".into()),
            assertion_alg: Some(Alg::RS256),
            ..Default::default()
        };
        assert!(matches!(
            auth.prepare(),
            Err(ClientAuthError::AlgMismatch { .. })
        ));
        let auth = ClientAuth {
            method: AuthMethod::PrivateKeyJwt,
            client_id: "c".into(),
            ..Default::default()
        };
        assert!(matches!(
            auth.prepare(),
            Err(ClientAuthError::MissingPrivateKey)
        ));
    }

    #[test]
    fn post_and_none() {
        let auth = ClientAuth {
            method: AuthMethod::ClientSecretPost,
            client_id: "id&1".into(),
            client_secret: Some("p w".into()),
            ..Default::default()
        };
        let (mut form, mut headers) = (FormBody::new(), Vec::new());
        auth.apply("https://idp/token", 0, "j", &mut form, &mut headers)
            .unwrap();
        assert_eq!(form.as_bytes(), b"client_id=id%261&client_secret=p+w");
        assert!(headers.is_empty());
        let none = ClientAuth {
            method: AuthMethod::None,
            client_id: "pub".into(),
            ..Default::default()
        };
        let mut form = FormBody::new();
        none.apply("u", 0, "j", &mut form, &mut headers).unwrap();
        assert_eq!(form.as_bytes(), b"client_id=pub");
    }
}
