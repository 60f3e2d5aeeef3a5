//! Preserved tables: validation, the initial copy and real-time sync.
//!
//! A preserved table `T` takes its structure from the source and its rows from
//! the destination. Between prepare and swap the destination's applications keep
//! writing `public.T`; every such write must be in `shadow.T` when the swap
//! commits. The design is the changelog one of pg_repack / pg-osc:
//!
//! * **Changelog** `pgshift.log_<oid>` (`oid` of `public.T`): `id bigserial`, an
//!   `op` marker (`I`, `U`, `D`, `T` for TRUNCATE) and the key columns `k1..kn`
//!   (types of `public.T`'s key).
//! * **Triggers** on `public.T`: statement-level `AFTER` triggers with transition
//!   tables, one per event (PostgreSQL forbids transition tables on multi-event
//!   triggers): `pgshift_sync_ins`, `pgshift_sync_upd`, `pgshift_sync_del`,
//!   `pgshift_sync_trunc`, `ENABLE ALWAYS` (they fire under
//!   `session_replication_role = replica` too). A trigger is pgshift's when its
//!   name starts `pgshift_` *and* its function is in the `pgshift` schema
//!   ([`own_trigger_sql`]); the name prefix alone proves nothing (an application
//!   may well call its trigger `pgshift_audit`), and every lookup that lists,
//!   drops or refuses pgshift's triggers (leftovers, abort, the swap's check,
//!   the final sync) uses that rule. Their functions
//!   `pgshift.sync_<oid>_{ins,upd,del,trunc}` are `SECURITY DEFINER` (owned by the
//!   connecting role, `EXECUTE` revoked from PUBLIC), `SET search_path =
//!   pg_catalog, pg_temp`, every name quoted and qualified. Each one first logs the
//!   statement's keys (a plain INSERT into the changelog: it cannot fail short of
//!   a full disk; UPDATE logs old and new keys, a key may change), then applies the
//!   change to `shadow.T` inside `BEGIN … EXCEPTION WHEN OTHERS` (one
//!   subtransaction per *statement*) under a 100 ms `lock_timeout`: `INSERT … ON
//!   CONFLICT (key) DO UPDATE`, `DELETE … USING` the transition table, `TRUNCATE`.
//!   Any error there is swallowed (and written to the server log): the logged key
//!   guarantees the replay fixes it. The application's write never fails because
//!   of the sync: the shadow table's deferrable constraints (a `DEFERRABLE`
//!   unique key only the source has) are set `IMMEDIATE` inside that block, or
//!   their check would wait for the application's COMMIT, out of its reach;
//!   the replays set them so too, so a violation names its statement.
//! * **Setup** ([`setup`]), race-free: (1) one transaction creates the changelog,
//!   the functions in *log-only* form and the triggers (CREATE TRIGGER's lock waits
//!   out in-flight writers, so every later write is logged); (2) the initial copy
//!   `INSERT INTO shadow.T SELECT … FROM ONLY public.T` in a REPEATABLE READ
//!   transaction; (3) the functions are replaced by their *log-and-apply* form;
//!   (4) the changelog is replayed. While the copy runs the triggers only log, so an
//!   application write never waits on the copy's uncommitted rows and the copy can
//!   never collide with an applied row.
//! * **Replay** (a batch, READ COMMITTED): read the oldest changelog ids, delete
//!   their keys from `shadow.T` (a key the shadow's type cannot hold, written
//!   and deleted since prepare, is passed over: [`delete_keys`]), re-insert the
//!   current rows of `public.T` for those keys (`ON CONFLICT DO NOTHING`: a
//!   concurrent apply holds a row at least as new),
//!   delete exactly those ids (never "id <= watermark": ids are assigned at insert,
//!   not at commit). A batch that meets a unique violation is replayed with the
//!   whole changelog instead: a unique value that moved between two rows whose
//!   entries fall in different batches collides with the shadow's stale row.
//!   One that moves while a replay runs collides the same way: a collision
//!   with entries written since the pick is retried (outside the swap's locks;
//!   under them nothing writes; there, a changelog of fewer entries than a
//!   batch, none a TRUNCATE, is replayed whole in one round trip instead of
//!   picked by id). A TRUNCATE marker in the batch means a full resync. Whatever
//!   interleaving of applies and replays happened, a key whose last change was
//!   replayed is right (the replay read the row after that change committed), and
//!   a key whose last change was not replayed is still in the changelog. The last
//!   replay runs inside the swap transaction under its locks ([`final_sync`]).
//! * **Trial** ([`rejected`]): `status` and the swap's dry run ask
//!   whether that last replay would take every waiting row (one the source's
//!   definition rejects fails the swap), in a transaction they roll back: when
//!   more than a batch waits, the rows of every waiting key copied into a
//!   temporary table like the shadow table, then the oldest batch replayed as
//!   the swap would ([`trial`]), so the application's writes never wait for
//!   more than that batch's rows. A rejection whose error names no row (a
//!   `varchar(n)` too short, a domain's check) is given the key of a row that
//!   fails it, found by halving the waiting keys after the failure
//!   ([`named`]; the swap's catch-up and prepare's copy do the same). The
//!   foreign-key pre-check of `status`, the dry run and the swap counts the
//!   waiting changes as replayed the same way, in a transaction rolled back
//!   ([`fk_violations_replayed`]): a row whose referenced row waits in its
//!   changelog breaks no key at the swap.
//! * **Reads are never filtered.** pgshift's sessions run with `row_security =
//!   off`, so a replay that row-level security would filter fails instead of
//!   dropping rows; the swap, its dry run and `status` refuse beforehand when
//!   RLS applies to this role on a preserved table ([`hidden_rows`]). The one
//!   read RLS may touch is the foreign-key pre-check ([`fk_violations`]): a key
//!   into a table whose policies apply cannot be checked; the swap refuses it
//!   unless `--allow-fk-violations` leaves it to PostgreSQL's validation right
//!   after the swap, which bypasses them.
//! * **Sequences** never go back at the swap: those of `T`'s columns continue
//!   after the greater of the two values ([`final_sync`]), and so do the
//!   sequences no column uses that both sides have, since the application may
//!   draw `T`'s keys from them itself ([`carry_standalone_sequences`]; one
//!   left at the source's value, or carried to the end of the source's
//!   definition, is warned about at prepare, by the dry run and by the swap:
//!   [`standalone_sequence_warnings`]). Each destination sequence carried
//!   from is fenced in the swap transaction first (`swap::fence`: locked,
//!   read, stopped at the value read), so a `nextval` that resolved it
//!   before the swap fails after the COMMIT instead of handing out a value
//!   the new sequence hands out too. A
//!   column's value the source's sequence cannot hold (a lower `MAXVALUE`),
//!   or holds as its very last, is warned about at prepare and refused before
//!   the swap's locks, by its dry run and by `status` ([`sequence_misfits`]);
//!   one that gets there during the final replay fails the swap transaction
//!   with the same words.
//!
//! The sync lives in the database: it runs without pgshift and survives restarts.
//! [`health`] reports it for `status`. The swap ends it in two steps: under
//! its locks [`final_sync`] drops the triggers (after them nothing writes a
//! changelog or calls a function), after its COMMIT [`remove_changelogs`]
//! drops the changelogs and functions, outside the locks; `abort`
//! (`prepare::discard`) removes all of it, as it removes what a stopped run left.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use itertools::Itertools;
use pg_query::NodeEnum;
use pg_query::protobuf::{ConstrType, Token};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backups::manifest::count_relation;
use crate::dump::sql::first_line;
use crate::pg::catalog::TableInfo;
use crate::pg::exec::{
    PgError, RetryPolicy, Stop, exec_as as exec, pg_error_as, query_map, retry, rollback_on_err,
};
use crate::pg::ident::{TableName, display_ident, qualified, quote_ident, quote_literal};
use crate::pg::meta::{
    META_SCHEMA, OWN_STATEMENT, SHADOW_SCHEMA, SchemaPair, is_public_str, public_string,
};
use crate::pg::settings;
use crate::swap::fence::{FencedSequence, Fences, sequence_state};

/// `lock_timeout` of a trigger's apply to the shadow table.
pub const APPLY_LOCK_TIMEOUT: &str = "100ms";
/// Changelog entries per replay transaction.
const BATCH: i64 = 10_000;
/// Changelog entries per replay statement inside the swap transaction.
const FINAL_BATCH: i64 = 100_000;
/// How long [`catch_up`] keeps replaying before leaving the rest to the swap.
const CATCH_UP_BUDGET: Duration = Duration::from_secs(60);
/// `lock_timeout` of a replay transaction outside the swap.
const REPLAY_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of a replay batch that hit a lock timeout or a deadlock.
const REPLAY_RETRIES: u32 = 5;

/// The four sync triggers on a preserved table, one per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Insert,
    Update,
    Delete,
    Truncate,
}

const EVENTS: [Event; 4] = [Event::Insert, Event::Update, Event::Delete, Event::Truncate];

/// Names of the triggers pgshift puts on each preserved table.
pub const TRIGGER_NAMES: [&str; 4] = [
    "pgshift_sync_ins",
    "pgshift_sync_upd",
    "pgshift_sync_del",
    "pgshift_sync_trunc",
];

/// SQL condition that the `pg_trigger` row aliased `t` is one of pgshift's sync
/// triggers: named `pgshift_…` (the [`TRIGGER_NAMES`] today; the prefix also
/// finds what another version left) *and* calling a function in the
/// `pgshift` schema ([`META_SCHEMA`], which pgshift refuses to share). An
/// application's own trigger never matches, whatever its name.
pub fn own_trigger_sql(t: &str) -> String {
    format!(
        "({t}.tgname LIKE 'pgshift\\_%' AND EXISTS (
            SELECT 1 FROM pg_catalog.pg_proc own_p JOIN pg_catalog.pg_namespace own_n ON own_n.oid = own_p.pronamespace
             WHERE own_p.oid = {t}.tgfoid AND own_n.nspname = {schema}))",
        schema = quote_literal(META_SCHEMA),
    )
}

impl Event {
    fn suffix(self) -> &'static str {
        match self {
            Event::Insert => "ins",
            Event::Update => "upd",
            Event::Delete => "del",
            Event::Truncate => "trunc",
        }
    }
    fn keyword(self) -> &'static str {
        match self {
            Event::Insert => "INSERT",
            Event::Update => "UPDATE",
            Event::Delete => "DELETE",
            Event::Truncate => "TRUNCATE",
        }
    }
    fn trigger(self) -> &'static str {
        match self {
            Event::Insert => TRIGGER_NAMES[0],
            Event::Update => TRIGGER_NAMES[1],
            Event::Delete => TRIGGER_NAMES[2],
            Event::Truncate => TRIGGER_NAMES[3],
        }
    }
    fn referencing(self) -> &'static str {
        match self {
            Event::Insert => " REFERENCING NEW TABLE AS pgshift_new",
            Event::Update => " REFERENCING OLD TABLE AS pgshift_old NEW TABLE AS pgshift_new",
            Event::Delete => " REFERENCING OLD TABLE AS pgshift_old",
            Event::Truncate => "",
        }
    }
}

/// Name (in schema `pgshift`) of the changelog of the table with this oid.
pub fn changelog_name(oid: u32) -> String {
    format!("log_{oid}")
}

/// The names [`changelog_name`] and [`function_name`] give, as regular
/// expressions for the catalogs: only relations and functions of schema
/// `pgshift` named so are pgshift's sync objects (an operator's own table or
/// view there is not one).
pub const CHANGELOG_NAMES: &str = "^log_[0-9]+$";
pub const SYNC_FUNCTION_NAMES: &str = "^sync_[0-9]+_(ins|upd|del|trunc)$";

/// The drop of a changelog (its sequence, index and types go with it), as
/// a statement of a lock-bounded batch ([`crate::pg::batch`]). RESTRICT: its
/// triggers are gone first, and nothing else may depend on it
/// ([`crate::pg::catalog::external_dependents`]).
pub fn changelog_drop(name: &str) -> crate::pg::batch::Stmt {
    crate::pg::batch::Stmt {
        sql: format!("DROP TABLE IF EXISTS {}", qualified(META_SCHEMA, name)),
        locks: CHANGELOG_DROP_LOCKS,
    }
}

/// The drop of a sync trigger function, as [`changelog_drop`].
pub fn sync_function_drop(name: &str) -> crate::pg::batch::Stmt {
    crate::pg::batch::Stmt {
        sql: format!("DROP FUNCTION IF EXISTS {}()", qualified(META_SCHEMA, name)),
        locks: 1,
    }
}

/// Name (in schema `pgshift`) of a trigger function of the table with this oid.
fn function_name(oid: u32, ev: Event) -> String {
    format!("sync_{oid}_{}", ev.suffix())
}

/// A sequence of a preserved table's column: owned by it (serial, identity)
/// or drawn from by its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedSequence {
    pub column: String,
    /// The shadow table's sequence (schema shadow).
    pub shadow: String,
    /// The destination public table's sequence for the same column, if any.
    pub public: Option<String>,
}

/// One preserved table as set up by prepare (stored in the state's
/// `extra["sync"]`; the swap reads it back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedTable {
    /// The live schema (absent = public); its shadow follows the naming rule.
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub schema: String,
    /// Table name (the same in the live schema and its shadow).
    pub name: String,
    /// Oid of the destination's `public.<name>` (names the helpers below).
    pub oid: u32,
    /// Oid of `shadow.<name>`.
    pub shadow_oid: u32,
    /// The key: a primary key or unique not-null key present on both sides.
    pub key: Vec<String>,
    /// Columns copied from public into shadow (in both, not generated in shadow).
    pub columns: Vec<String>,
    /// Changelog table in schema pgshift.
    pub changelog: String,
    /// Trigger functions in schema pgshift.
    pub functions: Vec<String>,
    /// Sequences of the shadow table's columns (owned, or drawn from by a default).
    #[serde(default)]
    pub sequences: Vec<OwnedSequence>,
}

impl SyncedTable {
    /// `name` in public, `schema.name` elsewhere: how the table is named in output.
    pub fn display(&self) -> String {
        crate::pg::meta::table_display(&self.schema, &self.name)
    }

    /// As messages name it: [`display`](Self::display), a table of public
    /// quoted where it must be too (`"Passkey"`).
    pub fn shown(&self) -> String {
        crate::pg::meta::table_shown(&self.schema, &self.name)
    }
}

/// Replays run READ COMMITTED transactions that may meet lock timeouts and
/// deadlocks with the application's writes; both are retried.
fn replay_policy(retries: u32) -> RetryPolicy {
    RetryPolicy::new(retries).with_serialization_failures()
}

// ---------------------------------------------------------------------------------------
// Catalog reads
// ---------------------------------------------------------------------------------------

/// A unique, non-partial key of plain not-null columns.
#[derive(Debug, Clone)]
struct KeyCandidate {
    primary: bool,
    columns: Vec<String>,
    /// `DEFERRABLE`: listed in messages, never chosen (`ON CONFLICT` cannot
    /// use it, and it holds only at COMMIT).
    deferrable: bool,
}

async fn key_candidates(client: &Client, rel: u32) -> Result<Vec<KeyCandidate>> {
    query_map(
        client,
            "SELECT i.indisprimary, NOT i.indimmediate,
                    ARRAY(SELECT a.attname::text
                            FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
               FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid
                AND i.indpred IS NULL AND i.indexprs IS NULL
                AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                                  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                 WHERE k.ord <= i.indnkeyatts AND NOT a.attnotnull)
              ORDER BY i.indisprimary DESC, ic.relname",
            &[&rel],
        "listing unique keys",
        |r| KeyCandidate {
            primary: r.get(0),
            deferrable: r.get(1),
            columns: r.get(2),
        },
    )
    .await
}

/// The first source key (primary key first) whose columns, as a set, are a key
/// of the destination too.
fn choose_key(dest: &[KeyCandidate], source: &[KeyCandidate]) -> Option<Vec<String>> {
    let set = |c: &[String]| c.iter().cloned().collect::<HashSet<_>>();
    let mut ordered: Vec<&KeyCandidate> = source.iter().filter(|k| !k.deferrable).collect();
    ordered.sort_by_key(|k| !k.primary);
    ordered
        .into_iter()
        .find(|s| {
            dest.iter()
                .any(|d| !d.deferrable && set(&d.columns) == set(&s.columns))
        })
        .map(|s| s.columns.clone())
}

fn describe_keys(keys: &[KeyCandidate]) -> String {
    if keys.is_empty() {
        return "none".into();
    }
    keys.iter()
        .map(|k| {
            format!(
                "({}){}",
                k.columns.iter().map(|c| display_ident(c)).join(", "),
                if k.deferrable {
                    " DEFERRABLE, which the sync cannot use"
                } else {
                    ""
                }
            )
        })
        .join(", ")
}

/// A column's type as validation sees it.
#[derive(Debug, Clone, Default)]
struct ColType {
    name: String,
    /// `format_type()` with typmod, for messages.
    format: String,
    type_oid: u32,
    typmod: i32,
    not_null: bool,
    /// A default, identity or generation expression supplies a value.
    has_default: bool,
    generated: bool,
    /// `"schema"."type"` of the column's type itself.
    qual: String,
    /// Name, schema and typtype of the type (the element type for arrays).
    base_name: String,
    base_schema: String,
    base_typtype: String,
    is_array: bool,
    /// The (element) type belongs to an extension.
    base_ext: bool,
    /// Labels when the (element) type is an enum.
    labels: Option<Vec<String>>,
    /// When the (element) type is a domain: the type it is over
    /// (`"schema"."type"`, its schema) and its typmod.
    domain_over: Option<(String, String, i32)>,
    /// The type a domain is over belongs to an extension (`citext`, in a
    /// migrated schema yet not the migration's).
    domain_over_ext: bool,
    /// For a domain, the type under it and the domains it is over
    /// (`"schema"."type"`), with the typmod the innermost domain gives it:
    /// what its values are stored as.
    root_over: Option<(String, i32)>,
    /// When it is a domain: whether it is NOT NULL, and its CHECKs
    /// (`CONSTRAINT "name" CHECK (…)`), which a trial of a domain not there
    /// yet (one of a migrated schema) tries as well.
    domain_not_null: bool,
    domain_checks: Vec<String>,
    /// Its own `COLLATE` (`"pg_catalog"."C"`), empty where it has its type's.
    collation: String,
}

async fn column_types(client: &Client, rel: u32) -> Result<Vec<ColType>> {
    query_map(
        client,
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid,
                    a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                    a.attgenerated <> '',
                    pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.typname),
                    bt.typname::text, bn.nspname::text, bt.typtype::text,
                    t.typcategory = 'A' AND t.typelem <> 0,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::regclass
                             AND d.objid = bt.oid AND d.deptype = 'e'),
                    CASE WHEN bt.typtype = 'e' THEN
                         ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
                                WHERE e.enumtypid = bt.oid ORDER BY e.enumsortorder) END,
                    a.atttypmod,
                    pg_catalog.quote_ident(dn.nspname) || '.' || pg_catalog.quote_ident(dt.typname),
                    dn.nspname::text, bt.typtypmod,
                    bt.typtype = 'd' AND bt.typnotnull,
                    ARRAY(SELECT 'CONSTRAINT ' || pg_catalog.quote_ident(k.conname) || ' '
                                 || pg_catalog.pg_get_constraintdef(k.oid)
                            FROM pg_catalog.pg_constraint k
                           WHERE bt.typtype = 'd' AND k.contypid = bt.oid AND k.contype = 'c'
                           ORDER BY k.conname),
                    CASE WHEN a.attcollation = 0 OR a.attcollation = t.typcollation THEN ''
                         ELSE pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::regclass
                             AND d.objid = dt.oid AND d.deptype = 'e'),
                    -- The type under a domain and the domains it is over,
                    -- with the typmod the innermost domain gives it.
                    (WITH RECURSIVE under(base, typmod) AS (
                         SELECT bt.typbasetype, bt.typtypmod WHERE bt.typtype = 'd'
                         UNION ALL
                         SELECT y.typbasetype, coalesce(nullif(y.typtypmod, -1), under.typmod)
                           FROM under JOIN pg_catalog.pg_type y ON y.oid = under.base
                          WHERE y.typtype = 'd')
                     SELECT ARRAY[pg_catalog.quote_ident(zn.nspname) || '.' || pg_catalog.quote_ident(z.typname),
                                  under.typmod::text]
                       FROM under JOIN pg_catalog.pg_type z ON z.oid = under.base
                       JOIN pg_catalog.pg_namespace zn ON zn.oid = z.typnamespace
                      WHERE z.typtype <> 'd')
               FROM pg_catalog.pg_attribute a
               LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
               LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
               JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
               JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
               JOIN pg_catalog.pg_type bt
                 ON bt.oid = CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE t.oid END
               JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
               LEFT JOIN pg_catalog.pg_type dt ON dt.oid = bt.typbasetype
               LEFT JOIN pg_catalog.pg_namespace dn ON dn.oid = dt.typnamespace
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&rel],
        "listing columns",
        |r| ColType {
            name: r.get(0),
            format: r.get(1),
            type_oid: r.get(2),
            not_null: r.get(3),
            has_default: r.get(4),
            generated: r.get(5),
            qual: r.get(6),
            base_name: r.get(7),
            base_schema: r.get(8),
            base_typtype: r.get(9),
            is_array: r.get(10),
            base_ext: r.get(11),
            labels: r.get(12),
            typmod: r.get(13),
            domain_over: r
                .get::<_, Option<String>>(14)
                .map(|qual| (qual, r.get(15), r.get(16))),
            domain_not_null: r.get(17),
            domain_checks: r.get(18),
            collation: r.get(19),
            domain_over_ext: r.get(20),
            root_over: r
                .get::<_, Option<Vec<String>>>(21)
                .and_then(|v| Some((v.first()?.clone(), v.get(1)?.parse().ok()?))),
        },
    )
    .await
}

/// [`assignable`] to the type named `to` (`"schema"."type"`); None when this
/// server has no such type (yet).
async fn assignable_to(client: &Client, from: u32, to: &str) -> Result<Option<bool>> {
    let oid: Option<u32> = client
        .query_one("SELECT pg_catalog.to_regtype($1)::oid", &[&to])
        .await
        .map_err(|e| pg_error_as(e, "resolving a type"))?
        .get(0);
    match oid {
        Some(oid) => Ok(Some(assignable(client, from, oid, 0).await?)),
        None => Ok(None),
    }
}

