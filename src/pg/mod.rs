//! Everything that talks to PostgreSQL: connection specs, TLS, connecting and
//! pooling, identifier quoting, the advisory lock, catalog queries.

pub mod batch;
pub mod catalog;
pub mod connect;
pub mod connspec;
pub mod ident;
pub mod lock;
pub mod locks_budget;
pub mod meta;
pub mod objects;
pub mod tls;
