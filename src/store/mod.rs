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

pub mod catalog;
pub mod pool;
pub mod pubsub;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::{AsyncCommands, Script, Value};

use crate::config::RedisSettings;
use crate::domain::{CampaignId, Coupon, IssueOutcome, NotOpenReason, UserId};
use crate::telemetry::metrics;

/// Consumer group of the outbox streams.
pub const RELAY_GROUP: &str = "relay";

/// Entries read per step when a campaign's holders or outbox are walked.
pub const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

type StoreResult<T> = Result<T, StoreError>;

/// Settings of a campaign as Redis needs them to decide an issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmSpec {
    pub id: CampaignId,
    pub total: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub paused: bool,
}

/// Live figures of one campaign held by Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveFigures {
    pub issued: i64,
    /// Entries of the holders hash.
    pub holders: i64,
    pub pending_events: i64,
    pub paused: bool,
}

/// One issued coupon waiting in a campaign's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub stream_id: String,
    pub campaign_id: CampaignId,
    pub event_id: String,
    pub user_id: String,
    pub coupon_code: String,
    pub sequence: i64,
    pub issued_at: DateTime<Utc>,
    pub traceparent: String,
}

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
            // Renew if ours, else take it if free: one atomic step.
            lease_script: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
                 else \
                   return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0 \
                 end",
            ),
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

    /// One issuance attempt: the whole rule in one EVALSHA. Also answers the stock
    /// left when it is known (after an issue, or 0 when sold out).
    pub async fn issue(
        &self,
        campaign: CampaignId,
        user: &UserId,
        coupon_code: &str,
        event_id: &str,
        traceparent: &str,
    ) -> StoreResult<(IssueOutcome, Option<i64>)> {
        let mut invocation = self.issue_script.prepare_invoke();
        invocation
            .key(self.key(campaign, "meta"))
            .key(self.key(campaign, "holders"))
            .key(self.key(campaign, "outbox"))
            .arg(user.as_str())
            .arg(coupon_code)
            .arg(event_id)
            .arg(traceparent);
        let (replicas, wait_ms) = (self.wait_replicas, self.wait_timeout.as_millis() as u64);
        let (reply, acked): (Vec<String>, Option<u32>) = self
            .run_on("issue", replicas > 0, |mut c| async move {
                let reply: Vec<String> = invocation.invoke_async(&mut c).await?;
                // Durability mode: WAIT on the same connection, so it covers this write
                // (for a coupon already held, it checks the replicas are there at all).
                let hands_out = matches!(
                    reply.first().map(String::as_str),
                    Some("issued") | Some("already")
                );
                let acked = if replicas > 0 && hands_out {
                    Some(
                        redis::cmd("WAIT")
                            .arg(replicas)
                            .arg(wait_ms)
                            .query_async::<u32>(&mut c)
                            .await?,
                    )
                } else {
                    None
                };
                Ok((reply, acked))
            })
            .await?;
        if let Some(acked) = acked.filter(|acked| *acked < replicas) {
            return Err(StoreError::Unavailable(format!(
                "coupon written on the primary but only {acked} of {replicas} replica(s) confirmed it within {wait_ms} ms; retry to get it"
            )));
        }
        let coupon = |raw: &str| parse_holder(campaign, user.as_str(), raw);
        let outcome = match reply.first().map(String::as_str) {
            Some("issued") => reply
                .get(1)
                .and_then(|r| coupon(r))
                .map(IssueOutcome::Issued),
            Some("already") => reply
                .get(1)
                .and_then(|r| coupon(r))
                .map(IssueOutcome::AlreadyIssued),
            Some("sold_out") => Some(IssueOutcome::SoldOut),
            Some("paused") => Some(IssueOutcome::NotOpen(NotOpenReason::Paused)),
            Some("scheduled") => Some(IssueOutcome::NotOpen(NotOpenReason::Scheduled)),
            Some("ended") => Some(IssueOutcome::NotOpen(NotOpenReason::Ended)),
            Some("not_armed") => Some(IssueOutcome::NotArmed),
            _ => None,
        };
        let remaining = match outcome {
            Some(IssueOutcome::SoldOut) => Some(0),
            _ => reply.get(2).and_then(|r| r.parse().ok()),
        };
        outcome
            .map(|o| (o, remaining))
            .ok_or_else(|| StoreError::Unavailable(format!("issue script answered {reply:?}")))
    }

    /// Arms a campaign, or updates the window, stock and brake of an armed one.
    /// `issued` is the starting counter, used only when the campaign was not armed.
    /// Returns true when it was armed by this call.
    pub async fn arm(&self, spec: &ArmSpec, issued: i64) -> StoreResult<bool> {
        let mut invocation = self.arm_script.prepare_invoke();
        invocation
            .key(self.key(spec.id, "meta"))
            .key(self.key(spec.id, "outbox"))
            .arg(spec.total)
            .arg(spec.starts_at.timestamp_millis())
            .arg(spec.ends_at.timestamp_millis())
            .arg(if spec.paused { 1 } else { 0 })
            .arg(issued)
            .arg(RELAY_GROUP);
        let answer: String = self
            .run("arm", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        let set = self.campaigns_key();
        let id = spec.id;
        self.run(
            "sadd",
            |mut c| async move { c.sadd::<_, _, ()>(set, id).await },
        )
        .await?;
        Ok(answer == "armed")
    }

    /// Whether Redis holds the campaign's state at all.
    pub async fn is_armed(&self, id: CampaignId) -> StoreResult<bool> {
        let key = self.key(id, "meta");
        self.run("exists", |mut c| async move { c.exists(key).await })
            .await
    }

    /// Writes holders (user id -> coupon) before a re-arm, so a shopper who already
    /// holds a coupon keeps it and cannot get a second one.
    pub async fn restore_holders(&self, id: CampaignId, coupons: &[Coupon]) -> StoreResult<()> {
        for chunk in coupons.chunks(1000) {
            let key = self.key(id, "holders");
            let pairs: Vec<(String, String)> = chunk
                .iter()
                .map(|c| (c.user_id.clone(), holder_value(c)))
                .collect();
            self.run("hset_holders", |mut c| async move {
                c.hset_multiple::<_, _, _, ()>(key, &pairs).await
            })
            .await?;
        }
        Ok(())
    }

    /// Restores holders Redis lost into an armed campaign and raises its issued
    /// counter to at least `issued_floor`; holders Redis has are kept. Returns the
    /// holders restored, or None if the campaign is not armed.
    pub async fn catch_up(
        &self,
        id: CampaignId,
        lost: &[Coupon],
        issued_floor: i64,
    ) -> StoreResult<Option<usize>> {
        let mut restored = 0;
        let chunks: Vec<&[Coupon]> = if lost.is_empty() {
            vec![&[]]
        } else {
            lost.chunks(500).collect()
        };
        for chunk in chunks {
            let mut invocation = self.catch_up_script.prepare_invoke();
            invocation
                .key(self.key(id, "meta"))
                .key(self.key(id, "holders"))
                .arg(issued_floor);
            for c in chunk {
                invocation.arg(&c.user_id).arg(holder_value(c));
            }
            let answer: i64 = self
                .run("catch_up", |mut c| async move {
                    invocation.invoke_async(&mut c).await
                })
                .await?;
            if answer < 0 {
                return Ok(None);
            }
            restored += answer as usize;
        }
        Ok(Some(restored))
    }

    /// One page of a campaign's holders: HSCAN from `cursor` (0 to start), about
    /// `PAGE` entries; the next cursor is 0 at the end. A holder may come twice
    /// when the hash grows during the scan (Redis's SCAN guarantee).
    pub async fn holders_page(
        &self,
        id: CampaignId,
        cursor: u64,
    ) -> StoreResult<(u64, Vec<Coupon>)> {
        let key = self.key(id, "holders");
        let (next, page): (u64, Vec<(String, String)>) = self
            .run_on("hscan", true, |mut c| async move {
                redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(PAGE)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let holders = page
            .iter()
            .filter_map(|(user, raw)| parse_holder(id, user, raw))
            .collect();
        Ok((next, holders))
    }

    /// Which of `users` Redis holds a coupon for in a campaign (HMGET), in order.
    pub async fn known_holders(&self, id: CampaignId, users: &[&str]) -> StoreResult<Vec<bool>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.key(id, "holders");
        let users: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
        let raw: Vec<Option<String>> = self
            .run_on("hmget", true, |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&users)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(raw.iter().map(Option::is_some).collect())
    }

    /// One page of a campaign's outbox (coupons not yet delivered to Kafka), oldest
    /// first, after stream id `after` (None to start); the id to continue from is
    /// None at the end.
    pub async fn outbox_page(
        &self,
        id: CampaignId,
        after: Option<&str>,
    ) -> StoreResult<(Vec<OutboxEntry>, Option<String>)> {
        let key = self.key(id, "outbox");
        let from = after.map_or_else(|| "-".to_owned(), |last| format!("({last}"));
        let page: Value = self
            .run_on("xrange", true, |mut c| async move {
                c.xrange_count(&key, from, "+", PAGE).await
            })
            .await?;
        let page = entry_list("XRANGE", page)?;
        // Continue after the page's last entry, even one that is malformed.
        let next = match page.last() {
            Some(Value::Array(last)) if page.len() == PAGE => match last.first() {
                Some(Value::BulkString(id)) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            },
            _ => None,
        };
        let entries = outbox_entries(id, page);
        Ok((entries, next))
    }

    /// Puts coupons back into a campaign's outbox, with fresh event ids, so the relay
    /// delivers them again (reconcile's repair of coupons missing from MySQL). Their
    /// events carry `traceparent` (the repair's trace; empty when not traced).
    pub async fn reenqueue(
        &self,
        id: CampaignId,
        coupons: &[Coupon],
        traceparent: &str,
    ) -> StoreResult<usize> {
        for chunk in coupons.chunks(500) {
            let key = self.key(id, "outbox");
            let mut pipe = redis::pipe();
            for c in chunk {
                pipe.xadd(&key, "*", &[("issued", outbox_value(c, traceparent))])
                    .ignore();
            }
            self.run("xadd", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await?;
        }
        Ok(coupons.len())
    }

    /// Takes or renews the lease `<prefix><role>:leader`; true while `owner` holds
    /// it. One instance at a time does a role's work; when it stops renewing,
    /// another takes over after `ttl`.
    pub async fn hold_lease(&self, role: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let mut invocation = self.lease_script.prepare_invoke();
        invocation
            .key(format!("{}{role}:leader", self.prefix))
            .arg(owner)
            .arg(ttl.as_millis() as u64);
        self.run("lease", |mut c| async move {
            invocation.invoke_async::<i64>(&mut c).await.map(|n| n == 1)
        })
        .await
    }

    /// Sets the marketing brake on an armed campaign (no-op if not armed).
    pub async fn set_paused(&self, id: CampaignId, paused: bool) -> StoreResult<()> {
        let key = self.key(id, "meta");
        self.run("pause", |mut c| async move {
            redis::cmd("HSET")
                .arg(&key)
                .arg("paused")
                .arg(if paused { 1 } else { 0 })
                .query_async::<i64>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Issued count, holders, pending outbox entries and brake of one campaign; None
    /// if not armed.
    pub async fn figures(&self, id: CampaignId) -> StoreResult<Option<LiveFigures>> {
        let meta = self.key(id, "meta");
        let outbox = self.key(id, "outbox");
        let holders = self.key(id, "holders");
        let (issued, paused, pending, holders): (Option<i64>, Option<i64>, i64, i64) = self
            .run("figures", |mut c| async move {
                redis::pipe()
                    .hget(&meta, "issued")
                    .hget(&meta, "paused")
                    .xlen(&outbox)
                    .hlen(&holders)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(issued.map(|issued| LiveFigures {
            issued,
            holders,
            pending_events: pending,
            paused: paused == Some(1),
        }))
    }

    /// The coupons `user` holds in each of `campaigns`, in one round trip.
    pub async fn holdings(
        &self,
        user: &UserId,
        campaigns: &[CampaignId],
    ) -> StoreResult<Vec<Coupon>> {
        if campaigns.is_empty() {
            return Ok(Vec::new());
        }
        let keys = campaigns
            .iter()
            .map(|id| self.key(*id, "holders"))
            .collect();
        let user_field = user.as_str().to_owned();
        let raw: Vec<Option<String>> = self
            .per_key("holdings", keys, move |pipe, key| {
                pipe.hget(key, &user_field);
            })
            .await?;
        Ok(campaigns
            .iter()
            .zip(raw)
            .filter_map(|(id, raw)| raw.and_then(|r| parse_holder(*id, user.as_str(), &r)))
            .collect())
    }

    /// Length of each campaign's outbox (undelivered entries), in one round trip.
    pub async fn outbox_lengths(&self, campaigns: &[CampaignId]) -> StoreResult<Vec<i64>> {
        if campaigns.is_empty() {
            return Ok(Vec::new());
        }
        let keys = campaigns.iter().map(|id| self.key(*id, "outbox")).collect();
        self.per_key("xlen", keys, |pipe, key| {
            pipe.xlen(key);
        })
        .await
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

    /// Takes a settled campaign out of the set the relay and `/me/coupons` walk; its
    /// keys stay, so a late claim still hears that it ended.
    pub async fn retire(&self, id: CampaignId) -> StoreResult<()> {
        let set = self.campaigns_key();
        self.run(
            "srem",
            |mut c| async move { c.srem::<_, _, ()>(set, id).await },
        )
        .await
    }

    /// Ids of every armed campaign, but those retired.
    pub async fn armed_campaigns(&self) -> StoreResult<Vec<CampaignId>> {
        let key = self.campaigns_key();
        let mut ids: Vec<CampaignId> = self
            .run("smembers", |mut c| async move { c.smembers(key).await })
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads up to `count` outbox entries for `consumer`: its own unacknowledged
    /// entries when `own_pending`, otherwise new ones.
    pub async fn read_outbox(
        &self,
        id: CampaignId,
        consumer: &str,
        count: usize,
        own_pending: bool,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let key = self.key(id, "outbox");
        let consumer = consumer.to_owned();
        let reply: Value = self
            .run_on("xreadgroup", true, |mut c| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(RELAY_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(if own_pending { "0" } else { ">" })
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(outbox_entries(id, stream_entries(reply)?))
    }

    /// Takes over entries another relay left pending for `min_idle` (it probably died).
    pub async fn claim_stale(
        &self,
        id: CampaignId,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let key = self.key(id, "outbox");
        let consumer = consumer.to_owned();
        let reply: Value = self
            .run_on("xautoclaim", true, |mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(RELAY_GROUP)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // `[next_id, [entry, ...], deleted_ids]`: only the claimed entries matter.
        let claimed = match reply {
            Value::Array(parts) => parts.into_iter().nth(1).unwrap_or(Value::Nil),
            other => return Err(unexpected_reply("XAUTOCLAIM", &other)),
        };
        Ok(outbox_entries(id, entry_list("XAUTOCLAIM", claimed)?))
    }

    /// Acknowledges delivered entries and removes them from the stream, atomically.
    pub async fn ack_outbox(&self, id: CampaignId, stream_ids: &[String]) -> StoreResult<()> {
        if stream_ids.is_empty() {
            return Ok(());
        }
        let key = self.key(id, "outbox");
        self.run_on("xack", true, |mut c| async move {
            redis::pipe()
                .atomic()
                .xack(&key, RELAY_GROUP, stream_ids)
                .ignore()
                .xdel(&key, stream_ids)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
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

/// A holders entry: `code|sequence|issued_at_ms`.
fn holder_value(c: &Coupon) -> String {
    format!(
        "{}|{}|{}",
        c.coupon_code,
        c.sequence,
        c.issued_at.timestamp_millis()
    )
}

/// Parses a holders entry `code|sequence|issued_at_ms`.
fn parse_holder(campaign_id: CampaignId, user: &str, raw: &str) -> Option<Coupon> {
    let mut parts = raw.split('|');
    let code = parts.next()?;
    let sequence = parts.next()?.parse().ok()?;
    let issued_ms: i64 = parts.next()?.parse().ok()?;
    Some(Coupon {
        coupon_code: code.to_owned(),
        campaign_id,
        user_id: user.to_owned(),
        sequence,
        issued_at: Utc.timestamp_millis_opt(issued_ms).single()?,
    })
}

/// The entries of an XREADGROUP reply for one stream: RESP2 `[[key, entries]]`,
/// RESP3 `{key: entries}`, or nil when nothing is new.
fn stream_entries(reply: Value) -> StoreResult<Vec<Value>> {
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(key_and_entries)) => key_and_entries.into_iter().nth(1),
            Some(other) => return Err(unexpected_reply("XREADGROUP", &other)),
            None => None,
        },
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        other => return Err(unexpected_reply("XREADGROUP", &other)),
    };
    entries.map_or(Ok(Vec::new()), |e| entry_list("XREADGROUP", e))
}

fn entry_list(command: &str, entries: Value) -> StoreResult<Vec<Value>> {
    match entries {
        Value::Array(entries) => Ok(entries),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected_reply(command, &other)),
    }
}

fn unexpected_reply(command: &str, value: &Value) -> StoreError {
    StoreError::Unavailable(format!("{command}: unexpected reply {value:?}"))
}

/// Outbox entries from raw stream entries, read straight from the reply (no map per
/// entry: this runs once per issued coupon). An entry that is not what issue.lua
/// writes is logged and left pending, never acknowledged: it stays in the outbox,
/// which on-call sees in `coupon_outbox_pending`, and nothing is lost.
fn outbox_entries(campaign_id: CampaignId, entries: Vec<Value>) -> Vec<OutboxEntry> {
    entries
        .into_iter()
        .filter_map(|entry| match outbox_entry(campaign_id, entry) {
            Ok(entry) => Some(entry),
            Err(problem) => {
                tracing::error!(campaign_id, %problem, "outbox entry is malformed; left pending");
                None
            }
        })
        .collect()
}

/// An outbox entry's one field, `issued`, as issue.lua writes it, for a coupon put
/// back with a fresh event id, in the trace of `traceparent` (empty: none).
fn outbox_value(c: &Coupon, traceparent: &str) -> String {
    format!(
        "{}|{}|{}|{traceparent}",
        uuid::Uuid::now_v7(),
        c.user_id,
        holder_value(c)
    )
}

/// One stream entry `[id, [field, value, ...]]`: the field `issued` as issue.lua
/// writes it, or the six fields (`event_id`, `user_id`, `code`, `seq`, `ts`, `tp`)
/// that versions before it wrote, which may still wait in an outbox after an upgrade.
fn outbox_entry(campaign_id: CampaignId, entry: Value) -> Result<OutboxEntry, String> {
    let Value::Array(id_and_fields) = entry else {
        return Err(format!("entry {entry:?} is not [id, fields]"));
    };
    let mut parts = id_and_fields.into_iter();
    let stream_id = match parts.next() {
        Some(Value::BulkString(id)) => String::from_utf8(id).map_err(|e| e.to_string())?,
        Some(Value::SimpleString(id)) => id,
        other => return Err(format!("entry id {other:?}")),
    };
    let fields = match parts.next() {
        Some(Value::Array(fields)) => fields,
        // An entry deleted while pending (Redis before 7.0 claims it with nil fields).
        other => return Err(format!("entry {stream_id} has fields {other:?}")),
    };
    let mut values: [Option<String>; 6] = Default::default();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let (Value::BulkString(name), Value::BulkString(value)) = (name, value) else {
            return Err(format!(
                "entry {stream_id} has a field that is not a string"
            ));
        };
        let value = String::from_utf8(value)
            .map_err(|_| format!("entry {stream_id} has a value that is not UTF-8"))?;
        let slot = match name.as_slice() {
            b"issued" => {
                let mut packed = value.split('|').map(str::to_owned);
                values = std::array::from_fn(|_| packed.next());
                if packed.next().is_some() {
                    return Err(format!("entry {stream_id} has more than six parts"));
                }
                continue;
            }
            b"event_id" => 0,
            b"user_id" => 1,
            b"code" => 2,
            b"seq" => 3,
            b"ts" => 4,
            b"tp" => 5,
            _ => continue,
        };
        values[slot] = Some(value);
    }
    let [event_id, user_id, code, seq, ts, tp] = values;
    let missing = |field: &str| format!("entry {stream_id} has no valid {field}");
    let sequence = seq
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| missing("sequence"))?;
    let issued_at = ts
        .and_then(|ts| ts.parse().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .ok_or_else(|| missing("issued_at_ms"))?;
    let present =
        |v: Option<String>, field: &str| v.filter(|v| !v.is_empty()).ok_or_else(|| missing(field));
    Ok(OutboxEntry {
        campaign_id,
        event_id: present(event_id, "event_id")?,
        user_id: present(user_id, "user_id")?,
        coupon_code: present(code, "code")?,
        sequence,
        issued_at,
        traceparent: tp.unwrap_or_default(),
        stream_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_entries_round_trip_into_coupons() {
        let c = parse_holder(7, "u1", "ABC|3|1700000000123").unwrap();
        assert_eq!(c.coupon_code, "ABC");
        assert_eq!(c.sequence, 3);
        assert_eq!(c.issued_at.timestamp_millis(), 1_700_000_000_123);
        assert!(parse_holder(7, "u1", "ABC|x|1").is_none());
        assert!(parse_holder(7, "u1", "ABC").is_none());
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields.iter().flat_map(|(f, v)| [bulk(f), bulk(v)]);
        Value::Array(vec![bulk(id), Value::Array(fields.collect())])
    }

    /// An entry as issue.lua writes it.
    fn issued(id: &str, seq: &str) -> Value {
        let packed = format!("e1|u1|C0DE|{seq}|1700000000123|00-ab-cd-01");
        entry(id, &[("issued", &packed)])
    }

    #[test]
    fn outbox_replies_of_either_protocol_become_entries() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("c:7:outbox"),
            Value::Array(vec![issued("1-0", "1"), issued("1-1", "2")]),
        ])]);
        let entries = outbox_entries(7, stream_entries(resp2).unwrap());
        assert_eq!(entries.len(), 2);
        let first = &entries[0];
        assert_eq!(
            (first.stream_id.as_str(), first.campaign_id, first.sequence),
            ("1-0", 7, 1)
        );
        assert_eq!(
            (first.event_id.as_str(), first.user_id.as_str()),
            ("e1", "u1")
        );
        assert_eq!(
            (first.coupon_code.as_str(), first.traceparent.as_str()),
            ("C0DE", "00-ab-cd-01")
        );
        assert_eq!(first.issued_at.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(entries[1].stream_id, "1-1");

        let resp3 = Value::Map(vec![(
            bulk("c:7:outbox"),
            Value::Array(vec![issued("2-0", "3")]),
        )]);
        let entries = outbox_entries(7, stream_entries(resp3).unwrap());
        assert_eq!(entries.iter().map(|e| e.sequence).collect::<Vec<_>>(), [3]);

        assert!(stream_entries(Value::Nil).unwrap().is_empty());
        assert!(stream_entries(Value::Int(3)).is_err());
    }

    #[test]
    fn entries_written_before_the_packed_field_are_still_read() {
        let legacy = entry(
            "1-0",
            &[
                ("event_id", "e1"),
                ("user_id", "u1"),
                ("code", "C0DE"),
                ("seq", "4"),
                ("ts", "1700000000123"),
                ("tp", "00-ab-cd-01"),
            ],
        );
        let read = outbox_entry(7, legacy).unwrap();
        let packed = outbox_entry(7, issued("1-0", "4")).unwrap();
        assert_eq!(
            (
                read.event_id,
                read.user_id,
                read.coupon_code,
                read.traceparent
            ),
            (
                packed.event_id,
                packed.user_id,
                packed.coupon_code,
                packed.traceparent
            )
        );
        assert_eq!(
            (read.sequence, read.issued_at),
            (packed.sequence, packed.issued_at)
        );
    }

    #[test]
    fn a_reenqueued_coupon_reads_back_as_the_same_coupon_with_a_new_event() {
        let coupon = Coupon {
            coupon_code: "C0DE".into(),
            campaign_id: 7,
            user_id: "u1".into(),
            sequence: 9,
            issued_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
        };
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let value = outbox_value(&coupon, traceparent);
        let read = outbox_entry(7, entry("1-0", &[("issued", &value)])).unwrap();
        assert_eq!(
            (
                read.user_id.as_str(),
                read.coupon_code.as_str(),
                read.sequence
            ),
            ("u1", "C0DE", 9)
        );
        assert_eq!(
            (read.issued_at, read.traceparent.as_str()),
            (coupon.issued_at, traceparent)
        );
        let untraced = outbox_entry(7, entry("1-1", &[("issued", &outbox_value(&coupon, ""))]));
        assert_eq!(untraced.unwrap().traceparent, "");
        assert!(
            uuid::Uuid::parse_str(&read.event_id).is_ok(),
            "{}",
            read.event_id
        );
    }

    #[test]
    fn a_malformed_outbox_entry_is_left_out_and_the_rest_kept() {
        let without_code = entry("1-1", &[("issued", "e|u||2|1|")]);
        let bad_seq = issued("1-2", "two");
        let too_many = entry("1-3", &[("issued", "e|u|C|2|1|tp|x")]);
        // What Redis before 7.0 claims for an entry deleted while pending.
        let deleted = Value::Array(vec![bulk("1-4"), Value::Nil]);
        let legacy_without_ts = entry(
            "1-5",
            &[
                ("event_id", "e"),
                ("user_id", "u"),
                ("code", "C"),
                ("seq", "6"),
            ],
        );
        let entries = outbox_entries(
            7,
            vec![
                issued("1-0", "1"),
                without_code.clone(),
                bad_seq.clone(),
                too_many.clone(),
                deleted,
                legacy_without_ts.clone(),
                issued("1-6", "5"),
            ],
        );
        let ids: Vec<_> = entries.iter().map(|e| e.stream_id.as_str()).collect();
        assert_eq!(ids, ["1-0", "1-6"]);
        let problem = outbox_entry(7, without_code).unwrap_err();
        assert!(
            problem.contains("1-1") && problem.contains("code"),
            "{problem}"
        );
        assert!(outbox_entry(7, bad_seq).unwrap_err().contains("sequence"));
        assert!(outbox_entry(7, too_many).unwrap_err().contains("six"));
        assert!(outbox_entry(7, legacy_without_ts)
            .unwrap_err()
            .contains("issued_at"));
    }
}
