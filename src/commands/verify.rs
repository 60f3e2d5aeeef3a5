//! `pgshift verify`: check a backup against its manifest. Exit 0 when intact,
//! 3 when anything differs (each difference named). Needs no lock: it only
//! reads, then writes the verification time into the manifest row.

use anyhow::Result;

use crate::backups::verify::{self, VerifyReport};
use crate::cli::VerifyArgs;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::migration::session::app_name;
use crate::output::{self, Table};
use crate::pg::lock::{Watched, naming_lock_waits_from_a_new_session};

pub async fn run(args: VerifyArgs, ctx: Ctx) -> Result<ExitCode> {
    ctx.settings.require_dest()?;
    // Refuse bad input before connecting.
    if let Some(ts) = &args.timestamp {
        verify::parse_ref(ts)?;
    }
    let client = ctx.connect_dest().await?;
    let backup = match &args.timestamp {
        Some(ts) => verify::find(&client, ts).await?,
        None => verify::latest(&client, "verify").await?,
    };
    // Reading a backup's tables waits behind a session holding one's ACCESS
    // EXCLUSIVE lock: after 5 s, one more session names it.
    let open = async {
        ctx.connect_dest()
            .await
            .inspect_err(|e| {
                tracing::info!("not watching verify's lock waits (no session to spare): {e:#}")
            })
            .ok()
    };
    let sessions = [app_name(ctx.command)];
    let watched = Watched {
        side: "destination",
        sessions: &sessions,
    };
    let checked =
        naming_lock_waits_from_a_new_session(open, &watched, verify::check(&client, &backup)).await;
    let mut report = match checked {
        Ok(r) => r,
        Err(e) => return Err(changed_under(&client, e).await),
    };
    record(&client, &mut report).await?;
    print(&ctx, &report)?;
    if report.ok {
        Ok(ExitCode::Ok)
    } else {
        // A partly dropped backup: its missing tables are gone, not damaged.
        let partly = if backup.manifest.dropping_since.is_some() {
            " (it is partly dropped: a cleanup did not finish)"
        } else {
            ""
        };
        crate::errln!(
            "error: {} does not match its manifest{partly}: {}",
            report.schema,
            report.summary()
        );
        Ok(ExitCode::Verification)
    }
}

/// Record the outcome in the backup's manifest row, where the destination
/// lets this role write: verify only reads otherwise, and on a destination
/// that takes no writes (a standby, a read-only default) or a role that may
/// not update `pgshift.backups` the outcome is still printed, with a
/// warning that it was not recorded.
async fn record(client: &tokio_postgres::Client, report: &mut VerifyReport) -> Result<()> {
    use tokio_postgres::error::SqlState;
    if !report.recordable {
        return Ok(());
    }
    if let Some(why) = crate::migration::session::takes_no_writes(client).await? {
        report.warnings.push(format!(
            "{}: this verification is not recorded",
            why.describe()
        ));
        return Ok(());
    }
    match verify::record(client, report).await {
        Err(e)
            if crate::pg::exec::PgError::code_in(&e) == Some(SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            report.warnings.push(format!(
                "this verification is not recorded: {}",
                e.root_cause()
            ));
            Ok(())
        }
        other => other,
    }
}

/// A table or schema of the backup gone while verify read it: another run
/// (a rollback restoring it, a cleanup dropping it) moved it meanwhile.
/// Said so, naming the run that holds the lock, instead of the server's bare
/// "relation … does not exist".
async fn changed_under(client: &tokio_postgres::Client, e: anyhow::Error) -> anyhow::Error {
    use tokio_postgres::error::SqlState;
    let code = crate::pg::exec::PgError::code_in(&e);
    if !matches!(
        code,
        Some(SqlState::UNDEFINED_TABLE | SqlState::INVALID_SCHEMA_NAME)
    ) {
        return e;
    }
    match crate::pg::lock::holder(client).await {
        Ok(Some(h)) => e.context(format!(
            "the backup changed while verify read it: {h} holds the run lock (a rollback or cleanup moves or drops backups); verify again once it is done"
        )),
        _ => e.context("the backup changed while verify read it (a rollback or cleanup that ran meanwhile moves or drops backups); verify again"),
    }
}

pub fn print(ctx: &Ctx, r: &VerifyReport) -> Result<()> {
    if ctx.settings.json {
        return output::print_json(r);
    }
    crate::outln!(
        "Backup {} ({}): {}",
        r.schema,
        r.timestamp,
        if r.ok {
            "intact"
        } else {
            "DIFFERS from its manifest"
        }
    );
    if !r.tables.is_empty() {
        let mut t = Table::new([
            "table",
            "rows",
            "manifest rows",
            "indexes",
            "sequences",
            "ok",
        ])
        .right(1)
        .right(2)
        .right(3)
        .right(4);
        for c in &r.tables {
            t.row([
                c.name.clone(),
                c.rows.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                c.expected_rows
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.indexes.to_string(),
                c.sequences.to_string(),
                if c.ok { "yes" } else { "NO" }.to_string(),
            ]);
        }
        t.print();
    }
    if let Some(o) = &r.objects {
        crate::outln!(
            "other objects (views, functions, types, columns, constraints, defaults, triggers, …): {} of {} recorded found",
            o.found,
            o.recorded
        );
    }
    for w in &r.warnings {
        crate::outln!("warning: {w}");
    }
    for d in &r.differences {
        crate::outln!("difference: {}", d.message);
    }
    Ok(())
}
