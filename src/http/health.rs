//! Liveness, readiness (each dependency named) and the Prometheus endpoint.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::telemetry::metrics;

#[derive(Serialize, ToSchema)]
pub struct Live {
    pub status: &'static str,
}

/// One dependency's state.
#[derive(Serialize, ToSchema)]
pub struct Check {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub redis: Check,
    pub mysql: Check,
    pub kafka: Check,
}

fn check(result: Result<(), String>) -> Check {
    match result {
        Ok(()) => Check {
            status: "up",
            error: None,
        },
        Err(e) => Check {
            status: "down",
            error: Some(e),
        },
    }
}

/// The process runs.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Live)))]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Live { status: "up" })
}

/// Every dependency answers (Redis, MySQL, Kafka); 503 naming the ones that do not.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = Ready)))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let redis = state.issuance.store().ping();
    let mysql = state.issuance.db().ping();
    let kafka = async {
        match &state.kafka_probe {
            Some(producer) => crate::events::ping(
                producer.inner(),
                state.kafka_timeout.min(Duration::from_secs(2)),
            )
            .await
            .and_then(|n| {
                if n > 0 {
                    Ok(())
                } else {
                    Err("no broker in metadata".into())
                }
            }),
            None => Ok(()),
        }
    };
    let (redis, mysql, kafka) = futures::join!(redis, mysql, kafka);
    let ready = Ready {
        redis: check(redis.map_err(|e| e.to_string())),
        mysql: check(mysql.map_err(|e| e.to_string())),
        kafka: check(kafka),
        status: "up",
    };
    let all_up = [&ready.redis, &ready.mysql, &ready.kafka]
        .iter()
        .all(|c| c.status == "up");
    if all_up {
        HttpResponse::Ok().json(ready)
    } else {
        HttpResponse::ServiceUnavailable().json(Ready {
            status: "down",
            ..ready
        })
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::get().render())
}
