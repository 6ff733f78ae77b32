//! Reconciliation of the three places a coupon lives: Redis (the record of
//! issuance: holders and issued counter), its outbox (coupons not yet delivered to
//! Kafka) and MySQL. [`Comparison`] is the pure rule, fed a page at a time;
//! [`Reconciler`] walks the stores page by page (so a check holds one page of
//! 1,000 coupons, not the campaign), exports `reconcile_differences`, and repairs:
//! coupons missing from MySQL are put back into the outbox, coupons Redis lost
//! are restored into Redis. The service runs [`run_periodic`] on one instance at a
//! time (a Redis lease); it also re-arms live campaigns Redis lost entirely, and
//! skips a campaign whose counts have not moved since it was last found settled.
//! On-call runs `flashcoupon reconcile`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fixedbitset::FixedBitSet;
use tokio_util::sync::CancellationToken;

use crate::domain::{Campaign, CampaignId, Coupon};
use crate::issuance::{IssuanceService, ServiceError};
use crate::persistence::Database;
use crate::store::{RedisStore, PAGE};
use crate::telemetry::{metrics, trace};

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

/// Sequences above this are counted without de-duplication (a bit each would cost
/// more than it saves); issue.lua numbers coupons 1, 2, 3... up to the stock.
const MAX_TRACKED_SEQUENCE: i64 = 1 << 30;

/// The rule, fed page by page:
/// 1. [`Self::holders`]: a page of Redis holders with the MySQL rows of the same
///    shoppers. Same code: matched. Other code: a mismatch. No row: in flight when
///    younger than the grace period, else a suspect;
/// 2. [`Self::in_outbox`]: suspects still in the outbox are in flight;
/// 3. [`Self::holders`] again with the suspects left, for rows persisted meanwhile;
/// 4. if MySQL has more rows than were matched, [`Self::unknown_to_redis`] gets
///    the rows whose shopper Redis does not hold;
/// 5. [`Self::finish`] with the issued counter read last: the suspects left are
///    missing, and the counter must reach the floor (highest sequence, distinct
///    shoppers) the coupons prove.
///
/// A holder HSCAN returns twice (the hash grew during the scan) counts once: the
/// sequences seen are kept in a bit set.
///
/// The scheduled pass may [`Self::trust`] what an earlier pass settled: holders
/// up to a sequence were then matched, so they count as matched without asking
/// MySQL again, and only newer coupons are looked up.
pub struct Comparison {
    now: DateTime<Utc>,
    grace: chrono::Duration,
    seen: FixedBitSet,
    holders: usize,
    matched: usize,
    max_sequence: i64,
    trusted_up_to: i64,
    /// Lowest sequence of a holder not matched with its own code in MySQL.
    lowest_unsettled: Option<i64>,
    suspects: Vec<Coupon>,
    out: Differences,
}

