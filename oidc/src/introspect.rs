//! OAuth 2.0 token introspection (RFC 7662): the request body and headers, the response, and
//! how long an answer may be cached.
//!
//! Cache TTL policy ([`IntrospectionResponse::ttl`]): `min(expiry_claim - now, interval)` when
//! the response carries the expiry claim; only `interval` when it does not but an interval is
//! configured (the operator bounded how stale an answer may be); not cacheable when neither
//! is known, so such tokens are introspected on every request, as APISIX does.

use crate::client_auth::{ClientAuthError, FormBody, PreparedClientAuth};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntrospectionError {
    #[error("introspection response is not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("introspection response is not a JSON object")]
    NotAnObject,
    #[error("introspection response has no boolean `active`")]
    MissingActive,
    #[error("introspection client authentication: {0}")]
    ClientAuth(#[from] ClientAuthError),
}

/// Request headers as `(name, value)` pairs.
pub type Headers = Vec<(String, String)>;

/// What to introspect and the extras APISIX allows around it.
#[derive(Debug, Clone, Copy)]
pub struct IntrospectionRequest<'a> {
    pub token: &'a str,
    /// `access_token` by default in APISIX; `None` leaves the hint out.
    pub token_type_hint: Option<&'a str>,
    /// Form field carrying the token (`introspection_token_param_name`, `token` by default).
    pub token_param_name: &'a str,
    /// Extra form fields (`introspection_params`).
    pub extra_params: &'a [(String, String)],
    /// Client request headers to copy onto the call (`introspection_addon_headers`, already
    /// looked up by the caller).
    pub addon_headers: &'a [(String, String)],
}

impl<'a> IntrospectionRequest<'a> {
    pub fn new(token: &'a str) -> Self {
        IntrospectionRequest {
            token,
            token_type_hint: Some("access_token"),
            token_param_name: "token",
            extra_params: &[],
            addon_headers: &[],
        }
    }

    /// The POST body and headers (content type, accept, client credentials, add-ons) for a
    /// call to `endpoint_url`. `jti` is used only by JWT client assertions.
    pub fn build(
        &self,
        auth: &PreparedClientAuth,
        endpoint_url: &str,
        now: u64,
        jti: &str,
    ) -> Result<(Vec<u8>, Headers), IntrospectionError> {
        let mut form = FormBody::new();
        form.append(self.token_param_name, self.token);
        if let Some(hint) = self.token_type_hint {
            form.append("token_type_hint", hint);
        }
        for (k, v) in self.extra_params {
            form.append(k, v);
        }
        let mut headers = Vec::with_capacity(3 + self.addon_headers.len());
        headers.push(("Content-Type".to_owned(), FormBody::CONTENT_TYPE.to_owned()));
        headers.push(("Accept".to_owned(), "application/json".to_owned()));
        auth.apply(endpoint_url, now, jti, &mut form, &mut headers)?;
        headers.extend(self.addon_headers.iter().cloned());
        Ok((form.into_bytes(), headers))
    }
}

/// A parsed introspection answer. The raw JSON is kept for `X-Userinfo` and `claim_schema`
/// (and for [`crate::claims::ClaimsView::parse`], so the same scope and audience checks as
/// for JWTs can run on it).
#[derive(Debug, Clone)]
pub struct IntrospectionResponse {
    pub active: bool,
    pub exp: Option<i64>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub aud: Vec<String>,
    claims: serde_json::Map<String, serde_json::Value>,
    raw: Vec<u8>,
}

