//! Progress of long phases: a bar (bytes or items, with an ETA) on a terminal,
//! and a plain log line every few seconds otherwise (CI, cron).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::human_bytes;

/// How often a non-terminal run logs progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

struct Current {
    phase: String,
    bytes_total: u64,
    bytes_done: u64,
    items_total: usize,
    items_done: usize,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

/// Shared by the workers of a phase.
pub struct Progress {
    bars: bool,
    current: Mutex<Option<Current>>,
}

impl Progress {
    /// `bars`: draw bars (stderr is a terminal and output is not JSON).
    pub fn new(bars: bool) -> Progress {
        Progress {
            bars,
            current: Mutex::new(None),
        }
    }

    /// No bars, no log lines (tests, dry runs).
    pub fn hidden() -> Progress {
        Progress {
            bars: false,
            current: Mutex::new(None),
        }
    }

    fn start(&self, phase: &str, bytes_total: u64, items_total: usize) {
        let bar = if self.bars {
            let bar = if bytes_total > 0 {
                ProgressBar::with_draw_target(Some(bytes_total), ProgressDrawTarget::stderr())
                    .with_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    )
            } else {
                ProgressBar::with_draw_target(
                    Some(items_total as u64),
                    ProgressDrawTarget::stderr(),
                )
                .with_style(
                    ProgressStyle::with_template(
                        "{prefix:>8} [{bar:30}] {pos}/{len} eta {eta} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                )
            };
            bar.set_prefix(phase.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        let now = Instant::now();
        if let Ok(mut c) = self.current.lock() {
            *c = Some(Current {
                phase: phase.to_string(),
                bytes_total,
                bytes_done: 0,
                items_total,
                items_done: 0,
                started: now,
                last_log: now,
                bar,
            });
        }
    }

    /// A phase measured in bytes (the data load), with `items` tables.
    pub fn start_bytes(&self, phase: &str, bytes_total: u64, items: usize) {
        self.start(phase, bytes_total, items);
    }

    /// A phase measured in items (index builds).
    pub fn start_items(&self, phase: &str, items: usize) {
        self.start(phase, 0, items);
    }

    pub fn add_bytes(&self, phase: &str, n: u64) {
        self.update(phase, n, 0);
    }

    pub fn item_done(&self, phase: &str) {
        self.update(phase, 0, 1);
    }

    fn update(&self, phase: &str, bytes: u64, items: usize) {
        let Ok(mut guard) = self.current.lock() else {
            return;
        };
        let Some(c) = guard.as_mut() else { return };
        if c.phase != phase {
            return;
        }
        c.bytes_done += bytes;
        c.items_done += items;
        if let Some(bar) = &c.bar {
            if c.bytes_total > 0 {
                bar.set_position(c.bytes_done.min(c.bytes_total));
                bar.set_message(format!("{}/{} tables", c.items_done, c.items_total));
            } else {
                bar.set_position(c.items_done as u64);
            }
        } else if c.last_log.elapsed() >= LOG_EVERY {
            c.last_log = Instant::now();
            let elapsed = c.started.elapsed().as_secs_f64();
            if c.bytes_total > 0 {
                let frac = c.bytes_done as f64 / c.bytes_total as f64;
                let eta = if frac > 0.0 {
                    elapsed / frac - elapsed
                } else {
                    0.0
                };
                tracing::info!(
                    phase,
                    "{} of ~{} ({:.0}%), {}/{} tables, eta {:.0} s",
                    human_bytes(c.bytes_done as i64),
                    human_bytes(c.bytes_total as i64),
                    (frac * 100.0).min(100.0),
                    c.items_done,
                    c.items_total,
                    eta.max(0.0)
                );
            } else {
                tracing::info!(phase, "{}/{} done", c.items_done, c.items_total);
            }
        }
    }

    pub fn finish(&self, phase: &str) {
        if let Ok(mut guard) = self.current.lock()
            && guard.as_ref().is_some_and(|c| c.phase == phase)
            && let Some(c) = guard.take()
            && let Some(bar) = c.bar
        {
            bar.finish_and_clear();
        }
    }
}
