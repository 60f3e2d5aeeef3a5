//! `pgshift rollback`: make a backup the destination's public again.

use anyhow::Result;

use crate::backups::verify;
use crate::cli::RollbackArgs;
use crate::commands::Ctx;
use crate::commands::swap::{print_budget, print_ending, print_head, print_moves};
use crate::error::{ExitCode, UserError};
use crate::output;
use crate::pg::ident::TableName;
use crate::swap::rollback::{self, RollbackOptions, RollbackPreview, RollbackReport, Target};

pub async fn run(args: RollbackArgs, ctx: Ctx) -> Result<ExitCode> {
    let settings = &ctx.settings;
    settings.require_dest()?;
    // Bad input is refused before anything is opened.
    let target = match (&args.timestamp, args.latest) {
        (Some(ts), _) => {
            verify::parse_ref(ts)?;
            Target::Named(ts.clone())
        }
        (None, _) => Target::Latest,
    };
    let keep_raw = match &args.keep_tables {
        Some(v) => crate::config::list_items("--keep-tables", None, v, "table names")?,
        None => Vec::new(),
    };
    let keep_tables = TableName::parse_list(&keep_raw)
        .map_err(|e| UserError::new(format!("--keep-tables: {e}")))?;
    // Said before anything is read: only the object-level swap can leave a
    // table where it is (the engine refuses it too, for tables the backup
    // itself keeps).
    if !keep_tables.is_empty() && settings.swap.mode == crate::swap::mode::ModeRequest::Rename {
        return Err(UserError::new(
            "--swap-mode rename is not possible with --keep-tables: kept tables stay live where they are, which only the object-level swap can do",
        )
        .into());
    }
    let opts = RollbackOptions {
        target,
        keep_tables,
        force: args.force,
        allow_discard: settings.impact.allow_discard.clone(),
        allow_discard_given_as: settings.impact.allow_discard_given_as.clone(),
        fail_on_breaking: settings.impact.fail_on_breaking,
        workload: settings.impact.workload.clone(),
        allow_fk_violations: settings.allow_fk_violations,
        dry_run: settings.dry_run,
    };
    if settings.dry_run {
        let client = ctx.connect_dest().await?;
        let plan = rollback::plan(&client, &opts).await?;
        let p = rollback::preview(&client, &plan, ctx.settings.swap).await?;
        print_preview(&ctx, &p)?;
        // A backup that no longer matches its manifest: the plan, then exit 3
        // as `verify` and the rollback itself give.
        if let Some(why) = &plan.mismatch {
            crate::errln!("error: {why}");
            return Ok(ExitCode::Verification);
        }
        return Ok(ExitCode::Ok);
    }
    let sess = ctx.open_session().await?;
    // A swap or rollback that stopped after its COMMIT: finish its steps
    // first (the backup it made may be the one restored).
    crate::swap::cutover::finish_stopped(&sess.control, ctx.settings.swap).await?;
    let d = sess.observe().await?;
    crate::migration::derive::settle_committed_swap(&sess.control, &d).await?;
    sess.clear_stale_file(&d)?;
    let plan = rollback::plan(&sess.control, &opts).await?;
    if !plan.verification.ok && opts.force {
        for d in &plan.verification.differences {
            tracing::warn!("{} (--force)", d.message);
        }
    }
    let report = rollback::execute(&sess, &plan, ctx.settings.swap).await?;
    print_report(&ctx, &report)?;
    Ok(ExitCode::Ok)
}

fn print_preview(ctx: &Ctx, p: &RollbackPreview) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(&serde_json::json!({ "dry_run": true, "rollback": p }));
    }
    crate::outln!(
        "Rollback plan: restore {} (dry run: nothing was changed)",
        p.restore_schema
    );
    crate::outln!(
        "Backup check: {}",
        if p.verification.ok {
            "matches its manifest".to_string()
        } else {
            format!("DIFFERS: {}", p.verification.summary())
        }
    );
    if !p.kept_tables.is_empty() {
        crate::outln!(
            "Kept from the current public: {}",
            crate::pg::ident::TableName::keys_shown(&p.kept_tables, &p.schemas)
        );
    }
    crate::outln!("Swap mode: {} ({})", p.mode.mode.as_str(), p.mode.reason);
    print_budget(&p.swap_lock_budget, "rollback");
    crate::out!(
        "{}",
        p.impact
            .render_for(crate::swap::impact::Operation::Rollback)
    );
    // The writes since the current public went live are the impact report's
    // discarded writes (JSON keeps both fields): printed once, there.
    print_moves(
        "rollback",
        (&p.backup_schema, &p.restore_schema),
        &p.schemas,
        &p.moves,
        &p.warnings,
        &p.refusals,
    );
    Ok(())
}

fn print_report(ctx: &Ctx, r: &RollbackReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    print_head(
        &format!("Rolled back to {}", r.restored_schema),
        ["; the replaced public is", "; the replaced schemas are"],
        &r.backup_schema,
        &r.schemas,
        &r.moved,
    );
    crate::outln!("Swap mode: {} ({})", r.mode.mode.as_str(), r.mode.reason);
    crate::outln!(
        "Checked before the rollback: {}",
        r.impact
            .summary_for(crate::swap::impact::Operation::Rollback)
    );
    if !r.kept_tables.is_empty() {
        crate::outln!(
            "Kept from the replaced {}: {}",
            if r.schemas.len() > 1 {
                "schemas"
            } else {
                "public"
            },
            crate::pg::ident::TableName::keys_shown(&r.kept_tables, &r.schemas)
        );
    }
    for schema in &r.dropped_schemas {
        crate::outln!(
            "Schema {} did not exist before that backup was made and was dropped",
            crate::pg::ident::display_ident(schema)
        );
    }
    if r.restored_schema_dropped {
        crate::outln!("{} is now empty and was dropped", r.restored_schema);
    } else {
        crate::outln!(
            "{} keeps its own copies of the kept tables",
            r.restored_schema
        );
    }
    print_ending(
        &r.foreign_keys,
        &r.fk_not_valid,
        &r.warnings,
        "Undo",
        r.backup_timestamp,
    );
    Ok(())
}
