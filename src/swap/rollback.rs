//! `rollback`: make a backup schema the destination's public again, with the
//! same object-level swap as `swap` ([`engine::execute`]: locks in a stable
//! order under a short lock_timeout, retries, all or nothing). Extensions stay
//! in public. The public being replaced becomes a new backup with its own
//! manifest (kind `rollback`), so a rollback can itself be rolled back.
//!
//! `--keep-tables t`: the current public's `t` stays (rows, owned sequences
//! and all); the backup's own `t` stays in the backup schema. Foreign keys
//! that would then cross schemas are fixed inside the transaction:
//!
//! - a public table's key that points into a backup schema is re-pointed to
//!   the public table of the same name (dropped and re-added NOT VALID, then
//!   validated after the commit, which does not block reads or writes);
//! - a backup table's key that points out of its backup (at a table that
//!   stayed live) is dropped and recorded in that backup's manifest
//!   (`detached_foreign_keys`); it is re-created when that backup is restored.
//!
//! Before anything changes the backup is checked against its manifest (the
//! same check as `verify`); a mismatch refuses the rollback unless `--force`.
//! The shadow schema of a prepared migration is never touched.
//!
//! Writes the application made to the current public since it went live
//! would stay in the new backup: they refuse the rollback (before it and
//! again under its locks) unless the tables are kept or `--allow-discard`
//! covers them; the newest backup's manifest holds the counters of this
//! public when it went live (see [`crate::swap::impact::gate`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;
use tracing::instrument::WithSubscriber;

use crate::backups::manifest::{self, BackupRow, ForeignKeyDef, Manifest};
use crate::backups::verify::{self, VerifyReport};
use crate::error::VerificationFailed;
use crate::migration::derive::Destination;
use crate::migration::session::Session;
use crate::pg::catalog;
use crate::pg::exec::{exec, pg_error_as, query_map};
use crate::pg::ident::{TableName, display_ident, qualified, quote_ident};
use crate::pg::locks_budget::Budget;
use crate::prepare::sync::{self, CreatedFk};
use crate::swap::engine::{self, Exchange, InTx, Moved, Moves, Origin, Policy};
use crate::swap::fence::{self, FencedSequence, Fences};
use crate::swap::impact::gate::{self, UnderLocks};
use crate::swap::impact::{
    AllowDiscard, DiscardedWrite, Impact, ImpactRequest, Operation, SchemaPair, Unkeepable,
    UnknownWrite, WorkloadOptions, WriteBaseline, WriteCheck,
};
use crate::swap::mode::Chosen;

/// Which backup to restore.
#[derive(Debug, Clone)]
pub enum Target {
    Latest,
    /// As typed: a unix-ms timestamp or a backup schema name.
    Named(String),
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub target: Target,
    pub keep_tables: Vec<TableName>,
    pub force: bool,
    /// Writes to the current public that may be discarded (`--allow-discard`).
    pub allow_discard: AllowDiscard,
    /// Where `allow_discard` came from (see `gate::check_allowed_tables`).
    pub allow_discard_given_as: String,
    /// Refuse when the rollback would break recorded statements
    /// (`--fail-on-breaking`).
    pub fail_on_breaking: bool,
    /// The impact report's workload check (`--workload-roles`, `--impact-timeout`).
    pub workload: WorkloadOptions,
    /// Create the foreign keys between kept and restored tables NOT VALID
    /// even when rows do not match (`--allow-fk-violations`).
    pub allow_fk_violations: bool,
    /// Only the plan is wanted: a refusal that a real run gives at once is a
    /// reason in the plan instead (a prepared migration, say).
    pub dry_run: bool,
}

/// Everything decided before the transaction (read only).
#[derive(Debug, Clone)]
pub struct Plan {
    pub restore: BackupRow,
    /// One pair per schema of the backup (public's first): the live schema,
    /// the backup schema restored into it, the tables that stay where they
    /// are (the live ones live, the backup's namesakes in the backup,
    /// partitions included) and the tables it will have afterwards.
    pub pairs: Vec<engine::Pair>,
    /// The kept tables as keys (`name` in public, `schema.name` elsewhere).
    pub keep: BTreeSet<String>,
    /// Tables kept because the backup was made without them (an earlier
    /// `--keep-tables`), not because they were asked for.
    pub auto_kept: Vec<String>,
    pub verification: VerifyReport,
    pub warnings: Vec<String>,
    /// Writes to the current public since it went live, to tables not kept.
    pub writes: WriteCheck,
    /// The counters of the current public when it went live (the newest
    /// backup's manifest), if recorded.
    pub live_baseline: Option<WriteBaseline>,
    /// public's tables and counters when the plan was made (what the check
    /// under the locks looks at again).
    pub listed: WriteBaseline,
    pub allow_discard: AllowDiscard,
    pub fail_on_breaking: bool,
    pub workload: WorkloadOptions,
    /// Written tables that `--keep-tables` could not keep (objects of the
    /// backup depend on its own copy), with the reason, for the refusal's advice.
    pub unkeepable: Unkeepable,
    /// The foreign keys the rollback creates between kept and restored
    /// tables, checked against the rows they would join ([`joining_keys`]).
    pub fk_check: sync::FkCheck,
    /// Why the rollback refuses those keys' rows, if it does.
    pub fk_refusal: Option<String>,
    /// Why the rollback refuses these writes, if it does.
    pub refusal: Option<String>,
    /// Why it refuses the backup (it no longer matches its manifest, and no
    /// `--force`): exit 3, before any other refusal.
    pub mismatch: Option<String>,
    /// Why a real run refuses at once (exit 2): a prepared migration keeps
    /// the live tables in sync (kept for the dry run, [`RollbackOptions::dry_run`]).
    pub prepared: Option<String>,
    /// With kept tables: the backup holds more than they are (views,
    /// functions, types, other tables), which goes live, so what is left of
    /// it afterwards is no version of the database to restore.
    pub takes_more_than_kept: bool,
}

/// A foreign key the rollback changed.
#[derive(Debug, Clone, Serialize)]
pub struct FkChange {
    pub constraint: String,
    /// `schema.table` holding the key, after the rollback.
    pub table: String,
    /// `repointed` (now references `references`), `detached` (dropped from a
    /// backup table, recorded in that backup's manifest) or `reattached`
    /// (re-created from the restored backup's manifest).
    pub action: String,
    pub references: String,
}

/// What a rollback reports.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub restored_schema: String,
    #[serde(flatten)]
    pub mode: Chosen,
    pub restored_timestamp: i64,
    pub backup_schema: String,
    pub backup_timestamp: i64,
    pub kept_tables: Vec<String>,
    #[serde(flatten)]
    pub moved: Moved,
    /// The restored backup schema was empty afterwards and was dropped with its
    /// manifest (false when kept tables' namesakes remain in it).
    pub restored_schema_dropped: bool,
    /// Live schemas dropped because the restored backup's swap created them
    /// (schemas only the source had) and the rollback left them empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_schemas: Vec<String>,
    pub foreign_keys: Vec<FkChange>,
    pub fk_not_valid: Vec<String>,
    /// The backup matched its manifest (false only with `--force`).
    pub verified: bool,
    pub warnings: Vec<String>,
    /// A migration of several schemas: each live schema and its backup
    /// schema (absent for public alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::backups::manifest::SchemaMap>,
    /// The impact report checked before the rollback (the swap's shape).
    pub impact: Impact,
}

/// A dry run's output.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackPreview {
    pub restore_schema: String,
    #[serde(flatten)]
    pub mode: Chosen,
    pub restore_timestamp: i64,
    pub backup_schema: String,
    pub kept_tables: Vec<String>,
    #[serde(flatten)]
    pub moves: Moves,
    pub verification: VerifyReport,
    pub warnings: Vec<String>,
    /// The rollback's need against the destination's lock table; one that
    /// does not fit is refused before any lock.
    pub swap_lock_budget: Budget,
    /// Writes to the current public since it went live that the rollback
    /// would leave in the new backup (tables not kept).
    pub discarded_writes: Vec<DiscardedWrite>,
    /// Tables whose writes since then cannot be known.
    pub unknown_writes: Vec<UnknownWrite>,
    /// Rows of kept or restored tables that the foreign keys the rollback
    /// creates between them would not match (as `swap --dry-run` reports).
    pub fk_violations: Vec<sync::FkViolation>,
    /// Why the rollback would refuse (discarded or unknown writes not
    /// covered by `--allow-discard`), or null: the first of `refusals`.
    pub refusal: Option<String>,
    /// Every reason it would refuse for, in the order it checks them.
    pub refusals: Vec<String>,
    /// A migration of several schemas: each live schema and its backup
    /// schema (absent for public alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::backups::manifest::SchemaMap>,
    /// What the rollback would do to the running application (the swap's
    /// impact object; its writes are `discarded_writes`/`unknown_writes`).
    pub impact: Impact,
}

