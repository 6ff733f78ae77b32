//! Apache Kafka failing under the service: a broker crash, a partition leader's crash
//! in a three-node cluster, a persister of a group killed beside its twin, and a
//! cluster that requires a SASL login. Each test that harms a broker runs its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::chaos::{assert_invariants, judge, print, with_fault};
use crate::helpers::{flashcoupon_command, spawn_app_with, PrivateKafka, Process, TestApp};

/// Samples the campaign's outbox backlog every 200 ms until `stop` is set.
async fn sample_backlog(
    app: &TestApp,
    campaign: i64,
    started: Instant,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(Duration, i64)> {
    let mut samples = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let pending = app.admin_get(campaign).await["pending_events"]
            .as_i64()
            .unwrap_or(0);
        samples.push((started.elapsed(), pending));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples
}

/// How long after `fault` the outbox still held more than it ever did before it:
/// the time coupons were relayed late because of the fault.
fn late_window(samples: &[(Duration, i64)], fault: Duration) -> (Duration, i64) {
    let before = samples
        .iter()
        .filter(|(at, _)| *at < fault)
        .map(|(_, pending)| *pending)
        .max()
        .unwrap_or(0);
    let during: Vec<&(Duration, i64)> = samples.iter().filter(|(at, _)| *at >= fault).collect();
    let peak = during.iter().map(|(_, p)| *p).max().unwrap_or(0);
    let last_late = during
        .iter()
        .filter(|(_, pending)| *pending > before)
        .map(|(at, _)| at.saturating_sub(fault))
        .max()
        .unwrap_or(Duration::ZERO);
    (last_late, peak)
}

/// The broker is killed with `kill -9` a moment into a flash burst and restarted 15 s
/// later on its own log. Claims go on answering from Redis meanwhile; afterwards the
/// relay and the persister find the broker again by themselves, and every coupon a
/// shopper was told about is in MySQL exactly once, with no repair and no manual step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_a_burst_and_restarted_loses_no_acknowledged_coupon() {
    let broker = PrivateKafka::start().await;
    let app = spawn_app_with(|s| {
        broker.configure(s);
        // No scheduled reconcile: nothing but the relay and the persister may heal.
        s.reconcile.interval_secs = 0;
    })
    .await;
    let campaign = app.open_campaign(crate::chaos::STOCK).await;
    let broker = tokio::sync::Mutex::new(broker);
    let restarted = Mutex::new(None::<Instant>);
    let (answers, fault) = with_fault(
        app.address.clone(),
        campaign,
        Duration::from_secs(2),
        Duration::from_secs(15),
        async { broker.lock().await.kill(1) },
        async {
            broker.lock().await.restart(1).await;
            *restarted.lock().unwrap() = Some(Instant::now());
        },
    )
    .await;
    let row = judge(&app.db, campaign, &answers, fault).await;
    let drained = restarted.lock().unwrap().expect("restarted").elapsed();
    let name = format!(
        "Kafka broker killed (kill -9) for 15 s under the burst, restarted on its log: every coupon in MySQL {:.0} s after the restart, no repair",
        drained.as_secs_f64()
    );
    print(&name, &row);
    assert_invariants(&name, &row);
    assert_eq!(
        row.errors_in_fault, 0,
        "claims failed while the broker was down"
    );
    let figures = app.admin_get(campaign).await;
    assert_eq!(figures["pending_events"], 0, "{figures}");
    assert_eq!(figures["persisted"], figures["issued"], "{figures}");
    app.stop().await;
}

/// Three brokers, topics of three replicas with two in sync: the leader of the coupon
/// topic's first partition is killed with `kill -9` mid-burst. The controller moves
/// leadership to a replica that has every acknowledged event, the relay's idempotent
/// producer follows it, and nothing is lost, duplicated or oversold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_leader_killed_in_a_three_node_cluster_loses_nothing() {
    let cluster = PrivateKafka::start_cluster().await;
    let app = spawn_app_with(|s| {
        cluster.configure(s);
        s.reconcile.interval_secs = 0;
    })
    .await;
    let campaign = app.open_campaign(crate::chaos::STOCK).await;
    // The service created the topics; its first coupon shows the pipeline runs.
    let topic = app.settings.kafka.issued_topic.clone();
    let leader = cluster.leader_of(&topic, 0).await;
    let cluster = tokio::sync::Mutex::new(cluster);
    let started = Instant::now();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let kill_at = Duration::from_secs(2);
    let burst = async {
        let result = with_fault(
            app.address.clone(),
            campaign,
            kill_at,
            Duration::from_secs(12),
            async { cluster.lock().await.kill(leader) },
            async {},
        )
        .await;
        app.wait_relayed(campaign, Duration::from_secs(60)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    };
    let ((answers, fault), samples) =
        tokio::join!(burst, sample_backlog(&app, campaign, started, &stop));
    let row = judge(&app.db, campaign, &answers, fault).await;
    let (late, peak) = late_window(&samples, fault.0);
    let new_leader = cluster.lock().await.leader_of(&topic, 0).await;
    let name = format!(
        "Kafka partition leader (node {leader} of 3) killed (kill -9) under the burst: node {new_leader} leads; outbox above its pre-fault level for {:.1} s after the kill (peak {peak} pending)",
        late.as_secs_f64()
    );
    print(&name, &row);
    assert_invariants(&name, &row);
    assert_ne!(new_leader, leader, "leadership did not move");
    assert_eq!(row.errors_in_fault, 0, "claims failed while a broker died");
    let figures = app.admin_get(campaign).await;
    assert_eq!(figures["persisted"], figures["issued"], "{figures}");
    app.stop().await;
}

