//! The report `status` prints: where the destination's migration stands
//! ([`Destination`], derived in `migration::derive`), with the shadow's size,
//! the preserved tables' sync health, whether a swap would be allowed now,
//! leftovers, NOT VALID foreign keys and the backups, and for a prepared
//! migration the impact report (what the swap would break or discard for the
//! running application). Read only, no lock.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::{manifest, verify};
use crate::migration::derive::{Destination, RunningInfo, State};
use crate::migration::lifecycle::Status;
use crate::migration::record::{MigrationState, PhaseRecord};
use crate::migration::state_file;
use crate::output::rfc3339;
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::exec::query_map;
use crate::pg::locks_budget::Budget;
use crate::pg::meta::{SHADOW_SCHEMA, ShadowState};
use crate::prepare::discard::Removed;
use crate::prepare::sync::{self, SyncedTable};
use crate::swap::cutover;
use crate::swap::engine::Policy;
use crate::swap::impact::Impact;
use crate::swap::impact::gate::{self, ImpactOptions};
use crate::swap::mode::ModeRequest;

/// What `status` checks of a prepared migration's impact.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// `--workload-roles`, `--impact-timeout`; and what `pgshift swap`
    /// would accept in the same environment (`PGSHIFT_ALLOW_DISCARD`,
    /// `PGSHIFT_FAIL_ON_BREAKING` or the config file), for `swap_allowed`.
    pub impact: ImpactOptions,
    /// The swap's lock_timeout (blockers are transactions older than this).
    pub lock_timeout: Duration,
    /// The swap mode whose lock budget is weighed (`swap_mode` setting).
    pub swap_mode: ModeRequest,
}

