//! The swap engine, shared by `swap` and `rollback`: one short transaction
//! that moves every non-extension object of `public` into a new backup schema
//! and every object of the incoming schema (`shadow`, or a backup for a
//! rollback) into `public`, and everything around it that makes a backup —
//! its name and timestamp, its manifest (written at COMMIT, completed after),
//! the migration record, the foreign keys to validate afterwards, the preview
//! for `--dry-run`.
//!
//! - ACCESS EXCLUSIVE locks on every affected table first (not views: their
//!   readers lock what they read), in a stable order, under a short
//!   `lock_timeout` that also ends the waits before the server's deadlock
//!   detector could act: all of them together, from the first lock on (the
//!   lock window, [`window_left`]), so that an application transaction queued
//!   behind the first lock has not waited long enough for its own detector
//!   either; on a lock timeout (or deadlock) the transaction rolls
//!   back and is retried after a jittered backoff (`pg::exec::retry`), so a
//!   long-running query causes a retry rather than a queue of application
//!   queries piling up behind the swap, and an application transaction that
//!   waits for the swap while the swap waits for it is never the one
//!   cancelled. While an attempt waits, the control session notes which
//!   relation it waits for, and the next attempt locks that one first: an
//!   application that takes `users` then `sessions` in every transaction
//!   would otherwise meet the sorted order (`sessions`, `users`) in a cycle
//!   on every attempt. In object mode that holds for the views and sequences
//!   the ALTERs move too (see [`lock_statements`]).
//! - `statement_timeout` and `idle_in_transaction_session_timeout` bound the
//!   transaction even if pgshift stalls: a pgshift stopped (Ctrl-Z, a paused
//!   VM) or cut off while it holds the locks loses its session, and the swap
//!   rolls back, after at most [`IDLE_IN_SWAP_MS`], not after the stall.
//! - Work that must happen under the same locks (the preserved tables' final
//!   replay and deferred constraints; a rollback's foreign keys) runs inside it
//!   through [`InTx`], whose typed results come back with the outcome.
//! - Before COMMIT the result is checked (every expected table in public,
//!   nothing left in the incoming schema, no pgshift trigger left); any
//!   difference rolls the whole thing back: the swap is all or nothing.
//! - The backup's manifest, and for a migration its record saying `swapped`,
//!   travel with the COMMIT in the same round trip: they exist exactly when
//!   the swap committed. A COMMIT that gets no answer (the connection lost,
//!   not an error of the server's) may have committed: the engine asks the
//!   server, once the swap's session has ended or its backup exists, and
//!   says which ([`CommitLost`]), never "rolled back" unasked. Row counts of
//!   the backup are added after the commit (nothing writes a backup any
//!   more), and so are the write counters of the new public
//!   (`live_baseline`, for the next rollback's check).
//!
//! - The new backup schema and the new empty shadow belong to the owner of
//!   the incoming schema when this role may act as it (a superuser swapping
//!   what the application's role prepared leaves that role able to verify,
//!   roll back and prepare again).
//!
//! The locked window is four round trips plus what the hook does.
//!
//! Callers say what comes in and what stays, per live schema ([`Pair`]: a
//! migration of several schemas (`--schemas`) swaps every pair in the same
//! transaction, with one backup schema per live schema and one manifest
//! listing them), and where the backup comes from ([`Origin`]); the engine
//! does the rest. The mode (`swap::mode`) is chosen for all pairs at once:
//! rename when every pair allows it, else object by object for all.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use itertools::Itertools;
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::backups::manifest::{
    self, BackupRow, Manifest, ManifestTable, SchemaMap, fresh_backup_timestamp,
};
use crate::error::Interrupted;
use crate::migration::lifecycle::Status;
use crate::migration::record::{self, MigrationState};
use crate::migration::session::{Session, failpoint};
use crate::pg::exec::{
    PgError, RetryPolicy, Stop, Transient, exec, retry, rollback_on_err, simple,
};
use crate::pg::ident::{display_ident, qualified, quote_ident, quote_literal};
use crate::pg::lock::SESSION_SHOWN;
use crate::pg::locks_budget::{self, Budget, Need};
use crate::pg::meta::{self, MARKER, PUBLIC};
use crate::pg::objects::{self, Movable};
use crate::prepare::sync::{CreatedFk, own_trigger_sql};
use crate::swap::impact;
use crate::swap::mode::{self, Choice, Chosen, Mode, ModeRequest};

/// How the swap transaction waits and retries, and which mode it may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    /// Attempts after the first when the locks cannot be taken.
    pub retries: u32,
    pub mode: ModeRequest,
}

/// One live schema of a swap and the schema whose objects replace its own.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The live schema (`public`, `billing`, …).
    pub live: String,
    /// The schema whose objects become the live schema's (its shadow, or a
    /// backup schema for a rollback).
    pub incoming: String,
    /// Tables of the live schema that stay there; their namesakes in the
    /// incoming schema stay where they are (`--keep-tables`).
    pub keep: BTreeSet<String>,
    /// Tables that must be in the live schema after the moves.
    pub expected_tables: Vec<String>,
}

/// What a swap exchanges: one or more pairs, all in one transaction.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// public's pair first when public is one of them.
    pub pairs: Vec<Pair>,
    /// The incoming schema has no namesake of a kept table (a migration's
    /// `--keep-tables`), so rename mode is possible: the kept tables go along
    /// with the renamed public and are moved back (`SET SCHEMA`, a few
    /// objects) right after the renames.
    pub kept_move_back: bool,
    /// Recreate public's shadow empty afterwards, drop the other shadows; a
    /// backup being restored is left to the hook (dropped when it ends up
    /// empty).
    pub recreate_incoming: bool,
}

impl Exchange {
    /// The one pair when only public moves (its messages keep naming public
    /// and the incoming schema, as before several schemas were supported).
    fn public_alone(&self) -> Option<&Pair> {
        match self.pairs.as_slice() {
            [p] if p.live == crate::pg::meta::PUBLIC => Some(p),
            _ => None,
        }
    }

    /// The swap of prepared shadows into their live schemas (nothing kept,
    /// nothing expected: callers fill those in per pair).
    pub fn of_shadows(pairs: &[crate::pg::meta::SchemaPair]) -> Exchange {
        Exchange {
            pairs: pairs
                .iter()
                .map(|p| Pair {
                    live: p.live.clone(),
                    incoming: p.shadow.clone(),
                    keep: BTreeSet::new(),
                    expected_tables: Vec::new(),
                })
                .collect(),
            kept_move_back: true,
            recreate_incoming: true,
        }
    }

    /// The backup schema of each pair's live schema, for `stamp` (a
    /// timestamp, or a dry run's placeholder).
    fn backups(&self, stamp: &str) -> Vec<String> {
        self.pairs
            .iter()
            .map(|p| crate::pg::meta::backup_schema_stamped(stamp, &p.live))
            .collect()
    }

    /// The manifest's `schemas` for these backups: empty for public alone
    /// (whose backup is the manifest's `schema`). `existing`: the live
    /// schemas that exist now (the others the swap creates).
    fn schema_maps(&self, backups: &[String], existing: &BTreeSet<String>) -> Vec<SchemaMap> {
        if self.pairs.len() == 1 && self.pairs[0].live == PUBLIC {
            return Vec::new();
        }
        self.pairs
            .iter()
            .zip(backups)
            .map(|(p, b)| SchemaMap {
                live: p.live.clone(),
                backup: b.clone(),
                created: !existing.contains(&p.live),
            })
            .collect()
    }

    /// Which of the live schemas exist now.
    async fn existing_live(&self, client: &Client) -> Result<BTreeSet<String>> {
        let names: Vec<String> = self.pairs.iter().map(|p| p.live.clone()).collect();
        crate::pg::catalog::existing_schemas(client, &names).await
    }

    /// The tables that stay where they are ([`objects::KeptTables`]).
    pub fn kept_tables(&self) -> objects::KeptTables {
        kept_tables(&self.pairs)
    }

    /// Does any pair keep tables?
    fn keeps(&self) -> bool {
        self.pairs.iter().any(|p| !p.keep.is_empty())
    }

    /// The live schemas, in order.
    pub fn live_schemas(&self) -> Vec<String> {
        self.pairs.iter().map(|p| p.live.clone()).collect()
    }
}

/// Where the new backup comes from: what its manifest records.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The public a migration replaces. Its record is written as `swapped`
    /// inside the COMMIT.
    Migration(MigrationState),
    /// The public a rollback replaces.
    Rollback {
        /// The backup being restored.
        restored: BackupRow,
        /// The tables that go live (the restored backup's, minus kept ones).
        migrated_tables: Vec<ManifestTable>,
        /// Tables that stay live in public (the new backup has no copy).
        kept_tables: Vec<String>,
    },
}

impl Origin {
    /// "the swap" or "the rollback", for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Origin::Migration(_) => "the swap",
            Origin::Rollback { .. } => "the rollback",
        }
    }

    fn manifest(&self, ts: i64, schema: String) -> Manifest {
        let now = Utc::now();
        match self {
            Origin::Migration(st) => Manifest {
                timestamp: ts,
                schema,
                created_at: now,
                kind: "swap".into(),
                migration_id: Some(st.id),
                source: Some(st.source.clone()),
                snapshot_at: st.snapshot_at,
                tables: Vec::new(),
                migrated_tables: st
                    .tables
                    .iter()
                    .map(|t| ManifestTable {
                        schema: t.schema.clone(),
                        name: t.name.clone(),
                        rows: (!t.preserved).then_some(t.rows),
                        checksum: t.checksum.clone(),
                        indexes: Vec::new(),
                        sequences: Vec::new(),
                    })
                    .collect(),
                preserved_tables: st.preserved_tables.clone(),
                timings_ms: st.timings(),
                lock_held_ms: None,
                counts_recorded: false,
                keys_pending: true,
                dropping_since: None,
                restored_from: None,
                restored_at: None,
                kept_tables: Vec::new(),
                swap_mode: None,
                detached_foreign_keys: Vec::new(),
                schemas: Vec::new(),
                live_baseline: None,
                fenced_sequences: Vec::new(),
            },
            Origin::Rollback {
                restored,
                migrated_tables,
                kept_tables,
            } => Manifest {
                timestamp: ts,
                schema,
                created_at: now,
                kind: "rollback".into(),
                migration_id: None,
                source: None,
                snapshot_at: None,
                tables: Vec::new(),
                migrated_tables: migrated_tables.clone(),
                preserved_tables: Vec::new(),
                timings_ms: Default::default(),
                lock_held_ms: None,
                counts_recorded: false,
                keys_pending: true,
                dropping_since: None,
                restored_from: Some(restored.schema_name.clone()),
                restored_at: Some(now),
                kept_tables: kept_tables.clone(),
                swap_mode: None,
                detached_foreign_keys: Vec::new(),
                schemas: Vec::new(),
                live_baseline: None,
                fenced_sequences: Vec::new(),
            },
        }
    }

    /// The migration's record as the COMMIT writes it.
    fn swapped_record(&self, backup: &str) -> Option<MigrationState> {
        let Origin::Migration(st) = self else {
            return None;
        };
        let mut st = st.clone();
        st.status = Status::Swapped;
        st.phase = None;
        st.error = None;
        st.details.backup = Some(backup.to_string());
        st.updated_at = Utc::now();
        Some(st)
    }
}

