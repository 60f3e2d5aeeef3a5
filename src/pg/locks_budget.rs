//! The lock budget: how many slots of the server's shared lock table a
//! transaction needs, and whether the server has them.
//!
//! # Capacity
//!
//! PostgreSQL sizes its shared lock table at start-up (`lock.c`):
//! `NLOCKENTS = max_locks_per_transaction × (MaxBackends + max_prepared_transactions)`,
//! where `MaxBackends` (`postinit.c`, `InitializeMaxBackends`) counts every
//! process that can take heavyweight locks, not just client connections:
//!
//! * PostgreSQL 13–17: `max_connections + autovacuum_max_workers + 1`
//!   (the autovacuum launcher) `+ max_worker_processes + max_wal_senders`;
//! * PostgreSQL 18: `max_connections + autovacuum_worker_slots + max_worker_processes
//!   + max_wal_senders + 2` (autovacuum launcher and slot-sync worker).
//!   (17 also reserves the slot-sync worker's slot; counting one process fewer
//!   there errs on the safe side by `max_locks_per_transaction` slots.)
//!
//! With the defaults (100 connections, 3 autovacuum workers, 8 worker
//! processes, 10 WAL senders) that is 64 × 122 = 7,808 slots, not the
//! 64 × 100 of the rule of thumb. The table can grow somewhat past `NLOCKENTS`
//! into shared memory that other structures left unused (a backend taking
//! advisory locks until "out of shared memory" got 1.6–1.75 × `NLOCKENTS` on
//! PostgreSQL 15), but only `NLOCKENTS` is guaranteed, and what lies beyond is
//! shared with every other session's need for the same memory. So pgshift
//! counts on `NLOCKENTS` and nothing more: refusing a swap that would, by
//! luck, have fit costs the operator a restart with a larger setting; starting
//! one that fails half-way with "out of shared memory" costs them a failed
//! cut-over and, while it holds its locks, errors in every other session that
//! needs a new lock. Slots held by other sessions right now (`pg_locks` rows
//! outside the per-backend fast-path slots, one per distinct lock) are
//! subtracted; fast-path locks (weak locks on up to 16 relations per backend,
//! more on 18) never use the shared table.
//!
//! # Need
//!
//! What one transaction takes, counted as distinct locks (a lock held in two
//! modes is one slot). Measured on a swap held at its `swap-commit` failpoint
//! (`pg_locks` rows of its backend, outside the fast path), the object-level
//! swap's `ALTER … SET SCHEMA` takes:
//!
//! * one lock per moved relation (table, partition, view, materialized view,
//!   foreign table, sequence) and one per sequence owned by a moved table
//!   (serial and identity columns: they move with the table, locked); not its
//!   indexes, TOAST table, constraints, row type;
//! * one per moved function, procedure or aggregate (and per collation,
//!   operator, text-search object … , which take an object lock too); types
//!   and domains take none, and are not counted;
//! * `LOCK TABLE` also locks the partitions and inheritance children of a
//!   locked table and, for a view, the relations its query reads (recursively):
//!   counted once with the rest;
//! * per preserved table, the final sync reads its changelog and drops its
//!   four triggers ([`PER_PRESERVED_TABLE`], and [`PRESERVED_ONCE`] for the
//!   trigger catalogs the first one takes; the changelogs and functions are
//!   dropped after the COMMIT, in transactions of their own); replaying rows
//!   locks every index (and the TOAST) of the live and the shadow table
//!   ([`replay`]); each deferred statement takes one more, one per leaf
//!   partition for a partitioned table's foreign key;
//! * per foreign key that a kept table leaves crossing between a live schema
//!   and a backup (re-pointed or detached in the transaction): its
//!   constraint, its partitions' clones and their triggers, which dropping it
//!   locks ([`crossing_keys`]; five for a plain key);
//! * a fixed part: the schemas, the transaction id, the manifest's and the
//!   record's tables and the catalogs and catalog indexes that no longer fit
//!   the fast path: [`PER_TRANSACTION`], and [`PER_EXTRA_PAIR`] for each
//!   further schema pair (`--schemas`).
//!
//! [`moves`] and [`locks`] take the lists of objects a transaction will move
//! or lock, so any swap (object-level or by renaming schemas) computes its own
//! need with the same functions; [`object_swap`] adds them up for today's.
//!
//! Estimated against measured (distinct non-fast-path locks of the swap's
//! backend at `swap-commit`, PostgreSQL 15): 51 tables with serial keys 133 /
//! 110; a mix of 47 tables, partitions, views, a materialized view,
//! sequences, functions and types 85 / 55, the same with a preserved table
//! and a deferred foreign key 110 / 77; ~300 objects of every kind with a
//! preserved table (tests/scale.rs) 503 / 476; 4,202 tables and partitions
//! 8,235 / 8,219. Never below the real count, above it by a few dozen slots
//! (the fixed part); except with
//! many preserved tables, whose replay's locks are counted for each though
//! only those written during the swap take them: 250 tables with 200
//! preserved ones, none written, 3,300 / 1,670 (2026-12-06). Types were
//! counted until 2026-12-07: 200 functions with 240 types and domains, 762
//! then, 522 now / 488.

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::pg::objects::Movable;

