//! The one lifecycle of a migration, used by the state file and by the
//! destination's `pgshift.migration` record alike.
//!
//! ```text
//!             prepare                 swap (one transaction)
//!   ──────► preparing ──► prepared ──► swapping ──► swapped
//!               │             │            │
//!               ▼             ▼            └─(rolled back)──► prepared
//!             failed       aborted
//! ```
//!
//! A record is written with its status at every step; `swapped` is written
//! inside the swap's own COMMIT, together with the backup's manifest, so "did
//! the swap commit?" has one answer. What the destination as a whole looks like
//! (a run died, a swap committed but its run stopped, leftovers) is derived
//! from these records and the catalog in [`super::derive`].
//!
//! Statuses and phases are enums; their words (`prepared`, `data`, …) appear
//! only in their own (de)serialisation here. Records written by earlier
//! versions hold `idle` in the JSON copy of a finished migration; that word
//! reads as `swapped`, and the row's own `status` column (always the precise
//! word) wins when a record is read from the destination.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Preparing,
    Prepared,
    Swapping,
    #[serde(alias = "idle")]
    Swapped,
    Failed,
    Aborted,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Preparing,
        Status::Prepared,
        Status::Swapping,
        Status::Swapped,
        Status::Failed,
        Status::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Preparing => "preparing",
            Status::Prepared => "prepared",
            Status::Swapping => "swapping",
            Status::Swapped => "swapped",
            Status::Failed => "failed",
            Status::Aborted => "aborted",
        }
    }

    /// Finished for good: swapped into public, or aborted.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Swapped | Status::Aborted)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        if s == "idle" {
            return Ok(Status::Swapped);
        }
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown migration status {s:?}"))
    }
}

/// The steps of a migration: prepare's phases, then the swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Snapshot,
    Dump,
    Schema,
    Data,
    Indexes,
    Sequences,
    Matviews,
    Sync,
    Analyze,
    Privileges,
    Validate,
    Swap,
}

impl Phase {
    /// Prepare's phases, in execution order.
    pub const PREPARE: [Phase; 11] = [
        Phase::Snapshot,
        Phase::Dump,
        Phase::Schema,
        Phase::Data,
        Phase::Indexes,
        Phase::Sequences,
        Phase::Matviews,
        Phase::Sync,
        Phase::Analyze,
        Phase::Privileges,
        Phase::Validate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Snapshot => "snapshot",
            Phase::Dump => "dump",
            Phase::Schema => "schema",
            Phase::Data => "data",
            Phase::Indexes => "indexes",
            Phase::Sequences => "sequences",
            Phase::Matviews => "matviews",
            Phase::Sync => "sync",
            Phase::Analyze => "analyze",
            Phase::Privileges => "privileges",
            Phase::Validate => "validate",
            Phase::Swap => "swap",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Phase, String> {
        Phase::PREPARE
            .into_iter()
            .chain([Phase::Swap])
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

/// How one phase went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseStatus {
    Running,
    Done,
    Failed,
    Skipped,
}

impl PhaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Running => "running",
            PhaseStatus::Done => "done",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for PhaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        }
        for p in Phase::PREPARE.into_iter().chain([Phase::Swap]) {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!("swaped".parse::<Status>().is_err());
    }

    #[test]
    fn earlier_records_read() {
        // Finished migrations were recorded as `idle` inside the JSON copy.
        assert_eq!(
            serde_json::from_str::<Status>("\"idle\"").unwrap(),
            Status::Swapped
        );
        assert_eq!("idle".parse::<Status>().unwrap(), Status::Swapped);
    }
}
