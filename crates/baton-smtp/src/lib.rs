//! Sans-IO SMTP for Baton: parsers and session engines with no sockets and no async.
//!
//! Layout, one module per concern:
//! - [`reply`] — [`reply::Reply`] values and the client-side [`reply::ReplyParser`].
//! - [`replies`] — every reply Baton itself sends, defined once and used by name.
//! - [`address`] — RFC 5321/6531 mailboxes and paths.
//! - [`command`] — parse one command line into a [`command::Command`] or an error reply.
//! - [`line`] — [`line::LineReader`], bounded command line reading.
//! - [`data`] — DATA decoding (dot-unstuffing, strict `CRLF.CRLF`), BDAT chunks, and
//!   dot-stuffing for the sending side.
//! - [`proxy`] — HAProxy PROXY protocol v1 and v2 headers.
//! - [`server`] — [`server::ServerSession`], the inbound session engine:
//!   `handle(Event) -> Vec<Action>`.
//! - [`client`] — [`client::ClientSession`], the outbound session engine.
//!
//! The IO layer (in `baton-node` and `baton-delivery`) moves bytes between sockets and
//! these engines and performs the actions they ask for (TLS upgrades, credential checks,
//! enqueueing); every protocol decision is made here and tested without sockets.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod header;
pub mod line;
pub mod proxy;
pub mod replies;
pub mod reply;
pub mod server;

pub use address::{Mailbox, ReversePath};
pub use reply::{EnhancedCode, Reply};