impl IntrospectionResponse {
    pub fn parse(bytes: &[u8]) -> Result<IntrospectionResponse, IntrospectionError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        let serde_json::Value::Object(claims) = value else {
            return Err(IntrospectionError::NotAnObject);
        };
        let active = claims
            .get("active")
            .and_then(|v| v.as_bool())
            .ok_or(IntrospectionError::MissingActive)?;
        let string = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let aud = match claims.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Ok(IntrospectionResponse {
            active,
            exp: claims.get("exp").and_then(numeric_date),
            scope: string("scope"),
            client_id: string("client_id"),
            sub: string("sub"),
            iss: string("iss"),
            aud,
            claims,
            raw: bytes.to_vec(),
        })
    }

    /// The response body as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn claims(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.claims
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope
            .as_deref()
            .into_iter()
            .flat_map(str::split_ascii_whitespace)
    }

    /// Seconds this answer may be cached, or `None` when it must not be (see the module
    /// docs). `expiry_claim` (`introspection_expiry_claim`, normally `exp`) is read as an
    /// absolute unix time; an answer whose expiry has passed is not cacheable. Applies to
    /// inactive answers too: whether to keep a negative entry is the caller's choice.
    pub fn ttl(&self, now: u64, interval: u64, expiry_claim: &str) -> Option<u64> {
        let expiry = if expiry_claim == "exp" {
            self.exp
        } else {
            self.claims.get(expiry_claim).and_then(numeric_date)
        };
        match expiry {
            Some(at) => {
                let left = u64::try_from(at)
                    .ok()?
                    .checked_sub(now)
                    .filter(|s| *s > 0)?;
                Some(if interval > 0 {
                    left.min(interval)
                } else {
                    left
                })
            }
            None if interval > 0 => Some(interval),
            None => None,
        }
    }
}

fn numeric_date(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::client_auth::{AuthMethod, ClientAuth};

    #[test]
    fn request_body_and_headers() {
        let auth = ClientAuth {
            method: AuthMethod::ClientSecretBasic,
            client_id: "gw".into(),
            client_secret: Some("s".into()),
            ..Default::default()
        }
        .prepare()
        .unwrap();
        let extra = [("resource".to_owned(), "https://api/x y".to_owned())];
        let addon = [("X-Tenant".to_owned(), "t1".to_owned())];
        let req = IntrospectionRequest {
            extra_params: &extra,
            addon_headers: &addon,
            ..IntrospectionRequest::new("a.b+c/=")
        };
        let (body, headers) = req.build(&auth, "https://idp/introspect", 0, "j").unwrap();
        assert_eq!(
            body,
            b"token=a.b%2Bc%2F%3D&token_type_hint=access_token&resource=https%3A%2F%2Fapi%2Fx+y"
        );
        let names: Vec<_> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["Content-Type", "Accept", "Authorization", "X-Tenant"]
        );
    }

    #[test]
    fn parse_active_inactive_missing() {
        let r = IntrospectionResponse::parse(
            br#"{"active":true,"exp":2000,"scope":"read write","client_id":"c","sub":"u","aud":["a","b"],"iss":"i"}"#,
        )
        .unwrap();
        assert!(r.active);
        assert_eq!(r.scopes().collect::<Vec<_>>(), ["read", "write"]);
        assert_eq!(r.aud, ["a", "b"]);
        assert_eq!(r.exp, Some(2000));
        assert!(
            !IntrospectionResponse::parse(br#"{"active":false}"#)
                .unwrap()
                .active
        );
        assert!(matches!(
            IntrospectionResponse::parse(br#"{"exp":1}"#),
            Err(IntrospectionError::MissingActive)
        ));
        assert!(matches!(
            IntrospectionResponse::parse(br#"{"active":"true"}"#),
            Err(IntrospectionError::MissingActive)
        ));
        assert!(matches!(
            IntrospectionResponse::parse(b"[]"),
            Err(IntrospectionError::NotAnObject)
        ));
        assert!(IntrospectionResponse::parse(b"<html>").is_err());
    }

    #[test]
    fn ttl_policy() {
        let r =
            IntrospectionResponse::parse(br#"{"active":true,"exp":1100,"ext_exp":1030}"#).unwrap();
        assert_eq!(r.ttl(1000, 0, "exp"), Some(100));
        assert_eq!(r.ttl(1000, 30, "exp"), Some(30));
        assert_eq!(r.ttl(1000, 300, "exp"), Some(100));
        assert_eq!(r.ttl(1000, 0, "ext_exp"), Some(30));
        assert_eq!(r.ttl(1100, 0, "exp"), None, "already expired");
        assert_eq!(r.ttl(1000, 0, "missing"), None);
        assert_eq!(r.ttl(1000, 60, "missing"), Some(60));
    }
}
