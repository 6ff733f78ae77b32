//! The load-test tool (`loadtest/`) against a real service: small flash bursts,
//! verified through the admin API and the test app's own database.

use std::path::PathBuf;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with, TestApp, ADMIN_TOKEN};

/// Runs `loadtest flash` (closed model, verified) against `app`: `shoppers` shoppers
/// with `per_shopper` claims each on a new campaign of `stock`. Returns the exit code,
/// the checks, summary.json and the output directory (chart and JSON).
async fn flash(
    app: &TestApp,
    shoppers: u64,
    per_shopper: u64,
    stock: u64,
    concurrency: u64,
) -> (::loadtest::Run, Value, PathBuf) {
    let out = std::env::temp_dir().join(format!("loadtest-{}", uuid::Uuid::new_v4()));
    let args = [
        "loadtest".to_owned(),
        "flash".into(),
        "--target".into(),
        app.address.clone(),
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
        "--mysql-url".into(),
        app.settings.database.url.expose_secret().to_owned(),
        "--shoppers".into(),
        shoppers.to_string(),
        "--requests-per-shopper".into(),
        per_shopper.to_string(),
        "--stock".into(),
        stock.to_string(),
        "--model".into(),
        "closed".into(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--drain-timeout-secs".into(),
        "60".into(),
        "--quiet".into(),
        "--out".into(),
        out.to_str().expect("utf-8 temp dir").to_owned(),
    ];
    let cli =
        <::loadtest::cli::Cli as clap::Parser>::try_parse_from(args).expect("valid arguments");
    let run = ::loadtest::run(cli).await.expect("the load test runs");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
            .expect("summary.json is JSON");
    (run, summary, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_burst_issues_exactly_the_stock_and_passes_every_check() {
    let app = spawn_app().await;

    let (run, summary, out) = flash(&app, 300, 2, 100, 20).await;

    assert_eq!(run.exit_code, 0, "checks: {:#?}", run.summary.verify);
    assert_eq!(summary["flash"]["issued"], 100, "{summary:#}");
    assert_eq!(summary["flash"]["persisted"], 100, "{summary:#}");
    assert_eq!(summary["statuses"]["201 issued"], 100, "{summary:#}");
    assert_eq!(summary["completed"], 600, "{summary:#}");
    assert_eq!(summary["passed"], true, "{summary:#}");
    assert_eq!(summary["verify"]["passed"], true, "{summary:#}");
    assert!(out.join("chart.png").exists());
    let _ = std::fs::remove_dir_all(&out);
    app.stop().await;
}

/// With one claim in flight allowed, a burst of 64 connections gets `503 instance busy`
/// answers. Those shoppers certainly hold nothing, so the check expects exactly one
/// coupon per shopper who got past the limit, not a range.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shoppers_turned_away_as_busy_are_known_to_hold_nothing() {
    let app = spawn_app_with(|s| {
        s.server.max_claims_in_flight = std::num::NonZeroUsize::new(1).unwrap();
    })
    .await;

    let (run, summary, out) = flash(&app, 400, 1, 1000, 64).await;

    assert_eq!(run.exit_code, 0, "checks: {:#?}", run.summary.verify);
    let flash = &summary["flash"];
    let busy = summary["statuses"]["503 instance busy"]
        .as_u64()
        .unwrap_or(0);
    let refused = flash["shoppers_refused"]
        .as_u64()
        .expect("shoppers_refused");
    assert!(
        busy > 0,
        "64 connections past a limit of 1 got no busy answer: {summary:#}"
    );
    // One claim per shopper: each busy answer is a shopper only ever refused.
    assert_eq!(refused, busy, "{summary:#}");
    assert_eq!(flash["issued"].as_u64(), Some(400 - refused), "{summary:#}");
    assert_eq!(
        flash["persisted"].as_u64(),
        Some(400 - refused),
        "{summary:#}"
    );
    let issued_check = &summary["verify"]["checks"][2];
    assert_eq!(issued_check["passed"], true, "{summary:#}");
    let detail = issued_check["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("= {}", 400 - refused)),
        "the expected count is exact, not a range: {detail}"
    );
    let _ = std::fs::remove_dir_all(&out);
    app.stop().await;
}
