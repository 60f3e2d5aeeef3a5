//! `pgshift start`: prepare and swap in one run, holding the lock throughout.
//! Between the two the swap's impact checks run (`cutover::swap`), with the
//! same gates as `swap`.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::commands::{Ctx, prepare, swap};
use crate::error::ExitCode;
use crate::output::{self, Table, human_ms};
use crate::prepare::phases::PrepareReport;
use crate::swap::cutover::{self, SwapReport};

#[derive(Debug, Serialize)]
struct StartReport<'a> {
    prepare: prepare::PrepareOutput<'a>,
    swap: &'a SwapReport,
}

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let popts = prepare::options(&ctx)?;
    if ctx.settings.dry_run {
        // The dry run refuses a typo in --allow-discard as the run would.
        check_allowed(&ctx, &ctx.connect_dest().await?, &popts.schemas).await?;
        let plan = prepare::dry_run(&ctx, &popts).await?;
        prepare::print_plan(&ctx, &plan)?;
        if !ctx.settings.json {
            crate::outln!(
                "\nThen the swap makes shadow public and keeps the old public as backup_<unix ms>, in one transaction: by renaming the schemas where it can, else by moving every non-extension object (`pgshift swap --dry-run` after prepare says which, and why)."
            );
            if !popts.filters.keep_tables.is_empty() {
                crate::outln!("The kept tables stay in public as they are.");
            }
        }
        return Ok(ExitCode::Ok);
    }
    let sess = ctx.open_session().await?;
    // A typo in --allow-discard is refused before the prepare, not after it.
    check_allowed(&ctx, &sess.control, &popts.schemas).await?;
    let prepared = prepare::prepare_in_session(&ctx, &sess, &popts)
        .await
        .context("prepare step")?;
    if !ctx.settings.json {
        prepare::print_report_brief(&prepared);
    }
    let opts = swap::options(&ctx, None, false, true);
    let swapped = cutover::swap(&sess, &opts)
        .await
        .context("swap step (the shadow stays prepared: fix the cause and run `pgshift swap`, or `pgshift abort`)")?;
    if ctx.settings.json {
        output::print_json(&StartReport {
            prepare: prepare::PrepareOutput {
                report: &prepared,
                impact: None,
            },
            swap: &swapped,
        })?;
    } else {
        swap::print_report(&ctx, &swapped)?;
        print_summary(&prepared, &swapped);
    }
    Ok(ExitCode::Ok)
}

/// `--allow-discard`'s tables must be tables the swap replaces
/// (`gate::check_allowed_tables`).
async fn check_allowed(ctx: &Ctx, dest: &tokio_postgres::Client, schemas: &[String]) -> Result<()> {
    crate::swap::impact::gate::check_allowed_tables(
        dest,
        crate::swap::impact::Operation::Swap,
        &ctx.settings.impact.allow_discard,
        &ctx.settings.impact.allow_discard_given_as,
        schemas,
    )
    .await
}

/// The whole run at a glance: every phase's duration and the swap's lock time.
fn print_summary(p: &PrepareReport, s: &SwapReport) {
    let mut t = Table::new(["phase", "duration"]).right(1);
    for (name, ms) in &p.phases_ms {
        t.row([name.clone(), human_ms(ms.as_u64().unwrap_or(0))]);
    }
    t.row([
        "swap (locks held)".to_string(),
        human_ms(s.moved.lock_held_ms),
    ]);
    crate::outln!();
    t.print();
}
