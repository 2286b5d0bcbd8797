//! Outbound delivery: where a domain's mail goes and how it gets there.
//!
//! - [`route`] — MX resolution (hickory), implicit MX, null MX, smarthost;
//! - [`tls`] — the outbound TLS policies (`disabled`, `opportunistic`, `required`);
//! - [`outbound`] — one SMTP client connection driving `baton_smtp::client` over TCP/TLS;
//! - [`reason`] — DNS and connection failures in words an operator can act on;
//! - [`retry`] — retry schedule and expiry;
//! - [`dsn`] — RFC 3464 bounce messages, one builder for delivery and operators;
//! - [`policy`] — the delivery decisions as pure functions: which recipients to send to,
//!   what a transaction's replies mean for each, and the outcome to commit (retry time,
//!   bounce);
//! - [`mta_sts`] — MTA-STS (RFC 8461) records, policies and MX matching, without IO;
//! - [`mta_sts_fetch`] — fetching a domain's policy (TXT record, HTTPS);
//! - [`date`] — RFC 5322 dates.
//!
//! No actors here: `baton-node` decides what to send when, this crate sends it.
#![forbid(unsafe_code)]

pub mod date;
pub mod dsn;
pub mod mta_sts;
pub mod mta_sts_fetch;
pub mod outbound;
pub mod policy;
pub mod reason;
pub mod retry;
pub mod route;
pub mod tls;
