//! The persister: idempotent batched inserts, dead letters, at-least-once offsets.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use flashcoupon::domain::CouponIssuedEvent;
use flashcoupon::events::EventProducer;
use flashcoupon::persistence::{DbError, InsertReport};

use crate::helpers::{flashcoupon_command, spawn_app, spawn_app_with, PrivateKafka, Process};

fn event(campaign: i64, user: &str, sequence: i64) -> CouponIssuedEvent {
    CouponIssuedEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: CouponIssuedEvent::EVENT_TYPE.into(),
        schema_version: 1,
        occurred_at: Utc::now(),
        campaign_id: campaign,
        user_id: user.into(),
        coupon_code: flashcoupon::domain::new_coupon_code(),
        sequence,
    }
}

#[tokio::test]
async fn duplicate_delivery_gives_one_row_and_a_malformed_message_goes_to_the_dlt() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let campaign = app.open_campaign(10).await;
    let producer =
        EventProducer::new(&app.settings.kafka, app.settings.kafka.issued_topic.clone()).unwrap();
    let first = event(campaign, "dup-user", 1);
    let next = event(campaign, "next-user", 2);
    producer.publish_issued(&first, "").await.unwrap();
    producer.publish_issued(&first, "").await.unwrap();
    producer
        .publish_raw(b"bad", b"{this is not json", &[])
        .await
        .unwrap();
    producer.publish_issued(&next, "").await.unwrap();

    assert_eq!(
        app.wait_persisted(campaign, 2, Duration::from_secs(60))
            .await,
        2
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = app.db.coupons_of_campaign(campaign).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let codes: HashSet<&str> = rows.iter().map(|r| r.coupon_code.as_str()).collect();
    assert!(
        codes.contains(first.coupon_code.as_str()) && codes.contains(next.coupon_code.as_str())
    );

    let dead = app.read_dlt(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, "{this is not json");
    assert_eq!(dead[0].key, "bad");
    let error = dead[0]
        .headers
        .iter()
        .find(|(k, _)| k == "x-error")
        .map(|(_, v)| v.clone());
    assert!(
        error.unwrap_or_default().contains("malformed JSON"),
        "{:?}",
        dead[0].headers
    );
    app.stop().await;
}