impl Comparison {
    pub fn new(now: DateTime<Utc>, grace: Duration) -> Self {
        Self {
            now,
            grace: chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX),
            seen: FixedBitSet::new(),
            holders: 0,
            matched: 0,
            max_sequence: 0,
            trusted_up_to: 0,
            lowest_unsettled: None,
            suspects: Vec::new(),
            out: Differences::default(),
        }
    }

    /// Counts holders up to `sequence` as matched, as an earlier pass found them.
    pub fn trust(mut self, sequence: i64) -> Self {
        self.trusted_up_to = sequence.max(0);
        self
    }

    /// Whether MySQL must be asked about this holder (it is newer than the trust).
    pub fn needs_lookup(&self, coupon: &Coupon) -> bool {
        coupon.sequence > self.trusted_up_to || coupon.sequence < 1
    }

    /// Every holder up to this sequence was matched with its own code (the whole
    /// walk if none was left unmatched): what a later pass may trust.
    pub fn settled_up_to(&self) -> i64 {
        match self.lowest_unsettled {
            Some(lowest) => lowest - 1,
            None => self.max_sequence,
        }
    }

    fn unsettled(&mut self, sequence: i64) {
        self.lowest_unsettled = Some(self.lowest_unsettled.map_or(sequence, |l| l.min(sequence)));
    }

    /// True the first time a holder's sequence is seen.
    fn first_sight(&mut self, sequence: i64) -> bool {
        if !(1..=MAX_TRACKED_SEQUENCE).contains(&sequence) {
            return true;
        }
        let bit = sequence as usize;
        if bit >= self.seen.len() {
            self.seen.grow((bit + 1).next_power_of_two());
        }
        !self.seen.put(bit)
    }

    /// A page of Redis holders and the MySQL rows of those shoppers.
    pub fn holders(&mut self, redis: &[Coupon], mysql: &[Coupon]) {
        let stored: HashMap<&str, &Coupon> =
            mysql.iter().map(|c| (c.user_id.as_str(), c)).collect();
        for coupon in redis {
            if !self.first_sight(coupon.sequence) {
                continue;
            }
            self.holders += 1;
            self.max_sequence = self.max_sequence.max(coupon.sequence);
            if self.needs_lookup(coupon) {
                self.place(coupon, stored.get(coupon.user_id.as_str()).copied());
            } else {
                self.matched += 1;
            }
        }
    }

    fn place(&mut self, coupon: &Coupon, stored: Option<&Coupon>) {
        match stored {
            Some(stored) => {
                self.matched += 1;
                self.max_sequence = self.max_sequence.max(stored.sequence);
                if stored.coupon_code != coupon.coupon_code {
                    self.unsettled(coupon.sequence);
                    self.out
                        .code_mismatch
                        .push((coupon.clone(), stored.clone()));
                }
            }
            None => {
                self.unsettled(coupon.sequence);
                if self.now - coupon.issued_at < self.grace {
                    self.out.in_flight += 1
                } else {
                    self.suspects.push(coupon.clone())
                }
            }
        }
    }

    /// Whether coupons old enough to be missing were absent from MySQL when their
    /// page was read: look for them in the outbox, then in MySQL again.
    pub fn has_suspects(&self) -> bool {
        !self.suspects.is_empty()
    }

    /// The suspects left after the outbox, for [`Self::recheck`].
    pub fn take_suspects(&mut self) -> Vec<Coupon> {
        std::mem::take(&mut self.suspects)
    }

    /// The shoppers of one page of the outbox: suspects among them are in flight.
    pub fn in_outbox<'a>(&mut self, users: impl IntoIterator<Item = &'a str>) {
        if self.suspects.is_empty() {
            return;
        }
        let queued: HashSet<&str> = users.into_iter().collect();
        let before = self.suspects.len();
        self.suspects
            .retain(|c| !queued.contains(c.user_id.as_str()));
        self.out.in_flight += before - self.suspects.len();
    }

    /// Suspects (from [`Self::take_suspects`]) checked against MySQL once more.
    pub fn recheck(&mut self, suspects: &[Coupon], mysql: &[Coupon]) {
        let stored: HashMap<&str, &Coupon> =
            mysql.iter().map(|c| (c.user_id.as_str(), c)).collect();
        for coupon in suspects {
            match stored.get(coupon.user_id.as_str()) {
                Some(row) => self.place(coupon, Some(row)),
                None => self.suspects.push(coupon.clone()),
            }
        }
    }

    /// Whether MySQL's `rows` are more than the holders matched: only then can a
    /// row be unknown to Redis, and the rows must be walked.
    pub fn mysql_has_unmatched(&self, rows: u64) -> bool {
        rows > self.matched as u64
    }

    /// Rows of MySQL whose shopper Redis does not hold.
    pub fn unknown_to_redis(&mut self, rows: impl IntoIterator<Item = Coupon>) {
        for row in rows {
            self.max_sequence = self.max_sequence.max(row.sequence);
            self.out.extra_in_mysql.push(row);
        }
    }

    /// The verdict. `redis_issued` is the issued counter read after every page, so
    /// coupons issued during the walk are below it. Every coupon known to either
    /// store was issued, so neither the highest sequence nor the number of distinct
    /// shoppers can exceed the counter.
    pub fn finish(mut self, redis_issued: i64) -> Differences {
        let floor = self
            .max_sequence
            .max((self.holders + self.out.extra_in_mysql.len()) as i64);
        if redis_issued < floor {
            self.out.issued_behind = Some((redis_issued, floor));
        }
        self.out.missing_in_mysql = self.suspects;
        self.out
    }

    /// Distinct holders seen.
    pub fn holders_seen(&self) -> usize {
        self.holders
    }
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
    /// Holders up to this sequence were matched with their own code in MySQL.
    pub settled_up_to: i64,
}

