//! MySQL side of the read path: products, idempotent sales ingestion, the top-N
//! query, and [`GuardedTopQuery`], the fallback behind its own circuit breaker and
//! a bulkhead, so a Redis outage can never send more than N queries at MySQL.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use entity::{processed_order, product};
use rust_decimal::Decimal;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Set, Statement, TransactionTrait,
};

use super::{Database, DbError, DbResult};
use crate::domain::{OrderPaidEvent, TopProduct, TopSnapshot};
use crate::resilience::{Breaker, BreakerSettings, Bulkhead, GuardError};

#[derive(Debug, FromQueryResult)]
struct TopRow {
    product_id: i64,
    name: String,
    price: Decimal,
    sold: Decimal,
}

impl Database {
    /// Creates or renames products (demo data, catalogue sync).
    pub async fn upsert_products(&self, products: &[(i64, String, Decimal)]) -> DbResult<()> {
        if products.is_empty() {
            return Ok(());
        }
        let rows: Vec<product::ActiveModel> = products
            .iter()
            .map(|(id, name, price)| product::ActiveModel {
                id: Set(*id),
                name: Set(name.clone()),
                price: Set(*price),
            })
            .collect();
        self.bounded(
            product::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(product::Column::Id)
                        .update_columns([product::Column::Name, product::Column::Price])
                        .to_owned(),
                )
                .exec_without_returning(&self.conn),
        )
        .await
        .map(|_| ())
    }

    /// Adds the orders' quantities to `product_daily_sales`, each event at most once
    /// (its id is recorded in `processed_order` in the same transaction).
    pub async fn apply_orders(&self, events: &[OrderPaidEvent]) -> DbResult<usize> {
        let conn = &self.conn;
        self.bounded(async move {
            let txn = conn.begin().await?;
            let mut applied = 0;
            for event in events {
                let now = Utc::now();
                let marker = processed_order::ActiveModel {
                    event_id: Set(event.event_id.clone()),
                    order_id: Set(event.order_id.clone()),
                    paid_at: Set(event.paid_at.naive_utc()),
                    processed_at: Set(now.naive_utc()),
                };
                // A seen event id violates the primary key: skip the event. (MySQL
                // rolls back just that statement, not the transaction; affected-row
                // counts cannot tell, since the driver reports found rows.)
                match processed_order::Entity::insert(marker).exec_without_returning(&txn).await {
                    Ok(_) => {}
                    Err(err) if super::is_duplicate_key(&err) => continue,
                    Err(err) => return Err(err),
                }
                let day = event.paid_at.date_naive();
                for item in &event.items {
                    txn.execute_raw(Statement::from_sql_and_values(
                        DbBackend::MySql,
                        "INSERT INTO product_daily_sales (product_id, day, quantity) VALUES (?, ?, ?) \
                         ON DUPLICATE KEY UPDATE quantity = quantity + VALUES(quantity)",
                        [item.product_id.into(), day.into(), item.quantity.into()],
                    ))
                    .await?;
                }
                applied += 1;
            }
            txn.commit().await?;
            Ok(applied)
        })
        .await
    }

    /// The top `limit` products by quantity sold over the `days` UTC days ending
    /// `today`, ties broken by product id.
    pub async fn top_products(
        &self,
        days: u32,
        limit: u32,
        today: NaiveDate,
    ) -> DbResult<Vec<TopProduct>> {
        let from = today - chrono::Days::new(u64::from(days.max(1) - 1));
        let rows = self
            .bounded(
                TopRow::find_by_statement(Statement::from_sql_and_values(
                    DbBackend::MySql,
                    "SELECT p.id AS product_id, p.name, p.price, SUM(s.quantity) AS sold \
                     FROM product_daily_sales s JOIN product p ON p.id = s.product_id \
                     WHERE s.day BETWEEN ? AND ? \
                     GROUP BY p.id, p.name, p.price \
                     ORDER BY sold DESC, p.id ASC LIMIT ?",
                    [from.into(), today.into(), limit.into()],
                ))
                .all(&self.conn),
            )
            .await?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| TopProduct {
                rank: i as u32 + 1,
                product_id: r.product_id,
                name: r.name,
                price: r.price,
                sold: r.sold.try_into().unwrap_or(i64::MAX),
            })
            .collect())
    }
}

/// The MySQL fallback of the read path: a circuit breaker and a bulkhead.
#[derive(Clone)]
pub struct GuardedTopQuery {
    db: Database,
    breaker: Breaker,
    bulkhead: Bulkhead,
}

impl GuardedTopQuery {
    pub fn new(
        db: Database,
        breaker: BreakerSettings,
        max_concurrent: usize,
        max_wait: Duration,
    ) -> Self {
        Self {
            db,
            breaker: Breaker::new("mysql_top_products", breaker),
            bulkhead: Bulkhead::new("mysql_top_products", max_concurrent, max_wait),
        }
    }

    /// One guarded top-N query; at most `max_concurrent` run at once.
    pub async fn snapshot(
        &self,
        days: u32,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<TopSnapshot, GuardError<DbError>> {
        let products = self
            .bulkhead
            .run(
                self.breaker
                    .call(self.db.top_products(days, limit, now.date_naive())),
            )
            .await?;
        Ok(TopSnapshot {
            window_days: days,
            generated_at: now,
            products,
        })
    }
}
