//! The scenarios as [`Workload`]s: what request `k` is (a claim, a top-products read
//! or a plain GET), sending it, and recording its answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use tokio::time::Instant;

use crate::flash::{classify, ClaimPlan, Ledger};
use crate::http::{HttpClient, SendError};
use crate::model::Workload;
use crate::report::{Outcome, Recorder};

/// Operation names, as in the table and `summary.json`.
pub const CLAIM: &str = "claim";
pub const TOP_PRODUCTS: &str = "top-products";
pub const GET: &str = "get";

/// What request `k` of a mixed run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Claim(u64),
    Read,
}

/// Request `k` of a mixed run with `ratio` reads: reads and claims interleave evenly
/// (k is a read when ⌊(k+1)·ratio⌋ > ⌊k·ratio⌋); claim number `k − ⌊k·ratio⌋`, and once
/// all `claims` are sent every request is a read.
pub fn mixed_step(k: u64, ratio: f64, claims: u64) -> Step {
    let reads_before = (k as f64 * ratio).floor();
    let reads_through = ((k + 1) as f64 * ratio).floor();
    if reads_through > reads_before {
        return Step::Read;
    }
    let claim = k - reads_before as u64;
    if claim < claims {
        Step::Claim(claim)
    } else {
        Step::Read
    }
}

/// The claims of a flash or mixed run.
pub struct Claims {
    pub uri: Uri,
    pub plan: ClaimPlan,
    pub ledger: Arc<Ledger>,
}

/// One scenario, ready to drive.
pub struct Scenario {
    client: HttpClient,
    recorder: Arc<Recorder>,
    kind: Kind,
}

enum Kind {
    Flash(Claims),
    Reads {
        uri: Uri,
        op: &'static str,
    },
    Mixed {
        claims: Claims,
        read: Uri,
        ratio: f64,
    },
}

impl Scenario {
    pub fn flash(client: HttpClient, recorder: Arc<Recorder>, claims: Claims) -> Self {
        Scenario {
            client,
            recorder,
            kind: Kind::Flash(claims),
        }
    }

    pub fn reads(client: HttpClient, recorder: Arc<Recorder>, uri: Uri, op: &'static str) -> Self {
        Scenario {
            client,
            recorder,
            kind: Kind::Reads { uri, op },
        }
    }

    pub fn mixed(
        client: HttpClient,
        recorder: Arc<Recorder>,
        claims: Claims,
        read: Uri,
        ratio: f64,
    ) -> Self {
        Scenario {
            client,
            recorder,
            kind: Kind::Mixed {
                claims,
                read,
                ratio,
            },
        }
    }

    async fn claim(&self, claims: &Claims, c: u64, intended: Instant) {
        let shopper = claims.plan.shopper(c);
        let user = claims.plan.user_id(shopper);
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = claims.uri.clone();
        let headers = request.headers_mut();
        if let Ok(v) = HeaderValue::try_from(user) {
            headers.insert("x-user-id", v);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (outcome, code) = match self.client.send(request).await {
            Ok((status, body)) => classify(status.as_u16(), &body),
            Err(e) => (self.failure(e), None),
        };
        let done = Instant::now();
        claims.ledger.note(shopper, outcome, code);
        self.recorder.record(CLAIM, outcome, intended, done);
    }

    async fn read(&self, uri: &Uri, op: &'static str, intended: Instant) {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        let outcome = match self.client.send(request).await {
            Ok((status, _)) => match status.as_u16() {
                429 => Outcome::RateLimited,
                503 => Outcome::Unavailable,
                code => Outcome::Status(code),
            },
            Err(e) => self.failure(e),
        };
        self.recorder.record(op, outcome, intended, Instant::now());
    }

    fn failure(&self, e: SendError) -> Outcome {
        match e {
            SendError::Timeout => Outcome::Timeout,
            SendError::Transport(message) => {
                self.recorder.first_error(message);
                Outcome::Transport
            }
        }
    }
}

impl Workload for Scenario {
    fn total(&self) -> Option<u64> {
        match &self.kind {
            Kind::Flash(claims) => Some(claims.plan.total()),
            Kind::Reads { .. } | Kind::Mixed { .. } => None,
        }
    }

    async fn call(&self, k: u64, intended: Instant) {
        match &self.kind {
            Kind::Flash(claims) => self.claim(claims, k, intended).await,
            Kind::Reads { uri, op } => self.read(uri, op, intended).await,
            Kind::Mixed {
                claims,
                read,
                ratio,
            } => match mixed_step(k, *ratio, claims.plan.total()) {
                Step::Claim(c) => self.claim(claims, c, intended).await,
                Step::Read => self.read(read, TOP_PRODUCTS, intended).await,
            },
        }
    }

    fn dropped(&self, _k: u64) {
        self.recorder.dropped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_runs_interleave_reads_and_claims_at_the_ratio() {
        let steps: Vec<Step> = (0..10).map(|k| mixed_step(k, 0.8, 100)).collect();
        let claims: Vec<u64> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Claim(c) => Some(*c),
                Step::Read => None,
            })
            .collect();
        assert_eq!(claims, vec![0, 1]);
        let reads = (0..10_000)
            .filter(|k| mixed_step(*k, 0.8, u64::MAX) == Step::Read)
            .count();
        assert!((7_999..=8_001).contains(&reads), "{reads}");
    }

    #[test]
    fn every_claim_is_sent_once_then_only_reads() {
        let mut seen = Vec::new();
        for k in 0..1_000 {
            if let Step::Claim(c) = mixed_step(k, 0.37, 50) {
                seen.push(c);
            }
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(mixed_step(0, 0.0, 1), Step::Claim(0));
        assert_eq!(mixed_step(1, 0.0, 1), Step::Read);
        assert_eq!(mixed_step(0, 1.0, 1), Step::Read);
    }
}
