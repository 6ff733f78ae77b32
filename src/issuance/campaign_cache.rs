//! The campaign rows an instance keeps for a moment, so the public view and the
//! claims Redis cannot place do not each ask MySQL. Concurrent misses for one id
//! share one load, and "no such campaign" is kept too: a wrong or stale id
//! hammered at 10:00:00 costs MySQL one query per expiry, not one per request.
//! A failed load is not kept; the next caller tries again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use crate::domain::{Campaign, CampaignId};

#[derive(Clone)]
pub struct CampaignCache {
    rows: Cache<CampaignId, Option<Arc<Campaign>>>,
}

impl CampaignCache {
    /// At most `capacity` ids, each kept for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            rows: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The row of `id` (None: MySQL has no such campaign), from the cache or from
    /// `load`, which runs once for all the callers that missed at the same time.
    pub async fn get_or_load<E>(
        &self,
        id: CampaignId,
        load: impl Future<Output = Result<Option<Campaign>, E>>,
    ) -> Result<Option<Arc<Campaign>>, Arc<E>>
    where
        E: Send + Sync + 'static,
    {
        self.rows
            .try_get_with(id, async move { load.await.map(|row| row.map(Arc::new)) })
            .await
    }

    /// Drops what is kept of `id` (the row changed, or was just created).
    pub async fn forget(&self, id: CampaignId) {
        self.rows.invalidate(&id).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::Utc;

    use super::*;

    fn cache() -> CampaignCache {
        CampaignCache::new(100, Duration::from_secs(60))
    }

    fn row(id: CampaignId) -> Campaign {
        let now = Utc::now();
        Campaign {
            id,
            name: "row".into(),
            total_quantity: 10,
            starts_at: now,
            ends_at: now,
            discount: crate::domain::Discount {
                kind: crate::domain::DiscountKind::Percent,
                value: rust_decimal::Decimal::from(10),
            },
            coupon_valid_days: 1,
            paused: false,
            created_at: now,
        }
    }

    /// A load that counts its runs and yields a few times, so that callers
    /// arriving together find it still running.
    async fn counted(
        loads: &AtomicUsize,
        answer: Result<Option<Campaign>, String>,
    ) -> Result<Option<Campaign>, String> {
        loads.fetch_add(1, Ordering::SeqCst);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        answer
    }

    #[tokio::test]
    async fn callers_missing_together_share_one_load() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let answers = futures::future::join_all(
            (0..50).map(|_| cache.get_or_load(7, counted(&loads, Ok(Some(row(7)))))),
        )
        .await;
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(answers
            .iter()
            .all(|a| a.as_ref().unwrap().as_ref().unwrap().id == 7));
    }

    #[tokio::test]
    async fn an_unknown_id_is_kept_as_unknown() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        for _ in 0..3 {
            let found = cache.get_or_load(404, counted(&loads, Ok(None))).await;
            assert!(found.unwrap().is_none());
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_load_is_not_kept_and_forget_drops_a_row() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let failed = cache
            .get_or_load(9, counted(&loads, Err("mysql down".into())))
            .await;
        assert_eq!(failed.unwrap_err().as_str(), "mysql down");
        let found = cache.get_or_load(9, counted(&loads, Ok(None))).await;
        assert!(found.unwrap().is_none());
        assert_eq!(loads.load(Ordering::SeqCst), 2);

        // Created meanwhile: once forgotten, the next caller loads the row.
        cache.forget(9).await;
        let found = cache
            .get_or_load(9, counted(&loads, Ok(Some(row(9)))))
            .await;
        assert_eq!(found.unwrap().unwrap().id, 9);
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }
}
