//! The data phase: table data streamed from the source to the destination's
//! shadow, `COPY … TO STDOUT` → `COPY … FROM STDIN`, with no intermediate disk.
//!
//! - Every source session imports the prepare's exported snapshot, so all
//!   tables come from one consistent point in time.
//! - Each table is loaded in the transaction that truncates it, so COPY can use
//!   FREEZE (rows are written frozen: no later anti-wraparound rewrite, and with
//!   `wal_level = minimal` no WAL).
//! - Binary format where every column type round-trips between two databases;
//!   text otherwise. Text is written and read under fixed settings
//!   ([`TextIo`], from `pg::settings`): the servers' own `DateStyle`, `IntervalStyle`,
//!   `extra_float_digits`, `TimeZone`, `lc_monetary` or `array_nulls` (set per
//!   database or role) would otherwise turn `05/12/2020` into May 12th, `-1
//!   days -02:00` into `-1 days +02:00`, a NULL array element into `'NULL'`,
//!   and cut floats short. `reg*` values
//!   (`regclass`, `regconfig`, …) are names in text, never OIDs, and resolve
//!   against the migrated schemas on the source and their shadows on the
//!   destination.
//! - Rows are counted in the stream and compared with what COPY stored.
//! - Largest tables first over `--jobs` workers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use itertools::Itertools;
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::error::Interrupted;
use crate::pg::catalog::TableInfo;
use crate::pg::conn::connect::{connect, describe_pg_error};
use crate::pg::conn::connspec::ConnSpec;
use crate::pg::ident::{qualified, quote_ident};
use crate::pg::settings;
use crate::prepare::copycount::RowCounter;
use crate::prepare::progress::Progress;

/// Bytes gathered from the source before they are handed to the destination.
const COPY_CHUNK: usize = 256 * 1024;

/// Tables smaller than this are loaded without TRUNCATE + FREEZE.
const FREEZE_MIN_BYTES: i64 = 4 * 1024 * 1024;

/// One table to load.
#[derive(Debug, Clone)]
pub struct CopyJob {
    /// The table's key (`TableInfo::key`): its name in public, `schema.name` elsewhere.
    pub name: String,
    /// The source relation, quoted and qualified.
    pub source_rel: String,
    /// The shadow relation, quoted and qualified.
    pub target_rel: String,
    pub columns: Vec<String>,
    pub binary: bool,
    pub bytes: i64,
}

impl CopyJob {
    pub fn for_table(t: &TableInfo, shadow: &str) -> CopyJob {
        let cols = t.copy_columns();
        CopyJob {
            name: t.key(),
            source_rel: qualified(&t.schema, &t.name),
            target_rel: qualified(shadow, &t.name),
            binary: !cols.is_empty() && cols.iter().all(|c| c.binary_safe),
            columns: cols.iter().map(|c| c.name.clone()).collect(),
            bytes: t.bytes,
        }
    }
}

/// What loading one table did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Loaded {
    pub name: String,
    pub rows: i64,
    pub bytes: u64,
    pub ms: u64,
    pub binary: bool,
}

/// Where the data comes from and goes to.
pub struct DataPlan<'a> {
    pub source: &'a ConnSpec,
    pub dest: &'a ConnSpec,
    pub snapshot: &'a str,
    /// Table key -> its shadow relation (quoted, qualified), for ANALYZE.
    pub analyze_rels: &'a HashMap<String, String>,
    pub workers: usize,
    pub connect_timeout: Duration,
    pub cancel: &'a CancellationToken,
    pub progress: &'a Progress,
    pub text_io: &'a TextIo,
}

/// The settings of text-format COPY on each end: the source writes under
/// [`settings::OUTPUT`] (pg_dump's), the destination reads under
/// [`settings::INPUT`] and keeps its own DateStyle and TimeZone, as
/// pg_restore does (see `pg::settings`).
#[derive(Debug, Clone)]
pub struct TextIo {
    /// For the source session, once.
    pub source: String,
    /// For the destination, inside each text copy's transaction (`SET LOCAL`:
    /// the session's index builds keep their own settings).
    pub dest: String,
}