/// Choose the backup and check everything; changes nothing.
pub async fn plan(client: &Client, opts: &RollbackOptions) -> Result<Plan> {
    let restore = match &opts.target {
        Target::Named(text) => verify::find(client, text).await?,
        Target::Latest => verify::latest(client, "roll back to").await?,
    };
    let schema = restore.schema_name.clone();
    // What a rollback with kept tables left of the backup it restored: the
    // copies of those tables alone. Restoring it would replace every live
    // table with them.
    if let Some(at) = restore.manifest.restored_since() {
        let all = crate::backups::manifest::list_backups(client).await?; // newest first
        // A backup to point at: restorable, with tables of its own.
        let whole = |b: &&crate::backups::manifest::BackupRow| {
            b.manifest.restored_since().is_none()
                && b.manifest.dropping_since.is_none()
                && !b.manifest.tables.is_empty()
        };
        let undo = all
            .iter()
            .filter(whole)
            .find(|b| b.manifest.restored_from.as_deref() == Some(schema.as_str()))
            .map(|b| {
                format!(
                    "; {} holds what was live before that rollback (`pgshift rollback --timestamp {}` undoes it)",
                    b.schema_name, b.ts
                )
            })
            .or_else(|| {
                all.iter()
                    .find(whole)
                    .map(|b| {
                        format!(
                            "; the newest backup that is a whole version is {} (`--timestamp {}`)",
                            b.schema_name, b.ts
                        )
                    })
            })
            .unwrap_or_default();
        crate::refuse!(
            "{schema} cannot be rolled back to: {}{undo}; nothing was changed",
            verify::restored_remnant(&restore, &at)
        );
    }
    let facts = verify::schema_facts(client, &schema).await?;
    // A backup whose schema is gone does not match its manifest: exit 3,
    // as `verify` reports it.
    if !facts.exists {
        return Err(anyhow::Error::new(VerificationFailed(format!(
            "backup {} has a manifest but its schema {schema} no longer exists; there is nothing to roll back to (`pgshift list` shows the others)",
            restore.ts
        ))));
    }
    // Nor one without pgshift's marker (`verify`'s `unmarked_schema`).
    if !facts.ours {
        return Err(anyhow::Error::new(VerificationFailed(format!(
            "schema {schema} does not carry pgshift's marker comment (it was not created by pgshift, or was replaced); not restoring it, even with --force"
        ))));
    }
    verify::readable(client, &restore).await?;
    let triggers = Destination::observe(client).await?.sync_triggers_on_live();
    let prepared = (!triggers.is_empty()).then(|| format!(
        "a prepared migration keeps preserved tables in sync with triggers on the live tables ({}); finish it with `pgshift swap` or drop it with `pgshift abort` before rolling back",
        triggers.join(", ")
    ));
    if let (Some(why), false) = (&prepared, opts.dry_run) {
        crate::refuse!("{why}");
    }

    let maps = restore.manifest.schema_maps();
    let backups: Vec<String> = maps.iter().map(|m| m.backup.clone()).collect();
    for m in maps.iter().filter(|m| m.backup != schema) {
        let facts = verify::schema_facts(client, &m.backup).await?;
        if !facts.exists || !facts.ours {
            return Err(anyhow::Error::new(VerificationFailed(format!(
                "backup {} holds schema {} in {}, which no longer exists or does not carry pgshift's marker comment; not restoring it (`pgshift list` shows the others)",
                restore.ts, m.live, m.backup
            ))));
        }
    }
    let lives: Vec<String> = maps.iter().map(|m| m.live.clone()).collect();
    gate::check_allowed_tables(
        client,
        Operation::Rollback,
        &opts.allow_discard,
        &opts.allow_discard_given_as,
        &lives,
    )
    .await?;
    let mut warnings = Vec::new();
    let mut asked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut live_tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &maps {
        live_tables.insert(m.live.clone(), tables_of(client, &m.live).await?);
    }
    for t in &opts.keep_tables {
        let s = t.schema_or_public();
        let Some(tables) = live_tables.get(s) else {
            crate::refuse!(
                "--keep-tables: {t} is not in a schema of this backup ({})",
                lives.join(", ")
            );
        };
        if !tables.contains(&t.name) {
            crate::refuse!(
                "--keep-tables: {s} has no table {}{}; nothing was changed",
                display_ident(&t.name),
                crate::pg::ident::fold_hint_among(&t.name, tables)
            );
        }
        asked
            .entry(s.to_string())
            .or_default()
            .insert(t.name.clone());
    }
    // Every asked table, with its live schema and its backup's: each
    // schema's kept tables are judged beside the others' (a default of
    // public's `s` drawing from `app2.s_log`'s sequence stays with `s` when
    // both are kept).
    let asked_all: Vec<(&str, &str, String)> = maps
        .iter()
        .flat_map(|m| {
            asked
                .get(&m.live)
                .into_iter()
                .flatten()
                .map(|t| (m.live.as_str(), m.backup.as_str(), t.clone()))
        })
        .collect();
    let by = |backup: bool| -> Vec<(String, String)> {
        asked_all
            .iter()
            .map(|(l, b, t)| ((if backup { *b } else { *l }).to_string(), t.clone()))
            .collect()
    };
    let (asked_everywhere, asked_live) = (by(true), by(false));
    let mut pairs = Vec::new();
    let mut auto_kept = Vec::new();
    let mut keep_keys = BTreeSet::new();
    // Each backup schema's tables, and the live tables kept without being
    // asked (they stayed live when the backup was made: it has no copy).
    let mut backup_tables_of = HashMap::new();
    let mut auto_of: HashMap<&str, Vec<String>> = HashMap::new();
    for m in &maps {
        let backup_tables = tables_of(client, &m.backup).await?;
        let asked_here = asked.get(&m.live);
        let auto: Vec<String> = live_tables[&m.live]
            .iter()
            .filter(|t| {
                restore
                    .manifest
                    .kept_tables
                    .contains(&crate::pg::meta::table_display(&m.live, t))
                    && !backup_tables.contains(*t)
                    && !asked_here.is_some_and(|a| a.contains(*t))
            })
            .cloned()
            .collect();
        auto_of.insert(m.live.as_str(), auto);
        backup_tables_of.insert(m.live.as_str(), backup_tables);
    }
    // Every kept table, by live schema: each schema's kept tables are
    // warned about beside the others'.
    let kept_live: Vec<(String, String)> = asked_live
        .iter()
        .cloned()
        .chain(
            auto_of
                .iter()
                .flat_map(|(l, ts)| ts.iter().map(|t| (l.to_string(), t.clone()))),
        )
        .collect();
    for m in &maps {
        let (live, backup) = (m.live.as_str(), m.backup.as_str());
        let backup_tables = &backup_tables_of[live];
        let asked_here = asked.remove(live).unwrap_or_default();
        let auto_here = auto_of.remove(live).unwrap_or_default();
        auto_kept.extend(
            auto_here
                .iter()
                .map(|t| crate::pg::meta::table_display(live, t)),
        );
        if !auto_here.is_empty() {
            warnings.push(format!(
                "{} stayed live when {backup} was made, so the backup has no copy of them: the rollback keeps the live ones of {} as they are",
                auto_here
                    .iter()
                    .map(|t| crate::pg::meta::table_shown(live, t))
                    .join(", "),
                crate::pg::ident::display_ident(live)
            ));
        }
        let roots: Vec<String> = asked_here.iter().cloned().chain(auto_here).collect();
        let mut keep: BTreeSet<String> = roots.iter().cloned().collect();
        // Partitions and inheritance children go where their parent goes.
        let live_side = descendants(client, live, &roots).await?;
        let backup_side = descendants(client, backup, &roots).await?;
        warnings.extend(unrelated_namesakes(
            (live, &live_tables[live]),
            (backup, backup_tables),
            (&live_side, &backup_side),
            &roots,
        ));
        keep.extend(live_side.iter().cloned());
        keep.extend(backup_side.iter().cloned());
        // Such a table stays where it is: attached to a table that moves, it
        // would end up attached across schemas (rows of the restored public
        // in a backup, say).
        let mut torn = Vec::new();
        for (schema, stays, tables) in [
            (backup, only_in(&live_side, &backup_side), backup_tables),
            (live, only_in(&backup_side, &live_side), &live_tables[live]),
        ] {
            let stays: Vec<String> = stays.into_iter().filter(|t| tables.contains(t)).collect();
            for (t, other_schema, other) in inheritance_links(client, schema, &stays).await? {
                if other_schema != schema || !keep.contains(&other) {
                    torn.push(format!(
                        "{} (attached to {})",
                        crate::pg::meta::table_shown(schema, &t),
                        crate::pg::meta::table_shown(&other_schema, &other)
                    ));
                }
            }
        }
        if !torn.is_empty() {
            crate::refuse!(
                "--keep-tables: a partition (or child) of a kept table has the name of {}: each would stay where it is while the table it is attached to moves, leaving them attached across schemas; rename one of them before the rollback; nothing was changed",
                torn.join(", ")
            );
        }
        let beside: Vec<(String, String)> = asked_everywhere
            .iter()
            .filter(|(b, _)| b != backup)
            .cloned()
            .collect();
        // The copies stay behind with their own partitions (or children):
        // a partition's default drawing from its parent's sequence, say, is
        // theirs.
        let blockers = dependents_among(client, backup, &backup_side, &backups, &beside).await?;
        if !blockers.is_empty() {
            // Named: the copies something depends on, not every one asked for.
            let mut held = Vec::new();
            for t in roots.iter().filter(|t| backup_tables.contains(*t)) {
                let one = descendants(client, backup, std::slice::from_ref(t)).await?;
                if !dependents_among(client, backup, &one, &backups, &beside)
                    .await?
                    .is_empty()
                {
                    held.push(t.as_str());
                }
            }
            crate::refuse!(
                "--keep-tables: objects of the backup depend on {}'s own copy of {}, which would stay behind in the backup: {}; nothing was changed (restore without --keep-tables, or drop or change those objects)",
                crate::pg::ident::display_ident(backup),
                held.join(", "),
                blockers.join(", ")
            );
        }
        warnings.extend(
            kept_table_warnings(
                client,
                live,
                &live_side,
                &kept_live,
                &lives,
                "the new backup",
            )
            .await?,
        );
        let mut expected: BTreeSet<String> = backup_tables
            .iter()
            .filter(|t| !keep.contains(*t))
            .cloned()
            .collect();
        expected.extend(
            keep.iter()
                .filter(|t| live_tables[live].contains(*t))
                .cloned(),
        );
        keep_keys.extend(keep.iter().map(|t| crate::pg::meta::table_display(live, t)));
        pairs.push(engine::Pair {
            live: live.to_string(),
            incoming: backup.to_string(),
            keep,
            expected_tables: expected.into_iter().collect(),
        });
    }

    let pg15 = catalog::server_major(client).await? >= 15;
    // Objects of other schemas bound to the schemas being replaced stay with
    // them, in the new backup (a backup of fewer schemas than the migration
    // that replaced it leaves the others' objects behind, say).
    warnings
        .extend(crate::prepare::preflight::outside_dependents(client, &lives, "rollback").await?);
    // Every backup, newest first: the newest's counters are those of the
    // public being replaced when it went live.
    let all = manifest::list_backups(client).await?;
    warnings.extend(bound_to_other_backups(client, &all, &backups).await?);

    // Writes the application made to the schemas being replaced since they
    // went live (the backup made then has their counters from that moment).
    let (live_baseline, reset) = gate::rollback_baseline(&all, &lives);
    warnings.extend(carried_since(&all, &restore, &keep_keys));
    warnings.extend(privileges_restored(client, &pairs).await?);
    warnings.extend(
        manifest::uncountable(client, &lives, |schema, table| {
            pairs
                .iter()
                .any(|p| p.live == schema && p.keep.contains(table))
        })
        .await?,
    );
    let kept: Vec<TableName> = kept_names(&pairs);
    let (live_baseline, listed, writes) =
        gate::rollback_writes(client, live_baseline, &kept, &lives, &reset).await?;
    let mut unkeepable = Unkeepable::new();
    if gate::rollback_gate(&writes, &opts.allow_discard, &unkeepable).is_err() {
        unkeepable = unkeepable_writes(client, &maps, &writes).await?;
    }
    let refusal = gate::rollback_gate(&writes, &opts.allow_discard, &unkeepable)
        .err()
        .map(|e| e.to_string());

    let joining = joining_keys(
        client,
        &pairs,
        &restore.manifest.detached_foreign_keys,
        pg15,
    )
    .await?;
    let fk_check = sync::fk_violations(client, &joining, &carried_pairs(&pairs)).await?;
    let fk_refusal = crate::swap::cutover::fk_refusal(&fk_check, opts.allow_fk_violations);

    let verification = verify::check(client, &restore).await?;
    // A backup a cleanup began dropping in parts is never restored, not even
    // with --force: which of its tables are gone is not known.
    let partly_dropped = restore.manifest.dropping_since.map(|since| {
        format!(
            "{schema} is partly dropped: a cleanup began dropping it in parts at {} and did not finish, so part of it may be gone; it cannot be restored, even with --force (the next cleanup whose --before covers it drops the rest); nothing was changed",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    });
    let mismatch = partly_dropped.or_else(|| {
        (!verification.ok && !opts.force).then(|| {
            format!(
                "{schema} does not match its manifest: {}; nothing was changed (check it with `pgshift verify --timestamp {}`, or pass --force to roll back anyway)",
                verification.summary(),
                restore.ts
            )
        })
    });
    // Every schema of the backup counts: one without a kept table gives
    // all of its objects to the live side.
    let mut takes_more_than_kept = false;
    if pairs.iter().any(|p| !p.keep.is_empty()) {
        let kept = engine::kept_tables(&pairs);
        for p in &pairs {
            takes_more_than_kept |= crate::pg::objects::movables(client, &p.incoming)
                .await?
                .iter()
                .any(|m| !m.kept_with(&p.incoming, &kept));
        }
    }
    if !verification.ok && opts.force && restore.manifest.dropping_since.is_none() {
        warnings.push(format!(
            "{schema} does not match its manifest ({}); rolling back anyway (--force)",
            verification.summary()
        ));
    }
    Ok(Plan {
        restore,
        pairs,
        keep: keep_keys,
        auto_kept,
        verification,
        warnings,
        writes,
        live_baseline,
        listed,
        allow_discard: opts.allow_discard.clone(),
        fail_on_breaking: opts.fail_on_breaking,
        workload: opts.workload.clone(),
        unkeepable,
        fk_check,
        fk_refusal,
        refusal,
        mismatch,
        prepared,
        takes_more_than_kept,
    })
}

/// The foreign keys the rollback creates NOT VALID between tables that
/// stay live and tables it restores, to validate after its COMMIT, written
/// as `ADD FOREIGN KEY` against where their tables are *now*, so that the
/// rows they would join can be checked before any lock (as the swap checks
/// its deferred keys, [`sync::fk_violations`]):
///
/// - a kept table's key to a table that moves out: re-pointed to the
///   restored table of that name (now in the backup);
/// - a restored table's key to its backup's copy of a kept table:
///   re-pointed to the kept table;
/// - a key an earlier rollback detached from the restored backup (recorded
///   in its manifest): re-attached.
///
/// Keys PostgreSQL holds NOT VALID already stay unchecked, as on the source.
/// A kept table's key to a table that neither stays nor comes back is
/// refused (exit 2): nothing could be re-pointed to.
async fn joining_keys(
    client: &Client,
    pairs: &[engine::Pair],
    detached: &[ForeignKeyDef],
    pg15: bool,
) -> Result<Vec<String>> {
    let by_live = |s: &str| pairs.iter().find(|p| p.live == s);
    let by_backup = |s: &str| pairs.iter().find(|p| p.incoming == s);
    // Live after the rollback: restored from the backup, or kept (and live now).
    let live_after = |p: &engine::Pair, t: &str| p.expected_tables.iter().any(|e| e == t);
    let restored = |p: &engine::Pair, t: &str| !p.keep.contains(t) && live_after(p, t);
    let kept_live = |p: &engine::Pair, t: &str| p.keep.contains(t) && live_after(p, t);
    let mut out = Vec::new();
    for p in pairs {
        let kept: Vec<String> = p.keep.iter().cloned().collect();
        for fk in foreign_keys_of(client, &p.live, &kept, pg15).await? {
            // To a table of an exchanged schema that neither stays nor comes
            // back: after the rollback it would reference nothing, and the
            // swap transaction would fail on it under its locks.
            if let Some(q) = by_live(&fk.ref_schema)
                && !live_after(q, &fk.def.ref_table)
            {
                crate::refuse!(
                    "--keep-tables: foreign key {} of {} references {}, which the rollback moves out and {} does not have: keep {} too, or drop that key first; nothing was changed",
                    display_ident(&fk.def.name),
                    crate::pg::meta::table_shown(&p.live, &fk.def.table),
                    crate::pg::meta::table_shown(&q.live, &fk.def.ref_table),
                    display_ident(&q.incoming),
                    crate::pg::meta::table_shown(&q.live, &fk.def.ref_table),
                );
            }
            if let Some(q) = by_live(&fk.ref_schema)
                && fk.validated
                && restored(q, &fk.def.ref_table)
            {
                out.push(add_fk_sql(&fk.def, &p.live, &q.incoming, false));
            }
        }
        let incoming: Vec<String> = p
            .expected_tables
            .iter()
            .filter(|t| !p.keep.contains(*t))
            .cloned()
            .collect();
        for fk in foreign_keys_of(client, &p.incoming, &incoming, pg15).await? {
            if let Some(q) = by_backup(&fk.ref_schema)
                && fk.validated
                && kept_live(q, &fk.def.ref_table)
            {
                out.push(add_fk_sql(&fk.def, &p.incoming, &q.live, false));
            }
        }
    }
    for fk in detached {
        let (Some(p), Some(q)) = (by_live(&fk.schema), by_live(&fk.ref_schema)) else {
            continue;
        };
        if !restored(p, &fk.table) {
            continue;
        }
        let ref_now = if kept_live(q, &fk.ref_table) {
            &q.live
        } else if restored(q, &fk.ref_table) {
            &q.incoming
        } else {
            continue;
        };
        out.push(add_fk_sql(fk, &p.incoming, ref_now, false));
    }
    Ok(out)
}

/// The schemas the rollback exchanges, for the impact report: each live
/// schema, the backup schema restored into it, and the tables that stay.
fn impact_pairs(plan: &Plan) -> Vec<SchemaPair> {
    plan.pairs
        .iter()
        .map(|p| SchemaPair {
            stays: p.keep.iter().cloned().collect(),
            ..SchemaPair::new(&p.live, &p.incoming)
        })
        .collect()
}

/// The impact report of the rollback `plan` as the checks before its locks
/// see it (the writes: the plan's), with what it breaks as warnings; `Err`
/// when `--fail-on-breaking` refuses, or a check that it needs cannot run.
async fn impact(
    client: &Client,
    plan: &Plan,
    policy: Policy,
    fail_on_breaking: bool,
) -> Result<(Impact, Vec<String>)> {
    let pairs = impact_pairs(plan);
    gate::before_moves(
        client,
        Operation::Rollback,
        &ImpactRequest {
            pairs: &pairs,
            baseline: None,
            exempt: &[],
            workload: WorkloadOptions {
                operation: Operation::Rollback,
                ..plan.workload.clone()
            },
            lock_timeout: policy.lock_timeout,
        },
        plan.writes.clone(),
        fail_on_breaking,
    )
    .await
}

/// The warnings for a backup older than the newest, whose public lacks rows
/// the current public has that no write counter counts (they were written
/// before the current public went live):
///
/// * the swaps (and rollbacks) after it carried the rows of their preserved
///   or kept tables into the next public; rows written to such a table while
///   a later public was live reach the current one when every swap since
///   carried that table (newest first, the sets intersected);
/// * a current public that a rollback restored was live once before: what
///   was written to it then is in it, and not in a backup older than that.
///
/// The rollback leaves those rows out (they stay in the later backups and the
/// new one), but for the tables it keeps (`kept`, as [`Plan::keep`]).
fn carried_since(
    all: &[manifest::BackupRow],
    restore: &manifest::BackupRow,
    kept: &BTreeSet<String>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut reaching: Option<BTreeSet<&str>> = None;
    let mut named = Vec::new();
    // Newest first.
    for b in all.iter().filter(|b| b.ts > restore.ts) {
        let carried: BTreeSet<&str> = b
            .manifest
            .preserved_tables
            .iter()
            .chain(&b.manifest.kept_tables)
            .map(String::as_str)
            // A table this rollback keeps stays live, rows and all (h45a).
            .filter(|t| !kept.contains(*t))
            .collect();
        let now: BTreeSet<&str> = match &reaching {
            None => carried,
            Some(r) => r.intersection(&carried).copied().collect(),
        };
        if now.is_empty() {
            break;
        }
        // A rollback's backup keeps the tables it kept (h48b: "the swap").
        let by = if b.manifest.kind == "rollback" {
            "the rollback"
        } else {
            "the swap"
        };
        named.push(format!(
            "{}, carried by {by} that made {}",
            now.iter().join(", "),
            b.schema_name
        ));
        reaching = Some(now);
    }
    if !named.is_empty() {
        warnings.push(format!(
            "{} is older than the newest backup: rows written while a later public was live to the tables the swaps since carried into the current public ({}) are in it and not in {}; this rollback leaves them out too (they stay in those backups and in the new one), and its count of discarded writes covers only the current public's",
            restore.schema_name,
            named.join("; "),
            restore.schema_name
        ));
    }
    // The current public, restored by the newest backup's rollback: its
    // first time live ended with the swap that made `from`.
    if let Some(newest) = all.first().filter(|b| b.ts > restore.ts)
        && let Some(from) = &newest.manifest.restored_from
        && manifest::parse_backup_ref(from).is_some_and(|ts| ts > restore.ts)
    {
        warnings.push(format!(
            "the current public was restored from {from} by a rollback: what was written to it before, while it was live the first time, is in it and not in {}; this rollback leaves it out too{} (it stays in the new backup), and its count of discarded writes covers only the writes since that rollback",
            restore.schema_name,
            if kept.is_empty() {
                ""
            } else {
                ", but for the tables it keeps"
            }
        ));
    }
    warnings
}

/// The warning about objects of the backup being restored (`restoring`: its
/// schemas) that use objects of other backups: they go live so, and those
/// backups cannot be dropped while they do (cleanup skips them). A CHECK
/// calling `util.pos()` when `util` was migrated by a later swap calls
/// `backup_<later>_util.pos()` now, the function having moved with its
/// schema. Found as what depends on the other backups from outside them
/// that does not once the restored schemas count as theirs.
async fn bound_to_other_backups(
    client: &Client,
    all: &[BackupRow],
    restoring: &[String],
) -> Result<Option<String>> {
    let others: Vec<String> = all
        .iter()
        .flat_map(|b| b.manifest.schema_maps())
        .map(|m| m.backup)
        .filter(|s| !restoring.contains(s))
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    let outside = |schemas: Vec<String>| async move {
        crate::pg::catalog::external_dependents(client, &schemas, None)
            .await
            .map(|d| d.into_iter().collect::<BTreeSet<String>>())
    };
    let of_others = outside(others.clone()).await?;
    let of_both = outside(others.iter().chain(restoring).cloned().collect()).await?;
    let bound: Vec<String> = of_others.difference(&of_both).cloned().collect();
    Ok((!bound.is_empty()).then(|| {
        format!(
            "objects of the backup being restored use objects that other backups hold now (a later swap moved them there with their schema), and go live so: {}; cleanup keeps those backups while they do (recreate these objects over the live ones to let it drop them)",
            bound.join(", ")
        )
    }))
}

/// The restored objects come back with the owners and grants they had when
/// the backup was made: a GRANT, a REVOKE or a new owner given to their
/// namesakes in the live schema since goes back with the rollback. Not
/// carried over as the swap carries what changed since prepare: what
/// changed since the current public went live is not recorded, and
/// levelling the backup to today's would need membership in the owners of
/// objects that did not change (h45a). Said, one warning per schema, with
/// the first few objects (kept tables stay as they are: not named).
async fn privileges_restored(client: &Client, pairs: &[engine::Pair]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in pairs {
        // A kept table's own sequences stay live with it (h45b).
        let keep: Vec<&String> = p.keep.iter().collect();
        let kept_sequences: Vec<String> = query_map(
            client,
            "SELECT s.relname::text
               FROM pg_catalog.pg_class s
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = s.oid
                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i')
               JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
               JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
              WHERE s.relkind = 'S' AND n.nspname = $1 AND t.relname = ANY($2)",
            &[&p.live, &keep],
            "listing the kept tables' sequences",
            |r| r.get(0),
        )
        .await?;
        let differing: Vec<String> =
            crate::prepare::privileges::catch_up(client, &p.incoming, &p.live, false)
                .await?
                .differing
                .into_iter()
                .filter(|d| {
                    !p.keep.iter().any(|k| d == &format!("table {k}"))
                        && !kept_sequences.iter().any(|q| d == &format!("sequence {q}"))
                })
                .collect();
        if differing.is_empty() {
            continue;
        }
        out.push(format!(
            "the objects restored from {} come back with the owners and grants they had when it was made, and {} of them {} from their namesakes' in {} now ({}): the rollback gives them the backup's, so a grant, revoke or owner given since the swap (or an owner the swap took from the source, --keep-source-owners) goes back; grant it again after the rollback where it must stay",
            p.incoming,
            differing.len(),
            if differing.len() == 1 { "differs" } else { "differ" },
            display_ident(&p.live),
            crate::prepare::preflight::list_first(&differing, 3)
        ));
    }
    Ok(out)
}

/// The written tables (partitions by their root) that `--keep-tables` would
/// refuse to keep because objects of their backup depend on the backup's own
/// copy (see [`dependents_among`]), with that reason.
async fn unkeepable_writes(
    client: &Client,
    maps: &[crate::backups::manifest::SchemaMap],
    writes: &WriteCheck,
) -> Result<Unkeepable> {
    let backups: Vec<String> = maps.iter().map(|m| m.backup.clone()).collect();
    let written = writes
        .discarded
        .iter()
        .map(|d| (&d.at, d.partition_of.as_deref().unwrap_or(&d.table)))
        .chain(
            writes
                .unknown
                .iter()
                .map(|u| (&u.at, u.partition_of.as_deref().unwrap_or(&u.table))),
        );
    // Each is judged kept beside the other written tables, as the advice
    // keeps them together: a default of one drawing from another's sequence
    // stays with it.
    let roots: Vec<(&String, &String, &str)> = written
        .map(|(at, shown)| match at.ancestors.last() {
            Some((s, n)) => (s, n, shown),
            None => (&at.schema, &at.name, shown),
        })
        .collect();
    // Until nothing changes: a table keepable only beside one found
    // unkeepable is not keepable either.
    let mut out = Unkeepable::new();
    loop {
        let mut found = false;
        for &(schema, name, shown) in &roots {
            let Some(m) = maps.iter().find(|m| &m.live == schema) else {
                continue;
            };
            if out.contains_key(shown) {
                continue;
            }
            let beside: Vec<(String, String)> = roots
                .iter()
                .filter(|(s, n, shown)| (s, n) != (&schema, &name) && !out.contains_key(*shown))
                .filter_map(|(s, n, _)| {
                    let b = maps.iter().find(|m| &m.live == *s)?;
                    Some((b.backup.clone(), n.to_string()))
                })
                .collect();
            // With its own partitions (or children), which stay with it.
            let (own, _) =
                descendants_anywhere(client, &m.backup, std::slice::from_ref(name)).await?;
            let own: Vec<String> = own.into_iter().map(|(_, n)| n).collect();
            let blockers = dependents_among(client, &m.backup, &own, &backups, &beside).await?;
            if !blockers.is_empty() {
                out.insert(
                    shown.to_string(),
                    format!(
                        "objects of the backup depend on {}'s own copy: {}",
                        crate::pg::ident::display_ident(&m.backup),
                        blockers.join(", ")
                    ),
                );
                found = true;
            }
        }
        if !found {
            return Ok(out);
        }
    }
}

/// The kept tables that are live (keys, in the pairs' order): `plan.keep`
/// also holds the names of the backup's partitions of its copies, which stay
/// behind with them.
fn live_kept_keys(plan: &Plan) -> Vec<String> {
    plan.pairs
        .iter()
        .flat_map(|p| {
            p.keep
                .iter()
                .filter(|t| p.expected_tables.contains(*t))
                .map(|t| crate::pg::meta::table_display(&p.live, t))
        })
        .collect()
}

/// [`live_kept_keys`] sorted, as the reports list them.
fn live_kept_sorted(plan: &Plan) -> Vec<String> {
    live_kept_keys(plan).into_iter().sorted().collect()
}

/// The kept tables of `pairs` as names, each in its live schema (for the
/// discarded-writes checks, before and under the locks).
fn kept_names(pairs: &[engine::Pair]) -> Vec<TableName> {
    pairs
        .iter()
        .flat_map(|p| {
            p.keep
                .iter()
                .map(|name| TableName::in_schema(&p.live, name))
        })
        .collect()
}

/// What comes in (the backup) and what stays (the kept tables).
fn exchange(plan: &Plan) -> Exchange {
    Exchange {
        pairs: plan.pairs.clone(),
        kept_move_back: false,
        recreate_incoming: false,
    }
}

/// The work inside the transaction, before it knows the new backup's name.
fn hook(plan: &Plan, pg15: bool) -> RollbackTx<'_> {
    RollbackTx {
        restored: &plan.restore,
        keep: &plan.keep,
        pairs: &plan.pairs,
        pg15,
        takes_more_than_kept: plan.takes_more_than_kept,
        writes: plan.live_baseline.as_ref().map(|baseline| UnderLocks {
            op: Operation::Rollback,
            baseline,
            listed: &plan.listed,
            exempt: kept_names(&plan.pairs),
            allow: &plan.allow_discard,
            unkeepable: &plan.unkeepable,
        }),
    }
}