/// The members of `group` that hold at least one partition, as the broker's group
/// coordinator tells them.
async fn group_members(brokers: &str, group: &str) -> usize {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        consumer
            .fetch_group_list(Some(&group), Duration::from_secs(5))
            .map(|list| {
                list.groups()
                    .iter()
                    .filter(|g| g.state() == "Stable")
                    .map(|g| {
                        g.members()
                            .iter()
                            .filter(|m| m.assignment().is_some_and(|a| a.len() > 8))
                            .count()
                    })
                    .sum()
            })
            .unwrap_or(0)
    })
    .await
    .unwrap()
}

/// Waits until `group` is stable with `expected` members holding partitions.
async fn wait_members(brokers: &str, group: &str, expected: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let members = group_members(brokers, group).await;
        if members == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} has {members} member(s) holding partitions, not {expected}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Two `flashcoupon consume` processes share the persister group, one partition each.
/// One is killed with `kill -9` while coupons stream in; after the broker notices
/// (the session timeout) the group rebalances, the survivor takes the dead one's
/// partition from its last committed offset, and MySQL ends with every coupon once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_persisters_in_one_group_the_survivor_takes_over_when_one_is_killed() {
    let total = 3000;
    let app = spawn_app_with(|s| s.persister.enabled = false).await;
    let brokers = app.settings.kafka.brokers.clone();
    let group = app.settings.kafka.persister_group.clone();
    let campaign = app.open_campaign(total).await;
    let consume = || {
        let mut cmd = flashcoupon_command(&app.settings, &["consume"]);
        cmd.env("FLASHCOUPON__PERSISTER__BATCH_SIZE", "20");
        Process::spawn(&mut cmd)
    };
    let mut doomed = consume();
    let _survivor = consume();
    wait_members(&brokers, &group, 2, Duration::from_secs(60)).await;

    let claims = app.claim_all(campaign, "p", total, 100);
    let killer = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = app.db.persisted_count(campaign).await.unwrap();
            if n >= 200 {
                doomed.kill(); // SIGKILL: no commit, no leave-group
                return n;
            }
            assert!(Instant::now() < deadline, "the persisters never wrote");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (statuses, at_kill) = tokio::join!(claims, killer);
    assert!(statuses.iter().all(|s| *s == 201), "a claim failed");
    assert!(
        at_kill < total,
        "killed too late to be mid-stream: {at_kill}"
    );

    // A real rebalance: the group settles with the survivor alone.
    wait_members(&brokers, &group, 1, Duration::from_secs(60)).await;
    app.assert_each_coupon_once(campaign, total, Duration::from_secs(120))
        .await;
    app.stop().await;
}

/// A broker that requires SASL/SCRAM: with a wrong password the service refuses to
/// start, saying that Kafka authentication failed and never printing the password;
/// with the right one the relay and the persister carry coupons into MySQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_logs_in_to_a_sasl_scram_broker_and_a_wrong_password_stops_start_up() {
    let password = "scram-secret-0123";
    let broker = PrivateKafka::start_with_scram("flashcoupon", password).await;

    let mut wrong = crate::helpers::isolated_settings();
    broker.configure(&mut wrong);
    wrong.kafka.sasl_password = secrecy::SecretString::from("not-the-password-42".to_owned());
    crate::helpers::prepare_database(&wrong).await;
    let output = flashcoupon_command(&wrong, &["serve"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "started with a wrong password: {stderr}"
    );
    assert!(
        stderr.contains("Kafka authentication failed"),
        "the error does not name Kafka authentication: {stderr}"
    );
    assert!(
        stderr.contains("flashcoupon") && stderr.contains("SCRAM-SHA-256"),
        "{stderr}"
    );
    for text in [&stderr, &stdout] {
        assert!(
            !text.contains("not-the-password-42"),
            "the password was printed: {text}"
        );
        assert!(!text.contains(password), "the password was printed: {text}");
    }

    let app = spawn_app_with(|s| broker.configure(s)).await;
    let campaign = app.open_campaign(50).await;
    let statuses = app.claim_all(campaign, "s", 50, 10).await;
    assert!(statuses.iter().all(|s| *s == 201));
    assert_eq!(
        app.wait_persisted(campaign, 50, Duration::from_secs(60))
            .await,
        50
    );
    app.stop().await;
}
