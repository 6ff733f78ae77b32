//! Admin endpoints for marketing and on-call (bearer token): create, list, get,
//! pause and resume campaigns, with live figures.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{campaign_id, require_admin, ApiError, AppState};
use crate::domain::{CampaignStatus, Discount, NewCampaign};
use crate::issuance::CampaignView;

/// A campaign to create (RFC 3339 times).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub total_quantity: i64,
    /// Between the years 2000 and 9999.
    pub starts_at: DateTime<Utc>,
    /// After `starts_at` and in the future.
    pub ends_at: DateTime<Utc>,
    pub discount: Discount,
    #[schema(minimum = 1, maximum = 3650)]
    pub coupon_valid_days: i32,
}

/// A campaign with live figures.
#[derive(Serialize, ToSchema)]
pub struct AdminCampaign {
    pub id: i64,
    pub name: String,
    pub status: CampaignStatus,
    pub paused: bool,
    pub total_quantity: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub discount: Discount,
    pub coupon_valid_days: i32,
    pub created_at: DateTime<Utc>,
    /// Coupons handed out (Redis, the source of truth during the event).
    pub issued: i64,
    pub remaining: i64,
    /// Coupons written to MySQL by the persister.
    pub persisted: Option<i64>,
    /// Issued coupons waiting in the outbox for Kafka.
    pub pending_events: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AdminCampaigns {
    pub campaigns: Vec<AdminCampaign>,
}

impl From<CampaignView> for AdminCampaign {
    fn from(v: CampaignView) -> Self {
        Self {
            id: v.campaign.id,
            name: v.campaign.name,
            status: v.status,
            paused: v.campaign.paused,
            total_quantity: v.campaign.total_quantity,
            starts_at: v.campaign.starts_at,
            ends_at: v.campaign.ends_at,
            discount: v.campaign.discount,
            coupon_valid_days: v.campaign.coupon_valid_days,
            created_at: v.campaign.created_at,
            issued: v.issued,
            remaining: v.remaining,
            persisted: v.persisted,
            pending_events: v.pending_events,
        }
    }
}

/// Create a campaign: written to MySQL, then armed in Redis.
#[utoipa::path(
    post, path = "/admin/v1/campaigns", tag = "admin", request_body = CreateCampaign,
    security(("admin_token" = [])),
    responses(
        (status = 201, body = AdminCampaign),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let body: CreateCampaign = super::from_json(body.into_inner())?;
    let view = state
        .issuance
        .create(NewCampaign {
            name: body.name,
            total_quantity: body.total_quantity,
            starts_at: body.starts_at,
            ends_at: body.ends_at,
            discount: body.discount,
            coupon_valid_days: body.coupon_valid_days,
        })
        .await
        .map_err(|e| state.service_error(e))?;
    Ok(HttpResponse::Created().json(AdminCampaign::from(view)))
}

/// Every campaign, newest first, with live figures.
#[utoipa::path(
    get, path = "/admin/v1/campaigns", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, body = AdminCampaigns),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let views = state
        .issuance
        .admin_list()
        .await
        .map_err(|e| state.service_error(e))?;
    Ok(HttpResponse::Ok().json(AdminCampaigns {
        campaigns: views.into_iter().map(AdminCampaign::from).collect(),
    }))
}

/// One campaign with live figures.
#[utoipa::path(
    get, path = "/admin/v1/campaigns/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 1, description = "campaign id")),
    responses(
        (status = 200, body = AdminCampaign),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let id = campaign_id(&path)?;
    let view = state
        .issuance
        .admin_view(id)
        .await
        .map_err(|e| state.service_error(e))?;
    Ok(HttpResponse::Ok().json(AdminCampaign::from(view)))
}

async fn brake(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let id = campaign_id(&path)?;
    let view = state
        .issuance
        .set_paused(id, paused)
        .await
        .map_err(|e| state.service_error(e))?;
    Ok(HttpResponse::Ok().json(AdminCampaign::from(view)))
}

/// Pause a campaign: claims answer 409 campaign-not-open until resumed.
#[utoipa::path(
    post, path = "/admin/v1/campaigns/{id}/pause", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 1, description = "campaign id")),
    responses(
        (status = 200, body = AdminCampaign),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    brake(req, path, state, true).await
}

/// Resume a paused campaign.
#[utoipa::path(
    post, path = "/admin/v1/campaigns/{id}/resume", tag = "admin", security(("admin_token" = [])),
    params(("id" = i64, Path, minimum = 1, description = "campaign id")),
    responses(
        (status = 200, body = AdminCampaign),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    brake(req, path, state, false).await
}
