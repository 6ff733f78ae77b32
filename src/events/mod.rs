//! Kafka, and the only module that imports rdkafka: the idempotent producer used
//! by the relay, the persister consumer, topic set-up, and the diagnostics behind
//! `flashcoupon kafka ...`. Only standard client features, so the same code runs
//! against Apache Kafka in production and the Tansu broker locally.

pub mod consumer;
pub mod inspect;
pub mod persister;
pub mod persister_gate;
pub mod producer;
pub mod replay;
pub mod sales;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};

use crate::config::KafkaSettings;

pub use persister::run_persister;
pub use producer::{EventProducer, PublishError};

/// Settings shared by every client: where the brokers are and how long to wait.
pub(crate) fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("socket.timeout.ms", settings.request_timeout_ms.to_string())
        .set(
            "socket.connection.setup.timeout.ms",
            settings.request_timeout_ms.to_string(),
        )
        .set("log_level", "4");
    // librdkafka's own debug contexts (e.g. "consumer,fetch"), for diagnosing a broker.
    if let Ok(contexts) = std::env::var("FLASHCOUPON_KAFKA_DEBUG") {
        config.set("debug", contexts).set("log_level", "7");
    }
    config
}

/// Creates the coupon topics if they are missing (local stack and tests; switched
/// off by `kafka.create_topics = false` where a platform team owns topics).
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings).create()?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_millis(settings.request_timeout_ms)));
    let results = tokio::time::timeout(
        Duration::from_millis(settings.request_timeout_ms * 2),
        admin.create_topics(new_topics.iter(), &options),
    )
    .await
    .map_err(|_| anyhow::anyhow!("creating topics timed out at {}", settings.brokers))??;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Asks the brokers for metadata within the timeout: readiness of Kafka.
pub async fn ping(producer: &FutureProducer, timeout: Duration) -> Result<usize, String> {
    let client = producer.clone();
    tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(None, timeout)
            .map(|m| m.brokers().len())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
