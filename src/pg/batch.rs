//! Lock-bounded batches: DDL over thousands of objects without ever needing
//! more of the server's lock table than one transaction may take.
//!
//! Every lock a transaction takes stays in the server's shared lock table until
//! it ends (weak locks on a few relations excepted: the per-backend fast path),
//! and that table is sized for `max_locks_per_transaction` per process (see
//! [`crate::pg::locks_budget`]). Restoring a 4,000-table schema in one
//! transaction needs ~16,000 slots and fails with "out of shared memory" on a
//! default server, where `pg_restore` (one transaction per TOC entry) succeeds.
//! So every phase whose work grows with the number of objects runs it here:
//!
//! * [`run`]: statements in order, packed into transactions whose estimated
//!   lock count stays under a per-transaction limit ([`Capacity::per_transaction`]:
//!   a quarter of the free lock table, at least `max_locks_per_transaction`).
//!   Several hundred statements per transaction at default settings: the
//!   schema phase runs a few dozen transactions where pg_restore runs one per
//!   entry. A statement whose estimate alone exceeds the limit runs alone —
//!   it is atomic, and pg_restore would need as much for it. Each
//!   transaction commits with `synchronous_commit = off` (the run's final
//!   record is committed durably later, which flushes these too).
//! * [`estimate`]: an upper bound of the locks one statement takes. A
//!   statement locks the relations it names: one for a relation, plus its
//!   indexes, TOAST table and index and owned sequences, plus (without `ONLY`)
//!   its partitions and children — the [`Footprints`] of the migrated schema,
//!   read from the catalog that holds the objects (the source's, while the
//!   shadow is being created). Plus one per statement for the object it is
//!   about (a sequence in `setval`, a function, a role). Checked against
//!   `pg_locks` by the tests (`PGSHIFT_CHECK_LOCKS`).
//! * [`drop_locks`] / [`shrink_objects`]: what dropping a schema takes, and
//!   drop a schema's contents in lock-bounded transactions until what is left
//!   fits (its share of) one transaction, which
//!   the caller then drops as before (`DROP SCHEMA … CASCADE` plus its own
//!   bookkeeping, all or nothing). `DROP … CASCADE` takes a lock on every object
//!   it removes (the table, its row types, indexes, TOAST, constraints,
//!   triggers, defaults, sequences) and on every table whose constraint or
//!   trigger goes with it (a foreign key referencing a dropped table), so each
//!   top-level object's cost is the closure of what depends on it in
//!   `pg_depend`. Objects are dropped cheapest first; one whose closure is too
//!   big (a table referenced by 4,000 foreign keys) waits for a later round,
//!   after its dependents are gone. Idempotent (`IF EXISTS`, re-planned from
//!   the catalog every round), so a cleanup that stopped half-way is finished
//!   by the next.
//! * [`released`]: source-side reads in a long snapshot transaction, in a
//!   subtransaction rolled back afterwards, which releases the locks they took
//!   (the transaction and its snapshot stay).
//!
//! `PGSHIFT_FAILPOINT=<label>-batch` fails a batched run after its first
//! committed transaction (when more remain), for tests of half-done phases.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use crate::pg::conn::connect::describe_pg_error;
use crate::pg::locks_budget::Capacity;

/// Locks a transaction takes besides its statements' (the transaction id,
/// schemas, catalogs and catalog indexes past the fast path).
pub const PER_TRANSACTION: u64 = 32;

/// What a statement costs in lock-table slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    pub sql: String,
    pub locks: u64,
}

/// Lock footprints of a schema's relations, by name.
#[derive(Debug, Clone, Default)]
pub struct Footprints {
    /// name -> (the relation alone, with its descendants)
    map: HashMap<String, (u64, u64)>,
}

impl Footprints {
    /// Add another schema's footprints (a name in both keeps the larger).
    pub fn extend(&mut self, other: Footprints) {
        for (name, (own, tree)) in other.map {
            let e = self.map.entry(name).or_insert((0, 0));
            e.0 = e.0.max(own);
            e.1 = e.1.max(tree);
        }
    }

