//! Reconciliation of the three places a coupon lives: Redis (the record of
//! issuance: holders and issued counter), its outbox (coupons not yet delivered to
//! Kafka) and MySQL. [`compare`] is the pure rule; [`Reconciler`] reads the stores,
//! exports `reconcile_differences`, and repairs: coupons missing from MySQL are put
//! back into the outbox, coupons Redis lost are restored into Redis. The service
//! runs [`run_periodic`] (which also re-arms live campaigns Redis lost entirely);
//! on-call runs `flashcoupon reconcile`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::domain::{Campaign, CampaignId, Coupon};
use crate::issuance::{IssuanceService, ServiceError};
use crate::persistence::Database;
use crate::store::RedisStore;
use crate::telemetry::metrics;

/// What differs for one campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    /// Issued by Redis more than the grace period ago, not in the outbox, not in MySQL.
    pub missing_in_mysql: Vec<Coupon>,
    /// In MySQL, unknown to Redis: Redis lost writes.
    pub extra_in_mysql: Vec<Coupon>,
    /// Same shopper, different coupon code in Redis and MySQL.
    pub code_mismatch: Vec<(Coupon, Coupon)>,
    /// Redis's issued counter is below what the coupons prove was issued:
    /// (counter, floor).
    pub issued_behind: Option<(i64, i64)>,
    /// Recent coupons not yet in MySQL (in the outbox or in flight): not a difference.
    pub in_flight: usize,
}

impl Differences {
    pub fn is_clean(&self) -> bool {
        self.missing_in_mysql.is_empty()
            && self.extra_in_mysql.is_empty()
            && self.code_mismatch.is_empty()
            && self.issued_behind.is_none()
    }

    /// Redis knows less than MySQL: it must catch up before it issues more.
    pub fn redis_behind(&self) -> bool {
        !self.extra_in_mysql.is_empty() || self.issued_behind.is_some()
    }
}

/// The least the issued counter can be: every coupon known to either store was
/// issued, so neither the highest sequence nor the number of distinct shoppers can
/// exceed it.
fn issued_floor(redis: &[Coupon], mysql: &[Coupon]) -> i64 {
    let shoppers: HashSet<&str> = redis
        .iter()
        .chain(mysql)
        .map(|c| c.user_id.as_str())
        .collect();
    redis
        .iter()
        .chain(mysql)
        .map(|c| c.sequence)
        .max()
        .unwrap_or(0)
        .max(shoppers.len() as i64)
}

/// The rule. `redis_issued` is None when the campaign is not armed (then nothing
/// is compared: arming restores it from MySQL). A coupon Redis issued is in flight,
/// not missing, while it is still in the outbox or younger than `grace`.
pub fn compare(
    redis_issued: Option<i64>,
    redis: &[Coupon],
    outbox_users: &HashSet<String>,
    mysql: &[Coupon],
    now: DateTime<Utc>,
    grace: Duration,
) -> Differences {
    let Some(issued) = redis_issued else {
        return Differences::default();
    };
    let mut out = Differences::default();
    let in_mysql: HashMap<&str, &Coupon> = mysql.iter().map(|c| (c.user_id.as_str(), c)).collect();
    let in_redis: HashSet<&str> = redis.iter().map(|c| c.user_id.as_str()).collect();
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    for coupon in redis {
        match in_mysql.get(coupon.user_id.as_str()) {
            Some(stored) if stored.coupon_code != coupon.coupon_code => {
                out.code_mismatch.push((coupon.clone(), (*stored).clone()))
            }
            Some(_) => {}
            None if outbox_users.contains(&coupon.user_id) || now - coupon.issued_at < grace => {
                out.in_flight += 1
            }
            None => out.missing_in_mysql.push(coupon.clone()),
        }
    }
    out.extra_in_mysql = mysql
        .iter()
        .filter(|c| !in_redis.contains(c.user_id.as_str()))
        .cloned()
        .collect();
    let floor = issued_floor(redis, mysql);
    if issued < floor {
        out.issued_behind = Some((issued, floor));
    }
    out
}

/// One campaign's report.
#[derive(Debug, Clone)]
pub struct Report {
    pub campaign_id: CampaignId,
    pub armed: bool,
    pub redis_issued: i64,
    pub redis_holders: usize,
    pub outbox_pending: usize,
    pub mysql_rows: usize,
    pub differences: Differences,
}

/// What a repair did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    pub reenqueued: usize,
    pub restored_in_redis: usize,
}

#[derive(Clone)]
pub struct Reconciler {
    store: RedisStore,
    db: Database,
    grace: Duration,
    /// Re-arms campaigns Redis lost entirely, by the start-up rule.
    issuance: IssuanceService,
}

