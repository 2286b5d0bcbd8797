//! The replicated queue: Baton's only durable state.
//!
//! Everything that must survive a crash is the Raft state machine defined here, applied
//! identically on every node. The crate owns:
//!
//! - [`types`] — the openraft type configuration, the log commands ([`Request`]) and the
//!   records they create (messages, per-(message, domain) delivery records);
//! - [`db`] — the narrow storage layer over sled ([`db::Store`] is what the state
//!   machine's logic reads and writes). Nothing else in Baton touches sled, so it can be
//!   replaced (fjall, redb) by rewriting one file;
//! - [`log_store`] — the Raft log in [`segments`] files, with group commit: an append is
//!   reported to openraft only after the fdatasync that covers it, and concurrent
//!   appends share one;
//! - [`state_machine`] — applies commands: the key schema, the transaction logic (against
//!   the [`db::Store`] trait, unit-tested without Raft), the reader, body compaction,
//!   snapshots;
//! - [`bodies`] — message bodies in append-only files, referenced from the state;
//! - [`clock`] — the one place the system clock is read;
//! - [`snapshot`] — snapshot files, streamed record by record (never whole in memory);
//! - [`index`] — the in-memory scheduling index (per domain: what is due when), rebuilt
//!   from the state on open and kept current by `apply`;
//! - [`ownership`] — which node delivers which domain: epochs, leases, acknowledgements;
//! - [`network`] — the network factory used by a one-voter cluster (no peers);
//! - [`node`] — [`QueueNode`]: opens the stores, starts openraft and offers the calls the
//!   rest of Baton uses (enqueue, record outcomes, read due work).
//!
//! Time never comes from the clock inside `apply`: commands carry the proposer's time so
//! every replica computes the same state.
#![forbid(unsafe_code)]
// openraft's StorageError is large; every storage function returns it.
#![allow(clippy::result_large_err)]

pub mod bodies;
pub mod clock;
pub mod db;
pub mod index;
pub mod log_store;
pub mod network;
pub mod node;
pub mod ownership;
pub mod segments;
pub mod snapshot;
pub mod state_machine;
pub mod sts;
pub mod types;

pub use node::{QueueError, QueueNode, QueueOptions};
pub use types::{
    DeliveryRecord, MessageMeta, NewMessage, Outcome, Request, Response, TypeConfig, domain_of,
};
