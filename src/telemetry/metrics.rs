//! Every metric instrument of flashcoupon, declared in one place. The names are the
//! contract of DESIGN.md that `grafana/` alerts, dashboards and runbooks query:
//! OpenTelemetry instruments, exported in Prometheus text format at `/metrics`
//! (a counter `coupon_issue` is scraped as `coupon_issue_total`, a histogram with
//! unit `s` gains `_seconds`).

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider, ObservableGauge};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::Semaphore;

/// Bucket bounds in seconds for request and call latencies: fine below 10 ms
/// where the hot path lives, and bracketing the 100 ms, 500 ms and 1 s alert
/// thresholds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// All instruments plus the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    _provider: SdkMeterProvider,
    http_request_duration: Histogram<f64>,
    coupon_issue: Counter<u64>,
    coupon_outbox_pending: Gauge<i64>,
    coupon_relay_delivery: Histogram<f64>,
    kafka_consumer_lag: Gauge<i64>,
    kafka_dlt_messages: Counter<u64>,
    db_pool_connections: Gauge<i64>,
    db_pool_acquire: Histogram<f64>,
    db_pool_timeouts: Counter<u64>,
    redis_pool_connections: Gauge<i64>,
    redis_command_duration: Histogram<f64>,
    campaign_stock_remaining: Gauge<i64>,
    persister_rows: Counter<u64>,
    redis_connected_replicas: Gauge<i64>,
    cache_requests: Counter<u64>,
    circuit_breaker_state: Gauge<i64>,
    circuit_breaker_calls: Counter<u64>,
    bulkhead_in_flight: Gauge<i64>,
    bulkhead_wait: Histogram<f64>,
    bulkhead_rejections: Counter<u64>,
    reconcile_differences: Gauge<i64>,
    claim_limits: ClaimLimits,
    _coupon_issue_in_flight: ObservableGauge<i64>,
}

/// The claim limits `coupon_issue_in_flight` reads when scraped: their slots
/// (dropped with their service) and their size.
type ClaimLimits = Arc<Mutex<Vec<(Weak<Semaphore>, usize)>>>;

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide instruments, created on first use.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

