//! The top-products endpoint of the shop's home page, and its admin refresh.

use std::sync::{Arc, Weak};

use actix_web::{http::header::ContentType, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{require_admin, ApiError, AppState};
use crate::domain::{parse_top_query, TopProduct, TopSnapshot};

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
    let body = state
        .top_bodies
        .body(&snapshot, days, limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string(), state.retry_after_secs))?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Data-Source", source.as_str()))
        .content_type(ContentType::json())
        .body(body))
}

/// Rendered bodies of `GET /api/v1/products/top` at most this large in all (a body
/// of 100 products is about 10 KB; 30 windows x 100 limits could make 30 MB).
const MAX_RENDERED_BYTES: u64 = 4 * 1024 * 1024;

/// The JSON bodies of `GET /api/v1/products/top`, rendered once per snapshot and
/// (days, limit). The home page asks the same question thousands of times a second
/// and serializing the answer was a tenth of the endpoint's CPU; the answer changes
/// only when the catalog serves another snapshot. A body is reused only while the
/// catalog hands out the very snapshot (the same `Arc`) it was rendered from, so a
/// refresh shows at once. The cache holds that snapshot weakly: an old snapshot's
/// products are freed when the catalog drops it, and while the `Weak` lives no new
/// snapshot can take its address, so the comparison is exact. Clones share one cache.
#[derive(Clone)]
pub struct TopBodies {
    rendered: Cache<(u32, u32), (Weak<TopSnapshot>, web::Bytes)>,
}

impl Default for TopBodies {
    fn default() -> Self {
        Self {
            rendered: Cache::builder()
                .max_capacity(MAX_RENDERED_BYTES)
                .weigher(|_, (_, body): &(Weak<TopSnapshot>, web::Bytes)| {
                    u32::try_from(body.len()).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }
}

impl TopBodies {
    /// The body for the first `limit` products of `snapshot`, a `days`-day window.
    async fn body(
        &self,
        snapshot: &Arc<TopSnapshot>,
        days: u32,
        limit: u32,
    ) -> Result<web::Bytes, serde_json::Error> {
        if let Some((rendered_from, body)) = self.rendered.get(&(days, limit)).await {
            if std::ptr::eq(rendered_from.as_ptr(), Arc::as_ptr(snapshot)) {
                return Ok(body);
            }
        }
        // Boxed, as the catalog's miss: the insert's future stays out of every hit's.
        Box::pin(self.render(snapshot, days, limit)).await
    }

    /// Renders the body and keeps it for the next callers of this snapshot.
    async fn render(
        &self,
        snapshot: &Arc<TopSnapshot>,
        days: u32,
        limit: u32,
    ) -> Result<web::Bytes, serde_json::Error> {
        let shown = snapshot.products.len().min(limit as usize);
        let body = web::Bytes::from(serde_json::to_vec(&TopProducts {
            window_days: snapshot.window_days,
            generated_at: snapshot.generated_at,
            products: &snapshot.products[..shown],
        })?);
        self.rendered
            .insert((days, limit), (Arc::downgrade(snapshot), body.clone()))
            .await;
        Ok(body)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn snapshot(names: &[&str]) -> Arc<TopSnapshot> {
        Arc::new(TopSnapshot {
            window_days: 3,
            generated_at: Utc::now(),
            products: names
                .iter()
                .zip(1..)
                .map(|(name, rank)| TopProduct {
                    rank,
                    product_id: i64::from(rank),
                    name: (*name).to_owned(),
                    price: Decimal::new(1999, 2),
                    sold: 10 - i64::from(rank),
                })
                .collect(),
        })
    }

    fn names(body: &web::Bytes) -> Vec<String> {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        json["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_body_is_reused_for_its_snapshot_and_limit_only() {
        let bodies = TopBodies::default();
        let first = snapshot(&["kettle", "mug", "teapot"]);
        let two = bodies.body(&first, 3, 2).await.unwrap();
        assert_eq!(names(&two), ["kettle", "mug"]);
        // The same question again is the same bytes, not a new rendering.
        let again = bodies.body(&first, 3, 2).await.unwrap();
        assert_eq!(again.as_ptr(), two.as_ptr());
        // Another limit, and a limit beyond the snapshot, are bodies of their own.
        assert_eq!(names(&bodies.body(&first, 3, 1).await.unwrap()), ["kettle"]);
        assert_eq!(names(&bodies.body(&first, 3, 50).await.unwrap()).len(), 3);
        // Another snapshot (a refresh), even with the same window and limit, is rendered anew.
        let refreshed = snapshot(&["teapot", "kettle", "mug"]);
        let after = bodies.body(&refreshed, 3, 2).await.unwrap();
        assert_eq!(names(&after), ["teapot", "kettle"]);
        // The cache keeps no snapshot alive: once the catalog lets go of one, it is freed.
        let first_held = Arc::downgrade(&first);
        drop(first);
        assert!(first_held.upgrade().is_none());
        assert_eq!(Arc::strong_count(&refreshed), 1);
        let json: serde_json::Value = serde_json::from_slice(&after).unwrap();
        assert_eq!(json["window_days"], 3);
        assert_eq!(json["products"][0]["price"], "19.99");
    }
}
