//! The application: wires Redis, MySQL and Kafka adapters into the services,
//! binds the listener first (so tests can use port 0), starts the relay and the
//! persister, and stops it all in order on SIGTERM: stop accepting, finish
//! in-flight requests, finish the relay's batch and flush the producer, commit
//! the persister's offsets.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::refresher::Refresher;
use crate::catalog::TopProducts;
use crate::config::Settings;
use crate::events::persister_gate::PersisterGate;
use crate::events::{self, EventProducer};
use crate::http::{self, AppState};
use crate::issuance::relay::Relay;
use crate::issuance::IssuanceService;
use crate::persistence::catalog::GuardedTopQuery;
use crate::persistence::{self, Database};
use crate::store::catalog::SnapshotStore;
use crate::store::pubsub::Notice;
use crate::store::RedisStore;
use crate::telemetry::metrics;

/// How long one re-arm of a lost campaign waits for the persister to catch up
/// before it gives up until the next try (start-up retries, the reconcile pass).
const REARM_PATIENCE: Duration = Duration::from_secs(30);

pub struct Application {
    port: u16,
    server: Server,
    handle: ServerHandle,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// How long the background work gets to stop once the server has: the relay may
    /// wait one delivery timeout for the batches it has on the wire, then flushes.
    tasks_stop_within: Duration,
    issuance: IssuanceService,
}

/// Stops a running application from outside (tests, a supervisor).
#[derive(Clone)]
pub struct StopHandle {
    server: ServerHandle,
}

impl StopHandle {
    /// Graceful stop, as on SIGTERM.
    pub async fn stop(&self) {
        self.server.stop(true).await;
    }
}

