//! Cleanup of backups: drop backup schemas (and their manifests) created before
//! a moment. Built for cron: never prompts, exits 0 when there is nothing to
//! do, and a backup whose tables are busy (lock timeout) is skipped with a
//! warning instead of blocking. Only schemas with a manifest in
//! `pgshift.backups` and pgshift's marker comment are ever dropped.
//!
//! Backups are dropped oldest first, each in one transaction with its
//! manifest row, or together with the other old backups that hold objects
//! depending on its own (or on which its own depend): a *group*, found by
//! following [`crate::pg::catalog::dependents_outside`] from one candidate
//! to the next. A group is skipped whole when anything else depends on it.
//!
//! What does not fit one transaction's share of the lock table is first
//! emptied in lock-bounded transactions, each schema down to its share of
//! the last one. Those commit one by one, so before a member's first part
//! every member it can lose objects to (itself, and through `CASCADE` every
//! member whose objects depend on it, transitively) is marked partly dropped
//! (`dropping_since`: list, status, verify and rollback say so); a member
//! that lost nothing after all is unmarked when the emptying is over. A
//! member marked is never restored, and the next cleanup drops the rest.

use anyhow::Result;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::backups::manifest::{self, BackupRow, SchemaMap};
use crate::backups::verify;
use crate::error::UserError;
use crate::output::rfc3339;
use crate::pg::batch;
use crate::pg::conn::connect::describe_pg_error;
use crate::pg::ident::quote_ident;

const ACCEPTED: &str = "an ISO date (2025-07-15, midnight UTC), an ISO datetime with or without offset (2025-07-15T08:30:00, 2025-07-15T08:30:00+02:00; UTC when none), or unix milliseconds (1752567000000)";

/// Parse `--before`: an ISO date (midnight UTC), an ISO datetime with an
/// offset (honoured) or without (UTC), or digits (unix milliseconds).
pub fn parse_before(text: &str) -> Result<DateTime<Utc>> {
    let at = parse_moment(text)?;
    // Microseconds or nanoseconds read as milliseconds land tens of
    // thousands of years ahead, and would take every backup; nor can such
    // a year be written in RFC 3339 (the report's `before`).
    if at.year() > 9999 {
        let digits = text.trim().chars().all(|c| c.is_ascii_digit());
        return Err(UserError::new(format!(
            "--before {text:?} is after the year 9999{}; use {ACCEPTED}",
            if digits {
                " as unix milliseconds (13 digits today: not microseconds)"
            } else {
                " in UTC"
            }
        ))
        .into());
    }
    Ok(at)
}

fn parse_moment(text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    let bad = || -> anyhow::Error {
        UserError::new(format!("--before {text:?} is not a date; use {ACCEPTED}")).into()
    };
    if t.is_empty() {
        return Err(bad());
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        let ms: i64 = t.parse().map_err(|_| bad())?;
        return DateTime::from_timestamp_millis(ms).ok_or_else(bad);
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).ok_or_else(bad)?;
        return Ok(Utc.from_utc_datetime(&midnight));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    // With an offset first (`%z`), then the same forms without one (UTC).
    for zoned in [true, false] {
        for f in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ] {
            let parsed = if zoned {
                DateTime::parse_from_str(t, &format!("{f}%z")).map(|dt| dt.with_timezone(&Utc))
            } else {
                NaiveDateTime::parse_from_str(t, f).map(|dt| Utc.from_utc_datetime(&dt))
            };
            if let Ok(dt) = parsed {
                return Ok(dt);
            }
        }
    }
    Err(bad())
}

/// One backup in the cleanup report.
#[derive(Debug, Clone, Serialize)]
pub struct CleanedBackup {
    pub timestamp: i64,
    pub schema: String,
    pub created_at: String,
    pub size_bytes: i64,
    /// Why it was skipped (only in `skipped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A backup of several schemas: each live schema and the schema holding
    /// its backup, all dropped (or skipped) together (absent for a backup of
    /// public alone, whose `schema` is it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<SchemaMap>,
    /// The other backups dropped (or skipped) with this one, in one
    /// transaction: objects of one depend on another's (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub together_with: Vec<String>,
}