impl Report {
    /// Nothing differs and nothing is on its way: the campaign is settled until
    /// one of its counts moves.
    pub fn settled(&self) -> bool {
        self.differences.is_clean() && self.differences.in_flight == 0 && self.outbox_pending == 0
    }
}

/// What a repair did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    pub reenqueued: usize,
    pub restored_in_redis: usize,
}

/// The counts of one campaign, read cheaply before a check: issued counter,
/// holders, outbox length (Redis) and rows (MySQL). A settled campaign whose counts
/// are unchanged needs no new walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// None while the campaign is not armed in Redis.
    pub redis: Option<RedisCounts>,
    pub mysql_rows: u64,
}

/// What Redis holds of a campaign: the fields of [`crate::store::LiveFigures`] that a
/// pass compares (not the pause flag, which changes no coupon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisCounts {
    pub issued: i64,
    pub holders: i64,
    pub pending_events: i64,
}

#[derive(Clone)]
pub struct Reconciler {
    store: RedisStore,
    db: Database,
    grace: Duration,
    /// After each page, a pause of this many times the page's own time, so a
    /// scheduled pass over a large campaign leaves the CPU (its own, Redis's and
    /// MariaDB's) to shoppers; zero for on-call's CLI.
    pace: u32,
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
            pace: 0,
            issuance,
        }
    }

    /// Re-arms lost campaigns only once the persister has caught up (see
    /// [`IssuanceService::with_persister_gate`]).
    pub fn with_persister_gate(
        mut self,
        gate: crate::events::persister_gate::PersisterGate,
    ) -> Self {
        self.issuance = self.issuance.with_persister_gate(gate);
        self
    }

    /// Pauses `pace` times each page's own time after it: the walk works for at
    /// most 1 / (1 + pace) of its time.
    pub fn with_pace(mut self, pace: u32) -> Self {
        self.pace = pace;
        self
    }

    async fn breathe(&self, page_started: Instant) {
        if self.pace > 0 {
            tokio::time::sleep(page_started.elapsed() * self.pace).await;
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

    /// Armed campaigns that are not among `recent` (they ended before the lookback)
    /// and have nothing in flight (outbox empty, every coupon in MySQL) are retired:
    /// the relay's passes and `/me/coupons` then cost what the live and recent
    /// campaigns cost, not every campaign ever run. Returns how many.
    pub async fn retire_settled(&self, recent: &[Campaign]) -> Result<usize, ServiceError> {
        let mut retired = 0;
        for id in self.store.armed_campaigns().await? {
            if recent.iter().any(|c| c.id == id) {
                continue;
            }
            // Settled: Redis knows it, its outbox is empty, MySQL has every coupon.
            let counts = self.counts(id).await?;
            let settled = match counts.redis {
                Some(redis) => {
                    redis.pending_events == 0 && redis.issued == counts.mysql_rows as i64
                }
                None => false,
            };
            if settled {
                self.store.retire(id).await?;
                tracing::info!(
                    campaign_id = id,
                    "reconcile: ended campaign retired from the relay's set"
                );
                retired += 1;
            }
        }
        Ok(retired)
    }

    /// Coupon rows of the campaign in MySQL.
    async fn mysql_rows(&self, campaign: CampaignId) -> Result<u64, ServiceError> {
        let rows = self.db.persisted_count(campaign).await?;
        Ok(rows as u64)
    }

    /// MySQL's rows for these shoppers of the campaign.
    async fn mysql_coupons_of(
        &self,
        campaign: CampaignId,
        users: &[&str],
    ) -> Result<Vec<Coupon>, ServiceError> {
        Ok(self.db.coupons_of_users(campaign, users).await?)
    }

    /// Issued counter, holders and outbox length in Redis, and rows in MySQL.
    pub async fn counts(&self, campaign: CampaignId) -> Result<Counts, ServiceError> {
        let redis = self.store.figures(campaign).await?.map(|f| RedisCounts {
            issued: f.issued,
            holders: f.holders,
            pending_events: f.pending_events,
        });
        let mysql_rows = self.mysql_rows(campaign).await?;
        Ok(Counts { redis, mysql_rows })
    }

    /// Walks Redis, the outbox and MySQL for one campaign, a page at a time, and
    /// compares them (see [`Comparison`] for the steps). `progress` gets the number
    /// of Redis holders read so far.
    pub async fn check(
        &self,
        campaign: CampaignId,
        progress: impl FnMut(usize),
    ) -> Result<Report, ServiceError> {
        self.check_trusting(campaign, 0, progress).await
    }

    /// [`Self::check`], trusting that holders up to sequence `trusted` are in MySQL
    /// with their code (an earlier pass's [`Report::settled_up_to`]).
    pub async fn check_trusting(
        &self,
        campaign: CampaignId,
        trusted: i64,
        mut progress: impl FnMut(usize),
    ) -> Result<Report, ServiceError> {
        let Some(_) = self.store.figures(campaign).await? else {
            // Not armed: nothing to compare (arming restores Redis from MySQL).
            let mysql_rows = self.mysql_rows(campaign).await? as usize;
            return Ok(Report {
                campaign_id: campaign,
                armed: false,
                redis_issued: 0,
                redis_holders: 0,
                outbox_pending: 0,
                mysql_rows,
                differences: Differences::default(),
                settled_up_to: 0,
            });
        };
        let mut comparison = Comparison::new(Utc::now(), self.grace).trust(trusted);
        // 1. Holders, each page against MySQL (Redis first: a coupon issued after
        //    its page was read is simply not seen).
        let mut cursor = 0;
        loop {
            let page_started = Instant::now();
            let (next, page) = self.store.holders_page(campaign, cursor).await?;
            let users: Vec<&str> = page
                .iter()
                .filter(|c| comparison.needs_lookup(c))
                .map(|c| c.user_id.as_str())
                .collect();
            let rows = self.mysql_coupons_of(campaign, &users).await?;
            comparison.holders(&page, &rows);
            progress(comparison.holders_seen());
            if next == 0 {
                break;
            }
            cursor = next;
            self.breathe(page_started).await;
        }
        // 2. and 3. Old coupons MySQL lacked: in the outbox, or persisted since?
        if comparison.has_suspects() {
            let mut after: Option<String> = None;
            loop {
                let page_started = Instant::now();
                let (entries, next) = self.store.outbox_page(campaign, after.as_deref()).await?;
                comparison.in_outbox(entries.iter().map(|e| e.user_id.as_str()));
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
                self.breathe(page_started).await;
            }
            let left = comparison.take_suspects();
            for chunk in left.chunks(PAGE) {
                let page_started = Instant::now();
                let users: Vec<&str> = chunk.iter().map(|c| c.user_id.as_str()).collect();
                let rows = self.mysql_coupons_of(campaign, &users).await?;
                comparison.recheck(chunk, &rows);
                self.breathe(page_started).await;
            }
        }
        // 4. Rows Redis does not know, only if MySQL has more than were matched.
        let mysql_rows = self.mysql_rows(campaign).await?;
        if comparison.mysql_has_unmatched(mysql_rows) {
            let mut after: Option<String> = None;
            loop {
                let page_started = Instant::now();
                let rows = self
                    .db
                    .coupons_page(campaign, after.as_deref(), PAGE as u64)
                    .await?;
                let users: Vec<&str> = rows.iter().map(|c| c.user_id.as_str()).collect();
                let known = self.store.known_holders(campaign, &users).await?;
                after = rows.last().map(|c| c.user_id.clone());
                let full = rows.len() == PAGE;
                comparison.unknown_to_redis(
                    rows.into_iter()
                        .zip(known)
                        .filter(|(_, known)| !known)
                        .map(|(row, _)| row),
                );
                if !full {
                    break;
                }
                self.breathe(page_started).await;
            }
        }
        // 5. The counter, read last.
        let figures = self.store.figures(campaign).await?;
        let redis_issued = figures.map(|f| f.issued).unwrap_or(0);
        let redis_holders = comparison.holders_seen();
        Ok(Report {
            campaign_id: campaign,
            armed: figures.is_some(),
            redis_issued,
            redis_holders,
            outbox_pending: figures
                .map(|f| f.pending_events.max(0) as usize)
                .unwrap_or(0),
            mysql_rows: mysql_rows as usize,
            settled_up_to: comparison.settled_up_to(),
            differences: comparison.finish(redis_issued),
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
    /// coupons missing from MySQL go back into the outbox for the relay, their events
    /// in this repair's trace.
    #[tracing::instrument(name = "reconcile.repair", skip_all, fields(campaign_id = report.campaign_id))]
    pub async fn repair(&self, report: &Report) -> Result<Repaired, ServiceError> {
        let restored_in_redis = self.catch_up_redis(report).await?;
        let d = &report.differences;
        let mut reenqueued = 0;
        if !d.missing_in_mysql.is_empty() {
            let traceparent = trace::traceparent_of(&tracing::Span::current());
            reenqueued = self
                .store
                .reenqueue(report.campaign_id, &d.missing_in_mysql, &traceparent)
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
        Ok(self.db.live_campaigns(since).await?)
    }
}

/// Role of the scheduled pass in [`RedisStore::hold_lease`].
const LEASE_ROLE: &str = "reconcile";

/// The scheduled pass rests three times as long as each page took: it works a
/// quarter of the time (a campaign of 350,000 holders is 350 pages, some seconds of
/// work spread over tens of seconds), so shoppers keep the CPU during an event.
const SCHEDULED_PACE: u32 = 3;

/// A full walk, trusting nothing, at least every this many walks of a campaign
/// whose counts keep moving (ten minutes at the default interval).
const FULL_WALK_EVERY: u32 = 10;

/// What the scheduled pass remembers of a campaign from its last walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    pub counts: Counts,
    /// Nothing differed and nothing was in flight.
    pub settled: bool,
    /// Holders up to this sequence were matched (0 when something differed).
    pub settled_up_to: i64,
    /// Walks since the last full one.
    pub walks_since_full: u32,
}

/// What the next pass does with one campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Settled, and no count moved since: nothing to walk.
    Skip,
    /// Walk, trusting holders up to this sequence (0: a full walk).
    Walk { trusted: i64 },
}

/// The rule of the scheduled pass: skip a settled campaign whose counts did not
/// move; walk only the new coupons of one that grew; walk everything the first
/// time, when a count went back (Redis or MySQL lost something), and every
/// [`FULL_WALK_EVERY`] walks.
pub fn plan(last: Option<&Remembered>, now: &Counts) -> Plan {
    let Some(last) = last else {
        return Plan::Walk { trusted: 0 };
    };
    if last.settled && last.counts == *now {
        return Plan::Skip;
    }
    let went_back = match (last.counts.redis, now.redis) {
        (Some(then), Some(now)) => now.issued < then.issued || now.holders < then.holders,
        _ => true,
    } || now.mysql_rows < last.counts.mysql_rows;
    if went_back || last.walks_since_full + 1 >= FULL_WALK_EVERY {
        Plan::Walk { trusted: 0 }
    } else {
        Plan::Walk {
            trusted: last.settled_up_to,
        }
    }
}

/// The service's scheduled pass: every `interval`, the instance holding the lease
/// (`<prefix>reconcile:leader`, kept for three intervals) re-arms live campaigns
/// Redis lost entirely, checks recent campaigns by [`plan`], exports the gauges
/// and, where Redis is behind MySQL, catches Redis up at once (stock given away
/// must never be handed out again). Missing MySQL rows are only reported: the
/// alert sends on-call to `flashcoupon reconcile --repair`.
pub async fn run_periodic(
    reconciler: Reconciler,
    interval: Duration,
    lookback: Duration,
    shutdown: CancellationToken,
) {
    let reconciler = reconciler.with_pace(SCHEDULED_PACE);
    let owner = uuid::Uuid::new_v4().to_string();
    let mut memory: HashMap<CampaignId, Remembered> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match reconciler
            .store
            .hold_lease(LEASE_ROLE, &owner, interval * 3)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Another instance runs the pass; start afresh if this one takes over.
                memory.clear();
                continue;
            }
            Err(err) => {
                tracing::debug!(error = %err, "reconcile lease unavailable");
                continue;
            }
        }
        // Cut short by shutdown: re-arming may wait on the persister.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            rearmed = reconciler.rearm_lost_campaigns() => {
                if let Err(err) = rearmed {
                    tracing::warn!(error = %err, "reconcile: re-arm of lost campaigns failed");
                }
            }
        }
        let campaigns = match reconciler.recent_campaigns(lookback).await {
            Ok(campaigns) => campaigns,
            Err(err) => {
                tracing::warn!(error = %err, "reconcile pass skipped");
                continue;
            }
        };
        memory.retain(|id, _| campaigns.iter().any(|c| c.id == *id));
        if let Err(err) = reconciler.retire_settled(&campaigns).await {
            tracing::warn!(error = %err, "reconcile: retiring ended campaigns failed");
        }
        for campaign in campaigns {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(err) = pass_one(&reconciler, campaign.id, &mut memory).await {
                memory.remove(&campaign.id);
                tracing::warn!(campaign_id = campaign.id, error = %err, "reconcile check failed");
            }
        }
    }
}

