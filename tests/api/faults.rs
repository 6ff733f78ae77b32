//! Dependencies failing under the service: each test stops only its private instance.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use serde_json::Value;

use crate::helpers::{assert_problem, metric_value, spawn_app_with, PrivateKafka, PrivateRedis};

/// With a broker of its own as well: the re-arm waits until the persister has stored
/// what the broker holds, and on the shared broker that wait also sat behind every
/// other test's traffic (it once took the whole 2 minutes under the full suite).
#[tokio::test]
async fn redis_stopped_fails_closed_with_503_and_retry_after_then_rearm_keeps_holders() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let broker = PrivateKafka::start().await;
    let app = spawn_app_with(|s| {
        s.redis.url = url.clone().into();
        broker.configure(s);
    })
    .await;
    let campaign = app.open_campaign(3).await;
    let coupon: Value = app.claim(campaign, "holder").await.json().await.unwrap();
    assert_eq!(
        app.wait_persisted(campaign, 1, Duration::from_secs(60))
            .await,
        1
    );

    redis.stop();
    let started = Instant::now();
    let response = app.claim(campaign, "late").await;
    let waited = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    let problem = assert_problem(response, 503, "unavailable").await;
    assert!(
        problem.get("in_flight_limit").is_none(),
        "a failed Redis is not a busy instance: {problem}"
    );
    assert!(waited < Duration::from_secs(10), "503 took {waited:?}");
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["redis"]["status"], "down", "{ready}");
    assert_eq!(ready["mysql"]["status"], "up", "{ready}");

    // Redis comes back empty: the campaign stays closed (503), never a fresh stock,
    // until the instance has re-armed it from MySQL, which the refused claim asked for.
    redis.restart().await;
    assert_problem(app.claim(campaign, "late").await, 503, "unavailable").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        let response = app.claim(campaign, "holder").await;
        if response.status() != 503 {
            break assert_problem(response, 409, "already-issued").await;
        }
        assert!(Instant::now() < deadline, "not re-armed within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The holder keeps the same coupon; the stock did not grow back.
    assert_eq!(again["coupon"]["coupon_code"], coupon["coupon_code"]);
    assert_eq!(app.claim(campaign, "late").await.status(), 201);
    assert_eq!(app.claim(campaign, "later").await.status(), 201);
    assert_problem(app.claim(campaign, "too-late").await, 410, "sold-out").await;
    app.stop().await;
}

/// Redis stops answering (SIGSTOP) in the middle of a burst: the instance lets
/// `server.max_claims_in_flight` claims wait and turns the rest away at once with a
/// retryable 503, instead of queueing them until they time out. When Redis answers
/// again the waiting claims get their coupons and the slots are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_limit_claims_are_turned_away_at_once_instead_of_queueing() {
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|s| {
        s.redis.url = url.clone().into();
        s.redis.timeout_ms = 20_000;
        s.server.max_claims_in_flight = std::num::NonZeroUsize::new(4).unwrap();
    })
    .await;
    let campaign = app.open_campaign(100).await;
    assert_eq!(app.claim(campaign, "before").await.status(), 201);
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "coupon_issue_in_flight{state=\"max\"}"),
        Some(4.0),
        "{metrics}"
    );

    redis.signal("STOP");
    let mut answers: stream::FuturesUnordered<_> = (0..12)
        .map(|i| {
            let app = &app;
            async move { (i, app.claim(campaign, &format!("burst-{i}")).await) }
        })
        .collect();
    // Redis is paused: only the claims past the limit can be answered, and at once.
    let started = Instant::now();
    let mut turned_away = HashSet::new();
    for _ in 0..8 {
        let (i, response) = tokio::time::timeout(Duration::from_secs(10), answers.next())
            .await
            .expect("claims past the limit are answered while Redis is paused")
            .unwrap();
        assert!(response.headers().contains_key("retry-after"));
        let problem = assert_problem(response, 503, "unavailable").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("already has 4 claims waiting"), "{detail}");
        assert_eq!(problem["in_flight_limit"], 4, "{problem}");
        turned_away.insert(i);
    }
    let waited = started.elapsed();
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "coupon_issue_in_flight{state=\"in_use\"}"),
        Some(4.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "coupon_issue_total{result=\"rejected\"}"),
        Some(8.0),
        "{metrics}"
    );

    redis.signal("CONT");
    let mut issued = HashSet::new();
    while let Some((i, response)) = answers.next().await {
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        issued.insert(i);
    }
    drop(answers);
    assert_eq!(issued.len(), 4);
    assert!(issued.is_disjoint(&turned_away));
    assert_eq!(app.admin_get(campaign).await["issued"], 5);
    // The slots came back: a shopper turned away gets a coupon on retry.
    let retry = *turned_away.iter().next().unwrap();
    assert_eq!(
        app.claim(campaign, &format!("burst-{retry}"))
            .await
            .status(),
        201
    );
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_value(&metrics, "coupon_issue_in_flight{state=\"in_use\"}"),
        Some(0.0),
        "{metrics}"
    );
    println!("8 claims past the limit of 4 answered 503 in {waited:?} while Redis was paused");
    app.stop().await;
}

