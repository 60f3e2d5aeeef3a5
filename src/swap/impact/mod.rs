//! The impact report: what a swap will break or discard for the application that
//! keeps running on the destination, found *before* the swap.
//!
//! A swap replaces the objects of each *live* schema (what the application sees
//! now, `public`) with those of an *incoming* schema (`shadow` for a swap,
//! `backup_<ts>` for a rollback). Every function here takes the pairs as
//! `&[SchemaPair]`, so several schemas can be swapped at once. Tables are shown
//! as `accounts` in `public` and `billing.invoices` elsewhere; hazard objects are
//! always qualified (`public.accounts.email`).
//!
//! The report has four parts, each usable on its own; [`gate`] wires them into
//! prepare, swap, rollback and status (where each check runs, and what refuses).
//! The API:
//!
//! ```text
//! // 1. discarded writes (writes.rs)
//! take_baseline(&impl GenericClient, schemas: &[String]) -> Result<WriteBaseline>   // at prepare start; serde
//! compare(&WriteBaseline, now: &WriteBaseline, exempt: &[TableName]) -> WriteCheck  // {discarded, unknown}
//! compare_without_baseline(now, exempt) -> WriteCheck                               // prepared without one
//! check_sql(&WriteBaseline, exempt) -> String    // one query, no parameters, JSON text: run it under the locks
//! listed_check_sql(&base, &listed, exempt) -> String  // the same over the tables of a recent snapshot, by OID (cheaper)
//! parse_check(&str) -> Result<WriteCheck>        // its output, equal to compare()'s
//! gate(&WriteCheck, &AllowDiscard) -> Result<(), String>   // the refusal line (without "error: ")
//! gate_for(Operation::Swap | Rollback, &WriteCheck, &AllowDiscard)  // worded for a swap or a rollback
//! AllowDiscard::parse("all" | "a,billing.b") -> Result<AllowDiscard, NameError>
//! writes_since_reset(&impl GenericClient, schemas) -> Result<WritesSinceReset>   // prepare --dry-run hint
//! // 2. schema hazards (hazards.rs)
//! hazards(&Client, &[SchemaPair]) -> Result<Vec<Hazard>>     // {code, effect, object, detail}
//! // 3. recorded workload (workload.rs, resolve.rs)
//! check_workload(&Client, &[SchemaPair], &WorkloadOptions{roles, timeout, lock_timeout}, dropped sequences)
//!     -> Result<StatementsReport>   // Err: connection, or a UserError for an unknown role
//! // 4. blockers (blockers.rs)
//! blockers(&impl GenericClient, &[SchemaPair], lock_timeout: Duration) -> Result<Vec<Blocker>>
//! // the whole report (this file, report.rs)
//! Impact::collect(&Client, &ImpactRequest{pairs, baseline, exempt, workload, lock_timeout}) -> Result<Impact>
//! impact.set_writes(WriteCheck); impact.breaking() -> Vec<String>; impact.summary() -> String;
//! impact.rejecting(), impact.row_access() -> Vec<String>   // the warnings besides breaking()
//! impact.render() -> String; serde_json::to_value(&impact)   // the issue's JSON shape (+ notes)
//! ```
//!
//! Every function that reads several catalogs at once (`hazards`,
//! `check_workload`, `Impact::collect`) opens and rolls back its own read-only
//! transactions, so its client must not be inside a transaction; `take_baseline`,
//! `check_sql` and `blockers` work inside one (the swap's).
//!
//! # Discarded writes (see [`writes`] for the details)
//!
//! Rows the application writes into a table that is not preserved, between the
//! start of prepare and the swap, stay in the table, which the swap moves into
//! the backup: the new public does not have them. pgshift counts those writes
//! with PostgreSQL's cumulative statistics (`pg_stat_get_tuples_inserted`,
//! `…_updated`, `…_deleted`, i.e. `n_tup_ins`, `n_tup_upd`, `n_tup_del`; HOT
//! updates are a subset of `n_tup_upd` and need no column of their own): a
//! [`WriteBaseline`] of every table of the live schemas is taken when prepare
//! starts, keyed by OID (a table moved with `SET SCHEMA` keeps it), with its
//! `relfilenode`, the database's `stats_reset` and `track_counts`.
//!
//! What the counters can and cannot tell, and what follows for the gate:
//!
//! * **They lag.** A backend counts its writes locally and publishes them after
//!   its transaction ends, when it is about to go idle: on PostgreSQL 15+ at most
//!   once per second (`PGSTAT_MIN_INTERVAL`, 1000 ms in `pgstat.c`); a backend
//!   that went idle with counts still pending publishes them from an idle timer
//!   10 s later (`PGSTAT_IDLE_INTERVAL`); a non-forced flush skips entries whose
//!   lock it cannot get at once, and only after 60 s (`PGSTAT_MAX_INTERVAL`) does
//!   it wait for them. On 13 and 14 the backend sends its counts to the stats
//!   collector over UDP at most every 500 ms (`PGSTAT_STAT_INTERVAL`), with no idle
//!   timer (a backend that goes idle right after a write keeps the counts until
//!   its next transaction or its disconnect), the collector publishes them in a
//!   file that may be up to 500 ms old when read, and UDP messages can be dropped
//!   under load. Backends publish everything when they disconnect.
//! * So a check taken under the swap's ACCESS EXCLUSIVE locks (no write can
//!   happen any more) sees every write published before it, which is every
//!   write committed more than a second or so earlier by a busy backend, but
//!   can miss the last ones (on 15+: up to 10 s for a backend that went idle
//!   right after writing, up to a minute under heavy contention on the
//!   statistics; on 13/14: until that backend runs another transaction or
//!   disconnects, or never if the collector dropped the message). The check is
//!   a strong safety net, not a proof. **When exactness matters, list the table
//!   in `--preserved-tables`**: preserved tables are synchronised by triggers
//!   (see `prepare::sync`), which miss nothing. Run the check once before
//!   taking the locks (a refusal then holds nothing) and again under them
//!   ([`check_sql`]: about 15–30 ms at 1,000 tables on an idle 2-core machine).
//! * They count rows of aborted transactions too: a rolled-back insert still
//!   counts (conservative: it may refuse a swap that would have lost nothing).
//! * `TRUNCATE` is not counted by `n_tup_*`; it (like `VACUUM FULL`, `CLUSTER`
//!   and table rewrites) gives the table a new `relfilenode`, so such a table is
//!   reported as *unknown* (rewritten), never as clean.
//! * Counters that went backwards, a changed `stats_reset` (`pg_stat_reset()`,
//!   `pg_stat_reset_single_table_counters()`; a crash discards all statistics;
//!   on 13 and 14 the baseline waits for the collector to know the database,
//!   see [`writes`]), `track_counts = off`, or a migration prepared without a
//!   baseline ([`compare_without_baseline`]) make the tables *unknown*. Unknown
//!   tables refuse the swap like discarded writes unless `--allow-discard`
//!   covers them. A check that cannot run at all is an error for the caller
//!   (refuse: nothing can be known).
//!
//! # Schema hazards (see [`hazards`](mod@hazards))
//!
//! Objects are compared by name, never OID; types as `format_type` text with
//! the incoming schema's name mapped back to the live one, so `shadow.email`
//! equals `public.email`. Stable codes with an effect (`breaks`,
//! `row_access`, `result_type`, `rejects_writes`, `info`); row-level security
//! and policies in [`rls`]. A rename cannot be told from a drop
//! and an add; the report says so once ([`Impact::notes`]).
//!
//! # Recorded workload (see [`workload`])
//!
//! With `pg_stat_statements`, each statement the application ran is checked as
//! it will run after the swap: names are resolved against the *future*
//! namespace (each live schema replaced by its incoming schema, extension
//! members staying where they are), then the statement is parsed and described
//! by the server (Parse/Describe, read-only, under a short `lock_timeout`), once
//! as it runs today and once as it will run; the result columns are compared by
//! name and type name, and a user-defined type the swap replaces by the incoming
//! schema's copy (same name, new OID) counts as a change too, because
//! PostgreSQL compares a prepared statement's result row by type OID: that is
//! what makes prepared statements fail with `cached plan must not change result
//! type` even when nothing changed by name (verified in `tests/impact.rs`). For
//! the same reason a statement whose parameter was inferred as such a type
//! fails after the swap (`operator does not exist: mood = backup_….mood`) until
//! it is prepared again; the check parses it with its old parameter types to
//! find out. Parse/Describe works the same on 13 to 18; `EXPLAIN (GENERIC_PLAN)`
//! (16+) gives plans, not result types, and is not needed. The application's own
//! `SET search_path` cannot be known (the role's and database's settings are
//! used).
//!
//! # Blockers (see [`blockers`](mod@blockers))
//!
//! Sessions whose transaction is older than the swap's `lock_timeout` and holds
//! locks on a swapped relation, and sessions idle in transaction.