/// Can a value of type `from` be stored into a column of type `to` (an INSERT's
/// assignment coercion), judged on this server's catalog?
fn assignable<'a>(
    client: &'a Client,
    from: u32,
    to: u32,
    depth: u32,
) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>> {
    Box::pin(async move {
        if from == to {
            return Ok(true);
        }
        if depth > 5 {
            return Ok(false);
        }
        let info = |oid: u32| async move {
            let r = client
                .query_opt(
                    "SELECT typtype::text, typbasetype, typcategory::text, typelem FROM pg_catalog.pg_type WHERE oid = $1",
                    &[&oid],
                )
                .await
                .map_err(|e| pg_error_as(e, "reading a type"))?;
            Ok::<_, anyhow::Error>(r.map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, u32>(1),
                    r.get::<_, String>(2),
                    r.get::<_, u32>(3),
                )
            }))
        };
        let (Some(f), Some(t)) = (info(from).await?, info(to).await?) else {
            return Ok(false);
        };
        if f.0 == "d" {
            return assignable(client, f.1, to, depth + 1).await;
        }
        if t.0 == "d" {
            return assignable(client, from, t.1, depth + 1).await;
        }
        // The cast PostgreSQL would use: one in pg_cast, whose context says
        // whether an assignment may use it (an explicit-only cast from text,
        // as semver's, rules out the I/O conversion too); without one, the
        // automatic I/O conversion to a string type.
        let context: Option<String> = client
            .query_opt(
                "SELECT castcontext::text FROM pg_catalog.pg_cast WHERE castsource = $1 AND casttarget = $2",
                &[&from, &to],
            )
            .await
            .map_err(|e| pg_error_as(e, "reading casts"))?
            .map(|r| r.get(0));
        match context.as_deref() {
            Some(c) => return Ok(c == "a" || c == "i"),
            None if t.2 == "S" => return Ok(true),
            None => {}
        }
        if f.2 == "A" && t.2 == "A" && f.3 != 0 && t.3 != 0 {
            return assignable(client, f.3, t.3, depth + 1).await;
        }
        Ok(false)
    })
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Validate the preserved tables before anything changes: each exists in the
/// destination's public as a plain table and in the source (`source_tables`), has
/// a primary key or unique not-null key with the same columns on both sides,
/// columns only in the source are nullable or have defaults, shared columns have
/// the same or an assignable type (same-named user types: enum labels of the
/// destination must exist in the source). Every violation is one line of one
/// [`crate::error::UserError`]. Returns the warnings (columns only the
/// destination has).
pub async fn validate(
    preserved: &[TableName],
    schemas: &[String],
    source_tables: &[TableInfo],
    source: &Client,
    dest: &Client,
) -> Result<Vec<String>> {
    // The trials run text the source prints (a domain's CHECK, a unique
    // index's WHERE) on the destination: printed as a value is written
    // ([`settings::OUTPUT`]) and tried as the copy of the preserved rows
    // reads and writes ([`settings::ROUND_TRIP`]), so that a date, a float,
    // money or a backslash in a literal means there what it means on the
    // source ('01/02/2024' under a source's `SQL, DMY` read as January 2nd
    // on an MDY destination). Put back after.
    const LITERALS: settings::Settings = &[("standard_conforming_strings", "on")];
    let sides = [
        (source, "source", [settings::OUTPUT, LITERALS]),
        (dest, "destination", [settings::ROUND_TRIP, LITERALS]),
    ];
    for (client, side, sets) in &sides {
        let sql = sets.iter().map(|s| settings::set(s)).join("; ");
        exec(
            client,
            &sql,
            &format!("setting the {side}'s session for the trials"),
        )
        .await?;
    }
    let mut problems: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let mut failed = None;
    let deadline = Instant::now() + TRIALS_BUDGET;
    for p in preserved {
        match validate_one(
            p,
            schemas,
            source_tables,
            source,
            dest,
            &mut warnings,
            deadline,
        )
        .await
        {
            Ok(found) => problems.extend(found),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for (client, side, sets) in &sides {
        let put_back = sets
            .iter()
            .flat_map(|s| settings::names(s))
            .map(|name| format!("RESET {name}"))
            .join("; ");
        if let Err(e) = client.batch_execute(&put_back).await {
            tracing::debug!("putting the {side}'s session settings back: {e}");
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if problems.is_empty() {
        return Ok(warnings);
    }
    // One problem is one line; several are counted, then listed one a line.
    Err(match problems.as_slice() {
        [one] => crate::user_error!("--preserved-tables: {one}; nothing was changed"),
        many => crate::user_error!(
            "--preserved-tables: {} problems found, nothing was changed:\n  {}",
            many.len(),
            many.join("\n  ")
        ),
    })
}

async fn validate_one(
    p: &TableName,
    schemas: &[String],
    source_tables: &[TableInfo],
    source: &Client,
    dest: &Client,
    warnings: &mut Vec<String>,
    deadline: Instant,
) -> Result<Vec<String>> {
    let shown = &p.to_string();
    let mut problems = Vec::new();
    let schema = p.schema_or_public();
    if !schemas.iter().any(|s| s == schema) {
        problems.push(format!(
            "{shown}: not in a schema the migration moves ({})",
            schemas.join(", ")
        ));
        return Ok(problems);
    }
    let dest_row = dest
        .query_opt(
            "SELECT c.oid, c.relkind::text, pg_catalog.pg_has_role(c.relowner, 'USAGE'),
                    pg_catalog.has_table_privilege(c.oid, 'SELECT, TRIGGER'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid),
                    c.relrowsecurity AND c.relforcerowsecurity
                      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
                                         AND (r.rolsuper OR r.rolbypassrls))
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &p.name],
        )
        .await
        .map_err(|e| pg_error_as(e, "looking up a preserved table"))?;
    let src = source_tables
        .iter()
        .find(|t| t.schema == schema && t.name == p.name);
    if dest_row.is_none() && src.is_none() {
        problems.push(format!(
            "{shown}: no such table in the destination's {schema} schema, nor in the source's{}",
            crate::pg::ident::fold_hint_among(
                &p.name,
                source_tables
                    .iter()
                    .filter(|t| t.schema == schema)
                    .map(|t| &t.name)
            )
        ));
        return Ok(problems);
    }
    let dest_oid = match &dest_row {
        None => {
            problems.push(format!(
                "{shown}: no such table in the destination's {schema} schema (a preserved table keeps the destination's rows)"
            ));
            None
        }
        Some(r) => {
            let kind: String = r.get(1);
            if kind != "r" {
                problems.push(format!(
                    "{shown}: in the destination it is a {}, not a plain table",
                    relkind_name(&kind)
                ));
                None
            } else {
                if !r.get::<_, bool>(2) {
                    problems.push(format!(
                        "{shown}: the connecting role does not own the destination's table (it needs to, for the sync triggers and the swap)"
                    ));
                } else if !r.get::<_, bool>(3) {
                    problems.push(format!(
                        "{shown}: the connecting role lacks SELECT or TRIGGER privilege on the destination's table"
                    ));
                }
                if r.get::<_, bool>(4) {
                    problems.push(format!(
                        "{shown}: the destination's table has inheritance parents or children (writes through another table of the hierarchy would bypass the sync's statement triggers)"
                    ));
                }
                if r.get::<_, bool>(5) {
                    problems.push(format!(
                        "{shown}: the destination's table forces row-level security and the connecting role cannot bypass it (the copy would miss rows)"
                    ));
                }
                Some(r.get::<_, u32>(0))
            }
        }
    };
    // The shadow takes the source's row-level security: forced, it applies to
    // this role on the destination unless it may bypass it, and the sync's
    // copy into the shadow would fail late (or keep fewer rows).
    if let Some(t) = src {
        let forced: bool = source
            .query_one(
                "SELECT c.relrowsecurity AND c.relforcerowsecurity FROM pg_catalog.pg_class c WHERE c.oid = $1",
                &[&t.oid],
            )
            .await
            .map_err(|e| pg_error_as(e, "looking up a preserved table on the source"))?
            .get(0);
        let bypass: bool = dest
            .query_one(
                "SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| pg_error_as(e, "looking up the connecting role"))?
            .get(0);
        if forced && !bypass {
            problems.push(format!(
                "{shown}: the source's table forces row-level security, which its shadow takes, and the connecting role cannot bypass it on the destination (the sync could not copy the destination's rows)"
            ));
        }
    }
    let src_oid = match src {
        None => {
            problems.push(format!(
                "{shown}: not in the source's {schema} schema (a preserved table takes its structure from the source)"
            ));
            None
        }
        Some(t) if t.relkind != 'r' || t.is_partition => {
            problems.push(format!(
                "{shown}: in the source it is a {}, not a plain table",
                if t.is_partition {
                    "partition".to_string()
                } else {
                    relkind_name(&t.relkind.to_string())
                }
            ));
            None
        }
        Some(t) => Some(t.oid),
    };
    let (Some(dest_oid), Some(src_oid)) = (dest_oid, src_oid) else {
        return Ok(problems);
    };
    // Writes arriving through logical replication fire row triggers only.
    if let Ok(r) = dest
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel WHERE srrelid = $1)",
            &[&dest_oid],
        )
        .await
        && r.get::<_, bool>(0)
    {
        problems.push(format!(
            "{shown}: the destination's table is written by a logical replication subscription, whose writes do not fire the sync's statement triggers"
        ));
    }
    let dest_keys = key_candidates(dest, dest_oid).await?;
    let src_keys = key_candidates(source, src_oid).await?;
    let key = choose_key(&dest_keys, &src_keys).unwrap_or_default();
    if key.is_empty() {
        problems.push(format!(
            "{shown}: no primary key or unique NOT NULL key with the same columns on both sides (destination: {}; source: {})",
            describe_keys(&dest_keys),
            describe_keys(&src_keys)
        ));
    }
    let dest_cols = column_types(dest, dest_oid).await?;
    let src_cols = column_types(source, src_oid).await?;
    let dest_by_name: HashMap<&str, &ColType> =
        dest_cols.iter().map(|c| (c.name.as_str(), c)).collect();
    let src_names: HashSet<&str> = src_cols.iter().map(|c| c.name.as_str()).collect();
    let mut shared = 0;
    // Columns only the source has (a new column, or one it renamed): the
    // destination's rows get their defaults, NULL where there is none.
    let mut source_only: Vec<String> = Vec::new();
    for s in &src_cols {
        let col = format!("{}.{}", shown, display_ident(&s.name));
        match dest_by_name.get(s.name.as_str()) {
            None => {
                if s.not_null && !s.has_default {
                    problems.push(format!(
                        "{col}: only in the source, NOT NULL and without a default (the destination's rows have no value for it)"
                    ));
                } else if !s.generated {
                    source_only.push(display_ident(&s.name));
                }
            }
            // Generated in the source: computed in shadow, never copied. The
            // destination's own values are lost unless it computed them too.
            Some(d) if s.generated => {
                if !d.generated {
                    warnings.push(format!(
                        "preserved table {shown}: column {} is generated in the source but not in the destination; the destination's values are replaced by the computed ones",
                        display_ident(&s.name)
                    ));
                }
            }
            Some(d) => {
                shared += 1;
                match type_problem(dest, d, s, schemas).await? {
                    Some(TypeCheck::Refused(why)) => problems.push(format!("{col}: {why}")),
                    Some(TypeCheck::NotYet(why)) => warnings.push(format!("{col}: {why}")),
                    None => {
                        let live = qualified(schema, &p.name);
                        let fit = match time_left(deadline) {
                            Some(timeout) => {
                                fit_problem(dest, &live, &key, d, s, schemas, timeout).await?
                            }
                            None => Fit::NoAnswer(format!(
                                "whether the destination's rows fit the source's column ({}) was not tried ({}); the sync's copy finds a row that does not, naming its key",
                                s.format,
                                time_spent()
                            )),
                        };
                        match fit {
                            Fit::Fits => {}
                            Fit::DoesNot(why) => problems.push(format!("{col}: {why}")),
                            Fit::NoAnswer(why) => warnings.push(format!("{col}: {why}")),
                        }
                    }
                }
            }
        }
    }
    if shared == 0 {
        problems.push(format!(
            "{shown}: no column in common between the source and the destination"
        ));
    }
    if problems.is_empty() {
        let live = qualified(schema, &p.name);
        let t = Tried {
            source,
            dest,
            src_oid,
            dest_oid,
            live: &live,
            key: &key,
            dest_by_name: &dest_by_name,
            src_cols: &src_cols,
            deadline,
        };
        let mut found = unique_problems(&t, schemas).await?;
        found.extend(check_problems(&t).await?);
        for u in found {
            match u {
                Fit::Fits => {}
                Fit::DoesNot(why) => problems.push(format!("{shown}: {why}")),
                Fit::NoAnswer(why) => warnings.push(format!("preserved table {shown}: {why}")),
            }
        }
    }
    for d in &dest_cols {
        if !src_names.contains(d.name.as_str()) {
            warnings.push(format!(
                "preserved table {shown}: column {} exists only in the destination; its values are not carried over",
                display_ident(&d.name)
            ));
        }
    }
    if !source_only.is_empty() {
        let (cols, verb) = match source_only.as_slice() {
            [one] => (format!("column {one}"), "exists"),
            many => (format!("columns {}", many.join(", ")), "exist"),
        };
        warnings.push(format!(
            "preserved table {shown}: {cols} {verb} only in the source; the destination's rows get the default (NULL where there is none)"
        ));
    }
    Ok(problems)
}

fn relkind_name(kind: &str) -> String {
    match kind {
        "r" => "table",
        "p" => "partitioned table",
        "v" => "view",
        "m" => "materialized view",
        "f" => "foreign table",
        "S" => "sequence",
        "i" | "I" => "index",
        "c" => "composite type",
        _ => "relation",
    }
    .to_string()
}

/// Why a destination value of column type `d` cannot go into the source's type `s`.
/// What [`type_problem`] found.
enum TypeCheck {
    /// The destination's values cannot become the source's type.
    Refused(String),
    /// The source's type is an extension's that the destination does not
    /// have yet (prepare creates it): checked again once it exists.
    NotYet(String),
}

async fn type_problem(
    dest: &Client,
    d: &ColType,
    s: &ColType,
    schemas: &[String],
) -> Result<Option<TypeCheck>> {
    let remapped = schemas.contains(&s.base_schema) && !s.base_ext;
    if remapped {
        // A new domain of the migration over a type of none of its schemas
        // (`email` over text, where the destination's column is text): the
        // values go in as INSERT assigns them to the type it is over, which
        // fit_problem tries with its NOT NULL and CHECKs.
        if d.base_name != s.base_name
            && s.base_typtype == "d"
            && !s.is_array
            && !d.is_array
            && let Some((over, over_schema, _)) = &s.domain_over
            && (!schemas.contains(over_schema) || s.domain_over_ext)
        {
            match assignable_to(dest, d.type_oid, over).await? {
                Some(true) => return Ok(None),
                // Over an extension's type (`citext`) prepare creates.
                None if s.domain_over_ext => {
                    return Ok(Some(TypeCheck::NotYet(format!(
                        "the source's domain {} is over {over}, of an extension the destination does not have yet; whether destination type {} converts to it is checked once prepare has created it",
                        s.format, d.format
                    ))));
                }
                _ => {}
            }
        }
        // Any other type the migration creates in shadow: only the
        // same-named type fits (its values travel as text).
        if d.base_name != s.base_name
            || d.is_array != s.is_array
            || d.base_typtype != s.base_typtype
        {
            return Ok(Some(TypeCheck::Refused(format!(
                "destination type {} cannot be converted to the source's type {} (a type the migration creates takes only the type of its name, or, for a new domain, one that converts by assignment to the type it is over)",
                d.format, s.format
            ))));
        }
        if let (Some(dl), Some(sl)) = (&d.labels, &s.labels) {
            let known: HashSet<&String> = sl.iter().collect();
            let missing: Vec<String> = dl
                .iter()
                .filter(|l| !known.contains(l))
                .map(|l| quote_literal(l))
                .collect();
            if !missing.is_empty() {
                return Ok(Some(TypeCheck::Refused(format!(
                    "the source's enum type {} lacks labels the destination's rows may hold: {} (rewrite those rows to labels the source has, as the new version's migration does, or do not preserve the table)",
                    display_ident(&s.base_name),
                    missing.join(", ")
                ))));
            }
        }
        return Ok(None);
    }
    if d.qual == s.qual {
        return Ok(None);
    }
    let fits = assignable_to(dest, d.type_oid, &s.qual).await?;
    if fits == Some(true) {
        return Ok(None);
    }
    if fits.is_none() && s.base_ext {
        return Ok(Some(TypeCheck::NotYet(format!(
            "the source's type {} belongs to an extension the destination does not have yet; whether destination type {} converts to it is checked once prepare has created it",
            s.format, d.format
        ))));
    }
    Ok(Some(TypeCheck::Refused(format!(
        "destination type {} cannot be converted to the source's type {} by assignment, as INSERT converts (pgshift applies no explicit cast, which may change values silently: convert the destination's column first, or do not preserve the table)",
        d.format, s.format
    ))))
}

/// The type `qual` (`"schema"."type"`) with `typmod` as this session names
/// it (qualified where its search path would not find it), or None where
/// this server has no such type (yet).
async fn type_named(client: &Client, qual: &str, typmod: i32) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT pg_catalog.format_type(t.oid, $2) FROM pg_catalog.pg_type t WHERE t.oid = pg_catalog.to_regtype($1)",
            &[&qual, &typmod],
        )
        .await
        .map_err(|e| pg_error_as(e, "resolving a type"))?
        .map(|r| r.get(0)))
}

/// What [`fit_problem`]'s trial found.
enum Fit {
    /// The rows fit, or nothing needed trying.
    Fits,
    /// They do not: why.
    DoesNot(String),
    /// The trial got no answer: why (the copy's own error then names a
    /// row's key).
    NoAnswer(String),
}

/// Do the destination's values of column `d` of `live` all fit the source's
/// column `s` as the sync's copy stores them, when the two differ in type,
/// length, precision or dimensions (`varchar(50)` to `varchar(20)`,
/// pgvector's `vector(4)` to `vector(8)`) or the source's is NOT NULL? Tried
/// as that copy does it (an INSERT's assignment) into a temporary table, in a
/// transaction that is rolled back, for a bounded time: so that the dry run
/// foresees what would otherwise fail prepare at its sync phase, after the
/// whole copy. A domain of a migrated schema (created with the shadow, so
/// not there yet) is tried as a temporary domain of its definition (the
/// type it is over, NOT NULL, CHECKs), when that type is not the
/// migration's too; as the type alone when a CHECK cannot be created here
/// (it calls what only the source has yet: the copy then finds the row).
async fn fit_problem(
    dest: &Client,
    live: &str,
    key: &[String],
    d: &ColType,
    s: &ColType,
    schemas: &[String],
    timeout: Duration,
) -> Result<Fit> {
    let remapped = |schema: &str, ext: bool| schemas.iter().any(|m| m == schema) && !ext;
    // The type the source's column holds values of (for a domain of a
    // migrated schema, the type it is over), and its typmod.
    let domain = remapped(&s.base_schema, s.base_ext);
    let (target, typmod, array) = if !domain {
        (s.qual.as_str(), s.typmod, "")
    } else {
        match &s.domain_over {
            Some((over, schema, typmod)) if !remapped(schema, s.domain_over_ext) => {
                (over.as_str(), *typmod, if s.is_array { "[]" } else { "" })
            }
            _ => return Ok(Fit::Fits),
        }
    };
    let narrows_null = s.not_null && !d.not_null;
    // A domain of the migration that is NOT NULL or has CHECKs: tried as
    // itself (a temporary one of the same definition), whatever the type.
    let constrained = domain && (s.domain_not_null || !s.domain_checks.is_empty());
    // Nothing to try where the type (or the domain's, with its typmod) is
    // the same and NOT NULL is not new: most columns, without a query.
    // A widening (`int` to `bigint`, a longer `varchar`) fits every value:
    // no scan of the live table for it.
    let same = if domain {
        matches!(&d.domain_over, Some((over, _, dmod)) if over == target && *dmod == typmod)
    } else {
        (d.qual == s.qual && d.typmod == s.typmod) || widens(d, s)
    };
    if same && !narrows_null && !constrained {
        return Ok(Fit::Fits);
    }
    let Some(sql_type) = type_named(dest, target, typmod).await? else {
        return Ok(Fit::Fits);
    };
    exec(
        dest,
        &format!(
            "BEGIN; SET LOCAL lock_timeout = '{APPLY_LOCK_TIMEOUT}'; SET LOCAL statement_timeout = '{}ms'",
            timeout.as_millis().max(1)
        ),
        "starting a trial of the preserved rows' conversion",
    )
    .await?;
    let column = quote_ident(&d.name);
    let not_null = if s.not_null { " NOT NULL" } else { "" };
    // The domain itself, in pg_temp under its own name (so that an error
    // reads as the copy's would), where its CHECKs can be created here (they
    // may call what only the source has: then the type it is over alone).
    let over_type = sql_type.clone();
    let sql_type = if constrained {
        let name = quote_ident(&s.base_name);
        let created = dest
            .batch_execute(&format!(
                "SAVEPOINT fit_domain; CREATE DOMAIN pg_temp.{name} AS {sql_type}{}{}",
                if s.domain_not_null { " NOT NULL" } else { "" },
                s.domain_checks
                    .iter()
                    .map(|c| format!(" {c}"))
                    .collect::<String>()
            ))
            .await;
        match created {
            Ok(()) => format!("pg_temp.{name}"),
            Err(e) => {
                tracing::debug!(
                    "trying {} without its constraints: {}",
                    s.format,
                    crate::pg::conn::connect::describe_pg_error(&e)
                );
                exec(
                    dest,
                    "ROLLBACK TO SAVEPOINT fit_domain",
                    "trying a domain's constraints",
                )
                .await?;
                sql_type
            }
        }
    } else {
        sql_type
    };
    let mut tried = dest
        .batch_execute(&format!(
            "CREATE {OWN_STATEMENT} TEMPORARY TABLE pgshift_fit (v {sql_type}{array}{not_null}); SAVEPOINT fit; INSERT {OWN_STATEMENT} INTO pgshift_fit SELECT {column} FROM {live}",
        ))
        .await;
    // Two domains over types no assignment joins (text and inet): the copy
    // goes through the text form, and so does the trial.
    let via_text = domain
        && tried
            .as_ref()
            .err()
            .and_then(|e| e.code())
            .is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::DATATYPE_MISMATCH
                    || *c == tokio_postgres::error::SqlState::CANNOT_COERCE
            });
    if via_text {
        tried = dest
            .batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT fit; INSERT {OWN_STATEMENT} INTO pgshift_fit SELECT ({column})::text::{sql_type}{array} FROM {live}",
            ))
            .await;
    }
    // Rows that do not fit: the first one's key, found row by row (a value
    // stored into a variable of the column's type converts by assignment,
    // as INSERT does), within the same time bound.
    let misfit = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .is_some_and(|db| does_not_fit(db.code().code()))
    };
    let first = match &tried {
        Err(e) if misfit(e) && !key.is_empty() => {
            let target = format!("{sql_type}{array}");
            first_misfit(dest, live, key, d, &target, s.not_null, via_text)
                .await
                .unwrap_or_default()
        }
        _ => None,
    };
    exec(
        dest,
        "ROLLBACK",
        "ending a trial of the preserved rows' conversion",
    )
    .await?;
    let Err(e) = tried else {
        return Ok(Fit::Fits);
    };
    let Some(db) = e.as_db_error() else {
        return Err(pg_error_as(e, "trying the preserved rows' conversion"));
    };
    let code = db.code().code();
    if !does_not_fit(code) {
        return Ok(Fit::NoAnswer(format!(
            "whether the destination's rows fit the source's column ({}) could not be tried ({}); the sync's copy finds a row that does not, naming its key",
            s.format,
            no_answer(&e)
        )));
    }
    let shown = if domain {
        format!("{} over {over_type}{array}", s.format)
    } else {
        s.format.clone()
    };
    let becomes = match (domain || s.format != d.format, narrows_null) {
        (true, true) => format!("{shown} NOT NULL"),
        (true, false) => shown,
        (false, _) => "NOT NULL".into(),
    };
    let mut why = if code == "23502" {
        "a row holds NULL".to_string()
    } else {
        db.message().to_string()
    };
    if let Some(first) = first {
        why.push_str(&format!(" (Key {first}, for one)"));
    }
    Ok(Fit::DoesNot(format!(
        "the destination's rows do not all fit the source's column ({} becomes {becomes}): {why}; the sync's copy would fail: change those rows first, or do not preserve the table",
        d.format
    )))
}

/// A preserved table as the trials of its keys and constraints
/// ([`unique_problems`], [`check_problems`]) see it on both sides.
#[derive(Clone, Copy)]
struct Tried<'a> {
    source: &'a Client,
    dest: &'a Client,
    src_oid: u32,
    dest_oid: u32,
    /// The destination's live table, quoted.
    live: &'a str,
    /// The sync's key columns.
    key: &'a [String],
    dest_by_name: &'a HashMap<&'a str, &'a ColType>,
    src_cols: &'a [ColType],
    /// The end of [`TRIALS_BUDGET`], for every table's trials.
    deadline: Instant,
}

impl Tried<'_> {
    /// The time the next trial may take (see [`time_left`]).
    fn time_left(&self) -> Option<Duration> {
        time_left(self.deadline)
    }
}

/// The time the next trial may take, until `deadline`, or None once the
/// trials' time is spent.
fn time_left(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (left >= Duration::from_millis(100)).then(|| left.min(FIT_TRIAL_BUDGET))
}

/// What a trial not made for want of time says.
fn time_spent() -> String {
    format!("the trials took their {} s in all", TRIALS_BUDGET.as_secs())
}

/// A unique index of a table, as [`unique_problems`] compares and tries it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UniqueIndex {
    name: String,
    /// Each key as SQL, in order: a column's name (quoted where it must
    /// be) or an expression (`lower(email)`), as `pg_get_indexdef` prints it
    /// (INCLUDE columns are not part of the key).
    keys: Vec<String>,
    /// The key columns' names where no key is an expression.
    columns: Vec<String>,
    /// Every column the index reads (keys, expressions, WHERE).
    reads: Vec<String>,
    /// Each key column's collation as `"schema"."name"` where it is
    /// nondeterministic (case-insensitive, say); `pg_catalog."default"` for
    /// the database's default, which the shadow's index has on the
    /// destination (`citext` lowercases under it); `pg_catalog."C"` for any
    /// other, whose equality is the bytes' whatever the destination's
    /// column's own collation; empty for a type without one.
    collations: Vec<String>,
    /// Each nondeterministic collation's schema (empty for the others).
    collation_schemas: Vec<String>,
    predicate: Option<String>,
    nulls_not_distinct: bool,
    /// An expression among its keys.
    expressions: bool,
    /// Functions its `WHERE` calls that are not built in, as
    /// `name(argtypes)`: the destination's namesakes may compute otherwise.
    functions: Vec<String>,
}

/// An array of the functions and operators an object (`objid` of catalog
/// `class`: an index's keys or WHERE, a CHECK) calls that are neither built
/// in nor an extension's: the application's own, which the destination's
/// namesakes may compute otherwise. Each as `kind md5 signature`: `f` or
/// `o`, the md5 of the (operator's) function's definition, and
/// `name(argtypes)` or the operator's `<!>(text,text)`; [`differing_calls`]
/// keeps those the destination defines otherwise. Constants only are
/// spliced: the caller's catalog and column names.
fn app_calls(class: &str, objid: &str) -> String {
    format!(
        "ARRAY(SELECT f FROM (
             SELECT 'f ' || pg_catalog.md5(pg_catalog.pg_get_functiondef(p.oid)) || ' ' || p.oid::regprocedure::text AS f
               FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid
              WHERE d.classid = 'pg_catalog.{class}'::regclass AND d.objid = {objid}
                AND d.refclassid = 'pg_catalog.pg_proc'::regclass AND p.oid >= 16384
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                 WHERE e.classid = 'pg_catalog.pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
             UNION
             SELECT 'o ' || pg_catalog.md5(pg_catalog.pg_get_functiondef(o.oprcode)) || ' ' || o.oid::regoperator::text
               FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid
              WHERE d.classid = 'pg_catalog.{class}'::regclass AND d.objid = {objid}
                AND d.refclassid = 'pg_catalog.pg_operator'::regclass AND o.oid >= 16384
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                 WHERE e.classid = 'pg_catalog.pg_operator'::regclass AND e.objid = o.oid AND e.deptype = 'e')
           ) calls ORDER BY 1)"
    )
}

/// Of the application's functions and operators `calls` ([`app_calls`],
/// read on the source), those the destination lacks or defines otherwise,
/// as `name(argtypes)` or `operator <!>(text,text)`: a trial there would
/// compute with its own. The same definitions on both sides compute alike,
/// as a built-in does.
async fn differing_calls(dest: &Client, calls: &[String]) -> Result<Vec<String>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let mut kinds = Vec::new();
    let mut sums = Vec::new();
    let mut sigs = Vec::new();
    for c in calls {
        let mut parts = c.splitn(3, ' ');
        kinds.push(parts.next().unwrap_or_default().to_string());
        sums.push(parts.next().unwrap_or_default().to_string());
        sigs.push(parts.next().unwrap_or_default().to_string());
    }
    query_map(
        dest,
        "SELECT CASE x.kind WHEN 'o' THEN 'operator ' || x.sig ELSE x.sig END
           FROM unnest($1::text[], $2::text[], $3::text[]) x(kind, sum, sig)
          WHERE x.sum IS DISTINCT FROM (CASE x.kind
                  WHEN 'f' THEN pg_catalog.md5(pg_catalog.pg_get_functiondef(pg_catalog.to_regprocedure(x.sig)))
                  ELSE pg_catalog.md5(pg_catalog.pg_get_functiondef(
                         (SELECT o.oprcode FROM pg_catalog.pg_operator o WHERE o.oid = pg_catalog.to_regoperator(x.sig))))
                END)
          ORDER BY 1",
        &[&kinds, &sums, &sigs],
        "comparing the application's functions",
        |r| r.get(0),
    )
    .await
}

/// Why a key or a constraint over `columns` is not tried but left to the
/// copy: a column the source generates (the destination's values are not
/// what the copy writes), one only the source has, one whose type changes;
/// with `ordered` (a CHECK compares under the column's collation and its
/// enum's order, where a unique index names its collations and only tells
/// equal from unequal), one whose collation changes, or whose enum has
/// other labels or another order.
fn left_to_copy(t: &Tried<'_>, columns: &[String], ordered: bool) -> Option<String> {
    columns.iter().find_map(|c| {
        let shown = display_ident(c);
        let s = t.src_cols.iter().find(|s| &s.name == c)?;
        match t.dest_by_name.get(c.as_str()) {
            None => Some(format!("column {shown} is only in the source")),
            Some(d) if s.generated && !d.generated => {
                Some(format!("column {shown} is generated in the source"))
            }
            Some(d) if s.qual != d.qual => Some(format!(
                "column {shown} changes type ({} becomes {})",
                d.format, s.format
            )),
            Some(d) if stored_as(s) != stored_as(d) => Some(format!(
                "column {shown}'s domain {} is over another type in the source",
                s.format
            )),
            Some(d) if ordered && s.labels != d.labels => Some(format!(
                "column {shown}'s enum {} has other labels, or in another order, in the source",
                s.format
            )),
            Some(d) if ordered && s.collation != d.collation => {
                Some(format!("column {shown}'s collation changes"))
            }
            Some(_) => None,
        }
    })
}

