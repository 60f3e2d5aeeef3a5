//! Where the impact report meets the product: the options a command hands the
//! library ([`ImpactOptions`]), the report of a prepared migration (`status`,
//! `prepare`, `swap --dry-run`), the gates before a swap, the check under the
//! swap's locks, and the baseline of the new public recorded after every
//! swap and rollback commit (the rollback's gate compares against it).
//!
//! # Discarded writes: where the gate runs
//!
//! * **prepare** takes the [`WriteBaseline`] of public when it starts, before
//!   the source snapshot (`prepare::phases`), and keeps it in the migration
//!   record (state file and `pgshift.migration`), so a swap from another
//!   machine sees it.
//! * **swap** (and `start`) compares before anything changes ([`before_swap`]:
//!   refusing then holds no lock), and again under the swap's ACCESS EXCLUSIVE
//!   locks ([`UnderLocks`], in the swap transaction's hook, before the moves:
//!   one query, [`listed_check_sql`] over the tables the first check saw,
//!   looked up by OID: about 6–10 ms at 1,000 tables where scanning the
//!   catalog for them, [`check_sql`], takes 15–30); a refusal there rolls the
//!   transaction back. Preserved tables are exempt: triggers
//!   carry their writes over.
//! * After every swap and rollback COMMIT the engine records the counters of
//!   the public that just went live in the new backup's manifest
//!   (`live_baseline`, [`live_baseline`]); table OIDs survive both swap modes.
//!   **rollback** compares each live schema it replaces against the
//!   `live_baseline` of the newest backup whose operation replaced that
//!   schema (the operation that made it live: [`rollback_baseline`]),
//!   outside and under its locks; tables kept with `--keep-tables` are
//!   exempt.
//! * A table that came into public after prepare started through a rollback
//!   (restored from a backup) is measured from that rollback's `live_baseline`
//!   ([`migration_baseline`]), not from its whole life.
//! * Without a baseline (prepared, or made live, by an earlier version) every
//!   table is *unknown*: the gate refuses unless `--allow-discard` covers it,
//!   and says why. So is every table of a schema whose record counts none of
//!   its tables: the backup that held the right one was dropped
//!   ([`rollback_writes`]).
//!
//! Refusals are one line naming the tables with their counts (the largest
//! few, then "and N more") and the two ways out ([`gate_for`]).
//!
//! # Breaking findings
//!
//! Statements that would fail or change result type, and `breaks` hazards on
//! objects a recorded statement uses ([`Impact::breaking`]), refuse the swap
//! with `--fail-on-breaking`; without it they are warnings printed before the
//! swap (and in the swap's report). A schema or workload check that cannot
//! run at all is a warning too, or a refusal with `--fail-on-breaking`
//! (nothing could be verified). A discarded-writes check that cannot run
//! always refuses: nothing can be known.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::Client;

use super::writes::{Operation, Unkeepable, compare_covered, gate_for, gate_keeping};
use super::{
    AllowDiscard, Impact, ImpactRequest, SchemaPair, StatementsReport, WorkloadOptions,
    WriteBaseline, WriteCheck, listed_check_sql, parse_check, take_baseline,
};
use crate::backups::manifest;
use crate::migration::record::MigrationState;
use crate::pg::exec::simple;
use crate::pg::ident::TableName;

/// The schema the application sees.
pub const LIVE: &str = "public";

/// What a command asks of the impact checks.
#[derive(Debug, Clone, Default)]
pub struct ImpactOptions {
    /// Discarded or unknown writes accepted (`--allow-discard`).
    pub allow_discard: AllowDiscard,
    /// Where `allow_discard` came from, for its errors: the flag, its
    /// environment variable or the config file's key (empty: the flag).
    pub allow_discard_given_as: String,
    /// Refuse when anything would break (`--fail-on-breaking`).
    pub fail_on_breaking: bool,
    /// The workload check (`--workload-roles`, `--impact-timeout`).
    pub workload: WorkloadOptions,
}

