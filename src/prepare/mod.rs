//! `prepare`: the phases that restore the source into the destination's shadow,
//! their read-only preflight checks, the preserved tables' sync, and removing a
//! prepared migration again.

pub mod copycount;
pub mod data;
pub mod discard;
pub mod downgrade;
pub mod filters;
pub mod phases;
pub mod postdata;
pub mod preflight;
pub mod privileges;
pub mod progress;
pub mod sync;
