//! The Redis connections behind [`super::RedisStore`]: a single Redis, the primary
//! that Sentinel names, or a Redis Cluster.
//!
//! Most commands go over a few long-lived *shared* multiplexed connections
//! (`redis.shared_connections`): each call clones one, and concurrent commands are
//! pipelined on it, so the issue path costs one round trip and no pool hand-over
//! (deadpool-redis PINGs every connection it hands out).
//!
//! Each thread keeps to one of them, its home slot, and the first call on a thread
//! whose slot is empty opens it, so the connection's I/O task runs on the runtime
//! of the thread that uses it: an actix worker's claims then need no hop to another
//! thread and back (with the slots taken round robin, that hop cost a fifth of the
//! service's CPU per claim).
//!
//! The deadpool pool creates those connections (with its timeouts, and the
//! sentinels' answer of who the primary is) and lends *exclusive* connections to
//! what must not share one: the durability mode's `WAIT` blocks its connection on
//! the server.
//!
//! Sentinel mode finds the primary again after a failover: a connection that fails,
//! times out or lands on a demoted primary (READONLY) is forgotten, and new
//! connections ask the sentinels who the primary is now. Cluster mode routes each
//! command by its key's slot (every key of a campaign shares the slot `{c:<id>}`),
//! and follows MOVED after a failover.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

#[derive(Clone)]
pub struct RedisPool {
    pool: Pool,
    shared: Arc<[Slot]>,
}

