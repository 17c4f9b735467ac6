//! Client authentication: HS256 JWTs signed with `JWT_SECRET`. `sub` is the
//! user id, `roles` an array of strings (`admin` opens `system`), `exp` is
//! required. Tokens are never logged.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

pub const ADMIN_ROLE: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub admin: bool,
    /// Milliseconds since the epoch after which private events stop.
    pub expires_at_ms: u64,
}

#[derive(Clone)]
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is not configured on this server (JWT_SECRET is unset)")]
    NotConfigured,
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

impl Authenticator {
    pub fn new(secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator { key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())), validation }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NotConfigured)?;
        let data = decode::<Claims>(token, key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            other => AuthError::Invalid(format!("{other:?}")),
        })?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        Ok(Identity { admin: c.roles.iter().any(|r| r == ADMIN_ROLE), user_id: c.sub, expires_at_ms: c.exp.saturating_mul(1000) })
    }
}

/// Signs a token (for the demo mode, tests and operators' tooling).
pub fn sign(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
        .expect("HS256 signing cannot fail")
}
