//! flashcoupon: first-come coupon issuance for flash events.
//!
//! A guided tour, in the order a request travels:

/// Top products: L1 cache, Redis snapshot, guarded MySQL fallback, refresher.
pub mod catalog;
/// The command line: serve, consume, migrate, campaign, demo, kafka.
pub mod cli;
/// Typed settings in layers: defaults, file, `FLASHCOUPON__*` environment.
pub mod config;
/// Validated types and rules, no I/O: shoppers, campaigns, coupons, events.
pub mod domain;
/// Kafka (rdkafka): the idempotent producer, the persister, diagnostics.
pub mod events;
/// The HTTP API (actix-web): routes, problem+json errors, health, OpenAPI.
pub mod http;
/// The issuing rule, campaign administration and the outbox relay.
pub mod issuance;
/// MySQL (sea-orm): campaigns and issued coupons.
pub mod persistence;
/// Redis vs outbox vs MySQL: differences, gauges, repair, the scheduled pass.
pub mod reconcile;
/// Circuit breakers (failsafe) and bulkheads used around Redis and MySQL.
pub mod resilience;
/// Wiring: builds the application, runs it, stops it in order.
pub mod startup;
/// Redis (deadpool-redis): the issuance Lua script, outbox streams, live figures.
pub mod store;
/// Logging and every metric instrument.
pub mod telemetry;
