//! The command line: one subcommand per scenario (`flash`, `top-products`, `mixed`,
//! `get`), each with the same load-model options (`--model closed --concurrency C` or
//! `--model open --rate R`). Parsing and checks of single values live here; checks
//! that need the network (is the target up, is the token right) live in `lib.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default admin token of a local service (`make run`).
pub const DEFAULT_ADMIN_TOKEN: &str = "change-me-local-admin-token";
/// The MySQL of the local stack.
pub const DEFAULT_MYSQL_URL: &str = "mysql://flashcoupon:flashcoupon@127.0.0.1:3306/flashcoupon";
/// The TTF the chart writes its text with (Debian package fonts-dejavu-core).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Load test for flashcoupon: flash bursts, read paths, open and closed load models.
///
/// Prints a progress bar while it runs, a table at the end, and writes summary.json and
/// chart.png to --out. After `flash` and `mixed` it checks the issuance invariants
/// through the admin API and MySQL and exits 2 on any violation.
///
/// Exit codes: 0 success, 1 bad usage or unreachable target, 2 invariant violated.
/// Run the service with FLASHCOUPON__LIMITS__ENABLED=false, or the rate limits answer 429.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N shoppers claim a coupon of one campaign, R requests each; then verify the invariants.
    ///
    /// Shopper n is `<user-prefix>-<n>` (header X-User-Id); requests go round-robin over the
    /// shoppers, so every shopper's first request comes before anyone's second one.
    ///
    /// Examples:
    ///   loadtest flash --shoppers 200000 --requests-per-shopper 1 --stock 10000 --model open --rate 5000
    ///   loadtest flash --shoppers 3000 --requests-per-shopper 2 --stock 1000 --model closed --concurrency 200
    #[command(verbatim_doc_comment)]
    Flash(FlashArgs),
    /// GET /api/v1/products/top?limit=N for --duration seconds.
    TopProducts(TopProductsArgs),
    /// Flash claims and top-products reads interleaved (--read-ratio of them reads), for
    /// --duration seconds; the claims are verified as in `flash`.
    Mixed(MixedArgs),
    /// A plain GET of --path for --duration seconds: the HTTP ceiling (e.g. /health/live).
    Get(GetArgs),
}

/// Open or closed load model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Fixed concurrency: C workers, each sends its next request when the previous answered.
    Closed,
    /// Fixed arrival rate, whatever the answers: a slow server shows as latency
    /// (measured from the scheduled send time), never as fewer requests.
    Open,
}

/// Where to send, and how: shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of the service (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = parse_target)]
    pub target: String,
    /// Load model.
    #[arg(long, value_enum)]
    pub model: ModelKind,
    /// Closed model: number of workers (connections).
    #[arg(long, required_if_eq("model", "closed"), value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,
    /// Open model: requests per second (arrivals, whatever the answers).
    #[arg(long, required_if_eq("model", "open"), value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Stop sending after this many seconds.
    #[arg(long, value_parser = parse_positive_secs)]
    pub duration: Option<f64>,
    /// Ramp-up: 0 starts every closed worker at once, or sends at the full --rate from
    /// the first request; X starts closed workers evenly over X s, or grows the open
    /// arrival rate linearly from 0 to --rate over X s (at most --duration).
    #[arg(long, default_value_t = 0.0, value_parser = parse_secs)]
    pub ramp_secs: f64,
    /// Open model: connections used at most; requests wait for one (and the wait counts
    /// as latency).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Open model: requests scheduled but not answered at most; arrivals beyond are
    /// dropped and counted.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Per-request timeout in seconds (at most 3600, what the histograms record); a
    /// timeout counts as its own outcome.
    #[arg(long, default_value_t = 10.0, value_parser = parse_timeout_secs)]
    pub timeout_secs: f64,
    /// Output directory for summary.json and chart.png
    /// [default: target/loadtest/<scenario>-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tokio worker threads of the generator (it shares the cores with the service).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// TTF font for the chart's text; without it the chart is drawn without text.
    #[arg(long, default_value = DEFAULT_FONT)]
    pub font: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Do not open the connections before the clock starts: the first second then
    /// also measures TCP set-up of every connection at once.
    #[arg(long)]
    pub cold_connections: bool,
}

