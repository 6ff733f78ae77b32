//! The at-least-once batch consumer shared by the coupon persister and the sales
//! ingestion. One discipline for both (vector's Kafka source is the model):
//! - offsets are stored (`enable.auto.offset.store=false`) only after the batch's
//!   MySQL transaction committed and its rejects reached the dead-letter topic;
//! - a whole-dependency failure (MySQL down) pauses the batch with jittered
//!   backoff instead of sending every message to the DLT;
//! - a message the handler rejects for a reason of its own (not the whole
//!   dependency) goes to `<topic>.retry` with a due time: a second consumer of
//!   that topic tries it again after 1 s, 2 s, 10 s (`kafka.retry_delays_ms`, as
//!   minimums); then, or at once for a permanent reject (malformed, conflicting),
//!   it goes to the DLT with the error and the attempts in headers, and the
//!   consumer keeps going.

use crate::domain::retry_topic_of;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::events::producer::{EventProducer, MessageHeader};
use crate::persistence::DbError;
use crate::telemetry::metrics;

/// A message a handler did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Index in the payloads handed to the handler.
    pub index: usize,
    pub reason: String,
    /// Retrying cannot help (malformed, conflicting): straight to the DLT.
    pub permanent: bool,
}

impl Reject {
    pub fn permanent(index: usize, reason: impl Into<String>) -> Self {
        Self {
            index,
            reason: reason.into(),
            permanent: true,
        }
    }

    pub fn retryable(index: usize, reason: impl Into<String>) -> Self {
        Self {
            index,
            reason: reason.into(),
            permanent: false,
        }
    }
}

/// Writes one batch of payloads to MySQL.
pub trait BatchHandler: Send + Sync {
    /// Writes what it can in one transaction and returns the messages it did not
    /// write. `Err` means nothing was written: a transient error is retried, any
    /// other error splits the batch and each message that still fails is a
    /// retryable reject.
    fn handle(
        &self,
        payloads: &[&[u8]],
    ) -> impl Future<Output = Result<Vec<Reject>, DbError>> + Send;
}

/// What a consumer reads and where its rejects go.
pub struct ConsumerSpec {
    pub name: &'static str,
    pub topic: String,
    pub group: String,
    pub dlt_topic: String,
    pub batch_size: usize,
    pub batch_wait: Duration,
    /// Waits before each retry; empty: rejects go straight to the DLT.
    pub retry_delays: Vec<Duration>,
}

/// The consumer group that reads `<topic>.retry` for `group`.
pub fn retry_group_of(group: &str) -> String {
    format!("{group}.retry")
}

impl ConsumerSpec {
    pub fn retry_topic(&self) -> String {
        retry_topic_of(&self.topic)
    }
}

/// Which topic a consumer loop reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The topic itself.
    Main,
    /// `<topic>.retry`, each message held until its `x-retry-at`.
    Retry,
}

/// Where rejected messages go.
struct Sinks {
    dlt: EventProducer,
    retry: Option<EventProducer>,
    delays: Vec<Duration>,
}

fn build_consumer(
    kafka: &KafkaSettings,
    topic: &str,
    group: &str,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = super::base_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", kafka.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (kafka.session_timeout_ms / 3).to_string(),
        )
        .set("max.poll.interval.ms", "300000")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Runs until `shutdown` fires; then finishes the batch in hand and commits. With
/// retry delays, a second loop consumes `<topic>.retry` alongside.
pub async fn run_consumer<H: BatchHandler>(
    kafka: KafkaSettings,
    spec: ConsumerSpec,
    handler: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sinks = Sinks {
        dlt: EventProducer::new(&kafka, spec.dlt_topic.clone())?,
        retry: if spec.retry_delays.is_empty() {
            None
        } else {
            Some(EventProducer::new(&kafka, spec.retry_topic())?)
        },
        delays: spec.retry_delays.clone(),
    };
    metrics::get().declare_dlt(&spec.dlt_topic);
    let main = consume(&kafka, &spec, Stage::Main, &handler, &sinks, &shutdown);
    if sinks.retry.is_none() {
        return main.await;
    }
    let retries = consume(&kafka, &spec, Stage::Retry, &handler, &sinks, &shutdown);
    let (main, retries) = tokio::join!(main, retries);
    main.and(retries)
}

