//! The Raft port takes RPCs only with the cluster secret: without
//! it, or with another, nothing reaches Raft (no vote, no appended entry, no snapshot or data
//! file read); a node needs the secret to join a cluster or to restart as a member of one.

use std::time::Duration;

use tidemark_proto::raft::RaftMessage;
use tidemark_proto::raft::raft_service_client::RaftServiceClient;
use tonic::Code;

use crate::harness::{CLUSTER_SECRET, MemberAddrs, TestNode};

/// Calls `vote` and `read_snapshot_file` on the Raft port at `raft` with `secret` (and a body
/// that is not a Raft message): the status codes and messages of both answers.
fn call_raft(raft: &str, secret: Option<&str>) -> Vec<(Code, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = RaftServiceClient::connect(format!("http://{raft}"))
            .await
            .expect("connect to the Raft port");
        let mut out = Vec::new();
        for read_file in [false, true] {
            let mut req = tonic::Request::new(RaftMessage { body: vec![0xc1] });
            if let Some(s) = secret {
                req.metadata_mut()
                    .insert("x-tidemark-cluster-secret", s.parse().expect("metadata"));
            }
            let answer = if read_file {
                client.read_snapshot_file(req).await
            } else {
                client.vote(req).await
            };
            let status =
                answer.expect_err("a body that is no Raft message is never answered with success");
            out.push((status.code(), status.message().to_string()));
        }
        out
    })
}

#[test]
fn the_raft_port_needs_the_cluster_secret() {
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let addrs: Vec<MemberAddrs> = (1..=2).map(MemberAddrs::new).collect();
    let first = TestNode::start_member(dirs[0].path(), &addrs[0], None, &[]);
    first.wait_healthy();

    for (code, message) in call_raft(&addrs[0].raft, None) {
        assert_eq!(code, Code::Unauthenticated, "{message}");
        assert!(message.contains("need the cluster secret"), "{message}");
    }
    for (code, message) in call_raft(&addrs[0].raft, Some("another-secret-just-as-long")) {
        assert_eq!(code, Code::Unauthenticated, "{message}");
        assert!(message.contains("wrong cluster secret"), "{message}");
    }
    // With the secret the message reaches Raft, which finds it undecodable.
    for (code, message) in call_raft(&addrs[0].raft, Some(CLUSTER_SECRET)) {
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.contains("undecodable raft message"), "{message}");
    }

    // No secret, no joining: the node says so and does not start.
    let mut lone =
        TestNode::start_member_with_secret(dirs[1].path(), &addrs[1], Some(&addrs[0].http), None);
    assert_eq!(
        lone.wait_exit(Duration::from_secs(30)),
        Some(1),
        "{}",
        lone.log_text()
    );
    assert!(
        lone.log_text()
            .contains("join: a node joins a cluster only with its cluster_secret"),
        "{}",
        lone.log_text()
    );
    drop(lone);

    // With it, the node joins; restarted without it, the member refuses to start.
    let mut second = TestNode::start_member(dirs[1].path(), &addrs[1], Some(&addrs[0].http), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first.get("/v1/cluster").json()["voters"]
        .as_object()
        .is_none_or(|v| v.len() < 2)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the second node never became a voter:\n{}",
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    second.wait_healthy();
    assert_eq!(second.stop(), Some(0));
    let mut bare = TestNode::start_member_with_secret(dirs[1].path(), &addrs[1], None, None);
    assert_eq!(
        bare.wait_exit(Duration::from_secs(60)),
        Some(70),
        "{}",
        bare.log_text()
    );
    assert!(
        bare.log_text()
            .contains("is one of 2 cluster members but has no cluster_secret"),
        "{}",
        bare.log_text()
    );
}
