//! What a run measured and how it is shown: the [`Recorder`] collects every answer into
//! HDR histograms (one per operation, one per second of the run) and a status
//! breakdown; [`Summary`] is the serialisable result (`summary.json`), and
//! [`render_table`] the table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::verify::Check;

/// Longest latency a histogram holds (longer ones are clamped), in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// 201 with a coupon.
    Issued,
    /// 409 `already-issued`.
    AlreadyIssued,
    /// 409 `campaign-not-open`.
    NotOpen,
    /// 409 of another type.
    Conflict,
    /// 410 `sold-out`.
    SoldOut,
    /// 429 `rate-limited`.
    RateLimited,
    /// 503 `unavailable`: a dependency (Redis, MySQL) failed.
    Unavailable,
    /// 503 `unavailable` with `in_flight_limit`: the instance already had that many
    /// claims waiting on Redis and turned this one away at once.
    Busy,
    /// Any other HTTP status.
    Status(u16),
    /// No answer within the per-request timeout.
    Timeout,
    /// Connection refused, reset, or an unreadable answer.
    Transport,
}

impl Outcome {
    pub fn label(self) -> String {
        match self {
            Outcome::Issued => "201 issued".into(),
            Outcome::AlreadyIssued => "409 already-issued".into(),
            Outcome::NotOpen => "409 campaign-not-open".into(),
            Outcome::Conflict => "409 other".into(),
            Outcome::SoldOut => "410 sold-out".into(),
            Outcome::RateLimited => "429 rate-limited".into(),
            Outcome::Unavailable => "503 unavailable".into(),
            Outcome::Busy => "503 instance busy".into(),
            Outcome::Status(code) => code.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Transport => "transport error".into(),
        }
    }

    /// An answer that means the service did not do its job (the 409/410 of a flash
    /// event are expected answers, not errors).
    pub fn is_error(self) -> bool {
        match self {
            Outcome::Issued | Outcome::AlreadyIssued | Outcome::SoldOut => false,
            Outcome::Status(code) => !(200..400).contains(&code),
            _ => true,
        }
    }
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).expect("valid histogram bounds")
}

struct OpStats {
    latency: Histogram<u64>,
    outcomes: BTreeMap<Outcome, u64>,
}

struct Second {
    completed: u64,
    errors: u64,
    latency: Histogram<u64>,
}

#[derive(Default)]
struct Inner {
    ops: BTreeMap<&'static str, OpStats>,
    seconds: Vec<Second>,
}

/// Collects the answers of a run; shared by every request task.
pub struct Recorder {
    start: Instant,
    completed: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    inner: Mutex<Inner>,
    first_error: Mutex<Option<String>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            first_error: Mutex::new(None),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// One answer of operation `op`, due at `intended`, complete at `done`.
    pub fn record(&self, op: &'static str, outcome: Outcome, intended: Instant, done: Instant) {
        let micros = done.saturating_duration_since(intended).as_micros() as u64;
        let micros = micros.clamp(1, MAX_MICROS);
        let second = done.saturating_duration_since(self.start).as_secs() as usize;
        let error = outcome.is_error();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let stats = inner.ops.entry(op).or_insert_with(|| OpStats {
                latency: histogram(3),
                outcomes: BTreeMap::new(),
            });
            stats.latency.saturating_record(micros);
            *stats.outcomes.entry(outcome).or_default() += 1;
            while inner.seconds.len() <= second {
                inner.seconds.push(Second {
                    completed: 0,
                    errors: 0,
                    // 2 significant digits keep a per-second histogram ~20 KB.
                    latency: histogram(2),
                });
            }
            let s = &mut inner.seconds[second];
            s.completed += 1;
            s.errors += u64::from(error);
            s.latency.saturating_record(micros);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An open-model arrival that was not sent (too many in flight).
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the first transport error's message, to show what went wrong.
    pub fn first_error(&self, message: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(message);
        }
    }

    pub fn first_error_message(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn dropped_count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The figures, once the run is over; `elapsed` is the sending time plus the wait
    /// for the last answer.
    pub fn measurements(&self, elapsed: Duration) -> Measurements {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut all = histogram(3);
        let mut operations = BTreeMap::new();
        let mut outcomes: BTreeMap<Outcome, u64> = BTreeMap::new();
        for (name, stats) in &inner.ops {
            all.add(&stats.latency).expect("same bounds");
            for (o, n) in &stats.outcomes {
                *outcomes.entry(*o).or_default() += n;
            }
            operations.insert(
                (*name).to_owned(),
                OperationSummary {
                    count: stats.latency.len(),
                    throughput_rps: stats.latency.len() as f64 / secs,
                    latency: Latency::of(&stats.latency),
                    statuses: labelled(&stats.outcomes),
                },
            );
        }
        let timeline = inner
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SecondSummary {
                second: i as u64,
                completed: s.completed,
                errors: s.errors,
                p50_ms: (!s.latency.is_empty()).then(|| ms(s.latency.value_at_quantile(0.5))),
                p99_ms: (!s.latency.is_empty()).then(|| ms(s.latency.value_at_quantile(0.99))),
            })
            .collect();
        Measurements {
            elapsed_secs: elapsed.as_secs_f64(),
            completed: all.len(),
            dropped: self.dropped_count(),
            errors: outcomes
                .iter()
                .filter(|(o, _)| o.is_error())
                .map(|(_, n)| n)
                .sum(),
            throughput_rps: all.len() as f64 / secs,
            latency: Latency::of(&all),
            statuses: labelled(&outcomes),
            operations,
            timeline,
        }
    }
}

