//! `swap` of a prepared migration: which migration (the destination's state,
//! derived in `migration::derive`), the checks before anything changes (the
//! shadow still holds what prepare validated; foreign keys involving preserved
//! tables match), the catch-up of preserved tables, then the engine's swap
//! with the final replay and the deferred constraints inside its transaction,
//! and afterwards the validation of those constraints, the record and the
//! state file. The impact checks ([`crate::swap::impact::gate`]) run before the swap
//! (discarded writes, then what would break) and again under its locks
//! (discarded writes); the dry run shows the whole report.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::manifest::{self, Manifest};
use crate::error::{UserError, VerificationFailed};
use crate::migration::derive::{self, Destination, State};
use crate::migration::lifecycle::{Phase, Status};
use crate::migration::record::{self, MigrationRow};
use crate::migration::session::{Recorder, Session, failpoint};
use crate::pg::catalog;
use crate::pg::ident::{TableName, display_ident};
use crate::pg::locks_budget::{Budget, Need};
use crate::pg::meta::{self, SchemaPair};
use crate::pg::pattern::TablePattern;
use crate::prepare::sync::{self, CreatedFk, FkViolation, SyncedTable};
use crate::prepare::{filters, privileges};
use crate::swap::engine::{self, Exchange, InTx, Moved, Moves, Origin, Policy};
use crate::swap::fence::{self, FencedSequence, Fences};
use crate::swap::impact::gate::{self, ImpactOptions, UnderLocks};
use crate::swap::impact::{
    Impact, ImpactRequest, Operation, Unkeepable, WriteBaseline, WriteCheck,
};
use crate::swap::mode::Chosen;
use crate::swap::rollback::{self, CrossingFixed, FkChange, Place};

/// What a swap reports.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    pub migration_id: i64,
    #[serde(flatten)]
    pub mode: Chosen,
    pub backup_schema: String,
    pub backup_timestamp: i64,
    #[serde(flatten)]
    pub moved: Moved,
    pub tables: usize,
    pub preserved_tables: Vec<String>,
    /// `preserved_tables` as the text report names them (`"User"`).
    #[serde(skip)]
    pub preserved_shown: Vec<String>,
    pub fk_not_valid: Vec<String>,
    /// Of `fk_not_valid`, the partitioned tables' keys that could not be
    /// added at all (their partitions' copies stay NOT VALID); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fk_not_added: Vec<String>,
    pub warnings: Vec<String>,
    /// The impact report checked before the swap (its discarded writes as
    /// allowed by `--allow-discard`).
    pub impact: Impact,
    /// Tables that stayed in public as they were (`--keep-tables`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_tables: Vec<String>,
    /// Foreign keys between kept tables and the backup, re-pointed or detached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys: Vec<FkChange>,
    /// A migration of several schemas: each live schema and its backup
    /// schema (absent for public alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::backups::manifest::SchemaMap>,
}

/// A dry run's output.
#[derive(Debug, Clone, Serialize)]
pub struct SwapPreview {
    pub migration_id: i64,
    #[serde(flatten)]
    pub mode: Chosen,
    pub backup_schema: String,
    #[serde(flatten)]
    pub moves: Moves,
    pub fk_violations: Vec<FkViolation>,
    /// Foreign keys that cannot be checked before the swap (row-level
    /// security hides rows from this role), one line each; absent if none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fk_unchecked: Vec<String>,
    /// The swap's need against the destination's lock table; a swap that
    /// does not fit (`fits: false`) is refused before any lock.
    pub swap_lock_budget: Budget,
    /// What the swap would do to the running application.
    pub impact: Impact,
    /// Why the swap would refuse now with these options (discarded writes,
    /// or breaking findings with `--fail-on-breaking`), or null: the first
    /// of `refusals`, where the swap refuses.
    pub refusal: Option<String>,
    /// Every reason it would refuse for, in the order it checks them.
    pub refusals: Vec<String>,
    /// The shadow is not what prepare built (one of `refusals`): the dry
    /// run exits 3 after its plan, as the swap and `rollback --dry-run` do.
    #[serde(skip)]
    pub mismatch: Option<String>,
    /// What the swap would warn about as things stand (sequences no column
    /// uses that keep the source's value, or reach the end of its
    /// definition), as in the swap's own `warnings`.
    pub warnings: Vec<String>,
    /// Tables that stay in public as they are (`--keep-tables`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_tables: Vec<String>,
    /// A migration of several schemas: each live schema and its backup
    /// schema (absent for public alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::backups::manifest::SchemaMap>,
}

/// What the caller asks of a swap.
#[derive(Debug, Clone)]
pub struct SwapOptions {
    /// Complete only this migration (its id, as typed).
    pub timestamp: Option<String>,
    /// Keep the dump directory.
    pub keep_dump: bool,
    /// The shadow was validated moments ago by the same run (`start`).
    pub prevalidated: bool,
    /// Create foreign keys whose rows do not match NOT VALID instead of refusing.
    pub allow_fk_violations: bool,
    pub policy: Policy,
    /// Discarded writes, breaking findings, the workload check.
    pub impact: ImpactOptions,
    /// Destination tables that stay in public, besides those kept at prepare.
    pub keep_tables: Vec<TablePattern>,
}