    /// Read the footprints of `schema`'s relations: each relation with its
    /// indexes, TOAST table and index, and owned sequences; and the same
    /// summed over its partitions / inheritance children, recursively.
    /// Catalog reads only: no relation is locked.
    pub async fn load(client: &impl GenericClient, schema: &str) -> Result<Footprints> {
        let rows = client
            .query(
                "SELECT c.oid, c.relname::text,
                        1 + (SELECT count(*) FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid)
                          + CASE WHEN c.reltoastrelid <> 0 THEN 2 ELSE 0 END
                          + (SELECT count(*) FROM pg_catalog.pg_depend d
                               JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = c.oid
                                AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')),
                        COALESCE((SELECT array_agg(i.inhparent) FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid), '{}')
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')",
                &[&schema],
            )
            .await
            .context("reading the relations' lock footprints")?;
        let mut own: HashMap<u32, (String, u64)> = HashMap::new();
        let mut parents: Vec<(u32, u32)> = Vec::new();
        for r in &rows {
            let oid: u32 = r.get(0);
            own.insert(oid, (r.get(1), r.get::<_, i64>(2).max(1) as u64));
            for p in r.get::<_, Vec<u32>>(3) {
                parents.push((oid, p));
            }
        }
        // Descendant sums, bottom-up: repeat until stable (depth is small).
        let mut tree: HashMap<u32, u64> = own.iter().map(|(o, (_, f))| (*o, *f)).collect();
        for _ in 0..32 {
            let mut next: HashMap<u32, u64> = own.iter().map(|(o, (_, f))| (*o, *f)).collect();
            for (child, parent) in &parents {
                if let (Some(c), Some(p)) = (tree.get(child).copied(), next.get_mut(parent)) {
                    *p += c;
                }
            }
            let done = next == tree;
            tree = next;
            if done {
                break;
            }
        }
        Ok(Footprints {
            map: own
                .into_iter()
                .map(|(oid, (name, f))| (name, (f, tree.get(&oid).copied().unwrap_or(f))))
                .collect(),
        })
    }
}

/// An upper bound of the lock-table slots `sql` takes (see the module
/// documentation): one per statement, plus the footprint of every relation of
/// the schema it names (the relation alone after `ONLY`, with its partitions
/// and children otherwise). Names are read with a small lexer (comments,
/// string constants and dollar-quoted bodies skipped: creating a function does
/// not lock what its body names); a name that is also a column's counts too,
/// which only over-estimates. A few microseconds per statement, where a parse
/// tree walk took ~200: the schema phase estimates every pre-data entry.
pub fn estimate(sql: &str, fp: &Footprints) -> u64 {
    let mut statements = 1u64;
    let mut relations = 0u64;
    let mut only = false;
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' => {
                // 'it''s', E'\'' : skip to the closing quote.
                let escapes = i > 0 && matches!(b[i - 1], b'E' | b'e');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => {
                // $tag$ … $tag$ (a lone $1 parameter has no closing $).
                let end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80))
                    .map(|p| i + 1 + p);
                if let Some(e) = end.filter(|&e| b[e] == b'$') {
                    let tag = &sql[i..=e];
                    match sql[e + 1..].find(tag) {
                        Some(p) => i = e + 1 + p + tag.len(),
                        None => i = b.len(),
                    }
                    continue;
                }
            }
            b';' => {
                if sql[i + 1..]
                    .trim_start()
                    .chars()
                    .next()
                    .is_some_and(|c| c != '-')
                {
                    statements += 1;
                }
                only = false;
            }
            b'"' => {
                let mut name = String::new();
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            name.push('"');
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    let ch = sql[i..].chars().next().unwrap_or(' ');
                    name.push(ch);
                    i += ch.len_utf8();
                }
                relations += name_weight(fp, &name, &mut only, sql, i + 1);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                let word = sql[start..i].to_lowercase();
                if word == "only" {
                    only = true;
                } else {
                    relations += name_weight(fp, &word, &mut only, sql, i);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    statements + relations
}

/// The weight of a name ending at `after` (0 unless it is one of the schema's
/// relations). A name followed by `.` is a qualifier (`shadow.t`, `t.col`):
/// counted with its descendants when it is a relation, and `ONLY` carries over
/// past it to the name it qualifies.
fn name_weight(fp: &Footprints, name: &str, only: &mut bool, sql: &str, after: usize) -> u64 {
    let found = fp.map.get(name);
    if sql
        .get(after..)
        .is_some_and(|rest| rest.trim_start().starts_with('.'))
    {
        return found.map_or(0, |(_, tree)| *tree);
    }
    let w = found.map_or(0, |(o, tree)| if *only { *o } else { *tree });
    *only = false;
    w
}

