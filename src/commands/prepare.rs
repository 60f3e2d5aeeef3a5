//! `pgshift prepare`: restore the source into the destination's shadow schema.

use std::io::IsTerminal;

use anyhow::Result;

use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::migration::session::{Recorder, Session, app_name, now_ms};
use crate::output::{self, Table, human_bytes, human_ms};
use crate::pg::connect::connect;
use crate::prepare::phases::{self, PlanReport, PrepareReport};
use crate::prepare::progress::Progress;

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let report = prepare_only(&ctx).await?;
    if let Some(report) = report {
        print_report(&ctx, &report)?;
    }
    Ok(ExitCode::Ok)
}

/// Dry run (prints the plan, returns None) or a real prepare on its own session.
pub async fn prepare_only(ctx: &Ctx) -> Result<Option<PrepareReport>> {
    let settings = &ctx.settings;
    let source = settings.require_source()?.clone();
    let dest = settings.require_dest()?.clone();
    if settings.dry_run {
        let plan = dry_run(ctx).await?;
        print_plan(ctx, &plan)?;
        return Ok(None);
    }
    let sess = Session::open(ctx).await?;
    let report = prepare_in_session(ctx, &sess, &source).await?;
    let _ = dest;
    Ok(Some(report))
}

/// Checks and prepare on an open session (shared with `start`).
pub async fn prepare_in_session(
    ctx: &Ctx,
    sess: &Session,
    source: &crate::pg::connspec::ConnSpec,
) -> Result<PrepareReport> {
    let settings = &ctx.settings;
    let src = connect(
        source,
        "source",
        &app_name(ctx.command),
        settings.connect_timeout,
    )
    .await?;
    let checked = phases::check(source, &sess.control, &src, settings).await?;
    drop(src);
    let mut rec = Recorder::new(now_ms(), ctx.command, Some(source), &sess.dest);
    let progress = progress_for(ctx);
    phases::run(sess, &mut rec, source, checked, &progress).await
}

/// Bars on a terminal, log lines otherwise, nothing for JSON output.
pub fn progress_for(ctx: &Ctx) -> Progress {
    Progress::new(std::io::stderr().is_terminal() && !ctx.settings.json)
}

/// The read-only plan; touches nothing on either database.
pub async fn dry_run(ctx: &Ctx) -> Result<PlanReport> {
    let settings = &ctx.settings;
    let source = settings.require_source()?;
    let dest = settings.require_dest()?;
    let src = connect(
        source,
        "source",
        &app_name(ctx.command),
        settings.connect_timeout,
    )
    .await?;
    let dst = connect(
        dest,
        "destination",
        &app_name(ctx.command),
        settings.connect_timeout,
    )
    .await?;
    let checked = phases::check(source, &dst, &src, settings).await?;
    Ok(phases::plan_report(source, dest, &checked, settings))
}

pub fn print_plan(ctx: &Ctx, plan: &PlanReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(&serde_json::json!({ "dry_run": true, "plan": plan }));
    }
    println!("Plan (dry run: nothing was changed)");
    println!("  source:      {}", plan.source);
    println!("  destination: {}", plan.dest);
    println!("  jobs:        {}", plan.jobs);
    println!("  phases:      {}", plan.phases.join(" -> "));
    if !plan.preserved_tables.is_empty() {
        println!("  preserved:   {}", plan.preserved_tables.join(", "));
    }
    for e in &plan.extensions {
        let what = if e.action == "create" {
            "will be created"
        } else {
            "present"
        };
        println!("  extension:   {} in schema {} ({what})", e.name, e.schema);
    }
    if let Some(l) = &plan.leftovers {
        println!("  leftovers:   {l}");
    }
    println!();
    let mut t = Table::new(["table", "kind", "rows (est.)", "size"])
        .right(2)
        .right(3);
    for tb in &plan.tables {
        let name = if tb.preserved {
            format!("{} (preserved)", tb.name)
        } else {
            tb.name.clone()
        };
        t.row([
            name,
            tb.kind.clone(),
            tb.estimated_rows.to_string(),
            human_bytes(tb.total_bytes),
        ]);
    }
    t.print();
    println!(
        "{} tables, {} in total",
        plan.tables.len(),
        human_bytes(plan.total_bytes)
    );
    for w in &plan.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

pub fn print_report(ctx: &Ctx, r: &PrepareReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    println!(
        "Prepared migration {}: {} tables, {} rows in shadow (snapshot {})",
        r.migration_id,
        r.tables.len(),
        r.total_rows,
        r.snapshot_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    );
    let mut t = Table::new(["phase", "duration"]).right(1);
    for (name, ms) in &r.phases_ms {
        t.row([name.clone(), human_ms(ms.as_u64().unwrap_or(0))]);
    }
    t.print();
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!("Next: pgshift swap --dest <URL>   (or pgshift abort to drop it)");
    Ok(())
}

/// One line for `start`, before the swap's report.
pub fn print_report_brief(r: &PrepareReport) {
    println!(
        "Prepared migration {}: {} tables, {} rows in shadow",
        r.migration_id,
        r.tables.len(),
        r.total_rows
    );
    for w in &r.warnings {
        println!("warning: {w}");
    }
}