/// Each live schema and the backup schema restored into it, as the carry of
/// the sequences no column uses takes them.
fn carried_pairs(pairs: &[engine::Pair]) -> Vec<crate::pg::meta::SchemaPair> {
    pairs
        .iter()
        .map(|p| crate::pg::meta::SchemaPair {
            live: p.live.clone(),
            shadow: p.incoming.clone(),
        })
        .collect()
}

/// What would move, and the transaction's SQL; changes nothing.
pub async fn preview(client: &Client, plan: &Plan, policy: Policy) -> Result<RollbackPreview> {
    let pg15 = catalog::server_major(client).await? >= 15;
    let tx = hook(plan, pg15);
    let p = engine::preview(client, &exchange(plan), policy, &tx).await?;
    let schemas = p.schemas.clone();
    // The whole report, whatever --fail-on-breaking says: its refusal is
    // below. The dry run prints it, so its findings are not logged as
    // warnings too (the swap's dry run does not log them either).
    let (impact, _) = impact(client, plan, policy, false)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await?;
    // Another run holding the destination refuses the rollback before all.
    let busy = Destination::observe(client).await?.lock_refusal();
    let refusals: Vec<String> = [
        busy,
        plan.prepared.clone(),
        plan.mismatch.clone(),
        plan.refusal.clone(),
        gate::breaking_refusal_of(Operation::Rollback, &impact, plan.fail_on_breaking),
        plan.fk_refusal.clone(),
        p.unmovable.refusal("the rollback"),
        p.lock_budget.refusal("the rollback"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut warnings = plan.warnings.clone();
    warnings.extend(tx.carry_foreseen(client).await?);
    Ok(RollbackPreview {
        restore_schema: plan.restore.schema_name.clone(),
        mode: p.mode,
        restore_timestamp: plan.restore.ts,
        backup_schema: p.backup_schema,
        kept_tables: live_kept_sorted(plan),
        moves: p.moves,
        verification: plan.verification.clone(),
        warnings,
        refusal: refusals.first().cloned(),
        refusals,
        swap_lock_budget: p.lock_budget,
        discarded_writes: plan.writes.discarded.clone(),
        unknown_writes: plan.writes.unknown.clone(),
        fk_violations: plan.fk_check.violations.clone(),
        schemas,
        impact,
    })
}

/// Run the rollback on an open session.
pub async fn execute(sess: &Session, plan: &Plan, policy: Policy) -> Result<RollbackReport> {
    let control = &sess.control;
    if let Some(why) = &plan.mismatch {
        return Err(anyhow::Error::new(VerificationFailed(why.clone())));
    }
    if let Some(why) = &plan.prepared {
        return Err(crate::user_error!("{why}"));
    }
    if let Some(why) = &plan.refusal {
        bail!("{why}");
    }
    let mut warnings = plan.warnings.clone();
    let since = super::impact::Operation::Rollback.since(
        plan.writes
            .discarded
            .iter()
            .map(|d| &d.at)
            .chain(plan.writes.unknown.iter().map(|u| &u.at)),
    );
    for w in gate::write_lines(&plan.writes) {
        let w = format!("discarding writes {since} (--allow-discard): {w}");
        tracing::warn!("{w}");
        warnings.push(w);
    }
    let restored = &plan.restore;
    let kept_live = live_kept_keys(plan);
    let origin = Origin::Rollback {
        restored: restored.clone(),
        migrated_tables: restored
            .manifest
            .tables
            .iter()
            .filter(|t| !plan.keep.contains(&t.display()))
            .cloned()
            .collect(),
        kept_tables: kept_live,
    };
    // What the rollback does to the running application, before any lock:
    // breaking findings refuse with --fail-on-breaking, else are warnings.
    let (impact, breaking) = impact(control, plan, policy, plan.fail_on_breaking).await?;
    warnings.extend(breaking);
    if let Some(why) = &plan.fk_refusal {
        bail!("{why}");
    }
    for v in &plan.fk_check.violations {
        let line =
            format!("{v} (allowed: the key is created NOT VALID, validated after the rollback)");
        tracing::warn!("{line}");
        warnings.push(line);
    }
    for u in &plan.fk_check.unchecked {
        let line = format!(
            "{u} (allowed: it is validated right after the rollback, and stays NOT VALID if a row has no match)"
        );
        tracing::warn!("{line}");
        warnings.push(line);
    }
    let pg15 = catalog::server_major(control).await? >= 15;
    let done = engine::swap(sess, &exchange(plan), &origin, policy, &hook(plan, pg15)).await?;
    let result = done.after;
    warnings.extend(done.before.warnings.iter().cloned());
    warnings.extend(done.warnings.iter().cloned());
    warnings.extend(result.warnings.iter().cloned());

    let mut not_valid = Vec::new();
    for f in engine::validate_foreign_keys(control, &result.to_validate).await {
        // The warning names it `table.constraint`, as the swap's
        // fk_not_valid and status do; the rollback's fk_not_valid has held
        // the constraint's name alone since it exists, and keeps it.
        let name = crate::pg::meta::constraint_shown(&f.schema, &f.table, &f.constraint);
        warnings.push(format!("foreign key {name} stays NOT VALID: {}", f.error));
        not_valid.push(f.constraint);
    }
    manifest::keys_validated(control, done.backup_timestamp).await?;
    Ok(RollbackReport {
        restored_schema: restored.schema_name.clone(),
        mode: done.mode,
        restored_timestamp: restored.ts,
        backup_schema: done.backup_schema,
        backup_timestamp: done.backup_timestamp,
        kept_tables: live_kept_sorted(plan),
        moved: done.moved,
        restored_schema_dropped: result.restored_dropped,
        dropped_schemas: result.dropped_schemas,
        foreign_keys: result.changes,
        fk_not_valid: not_valid,
        verified: plan.verification.ok,
        warnings,
        schemas: done.manifest.schemas.clone(),
        impact,
    })
}

/// What the transaction did, for after the commit.
#[derive(Debug, Clone, Default)]
pub struct TxResult {
    changes: Vec<FkChange>,
    /// Keys of public tables to VALIDATE after the commit.
    to_validate: Vec<CreatedFk>,
    restored_dropped: bool,
    /// Live schemas dropped because the restored backup's swap created them.
    dropped_schemas: Vec<String>,
    warnings: Vec<String>,
}

/// What the rollback's work before the moves hands back.
#[derive(Debug, Clone, Default)]
pub struct RollbackBefore {
    /// Fenced sequences that are gone; sequences carried or not fenced.
    warnings: Vec<String>,
    /// The current public's sequences fenced, for the new backup's manifest.
    fenced: Vec<FencedSequence>,
}

/// Work inside the swap transaction: foreign keys, the restored backup's
/// schema and manifest, the new backup's detached keys.
struct RollbackTx<'a> {
    restored: &'a BackupRow,
    keep: &'a BTreeSet<String>,
    pairs: &'a [engine::Pair],
    pg15: bool,
    /// See [`Plan::takes_more_than_kept`].
    takes_more_than_kept: bool,
    /// The discarded-writes check under the locks (None without a baseline:
    /// checked before, every table unknown).
    writes: Option<UnderLocks<'a>>,
}

impl RollbackTx<'_> {
    /// What the carry in [`InTx::before_moves`] would warn about if the
    /// rollback ran now: it runs with kept tables only, after the restored
    /// backup's fenced sequences are given back, which are weighed as they
    /// will be (read only).
    async fn carry_foreseen(&self, client: &Client) -> Result<Vec<String>> {
        if self.keep.is_empty() {
            return Ok(Vec::new());
        }
        sync::standalone_sequence_warnings(
            client,
            &carried_pairs(self.pairs),
            sync::CarrySides::ROLLBACK,
            &self.restored.manifest.fenced_sequences,
        )
        .await
    }
}

