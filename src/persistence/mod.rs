//! MySQL access, and the only module that imports sea-orm and `entity`: campaigns
//! and issued coupons. Every call is bounded by the statement timeout; errors are
//! classified so callers can tell "the database is down, wait" from "this input
//! can never be written".

pub mod catalog;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{campaign, issued_coupon};
use migration::{Migrator, MigratorTrait, CAMPAIGN_USER_INDEX};
use sea_orm::sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
use sea_orm::sea_query::{Alias, Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    RuntimeErr, Set, SqlErr, TransactionTrait,
};
use secrecy::ExposeSecret;

use crate::config::DatabaseSettings;
use crate::domain::{
    Campaign, CampaignId, Coupon, CouponIssuedEvent, Discount, DiscountKind, NewCampaign,
};
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or did not answer in time: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The statement itself is wrong for this data: retrying will not help.
    #[error("database rejected the statement: {0}")]
    Rejected(String),
}

impl DbError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

impl From<DbErr> for DbError {
    fn from(err: DbErr) -> Self {
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbError::Unavailable(err.to_string()),
            DbErr::Query(RuntimeErr::SqlxError(cause))
            | DbErr::Exec(RuntimeErr::SqlxError(cause)) => {
                match server_error_number(cause) {
                    Some(number) if !SERVER_ERRORS_THAT_PASS.contains(&number) => {
                        DbError::Rejected(err.to_string())
                    }
                    // A passing server state, or no answer from the server at all
                    // (I/O, protocol, pool): try again later.
                    _ => DbError::Unavailable(err.to_string()),
                }
            }
            DbErr::Query(_) | DbErr::Exec(_) => DbError::Unavailable(err.to_string()),
            _ => DbError::Rejected(err.to_string()),
        }
    }
}