fn labelled(outcomes: &BTreeMap<Outcome, u64>) -> BTreeMap<String, u64> {
    outcomes.iter().map(|(o, n)| (o.label(), *n)).collect()
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Latency percentiles in milliseconds (from the scheduled send time in the open model).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationSummary {
    pub count: u64,
    pub throughput_rps: f64,
    #[serde(rename = "latency_ms")]
    pub latency: Latency,
    pub statuses: BTreeMap<String, u64>,
}

/// One second of the run (by completion time).
#[derive(Debug, Clone, Serialize)]
pub struct SecondSummary {
    pub second: u64,
    pub completed: u64,
    pub errors: u64,
    /// None (null) in a second where no answer arrived: a stall has no latency yet;
    /// its requests show in the second their answers come.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The measured figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Measurements {
    pub elapsed_secs: f64,
    pub completed: u64,
    /// Open model: arrivals not sent because `max_in_flight` were unanswered.
    pub dropped: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    #[serde(rename = "latency_ms")]
    pub latency: Latency,
    pub statuses: BTreeMap<String, u64>,
    pub operations: BTreeMap<String, OperationSummary>,
    pub timeline: Vec<SecondSummary>,
}

/// The load model as run.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub kind: crate::cli::ModelKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    pub ramp_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
}

/// The flash part of a run: campaign, shoppers and what the answers promised.
#[derive(Debug, Clone, Serialize)]
pub struct FlashSummary {
    pub campaign_id: u64,
    pub created_campaign: bool,
    /// Coupons left when the run started: the stock this run competes for.
    pub stock: u64,
    pub shoppers: u64,
    pub requests_per_shopper: u64,
    pub user_prefix: String,
    /// Shoppers that sent at least one claim.
    pub shoppers_attempted: u64,
    /// Shoppers told they hold a coupon (201 or 409 already-issued).
    pub shoppers_holding: u64,
    /// Shoppers turned away by every answer before any stock was touched (429,
    /// 503 instance busy, 409 campaign-not-open).
    pub shoppers_refused: u64,
    pub answered_201: u64,
    /// Coupons the service counts as issued during the run (admin API), when verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persisted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_secs: Option<f64>,
}

/// Everything about a run: written as `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub target: String,
    pub started_at: String,
    pub model: ModelSummary,
    /// Sending was stopped by Ctrl-C before the end.
    pub stopped_early: bool,
    #[serde(flatten)]
    pub measured: Measurements,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flash: Option<FlashSummary>,
    /// The invariant checks, when a claim run was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verdict>,
    /// False when any check failed.
    pub passed: bool,
}

/// The checks of a verified run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// The table printed at the end of a run.
pub fn render_table(s: &Summary) -> String {
    let m = &s.measured;
    let mut out = String::new();
    let model = match s.model.kind {
        crate::cli::ModelKind::Closed => {
            format!("closed, concurrency {}", s.model.concurrency.unwrap_or(0))
        }
        crate::cli::ModelKind::Open => format!(
            "open, {} req/s, {} connections",
            s.model.rate.unwrap_or(0.0),
            s.model.connections.unwrap_or(0)
        ),
    };
    let ramp = if s.model.ramp_secs > 0.0 {
        format!(", ramp {} s", s.model.ramp_secs)
    } else {
        ", no ramp".into()
    };
    let _ = writeln!(
        out,
        "scenario {} against {} ({model}{ramp})",
        s.scenario, s.target
    );
    let _ = writeln!(
        out,
        "{} requests in {:.2} s = {:.0} req/s; {} errors; {} dropped (open-model in-flight bound)",
        m.completed, m.elapsed_secs, m.throughput_rps, m.errors, m.dropped
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| {:<14} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "operation", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let _ = writeln!(
        out,
        "|{:-<16}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|",
        "", "", "", "", "", "", "", ""
    );
    let mut row = |name: &str, count: u64, rps: f64, l: &Latency| {
        let _ = writeln!(
            out,
            "| {:<14} | {:>9} | {:>9.0} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} |",
            name, count, rps, l.p50, l.p90, l.p99, l.p99_9, l.max
        );
    };
    for (name, op) in &m.operations {
        row(name, op.count, op.throughput_rps, &op.latency);
    }
    if m.operations.len() > 1 {
        row("all", m.completed, m.throughput_rps, &m.latency);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| {:<24} | {:>9} | {:>7} |",
        "answer", "count", "share"
    );
    let _ = writeln!(out, "|{:-<26}|{:-<11}|{:-<9}|", "", "", "");
    for (label, n) in &m.statuses {
        let share = 100.0 * *n as f64 / m.completed.max(1) as f64;
        let _ = writeln!(out, "| {label:<24} | {n:>9} | {share:>6.1}% |");
    }
    if m.statuses.contains_key(&Outcome::RateLimited.label()) {
        let _ = writeln!(
            out,
            "note: 429 answers: run the service with FLASHCOUPON__LIMITS__ENABLED=false for a load test"
        );
    }
    if let Some(f) = &s.flash {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "campaign {}{}: stock {}, {} shoppers x {} claims (prefix {}); {} shoppers hold a coupon, {} answered 201",
            f.campaign_id,
            if f.created_campaign { " (created)" } else { "" },
            f.stock,
            f.shoppers,
            f.requests_per_shopper,
            f.user_prefix,
            f.shoppers_holding,
            f.answered_201
        );
        if f.shoppers_refused > 0 {
            let _ = writeln!(
                out,
                "{} shoppers were only ever refused (429, 503 instance busy or not open) and hold nothing",
                f.shoppers_refused
            );
        }
    }
    out
}

