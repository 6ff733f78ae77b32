//! Identifiers: the shopper ([`UserId`]), the `Idempotency-Key` of a campaign
//! create, and campaign ids.

use serde::{Deserialize, Serialize};

use super::Invalid;

/// The shopper, as named by the trusted gateway (`X-User-Id`) or a JWT `sub`:
/// 1 to 64 characters of `A-Z a-z 0-9 _ - . : @`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let gateway =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@');
        short_token("X-User-Id", raw, gateway, "use A-Z a-z 0-9 _ - . : @").map(Self)
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
        short_token(
            "Idempotency-Key",
            raw,
            |c| c.is_ascii_graphic(),
            "visible ASCII only",
        )
        .map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rule both identifiers share: 1 to 64 characters, each one `allowed`; the
/// error names `field` and, for a bad character, says which are (`alphabet`).
fn short_token(
    field: &'static str,
    raw: &str,
    allowed: impl Fn(char) -> bool,
    alphabet: &str,
) -> Result<String, Invalid> {
    if raw.is_empty() || raw.len() > 64 {
        return Err(Invalid::new(
            field,
            format!("must be 1 to 64 characters long, got {}", raw.len()),
        ));
    }
    if let Some(bad) = raw.chars().find(|c| !allowed(*c)) {
        return Err(Invalid::new(
            field,
            format!("character {bad:?} is not allowed ({alphabet})"),
        ));
    }
    Ok(raw.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn campaign_id_must_be_a_positive_integer() {
        assert_eq!(parse_campaign_id("42"), Ok(42));
        assert!(parse_campaign_id("0").is_err());
        assert!(parse_campaign_id("-1").is_err());
        assert!(parse_campaign_id("abc").is_err());
    }
}