/// What `status --json` prints (documented in README.md, "JSON output").
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// `idle`, `preparing`, `prepared`, `swapping` or `failed`.
    pub state: State,
    /// The destination, redacted.
    pub destination: String,
    /// Where the migration record came from: `state_file`, `destination`,
    /// `both` (they agree) or `none`.
    pub record_from: String,
    /// The latest migration, if any (also after it finished: status `swapped`
    /// or `aborted`).
    pub migration: Option<MigrationInfo>,
    pub shadow: ShadowInfo,
    /// Preserved tables of the prepared migration and their sync health.
    pub preserved_tables: Vec<PreservedInfo>,
    /// Would `pgshift swap` be allowed now?
    pub swap_allowed: bool,
    /// For a prepared migration: the swap's need against the destination's
    /// lock table, in the mode the swap would choose (`swap_mode` setting).
    /// A swap that does not fit is refused (`swap_blocked_reason` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_lock_budget: Option<Budget>,
    /// Why not, when it would not (the first of `swap_blocked_reasons`).
    pub swap_blocked_reason: Option<String>,
    /// Every reason found (empty when it would be allowed): fixing the
    /// first may not be enough.
    pub swap_blocked_reasons: Vec<String>,
    /// The pgshift run holding the destination's lock now, if any.
    pub running: Option<RunningInfo>,
    pub leftovers: LeftoverInfo,
    pub backups: usize,
    pub latest_backup: Option<String>,
    /// When the newest backup was made by a rollback: the backup it restored
    /// (the migration line still tells the last migration, which that
    /// rollback undid).
    pub latest_rollback_restored: Option<String>,
    /// Foreign keys in the live schemas that are NOT VALID (`table.constraint`
    /// in public, `schema.table.constraint` elsewhere), e.g. created so by a
    /// swap with `--allow-fk-violations`.
    pub not_valid_foreign_keys: Vec<String>,
    pub warnings: Vec<String>,
    /// What the swap would break or discard for the running application, when
    /// a migration is prepared (null otherwise, or when it could not be checked).
    pub impact: Option<Impact>,
    /// The schemas the latest migration moves, when other than `["public"]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationInfo {
    pub id: i64,
    /// The record's own status: preparing, prepared, swapping, failed, swapped, aborted.
    pub status: Status,
    pub command: String,
    pub started_at: String,
    pub updated_at: String,
    /// The phase running now, or the one that failed.
    pub phase: Option<String>,
    pub error: Option<String>,
    pub pid: u32,
    pub host: String,
    pub source: String,
    pub snapshot_at: Option<String>,
    pub tables: usize,
    pub phases: Vec<PhaseRecord>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ShadowInfo {
    pub exists: bool,
    /// Created by pgshift (marker comment).
    pub ours: bool,
    /// No objects in it (pgshift leaves an empty shadow after a swap).
    pub empty: bool,
    pub size_bytes: i64,
    pub tables: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreservedInfo {
    /// `name` in public, `schema.name` elsewhere.
    pub name: String,
    /// Its live schema (for the text report).
    #[serde(skip)]
    pub schema: String,
    /// As the text report names it (`"User"`, quoted where it must be).
    #[serde(skip)]
    pub shown: String,
    /// The sync health as `sync::health` reports it (trigger present and
    /// enabled, pending changelog rows, rows in public and shadow); null until
    /// the destination can report it.
    pub health: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LeftoverInfo {
    pub found: bool,
    /// The migration objects found (`shadow`: a shadow with objects in it
    /// while nothing is prepared; `triggers`, `helper_tables`,
    /// `helper_functions`).
    #[serde(flatten)]
    pub objects: Removed,
    /// The destination's lock held by a session whose pgshift process is gone.
    pub dead_lock_holder: Option<String>,
    pub hint: Option<String>,
}

fn migration_info(st: &MigrationState) -> MigrationInfo {
    MigrationInfo {
        id: st.id,
        status: st.status,
        command: st.command.clone(),
        started_at: rfc3339(&st.started_at),
        updated_at: rfc3339(&st.updated_at),
        phase: st.phase.map(|p| p.to_string()),
        error: st.error.clone(),
        pid: st.pid,
        host: st.host.clone(),
        source: st.source.clone(),
        snapshot_at: st.snapshot_at.as_ref().map(rfc3339),
        tables: st.tables.len(),
        phases: st.phases.clone(),
    }
}

/// Health of the preserved tables' sync (`sync::health`): triggers present and
/// enabled, pending changelog rows, rows in public and shadow.
async fn preserved_health(
    client: &Client,
    synced: &[SyncedTable],
    trial: bool,
) -> Result<(Vec<PreservedInfo>, Vec<String>, Vec<String>)> {
    if synced.is_empty() {
        return Ok((Vec::new(), Vec::new(), Vec::new()));
    }
    let health = sync::health(client, synced).await?;
    let mut problem = health
        .iter()
        .filter(|h| !h.triggers_ok || !h.changelog_present)
        .map(|h| {
            format!(
                "the sync of {} is broken ({h}); run `pgshift abort` and prepare again",
                h.table
            )
        })
        .next();
    // A preserved table given to a role this one does not act as: the
    // swap could not drop its triggers.
    if problem.is_none() {
        problem = sync::unowned(client, synced).await?;
    }
    // A column dropped or renamed since prepare: the swap's replay would fail.
    for s in synced {
        if problem.is_some() {
            break;
        }
        if let Err(e) = sync::check_replayable(client, s).await {
            problem = Some(sync::unreplayable(s, &e));
        } else {
            problem = sync::hidden_rows(client, s).await?;
        }
    }
    // A row written since prepare that the shadow rejected waits in a
    // changelog, where the swap's replay would fail on it.
    // A trial that got no answer is said, as the swap's dry run says it.
    let (problems, untried) = match problem {
        Some(p) => (vec![p], Vec::new()),
        None if trial => sync::rejected(client, synced).await?,
        None => (Vec::new(), Vec::new()),
    };
    let infos = synced
        .iter()
        .map(|s| PreservedInfo {
            name: s.display(),
            schema: s.schema.clone(),
            shown: crate::pg::meta::table_shown(&s.schema, &s.name),
            health: health
                .iter()
                .find(|h| h.table == s.display())
                .and_then(|h| serde_json::to_value(h).ok()),
        })
        .collect();
    Ok((infos, problems, untried))
}

async fn shadow_info(client: &Client, d: &Destination) -> Result<ShadowInfo> {
    if d.shadow.state == ShadowState::Absent {
        return Ok(ShadowInfo::default());
    }
    // Size and tables of every shadow of the migration's schemas.
    let shadows: Vec<String> = d
        .record
        .as_ref()
        .map(|r| crate::pg::meta::schema_pairs(&r.schemas))
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.shadow)
        .chain([SHADOW_SCHEMA.to_string()])
        .unique()
        .collect();
    let mut size_bytes = 0;
    for s in &shadows {
        size_bytes += verify::schema_size_nowait(client, s).await?;
    }
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p')",
            &[&shadows],
        )
        .await?
        .get(0);
    Ok(ShadowInfo {
        exists: true,
        ours: d.shadow.ours(),
        empty: d.shadow.empty,
        size_bytes,
        tables: tables as usize,
    })
}

