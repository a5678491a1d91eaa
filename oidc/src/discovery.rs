//! OpenID Provider metadata (OIDC Discovery 1.0 section 3, RFC 8414).
//!
//! Required here: `issuer` and `authorization_endpoint` (both specs require them). Other
//! endpoints are optional in the document and checked by the feature that needs them through
//! [`ProviderMetadata::require`], so a pure OAuth server used only for introspection loads.

use serde::Deserialize;

pub const WELL_KNOWN_SUFFIX: &str = "/.well-known/openid-configuration";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error("discovery document is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("discovery document has no {0}")]
    Missing(&'static str),
    #[error("discovery {field} is not an http(s) URL")]
    NotAUrl { field: &'static str },
    #[error("discovery issuer {got:?} differs from {expected:?} (the discovery URL's prefix)")]
    IssuerMismatch { got: String, expected: String },
}

/// Provider metadata; unknown members are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    /// RFC 9126 section 5: where `par.enabled` pushes the authorization request when
    /// `par.endpoint` is unset.
    pub pushed_authorization_request_endpoint: Option<String>,
    pub registration_endpoint: Option<String>,
    pub scopes_supported: Vec<String>,
    pub response_types_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub userinfo_signing_alg_values_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub claims_supported: Vec<String>,
    pub backchannel_logout_supported: bool,
    pub backchannel_logout_session_supported: bool,
    pub frontchannel_logout_supported: bool,
    pub frontchannel_logout_session_supported: bool,
}

/// Endpoints a feature may need, for [`ProviderMetadata::require`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Authorization,
    Token,
    Userinfo,
    Jwks,
    Introspection,
    Revocation,
    EndSession,
}

impl ProviderMetadata {
    /// Parses and validates a discovery document. With `expected_issuer_from_url` (see
    /// [`issuer_from_discovery_url`]) the `issuer` must match it, ignoring one trailing slash
    /// (OIDC Discovery 4.3; Keycloak and others differ only there). Pass `None` when the IdP
    /// is reached through an internal name that differs from its public issuer.
    pub fn from_json(
        bytes: &[u8],
        expected_issuer_from_url: Option<&str>,
    ) -> Result<ProviderMetadata, DiscoveryError> {
        let meta: ProviderMetadata = serde_json::from_slice(bytes)?;
        if meta.issuer.is_empty() {
            return Err(DiscoveryError::Missing("issuer"));
        }
        check_url("issuer", &meta.issuer)?;
        if let Some(expected) = expected_issuer_from_url
            && meta.issuer.trim_end_matches('/') != expected.trim_end_matches('/')
        {
            return Err(DiscoveryError::IssuerMismatch {
                got: meta.issuer,
                expected: expected.to_owned(),
            });
        }
        if meta.authorization_endpoint.is_none() {
            return Err(DiscoveryError::Missing("authorization_endpoint"));
        }
        for (field, value) in [
            ("authorization_endpoint", &meta.authorization_endpoint),
            ("token_endpoint", &meta.token_endpoint),
            ("userinfo_endpoint", &meta.userinfo_endpoint),
            ("jwks_uri", &meta.jwks_uri),
            ("introspection_endpoint", &meta.introspection_endpoint),
            ("revocation_endpoint", &meta.revocation_endpoint),
            ("end_session_endpoint", &meta.end_session_endpoint),
            (
                "pushed_authorization_request_endpoint",
                &meta.pushed_authorization_request_endpoint,
            ),
        ] {
            if let Some(url) = value {
                check_url(field, url)?;
            }
        }
        Ok(meta)
    }

