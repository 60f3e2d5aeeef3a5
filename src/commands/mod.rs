//! One module per command. [`run`] dispatches; each command builds the options
//! of the work it asks for from the validated [`Settings`], calls the library
//! and prints the result (text, or one JSON document with `--json`). Each
//! command returns the exit code for a successful run (verify may return 3
//! without an error).

pub mod abort;
pub mod cleanup;
pub mod list;
pub mod prepare;
pub mod rollback;
pub mod start;
pub mod status;
pub mod swap;
pub mod verify;

use anyhow::Result;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::cli::Command;
use crate::config::Settings;
use crate::error::ExitCode;
use crate::migration::session::{RunContext, Session};

/// What every command gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub settings: Settings,
    /// Cancelled on the first SIGINT/SIGTERM.
    pub cancel: CancellationToken,
    pub command: &'static str,
}

impl Ctx {
    /// What the library needs of this run.
    pub fn run_context(&self) -> RunContext {
        RunContext {
            command: self.command,
            cancel: self.cancel.clone(),
            connect_timeout: self.settings.connect_timeout,
        }
    }

    /// A read-only session on the destination (no run lock).
    pub async fn connect_dest(&self) -> Result<Client> {
        let dest = self.settings.require_dest()?;
        self.run_context().connect(dest, "destination").await
    }

    /// The destination with the run lock and the state file, for a mutating command.
    pub async fn open_session(&self) -> Result<Session> {
        let dest = self.settings.require_dest()?;
        Session::open(&self.run_context(), dest, &self.settings.state_dir).await
    }
}

/// Run one command.
pub async fn run(command: Command, ctx: Ctx) -> Result<ExitCode> {
    let name = command.name();
    tracing::debug!(command = name, settings = ?ctx.settings, "starting");
    let result = match command {
        Command::Prepare(_) => prepare::run(ctx).await,
        Command::Swap(a) => swap::run(a, ctx).await,
        Command::Start(_) => start::run(ctx).await,
        Command::Status(_) => status::run(ctx).await,
        Command::List(_) => list::run(ctx).await,
        Command::Rollback(a) => rollback::run(a, ctx).await,
        Command::Cleanup(a) => cleanup::run(a, ctx).await,
        Command::Verify(a) => verify::run(a, ctx).await,
        Command::Abort(_) => abort::run(ctx).await,
    };
    result.map_err(|e| {
        if e.chain().any(|c| c.is::<crate::error::UserError>()) {
            e
        } else {
            e.context(format!("{name} failed"))
        }
    })
}
