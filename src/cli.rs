//! The command line: `serve`, `consume`, `migrate`, `campaign`, `demo`, `kafka`.
//! Every command loads the layered configuration first.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;

use crate::config::Settings;
use crate::domain::{parse_campaign_id, Discount, DiscountKind, NewCampaign};
use crate::events::persister_gate::PersisterGate;
use crate::issuance::{CampaignView, IssuanceService};
use crate::persistence;
use crate::startup::{self, Application};
use crate::store::RedisStore;
use crate::telemetry;

#[derive(Parser)]
#[command(
    name = "flashcoupon",
    version,
    about = "First-come coupon issuance for flash events"
)]
pub struct Cli {
    /// Optional TOML file layered over the defaults (env FLASHCOUPON__* still wins).
    #[arg(long, global = true, env = "FLASHCOUPON_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP API with the outbox relay and the persister (each switchable by config).
    Serve,
    /// Run only the persister (coupon.issued.v1 -> MySQL).
    Consume,
    /// Apply or inspect database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Manage campaigns directly (same rules as the admin API).
    Campaign {
        #[command(subcommand)]
        action: CampaignAction,
    },
    /// Create a demo campaign open for the next hour unless one is already open.
    Demo {
        #[arg(long, default_value_t = 1000)]
        stock: i64,
    },
    /// Create a demo catalogue (20 products) and the last 5 days of sales; idempotent.
    SeedDemo,
    /// Recompute the top products now and tell every instance to refresh its cache.
    RefreshTop,
    /// Compare Redis (the record of issuance), its outbox and MySQL; print the
    /// differences and, with --repair, fix them.
    ///
    /// Checks one campaign, or every campaign not ended or ended within
    /// --lookback-hours. missing_in_mysql: issued, older than reconcile.grace_secs, in
    /// neither the outbox nor MySQL; --repair puts them back into the outbox (the
    /// relay of a running service delivers them). extra_in_mysql: Redis lost them;
    /// --repair restores them into Redis and raises its issued counter, so stock given
    /// away is never handed out again. Exits 0 when clean or repaired, 3 when
    /// differences remain.
    Reconcile {
        /// Only this campaign.
        #[arg(long)]
        campaign: Option<String>,
        /// Fix what differs (otherwise read-only).
        #[arg(long)]
        repair: bool,
        /// Without --campaign: campaigns that ended within this many hours.
        #[arg(long)]
        lookback_hours: Option<u64>,
    },
    /// Dead-letter topic tools.
    Dlt {
        #[command(subcommand)]
        action: DltAction,
    },
    /// Kafka diagnostics with the service's own settings and credentials (topics, lag, tail).
    Kafka {
        #[command(subcommand)]
        action: KafkaAction,
    },
}

#[derive(Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration (the default).
    Up,
    /// Roll back the last N migrations.
    Down {
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List applied and pending migrations.
    Status,
}

#[derive(Subcommand)]
pub enum CampaignAction {
    /// Create and arm a campaign.
    Create {
        #[arg(long)]
        name: String,
        /// Number of coupons (1 to 1,000,000,000).
        #[arg(long)]
        stock: i64,
        /// RFC 3339 start time; default now.
        #[arg(long)]
        starts_at: Option<DateTime<Utc>>,
        /// RFC 3339 end time; default one hour after the start.
        #[arg(long)]
        ends_at: Option<DateTime<Utc>>,
        /// Percentage off (0 < p <= 100); exclusive with --fixed-off.
        #[arg(long, conflicts_with = "fixed_off")]
        percent_off: Option<Decimal>,
        /// Fixed amount off.
        #[arg(long)]
        fixed_off: Option<Decimal>,
        #[arg(long, default_value_t = 7)]
        valid_days: i32,
    },
    /// List campaigns with live figures.
    List,
    /// One campaign with live figures.
    Show { id: String },
    /// Pause a campaign (claims answer 409 campaign-not-open).
    Pause { id: String },
    /// Resume a paused campaign.
    Resume { id: String },
    /// Re-arm from MySQL every live campaign Redis has lost or is behind on.
    Arm,
}

