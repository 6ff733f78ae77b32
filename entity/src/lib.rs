//! sea-orm entities of flashcoupon's MySQL tables. Entities only: queries live in
//! the service's `persistence` module, schema changes in the `migration` crate.

pub mod campaign;
pub mod issued_coupon;
pub mod processed_order;
pub mod product;
pub mod product_daily_sales;
