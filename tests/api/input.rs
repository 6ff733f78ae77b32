//! Bad input gets a 400 (or 413) problem+json naming what is wrong; never a 500.

use serde_json::Value;

use crate::helpers::{assert_problem, campaign_body, spawn_app, ADMIN_TOKEN};

#[tokio::test]
async fn missing_or_malformed_user_id_answers_400_naming_the_header() {
    let app = spawn_app().await;
    let id = app.open_campaign(5).await;
    let missing = app
        .client
        .post(app.url(&format!("/api/v1/campaigns/{id}/issues")))
        .send()
        .await
        .unwrap();
    let body = assert_problem(missing, 400, "invalid-request").await;
    assert_eq!(body["field"], "X-User-Id");
    for bad in ["", "has space", "x/y", &"a".repeat(65), "semi;colon"] {
        let body = assert_problem(app.claim(id, bad).await, 400, "invalid-request").await;
        assert_eq!(body["field"], "X-User-Id", "{bad:?}: {body}");
    }
    let me = app
        .client
        .get(app.url("/api/v1/me/coupons"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(me, 400, "invalid-request").await["field"],
        "X-User-Id"
    );
    assert_eq!(app.admin_get(id).await["issued"], 0);
    app.stop().await;
}

#[tokio::test]
async fn non_numeric_or_non_positive_campaign_id_answers_400_naming_the_id() {
    let app = spawn_app().await;
    for bad in ["abc", "0", "-3", "1.5", "99999999999999999999"] {
        let response = app
            .client
            .post(app.url(&format!("/api/v1/campaigns/{bad}/issues")))
            .header("X-User-Id", "u1")
            .send()
            .await
            .unwrap();
        let body = assert_problem(response, 400, "invalid-request").await;
        assert_eq!(body["field"], "id", "{bad}: {body}");
        let view = app
            .client
            .get(app.url(&format!("/api/v1/campaigns/{bad}")))
            .send()
            .await
            .unwrap();
        assert_problem(view, 400, "invalid-request").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_campaign_bodies_answer_400_naming_the_field() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            with(campaign_body(0, 0, 60), "total_quantity", 0.into()),
            "total_quantity",
        ),
        (
            with(campaign_body(0, 0, 60), "total_quantity", (-5).into()),
            "total_quantity",
        ),
        (campaign_body(10, 120, 60), "ends_at"),
        (with(campaign_body(10, 0, 60), "name", "  ".into()), "name"),
        (
            with(campaign_body(10, 0, 60), "coupon_valid_days", 0.into()),
            "coupon_valid_days",
        ),
        (
            with(
                campaign_body(10, 0, 60),
                "discount",
                serde_json::json!({"kind": "percent", "value": 150}),
            ),
            "discount.value",
        ),
    ];
    for (body, field) in cases {
        let response = app.create_campaign(body.clone()).await;
        let problem = assert_problem(response, 400, "invalid-request").await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    // Serde-level problems: the detail names the field.
    let mut missing = campaign_body(10, 0, 60);
    missing.as_object_mut().unwrap().remove("total_quantity");
    let problem = assert_problem(app.create_campaign(missing).await, 400, "invalid-request").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("total_quantity"),
        "{problem}"
    );
    let bad_time = with(campaign_body(10, 0, 60), "starts_at", "tomorrow".into());
    let problem = assert_problem(app.create_campaign(bad_time).await, 400, "invalid-request").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("starts_at"),
        "{problem}"
    );
    let bad_kind = with(
        campaign_body(10, 0, 60),
        "discount",
        serde_json::json!({"kind": "free", "value": 1}),
    );
    let problem = assert_problem(app.create_campaign(bad_kind).await, 400, "invalid-request").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("kind")
            || problem["detail"].as_str().unwrap().contains("variant"),
        "{problem}"
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_answers_400_and_oversized_body_answers_413() {
    let app = spawn_app().await;
    let malformed = app
        .client
        .post(app.url("/admin/v1/campaigns"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(malformed, 400, "invalid-request").await;
    assert!(
        problem["detail"].as_str().unwrap().starts_with("body:"),
        "{problem}"
    );

    let mut huge = campaign_body(10, 0, 60);
    huge["name"] = "x".repeat(100_000).into();
    let oversized = app
        .client
        .post(app.url("/admin/v1/campaigns"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_problem(oversized, 413, "payload-too-large").await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_answer_404_problem() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_problem(response, 404, "not-found").await;
    app.stop().await;
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}