/// What `cleanup --json` prints (documented in README.md, "JSON output").
#[derive(Debug, Clone, Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// The `--before` moment, RFC 3339 UTC.
    pub before: String,
    pub keep_latest: Option<usize>,
    /// Dropped (with `dry_run`: would be dropped), oldest first.
    pub dropped: Vec<CleanedBackup>,
    /// Old enough but left in place, with the reason.
    pub skipped: Vec<CleanedBackup>,
    /// Backups left in place (newer than `before`, or among the newest `keep_latest`).
    pub kept: usize,
    /// Sum of `dropped[].size_bytes`.
    pub freed_bytes: i64,
    /// Stopped by Ctrl-C or SIGTERM before its last candidate: those not
    /// begun are left, counted in `kept` (present only then).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

enum Outcome {
    Dropped,
    Skipped(String),
}

/// What the caller asks of a cleanup.
#[derive(Debug, Clone)]
pub struct CleanupOptions {
    /// Drop backups created before this moment.
    pub before: DateTime<Utc>,
    /// Always keep the N newest backups.
    pub keep_latest: Option<usize>,
    /// Report what would be dropped; drop nothing.
    pub dry_run: bool,
    /// How long to wait for a backup's locks before skipping it.
    pub lock_timeout: std::time::Duration,
    /// Ctrl-C / SIGTERM: no backup is begun after it (the one being dropped
    /// is finished, in its own transactions); a dry run stops too.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

/// The backups old enough to drop (oldest first), and the report that
/// starts from them (nothing dropped or skipped yet).
async fn candidates(
    client: &Client,
    opts: &CleanupOptions,
) -> Result<(Vec<BackupRow>, CleanupReport)> {
    let backups = manifest::list_backups(client).await?; // newest first
    let total = backups.len();
    // `--keep-latest N` keeps the N newest backups that can still be
    // restored: a record whose schemas (any of them) were dropped by hand
    // does not count (else one more real backup would go).
    let all: Vec<String> = backups.iter().flat_map(backup_schemas).collect();
    let present = crate::pg::catalog::existing_schemas(client, &all).await?;
    let mut protected = opts.keep_latest.unwrap_or(0);
    let mut candidates: Vec<BackupRow> = Vec::new();
    for b in backups {
        // Partly dropped by an interrupted cleanup, or what a rollback with
        // kept tables left of the backup it restored: no longer restorable.
        let restorable = b.manifest.dropping_since.is_none()
            && b.manifest.restored_since().is_none()
            && backup_schemas(&b).iter().all(|s| present.contains(s));
        if protected > 0 && restorable {
            protected -= 1;
        } else if b.created_at < opts.before {
            candidates.push(b);
        }
    }
    candidates.reverse(); // oldest first
    let report = CleanupReport {
        dry_run: opts.dry_run,
        before: rfc3339(&opts.before),
        keep_latest: opts.keep_latest,
        dropped: Vec::new(),
        skipped: Vec::new(),
        kept: total - candidates.len(),
        freed_bytes: 0,
        interrupted: false,
    };
    Ok((candidates, report))
}

/// The report of a cleanup with nothing to do (no backup old enough), read
/// without the run lock: a cron run then exits 0 whatever else runs. None
/// when there is something to drop.
pub async fn nothing_to_do(
    client: &Client,
    opts: &CleanupOptions,
) -> Result<Option<CleanupReport>> {
    let (candidates, report) = candidates(client, opts).await?;
    Ok(candidates.is_empty().then_some(report))
}

/// Drop old backups (or, with `dry_run`, say which). `client` holds the run
/// lock for a real run. Returns the report and the drops that failed for a
/// reason other than a busy table, with how many backups each was of (the
/// caller reports them after the report, exit 1).
///
/// Backups that hold each other's dependents (a view in one over a table of
/// another, say, or only one way) are dropped together, in one transaction:
/// apart, each would be skipped for the other's objects, run after run.
pub async fn cleanup(
    client: &Client,
    opts: &CleanupOptions,
) -> Result<(CleanupReport, Vec<(usize, String)>)> {
    let (candidates, mut report) = candidates(client, opts).await?;
    let mut looks = Vec::with_capacity(candidates.len());
    for b in &candidates {
        looks.push(look(client, b).await?);
    }
    let mut failures = Vec::new();
    let mut fates = vec![Fate::Open; candidates.len()];
    for i in 0..candidates.len() {
        if fates[i] != Fate::Open {
            continue;
        }
        // A pause before each backup, for the test of an interrupted cleanup.
        crate::migration::session::failpoint("cleanup-next").await?;
        if opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            report.interrupted = true;
            break;
        }
        let (group, mut reason) = match &looks[i].refusal {
            Some(why) => (vec![i], Some(why.clone())),
            None => group_of(client, &candidates, &looks, &fates, i).await?,
        };
        let members: Vec<&BackupRow> = group.iter().map(|&j| &candidates[j]).collect();
        if reason.is_none() && opts.dry_run {
            // A real run would wait for these, then (likely) skip: foresee it.
            let schemas: Vec<String> = members.iter().flat_map(|b| backup_schemas(b)).collect();
            let users = lock_holders(client, &schemas).await?;
            if !users.is_empty() {
                reason = Some(format!(
                    "a table or sequence of {} is in use now (by {}): a real run skips {} unless that session is done by then",
                    label(&members),
                    sessions(&users),
                    if members.len() == 1 { "it" } else { "them" }
                ));
            }
        } else if reason.is_none() {
            if members.len() > 1 {
                tracing::info!(
                    "{} hold objects that depend on each other's: dropping them together",
                    label(&members)
                );
            }
            match drop_backups(client, &members, opts.lock_timeout).await {
                Ok(Outcome::Dropped) => {}
                Ok(Outcome::Skipped(why)) => reason = Some(why),
                Err(e) => {
                    let why = format!("{e:#}");
                    failures.push((members.len(), why.clone()));
                    reason = Some(why);
                }
            }
        }
        for &j in &group {
            fates[j] = if reason.is_some() {
                Fate::Kept
            } else {
                Fate::Dropped
            };
            let b = &candidates[j];
            let item = CleanedBackup {
                timestamp: b.ts,
                schema: b.schema_name.clone(),
                created_at: rfc3339(&b.created_at),
                size_bytes: looks[j].size_bytes,
                reason: reason.clone(),
                schemas: b.manifest.schemas.clone(),
                together_with: members
                    .iter()
                    .filter(|m| m.ts != b.ts)
                    .map(|m| m.schema_name.clone())
                    .collect(),
            };
            match &item.reason {
                Some(why) => {
                    tracing::warn!("skipping {}: {why}", b.schema_name);
                    report.skipped.push(item);
                }
                None => {
                    report.freed_bytes += item.size_bytes;
                    report.dropped.push(item);
                }
            }
        }
    }
    // Those not begun stay, as kept ones do.
    report.kept += report.skipped.len() + fates.iter().filter(|f| **f == Fate::Open).count();
    Ok((report, failures))
}