/// Statements with their estimates.
pub fn estimated(sqls: impl IntoIterator<Item = String>, fp: &Footprints) -> Vec<Stmt> {
    sqls.into_iter()
        .map(|sql| {
            let locks = estimate(&sql, fp);
            Stmt { sql, locks }
        })
        .collect()
}

/// How a batched run behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Failpoint prefix and log label (`schema`, `privileges`, `cleanup`, …).
    pub label: String,
    /// Lock-table slots one transaction may use ([`Capacity::per_transaction`]).
    pub limit: u64,
    /// `SET LOCAL lock_timeout` in each transaction; a timeout (or deadlock)
    /// rolls back and retries that transaction up to `retries` times.
    pub lock_timeout: Option<Duration>,
    pub retries: u32,
}

impl Options {
    /// Options for `label` with the server's per-transaction limit.
    pub async fn for_server(client: &impl GenericClient, label: &str) -> Result<Options> {
        let cap = Capacity::read(client).await?;
        Ok(Options {
            label: label.to_string(),
            limit: cap.per_transaction(),
            lock_timeout: None,
            retries: 0,
        })
    }

    pub fn with_lock_timeout(mut self, lock_timeout: Duration, retries: u32) -> Options {
        self.lock_timeout = Some(lock_timeout);
        self.retries = retries;
        self
    }

    /// Slots for statements in one transaction.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(PER_TRANSACTION).max(1)
    }
}

/// Pack statements, in order, into groups whose locks fit `room`.
pub fn pack(stmts: &[Stmt], room: u64) -> Vec<&[Stmt]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0u64;
    for (i, s) in stmts.iter().enumerate() {
        if i > start && used + s.locks > room {
            out.push(&stmts[start..i]);
            start = i;
            used = 0;
        }
        used += s.locks;
    }
    if start < stmts.len() {
        out.push(&stmts[start..]);
    }
    out
}

fn transaction_sql(group: &[Stmt], opts: &Options) -> String {
    let mut sql = String::with_capacity(group.iter().map(|s| s.sql.len() + 2).sum::<usize>() + 128);
    sql.push_str("BEGIN;\nSET LOCAL synchronous_commit = off;\n");
    if let Some(t) = opts.lock_timeout {
        sql.push_str(&format!(
            "SET LOCAL lock_timeout = '{}ms';\n",
            t.as_millis().max(1)
        ));
    }
    for s in group {
        sql.push_str(&s.sql);
        sql.push('\n');
        if !s.sql.trim_end().ends_with(';') {
            sql.push_str(";\n");
        }
    }
    if let Some(check) = lock_check(group.iter().map(|s| s.locks).sum::<u64>() + PER_TRANSACTION) {
        sql.push_str(&check);
    }
    sql.push_str("COMMIT;");
    sql
}

/// Test hook ([`check_locks`]): the statement that fails the transaction it
/// runs in when that holds more than `estimate` lock-table slots; None
/// unless `PGSHIFT_CHECK_LOCKS=1`. Batches run it before their COMMIT, and
/// so does cleanup's last transaction, whose share is [`Options::limit`].
pub fn lock_check(estimate: u64) -> Option<String> {
    check_locks().then(|| {
        format!(
            "DO $pgshift_check$ DECLARE held bigint; BEGIN
               SELECT count(*) INTO held FROM (SELECT DISTINCT locktype, database, relation, page, tuple, virtualxid,
                      transactionid::text, classid, objid, objsubid FROM pg_catalog.pg_locks
                WHERE pid = pg_catalog.pg_backend_pid() AND NOT fastpath AND mode <> 'SIReadLock') l;
               IF held > {estimate} THEN
                 RAISE EXCEPTION 'pgshift lock check: this transaction holds % lock-table slots, % were estimated', held, {estimate};
               END IF;
             END $pgshift_check$;\n"
        )
    })
}

/// The first line of the statement of `group` that an error's position (a
/// character offset into `sql`, the transaction's text) falls in.
fn failed_statement(sql: &str, group: &[Stmt], e: &tokio_postgres::Error) -> Option<String> {
    let db = e.as_db_error()?;
    if *db.code() == SqlState::UNTRANSLATABLE_CHARACTER {
        return untranslatable_statement(group, db.message());
    }
    let pos = match db.position()? {
        tokio_postgres::error::ErrorPosition::Original(p) => *p as usize,
        tokio_postgres::error::ErrorPosition::Internal { .. } => return None,
    };
    let byte = sql.char_indices().nth(pos.checked_sub(1)?)?.0;
    // Each statement's text stands in `sql` in order, once.
    let mut from = 0;
    let mut found = None;
    for s in group {
        let start = from + sql[from..].find(s.sql.as_str())?;
        if start > byte {
            break;
        }
        found = Some(s);
        from = start + s.sql.len();
    }
    found.map(|s| crate::dump::sql::first_line(&s.sql))
}

