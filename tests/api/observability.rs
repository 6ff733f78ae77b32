//! The on-call kit against the running code: a private Prometheus scrapes the
//! service and evaluates the shipped rules; every dashboard query must return data,
//! and stopping Redis under traffic must fire the matching alert (then resolve it).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashcoupon::domain::{OrderItem, OrderPaidEvent};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::helpers::{spawn_app_with, PrivatePrometheus, PrivateRedis, TestApp};

/// Claims (new shoppers) and top-products reads at a steady pace until `stop`.
fn steady_traffic(
    app: &TestApp,
    campaign: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let client = app.client.clone();
    let base = app.address.clone();
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let _ = client
                .post(format!("{base}/api/v1/campaigns/{campaign}/issues"))
                .header("X-User-Id", format!("steady-{i}"))
                .send()
                .await;
            let _ = client
                .get(format!("{base}/api/v1/products/top?days={}", 1 + i % 3))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    })
}

async fn seed_catalogue(app: &TestApp) {
    let products: Vec<(i64, String, Decimal)> = (1..=3)
        .map(|i| (i, format!("P{i}"), Decimal::new(100, 0)))
        .collect();
    app.db.upsert_products(&products).await.unwrap();
    app.db
        .apply_orders(&[OrderPaidEvent {
            event_id: "seed".into(),
            order_id: "seed".into(),
            paid_at: chrono::Utc::now(),
            items: vec![OrderItem {
                product_id: 1,
                quantity: 2,
            }],
        }])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_the_service() {
    let app = spawn_app_with(|s| s.catalog.l1_ttl_ms = 200).await;
    seed_catalogue(&app).await;
    let campaign = app.open_campaign(1_000_000).await;
    let prometheus = PrivatePrometheus::start(&app.address.replace("http://", "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = steady_traffic(&app, campaign, stop.clone());
    // A dead letter, so the DLT panels have something to show.
    let producer = flashcoupon::events::EventProducer::new(
        &app.settings.kafka,
        app.settings.kafka.issued_topic.clone(),
    )
    .unwrap();
    producer.publish_raw(b"k", b"not json", &[]).await.unwrap();
    app.admin_get(campaign).await;
    // Long enough for rate windows, the consumer lag sampler (10 s) and a refresh.
    tokio::time::sleep(Duration::from_secs(25)).await;

    let listing = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/dashboard-queries"
    ))
    .output()
    .unwrap();
    assert!(listing.status.success());
    let mut checked = 0;
    let mut empty = Vec::new();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let panel: Value = serde_json::from_str(line).unwrap();
        let expr = panel["expr"].as_str().unwrap();
        // reconcile_differences is written by the reconcile job, not by serve.
        if expr.contains("reconcile_differences") {
            continue;
        }
        let result = prometheus
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        if result.is_empty() {
            empty.push(format!(
                "{} / {}: {expr}",
                panel["dashboard"], panel["panel"]
            ));
        }
        checked += 1;
    }
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert!(checked > 30, "only {checked} queries");
    assert!(
        empty.is_empty(),
        "{} of {checked} dashboard queries returned nothing:\n{}",
        empty.len(),
        empty.join("\n")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_redis_under_traffic_fires_the_error_ratio_alert_within_two_minutes_and_it_resolves(
) {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis.url = url.clone().into()).await;
    seed_catalogue(&app).await;
    let campaign = app.open_campaign(1_000_000).await;
    let prometheus = PrivatePrometheus::start(&app.address.replace("http://", "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = steady_traffic(&app, campaign, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!prometheus
        .firing()
        .await
        .contains(&"FlashcouponApiErrorRatioCritical".to_owned()));

    redis.stop();
    let stopped = Instant::now();
    let fired = loop {
        if prometheus
            .firing()
            .await
            .iter()
            .any(|a| a == "FlashcouponApiErrorRatioCritical")
        {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(150),
            "alert did not fire; firing: {:?}",
            prometheus.firing().await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("FlashcouponApiErrorRatioCritical fired {fired:?} after Redis stopped");
    assert!(
        fired <= Duration::from_secs(125),
        "detection goal is 2 minutes, took {fired:?}"
    );

    redis.restart().await;
    crate::helpers::campaign_arm(&app.settings);
    let back = Instant::now();
    loop {
        if !prometheus
            .firing()
            .await
            .iter()
            .any(|a| a == "FlashcouponApiErrorRatioCritical")
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(180),
            "alert did not resolve"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("and resolved {:?} after Redis came back", back.elapsed());
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    app.stop().await;
}
