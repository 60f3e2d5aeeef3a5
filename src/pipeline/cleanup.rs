//! Removing a prepared (or half-prepared) migration from the destination:
//! pgshift's triggers on public tables, the sync changelogs and functions in the
//! `pgshift` schema, and the shadow schema. The destination's public and the
//! migration records are left alone. One transaction, under a short
//! lock_timeout, retried: dropping a trigger needs a brief lock on its table.
//! When that transaction would need more of the lock table than one
//! transaction should take (thousands of shadow tables), the bulk is dropped
//! first in lock-bounded transactions ([`crate::pg::batch`]); every step is
//! idempotent, so a cleanup that stopped half-way is finished by the next one.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

use crate::pg::batch;
use crate::pg::connect::describe_pg_error;
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
        // A run that failed half-way through restoring the schema may leave
        // its shadow empty (the batches before the failure committed nothing
        // but settings): not a leftover, but not worth keeping either.
        drop_empty_shadow(client).await?;
        return Ok(found);
    }
    shrink(client, &found, lock_timeout, retries)
        .await
        .context("removing the prepared migration")?;
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
    let mut attempt = 0;
    loop {
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(found),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                let lock_timeout_hit =
                    e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
                if lock_timeout_hit && attempt < retries {
                    attempt += 1;
                    let wait = crate::pipeline::backoff(attempt);
                    tracing::warn!(
                        "a table is busy; retrying cleanup in {} ms",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                bail!("removing the prepared migration: {}", describe_pg_error(&e));
            }
        }
    }
}

/// Drop pgshift's shadow schema if it holds nothing (RESTRICT).
async fn drop_empty_shadow(client: &Client) -> Result<()> {
    if let ShadowState::Ours(oid) = meta::shadow_state(client).await? {
        let empty: bool = client
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend WHERE refclassid = 'pg_catalog.pg_namespace'::regclass AND refobjid = $1)",
                &[&oid],
            )
            .await?
            .get(0);
        if empty {
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} RESTRICT",
                    quote_ident(SHADOW_SCHEMA)
                ))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("dropping the empty shadow: {}", describe_pg_error(&e))
                })?;
        }
    }
    Ok(())
}

/// When the leftovers are too many for one transaction (thousands of shadow
/// tables), drop them in lock-bounded transactions until the rest fits the
/// single transaction [`remove_prepared`] ends with: the triggers, the helper
/// objects and the shadow's contents, each down to a third of one
/// transaction's share of the lock table. Idempotent.
async fn shrink(
    client: &Client,
    found: &Removed,
    lock_timeout: Duration,
    retries: u32,
) -> Result<()> {
    let opts = batch::Options::for_server(client, "cleanup")
        .await?
        .with_lock_timeout(lock_timeout, retries);
    let third = opts.room() / 3;
    // A trigger drop locks the trigger and its table.
    if found.triggers.len() as u64 * 2 > third {
        let stmts: Vec<batch::Stmt> = client
            .query(
                "SELECT format('DROP TRIGGER IF EXISTS %I ON %I.%I', t.tgname, n.nspname, c.relname)
                   FROM pg_catalog.pg_trigger t
                   JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgshift\\_%'",
                &[],
            )
            .await?
            .into_iter()
            .map(|r| batch::Stmt {
                sql: r.get(0),
                locks: 2,
            })
            .collect();
        batch::run(client, &stmts, &opts).await?;
    }
    if !found.helper_tables.is_empty() || found.helper_functions > 0 {
        batch::shrink_objects(client, META_SCHEMA, RECORD_TABLES, third, &opts).await?;
    }
    if found.shadow {
        batch::shrink_objects(client, SHADOW_SCHEMA, &[], third, &opts).await?;
    }
    Ok(())
}
