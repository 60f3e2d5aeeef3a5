//! Post-data: indexes, constraints, triggers, rules, policies, comments —
//! pg_restore's post-data section, remapped, run in dependency-safe waves:
//!
//! 1. indexes and PK/unique/exclusion/check constraints, in parallel, largest
//!    tables first (CREATE INDEX takes SHARE locks, so several indexes of one
//!    table build side by side);
//! 2. `ALTER INDEX … ATTACH PARTITION` (needs the indexes of wave 1);
//! 3. foreign keys, in parallel (they need the unique indexes they reference),
//!    never two at once that touch one table: `ADD FOREIGN KEY` takes SHARE ROW
//!    EXCLUSIVE locks on its table and then on the one it references, a lock
//!    that conflicts with itself, so two keys between the same tables in
//!    opposite directions (GitLab's `projects` and `namespaces`) deadlocked
//!    when run side by side. pg_restore keeps the same rule
//!    (`has_lock_conflicts`); see [`next_job`];
//! 4. everything else (triggers, rules, policies, comments, statistics), in
//!    pg_restore's order.
//!
//! pg_restore writes `SET default_tablespace = …;` only when the tablespace
//! changes, at the end of the entry *before* the one it is meant for (or of
//! the preamble). Run in parallel sessions in another order, an index would
//! land in whatever tablespace its session's previous entry left set, so each
//! job starts with the `SET default_tablespace` in force at its place in
//! pg_restore's order ([`tablespace_set`]); with `--no-tablespaces` there is
//! none.
//!
//! Entries that touch a preserved table — foreign keys from or to it, its
//! triggers and rules, constraints the source added `NOT VALID` (which exempt
//! the rows already there, as the destination's are), and comments on those —
//! are not run here: they would fire on (or reject) the rows the sync copies
//! in. They are returned as *deferred* SQL that the swap runs inside its
//! transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use pg_query::NodeEnum;
use pg_query::protobuf::{ConstrType, ObjectType};
use tokio_util::sync::CancellationToken;

use crate::dump::sql::Entry;
use crate::error::Interrupted;
use crate::pg::conn::connect::{connect, describe_pg_error};
use crate::pg::conn::connspec::ConnSpec;
use crate::prepare::progress::Progress;

/// Session settings for index builds: more sort memory for these sessions only,
/// and no parallel maintenance workers (the `--jobs` cap holds across phases).
pub const INDEX_SESSION_SETTINGS: &str = "SET maintenance_work_mem = '256MB'; SET max_parallel_maintenance_workers = 0; SET synchronous_commit = off";

/// What an entry touches, from its parse tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntryTargets {
    /// The table the entry alters or indexes (`relname` only: all are in one schema).
    pub table: Option<String>,
    /// A foreign key's referenced table.
    pub references: Option<String>,
    /// The constraint, trigger or rule the entry creates (or comments on).
    pub object: Option<String>,
    /// The table named by a COMMENT on a constraint, trigger, rule or policy.
    pub comment_table: Option<String>,
    /// The entry adds a constraint `NOT VALID` (a check, or a PostgreSQL 18
    /// not-null): rows already there are exempt.
    pub not_valid: bool,
}

/// Find what an entry's statements touch (tables by bare name).
pub fn targets(sql: &str) -> Result<EntryTargets> {
    targets_keyed(sql, &|_, rel| rel.to_string())
}

/// Names a relation from its (schema, name) as written in the entry.
pub type KeyFn<'a> = &'a dyn Fn(&str, &str) -> String;

