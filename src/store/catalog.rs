//! Redis side of the read path: top-products snapshots, behind a circuit breaker
//! (the refresher's lease is [`RedisStore::hold_lease`]; the invalidation every
//! instance hears is in [`super::pubsub`]).
//!
//! Keys: `<prefix>{top}:<days>` (JSON snapshots, one hash slot so one pipeline
//! writes them all, also on Redis Cluster).

use std::time::Duration;

use redis::AsyncCommands;

use super::{RedisStore, StoreError};
use crate::domain::TopSnapshot;
use crate::resilience::{Breaker, BreakerSettings, GuardError};

/// Snapshots read through a circuit breaker.
#[derive(Clone)]
pub struct SnapshotStore {
    store: RedisStore,
    breaker: Breaker,
}

impl RedisStore {
    fn top_key(&self, days: u32) -> String {
        format!("{}{{top}}:{days}", self.prefix)
    }

    /// Writes the snapshots of every window (one round trip), with a TTL so a
    /// stopped refresher cannot leave them forever.
    pub async fn write_snapshots(
        &self,
        snapshots: &[TopSnapshot],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for snapshot in snapshots {
            let json = serde_json::to_string(snapshot)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            pipe.set_ex(
                self.top_key(snapshot.window_days),
                json,
                ttl.as_secs().max(1),
            )
            .ignore();
        }
        self.run("top_write", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }
}

impl SnapshotStore {
    pub fn new(store: RedisStore, breaker: BreakerSettings) -> Self {
        Self {
            store,
            breaker: Breaker::new("redis_top_products", breaker),
        }
    }

    /// The snapshot of a window, None if the refresher has not written one.
    pub async fn read(&self, days: u32) -> Result<Option<TopSnapshot>, GuardError<StoreError>> {
        let key = self.store.top_key(days);
        let store = &self.store;
        let raw: Option<String> = self
            .breaker
            .call(store.run("top_read", |mut c| async move { c.get(key).await }))
            .await?;
        Ok(raw.and_then(|json| serde_json::from_str(&json).ok()))
    }
}
