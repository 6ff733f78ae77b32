//! Health, readiness, metrics and the OpenAPI document.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn live_and_ready_answer_200_naming_each_dependency() {
    let app = spawn_app().await;
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    for dependency in ["redis", "mysql", "kafka"] {
        assert_eq!(ready[dependency]["status"], "up", "{ready}");
    }
    app.stop().await;
}

#[tokio::test]
async fn openapi_describes_every_endpoint() {
    let app = spawn_app().await;
    let spec = app.get_json("/openapi.json", None).await;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/campaigns/{id}/issues",
        "/api/v1/campaigns/{id}",
        "/api/v1/me/coupons",
        "/admin/v1/campaigns",
        "/admin/v1/campaigns/{id}",
        "/admin/v1/campaigns/{id}/pause",
        "/admin/v1/campaigns/{id}/resume",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} missing");
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_issuance_outcomes_and_requests() {
    let app = spawn_app().await;
    let campaign = app.open_campaign(2).await;
    // The repeat comes before the sell-out: afterwards every claim is sold_out.
    for user in ["a", "a", "b", "c"] {
        app.claim(campaign, user).await;
    }
    let text = app.metrics_text().await;
    let value = |needle: &str| -> f64 {
        crate::helpers::metric_value(&text, needle)
            .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
    };
    let label = format!("campaign_id=\"{campaign}\"");
    assert_eq!(
        value(&format!("coupon_issue_total{{{label},result=\"issued\"}}")),
        2.0
    );
    assert_eq!(
        value(&format!(
            "coupon_issue_total{{{label},result=\"sold_out\"}}"
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "coupon_issue_total{{{label},result=\"already_issued\"}}"
        )),
        1.0
    );
    assert!(text.contains("http_server_request_duration_seconds_bucket{http_request_method=\"POST\",http_response_status_code=\"201\",http_route=\"/api/v1/campaigns/{id}/issues\""), "{text}");
    assert!(text.contains("redis_command_duration_seconds_bucket"));
    app.stop().await;
}

#[tokio::test]
async fn sigterm_stops_serving_and_the_relay_flushes_before_exit() {
    use crate::helpers::{
        flashcoupon_command, free_port, isolated_settings, prepare_database, Process,
    };
    use std::time::Duration;

    let mut settings = isolated_settings();
    settings.server.port = free_port();
    let db = prepare_database(&settings).await;
    let mut server = Process::spawn(&mut flashcoupon_command(&settings, &["serve"]));
    server
        .wait_listening(settings.server.port, Duration::from_secs(30))
        .await;
    let base = format!("http://127.0.0.1:{}", settings.server.port);
    let client = reqwest::Client::new();
    let id = crate::helpers::open_campaign_at(&client, &base, 50).await;
    let claim = |i: usize| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/api/v1/campaigns/{id}/issues"))
                .header("X-User-Id", format!("u{i}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for i in 0..10 {
        assert_eq!(claim(i).await, 201);
    }
    // The pipeline runs end to end, the persister's group joined.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.persisted_count(id).await.unwrap() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "pipeline never persisted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 10..30 {
        assert_eq!(claim(i).await, 201);
    }
    server.signal("TERM");
    assert!(
        server.wait(Duration::from_secs(30)),
        "serve did not exit after SIGTERM"
    );
    assert!(
        client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err(),
        "still accepting after SIGTERM"
    );
    // Coupons issued just before the stop are in MySQL already or still in the
    // outbox for the next start: after a restart all 30 arrive.
    let persisted = db.persisted_count(id).await.unwrap();
    let mut restarted = Process::spawn(&mut flashcoupon_command(&settings, &["serve"]));
    restarted
        .wait_listening(settings.server.port, Duration::from_secs(30))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.persisted_count(id).await.unwrap() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "persisted {persisted} before restart, never reached 30"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(db.persisted_count(id).await.unwrap(), 30);
    restarted.signal("TERM");
    assert!(restarted.wait(Duration::from_secs(30)));
}

/// One GET /health/live on `stream`, kept alive; the status line of the answer.
async fn get_live_on(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A proxy keeps its connections to the service idle for up to 60 s (nginx, cloud load
/// balancers): the service must keep them longer (`server.keep_alive_secs`, 75 s by
/// default), not actix's 5 s, or a claim sent on one it is closing is lost.
#[tokio::test]
async fn idle_connections_outlive_actix_default_and_close_after_the_setting() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    use tokio::time::{sleep, timeout, Duration};

    let app = spawn_app().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_live_on(&mut stream).await, "HTTP/1.1 200 OK");
    sleep(Duration::from_secs(6)).await; // beyond actix's default of 5 s
    assert_eq!(get_live_on(&mut stream).await, "HTTP/1.1 200 OK");
    app.stop().await;

    let app = crate::helpers::spawn_app_with(|s| s.server.keep_alive_secs = 1).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    assert_eq!(get_live_on(&mut stream).await, "HTTP/1.1 200 OK");
    let mut rest = [0u8; 64];
    let closed = timeout(Duration::from_secs(10), stream.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the server kept an idle connection open past server.keep_alive_secs: {closed:?}"
    );
    app.stop().await;
}