/// Slots a swap-like transaction of one schema pair needs beyond the objects
/// it moves and locks: four schemas, the transaction id, the manifest's and
/// the migration record's tables with their keys and TOAST, and catalogs and
/// catalog indexes past the fast-path slots (measured at COMMIT: 6 to 16
/// catalogs on a small swap, 22 once thousands of ACCESS EXCLUSIVE locks
/// leave no fast path to them; 34–40 in all).
pub const PER_TRANSACTION: u64 = 40;

/// Slots each further schema pair adds to the fixed part: its live schema,
/// its incoming schema and its new backup schema.
pub const PER_EXTRA_PAIR: u64 = 3;

/// Slots the final sync of one preserved table takes inside the swap: four
/// trigger drops (the table itself is already locked) and the read of its
/// changelog (measured on PostgreSQL 15: 7.2 a table with 50 preserved
/// tables; 16.4 when the changelogs and functions were dropped there too).
pub const PER_PRESERVED_TABLE: u64 = 8;

/// Slots the final sync takes once when there is any preserved table: the
/// trigger catalogs and their indexes, past the fast path (measured: the
/// first preserved table costs 17 slots, each further one 7).
pub const PRESERVED_ONCE: u64 = 10;

/// Slots one deferred statement (a foreign key, trigger or rule of a preserved
/// table created inside the swap) adds beyond the tables already locked.
pub const PER_DEFERRED_STATEMENT: u64 = 1;

/// The server's lock table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub max_locks_per_transaction: u64,
    /// `MaxBackends`: every process that may take heavyweight locks.
    pub server_processes: u64,
    pub max_prepared_transactions: u64,
    /// `max_locks_per_transaction × (server_processes + max_prepared_transactions)`.
    pub slots: u64,
    /// Slots held right now by all sessions (distinct locks outside the fast path).
    pub in_use: u64,
}

/// `MaxBackends` from the settings, as PostgreSQL computes it (see the module
/// documentation).
pub fn server_processes(
    version_num: u32,
    max_connections: u64,
    autovacuum_workers: u64,
    max_worker_processes: u64,
    max_wal_senders: u64,
) -> u64 {
    let special = if version_num >= 180_000 { 2 } else { 1 };
    max_connections + autovacuum_workers + max_worker_processes + max_wal_senders + special
}

