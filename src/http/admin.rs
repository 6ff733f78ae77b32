//! Admin endpoints for marketing and on-call (bearer token): create, list, get,
//! pause and resume campaigns, with live figures.

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{campaign_id, require_admin, ApiError, AppState};
use crate::domain::{CampaignStatus, Discount, IdempotencyKey, Invalid, NewCampaign};
use crate::issuance::CampaignView;

/// A campaign to create (RFC 3339 times).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "whole_number")]
    pub total_quantity: i64,
    /// Between the years 2000 and 9999.
    pub starts_at: DateTime<Utc>,
    /// After `starts_at` and in the future.
    pub ends_at: DateTime<Utc>,
    pub discount: Discount,
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(deserialize_with = "whole_number")]
    pub coupon_valid_days: i32,
}

/// An integer field of a request body. JSON Schema counts `7.0` as an integer (a
/// number with no fraction), and so does this; `7.5` or `"7"` is a type error.
fn whole_number<'de, D, T>(input: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::{Error, Unexpected, Visitor};
    struct Whole;
    impl Visitor<'_> for Whole {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            // 2^63 is exact in an f64; every whole f64 below it fits an i64.
            if v.fract() == 0.0 && v.abs() < 9_223_372_036_854_775_808.0 {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    let whole = input.deserialize_any(Whole)?;
    T::try_from(whole).map_err(|_| D::Error::custom(format!("{whole} is out of range")))
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

/// Create a campaign: written to MySQL, then armed in Redis. Send an
/// `Idempotency-Key` to retry safely: a create answered 503 (or not at all) may have
/// written the campaign, and a retry under the same key gives back that one.
#[utoipa::path(
    post, path = "/admin/v1/campaigns", tag = "admin", request_body = CreateCampaign,
    security(("admin_token" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 64, pattern = r"^[!-~]+$",
         description = "one per campaign to create (a UUID, say): a retry with the same key and body \
                        returns the campaign the first attempt created, and never creates a second"),
    ),
    responses(
        (status = 201, body = AdminCampaign,
         headers(("Idempotent-Replayed" = String, description = "`true` when an earlier request with this Idempotency-Key created it"))),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "the Idempotency-Key already created a campaign with other values",
         body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let key = idempotency_key(&req)?;
    let body: CreateCampaign = super::from_json(body.into_inner())?;
    let created = state
        .issuance
        .create(
            NewCampaign {
                name: body.name,
                total_quantity: body.total_quantity,
                starts_at: body.starts_at,
                ends_at: body.ends_at,
                discount: body.discount,
                coupon_valid_days: body.coupon_valid_days,
            },
            key.as_ref(),
        )
        .await
        .map_err(|e| state.service_error(e))?;
    let mut answer = HttpResponse::Created();
    if created.replayed {
        answer.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(answer.json(AdminCampaign::from(created.view)))
}

/// The request header that makes a create safe to retry
/// (draft-ietf-httpapi-idempotency-key-header).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Marks the answer to a create that an earlier request with its key made.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let raw = value.to_str().map_err(|_| {
        ApiError::Invalid(Invalid::new(
            "Idempotency-Key",
            "only visible ASCII characters are allowed",
        ))
    })?;
    IdempotencyKey::parse(raw)
        .map(Some)
        .map_err(ApiError::Invalid)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(
        total_quantity: serde_json::Value,
        coupon_valid_days: serde_json::Value,
    ) -> Result<(i64, i32), String> {
        super::super::from_json::<CreateCampaign>(json!({
            "name": "n", "total_quantity": total_quantity,
            "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-01-02T00:00:00Z",
            "discount": {"kind": "percent", "value": 30}, "coupon_valid_days": coupon_valid_days,
        }))
        .map(|body| (body.total_quantity, body.coupon_valid_days))
        .map_err(|err| match err {
            ApiError::BadBody(detail) => detail,
            other => panic!("not a body error: {other:?}"),
        })
    }

    #[test]
    fn integer_fields_take_whole_numbers_written_with_a_fraction_as_json_schema_does() {
        assert_eq!(read(json!(100), json!(7)).unwrap(), (100, 7));
        assert_eq!(read(json!(100.0), json!(7.0)).unwrap(), (100, 7));
        let half = read(json!(100.5), json!(7)).unwrap_err();
        assert!(
            half.contains("total_quantity") && half.contains("100.5"),
            "{half}"
        );
        let text = read(json!("100"), json!(7)).unwrap_err();
        assert!(text.contains("expected an integer"), "{text}");
        let huge = read(json!(100), json!(3_000_000_000_i64)).unwrap_err();
        assert!(
            huge.contains("coupon_valid_days") && huge.contains("out of range"),
            "{huge}"
        );
        assert!(read(json!(1e300), json!(7))
            .unwrap_err()
            .contains("total_quantity"));
        assert!(read(json!(u64::MAX), json!(7)).is_err());
    }
}
