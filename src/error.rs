//! Error kinds that map to exit codes. Everything else is an anyhow chain (exit 1).

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Verification = 3,
    Interrupted = 130,
}

/// Bad input from the user: flags, environment, config file, names. Exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);