    /// The URL of `endpoint`, or an error naming the missing member.
    pub fn require(&self, endpoint: Endpoint) -> Result<&str, DiscoveryError> {
        let (name, value) = match endpoint {
            Endpoint::Authorization => ("authorization_endpoint", &self.authorization_endpoint),
            Endpoint::Token => ("token_endpoint", &self.token_endpoint),
            Endpoint::Userinfo => ("userinfo_endpoint", &self.userinfo_endpoint),
            Endpoint::Jwks => ("jwks_uri", &self.jwks_uri),
            Endpoint::Introspection => ("introspection_endpoint", &self.introspection_endpoint),
            Endpoint::Revocation => ("revocation_endpoint", &self.revocation_endpoint),
            Endpoint::EndSession => ("end_session_endpoint", &self.end_session_endpoint),
        };
        value.as_deref().ok_or(DiscoveryError::Missing(name))
    }

    /// Whether the IdP lists `method` for the token endpoint. An empty list means the spec
    /// default, `client_secret_basic` only.
    pub fn supports_token_auth_method(&self, method: &str) -> bool {
        if self.token_endpoint_auth_methods_supported.is_empty() {
            return method == "client_secret_basic";
        }
        self.token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == method)
    }

    pub fn supports_pkce_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    }
}

/// The issuer a discovery URL implies: the URL without `/.well-known/openid-configuration`.
pub fn issuer_from_discovery_url(url: &str) -> Option<&str> {
    url.strip_suffix(WELL_KNOWN_SUFFIX)
}

fn check_url(field: &'static str, url: &str) -> Result<(), DiscoveryError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(DiscoveryError::NotAUrl { field }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
        "issuer": "https://idp.test/realms/r",
        "authorization_endpoint": "https://idp.test/realms/r/auth",
        "token_endpoint": "https://idp.test/realms/r/token",
        "jwks_uri": "https://idp.test/realms/r/certs",
        "end_session_endpoint": "https://idp.test/realms/r/logout",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "backchannel_logout_supported": true,
        "mtls_endpoint_aliases": {"token_endpoint": "https://mtls/token"},
        "unknown_number": 5
    }"#;

    #[test]
    fn parses_and_ignores_unknown_members() {
        let m = ProviderMetadata::from_json(DOC.as_bytes(), Some("https://idp.test/realms/r/"))
            .unwrap();
        assert_eq!(
            m.require(Endpoint::Jwks).unwrap(),
            "https://idp.test/realms/r/certs"
        );
        assert!(matches!(
            m.require(Endpoint::Introspection),
            Err(DiscoveryError::Missing("introspection_endpoint"))
        ));
        assert!(m.backchannel_logout_supported && m.supports_pkce_s256());
        assert!(m.supports_token_auth_method("private_key_jwt"));
        assert!(!m.supports_token_auth_method("client_secret_post"));
        assert_eq!(m.id_token_signing_alg_values_supported, ["RS256", "ES256"]);
    }

    #[test]
    fn validation() {
        let url = "https://idp.test/realms/r/.well-known/openid-configuration";
        assert_eq!(
            issuer_from_discovery_url(url),
            Some("https://idp.test/realms/r")
        );
        assert!(matches!(
            ProviderMetadata::from_json(DOC.as_bytes(), Some("https://other.test")),
            Err(DiscoveryError::IssuerMismatch { .. })
        ));
        assert!(matches!(
            ProviderMetadata::from_json(br#"{"authorization_endpoint":"https://a/x"}"#, None),
            Err(DiscoveryError::Missing("issuer"))
        ));
        assert!(matches!(
            ProviderMetadata::from_json(br#"{"issuer":"https://a"}"#, None),
            Err(DiscoveryError::Missing("authorization_endpoint"))
        ));
        assert!(matches!(
            ProviderMetadata::from_json(
                br#"{"issuer":"https://a","authorization_endpoint":"https://a/x","jwks_uri":"javascript:x"}"#,
                None
            ),
            Err(DiscoveryError::NotAUrl { field: "jwks_uri" })
        ));
        assert!(ProviderMetadata::from_json(br#"{"issuer":5}"#, None).is_err());
        assert!(ProviderMetadata::from_json(b"null", None).is_err());
    }
}
