//! The issue path below HTTP, for `make bench`: `--concurrency` tasks call
//! `IssuanceService::claim` (the service's own code: claim limit, coupon code, event
//! id, the issuance script through the pooled multiplexed Redis connections, the
//! answer's parsing and metrics) back to back for `--seconds`, each claim a new
//! shopper. Set up from the service's configuration (file and `FLASHCOUPON__*`), on
//! a campaign that is already open and armed. It prints one JSON line, which
//! scripts/bench sets beside redis-benchmark's bare EVALSHA at the same concurrency:
//! the gap between the two is what the service's Redis path costs, apart from HTTP.
//!
//! usage: cargo bench --bench claim_path -- --campaign ID [--concurrency 1000] [--seconds 10]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flashcoupon::config::Settings;
use flashcoupon::domain::{IssueOutcome, UserId};
use flashcoupon::issuance::IssuanceService;
use flashcoupon::store::RedisStore;

#[derive(Parser)]
#[command(about = "Claims through IssuanceService::claim, without HTTP, for make bench")]
struct Args {
    /// An open, armed campaign with enough stock for the run.
    #[arg(long)]
    campaign: i64,
    /// Claims in flight at once (tasks calling claim back to back).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// How long to claim.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// cargo bench passes --bench to every bench target; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Answers counted: coupons issued, any other answer (already issued, sold out, not
/// open), and errors (Redis failed, claim limit reached).
#[derive(Default)]
struct Counts {
    issued: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(None).context("loading the service's configuration")?;
    // The service's shape: its claims run on the cores of this machine, two workers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args, settings))
}

async fn run(args: Args, settings: Settings) -> anyhow::Result<()> {
    let store = RedisStore::new(&settings.redis)?;
    let db = flashcoupon::persistence::connect(&settings.database).await?;
    let service = Arc::new(
        IssuanceService::new(store, db).with_claim_limit(settings.server.max_claims_in_flight),
    );
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_shopper = Arc::new(AtomicU64::new(0));
    let prefix = format!("claim-path-{}", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (service, counts, stop, next) = (
            service.clone(),
            counts.clone(),
            stop.clone(),
            next_shopper.clone(),
        );
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let user = UserId::parse(&format!("{prefix}-{n}")).expect("a valid user id");
                let counter = match service.claim(args.campaign, &user).await {
                    Ok(IssueOutcome::Issued(_)) => &counts.issued,
                    Ok(_) => &counts.other,
                    Err(_) => &counts.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let answers = BTreeMap::from([
        ("issued", counts.issued.load(Ordering::Relaxed)),
        ("other", counts.other.load(Ordering::Relaxed)),
        ("errors", counts.errors.load(Ordering::Relaxed)),
    ]);
    let total: u64 = answers.values().sum();
    println!(
        "{}",
        serde_json::json!({
            "concurrency": args.concurrency,
            "secs": secs,
            "claims": total,
            "throughput_rps": total as f64 / secs,
            "answers": answers,
        })
    );
    if answers["issued"] != total {
        anyhow::bail!(
            "not every claim was issued ({answers:?}): the campaign must be open with stock for the whole run"
        );
    }
    Ok(())
}
