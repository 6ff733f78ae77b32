//! The read path's tables: `product`, `product_daily_sales` (product, UTC day,
//! quantity) and `processed_order` (idempotency of sales ingestion).

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
                    .table(Product::Table)
                    .if_not_exists()
                    .col(big_integer(Product::Id).primary_key())
                    .col(string_len(Product::Name, 200))
                    .col(decimal_len(Product::Price, 12, 2))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProductDailySales::Table)
                    .if_not_exists()
                    .col(big_integer(ProductDailySales::ProductId))
                    .col(date(ProductDailySales::Day))
                    .col(big_integer(ProductDailySales::Quantity))
                    .primary_key(
                        Index::create()
                            .col(ProductDailySales::ProductId)
                            .col(ProductDailySales::Day),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_product_daily_sales_day")
                    .table(ProductDailySales::Table)
                    .col(ProductDailySales::Day)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProcessedOrder::Table)
                    .if_not_exists()
                    .col(string_len(ProcessedOrder::EventId, 64).primary_key())
                    .col(string_len(ProcessedOrder::OrderId, 64))
                    .col(datetime_ms(ProcessedOrder::PaidAt))
                    .col(datetime_ms(ProcessedOrder::ProcessedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ProcessedOrder::Table.into_iden(),
            ProductDailySales::Table.into_iden(),
            Product::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Product {
    Table,
    Id,
    Name,
    Price,
}

#[derive(DeriveIden)]
enum ProductDailySales {
    Table,
    ProductId,
    Day,
    Quantity,
}

#[derive(DeriveIden)]
enum ProcessedOrder {
    Table,
    EventId,
    OrderId,
    PaidAt,
    ProcessedAt,
}
