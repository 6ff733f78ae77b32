//! loadtest: flash bursts and read paths against flashcoupon, in an open (fixed arrival
//! rate) or closed (fixed concurrency) load model, with HDR latency percentiles, a
//! table, `summary.json`, `chart.png`, and the issuance invariants checked after a
//! claim run. `main.rs` parses the command line and calls [`main_entry`]; tests call
//! [`run`] inside their own runtime.
//!
//! - `cli`      the command line (clap), one subcommand per scenario
//! - `model`    the open and closed load models that drive a workload
//! - `scenario` what each request is: claim, top-products read, plain GET
//! - `flash`    claim plan, answer classification, the shoppers' ledger
//! - `http`     the pooled hyper client and the admin calls
//! - `report`   histograms, status breakdown, the table and `summary.json`
//! - `chart`    `chart.png`
//! - `verify`   the invariants: admin API, drain, MySQL, judgement

pub mod chart;
pub mod cli;
pub mod flash;
pub mod http;
pub mod model;
pub mod report;
pub mod scenario;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Method, StatusCode};
use anyhow::{anyhow, bail, Context};
use backon::{ExponentialBuilder, Retryable};
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::time::Instant;

use crate::cli::{ClaimArgs, Cli, Command, Common, ModelKind};
use crate::flash::{ClaimPlan, Ledger};
use crate::http::HttpClient;
use crate::model::{Load, Model};
use crate::report::{FlashSummary, ModelSummary, Outcome, Recorder, Summary, Verdict};
use crate::scenario::{Claims, Scenario};
use crate::verify::{Check, Figures};

/// Exit code when an invariant check failed.
pub const EXIT_VIOLATION: u8 = 2;
/// Exit code for bad usage or an unreachable target.
pub const EXIT_USAGE: u8 = 1;

/// A finished run.
pub struct Run {
    pub summary: Summary,
    pub out_dir: PathBuf,
    /// 0, or [`EXIT_VIOLATION`].
    pub exit_code: u8,
}