/// What became of a candidate in this run (with a dry run: would become).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    Dropped,
    Kept,
}

/// What cleanup reads of a backup before dropping anything: its size, and
/// why it is not pgshift's to drop, if it is not.
struct Look {
    size_bytes: i64,
    refusal: Option<String>,
}

async fn look(client: &Client, b: &BackupRow) -> Result<Look> {
    let schemas = backup_schemas(b);
    let mut size_bytes = 0;
    let mut foreign = None;
    for s in &schemas {
        let f = verify::schema_facts(client, s).await?;
        if f.exists && !f.ours && foreign.is_none() {
            foreign = Some(s.clone());
        }
        size_bytes += f.size_bytes;
    }
    let refusal = if let Some(foreign) = foreign {
        Some(format!(
            "schema {foreign} does not carry pgshift's marker comment; not dropping a schema pgshift did not create"
        ))
    } else if let Err(e) =
        crate::pg::catalog::refuse_unowned_schemas(client, &schemas, "drop").await
    {
        // Not this role's to drop: say so (in the dry run too) rather
        // than fail on the server's "must be owner of schema".
        Some(format!("{e:#}"))
    } else {
        None
    };
    Ok(Look {
        size_bytes,
        refusal,
    })
}

/// The backups to drop with candidate `i`: it, and every other candidate
/// not yet handled that holds objects depending on the group's, until no
/// other candidate does. With the reason to skip them all when something
/// outside them depends on them (or one of them is not pgshift's to drop).
/// Objects of a backup this run dropped (a dry run: would drop) are not in
/// the way.
async fn group_of(
    client: &Client,
    candidates: &[BackupRow],
    looks: &[Look],
    fates: &[Fate],
    i: usize,
) -> Result<(Vec<usize>, Option<String>)> {
    let holder_of = |schema: &str| {
        (0..candidates.len()).find(|&j| backup_schemas(&candidates[j]).iter().any(|s| s == schema))
    };
    let mut group = vec![i];
    loop {
        let schemas: Vec<String> = group
            .iter()
            .flat_map(|&j| backup_schemas(&candidates[j]))
            .collect();
        let deps = crate::pg::catalog::dependents_outside(client, &schemas, None).await?;
        let mut more = Vec::new();
        let mut outside = Vec::new();
        for d in &deps {
            match d.schema.as_deref().and_then(holder_of) {
                Some(j) if fates[j] == Fate::Dropped => {}
                Some(j) if fates[j] == Fate::Open && looks[j].refusal.is_none() => more.push(j),
                Some(j) if fates[j] == Fate::Open => outside.push(format!(
                    "{} (in {}, which is not dropped: {})",
                    d.what,
                    candidates[j].schema_name,
                    looks[j].refusal.as_deref().unwrap_or_default()
                )),
                _ => outside.push(d.what.clone()),
            }
        }
        more.sort_unstable();
        more.dedup();
        if more.is_empty() {
            let members: Vec<&BackupRow> = group.iter().map(|&j| &candidates[j]).collect();
            let reason = (!outside.is_empty()).then(|| dependents_reason(&members, &outside));
            return Ok((group, reason));
        }
        group.extend(more);
        group.sort_unstable();
    }
}

