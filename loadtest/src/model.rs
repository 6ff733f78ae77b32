//! The two load models that drive a [`Workload`]:
//!
//! - **open**: request `k` is due at a fixed time after the start ([`arrival_offset`]),
//!   whatever the server answers; its latency is measured from that due time, so a
//!   stalled server shows as latency and not as fewer requests (no coordinated
//!   omission). Requests wait for one of `connections` connections; at most
//!   `max_in_flight` are scheduled but unanswered, and arrivals beyond are dropped and
//!   counted.
//! - **closed**: `concurrency` workers, each sends its next request when the previous
//!   one answered; latency is measured from the actual send.
//!
//! Both stop at the workload's total, at `duration`, or when [`Stop`] is triggered
//! (Ctrl-C), whichever comes first, and then wait for the requests in flight.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::cli::{Common, ModelKind};

/// What the models drive: request `k` (0, 1, 2, ...) sent and recorded.
pub trait Workload: Send + Sync + 'static {
    /// How many requests the workload has, `None` for "until the duration ends".
    fn total(&self) -> Option<u64>;
    /// Sends request `k`; latency counts from `intended` (the due time).
    fn call(&self, k: u64, intended: Instant) -> impl Future<Output = ()> + Send;
    /// Counts an open-model arrival dropped because too many were in flight.
    fn dropped(&self, k: u64);
}

/// Stops sending early (Ctrl-C); the answers of requests in flight are still awaited.
#[derive(Default)]
pub struct Stop {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stop {
    pub fn trigger(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_triggered(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Sleeps until `at`; false when stopped first.
    async fn sleep_until(&self, at: Instant) -> bool {
        let notified = self.notify.notified();
        if self.is_triggered() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at) => !self.is_triggered(),
            _ = notified => false,
        }
    }
}

/// The load model with its figures, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    Closed {
        concurrency: u32,
    },
    Open {
        rate: f64,
        connections: u32,
        max_in_flight: u32,
    },
}

/// How a run is paced.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub model: Model,
    pub duration: Option<Duration>,
    pub ramp: Duration,
}

impl Load {
    pub fn from_cli(common: &Common) -> Self {
        let model = match common.model {
            ModelKind::Closed => Model::Closed {
                concurrency: common.concurrency.unwrap_or(1),
            },
            ModelKind::Open => Model::Open {
                rate: common.rate.unwrap_or(1.0),
                connections: common.connections,
                max_in_flight: common.max_in_flight,
            },
        };
        Load {
            model,
            duration: common.duration.map(Duration::from_secs_f64),
            ramp: Duration::from_secs_f64(common.ramp_secs),
        }
    }

    /// Requests the run will send at most, if known in advance (for the progress bar).
    pub fn expected_requests(&self, total: Option<u64>) -> Option<u64> {
        let by_time = match (&self.model, self.duration) {
            (Model::Open { rate, .. }, Some(d)) => Some(arrivals_within(d, *rate, self.ramp)),
            _ => None,
        };
        match (total, by_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// When request `k` is due, after the start, at `rate` per second with a linear ramp
/// from 0 to `rate` over `ramp`: arrivals by time t are `rate·t²/(2·ramp)` during the
/// ramp and `rate·ramp/2 + rate·(t − ramp)` after it; this inverts that.
pub fn arrival_offset(k: u64, rate: f64, ramp: Duration) -> Duration {
    let k = k as f64;
    let x = ramp.as_secs_f64();
    let during_ramp = rate * x / 2.0;
    let secs = if x > 0.0 && k < during_ramp {
        (2.0 * k * x / rate).sqrt()
    } else {
        k / rate + x / 2.0
    };
    Duration::from_secs_f64(secs)
}

/// How many arrivals are due strictly before `d` (the inverse of [`arrival_offset`]).
pub fn arrivals_within(d: Duration, rate: f64, ramp: Duration) -> u64 {
    let t = d.as_secs_f64();
    let x = ramp.as_secs_f64();
    let due = if x > 0.0 && t <= x {
        rate * t * t / (2.0 * x)
    } else {
        rate * (t - x / 2.0)
    };
    // Arrival k is due at or after d when k >= due: so the count is ceil(due).
    due.max(0.0).ceil() as u64
}

/// When closed-model worker `w` of `workers` starts: evenly spread over the ramp.
pub fn worker_start(w: u32, workers: u32, ramp: Duration) -> Duration {
    if workers == 0 {
        return Duration::ZERO;
    }
    ramp.mul_f64(f64::from(w) / f64::from(workers))
}

/// Runs `work` under `load` from `start` until done or `stop`; returns when every
/// sent request answered.
pub async fn drive<W: Workload>(work: Arc<W>, load: &Load, start: Instant, stop: Arc<Stop>) {
    match load.model {
        Model::Closed { concurrency } => run_closed(work, load, concurrency, start, stop).await,
        Model::Open {
            rate,
            connections,
            max_in_flight,
        } => run_open(work, load, (rate, connections, max_in_flight), start, stop).await,
    }
}

async fn run_closed<W: Workload>(
    work: Arc<W>,
    load: &Load,
    workers: u32,
    start: Instant,
    stop: Arc<Stop>,
) {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = load.duration.map(|d| start + d);
    let total = work.total();
    let mut handles = Vec::with_capacity(workers as usize);
    for w in 0..workers {
        let work = work.clone();
        let next = next.clone();
        let begin = start + worker_start(w, workers, load.ramp);
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            if !stop.sleep_until(begin).await {
                return;
            }
            loop {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) || stop.is_triggered() {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| k >= t) {
                    break;
                }
                work.call(k, now).await;
            }
        }));
    }
    for handle in handles {
        let _ = handle.await;
    }
}