impl Capacity {
    /// Read the settings and the current use of the lock table.
    pub async fn read(client: &impl GenericClient) -> Result<Capacity> {
        let r = client
            .query_one(
                "SELECT current_setting('server_version_num')::int,
                        current_setting('max_locks_per_transaction')::bigint,
                        current_setting('max_connections')::bigint,
                        current_setting('max_prepared_transactions')::bigint,
                        current_setting('max_worker_processes')::bigint,
                        current_setting('max_wal_senders')::bigint,
                        COALESCE(current_setting('autovacuum_worker_slots', true),
                                 current_setting('autovacuum_max_workers'))::bigint,
                        (SELECT count(*) FROM (SELECT DISTINCT locktype, database, relation, page, tuple,
                                                      virtualxid, transactionid::text, classid, objid, objsubid
                                                 FROM pg_catalog.pg_locks
                                                WHERE NOT fastpath AND mode <> 'SIReadLock') l)",
                &[],
            )
            .await
            .context("reading the lock table's size (max_locks_per_transaction and the process limits)")?;
        let version: i32 = r.get(0);
        let get = |i: usize| r.get::<_, i64>(i).max(0) as u64;
        let (mlpt, prepared) = (get(1), get(3));
        let processes = server_processes(version as u32, get(2), get(6), get(4), get(5));
        Ok(Capacity {
            max_locks_per_transaction: mlpt,
            server_processes: processes,
            max_prepared_transactions: prepared,
            slots: mlpt * (processes + prepared),
            in_use: get(7),
        })
    }

    /// Slots nobody holds right now.
    pub fn free(&self) -> u64 {
        self.slots.saturating_sub(self.in_use)
    }

    /// How many slots one of pgshift's own batch transactions (prepare's
    /// phases, cleanups) may use: a quarter of what is free, so that three
    /// quarters stay with the applications, and never less than
    /// `max_locks_per_transaction`, the share the server is sized to give
    /// every transaction.
    pub fn per_transaction(&self) -> u64 {
        (self.free() / 4)
            .max(self.max_locks_per_transaction)
            .max(16)
    }

    /// The smallest `max_locks_per_transaction` (a multiple of 64) whose lock
    /// table holds `needed` slots plus what is in use now, with a quarter more
    /// for the other sessions' locks to grow.
    pub fn setting_for(&self, needed: u64) -> u64 {
        let want = (needed + self.in_use) + (needed + self.in_use) / 4;
        let per = want.div_ceil((self.server_processes + self.max_prepared_transactions).max(1));
        per.div_ceil(64).max(1) * 64
    }
}

/// The slots one transaction needs, by source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Need {
    /// Relations locked or moved (with owned sequences, partitions, view bases).
    pub relations: u64,
    /// Functions, types and other objects moved.
    pub objects: u64,
    /// The preserved tables' final sync and deferred statements.
    pub sync: u64,
    /// The fixed part ([`PER_TRANSACTION`]).
    pub fixed: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.relations + self.objects + self.sync + self.fixed
    }
}

impl std::ops::Add for Need {
    type Output = Need;
    fn add(self, o: Need) -> Need {
        Need {
            relations: self.relations + o.relations,
            objects: self.objects + o.objects,
            sync: self.sync + o.sync,
            fixed: self.fixed + o.fixed,
        }
    }
}

/// Is this a relation that `ALTER … SET SCHEMA` (or `LOCK TABLE`) locks?
fn is_relation(m: &Movable) -> bool {
    m.lockable.is_some()
        || matches!(
            m.kind.as_str(),
            "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE" | "SEQUENCE"
        )
}

/// A type or domain (enum, range, standalone composite): `ALTER TYPE … SET
/// SCHEMA` locks neither it nor a composite's relation (`AlterTypeNamespace`
/// takes no object lock, unlike the moves that go through
/// `get_object_address`). Counted, a schema of many types was refused on a
/// small lock table it fitted (h42b: 762 estimated, 488 held).
fn unlocked_type(m: &Movable) -> bool {
    matches!(m.kind.as_str(), "TYPE" | "DOMAIN")
}

