//! Registered JWT claims (RFC 7519) read without copying, and the checks a route applies.
//!
//! `exp` policy: APISIX checks `exp` only when present, and so does [`ClaimsPolicy::check`]
//! unless `require_exp` is set. A bearer JWT without `exp` would otherwise live forever in the
//! verified-token cache, so callers cap its cache lifetime with [`ClaimsView::cache_until`].

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::jwt::TokenError;

/// The registered claims of a payload, borrowed from the payload bytes where JSON escapes
/// allow. Unknown members are skipped; a duplicated registered member is an error (so two
/// parsers can never disagree on which `iss` counts).
#[derive(Debug, Default, Deserialize)]
pub struct ClaimsView<'a> {
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    pub iat: Option<i64>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub iss: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub aud: Option<OneOrMany<'a>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub scope: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub scp: Option<OneOrMany<'a>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub sub: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub azp: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub nonce: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub sid: Option<Cow<'a, str>>,
    #[serde(skip)]
    raw: &'a [u8],
}

/// The usual name for it: `Claims::parse(payload)`.
pub type Claims<'a> = ClaimsView<'a>;

/// A claim that may be a string or an array of strings (`aud`, `scp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOrMany<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

/// A string borrowed from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<CowStr<'de>>::deserialize(d)?.map(|c| c.0))
}

impl<'de: 'a, 'a> Deserialize<'de> for OneOrMany<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = OneOrMany<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(16));
                while let Some(CowStr(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany<'_> {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            OneOrMany::One(s) => (Some(s.as_ref()), &[][..]),
            OneOrMany::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|s| s.as_ref()))
    }

    pub fn contains(&self, value: &str) -> bool {
        self.iter().any(|v| v == value)
    }
}

/// Accepts integer or fractional seconds (RFC 7519 NumericDate); fractions are truncated.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a NumericDate")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // `as` saturates, which is the right reading of an absurdly large date.
            Ok(Some(v as i64))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

impl<'a> ClaimsView<'a> {
    /// Parses a JWT payload (or an introspection response) that must be a JSON object.
    pub fn parse(payload: &'a [u8]) -> Result<ClaimsView<'a>, TokenError> {
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(TokenError::Malformed("claims are not a JSON object"));
        }
        let mut view: ClaimsView<'a> = serde_json::from_slice(payload)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        view.raw = payload;
        Ok(view)
    }

    /// The payload bytes this view was parsed from (the body of `X-Userinfo`, base64'd).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The whole object, for custom claims and `claim_schema`. Allocates: call it only when needed.
    pub fn to_map(&self) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
        serde_json::from_slice(self.raw)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))
    }

    /// Every granted scope, from the `scope` string and the `scp` claim (array or string).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        let from_scope = self
            .scope
            .as_deref()
            .into_iter()
            .flat_map(str::split_ascii_whitespace);
        let from_scp = self
            .scp
            .iter()
            .flat_map(|s| s.iter())
            .flat_map(str::split_ascii_whitespace);
        from_scope.chain(from_scp)
    }

    /// When a verified token may stop being served from cache: its `exp`, but never later
    /// than `now + max_ttl_secs` (tokens without `exp` get exactly the cap).
    pub fn cache_until(&self, now: u64, max_ttl_secs: u64) -> u64 {
        let cap = now.saturating_add(max_ttl_secs);
        match self.exp {
            Some(exp) => cap.min(u64::try_from(exp).unwrap_or(0)),
            None => cap,
        }
    }
}

/// How a route checks `aud` (APISIX `claim_validator.audience`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceRule {
    /// The claim holding the audience, `aud` by default.
    pub claim: String,
    /// Refuse tokens without the claim (implied by `match_with_client_id`).
    pub required: bool,
    /// When non-empty, one of the token's audiences must be in here (the client id when
    /// `match_with_client_id`).
    pub expected: Vec<String>,
}

