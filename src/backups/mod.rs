//! Backups: describing a schema for its manifest, verifying a backup against it.

pub mod manifest;
pub mod verify;
