//! The runbooks cannot rot: every block marked ```sh safe runs against a live service
//! on the local stack (`scripts/check-runbooks`), and every metric a runbook greps
//! `/metrics` for is actually exported.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::helpers::{free_port, Process, ADMIN_TOKEN};

/// The service with its default configuration (database `flashcoupon`, topic
/// `coupon.issued.v1`, as the runbooks assume) on a free port, with Redis keys of its
/// own. Its persister joins a
/// group of its own (the local broker can wedge a group whose member leaves
/// mid-join, so the test waits for a first write before stopping); the sales
/// consumer is off.
fn service_command(port: u16, group: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashcoupon"));
    cmd.args(args)
        .env("FLASHCOUPON__SERVER__PORT", port.to_string())
        .env("FLASHCOUPON__SERVER__WORKERS", "2")
        .env("FLASHCOUPON__KAFKA__PERSISTER_GROUP", group)
        // Its own Redis keys, so no other instance on this machine relays its coupons.
        .env("FLASHCOUPON__REDIS__KEY_PREFIX", format!("{group}:"))
        .env("FLASHCOUPON__CATALOG__SALES_ENABLED", "false")
        // A pass every second, so `reconcile_differences` has a series for the
        // campaign this test opens (at the default 60 s the first pass may run
        // before the campaign exists, and the next comes after the test).
        .env("FLASHCOUPON__RECONCILE__INTERVAL_SECS", "1")
        .env("FLASHCOUPON__ADMIN__TOKEN", ADMIN_TOKEN)
        .env("FLASHCOUPON__LOG__FILTER", "warn");
    cmd
}

/// Metric names in the runbooks' `curl .../metrics | awk '/^(a|b.*c)/'` filters.
fn metrics_named_in_runbooks() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir("runbooks").expect("runbooks/") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| l.contains("/metrics | awk")) {
            let Some(start) = line.find("'/^(") else {
                continue;
            };
            let rest = &line[start + 4..];
            let pattern = &rest[..rest.find(")/'").expect("closed awk pattern")];
            for alternative in pattern.split('|') {
                let name: String = alternative
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test]
async fn every_safe_runbook_block_runs_and_every_metric_it_greps_exists() {
    let port = free_port();
    let group = format!("flashcoupon-persister-rb-{}", uuid::Uuid::new_v4().simple());
    let migrated = service_command(port, &group, &["migrate"])
        .status()
        .unwrap();
    assert!(migrated.success(), "flashcoupon migrate failed");
    let mut server = Process::spawn(&mut service_command(port, &group, &["serve"]));
    server.wait_listening(port, Duration::from_secs(30)).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // A little traffic, so that counters and histograms have series.
    let id = crate::helpers::open_campaign_at(&client, &base, 5).await;
    let user = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..8 {
        let status = client
            .post(format!("{base}/api/v1/campaigns/{id}/issues"))
            .header("X-User-Id", format!("rb-{user}-{i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            matches!(status.as_u16(), 201 | 410),
            "claim answered {status}"
        );
        client
            .get(format!("{base}/api/v1/products/top?limit=10"))
            .send()
            .await
            .unwrap();
    }
    // The relay and the persister have done a round once the coupons are in MySQL.
    let db = flashcoupon::persistence::connect(&flashcoupon::config::Settings::defaults().database)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.persisted_count(id).await.unwrap() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "coupons never persisted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_flashcoupon"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("scripts/check-runbooks")
            .env("RUNBOOK_SERVICE_URL", format!("http://127.0.0.1:{port}"))
            .env("FLASHCOUPON_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PATH", path)
            .env("FLASHCOUPON__ADMIN__TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run scripts/check-runbooks")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(", 0 failed"), "{report}");
    let passed = report.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 21, "only {passed} blocks ran:\n{report}");

    let exported = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names = metrics_named_in_runbooks();
    assert!(names.len() >= 10, "found only {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !exported.lines().any(|l| l.starts_with(name.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "runbooks grep /metrics for {missing:?}, which the service does not export"
    );

    server.signal("TERM");
    assert!(
        server.wait(Duration::from_secs(30)),
        "serve did not stop on SIGTERM"
    );
}