/// Work done inside the swap transaction. The hook may run several times (one
/// per attempt); the outputs of the attempt that committed are returned.
pub trait InTx {
    type Before;
    type After;
    /// After the locks, before the moves. Must not COMMIT or ROLLBACK.
    fn before_moves(&self, client: &Client) -> impl Future<Output = Result<Self::Before>>;
    /// After the moves and the checks, before COMMIT, with what
    /// [`InTx::before_moves`] handed back; may amend the manifest that the
    /// COMMIT writes.
    fn after_moves(
        &self,
        client: &Client,
        before: &Self::Before,
        manifest: &mut Manifest,
    ) -> impl Future<Output = Result<Self::After>>;
    /// What `--dry-run` shows for the hook's work: lines after the locks and
    /// before COMMIT.
    fn preview_notes(&self) -> (Vec<String>, Vec<String>);
    /// Relations of the incoming schema the hook works on under the swap's
    /// locks (the swap locks public's relations, its kept tables and these).
    fn incoming_locks(&self) -> Vec<String> {
        Vec::new()
    }
    /// Lock-table slots the hook's work takes beyond the swap's own locks.
    fn lock_need(&self) -> Need {
        Need::default()
    }
    /// Before each retry, outside any lock, on the control session: work
    /// that keeps what runs under the locks small (the preserved tables'
    /// changelogs grow while the swap waits).
    fn before_retry(&self, _control: &Client) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

/// What the committed swap transaction did; the swap's and the rollback's
/// reports flatten it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Moved {
    /// From the first lock request to the end of COMMIT, in milliseconds.
    pub lock_held_ms: u64,
    pub attempts: u32,
    /// The attempts that gave up, together: from each one's first statement
    /// to its rollback (the locks it took held the application up meanwhile).
    pub earlier_attempts_ms: u64,
    pub moved_out: usize,
    pub moved_in: usize,
}

/// What the engine reports after the commit.
#[derive(Debug, Clone)]
pub struct Swapped<B, A> {
    pub mode: Chosen,
    pub backup_schema: String,
    pub backup_timestamp: i64,
    pub moved: Moved,
    /// The backup's manifest as stored after the commit.
    pub manifest: Manifest,
    pub before: B,
    pub after: A,
    pub warnings: Vec<String>,
}

/// What a dry run would move (`kind name` of each object) and the
/// transaction's SQL; the swap's and the rollback's previews flatten it.
#[derive(Debug, Clone, Serialize)]
pub struct Moves {
    pub move_out: Vec<String>,
    pub move_in: Vec<String>,
    pub sql: Vec<String>,
}

/// A dry run: what would move and the transaction's SQL.
#[derive(Debug, Clone)]
pub struct Preview {
    pub mode: Chosen,
    pub backup_schema: String,
    /// Several schemas: each live schema and its backup schema to be (the
    /// manifest's `schemas`; empty for public alone).
    pub schemas: Vec<SchemaMap>,
    pub moves: Moves,
    /// The transaction's need against the destination's lock table.
    pub lock_budget: Budget,
    /// What an object-level swap could not move (refused before any lock).
    pub unmovable: Unmovable,
}

/// What the swap (or a rollback) would run into as things stand: its need
/// against the lock table, and the objects it could not move.
#[derive(Debug, Clone)]
pub struct Outlook {
    pub lock_budget: Budget,
    pub unmovable: Unmovable,
}

/// The objects an object-level swap would have to move that this role may
/// not (`ALTER … SET SCHEMA` needs the privileges of each one's owner; see
/// `pg::objects`): a range type's constructors, which PostgreSQL gives the
/// bootstrap superuser whoever creates the type, are the usual ones. In
/// rename mode only the kept tables (`--keep-tables`) move, back from the
/// backup: the ones of those this role may not move. Such a swap fails at
/// its first one, under its locks: it is refused before them, and `status`,
/// the dry runs and prepare say so in the same words. So is a swap, in
/// either mode, of a table it may not lock (`unlockable`).
#[derive(Debug, Clone, Default)]
pub struct Unmovable {
    /// For people: `function shadow.floatrange(double precision, double precision)`.
    objects: Vec<String>,
    /// Their owners (whose privileges this role lacks), sorted.
    owners: BTreeSet<String>,
    /// The ALTER keyword when they are all of one kind (`FUNCTION`).
    kind: Option<String>,
    /// This role.
    me: String,
    /// Why renaming the schemas is not possible, or None when it is (the
    /// object-level swap was asked for).
    no_rename: Option<String>,
    /// The schemas are renamed: the objects are kept tables, moved back
    /// from the backup.
    renaming: bool,
    /// Names the kept tables' companions hold in a live schema that an
    /// incoming object also has: the move of one of them fails.
    clashes: Vec<objects::NameClash>,
    /// Tables the transaction locks (see [`lock_statements`]) that this role
    /// may not lock in ACCESS EXCLUSIVE mode, for people, and their owners:
    /// a rename needs no privilege on public's tables, but the lock before
    /// it does (UPDATE, DELETE or TRUNCATE, or MAINTAIN on PostgreSQL 17+;
    /// an owner's privileges include them).
    unlockable: Vec<String>,
    unlockable_owners: BTreeSet<String>,
}

impl Unmovable {
    /// [`refusal`](Self::refusal) as `status` and prepare say it: nothing
    /// is being changed there.
    pub fn reason(&self, what: &str) -> Option<String> {
        self.refusal(what)
            .map(|why| why.replacen("; nothing was changed", "", 1))
    }

    /// One line refusing `what` (`the swap`, `the rollback`), or None.
    pub fn refusal(&self, what: &str) -> Option<String> {
        if !self.clashes.is_empty() {
            let pairs: Vec<String> = self.clashes.iter().map(|c| c.item("")).collect();
            // A rollback's incoming objects are a backup's, not the source's.
            let source = (what != "the rollback").then_some("the source's and prepare again");
            let alter = objects::NameClash::first_rename(&self.clashes);
            let ways = alter
                .map(|a| format!("rename the kept table's ({a})"))
                .into_iter()
                .chain(source.map(|s| match alter {
                    Some(_) => s.to_string(),
                    None => format!("rename {s}"),
                }))
                .chain(["do not keep the table".to_string()])
                .join(", or ");
            return Some(format!(
                "{what} would bring two objects of one name into one schema: {}; nothing was changed: {ways}",
                crate::prepare::preflight::list_some(&pairs),
            ));
        }
        if self.objects.is_empty() {
            return self.lock_refusal(what);
        }
        let owners = self.owners.iter().map(|o| display_ident(o)).join(", ");
        let alter = match &self.kind {
            Some(k) => format!("ALTER {k}"),
            None => "ALTER".to_string(),
        };
        let whose = if self.owners.len() == 1 {
            "their owner"
        } else {
            "their owners"
        };
        let (how, way_out) = if self.renaming {
            (
                "renames the schemas and moves the kept tables back one by one",
                ", or do not keep them, or use --swap-mode object: moving objects leaves the kept tables where they are".to_string(),
            )
        } else {
            let rename = match &self.no_rename {
                None => ", or use --swap-mode rename: renaming the schemas moves none of them"
                    .to_string(),
                Some(why) => format!(
                    "; renaming the schemas would move none of them, but is not possible here: {why}"
                ),
            };
            ("moves objects one by one", rename)
        };
        Some(format!(
            "{what} {how}, and role {me} may not move {list} (ALTER … SET SCHEMA needs the privileges of {whose}, {owners}); nothing was changed: have a superuser, or {whose}, give them to {me} ({alter} … OWNER TO {me_sql}), or run {what} as a superuser{way_out}",
            me = display_ident(&self.me),
            list = crate::prepare::preflight::list_some(&self.objects),
            me_sql = quote_ident(&self.me),
        ))
    }

    /// One line refusing `what` for the tables it may not lock, or None.
    fn lock_refusal(&self, what: &str) -> Option<String> {
        if self.unlockable.is_empty() {
            return None;
        }
        let (them, whose) = match self.unlockable.len() {
            1 => ("it", "its owner"),
            _ => ("each", "their owners"),
        };
        let me = display_ident(&self.me);
        let owners = self
            .unlockable_owners
            .iter()
            .map(|o| display_ident(o))
            .join(", ");
        let grant_owner = self
            .unlockable_owners
            .iter()
            .map(|o| format!("GRANT {} TO {me}", display_ident(o)))
            .join("; ");
        Some(format!(
            "{what} locks every table it moves, keeps or replaces (LOCK TABLE … IN ACCESS EXCLUSIVE MODE), and role {me} may not lock {list}: that needs the UPDATE, DELETE or TRUNCATE privilege on {them} (or MAINTAIN on PostgreSQL 17+), or the privileges of {whose}, {owners}; nothing was changed: have {whose} GRANT UPDATE on {them} to {me}, or {grant_owner}, or run {what} as a superuser",
            list = crate::prepare::preflight::list_some(&self.unlockable),
        ))
    }
}

/// SQL: of the relations named in `$1` (qualified, quoted), the ones this
/// role may not lock in ACCESS EXCLUSIVE mode, in the order given:
/// (schema, name, owner). `has_table_privilege` with several privileges is
/// true when any is held, as LOCK's own check (`LockTableAclCheck`).
const UNLOCKABLE: &str =
    "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text
       FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS l(name, i)
       JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(l.name)
       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE NOT pg_catalog.has_table_privilege(c.oid,
                CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 170000
                     THEN 'MAINTAIN, UPDATE, DELETE, TRUNCATE'
                     ELSE 'UPDATE, DELETE, TRUNCATE' END)
      ORDER BY l.i";

