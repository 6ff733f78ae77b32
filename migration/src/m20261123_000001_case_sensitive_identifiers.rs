//! Identifiers compare byte for byte. The tables were created with the database's
//! default collation (`utf8mb4_unicode_ci` or `_general_ci`), under which shopper
//! `Alice` and shopper `alice` are one key: Redis issued each a coupon, and the
//! unique (campaign, user) index refused the second row, so a coupon acknowledged
//! to a shopper could never reach MySQL. The same held for sales order ids. On
//! MySQL/MariaDB this turns those columns to `utf8mb4_bin`; other backends already
//! compare bytes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (table, column, type).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("issued_coupon", "user_id", "VARCHAR(64)"),
    ("issued_coupon", "event_id", "VARCHAR(64)"),
    ("issued_coupon", "coupon_code", "VARCHAR(32)"),
    ("processed_order", "event_id", "VARCHAR(64)"),
    ("processed_order", "order_id", "VARCHAR(64)"),
];

async fn collate(manager: &SchemaManager<'_>, collation: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::MySql {
        return Ok(());
    }
    let db = manager.get_connection();
    for (table, column, declaration) in COLUMNS {
        db.execute_unprepared(&format!(
            "ALTER TABLE `{table}` MODIFY `{column}` {declaration} \
             CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
        ))
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        collate(manager, "utf8mb4_bin").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        collate(manager, "utf8mb4_unicode_ci").await
    }
}
