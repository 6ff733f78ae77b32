//! A coupon that reached MySQL: one row per `coupon.issued.v1` event.
//! Unique `event_id`, unique `(campaign_id, user_id)`, unique `coupon_code`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "issued_coupon")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub event_id: String,
    pub campaign_id: i64,
    pub user_id: String,
    #[sea_orm(unique)]
    pub coupon_code: String,
    pub sequence: i64,
    pub issued_at: DateTime,
    pub persisted_at: DateTime,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::campaign::Entity",
        from = "Column::CampaignId",
        to = "super::campaign::Column::Id"
    )]
    Campaign,
}

impl Related<super::campaign::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Campaign.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