/// What the swap of `listed` could not move or lock ([`Unmovable`]).
async fn unmovable(client: &Client, req: &Request<'_>, listed: &Listed) -> Result<Unmovable> {
    let (exchange, policy, choice) = (req.exchange, req.policy, req.choice);
    let renaming = choice.rename.is_some();
    let mut found = Unmovable {
        renaming,
        ..Unmovable::default()
    };
    if exchange.keeps() {
        let kept = exchange.kept_tables();
        for p in &exchange.pairs {
            found
                .clashes
                .extend(objects::name_clashes(client, &p.live, &p.incoming, &kept).await?);
        }
    }
    let mut kinds = BTreeSet::new();
    for ((p, (out, inc)), kept) in exchange.pairs.iter().zip(&listed.pairs).zip(&listed.kept) {
        // Renaming moves only the kept tables, back from the backup.
        let sides: Vec<(&String, &Movable)> = if renaming {
            kept.iter().map(|m| (&p.live, m)).collect()
        } else {
            out.iter()
                .map(|m| (&p.live, m))
                .chain(inc.iter().map(|m| (&p.incoming, m)))
                .collect()
        };
        for (schema, m) in sides {
            let Some(owner) = &m.owner_lacked else {
                continue;
            };
            // Signatures are written out with their schema already.
            let name = if m.named_by_signature() {
                m.sql_name.clone()
            } else {
                format!("{}.{}", display_ident(schema), display_ident(&m.name))
            };
            found
                .objects
                .push(format!("{} {name}", m.kind.to_lowercase()));
            found.owners.insert(owner.clone());
            kinds.insert(m.kind.clone());
        }
    }
    let locked: Vec<String> = lock_names(req, listed)
        .into_iter()
        .map(String::from)
        .collect();
    for r in client
        .query(UNLOCKABLE, &[&locked])
        .await
        .context("reading which tables this role may lock")?
    {
        let (schema, name, owner): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        found.unlockable.push(format!(
            "table {}",
            crate::pg::ident::qualified_display(&schema, &name)
        ));
        found.unlockable_owners.insert(owner);
    }
    if found.objects.is_empty() && found.unlockable.is_empty() {
        return Ok(found);
    }
    found.me = client
        .query_one("SELECT current_user::text", &[])
        .await
        .context("reading the current role")?
        .get(0);
    if found.objects.is_empty() {
        return Ok(found);
    }
    if kinds.len() == 1 {
        found.kind = kinds.into_iter().next();
    }
    found.no_rename = if renaming {
        None
    } else if policy.mode == ModeRequest::Object {
        let auto = Policy {
            mode: ModeRequest::Auto,
            ..policy
        };
        let could = choose_mode(client, exchange, auto).await?;
        could.rename.is_none().then_some(could.reason)
    } else {
        Some(choice.reason.clone())
    };
    Ok(found)
}

/// The swap as it would run now; changes nothing.
pub async fn preview<H: InTx>(
    client: &Client,
    exchange: &Exchange,
    policy: Policy,
    hook: &H,
) -> Result<Preview> {
    let choice = choose_mode(client, exchange, policy).await?;
    let req = Request {
        exchange,
        backups: exchange.backups("<unix ms>"),
        policy,
        choice: &choice,
        incoming_locks: hook.incoming_locks(),
    };
    exec(client, "SET search_path = ''").await?;
    let listed = list(client, exchange).await;
    exec(client, "RESET search_path").await?;
    let listed = listed?;
    let lock_budget = budget_of(client, &req, &listed, hook.lock_need()).await?;
    let unmovable = unmovable(client, &req, &listed).await?;
    let (before, at_commit) = hook.preview_notes();
    let mut sql = vec!["BEGIN".to_string()];
    sql.extend(session_settings(&req));
    sql.push(
        "-- the lock window: the locks and every later wait get what is left of one lock wait's bound"
            .into(),
    );
    sql.extend(lock_statements(&req, &listed, &[]));
    sql.extend(before);
    sql.extend(move_statements(&req, &listed));
    sql.extend(at_commit);
    sql.push("COMMIT".into());
    let name = |m: &Movable| format!("{} {}", m.kind, m.sql_name);
    Ok(Preview {
        mode: choice.chosen(),
        backup_schema: req.backups[0].clone(),
        schemas: exchange.schema_maps(&req.backups, &exchange.existing_live(client).await?),
        moves: Moves {
            move_out: listed.out().map(name).collect(),
            move_in: listed.inc().map(name).collect(),
            sql,
        },
        lock_budget,
        unmovable,
    })
}

/// The lock budget of the swap of `exchange` as it would run now (the mode
/// chosen under `policy`), with `extra` for work inside it, and what it could
/// not move; changes nothing.
pub async fn outlook(
    client: &Client,
    exchange: &Exchange,
    policy: Policy,
    extra: Need,
    incoming_locks: Vec<String>,
) -> Result<Outlook> {
    let choice = choose_mode(client, exchange, policy).await?;
    let req = Request {
        exchange,
        backups: vec![String::new(); exchange.pairs.len()],
        policy,
        choice: &choice,
        incoming_locks,
    };
    exec(client, "SET search_path = ''").await?;
    let listed = list(client, exchange).await;
    exec(client, "RESET search_path").await?;
    let listed = listed?;
    Ok(Outlook {
        lock_budget: budget_of(client, &req, &listed, extra).await?,
        unmovable: unmovable(client, &req, &listed).await?,
    })
}

/// The need of this request's transaction (its mode, what it moves and
/// locks) against the lock table. See `pg::locks_budget`.
async fn budget_of(
    client: &Client,
    req: &Request<'_>,
    listed: &Listed,
    extra: Need,
) -> Result<Budget> {
    let locked: Vec<String> = lock_names(req, listed)
        .into_iter()
        .map(String::from)
        .collect();
    let need = match &req.choice.rename {
        // The renames lock no object of either schema; the extensions move.
        Some(steps) => {
            let extensions: Vec<String> = steps.iter().flat_map(|s| s.extensions.clone()).collect();
            locks_budget::transaction_need(
                client,
                &[],
                &locked,
                &extensions,
                extra,
                req.exchange.pairs.len(),
            )
            .await?
        }
        None => {
            let moved: Vec<Movable> = listed.out().chain(listed.inc()).cloned().collect();
            locks_budget::transaction_need(
                client,
                &moved,
                &locked,
                &[],
                extra,
                req.exchange.pairs.len(),
            )
            .await?
        }
    };
    // Keys left crossing by the kept tables are dropped in the transaction.
    let need = if req.exchange.pairs.iter().all(|p| p.keep.is_empty()) {
        need
    } else {
        let schemas: Vec<String> = req
            .exchange
            .pairs
            .iter()
            .flat_map(|p| [p.live.clone(), p.incoming.clone()])
            .collect();
        // Tables only (their lockable names): keys join tables.
        let members: Vec<String> = match &req.choice.rename {
            Some(_) => listed
                .kept
                .iter()
                .flatten()
                .filter_map(|m| m.lockable.clone())
                .collect(),
            None => listed
                .out()
                .chain(listed.inc())
                .filter_map(|m| m.lockable.clone())
                .collect(),
        };
        need + locks_budget::crossing_keys(client, &members, &schemas).await?
    };
    let mut b = Budget::evaluate(client, need).await?;
    b.swap_mode = Some(req.choice.mode.as_str().to_string());
    Ok(b)
}

/// One line refusing a swap that does not fit the lock table, or None.
fn lock_refusal(b: &Budget, choice: &Choice, origin: &Origin) -> Option<String> {
    let line = b.refusal(origin.noun())?;
    Some(match choice.mode {
        Mode::Object => format!(
            "{line}; nothing was changed (an object-level swap locks every object it moves; the swap by renaming schemas needs far fewer, but is not possible here: {})",
            choice.reason
        ),
        Mode::Rename => format!("{line}; nothing was changed"),
    })
}

