//! `pgshift cleanup`: drop backup schemas created before a moment
//! (`backups::cleanup`). Built for cron: never prompts, exits 0 when there is
//! nothing to do (whatever else runs); exit 1 when another run holds the lock
//! while there is something to drop, or dropping a backup failed for another
//! reason than a busy table.

use anyhow::Result;

use crate::backups::cleanup::{self, CleanupOptions, CleanupReport, parse_before};
use crate::cli::CleanupArgs;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::output::{self, Table, human_bytes, short_time};

pub async fn run(args: CleanupArgs, ctx: Ctx) -> Result<ExitCode> {
    let settings = &ctx.settings;
    let opts = CleanupOptions {
        before: parse_before(&args.before)?,
        keep_latest: settings.keep_latest,
        dry_run: settings.dry_run,
        lock_timeout: settings.swap.lock_timeout,
        cancel: Some(ctx.cancel.clone()),
    };
    let dest = settings.require_dest()?;
    // A dry run reads only; a real run holds the run lock like every mutating
    // command, once there is something to drop (with nothing to do, a cron
    // run exits 0 while another run holds the lock).
    let mut lock_lost = false;
    let (report, failures) = if opts.dry_run {
        let client = ctx.connect_dest().await?;
        let planned = cleanup::cleanup(&client, &opts).await?;
        // What a real run now would meet first (it exits 1, dropping nothing).
        if !planned.0.dropped.is_empty() {
            let d = crate::migration::derive::Destination::observe(&client).await?;
            if let Some(why) = d.lock_refusal() {
                tracing::warn!("a real run now would drop nothing and exit 1: {why}");
            }
        }
        planned
    } else if let Some(report) = {
        // A destination that takes no writes is refused as every mutating
        // run is, even with nothing to drop (a cron job pointed at a standby).
        let client = ctx.connect_dest().await?;
        crate::migration::session::refuse_read_only(&client, dest).await?;
        cleanup::nothing_to_do(&client, &opts).await?
    } {
        (report, Vec::new())
    } else {
        let sess = ctx.open_session().await?;
        // A swap or rollback stopped after its COMMIT: its steps (foreign
        // keys to validate) first, while the backup whose manifest lists
        // them is there (they were lost with it).
        crate::swap::cutover::finish_stopped(&sess.control, settings.swap).await?;
        // The run lock's session ending stops it as Ctrl-C does (another
        // run may take the lock): the backup being dropped is finished, no
        // other is begun.
        let run = cleanup::cleanup(&sess.control, &opts);
        tokio::pin!(run);
        let out = tokio::select! {
            r = &mut run => r?,
            () = sess.lock_lost() => {
                tracing::error!("the run lock's session ended: no further backup is begun");
                if let Some(c) = &opts.cancel {
                    c.cancel();
                }
                run.await?
            }
        };
        lock_lost = !sess.lock_alive();
        out
    };
    print(&ctx, &report)?;
    if lock_lost {
        return Err(anyhow::Error::new(crate::error::LockLost));
    }
    if report.interrupted {
        // What was dropped is reported above; the rest was not begun.
        return Err(anyhow::Error::new(crate::error::Interrupted));
    }
    if !failures.is_empty() {
        let n: usize = failures.iter().map(|(n, _)| n).sum();
        anyhow::bail!(
            "could not drop {n} backup{}: {}",
            if n == 1 { "" } else { "s" },
            failures
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(ExitCode::Ok)
}

fn print(ctx: &Ctx, r: &CleanupReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    let verb = if r.dry_run { "would drop" } else { "dropped" };
    if r.interrupted && r.dropped.is_empty() && r.skipped.is_empty() {
        crate::outln!(
            "Interrupted before {} any backup; {} kept.",
            if r.dry_run { "looking at" } else { "dropping" },
            r.kept
        );
        return Ok(());
    }
    if r.dropped.is_empty() && r.skipped.is_empty() {
        crate::outln!(
            "Nothing to clean up: no backup created before {}{}.",
            r.before,
            r.keep_latest
                .map(|n| format!(" beyond the {n} newest"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    let mut t = Table::new(["action", "timestamp", "schema", "created at", "size"]).right(4);
    for d in &r.dropped {
        t.row([
            verb.to_string(),
            d.timestamp.to_string(),
            output::backup_schema_cell(&d.schema, &d.schemas),
            short_time(&d.created_at),
            human_bytes(d.size_bytes),
        ]);
    }
    for s in &r.skipped {
        t.row([
            "skipped".to_string(),
            s.timestamp.to_string(),
            output::backup_schema_cell(&s.schema, &s.schemas),
            short_time(&s.created_at),
            human_bytes(s.size_bytes),
        ]);
    }
    t.print();
    // Backups that hold each other's dependents go (or stay) together.
    let mut told = std::collections::HashSet::new();
    for d in r.dropped.iter().chain(&r.skipped) {
        let Some((last, rest)) = d.together_with.split_last() else {
            continue;
        };
        if !told.insert(&d.schema) {
            continue;
        }
        told.extend(&d.together_with);
        let mut names = vec![d.schema.as_str()];
        names.extend(rest.iter().map(String::as_str));
        crate::outln!(
            "note: {} and {last} {} together: objects in one depend on another",
            names.join(", "),
            match (&d.reason, r.dry_run) {
                (Some(_), true) => "would be skipped",
                (Some(_), false) => "were skipped",
                (None, true) => "would be dropped",
                (None, false) => "were dropped",
            }
        );
    }
    for s in &r.skipped {
        crate::outln!(
            "warning: skipped {}: {}",
            s.schema,
            s.reason.as_deref().unwrap_or("")
        );
    }
    crate::outln!(
        "{} {} backup{} ({}); {} kept{}",
        if r.dry_run { "Would drop" } else { "Dropped" },
        r.dropped.len(),
        if r.dropped.len() == 1 { "" } else { "s" },
        human_bytes(r.freed_bytes),
        r.kept,
        if r.dry_run {
            " (dry run: nothing was changed)"
        } else if r.interrupted {
            " (interrupted: those not begun were kept)"
        } else {
            ""
        }
    );
    Ok(())
}
