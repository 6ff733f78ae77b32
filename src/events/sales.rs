//! Sales ingestion: `order.paid.v1` into `product_daily_sales`, each order event
//! counted once, through the shared at-least-once consumer ([`super::consumer`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{CatalogSettings, KafkaSettings};
use crate::domain::OrderPaidEvent;
use crate::events::consumer::{run_consumer, BatchHandler, ConsumerSpec, Reject};
use crate::persistence::{Database, DbError};

struct SalesWriter {
    db: Database,
}

impl BatchHandler for SalesWriter {
    async fn handle(&self, payloads: &[&[u8]]) -> Result<Vec<Reject>, DbError> {
        let mut rejects = Vec::new();
        let mut events = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            match OrderPaidEvent::from_json(payload) {
                Ok(event) => events.push(event),
                Err(error) => rejects.push(Reject::permanent(index, error)),
            }
        }
        self.db.apply_orders(&events).await?;
        Ok(rejects)
    }
}

/// Runs the sales ingestion until `shutdown`.
pub async fn run_sales_ingestion(
    kafka: KafkaSettings,
    catalog: CatalogSettings,
    db: Database,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = ConsumerSpec {
        name: "sales",
        dlt_topic: crate::domain::dlt_topic_of(&catalog.orders_topic),
        topic: catalog.orders_topic,
        group: catalog.orders_group,
        batch_size: 500,
        batch_wait: Duration::from_millis(50),
        retry_delays: kafka.retry_delays(),
    };
    run_consumer(kafka, spec, SalesWriter { db }, shutdown).await
}
