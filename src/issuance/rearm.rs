//! Re-arming the campaigns Redis lost, run by every instance: once at start-up,
//! and again as soon as a claim finds its live campaign missing from Redis (a
//! restart without persistence, a failover to a replica that had not synced), so
//! issuance comes back in seconds instead of at the next scheduled reconcile pass.
//! Claims ask through [`Requests::ask`]; the one task of [`run`] answers them a pass
//! at a time, at most one pass per [`SPACING`], so a burst of refused claims costs
//! one re-arm. A pass is [`IssuanceService::arm_live_campaigns`]: it waits for the
//! persister gate and never hands given-away stock out again, and it is safe beside
//! another instance's pass (holders are restored before the counter, and arming an
//! armed campaign changes nothing).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::IssuanceService;

/// The shortest time between two passes asked for by claims.
pub const SPACING: Duration = Duration::from_secs(1);

/// First and longest wait before a failed pass is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Claims' requests for a pass; requests made while a pass runs add up to one more.
#[derive(Clone, Default)]
pub struct Requests(Arc<Notify>);

impl Requests {
    /// Asks for a pass; returns at once.
    pub fn ask(&self) {
        self.0.notify_one();
    }

    async fn asked(&self) {
        self.0.notified().await;
    }
}

/// Re-arms at start-up, then whenever a claim asks, until `shutdown`.
pub async fn run(issuance: IssuanceService, shutdown: CancellationToken) {
    let requests = issuance.rearm_requests();
    let mut reason = "start-up";
    loop {
        if !arm_until_done(&issuance, reason, &shutdown).await {
            return;
        }
        reason = "a claim found its campaign missing from Redis";
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SPACING) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = requests.asked() => {}
        }
    }
}

/// One pass, tried again with a growing wait until Redis, MySQL and the persister
/// gate let it finish. False if `shutdown` cut it short.
async fn arm_until_done(
    issuance: &IssuanceService,
    reason: &str,
    shutdown: &CancellationToken,
) -> bool {
    let mut wait = RETRY_FIRST;
    loop {
        let armed = tokio::select! {
            _ = shutdown.cancelled() => return false,
            armed = issuance.arm_live_campaigns() => armed,
        };
        match armed {
            Ok(0) => return true,
            Ok(armed) => {
                tracing::warn!(armed, reason, "re-armed campaigns from MySQL");
                return true;
            }
            Err(err) => tracing::warn!(error = %err, reason, "re-arm failed, retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}
