//! Campaign rules: what marketing may ask for ([`NewCampaign`], its [`Discount`]),
//! a campaign as stored, and where it stands ([`CampaignStatus`]).

use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{CampaignId, Invalid};

/// What a coupon is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiscountKind {
    Fixed,
    Percent,
}

impl DiscountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscountKind::Fixed => "fixed",
            DiscountKind::Percent => "percent",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "fixed" => Some(DiscountKind::Fixed),
            "percent" => Some(DiscountKind::Percent),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Discount {
    pub kind: DiscountKind,
    /// Amount off (fixed) or percentage off (percent, 0 < value <= 100), at most two
    /// decimal places. Read from a JSON number (`30`) or a string of digits
    /// (`"12.50"`); written as the string.
    #[schema(schema_with = discount_value_schema)]
    #[serde(deserialize_with = "discount_value")]
    pub value: Decimal,
}

/// A discount written as a string: digits, then optionally `.` and digits. No sign,
/// exponent, spaces or `_` (which `Decimal`'s own parser would let through).
const DISCOUNT_TEXT_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?$";

fn is_discount_text(raw: &str) -> bool {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(fraction)
}

/// The OpenAPI schema of `Discount::value`: what [`discount_value`] reads.
fn discount_value_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(DISCOUNT_TEXT_PATTERN))
                    .examples(["30", "12.50"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .exclusive_minimum(Some(0))
                    .maximum(Some(1_000_000)),
            )
            .description(Some(
                "Amount off (fixed, at most 1000000) or percentage off (percent, at most 100), \
             above 0 with at most two decimal places: a number, or a string of digits \
             with an optional fraction. Answers carry the string.",
            ))
            .build(),
    )
}

/// Reads a discount from a JSON number or a string of plain digits, exactly (no
/// binary floating point in between: `0.1` is 0.1).
fn discount_value<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Decimal, D::Error> {
    use serde::de::{Error, Unexpected, Visitor};
    struct Amount;
    impl Visitor<'_> for Amount {
        type Value = Decimal;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number, or a string of digits with an optional fraction like \"12.50\"")
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Decimal, E> {
            // `Display` of an f64 is the shortest text that reads back as it: "0.1".
            Decimal::from_str_exact(&v.to_string()).map_err(|_| {
                // Only a number past `Decimal`'s 28 digits gets here.
                if v.abs() >= 1.0 {
                    E::custom(format!("{v} is too large"))
                } else {
                    E::custom(format!("{v} has more than two decimal places"))
                }
            })
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Decimal, E> {
            if !is_discount_text(v) {
                return Err(E::invalid_value(Unexpected::Str(v), &self));
            }
            Decimal::from_str_exact(v).map_err(|err| E::custom(format!("{v:?}: {err}")))
        }
    }
    input.deserialize_any(Amount)
}

/// The most coupons one campaign may hold: far above any flash event, far below
/// anything that could overflow a counter.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// The years a campaign's window or a sale may lie in: what a real one can have,
/// and what MySQL's DATETIME columns hold.
pub(super) const STORED_YEARS: std::ops::RangeInclusive<i32> = 2000..=9999;

/// "must lie between the years 2000 and 9999".
pub(super) fn stored_years_rule() -> String {
    format!(
        "must lie between the years {} and {}",
        STORED_YEARS.start(),
        STORED_YEARS.end()
    )
}

/// A campaign as marketing asks for it, checked field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCampaign {
    pub name: String,
    pub total_quantity: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub discount: Discount,
    pub coupon_valid_days: i32,
}