async fn unique_indexes(client: &Client, rel: u32) -> Result<Vec<UniqueIndex>> {
    query_map(
        client,
        &format!("SELECT ic.relname::text,
                ARRAY(SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true)
                        FROM pg_catalog.generate_series(1, i.indnkeyatts) k ORDER BY k),
                ARRAY(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       WHERE k.ord <= i.indnkeyatts ORDER BY k.ord),
                -- The columns it reads: its plain ones (a constraint's index
                -- records no dependency of its own on them) and those its
                -- expressions and WHERE use.
                ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = i.indrelid
                         AND (a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1])
                              OR a.attnum IN (SELECT d.refobjsubid FROM pg_catalog.pg_depend d
                                               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = i.indexrelid
                                                 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = i.indrelid))
                         AND a.attnum > 0
                       ORDER BY a.attnum),
                ARRAY(SELECT CASE WHEN co.oid IS NULL THEN ''
                                  WHEN co.oid = 100 THEN 'pg_catalog.\"default\"'
                                  WHEN co.collisdeterministic THEN 'pg_catalog.\"C\"'
                                  ELSE pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END
                        FROM unnest(i.indcollation::oid[]) WITH ORDINALITY k(coll, ord)
                        LEFT JOIN pg_catalog.pg_collation co ON co.oid = k.coll
                        LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                       ORDER BY k.ord),
                ARRAY(SELECT CASE WHEN co.collisdeterministic THEN '' ELSE coalesce(cn.nspname::text, '') END
                        FROM unnest(i.indcollation::oid[]) WITH ORDINALITY k(coll, ord)
                        LEFT JOIN pg_catalog.pg_collation co ON co.oid = k.coll
                        LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                       ORDER BY k.ord),
                pg_catalog.pg_get_expr(i.indpred, i.indrelid),
                coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::bool, false),
                i.indexprs IS NOT NULL,
                {}
           FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
          WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid
          ORDER BY ic.relname",
            app_calls("pg_class", "i.indexrelid")
        ),
        &[&rel],
        "listing unique indexes",
        |r| UniqueIndex {
            name: r.get(0),
            keys: r.get(1),
            columns: r.get(2),
            reads: r.get(3),
            collations: r.get(4),
            collation_schemas: r.get(5),
            predicate: r.get(6),
            nulls_not_distinct: r.get(7),
            expressions: r.get(8),
            functions: r.get(9),
        },
    )
    .await
}

/// Do the destination's rows of a preserved table hold under each unique
/// index the source's table has and the destination's lacks (a new `UNIQUE`,
/// a unique index under a case-insensitive collation)? The sync's copy
/// would fail on the second row of a duplicate after the whole copy
/// ("duplicate key value violates unique constraint"); the dry run says so
/// first, naming the key. Tried as `GROUP BY` the index's columns under its
/// collations (one of a migrated schema as a temporary copy of its
/// definition), over the rows its predicate covers, for a bounded time, in a
/// transaction that is rolled back; an index on an expression (`lower(email)`)
/// over the expression. One over a column the
/// copy writes otherwise than the destination holds it ([`left_to_copy`]),
/// or whose WHERE calls the application's functions or operators, is not
/// either, and says so, as does a trial that fails or finds no time left:
/// no answer is not an answer.
async fn unique_problems(t: &Tried<'_>, schemas: &[String]) -> Result<Vec<Fit>> {
    let theirs = unique_indexes(t.dest, t.dest_oid).await?;
    let set = |c: &[String], k: &[String]| -> std::collections::BTreeSet<(String, String)> {
        c.iter().cloned().zip(k.iter().cloned()).collect()
    };
    let mut out = Vec::new();
    for mut u in unique_indexes(t.source, t.src_oid).await? {
        if u.keys.is_empty() {
            continue;
        }
        // Only the application's functions the destination computes
        // otherwise count: with them a destination index of the same text
        // holds nothing of the source's.
        u.functions = differing_calls(t.dest, &u.functions).await?;
        let retyped = u.reads.iter().any(|c| may_merge(t, c));
        // Held already: the destination has a unique index on the same
        // columns under the same collations, over all its rows or the
        // same ones, and of the same types (a unique `text` column that
        // becomes `citext` holds nothing of the new key).
        let held = u.functions.is_empty()
            && !retyped
            && theirs.iter().any(|d| {
                (d.predicate.is_none() || d.predicate == u.predicate)
                    && (d.nulls_not_distinct || !u.nulls_not_distinct)
                    && set(&d.keys, &d.collations) == set(&u.keys, &u.collations)
            });
        // The sync's own key holds on the destination by construction.
        let is_key = u.predicate.is_none()
            && !u.expressions
            && u.collation_schemas.iter().all(String::is_empty)
            && u.columns.iter().collect::<HashSet<_>>() == t.key.iter().collect::<HashSet<_>>();
        if held || is_key {
            continue;
        }
        // A key column whose type changes is tried as the copy stores it
        // (`email::citext`), where it can be (see [`key_casts`]).
        let (casts, answered) = key_casts(t, &u, schemas).await?;
        let reads: Vec<String> = u
            .reads
            .iter()
            .filter(|c| !answered.contains(*c))
            .cloned()
            .collect();
        // An expression (`lower(email)`) computes under its column's
        // collation: one that changes is not tried here either.
        if let Some(why) = left_to_copy(t, &reads, u.expressions) {
            out.push(Fit::NoAnswer(format!(
                "whether the destination's rows hold under the source's unique index {} was not tried ({why}); the sync's copy finds a duplicate, naming it",
                display_ident(&u.name)
            )));
            continue;
        }
        if !u.functions.is_empty() {
            out.push(Fit::NoAnswer(format!(
                "whether the destination's rows hold under the source's unique index {} was not tried: it calls {}, which the destination defines otherwise or lacks; the sync's copy finds a duplicate, naming it",
                display_ident(&u.name),
                u.functions.join(", ")
            )));
            continue;
        }
        let Some(timeout) = t.time_left() else {
            out.push(Fit::NoAnswer(format!(
                "whether the destination's rows hold under the source's unique index {} was not tried ({}); the sync's copy finds a duplicate, naming it",
                display_ident(&u.name),
                time_spent()
            )));
            continue;
        };
        out.push(try_unique(t.source, t.dest, t.live, &u, &casts, schemas, timeout).await?);
    }
    Ok(out)
}

/// The type a column's values are stored as (without quotes), its typmod,
/// and whether it is an array of them: a domain's base type, through
/// domains over domains (`email2` over `email` over `text`: `text`), an
/// array's element type, else its own.
fn stored_as(c: &ColType) -> (String, i32, bool) {
    let plain = |q: &str| q.replace('"', "");
    match &c.root_over {
        Some((root, typmod)) => (plain(root), *typmod, c.is_array),
        _ if c.is_array => (format!("{}.{}", c.base_schema, c.base_name), c.typmod, true),
        _ => (plain(&c.qual), c.typmod, false),
    }
}

/// Could the copy's conversion of column `c` from the destination's type
/// to the source's make two of the destination's distinct values equal, so
/// that a key that holds there no longer does? `text` to `citext`,
/// `numeric(10,2)` to `numeric(10,0)`, a same-named domain now over
/// `citext`: yes. A widening that keeps every value apart (`int` to
/// `bigint`, `varchar(50)` to `text`, a longer `varchar`): no, and the key
/// needs no trial for it (a scan of a big table, for nothing).
fn may_merge(t: &Tried<'_>, c: &str) -> bool {
    match (
        t.dest_by_name.get(c),
        t.src_cols.iter().find(|s| s.name == c),
    ) {
        (Some(d), Some(s)) => merges(d, s),
        _ => false,
    }
}

const TEXTS: &[&str] = &["pg_catalog.text", "pg_catalog.varchar"];

/// Types whose every value converts to the other types listed, distinct
/// values staying distinct (the typmod aside: see [`typmod_narrows`]).
const WIDER: &[(&str, &[&str])] = &[
    (
        "pg_catalog.int2",
        &[
            "pg_catalog.int4",
            "pg_catalog.int8",
            "pg_catalog.numeric",
            "pg_catalog.float4",
            "pg_catalog.float8",
        ],
    ),
    (
        "pg_catalog.int4",
        &["pg_catalog.int8", "pg_catalog.numeric", "pg_catalog.float8"],
    ),
    ("pg_catalog.int8", &["pg_catalog.numeric"]),
    ("pg_catalog.float4", &["pg_catalog.float8"]),
    ("pg_catalog.text", TEXTS),
    ("pg_catalog.varchar", TEXTS),
    ("pg_catalog.bpchar", TEXTS),
];

/// [`may_merge`] from the destination's column `d` to the source's `s`.
fn merges(d: &ColType, s: &ColType) -> bool {
    let ((from, from_mod, from_array), (to, to_mod, to_array)) = (stored_as(d), stored_as(s));
    if d.qual == s.qual && d.typmod == s.typmod && (&from, from_array) == (&to, to_array) {
        return false;
    }
    if from_array != to_array {
        return true;
    }
    if from == to {
        // Only the typmod: a length bounds a string (too long a value is
        // refused, never cut); a lower scale or precision rounds.
        return !(TEXTS.contains(&to.as_str()) || to == "pg_catalog.bpchar")
            && typmod_narrows(&to, from_mod, to_mod) != Some(false);
    }
    !WIDER
        .iter()
        .any(|(f, tos)| *f == from && tos.contains(&to.as_str()))
}

/// Does every value of column `d` convert to the source's `s` as it is,
/// without an error or a change (`int` to `bigint`, `varchar(20)` to `text`
/// or `varchar(50)`, `numeric(10,2)` to `numeric(12,2)`, `timestamp(3)` to
/// `timestamp`), the source's being no domain (its NOT NULL and CHECKs may
/// refuse some)? Then there is nothing to try.
fn widens(d: &ColType, s: &ColType) -> bool {
    let ((from, from_mod, from_array), (to, to_mod, to_array)) = (stored_as(d), stored_as(s));
    // A domain's NOT NULL and CHECKs may refuse what its type takes.
    if from_array != to_array || s.domain_over.is_some() {
        return false;
    }
    if from == to {
        return typmod_narrows(&to, from_mod, to_mod) == Some(false);
    }
    to_mod == -1
        && WIDER
            .iter()
            .any(|(f, tos)| *f == from && tos.contains(&to.as_str()))
}

/// Whether changing type `ty`'s typmod from `from` to `to` can refuse or
/// change a value (`Some(true)`: a shorter string, a lower scale or
/// precision), cannot (`Some(false)`: none, or a wider one), or None for a
/// type whose typmod this does not know.
fn typmod_narrows(ty: &str, from: i32, to: i32) -> Option<bool> {
    if to == -1 || from == to {
        return Some(false);
    }
    if from == -1 {
        return Some(true);
    }
    match ty {
        // Characters after the 4-byte header.
        "pg_catalog.varchar" | "pg_catalog.bpchar" => Some(to < from),
        "pg_catalog.numeric" => {
            let precision_scale =
                |m: i32| (((m - 4) >> 16) & 0xffff, (((m - 4) & 0x7ff) ^ 1024) - 1024);
            let ((fp, fs), (tp, ts)) = (precision_scale(from), precision_scale(to));
            Some(ts < fs || tp - ts < fp - fs)
        }
        // Fractional digits of seconds.
        "pg_catalog.timestamp"
        | "pg_catalog.timestamptz"
        | "pg_catalog.time"
        | "pg_catalog.timetz" => Some(to < from),
        _ => None,
    }
}

/// For each key of a unique index (`u.keys`), the type to cast the
/// destination's column to where the copy's conversion may merge its
/// values ([`may_merge`]: `text` to `citext`), as this session names it;
/// None for the others. The copy stores such a value by assignment, and an
/// assignment cast is the explicit one (where the two differ, the column
/// trial refuses first). Only a plain key column the index's WHERE does not
/// read, of a type the destination has now: the source's, or for a domain
/// the migration creates (not here yet), the type it is over where that is
/// not the migration's. Also the columns so answered, with those whose
/// change keeps every value apart: the others are left to the copy, said.
async fn key_casts(
    t: &Tried<'_>,
    u: &UniqueIndex,
    schemas: &[String],
) -> Result<(Vec<Option<String>>, HashSet<String>)> {
    let mut out = vec![None; u.keys.len()];
    let mut answered = HashSet::new();
    if u.expressions {
        return Ok((out, answered));
    }
    let Some(in_where) = u
        .predicate
        .as_deref()
        .map_or(Some(HashSet::new()), columns_read)
    else {
        return Ok((out, answered));
    };
    let migrated = |schema: &str, ext: bool| schemas.iter().any(|m| m == schema) && !ext;
    for (i, c) in u.columns.iter().enumerate() {
        let Some(s) = t.src_cols.iter().find(|s| &s.name == c) else {
            continue;
        };
        if s.generated || in_where.contains(c) || !t.dest_by_name.contains_key(c.as_str()) {
            continue;
        }
        if !may_merge(t, c) {
            answered.insert(c.clone());
            continue;
        }
        let (target, typmod) = if !migrated(&s.base_schema, s.base_ext) {
            (s.qual.as_str(), s.typmod)
        } else {
            match &s.domain_over {
                Some((over, schema, typmod)) if !migrated(schema, s.domain_over_ext) => {
                    (over.as_str(), *typmod)
                }
                _ => continue,
            }
        };
        out[i] = type_named(t.dest, target, typmod).await?;
        // An array of a domain the migration creates: of the type it is over.
        if s.is_array && migrated(&s.base_schema, s.base_ext) {
            out[i] = out[i].take().map(|ty| format!("{ty}[]"));
        }
        if out[i].is_some() {
            answered.insert(c.clone());
        }
    }
    Ok((out, answered))
}

/// The column names an expression of one table reads (`deleted_at IS
/// NULL` reads `deleted_at`); None where it does not parse.
fn columns_read(expr: &str) -> Option<HashSet<String>> {
    let parsed = pg_query::parse(&format!("SELECT WHERE {expr}"), 0).ok()?;
    Some(
        parsed
            .protobuf
            .nodes()
            .into_iter()
            .filter_map(|(node, ..)| match node {
                pg_query::NodeRef::ColumnRef(r) => string_list(&r.fields).pop(),
                _ => None,
            })
            .collect(),
    )
}

/// One trial of [`unique_problems`].
async fn try_unique(
    source: &Client,
    dest: &Client,
    live: &str,
    u: &UniqueIndex,
    casts: &[Option<String>],
    schemas: &[String],
    timeout: Duration,
) -> Result<Fit> {
    let tried = bounded(
        dest,
        "unique keys",
        timeout,
        unique_trial(source, dest, live, u, casts, schemas),
    )
    .await?;
    let keys = u.keys.join(", ");
    Ok(match tried {
        Ok(None) => Fit::Fits,
        Ok(Some(values)) => Fit::DoesNot(format!(
            "the destination's rows do not hold under the source's unique index {} ({keys}): Key ({keys})=({values}) is held by more than one row; the sync's copy would fail: change those rows first, or do not preserve the table",
            display_ident(&u.name),
        )),
        // A key expression that fails on a row (`(data->>'id')::int` on
        // 'x', a division by zero): the copy fails on it as surely.
        Err(e) if data_exception(&e) => Fit::DoesNot(format!(
            "a row of the destination's fails the source's unique index {} ({keys}): {}; the sync's copy would fail: change those rows first, or do not preserve the table",
            display_ident(&u.name),
            no_answer(&e)
        )),
        // Out of time, a lock held, no TEMP privilege for a collation, a
        // WHERE over a column only the source has: no answer, said.
        Err(e) => Fit::NoAnswer(format!(
            "whether the destination's rows hold under the source's unique index {} could not be tried ({}); the sync's copy finds a duplicate, naming it",
            display_ident(&u.name),
            no_answer(&e)
        )),
    })
}

/// Run a trial (`what`: what it tries, for errors) in a transaction of its
/// own on the destination, bounded in time and lock waits, rolled back
/// whatever it did. The trial's own error is its result, not the caller's.
async fn bounded<T>(
    dest: &Client,
    what: &str,
    timeout: Duration,
    trial: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<Result<T, tokio_postgres::Error>> {
    exec(
        dest,
        &format!(
            "BEGIN; SET LOCAL lock_timeout = '{APPLY_LOCK_TIMEOUT}'; SET LOCAL statement_timeout = '{}ms'",
            timeout.as_millis().max(1)
        ),
        &format!("starting a trial of the preserved rows' {what}"),
    )
    .await?;
    let tried = trial.await;
    exec(
        dest,
        "ROLLBACK",
        &format!("ending a trial of the preserved rows' {what}"),
    )
    .await?;
    Ok(tried)
}

/// A data exception (class 22: invalid input, division by zero, out of
/// range): the row, not the trial, is at fault.
fn data_exception(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22"))
}

/// Why a trial got no answer, in a few words.
fn no_answer(e: &tokio_postgres::Error) -> String {
    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
        "out of time".to_string()
    } else {
        crate::pg::conn::connect::describe_pg_error(e)
    }
}

/// A `CHECK` constraint of a table, as [`check_problems`] compares and
/// tries it.
struct Check {
    name: String,
    /// Its expression as the server prints it.
    expr: String,
    /// The columns it reads.
    columns: Vec<String>,
    /// Functions it calls that are not built in (see [`UniqueIndex`]).
    functions: Vec<String>,
}

async fn checks(client: &Client, rel: u32) -> Result<Vec<Check>> {
    query_map(
        client,
        &format!("SELECT con.conname::text, pg_catalog.pg_get_expr(con.conbin, con.conrelid),
                ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                       WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey) ORDER BY a.attnum),
                {}
           FROM pg_catalog.pg_constraint con
          WHERE con.conrelid = $1 AND con.contype = 'c' AND con.convalidated
          ORDER BY 1",
            app_calls("pg_constraint", "con.oid")
        ),
        &[&rel],
        "listing check constraints",
        |r| Check {
            name: r.get(0),
            expr: r.get(1),
            columns: r.get(2),
            functions: r.get(3),
        },
    )
    .await
}

/// Do the destination's rows of a preserved table pass each `CHECK` the
/// source's table has and the destination's lacks (`CHECK (price > 0)` new
/// in this version)? The sync's copy would fail on the first row that does
/// not ("violates check constraint") after the whole copy; the dry run says
/// so first, naming the constraint and one row's key. Tried as `WHERE NOT
/// (check)` (a CHECK passes on NULL, as here), in a rolled-back transaction,
/// bounded in time. A constraint over a column the copy writes otherwise
/// ([`left_to_copy`]) or calling the application's functions, or a trial
/// that fails, is a warning.
async fn check_problems(t: &Tried<'_>) -> Result<Vec<Fit>> {
    let theirs: HashSet<String> = checks(t.dest, t.dest_oid)
        .await?
        .into_iter()
        .map(|c| c.expr)
        .collect();
    let mut out = Vec::new();
    for mut c in checks(t.source, t.src_oid).await? {
        c.functions = differing_calls(t.dest, &c.functions).await?;
        if c.functions.is_empty() && theirs.contains(&c.expr) {
            continue;
        }
        let shown = display_ident(&c.name);
        if let Some(why) = left_to_copy(t, &c.columns, true) {
            out.push(Fit::NoAnswer(format!(
                "whether the destination's rows pass the source's check constraint {shown} was not tried ({why}); the sync's copy finds a row that does not, naming it"
            )));
            continue;
        }
        if !c.functions.is_empty() {
            out.push(Fit::NoAnswer(format!(
                "whether the destination's rows pass the source's check constraint {shown} was not tried: it calls {}, which the destination defines otherwise or lacks; the sync's copy finds a row that does not, naming it",
                c.functions.join(", ")
            )));
            continue;
        }
        // The first row's key values, as PostgreSQL shows a key.
        let values = if t.key.is_empty() {
            "NULL::text".to_string()
        } else {
            format!(
                "pg_catalog.concat_ws(', ', {})",
                t.key
                    .iter()
                    .map(|k| format!("coalesce({}::text, 'null')", quote_ident(k)))
                    .join(", ")
            )
        };
        let sql = format!(
            "SELECT {OWN_STATEMENT} {values} FROM {} WHERE NOT ({}) LIMIT 1",
            t.live, c.expr
        );
        let names = t.key.iter().map(|k| display_ident(k)).join(", ");
        let Some(timeout) = t.time_left() else {
            out.push(Fit::NoAnswer(format!(
                "whether the destination's rows pass the source's check constraint {shown} was not tried ({}); the sync's copy finds a row that does not, naming it",
                time_spent()
            )));
            continue;
        };
        let tried = bounded(t.dest, "check constraints", timeout, async {
            Ok(t.dest
                .query_opt(&sql, &[])
                .await?
                .map(|r| r.get::<_, Option<String>>(0)))
        })
        .await?;
        out.push(match tried {
            Ok(None) => Fit::Fits,
            Ok(Some(first)) => Fit::DoesNot(format!(
                "the destination's rows do not all pass the source's check constraint {shown} ({}){}; the sync's copy would fail: change those rows first, or do not preserve the table",
                c.expr,
                first
                    .map(|v| format!(" (Key ({names})=({v}), for one)"))
                    .unwrap_or_default()
            )),
            Err(e) if data_exception(&e) => Fit::DoesNot(format!(
                "a row of the destination's fails the source's check constraint {shown} ({}) with an error: {}; the sync's copy would fail: change those rows first, or do not preserve the table",
                c.expr,
                no_answer(&e)
            )),
            Err(e) => Fit::NoAnswer(format!(
                "whether the destination's rows pass the source's check constraint {shown} could not be tried ({}); the sync's copy finds a row that does not, naming it",
                no_answer(&e)
            )),
        });
    }
    Ok(out)
}

/// The trial itself, in [`try_unique`]'s transaction: the key values of a
/// duplicate, if there is one.
async fn unique_trial(
    source: &Client,
    dest: &Client,
    live: &str,
    u: &UniqueIndex,
    casts: &[Option<String>],
    schemas: &[String],
) -> Result<Option<String>, tokio_postgres::Error> {
    let mut group = Vec::new();
    let mut shown = Vec::new();
    let mut not_null = Vec::new();
    for (i, key) in u.keys.iter().enumerate() {
        // A column's name or an expression, as the index has it; a column
        // as the copy stores it.
        let c = match casts.get(i) {
            Some(Some(ty)) => format!("(({key})::{ty})"),
            _ => format!("({key})"),
        };
        let coll = u.collations.get(i).map(String::as_str).unwrap_or("");
        let coll_schema = u.collation_schemas.get(i).map(String::as_str).unwrap_or("");
        let collate = if coll.is_empty() {
            String::new()
        } else if schemas.iter().any(|m| m == coll_schema) {
            // Created with the shadow, not here yet: a temporary one of
            // its definition.
            let name = format!("pg_temp.pgshift_coll_{i}");
            let def: Option<String> = source
                .query_opt(
                    "SELECT CASE coalesce(pg_catalog.to_jsonb(c) ->> 'collprovider', 'c')
                              WHEN 'i' THEN 'provider = icu, locale = ' || pg_catalog.quote_literal(coalesce(pg_catalog.to_jsonb(c) ->> 'colllocale', pg_catalog.to_jsonb(c) ->> 'colliculocale', c.collcollate))
                              WHEN 'b' THEN 'provider = builtin, locale = ' || pg_catalog.quote_literal(pg_catalog.to_jsonb(c) ->> 'colllocale')
                              WHEN 'c' THEN 'provider = libc, lc_collate = ' || pg_catalog.quote_literal(c.collcollate) || ', lc_ctype = ' || pg_catalog.quote_literal(c.collctype)
                            END || ', deterministic = ' || c.collisdeterministic::text
                       FROM pg_catalog.pg_collation c WHERE c.oid = $1::text::regcollation",
                    &[&coll],
                )
                .await?
                .and_then(|r| r.get(0));
            let Some(def) = def else {
                return Ok(None);
            };
            dest.batch_execute(&format!("CREATE COLLATION {name} ({def})"))
                .await?;
            format!(" COLLATE {name}")
        } else {
            format!(" COLLATE {coll}")
        };
        group.push(format!("{c}{collate}"));
        shown.push(format!(
            "(pg_catalog.array_agg(coalesce({c}::text, 'null')))[1]"
        ));
        not_null.push(format!("{c} IS NOT NULL"));
    }
    // The rows the index covers, and of those the keys it compares (NULLs
    // are distinct unless it says otherwise). The WHERE guards the keys, as
    // in the index itself: `(100 / n) WHERE n <> 0` never divides by a zero
    // it excludes, whatever order the planner would test them in.
    let keys_compared = if u.nulls_not_distinct || not_null.is_empty() {
        None
    } else {
        Some(not_null.join(" AND "))
    };
    let filter = match (&u.predicate, keys_compared) {
        (Some(p), Some(k)) => format!(" WHERE CASE WHEN ({p}) THEN {k} ELSE false END"),
        (Some(p), None) => format!(" WHERE CASE WHEN ({p}) THEN true ELSE false END"),
        (None, Some(k)) => format!(" WHERE {k}"),
        (None, None) => String::new(),
    };
    let sql = format!(
        "SELECT {OWN_STATEMENT} pg_catalog.concat_ws(', ', {}) FROM {live}{filter} GROUP BY {} HAVING count(*) > 1 LIMIT 1",
        shown.join(", "),
        group.join(", ")
    );
    Ok(dest.query_opt(&sql, &[]).await?.map(|r| r.get(0)))
}

/// Data exceptions (too long, out of range, pgvector's dimensions), a
/// domain's CHECK, and a NULL where the source allows none: the rows do not
/// fit. Anything else (out of time, a lock, no temporary tables allowed) is
/// no answer.
fn does_not_fit(code: &str) -> bool {
    code.starts_with("22") || code == "23502" || code == "23514"
}

/// In [`fit_problem`]'s failed trial (rolled back to its savepoint): the key
/// of the first row of `live` whose `d` does not fit `target` (as
/// PostgreSQL's DETAIL shows one, `(id)=(1234)`), if one is found in time.
async fn first_misfit(
    dest: &Client,
    live: &str,
    key: &[String],
    d: &ColType,
    target: &str,
    not_null: bool,
    via_text: bool,
) -> Result<Option<String>> {
    let null_check = if not_null {
        "IF v IS NULL THEN RETURN false; END IF; "
    } else {
        ""
    };
    let value = if via_text {
        format!("v::text::{target}")
    } else {
        "v".to_string()
    };
    dest.batch_execute(&format!(
        "ROLLBACK TO SAVEPOINT fit;
         CREATE FUNCTION pg_temp.pgshift_fits(v {}) RETURNS boolean LANGUAGE plpgsql AS $pgshift$
           BEGIN {null_check}
             -- Declared in a block of its own: a NOT NULL domain's variable
             -- fails where it is declared, which the handler below catches.
             DECLARE x {target} := {value}; BEGIN RETURN true; END;
           EXCEPTION WHEN OTHERS THEN RETURN false; END $pgshift$",
        d.format
    ))
    .await?;
    let cols: Vec<String> = key
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect();
    let row = dest
        .query_opt(
            &format!(
                "SELECT {OWN_STATEMENT} pg_catalog.concat_ws(', ', {}) FROM {live} WHERE NOT pg_temp.pgshift_fits({}) LIMIT 1",
                cols.join(", "),
                quote_ident(&d.name)
            ),
            &[],
        )
        .await?;
    Ok(row.map(|r| {
        format!(
            "({})=({})",
            key.iter().map(|k| display_ident(k)).join(", "),
            r.get::<_, String>(0)
        )
    }))
}

/// How long [`fit_problem`]'s trial may take, per column; and each trial
/// of a key or a constraint.
const FIT_TRIAL_BUDGET: Duration = Duration::from_secs(10);

/// How long the trials of columns, keys and constraints ([`fit_problem`],
/// [`unique_problems`], [`check_problems`]) may take in all, over every
/// preserved table: each scans (and sorts) a live table of the
/// application. Past it, the rest is not tried, and says so.
const TRIALS_BUDGET: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The live description of a synced table and the SQL built from it
// ---------------------------------------------------------------------------------------

/// `SET LOCAL …` under which a value that goes through its text form
/// ([`Conv::ViaText`]) comes back equal, whatever the destination database's
/// or role's own settings ([`settings::ROUND_TRIP`]): for every transaction
/// of pgshift's that copies or replays rows; the trigger functions carry the
/// same settings as their own `SET` clauses.
fn via_text_local() -> String {
    settings::set_local(settings::ROUND_TRIP)
}

