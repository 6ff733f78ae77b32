//! The Redis side of flashcoupon, and the only module that imports the Redis crates.
//!
//! Key layout (every key of one campaign in the hash slot `{c:<id>}`):
//! - `<prefix>{c:<id>}:meta`    hash: total, starts_at, ends_at (ms), paused, issued
//! - `<prefix>{c:<id>}:holders` hash: user id -> `code|sequence|issued_at_ms`
//! - `<prefix>{c:<id>}:outbox`  stream of issued coupons, consumer group `relay`
//! - `<prefix>campaigns`        set of armed campaign ids (read by the relay)
//! - `<prefix><role>:leader`    lease of the one instance doing a role's work
//!   (`top`: the top-products refresher; `reconcile`: the scheduled pass)
//!
//! Every call is bounded by the configured timeout, including the wait for a pooled
//! connection; whatever goes wrong comes back as [`StoreError::Unavailable`].

/// The campaign's `meta` and `holders`, the set of armed campaigns, the issuance.
mod campaign;
/// Top-products snapshots, behind a circuit breaker.
pub mod catalog;
/// Leases: which instance does a role's work.
mod lease;
/// A campaign's outbox stream and the relay's consumer group.
mod outbox;
/// The connections: single Redis, Sentinel or Cluster.
pub mod pool;
/// Pub/sub between instances: new snapshots, sold-out campaigns.
pub mod pubsub;

pub use campaign::{ArmSpec, LiveFigures};
pub use outbox::{OutboxEntry, RELAY_GROUP};

use std::time::Duration;

use redis::Script;

use crate::config::RedisSettings;
use crate::domain::CampaignId;
use crate::telemetry::metrics;

/// Entries read per step when a campaign's holders or outbox are walked.
pub const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

type StoreResult<T> = Result<T, StoreError>;

/// Handle on Redis: shared multiplexed connections, a bounded pool, the scripts.
#[derive(Clone)]
pub struct RedisStore {
    pool: pool::RedisPool,
    prefix: String,
    timeout: Duration,
    /// Durability mode: replicas that must have a coupon before it is acknowledged.
    wait_replicas: u32,
    wait_timeout: Duration,
    issue_script: Script,
    arm_script: Script,
    catch_up_script: Script,
    lease_script: Script,
}

impl RedisStore {
    /// Builds the pool; connections are opened lazily, so this works with Redis down.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let pool = pool::RedisPool::new(settings)?;
        Ok(Self {
            pool,
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout(),
            wait_replicas: settings.wait_replicas,
            wait_timeout: Duration::from_millis(settings.wait_timeout_ms),
            issue_script: Script::new(include_str!("lua/issue.lua")),
            arm_script: Script::new(include_str!("lua/arm.lua")),
            catch_up_script: Script::new(include_str!("lua/catch_up.lua")),
            lease_script: Script::new(include_str!("lua/lease.lua")),
        })
    }

    fn key(&self, id: CampaignId, part: &str) -> String {
        format!("{}{{c:{id}}}:{part}", self.prefix)
    }

    fn campaigns_key(&self) -> String {
        format!("{}campaigns", self.prefix)
    }

    /// Runs one Redis exchange on a shared connection within the timeout, timing it
    /// under `command` in `redis_command_duration_seconds`.
    async fn run<T, F, Fut>(&self, command: &'static str, f: F) -> StoreResult<T>
    where
        F: FnOnce(pool::PooledConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run_on(command, false, f).await
    }

    /// [`Self::run`], on a connection of its own when `exclusive`: a command that
    /// blocks its connection on the server (`WAIT`), or a bulk read or write of the
    /// relay and of reconciliation (thousands of entries), must not hold up the
    /// claims pipelined on the shared connections. With the relay's batches of 2,000
    /// on the shared connections, top-products p99.9 reached 1.2 s while it drained
    /// a burst; on a connection of their own, 94 ms.
    async fn run_on<T, F, Fut>(
        &self,
        command: &'static str,
        exclusive: bool,
        f: F,
    ) -> StoreResult<T>
    where
        F: FnOnce(pool::PooledConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let work = async {
            let conn = if exclusive {
                self.pool.get_exclusive().await
            } else {
                self.pool.get().await
            }
            .map_err(|e| StoreError::Unavailable(format!("no connection: {e}")))?;
            f(conn).await.map_err(|e| {
                if pool::primary_lost(&e) {
                    // Connect afresh (to the new primary, with Sentinel).
                    self.pool.forget_connections();
                }
                StoreError::Unavailable(format!("{command}: {e}"))
            })
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that does not answer may be to a paused or dead
                // primary: the next calls connect afresh.
                self.pool.forget_connections();
                Err(StoreError::Unavailable(format!(
                    "{command}: no answer within {:?}",
                    self.timeout
                )))
            }
        };
        metrics::get().record_redis_command(command, started.elapsed(), result.is_ok());
        result
    }

    /// PING, for readiness.
    pub async fn ping(&self) -> StoreResult<()> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    /// One command per key, in one round trip: a single pipeline, or in cluster mode
    /// (the keys live in different slots) one per key, sent concurrently.
    async fn per_key<T: redis::FromRedisValue + Send>(
        &self,
        command: &'static str,
        keys: Vec<String>,
        add: impl Fn(&mut redis::Pipeline, &str),
    ) -> StoreResult<Vec<T>> {
        if !self.pool.is_cluster() {
            let mut pipe = redis::pipe();
            for key in &keys {
                add(&mut pipe, key);
            }
            return self
                .run(
                    command,
                    |mut c| async move { pipe.query_async(&mut c).await },
                )
                .await;
        }
        let calls = keys.iter().map(|key| {
            let mut pipe = redis::pipe();
            add(&mut pipe, key);
            self.run(command, |mut c| async move {
                let (value,): (T,) = pipe.query_async(&mut c).await?;
                Ok(value)
            })
        });
        futures::future::try_join_all(calls).await
    }

    /// Replicas connected to the primary we talk to (`INFO replication`).
    pub async fn connected_replicas(&self) -> StoreResult<i64> {
        let info: String = self
            .run("info", |mut c| async move {
                redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Pool occupancy for the `redis_pool_connections` gauge.
    pub fn pool_status(&self) -> (usize, usize, usize) {
        self.pool.status()
    }

    /// Drops every connection, so the next calls open new ones on the caller's
    /// runtime: at shutdown, once the HTTP workers (whose runtimes drove some of
    /// the shared connections) are gone and the relay still has its last batch to
    /// acknowledge.
    pub fn reconnect_on_next_use(&self) {
        self.pool.forget_connections();
    }
}
