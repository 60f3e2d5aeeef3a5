//! Statements the application stopped running: which recorded statements
//! no session can hold prepared on today's objects.
//!
//! pg_stat_statements keeps its entries across a swap. An entry is keyed by
//! (role, database, queryid), and the queryid hashes the statement's parse
//! tree with the OIDs of the relations, functions and types it names. After
//! a swap (or rollback) the same text names other objects, so a session
//! that runs it again, or re-plans a statement it prepared before, adds to a
//! new entry; the old one stops counting. A rollback's check used to judge
//! those entries of the application that ran before the swap as if a
//! session held them prepared on today's objects: `code = $1` recorded
//! while `code` was text, now integer, was reported failing "when prepared
//! before the rollback", though no session had run it since the swap and
//! the rollback is what makes it right again (h48a). So:
//!
//! * After every swap and rollback COMMIT the engine records the calls of
//!   each entry of this database ([`StatementsSeen`], `live_statements` in
//!   the new backup's manifest; top-level entries where the view says so),
//!   read through `pg_stat_statements(false)`, which skips the texts. Taken
//!   after the COMMIT: the old entries stop counting at the COMMIT, and
//!   reading them before it would miss the calls made while the swap waited
//!   for its locks.
//! * A check takes, for each live schema it replaces, the record of the
//!   newest backup whose swap or rollback replaced that schema: the moment
//!   its current objects went live ([`WentLive::from_backups`], as the
//!   rollback's write check picks its counters).
//! * A recorded statement is *stale* when every schema it names has such a
//!   record, each of its entries is in it with the same calls, and it names
//!   in that schema something other than tables that stayed live through
//!   that operation (`--keep-tables`: a session may hold a statement of
//!   those alone prepared on them, unchanged). A statement with an entry
//!   the record lacks, or with more calls, ran since: it is checked as
//!   before. No record (an earlier version made the schema live,
//!   pg_stat_statements was not readable then, or its statistics were reset
//!   since): every statement is checked as before.
//! * A stale statement is checked as a fresh one: no step for a statement
//!   prepared before the operation, no comparison of result types. A
//!   rollback checks it on the incoming objects only (it is the
//!   application that ran before, coming back: failing on today's objects
//!   says nothing); a swap checks it on today's objects first, as any
//!   statement (one that fails today is left unchecked). A failing stale
//!   statement says since when it was not called (`not_called_since`).
//!
//! Limit: a session that prepared a statement before the swap and has not
//! run it since holds it invalidated, with the result type of the objects it
//! was prepared on; a rollback to the backup of that swap gives it back
//! those objects, which is why it is not counted, but a rollback to an
//! older backup is not compared with them.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::backups::manifest::BackupRow;
use crate::pg::ident::quote_ident;

/// The calls of pg_stat_statements' entries of this database when a swap or
/// rollback made its schemas live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementsSeen {
    pub taken_at: DateTime<Utc>,
    /// `[userid, queryid, calls]` of each entry called at least once.
    pub calls: Vec<(u32, i64, i64)>,
}

/// The entries of this database as pg_stat_statements counts them now;
/// `None` when the extension is not installed here.
pub async fn statements_seen(client: &Client) -> Result<Option<StatementsSeen>> {
    let Some(schema) = super::workload::extension_schema(client).await? else {
        return Ok(None);
    };
    let view = format!("{}.pg_stat_statements", quote_ident(&schema));
    let toplevel = super::workload::has_toplevel(client, &view)
        .await
        .context("reading pg_stat_statements' columns")?;
    let taken_at = Utc::now();
    let rows = client
        .query(
            &format!(
                "SELECT s.userid, s.queryid, s.calls
                   FROM {}.pg_stat_statements(false) s
                  WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
                    AND s.calls > 0 AND s.queryid IS NOT NULL {}",
                quote_ident(&schema),
                if toplevel { "AND s.toplevel" } else { "" }
            ),
            &[],
        )
        .await
        .context("reading pg_stat_statements")?;
    Ok(Some(StatementsSeen {
        taken_at,
        calls: rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    }))
}

/// [`WentLive::from_backups`] for the live schemas `lives` of a check, with
/// the recorded backups and pg_stat_statements' last reset read here. When
/// they cannot be read, nothing is stale: every statement is checked as
/// before.
pub async fn went_live(client: &Client, lives: &[String]) -> WentLive {
    let all = match crate::backups::manifest::list_backups(client).await {
        Ok(all) => all,
        Err(e) => {
            tracing::debug!("not telling stale statements: {e:#}");
            return WentLive::default();
        }
    };
    WentLive::from_backups(&all, lives, statements_reset(client).await)
}

/// When pg_stat_statements' statistics were last reset as a whole
/// (`pg_stat_statements_info`, PostgreSQL 14+).
async fn statements_reset(client: &Client) -> Option<DateTime<Utc>> {
    let schema = super::workload::extension_schema(client).await.ok()??;
    super::workload::info(client, &schema, "stats_reset")
        .await?
        .get(0)
}

/// For each live schema a check replaces, what pg_stat_statements counted
/// when its current objects went live.
#[derive(Debug, Clone, Default)]
pub struct WentLive {
    by_schema: HashMap<String, SchemaWentLive>,
}

#[derive(Debug, Clone)]
struct SchemaWentLive {
    at: DateTime<Utc>,
    calls: HashMap<(u32, i64), i64>,
    /// Tables that stayed live through that operation, as
    /// [`crate::pg::meta::table_display`] writes them.
    kept: HashSet<String>,
}

