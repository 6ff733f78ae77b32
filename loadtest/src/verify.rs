//! The issuance invariants after a claim run. [`gather`] reads the service's figures
//! (admin API, waiting for the outbox and the persister to drain) and MySQL
//! (`issued_coupon`, raw SQL through sea-orm); [`judge`] turns those figures and the
//! shoppers' answers into PASS/FAIL [`Check`]s, without any I/O.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http::{Method, StatusCode};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::flash::{ClaimPlan, Tally};
use crate::http::HttpClient;

/// One invariant, judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        detail,
    }
}

/// A campaign's live figures from `GET /admin/v1/campaigns/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CampaignFigures {
    pub total_quantity: u64,
    pub issued: u64,
    pub remaining: u64,
    pub persisted: Option<u64>,
    pub pending_events: Option<u64>,
}

impl CampaignFigures {
    pub fn drained(&self) -> bool {
        self.pending_events == Some(0) && self.persisted == Some(self.issued)
    }
}

/// What MySQL holds for the campaign.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MysqlFigures {
    /// Rows of the campaign.
    pub rows: u64,
    /// Rows of the campaign whose user is not one of the run's shoppers (prefix).
    pub rows_of_others: u64,
    /// Users with more than one row in the campaign.
    pub duplicate_users: u64,
    /// 201 codes whose shopper has no row.
    pub codes_missing: u64,
    /// 201 codes whose shopper's row has another code.
    pub codes_different: u64,
}

/// Everything the checks judge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Coupons left when the run started.
    pub stock: u64,
    pub tally: Tally,
    pub sold_out_seen: bool,
    /// Coupons issued during the run (admin `issued` after minus before).
    pub issued: u64,
    pub after: CampaignFigures,
    pub drain_secs: f64,
    pub drain_timeout_secs: u64,
    pub mysql: MysqlFigures,
    /// `rows_of_others` before the run (0 for a campaign the run created).
    pub others_before: u64,
}

/// The checks, in the order they are printed.
pub fn judge(f: &Figures) -> Vec<Check> {
    let t = &f.tally;
    let mut checks = Vec::new();
    checks.push(check(
        "no more 201s than stock",
        t.answered_201 <= f.stock,
        format!("{} answers 201 for stock {}", t.answered_201, f.stock),
    ));
    checks.push(check(
        "one coupon per shopper in the answers",
        t.shoppers_with_two_201 == 0 && t.held_code_mismatches == 0,
        format!(
            "{} shoppers got two 201s; {} were told another code by already-issued",
            t.shoppers_with_two_201, t.held_code_mismatches
        ),
    ));
    // Shoppers only ever refused (429, instance busy, not open) cannot hold a coupon;
    // shoppers with only errors may or may not: they widen the range.
    let contenders = t.attempted - t.refused;
    let hi = f.stock.min(contenders);
    let lo = if f.sold_out_seen {
        f.stock
    } else {
        f.stock.min(t.holding)
    };
    let refused = if t.refused > 0 {
        format!(" ({} of {} were only refused)", t.refused, t.attempted)
    } else {
        String::new()
    };
    let expected = if lo == hi {
        format!(
            "expected min(stock {}, shoppers {contenders}{refused}) = {hi}",
            f.stock
        )
    } else {
        format!(
            "expected {lo} to {hi}: {} shoppers had only errors, timeouts or 503s of a failed dependency{refused}",
            t.undecided
        )
    };
    checks.push(check(
        "issued == min(stock, distinct shoppers)",
        lo <= f.issued && f.issued <= hi,
        format!("issued {} ({expected})", f.issued),
    ));
    let a = &f.after;
    let show = |v: Option<u64>| v.map_or("unknown".to_owned(), |v| v.to_string());
    checks.push(check(
        "persisted == issued after the drain",
        a.drained(),
        if a.drained() {
            format!(
                "persisted {} == issued {}, 0 pending events, drained {:.1} s after the run",
                show(a.persisted),
                a.issued,
                f.drain_secs
            )
        } else {
            format!(
                "after {} s: persisted {}, issued {}, pending events {}",
                f.drain_timeout_secs,
                show(a.persisted),
                a.issued,
                show(a.pending_events)
            )
        },
    ));
    checks.push(check(
        "MySQL rows == issued",
        f.mysql.rows == a.issued,
        format!(
            "{} rows in issued_coupon for the campaign, issued {}",
            f.mysql.rows, a.issued
        ),
    ));
    // The admin `issued` is the larger of Redis's count and MySQL's rows, so the two
    // checks above cannot see a row too many; a row of someone outside the run can.
    let others_added = f.mysql.rows_of_others.saturating_sub(f.others_before);
    checks.push(check(
        "no coupon in MySQL for a shopper outside the run",
        f.mysql.rows_of_others == f.others_before,
        format!(
            "{others_added} rows added for users outside the run ({} before, {} after)",
            f.others_before, f.mysql.rows_of_others
        ),
    ));
    checks.push(check(
        "no shopper twice in MySQL",
        f.mysql.duplicate_users == 0,
        format!(
            "{} users with more than one row (GROUP BY user_id HAVING COUNT(*) > 1)",
            f.mysql.duplicate_users
        ),
    ));
    let wrong = f.mysql.codes_missing + f.mysql.codes_different + t.unreadable_201;
    checks.push(check(
        "every 201 coupon is the shopper's row in MySQL",
        wrong == 0,
        format!(
            "{} codes checked: {} missing, {} different, {} unreadable 201 bodies",
            t.codes_201.len(),
            f.mysql.codes_missing,
            f.mysql.codes_different,
            t.unreadable_201
        ),
    ));
    checks
}

