//! Backups: the manifests (what each backup holds and where it came from),
//! listing them, verifying a backup against its manifest, and cleaning up old
//! ones. The swap engine (`swap::engine`) makes backups; this room reads,
//! checks and drops them.

pub mod cleanup;
pub mod list;
pub mod manifest;
pub mod verify;