/// One consumer loop over the main or the retry topic.
async fn consume<H: BatchHandler>(
    kafka: &KafkaSettings,
    spec: &ConsumerSpec,
    stage: Stage,
    handler: &H,
    sinks: &Sinks,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (topic, group) = match stage {
        Stage::Main => (spec.topic.clone(), spec.group.clone()),
        Stage::Retry => (spec.retry_topic(), retry_group_of(&spec.group)),
    };
    let consumer = Arc::new(build_consumer(kafka, &topic, &group)?);
    let lag_sampler = tokio::spawn(sample_lag(
        consumer.clone(),
        kafka.clone(),
        group.clone(),
        shutdown.clone(),
    ));
    let name = match stage {
        Stage::Main => spec.name,
        Stage::Retry => "retry",
    };
    tracing::info!(consumer = spec.name, %topic, %group, "consumer started");
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let first = match first {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(consumer = name, error = %err, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + spec.batch_wait;
        while batch.len() < spec.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message),
                Ok(Err(err)) => {
                    tracing::warn!(consumer = name, error = %err, "kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        tracing::debug!(consumer = name, messages = batch.len(), "batch received");
        if stage == Stage::Retry && !wait_until_due(&batch, shutdown).await {
            break;
        }
        if !process_batch(spec.name, &consumer, sinks, handler, &batch, shutdown).await {
            // Shutdown during a retry: the batch stays unstored and is redelivered.
            break;
        }
    }
    let _ = lag_sampler.await;
    close_consumer(
        spec.name,
        consumer,
        Duration::from_millis(u64::from(kafka.session_timeout_ms) * 2),
    )
    .await;
    tracing::info!(consumer = name, "consumer stopped");
    Ok(())
}

/// Commits the stored offsets and leaves the group, off the async threads and within
/// `bound`. librdkafka's close waits for the group coordinator without limit (and
/// rdkafka's `Drop` runs it), so a broker that never answers the leave would hang
/// the caller for good: past the bound the close is abandoned on its own thread.
async fn close_consumer(name: &'static str, consumer: Arc<StreamConsumer>, bound: Duration) {
    let closing = tokio::task::spawn_blocking(move || {
        if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(consumer = name, error = %err, "final commit had nothing to commit");
        }
        drop(consumer);
    });
    if tokio::time::timeout(bound, closing).await.is_err() {
        tracing::warn!(
            consumer = name,
            bound_ms = bound.as_millis() as u64,
            "kafka consumer did not leave its group in time; abandoning the close"
        );
    }
}

/// Writes one batch and stores its offsets. False if shutdown interrupted it.
async fn process_batch<H: BatchHandler>(
    name: &'static str,
    consumer: &StreamConsumer,
    sinks: &Sinks,
    handler: &H,
    batch: &[BorrowedMessage<'_>],
    shutdown: &CancellationToken,
) -> bool {
    let payloads: Vec<&[u8]> = batch
        .iter()
        .map(|m| m.payload().unwrap_or_default())
        .collect();
    // One span per message, a child of the trace its producer sent along (the
    // claim's, for coupons); open while the batch is written.
    let _message_spans: Vec<tracing::Span> = batch.iter().map(|m| message_span(name, m)).collect();
    let rejects = match write_retrying(name, handler, &payloads, shutdown).await {
        None => return false,
        Some(Ok(rejects)) => rejects,
        Some(Err(err)) => {
            // Not transient: the batch as a whole cannot be written. Write the
            // messages one by one so one bad message cannot hold back the others.
            tracing::error!(consumer = name, error = %err, "batch rejected, writing messages one by one");
            let mut rejects = Vec::new();
            for (index, payload) in payloads.iter().enumerate() {
                match write_retrying(name, handler, std::slice::from_ref(payload), shutdown).await {
                    None => return false,
                    Some(Ok(single)) => {
                        rejects.extend(single.into_iter().map(|reject| Reject { index, ..reject }))
                    }
                    Some(Err(err)) => rejects.push(Reject::retryable(index, err.to_string())),
                }
            }
            rejects
        }
    };
    for reject in &rejects {
        if let Some(message) = batch.get(reject.index) {
            if !route_reject(name, sinks, message, reject, shutdown).await {
                return false;
            }
        }
    }
    store_offsets(name, consumer, batch);
    tracing::debug!(
        consumer = name,
        messages = batch.len(),
        rejected = rejects.len(),
        "batch stored"
    );
    true
}

/// The span of one consumed message, continuing the trace of its `traceparent` header.
fn message_span(name: &'static str, message: &BorrowedMessage<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        "kafka.consume",
        otel.name = %format!("{name} {}", message.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = message.topic(),
        messaging.kafka.partition = message.partition(),
        messaging.kafka.offset = message.offset(),
    );
    crate::telemetry::trace::continue_trace(&span, header(message, "traceparent").as_deref());
    span
}

/// The value of the header `key`, if the message has it.
fn header(message: &BorrowedMessage<'_>, key: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Calls the handler, retrying transient failures with jittered backoff until
/// shutdown (None).
async fn write_retrying<H: BatchHandler>(
    name: &'static str,
    handler: &H,
    payloads: &[&[u8]],
    shutdown: &CancellationToken,
) -> Option<Result<Vec<Reject>, DbError>> {
    let write = || handler.handle(payloads);
    tokio::select! {
        _ = shutdown.cancelled() => None,
        result = write
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(10))
                    .with_jitter()
                    .without_max_times(),
            )
            .when(DbError::is_transient)
            .notify(|err, wait| {
                tracing::warn!(consumer = name, error = %err, retry_in = ?wait, "MySQL unavailable, pausing consumption")
            }) => Some(result),
    }
}

/// Failed attempts a message has behind it (`x-attempts`, 0 for a fresh one).
fn failed_attempts(message: &BorrowedMessage<'_>) -> usize {
    header(message, "x-attempts")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// The retry topic while attempts remain and the reject is not permanent, else the
/// DLT; headers carry the error, the attempts, the origin and the trace.
async fn route_reject(
    name: &'static str,
    sinks: &Sinks,
    message: &BorrowedMessage<'_>,
    reject: &Reject,
    shutdown: &CancellationToken,
) -> bool {
    let failures = failed_attempts(message) + 1;
    let origin = |key: &str, fallback: String| header(message, key).unwrap_or(fallback);
    let mut headers: Vec<MessageHeader> = vec![
        ("x-error", reject.reason.clone()),
        (
            "x-original-topic",
            origin("x-original-topic", message.topic().to_owned()),
        ),
        (
            "x-original-partition",
            origin("x-original-partition", message.partition().to_string()),
        ),
        (
            "x-original-offset",
            origin("x-original-offset", message.offset().to_string()),
        ),
        ("x-attempts", failures.to_string()),
    ];
    if let Some(traceparent) = header(message, "traceparent") {
        headers.push(("traceparent", traceparent));
    }
    let retry = match (&sinks.retry, reject.permanent) {
        (Some(retry), false) => sinks.delays.get(failures - 1).map(|delay| (retry, *delay)),
        _ => None,
    };
    let target = match retry {
        Some((retry, delay)) => {
            let due = chrono::Utc::now() + delay;
            headers.push(("x-retry-at", due.timestamp_millis().to_string()));
            retry
        }
        None => &sinks.dlt,
    };
    if !forward(name, target, message, &headers, shutdown).await {
        return false;
    }
    if retry.is_some() {
        tracing::warn!(
            consumer = name,
            error = %reject.reason,
            attempt = failures,
            partition = message.partition(),
            offset = message.offset(),
            retry_topic = target.topic(),
            "message will be retried"
        );
    } else {
        tracing::warn!(
            consumer = name,
            error = %reject.reason,
            attempts = failures,
            partition = message.partition(),
            offset = message.offset(),
            dlt = target.topic(),
            "message sent to the dead-letter topic"
        );
        metrics::get().record_dlt(target.topic());
    }
    true
}

/// Publishes a copy of the message; retries until the broker takes it (or
/// shutdown), so nothing is dropped.
async fn forward(
    name: &'static str,
    target: &EventProducer,
    message: &BorrowedMessage<'_>,
    headers: &[MessageHeader],
    shutdown: &CancellationToken,
) -> bool {
    let key = message.key().unwrap_or_default();
    let payload = message.payload().unwrap_or_default();
    loop {
        match target.publish_raw(key, payload, headers).await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(consumer = name, topic = target.topic(), error = %err, "forwarding a rejected message failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Holds a batch of the retry topic until its latest `x-retry-at`. False on shutdown.
async fn wait_until_due(batch: &[BorrowedMessage<'_>], shutdown: &CancellationToken) -> bool {
    let due_ms = batch
        .iter()
        .filter_map(|m| header(m, "x-retry-at")?.parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    let wait_ms = due_ms - chrono::Utc::now().timestamp_millis();
    if wait_ms <= 0 {
        return true;
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => true,
    }
}

/// Stores, per partition, the offset after the highest message of the batch.
fn store_offsets(name: &'static str, consumer: &StreamConsumer, batch: &[BorrowedMessage<'_>]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for message in batch {
        let entry = next
            .entry((message.topic(), message.partition()))
            .or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        if let Err(err) = list.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(consumer = name, error = %err, "bad offset");
        }
    }
    if let Err(err) = consumer.store_offsets(&list) {
        // Partitions revoked by a rebalance: the new owner re-reads them, and the
        // handlers are idempotent.
        tracing::warn!(consumer = name, error = %err, "storing offsets failed");
    }
}

/// Every 10 s: per assigned partition, high watermark minus our position, into
/// `kafka_consumer_lag` (librdkafka calls block, so they run off the async threads).
async fn sample_lag(
    consumer: Arc<StreamConsumer>,
    kafka: KafkaSettings,
    group: String,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let consumer = consumer.clone();
        let group = group.clone();
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let sampled =
            tokio::task::spawn_blocking(move || -> Result<(), rdkafka::error::KafkaError> {
                let position = consumer.position()?;
                for element in position.elements() {
                    let Offset::Offset(at) = element.offset() else {
                        continue;
                    };
                    let (_, high) =
                        consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
                    metrics::get().set_consumer_lag(
                        element.topic(),
                        element.partition(),
                        &group,
                        (high - at).max(0),
                    );
                }
                Ok(())
            })
            .await;
        if let Ok(Err(err)) = sampled {
            tracing::debug!(error = %err, "lag sample failed");
        }
    }
}
