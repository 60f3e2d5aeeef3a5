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
    println!(
        "public -> {} ({} objects):",
        p.backup_schema,
        p.move_out.len()
    );
    for m in &p.move_out {
        println!("  {m}");
    }
    println!("shadow -> public ({} objects):", p.move_in.len());
    for m in &p.move_in {
        println!("  {m}");
    }
    for v in &p.fk_violations {
        println!("warning: {v}");
    }
    println!("\nThe swap transaction:");
    for s in &p.sql {
        println!("  {s};");
    }
    Ok(())
}

pub fn print_report(ctx: &Ctx, r: &SwapReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    println!(
        "Swapped migration {}: {} objects into public, old public kept as {} ({} objects)",
        r.migration_id, r.moved_in, r.backup_schema, r.moved_out
    );
    println!(
        "Locks held for {} ms ({} attempt{})",
        r.lock_held_ms,
        r.attempts,
        if r.attempts == 1 { "" } else { "s" }
    );
    if !r.preserved_tables.is_empty() {
        println!(
            "Preserved tables carried over: {}",
            r.preserved_tables.join(", ")
        );
    }
    for fk in &r.fk_not_valid {
        println!("warning: foreign key {fk} is NOT VALID");
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!(
        "Roll back with: pgshift rollback --timestamp {}",
        r.backup_timestamp
    );
    Ok(())
}
