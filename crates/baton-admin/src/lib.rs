//! Baton's admin side: the `baton.admin.v1.Admin` gRPC service (proto/admin.proto) that
//! every node serves on `admin.listen`, and the generated client `batonctl` uses.
//!
//! - [`server`] — the service over a node's queue: reads from the local applied state,
//!   changes written through Raft (forwarded to the leader by [`baton_cluster::Writer`]);
//!   bearer-token authentication; gRPC reflection and health beside it.
#![forbid(unsafe_code)]
#![allow(clippy::result_large_err)]

pub mod server;

/// Generated from proto/admin.proto.
pub mod pb {
    tonic::include_proto!("baton.admin.v1");

    /// The encoded descriptors of admin.proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
}

/// Message bodies in JSON output: as text (lossy), not an array of numbers.
pub fn body_as_text<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}