/// The migration a swap completes, or why there is none. `d` was observed by
/// this run; a swap of an earlier version that committed without recording
/// it is an error here (the caller records it when it holds the lock).
fn ready<'a>(d: &'a Destination, timestamp: Option<&str>) -> Result<&'a MigrationRow> {
    if let (Some(backup), Some(row)) = (&d.committed_unrecorded, &d.row) {
        crate::refuse!(
            "migration {} was already swapped into public (the old public is {backup}); nothing left to swap",
            row.id
        );
    }
    if let Some(row) = &d.row
        && row.state.status == Status::Swapping
        && d.running.is_none()
    {
        tracing::warn!(
            "an earlier swap of migration {} stopped before committing; the shadow is intact, swapping again",
            row.id
        );
    }
    let Some(m) = d.swappable() else {
        if d.state == State::Failed {
            return Err(UserError::new(format!(
                "nothing is prepared on the destination: {}",
                crate::migration::status::failed_gate(d)
            ))
            .into());
        }
        return Err(UserError::new(
            "nothing is prepared on the destination: run `pgshift prepare` first",
        )
        .into());
    };
    if d.shadow_replaced() {
        bail!(
            "the shadow schema is not the one migration {} created; run `pgshift abort` and prepare again",
            m.id
        );
    }
    if let Some(ts) = timestamp {
        let want: i64 = ts.trim().parse().map_err(|_| {
            UserError::new(format!(
                "--timestamp {ts:?} is not a migration id (unix milliseconds)"
            ))
        })?;
        if want != m.id {
            crate::refuse!(
                "--timestamp {want} does not match the prepared migration ({}); see `pgshift status`",
                m.id
            );
        }
    }
    Ok(m)
}

/// The migration's schemas and their shadows.
fn pairs(m: &MigrationRow) -> Vec<SchemaPair> {
    meta::schema_pairs(&m.state.schemas)
}

/// What comes in (each shadow), what goes out (each live schema but
/// public's kept tables).
fn exchange(m: &MigrationRow, kept: &Kept) -> Exchange {
    let mut ex = Exchange::of_shadows(&pairs(m));
    for p in ex.pairs.iter_mut() {
        p.keep = kept.by_schema.get(&p.live).cloned().unwrap_or_default();
        p.expected_tables = m
            .state
            .tables
            .iter()
            .filter(|t| t.schema == p.live)
            .map(|t| t.name.clone())
            .chain(p.keep.iter().cloned())
            .collect();
    }
    ex
}

/// The tables that stay live (`--keep-tables` of prepare and swap).
#[derive(Debug, Clone, Default)]
struct Kept {
    /// Every kept table, partitions included, by key (`name` in public,
    /// `schema.name` elsewhere).
    all: BTreeSet<String>,
    /// The same, by live schema.
    by_schema: BTreeMap<String, BTreeSet<String>>,
    /// Their foreign keys to tables that move out, as they will point at the
    /// shadows' namesakes (checked for violations like deferred keys).
    fk_sql: Vec<String>,
    pg15: bool,
}

impl Kept {
    /// What the kept tables leave behind as the rest of their schemas moves
    /// to the backup (objects that read them, objects they use), as prepare
    /// and a rollback say it; every migrated schema of `m` moves.
    async fn warnings(&self, client: &Client, m: &MigrationRow) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let all: Vec<(String, String)> = self
            .by_schema
            .iter()
            .flat_map(|(s, t)| t.iter().map(|t| (s.clone(), t.clone())))
            .collect();
        for (s, tables) in &self.by_schema {
            let tables: Vec<String> = tables.iter().cloned().collect();
            out.extend(
                rollback::kept_table_warnings(
                    client,
                    s,
                    &tables,
                    &all,
                    &m.state.schemas,
                    "the backup",
                )
                .await?,
            );
        }
        Ok(out)
    }
}

/// Find the kept tables and check them (read only): each exists in its live
/// schema, its shadow has no namesake (it would have to move in beside it),
/// and every table of the migrated schemas a kept table's foreign key
/// references is kept or comes in.
async fn kept_tables(client: &Client, m: &MigrationRow, extra: &[TablePattern]) -> Result<Kept> {
    let schemas = &m.state.schemas;
    let (_, matched) = filters::match_keep(client, schemas, extra).await?;
    let mut roots: BTreeSet<String> = m.state.keep_tables.iter().cloned().collect();
    roots.extend(matched);
    if roots.is_empty() {
        return Ok(Kept::default());
    }
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut shadows: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut both = Vec::new();
    let mut seen = BTreeSet::new();
    for s in schemas {
        let live = rollback::tables_of(client, s).await?;
        let shadow = rollback::tables_of(client, &meta::shadow_schema_for(s)).await?;
        for t in live {
            let key = meta::table_display(s, &t);
            if roots.contains(&key) {
                if shadow.contains(&t) {
                    both.push((s.clone(), t.clone(), key.clone()));
                }
                seen.insert(key);
                found.entry(s.clone()).or_default().insert(t);
            }
        }
        shadows.insert(s.clone(), shadow);
    }
    let gone: Vec<&String> = roots.iter().filter(|t| !seen.contains(*t)).collect();
    if !gone.is_empty() {
        crate::refuse!(
            "kept tables are no longer there: {}; nothing was changed",
            display_list(schemas, gone)
        );
    }
    if !both.is_empty() {
        refuse_kept_namesakes(client, &found, &both).await?;
    }
    let mut by_schema = BTreeMap::new();
    let mut all = BTreeSet::new();
    for (s, roots) in found {
        let list: Vec<String> = roots.iter().cloned().collect();
        let mut tables = roots;
        tables.extend(rollback::descendants(client, &s, &list).await?);
        all.extend(tables.iter().map(|t| meta::table_display(&s, t)));
        by_schema.insert(s, tables);
    }
    let pg15 = catalog::server_major(client).await? >= 15;
    let arrives = |s: &str, t: &str| shadows.get(s).is_some_and(|sh| sh.contains(t));
    let fk_sql = filters::kept_foreign_keys(client, schemas, &by_schema, arrives)
        .await?
        .iter()
        .map(|fk| {
            rollback::add_fk_sql(
                fk,
                &fk.schema,
                &meta::shadow_schema_for(&fk.ref_schema),
                false,
            ) + ";"
        })
        .collect();
    Ok(Kept {
        all,
        by_schema,
        fk_sql,
        pg15,
    })
}

