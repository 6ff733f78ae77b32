//! Whether the persister has stored every coupon event published so far. A campaign
//! that Redis lost entirely is re-armed from MySQL; coupons already relayed to Kafka
//! but not yet written are not in MySQL, so re-arming before they land would count
//! them as stock again and let their shoppers claim twice. The gate takes each
//! partition's high watermark of `coupon.issued.v1` (and of its retry topic) when the
//! loss is found, and opens once the persister's committed offsets reach them.

use std::time::Duration;

use tokio::time::Instant;

use super::consumer::retry_group_of;
use super::inspect::lag;
use crate::config::KafkaSettings;
use crate::domain::retry_topic_of;

#[derive(Clone)]
pub struct PersisterGate {
    kafka: KafkaSettings,
    /// (topic, consumer group) pairs the persister reads.
    streams: Vec<(String, String)>,
    /// How long one wait lasts before it gives up (the caller tries again later).
    patience: Duration,
}

/// A partition's high watermark the persister must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Which offset of each partition to read.
#[derive(Debug, Clone, Copy)]
enum Offset {
    /// The next offset to be written: everything published so far lies below it.
    HighWatermark,
    /// The persister group's committed offset (0 before its first commit).
    Committed,
}

impl PersisterGate {
    pub fn new(kafka: &KafkaSettings, patience: Duration) -> Self {
        let group = kafka.persister_group.clone();
        let mut streams = vec![(kafka.issued_topic.clone(), group.clone())];
        if !kafka.retry_delays().is_empty() {
            streams.push((retry_topic_of(&kafka.issued_topic), retry_group_of(&group)));
        }
        Self {
            kafka: kafka.clone(),
            streams,
            patience,
        }
    }

    /// Returns once the persister has committed every event published before this
    /// call; an error names the partitions still behind when patience ran out, or
    /// the Kafka failure that kept it from knowing.
    pub async fn wait_until_caught_up(&self) -> anyhow::Result<()> {
        let marks = self.read(Offset::HighWatermark).await?;
        let deadline = Instant::now() + self.patience;
        loop {
            let behind = self.behind(&marks).await?;
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = behind
                    .iter()
                    .map(|(m, at)| {
                        format!("{}[{}] at {} of {}", m.topic, m.partition, at, m.offset)
                    })
                    .collect();
                anyhow::bail!(
                    "the persister has not yet stored the coupon events published before \
                     the re-arm (after {} s: {})",
                    self.patience.as_secs(),
                    list.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The marks not reached yet, with the committed offset of each.
    async fn behind(&self, marks: &[Mark]) -> anyhow::Result<Vec<(Mark, i64)>> {
        Ok(not_reached(marks, &self.read(Offset::Committed).await?))
    }

    /// One offset per partition of every stream, read off the async threads
    /// (librdkafka's calls block, each within `kafka.request_timeout_ms`).
    async fn read(&self, which: Offset) -> anyhow::Result<Vec<Mark>> {
        let kafka = self.kafka.clone();
        let streams = self.streams.clone();
        tokio::task::spawn_blocking(move || {
            let mut marks = Vec::new();
            for (topic, group) in &streams {
                for p in lag(&kafka, topic, group)? {
                    marks.push(Mark {
                        topic: topic.clone(),
                        partition: p.partition,
                        offset: match which {
                            Offset::HighWatermark => p.high_watermark,
                            Offset::Committed => p.committed.unwrap_or(0),
                        },
                    });
                }
            }
            Ok(marks)
        })
        .await?
    }
}

/// The marks whose partition's committed offset is below them (a partition with no
/// commit is at 0), each with that offset.
fn not_reached(marks: &[Mark], committed: &[Mark]) -> Vec<(Mark, i64)> {
    marks
        .iter()
        .filter_map(|m| {
            let at = committed
                .iter()
                .find(|c| c.topic == m.topic && c.partition == m.partition)
                .map_or(0, |c| c.offset);
            (at < m.offset).then(|| (m.clone(), at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> Mark {
        Mark {
            topic: topic.to_owned(),
            partition,
            offset,
        }
    }

    #[test]
    fn a_mark_is_reached_when_the_committed_offset_is_at_or_past_it() {
        let marks = [
            at("t", 0, 5),
            at("t", 1, 3),
            at("t.retry", 0, 2),
            at("t", 2, 0),
        ];
        let committed = [at("t", 0, 5), at("t", 1, 2), at("t", 2, 0)];
        // t[1] is one behind; t.retry[0] has no commit at all; t[2] was empty.
        assert_eq!(
            not_reached(&marks, &committed),
            vec![(at("t", 1, 3), 2), (at("t.retry", 0, 2), 0)]
        );
        let caught_up = [at("t", 0, 9), at("t", 1, 3), at("t.retry", 0, 2)];
        assert!(not_reached(&marks, &caught_up).is_empty());
    }
}
