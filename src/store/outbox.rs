//! A campaign's outbox: the stream `{c:<id>}:outbox` of issued coupons waiting for
//! Kafka, one field per entry as issue.lua writes it. The relay reads it through the
//! consumer group [`RELAY_GROUP`] (read, claim from a dead relay, acknowledge);
//! reconciliation pages through it and puts coupons back into it.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::{AsyncCommands, Value};

use super::campaign::holder_value;
use super::{RedisStore, StoreError, StoreResult, PAGE};
use crate::domain::{CampaignId, Coupon};

/// Consumer group of the outbox streams.
pub const RELAY_GROUP: &str = "relay";

/// One issued coupon waiting in a campaign's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub stream_id: String,
    pub campaign_id: CampaignId,
    pub event_id: String,
    pub user_id: String,
    pub coupon_code: String,
    pub sequence: i64,
    pub issued_at: DateTime<Utc>,
    pub traceparent: String,
}

impl RedisStore {
    /// One page of a campaign's outbox (coupons not yet delivered to Kafka), oldest
    /// first, after stream id `after` (None to start); the id to continue from is
    /// None at the end.
    pub async fn outbox_page(
        &self,
        id: CampaignId,
        after: Option<&str>,
    ) -> StoreResult<(Vec<OutboxEntry>, Option<String>)> {
        let key = self.key(id, "outbox");
        let from = after.map_or_else(|| "-".to_owned(), |last| format!("({last}"));
        let page: Value = self
            .run_on("xrange", true, |mut c| async move {
                c.xrange_count(&key, from, "+", PAGE).await
            })
            .await?;
        let page = entry_list("XRANGE", page)?;
        // Continue after the page's last entry, even one that is malformed.
        let next = match page.last() {
            Some(Value::Array(last)) if page.len() == PAGE => match last.first() {
                Some(Value::BulkString(id)) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            },
            _ => None,
        };
        let entries = outbox_entries(id, page);
        Ok((entries, next))
    }

