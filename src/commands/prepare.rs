//! `pgshift prepare`: restore the source into the destination's shadow schema.

use std::io::IsTerminal;

use anyhow::Result;
use itertools::Itertools;
use serde::Serialize;

use crate::cli::VerifyMode;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::migration::derive::{self, Destination};
use crate::migration::record;
use crate::migration::session::{Recorder, Session, now_ms};
use crate::migration::state_file::file_safe;
use crate::output::{self, Table, human_bytes, human_ms};
use crate::prepare::filters::Matched;
use crate::prepare::phases::{self, PlanReport, PrepareOptions, PrepareReport, Verify};
use crate::prepare::progress::Progress;
use crate::swap::impact::gate;
use crate::swap::impact::{Impact, TableWrites, WritesSinceReset, report, writes_since_reset};

/// What `prepare --json` prints: the report and the impact the swap would have now.
#[derive(Debug, Serialize)]
pub struct PrepareOutput<'a> {
    #[serde(flatten)]
    pub report: &'a PrepareReport,
    /// The impact report as the swap would see it right after prepare (null
    /// when it could not be made, and in `start`, which reports it under
    /// `swap.impact`).
    pub impact: Option<&'a Impact>,
}

/// What `prepare --dry-run --json` prints under `plan`.
#[derive(Debug, Serialize)]
pub struct PlanOutput<'a> {
    #[serde(flatten)]
    pub plan: &'a PlanReport,
    /// The destination's tables written since its statistics were last reset
    /// (a hint for `--preserved-tables`); null when they could not be read.
    pub writes_since_reset: Option<&'a WritesSinceReset>,
}

/// The dry run's plan and hint.
pub struct Plan {
    pub plan: PlanReport,
    pub writes: Option<WritesSinceReset>,
}

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let opts = options(&ctx)?;
    if ctx.settings.dry_run {
        let plan = dry_run(&ctx, &opts).await?;
        print_plan(&ctx, &plan)?;
        return Ok(ExitCode::Ok);
    }
    let sess = ctx.open_session().await?;
    let report = prepare_in_session(&ctx, &sess, &opts).await?;
    let impact = impact_after_prepare(&ctx, &sess).await;
    print_report(&ctx, &report, impact.as_ref())?;
    // Interrupted once the migration was prepared (during the impact report,
    // say): it stays prepared, and the run still ends as interrupted, so that
    // `prepare && swap` does not go on.
    if sess.run.cancel.is_cancelled() {
        return Err(
            anyhow::Error::new(crate::error::Interrupted).context(format!(
                "interrupted after migration {} was prepared; it stays prepared (pgshift status)",
                report.migration_id
            )),
        );
    }
    Ok(ExitCode::Ok)
}

/// The impact report of the migration just prepared (a warning, not a
/// failure, when it cannot be made: the prepare itself succeeded).
async fn impact_after_prepare(ctx: &Ctx, sess: &Session) -> Option<Impact> {
    let made = async {
        crate::migration::session::failpoint("prepare-impact").await?;
        let row = record::latest_migration(&sess.control)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the migration record is missing"))?;
        gate::migration_report(
            &sess.control,
            &row.state,
            &ctx.settings.impact.workload,
            ctx.settings.swap.lock_timeout,
        )
        .await
    };
    match made.await {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!("could not check the swap's impact: {e:#}");
            None
        }
    }
}

/// Before anything connects: the dump directory (given, or the default in
/// the state directory) is one the dump phase may empty and make. Only a
/// directory pgshift made is ever emptied, so one holding anything else (a
/// pg_dump backup of the user's own, or a dump an earlier version left
/// without the marker) is refused, and so is one that could not be made
/// (which would fail after the destination got its run record). A dump an
/// earlier version made without the marker is pgshift's when the state file
/// names it (`recorded`).
fn check_dump_dir(dir: &std::path::Path, recorded: bool) -> Result<()> {
    if !crate::prepare::phases::dump_dir_usable(dir, recorded) {
        crate::refuse!(
            "the dump directory {} holds files pgshift did not write (it has no {} file); remove it or choose another --dump-dir",
            dir.display(),
            crate::prepare::phases::DUMP_MARKER
        );
    }
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = std::path::Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        crate::refuse!(
            "the dump directory {} cannot be made: {} is not a directory (choose another --dump-dir, or --state-dir for the default one)",
            dir.display(),
            at.display()
        );
    }
    if nix::unistd::access(
        at,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_err()
    {
        crate::refuse!(
            "the dump directory {} cannot be made: {} is not writable (choose another --dump-dir)",
            dir.display(),
            at.display()
        );
    }
    Ok(())
}