/// Refuse kept tables whose namesakes the shadow holds (`both`: schema,
/// table, key): a kept partition (the pattern matched it, or its parent's
/// manifest entry brought it) is named with its kept parent, which is what to
/// keep when preparing again.
async fn refuse_kept_namesakes(
    client: &Client,
    found: &BTreeMap<String, BTreeSet<String>>,
    both: &[(String, String, String)],
) -> Result<()> {
    // Each kept table of a schema with the tables below it.
    let mut below: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for (schema, roots) in found {
        for root in roots {
            let under = rollback::descendants(client, schema, std::slice::from_ref(root)).await?;
            below.push((schema, root, under));
        }
    }
    let parents_of = |schema: &str, table: &str| -> Vec<&str> {
        below
            .iter()
            .filter(|(s, r, under)| *s == schema && *r != table && under.iter().any(|u| u == table))
            .map(|(_, r, _)| *r)
            .collect()
    };
    let mut shown = Vec::new();
    let mut to_keep = BTreeSet::new();
    for (schema, table, key) in both {
        let parents = parents_of(schema, table);
        if parents.is_empty() {
            shown.push(key.clone());
            to_keep.insert(key.clone());
            continue;
        }
        let named: Vec<String> = parents
            .iter()
            .map(|p| meta::table_display(schema, p))
            .collect();
        shown.push(format!(
            "{key} (a partition or child of the kept {})",
            named.join(", ")
        ));
        // The topmost of them: keeping it keeps the others.
        to_keep.extend(
            parents
                .iter()
                .filter(|p| parents_of(schema, p).is_empty())
                .map(|p| meta::table_display(schema, p)),
        );
    }
    let to_keep = to_keep.into_iter().collect::<Vec<_>>().join(",");
    let typed = if to_keep.contains('"') {
        format!("'{to_keep}'")
    } else {
        to_keep.clone()
    };
    crate::refuse!(
        "--keep-tables: the prepared shadow has its own {}, which the source has too; keep {to_keep} when preparing (`pgshift prepare --keep-tables {typed}`) or abort and prepare again; nothing was changed",
        shown.join(", "),
    )
}

