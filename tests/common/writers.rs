//! Concurrent writers for the race tests (tests/preserved.rs, tests/schemas.rs):
//! each writer owns the ids `≡ part (mod parts)` of one table and runs a mix of
//! inserts, updates (also of the key), deletes, savepoints and rollbacks, so
//! writers never wait on one another and any error is the sync's fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::TestDb;

/// The table the writers write: `table` (as SQL), a text column `name`
/// (NOT NULL allowed), an int column `number`, a text column `note`, an
/// int `id` key drawn from `sequence`.
#[derive(Debug, Clone, Copy)]
pub struct WrittenTable {
    pub table: &'static str,
    pub name: &'static str,
    pub number: &'static str,
    pub sequence: &'static str,
}

/// public.users of tests/preserved.rs.
pub const USERS: WrittenTable = WrittenTable {
    table: "users",
    name: "name",
    number: "score",
    sequence: "users_id_seq",
};

#[derive(Default)]
pub struct Stats {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: std::sync::Mutex<Option<String>>,
    /// Completion times of operations (ms since the epoch).
    pub times: std::sync::Mutex<Vec<i64>>,
}

/// One writer: every statement touches only ids `≡ part (mod parts)` (key
/// changes may move a row to another writer's part, after commit), so writers
/// never wait on one another; any error is the sync's fault.
async fn writer(
    t: WrittenTable,
    c: Client,
    part: i64,
    parts: i64,
    max_id: i64,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
) {
    let mut n: u64 = part as u64 * 7919 + 1;
    let mut next = move || {
        n ^= n << 13;
        n ^= n >> 7;
        n ^= n << 17;
        n
    };
    let pick = |r: u64| -> i64 {
        let id = (r % max_id as u64) as i64 + 1;
        id - id.rem_euclid(parts) + part
    };
    while !stop.load(Ordering::Relaxed) {
        let r = next();
        let id = pick(next());
        let res = match r % 9 {
            0 | 1 => c
                .execute(
                    &format!("INSERT INTO {} ({}, {}, note) VALUES ($1, $2, 'w')", t.table, t.name, t.number),
                    &[&format!("w{part}-{r}"), &((r % 1000) as i32)],
                )
                .await
                .map(|_| ()),
            2 | 3 => c
                .execute(
                    &format!("UPDATE {} SET {n} = {n} + 1, note = $2 WHERE id = $1", t.table, n = t.number),
                    &[&(id as i32), &format!("u{r}")],
                )
                .await
                .map(|_| ()),
            4 => c
                .execute(
                    &format!("UPDATE {} SET {n} = {n} - 1 WHERE id BETWEEN $1 AND $1 + 60 AND id % $2 = $3", t.table, n = t.number),
                    &[&(id as i32), &(parts as i32), &(part as i32)],
                )
                .await
                .map(|_| ()),
            5 => c
                .execute(&format!("DELETE FROM {} WHERE id = $1", t.table), &[&(id as i32)])
                .await
                .map(|_| ()),
            6 => c
                .execute(
                    &format!("UPDATE {} SET id = nextval('{}') WHERE id = $1", t.table, t.sequence),
                    &[&(id as i32)],
                )
                .await
                .map(|_| ()),
            7 => {
                // A transaction with a rolled-back savepoint.
                c.batch_execute(&format!(
                    "BEGIN;
                     UPDATE {tab} SET note = 'tx' WHERE id = {id};
                     SAVEPOINT s;
                     DELETE FROM {tab} WHERE id = {id};
                     INSERT INTO {tab} ({name}) VALUES ('gone');
                     ROLLBACK TO SAVEPOINT s;
                     INSERT INTO {tab} ({name}, note) VALUES ('tx', 'kept');
                     COMMIT;",
                    tab = t.table,
                    name = t.name
                ))
                .await
            }
            _ => {
                // A rolled-back transaction.
                c.batch_execute(&format!(
                    "BEGIN; DELETE FROM {tab} WHERE id = {id}; INSERT INTO {tab} ({name}) VALUES ('rolled back'); ROLLBACK;",
                    tab = t.table,
                    name = t.name
                ))
                .await
            }
        };
        match res {
            Ok(()) => {
                stats.ops.fetch_add(1, Ordering::Relaxed);
                stats
                    .times
                    .lock()
                    .unwrap()
                    .push(Utc::now().timestamp_millis());
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                stats.errors.fetch_add(1, Ordering::Relaxed);
                {
                    let mut first = stats.first_error.lock().unwrap();
                    if first.is_none() {
                        *first = Some(format!("{e:?}"));
                    }
                }
                if c.is_closed() {
                    return;
                }
            }
        }
        // Futures on a closed connection complete at once: yield so the
        // runtime can always stop this task.
        tokio::task::yield_now().await;
    }
}

pub struct Writers {
    stop: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn start_writers(db: &TestDb, t: WrittenTable, parts: i64, max_id: i64) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    for part in 0..parts {
        let c = db.client().await;
        tasks.push(tokio::spawn(writer(
            t,
            c,
            part,
            parts,
            max_id,
            stop.clone(),
            stats.clone(),
        )));
    }
    Writers { stop, stats, tasks }
}

impl Writers {
    pub async fn stop(self) -> Arc<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.stats
    }
}

pub fn assert_no_writer_errors(stats: &Stats) {
    assert_eq!(
        stats.errors.load(Ordering::Relaxed),
        0,
        "the application saw errors; first: {:?}",
        stats.first_error.lock().unwrap()
    );
}

/// When prepare ran its sync phase (the initial copy), from its record.
pub async fn sync_phase_window(c: &Client) -> (i64, i64) {
    let v: serde_json::Value = c
        .query_one(
            "SELECT p FROM pgshift.migration m, jsonb_array_elements(m.state->'phases') p
              WHERE p->>'name' = 'sync' ORDER BY m.id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let t = |k: &str| {
        v[k].as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_millis()
    };
    (t("started_at"), t("finished_at"))
}

impl Stats {
    /// At least 20 writes completed between `from` and `to` (ms since the
    /// epoch): the writers really ran while that happened.
    pub fn assert_wrote_during(&self, from: i64, to: i64) -> usize {
        let during = self
            .times
            .lock()
            .unwrap()
            .iter()
            .filter(|t| (from..=to).contains(*t))
            .count();
        assert!(
            during >= 20,
            "only {during} writes landed during the sync phase ({} ms)",
            to - from
        );
        during
    }
}
