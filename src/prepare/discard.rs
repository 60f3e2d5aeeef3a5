//! Removing a prepared (or half-prepared) migration from the destination:
//! pgshift's triggers on public tables, the sync changelogs and functions in the
//! `pgshift` schema, and the shadow schema. The destination's public and the
//! migration records are left alone. One transaction, under a short
//! lock_timeout, retried: dropping a trigger needs a brief lock on its table.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

use crate::pg::exec::{RetryPolicy, exec, retry, rollback_on_err};
use crate::pg::ident::{qualified, quote_ident};
use crate::pg::meta::{self, META_SCHEMA, SHADOW_SCHEMA, ShadowState};

/// Tables of the `pgshift` schema that are records, not migration objects.
pub const RECORD_TABLES: &[&str] = &["meta", "migration", "backups"];

/// What [`remove_prepared`] found and dropped.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Removed {
    pub shadow: bool,
    pub triggers: Vec<String>,
    pub helper_tables: Vec<String>,
    pub helper_functions: usize,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        !self.shadow
            && self.triggers.is_empty()
            && self.helper_tables.is_empty()
            && self.helper_functions == 0
    }
}

/// Leftovers of a migration, without changing anything.
pub async fn find_leftovers(client: &Client) -> Result<Removed> {
    // The empty shadow a swap leaves behind is not a leftover.
    let shadow = match meta::shadow_state(client).await? {
        ShadowState::Ours(oid) => client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = $1)
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE typnamespace = $1)
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = $1)",
                &[&oid],
            )
            .await
            .context("looking into the shadow schema")?
            .get(0),
        _ => false,
    };
    let mut r = Removed {
        shadow,
        ..Default::default()
    };
    for row in client
        .query(
            "SELECT n.nspname, c.relname, t.tgname FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgshift\\_%'
              ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .context("looking for pgshift triggers")?
    {
        let (s, t, g): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        r.triggers.push(format!("{g} on {s}.{t}"));
    }
    if meta::meta_exists(client).await? {
        for row in client
            .query(
                "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'S') AND NOT (c.relname = ANY($2))
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_class'::regclass
                                     AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
                  ORDER BY 1",
                &[&META_SCHEMA, &RECORD_TABLES],
            )
            .await?
        {
            r.helper_tables.push(row.get(0));
        }
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = $1",
                &[&META_SCHEMA],
            )
            .await?
            .get(0);
        r.helper_functions = n as usize;
    }
    Ok(r)
}

/// Drop every migration object. Refuses to touch a shadow schema pgshift did
/// not create.
pub async fn remove_prepared(
    client: &Client,
    lock_timeout: Duration,
    retries: u32,
) -> Result<Removed> {
    if meta::shadow_state(client).await? == ShadowState::Foreign {
        bail!(
            "the destination has a schema named \"shadow\" that pgshift did not create; not touching it"
        );
    }
    let found = find_leftovers(client).await?;
    if found.is_empty() {
        return Ok(found);
    }
    let mut sql = String::from("BEGIN;\n");
    sql.push_str(&format!(
        "SET LOCAL lock_timeout = '{}ms';\n",
        lock_timeout.as_millis().max(1)
    ));
    for row in client
        .query(
            "SELECT n.nspname, c.relname, t.tgname FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgshift\\_%'",
            &[],
        )
        .await?
    {
        let (s, t, g): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {} ON {};\n",
            quote_ident(&g),
            qualified(&s, &t)
        ));
    }
    for t in &found.helper_tables {
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS {} CASCADE;\n",
            qualified(META_SCHEMA, t)
        ));
    }
    if found.helper_functions > 0 {
        for row in client
            .query(
                "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
                &[&META_SCHEMA],
            )
            .await?
        {
            // regprocedure text is already quoted and schema-qualified.
            let f: String = row.get(0);
            sql.push_str(&format!("DROP FUNCTION IF EXISTS {f} CASCADE;\n"));
        }
    }
    if found.shadow {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;\n",
            quote_ident(SHADOW_SCHEMA)
        ));
    }
    sql.push_str("COMMIT;");
    // No cancellation token: this also runs to clean up after an interrupted run.
    retry(
        "removing the prepared migration",
        RetryPolicy::new(retries),
        None,
        || async { rollback_on_err(client, exec(client, &sql).await).await },
    )
    .await
    .map_err(|stop| stop.into_error().context("removing the prepared migration"))?;
    Ok(found)
}
