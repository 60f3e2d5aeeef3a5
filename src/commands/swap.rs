//! `pgshift swap`: make the prepared shadow the destination's public.

use anyhow::Result;

use crate::cli::SwapArgs;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::output;
use crate::swap::cutover::{self, SwapOptions, SwapPreview, SwapReport};

pub async fn run(args: SwapArgs, ctx: Ctx) -> Result<ExitCode> {
    let opts = options(&ctx, args.timestamp.clone(), args.keep_dump, false);
    if ctx.settings.dry_run {
        let client = ctx.connect_dest().await?;
        let p = cutover::preview(&client, &opts).await?;
        print_preview(&ctx, &p)?;
        return Ok(ExitCode::Ok);
    }
    let sess = ctx.open_session().await?;
    let report = cutover::swap(&sess, &opts).await?;
    print_report(&ctx, &report)?;
    Ok(ExitCode::Ok)
}

/// The swap's options from the settings (`start` swaps with them too).
pub fn options(
    ctx: &Ctx,
    timestamp: Option<String>,
    keep_dump: bool,
    prevalidated: bool,
) -> SwapOptions {
    SwapOptions {
        timestamp,
        keep_dump: keep_dump || ctx.settings.keep_dump,
        prevalidated,
        allow_fk_violations: ctx.settings.allow_fk_violations,
        policy: ctx.swap_policy(),
        keep_tables: ctx.settings.filters.keep_tables.clone(),
    }
}

pub fn print_preview(ctx: &Ctx, p: &SwapPreview) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(&serde_json::json!({ "dry_run": true, "swap": p }));
    }
    println!(
        "Swap plan for migration {} (dry run: nothing was changed)",
        p.migration_id
    );
    print_moves(&p.backup_schema, &p.move_out, "shadow", &p.move_in);
    if !p.kept_tables.is_empty() {
        println!("Kept in public as they are: {}", p.kept_tables.join(", "));
    }
    for v in &p.fk_violations {
        println!("warning: {v}");
    }
    print_transaction("swap", &p.sql);
    Ok(())
}

/// What a swap (or rollback) moves, for people.
pub fn print_moves(backup: &str, move_out: &[String], incoming: &str, move_in: &[String]) {
    for (from, to, objects) in [("public", backup, move_out), (incoming, "public", move_in)] {
        println!("{from} -> {to} ({} objects):", objects.len());
        for m in objects {
            println!("  {m}");
        }
    }
}

/// A dry run's transaction, statement by statement.
pub fn print_transaction(what: &str, sql: &[String]) {
    println!("\nThe {what} transaction:");
    for s in sql {
        println!("  {s};");
    }
}

/// How long a swap (or rollback) held its locks.
pub fn print_locks(lock_held_ms: u64, attempts: u32) {
    println!(
        "Locks held for {lock_held_ms} ms ({attempts} attempt{})",
        if attempts == 1 { "" } else { "s" }
    );
}

/// The warnings every swap (or rollback) reports.
pub fn print_warnings(fk_not_valid: &[String], warnings: &[String]) {
    for fk in fk_not_valid {
        println!("warning: foreign key {fk} is NOT VALID");
    }
    for w in warnings {
        println!("warning: {w}");
    }
}

pub fn print_report(ctx: &Ctx, r: &SwapReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    println!(
        "Swapped migration {}: {} objects into public, old public kept as {} ({} objects)",
        r.migration_id, r.moved_in, r.backup_schema, r.moved_out
    );
    print_locks(r.lock_held_ms, r.attempts);
    if !r.preserved_tables.is_empty() {
        println!(
            "Preserved tables carried over: {}",
            r.preserved_tables.join(", ")
        );
    }
    if !r.kept_tables.is_empty() {
        println!("Kept in public as they were: {}", r.kept_tables.join(", "));
    }
    for c in &r.foreign_keys {
        println!(
            "foreign key {} on {}: {} ({})",
            c.constraint, c.table, c.action, c.references
        );
    }
    print_warnings(&r.fk_not_valid, &r.warnings);
    println!(
        "Roll back with: pgshift rollback --timestamp {}",
        r.backup_timestamp
    );
    Ok(())
}