/// Keys as people read them: a table of public quoted where it needs it, a
/// key of another chosen schema (`billing.notes`, already in display form) as
/// it is.
fn display_list(schemas: &[String], keys: Vec<&String>) -> String {
    let other_schema = |k: &str| {
        schemas.iter().any(|s| {
            s != meta::PUBLIC
                && k.strip_prefix(display_ident(s).as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    };
    keys.into_iter()
        .map(|k| {
            if other_schema(k) {
                k.clone()
            } else {
                display_ident(k)
            }
        })
        .join(", ")
}

/// Work inside the swap transaction for a migration: the discarded-writes
/// check, the preserved tables' final replay, then their deferred
/// constraints, triggers and rules; after the moves, the kept tables'
/// foreign keys.
struct MigrationTx<'a> {
    pairs: Vec<SchemaPair>,
    synced: &'a [SyncedTable],
    deferred: &'a [String],
    /// None for a migration prepared without a baseline (checked before).
    writes: Option<UnderLocks<'a>>,
    kept: &'a Kept,
    /// Lock-table slots of the work above ([`sync::swap_need`]).
    need: Need,
    /// The partitions the deferred keys of partitioned tables go onto.
    leaves: sync::DeferredLeaves,
}

/// What the work before the moves hands back.
struct BeforeMoves {
    /// Foreign keys created NOT VALID, to validate after the commit.
    fks: Vec<CreatedFk>,
    /// The writes the swap discards (allowed), as counted under the locks.
    writes: Option<WriteCheck>,
    /// Sequences left at the source's value
    /// ([`sync::carry_standalone_sequences`]), and those the fence could
    /// not stop ([`Fences`]).
    warnings: Vec<String>,
    /// The destination's sequences the carry fenced, for the manifest
    /// ([`crate::swap::fence`]).
    fenced: Vec<FencedSequence>,
}

impl<'a> MigrationTx<'a> {
    /// The hook of `m`'s swap as things stand (read only): for the swap, its
    /// dry run and the outlook of `status`.
    async fn read(
        client: &Client,
        m: &'a MigrationRow,
        kept: &'a Kept,
        writes: Option<UnderLocks<'a>>,
    ) -> Result<Self> {
        let details = &m.state.details;
        let leaves = sync::deferred_leaves(client, &details.deferred_sql).await?;
        let pairs = pairs(m);
        Ok(MigrationTx {
            need: sync::swap_need(
                client,
                &details.sync,
                &pairs,
                &details.deferred_sql,
                &leaves,
            )
            .await?,
            pairs,
            synced: &details.sync,
            deferred: &details.deferred_sql,
            writes,
            kept,
            leaves,
        })
    }

    /// What [`sync::carry_standalone_sequences`] would warn about if the
    /// swap ran now: it runs with preserved tables only (read only).
    async fn carry_foreseen(&self, client: &Client) -> Result<Vec<String>> {
        if self.synced.is_empty() {
            return Ok(Vec::new());
        }
        sync::standalone_sequence_warnings(client, &self.pairs, sync::CarrySides::SWAP, &[]).await
    }

    /// What stays live through the swap, for the fence.
    fn scope(&self) -> fence::Scope {
        fence::Scope::of(self.pairs.iter().map(|p| &p.live), &self.kept.by_schema)
    }
}

impl InTx for MigrationTx<'_> {
    type Before = BeforeMoves;
    /// Kept tables' foreign keys that crossed into the backup.
    type After = Option<CrossingFixed>;

    async fn before_moves(&self, client: &Client) -> Result<Self::Before> {
        let writes = match &self.writes {
            Some(w) => Some(w.check(client).await?),
            None => None,
        };
        let mut fences = Fences::new(self.scope());
        sync::final_sync(client, self.synced, &mut fences).await?;
        let mut warnings = if self.synced.is_empty() {
            Vec::new()
        } else {
            sync::carry_standalone_sequences(
                client,
                &self.pairs,
                &mut fences,
                sync::CarrySides::SWAP,
            )
            .await?
        };
        warnings.extend(fences.warnings);
        let fenced = fences.records;
        let fks = sync::apply_deferred(client, self.deferred, &self.pairs, &self.leaves).await?;
        Ok(BeforeMoves {
            fks,
            writes,
            warnings,
            fenced,
        })
    }

    /// Kept tables stayed in public: their keys into the backup are
    /// re-pointed to the new public, the backup's keys to them detached (and
    /// recorded in its manifest, as a rollback with `--keep-tables` does).
    async fn after_moves(
        &self,
        client: &Client,
        before: &BeforeMoves,
        manifest: &mut Manifest,
    ) -> Result<Option<CrossingFixed>> {
        manifest.fenced_sequences = before.fenced.clone();
        if self.kept.all.is_empty() {
            return Ok(None);
        }
        let places: Vec<Place> = manifest
            .schema_maps()
            .iter()
            .flat_map(|m| [Place::live(&m.live), Place::backup(&m.backup, &m.live, 0)])
            .collect();
        let fixed = rollback::fix_crossing_fks(client, &places, self.kept.pg15, "the swap").await?;
        manifest.detached_foreign_keys = fixed.detached.values().flatten().cloned().collect();
        manifest.kept_tables = self.kept.all.iter().cloned().collect();
        Ok(Some(fixed))
    }

    fn preview_notes(&self) -> (Vec<String>, Vec<String>) {
        let mut before = Vec::new();
        if self.writes.is_some() {
            before.push(UnderLocks::preview_note());
        }
        before.extend([
            "-- preserved tables: final replay, sequences carried over (the destination's fenced in the backup, recorded in its manifest), sync triggers dropped"
                .to_string(),
            "-- deferred constraints, triggers and rules of preserved tables".to_string(),
        ]);
        let mut at_commit = Vec::new();
        if !self.kept.all.is_empty() {
            at_commit.push(
                "-- foreign keys between kept tables and the backup re-pointed (NOT VALID, validated after COMMIT) or detached (recorded in the manifest)"
                    .to_string(),
            );
        }
        at_commit.push("-- backup manifest written to pgshift.backups".into());
        (before, at_commit)
    }

    fn lock_need(&self) -> Need {
        self.need.clone()
    }

    /// The application kept writing the preserved tables while the last
    /// attempt waited: replay that outside the locks, so the final replay
    /// under them stays short however many attempts it takes.
    async fn before_retry(&self, control: &Client) {
        match sync::catch_up(control, self.synced).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "preserved tables caught up before a retry"),
            Err(e) => {
                tracing::warn!("could not catch up the preserved tables before a retry: {e:#}")
            }
        }
    }

    fn incoming_locks(&self) -> Vec<String> {
        // Kept tables the engine locks itself.
        sync::shadow_locks(self.synced)
    }
}

