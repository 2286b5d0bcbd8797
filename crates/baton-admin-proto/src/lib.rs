//! The `baton.admin.v1` admin API, generated from proto/admin.proto: the messages, the
//! client (`admin_client`, used by `batonctl`) and the server trait (`admin_server`,
//! implemented by `baton-admin`), and the encoded descriptors for gRPC reflection.
//!
//! Every message derives `serde::Serialize`, so a reply can be printed as JSON as it is;
//! `Message.body` is serialized as text by [`body_as_text`]. Nothing else lives here: this
//! crate depends on tonic, prost and serde only, so a client need not pull in a node.
#![forbid(unsafe_code)]

tonic::include_proto!("baton.admin.v1");

/// The encoded descriptors of admin.proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");

/// Message bodies in JSON output: as text (lossy), not an array of numbers.
pub fn body_as_text<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}
