//! The group coordinator (Kafka's classic consumer group protocol) and committed offsets.
//!
//! Membership is soft state here, as in Kafka: members join (JoinGroup), the leader's
//! assignment is handed out (SyncGroup), members heartbeat, and a member that leaves or stops
//! heartbeating triggers a rebalance. Committed offsets are the durable part: each
//! OffsetCommit is a logged command, so offsets survive a restart and every replica agrees.
//!
//! ```text
//!  Empty ─join─► PreparingRebalance ─all joined / timeout─► CompletingRebalance ─leader sync─► Stable
//!    ▲                  ▲                                                                       │
//!    └── last leaves ───┴──────────── join, leave, session expiry ◄─────────────────────────────┘
//! ```
//!
//! Invariants:
//! - Every waiting JoinGroup or SyncGroup is answered: when the round completes, when the
//!   member is removed, or when the rebalance deadline passes (the sweeper).
//! - A member waiting in JoinGroup or SyncGroup is not expired for missing heartbeats.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorAnswer;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tidemark_engine::Applied;
use tidemark_engine::command::{Command, CommittedOffset, OffsetsCommand};
use tokio::sync::oneshot;

use crate::kafka::connection::{Reply, Request, encode, ready};
use crate::kafka::{Broker, code};

const SESSION_TIMEOUT_MIN_MS: i32 = 1_000;
const SESSION_TIMEOUT_MAX_MS: i32 = 1_800_000;
/// Kafka's `offset.metadata.max.bytes`.
const OFFSET_METADATA_MAX_BYTES: usize = 4096;
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long the first round of an empty group waits for more members, as Kafka's
/// `group.initial.rebalance.delay.ms` (default 3 s): consumers started together join one
/// round, instead of the first taking every partition and the next ones waiting for it to
/// notice a rebalance on a heartbeat.
const INITIAL_REBALANCE_DELAY: Duration = Duration::from_secs(3);

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What a waiting JoinGroup is answered with.
#[derive(Debug)]
struct JoinOutcome {
    error: i16,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: String,
    member_id: String,
    /// Only for the leader: every member with its metadata for the chosen protocol.
    members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug)]
struct SyncOutcome {
    error: i16,
    assignment: Bytes,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
    assignment: Bytes,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (KIP-394), and until when they are valid.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// A first round (of an empty group) completes no earlier than this.
    initial_until: Option<Instant>,
}

impl Group {
    fn new() -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            initial_until: None,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == State::CompletingRebalance {
            // Followers waiting for an assignment of the old round must rejoin.
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome {
                        error: code::REBALANCE_IN_PROGRESS,
                        assignment: Bytes::new(),
                    });
                }
            }
        }
        if self.state != State::PreparingRebalance {
            let timeout = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or_default();
            self.rebalance_deadline = Some(now + timeout);
            if self.state == State::Empty {
                self.initial_until = Some(now + INITIAL_REBALANCE_DELAY.min(timeout));
            }
        }
        self.state = State::PreparingRebalance;
    }

    /// Completes the join round if every member has rejoined, or (`force`) drops those that
    /// have not once the deadline passed.
    fn maybe_complete_join(&mut self, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        if !force && (!all_joined || self.initial_until.is_some_and(|t| Instant::now() < t)) {
            return;
        }
        self.members.retain(|_, m| m.join_waiter.is_some());
        self.rebalance_deadline = None;
        self.initial_until = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.choose_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let everyone: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect();
        self.state = State::CompletingRebalance;
        let now = Instant::now();
        for (id, m) in self.members.iter_mut() {
            m.last_seen = now;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome {
                    error: code::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        everyone.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    /// Kafka's vote: each member votes for its most preferred protocol that every member
    /// supports; the most votes win (ties by name, for determinism).
    fn choose_protocol(&self) -> Option<String> {
        let supported_by_all: BTreeSet<&String> = self
            .members
            .values()
            .map(|m| m.protocols.iter().map(|(n, _)| n).collect::<BTreeSet<_>>())
            .reduce(|a, b| a.intersection(&b).copied().collect())
            .unwrap_or_default();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| supported_by_all.contains(n))
            {
                *votes.entry(n).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(n, v)| (*v, std::cmp::Reverse(*n)))
            .map(|(n, _)| n.clone())
    }

    fn remove_member(&mut self, id: &str, now: Instant) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncOutcome {
                    error: code::UNKNOWN_MEMBER_ID,
                    assignment: Bytes::new(),
                });
            }
            if self.members.is_empty() && self.state != State::PreparingRebalance {
                self.state = State::Empty;
                self.generation += 1;
                self.protocol = None;
                self.leader = None;
            } else {
                self.prepare_rebalance(now);
                self.maybe_complete_join(false);
            }
        }
    }

    /// Topics the members subscribed to, from their consumer protocol metadata.
    fn subscribed_topics(&self) -> BTreeSet<String> {
        let protocol = self.protocol.clone().unwrap_or_default();
        self.members
            .values()
            .filter_map(|m| m.protocols.iter().find(|(n, _)| *n == protocol))
            .flat_map(|(_, meta)| subscription_topics(meta))
            .collect()
    }
}

