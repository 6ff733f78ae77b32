//! Test harness: every test gets its own application on a free port, its own MySQL
//! database (`test_<uuid>`, migrated), its own Redis key prefix, its own Kafka topics
//! and consumer group. Tests that stop a dependency start a private one
//! (`PrivateRedis`, `PrivateKafka`) and never touch the shared stack.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashcoupon::config::Settings;
use flashcoupon::persistence::{self, Database};
use flashcoupon::startup::{Application, StopHandle};
use flashcoupon::telemetry;
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Settings isolated for one test, pointing at the shared local stack.
pub fn isolated_settings() -> Settings {
    let mut s = Settings::defaults();
    let id = Uuid::new_v4().simple().to_string();
    s.server.port = 0;
    s.server.workers = 2;
    s.redis.key_prefix = format!("t_{id}:");
    s.database.url = SecretString::from(format!(
        "mysql://flashcoupon:flashcoupon@127.0.0.1:3306/test_{id}"
    ));
    s.kafka.brokers = std::env::var("TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    s.kafka.issued_topic = format!("coupon.issued.v1.t{id}");
    s.kafka.persister_group = format!("persister-{id}");
    s.kafka.partitions = 2;
    s.catalog.orders_topic = format!("order.paid.v1.t{id}");
    s.catalog.orders_group = format!("sales-{id}");
    s.admin.token = SecretString::from(ADMIN_TOKEN.to_owned());
    // Tests fire many requests from one address; the limits have tests of their own.
    s.limits.enabled = false;
    // Tests share two cores and one disk with each other (and, at the start of a run,
    // with the build's writeback): a commit can wait seconds for its fsync there. The
    // service's 5 s statement bound would turn that into a 503 that no test is about;
    // the tests of timeouts set their own.
    s.database.statement_timeout_ms = 15_000;
    if std::env::var("TEST_LOG").is_ok() {
        s.log.filter = "info,flashcoupon=debug".into();
        s.log.format = "pretty".into();
    } else {
        // Warnings and errors only: nextest shows a test's output when it fails, so
        // a 503 in CI comes with the cause the service logged for it.
        s.log.filter = "warn".into();
    }
    static TRACES: std::sync::OnceLock<telemetry::trace::TraceGuard> = std::sync::OnceLock::new();
    TRACES.get_or_init(|| telemetry::init(&s.log, &s.tracing).expect("telemetry"));
    s
}

/// Creates the test database and applies the migrations.
pub async fn prepare_database(settings: &Settings) -> Database {
    use secrecy::ExposeSecret;
    let url = settings.database.url.expose_secret().to_owned();
    let (server, name) = url.rsplit_once('/').expect("database url has a name");
    let mut admin = settings.database.clone();
    admin.url = SecretString::from(format!("{server}/flashcoupon"));
    let admin_db = persistence::connect(&admin)
        .await
        .expect("connect to MariaDB");
    admin_db
        .execute_unprepared(&format!(
            "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"
        ))
        .await
        .expect("create test database");
    let db = persistence::connect(&settings.database)
        .await
        .expect("connect test database");
    persistence::migrate(&db).await.expect("migrate");
    db
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub db: Database,
    pub client: reqwest::Client,
    stop: StopHandle,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// An application on the shared stack.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An application whose isolated settings `adjust` may change first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = isolated_settings();
    adjust(&mut settings);
    let db = prepare_database(&settings).await;
    start_app(settings, db).await
}

/// Starts an application on prepared settings and database.
pub async fn start_app(settings: Settings, db: Database) -> TestApp {
    let app = Application::build(settings.clone(), false)
        .await
        .expect("build application");
    let address = format!("http://127.0.0.1:{}", app.port());
    let stop = app.stop_handle();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        settings,
        db,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(512)
            .build()
            .unwrap(),
        stop,
        task: Some(task),
    }
}

