//! Reaching a server: what the user wrote (libpq URLs, key=value conninfo,
//! `PG*` environment, service files, `.pgpass`) becomes a [`connspec::ConnSpec`];
//! [`connect`] opens sessions from it (TLS by `sslmode` in [`tls`], with libpq's
//! certificate rules in [`libpq_x509`], retries on
//! refused or reset connections, clear error text, pools, cancel requests).
//! Secrets stay in the spec: children get them through their environment,
//! never argv, and every printed form is redacted.

/// The sessions pgshift holds on a server at once, at the least: a lock
/// session, a control session and one worker (the restore, a copy, the
/// swap's transaction). `--max-connections` may not be lower, and prepare
/// refuses a destination whose connection limits are.
pub const MIN_CONNECTIONS: usize = 3;

pub mod connect;
pub mod connspec;
pub mod libpq_x509;
pub mod service;
pub mod tls;