impl JoinOutcome {
    fn error(error: i16, member_id: &str) -> Self {
        JoinOutcome {
            error,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// Reads the topic list of a consumer protocol subscription (version i16, then an array of
/// int16-length strings). Untrusted bytes: every count is checked against what remains.
fn subscription_topics(meta: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(count) = meta
        .get(2..6)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return out;
    };
    let mut pos = 6;
    for _ in 0..count.max(0) {
        let Some(len) = meta
            .get(pos..pos + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
        else {
            break;
        };
        pos += 2;
        let Some(name) = usize::try_from(len)
            .ok()
            .and_then(|l| meta.get(pos..pos + l))
        else {
            break;
        };
        pos += name.len();
        out.push(String::from_utf8_lossy(name).into_owned());
    }
    out
}

/// The groups this node coordinates.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
}

impl Coordinator {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Group>) -> R) -> R {
        f(&mut self.groups.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Expires silent members and finishes overdue rebalances.
    fn sweep(&self, now: Instant) {
        self.with(|groups| {
            for g in groups.values_mut() {
                g.pending.retain(|_, until| *until > now);
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        m.join_waiter.is_none() && m.sync_waiter.is_none() && m.last_seen + m.session_timeout < now
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    tracing::info!(member = %id, "consumer group member expired (no heartbeat within its session timeout)");
                    g.remove_member(&id, now);
                }
                if g.rebalance_deadline.is_some_and(|d| d <= now) {
                    g.maybe_complete_join(true);
                } else if g.initial_until.is_some_and(|t| t <= now) {
                    g.initial_until = None;
                    g.maybe_complete_join(false);
                }
            }
        });
    }
}

pub(crate) fn spawn_expiry(b: Arc<Broker>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            b.coordinator.sweep(Instant::now());
        }
    });
}