impl InTx for RollbackTx<'_> {
    type Before = RollbackBefore;
    type After = TxResult;

    /// The discarded-writes check, then the sequences the restored backup's
    /// swap fenced get their definitions back (`swap::fence`). With kept
    /// tables, whose rows stay: the sequences no column uses that both the
    /// current public and the backup have continue after the greater of the
    /// two (the application may key a kept table with one: going back would
    /// hand those keys out again), the current ones fenced.
    async fn before_moves(&self, client: &Client) -> Result<RollbackBefore> {
        if let Some(w) = &self.writes {
            w.check(client).await?;
        }
        let m = &self.restored.manifest;
        let mut warnings = fence::restore(client, &m.fenced_sequences, &m.schema_maps()).await?;
        if self.keep.is_empty() {
            return Ok(RollbackBefore {
                warnings,
                fenced: Vec::new(),
            });
        }
        let mut fences = Fences::new(fence::Scope::of(
            self.pairs.iter().map(|p| &p.live),
            self.pairs.iter().map(|p| (&p.live, &p.keep)),
        ));
        warnings.extend(
            sync::carry_standalone_sequences(
                client,
                &carried_pairs(self.pairs),
                &mut fences,
                sync::CarrySides::ROLLBACK,
            )
            .await?,
        );
        warnings.extend(fences.warnings);
        Ok(RollbackBefore {
            warnings,
            fenced: fences.records,
        })
    }

    fn preview_notes(&self) -> (Vec<String>, Vec<String>) {
        let mut before: Vec<String> = self
            .writes
            .iter()
            .map(|_| UnderLocks::preview_note())
            .collect();
        if !self.restored.manifest.fenced_sequences.is_empty() {
            before.push(format!(
                "-- {} sequence(s) fenced by the swap that made {} given their definitions back",
                self.restored.manifest.fenced_sequences.len(),
                self.restored.schema_name
            ));
        }
        if !self.keep.is_empty() {
            before.push(
                "-- kept tables: sequences no column uses that both have continue after the greater value (the current ones fenced, recorded in the new backup's manifest)"
                    .into(),
            );
        }
        (
            before,
            vec!["-- foreign keys crossing schemas re-pointed or detached; restored schema dropped if empty, and so are live schemas its swap created; manifests written to pgshift.backups".into()],
        )
    }

    async fn after_moves(
        &self,
        client: &Client,
        before: &RollbackBefore,
        manifest: &mut Manifest,
    ) -> Result<TxResult> {
        manifest.fenced_sequences = before.fenced.clone();
        let mut res = TxResult::default();
        let restored_maps = self.restored.manifest.schema_maps();
        let new_maps = manifest.schema_maps();
        let mut places: Vec<Place> = new_maps
            .iter()
            .flat_map(|m| [Place::live(&m.live), Place::backup(&m.backup, &m.live, 0)])
            .collect();
        places.extend(
            restored_maps
                .iter()
                .map(|m| Place::backup(&m.backup, &m.live, 1)),
        );
        let mut fixed = fix_crossing_fks(client, &places, self.pg15, "the rollback").await?;
        let mut detached_by = std::mem::take(&mut fixed.detached);
        res.changes = std::mem::take(&mut fixed.changes);
        res.to_validate = std::mem::take(&mut fixed.to_validate);
        // Keys detached from the restored backup by an earlier rollback.
        let mut still_detached = Vec::new();
        for fk in &self.restored.manifest.detached_foreign_keys {
            if self
                .keep
                .contains(&crate::pg::meta::table_display(&fk.schema, &fk.table))
            {
                still_detached.push(fk.clone());
                continue;
            }
            let (has_table, has_ref) = (
                fixed.is_live(&fk.schema, &fk.table),
                fixed.is_live(&fk.ref_schema, &fk.ref_table),
            );
            if !has_table || !has_ref {
                let (s, t) = if has_table {
                    (&fk.ref_schema, &fk.ref_table)
                } else {
                    (&fk.schema, &fk.table)
                };
                res.warnings.push(format!(
                    "foreign key {} of {} ({} -> {}) was not re-created: {} has no table {}",
                    display_ident(&fk.name),
                    self.restored.schema_name,
                    display_ident(&fk.table),
                    display_ident(&fk.ref_table),
                    display_ident(s),
                    display_ident(t),
                ));
                continue;
            }
            let partitioned = is_partitioned(client, &fk.schema, &fk.table).await?;
            exec(
                client,
                &add_fk_sql(fk, &fk.schema, &fk.ref_schema, !partitioned),
            )
            .await
            .with_context(|| {
                format!(
                    "re-creating foreign key {} on {} (recorded in the manifest of {})",
                    display_ident(&fk.name),
                    qualified(&fk.schema, &fk.table),
                    self.restored.schema_name
                )
            })?;
            if !partitioned {
                res.to_validate.push(CreatedFk {
                    schema: fk.schema.clone(),
                    table: fk.table.clone(),
                    constraint: fk.name.clone(),
                    ..CreatedFk::default()
                });
            }
            res.changes.push(FkChange {
                constraint: fk.name.clone(),
                table: format!("{}.{}", display_ident(&fk.schema), display_ident(&fk.table)),
                action: "reattached".into(),
                references: format!(
                    "{}.{}",
                    display_ident(&fk.ref_schema),
                    display_ident(&fk.ref_table)
                ),
            });
        }

        // The restored schemas: gone (rename mode made it public) or dropped
        // when empty, otherwise (kept tables' namesakes remain) the manifest
        // now describes what is left.
        exec(client, "SAVEPOINT pgshift_restored").await?;
        let mut dropped = Ok(());
        for m in &restored_maps {
            let renamed = !catalog::schema_exists(client, &m.backup).await?;
            if !renamed {
                if !catalog::schema_is_empty(client, &m.backup).await? {
                    dropped = Err(anyhow::anyhow!("{} is not empty", m.backup));
                    break;
                }
                dropped = exec(
                    client,
                    &format!("DROP SCHEMA {} RESTRICT", quote_ident(&m.backup)),
                )
                .await;
                if dropped.is_err() {
                    break;
                }
            }
        }
        match dropped {
            Ok(()) => {
                exec(client, "RELEASE SAVEPOINT pgshift_restored").await?;
                manifest::delete_backup(client, self.restored.ts).await?;
                res.restored_dropped = true;
            }
            Err(_) => {
                exec(client, "ROLLBACK TO SAVEPOINT pgshift_restored").await?;
                let mut left = BTreeSet::new();
                for m in &restored_maps {
                    for t in tables_of(client, &m.backup).await? {
                        left.insert(crate::pg::meta::table_display(&m.live, &t));
                    }
                    still_detached.extend(detached_by.remove(&m.backup).unwrap_or_default());
                }
                let mut m = self.restored.manifest.clone();
                let recorded = m.tables.len();
                m.tables.retain(|t| left.contains(&t.display()));
                // What is left is a remnant when anything of it went live:
                // tables, or views, functions, types besides the kept
                // tables (with nothing but the kept tables, nothing did: it
                // is still the whole version it was).
                if m.tables.len() < recorded || self.takes_more_than_kept {
                    m.restored_at = Some(Utc::now());
                }
                m.detached_foreign_keys = still_detached;
                // Its recorded objects no longer describe it: recorded
                // again after the COMMIT (not under the locks).
                manifest::update_manifest_without_objects(client, &m).await?;
            }
        }

        // Live schemas that did not exist before the restored backup was
        // made (its swap created them: schemas only the source had) are
        // dropped when the rollback leaves them empty, so the destination's
        // schemas are as they were.
        for m in restored_maps.iter().filter(|m| m.created) {
            if !catalog::schema_exists(client, &m.live).await?
                || !catalog::schema_is_empty(client, &m.live).await?
            {
                continue;
            }
            exec(client, "SAVEPOINT pgshift_created").await?;
            let sql = format!("DROP SCHEMA {} RESTRICT", quote_ident(&m.live));
            match exec(client, &sql).await {
                Ok(()) => {
                    exec(client, "RELEASE SAVEPOINT pgshift_created").await?;
                    res.dropped_schemas.push(m.live.clone());
                }
                Err(e) => {
                    exec(client, "ROLLBACK TO SAVEPOINT pgshift_created").await?;
                    res.warnings.push(format!(
                        "schema {} did not exist before {} was made and is empty now, but stays: {e:#}",
                        crate::pg::ident::display_ident(&m.live),
                        self.restored.schema_name
                    ));
                }
            }
        }

        manifest.detached_foreign_keys = new_maps
            .iter()
            .flat_map(|m| detached_by.remove(&m.backup).unwrap_or_default())
            .collect();
        Ok(res)
    }
}

