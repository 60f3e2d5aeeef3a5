//! Removing a prepared (or half-prepared) migration from the destination:
//! pgshift's triggers on public tables (its sync triggers by exact name and
//! function schema, [`own_trigger_sql`]; an application's `pgshift_…` trigger
//! is not one), the sync changelogs and functions in the
//! `pgshift` schema, and the shadow schema. The destination's public and the
//! migration records are left alone.
//!
//! The sync triggers go first, one table per transaction: dropping a trigger
//! takes an ACCESS EXCLUSIVE lock on its table, and a transaction holding one
//! table while waiting for the next met the application's transactions,
//! which write them in another order, in a deadlock that cancelled theirs.
//! Each waits for its one lock for less than `deadlock_timeout` (as the
//! swap's waits do), and is retried. The rest is pgshift's own, which the
//! application never waits for: one transaction, retried.
//! When that transaction would need more of the lock table than one
//! transaction should take (thousands of shadow tables), the bulk is dropped
//! first in lock-bounded transactions ([`crate::pg::batch`]); every step is
//! idempotent, so a cleanup that stopped half-way is finished by the next one.
//! Those drops are CASCADE, for the shadow's objects depend on one another;
//! before any of them, an object outside that depends on the migration (an
//! operator's view over a shadow table) makes it refuse, naming it, with
//! nothing changed ([`crate::pg::catalog::external_dependents`], as cleanup
//! asks before dropping a backup).
//!
//! Used by `abort` ([`abort`]), by prepare when it starts over after a dead
//! run, and by prepare after a failure (nothing half-done stays behind).

use std::time::Duration;

use chrono::Utc;
use itertools::Itertools;
use serde::Serialize;

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

use crate::migration::derive;
use crate::migration::lifecycle::Status;
use crate::migration::record;
use crate::migration::session::Session;
use crate::pg::batch;
use crate::pg::exec::{
    RetryPolicy, exec, lock_timeout_under_deadlock_sql, naming_lock_holders, retry, rollback_on_err,
};
use crate::pg::ident::{display_ident, qualified, quote_ident};
use crate::pg::lock::relation_lock_holders;
use crate::pg::meta::{self, META_SCHEMA, SHADOW_SCHEMA, ShadowState};
use crate::prepare::sync::{
    CHANGELOG_NAMES, SYNC_FUNCTION_NAMES, changelog_drop, own_trigger_sql, sync_function_drop,
};

/// Awaited by [`remove_prepared`] once its checks passed, right before its
/// first drop (abort records there that it began: a run killed after its
/// first drop leaves a migration that is no longer whole).
pub type BeforeDrops<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// What [`remove_prepared`] found and dropped.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Removed {
    pub shadow: bool,
    /// The shadows of other chosen schemas (`pgshift_shadow_…`, pgshift's own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_shadows: Vec<String>,
    /// `trigger on schema.table`
    pub triggers: Vec<String>,
    pub helper_tables: Vec<String>,
    pub helper_functions: usize,
    /// The same functions, by name.
    #[serde(skip)]
    pub function_names: Vec<String>,
    /// The same triggers, as names.
    #[serde(skip)]
    pub trigger_sites: Vec<TriggerSite>,
}

/// A pgshift trigger on a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSite {
    pub schema: String,
    pub table: String,
    pub trigger: String,
}

/// Does the schema with this oid hold any relation, type or function?
pub async fn schema_has_objects(client: &Client, oid: u32) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = $1)
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE typnamespace = $1)
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = $1)",
            &[&oid],
        )
        .await
        .context("looking into the shadow schema")?
        .get(0))
}

