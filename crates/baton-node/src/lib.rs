//! A Baton node: the actors and their wiring.
//!
//! - [`config`] — the TOML configuration and its validation;
//! - [`node::run`] — opens the queue, starts the actors, listeners and HTTP, and drains
//!   on shutdown;
//! - [`ingress`] — SMTP listeners and sessions (IngressListener, IngressSession);
//! - [`batcher`] — group commit into Raft (the Committer and the OutcomeBatcher);
//! - [`delivery`] — DeliveryManager and one DomainDelivery per destination domain;
//! - [`auth`] — SMTP AUTH against argon2 hashes;
//! - [`tls`] — inbound TLS configuration;
//! - [`http`] and [`metrics`] — health, readiness and Prometheus metrics;
//! - [`events`] — event-log retention; [`webhook`] — events POSTed to a URL (the admin
//!   API itself is `baton_admin::server`).
//!
//! This is the only crate that knows ractor.
#![forbid(unsafe_code)]

pub mod auth;
pub mod batcher;
pub mod config;
pub mod delivery;
pub mod events;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod node;
pub mod tls;
pub mod webhook;

pub use config::Config;
pub use node::run;
