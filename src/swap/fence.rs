//! Fencing the destination's sequences that a swap carries over.
//!
//! With preserved tables, the swap continues some of the incoming schema's
//! sequences after the destination's (a preserved table's column sequences,
//! and the sequences no column uses that both sides have: `prepare::sync`'s
//! `final_sync` and `carry_standalone_sequences`). It reads the destination's
//! value inside the swap transaction and sets the incoming sequence after it.
//! A statement that resolved the destination's sequence before the swap
//! (`nextval('users_id_seq')` waiting for the swap's locks, or already
//! parsed) still draws from it after the COMMIT, when it is in the backup:
//! the value it gets is one the new sequence hands out too. So, in the swap
//! transaction, each such sequence is **fenced**:
//!
//! 1. locked: `ALTER SEQUENCE s [NO] CYCLE` as it is (SHARE ROW EXCLUSIVE,
//!    which `nextval` waits for; the definition does not change);
//! 2. read: its definition and state, which the carry then uses;
//! 3. fenced: `setval(s, last_value, true)` when the value read was not
//!    handed out yet, then `ALTER SEQUENCE s NO CYCLE` with `MAXVALUE` (an
//!    ascending sequence; `MINVALUE` a descending one) at that value, the
//!    other bound and `START` moved only as far as PostgreSQL requires.
//!
//! A late `nextval` then fails (`reached maximum value of sequence`) instead
//! of handing out a value twice; one in the same session's cache was drawn
//! before the fence and is not handed out by the new sequence. Everything is
//! transactional: the `ALTER` gives the sequence a new relfilenode, so a
//! swap attempt that rolls back leaves it as it was.
//!
//! The original definition and state go into the backup's manifest
//! (`fenced_sequences`); a rollback to that backup gives them back in its own
//! transaction, before anything moves ([`restore`]), so the restored
//! sequences continue exactly where they stopped. A rollback that keeps
//! tables carries the sequences no column uses the same way, from the
//! current public to the restored one, and fences the current ones
//! (`swap::rollback`).
//!
//! The fence locks a sequence after the swap's tables. A transaction that
//! takes `nextval()` before its INSERT holds the sequence while it waits for
//! the table: the attempt times out, and the engine's next attempt takes the
//! sequence first (`swap::engine::lock_statements`). An application that
//! also inserts through the column's default (table, then sequence) on the
//! same sequence can hold up either order; the swap then fails after its
//! retries, nothing changed (README, Limitations).
//!
//! Only a sequence whose every user leaves with the backup is fenced: one
//! that a table or view staying live uses (a kept table, another schema,
//! an extension's table, a function's SQL body) keeps serving them, and this
//! role must own it (only an owner may `ALTER` it).

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::Result;
use itertools::Itertools;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::backups::manifest::SchemaMap;
use crate::pg::exec::{exec_as, pg_error_as};
use crate::pg::ident::{display_ident, qualified};
use crate::pg::meta::{OWN_STATEMENT, is_public_str, public_string};

/// A sequence fenced by the swap that made a backup: its definition and
/// state before the fence, as the backup's manifest records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedSequence {
    /// The live schema it belonged to (absent = public).
    #[serde(default = "public_string", skip_serializing_if = "is_public_str")]
    pub schema: String,
    pub name: String,
    pub min: i64,
    pub max: i64,
    pub start: i64,
    pub cycle: bool,
    pub last_value: i64,
    pub is_called: bool,
}

/// What stays live through the swap: every live schema that is swapped, and
/// the tables that stay in them (`schema`, `name`).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub live_schemas: Vec<String>,
    pub kept: Vec<(String, String)>,
}

