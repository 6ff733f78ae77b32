//! The metric contract of DESIGN.md, read from `/metrics` of a `flashcoupon serve`
//! process of its own (metrics are per process) after a short, known load: every
//! contract metric is there, and its value is what the load implies.

use std::time::{Duration, Instant};

use crate::helpers::{
    campaign_body, flashcoupon_command, free_port, isolated_settings, open_campaign_at,
    prepare_database, Process, ADMIN_TOKEN,
};

/// Sum of the samples of `name` (exact metric name) whose labels contain every
/// fragment; None when no sample matches.
fn sample(text: &str, name: &str, fragments: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let metric = series.split('{').next().unwrap_or_default();
        if metric == name && fragments.iter().all(|f| series.contains(f)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

#[tokio::test]
async fn every_contract_metric_is_exported_with_the_values_of_a_known_load() {
    let mut settings = isolated_settings();
    settings.server.port = free_port();
    let db = prepare_database(&settings).await;
    let mut command = flashcoupon_command(&settings, &["serve"]);
    command
        .env("FLASHCOUPON__CATALOG__SALES_ENABLED", "false")
        .env("FLASHCOUPON__RECONCILE__INTERVAL_SECS", "1");
    let mut server = Process::spawn(&mut command);
    server
        .wait_listening(settings.server.port, Duration::from_secs(30))
        .await;
    let base = format!("http://127.0.0.1:{}", settings.server.port);
    let client = reqwest::Client::new();

    // The load: 8 shoppers for 5 coupons, one shopper twice (before the sell-out), one claim on a
    // campaign that has not started, 3 reads of the top products.
    let id = open_campaign_at(&client, &base, 5).await;
    let later: serde_json::Value = client
        .post(format!("{base}/admin/v1/campaigns"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&campaign_body(5, 3600, 7200))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let later = later["id"].as_i64().unwrap();
    let claim = |campaign: i64, user: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/api/v1/campaigns/{campaign}/issues"))
                .header("X-User-Id", user)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The repeat comes before the sell-out: afterwards every claim is 410.
    let mut statuses = Vec::new();
    for i in 0..2 {
        statuses.push(claim(id, format!("m{i}")).await);
    }
    statuses.push(claim(id, "m0".into()).await);
    for i in 2..8 {
        statuses.push(claim(id, format!("m{i}")).await);
    }
    statuses.push(claim(later, "m0".into()).await);
    assert_eq!(statuses, [201, 201, 409, 201, 201, 201, 410, 410, 410, 409]);
    for _ in 0..3 {
        client
            .get(format!("{base}/api/v1/products/top?limit=5"))
            .send()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.persisted_count(id).await.unwrap() < 5 {
        assert!(Instant::now() < deadline, "coupons never persisted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Gauges sampled in the background (consumer lag every 10 s) need a moment.
    let issued_topic = format!("topic=\"{}\"", settings.kafka.issued_topic);
    let group = format!("group=\"{}\"", settings.kafka.persister_group);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lag_seen = sample(&text, "kafka_consumer_lag", &[&issued_topic, &group]) == Some(0.0);
        let outbox_empty = sample(
            &text,
            "coupon_outbox_pending",
            &[&format!("campaign_id=\"{id}\"")],
        ) == Some(0.0);
        if lag_seen && outbox_empty {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "lag and outbox never settled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let value = |name: &str, fragments: &[&str]| {
        sample(&text, name, fragments)
            .unwrap_or_else(|| panic!("{name} {fragments:?} not exported:\n{text}"))
    };
    let campaign = format!("campaign_id=\"{id}\"");
    let c = campaign.as_str();

    // Issuance outcomes, per campaign.
    assert_eq!(value("coupon_issue_total", &[c, "result=\"issued\""]), 5.0);
    assert_eq!(
        value("coupon_issue_total", &[c, "result=\"sold_out\""]),
        3.0
    );
    assert_eq!(
        value("coupon_issue_total", &[c, "result=\"already_issued\""]),
        1.0
    );
    let not_open = format!("campaign_id=\"{later}\"");
    assert_eq!(
        value("coupon_issue_total", &[&not_open, "result=\"not_open\""]),
        1.0
    );
    assert_eq!(value("campaign_stock_remaining", &[c]), 0.0);
    // Every claim has been answered: none waits on Redis, against the configured limit.
    assert_eq!(value("coupon_issue_in_flight", &["state=\"in_use\""]), 0.0);
    assert_eq!(
        value("coupon_issue_in_flight", &["state=\"max\""]),
        settings.server.max_claims_in_flight.get() as f64
    );

    // RED per route, histograms in seconds with buckets around the alert thresholds.
    let route = "http_route=\"/api/v1/campaigns/{id}/issues\"";
    let post = "http_request_method=\"POST\"";
    let by_status = |code: &str| {
        value(
            "http_server_request_duration_seconds_count",
            &[
                route,
                post,
                &format!("http_response_status_code=\"{code}\""),
            ],
        )
    };
    assert_eq!(
        (by_status("201"), by_status("410"), by_status("409")),
        (5.0, 3.0, 2.0)
    );
    for le in ["le=\"0.5\"", "le=\"1\""] {
        assert_eq!(
            value(
                "http_server_request_duration_seconds_bucket",
                &[route, post, "status_code=\"201\"", le]
            ),
            5.0,
            "{le}"
        );
    }
    let sum = value(
        "http_server_request_duration_seconds_sum",
        &[route, post, "status_code=\"201\""],
    );
    assert!(sum > 0.0 && sum < 5.0, "5 claims took {sum} s in all");

    // The outbox relay and Kafka.
    assert!(value("coupon_relay_delivery_seconds_count", &[]) >= 1.0);
    assert!(value("coupon_relay_delivery_seconds_bucket", &["le=\"0.1\""]) >= 0.0);
    assert_eq!(value("coupon_outbox_pending", &[c]), 0.0);
    assert_eq!(value("kafka_consumer_lag", &[&issued_topic, &group]), 0.0);
    let dlt = format!("topic=\"{}.dlt\"", settings.kafka.issued_topic);
    assert_eq!(value("kafka_dlt_messages_total", &[&dlt]), 0.0);

    // Pools: occupancy against the configured bounds, acquire times, no timeouts.
    let db_max = value("db_pool_connections", &["state=\"max\""]);
    assert_eq!(db_max, f64::from(settings.database.max_connections));
    assert!(value("db_pool_connections", &["state=\"in_use\""]) <= db_max);
    assert!(value("db_pool_connections", &["state=\"idle\""]) >= 0.0);
    assert!(value("db_pool_acquire_seconds_count", &[]) >= 1.0);
    assert_eq!(value("db_pool_timeouts_total", &[]), 0.0);
    let redis_max = value("redis_pool_connections", &["state=\"max\""]);
    // The shared multiplexed connections count as in use and as part of the maximum.
    assert_eq!(
        redis_max,
        (settings.redis.pool_size + settings.redis.shared_connections) as f64
    );
    let redis_in_use = value("redis_pool_connections", &["state=\"in_use\""]);
    assert!(redis_in_use >= 1.0 && redis_in_use <= redis_max);
    // 10 claims, 7 of them asked Redis: once the last coupon went, the 3 sold-out
    // answers came from the instance's own sold-out flag.
    assert_eq!(
        value(
            "redis_command_duration_seconds_count",
            &["command=\"issue\"", "outcome=\"ok\""]
        ),
        7.0
    );

    // Cache and breakers.
    assert_eq!(
        value("cache_requests_total", &["cache=\"top_products_l1\""]),
        3.0
    );
    for breaker in [
        "breaker=\"redis_top_products\"",
        "breaker=\"mysql_top_products\"",
    ] {
        assert_eq!(
            value("circuit_breaker_state", &[breaker]),
            0.0,
            "{breaker} closed"
        );
    }
    assert!(value("circuit_breaker_calls_total", &["outcome=\"success\""]) >= 1.0);

    // The scheduled reconcile found nothing.
    for kind in ["missing_in_mysql", "extra_in_mysql", "code_mismatch"] {
        let kind = format!("kind=\"{kind}\"");
        assert_eq!(value("reconcile_differences", &[c, &kind]), 0.0, "{kind}");
    }

    server.signal("TERM");
    assert!(server.wait(Duration::from_secs(30)), "serve did not stop");
}
