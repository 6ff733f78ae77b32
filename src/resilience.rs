//! Circuit breakers (failsafe) and bulkheads, and the only module that imports
//! failsafe. The modules that wrap a dependency own their breaker (`store` for
//! Redis, `persistence` for MySQL); this file only provides the mechanism.
//!
//! failsafe's half-open state lets every call through; [`Breaker`] adds a limit so
//! a recovering dependency receives only a few trial calls at a time. Every call
//! has a timeout, and a timeout counts as a failure.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use failsafe::backoff::{self, Exponential};
use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::{Config, Instrument, StateMachine};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics;

pub const CLOSED: u8 = 0;
pub const HALF_OPEN: u8 = 1;
pub const OPEN: u8 = 2;

/// Why a guarded call did not return a value.
#[derive(Debug, thiserror::Error)]
pub enum GuardError<E> {
    #[error("circuit open")]
    Open,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bulkhead full")]
    Full,
    #[error(transparent)]
    Failed(E),
}

/// Publishes failsafe's state changes into `circuit_breaker_state`.
#[derive(Clone)]
struct StateGauge {
    name: &'static str,
    state: Arc<AtomicU8>,
}

impl StateGauge {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        metrics::get().set_breaker_state(self.name, state);
    }
}

impl Instrument for StateGauge {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        tracing::warn!(breaker = self.name, "circuit breaker opened");
        self.set(OPEN);
    }
    fn on_half_open(&self) {
        tracing::info!(
            breaker = self.name,
            "circuit breaker half-open: trial calls"
        );
        self.set(HALF_OPEN);
    }
    fn on_closed(&self) {
        self.set(CLOSED);
    }
}

/// Settings of one breaker.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// First open period (at least 1 s); doubles on each failed trial, up to `max_open`.
    pub open_for: Duration,
    pub max_open: Duration,
    /// Calls let through at once while half-open.
    pub trial_calls: usize,
    /// Timeout of every call; a timeout is a failure.
    pub call_timeout: Duration,
}

#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    machine: StateMachine<ConsecutiveFailures<Exponential>, StateGauge>,
    state: Arc<AtomicU8>,
    trials: Arc<Semaphore>,
    timeout: Duration,
}

impl Breaker {
    pub fn new(name: &'static str, settings: BreakerSettings) -> Self {
        let state = Arc::new(AtomicU8::new(CLOSED));
        let gauge = StateGauge {
            name,
            state: state.clone(),
        };
        // failsafe's exponential backoff panics below one second: clamp.
        let open_for = settings.open_for.max(Duration::from_secs(1));
        let max_open = settings.max_open.max(open_for);
        let policy = consecutive_failures(
            settings.failures_to_open.max(1),
            backoff::exponential(open_for, max_open),
        );
        let machine = Config::new()
            .failure_policy(policy)
            .instrument(gauge)
            .build();
        Self {
            name,
            machine,
            state,
            trials: Arc::new(Semaphore::new(settings.trial_calls.max(1))),
            timeout: settings.call_timeout,
        }
    }

    /// 0 closed, 1 half-open, 2 open.
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Runs `call` if the breaker allows it, within the timeout, and records the outcome.
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, GuardError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        if !self.machine.is_call_permitted() {
            metrics::get().record_breaker_call(self.name, "rejected");
            return Err(GuardError::Open);
        }
        let _trial: Option<OwnedSemaphorePermit> = if self.state() == HALF_OPEN {
            match self.trials.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::get().record_breaker_call(self.name, "rejected");
                    return Err(GuardError::Open);
                }
            }
        } else {
            None
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.machine.on_success();
                metrics::get().record_breaker_call(self.name, "success");
                Ok(value)
            }
            Ok(Err(err)) => {
                self.machine.on_error();
                metrics::get().record_breaker_call(self.name, "failure");
                Err(GuardError::Failed(err))
            }
            Err(_) => {
                self.machine.on_error();
                metrics::get().record_breaker_call(self.name, "timeout");
                Err(GuardError::Timeout(self.timeout))
            }
        }
    }
}

