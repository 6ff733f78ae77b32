//! Validated domain types: shopper and campaign identifiers, coupon codes, new
//! campaigns, the coupon-issued event. No I/O lives here; everything is plain data
//! and the rules that make it valid.

use chrono::{DateTime, Datelike, Utc};
use rand::RngCore;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A rule broken by input from outside: names the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The shopper, as named by the trusted gateway (`X-User-Id`) or a JWT `sub`:
/// 1 to 64 characters of `A-Z a-z 0-9 _ - . : @`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(Invalid::new("X-User-Id", "must be 1 to 64 characters long"));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@')))
        {
            return Err(Invalid::new(
                "X-User-Id",
                format!("character {bad:?} is not allowed (use A-Z a-z 0-9 _ - . : @)"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `Idempotency-Key` of a campaign create: 1 to 64 visible ASCII characters
/// (a UUID, say), chosen by the client once per campaign it means to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() || raw.len() > 64 {
            return Err(Invalid::new(
                "Idempotency-Key",
                format!("must be 1 to 64 characters long, got {}", raw.len()),
            ));
        }
        if let Some(bad) = raw.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(Invalid::new(
                "Idempotency-Key",
                format!("character {bad:?} is not allowed (visible ASCII only)"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Campaign ids are positive integers assigned by MySQL.
pub type CampaignId = i64;

/// Parses a campaign id from a path segment.
pub fn parse_campaign_id(raw: &str) -> Result<CampaignId, Invalid> {
    match raw.parse::<CampaignId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Invalid::new(
            "id",
            format!("campaign id must be a positive integer, got {raw:?}"),
        )),
    }
}

/// Alphabet of coupon codes: Crockford base32 (no I, L, O, U: nothing to misread).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A fresh coupon code: 16 symbols of 5 random bits each (80 bits) from rand's
/// thread-local CSPRNG (ChaCha, seeded and reseeded from the operating system), so
/// codes can be neither guessed nor enumerated, without a system call per code.
/// MySQL's unique index on `coupon_code` is the backstop for the 2^-80 collision.
pub fn new_coupon_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| CODE_ALPHABET[(b & 0x1f) as usize] as char)
        .collect()
}

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
const STORED_YEARS: std::ops::RangeInclusive<i32> = 2000..=9999;

/// "must lie between the years 2000 and 9999".
fn stored_years_rule() -> String {
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

/// A coupon handed to a shopper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Coupon {
    pub coupon_code: String,
    pub campaign_id: CampaignId,
    pub user_id: String,
    /// 1 for the first coupon of the campaign, up to its stock.
    pub sequence: i64,
    pub issued_at: DateTime<Utc>,
}

/// Why a campaign does not issue right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOpenReason {
    Scheduled,
    Ended,
    Paused,
}

impl NotOpenReason {
    pub fn describe(self) -> &'static str {
        match self {
            NotOpenReason::Scheduled => "the campaign has not started yet",
            NotOpenReason::Ended => "the campaign has ended",
            NotOpenReason::Paused => "the campaign is paused",
        }
    }
}

/// The answer of one issuance attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued(Coupon),
    AlreadyIssued(Coupon),
    SoldOut,
    NotOpen(NotOpenReason),
    /// Redis holds nothing for this campaign: unknown, or lost and not yet re-armed.
    NotArmed,
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
        if event.event_id.is_empty() || event.event_id.len() > 64 {
            return Err("event_id must be 1 to 64 characters".into());
        }
        UserId::parse(&event.user_id).map_err(|e| e.to_string())?;
        if event.campaign_id <= 0 || event.sequence <= 0 {
            return Err("campaign_id and sequence must be positive".into());
        }
        if event.coupon_code.is_empty() || event.coupon_code.len() > 32 {
            return Err("coupon_code must be 1 to 32 characters".into());
        }
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
        if event.event_id.is_empty() || event.event_id.len() > 64 {
            return Err("event_id must be 1 to 64 characters".into());
        }
        if event.order_id.is_empty() || event.order_id.len() > 64 {
            return Err("order_id must be 1 to 64 characters".into());
        }
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

/// One ranked product of the top-products list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopProduct {
    pub rank: u32,
    pub product_id: i64,
    pub name: String,
    #[schema(value_type = String, example = "19.99")]
    pub price: Decimal,
    pub sold: i64,
}

/// The top products over the last `window_days` days (UTC), as computed at `generated_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopSnapshot {
    pub window_days: u32,
    pub generated_at: DateTime<Utc>,
    pub products: Vec<TopProduct>,
}

/// Most products a snapshot holds (and the largest `limit`).
pub const TOP_MAX_LIMIT: u32 = 100;
/// Longest window (`days`).
pub const TOP_MAX_DAYS: u32 = 30;

/// Checks `limit` (1..=100, default 5) and `days` (1..=30, default 3) as given in a query.
pub fn parse_top_query(limit: Option<&str>, days: Option<&str>) -> Result<(u32, u32), Invalid> {
    let parse = |raw: Option<&str>, name: &'static str, default: u32, max: u32| match raw {
        None => Ok(default),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Invalid::new(
                name,
                format!("must be an integer from 1 to {max}, got {text:?}"),
            )),
        },
    };
    Ok((
        parse(limit, "limit", 5, TOP_MAX_LIMIT)?,
        parse(days, "days", 3, TOP_MAX_DAYS)?,
    ))
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
    fn user_id_accepts_the_gateway_alphabet_and_rejects_the_rest() {
        assert!(UserId::parse("alice@example.com:42_x-y").is_ok());
        assert_eq!(UserId::parse("").unwrap_err().field, "X-User-Id");
        assert!(UserId::parse(&"a".repeat(64)).is_ok());
        assert!(UserId::parse(&"a".repeat(65)).is_err());
        assert!(UserId::parse("bob smith").is_err());
        assert!(UserId::parse("é").is_err());
    }

    #[test]
    fn idempotency_key_is_one_to_sixty_four_visible_ascii_characters() {
        assert!(IdempotencyKey::parse("7f9c2ba4-e88f-11ee-9d2a-0242ac120002").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(64)).is_ok());
        for bad in ["", &"k".repeat(65), "two words", "tab\t", "clé"] {
            let err = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(err.field, "Idempotency-Key", "{bad:?}");
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
    fn campaign_id_must_be_a_positive_integer() {
        assert_eq!(parse_campaign_id("42"), Ok(42));
        assert!(parse_campaign_id("0").is_err());
        assert!(parse_campaign_id("-1").is_err());
        assert!(parse_campaign_id("abc").is_err());
    }

    #[test]
    fn coupon_codes_are_sixteen_symbols_and_differ() {
        let a = new_coupon_code();
        let b = new_coupon_code();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| CODE_ALPHABET.contains(&c)));
        assert_ne!(a, b);
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

    #[test]
    fn top_query_defaults_and_bounds_name_the_parameter() {
        assert_eq!(parse_top_query(None, None), Ok((5, 3)));
        assert_eq!(parse_top_query(Some("100"), Some("30")), Ok((100, 30)));
        assert_eq!(parse_top_query(Some("0"), None).unwrap_err().field, "limit");
        assert_eq!(
            parse_top_query(Some("1000"), None).unwrap_err().field,
            "limit"
        );
        assert_eq!(
            parse_top_query(None, Some("abc")).unwrap_err().field,
            "days"
        );
        assert_eq!(parse_top_query(None, Some("31")).unwrap_err().field, "days");
    }

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
