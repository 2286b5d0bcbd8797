//! Test and benchmark tooling for Baton.
//!
//! * [`sink`]: an in-process SMTP sink server (used by the `baton-sink`
//!   binary, by end-to-end tests and by the `baton-load` tool).
//! * [`rules`]: scripted replies for the sink (`baton-sink --rules FILE`).

pub mod client;
pub mod message;
pub mod rules;
pub mod sink;