pub(crate) fn find_coordinator(
    b: &Broker,
    req: &Request,
    r: FindCoordinatorRequest,
) -> Option<Bytes> {
    let mut resp = FindCoordinatorResponse::default();
    let refusal = (r.key_type != 0).then(|| {
        (
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported by tidemark; use an idempotent producer without transactional.id",
        )
    });
    let (brokers, leader) = b.cluster();
    let coordinator = leader.and_then(|id| brokers.into_iter().find(|a| a.id == id));
    let refusal = refusal.or_else(|| {
        coordinator.is_none().then_some((
            code::COORDINATOR_NOT_AVAILABLE,
            "no leader is elected yet; retry shortly",
        ))
    });
    let (id, host, port) =
        coordinator
            .map(|a| (a.id, s(&a.host), a.port))
            .unwrap_or((-1, s(""), -1));
    if req.version >= 4 {
        resp.coordinators = r
            .coordinator_keys
            .iter()
            .map(|k| {
                let mut c = CoordinatorAnswer::default();
                c.key = k.clone();
                match refusal {
                    Some((err, msg)) => {
                        c.error_code = err;
                        c.error_message = Some(s(msg));
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                    None => {
                        c.node_id = BrokerId(id);
                        c.host = host.clone();
                        c.port = port;
                    }
                }
                c
            })
            .collect();
    } else {
        match refusal {
            Some((err, msg)) => {
                resp.error_code = err;
                if req.version >= 1 {
                    resp.error_message = Some(s(msg));
                }
                resp.node_id = BrokerId(-1);
                resp.port = -1;
            }
            None => {
                resp.node_id = BrokerId(id);
                resp.host = host;
                resp.port = port;
            }
        }
    }
    encode(req, &resp)
}

pub(crate) fn join_group(b: Arc<Broker>, req: Request, r: JoinGroupRequest) -> Reply {
    let group_id = r.group_id.0.to_string();
    let now = Instant::now();
    let immediate = |outcome: JoinOutcome| ready(join_answer(&req, outcome));
    if group_id.is_empty() {
        return immediate(JoinOutcome::error(code::INVALID_GROUP_ID, ""));
    }
    if !b.coordinates() {
        return immediate(JoinOutcome::error(code::NOT_COORDINATOR, &r.member_id));
    }
    if !(SESSION_TIMEOUT_MIN_MS..=SESSION_TIMEOUT_MAX_MS).contains(&r.session_timeout_ms) {
        return immediate(JoinOutcome::error(
            code::INVALID_SESSION_TIMEOUT,
            &r.member_id,
        ));
    }
    let (tx, rx) = oneshot::channel();
    let early = b.coordinator.with(|groups| {
        let g = groups.entry(group_id.clone()).or_insert_with(Group::new);
        let protocol_type = r.protocol_type.to_string();
        let protocols: Vec<(String, Bytes)> = r
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        if protocols.is_empty()
            || g.protocol_type
                .as_ref()
                .is_some_and(|t| *t != protocol_type && !g.members.is_empty())
            || (!g.members.is_empty()
                && !protocols.iter().any(|(n, _)| {
                    g.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(mn, _)| mn == n))
                }))
        {
            return Some(JoinOutcome::error(
                code::INCONSISTENT_GROUP_PROTOCOL,
                &r.member_id,
            ));
        }
        let mut member_id = r.member_id.to_string();
        if member_id.is_empty() {
            member_id = format!(
                "{}-{}",
                if req.client_id.is_empty() {
                    "member"
                } else {
                    &req.client_id
                },
                uuid::Uuid::new_v4()
            );
            if req.version >= 4 {
                let valid_for = Duration::from_millis(r.session_timeout_ms as u64);
                g.pending.insert(member_id.clone(), now + valid_for);
                return Some(JoinOutcome::error(code::MEMBER_ID_REQUIRED, &member_id));
            }
        } else if !g.members.contains_key(&member_id) && g.pending.remove(&member_id).is_none() {
            return Some(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, &member_id));
        }
        g.protocol_type = Some(protocol_type);
        let rebalance_timeout = Duration::from_millis(
            if req.version >= 1 {
                r.rebalance_timeout_ms
            } else {
                r.session_timeout_ms
            }
            .max(0) as u64,
        );
        let member = g
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                instance_id: None,
                client_id: req.client_id.clone(),
                session_timeout: Duration::ZERO,
                rebalance_timeout,
                protocols: Vec::new(),
                last_seen: now,
                join_waiter: None,
                sync_waiter: None,
                assignment: Bytes::new(),
            });
        member.instance_id = r.group_instance_id.as_ref().map(|i| i.to_string());
        member.session_timeout = Duration::from_millis(r.session_timeout_ms as u64);
        member.rebalance_timeout = rebalance_timeout;
        member.protocols = protocols;
        member.last_seen = now;
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(JoinOutcome::error(code::UNKNOWN_MEMBER_ID, &member_id));
        }
        // Any join starts a new round; members learn of it from their heartbeats.
        g.prepare_rebalance(now);
        g.maybe_complete_join(false);
        None
    });
    if let Some(outcome) = early {
        return immediate(outcome);
    }
    Box::pin(async move {
        let outcome = rx
            .await
            .unwrap_or_else(|_| JoinOutcome::error(code::UNKNOWN_MEMBER_ID, ""));
        join_answer(&req, outcome)
    })
}

fn join_answer(req: &Request, o: JoinOutcome) -> Option<Bytes> {
    let mut resp = JoinGroupResponse::default();
    resp.error_code = o.error;
    resp.generation_id = o.generation;
    if req.version >= 7 {
        resp.protocol_type = o.protocol_type.as_deref().map(s);
        resp.protocol_name = o.protocol.as_deref().map(s);
    } else {
        resp.protocol_name = Some(s(o.protocol.as_deref().unwrap_or("")));
    }
    resp.leader = s(&o.leader);
    resp.member_id = s(&o.member_id);
    resp.members = o
        .members
        .into_iter()
        .map(|(id, instance, meta)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = s(&id);
            if req.version >= 5 {
                m.group_instance_id = instance.as_deref().map(s);
            }
            m.metadata = meta;
            m
        })
        .collect();
    encode(req, &resp)
}