/// The prepare's options from the settings (`start` prepares with them too).
pub fn options(ctx: &Ctx) -> Result<PrepareOptions> {
    let s = &ctx.settings;
    let source = s.require_source()?.clone();
    let dest = s.require_dest()?.clone();
    let dump_dir = s.dump_dir.clone().unwrap_or_else(|| {
        s.state_dir
            .join(format!("pgshift-dump-{}", file_safe(dest.dbname())))
    });
    // Read without its lock (taken once the session opens): a file that
    // cannot be read names no dump directory.
    let dump_dir_recorded = crate::migration::state_file::read(&s.state_dir, dest.dbname())
        .ok()
        .flatten()
        .filter(|st| st.dump_complete)
        .and_then(|st| st.dump_dir)
        .is_some_and(|d| d == dump_dir);
    check_dump_dir(&dump_dir, dump_dir_recorded)?;
    Ok(PrepareOptions {
        source,
        dest,
        preserved_tables: s.preserved_tables.clone(),
        schemas: s.schemas.clone(),
        jobs: s.jobs,
        dump_dir,
        dump_dir_recorded,
        verify: match s.verify {
            VerifyMode::Counts => Verify::Counts,
            VerifyMode::Checksums => Verify::Checksums,
        },
        keep_source_owners: s.keep_source_owners,
        no_tablespaces: s.no_tablespaces,
        lock_timeout: s.swap.lock_timeout,
        swap_retries: s.swap.retries,
        swap_mode: s.swap.mode,
        filters: s.filters.clone(),
    })
}

/// Checks and prepare on an open session (shared with `start`).
pub async fn prepare_in_session(
    ctx: &Ctx,
    sess: &Session,
    opts: &PrepareOptions,
) -> Result<PrepareReport> {
    crate::swap::impact::workload::check_workload_roles(
        &sess.control,
        &ctx.settings.impact.workload.roles,
    )
    .await?;
    let src = sess.run.connect(&opts.source, "source").await?;
    let checked = phases::check_or_interrupted(opts, &sess.control, &src, &sess.run.cancel).await?;
    if ctx.command == "start" {
        phases::refuse_foreseen_name_clashes(opts, &checked, &sess.control, &src).await?;
    }
    drop(src);
    // The state file is named after the database: one left by a migration to
    // a database of that name on another server is replaced, not continued.
    let other = match sess.state_file.load().ok().flatten() {
        Some(f) if !f.status.is_finished() && derive::recorded_elsewhere(&f, &sess.dest) => {
            Destination::observe_with_file(&sess.control, Ok(Some(f)), &sess.dest)
                .await?
                .foreign_file
        }
        _ => None,
    };
    if let Some(other) = other {
        tracing::warn!(
            "the state file {} records migration {} ({}) of another destination, {}; this run replaces the file (that destination keeps its own record of the migration, which `pgshift status` against it shows; give each destination its own --state-dir)",
            sess.state_file.path().display(),
            other.id,
            other.status,
            other.dest
        );
    }
    let mut rec = Recorder::new(now_ms(), ctx.command, Some(&opts.source), &opts.dest);
    let progress = progress_for(ctx);
    let mut report = phases::run(sess, &mut rec, opts, checked, &progress).await?;
    if !opts.filters.keep_tables.is_empty() {
        let deferred = opts.preserved_tables.is_empty();
        report
            .warnings
            .extend(kept_fk_warning(&sess.control, report.migration_id, deferred).await);
    }
    Ok(report)
}

