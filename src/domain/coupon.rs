//! Coupons: a fresh code, the coupon a shopper holds, and what one attempt to get
//! one answers.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::CampaignId;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coupon_codes_are_sixteen_symbols_and_differ() {
        let a = new_coupon_code();
        let b = new_coupon_code();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| CODE_ALPHABET.contains(&c)));
        assert_ne!(a, b);
    }
}
