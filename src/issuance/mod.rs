//! The issuing rule and everything marketing does with campaigns: claim a coupon,
//! the public and admin views with live figures, create, pause and resume, and
//! re-arming Redis from MySQL. Pure orchestration over `store` (Redis) and
//! `persistence` (MySQL); the relay to Kafka lives in [`relay`], the task that
//! re-arms lost campaigns in [`rearm`], the rows kept for a moment in
//! [`campaign_cache`].

pub mod campaign_cache;
pub mod rearm;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;

use crate::domain::{
    new_coupon_code, Campaign, CampaignId, CampaignStatus, Coupon, IdempotencyKey, Invalid,
    IssueOutcome, NewCampaign, NotOpenReason, UserId,
};
use crate::events::persister_gate::PersisterGate;
use crate::persistence::{Created, Database, DbError};
use crate::store::{ArmSpec, RedisStore, StoreError, PAGE};
use crate::telemetry::metrics;
use campaign_cache::CampaignCache;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("campaign {0} not found")]
    NotFound(CampaignId),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A dependency failed or the campaign is not ready: try again shortly.
    #[error("{0}")]
    Unavailable(String),
    /// Redis lost the live campaign; the instance is re-arming it from MySQL (see
    /// [`rearm`]): try again shortly.
    #[error("campaign {0} is not armed in Redis (Redis lost it); it is being re-armed from MySQL, retry shortly")]
    NotArmed(CampaignId),
    /// This instance already has `limit` claims waiting on Redis: try again shortly.
    #[error("this instance already has {limit} claims waiting for Redis; retry shortly")]
    Overloaded { limit: usize },
    /// A create whose idempotency key an earlier create of another campaign used.
    #[error("Idempotency-Key {key:?} already created campaign {id} with other values; a new campaign needs a new key")]
    KeyReused { key: String, id: CampaignId },
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        ServiceError::Unavailable(err.to_string())
    }
}

impl From<DbError> for ServiceError {
    fn from(err: DbError) -> Self {
        ServiceError::Unavailable(err.to_string())
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// The answer to a create.
#[derive(Debug, Clone)]
pub struct Creation {
    pub view: CampaignView,
    /// An earlier request with the same idempotency key created it.
    pub replayed: bool,
}

/// A campaign with its live figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignView {
    pub campaign: Campaign,
    pub status: CampaignStatus,
    pub issued: i64,
    pub remaining: i64,
    /// Admin only: rows in MySQL (None when MySQL could not be asked).
    pub persisted: Option<i64>,
    /// Admin only: events waiting in the outbox for Kafka.
    pub pending_events: Option<i64>,
}

/// A shopper's coupon and whether it reached MySQL yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCoupon {
    pub coupon: Coupon,
    pub persisted: bool,
}

#[derive(Clone)]
pub struct IssuanceService {
    store: RedisStore,
    db: Database,
    /// Campaign rows (and unknown ids), kept for a second: views are polled, the
    /// rows rarely change.
    campaigns: CampaignCache,
    /// Campaigns known to be sold out: answered 410 without asking Redis. Stock never
    /// grows back, so an entry never goes stale. Filled by this instance's sold-out
    /// answers (then broadcast) and by other instances' broadcasts.
    sold_out: Arc<RwLock<HashSet<CampaignId>>>,
    /// Slots of the claims waiting on Redis (`server.max_claims_in_flight`); None:
    /// unbounded, for the CLI and jobs, which never claim.
    claim_slots: Option<ClaimSlots>,
    /// Re-arming a lost campaign waits until the persister stored what Kafka holds
    /// (None: no relay, so no coupon is on its way).
    persister_gate: Option<PersisterGate>,
    /// Where a claim that found its live campaign missing from Redis asks
    /// [`rearm::run`] for a pass.
    rearm: rearm::Requests,
}

/// The bound on claims waiting on Redis at once: past it a claim is turned away at
/// once (503) instead of queueing, so a slow Redis or a saturated instance shows as
/// quick, retryable answers and not as a growing queue of requests that time out.
#[derive(Clone)]
struct ClaimSlots {
    free: Arc<Semaphore>,
    limit: usize,
}

impl IssuanceService {
    pub fn new(store: RedisStore, db: Database) -> Self {
        Self {
            store,
            db,
            campaigns: CampaignCache::new(10_000, Duration::from_secs(1)),
            sold_out: Arc::default(),
            claim_slots: None,
            persister_gate: None,
            rearm: rearm::Requests::default(),
        }
    }

