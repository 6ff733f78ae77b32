//! Top products: correct ranking, and a read path that stays up when Redis or
//! MySQL does not, without the fallback becoming the outage.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use flashcoupon::domain::{OrderItem, OrderPaidEvent};
use flashcoupon::events::EventProducer;
use futures::{stream, StreamExt};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::helpers::{
    assert_problem, isolated_settings, metric_value, prepare_database, spawn_app_with, start_app,
    PrivateMariaDb, PrivateRedis, TestApp, ADMIN_TOKEN,
};

fn order(event_id: &str, days_ago: i64, items: &[(i64, i64)]) -> OrderPaidEvent {
    OrderPaidEvent {
        event_id: event_id.into(),
        order_id: format!("o-{event_id}"),
        paid_at: Utc::now() - chrono::Duration::days(days_ago),
        items: items
            .iter()
            .map(|(product_id, quantity)| OrderItem {
                product_id: *product_id,
                quantity: *quantity,
            })
            .collect(),
    }
}

async fn seed(app: &TestApp, orders: &[OrderPaidEvent]) {
    let products: Vec<(i64, String, Decimal)> = (1..=6)
        .map(|i| (i, format!("Product {i}"), Decimal::new(1000 + i, 2)))
        .collect();
    app.db.upsert_products(&products).await.unwrap();
    app.db.apply_orders(orders).await.unwrap();
}

async fn top(app: &TestApp, query: &str) -> (u16, String, Value) {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/products/top{query}")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let source = response
        .headers()
        .get("x-data-source")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, source, response.json().await.unwrap_or(Value::Null))
}

fn ids(body: &Value) -> Vec<i64> {
    body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_i64().unwrap())
        .collect()
}