fn latency(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(LATENCY_BUCKETS.to_vec())
        .build()
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .expect("the prometheus exporter builds with a fresh registry");
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("flashcoupon");
        let claim_limits = ClaimLimits::default();
        let watched = claim_limits.clone();
        let coupon_issue_in_flight = meter
            .i64_observable_gauge("coupon_issue_in_flight")
            .with_description(
                "Claims waiting on Redis (in_use) and the most this instance lets wait (max)",
            )
            .with_callback(move |observer| {
                let mut limits = watched.lock().unwrap_or_else(|e| e.into_inner());
                let (mut in_use, mut max) = (0, 0);
                // One pass: count the live limits, forget those whose service is gone.
                limits.retain(|(slots, limit)| match slots.upgrade() {
                    Some(slots) => {
                        in_use += limit.saturating_sub(slots.available_permits()) as i64;
                        max += *limit as i64;
                        true
                    }
                    None => false,
                });
                if limits.is_empty() {
                    return;
                }
                observer.observe(in_use, &[KeyValue::new("state", "in_use")]);
                observer.observe(max, &[KeyValue::new("state", "max")]);
            })
            .build();
        let metrics = Self {
            http_request_duration: latency(
                &meter,
                "http_server_request_duration",
                "Duration of HTTP requests by route, method and status",
            ),
            coupon_issue: meter
                .u64_counter("coupon_issue")
                .with_description("Issuance attempts by campaign and result")
                .build(),
            coupon_outbox_pending: meter
                .i64_gauge("coupon_outbox_pending")
                .with_description("Issued coupons waiting in a campaign's outbox for Kafka")
                .build(),
            coupon_relay_delivery: latency(
                &meter,
                "coupon_relay_delivery",
                "Time from issuance to the broker's delivery acknowledgement",
            ),
            kafka_consumer_lag: meter
                .i64_gauge("kafka_consumer_lag")
                .with_description(
                    "Messages between a consumer group's position and the high watermark",
                )
                .build(),
            kafka_dlt_messages: meter
                .u64_counter("kafka_dlt_messages")
                .with_description("Messages sent to a dead-letter topic")
                .build(),
            db_pool_connections: meter
                .i64_gauge("db_pool_connections")
                .with_description("MySQL pool connections by state (in_use, idle, max)")
                .build(),
            db_pool_acquire: latency(
                &meter,
                "db_pool_acquire",
                "Time to acquire a MySQL connection from the pool",
            ),
            db_pool_timeouts: meter
                .u64_counter("db_pool_timeouts")
                .with_description("MySQL pool acquisitions that timed out")
                .build(),
            redis_pool_connections: meter
                .i64_gauge("redis_pool_connections")
                .with_description("Redis pool connections by state (in_use, idle, max)")
                .build(),
            redis_command_duration: latency(
                &meter,
                "redis_command_duration",
                "Duration of Redis calls, including the wait for a pooled connection",
            ),
            campaign_stock_remaining: meter
                .i64_gauge("campaign_stock_remaining")
                .with_description("Coupons left to issue per campaign")
                .build(),
            persister_rows: meter
                .u64_counter("coupon_persister_rows")
                .with_description(
                    "Coupon rows the persister committed to MySQL (duplicates excluded)",
                )
                .build(),
            redis_connected_replicas: meter
                .i64_gauge("redis_connected_replicas")
                .with_description("Replicas connected to the Redis primary in use")
                .build(),
            cache_requests: meter
                .u64_counter("cache_requests")
                .with_description("Read-path lookups by cache and result (hit, miss, stale)")
                .build(),
            circuit_breaker_state: meter
                .i64_gauge("circuit_breaker_state")
                .with_description("Circuit breaker state: 0 closed, 1 half-open, 2 open")
                .build(),
            circuit_breaker_calls: meter
                .u64_counter("circuit_breaker_calls")
                .with_description(
                    "Calls through a breaker by outcome (success, failure, timeout, rejected)",
                )
                .build(),
            bulkhead_in_flight: meter
                .i64_gauge("bulkhead_in_flight")
                .with_description("Calls running inside a bulkhead")
                .build(),
            bulkhead_wait: latency(&meter, "bulkhead_wait", "Time waited for a bulkhead slot"),
            bulkhead_rejections: meter
                .u64_counter("bulkhead_rejections")
                .with_description(
                    "Calls refused because the bulkhead stayed full for its whole wait",
                )
                .build(),
            reconcile_differences: meter
                .i64_gauge("reconcile_differences")
                .with_description("Differences the last reconciliation found, by campaign and kind")
                .build(),
            claim_limits,
            _coupon_issue_in_flight: coupon_issue_in_flight,
            registry,
            _provider: provider,
        };
        // Counters exported at 0 from the start (rate() and increase() need a first sample).
        metrics.db_pool_timeouts.add(0, &[]);
        metrics.persister_rows.add(0, &[]);
        metrics
    }

    /// Prometheus text exposition of every instrument.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// `route` and `method` are `'static` (interned templates, standard methods), so
    /// recording allocates no label.
    pub fn record_http(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.http_request_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("http_route", route),
                KeyValue::new("http_request_method", method),
                KeyValue::new("http_response_status_code", i64::from(status)),
            ],
        );
    }

    /// `result`: issued, already_issued, sold_out, not_open or error.
    pub fn record_issue(&self, campaign_id: i64, result: &'static str) {
        self.coupon_issue.add(
            1,
            &[
                KeyValue::new("campaign_id", campaign_id.to_string()),
                KeyValue::new("result", result),
            ],
        );
    }

    /// A claim this instance turned away before the rule (rate-limited, or past its
    /// in-flight limit): `result="rejected"`, without `campaign_id`, because the
    /// campaign is not known to exist yet and an id from a request must not make a
    /// series of its own.
    pub fn record_claim_rejected(&self) {
        self.coupon_issue
            .add(1, &[KeyValue::new("result", "rejected")]);
    }

    /// Reports the claim limit `slots` (of `limit` slots) in `coupon_issue_in_flight`
    /// for as long as its service lives; read when scraped, so a claim pays nothing.
    pub fn watch_claims_in_flight(&self, slots: Weak<Semaphore>, limit: usize) {
        self.claim_limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((slots, limit));
    }

    pub fn set_outbox_pending(&self, campaign_id: i64, pending: i64) {
        self.coupon_outbox_pending.record(
            pending,
            &[KeyValue::new("campaign_id", campaign_id.to_string())],
        );
    }

    pub fn set_stock_remaining(&self, campaign_id: i64, remaining: i64) {
        self.campaign_stock_remaining.record(
            remaining,
            &[KeyValue::new("campaign_id", campaign_id.to_string())],
        );
    }

    pub fn record_relay_delivery(&self, elapsed: Duration) {
        self.coupon_relay_delivery
            .record(elapsed.as_secs_f64(), &[]);
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, group: &str, lag: i64) {
        self.kafka_consumer_lag.record(
            lag,
            &[
                KeyValue::new("topic", topic.to_owned()),
                KeyValue::new("partition", i64::from(partition)),
                KeyValue::new("group", group.to_owned()),
            ],
        );
    }

    /// Exports the DLT counter at 0 before the first dead letter, so rules using
    /// `increase()` see the first one.
    pub fn declare_dlt(&self, topic: &str) {
        self.kafka_dlt_messages
            .add(0, &[KeyValue::new("topic", topic.to_owned())]);
    }

    pub fn record_dlt(&self, topic: &str) {
        self.kafka_dlt_messages
            .add(1, &[KeyValue::new("topic", topic.to_owned())]);
    }

    pub fn set_db_pool(&self, in_use: i64, idle: i64, max: i64) {
        for (state, value) in [("in_use", in_use), ("idle", idle), ("max", max)] {
            self.db_pool_connections
                .record(value, &[KeyValue::new("state", state)]);
        }
    }

    pub fn record_db_acquire(&self, elapsed: Duration, timed_out: bool) {
        self.db_pool_acquire.record(elapsed.as_secs_f64(), &[]);
        if timed_out {
            self.db_pool_timeouts.add(1, &[]);
        }
    }

    pub fn set_redis_pool(&self, in_use: i64, idle: i64, max: i64) {
        for (state, value) in [("in_use", in_use), ("idle", idle), ("max", max)] {
            self.redis_pool_connections
                .record(value, &[KeyValue::new("state", state)]);
        }
    }

    pub fn record_redis_command(&self, command: &'static str, elapsed: Duration, ok: bool) {
        self.redis_command_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("command", command),
                KeyValue::new("outcome", if ok { "ok" } else { "error" }),
            ],
        );
    }

    pub fn set_redis_replicas(&self, replicas: i64) {
        self.redis_connected_replicas.record(replicas, &[]);
    }

    /// `result`: hit, miss or stale.
    pub fn record_cache(&self, cache: &'static str, result: &'static str) {
        self.cache_requests.add(
            1,
            &[
                KeyValue::new("cache", cache),
                KeyValue::new("result", result),
            ],
        );
    }

    pub fn set_breaker_state(&self, breaker: &'static str, state: u8) {
        self.circuit_breaker_state
            .record(i64::from(state), &[KeyValue::new("breaker", breaker)]);
    }

    pub fn record_breaker_call(&self, breaker: &'static str, outcome: &'static str) {
        self.circuit_breaker_calls.add(
            1,
            &[
                KeyValue::new("breaker", breaker),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    pub fn set_bulkhead_in_flight(&self, bulkhead: &'static str, in_flight: i64) {
        self.bulkhead_in_flight
            .record(in_flight, &[KeyValue::new("bulkhead", bulkhead)]);
    }

    pub fn record_bulkhead_wait(&self, bulkhead: &'static str, waited: Duration, rejected: bool) {
        let attrs = [KeyValue::new("bulkhead", bulkhead)];
        self.bulkhead_wait.record(waited.as_secs_f64(), &attrs);
        if rejected {
            self.bulkhead_rejections.add(1, &attrs);
        }
    }

    /// `kind`: missing_in_mysql or extra_in_mysql.
    pub fn set_reconcile_difference(&self, campaign_id: i64, kind: &'static str, count: i64) {
        self.reconcile_differences.record(
            count,
            &[
                KeyValue::new("campaign_id", campaign_id.to_string()),
                KeyValue::new("kind", kind),
            ],
        );
    }

    pub fn record_persisted(&self, rows: u64) {
        self.persister_rows.add(rows, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_appear_in_the_exposition() {
        let m = get();
        m.record_issue(1, "issued");
        m.record_http("/health/live", "GET", 200, Duration::from_millis(3));
        m.set_redis_pool(1, 2, 3);
        let text = m.render();
        assert!(
            text.contains("coupon_issue_total{campaign_id=\"1\",result=\"issued\"}"),
            "{text}"
        );
        assert!(
            text.contains("http_server_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("redis_pool_connections{state=\"max\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn claims_in_flight_are_read_from_the_limits_slots_when_scraped() {
        let m = get();
        let slots = Arc::new(Semaphore::new(5));
        m.watch_claims_in_flight(Arc::downgrade(&slots), 5);
        let taken = slots.clone().try_acquire_many_owned(2).unwrap();
        let text = m.render();
        assert!(
            text.contains("coupon_issue_in_flight{state=\"in_use\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("coupon_issue_in_flight{state=\"max\"} 5"),
            "{text}"
        );
        drop(taken);
        let text = m.render();
        assert!(
            text.contains("coupon_issue_in_flight{state=\"in_use\"} 0"),
            "{text}"
        );
        drop(slots);
        assert!(
            !m.render().contains("coupon_issue_in_flight{"),
            "a dropped limit is not reported"
        );
    }
}