/// How a value of public's column becomes a value of shadow's column.
#[derive(Debug, Clone)]
enum Conv {
    /// Same type.
    Same,
    /// Different types with an assignment cast; the shadow type for comparisons.
    Assign(String),
    /// A type the restore created next to the shadow table (enum, composite,
    /// domain, arrays of them): through its text form.
    ViaText(String),
}

impl Conv {
    /// The expression stored into the shadow column.
    fn value(&self, expr: &str) -> String {
        match self {
            Conv::Same | Conv::Assign(_) => expr.to_string(),
            Conv::ViaText(t) => format!("({expr})::text::{t}"),
        }
    }
    /// The expression compared with the shadow column.
    fn compared(&self, expr: &str) -> String {
        match self {
            Conv::Same => expr.to_string(),
            Conv::Assign(t) => format!("({expr})::{t}"),
            Conv::ViaText(t) => format!("({expr})::text::{t}"),
        }
    }
}

#[derive(Debug, Clone)]
struct LiveCol {
    /// Quoted column name.
    name: String,
    conv: Conv,
}

#[derive(Debug, Clone)]
struct LiveKey {
    /// Quoted column name.
    name: String,
    /// The column's name for people (quoted only where it must be).
    shown: String,
    /// Changelog column: `k1`, `k2`, …
    log_col: String,
    /// Qualified type of public's key column (the changelog column's type).
    log_type: String,
    conv: Conv,
}

/// Which changelog entries a replay statement takes (alias `l`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entries {
    /// Those of the batch picked (`$1`, their ids).
    Picked,
    /// All of them: under the swap's locks nothing adds one.
    All,
}

impl Entries {
    fn filter(self) -> &'static str {
        match self {
            Entries::Picked => "l.id = ANY($1)",
            Entries::All => "true",
        }
    }
}

/// A synced table as the catalog has it now. Relations are found by oid, so this
/// works before and after the swap moved the schemas.
#[derive(Debug, Clone)]
struct Live {
    /// For people: `users`, `billing.users`.
    name: String,
    /// The bare table name (the trial's temporary copy is named after it).
    table: String,
    public_rel: String,
    shadow_rel: String,
    log_rel: String,
    cols: Vec<LiveCol>,
    keys: Vec<LiveKey>,
    /// The shadow table's deferrable constraints, qualified and quoted.
    /// Checked at commit, a deferred constraint of the shadow table would fail
    /// the application's own COMMIT for a row the sync trigger applied (its
    /// EXCEPTION block long gone), and a replay at its COMMIT: each checks them
    /// at once instead (see `Live::immediate`).
    deferrable: Vec<String>,
}

/// A column's type for SQL generation: `"schema"."type"` (arrays `…[]`), and
/// what the type (or element type) is wherever it lives: its name and kind.
struct AttrType {
    type_oid: u32,
    qual: String,
    base: (String, i8),
    /// For a domain (or an array of one): the type it is over, and that
    /// type's category (`S` for the string types).
    domain_over: Option<(u32, String)>,
}

async fn attr_types(client: &Client, rel: u32) -> Result<HashMap<String, AttrType>> {
    Ok(attr_types_of(client, &[rel])
        .await?
        .remove(&rel)
        .unwrap_or_default())
}

/// [`attr_types`] of each of `rels`, in one round trip.
async fn attr_types_of(
    client: &Client,
    rels: &[u32],
) -> Result<HashMap<u32, HashMap<String, AttrType>>> {
    let rows: Vec<(u32, String, AttrType)> = query_map(
        client,
            "SELECT a.attrelid, a.attname::text, a.atttypid,
                    CASE WHEN t.typcategory = 'A' AND t.typelem <> 0
                         THEN pg_catalog.quote_ident(en.nspname) || '.' || pg_catalog.quote_ident(et.typname) || '[]'
                         ELSE pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.typname) END,
                    CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN et.typname || '[]'
                         ELSE t.typname::text END,
                    CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN et.typtype ELSE t.typtype END,
                    bt.oid, bt.typcategory::text
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
               JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
               LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem
               LEFT JOIN pg_catalog.pg_namespace en ON en.oid = et.typnamespace
               LEFT JOIN pg_catalog.pg_type bt
                 ON bt.oid = CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN et.typbasetype ELSE t.typbasetype END
              WHERE a.attrelid = ANY ($1::pg_catalog.oid[]) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&rels],
        "reading column types",
        |r| {
            (
                r.get::<_, u32>(0),
                r.get::<_, String>(1),
                AttrType {
                    type_oid: r.get(2),
                    qual: r.get(3),
                    base: (r.get(4), r.get(5)),
                    domain_over: r
                        .get::<_, Option<u32>>(6)
                        .map(|oid| (oid, r.get::<_, Option<String>>(7).unwrap_or_default())),
                },
            )
        },
    )
    .await?;
    let mut out: HashMap<u32, HashMap<String, AttrType>> = HashMap::new();
    for (rel, name, ty) in rows {
        out.entry(rel).or_default().insert(name, ty);
    }
    Ok(out)
}

/// `"schema"."name"` of a relation by oid, if it exists.
async fn rel_name(client: &Client, oid: u32) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error_as(e, "looking up a table"))?
        .map(|r| r.get(0)))
}

/// Two types of the same name and kind are a type of a migrated schema as
/// the destination has it and as the restore created it in a shadow schema
/// (the table's own or another's: prepare accepts no other pair of a
/// migrated schema's types), and no cast joins them: through the text form.
/// But two domains (or arrays of them) over the same type, or over string
/// types, convert by assignment, as INSERT does: through the text form, an
/// explicit cast, a value too long for the shadow's `varchar(5)` or
/// `char(3)` was cut short without a word.
fn conv_for(public: &AttrType, shadow: &AttrType) -> Conv {
    let assignable_domains = match (&public.domain_over, &shadow.domain_over) {
        (Some((a, ca)), Some((b, cb))) => a == b || (ca == "S" && cb == "S"),
        _ => false,
    };
    if public.type_oid == shadow.type_oid {
        Conv::Same
    } else if public.base == shadow.base && !assignable_domains {
        Conv::ViaText(shadow.qual.clone())
    } else {
        Conv::Assign(shadow.qual.clone())
    }
}

/// Whether the preserved table can still be replayed: both tables there, with
/// every synced column and key column (`status` asks before the swap does).
pub async fn check_replayable(client: &Client, t: &SyncedTable) -> Result<()> {
    describe(client, t).await.map(|_| ())
}

async fn describe(client: &Client, t: &SyncedTable) -> Result<Live> {
    Ok(describe_all(client, &[t]).await?.remove(0))
}

/// [`describe`] of each of `tables`, in their order, in three round trips
/// whatever their number: the swap's final replay asks it under its locks,
/// where a few round trips per table added up to seconds with hundreds of
/// preserved tables written meanwhile.
async fn describe_all(client: &Client, tables: &[&SyncedTable]) -> Result<Vec<Live>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<u32> = tables.iter().flat_map(|t| [t.oid, t.shadow_oid]).collect();
    let names = rel_names(client, &oids).await?;
    let mut types = attr_types_of(client, &oids).await?;
    let shadow_oids: Vec<u32> = tables.iter().map(|t| t.shadow_oid).collect();
    let mut deferrable = deferrable_constraints(client, &shadow_oids).await?;
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let public_rel = names.get(&t.oid).cloned().with_context(|| {
            format!(
                "preserved table {}: its destination table is gone",
                t.shown()
            )
        })?;
        let shadow_rel = names
            .get(&t.shadow_oid)
            .cloned()
            .with_context(|| format!("preserved table {}: its shadow table is gone", t.shown()))?;
        out.push(live(
            t,
            public_rel,
            shadow_rel,
            &types.remove(&t.oid).unwrap_or_default(),
            &types.remove(&t.shadow_oid).unwrap_or_default(),
            deferrable.remove(&t.shadow_oid).unwrap_or_default(),
        )?);
    }
    Ok(out)
}

/// The deferrable constraints of each of `rels`, qualified and quoted, in
/// one round trip.
async fn deferrable_constraints(
    client: &Client,
    rels: &[u32],
) -> Result<HashMap<u32, Vec<String>>> {
    let rows: Vec<(u32, String)> = query_map(
        client,
        "SELECT c.conrelid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.conname)
           FROM pg_catalog.pg_constraint c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
          WHERE c.conrelid = ANY ($1::pg_catalog.oid[]) AND c.condeferrable
          ORDER BY 1, 2",
        &[&rels],
        "reading the deferrable constraints of the preserved tables",
        |r| (r.get(0), r.get(1)),
    )
    .await?;
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    for (rel, name) in rows {
        out.entry(rel).or_default().push(name);
    }
    Ok(out)
}

/// What a replay of `t` needs, from what [`describe_all`] read.
fn live(
    t: &SyncedTable,
    public_rel: String,
    shadow_rel: String,
    pub_types: &HashMap<String, AttrType>,
    sh_types: &HashMap<String, AttrType>,
    deferrable: Vec<String>,
) -> Result<Live> {
    let pair = |c: &str| -> Result<(&AttrType, &AttrType)> {
        match (pub_types.get(c), sh_types.get(c)) {
            (Some(p), Some(s)) => Ok((p, s)),
            _ => bail!(
                "preserved table {}: column {} is no longer in both tables",
                t.shown(),
                display_ident(c)
            ),
        }
    };
    let mut cols = Vec::new();
    for c in &t.columns {
        let (p, s) = pair(c)?;
        cols.push(LiveCol {
            name: quote_ident(c),
            conv: conv_for(p, s),
        });
    }
    let mut keys = Vec::new();
    for (i, c) in t.key.iter().enumerate() {
        let (p, s) = pair(c)?;
        keys.push(LiveKey {
            name: quote_ident(c),
            shown: display_ident(c),
            log_col: format!("k{}", i + 1),
            log_type: p.qual.clone(),
            conv: conv_for(p, s),
        });
    }
    Ok(Live {
        name: t.display(),
        table: t.name.clone(),
        deferrable,
        public_rel,
        shadow_rel,
        log_rel: qualified(META_SCHEMA, &t.changelog),
        cols,
        keys,
    })
}

/// `f` of each item, joined with `sep`.
fn joined<T>(items: &[T], sep: &str, f: impl Fn(&T) -> String) -> String {
    items.iter().map(f).join(sep)
}

impl Live {
    /// `SET CONSTRAINTS … IMMEDIATE;` for the shadow table's deferrable
    /// constraints (empty without any): what writes the shadow table checks
    /// them at its own statement, where the sync trigger's EXCEPTION block
    /// catches a violation and a replay's error names it, not at COMMIT. The
    /// mode lasts for the transaction (a subtransaction rolled back restores
    /// it) and touches no constraint but the shadow table's.
    fn immediate(&self) -> String {
        if self.deferrable.is_empty() {
            String::new()
        } else {
            format!("SET CONSTRAINTS {} IMMEDIATE;", self.deferrable.join(", "))
        }
    }
    fn col_list(&self) -> String {
        joined(&self.cols, ", ", |c| c.name.clone())
    }
    /// Values of the shared columns from rows aliased `alias`, converted.
    fn values(&self, alias: &str) -> String {
        joined(&self.cols, ", ", |c| {
            c.conv.value(&format!("{alias}.{}", c.name))
        })
    }
    fn key_list(&self) -> String {
        joined(&self.keys, ", ", |k| k.name.clone())
    }
    fn log_cols(&self) -> String {
        joined(&self.keys, ", ", |k| k.log_col.clone())
    }
    /// The changelog's key columns of rows aliased `alias`.
    fn log_keys_of(&self, alias: &str) -> String {
        joined(&self.keys, ", ", |k| format!("{alias}.{}", k.log_col))
    }
    /// The key columns of rows aliased `alias` (public-side rows).
    fn keys_of(&self, alias: &str) -> String {
        joined(&self.keys, ", ", |k| format!("{alias}.{}", k.name))
    }
    /// `s.k = conv(x.k)`: shadow rows `s` against public-typed keys of `x`
    /// (changelog rows when `from_log`, else transition rows).
    fn shadow_match(&self, s: &str, x: &str, from_log: bool) -> String {
        joined(&self.keys, " AND ", |k| {
            let col = if from_log { &k.log_col } else { &k.name };
            format!(
                "{s}.{} = {}",
                k.name,
                k.conv.compared(&format!("{x}.{col}"))
            )
        })
    }
    /// `ON CONFLICT (key) DO UPDATE SET …` (DO NOTHING when every column is key).
    fn upsert_action(&self) -> String {
        let key: HashSet<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        let sets: Vec<String> = self
            .cols
            .iter()
            .filter(|c| !key.contains(c.name.as_str()))
            .map(|c| format!("{} = EXCLUDED.{}", c.name, c.name))
            .collect();
        if sets.is_empty() {
            format!("ON CONFLICT ({}) DO NOTHING", self.key_list())
        } else {
            format!(
                "ON CONFLICT ({}) DO UPDATE SET {}",
                self.key_list(),
                sets.join(", ")
            )
        }
    }

    /// The initial copy and the full resync.
    fn copy_sql(&self) -> String {
        self.copy_into_sql(&self.shadow_rel)
    }

    /// The rows of `public.T` whose keys the changelog holds, into `target`.
    fn copy_logged_into_sql(&self, target: &str) -> String {
        format!(
            "{} WHERE ({}) IN (SELECT {} FROM {} l)",
            self.copy_into_sql(target),
            self.keys_of("p"),
            self.log_keys_of("l"),
            self.log_rel
        )
    }

    /// `public.T`'s rows into `target` (the shadow table, or the trial's copy
    /// of it).
    fn copy_into_sql(&self, target: &str) -> String {
        format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM ONLY {} p",
            target,
            self.col_list(),
            self.values("p"),
            self.public_rel
        )
    }

    fn changelog_ddl(&self, comment: &str) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{} {}", k.log_col, k.log_type))
            .collect();
        format!(
            "CREATE TABLE {log} (id bigserial PRIMARY KEY, op \"char\" NOT NULL, {keys})
                 WITH (autovacuum_vacuum_scale_factor = 0.01, vacuum_truncate = false);
             COMMENT ON TABLE {log} IS {comment};\n",
            log = self.log_rel,
            keys = keys.join(", "),
            comment = quote_literal(comment)
        )
    }

    /// The statement logging a trigger's keys.
    fn log_statement(&self, ev: Event) -> String {
        let log = &self.log_rel;
        let cols = self.log_cols();
        match ev {
            Event::Insert => format!(
                "INSERT INTO {log} (op, {cols}) SELECT 'I', {} FROM pgshift_new n;",
                self.keys_of("n")
            ),
            Event::Delete => format!(
                "INSERT INTO {log} (op, {cols}) SELECT 'D', {} FROM pgshift_old o;",
                self.keys_of("o")
            ),
            Event::Update => format!(
                "INSERT INTO {log} (op, {cols}) SELECT 'U', {xs} FROM (SELECT {n} FROM pgshift_new n UNION SELECT {o} FROM pgshift_old o) AS x ({cols});",
                xs = self
                    .keys
                    .iter()
                    .map(|k| format!("x.{}", k.log_col))
                    .join(", "),
                n = self.keys_of("n"),
                o = self.keys_of("o"),
            ),
            Event::Truncate => format!("INSERT INTO {log} (op) VALUES ('T');"),
        }
    }

    /// The statements applying a trigger's change to the shadow table.
    fn apply_statements(&self, ev: Event) -> String {
        let shadow = &self.shadow_rel;
        let upsert = format!(
            "INSERT INTO {shadow} AS s ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM pgshift_new n {};",
            self.col_list(),
            self.values("n"),
            self.upsert_action()
        );
        match ev {
            Event::Insert => upsert,
            Event::Update => {
                // Rows whose key changed: the old key goes.
                let same_key = self
                    .keys
                    .iter()
                    .map(|k| format!("n.{} = o.{}", k.name, k.name))
                    .join(" AND ");
                format!(
                    "DELETE FROM ONLY {shadow} s USING pgshift_old o WHERE {} AND NOT EXISTS (SELECT 1 FROM pgshift_new n WHERE {same_key});\n    {upsert}",
                    self.shadow_match("s", "o", false)
                )
            }
            Event::Delete => format!(
                "DELETE FROM ONLY {shadow} s USING pgshift_old o WHERE {};",
                self.shadow_match("s", "o", false)
            ),
            Event::Truncate => format!("TRUNCATE ONLY {shadow};"),
        }
    }

    /// A trigger function's body: log-only (while the initial copy runs) or log
    /// and apply.
    fn function_body(&self, ev: Event, apply: bool) -> String {
        let log = self.log_statement(ev);
        if !apply {
            return format!(
                "\n#variable_conflict use_column\nBEGIN\n  -- pgshift: the initial copy is running; the replay applies the logged keys.\n  {log}\n  RETURN NULL;\nEND\n"
            );
        }
        format!(
            "
#variable_conflict use_column
DECLARE
  pgshift_caller_lock_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
  -- pgshift: log the keys first (the replay's guarantee), then apply the change.
  {log}
  BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', {timeout}, true);
    {immediate}{apply}
    PERFORM pg_catalog.set_config('lock_timeout', pgshift_caller_lock_timeout, true);
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's write: the logged keys get replayed.
    RAISE LOG 'pgshift: % on %: applying to the shadow failed (%: %); the replay will apply it',
      TG_OP, {table}, SQLSTATE, SQLERRM;
  END;
  RETURN NULL;
END
",
            timeout = quote_literal(APPLY_LOCK_TIMEOUT),
            immediate = match self.immediate().as_str() {
                "" => String::new(),
                set => format!("{set}\n    "),
            },
            apply = self.apply_statements(ev),
            table = quote_literal(&self.name),
        )
    }

    fn function_sql(&self, fname: &str, ev: Event, apply: bool) -> String {
        let body = self.function_body(ev, apply);
        let tag = dollar_tag(&body);
        let fixed = settings::clauses(settings::ROUND_TRIP);
        format!(
            "CREATE OR REPLACE FUNCTION {fname}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
               SET search_path = pg_catalog, pg_temp{fixed}
             AS {tag}{body}{tag};
             REVOKE ALL ON FUNCTION {fname}() FROM PUBLIC;\n"
        )
    }

    // Replay statements.

    fn pick_sql(&self) -> String {
        format!(
            "SELECT COALESCE(pg_catalog.array_agg(b.id), '{{}}'::bigint[]), COALESCE(pg_catalog.bool_or(b.op = 'T'), false)
               FROM (SELECT id, op FROM {} ORDER BY id LIMIT $1) b",
            self.log_rel
        )
    }
    fn delete_keys_sql(&self) -> String {
        self.delete_keys_among_sql(Entries::Picked)
    }
    fn delete_keys_among_sql(&self, entries: Entries) -> String {
        format!(
            "DELETE FROM ONLY {} s USING (SELECT DISTINCT {} FROM {} l WHERE {}) l WHERE {}",
            self.shadow_rel,
            self.log_keys_of("l"),
            self.log_rel,
            entries.filter(),
            self.shadow_match("s", "l", true)
        )
    }
    /// [`Self::delete_keys_sql`] key by key, passing over a key the
    /// shadow's type cannot hold (see [`delete_keys`]). `ids` are the
    /// changelog's own.
    fn delete_keys_one_by_one_sql(&self, ids: &[i64]) -> String {
        let body = format!(
            "
DECLARE
  pgshift_key record;
BEGIN
  FOR pgshift_key IN SELECT DISTINCT {cols} FROM {log} l WHERE l.id = ANY ('{{{ids}}}'::bigint[]) LOOP
    BEGIN
      DELETE FROM ONLY {shadow} s WHERE {matched};
    EXCEPTION WHEN data_exception OR check_violation THEN
      NULL; -- a key the shadow's type cannot hold is not in the shadow
    END;
  END LOOP;
END
",
            cols = self.log_keys_of("l"),
            log = self.log_rel,
            ids = ids.iter().join(","),
            shadow = self.shadow_rel,
            matched = self.shadow_match("s", "pgshift_key", true),
        );
        let tag = dollar_tag(&body);
        format!("DO {tag}{body}{tag}")
    }
    /// The statement that looks for a row of `public.T`, `among` those, that
    /// `probe` rejects (see [`locate`]), and fails with that row's error, its
    /// key added to the DETAIL. The keys are numbered into `keys` (a
    /// temporary table), then halved: the rows of the first half tried in a
    /// subtransaction, and the half that fails kept, until one key is left.
    /// Each try that writes takes a transaction id, so a search takes about
    /// log2(rows) of them (a try per row would spend one per row, at every
    /// `status`), and reads about as many rows as a copy of them.
    fn locate_sql(&self, probe: &str, keys: &str, among: Among) -> String {
        let numbered = match among {
            Among::Logged => format!(
                "SELECT pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(l.id)) AS pgshift_n, {cols}
                   FROM {} l WHERE l.op <> 'T' GROUP BY {cols}",
                self.log_rel,
                cols = self.log_keys_of("l")
            ),
            Among::All => format!(
                "SELECT pg_catalog.row_number() OVER () AS pgshift_n, {} FROM ONLY {} p",
                joined(&self.keys, ", ", |k| format!("p.{} AS {}", k.name, k.log_col)),
                self.public_rel
            ),
        };
        // The rows of the keys numbered $1 to $2, run by EXECUTE so that each
        // half is planned for its own size.
        let try_range = format!(
            "{} JOIN {keys} k ON ({}) = ({}) WHERE k.pgshift_n BETWEEN $1 AND $2",
            self.copy_into_sql(probe),
            self.keys_of("p"),
            self.log_keys_of("k"),
        );
        let body = format!(
            "
DECLARE
  pgshift_lo bigint := 1;
  pgshift_hi bigint;
  pgshift_mid bigint;
  pgshift_key record;
  pgshift_message text;
  pgshift_detail text;
BEGIN
  CREATE TEMPORARY TABLE {keys} AS {numbered};
  CREATE INDEX ON {keys} (pgshift_n);
  ANALYZE {keys};
  SELECT pg_catalog.count(*) INTO pgshift_hi FROM {keys};
  WHILE pgshift_lo < pgshift_hi LOOP
    pgshift_mid := (pgshift_lo + pgshift_hi) / 2;
    BEGIN
      EXECUTE {try_range} USING pgshift_lo, pgshift_mid;
      pgshift_lo := pgshift_mid + 1;
    EXCEPTION WHEN data_exception OR check_violation OR not_null_violation THEN
      pgshift_hi := pgshift_mid;
    END;
  END LOOP;
  BEGIN
    EXECUTE {try_range} USING pgshift_lo, pgshift_lo;
  EXCEPTION WHEN data_exception OR check_violation OR not_null_violation THEN
    GET STACKED DIAGNOSTICS pgshift_message = MESSAGE_TEXT, pgshift_detail = PG_EXCEPTION_DETAIL;
    SELECT * INTO pgshift_key FROM {keys} k WHERE k.pgshift_n = pgshift_lo;
    RAISE EXCEPTION USING ERRCODE = SQLSTATE, MESSAGE = pgshift_message,
      DETAIL = pg_catalog.concat_ws(' ', NULLIF(pgshift_detail, ''),
                 'Key (' || {names} || ')=(' || pg_catalog.concat_ws(', ', {values}) || ').');
  END;
END
",
            try_range = quote_literal(&try_range),
            names = quote_literal(&joined(&self.keys, ", ", |k| k.shown.clone())),
            values = joined(&self.keys, ", ", |k| format!("pgshift_key.{}", k.log_col)),
        );
        let tag = dollar_tag(&body);
        format!("DO {tag}{body}{tag}")
    }
    fn reinsert_keys_sql(&self) -> String {
        self.reinsert_keys_among_sql(Entries::Picked)
    }
    fn reinsert_keys_among_sql(&self, entries: Entries) -> String {
        format!(
            "INSERT INTO {} AS s ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM ONLY {} p
              WHERE ({}) IN (SELECT {} FROM {} l WHERE {})
             ON CONFLICT ({}) DO NOTHING",
            self.shadow_rel,
            self.col_list(),
            self.values("p"),
            self.public_rel,
            self.keys_of("p"),
            self.log_keys_of("l"),
            self.log_rel,
            entries.filter(),
            self.key_list()
        )
    }
    /// The whole final replay of a table under the swap's locks, when
    /// [`Waiting::Few`] entries wait and its keys need no conversion: the
    /// keys of every entry deleted from the shadow, public's rows of them
    /// re-inserted, the entries deleted; the deferrable constraints checked
    /// at once first. One round trip of the simple query protocol (see
    /// [`final_sync`]); the last statement's count is the entries replayed.
    fn replay_all_sql(&self) -> String {
        let mut sql = String::new();
        if !self.deferrable.is_empty() {
            sql.push_str(&self.immediate());
            sql.push('\n');
        }
        sql.push_str(&self.delete_keys_among_sql(Entries::All));
        sql.push_str(";\n");
        sql.push_str(&self.reinsert_keys_among_sql(Entries::All));
        sql.push_str(";\n");
        sql.push_str(&format!("DELETE FROM {}", self.log_rel));
        sql
    }
}

