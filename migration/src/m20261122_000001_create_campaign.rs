//! The `campaign` table.

use sea_orm_migration::{prelude::*, schema::*};

use crate::datetime_ms;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Campaign::Table)
                    .if_not_exists()
                    .col(big_integer(Campaign::Id).auto_increment().primary_key())
                    .col(string_len(Campaign::Name, 200))
                    .col(big_integer(Campaign::TotalQuantity))
                    .col(datetime_ms(Campaign::StartsAt))
                    .col(datetime_ms(Campaign::EndsAt))
                    .col(string_len(Campaign::DiscountKind, 16))
                    .col(decimal_len(Campaign::DiscountValue, 12, 2))
                    .col(integer(Campaign::CouponValidDays))
                    .col(boolean(Campaign::Paused).default(false))
                    .col(datetime_ms(Campaign::CreatedAt))
                    .col(datetime_ms(Campaign::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_campaign_ends_at")
                    .table(Campaign::Table)
                    .col(Campaign::EndsAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Campaign::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Campaign {
    Table,
    Id,
    Name,
    TotalQuantity,
    StartsAt,
    EndsAt,
    DiscountKind,
    DiscountValue,
    CouponValidDays,
    Paused,
    CreatedAt,
    UpdatedAt,
}