/// At most `limit` calls at once; a caller waits at most `max_wait` for a slot.
#[derive(Clone)]
pub struct Bulkhead {
    name: &'static str,
    slots: Arc<Semaphore>,
    limit: usize,
    max_wait: Duration,
}

impl Bulkhead {
    pub fn new(name: &'static str, limit: usize, max_wait: Duration) -> Self {
        Self {
            name,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            max_wait,
        }
    }

    /// Runs `call` in a slot, or fails with `Full` after the bounded wait.
    pub async fn run<T, E, F>(&self, call: F) -> Result<T, GuardError<E>>
    where
        F: Future<Output = Result<T, GuardError<E>>>,
    {
        let started = std::time::Instant::now();
        let permit =
            match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    metrics::get().record_bulkhead_wait(self.name, started.elapsed(), true);
                    return Err(GuardError::Full);
                }
            };
        metrics::get().record_bulkhead_wait(self.name, started.elapsed(), false);
        let in_use = (self.limit - self.slots.available_permits()) as i64;
        metrics::get().set_bulkhead_in_flight(self.name, in_use);
        let result = call.await;
        drop(permit);
        metrics::get().set_bulkhead_in_flight(
            self.name,
            (self.limit - self.slots.available_permits()) as i64,
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures_to_open: 2,
            open_for: Duration::from_secs(1),
            max_open: Duration::from_secs(1),
            trial_calls: 1,
            call_timeout: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let breaker = Breaker::new("test", settings());
        for _ in 0..2 {
            let r: Result<(), _> = breaker.call(async { Err::<(), &str>("down") }).await;
            assert!(matches!(r, Err(GuardError::Failed(_))));
        }
        assert_eq!(breaker.state(), OPEN);
        let r = breaker.call(async { Ok::<_, &str>(1) }).await;
        assert!(
            matches!(r, Err(GuardError::Open)),
            "open breaker must not call"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(breaker.call(async { Ok::<_, &str>(7) }).await.unwrap(), 7);
        assert_eq!(breaker.state(), CLOSED);
    }

    #[tokio::test]
    async fn a_timeout_counts_as_a_failure() {
        let breaker = Breaker::new("test", settings());
        for _ in 0..2 {
            let r = breaker
                .call(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, &str>(())
                })
                .await;
            assert!(matches!(r, Err(GuardError::Timeout(_))));
        }
        assert_eq!(breaker.state(), OPEN);
    }

    #[tokio::test]
    async fn half_open_lets_only_the_trial_limit_through() {
        let breaker = Breaker::new("test", settings());
        for _ in 0..2 {
            let _ = breaker.call(async { Err::<(), &str>("down") }).await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let slow = breaker.call(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, &str>("trial")
        });
        let second = async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            breaker.call(async { Ok::<_, &str>("second") }).await
        };
        let (first, second) = tokio::join!(slow, second);
        assert_eq!(first.unwrap(), "trial");
        assert!(
            matches!(second, Err(GuardError::Open)),
            "only one trial at a time"
        );
    }

    #[tokio::test]
    async fn bulkhead_never_runs_more_than_its_limit() {
        let bulkhead = Bulkhead::new("test", 3, Duration::from_secs(5));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = (0..20).map(|_| {
            let (running, peak, bulkhead) = (running.clone(), peak.clone(), bulkhead.clone());
            async move {
                bulkhead
                    .run(async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, GuardError<()>>(())
                    })
                    .await
            }
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn bulkhead_wait_is_bounded() {
        let bulkhead = Bulkhead::new("test", 1, Duration::from_millis(10));
        let hold = bulkhead.run(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, GuardError<()>>(())
        });
        let late = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            bulkhead.run(async { Ok::<_, GuardError<()>>(()) }).await
        };
        let (held, late) = tokio::join!(hold, late);
        assert!(held.is_ok());
        assert!(matches!(late, Err(GuardError::Full)));
    }
}
