//! The outbox relay, run by every instance: drains each campaign's Redis outbox
//! stream to `coupon.issued.v1` and acknowledges (XACK + XDEL) an entry only after
//! the broker confirmed its delivery. Entries another instance left pending (it
//! died) are taken over with XAUTOCLAIM; entries of its own that failed delivery
//! (broker down) are read again from its pending list, a batch per pass until none
//! are left, before the next takeover round would find them. A few batches are on
//! the wire at once (the next is read while the broker confirms the last), so
//! in-flight work is bounded by batch size x `BATCHES_IN_FLIGHT`; while the broker
//! is down the outbox simply grows and drains later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
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
        let producer = EventProducer::for_relay(&kafka, kafka.issued_topic.clone())?;
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
        // The last takeover came back full: look again next pass.
        let mut claim_left = false;
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
            let claim_now = claim_left
                || claimed_at.elapsed() >= Duration::from_millis(self.settings.claim_idle_ms / 2);
            if claim_now {
                claimed_at = Instant::now();
            }
            let pass = self
                .pass(&campaigns, own_pending, claim_now, &shutdown)
                .await;
            // Read our own pending entries again while a delivery failed, and while
            // the last read of them came back full: an outage can leave many batches
            // of them, and XAUTOCLAIM would otherwise take one batch per claim round.
            own_pending = pass.failed || pass.own_pending_left;
            claim_left = claim_now && !pass.failed && pass.claimed_left;
            let pause = if pass.failed {
                failures = failures.saturating_add(1);
                Duration::from_millis((100u64 << failures.min(6)).min(5_000))
            } else {
                failures = 0;
                if pass.moved == 0 {
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

    /// One pass over every campaign with work, cut short by `shutdown` (a broker that
    /// is down costs each campaign its delivery timeout).
    async fn pass(
        &mut self,
        campaigns: &[CampaignId],
        own_pending: bool,
        claim: bool,
        shutdown: &CancellationToken,
    ) -> Pass {
        let mut pass = Pass::default();
        let lengths = match self.store.outbox_lengths(campaigns).await {
            Ok(lengths) => lengths,
            Err(err) => {
                tracing::warn!(error = %err, "relay: cannot read outbox lengths");
                pass.failed = true;
                return pass;
            }
        };
        for (&id, &length) in campaigns.iter().zip(&lengths) {
            if self.exported_pending.insert(id, length) != Some(length) {
                metrics::get().set_outbox_pending(id, length);
            }
            if length == 0 {
                continue;
            }
            if shutdown.is_cancelled() {
                break;
            }
            match self.drain_once(id, own_pending, claim).await {
                Ok(turn) => {
                    pass.moved += turn.delivered;
                    pass.own_pending_left |= turn.own_pending_left;
                    pass.claimed_left |= turn.claimed_left;
                }
                Err(()) => pass.failed = true,
            }
        }
        pass
    }

    /// Drains a campaign's outbox for one turn: reads a batch, queues it to the
    /// broker and reads the next while the broker confirms the earlier ones (up to
    /// `BATCHES_IN_FLIGHT` on the wire, `BATCHES_PER_TURN` in all, so one busy
    /// campaign cannot starve the others). Each batch is acknowledged in Redis once
    /// its own deliveries are confirmed.
    async fn drain_once(
        &mut self,
        id: CampaignId,
        own_pending: bool,
        claim: bool,
    ) -> Result<Turn, ()> {
        let batch = self.settings.batch_size;
        let (first, source) = self.first_batch(id, own_pending, claim).await?;
        if first.is_empty() {
            return Ok(Turn::default());
        }
        let full = first.len() == batch;
        let own_pending_left = full && source == Source::OwnPending;
        let claimed_left = full && source == Source::Claimed;
        let outcome = {
            let (store, producer) = (&self.store, &self.producer);
            let mut more = full;
            let mut read = 1;
            let mut in_flight = FuturesUnordered::new();
            let queued = deliver_batch(store, producer, id, first).await;
            in_flight.push(queued);
            let mut outcome = Delivered::default();
            loop {
                if more
                    && !outcome.failed()
                    && in_flight.len() < BATCHES_IN_FLIGHT
                    && read < BATCHES_PER_TURN
                {
                    // The batches in flight are already queued in the producer: reading
                    // now does not hold up their delivery, only their acknowledgement.
                    match store.read_outbox(id, &self.consumer, batch, false).await {
                        Ok(entries) => {
                            read += 1;
                            more = entries.len() == batch;
                            if !entries.is_empty() {
                                let queued = deliver_batch(store, producer, id, entries).await;
                                in_flight.push(queued);
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "relay: XREADGROUP failed");
                            outcome.read_failed = true;
                        }
                    }
                    continue;
                }
                match in_flight.next().await {
                    Some(delivered) => outcome.absorb(delivered),
                    None => break outcome,
                }
            }
        };
        if outcome.read_failed || outcome.ack_failed {
            return Err(());
        }
        if let Some(err) = outcome.fatal {
            tracing::error!(error = %err, "relay: producer failed fatally, rebuilding it");
            self.rebuild_producer();
            return Err(());
        }
        if let Some(err) = outcome.retryable {
            self.failed_rounds += 1;
            tracing::warn!(error = %err, campaign_id = id, undelivered = outcome.undelivered, failed_rounds = self.failed_rounds, "relay: delivery failed, will retry");
            if self.failed_rounds >= REBUILD_AFTER_FAILED_ROUNDS {
                self.rebuild_producer();
            }
            return Err(());
        }
        self.failed_rounds = 0;
        Ok(Turn {
            delivered: outcome.delivered,
            own_pending_left,
            claimed_left,
        })
    }

    /// The first batch of a turn: entries left by a dead instance (when it is time to
    /// look), else our own that failed before, else new ones.
    async fn first_batch(
        &self,
        id: CampaignId,
        own_pending: bool,
        claim: bool,
    ) -> Result<(Vec<OutboxEntry>, Source), ()> {
        let batch = self.settings.batch_size;
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
                    return Ok((claimed, Source::Claimed));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "relay: XAUTOCLAIM failed"),
            }
        }
        if own_pending {
            let entries = self
                .store
                .read_outbox(id, &self.consumer, batch, true)
                .await
                .map_err(|err| tracing::warn!(error = %err, "relay: reading own pending failed"))?;
            if !entries.is_empty() {
                return Ok((entries, Source::OwnPending));
            }
        }
        self.store
            .read_outbox(id, &self.consumer, batch, false)
            .await
            .map(|entries| (entries, Source::New))
            .map_err(|err| tracing::warn!(error = %err, "relay: XREADGROUP failed"))
    }

    fn rebuild_producer(&mut self) {
        match EventProducer::for_relay(&self.kafka, self.kafka.issued_topic.clone()) {
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

/// What one pass over the campaigns came to.
#[derive(Debug, Default)]
struct Pass {
    moved: usize,
    failed: bool,
    /// Some campaign's read of our own pending entries came back full.
    own_pending_left: bool,
    /// Some campaign's takeover came back full.
    claimed_left: bool,
}

/// What one campaign's turn delivered.
#[derive(Debug, Default)]
struct Turn {
    delivered: usize,
    /// The turn began with a full batch of our own pending entries: more may wait.
    own_pending_left: bool,
    /// The turn began with a full batch taken over from another instance: more may wait.
    claimed_left: bool,
}

/// Where the first batch of a turn came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Taken over from another consumer (XAUTOCLAIM).
    Claimed,
    /// Ours, read before and not acknowledged (XREADGROUP from 0).
    OwnPending,
    /// Never read before (XREADGROUP `>`).
    New,
}

/// Batches of one campaign on the wire at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Batches of one campaign read in one turn, before the relay looks at the others.
const BATCHES_PER_TURN: usize = 8;

/// What the batches of one turn came to.
#[derive(Debug, Default)]
struct Delivered {
    delivered: usize,
    undelivered: usize,
    fatal: Option<String>,
    retryable: Option<String>,
    ack_failed: bool,
    read_failed: bool,
}

impl Delivered {
    fn failed(&self) -> bool {
        self.fatal.is_some() || self.retryable.is_some() || self.ack_failed || self.read_failed
    }

    fn absorb(&mut self, other: Delivered) {
        self.delivered += other.delivered;
        self.undelivered += other.undelivered;
        self.fatal = self.fatal.take().or(other.fatal);
        self.retryable = self.retryable.take().or(other.retryable);
        self.ack_failed |= other.ack_failed;
        self.read_failed |= other.read_failed;
    }
}

/// Entries queued to the producer between two yields to the runtime, so queuing a
/// batch of 2,000 (JSON and a producer call each) does not hold a runtime thread,
/// which also drives the Redis connections, for the whole batch.
const QUEUE_BETWEEN_YIELDS: usize = 100;

/// Queues a batch to the broker (yielding now and then); the future it returns waits
/// for the confirmations and acknowledges (XACK + XDEL) the delivered entries.
/// Undelivered ones stay pending and are read again; delivered but unacknowledged
/// ones are sent again later, and the persister's unique event_id makes the
/// duplicate a no-op.
async fn deliver_batch<'a>(
    store: &'a RedisStore,
    producer: &'a EventProducer,
    id: CampaignId,
    entries: Vec<OutboxEntry>,
) -> impl std::future::Future<Output = Delivered> + 'a {
    let mut confirmations = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(QUEUE_BETWEEN_YIELDS) {
        confirmations.extend(
            chunk
                .iter()
                .map(|entry| producer.queue_issued(&to_event(entry), &entry.traceparent)),
        );
        tokio::task::yield_now().await;
    }
    let bound = producer.report_bound();
    async move {
        let mut outcome = Delivered::default();
        let results = match reports_within(bound, confirmations).await {
            Ok(results) => results,
            Err(err) => {
                // Nothing is acknowledged: the entries stay pending and are sent again
                // (the persister keeps one row per event if both copies arrive).
                outcome.retryable = Some(err.to_string());
                outcome.undelivered = entries.len();
                return outcome;
            }
        };
        let mut acknowledged = Vec::with_capacity(entries.len());
        let now = Utc::now();
        for (entry, result) in entries.iter().zip(results) {
            match result {
                Ok(()) => {
                    let age = (now - entry.issued_at).to_std().unwrap_or_default();
                    metrics::get().record_relay_delivery(age);
                    acknowledged.push(entry.stream_id.clone());
                }
                Err(PublishError::Fatal(e)) => outcome.fatal = Some(e),
                Err(PublishError::Retryable(e)) => outcome.retryable = Some(e),
            }
        }
        outcome.delivered = acknowledged.len();
        outcome.undelivered = entries.len() - acknowledged.len();
        if let Err(err) = store.ack_outbox(id, &acknowledged).await {
            tracing::warn!(error = %err, campaign_id = id, "relay: XACK failed");
            outcome.ack_failed = true;
        }
        outcome
    }
}