impl TextIo {
    /// `pairs`: each migrated schema and its shadow, public's first. A
    /// `reg*` value naming an object of a migrated schema is written
    /// unqualified on the source (its schema is on the path, before
    /// pg_catalog, so a built-in of the same name never hides it) and read on
    /// the destination against the shadows, in the same order; then
    /// pg_catalog; then the live schemas, where the extensions' objects stay
    /// (`geometry`); other schemas' objects are written qualified.
    pub fn new(pairs: &[(&str, &str)]) -> TextIo {
        let path = |names: Vec<&str>| names.into_iter().map(quote_ident).join(", ");
        TextIo {
            source: format!(
                "{}; SET search_path = {}",
                settings::set(settings::OUTPUT),
                path(settings::text_path(pairs.iter().map(|p| p.0), &[]))
            ),
            dest: format!(
                "{}; SET LOCAL search_path = {}",
                settings::set_local(settings::INPUT),
                path(settings::text_path(
                    pairs.iter().map(|p| p.1),
                    &pairs.iter().map(|p| p.0).collect::<Vec<_>>()
                ))
            ),
        }
    }
}

/// Open a source session that reads in the exported snapshot.
pub async fn source_in_snapshot(
    source: &ConnSpec,
    snapshot: &str,
    timeout: Duration,
) -> Result<Client> {
    let client = connect(source, "source", "pgshift prepare", timeout).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .context("starting a source transaction")?;
    // SET TRANSACTION SNAPSHOT takes a literal, not a parameter.
    let lit = crate::pg::ident::quote_literal(snapshot);
    client
        .batch_execute(&format!("SET TRANSACTION SNAPSHOT {lit}"))
        .await
        .map_err(|e| anyhow::anyhow!("importing the source snapshot: {}", describe_pg_error(&e)))?;
    Ok(client)
}

/// A unit of work for the data phase's workers.
#[derive(Debug, Clone)]
enum Task {
    /// Stream one table's rows.
    Load(CopyJob),
    /// Build one index or constraint of a loaded table (pre-remapped SQL).
    Index {
        table: Option<String>,
        label: String,
        sql: String,
    },
    /// ANALYZE a table once its indexes are built.
    Analyze(String),
}

/// What the data phase runs: loads, the index/constraint entries of each
/// table (run as soon as that table is loaded), and ANALYZE per table once its
/// indexes are done — one pool of `--jobs` workers for all of it, so the cap
/// holds across loading and index building, and a small table's indexes are
/// built while a big table is still loading (as `pg_restore -j` does).
pub struct Work {
    pub loads: Vec<CopyJob>,
    /// Index/constraint entries: (table or None, label, SQL).
    pub indexes: Vec<(Option<String>, String, String)>,
    /// Tables to ANALYZE after their indexes (loaded tables and tables with indexes).
    pub analyze: HashSet<String>,
    /// Session set-up for index builds (pg_restore's preamble + settings).
    pub index_session: String,
}

struct Sched {
    /// (priority, sequence, task): highest priority first, FIFO within.
    ready: BinaryHeap<(i64, Reverse<u64>, TaskBox)>,
    seq: u64,
    /// Index tasks waiting for their table's load.
    waiting: HashMap<String, Vec<Task>>,
    /// Index tasks not finished per table (ANALYZE waits for zero).
    open_indexes: HashMap<String, usize>,
    /// Tables whose load is not finished.
    loading: HashSet<String>,
    weight: HashMap<String, i64>,
    analyze: HashSet<String>,
    running: usize,
    failed: bool,
}

/// Wrapper so tasks can sit in a heap (ordering is by the tuple's first fields).
struct TaskBox(Task);
impl PartialEq for TaskBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TaskBox {}
impl PartialOrd for TaskBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TaskBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Sched {
    fn push(&mut self, task: Task) {
        // Work on big tables first; for one table: load, then indexes, then ANALYZE.
        let (table, bonus) = match &task {
            Task::Load(j) => (Some(j.name.as_str()), 0),
            Task::Index { table, .. } => (table.as_deref(), 1),
            Task::Analyze(t) => (Some(t.as_str()), 0),
        };
        let w = table.and_then(|t| self.weight.get(t)).copied().unwrap_or(0);
        self.seq += 1;
        self.ready.push((
            w.saturating_mul(2).saturating_add(bonus),
            Reverse(self.seq),
            TaskBox(task),
        ));
    }

