//! The one HTTP error type. Every error leaves as `application/problem+json`
//! (RFC 9457: type, title, status, detail); each variant documents its status.
//! Causes of 5xx answers are logged, never returned.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{CampaignId, Coupon, Invalid};
use crate::issuance::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid-request`: input that breaks a rule; names the field.
    #[error("{0}")]
    Invalid(Invalid),
    /// 400 `invalid-request` for a body that is not the JSON we expect.
    #[error("{0}")]
    BadBody(String),
    /// 401 `unauthorized`: missing or wrong admin token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 401 `unauthorized` for a shopper in JWT mode: token missing or invalid.
    #[error("{0}")]
    ShopperUnauthorized(String),
    /// 429 `rate-limited` with Retry-After: too many requests of one shopper or address.
    #[error("too many requests from this {scope}; retry after {retry_after} s")]
    RateLimited {
        scope: &'static str,
        retry_after: u64,
    },
    /// 404 `campaign-not-found`.
    #[error("campaign {0} not found")]
    CampaignNotFound(i64),
    /// 404 `not-found` for an unknown route.
    #[error("no such resource")]
    NoRoute,
    /// 409 `already-issued`, carrying the coupon the shopper already holds.
    #[error("you already hold a coupon of this campaign")]
    AlreadyIssued(Coupon),
    /// 409 `campaign-not-open`: scheduled, ended or paused.
    #[error("{0}")]
    NotOpen(&'static str),
    /// 410 `sold-out`.
    #[error("every coupon of this campaign has been issued; a coupon you got is listed at /api/v1/me/coupons")]
    SoldOut,
    /// 422 `idempotency-key-reused`: a create whose `Idempotency-Key` already created
    /// a campaign with other values.
    #[error("{0}")]
    KeyReused(String),
    /// 413 `payload-too-large`.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// 503 `unavailable` with Retry-After: a dependency cannot answer right now.
    #[error("temporarily unavailable, retry shortly")]
    Unavailable { cause: String, retry_after: u64 },
    /// 503 `unavailable` with Retry-After: Redis lost the campaign and the instance
    /// is re-arming it from MySQL. Not logged one by one (a flash event's every
    /// claim would be): the re-arm logs its own outcome.
    #[error("campaign {id} is being restored after Redis lost it; retry after {retry_after} s")]
    Rearming { id: CampaignId, retry_after: u64 },
    /// 503 `unavailable` with Retry-After: this instance has `limit` claims waiting
    /// on Redis already. Not logged one by one: `coupon_issue_total{result="rejected"}`
    /// counts them, and at that moment there are thousands a second.
    #[error("this instance already has {limit} claims waiting for an answer; retry after {retry_after} s")]
    Overloaded { limit: usize, retry_after: u64 },
}

/// The problem document (RFC 9457) plus the extension members we use.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The offending input, for `invalid-request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// The coupon already held, for `already-issued`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon: Option<Coupon>,
    /// For the `unavailable` of a claim turned away because this instance already has
    /// this many claims waiting on Redis (`server.max_claims_in_flight`); absent when
    /// a dependency failed. Tells "add instances" from "fix Redis" without parsing
    /// `detail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight_limit: Option<usize>,
}

impl ApiError {
    fn kind_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::Invalid(_) | ApiError::BadBody(_) => ("invalid-request", "Invalid request"),
            ApiError::Unauthorized | ApiError::ShopperUnauthorized(_) => {
                ("unauthorized", "Unauthorized")
            }
            ApiError::RateLimited { .. } => ("rate-limited", "Too many requests"),
            ApiError::CampaignNotFound(_) => ("campaign-not-found", "Campaign not found"),
            ApiError::NoRoute => ("not-found", "Not found"),
            ApiError::AlreadyIssued(_) => ("already-issued", "Coupon already issued"),
            ApiError::NotOpen(_) => ("campaign-not-open", "Campaign not open"),
            ApiError::SoldOut => ("sold-out", "Sold out"),
            ApiError::TooLarge(_) => ("payload-too-large", "Payload too large"),
            ApiError::KeyReused(_) => ("idempotency-key-reused", "Idempotency key reused"),
            ApiError::Unavailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::Rearming { .. } => ("unavailable", "Service unavailable"),
        }
    }

    pub fn unavailable(cause: impl Into<String>, retry_after: u64) -> Self {
        ApiError::Unavailable {
            cause: cause.into(),
            retry_after,
        }
    }

    pub fn from_service(err: ServiceError, retry_after: u64) -> Self {
        match err {
            ServiceError::NotFound(id) => ApiError::CampaignNotFound(id),
            ServiceError::Invalid(invalid) => ApiError::Invalid(invalid),
            ServiceError::Unavailable(cause) => ApiError::unavailable(cause, retry_after),
            ServiceError::Overloaded { limit } => ApiError::Overloaded { limit, retry_after },
            ServiceError::NotArmed(id) => ApiError::Rearming { id, retry_after },
            reused @ ServiceError::KeyReused { .. } => ApiError::KeyReused(reused.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::ShopperUnauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::CampaignNotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyIssued(_) | ApiError::NotOpen(_) => StatusCode::CONFLICT,
            ApiError::SoldOut => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::Rearming { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (kind, title) = self.kind_and_title();
        let mut problem = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            field: None,
            coupon: None,
            in_flight_limit: None,
        };
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Invalid(invalid) => problem.field = Some(invalid.field),
            ApiError::AlreadyIssued(coupon) => problem.coupon = Some(coupon.clone()),
            ApiError::Unauthorized | ApiError::ShopperUnauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::Overloaded { limit, .. } => problem.in_flight_limit = Some(*limit),
            ApiError::Unavailable { cause, .. } => tracing::warn!(%cause, "answering 503"),
            _ => {}
        }
        if let ApiError::RateLimited { retry_after, .. }
        | ApiError::Overloaded { retry_after, .. }
        | ApiError::Unavailable { retry_after, .. }
        | ApiError::Rearming { retry_after, .. } = self
        {
            response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
        response
            .content_type("application/problem+json")
            .json(problem)
    }
}
