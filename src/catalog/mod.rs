//! Top products, the read path that must stay up when Redis or MySQL does not:
//! L1 (moka, short TTL, one loader per key) -> Redis snapshot (circuit breaker) ->
//! MySQL (circuit breaker + bulkhead) -> the last good value, marked stale.
//! The [`refresher`] keeps the Redis snapshots fresh and tells every instance to
//! drop its L1 copies.

pub mod refresher;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use moka::future::Cache;

use crate::domain::{TopSnapshot, TOP_MAX_LIMIT};
use crate::persistence::catalog::GuardedTopQuery;
use crate::store::catalog::SnapshotStore;
use crate::telemetry::metrics;

/// Where an answer came from (the `X-Data-Source` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    L1,
    Redis,
    Mysql,
    Stale,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::Redis => "redis",
            Source::Mysql => "mysql",
            Source::Stale => "stale",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("top products unavailable: {0}")]
pub struct Unavailable(String);

#[derive(Clone)]
struct Loaded {
    snapshot: Arc<TopSnapshot>,
    source: Source,
}

#[derive(Clone)]
pub struct TopProducts {
    l1: Cache<u32, Loaded>,
    snapshots: SnapshotStore,
    fallback: GuardedTopQuery,
    /// Last good snapshot per window, served (marked stale) when both stores fail.
    last_good: Arc<RwLock<HashMap<u32, Arc<TopSnapshot>>>>,
}

impl TopProducts {
    pub fn new(snapshots: SnapshotStore, fallback: GuardedTopQuery, l1_ttl: Duration) -> Self {
        Self {
            l1: Cache::builder()
                .max_capacity(64)
                .time_to_live(l1_ttl)
                .build(),
            snapshots,
            fallback,
            last_good: Arc::default(),
        }
    }

    /// Drops every L1 copy (on an invalidation from the refresher).
    pub fn invalidate(&self) {
        self.l1.invalidate_all();
    }

    /// The snapshot of the top products over `days` (all `TOP_MAX_LIMIT` of them,
    /// shared, not copied: the caller shows the first `limit`), and where it came from.
    ///
    /// Nearly every call is an L1 hit, answered without building the loader. The
    /// miss is boxed: its futures (a Redis read, a MySQL query behind a breaker and a
    /// bulkhead) would otherwise make every request's future several kilobytes,
    /// copied whenever actix moves or boxes it (perf: 8 % of the endpoint's CPU).
    pub async fn top(&self, days: u32) -> Result<(Arc<TopSnapshot>, Source), Unavailable> {
        if let Some(loaded) = self.l1.get(&days).await {
            metrics::get().record_cache("top_products_l1", "hit");
            return Ok((loaded.snapshot, Source::L1));
        }
        Box::pin(self.top_on_miss(days)).await
    }

    /// L1 had no copy: load it once for every caller waiting on `days`, or serve the
    /// last good snapshot, marked stale, when both stores fail.
    async fn top_on_miss(&self, days: u32) -> Result<(Arc<TopSnapshot>, Source), Unavailable> {
        let entry = self
            .l1
            .entry(days)
            .or_try_insert_with(self.load(days))
            .await;
        let (loaded, source) = match entry {
            Ok(entry) => {
                // Another caller's load may have filled it meanwhile: then a hit.
                let fresh = entry.is_fresh();
                let loaded = entry.into_value();
                let source = if fresh { loaded.source } else { Source::L1 };
                metrics::get().record_cache("top_products_l1", if fresh { "miss" } else { "hit" });
                (loaded.snapshot, source)
            }
            Err(cause) => {
                let stale = self
                    .last_good
                    .read()
                    .ok()
                    .and_then(|m| m.get(&days).cloned());
                match stale {
                    Some(snapshot) => {
                        metrics::get().record_cache("top_products_l1", "stale");
                        (snapshot, Source::Stale)
                    }
                    None => return Err(Unavailable(cause.to_string())),
                }
            }
        };
        Ok((loaded, source))
    }

    /// L1 miss: the Redis snapshot, else the guarded MySQL query. One per key at a
    /// time (moka coalesces concurrent misses of the same key).
    async fn load(&self, days: u32) -> Result<Loaded, Unavailable> {
        let redis_error = match self.snapshots.read(days).await {
            Ok(Some(snapshot)) => return Ok(self.remember(days, snapshot, Source::Redis)),
            Ok(None) => "no snapshot yet".to_owned(),
            Err(err) => err.to_string(),
        };
        match self
            .fallback
            .snapshot(days, TOP_MAX_LIMIT, Utc::now())
            .await
        {
            Ok(snapshot) => Ok(self.remember(days, snapshot, Source::Mysql)),
            Err(err) => Err(Unavailable(format!("redis: {redis_error}; mysql: {err}"))),
        }
    }

    fn remember(&self, days: u32, snapshot: TopSnapshot, source: Source) -> Loaded {
        let snapshot = Arc::new(snapshot);
        if let Ok(mut map) = self.last_good.write() {
            map.insert(days, snapshot.clone());
        }
        Loaded { snapshot, source }
    }
}
