//! The `issued_coupon` table: the durable record of every coupon, written by the
//! persister. Its unique keys make re-delivered events a no-op.

use sea_orm_migration::{prelude::*, schema::*};

use crate::datetime_ms;

use crate::m20261122_000001_create_campaign::Campaign;

/// The unique (campaign_id, user_id) index: one coupon per shopper per campaign, and
/// the order of the keyset pages that re-arm and reconcile read.
pub const CAMPAIGN_USER_INDEX: &str = "uq_issued_coupon_campaign_user";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IssuedCoupon::Table)
                    .if_not_exists()
                    .col(big_integer(IssuedCoupon::Id).auto_increment().primary_key())
                    .col(string_len(IssuedCoupon::EventId, 64).unique_key())
                    .col(big_integer(IssuedCoupon::CampaignId))
                    .col(string_len(IssuedCoupon::UserId, 64))
                    .col(string_len(IssuedCoupon::CouponCode, 32).unique_key())
                    .col(big_integer(IssuedCoupon::Sequence))
                    .col(datetime_ms(IssuedCoupon::IssuedAt))
                    .col(datetime_ms(IssuedCoupon::PersistedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_issued_coupon_campaign")
                            .from(IssuedCoupon::Table, IssuedCoupon::CampaignId)
                            .to(Campaign::Table, Campaign::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(CAMPAIGN_USER_INDEX)
                    .table(IssuedCoupon::Table)
                    .col(IssuedCoupon::CampaignId)
                    .col(IssuedCoupon::UserId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_issued_coupon_user")
                    .table(IssuedCoupon::Table)
                    .col(IssuedCoupon::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IssuedCoupon::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum IssuedCoupon {
    Table,
    Id,
    EventId,
    CampaignId,
    UserId,
    CouponCode,
    Sequence,
    IssuedAt,
    PersistedAt,
}