/// What [`fix_crossing_fks`] did.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrossingFixed {
    pub changes: Vec<FkChange>,
    /// Keys of live tables to VALIDATE after the commit.
    pub to_validate: Vec<CreatedFk>,
    /// Keys dropped from tables of a backup schema (by schema), to record in
    /// that backup's manifest (with live schema names).
    pub detached: BTreeMap<String, Vec<ForeignKeyDef>>,
    /// Each live schema's tables after the moves.
    pub live_now: BTreeMap<String, BTreeSet<String>>,
}

impl CrossingFixed {
    /// Is `schema.table` a live table after the moves?
    pub fn is_live(&self, schema: &str, table: &str) -> bool {
        self.live_now.get(schema).is_some_and(|t| t.contains(table))
    }
}

/// A schema a swap transaction touches: a live schema (`group` None), or a
/// backup schema of the backup `group` (the new one, or the one restored),
/// holding the objects of live schema `live`.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub schema: String,
    pub live: String,
    pub group: Option<u8>,
}

impl Place {
    pub fn live(schema: &str) -> Place {
        Place {
            schema: schema.to_string(),
            live: schema.to_string(),
            group: None,
        }
    }
    pub fn backup(schema: &str, live: &str, group: u8) -> Place {
        Place {
            schema: schema.to_string(),
            live: live.to_string(),
            group: Some(group),
        }
    }
}

