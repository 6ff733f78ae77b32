//! Schema migrations of flashcoupon, run by `flashcoupon migrate` or this crate's
//! own CLI (`cargo run -p migration -- up`).

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_campaign;
mod m20261122_000002_create_issued_coupon;
mod m20261122_000003_create_sales;
mod m20261123_000001_case_sensitive_identifiers;
mod m20261124_000001_campaign_idempotency_key;

pub use m20261122_000002_create_issued_coupon::CAMPAIGN_USER_INDEX;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_campaign::Migration),
            Box::new(m20261122_000002_create_issued_coupon::Migration),
            Box::new(m20261122_000003_create_sales::Migration),
            Box::new(m20261123_000001_case_sensitive_identifiers::Migration),
            Box::new(m20261124_000001_campaign_idempotency_key::Migration),
        ]
    }
}

/// A non-null `DATETIME(3)` column: UTC with milliseconds, valid until 9999
/// (MySQL's `TIMESTAMP` stops in 2038 and drops milliseconds by default).
pub(crate) fn datetime_ms<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name)
        .custom(Alias::new("DATETIME(3)"))
        .not_null()
        .take()
}
