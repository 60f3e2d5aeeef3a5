//! A migration's lifecycle and its records: the state file, the run session
//! (advisory lock, control session) and the recorder of phases.

pub mod session;
pub mod state_file;
