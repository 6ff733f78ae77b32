//! The Redis connection pool behind [`super::RedisStore`]: a single Redis, the
//! primary that Sentinel names, or a Redis Cluster. Sentinel mode finds the primary
//! again after a failover: a connection that fails, or that lands on a demoted
//! primary (READONLY), leaves the pool, and new connections ask the sentinels who the
//! primary is now. Cluster mode routes each command by its key's slot (every key of a
//! campaign shares the slot `{c:<id>}`), and follows MOVED after a failover.

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pooled connection of either kind; returned to its pool when dropped.
pub enum PooledConnection {
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
        match settings.mode.as_str() {
            "single" => {
                let mut cfg = deadpool_redis::Config::from_url(settings.url.expose_secret());
                cfg.pool = Some(pool_config);
                Ok(Self::Single(cfg.create_pool(Some(Runtime::Tokio1))?))
            }
            "sentinel" => {
                let mut cfg = deadpool_redis::sentinel::Config::from_urls(
                    sentinel_urls(settings)?,
                    settings.sentinel_master.clone(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                cfg.pool = Some(pool_config);
                Ok(Self::Sentinel(cfg.create_pool(Some(Runtime::Tokio1))?))
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
                Ok(Self::Cluster(cfg.create_pool(Some(Runtime::Tokio1))?))
            }
            other => anyhow::bail!(
                "redis.mode = {other:?}: expected \"single\", \"sentinel\" or \"cluster\""
            ),
        }
    }

    pub async fn get(&self) -> Result<PooledConnection, String> {
        match self {
            Self::Single(pool) => pool
                .get()
                .await
                .map(PooledConnection::Single)
                .map_err(|e| e.to_string()),
            Self::Sentinel(pool) => pool
                .get()
                .await
                .map(PooledConnection::Sentinel)
                .map_err(|e| e.to_string()),
            Self::Cluster(pool) => pool
                .get()
                .await
                .map(PooledConnection::Cluster)
                .map_err(|e| e.to_string()),
        }
    }

    /// Drops every idle connection: after a connection error or a READONLY answer
    /// (the primary moved), the next calls open fresh connections to the primary.
    pub fn forget_idle(&self) {
        match self {
            Self::Single(pool) => drop(pool.retain(|_, _| false)),
            Self::Sentinel(pool) => drop(pool.retain(|_, _| false)),
            Self::Cluster(pool) => drop(pool.retain(|_, _| false)),
        }
    }

    /// (in use, idle, max) for the `redis_pool_connections` gauge.
    /// Commands of one pipeline must share a hash slot (cluster mode).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    pub fn status(&self) -> (usize, usize, usize) {
        let status = match self {
            Self::Single(pool) => pool.status(),
            Self::Sentinel(pool) => pool.status(),
            Self::Cluster(pool) => pool.status(),
        };
        (
            status.size.saturating_sub(status.available),
            status.available,
            status.max_size,
        )
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
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