/// A dollar-quote tag that does not occur in `body`.
fn dollar_tag(body: &str) -> String {
    let mut n = 0;
    loop {
        let tag = if n == 0 {
            "$pgshift$".to_string()
        } else {
            format!("$pgshift{n}$")
        };
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------

async fn plan_table(dest: &Client, p: &TableName) -> Result<SyncedTable> {
    let live = p.schema_or_public().to_string();
    let shadow = crate::pg::meta::shadow_schema_for(&live);
    let oid_of = |schema: String| {
        let name = p.name.clone();
        async move {
            dest.query_opt(
                "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'",
                &[&schema, &name],
            )
            .await
            .map_err(|e| pg_error_as(e, "looking up a preserved table"))
            .map(|r| r.map(|r| r.get::<_, u32>(0)))
        }
    };
    let oid = oid_of(live.clone())
        .await?
        .with_context(|| format!("preserved table {p}: not a table of the destination's {live}"))?;
    let shadow_oid = oid_of(shadow)
        .await?
        .with_context(|| format!("preserved table {p}: not a table of the shadow schema"))?;
    let key = choose_key(
        &key_candidates(dest, oid).await?,
        &key_candidates(dest, shadow_oid).await?,
    )
    .with_context(|| {
        format!("preserved table {p}: no key with the same columns in public and shadow")
    })?;
    let pub_types = attr_types(dest, oid).await?;
    let sh_cols = column_types(dest, shadow_oid).await?;
    let columns: Vec<String> = sh_cols
        .iter()
        .filter(|c| !c.generated && pub_types.contains_key(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let public_seqs: HashMap<String, String> = column_sequences(dest, oid)
        .await?
        .into_iter()
        .map(|s| (s.column, s.name))
        .collect();
    let sequences = column_sequences(dest, shadow_oid)
        .await?
        .into_iter()
        .map(|s| OwnedSequence {
            public: public_seqs.get(&s.column).cloned(),
            column: s.column,
            shadow: s.name,
        })
        .collect();
    Ok(SyncedTable {
        schema: live,
        name: p.name.clone(),
        oid,
        shadow_oid,
        key,
        columns,
        changelog: changelog_name(oid),
        functions: EVENTS.iter().map(|e| function_name(oid, *e)).collect(),
        sequences,
    })
}

#[derive(Clone)]
pub(crate) struct SeqRow {
    column: String,
    /// The sequence's schema.
    pub(crate) schema: String,
    /// Unqualified name.
    pub(crate) name: String,
    /// `"schema"."name"`.
    pub(crate) qual: String,
    increment: i64,
    /// Its `MINVALUE` and `MAXVALUE`, and whether it cycles.
    min: i64,
    max: i64,
    cycle: bool,
}

/// The sequences of a table's columns: those the columns own (serial,
/// identity) and those their defaults draw from (`DEFAULT nextval('s')` on a
/// sequence created apart, which may serve other tables too).
pub(crate) async fn column_sequences(client: &Client, rel: u32) -> Result<Vec<SeqRow>> {
    Ok(columns_sequences(client, &[rel])
        .await?
        .remove(&rel)
        .unwrap_or_default())
}

/// [`column_sequences`] of each of `rels`, in one round trip.
async fn columns_sequences(client: &Client, rels: &[u32]) -> Result<HashMap<u32, Vec<SeqRow>>> {
    let rows: Vec<(u32, SeqRow)> = query_map(
        client,
            "WITH used(rel, seq, attnum) AS (
                    SELECT d.refobjid, d.objid, d.refobjsubid FROM pg_catalog.pg_depend d
                     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                       AND d.refobjid = ANY ($1::pg_catalog.oid[]) AND d.deptype IN ('a', 'i')
                    UNION
                    SELECT ad.adrelid, d.refobjid, ad.adnum FROM pg_catalog.pg_attrdef ad
                      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
                       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'n'
                     WHERE ad.adrelid = ANY ($1::pg_catalog.oid[]))
             SELECT a.attname::text, sc.relname::text,
                    pg_catalog.quote_ident(sn.nspname) || '.' || pg_catalog.quote_ident(sc.relname),
                    s.seqincrement, sn.nspname::text, s.seqmin, s.seqmax, s.seqcycle, u.rel
               FROM used u
               JOIN pg_catalog.pg_class sc ON sc.oid = u.seq AND sc.relkind = 'S'
               JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
               JOIN pg_catalog.pg_sequence s ON s.seqrelid = sc.oid
               JOIN pg_catalog.pg_attribute a ON a.attrelid = u.rel AND a.attnum = u.attnum
              ORDER BY u.rel, a.attnum, 2",
            &[&rels],
        "listing the columns' sequences",
        |r| (r.get(8), SeqRow {
            column: r.get(0),
            name: r.get(1),
            qual: r.get(2),
            increment: r.get(3),
            schema: r.get(4),
            min: r.get(5),
            max: r.get(6),
            cycle: r.get(7),
        }),
    )
    .await?;
    let mut out: HashMap<u32, Vec<SeqRow>> = HashMap::new();
    for (rel, row) in rows {
        out.entry(rel).or_default().push(row);
    }
    Ok(out)
}

/// Run `sql` (a whole transaction, `BEGIN … COMMIT`) on `rel` with retries on
/// lock timeouts. Each retry's warning, and the error when they are spent,
/// name the sessions holding `rel`, as the swap's do.
async fn run_with_lock_retries(
    client: &Client,
    sql: &str,
    what: &str,
    rel: &str,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<()> {
    let lock_timeout = |e: &anyhow::Error| {
        PgError::code_in(e)
            .is_some_and(|c| c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    };
    let out = retry(what, RetryPolicy::new(retries), Some(cancel), || async {
        let done = client
            .batch_execute(sql)
            .await
            .map_err(crate::pg::exec::pg_error);
        let done = rollback_on_err(client, done).await;
        crate::pg::exec::naming_lock_holders(done, || lock_holders(client, rel)).await
    })
    .await
    .map(|_| ())
    .map_err(Stop::into_error);
    match out {
        Err(e) if lock_timeout(&e) => {
            let holders = lock_holders(client, rel).await;
            let message = if holders.is_empty() {
                format!("{what}: canceling statement due to lock timeout")
            } else {
                format!(
                    "{what} was held up by {}: end that transaction (or wait for it), then prepare again (canceling statement due to lock timeout)",
                    holders.join(", ")
                )
            };
            Err(anyhow::Error::new(PgError {
                message,
                code: Some(tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            }))
        }
        Err(e) => Err(e.context(what.to_string())),
        Ok(()) => Ok(()),
    }
}

/// The sessions holding a lock on `rel` (quoted and qualified), as the swap
/// names them: `pid 4242 (app, psql, idle in transaction)`. Best effort:
/// empty when they cannot be read.
async fn lock_holders(client: &Client, rel: &str) -> Vec<String> {
    crate::pg::lock::relation_lock_holders(client, &[], &[rel.to_string()], 3).await
}

/// Copy the destination's rows into the shadow and start the sync, table by
/// table: changelog, log-only functions and triggers (one transaction, under
/// `lock_timeout`, retried), the initial copy (REPEATABLE READ), the switch to
/// log-and-apply functions, then a replay of what was logged meanwhile.
pub async fn setup(
    dest: &Client,
    preserved: &[TableName],
    migration_id: i64,
    lock_timeout: Duration,
    retries: u32,
    cancel: &CancellationToken,
) -> Result<Vec<SyncedTable>> {
    let mut out = Vec::new();
    for p in preserved {
        let t = plan_table(dest, p).await?;
        let live = describe(dest, &t).await?;
        let started = Instant::now();
        // DDL on the live table: one transaction, retried on lock timeouts.
        let ddl = async |sql: &str, what: &str| {
            run_with_lock_retries(
                dest,
                sql,
                &format!("{what} {}", t.shown()),
                &live.public_rel,
                retries,
                cancel,
            )
            .await
        };

        // 1. Changelog, log-only functions, triggers.
        let mut sql = format!(
            "BEGIN;\nSET LOCAL lock_timeout = '{}ms';\n",
            lock_timeout.as_millis().max(1)
        );
        sql.push_str(&live.changelog_ddl(&format!(
            "pgshift: changelog of public.{} for migration {migration_id} (managed by pgshift)",
            display_ident(&t.name)
        )));
        for ev in EVENTS {
            let f = qualified(META_SCHEMA, &function_name(t.oid, ev));
            sql.push_str(&live.function_sql(&f, ev, false));
            sql.push_str(&format!(
                "CREATE TRIGGER {} AFTER {} ON {}{} FOR EACH STATEMENT EXECUTE FUNCTION {f}();\n",
                quote_ident(ev.trigger()),
                ev.keyword(),
                live.public_rel,
                ev.referencing()
            ));
        }
        sql.push_str(&format!(
            "ALTER TABLE {} {};\nCOMMIT;",
            live.public_rel,
            EVENTS
                .iter()
                .map(|e| format!("ENABLE ALWAYS TRIGGER {}", quote_ident(e.trigger())))
                .join(", ")
        ));
        ddl(&sql, "creating the sync triggers on").await?;

        // 2. The initial copy, under one snapshot taken after the triggers
        // exist (a deferrable key the destination's rows break fails the
        // copy, not its COMMIT).
        exec(
            dest,
            &format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; {}; {}",
                via_text_local(),
                live.immediate()
            ),
            "starting the copy",
        )
        .await?;
        let copied = match dest.execute(live.copy_sql().as_str(), &[]).await {
            Ok(n) => n,
            Err(e) => {
                let _ = dest.batch_execute("ROLLBACK").await;
                let e = match e.code().is_some_and(nameless) {
                    true => locate(dest, &live, Among::All).await.unwrap_or(e),
                    false => e,
                };
                return Err(pg_error_as(
                    e,
                    &format!(
                        "copying the destination's rows of {} into shadow",
                        t.shown()
                    ),
                ));
            }
        };
        exec(dest, "COMMIT", "committing the copy").await?;

        // 3. Log and apply from now on.
        let mut sql = String::from("BEGIN;\n");
        for ev in EVENTS {
            let f = qualified(META_SCHEMA, &function_name(t.oid, ev));
            sql.push_str(&live.function_sql(&f, ev, true));
        }
        sql.push_str("COMMIT;");
        ddl(&sql, "starting the real-time sync of").await?;

        // 4. What was written during the copy.
        let replayed = drain(dest, &live, lock_timeout.max(REPLAY_LOCK_TIMEOUT), retries).await?;
        tracing::info!(
            table = %t.shown(),
            copied,
            replayed,
            ms = started.elapsed().as_millis() as u64,
            "preserved table copied from the destination and in sync"
        );
        out.push(t);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------

/// Whether the application may write `T` while a replay runs: it may, but for
/// the swap's final replay, under its ACCESS EXCLUSIVE locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    Concurrent,
    Locked,
}

/// One replay batch in the current transaction: the oldest `limit` changelog
/// entries. Returns the number of entries consumed.
async fn replay_batch(client: &Client, l: &Live, limit: i64, writes: Writes) -> Result<u64> {
    let what = format!("replaying the changelog of {}", l.name);
    let row = client
        .query_one(l.pick_sql().as_str(), &[&limit])
        .await
        .map_err(|e| pg_error_as(e, &what))?;
    let ids: Vec<i64> = row.get(0);
    let truncated: bool = row.get(1);
    if ids.is_empty() {
        return Ok(0);
    }
    if !l.deferrable.is_empty() {
        exec(client, &l.immediate(), &what).await?;
    }
    if truncated {
        // A TRUNCATE: resync the whole table. Every entry visible now is covered
        // by the copy, whose snapshot is newer.
        exec(client, &format!("TRUNCATE ONLY {}", l.shadow_rel), &what).await?;
        let n = client
            .execute(format!("DELETE FROM {}", l.log_rel).as_str(), &[])
            .await
            .map_err(|e| pg_error_as(e, &what))?;
        client
            .execute(l.copy_sql().as_str(), &[])
            .await
            .map_err(|e| replay_error(e, &what))?;
        return Ok(n);
    }
    // A unique value can move from one row to another (row 2 gives up an
    // email, row 1 takes it). When this batch holds row 1's entry and a later
    // one row 2's, the shadow still has row 2's old value and re-inserting
    // row 1 collides with it, however valid both rows are. Every shadow row
    // that differs from the destination's has an entry, so the whole
    // changelog at once is consistent: a bounded batch that meets a unique
    // (or exclusion) violation is replayed whole instead. It is consistent
    // as of its reads, though: a value that moves while it runs (the giving
    // row's entry comes after the ones it picked, and its trigger's apply
    // gave up behind the replay's own row locks) collides the same way. Such
    // a collision, with entries written since the pick, is a moment's, and
    // is retried ([`Transient`]; the swap's final replay, under its locks,
    // meets no writes).
    if writes == Writes::Concurrent {
        crate::migration::session::failpoint("replay-picked").await?;
    }
    let bounded = ids.len() as i64 >= limit;
    // Under the swap's locks, only a bounded batch has anything to go back
    // to: the final replay's usual single batch costs no round trip more.
    let savepoint = bounded || writes == Writes::Concurrent;
    if savepoint {
        exec(client, "SAVEPOINT pgshift_batch", &what).await?;
    }
    delete_keys(client, l, &ids, &what).await?;
    match client
        .execute(l.reinsert_keys_sql().as_str(), &[&ids])
        .await
    {
        Ok(_) => {}
        Err(e) if savepoint && moved_value(&e) => {
            exec(client, "ROLLBACK TO SAVEPOINT pgshift_batch", &what).await?;
            if bounded {
                tracing::debug!(
                    table = %l.name,
                    "a unique value moved between rows of different replay batches: replaying the whole changelog at once"
                );
                return Box::pin(replay_batch(client, l, i64::MAX, writes)).await;
            }
            let last = ids.iter().max().copied().unwrap_or(0);
            let newer: bool = client
                .query_one(
                    format!("SELECT EXISTS (SELECT 1 FROM {} WHERE id > $1)", l.log_rel).as_str(),
                    &[&last],
                )
                .await
                .map_err(|e| pg_error_as(e, &what))?
                .get(0);
            if newer {
                return Err(anyhow::Error::new(crate::pg::exec::Transient(format!(
                    "a unique value of {} moved while the replay ran",
                    l.name
                ))));
            }
            return Err(replay_error(e, &what));
        }
        Err(e) => return Err(replay_error(e, &what)),
    }
    client
        .execute(
            format!("DELETE FROM {} WHERE id = ANY($1)", l.log_rel).as_str(),
            &[&ids],
        )
        .await
        .map_err(|e| pg_error_as(e, &what))?;
    if savepoint {
        exec(client, "RELEASE SAVEPOINT pgshift_batch", &what).await?;
    }
    Ok(ids.len() as u64)
}

/// A unique or exclusion violation: what a value that moved between rows
/// replayed apart meets (see [`replay_batch`]).
fn moved_value(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        c == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            || c == &tokio_postgres::error::SqlState::EXCLUSION_VIOLATION
    })
}

/// The shadow's rows of the keys logged under `ids`. A key logged in the
/// destination's type that the shadow's type cannot hold (a `bigint` past the
/// source's `int`, a value the source's domain rejects: a row written since
/// prepare, then deleted or given another key) cannot be in the shadow; but
/// converting it fails the whole statement, and every replay after it, for a
/// row that is no longer there to fix. Under a savepoint, then: when the
/// conversion fails, the keys are deleted one by one, and one the shadow cannot
/// hold is passed over.
async fn delete_keys(client: &Client, l: &Live, ids: &[i64], what: &str) -> Result<()> {
    if l.keys.iter().all(|k| matches!(k.conv, Conv::Same)) {
        // Keys of the same types on both sides: nothing to convert, nothing
        // to fail (two round trips less for the swap's final replay).
        return client
            .execute(l.delete_keys_sql().as_str(), &[&ids])
            .await
            .map(|_| ())
            .map_err(|e| replay_error(e, what));
    }
    exec(client, "SAVEPOINT pgshift_delete_keys", what).await?;
    match client.execute(l.delete_keys_sql().as_str(), &[&ids]).await {
        Ok(_) => exec(client, "RELEASE SAVEPOINT pgshift_delete_keys", what).await,
        Err(e) if e.code().is_some_and(unconvertible) => {
            exec(client, "ROLLBACK TO SAVEPOINT pgshift_delete_keys", what).await?;
            exec(client, &l.delete_keys_one_by_one_sql(ids), what).await?;
            exec(client, "RELEASE SAVEPOINT pgshift_delete_keys", what).await
        }
        Err(e) => Err(replay_error(e, what)),
    }
}

/// A conversion's failure: a data exception, or a domain's `CHECK`.
fn unconvertible(code: &tokio_postgres::error::SqlState) -> bool {
    code.code().starts_with("22") || code == &tokio_postgres::error::SqlState::CHECK_VIOLATION
}

/// A replay's error; a value the source's definition rejects is a row written
/// since prepare, and the error says what to do about it.
fn replay_error(e: tokio_postgres::Error, what: &str) -> anyhow::Error {
    if e.code().is_some_and(source_rejects) {
        pg_error_as(
            e,
            &format!(
                "{what} (a row written to it since prepare does not fit the source's definition of the table: fix that row on the destination, or run `pgshift abort` and prepare again)"
            ),
        )
    } else {
        pg_error_as(e, what)
    }
}

/// One replay batch in its own READ COMMITTED transaction.
async fn replay_txn(client: &Client, l: &Live, lock_timeout: Duration) -> Result<u64> {
    exec(
        client,
        &format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{}ms'; {}",
            lock_timeout.as_millis().max(1),
            via_text_local()
        ),
        "starting a replay",
    )
    .await?;
    match replay_batch(client, l, BATCH, Writes::Concurrent).await {
        Ok(n) => {
            exec(client, "COMMIT", "committing a replay").await?;
            Ok(n)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(named(client, l, e).await)
        }
    }
}

/// A replay's rejection whose error names no row, with the key of a row
/// that fails it (see [`locate`]), among the rows the changelog holds keys
/// of. `e` unchanged when the search finds no row or no answer.
async fn named(client: &Client, l: &Live, e: anyhow::Error) -> anyhow::Error {
    if !PgError::code_in(&e).is_some_and(|c| nameless(&c)) {
        return e;
    }
    match locate(client, l, Among::Logged).await {
        Some(row) => replay_error(row, &format!("replaying the changelog of {}", l.name)),
        None => e,
    }
}

/// An error that names no row (`value too long for type character
/// varying(5)`, `numeric field overflow`, an enum's or a domain's error; NOT
/// NULL and CHECK show the row's values, not its key): "fix that row" needs
/// [`locate`] to say which.
fn nameless(code: &tokio_postgres::error::SqlState) -> bool {
    unconvertible(code) || code == &tokio_postgres::error::SqlState::NOT_NULL_VIOLATION
}

/// Which rows of `public.T` [`locate`] tries.
#[derive(Debug, Clone, Copy)]
enum Among {
    /// Those whose keys the changelog holds, in its order (a replay's).
    Logged,
    /// All of them (prepare's copy).
    All,
}

/// The error of the first row of `public.T`, `among` those, that the shadow
/// table rejects, its key in the DETAIL. The rows are tried in halves
/// ([`Live::locate_sql`]) into a temporary table `LIKE` the shadow table (its
/// types, defaults, `CHECK` and `NOT NULL` constraints, generated columns; no
/// indexes: a unique key's error names its key already), in a transaction of
/// its own that is rolled back, under the trial's lock and statement timeouts.
/// Run only after a copy or a replay failed, outside the swap's locks (the
/// swap's catch-up, the trial, prepare's copy). `None` when no row fails or
/// the search gets no answer in time.
async fn locate(client: &Client, l: &Live, among: Among) -> Option<tokio_postgres::Error> {
    let probe = format!("pg_temp.{}", quote_ident(&l.table));
    // Named apart from the probe, which is named after the table.
    let keys = match l.table.as_str() {
        "pgshift_keys" => "pg_temp.pgshift_keys_",
        _ => "pg_temp.pgshift_keys",
    };
    let sql = format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{APPLY_LOCK_TIMEOUT}'; SET LOCAL statement_timeout = '5s'; {};
         CREATE TEMPORARY TABLE {probe} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED);
         {}",
        via_text_local(),
        l.shadow_rel,
        l.locate_sql(&probe, keys, among)
    );
    let found = client.batch_execute(&sql).await;
    let _ = client.batch_execute("ROLLBACK").await;
    match found {
        Err(row) if row.code().is_some_and(nameless) => Some(row),
        Err(other) => {
            let other = pg_error_as(other, "looking for the rejected row: no answer");
            tracing::debug!(table = %l.name, "{other:#}");
            None
        }
        Ok(()) => None,
    }
}

/// Replay until a batch comes back short (the backlog is smaller than a batch)
/// or the budget is spent. Lock timeouts are retried a few times, then left to
/// the next call.
async fn drain(client: &Client, l: &Live, lock_timeout: Duration, retries: u32) -> Result<u64> {
    let deadline = Instant::now() + CATCH_UP_BUDGET;
    let mut total = 0;
    loop {
        let what = format!("replay of {}", l.name);
        match retry(&what, replay_policy(retries), None, || {
            replay_txn(client, l, lock_timeout)
        })
        .await
        {
            Ok((n, _)) => {
                total += n;
                if n < BATCH as u64 || Instant::now() >= deadline {
                    return Ok(total);
                }
            }
            Err(Stop::Exhausted { error, .. }) => {
                tracing::warn!(
                    "replay of {} keeps waiting for locks; the rest is left to the swap: {error:#}",
                    l.name
                );
                return Ok(total);
            }
            Err(stop) => return Err(stop.into_error()),
        }
    }
}

/// Would the swap's replay take every row written to the preserved tables
/// since prepare? For `status` and the swap's dry run, which must not wait
/// behind the application nor change anything: the rejection
/// [`trial_replay`] finds in each table, so that fixing one table's row does
/// not just uncover the next table's.
/// The rows written since prepare that the swap's replay would fail on,
/// tried now (see [`trial_replay`]): the refusals, and the tables whose
/// trial got no answer (a value moved by a concurrent write, a lock), said
/// so rather than passed in silence.
pub async fn rejected(
    client: &Client,
    synced: &[SyncedTable],
) -> Result<(Vec<String>, Vec<String>)> {
    let (mut refused, mut untried) = (Vec::new(), Vec::new());
    for t in synced {
        match trial_replay(client, t).await? {
            Replayed::Fits => {}
            Replayed::Refused(why) => refused.push(why),
            Replayed::NoAnswer(why) => untried.push(format!(
                "the replay of the changes to {} since prepare could not be tried now ({why}); the swap tries it again under its locks, and refuses a row that does not fit",
                t.shown()
            )),
        }
    }
    Ok((refused, untried))
}

/// What [`trial_replay`] found.
enum Replayed {
    Fits,
    /// A row does not fit, in the swap's own words.
    Refused(String),
    /// No answer (a lock wait, a timeout, a value moved meanwhile).
    NoAnswer(String),
}

/// `t`'s changelog (when it has entries) tried as the swap would replay it
/// ([`trial`]) in a transaction that is rolled back, under a short
/// `lock_timeout` and `statement_timeout`. `Some(why)`, in the swap's own
/// words, when a row does not fit the source's definition of the table (a
/// data exception or a constraint violation: what makes the swap refuse);
/// `None` when it fits, and when the trial gets no answer (a lock wait, a
/// timeout: the swap looks again, under its own retries).
async fn trial_replay(client: &Client, t: &SyncedTable) -> Result<Replayed> {
    // Best effort, as the trial itself: no answer is no rejection.
    if !changes_waiting(client, t).await.unwrap_or(false) {
        return Ok(Replayed::Fits);
    }
    let l = match describe(client, t).await {
        Ok(l) => l,
        Err(e) => return Ok(Replayed::NoAnswer(format!("{e:#}"))),
    };
    let begun = exec(
        client,
        &format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{APPLY_LOCK_TIMEOUT}'; SET LOCAL statement_timeout = '5s'; {}",
            via_text_local()
        ),
        "starting a trial replay",
    )
    .await;
    let tried = match begun {
        Ok(()) => trial(client, &l).await,
        Err(e) => Err(e),
    };
    exec(client, "ROLLBACK", "ending a trial replay").await?;
    let tried = match tried {
        Err(e) => Err(named(client, &l, e).await),
        ok => ok,
    };
    match tried {
        Err(e) if PgError::code_in(&e).is_some_and(|c| source_rejects(&c)) => {
            Ok(Replayed::Refused(format!("{e:#}")))
        }
        Err(e) => {
            tracing::debug!(table = %t.shown(), "trial replay: no answer: {e:#}");
            Ok(Replayed::NoAnswer(format!("{e:#}")))
        }
        Ok(_) => Ok(Replayed::Fits),
    }
}

/// What the swap's replay would make of `T`'s changelog, tried in the trial's
/// transaction without holding up the application's writes to `T` (whose
/// sync triggers apply to the shadow table under a 100 ms lock timeout):
///
/// 1. When the changelog holds more than a batch: the rows of `public.T` of
///    every key it holds are copied into a temporary table made `LIKE` the
///    shadow table (its types, defaults, `CHECK` and `NOT NULL` constraints,
///    unique and exclusion indexes), named as it is so a rejection reads as
///    the swap's would. The changelog keeps every write since prepare until
///    the swap, so under load it is long, and a row written a minute ago lies
///    far beyond the first batch; two rows written far apart that a unique
///    key only the source has forbids meet here.
/// 2. The oldest batch is replayed into the shadow table as the swap replays
///    it (row locks on that batch's keys, for the moment it takes): what the
///    shadow's other rows reject (that unique key against a row copied at
///    prepare) shows there.
///
/// A TRUNCATE in the first batch means the swap copies all of `public.T`
/// again: the trial copies it into the temporary table instead. Replayed into
/// the shadow table itself, the copy would hold its `TRUNCATE`'s ACCESS
/// EXCLUSIVE lock for as long as it takes (up to the trial's 5 s), every write
/// to `T` meanwhile waiting out its trigger's lock timeout; and the `TRUNCATE`
/// would wait for, and give up behind, any open transaction that wrote to `T`.
/// A TRUNCATE beyond the first batch needs nothing more: every row
/// `public.T` holds was written after it, so its key is in the changelog.
async fn trial(client: &Client, l: &Live) -> Result<()> {
    let what = format!("replaying the changelog of {}", l.name);
    // Deferred, a constraint would be checked at a COMMIT the trial never
    // makes: its own, the shadow's and the temporary copy's, checked now.
    exec(client, "SET CONSTRAINTS ALL IMMEDIATE", &what).await?;
    let row = client
        .query_one(l.pick_sql().as_str(), &[&BATCH])
        .await
        .map_err(|e| pg_error_as(e, &what))?;
    let (first, truncated): (Vec<i64>, bool) = (row.get(0), row.get(1));
    if !truncated && (first.len() as i64) < BATCH {
        replay_batch(client, l, BATCH, Writes::Concurrent).await?;
        return Ok(());
    }
    let copy = trial_table(client, l, &what).await?;
    let copy = if truncated {
        l.copy_into_sql(&copy)
    } else {
        l.copy_logged_into_sql(&copy)
    };
    client
        .execute(copy.as_str(), &[])
        .await
        .map_err(|e| replay_error(e, &what))?;
    if !truncated {
        replay_batch(client, l, BATCH, Writes::Concurrent).await?;
    }
    Ok(())
}

/// The trial's temporary copy of `T`'s shadow table (see [`trial`]), dropped
/// with the trial's transaction.
async fn trial_table(client: &Client, l: &Live, what: &str) -> Result<String> {
    let copy = format!("pg_temp.{}", quote_ident(&l.table));
    exec(
        client,
        &format!(
            "CREATE TEMPORARY TABLE {copy} (LIKE {} INCLUDING ALL)",
            l.shadow_rel
        ),
        what,
    )
    .await?;
    Ok(copy)
}

/// A replay error that is the row's fault, not the moment's: a value the
/// source's definition rejects (data exception, constraint violation).
fn source_rejects(code: &tokio_postgres::error::SqlState) -> bool {
    let c = code.code();
    c.starts_with("22") || c.starts_with("23")
}

/// Replay outside the swap's locks until each backlog is smaller than a batch
/// (at most about a minute per table; lock waits are retried, then left to
/// [`final_sync`]). Returns the number of changelog entries replayed.
pub async fn catch_up(client: &Client, synced: &[SyncedTable]) -> Result<u64> {
    let mut total = 0;
    for t in synced {
        let l = describe(client, t).await?;
        total += drain(client, &l, REPLAY_LOCK_TIMEOUT, REPLAY_RETRIES).await?;
    }
    Ok(total)
}