pub(crate) fn sync_group(b: Arc<Broker>, req: Request, r: SyncGroupRequest) -> Reply {
    let group_id = r.group_id.0.to_string();
    let member_id = r.member_id.to_string();
    let (tx, rx) = oneshot::channel();
    let (early, protocol_type, protocol) = b.coordinator.with(|groups| {
        if !b.coordinates() {
            return (
                Some(SyncOutcome {
                    error: code::NOT_COORDINATOR,
                    assignment: Bytes::new(),
                }),
                None,
                None,
            );
        }
        let Some(g) = groups.get_mut(&group_id) else {
            return (
                Some(SyncOutcome {
                    error: code::UNKNOWN_MEMBER_ID,
                    assignment: Bytes::new(),
                }),
                None,
                None,
            );
        };
        let names = (g.protocol_type.clone(), g.protocol.clone());
        let fail = |error| {
            (
                Some(SyncOutcome {
                    error,
                    assignment: Bytes::new(),
                }),
                names.0.clone(),
                names.1.clone(),
            )
        };
        if !g.members.contains_key(&member_id) {
            return fail(code::UNKNOWN_MEMBER_ID);
        }
        if r.generation_id != g.generation {
            return fail(code::ILLEGAL_GENERATION);
        }
        match g.state {
            State::Empty | State::PreparingRebalance => fail(code::REBALANCE_IN_PROGRESS),
            State::Stable => {
                let assignment = g
                    .members
                    .get(&member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                (
                    Some(SyncOutcome {
                        error: code::NONE,
                        assignment,
                    }),
                    names.0,
                    names.1,
                )
            }
            State::CompletingRebalance => {
                let now = Instant::now();
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.last_seen = now;
                    m.sync_waiter = Some(tx);
                }
                if g.leader.as_deref() == Some(member_id.as_str()) {
                    let given: HashMap<String, Bytes> = r
                        .assignments
                        .iter()
                        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                        .collect();
                    for (id, m) in g.members.iter_mut() {
                        m.assignment = given.get(id).cloned().unwrap_or_default();
                        m.last_seen = now;
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncOutcome {
                                error: code::NONE,
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                    g.state = State::Stable;
                }
                (None, names.0, names.1)
            }
        }
    });
    let answer = move |o: SyncOutcome| {
        let mut resp = SyncGroupResponse::default();
        resp.error_code = o.error;
        resp.assignment = o.assignment;
        if req.version >= 5 {
            resp.protocol_type = protocol_type.as_deref().map(s);
            resp.protocol_name = protocol.as_deref().map(s);
        }
        encode(&req, &resp)
    };
    match early {
        Some(o) => ready(answer(o)),
        None => Box::pin(async move {
            let o = rx.await.unwrap_or(SyncOutcome {
                error: code::REBALANCE_IN_PROGRESS,
                assignment: Bytes::new(),
            });
            answer(o)
        }),
    }
}

pub(crate) fn heartbeat(b: &Broker, req: &Request, r: HeartbeatRequest) -> Option<Bytes> {
    let group_id = r.group_id.0.to_string();
    let member_id = r.member_id.to_string();
    let error = b.coordinator.with(|groups| {
        if !b.coordinates() {
            return code::NOT_COORDINATOR;
        }
        let Some(g) = groups.get_mut(&group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let Some(m) = g.members.get_mut(&member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        m.last_seen = Instant::now();
        match g.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ if r.generation_id != g.generation => code::ILLEGAL_GENERATION,
            _ => code::NONE,
        }
    });
    let mut resp = HeartbeatResponse::default();
    resp.error_code = error;
    encode(req, &resp)
}

pub(crate) fn leave_group(b: &Broker, req: &Request, r: LeaveGroupRequest) -> Option<Bytes> {
    let group_id = r.group_id.0.to_string();
    let leaving: Vec<(String, Option<String>)> = if req.version >= 3 {
        r.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(r.member_id.to_string(), None)]
    };
    let now = Instant::now();
    let results: Vec<(String, Option<String>, i16)> = b.coordinator.with(|groups| {
        let Some(g) = groups.get_mut(&group_id) else {
            return leaving
                .into_iter()
                .map(|(id, inst)| (id, inst, code::UNKNOWN_MEMBER_ID))
                .collect();
        };
        leaving
            .into_iter()
            .map(|(id, inst)| {
                let id = if id.is_empty() {
                    // Static members may leave by instance id alone.
                    g.members
                        .iter()
                        .find(|(_, m)| m.instance_id.is_some() && m.instance_id == inst)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default()
                } else {
                    id
                };
                if g.members.contains_key(&id) {
                    g.remove_member(&id, now);
                    (id, inst, code::NONE)
                } else {
                    (id, inst, code::UNKNOWN_MEMBER_ID)
                }
            })
            .collect()
    });
    let mut resp = LeaveGroupResponse::default();
    if req.version >= 3 {
        resp.members = results
            .into_iter()
            .map(|(id, inst, err)| {
                let mut m = MemberResponse::default();
                m.member_id = s(&id);
                m.group_instance_id = inst.as_deref().map(s);
                m.error_code = err;
                m
            })
            .collect();
    } else {
        resp.error_code = results.first().map_or(code::NONE, |r| r.2);
    }
    encode(req, &resp)
}

/// Whether an offset commit may proceed: (error for every partition, if not).
fn commit_allowed(b: &Broker, group: &str, generation: i32, member: &str) -> i16 {
    b.coordinator.with(|groups| {
        let Some(g) = groups.get(group) else {
            // A standalone consumer (assign(), no membership) commits with generation -1.
            return if generation < 0 {
                code::NONE
            } else {
                code::ILLEGAL_GENERATION
            };
        };
        if generation < 0 && member.is_empty() {
            return if g.members.is_empty() {
                code::NONE
            } else {
                code::UNKNOWN_MEMBER_ID
            };
        }
        if !g.members.contains_key(member) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != g.generation {
            return code::ILLEGAL_GENERATION;
        }
        if g.state == State::PreparingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        code::NONE
    })
}

pub(crate) fn offset_commit(b: Arc<Broker>, req: Request, r: OffsetCommitRequest) -> Reply {
    let group = r.group_id.0.to_string();
    let allowed = if group.is_empty() {
        code::INVALID_GROUP_ID
    } else if !b.coordinates() {
        code::NOT_COORDINATOR
    } else {
        commit_allowed(
            &b,
            &group,
            r.generation_id_or_member_epoch,
            r.member_id.as_str(),
        )
    };
    // (topic, partition, error) in request order; offsets to log for those without an error.
    let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut offsets = Vec::new();
    {
        let engine = b.node.engine();
        let e = engine.read();
        for t in &r.topics {
            let name = t.name.0.to_string();
            let partitions = e
                .catalog()
                .get(&name)
                .map(|entry| entry.current().partitions);
            let mut parts = Vec::new();
            for p in &t.partitions {
                let error = if allowed != code::NONE {
                    allowed
                } else if partitions
                    .is_none_or(|n| p.partition_index < 0 || p.partition_index as u32 >= n)
                {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else if p
                    .committed_metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > OFFSET_METADATA_MAX_BYTES)
                {
                    12 // OFFSET_METADATA_TOO_LARGE
                } else {
                    offsets.push(CommittedOffset {
                        topic: name.clone(),
                        partition: p.partition_index as u32,
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    });
                    code::NONE
                };
                parts.push((p.partition_index, error));
            }
            results.push((t.name.clone(), parts));
        }
    }
    let submitted = (!offsets.is_empty()).then(|| {
        b.node
            .submit(&Command::Offsets(OffsetsCommand::Commit { group, offsets }))
    });
    Box::pin(async move {
        let failed = match submitted {
            None => None,
            Some(Err(e)) => Some((e.to_string(), not_coordinator(&e))),
            Some(Ok(p)) => match p.wait().await {
                Ok(Applied::Offsets) => None,
                Ok(other) => Some((format!("{other:?}"), code::COORDINATOR_NOT_AVAILABLE)),
                Err(e) => Some((e.to_string(), not_coordinator(&e))),
            },
        };
        if let Some((reason, _)) = &failed {
            tracing::warn!(%reason, "offset commit failed");
        }
        let mut resp = OffsetCommitResponse::default();
        resp.topics = results
            .into_iter()
            .map(|(name, parts)| {
                let mut t = OffsetCommitResponseTopic::default();
                t.name = name;
                t.partitions = parts
                    .into_iter()
                    .map(|(index, err)| {
                        let mut p = OffsetCommitResponsePartition::default();
                        p.partition_index = index;
                        p.error_code = match &failed {
                            Some((_, code)) if err == code::NONE => *code,
                            _ => err,
                        };
                        p
                    })
                    .collect();
                t
            })
            .collect();
        encode(&req, &resp)
    })
}

/// A commit the leader did not take: NOT_COORDINATOR sends the consumer to FindCoordinator.
fn not_coordinator(e: &crate::Error) -> i16 {
    match super::write_error_code(e) {
        code::NOT_LEADER_OR_FOLLOWER => code::NOT_COORDINATOR,
        _ => code::COORDINATOR_NOT_AVAILABLE,
    }
}

/// One group's committed offsets for the asked topics (all committed ones when `None`).
fn fetch_offsets(
    b: &Broker,
    group: &str,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Vec<(TopicName, Vec<(i32, i64, i32, Option<String>)>)> {
    let engine = b.node.engine();
    let e = engine.read();
    let offsets = e.consumer_offsets();
    let wanted = topics.unwrap_or_else(|| {
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for (t, p, _) in offsets.of_group(group) {
            by_topic.entry(t).or_default().push(p as i32);
        }
        by_topic
            .into_iter()
            .map(|(t, ps)| (TopicName(s(&t)), ps))
            .collect()
    });
    wanted
        .into_iter()
        .map(|(name, parts)| {
            let topic = name.0.to_string();
            let rows = parts
                .into_iter()
                .map(|p| {
                    match u32::try_from(p)
                        .ok()
                        .and_then(|pu| offsets.get(group, &topic, pu))
                    {
                        Some(r) => (p, r.offset, r.leader_epoch, r.metadata.clone()),
                        None => (p, -1, -1, Some(String::new())),
                    }
                })
                .collect();
            (name, rows)
        })
        .collect()
}

pub(crate) fn offset_fetch(b: &Broker, req: &Request, r: OffsetFetchRequest) -> Option<Bytes> {
    let mut resp = OffsetFetchResponse::default();
    if req.version >= 8 {
        for g in &r.groups {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                    .collect()
            });
            let mut out = OffsetFetchResponseGroup::default();
            out.group_id = g.group_id.clone();
            out.topics = fetch_offsets(b, g.group_id.0.as_str(), topics)
                .into_iter()
                .map(|(name, rows)| {
                    let mut t = OffsetFetchResponseTopics::default();
                    t.name = name;
                    t.partitions = rows
                        .into_iter()
                        .map(|(p, offset, epoch, meta)| {
                            let mut x = OffsetFetchResponsePartitions::default();
                            x.partition_index = p;
                            x.committed_offset = offset;
                            x.committed_leader_epoch = epoch;
                            x.metadata = meta.as_deref().map(s);
                            x
                        })
                        .collect();
                    t
                })
                .collect();
            resp.groups.push(out);
        }
    } else {
        let topics = r.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.clone(), t.partition_indexes.clone()))
                .collect()
        });
        resp.topics = fetch_offsets(b, r.group_id.0.as_str(), topics)
            .into_iter()
            .map(|(name, rows)| {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = name;
                t.partitions = rows
                    .into_iter()
                    .map(|(p, offset, epoch, meta)| {
                        let mut x = OffsetFetchResponsePartition::default();
                        x.partition_index = p;
                        x.committed_offset = offset;
                        if req.version >= 5 {
                            x.committed_leader_epoch = epoch;
                        }
                        x.metadata = meta.as_deref().map(s);
                        x
                    })
                    .collect();
                t
            })
            .collect();
    }
    encode(req, &resp)
}

