//! The swap: the engine shared by `swap` and `rollback` and its two modes
//! (schema renames, or object by object), the swap of a prepared migration
//! (cutover), the fence it puts on the sequences it carries over, and the
//! rollback to a backup.

pub mod cutover;
pub mod engine;
pub mod fence;
pub mod impact;
pub mod mode;
pub mod rollback;
