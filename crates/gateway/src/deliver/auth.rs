//! Client authentication: HS256 JWTs signed with `JWT_SECRET`. `sub` is the
//! user id (not blank), `roles` an array of strings (`admin` opens `system`),
//! `exp` is required and at most `JWT_MAX_LIFETIME_SECS` ahead (so
//! `expiresAt` always fits a JavaScript number), `nbf` is honoured, `iat`
//! (optional, seconds) is kept for revocation (see `revocation`), and a
//! token with a `crit` header is refused (we implement no extension).
//! Tokens are never logged; a refusal tells the client one of our own
//! sentences ([`AuthError`]) and logs the library's detail at debug level.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

pub const ADMIN_ROLE: &str = "admin";


/// The largest integer a JavaScript number holds exactly (2^53 - 1):
/// `expiresAt` never exceeds it, whatever the settings.
pub const JS_MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// The claims we read when verifying (`Claims` plus the optional `iat`,
/// which signing with [`sign`] leaves out).
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub admin: bool,
    /// Milliseconds since the epoch after which private events stop.
    pub expires_at_ms: u64,
    /// The token's `iat` (seconds since the epoch), when it has one: a
    /// revocation refuses tokens issued at or before it.
    pub issued_at_secs: Option<u64>,
}

/// Cheap to clone (shared key and rules): every connection holds one.
#[derive(Clone)]
pub struct Authenticator {
    key: Option<std::sync::Arc<DecodingKey>>,
    validation: std::sync::Arc<Validation>,
    max_lifetime_secs: u64,
}

/// Why a token was refused, in words a client can act on. The messages are
/// ours; the library's error is logged, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is not configured on this server")]
    NotConfigured,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token expires too far in the future: its exp exceeds the server's maximum token lifetime")]
    LifetimeTooLong,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token must be signed with HS256")]
    WrongAlgorithm,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token needs a non-blank \"sub\" and a numeric \"exp\"")]
    BadClaims,
    #[error("the token has a \"crit\" header, which this server does not support")]
    CriticalHeader,
}

impl AuthError {
    /// The `reason` label of `auth_refusals_total` (and of the log line).
    pub fn label(self) -> &'static str {
        match self {
            AuthError::NotConfigured => "not_configured",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::LifetimeTooLong => "lifetime_too_long",
            AuthError::Malformed => "malformed",
            AuthError::WrongAlgorithm => "wrong_algorithm",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadClaims => "bad_claims",
            AuthError::CriticalHeader => "critical_header",
        }
    }
}

impl Authenticator {
    /// `max_lifetime_secs`: how far ahead of now a token's `exp` may be.
    pub fn new(secret: Option<&str>, max_lifetime_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator { key: secret.map(|s| std::sync::Arc::new(DecodingKey::from_secret(s.as_bytes()))), validation: std::sync::Arc::new(validation), max_lifetime_secs }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        // The header first, read by us: the library would refuse an unknown
        // `alg` with a parser message, and it does not look at `crit`.
        let header = token_part(token, 0).ok_or(AuthError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            tracing::debug!(alg = ?header.get("alg"), "token refused: algorithm");
            return Err(AuthError::WrongAlgorithm);
        }
        if header.contains_key("crit") {
            tracing::debug!("token refused: crit header");
            return Err(AuthError::CriticalHeader);
        }
        let data = decode::<VerifiedClaims>(token, key, &self.validation).map_err(|e| {
            // The detail (never the token) goes to the log only.
            tracing::debug!(error = ?e.kind(), "token refused");
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::WrongAlgorithm,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => AuthError::BadClaims,
                // Claims that are JSON but do not fit (e.g. a string `sub` of the wrong type).
                ErrorKind::Json(_) if token_part(token, 1).is_some() => AuthError::BadClaims,
                _ => AuthError::Malformed,
            }
        })?;
        let c = data.claims;
        if c.sub.trim().is_empty() {
            tracing::debug!("token refused: blank sub");
            return Err(AuthError::BadClaims);
        }
        let now_secs = moonx_events::validate::now_ms() / 1000;
        if c.exp > now_secs.saturating_add(self.max_lifetime_secs) {
            tracing::debug!(exp = c.exp, max_lifetime_secs = self.max_lifetime_secs, "token refused: exp too far ahead");
            return Err(AuthError::LifetimeTooLong);
        }
        Ok(Identity {
            admin: c.roles.iter().any(|r| r == ADMIN_ROLE),
            user_id: c.sub,
            expires_at_ms: c.exp.saturating_mul(1000).min(JS_MAX_SAFE_INTEGER),
            issued_at_secs: c.iat,
        })
    }
}