/// Inside the open swap transaction (ACCESS EXCLUSIVE locks held on each
/// `public.T` and `shadow.T`): replay everything left, carry the owned
/// columns' sequences over (greatest of the destination's and the shadow's next value),
/// drop the sync triggers. Never commits or rolls back. Relations are found
/// by oid, so the schemas may already have been renamed; the sync functions
/// must not fire after this.
///
/// Its time is lock time, so what does not depend on a table is asked of
/// all at once: which changelogs hold entries (the locks keep new ones
/// out: a table with none is not described or replayed), the tables'
/// names, their triggers, and the drops, one statement list for all. A
/// written table's replay is one round trip when its few entries allow
/// ([`Waiting::Few`]: ~0.8 ms of lock time a table where the batch's
/// pick, delete, re-insert and changelog delete, each parsed and bound
/// apart, took ~1.7).
///
/// The changelogs and trigger functions stay: once the triggers are gone
/// nothing writes or calls them, so they are dropped after the COMMIT
/// ([`remove_changelogs`]), outside the locks. Dropped here they took ~9
/// more of the lock table's slots per preserved table (16.4 held a table
/// against 7.2 now) and ~0.3 ms of lock time each.
pub async fn final_sync(
    client: &Client,
    synced: &[SyncedTable],
    fences: &mut Fences,
) -> Result<()> {
    if synced.is_empty() {
        return Ok(());
    }
    exec(client, &via_text_local(), "setting up the final replay").await?;
    let waiting = changelogs_waiting(client, synced).await?;
    let oids: Vec<u32> = synced.iter().flat_map(|t| [t.oid, t.shadow_oid]).collect();
    let names = rel_names(client, &oids).await?;
    let name_of = |t: &SyncedTable, oid: u32, which: &str| -> Result<String> {
        names
            .get(&oid)
            .cloned()
            .with_context(|| format!("preserved table {}: its {which} table is gone", t.shown()))
    };
    let (written, waits): (Vec<&SyncedTable>, Vec<Waiting>) = synced
        .iter()
        .zip(waiting)
        .filter(|(_, w)| *w != Waiting::None)
        .unzip();
    let mut replayed_in_all = 0;
    for ((t, l), waits) in written
        .iter()
        .zip(describe_all(client, &written).await?)
        .zip(waits)
    {
        let replayed =
            if waits == Waiting::Few && l.keys.iter().all(|k| matches!(k.conv, Conv::Same)) {
                replay_all_locked(client, &l).await?
            } else {
                let mut replayed = 0;
                loop {
                    let n = replay_batch(client, &l, FINAL_BATCH, Writes::Locked).await?;
                    replayed += n;
                    // Under the locks nothing writes the changelog: a batch short of
                    // the limit took all of it (no round trip to find it empty).
                    if (n as i64) < FINAL_BATCH {
                        break;
                    }
                }
                replayed
            };
        replayed_in_all += replayed;
        tracing::info!(table = %t.shown(), replayed, "final replay done");
    }
    tracing::debug!(
        tables = synced.len(),
        written = written.len(),
        replayed = replayed_in_all,
        "final replay of the preserved tables done"
    );
    carry_sequences(
        client,
        synced,
        |t| name_of(t, t.shadow_oid, "shadow"),
        fences,
    )
    .await?;
    let tables: Vec<u32> = synced.iter().map(|t| t.oid).collect();
    let mut sql = String::new();
    for row in client
        .query(
            format!(
                "SELECT t.tgrelid, t.tgname::text FROM pg_catalog.pg_trigger t
                  WHERE t.tgrelid = ANY ($1::pg_catalog.oid[]) AND NOT t.tgisinternal AND {}
                  ORDER BY 1, 2",
                own_trigger_sql("t")
            )
            .as_str(),
            &[&tables],
        )
        .await
        .map_err(|e| pg_error_as(e, "listing the sync triggers"))?
    {
        let oid: u32 = row.get(0);
        let name: String = row.get(1);
        let t = synced.iter().find(|t| t.oid == oid).expect("asked for");
        sql.push_str(&format!(
            "DROP TRIGGER {} ON {};\n",
            quote_ident(&name),
            name_of(t, oid, "destination")?
        ));
    }
    if sql.is_empty() {
        return Ok(());
    }
    exec(
        client,
        &sql,
        "removing the sync triggers of the preserved tables at the swap",
    )
    .await
}

/// Lock-table slots dropping one changelog takes: the table, its key's index
/// and constraint, its `id` sequence and default, its TOAST table and index
/// (text keys), its row and array types, and the catalogs past the fast
/// path (measured: 9 to 11 on PostgreSQL 15, which has no NOT NULL
/// constraint rows; 18 adds one).
const CHANGELOG_DROP_LOCKS: u64 = 14;

/// Retries of [`remove_changelogs`]' transactions that meet a lock: what
/// it leaves is harmless and the next run drops it, so a session holding a
/// changelog holds up the end of the swap a few seconds, not its retries'.
const REMOVE_RETRIES: u32 = 1;

/// After the swap's COMMIT: drop the changelogs and trigger functions of
/// `synced` whose triggers [`final_sync`] dropped under the locks. Nothing
/// writes or calls them any more, and nobody but pgshift waits for them, so
/// this is outside the swap: in lock-bounded transactions
/// ([`crate::pg::batch`]: ~130 tables' at default settings), each waiting
/// past `deadlock_timeout` (or `lock_timeout`, when longer) for its locks
/// (an autovacuum of a changelog is cancelled for it), retried once; an
/// error names the sessions holding pgshift's relations. Only what exists is dropped
/// (by name, `IF EXISTS`): a run that stopped half-way is finished by the
/// next, and one that stopped before it by the next swap or rollback
/// ([`crate::swap::cutover::finish_stopped`]), prepare, or `abort`, which
/// all drop pgshift's helper objects left without a migration. Returns the
/// number of preserved tables whose objects were still there.
pub async fn remove_changelogs(
    client: &Client,
    synced: &[SyncedTable],
    lock_timeout: Duration,
) -> Result<usize> {
    if synced.is_empty() || !crate::pg::meta::meta_exists(client).await? {
        return Ok(0);
    }
    let logs: Vec<&str> = synced.iter().map(|t| t.changelog.as_str()).collect();
    let functions: Vec<&str> = synced
        .iter()
        .flat_map(|t| t.functions.iter().map(String::as_str))
        .collect();
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c
                           WHERE c.relnamespace = $1::text::pg_catalog.regnamespace AND c.relkind = 'r'
                             AND c.relname = ANY ($2::text[])),
                    ARRAY(SELECT p.proname::text FROM pg_catalog.pg_proc p
                           WHERE p.pronamespace = $1::text::pg_catalog.regnamespace AND p.pronargs = 0
                             AND p.proname = ANY ($3::text[]))",
            &[&META_SCHEMA, &logs, &functions],
        )
        .await
        .map_err(|e| pg_error_as(e, "looking for the preserved tables' changelogs"))?;
    let logs_there: HashSet<String> = row.get::<_, Vec<String>>(0).into_iter().collect();
    let functions_there: HashSet<String> = row.get::<_, Vec<String>>(1).into_iter().collect();
    let mut stmts = Vec::new();
    let mut tables = 0;
    for t in synced {
        let mut any = false;
        if logs_there.contains(&t.changelog) {
            stmts.push(changelog_drop(&t.changelog));
            any = true;
        }
        for f in t.functions.iter().filter(|f| functions_there.contains(*f)) {
            stmts.push(sync_function_drop(f));
            any = true;
        }
        tables += usize::from(any);
    }
    if stmts.is_empty() {
        return Ok(0);
    }
    let wait = crate::pg::exec::past_deadlock_timeout(client, lock_timeout).await;
    let opts = crate::pg::batch::Options::for_server(client, "sync-cleanup")
        .await?
        .with_lock_timeout(wait, REMOVE_RETRIES);
    if let Err(e) = crate::pg::batch::run(client, &stmts, &opts).await {
        let holders = if crate::pg::batch::is_lock_timeout(&e) {
            crate::pg::lock::relation_lock_holders(client, &[META_SCHEMA.to_string()], &[], 10)
                .await
        } else {
            Vec::new()
        };
        let held = if holders.is_empty() {
            String::new()
        } else {
            format!(" (sessions holding locks on them: {})", holders.join(", "))
        };
        return Err(e.context(format!(
            "dropping the changelogs and sync functions of the preserved tables{held}"
        )));
    }
    Ok(tables)
}

/// The preserved tables' shadow copies, qualified: the swap locks them for
/// the final replay, besides what it moves (so its budget counts them, in
/// `status` and after prepare as in the swap and its dry run).
pub fn shadow_locks(synced: &[SyncedTable]) -> Vec<String> {
    synced
        .iter()
        .map(|t| qualified(&crate::pg::meta::shadow_schema_for(&t.schema), &t.name))
        .collect()
}

/// What a changelog holds when the swap's final replay reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Nothing: the table is not described or replayed.
    None,
    /// Fewer entries than a final batch, none a TRUNCATE: all of them are
    /// replayed in one round trip ([`replay_all_locked`]).
    Few,
    /// A TRUNCATE, or a final batch or more: replayed batch by batch
    /// ([`replay_batch`]).
    Many,
}

/// What the changelog of each of `synced` holds ([`Waiting`]), in their
/// order. The locks keep new entries out. One round trip asks every
/// changelog whether it holds an entry (most do not: the catch-up before
/// the locks took them); a second, only when some do, asks those whether
/// they hold a TRUNCATE or a final batch's worth.
async fn changelogs_waiting(client: &Client, synced: &[SyncedTable]) -> Result<Vec<Waiting>> {
    let log = |t: &SyncedTable| qualified(META_SCHEMA, &t.changelog);
    let ask = |sql: String| async move {
        client
            .query_one(sql.as_str(), &[])
            .await
            .map_err(|e| pg_error_as(e, "reading the changelogs"))
            .map(|row| row.get::<_, Vec<bool>>(0))
    };
    let any = ask(format!(
        "SELECT ARRAY[{}]::bool[]",
        joined(synced, ", ", |t| format!(
            "EXISTS (SELECT 1 FROM {})",
            log(t)
        ))
    ))
    .await?;
    let written: Vec<&SyncedTable> = synced
        .iter()
        .zip(&any)
        .filter_map(|(t, any)| any.then_some(t))
        .collect();
    if written.is_empty() {
        return Ok(vec![Waiting::None; synced.len()]);
    }
    let mut many = ask(format!(
        "SELECT ARRAY[{}]::bool[]",
        joined(&written, ", ", |t| format!(
            "EXISTS (SELECT 1 FROM {log} WHERE op = 'T') OR EXISTS (SELECT 1 FROM {log} OFFSET {})",
            FINAL_BATCH - 1,
            log = log(t)
        ))
    ))
    .await?
    .into_iter();
    Ok(any
        .into_iter()
        .map(|any| match (any, any && many.next().unwrap_or(true)) {
            (false, _) => Waiting::None,
            (true, false) => Waiting::Few,
            (true, true) => Waiting::Many,
        })
        .collect())
}

/// The final replay of a table whose changelog holds [`Waiting::Few`]
/// entries and whose keys need no conversion, in one round trip
/// ([`Live::replay_all_sql`], simple query protocol: no parse round trip,
/// no entry ids sent back and forth). Under the locks the entries are all
/// there is; a statement that fails fails the swap transaction, as the
/// batch's would. Returns the entries replayed.
async fn replay_all_locked(client: &Client, l: &Live) -> Result<u64> {
    let what = format!("replaying the changelog of {}", l.name);
    let messages = client
        .simple_query(&l.replay_all_sql())
        .await
        .map_err(|e| replay_error(e, &what))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .last()
        .unwrap_or(0))
}

/// `"schema"."name"` of the relations of `oids` that exist, by oid, in one
/// round trip.
async fn rel_names(client: &Client, oids: &[u32]) -> Result<HashMap<u32, String>> {
    Ok(client
        .query(
            "SELECT c.oid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = ANY ($1::pg_catalog.oid[])",
            &[&oids],
        )
        .await
        .map_err(|e| pg_error_as(e, "looking up the preserved tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Who is who in the warnings of [`carry_standalone_sequences`]: a swap
/// carries the destination's sequences into the source's, a rollback with
/// kept tables the current public's into the backup's.
#[derive(Debug, Clone, Copy)]
pub struct CarrySides {
    /// The sequence that stays live until the COMMIT.
    pub live: &'static str,
    /// Whose it is, as the one that has passed a value.
    pub live_side: &'static str,
    /// Whose definition the incoming sequence has.
    pub incoming: &'static str,
    /// What to do about a sequence carried to the end of that definition.
    pub widen: &'static str,
}

impl CarrySides {
    pub const SWAP: CarrySides = CarrySides {
        live: "the destination's sequence",
        live_side: "the destination",
        incoming: "the source's",
        widen: "widen it on the source (ALTER SEQUENCE … MAXVALUE/MINVALUE) and prepare again",
    };
    pub const ROLLBACK: CarrySides = CarrySides {
        live: "the current sequence",
        live_side: "the current public",
        incoming: "the backup's",
        widen: "widen it after the rollback (ALTER SEQUENCE … MAXVALUE/MINVALUE)",
    };
}

/// A sequence no column owns or draws from by a default that a live schema
/// and its shadow both have ([`carry_standalone_sequences`]).
struct Standalone {
    /// Both quoted and schema-qualified.
    live: String,
    /// The live one's schema and name.
    live_at: (String, String),
    shadow: String,
    /// This role may lock the live sequence (it is a member of its owner).
    owner: bool,
    /// This role may read both and set the shadow's.
    may: bool,
    /// The live sequence's increment.
    inc: i64,
    /// The shadow's (the source's) definition.
    shadow_inc: i64,
    min: i64,
    max: i64,
    cycle: bool,
}

/// What the swap does with one such sequence, from both states.
struct StandalonePlan {
    /// The state `setval` gives the shadow's, or `None` to keep the source's.
    set: Option<(i64, bool)>,
    /// What the operator should hear about it.
    warning: Option<String>,
}

impl Standalone {
    fn unreadable(&self) -> String {
        format!(
            "sequence {}: this role may not read both sequences, so its value is the source's",
            self.live
        )
    }

    fn plan(
        &self,
        (ll, lc): (i64, bool),
        (sl, sc): (i64, bool),
        sides: CarrySides,
    ) -> StandalonePlan {
        let live = &self.live;
        let CarrySides {
            live: current,
            live_side,
            incoming,
            widen,
        } = sides;
        let (inc, min, max) = (self.shadow_inc, self.min, self.max);
        let further = if self.inc > 0 {
            next_value(ll, lc, self.inc) > next_value(sl, sc, self.inc)
        } else {
            next_value(ll, lc, self.inc) < next_value(sl, sc, self.inc)
        };
        if !further {
            return StandalonePlan {
                set: None,
                warning: None,
            };
        }
        if (inc > 0) != (self.inc > 0) || ll < min || ll > max {
            return StandalonePlan {
                set: None,
                warning: Some(format!(
                    "sequence {live}: {current} is further on ({ll}), but its value does not fit {incoming} definition (increment {inc}, {min} to {max}): it takes {incoming} value, which {live_side} has passed"
                )),
            };
        }
        // Carried on at the very end of a definition that does not cycle:
        // the next `nextval` fails (as handing out a passed value again
        // would be worse, it is carried on all the same).
        let at_end = lc && !self.cycle && ll == if inc > 0 { max } else { min };
        StandalonePlan {
            set: Some((ll, lc)),
            warning: at_end.then(|| format!(
                "sequence {live}: {current} is at {ll}, the end of {incoming} definition (increment {inc}, {min} to {max}), so its next nextval fails; {widen}"
            )),
        }
    }
}

/// The sequences no column uses that the live schemas and their shadows
/// both have.
async fn standalone_sequences(client: &Client, pairs: &[SchemaPair]) -> Result<Vec<Standalone>> {
    let lives: Vec<&str> = pairs.iter().map(|p| p.live.as_str()).collect();
    let shadows: Vec<&str> = pairs.iter().map(|p| p.shadow.as_str()).collect();
    let rows = client
        .query(
            "WITH pair(live, shadow) AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])))
             SELECT pg_catalog.quote_ident(p.live) || '.' || pg_catalog.quote_ident(l.relname),
                    pg_catalog.quote_ident(p.shadow) || '.' || pg_catalog.quote_ident(s.relname),
                    ls.seqincrement,
                    pg_catalog.pg_has_role(l.relowner, 'USAGE'),
                    pg_catalog.has_sequence_privilege(l.oid, 'SELECT')
                      AND pg_catalog.has_sequence_privilege(s.oid, 'SELECT')
                      AND pg_catalog.has_sequence_privilege(s.oid, 'UPDATE'),
                    ss.seqincrement, ss.seqmin, ss.seqmax, ss.seqcycle,
                    p.live, l.relname::text
               FROM pair p
               JOIN pg_catalog.pg_namespace sn ON sn.nspname = p.shadow
               JOIN pg_catalog.pg_class s ON s.relnamespace = sn.oid AND s.relkind = 'S'
               JOIN pg_catalog.pg_namespace ln ON ln.nspname = p.live
               JOIN pg_catalog.pg_class l ON l.relnamespace = ln.oid AND l.relkind = 'S' AND l.relname = s.relname
               JOIN pg_catalog.pg_sequence ls ON ls.seqrelid = l.oid
               JOIN pg_catalog.pg_sequence ss ON ss.seqrelid = s.oid
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                   AND d.objid IN (s.oid, l.oid) AND d.deptype IN ('a', 'i'))
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                                   AND d.refobjid = s.oid AND d.deptype = 'n')
              ORDER BY p.live, l.relname",
            &[&lives, &shadows],
        )
        .await
        .map_err(|e| pg_error_as(e, "listing the sequences no column uses"))?;
    Ok(rows
        .iter()
        .map(|r| Standalone {
            live: r.get(0),
            shadow: r.get(1),
            inc: r.get(2),
            owner: r.get(3),
            may: r.get(4),
            shadow_inc: r.get(5),
            min: r.get(6),
            max: r.get(7),
            cycle: r.get(8),
            live_at: (r.get(9), r.get(10)),
        })
        .collect())
}

/// The warnings [`carry_standalone_sequences`] would give if the swap (or
/// the rollback keeping tables) ran now (read only, locks nothing: for
/// prepare and the dry runs). `given_back`: the incoming sequences a swap
/// fenced, whose definitions and states the rollback gives back before it
/// carries (`swap::fence::restore`): those are weighed, not the fences.
pub async fn standalone_sequence_warnings(
    client: &Client,
    pairs: &[SchemaPair],
    sides: CarrySides,
    given_back: &[FencedSequence],
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for mut s in standalone_sequences(client, pairs).await? {
        if !s.may {
            out.push(s.unreadable());
            continue;
        }
        let live = sequence_state(client, &s.live).await?;
        let fenced = given_back
            .iter()
            .find(|f| f.schema == s.live_at.0 && f.name == s.live_at.1);
        let incoming = match fenced {
            Some(f) => {
                (s.min, s.max, s.cycle) = (f.min, f.max, f.cycle);
                (f.last_value, f.is_called)
            }
            None => sequence_state(client, &s.shadow).await?,
        };
        out.extend(s.plan(live, incoming, sides).warning);
    }
    Ok(out)
}

/// Inside the open swap transaction of a migration with preserved tables,
/// before the moves: each sequence of a shadow that no column owns or draws
/// from by a default, and that its live schema has too, continues after the
/// greater of the two next values. The application calls `nextval` on such a
/// sequence itself (Hibernate's `SEQUENCE` ids) and may key a preserved
/// table's rows with it: taking the source's value alone would hand those
/// keys out again. The live sequence is fenced first ([`Fences`]: locked,
/// read, and stopped at the value read, so that nothing drawn from it before
/// or after the commit is handed out again); one that stays in use after
/// the swap is only locked (`ALTER SEQUENCE … OWNED BY NONE`, which it
/// already is: SHARE ROW EXCLUSIVE, which `nextval` waits for).
/// Returns one warning for each sequence left at the source's value
/// although the destination's is further on, or carried on to the very end
/// of the source's definition (also logged).
pub async fn carry_standalone_sequences(
    client: &Client,
    pairs: &[SchemaPair],
    fences: &mut Fences,
    sides: CarrySides,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut warn = |line: String| {
        tracing::warn!("{line}");
        warnings.push(line);
    };
    let standalone = standalone_sequences(client, pairs).await?;
    let fenceable: Vec<(String, String)> = standalone
        .iter()
        .filter(|s| s.may)
        .map(|s| s.live_at.clone())
        .collect();
    fences.fence_all(client, &fenceable).await?;
    // The others this role owns: only an owner may lock one so; otherwise a
    // value drawn between the read and the commit may come again.
    let lock: String = standalone
        .iter()
        .filter(|s| s.may && s.owner && fences.state(&s.live_at.0, &s.live_at.1).is_none())
        .map(|s| format!("ALTER SEQUENCE {} OWNED BY NONE;\n", s.live))
        .collect();
    if !lock.is_empty() {
        exec(client, &lock, "locking the sequences no column uses").await?;
    }
    // Their states, in one round trip (each one's time is lock time).
    let read: Vec<String> = standalone
        .iter()
        .filter(|s| s.may)
        .flat_map(|s| {
            let live = fences
                .state(&s.live_at.0, &s.live_at.1)
                .is_none()
                .then(|| s.live.clone());
            live.into_iter().chain([s.shadow.clone()])
        })
        .collect();
    let states = crate::swap::fence::sequence_states(client, &read).await?;
    let state = |qual: &str| {
        states
            .get(qual)
            .copied()
            .with_context(|| format!("sequence {qual} was not read"))
    };
    let (mut quals, mut values, mut called) = (Vec::new(), Vec::new(), Vec::new());
    for s in standalone {
        if !s.may {
            warn(s.unreadable());
            continue;
        }
        let live = &s.live;
        let live_state = match fences.state(&s.live_at.0, &s.live_at.1) {
            Some(state) => state,
            None => state(live)?,
        };
        let plan = s.plan(live_state, state(&s.shadow)?, sides);
        if let Some((value, is_called)) = plan.set {
            quals.push(s.shadow.clone());
            values.push(value);
            called.push(is_called);
            tracing::info!(sequence = %live, value, "sequence no column uses kept the destination's further value");
        }
        if let Some(w) = plan.warning {
            warn(w);
        }
    }
    set_sequences(client, &quals, &values, &called).await?;
    Ok(warnings)
}

/// `setval` each of `quals` (quoted, qualified) to its value and
/// `is_called`, in one round trip.
async fn set_sequences(
    client: &Client,
    quals: &[String],
    values: &[i64],
    called: &[bool],
) -> Result<()> {
    if quals.is_empty() {
        return Ok(());
    }
    client
        .query(
            "SELECT pg_catalog.setval(u.q::pg_catalog.regclass, u.v, u.c)
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::int8[]), pg_catalog.unnest($3::bool[])) AS u(q, v, c)",
            &[&quals, &values, &called],
        )
        .await
        .map_err(|e| pg_error_as(e, "setting the sequences the swap carries over"))?;
    Ok(())
}

/// The value the next `nextval` returns, from `last_value`, `is_called`.
fn next_value(last: i64, called: bool, increment: i64) -> i128 {
    if called {
        last as i128 + increment as i128
    } else {
        last as i128
    }
}

/// Where a column sequence of a preserved table's shadow continues after the
/// swap: the state `setval` gives it (`last_value`, `is_called`), the value
/// `nextval` then returns, and where it came from (the column whose
/// candidate won, for a sequence several columns draw from).
struct Carry {
    seq: SeqRow,
    value: i64,
    is_called: bool,
    next: i128,
    from: CarryFrom,
}

#[derive(Clone, Copy, PartialEq)]
enum CarryFrom {
    /// The shadow's own state (the source's).
    Shadow,
    /// The destination's sequence for the same column.
    Sequence,
    /// The greatest (least, for a descending sequence) value of the column
    /// in the destination's rows, the destination having no sequence for it.
    Rows,
}

impl Carry {
    /// Why the sequence cannot carry on from this state: a value the
    /// source's definition does not allow (a lower `MAXVALUE`, a higher
    /// `MINVALUE`), which `setval` refuses, or the destination's value at
    /// the end of it, where the next insert fails (unless it cycles).
    /// `None` when it fits.
    fn misfit(&self, t: &SyncedTable) -> Option<String> {
        let s = &self.seq;
        let bounds = i128::from(s.min)..=i128::from(s.max);
        let outside = !bounds.contains(&i128::from(self.value));
        let at_end = self.from != CarryFrom::Shadow && !s.cycle && !bounds.contains(&self.next);
        if !outside && !at_end {
            return None;
        }
        let reached = match self.from {
            CarryFrom::Shadow => "the source's sequence is at",
            CarryFrom::Sequence => "the destination's sequence is at",
            CarryFrom::Rows => "the destination's rows hold",
        };
        let beyond = if outside {
            "outside the source's definition"
        } else {
            "the end of the source's definition, so the next insert would fail"
        };
        // The sequence by its live schema (the shadow's is pgshift's).
        let seq = if s.schema == crate::pg::meta::shadow_schema_for(&t.schema) {
            crate::pg::meta::table_shown(&t.schema, &s.name)
        } else {
            crate::pg::meta::table_shown(&s.schema, &s.name)
        };
        Some(format!(
            "sequence {seq} of preserved table {} (column {}) cannot continue after the destination's rows: {reached} {}, {beyond} ({} to {}); widen it on the source (ALTER SEQUENCE … MAXVALUE/MINVALUE) and prepare again",
            crate::pg::meta::table_shown(&t.schema, &t.name),
            display_ident(&s.column),
            self.value,
            s.min,
            s.max
        ))
    }
}

/// What the carry of the preserved tables' column sequences reads, for all
/// of them at once (each query's time is lock time in the swap): the
/// columns' sequences of each table on both sides, and the state
/// (`last_value`, `is_called`) of each sequence whose state counts, but those
/// fenced in this transaction (their state before the fence counts).
struct SeqFacts {
    columns: HashMap<u32, Vec<SeqRow>>,
    states: HashMap<String, (i64, bool)>,
}

impl SeqFacts {
    /// The columns' sequences of `synced` (both sides), in one round trip.
    async fn columns(client: &Client, synced: &[SyncedTable]) -> Result<HashMap<u32, Vec<SeqRow>>> {
        let rels: Vec<u32> = synced.iter().flat_map(|t| [t.oid, t.shadow_oid]).collect();
        columns_sequences(client, &rels).await
    }

    /// With the states of the sequences not in `fenced`, in one round trip.
    async fn read(
        client: &Client,
        columns: HashMap<u32, Vec<SeqRow>>,
        fenced: Option<&Fences>,
    ) -> Result<SeqFacts> {
        let quals: Vec<String> = columns
            .values()
            .flatten()
            .filter(|s| fenced.and_then(|f| f.state(&s.schema, &s.name)).is_none())
            .map(|s| s.qual.clone())
            .unique()
            .collect();
        let states = crate::swap::fence::sequence_states(client, &quals).await?;
        Ok(SeqFacts { columns, states })
    }

    fn of(&self, rel: u32) -> &[SeqRow] {
        self.columns.get(&rel).map_or(&[], Vec::as_slice)
    }

    /// A sequence's state: as read, or before its fence.
    fn state(&self, s: &SeqRow, fenced: Option<&Fences>) -> Result<(i64, bool)> {
        fenced
            .and_then(|f| f.state(&s.schema, &s.name))
            .or_else(|| self.states.get(&s.qual).copied())
            .with_context(|| format!("sequence {} was not read", s.qual))
    }
}