/// Redis down while marketing creates a campaign: the row is written, arming fails,
/// the answer is 503. The retry under the same `Idempotency-Key`, once Redis is back,
/// arms that campaign and answers with it: one campaign, not two.
#[tokio::test]
async fn a_create_answered_503_after_its_row_was_written_is_armed_by_its_retry_not_twinned() {
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis.url = url.clone().into()).await;
    let body = crate::helpers::campaign_body(2, -60, 3600);
    let create = || app.create_campaign_keyed(&body, "flash-after-outage");
    redis.stop();
    assert_problem(create().await, 503, "unavailable").await;
    let written = app.db.campaigns(10).await.unwrap();
    assert_eq!(written.len(), 1, "the first attempt wrote its row");

    redis.restart().await;
    let retried = create().await;
    assert_eq!(retried.status(), 201);
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["id"], written[0].id);
    assert_eq!(retried["status"], "open", "{retried}");
    assert_eq!(app.db.campaigns(10).await.unwrap().len(), 1);
    // Armed with its stock: two coupons, then sold out.
    let id = written[0].id;
    assert_eq!(app.claim(id, "a").await.status(), 201);
    assert_eq!(app.claim(id, "b").await.status(), 201);
    assert_problem(app.claim(id, "c").await, 410, "sold-out").await;
    app.stop().await;
}

/// The broker stops answering (SIGSTOP) for longer than the delivery timeout, then
/// comes back with its log and its groups' offsets, as after a network partition.
/// `kafka::a_broker_killed_under_a_burst_and_restarted_loses_no_acknowledged_coupon`
/// covers the crash and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_unreachable_keeps_claims_answering_and_every_coupon_reaches_mysql_once() {
    let broker = PrivateKafka::start().await;
    let app = spawn_app_with(|s| {
        broker.configure(s);
        // Small batches, so the outage leaves many of them pending with the relay; and
        // no takeover round within the test, so those must be read again by the relay
        // itself, not found by XAUTOCLAIM a batch per round.
        s.relay.batch_size = 20;
        s.relay.claim_idle_ms = 600_000;
    })
    .await;
    let campaign = app.open_campaign(1000).await;

    let claim_range = |range: std::ops::Range<i32>| {
        let app = &app;
        stream::iter(range)
            .map(move |i| async move {
                app.claim(campaign, &format!("u{i}"))
                    .await
                    .status()
                    .as_u16()
            })
            .buffer_unordered(50)
            .collect::<Vec<u16>>()
    };
    assert!(claim_range(0..100).await.iter().all(|s| *s == 201));
    assert_eq!(
        app.wait_persisted(campaign, 100, Duration::from_secs(60))
            .await,
        100
    );

    broker.signal("STOP");
    let during = claim_range(100..300).await;
    assert!(
        during.iter().all(|s| *s == 201),
        "claims failed while the broker was unreachable"
    );
    let figures = app.admin_get(campaign).await;
    assert_eq!(figures["issued"], 300);
    assert!(figures["pending_events"].as_i64().unwrap() > 0, "{figures}");
    // Longer than the delivery timeout (10 s): the batches read so far fail and stay
    // pending with the relay.
    tokio::time::sleep(Duration::from_secs(12)).await;

    broker.signal("CONT");
    app.assert_each_coupon_once(campaign, 300, Duration::from_secs(40))
        .await;
    assert_eq!(app.admin_get(campaign).await["pending_events"], 0);
    app.stop().await;
}

