//! `pgshift list`: the destination's backups, newest first. Read only, no lock.

use anyhow::Result;

use crate::backups::list;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::output::{self, Table, human_bytes, short_time};

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let dest = ctx.settings.require_dest()?;
    let client = ctx.connect_dest().await?;
    let entries = list::entries(&client).await?;
    if ctx.settings.json {
        output::print_json(&entries)?;
        return Ok(ExitCode::Ok);
    }
    if entries.is_empty() {
        crate::outln!("No backups on {}.", dest.redacted());
        return Ok(ExitCode::Ok);
    }
    let mut t = Table::new([
        "timestamp",
        "schema",
        "created at",
        "tables",
        "rows",
        "size",
        "source",
        "last verified",
    ])
    .right(3)
    .right(4)
    .right(5);
    for e in &entries {
        let source = match (&e.kind[..], &e.restored_from, &e.source) {
            ("rollback", Some(r), _) => format!("rollback to {r}"),
            (_, _, Some(s)) => s.clone(),
            _ => "-".into(),
        };
        let verified = match (&e.last_verified_at, e.last_verify_ok) {
            (Some(at), Some(true)) => format!("{} ok", short_time(at)),
            (Some(at), _) => format!("{} FAILED", short_time(at)),
            _ => "never".into(),
        };
        t.row([
            e.timestamp.to_string(),
            output::backup_schema_cell(&e.schema, &e.schemas),
            short_time(&e.created_at),
            e.tables.to_string(),
            e.total_rows
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            if e.partly_dropped {
                format!("{} (partly dropped)", human_bytes(e.size_bytes))
            } else if e.restored_at.is_some() {
                format!("{} (left by a rollback)", human_bytes(e.size_bytes))
            } else if e.exists {
                human_bytes(e.size_bytes)
            } else {
                "missing".into()
            },
            source,
            verified,
        ]);
    }
    t.print();
    Ok(ExitCode::Ok)
}
