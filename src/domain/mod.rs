//! Validated domain types, one file per concept: shopper and campaign identifiers,
//! coupon codes, new campaigns, the Kafka events, top products. No I/O lives here;
//! everything is plain data and the rules that make it valid.

/// The campaign rules: new campaigns, discounts, status.
mod campaign;
/// Coupon codes, coupons, the outcome of an issuance attempt.
mod coupon;
/// The Kafka event contracts.
mod events;
/// Shopper ids, idempotency keys, campaign ids.
mod ids;
/// The error every rule gives.
mod invalid;
/// The top-products types.
mod products;

pub use campaign::{Campaign, CampaignStatus, Discount, DiscountKind, NewCampaign, MAX_STOCK};
pub use coupon::{new_coupon_code, Coupon, IssueOutcome, NotOpenReason};
pub use events::{dlt_topic_of, retry_topic_of, CouponIssuedEvent, OrderItem, OrderPaidEvent};
pub use ids::{parse_campaign_id, CampaignId, IdempotencyKey, UserId};
pub use invalid::Invalid;
pub use products::{parse_top_query, TopProduct, TopSnapshot, TOP_MAX_DAYS, TOP_MAX_LIMIT};