/// Inside a swap transaction, after the moves: foreign keys left crossing
/// between a live schema and a backup (or between two backups) by tables
/// that stayed live (`--keep-tables`). A live table's key into a backup is
/// re-pointed to the same-named table of that backup's live schema (NOT
/// VALID, to validate after the commit; an error when there is none); a
/// backup table's key out of its backup is dropped and returned in
/// `detached`. Keys between live schemas, or within one backup, are the
/// application's own and stay. `what` names the operation in errors.
pub(crate) async fn fix_crossing_fks(
    client: &Client,
    places: &[Place],
    pg15: bool,
    what: &str,
) -> Result<CrossingFixed> {
    let mut res = CrossingFixed::default();
    for p in places.iter().filter(|p| p.group.is_none()) {
        res.live_now
            .insert(p.schema.clone(), tables_of(client, &p.schema).await?);
    }
    let place = |s: &str| places.iter().find(|p| p.schema == s);
    let schemas: Vec<String> = places.iter().map(|p| p.schema.clone()).collect();
    let mut detached: BTreeMap<String, Vec<ForeignKeyDef>> = BTreeMap::new();
    for fk in crossing_fks(client, &schemas, pg15).await? {
        let (Some(from), Some(to)) = (place(&fk.schema), place(&fk.ref_schema)) else {
            continue;
        };
        if from.group == to.group {
            continue; // between live schemas, or within one backup
        }
        let drop = format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            qualified(&fk.schema, &fk.def.table),
            quote_ident(&fk.def.name)
        );
        let shown = |s: &str, t: &str| format!("{}.{}", display_ident(s), display_ident(t));
        if from.group.is_none() {
            let target = to.live.as_str();
            if !res.is_live(target, &fk.def.ref_table) {
                bail!(
                    "foreign key {} on {} references {}, and {target} has no table {} after {what}; nothing was changed",
                    fk.def.name,
                    shown(&fk.schema, &fk.def.table),
                    shown(&fk.ref_schema, &fk.def.ref_table),
                    fk.def.ref_table
                );
            }
            exec(client, &drop).await?;
            exec(
                client,
                &add_fk_sql(&fk.def, &fk.schema, target, !fk.partitioned),
            )
            .await
            .with_context(|| {
                format!(
                    "re-pointing foreign key {} on {} to {}",
                    fk.def.name,
                    shown(&fk.schema, &fk.def.table),
                    shown(target, &fk.def.ref_table)
                )
            })?;
            if !fk.partitioned {
                res.to_validate.push(CreatedFk {
                    schema: fk.schema.clone(),
                    table: fk.def.table.clone(),
                    constraint: fk.def.name.clone(),
                    ..CreatedFk::default()
                });
            }
            res.changes.push(FkChange {
                constraint: fk.def.name.clone(),
                table: shown(&fk.schema, &fk.def.table),
                action: "repointed".into(),
                references: shown(target, &fk.def.ref_table),
            });
        } else {
            // A backup table pointing out of its backup: keep the backup
            // self-contained; remember the key (with live schema names) for
            // when it is restored.
            exec(client, &drop).await?;
            res.changes.push(FkChange {
                constraint: fk.def.name.clone(),
                table: shown(&fk.schema, &fk.def.table),
                action: "detached".into(),
                references: shown(&fk.ref_schema, &fk.def.ref_table),
            });
            let mut def = fk.def;
            def.schema = from.live.clone();
            def.ref_schema = to.live.clone();
            detached.entry(fk.schema.clone()).or_default().push(def);
        }
    }
    res.detached = detached;
    Ok(res)
}

/// A foreign key found in the catalog.
pub(crate) struct CrossingFk {
    pub schema: String,
    pub ref_schema: String,
    pub partitioned: bool,
    /// Not NOT VALID.
    pub validated: bool,
    pub def: ForeignKeyDef,
}

fn action_name(code: &str) -> &'static str {
    match code {
        "r" => "RESTRICT",
        "c" => "CASCADE",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        _ => "NO ACTION",
    }
}

fn match_name(code: &str) -> &'static str {
    match code {
        "f" => "FULL",
        "p" => "PARTIAL",
        _ => "SIMPLE",
    }
}

/// Foreign keys whose table and referenced table are in different schemas of
/// `schemas` (top-level constraints only: partitions' clones follow their parent).
async fn crossing_fks(client: &Client, schemas: &[String], pg15: bool) -> Result<Vec<CrossingFk>> {
    foreign_keys(
        client,
        "cn.nspname <> fn.nspname AND cn.nspname = ANY($1) AND fn.nspname = ANY($1)",
        &[&schemas],
        pg15,
    )
    .await
}

/// The foreign keys of `tables` of `schema`, wherever they point (top-level
/// constraints only).
pub(crate) async fn foreign_keys_of(
    client: &Client,
    schema: &str,
    tables: &[String],
    pg15: bool,
) -> Result<Vec<CrossingFk>> {
    foreign_keys(
        client,
        "cn.nspname = $1 AND c.relname = ANY($2)",
        &[&schema, &tables],
        pg15,
    )
    .await
}

/// Foreign keys matching `filter` (a condition on `cn`/`c`, the table's
/// schema and class, and `fn`/`f`, the referenced ones; parameters bound).
async fn foreign_keys(
    client: &Client,
    filter: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    pg15: bool,
) -> Result<Vec<CrossingFk>> {
    let cols = |arr: &str, rel: &str| {
        format!(
            "ARRAY(SELECT a.attname::text FROM unnest(con.{arr}) WITH ORDINALITY k(n, i)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = con.{rel} AND a.attnum = k.n ORDER BY k.i)"
        )
    };
    let delset = if pg15 {
        cols("confdelsetcols", "conrelid")
    } else {
        "'{}'::text[]".to_string()
    };
    let sql = format!(
        "SELECT con.conname::text, cn.nspname::text, c.relname::text, fn.nspname::text, f.relname::text,
                {}, {}, con.confmatchtype::text, con.confupdtype::text, con.confdeltype::text, {delset},
                con.condeferrable, con.condeferred, c.relkind = 'p', con.convalidated
           FROM pg_catalog.pg_constraint con
           JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
           JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
           JOIN pg_catalog.pg_class f ON f.oid = con.confrelid
           JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace
          WHERE con.contype = 'f' AND con.conparentid = 0 AND {filter}
          ORDER BY 2, 3, 1",
        cols("conkey", "conrelid"),
        cols("confkey", "confrelid"),
    );
    let rows = client
        .query(sql.as_str(), params)
        .await
        .map_err(|e| pg_error_as(e, "listing foreign keys"))?;
    Ok(rows
        .into_iter()
        .map(|r| CrossingFk {
            schema: r.get(1),
            ref_schema: r.get(3),
            partitioned: r.get(13),
            validated: r.get(14),
            def: ForeignKeyDef {
                schema: r.get(1),
                ref_schema: r.get(3),
                name: r.get(0),
                table: r.get(2),
                ref_table: r.get(4),
                columns: r.get(5),
                ref_columns: r.get(6),
                match_type: match_name(&r.get::<_, String>(7)).into(),
                on_update: action_name(&r.get::<_, String>(8)).into(),
                on_delete: action_name(&r.get::<_, String>(9)).into(),
                on_delete_columns: r.get(10),
                deferrable: r.get(11),
                initially_deferred: r.get(12),
            },
        })
        .collect())
}

fn ident_list(names: &[String]) -> String {
    names.iter().map(|n| quote_ident(n)).join(", ")
}

/// `ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY …`, every identifier quoted.
pub fn add_fk_sql(fk: &ForeignKeyDef, schema: &str, ref_schema: &str, not_valid: bool) -> String {
    let mut sql = format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
        qualified(schema, &fk.table),
        quote_ident(&fk.name),
        ident_list(&fk.columns),
        qualified(ref_schema, &fk.ref_table),
        ident_list(&fk.ref_columns)
    );
    let known = |s: &str, allowed: &[&str]| allowed.contains(&s);
    let actions = [
        "NO ACTION",
        "RESTRICT",
        "CASCADE",
        "SET NULL",
        "SET DEFAULT",
    ];
    if known(&fk.match_type, &["FULL", "PARTIAL"]) {
        sql.push_str(&format!(" MATCH {}", fk.match_type));
    }
    if known(&fk.on_update, &actions) {
        sql.push_str(&format!(" ON UPDATE {}", fk.on_update));
    }
    if known(&fk.on_delete, &actions) {
        sql.push_str(&format!(" ON DELETE {}", fk.on_delete));
        if !fk.on_delete_columns.is_empty() && fk.on_delete.starts_with("SET ") {
            sql.push_str(&format!(" ({})", ident_list(&fk.on_delete_columns)));
        }
    }
    if fk.deferrable {
        sql.push_str(if fk.initially_deferred {
            " DEFERRABLE INITIALLY DEFERRED"
        } else {
            " DEFERRABLE INITIALLY IMMEDIATE"
        });
    }
    if not_valid {
        sql.push_str(" NOT VALID");
    }
    sql
}

