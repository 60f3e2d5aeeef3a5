//! Preserved tables: validation, the initial copy and real-time sync triggers.
//! (Filled in by the preserved-tables work.)

use std::time::Duration;

use anyhow::Result;
use tokio_postgres::Client;

use crate::pg::catalog::TableInfo;
use crate::pg::ident::TableName;

/// One preserved table as set up by prepare.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SyncedTable {
    pub name: String,
}

/// Validate the preserved tables before anything changes.
pub async fn validate(
    preserved: &[TableName],
    _source_tables: &[TableInfo],
    _dest: &Client,
) -> Result<()> {
    if !preserved.is_empty() {
        anyhow::bail!("preserved tables are not implemented yet");
    }
    Ok(())
}

/// Copy the destination's rows into the shadow and start the sync.
pub async fn setup(
    _dest: &Client,
    preserved: &[TableName],
    _migration_id: i64,
    _lock_timeout: Duration,
    _retries: u32,
) -> Result<Vec<SyncedTable>> {
    if !preserved.is_empty() {
        anyhow::bail!("preserved tables are not implemented yet");
    }
    Ok(Vec::new())
}

// --- Interface used by the swap (implemented by the preserved-tables work) ---

/// Replay the changelog outside the swap's locks until the backlog is small.
pub async fn catch_up(_client: &Client, synced: &[SyncedTable]) -> Result<u64> {
    if !synced.is_empty() {
        anyhow::bail!("preserved tables are not implemented yet");
    }
    Ok(0)
}

/// Inside the swap transaction: final replay, sequences, drop sync objects.
pub async fn final_sync(_client: &Client, synced: &[SyncedTable]) -> Result<()> {
    if !synced.is_empty() {
        anyhow::bail!("preserved tables are not implemented yet");
    }
    Ok(())
}

/// A foreign key whose rows do not match.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FkViolation {
    pub constraint: String,
    pub table: String,
    pub references: String,
    pub count: i64,
    pub examples: Vec<String>,
}

impl std::fmt::Display for FkViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "foreign key {} on {} -> {}: {} rows without a match (e.g. {})",
            self.constraint,
            self.table,
            self.references,
            self.count,
            self.examples.join(", ")
        )
    }
}

/// Deferred foreign keys whose rows do not match.
pub async fn fk_violations(_client: &Client, deferred_sql: &[String]) -> Result<Vec<FkViolation>> {
    if !deferred_sql.is_empty() {
        anyhow::bail!("preserved tables are not implemented yet");
    }
    Ok(Vec::new())
}

/// Inside the swap transaction: run deferred SQL with FKs NOT VALID; returns the FK names.
pub async fn apply_deferred(_client: &Client, deferred_sql: &[String]) -> Result<Vec<String>> {
    if !deferred_sql.is_empty() {
        anyhow::bail!("preserved tables are not implemented yet");
    }
    Ok(Vec::new())
}