impl NewCampaign {
    pub fn validate(self) -> Result<Self, Invalid> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Invalid::new("name", "must be 1 to 200 characters"));
        }
        if self.total_quantity <= 0 || self.total_quantity > MAX_STOCK {
            return Err(Invalid::new(
                "total_quantity",
                format!(
                    "must be between 1 and {MAX_STOCK}, got {}",
                    self.total_quantity
                ),
            ));
        }
        if self.ends_at <= self.starts_at {
            return Err(Invalid::new("ends_at", "must be after starts_at"));
        }
        if self.ends_at <= Utc::now() {
            return Err(Invalid::new("ends_at", "must be in the future"));
        }
        for (field, at) in [("starts_at", self.starts_at), ("ends_at", self.ends_at)] {
            if !STORED_YEARS.contains(&at.year()) {
                return Err(Invalid::new(
                    field,
                    format!("{}, got {}", stored_years_rule(), at.to_rfc3339()),
                ));
            }
        }
        let value = self.discount.value;
        match self.discount.kind {
            DiscountKind::Percent if value <= Decimal::ZERO || value > Decimal::ONE_HUNDRED => {
                return Err(Invalid::new(
                    "discount.value",
                    format!("a percent discount must be above 0 and at most 100, got {value}"),
                ))
            }
            DiscountKind::Fixed if value <= Decimal::ZERO || value > Decimal::from(1_000_000) => {
                return Err(Invalid::new(
                    "discount.value",
                    format!("a fixed discount must be above 0 and at most 1000000, got {value}"),
                ))
            }
            _ => {}
        }
        if value.scale() > 2 {
            return Err(Invalid::new("discount.value", "at most two decimal places"));
        }
        if !(1..=3650).contains(&self.coupon_valid_days) {
            return Err(Invalid::new(
                "coupon_valid_days",
                format!("must be between 1 and 3650, got {}", self.coupon_valid_days),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            ..self
        })
    }

    /// Whether `stored` is this request as written (times to the millisecond MySQL
    /// keeps): a create retried under the same idempotency key must ask for the same.
    pub fn describes(&self, stored: &Campaign) -> bool {
        let same_time =
            |a: DateTime<Utc>, b: DateTime<Utc>| (a - b).abs() < chrono::TimeDelta::milliseconds(1);
        self.name == stored.name
            && self.total_quantity == stored.total_quantity
            && same_time(self.starts_at, stored.starts_at)
            && same_time(self.ends_at, stored.ends_at)
            && self.discount == stored.discount
            && self.coupon_valid_days == stored.coupon_valid_days
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: CampaignId,
    pub name: String,
    pub total_quantity: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub discount: Discount,
    pub coupon_valid_days: i32,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
}

/// Where a campaign stands, as shoppers and marketing see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Scheduled,
    Open,
    Paused,
    SoldOut,
    Ended,
}