impl TestApp {
    /// A connection of its own to the app's Redis, to look at or change its keys.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        use secrecy::ExposeSecret;
        let client = redis::Client::open(self.settings.redis.url.expose_secret()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Graceful stop, as on SIGTERM; waits for relay and persister to finish.
    pub async fn stop(mut self) {
        self.stop.stop().await;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    pub async fn create_campaign(&self, body: Value) -> reqwest::Response {
        self.create_campaign_request(&body)
            .send()
            .await
            .expect("request")
    }

    /// A create under an `Idempotency-Key`.
    pub async fn create_campaign_keyed(&self, body: &Value, key: &str) -> reqwest::Response {
        self.create_campaign_request(body)
            .header("Idempotency-Key", key)
            .send()
            .await
            .expect("request")
    }

    fn create_campaign_request(&self, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/admin/v1/campaigns"))
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
    }

    /// GET /admin/v1/campaigns.
    pub async fn admin_list(&self) -> Value {
        let response = self
            .client
            .get(self.url("/admin/v1/campaigns"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Creates an open campaign with `stock` coupons and returns its id.
    pub async fn open_campaign(&self, stock: i64) -> i64 {
        let response = self.create_campaign(campaign_body(stock, -60, 3600)).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["id"].as_i64().expect("id")
    }

    pub async fn claim(&self, campaign: i64, user: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/campaigns/{campaign}/issues")))
            .header("X-User-Id", user)
            .send()
            .await
            .expect("request")
    }

    /// GET `path` (as shopper `user` if given) and parse the JSON answer.
    /// Claims for shoppers `<prefix>0` .. `<prefix>{count-1}`, `concurrency` at a
    /// time; the statuses, in no particular order.
    pub async fn claim_all(
        &self,
        campaign: i64,
        prefix: &str,
        count: i64,
        concurrency: usize,
    ) -> Vec<u16> {
        use futures::{stream, StreamExt};
        stream::iter(0..count)
            .map(|i| async move {
                self.claim(campaign, &format!("{prefix}{i}"))
                    .await
                    .status()
                    .as_u16()
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    pub async fn get_json(&self, path: &str, user: Option<&str>) -> Value {
        let mut request = self.client.get(self.url(path));
        if let Some(user) = user {
            request = request.header("X-User-Id", user);
        }
        request
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json body")
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    /// Up to `count` messages of the coupon dead-letter topic (waits up to 30 s).
    pub async fn read_dlt(&self, count: usize) -> Vec<flashcoupon::events::inspect::ReadMessage> {
        self.read_dlt_within(count, Duration::from_secs(30)).await
    }

    /// Up to `count` dead letters, waiting at most `wait` for them.
    pub async fn read_dlt_within(
        &self,
        count: usize,
        wait: Duration,
    ) -> Vec<flashcoupon::events::inspect::ReadMessage> {
        self.read_topic_within(self.settings.kafka.dlt_topic(), count, wait)
            .await
    }

    /// Up to `count` messages of `topic` from its start, waiting at most `wait`.
    pub async fn read_topic_within(
        &self,
        topic: String,
        count: usize,
        wait: Duration,
    ) -> Vec<flashcoupon::events::inspect::ReadMessage> {
        let kafka = self.settings.kafka.clone();
        let name = topic.clone();
        tokio::task::spawn_blocking(move || {
            flashcoupon::events::inspect::read(&kafka, &topic, count, wait)
        })
        .await
        .expect("reader thread")
        .unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    pub async fn admin_get(&self, campaign: i64) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/admin/v1/campaigns/{campaign}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request")
    }

    /// Waits until the relay has put every coupon of the campaign on the topic (its
    /// outbox is empty); fails the test after `within`, saying whether the outbox was
    /// stuck or only slow (the pending count at the start, the figures at the end).
    pub async fn wait_relayed(&self, campaign: i64, within: Duration) {
        let deadline = Instant::now() + within;
        let mut first = None;
        loop {
            let figures = self.admin_get(campaign).await;
            if figures["pending_events"] == 0 {
                return;
            }
            let first = first.get_or_insert_with(|| figures["pending_events"].clone());
            assert!(
                Instant::now() < deadline,
                "outbox did not drain within {within:?}: {first} pending at the start; now {figures}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until MySQL holds `expected` coupons of the campaign; returns the count seen.
    pub async fn wait_persisted(&self, campaign: i64, expected: i64, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            let n = self.db.persisted_count(campaign).await.unwrap_or(-1);
            if n >= expected || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (up to `within`) for MySQL to hold `total` coupons of the campaign, then,
    /// a second later so that a late second write would show, checks that it holds
    /// exactly `total` rows for `total` distinct shoppers. Returns the rows.
    pub async fn assert_each_coupon_once(
        &self,
        campaign: i64,
        total: i64,
        within: Duration,
    ) -> Vec<flashcoupon::domain::Coupon> {
        let persisted = self.wait_persisted(campaign, total, within).await;
        // On failure, say which half stalled: events still pending is the relay
        // (Redis to Kafka); none pending is the persister (Kafka to MySQL).
        assert_eq!(
            persisted,
            total,
            "coupons in MySQL after {within:?}: {}",
            self.admin_get(campaign).await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows = self.db.coupons_of_campaign(campaign).await.unwrap();
        assert_eq!(rows.len() as i64, total, "rows written twice or lost");
        let users: std::collections::HashSet<&str> =
            rows.iter().map(|r| r.user_id.as_str()).collect();
        assert_eq!(users.len() as i64, total, "a shopper has two rows");
        rows
    }
}

/// Creates an open campaign of `stock` on a service at `base` (a spawned
/// `flashcoupon serve`) and returns its id.
pub async fn open_campaign_at(client: &reqwest::Client, base: &str, stock: i64) -> i64 {
    let created: Value = client
        .post(format!("{base}/admin/v1/campaigns"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&campaign_body(stock, -60, 3600))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_i64().expect("campaign id")
}

/// A creation body with a window relative to now, in seconds.
pub fn campaign_body(stock: i64, starts_in: i64, ends_in: i64) -> Value {
    let now = chrono::Utc::now();
    json!({
        "name": "Test flash",
        "total_quantity": stock,
        "starts_at": (now + chrono::Duration::seconds(starts_in)).to_rfc3339(),
        "ends_at": (now + chrono::Duration::seconds(ends_in)).to_rfc3339(),
        "discount": {"kind": "percent", "value": 30},
        "coupon_valid_days": 7
    })
}

/// Checks a problem+json answer and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], kind, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Inodes of the sockets listening on TCP `port` (IPv4 or IPv6), from `/proc/net`.
fn listening_socket_inodes(port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for fields in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                inodes.extend(inode.parse::<u64>().ok());
            }
        }
    }
    inodes
}

/// Whether process `pid` has one of the sockets `inodes` among its open files.
fn holds_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .any(|inode| inodes.contains(&inode))
}

/// A process killed when dropped.
pub struct Process(Option<Child>);

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Self(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits until this process itself listens on `port`. A process restarted on its
    /// old port, which another test took in the meantime, exits instead, and its
    /// dependants would talk to a stranger: the wait fails naming the port. The owner
    /// of the listening socket is read from `/proc`, so a slow start on a busy machine
    /// is waited for, not mistaken for the stranger (or the stranger for it).
    pub async fn wait_listening(&mut self, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running(port);
            if holds_socket(self.pid(), &listening_socket_inodes(port)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the process for port {port} did not listen on it within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_running(&mut self, port: u16) {
        let child = self.0.as_mut().expect("spawned");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process for port {port} exited ({status}): is the port taken by another?");
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(child) = self.0.as_mut() {
            if child.try_wait().unwrap().is_some() {
                self.0 = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh directory under the system's temp directory, named `<name>-<uuid>`, for
/// a private server's files (its owner removes it when dropped).
fn private_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A redis-server of this test alone, on a free port, in a directory of its own:
/// a replica writes the primary's snapshot to `dump.rdb` in its working directory
/// whatever `--save` says, and that must not land in the checkout.
pub struct PrivateRedis {
    pub port: u16,
    process: Process,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = private_dir(&format!("redis-{port}"));
        let process = Self::launch(port, &dir).await;
        Self { port, process, dir }
    }

    /// A replica of `primary`, on a port of its own.
    pub async fn replica_of(primary: &PrivateRedis) -> Self {
        let port = free_port();
        let dir = private_dir(&format!("redis-{port}"));
        let mut process = Process::spawn(Self::command(port, &dir).args([
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
        ]));
        process.wait_listening(port, Duration::from_secs(10)).await;
        let replica = Self { port, process, dir };
        replica.wait_synced(Duration::from_secs(30)).await;
        replica
    }

    /// Waits until this replica has loaded the primary's data and follows its
    /// stream (`master_link_status:up`). Until then it is empty: a failover to it
    /// would be a failover to a Redis that lost every campaign, not the one a test
    /// means.
    async fn wait_synced(&self, within: Duration) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let deadline = Instant::now() + within;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap();
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} not synced within {within:?}: {info}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn command(port: u16, dir: &std::path::Path) -> Command {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's first sync starts at once, not after Redis's default
            // 5 s wait for more replicas to share one diskless transfer.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir);
        command
    }

    async fn launch(port: u16, dir: &std::path::Path) -> Process {
        let mut process = Process::spawn(&mut Self::command(port, dir));
        process.wait_listening(port, Duration::from_secs(10)).await;
        process
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Sends `signal` (`STOP`: Redis stops answering but keeps its connections;
    /// `CONT`: it goes on).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Starts again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.process = Self::launch(self.port, &self.dir).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Sentinel of this test alone (`redis-server --sentinel`), watching
/// `primary` as `mymaster`, quick to fail over (down after 1 s).
pub struct PrivateSentinel {
    pub port: u16,
    _process: Process,
    dir: std::path::PathBuf,
}

impl PrivateSentinel {
    pub async fn start(primary: &PrivateRedis) -> Self {
        let port = free_port();
        let dir = private_dir(&format!("sentinel-{port}"));
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n",
                dir.display(),
                primary.port
            ),
        )
        .unwrap();
        let mut process = Process::spawn(Command::new("redis-server").arg(&conf).arg("--sentinel"));
        process.wait_listening(port, Duration::from_secs(10)).await;
        Self {
            port,
            _process: process,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateSentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of this test alone: three primaries on free ports, slots shared
/// out by `redis-cli --cluster create`.
pub struct PrivateCluster {
    pub ports: Vec<u16>,
    _nodes: Vec<Process>,
    dir: std::path::PathBuf,
}

impl PrivateCluster {
    pub async fn start() -> Self {
        let dir = private_dir("cluster");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            nodes.push(Process::spawn(
                PrivateRedis::command(*port, &dir)
                    .args(["--cluster-enabled", "yes"])
                    .arg("--cluster-config-file")
                    .arg(dir.join(format!("nodes-{port}.conf"))),
            ));
        }
        for (node, port) in nodes.iter_mut().zip(&ports) {
            node.wait_listening(*port, Duration::from_secs(10)).await;
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "{created:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &ports[0].to_string(), "cluster", "info"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never became ok");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self {
            ports,
            _nodes: nodes,
            dir,
        }
    }

    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node of a private Kafka: its ports, its data directory and, while it runs,
/// its JVM (started by `scripts/kafka-node`, which `scripts/stack` uses too).
struct KafkaNode {
    id: u32,
    port: u16,
    controller_port: u16,
    process: Option<Process>,
}

/// Apache Kafka of this test alone, on free ports, in a directory of its own: one
/// node (`start`), a three-node cluster (`start_cluster`), or one node whose clients
/// must log in with SASL/SCRAM (`start_with_scram`). Each node is a combined KRaft
/// broker and controller; its log lives on disk, so a node killed and restarted comes
/// back with its topics, messages and committed offsets, as a real broker does.
/// Dropping it kills every node and removes the directory.
pub struct PrivateKafka {
    nodes: Vec<KafkaNode>,
    voters: String,
    cluster_id: String,
    scram: Option<(String, String)>,
    dir: std::path::PathBuf,
}

impl PrivateKafka {
    /// One node: replication factor 1, as the local stack.
    pub async fn start() -> Self {
        Self::launch(1, None).await
    }

    /// Three nodes; topics created by the service get replication factor 3 and
    /// `min.insync.replicas` 2 (see [`Self::configure`]).
    pub async fn start_cluster() -> Self {
        Self::launch(3, None).await
    }

    /// One node whose client listener requires SASL/SCRAM-SHA-256 as `user`.
    pub async fn start_with_scram(user: &str, password: &str) -> Self {
        Self::launch(1, Some((user.to_owned(), password.to_owned()))).await
    }

    async fn launch(count: u32, scram: Option<(String, String)>) -> Self {
        let dir = private_dir("kafka");
        let nodes: Vec<KafkaNode> = (1..=count)
            .map(|id| KafkaNode {
                id,
                port: free_port(),
                controller_port: free_port(),
                process: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        // Kafka reads 22 base64url characters as its 16-byte id; hex digits are such.
        let cluster_id = Uuid::new_v4().simple().to_string()[..22].to_owned();
        let mut kafka = Self {
            nodes,
            voters,
            cluster_id,
            scram,
            dir,
        };
        for id in 1..=count {
            kafka.spawn_node(id);
        }
        kafka.wait_ready(count as usize).await;
        kafka
    }

    fn spawn_node(&mut self, id: u32) {
        let node = &self.nodes[(id - 1) as usize];
        let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka-node"));
        cmd.arg("--dir")
            .arg(self.dir.join(format!("node{id}")))
            .args(["--node-id", &id.to_string()])
            .args(["--port", &node.port.to_string()])
            .args(["--controller-port", &node.controller_port.to_string()])
            .args(["--voters", &self.voters])
            .args(["--cluster-id", &self.cluster_id])
            .args(["--heap", "256m"]);
        if let Some((user, password)) = &self.scram {
            cmd.args(["--scram-user", &format!("{user}:{password}")]);
        }
        let log = std::fs::File::create(self.dir.join(format!("node{id}.log"))).unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.nodes[(id - 1) as usize].process = Some(Process(Some(child)));
    }

    /// Waits until every running node listens and the cluster answers metadata
    /// naming `expected` brokers: a JVM takes seconds, more on a busy machine.
    async fn wait_ready(&mut self, expected: usize) {
        let within = Duration::from_secs(90);
        for node in self.nodes.iter_mut() {
            if let Some(process) = node.process.as_mut() {
                process.wait_listening(node.port, within).await;
            }
        }
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.address());
        if let Some((user, password)) = &self.scram {
            config
                .set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanisms", "SCRAM-SHA-256")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
        let deadline = Instant::now() + within;
        let answered = tokio::task::spawn_blocking(move || loop {
            use rdkafka::consumer::Consumer;
            let brokers = consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| m.brokers().len())
                .unwrap_or(0);
            if brokers >= expected {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        })
        .await
        .unwrap();
        assert!(
            answered,
            "private Kafka in {} did not answer with {expected} broker(s) within {within:?}",
            self.dir.display()
        );
    }

    /// Bootstrap list of every node.
    pub fn address(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Points `settings` at this Kafka: brokers, credentials, and for a cluster the
    /// replication of the topics the service creates (3 replicas, 2 in sync).
    pub fn configure(&self, settings: &mut Settings) {
        let kafka = &mut settings.kafka;
        kafka.brokers = self.address();
        if self.nodes.len() >= 3 {
            kafka.replication_factor = 3;
            kafka.min_insync_replicas = 2;
        }
        if let Some((user, password)) = &self.scram {
            kafka.security_protocol = "sasl_plaintext".into();
            kafka.sasl_mechanism = "SCRAM-SHA-256".into();
            kafka.sasl_username = user.clone();
            kafka.sasl_password = SecretString::from(password.clone());
        }
    }

    /// `kill -9` of node `id` (1-based): no flush, no goodbye to the controller.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut process) = self.nodes[(id - 1) as usize].process.take() {
            process.kill();
        }
    }

    /// Starts node `id` again on its ports and data, and waits until the cluster
    /// answers with every running node.
    pub async fn restart(&mut self, id: u32) {
        self.spawn_node(id);
        let running = self.nodes.iter().filter(|n| n.process.is_some()).count();
        self.wait_ready(running).await;
    }

    /// `kill -9` of every node.
    pub fn stop(&mut self) {
        for id in 1..=self.nodes.len() as u32 {
            self.kill(id);
        }
    }

    /// Sends `signal` to every node (`STOP`: the broker stops answering but keeps its
    /// log, its groups' offsets and its connections, as a real broker that is
    /// unreachable for a while; `CONT`: it goes on).
    pub fn signal(&self, signal: &str) {
        for node in &self.nodes {
            if let Some(process) = &node.process {
                process.signal(signal);
            }
        }
    }

    /// The node that leads `partition` of `topic` now (waiting, up to 30 s, for a
    /// topic just created or a partition between leaders to have one).
    pub async fn leader_of(&self, topic: &str, partition: i32) -> u32 {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.address());
        let consumer: rdkafka::consumer::BaseConsumer = config.create().unwrap();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let leader = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        let t = m.topics().first()?;
                        let p = t.partitions().iter().find(|p| p.id() == partition)?;
                        u32::try_from(p.leader()).ok()
                    });
                if let Some(leader) = leader {
                    return leader;
                }
                assert!(
                    Instant::now() < deadline,
                    "{topic}/{partition} has no leader after 30 s"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .unwrap()
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `flashcoupon` binary configured by environment like `settings`.
pub fn flashcoupon_command(settings: &Settings, args: &[&str]) -> Command {
    use secrecy::ExposeSecret;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashcoupon"));
    cmd.args(args)
        .env(
            "FLASHCOUPON__SERVER__PORT",
            settings.server.port.to_string(),
        )
        .env("FLASHCOUPON__SERVER__WORKERS", "2")
        .env(
            "FLASHCOUPON__DATABASE__URL",
            settings.database.url.expose_secret(),
        )
        .env(
            "FLASHCOUPON__REDIS__URL",
            settings.redis.url.expose_secret(),
        )
        .env("FLASHCOUPON__REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("FLASHCOUPON__KAFKA__BROKERS", &settings.kafka.brokers)
        .env(
            "FLASHCOUPON__KAFKA__PARTITIONS",
            settings.kafka.partitions.to_string(),
        )
        .env(
            "FLASHCOUPON__KAFKA__REPLICATION_FACTOR",
            settings.kafka.replication_factor.to_string(),
        )
        .env(
            "FLASHCOUPON__KAFKA__MIN_INSYNC_REPLICAS",
            settings.kafka.min_insync_replicas.to_string(),
        )
        .env(
            "FLASHCOUPON__KAFKA__SECURITY_PROTOCOL",
            &settings.kafka.security_protocol,
        )
        .env(
            "FLASHCOUPON__KAFKA__SASL_MECHANISM",
            &settings.kafka.sasl_mechanism,
        )
        .env(
            "FLASHCOUPON__KAFKA__SASL_USERNAME",
            &settings.kafka.sasl_username,
        )
        .env(
            "FLASHCOUPON__KAFKA__SASL_PASSWORD",
            settings.kafka.sasl_password.expose_secret(),
        )
        .env(
            "FLASHCOUPON__KAFKA__ISSUED_TOPIC",
            &settings.kafka.issued_topic,
        )
        .env(
            "FLASHCOUPON__KAFKA__PERSISTER_GROUP",
            &settings.kafka.persister_group,
        )
        .env(
            "FLASHCOUPON__CATALOG__ORDERS_TOPIC",
            &settings.catalog.orders_topic,
        )
        .env(
            "FLASHCOUPON__CATALOG__ORDERS_GROUP",
            &settings.catalog.orders_group,
        )
        .env("FLASHCOUPON__ADMIN__TOKEN", ADMIN_TOKEN)
        .env(
            "FLASHCOUPON__LIMITS__ENABLED",
            settings.limits.enabled.to_string(),
        )
        .env("FLASHCOUPON__LOG__FILTER", "warn");
    cmd
}

/// Runs `flashcoupon campaign arm` against the service of `settings`; fails the test
/// with the command's output when it does not succeed.
pub fn campaign_arm(settings: &Settings) {
    let output = flashcoupon_command(settings, &["campaign", "arm"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "campaign arm: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deletes every Redis key of the test's prefix (campaigns, outboxes, snapshots,
/// leases): Redis as a fresh or restarted-empty instance would be, for this test
/// alone. Returns how many keys were deleted.
pub async fn flush_prefix(settings: &Settings) -> usize {
    use secrecy::ExposeSecret;
    let client = redis::Client::open(settings.redis.url.expose_secret()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", settings.redis.key_prefix);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    keys.len()
}

/// A MariaDB server of this test alone: its own datadir and port.
pub struct PrivateMariaDb {
    pub port: u16,
    dir: std::path::PathBuf,
    process: Process,
}

impl PrivateMariaDb {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = private_dir("fc-mariadb");
        let status = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db");
        assert!(status.success(), "mariadb-install-db failed");
        let process = Self::launch(&dir, port).await;
        let me = Self { port, dir, process };
        let ok = Command::new("mariadb")
            .args(["-h127.0.0.1", &format!("-P{port}"), "-uroot", "-e"])
            .arg("CREATE USER 'flashcoupon'@'%' IDENTIFIED BY 'flashcoupon'; GRANT ALL ON *.* TO 'flashcoupon'@'%'; CREATE DATABASE flashcoupon;")
            .status()
            .unwrap();
        assert!(ok.success());
        me
    }

    async fn launch(dir: &std::path::Path, port: u16) -> Process {
        let mut process = Process::spawn(
            Command::new("mariadbd")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--socket={}", dir.join("sock").display()))
                .arg(format!("--pid-file={}", dir.join("pid").display()))
                .args([
                    "--bind-address=127.0.0.1",
                    &format!("--port={port}"),
                    "--user=root",
                ])
                .args(["--skip-log-bin", "--innodb-buffer-pool-size=32M"]),
        );
        process.wait_listening(port, Duration::from_secs(30)).await;
        process
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "mysql://flashcoupon:flashcoupon@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on its datadir (InnoDB recovers what was committed).
    pub async fn restart(&mut self) {
        self.process = Self::launch(&self.dir, self.port).await;
    }
}

/// A TCP proxy of this test alone in front of `target`, adding `delay` to every
/// chunk it forwards in either direction (a slow network to Redis, say).
pub struct LatencyProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    pub async fn start(target: u16, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(Self::pipe(ri, wo, delay), Self::pipe(ro, wi, delay));
                });
            }
        });
        Self { port, task }
    }

    /// Forwards each chunk `delay` after it arrived; chunks in flight overlap, so
    /// this adds latency without capping throughput.
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let reader = async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0
                    || tx
                        .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                {
                    return;
                }
            }
        };
        let writer = async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(reader, writer);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Prometheus of this test alone: scrapes `target` every second and evaluates
/// the shipped rules (`grafana/prometheus/rules`).
pub struct PrivatePrometheus {
    pub port: u16,
    dir: std::path::PathBuf,
    _process: Process,
}

impl PrivatePrometheus {
    pub async fn start(target: &str) -> Self {
        let port = free_port();
        let dir = private_dir("fc-prom");
        let rules = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/grafana/prometheus/rules/*.yml"
        );
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: flashcoupon\n    static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut process = Process::spawn(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        );
        process.wait_listening(port, Duration::from_secs(30)).await;
        Self {
            port,
            dir,
            _process: process,
        }
    }

    /// Instant query; the `data.result` array.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Names of the alerts currently firing.
    pub async fn firing(&self) -> Vec<String> {
        let body: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/alerts", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

impl Drop for PrivatePrometheus {
    fn drop(&mut self) {
        self._process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the first exposition line starting with `prefix` (name and labels).
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `wait_listening` tells our process from a stranger that holds its port: the
/// restart fails there, naming the port, instead of a later step timing out.
#[tokio::test]
async fn a_process_that_cannot_bind_its_port_fails_the_wait_naming_the_port() {
    let stranger = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stranger.local_addr().unwrap().port();
    let dir = private_dir("redis-taken-port");
    let command_dir = dir.clone();
    let waiting = tokio::spawn(async move {
        let mut redis = Process::spawn(&mut PrivateRedis::command(port, &command_dir));
        redis.wait_listening(port, Duration::from_secs(10)).await;
    });
    let failed = waiting.await.expect_err("the wait must fail");
    let message = *failed.into_panic().downcast::<String>().expect("a message");
    assert!(
        message.contains(&format!("port {port}")) && message.contains("exited"),
        "{message}"
    );
    drop(stranger);
    let _ = std::fs::remove_dir_all(&dir);
}
