//! A Baton node: its components, their actors and their wiring.
//!
//! - [`node::run`] — opens the queue, then starts the node's components in the order it
//!   lists them, and drains them in the reverse order on shutdown;
//! - [`supervisor`] — components (a name, a status, start and drain) under one ractor
//!   supervisor that restarts a crashed component;
//! - [`components`] — each component: the Raft service, HTTP, the admin API,
//!   membership, leadership hand-over, the lease, delivery, events, ingress, readiness;
//! - [`activity`] — tokens for work a drain waits for;
//! - [`config`] — the TOML configuration and its validation;
//! - [`ingress`] — SMTP listeners and sessions driving `baton_smtp`'s session engine;
//! - [`batcher`] — group commit into Raft (the Committer and the OutcomeBatcher);
//! - [`delivery`] — the DeliveryManager, one DomainDelivery per destination domain, and
//!   their connection workers;
//! - [`auth`] — SMTP AUTH against argon2 hashes; [`signing`] — DKIM signatures added at
//!   enqueue;
//! - [`tls`] — inbound TLS configuration;
//! - [`http`] and [`metrics`] — health, readiness and Prometheus metrics;
//! - [`events`] — event-log retention; [`webhook`] — events POSTed to a URL (the admin
//!   API itself is `baton_admin::server`).
//!
//! This is the only crate that knows ractor: below it (`baton-queue`, `baton-cluster`,
//! `baton-delivery`, `baton-smtp`) everything is testable without actors.
#![forbid(unsafe_code)]

/// Prints a start-up line on standard output. A closed or full stdout (an init system
/// that stopped reading, a test that read what it needed) must not stop the relay, so
/// write errors are ignored rather than panicking as `println!` does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

pub mod activity;
pub mod auth;
pub mod batcher;
pub mod components;
pub mod config;
pub mod delivery;
pub mod events;
pub mod feedback;
pub mod http;
pub mod ingress;
pub mod logfmt;
pub mod metrics;
pub mod node;
pub mod signing;
pub mod supervisor;
pub mod tls;
pub mod webhook;

pub use config::Config;
pub use node::run;