/// The claim checks of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimsPolicy {
    /// Trusted `iss` values (exact match); empty means the issuer is not checked.
    pub valid_issuers: Vec<String>,
    pub audience: Option<AudienceRule>,
    pub required_scopes: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (APISIX `iat_slack`).
    pub leeway_secs: u64,
    /// Refuse tokens without `exp` (off by default, as in APISIX).
    pub require_exp: bool,
}

impl ClaimsPolicy {
    /// Applies the checks in APISIX's order: lifetime, issuer, scopes, then audience.
    pub fn check(&self, claims: &ClaimsView<'_>, now: u64) -> Result<(), TokenError> {
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);
        match claims.exp {
            Some(exp) if now_i >= exp.saturating_add(leeway) => {
                return Err(TokenError::Expired { exp, now });
            }
            None if self.require_exp => return Err(TokenError::MissingClaim("exp")),
            _ => {}
        }
        if let Some(nbf) = claims.nbf
            && now_i.saturating_add(leeway) < nbf
        {
            return Err(TokenError::NotYetValid { nbf, now });
        }
        if let Some(iat) = claims.iat
            && iat > now_i.saturating_add(leeway)
        {
            return Err(TokenError::IssuedInFuture { iat, now });
        }
        if !self.valid_issuers.is_empty() {
            let iss = claims
                .iss
                .as_deref()
                .ok_or(TokenError::MissingClaim("iss"))?;
            if !self.valid_issuers.iter().any(|v| v == iss) {
                return Err(TokenError::IssuerMismatch {
                    got: crate::jwk::truncate(iss, 128).to_owned(),
                });
            }
        }
        self.check_scopes(claims)?;
        if let Some(rule) = &self.audience {
            check_audience(rule, claims)?;
        }
        Ok(())
    }

    fn check_scopes(&self, claims: &ClaimsView<'_>) -> Result<(), TokenError> {
        let mut missing = String::new();
        for want in &self.required_scopes {
            if !claims.scopes().any(|have| have == want) {
                if !missing.is_empty() {
                    missing.push(' ');
                }
                missing.push_str(want);
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(TokenError::InsufficientScope { missing })
        }
    }
}

fn check_audience(rule: &AudienceRule, claims: &ClaimsView<'_>) -> Result<(), TokenError> {
    if rule.claim == "aud" {
        return match &claims.aud {
            None if rule.required => Err(TokenError::AudienceMissing),
            None => Ok(()),
            Some(_) if rule.expected.is_empty() => Ok(()),
            Some(aud) => {
                if rule.expected.iter().any(|e| aud.contains(e)) {
                    Ok(())
                } else {
                    Err(TokenError::AudienceMismatch)
                }
            }
        };
    }
    // A custom audience claim is not in the view: read the object (rare configuration).
    let map = claims.to_map()?;
    let values: Vec<&str> = match map.get(&rule.claim) {
        None | Some(serde_json::Value::Null) if rule.required => {
            return Err(TokenError::AudienceMissing);
        }
        None | Some(serde_json::Value::Null) => return Ok(()),
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
        Some(_) => Vec::new(),
    };
    if rule.expected.is_empty() || rule.expected.iter().any(|e| values.contains(&e.as_str())) {
        Ok(())
    } else {
        Err(TokenError::AudienceMismatch)
    }
}

/// A compiled `claim_schema` (JSON Schema, any draft the `jsonschema` crate detects).
/// Remote `$ref`s cannot be resolved: the crate is built without its HTTP and file resolvers,
/// so a schema that needs one fails to compile instead of fetching at request time.
pub struct CompiledSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchema")
    }
}

impl CompiledSchema {
    pub fn compile(schema: &serde_json::Value) -> Result<CompiledSchema, String> {
        jsonschema::validator_for(schema)
            .map(|validator| CompiledSchema { validator })
            .map_err(|e| e.to_string())
    }