impl Removed {
    /// One line for a log: `the shadow schema, shadow pgshift_shadow_billing,
    /// 4 triggers, 1 helper table and 4 helper functions`.
    pub fn summary(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let mut parts: Vec<String> = Vec::new();
        if self.shadow {
            parts.push("the shadow schema".into());
        }
        parts.extend(
            self.other_shadows
                .iter()
                .map(|s| format!("shadow {}", display_ident(s))),
        );
        for (n, what) in [
            (self.triggers.len(), "trigger"),
            (self.helper_tables.len(), "helper table"),
            (self.helper_functions, "helper function"),
        ] {
            if n > 0 {
                parts.push(count(n, what));
            }
        }
        match parts.as_slice() {
            [] => "nothing".into(),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.shadow
            && self.other_shadows.is_empty()
            && self.triggers.is_empty()
            && self.helper_tables.is_empty()
            && self.helper_functions == 0
    }
}

/// Leftovers of a migration, without changing anything.
pub async fn find_leftovers(client: &Client) -> Result<Removed> {
    // The empty shadow a swap leaves behind is not a leftover.
    let shadow = match meta::shadow_state(client).await? {
        ShadowState::Ours(oid) => schema_has_objects(client, oid).await?,
        _ => false,
    };
    let mut r = Removed {
        shadow,
        ..Default::default()
    };
    // The shadows of other schemas: a swap drops them, so any is a leftover.
    r.other_shadows = meta::other_shadows(client)
        .await?
        .into_iter()
        .filter(|(_, ours)| *ours)
        .map(|(n, _)| n)
        .collect();
    for row in client
        .query(
            format!(
                "SELECT n.nspname, c.relname, t.tgname FROM pg_catalog.pg_trigger t
                   JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE NOT t.tgisinternal AND {}
                  ORDER BY 1, 2, 3",
                own_trigger_sql("t")
            )
            .as_str(),
            &[],
        )
        .await
        .context("looking for pgshift triggers")?
    {
        let (s, t, g): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        r.triggers.push(format!(
            "{} on {}.{}",
            display_ident(&g),
            display_ident(&s),
            display_ident(&t)
        ));
        r.trigger_sites.push(TriggerSite {
            schema: s,
            table: t,
            trigger: g,
        });
    }
    if meta::meta_exists(client).await? {
        // pgshift's sync objects by their names and make (a changelog
        // carries pgshift's comment; a sync function is a SECURITY DEFINER
        // trigger function): an operator's own table or view in schema
        // pgshift (a `log_2024`) is not one, and stays.
        let row = client
            .query_one(
                "SELECT ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c
                               WHERE c.relnamespace = $1::text::pg_catalog.regnamespace AND c.relkind = 'r'
                                 AND c.relname ~ $2
                                 AND pg_catalog.obj_description(c.oid, 'pg_class') LIKE 'pgshift: changelog of %'
                               ORDER BY 1),
                        ARRAY(SELECT p.proname::text FROM pg_catalog.pg_proc p
                               WHERE p.pronamespace = $1::text::pg_catalog.regnamespace AND p.pronargs = 0
                                 AND p.proname ~ $3 AND p.prosecdef
                                 AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
                               ORDER BY 1)",
                &[&META_SCHEMA, &CHANGELOG_NAMES, &SYNC_FUNCTION_NAMES],
            )
            .await
            .context("looking for pgshift's changelogs and sync functions")?;
        r.helper_tables = row.get(0);
        r.function_names = row.get(1);
        r.helper_functions = r.function_names.len();
    }
    Ok(r)
}