    /// Puts coupons back into a campaign's outbox, with fresh event ids, so the relay
    /// delivers them again (reconcile's repair of coupons missing from MySQL). Their
    /// events carry `traceparent` (the repair's trace; empty when not traced).
    pub async fn reenqueue(
        &self,
        id: CampaignId,
        coupons: &[Coupon],
        traceparent: &str,
    ) -> StoreResult<usize> {
        for chunk in coupons.chunks(500) {
            let key = self.key(id, "outbox");
            let mut pipe = redis::pipe();
            for c in chunk {
                pipe.xadd(&key, "*", &[("issued", outbox_value(c, traceparent))])
                    .ignore();
            }
            self.run("xadd", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await?;
        }
        Ok(coupons.len())
    }

    /// Length of each campaign's outbox (undelivered entries), in one round trip.
    pub async fn outbox_lengths(&self, campaigns: &[CampaignId]) -> StoreResult<Vec<i64>> {
        if campaigns.is_empty() {
            return Ok(Vec::new());
        }
        let keys = campaigns.iter().map(|id| self.key(*id, "outbox")).collect();
        self.per_key("xlen", keys, |pipe, key| {
            pipe.xlen(key);
        })
        .await
    }

    /// Reads up to `count` outbox entries for `consumer`: its own unacknowledged
    /// entries when `own_pending`, otherwise new ones.
    pub async fn read_outbox(
        &self,
        id: CampaignId,
        consumer: &str,
        count: usize,
        own_pending: bool,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let key = self.key(id, "outbox");
        let consumer = consumer.to_owned();
        let reply: Value = self
            .run_on("xreadgroup", true, |mut c| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(RELAY_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(if own_pending { "0" } else { ">" })
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(outbox_entries(id, stream_entries(reply)?))
    }

    /// Takes over entries another relay left pending for `min_idle` (it probably died).
    pub async fn claim_stale(
        &self,
        id: CampaignId,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let key = self.key(id, "outbox");
        let consumer = consumer.to_owned();
        let reply: Value = self
            .run_on("xautoclaim", true, |mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(RELAY_GROUP)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // `[next_id, [entry, ...], deleted_ids]`: only the claimed entries matter.
        let claimed = match reply {
            Value::Array(parts) => parts.into_iter().nth(1).unwrap_or(Value::Nil),
            other => return Err(unexpected_reply("XAUTOCLAIM", &other)),
        };
        Ok(outbox_entries(id, entry_list("XAUTOCLAIM", claimed)?))
    }

    /// Acknowledges delivered entries and removes them from the stream, atomically.
    pub async fn ack_outbox(&self, id: CampaignId, stream_ids: &[String]) -> StoreResult<()> {
        if stream_ids.is_empty() {
            return Ok(());
        }
        let key = self.key(id, "outbox");
        self.run_on("xack", true, |mut c| async move {
            redis::pipe()
                .atomic()
                .xack(&key, RELAY_GROUP, stream_ids)
                .ignore()
                .xdel(&key, stream_ids)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}

/// The entries of an XREADGROUP reply for one stream: RESP2 `[[key, entries]]`,
/// RESP3 `{key: entries}`, or nil when nothing is new.
fn stream_entries(reply: Value) -> StoreResult<Vec<Value>> {
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(key_and_entries)) => key_and_entries.into_iter().nth(1),
            Some(other) => return Err(unexpected_reply("XREADGROUP", &other)),
            None => None,
        },
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        other => return Err(unexpected_reply("XREADGROUP", &other)),
    };
    entries.map_or(Ok(Vec::new()), |e| entry_list("XREADGROUP", e))
}

fn entry_list(command: &str, entries: Value) -> StoreResult<Vec<Value>> {
    match entries {
        Value::Array(entries) => Ok(entries),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected_reply(command, &other)),
    }
}

fn unexpected_reply(command: &str, value: &Value) -> StoreError {
    StoreError::Unavailable(format!("{command}: unexpected reply {value:?}"))
}

/// Outbox entries from raw stream entries, read straight from the reply (no map per
/// entry: this runs once per issued coupon). An entry that is not what issue.lua
/// writes is logged and left pending, never acknowledged: it stays in the outbox,
/// which on-call sees in `coupon_outbox_pending`, and nothing is lost.
fn outbox_entries(campaign_id: CampaignId, entries: Vec<Value>) -> Vec<OutboxEntry> {
    entries
        .into_iter()
        .filter_map(|entry| match outbox_entry(campaign_id, entry) {
            Ok(entry) => Some(entry),
            Err(problem) => {
                tracing::error!(campaign_id, %problem, "outbox entry is malformed; left pending");
                None
            }
        })
        .collect()
}

/// An outbox entry's one field, `issued`, as issue.lua writes it, for a coupon put
/// back with a fresh event id, in the trace of `traceparent` (empty: none).
fn outbox_value(c: &Coupon, traceparent: &str) -> String {
    format!(
        "{}|{}|{}|{traceparent}",
        uuid::Uuid::now_v7(),
        c.user_id,
        holder_value(c)
    )
}

/// One stream entry `[id, [field, value, ...]]`: the field `issued` as issue.lua
/// writes it, or the six fields (`event_id`, `user_id`, `code`, `seq`, `ts`, `tp`)
/// that versions before it wrote, which may still wait in an outbox after an upgrade.
fn outbox_entry(campaign_id: CampaignId, entry: Value) -> Result<OutboxEntry, String> {
    let Value::Array(id_and_fields) = entry else {
        return Err(format!("entry {entry:?} is not [id, fields]"));
    };
    let mut parts = id_and_fields.into_iter();
    let stream_id = match parts.next() {
        Some(Value::BulkString(id)) => String::from_utf8(id).map_err(|e| e.to_string())?,
        Some(Value::SimpleString(id)) => id,
        other => return Err(format!("entry id {other:?}")),
    };
    let fields = match parts.next() {
        Some(Value::Array(fields)) => fields,
        // An entry deleted while pending (Redis before 7.0 claims it with nil fields).
        other => return Err(format!("entry {stream_id} has fields {other:?}")),
    };
    let mut values: [Option<String>; 6] = Default::default();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let (Value::BulkString(name), Value::BulkString(value)) = (name, value) else {
            return Err(format!(
                "entry {stream_id} has a field that is not a string"
            ));
        };
        let value = String::from_utf8(value)
            .map_err(|_| format!("entry {stream_id} has a value that is not UTF-8"))?;
        let slot = match name.as_slice() {
            b"issued" => {
                let mut packed = value.split('|').map(str::to_owned);
                values = std::array::from_fn(|_| packed.next());
                if packed.next().is_some() {
                    return Err(format!("entry {stream_id} has more than six parts"));
                }
                continue;
            }
            b"event_id" => 0,
            b"user_id" => 1,
            b"code" => 2,
            b"seq" => 3,
            b"ts" => 4,
            b"tp" => 5,
            _ => continue,
        };
        values[slot] = Some(value);
    }
    let [event_id, user_id, code, seq, ts, tp] = values;
    let missing = |field: &str| format!("entry {stream_id} has no valid {field}");
    let sequence = seq
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| missing("sequence"))?;
    let issued_at = ts
        .and_then(|ts| ts.parse().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .ok_or_else(|| missing("issued_at_ms"))?;
    let present =
        |v: Option<String>, field: &str| v.filter(|v| !v.is_empty()).ok_or_else(|| missing(field));
    Ok(OutboxEntry {
        campaign_id,
        event_id: present(event_id, "event_id")?,
        user_id: present(user_id, "user_id")?,
        coupon_code: present(code, "code")?,
        sequence,
        issued_at,
        traceparent: tp.unwrap_or_default(),
        stream_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields.iter().flat_map(|(f, v)| [bulk(f), bulk(v)]);
        Value::Array(vec![bulk(id), Value::Array(fields.collect())])
    }

    /// An entry as issue.lua writes it.
    fn issued(id: &str, seq: &str) -> Value {
        let packed = format!("e1|u1|C0DE|{seq}|1700000000123|00-ab-cd-01");
        entry(id, &[("issued", &packed)])
    }

    #[test]
    fn outbox_replies_of_either_protocol_become_entries() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("c:7:outbox"),
            Value::Array(vec![issued("1-0", "1"), issued("1-1", "2")]),
        ])]);
        let entries = outbox_entries(7, stream_entries(resp2).unwrap());
        assert_eq!(entries.len(), 2);
        let first = &entries[0];
        assert_eq!(
            (first.stream_id.as_str(), first.campaign_id, first.sequence),
            ("1-0", 7, 1)
        );
        assert_eq!(
            (first.event_id.as_str(), first.user_id.as_str()),
            ("e1", "u1")
        );
        assert_eq!(
            (first.coupon_code.as_str(), first.traceparent.as_str()),
            ("C0DE", "00-ab-cd-01")
        );
        assert_eq!(first.issued_at.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(entries[1].stream_id, "1-1");

        let resp3 = Value::Map(vec![(
            bulk("c:7:outbox"),
            Value::Array(vec![issued("2-0", "3")]),
        )]);
        let entries = outbox_entries(7, stream_entries(resp3).unwrap());
        assert_eq!(entries.iter().map(|e| e.sequence).collect::<Vec<_>>(), [3]);

        assert!(stream_entries(Value::Nil).unwrap().is_empty());
        assert!(stream_entries(Value::Int(3)).is_err());
    }

    #[test]
    fn entries_written_before_the_packed_field_are_still_read() {
        let legacy = entry(
            "1-0",
            &[
                ("event_id", "e1"),
                ("user_id", "u1"),
                ("code", "C0DE"),
                ("seq", "4"),
                ("ts", "1700000000123"),
                ("tp", "00-ab-cd-01"),
            ],
        );
        let read = outbox_entry(7, legacy).unwrap();
        let packed = outbox_entry(7, issued("1-0", "4")).unwrap();
        assert_eq!(
            (
                read.event_id,
                read.user_id,
                read.coupon_code,
                read.traceparent
            ),
            (
                packed.event_id,
                packed.user_id,
                packed.coupon_code,
                packed.traceparent
            )
        );
        assert_eq!(
            (read.sequence, read.issued_at),
            (packed.sequence, packed.issued_at)
        );
    }

    #[test]
    fn a_reenqueued_coupon_reads_back_as_the_same_coupon_with_a_new_event() {
        let coupon = Coupon {
            coupon_code: "C0DE".into(),
            campaign_id: 7,
            user_id: "u1".into(),
            sequence: 9,
            issued_at: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
        };
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let value = outbox_value(&coupon, traceparent);
        let read = outbox_entry(7, entry("1-0", &[("issued", &value)])).unwrap();
        assert_eq!(
            (
                read.user_id.as_str(),
                read.coupon_code.as_str(),
                read.sequence
            ),
            ("u1", "C0DE", 9)
        );
        assert_eq!(
            (read.issued_at, read.traceparent.as_str()),
            (coupon.issued_at, traceparent)
        );
        let untraced = outbox_entry(7, entry("1-1", &[("issued", &outbox_value(&coupon, ""))]));
        assert_eq!(untraced.unwrap().traceparent, "");
        assert!(
            uuid::Uuid::parse_str(&read.event_id).is_ok(),
            "{}",
            read.event_id
        );
    }

    #[test]
    fn a_malformed_outbox_entry_is_left_out_and_the_rest_kept() {
        let without_code = entry("1-1", &[("issued", "e|u||2|1|")]);
        let bad_seq = issued("1-2", "two");
        let too_many = entry("1-3", &[("issued", "e|u|C|2|1|tp|x")]);
        // What Redis before 7.0 claims for an entry deleted while pending.
        let deleted = Value::Array(vec![bulk("1-4"), Value::Nil]);
        let legacy_without_ts = entry(
            "1-5",
            &[
                ("event_id", "e"),
                ("user_id", "u"),
                ("code", "C"),
                ("seq", "6"),
            ],
        );
        let entries = outbox_entries(
            7,
            vec![
                issued("1-0", "1"),
                without_code.clone(),
                bad_seq.clone(),
                too_many.clone(),
                deleted,
                legacy_without_ts.clone(),
                issued("1-6", "5"),
            ],
        );
        let ids: Vec<_> = entries.iter().map(|e| e.stream_id.as_str()).collect();
        assert_eq!(ids, ["1-0", "1-6"]);
        let problem = outbox_entry(7, without_code).unwrap_err();
        assert!(
            problem.contains("1-1") && problem.contains("code"),
            "{problem}"
        );
        assert!(outbox_entry(7, bad_seq).unwrap_err().contains("sequence"));
        assert!(outbox_entry(7, too_many).unwrap_err().contains("six"));
        assert!(outbox_entry(7, legacy_without_ts)
            .unwrap_err()
            .contains("issued_at"));
    }
}
