//! A campaign's state in Redis, in its hash slot `{c:<id>}`: the `meta` hash (stock,
//! window, brake, issued counter), the `holders` hash (shopper -> coupon), and the
//! `campaigns` set of armed ones. The issuance itself ([`RedisStore::issue`], the
//! whole rule in issue.lua), arming and catching up after Redis lost writes, the
//! brake, live figures, and the walks reconciliation makes over the holders.

use chrono::{DateTime, TimeZone, Utc};
use redis::AsyncCommands;

use super::{RedisStore, StoreError, StoreResult, PAGE, RELAY_GROUP};
use crate::domain::{CampaignId, Coupon, IssueOutcome, NotOpenReason, UserId};

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

impl RedisStore {
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
}

/// A holders entry: `code|sequence|issued_at_ms`.
pub(super) fn holder_value(c: &Coupon) -> String {
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
}