/// The binary: parse, build the runtime, run, map the result to an exit code.
pub fn main_entry() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.command.common().threads as usize)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(run) => ExitCode::from(run.exit_code),
        Err(e) => {
            eprintln!("loadtest: error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The claim side of a flash or mixed run, prepared before the load starts.
struct ClaimSetup {
    campaign: u64,
    created: bool,
    token: String,
    stock: u64,
    issued_before: u64,
    plan: ClaimPlan,
    ledger: Arc<Ledger>,
    db: Option<sea_orm::DatabaseConnection>,
    /// MySQL rows of the campaign for users outside the run, before it.
    others_before: u64,
    args: ClaimArgs,
}

/// Runs one scenario. `Err` is bad usage or an unreachable target or database (exit 1);
/// invariant violations come back as `Ok` with a non-zero `exit_code`.
pub async fn run(cli: Cli) -> anyhow::Result<Run> {
    let command = cli.command;
    command.validate().map_err(|e| anyhow!(e))?;
    let common = command.common().clone();
    let load = Load::from_cli(&common);
    let pool = match load.model {
        Model::Closed { concurrency } => concurrency,
        Model::Open { connections, .. } => connections,
    } as usize;
    let client = HttpClient::new(
        &common.target,
        Duration::from_secs_f64(common.timeout_secs),
        pool,
    );
    if let Err(e) = client.json(Method::GET, "/health/live", None, None).await {
        bail!("cannot reach --target {}: {e:#}", common.target);
    }
    let out_dir = common.out.clone().unwrap_or_else(|| {
        PathBuf::from("target/loadtest").join(format!(
            "{}-{}",
            command.scenario(),
            Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create --out {}", out_dir.display()))?;

    let setup = match &command {
        Command::Flash(a) => Some(prepare_claims(&client, &a.claim).await?),
        Command::Mixed(a) => Some(prepare_claims(&client, &a.claim).await?),
        _ => None,
    };

    if !common.cold_connections {
        let opened = client.warm_up(pool).await?;
        if opened < pool {
            eprintln!("warning: opened {opened} of {pool} connections before the start");
        }
    }
    let started_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    let start = Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let claims = setup.as_ref().map(|s| -> anyhow::Result<Claims> {
        Ok(Claims {
            uri: client.uri(&format!("/api/v1/campaigns/{}/issues", s.campaign))?,
            plan: s.plan.clone(),
            ledger: s.ledger.clone(),
        })
    });
    let scenario = match &command {
        Command::Flash(_) => Scenario::flash(
            client.clone(),
            recorder.clone(),
            claims.expect("flash has claims")?,
        ),
        Command::Mixed(a) => Scenario::mixed(
            client.clone(),
            recorder.clone(),
            claims.expect("mixed has claims")?,
            client.uri(&format!("/api/v1/products/top?limit={}", a.limit))?,
            a.read_ratio,
        ),
        Command::TopProducts(a) => Scenario::reads(
            client.clone(),
            recorder.clone(),
            client.uri(&format!("/api/v1/products/top?limit={}", a.limit))?,
            scenario::TOP_PRODUCTS,
        ),
        Command::Get(a) => Scenario::reads(
            client.clone(),
            recorder.clone(),
            client.uri(&a.path)?,
            scenario::GET,
        ),
    };
    let scenario = Arc::new(scenario);
    let expected = load.expected_requests(model::Workload::total(scenario.as_ref()));
    let progress = Progress::start(&common, &load, expected, recorder.clone());
    let stop = Arc::new(model::Stop::default());
    let on_ctrl_c = tokio::spawn(stop_on_ctrl_c(stop.clone()));
    model::drive(scenario, &load, start, stop.clone()).await;
    on_ctrl_c.abort();
    let elapsed = start.elapsed();
    progress.finish().await;
    let measured = recorder.measurements(elapsed);
    if stop.is_triggered() {
        eprintln!("stopped early (Ctrl-C): reporting and verifying what was sent");
    }

    let mut checks = Vec::new();
    let mut flash = None;
    if let Some(setup) = setup {
        let (summary, found) = finish_claims(&client, setup, &measured).await;
        flash = Some(summary);
        checks = found;
    }
    let passed = checks.iter().all(|c| c.passed);
    let verify = (!checks.is_empty()).then_some(Verdict { passed, checks });
    let summary = Summary {
        scenario: command.scenario().to_owned(),
        target: common.target.clone(),
        started_at,
        model: model_summary(&common),
        stopped_early: stop.is_triggered(),
        measured,
        flash,
        verify,
        passed,
    };

    println!("{}", report::render_table(&summary));
    if let Some(e) = recorder.first_error_message() {
        println!("first transport error: {e}\n");
    }
    if let Some(verdict) = &summary.verify {
        println!("{}", report::render_checks(&verdict.checks));
    }
    let json_path = out_dir.join("summary.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let chart_path = out_dir.join("chart.png");
    let title = format!(
        "{} against {}, {}",
        summary.scenario, summary.target, summary.started_at
    );
    match chart::draw(&chart_path, &title, &summary.measured.timeline, &common.font) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "note: font {} not found (Debian: fonts-dejavu-core, or --font): chart drawn without text",
            common.font.display()
        ),
        Err(e) => eprintln!("warning: no chart: {e:#}"),
    }
    println!(
        "report: {}  chart: {}",
        json_path.display(),
        chart_path.display()
    );
    let exit_code = if passed { 0 } else { EXIT_VIOLATION };
    if !passed {
        println!("FAILED: an invariant was violated (exit {EXIT_VIOLATION})");
    }
    Ok(Run {
        summary,
        out_dir,
        exit_code,
    })
}

/// The first Ctrl-C stops sending (the run still reports and verifies); the second
/// exits at once.
async fn stop_on_ctrl_c(stop: Arc<model::Stop>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!(
            "\nCtrl-C: no more requests; waiting for the answers in flight (Ctrl-C again to quit)"
        );
        stop.trigger();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    }
}

fn model_summary(common: &Common) -> ModelSummary {
    let open = common.model == ModelKind::Open;
    ModelSummary {
        kind: common.model,
        concurrency: common.concurrency,
        rate: common.rate,
        connections: open.then_some(common.connections),
        ramp_secs: common.ramp_secs,
        duration_secs: common.duration,
    }
}

fn random_prefix() -> String {
    format!("lt{:08x}", rand::random::<u32>())
}

/// Creates (or reads) the campaign, takes the baseline, connects MySQL.
async fn prepare_claims(client: &HttpClient, args: &ClaimArgs) -> anyhow::Result<ClaimSetup> {
    let token = args.admin_token.clone();
    let prefix = args.user_prefix.clone().unwrap_or_else(random_prefix);
    // MySQL first: a wrong --mysql-url must not leave a campaign behind.
    let db = if args.no_verify {
        None
    } else {
        Some(verify::connect_mysql(&args.mysql_url).await?)
    };
    let (campaign, created) = match args.campaign {
        Some(id) => (id, false),
        None => {
            let stock = args
                .stock
                .expect("clap requires --stock without --campaign");
            (create_campaign(client, &token, stock, &prefix).await?, true)
        }
    };
    let before = verify::campaign_figures(client, &token, campaign).await?;
    let others_before = match &db {
        Some(db) => {
            let (ours, others) = verify::rows_before(db, campaign, &prefix).await?;
            if ours > 0 {
                bail!(
                    "shoppers named {prefix}-N already hold {ours} coupons of campaign \
                     {campaign}: their answers would be 409 already-issued and the checks \
                     could not tell them from this run's; choose another --user-prefix"
                );
            }
            others
        }
        None => 0,
    };
    if let (false, Some(stock)) = (created, args.stock) {
        if stock != before.remaining {
            eprintln!(
                "note: campaign {campaign} has {} coupons left; the run competes for those, not --stock {stock}",
                before.remaining
            );
        }
    }
    Ok(ClaimSetup {
        campaign,
        created,
        token,
        stock: before.remaining,
        issued_before: before.issued,
        plan: ClaimPlan {
            prefix,
            shoppers: args.shoppers,
            per_shopper: args.requests_per_shopper,
        },
        ledger: Arc::new(Ledger::new(args.shoppers)),
        db,
        others_before,
        args: args.clone(),
    })
}

/// Creates the run's campaign. A 503 or a lost answer is retried under one
/// `Idempotency-Key`, so a create that wrote its row before failing is not made twice.
async fn create_campaign(
    client: &HttpClient,
    token: &str,
    stock: u64,
    prefix: &str,
) -> anyhow::Result<u64> {
    let now = Utc::now();
    let body = json!({
        "name": format!("loadtest {prefix}"),
        "total_quantity": stock,
        "starts_at": (now - chrono::Duration::seconds(60)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "discount": {"kind": "percent", "value": 10},
        "coupon_valid_days": 1,
    });
    let key = format!("loadtest-{prefix}-{:016x}", rand::random::<u64>());
    let attempt = || async {
        let (status, answer) = client
            .json_with_headers(
                Method::POST,
                "/admin/v1/campaigns",
                Some(token),
                Some(&body),
                &[("idempotency-key", &key)],
            )
            .await
            .map_err(|err| anyhow!(WorthRetrying(format!("{err:#}"))))?;
        match status {
            StatusCode::CREATED => answer["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("campaign created without an id: {answer}")),
            StatusCode::UNAUTHORIZED => Err(anyhow!(
                "POST /admin/v1/campaigns: 401, the admin token was refused (set --admin-token or LOADTEST_ADMIN_TOKEN)"
            )),
            StatusCode::SERVICE_UNAVAILABLE => Err(anyhow!(WorthRetrying(format!(
                "POST /admin/v1/campaigns: 503 Service Unavailable: {answer}"
            )))),
            other => Err(anyhow!("POST /admin/v1/campaigns: {other}: {answer}")),
        }
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_times(4)
                .with_jitter(),
        )
        .when(|err| err.is::<WorthRetrying>())
        .notify(|err, wait| {
            eprintln!("loadtest: creating the campaign failed ({err}); retrying in {wait:?}")
        })
        .await
}

/// A create that got no answer or a 503: safe to retry under its key.
#[derive(Debug)]
struct WorthRetrying(String);

impl std::fmt::Display for WorthRetrying {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WorthRetrying {}

/// After the load: the flash summary, and the checks unless --no-verify.
async fn finish_claims(
    client: &HttpClient,
    setup: ClaimSetup,
    measured: &report::Measurements,
) -> (FlashSummary, Vec<Check>) {
    let tally = setup.ledger.tally();
    let mut summary = FlashSummary {
        campaign_id: setup.campaign,
        created_campaign: setup.created,
        stock: setup.stock,
        shoppers: setup.plan.shoppers,
        requests_per_shopper: setup.plan.per_shopper,
        user_prefix: setup.plan.prefix.clone(),
        shoppers_attempted: tally.attempted,
        shoppers_holding: tally.holding,
        shoppers_refused: tally.refused,
        answered_201: tally.answered_201,
        issued: None,
        persisted: None,
        drain_secs: None,
    };
    let Some(db) = &setup.db else {
        return (summary, Vec::new());
    };
    eprintln!(
        "verifying: waiting up to {} s for the outbox and the persister to drain...",
        setup.args.drain_timeout_secs
    );
    let gathered = async {
        let (after, drain_secs) = verify::wait_for_drain(
            client,
            &setup.token,
            setup.campaign,
            Duration::from_secs(setup.args.drain_timeout_secs),
        )
        .await?;
        let mysql =
            verify::mysql_figures(db, setup.campaign, &setup.plan, &tally.codes_201).await?;
        anyhow::Ok((after, drain_secs, mysql))
    }
    .await;
    match gathered {
        Ok((after, drain_secs, mysql)) => {
            let issued = after.issued.saturating_sub(setup.issued_before);
            summary.issued = Some(issued);
            summary.persisted = after.persisted;
            summary.drain_secs = Some(drain_secs);
            let figures = Figures {
                stock: setup.stock,
                sold_out_seen: measured.statuses.contains_key(&Outcome::SoldOut.label()),
                tally,
                issued,
                after,
                drain_secs,
                drain_timeout_secs: setup.args.drain_timeout_secs,
                mysql,
                others_before: setup.others_before,
            };
            (summary, verify::judge(&figures))
        }
        Err(e) => (
            summary,
            vec![Check {
                name: "figures readable after the run".into(),
                passed: false,
                detail: format!("{e:#}"),
            }],
        ),
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal or with --quiet).
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(common: &Common, load: &Load, expected: Option<u64>, recorder: Arc<Recorder>) -> Self {
        let by_time = expected.is_none();
        let length = match (expected, load.duration) {
            (Some(n), _) => n,
            (None, Some(d)) => d.as_millis() as u64,
            (None, None) => 0,
        };
        let bar = if common.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(length)
        };
        let template = if by_time {
            "{elapsed_precise} [{wide_bar}] {msg}"
        } else {
            "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let shown = bar.clone();
        let start = recorder.start();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let done = recorder.completed();
                let rate =
                    (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, done);
                if by_time {
                    shown.set_position(now.duration_since(start).as_millis() as u64);
                } else {
                    shown.set_position(done);
                }
                shown.set_message(format!(
                    "{done} answered, {:.0}/s, {} errors, {} dropped",
                    rate,
                    recorder.errors(),
                    recorder.dropped_count()
                ));
            }
        });
        Progress { bar, ticker }
    }

    async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.bar.finish_and_clear();
    }
}
