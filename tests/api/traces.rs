//! One trace per claim: the service, run as a process exporting OTLP/HTTP (JSON) to
//! a receiver in this test, puts the request span, the claim span and the
//! persister's span of the coupon event into the caller's trace, carried through the
//! outbox and Kafka in a `traceparent` header.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::Value;

use crate::helpers::{
    flashcoupon_command, free_port, isolated_settings, prepare_database, Process,
};

/// Every span the receiver got: (trace id, span id, parent span id, name).
type Spans = Arc<Mutex<Vec<(String, String, String, String)>>>;

async fn receive(body: web::Bytes, spans: web::Data<Spans>) -> HttpResponse {
    let Ok(export) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut got = spans.lock().unwrap();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                got.push((
                    text(&span["traceId"]),
                    text(&span["spanId"]),
                    text(&span["parentSpanId"]),
                    text(&span["name"]),
                ));
            }
        }
    }
    HttpResponse::Ok().json(serde_json::json!({}))
}

#[tokio::test]
async fn a_claim_is_one_trace_from_the_request_to_the_persister() {
    let spans: Spans = Arc::default();
    let receiver = {
        let spans = web::Data::new(spans.clone());
        HttpServer::new(move || {
            App::new()
                .app_data(spans.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/v1/traces", web::post().to(receive))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap()
    };
    let collector = format!("http://{}", receiver.addrs()[0]);
    let receiver = receiver.run();
    let receiver_handle = receiver.handle();
    tokio::spawn(receiver);

    let mut settings = isolated_settings();
    settings.server.port = free_port();
    let db = prepare_database(&settings).await;
    let mut command = flashcoupon_command(&settings, &["serve"]);
    command
        .env("FLASHCOUPON__TRACING__OTLP_ENDPOINT", &collector)
        .env("FLASHCOUPON__TRACING__OTLP_PROTOCOL", "http/json")
        .env("FLASHCOUPON__CATALOG__SALES_ENABLED", "false");
    let mut server = Process::spawn(&mut command);
    server
        .wait_listening(settings.server.port, Duration::from_secs(30))
        .await;
    let base = format!("http://127.0.0.1:{}", settings.server.port);
    let client = reqwest::Client::new();
    let id = crate::helpers::open_campaign_at(&client, &base, 5).await;

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    let claimed = client
        .post(format!("{base}/api/v1/campaigns/{id}/issues"))
        .header("X-User-Id", "traced-shopper")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status(), 201);
    // A claim without a caller's context starts a trace of its own.
    let untraced = client
        .post(format!("{base}/api/v1/campaigns/{id}/issues"))
        .header("X-User-Id", "untraced-shopper")
        .send()
        .await
        .unwrap();
    assert_eq!(untraced.status(), 201);

    let deadline = Instant::now() + Duration::from_secs(60);
    while db.persisted_count(id).await.unwrap() < 2 {
        assert!(Instant::now() < deadline, "coupons never persisted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM flushes the batch exporter on the way out.
    server.signal("TERM");
    assert!(server.wait(Duration::from_secs(30)), "serve did not stop");

    let got = spans.lock().unwrap().clone();
    let ours: Vec<_> = got.iter().filter(|s| s.0 == trace_id).collect();
    let named = |prefix: &str| {
        ours.iter()
            .find(|s| s.3.starts_with(prefix))
            .unwrap_or_else(|| panic!("no span {prefix:?} in trace {trace_id}: {ours:#?}"))
    };
    let request = named("POST /api/v1/campaigns/{id}/issues");
    assert_eq!(
        request.2, caller_span,
        "request span continues the caller's"
    );
    let claim = named("coupon.claim");
    assert_eq!(
        claim.2, request.1,
        "claim span is a child of the request span"
    );
    let persist = named("persister ");
    assert_eq!(
        persist.2, claim.1,
        "persister span is a child of the claim span"
    );

    let other_claims: Vec<_> = got
        .iter()
        .filter(|s| s.3 == "coupon.claim" && s.0 != trace_id)
        .collect();
    assert_eq!(
        other_claims.len(),
        1,
        "the untraced claim has its own trace"
    );
    let other_trace = &other_claims[0].0;
    assert!(
        got.iter()
            .any(|s| &s.0 == other_trace && s.3.starts_with("persister ")),
        "the untraced claim's trace also reaches the persister"
    );
    receiver_handle.stop(true).await;
}
