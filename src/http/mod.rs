//! The HTTP API (actix-web), and the only module besides `startup` that imports
//! actix: routes, extractors, the problem+json error type, health and metrics,
//! and the OpenAPI description. Handlers receive services, never pools.

mod admin;
mod console;
pub mod error;
mod health;
pub mod identity;
pub mod limits;
mod openapi;
mod products;
pub mod request_span;
mod shopper;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::domain::{parse_campaign_id, CampaignId, UserId};
use crate::events::EventProducer;
use crate::issuance::IssuanceService;
use crate::telemetry::metrics;
pub use error::ApiError;
pub use products::TopBodies;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub issuance: IssuanceService,
    pub top_products: crate::catalog::TopProducts,
    pub top_bodies: TopBodies,
    pub refresher: crate::catalog::refresher::Refresher,
    pub admin_token: SecretString,
    pub retry_after_secs: u64,
    /// Used by readiness to ask the brokers for metadata (None: Kafka not used).
    pub kafka_probe: Option<EventProducer>,
    pub kafka_timeout: std::time::Duration,
    pub limits: limits::RateLimits,
    pub identity: identity::ShopperIdentity,
}

impl AppState {
    /// The calling shopper (header or JWT), after the rate limits let the call in.
    pub(crate) fn shopper(&self, req: &HttpRequest) -> Result<UserId, ApiError> {
        let user = self.identity.shopper(req)?;
        self.limits.check(req, Some(&user))?;
        Ok(user)
    }

    /// Rate limit of an anonymous shopper call (per client address).
    pub(crate) fn anonymous(&self, req: &HttpRequest) -> Result<(), ApiError> {
        self.limits.check(req, None)
    }

    fn service_error(&self, err: crate::issuance::ServiceError) -> ApiError {
        ApiError::from_service(err, self.retry_after_secs)
    }
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    let json = web::JsonConfig::default()
        .limit(max_body_bytes)
        .content_type_required(false)
        .error_handler(move |err, _req| {
            use actix_web::error::JsonPayloadError;
            let api = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::TooLarge(max_body_bytes)
                }
                JsonPayloadError::Deserialize(e) => ApiError::BadBody(format!("body: {e}")),
                other => ApiError::BadBody(format!("body: {other}")),
            };
            api.into()
        });
    let path = web::PathConfig::default()
        .error_handler(|err, _req| ApiError::BadBody(format!("path: {err}")).into());
    let query = web::QueryConfig::default()
        .error_handler(|err, _req| ApiError::BadBody(format!("query: {err}")).into());
    cfg.app_data(json)
        .app_data(path)
        .app_data(query)
        .service(
            web::scope("/api/v1")
                .route("/campaigns/{id}/issues", web::post().to(shopper::issue))
                .route("/campaigns/{id}", web::get().to(shopper::campaign))
                .route("/me/coupons", web::get().to(shopper::my_coupons))
                .route("/products/top", web::get().to(products::top)),
        )
        .service(
            web::scope("/admin/v1")
                .route("/campaigns", web::post().to(admin::create))
                .route("/campaigns", web::get().to(admin::list))
                .route("/campaigns/{id}", web::get().to(admin::get))
                .route("/campaigns/{id}/pause", web::post().to(admin::pause))
                .route("/campaigns/{id}/resume", web::post().to(admin::resume))
                .route("/catalog/refresh", web::post().to(products::refresh)),
        )
        .route("/health/live", web::get().to(health::live))
        .route("/health/ready", web::get().to(health::ready))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(openapi::spec))
        .configure(console::configure)
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(ApiError::NoRoute)
        }));
}

/// Middleware: records `http_server_request_duration_seconds` by route template (found
/// by the root span, which runs first).
pub async fn record_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let response = next.call(req).await?;
    let request = response.request();
    metrics::get().record_http(
        request_span::MatchedRoute::of(request).0,
        request_span::method_name(request.method()),
        response.status().as_u16(),
        started.elapsed(),
    );
    Ok(response)
}

/// Checks `Authorization: Bearer <admin token>` in constant time.
pub(crate) fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    let expected = state.admin_token.expose_secret().as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Turns a JSON document into `T`, naming the path of the first bad field.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            ApiError::BadBody(format!("body: {inner}"))
        } else {
            ApiError::BadBody(format!("body: {path}: {inner}"))
        }
    })
}

pub(crate) fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    parse_campaign_id(raw).map_err(ApiError::Invalid)
}
