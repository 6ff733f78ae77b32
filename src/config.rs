//! Typed settings, loaded in layers: built-in defaults (the local stack), then an
//! optional TOML file, then `FLASHCOUPON__SECTION__KEY` environment variables.
//! Secrets (admin token, DSNs) are `SecretString`s, so they never print.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub admin: AdminSettings,
    pub relay: RelaySettings,
    pub persister: PersisterSettings,
    pub catalog: CatalogSettings,
    pub log: LogSettings,
    pub tracing: TracingSettings,
    pub reconcile: ReconcileSettings,
    pub limits: LimitSettings,
    pub auth: AuthSettings,
}

/// Rate limits of the shopper API (token buckets per shopper and per client address).
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Off for load tests (`FLASHCOUPON__LIMITS__ENABLED=false`).
    pub enabled: bool,
    /// Sustained requests per second of one shopper, and the burst allowed.
    pub per_shopper_per_sec: u32,
    pub shopper_burst: u32,
    /// Sustained requests per second of one client address, and the burst allowed.
    pub per_address_per_sec: u32,
    pub address_burst: u32,
    /// Take the client address from the last `X-Forwarded-For` entry, the one the
    /// trusted proxy in front appended (only behind such a proxy).
    pub trust_forwarded_for: bool,
}

/// How the shopper is identified: the gateway's `X-User-Id` header, or, when a key
/// is configured, a verified JWT whose `sub` is the shopper.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// HS256 shared secret; empty: not used.
    pub jwt_secret: SecretString,
    /// PEM file of an RS256 or ES256 public key; empty: not used.
    pub jwt_public_key_file: String,
    /// Required `iss` and `aud` when not empty.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
}

/// The scheduled comparison of Redis, outbox and MySQL (see `reconcile`).
#[derive(Debug, Clone, Deserialize)]
pub struct ReconcileSettings {
    /// Seconds between passes of the service; 0 turns the pass off.
    pub interval_secs: u64,
    /// A coupon younger than this is in flight, not missing from MySQL.
    pub grace_secs: u64,
    /// Campaigns that ended longer ago than this are not checked.
    pub lookback_hours: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Worker threads of actix-web; 0 means one per core.
    pub workers: usize,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long in-flight requests get to finish on SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// How long an idle keep-alive connection stays open; 0 turns keep-alive off.
    /// Longer than the idle timeout of the proxy in front, so the proxy closes first.
    pub keep_alive_secs: u64,
    /// Seconds a 503 tells the client to wait (`Retry-After`).
    pub retry_after_secs: u64,
    /// Claims this instance lets wait on Redis at once; one more is answered 503 at
    /// once instead of queueing behind them (Redis slow or the instance saturated).
    pub max_claims_in_flight: NonZeroUsize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `single`: one Redis at `url`; `sentinel`: the primary named `sentinel_master`,
    /// found (and found again after a failover) through `sentinel_urls`; `cluster`:
    /// Redis Cluster reached through `cluster_urls`.
    pub mode: String,
    /// Comma-separated seed nodes of a Redis Cluster.
    pub cluster_urls: String,
    pub url: SecretString,
    /// Comma-separated sentinel addresses, e.g. `redis://10.0.0.1:26379,redis://10.0.0.2:26379`.
    pub sentinel_urls: String,
    pub sentinel_master: String,
    /// Long-lived multiplexed connections that every call shares (commands of
    /// concurrent calls are pipelined on them). Each thread keeps to one; with at
    /// least as many as actix workers plus runtime threads, each thread has its own.
    pub shared_connections: usize,
    /// Pool of exclusive connections (durability mode's `WAIT`), which also makes
    /// the shared ones.
    pub pool_size: usize,
    /// Upper bound for one Redis call including the wait for a pooled connection.
    pub timeout_ms: u64,
    /// Prefix of every key, so tests and tenants can share one Redis.
    pub key_prefix: String,
    /// Durability mode: a coupon is acknowledged only once this many replicas have
    /// it (`WAIT`); otherwise the claim answers 503 and a retry returns the coupon.
    /// 0 (default) acknowledges on the primary's write alone.
    pub wait_replicas: u32,
    /// How long `WAIT` may take; keep it well under `timeout_ms`.
    pub wait_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    pub brokers: String,
    pub issued_topic: String,
    /// Dead-letter topic; empty means `<issued_topic>.dlt`.
    pub dlt_topic: String,
    pub persister_group: String,
    pub partitions: i32,
    /// Replicas of each topic created at start-up: 1 suits the local single broker;
    /// a real cluster wants 3, or the relay acknowledges events that one broker holds.
    pub replication_factor: i32,
    /// `min.insync.replicas` of each topic created at start-up: with `acks=all`, how
    /// many replicas hold an event before the relay counts it delivered (2 of 3 in a
    /// real cluster, so one broker may die without losing an acknowledged event).
    pub min_insync_replicas: i32,
    /// librdkafka's `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`.
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; empty: no SASL.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: SecretString,
    /// PEM file of the CA that signed the brokers' certificates; empty: the system's.
    pub ssl_ca_location: String,
    /// Create missing topics at start-up (local stack, tests); off where a platform team owns topics.
    pub create_topics: bool,
    pub session_timeout_ms: u32,
    /// How long the producer keeps trying one message before reporting failure.
    pub message_timeout_ms: u32,
    /// Timeout of metadata and admin calls (readiness, topic creation).
    pub request_timeout_ms: u64,
    /// Waits before each retry of a rejected message (`<topic>.retry`); then the DLT.
    pub retry_delays_ms: Vec<u64>,
}

