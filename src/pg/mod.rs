//! Everything that talks to PostgreSQL: connection specs, TLS, connecting and
//! pooling, service files, identifier quoting, the advisory lock, catalog queries.

pub mod catalog;
pub mod connect;
pub mod connspec;
pub mod exec;
pub mod ident;
pub mod lock;
pub mod meta;
pub mod objects;
pub mod service;
pub mod tls;
