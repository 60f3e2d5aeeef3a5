//! pg_dump / pg_restore output: splitting it into entries and remapping schemas.

pub mod sql;
