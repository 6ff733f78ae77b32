//! Reconciliation and the re-arm rule when Redis is behind MySQL: lost holders come
//! back, the stock never grows, coupons missing from MySQL are re-delivered, and the
//! differences are exported for the alert.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{assert_problem, campaign_body, flashcoupon_command, spawn_app_with, TestApp};

/// Redis "loses" a holder and its share of the issued counter, as a failover
/// without the WAIT mode can.
async fn lose_in_redis(app: &TestApp, campaign: i64, user: &str, issued: i64) {
    let mut conn = app.redis().await;
    let prefix = &app.settings.redis.key_prefix;
    let _: () = redis::pipe()
        .hdel(format!("{prefix}{{c:{campaign}}}:holders"), user)
        .hset(format!("{prefix}{{c:{campaign}}}:meta"), "issued", issued)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn holder_known(app: &TestApp, campaign: i64, user: &str) -> bool {
    let mut conn = app.redis().await;
    let prefix = &app.settings.redis.key_prefix;
    redis::AsyncCommands::hexists(&mut conn, format!("{prefix}{{c:{campaign}}}:holders"), user)
        .await
        .unwrap()
}

async fn coupon_code(app: &TestApp, campaign: i64, user: &str) -> String {
    let body: Value = app.claim(campaign, user).await.json().await.unwrap();
    body["coupon_code"].as_str().expect("coupon").to_owned()
}

/// A campaign of stock 5 where "first" and "second" got a coupon: (id, their codes).
async fn stock_five_with_two_holders(app: &TestApp) -> (i64, String, String) {
    let campaign = app.open_campaign(5).await;
    let first = coupon_code(app, campaign, "first").await;
    let second = coupon_code(app, campaign, "second").await;
    (campaign, first, second)
}

/// A campaign of stock 5 whose "first" and "second" got `codes` was lost by Redis:
/// until it is re-armed "first" is refused (503, fail closed), never given a fresh
/// coupon; then both get their own coupon back, and the stock has not grown back
/// (5 - 2 = 3 more, then sold out).
async fn rearmed_with_both_holders(
    app: &TestApp,
    campaign: i64,
    codes: [&str; 2],
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let response = app.claim(campaign, "first").await;
        match response.status().as_u16() {
            503 => {
                assert_problem(response, 503, "unavailable").await;
            }
            409 => {
                let again = assert_problem(response, 409, "already-issued").await;
                assert_eq!(again["coupon"]["coupon_code"], codes[0]);
                break;
            }
            other => panic!("holder answered {other} while the campaign was lost"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the campaign was not re-armed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = assert_problem(app.claim(campaign, "second").await, 409, "already-issued").await;
    assert_eq!(again["coupon"]["coupon_code"], codes[1]);
    for user in ["third", "fourth", "fifth"] {
        assert_eq!(app.claim(campaign, user).await.status(), 201, "{user}");
    }
    assert_problem(app.claim(campaign, "sixth").await, 410, "sold-out").await;
}

fn reconcile(app: &TestApp, args: &[&str]) -> (i32, String) {
    run_reconcile(&mut reconcile_command(app, args))
}

/// `flashcoupon reconcile <args>` without the grace period, to run as it is or traced.
fn reconcile_command(app: &TestApp, args: &[&str]) -> std::process::Command {
    let mut all = vec!["reconcile"];
    all.extend_from_slice(args);
    let mut command = flashcoupon_command(&app.settings, &all);
    command.env("FLASHCOUPON__RECONCILE__GRACE_SECS", "0");
    command
}

/// The exit code and the output (stdout, then stderr) of a reconcile run.
fn run_reconcile(command: &mut std::process::Command) -> (i32, String) {
    let output = command.output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_scheduled_pass_catches_redis_up_and_exports_what_mysql_misses() {
    let app = spawn_app_with(|s| {
        s.reconcile.interval_secs = 1;
        s.reconcile.grace_secs = 0;
    })
    .await;
    let campaign = app.open_campaign(5).await;
    let first = coupon_code(&app, campaign, "first").await;
    coupon_code(&app, campaign, "second").await;
    coupon_code(&app, campaign, "third").await;
    assert_eq!(
        app.wait_persisted(campaign, 3, Duration::from_secs(60))
            .await,
        3
    );

    // Redis forgets "first" and two issued coupons; MySQL forgets "third".
    lose_in_redis(&app, campaign, "first", 1).await;
    app.db
        .execute_unprepared(&format!(
            "DELETE FROM issued_coupon WHERE campaign_id = {campaign} AND user_id = 'third'"
        ))
        .await
        .unwrap();

    // Within a few passes Redis holds "first" again with the same coupon (asking
    // Redis, not claiming: a claim inside that window would be a second coupon,
    // the loss that only the WAIT durability mode prevents)...
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !holder_known(&app, campaign, "first").await {
        assert!(std::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = assert_problem(app.claim(campaign, "first").await, 409, "already-issued").await;
    assert_eq!(again["coupon"]["coupon_code"], first.as_str());
    // ...and the stock did not grow back: 5 - 3 = 2 more, then sold out.
    assert_eq!(app.claim(campaign, "fourth").await.status(), 201);
    assert_eq!(app.claim(campaign, "fifth").await.status(), 201);
    assert_problem(app.claim(campaign, "sixth").await, 410, "sold-out").await;

    // The row MySQL lost is reported, not silently rewritten; what Redis lost is
    // no longer a difference once it caught up.
    let gauge = |text: &str, kind: &str| {
        let needle = format!("reconcile_differences{{campaign_id=\"{campaign}\",kind=\"{kind}\"");
        crate::helpers::metric_value(text, &needle)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = app.metrics_text().await;
        let seen = (
            gauge(&text, "missing_in_mysql"),
            gauge(&text, "extra_in_mysql"),
        );
        if seen == (Some(1.0), Some(0.0)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gauges never settled: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn reconcile_reports_differences_and_repair_fixes_both_sides() {
    let app = spawn_app_with(|s| s.reconcile.interval_secs = 0).await;
    let campaign = app.open_campaign(4).await;
    let kept = coupon_code(&app, campaign, "kept").await;
    coupon_code(&app, campaign, "lost-in-mysql").await;
    let lost = coupon_code(&app, campaign, "lost-in-redis").await;
    assert_eq!(
        app.wait_persisted(campaign, 3, Duration::from_secs(60))
            .await,
        3
    );

    let id = campaign.to_string();
    let (code, text) = reconcile(&app, &["--campaign", &id]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("missing_in_mysql 0, extra_in_mysql 0, code_mismatch 0"),
        "{text}"
    );

    lose_in_redis(&app, campaign, "lost-in-redis", 2).await;
    app.db
        .execute_unprepared(&format!(
            "DELETE FROM issued_coupon WHERE campaign_id = {campaign} AND user_id = 'lost-in-mysql'"
        ))
        .await
        .unwrap();
    let (code, text) = reconcile(&app, &["--campaign", &id]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("missing_in_mysql 1, extra_in_mysql 1, code_mismatch 0, redis issued counter 2 behind mysql 3"), "{text}");
    assert!(
        text.contains("missing_in_mysql user=lost-in-mysql"),
        "{text}"
    );
    assert!(
        text.contains("extra_in_mysql   user=lost-in-redis"),
        "{text}"
    );

    // Traced (spans are made once an OTLP endpoint is set; nothing listens there),
    // so the re-enqueued event carries the repair's trace.
    let (code, text) = run_reconcile(
        reconcile_command(&app, &["--campaign", &id, "--repair"])
            .env("FLASHCOUPON__TRACING__OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env("FLASHCOUPON__TRACING__OTLP_PROTOCOL", "http/json"),
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("1 coupon(s) put back into the outbox, 1 holder(s) restored"),
        "{text}"
    );
    // The running relay and persister deliver the re-enqueued coupon.
    assert_eq!(
        app.wait_persisted(campaign, 3, Duration::from_secs(60))
            .await,
        3
    );
    // Four events, unless the relay sent one twice: read what comes within 8 s.
    let events = app
        .read_topic_within(
            app.settings.kafka.issued_topic.clone(),
            8,
            Duration::from_secs(8),
        )
        .await;
    let resent = events
        .iter()
        .filter(|e| e.key == "lost-in-mysql")
        .max_by_key(|e| e.offset)
        .unwrap_or_else(|| panic!("no event of lost-in-mysql in {events:?}"));
    let traceparent = resent.headers.iter().find(|(k, _)| k == "traceparent");
    assert!(
        traceparent.is_some_and(|(_, v)| v.starts_with("00-") && v.len() == 55),
        "the re-enqueued event has no traceparent: {resent:?}"
    );
    let (code, text) = reconcile(&app, &["--campaign", &id]);
    assert_eq!(code, 0, "{text}");

    let again = assert_problem(
        app.claim(campaign, "lost-in-redis").await,
        409,
        "already-issued",
    )
    .await;
    assert_eq!(again["coupon"]["coupon_code"], lost.as_str());
    let kept_again = assert_problem(app.claim(campaign, "kept").await, 409, "already-issued").await;
    assert_eq!(kept_again["coupon"]["coupon_code"], kept.as_str());
    assert_eq!(app.claim(campaign, "newcomer").await.status(), 201);
    assert_problem(app.claim(campaign, "one-too-many").await, 410, "sold-out").await;

    let (code, text) = reconcile(&app, &["--campaign", "zero"]);
    assert_ne!(code, 0);
    assert!(text.contains("zero"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn the_scheduled_pass_rearms_a_live_campaign_redis_lost_entirely() {
    let app = spawn_app_with(|s| {
        s.reconcile.interval_secs = 1;
        s.reconcile.grace_secs = 0;
    })
    .await;
    let (campaign, first, second) = stock_five_with_two_holders(&app).await;
    assert_eq!(
        app.wait_persisted(campaign, 2, Duration::from_secs(60))
            .await,
        2
    );

    // Redis loses everything of this service (a restart without persistence):
    // meta, holders, outbox and the set of armed campaigns.
    let deleted = crate::helpers::flush_prefix(&app.settings).await;
    assert!(deleted >= 3, "only {deleted} key(s) deleted");

    // Nobody claims (a refused claim would ask the instance for a re-arm of its
    // own) and nobody runs `campaign arm`: the scheduled pass re-arms it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !armed(&app, campaign).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled pass did not re-arm the campaign within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rearmed_with_both_holders(&app, campaign, [&first, &second], Duration::from_secs(5)).await;
    let figures = app.admin_get(campaign).await;
    assert_eq!(figures["issued"], 5, "{figures}");
    assert_eq!(figures["remaining"], 0, "{figures}");
    // The relay finds the re-armed campaign again: the new coupons reach MySQL.
    assert_eq!(
        app.wait_persisted(campaign, 5, Duration::from_secs(60))
            .await,
        5
    );
    app.stop().await;
}

/// With the scheduled pass off, a claim that finds its live campaign missing from
/// Redis is refused (503) and asks the instance for a re-arm: issuance comes back
/// within seconds, with the holders and the counter MySQL has.
#[tokio::test]
async fn a_claim_for_a_campaign_redis_lost_has_it_rearmed_at_once() {
    let app = spawn_app_with(|s| s.reconcile.interval_secs = 0).await;
    let (campaign, first, second) = stock_five_with_two_holders(&app).await;
    assert_eq!(
        app.wait_persisted(campaign, 2, Duration::from_secs(60))
            .await,
        2
    );
    assert!(crate::helpers::flush_prefix(&app.settings).await >= 3);
    assert!(!armed(&app, campaign).await);

    let refused = assert_problem(app.claim(campaign, "first").await, 503, "unavailable").await;
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("being restored after Redis lost it"),
        "{refused}"
    );
    let asked = std::time::Instant::now();
    // The re-arm first waits for the persister to store what the shared broker holds.
    rearmed_with_both_holders(&app, campaign, [&first, &second], Duration::from_secs(60)).await;
    println!(
        "re-armed on demand: issuing again {:?} after the first refused claim",
        asked.elapsed()
    );
    let figures = app.admin_get(campaign).await;
    assert_eq!(figures["issued"], 5, "{figures}");
    assert_eq!(
        app.wait_persisted(campaign, 5, Duration::from_secs(60))
            .await,
        5
    );
    app.stop().await;
}

/// Whether Redis holds the campaign's settings (it is armed).
async fn armed(app: &TestApp, campaign: i64) -> bool {
    let mut conn = app.redis().await;
    let prefix = &app.settings.redis.key_prefix;
    redis::AsyncCommands::exists(&mut conn, format!("{prefix}{{c:{campaign}}}:meta"))
        .await
        .unwrap()
}

/// Redis loses a campaign whose coupons were relayed to Kafka but not yet persisted.
/// Re-arming from MySQL then would count them as stock again and give their
/// shoppers a second coupon; the re-arm the refused claims ask for waits until the
/// persister has stored them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_campaign_is_rearmed_only_after_the_coupons_in_kafka_reach_mysql() {
    let app = spawn_app_with(|s| {
        s.persister.enabled = false;
        s.reconcile.interval_secs = 0;
    })
    .await;
    let (campaign, first, second) = stock_five_with_two_holders(&app).await;
    app.wait_relayed(campaign, Duration::from_secs(30)).await;
    assert!(crate::helpers::flush_prefix(&app.settings).await >= 1);

    // Twenty refused claims, each asking for a re-arm: none may arm the campaign
    // while both coupons are only in Kafka (armed now, it would hand "first" a
    // second coupon).
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_problem(app.claim(campaign, "first").await, 503, "unavailable").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut settings = app.settings.clone();
    settings.persister.enabled = true;
    let db = app.db.clone();
    app.stop().await;

    // A persister runs again: once it has stored both, the campaign comes back with
    // both holders and its counter at 2.
    let app = crate::helpers::start_app(settings, db).await;
    rearmed_with_both_holders(&app, campaign, [&first, &second], Duration::from_secs(60)).await;
    assert_eq!(
        app.wait_persisted(campaign, 5, Duration::from_secs(60))
            .await,
        5
    );
    app.stop().await;
}

/// A campaign that ended before the lookback, with every coupon in MySQL, leaves the
/// set of armed campaigns the relay and `/me/coupons` walk; a live one stays. The
/// retired campaign still answers a late claim with "ended", and its coupon is
/// still listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_settled_campaign_is_retired_and_still_answers_ended() {
    let app = spawn_app_with(|s| {
        s.reconcile.interval_secs = 1;
        s.reconcile.grace_secs = 0;
        s.reconcile.lookback_hours = 0;
    })
    .await;
    let live = app.open_campaign(5).await;
    let response = app.create_campaign(campaign_body(5, -60, 3)).await;
    assert_eq!(response.status(), 201);
    let short = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let code = coupon_code(&app, short, "early").await;
    assert_eq!(
        app.wait_persisted(short, 1, Duration::from_secs(60)).await,
        1
    );

    let set = format!("{}campaigns", app.settings.redis.key_prefix);
    let mut conn = app.redis().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let members: Vec<i64> = redis::AsyncCommands::smembers(&mut conn, &set)
            .await
            .unwrap();
        assert!(
            members.contains(&live),
            "the live campaign left the set: {members:?}"
        );
        if !members.contains(&short) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ended campaign was never retired: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_problem(app.claim(short, "late").await, 409, "campaign-not-open").await;
    let mine = app.get_json("/api/v1/me/coupons", Some("early")).await;
    assert_eq!(mine["coupons"][0]["coupon_code"], code.as_str(), "{mine}");
    assert_eq!(app.claim(live, "early").await.status(), 201);
    app.stop().await;
}

/// Re-arming reads MySQL a page (1,000 rows) at a time: a campaign of 2,500 holders
/// comes back whole, the last page short, and its counter at the highest sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_larger_than_a_page_is_rearmed_with_every_holder() {
    const HOLDERS: i64 = 2_500;
    let app = spawn_app_with(|s| s.reconcile.interval_secs = 0).await;
    let campaign = app.open_campaign(HOLDERS + 2).await;
    // The coupons as the persister writes them; user ids sort apart from their
    // sequence so the pages do not follow the order of issue.
    let values: Vec<String> = (1..=HOLDERS)
        .map(|seq| {
            format!(
                "('e-{campaign}-{seq}', {campaign}, 'shopper-{}', 'CODE{seq:06}', {seq}, NOW(6), NOW(6))",
                (seq * 7919) % 10_007
            )
        })
        .collect();
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO issued_coupon (event_id, campaign_id, user_id, coupon_code, sequence, \
             issued_at, persisted_at) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
    let deleted = crate::helpers::flush_prefix(&app.settings).await;
    assert!(deleted >= 1, "only {deleted} key(s) deleted");

    crate::helpers::campaign_arm(&app.settings);

    let mut conn = app.redis().await;
    let holders_key = format!("{}{{c:{campaign}}}:holders", app.settings.redis.key_prefix);
    let holders: i64 = redis::cmd("HLEN")
        .arg(&holders_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holders, HOLDERS);
    let figures = app.admin_get(campaign).await;
    assert_eq!(figures["issued"], HOLDERS, "{figures}");
    // The first and the last shopper of the walk keep their coupon...
    for seq in [1, HOLDERS] {
        let user = format!("shopper-{}", (seq * 7919) % 10_007);
        let again = assert_problem(app.claim(campaign, &user).await, 409, "already-issued").await;
        assert_eq!(
            again["coupon"]["coupon_code"],
            format!("CODE{seq:06}"),
            "{user}"
        );
    }
    // ...and only the two coupons never issued are left.
    assert_eq!(app.claim(campaign, "newcomer-1").await.status(), 201);
    assert_eq!(app.claim(campaign, "newcomer-2").await.status(), 201);
    assert_problem(app.claim(campaign, "newcomer-3").await, 410, "sold-out").await;
    app.stop().await;
}

async fn reconcile_leader(app: &TestApp) -> Option<String> {
    let mut conn = app.redis().await;
    let key = format!("{}reconcile:leader", app.settings.redis.key_prefix);
    redis::AsyncCommands::get(&mut conn, key).await.unwrap()
}

#[tokio::test]
async fn one_instance_runs_the_scheduled_pass_and_another_takes_over_when_it_stops() {
    let first = spawn_app_with(|s| {
        s.reconcile.interval_secs = 1;
        s.reconcile.grace_secs = 0;
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(owner) = reconcile_leader(&first).await {
            break owner;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no instance took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A second instance of the same service (same Redis prefix, same database)
    // leaves the pass to the leader while it lives.
    let second = crate::helpers::start_app(first.settings.clone(), first.db.clone()).await;
    let campaign = first.open_campaign(5).await;
    coupon_code(&first, campaign, "kept").await;
    let lost = coupon_code(&second, campaign, "lost").await;
    assert_eq!(
        first
            .wait_persisted(campaign, 2, Duration::from_secs(60))
            .await,
        2
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reconcile_leader(&first).await.as_deref(),
        Some(leader.as_str())
    );

    // The leader stops; Redis then loses a holder. The survivor takes the lease
    // once it expires (three intervals) and catches Redis up.
    first.stop().await;
    lose_in_redis(&second, campaign, "lost", 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !holder_known(&second, campaign, "lost").await {
        assert!(
            std::time::Instant::now() < deadline,
            "no instance took over the pass"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let owner = reconcile_leader(&second).await.expect("a leader");
    assert_ne!(owner, leader, "the stopped instance still holds the lease");
    let again = assert_problem(second.claim(campaign, "lost").await, 409, "already-issued").await;
    assert_eq!(again["coupon"]["coupon_code"], lost.as_str());
    second.stop().await;
}