/// The rows that the foreign keys between kept and migrated tables would
/// refuse (a kept table's rows referencing rows the shadow lacks, and, with
/// `deferred`, when the sync phase did not check them, the source's rows
/// referencing rows a kept table lacks): said now, as for the preserved
/// tables, not first by the swap's refusal.
async fn kept_fk_warning(
    client: &tokio_postgres::Client,
    id: i64,
    deferred: bool,
) -> Option<String> {
    let checked = match crate::migration::record::latest_migration(client).await {
        Ok(Some(m)) if m.id == id => {
            crate::swap::cutover::kept_fk_violations(client, &m, deferred).await
        }
        Ok(_) => return None,
        Err(e) => Err(e),
    };
    let w = match checked {
        Ok(c) if c.violations.is_empty() => return None,
        Ok(c) => format!(
            "foreign keys involving kept tables do not match the destination's rows: {}; the swap refuses them until the rows are fixed (or creates them NOT VALID with --allow-fk-violations)",
            crate::prepare::sync::violations_line(&c.violations)
        ),
        Err(e) => format!(
            "could not check the foreign keys involving kept tables (the swap checks them again): {e:#}"
        ),
    };
    tracing::warn!("{w}");
    Some(w)
}

/// Bars on a terminal, log lines otherwise, nothing for JSON output.
pub fn progress_for(ctx: &Ctx) -> Progress {
    Progress::new(std::io::stderr().is_terminal() && !ctx.settings.json)
}

/// The read-only plan, with the tables the application writes (a hint for
/// `--preserved-tables`); touches nothing on either database.
pub async fn dry_run(ctx: &Ctx, opts: &PrepareOptions) -> Result<Plan> {
    let run = ctx.run_context();
    let src = run.connect(&opts.source, "source").await?;
    let dst = run.connect(&opts.dest, "destination").await?;
    crate::swap::impact::workload::check_workload_roles(&dst, &ctx.settings.impact.workload.roles)
        .await?;
    let checked = phases::check_or_interrupted(opts, &dst, &src, &run.cancel)
        .await?
        .with_plan_budget(opts, &dst, &src)
        .await
        .with_foreseen_privileges(opts, &dst, &src)
        .await
        .with_foreseen_name_clashes(opts, &dst, &src)
        .await;
    let writes = match writes_since_reset(&dst, &opts.schemas).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("could not read the destination's write counters: {e:#}");
            None
        }
    };
    Ok(Plan {
        plan: phases::plan_report(opts, &checked),
        writes,
    })
}

pub fn print_plan(ctx: &Ctx, p: &Plan) -> Result<()> {
    let plan = &p.plan;
    if ctx.settings.json {
        let out = PlanOutput {
            plan,
            writes_since_reset: p.writes.as_ref(),
        };
        return output::print_json(&serde_json::json!({ "dry_run": true, "plan": out }));
    }
    crate::outln!("Plan (dry run: nothing was changed)");
    crate::outln!("  source:      {}", plan.source);
    crate::outln!("  destination: {}", plan.dest);
    crate::outln!("  jobs:        {}", plan.jobs);
    crate::outln!("  phases:      {}", plan.phases.join(" -> "));
    if !plan.schemas.is_empty() {
        crate::outln!("  schemas:     {}", plan.schemas.join(", "));
    }
    if !plan.preserved_tables.is_empty() {
        crate::outln!("  preserved:   {}", plan.preserved_tables.join(", "));
    }
    for e in &plan.extensions {
        let what = if e.action == "create" {
            "will be created"
        } else {
            "present"
        };
        crate::outln!("  extension:   {} in schema {} ({what})", e.name, e.schema);
    }
    if let Some(l) = &plan.leftovers {
        crate::outln!("  leftovers:   {l}");
    }
    if let Some(f) = &plan.filters {
        print_filters(f);
    }
    crate::outln!();
    let mut t = Table::new(["table", "kind", "rows (est.)", "size"])
        .right(2)
        .right(3);
    for tb in &plan.tables {
        // The key quotes another schema's names already; public's as typed.
        let shown = if crate::pg::meta::is_public_str(&tb.schema) {
            crate::pg::ident::display_ident(&tb.name)
        } else {
            tb.name.clone()
        };
        let name = if tb.preserved {
            format!("{shown} (preserved)")
        } else if tb.data_excluded {
            format!("{shown} (no data)")
        } else {
            shown
        };
        t.row([
            name,
            tb.kind.clone(),
            if tb.estimate_unknown {
                "?".to_string()
            } else {
                tb.estimated_rows.to_string()
            },
            human_bytes(tb.total_bytes),
        ]);
    }
    t.print();
    crate::outln!(
        "{} tables, {} in total",
        plan.tables.len(),
        human_bytes(plan.total_bytes)
    );
    // An upper bound: the budget of an object-level swap of the source's
    // objects. One that does not fit is the plan's warning, which says it is
    // that bound (a refusal here would contradict it: the swap by renaming
    // schemas may well fit).
    if let Some(b) = plan.swap_lock_budget.as_ref().filter(|b| b.fits) {
        crate::commands::swap::print_budget(b, "swap");
        crate::outln!(
            "  (the upper bound: the mode is chosen at swap time, and renaming schemas needs far fewer)"
        );
    }
    if let Some(w) = &p.writes {
        print_writes_hint(plan, w);
    }
    for w in &plan.warnings {
        crate::outln!("warning: {w}");
    }
    Ok(())
}

