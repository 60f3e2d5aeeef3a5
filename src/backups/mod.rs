//! Backups: the manifests (what each backup holds and where it came from),
//! listing them, the objects a backup holds besides its tables, verifying a
//! backup against its manifest, and cleaning up old ones. The swap engine (`swap::engine`) makes backups; this room reads,
//! checks and drops them.

pub mod cleanup;
pub mod list;
pub mod manifest;
pub mod objects;
pub mod verify;