/// Each sequence of the shadow table's columns (owned, or drawn from by a
/// default) continues after the greatest of its own next value and the
/// destination's (each of the destination's sequences for the same column:
/// the one it owns and the one its default draws from, which may differ; or
/// the column's maximum in `shadow_rel`, which holds the destination's rows,
/// when it has none), over every column that draws from it. Reads only.
/// `fenced`: the destination's sequences fenced in this transaction, whose
/// state before the fence counts.
async fn carry_plan(
    client: &Client,
    t: &SyncedTable,
    shadow_rel: &str,
    facts: &SeqFacts,
    fenced: Option<&Fences>,
) -> Result<Vec<Carry>> {
    // A column may have two: the sequence it owns and another its default
    // draws from (a default changed after a serial column was created).
    let mut public: HashMap<String, Vec<&SeqRow>> = HashMap::new();
    for s in facts.of(t.oid) {
        public.entry(s.column.clone()).or_default().push(s);
    }
    let mut plan: Vec<Carry> = Vec::new();
    for s in facts.of(t.shadow_oid) {
        let inc = s.increment;
        // Each candidate state (`last_value`, `is_called`) with the value
        // nextval would give: the shadow's own, the destination's sequence
        // for the column, or the column's extreme as if just drawn. The one
        // that continues furthest wins and is set as it is, so the carried
        // sequence reads like the one it came from (`pg_sequences.last_value`
        // stays set when it was).
        let (last, called) = facts.state(s, None)?;
        let mut candidates = vec![(
            next_value(last, called, inc),
            last,
            called,
            CarryFrom::Shadow,
        )];
        if let Some(ps) = public.get(&s.column) {
            for p in ps {
                let (pl, pc) = facts.state(p, fenced)?;
                candidates.push((next_value(pl, pc, p.increment), pl, pc, CarryFrom::Sequence));
            }
        } else {
            let agg = if inc > 0 { "max" } else { "min" };
            let v: Option<i64> = client
                .query_one(
                    format!(
                        "SELECT pg_catalog.{agg}({})::bigint FROM ONLY {shadow_rel}",
                        quote_ident(&s.column),
                    )
                    .as_str(),
                    &[],
                )
                .await
                .map_err(|e| {
                    pg_error_as(
                        e,
                        &format!("reading {}.{}", t.shown(), display_ident(&s.column)),
                    )
                })?
                .get(0);
            if let Some(v) = v {
                candidates.push((next_value(v, true, inc), v, true, CarryFrom::Rows));
            }
        }
        let (next, value, is_called, from) = candidates
            .into_iter()
            .reduce(|best, c| if further(inc, c.0, best.0) { c } else { best })
            .expect("the shadow's own state");
        merge_carry(
            &mut plan,
            Carry {
                seq: s.clone(),
                value,
                is_called,
                next,
                from,
            },
        );
    }
    Ok(plan)
}

/// Whether `a` continues further than `b` for a sequence of increment `inc`
/// (ties keep the earlier candidate: the shadow's own state first).
fn further(inc: i64, a: i128, b: i128) -> bool {
    if inc > 0 { a > b } else { a < b }
}

/// Columns (of one table or several) that draw from one sequence: it
/// continues after the furthest of them all (a plan per column would set
/// it back).
fn merge_carry(plan: &mut Vec<Carry>, c: Carry) {
    match plan.iter_mut().find(|p| p.seq.qual == c.seq.qual) {
        Some(same) => {
            if further(c.seq.increment, c.next, same.next) {
                *same = c;
            }
        }
        None => plan.push(c),
    }
}

/// Carry the column sequences of `synced` over ([`carry_plan`]), after
/// fencing the destination's ([`Fences`]); a value the source's sequence
/// cannot hold fails the swap (its rows hold those keys). `shadow_rel`:
/// each table's shadow relation. A handful of round trips for all tables,
/// but the fences (a few per sequence).
async fn carry_sequences(
    client: &Client,
    synced: &[SyncedTable],
    shadow_rel: impl Fn(&SyncedTable) -> Result<String>,
    fences: &mut Fences,
) -> Result<()> {
    let columns = SeqFacts::columns(client, synced).await?;
    let live: Vec<(String, String)> = synced
        .iter()
        .flat_map(|t| columns.get(&t.oid).into_iter().flatten())
        .map(|s| (s.schema.clone(), s.name.clone()))
        .collect();
    fences.fence_all(client, &live).await?;
    let facts = SeqFacts::read(client, columns, Some(fences)).await?;
    let mut carried: Vec<Carry> = Vec::new();
    for t in synced {
        for c in carry_plan(client, t, &shadow_rel(t)?, &facts, Some(fences)).await? {
            if let Some(why) = c.misfit(t) {
                bail!(why);
            }
            merge_carry(&mut carried, c);
        }
    }
    let quals: Vec<String> = carried.iter().map(|c| c.seq.qual.clone()).collect();
    let values: Vec<i64> = carried.iter().map(|c| c.value).collect();
    let called: Vec<bool> = carried.iter().map(|c| c.is_called).collect();
    set_sequences(client, &quals, &values, &called).await?;
    for c in &carried {
        tracing::debug!(sequence = %c.seq.name, value = c.value, "sequence carried over");
    }
    Ok(())
}

/// The column sequences of the preserved tables that the swap could not carry
/// over as they stand now, one line each (read only: for the swap's checks
/// before its locks, its dry run and `status`).
pub async fn sequence_misfits(client: &Client, synced: &[SyncedTable]) -> Result<Vec<String>> {
    let shadows: Vec<u32> = synced.iter().map(|t| t.shadow_oid).collect();
    let names = rel_names(client, &shadows).await?;
    let facts = SeqFacts::read(client, SeqFacts::columns(client, synced).await?, None).await?;
    let mut out = Vec::new();
    for t in synced {
        let shadow_rel = names
            .get(&t.shadow_oid)
            .with_context(|| format!("preserved table {}: its shadow table is gone", t.shown()))?;
        for c in carry_plan(client, t, shadow_rel, &facts, None).await? {
            out.extend(c.misfit(t));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Health (for status)
// ---------------------------------------------------------------------------------------

/// One sync trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TriggerHealth {
    pub name: String,
    pub present: bool,
    /// Fires for ordinary sessions (`tgenabled` O or A).
    pub enabled: bool,
}

/// The sync of one preserved table, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncHealth {
    pub table: String,
    pub triggers: Vec<TriggerHealth>,
    /// All four triggers present and enabled.
    pub triggers_ok: bool,
    pub changelog_present: bool,
    /// Changelog entries not replayed yet.
    pub pending: Option<i64>,
    pub rows_public: Option<i64>,
    pub rows_shadow: Option<i64>,
}

impl SyncHealth {
    /// Triggers working and nothing left to replay.
    pub fn in_sync(&self) -> bool {
        self.triggers_ok && self.pending == Some(0)
    }
}

impl fmt::Display for SyncHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
        let on = self
            .triggers
            .iter()
            .filter(|t| t.present && t.enabled)
            .count();
        write!(
            f,
            "{}: triggers {}/{} enabled, {} pending, rows {} in public, {} in shadow",
            display_ident(&self.table),
            on,
            self.triggers.len(),
            n(self.pending),
            n(self.rows_public),
            n(self.rows_shadow)
        )
    }
}

/// Why the sync of a preserved table cannot be trusted any more (one of its
/// triggers missing or disabled, its changelog gone): writes made meanwhile
/// were not logged, and the swap would leave them in the backup. None when
/// every sync is whole. Cheaper than [`health`] (no row counts): the swap
/// and its dry run ask it.
pub async fn broken(client: &Client, synced: &[SyncedTable]) -> Result<Option<String>> {
    for t in synced {
        let triggers = trigger_health(client, t).await?;
        let changelog = changelog_present(client, t).await?;
        let on = triggers.iter().filter(|t| t.present && t.enabled).count();
        if on < triggers.len() || !changelog {
            return Ok(Some(format!(
                "the sync of {} is broken (triggers {on}/{} enabled{}): writes may have been missed; run `pgshift abort` and prepare again",
                t.shown(),
                triggers.len(),
                if changelog { "" } else { ", changelog missing" }
            )));
        }
    }
    if let Some(why) = unowned(client, synced).await? {
        return Ok(Some(why));
    }
    for t in synced {
        if let Err(e) = check_replayable(client, t).await {
            return Ok(Some(unreplayable(t, &e)));
        }
        if let Some(why) = hidden_rows(client, t).await? {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// The live tables with sync triggers that belong to a role this one does
/// not act as (their owner changed since prepare, to a role it is not a
/// member of or does not inherit): the swap drops their triggers and carries
/// their sequences under its locks, and failed there ("must be owner of
/// relation …", h46a). Said as `abort` says it (`prepare::discard`), by
/// `status`, the dry run and the swap, before any lock.
pub async fn unowned(client: &Client, synced: &[SyncedTable]) -> Result<Option<String>> {
    if synced.is_empty() {
        return Ok(None);
    }
    let oids: Vec<u32> = synced.iter().map(|t| t.oid).collect();
    let rows = client
        .query(
            "SELECT c.oid, pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text,
                    (SELECT r.rolinherit FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
               FROM pg_catalog.pg_class c
              WHERE c.oid = ANY($1) AND NOT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')",
            &[&oids],
        )
        .await
        .map_err(|e| pg_error_as(e, "reading the owners of the preserved tables"))?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let me = display_ident(first.get(2));
    let owner = display_ident(first.get(1));
    let listed: Vec<String> = synced
        .iter()
        .filter_map(|t| {
            let r = rows.iter().find(|r| r.get::<_, u32>(0) == t.oid)?;
            Some(format!(
                "{} (owned by {})",
                t.shown(),
                display_ident(r.get(1))
            ))
        })
        .collect();
    // A role that inherits nothing gains nothing by a grant (h47a).
    let fix = if first.get::<_, Option<bool>>(3) == Some(false) {
        format!(
            "ALTER ROLE {me} INHERIT ({me} does not inherit the privileges of the roles it is a member of), or give the table back to {me}"
        )
    } else {
        format!(
            "GRANT {owner} TO {me} (or give the table back to a role {me} is a member of and inherits from)"
        )
    };
    Ok(Some(format!(
        "role {me} may not drop pgshift's sync triggers on {}, which the swap does: their owner changed since prepare; {fix}",
        listed.join(", ")
    )))
}

/// Why the sync of `t` cannot be replayed (a column dropped or renamed since
/// prepare), as status and the swap say it.
pub fn unreplayable(t: &SyncedTable, e: &anyhow::Error) -> String {
    format!(
        "the sync of {} cannot be replayed ({e:#}); run `pgshift abort` and prepare again",
        t.shown()
    )
}

/// Row-level security that applies to this role on `t`'s live or shadow
/// table (turned on, or forced, since prepare): the replay reads the live
/// rows and would miss those its policies hide (pgshift's sessions run with
/// `row_security = off`, so it would fail rather than lose them).
pub async fn hidden_rows(client: &Client, t: &SyncedTable) -> Result<Option<String>> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    (SELECT pg_catalog.row_security_active(c.oid) FROM pg_catalog.pg_class c WHERE c.oid = $1),
                    (SELECT pg_catalog.row_security_active(c.oid) FROM pg_catalog.pg_class c WHERE c.oid = $2)",
            &[&t.oid, &t.shadow_oid],
        )
        .await
        .map_err(|e| pg_error_as(e, "checking row-level security on the preserved tables"))?;
    let (role, live, shadow): (String, Option<bool>, Option<bool>) =
        (row.get(0), row.get(1), row.get(2));
    let which = match (live == Some(true), shadow == Some(true)) {
        (false, false) => return Ok(None),
        (true, _) => "its live table",
        (false, true) => "its shadow table",
    };
    Ok(Some(format!(
        "row-level security applies to role {} on {which} {}: the sync's replay would miss the rows its policies hide; run pgshift as a role with BYPASSRLS (or the table's owner, with FORCE ROW LEVEL SECURITY off until the swap)",
        display_ident(&role),
        t.shown()
    )))
}

/// The four sync triggers of `t`'s live table: present, enabled.
async fn trigger_health(client: &Client, t: &SyncedTable) -> Result<Vec<TriggerHealth>> {
    let states: HashMap<String, String> = client
        .query(
            "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger
              WHERE tgrelid = $1 AND NOT tgisinternal",
            &[&t.oid],
        )
        .await
        .map_err(|e| pg_error_as(e, "listing triggers"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(TRIGGER_NAMES
        .iter()
        .map(|name| {
            let state = states.get(*name);
            TriggerHealth {
                name: name.to_string(),
                present: state.is_some(),
                enabled: state.is_some_and(|s| s == "O" || s == "A"),
            }
        })
        .collect())
}

/// Does `t`'s changelog exist and hold entries (changes not in the shadow
/// yet, or not known to be)?
async fn changes_waiting(client: &Client, t: &SyncedTable) -> Result<bool> {
    if !changelog_present(client, t).await? {
        return Ok(false);
    }
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {})",
        qualified(META_SCHEMA, &t.changelog)
    );
    Ok(client
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| pg_error_as(e, "looking for changes to replay"))?
        .get(0))
}

async fn changelog_present(client: &Client, t: &SyncedTable) -> Result<bool> {
    let log = qualified(META_SCHEMA, &t.changelog);
    Ok(client
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&log])
        .await
        .map_err(|e| pg_error_as(e, "looking up the changelog"))?
        .get(0))
}

/// Per preserved table: triggers present and enabled, pending changelog rows,
/// rows in public and shadow (exact counts). Missing objects show as absent, not
/// as errors.
pub async fn health(client: &Client, synced: &[SyncedTable]) -> Result<Vec<SyncHealth>> {
    let mut out = Vec::new();
    for t in synced {
        let triggers = trigger_health(client, t).await?;
        let log = qualified(META_SCHEMA, &t.changelog);
        let changelog_present = changelog_present(client, t).await?;
        // One snapshot for the three counts, so that while the application
        // writes they agree (the sync applies each write in its own
        // transaction): rows in public and in the shadow differ by what is
        // pending, not by what was written between two counts. Each is None
        // where row-level security applies to this role or it may not read
        // the table (its owner changed since prepare, h43b: `status` failed):
        // not counted rather than counted wrong.
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let counted = async {
            let pending = if changelog_present {
                count_relation(client, &log).await?
            } else {
                None
            };
            let rows_public = match rel_name(client, t.oid).await? {
                Some(r) => count_relation(client, &r).await?,
                None => None,
            };
            let rows_shadow = match rel_name(client, t.shadow_oid).await? {
                Some(r) => count_relation(client, &r).await?,
                None => None,
            };
            client.batch_execute("COMMIT").await?;
            anyhow::Ok((pending, rows_public, rows_shadow))
        }
        .await;
        let (pending, rows_public, rows_shadow) =
            crate::pg::exec::rollback_on_err(client, counted).await?;
        out.push(SyncHealth {
            table: t.display(),
            triggers_ok: triggers.iter().all(|t| t.present && t.enabled),
            triggers,
            changelog_present,
            pending,
            rows_public,
            rows_shadow,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Deferred foreign keys
// ---------------------------------------------------------------------------------------

/// A foreign key found in deferred SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FkDef {
    constraint: String,
    schema: Option<String>,
    table: String,
    /// `ALTER TABLE` without ONLY.
    inh: bool,
    columns: Vec<String>,
    ref_schema: Option<String>,
    ref_table: String,
    /// Empty: the referenced table's primary key.
    ref_columns: Vec<String>,
    match_full: bool,
    /// Already `NOT VALID` in the SQL.
    not_valid: bool,
}

/// The foreign keys the swap creates from `deferred_sql` (the preserved and
/// kept tables' keys): (table, constraint), schemas aside.
pub fn deferred_fk_names(deferred_sql: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sql in deferred_sql {
        if let Ok((fks, _)) = parse_fks(sql) {
            out.extend(fks.into_iter().map(|f| (f.table, f.constraint)));
        }
    }
    out
}

fn string_list(nodes: &[pg_query::protobuf::Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// The foreign keys an `ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY` adds, and the
/// number of statements in `sql`.
fn parse_fks(sql: &str) -> Result<(Vec<FkDef>, usize)> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| anyhow!("parsing deferred SQL: {e}"))?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(NodeEnum::AlterTableStmt(s)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref())
        else {
            continue;
        };
        let Some(rel) = &s.relation else { continue };
        for cmd in &s.cmds {
            if let Some(NodeEnum::AlterTableCmd(c)) = &cmd.node
                && let Some(def) = &c.def
                && let Some(NodeEnum::Constraint(con)) = &def.node
                && con.contype == ConstrType::ConstrForeign as i32
                && let Some(pk) = &con.pktable
            {
                let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
                out.push(FkDef {
                    constraint: con.conname.clone(),
                    schema: opt(&rel.schemaname),
                    table: rel.relname.clone(),
                    inh: rel.inh,
                    columns: string_list(&con.fk_attrs),
                    ref_schema: opt(&pk.schemaname),
                    ref_table: pk.relname.clone(),
                    ref_columns: string_list(&con.pk_attrs),
                    match_full: con.fk_matchtype == "f",
                    not_valid: con.skip_validation,
                });
            }
        }
    }
    Ok((out, parsed.protobuf.stmts.len()))
}

/// Turn a deferred `ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY …;` entry into its
/// `NOT VALID` form: ` NOT VALID` goes before the statement's final `;` (found by
/// PostgreSQL's scanner, so comments and strings cannot fool it). Already-NOT
/// VALID SQL comes back unchanged; anything but one foreign key in one statement
/// is an error.
pub fn not_valid(sql: &str) -> Result<String> {
    let (fks, statements) = parse_fks(sql)?;
    if fks.is_empty() {
        bail!("not a foreign key constraint: {}", first_line(sql));
    }
    if fks.iter().all(|f| f.not_valid) {
        return Ok(sql.to_string());
    }
    if fks.len() != 1 || statements != 1 {
        bail!(
            "expected one statement adding one foreign key: {}",
            first_line(sql)
        );
    }
    let scanned = pg_query::scan(sql).map_err(|e| anyhow!("scanning deferred SQL: {e}"))?;
    let last = scanned
        .tokens
        .iter()
        .rfind(|t| !matches!(t.token(), Token::SqlComment | Token::CComment))
        .context("empty deferred SQL")?;
    let (start, end) = (last.start as usize, last.end as usize);
    if end > sql.len() || !sql.is_char_boundary(start) || !sql.is_char_boundary(end) {
        bail!("the scanner returned a bad token span {start}..{end}");
    }
    let out = if last.token() == Token::Ascii59 {
        format!("{} NOT VALID{}", &sql[..start], &sql[start..])
    } else {
        format!("{} NOT VALID{}", &sql[..end], &sql[end..])
    };
    let (check, _) = parse_fks(&out)?;
    if check.len() != 1 || !check[0].not_valid {
        bail!(
            "could not make the foreign key NOT VALID: {}",
            first_line(sql)
        );
    }
    Ok(out)
}

/// Rows of a foreign key's table without a match in the referenced table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FkViolation {
    pub constraint: String,
    /// The table's live schema (absent = public).
    #[serde(skip_serializing_if = "is_public_str")]
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    /// The referenced table's live schema (absent = public).
    #[serde(skip_serializing_if = "is_public_str")]
    pub referenced_schema: String,
    pub referenced_table: String,
    pub referenced_columns: Vec<String>,
    /// Violating rows.
    pub count: i64,
    /// Up to 5 distinct violating keys, `(v1, v2)`.
    pub examples: Vec<String>,
}

impl fmt::Display for FkViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = |c: &[String]| c.iter().map(|c| display_ident(c)).join(", ");
        let lhs = cols(&self.columns);
        write!(
            f,
            "{}: {} row{} of {} ({}) reference{} no row of {} ({})",
            display_ident(&self.constraint),
            self.count,
            if self.count == 1 { "" } else { "s" },
            crate::pg::meta::table_shown(&self.schema, &self.table),
            lhs,
            if self.count == 1 { "s" } else { "" },
            crate::pg::meta::table_shown(&self.referenced_schema, &self.referenced_table),
            cols(&self.referenced_columns),
        )?;
        if !self.examples.is_empty() {
            let ex: Vec<String> = self
                .examples
                .iter()
                .map(|e| format!("({lhs})={e}"))
                .collect();
            write!(f, ", e.g. {}", ex.join(", "))?;
        }
        Ok(())
    }
}

async fn primary_key_columns(client: &Client, rel: &str) -> Result<Vec<String>> {
    let row = client
        .query_opt(
            "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
               FROM pg_catalog.pg_index i WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisprimary",
            &[&rel],
        )
        .await
        .map_err(|e| pg_error_as(e, "reading a primary key"))?;
    row.map(|r| r.get(0))
        .with_context(|| format!("{rel} has no primary key for a foreign key to reference"))
}

/// For each deferred foreign key (all in schema shadow), the rows of the
/// referencing table whose non-null key has no match in the referenced table
/// (MATCH FULL: partially null keys too), with up to 5 example keys. Foreign keys
/// that are NOT VALID in the source are not checked. Tables are named in the
/// live schema `pairs` maps their shadow to.
pub async fn fk_violations(
    client: &Client,
    deferred_sql: &[String],
    pairs: &[SchemaPair],
) -> Result<FkCheck> {
    let live = |schema: &str| {
        pairs
            .iter()
            .find(|p| p.shadow == schema)
            .map_or_else(|| schema.to_string(), |p| p.live.clone())
    };
    let mut out = FkCheck::default();
    for sql in deferred_sql {
        let (fks, _) = parse_fks(sql)?;
        for fk in fks.into_iter().filter(|f| !f.not_valid) {
            let schema = fk.schema.as_deref().unwrap_or(SHADOW_SCHEMA);
            let ref_schema = fk.ref_schema.as_deref().unwrap_or(SHADOW_SCHEMA);
            let child = qualified(schema, &fk.table);
            let parent = qualified(ref_schema, &fk.ref_table);
            let ref_columns = if fk.ref_columns.is_empty() {
                primary_key_columns(client, &parent).await?
            } else {
                fk.ref_columns.clone()
            };
            if ref_columns.len() != fk.columns.len() || fk.columns.is_empty() {
                bail!(
                    "foreign key {} has {} columns referencing {}",
                    fk.constraint,
                    fk.columns.len(),
                    ref_columns.len()
                );
            }
            // A kept table (or a preserved one changed since) may lack the
            // unique key the source's table has: the key could not be
            // created, and the swap would fail inside its transaction.
            let unique: bool = client
                .query_one(
                    "SELECT EXISTS (
                       SELECT 1 FROM pg_catalog.pg_index i
                        WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisunique AND i.indimmediate
                          AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
                          AND ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                                      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                     WHERE k.ord <= i.indnkeyatts ORDER BY 1)
                              = ARRAY(SELECT c FROM unnest($2::text[]) c ORDER BY 1))",
                    &[&parent, &ref_columns],
                )
                .await
                .map_err(|e| pg_error_as(e, "looking for a referenced unique key"))?
                .get(0);
            if !unique {
                crate::refuse!(
                    "foreign key {} of {} references {} ({}), which has no unique key on those columns on the destination: the swap could not create it; add one, or migrate that table instead of keeping it",
                    display_ident(&fk.constraint),
                    crate::pg::meta::table_shown(&live(schema), &fk.table),
                    crate::pg::meta::table_shown(&live(ref_schema), &fk.ref_table),
                    ref_columns.iter().map(|c| display_ident(c)).join(", ")
                );
            }
            // Row-level security that applies to this role hides rows from the
            // check (and, with `row_security = off`, makes it fail): the key
            // cannot be checked here; the swap refuses it unless allowed, and
            // PostgreSQL's validation right after the swap bypasses RLS.
            let hidden: bool = client
                .query_one(
                    "SELECT coalesce(pg_catalog.row_security_active(pg_catalog.to_regclass($1)), false)
                         OR coalesce(pg_catalog.row_security_active(pg_catalog.to_regclass($2)), false)",
                    &[&child, &parent],
                )
                .await
                .map_err(|e| pg_error_as(e, "checking row-level security on a foreign key's tables"))?
                .get(0);
            if hidden {
                out.unchecked.push(format!(
                    "foreign key {} of {} cannot be checked before the swap: row-level security on {} hides rows from this role",
                    display_ident(&fk.constraint),
                    crate::pg::meta::table_shown(&live(schema), &fk.table),
                    crate::pg::meta::table_shown(&live(ref_schema), &fk.ref_table),
                ));
                continue;
            }
            let parent_kind: Option<String> = client
                .query_one(
                    "SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
                    &[&parent],
                )
                .await
                .map(|r| r.get(0))
                .ok();
            let c = |col: &str| format!("c.{}", quote_ident(col));
            let matches = fk
                .columns
                .iter()
                .zip(&ref_columns)
                .map(|(a, b)| format!("r.{} = {}", quote_ident(b), c(a)))
                .join(" AND ");
            let no_match = format!(
                "NOT EXISTS (SELECT 1 FROM {}{parent} r WHERE {matches})",
                if parent_kind.as_deref() == Some("p") {
                    ""
                } else {
                    "ONLY "
                }
            );
            let all_set = fk
                .columns
                .iter()
                .map(|a| format!("{} IS NOT NULL", c(a)))
                .collect::<Vec<_>>();
            let cond = if fk.match_full {
                let any_null = fk
                    .columns
                    .iter()
                    .map(|a| format!("{} IS NULL", c(a)))
                    .collect::<Vec<_>>();
                format!(
                    "({}) AND ({} OR {no_match})",
                    all_set.join(" OR "),
                    any_null.join(" OR ")
                )
            } else {
                format!("{} AND {no_match}", all_set.join(" AND "))
            };
            let example = fk
                .columns
                .iter()
                .map(|a| format!("COALESCE(v.{}::text, 'null')", quote_ident(a)))
                .join(", ");
            let query = format!(
                "WITH v AS MATERIALIZED (SELECT {cols} FROM {only}{child} c WHERE {cond})
                 SELECT (SELECT count(*) FROM v),
                        ARRAY(SELECT e FROM (SELECT DISTINCT '(' || concat_ws(', ', {example}) || ')' AS e FROM v) d
                               ORDER BY e LIMIT 5)",
                cols = fk
                    .columns
                    .iter()
                    .map(|a| c(a))
                    .join(", "),
                only = if fk.inh { "" } else { "ONLY " },
            );
            let row = client
                .query_one(query.as_str(), &[])
                .await
                .map_err(|e| pg_error_as(e, &format!("checking foreign key {}", fk.constraint)))?;
            let count: i64 = row.get(0);
            if count > 0 {
                out.violations.push(FkViolation {
                    constraint: fk.constraint,
                    schema: live(schema),
                    referenced_schema: live(ref_schema),
                    table: fk.table,
                    columns: fk.columns,
                    referenced_table: fk.ref_table,
                    referenced_columns: ref_columns,
                    count,
                    examples: row.get(1),
                });
            }
        }
    }
    Ok(out)
}

/// [`fk_violations`] of each of `deferred` (lists of `ALTER TABLE … ADD
/// CONSTRAINT` statements) as they stand once the changes waiting in the
/// preserved tables' changelogs are replayed, which the swap does before it
/// creates the keys. A write's apply to the shadow gives way to a lock (the
/// trigger's 100 ms `lock_timeout`) and its key waits in the changelog: a row
/// of another table written in the same transaction then references, in the
/// shadow alone, a row that is not there yet, and the plain check would
/// refuse a swap that never meets it. So when that check finds violations
/// and changes wait, they are replayed in a transaction that is rolled back
/// (READ COMMITTED, the trial's short `lock_timeout`, a bounded time), the
/// keys checked there, and that answer given; when the trial gets no answer,
/// the plain check's stands.
pub async fn fk_violations_replayed(
    client: &Client,
    synced: &[SyncedTable],
    deferred: &[&[String]],
    pairs: &[SchemaPair],
) -> Result<FkCheck> {
    let check_all = async || -> Result<FkCheck> {
        let mut out = FkCheck::default();
        for sql in deferred {
            out.extend(fk_violations(client, sql, pairs).await?);
        }
        Ok(out)
    };
    let plain = check_all().await?;
    if plain.violations.is_empty() {
        return Ok(plain);
    }
    let mut waiting = Vec::new();
    for t in synced {
        if changes_waiting(client, t).await? {
            waiting.push(describe(client, t).await?);
        }
    }
    if waiting.is_empty() {
        return Ok(plain);
    }
    exec(
        client,
        &format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{APPLY_LOCK_TIMEOUT}'; SET LOCAL statement_timeout = '{}ms'; {}",
            FK_TRIAL_BUDGET.as_millis(),
            via_text_local()
        ),
        "starting a trial replay for the foreign-key check",
    )
    .await?;
    let started = Instant::now();
    let tried = async {
        for l in &waiting {
            while replay_batch(client, l, BATCH, Writes::Concurrent).await? >= BATCH as u64 {
                if started.elapsed() >= FK_TRIAL_BUDGET {
                    bail!("more changes wait than the trial replays in {FK_TRIAL_BUDGET:?}");
                }
            }
        }
        check_all().await
    }
    .await;
    exec(client, "ROLLBACK", "ending a trial replay").await?;
    match tried {
        Ok(replayed) => Ok(replayed),
        Err(e) => {
            tracing::debug!("foreign keys after the waiting changes: no answer: {e:#}");
            Ok(plain)
        }
    }
}