/// [`targets`], each table named by `key(schema, name)`.
pub fn targets_keyed(sql: &str, key: KeyFn<'_>) -> Result<EntryTargets> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| anyhow!("parsing: {e}"))?;
    let mut t = EntryTargets::default();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        match node {
            NodeEnum::IndexStmt(s) => {
                if let Some(r) = &s.relation {
                    t.table.get_or_insert(key(&r.schemaname, &r.relname));
                }
            }
            NodeEnum::AlterTableStmt(s) => {
                if let Some(r) = &s.relation {
                    t.table.get_or_insert(key(&r.schemaname, &r.relname));
                }
                for cmd in &s.cmds {
                    if let Some(NodeEnum::AlterTableCmd(c)) = &cmd.node
                        && let Some(def) = &c.def
                        && let Some(NodeEnum::Constraint(con)) = &def.node
                    {
                        t.object.get_or_insert(con.conname.clone());
                        t.not_valid |= con.skip_validation;
                        if con.contype == ConstrType::ConstrForeign as i32
                            && let Some(pk) = &con.pktable
                        {
                            t.references = Some(key(&pk.schemaname, &pk.relname));
                        }
                    }
                }
            }
            NodeEnum::CreateTrigStmt(s) => {
                if let Some(r) = &s.relation {
                    t.table.get_or_insert(key(&r.schemaname, &r.relname));
                }
                t.object.get_or_insert(s.trigname.clone());
            }
            NodeEnum::RuleStmt(s) => {
                if let Some(r) = &s.relation {
                    t.table.get_or_insert(key(&r.schemaname, &r.relname));
                }
                t.object.get_or_insert(s.rulename.clone());
            }
            NodeEnum::CreatePolicyStmt(s) => {
                if let Some(r) = &s.table {
                    t.table.get_or_insert(key(&r.schemaname, &r.relname));
                }
            }
            NodeEnum::CommentStmt(s) => {
                let kind = ObjectType::try_from(s.objtype).unwrap_or(ObjectType::Undefined);
                if matches!(
                    kind,
                    ObjectType::ObjectTabconstraint
                        | ObjectType::ObjectTrigger
                        | ObjectType::ObjectRule
                        | ObjectType::ObjectPolicy
                ) && let Some(obj) = &s.object
                    && let Some(NodeEnum::List(list)) = &obj.node
                    && list.items.len() >= 2
                {
                    // [schema,] table, name
                    let n = list.items.len();
                    let schema = match list
                        .items
                        .get(n.wrapping_sub(3))
                        .and_then(|i| i.node.as_ref())
                    {
                        Some(NodeEnum::String(st)) if n >= 3 => st.sval.as_str(),
                        _ => "",
                    };
                    if let Some(NodeEnum::String(st)) = &list.items[n - 2].node {
                        t.comment_table = Some(key(schema, &st.sval));
                    }
                    if let Some(NodeEnum::String(st)) = &list.items[n - 1].node {
                        t.object = Some(st.sval.clone());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

/// The wave an entry belongs to.
fn wave(kind: &str) -> u8 {
    match kind {
        "INDEX" | "CONSTRAINT" => 1,
        "INDEX ATTACH" => 2,
        "FK CONSTRAINT" => 3,
        _ => 4,
    }
}

/// One runnable entry.
#[derive(Debug, Clone)]
pub struct Job {
    pub label: String,
    pub kind: String,
    pub sql: String,
    pub table: Option<String>,
    /// A foreign key's referenced table, which it locks too.
    pub references: Option<String>,
    /// Sort key: bigger first.
    pub weight: i64,
}

impl Job {
    /// The tables the job locks.
    fn locks(&self) -> impl Iterator<Item = &String> {
        self.table.iter().chain(self.references.iter())
    }
}

/// The first queued job that locks no table a running job locks (taken off
/// the queue, its tables added to `running`); `None` when the queue is empty
/// or every queued job must wait for one that runs.
fn next_job(queue: &mut VecDeque<Job>, running: &mut HashMap<String, usize>) -> Option<Job> {
    let i = queue
        .iter()
        .position(|j| j.locks().all(|t| !running.contains_key(t)))?;
    let job = queue.remove(i)?;
    for t in job.locks() {
        *running.entry(t.clone()).or_default() += 1;
    }
    Some(job)
}

/// `job` is done: its tables are free again.
fn release(job: &Job, running: &mut HashMap<String, usize>) {
    for t in job.locks() {
        if let Some(n) = running.get_mut(t) {
            *n -= 1;
            if *n == 0 {
                running.remove(t);
            }
        }
    }
}

/// The post-data plan: waves of jobs plus deferred SQL.
#[derive(Debug, Default)]
pub struct Plan {
    pub waves: [Vec<Job>; 4],
    pub deferred: Vec<String>,
    pub preamble: String,
}

/// Split remapped post-data entries into waves and deferred SQL.
/// `sizes`: table name -> bytes (for ordering); `preserved`: preserved table names.
pub fn plan(
    entries: &[Entry],
    sizes: &HashMap<String, i64>,
    preserved: &HashSet<String>,
    key: KeyFn<'_>,
) -> Result<Plan> {
    let mut p = Plan::default();
    // (table, object) of every deferred constraint, trigger and rule, so that
    // comments on them are deferred too.
    let mut deferred_objects: HashSet<(String, String)> = HashSet::new();
    // The `SET default_tablespace` in force, as pg_restore wrote it.
    let mut tablespace: Option<String> = None;
    for e in entries {
        let Some(h) = &e.header else {
            p.preamble.push_str(&e.sql);
            tablespace = tablespace_set(&e.sql)?.or(tablespace);
            continue;
        };
        let own_tablespace = tablespace.clone();
        tablespace = tablespace_set(&e.sql)
            .with_context(|| format!("reading {}", e.label()))?
            .or(tablespace);
        let t = targets_keyed(&e.sql, key).with_context(|| format!("reading {}", e.label()))?;
        let is_preserved = |n: &Option<String>| n.as_ref().is_some_and(|n| preserved.contains(n));
        let defer = match h.kind.as_str() {
            "FK CONSTRAINT" => is_preserved(&t.table) || is_preserved(&t.references),
            "TRIGGER" | "RULE" => is_preserved(&t.table),
            // A constraint the source added NOT VALID exempts the rows that
            // were there: the destination's rows of a preserved table are
            // such rows, so it is added by the swap, after they are in.
            "CHECK CONSTRAINT" | "CONSTRAINT" => t.not_valid && is_preserved(&t.table),
            "COMMENT" => match (&t.comment_table, &t.object) {
                (Some(tab), Some(obj)) => deferred_objects.contains(&(tab.clone(), obj.clone())),
                _ => false,
            },
            _ => false,
        };
        if defer {
            if let (Some(tab), Some(obj)) = (&t.table, &t.object) {
                deferred_objects.insert((tab.clone(), obj.clone()));
            }
            p.deferred.push(e.sql.clone());
            continue;
        }
        let weight = t
            .table
            .as_ref()
            .and_then(|n| sizes.get(n))
            .copied()
            .unwrap_or(0);
        let w = wave(&h.kind) as usize - 1;
        p.waves[w].push(Job {
            label: e.label(),
            kind: h.kind.clone(),
            sql: match own_tablespace {
                Some(set) => format!("{set};\n{}", e.sql),
                None => e.sql.clone(),
            },
            table: t.table,
            references: t.references,
            weight,
        });
    }
    for w in [0, 2] {
        // Stable: biggest tables first, pg_restore order within a table.
        p.waves[w].sort_by_key(|j| std::cmp::Reverse(j.weight));
    }
    Ok(p)
}

/// The last `SET default_tablespace …` statement of `sql`, as written
/// (without its `;`).
fn tablespace_set(sql: &str) -> Result<Option<String>> {
    Ok(crate::dump::sql::object_settings(sql)?
        .into_iter()
        .rev()
        .find(|(name, _)| name == "default_tablespace")
        .map(|(_, stmt)| stmt))
}

/// Run the plan's waves on the destination with `workers` sessions.
pub async fn run(
    plan: &Plan,
    dest: &ConnSpec,
    workers: usize,
    connect_timeout: Duration,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    // Wave 1 (each table's indexes and constraints) runs in the data phase,
    // as soon as its table is loaded; the rest needs every table done.
    let total: usize = plan.waves.iter().skip(1).map(Vec::len).sum();
    progress.start_items("indexes", total);
    let waves = async {
        for (i, jobs) in plan.waves.iter().enumerate().skip(1) {
            if jobs.is_empty() {
                continue;
            }
            let parallel = if i == 0 || i == 2 { workers.max(1) } else { 1 };
            run_wave(
                jobs,
                &plan.preamble,
                dest,
                parallel,
                connect_timeout,
                cancel,
                progress,
            )
            .await?;
        }
        anyhow::Ok(())
    };
    progress.ticking("indexes", waves).await?;
    progress.finish("indexes");
    Ok(())
}

async fn run_wave(
    jobs: &[Job],
    preamble: &str,
    dest: &ConnSpec,
    parallel: usize,
    connect_timeout: Duration,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    // The jobs waiting, and the tables the running ones lock (a table a job
    // both alters and references counts twice); a job done wakes the others.
    let state = Arc::new(Mutex::new((
        jobs.iter().cloned().collect::<VecDeque<_>>(),
        HashMap::<String, usize>::new(),
    )));
    let freed = Arc::new(tokio::sync::Notify::new());
    let failed = CancellationToken::new();
    let n = parallel.min(jobs.len()).max(1);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (state, freed) = (state.clone(), freed.clone());
        let failed = failed.clone();
        tasks.push(async move {
            let client = connect(dest, "destination", "pgshift prepare", connect_timeout).await?;
            client
                .batch_execute(&format!("{preamble}\n{INDEX_SESSION_SETTINGS}"))
                .await
                .map_err(|e| anyhow!("setting up a session: {}", describe_pg_error(&e)))?;
            crate::pg::conn::connect::watch_client(&client).await;
            loop {
                if cancel.is_cancelled() {
                    return Err(anyhow::Error::new(Interrupted));
                }
                if failed.is_cancelled() {
                    return Ok(());
                }
                // Registered before looking, so a job finishing in between
                // still wakes this one.
                let woken = freed.notified();
                let picked = {
                    let mut st = state.lock().map_err(|_| anyhow!("a worker panicked"))?;
                    let (queue, running) = &mut *st;
                    match next_job(queue, running) {
                        Some(job) => Some(job),
                        None if queue.is_empty() => return Ok(()),
                        None => None,
                    }
                };
                let Some(job) = picked else {
                    tokio::select! {
                        _ = woken => {}
                        _ = cancel.cancelled() => {}
                        _ = failed.cancelled() => {}
                    }
                    continue;
                };
                tracing::debug!(entry = %job.label, "running");
                let r = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(anyhow::Error::new(Interrupted)),
                    _ = failed.cancelled() => {
                        crate::pg::conn::connect::cancel_running(&client, dest).await;
                        return Ok(());
                    }
                    r = client.batch_execute(&job.sql) => r.map_err(|e| {
                        anyhow!("{}: {}{}", job.label, describe_pg_error(&e), key_outside(&e, &job.sql))
                    }),
                };
                if let Err(e) = r {
                    failed.cancel();
                    crate::pg::conn::connect::cancel_running(&client, dest).await;
                    return Err(e);
                }
                if let Ok(mut st) = state.lock() {
                    release(&job, &mut st.1);
                }
                freed.notify_waiters();
                progress.item_done("indexes");
            }
        });
    }
    let results = futures_util::future::join_all(tasks).await;
    for r in results {
        r?;
    }
    Ok(())
}

/// What to do about a foreign key of the source that its own rows break
/// here: it references a table the migration does not move (`auth.users` of
/// a schema left out), which keeps the destination's rows; in the shadows,
/// the source's rows always match. Empty for any other error.
fn key_outside(e: &tokio_postgres::Error, sql: &str) -> String {
    if e.code() != Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) {
        return String::new();
    }
    let Some(target) = sql
        .split_once("REFERENCES ")
        .and_then(|(_, rest)| rest.split_once('('))
        .map(|(name, _)| name.trim())
    else {
        return String::new();
    };
    let schema = target.split('.').next().unwrap_or("").trim_matches('"');
    if schema == crate::pg::meta::SHADOW_SCHEMA
        || schema.starts_with(crate::pg::meta::SHADOW_PREFIX)
    {
        return String::new();
    }
    format!(
        " ({target} is not migrated and keeps the destination's rows, which lack the one the source's row references: add it on the destination, or fix the source's row, and prepare again)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::sql::EntryHeader;

    fn entry(kind: &str, sql: &str) -> Entry {
        Entry {
            header: Some(EntryHeader {
                name: "x".into(),
                kind: kind.into(),
                schema: Some("shadow".into()),
                owner: None,
            }),
            sql: sql.into(),
        }
    }

    /// Two foreign keys between the same tables in opposite directions
    /// deadlocked side by side: no job starts while another locks one of its
    /// tables; the others go ahead of it.
    #[test]
    fn jobs_that_lock_a_table_in_common_never_run_together() {
        let job = |label: &str, table: &str, references: Option<&str>| Job {
            label: label.into(),
            kind: "FK CONSTRAINT".into(),
            sql: String::new(),
            table: Some(table.into()),
            references: references.map(Into::into),
            weight: 0,
        };
        let mut queue: VecDeque<Job> = [
            job("projects->namespaces", "projects", Some("namespaces")),
            job("namespaces->projects", "namespaces", Some("projects")),
            job("issues->projects", "issues", Some("projects")),
            job("self", "users", Some("users")),
            job("notes->issues", "notes", Some("issues")),
        ]
        .into();
        let mut running = HashMap::new();
        let take =
            |q: &mut VecDeque<Job>, r: &mut HashMap<String, usize>| next_job(q, r).map(|j| j.label);
        let first = next_job(&mut queue, &mut running).unwrap();
        assert_eq!(first.label, "projects->namespaces");
        assert_eq!(take(&mut queue, &mut running).as_deref(), Some("self"));
        let notes = next_job(&mut queue, &mut running).unwrap();
        assert_eq!(notes.label, "notes->issues");
        // The rest each wait for a running job's table.
        assert_eq!(take(&mut queue, &mut running), None);
        release(&first, &mut running);
        assert_eq!(
            take(&mut queue, &mut running).as_deref(),
            Some("namespaces->projects")
        );
        assert_eq!(take(&mut queue, &mut running), None);
        release(&notes, &mut running);
        assert_eq!(
            take(&mut queue, &mut running).as_deref(),
            None,
            "issues->projects waits for projects"
        );
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn targets_from_the_parse_tree() {
        let t = targets("CREATE INDEX i ON shadow.t USING btree (a);").unwrap();
        assert_eq!(t.table.as_deref(), Some("t"));
        let t = targets(
            "ALTER TABLE ONLY shadow.orders\n    ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES shadow.users(id);",
        )
        .unwrap();
        assert_eq!(t.table.as_deref(), Some("orders"));
        assert_eq!(t.references.as_deref(), Some("users"));
        let t = targets("COMMENT ON CONSTRAINT fk ON shadow.\"Users\" IS 'x';").unwrap();
        assert_eq!(t.comment_table.as_deref(), Some("Users"));
        let t = targets("CREATE TRIGGER trg AFTER INSERT ON shadow.users FOR EACH ROW EXECUTE FUNCTION shadow.f();")
            .unwrap();
        assert_eq!(t.table.as_deref(), Some("users"));
    }

    /// pg_restore's post-data output: each `SET default_tablespace` is at the
    /// end of the entry (or preamble) before the one it is meant for.
    #[test]
    fn each_job_starts_with_the_tablespace_in_force_at_its_place() {
        let text = "SET row_security = off;\n\nSET default_tablespace = fast;\n\n--\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: shadow; Owner: -; Tablespace: fast\n--\n\nALTER TABLE ONLY shadow.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\n\n--\n-- Name: t_v; Type: INDEX; Schema: shadow; Owner: -; Tablespace: fast\n--\n\nCREATE INDEX t_v ON shadow.t USING btree (v);\n\n\nSET default_tablespace = '';\n\n--\n-- Name: t_w; Type: INDEX; Schema: shadow; Owner: -\n--\n\nCREATE INDEX t_w ON shadow.t USING btree (v, id);\n\n\nSET default_tablespace = \"Odd Space\";\n\n--\n-- Name: u_v; Type: INDEX; Schema: shadow; Owner: -; Tablespace: Odd Space\n--\n\nCREATE INDEX u_v ON shadow.u USING btree (v);\n";
        let entries = crate::dump::sql::split_entries(text).unwrap();
        let p = plan(&entries, &HashMap::new(), &HashSet::new(), &|_, r| {
            r.to_string()
        })
        .unwrap();
        let starts: Vec<(&str, &str)> = p.waves[0]
            .iter()
            .map(|j| (j.label.as_str(), j.sql.lines().next().unwrap()))
            .collect();
        assert_eq!(
            starts,
            vec![
                (
                    "CONSTRAINT shadow.t t_pkey",
                    "SET default_tablespace = fast;"
                ),
                ("INDEX shadow.t_v", "SET default_tablespace = fast;"),
                ("INDEX shadow.t_w", "SET default_tablespace = '';"),
                (
                    "INDEX shadow.u_v",
                    "SET default_tablespace = \"Odd Space\";"
                ),
            ]
        );
        // Without tablespaces (`--no-tablespaces`), nothing is added.
        let entries = vec![entry("INDEX", "CREATE INDEX a ON shadow.small (x);")];
        let p = plan(&entries, &HashMap::new(), &HashSet::new(), &|_, r| {
            r.to_string()
        })
        .unwrap();
        assert_eq!(p.waves[0][0].sql, "CREATE INDEX a ON shadow.small (x);");
    }

    #[test]
    fn waves_and_deferral() {
        let entries = vec![
            entry("INDEX", "CREATE INDEX a ON shadow.small (x);"),
            entry(
                "CONSTRAINT",
                "ALTER TABLE ONLY shadow.big ADD CONSTRAINT big_pkey PRIMARY KEY (id);",
            ),
            entry(
                "FK CONSTRAINT",
                "ALTER TABLE ONLY shadow.orders ADD CONSTRAINT o_fk FOREIGN KEY (u) REFERENCES shadow.users(id);",
            ),
            entry(
                "FK CONSTRAINT",
                "ALTER TABLE ONLY shadow.orders ADD CONSTRAINT o_fk2 FOREIGN KEY (p) REFERENCES shadow.products(id);",
            ),
            entry(
                "TRIGGER",
                "CREATE TRIGGER t AFTER INSERT ON shadow.users FOR EACH ROW EXECUTE FUNCTION shadow.f();",
            ),
            entry(
                "COMMENT",
                "COMMENT ON CONSTRAINT o_fk ON shadow.orders IS 'x';",
            ),
            entry(
                "INDEX ATTACH",
                "ALTER INDEX shadow.p_idx ATTACH PARTITION shadow.p1_idx;",
            ),
        ];
        let sizes: HashMap<String, i64> =
            [("big".to_string(), 100), ("small".to_string(), 1)].into();
        let preserved: HashSet<String> = ["users".to_string()].into();
        let p = plan(&entries, &sizes, &preserved, &|_, r| r.to_string()).unwrap();
        assert_eq!(p.waves[0].len(), 2);
        assert_eq!(p.waves[0][0].table.as_deref(), Some("big"));
        assert_eq!(p.waves[1].len(), 1);
        assert_eq!(p.waves[2].len(), 1);
        assert!(p.waves[2][0].sql.contains("o_fk2"));
        // The FK to users, the trigger on users, and the comment on that FK.
        assert_eq!(p.deferred.len(), 3);
        assert!(p.waves[3].is_empty());
    }

    /// A check the source added NOT VALID exempts the rows that were there
    /// (Synapse's `profiles`): on a preserved table, whose rows are the
    /// destination's, the swap adds it after they are in; a valid one, or one
    /// on a table the source fills, runs here.
    #[test]
    fn not_valid_checks_of_preserved_tables_are_deferred() {
        let entries = vec![
            entry(
                "CHECK CONSTRAINT",
                "ALTER TABLE shadow.users ADD CONSTRAINT named CHECK (name IS NOT NULL) NOT VALID;",
            ),
            entry(
                "COMMENT",
                "COMMENT ON CONSTRAINT named ON shadow.users IS 'x';",
            ),
            entry(
                "CHECK CONSTRAINT",
                "ALTER TABLE shadow.users ADD CONSTRAINT valid CHECK (shadow.ok(id));",
            ),
            entry(
                "CHECK CONSTRAINT",
                "ALTER TABLE shadow.orders ADD CONSTRAINT positive CHECK (n > 0) NOT VALID;",
            ),
        ];
        let preserved: HashSet<String> = ["users".to_string()].into();
        let p = plan(&entries, &HashMap::new(), &preserved, &|_, r| r.to_string()).unwrap();
        assert_eq!(p.deferred.len(), 2, "{:?}", p.deferred);
        assert!(p.deferred[0].contains("named") && p.deferred[1].starts_with("COMMENT"));
        let here: Vec<&str> = p.waves[3].iter().map(|j| j.sql.as_str()).collect();
        assert!(
            here.len() == 2 && here[0].contains("valid CHECK") && here[1].contains("positive"),
            "{here:?}"
        );
    }
}