/// Plan without changing anything (`--dry-run`).
pub async fn preview(client: &Client, opts: &SwapOptions) -> Result<SwapPreview> {
    let d = Destination::observe(client).await?;
    let m = ready(&d, opts.timestamp.as_deref())?;
    gate::check_allowed_tables(
        client,
        Operation::Swap,
        &opts.impact.allow_discard,
        &opts.impact.allow_discard_given_as,
        &lives(m),
    )
    .await?;
    let details = &m.state.details;
    let kept = kept_tables(client, m, &opts.keep_tables).await?;
    let writes = details
        .write_baseline
        .as_ref()
        .map(|b| under_locks(exempt(m, &kept), opts, b, b));
    let hook = MigrationTx::read(client, m, &kept, writes).await?;
    let p = engine::preview(client, &exchange(m, &kept), opts.policy, &hook).await?;
    let fk_check = fk_violations(client, m, &kept).await?;
    let impact = gate::migration_report_keeping(
        client,
        &m.state,
        &kept.by_schema,
        &opts.impact.workload,
        opts.policy.lock_timeout,
    )
    .await?;
    // In the order the swap itself refuses: a shadow that changed since
    // prepare, a broken sync, the impact gates, a row written since prepare
    // that the replay would fail on (tried and rolled back), the foreign
    // keys, the sequences, objects this role may not move, the lock table.
    let changed = shadow_changed(client, m, false).await?;
    let broken = sync::broken(client, &details.sync).await?;
    // Not while a run holds the destination (its locks on the shadow must
    // not hold up a running swap's).
    let (rejected, untried) = if broken.is_none() && d.running.is_none() {
        sync::rejected(client, &details.sync).await?
    } else {
        (Vec::new(), Vec::new())
    };
    // A broken sync (a preserved table given away, say) refuses first, and
    // is why the sequences may not be readable (h46a: the dry run failed).
    let misfit = match broken {
        None => sequence_refusal(client, &details.sync).await?,
        Some(_) => None,
    };
    let refusals: Vec<String> = [d.lock_refusal(), changed.clone(), broken]
        .into_iter()
        .flatten()
        .chain(gate::refusals(&impact, &opts.impact))
        .chain(rejected)
        .chain(
            [
                fk_refusal(&fk_check, opts.allow_fk_violations),
                misfit,
                p.unmovable.refusal("the swap"),
                p.lock_budget.refusal("the swap"),
            ]
            .into_iter()
            .flatten(),
        )
        .collect();
    let schemas = p.schemas.clone();
    let mut warnings = kept.warnings(client, m).await?;
    warnings.extend(
        crate::prepare::preflight::extension_config_refs(
            client,
            &m.state.schemas,
            "swap",
            &kept.all,
        )
        .await?,
    );
    warnings.extend(hook.carry_foreseen(client).await?);
    warnings.extend(
        crate::backups::manifest::uncountable(client, &lives(m), |schema, table| {
            kept.by_schema
                .get(schema)
                .is_some_and(|k| k.contains(table))
        })
        .await?,
    );
    // The owners the swap will not carry over from the live objects, as it
    // will warn (h46a: said by the swap alone).
    for p in pairs(m) {
        warnings.extend(
            privileges::catch_up(
                client,
                &p.shadow,
                &p.live,
                m.state.details.keep_source_owners,
            )
            .await?
            .warnings,
        );
    }
    warnings.extend(untried);
    Ok(SwapPreview {
        migration_id: m.id,
        mode: p.mode,
        backup_schema: p.backup_schema,
        moves: p.moves,
        fk_violations: fk_check.violations,
        fk_unchecked: fk_check.unchecked,
        swap_lock_budget: p.lock_budget,
        impact,
        refusal: refusals.first().cloned(),
        refusals,
        mismatch: changed,
        kept_tables: kept.all.iter().cloned().collect(),
        schemas,
        warnings,
    })
}

/// The rows that break the foreign keys the swap creates: the preserved
/// tables' deferred keys and the kept tables' crossing ones.
/// The changes still waiting in the changelogs count as replayed, as the
/// swap replays them first ([`sync::fk_violations_replayed`]).
async fn fk_violations(client: &Client, m: &MigrationRow, kept: &Kept) -> Result<sync::FkCheck> {
    sync::fk_violations_replayed(
        client,
        &m.state.details.sync,
        &[&m.state.details.deferred_sql, &kept.fk_sql],
        &pairs(m),
    )
    .await
}

/// [`fk_violations`] of `m` as the swap would find them now, its kept
/// tables looked up again (for `status`).
pub async fn fk_violations_now(client: &Client, m: &MigrationRow) -> Result<sync::FkCheck> {
    let kept = kept_tables(client, m, &[]).await?;
    fk_violations(client, m, &kept).await
}

/// For prepare: the rows that break the kept tables' crossing foreign keys,
/// and (`deferred`) the source's keys the swap creates (those that
/// reference a kept table among them), as the swap would find them now.
/// Prepare's sync phase checks the deferred keys itself when it has
/// preserved tables.
pub async fn kept_fk_violations(
    client: &Client,
    m: &MigrationRow,
    deferred: bool,
) -> Result<sync::FkCheck> {
    let kept = kept_tables(client, m, &[]).await?;
    let mut check = sync::fk_violations(client, &kept.fk_sql, &pairs(m)).await?;
    if deferred {
        check.extend(sync::fk_violations(client, &m.state.details.deferred_sql, &pairs(m)).await?);
    }
    Ok(check)
}

/// Why the swap refuses these foreign-key violations, or keys it could not
/// check, unless allowed.
pub(crate) fn fk_refusal(check: &sync::FkCheck, allowed: bool) -> Option<String> {
    if allowed {
        return None;
    }
    if !check.violations.is_empty() {
        return Some(format!(
            "foreign keys involving preserved or kept tables do not match the destination's rows; nothing was changed. {} (fix the rows, or pass --allow-fk-violations to create these constraints NOT VALID)",
            sync::violations_line(&check.violations)
        ));
    }
    check.unchecked_line().map(|line| {
        format!(
            "{line}; nothing was changed (connect as a role that bypasses row-level security, or pass --allow-fk-violations: such a key is then validated right after the swap, and stays NOT VALID if a row has no match)"
        )
    })
}

/// Why the swap refuses the preserved tables' column sequences as they stand
/// ([`sync::sequence_misfits`]: the destination's value does not fit the
/// source's sequence), or `None`.
pub async fn sequence_refusal(client: &Client, synced: &[SyncedTable]) -> Result<Option<String>> {
    let misfits = sync::sequence_misfits(client, synced).await?;
    Ok(misfits.first().map(|first| {
        let more = match misfits.len() {
            1 => String::new(),
            n => format!(" (and {} more such sequences)", n - 1),
        };
        format!("{first}{more}; nothing was changed")
    }))
}

/// The lock budget of swapping the prepared migration `m` now, in the mode
/// `policy` would choose, and what that swap could not move (for
/// `status`); changes nothing.
pub async fn outlook(client: &Client, m: &MigrationRow, policy: Policy) -> Result<engine::Outlook> {
    let kept = kept_tables(client, m, &[]).await.unwrap_or_default();
    let hook = MigrationTx::read(client, m, &kept, None).await?;
    engine::outlook(
        client,
        &exchange(m, &kept),
        policy,
        hook.lock_need(),
        hook.incoming_locks(),
    )
    .await
}

