//! The admin API for marketing: create, list, get, pause, resume, behind a token.

use serde_json::Value;

use crate::helpers::{assert_problem, campaign_body, spawn_app};

#[tokio::test]
async fn create_returns_201_with_id_and_live_figures_and_list_shows_it() {
    let app = spawn_app().await;
    let response = app.create_campaign(campaign_body(100, -1, 3600)).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["total_quantity"], 100);
    assert_eq!(created["issued"], 0);
    assert_eq!(created["remaining"], 100);
    assert_eq!(created["persisted"], 0);
    assert_eq!(created["pending_events"], 0);
    assert_eq!(created["discount"]["kind"], "percent");
    assert_eq!(created["status"], "open");

    app.claim(id, "u1").await;
    let one = app.admin_get(id).await;
    assert_eq!(one["issued"], 1);
    assert_eq!(one["remaining"], 99);

    let list = app.admin_list().await;
    let campaigns = list["campaigns"].as_array().unwrap();
    assert_eq!(campaigns.len(), 1);
    assert_eq!(campaigns[0]["id"], id);
    assert_eq!(campaigns[0]["issued"], 1);
    app.stop().await;
}

/// Found by schemathesis: a campaign ending after 2038-01-19 answered 503 with
/// "Column 'ends_at' cannot be null", because the time went to MariaDB as a
/// `TIMESTAMP`. The columns are `DATETIME(3)` and hold any year up to 9999.
#[tokio::test]
async fn a_campaign_ending_after_2038_is_stored_read_back_and_claimable() {
    let app = spawn_app().await;
    for ends_at in [
        "2039-01-20T00:00:00Z",
        "4810-06-20T04:21:46.851-06:51",
        "9999-12-31T23:59:59.999Z",
    ] {
        let mut body = campaign_body(10, -60, 3600);
        body["ends_at"] = Value::from(ends_at);
        let response = app.create_campaign(body).await;
        assert_eq!(response.status(), 201, "ends_at {ends_at}");
        let created: Value = response.json().await.unwrap();
        let id = created["id"].as_i64().unwrap();

        let stored = app.admin_get(id).await;
        let read = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
        assert_eq!(
            read(&stored["ends_at"]),
            chrono::DateTime::parse_from_rfc3339(ends_at).unwrap(),
            "{stored}"
        );
        assert_eq!(stored["status"], "open", "{stored}");
        assert_eq!(app.claim(id, "u1").await.status(), 201);
    }
    app.stop().await;
}

#[tokio::test]
async fn admin_calls_without_or_with_a_wrong_token_answer_401() {
    let app = spawn_app().await;
    let id = app.open_campaign(1).await;
    let paths = [
        ("GET", "/admin/v1/campaigns".to_owned()),
        ("POST", "/admin/v1/campaigns".to_owned()),
        ("GET", format!("/admin/v1/campaigns/{id}")),
        ("POST", format!("/admin/v1/campaigns/{id}/pause")),
        ("POST", format!("/admin/v1/campaigns/{id}/resume")),
        ("POST", "/admin/v1/catalog/refresh".to_owned()),
    ];
    for (method, path) in &paths {
        for token in [None, Some("wrong"), Some("")] {
            let mut request = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .json(&campaign_body(1, 0, 60));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_problem(response, 401, "unauthorized").await;
        }
    }
    // Nothing changed: still open, one campaign.
    assert_eq!(app.admin_get(id).await["status"], "open");
    app.stop().await;
}

#[tokio::test]
async fn pause_and_resume_of_an_unknown_campaign_answer_404() {
    let app = spawn_app().await;
    assert_problem(
        app.admin_post("/admin/v1/campaigns/4242/pause").await,
        404,
        "campaign-not-found",
    )
    .await;
    assert_problem(
        app.admin_post("/admin/v1/campaigns/4242/resume").await,
        404,
        "campaign-not-found",
    )
    .await;
    app.stop().await;
}

/// Marketing's tool retries a create whose answer it did not get: under the same
/// `Idempotency-Key` it gets the first campaign back, never a twin with stock of its own.
#[tokio::test]
async fn a_create_retried_under_its_idempotency_key_returns_the_first_campaign_not_a_twin() {
    let app = spawn_app().await;
    let body = campaign_body(5, -60, 3600);
    let first = app.create_campaign_keyed(&body, "flash-10h-a").await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = app.create_campaign_keyed(&body, "flash-10h-a").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["total_quantity"], 5);

    // The key of that campaign cannot create another one.
    let mut other = body.clone();
    other["total_quantity"] = Value::from(6);
    let problem = assert_problem(
        app.create_campaign_keyed(&other, "flash-10h-a").await,
        422,
        "idempotency-key-reused",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("campaign {}", first["id"])),
        "{detail}"
    );

    // Keys compare byte for byte, and a bad one names the header.
    let upper: Value = app
        .create_campaign_keyed(&body, "FLASH-10H-A")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(upper["id"], first["id"], "{upper}");
    for bad in ["", &"k".repeat(65), "two words"] {
        let problem = assert_problem(
            app.create_campaign_keyed(&body, bad).await,
            400,
            "invalid-request",
        )
        .await;
        assert_eq!(problem["field"], "Idempotency-Key", "{bad:?}: {problem}");
    }

    // Eight attempts at once under a new key: one campaign, the same for all.
    let burst =
        futures::future::join_all((0..8).map(|_| app.create_campaign_keyed(&body, "flash-10h-b")))
            .await;
    let mut ids = std::collections::HashSet::new();
    for response in burst {
        assert_eq!(response.status(), 201);
        ids.insert(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        app.admin_list().await["campaigns"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    app.stop().await;
}
