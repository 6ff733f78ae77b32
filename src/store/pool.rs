//! The Redis connection pool behind [`super::RedisStore`], for a single Redis or for
//! the primary that Sentinel names. Sentinel mode finds the primary again after a
//! failover: a connection that fails, or that lands on a demoted primary (READONLY),
//! leaves the pool, and new connections ask the sentinels who the primary is now.

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// A pooled connection of either kind; returned to its pool when dropped.
pub enum PooledConnection {
    Single(deadpool_redis::Connection),
    Sentinel(deadpool_redis::sentinel::Connection),
}

/// The sentinel addresses of `settings`, refused when there are none.
fn sentinel_urls(settings: &RedisSettings) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = settings
        .sentinel_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        anyhow::bail!("redis.mode = \"sentinel\" needs redis.sentinel_urls (comma-separated)");
    }
    Ok(urls)
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
            other => anyhow::bail!("redis.mode = {other:?}: expected \"single\" or \"sentinel\""),
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
        }
    }

    /// Drops every idle connection: after a connection error or a READONLY answer
    /// (the primary moved), the next calls open fresh connections to the primary.
    pub fn forget_idle(&self) {
        match self {
            Self::Single(pool) => pool.retain(|_, _| false),
            Self::Sentinel(pool) => pool.retain(|_, _| false),
        };
    }

    /// (in use, idle, max) for the `redis_pool_connections` gauge.
    pub fn status(&self) -> (usize, usize, usize) {
        let status = match self {
            Self::Single(pool) => pool.status(),
            Self::Sentinel(pool) => pool.status(),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
        }
    }
}
