//! Shopper endpoints: claim a coupon, see a campaign, list my coupons.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{campaign_id, ApiError, AppState};
use crate::domain::{CampaignStatus, Coupon, IssueOutcome};
use crate::telemetry::metrics;

/// Public view of a campaign.
#[derive(Serialize, ToSchema)]
pub struct PublicCampaign {
    pub id: i64,
    pub name: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub status: CampaignStatus,
    pub total_quantity: i64,
    pub remaining: i64,
}

#[derive(Serialize, ToSchema)]
pub struct MyCoupon {
    pub coupon_code: String,
    pub campaign_id: i64,
    pub sequence: i64,
    pub issued_at: DateTime<Utc>,
    /// False while the coupon is issued but not yet written to MySQL.
    pub persisted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct MyCoupons {
    pub coupons: Vec<MyCoupon>,
}

/// Claim a coupon of a campaign for the calling shopper.
#[utoipa::path(
    post, path = "/api/v1/campaigns/{id}/issues", tag = "shopper",
    params(("id" = i64, Path, minimum = 1, description = "campaign id"),
           ("X-User-Id" = String, Header, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.:@-]{1,64}$", description = "shopper id set by the gateway (ignored in JWT mode)")),
    responses(
        (status = 201, description = "coupon issued", body = Coupon),
        (status = 400, description = "invalid request", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "JWT mode: bearer token missing or invalid", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign not found", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited, retry after the Retry-After header", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "already issued (with the coupon) or campaign not open", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "sold out", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable (Redis cannot answer; or Redis lost the campaign and the instance is re-arming it from MySQL; or this instance already has server.max_claims_in_flight claims waiting: then in_flight_limit says how many), retry after the Retry-After header", body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn issue(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    let user = state.shopper(&req).inspect_err(|err| {
        if matches!(err, ApiError::RateLimited { .. }) {
            metrics::get().record_claim_rejected();
        }
    })?;
    let outcome = state
        .issuance
        .claim(id, &user)
        .await
        .map_err(|e| state.service_error(e))?;
    match outcome {
        IssueOutcome::Issued(coupon) => Ok(HttpResponse::Created().json(coupon)),
        IssueOutcome::AlreadyIssued(coupon) => Err(ApiError::AlreadyIssued(coupon)),
        IssueOutcome::SoldOut => Err(ApiError::SoldOut),
        IssueOutcome::NotOpen(reason) => Err(ApiError::NotOpen(reason.describe())),
        IssueOutcome::NotArmed => Err(ApiError::unavailable(
            "campaign not armed",
            state.retry_after_secs,
        )),
    }
}

/// Public view of one campaign.
#[utoipa::path(
    get, path = "/api/v1/campaigns/{id}", tag = "shopper",
    params(("id" = i64, Path, minimum = 1, description = "campaign id")),
    responses(
        (status = 200, body = PublicCampaign),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited, retry after the Retry-After header", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn campaign(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = campaign_id(&path)?;
    state.anonymous(&req)?;
    let view = state
        .issuance
        .public_view(id)
        .await
        .map_err(|e| state.service_error(e))?;
    Ok(HttpResponse::Ok().json(PublicCampaign {
        id: view.campaign.id,
        name: view.campaign.name,
        starts_at: view.campaign.starts_at,
        ends_at: view.campaign.ends_at,
        status: view.status,
        total_quantity: view.campaign.total_quantity,
        remaining: view.remaining,
    }))
}

/// The caller's coupons, including those not yet persisted.
#[utoipa::path(
    get, path = "/api/v1/me/coupons", tag = "shopper",
    params(("X-User-Id" = String, Header, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_.:@-]{1,64}$", description = "shopper id set by the gateway (ignored in JWT mode)")),
    responses(
        (status = 200, body = MyCoupons),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "JWT mode: bearer token missing or invalid", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited, retry after the Retry-After header", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn my_coupons(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user = state.shopper(&req)?;
    let held = state
        .issuance
        .coupons_of(&user)
        .await
        .map_err(|e| state.service_error(e))?;
    let coupons = held
        .into_iter()
        .map(|h| MyCoupon {
            coupon_code: h.coupon.coupon_code,
            campaign_id: h.coupon.campaign_id,
            sequence: h.coupon.sequence,
            issued_at: h.coupon.issued_at,
            persisted: h.persisted,
        })
        .collect();
    Ok(HttpResponse::Ok().json(MyCoupons { coupons }))
}