/// Distinct relations in: `moved` (qualified names), the sequences owned by
/// them, and what `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` of `locked` locks
/// (the relations, their partitions and inheritance children, and the
/// relations views read, recursively). Names that do not resolve count one
/// each (they fail their statement, but not before it was counted).
async fn relation_count(
    client: &impl GenericClient,
    moved: &[String],
    locked: &[String],
) -> Result<u64> {
    let r = client
        .query_one(
            "WITH RECURSIVE
               moved AS (SELECT pg_catalog.to_regclass(n)::oid AS oid FROM unnest($1::text[]) n),
               locked AS (SELECT pg_catalog.to_regclass(n)::oid AS oid FROM unnest($2::text[]) n),
               edges(parent, child) AS (
                 SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits
                 UNION
                 SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r
                   JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                  WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class),
               lockset(oid) AS (
                 SELECT oid FROM locked WHERE oid IS NOT NULL
                 UNION
                 SELECT e.child FROM edges e JOIN lockset l ON e.parent = l.oid),
               owned AS (
                 SELECT d.objid AS oid FROM pg_catalog.pg_depend d
                   JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
                    AND d.deptype IN ('a', 'i') AND d.refobjid IN (SELECT oid FROM moved))
             SELECT (SELECT count(*) FROM (SELECT oid FROM moved WHERE oid IS NOT NULL
                                           UNION SELECT oid FROM owned UNION SELECT oid FROM lockset) s),
                    (SELECT count(*) FROM moved WHERE oid IS NULL) + (SELECT count(*) FROM locked WHERE oid IS NULL)",
            &[&moved, &locked],
        )
        .await
        .context("counting the relations the swap locks")?;
    Ok((r.get::<_, i64>(0) + r.get::<_, i64>(1)).max(0) as u64)
}

/// Slots taken by moving `objects` with `ALTER … SET SCHEMA`, after locking
/// the lockable ones with `LOCK TABLE` when `lock_first` (as the object-level
/// swap does). `client` must see the objects (the source's catalog works for
/// objects that do not exist on the destination yet).
pub async fn moves(
    client: &impl GenericClient,
    objects: &[Movable],
    lock_first: bool,
) -> Result<Need> {
    let locked: Vec<String> = if lock_first {
        objects.iter().filter_map(|m| m.lockable.clone()).collect()
    } else {
        Vec::new()
    };
    moved_and_locked(client, objects, &locked).await
}

/// Relations and other objects taken by moving `moved` after locking `locked`.
async fn moved_and_locked(
    client: &impl GenericClient,
    moved: &[Movable],
    locked: &[String],
) -> Result<Need> {
    let moved_rel: Vec<String> = moved
        .iter()
        .filter(|m| is_relation(m))
        .map(|m| m.sql_name.clone())
        .collect();
    let relations = if moved_rel.is_empty() && locked.is_empty() {
        0
    } else {
        relation_count(client, &moved_rel, locked).await?
    };
    Ok(Need {
        relations,
        objects: moved
            .iter()
            .filter(|m| !is_relation(m) && !unlocked_type(m))
            .count() as u64,
        ..Need::default()
    })
}

/// Slots taken by `LOCK TABLE <relations> IN ACCESS EXCLUSIVE MODE`
/// (qualified names), partitions, children and view bases included.
pub async fn locks(client: &impl GenericClient, relations: &[String]) -> Result<Need> {
    if relations.is_empty() {
        return Ok(Need::default());
    }
    Ok(Need {
        relations: relation_count(client, &[], relations).await?,
        ..Need::default()
    })
}

/// Slots the final sync of `preserved_tables` and `deferred` statements take.
pub fn preserved(preserved_tables: usize, deferred: usize) -> Need {
    Need {
        sync: preserved_tables as u64 * PER_PRESERVED_TABLE
            + if preserved_tables > 0 {
                PRESERVED_ONCE
            } else {
                0
            }
            + deferred as u64 * PER_DEFERRED_STATEMENT,
        ..Need::default()
    }
}

