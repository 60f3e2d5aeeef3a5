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
