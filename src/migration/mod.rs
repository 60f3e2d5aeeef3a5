//! A migration's lifecycle and its records: the one lifecycle type, the record
//! (state file and `pgshift.migration`), the run session (advisory lock,
//! control session) with the recorder of phases, and where the destination
//! stands — derived in one place, reported by `status`.

pub mod derive;
pub mod lifecycle;
pub mod record;
pub mod session;
pub mod state_file;
pub mod status;