/// The fixed part of one transaction that exchanges `pairs` schema pairs.
pub fn transaction(pairs: usize) -> Need {
    Need {
        fixed: PER_TRANSACTION + PER_EXTRA_PAIR * pairs.saturating_sub(1) as u64,
        ..Need::default()
    }
}

/// Slots the final replay of preserved tables takes beyond
/// [`PER_PRESERVED_TABLE`]: replaying rows plans statements over the live and
/// the shadow table, which locks every index of both until the end of the
/// transaction, and their TOAST tables with their indexes. `relations`: the
/// OIDs of both sides of every preserved table.
pub async fn replay(client: &impl GenericClient, relations: &[u32]) -> Result<Need> {
    if relations.is_empty() {
        return Ok(Need::default());
    }
    let sync = counted(
        client,
        "SELECT (SELECT count(*) FROM pg_catalog.pg_index WHERE indrelid = ANY($1::pg_catalog.oid[]))
              + 2 * (SELECT count(*) FROM pg_catalog.pg_class
                      WHERE oid = ANY($1::pg_catalog.oid[]) AND reltoastrelid <> 0)",
        &[&relations],
        "counting the preserved tables' indexes",
    )
    .await?;
    Ok(Need {
        sync,
        ..Need::default()
    })
}

/// Today's object-level swap: every object of `out` moves to the backup and
/// every object of `inc` into public, after `LOCK TABLE` of all lockable ones;
/// the preserved tables' final sync and the deferred statements run inside.
/// `out_client` sees `out`'s objects, `inc_client` sees `inc`'s (the same
/// destination session at swap time; the source for a plan before prepare).
pub async fn object_swap(
    out_client: &impl GenericClient,
    out: &[Movable],
    inc_client: &impl GenericClient,
    inc: &[Movable],
    preserved_tables: usize,
    deferred: usize,
    pairs: usize,
) -> Result<Need> {
    Ok(moves(out_client, out, true).await?
        + moves(inc_client, inc, true).await?
        + preserved(preserved_tables, deferred)
        + transaction(pairs))
}

/// One swap-like transaction: it moves `moved` (relations, with their owned
/// sequences, and other objects), locks `locked` first (`LOCK TABLE`,
/// partitions, children and view bases included, though the swap locks
/// `ONLY`: an estimate errs high), moves every member of `extensions`
/// (`ALTER EXTENSION … SET SCHEMA`), and adds `extra` (the preserved tables'
/// final sync) and the fixed part. Names are qualified and resolve on `client`.
pub async fn transaction_need(
    client: &impl GenericClient,
    moved: &[Movable],
    locked: &[String],
    extensions: &[String],
    extra: Need,
    pairs: usize,
) -> Result<Need> {
    let members = if extensions.is_empty() {
        0
    } else {
        counted(
            client,
            "SELECT count(*) FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
              WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                AND e.extname = ANY($1::text[])",
            &[&extensions],
            "counting the members of the extensions the swap moves",
        )
        .await?
    };
    Ok(moved_and_locked(client, moved, locked).await?
        + Need {
            objects: members,
            ..Need::default()
        }
        + extra
        + transaction(pairs))
}

