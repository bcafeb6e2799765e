//! tidemark-proto: the gRPC definitions in `proto/` and the code tonic/prost generate from
//! them. No logic lives here.

/// Node-to-node Raft RPC (`proto/raft.proto`).
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod raft {
    tonic::include_proto!("tidemark.raft.v1");
}

/// The management API (`proto/admin.proto`), the HTTP API's twin.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod admin {
    tonic::include_proto!("tidemark.admin.v1");
}
