//! A flash campaign: its stock, window, discount and the marketing brake.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "campaign")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    pub total_quantity: i64,
    pub starts_at: DateTime,
    pub ends_at: DateTime,
    /// `fixed` or `percent`.
    pub discount_kind: String,
    #[sea_orm(column_type = "Decimal(Some((12, 2)))")]
    pub discount_value: Decimal,
    pub coupon_valid_days: i32,
    pub paused: bool,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// The `Idempotency-Key` of the create request, if it carried one (unique).
    pub idempotency_key: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::issued_coupon::Entity")]
    IssuedCoupon,
}

impl Related<super::issued_coupon::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::IssuedCoupon.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