    fn table_done_loading(&mut self, table: &str) {
        self.loading.remove(table);
        let tasks = self.waiting.remove(table).unwrap_or_default();
        if tasks.is_empty() {
            self.maybe_analyze(table);
        }
        for t in tasks {
            self.push(t);
        }
    }

    fn index_done(&mut self, table: Option<&str>) {
        if let Some(t) = table {
            if let Some(n) = self.open_indexes.get_mut(t) {
                *n -= 1;
            }
            if !self.loading.contains(t) {
                self.maybe_analyze(t);
            }
        }
    }

    fn maybe_analyze(&mut self, table: &str) {
        if self.open_indexes.get(table).copied().unwrap_or(0) == 0 && self.analyze.remove(table) {
            self.push(Task::Analyze(table.to_string()));
        }
    }

    fn idle(&self) -> bool {
        self.ready.is_empty() && self.running == 0
    }
}

/// Run the data phase; returns one [`Loaded`] per loaded table.
pub async fn load_all(plan: &DataPlan<'_>, work: Work) -> Result<Vec<Loaded>> {
    let total_bytes: i64 = work.loads.iter().map(|j| j.bytes.max(0)).sum();
    plan.progress
        .start_bytes("data", total_bytes.max(0) as u64, work.loads.len());
    let mut sched = Sched {
        ready: BinaryHeap::new(),
        seq: 0,
        waiting: HashMap::new(),
        open_indexes: HashMap::new(),
        loading: work.loads.iter().map(|j| j.name.clone()).collect(),
        weight: work
            .loads
            .iter()
            .map(|j| (j.name.clone(), j.bytes))
            .collect(),
        analyze: work.analyze.clone(),
        running: 0,
        failed: false,
    };
    for (table, label, sql) in work.indexes {
        let task = Task::Index {
            table: table.clone(),
            label,
            sql,
        };
        match &table {
            Some(t) => {
                *sched.open_indexes.entry(t.clone()).or_insert(0) += 1;
                if sched.loading.contains(t) {
                    sched.waiting.entry(t.clone()).or_default().push(task);
                } else {
                    sched.push(task);
                }
            }
            None => sched.push(task),
        }
    }
    let mut loads = work.loads;
    loads.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    for j in loads {
        sched.push(Task::Load(j));
    }
    // Tables with nothing to load and no indexes are analyzed right away.
    let idle_tables: Vec<String> = sched
        .analyze
        .iter()
        .filter(|t| {
            !sched.loading.contains(*t) && sched.open_indexes.get(*t).copied().unwrap_or(0) == 0
        })
        .cloned()
        .collect();
    for t in idle_tables {
        sched.maybe_analyze(&t);
    }
    let total_tasks = sched.ready.len() + sched.waiting.values().map(Vec::len).sum::<usize>();
    let sched = Arc::new(Mutex::new(sched));
    let notify = Arc::new(Notify::new());
    let results = Arc::new(Mutex::new(Vec::new()));
    let failed = CancellationToken::new();
    let workers = plan.workers.max(1).min(total_tasks.max(1));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(worker(
            plan,
            &work.index_session,
            sched.clone(),
            notify.clone(),
            results.clone(),
            failed.clone(),
        ));
    }
    let outcomes = plan
        .progress
        .ticking("data", futures_util::future::join_all(tasks))
        .await;
    plan.progress.finish("data");
    // Report the first real error (not "stopped because another failed").
    let mut first: Option<anyhow::Error> = None;
    for e in outcomes.into_iter().filter_map(|o| o.err()) {
        let secondary = e.chain().any(|c| c.to_string() == STOPPED);
        let first_secondary = first
            .as_ref()
            .is_some_and(|f| f.chain().any(|c| c.to_string() == STOPPED));
        if first.is_none() || (!secondary && first_secondary) {
            first = Some(e);
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    let mut out = std::mem::take(&mut *results.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    out.sort_by(|a: &Loaded, b| a.name.cmp(&b.name));
    Ok(out)
}

const STOPPED: &str = "stopped: another task failed";

async fn worker(
    plan: &DataPlan<'_>,
    index_session: &str,
    sched: Arc<Mutex<Sched>>,
    notify: Arc<Notify>,
    results: Arc<Mutex<Vec<Loaded>>>,
    failed: CancellationToken,
) -> Result<()> {
    let src = source_in_snapshot(plan.source, plan.snapshot, plan.connect_timeout).await?;
    src.batch_execute(&plan.text_io.source)
        .await
        .map_err(|e| anyhow::anyhow!("setting up a source session: {}", describe_pg_error(&e)))?;
    // Each COPY locks its table until the transaction ends; rolling back to
    // this savepoint after each table releases that lock (the snapshot stays),
    // so a worker never holds more than one table's lock on the source.
    src.batch_execute("SAVEPOINT pgshift_copy")
        .await
        .context("starting a source subtransaction")?;
    let dst = connect(
        plan.dest,
        "destination",
        "pgshift prepare",
        plan.connect_timeout,
    )
    .await?;
    dst.batch_execute(&format!(
        "{index_session}\n{}",
        crate::prepare::postdata::INDEX_SESSION_SETTINGS
    ))
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "setting up a destination session: {}",
            describe_pg_error(&e)
        )
    })?;
    crate::pg::conn::connect::watch_client(&dst).await;
    loop {
        if plan.cancel.is_cancelled() {
            return Err(anyhow::Error::new(Interrupted));
        }
        if failed.is_cancelled() {
            bail!(STOPPED);
        }
        let next = {
            let mut s = sched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            if s.failed {
                bail!(STOPPED);
            }
            match s.ready.pop() {
                Some((_, _, TaskBox(t))) => {
                    s.running += 1;
                    Some(t)
                }
                None if s.idle() => return Ok(()),
                None => None,
            }
        };
        let Some(task) = next else {
            // Others are running tasks that may unlock more work.
            tokio::select! {
                _ = notify.notified() => {}
                _ = plan.cancel.cancelled() => {}
                _ = failed.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        };
        let r = tokio::select! {
            biased;
            _ = plan.cancel.cancelled() => Err(anyhow::Error::new(Interrupted)),
            _ = failed.cancelled() => Err(anyhow::anyhow!(STOPPED)),
            r = run_task(plan, &src, &dst, &task) => r,
        };
        match r {
            Ok(loaded) => {
                let mut s = sched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                s.running -= 1;
                match &task {
                    Task::Load(j) => s.table_done_loading(&j.name),
                    Task::Index { table, .. } => s.index_done(table.as_deref()),
                    Task::Analyze(_) => {}
                }
                drop(s);
                if let Some(l) = loaded
                    && let Ok(mut v) = results.lock()
                {
                    v.push(l);
                }
                notify.notify_waiters();
            }
            Err(e) => {
                if let Ok(mut s) = sched.lock() {
                    s.failed = true;
                }
                failed.cancel();
                notify.notify_waiters();
                // Stop the server side at once rather than when it next talks to us.
                crate::pg::conn::connect::cancel_running(&dst, plan.dest).await;
                crate::pg::conn::connect::cancel_running(&src, plan.source).await;
                return Err(e);
            }
        }
    }
}