/// How long [`fk_violations_replayed`]'s trial may take (each statement, and
/// the replay as a whole).
const FK_TRIAL_BUDGET: Duration = Duration::from_secs(30);

/// What [`fk_violations`] found: the keys the rows break, and the keys it
/// could not check (one line each: why).
#[derive(Debug, Default, Clone)]
pub struct FkCheck {
    pub violations: Vec<FkViolation>,
    pub unchecked: Vec<String>,
}

impl FkCheck {
    pub fn extend(&mut self, other: FkCheck) {
        self.violations.extend(other.violations);
        self.unchecked.extend(other.unchecked);
    }

    /// The keys that could not be checked, in one line: the first, and how
    /// many more; `None` if every key was checked.
    pub fn unchecked_line(&self) -> Option<String> {
        let first = self.unchecked.first()?;
        Some(match self.unchecked.len() {
            1 => first.clone(),
            n => format!("{first} (and {} more such keys)", n - 1),
        })
    }
}

/// The violations in one line for an error or a blocked reason: the first
/// five, then how many more (`swap --dry-run --json` lists them all).
pub fn violations_line(v: &[FkViolation]) -> String {
    const SHOWN: usize = 5;
    let mut line = v
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if v.len() > SHOWN {
        line.push_str(&format!(
            "; and {} more foreign keys (swap --dry-run --json lists them all under fk_violations)",
            v.len() - SHOWN
        ));
    }
    line
}

/// A foreign key [`apply_deferred`] created as NOT VALID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedFk {
    /// The live schema the table is in after the swap (absent = public).
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub schema: String,
    /// Table name (the table moves with the swap).
    pub table: String,
    pub constraint: String,
    /// A leaf partition's copy of a partitioned table's key: that table's
    /// name (see [`apply_deferred`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<String>,
    /// A partitioned table's key: the statement that adds it once its
    /// partitions' copies are valid (it attaches them), instead of VALIDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_sql: Option<String>,
}

impl CreatedFk {
    /// `ALTER TABLE "schema"."table" VALIDATE CONSTRAINT "name"` (or, for a
    /// partitioned table's key, the statement that adds it).
    pub fn validate_sql(&self, schema: &str) -> String {
        if let Some(sql) = &self.add_sql {
            return sql.clone();
        }
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            qualified(schema, &self.table),
            quote_ident(&self.constraint)
        )
    }
}

/// The deferred foreign key `sql` (one statement adding one key) on another
/// table `schema.table`, NOT VALID or not, its referenced table's schema
/// replaced by `ref_schema` when given. Rewritten on PostgreSQL's parse tree
/// and deparsed, so nothing is spliced into the text.
fn fk_on(
    sql: &str,
    schema: &str,
    table: &str,
    not_valid: bool,
    ref_schema: Option<&str>,
) -> Result<String> {
    let mut parsed = pg_query::parse(sql, 0).map_err(|e| anyhow!("parsing deferred SQL: {e}"))?;
    let mut done = false;
    for raw in &mut parsed.protobuf.stmts {
        let Some(NodeEnum::AlterTableStmt(s)) = raw.stmt.as_mut().and_then(|s| s.node.as_mut())
        else {
            continue;
        };
        let Some(rel) = s.relation.as_mut() else {
            continue;
        };
        rel.schemaname = schema.to_string();
        rel.relname = table.to_string();
        rel.inh = true;
        for cmd in &mut s.cmds {
            if let Some(NodeEnum::AlterTableCmd(c)) = cmd.node.as_mut()
                && let Some(def) = c.def.as_mut()
                && let Some(NodeEnum::Constraint(con)) = def.node.as_mut()
                && con.contype == ConstrType::ConstrForeign as i32
            {
                con.skip_validation = not_valid;
                con.initially_valid = !not_valid;
                if let (Some(pk), Some(r)) = (con.pktable.as_mut(), ref_schema) {
                    pk.schemaname = r.to_string();
                }
                done = true;
            }
        }
    }
    if !done {
        bail!("not a foreign key constraint: {}", first_line(sql));
    }
    let out = pg_query::deparse(&parsed.protobuf, Default::default())
        .map_err(|e| anyhow!("rewriting deferred SQL: {e}"))?;
    Ok(format!("{out};"))
}

/// The leaf partitions (`schema`, `name`) of each partitioned table a deferred
/// foreign key is on, by that table (`schema`, `name`, as the deferred SQL
/// names them): read before the swap's locks, so that [`apply_deferred`]
/// queries nothing under them.
pub type DeferredLeaves = HashMap<(String, String), Vec<(String, String)>>;

/// The key of a deferred statement that adds exactly one foreign key valid
/// in the source (created NOT VALID in the swap, validated after), and the
/// table it is on (`schema`, `name`; unqualified: shadow's). Partitioned
/// tables' keys of this kind go onto their leaves ([`apply_deferred`]).
fn one_valid_fk(fks: &[FkDef]) -> Option<(&FkDef, (String, String))> {
    match fks {
        [fk] if !fk.not_valid => {
            let schema = fk.schema.clone().unwrap_or_else(|| SHADOW_SCHEMA.into());
            Some((fk, (schema, fk.table.clone())))
        }
        _ => None,
    }
}

/// The partitioned tables' keys among `deferred_sql` that the swap adds after
/// its COMMIT, over their partitions' copies ([`apply_deferred`]), and that
/// the live schemas still lack: a swap stopped right after its COMMIT never
/// added them. Each with the statement that adds it.
pub async fn unadded_partitioned_keys(
    client: &Client,
    deferred_sql: &[String],
    pairs: &[SchemaPair],
) -> Result<Vec<CreatedFk>> {
    let mut out = Vec::new();
    for sql in deferred_sql {
        let (fks, _) = parse_fks(sql)?;
        let Some((fk, (shadow, table))) = one_valid_fk(&fks) else {
            continue;
        };
        let Some(p) = pairs.iter().find(|p| p.shadow == shadow) else {
            continue;
        };
        let missing = client
            .query_opt(
                "SELECT c.relkind = 'p' AND NOT EXISTS (
                          SELECT 1 FROM pg_catalog.pg_constraint k
                           WHERE k.conrelid = c.oid AND k.conname = $3 AND k.contype = 'f')
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&p.live, &table, &fk.constraint],
            )
            .await
            .map_err(|e| pg_error_as(e, "looking for a partitioned table's key"))?
            .is_some_and(|r| r.get::<_, bool>(0));
        if missing {
            let ref_live = referenced_live(fk, pairs);
            out.push(CreatedFk {
                schema: p.live.clone(),
                table: table.clone(),
                constraint: fk.constraint.clone(),
                partition_of: None,
                add_sql: Some(fk_on(sql, &p.live, &table, false, ref_live)?),
            });
        }
    }
    Ok(out)
}

/// The live schema of a deferred key's referenced table, when it is in a
/// shadow of `pairs`.
fn referenced_live<'a>(fk: &FkDef, pairs: &'a [SchemaPair]) -> Option<&'a str> {
    fk.ref_schema
        .as_ref()
        .and_then(|r| pairs.iter().find(|p| &p.shadow == r))
        .map(|p| p.live.as_str())
}

/// Read the [`DeferredLeaves`] of `deferred_sql`.
pub async fn deferred_leaves(client: &Client, deferred_sql: &[String]) -> Result<DeferredLeaves> {
    let mut out = DeferredLeaves::new();
    for sql in deferred_sql {
        let (fks, _) = parse_fks(sql)?;
        if let Some((_, on)) = one_valid_fk(&fks)
            && let Some(leaves) = partition_leaves(client, &on.0, &on.1).await?
        {
            out.insert(on, leaves);
        }
    }
    Ok(out)
}

/// The lock-table slots the swap's work for the preserved tables takes (see
/// `pg::locks_budget`): the final sync of each, the replay's locks on their
/// indexes on both sides, and each deferred statement (a partitioned table's
/// foreign key: one per leaf partition, as [`apply_deferred`] adds it), and
/// the lock that fences each column sequence of theirs ([`Fences`]) and each
/// sequence no column uses that `pairs` carry over
/// ([`carry_standalone_sequences`]).
pub async fn swap_need(
    client: &Client,
    synced: &[SyncedTable],
    pairs: &[SchemaPair],
    deferred_sql: &[String],
    leaves: &DeferredLeaves,
) -> Result<crate::pg::locks_budget::Need> {
    let statements = deferred_sql.len() + leaves.values().map(Vec::len).sum::<usize>();
    let oids: Vec<u32> = synced.iter().flat_map(|t| [t.oid, t.shadow_oid]).collect();
    // The fence locks each of the live tables' column sequences once, and
    // the carry each sequence no column uses.
    let mut sequences = HashSet::new();
    for t in synced {
        sequences.extend(
            column_sequences(client, t.oid)
                .await?
                .into_iter()
                .map(|s| s.qual),
        );
    }
    if !synced.is_empty() {
        sequences.extend(
            standalone_sequences(client, pairs)
                .await?
                .into_iter()
                .map(|s| s.live),
        );
    }
    let mut need = crate::pg::locks_budget::preserved(synced.len(), statements)
        + crate::pg::locks_budget::replay(client, &oids).await?;
    need.sync += sequences.len() as u64;
    Ok(need)
}

/// The leaf partitions (`schema`, `name`) of `schema.table` when it is a
/// partitioned table; None for any other table.
async fn partition_leaves(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<Vec<(String, String)>>> {
    let name = qualified(schema, table);
    let partitioned: bool = client
        .query_opt(
            "SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&name],
        )
        .await
        .with_context(|| format!("looking up {name}"))?
        .is_some_and(|r| r.get(0));
    if !partitioned {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass($1)) t
               JOIN pg_catalog.pg_class c ON c.oid = t.relid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE t.isleaf
              ORDER BY 1, 2",
            &[&name],
        )
        .await
        .with_context(|| format!("listing the partitions of {name}"))?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// Inside the swap transaction, before shadow's objects move (the SQL names
/// schema shadow): run the deferred SQL, every foreign key as NOT VALID. Returns
/// the foreign keys to `VALIDATE CONSTRAINT` after the commit (those that were
/// valid in the source).
///
/// PostgreSQL before 18 cannot add a NOT VALID key to a partitioned table, and
/// adding it valid would scan every partition under the swap's locks. So a
/// partitioned table's key goes onto each leaf partition, NOT VALID and named
/// like the parent's (as PostgreSQL names the partitions' copies); after the
/// commit each is validated (SHARE UPDATE EXCLUSIVE: the application goes
/// on), then the parent's key is added, which finds the valid copies and
/// attaches them instead of scanning ([`CreatedFk::add_sql`]).
pub async fn apply_deferred(
    client: &Client,
    deferred_sql: &[String],
    pairs: &[SchemaPair],
    leaves: &DeferredLeaves,
) -> Result<Vec<CreatedFk>> {
    let live_of = |shadow: Option<&String>| {
        let shadow = shadow.map_or(SHADOW_SCHEMA, String::as_str);
        pairs
            .iter()
            .find(|p| p.shadow == shadow)
            .map_or_else(crate::pg::meta::public_string, |p| p.live.clone())
    };
    let mut created = Vec::new();
    for sql in deferred_sql {
        let (fks, _) = parse_fks(sql)?;
        if let Some((fk, on)) = one_valid_fk(&fks)
            && let Some(leaves) = leaves.get(&on)
        {
            for (s, t) in leaves {
                exec(
                    client,
                    &fk_on(sql, s, t, true, None)?,
                    &format!(
                        "running deferred SQL on partition {t} ({})",
                        first_line(sql)
                    ),
                )
                .await?;
                created.push(CreatedFk {
                    schema: live_of(Some(s)),
                    table: t.clone(),
                    constraint: fk.constraint.clone(),
                    partition_of: Some(fk.table.clone()),
                    add_sql: None,
                });
            }
            let live = live_of(fk.schema.as_ref());
            let ref_live = referenced_live(fk, pairs);
            created.push(CreatedFk {
                schema: live.clone(),
                table: fk.table.clone(),
                constraint: fk.constraint.clone(),
                partition_of: None,
                add_sql: Some(fk_on(sql, &live, &fk.table, false, ref_live)?),
            });
            continue;
        }
        let run = if fks.is_empty() {
            sql.clone()
        } else {
            not_valid(sql)?
        };
        exec(
            client,
            &run,
            &format!("running deferred SQL ({})", first_line(sql)),
        )
        .await?;
        created.extend(fks.into_iter().filter(|f| !f.not_valid).map(|f| CreatedFk {
            schema: live_of(f.schema.as_ref()),
            table: f.table,
            constraint: f.constraint,
            ..CreatedFk::default()
        }));
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_a_key_keeps_its_values_apart() {
        let col = |(qual, typmod): (&str, i32)| ColType {
            qual: qual.into(),
            typmod,
            ..ColType::default()
        };
        let (int4, int8) = (("pg_catalog.int4", -1), ("pg_catalog.int8", -1));
        let text = ("pg_catalog.text", -1);
        let varchar = |n: i32| ("pg_catalog.\"varchar\"", n + 4);
        // numeric(10,2), numeric(10,0), numeric(12,2), numeric(8,0), numeric.
        let (n10_2, n10_0, n12_2) = (
            ("pg_catalog.\"numeric\"", 655366),
            ("pg_catalog.\"numeric\"", 655364),
            ("pg_catalog.\"numeric\"", 786438),
        );
        let (n8_0, numeric) = (
            ("pg_catalog.\"numeric\"", 524292),
            ("pg_catalog.\"numeric\"", -1),
        );
        // (from, to, may merge distinct values, fits every value as it is)
        let cases = [
            (int4, int8, false, true),
            (int8, numeric, false, true),
            (varchar(50), text, false, true),
            (varchar(20), varchar(50), false, true),
            (varchar(50), varchar(20), false, false),
            (n10_2, numeric, false, true),
            (n10_2, n12_2, false, true),
            (n10_2, n10_0, true, false),
            (int4, n8_0, false, false),
            (int8, int4, true, false),
            (
                ("pg_catalog.\"timestamp\"", 3),
                ("pg_catalog.\"timestamp\"", -1),
                false,
                true,
            ),
            (text, ("public.citext", -1), true, false),
            (text, ("pg_catalog.bpchar", 14), true, false),
            (int8, ("pg_catalog.float8", -1), true, false),
            (
                ("pg_catalog.timestamptz", -1),
                ("pg_catalog.\"timestamp\"", -1),
                true,
                false,
            ),
        ];
        for (from, to, merge, widen) in cases {
            let (d, s) = (col(from), col(to));
            assert_eq!(merges(&d, &s), merge, "{from:?} -> {to:?}");
            assert_eq!(widens(&d, &s), widen, "{from:?} -> {to:?}");
        }
        // A same-named domain over another type, also through a domain
        // over it, and an array of it.
        let mut d = col(("public.email", -1));
        d.domain_over = Some(("pg_catalog.text".into(), "pg_catalog".into(), -1));
        d.root_over = Some(("pg_catalog.text".into(), -1));
        let mut s = d.clone();
        s.domain_over = Some(("public.citext".into(), "public".into(), -1));
        s.root_over = Some(("public.citext".into(), -1));
        assert!(merges(&d, &s));
        assert!(!merges(&d, &d.clone()));
        let (mut d2, mut s2) = (d.clone(), s.clone());
        d2.domain_over = Some(("public.email".into(), "public".into(), -1));
        s2.domain_over = d2.domain_over.clone();
        assert!(merges(&d2, &s2));
        d.is_array = true;
        s.is_array = true;
        assert!(merges(&d, &s));
    }

    #[test]
    fn the_columns_an_index_where_reads() {
        let read = |e: &str| columns_read(e).map(|c| c.into_iter().sorted().collect::<Vec<_>>());
        assert_eq!(
            read("(deleted_at IS NULL)"),
            Some(vec!["deleted_at".to_string()])
        );
        assert_eq!(
            read("((\"Kind\" = 'a'::text) AND (lower(email) <> ''::text))"),
            Some(vec!["Kind".to_string(), "email".to_string()])
        );
        assert_eq!(read("now() > '2024-01-01'"), Some(vec![]));
        assert_eq!(read("(unbalanced"), None);
    }

    fn live() -> Live {
        Live {
            name: "users".into(),
            table: "users".into(),
            deferrable: Vec::new(),
            public_rel: "\"public\".\"users\"".into(),
            shadow_rel: "\"shadow\".\"users\"".into(),
            log_rel: "\"pgshift\".\"log_1\"".into(),
            cols: vec![
                LiveCol {
                    name: "\"id\"".into(),
                    conv: Conv::Same,
                },
                LiveCol {
                    name: "\"mood\"".into(),
                    conv: Conv::ViaText("\"shadow\".\"mood\"".into()),
                },
            ],
            keys: vec![LiveKey {
                name: "\"id\"".into(),
                shown: "id".into(),
                log_col: "k1".into(),
                log_type: "\"pg_catalog\".\"int4\"".into(),
                conv: Conv::Assign("\"pg_catalog\".\"int8\"".into()),
            }],
        }
    }

    #[test]
    fn not_valid_goes_before_the_semicolon() {
        let sql = "--\n-- Name: orders o_fk; Type: FK CONSTRAINT; Schema: shadow; Owner: -\n--\n\nALTER TABLE ONLY shadow.orders\n    ADD CONSTRAINT o_fk FOREIGN KEY (user_id) REFERENCES shadow.users(id) ON DELETE CASCADE;\n\n\n";
        let out = not_valid(sql).unwrap();
        assert!(out.contains("ON DELETE CASCADE NOT VALID;\n"), "{out}");
        // Already NOT VALID: unchanged.
        assert_eq!(not_valid(&out).unwrap(), out);
        // No semicolon, a trailing comment with a semicolon in it.
        let out = not_valid(
            "ALTER TABLE shadow.a ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES shadow.b(y) -- x;",
        )
        .unwrap();
        assert!(out.contains("(y) NOT VALID --"), "{out}");
        // A string with a semicolon cannot fool it.
        let out = not_valid(
            "ALTER TABLE shadow.\"a;b\" ADD CONSTRAINT \"f;\" FOREIGN KEY (x) REFERENCES shadow.b(y) DEFERRABLE INITIALLY DEFERRED;",
        )
        .unwrap();
        assert!(out.ends_with("INITIALLY DEFERRED NOT VALID;"), "{out}");
        assert!(not_valid("CREATE INDEX i ON shadow.a (x);").is_err());
        assert!(not_valid("ALTER TABLE shadow.a ADD CONSTRAINT c CHECK (x > 0);").is_err());
    }

    #[test]
    fn a_key_moves_to_another_table_with_its_clauses() {
        let sql = "ALTER TABLE shadow.\"Events\"\n    ADD CONSTRAINT \"Events_fk\" FOREIGN KEY (a, b) REFERENCES shadow.\"Users\"(x, y) MATCH FULL ON UPDATE CASCADE ON DELETE SET NULL (b) DEFERRABLE INITIALLY DEFERRED;";
        let leaf = fk_on(sql, "pgshift_shadow_p", "ev 1", true, None).unwrap();
        let (fks, n) = parse_fks(&leaf).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            fks,
            vec![FkDef {
                constraint: "Events_fk".into(),
                schema: Some("pgshift_shadow_p".into()),
                table: "ev 1".into(),
                inh: true,
                columns: vec!["a".into(), "b".into()],
                ref_schema: Some("shadow".into()),
                ref_table: "Users".into(),
                ref_columns: vec!["x".into(), "y".into()],
                match_full: true,
                not_valid: true,
            }]
        );
        for clause in [
            "ON UPDATE CASCADE",
            "ON DELETE SET NULL (b)",
            "DEFERRABLE",
            "INITIALLY DEFERRED",
        ] {
            assert!(leaf.contains(clause), "{clause}: {leaf}");
        }
        let parent = fk_on(sql, "public", "Events", false, Some("public")).unwrap();
        let (fks, _) = parse_fks(&parent).unwrap();
        assert_eq!(
            (
                fks[0].schema.as_deref(),
                fks[0].ref_schema.as_deref(),
                fks[0].not_valid
            ),
            (Some("public"), Some("public"), false)
        );
        assert!(fk_on("CREATE INDEX i ON shadow.a (x);", "s", "t", true, None).is_err());
    }

    #[test]
    fn parses_foreign_keys() {
        let (fks, n) = parse_fks(
            "ALTER TABLE ONLY shadow.orders ADD CONSTRAINT o_fk FOREIGN KEY (a, b) REFERENCES shadow.\"Users\"(x, y) MATCH FULL;",
        )
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(fks.len(), 1);
        let f = &fks[0];
        assert_eq!(f.table, "orders");
        assert!(!f.inh);
        assert_eq!(f.columns, ["a", "b"]);
        assert_eq!(f.ref_table, "Users");
        assert_eq!(f.ref_columns, ["x", "y"]);
        assert!(f.match_full);
        assert!(!f.not_valid);
        let (fks, _) = parse_fks(
            "CREATE TRIGGER t AFTER INSERT ON shadow.users FOR EACH ROW EXECUTE FUNCTION shadow.f();",
        )
        .unwrap();
        assert!(fks.is_empty());
    }

    #[test]
    fn keys_are_matched_as_sets_source_primary_first() {
        let k = |p: bool, c: &[&str]| KeyCandidate {
            primary: p,
            columns: c.iter().map(|s| s.to_string()).collect(),
            deferrable: false,
        };
        let dest = [k(true, &["id"]), k(false, &["b", "a"])];
        let src = [k(false, &["a", "b"]), k(true, &["id"])];
        assert_eq!(choose_key(&dest, &src).unwrap(), ["id"]);
        let src = [k(true, &["uuid"]), k(false, &["a", "b"])];
        assert_eq!(choose_key(&dest, &src).unwrap(), ["a", "b"]);
        assert!(choose_key(&dest, &[k(true, &["uuid"])]).is_none());
        assert!(choose_key(&[], &src).is_none());
        // A deferrable key is never chosen, on either side.
        let deferred = KeyCandidate {
            deferrable: true,
            ..k(true, &["id"])
        };
        assert!(choose_key(&dest, std::slice::from_ref(&deferred)).is_none());
        assert!(choose_key(std::slice::from_ref(&deferred), &[k(true, &["id"])]).is_none());
        assert_eq!(
            describe_keys(&[deferred]),
            "(id) DEFERRABLE, which the sync cannot use"
        );
    }

    #[test]
    fn generated_sql_is_qualified_and_converts() {
        let l = live();
        let body = l.function_body(Event::Update, true);
        assert!(body.contains("SELECT 'U', x.k1 FROM (SELECT n.\"id\" FROM pgshift_new n UNION SELECT o.\"id\" FROM pgshift_old o) AS x (k1);"), "{body}");
        assert!(
            body.contains("s.\"id\" = (o.\"id\")::\"pg_catalog\".\"int8\""),
            "{body}"
        );
        assert!(
            body.contains("(n.\"mood\")::text::\"shadow\".\"mood\""),
            "{body}"
        );
        assert!(
            body.contains("ON CONFLICT (\"id\") DO UPDATE SET \"mood\" = EXCLUDED.\"mood\""),
            "{body}"
        );
        assert!(body.contains("EXCEPTION WHEN OTHERS"), "{body}");
        let copy = l.function_body(Event::Insert, false);
        assert!(!copy.contains("EXCEPTION"), "{copy}");
        assert!(
            copy.contains("INSERT INTO \"pgshift\".\"log_1\" (op, k1) SELECT 'I', n.\"id\""),
            "{copy}"
        );
        // Parse every generated statement with PostgreSQL's parser.
        for ev in EVENTS {
            for apply in [false, true] {
                let sql = l.function_sql("\"pgshift\".\"sync_1_x\"", ev, apply);
                pg_query::parse(&sql, 0).unwrap_or_else(|e| panic!("{e}: {sql}"));
                let body = l.function_body(ev, apply);
                // plpgsql bodies: check the embedded statements parse too.
                for stmt in [l.log_statement(ev), l.apply_statements(ev)] {
                    pg_query::parse(&stmt, 0).unwrap_or_else(|e| panic!("{e}: {stmt}"));
                }
                assert!(body.contains("RETURN NULL"));
            }
        }
        for sql in [
            l.pick_sql(),
            l.delete_keys_sql(),
            l.reinsert_keys_sql(),
            l.copy_sql(),
        ] {
            pg_query::parse(&sql, 0).unwrap_or_else(|e| panic!("{e}: {sql}"));
        }
        // The final replay in one round trip: three statements, over every
        // entry of the changelog.
        let all = l.replay_all_sql();
        let parsed = pg_query::parse(&all, 0).unwrap_or_else(|e| panic!("{e}: {all}"));
        assert_eq!(parsed.protobuf.stmts.len(), 3, "{all}");
        assert!(!all.contains("$1"), "{all}");
        pg_query::parse(&l.changelog_ddl("it's"), 0).unwrap();
    }

    #[test]
    fn dollar_tags_avoid_the_body() {
        assert_eq!(dollar_tag("x"), "$pgshift$");
        assert_eq!(dollar_tag("a $pgshift$ b"), "$pgshift1$");
    }

    #[test]
    fn next_values() {
        assert_eq!(next_value(1, false, 1), 1);
        assert_eq!(next_value(10, true, 1), 11);
        assert_eq!(next_value(-5, true, -1), -6);
        assert_eq!(next_value(i64::MAX, true, 1), i64::MAX as i128 + 1);
    }

    #[test]
    fn violations_read_well() {
        let v = FkViolation {
            constraint: "orders_user_id_fkey".into(),
            schema: "public".into(),
            table: "orders".into(),
            columns: vec!["user_id".into()],
            referenced_schema: "public".into(),
            referenced_table: "users".into(),
            referenced_columns: vec!["id".into()],
            count: 3,
            examples: vec!["(6)".into(), "(7)".into()],
        };
        assert_eq!(
            v.to_string(),
            "orders_user_id_fkey: 3 rows of orders (user_id) reference no row of users (id), e.g. (user_id)=(6), (user_id)=(7)"
        );
        let many: Vec<FkViolation> = (0..7)
            .map(|i| FkViolation {
                constraint: format!("k{i}"),
                ..v.clone()
            })
            .collect();
        let line = violations_line(&many);
        assert!(line.starts_with("k0: 3 rows"), "{line}");
        assert!(line.contains("; k4: ") && !line.contains("k5"), "{line}");
        assert!(
            line.ends_with("; and 2 more foreign keys (swap --dry-run --json lists them all under fk_violations)"),
            "{line}"
        );
        assert_eq!(
            violations_line(&many[..1]),
            v.to_string().replace("orders_user_id_fkey", "k0")
        );
        // Outside public, with the schema.
        let billing = FkViolation {
            schema: "billing".into(),
            ..v.clone()
        };
        assert!(
            billing.to_string().starts_with("orders_user_id_fkey: 3 rows of billing.orders (user_id) reference no row of users (id)"),
            "{billing}"
        );
        let json = serde_json::to_value(&billing).unwrap();
        assert_eq!(json["schema"], "billing");
        assert!(json.get("referenced_schema").is_none(), "{json}");
    }
}