impl Application {
    /// Builds everything and binds; nothing runs until [`Application::run_until_stopped`].
    /// `handle_signals`: let actix react to SIGTERM/SIGINT (off in tests).
    pub async fn build(settings: Settings, handle_signals: bool) -> anyhow::Result<Self> {
        let store = RedisStore::new(&settings.redis)?;
        let db = persistence::connect(&settings.database).await?;
        // With a relay, coupons may be on their way through Kafka when Redis loses a
        // campaign: re-arming it waits for the persister to store them.
        let persister_gate = settings
            .relay
            .enabled
            .then(|| PersisterGate::new(&settings.kafka, REARM_PATIENCE));
        let mut issuance = IssuanceService::new(store.clone(), db.clone())
            .with_claim_limit(settings.server.max_claims_in_flight);
        if let Some(gate) = &persister_gate {
            issuance = issuance.with_persister_gate(gate.clone());
        }
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut topics = Vec::new();
        if settings.relay.enabled || settings.persister.enabled {
            topics.extend(settings.kafka.coupon_topics());
        }
        if settings.catalog.sales_enabled {
            topics.extend(settings.catalog.order_topics());
        }
        if !topics.is_empty() {
            events::check_access(&settings.kafka).await?;
        }
        create_topics(&settings, &topics).await;
        if settings.relay.enabled {
            let relay = Relay::new(
                store.clone(),
                settings.kafka.clone(),
                settings.relay.clone(),
            )?;
            tasks.push(tokio::spawn(relay.run(shutdown.clone())));
        }
        if settings.persister.enabled {
            tasks.push(spawn_logged(
                "persister",
                events::run_persister(
                    settings.kafka.clone(),
                    settings.persister.clone(),
                    db.clone(),
                    shutdown.clone(),
                ),
            ));
        }
        tasks.push(tokio::spawn(crate::issuance::rearm::run(
            issuance.clone(),
            shutdown.clone(),
        )));
        if settings.reconcile.interval_secs > 0 {
            let reconcile = &settings.reconcile;
            let mut reconciler = crate::reconcile::Reconciler::new(
                store.clone(),
                db.clone(),
                Duration::from_secs(reconcile.grace_secs),
            );
            if let Some(gate) = persister_gate {
                reconciler = reconciler.with_persister_gate(gate);
            }
            tasks.push(tokio::spawn(crate::reconcile::run_periodic(
                reconciler,
                Duration::from_secs(reconcile.interval_secs),
                Duration::from_secs(reconcile.lookback_hours * 3600),
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(sample_pools(
            store.clone(),
            db.clone(),
            Duration::from_millis(settings.database.acquire_timeout_ms),
            shutdown.clone(),
        )));

        let catalog = &settings.catalog;
        let top_products = TopProducts::new(
            SnapshotStore::new(store.clone(), catalog.redis_breaker.settings()),
            GuardedTopQuery::new(
                db.clone(),
                catalog.mysql_breaker.settings(),
                catalog.mysql_max_concurrent,
                Duration::from_millis(catalog.mysql_max_wait_ms),
            ),
            Duration::from_millis(catalog.l1_ttl_ms),
        );
        let refresher = Refresher::new(
            db.clone(),
            store.clone(),
            Duration::from_secs(catalog.snapshot_ttl_secs),
        );
        if catalog.refresher_enabled {
            tasks.push(tokio::spawn(refresher.clone().run(
                Duration::from_millis(catalog.refresh_interval_ms),
                Duration::from_millis(catalog.lease_ms),
                shutdown.clone(),
            )));
        }
        if catalog.sales_enabled {
            tasks.push(spawn_logged(
                "sales ingestion",
                events::sales::run_sales_ingestion(
                    settings.kafka.clone(),
                    catalog.clone(),
                    db.clone(),
                    shutdown.clone(),
                ),
            ));
        }
        {
            let l1 = top_products.clone();
            let issuance = issuance.clone();
            tasks.push(tokio::spawn(crate::store::pubsub::subscribe(
                settings.redis.clone(),
                move |notice| match notice {
                    Notice::Resubscribed | Notice::TopProductsChanged => l1.invalidate(),
                    Notice::SoldOut(id) => {
                        if issuance.note_sold_out(id) {
                            tracing::info!(campaign_id = id, "another instance announced sold out");
                        }
                    }
                },
                shutdown.clone(),
            )));
        }

        let limits = crate::http::limits::RateLimits::new(&settings.limits)?;
        tasks.push(tokio::spawn(
            limits.clone().run_housekeeping(shutdown.clone()),
        ));
        let state = AppState {
            top_products,
            top_bodies: crate::http::TopBodies::default(),
            refresher,
            issuance: issuance.clone(),
            admin_token: settings.admin.token.clone(),
            retry_after_secs: settings.server.retry_after_secs,
            kafka_probe: Some(EventProducer::new(
                &settings.kafka,
                settings.kafka.issued_topic.clone(),
            )?),
            kafka_timeout: Duration::from_millis(settings.kafka.request_timeout_ms),
            limits: limits.clone(),
            identity: crate::http::identity::ShopperIdentity::new(&settings.auth)?,
        };
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
        let port = listener.local_addr()?.port();
        let max_body = settings.server.max_body_bytes;
        let state = web::Data::new(state);
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(http::record_request))
                .wrap(tracing_actix_web::TracingLogger::<
                    crate::http::request_span::RequestSpan,
                >::new())
                .app_data(state.clone())
                .configure(|cfg| http::configure(cfg, max_body))
        })
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        // A proxy that reuses a connection the service is closing at that moment gets
        // no answer, and it does not retry a claim (a POST): the shopper sees a 502. So
        // idle connections stay open longer than the proxies in front keep theirs (nginx
        // and cloud load balancers: 60 s), which then always close first. 0 is off.
        .keep_alive(Duration::from_secs(settings.server.keep_alive_secs))
        .client_request_timeout(Duration::from_secs(5))
        .max_connection_rate(1024)
        .backlog(4096);
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        if !handle_signals {
            server = server.disable_signals();
        }
        let server = server.listen(listener)?.run();
        let handle = server.handle();
        tracing::info!(port, "listening");
        Ok(Self {
            port,
            server,
            handle,
            shutdown,
            tasks,
            tasks_stop_within: Duration::from_millis(settings.kafka.message_timeout_ms.into())
                + Duration::from_secs(10),
            issuance,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            server: self.handle.clone(),
        }
    }

    /// Serves until stopped; then stops the background work in order.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        tracing::info!("http server stopped; stopping relay and persister");
        // A shared Redis connection opened by an HTTP worker ran on that worker's
        // runtime, which is gone now; what still runs reconnects on its own.
        self.issuance.store().reconnect_on_next_use();
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(
            self.tasks_stop_within,
            futures::future::join_all(self.tasks),
        )
        .await;
        match stopped {
            Ok(results) => {
                for err in results.into_iter().filter_map(Result::err) {
                    tracing::error!(error = %err, "background task panicked");
                }
            }
            // What they had in hand is not lost: outbox entries stay pending in Redis
            // and Kafka offsets uncommitted, so the next start takes them up.
            Err(_) => tracing::error!(
                within_secs = self.tasks_stop_within.as_secs(),
                "background tasks did not stop in time; stopping without them"
            ),
        }
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// Spawns a background component whose only possible failure is at start-up.
fn spawn_logged(
    what: &'static str,
    component: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(err) = component.await {
            tracing::error!(error = %err, component = what, "failed to start");
        }
    })
}

/// Creates `topics` if `kafka.create_topics` is on; a failure is logged, not fatal
/// (the clients retry, and where a platform team owns topics they already exist).
async fn create_topics(settings: &Settings, topics: &[String]) {
    if !settings.kafka.create_topics || topics.is_empty() {
        return;
    }
    if let Err(err) = events::ensure_topics(&settings.kafka, topics).await {
        tracing::warn!(error = %err, "could not create kafka topics; continuing");
    }
}

/// Runs only the persister until SIGTERM/SIGINT (`flashcoupon consume`).
pub async fn run_consumer(settings: Settings) -> anyhow::Result<()> {
    let db = persistence::connect(&settings.database).await?;
    let shutdown = CancellationToken::new();
    events::check_access(&settings.kafka).await?;
    create_topics(&settings, &settings.kafka.coupon_topics()).await;
    let task = events::run_persister(
        settings.kafka.clone(),
        settings.persister.clone(),
        db,
        shutdown.clone(),
    );
    let signal = {
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("signal received, stopping the persister");
            shutdown.cancel();
        }
    };
    let (result, _) = tokio::join!(task, signal);
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Samples pool occupancy and Redis replication into the gauges every second.
async fn sample_pools(
    store: RedisStore,
    db: Database,
    acquire_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (in_use, idle, max) = store.pool_status();
        metrics::get().set_redis_pool(in_use as i64, idle as i64, max as i64);
        if let Ok(replicas) = store.connected_replicas().await {
            metrics::get().set_redis_replicas(replicas);
        }
        persistence::export_pool_metrics(&db, acquire_timeout).await;
    }
}