/// Tables whose writes the swap keeps: preserved, and kept at prepare or now
/// (`--keep-tables`, partitions included).
fn exempt(m: &MigrationRow, kept: &Kept) -> Vec<TableName> {
    gate::exempt_keeping(&m.state, &kept.by_schema)
}

/// The discarded-writes check under the swap's locks, when prepare recorded a
/// baseline (without one every table is unknown, and the check before the
/// swap has already refused or been allowed).
/// `baseline`: the migration's ([`gate::migration_baseline`]); `listed`:
/// public's tables as the check before the locks saw them.
/// `exempt`: preserved and kept tables.
fn under_locks<'a>(
    exempt: Vec<TableName>,
    opts: &'a SwapOptions,
    baseline: &'a WriteBaseline,
    listed: &'a WriteBaseline,
) -> UnderLocks<'a> {
    UnderLocks {
        op: Operation::Swap,
        baseline,
        listed,
        exempt,
        allow: &opts.impact.allow_discard,
        unkeepable: &NO_UNKEEPABLE,
    }
}

/// The live schemas the migration replaces.
fn lives(m: &MigrationRow) -> Vec<String> {
    pairs(m).into_iter().map(|p| p.live).collect()
}

/// A swap keeps no table with `--keep-tables` that it cannot.
static NO_UNKEEPABLE: Unkeepable = Unkeepable::new();

/// The changelogs and sync functions of the latest migration when it is
/// swapped: its swap stopped after its COMMIT before it dropped them, or
/// could not drop them then ([`sync::remove_changelogs`]). Dropped now,
/// under the caller's run lock (the swap and the rollback call this
/// first); the note says so. Never fails the caller: what cannot be
/// dropped now is a note too, and is left to the next run.
async fn drop_swapped_sync(client: &Client, policy: Policy) -> Option<String> {
    let m = match record::latest_migration(client).await {
        Ok(Some(m)) if m.state.status == Status::Swapped => m,
        Ok(_) => return None,
        Err(e) => return Some(format!("could not read the latest migration: {e:#}")),
    };
    match sync::remove_changelogs(client, &m.state.details.sync, policy.lock_timeout).await {
        Ok(0) => None,
        Ok(n) => Some(format!(
            "dropped the changelogs and sync functions of {n} preserved {} that the swap of migration {} left after its COMMIT",
            if n == 1 { "table" } else { "tables" },
            m.id
        )),
        Err(e) => Some(format!(
            "{e:#} (left by the swap of migration {}; nothing uses them any more)",
            m.id
        )),
    }
}

/// What the swap and the rollback do first, under their run lock, for a
/// run that stopped after its COMMIT: drop the changelogs a swapped
/// migration left ([`drop_swapped_sync`]), and finish the steps the newest
/// backup's manifest says are pending ([`engine::finish_committed`]); each
/// note logged as a warning. What was finished, if anything.
pub async fn finish_stopped(client: &Client, policy: Policy) -> Result<Option<engine::Finished>> {
    if let Some(note) = drop_swapped_sync(client, policy).await {
        tracing::warn!("{note}");
    }
    let finished = engine::finish_committed(client).await?;
    for line in finished.iter().flat_map(engine::Finished::lines) {
        tracing::warn!("{line}");
    }
    Ok(finished)
}