/// The statement holding the character the destination's encoding lacks: the
/// server converts the whole text before it parses any of it, so its error
/// has no position, only the character's bytes (`character with byte sequence
/// 0xce 0xa9 in encoding "UTF8" has no equivalent in encoding "WIN1252"`).
fn untranslatable_statement(group: &[Stmt], message: &str) -> Option<String> {
    let bytes: Vec<u8> = message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| w.strip_prefix("0x"))
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if bytes.is_empty() {
        return None;
    }
    group
        .iter()
        .find(|s| s.sql.as_bytes().windows(bytes.len()).any(|w| w == bytes))
        .map(|s| crate::dump::sql::first_line(&s.sql))
}

/// Test hook: with `PGSHIFT_CHECK_LOCKS=1`, every batch transaction counts the
/// lock-table slots it holds before COMMIT and fails if they exceed its
/// estimate (the tests run prepare and cleanup this way).
fn check_locks() -> bool {
    std::env::var("PGSHIFT_CHECK_LOCKS").is_ok_and(|v| v == "1")
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Run one transaction, retrying it on lock timeouts and deadlocks.
async fn run_transaction(
    client: &Client,
    sql: &str,
    opts: &Options,
) -> Result<(), tokio_postgres::Error> {
    let mut attempt = 0;
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if retryable(&e) && attempt < opts.retries {
                    attempt += 1;
                    let wait = crate::pg::exec::backoff(attempt);
                    tracing::warn!(
                        "{}: an object is busy ({}); retrying in {} ms",
                        opts.label,
                        describe_pg_error(&e),
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// A failed batch transaction (rolled back), with the SQLSTATE.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    pub message: String,
    pub code: Option<SqlState>,
}

/// Did `e` fail on a lock timeout (a busy object)?
pub fn is_lock_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Failed>()
            .and_then(|f| f.code.as_ref())
            .or_else(|| {
                c.downcast_ref::<tokio_postgres::Error>()
                    .and_then(|pe| pe.code())
            })
            .is_some_and(|code| *code == SqlState::LOCK_NOT_AVAILABLE)
    })
}

/// What a batched run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ran {
    pub transactions: usize,
    pub statements: usize,
}

/// Run `stmts` in order in lock-bounded transactions (see the module
/// documentation). On an error the failing transaction is rolled back; the
/// earlier ones stay committed (the caller's cleanup removes them).
pub async fn run(client: &Client, stmts: &[Stmt], opts: &Options) -> Result<Ran> {
    let groups = pack(stmts, opts.room());
    let n = groups.len();
    for (i, group) in groups.iter().enumerate() {
        let sql = transaction_sql(group, opts);
        run_transaction(client, &sql, opts).await.map_err(|e| {
            // The statement the server points at, when it does (a syntax
            // error the destination's version does not know, say).
            let at = failed_statement(&sql, group, &e)
                .map(|s| format!(", in: {s}"))
                .unwrap_or_default();
            anyhow::Error::new(Failed {
                message: format!(
                    "{}{at} (transaction {} of {n}, {} statements)",
                    describe_pg_error(&e),
                    i + 1,
                    group.len()
                ),
                code: e.code().cloned(),
            })
        })?;
        tracing::debug!(
            label = %opts.label,
            transaction = i + 1,
            of = n,
            statements = group.len(),
            locks = group.iter().map(|s| s.locks).sum::<u64>(),
            "batch committed"
        );
        if i + 1 < n {
            crate::migration::session::failpoint(&format!("{}-batch", opts.label)).await?;
        }
    }
    Ok(Ran {
        transactions: n,
        statements: stmts.len(),
    })
}

// ---------------------------------------------------------------------------------------
// Dropping a schema's contents
// ---------------------------------------------------------------------------------------