/// Swap: make a new backup of public, move the incoming schema in, commit
/// the manifest (and the migration's record) with it, then describe the
/// backup. On any failure the destination is exactly as before.
pub async fn swap<H: InTx>(
    sess: &Session,
    exchange: &Exchange,
    origin: &Origin,
    policy: Policy,
    hook: &H,
) -> Result<Swapped<H::Before, H::After>> {
    let control = &sess.control;
    let ts = fresh_backup_timestamp(control).await?;
    let backups = exchange.backups(&ts.to_string());
    // Both modes rename or drop each incoming schema.
    let incoming: Vec<String> = exchange.pairs.iter().map(|p| p.incoming.clone()).collect();
    crate::pg::catalog::refuse_unowned_schemas(control, &incoming, "rename or drop").await?;
    let choice = choose_mode(control, exchange, policy).await?;
    tracing::info!(mode = ?choice.mode, reason = %choice.reason, "swap mode");
    let mut manifest = origin.manifest(ts, backups[0].clone());
    manifest.swap_mode = Some(choice.mode);
    manifest.schemas = exchange.schema_maps(&backups, &exchange.existing_live(control).await?);
    let backup = backups[0].clone();
    let record = origin.swapped_record(&backup);
    let req = Request {
        exchange,
        backups: backups.clone(),
        policy,
        choice: &choice,
        incoming_locks: hook.incoming_locks(),
    };
    let client = sess.connect().await?;
    // Before any lock: a transaction that cannot fit the lock table would
    // fail half-way with "out of shared memory", holding its locks meanwhile
    // and failing other sessions' lock requests.
    exec(&client, "SET search_path = ''").await?;
    let listed = list(&client, exchange).await;
    exec(&client, "RESET search_path").await?;
    let listed = listed?;
    // An object this role may not move would fail the transaction under
    // its locks.
    let what = origin.noun();
    let blocked = unmovable(&client, &req, &listed).await?;
    if let Some(refusal) = blocked.refusal(what) {
        bail!(refusal);
    }
    let lock_budget = budget_of(&client, &req, &listed, hook.lock_need()).await?;
    if let Some(refusal) = lock_refusal(&lock_budget, &choice, origin) {
        bail!(refusal);
    }
    tracing::debug!(
        needed = lock_budget.needed,
        capacity = lock_budget.capacity,
        "swap lock budget"
    );
    failpoint("swap-listed").await?;
    // The first attempt moves what was just listed; a retry lists again.
    let first_listing = std::sync::Mutex::new(Some(listed));
    let last_gone = std::sync::Mutex::new(None);
    let pid: i32 = client
        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
        .await
        .context("reading the swap session's process id")?
        .get(0);
    let waited_for = std::sync::Mutex::new(Vec::<Waited>::new());
    // How often the watch saw the swap wait (to tell whether this attempt
    // did), how many attempts ran, and whether the last one ran out of its
    // lock window without being seen waiting for anyone.
    let waits_seen = AtomicU32::new(0);
    let attempts_run = AtomicU32::new(0);
    let unheld = AtomicBool::new(false);
    let gave_up_ms = AtomicU64::new(0);
    let attempt = || async {
        let listed = first_listing.lock().ok().and_then(|mut l| l.take());
        if listed.is_none() {
            // A vacuum that held the swap up is cancelled by the server
            // once something waits for it past deadlock_timeout, which the
            // swap's own waits never do.
            if let Some(w) = latest(&waited_for) {
                crate::pg::exec::nudge_autovacuum(&client, &w.name).await;
            }
            hook.before_retry(control).await;
        }
        let first = waited_for.lock().map(|w| w.clone()).unwrap_or_default();
        let seen_before = waits_seen.load(Ordering::Relaxed);
        let this_attempt = attempts_run.fetch_add(1, Ordering::Relaxed) + 1;
        let began = std::time::Instant::now();
        let run = one_attempt(
            &client,
            sess.lock_session(),
            &req,
            hook,
            &manifest,
            record.as_ref(),
            listed,
            &first,
        );
        tokio::pin!(run);
        let r = tokio::select! {
            r = &mut run => r,
            () = watch_waits(control, pid, &waited_for, &waits_seen) => run.await,
        };
        let r = r.map_err(|e| gone_or_failed(e, req.exchange, &last_gone));
        let waited = waits_seen.load(Ordering::Relaxed) != seen_before;
        unheld.store(
            !waited && r.as_ref().is_err_and(is_window_closed),
            Ordering::Relaxed,
        );
        if waited
            && this_attempt <= policy.retries
            && let Err(e) = &r
            && RetryPolicy::new(policy.retries).retryable(e).is_some()
            && let Some(w) = latest(&waited_for)
        {
            tracing::warn!(
                "{}; the next attempt locks it first",
                w.describe(&format!("{what} waited for"))
            );
        }
        let r = rollback_on_err(&client, r).await;
        if r.is_err() {
            gave_up_ms.fetch_add(began.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    };
    let done = match retry(
        &format!("{what} could not take its locks"),
        RetryPolicy::new(policy.retries),
        Some(&sess.run.cancel),
        attempt,
    )
    .await
    {
        Ok((mut done, attempts)) => {
            done.moved.attempts = attempts;
            done.moved.earlier_attempts_ms = gave_up_ms.load(Ordering::Relaxed);
            done
        }
        Err(Stop::Exhausted { attempts, why, .. }) if unheld.load(Ordering::Relaxed) => bail!(
            "{what} could not take its locks after {attempts} attempts ({why}); nothing was changed. Taking {what}'s locks alone takes longer than its lock window, 4/5 of deadlock_timeout ({}) or --lock-timeout ({}), whichever is shorter, from the first lock: raise the shorter (deadlock_timeout is a superuser's setting: ALTER DATABASE … SET deadlock_timeout, or the server's configuration)",
            show_setting(control, "deadlock_timeout").await,
            crate::output::human_ms(policy.lock_timeout.as_millis() as u64)
        ),
        Err(Stop::Exhausted { attempts, why, .. })
            if latest(&waited_for).is_some_and(|w| w.by_autovacuum) =>
        {
            bail!(
                "{what} could not take its locks after {attempts} attempts ({why}){}; nothing was changed. An autovacuum that the server does not cancel (one that prevents transaction ID wraparound) holds the table: wait for it to finish (pg_stat_progress_vacuum shows how far it is), then run it again",
                last_wait(&waited_for)
            )
        }
        Err(Stop::Exhausted { attempts, why, .. }) => bail!(
            "{what} could not take its locks after {attempts} attempts ({why}){}; nothing was changed. A long-running query or transaction on the destination holds a lock on a table {what} locks, or the application's transactions keep waiting for {what} while it waits for them (each wait ends at --lock-timeout, or sooner at 4/5 of deadlock_timeout): end it, or raise --swap-retries",
            last_wait(&waited_for)
        ),
        Err(Stop::Failed(e)) if e.chain().any(|c| c.is::<CommitUnanswered>()) => {
            let word = what.trim_start_matches("the ");
            return Err(match commit_outcome(sess, pid, &backups[0]).await {
                Ok(false) => e.context(format!(
                    "{what} was rolled back; the destination is unchanged"
                )),
                Ok(true) => anyhow::Error::new(CommitLost::Committed {
                    what: word,
                    backup: backups[0].clone(),
                }),
                Err(why) => anyhow::Error::new(CommitLost::Unknown {
                    what: word,
                    backup: backups[0].clone(),
                    why,
                }),
            });
        }
        Err(Stop::Failed(e)) => {
            // A refusal under the locks says "nothing was changed" already.
            let said = format!("{e:#}").contains("nothing was changed");
            return Err(e.context(if said {
                format!("{what} was rolled back")
            } else {
                format!("{what} was rolled back; the destination is unchanged")
            }));
        }
        Err(Stop::Interrupted) => return Err(anyhow::Error::new(Interrupted)),
    };
    tracing::info!(
        lock_held_ms = done.moved.lock_held_ms,
        attempts = done.moved.attempts,
        "swap committed"
    );
    failpoint("swap-committed").await?;

    // At once: the write counters of the public that just went live, for the
    // next rollback's discarded-writes check.
    let mut warnings = Vec::new();
    let live_baseline = match impact::gate::live_baseline(
        &client,
        control,
        &exchange.live_schemas(),
    )
    .await
    {
        Ok(b) => Some(b),
        Err(e) => {
            warnings.push(format!("could not record the write counters of the new public (a rollback of it will need --allow-discard): {e:#}"));
            None
        }
    };

    // After the commit nothing writes the backup any more: record its contents.
    match strays(control, &done.moved_in_objects, exchange).await {
        Ok(strays) if !strays.is_empty() => warnings.push(format!(
            "created in public while {what} waited for its locks, and left there: {}",
            strays.join(", ")
        )),
        Ok(_) => {}
        Err(e) => warnings.push(format!("could not check public after the swap: {e:#}")),
    }
    let mut manifest = done.manifest;
    manifest.live_baseline = live_baseline;
    manifest.lock_held_ms = Some(done.moved.lock_held_ms);
    manifest.timings_ms.insert(
        "swap".into(),
        serde_json::Value::from(done.moved.lock_held_ms),
    );
    let maps: Vec<(&str, &str)> = exchange
        .pairs
        .iter()
        .map(|p| p.live.as_str())
        .zip(backups.iter().map(String::as_str))
        .collect();
    match describe_all(control, &maps).await {
        Ok(tables) => {
            // This role may not read these, or row-level security applies
            // to it on them: not counted rather than counted wrong, and said
            // under their live names.
            let live_of = |backup: &str| {
                maps.iter()
                    .find(|(_, b)| *b == backup)
                    .map_or(backup.to_string(), |(live, _)| live.to_string())
            };
            let found = if tables.iter().any(|t| t.rows.is_none()) {
                manifest::uncounted(control, &backups).await
            } else {
                Ok(manifest::Uncounted::default())
            };
            let shown = |s: &str, t: &str| crate::pg::meta::table_shown(&live_of(s), t);
            let (hidden, unreadable): (Vec<String>, Vec<String>) = match found {
                Ok(u) => (
                    u.hidden.iter().map(|(s, t)| shown(s, t)).collect(),
                    u.unreadable.iter().map(|(s, t, _)| shown(s, t)).collect(),
                ),
                Err(e) => {
                    warnings.push(format!(
                        "could not check which of the backup's tables were not counted: {e:#}"
                    ));
                    (Vec::new(), Vec::new())
                }
            };
            if !hidden.is_empty() {
                warnings.push(format!(
                    "the backup's row counts of {} were not recorded: row-level security applies to this role on them (a role with BYPASSRLS, or their owner without FORCE ROW LEVEL SECURITY, counts them), so verify cannot compare their rows",
                    hidden.join(", ")
                ));
            }
            if !unreadable.is_empty() {
                warnings.push(format!(
                    "the backup's row counts of {} were not recorded: this role may not read them (they belong to roles it does not act as), so verify cannot compare their rows; a rollback does not need to read them",
                    unreadable.join(", ")
                ));
            }
            manifest.tables = tables;
            manifest.counts_recorded = true;
        }
        Err(e) => warnings.push(format!("could not record the backup's row counts: {e:#}")),
    }
    if matches!(origin, Origin::Migration(_)) {
        for p in &exchange.pairs {
            let Ok(live) = manifest::describe(control, &p.live, false).await else {
                continue;
            };
            for t in manifest
                .migrated_tables
                .iter_mut()
                .filter(|t| t.schema == p.live)
            {
                if let Some(d) = live.iter().find(|d| d.name == t.name) {
                    t.indexes = d.indexes.clone();
                    t.sequences = d.sequences.clone();
                }
            }
        }
    }
    // Before the manifest's counts: a run killed in between leaves the
    // steps pending, and the next swap or rollback records both.
    let schemas: Vec<&str> = maps.iter().map(|(_, b)| *b).collect();
    if let Err(e) = crate::backups::objects::record(control, ts, &schemas).await {
        warnings.push(format!(
            "could not record the backup's objects besides its tables (verify will compare its tables alone): {e:#}"
        ));
    }
    // What a rollback left of the backup it restored (the copies of kept
    // tables): its objects as they are now.
    if let Origin::Rollback { restored, .. } = origin
        && let Err(e) = record_left(control, restored).await
    {
        warnings.push(format!(
            "could not record what is left of {} (verify will compare its tables alone): {e:#}",
            restored.schema_name
        ));
    }
    manifest::update_manifest(control, &manifest).await?;
    Ok(Swapped {
        mode: choice.chosen(),
        backup_schema: backup,
        backup_timestamp: ts,
        moved: done.moved,
        manifest,
        before: done.before,
        after: done.after,
        warnings,
    })
}

/// The swap's COMMIT got no answer: the connection was lost, with no error
/// of the server's (which would mean it rolled back).
#[derive(Debug, thiserror::Error)]
#[error("committing the swap: {0}")]
struct CommitUnanswered(String);

/// A swap or rollback whose COMMIT got no answer, as the server tells it
/// afterwards ([`commit_outcome`]). Never "rolled back": the caller must not
/// record the migration as still prepared.
#[derive(Debug, thiserror::Error)]
pub enum CommitLost {
    #[error(
        "the connection was lost as the {what} committed, and it did commit ({backup} holds what it replaced); the steps after its COMMIT did not run: `pgshift status` shows the result, and the next swap or rollback finishes them"
    )]
    Committed { what: &'static str, backup: String },
    #[error(
        "the connection was lost as the {what} committed, and whether it did is unknown ({why}): once the destination answers, `pgshift status` tells (a committed one made {backup})"
    )]
    Unknown {
        what: &'static str,
        backup: String,
        why: String,
    },
}