/// The statement broke a unique key (a primary key among them).
fn is_duplicate_key(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Server errors that say "not now" rather than "never": lock wait timeout (1205),
/// deadlock (1213), too many connections (1040), server shutting down (1053),
/// connection or query killed (1927, 1317), read-only during a failover (1290,
/// 1836), statement time limit (1969, 3024). Any other error the server answers is
/// about the statement and its data (a NULL where none may be, a value out of
/// range...): retrying it would block a consumer forever, so it is rejected.
const SERVER_ERRORS_THAT_PASS: &[u16] =
    &[1040, 1053, 1205, 1213, 1290, 1317, 1836, 1927, 1969, 3024];

/// The MySQL error number, when the server itself answered with an error.
fn server_error_number(cause: &sea_orm::sqlx::Error) -> Option<u16> {
    match cause {
        sea_orm::sqlx::Error::Database(db) => db
            .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

type DbResult<T> = Result<T, DbError>;

/// Opens the pool (lazily: the service starts even while MySQL is down).
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Database> {
    let mut options = ConnectOptions::new(settings.url.expose_secret().to_owned());
    options
        .max_connections(settings.max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_lazy(true)
        .sqlx_logging(false);
    let conn = sea_orm::Database::connect(options).await?;
    Ok(Database {
        conn,
        timeout: Duration::from_millis(settings.statement_timeout_ms),
        max_connections: settings.max_connections,
    })
}

/// Applies every pending migration.
pub async fn migrate(db: &Database) -> anyhow::Result<()> {
    Migrator::up(&db.conn, None).await?;
    Ok(())
}

/// Rolls back the last `steps` migrations (all when None).
pub async fn migrate_down(db: &Database, steps: Option<u32>) -> anyhow::Result<()> {
    Migrator::down(&db.conn, steps).await?;
    Ok(())
}

/// Names of applied and pending migrations.
pub async fn migration_status(db: &Database) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let applied = Migrator::get_applied_migrations(&db.conn)
        .await?
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let pending = Migrator::get_pending_migrations(&db.conn)
        .await?
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    Ok((applied, pending))
}

/// The MySQL pool plus the statement timeout.
#[derive(Clone)]
pub struct Database {
    conn: DatabaseConnection,
    timeout: Duration,
    max_connections: u32,
}

/// What a batch insert did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertReport {
    /// Events of the batch that are now in MySQL (new or already there).
    pub stored: usize,
    /// Events that conflict with a different coupon on (campaign, shopper) or code.
    pub conflicting: Vec<String>,
}

#[derive(Debug, FromQueryResult)]
struct CampaignCount {
    campaign_id: i64,
    n: i64,
}

impl Database {
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, DbErr>>,
    ) -> DbResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => Err(DbError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// SELECT 1, for readiness.
    pub async fn ping(&self) -> DbResult<()> {
        self.bounded(self.conn.ping()).await
    }

    /// Pool occupancy (in use, idle, max) for the `db_pool_connections` gauge.
    pub fn pool_status(&self) -> (i64, i64, i64) {
        let pool = self.conn.get_mysql_connection_pool();
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        (size - idle, idle, i64::from(self.max_connections))
    }

    /// Writes `new`, under its `Idempotency-Key` if it has one. A key already written
    /// (a retried create, or two attempts at once) gives back that campaign instead.
    pub async fn create_campaign(&self, new: &NewCampaign, key: Option<&str>) -> DbResult<Created> {
        if let Some(found) = self.campaign_by_key(key).await? {
            return Ok(Created::Existing(found));
        }
        let now = Utc::now();
        let model = campaign::ActiveModel {
            name: Set(new.name.clone()),
            total_quantity: Set(new.total_quantity),
            starts_at: Set(new.starts_at.naive_utc()),
            ends_at: Set(new.ends_at.naive_utc()),
            discount_kind: Set(new.discount.kind.as_str().to_owned()),
            discount_value: Set(new.discount.value),
            coupon_valid_days: Set(new.coupon_valid_days),
            paused: Set(false),
            created_at: Set(now.naive_utc()),
            updated_at: Set(now.naive_utc()),
            idempotency_key: Set(key.map(str::to_owned)),
            ..Default::default()
        };
        let inserted = self
            .bounded(async {
                match model.insert(&self.conn).await {
                    Ok(saved) => Ok(Some(saved)),
                    Err(err) if key.is_some() && is_duplicate_key(&err) => Ok(None),
                    Err(err) => Err(err),
                }
            })
            .await?;
        match inserted {
            Some(saved) => Ok(Created::New(to_campaign(saved)?)),
            // Another attempt with this key wrote it between the look-up and the insert.
            None => self
                .campaign_by_key(key)
                .await?
                .map(Created::Existing)
                .ok_or_else(|| {
                    DbError::Unavailable("idempotency key taken, then not found".into())
                }),
        }
    }

    /// The campaign created under `key`, if any.
    async fn campaign_by_key(&self, key: Option<&str>) -> DbResult<Option<Campaign>> {
        let Some(key) = key else { return Ok(None) };
        self.bounded(
            campaign::Entity::find()
                .filter(campaign::Column::IdempotencyKey.eq(key))
                .one(&self.conn),
        )
        .await?
        .map(to_campaign)
        .transpose()
    }

    pub async fn campaign(&self, id: CampaignId) -> DbResult<Option<Campaign>> {
        self.bounded(campaign::Entity::find_by_id(id).one(&self.conn))
            .await?
            .map(to_campaign)
            .transpose()
    }

    /// Every campaign, newest first (at most `limit`).
    pub async fn campaigns(&self, limit: u64) -> DbResult<Vec<Campaign>> {
        self.bounded(
            campaign::Entity::find()
                .order_by_desc(campaign::Column::Id)
                .limit(limit)
                .all(&self.conn),
        )
        .await?
        .into_iter()
        .map(to_campaign)
        .collect()
    }

    /// Campaigns that have not ended at `now`.
    pub async fn live_campaigns(&self, now: DateTime<Utc>) -> DbResult<Vec<Campaign>> {
        self.bounded(
            campaign::Entity::find()
                .filter(campaign::Column::EndsAt.gt(now.naive_utc()))
                .order_by_asc(campaign::Column::Id)
                .all(&self.conn),
        )
        .await?
        .into_iter()
        .map(to_campaign)
        .collect()
    }

    /// Sets the brake; None if the campaign does not exist.
    pub async fn set_paused(&self, id: CampaignId, paused: bool) -> DbResult<Option<Campaign>> {
        let Some(found) = self
            .bounded(campaign::Entity::find_by_id(id).one(&self.conn))
            .await?
        else {
            return Ok(None);
        };
        let mut model: campaign::ActiveModel = found.into();
        model.paused = Set(paused);
        model.updated_at = Set(Utc::now().naive_utc());
        let saved = self.bounded(model.update(&self.conn)).await?;
        to_campaign(saved).map(Some)
    }

    /// Writes a batch of issued coupons. Events already stored are a no-op; an event
    /// whose shopper or code already holds another coupon is reported in
    /// `conflicting` instead of failing the batch.
    ///
    /// A batch none of whose events is stored yet, the usual case, is one plain
    /// multi-row INSERT. Only when that meets a duplicate key (a redelivery, or a
    /// conflict) does the batch take the careful path: an upsert that leaves
    /// existing rows alone, and a read-back of which events landed. That read-back
    /// was about a fifth of MariaDB's CPU per batch, and the driver cannot say how
    /// many rows were duplicates instead (sqlx connects with CLIENT_FOUND_ROWS, so a
    /// no-op duplicate counts as affected).
    pub async fn insert_coupons(&self, events: &[CouponIssuedEvent]) -> DbResult<InsertReport> {
        if events.is_empty() {
            return Ok(InsertReport::default());
        }
        let now = Utc::now();
        let rows = || -> Vec<issued_coupon::ActiveModel> {
            events
                .iter()
                .map(|e| issued_coupon::ActiveModel {
                    event_id: Set(e.event_id.clone()),
                    campaign_id: Set(e.campaign_id),
                    user_id: Set(e.user_id.clone()),
                    coupon_code: Set(e.coupon_code.clone()),
                    sequence: Set(e.sequence),
                    issued_at: Set(e.occurred_at.naive_utc()),
                    persisted_at: Set(now.naive_utc()),
                    ..Default::default()
                })
                .collect()
        };
        // One statement: InnoDB stores all of its rows or, on any error, none.
        let all_new = self
            .bounded(async {
                match issued_coupon::Entity::insert_many(rows())
                    .exec_without_returning(&self.conn)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(err) if is_duplicate_key(&err) => Ok(false),
                    Err(err) => Err(err),
                }
            })
            .await?;
        if all_new {
            return Ok(InsertReport {
                stored: events.len(),
                conflicting: Vec::new(),
            });
        }
        let rows = rows();
        let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        let conn = &self.conn;
        let stored: Vec<String> = self
            .bounded(async move {
                let txn = conn.begin().await?;
                issued_coupon::Entity::insert_many(rows)
                    .on_conflict(
                        // MySQL: ON DUPLICATE KEY UPDATE event_id = event_id, a no-op on
                        // whichever unique key matched (never `= VALUES(event_id)`, which
                        // would rewrite the existing row); which events landed is checked below.
                        OnConflict::column(issued_coupon::Column::EventId)
                            .value(
                                issued_coupon::Column::EventId,
                                Expr::col(issued_coupon::Column::EventId),
                            )
                            .to_owned(),
                    )
                    .exec_without_returning(&txn)
                    .await?;
                let stored = issued_coupon::Entity::find()
                    .select_only()
                    .column(issued_coupon::Column::EventId)
                    .filter(issued_coupon::Column::EventId.is_in(ids))
                    .into_tuple::<String>()
                    .all(&txn)
                    .await?;
                txn.commit().await?;
                Ok(stored)
            })
            .await?;
        let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
        let unmatched: Vec<&CouponIssuedEvent> = events
            .iter()
            .filter(|e| !stored_set.contains(e.event_id.as_str()))
            .collect();
        // The same coupon under another event id (reconcile re-enqueued a coupon
        // that was only late) is already stored, not a conflict.
        let same_coupon: HashSet<(CampaignId, String, String)> = if unmatched.is_empty() {
            HashSet::new()
        } else {
            let codes: Vec<String> = unmatched.iter().map(|e| e.coupon_code.clone()).collect();
            self.bounded(
                issued_coupon::Entity::find()
                    .select_only()
                    .column(issued_coupon::Column::CampaignId)
                    .column(issued_coupon::Column::UserId)
                    .column(issued_coupon::Column::CouponCode)
                    .filter(issued_coupon::Column::CouponCode.is_in(codes))
                    .into_tuple::<(CampaignId, String, String)>()
                    .all(&self.conn),
            )
            .await?
            .into_iter()
            .collect()
        };
        let conflicting: Vec<String> = unmatched
            .iter()
            .filter(|e| {
                !same_coupon.contains(&(e.campaign_id, e.user_id.clone(), e.coupon_code.clone()))
            })
            .map(|e| e.event_id.clone())
            .collect();
        Ok(InsertReport {
            stored: events.len() - conflicting.len(),
            conflicting,
        })
    }

    /// Rows persisted for one campaign.
    pub async fn persisted_count(&self, id: CampaignId) -> DbResult<i64> {
        let n = self
            .bounded(
                issued_coupon::Entity::find()
                    .filter(issued_coupon::Column::CampaignId.eq(id))
                    .count(&self.conn),
            )
            .await?;
        Ok(n as i64)
    }

    /// Rows persisted per campaign, for the listed ids.
    pub async fn persisted_counts(&self, ids: &[CampaignId]) -> DbResult<Vec<(CampaignId, i64)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self
            .bounded(
                issued_coupon::Entity::find()
                    .select_only()
                    .column(issued_coupon::Column::CampaignId)
                    .column_as(issued_coupon::Column::Id.count(), "n")
                    .filter(issued_coupon::Column::CampaignId.is_in(ids.to_vec()))
                    .group_by(issued_coupon::Column::CampaignId)
                    .into_model::<CampaignCount>()
                    .all(&self.conn),
            )
            .await?;
        Ok(counts.into_iter().map(|c| (c.campaign_id, c.n)).collect())
    }

    /// Every persisted coupon of one shopper.
    pub async fn coupons_of_user(&self, user: &str) -> DbResult<Vec<Coupon>> {
        Ok(self
            .bounded(
                issued_coupon::Entity::find()
                    .filter(issued_coupon::Column::UserId.eq(user))
                    .order_by_asc(issued_coupon::Column::Id)
                    .limit(1000)
                    .all(&self.conn),
            )
            .await?
            .into_iter()
            .map(to_coupon)
            .collect())
    }

    /// Every persisted coupon of one campaign (re-arming, reconciliation).
    pub async fn coupons_of_campaign(&self, id: CampaignId) -> DbResult<Vec<Coupon>> {
        Ok(self
            .bounded(
                issued_coupon::Entity::find()
                    .filter(issued_coupon::Column::CampaignId.eq(id))
                    .order_by_asc(issued_coupon::Column::Sequence)
                    .all(&self.conn),
            )
            .await?
            .into_iter()
            .map(to_coupon)
            .collect())
    }

    /// The persisted coupons of `users` in one campaign (reconciliation, a page
    /// of Redis holders at a time).
    pub async fn coupons_of_users(&self, id: CampaignId, users: &[&str]) -> DbResult<Vec<Coupon>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .bounded(
                issued_coupon::Entity::find()
                    .filter(issued_coupon::Column::CampaignId.eq(id))
                    .filter(issued_coupon::Column::UserId.is_in(users.iter().copied()))
                    .all(&self.conn),
            )
            .await?
            .into_iter()
            .map(to_coupon)
            .collect())
    }

    /// One page of a campaign's persisted coupons in shopper order, after shopper
    /// `after` (None to start): keyset paging on the (campaign, user) index.
    ///
    /// The index is forced: left to itself, MariaDB often reads it as `ref` on the
    /// campaign alone and filters the shoppers before `after` one by one, so each
    /// page rereads the campaign from its start and a full walk grows with the
    /// square of its holders (17 ms a page at 150k holders against 6 ms forced).
    pub async fn coupons_page(
        &self,
        id: CampaignId,
        after: Option<&str>,
        limit: u64,
    ) -> DbResult<Vec<Coupon>> {
        let mut query =
            issued_coupon::Entity::find().filter(issued_coupon::Column::CampaignId.eq(id));
        QueryTrait::query(&mut query)
            .force_index(Alias::new(CAMPAIGN_USER_INDEX), IndexHintScope::All);
        if let Some(after) = after {
            query = query.filter(issued_coupon::Column::UserId.gt(after));
        }
        Ok(self
            .bounded(
                query
                    .order_by_asc(issued_coupon::Column::UserId)
                    .limit(limit)
                    .all(&self.conn),
            )
            .await?
            .into_iter()
            .map(to_coupon)
            .collect())
    }

    /// Runs raw SQL (test set-up, diagnostics).
    pub async fn execute_unprepared(&self, sql: &str) -> DbResult<()> {
        self.bounded(self.conn.execute_unprepared(sql))
            .await
            .map(|_| ())
    }
}