impl Scope {
    /// The swapped live schemas, and the tables that stay in each.
    pub fn of<'a>(
        live_schemas: impl IntoIterator<Item = &'a String>,
        kept: impl IntoIterator<Item = (&'a String, &'a BTreeSet<String>)>,
    ) -> Scope {
        Scope {
            live_schemas: live_schemas.into_iter().cloned().collect(),
            kept: kept
                .into_iter()
                .flat_map(|(s, ts)| ts.iter().map(move |t| (s.clone(), t.clone())))
                .collect(),
        }
    }

    /// Of the sequences `(schema, name)`, those to fence: in a swapped
    /// schema, no extension's, and used only by relations that leave with the
    /// backup; with whether this role owns it (only then may it).
    async fn fenceable(
        &self,
        client: &Client,
        seqs: &[(String, String)],
    ) -> Result<Vec<Fenceable>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let schemas: Vec<&str> = seqs.iter().map(|s| s.0.as_str()).collect();
        let names: Vec<&str> = seqs.iter().map(|s| s.1.as_str()).collect();
        let kept_s: Vec<&str> = self.kept.iter().map(|k| k.0.as_str()).collect();
        let kept_t: Vec<&str> = self.kept.iter().map(|k| k.1.as_str()).collect();
        let rows = client
            .query(
                "WITH cand(s, t) AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]))),
                      kept(s, t) AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]))),
                      seq AS (SELECT cand.s, cand.t, c.oid, c.relowner
                                FROM cand
                                JOIN pg_catalog.pg_namespace n ON n.nspname = cand.s
                                JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = cand.t AND c.relkind = 'S'
                               WHERE cand.s = ANY ($3::text[]))
                 SELECT seq.s, seq.t, pg_catalog.pg_has_role(seq.relowner, 'USAGE'),
                        (SELECT ps.seqcycle FROM pg_catalog.pg_sequence ps WHERE ps.seqrelid = seq.oid), seq.oid
                   FROM seq
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                     WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = seq.oid AND e.deptype = 'e')
                    -- Users that stay: relations outside the swapped schemas,
                    -- kept tables, extensions' relations, anything else.
                    AND NOT EXISTS (
                      SELECT 1 FROM pg_catalog.pg_depend d
                        LEFT JOIN pg_catalog.pg_attrdef ad ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND ad.oid = d.objid
                        LEFT JOIN pg_catalog.pg_rewrite rw ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND rw.oid = d.objid
                        LEFT JOIN pg_catalog.pg_class c ON c.oid = COALESCE(ad.adrelid, rw.ev_class)
                        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                       WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = seq.oid AND d.deptype = 'n'
                         AND (c.oid IS NULL OR NOT (n.nspname = ANY ($3::text[]))
                              OR EXISTS (SELECT 1 FROM kept k WHERE k.s = n.nspname AND k.t = c.relname)
                              OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                                          WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')))
                    -- Owned by a column of a table that stays.
                    AND NOT EXISTS (
                      SELECT 1 FROM pg_catalog.pg_depend d
                        JOIN pg_catalog.pg_class c ON c.oid = d.refobjid
                        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                       WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = seq.oid
                         AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
                         AND (NOT (n.nspname = ANY ($3::text[]))
                              OR EXISTS (SELECT 1 FROM kept k WHERE k.s = n.nspname AND k.t = c.relname)))",
                &[&schemas, &names, &self.live_schemas, &kept_s, &kept_t],
            )
            .await
            .map_err(|e| pg_error_as(e, "listing the sequences the swap fences"))?;
        Ok(rows
            .iter()
            .map(|r| Fenceable {
                at: (r.get(0), r.get(1)),
                mine: r.get(2),
                cycle: r.get(3),
                oid: r.get(4),
            })
            .collect())
    }
}

/// A sequence [`Scope::fenceable`] found.
struct Fenceable {
    /// Schema and name.
    at: (String, String),
    oid: u32,
    /// This role may alter it.
    mine: bool,
    /// Its CYCLE, to lock it with an ALTER that changes nothing.
    cycle: bool,
}

/// The fences of one swap transaction: each sequence fenced once, however
/// many preserved tables draw from it, its state as read before the fence.
#[derive(Debug, Default)]
pub struct Fences {
    scope: Scope,
    states: HashMap<(String, String), (i64, bool)>,
    /// Sequences this role may not fence (warned about once).
    unfenced: HashSet<(String, String)>,
    /// For the backup's manifest, in the order fenced.
    pub records: Vec<FencedSequence>,
    /// One for each sequence that could not be fenced (also logged).
    pub warnings: Vec<String>,
}

impl Fences {
    pub fn new(scope: Scope) -> Self {
        Fences {
            scope,
            ..Fences::default()
        }
    }

    /// Fence those of `seqs` (`schema`, `name`) that may be
    /// ([`Scope::fenceable`]) and are not yet.
    pub async fn fence_all(&mut self, client: &Client, seqs: &[(String, String)]) -> Result<()> {
        let todo: Vec<(String, String)> = seqs
            .iter()
            .filter(|s| !self.states.contains_key(*s) && !self.unfenced.contains(*s))
            .unique()
            .cloned()
            .collect();
        let mut mine = Vec::new();
        for f in self.scope.fenceable(client, &todo).await? {
            if !f.mine {
                self.warn(&f.at, "is not this role's to alter");
                self.unfenced.insert(f.at);
                continue;
            }
            mine.push(f);
        }
        for (f, (state, record)) in mine.iter().zip(fence(client, &mine).await?) {
            if record.is_none() {
                self.warn(&f.at, "is at the edge of its data type's range");
            }
            self.records.extend(record);
            self.states.insert(f.at.clone(), state);
        }
        Ok(())
    }