/// How long [`commit_outcome`] asks: past the swap's
/// `idle_in_transaction_session_timeout`, after which a server that never
/// got the COMMIT has ended the session and rolled back.
const OUTCOME_WAIT: Duration = Duration::from_millis(IDLE_IN_SWAP_MS as u64 + 15_000);

/// Did the swap whose COMMIT got no answer commit? Asked of the server on
/// the control session (a new one when that does not answer within a few
/// seconds): yes once `backup` exists; no once the swap's session `pid` has
/// ended or left its transaction without it. `Err(why)` when the server
/// cannot be asked, or the session is still in its transaction after
/// [`OUTCOME_WAIT`].
async fn commit_outcome(sess: &Session, pid: i32, backup: &str) -> Result<bool, String> {
    const ASK: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + OUTCOME_WAIT;
    let mut fresh: Option<Client> = None;
    loop {
        let client = fresh.as_ref().unwrap_or(&sess.control);
        let asked = tokio::time::timeout(
            ASK,
            client.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity
                                 WHERE pid = $2 AND state IS DISTINCT FROM 'idle')",
                &[&backup, &pid],
            ),
        )
        .await;
        match asked {
            Ok(Ok(row)) => {
                if row.get::<_, bool>(0) {
                    return Ok(true);
                }
                if !row.get::<_, bool>(1) {
                    return Ok(false);
                }
            }
            _ if fresh.is_none() => match tokio::time::timeout(ASK, sess.connect()).await {
                Ok(Ok(c)) => {
                    fresh = Some(c);
                    continue;
                }
                Ok(Err(e)) => return Err(format!("the destination cannot be reached: {e:#}")),
                Err(_) => return Err("the destination does not answer".into()),
            },
            Ok(Err(e)) => return Err(format!("the destination cannot be asked: {e:#}")),
            Err(_) => return Err("the destination does not answer".into()),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "its session (pid {pid}) is still in its transaction"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What [`finish_committed`] did.
#[derive(Debug, Clone)]
pub struct Finished {
    pub backup: String,
    /// `swap` or `rollback`: what made the backup.
    pub kind: String,
    pub migration_id: Option<i64>,
    /// Messages for the operator: what was done, what could not be.
    pub notes: Vec<String>,
}

impl Finished {
    /// The notes as the operator reads them, each saying which run stopped.
    pub fn lines(&self) -> Vec<String> {
        self.notes
            .iter()
            .map(|n| {
                format!(
                    "the {} that made {} stopped after its COMMIT: {n}",
                    self.kind, self.backup
                )
            })
            .collect()
    }
}

/// A swap or rollback that committed but stopped before the steps after its
/// COMMIT (the process killed, the connection lost): its backup's manifest
/// has neither row counts nor the lock time, which only those steps write;
/// or one stopped while it validated the keys it created NOT VALID (which
/// can take long): its manifest still says `keys_pending`. Do now what can
/// still be done, under the caller's run lock: count the backup (nothing
/// writes a backup), validate the foreign keys it created NOT VALID, and
/// for a migration record those that stay so. The new public's write
/// counters at the swap cannot be known any more when its steps stopped
/// before them: a rollback of it says so (unknown writes). Returns None
/// when the newest backup is complete.
pub async fn finish_committed(client: &Client) -> Result<Option<Finished>> {
    let Some(b) = manifest::list_backups(client).await?.into_iter().next() else {
        return Ok(None);
    };
    let steps_stopped = b.manifest.steps_pending();
    if !steps_stopped && !b.manifest.keys_pending {
        return Ok(None);
    }
    let mut notes = Vec::new();
    let mut m = b.manifest.clone();
    let maps = m.schema_maps();
    if steps_stopped {
        let pairs: Vec<(&str, &str)> = maps
            .iter()
            .map(|s| (s.live.as_str(), s.backup.as_str()))
            .collect();
        m.tables = describe_all(client, &pairs).await?;
        m.counts_recorded = true;
        let schemas: Vec<&str> = pairs.iter().map(|(_, b)| *b).collect();
        crate::backups::objects::record(client, b.ts, &schemas).await?;
        manifest::update_manifest(client, &m).await?;
        notes.push(format!(
            "recorded the row counts of backup {} ({} tables)",
            b.schema_name,
            m.tables.len()
        ));
    }
    let migration = match m.migration_id {
        Some(id) if b.kind == "swap" => record::latest_migration(client)
            .await?
            .filter(|r| r.id == id && r.state.status == Status::Swapped),
        _ => None,
    };
    // The keys it created NOT VALID: a migration's deferred keys (by name: a
    // partition's copy of a partitioned table's key has its name), a
    // rollback's keys on or to the tables it kept.
    let live: Vec<String> = maps.into_iter().map(|s| s.live).collect();
    let pending = not_valid_keys(client, &live).await?;
    let ours: Vec<&NotValidKey> = match &migration {
        Some(row) => {
            let names = crate::prepare::sync::deferred_fk_names(&row.state.details.deferred_sql);
            pending
                .iter()
                .filter(|k| names.iter().any(|(_, c)| *c == k.constraint))
                .collect()
        }
        None if b.kind == "rollback" => pending
            .iter()
            .filter(|k| m.kept_tables.contains(&k.key) || m.kept_tables.contains(&k.ref_key))
            .collect(),
        None => Vec::new(),
    };
    let mut stays = Vec::new();
    let mut validated = Vec::new();
    for k in ours {
        let shown = meta::constraint_shown(&k.schema, &k.table, &k.constraint);
        let sql = format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            qualified(&k.schema, &k.table),
            quote_ident(&k.constraint)
        );
        match exec(client, &sql).await {
            Ok(()) => validated.push(shown),
            Err(e) => {
                notes.push(format!("foreign key {shown} stays NOT VALID: {e:#}"));
                stays.push(shown);
            }
        }
    }
    // A partitioned table's key is added once its partitions' copies are
    // valid, after the COMMIT: a swap stopped before never added it.
    if let Some(row) = &migration {
        let pairs = meta::schema_pairs(&row.state.schemas);
        let deferred = &row.state.details.deferred_sql;
        for fk in crate::prepare::sync::unadded_partitioned_keys(client, deferred, &pairs).await? {
            let shown = meta::constraint_shown(&fk.schema, &fk.table, &fk.constraint);
            let sql = fk.validate_sql(&fk.schema);
            let part = format!(".{}", display_ident(&fk.constraint));
            let why = if stays.iter().any(|s| s.ends_with(&part)) {
                Some(parent_key_advice(&sql))
            } else {
                exec(client, &sql).await.err().map(|e| format!("{e:#}"))
            };
            match why {
                None => validated.push(shown),
                Some(why) => {
                    notes.push(format!(
                        "foreign key {shown} of a partitioned table was not added: {why}"
                    ));
                    stays.push(shown);
                }
            }
        }
    }
    if !validated.is_empty() {
        notes.push(format!("validated foreign keys {}", validated.join(", ")));
    }
    if let Some(row) = &migration {
        let mut st = row.state.clone();
        st.details.fk_not_valid = stays;
        st.updated_at = Utc::now();
        record::save_migration(client, &st).await?;
    }
    manifest::keys_validated(client, m.timestamp).await?;
    if steps_stopped {
        notes.push(
            "the write counters of the new public at the swap were not recorded: a rollback of it counts every table's writes as unknown (--allow-discard)".into(),
        );
    }
    Ok(Some(Finished {
        backup: b.schema_name,
        kind: b.kind,
        migration_id: migration.map(|r| r.id),
        notes,
    }))
}

/// A NOT VALID foreign key of a live schema.
struct NotValidKey {
    schema: String,
    table: String,
    constraint: String,
    /// The table as keys name it (`name` in public, `schema.name` elsewhere),
    /// and the table it references.
    key: String,
    ref_key: String,
}

/// The NOT VALID foreign keys of the tables of `live`, partitions' first
/// (a partitioned table's key validates once its partitions' copies are).
async fn not_valid_keys(client: &Client, live: &[String]) -> Result<Vec<NotValidKey>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, con.conname::text,
                    CASE WHEN n.nspname = 'public' THEN '' ELSE n.nspname::text || '.' END || c.relname::text,
                    CASE WHEN rn.nspname = 'public' THEN '' ELSE rn.nspname::text || '.' END || r.relname::text
               FROM pg_catalog.pg_constraint con
               JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_class r ON r.oid = con.confrelid
               JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
              WHERE n.nspname = ANY($1) AND con.contype = 'f' AND NOT con.convalidated
              ORDER BY c.relispartition DESC, 1, 2, 3",
            &[&live],
        )
        .await
        .context("listing the NOT VALID foreign keys")?;
    Ok(rows
        .iter()
        .map(|r| NotValidKey {
            schema: r.get(0),
            table: r.get(1),
            constraint: r.get(2),
            key: r.get(3),
            ref_key: r.get(4),
        })
        .collect())
}

/// Record the objects of what a rollback left of `restored`, when its
/// manifest is still there (it kept tables live whose namesakes stay in it)
/// and it is still whole (`verify` compares no remnant's objects).
async fn record_left(client: &Client, restored: &BackupRow) -> Result<()> {
    match manifest::find_backup(client, restored.ts).await? {
        Some(b) if b.manifest.restored_since().is_none() => {}
        _ => return Ok(()),
    }
    let mut schemas = Vec::new();
    for m in restored.manifest.schema_maps() {
        if crate::pg::catalog::schema_exists(client, &m.backup).await? {
            schemas.push(m.backup);
        }
    }
    let schemas: Vec<&str> = schemas.iter().map(String::as_str).collect();
    crate::backups::objects::record(client, restored.ts, &schemas).await
}

/// The tables of every backup schema, counted, each with its live schema.
/// `maps`: each live schema and its backup schema.
async fn describe_all(client: &Client, maps: &[(&str, &str)]) -> Result<Vec<ManifestTable>> {
    let mut all = Vec::new();
    for (live, backup) in maps {
        for mut t in manifest::describe(client, backup, true).await? {
            t.schema = live.to_string();
            all.push(t);
        }
    }
    Ok(all)
}