/// Part `index` of a compact JWS (0: header, 1: claims) when it is a
/// base64url-encoded JSON object.
fn token_part(token: &str, index: usize) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let part = token.split('.').nth(index)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Signs a token (for the demo mode, tests and operators' tooling).
pub fn sign(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
        .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &str = "unit-secret";

    fn now() -> u64 {
        moonx_events::validate::now_ms() / 1000
    }

    fn auth() -> Authenticator {
        Authenticator::new(Some(SECRET), crate::config::defaults::JWT_MAX_LIFETIME_SECS)
    }

    /// A token with any header and claims, HS256-signed with `SECRET`.
    fn forge(header: serde_json::Value, claims: serde_json::Value) -> String {
        use jsonwebtoken::crypto::sign as hs;
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let message = format!("{}.{}", b64(&header), b64(&claims));
        let signature = hs(message.as_bytes(), &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    #[test]
    fn a_plain_token_is_accepted() {
        let i = auth().verify(&forge(json!({"alg": "HS256", "typ": "JWT"}), json!({"sub": "u1", "exp": now() + 60, "roles": ["admin"]}))).unwrap();
        assert_eq!((i.user_id.as_str(), i.admin), ("u1", true));
    }

    #[test]
    fn forgeries_are_refused_in_our_words() {
        let h = json!({"alg": "HS256"});
        let cases = [
            (forge(h.clone(), json!({"sub": "u", "exp": now() + 60, "nbf": now() + 600})), AuthError::NotYetValid),
            (forge(json!({"alg": "HS256", "crit": ["exp"]}), json!({"sub": "u", "exp": now() + 60})), AuthError::CriticalHeader),
            (forge(h.clone(), json!({"sub": "   ", "exp": now() + 60})), AuthError::BadClaims),
            (forge(h.clone(), json!({"sub": "", "exp": now() + 60})), AuthError::BadClaims),
            (forge(h.clone(), json!({"sub": "u", "exp": u64::MAX})), AuthError::LifetimeTooLong),
            (forge(h.clone(), json!({"sub": "u"})), AuthError::BadClaims),
            (forge(h.clone(), json!({"sub": "u", "exp": "soon"})), AuthError::BadClaims),
            (forge(json!({"alg": "none"}), json!({"sub": "u", "exp": now() + 60})), AuthError::WrongAlgorithm),
            (forge(json!({"alg": "HS512"}), json!({"sub": "u", "exp": now() + 60})), AuthError::WrongAlgorithm),
            (forge(json!({"typ": "JWT"}), json!({"sub": "u", "exp": now() + 60})), AuthError::WrongAlgorithm),
            (forge(json!({"alg": "HS256"}), json!({"sub": 42, "exp": now() + 60})), AuthError::BadClaims),
            ("not.a.jwt".to_owned(), AuthError::Malformed),
            (format!("{}x", forge(h.clone(), json!({"sub": "u", "exp": now() + 60}))), AuthError::BadSignature),
            (forge(h, json!({"sub": "u", "exp": now() - 5})), AuthError::Expired),
        ];
        for (token, want) in cases {
            assert_eq!(auth().verify(&token), Err(want), "{token}");
            let text = want.to_string();
            for library_word in ["expected", "variant", "line 1", "InvalidToken", "Json", "Error"] {
                assert!(!text.contains(library_word), "{text}");
            }
        }
    }

    #[test]
    fn expires_at_always_fits_a_javascript_number() {
        let i = auth().verify(&forge(json!({"alg": "HS256"}), json!({"sub": "u", "exp": now() + crate::config::defaults::JWT_MAX_LIFETIME_SECS}))).unwrap();
        assert!(i.expires_at_ms <= JS_MAX_SAFE_INTEGER);
        // Even with no lifetime cap at all, the echoed expiry is clamped.
        let uncapped = Authenticator::new(Some(SECRET), u64::MAX);
        let i = uncapped.verify(&forge(json!({"alg": "HS256"}), json!({"sub": "u", "exp": u64::MAX}))).unwrap();
        assert_eq!(i.expires_at_ms, JS_MAX_SAFE_INTEGER);
    }
}