pub mod blockers;
pub mod gate;
pub mod hazards;
pub mod report;
pub mod resolve;
pub mod rls;
pub mod workload;
pub mod writes;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pg::ident::TableName;

pub use blockers::{Blocker, blockers, hidden_sessions};
pub use hazards::{Effect, Hazard, hazards};
pub use workload::{
    FailingStatement, StatementsReport, TypeChangedStatement, UncheckedStatement, WorkloadOptions,
    check_workload,
};
pub use writes::{
    AllowDiscard, DiscardedWrite, Operation, TableCounters, TableWrites, Unkeepable, UnknownWrite,
    WriteBaseline, WriteCheck, WritesSinceReset, check_sql, compare, compare_covered, gate,
    gate_for, listed_check_sql, parse_check, take_baseline, writes_since_reset,
};

/// A schema the application sees now and the schema that replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaPair {
    /// `public`.
    pub live: String,
    /// `shadow`, or `backup_<ts>` for a rollback.
    pub incoming: String,
    /// Tables of the live schema that stay where they are (`--keep-tables`,
    /// partitions and children included): neither dropped nor changed, and
    /// statements still find them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stays: Vec<String>,
}

impl SchemaPair {
    pub fn new(live: impl Into<String>, incoming: impl Into<String>) -> SchemaPair {
        SchemaPair {
            live: live.into(),
            incoming: incoming.into(),
            stays: Vec::new(),
        }
    }
}

