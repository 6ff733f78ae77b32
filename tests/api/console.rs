//! The marketing console in a real browser: headless Chromium driven through
//! chromedriver (Debian packages `chromium`, `chromium-driver`). Create a campaign
//! through the form (an API error shows next to its field), watch the live figures
//! move while coupons are claimed, pause it with the confirmation, and see claims
//! answer 409 campaign-not-open. The live view is saved as
//! `target/test-artefacts/console-live.png`.

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{assert_problem, free_port, spawn_app, Process, ADMIN_TOKEN};

async fn browser() -> (Process, Client, tempfile_dir::Dir) {
    let port = free_port();
    let mut driver = Process::spawn(Command::new("chromedriver").arg(format!("--port={port}")));
    driver.wait_listening(port, Duration::from_secs(20)).await;
    let profile = tempfile_dir::Dir::new("console-chromium");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1200,1100",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver session (apt-get install chromium chromium-driver)");
    (driver, client, profile)
}

/// Waits until the element's text satisfies `check`; returns the text.
async fn text_until(client: &Client, css: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never matched, last text {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(client: &Client, css: &str, value: &str) {
    client
        .execute(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1];",
            vec![json!(css), json!(value)],
        )
        .await
        .unwrap();
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_creates_watches_and_pauses_a_campaign_in_the_browser() {
    let app = spawn_app().await;
    let (_driver, client, _profile) = browser().await;
    client.goto(&app.url("/console")).await.unwrap();

    // A wrong token is refused on the page.
    fill(&client, "#token", "not-the-token").await;
    click(&client, "#login-form button").await;
    text_until(&client, "#login-error", |t| t.contains("refused")).await;
    fill(&client, "#token", ADMIN_TOKEN).await;
    click(&client, "#login-form button").await;
    text_until(&client, "#campaigns h2", |t| t == "Campaigns").await;

    // The API's problem+json shows next to the field it names.
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let now = chrono::Utc::now();
    fill(&client, "#create-form [name=name]", "Flash 10:00").await;
    fill(&client, "#create-form [name=total_quantity]", "0").await;
    fill(
        &client,
        "#create-form [name=starts_at]",
        &fmt(now - chrono::Duration::minutes(1)),
    )
    .await;
    fill(
        &client,
        "#create-form [name=ends_at]",
        &fmt(now + chrono::Duration::hours(1)),
    )
    .await;
    fill(&client, "#create-form [name=discount_value]", "30").await;
    click(&client, "#create-form button[type=submit]").await;
    let error = text_until(&client, r#".error[data-field="total_quantity"]"#, |t| {
        !t.is_empty()
    })
    .await;
    assert!(error.contains("between 1 and"), "{error}");

    fill(&client, "#create-form [name=total_quantity]", "5").await;
    click(&client, "#create-form button[type=submit]").await;
    let created = text_until(&client, "#create-ok", |t| t.starts_with("Campaign")).await;
    let id: i64 = created
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no id in {created:?}"));
    text_until(&client, "#live-status", |t| t == "open").await;
    text_until(&client, "#live-countdown", |t| t.starts_with("closes in")).await;

    // Coupons claimed through the API move the live figures.
    for user in ["ann", "bob", "cem"] {
        assert_eq!(app.claim(id, user).await.status(), 201);
    }
    text_until(&client, "#live-issued", |t| t == "3").await;
    text_until(&client, "#live-remaining", |t| t == "2").await;
    text_until(&client, "#live-persisted", |t| t == "3").await;
    text_until(&client, "#live-pending", |t| t == "0").await;
    let row = text_until(&client, &format!("tr[data-id=\"{id}\"]"), |t| {
        t.contains("3 / 5")
    })
    .await;
    assert!(row.contains("Flash 10:00"), "{row}");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join("console-live.png"), png).unwrap();

    // Pause needs a confirmation; Cancel leaves it open.
    click(&client, "#pause").await;
    text_until(&client, "#confirm-text", |t| t.contains("Pause campaign")).await;
    click(&client, "#confirm-no").await;
    assert_eq!(app.claim(id, "dan").await.status(), 201);
    click(&client, "#pause").await;
    click(&client, "#confirm-yes").await;
    text_until(&client, "#live-status", |t| t == "paused").await;
    assert_problem(app.claim(id, "eve").await, 409, "campaign-not-open").await;
    click(&client, "#resume").await;
    click(&client, "#confirm-yes").await;
    text_until(&client, "#live-status", |t| t == "open").await;
    assert_eq!(app.claim(id, "eve").await.status(), 201);
    text_until(&client, "#live-remaining", |t| t == "0").await;

    client.close().await.unwrap();
    app.stop().await;
}

/// A temporary directory removed on drop (the browser profile).
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