#[derive(Subcommand)]
pub enum DltAction {
    /// Send the dead letters not yet replayed back to their original topic (header
    /// x-original-topic), once their cause is fixed. Progress is kept in the consumer
    /// group `<dlt>.replay`, so each letter is replayed once; the persister is
    /// idempotent, and a letter that still fails returns to the DLT.
    Replay {
        /// Dead-letter topic; default `<kafka.issued_topic>.dlt`.
        #[arg(long)]
        topic: Option<String>,
        /// Only list what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Replay at most this many letters.
        #[arg(long, default_value_t = 10_000)]
        max: usize,
    },
}

#[derive(Subcommand)]
pub enum KafkaAction {
    /// List topics and their partition counts.
    Topics,
    /// Lag of a consumer group on a topic, per partition.
    Lag {
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        group: Option<String>,
    },
    /// Print messages of a topic from the beginning, with headers.
    Tail {
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
}

/// Parses the command line and runs it.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings =
        Settings::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let _traces = telemetry::init(&settings.log, &settings.tracing)?;
    match cli.command {
        Command::Serve => {
            Application::build(settings, true)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Consume => startup::run_consumer(settings).await,
        Command::Migrate { action } => migrate(settings, action.unwrap_or(MigrateAction::Up)).await,
        Command::Campaign { action } => campaign(settings, action).await,
        Command::Demo { stock } => demo(settings, stock).await,
        Command::SeedDemo => seed_demo(settings).await,
        Command::RefreshTop => {
            let store = RedisStore::new(&settings.redis)?;
            let db = persistence::connect(&settings.database).await?;
            crate::catalog::refresher::Refresher::new(
                db,
                store,
                Duration::from_secs(settings.catalog.snapshot_ttl_secs),
            )
            .refresh_now()
            .await?;
            println!("top products refreshed and invalidation published");
            Ok(())
        }
        Command::Reconcile {
            campaign,
            repair,
            lookback_hours,
        } => {
            let campaign = campaign.as_deref().map(parse_id).transpose()?;
            let clean = reconcile(settings, campaign, repair, lookback_hours).await?;
            if !clean {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Dlt {
            action:
                DltAction::Replay {
                    topic,
                    dry_run,
                    max,
                },
        } => {
            let topic = topic.unwrap_or_else(|| settings.kafka.dlt_topic());
            let report = crate::events::replay::replay(
                &settings.kafka,
                &topic,
                dry_run,
                max,
                |letter, target| {
                    let error = letter
                        .headers
                        .get("x-error")
                        .map(String::as_str)
                        .unwrap_or("-");
                    match target {
                        Some(target) => println!(
                            "{}{topic}[{}]@{} -> {target} key={} error={error}",
                            if dry_run { "would replay " } else { "replay " },
                            letter.partition,
                            letter.offset,
                            String::from_utf8_lossy(&letter.key),
                        ),
                        None => println!(
                            "skip {topic}[{}]@{}: no x-original-topic header",
                            letter.partition, letter.offset
                        ),
                    }
                },
            )
            .await?;
            println!(
                "{} dead letter(s) read, {} {}, {} skipped",
                report.read,
                if dry_run {
                    report.read - report.skipped.len()
                } else {
                    report.replayed
                },
                if dry_run {
                    "would be replayed (dry run, nothing sent)"
                } else {
                    "replayed"
                },
                report.skipped.len()
            );
            Ok(())
        }
        Command::Kafka { action } => kafka(settings, action).await,
    }
}

/// `flashcoupon reconcile`: true when nothing differs (or everything was repaired).
async fn reconcile(
    settings: Settings,
    campaign: Option<i64>,
    repair: bool,
    lookback_hours: Option<u64>,
) -> anyhow::Result<bool> {
    use crate::reconcile::Reconciler;
    let store = RedisStore::new(&settings.redis)?;
    let db = persistence::connect(&settings.database).await?;
    let reconciler = Reconciler::new(
        store.clone(),
        db,
        Duration::from_secs(settings.reconcile.grace_secs),
    );
    let ids: Vec<i64> = match campaign {
        Some(id) => vec![id],
        None => {
            let hours = lookback_hours.unwrap_or(settings.reconcile.lookback_hours);
            reconciler
                .recent_campaigns(Duration::from_secs(hours * 3600))
                .await?
                .into_iter()
                .map(|c| c.id)
                .collect()
        }
    };
    let mut clean = true;
    for id in &ids {
        let total = store.figures(*id).await?.map(|f| f.issued).unwrap_or(0);
        let bar = indicatif::ProgressBar::new(total.max(0) as u64)
            .with_message(format!("campaign {id}: reading redis holders"));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} ({eta})")
                .expect("static template"),
        );
        if total < 10_000 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let report = reconciler
            .check(*id, |n| bar.set_position(n as u64))
            .await?;
        bar.finish_and_clear();
        let d = &report.differences;
        println!(
            "campaign {id}: redis {} issued, {} holders{}; outbox {}; mysql {} rows; in flight {}",
            report.redis_issued,
            report.redis_holders,
            if report.armed {
                ""
            } else {
                " (not armed: `flashcoupon campaign arm`)"
            },
            report.outbox_pending,
            report.mysql_rows,
            d.in_flight
        );
        println!(
            "  missing_in_mysql {}, extra_in_mysql {}, code_mismatch {}{}",
            d.missing_in_mysql.len(),
            d.extra_in_mysql.len(),
            d.code_mismatch.len(),
            match d.issued_behind {
                Some((redis, floor)) =>
                    format!(", redis issued counter {redis} behind mysql {floor}"),
                None => String::new(),
            }
        );
        for c in d.missing_in_mysql.iter().take(20) {
            println!(
                "  missing_in_mysql user={} code={} seq={} issued_at={}",
                c.user_id, c.coupon_code, c.sequence, c.issued_at
            );
        }
        for c in d.extra_in_mysql.iter().take(20) {
            println!(
                "  extra_in_mysql   user={} code={} seq={} issued_at={}",
                c.user_id, c.coupon_code, c.sequence, c.issued_at
            );
        }
        for (redis, mysql) in d.code_mismatch.iter().take(20) {
            println!(
                "  code_mismatch    user={} redis={} mysql={}",
                redis.user_id, redis.coupon_code, mysql.coupon_code
            );
        }
        if d.is_clean() {
            continue;
        }
        if !repair {
            clean = false;
            continue;
        }
        let repaired = reconciler.repair(&report).await?;
        println!(
            "  repaired: {} coupon(s) put back into the outbox, {} holder(s) restored in redis",
            repaired.reenqueued, repaired.restored_in_redis
        );
        if !d.code_mismatch.is_empty() {
            println!("  code mismatches are not repaired automatically: resolve them with the service owner");
            clean = false;
        }
    }
    println!(
        "reconcile: {} campaign(s) checked{}",
        ids.len(),
        if clean {
            ", no difference left"
        } else {
            ", differences found (exit 3)"
        }
    );
    Ok(clean)
}

async fn migrate(settings: Settings, action: MigrateAction) -> anyhow::Result<()> {
    let db = persistence::connect(&settings.database).await?;
    match action {
        MigrateAction::Up => {
            persistence::migrate(&db).await?;
            println!("migrations applied");
        }
        MigrateAction::Down { steps } => {
            persistence::migrate_down(&db, Some(steps)).await?;
            println!("rolled back {steps} migration(s)");
        }
        MigrateAction::Status => {
            let (applied, pending) = persistence::migration_status(&db).await?;
            for name in applied {
                println!("applied  {name}");
            }
            for name in pending {
                println!("pending  {name}");
            }
        }
    }
    Ok(())
}

async fn service(settings: &Settings) -> anyhow::Result<IssuanceService> {
    let store = RedisStore::new(&settings.redis)?;
    let db = persistence::connect(&settings.database).await?;
    let service = IssuanceService::new(store, db);
    // `campaign arm` re-arms lost campaigns only once the coupons on their way
    // through Kafka are in MySQL; on-call's command waits longer than the service.
    Ok(if settings.relay.enabled {
        service.with_persister_gate(PersisterGate::new(
            &settings.kafka,
            Duration::from_secs(120),
        ))
    } else {
        service
    })
}

fn print_view(v: &CampaignView) {
    println!(
        "{:>6}  {:<10} issued {:>9} / {:<9} remaining {:>9}  persisted {:>9}  pending {:>6}  {} .. {}  {}",
        v.campaign.id,
        format!("{:?}", v.status).to_lowercase(),
        v.issued,
        v.campaign.total_quantity,
        v.remaining,
        v.persisted.map_or("-".into(), |p| p.to_string()),
        v.pending_events.map_or("-".into(), |p| p.to_string()),
        v.campaign.starts_at.format("%Y-%m-%dT%H:%M:%SZ"),
        v.campaign.ends_at.format("%Y-%m-%dT%H:%M:%SZ"),
        v.campaign.name
    );
}

fn parse_id(raw: &str) -> anyhow::Result<i64> {
    parse_campaign_id(raw).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn campaign(settings: Settings, action: CampaignAction) -> anyhow::Result<()> {
    let service = service(&settings).await?;
    match action {
        CampaignAction::Create {
            name,
            stock,
            starts_at,
            ends_at,
            percent_off,
            fixed_off,
            valid_days,
        } => {
            let starts_at = starts_at.unwrap_or_else(Utc::now);
            let discount = match (percent_off, fixed_off) {
                (_, Some(value)) => Discount {
                    kind: DiscountKind::Fixed,
                    value,
                },
                (value, None) => Discount {
                    kind: DiscountKind::Percent,
                    value: value.unwrap_or(Decimal::from(10)),
                },
            };
            let created = service
                .create(
                    NewCampaign {
                        name,
                        total_quantity: stock,
                        starts_at,
                        ends_at: ends_at.unwrap_or(starts_at + chrono::Duration::hours(1)),
                        discount,
                        coupon_valid_days: valid_days,
                    },
                    None,
                )
                .await?;
            print_view(&created.view);
        }
        CampaignAction::List => {
            for view in service.admin_list().await? {
                print_view(&view);
            }
        }
        CampaignAction::Show { id } => print_view(&service.admin_view(parse_id(&id)?).await?),
        CampaignAction::Pause { id } => {
            print_view(&service.set_paused(parse_id(&id)?, true).await?)
        }
        CampaignAction::Resume { id } => {
            print_view(&service.set_paused(parse_id(&id)?, false).await?)
        }
        CampaignAction::Arm => {
            let armed = service.arm_live_campaigns().await?;
            println!("re-armed {armed} campaign(s) from MySQL");
            let reconciler = crate::reconcile::Reconciler::new(
                service.store().clone(),
                service.db().clone(),
                Duration::from_secs(settings.reconcile.grace_secs),
            );
            for campaign in reconciler.recent_campaigns(Duration::ZERO).await? {
                let report = reconciler.check(campaign.id, |_| {}).await?;
                if report.armed && report.differences.redis_behind() {
                    let restored = reconciler.catch_up_redis(&report).await?;
                    println!(
                        "campaign {}: redis was behind mysql, restored {restored} holder(s)",
                        campaign.id
                    );
                }
            }
        }
    }
    Ok(())
}

async fn demo(settings: Settings, stock: i64) -> anyhow::Result<()> {
    let service = service(&settings).await?;
    let now = Utc::now();
    if let Some(open) = service
        .admin_list()
        .await?
        .into_iter()
        .find(|v| v.campaign.name == "Demo flash sale" && v.campaign.ends_at > now)
    {
        println!("demo campaign already exists:");
        print_view(&open);
        return Ok(());
    }
    let created = service
        .create(
            NewCampaign {
                name: "Demo flash sale".into(),
                total_quantity: stock,
                starts_at: now,
                ends_at: now + chrono::Duration::hours(1),
                discount: Discount {
                    kind: DiscountKind::Percent,
                    value: Decimal::from(30),
                },
                coupon_valid_days: 7,
            },
            None,
        )
        .await?;
    println!("demo campaign created:");
    print_view(&created.view);
    Ok(())
}

async fn seed_demo(settings: Settings) -> anyhow::Result<()> {
    use crate::domain::{OrderItem, OrderPaidEvent};
    let db = persistence::connect(&settings.database).await?;
    let names = [
        "Espresso beans 1 kg",
        "Oat milk 6-pack",
        "Ceramic pour-over",
        "Burr grinder",
        "Milk frother",
        "Travel mug",
        "Cold brew bottle",
        "Kettle gooseneck",
        "Paper filters 100",
        "Scale 0.1 g",
        "Chai blend",
        "Matcha tin",
        "Cocoa powder",
        "Almond biscotti",
        "Glass carafe",
        "Moka pot",
        "Tea infuser",
        "Honey jar",
        "Barista apron",
        "Gift card 25",
    ];
    let products: Vec<(i64, String, Decimal)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                i as i64 + 1,
                (*n).to_owned(),
                Decimal::new(499 + 250 * i as i64, 2),
            )
        })
        .collect();
    db.upsert_products(&products).await?;
    let today = Utc::now().date_naive();
    let mut events = Vec::new();
    for day_back in 0..5u64 {
        let day = today - chrono::Days::new(day_back);
        for order in 0..40i64 {
            // Deterministic ids: running the seed twice adds nothing.
            let items = (0..3)
                .map(|k| OrderItem {
                    product_id: ((order * 7 + k * 3 + day_back as i64) % 20) + 1,
                    quantity: 1 + (order + k) % 4,
                })
                .collect();
            events.push(OrderPaidEvent {
                event_id: format!("demo-{day}-{order}"),
                order_id: format!("demo-order-{day}-{order}"),
                paid_at: day.and_hms_opt(12, 0, 0).expect("valid time").and_utc(),
                items,
            });
        }
    }
    let applied = db.apply_orders(&events).await?;
    println!(
        "demo catalogue: {} products; {} of {} demo orders applied (the rest were already there)",
        products.len(),
        applied,
        events.len()
    );
    Ok(())
}