async fn is_partitioned(client: &Client, schema: &str, table: &str) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT c.relkind = 'p' FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(false))
}

/// Plain and partitioned tables of a schema that are not extension members.
pub(crate) async fn tables_of(client: &Client, schema: &str) -> Result<BTreeSet<String>> {
    query_map(
        client,
            "SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                 AND d.objid = c.oid AND d.deptype = 'e')",
            &[&schema],
        "listing tables",
        |r| r.get(0),
    )
    .await
}

/// The tables that stay where they are only because a kept table's
/// partition (or child) on the other side has their name: the engine keeps
/// a name, not a table, on both sides. Each kept table takes its own
/// partitions (`sides`: the live and the backup's descendants of `roots`,
/// roots included); a table of the same name that is not one of them is
/// another table, so the backup's is not restored (it stays behind in the
/// backup, which `cleanup` may drop later) and the live one is not moved to
/// the new backup (it stays in the restored schema). Said, since nothing
/// else would.
fn unrelated_namesakes(
    (live, live_tables): (&str, &BTreeSet<String>),
    (backup, backup_tables): (&str, &BTreeSet<String>),
    (live_side, backup_side): (&[String], &[String]),
    roots: &[String],
) -> Vec<String> {
    let of_kept = || match roots {
        [one] => format!("the kept table {}", crate::pg::meta::table_shown(live, one)),
        many => format!(
            "one of the kept tables {}",
            many.iter()
                .map(|t| crate::pg::meta::table_shown(live, t))
                .join(", ")
        ),
    };
    let present = |ts: Vec<String>, present: &BTreeSet<String>| -> Vec<String> {
        ts.into_iter().filter(|t| present.contains(t)).collect()
    };
    let mut out = Vec::new();
    for t in present(only_in(live_side, backup_side), backup_tables) {
        out.push(format!(
            "table {} is not restored and stays behind in its backup, rows and all (cleanup drops what a rollback leaves of a backup): the current {}, a partition (or child) of {}, keeps that name; rename one of them before the rollback to restore it",
            crate::pg::meta::table_shown(backup, &t),
            crate::pg::meta::table_shown(live, &t),
            of_kept()
        ));
    }
    for t in present(only_in(backup_side, live_side), live_tables) {
        out.push(format!(
            "the current table {} is not moved to the new backup and stays in {}: {}, a partition (or child) of the backup's copy of {}, keeps that name in the backup; rename one of them before the rollback to replace it",
            crate::pg::meta::table_shown(live, &t),
            display_ident(live),
            crate::pg::meta::table_shown(backup, &t),
            of_kept(),
        ));
    }
    out
}

/// The names of `a` not in `b`.
fn only_in(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|t| !b.contains(*t)).cloned().collect()
}

/// The inheritance links (partition or child to parent, either way) of the
/// tables `names` of `schema`: each table, and the schema and name of the
/// table at the other end.
async fn inheritance_links(
    client: &Client,
    schema: &str,
    names: &[String],
) -> Result<Vec<(String, String, String)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    query_map(
        client,
        "WITH x AS (SELECT c.oid, c.relname FROM pg_catalog.pg_class c
                      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = ANY($2))
         SELECT x.relname::text, on_.nspname::text, o.relname::text
           FROM x JOIN pg_catalog.pg_inherits i ON x.oid IN (i.inhrelid, i.inhparent)
           JOIN pg_catalog.pg_class o
             ON o.oid = CASE WHEN i.inhrelid = x.oid THEN i.inhparent ELSE i.inhrelid END
           JOIN pg_catalog.pg_namespace on_ ON on_.oid = o.relnamespace
          ORDER BY 1, 2, 3",
        &[&schema, &names],
        "listing the partitions and parents of tables that stay",
        |r| (r.get(0), r.get(1), r.get(2)),
    )
    .await
}

/// Partitions and inheritance children (recursively) of `roots` in `schema`.
/// A kept table with one in another schema is refused (nothing changed yet):
/// a table is kept with its own schema's partitions only, and the others
/// would be swapped away from under it, into a backup that `cleanup` drops.
pub(crate) async fn descendants(
    client: &Client,
    schema: &str,
    roots: &[String],
) -> Result<Vec<String>> {
    let (here, elsewhere) = descendants_anywhere(client, schema, roots).await?;
    if !elsewhere.is_empty() {
        crate::refuse!(
            "--keep-tables: {} of {} {} in another schema ({}); a kept table stays only with the partitions (or children) of its own schema; keep other tables, or do without --keep-tables; nothing was changed",
            if elsewhere.len() == 1 {
                "a partition (or child)"
            } else {
                "partitions (or children)"
            },
            roots
                .iter()
                .map(|r| crate::pg::meta::table_display(schema, r))
                .join(", "),
            if elsewhere.len() == 1 { "is" } else { "are" },
            elsewhere
                .iter()
                .map(|(s, n)| format!("{}.{}", display_ident(s), display_ident(n)))
                .join(", ")
        );
    }
    Ok(here.into_iter().map(|(_, n)| n).collect())
}

/// `roots` of `schema` and their partitions and inheritance children
/// (recursively): those in `schema`, and those elsewhere (`(schema, name)`).
async fn descendants_anywhere(
    client: &Client,
    schema: &str,
    roots: &[String],
) -> Result<(Vec<(String, String)>, Vec<(String, String)>)> {
    let rows = client
        .query(
            "WITH RECURSIVE d(oid) AS (
                 SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = ANY($2)
                 UNION
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent = d.oid)
             SELECT n.nspname::text, c.relname::text FROM d JOIN pg_catalog.pg_class c ON c.oid = d.oid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              ORDER BY n.nspname <> $1, 1, 2",
            &[&schema, &roots],
        )
        .await
        .context("listing partitions of kept tables")?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .partition(|(s, _)| s == schema))
}

/// The dependency filter of [`depending_on`]: normal dependencies on the
/// tables in `t` (oid, row type), or on their row types' array types (a
/// column, an argument, an attribute or a domain of type `t[]`: the array
/// type is part of the row type, it goes where the table goes), from objects
/// that are not part of a table in `own` (the table itself, its constraints,
/// rules, defaults, triggers and policies). With `except_foreign_keys`, no
/// foreign key counts either. What uses a domain over the row type (or an
/// array of that domain) depends on the domain, which is named instead.
pub(crate) fn not_part_of(own: &str, except_foreign_keys: bool) -> String {
    let fk = if except_foreign_keys {
        "c.contype = 'f' OR "
    } else {
        ""
    };
    format!(
        "
    d.deptype = 'n'
    AND ((d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid IN (SELECT oid FROM t))
      OR (d.refclassid = 'pg_catalog.pg_type'::regclass AND d.refobjid IN (
            SELECT reltype FROM t
            UNION ALL SELECT y.typarray FROM pg_catalog.pg_type y WHERE y.oid IN (SELECT reltype FROM t))))
    AND NOT (d.classid = 'pg_catalog.pg_class'::regclass AND d.objid IN (SELECT oid FROM {own}))
    AND NOT (d.classid = 'pg_catalog.pg_constraint'::regclass AND EXISTS (
             SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid
                AND ({fk}c.conrelid IN (SELECT oid FROM {own}))))
    AND NOT (d.classid = 'pg_catalog.pg_rewrite'::regclass AND EXISTS (
             SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid AND r.ev_class IN (SELECT oid FROM {own})))
    AND NOT (d.classid = 'pg_catalog.pg_attrdef'::regclass AND EXISTS (
             SELECT 1 FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid AND a.adrelid IN (SELECT oid FROM {own})))
    AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass AND EXISTS (
             SELECT 1 FROM pg_catalog.pg_trigger g WHERE g.oid = d.objid AND g.tgrelid IN (SELECT oid FROM {own})))
    AND NOT (d.classid = 'pg_catalog.pg_policy'::regclass AND EXISTS (
             SELECT 1 FROM pg_catalog.pg_policy p WHERE p.oid = d.objid AND p.polrelid IN (SELECT oid FROM {own})))"
    )
}

/// The schema of a dependent object: its relation's for rules (views),
/// triggers, column defaults and policies, which have none of their own. Its
/// name as stored: `pg_identify_object` gives it quoted where it needs quotes.
pub(crate) const DEPENDENT_SCHEMA: &str = "
    COALESCE(
      (SELECT n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = CASE d.classid
                WHEN 'pg_catalog.pg_rewrite'::regclass THEN (SELECT x.ev_class FROM pg_catalog.pg_rewrite x WHERE x.oid = d.objid)
                WHEN 'pg_catalog.pg_trigger'::regclass THEN (SELECT x.tgrelid FROM pg_catalog.pg_trigger x WHERE x.oid = d.objid)
                WHEN 'pg_catalog.pg_attrdef'::regclass THEN (SELECT x.adrelid FROM pg_catalog.pg_attrdef x WHERE x.oid = d.objid)
                WHEN 'pg_catalog.pg_policy'::regclass THEN (SELECT x.polrelid FROM pg_catalog.pg_policy x WHERE x.oid = d.objid)
              END),
      -- An operator family's members have no schema of their own: the
      -- family's.
      (SELECT n.nspname::text FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_namespace n ON n.oid = f.opfnamespace
        WHERE f.oid = CASE d.classid
                WHEN 'pg_catalog.pg_amop'::regclass THEN (SELECT x.amopfamily FROM pg_catalog.pg_amop x WHERE x.oid = d.objid)
                WHEN 'pg_catalog.pg_amproc'::regclass THEN (SELECT x.amprocfamily FROM pg_catalog.pg_amproc x WHERE x.oid = d.objid)
              END),
      (SELECT n.nspname::text FROM pg_catalog.pg_namespace n
        WHERE pg_catalog.quote_ident(n.nspname) = (pg_catalog.pg_identify_object(d.classid, d.objid, 0)).schema))";

/// How to name a dependent object for people: views by name (their query is
/// their `_RETURN` rule), other rules as `rule r on table public.t`, the rest
/// as `pg_describe_object` says.
pub(crate) const DESCRIBE_DEPENDENT: &str = "
    CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass
         THEN (SELECT CASE WHEN r.rulename = '_RETURN' AND v.relkind IN ('v', 'm')
                           THEN CASE v.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END
                           ELSE 'rule ' || pg_catalog.quote_ident(r.rulename) || ' on '
                                || CASE v.relkind WHEN 'v' THEN 'view ' WHEN 'm' THEN 'materialized view '
                                                  WHEN 'f' THEN 'foreign table ' ELSE 'table ' END END
                      || pg_catalog.quote_ident(vn.nspname) || '.' || pg_catalog.quote_ident(v.relname)
                 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
                 JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace WHERE r.oid = d.objid)
         ELSE pg_catalog.pg_describe_object(d.classid, d.objid, 0) END";