    /// The warning of a sequence the swap does not fence (also logged).
    fn warn(&mut self, (schema, name): &(String, String), why: &str) {
        let line = format!(
            "sequence {}.{} {why}, so the swap does not fence it: a nextval that resolved it before the swap may get a value the new sequence hands out too",
            display_ident(schema),
            display_ident(name)
        );
        tracing::warn!("{line}");
        self.warnings.push(line);
    }

    /// The state (`last_value`, `is_called`) a fenced sequence had before
    /// its fence; None for one not fenced.
    pub fn state(&self, schema: &str, name: &str) -> Option<(i64, bool)> {
        self.states
            .get(&(schema.to_string(), name.to_string()))
            .copied()
    }
}

/// A sequence's definition and state, read under its lock.
struct Read {
    min: i64,
    max: i64,
    start: i64,
    increment: i64,
    cycle: bool,
    last_value: i64,
    is_called: bool,
    /// The bounds of its data type.
    type_min: i64,
    type_max: i64,
}

/// The catalog's definition and the sequence's own state of each of
/// `seqs`, in one round trip (in their order).
async fn read(client: &Client, seqs: &[&Fenceable]) -> Result<Vec<Read>> {
    let sql = seqs
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "SELECT {OWN_STATEMENT} {i}, s.seqmin, s.seqmax, s.seqstart, s.seqincrement, s.seqcycle,
                        CASE s.seqtypid WHEN 'pg_catalog.int2'::pg_catalog.regtype THEN -32768
                                        WHEN 'pg_catalog.int4'::pg_catalog.regtype THEN -2147483648
                                        ELSE -9223372036854775808 END::bigint,
                        CASE s.seqtypid WHEN 'pg_catalog.int2'::pg_catalog.regtype THEN 32767
                                        WHEN 'pg_catalog.int4'::pg_catalog.regtype THEN 2147483647
                                        ELSE 9223372036854775807 END::bigint,
                        l.last_value, l.is_called
                   FROM pg_catalog.pg_sequence s, {} l
                  WHERE s.seqrelid = {}",
                qualified(&f.at.0, &f.at.1),
                f.oid
            )
        })
        .join("\nUNION ALL ");
    let mut rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| pg_error_as(e, "reading the sequences the swap fences"))?;
    rows.sort_by_key(|r| r.get::<_, i32>(0));
    Ok(rows
        .iter()
        .map(|def| Read {
            min: def.get(1),
            max: def.get(2),
            start: def.get(3),
            increment: def.get(4),
            cycle: def.get(5),
            type_min: def.get(6),
            type_max: def.get(7),
            last_value: def.get(8),
            is_called: def.get(9),
        })
        .collect())
}

/// The `last_value` and `is_called` of each of `quals` (quoted, qualified;
/// read from the catalog, never user input), a few hundred per round trip.
pub async fn sequence_states(
    client: &Client,
    quals: &[String],
) -> Result<HashMap<String, (i64, bool)>> {
    let mut out = HashMap::new();
    for chunk in quals.chunks(500) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, q)| format!("SELECT {OWN_STATEMENT} {i}, last_value, is_called FROM {q}"))
            .join("\nUNION ALL ");
        for r in client
            .query(sql.as_str(), &[])
            .await
            .map_err(|e| pg_error_as(e, "reading the sequences"))?
        {
            let i: i32 = r.get(0);
            out.insert(chunk[i as usize].clone(), (r.get(1), r.get(2)));
        }
    }
    Ok(out)
}

/// A sequence's `last_value` and `is_called` (`qual`: quoted, qualified).
pub async fn sequence_state(client: &Client, qual: &str) -> Result<(i64, bool)> {
    let r = client
        .query_one(
            format!("SELECT {OWN_STATEMENT} last_value, is_called FROM {qual}").as_str(),
            &[],
        )
        .await
        .map_err(|e| pg_error_as(e, &format!("reading sequence {qual}")))?;
    Ok((r.get(0), r.get(1)))
}

impl Read {
    /// The fenced definition (`MINVALUE`, `MAXVALUE`, `START`): the bound in
    /// the direction of travel at `last_value`, the other one moved by one
    /// where PostgreSQL wants `MINVALUE < MAXVALUE`, `START` inside them.
    /// None when the data type leaves no room for that.
    fn fenced(&self) -> Option<(i64, i64, i64)> {
        let last = self.last_value;
        let (min, max) = if self.increment > 0 {
            let min = if self.min < last {
                self.min
            } else {
                last.checked_sub(1).filter(|m| *m >= self.type_min)?
            };
            (min, last)
        } else {
            let max = if self.max > last {
                self.max
            } else {
                last.checked_add(1).filter(|m| *m <= self.type_max)?
            };
            (last, max)
        };
        Some((min, max, self.start.clamp(min, max)))
    }
}

