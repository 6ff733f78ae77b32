//! Keeping intruders out: rate limits per shopper and per client address (429 with
//! Retry-After), and the JWT mode where a verified token's `sub` is the shopper.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, metric_value, spawn_app_with};

#[tokio::test]
async fn a_shopper_over_the_limit_gets_429_with_retry_after_and_others_go_on() {
    let app = spawn_app_with(|s| {
        s.limits.enabled = true;
        s.limits.per_shopper_per_sec = 1;
        s.limits.shopper_burst = 2;
    })
    .await;
    let campaign = app.open_campaign(10).await;
    assert_eq!(app.claim(campaign, "eager").await.status(), 201);
    assert_eq!(app.claim(campaign, "eager").await.status(), 409);
    let limited = app.claim(campaign, "eager").await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body = assert_problem(limited, 429, "rate-limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("shopper"),
        "{body}"
    );
    // Another shopper is not held back by the eager one.
    assert_eq!(app.claim(campaign, "patient").await.status(), 201);
    // The bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.claim(campaign, "eager").await.status(), 409);
    // The 429 is counted as a claim turned away (no campaign label: see the metric).
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "coupon_issue_total{result=\"rejected\"}"),
        Some(1.0),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn one_client_address_over_the_limit_gets_429() {
    let app = spawn_app_with(|s| {
        s.limits.enabled = true;
        s.limits.per_address_per_sec = 1;
        s.limits.address_burst = 3;
    })
    .await;
    let campaign = app.open_campaign(10).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/campaigns/{campaign}")))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let response = app.claim(campaign, "someone").await;
    let body = assert_problem(response, 429, "rate-limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("address"),
        "{body}"
    );
    app.stop().await;
}

fn token(secret: &str, sub: &str, expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    encode(
        &Header::default(),
        &json!({"sub": sub, "exp": now + expires_in, "iss": "shop"}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn in_jwt_mode_the_token_subject_is_the_shopper_and_the_header_is_ignored() {
    const SECRET: &str = "test-jwt-secret-of-enough-length";
    let app = spawn_app_with(|s| {
        s.auth.jwt_secret = SECRET.to_owned().into();
        s.auth.jwt_issuer = "shop".into();
        s.auth.jwt_leeway_secs = 0;
    })
    .await;
    let campaign = app.open_campaign(10).await;
    let claim = |bearer: Option<String>| {
        let mut request = app
            .client
            .post(app.url(&format!("/api/v1/campaigns/{campaign}/issues")))
            .header("X-User-Id", "mallory");
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    // The gateway header alone is not enough any more.
    let response = claim(None).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401, "unauthorized").await;

    let issued = claim(Some(token(SECRET, "alice", 300))).await.unwrap();
    assert_eq!(issued.status(), 201);
    let coupon: Value = issued.json().await.unwrap();
    assert_eq!(coupon["user_id"], "alice", "the token's sub, not X-User-Id");

    for (bad, why) in [
        (token(SECRET, "alice", -120), "ExpiredSignature"),
        (
            token("another-secret-of-enough-length", "alice", 300),
            "InvalidSignature",
        ),
        ("not.a.jwt".to_owned(), "invalid token"),
        (token(SECRET, "bad id with spaces", 300), "token subject"),
    ] {
        let body = assert_problem(claim(Some(bad)).await.unwrap(), 401, "unauthorized").await;
        assert!(
            body["detail"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
    let mine = app
        .client
        .get(app.url("/api/v1/me/coupons"))
        .bearer_auth(token(SECRET, "alice", 300))
        .send()
        .await
        .unwrap();
    let mine: Value = mine.json().await.unwrap();
    assert_eq!(mine["coupons"].as_array().unwrap().len(), 1, "{mine}");
    app.stop().await;
}
