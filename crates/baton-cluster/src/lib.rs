//! Baton nodes talking to each other: the Raft network over tonic gRPC, the Raft
//! service peers call, writes forwarded from followers to the leader, and joins.
//!
//! - [`network`] — openraft's `RaftNetworkFactory` over tonic: one lazily connected
//!   channel per peer address, reused by every RPC;
//! - [`server`] — the `baton.raft.v1.Raft` service (proto/raft.proto): Raft RPCs into the
//!   local openraft, forwarded writes, join requests;
//! - [`writer`] — [`Writer`]: a write from any node, forwarded to the leader when this
//!   node is a follower, following leader changes; how it is carried is a [`Forward`]
//!   (gRPC through [`Peers`] here, an in-memory router in the in-process cluster tests);
//! - [`join`] — a node with no state asking a seed to add it;
//! - [`lease`] — renewing this node's delivery lease; on the leader, expiring others';
//! - [`catch_up`] — a (re)starting node reaching the leader's commit index before it delivers;
//! - [`handover`] — a draining leader handing leadership to an up-to-date voter;
//! - [`tls`] — peer mutual TLS: the `cluster.tls_*` files, checked, as tonic's server
//!   and client TLS.
//!
//! Raft messages cross the wire as bincode of openraft's serde types inside a gRPC
//! `Payload`.
#![forbid(unsafe_code)]
#![allow(clippy::result_large_err)]

pub mod catch_up;
pub mod handover;
pub mod join;
pub mod lease;
pub mod network;
pub mod server;
pub mod tls;
pub mod writer;

/// Generated from proto/raft.proto.
pub mod pb {
    tonic::include_proto!("baton.raft.v1");
}

pub use lease::Lease;
pub use network::{GrpcNetwork, Peers};
pub use server::RaftService;
pub use tls::PeerTls;
pub use writer::{Forward, ForwardFailed, Writer};

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, tonic::Status> {
    bincode::serialize(value).map_err(|e| tonic::Status::internal(format!("encode: {e}")))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, tonic::Status> {
    bincode::deserialize(bytes).map_err(|e| tonic::Status::invalid_argument(format!("decode: {e}")))
}