/// Lock, read and fence the sequences `seqs` inside the open swap
/// transaction (see the module's comment), a few hundred per three round
/// trips: their time is lock time. Returns, for each, its state as read
/// (`last_value`, `is_called`), which the carry continues after, and the
/// record for the backup's manifest (None when its data type left no room
/// for a fence).
#[allow(clippy::type_complexity)]
async fn fence(
    client: &Client,
    seqs: &[Fenceable],
) -> Result<Vec<((i64, bool), Option<FencedSequence>)>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(500) {
        // Its CYCLE as it is (read just before), to lock it without changing it.
        let lock = chunk
            .iter()
            .map(|f| {
                let as_is = if f.cycle { "CYCLE" } else { "NO CYCLE" };
                format!("ALTER SEQUENCE {} {as_is};", qualified(&f.at.0, &f.at.1))
            })
            .join("\n");
        exec_as(client, &lock, "locking the sequences the swap fences").await?;
        let chunk: Vec<&Fenceable> = chunk.iter().collect();
        let mut sql = String::new();
        for (f, r) in chunk.iter().zip(read(client, &chunk).await?) {
            let qual = qualified(&f.at.0, &f.at.1);
            let state = (r.last_value, r.is_called);
            let Some((min, max, start)) = r.fenced() else {
                out.push((state, None));
                continue;
            };
            if !r.is_called {
                sql.push_str(&format!(
                    "SELECT pg_catalog.setval({}::pg_catalog.oid::pg_catalog.regclass, {}, true);\n",
                    f.oid, r.last_value
                ));
            }
            sql.push_str(&format!(
                "ALTER SEQUENCE {qual} NO CYCLE MINVALUE {min} MAXVALUE {max} START WITH {start};\n"
            ));
            tracing::debug!(sequence = %qual, last_value = r.last_value, "sequence fenced");
            out.push((
                state,
                Some(FencedSequence {
                    schema: f.at.0.clone(),
                    name: f.at.1.clone(),
                    min: r.min,
                    max: r.max,
                    start: r.start,
                    cycle: r.cycle,
                    last_value: r.last_value,
                    is_called: r.is_called,
                }),
            ));
        }
        if !sql.is_empty() {
            exec_as(client, &sql, "fencing the sequences the swap carries over").await?;
        }
    }
    Ok(out)
}

/// Inside a rollback's transaction, before anything moves: give the
/// sequences the restored backup's swap fenced (`fences`, in the backup
/// schemas of `maps`) their definitions back, and their state when nothing
/// drew from them since (nothing can: they are fenced). Returns a warning
/// for each one that is gone.
pub async fn restore(
    client: &Client,
    fences: &[FencedSequence],
    maps: &[SchemaMap],
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for f in fences {
        let Some(map) = maps.iter().find(|m| m.live == f.schema) else {
            continue;
        };
        let qual = qualified(&map.backup, &f.name);
        let here = client
            .query_opt(
                "SELECT c.oid FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                &[&map.backup, &f.name],
            )
            .await
            .map_err(|e| pg_error_as(e, &format!("looking up sequence {qual}")))?;
        if here.is_none() {
            let line = format!(
                "sequence {qual}: fenced by the swap that made {} but gone now; nothing to give back",
                map.backup
            );
            tracing::warn!("{line}");
            warnings.push(line);
            continue;
        }
        let cycle = if f.cycle { "CYCLE" } else { "NO CYCLE" };
        exec_as(
            client,
            &format!(
                "ALTER SEQUENCE {qual} {cycle} MINVALUE {} MAXVALUE {} START WITH {}",
                f.min, f.max, f.start
            ),
            &format!("giving sequence {qual} its definition back"),
        )
        .await?;
        if !f.is_called {
            // Still where the fence left it: the value read was never handed out.
            client
                .query_opt(
                    format!(
                        "SELECT {OWN_STATEMENT} pg_catalog.setval($1::text::regclass, $2, false) FROM {qual}
                          WHERE last_value = $2 AND is_called"
                    )
                    .as_str(),
                    &[&qual, &f.last_value],
                )
                .await
                .map_err(|e| pg_error_as(e, &format!("giving sequence {qual} its value back")))?;
        }
        tracing::debug!(sequence = %qual, "fenced sequence given its definition back");
    }
    Ok(warnings)
}