async fn refresh(app: &TestApp) {
    let response = app
        .client
        .post(app.url("/admin/v1/catalog/refresh"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn ranking_counts_each_order_event_once_within_the_window_ties_by_id() {
    let app = spawn_app_with(|s| s.catalog.refresher_enabled = false).await;
    app.db
        .upsert_products(
            &(1..=6)
                .map(|i| (i, format!("Product {i}"), Decimal::new(1000 + i, 2)))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    // Orders arrive through Kafka, one of them twice.
    let producer = EventProducer::new(
        &app.settings.kafka,
        app.settings.catalog.orders_topic.clone(),
    )
    .unwrap();
    let orders = [
        order("a", 0, &[(1, 5), (2, 3)]),
        order("b", 0, &[(3, 4), (2, 2)]),
        order("c", 1, &[(4, 4)]),
        order("d", 10, &[(5, 100)]), // outside a 3-day window
    ];
    for o in orders.iter().chain(std::iter::once(&orders[0])) {
        let json = serde_json::to_vec(o).unwrap();
        producer
            .publish_raw(o.order_id.as_bytes(), &json, &[])
            .await
            .unwrap();
    }
    producer.publish_raw(b"x", b"{broken", &[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let top = app
            .db
            .top_products(30, 10, Utc::now().date_naive())
            .await
            .unwrap();
        if top.len() == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "sales never ingested: {top:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refresh(&app).await;

    let (status, source, body) = top(&app, "?limit=10&days=3").await;
    assert_eq!(status, 200);
    assert_eq!(source, "redis");
    // 1: 5 (order a counted once, not 10), 2: 5, 3: 4, 4: 4; ties by id; 5 is outside.
    assert_eq!(ids(&body), vec![1, 2, 3, 4]);
    let sold: Vec<i64> = body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sold"].as_i64().unwrap())
        .collect();
    assert_eq!(sold, vec![5, 5, 4, 4]);
    assert_eq!(body["products"][0]["rank"], 1);
    assert_eq!(body["products"][0]["name"], "Product 1");
    assert_eq!(body["window_days"], 3);
    let (_, source, body) = top(&app, "?limit=2&days=3").await;
    assert_eq!(ids(&body), vec![1, 2]);
    assert_eq!(source, "l1", "the same window again is served from L1");
    let (_, _, body) = top(&app, "?days=1").await;
    assert_eq!(ids(&body), vec![1, 2, 3], "only today's sales");
    let (_, _, body) = top(&app, "?limit=10&days=30").await;
    assert_eq!(ids(&body)[0], 5);
    app.stop().await;
}

#[tokio::test]
async fn bad_limit_or_days_answers_400_naming_the_parameter() {
    let app = spawn_app_with(|s| s.catalog.refresher_enabled = false).await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=1000", "limit"),
        ("?days=abc", "days"),
        ("?days=0", "days"),
        ("?limit=-1", "limit"),
    ] {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/products/top{query}")))
            .send()
            .await
            .unwrap();
        let body = assert_problem(response, 400, "invalid-request").await;
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    app.stop().await;
}

/// Counts this database's top-N queries running in MariaDB, every few ms.
fn watch_fallback_queries(
    database: String,
    stop: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        while stop.load(Ordering::SeqCst) == 0 {
            let out = std::process::Command::new("mariadb")
                .args(["-h127.0.0.1", "-uflashcoupon", "-pflashcoupon", "-N", "-e"])
                .arg(format!(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE db = '{database}' AND info LIKE 'SELECT p.id AS product_id%'"
                ))
                .output()
                .unwrap();
            let n: usize = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_under_500_requests_keeps_answering_and_mysql_never_exceeds_the_bulkhead() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis.url = url.clone().into();
        s.catalog.refresher_enabled = false;
        s.catalog.l1_ttl_ms = 50;
        s.catalog.mysql_max_concurrent = 3;
        s.catalog.mysql_max_wait_ms = 2000;
    })
    .await;
    seed(
        &app,
        &[order("a", 0, &[(1, 3), (2, 1)]), order("b", 1, &[(3, 2)])],
    )
    .await;
    refresh(&app).await;
    assert_eq!(top(&app, "?days=2").await.1, "redis");

    redis.stop();
    let database = {
        use secrecy::ExposeSecret;
        app.settings
            .database
            .url
            .expose_secret()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let (stop, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let watcher = watch_fallback_queries(database, stop.clone(), peak.clone());
    let answers: Vec<(u16, String)> = stream::iter(0..500)
        .map(|i| {
            let app = &app;
            async move {
                let (status, source, _) = top(app, &format!("?days={}", 1 + i % 30)).await;
                (status, source)
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    stop.store(1, Ordering::SeqCst);
    watcher.await.unwrap();
    let statuses: HashSet<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, HashSet::from([200]), "{answers:?}");
    let sources: HashSet<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    assert!(
        sources.iter().all(|s| ["mysql", "l1", "stale"].contains(s)),
        "{sources:?}"
    );
    assert!(sources.contains("mysql"));
    let peak = peak.load(Ordering::SeqCst);
    println!("peak concurrent fallback queries seen in MariaDB's processlist: {peak} (bulkhead 3)");
    assert!(
        peak <= 3,
        "MariaDB ran {peak} fallback queries at once, bulkhead is 3"
    );
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "circuit_breaker_state{breaker=\"redis_top_products\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "circuit_breaker_calls_total{breaker=\"redis_top_products\",outcome=\"rejected\"}"
        )
        .unwrap_or(0.0)
            > 0.0
    );

    // Redis back: after the open period, trial calls close the breaker, answers come from redis again.
    redis.restart().await;
    refresh(&app).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, source, _) = top(&app, "?days=2").await;
        assert_eq!(status, 200);
        if source == "redis" || source == "l1" {
            let metrics = app.metrics_text().await;
            if metric_value(
                &metrics,
                "circuit_breaker_state{breaker=\"redis_top_products\"}",
            ) == Some(0.0)
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "breaker never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_and_mysql_down_serve_stale_and_a_cold_instance_answers_503() {
    let mut redis = PrivateRedis::start().await;
    let mut mariadb = PrivateMariaDb::start().await;
    let mut settings = isolated_settings();
    settings.redis.url = redis.url().into();
    settings.database.url = mariadb.url("flashcoupon").into();
    settings.database.acquire_timeout_ms = 500;
    settings.catalog.refresher_enabled = false;
    settings.catalog.l1_ttl_ms = 50;
    settings.catalog.mysql_breaker.timeout_ms = 500;
    let db = prepare_database(&settings).await;
    let app = start_app(settings.clone(), db).await;
    seed(&app, &[order("a", 0, &[(2, 3)])]).await;
    assert_eq!(top(&app, "?days=1").await.1, "mysql");

    redis.stop();
    mariadb.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let (status, source, body) = top(&app, "?days=1").await;
        assert_eq!((status, source.as_str()), (200, "stale"), "{body}");
        assert_eq!(ids(&body), vec![2]);
    }
    // A fresh instance never had a good value: 503 problem+json, not a 500.
    let db = flashcoupon::persistence::connect(&settings.database)
        .await
        .unwrap();
    let cold = start_app(settings, db).await;
    let response = cold
        .client
        .get(cold.url("/api/v1/products/top?days=1"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "unavailable").await;
    cold.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_through_one_instance_reaches_the_other_by_pubsub_even_after_a_redis_restart() {
    let mut redis = PrivateRedis::start().await;
    let mut settings = isolated_settings();
    settings.redis.url = redis.url().into();
    settings.catalog.refresher_enabled = false;
    settings.catalog.l1_ttl_ms = 600_000; // only an invalidation can refresh L1
    let db = prepare_database(&settings).await;
    let a = start_app(settings.clone(), db.clone()).await;
    let b = start_app(settings, db).await;
    seed(&a, &[order("first", 0, &[(1, 5)])]).await;
    refresh(&a).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids(&top(&b, "?days=1").await.2) != vec![1] {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(top(&b, "?days=1").await.1, "l1");

    let visible_within = |expected: Vec<i64>| {
        let b = &b;
        async move {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(1) {
                if ids(&top(b, "?days=1").await.2) == expected {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    a.db.apply_orders(&[order("second", 0, &[(2, 9)])])
        .await
        .unwrap();
    refresh(&a).await;
    assert!(
        visible_within(vec![2, 1]).await,
        "B did not see A's refresh within 1 s"
    );

    // Redis restarts: B resubscribes, and the next refresh reaches it again.
    redis.stop();
    redis.restart().await;
    a.db.apply_orders(&[order("third", 0, &[(3, 20)])])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if a.client
            .post(a.url("/admin/v1/catalog/refresh"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            == 200
            && visible_within(vec![3, 2, 1]).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscription did not survive the restart"
        );
    }
    a.stop().await;
    b.stop().await;
}