/// The destination's tables the application writes, for `--preserved-tables`.
fn print_writes_hint(plan: &PlanReport, w: &WritesSinceReset) {
    let since = w
        .stats_reset
        .map(|t| format!("since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_else(|| "since the statistics began (never reset)".to_string());
    crate::outln!();
    if !w.track_counts {
        crate::outln!(
            "Destination tables written: unknown (track_counts is off on the destination)"
        );
        return;
    }
    if w.tables.is_empty() {
        crate::outln!("Destination tables written {since}: none");
        return;
    }
    crate::outln!(
        "Destination tables written {since} (the swap replaces their rows unless they are preserved or kept):"
    );
    let kept: Vec<&String> = plan
        .filters
        .iter()
        .flat_map(|f| &f.keep_tables)
        .flat_map(|m| &m.shown)
        .collect();
    let preserved = |tw: &TableWrites| {
        if plan.preserved_tables.contains(&tw.table) {
            "preserved".to_string()
        } else if kept.contains(&&tw.table) {
            "kept".to_string()
        } else {
            String::new()
        }
    };
    report::writes_table(&w.tables, Some(&preserved)).print();
    crate::outln!(
        "Tables the application keeps writing belong in --preserved-tables (or in --keep-tables, for those the source does not have); the swap refuses to discard writes made after prepare starts."
    );
}

/// Each filter's patterns and what they matched.
fn print_filters(f: &Matched) {
    for (label, matches) in [
        ("no data:", &f.exclude_table_data),
        ("exclude:", &f.exclude_table),
        ("keep:", &f.keep_tables),
    ] {
        for m in matches {
            crate::outln!("  {label:<13}{} -> {}", m.pattern, m.shown.join(", "));
        }
    }
}

pub fn print_report(ctx: &Ctx, r: &PrepareReport, impact: Option<&Impact>) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(&PrepareOutput { report: r, impact });
    }
    crate::outln!(
        "Prepared migration {}: {} tables, {} rows in shadow (snapshot {})",
        r.migration_id,
        r.tables.len(),
        r.total_rows,
        r.snapshot_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    );
    if !r.schemas.is_empty() {
        crate::outln!("Schemas: {}", shadows_line(&r.schemas));
    }
    let mut t = Table::new(["phase", "duration"]).right(1);
    for (name, ms) in &r.phases_ms {
        t.row([name.clone(), human_ms(ms.as_u64().unwrap_or(0))]);
    }
    t.print();
    for w in &r.warnings {
        crate::outln!("warning: {w}");
    }
    if let Some(i) = impact {
        crate::outln!(
            "{}   (the whole report: pgshift swap --dry-run)",
            i.summary()
        );
    }
    crate::outln!("Next: pgshift swap --dest <URL>   (or pgshift abort to drop it)");
    Ok(())
}

/// `public (in shadow), billing (in pgshift_shadow_billing)`.
fn shadows_line(schemas: &[String]) -> String {
    crate::pg::meta::schema_pairs(schemas)
        .iter()
        .map(|p| format!("{} (in {})", p.live, p.shadow))
        .join(", ")
}

/// One line for `start`, before the swap's report.
pub fn print_report_brief(r: &PrepareReport) {
    crate::outln!(
        "Prepared migration {}: {} tables, {} rows in shadow",
        r.migration_id,
        r.tables.len(),
        r.total_rows
    );
    if !r.schemas.is_empty() {
        crate::outln!("Schemas: {}", shadows_line(&r.schemas));
    }
    for w in &r.warnings {
        crate::outln!("warning: {w}");
    }
}