/// Slots taken by dropping the foreign keys that the moves leave crossing
/// between a live schema and a backup (`swap::rollback::fix_crossing_fks`:
/// a kept table's key to or from a table that moves, re-pointed or
/// detached): dropping a key locks its constraint, the clones of its
/// partitions and every trigger that implements them (a plain key: one
/// constraint and four triggers, five slots; measured on a rollback keeping
/// a table that 300 others reference: 1,504 object locks). Re-adding one
/// locks only its two tables, counted with the moves. The keys are those
/// between two tables of `schemas` of which exactly one is in `members`
/// (qualified names: what moves, or in a swap by renaming schemas what
/// stays); an estimate that errs high when both kinds of a pair cross.
pub async fn crossing_keys(
    client: &impl GenericClient,
    members: &[String],
    schemas: &[String],
) -> Result<Need> {
    if members.is_empty() {
        return Ok(Need::default());
    }
    let objects = counted(
        client,
        "WITH RECURSIVE
              m AS (SELECT pg_catalog.to_regclass(x)::pg_catalog.oid AS oid FROM unnest($1::text[]) x),
              s AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY($2)),
              tree AS (SELECT con.oid FROM pg_catalog.pg_constraint con
                         JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
                         JOIN pg_catalog.pg_class f ON f.oid = con.confrelid
                        WHERE con.contype = 'f' AND con.conparentid = 0
                          AND c.relnamespace IN (SELECT oid FROM s) AND f.relnamespace IN (SELECT oid FROM s)
                          AND (con.conrelid IN (SELECT oid FROM m)) <> (con.confrelid IN (SELECT oid FROM m))
                       UNION ALL
                       SELECT con.oid FROM pg_catalog.pg_constraint con JOIN tree ON con.conparentid = tree.oid)
         SELECT (SELECT count(*) FROM tree)
              + (SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgconstraint IN (SELECT oid FROM tree))",
        &[&members, &schemas],
        "counting the foreign keys the swap re-points or detaches",
    )
    .await?;
    Ok(Need {
        objects,
        ..Need::default()
    })
}

/// The one count `sql` returns, never negative; `what` for its error.
async fn counted(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<u64> {
    let n: i64 = client
        .query_one(sql, params)
        .await
        .with_context(|| what.to_string())?
        .get(0);
    Ok(n.max(0) as u64)
}

/// A need against a capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Slots the transaction needs (an estimate that is never below the real count).
    pub needed: u64,
    pub need: Need,
    /// Slots the server's lock table guarantees.
    pub capacity: u64,
    /// Slots other sessions hold now.
    pub in_use: u64,
    /// `needed + in_use <= capacity`.
    pub fits: bool,
    pub max_locks_per_transaction: u64,
    pub server_processes: u64,
    pub max_prepared_transactions: u64,
    /// A `max_locks_per_transaction` with room for the transaction (equal to
    /// the current value when it fits).
    pub setting_that_fits: u64,
    /// The swap mode this budget is for (`rename` or `object`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_mode: Option<String>,
}

impl Budget {
    pub fn new(need: Need, cap: &Capacity) -> Budget {
        let needed = need.total();
        let fits = needed + cap.in_use <= cap.slots;
        Budget {
            needed,
            need,
            capacity: cap.slots,
            in_use: cap.in_use,
            fits,
            max_locks_per_transaction: cap.max_locks_per_transaction,
            server_processes: cap.server_processes,
            max_prepared_transactions: cap.max_prepared_transactions,
            setting_that_fits: if fits {
                cap.max_locks_per_transaction
            } else {
                cap.setting_for(needed)
                    .max(cap.max_locks_per_transaction + 64)
            },
            swap_mode: None,
        }
    }

    /// Read the capacity and weigh `need` against it.
    pub async fn evaluate(client: &impl GenericClient, need: Need) -> Result<Budget> {
        Ok(Budget::new(need, &Capacity::read(client).await?))
    }

    /// `64 × (122 + 0) = 7808`.
    fn capacity_formula(&self) -> String {
        format!(
            "max_locks_per_transaction {} × ({} server processes + {} prepared transactions)",
            self.max_locks_per_transaction, self.server_processes, self.max_prepared_transactions
        )
    }