/// The top-level objects of `$1` (not carried by another object: relations
/// other than indexes, TOAST tables and owned sequences; functions; types other
/// than row, array and multirange types), except relations named in `$2`,
/// each with the `DROP … IF EXISTS … CASCADE` that removes it and the number of
/// locks that takes: every object in its dependency closure (what depends on
/// it, transitively, and what those are internal parts of) plus every table
/// that holds a constraint, trigger, rule, default or policy of the closure,
/// or is the parent of a partition in it. The last row is (NULL, cost of the
/// objects of other kinds: operators, collations, …, `{other_kinds}`).
/// `{proc_args}` stands for
/// [`signature_args_sql`](crate::pg::objects::signature_args_sql).
const DROP_PLAN: &str = "
WITH RECURSIVE
  ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1),
  ext AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e'),
  roots(classid, objid, sql) AS (
    SELECT 'pg_catalog.pg_class'::regclass::oid, c.oid,
           format('DROP %s IF EXISTS %I.%I CASCADE',
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                 WHEN 'S' THEN 'SEQUENCE' WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END, $1::text, c.relname)
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace IN (SELECT oid FROM ns) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
       AND NOT (c.relname = ANY ($2::text[]))
       AND ('pg_catalog.pg_class'::regclass, c.oid) NOT IN (SELECT classid, objid FROM ext)
       AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT 'pg_catalog.pg_proc'::regclass::oid, p.oid,
           format('DROP %s IF EXISTS %I.%I(%s) CASCADE',
                  CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
                  $1::text, p.proname, {proc_args})
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace IN (SELECT oid FROM ns)
       AND ('pg_catalog.pg_proc'::regclass, p.oid) NOT IN (SELECT classid, objid FROM ext)
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                        AND d.objid = p.oid AND d.deptype = 'i')
    UNION ALL
    SELECT 'pg_catalog.pg_type'::regclass::oid, t.oid,
           format('DROP %s IF EXISTS %I.%I CASCADE', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, $1::text, t.typname)
      FROM pg_catalog.pg_type t
     WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typtype IN ('b', 'd', 'e', 'r') AND t.typrelid = 0
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
       AND ('pg_catalog.pg_type'::regclass, t.oid) NOT IN (SELECT classid, objid FROM ext)
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::regclass
                        AND d.objid = t.oid AND d.deptype = 'i')),
  edges(fc, fo, tc, tobj) AS (
    SELECT refclassid, refobjid, classid, objid FROM pg_catalog.pg_depend WHERE deptype IN ('n', 'a', 'i')
    UNION ALL
    SELECT classid, objid, refclassid, refobjid FROM pg_catalog.pg_depend WHERE deptype = 'i'),
  reach(rc, ro, classid, objid) AS (
    SELECT classid, objid, classid, objid FROM roots
    UNION
    SELECT r.rc, r.ro, e.tc, e.tobj FROM reach r JOIN edges e ON e.fc = r.classid AND e.fo = r.objid),
  holders(rc, ro, rel) AS (
    SELECT r.rc, r.ro, CASE r.classid
             WHEN 'pg_catalog.pg_constraint'::regclass THEN (SELECT x.conrelid FROM pg_catalog.pg_constraint x WHERE x.oid = r.objid)
             WHEN 'pg_catalog.pg_trigger'::regclass THEN (SELECT x.tgrelid FROM pg_catalog.pg_trigger x WHERE x.oid = r.objid)
             WHEN 'pg_catalog.pg_rewrite'::regclass THEN (SELECT x.ev_class FROM pg_catalog.pg_rewrite x WHERE x.oid = r.objid)
             WHEN 'pg_catalog.pg_attrdef'::regclass THEN (SELECT x.adrelid FROM pg_catalog.pg_attrdef x WHERE x.oid = r.objid)
             WHEN 'pg_catalog.pg_policy'::regclass THEN (SELECT x.polrelid FROM pg_catalog.pg_policy x WHERE x.oid = r.objid)
           END
      FROM reach r
    UNION
    SELECT r.rc, r.ro, i.inhparent FROM reach r JOIN pg_catalog.pg_inherits i ON i.inhrelid = r.objid
     WHERE r.classid = 'pg_catalog.pg_class'::regclass),
  reached AS (SELECT rc, ro, count(*) AS n FROM reach GROUP BY rc, ro),
  held AS (SELECT rc, ro, count(DISTINCT rel) AS n FROM holders WHERE rel IS NOT NULL GROUP BY rc, ro)
SELECT ro.sql, COALESCE(a.n, 0) + COALESCE(h.n, 0)
  FROM roots ro
  LEFT JOIN reached a ON a.rc = ro.classid AND a.ro = ro.objid
  LEFT JOIN held h ON h.rc = ro.classid AND h.ro = ro.objid
