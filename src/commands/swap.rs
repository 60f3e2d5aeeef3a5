//! `pgshift swap`: make the prepared shadow the destination's public.

use anyhow::Result;

use crate::cli::SwapArgs;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::output;
use crate::pg::locks_budget::Budget;
use crate::swap::cutover::{self, SwapOptions, SwapPreview, SwapReport};
use crate::swap::engine::{Moved, Moves};
use crate::swap::rollback::FkChange;

pub async fn run(args: SwapArgs, ctx: Ctx) -> Result<ExitCode> {
    // Bad input is told as such before anything connects.
    if let Some(ts) = &args.timestamp
        && ts.trim().parse::<i64>().is_err()
    {
        crate::refuse!("--timestamp {ts:?} is not a migration id (unix milliseconds)");
    }
    let opts = options(&ctx, args.timestamp.clone(), args.keep_dump, false);
    if ctx.settings.dry_run {
        let client = ctx.connect_dest().await?;
        let p = cutover::preview(&client, &opts).await?;
        print_preview(&ctx, &p)?;
        // A shadow that is not what prepare built: the plan, then exit 3 as
        // the swap itself and `rollback --dry-run` give.
        if let Some(why) = &p.mismatch {
            crate::errln!("error: {why}");
            return Ok(ExitCode::Verification);
        }
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
        policy: ctx.settings.swap,
        impact: ctx.settings.impact.clone(),
        keep_tables: ctx.settings.filters.keep_tables.clone(),
    }
}

pub fn print_preview(ctx: &Ctx, p: &SwapPreview) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(&serde_json::json!({ "dry_run": true, "swap": p }));
    }
    crate::outln!(
        "Swap plan for migration {} (dry run: nothing was changed)",
        p.migration_id
    );
    crate::outln!("Swap mode: {} ({})", p.mode.mode.as_str(), p.mode.reason);
    print_schemas(&p.schemas);
    print_budget(&p.swap_lock_budget, "swap");
    crate::outln!();
    crate::out!("{}", p.impact.render());
    crate::outln!();
    if !p.kept_tables.is_empty() {
        crate::outln!(
            "Kept live as they are: {}",
            crate::pg::ident::TableName::keys_shown(&p.kept_tables, &p.schemas)
        );
    }
    let mut warnings: Vec<String> = p.fk_violations.iter().map(ToString::to_string).collect();
    warnings.extend(p.fk_unchecked.iter().cloned());
    warnings.extend(p.warnings.iter().cloned());
    print_moves(
        "swap",
        (&p.backup_schema, "shadow"),
        &p.schemas,
        &p.moves,
        &warnings,
        &p.refusals,
    );
    Ok(())
}

/// The end of a swap's (or rollback's) dry run, for people: what moves
/// between public and the `(backup, incoming)` schemas, the warnings, the
/// transaction statement by statement, and why it would refuse (every
/// reason).
pub fn print_moves<W: std::fmt::Display>(
    what: &str,
    (backup, incoming): (&str, &str),
    schemas: &[crate::backups::manifest::SchemaMap],
    moves: &Moves,
    warnings: &[W],
    refusals: &[String],
) {
    // Several schemas: each pair is on the "Schemas" line above, and the
    // objects are named with their schemas.
    let several = schemas.len() > 1;
    let (live, backup, incoming) = if several {
        ("the live schemas", "their backups", "the incoming schemas")
    } else {
        ("public", backup, incoming)
    };
    for (from, to, objects) in [
        (live, backup, &moves.move_out),
        (incoming, live, &moves.move_in),
    ] {
        crate::outln!("{from} -> {to} ({} objects):", objects.len());
        for m in objects {
            crate::outln!("  {m}");
        }
    }
    for w in warnings {
        crate::outln!("warning: {w}");
    }
    crate::outln!("\nThe {what} transaction:");
    for s in &moves.sql {
        crate::outln!("  {s};");
    }
    match refusals {
        [] => {}
        [why] => crate::outln!("\nThe {what} would refuse: {why}"),
        many => {
            crate::outln!("\nThe {what} would refuse, for {} reasons:", many.len());
            for why in many {
                crate::outln!("  - {why}");
            }
        }
    }
}