impl Campaign {
    /// The status at `now` given how many coupons are issued. Ended wins over
    /// everything, then sold out, then paused, then the window.
    pub fn status(&self, issued: i64, now: DateTime<Utc>) -> CampaignStatus {
        if now >= self.ends_at {
            CampaignStatus::Ended
        } else if issued >= self.total_quantity {
            CampaignStatus::SoldOut
        } else if self.paused {
            CampaignStatus::Paused
        } else if now < self.starts_at {
            CampaignStatus::Scheduled
        } else {
            CampaignStatus::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn campaign() -> NewCampaign {
        let now = Utc::now();
        NewCampaign {
            name: " Flash 10:00 ".into(),
            total_quantity: 10,
            starts_at: now,
            ends_at: now + Duration::hours(1),
            discount: Discount {
                kind: DiscountKind::Percent,
                value: Decimal::from(30),
            },
            coupon_valid_days: 7,
        }
    }

    #[test]
    fn a_retried_create_describes_its_stored_campaign_and_a_changed_one_does_not() {
        let asked = campaign().validate().unwrap();
        // As MySQL gives it back: DATETIME(3), DECIMAL(12,2).
        let millis =
            |t: DateTime<Utc>| DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap();
        let stored = Campaign {
            id: 1,
            name: asked.name.clone(),
            total_quantity: asked.total_quantity,
            starts_at: millis(asked.starts_at),
            ends_at: millis(asked.ends_at),
            discount: Discount {
                kind: DiscountKind::Percent,
                value: Decimal::new(3000, 2),
            },
            coupon_valid_days: asked.coupon_valid_days,
            paused: false,
            created_at: Utc::now(),
        };
        assert!(asked.describes(&stored));
        let more_stock = NewCampaign {
            total_quantity: 11,
            ..asked.clone()
        };
        assert!(!more_stock.describes(&stored));
        let an_hour_later = NewCampaign {
            starts_at: asked.starts_at + Duration::hours(1),
            ..asked
        };
        assert!(!an_hour_later.describes(&stored));
    }

    #[test]
    fn new_campaign_trims_the_name_and_names_the_bad_field() {
        assert_eq!(campaign().validate().unwrap().name, "Flash 10:00");
        let zero = NewCampaign {
            total_quantity: 0,
            ..campaign()
        };
        assert_eq!(zero.validate().unwrap_err().field, "total_quantity");
        let backwards = NewCampaign {
            ends_at: campaign().starts_at - Duration::seconds(1),
            ..campaign()
        };
        assert_eq!(backwards.validate().unwrap_err().field, "ends_at");
        let far_end = NewCampaign {
            ends_at: "+10000-01-01T00:00:00Z".parse().unwrap(),
            ..campaign()
        };
        let err = far_end.validate().unwrap_err();
        assert_eq!(err.field, "ends_at", "{err:?}");
        assert!(err.to_string().contains("+10000-01-01"), "{err}");
        let too_much = NewCampaign {
            discount: Discount {
                kind: DiscountKind::Percent,
                value: Decimal::from(101),
            },
            ..campaign()
        };
        assert_eq!(too_much.validate().unwrap_err().field, "discount.value");
        let days = NewCampaign {
            coupon_valid_days: 0,
            ..campaign()
        };
        assert_eq!(days.validate().unwrap_err().field, "coupon_valid_days");
    }

    #[test]
    fn status_orders_ended_then_sold_out_then_paused_then_window() {
        let now = Utc::now();
        let mut c = Campaign {
            id: 1,
            name: "x".into(),
            total_quantity: 2,
            starts_at: now - Duration::minutes(1),
            ends_at: now + Duration::minutes(1),
            discount: campaign().discount,
            coupon_valid_days: 1,
            paused: false,
            created_at: now,
        };
        assert_eq!(c.status(0, now), CampaignStatus::Open);
        assert_eq!(c.status(2, now), CampaignStatus::SoldOut);
        c.paused = true;
        assert_eq!(c.status(1, now), CampaignStatus::Paused);
        assert_eq!(
            c.status(1, now + Duration::minutes(2)),
            CampaignStatus::Ended
        );
        c.paused = false;
        assert_eq!(
            c.status(0, now - Duration::minutes(5)),
            CampaignStatus::Scheduled
        );
    }

    fn read_discount(value: serde_json::Value) -> Result<Decimal, String> {
        serde_json::from_value::<Discount>(serde_json::json!({"kind": "fixed", "value": value}))
            .map(|d| d.value)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_discount_is_read_exactly_from_a_number_or_plain_digits() {
        use std::str::FromStr;
        let exact = |text: &str| Decimal::from_str(text).unwrap();
        assert_eq!(read_discount(serde_json::json!(30)).unwrap(), exact("30"));
        assert_eq!(read_discount(serde_json::json!(0.1)).unwrap(), exact("0.1"));
        assert_eq!(
            read_discount(serde_json::json!(12.5)).unwrap(),
            exact("12.5")
        );
        assert_eq!(read_discount(serde_json::json!(-5)).unwrap(), exact("-5"));
        assert_eq!(
            read_discount(serde_json::json!("12.50")).unwrap(),
            exact("12.50")
        );
        assert_eq!(read_discount(serde_json::json!("007")).unwrap(), exact("7"));
        // What `Decimal`'s own parser accepts but the documented pattern does not.
        for text in [
            "+5", "-5", "1_000", ".5", "5.", "1e3", " 5", "", "y", "5.0.0",
        ] {
            let err = read_discount(serde_json::json!(text)).unwrap_err();
            assert!(err.contains("string of digits"), "{text:?}: {err}");
        }
        assert!(
            read_discount(serde_json::json!("123456789012345678901234567890"))
                .unwrap_err()
                .contains("123456789012345678901234567890")
        );
        assert!(read_discount(serde_json::json!(1e300))
            .unwrap_err()
            .contains("too large"));
        assert!(read_discount(serde_json::json!(5e-324))
            .unwrap_err()
            .contains("more than two decimal places"));
        assert!(read_discount(serde_json::json!(null)).is_err());
        assert!(read_discount(serde_json::json!([1])).is_err());
        // Written back as the string, which the pattern matches.
        let written = serde_json::to_value(Discount {
            kind: DiscountKind::Fixed,
            value: exact("12.50"),
        })
        .unwrap();
        assert_eq!(written["value"], "12.50");
        assert!(is_discount_text("12.50") && is_discount_text("30"));
    }
}
