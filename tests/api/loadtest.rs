//! The load-test tool (`loadtest/`) against a real service: a small flash burst,
//! verified through the admin API and the test app's own database.

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::helpers::{spawn_app, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_burst_issues_exactly_the_stock_and_passes_every_check() {
    let app = spawn_app().await;
    let out = std::env::temp_dir().join(format!("loadtest-{}", uuid::Uuid::new_v4()));
    let args = [
        "loadtest",
        "flash",
        "--target",
        app.address.as_str(),
        "--admin-token",
        ADMIN_TOKEN,
        "--mysql-url",
        app.settings.database.url.expose_secret(),
        "--shoppers",
        "300",
        "--requests-per-shopper",
        "2",
        "--stock",
        "100",
        "--model",
        "closed",
        "--concurrency",
        "20",
        "--drain-timeout-secs",
        "60",
        "--quiet",
        "--out",
        out.to_str().expect("utf-8 temp dir"),
    ];
    let cli =
        <::loadtest::cli::Cli as clap::Parser>::try_parse_from(args).expect("valid arguments");

    let run = ::loadtest::run(cli).await.expect("the load test runs");

    assert_eq!(run.exit_code, 0, "checks: {:#?}", run.summary.verify);
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json"))
            .expect("summary.json is JSON");
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