/// The live schemas of `pairs`.
pub fn live_schemas(pairs: &[SchemaPair]) -> Vec<String> {
    pairs.iter().map(|p| p.live.clone()).collect()
}

/// A table as people read it: `accounts` in `public`, `billing.invoices`
/// elsewhere, quoted only where needed.
pub fn display_table(schema: &str, name: &str) -> String {
    TableName {
        schema: (schema != "public").then(|| schema.to_string()),
        name: name.to_string(),
    }
    .to_string()
}

pub use crate::pg::ident::qualified_display;

/// The whole report, in the JSON shape of `swap --dry-run --json` (`swap.impact`)
/// and `status --json` (`impact`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Impact {
    pub discarded_writes: Vec<DiscardedWrite>,
    pub unknown_writes: Vec<UnknownWrite>,
    pub hazards: Vec<Hazard>,
    pub statements: StatementsReport,
    pub blockers: Vec<Blocker>,
    /// Things to know when reading the report (renames look like drop + add, …).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// What [`Impact::collect`] needs.
#[derive(Debug, Clone)]
pub struct ImpactRequest<'a> {
    pub pairs: &'a [SchemaPair],
    /// Taken when prepare started; `None` skips the discarded-writes part.
    pub baseline: Option<&'a WriteBaseline>,
    /// Tables whose writes are never discarded (preserved, kept).
    pub exempt: &'a [TableName],
    pub workload: WorkloadOptions,
    /// The swap's `lock_timeout` (blockers are transactions older than this).
    pub lock_timeout: Duration,
}

impl ImpactRequest<'_> {
    /// The live schemas the swap replaces.
    pub fn lives(&self) -> Vec<String> {
        self.pairs.iter().map(|p| p.live.clone()).collect()
    }
}

