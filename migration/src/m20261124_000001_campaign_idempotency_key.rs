//! `campaign.idempotency_key`: the `Idempotency-Key` a create request carried. It is
//! unique, so a retried create (its first answer was lost, or was a 503 after the row
//! was written) finds the campaign the first attempt wrote instead of writing a
//! second one. NULL for campaigns created without a key; keys compare byte for byte.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261122_000001_create_campaign::Campaign;

/// The unique index on the key (NULLs, campaigns without one, do not collide).
const KEY_INDEX: &str = "uq_campaign_idempotency_key";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum CampaignKey {
    IdempotencyKey,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = if manager.get_database_backend() == DbBackend::MySql {
            ColumnDef::new(CampaignKey::IdempotencyKey)
                .custom(Alias::new(
                    "VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                ))
                .null()
                .take()
        } else {
            string_len_null(CampaignKey::IdempotencyKey, 64)
        };
        manager
            .alter_table(
                Table::alter()
                    .table(Campaign::Table)
                    .add_column(column)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(KEY_INDEX)
                    .table(Campaign::Table)
                    .col(CampaignKey::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(KEY_INDEX)
                    .table(Campaign::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Campaign::Table)
                    .drop_column(CampaignKey::IdempotencyKey)
                    .to_owned(),
            )
            .await
    }
}
