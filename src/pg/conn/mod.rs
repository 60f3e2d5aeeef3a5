//! Reaching a server: what the user wrote (libpq URLs, key=value conninfo,
//! `PG*` environment, service files, `.pgpass`) becomes a [`connspec::ConnSpec`];
//! [`connect`] opens sessions from it (TLS by `sslmode` in [`tls`], with libpq's
//! certificate rules in [`libpq_x509`], retries on
//! refused or reset connections, clear error text, pools, cancel requests).
//! Secrets stay in the spec: children get them through their environment,
//! never argv, and every printed form is redacted.

pub mod connect;
pub mod connspec;
pub mod libpq_x509;
pub mod service;
pub mod tls;