/// A foreign key that failed its validation after the swap.
#[derive(Debug, Clone)]
pub struct StaysNotValid {
    /// The table's live schema.
    pub schema: String,
    pub table: String,
    pub constraint: String,
    pub error: String,
    /// A partitioned table's key that was never added (PostgreSQL before 18
    /// adds one only over valid partition keys): the table has none.
    pub absent: bool,
}

/// Why a partitioned table's key was not added, and how to add it (`sql`).
pub fn parent_key_advice(sql: &str) -> String {
    format!(
        "its partitions' copies have rows without a match, and a partitioned table's key is added only over valid ones: partitions created from now on get no key. Once the rows match, validate the partitions' keys and run: {sql}"
    )
}

/// `ALTER TABLE public.t VALIDATE CONSTRAINT c` for each key created NOT VALID
/// inside the swap (SHARE UPDATE EXCLUSIVE: the application's reads and writes
/// go on); a partitioned table's key is added after its partitions' copies
/// (in `keys` before it) are valid, and not while one of them is not.
/// Returns those that stay NOT VALID (or, partitioned, absent), with the reason.
pub async fn validate_foreign_keys(client: &Client, keys: &[CreatedFk]) -> Vec<StaysNotValid> {
    if !keys.is_empty() {
        // Each scans its table (15 M rows: 18 s with nothing said).
        tracing::info!(
            keys = keys.len(),
            "validating the foreign keys created NOT VALID in the swap (the application's reads and writes go on)"
        );
        // A pause for the tests that kill a run here (this step has no error
        // to fail with: a key that does not validate stays NOT VALID).
        let _ = failpoint("validating-keys").await;
    }
    let mut failed: Vec<StaysNotValid> = Vec::new();
    let mut failed_parts: BTreeSet<(String, String)> = BTreeSet::new();
    for fk in keys {
        let (table, constraint) = (&fk.table, &fk.constraint);
        let sql = fk.validate_sql(&fk.schema);
        if fk.add_sql.is_some() && failed_parts.contains(&(table.clone(), constraint.clone())) {
            failed.push(StaysNotValid {
                schema: fk.schema.clone(),
                table: table.clone(),
                constraint: constraint.clone(),
                error: parent_key_advice(&sql),
                absent: true,
            });
            continue;
        }
        if let Err(e) = exec(client, &sql).await {
            if let Some(parent) = &fk.partition_of {
                failed_parts.insert((parent.clone(), constraint.clone()));
            }
            failed.push(StaysNotValid {
                schema: fk.schema.clone(),
                table: table.clone(),
                constraint: constraint.clone(),
                error: format!("{e:#}"),
                absent: fk.add_sql.is_some(),
            });
        }
    }
    failed
}

/// While an attempt runs, note the relation the swap session waits for (from
/// the control session, every 100 ms): the next attempt locks it first (see
/// [`lock_statements`]). `pg_locks` is read only while the session waits for a
/// lock (`pg_stat_activity` says so): reading it holds every lock-manager
/// partition, which would slow the swap's own locking. Returns only when the
/// control session fails.
async fn watch_waits(
    control: &Client,
    pid: i32,
    waited_for: &std::sync::Mutex<Vec<Waited>>,
    seen: &AtomicU32,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = control
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&pid],
            )
            .await;
        match waiting {
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(_) => return,
        }
        // The relation and who holds it up, read in one statement: asked
        // apart, the wait could end between them (the attempt's lock timeout)
        // and the holder be lost.
        let row = control
            .query_opt(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, c.relkind::text,
                        pg_catalog.pg_get_userbyid(c.relowner)::text,
                        blockers.shown, blockers.autovacuum
                   FROM pg_catalog.pg_locks l
                   JOIN pg_catalog.pg_class c ON c.oid = l.relation
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  CROSS JOIN LATERAL
                        (SELECT pg_catalog.string_agg(h.shown, ', ' ORDER BY h.pid) AS shown,
                                coalesce(pg_catalog.bool_or(h.autovacuum), false) AS autovacuum
                           FROM (SELECT a.pid, {SESSION_SHOWN} AS shown,
                                        a.backend_type = 'autovacuum worker' AS autovacuum
                                   FROM pg_catalog.pg_stat_activity a
                                  WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1))
                                  ORDER BY a.pid LIMIT 3) h) blockers
                  WHERE l.pid = $1 AND NOT l.granted AND l.locktype = 'relation'
                  LIMIT 1"
                ),
                &[&pid],
            )
            .await;
        match row {
            Ok(Some(r)) => {
                seen.fetch_add(1, Ordering::Relaxed);
                let mut waited = Waited {
                    schema: r.get(0),
                    name: qualified(r.get(0), r.get(1)),
                    shown: crate::swap::impact::qualified_display(r.get(0), r.get(1)),
                    relkind: r.get(2),
                    owner: r.get(3),
                    held_by: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    by_autovacuum: r.get(5),
                };
                if let Ok(mut w) = waited_for.lock() {
                    // Seen as the wait ended, nobody holds it up any more:
                    // the holder an earlier look saw is still the best answer.
                    if waited.held_by.is_empty()
                        && let Some(seen) = w.iter().find(|n| n.name == waited.name)
                    {
                        waited.held_by = seen.held_by.clone();
                        waited.by_autovacuum = seen.by_autovacuum;
                    }
                    if w.last().map(|l| &l.name) != Some(&waited.name) {
                        tracing::debug!(relation = %waited.name, held_by = %waited.held_by, "the swap waits for a lock; a retry takes it first");
                    }
                    w.retain(|n| n.name != waited.name);
                    w.push(waited);
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// One attempt's request.
struct Request<'a> {
    exchange: &'a Exchange,
    /// The new backup schema of each pair's live schema.
    backups: Vec<String>,
    policy: Policy,
    choice: &'a Choice,
    /// The hook's relations in the incoming schema (locked with public's).
    incoming_locks: Vec<String>,
}

/// The mode for this exchange under this policy.
async fn choose_mode(client: &Client, exchange: &Exchange, policy: Policy) -> Result<Choice> {
    let pairs: Vec<(String, String)> = exchange
        .pairs
        .iter()
        .map(|p| (p.live.clone(), p.incoming.clone()))
        .collect();
    mode::choose(
        client,
        &pairs,
        exchange.keeps() && !exchange.kept_move_back,
        policy.mode,
    )
    .await
}

/// What one committed attempt did.
struct Done<B, A> {
    moved: Moved,
    /// (kind, live schema, name) of every object moved in, for the after-commit check.
    moved_in_objects: Vec<(String, String, String)>,
    manifest: Manifest,
    before: B,
    after: A,
}

/// After the commit: objects in public that the swap did not move there (nor
/// kept there), i.e. created by someone else while the swap waited for its
/// locks (they stayed).
async fn strays(
    client: &Client,
    moved_in: &[(String, String, String)],
    exchange: &Exchange,
) -> Result<Vec<String>> {
    let moved: HashSet<&(String, String, String)> = moved_in.iter().collect();
    let kept = exchange.kept_tables();
    let mut out = Vec::new();
    for p in &exchange.pairs {
        out.extend(
            objects::movables(client, &p.live)
                .await?
                .into_iter()
                .filter(|m| !moved.contains(&(m.kind.clone(), p.live.clone(), m.name.clone())))
                .filter(|m| !m.kept_with(&p.live, &kept))
                .map(|m| format!("{} {}", m.kind, m.sql_name)),
        );
    }
    Ok(out)
}

/// What moves, pair by pair: (out of the live schema, in from the incoming one).
struct Listed {
    pairs: Vec<(Vec<Movable>, Vec<Movable>)>,
    /// Per pair: the live schema's kept tables (a rename swap moves them
    /// back from the backup).
    kept: Vec<Vec<Movable>>,
    /// Per pair: the owner of the incoming schema when it is another role
    /// this role may act as (a superuser swapping what the application's
    /// role prepared). The new backup and the new empty shadow go to it, so
    /// that role can still verify, roll back, clean up and prepare again.
    handover: Vec<Option<String>>,
}

impl Listed {
    fn out(&self) -> impl Iterator<Item = &Movable> {
        self.pairs.iter().flat_map(|p| p.0.iter())
    }
    fn inc(&self) -> impl Iterator<Item = &Movable> {
        self.pairs.iter().flat_map(|p| p.1.iter())
    }
}

/// What moves out of each live schema and in from its incoming schema (run
/// with an empty search_path: names come back qualified).
async fn list(client: &Client, exchange: &Exchange) -> Result<Listed> {
    let mut pairs = Vec::with_capacity(exchange.pairs.len());
    let mut kept = Vec::with_capacity(exchange.pairs.len());
    let mut handover = Vec::with_capacity(exchange.pairs.len());
    let kept_tables = exchange.kept_tables();
    for p in &exchange.pairs {
        let out = objects::movables(client, &p.live).await?;
        let inc = objects::movables(client, &p.incoming).await?;
        let (moving, kept_here) = filter_keep(out, inc, p, &kept_tables);
        pairs.push(moving);
        kept.push(kept_here);
        handover.push(incoming_owner(client, &p.incoming).await?);
    }
    Ok(Listed {
        pairs,
        kept,
        handover,
    })
}

/// The owner of `incoming` when it is not this role but one whose privileges
/// this role has and which it may make an owner (SET ROLE on PostgreSQL 16+,
/// membership before).
async fn incoming_owner(client: &Client, incoming: &str) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text
               FROM pg_catalog.pg_namespace n
              WHERE n.nspname = $1
                AND pg_catalog.pg_get_userbyid(n.nspowner) <> current_user
                AND pg_catalog.pg_has_role(n.nspowner, 'USAGE')
                AND pg_catalog.pg_has_role(n.nspowner,
                      CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
                           THEN 'SET' ELSE 'MEMBER' END)",
            &[&incoming],
        )
        .await
        .with_context(|| format!("reading the owner of schema {incoming}"))?;
    Ok(row.map(|r| r.get(0)))
}

/// The longest the swap transaction may sit idle between its statements
/// (the server then ends the session, and the swap rolls back): pgshift's
/// own pauses between them last milliseconds; the application waits behind
/// the locks for as long as a stalled pgshift holds them.
pub const IDLE_IN_SWAP_MS: u128 = 5_000;

/// Marks the start of the locked window in the swap transaction (with the
/// lock wait's bound, as the settings just set it), so that every later wait
/// gets only what is left of that bound: see [`window_left`]. The start is
/// kept as milliseconds since the epoch: a timestamp's text follows the
/// session's DateStyle, and `SQL, DMY` wrote one that did not read back.
const LOCK_WINDOW_START: &str = "SELECT pg_catalog.set_config('pgshift.lock_budget', \
     (SELECT s.setting FROM pg_catalog.pg_settings s WHERE s.name = 'lock_timeout'), true), \
     pg_catalog.set_config('pgshift.lock_started', \
     (EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()) * 1000)::bigint::text, true)";