fn to_coupon(row: issued_coupon::Model) -> Coupon {
    Coupon {
        coupon_code: row.coupon_code,
        campaign_id: row.campaign_id,
        user_id: row.user_id,
        sequence: row.sequence,
        issued_at: row.issued_at.and_utc(),
    }
}

/// What `create_campaign` did.
#[derive(Debug)]
pub enum Created {
    /// Wrote this campaign.
    New(Campaign),
    /// Found the campaign an earlier request with the same idempotency key wrote.
    Existing(Campaign),
}

fn to_campaign(row: campaign::Model) -> DbResult<Campaign> {
    let kind = DiscountKind::parse(&row.discount_kind).ok_or_else(|| {
        DbError::Rejected(format!(
            "campaign {} has unknown discount kind {:?}",
            row.id, row.discount_kind
        ))
    })?;
    Ok(Campaign {
        id: row.id,
        name: row.name,
        total_quantity: row.total_quantity,
        starts_at: row.starts_at.and_utc(),
        ends_at: row.ends_at.and_utc(),
        discount: Discount {
            kind,
            value: row.discount_value,
        },
        coupon_valid_days: row.coupon_valid_days,
        paused: row.paused,
        created_at: row.created_at.and_utc(),
    })
}

/// Samples pool occupancy into the metrics, and probes how long acquiring a
/// connection takes right now (`db_pool_acquire_seconds`, `db_pool_timeouts_total`).
pub async fn export_pool_metrics(db: &Database, acquire_timeout: Duration) {
    let (in_use, idle, max) = db.pool_status();
    metrics::get().set_db_pool(in_use, idle, max);
    let pool = db.conn.get_mysql_connection_pool();
    let started = std::time::Instant::now();
    match tokio::time::timeout(acquire_timeout, pool.acquire()).await {
        Ok(Ok(conn)) => {
            drop(conn);
            metrics::get().record_db_acquire(started.elapsed(), false);
        }
        Ok(Err(sqlx_err)) => {
            let timed_out = matches!(sqlx_err, sea_orm::sqlx::Error::PoolTimedOut);
            metrics::get().record_db_acquire(started.elapsed(), timed_out);
        }
        Err(_) => metrics::get().record_db_acquire(started.elapsed(), true),
    }
}
