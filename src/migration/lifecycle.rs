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

use crate::words::words;

words! {
    /// Where a migration stands.
    pub enum Status("migration status") {
        Preparing = "preparing",
        Prepared = "prepared",
        Swapping = "swapping",
        Swapped = "swapped" | "idle",
        Failed = "failed",
        Aborted = "aborted",
    }
}

impl Status {
    /// Finished for good: swapped into public, or aborted.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Swapped | Status::Aborted)
    }
}

words! {
    /// The steps of a migration: prepare's phases, then the swap.
    pub enum Phase("phase") {
        Snapshot = "snapshot",
        Dump = "dump",
        Schema = "schema",
        Data = "data",
        Indexes = "indexes",
        Sequences = "sequences",
        Sync = "sync",
        Matviews = "matviews",
        Analyze = "analyze",
        Privileges = "privileges",
        Validate = "validate",
        Swap = "swap",
    }
}

impl Phase {
    /// Prepare's phases, in execution order: every phase but the swap.
    pub const PREPARE: [Phase; 11] = [
        Phase::Snapshot,
        Phase::Dump,
        Phase::Schema,
        Phase::Data,
        Phase::Indexes,
        Phase::Sequences,
        Phase::Sync,
        Phase::Privileges,
        Phase::Matviews,
        Phase::Analyze,
        Phase::Validate,
    ];
}

words! {
    /// How one phase went.
    pub enum PhaseStatus {
        Running = "running",
        Done = "done",
        Failed = "failed",
        Skipped = "skipped",
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
        for p in PhaseStatus::ALL {
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
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
