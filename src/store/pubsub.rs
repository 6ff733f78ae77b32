//! Pub/sub between instances: what one instance learns that every other one should
//! know at once. Two channels, one subscriber connection per process:
//! - `<prefix>top:invalidate`: the refresher wrote new top-products snapshots, so
//!   every L1 cache drops its copies;
//! - `<prefix>campaign:sold_out`: a campaign sold out (payload: its id), so every
//!   instance answers 410 for it without asking Redis again.
//!
//! The subscriber follows the primary (Sentinel) and reconnects with backoff; after a
//! reconnect it reports [`Notice::Resubscribed`], because whatever was published
//! while it was away is unknown.

use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::{RedisStore, StoreError};
use crate::config::RedisSettings;
use crate::domain::CampaignId;

/// What another instance (or this one) announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// (Re)subscribed: anything published meanwhile was missed.
    Resubscribed,
    /// New top-products snapshots are in Redis.
    TopProductsChanged,
    /// This campaign has no stock left.
    SoldOut(CampaignId),
}

fn top_channel(prefix: &str) -> String {
    format!("{prefix}top:invalidate")
}

fn sold_out_channel(prefix: &str) -> String {
    format!("{prefix}campaign:sold_out")
}

/// The notice a message on `channel` carries; None for a payload that does not parse.
fn notice_of(prefix: &str, channel: &str, payload: &str) -> Option<Notice> {
    if channel == top_channel(prefix) {
        Some(Notice::TopProductsChanged)
    } else if channel == sold_out_channel(prefix) {
        payload.parse().ok().map(Notice::SoldOut)
    } else {
        None
    }
}

impl RedisStore {
    /// Tells every instance to drop its top-products L1 copies.
    pub async fn publish_top_changed(&self) -> Result<(), StoreError> {
        self.publish(top_channel(&self.prefix), "refresh".to_owned())
            .await
    }

    /// Tells every instance that `id` sold out.
    pub async fn publish_sold_out(&self, id: CampaignId) -> Result<(), StoreError> {
        self.publish(sold_out_channel(&self.prefix), id.to_string())
            .await
    }

    async fn publish(&self, channel: String, payload: String) -> Result<(), StoreError> {
        self.run("publish", |mut c| async move {
            c.publish::<_, _, i64>(channel, payload).await
        })
        .await
        .map(|_| ())
    }
}

/// Calls `on_notice` for every notice any instance publishes, until `shutdown`.
/// Reconnects (and resubscribes) with backoff when Redis goes away.
pub async fn subscribe<F>(settings: RedisSettings, on_notice: F, shutdown: CancellationToken)
where
    F: Fn(Notice) + Send + 'static,
{
    let prefix = settings.key_prefix.clone();
    let channels = [top_channel(&prefix), sold_out_channel(&prefix)];
    let mut wait = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let connected = async {
            let client = super::pool::primary_client(&settings).await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channels).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(settings.timeout() * 3, connected).await {
            Ok(Ok(mut pubsub)) => {
                wait = Duration::from_millis(100);
                tracing::info!(?channels, "subscribed to instance notices");
                on_notice(Notice::Resubscribed);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        message = messages.next() => match message {
                            Some(message) => {
                                let payload: String = message.get_payload().unwrap_or_default();
                                match notice_of(&prefix, message.get_channel_name(), &payload) {
                                    Some(notice) => on_notice(notice),
                                    None => tracing::warn!(channel = message.get_channel_name(), %payload, "ignored a notice that does not parse"),
                                }
                            }
                            None => break,
                        },
                    }
                }
                tracing::warn!("notice subscription lost, reconnecting");
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "cannot subscribe to notices yet"),
            Err(_) => tracing::debug!("subscribing to notices timed out"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_map_to_notices_by_channel_and_bad_payloads_are_dropped() {
        assert_eq!(
            notice_of("p:", "p:top:invalidate", "refresh"),
            Some(Notice::TopProductsChanged)
        );
        assert_eq!(
            notice_of("p:", "p:campaign:sold_out", "42"),
            Some(Notice::SoldOut(42))
        );
        assert_eq!(notice_of("p:", "p:campaign:sold_out", "x"), None);
        assert_eq!(notice_of("p:", "q:campaign:sold_out", "42"), None);
    }
}