/// The schemas a migration's swap exchanges: each chosen schema and its
/// shadow, with the tables `kept` in it (by live schema).
pub fn migration_pairs(
    st: &MigrationState,
    kept: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<SchemaPair> {
    st.schemas
        .iter()
        .map(|s| SchemaPair {
            stays: kept
                .get(s)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
            ..SchemaPair::new(s, crate::pg::meta::shadow_schema_for(s))
        })
        .collect()
}

/// The tables a migration keeps (`prepare --keep-tables`), with their
/// partitions and children, by live schema.
pub async fn migration_kept(
    client: &Client,
    st: &MigrationState,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut roots: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in &st.keep_tables {
        let t = st.table_of_key(key);
        let schema = t
            .schema
            .unwrap_or_else(|| crate::pg::meta::PUBLIC.to_string());
        roots.entry(schema).or_default().push(t.name);
    }
    let mut out = BTreeMap::new();
    for (s, list) in roots {
        let mut tables: BTreeSet<String> = list.iter().cloned().collect();
        tables.extend(crate::swap::rollback::descendants(client, &s, &list).await?);
        out.insert(s, tables);
    }
    Ok(out)
}

/// A migration's tables whose writes the swap keeps: its preserved tables.
pub fn migration_exempt(st: &MigrationState) -> Vec<TableName> {
    st.writes_kept()
}

/// [`migration_exempt`] and the tables `kept` (by live schema, partitions
/// included: prepare's and the swap's own `--keep-tables`), whose writes stay
/// live too.
pub fn exempt_keeping(
    st: &MigrationState,
    kept: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<TableName> {
    let mut e = migration_exempt(st);
    e.extend(
        kept.iter()
            .flat_map(|(s, ts)| ts.iter().map(|name| TableName::in_schema(s, name))),
    );
    e
}

/// The writes since `baseline` to the live tables that are not `exempt`, with
/// the counters now (the tables the check under the locks looks at). For the
/// swap, `baseline` is the migration's (taken when prepare started) and
/// `exempt` its preserved tables; for a rollback, see [`rollback_writes`].
/// Every table of a schema of `lives` (the live schemas replaced) that the
/// baseline does not cover, or of all of them without one, is unknown, for
/// the reason that fits `op`. Read only; works inside or outside a
/// transaction.
pub async fn writes_since(
    client: &Client,
    op: Operation,
    baseline: Option<&WriteBaseline>,
    exempt: &[TableName],
    lives: &[String],
    reset: &[String],
) -> Result<(WriteBaseline, WriteCheck)> {
    let now = counters_now(client, baseline, lives).await?;
    let check = judged(op, baseline, &now, exempt, reset);
    Ok((now, check))
}

/// [`writes_since`] for a rollback: `baseline` is [`rollback_baseline`]'s,
/// `exempt` the kept tables. The baseline comes back as it was used,
/// without the schemas whose record was lost ([`without_lost_records`]),
/// for the check under the locks.
pub async fn rollback_writes(
    client: &Client,
    baseline: Option<WriteBaseline>,
    exempt: &[TableName],
    lives: &[String],
    reset: &[String],
) -> Result<(Option<WriteBaseline>, WriteBaseline, WriteCheck)> {
    let now = counters_now(client, baseline.as_ref(), lives).await?;
    let baseline = baseline.and_then(|b| without_lost_records(b, &now));
    let check = judged(Operation::Rollback, baseline.as_ref(), &now, exempt, reset);
    Ok((baseline, now, check))
}

/// The counters now of every table of `lives` and of the schemas `baseline`
/// names: a baseline names its schemas, and every live schema the operation
/// replaces is looked at, not public alone (a migration of several schemas
/// discards their writes too), nor only those the baseline covers (h48b).
async fn counters_now(
    client: &Client,
    baseline: Option<&WriteBaseline>,
    lives: &[String],
) -> Result<WriteBaseline> {
    let mut schemas = baseline.map_or_else(Vec::new, |b| b.schemas.clone());
    schemas.extend(
        lives
            .iter()
            .filter(|s| !schemas.contains(s))
            .cloned()
            .collect::<Vec<_>>(),
    );
    take_baseline(client, &schemas)
        .await
        .context("checking the tables' write counters")
}

/// [`compare_covered`], in `op`'s words.
fn judged(
    op: Operation,
    baseline: Option<&WriteBaseline>,
    now: &WriteBaseline,
    exempt: &[TableName],
    reset: &[String],
) -> WriteCheck {
    let mut check = compare_covered(baseline, now, exempt, op, reset);
    // A rollback's baseline was taken when the table's schema went live
    // (h49a: said of public for a table of billing).
    if op == Operation::Rollback {
        for u in &mut check.unknown {
            let current = super::writes::current_schemas([&u.at]);
            if baseline.is_some() {
                u.reason = u
                    .reason
                    .replace(
                        "since prepare started",
                        &format!("since {current} went live"),
                    )
                    .replace("when prepare started", &format!("when {current} went live"));
            }
            u.reason = u.reason.replace("the current public", &current);
        }
    }
    check
}

/// [`writes_since`] for the swap `req` describes.
async fn swap_writes(
    client: &Client,
    req: &ImpactRequest<'_>,
) -> Result<(WriteBaseline, WriteCheck)> {
    writes_since(
        client,
        Operation::Swap,
        req.baseline,
        req.exempt,
        &req.lives(),
        &[],
    )
    .await
}

/// The whole report for a swap (`req.baseline` `None`: every table's writes
/// unknown, as the swap would see them). Read only; `client` must not be in a
/// transaction.
pub async fn report(client: &Client, req: &ImpactRequest<'_>) -> Result<Impact> {
    let (_, writes) = swap_writes(client, req).await?;
    let mut impact = Impact::collect(
        client,
        &ImpactRequest {
            baseline: None,
            ..req.clone()
        },
    )
    .await?;
    impact.set_writes(writes);
    note_older_snapshots(client, req, &mut impact).await?;
    Ok(impact)
}

/// The note about transactions older than the baseline
/// ([`blockers::older_snapshots`](super::blockers::older_snapshots)).
async fn note_older_snapshots(
    client: &Client,
    req: &ImpactRequest<'_>,
    impact: &mut Impact,
) -> Result<()> {
    if let Some(base) = req.baseline {
        impact
            .notes
            .extend(super::blockers::older_snapshots(client, base.taken_at).await?);
    }
    Ok(())
}

/// The baseline a rollback compares the live schemas `lives` with: for each,
/// the `live_baseline` of the newest backup whose swap or rollback replaced
/// it, the moment its current tables went live. `all` is every backup,
/// newest first. Not the newest backup's alone: a swap of public alone
/// leaves a `billing` that went live with an older swap of public and
/// billing, whose writes a rollback to that swap's backup discards (h48b:
/// they went uncounted), and a newest baseline of schemas the rollback does
/// not replace counts writes it keeps. A schema whose newest replacement
/// recorded no counters is not covered ([`writes_since`] says its tables
/// unknown); `None` when none is. A schema whose record predates a reset of
/// the statistics that a newer one follows is left out too, and returned
/// with the others so reset: its tables are unknown for that reason, the
/// others' counted (h49a: one stale record made every table unknown).
pub fn rollback_baseline(
    all: &[manifest::BackupRow],
    lives: &[String],
) -> (Option<WriteBaseline>, Vec<String>) {
    let mut merged: Option<WriteBaseline> = None;
    let mut reset: Vec<String> = Vec::new();
    let mut decided: HashSet<&str> = HashSet::new();
    for b in all {
        for map in b.manifest.schema_maps() {
            let Some(live) = lives.iter().find(|l| **l == map.live) else {
                continue;
            };
            if !decided.insert(live) {
                continue;
            }
            let Some(base) = b
                .manifest
                .live_baseline
                .as_ref()
                .filter(|base| base.schemas.contains(live))
            else {
                continue;
            };
            let tables = base
                .tables
                .iter()
                .filter(|t| t.key.schema == *live)
                .cloned();
            match &mut merged {
                None => {
                    merged = Some(WriteBaseline {
                        schemas: vec![live.clone()],
                        tables: tables.collect(),
                        ..base.clone()
                    });
                }
                Some(m) if m.stats_reset != base.stats_reset => reset.push(live.clone()),
                Some(m) => {
                    m.schemas.push(live.clone());
                    m.tables.extend(tables);
                    m.taken_at = m.taken_at.min(base.taken_at);
                    m.track_counts &= base.track_counts;
                }
            }
        }
    }
    (merged, reset)
}

/// A rollback's `base` ([`rollback_baseline`]) without the schemas whose
/// record counts none of the tables they hold `now`: the backup of such a
/// schema's latest going live, which held its record, is gone (dropped by
/// `cleanup`, which had skipped an older busy one, or by hand), and an older
/// record was picked, under which every row of today's tables would count as
/// written since (h49a F5). Their tables are unknown instead. `None` when no
/// schema is left.
fn without_lost_records(mut base: WriteBaseline, now: &WriteBaseline) -> Option<WriteBaseline> {
    let current: HashSet<u32> = now.tables.iter().map(|t| t.oid).collect();
    let lost: Vec<String> = base
        .schemas
        .iter()
        .filter(|s| {
            let mut theirs = base
                .tables
                .iter()
                .filter(|t| t.key.schema == **s)
                .peekable();
            let holds = now.tables.iter().any(|t| t.key.schema == **s);
            holds && theirs.peek().is_some() && theirs.all(|t| !current.contains(&t.oid))
        })
        .cloned()
        .collect();
    base.schemas.retain(|s| !lost.contains(s));
    base.tables.retain(|t| !lost.contains(&t.key.schema));
    (!base.schemas.is_empty()).then_some(base)
}

/// The baseline a migration's swap compares with: the counters recorded when
/// prepare started, plus, for tables that came into public later through a
/// rollback (or another swap), the counters recorded right after the first
/// such COMMIT (that backup's `live_baseline`): their rows from before are not
/// writes since prepare. `None` for a migration prepared without a baseline.
pub async fn migration_baseline(
    client: &Client,
    st: &MigrationState,
) -> Result<Option<WriteBaseline>> {
    let Some(base) = &st.details.write_baseline else {
        return Ok(None);
    };
    let mut merged = base.clone();
    let mut known: HashSet<u32> = base.tables.iter().map(|t| t.oid).collect();
    // Oldest first: a table is measured from the first time it went live
    // after prepare started.
    for b in manifest::list_backups(client).await?.iter().rev() {
        let Some(live) = &b.manifest.live_baseline else {
            continue;
        };
        if live.taken_at <= base.taken_at {
            continue;
        }
        for t in &live.tables {
            if known.insert(t.oid) {
                merged.tables.push(t.clone());
            }
        }
    }
    Ok(Some(merged))
}

/// The report of the migration `st` as its swap would see it now.
pub async fn migration_report(
    client: &Client,
    st: &MigrationState,
    workload: &WorkloadOptions,
    lock_timeout: Duration,
) -> Result<Impact> {
    let kept = migration_kept(client, st).await?;
    migration_report_keeping(client, st, &kept, workload, lock_timeout).await
}

/// [`migration_report`] with the tables `kept` (the swap's own
/// `--keep-tables` added to prepare's).
pub async fn migration_report_keeping(
    client: &Client,
    st: &MigrationState,
    kept: &BTreeMap<String, BTreeSet<String>>,
    workload: &WorkloadOptions,
    lock_timeout: Duration,
) -> Result<Impact> {
    let pairs = migration_pairs(st, kept);
    let exempt = exempt_keeping(st, kept);
    let baseline = migration_baseline(client, st).await?;
    report(
        client,
        &ImpactRequest {
            pairs: &pairs,
            baseline: baseline.as_ref(),
            exempt: &exempt,
            workload: workload.clone(),
            lock_timeout,
        },
    )
    .await
}

/// The writes part of a report.
pub fn writes_of(impact: &Impact) -> WriteCheck {
    WriteCheck {
        discarded: impact.discarded_writes.clone(),
        unknown: impact.unknown_writes.clone(),
    }
}

/// How many breaking findings a refusal names before "and N more".
const BREAKING_LISTED: usize = 3;

fn breaking_refusal(op: Operation, breaking: &[String]) -> String {
    let mut listed: Vec<String> = breaking.iter().take(BREAKING_LISTED).cloned().collect();
    if breaking.len() > BREAKING_LISTED {
        listed.push(format!("and {} more", breaking.len() - BREAKING_LISTED));
    }
    let (subject, command) = match op {
        Operation::Swap => ("the swap", "pgshift swap --dry-run"),
        Operation::Rollback => ("the rollback", "pgshift rollback --dry-run"),
    };
    format!(
        "{subject} would break statements the application runs, and --fail-on-breaking refuses that; nothing was changed: {} (the whole report: {command})",
        listed.join("; ")
    )
}

/// Why `op` would refuse the breaking findings of `impact` with
/// `--fail-on-breaking` (`fail_on_breaking`), if it would.
pub fn breaking_refusal_of(
    op: Operation,
    impact: &Impact,
    fail_on_breaking: bool,
) -> Option<String> {
    let breaking = impact.breaking();
    (fail_on_breaking && !breaking.is_empty()).then(|| breaking_refusal(op, &breaking))
}

/// Why a swap with `opts` would refuse `impact` now (each an `error:`
/// text), in the order the swap checks them: discarded or unknown writes
/// not allowed, then breaking findings with `--fail-on-breaking`. Every
/// reason, so that mending one does not only uncover the next.
pub fn refusals(impact: &Impact, opts: &ImpactOptions) -> Vec<String> {
    [
        gate_for(Operation::Swap, &writes_of(impact), &opts.allow_discard).err(),
        breaking_refusal_of(Operation::Swap, impact, opts.fail_on_breaking),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What the checks before a swap let through.
#[derive(Debug, Clone)]
pub struct Checked {
    pub impact: Impact,
    /// public's tables and counters as the check saw them (what the check
    /// under the locks looks at again).
    pub listed: WriteBaseline,
    /// Breaking findings (without `--fail-on-breaking`) and checks that could
    /// not run, one line each.
    pub warnings: Vec<String>,
}

/// The checks before a swap, outside its locks. Discarded or unknown writes
/// refuse first (cheap, and a refusal holds nothing), unless
/// `opts.allow_discard` covers them; then the rest of the report runs, and
/// breaking findings refuse with `--fail-on-breaking` or become warnings.
/// `Err` is a refusal (exit 1; nothing was changed) or a check that could
/// not run.
pub async fn before_swap(
    client: &Client,
    req: &ImpactRequest<'_>,
    opts: &ImpactOptions,
) -> Result<Checked> {
    let (listed, writes) = swap_writes(client, req).await?;
    gate_for(Operation::Swap, &writes, &opts.allow_discard).map_err(|why| anyhow!(why))?;
    // Named, one table each, as a rollback names them: in the log and in
    // the report's warnings.
    let mut discarding = Vec::new();
    for w in write_lines(&writes) {
        let w = format!("discarding writes since prepare started (--allow-discard): {w}");
        tracing::warn!("{w}");
        discarding.push(w);
    }
    let (impact, mut warnings) =
        before_moves(client, Operation::Swap, req, writes, opts.fail_on_breaking).await?;
    warnings.splice(0..0, discarding);
    Ok(Checked {
        impact,
        listed,
        warnings,
    })
}

/// The schema, workload and blockers parts of the report, as the checks
/// before `op`'s locks run them, completed with the `writes` the caller
/// checked (`req.baseline` is not used). A check that cannot run refuses
/// with `fail_on_breaking` (it needs them), else is a warning; breaking
/// findings refuse with `fail_on_breaking`, else are logged and returned as
/// warnings.
pub async fn before_moves(
    client: &Client,
    op: Operation,
    req: &ImpactRequest<'_>,
    writes: WriteCheck,
    fail_on_breaking: bool,
) -> Result<(Impact, Vec<String>)> {
    let subject = match op {
        Operation::Swap => "the swap",
        Operation::Rollback => "the rollback",
    };
    let mut warnings = Vec::new();
    let mut impact = match Impact::collect(
        client,
        &ImpactRequest {
            baseline: None,
            ..req.clone()
        },
    )
    .await
    {
        Ok(i) => i,
        Err(e) if e.chain().any(|c| c.is::<crate::error::UserError>()) => return Err(e),
        Err(e) if fail_on_breaking => {
            return Err(e.context(
                "the schema and workload checks could not run, and --fail-on-breaking needs them; nothing was changed",
            ));
        }
        Err(e) => {
            let w = format!(
                "the schema and workload checks could not run, so what {subject} breaks is unknown: {e:#}"
            );
            tracing::warn!("{w}");
            warnings.push(w.clone());
            Impact {
                statements: StatementsReport::not_checked(w),
                ..Impact::default()
            }
        }
    };
    impact.set_writes(writes);
    note_older_snapshots(client, req, &mut impact).await?;
    if let Some(why) = breaking_refusal_of(op, &impact, fail_on_breaking) {
        return Err(anyhow!(why));
    }
    tracing::info!("{}", impact.summary_for(op));
    if let Some(why) = &impact.statements.not_checked {
        tracing::info!("{why}");
    }
    // Statements this role may not see: a blind spot of the check, said
    // where it is seen (a CI gate would otherwise pass them silently).
    for u in impact
        .statements
        .unchecked
        .iter()
        .filter(|u| u.query == super::workload::HIDDEN_QUERY)
    {
        let w = if fail_on_breaking {
            format!("{}; --fail-on-breaking cannot judge them", u.reason)
        } else {
            u.reason.clone()
        };
        tracing::warn!("{w}");
        warnings.push(w);
    }
    for b in impact
        .breaking()
        .into_iter()
        .chain(impact.rejecting())
        .chain(impact.row_access())
    {
        tracing::warn!("{b}");
        warnings.push(b);
    }
    for n in impact.notes.iter().filter(|n| *n != super::RENAME_NOTE) {
        tracing::warn!("{n}");
    }
    if !impact.blockers.is_empty() {
        let pids: Vec<String> = impact
            .blockers
            .iter()
            .map(|b| format!("pid {} ({}, {})", b.pid, b.role, b.state))
            .collect();
        tracing::warn!(
            "sessions that may hold {subject} up (it retries on a lock timeout): {}",
            pids.join(", ")
        );
    }
    Ok((impact, warnings))
}

/// The discarded-writes check under the swap's locks (nobody can write any
/// more): one query ([`listed_check_sql`]: the tables the check before the
/// locks saw, by OID) in the swap transaction, then the gate. A refusal is an
/// error, which rolls the transaction back.
#[derive(Debug, Clone)]
pub struct UnderLocks<'a> {
    pub op: Operation,
    pub baseline: &'a WriteBaseline,
    /// The check before the locks: the tables to look at.
    pub listed: &'a WriteBaseline,
    pub exempt: Vec<TableName>,
    pub allow: &'a AllowDiscard,
    /// A rollback's tables that `--keep-tables` cannot keep (for its advice).
    pub unkeepable: &'a Unkeepable,
}

impl UnderLocks<'_> {
    /// Run it on the swap's session (inside its transaction).
    pub async fn check(&self, client: &Client) -> Result<WriteCheck> {
        let started = std::time::Instant::now();
        let sql = listed_check_sql(self.baseline, self.listed, &self.exempt);
        let msgs = simple(client, &sql)
            .await
            .context("checking for discarded writes under the swap's locks")?;
        let json = msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .context("the discarded-writes check returned no row")?;
        let check = parse_check(&json)?;
        tracing::debug!(
            ms = started.elapsed().as_secs_f64() * 1000.0,
            tables = self.baseline.tables.len(),
            "discarded-writes check under the locks"
        );
        gate_keeping(self.op, &check, self.allow, self.unkeepable).map_err(|why| anyhow!(why))?;
        Ok(check)
    }

    /// The line `--dry-run` shows for it.
    pub fn preview_note() -> String {
        "-- discarded-writes check (write counters against the baseline)".to_string()
    }
}

/// The counters of public's tables right after a swap or rollback COMMIT, for
/// the next rollback's check. The sessions that wrote inside the swap (the
/// final replay of preserved tables, kept tables' rows) publish their counts
/// first, so they are not mistaken for later writes: on PostgreSQL 15+ with
/// `pg_stat_force_next_flush`; on 13 and 14, which have no such function, a
/// backend sends its counts to the statistics collector when it goes idle at
/// least 500 ms (`PGSTAT_STAT_INTERVAL`) after its last sending, and a reader
/// accepts a statistics file up to 500 ms old: so both sessions run a
/// statement after [`COLLECTOR_SEND_INTERVAL`] (they send before they answer)
/// and the counters are read [`COLLECTOR_FILE_AGE`] later, about 1.2 s after
/// the COMMIT (no lock is held any more). That is as sure as the collector is
/// (it may fall behind under load, and drops what it cannot receive).
pub async fn live_baseline(
    swap_session: &Client,
    control: &Client,
    schemas: &[String],
) -> Result<WriteBaseline> {
    let version: i32 = control
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .context("reading the server version")?
        .get(0);
    if version >= 150_000 {
        for c in [swap_session, control] {
            c.batch_execute("SELECT pg_catalog.pg_stat_force_next_flush()")
                .await
                .context("publishing the swap's own write counters")?;
        }
    } else {
        tokio::time::sleep(COLLECTOR_SEND_INTERVAL).await;
        for c in [swap_session, control] {
            c.batch_execute("SELECT 1")
                .await
                .context("publishing the swap's own write counters")?;
        }
        tokio::time::sleep(COLLECTOR_FILE_AGE).await;
    }
    take_baseline(control, schemas).await
}

/// PostgreSQL 13 and 14: a backend sends its counts to the statistics
/// collector at most this often (`PGSTAT_STAT_INTERVAL`, 500 ms), with margin.
const COLLECTOR_SEND_INTERVAL: Duration = Duration::from_millis(550);

/// PostgreSQL 13 and 14: a reader accepts a statistics file up to
/// `PGSTAT_STAT_INTERVAL` (500 ms) old; waiting longer than that after the
/// counts were sent gives a file the collector wrote after it received them.
const COLLECTOR_FILE_AGE: Duration = Duration::from_millis(650);

/// The rollback's refusal, if `allow` does not cover `check`; it advises
/// `--keep-tables` only for the tables not in `unkeepable`.
pub fn rollback_gate(
    check: &WriteCheck,
    allow: &AllowDiscard,
    unkeepable: &Unkeepable,
) -> Result<()> {
    gate_keeping(Operation::Rollback, check, allow, unkeepable).map_err(|why| anyhow!(why))
}

/// One line per discarded or unknown write, for logs and warnings.
pub fn write_lines(check: &WriteCheck) -> Vec<String> {
    check
        .discarded
        .iter()
        .map(|d| format!("{}: {}", d.table, d.counts()))
        .chain(
            check
                .unknown
                .iter()
                .map(|u| format!("{}: unknown ({})", u.table, u.reason)),
        )
        .collect()
}

/// `--allow-discard`'s tables must be tables of the schemas `op` replaces
/// (`lives`): a name that matches none, a typo, would let nothing through
/// without a word. Refused (exit 2) before anything changes, naming where
/// the list came from (`given_as`: the flag, its variable or the config
/// file's key; empty: the flag).
pub async fn check_allowed_tables(
    client: &Client,
    op: Operation,
    allow: &AllowDiscard,
    given_as: &str,
    lives: &[String],
) -> Result<()> {
    let AllowDiscard::Tables(names) = allow else {
        return Ok(());
    };
    let given_as = if given_as.is_empty() {
        "--allow-discard"
    } else {
        given_as
    };
    for t in names {
        let s = t.schema_or_public();
        if !lives.iter().any(|l| l == s) {
            crate::refuse!(
                "{given_as}: {t} is not in a schema {} replaces ({}); nothing was changed",
                op.subject(),
                lives
                    .iter()
                    .map(|l| crate::pg::ident::display_ident(l))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let tables = crate::swap::rollback::tables_of(client, s).await?;
        if !tables.contains(&t.name) {
            crate::refuse!(
                "{given_as}: {} has no table {}{}; nothing was changed",
                crate::pg::ident::display_ident(s),
                crate::pg::ident::display_ident(&t.name),
                crate::pg::ident::fold_hint_among(&t.name, &tables)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{FailingStatement, Hazard};
    use super::*;

    fn impact_with_failing(n: usize) -> Impact {
        let mut i = Impact::default();
        i.statements.not_checked = None;
        i.statements.failing = (0..n)
            .map(|k| FailingStatement {
                query: format!("SELECT c{k} FROM gone"),
                calls: k as i64 + 1,
                error: "relation \"gone\" does not exist".into(),
            })
            .collect();
        i
    }

    #[test]
    fn refusal_follows_the_options() {
        let i = impact_with_failing(5);
        let mut opts = ImpactOptions::default();
        assert_eq!(refusals(&i, &opts), Vec::<String>::new());
        opts.fail_on_breaking = true;
        let why = refusals(&i, &opts).concat();
        assert!(why.contains("--fail-on-breaking"), "{why}");
        assert!(why.contains("SELECT c2 FROM gone"), "{why}");
        assert!(!why.contains("SELECT c3 FROM gone"), "{why}");
        assert!(why.contains("and 2 more"), "{why}");
        // A breaks hazard counts only when a recorded statement uses the object.
        let mut h = Impact::default();
        h.statements.not_checked = None;
        h.hazards.push(Hazard {
            code: "TABLE_DROPPED".into(),
            effect: super::super::Effect::Breaks,
            object: "public.gone".into(),
            detail: "dropped".into(),
        });
        assert!(refusals(&h, &opts).is_empty());
        h.statements.used_objects = vec!["public.gone".into()];
        assert!(!refusals(&h, &opts).is_empty());
    }
}