UNION ALL
SELECT NULL, {other_kinds}";

/// The drops planned for one round, and what the rest costs.
struct DropPlan {
    /// (DROP statement, locks), cheapest first.
    drops: Vec<Stmt>,
    /// Locks of everything in the schema together (an upper bound).
    total: u64,
}

async fn plan_drops(client: &Client, schema: &str, except: &[&str]) -> Result<DropPlan> {
    let except: Vec<String> = except.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(
            DROP_PLAN
                .replace("{proc_args}", &crate::pg::objects::signature_args_sql("p"))
                .replace(
                    "{other_kinds}",
                    &crate::pg::catalog::per_schema_kind(
                        &["pg_class", "pg_type", "pg_proc"],
                        "\n     + ",
                        crate::pg::catalog::count_of_kind,
                    ),
                )
                .as_str(),
            &[&schema, &except],
        )
        .await
        .map_err(|e| {
            anyhow!(
                "planning the removal of {schema}'s objects: {}",
                describe_pg_error(&e)
            )
        })?;
    let mut drops = Vec::new();
    let mut total = 0u64;
    for r in rows {
        let locks = r.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64;
        total += locks;
        if let Some(sql) = r.get::<_, Option<String>>(0) {
            drops.push(Stmt { sql, locks });
        }
    }
    drops.sort_by(|a, b| a.locks.cmp(&b.locks).then_with(|| a.sql.cmp(&b.sql)));
    Ok(DropPlan { drops, total })
}

/// Drop top-level objects of `schema` (except relations named in `except`) in
/// lock-bounded transactions until what is left needs at most `keep` locks
/// (so the caller can drop the rest, or the schema, in one transaction).
/// Returns the number of transactions run (0 when everything already fits).
pub async fn shrink_objects(
    client: &Client,
    schema: &str,
    except: &[&str],
    keep: u64,
    opts: &Options,
) -> Result<usize> {
    let room = opts.room();
    let mut transactions = 0;
    loop {
        let plan = plan_drops(client, schema, except).await?;
        if plan.total <= keep || plan.drops.is_empty() {
            return Ok(transactions);
        }
        // This round: every object whose closure fits a batch, cheapest first
        // (the others wait: their closures shrink as their dependents go). If
        // none fits, each is atomic and bigger than a batch should be: one
        // transaction each, cheapest first (`pack` puts each alone).
        let mut take: Vec<Stmt> = plan
            .drops
            .iter()
            .filter(|d| d.locks <= room)
            .cloned()
            .collect();
        if take.is_empty() {
            tracing::warn!(
                schema,
                objects = plan.drops.len(),
                most = plan.drops.last().map_or(0, |d| d.locks),
                limit = opts.limit,
                "dropping objects whose dependents need more locks than one batch should take, one per transaction"
            );
            take = plan.drops.clone();
        }
        // Stop at the point where the rest fits one transaction.
        let mut left = plan.total;
        let mut upto = take.len();
        for (i, d) in take.iter().enumerate() {
            if left <= keep {
                upto = i;
                break;
            }
            left = left.saturating_sub(d.locks);
        }
        take.truncate(upto.max(1));
        let ran = run(client, &take, opts)
            .await
            .with_context(|| format!("dropping the objects of {schema}"))?;
        transactions += ran.transactions;
    }
}

/// The lock-table slots dropping `schema` in one transaction takes (0 for
/// an empty one): cleanup sums them over the schemas it drops together.
pub async fn drop_locks(client: &Client, schema: &str) -> Result<u64> {
    let plan = plan_drops(client, schema, &[]).await?;
    Ok(if plan.drops.is_empty() { 0 } else { plan.total })
}

