//! The Kafka event contracts (see DESIGN.md): `coupon.issued.v1`, which this
//! service produces and persists, and `order.paid.v1`, which feeds top products.

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use super::campaign::{stored_years_rule, STORED_YEARS};
use super::{CampaignId, Coupon, UserId};

/// Checks a text field of an event: 1 to `max` bytes long.
fn text_field(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{field} must be 1 to {max} characters"));
    }
    Ok(())
}

/// Topic payload of `coupon.issued.v1` (contract, see DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponIssuedEvent {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub campaign_id: CampaignId,
    pub user_id: String,
    pub coupon_code: String,
    pub sequence: i64,
}

impl CouponIssuedEvent {
    pub const EVENT_TYPE: &'static str = "coupon.issued";
    pub const SCHEMA_VERSION: u32 = 1;

    /// Parses and checks a payload; the error says what is wrong, for the DLT header.
    pub fn from_json(payload: &[u8]) -> Result<Self, String> {
        let event: Self =
            serde_json::from_slice(payload).map_err(|e| format!("malformed JSON: {e}"))?;
        if event.event_type != Self::EVENT_TYPE {
            return Err(format!("unexpected event_type {:?}", event.event_type));
        }
        if event.schema_version != Self::SCHEMA_VERSION {
            return Err(format!(
                "unsupported schema_version {}",
                event.schema_version
            ));
        }
        text_field("event_id", &event.event_id, 64)?;
        UserId::parse(&event.user_id).map_err(|e| e.to_string())?;
        if event.campaign_id <= 0 || event.sequence <= 0 {
            return Err("campaign_id and sequence must be positive".into());
        }
        text_field("coupon_code", &event.coupon_code, 32)?;
        Ok(event)
    }

    pub fn coupon(&self) -> Coupon {
        Coupon {
            coupon_code: self.coupon_code.clone(),
            campaign_id: self.campaign_id,
            user_id: self.user_id.clone(),
            sequence: self.sequence,
            issued_at: self.occurred_at,
        }
    }
}

/// One line of an order (contract: `order.paid.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: i64,
    pub quantity: i64,
}

/// Topic payload of `order.paid.v1` (contract, see DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaidEvent {
    pub event_id: String,
    pub order_id: String,
    pub paid_at: DateTime<Utc>,
    pub items: Vec<OrderItem>,
}

impl OrderPaidEvent {
    /// Parses and checks a payload; the error says what is wrong, for the DLT header.
    pub fn from_json(payload: &[u8]) -> Result<Self, String> {
        let event: Self =
            serde_json::from_slice(payload).map_err(|e| format!("malformed JSON: {e}"))?;
        text_field("event_id", &event.event_id, 64)?;
        text_field("order_id", &event.order_id, 64)?;
        if !STORED_YEARS.contains(&event.paid_at.year()) {
            return Err(format!("paid_at {} {}", event.paid_at, stored_years_rule()));
        }
        if event.items.is_empty() || event.items.len() > 1000 {
            return Err("items must hold 1 to 1000 lines".into());
        }
        if let Some(bad) = event
            .items
            .iter()
            .find(|i| i.product_id <= 0 || i.quantity <= 0 || i.quantity > 1_000_000)
        {
            return Err(format!(
                "item of product {} has quantity {}: both must be positive (quantity at most 1000000)",
                bad.product_id, bad.quantity
            ));
        }
        Ok(event)
    }
}

/// The retry topic of `topic`: events whose handling failed for now wait there for
/// their next attempt.
pub fn retry_topic_of(topic: &str) -> String {
    format!("{topic}.retry")
}

/// The dead-letter topic of `topic`: events that cannot be handled, kept for a look
/// and a replay.
pub fn dlt_topic_of(topic: &str) -> String {
    format!("{topic}.dlt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_events_need_positive_lines() {
        let ok = br#"{"event_id":"e","order_id":"o","paid_at":"2026-11-22T10:00:00Z","items":[{"product_id":1,"quantity":2}]}"#;
        assert!(OrderPaidEvent::from_json(ok).is_ok());
        let zero = br#"{"event_id":"e","order_id":"o","paid_at":"2026-11-22T10:00:00Z","items":[{"product_id":1,"quantity":0}]}"#;
        assert!(OrderPaidEvent::from_json(zero)
            .unwrap_err()
            .contains("quantity"));
        let none =
            br#"{"event_id":"e","order_id":"o","paid_at":"2026-11-22T10:00:00Z","items":[]}"#;
        assert!(OrderPaidEvent::from_json(none).is_err());
        let far = br#"{"event_id":"e","order_id":"o","paid_at":"0999-01-01T00:00:00Z","items":[{"product_id":1,"quantity":2}]}"#;
        assert!(OrderPaidEvent::from_json(far)
            .unwrap_err()
            .contains("paid_at"));
        let late = br#"{"event_id":"e","order_id":"o","paid_at":"2040-01-01T00:00:00Z","items":[{"product_id":1,"quantity":2}]}"#;
        assert!(OrderPaidEvent::from_json(late).is_ok());
    }

    #[test]
    fn event_parsing_names_what_is_wrong() {
        let ok = serde_json::json!({
            "event_id": "e1", "event_type": "coupon.issued", "schema_version": 1,
            "occurred_at": "2026-11-22T10:00:00Z", "campaign_id": 3, "user_id": "u1",
            "coupon_code": "ABC", "sequence": 1
        });
        assert!(CouponIssuedEvent::from_json(ok.to_string().as_bytes()).is_ok());
        assert!(CouponIssuedEvent::from_json(b"{not json")
            .unwrap_err()
            .starts_with("malformed JSON"));
        let mut wrong = ok.clone();
        wrong["schema_version"] = 2.into();
        assert!(CouponIssuedEvent::from_json(wrong.to_string().as_bytes())
            .unwrap_err()
            .contains("schema_version"));
    }
}