/// The check lines, one per invariant.
pub fn render_checks(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let _ = writeln!(
            out,
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let start = Instant::now();
        let rec = Recorder::new(start);
        // 1..=1000 ms, one each: p50 = 500 ms, p99 = 990 ms, max = 1000 ms.
        for i in 1..=1000u64 {
            rec.record("claim", Outcome::Issued, start, at(start, i));
        }
        let m = rec.measurements(Duration::from_secs(2));
        assert_eq!(m.completed, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(m.latency.p50, 500.0), "{:?}", m.latency);
        assert!(close(m.latency.p90, 900.0), "{:?}", m.latency);
        assert!(close(m.latency.p99, 990.0), "{:?}", m.latency);
        assert!(close(m.latency.p99_9, 999.0), "{:?}", m.latency);
        assert!(close(m.latency.max, 1000.0), "{:?}", m.latency);
        assert!(close(m.throughput_rps, 500.0));
    }

    #[test]
    fn answers_are_counted_per_status_and_per_second() {
        let start = Instant::now();
        let rec = Recorder::new(start);
        rec.record("claim", Outcome::Issued, start, at(start, 10));
        rec.record("claim", Outcome::AlreadyIssued, start, at(start, 20));
        rec.record("claim", Outcome::SoldOut, at(start, 1000), at(start, 1500));
        rec.record("claim", Outcome::Busy, at(start, 1000), at(start, 1010));
        rec.record(
            "claim",
            Outcome::Unavailable,
            at(start, 2000),
            at(start, 2100),
        );
        rec.record("top-products", Outcome::Status(200), start, at(start, 2900));
        rec.record("claim", Outcome::Transport, start, at(start, 2950));
        rec.dropped();
        let m = rec.measurements(Duration::from_secs(3));
        assert_eq!(m.completed, 7);
        assert_eq!(m.dropped, 1);
        assert_eq!(m.errors, 3, "two 503s and transport");
        assert_eq!(m.statuses["201 issued"], 1);
        assert_eq!(m.statuses["409 already-issued"], 1);
        assert_eq!(m.statuses["410 sold-out"], 1);
        assert_eq!(m.statuses["503 unavailable"], 1);
        assert_eq!(m.statuses["503 instance busy"], 1);
        assert_eq!(m.statuses["transport error"], 1);
        assert_eq!(m.operations["claim"].count, 6);
        assert_eq!(m.operations["top-products"].statuses["200"], 1);
        let per_second: Vec<(u64, u64)> =
            m.timeline.iter().map(|s| (s.completed, s.errors)).collect();
        assert_eq!(per_second, vec![(2, 0), (2, 1), (3, 2)]);
        // Second 2 saw 100 ms, 2900 ms and 2950 ms.
        assert!(
            (m.timeline[2].p50_ms.unwrap() - 2900.0).abs() < 30.0,
            "{:?}",
            m.timeline[2]
        );
    }

    #[test]
    fn the_table_shows_every_operation_and_answer() {
        let start = Instant::now();
        let rec = Recorder::new(start);
        rec.record("claim", Outcome::Issued, start, at(start, 3));
        rec.record("claim", Outcome::RateLimited, start, at(start, 3));
        let summary = Summary {
            scenario: "flash".into(),
            target: "http://127.0.0.1:1".into(),
            started_at: "now".into(),
            model: ModelSummary {
                kind: crate::cli::ModelKind::Closed,
                concurrency: Some(2),
                rate: None,
                connections: None,
                ramp_secs: 0.0,
                duration_secs: None,
            },
            stopped_early: false,
            measured: rec.measurements(Duration::from_secs(1)),
            flash: None,
            verify: None,
            passed: true,
        };
        let table = render_table(&summary);
        assert!(table.contains("| claim"), "{table}");
        assert!(table.contains("201 issued"), "{table}");
        assert!(table.contains("LIMITS__ENABLED=false"), "{table}");
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["statuses"]["429 rate-limited"], 1);
        assert_eq!(json["model"]["kind"], "closed");
        assert!(json["latency_ms"]["p99"].is_number(), "{json}");
    }
}