/// Why nothing can be swapped now, whatever the shadow holds: another run,
/// no prepared migration, a shadow that is not its own.
fn swap_gate(d: &Destination) -> Option<String> {
    if let Some(why) = d.lock_refusal() {
        return Some(why);
    }
    match d.state {
        State::Prepared => {}
        State::Failed => return Some(failed_gate(d)),
        _ => return Some("nothing is prepared on the destination".into()),
    }
    let Some(st) = &d.record else {
        return Some("nothing is prepared on the destination".into());
    };
    match d.shadow.state {
        ShadowState::Ours(_) if d.shadow_replaced() => Some(format!(
            "the shadow schema is not the one migration {} created; run `pgshift abort` and prepare again",
            st.id
        )),
        ShadowState::Ours(_) => None,
        ShadowState::Absent => {
            Some("the shadow schema is gone; run `pgshift abort` and prepare again".into())
        }
        ShadowState::Foreign(_) => {
            Some("the schema named shadow was not created by pgshift".into())
        }
    }
}

/// Why a failed migration cannot be swapped, and what to run.
pub fn failed_gate(d: &Destination) -> String {
    match &d.record {
        // Recorded by an abort before its first drop (see `discard::abort`).
        Some(st) if st.command == "abort" => format!(
            "an abort of migration {} did not finish; run `pgshift abort` again",
            st.id
        ),
        _ => "the last prepare failed; run `pgshift prepare` again (or `pgshift abort`)".into(),
    }
}

/// What the swap of the prepared migration would refuse in its rows: foreign
/// keys involving preserved or kept tables, then the preserved tables'
/// sequences (a check that cannot run is a reason too, unless `sync_said`: a
/// broken sync, a preserved table given away, already refuses the swap, and
/// is why that check cannot read its sequences, h46a).
async fn prepared_refusals(client: &Client, d: &Destination, sync_said: bool) -> Vec<String> {
    let Some(st) = &d.record else {
        return Vec::new();
    };
    let mut reasons = Vec::new();
    let pairs = crate::pg::meta::schema_pairs(&st.schemas);
    // The kept tables' crossing keys too, as the swap checks them.
    let violations = match d.swappable() {
        Some(row) => cutover::fk_violations_now(client, row).await,
        None => sync::fk_violations(client, &st.details.deferred_sql, &pairs).await,
    };
    match violations {
        Ok(c) if !c.violations.is_empty() => reasons.push(format!(
            "foreign keys involving preserved or kept tables do not match the destination's rows: {} (fix the rows, or swap with --allow-fk-violations)",
            sync::violations_line(&c.violations)
        )),
        Ok(c) => reasons.extend(c.unchecked_line().map(|line| {
            format!(
                "{line} (connect as a role that bypasses row-level security, or swap with --allow-fk-violations)"
            )
        })),
        Err(e) => reasons.push(format!("could not check foreign keys: {e:#}")),
    }
    match cutover::sequence_refusal(client, &st.details.sync).await {
        Ok(why) => reasons.extend(why.map(|w| w.replacen("; nothing was changed", "", 1))),
        Err(_) if sync_said => {}
        Err(e) => reasons.push(format!(
            "could not check the preserved tables' sequences: {e:#}"
        )),
    }
    reasons
}