/// `SELECT set_config(setting, …)`: what is left of the lock window's bound
/// (at least 1 ms). An application transaction that queues behind a lock the
/// swap took at the window's start has waited since then: each of the swap's
/// own waits bounded by 4/5 of `deadlock_timeout` alone could still outlast
/// it (the swap waited for other tables first), and the deadlock detector
/// then cancelled the application's transaction (the chaos run: 12 at once).
/// Bounded by the window, every wait of the swap ends before any
/// application's wait behind it reaches `deadlock_timeout`. `LOCK TABLE` of
/// many tables is one statement: its `statement_timeout` is what is left.
fn window_left(setting: &str) -> String {
    format!(
        "SELECT pg_catalog.set_config('{setting}', GREATEST(1, pg_catalog.current_setting('pgshift.lock_budget')::bigint \
         - ((EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()) * 1000)::bigint - pg_catalog.current_setting('pgshift.lock_started')::bigint))::text || 'ms', true)"
    )
}

/// Why an attempt gave up when its lock window closed.
const WINDOW_CLOSED: &str = "the locks took longer than one lock wait may (--lock-timeout, or 4/5 of deadlock_timeout when shorter)";

/// Did this attempt give up because its lock window closed?
fn is_window_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Transient>()
            .is_some_and(|t| t.0 == WINDOW_CLOSED)
    })
}

/// Did the lock window's `statement_timeout` end the locking round trip?
/// Any cancel counts, not only one the server calls a statement timeout: a
/// `LOCK` of many uncontended tables checks for interrupts only once it is
/// done, so a timeout that fires during it is noticed by the next statement,
/// whose timer start clears the timeout's mark, and PostgreSQL reports that
/// as "canceling statement due to user request". (A real cancel request is a
/// retry too, and pgshift's own Ctrl-C ends the retries.)
fn window_closed(e: &anyhow::Error) -> bool {
    PgError::code_in(e).is_some_and(|c| c == SqlState::QUERY_CANCELED)
}

/// The swap transaction's settings. Its lock waits end before the server's
/// deadlock detector could act (at most 4/5 of `deadlock_timeout`): an
/// application transaction that comes to wait for the swap while the swap
/// waits for it is never the one cancelled; the swap gives up, releases its
/// locks and retries.
fn session_settings(req: &Request) -> Vec<String> {
    vec![
        crate::pg::exec::lock_timeout_under_deadlock_sql(req.policy.lock_timeout),
        format!(
            "SET LOCAL statement_timeout = '{}ms'",
            req.policy.statement_timeout.as_millis().max(1)
        ),
        format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
            req.policy
                .statement_timeout
                .as_millis()
                .clamp(1000, IDLE_IN_SWAP_MS)
        ),
        "SET LOCAL search_path = ''".to_string(),
    ]
}

/// What moves out and in, without the kept tables; and the live side's kept
/// tables.
fn filter_keep(
    out: Vec<Movable>,
    inc: Vec<Movable>,
    pair: &Pair,
    kept_tables: &objects::KeptTables,
) -> ((Vec<Movable>, Vec<Movable>), Vec<Movable>) {
    let (kept, out): (Vec<Movable>, Vec<Movable>) = out
        .into_iter()
        .partition(|m| m.kept_with(&pair.live, kept_tables));
    let inc = inc
        .into_iter()
        .filter(|m| !m.kept_with(&pair.incoming, kept_tables))
        .collect();
    ((out, inc), kept)
}

/// [`Exchange::kept_tables`] of `pairs`.
pub fn kept_tables(pairs: &[Pair]) -> objects::KeptTables {
    pairs
        .iter()
        .flat_map(|p| {
            p.keep
                .iter()
                .flat_map(|t| [(p.live.clone(), t.clone()), (p.incoming.clone(), t.clone())])
        })
        .collect()
}

/// The relation the watch last saw an attempt wait for.
fn latest(waited_for: &std::sync::Mutex<Vec<Waited>>) -> Option<Waited> {
    waited_for.lock().ok().and_then(|w| w.last().cloned())
}

/// `; the last attempt waited for public.users, held by pid 4242 (…)`, when
/// the watch saw it wait.
fn last_wait(waited_for: &std::sync::Mutex<Vec<Waited>>) -> String {
    match latest(waited_for) {
        Some(w) => format!("; {}", w.describe("the last attempt waited for")),
        None => String::new(),
    }
}

/// A server setting as `SHOW` gives it (`1s`), or `?` when it cannot be read.
async fn show_setting(control: &Client, name: &str) -> String {
    control
        .query_one("SELECT pg_catalog.current_setting($1)", &[&name])
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|_| "?".into())
}

/// A relation an attempt waited for (see [`watch_waits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waited {
    schema: String,
    /// Qualified and quoted, as the lock statements write it.
    name: String,
    /// For people: `public.users`.
    shown: String,
    /// `pg_class.relkind`.
    relkind: String,
    owner: String,
    /// The sessions holding it up, for people (`pid 4242 (app, psql, idle in
    /// transaction)`); empty when they could not be read.
    held_by: String,
    /// Whether one of them is an autovacuum worker.
    by_autovacuum: bool,
}

impl Waited {
    /// `{waited} public.users, held by pid 4242 (…)`.
    fn describe(&self, waited: &str) -> String {
        if self.held_by.is_empty() {
            format!("{waited} {}", self.shown)
        } else {
            format!("{waited} {}, held by {}", self.shown, self.held_by)
        }
    }
}

/// The locks, before anything moves: one LOCK statement, in a stable order,
/// for public's tables and the hook's relations in the incoming schema (the
/// preserved tables' shadow copies). That is what the guarantees need: no
/// session is in the middle of using public when it changes (a session
/// reading a view locks the tables the view reads; views themselves are not
/// locked, see `pg::objects`; LOCK TABLE refuses foreign tables, whose rows
/// live elsewhere). Nobody else uses the
/// incoming schema; in object mode each ALTER takes its object's lock
/// itself. `ONLY`: every partition and child is listed itself, and recursing
/// through pg_inherits for each relation costs more than the locks.
///
/// Relations earlier attempts waited for go first, the latest first: an
/// application whose transactions take them in another order than ours
/// (users, then sessions) would otherwise meet every attempt in a cycle. In
/// object mode that includes the views and sequences its ALTERs move, in
/// either mode the sequences the swap fences (a
/// session reading a view holds the view while it waits for a table; a
/// transaction that takes `nextval()` before its INSERT holds the sequence):
/// LOCK TABLE takes neither without side effects (a view's lock recurses into
/// what it reads, with its owner's privileges; sequences and foreign tables
/// are refused), so an
/// `ALTER … OWNER TO` its own owner, which changes nothing and takes the same
/// ACCESS EXCLUSIVE lock as the move, takes it first.
fn lock_statements(req: &Request, listed: &Listed, first: &[Waited]) -> Vec<String> {
    let mut names = lock_names(req, listed);
    let mut lead = Vec::new();
    let ours = |schema: &str| {
        req.exchange
            .pairs
            .iter()
            .any(|p| p.live == schema || p.incoming == schema)
    };
    for f in first.iter().rev() {
        if let Some(i) = names.iter().position(|n| *n == f.name) {
            names.remove(i);
            lead.push(format!(
                "LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE",
                f.name
            ));
            continue;
        }
        // A table of the exchanged schemas the hook's work waited for (one
        // outside what moves). Never another schema's, nor a catalog's.
        if matches!(f.relkind.as_str(), "r" | "p") && ours(&f.schema) {
            lead.push(format!(
                "LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE",
                f.name
            ));
            continue;
        }
        let kind = match f.relkind.as_str() {
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            "f" => "FOREIGN TABLE",
            "S" => "SEQUENCE",
            _ => continue,
        };
        // A rename locks no view; it locks the sequences the swap carries
        // over (`swap::fence`), which a transaction that takes `nextval()`
        // before its INSERT holds just the same.
        if (req.choice.rename.is_none() || kind == "SEQUENCE") && ours(&f.schema) {
            lead.push(format!(
                "ALTER {kind} {} OWNER TO {}",
                f.name,
                quote_ident(&f.owner)
            ));
        }
    }
    if !names.is_empty() {
        lead.push(format!(
            "LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE",
            names.join(", ")
        ));
    }
    lead
}