#[derive(Clone)]
enum Pool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// One shared connection: filled on first use and again after it was forgotten.
#[derive(Default)]
struct Slot {
    connection: RwLock<Option<SharedConnection>>,
    /// One task (re)connects a slot; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// A multiplexed connection that many calls use at once (cloning is cheap).
#[derive(Clone)]
pub enum SharedConnection {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A connection lent to one call: a shared one, or one of the pool's own, which goes
/// back to the pool when dropped.
pub enum PooledConnection {
    Shared(SharedConnection),
    Single(deadpool_redis::Connection),
    Sentinel(deadpool_redis::sentinel::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

/// The addresses in a comma-separated setting, refused when there are none.
fn url_list(list: &str, mode: &str, key: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        anyhow::bail!("redis.mode = \"{mode}\" needs redis.{key} (comma-separated)");
    }
    Ok(urls)
}

fn sentinel_urls(settings: &RedisSettings) -> anyhow::Result<Vec<String>> {
    url_list(&settings.sentinel_urls, "sentinel", "sentinel_urls")
}

impl RedisPool {
    /// Builds the pool; connections are opened lazily, so this works with Redis down.
    pub fn new(settings: &RedisSettings) -> anyhow::Result<Self> {
        let pool_config = PoolConfig {
            max_size: settings.pool_size,
            timeouts: Timeouts {
                wait: Some(settings.timeout()),
                create: Some(settings.timeout()),
                recycle: Some(settings.timeout()),
            },
            ..PoolConfig::default()
        };
        let pool = match settings.mode.as_str() {
            "single" => {
                let mut cfg = deadpool_redis::Config::from_url(settings.url.expose_secret());
                cfg.pool = Some(pool_config);
                Pool::Single(cfg.create_pool(Some(Runtime::Tokio1))?)
            }
            "sentinel" => {
                let mut cfg = deadpool_redis::sentinel::Config::from_urls(
                    sentinel_urls(settings)?,
                    settings.sentinel_master.clone(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                cfg.pool = Some(pool_config);
                Pool::Sentinel(cfg.create_pool(Some(Runtime::Tokio1))?)
            }
            "cluster" => {
                if settings.wait_replicas > 0 {
                    anyhow::bail!(
                        "redis.wait_replicas needs redis.mode single or sentinel: WAIT must run on the connection that wrote, which a cluster connection does not promise"
                    );
                }
                let mut cfg = deadpool_redis::cluster::Config::from_urls(url_list(
                    &settings.cluster_urls,
                    "cluster",
                    "cluster_urls",
                )?);
                cfg.pool = Some(pool_config);
                Pool::Cluster(cfg.create_pool(Some(Runtime::Tokio1))?)
            }
            other => anyhow::bail!(
                "redis.mode = {other:?}: expected \"single\", \"sentinel\" or \"cluster\""
            ),
        };
        if settings.shared_connections == 0 {
            anyhow::bail!("redis.shared_connections must be at least 1, got 0");
        }
        Ok(Self {
            pool,
            shared: (0..settings.shared_connections)
                .map(|_| Slot::default())
                .collect(),
        })
    }

    /// A shared connection (this thread's home slot), connected on first use.
    pub async fn get(&self) -> Result<PooledConnection, String> {
        let slot = &self.shared[home_slot(self.shared.len())];
        if let Some(shared) = slot.current() {
            return Ok(PooledConnection::Shared(shared));
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(shared) = slot.current() {
            return Ok(PooledConnection::Shared(shared));
        }
        // A connection of the pool's making, taken out of the pool for good.
        let shared = match self.get_exclusive().await? {
            PooledConnection::Single(c) => {
                SharedConnection::Plain(deadpool_redis::Connection::take(c))
            }
            PooledConnection::Sentinel(c) => {
                SharedConnection::Plain(deadpool_redis::sentinel::Connection::take(c))
            }
            PooledConnection::Cluster(c) => {
                SharedConnection::Cluster(deadpool_redis::cluster::Connection::take(c))
            }
            PooledConnection::Shared(c) => c,
        };
        *slot.connection.write().unwrap_or_else(|e| e.into_inner()) = Some(shared.clone());
        Ok(PooledConnection::Shared(shared))
    }

    /// A connection of the pool for this call alone (returned when dropped).
    pub async fn get_exclusive(&self) -> Result<PooledConnection, String> {
        match &self.pool {
            Pool::Single(pool) => pool
                .get()
                .await
                .map(PooledConnection::Single)
                .map_err(|e| e.to_string()),
            Pool::Sentinel(pool) => pool
                .get()
                .await
                .map(PooledConnection::Sentinel)
                .map_err(|e| e.to_string()),
            Pool::Cluster(pool) => pool
                .get()
                .await
                .map(PooledConnection::Cluster)
                .map_err(|e| e.to_string()),
        }
    }

    /// Forgets the shared connections and drops every idle pooled one: after a
    /// connection error, a timeout or a READONLY answer (the primary moved), the
    /// next calls open fresh connections to the primary.
    pub fn forget_connections(&self) {
        for slot in self.shared.iter() {
            slot.connection
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        match &self.pool {
            Pool::Single(pool) => drop(pool.retain(|_, _| false)),
            Pool::Sentinel(pool) => drop(pool.retain(|_, _| false)),
            Pool::Cluster(pool) => drop(pool.retain(|_, _| false)),
        }
    }

    /// Commands of one pipeline must share a hash slot (cluster mode).
    pub fn is_cluster(&self) -> bool {
        matches!(self.pool, Pool::Cluster(_))
    }

    /// (in use, idle, max) for the `redis_pool_connections` gauge: the shared
    /// connections count as in use (they always are), and as part of the maximum.
    pub fn status(&self) -> (usize, usize, usize) {
        let status = match &self.pool {
            Pool::Single(pool) => pool.status(),
            Pool::Sentinel(pool) => pool.status(),
            Pool::Cluster(pool) => pool.status(),
        };
        let shared = self.shared.iter().filter(|s| s.current().is_some()).count();
        (
            status.size.saturating_sub(status.available) + shared,
            status.available,
            status.max_size + self.shared.len(),
        )
    }
}

/// The slot of `slots` this thread uses, the same on every call: threads are
/// numbered in the order they first ask, and thread n takes slot n mod `slots`.
/// With as many slots as threads that call Redis (actix workers and runtime
/// threads), each has a connection of its own; with fewer, some share one.
fn home_slot(slots: usize) -> usize {
    thread_local! {
        static ORDINAL: Cell<Option<usize>> = const { Cell::new(None) };
    }
    static THREADS_SEEN: AtomicUsize = AtomicUsize::new(0);
    ORDINAL.with(|ordinal| {
        let n = ordinal.get().unwrap_or_else(|| {
            let n = THREADS_SEEN.fetch_add(1, Ordering::Relaxed);
            ordinal.set(Some(n));
            n
        });
        n % slots
    })
}

impl Slot {
    fn current(&self) -> Option<SharedConnection> {
        self.connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether an error means the connection's server is gone or no longer the primary.
pub fn primary_lost(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.to_string().contains("READONLY")
}

/// A client for the current primary (pub/sub subscribers, which need their own
/// connection); in Sentinel mode, asked of the sentinels at each call.
pub async fn primary_client(settings: &RedisSettings) -> redis::RedisResult<redis::Client> {
    if settings.mode == "cluster" {
        // PUBLISH reaches every node over the cluster bus: any node will do.
        let first = url_list(&settings.cluster_urls, "cluster", "cluster_urls")
            .map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cluster",
                    e.to_string(),
                ))
            })?
            .remove(0);
        return redis::Client::open(first);
    }
    if settings.mode != "sentinel" {
        return redis::Client::open(settings.url.expose_secret());
    }
    let urls = sentinel_urls(settings).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "sentinel",
            e.to_string(),
        ))
    })?;
    let mut sentinel = redis::sentinel::SentinelClient::build(
        urls,
        settings.sentinel_master.clone(),
        None,
        redis::sentinel::SentinelServerType::Master,
    )?;
    sentinel.async_get_client().await
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Shared(SharedConnection::Plain(c)) => c.req_packed_command(cmd),
            Self::Shared(SharedConnection::Cluster(c)) => c.req_packed_command(cmd),
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Shared(SharedConnection::Plain(c)) => c.req_packed_commands(cmd, offset, count),
            Self::Shared(SharedConnection::Cluster(c)) => c.req_packed_commands(cmd, offset, count),
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Shared(SharedConnection::Plain(c)) => c.get_db(),
            Self::Shared(SharedConnection::Cluster(c)) => c.get_db(),
            Self::Single(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::home_slot;

    #[test]
    fn a_thread_keeps_its_slot_and_the_next_threads_take_the_next_slots() {
        let first = home_slot(4);
        assert_eq!(home_slot(4), first, "the same thread, the same slot");
        // Threads asking one after another take consecutive slots, round the ring.
        let others: Vec<usize> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (home_slot(4), home_slot(4)))
                    .join()
                    .unwrap()
            })
            .map(|(slot, again)| {
                assert_eq!(slot, again);
                slot
            })
            .collect();
        let expected: Vec<usize> = (1..=4).map(|k| (first + k) % 4).collect();
        assert_eq!(others, expected);
        // One slot: every thread shares it.
        assert_eq!(home_slot(1), 0);
    }
}