    /// Re-arms a lost campaign only once the persister has stored every coupon
    /// event already published (see [`PersisterGate`]).
    pub fn with_persister_gate(mut self, gate: PersisterGate) -> Self {
        self.persister_gate = Some(gate);
        self
    }

    /// The requests of this service's claims for a re-arm pass (see [`rearm::run`]).
    pub fn rearm_requests(&self) -> rearm::Requests {
        self.rearm.clone()
    }

    /// Bounds the claims waiting on Redis at once to `limit`, reported by the
    /// `coupon_issue_in_flight` gauge.
    pub fn with_claim_limit(mut self, limit: NonZeroUsize) -> Self {
        let limit = limit.get().min(Semaphore::MAX_PERMITS);
        let free = Arc::new(Semaphore::new(limit));
        metrics::get().watch_claims_in_flight(Arc::downgrade(&free), limit);
        self.claim_slots = Some(ClaimSlots { free, limit });
        self
    }

    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// One shopper presses "get coupon". Fails closed: if Redis cannot decide,
    /// the answer is Unavailable, never a coupon without the checks. The span's
    /// trace context rides with the coupon event into the persister's span.
    /// Once a campaign is known to be sold out, the answer is SoldOut at once, for
    /// holders too (their coupon stays theirs, listed by `coupons_of`). With a claim
    /// limit, a claim past it is Overloaded at once, without asking Redis.
    #[tracing::instrument(name = "coupon.claim", skip_all, fields(campaign_id = campaign_id, result))]
    pub async fn claim(
        &self,
        campaign_id: CampaignId,
        user: &UserId,
    ) -> ServiceResult<IssueOutcome> {
        if self.known_sold_out(campaign_id) {
            metrics::get().record_issue(campaign_id, "sold_out");
            tracing::Span::current().record("result", "sold_out");
            return Ok(IssueOutcome::SoldOut);
        }
        let _slot = match &self.claim_slots {
            Some(slots) => match slots.free.try_acquire() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    metrics::get().record_claim_rejected();
                    tracing::Span::current().record("result", "rejected");
                    return Err(ServiceError::Overloaded { limit: slots.limit });
                }
            },
            None => None,
        };
        let traceparent = crate::telemetry::trace::traceparent_of(&tracing::Span::current());
        let code = new_coupon_code();
        let event_id = uuid::Uuid::now_v7().to_string();
        let outcome = match self
            .store
            .issue(campaign_id, user, &code, &event_id, &traceparent)
            .await
        {
            Ok((outcome, remaining)) => {
                if let Some(remaining) = remaining {
                    metrics::get().set_stock_remaining(campaign_id, remaining);
                    if remaining == 0 {
                        self.learned_sold_out(campaign_id);
                    }
                }
                outcome
            }
            Err(err) => {
                metrics::get().record_issue(campaign_id, "error");
                return Err(err.into());
            }
        };
        let outcome = match outcome {
            // Rare, and boxed: its MySQL read would otherwise enlarge every claim's future.
            IssueOutcome::NotArmed => Box::pin(self.not_armed(campaign_id)).await?,
            other => other,
        };
        let result = match &outcome {
            IssueOutcome::Issued(_) => "issued",
            IssueOutcome::AlreadyIssued(_) => "already_issued",
            IssueOutcome::SoldOut => "sold_out",
            IssueOutcome::NotOpen(_) => "not_open",
            IssueOutcome::NotArmed => "error",
        };
        metrics::get().record_issue(campaign_id, result);
        tracing::Span::current().record("result", result);
        Ok(outcome)
    }

    fn known_sold_out(&self, id: CampaignId) -> bool {
        self.sold_out
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Another instance announced that `id` sold out. True if this one did not know.
    pub fn note_sold_out(&self, id: CampaignId) -> bool {
        self.sold_out
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    /// Redis answered that `id` has no stock left: remember it, and tell every other
    /// instance once (in the background: the shopper's answer does not wait for it).
    fn learned_sold_out(&self, id: CampaignId) {
        if !self.note_sold_out(id) {
            return;
        }
        tracing::info!(
            campaign_id = id,
            "campaign sold out; answering 410 locally from now on"
        );
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.publish_sold_out(id).await {
                tracing::warn!(campaign_id = id, error = %err, "could not broadcast sold-out; other instances learn it from Redis");
            }
        });
    }

    /// Redis knows nothing of the campaign: unknown (404), over (409), or lost by
    /// Redis and not yet re-armed (503, never a fresh stock); a lost one is
    /// re-armed by [`rearm::run`], which this asks for a pass.
    async fn not_armed(&self, id: CampaignId) -> ServiceResult<IssueOutcome> {
        let campaign = self.campaign(id).await?;
        if Utc::now() >= campaign.ends_at {
            return Ok(IssueOutcome::NotOpen(NotOpenReason::Ended));
        }
        self.rearm.ask();
        metrics::get().record_issue(id, "error");
        Err(ServiceError::NotArmed(id))
    }

    /// The campaign row, or NotFound; kept for a second, unknown ids too, and
    /// loaded once for every caller that missed at the same time.
    pub async fn campaign(&self, id: CampaignId) -> ServiceResult<Arc<Campaign>> {
        self.campaigns
            .get_or_load(id, self.db.campaign(id))
            .await
            .map_err(|err| ServiceError::Unavailable(err.to_string()))?
            .ok_or(ServiceError::NotFound(id))
    }

    /// The public view: status and remaining stock.
    pub async fn public_view(&self, id: CampaignId) -> ServiceResult<CampaignView> {
        let campaign = self.campaign(id).await?;
        let figures = self.store.figures(id).await?;
        Ok(self.view(&campaign, figures, None))
    }

    fn view(
        &self,
        campaign: &Campaign,
        figures: Option<crate::store::LiveFigures>,
        persisted: Option<i64>,
    ) -> CampaignView {
        let mut campaign = campaign.clone();
        // Redis has the brake as it is applied right now; MySQL may lag by the cache.
        if let Some(f) = figures {
            campaign.paused = f.paused;
        }
        let issued = figures
            .map(|f| f.issued)
            .or(persisted)
            .unwrap_or(0)
            .max(persisted.unwrap_or(0));
        let remaining = (campaign.total_quantity - issued).max(0);
        metrics::get().set_stock_remaining(campaign.id, remaining);
        CampaignView {
            status: campaign.status(issued, Utc::now()),
            issued,
            remaining,
            persisted,
            pending_events: figures.map(|f| f.pending_events),
            campaign,
        }
    }

    /// The admin view of one campaign: live figures from Redis and MySQL.
    pub async fn admin_view(&self, id: CampaignId) -> ServiceResult<CampaignView> {
        let campaign = self
            .db
            .campaign(id)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let figures = self.store.figures(id).await?;
        let persisted = self.db.persisted_count(id).await?;
        Ok(self.view(&campaign, figures, Some(persisted)))
    }

    /// Every campaign (newest first, at most 500) with live figures.
    pub async fn admin_list(&self) -> ServiceResult<Vec<CampaignView>> {
        let campaigns = self.db.campaigns(500).await?;
        let ids: Vec<CampaignId> = campaigns.iter().map(|c| c.id).collect();
        let persisted: HashMap<CampaignId, i64> =
            self.db.persisted_counts(&ids).await?.into_iter().collect();
        let mut views = Vec::with_capacity(campaigns.len());
        for campaign in campaigns {
            let figures = self.store.figures(campaign.id).await?;
            let rows = persisted.get(&campaign.id).copied().unwrap_or(0);
            views.push(self.view(&campaign, figures, Some(rows)));
        }
        Ok(views)
    }

    /// Creates a campaign: MySQL first (the durable record), then arms Redis.
    ///
    /// Under an idempotency key, a retry of a create that wrote its row (and whose
    /// answer was lost, or was a 503 because arming failed) gives back that campaign,
    /// armed now if it was not, instead of a twin with stock of its own.
    pub async fn create(
        &self,
        new: NewCampaign,
        key: Option<&IdempotencyKey>,
    ) -> ServiceResult<Creation> {
        let new = new.validate()?;
        let key = key.map(IdempotencyKey::as_str);
        let (campaign, replayed) = match self.db.create_campaign(&new, key).await? {
            Created::New(campaign) => {
                // A view asked for this id before it existed: it exists now.
                self.campaigns.forget(campaign.id).await;
                self.store.arm(&arm_spec(&campaign), 0).await?;
                tracing::info!(
                    campaign_id = campaign.id,
                    stock = campaign.total_quantity,
                    "campaign created and armed"
                );
                (campaign, false)
            }
            Created::Existing(campaign) => {
                if !new.describes(&campaign) {
                    return Err(ServiceError::KeyReused {
                        key: key.unwrap_or_default().to_owned(),
                        id: campaign.id,
                    });
                }
                self.arm_from_mysql(&campaign).await?;
                tracing::info!(
                    campaign_id = campaign.id,
                    "campaign create retried under its idempotency key"
                );
                (campaign, true)
            }
        };
        Ok(Creation {
            view: self.admin_view(campaign.id).await?,
            replayed,
        })
    }

    /// The marketing brake: MySQL first (so a re-arm keeps it), then Redis.
    pub async fn set_paused(&self, id: CampaignId, paused: bool) -> ServiceResult<CampaignView> {
        let campaign = self
            .db
            .set_paused(id, paused)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        self.campaigns.forget(id).await;
        if self.store.is_armed(id).await? {
            self.store.set_paused(id, paused).await?;
        } else {
            self.arm_from_mysql(&campaign).await?;
        }
        tracing::info!(campaign_id = id, paused, "campaign brake changed");
        self.admin_view(id).await
    }

    /// Coupons of a shopper: persisted ones from MySQL, and the ones Redis issued
    /// that the persister has not written yet.
    pub async fn coupons_of(&self, user: &UserId) -> ServiceResult<Vec<HeldCoupon>> {
        let persisted = self.db.coupons_of_user(user.as_str()).await?;
        let armed = self.store.armed_campaigns().await?;
        let live = self.store.holdings(user, &armed).await?;
        let stored: HashSet<(CampaignId, String)> = persisted
            .iter()
            .map(|c| (c.campaign_id, c.coupon_code.clone()))
            .collect();
        let mut held: Vec<HeldCoupon> = persisted
            .into_iter()
            .map(|coupon| HeldCoupon {
                coupon,
                persisted: true,
            })
            .collect();
        held.extend(
            live.into_iter()
                .filter(|c| !stored.contains(&(c.campaign_id, c.coupon_code.clone())))
                .map(|coupon| HeldCoupon {
                    coupon,
                    persisted: false,
                }),
        );
        held.sort_by_key(|h| (h.coupon.issued_at, h.coupon.campaign_id));
        Ok(held)
    }

    /// Re-arms one campaign from MySQL if Redis lost it: holders first, then the
    /// counter at the persisted count. Returns true if it had to arm. With a gate,
    /// it first waits for the coupons still on their way through Kafka to land in
    /// MySQL, or they would be stock again; Unavailable if they do not in time.
    pub async fn arm_from_mysql(&self, campaign: &Campaign) -> ServiceResult<bool> {
        if self.store.is_armed(campaign.id).await? {
            return Ok(false);
        }
        if let Some(gate) = &self.persister_gate {
            gate.wait_until_caught_up().await.map_err(|err| {
                ServiceError::Unavailable(format!("campaign {} not re-armed: {err:#}", campaign.id))
            })?;
        }
        // A page at a time: a campaign of millions of holders is re-armed in the
        // memory of one page.
        let (mut restored, mut highest) = (0i64, 0i64);
        let mut after: Option<String> = None;
        loop {
            let page = self
                .db
                .coupons_page(campaign.id, after.as_deref(), PAGE as u64)
                .await?;
            self.store.restore_holders(campaign.id, &page).await?;
            restored += page.len() as i64;
            highest = page.iter().map(|c| c.sequence).fold(highest, i64::max);
            if page.len() < PAGE {
                break;
            }
            after = page.last().map(|c| c.user_id.clone());
        }
        let issued = highest.max(restored);
        let armed = self.store.arm(&arm_spec(campaign), issued).await?;
        if armed {
            tracing::warn!(
                campaign_id = campaign.id,
                issued,
                "campaign re-armed in Redis from MySQL"
            );
        }
        Ok(armed)
    }

    /// Re-arms every campaign that has not ended (start-up, `campaign arm`).
    pub async fn arm_live_campaigns(&self) -> ServiceResult<usize> {
        let mut armed = 0;
        for campaign in self.db.live_campaigns(Utc::now()).await? {
            if self.arm_from_mysql(&campaign).await? {
                armed += 1;
            }
        }
        Ok(armed)
    }
}

fn arm_spec(campaign: &Campaign) -> ArmSpec {
    ArmSpec {
        id: campaign.id,
        total: campaign.total_quantity,
        starts_at: campaign.starts_at,
        ends_at: campaign.ends_at,
        paused: campaign.paused,
    }
}