impl Reconciler {
    pub fn new(store: RedisStore, db: Database, grace: Duration) -> Self {
        let issuance = IssuanceService::new(store.clone(), db.clone());
        Self {
            store,
            db,
            grace,
            issuance,
        }
    }

    /// Live campaigns whose keys Redis lost entirely (a restart without persistence,
    /// a flushed database) are armed again from MySQL: holders first, then the
    /// issued counter, so given-away stock is never handed out again. Returns how
    /// many had to be armed. Until this runs such a campaign answers 503.
    pub async fn rearm_lost_campaigns(&self) -> Result<usize, ServiceError> {
        let armed = self.issuance.arm_live_campaigns().await?;
        if armed > 0 {
            tracing::warn!(armed, "reconcile: re-armed campaigns redis had lost");
        }
        Ok(armed)
    }

    /// Reads Redis, the outbox and MySQL for one campaign and compares them.
    /// `progress` gets the number of Redis holders read so far.
    pub async fn check(
        &self,
        campaign: CampaignId,
        progress: impl FnMut(usize),
    ) -> Result<Report, ServiceError> {
        let figures = self.store.figures(campaign).await?;
        // Redis first, MySQL second: a coupon issued in between is in flight.
        let redis = match figures {
            Some(_) => self.store.all_holders(campaign, progress).await?,
            None => Vec::new(),
        };
        let outbox = self.store.outbox_entries(campaign).await?;
        let mysql = self
            .db
            .coupons_of_campaign(campaign)
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let outbox_users: HashSet<String> = outbox.iter().map(|e| e.user_id.clone()).collect();
        let differences = compare(
            figures.map(|f| f.issued),
            &redis,
            &outbox_users,
            &mysql,
            Utc::now(),
            self.grace,
        );
        Ok(Report {
            campaign_id: campaign,
            armed: figures.is_some(),
            redis_issued: figures.map(|f| f.issued).unwrap_or(0),
            redis_holders: redis.len(),
            outbox_pending: outbox.len(),
            mysql_rows: mysql.len(),
            differences,
        })
    }

    /// Sets `reconcile_differences{campaign_id, kind}` from a report.
    pub fn export(report: &Report) {
        let d = &report.differences;
        let m = metrics::get();
        let id = report.campaign_id;
        m.set_reconcile_difference(id, "missing_in_mysql", d.missing_in_mysql.len() as i64);
        m.set_reconcile_difference(id, "extra_in_mysql", d.extra_in_mysql.len() as i64);
        m.set_reconcile_difference(id, "code_mismatch", d.code_mismatch.len() as i64);
    }

    /// Redis catches up with MySQL (lost holders back, issued counter raised), then
    /// coupons missing from MySQL go back into the outbox for the relay.
    pub async fn repair(&self, report: &Report) -> Result<Repaired, ServiceError> {
        let restored_in_redis = self.catch_up_redis(report).await?;
        let d = &report.differences;
        let mut reenqueued = 0;
        if !d.missing_in_mysql.is_empty() {
            reenqueued = self
                .store
                .reenqueue(report.campaign_id, &d.missing_in_mysql)
                .await?;
            tracing::warn!(
                campaign_id = report.campaign_id,
                reenqueued,
                "coupons missing from mysql put back into the outbox"
            );
        }
        Ok(Repaired {
            reenqueued,
            restored_in_redis,
        })
    }

    /// The automatic half of [`Reconciler::repair`]: an armed campaign whose Redis is
    /// behind MySQL gets its lost holders back and its counter raised. Returns the
    /// holders restored.
    pub async fn catch_up_redis(&self, report: &Report) -> Result<usize, ServiceError> {
        let d = &report.differences;
        if !(report.armed && d.redis_behind()) {
            return Ok(0);
        }
        let floor = d.issued_behind.map(|(_, floor)| floor).unwrap_or(0);
        let restored = self
            .store
            .catch_up(report.campaign_id, &d.extra_in_mysql, floor)
            .await?
            .unwrap_or(0);
        tracing::warn!(
            campaign_id = report.campaign_id,
            restored,
            issued_floor = floor,
            "redis was behind mysql; caught up"
        );
        Ok(restored)
    }

    /// Campaigns worth checking: not ended, or ended within `lookback`.
    pub async fn recent_campaigns(
        &self,
        lookback: Duration,
    ) -> Result<Vec<Campaign>, ServiceError> {
        let since = Utc::now() - chrono::Duration::from_std(lookback).unwrap_or_default();
        self.db
            .live_campaigns(since)
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))
    }
}

