//! The outbox relay, run by every instance: drains each campaign's Redis outbox
//! stream to `coupon.issued.v1` and acknowledges (XACK + XDEL) an entry only after
//! the broker confirmed its delivery. Entries another instance left pending (it
//! died) are taken over with XAUTOCLAIM. In-flight work is bounded by the batch
//! size; while the broker is down the outbox simply grows and drains later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaSettings, RelaySettings};
use crate::domain::{CampaignId, CouponIssuedEvent};
use crate::events::{EventProducer, PublishError};
use crate::store::{OutboxEntry, RedisStore};
use crate::telemetry::metrics;

pub struct Relay {
    store: RedisStore,
    kafka: KafkaSettings,
    producer: EventProducer,
    settings: RelaySettings,
    /// This instance's consumer name in the outbox consumer groups.
    consumer: String,
    /// Delivery rounds in a row that failed; the producer is rebuilt after a few.
    failed_rounds: u32,
    /// Last outbox length exported per campaign: the gauge is written only when it
    /// changes, so an idle pass over 1,000 campaigns records nothing.
    exported_pending: HashMap<CampaignId, i64>,
}

/// Failed delivery rounds after which the producer is replaced by a fresh one (new
/// producer id): an idempotent producer whose broker lost its state (restart,
/// failover) can otherwise keep timing out on stale sequence numbers.
const REBUILD_AFTER_FAILED_ROUNDS: u32 = 2;

impl Relay {
    pub fn new(
        store: RedisStore,
        kafka: KafkaSettings,
        settings: RelaySettings,
    ) -> anyhow::Result<Self> {
        let producer = EventProducer::new(&kafka, kafka.issued_topic.clone())?;
        Ok(Self {
            store,
            kafka,
            producer,
            settings,
            consumer: format!("relay-{}", uuid::Uuid::new_v4()),
            failed_rounds: 0,
            exported_pending: HashMap::new(),
        })
    }

