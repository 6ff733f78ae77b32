//! Rate limits of the shopper API: a token bucket (governor, GCRA) per shopper and
//! one per client address, so a script hammering "get coupon" is slowed down and
//! cannot crowd out everyone else. Over the limit: 429 `rate-limited` with
//! Retry-After. Buckets of idle keys are dropped every minute, so memory is bounded
//! by the keys active in the last minute.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use super::ApiError;
use crate::config::LimitSettings;
use crate::domain::UserId;

#[derive(Clone)]
pub struct RateLimits {
    inner: Option<Arc<Buckets>>,
}

struct Buckets {
    shoppers: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    trust_forwarded_for: bool,
}

fn quota(per_sec: u32, burst: u32, name: &str) -> anyhow::Result<Quota> {
    let per_sec = NonZeroU32::new(per_sec)
        .ok_or_else(|| anyhow::anyhow!("limits.{name}_per_sec must be at least 1 (got 0)"))?;
    let burst = NonZeroU32::new(burst.max(per_sec.get())).expect("non-zero");
    Ok(Quota::per_second(per_sec).allow_burst(burst))
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> anyhow::Result<Self> {
        if !settings.enabled {
            return Ok(Self { inner: None });
        }
        Ok(Self {
            inner: Some(Arc::new(Buckets {
                shoppers: DefaultKeyedRateLimiter::keyed(quota(
                    settings.per_shopper_per_sec,
                    settings.shopper_burst,
                    "per_shopper",
                )?),
                addresses: DefaultKeyedRateLimiter::keyed(quota(
                    settings.per_address_per_sec,
                    settings.address_burst,
                    "per_address",
                )?),
                trust_forwarded_for: settings.trust_forwarded_for,
            })),
        })
    }

    /// Takes one token for the client address and, when known, the shopper.
    pub fn check(&self, req: &HttpRequest, shopper: Option<&UserId>) -> Result<(), ApiError> {
        let Some(buckets) = &self.inner else {
            return Ok(());
        };
        let now = DefaultClock::default().now();
        if let Some(address) = buckets.client_address(req) {
            if let Err(not_until) = buckets.addresses.check_key(&address) {
                return Err(ApiError::RateLimited {
                    scope: "client address",
                    retry_after: retry_after_secs(not_until.wait_time_from(now)),
                });
            }
        }
        if let Some(shopper) = shopper {
            if let Err(not_until) = buckets.shoppers.check_key(&shopper.as_str().to_owned()) {
                return Err(ApiError::RateLimited {
                    scope: "shopper",
                    retry_after: retry_after_secs(not_until.wait_time_from(now)),
                });
            }
        }
        Ok(())
    }

    /// Drops the buckets of keys idle for a while, every minute, until shutdown.
    pub async fn run_housekeeping(self, shutdown: CancellationToken) {
        let Some(buckets) = self.inner else { return };
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            buckets.shoppers.retain_recent();
            buckets.addresses.retain_recent();
            buckets.shoppers.shrink_to_fit();
            buckets.addresses.shrink_to_fit();
        }
    }
}

impl Buckets {
    fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            if let Some(forwarded) = address_added_by_proxy(req) {
                return Some(forwarded);
            }
        }
        req.peer_addr().map(|a| a.ip())
    }
}

/// The last `X-Forwarded-For` entry: the address our trusted proxy saw and appended.
/// Entries before it are whatever the client sent, so a script that made one up per
/// request would otherwise get a fresh bucket each time.
fn address_added_by_proxy(req: &HttpRequest) -> Option<IpAddr> {
    req.headers()
        .get_all(actix_web::http::header::X_FORWARDED_FOR)
        .last()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
}

/// Whole seconds for Retry-After, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn the_forwarded_address_is_the_one_the_proxy_appended() {
        // The address taken from requests with these X-Forwarded-For header lines.
        let taken = |lines: &[&str]| {
            let mut request = actix_web::test::TestRequest::default();
            for line in lines {
                request = request.append_header((actix_web::http::header::X_FORWARDED_FOR, *line));
            }
            address_added_by_proxy(&request.to_http_request()).map(|a| a.to_string())
        };
        let made_up_by_client = "203.0.113.7";
        assert_eq!(
            taken(&[&format!("{made_up_by_client}, 198.51.100.2")]).as_deref(),
            Some("198.51.100.2")
        );
        assert_eq!(
            taken(&[made_up_by_client, "198.51.100.3"]).as_deref(),
            Some("198.51.100.3")
        );
        assert_eq!(taken(&["not-an-address"]), None);
        assert_eq!(taken(&[]), None);
    }

    #[test]
    fn a_zero_rate_is_refused_with_its_name() {
        let err = quota(0, 5, "per_shopper").unwrap_err().to_string();
        assert!(err.contains("limits.per_shopper_per_sec"), "{err}");
    }
}
