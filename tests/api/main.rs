//! Black-box tests of flashcoupon against real Redis, MariaDB and Apache Kafka. One binary; each module covers one capability.

mod admin;
mod chaos;
mod console;
mod faults;
mod health;
mod helpers;
mod input;
mod issue;
mod kafka;
mod loadtest;
mod metrics;
mod observability;
mod persister;
mod products;
mod reconcile;
mod runbooks;
mod security;
mod traces;
