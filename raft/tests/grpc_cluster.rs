//! Three Raft nodes in one process, each with its own tonic server on a loopback port: the
//! same replication and agreement checks as `cluster.rs`, over the real RPC layer.

mod common;

use tidemark_raft::network::{GrpcNetwork, raft_service};
use tidemark_raft::{ClusterSecret, NodeId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_over_grpc_agree_byte_for_byte() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(l.local_addr().expect("addr").to_string());
        listeners.push(l);
    }
    let secret = ClusterSecret::new("grpc-cluster-test-secret").expect("secret");
    let mut members = Vec::new();
    for (i, (d, l)) in dirs.iter().zip(listeners).enumerate() {
        let network = GrpcNetwork {
            secret: Some(secret.clone()),
            ..GrpcNetwork::default()
        };
        let m = common::start(i as NodeId + 1, d.path(), network).await;
        m.snapshots.set_cluster_secret(secret.clone());
        let id = i as NodeId + 1;
        let service = raft_service(
            m.raft.clone(),
            m.snapshots.clone(),
            m.engine.clone(),
            id,
            &secret,
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        members.push(m);
    }
    common::write_and_compare(&members, &addrs, &dirs).await;
}