/// The delivery reports of a batch, or a retryable error if they are not all in
/// within `bound`. librdkafka reports every message within `message.timeout.ms`,
/// but a wedged producer that never reports would otherwise hold the relay, and
/// every campaign's outbox behind it, silently and for good; the failed round
/// makes the relay retry, and rebuild the producer if it goes on.
async fn reports_within<F>(bound: Duration, reports: Vec<F>) -> Result<Vec<F::Output>, PublishError>
where
    F: std::future::Future,
{
    tokio::time::timeout(bound, join_all(reports))
        .await
        .map_err(|_| {
            PublishError::Retryable(format!(
                "no delivery report within {} ms; the entries stay in the outbox",
                bound.as_millis()
            ))
        })
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
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_turn_adds_up_its_batches_and_fails_if_any_batch_failed() {
        let mut turn = Delivered {
            delivered: 2000,
            ..Delivered::default()
        };
        assert!(!turn.failed());
        turn.absorb(Delivered {
            delivered: 1500,
            undelivered: 500,
            retryable: Some("timed out".into()),
            ..Delivered::default()
        });
        turn.absorb(Delivered {
            delivered: 2000,
            ..Delivered::default()
        });
        assert_eq!((turn.delivered, turn.undelivered), (5500, 500));
        assert_eq!(turn.retryable.as_deref(), Some("timed out"));
        assert!(turn.failed() && turn.fatal.is_none() && !turn.ack_failed);
    }

    #[tokio::test]
    async fn reports_that_do_not_come_within_the_bound_fail_the_batch_as_retryable() {
        let bound = Duration::from_millis(50);
        let reported = vec![
            futures::future::ready(1).boxed(),
            futures::future::ready(2).boxed(),
        ];
        assert_eq!(reports_within(bound, reported).await.unwrap(), [1, 2]);

        let one_never_comes = vec![
            futures::future::ready(1).boxed(),
            futures::future::pending().boxed(),
        ];
        let err = reports_within(bound, one_never_comes).await.unwrap_err();
        assert!(matches!(err, PublishError::Retryable(_)), "{err}");
        assert!(err.to_string().contains("within 50 ms"), "{err}");
    }

    #[test]
    fn idle_pause_doubles_from_idle_ms_up_to_eight_times_it() {
        let pauses: Vec<u64> = (1..=6)
            .map(|n| idle_pause(20, n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 160, 160]);
    }
}
