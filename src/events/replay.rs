//! `flashcoupon dlt replay`: sends dead letters back to the topic they came from
//! (header `x-original-topic`) once their cause is fixed. Progress is the committed
//! offset of the group `<dlt topic>.replay`, so a message is replayed once; the
//! persister is idempotent, so a replay cut short and run again is harmless, and a
//! message that still fails lands in the DLT again with its attempts counted.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::producer::{EventProducer, MessageHeader};
use crate::config::KafkaSettings;

/// One dead letter as read.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl DeadLetter {
    pub fn original_topic(&self) -> Option<&str> {
        self.headers
            .get("x-original-topic")
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }

    /// Headers of the replayed copy: trace context kept, attempts counted, origin noted.
    fn replay_headers(&self, dlt_topic: &str) -> Vec<MessageHeader> {
        let attempts: u32 = self
            .headers
            .get("x-attempts")
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let mut headers = vec![
            ("x-attempts", (attempts + 1).to_string()),
            (
                "x-replayed-from",
                format!("{dlt_topic}[{}]@{}", self.partition, self.offset),
            ),
        ];
        if let Some(tp) = self.headers.get("traceparent") {
            headers.push(("traceparent", tp.clone()));
        }
        headers
    }
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub read: usize,
    pub replayed: usize,
    /// Dead letters that name no original topic: left in place, reported.
    pub skipped: Vec<(i32, i64, String)>,
}

/// The consumer group that remembers how far the DLT was replayed.
pub fn replay_group(dlt_topic: &str) -> String {
    format!("{dlt_topic}.replay")
}

fn reader(settings: &KafkaSettings, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(super::base_config(settings)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?)
}

/// Reads the dead letters not yet replayed (at most `max`), stopping once the topic
/// has been quiet for `idle`. Blocking: run it off the async threads.
pub fn read_pending(
    settings: &KafkaSettings,
    dlt_topic: &str,
    max: usize,
    idle: Duration,
) -> anyhow::Result<Vec<DeadLetter>> {
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let consumer = reader(settings, &replay_group(dlt_topic))?;
    let mut wanted = TopicPartitionList::new();
    for p in super::inspect::partitions(&consumer, dlt_topic, timeout)? {
        wanted.add_partition(dlt_topic, p);
    }
    if wanted.count() == 0 {
        anyhow::bail!("dead-letter topic {dlt_topic} does not exist");
    }
    // Start where the last replay stopped; from the beginning the first time.
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let mut start = TopicPartitionList::new();
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        start.add_partition_offset(dlt_topic, element.partition(), offset)?;
    }
    consumer.assign(&start)?;
    let mut letters = Vec::new();
    let mut quiet_since = Instant::now();
    while letters.len() < max && quiet_since.elapsed() < idle {
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received?;
        quiet_since = Instant::now();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        letters.push(DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().unwrap_or_default().to_vec(),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    Ok(letters)
}

/// Records that every dead letter up to and including these offsets was handled.
/// Blocking: run it off the async threads.
pub fn commit_progress(
    settings: &KafkaSettings,
    dlt_topic: &str,
    last_offsets: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    if last_offsets.is_empty() {
        return Ok(());
    }
    let consumer = reader(settings, &replay_group(dlt_topic))?;
    let mut list = TopicPartitionList::new();
    for (partition, offset) in last_offsets {
        list.add_partition_offset(dlt_topic, *partition, Offset::Offset(offset + 1))?;
    }
    consumer.commit(&list, CommitMode::Sync)?;
    Ok(())
}

/// Replays the pending dead letters of `dlt_topic`; `dry_run` only reads and
/// reports. `on_letter` sees each letter and where it goes (None: skipped).
pub async fn replay(
    settings: &KafkaSettings,
    dlt_topic: &str,
    dry_run: bool,
    max: usize,
    mut on_letter: impl FnMut(&DeadLetter, Option<&str>),
) -> anyhow::Result<ReplayReport> {
    let letters = {
        let settings = settings.clone();
        let topic = dlt_topic.to_owned();
        tokio::task::spawn_blocking(move || {
            read_pending(&settings, &topic, max, Duration::from_secs(3))
        })
        .await??
    };
    let mut report = ReplayReport {
        read: letters.len(),
        ..ReplayReport::default()
    };
    let mut producers: HashMap<String, EventProducer> = HashMap::new();
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    for letter in &letters {
        let Some(target) = letter.original_topic() else {
            on_letter(letter, None);
            report.skipped.push((
                letter.partition,
                letter.offset,
                "no x-original-topic header".to_owned(),
            ));
            continue;
        };
        on_letter(letter, Some(target));
        if dry_run {
            continue;
        }
        if !producers.contains_key(target) {
            producers.insert(
                target.to_owned(),
                EventProducer::new(settings, target.to_owned())?,
            );
        }
        producers[target]
            .publish_raw(
                &letter.key,
                &letter.payload,
                &letter.replay_headers(dlt_topic),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "replaying {dlt_topic}[{}]@{} to {target}: {e}",
                    letter.partition,
                    letter.offset
                )
            })?;
        report.replayed += 1;
    }
    if !dry_run {
        // Letters without an origin are reported and passed over with the rest.
        for letter in &letters {
            done.entry(letter.partition)
                .and_modify(|o| *o = (*o).max(letter.offset))
                .or_insert(letter.offset);
        }
        let settings = settings.clone();
        let topic = dlt_topic.to_owned();
        tokio::task::spawn_blocking(move || commit_progress(&settings, &topic, &done)).await??;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            partition: 1,
            offset: 41,
            key: b"k".to_vec(),
            payload: b"{}".to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_replayed_copy_counts_the_attempt_keeps_the_trace_and_names_its_origin() {
        let l = letter(&[
            ("x-original-topic", "coupon.issued.v1"),
            ("x-attempts", "2"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert_eq!(l.original_topic(), Some("coupon.issued.v1"));
        let headers = l.replay_headers("coupon.issued.v1.dlt");
        assert!(headers.contains(&("x-attempts", "3".to_owned())));
        assert!(headers.contains(&("x-replayed-from", "coupon.issued.v1.dlt[1]@41".to_owned())));
        assert!(headers.iter().any(|(k, _)| *k == "traceparent"));
    }

    #[test]
    fn a_letter_without_origin_is_not_replayable() {
        assert_eq!(letter(&[]).original_topic(), None);
        assert_eq!(letter(&[("x-original-topic", "")]).original_topic(), None);
    }
}