/// Note added whenever something was dropped.
pub const RENAME_NOTE: &str = "a renamed table, column or function cannot be told from a drop and an add: it is reported as dropped (and added)";

impl Impact {
    /// Run every part (read-only; the workload check is bounded by
    /// `req.workload.timeout`). The client must not be inside a transaction.
    pub async fn collect(
        client: &tokio_postgres::Client,
        req: &ImpactRequest<'_>,
    ) -> anyhow::Result<Impact> {
        let mut impact = Impact::default();
        if let Some(base) = req.baseline {
            let now = take_baseline(client, &live_schemas(req.pairs)).await?;
            let check = compare(base, &now, req.exempt);
            impact.discarded_writes = check.discarded;
            impact.unknown_writes = check.unknown;
        }
        impact.hazards = hazards(client, req.pairs).await?;
        let dropped_sequences: Vec<String> = impact
            .hazards
            .iter()
            .filter(|h| h.code == "SEQUENCE_DROPPED")
            .map(|h| h.object.clone())
            .collect();
        impact.statements =
            check_workload(client, req.pairs, &req.workload, &dropped_sequences).await?;
        impact.blockers = blockers(client, req.pairs, req.lock_timeout).await?;
        impact
            .notes
            .extend(blockers::hidden_sessions(client, req.pairs).await?);
        impact.add_notes();
        Ok(impact)
    }

    /// Fill [`Impact::notes`] from the findings.
    pub fn add_notes(&mut self) {
        let dropped = self.hazards.iter().any(|h| h.code.ends_with("_DROPPED"));
        if dropped && !self.notes.iter().any(|n| n == RENAME_NOTE) {
            self.notes.push(RENAME_NOTE.to_string());
        }
    }

    /// Replace the writes part with a fresh check (e.g. one taken under the
    /// swap's locks).
    pub fn set_writes(&mut self, check: WriteCheck) {
        self.discarded_writes = check.discarded;
        self.unknown_writes = check.unknown;
    }

    /// What makes `--fail-on-breaking` refuse, one line each: statements that
    /// will fail or change result type, and `breaks` hazards on objects a
    /// recorded statement uses (matched by table or function: a dropped column
    /// of a table a statement reads counts). Empty: nothing breaking found.
    pub fn breaking(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.statements.failing {
            out.push(format!(
                "statement will fail ({}): {}: {}",
                report::plural(f.calls.max(0) as usize, "call"),
                report::short_query(&f.query, 80),
                f.error
            ));
        }
        for c in &self.statements.result_type_changed {
            out.push(format!(
                "statement will change result type ({}): {}: {}",
                report::plural(c.calls.max(0) as usize, "call"),
                report::short_query(&c.query, 80),
                c.columns.join(", ")
            ));
        }
        // Statements of other roles this role cannot see may use any object.
        let hidden = self
            .statements
            .unchecked
            .iter()
            .any(|u| u.query == workload::HIDDEN_QUERY);
        for h in self.hazards.iter().filter(|h| h.effect == Effect::Breaks) {
            if self.statements.uses(&h.object) {
                out.push(format!(
                    "{} {} ({}), used by recorded statements",
                    h.code, h.object, h.detail
                ));
            } else if hidden {
                out.push(format!(
                    "{} {} ({}), which statements of other roles this role cannot see may use (grant it pg_read_all_stats)",
                    h.code, h.object, h.detail
                ));
            }
        }
        out
    }

    /// The `rejects_writes` changes to objects recorded statements use (a new
    /// CHECK of a table the application writes): warnings, never a refusal,
    /// since whether a write is refused depends on its values (and the
    /// statement may only read). A new column's NOT NULL is left out: only
    /// an INSERT can meet it, and each recorded INSERT that does not set it
    /// is a failing statement already.
    pub fn rejecting(&self) -> Vec<String> {
        let added = |object: &str| {
            self.hazards
                .iter()
                .any(|a| a.code == "COLUMN_ADDED" && a.object == object)
        };
        self.hazards
            .iter()
            .filter(|h| {
                h.effect == Effect::RejectsWrites
                    && self.statements.uses(&h.object)
                    && !(h.code == "NOT_NULL_ADDED" && added(&h.object))
            })
            .map(|h| {
                format!(
                    "{} {} ({}): recorded statements use it, and their writes may be refused",
                    h.code, h.object, h.detail
                )
            })
            .collect()
    }