/// Whether a dependent object is, or is part of, a table, view,
/// materialized view or foreign table (a view's rule, a table's column,
/// constraint, default, trigger, rule or policy): something `--exclude-table`
/// can leave out with its relation. Functions, types, domains and the like
/// are not: they come with their schema.
pub(crate) const DEPENDENT_IN_RELATION: &str = "
    COALESCE((SELECT c.relkind IN ('r', 'p', 'f', 'v', 'm') FROM pg_catalog.pg_class c
               WHERE c.oid = CASE d.classid
                       WHEN 'pg_catalog.pg_class'::regclass THEN d.objid
                       WHEN 'pg_catalog.pg_rewrite'::regclass THEN (SELECT x.ev_class FROM pg_catalog.pg_rewrite x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_trigger'::regclass THEN (SELECT x.tgrelid FROM pg_catalog.pg_trigger x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_attrdef'::regclass THEN (SELECT x.adrelid FROM pg_catalog.pg_attrdef x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_policy'::regclass THEN (SELECT x.polrelid FROM pg_catalog.pg_policy x WHERE x.oid = d.objid)
                       WHEN 'pg_catalog.pg_constraint'::regclass THEN (SELECT x.conrelid FROM pg_catalog.pg_constraint x WHERE x.oid = d.objid)
                     END), false)";

/// Objects of the schemas `among` that depend on `schema`'s copies of
/// `tables` or on the sequences those own (views, functions with SQL
/// bodies, columns of their row type, another table's default drawing from
/// their sequence…), other than the tables' own parts and foreign keys
/// (those are re-pointed), and the parts of the tables `beside` (`(schema,
/// name)`: kept along with them; a default of one drawing from the other's
/// sequence stays with it).
///
/// For a backup's own copies of kept tables, `among` every schema of the
/// backup: those objects would move in while the copy stays behind, and
/// read it (a refusal); a view of the backup's `audit` over its
/// `billing.invoices` counts as one of `billing`'s own. For a live schema's
/// kept tables, `among` the schemas that move (to their backups): those
/// objects move along, and keep reading the kept table (a warning); objects
/// elsewhere stay where they are.
async fn dependents_among(
    client: &Client,
    schema: &str,
    tables: &[String],
    among: &[String],
    beside: &[(String, String)],
) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let (beside_schemas, beside_names): (Vec<&str>, Vec<&str>) =
        beside.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    Ok(names(
        depending_on(
            client,
            "tables AS (SELECT c.oid, c.reltype FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p')),
             t AS (SELECT oid, reltype FROM tables
                   UNION
                   SELECT s.oid, s.reltype FROM pg_catalog.pg_class s JOIN pg_catalog.pg_depend d
                       ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.oid
                      AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
                    WHERE s.relkind = 'S' AND d.refobjid IN (SELECT oid FROM tables)),
             own_t AS (SELECT oid, reltype FROM t
                       UNION
                       SELECT c.oid, c.reltype FROM unnest($4::text[], $5::text[]) b(s, r)
                         JOIN pg_catalog.pg_namespace n ON n.nspname = b.s
                         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = b.r
                        WHERE c.relkind IN ('r', 'p'))",
            "own_t",
            true,
            Some("$3::text[]"),
            &[&schema, &tables, &among, &beside_schemas, &beside_names],
            "kept tables",
        )
        .await?,
    ))
}

/// The names of [`depending_on`]'s objects.
pub(crate) fn names(objects: Vec<(String, bool)>) -> Vec<String> {
    objects.into_iter().map(|(name, _)| name).collect()
}

/// Objects (named for people, sorted) with a normal dependency on the tables
/// of `t` (or their row types) that are not part of a table of `own` (see
/// [`not_part_of`]): views, other tables' foreign keys (unless
/// `except_foreign_keys`), SQL-body functions, columns of their row type…
/// `with` defines the CTE `t` (oid, reltype), and `own` when it differs;
/// `only_in` names a text[] parameter (`$5`, say) and keeps the objects of
/// those schemas;
/// `what` names the tables in an error. Each object comes with whether it is or
/// belongs to a relation ([`DEPENDENT_IN_RELATION`]).
pub(crate) async fn depending_on(
    client: &Client,
    with: &str,
    own: &str,
    except_foreign_keys: bool,
    only_in: Option<&str>,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<Vec<(String, bool)>> {
    let within = only_in
        .map(|p| format!(" AND {DEPENDENT_SCHEMA} = ANY({p})"))
        .unwrap_or_default();
    let sql = format!(
        "WITH {with}
         SELECT DISTINCT {DESCRIBE_DEPENDENT}, {DEPENDENT_IN_RELATION}
           FROM pg_catalog.pg_depend d WHERE {}{within} ORDER BY 1",
        not_part_of(own, except_foreign_keys)
    );
    let rows = client
        .query(sql.as_str(), params)
        .await
        .map_err(|e| pg_error_as(e, &format!("looking for objects that depend on {what}")))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<_, Option<String>>(0)?, r.get::<_, bool>(1))))
        .collect())
}

/// What an operator should know about `schema`'s kept `tables` when the rest
/// of `schema`, and of every schema of `moving`, moves to `to` (a backup):
/// objects depending on them move along and keep reading the kept table;
/// objects of those schemas they use (types, standalone sequences,
/// functions: their own schema's, or another's, say a domain of public used
/// by a kept table of billing) move along and the kept table keeps using
/// that copy.
pub(crate) async fn kept_table_warnings(
    client: &Client,
    schema: &str,
    tables: &[String],
    also_kept: &[(String, String)],
    moving: &[String],
    to: &str,
) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let mut moving = moving.to_vec();
    if !moving.iter().any(|s| s == schema) {
        moving.push(schema.to_string());
    }
    let mut warnings: Vec<String> = dependents_among(client, schema, tables, &moving, also_kept)
        .await?
        .into_iter()
        .map(|d| {
            format!(
                "{d} depends on a kept table of {schema}; it moves to {to} with the rest of its schema and keeps reading the kept table"
            )
        })
        .collect();
    let (also_schemas, also_names): (Vec<&str>, Vec<&str>) = also_kept
        .iter()
        .map(|(s, n)| (s.as_str(), n.as_str()))
        .unzip();
    let uses: Vec<(String, String, String)> = query_map(
        client,
        &format!(
            "WITH kept AS (SELECT c.oid, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = $2 AND c.relname = ANY($1) AND c.relkind IN ('r', 'p')),
                  -- With the tables kept in the other schemas: what they
                  -- own stays live too.
                  all_kept AS (SELECT oid FROM kept
                               UNION SELECT c.oid FROM unnest($4::text[], $5::text[]) b(s, r)
                                 JOIN pg_catalog.pg_namespace n ON n.nspname = b.s
                                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = b.r),
                  parts(classid, objid, rel) AS (
                    SELECT 'pg_catalog.pg_class'::regclass, oid, oid FROM kept
                    UNION ALL SELECT 'pg_catalog.pg_attrdef'::regclass, a.oid, a.adrelid FROM pg_catalog.pg_attrdef a WHERE a.adrelid IN (SELECT oid FROM kept)
                    UNION ALL SELECT 'pg_catalog.pg_constraint'::regclass, c.oid, c.conrelid FROM pg_catalog.pg_constraint c
                               WHERE c.conrelid IN (SELECT oid FROM kept) AND c.contype <> 'f'
                    UNION ALL SELECT 'pg_catalog.pg_trigger'::regclass, g.oid, g.tgrelid FROM pg_catalog.pg_trigger g
                               WHERE g.tgrelid IN (SELECT oid FROM kept) AND NOT g.tgisinternal),
                  used AS (
                    SELECT d.refclassid, d.refobjid, k.relname,
                           (pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0)).schema AS quoted
                      FROM pg_catalog.pg_depend d JOIN parts p ON p.classid = d.classid AND p.objid = d.objid
                      JOIN kept k ON k.oid = p.rel
                     WHERE d.deptype = 'n'
                       AND NOT (d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid IN (SELECT oid FROM all_kept))
                       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend o
                                        WHERE o.classid = d.refclassid AND o.objid = d.refobjid
                                          AND (o.deptype = 'e' OR (o.deptype IN ('a', 'i') AND o.refobjid IN (SELECT oid FROM all_kept))))
                       -- nor the array type of an extension's type (citext[]
                       -- goes where citext goes)
                       AND {not_ext_array})
             SELECT DISTINCT pg_catalog.pg_describe_object(u.refclassid, u.refobjid, 0), m.s, u.relname::text
               FROM used u
               -- (pg_identify_object quotes the schema's name)
               JOIN pg_catalog.unnest($3::text[]) AS m(s) ON pg_catalog.quote_ident(m.s) = u.quoted
              ORDER BY 1, 3",
            not_ext_array = crate::pg::catalog::NOT_EXT_ARRAY_REF
        ),
        &[&tables, &schema, &moving, &also_schemas, &also_names],
        "looking for what kept tables use",
        |r| (r.get(0), r.get(1), r.get(2)),
    )
    .await?;
    warnings.extend(uses.into_iter().map(|(d, of, table)| {
        format!(
            "a kept table uses {d}, which moves to {to} with the rest of {of}; the kept table ({}) keeps using that copy",
            crate::pg::meta::table_display(schema, &table)
        )
    }));
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fk_sql_quotes_everything() {
        let fk = ForeignKeyDef {
            name: "Orders_user\"fk".into(),
            schema: "public".into(),
            ref_schema: "public".into(),
            table: "Orders".into(),
            columns: vec!["user id".into()],
            ref_table: "users".into(),
            ref_columns: vec!["id".into()],
            match_type: "SIMPLE".into(),
            on_update: "NO ACTION".into(),
            on_delete: "SET NULL".into(),
            on_delete_columns: vec!["user id".into()],
            deferrable: true,
            initially_deferred: true,
        };
        assert_eq!(
            add_fk_sql(&fk, "public", "public", true),
            "ALTER TABLE \"public\".\"Orders\" ADD CONSTRAINT \"Orders_user\"\"fk\" FOREIGN KEY (\"user id\") REFERENCES \"public\".\"users\" (\"id\") ON UPDATE NO ACTION ON DELETE SET NULL (\"user id\") DEFERRABLE INITIALLY DEFERRED NOT VALID"
        );
        let plain = ForeignKeyDef {
            on_delete: "CASCADE".into(),
            match_type: "FULL".into(),
            deferrable: false,
            ..fk
        };
        let sql = add_fk_sql(&plain, "a", "b", false);
        assert!(sql.contains("REFERENCES \"b\".\"users\""), "{sql}");
        assert!(sql.contains("MATCH FULL"), "{sql}");
        assert!(sql.ends_with("ON DELETE CASCADE"), "{sql}");
    }
}
