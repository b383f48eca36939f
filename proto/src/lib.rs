//! Protobuf types and gRPC stubs for the `agentplane.v1` API.
//!
//! Clients and servers sit behind the `client` and `server` features so a worker builds only
//! the client it needs. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

/// The `agentplane.v1` package.
pub mod v1 {
    #![allow(
        clippy::all,
        missing_docs,
        reason = "generated code; its documentation comes from the proto files"
    )]
    tonic::include_proto!("agentplane.v1");
}

/// Encoded `FileDescriptorSet` of every agentplane proto, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agentplane_descriptor");
