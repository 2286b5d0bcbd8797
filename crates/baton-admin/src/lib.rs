//! Baton's admin service: the `baton.admin.v1.Admin` gRPC service (proto/admin.proto)
//! that every node serves on `admin.listen`.
//!
//! - [`server`] — the service over a node's queue: reads from the local applied state,
//!   changes written through Raft (forwarded to the leader by [`baton_cluster::Writer`]);
//! - [`serve`] — serving it: bearer-token authentication, TLS, gRPC reflection and
//!   health beside it;
//! - `bulk` — `RetryQueue` and `DeleteQueue`: every message of a domain (or all), in
//!   batches of one log entry, and the DSN of an operator's delete;
//! - [`convert`] — queue records into API messages, and the checks of request fields;
//! - `tenants` — the tenant RPCs (list, show, pause, resume) and tenant-scoped
//!   suppressions.
//! - [`pb`] — the generated API, from the `baton-admin-proto` crate (which the `batonctl`
//!   crate uses too, without this one).
#![forbid(unsafe_code)]
#![allow(clippy::result_large_err)]

mod bulk;
pub mod convert;
pub mod serve;
pub mod server;
mod sites;
mod tenants;

/// Generated from proto/admin.proto (the `baton-admin-proto` crate).
pub use baton_admin_proto as pb;
