//! Kafka diagnostics for on-call, behind `flashcoupon kafka topics|lag|tail`: what
//! kcat or the Kafka CLI would show, read with the service's own settings and
//! credentials, and in the persister group's terms (lag per partition).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;

/// Topic name and partition count of every topic on the cluster.
pub fn topics(settings: &KafkaSettings) -> anyhow::Result<Vec<(String, usize)>> {
    let producer: FutureProducer = super::base_config(settings).create()?;
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let metadata = producer_metadata(&producer, timeout)?;
    let mut topics: Vec<(String, usize)> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect();
    topics.sort();
    Ok(topics)
}

fn producer_metadata(
    producer: &FutureProducer,
    timeout: Duration,
) -> anyhow::Result<rdkafka::metadata::Metadata> {
    use rdkafka::producer::Producer;
    Ok(producer.client().fetch_metadata(None, timeout)?)
}

/// The partition ids of `topic` (none if the topic does not exist).
pub(crate) fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// One partition's committed offset, high watermark and lag for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    pub committed: Option<i64>,
    pub high_watermark: i64,
    pub lag: i64,
}

/// Lag of `group` on `topic`, partition by partition.
pub fn lag(
    settings: &KafkaSettings,
    topic: &str,
    group: &str,
) -> anyhow::Result<Vec<PartitionLag>> {
    let consumer: BaseConsumer = super::base_config(settings)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let partitions = partitions(&consumer, topic, timeout)?;
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    let mut out = Vec::new();
    for p in partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let committed = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let lag = (high - committed.unwrap_or(0)).max(0);
        out.push(PartitionLag {
            partition: p,
            committed,
            high_watermark: high,
            lag,
        });
    }
    Ok(out)
}

/// A message as read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub payload: String,
}

/// Reads up to `count` messages of `topic` from the beginning, giving up after `wait`.
pub fn read(
    settings: &KafkaSettings,
    topic: &str,
    count: usize,
    wait: Duration,
) -> anyhow::Result<Vec<ReadMessage>> {
    // Assigned, not subscribed: a reader joins no group, so there is no rebalance
    // to wait for and no leave that a broker could leave hanging on close.
    let consumer: BaseConsumer = super::base_config(settings)
        .set("group.id", "flashcoupon-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let mut assignment = TopicPartitionList::new();
    for p in partitions(&consumer, topic, timeout)? {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + wait;
    let mut out = Vec::new();
    while out.len() < count && std::time::Instant::now() < deadline {
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received?;
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        out.push(ReadMessage {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: text(message.key()),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), text(h.value)))
                        .collect()
                })
                .unwrap_or_default(),
            payload: text(message.payload()),
        });
    }
    Ok(out)
}

/// Prints up to `count` messages of `topic` from the beginning, with headers.
pub fn tail(
    settings: &KafkaSettings,
    topic: &str,
    count: usize,
    wait: Duration,
) -> anyhow::Result<usize> {
    let messages = read(settings, topic, count, wait)?;
    for m in &messages {
        let headers: Vec<String> = m.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{}[{}]@{} key={} headers=[{}] {}",
            m.topic,
            m.partition,
            m.offset,
            m.key,
            headers.join(", "),
            m.payload
        );
    }
    Ok(messages.len())
}
