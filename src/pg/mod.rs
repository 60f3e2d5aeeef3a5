//! Everything that talks to PostgreSQL: reaching a server ([`conn`]: specs,
//! service files, TLS, connecting and pooling), running SQL with one retry
//! policy ([`exec`]), identifier quoting, table patterns ([`pattern`]), the
//! advisory lock, catalog queries, the fixed settings under which values
//! travel as text ([`settings`]),
//! pgshift's own schema, and the lock table: what a transaction may take
//! ([`locks_budget`]) and work split to fit it ([`batch`]).

pub mod batch;
pub mod catalog;
pub mod conn;
pub mod exec;
pub mod ident;
pub mod lock;
pub mod locks_budget;
pub mod meta;
pub mod objects;
pub mod pattern;
pub mod settings;
