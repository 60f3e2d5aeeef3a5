//! Listing backups: each manifest with the schema's size on disk now.

use anyhow::Result;
use serde::Serialize;
use tokio_postgres::Client;

use crate::backups::manifest::{self, BackupRow};
use crate::backups::verify;
use crate::output::rfc3339;

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
    /// A cleanup began dropping it in parts and did not finish: part of it
    /// may be gone (a later cleanup drops the rest; it cannot be restored).
    pub partly_dropped: bool,
    /// A rollback restored this backup then, keeping some tables live: what
    /// is left are the backup's copies of those tables (`tables` counts
    /// them), and it cannot be rolled back to. Null otherwise.
    pub restored_at: Option<String>,
    /// The migration's source (redacted), for `swap` backups.
    pub source: Option<String>,
    pub migration_id: Option<i64>,
    /// For `rollback` backups: the backup that was restored.
    pub restored_from: Option<String>,
    /// Tables that stayed live when this backup was made (`--keep-tables`).
    pub kept_tables: Vec<String>,
    pub last_verified_at: Option<String>,
    pub last_verify_ok: Option<bool>,
    /// A backup of several schemas: each live schema and the schema holding
    /// its backup (absent for a backup of public alone, whose `schema` is it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<crate::backups::manifest::SchemaMap>,
}

/// Manifest facts plus the schema's size now.
pub async fn entry(client: &Client, b: &BackupRow) -> Result<BackupEntry> {
    let m = &b.manifest;
    let mut facts = verify::schema_facts(client, &b.schema_name).await?;
    for s in m.schemas.iter().filter(|s| s.backup != b.schema_name) {
        let f = verify::schema_facts(client, &s.backup).await?;
        facts.exists &= f.exists;
        facts.size_bytes += f.size_bytes;
    }
    Ok(BackupEntry {
        timestamp: b.ts,
        schema: b.schema_name.clone(),
        created_at: rfc3339(&b.created_at),
        kind: b.kind.clone(),
        tables: m.tables.len(),
        // Not a partial sum when a table has no count (h47a).
        total_rows: if m.counts_recorded {
            m.tables.iter().map(|t| t.rows).sum()
        } else {
            None
        },
        size_bytes: facts.size_bytes,
        exists: facts.exists,
        partly_dropped: m.dropping_since.is_some(),
        restored_at: m.restored_since().as_ref().map(rfc3339),
        source: m.source.clone(),
        migration_id: m.migration_id,
        restored_from: m.restored_from.clone(),
        kept_tables: m.kept_tables.clone(),
        last_verified_at: b.last_verified_at.as_ref().map(rfc3339),
        last_verify_ok: b.last_verify_ok,
        schemas: m.schemas.clone(),
    })
}

/// Every backup, newest first.
pub async fn entries(client: &Client) -> Result<Vec<BackupEntry>> {
    let mut entries = Vec::new();
    for b in manifest::list_backups(client).await? {
        entries.push(entry(client, &b).await?);
    }
    Ok(entries)
}