    /// The `row_access` changes (row-level security, policies), every one:
    /// warnings, whatever the recorded statements use, since they change
    /// which rows every role sees without failing a statement.
    pub fn row_access(&self) -> Vec<String> {
        self.hazards
            .iter()
            .filter(|h| h.effect == Effect::RowAccess)
            .map(|h| format!("{} {} ({})", h.code, h.object, h.detail))
            .collect()
    }

    /// `status`'s line: `impact: 2 statements will fail, 1 will change result
    /// type, writes to 1 non-preserved table`.
    pub fn summary(&self) -> String {
        report::summary(self)
    }

    /// The one-line summary, in the words of `op`.
    pub fn summary_for(&self, op: Operation) -> String {
        report::summary_of(self, op)
    }

    /// The report for people (`swap --dry-run`).
    /// The whole report as text, for a swap.
    pub fn render(&self) -> String {
        report::render(self, Operation::Swap)
    }

    /// The whole report as text, in the words of `op`.
    pub fn render_for(&self, op: Operation) -> String {
        report::render(self, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays() {
        assert_eq!(display_table("public", "accounts"), "accounts");
        assert_eq!(display_table("billing", "invoices"), "billing.invoices");
        assert_eq!(display_table("public", "Order"), "\"Order\"");
        assert_eq!(qualified_display("public", "accounts"), "public.accounts");
    }

    /// A new column's NOT NULL is no warning of its own: the recorded INSERTs
    /// that leave it out are failing statements. A new CHECK of a table the
    /// application uses is.
    #[test]
    fn what_may_reject_the_applications_writes() {
        let mut i = Impact::default();
        let h = |code: &str, effect, object: &str| Hazard {
            code: code.into(),
            effect,
            object: object.into(),
            detail: "d".into(),
        };
        i.hazards = vec![
            h("COLUMN_ADDED", Effect::Info, "public.dag.runs"),
            h("NOT_NULL_ADDED", Effect::RejectsWrites, "public.dag.runs"),
            h("NOT_NULL_ADDED", Effect::RejectsWrites, "public.dag.name"),
            h("CHECK_ADDED", Effect::RejectsWrites, "public.dag.dag_check"),
            h(
                "CHECK_ADDED",
                Effect::RejectsWrites,
                "public.quiet.quiet_check",
            ),
        ];
        i.statements.used_objects = vec!["public.dag".into()];
        assert_eq!(
            i.rejecting(),
            vec![
                "NOT_NULL_ADDED public.dag.name (d): recorded statements use it, and their writes may be refused",
                "CHECK_ADDED public.dag.dag_check (d): recorded statements use it, and their writes may be refused",
            ]
        );
    }

    /// A breaking change no visible statement uses is breaking all the same
    /// when statements of other roles are hidden from this role: a CI gate
    /// (`--fail-on-breaking`) must not pass what it cannot see.
    #[test]
    fn a_breaking_change_counts_when_statements_are_hidden() {
        let mut i = Impact::default();
        i.hazards.push(Hazard {
            code: "COLUMN_DROPPED".into(),
            effect: Effect::Breaks,
            object: "public.orders.total".into(),
            detail: "numeric".into(),
        });
        assert!(i.breaking().is_empty());
        i.statements.unchecked.push(UncheckedStatement {
            query: workload::HIDDEN_QUERY.into(),
            reason: "2 statements of other roles are hidden from this role".into(),
            calls: 0,
        });
        assert_eq!(
            i.breaking(),
            vec![
                "COLUMN_DROPPED public.orders.total (numeric), which statements of other roles this role cannot see may use (grant it pg_read_all_stats)"
            ]
        );
    }
}