fn dependents_reason(group: &[&BackupRow], deps: &[String]) -> String {
    match group {
        [_] => format!(
            "objects outside the backup depend on it and would be dropped with it: {}",
            deps.join(", ")
        ),
        _ => format!(
            "objects outside {} (which go together, as objects in one depend on another) depend on them and would be dropped with them: {}",
            label(group),
            deps.join(", ")
        ),
    }
}

/// The other sessions holding a lock on a relation of `schemas` (a reader
/// in an open transaction, say): a drop waits for them.
async fn lock_holders(client: &Client, schemas: &[String]) -> Result<Vec<i32>> {
    crate::pg::exec::column(
        client,
        "SELECT DISTINCT l.pid FROM pg_catalog.pg_locks l
           JOIN pg_catalog.pg_class c ON c.oid = l.relation
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY($1) AND l.pid <> pg_catalog.pg_backend_pid()
          ORDER BY 1",
        &[&schemas],
    )
    .await
}

/// `the session with pid 12`, `the sessions with pid 12, 13`.
fn sessions(pids: &[i32]) -> String {
    format!(
        "the session{} with pid {}",
        if pids.len() == 1 { "" } else { "s" },
        pids.iter().map(i32::to_string).join(", ")
    )
}

/// The backups of a group, as messages name them.
fn label(group: &[&BackupRow]) -> String {
    match group {
        [one] => one.schema_name.clone(),
        [a, b] => format!("{} and {}", a.schema_name, b.schema_name),
        [a, b, c] => format!("{}, {} and {}", a.schema_name, b.schema_name, c.schema_name),
        [a, b, rest @ ..] => format!(
            "{}, {} and {} other backups",
            a.schema_name,
            b.schema_name,
            rest.len()
        ),
        [] => String::new(),
    }
}

/// Every schema of a backup (one per migrated schema).
fn backup_schemas(b: &BackupRow) -> Vec<String> {
    b.manifest
        .schema_maps()
        .into_iter()
        .map(|m| m.backup)
        .collect()
}

