//! Error kinds that map to exit codes. Everything else is an anyhow chain (exit 1).
//!
//! Commands return `anyhow::Result`; `main` walks the error chain with
//! [`exit_code_for`] to pick the documented exit code.

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Verification = 3,
    Interrupted = 130,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Bad input from the user: flags, environment, config file, names. Exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

impl UserError {
    pub fn new(msg: impl Into<String>) -> Self {
        UserError(msg.into())
    }
}

/// A backup or a shadow does not match what was recorded. Exit 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerificationFailed(pub String);

/// The run was stopped by SIGINT or SIGTERM. Exit 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The run lock's destination session ended mid-run (terminated by an
/// administrator, or its connection broke): another run may have taken the
/// lock since, so this one stops at once and changes nothing more, not even
/// to remove what it made. Exit 1.
#[derive(Debug, thiserror::Error)]
#[error(
    "the run lock was lost: its destination session ended (terminated, or its connection broke), so another run may have started; stopped, leaving what this run made as it is (run `pgshift status`)"
)]
pub struct LockLost;

/// A [`UserError`] from `format!` arguments: `Err(user_error!("bad {x}"))`.
#[macro_export]
macro_rules! user_error {
    ($($arg:tt)*) => { anyhow::Error::new($crate::error::UserError(format!($($arg)*))) };
}

/// Refuse bad input: return a [`UserError`] (exit 2) from `format!`
/// arguments, as anyhow's `bail!` does for other errors.
#[macro_export]
macro_rules! refuse {
    ($($arg:tt)*) => { return Err($crate::user_error!($($arg)*)) };
}

/// The exit code for an error chain: the first typed error found wins.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.is::<Interrupted>() {
            return ExitCode::Interrupted;
        }
        if cause.is::<UserError>() {
            return ExitCode::Usage;
        }
        if cause.is::<VerificationFailed>() {
            return ExitCode::Verification;
        }
    }
    ExitCode::Failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_follow_the_chain() {
        let e = Err::<(), _>(UserError::new("bad --before"))
            .context("cleanup")
            .unwrap_err();
        assert_eq!(exit_code_for(&e), ExitCode::Usage);
        assert_eq!(format!("{e:#}"), "cleanup: bad --before");
        let e = anyhow::Error::new(Interrupted).context("prepare: data phase");
        assert_eq!(exit_code_for(&e), ExitCode::Interrupted);
        let e = anyhow::anyhow!("boom");
        assert_eq!(exit_code_for(&e), ExitCode::Failure);
        let e = anyhow::Error::new(VerificationFailed("t: rows 3 != 4".into()));
        assert_eq!(exit_code_for(&e), ExitCode::Verification);
        assert_eq!(ExitCode::Interrupted.code(), 130);
    }
}