/// Drop every migration object. Refuses to touch a shadow schema pgshift did
/// not create. `cancel` (an `abort`, or the start of a prepare, that an
/// operator interrupts) stops the waiting between retries; none for the
/// removal after an interrupted or failed run, which goes on regardless.
pub async fn remove_prepared(
    client: &Client,
    lock_timeout: Duration,
    retries: u32,
    cancel: Option<&tokio_util::sync::CancellationToken>,
    before_drops: Option<BeforeDrops<'_>>,
) -> Result<Removed> {
    if matches!(meta::shadow_state(client).await?, ShadowState::Foreign(_)) {
        bail!(
            "the destination has a schema named \"shadow\" that pgshift did not create; not touching it"
        );
    }
    let found = find_leftovers(client).await?;
    let shadows: Vec<String> = std::iter::once(SHADOW_SCHEMA.to_string())
        .chain(found.other_shadows.iter().cloned())
        .collect();
    crate::pg::catalog::refuse_unowned_schemas(client, &shadows, "drop").await?;
    if found.is_empty() {
        // A run that failed half-way through restoring the schema may leave
        // its shadow empty (the batches before the failure committed nothing
        // but settings): not a leftover, but not worth keeping either.
        let mut found = found;
        found.shadow = drop_empty_shadow(client).await?;
        return Ok(found);
    }
    refuse_external_dependents(client, &shadows, &found).await?;
    refuse_unowned_tables(client, &found.trigger_sites).await?;
    if let Some(step) = before_drops {
        step.await?;
    }
    // The sync triggers first, one table per transaction, each lock wait
    // ending below deadlock_timeout: dropped together, the removal held one
    // table while it waited for the next, and an application transaction
    // writing both in the other order was the one cancelled.
    if let Err(stop) =
        drop_sync_triggers(client, &found.trigger_sites, lock_timeout, retries, cancel).await
    {
        let exhausted = matches!(stop, crate::pg::exec::Stop::Exhausted { .. });
        let mut err = stop.into_error().context("removing the prepared migration");
        if exhausted {
            err = name_lock_holders(client, &shadows, &found.trigger_sites, err).await;
        }
        return Err(err);
    }
    // pgshift's own objects, which the application never waits for (the
    // sync triggers are gone): their waits may outlast deadlock_timeout, so
    // that the server cancels an autovacuum of a freshly loaded shadow table
    // that holds one (its TOAST table, which no LOCK TABLE reaches), as it
    // does for any waiter; bounded by deadlock_timeout, every retry met it.
    let own_timeout = crate::pg::exec::past_deadlock_timeout(client, lock_timeout).await;
    // Asked again: the triggers' drops may have waited long enough for an
    // operator to make something depend on the migration meanwhile.
    late_dependents(client, &shadows, &found).await?;
    if let Err(e) = shrink(client, &found, own_timeout, retries).await {
        let mut err = e.context("removing the prepared migration");
        if batch::is_lock_timeout(&err) {
            err = name_lock_holders(client, &shadows, &found.trigger_sites, err).await;
        }
        return Err(err);
    }
    let begin = format!(
        "BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n",
        own_timeout.as_millis().max(1)
    );
    let mut sql = String::new();
    if found.shadow {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;\n",
            quote_ident(SHADOW_SCHEMA)
        ));
    }
    for s in &found.other_shadows {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;\n",
            quote_ident(s)
        ));
    }
    sql.push_str("COMMIT;");
    let result = retry(
        "removing the prepared migration",
        RetryPolicy::new(retries),
        cancel,
        || async {
            let dropped = async {
                exec(client, &begin).await?;
                // And in the transaction that drops the shadows (as
                // cleanup asks in the one that drops a backup).
                late_dependents(client, &shadows, &found).await?;
                exec(client, &sql).await
            };
            let dropped = rollback_on_err(client, dropped.await).await;
            naming_lock_holders(dropped, || {
                lock_holders(client, &shadows, &found.trigger_sites)
            })
            .await
        },
    )
    .await;
    if let Err(stop) = result {
        let exhausted = matches!(stop, crate::pg::exec::Stop::Exhausted { .. });
        let mut err = stop.into_error().context("removing the prepared migration");
        if exhausted {
            err = name_lock_holders(client, &shadows, &found.trigger_sites, err).await;
        }
        return Err(err);
    }
    Ok(found)
}