/// Drop backups (one, or a group that holds each other's dependents) in one
/// transaction under `lock_timeout`: their schemas (CASCADE: their own
/// objects) and their manifest rows. Backups too big for one transaction's
/// share of the lock table, together, are first emptied in lock-bounded
/// transactions ([`batch::shrink_objects`]).
async fn drop_backups(
    client: &Client,
    group: &[&BackupRow],
    lock_timeout: std::time::Duration,
) -> Result<Outcome> {
    let name = label(group);
    let opts = batch::Options::for_server(client, "cleanup")
        .await?
        .with_lock_timeout(lock_timeout, 3);
    let shrunk = match shrink_backups(client, group, &opts).await? {
        Err(outcome) => return Ok(outcome),
        Ok(shrunk) => shrunk,
    };
    let begin = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    );
    client.batch_execute(&begin).await?;
    let result = async {
        let schemas: Vec<String> = group.iter().flat_map(|b| backup_schemas(b)).collect();
        // Its catalog reads' locks are let go: the drop's share is for the drop.
        let deps = batch::released(
            client,
            crate::pg::catalog::external_dependents(client, &schemas, None),
        )
        .await?;
        if !deps.is_empty() {
            return Ok::<_, anyhow::Error>(Some(dependents_reason(group, &deps)));
        }
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schemas.iter().map(|s| quote_ident(s)).join(", ")
            ))
            .await?;
        for b in group {
            manifest::delete_backup(client, b.ts).await?;
        }
        if let Some(check) = batch::lock_check(opts.limit) {
            client.batch_execute(&check).await?;
        }
        client.batch_execute("COMMIT").await?;
        Ok(None)
    }
    .await;
    let one = group.len() == 1;
    match result {
        Ok(None) => Ok(Outcome::Dropped),
        Ok(Some(why)) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Ok(Outcome::Skipped(why))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            let lock = e.chain().any(|c| {
                c.downcast_ref::<tokio_postgres::Error>()
                    .and_then(|pe| pe.code())
                    .is_some_and(|code| *code == SqlState::LOCK_NOT_AVAILABLE)
            });
            if lock && !shrunk.is_empty() {
                let parts: Vec<&BackupRow> = group
                    .iter()
                    .copied()
                    .filter(|b| shrunk.contains(&b.ts))
                    .collect();
                Ok(Outcome::Skipped(format!(
                    "{} {} partly dropped: emptied in parts, then a table {} was in use (lock timeout after {} ms); they cannot be restored, and a later run drops the rest",
                    label(&parts),
                    if parts.len() == 1 { "is" } else { "are" },
                    if one { "of it" } else { "of the group" },
                    lock_timeout.as_millis()
                )))
            } else if lock {
                Ok(Outcome::Skipped(format!(
                    "a table or sequence of {name} is in use (lock timeout after {} ms); {} will be dropped by a later run",
                    lock_timeout.as_millis(),
                    if one { "it" } else { "they" }
                )))
            } else {
                let msg = e
                    .chain()
                    .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
                    .map(describe_pg_error)
                    .unwrap_or_else(|| format!("{e:#}"));
                Err(anyhow::anyhow!("dropping {name}: {msg}"))
            }
        }
    }
}