/// Swap the prepared migration on an open session.
pub async fn swap(sess: &Session, opts: &SwapOptions) -> Result<SwapReport> {
    let d = sess.observe().await?;
    derive::settle_committed_swap(&sess.control, &d).await?;
    // A swap that committed but stopped before the steps after its COMMIT
    // (killed): finish them, then say it is done.
    let finished = finish_stopped(&sess.control, opts.policy).await?;
    sess.clear_stale_file(&d)?;
    if let Some(r) = &d.record
        && r.status == Status::Swapped
        && d.record_from == derive::RecordFrom::Both
    {
        sess.state_file.clear()?;
        crate::refuse!(
            "migration {} was already swapped into public (the old public is {}); nothing left to swap",
            r.id,
            r.details.backup.as_deref().unwrap_or("its backup")
        );
    }
    if let Some(f) = &finished
        && d.swappable().is_none()
    {
        crate::refuse!(
            "finished the steps after the COMMIT of the {} that made {}; nothing is prepared on the destination, so nothing was swapped",
            f.kind,
            f.backup
        );
    }
    let m = ready(&d, opts.timestamp.as_deref())?.clone();
    gate::check_allowed_tables(
        &sess.control,
        Operation::Swap,
        &opts.impact.allow_discard,
        &opts.impact.allow_discard_given_as,
        &lives(&m),
    )
    .await?;
    failpoint("swap").await?;
    let synced = &m.state.details.sync;
    let mut warnings = Vec::new();
    let mut rec = Recorder::resume(m.state.clone(), sess.run.command);

    // A shadow this role may not rename or drop is a privilege problem (exit
    // 1, named), not a shadow that changed since prepare.
    crate::pg::catalog::refuse_unowned_schemas(&sess.control, &shadows(&m), "rename or drop")
        .await?;
    if let Some(why) = shadow_changed(&sess.control, &m, opts.prevalidated).await? {
        return Err(anyhow::Error::new(VerificationFailed(why)));
    }
    if let Some(why) = sync::broken(&sess.control, synced).await? {
        bail!(why);
    }
    let kept = kept_tables(&sess.control, &m, &opts.keep_tables).await?;
    warnings.extend(kept.warnings(&sess.control, &m).await?);
    warnings.extend(
        crate::prepare::preflight::extension_config_refs(
            &sess.control,
            &m.state.schemas,
            "swap",
            &kept.all,
        )
        .await?,
    );
    // What the swap does to the running application: refuse discarded
    // writes (and, with --fail-on-breaking, breaking findings) before any lock
    // and before the catch-up (a refusal changes nothing).
    let impact_pairs = gate::migration_pairs(&m.state, &kept.by_schema);
    let exempt = exempt(&m, &kept);
    let baseline = gate::migration_baseline(&sess.control, &m.state).await?;
    let checked = gate::before_swap(
        &sess.control,
        &ImpactRequest {
            pairs: &impact_pairs,
            baseline: baseline.as_ref(),
            exempt: &exempt,
            workload: opts.impact.workload.clone(),
            lock_timeout: opts.policy.lock_timeout,
        },
        &opts.impact,
    )
    .await?;
    warnings.extend(checked.warnings.iter().cloned());

    // A change the shadow rejects (a row the source's constraints refuse) is
    // left in the changelog by the sync; the catch-up fails on it: recorded,
    // as a failed swap is, for `status`.
    let replayed = match sync::catch_up(&sess.control, synced).await {
        Ok(n) => n,
        Err(e) => {
            rec.state.error = Some(format!("swap failed: {e:#}"));
            if let Err(se) = rec.save(sess).await {
                tracing::warn!("could not record the failed swap: {se:#}");
            }
            return Err(e);
        }
    };
    if replayed > 0 {
        tracing::info!(
            rows = replayed,
            "preserved tables caught up before the swap"
        );
    }
    // Owners and grants changed on the live objects since prepare copied them.
    for p in pairs(&m) {
        let privileges::CaughtUp {
            sql: stmts,
            warnings: caught_warnings,
            ..
        } = privileges::catch_up(
            &sess.control,
            &p.shadow,
            &p.live,
            m.state.details.keep_source_owners,
        )
        .await?;
        for w in caught_warnings {
            tracing::warn!("{w}");
            warnings.push(w);
        }
        if !stmts.is_empty() {
            let sql = format!("BEGIN;\n{};\nCOMMIT;", stmts.join(";\n"));
            if let Err(e) = sess.control.batch_execute(&sql).await {
                let _ = sess.control.batch_execute("ROLLBACK").await;
                return Err(crate::pg::exec::pg_error_as(
                    e,
                    &format!(
                        "carrying the grants made on {} since prepare over to its shadow",
                        p.live
                    ),
                ));
            }
            tracing::info!(
                schema = %p.live,
                statements = stmts.len(),
                "owners and grants changed since prepare carried over to the shadow"
            );
        }
    }
    let check = fk_violations(&sess.control, &m, &kept).await?;
    if let Some(refusal) = fk_refusal(&check, opts.allow_fk_violations) {
        bail!(refusal);
    }
    for u in &check.unchecked {
        let line = format!(
            "{u} (allowed: it is validated right after the swap, and stays NOT VALID if a row has no match)"
        );
        tracing::warn!("{line}");
        warnings.push(line);
    }
    if let Some(refusal) = sequence_refusal(&sess.control, synced).await? {
        bail!(refusal);
    }
    let violations = check.violations;
    if !violations.is_empty() {
        let lines: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        for l in &lines {
            tracing::warn!("{l} (allowed: the constraint will be NOT VALID)");
        }
        warnings.extend(lines);
    }

    rec.state.status = Status::Swapping;
    rec.state.phase = Some(Phase::Swap);
    // An earlier attempt's error is not this one's.
    rec.state.error = None;
    if !kept.all.is_empty() {
        rec.state.keep_tables = kept.all.iter().cloned().collect();
    }
    rec.save(sess).await?;

    let writes = baseline
        .as_ref()
        .map(|b| under_locks(exempt.clone(), opts, b, &checked.listed));
    let hook = MigrationTx::read(&sess.control, &m, &kept, writes).await?;
    // The swapped record no longer needs the baseline (it travels in the
    // COMMIT's round trip: keep it small).
    let mut swapped = rec.state.clone();
    swapped.details.write_baseline = None;
    let origin = Origin::Migration(swapped);
    let attempt = async {
        failpoint("swap-locks").await?;
        engine::swap(sess, &exchange(&m, &kept), &origin, opts.policy, &hook).await
    };
    let done = match attempt.await {
        Ok(done) => done,
        // It committed (the record says swapped: it travelled with the
        // COMMIT), or nobody can tell yet: as after a swap killed after its
        // COMMIT, `status` and the next swap work it out from the
        // destination; nothing is recorded over it.
        Err(e) if e.chain().any(|c| c.is::<engine::CommitLost>()) => return Err(e),
        Err(e) => {
            // Nothing changed: the migration is still prepared.
            rec.state.status = Status::Prepared;
            rec.state.phase = None;
            rec.state.error = Some(format!("swap failed: {e:#}"));
            if let Err(se) = rec.save(sess).await {
                tracing::warn!("could not record the failed swap: {se:#}");
            }
            return Err(e);
        }
    };
    warnings.extend(done.warnings.iter().cloned());
    let mut impact = checked.impact;
    warnings.extend(done.before.warnings.iter().cloned());
    if let Some(w) = done.before.writes.clone() {
        impact.set_writes(w);
    }

    // Foreign keys involving preserved tables were created NOT VALID inside the
    // swap; validate them now. Those with known violations stay NOT VALID (allowed).
    let known = |fk: &CreatedFk| {
        violations.iter().any(|v| {
            v.constraint == fk.constraint
                && (v.table == fk.table || fk.partition_of.as_ref() == Some(&v.table))
        })
    };
    let mut not_valid: Vec<String> = Vec::new();
    let mut not_added = Vec::new();
    let mut to_validate = Vec::new();
    for fk in &done.before.fks {
        if known(fk) {
            let name = meta::constraint_shown(&fk.schema, &fk.table, &fk.constraint);
            // A partitioned table's own key is added after its partitions'
            // copies are valid, which these are not.
            if let Some(sql) = &fk.add_sql {
                warnings.push(format!(
                    "foreign key {name} of a partitioned table was not added: {}",
                    engine::parent_key_advice(sql)
                ));
                not_added.push(name.clone());
            }
            not_valid.push(name);
        } else {
            to_validate.push(fk.clone());
        }
    }
    let crossing = done.after.clone().unwrap_or_default();
    let done_schemas = done.manifest.schemas.clone();
    to_validate.extend(crossing.to_validate.iter().cloned());
    for f in engine::validate_foreign_keys(&sess.control, &to_validate).await {
        let name = meta::constraint_shown(&f.schema, &f.table, &f.constraint);
        if f.absent {
            warnings.push(format!(
                "foreign key {name} of a partitioned table was not added: {}",
                f.error
            ));
            not_added.push(name.clone());
        } else {
            warnings.push(format!("foreign key {name} stays NOT VALID: {}", f.error));
        }
        not_valid.push(name);
    }

    // The COMMIT recorded the migration as swapped; add what came after it.
    // (The record first: the next swap finishes a validation that stopped,
    // and records the keys it leaves NOT VALID, only while the manifest
    // still says the keys are pending.)
    let mut st = rec.state.clone();
    st.status = Status::Swapped;
    st.phase = None;
    st.error = None;
    st.details.backup = Some(done.backup_schema.clone());
    st.details.fk_not_valid = not_valid.clone();
    st.details.write_baseline = None;
    st.updated_at = chrono::Utc::now();
    record::save_migration(&sess.control, &st).await?;
    manifest::keys_validated(&sess.control, done.backup_timestamp).await?;
    // The sync triggers went under the locks; their changelogs and
    // functions, which nothing uses any more, go now (after the steps the
    // manifest tracks: a run stopped here leaves only them, which `status`
    // lists and the next run drops).
    if let Err(e) = sync::remove_changelogs(&sess.control, synced, opts.policy.lock_timeout).await {
        let line = format!(
            "{e:#}; nothing uses them any more: the next swap, rollback or prepare drops them, and so does `pgshift abort`"
        );
        tracing::warn!("{line}");
        warnings.push(line);
    }
    sess.state_file.clear()?;
    if let Some(dir) = &m.state.dump_dir
        && !opts.keep_dump
        && crate::prepare::phases::is_recorded_dump(dir, m.state.dump_complete)
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        warnings.push(format!(
            "could not remove the dump directory {}: {e}",
            dir.display()
        ));
    }
    Ok(SwapReport {
        migration_id: m.id,
        mode: done.mode,
        backup_schema: done.backup_schema,
        backup_timestamp: done.backup_timestamp,
        moved: done.moved,
        tables: m.state.tables.len(),
        preserved_tables: m.state.preserved_tables.clone(),
        preserved_shown: m
            .state
            .preserved_tables
            .iter()
            .map(|k| m.state.table_of_key(k).to_string())
            .collect(),
        fk_not_valid: not_valid,
        fk_not_added: not_added,
        warnings,
        impact,
        kept_tables: kept.all.iter().cloned().collect(),
        foreign_keys: crossing.changes,
        schemas: done_schemas.clone(),
    })
}

