//! The prepare pipeline, the swap and the sync triggers.