/// Every group this node knows: active ones and those with committed offsets.
fn known_groups(b: &Broker) -> BTreeMap<String, (String, String)> {
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    {
        let engine = b.node.engine();
        let e = engine.read();
        for g in e.consumer_offsets().groups() {
            out.insert(g.to_string(), ("Empty".into(), "consumer".into()));
        }
    }
    b.coordinator.with(|groups| {
        for (id, g) in groups.iter() {
            if g.members.is_empty() && !out.contains_key(id) {
                continue;
            }
            out.insert(
                id.clone(),
                (
                    g.state.name().into(),
                    g.protocol_type.clone().unwrap_or_else(|| "consumer".into()),
                ),
            );
        }
    });
    out
}

pub(crate) fn list_groups(b: &Broker, req: &Request, r: ListGroupsRequest) -> Option<Bytes> {
    let mut resp = ListGroupsResponse::default();
    let states: Vec<String> = r.states_filter.iter().map(|x| x.to_lowercase()).collect();
    let types_ok = r.types_filter.is_empty()
        || r.types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    resp.groups = known_groups(b)
        .into_iter()
        .filter(|(_, (state, _))| {
            types_ok && (states.is_empty() || states.contains(&state.to_lowercase()))
        })
        .map(|(id, (state, protocol_type))| {
            let mut g = ListedGroup::default();
            g.group_id = GroupId(s(&id));
            g.protocol_type = s(&protocol_type);
            if req.version >= 4 {
                g.group_state = s(&state);
            }
            if req.version >= 5 {
                g.group_type = s("classic");
            }
            g
        })
        .collect();
    encode(req, &resp)
}

