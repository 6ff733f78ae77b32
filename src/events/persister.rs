//! The coupon persister: `coupon.issued.v1` into MySQL `issued_coupon`, in
//! batches, through the shared at-least-once consumer ([`super::consumer`]).
//! Re-delivered events are a no-op; a malformed event, or one that conflicts with
//! another coupon of the same shopper or code, goes to `coupon.issued.v1.dlt`; an
//! event MySQL refuses on its own (e.g. its campaign row is not there yet) goes
//! through `coupon.issued.v1.retry` first.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{KafkaSettings, PersisterSettings};
use crate::domain::CouponIssuedEvent;
use crate::events::consumer::{run_consumer, BatchHandler, ConsumerSpec, Reject};
use crate::persistence::{Database, DbError};
use crate::telemetry::metrics;

struct CouponWriter {
    db: Database,
}

impl BatchHandler for CouponWriter {
    async fn handle(&self, payloads: &[&[u8]]) -> Result<Vec<Reject>, DbError> {
        let mut rejects = Vec::new();
        let mut events = Vec::with_capacity(payloads.len());
        let mut index_of: HashMap<String, usize> = HashMap::new();
        for (index, payload) in payloads.iter().enumerate() {
            match CouponIssuedEvent::from_json(payload) {
                Ok(event) => {
                    index_of.insert(event.event_id.clone(), index);
                    events.push(event);
                }
                Err(error) => rejects.push(Reject::permanent(index, error)),
            }
        }
        let report = self.db.insert_coupons(&events).await?;
        metrics::get().record_persisted((events.len() - report.conflicting.len()) as u64);
        for event_id in report.conflicting {
            tracing::error!(%event_id, "persister: event conflicts with an existing coupon");
            if let Some(index) = index_of.get(&event_id) {
                rejects.push(Reject::permanent(
                    *index,
                    "conflicts with an existing coupon for this shopper or code",
                ));
            }
        }
        Ok(rejects)
    }
}

/// Runs the persister until `shutdown`.
pub async fn run_persister(
    kafka: KafkaSettings,
    settings: PersisterSettings,
    db: Database,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = ConsumerSpec {
        name: "persister",
        topic: kafka.issued_topic.clone(),
        group: kafka.persister_group.clone(),
        dlt_topic: kafka.dlt_topic(),
        batch_size: settings.batch_size,
        batch_wait: Duration::from_millis(settings.batch_wait_ms),
        retry_delays: kafka.retry_delays(),
    };
    run_consumer(kafka, spec, CouponWriter { db }, shutdown).await
}