async fn kafka(settings: Settings, action: KafkaAction) -> anyhow::Result<()> {
    use crate::events::inspect;
    let kafka = settings.kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        match action {
            KafkaAction::Topics => {
                for (topic, partitions) in inspect::topics(&kafka)? {
                    println!("{topic}\t{partitions} partition(s)");
                }
            }
            KafkaAction::Lag { topic, group } => {
                let topic = topic.unwrap_or_else(|| kafka.issued_topic.clone());
                let group = group.unwrap_or_else(|| kafka.persister_group.clone());
                let mut total = 0;
                for p in inspect::lag(&kafka, &topic, &group)? {
                    total += p.lag;
                    println!(
                        "{topic}[{}] group={group} committed={} high={} lag={}",
                        p.partition,
                        p.committed.map_or("-".into(), |c| c.to_string()),
                        p.high_watermark,
                        p.lag
                    );
                }
                println!("total lag {total}");
            }
            KafkaAction::Tail {
                topic,
                count,
                wait_secs,
            } => {
                let topic = topic.unwrap_or_else(|| kafka.issued_topic.clone());
                let seen = inspect::tail(&kafka, &topic, count, Duration::from_secs(wait_secs))?;
                eprintln!("{seen} message(s)");
            }
        }
        Ok(())
    })
    .await?
}