/// The shadow schemas of `m` (one per migrated schema).
fn shadows(m: &MigrationRow) -> Vec<String> {
    m.state
        .schemas
        .iter()
        .map(|s| meta::shadow_schema_for(s))
        .collect()
}

/// Why the shadow is not the one prepare built (someone may have touched
/// it), if it is not: its structure (the fingerprint prepare recorded:
/// tables, columns, constraints, indexes, triggers) and its rows (the counts
/// prepare recorded). `quick` (`status`, and a swap right after its own
/// prepare) skips the exact count of every table and gives up on the
/// structure rather than wait for a lock.
pub async fn shadow_changed(
    client: &Client,
    m: &MigrationRow,
    quick: bool,
) -> Result<Option<String>> {
    let counts = !quick;
    let mut diffs = Vec::new();
    if let Some(recorded) = &m.state.details.shadow_structure {
        let wait = quick.then(|| std::time::Duration::from_millis(200));
        let now = crate::pg::catalog::structure_fingerprint(client, &shadows(m), wait).await?;
        if now.is_some_and(|now| now != *recorded) {
            diffs.push(
                "its tables, columns, constraints, indexes or triggers are not what prepare built"
                    .to_string(),
            );
        }
    }
    if counts {
        for t in m.state.tables.iter().filter(|t| !t.preserved) {
            let shadow = meta::shadow_schema_for(&t.schema);
            match manifest::count_rows(client, &shadow, &t.name).await {
                // Row-level security applies to this role there: not counted.
                Ok(None) => {}
                Ok(Some(n)) if n == t.rows => {}
                Ok(Some(n)) => diffs.push(format!(
                    "{}: prepared {} rows, shadow has {n}",
                    t.display(),
                    t.rows
                )),
                Err(e) => diffs.push(format!("{}: {e:#}", t.display())),
            }
        }
    }
    Ok((!diffs.is_empty()).then(|| {
        format!(
            "the shadow changed since prepare; nothing was swapped: {} (run `pgshift abort` and prepare again)",
            diffs.join("; ")
        )
    }))
}
