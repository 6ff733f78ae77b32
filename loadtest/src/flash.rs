//! The flash claim workload: which shopper sends claim `c`, how an answer is read
//! (status and problem `type`), and the [`Ledger`] of what every shopper was told,
//! which the checks in `verify.rs` compare with the service and MySQL.

use std::sync::Mutex;

use serde::Deserialize;

use crate::report::Outcome;

/// The claims of a run: `shoppers` shoppers, `per_shopper` claims each, round-robin
/// (claim `c` is shopper `c mod shoppers`, so every first claim precedes any second).
#[derive(Debug, Clone)]
pub struct ClaimPlan {
    pub prefix: String,
    pub shoppers: u64,
    pub per_shopper: u64,
}

impl ClaimPlan {
    pub fn total(&self) -> u64 {
        self.shoppers * self.per_shopper
    }

    pub fn shopper(&self, claim: u64) -> u64 {
        claim % self.shoppers
    }

    pub fn user_id(&self, shopper: u64) -> String {
        format!("{}-{shopper}", self.prefix)
    }

    /// The shopper number of a user id of this run, if it is one.
    pub fn shopper_of(&self, user_id: &str) -> Option<u64> {
        let n = user_id.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        n.parse().ok().filter(|n| *n < self.shoppers)
    }
}

#[derive(Deserialize)]
struct Issued {
    coupon_code: String,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    coupon: Option<Issued>,
    /// Set on the 503 of an instance past `server.max_claims_in_flight`.
    in_flight_limit: Option<u64>,
}

/// Reads a claim's answer: its outcome, and the coupon code it names (201, or the
/// coupon already held with 409 already-issued).
pub fn classify(status: u16, body: &[u8]) -> (Outcome, Option<String>) {
    match status {
        201 => {
            let code = serde_json::from_slice::<Issued>(body)
                .ok()
                .map(|i| i.coupon_code);
            (Outcome::Issued, code)
        }
        409 => match serde_json::from_slice::<Problem>(body) {
            Ok(p) if p.kind == "already-issued" => {
                (Outcome::AlreadyIssued, p.coupon.map(|c| c.coupon_code))
            }
            Ok(p) if p.kind == "campaign-not-open" => (Outcome::NotOpen, None),
            _ => (Outcome::Conflict, None),
        },
        410 => (Outcome::SoldOut, None),
        429 => (Outcome::RateLimited, None),
        503 => match serde_json::from_slice::<Problem>(body) {
            Ok(p) if p.in_flight_limit.is_some() => (Outcome::Busy, None),
            _ => (Outcome::Unavailable, None),
        },
        other => (Outcome::Status(other), None),
    }
}

#[derive(Default, Clone)]
struct Slot {
    attempted: bool,
    /// Got an answer that settles whether it holds a coupon (201, already-issued, 410).
    definitive: bool,
    /// Got an answer after which its holding is unknown: an error, a timeout, or a 503
    /// of a failed dependency (the script may have run before the failure).
    uncertain: bool,
    answers_201: u8,
    code_201: Option<Box<str>>,
    /// The code repeated by an already-issued answer.
    held_code: Option<Box<str>>,
}

/// What each shopper of the run was told.
pub struct Ledger {
    slots: Mutex<Vec<Slot>>,
}

/// The ledger's figures at the end of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub attempted: u64,
    /// Shoppers with no definitive answer and at least one error, timeout or
    /// dependency 503: holding unknown.
    pub undecided: u64,
    /// Shoppers turned away by every answer before any stock was touched (429, the
    /// in-flight 503, 409 campaign-not-open): certainly holding nothing.
    pub refused: u64,
    pub holding: u64,
    pub answered_201: u64,
    /// Shoppers who got more than one 201.
    pub shoppers_with_two_201: u64,
    /// A 201 whose body had no readable coupon code.
    pub unreadable_201: u64,
    /// Shoppers whose already-issued answer named another code than their 201.
    pub held_code_mismatches: u64,
    /// (shopper, code) of every 201.
    pub codes_201: Vec<(u64, String)>,
}

impl Ledger {
    /// A ledger that grows with the shoppers reached (a run bounded by --duration may
    /// reach few of very many shoppers).
    pub fn new(shoppers: u64) -> Self {
        let reserve = shoppers.min(1 << 20) as usize;
        Ledger {
            slots: Mutex::new(Vec::with_capacity(reserve)),
        }
    }

    /// Shopper `shopper` sent a claim answered with `outcome` (and `code`).
    pub fn note(&self, shopper: u64, outcome: Outcome, code: Option<String>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let index = shopper as usize;
        if slots.len() <= index {
            slots.resize(index + 1, Slot::default());
        }
        let slot = &mut slots[index];
        slot.attempted = true;
        match outcome {
            Outcome::Issued => {
                slot.definitive = true;
                slot.answers_201 = slot.answers_201.saturating_add(1);
                if slot.code_201.is_none() {
                    slot.code_201 = code.map(String::into_boxed_str);
                }
            }
            Outcome::AlreadyIssued => {
                slot.definitive = true;
                if slot.held_code.is_none() {
                    slot.held_code = code.map(String::into_boxed_str);
                }
            }
            Outcome::SoldOut => slot.definitive = true,
            // Refused before Redis was asked (or by the campaign's state): no coupon.
            Outcome::RateLimited | Outcome::Busy | Outcome::NotOpen => {}
            Outcome::Conflict
            | Outcome::Unavailable
            | Outcome::Status(_)
            | Outcome::Timeout
            | Outcome::Transport => slot.uncertain = true,
        }
    }