/// Both ways a batch is written: all new (one plain INSERT), and a batch that meets
/// stored rows (an event already stored, a new one, and one whose shopper already
/// holds another coupon), which takes the upsert and the read-back. An error that is
/// no duplicate (here: no such campaign) is the batch's error, as before.
#[tokio::test]
async fn a_batch_is_stored_whole_when_new_and_sorted_out_when_it_meets_stored_rows() {
    let app = spawn_app_with(|s| {
        s.relay.enabled = false;
        s.persister.enabled = false;
    })
    .await;
    let campaign = app.open_campaign(10).await;
    let db = &app.db;
    // (stored, conflicting event ids) of one batch.
    let insert = |batch: Vec<CouponIssuedEvent>| async move {
        let report: InsertReport = db.insert_coupons(&batch).await.unwrap();
        (report.stored, report.conflicting)
    };
    let (a, b) = (event(campaign, "a", 1), event(campaign, "b", 2));
    assert_eq!(insert(vec![a.clone(), b.clone()]).await, (2, Vec::new()));

    let c = event(campaign, "c", 3);
    let b_other_coupon = event(campaign, "b", 4);
    let conflicting = vec![b_other_coupon.event_id.clone()];
    assert_eq!(
        insert(vec![a.clone(), c.clone(), b_other_coupon]).await,
        (2, conflicting)
    );
    let rows = app.db.coupons_of_campaign(campaign).await.unwrap();
    let stored: HashSet<(&str, &str)> = rows
        .iter()
        .map(|r| (r.user_id.as_str(), r.coupon_code.as_str()))
        .collect();
    let expected: HashSet<(&str, &str)> = [&a, &b, &c]
        .iter()
        .map(|e| (e.user_id.as_str(), e.coupon_code.as_str()))
        .collect();
    assert_eq!(stored, expected);

    let orphan = event(i64::from(i32::MAX), "nobody", 1);
    let refused = app.db.insert_coupons(&[orphan]).await;
    assert!(matches!(refused, Err(DbError::Rejected(_))), "{refused:?}");
    assert_eq!(app.db.coupons_of_campaign(campaign).await.unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn an_event_that_conflicts_with_another_coupon_of_the_shopper_goes_to_the_dlt() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let campaign = app.open_campaign(10).await;
    let producer =
        EventProducer::new(&app.settings.kafka, app.settings.kafka.issued_topic.clone()).unwrap();
    producer
        .publish_issued(&event(campaign, "twice", 1), "")
        .await
        .unwrap();
    assert_eq!(
        app.wait_persisted(campaign, 1, Duration::from_secs(60))
            .await,
        1
    );
    // A different event for the same shopper: never a second row.
    producer
        .publish_issued(&event(campaign, "twice", 2), "")
        .await
        .unwrap();
    let dead = app.read_dlt(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(app.db.persisted_count(campaign).await.unwrap(), 1);
    app.stop().await;
}

/// On a broker of its own: 4,000 coupons relayed to the shared broker, beside every
/// other test's traffic, once took longer than the minute allowed under the full suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persister_killed_mid_stream_and_restarted_loses_nothing_and_writes_nothing_twice() {
    let total = 4000;
    let broker = PrivateKafka::start().await;
    let app = spawn_app_with(|s| {
        s.persister.enabled = false;
        broker.configure(s);
    })
    .await;
    let campaign = app.open_campaign(total).await;
    let issued = app.claim_all(campaign, "s", total, 200).await;
    assert!(issued.iter().all(|s| *s == 201));
    app.wait_relayed(campaign, Duration::from_secs(60)).await;

    let consume = || {
        let mut cmd = flashcoupon_command(&app.settings, &["consume"]);
        cmd.env("FLASHCOUPON__PERSISTER__BATCH_SIZE", "20");
        Process::spawn(&mut cmd)
    };
    let mut persister = consume();
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let n = app.db.persisted_count(campaign).await.unwrap();
        if n > 0 {
            persister.kill(); // SIGKILL: no commit, no goodbye
            break n;
        }
        assert!(Instant::now() < deadline, "persister never started writing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        at_kill < total,
        "killed too late to be mid-stream: {at_kill}"
    );

    let _restarted = consume();
    let rows = app
        .assert_each_coupon_once(campaign, total, Duration::from_secs(120))
        .await;
    let sequences: HashSet<i64> = rows.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (1..=total).collect());
    app.stop().await;
}

#[tokio::test]
async fn dlt_replay_dry_runs_then_sends_a_fixed_letter_back_once() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let campaign = app.open_campaign(10).await;
    let producer =
        EventProducer::new(&app.settings.kafka, app.settings.kafka.issued_topic.clone()).unwrap();
    producer
        .publish_issued(&event(campaign, "twice", 1), "")
        .await
        .unwrap();
    assert_eq!(
        app.wait_persisted(campaign, 1, Duration::from_secs(60))
            .await,
        1
    );
    let second = event(campaign, "twice", 2);
    producer.publish_issued(&second, "").await.unwrap();
    assert_eq!(app.read_dlt(1).await.len(), 1);

    let replay = |args: &[&str]| {
        let mut all = vec!["dlt", "replay"];
        all.extend_from_slice(args);
        let output = flashcoupon_command(&app.settings, &all).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dry = replay(&["--dry-run"]);
    assert!(
        dry.contains("1 dead letter(s) read, 1 would be replayed"),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("-> {}", app.settings.kafka.issued_topic)),
        "{dry}"
    );

    // The cause is fixed (the stray first row removed by hand); the letter replays.
    app.db
        .execute_unprepared(&format!(
            "DELETE FROM issued_coupon WHERE campaign_id = {campaign} AND user_id = 'twice'"
        ))
        .await
        .unwrap();
    let done = replay(&[]);
    assert!(done.contains("1 dead letter(s) read, 1 replayed"), "{done}");
    assert_eq!(
        app.wait_persisted(campaign, 1, Duration::from_secs(60))
            .await,
        1
    );
    let stored = app.db.coupons_of_campaign(campaign).await.unwrap();
    assert_eq!(stored[0].coupon_code, second.coupon_code);
    // Progress is kept: a second run finds nothing left.
    let again = replay(&[]);
    assert!(again.contains("0 dead letter(s) read"), "{again}");
    app.stop().await;
}