pub(crate) fn describe_groups(
    b: &Broker,
    req: &Request,
    r: DescribeGroupsRequest,
) -> Option<Bytes> {
    let known = known_groups(b);
    let mut resp = DescribeGroupsResponse::default();
    for id in &r.groups {
        let name = id.0.to_string();
        let mut d = DescribedGroup::default();
        d.group_id = id.clone();
        d.authorized_operations = i32::MIN;
        let described = b.coordinator.with(|groups| {
            let g = groups.get(&name)?;
            let protocol = g.protocol.clone().unwrap_or_default();
            let members = g
                .members
                .iter()
                .map(|(mid, m)| {
                    let mut x = DescribedGroupMember::default();
                    x.member_id = s(mid);
                    if req.version >= 4 {
                        x.group_instance_id = m.instance_id.as_deref().map(s);
                    }
                    x.client_id = s(&m.client_id);
                    x.client_host = s("/127.0.0.1");
                    x.member_metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    x.member_assignment = m.assignment.clone();
                    x
                })
                .collect::<Vec<_>>();
            Some((
                g.state.name(),
                g.protocol_type.clone().unwrap_or_default(),
                protocol,
                members,
            ))
        });
        match described {
            Some((state, protocol_type, protocol, members))
                if !members.is_empty() || !known.contains_key(&name) =>
            {
                d.group_state = s(state);
                d.protocol_type = s(&protocol_type);
                d.protocol_data = s(&protocol);
                d.members = members;
            }
            _ if known.contains_key(&name) => {
                d.group_state = s("Empty");
                d.protocol_type = s("consumer");
            }
            _ => {
                d.group_state = s("Dead");
            }
        }
        resp.groups.push(d);
    }
    encode(req, &resp)
}