    /// One line refusing `what` (e.g. "the swap"), or None when it fits:
    /// names the setting, the value that fits and the restart.
    pub fn refusal(&self, what: &str) -> Option<String> {
        (!self.fits).then(|| {
            format!(
                "{what} needs about {} lock-table slots in one transaction, but the destination's lock table holds {} ({}) and {} are in use; set max_locks_per_transaction = {} on the destination (changing it needs a server restart) and try again",
                self.needed,
                self.capacity,
                self.capacity_formula(),
                self.in_use,
                self.setting_that_fits
            )
        })
    }

    /// A warning for prepare's plan, whose budget is an object-level swap's
    /// (the upper bound: the mode is chosen at swap time), when that does not
    /// fit, or None.
    pub fn plan_warning(&self) -> Option<String> {
        (!self.fits).then(|| {
            format!(
                "an object-level swap would need about {} lock-table slots in one transaction, but the destination's lock table holds {} ({}) and {} are in use: it would be refused; a swap by renaming schemas needs far fewer (after prepare, `status` and `swap --dry-run` give the budget of the mode the swap will use); for an object-level swap set max_locks_per_transaction = {} on the destination before swapping (changing it needs a server restart)",
                self.needed,
                self.capacity,
                self.capacity_formula(),
                self.in_use,
                self.setting_that_fits
            )
        })
    }

    /// A warning for a prepare whose swap would be refused, or None.
    pub fn warning(&self) -> Option<String> {
        (!self.fits).then(|| {
            format!(
                "the swap{} will need about {} lock-table slots in one transaction, but the destination's lock table holds {} ({}) and {} are in use: the swap would be refused; set max_locks_per_transaction = {} on the destination before swapping (changing it needs a server restart)",
                match self.swap_mode.as_deref() {
                    Some("object") => " (object-level)",
                    Some("rename") => " (by renaming schemas)",
                    _ => "",
                },
                self.needed,
                self.capacity,
                self.capacity_formula(),
                self.in_use,
                self.setting_that_fits
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(mlpt: u64, processes: u64, in_use: u64) -> Capacity {
        Capacity {
            max_locks_per_transaction: mlpt,
            server_processes: processes,
            max_prepared_transactions: 0,
            slots: mlpt * processes,
            in_use,
        }
    }

    #[test]
    fn max_backends_by_version() {
        // Defaults: 100 + 3 + 1 + 8 + 10 (15), 100 + 16 + 8 + 10 + 2 (18).
        assert_eq!(server_processes(150_000, 100, 3, 8, 10), 122);
        assert_eq!(server_processes(180_000, 100, 16, 8, 10), 136);
        // The harness's small-lock cluster.
        assert_eq!(64 * server_processes(150_000, 20, 3, 8, 10), 2688);
    }

    #[test]
    fn fits_refuses_and_names_the_setting() {
        let c = cap(64, 122, 100);
        let b = Budget::new(
            Need {
                relations: 7000,
                ..Need::default()
            },
            &c,
        );
        assert!(b.fits);
        assert_eq!(b.refusal("the swap"), None);
        assert_eq!(b.setting_that_fits, 64);
        let b = Budget::new(
            Need {
                relations: 9000,
                fixed: 32,
                ..Need::default()
            },
            &c,
        );
        assert!(!b.fits);
        // (9032 + 100) × 1.25 / 122 = 94 → 128.
        assert_eq!(b.setting_that_fits, 128);
        let line = b.refusal("the swap").unwrap();
        assert!(line.contains("max_locks_per_transaction = 128"), "{line}");
        assert!(line.contains("restart"), "{line}");
        assert!(line.contains("7808"), "{line}");
        assert!(!line.contains('\n'));
        assert!(b.warning().unwrap().contains("= 128"));
        assert!(b.plan_warning().unwrap().contains("= 128"));
    }

    #[test]
    fn per_transaction_share() {
        assert_eq!(cap(64, 42, 8).per_transaction(), (2688 - 8) / 4);
        // Nearly full: still the per-transaction share the server promises.
        assert_eq!(cap(64, 42, 2600).per_transaction(), 64);
    }
}
