//! Describing a schema's tables for a manifest, and checking a schema against one.

use anyhow::{Context, Result};
use tokio_postgres::GenericClient;

use crate::pg::ident::qualified;
use crate::pg::meta::ManifestTable;

/// Tables (plain tables and partitions; partitioned parents hold no rows of
/// their own) of `schema` with their indexes and owned sequences, and — when
/// `count` — exact row counts.
pub async fn describe(
    client: &impl GenericClient,
    schema: &str,
    count: bool,
) -> Result<Vec<ManifestTable>> {
    let rows = client
        .query(
            "SELECT c.relname::text,
                    COALESCE((SELECT array_agg(i.relname::text ORDER BY i.relname)
                                FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
                               WHERE x.indrelid = c.oid), '{}'),
                    COALESCE((SELECT array_agg(s.relname::text ORDER BY s.relname)
                                FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid
                               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                 AND d.refobjid = c.oid AND d.deptype IN ('a', 'i') AND s.relkind = 'S'), '{}')
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r'
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                 AND d.objid = c.oid AND d.deptype = 'e')
              ORDER BY c.relname",
            &[&schema],
        )
        .await
        .with_context(|| format!("describing the tables of {schema}"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.get(0);
        let rows = if count {
            Some(count_rows(client, schema, &name).await?)
        } else {
            None
        };
        out.push(ManifestTable {
            name,
            rows,
            checksum: None,
            indexes: r.get(1),
            sequences: r.get(2),
        });
    }
    Ok(out)
}

/// `SELECT count(*) FROM ONLY schema.table`.
pub async fn count_rows(client: &impl GenericClient, schema: &str, table: &str) -> Result<i64> {
    let sql = format!("SELECT count(*) FROM ONLY {}", qualified(schema, table));
    Ok(client
        .query_one(sql.as_str(), &[])
        .await
        .with_context(|| format!("counting rows of {schema}.{table}"))?
        .get(0))
}
