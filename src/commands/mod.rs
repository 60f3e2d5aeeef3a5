//! One module per command. [`run`] dispatches; each command returns the exit
//! code for a successful run (verify may return 3 without an error).

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::cli::Command;
use crate::config::Settings;
use crate::error::ExitCode;

/// What every command gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub settings: Settings,
    /// Cancelled on the first SIGINT/SIGTERM.
    pub cancel: CancellationToken,
    pub command: &'static str,
}

/// Run one command.
pub async fn run(command: Command, ctx: Ctx) -> Result<ExitCode> {
    let _ = &ctx;
    Err(anyhow::anyhow!("{} is not implemented yet", command.name()))
}