#[tokio::test]
async fn wait_mode_acknowledges_only_coupons_a_replica_has() {
    let primary = PrivateRedis::start().await;
    let mut replica = PrivateRedis::replica_of(&primary).await;
    let url = primary.url();
    let app = spawn_app_with(|s| {
        s.redis.url = url.clone().into();
        s.redis.wait_replicas = 1;
        s.redis.wait_timeout_ms = 300;
    })
    .await;
    let campaign = app.open_campaign(5).await;
    // The replica needs a moment to sync before it can acknowledge.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let response = app.claim(campaign, "durable").await;
        if response.status() == 201 {
            break response.json::<Value>().await.unwrap();
        }
        if response.status() == 409 {
            break assert_problem(response, 409, "already-issued").await["coupon"].clone();
        }
        assert!(Instant::now() < deadline, "replica never acknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(first["coupon_code"].is_string());

    // Without the replica the write is not acknowledged: 503, and the retry (once a
    // replica is back, or the mode is off) finds the coupon already issued.
    replica.stop();
    let response = app.claim(campaign, "undurable").await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "unavailable").await;
    assert_problem(app.claim(campaign, "undurable").await, 503, "unavailable").await;
    // The primary has the coupon, unacknowledged, and hands it out to no one (not
    // even its holder) while no replica confirms; the stock counts it, and once a
    // replica is back the retry returns that same coupon.
    assert_eq!(app.admin_get(campaign).await["issued"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_moves_issuance_to_the_new_primary_without_a_second_coupon() {
    use crate::helpers::PrivateSentinel;
    let mut primary = PrivateRedis::start().await;
    let replica = PrivateRedis::replica_of(&primary).await;
    let sentinel = PrivateSentinel::start(&primary).await;
    let sentinel_url = sentinel.url();
    let app = spawn_app_with(|s| {
        s.redis.mode = "sentinel".into();
        s.redis.sentinel_urls = sentinel_url.clone();
        s.redis.sentinel_master = "mymaster".into();
        // No scheduled reconcile; and a claim refused as "not armed" (the re-arm
        // out of MySQL it asks for) fails the test below: issuance must come back
        // from the replica's own data.
        s.reconcile.interval_secs = 0;
    })
    .await;
    let campaign = app.open_campaign(20).await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let coupon: Value = app
            .claim(campaign, &format!("early{i}"))
            .await
            .json()
            .await
            .unwrap();
        codes.push(coupon["coupon_code"].as_str().unwrap().to_owned());
    }
    // replica_of waited for the replica's first sync; let it take the claims above
    // from the stream, and the sentinel learn about it, before the crash.
    tokio::time::sleep(Duration::from_secs(3)).await;

    primary.stop();
    let stopped = Instant::now();
    let mut answers = HashSet::new();
    let recovered = loop {
        let response = app.claim(campaign, "after-failover").await;
        let status = response.status().as_u16();
        answers.insert(status);
        if status == 201 {
            break stopped.elapsed();
        }
        let problem = assert_problem(response, 503, "unavailable").await;
        assert!(
            !problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("Redis lost it"),
            "the new primary had lost the campaign: {problem}"
        );
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "no failover within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("sentinel failover: issuing again {recovered:?} after the primary died");

    // The new primary is the old replica, and it kept the coupons already given.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", replica.port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(info.contains("role:master"), "{info}");
    for (i, code) in codes.iter().enumerate() {
        let again = assert_problem(
            app.claim(campaign, &format!("early{i}")).await,
            409,
            "already-issued",
        )
        .await;
        assert_eq!(again["coupon"]["coupon_code"], code.as_str());
    }
    assert_eq!(app.admin_get(campaign).await["issued"], 6);
    drop(sentinel);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_mode_issues_relays_and_reads_across_slots() {
    use crate::helpers::PrivateCluster;
    let cluster = PrivateCluster::start().await;
    let urls = cluster.urls();
    let app = spawn_app_with(|s| {
        s.redis.mode = "cluster".into();
        s.redis.cluster_urls = urls.clone();
    })
    .await;
    // Enough campaigns that their slots {c:<id>} spread over the three nodes.
    let mut campaigns = Vec::new();
    for _ in 0..6 {
        campaigns.push(app.open_campaign(2).await);
    }
    for &campaign in &campaigns {
        assert_eq!(app.claim(campaign, "roamer").await.status(), 201);
        assert_problem(app.claim(campaign, "roamer").await, 409, "already-issued").await;
        assert_eq!(app.claim(campaign, "other").await.status(), 201);
        assert_problem(app.claim(campaign, "late").await, 410, "sold-out").await;
    }
    // The relay reads every outbox (one slot each) and the persister writes them all.
    for &campaign in &campaigns {
        assert_eq!(
            app.wait_persisted(campaign, 2, Duration::from_secs(60))
                .await,
            2
        );
    }
    // One shopper's coupons across campaigns in different slots.
    let mine = app.get_json("/api/v1/me/coupons", Some("roamer")).await;
    assert_eq!(mine["coupons"].as_array().unwrap().len(), 6, "{mine}");
    // The keys really are spread over more than one node.
    let holding_nodes = cluster
        .ports
        .iter()
        .filter(|port| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "dbsize"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() != "0"
        })
        .count();
    assert!(holding_nodes >= 2, "all keys on one node");
    // The durability mode is refused with a reason in cluster mode.
    let mut settings = app.settings.clone();
    settings.redis.wait_replicas = 1;
    let err = flashcoupon::store::RedisStore::new(&settings.redis)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("wait_replicas"), "{err}");
    app.stop().await;
}