pub(crate) fn delete_groups(b: Arc<Broker>, req: Request, r: DeleteGroupsRequest) -> Reply {
    Box::pin(async move {
        let known = known_groups(&b);
        let mut resp = DeleteGroupsResponse::default();
        for id in r.groups_names {
            let name = id.0.to_string();
            let mut result = DeletableGroupResult::default();
            result.group_id = id;
            let active = b
                .coordinator
                .with(|groups| groups.get(&name).is_some_and(|g| !g.members.is_empty()));
            result.error_code = if active {
                code::NON_EMPTY_GROUP
            } else if !known.contains_key(&name)
                && !b.coordinator.with(|groups| groups.contains_key(&name))
            {
                code::GROUP_ID_NOT_FOUND
            } else {
                b.coordinator.with(|groups| groups.remove(&name));
                match b
                    .node
                    .propose(&Command::Offsets(OffsetsCommand::DeleteGroup {
                        group: name,
                    }))
                    .await
                {
                    Ok(_) => code::NONE,
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting a group's offsets failed");
                        code::COORDINATOR_NOT_AVAILABLE
                    }
                }
            };
            resp.results.push(result);
        }
        encode(&req, &resp)
    })
}

pub(crate) fn offset_delete(b: Arc<Broker>, req: Request, r: OffsetDeleteRequest) -> Reply {
    Box::pin(async move {
        let group = r.group_id.0.to_string();
        let mut resp = OffsetDeleteResponse::default();
        if !known_groups(&b).contains_key(&group) {
            resp.error_code = code::GROUP_ID_NOT_FOUND;
            return encode(&req, &resp);
        }
        let subscribed = b.coordinator.with(|groups| {
            groups
                .get(&group)
                .map(Group::subscribed_topics)
                .unwrap_or_default()
        });
        let mut partitions = Vec::new();
        for t in &r.topics {
            let name = t.name.0.to_string();
            let mut out = OffsetDeleteResponseTopic::default();
            out.name = t.name.clone();
            for p in &t.partitions {
                let mut x = OffsetDeleteResponsePartition::default();
                x.partition_index = p.partition_index;
                if subscribed.contains(&name) {
                    x.error_code = code::GROUP_SUBSCRIBED_TO_TOPIC;
                } else if let Ok(pu) = u32::try_from(p.partition_index) {
                    partitions.push((name.clone(), pu));
                }
                out.partitions.push(x);
            }
            resp.topics.push(out);
        }
        if !partitions.is_empty()
            && let Err(e) = b
                .node
                .propose(&Command::Offsets(OffsetsCommand::Delete {
                    group,
                    partitions,
                }))
                .await
        {
            tracing::warn!(error = %e, "deleting offsets failed");
            resp.error_code = code::COORDINATOR_NOT_AVAILABLE;
        }
        encode(&req, &resp)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_metadata_is_read_defensively() {
        let mut meta = vec![0, 1, 0, 0, 0, 2];
        for t in ["beacons", "orders"] {
            meta.extend_from_slice(&(t.len() as i16).to_be_bytes());
            meta.extend_from_slice(t.as_bytes());
        }
        assert_eq!(
            subscription_topics(&meta),
            vec!["beacons".to_string(), "orders".to_string()]
        );
        // A huge declared count over a short buffer stops at the end of the bytes.
        let hostile = [0, 1, 0x7f, 0xff, 0xff, 0xff, 0, 1, b'x'];
        assert_eq!(subscription_topics(&hostile), vec!["x".to_string()]);
        assert!(subscription_topics(&[0]).is_empty());
    }

    fn member(protocols: &[&str]) -> Member {
        Member {
            instance_id: None,
            client_id: String::new(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::new()))
                .collect(),
            last_seen: Instant::now(),
            join_waiter: None,
            sync_waiter: None,
            assignment: Bytes::new(),
        }
    }

    #[test]
    fn an_empty_groups_first_round_waits_for_more_members() {
        let mut g = Group::new();
        let now = Instant::now();
        let mut a = member(&["range"]);
        let (tx, mut rx) = oneshot::channel();
        a.join_waiter = Some(tx);
        g.members.insert("a".into(), a);
        g.prepare_rebalance(now);
        g.maybe_complete_join(false);
        assert_eq!(
            g.state,
            State::PreparingRebalance,
            "one member does not end the first round at once"
        );
        assert!(rx.try_recv().is_err());

        // A second member joins within the delay; once it passes, both are in generation 1.
        let mut b = member(&["range"]);
        let (tx, mut rx_b) = oneshot::channel();
        b.join_waiter = Some(tx);
        g.members.insert("b".into(), b);
        g.prepare_rebalance(now);
        g.maybe_complete_join(false);
        assert_eq!(g.state, State::PreparingRebalance);
        g.initial_until = Some(now);
        g.maybe_complete_join(false);
        assert_eq!(g.state, State::CompletingRebalance);
        let (oa, ob) = (
            rx.try_recv().expect("a answered"),
            rx_b.try_recv().expect("b answered"),
        );
        assert_eq!((oa.generation, ob.generation), (1, 1));
        assert_eq!(
            oa.members.len() + ob.members.len(),
            2,
            "the leader learns of both members"
        );
    }

    #[test]
    fn protocol_vote_prefers_what_everyone_supports() {
        let mut g = Group::new();
        g.members
            .insert("a".into(), member(&["cooperative-sticky", "range"]));
        g.members
            .insert("b".into(), member(&["range", "roundrobin"]));
        assert_eq!(g.choose_protocol().as_deref(), Some("range"));
    }
}
