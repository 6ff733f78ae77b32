//! sea-orm entities of flashcoupon's MySQL tables. Entities only: queries live in
//! the service's `persistence` module, schema changes in the `migration` crate.
//!
//! Every time column is a UTC `DATETIME(3)` held as a naive `DateTime`, not as
//! `DateTimeUtc`: sqlx sends a `DateTimeUtc` as a MySQL `TIMESTAMP` value, and
//! MariaDB (before 11.5) turns a `TIMESTAMP` after 2038-01-19 into NULL, so a
//! campaign ending in 2039 could not be stored. `persistence` converts at the edge.

pub mod campaign;
pub mod issued_coupon;
pub mod processed_order;
pub mod product;
pub mod product_daily_sales;