/// The relations [`lock_statements`] locks with LOCK TABLE, sorted.
/// Kept tables among them: they stay, but their foreign keys to and from
/// what moves change under the locks (and a rename moves them back), which
/// takes their locks too. Taken there, in the middle of the transaction, an
/// application transaction that had written a kept table and then waited for
/// a table the swap holds was the deadlock detector's victim.
fn lock_names<'a>(req: &'a Request, listed: &'a Listed) -> Vec<&'a str> {
    let mut names: Vec<&str> = listed
        .out()
        .chain(listed.kept.iter().flatten())
        .filter_map(|m| m.lockable.as_deref())
        .chain(req.incoming_locks.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn move_statements(req: &Request, listed: &Listed) -> Vec<String> {
    let mut sql = moves(req, listed);
    // The new backup and the new empty shadow belong to whoever owned the
    // incoming schema (see `Listed::handover`).
    for ((pair, backup), owner) in req
        .exchange
        .pairs
        .iter()
        .zip(&req.backups)
        .zip(&listed.handover)
    {
        let Some(owner) = owner else { continue };
        sql.push(format!(
            "ALTER SCHEMA {} OWNER TO {}",
            quote_ident(backup),
            quote_ident(owner)
        ));
        if req.exchange.recreate_incoming && pair.live == PUBLIC {
            sql.push(format!(
                "ALTER SCHEMA {} OWNER TO {}",
                quote_ident(&pair.incoming),
                quote_ident(owner)
            ));
        }
    }
    sql
}

/// The renames or the moves of [`move_statements`].
fn moves(req: &Request, listed: &Listed) -> Vec<String> {
    if let Some(steps) = &req.choice.rename {
        let mut sql = Vec::new();
        for (((pair, backup), steps), kept) in req
            .exchange
            .pairs
            .iter()
            .zip(&req.backups)
            .zip(steps)
            .zip(&listed.kept)
        {
            sql.extend(steps.sql(&pair.incoming, backup, req.exchange.recreate_incoming));
            // Kept tables (partitions each on their own) went along with the
            // renamed schema: back into the new one, with their indexes,
            // constraints and owned sequences; their extended statistics,
            // which do not follow a table, each on its own.
            for t in &pair.keep {
                sql.push(format!(
                    "ALTER TABLE {} SET SCHEMA {}",
                    qualified(backup, t),
                    crate::pg::ident::display_ident(&pair.live)
                ));
            }
            for m in kept.iter().filter(|m| m.kind == "STATISTICS") {
                sql.push(format!(
                    "ALTER STATISTICS {} SET SCHEMA {}",
                    qualified(backup, &m.name),
                    crate::pg::ident::display_ident(&pair.live)
                ));
            }
        }
        return sql;
    }
    let places: Vec<_> = req
        .exchange
        .pairs
        .iter()
        .zip(&req.backups)
        .zip(&listed.pairs)
        .collect();
    let mut sql = Vec::new();
    for ((pair, backup), _) in &places {
        sql.push(format!("CREATE SCHEMA {}", quote_ident(backup)));
        sql.push(format!(
            "COMMENT ON SCHEMA {} IS {}",
            quote_ident(backup),
            quote_literal(&format!(
                "{MARKER} backup of {} (managed by pgshift)",
                pair.live
            ))
        ));
        if pair.live != PUBLIC {
            // A schema only the source has is created by the swap.
            sql.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&pair.live)
            ));
        }
    }
    // Objects named by a signature first, in every schema of the swap (a
    // function of one schema may take a type of another), then the rest:
    // each pair's objects out to its backup, then the incoming ones in.
    for first in [true, false] {
        for ((pair, backup), (out, inc)) in &places {
            let this_round = |m: &&Movable| m.named_by_signature() == first;
            for m in out.iter().filter(this_round) {
                sql.push(m.set_schema_sql(backup));
            }
            for m in inc.iter().filter(this_round) {
                sql.push(m.set_schema_sql(&pair.live));
            }
        }
    }
    if req.exchange.recreate_incoming {
        for ((pair, _), _) in &places {
            sql.push(format!("DROP SCHEMA {}", quote_ident(&pair.incoming)));
            if pair.live == PUBLIC {
                sql.push(format!("CREATE SCHEMA {}", quote_ident(&pair.incoming)));
                sql.push(format!(
                    "COMMENT ON SCHEMA {} IS {}",
                    quote_ident(&pair.incoming),
                    quote_literal(&format!("{MARKER} shadow (empty; managed by pgshift)"))
                ));
            }
        }
    }
    sql
}

/// The last value of the last row a simple query returned.
fn last_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    msgs.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
        _ => None,
    })
}

/// An object listed before the locks no longer existed when its ALTER ran.
fn gone_meanwhile(e: &anyhow::Error) -> bool {
    PgError::code_in(e).is_some_and(|code| {
        code == SqlState::UNDEFINED_TABLE
            || code == SqlState::UNDEFINED_OBJECT
            || code == SqlState::UNDEFINED_FUNCTION
    })
}

/// An attempt's error, as the retry loop should see it. An object "does not
/// exist" when its ALTER (or LOCK) runs: the objects changed between listing
/// them and locking them, so the next attempt lists again — unless the same
/// error comes back on the fresh lists, which is no race: the swap stops with
/// the server's error.
fn gone_or_failed(
    e: anyhow::Error,
    exchange: &Exchange,
    last: &std::sync::Mutex<Option<String>>,
) -> anyhow::Error {
    if !gone_meanwhile(&e) {
        return e;
    }
    let text = format!("{e:#}");
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.as_deref() == Some(text.as_str()) {
        return e;
    }
    tracing::debug!(error = %text, "an object listed for the swap is gone");
    *last = Some(text);
    changed(exchange)
}

/// The objects changed between listing them and locking them: list again.
fn changed(exchange: &Exchange) -> anyhow::Error {
    let which = match exchange.public_alone() {
        Some(p) => format!("objects in public or {}", p.incoming),
        None => "objects of the swapped schemas".to_string(),
    };
    anyhow::Error::new(Transient(format!(
        "{which} were dropped while the swap waited for its locks"
    )))
}

#[allow(clippy::too_many_arguments)]
async fn one_attempt<H: InTx>(
    client: &Client,
    lock_session: &Client,
    req: &Request<'_>,
    hook: &H,
    manifest: &Manifest,
    record: Option<&MigrationState>,
    listed: Option<Listed>,
    first: &[Waited],
) -> Result<Done<H::Before, H::After>> {
    // Outside the transaction and before any lock: what moves (`listed`, when
    // the caller just listed it). Under the locks nothing scans the catalogs:
    // at a thousand tables with PostGIS installed that alone costs over 10 ms
    // of the locked window. An object dropped in between fails its ALTER and
    // the attempt is retried with fresh lists; one created in between stays
    // where it is and is reported after the commit.
    exec(client, "SET search_path = ''").await?;
    let listed = match listed {
        Some(l) => l,
        None => list(client, req.exchange).await?,
    };
    let lock = lock_statements(req, &listed, first);
    let locked: usize = lock.iter().map(|l| l.matches(", ").count() + 1).sum();

    // The locked window starts here. Round trip 1: begin, bounds, locks.
    let started = Instant::now();
    let mut first = String::from("BEGIN;\n");
    first.push_str(&session_settings(req).join(";\n"));
    first.push_str(";\n");
    first.push_str(LOCK_WINDOW_START);
    for l in &lock {
        first.push_str(";\n");
        first.push_str(&window_left("statement_timeout"));
        first.push_str(";\n");
        first.push_str(l);
    }
    first.push_str(&format!(
        ";\nSET LOCAL statement_timeout = '{}ms';\n{}",
        req.policy.statement_timeout.as_millis().max(1),
        window_left("lock_timeout")
    ));
    match exec(client, &first).await {
        Ok(()) => {}
        Err(e) if window_closed(&e) => {
            return Err(anyhow::Error::new(Transient(WINDOW_CLOSED.into())));
        }
        Err(e) => return Err(e.context("locking the tables")),
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        relations = locked,
        "swap locks taken"
    );
    let before = hook.before_moves(client).await?;
    // Round trip 2: every move, then one query checking the result.
    let mut moves = window_left("lock_timeout");
    moves.push_str(";\n");
    moves.push_str(&move_statements(req, &listed).join(";\n"));
    moves.push_str(";\n");
    moves.push_str(&check_sql(req));
    let problems = match simple(client, &moves).await {
        Ok(msgs) => last_value(&msgs).unwrap_or_default(),
        Err(e) => return Err(e.context("moving objects")),
    };
    if !problems.is_empty() {
        bail!("{problems}; rolling back");
    }
    let mut manifest = manifest.clone();
    // The backup exists from this attempt's COMMIT, however long the earlier
    // ones waited (its name keeps the first attempt's time).
    manifest.created_at = Utc::now();
    failpoint("swap-moved").await?;
    // The hook's waits get what is left of the window too (the moves took
    // some of it): set once before the moves, a wait of the hook's could
    // outlast an application's wait behind the swap's locks.
    exec(client, &window_left("lock_timeout")).await?;
    let after = hook.after_moves(client, &before, &mut manifest).await?;
    failpoint("swap-commit").await?;
    // The run lock must still be this run's at the COMMIT: once its session
    // has ended another run may hold it (a round trip proves it lives).
    if lock_session.is_closed() || lock_session.batch_execute("").await.is_err() {
        return Err(anyhow::Error::new(crate::error::LockLost));
    }
    // Round trip 3: the manifest, the migration's record and COMMIT.
    let mut last = manifest::insert_backup_sql(&manifest)?;
    if let Some(st) = record {
        last.push_str(";\n");
        last.push_str(&record::save_migration_sql(st)?);
    }
    last.push_str(";\nCOMMIT");
    if let Err(e) = exec(client, &last).await {
        // No answer at all (no error of the server's): it may have committed.
        if PgError::code_in(&e).is_none() {
            return Err(anyhow::Error::new(CommitUnanswered(format!("{e:#}"))));
        }
        return Err(e.context("committing the swap"));
    }
    let held = started.elapsed().as_millis() as u64;
    exec(client, "RESET search_path").await?;
    Ok(Done {
        moved: Moved {
            lock_held_ms: held,
            attempts: 0,
            earlier_attempts_ms: 0,
            moved_out: listed.out().count(),
            moved_in: listed.inc().count(),
        },
        moved_in_objects: req
            .exchange
            .pairs
            .iter()
            .zip(&listed.pairs)
            .flat_map(|(p, (_, inc))| {
                inc.iter()
                    .map(|m| (m.kind.clone(), p.live.clone(), m.name.clone()))
            })
            .collect(),
        manifest,
        before,
        after,
    })
}

/// One query run after the moves, before COMMIT: empty when the expected tables
/// are in public and (for a swap) no pgshift trigger is left on a public
/// table; otherwise what is wrong.
fn check_sql(req: &Request) -> String {
    let (mut schemas, mut tables) = (Vec::new(), Vec::new());
    for p in &req.exchange.pairs {
        for t in &p.expected_tables {
            schemas.push(quote_literal(&p.live));
            tables.push(quote_literal(t));
        }
    }
    let expected = if tables.is_empty() {
        "'{}'::text[], '{}'::text[]".to_string()
    } else {
        format!(
            "ARRAY[{}]::text[], ARRAY[{}]::text[]",
            schemas.join(", "),
            tables.join(", ")
        )
    };
    let lives = format!(
        "ARRAY[{}]::text[]",
        req.exchange
            .pairs
            .iter()
            .map(|p| quote_literal(&p.live))
            .join(", ")
    );
    let (place, not_where) = match req.exchange.public_alone() {
        Some(_) => ("public", "after the moves these tables are not in public: "),
        None => (
            "live",
            "after the moves these tables are not where they belong: ",
        ),
    };
    let triggers = if req.exchange.recreate_incoming {
        format!(
            "(SELECT count(*) || {still_on} FROM pg_catalog.pg_trigger t
           JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = ANY({lives}) AND NOT t.tgisinternal AND {own} HAVING count(*) > 0)",
            still_on = quote_literal(&format!(" pgshift triggers are still on {place} tables")),
            own = own_trigger_sql("t"),
        )
    } else {
        "NULL".to_string()
    };
    format!(
        "SELECT concat_ws('; ',
            (SELECT {not_where} || string_agg(CASE WHEN s = 'public' THEN t ELSE s || '.' || t END, ', ')
               FROM unnest({expected}) AS x(s, t)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = s AND c.relname = t AND c.relkind IN ('r', 'p'))
             HAVING count(*) > 0),
            {triggers})",
            not_where = quote_literal(not_where),
        )
}
