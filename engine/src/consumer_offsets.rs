//! Consumer group offsets: what each group committed per topic partition. Changed only by
//! logged [`OffsetsCommand`]s, so committed offsets are as durable as the data and survive a
//! restart (through the checkpoint and Raft log replay). Group membership itself is
//! soft state in the Kafka door's coordinator; only offsets are kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::OffsetsCommand;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRecord {
    pub offset: i64,
    pub leader_epoch: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Writer time of the commit.
    pub committed_at_ms: i64,
}

/// group → topic → partition → offset, in fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerOffsets {
    groups: BTreeMap<String, BTreeMap<String, BTreeMap<u32, OffsetRecord>>>,
}

impl ConsumerOffsets {
    pub fn apply(&mut self, cmd: &OffsetsCommand, writer_time_ms: i64) {
        match cmd {
            OffsetsCommand::Commit { group, offsets } => {
                let g = self.groups.entry(group.clone()).or_default();
                for o in offsets {
                    g.entry(o.topic.clone()).or_default().insert(
                        o.partition,
                        OffsetRecord {
                            offset: o.offset,
                            leader_epoch: o.leader_epoch,
                            metadata: o.metadata.clone(),
                            committed_at_ms: writer_time_ms,
                        },
                    );
                }
            }
            OffsetsCommand::Delete { group, partitions } => {
                if let Some(g) = self.groups.get_mut(group) {
                    for (topic, partition) in partitions {
                        if let Some(t) = g.get_mut(topic) {
                            t.remove(partition);
                        }
                    }
                    g.retain(|_, t| !t.is_empty());
                    if g.is_empty() {
                        self.groups.remove(group);
                    }
                }
            }
            OffsetsCommand::DeleteGroup { group } => {
                self.groups.remove(group);
            }
        }
    }

    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<&OffsetRecord> {
        self.groups.get(group)?.get(topic)?.get(&partition)
    }

    /// Every committed offset of a group: (topic, partition, record).
    pub fn of_group(&self, group: &str) -> Vec<(String, u32, OffsetRecord)> {
        let Some(g) = self.groups.get(group) else {
            return Vec::new();
        };
        g.iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, r)| (t.clone(), *p, r.clone())))
            .collect()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Drops a deleted topic's offsets from every group.
    pub fn remove_topic(&mut self, topic: &str) {
        for g in self.groups.values_mut() {
            g.remove(topic);
        }
        self.groups.retain(|_, g| !g.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommittedOffset;

    fn commit(group: &str, topic: &str, partition: u32, offset: i64) -> OffsetsCommand {
        OffsetsCommand::Commit {
            group: group.into(),
            offsets: vec![CommittedOffset {
                topic: topic.into(),
                partition,
                offset,
                leader_epoch: -1,
                metadata: None,
            }],
        }
    }

    #[test]
    fn commits_overwrite_and_deletes_remove() {
        let mut o = ConsumerOffsets::default();
        o.apply(&commit("g", "t", 0, 5), 1);
        o.apply(&commit("g", "t", 0, 9), 2);
        o.apply(&commit("g", "t", 1, 3), 3);
        assert_eq!(
            o.get("g", "t", 0).map(|r| (r.offset, r.committed_at_ms)),
            Some((9, 2))
        );
        o.apply(
            &OffsetsCommand::Delete {
                group: "g".into(),
                partitions: vec![("t".into(), 0)],
            },
            4,
        );
        assert!(o.get("g", "t", 0).is_none());
        assert_eq!(o.of_group("g").len(), 1);
        o.apply(&OffsetsCommand::DeleteGroup { group: "g".into() }, 5);
        assert!(!o.has_group("g"));
        let json = serde_json::to_string(&{
            let mut o = ConsumerOffsets::default();
            o.apply(&commit("g", "t", 2, 1), 1);
            o
        })
        .expect("serializes");
        let back: ConsumerOffsets = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.get("g", "t", 2).map(|r| r.offset), Some(1));
    }
}
