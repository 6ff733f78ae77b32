//! Top products: the ranked list, its snapshot, and the query that asks for it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Invalid;

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
}
