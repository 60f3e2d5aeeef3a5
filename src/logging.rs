//! tracing set-up: human-readable lines on stderr (coloured on a terminal), or
//! one JSON object per line with `--log-format json`. RUST_LOG overrides -v/-q.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The default filter for a verbosity level (`-q` negative, `-v` positive).
pub fn default_filter(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "warn,pgshift=info",
        1 => "warn,pgshift=debug",
        _ => "info,pgshift=trace",
    }
}

/// Install the global subscriber. Safe to call once; later calls are ignored.
pub fn init(format: LogFormat, verbosity: i8) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(v).unwrap_or_else(|_| EnvFilter::new(default_filter(verbosity)))
        }
        _ => EnvFilter::new(default_filter(verbosity)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::output::LogStderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
    };
}