/// The status of the destination `dest` (`client` is connected to it); the
/// state file is looked for in `state_dir`.
pub async fn report(
    client: &Client,
    dest: &ConnSpec,
    state_dir: &Path,
    opts: &StatusOptions,
) -> Result<StatusReport> {
    let file = state_file::read(state_dir, dest.dbname());
    let d = Destination::observe_with_file(client, file, dest).await?;
    let mut warnings = d.warnings.clone();
    let shadow = shadow_info(client, &d).await?;
    let synced: &[SyncedTable] = match &d.record {
        Some(st) if d.state.is_busy() => &st.details.sync,
        _ => &[],
    };
    // The trial replay only while no run holds the destination: its locks
    // on the shadow must not hold up a running swap's.
    let (preserved_tables, sync_problems, untried) =
        preserved_health(client, synced, d.running.is_none()).await?;
    warnings.extend(untried);

    // Leftovers: migration objects while nothing is prepared or running.
    let found = d.leftovers();
    let mut leftovers = LeftoverInfo {
        objects: found,
        ..Default::default()
    };
    if let Some(r) = &d.running
        && r.alive == Some(false)
    {
        leftovers.dead_lock_holder = Some(format!(
            "{} holds the destination's lock, but pgshift pid {} on this host is no longer running; the server releases the lock when it notices the connection is gone, unless a connection pooler keeps that server session open (either way: SELECT pg_terminate_backend({}))",
            r.holder,
            r.pid.unwrap_or(0),
            r.holder.backend_pid
        ));
    }
    leftovers.found = !leftovers.objects.is_empty() || leftovers.dead_lock_holder.is_some();
    if leftovers.found {
        leftovers.hint = Some(
            if leftovers.dead_lock_holder.is_some()
                && !leftovers.objects.shadow
                && leftovers.objects.triggers.is_empty()
            {
                "end the dead session holding the lock".into()
            } else {
                "run `pgshift abort` to remove them".into()
            },
        );
    }

    // Would `swap` go ahead now? The checks it makes before it changes
    // anything, without its lock: every reason found. With the gate shut
    // (nothing prepared, another run, not our shadow) no more than why
    // (after a broken sync, which comes first).
    let mut blocked: Vec<String> = match sync_problems {
        ps if d.state == State::Prepared => ps,
        _ => Vec::new(),
    };
    let shut = swap_gate(&d);
    let open = shut.is_none();
    match shut {
        Some(why) => blocked.push(why),
        None => {
            let sync_said = !blocked.is_empty();
            blocked.extend(prepared_refusals(client, &d, sync_said).await)
        }
    }
    let mut swap_lock_budget = None;
    if let (State::Prepared, Some(m)) = (d.state, d.swappable()) {
        // A shadow whose structure changed since prepare (one catalog query;
        // its row counts are the swap's and its dry run's to check).
        if open {
            blocked.extend(cutover::shadow_changed(client, m, true).await?);
        }
        let policy = Policy {
            mode: opts.swap_mode,
            ..Policy::default()
        };
        match cutover::outlook(client, m, policy).await {
            Ok(o) => {
                if open {
                    blocked.extend(o.unmovable.reason("the swap"));
                    blocked.extend(o.lock_budget.refusal("the swap"));
                }
                swap_lock_budget = Some(o.lock_budget);
            }
            // The swap would refuse (`--swap-mode rename` where it is not
            // possible): a reason it is not allowed, not a check that failed.
            Err(e) if e.downcast_ref::<crate::error::UserError>().is_some() => {
                if open {
                    blocked.push(format!("{e:#}"));
                }
            }
            Err(e) => tracing::warn!("could not compute the swap's lock budget: {e:#}"),
        }
    }

    // The impact of the prepared migration's swap; discarded writes block
    // `pgshift swap` (it refuses them without --allow-discard), breaking
    // findings do with --fail-on-breaking: as the environment and the
    // config file set them for the swap.
    let mut impact = None;
    if let Some(st) = d.record.as_ref().filter(|_| {
        d.state == State::Prepared
            && matches!(d.shadow.state, ShadowState::Ours(_))
            && !d.shadow_replaced()
    }) {
        match gate::migration_report(client, st, &opts.impact.workload, opts.lock_timeout).await {
            Ok(i) => {
                // A table the allowed list names that the swap's schemas do
                // not have: the swap refuses before anything else.
                let lives = st.schemas.clone();
                if let Err(e) = gate::check_allowed_tables(
                    client,
                    crate::swap::impact::writes::Operation::Swap,
                    &opts.impact.allow_discard,
                    &opts.impact.allow_discard_given_as,
                    &lives,
                )
                .await
                {
                    blocked.push(format!("{e:#}").replacen("; nothing was changed", "", 1));
                }
                if open {
                    blocked.extend(
                        gate::refusals(&i, &opts.impact)
                            .into_iter()
                            .map(|why| why.replacen("; nothing was changed", "", 1)),
                    );
                }
                impact = Some(i);
            }
            Err(e) => warnings.push(format!("could not check the swap's impact: {e:#}")),
        }
    }

    // In the live schemas of the latest migration (public alone by default):
    // `table.constraint` in public, `schema.table.constraint` elsewhere, each
    // name quoted where it must be, as the swap names them.
    let live_schemas = d
        .record
        .as_ref()
        .map(|r| r.schemas.clone())
        .unwrap_or_else(crate::pg::meta::default_schemas);
    let mut not_valid_foreign_keys: Vec<String> = query_map(
        client,
        "SELECT n.nspname::text, c.relname::text, con.conname::text
           FROM pg_catalog.pg_constraint con
           JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY($1) AND con.contype = 'f' AND NOT con.convalidated",
        &[&live_schemas],
        "listing the NOT VALID foreign keys",
        |r| crate::pg::meta::constraint_shown(r.get(0), r.get(1), r.get(2)),
    )
    .await?;
    not_valid_foreign_keys.sort_unstable();
    let backups = if d.meta_ok {
        manifest::list_backups(client).await?
    } else {
        Vec::new()
    };
    // A swap or rollback that still runs is at those steps; one that runs no
    // more (or another command holding the lock) left them.
    let finishing = d.running.as_ref().is_some_and(|r| {
        r.alive != Some(false) && matches!(r.holder.command(), Some("swap" | "rollback" | "start"))
    });
    if let Some(b) = backups
        .first()
        .filter(|b| b.manifest.steps_pending() || b.manifest.keys_pending)
        .filter(|_| !finishing)
    {
        let pending = if b.manifest.steps_pending() {
            "stopped after its COMMIT: its row counts and the validation of the foreign keys it created are pending"
        } else {
            "stopped while it validated the foreign keys it created NOT VALID: their validation is pending"
        };
        warnings.push(format!(
            "the {} that made backup {} {pending}; `pgshift swap` finishes them (and swaps only a prepared migration), as does the next rollback before it rolls back",
            b.kind, b.schema_name
        ));
    }
    for b in backups
        .iter()
        .filter(|b| b.manifest.dropping_since.is_some())
    {
        warnings.push(format!(
            "backup {} is partly dropped: a cleanup began dropping it in parts and did not finish (part of it may be gone, so it cannot be rolled back to); the next cleanup whose --before covers it drops the rest",
            b.schema_name
        ));
    }
    // Schemas of a backup dropped behind pgshift's back (all, or one of a
    // backup of several): its record stays until a cleanup drops it.
    let recorded: Vec<String> = backups
        .iter()
        .filter(|b| b.manifest.dropping_since.is_none())
        .flat_map(|b| b.manifest.schema_maps().into_iter().map(|m| m.backup))
        .collect();
    let present = crate::pg::catalog::existing_schemas(client, &recorded).await?;
    for b in backups
        .iter()
        .filter(|b| b.manifest.dropping_since.is_none())
    {
        let gone: Vec<String> = b
            .manifest
            .schema_maps()
            .into_iter()
            .map(|m| m.backup)
            .filter(|s| !present.contains(s))
            .collect();
        if !gone.is_empty() {
            warnings.push(format!(
                "backup {} has a record but its schema{} {} no longer exist{} (dropped outside pgshift?): it cannot be rolled back to, and the next cleanup whose --before covers it drops {}",
                b.schema_name,
                if gone.len() == 1 { "" } else { "s" },
                gone.join(", "),
                if gone.len() == 1 { "s" } else { "" },
                if gone.len() < b.manifest.schema_maps().len() { "the rest" } else { "the record" }
            ));
        }
    }
    Ok(StatusReport {
        state: d.state,
        destination: dest.redacted(),
        record_from: d.record_from.as_str().to_string(),
        migration: d.record.as_ref().map(migration_info),
        shadow,
        preserved_tables,
        swap_allowed: blocked.is_empty(),
        swap_lock_budget,
        swap_blocked_reason: blocked.first().cloned(),
        swap_blocked_reasons: blocked,
        running: d.running.clone(),
        leftovers,
        backups: backups.len(),
        latest_backup: backups.first().map(|b| b.schema_name.clone()),
        latest_rollback_restored: backups
            .first()
            .and_then(|b| b.manifest.restored_from.clone()),
        not_valid_foreign_keys,
        warnings,
        impact,
        schemas: d
            .record
            .as_ref()
            .map(|r| r.schemas.clone())
            .filter(|s| !crate::pg::meta::is_default_schemas(s))
            .unwrap_or_default(),
    })
}