/// The campaign, the shoppers and the checks of a claim workload.
#[derive(Debug, Clone, Args)]
pub struct ClaimArgs {
    /// Admin token (Bearer) for creating and reading the campaign [default: the local
    /// service's change-me-local-admin-token].
    #[arg(
        long,
        env = "LOADTEST_ADMIN_TOKEN",
        default_value = DEFAULT_ADMIN_TOKEN,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub admin_token: String,
    /// Number of distinct shoppers (with --duration, only those reached take memory).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub shoppers: u64,
    /// Claims each shopper sends (the second and later answer 409 already-issued or 410).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub requests_per_shopper: u64,
    /// Stock of the campaign created for the run (with --campaign: its remaining stock
    /// is used).
    #[arg(long, required_unless_present = "campaign", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub stock: Option<u64>,
    /// Use this existing campaign instead of creating one (open now, for 1 h).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub campaign: Option<u64>,
    /// MySQL of the service, for the checks [default: the local stack's flashcoupon
    /// database, mysql://flashcoupon:***@127.0.0.1:3306/flashcoupon].
    #[arg(long, default_value = DEFAULT_MYSQL_URL, hide_default_value = true)]
    pub mysql_url: String,
    /// How long to wait for the outbox and the persister to drain before judging.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub drain_timeout_secs: u64,
    /// Skip the invariant checks (no admin reads after the run, no MySQL).
    #[arg(long)]
    pub no_verify: bool,
    /// Shopper id prefix [default: random, so runs never collide]; 1 to 40 of A-Z a-z 0-9 _ - . : @
    #[arg(long, value_parser = parse_prefix)]
    pub user_prefix: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct FlashArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub claim: ClaimArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TopProductsArgs {
    #[command(flatten)]
    pub common: Common,
    /// The `limit` query parameter.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub claim: ClaimArgs,
    /// Share of requests that are top-products reads (0 to below 1); the rest are claims.
    /// Once every shopper has sent its claims, every request is a read.
    #[arg(long, default_value_t = 0.8, value_parser = parse_read_ratio)]
    pub read_ratio: f64,
    /// The `limit` of the top-products reads.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub common: Common,
    /// Path (and query) to GET.
    #[arg(long, default_value = "/health/live", value_parser = parse_path)]
    pub path: String,
}

impl Command {
    pub fn common(&self) -> &Common {
        match self {
            Command::Flash(a) => &a.common,
            Command::TopProducts(a) => &a.common,
            Command::Mixed(a) => &a.common,
            Command::Get(a) => &a.common,
        }
    }

    /// The scenario's name, as in reports and the default output directory.
    pub fn scenario(&self) -> &'static str {
        match self {
            Command::Flash(_) => "flash",
            Command::TopProducts(_) => "top-products",
            Command::Mixed(_) => "mixed",
            Command::Get(_) => "get",
        }
    }

    /// Checks that depend on more than one option; the message names the bad value.
    pub fn validate(&self) -> Result<(), String> {
        let common = self.common();
        match self {
            Command::TopProducts(_) | Command::Get(_) | Command::Mixed(_)
                if common.duration.is_none() =>
            {
                return Err(format!(
                    "`{}` needs --duration SECS (it runs until then)",
                    self.scenario()
                ));
            }
            _ => {}
        }
        if let Some(duration) = common.duration {
            if common.ramp_secs > duration {
                return Err(format!(
                    "--ramp-secs {} is longer than --duration {duration}: the run would stop \
                     before it reached its full load",
                    common.ramp_secs
                ));
            }
        }
        match common.model {
            ModelKind::Closed if common.rate.is_some() => {
                Err("--rate is for --model open; the closed model takes --concurrency".into())
            }
            ModelKind::Open if common.concurrency.is_some() => Err(
                "--concurrency is for --model closed; the open model takes --rate (and --connections)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

fn parse_target(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("'{s}' is not a URL ({e}); expected e.g. http://127.0.0.1:8080"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "'{s}' must start with http:// (no TLS: put the load generator next to the service)"
        ));
    }
    if uri.host().is_none() {
        return Err(format!("'{s}' has no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Requests per second an open model may be asked for.
const RATES: std::ops::RangeInclusive<f64> = 0.001..=10_000_000.0;

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if RATES.contains(&r) => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate; expected requests per second, from {} to {}",
            RATES.start(),
            RATES.end()
        )),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds (0 to 86400)")),
    }
}

fn parse_positive_secs(s: &str) -> Result<f64, String> {
    match parse_secs(s)? {
        v if v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' must be more than 0 seconds")),
    }
}

fn parse_timeout_secs(s: &str) -> Result<f64, String> {
    match parse_positive_secs(s)? {
        v if v <= 3_600.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is more than 3600 seconds, the longest latency the histograms record"
        )),
    }
}