/// Reads the campaign's live figures; fails on any answer but 200.
pub async fn campaign_figures(
    client: &HttpClient,
    token: &str,
    campaign: u64,
) -> anyhow::Result<CampaignFigures> {
    let path = format!("/admin/v1/campaigns/{campaign}");
    let (status, body) = client.json(Method::GET, &path, Some(token), None).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED => bail!(
            "GET {path}: 401, the admin token was refused (set --admin-token or LOADTEST_ADMIN_TOKEN)"
        ),
        StatusCode::NOT_FOUND => bail!("--campaign {campaign}: no such campaign (404)"),
        other => bail!("GET {path}: {other}: {body}"),
    }
    let n = |key: &str| body.get(key).and_then(Value::as_u64);
    Ok(CampaignFigures {
        total_quantity: n("total_quantity")
            .ok_or_else(|| anyhow!("no total_quantity in {body}"))?,
        issued: n("issued").ok_or_else(|| anyhow!("no issued in {body}"))?,
        remaining: n("remaining").unwrap_or(0),
        persisted: n("persisted"),
        pending_events: n("pending_events"),
    })
}

/// Polls the campaign until the outbox and the persister drained, or `timeout`.
/// Returns the last figures and the seconds waited. A failed read (a 503 or a
/// timeout while the service catches up) is retried; only reads failing until the
/// end are an error, reported with the last failure.
pub async fn wait_for_drain(
    client: &HttpClient,
    token: &str,
    campaign: u64,
    timeout: Duration,
) -> anyhow::Result<(CampaignFigures, f64)> {
    let start = Instant::now();
    let mut failed_reads = 0u32;
    loop {
        let read = campaign_figures(client, token, campaign).await;
        let waited = start.elapsed();
        match read {
            Ok(figures) if figures.drained() || waited >= timeout => {
                return Ok((figures, waited.as_secs_f64()));
            }
            Ok(_) => {}
            Err(err) if waited >= timeout => {
                return Err(err.context(format!(
                    "the campaign's figures were unreadable for the last of {failed_reads} \
                     failed reads, {:.0} s after the run",
                    waited.as_secs_f64()
                )));
            }
            Err(err) => {
                failed_reads += 1;
                if failed_reads == 1 {
                    eprintln!("note: reading the campaign's figures failed ({err:#}); retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A URL with the password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Connects to MySQL, failing fast with the (redacted) URL in the message.
pub async fn connect_mysql(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(2)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .with_context(|| format!("cannot connect to --mysql-url {}", redact(url)))?;
    db.execute_unprepared("SELECT 1")
        .await
        .with_context(|| format!("--mysql-url {}: SELECT 1 failed", redact(url)))?;
    Ok(db)
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::MySql, sql, values)
}

async fn count(db: &DatabaseConnection, sql: &str, campaign: u64) -> anyhow::Result<u64> {
    let row = db
        .query_one_raw(stmt(sql, vec![(campaign as i64).into()]))
        .await
        .with_context(|| format!("MySQL: {sql}"))?
        .ok_or_else(|| anyhow!("MySQL: no row for {sql}"))?;
    let n: i64 = row.try_get_by_index(0)?;
    Ok(n.max(0) as u64)
}

/// Only the shoppers of a run: user_id LIKE '<prefix>-%' ('_' escaped).
fn shoppers_pattern(prefix: &str) -> String {
    format!("{}-%", prefix.replace('_', "!_"))
}

/// Rows of `campaign` before a run: (of shoppers named with `prefix`, of anyone else).
pub async fn rows_before(
    db: &DatabaseConnection,
    campaign: u64,
    prefix: &str,
) -> anyhow::Result<(u64, u64)> {
    let sql = "SELECT COUNT(*), CAST(COALESCE(SUM(user_id LIKE ? ESCAPE '!'), 0) AS SIGNED) \
               FROM issued_coupon WHERE campaign_id = ?";
    let row = db
        .query_one_raw(stmt(
            sql,
            vec![shoppers_pattern(prefix).into(), (campaign as i64).into()],
        ))
        .await
        .with_context(|| format!("MySQL: {sql}"))?
        .ok_or_else(|| anyhow!("MySQL: no row for {sql}"))?;
    let all: i64 = row.try_get_by_index(0)?;
    let ours: i64 = row.try_get_by_index(1)?;
    Ok((ours.max(0) as u64, (all - ours).max(0) as u64))
}

/// What MySQL holds for `campaign`, and how the 201 codes of the run compare.
pub async fn mysql_figures(
    db: &DatabaseConnection,
    campaign: u64,
    plan: &ClaimPlan,
    codes_201: &[(u64, String)],
) -> anyhow::Result<MysqlFigures> {
    let rows = count(
        db,
        "SELECT COUNT(*) FROM issued_coupon WHERE campaign_id = ?",
        campaign,
    )
    .await?;
    let duplicate_users = count(
        db,
        "SELECT COUNT(*) FROM (SELECT user_id FROM issued_coupon WHERE campaign_id = ? \
         GROUP BY user_id HAVING COUNT(*) > 1) AS twice",
        campaign,
    )
    .await?;
    let ours = db
        .query_all_raw(stmt(
            "SELECT user_id, coupon_code FROM issued_coupon \
             WHERE campaign_id = ? AND user_id LIKE ? ESCAPE '!'",
            vec![
                (campaign as i64).into(),
                shoppers_pattern(&plan.prefix).into(),
            ],
        ))
        .await
        .context("MySQL: reading the run's coupons")?;
    let rows_of_run = ours.len() as u64;
    let mut in_mysql: HashMap<u64, String> = HashMap::with_capacity(ours.len());
    for row in ours {
        let user: String = row.try_get_by_index(0)?;
        let code: String = row.try_get_by_index(1)?;
        if let Some(shopper) = plan.shopper_of(&user) {
            in_mysql.insert(shopper, code);
        }
    }
    let mut figures = MysqlFigures {
        rows,
        rows_of_others: rows.saturating_sub(rows_of_run),
        duplicate_users,
        ..MysqlFigures::default()
    };
    for (shopper, code) in codes_201 {
        match in_mysql.get(shopper) {
            None => figures.codes_missing += 1,
            Some(stored) if stored != code => figures.codes_different += 1,
            Some(_) => {}
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Figures {
        Figures {
            stock: 100,
            tally: Tally {
                attempted: 300,
                holding: 100,
                answered_201: 100,
                codes_201: vec![(0, "A".into())],
                ..Tally::default()
            },
            sold_out_seen: true,
            issued: 100,
            after: CampaignFigures {
                total_quantity: 100,
                issued: 100,
                remaining: 0,
                persisted: Some(100),
                pending_events: Some(0),
            },
            drain_secs: 1.5,
            drain_timeout_secs: 120,
            mysql: MysqlFigures {
                rows: 100,
                ..MysqlFigures::default()
            },
            others_before: 0,
        }
    }

    /// The service issued `n` during the run, and all `n` reached MySQL.
    fn issued_and_persisted(f: &mut Figures, n: u64) {
        f.issued = n;
        f.after.issued = n;
        f.after.persisted = Some(n);
        f.mysql.rows = n;
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_clean_sold_out_run_passes_every_check() {
        let checks = judge(&healthy());
        assert_eq!(checks.len(), 8);
        assert!(failed(&checks).is_empty(), "{checks:?}");
    }

    #[test]
    fn a_row_for_someone_outside_the_run_fails_although_counts_agree() {
        // Redis issued 997 and MySQL holds 998 rows: the admin `issued` (the larger)
        // is 998, within the range the undecided shoppers allow.
        let mut f = healthy();
        f.stock = 1_000;
        f.sold_out_seen = false;
        f.tally.attempted = 1_000;
        f.tally.holding = 997;
        f.tally.undecided = 3;
        issued_and_persisted(&mut f, 998);
        f.mysql.rows_of_others = 1;
        let checks = judge(&f);
        assert_eq!(
            failed(&checks),
            vec!["no coupon in MySQL for a shopper outside the run"]
        );
        f.others_before = 1;
        assert!(
            failed(&judge(&f)).is_empty(),
            "rows from before the run are not the run's"
        );
    }

    #[test]
    fn more_201s_than_stock_fail() {
        let mut f = healthy();
        f.tally.answered_201 = 101;
        assert_eq!(failed(&judge(&f)), vec!["no more 201s than stock"]);
    }

    #[test]
    fn fewer_issued_than_shoppers_with_stock_left_fails() {
        let mut f = healthy();
        f.stock = 1_000;
        f.sold_out_seen = false;
        f.tally.holding = 300;
        issued_and_persisted(&mut f, 299);
        let checks = judge(&f);
        assert_eq!(
            failed(&checks),
            vec!["issued == min(stock, distinct shoppers)"]
        );
        assert!(checks[2].detail.contains("= 300"), "{}", checks[2].detail);
    }

    #[test]
    fn shoppers_with_only_errors_widen_the_expected_range() {
        let mut f = healthy();
        f.stock = 1_000;
        f.sold_out_seen = false;
        f.tally.holding = 290;
        f.tally.undecided = 10;
        issued_and_persisted(&mut f, 295);
        let checks = judge(&f);
        assert!(failed(&checks).is_empty(), "{checks:?}");
        assert!(
            checks[2].detail.contains("290 to 300"),
            "{}",
            checks[2].detail
        );
    }

    #[test]
    fn shoppers_only_ever_refused_narrow_the_expected_range() {
        let mut f = healthy();
        f.stock = 1_000;
        f.sold_out_seen = false;
        f.tally.attempted = 300;
        f.tally.refused = 20;
        f.tally.holding = 280;
        issued_and_persisted(&mut f, 280);
        let checks = judge(&f);
        assert!(failed(&checks).is_empty(), "{checks:?}");
        assert!(
            checks[2]
                .detail
                .contains("shoppers 280 (20 of 300 were only refused)) = 280"),
            "{}",
            checks[2].detail
        );
        // A coupon for a shopper who was only ever told "busy" or "rate limited" is
        // a coupon nobody was told about: the check catches it.
        issued_and_persisted(&mut f, 281);
        assert_eq!(
            failed(&judge(&f)),
            vec!["issued == min(stock, distinct shoppers)"]
        );
    }

    #[test]
    fn a_sold_out_answer_means_the_whole_stock_was_issued() {
        let mut f = healthy();
        f.issued = 99;
        assert_eq!(
            failed(&judge(&f)),
            vec!["issued == min(stock, distinct shoppers)"]
        );
    }

    #[test]
    fn an_undrained_outbox_or_missing_rows_fail() {
        let mut f = healthy();
        f.after.persisted = Some(90);
        f.after.pending_events = Some(10);
        f.mysql.rows = 90;
        f.mysql.codes_missing = 1;
        assert_eq!(
            failed(&judge(&f)),
            vec![
                "persisted == issued after the drain",
                "MySQL rows == issued",
                "every 201 coupon is the shopper's row in MySQL"
            ]
        );
    }

    #[test]
    fn duplicates_and_double_answers_fail() {
        let mut f = healthy();
        f.mysql.duplicate_users = 2;
        f.tally.shoppers_with_two_201 = 1;
        assert_eq!(
            failed(&judge(&f)),
            vec![
                "one coupon per shopper in the answers",
                "no shopper twice in MySQL"
            ]
        );
    }

    #[test]
    fn passwords_never_show_in_messages() {
        assert_eq!(
            redact("mysql://flashcoupon:secret@127.0.0.1:3306/db"),
            "mysql://flashcoupon:***@127.0.0.1:3306/db"
        );
        assert_eq!(redact("mysql://host/db"), "mysql://host/db");
    }
}
