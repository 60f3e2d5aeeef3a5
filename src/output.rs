//! Output for people (aligned tables on stdout) and machines (`--json`).

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// RFC 3339 in UTC with milliseconds (`2025-07-15T08:30:00.123Z`).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `2025-07-15 08:30:00` from an RFC 3339 string (UTC).
pub fn short_time(rfc: &str) -> String {
    DateTime::parse_from_rfc3339(rfc)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| rfc.to_string())
}

/// Print one JSON document on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_stdout(format_args!("{text}"));
    Ok(())
}

/// `println!` that never panics: see [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that never panics: see [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: see [`write_stderr`].
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Write to stderr, ignoring a failure: a reader that went away (`2>&1 |
/// head`, a log shipper that died) or a terminal that closed costs the
/// messages, never the run, which goes on to finish or clean up (a failed
/// `eprintln!` panics, mid-run).
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// stderr for the log: writes that fail are dropped, as [`write_stderr`]
/// drops them (tracing-subscriber reports a failed write with `eprint!`,
/// which panics when stderr is what failed).
pub struct LogStderr;

impl Write for LogStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Write to stdout. A reader that went away (`pgshift list | head -1`) ends
/// the process as it ends `cat` or `grep`, by SIGPIPE, quietly: the command's
/// work is done, only its report has no reader. Any other failure (a full
/// disk behind a redirect) is one `error:` line and exit 1. Never a panic,
/// which is what `println!` does.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // SAFETY: restoring the default action of SIGPIPE and raising it
            // ends the process; nothing runs after it.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        crate::errln!("error: writing to standard output: {e}");
        std::process::exit(crate::error::ExitCode::Failure.code());
    }
}

/// A plain aligned table: a header row, then rows; columns padded with two spaces.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right_aligned: Vec<bool>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        let header: Vec<String> = header.into_iter().map(Into::into).collect();
        let right_aligned = vec![false; header.len()];
        Table {
            header,
            rows: Vec::new(),
            right_aligned,
        }
    }

    /// Right-align a column (numbers).
    pub fn right(mut self, col: usize) -> Table {
        if col < self.right_aligned.len() {
            self.right_aligned[col] = true;
        }
        self
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut l = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count();
                if i > 0 {
                    l.push_str("  ");
                }
                if self.right_aligned[i] {
                    l.push_str(&" ".repeat(pad));
                    l.push_str(c);
                } else {
                    l.push_str(c);
                    if i + 1 < cols {
                        l.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&self.header);
        for r in &self.rows {
            line(r);
        }
        out
    }

    pub fn print(&self) {
        crate::out!("{}", self.render());
    }
}

/// Bytes for people: 1.5 MB, 320 kB, 12 B.
/// A backup's schema for a table cell: public's backup schema, followed by
/// the other schemas of a backup of several (`backup_1 (+backup_1_billing)`).
pub fn backup_schema_cell(schema: &str, schemas: &[crate::backups::manifest::SchemaMap]) -> String {
    let others: Vec<&str> = schemas
        .iter()
        .map(|m| m.backup.as_str())
        .filter(|b| *b != schema)
        .collect();
    if others.is_empty() {
        schema.to_string()
    } else {
        format!("{schema} (+{})", others.join(", "))
    }
}

pub fn human_bytes(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Milliseconds for people: 850 ms, 12.3 s, 4m05s.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_alignment() {
        let mut t = Table::new(["name", "rows"]).right(1);
        t.row(["users", "5"]);
        t.row(["x", "12345"]);
        assert_eq!(t.render(), "name    rows\nusers      5\nx      12345\n");
    }

    #[test]
    fn humans() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(12_300), "12.3 s");
        assert_eq!(human_ms(245_000), "4m05s");
    }
}