#[derive(Clone, Deserialize)]
pub struct AdminSettings {
    pub token: SecretString,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettings {
    pub enabled: bool,
    /// Most outbox entries read and in flight to Kafka at once per campaign.
    pub batch_size: usize,
    /// Pause between polls when every outbox is empty (doubling up to 8 x while idle).
    pub idle_ms: u64,
    /// Entries pending this long on another instance are claimed (it probably died).
    pub claim_idle_ms: u64,
    /// How often the relay re-reads the list of armed campaigns: the first coupons of
    /// a campaign armed meanwhile wait up to this long for delivery (one SMEMBERS).
    pub campaigns_refresh_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PersisterSettings {
    pub enabled: bool,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
}

/// The top-products read path.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogSettings {
    /// Run the `order.paid.v1` consumer in `serve`.
    pub sales_enabled: bool,
    pub orders_topic: String,
    pub orders_group: String,
    /// Run the refresher (one leader at a time across instances).
    pub refresher_enabled: bool,
    pub refresh_interval_ms: u64,
    pub lease_ms: u64,
    pub snapshot_ttl_secs: u64,
    pub l1_ttl_ms: u64,
    pub redis_breaker: BreakerConfig,
    pub mysql_breaker: BreakerConfig,
    /// At most this many fallback queries run against MySQL at once, per instance.
    pub mysql_max_concurrent: usize,
    /// How long a request waits for a fallback slot before answering from stale.
    pub mysql_max_wait_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct BreakerConfig {
    pub failures_to_open: u32,
    pub open_ms: u64,
    pub max_open_ms: u64,
    pub trial_calls: usize,
    pub timeout_ms: u64,
}

impl BreakerConfig {
    pub fn settings(&self) -> crate::resilience::BreakerSettings {
        crate::resilience::BreakerSettings {
            failures_to_open: self.failures_to_open,
            open_for: Duration::from_millis(self.open_ms),
            max_open: Duration::from_millis(self.max_open_ms.max(self.open_ms)),
            trial_calls: self.trial_calls,
            call_timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info,flashcoupon=debug`.
    pub filter: String,
    /// `json` for production, `pretty` for a terminal.
    pub format: String,
}

/// OpenTelemetry traces: always made (one trace per request, carried through Kafka
/// in `traceparent`), exported over OTLP/HTTP only when an endpoint is set.
#[derive(Debug, Clone, Deserialize)]
pub struct TracingSettings {
    /// OTLP/HTTP base address, e.g. `http://127.0.0.1:4318`; empty: no export.
    pub otlp_endpoint: String,
    /// `http/protobuf` (collectors' default) or `http/json`.
    pub otlp_protocol: String,
    /// Upper bound for one export request.
    pub otlp_timeout_ms: u64,
    /// Share of new traces sampled, 0.0..=1.0; a caller's sampled flag is honoured.
    pub sample_ratio: f64,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Which spans become OpenTelemetry spans (`tracing` filter syntax).
    pub filter: String,
}

const DEFAULTS: &str = r#"
[server]
host = "127.0.0.1"
port = 8080
workers = 0
max_body_bytes = 16384
shutdown_timeout_secs = 10
keep_alive_secs = 75
retry_after_secs = 1
max_claims_in_flight = 2048

[redis]
mode = "single"
url = "redis://127.0.0.1:6379/0"
sentinel_urls = ""
sentinel_master = "mymaster"
cluster_urls = ""
shared_connections = 4
pool_size = 64
timeout_ms = 1000
key_prefix = "fc:"
wait_replicas = 0
wait_timeout_ms = 200

[database]
url = "mysql://flashcoupon:flashcoupon@127.0.0.1:3306/flashcoupon"
max_connections = 20
acquire_timeout_ms = 2000
statement_timeout_ms = 5000

[kafka]
brokers = "127.0.0.1:9092"
issued_topic = "coupon.issued.v1"
dlt_topic = ""
persister_group = "flashcoupon-persister"
partitions = 3
replication_factor = 1
min_insync_replicas = 1
security_protocol = "plaintext"
sasl_mechanism = ""
sasl_username = ""
sasl_password = ""
ssl_ca_location = ""
create_topics = true
session_timeout_ms = 6000
message_timeout_ms = 10000
request_timeout_ms = 5000
retry_delays_ms = [1000, 2000, 10000]

[admin]
token = "change-me-local-admin-token"

[relay]
enabled = true
batch_size = 2000
idle_ms = 20
claim_idle_ms = 30000
campaigns_refresh_ms = 200

[persister]
enabled = true
batch_size = 500
batch_wait_ms = 50

[catalog]
sales_enabled = true
orders_topic = "order.paid.v1"
orders_group = "flashcoupon-sales"
refresher_enabled = true
refresh_interval_ms = 5000
lease_ms = 15000
snapshot_ttl_secs = 300
l1_ttl_ms = 2000
mysql_max_concurrent = 4
mysql_max_wait_ms = 200

[catalog.redis_breaker]
failures_to_open = 3
open_ms = 1000
max_open_ms = 10000
trial_calls = 2
timeout_ms = 100

[catalog.mysql_breaker]
failures_to_open = 5
open_ms = 2000
max_open_ms = 30000
trial_calls = 1
timeout_ms = 2000

[log]
filter = "info"
format = "json"

[limits]
enabled = true
per_shopper_per_sec = 5
shopper_burst = 10
per_address_per_sec = 500
address_burst = 1000
trust_forwarded_for = false

[auth]
jwt_secret = ""
jwt_public_key_file = ""
jwt_issuer = ""
jwt_audience = ""
jwt_leeway_secs = 30

[reconcile]
interval_secs = 60
grace_secs = 120
lookback_hours = 24

[tracing]
otlp_endpoint = ""
otlp_protocol = "http/protobuf"
otlp_timeout_ms = 3000
sample_ratio = 1.0
service_name = "flashcoupon"
filter = "info"
"#;

impl Settings {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, config::ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder
            .add_source(
                config::Environment::with_prefix("FLASHCOUPON")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()
    }

    /// Defaults only: the starting point of tests.
    pub fn defaults() -> Self {
        Self::load(None).expect("built-in defaults are valid")
    }
}

impl RedisSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl KafkaSettings {
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect()
    }

    pub fn dlt_topic(&self) -> String {
        if self.dlt_topic.is_empty() {
            crate::domain::dlt_topic_of(&self.issued_topic)
        } else {
            self.dlt_topic.clone()
        }
    }

    /// The coupon topics the service creates: issued, its retry topic, its DLT.
    pub fn coupon_topics(&self) -> [String; 3] {
        [
            self.issued_topic.clone(),
            crate::domain::retry_topic_of(&self.issued_topic),
            self.dlt_topic(),
        ]
    }
}

impl CatalogSettings {
    /// The order topics the service creates: paid orders, their retry topic, their DLT.
    pub fn order_topics(&self) -> [String; 3] {
        [
            self.orders_topic.clone(),
            crate::domain::retry_topic_of(&self.orders_topic),
            crate::domain::dlt_topic_of(&self.orders_topic),
        ]
    }
}

impl AdminSettings {
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_local_stack() {
        let s = Settings::defaults();
        assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(s.kafka.dlt_topic(), "coupon.issued.v1.dlt");
        assert_eq!(s.redis.url.expose_secret(), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let s = Settings::defaults();
        let printed = format!("{s:?}");
        assert!(!printed.contains("change-me-local-admin-token"));
        assert!(!printed.contains("flashcoupon:flashcoupon@"));
        let mut auth = s.auth.clone();
        auth.jwt_secret = SecretString::from("jwt-very-secret".to_owned());
        assert!(!format!("{auth:?}").contains("jwt-very-secret"));
        let mut kafka = s.kafka.clone();
        kafka.sasl_password = SecretString::from("kafka-very-secret".to_owned());
        assert!(!format!("{kafka:?}").contains("kafka-very-secret"));
    }
}