/// One campaign of the scheduled pass.
async fn pass_one(
    reconciler: &Reconciler,
    campaign: CampaignId,
    memory: &mut HashMap<CampaignId, Remembered>,
) -> Result<(), ServiceError> {
    let counts = reconciler.counts(campaign).await?;
    let last = memory.get(&campaign).copied();
    let Plan::Walk { trusted } = plan(last.as_ref(), &counts) else {
        return Ok(());
    };
    let report = reconciler.check_trusting(campaign, trusted, |_| {}).await?;
    Reconciler::export(&report);
    reconciler.catch_up_redis(&report).await?;
    let clean = report.differences.is_clean();
    memory.insert(
        campaign,
        Remembered {
            counts,
            settled: report.settled(),
            settled_up_to: if clean { report.settled_up_to } else { 0 },
            walks_since_full: match (trusted, last) {
                (0, _) | (_, None) => 0,
                (_, Some(last)) => last.walks_since_full + 1,
            },
        },
    );
    Ok(())
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

    /// The steps of `Reconciler::check` on stores held in memory, `page` holders
    /// (and outbox entries) at a time.
    fn compare(
        issued: i64,
        redis: &[Coupon],
        outbox: &[&str],
        mysql: &[Coupon],
        page: usize,
    ) -> Differences {
        let rows_of = |wanted: &[Coupon]| -> Vec<Coupon> {
            mysql
                .iter()
                .filter(|row| wanted.iter().any(|w| w.user_id == row.user_id))
                .cloned()
                .collect()
        };
        let mut comparison = Comparison::new(now(), GRACE);
        for chunk in redis.chunks(page) {
            comparison.holders(chunk, &rows_of(chunk));
        }
        if comparison.has_suspects() {
            for chunk in outbox.chunks(page) {
                comparison.in_outbox(chunk.iter().copied());
            }
            let left = comparison.take_suspects();
            comparison.recheck(&left, &rows_of(&left));
        }
        if comparison.mysql_has_unmatched(mysql.len() as u64) {
            comparison.unknown_to_redis(
                mysql
                    .iter()
                    .filter(|row| !redis.iter().any(|r| r.user_id == row.user_id))
                    .cloned(),
            );
        }
        comparison.finish(issued)
    }

    /// Every rule must give the same verdict whatever the page size.
    fn compare_paged(
        issued: i64,
        redis: &[Coupon],
        outbox: &[&str],
        mysql: &[Coupon],
    ) -> Differences {
        let whole = compare(issued, redis, outbox, mysql, 1000);
        assert_eq!(
            compare(issued, redis, outbox, mysql, 1),
            whole,
            "pages of 1"
        );
        whole
    }

    #[test]
    fn matching_stores_are_clean() {
        let both = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let d = compare_paged(2, &both, &[], &both);
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
        let d = compare_paged(3, &redis, &["other", "queued"], &[]);
        assert_eq!(d.missing_in_mysql, vec![coupon("old", "O", 1, 100)]);
        assert_eq!(d.in_flight, 2);
        assert!(!d.redis_behind());
    }

    #[test]
    fn mysql_rows_unknown_to_redis_and_a_low_counter_mean_redis_is_behind() {
        let mysql = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let redis = vec![coupon("a", "A", 1, 100)];
        let d = compare_paged(1, &redis, &[], &mysql);
        assert_eq!(d.extra_in_mysql, vec![coupon("b", "B", 2, 100)]);
        assert_eq!(d.issued_behind, Some((1, 2)));
        assert!(d.redis_behind());
        // An emptied Redis with a counter that survived is still behind on holders.
        let d = compare_paged(2, &[], &[], &mysql);
        assert_eq!(d.extra_in_mysql.len(), 2);
        assert_eq!(d.issued_behind, None);
    }

    #[test]
    fn coupons_redis_still_holds_count_towards_the_floor() {
        // Redis kept "c" (sequence 3) but its counter fell to 1; MySQL lost "c".
        let redis = vec![coupon("a", "A", 1, 100), coupon("c", "C", 3, 100)];
        let mysql = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let d = compare_paged(1, &redis, &[], &mysql);
        assert_eq!(d.issued_behind, Some((1, 3)));
        assert_eq!(d.missing_in_mysql.len(), 1);
        assert_eq!(d.extra_in_mysql.len(), 1);
    }

    #[test]
    fn a_different_code_for_the_same_shopper_is_a_mismatch() {
        let d = compare_paged(
            1,
            &[coupon("a", "A", 1, 100)],
            &[],
            &[coupon("a", "Z", 1, 100)],
        );
        assert_eq!(d.code_mismatch.len(), 1);
        assert!(!d.is_clean());
    }

    #[test]
    fn a_holder_the_scan_returns_twice_counts_once() {
        // HSCAN may return "a" twice while the hash grows. Counted twice, the one
        // matched row would pass for two and hide "b", which Redis lost.
        let redis = vec![coupon("a", "A", 1, 100), coupon("a", "A", 1, 100)];
        let mysql = vec![coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let d = compare_paged(2, &redis, &[], &mysql);
        assert_eq!(d.extra_in_mysql, vec![coupon("b", "B", 2, 100)]);
        assert_eq!(d.issued_behind, None);
    }

    #[test]
    fn a_coupon_persisted_while_its_page_was_compared_is_not_missing() {
        let old = coupon("a", "A", 1, 100);
        let mut comparison = Comparison::new(now(), GRACE);
        comparison.holders(std::slice::from_ref(&old), &[]);
        assert!(comparison.has_suspects());
        comparison.in_outbox(["someone-else"]);
        let left = comparison.take_suspects();
        comparison.recheck(&left, std::slice::from_ref(&old));
        assert!(
            !comparison.mysql_has_unmatched(1),
            "the late row is matched"
        );
        let d = comparison.finish(1);
        assert!(d.is_clean(), "{d:?}");
    }

    #[test]
    fn mysql_is_walked_only_when_it_has_rows_the_holders_did_not_match() {
        let both = [coupon("a", "A", 1, 100), coupon("b", "B", 2, 100)];
        let mut comparison = Comparison::new(now(), GRACE);
        comparison.holders(&both, &both);
        assert!(!comparison.mysql_has_unmatched(2));
        assert!(comparison.mysql_has_unmatched(3));
    }

    #[test]
    fn sequences_out_of_the_tracked_range_are_still_counted() {
        let odd = [coupon("a", "A", 0, 100), coupon("b", "B", i64::MAX, 100)];
        let mut comparison = Comparison::new(now(), GRACE);
        comparison.holders(&odd, &odd);
        assert_eq!(comparison.holders_seen(), 2);
    }

    #[test]
    fn a_pass_trusting_earlier_matches_asks_mysql_only_about_newer_holders() {
        let old = coupon("a", "A", 1, 100);
        let new = coupon("b", "B", 2, 100);
        let mut comparison = Comparison::new(now(), GRACE).trust(1);
        assert!(!comparison.needs_lookup(&old));
        assert!(comparison.needs_lookup(&new));
        // Only "b" was looked up; "a" counts as matched from the earlier pass.
        comparison.holders(&[old.clone(), new.clone()], std::slice::from_ref(&new));
        assert!(!comparison.mysql_has_unmatched(2));
        assert_eq!(comparison.settled_up_to(), 2);
        assert!(comparison.finish(2).is_clean());
    }

    #[test]
    fn what_a_later_pass_may_trust_stops_below_the_first_unmatched_holder() {
        let mut comparison = Comparison::new(now(), GRACE);
        let redis = [
            coupon("a", "A", 1, 100),
            coupon("b", "B", 2, 9_990),
            coupon("c", "C", 3, 100),
        ];
        comparison.holders(&redis, &[redis[0].clone(), redis[2].clone()]);
        assert_eq!(comparison.settled_up_to(), 1, "b is still in flight");
        let mut comparison = Comparison::new(now(), GRACE);
        comparison.holders(&redis, &redis);
        assert_eq!(comparison.settled_up_to(), 3);
    }

    fn counts(issued: i64, rows: u64) -> Counts {
        Counts {
            redis: Some(RedisCounts {
                issued,
                holders: issued,
                pending_events: 0,
            }),
            mysql_rows: rows,
        }
    }

    fn remembered(counts: Counts, settled: bool, walks_since_full: u32) -> Remembered {
        Remembered {
            counts,
            settled,
            settled_up_to: 7,
            walks_since_full,
        }
    }

    #[test]
    fn the_scheduled_pass_skips_settled_campaigns_and_walks_only_what_is_new() {
        assert_eq!(plan(None, &counts(10, 10)), Plan::Walk { trusted: 0 });
        let settled = remembered(counts(10, 10), true, 0);
        assert_eq!(plan(Some(&settled), &counts(10, 10)), Plan::Skip);
        assert_eq!(
            plan(Some(&settled), &counts(12, 10)),
            Plan::Walk { trusted: 7 }
        );
        // In flight last time: walked again even if nothing moved.
        let moving = remembered(counts(10, 8), false, 3);
        assert_eq!(
            plan(Some(&moving), &counts(10, 8)),
            Plan::Walk { trusted: 7 }
        );
    }

    #[test]
    fn a_count_going_back_or_the_tenth_walk_trusts_nothing() {
        let last = remembered(counts(10, 8), false, 0);
        assert_eq!(plan(Some(&last), &counts(9, 9)), Plan::Walk { trusted: 0 });
        assert_eq!(plan(Some(&last), &counts(11, 7)), Plan::Walk { trusted: 0 });
        let unarmed = Counts {
            redis: None,
            mysql_rows: 8,
        };
        assert_eq!(plan(Some(&last), &unarmed), Plan::Walk { trusted: 0 });
        let ninth = remembered(counts(10, 8), false, FULL_WALK_EVERY - 1);
        assert_eq!(
            plan(Some(&ninth), &counts(11, 9)),
            Plan::Walk { trusted: 0 }
        );
    }
}
