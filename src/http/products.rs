//! The top-products endpoint of the shop's home page, and its admin refresh.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{require_admin, ApiError, AppState};
use crate::domain::{parse_top_query, TopProduct};

#[derive(Deserialize)]
pub struct TopQuery {
    limit: Option<String>,
    days: Option<String>,
}

/// Borrows the first `limit` products of the cached snapshot: nothing is copied.
#[derive(Serialize, ToSchema)]
pub struct TopProducts<'a> {
    pub window_days: u32,
    pub generated_at: DateTime<Utc>,
    pub products: &'a [TopProduct],
}

/// Best sellers over the last `days` UTC days (ties by product id).
#[utoipa::path(
    get, path = "/api/v1/products/top", tag = "shopper",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 5"),
        ("days" = Option<u32>, Query, minimum = 1, maximum = 30, description = "1 to 30, default 3"),
    ),
    responses(
        (status = 200, body = TopProducts, headers(("X-Data-Source" = String, description = "l1, redis, mysql or stale"))),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited, retry after the Retry-After header", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn top(
    req: HttpRequest,
    query: web::Query<TopQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.anonymous(&req)?;
    let (limit, days) = parse_top_query(query.limit.as_deref(), query.days.as_deref())
        .map_err(ApiError::Invalid)?;
    let (snapshot, source) = state
        .top_products
        .top(days)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), state.retry_after_secs))?;
    let shown = snapshot.products.len().min(limit as usize);
    Ok(HttpResponse::Ok()
        .insert_header(("X-Data-Source", source.as_str()))
        .json(TopProducts {
            window_days: snapshot.window_days,
            generated_at: snapshot.generated_at,
            products: &snapshot.products[..shown],
        }))
}

#[derive(Serialize, ToSchema)]
pub struct Refreshed {
    pub refreshed: bool,
}

/// Recompute the top products now and tell every instance to refresh its L1.
#[utoipa::path(
    post, path = "/admin/v1/catalog/refresh", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, body = Refreshed),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    state
        .refresher
        .refresh_now()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), state.retry_after_secs))?;
    Ok(HttpResponse::Ok().json(Refreshed { refreshed: true }))
}