impl WentLive {
    /// From `all` (every backup, newest first): for each of `lives`, the
    /// record of the newest backup whose swap or rollback replaced it; none
    /// when that one has no record, or pg_stat_statements' statistics were
    /// reset (`reset`, PostgreSQL 14+) after it was taken.
    pub fn from_backups(
        all: &[BackupRow],
        lives: &[String],
        reset: Option<DateTime<Utc>>,
    ) -> WentLive {
        let mut by_schema = HashMap::new();
        for (live, b) in crate::backups::manifest::made_live(all, lives) {
            let Some(seen) = &b.manifest.live_statements else {
                continue;
            };
            if reset.is_some_and(|r| r > seen.taken_at) {
                continue;
            }
            by_schema.insert(
                live.clone(),
                SchemaWentLive {
                    at: seen.taken_at,
                    calls: seen.calls.iter().map(|&(u, q, c)| ((u, q), c)).collect(),
                    kept: b.manifest.kept_tables.iter().cloned().collect(),
                },
            );
        }
        WentLive { by_schema }
    }

    /// When the statement whose entries are `entries` (`(userid, queryid,
    /// calls)`), naming `names` of the live `schemas`, was last called
    /// before its schemas went live, and not since: the latest of those
    /// moments. `None`: it ran since, or that cannot be told.
    pub fn stale_since(
        &self,
        entries: &[(u32, i64, i64)],
        schemas: &BTreeSet<String>,
        names: &BTreeSet<(String, String)>,
    ) -> Option<DateTime<Utc>> {
        if entries.is_empty() || !entries.iter().all(|e| self.unchanged(e, schemas)) {
            return None;
        }
        let mut since: Option<DateTime<Utc>> = None;
        for s in schemas {
            let went = self.by_schema.get(s)?;
            let mut own = names.iter().filter(|(n, _)| n == s).peekable();
            if own.peek().is_some()
                && own.all(|(_, t)| went.kept.contains(&crate::pg::meta::table_display(s, t)))
            {
                return None;
            }
            since = since.max(Some(went.at));
        }
        since
    }

    /// Whether entry `e` (`(userid, queryid, calls)`) has the calls it had
    /// when each of `schemas` went live.
    fn unchanged(&self, e: &(u32, i64, i64), schemas: &BTreeSet<String>) -> bool {
        let &(u, q, c) = e;
        !schemas.is_empty()
            && schemas.iter().all(|s| {
                self.by_schema
                    .get(s)
                    .is_some_and(|w| w.calls.get(&(u, q)) == Some(&c))
            })
    }

    /// The calls of a statement that ran both before its schemas went live
    /// and since (the same text on the old objects is another entry, which
    /// stopped counting): those of its entries that ran since. `None` when
    /// all or none did.
    pub fn calls_since(
        &self,
        entries: &[(u32, i64, i64)],
        schemas: &BTreeSet<String>,
    ) -> Option<i64> {
        let (old, new): (Vec<&(u32, i64, i64)>, Vec<_>) =
            entries.iter().partition(|e| self.unchanged(e, schemas));
        (!old.is_empty() && !new.is_empty()).then(|| new.iter().map(|e| e.2).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn went(calls: &[(u32, i64, i64)], kept: &[&str]) -> WentLive {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        WentLive {
            by_schema: HashMap::from([(
                "public".to_string(),
                SchemaWentLive {
                    at,
                    calls: calls.iter().map(|&(u, q, c)| ((u, q), c)).collect(),
                    kept: kept.iter().map(|k| k.to_string()).collect(),
                },
            )]),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn names(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        items
            .iter()
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn a_statement_is_stale_only_when_every_entry_kept_its_calls_since_its_schemas_went_live() {
        let w = went(&[(10, 1, 5), (10, 2, 7)], &["kept"]);
        let public = set(&["public"]);
        let users = names(&[("public", "users")]);
        // Not called since.
        assert!(w.stale_since(&[(10, 1, 5)], &public, &users).is_some());
        // Called since; a new entry (the same text on the new objects).
        assert!(w.stale_since(&[(10, 1, 6)], &public, &users).is_none());
        assert!(
            w.stale_since(&[(10, 1, 5), (10, 3, 1)], &public, &users)
                .is_none()
        );
        // Another role's entry of that queryid is another entry.
        assert!(w.stale_since(&[(11, 1, 5)], &public, &users).is_none());
        // A schema without a record, or no schema at all: cannot be told.
        assert!(
            w.stale_since(&[(10, 1, 5)], &set(&["public", "billing"]), &users)
                .is_none()
        );
        assert!(w.stale_since(&[(10, 1, 5)], &set(&[]), &users).is_none());
        // Only tables that stayed live through it: a session may hold it
        // prepared on them.
        let kept = names(&[("public", "kept")]);
        assert!(w.stale_since(&[(10, 2, 7)], &public, &kept).is_none());
        let both = names(&[("public", "kept"), ("public", "users")]);
        assert!(w.stale_since(&[(10, 2, 7)], &public, &both).is_some());
        // The calls of one that ran before and since: those since.
        assert_eq!(w.calls_since(&[(10, 1, 5), (10, 3, 2)], &public), Some(2));
        assert_eq!(w.calls_since(&[(10, 1, 5)], &public), None);
        assert_eq!(w.calls_since(&[(10, 3, 2)], &public), None);
    }
}
