//! Who the shopper is. By default the trusted gateway's `X-User-Id` header; when a
//! JWT key is configured, a verified `Authorization: Bearer <jwt>` whose `sub` is the
//! shopper (and `X-User-Id` is ignored, so it cannot be spoofed past the gateway).

use actix_web::http::header;
use actix_web::HttpRequest;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::ApiError;
use crate::config::AuthSettings;
use crate::domain::{Invalid, UserId};

#[derive(Clone)]
pub enum ShopperIdentity {
    /// `X-User-Id`, set by the gateway.
    Header,
    /// A verified JWT's `sub`.
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
    },
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl ShopperIdentity {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let secret = settings.jwt_secret.expose_secret();
        let key_file = settings.jwt_public_key_file.trim();
        let (key, algorithms) = match (secret.is_empty(), key_file.is_empty()) {
            (true, true) => return Ok(Self::Header),
            (false, false) => anyhow::bail!(
                "auth.jwt_secret and auth.jwt_public_key_file are both set: choose one"
            ),
            (false, true) => (
                DecodingKey::from_secret(secret.as_bytes()),
                vec![Algorithm::HS256],
            ),
            (true, false) => {
                let pem = std::fs::read(key_file)
                    .map_err(|e| anyhow::anyhow!("auth.jwt_public_key_file = {key_file:?}: {e}"))?;
                match DecodingKey::from_rsa_pem(&pem) {
                    Ok(key) => (key, vec![Algorithm::RS256]),
                    Err(_) => (
                        DecodingKey::from_ec_pem(&pem).map_err(|e| {
                            anyhow::anyhow!(
                                "auth.jwt_public_key_file = {key_file:?} is neither an RSA nor an EC public key: {e}"
                            )
                        })?,
                        vec![Algorithm::ES256],
                    ),
                }
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = settings.jwt_leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if !settings.jwt_issuer.is_empty() {
            validation.set_issuer(&[&settings.jwt_issuer]);
        }
        if settings.jwt_audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&settings.jwt_audience]);
        }
        Ok(Self::Jwt {
            key,
            validation: Box::new(validation),
        })
    }

    /// The calling shopper, or 400 (bad header) / 401 (missing or invalid token).
    pub fn shopper(&self, req: &HttpRequest) -> Result<UserId, ApiError> {
        match self {
            Self::Header => from_header(req),
            Self::Jwt { key, validation } => {
                let token = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or(ApiError::ShopperUnauthorized(
                        "a bearer token (JWT) is required".into(),
                    ))?;
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|e| ApiError::ShopperUnauthorized(format!("invalid token: {e}")))?;
                UserId::parse(&data.claims.sub).map_err(|e| {
                    ApiError::ShopperUnauthorized(format!("token subject: {}", e.message))
                })
            }
        }
    }
}

/// A name built once: looking a header up by `&str` makes actix copy the name into
/// a new `HeaderName` on every request.
const X_USER_ID: header::HeaderName = header::HeaderName::from_static("x-user-id");

fn from_header(req: &HttpRequest) -> Result<UserId, ApiError> {
    let raw = req
        .headers()
        .get(X_USER_ID)
        .ok_or_else(|| ApiError::Invalid(Invalid::new("X-User-Id", "header is required")))?
        .to_str()
        .map_err(|_| ApiError::Invalid(Invalid::new("X-User-Id", "must be visible ASCII")))?;
    UserId::parse(raw).map_err(ApiError::Invalid)
}