/// Run `f` (reads on `client`, inside an open transaction) in a
/// subtransaction that is rolled back afterwards: the locks the reads took are
/// released, the transaction and its snapshot stay.
pub async fn released<T>(
    client: &Client,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    client
        .batch_execute("SAVEPOINT pgshift_read")
        .await
        .context("starting a subtransaction")?;
    let out = f.await;
    client
        .batch_execute("ROLLBACK TO SAVEPOINT pgshift_read; RELEASE SAVEPOINT pgshift_read")
        .await
        .context("releasing the locks of a read")?;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Footprints {
        let mut map = HashMap::new();
        map.insert("events".to_string(), (3, 603));
        map.insert("t".to_string(), (6, 6));
        Footprints { map }
    }

    #[test]
    fn an_untranslatable_character_names_its_statement() {
        let group: Vec<Stmt> = [
            "CREATE TABLE shadow.plain (id int);",
            "--\n-- Name: Ωmega\nCREATE TABLE shadow.\"Ωmega\" (\n    id integer\n);",
        ]
        .iter()
        .map(|s| Stmt {
            sql: s.to_string(),
            locks: 1,
        })
        .collect();
        let said = "character with byte sequence 0xce 0xa9 in encoding \"UTF8\" has no equivalent in encoding \"WIN1252\"";
        assert_eq!(
            untranslatable_statement(&group, said).as_deref(),
            Some("CREATE TABLE shadow.\"Ωmega\" (")
        );
        assert_eq!(untranslatable_statement(&group, "no bytes named"), None);
        assert_eq!(untranslatable_statement(&group, "byte 0xff"), None);
    }

    #[test]
    fn estimates_from_the_names() {
        let f = fp();
        // A table being created: its footprint (read from the source).
        assert_eq!(
            estimate("CREATE TABLE shadow.t (a int, b text);", &f),
            1 + 6
        );
        // ONLY the parent, the whole partition; quoted names too.
        assert_eq!(
            estimate(
                "ALTER TABLE ONLY shadow.events ATTACH PARTITION shadow.\"t\" FOR VALUES FROM (1) TO (2);",
                &f
            ),
            1 + 3 + 6
        );
        // Without ONLY: the whole tree.
        assert_eq!(estimate("ALTER TABLE shadow.events OWNER TO x;", &f), 604);
        assert_eq!(
            estimate("ALTER TABLE \"shadow\".\"events\" OWNER TO x", &f),
            604
        );
        // Names outside the schema, in comments, strings and bodies do not count.
        assert_eq!(
            estimate(
                "--\n-- Name: t; Type: VIEW\n--\nCREATE VIEW shadow.v AS SELECT * FROM shadow.t JOIN public.other USING (id) /* events */;",
                &f
            ),
            1 + 6
        );
        assert_eq!(
            estimate("SELECT pg_catalog.setval('shadow.t', 5, true);", &f),
            1
        );
        assert_eq!(
            estimate(
                "CREATE FUNCTION shadow.f() RETURNS int LANGUAGE sql AS $_$SELECT count(*) FROM t$_$;",
                &f
            ),
            1
        );
        assert_eq!(
            estimate("COMMENT ON TABLE shadow.t IS E'it\\'s events';", &f),
            1 + 6
        );
        // Two statements in one entry; a trailing comment is not one.
        assert_eq!(
            estimate(
                "CREATE SEQUENCE shadow.s; ALTER SEQUENCE shadow.s OWNED BY shadow.t.id;\n\n--\n",
                &f
            ),
            2 + 6
        );
        // SQL-standard bodies are parsed when created: they count.
        assert_eq!(
            estimate(
                "CREATE FUNCTION shadow.g() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM shadow.t; END;",
                &f
            ),
            2 + 6
        );
    }

    #[test]
    fn packing_keeps_order_and_bounds() {
        let s = |l| Stmt {
            sql: String::new(),
            locks: l,
        };
        let stmts = vec![s(3), s(3), s(3), s(10), s(1), s(1)];
        let groups = pack(&stmts, 6);
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        // The 10 exceeds the room: alone.
        assert_eq!(sizes, vec![2, 1, 1, 2]);
        assert!(pack(&[], 6).is_empty());
    }

    #[test]
    fn transactions_end_statements() {
        let opts = Options {
            label: "t".into(),
            limit: 100,
            lock_timeout: Some(Duration::from_millis(250)),
            retries: 0,
        };
        let sql = transaction_sql(
            &[
                Stmt {
                    sql: "DROP TABLE a".into(),
                    locks: 1,
                },
                Stmt {
                    sql: "-- c\nCREATE TABLE b (x int);\n\n".into(),
                    locks: 1,
                },
            ],
            &opts,
        );
        assert_eq!(
            sql,
            "BEGIN;\nSET LOCAL synchronous_commit = off;\nSET LOCAL lock_timeout = '250ms';\nDROP TABLE a\n;\n-- c\nCREATE TABLE b (x int);\n\n\nCOMMIT;"
        );
        pg_query::split_with_parser(&sql).unwrap();
    }
}