    /// Runs until `shutdown`; then finishes the batch in hand and flushes the producer.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(consumer = %self.consumer, topic = %self.kafka.issued_topic, "relay started");
        let mut campaigns: Vec<CampaignId> = Vec::new();
        let mut campaigns_read_at: Option<Instant> = None;
        let mut claimed_at = Instant::now();
        let mut failures: u32 = 0;
        // Idle passes in a row: the pause between them doubles up to 8 x idle_ms.
        let mut idle_passes: u32 = 0;
        // Entries of our own that failed delivery and wait to be read again.
        let mut own_pending = true;
        while !shutdown.is_cancelled() {
            if campaigns_read_at.is_none_or(|t| {
                t.elapsed() >= Duration::from_millis(self.settings.campaigns_refresh_ms)
            }) {
                match self.store.armed_campaigns().await {
                    Ok(ids) => campaigns = ids,
                    Err(err) => tracing::warn!(error = %err, "relay: cannot list campaigns"),
                }
                campaigns_read_at = Some(Instant::now());
            }
            let claim_now =
                claimed_at.elapsed() >= Duration::from_millis(self.settings.claim_idle_ms / 2);
            if claim_now {
                claimed_at = Instant::now();
            }
            let (moved, failed) = self.pass(&campaigns, own_pending, claim_now).await;
            own_pending = failed;
            let pause = if failed {
                failures = failures.saturating_add(1);
                Duration::from_millis((100u64 << failures.min(6)).min(5_000))
            } else {
                failures = 0;
                if moved == 0 {
                    idle_passes = idle_passes.saturating_add(1);
                    idle_pause(self.settings.idle_ms, idle_passes)
                } else {
                    idle_passes = 0;
                    Duration::ZERO
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        if let Err(err) = self.producer.flush(Duration::from_secs(5)) {
            tracing::warn!(error = %err, "relay: flush on shutdown incomplete; entries stay in the outbox");
        }
        tracing::info!("relay stopped");
    }

    /// One pass over every campaign with work. Returns (entries delivered, any failure).
    async fn pass(
        &mut self,
        campaigns: &[CampaignId],
        own_pending: bool,
        claim: bool,
    ) -> (usize, bool) {
        let lengths = match self.store.outbox_lengths(campaigns).await {
            Ok(lengths) => lengths,
            Err(err) => {
                tracing::warn!(error = %err, "relay: cannot read outbox lengths");
                return (0, true);
            }
        };
        let mut moved = 0;
        let mut failed = false;
        for (&id, &length) in campaigns.iter().zip(&lengths) {
            if self.exported_pending.insert(id, length) != Some(length) {
                metrics::get().set_outbox_pending(id, length);
            }
            if length == 0 {
                continue;
            }
            match self.drain_once(id, own_pending, claim).await {
                Ok(n) => moved += n,
                Err(()) => failed = true,
            }
        }
        (moved, failed)
    }

    /// Reads one batch of a campaign's outbox and delivers it.
    async fn drain_once(
        &mut self,
        id: CampaignId,
        own_pending: bool,
        claim: bool,
    ) -> Result<usize, ()> {
        let batch = self.settings.batch_size;
        let mut entries = Vec::new();
        if claim {
            let idle = Duration::from_millis(self.settings.claim_idle_ms);
            match self
                .store
                .claim_stale(id, &self.consumer, idle, batch)
                .await
            {
                Ok(claimed) if !claimed.is_empty() => {
                    tracing::warn!(
                        campaign_id = id,
                        count = claimed.len(),
                        "relay: claimed entries left by another instance"
                    );
                    entries = claimed;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "relay: XAUTOCLAIM failed"),
            }
        }
        if entries.is_empty() && own_pending {
            entries = self
                .store
                .read_outbox(id, &self.consumer, batch, true)
                .await
                .map_err(|err| tracing::warn!(error = %err, "relay: reading own pending failed"))?;
        }
        if entries.is_empty() {
            entries = self
                .store
                .read_outbox(id, &self.consumer, batch, false)
                .await
                .map_err(|err| tracing::warn!(error = %err, "relay: XREADGROUP failed"))?;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        self.deliver(id, entries).await
    }

    /// Publishes entries concurrently; acknowledges the delivered ones.
    async fn deliver(&mut self, id: CampaignId, entries: Vec<OutboxEntry>) -> Result<usize, ()> {
        let producer = &self.producer;
        let results = join_all(entries.iter().map(|entry| async move {
            let event = to_event(entry);
            producer.publish_issued(&event, &entry.traceparent).await
        }))
        .await;
        let mut delivered = Vec::with_capacity(entries.len());
        let mut fatal = None;
        let mut retryable = None;
        let now = Utc::now();
        for (entry, result) in entries.iter().zip(results) {
            match result {
                Ok(()) => {
                    let age = (now - entry.issued_at).to_std().unwrap_or_default();
                    metrics::get().record_relay_delivery(age);
                    delivered.push(entry.stream_id.clone());
                }
                Err(PublishError::Fatal(e)) => fatal = Some(e),
                Err(PublishError::Retryable(e)) => retryable = Some(e),
            }
        }
        if let Err(err) = self.store.ack_outbox(id, &delivered).await {
            // Delivered but not acknowledged: sent again later, and the persister's
            // unique event_id makes the duplicate a no-op.
            tracing::warn!(error = %err, campaign_id = id, "relay: XACK failed");
            return Err(());
        }
        if let Some(err) = fatal {
            tracing::error!(error = %err, "relay: producer failed fatally, rebuilding it");
            self.rebuild_producer();
            return Err(());
        }
        if let Some(err) = retryable {
            self.failed_rounds += 1;
            tracing::warn!(error = %err, campaign_id = id, undelivered = entries.len() - delivered.len(), failed_rounds = self.failed_rounds, "relay: delivery failed, will retry");
            if self.failed_rounds >= REBUILD_AFTER_FAILED_ROUNDS {
                self.rebuild_producer();
            }
            return Err(());
        }
        self.failed_rounds = 0;
        Ok(delivered.len())
    }

    fn rebuild_producer(&mut self) {
        match EventProducer::new(&self.kafka, self.kafka.issued_topic.clone()) {
            Ok(producer) => {
                // Dropping the old one purges its (already failed) queue, bounded by 500 ms.
                self.producer = producer;
                self.failed_rounds = 0;
                tracing::warn!("relay: producer rebuilt");
            }
            Err(e) => tracing::error!(error = %e, "relay: cannot rebuild producer"),
        }
    }
}

/// Pause after the `idle_passes`-th pass in a row that found nothing: `idle_ms`,
/// doubling up to 8 x `idle_ms`, so a quiet relay polls less and the first coupon
/// after a lull still leaves within a few hundred milliseconds.
fn idle_pause(idle_ms: u64, idle_passes: u32) -> Duration {
    Duration::from_millis(idle_ms << idle_passes.saturating_sub(1).min(3))
}

/// The contract payload of `coupon.issued.v1` for one outbox entry.
pub fn to_event(entry: &OutboxEntry) -> CouponIssuedEvent {
    CouponIssuedEvent {
        event_id: entry.event_id.clone(),
        event_type: CouponIssuedEvent::EVENT_TYPE.to_owned(),
        schema_version: CouponIssuedEvent::SCHEMA_VERSION,
        occurred_at: entry.issued_at,
        campaign_id: entry.campaign_id,
        user_id: entry.user_id.clone(),
        coupon_code: entry.coupon_code.clone(),
        sequence: entry.sequence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_pause_doubles_from_idle_ms_up_to_eight_times_it() {
        let pauses: Vec<u64> = (1..=6)
            .map(|n| idle_pause(20, n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 160, 160]);
    }
}