async fn run_task(
    plan: &DataPlan<'_>,
    src: &Client,
    dst: &Client,
    task: &Task,
) -> Result<Option<Loaded>> {
    match task {
        Task::Load(job) => {
            let loaded = copy_table(plan, src, dst, job).await?;
            src.batch_execute("ROLLBACK TO SAVEPOINT pgshift_copy")
                .await
                .map_err(|e| {
                    anyhow::anyhow!("releasing a source lock: {}", describe_pg_error(&e))
                })?;
            Ok(Some(loaded))
        }
        Task::Index { label, sql, .. } => {
            tracing::debug!(entry = %label, "building");
            dst.batch_execute(sql)
                .await
                .map_err(|e| anyhow::anyhow!("{label}: {}", describe_pg_error(&e)))?;
            Ok(None)
        }
        Task::Analyze(table) => {
            let rel = plan
                .analyze_rels
                .get(table)
                .with_context(|| format!("no relation for {table}"))?;
            let sql = format!("ANALYZE {rel}");
            dst.batch_execute(&sql)
                .await
                .map_err(|e| anyhow::anyhow!("analyzing {table}: {}", describe_pg_error(&e)))?;
            Ok(None)
        }
    }
}

async fn copy_table(
    plan: &DataPlan<'_>,
    src: &Client,
    dst: &Client,
    job: &CopyJob,
) -> Result<Loaded> {
    let started = Instant::now();
    // A table without columns has no column list (its rows are empty lines).
    let cols = if job.columns.is_empty() {
        String::new()
    } else {
        format!(
            "({})",
            job.columns.iter().map(|c| quote_ident(c)).join(", ")
        )
    };
    let target = job.target_rel.clone();
    let source_rel = job.source_rel.clone();
    let fmt = if job.binary {
        "FORMAT binary"
    } else {
        "FORMAT text"
    };
    let what = || format!("loading {}", job.name);

    // FREEZE needs the table truncated in the same transaction; a TRUNCATE
    // costs a few milliseconds (new files, fsyncs), more than freezing saves on
    // a small table.
    let freeze = job.bytes >= FREEZE_MIN_BYTES;
    // A text copy sets its settings for its own transaction.
    let in_txn = freeze || !job.binary;
    if in_txn {
        let mut begin = String::from("BEGIN");
        if freeze {
            begin.push_str(&format!("; TRUNCATE ONLY {target}"));
        }
        if !job.binary {
            begin.push_str("; ");
            begin.push_str(&plan.text_io.dest);
        }
        dst.batch_execute(&begin)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
    }
    let copy_in = format!(
        "COPY {target} {cols} FROM STDIN ({fmt}{})",
        if freeze { ", FREEZE" } else { "" }
    );
    let copy_out = format!("COPY {source_rel} {cols} TO STDOUT ({fmt})");
    let sink = dst
        .copy_in::<_, Bytes>(copy_in.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
    let stream = src.copy_out(copy_out.as_str()).await.map_err(|e| {
        anyhow::anyhow!("{}: reading the source: {}", what(), describe_pg_error(&e))
    })?;
    let mut counter = RowCounter::new(job.binary);
    let mut bytes = 0u64;
    let progress = plan.progress;
    let mut stream = std::pin::pin!(
        stream.map_err(|e| anyhow::anyhow!("reading the source: {}", describe_pg_error(&e)))
    );
    let mut sink = std::pin::pin!(sink);
    // The source sends one CopyData message per row. Gather rows into large
    // messages and let the sink flush only when its buffer is full (`feed`,
    // not `send`, which would flush — one write — per row).
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 64 * 1024);
    let mut unreported = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(what)?;
        counter
            .feed(&chunk)
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        bytes += chunk.len() as u64;
        unreported += chunk.len() as u64;
        buf.extend_from_slice(&chunk);
        if buf.len() >= COPY_CHUNK {
            sink.feed(buf.split().freeze()).await.map_err(|e| {
                anyhow::anyhow!("{}: writing the shadow: {}", what(), describe_pg_error(&e))
            })?;
            progress.add_bytes("data", unreported);
            unreported = 0;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.split().freeze()).await.map_err(|e| {
            anyhow::anyhow!("{}: writing the shadow: {}", what(), describe_pg_error(&e))
        })?;
    }
    progress.add_bytes("data", unreported);
    let stored = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
    let sent = counter
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    if sent != stored {
        if in_txn {
            let _ = dst.batch_execute("ROLLBACK").await;
        }
        bail!(
            "{}: the source sent {sent} rows but the shadow stored {stored}",
            what()
        );
    }
    if in_txn {
        dst.batch_execute("COMMIT")
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
    }
    progress.item_done("data");
    let ms = started.elapsed().as_millis() as u64;
    tracing::debug!(table = %job.name, rows = stored, bytes, ms, binary = job.binary, "table loaded");
    Ok(Loaded {
        name: job.name.clone(),
        rows: stored as i64,
        bytes,
        ms,
        binary: job.binary,
    })
}