fn parse_read_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(1.0) => Err(format!(
            "'{s}' leaves no claims to verify; for reads only, run `top-products`"
        )),
        _ => Err(format!("'{s}' is not a ratio from 0 to below 1")),
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not a shopper id prefix: 1 to 40 of A-Z a-z 0-9 _ - . : @"
        ))
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.parse::<http::uri::PathAndQuery>().is_ok() {
        Ok(s.to_owned())
    } else {
        Err(format!("'{s}' is not a path; expected e.g. /health/live"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn open_model_needs_a_rate_and_closed_a_concurrency() {
        let parsed = Cli::try_parse_from(["loadtest", "get", "--model", "open", "--duration", "1"]);
        assert!(parsed.is_err());
        let parsed = Cli::try_parse_from([
            "loadtest",
            "flash",
            "--model",
            "closed",
            "--shoppers",
            "10",
            "--stock",
            "5",
        ]);
        assert!(parsed.is_err());
    }

    #[test]
    fn flash_parses_the_documented_options() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "flash",
            "--target",
            "http://127.0.0.1:8091/",
            "--shoppers",
            "300",
            "--requests-per-shopper",
            "2",
            "--stock",
            "100",
            "--model",
            "closed",
            "--concurrency",
            "20",
            "--user-prefix",
            "abc",
        ])
        .unwrap();
        let Command::Flash(args) = &cli.command else {
            panic!("flash")
        };
        assert_eq!(args.common.target, "http://127.0.0.1:8091");
        assert_eq!(args.claim.stock, Some(100));
        assert!(cli.command.validate().is_ok());
    }

    /// The parse error for these arguments (after `loadtest`).
    fn refusal(args: &str) -> String {
        let argv = std::iter::once("loadtest").chain(args.split_whitespace());
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_are_named_in_the_message() {
        let err = refusal("get --target https://x --model open --rate 5");
        assert!(err.contains("https://x"), "{err}");
        let err = refusal("get --model open --rate -3 --duration 1");
        assert!(err.contains("-3"), "{err}");
        for (rate, named) in [("1e-20", "from 0.001"), ("20000000", "to 10000000")] {
            let err = refusal(&format!("get --model open --rate {rate} --duration 1"));
            assert!(err.contains(rate) && err.contains(named), "{err}");
        }
        let err = refusal(
            "mixed --model closed --concurrency 2 --duration 1 --shoppers 5 --stock 5 \
             --read-ratio 1",
        );
        assert!(err.contains("no claims"), "{err}");
        let err = refusal("get --model open --rate 5 --duration 1 --timeout-secs 7200");
        assert!(err.contains("7200") && err.contains("3600"), "{err}");
    }

    #[test]
    fn a_ramp_longer_than_the_run_is_refused() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "get",
            "--model",
            "open",
            "--rate",
            "1000",
            "--duration",
            "10",
            "--ramp-secs",
            "60",
        ])
        .unwrap();
        let err = cli.command.validate().unwrap_err();
        assert!(
            err.contains("--ramp-secs 60") && err.contains("--duration 10"),
            "{err}"
        );
    }

    #[test]
    fn read_scenarios_need_a_duration() {
        let cli =
            Cli::try_parse_from(["loadtest", "get", "--model", "open", "--rate", "5"]).unwrap();
        assert!(cli.command.validate().unwrap_err().contains("--duration"));
    }
}
