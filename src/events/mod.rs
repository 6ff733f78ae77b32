//! Kafka, and the only module that imports rdkafka: the idempotent producer used
//! by the relay, the persister consumer, topic set-up, and the diagnostics behind
//! `flashcoupon kafka ...`. The same code runs against the local single Apache Kafka
//! node and a secured production cluster (SASL, TLS).

pub mod consumer;
pub mod inspect;
pub mod persister;
pub mod persister_gate;
pub mod producer;
pub mod replay;
pub mod sales;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, FutureProducer, Producer, ProducerContext};

use secrecy::ExposeSecret;

use crate::config::KafkaSettings;

pub use persister::run_persister;
pub use producer::{EventProducer, PublishError};

/// Settings shared by every client: where the brokers are, how to authenticate to
/// them, and how long to wait.
pub(crate) fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("security.protocol", &settings.security_protocol)
        .set("socket.timeout.ms", settings.request_timeout_ms.to_string())
        .set(
            "socket.connection.setup.timeout.ms",
            settings.request_timeout_ms.to_string(),
        )
        .set("log_level", "4");
    if !settings.sasl_mechanism.is_empty() {
        config
            .set("sasl.mechanisms", &settings.sasl_mechanism)
            .set("sasl.username", &settings.sasl_username)
            .set("sasl.password", settings.sasl_password.expose_secret());
    }
    if !settings.ssl_ca_location.is_empty() {
        config.set("ssl.ca.location", &settings.ssl_ca_location);
    }
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
    let min_insync = settings.min_insync_replicas.to_string();
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
            .set("min.insync.replicas", &min_insync)
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

/// Keeps the authentication failure librdkafka reports in the background, so the
/// start-up check can name it; other client errors are logged as usual.
#[derive(Default)]
struct AuthWatch {
    failure: std::sync::Mutex<Option<String>>,
}

impl ClientContext for AuthWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_auth_failure(&error) {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        } else {
            tracing::debug!(error = %error, reason, "kafka client error at the start-up check");
        }
    }
}

impl ProducerContext for AuthWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

fn is_auth_failure(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    )
}

/// Start-up check of a secured cluster (`kafka.security_protocol` other than
/// plaintext): the brokers answer metadata with these credentials. A refused login
/// is fatal, since a wrong password does not heal by retrying; brokers that do not
/// answer at all are only logged, since the outbox keeps what is issued meanwhile.
/// The error names the user and the mechanism, never the password.
pub async fn check_access(settings: &KafkaSettings) -> anyhow::Result<()> {
    if settings.security_protocol.eq_ignore_ascii_case("plaintext") {
        return Ok(());
    }
    let producer: BaseProducer<AuthWatch> =
        base_config(settings).create_with_context(AuthWatch::default())?;
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let (producer, fetched) = tokio::task::spawn_blocking(move || {
        // librdkafka reports a refused login through its error callback, served by
        // `poll`, a moment after the metadata request failed: poll, and try again
        // until the login is refused, the brokers answer, or the time is up.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let fetched = producer.client().fetch_metadata(None, left).map(|_| ());
            producer.poll(Duration::from_millis(200));
            let refused = producer
                .context()
                .failure
                .lock()
                .map_or(true, |f| f.is_some());
            if fetched.is_ok() || refused || std::time::Instant::now() >= deadline {
                return (producer, fetched);
            }
        }
    })
    .await?;
    let refused = producer
        .context()
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .or_else(|| match &fetched {
            Err(err) if is_auth_failure(err) => Some(err.to_string()),
            _ => None,
        });
    if let Some(reason) = refused {
        anyhow::bail!(
            "Kafka authentication failed at {} as user '{}' with {} over {}: {reason}",
            settings.brokers,
            settings.sasl_username,
            if settings.sasl_mechanism.is_empty() {
                "no SASL mechanism"
            } else {
                &settings.sasl_mechanism
            },
            settings.security_protocol,
        );
    }
    if let Err(err) = fetched {
        tracing::warn!(error = %err, brokers = %settings.brokers, "kafka did not answer at start-up; continuing");
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
