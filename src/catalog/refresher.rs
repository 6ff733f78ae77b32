//! The refresher: one leader at a time (a Redis lease with expiry) recomputes the
//! top products of every window from MySQL, writes the Redis snapshots and
//! publishes an invalidation so every instance's L1 refreshes at once.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::domain::{TopSnapshot, TOP_MAX_DAYS, TOP_MAX_LIMIT};
use crate::persistence::Database;
use crate::store::RedisStore;

#[derive(Clone)]
pub struct Refresher {
    db: Database,
    store: RedisStore,
    owner: String,
    snapshot_ttl: Duration,
}

impl Refresher {
    pub fn new(db: Database, store: RedisStore, snapshot_ttl: Duration) -> Self {
        Self {
            db,
            store,
            owner: format!("refresher-{}", uuid::Uuid::new_v4()),
            snapshot_ttl,
        }
    }

    /// Recomputes and publishes every window now (leader or not).
    pub async fn refresh_now(&self) -> anyhow::Result<()> {
        let now = Utc::now();
        let mut snapshots = Vec::with_capacity(TOP_MAX_DAYS as usize);
        for days in 1..=TOP_MAX_DAYS {
            let products = self
                .db
                .top_products(days, TOP_MAX_LIMIT, now.date_naive())
                .await?;
            snapshots.push(TopSnapshot {
                window_days: days,
                generated_at: now,
                products,
            });
        }
        self.store
            .write_snapshots(&snapshots, self.snapshot_ttl)
            .await?;
        self.store.publish_top_changed().await?;
        Ok(())
    }

    /// Every `interval`: refresh if this instance holds (or takes) the lease.
    pub async fn run(self, interval: Duration, lease: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.store.hold_lease("top", &self.owner, lease).await {
                Ok(true) => {
                    if let Err(err) = self.refresh_now().await {
                        tracing::warn!(error = %err, "top products refresh failed");
                    }
                }
                Ok(false) => {}
                Err(err) => tracing::debug!(error = %err, "refresher lease unavailable"),
            }
        }
    }
}