/// The service's scheduled pass: every `interval`, re-arms live campaigns Redis lost
/// entirely, checks recent campaigns, exports the gauges and, where Redis is behind
/// MySQL, catches Redis up at once (stock given away must never be handed out
/// again). Missing MySQL rows are only reported: the alert sends on-call to
/// `flashcoupon reconcile --repair`.
pub async fn run_periodic(
    reconciler: Reconciler,
    interval: Duration,
    lookback: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = reconciler.rearm_lost_campaigns().await {
            tracing::warn!(error = %err, "reconcile: re-arm of lost campaigns failed");
        }
        let campaigns = match reconciler.recent_campaigns(lookback).await {
            Ok(campaigns) => campaigns,
            Err(err) => {
                tracing::warn!(error = %err, "reconcile pass skipped");
                continue;
            }
        };
        for campaign in campaigns {
            if shutdown.is_cancelled() {
                return;
            }
            match reconciler.check(campaign.id, |_| {}).await {
                Ok(report) => {
                    Reconciler::export(&report);
                    if let Err(err) = reconciler.catch_up_redis(&report).await {
                        tracing::warn!(campaign_id = campaign.id, error = %err, "catch-up failed");
                    }
                }
                Err(err) => {
                    tracing::warn!(campaign_id = campaign.id, error = %err, "reconcile check failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn coupon(user: &str, code: &str, seq: i64, at_secs: i64) -> Coupon {
        Coupon {
            coupon_code: code.into(),
            campaign_id: 1,
            user_id: user.into(),
            sequence: seq,
            issued_at: Utc.timestamp_opt(at_secs, 0).unwrap(),
        }
    }

    const GRACE: Duration = Duration::from_secs(60);

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(10_000, 0).unwrap()
    }

    #[test]
    fn matching_stores_are_clean() {
        let both = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let d = compare(Some(2), &both, &HashSet::new(), &both, now(), GRACE);
        assert!(d.is_clean(), "{d:?}");
        assert_eq!(d.in_flight, 0);
    }

    #[test]
    fn old_coupon_absent_from_mysql_and_outbox_is_missing_but_recent_or_queued_is_in_flight() {
        let redis = vec![
            coupon("old", "O", 1, 100),
            coupon("queued", "Q", 2, 100),
            coupon("recent", "R", 3, 9_990),
        ];
        let outbox = HashSet::from(["queued".to_owned()]);
        let d = compare(Some(3), &redis, &outbox, &[], now(), GRACE);
        assert_eq!(d.missing_in_mysql, vec![coupon("old", "O", 1, 100)]);
        assert_eq!(d.in_flight, 2);
        assert!(!d.redis_behind());
    }

    #[test]
    fn mysql_rows_unknown_to_redis_and_a_low_counter_mean_redis_is_behind() {
        let mysql = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let redis = vec![coupon("a", "A", 1, 100)];
        let d = compare(Some(1), &redis, &HashSet::new(), &mysql, now(), GRACE);
        assert_eq!(d.extra_in_mysql, vec![coupon("b", "B", 2, 100)]);
        assert_eq!(d.issued_behind, Some((1, 2)));
        assert!(d.redis_behind());
        // An emptied Redis with a counter that survived is still behind on holders.
        let d = compare(Some(2), &[], &HashSet::new(), &mysql, now(), GRACE);
        assert_eq!(d.extra_in_mysql.len(), 2);
        assert_eq!(d.issued_behind, None);
    }

    #[test]
    fn coupons_redis_still_holds_count_towards_the_floor() {
        // Redis kept "c" (sequence 3) but its counter fell to 1; MySQL lost "c".
        let redis = vec![coupon("a", "A", 1, 100), coupon("c", "C", 3, 100)];
        let mysql = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let d = compare(Some(1), &redis, &HashSet::new(), &mysql, now(), GRACE);
        assert_eq!(d.issued_behind, Some((1, 3)));
        assert_eq!(d.missing_in_mysql.len(), 1);
        assert_eq!(d.extra_in_mysql.len(), 1);
    }

    #[test]
    fn a_different_code_for_the_same_shopper_is_a_mismatch() {
        let d = compare(
            Some(1),
            &[coupon("a", "A", 1, 100)],
            &HashSet::new(),
            &[coupon("a", "Z", 1, 100)],
            now(),
            GRACE,
        );
        assert_eq!(d.code_mismatch.len(), 1);
        assert!(!d.is_clean());
    }

    #[test]
    fn an_unarmed_campaign_is_not_compared() {
        let mysql = vec![coupon("a", "A", 1, 100)];
        assert!(compare(None, &[], &HashSet::new(), &mysql, now(), GRACE).is_clean());
    }
}