    pub fn tally(&self) -> Tally {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = Tally::default();
        for (n, s) in slots.iter().enumerate() {
            if !s.attempted {
                continue;
            }
            t.attempted += 1;
            if !s.definitive {
                if s.uncertain {
                    t.undecided += 1;
                } else {
                    t.refused += 1;
                }
            }
            if s.answers_201 > 0 || s.held_code.is_some() {
                t.holding += 1;
            }
            t.answered_201 += u64::from(s.answers_201);
            if s.answers_201 > 1 {
                t.shoppers_with_two_201 += 1;
            }
            match (&s.code_201, &s.held_code) {
                (Some(a), Some(b)) if a != b => t.held_code_mismatches += 1,
                _ => {}
            }
            if s.answers_201 > 0 {
                match &s.code_201 {
                    Some(code) => t.codes_201.push((n as u64, code.to_string())),
                    None => t.unreadable_201 += 1,
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_go_round_robin_over_the_shoppers() {
        let plan = ClaimPlan {
            prefix: "lt-x".into(),
            shoppers: 3,
            per_shopper: 2,
        };
        assert_eq!(plan.total(), 6);
        let order: Vec<u64> = (0..6).map(|c| plan.shopper(c)).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(plan.user_id(2), "lt-x-2");
        assert_eq!(plan.shopper_of("lt-x-2"), Some(2));
        assert_eq!(plan.shopper_of("lt-x-3"), None);
        assert_eq!(plan.shopper_of("lt-xy-1"), None);
    }

    #[test]
    fn answers_are_read_by_status_and_problem_type() {
        let (o, code) = classify(201, br#"{"coupon_code":"C-1","sequence":1}"#);
        assert_eq!((o, code.as_deref()), (Outcome::Issued, Some("C-1")));
        let (o, code) = classify(
            409,
            br#"{"type":"already-issued","status":409,"coupon":{"coupon_code":"C-1"}}"#,
        );
        assert_eq!((o, code.as_deref()), (Outcome::AlreadyIssued, Some("C-1")));
        assert_eq!(
            classify(409, br#"{"type":"campaign-not-open"}"#).0,
            Outcome::NotOpen
        );
        assert_eq!(classify(409, b"garbage").0, Outcome::Conflict);
        assert_eq!(classify(410, b"").0, Outcome::SoldOut);
        assert_eq!(classify(429, b"").0, Outcome::RateLimited);
        assert_eq!(classify(503, b"").0, Outcome::Unavailable);
        assert_eq!(
            classify(503, br#"{"type":"unavailable","status":503}"#).0,
            Outcome::Unavailable
        );
        assert_eq!(
            classify(503, br#"{"type":"unavailable","in_flight_limit":2048}"#).0,
            Outcome::Busy
        );
        assert_eq!(classify(404, b"").0, Outcome::Status(404));
    }

    #[test]
    fn the_ledger_counts_holders_and_doubles() {
        let ledger = Ledger::new(5);
        ledger.note(0, Outcome::Issued, Some("A".into()));
        ledger.note(0, Outcome::AlreadyIssued, Some("A".into()));
        ledger.note(1, Outcome::Issued, Some("B".into()));
        ledger.note(1, Outcome::Issued, Some("B2".into()));
        ledger.note(2, Outcome::AlreadyIssued, Some("X".into()));
        ledger.note(2, Outcome::Issued, Some("C".into()));
        ledger.note(3, Outcome::Unavailable, None);
        ledger.note(3, Outcome::Busy, None);
        ledger.note(4, Outcome::Busy, None);
        ledger.note(4, Outcome::RateLimited, None);
        ledger.note(4, Outcome::NotOpen, None);
        ledger.note(5, Outcome::Busy, None);
        ledger.note(5, Outcome::SoldOut, None);
        let t = ledger.tally();
        assert_eq!(t.attempted, 6);
        // Shopper 3's 503 of a failed dependency leaves it unknown; the busy answer
        // after it does not settle that.
        assert_eq!(t.undecided, 1);
        // Shopper 4 was only ever refused; shopper 5's 410 is definitive.
        assert_eq!(t.refused, 1);
        assert_eq!(t.holding, 3);
        assert_eq!(t.answered_201, 4);
        assert_eq!(t.shoppers_with_two_201, 1);
        assert_eq!(t.held_code_mismatches, 1);
        assert_eq!(t.codes_201.len(), 3);
    }
}
