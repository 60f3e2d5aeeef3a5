//! Progress of long phases: a bar (bytes or items, with an ETA) on a terminal,
//! and a plain log line every few seconds otherwise (CI, cron), also while
//! nothing moves ([`Progress::ticking`]): a stalled copy says for how long
//! nothing came, rather than falling silent.

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
    /// When bytes or items last moved.
    last_moved: Instant,
    bar: Option<ProgressBar>,
}

/// Shared by the workers of a phase.
pub struct Progress {
    bars: bool,
    current: Mutex<Option<Current>>,
    /// [`LOG_EVERY`], but in tests.
    log_every: Duration,
}

impl Progress {
    /// `bars`: draw bars (stderr is a terminal and output is not JSON).
    pub fn new(bars: bool) -> Progress {
        Progress {
            bars,
            current: Mutex::new(None),
            log_every: LOG_EVERY,
        }
    }

    /// No bars, no log lines (tests, dry runs).
    pub fn hidden() -> Progress {
        Progress {
            bars: false,
            current: Mutex::new(None),
            log_every: LOG_EVERY,
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
                last_moved: now,
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
        if bytes > 0 || items > 0 {
            c.last_moved = Instant::now();
        }
        if let Some(bar) = &c.bar {
            if c.bytes_total > 0 {
                bar.set_position(c.bytes_done.min(c.bytes_total));
                bar.set_message(format!("{}/{} tables", c.items_done, c.items_total));
            } else {
                bar.set_position(c.items_done as u64);
            }
        } else if c.last_log.elapsed() >= self.log_every - self.log_every / 10 {
            // (A tenth early: a tick of `ticking` comes every `log_every`,
            // and the last line was written a moment after the last tick.)
            c.last_log = Instant::now();
            let elapsed = c.started.elapsed().as_secs_f64();
            let still = c.last_moved.elapsed();
            // Whole seconds, or milliseconds below one (tests).
            let still_shown = if still >= Duration::from_secs(1) {
                format!("{} s", still.as_secs())
            } else {
                format!("{} ms", still.as_millis())
            };
            let stalled = if still >= self.log_every {
                format!(" (nothing for {still_shown})")
            } else {
                String::new()
            };
            if c.bytes_total > 0 {
                let frac = c.bytes_done as f64 / c.bytes_total as f64;
                let eta = if frac > 0.0 {
                    elapsed / frac - elapsed
                } else {
                    0.0
                };
                // Nothing done yet tells nothing of the time left.
                let eta = if c.bytes_done == 0 {
                    "eta unknown".to_string()
                } else {
                    format!("eta {:.0} s", eta.max(0.0))
                };
                tracing::info!(
                    phase,
                    "{} of ~{} ({:.0}%), {}/{} tables, {eta}{stalled}",
                    human_bytes(c.bytes_done as i64),
                    human_bytes(c.bytes_total as i64),
                    (frac * 100.0).min(100.0),
                    c.items_done,
                    c.items_total,
                );
            } else {
                tracing::info!(phase, "{}/{} done{stalled}", c.items_done, c.items_total);
            }
        }
    }

    /// `fut`, with `phase`'s progress line logged every [`LOG_EVERY`] while
    /// it runs, whether or not anything moves.
    pub async fn ticking<T>(&self, phase: &str, fut: impl std::future::Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let every = self.log_every;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A late tick is not made up by a burst of them, which the check in
        // `update` would swallow.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = tick.tick() => self.update(phase, 0, 0),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Log lines written to a buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A copy that stalls still logs its line every interval, saying for how
    /// long nothing came (it logged only when bytes arrived: a stalled copy
    /// fell silent).
    #[test]
    fn a_stalled_phase_keeps_logging_and_says_so() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let progress = Progress {
            bars: false,
            current: Mutex::new(None),
            log_every: Duration::from_millis(40),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        progress.start_bytes("data", 1000, 2);
        progress.add_bytes("data", 250);
        rt.block_on(async {
            progress
                .ticking("data", tokio::time::sleep(Duration::from_millis(300)))
                .await
        });
        progress.finish("data");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("(25%)")).collect();
        // Every tick (7 in 300 ms, one more or less on a loaded machine):
        // none skipped (every other one was, at times).
        assert!(lines.len() >= 5, "{text}");
        assert!(lines.iter().all(|l| l.contains("nothing for ")), "{text}");
    }
}