async fn run_open<W: Workload>(
    work: Arc<W>,
    load: &Load,
    (rate, connections, max_in_flight): (f64, u32, u32),
    start: Instant,
    stop: Arc<Stop>,
) {
    let connections = Arc::new(Semaphore::new(connections as usize));
    let in_flight = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let total = work.total();
    let mut k: u64 = 0;
    loop {
        if total.is_some_and(|t| k >= t) {
            break;
        }
        let offset = arrival_offset(k, rate, load.ramp);
        if load.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let due = start + offset;
        if due > Instant::now() && !stop.sleep_until(due).await {
            break;
        }
        if stop.is_triggered() {
            break;
        }
        if in_flight.load(Ordering::Acquire) >= u64::from(max_in_flight) {
            work.dropped(k);
        } else {
            in_flight.fetch_add(1, Ordering::AcqRel);
            let work = work.clone();
            let connections = connections.clone();
            let in_flight = in_flight.clone();
            let all_done = all_done.clone();
            tokio::spawn(async move {
                let permit = connections.acquire().await;
                work.call(k, due).await;
                drop(permit);
                if in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                    all_done.notify_one();
                }
            });
        }
        k += 1;
    }
    while in_flight.load(Ordering::Acquire) > 0 {
        // notify_one stores a permit, so a notification between the check and the wait
        // is not lost; the timeout is a belt-and-braces re-check.
        let _ = tokio::time::timeout(Duration::from_millis(100), all_done.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn without_ramp_arrivals_are_evenly_spaced() {
        assert_eq!(arrival_offset(0, 100.0, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            arrival_offset(50, 100.0, Duration::ZERO),
            Duration::from_millis(500)
        );
        assert_eq!(
            arrival_offset(1000, 100.0, Duration::ZERO),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_linear_ramp_sends_half_the_full_rate_during_the_ramp() {
        let ramp = Duration::from_secs(10);
        // 100/s ramped over 10 s: 500 arrivals during the ramp, the 500th at 10 s.
        let at = arrival_offset(500, 100.0, ramp).as_secs_f64();
        assert!((at - 10.0).abs() < 1e-9, "{at}");
        // a quarter of them (125) by 5 s: t = sqrt(2·125·10/100) = 5.
        let at = arrival_offset(125, 100.0, ramp).as_secs_f64();
        assert!((at - 5.0).abs() < 1e-9, "{at}");
        // after the ramp, full rate: 600th at 11 s.
        let at = arrival_offset(600, 100.0, ramp).as_secs_f64();
        assert!((at - 11.0).abs() < 1e-9, "{at}");
    }

    #[test]
    fn arrival_offsets_never_go_backwards() {
        let ramp = Duration::from_millis(2_500);
        let mut last = Duration::ZERO;
        for k in 0..10_000 {
            let at = arrival_offset(k, 733.0, ramp);
            assert!(at >= last, "k={k}");
            last = at;
        }
    }

    #[test]
    fn arrivals_within_counts_those_due_before_the_end() {
        for ramp in [Duration::ZERO, Duration::from_secs(3)] {
            for secs in [1u64, 5, 20] {
                let d = Duration::from_secs(secs);
                let n = arrivals_within(d, 250.0, ramp);
                assert!(n == 0 || arrival_offset(n - 1, 250.0, ramp) < d);
                assert!(arrival_offset(n, 250.0, ramp) >= d - Duration::from_nanos(1));
            }
        }
        assert_eq!(
            arrivals_within(Duration::from_secs(10), 100.0, Duration::ZERO),
            1000
        );
    }

    #[test]
    fn closed_workers_start_evenly_over_the_ramp() {
        let ramp = Duration::from_secs(4);
        assert_eq!(worker_start(0, 4, ramp), Duration::ZERO);
        assert_eq!(worker_start(2, 4, ramp), Duration::from_secs(2));
        assert_eq!(worker_start(3, 4, Duration::ZERO), Duration::ZERO);
    }

    /// Records when each request was due; answers after `delay`, or when the gate
    /// opens if there is one.
    struct Fake {
        total: Option<u64>,
        delay: Duration,
        gate: Option<Arc<Semaphore>>,
        start: Instant,
        due: Mutex<Vec<(u64, Duration)>>,
        dropped: AtomicU64,
    }

    impl Workload for Fake {
        fn total(&self) -> Option<u64> {
            self.total
        }
        async fn call(&self, k: u64, intended: Instant) {
            self.due
                .lock()
                .unwrap()
                .push((k, intended.duration_since(self.start)));
            match &self.gate {
                Some(gate) => drop(gate.acquire().await),
                None => tokio::time::sleep(self.delay).await,
            }
        }
        fn dropped(&self, _k: u64) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fake(total: Option<u64>, delay: Duration, gate: Option<Arc<Semaphore>>) -> Arc<Fake> {
        Arc::new(Fake {
            total,
            delay,
            gate,
            start: Instant::now(),
            due: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        })
    }

    fn open(rate: f64, connections: u32, max_in_flight: u32) -> Load {
        Load {
            model: Model::Open {
                rate,
                connections,
                max_in_flight,
            },
            duration: None,
            ramp: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn open_model_latency_counts_from_the_scheduled_time() {
        // Answers take 50 ms, arrivals are 1 ms apart: the due times stay on schedule.
        let work = fake(Some(100), Duration::from_millis(50), None);
        drive(
            work.clone(),
            &open(1_000.0, 1_000, 1_000),
            work.start,
            Arc::default(),
        )
        .await;
        let mut due = work.due.lock().unwrap().clone();
        due.sort();
        assert_eq!(due.len(), 100);
        assert_eq!(due[99], (99, Duration::from_millis(99)));
    }

    #[tokio::test]
    async fn open_model_drops_arrivals_beyond_the_in_flight_bound() {
        // Nothing answers until every arrival was scheduled: 20 in flight, 80 dropped.
        let gate = Arc::new(Semaphore::new(0));
        let work = fake(Some(100), Duration::ZERO, Some(gate.clone()));
        let driver = {
            let work = work.clone();
            tokio::spawn(async move {
                drive(
                    work.clone(),
                    &open(10_000.0, 10, 20),
                    work.start,
                    Arc::default(),
                )
                .await
            })
        };
        for _ in 0..2_000 {
            if work.dropped.load(Ordering::Relaxed) >= 80 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate.add_permits(1_000);
        driver.await.unwrap();
        assert_eq!(work.dropped.load(Ordering::Relaxed), 80);
        // Only `connections` (10) of the 20 in flight reached the workload before the gate opened;
        // all 20 were sent in the end.
        assert_eq!(work.due.lock().unwrap().len(), 20);
    }

    #[tokio::test]
    async fn closed_model_sends_each_request_once_and_stops_at_the_total() {
        let work = fake(Some(250), Duration::from_millis(1), None);
        let load = Load {
            model: Model::Closed { concurrency: 7 },
            duration: None,
            ramp: Duration::ZERO,
        };
        drive(work.clone(), &load, work.start, Arc::default()).await;
        let mut ks: Vec<u64> = work.due.lock().unwrap().iter().map(|d| d.0).collect();
        ks.sort();
        assert_eq!(ks, (0..250).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stop_ends_an_open_run_and_waits_for_the_answers() {
        let work = fake(None, Duration::from_millis(10), None);
        let stop = Arc::new(Stop::default());
        let driver = {
            let (work, stop) = (work.clone(), stop.clone());
            tokio::spawn(async move {
                drive(work.clone(), &open(100.0, 10, 100), work.start, stop).await
            })
        };
        while work.due.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.trigger();
        driver.await.unwrap();
        let sent = work.due.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            work.due.lock().unwrap().len(),
            sent,
            "nothing sent after the stop"
        );
    }

    #[tokio::test]
    async fn the_duration_ends_an_endless_workload() {
        let work = fake(None, Duration::from_millis(20), None);
        let load = Load {
            model: Model::Closed { concurrency: 2 },
            duration: Some(Duration::from_millis(200)),
            ramp: Duration::ZERO,
        };
        drive(work.clone(), &load, work.start, Arc::default()).await;
        assert!(work.due.lock().unwrap().len() >= 2);
    }
}
