//! Bounds on one door's client connections: how many in all, and how many from one address.
//! A connection past either is closed as soon as it is accepted (Kafka's
//! `max.connections` and `max.connections.per.ip` do the same), and counted on `/metrics`, so a
//! flood of connections from one client cannot take the file descriptors every other client
//! and Raft need.
//!
//! "One address" is an IPv4 address, or an IPv6 /64 prefix: one IPv6 host (or one customer's
//! network) is routinely handed a whole /64, so counting each of its 2^64 addresses apart
//! would bound nothing. An IPv4-mapped IPv6 address counts as its IPv4 address.
//!
//! Invariant: a [`ConnectionPlace`] exists for every open connection the gate admitted, and
//! dropping it (the connection's task ended, however) gives its place back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One door's connection bounds (`kafka`, `http` or `flight`: the config section that sets them).
#[derive(Debug)]
pub struct ConnectionGate {
    door: &'static str,
    total_max: usize,
    /// What set `total_max`, as the refusal names it.
    total_source: String,
    per_address_max: usize,
    open: Mutex<Open>,
    refused_total: AtomicU64,
    refused_per_address: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{door} has {max} connections open, its limit ({set_by})")]
    Total {
        door: &'static str,
        max: usize,
        set_by: String,
    },
    #[error(
        "{address} has {max} {door} connections open, the limit for one address ({door}.connections_per_address_max)"
    )]
    PerAddress {
        door: &'static str,
        address: IpAddr,
        max: usize,
    },
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionPlace {
    gate: Arc<ConnectionGate>,
    address: IpAddr,
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

impl ConnectionGate {
    pub fn new(
        door: &'static str,
        total_max: usize,
        per_address_max: usize,
    ) -> Arc<ConnectionGate> {
        Self::lowered(door, total_max, per_address_max, usize::MAX, "")
    }

    /// The same bounds, with the total lowered to `max` for the reason `why` (the node's file
    /// descriptors, say), if that is lower.
    pub fn lowered(
        door: &'static str,
        configured: usize,
        per_address_max: usize,
        max: usize,
        why: &str,
    ) -> Arc<ConnectionGate> {
        let total_source = if max < configured {
            format!("{door}.connections_max {configured}, lowered to {max}: {why}")
        } else {
            format!("{door}.connections_max")
        };
        Arc::new(ConnectionGate {
            door,
            total_max: configured.min(max),
            total_source,
            per_address_max,
            open: Mutex::new(Open::default()),
            refused_total: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
        })
    }

    /// The most connections it admits.
    pub fn total_max(&self) -> usize {
        self.total_max
    }

    /// A place for a connection from `address`, or why there is none.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionPlace, Refusal> {
        let address = counted_as(address);
        let refusal = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let from_address = open.by_address.get(&address).copied().unwrap_or(0);
            if open.total >= self.total_max {
                Refusal::Total {
                    door: self.door,
                    max: self.total_max,
                    set_by: self.total_source.clone(),
                }
            } else if from_address >= self.per_address_max {
                Refusal::PerAddress {
                    door: self.door,
                    address,
                    max: self.per_address_max,
                }
            } else {
                open.total += 1;
                *open.by_address.entry(address).or_insert(0) += 1;
                return Ok(ConnectionPlace {
                    gate: self.clone(),
                    address,
                });
            }
        };
        let counter = match refusal {
            Refusal::Total { .. } => &self.refused_total,
            Refusal::PerAddress { .. } => &self.refused_per_address,
        };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        // A flood refuses thousands a second: say so at the 1st, 2nd, 4th, 8th, … refusal.
        if n.is_power_of_two() {
            tracing::warn!(refused = n, "{refusal}; closing new connections");
        }
        Err(refusal)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl crate::RenderMetrics for ConnectionGate {
    fn render_metrics(&self) -> String {
        let door = self.door;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tidemark_{door}_connections_refused_by_limit_total {door} connections closed at accept by a connection limit.\n\
             # TYPE tidemark_{door}_connections_refused_by_limit_total counter\n\
             tidemark_{door}_connections_refused_by_limit_total{{limit=\"connections_max\"}} {}\n\
             tidemark_{door}_connections_refused_by_limit_total{{limit=\"connections_per_address_max\"}} {}",
            self.refused_total.load(Ordering::Relaxed),
            self.refused_per_address.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tidemark_{door}_connections_admitted {door} connections open under the connection limits.\n\
             # TYPE tidemark_{door}_connections_admitted gauge\ntidemark_{door}_connections_admitted {}",
            self.open()
        );
        out
    }
}

/// The address a connection from `address` counts against (see the module doc): the /64
/// of an IPv6 address, written as that prefix with zeros after it.
fn counted_as(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let gate = ConnectionGate::new("http", 100, 2);
        let host =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        let _a = gate.admit(host(1)).expect("first of the /64");
        let _b = gate.admit(host(0xbeef)).expect("second of the /64");
        assert_eq!(
            gate.admit(host(7))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "2001:db8:1:2:: has 2 http connections open, the limit for one address (http.connections_per_address_max)"
        );
        let other = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(gate.admit(other).is_ok(), "another /64 has its own places");
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().expect("mapped");
        let _m1 = gate.admit(mapped).expect("mapped");
        let _m2 = gate
            .admit([10, 0, 0, 9].into())
            .expect("the same IPv4 address");
        assert!(
            gate.admit(mapped).is_err(),
            "an IPv4-mapped address counts as its IPv4 address"
        );
    }

    #[test]
    fn a_gate_admits_up_to_its_limits_and_a_closed_connection_frees_its_place() {
        let gate = ConnectionGate::new("kafka", 3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = gate.admit(a).expect("first from a");
        let _a2 = gate.admit(a).expect("second from a");
        assert_eq!(
            gate.admit(a)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "10.0.0.1 has 2 kafka connections open, the limit for one address (kafka.connections_per_address_max)"
        );
        let _b1 = gate.admit(b).expect("first from b");
        assert_eq!(
            gate.admit(b)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "kafka has 3 connections open, its limit (kafka.connections_max)"
        );
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(
            gate.admit(b).is_ok(),
            "a closed connection's place is free again"
        );
        let text = crate::RenderMetrics::render_metrics(gate.as_ref());
        assert!(
            text.contains(
                "tidemark_kafka_connections_refused_by_limit_total{limit=\"connections_max\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tidemark_kafka_connections_refused_by_limit_total{limit=\"connections_per_address_max\"} 1"),
            "{text}"
        );
    }
}
