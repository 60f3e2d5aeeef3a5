//! `pgshift list`: the destination's backups, newest first. Read only, no lock.

use anyhow::Result;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::backups::verify;
use crate::commands::Ctx;
use crate::error::ExitCode;
use crate::migration::session::app_name;
use crate::output::{self, Table, human_bytes};
use crate::pg::connect::connect;
use crate::pg::meta::{self, BackupRow};

/// One backup as `list --json` prints it (documented in README.md, "JSON output").
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    /// Unix milliseconds; also the backup's id (`--timestamp`).
    pub timestamp: i64,
    pub schema: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// `swap` (replaced by a migration) or `rollback` (replaced by a rollback).
    pub kind: String,
    /// Tables recorded in the manifest.
    pub tables: usize,
    /// Rows recorded in the manifest (null when counts were not recorded).
    pub total_rows: Option<i64>,
    /// Size on disk now: tables, indexes, TOAST, sequences, materialized views.
    pub size_bytes: i64,
    /// The schema still exists.
    pub exists: bool,
    /// The migration's source (redacted), for `swap` backups.
    pub source: Option<String>,
    pub migration_id: Option<i64>,
    /// For `rollback` backups: the backup that was restored.
    pub restored_from: Option<String>,
    /// Tables that stayed live when this backup was made (`--keep-tables`).
    pub kept_tables: Vec<String>,
    pub last_verified_at: Option<String>,
    pub last_verify_ok: Option<bool>,
}

pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Manifest facts plus the schema's size now.
pub async fn entry(client: &tokio_postgres::Client, b: &BackupRow) -> Result<BackupEntry> {
    let facts = verify::schema_facts(client, &b.schema_name).await?;
    let m = &b.manifest;
    Ok(BackupEntry {
        timestamp: b.ts,
        schema: b.schema_name.clone(),
        created_at: rfc3339(&b.created_at),
        kind: b.kind.clone(),
        tables: m.tables.len(),
        total_rows: if m.counts_recorded {
            Some(m.tables.iter().filter_map(|t| t.rows).sum())
        } else {
            None
        },
        size_bytes: facts.size_bytes,
        exists: facts.exists,
        source: m.source.clone(),
        migration_id: m.migration_id,
        restored_from: m.restored_from.clone(),
        kept_tables: m.kept_tables.clone(),
        last_verified_at: b.last_verified_at.as_ref().map(rfc3339),
        last_verify_ok: b.last_verify_ok,
    })
}

pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    let dest = ctx.settings.require_dest()?;
    let client = connect(
        dest,
        "destination",
        &app_name(ctx.command),
        ctx.settings.connect_timeout,
    )
    .await?;
    let mut entries = Vec::new();
    for b in meta::list_backups(&client).await? {
        entries.push(entry(&client, &b).await?);
    }
    if ctx.settings.json {
        output::print_json(&entries)?;
        return Ok(ExitCode::Ok);
    }
    if entries.is_empty() {
        println!("No backups on {}.", dest.redacted());
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
            e.schema.clone(),
            short_time(&e.created_at),
            e.tables.to_string(),
            e.total_rows
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            if e.exists {
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

/// `2025-07-15 08:30:00` from an RFC 3339 string (UTC).
pub fn short_time(rfc: &str) -> String {
    DateTime::parse_from_rfc3339(rfc)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| rfc.to_string())
}