/// Drop the sync triggers of `sites`, each table's in a transaction of its
/// own that waits for that one lock only, for less than `deadlock_timeout`
/// (and at most `lock_timeout`), retried as the swap is.
async fn drop_sync_triggers(
    client: &Client,
    sites: &[TriggerSite],
    lock_timeout: Duration,
    retries: u32,
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> std::result::Result<(), crate::pg::exec::Stop> {
    let mut by_table: std::collections::BTreeMap<(&str, &str), Vec<&str>> = Default::default();
    for t in sites {
        by_table
            .entry((t.schema.as_str(), t.table.as_str()))
            .or_default()
            .push(t.trigger.as_str());
    }
    for ((schema, table), triggers) in by_table {
        let mut sql = format!(
            "BEGIN;\n{};\n",
            lock_timeout_under_deadlock_sql(lock_timeout)
        );
        for t in triggers {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {} ON {};\n",
                quote_ident(t),
                qualified(schema, table)
            ));
        }
        sql.push_str("COMMIT;");
        let rel = qualified(schema, table);
        let mut again = false;
        retry(
            "removing the sync triggers",
            RetryPolicy::new(retries),
            cancel,
            || {
                let nudge = std::mem::replace(&mut again, true);
                let (sql, rel) = (&sql, &rel);
                async move {
                    if nudge {
                        crate::pg::exec::nudge_autovacuum(client, rel).await;
                    }
                    let dropped = rollback_on_err(client, exec(client, sql).await).await;
                    naming_lock_holders(dropped, || {
                        relation_lock_holders(client, &[], std::slice::from_ref(rel), 3)
                    })
                    .await
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// `err`, a removal that ran out of retries waiting for locks, with the
/// sessions holding them, when they can be read.
async fn name_lock_holders(
    client: &Client,
    shadows: &[String],
    sites: &[TriggerSite],
    err: anyhow::Error,
) -> anyhow::Error {
    let holders = lock_holders(client, shadows, sites).await;
    if holders.is_empty() {
        return err;
    }
    err.context(format!(
        "sessions hold locks on what it removes: {} (end them, or wait, and run it again)",
        holders.join(", ")
    ))
}

/// The sessions that hold locks on the shadows, pgshift's own schema or the
/// live tables with sync triggers (best effort: empty when they cannot be read).
async fn lock_holders(client: &Client, shadows: &[String], sites: &[TriggerSite]) -> Vec<String> {
    let tables: Vec<String> = sites
        .iter()
        .map(|t| qualified(&t.schema, &t.table))
        .collect();
    let mut schemas = shadows.to_vec();
    schemas.push(META_SCHEMA.to_string());
    relation_lock_holders(client, &schemas, &tables, 10).await
}

/// Refuse, before anything is dropped, when an object outside the migration
/// (an operator's view over a shadow table or a changelog, a foreign key to a
/// shadow table, a default calling a shadow sequence) depends on it: the
/// drops below are CASCADE (the shadow's own objects depend on one another)
/// and would take it along without a word.
async fn refuse_external_dependents(
    client: &Client,
    shadows: &[String],
    found: &Removed,
) -> Result<()> {
    let deps = dependents(client, shadows, found).await?;
    if !deps.is_empty() {
        return Err(Refused(format!(
            "removing the prepared migration: objects outside it depend on it and would be dropped with it: {}; drop them (or point them elsewhere) first: nothing was changed",
            deps.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// Refuse, before anything is dropped, when a live table carrying sync
/// triggers belongs to a role this one does not act as (its owner changed
/// since prepare): dropping its triggers would fail half-way, after the
/// tables before it lost theirs (h43b: "must be owner of relation …").
async fn refuse_unowned_tables(client: &Client, sites: &[TriggerSite]) -> Result<()> {
    let (schemas, tables): (Vec<&str>, Vec<&str>) = sites
        .iter()
        .map(|t| (t.schema.as_str(), t.table.as_str()))
        .unique()
        .unzip();
    if tables.is_empty() {
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN unnest($1::text[], $2::text[]) AS s(schema, name)
                 ON s.schema = n.nspname AND s.name = c.relname
              WHERE NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
              ORDER BY 1, 2",
            &[&schemas, &tables],
        )
        .await
        .context("reading the owners of the tables with sync triggers")?;
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let me: String = first.get(3);
    let listed: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} (owned by {})",
                crate::pg::meta::table_display(r.get(0), r.get(1)),
                display_ident(r.get(2))
            )
        })
        .collect();
    let owner: String = first.get(2);
    Err(Refused(format!(
        "removing the prepared migration: role {} may not drop pgshift's sync triggers on {}: their owner changed since prepare; GRANT {} TO {} (or give the table back to a role {} is a member of), then run pgshift abort again: nothing was changed",
        display_ident(&me),
        listed.join(", "),
        display_ident(&owner),
        display_ident(&me),
        display_ident(&me)
    ))
    .into())
}

/// The objects outside `found` and `shadows` that depend on them.
async fn dependents(client: &Client, shadows: &[String], found: &Removed) -> Result<Vec<String>> {
    let helpers = crate::pg::catalog::Helpers {
        schema: META_SCHEMA,
        tables: &found.helper_tables,
        functions: &found.function_names,
    };
    crate::pg::catalog::external_dependents(client, shadows, Some(&helpers)).await
}

/// [`refuse_external_dependents`] once the sync triggers are dropped: the
/// removal stops there, and says it is half-way.
async fn late_dependents(client: &Client, shadows: &[String], found: &Removed) -> Result<()> {
    let deps = dependents(client, shadows, found).await?;
    if !deps.is_empty() {
        bail!(
            "removing the prepared migration: objects outside it came to depend on it while its sync triggers were dropped: {}; drop them (or point them elsewhere), then run pgshift abort again to finish",
            deps.join(", ")
        );
    }
    Ok(())
}

/// A refusal before the first drop ([`refuse_external_dependents`],
/// [`refuse_unowned_tables`]): nothing was changed, so nothing is recorded
/// of it either.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Drop pgshift's shadow schema if it holds nothing (RESTRICT); whether it did.
async fn drop_empty_shadow(client: &Client) -> Result<bool> {
    if let ShadowState::Ours(_) = meta::shadow_state(client).await?
        && crate::pg::catalog::schema_is_empty(client, SHADOW_SCHEMA).await?
    {
        let sql = format!(
            "DROP SCHEMA IF EXISTS {} RESTRICT",
            quote_ident(SHADOW_SCHEMA)
        );
        exec(client, &sql)
            .await
            .context("dropping the empty shadow")?;
        return Ok(true);
    }
    Ok(false)
}

/// When the leftovers are too many for one transaction (thousands of shadow
/// tables), drop them in lock-bounded transactions until the rest fits the
/// single transaction [`remove_prepared`] ends with: the helper objects and
/// the shadow's contents, each down to a third of one transaction's share of
/// the lock table. Idempotent.
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
    // (The sync triggers are gone by now: [`drop_sync_triggers`].) The
    // changelogs and sync functions, by name, in lock-bounded transactions.
    let helpers: Vec<batch::Stmt> = found
        .helper_tables
        .iter()
        .map(|t| changelog_drop(t))
        .chain(found.function_names.iter().map(|f| sync_function_drop(f)))
        .collect();
    if !helpers.is_empty() {
        batch::run(client, &helpers, &opts).await?;
    }
    if found.shadow {
        batch::shrink_objects(client, SHADOW_SCHEMA, &[], third, &opts).await?;
    }
    for s in &found.other_shadows {
        batch::shrink_objects(client, s, &[], third, &opts).await?;
    }
    Ok(())
}

/// What `abort --json` prints (documented in README.md, "JSON output").
#[derive(Debug, Clone, Serialize)]
pub struct AbortReport {
    /// False when there was nothing to abort.
    pub aborted: bool,
    pub migration_id: Option<i64>,
    /// The record's status before the abort (`prepared`, `failed`, …).
    pub previous_status: Option<String>,
    pub removed: Removed,
    pub state_file_cleared: bool,
    pub dump_dir_removed: Option<String>,
    pub message: String,
    /// Extensions the aborted prepare created on the destination, left there
    /// (the application may have started using them).
    pub extensions_kept: Vec<String>,
}

/// What a failed or aborted prepare leaves of what it created: the
/// extensions, which the application may have started using since (a call
/// leaves no dependency to check), so they are not dropped.
pub fn extensions_left(names: &[String]) -> String {
    format!(
        "the extensions prepare created on the destination stay: {} (DROP EXTENSION them if nothing uses them)",
        names.join(", ")
    )
}

/// What the caller asks of an abort.
#[derive(Debug, Clone, Copy)]
pub struct AbortOptions {
    /// lock_timeout for dropping triggers on tables the application uses.
    pub lock_timeout: Duration,
    pub retries: u32,
    /// Keep the dump directory.
    pub keep_dump: bool,
}

/// `abort`: drop a prepared (not yet swapped) migration — the shadow, the sync
/// triggers and pgshift's helper objects — mark its record `aborted` and clear
/// the state file. With nothing to abort it says so. A swap that committed
/// without recording it is recorded as swapped, not aborted. The
/// destination's public and the backups are never touched.
pub async fn abort(sess: &Session, opts: &AbortOptions) -> Result<AbortReport> {
    let client = &sess.control;
    let d = sess.observe().await?;
    // The state file's record when it is this destination's (another
    // destination's file is neither aborted nor cleared).
    let file_state = d.file.clone();
    if let Some(backup) = derive::settle_committed_swap(client, &d).await? {
        tracing::warn!(
            "migration {} was swapped (its backup {backup} exists); recording it as swapped, not aborting it",
            d.row.as_ref().map(|r| r.id).unwrap_or_default()
        );
    }
    let latest_status = d.row.as_ref().map(|m| {
        if d.committed_unrecorded.is_some() {
            Status::Swapped
        } else {
            m.state.status
        }
    });
    let open = d
        .row
        .as_ref()
        .filter(|m| !m.state.status.is_finished() && d.committed_unrecorded.is_none())
        .cloned();
    let leftovers = !d.objects.is_empty();
    // A state file the destination has gone past: nothing of it to abort.
    let file_stale = d.file_stale();
    let file_open = !file_stale && file_state.as_ref().is_some_and(|s| !s.status.is_finished());

    if open.is_none() && !leftovers && !file_open {
        let mut message =
            "nothing to abort: no migration is prepared on the destination".to_string();
        let mut state_file_cleared = false;
        if let (true, Some(f), Some(status)) = (file_stale, &file_state, latest_status) {
            sess.state_file.clear()?;
            state_file_cleared = true;
            message.push_str(&format!(
                " (the state file's migration {} is out of date: the destination's latest migration is {status}; the file was cleared)",
                f.id
            ));
        }
        return Ok(AbortReport {
            aborted: false,
            migration_id: None,
            previous_status: latest_status.map(|s| s.to_string()),
            removed: Removed::default(),
            state_file_cleared,
            dump_dir_removed: None,
            message,
            extensions_kept: Vec::new(),
        });
    }

    // Before its first drop, abort records the migration as failed: killed
    // after it (SIGKILL, a lost connection), it leaves a migration that is
    // no longer whole (a preserved table without its triggers), which no
    // swap may take, and which `status` then names as an abort to finish.
    let began = std::sync::atomic::AtomicBool::new(false);
    let mark = open.as_ref().map(|m| {
        let mut st = m.state.clone().continued_by(sess.run.command);
        st.status = Status::Failed;
        st.phase = None;
        st.error = Some(format!(
            "an abort began dropping migration {} (it was {}); if it no longer runs, it stopped before it finished and part of the migration's objects may be dropped already: run `pgshift abort` again",
            m.id, m.state.status
        ));
        st.updated_at = Utc::now();
        st
    });
    let before_drops: Option<BeforeDrops<'_>> = mark.as_ref().map(|st| {
        let began = &began;
        Box::pin(async move {
            record::save_migration(client, st)
                .await
                .context("recording that the abort began")?;
            began.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }) as BeforeDrops<'_>
    });
    let removed = if open.is_some() || leftovers {
        match remove_prepared(
            client,
            opts.lock_timeout,
            opts.retries,
            Some(&sess.run.cancel),
            before_drops,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                // What committed stays dropped (the triggers, batches of the
                // shadow): status says so, and that abort finishes it. A
                // refusal before the first drop dropped nothing: the record
                // stays as it was.
                let began = began.load(std::sync::atomic::Ordering::SeqCst);
                let refused = e.downcast_ref::<Refused>().is_some() && !began;
                if let Some(m) = open.as_ref().filter(|_| !refused) {
                    let mut st = if began {
                        mark.clone().unwrap_or_else(|| m.state.clone())
                    } else {
                        m.state.clone()
                    };
                    st.error = Some(format!(
                        "abort stopped before it finished, part of the migration's objects may be dropped already; run pgshift abort again: {e:#}"
                    ));
                    st.updated_at = Utc::now();
                    if let Err(se) = record::save_migration(client, &st).await {
                        tracing::warn!("could not record the failed abort: {se:#}");
                    }
                }
                return Err(e);
            }
        }
    } else {
        Removed::default()
    };
    let mut state = open
        .as_ref()
        .map(|m| m.state.clone())
        .or_else(|| file_state.clone().filter(|s| !s.status.is_finished()));
    if let (Some(m), Some(st)) = (&open, state.as_mut()) {
        *st = st.clone().continued_by(sess.run.command);
        st.status = Status::Aborted;
        st.phase = None;
        st.updated_at = Utc::now();
        record::save_migration(client, st).await?;
        tracing::info!(id = m.id, "migration record marked aborted");
    }
    let mut dump_dir_removed = None;
    if let Some(st) = state.as_ref()
        && let Some(dir) = st.dump_dir.clone()
        && !opts.keep_dump
        && super::phases::is_recorded_dump(&dir, st.dump_complete)
    {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => dump_dir_removed = Some(dir.display().to_string()),
            Err(e) => tracing::warn!("could not remove the dump directory {}: {e}", dir.display()),
        }
    }
    let state_file_cleared = d.foreign_file.is_none();
    sess.state_file.clear()?;
    let id = open
        .as_ref()
        .map(|m| m.id)
        .or_else(|| state.as_ref().map(|s| s.id));
    let message = match (&open, id) {
        (Some(m), _) => {
            // A record still `preparing` is a prepare that stopped (abort
            // holds the run lock, so none runs): `status` calls it failed.
            let was = match m.state.status {
                Status::Preparing => "its prepare had stopped".to_string(),
                Status::Failed if m.state.command == sess.run.command => {
                    "an earlier abort of it had stopped".to_string()
                }
                Status::Failed => "its prepare had failed".to_string(),
                other => format!("it was {other}"),
            };
            let mut said = format!("aborted migration {} ({was})", m.id);
            // Run from an older state directory: the migration aborted is
            // the destination's, perhaps another operator's, not the file's.
            if let Some(f) = file_state.as_ref().filter(|f| file_stale && f.id != m.id) {
                said.push_str(&format!(
                    "; the state file here recorded migration {}, which the destination has gone past",
                    f.id
                ));
            }
            said
        }
        (None, Some(id)) => format!("cleared the leftovers of migration {id}"),
        (None, None) => "removed leftovers of an earlier migration".into(),
    };
    Ok(AbortReport {
        aborted: true,
        migration_id: id,
        // A stale file's status is not the migration's: the destination's
        // latest record says what it was (a swap killed after its COMMIT
        // left its file saying swapping, and its changelogs behind).
        previous_status: match &open {
            Some(m) => Some(m.state.status.to_string()),
            None if file_stale => latest_status.map(|s| s.to_string()),
            None => state.as_ref().map(|s| s.status.to_string()),
        },
        removed,
        state_file_cleared,
        dump_dir_removed,
        message,
        extensions_kept: state
            .as_ref()
            .map(|s| s.details.extensions_created.clone())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_reads_as_a_sentence() {
        let mut r = Removed::default();
        assert_eq!(r.summary(), "nothing");
        r.shadow = true;
        assert_eq!(r.summary(), "the shadow schema");
        r.other_shadows = vec!["pgshift_shadow_Billing".into()];
        r.triggers = vec!["a".into(), "b".into()];
        r.helper_functions = 1;
        assert_eq!(
            r.summary(),
            "the shadow schema, shadow \"pgshift_shadow_Billing\", 2 triggers and 1 helper function"
        );
    }
}
