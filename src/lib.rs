//! pgshift: move a whole PostgreSQL database into a running destination without downtime.
//!
//! The binary (`src/main.rs`) is a thin wrapper around [`run`]; integration tests
//! reach the internals through this library target.

pub mod argv_scrub;
pub mod backups;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dump;
pub mod error;
pub mod logging;
pub mod migration;
pub mod output;
pub mod pg;
pub mod prepare;
pub mod process;
pub mod swap;
pub mod words;

pub use error::{ExitCode, UserError};