    /// `Err` carries the first violation, with the JSON pointer of the offending member.
    pub fn validate(&self, instance: &serde_json::Value) -> Result<(), String> {
        self.validator.validate(instance).map_err(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
    }

    /// Validates a raw claims payload (JWT payload or introspection response).
    pub fn validate_claims(&self, payload: &[u8]) -> Result<(), TokenError> {
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        self.validate(&value).map_err(TokenError::SchemaMismatch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_borrowed_and_escaped() {
        let p = br#"{"iss":"https://idp","aud":["a","b\u0041"],"exp":10.9,"scope":"x y","scp":"z","extra":{"k":[1]}}"#;
        let c = ClaimsView::parse(p).unwrap();
        assert!(matches!(c.iss, Some(Cow::Borrowed("https://idp"))));
        assert_eq!(
            c.aud.as_ref().unwrap().iter().collect::<Vec<_>>(),
            ["a", "bA"]
        );
        assert_eq!(c.exp, Some(10));
        assert_eq!(c.scopes().collect::<Vec<_>>(), ["x", "y", "z"]);
        assert_eq!(c.raw(), p);
    }

    #[test]
    fn refuses_non_objects_and_duplicates() {
        assert!(ClaimsView::parse(b"[]").is_err());
        assert!(ClaimsView::parse(b"").is_err());
        assert!(ClaimsView::parse(br#"{"exp":"soon"}"#).is_err());
        assert!(ClaimsView::parse(br#"{"iss":"a","iss":"b"}"#).is_err());
    }

    #[test]
    fn cache_until_caps() {
        let c = ClaimsView::parse(br#"{"exp":1000}"#).unwrap();
        assert_eq!(c.cache_until(900, 3600), 1000);
        assert_eq!(c.cache_until(900, 50), 950);
        let c = ClaimsView::parse(b"{}").unwrap();
        assert_eq!(c.cache_until(900, 50), 950);
    }

    #[test]
    fn require_exp() {
        let p = ClaimsPolicy {
            require_exp: true,
            ..Default::default()
        };
        assert_eq!(
            p.check(&ClaimsView::parse(b"{}").unwrap(), 5),
            Err(TokenError::MissingClaim("exp"))
        );
        assert_eq!(
            ClaimsPolicy::default().check(&ClaimsView::parse(b"{}").unwrap(), 5),
            Ok(())
        );
    }

    #[test]
    fn custom_audience_claim() {
        let rule = AudienceRule {
            claim: "client".into(),
            required: true,
            expected: vec!["gw".into()],
        };
        let p = ClaimsPolicy {
            audience: Some(rule),
            ..Default::default()
        };
        assert_eq!(
            p.check(&ClaimsView::parse(br#"{"client":"gw"}"#).unwrap(), 0),
            Ok(())
        );
        assert_eq!(
            p.check(&ClaimsView::parse(br#"{"client":["x","gw"]}"#).unwrap(), 0),
            Ok(())
        );
        assert_eq!(
            p.check(&ClaimsView::parse(br#"{"client":"x"}"#).unwrap(), 0),
            Err(TokenError::AudienceMismatch)
        );
        assert_eq!(
            p.check(&ClaimsView::parse(br#"{"aud":"gw"}"#).unwrap(), 0),
            Err(TokenError::AudienceMissing)
        );
    }

    #[test]
    fn schema() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["email"],
            "properties": {"email": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}}}
        });
        let s = CompiledSchema::compile(&schema).unwrap();
        s.validate_claims(br#"{"email":"a@b","groups":["x"]}"#)
            .unwrap();
        let err = s
            .validate_claims(br#"{"email":"a@b","groups":[1]}"#)
            .unwrap_err();
        assert!(
            matches!(&err, TokenError::SchemaMismatch(m) if m.contains("/groups/0")),
            "{err}"
        );
        assert!(s.validate_claims(br#"{"groups":[]}"#).is_err());
        assert!(CompiledSchema::compile(&serde_json::json!({"type": 12})).is_err());
        let remote = serde_json::json!({"$ref": "https://example.invalid/schema.json"});
        assert!(CompiledSchema::compile(&remote).is_err());
    }
}
