//! The data phase: table data streamed from the source to the destination's
//! shadow, `COPY … TO STDOUT` → `COPY … FROM STDIN`, with no intermediate disk.
//!
//! - Every source session imports the prepare's exported snapshot, so all
//!   tables come from one consistent point in time.
//! - Each table is loaded in the transaction that truncates it, so COPY can use
//!   FREEZE (rows are written frozen: no later anti-wraparound rewrite, and with
//!   `wal_level = minimal` no WAL).
//! - Binary format where every column type round-trips between two databases;
//!   text otherwise.
//! - Rows are counted in the stream and compared with what COPY stored.
//! - Largest tables first over `--jobs` workers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::error::Interrupted;
use crate::pg::catalog::TableInfo;
use crate::pg::connect::{connect, describe_pg_error};
use crate::pg::connspec::ConnSpec;
use crate::pg::ident::{qualified, quote_ident};
use crate::pipeline::copycount::RowCounter;
use crate::pipeline::progress::Progress;

/// One table to load.
#[derive(Debug, Clone)]
pub struct CopyJob {
    pub name: String,
    pub columns: Vec<String>,
    pub binary: bool,
    pub bytes: i64,
}

impl CopyJob {
    pub fn for_table(t: &TableInfo) -> CopyJob {
        let cols = t.copy_columns();
        CopyJob {
            name: t.name.clone(),
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
    pub from_schema: &'a str,
    pub to_schema: &'a str,
    pub workers: usize,
    pub connect_timeout: Duration,
    pub cancel: &'a CancellationToken,
    pub progress: &'a Progress,
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

/// Load every job; returns one [`Loaded`] per table.
pub async fn load_all(plan: &DataPlan<'_>, mut jobs: Vec<CopyJob>) -> Result<Vec<Loaded>> {
    jobs.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    let total_bytes: i64 = jobs.iter().map(|j| j.bytes.max(0)).sum();
    plan.progress
        .start_bytes("data", total_bytes.max(0) as u64, jobs.len());
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let failed = CancellationToken::new();
    let workers = plan
        .workers
        .max(1)
        .min(queue.lock().map(|q| q.len()).unwrap_or(1).max(1));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(worker(plan, queue.clone(), results.clone(), failed.clone()));
    }
    let outcomes = futures_util::future::join_all(tasks).await;
    plan.progress.finish("data");
    // Report the first real error (not the "stopped because another failed").
    let mut first: Option<anyhow::Error> = None;
    for o in outcomes {
        if let Err(e) = o {
            let secondary = e.chain().any(|c| c.to_string() == STOPPED);
            if first.is_none()
                || (!secondary
                    && first
                        .as_ref()
                        .is_some_and(|f| f.chain().any(|c| c.to_string() == STOPPED)))
            {
                first = Some(e);
            }
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    let mut out = Arc::try_unwrap(results)
        .map_err(|_| anyhow::anyhow!("workers still running"))?
        .into_inner()
        .unwrap_or_default();
    out.sort_by(|a: &Loaded, b| a.name.cmp(&b.name));
    Ok(out)
}

const STOPPED: &str = "stopped: another table failed";

async fn worker(
    plan: &DataPlan<'_>,
    queue: Arc<Mutex<VecDeque<CopyJob>>>,
    results: Arc<Mutex<Vec<Loaded>>>,
    failed: CancellationToken,
) -> Result<()> {
    let src = source_in_snapshot(plan.source, plan.snapshot, plan.connect_timeout).await?;
    let dst = connect(
        plan.dest,
        "destination",
        "pgshift prepare",
        plan.connect_timeout,
    )
    .await?;
    dst.batch_execute("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'")
        .await
        .context("configuring a destination session")?;
    crate::pg::connect::watch_client(&dst).await;
    loop {
        if plan.cancel.is_cancelled() {
            return Err(anyhow::Error::new(Interrupted));
        }
        if failed.is_cancelled() {
            bail!(STOPPED);
        }
        let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            break;
        };
        let r = tokio::select! {
            biased;
            _ = plan.cancel.cancelled() => Err(anyhow::Error::new(Interrupted)),
            _ = failed.cancelled() => Err(anyhow::anyhow!(STOPPED)),
            r = copy_table(plan, &src, &dst, &job) => r,
        };
        if r.is_err() {
            // Stop the server side at once rather than when it next talks to us.
            crate::pg::connect::cancel_running(&dst, plan.dest).await;
            crate::pg::connect::cancel_running(&src, plan.source).await;
        }
        match r {
            Ok(l) => {
                if let Ok(mut v) = results.lock() {
                    v.push(l);
                }
            }
            Err(e) => {
                failed.cancel();
                return Err(e);
            }
        }
    }
    Ok(())
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
            job.columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let target = qualified(plan.to_schema, &job.name);
    let source_rel = qualified(plan.from_schema, &job.name);
    let fmt = if job.binary {
        "FORMAT binary"
    } else {
        "FORMAT text"
    };
    let what = || format!("loading {}", crate::pg::ident::display_ident(&job.name));

    dst.batch_execute(&format!("BEGIN; TRUNCATE ONLY {target}"))
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
    let copy_in = format!("COPY {target} {cols} FROM STDIN ({fmt}, FREEZE)");
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
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(what)?;
        counter
            .feed(&chunk)
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        bytes += chunk.len() as u64;
        progress.add_bytes("data", chunk.len() as u64);
        sink.send(chunk).await.map_err(|e| {
            anyhow::anyhow!("{}: writing the shadow: {}", what(), describe_pg_error(&e))
        })?;
    }
    let stored = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
    let sent = counter
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    if sent != stored {
        let _ = dst.batch_execute("ROLLBACK").await;
        bail!(
            "{}: the source sent {sent} rows but the shadow stored {stored}",
            what()
        );
    }
    dst.batch_execute("COMMIT")
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe_pg_error(&e)))?;
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