/// A dry run's lock-table budget: one line, or the refusal the real run would give.
pub fn print_budget(b: &Budget, what: &str) {
    match b.refusal(&format!("the {what}")) {
        None => crate::outln!(
            "Lock table: needs about {} of {} slots ({} in use){}: fits",
            b.needed,
            b.capacity,
            b.in_use,
            match b.swap_mode.as_deref() {
                Some("object") => " for an object-level swap",
                Some("rename") => " for the swap by renaming schemas",
                _ => "",
            }
        ),
        Some(line) => crate::outln!("warning: {line}; the {what} would be refused before any lock"),
    }
}

/// For a migration of several schemas: each live schema and its backup.
pub fn print_schemas(schemas: &[crate::backups::manifest::SchemaMap]) {
    if !schemas.is_empty() {
        let shown: Vec<String> = schemas
            .iter()
            .map(|m| format!("{} -> {}", m.live, m.backup))
            .collect();
        crate::outln!("Schemas (live -> backup): {}", shown.join(", "));
    }
}

/// How every swap (or rollback) report starts: what was `done`, how many
/// objects moved into the live side (`public`, or `the live schemas`, then a
/// line pairing each live schema with its backup), how `replaced` it is
/// (for public alone, for several schemas) and where it is kept; then how long
/// the locks were held.
pub fn print_head(
    done: &str,
    replaced: [&str; 2],
    backup: &str,
    schemas: &[crate::backups::manifest::SchemaMap],
    m: &Moved,
) {
    let (live, replaced) = if schemas.is_empty() {
        ("public", replaced[0])
    } else {
        ("the live schemas", replaced[1])
    };
    let objects = |n: usize| format!("{n} object{}", if n == 1 { "" } else { "s" });
    crate::outln!(
        "{done}: {} into {live}{replaced} kept as {backup} ({})",
        objects(m.moved_in),
        objects(m.moved_out)
    );
    print_schemas(schemas);
    let earlier = match m.attempts {
        0 | 1 => String::new(),
        n => format!(
            "; the {} that gave up held theirs {} more in all",
            n - 1,
            crate::output::human_ms(m.earlier_attempts_ms)
        ),
    };
    crate::outln!(
        "Locks held for {} ms ({} attempt{}{earlier})",
        m.lock_held_ms,
        m.attempts,
        if m.attempts == 1 { "" } else { "s" }
    );
}

/// How every swap (or rollback) report ends: the foreign keys it re-pointed
/// or detached, its warnings, and the command that undoes it.
pub fn print_ending(
    foreign_keys: &[FkChange],
    fk_not_valid: &[String],
    warnings: &[String],
    undo: &str,
    backup_timestamp: i64,
) {
    for c in foreign_keys {
        crate::outln!(
            "foreign key {} on {}: {} ({})",
            crate::pg::ident::display_ident(&c.constraint),
            c.table,
            c.action,
            c.references
        );
    }
    for fk in fk_not_valid {
        crate::outln!("warning: foreign key {fk} is NOT VALID");
    }
    for w in warnings {
        crate::outln!("warning: {w}");
    }
    crate::outln!("{undo} with: pgshift rollback --timestamp {backup_timestamp}");
}

pub fn print_report(ctx: &Ctx, r: &SwapReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    print_head(
        &format!("Swapped migration {}", r.migration_id),
        [", old public", ", old schemas"],
        &r.backup_schema,
        &r.schemas,
        &r.moved,
    );
    crate::outln!("Swap mode: {} ({})", r.mode.mode.as_str(), r.mode.reason);
    crate::outln!("Checked before the swap: {}", r.impact.summary());
    if !r.preserved_tables.is_empty() {
        crate::outln!(
            "Preserved tables carried over: {}",
            r.preserved_shown.join(", ")
        );
    }
    if !r.kept_tables.is_empty() {
        crate::outln!(
            "Kept live as they were: {}",
            crate::pg::ident::TableName::keys_shown(&r.kept_tables, &r.schemas)
        );
    }
    print_ending(
        &r.foreign_keys,
        &r.fk_not_valid,
        &r.warnings,
        "Roll back",
        r.backup_timestamp,
    );
    Ok(())
}