/// Empty backups that are too big to drop in one transaction together, down
/// to what fits one (nothing happens to backups that fit): each schema down
/// to its share of that transaction. Only once nothing outside depends on
/// them.
///
/// Emptying in parts commits part by part, so a table in use found half way
/// would leave a backup partly dropped: backups that any other session still
/// holds a lock on after `lock_timeout` (a reader in an open transaction,
/// say) are skipped before anything is dropped, and each backup is marked partly dropped only before
/// its own first part. Ok(the backups emptied in parts), or Err(outcome) when
/// skipped.
async fn shrink_backups(
    client: &Client,
    group: &[&BackupRow],
    opts: &batch::Options,
) -> Result<std::result::Result<Vec<i64>, Outcome>> {
    let name = label(group);
    let lock_timeout = opts.lock_timeout.unwrap_or_default();
    let schemas: Vec<String> = group.iter().flat_map(|b| backup_schemas(b)).collect();
    let deps = crate::pg::catalog::external_dependents(client, &schemas, None).await?;
    if !deps.is_empty() {
        return Ok(Err(Outcome::Skipped(dependents_reason(group, &deps))));
    }
    let mut needs = Vec::with_capacity(schemas.len());
    for s in &schemas {
        needs.push(batch::drop_locks(client, s).await?);
    }
    if needs.iter().sum::<u64>() <= opts.room() {
        // One transaction drops it all or nothing, under lock_timeout.
        return Ok(Ok(Vec::new()));
    }
    // As a drop in one transaction waits lock_timeout for a reader, so does
    // this: a reader done by then does not keep the backup another day.
    let waited = std::time::Instant::now();
    loop {
        let users = lock_holders(client, &schemas).await?;
        if users.is_empty() {
            break;
        }
        if waited.elapsed() >= lock_timeout {
            return Ok(Err(Outcome::Skipped(format!(
                "a table or sequence of {name} is in use (by {}, after waiting {} ms); nothing was dropped, and a later run drops {}",
                sessions(&users),
                lock_timeout.as_millis(),
                if group.len() == 1 { "it" } else { "them" }
            ))));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Each schema keeps at most its share of the last transaction.
    let share = (opts.room() / schemas.len() as u64).max(1);
    // What each member holds before anything goes: a member marked only for
    // what depends on an emptied one, that CASCADE took nothing from, is
    // unmarked afterwards.
    let mut held_before = Vec::with_capacity(group.len());
    for b in group {
        held_before.push(objects_in(client, &backup_schemas(b)).await?);
    }
    let mut marked: Vec<i64> = Vec::new();
    let mut emptied: Vec<i64> = Vec::new();
    let mut total = 0;
    let mut result = Ok(());
    'all: for b in group {
        for s in backup_schemas(b) {
            let need = schemas.iter().position(|x| *x == s).map_or(0, |k| needs[k]);
            if need <= share {
                continue;
            }
            if !emptied.contains(&b.ts) {
                // From its first part's COMMIT on, part of it may be gone,
                // and of every member whose objects depend on it, however
                // indirectly (CASCADE takes those along): list, status and
                // rollback say so until a cleanup has dropped the rest.
                emptied.push(b.ts);
                for ts in reached_from(client, group, b).await? {
                    if !marked.contains(&ts) {
                        manifest::mark_dropping(client, ts).await?;
                        marked.push(ts);
                    }
                }
            }
            match batch::shrink_objects(client, &s, &[], share, opts).await {
                Ok(n) => total += n,
                Err(e) => {
                    result = Err(e);
                    break 'all;
                }
            }
        }
    }
    for (b, before) in group.iter().zip(held_before) {
        if marked.contains(&b.ts)
            && !emptied.contains(&b.ts)
            && objects_in(client, &backup_schemas(b)).await? == before
        {
            manifest::unmark_dropping(client, b.ts).await?;
            marked.retain(|ts| *ts != b.ts);
        }
    }
    match result {
        Ok(()) => {
            if total > 0 {
                tracing::info!(
                    schema = %name,
                    transactions = total,
                    "emptied the backup in lock-bounded transactions"
                );
            }
            // A stop here, for the test of a backup left partly dropped.
            crate::migration::session::failpoint("cleanup-shrunk").await?;
            Ok(Ok(marked))
        }
        Err(e) if batch::is_lock_timeout(&e) => Ok(Err(Outcome::Skipped(format!(
            "a table or sequence of {name} came into use (lock timeout after {} ms) while it was dropped in parts, so part of it may be gone already; it cannot be restored, and a later run drops the rest",
            lock_timeout.as_millis()
        )))),
        Err(e) => Err(e.context(format!("dropping {name}"))),
    }
}

/// The members of `group` an emptying of `b` may take objects from: `b`,
/// and every member holding objects that depend on those, and so on
/// (`DROP … CASCADE` goes as far).
async fn reached_from(client: &Client, group: &[&BackupRow], b: &BackupRow) -> Result<Vec<i64>> {
    let mut reached = vec![b.ts];
    loop {
        let schemas: Vec<String> = group
            .iter()
            .filter(|m| reached.contains(&m.ts))
            .flat_map(|m| backup_schemas(m))
            .collect();
        let deps = crate::pg::catalog::dependents_outside(client, &schemas, None).await?;
        let more: Vec<i64> = group
            .iter()
            .filter(|m| !reached.contains(&m.ts))
            .filter(|m| {
                let theirs = backup_schemas(m);
                deps.iter()
                    .any(|d| d.schema.as_ref().is_some_and(|s| theirs.contains(s)))
            })
            .map(|m| m.ts)
            .collect();
        if more.is_empty() {
            return Ok(reached);
        }
        reached.extend(more);
    }
}

/// How many objects `schemas` hold, of every kind a schema holds, with the
/// parts `CASCADE` can take from them alone (columns, defaults, constraints,
/// rules, triggers, policies, an operator family's members).
async fn objects_in(client: &Client, schemas: &[String]) -> Result<i64> {
    let kinds =
        crate::pg::catalog::per_schema_kind(&[], "\n + ", crate::pg::catalog::count_of_kind);
    let sql = format!(
        "WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)),
              rels AS (SELECT oid FROM pg_catalog.pg_class WHERE relnamespace IN (SELECT oid FROM ns)),
              fams AS (SELECT oid FROM pg_catalog.pg_opfamily WHERE opfnamespace IN (SELECT oid FROM ns))
         SELECT {kinds}
              + (SELECT count(*) FROM pg_catalog.pg_attribute
                  WHERE attrelid IN (SELECT oid FROM rels) AND attnum > 0 AND NOT attisdropped)
              + (SELECT count(*) FROM pg_catalog.pg_attrdef WHERE adrelid IN (SELECT oid FROM rels))
              + (SELECT count(*) FROM pg_catalog.pg_constraint WHERE connamespace IN (SELECT oid FROM ns))
              + (SELECT count(*) FROM pg_catalog.pg_rewrite WHERE ev_class IN (SELECT oid FROM rels))
              + (SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid IN (SELECT oid FROM rels))
              + (SELECT count(*) FROM pg_catalog.pg_policy WHERE polrelid IN (SELECT oid FROM rels))
              + (SELECT count(*) FROM pg_catalog.pg_amop WHERE amopfamily IN (SELECT oid FROM fams))
              + (SELECT count(*) FROM pg_catalog.pg_amproc WHERE amprocfamily IN (SELECT oid FROM fams))"
    );
    let row = client
        .query_one(sql.as_str(), &[&schemas])
        .await
        .map_err(|e| crate::pg::exec::pg_error_as(e, "counting a backup's objects"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        parse_before(s).unwrap().timestamp_millis()
    }

    #[test]
    fn before_forms() {
        assert_eq!(ms("2025-07-15"), 1_752_537_600_000);
        assert_eq!(
            ms("2025-07-15T08:30:00"),
            1_752_537_600_000 + 8 * 3_600_000 + 1_800_000
        );
        assert_eq!(ms("2025-07-15 08:30:00"), ms("2025-07-15T08:30:00"));
        assert_eq!(ms("2025-07-15T08:30:00Z"), ms("2025-07-15T08:30:00"));
        assert_eq!(ms("2025-07-15T10:30:00+02:00"), ms("2025-07-15T08:30:00"));
        assert_eq!(ms("2025-07-15T10:30:00+0200"), ms("2025-07-15T08:30:00"));
        assert_eq!(ms("2025-07-15T08:30"), ms("2025-07-15T08:30:00"));
        assert_eq!(
            ms("2025-07-15T08:30:00.250"),
            ms("2025-07-15T08:30:00") + 250
        );
        assert_eq!(ms("1752567000000"), 1_752_567_000_000);
        for bad in [
            "",
            "yesterday",
            "2025-13-01",
            "2025-07-15T25:00",
            "12ab",
            "-5",
            "1796634381425000",
            "10000-01-01",
        ] {
            let e = parse_before(bad).unwrap_err();
            assert!(e.chain().any(|c| c.is::<UserError>()), "{bad}: {e:#}");
            assert!(e.to_string().contains("unix milliseconds"), "{e}");
        }
    }
}
