//! The swap: the engine shared by `swap` and `rollback`, the swap of a prepared
//! migration (cutover), and the rollback to a backup.

pub mod cutover;
pub mod engine;
pub mod rollback;