#[tokio::test]
async fn an_event_mysql_refuses_is_retried_after_1s_2s_10s_and_lands_once_the_cause_is_fixed() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    assert_eq!(app.settings.kafka.retry_delays_ms, [1000, 2000, 10000]);
    // An event of a campaign whose row is not in MySQL yet: the foreign key refuses it.
    let campaign = 900_000_000 + i64::from(rand::random::<u16>());
    let producer =
        EventProducer::new(&app.settings.kafka, app.settings.kafka.issued_topic.clone()).unwrap();
    let published = Instant::now();
    producer
        .publish_issued(&event(campaign, "early", 1), "")
        .await
        .unwrap();
    // After the first retry (1 s) has failed too, the campaign row arrives.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO campaign (id, name, total_quantity, starts_at, ends_at, discount_kind, \
             discount_value, coupon_valid_days, paused, created_at, updated_at) VALUES \
             ({campaign}, 'late row', 10, NOW(3), NOW(3) + INTERVAL 1 HOUR, 'percent', 10, 7, 0, NOW(3), NOW(3))"
        ))
        .await
        .unwrap();
    assert_eq!(
        app.wait_persisted(campaign, 1, Duration::from_secs(30))
            .await,
        1
    );
    let took = published.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "landed after {took:?}, before the 2 s retry"
    );
    assert!(app
        .read_dlt_within(1, Duration::from_secs(2))
        .await
        .is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_event_that_keeps_failing_reaches_the_dlt_after_its_retries_with_the_attempts() {
    let app = spawn_app_with(|s| {
        s.relay.enabled = false;
        s.kafka.retry_delays_ms = vec![200, 200, 200];
    })
    .await;
    let campaign = 800_000_000 + i64::from(rand::random::<u16>());
    let producer =
        EventProducer::new(&app.settings.kafka, app.settings.kafka.issued_topic.clone()).unwrap();
    producer
        .publish_issued(
            &event(campaign, "orphan", 1),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .await
        .unwrap();
    let dead = app.read_dlt(1).await;
    assert_eq!(dead.len(), 1);
    let header = |key: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in {:?}", dead[0].headers))
    };
    assert_eq!(header("x-attempts"), "4", "1 try and 3 retries");
    assert_eq!(header("x-original-topic"), app.settings.kafka.issued_topic);
    assert!(
        header("x-error").to_lowercase().contains("foreign key"),
        "{}",
        header("x-error")
    );
    assert!(header("traceparent").contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    app.stop().await;
}

#[tokio::test]
async fn shoppers_whose_ids_differ_only_in_case_each_keep_their_row() {
    // Shopper ids are case-sensitive (`A-Z a-z` are both allowed, JWT subjects are
    // compared byte for byte): MySQL must not fold `Case-Shopper` into `case-shopper`.
    let app = spawn_app_with(|_| {}).await;
    let campaign = app.open_campaign(10).await;
    for user in ["Case-Shopper", "case-shopper", "CASE-SHOPPER"] {
        assert_eq!(app.claim(campaign, user).await.status(), 201, "{user}");
    }
    assert_eq!(
        app.wait_persisted(campaign, 3, Duration::from_secs(60))
            .await,
        3
    );
    let rows = app.db.coupons_of_campaign(campaign).await.unwrap();
    let users: HashSet<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(
        users,
        HashSet::from(["Case-Shopper", "case-shopper", "CASE-SHOPPER"])
    );
}

/// A consumer retries a transient database error forever and sends a rejected
/// statement to the retry topic and then the DLT, so the classification decides
/// whether one bad message can stop a partition. Both kinds, from a real MariaDB.
#[tokio::test]
async fn the_database_s_own_errors_are_rejected_unless_they_say_not_now() {
    let app = spawn_app().await;
    // 1364: a row without a value the schema requires. Retrying can never help.
    let refused = app
        .db
        .execute_unprepared("INSERT INTO campaign (name) VALUES (NULL)")
        .await
        .unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    assert!(refused.to_string().contains("1364"), "{refused}");
    // 1969: the statement's time limit. The same statement may pass later.
    let slow = app
        .db
        .execute_unprepared(
            "SET STATEMENT max_statement_time=0.001 FOR \
             SELECT COUNT(*) FROM seq_1_to_100000000 a, seq_1_to_100 b",
        )
        .await
        .unwrap_err();
    assert!(slow.is_transient(), "{slow}");
    assert!(slow.to_string().contains("1969"), "{slow}");
    app.stop().await;
}
