//! The node's file descriptors. At start the soft limit (`ulimit -n`) is raised to the hard
//! one, as servers commonly do (Go's runtime does it for every program); then client
//! connections get a share that leaves the rest to storage and Raft: raw log files, segments
//! being written, RocksDB's table files (bounded in `tidemark_raft::log_store`), checkpoints,
//! spill files. Without the split a flood of connections takes every descriptor and the next
//! checkpoint or log roll fails for want of one.
//!
//! Invariant: the Kafka, HTTP and Flight SQL doors' connection limits together never exceed
//! [`Budget::for_connections`] (but each door admits one connection at least); the Raft
//! port's comes out of the share kept ([`Budget::raft_connections`]).

/// The most descriptors the node asks for, even when the hard limit is unlimited.
const LIMIT_CEILING: u64 = 1 << 20;

/// What the node may open, and how much of it client connections may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The soft limit after raising it.
    pub(crate) limit: u64,
    pub(crate) for_connections: usize,
}

impl Budget {
    /// Half of a small limit is kept for storage and Raft; of a large one, 4096.
    pub(crate) fn of(limit: u64) -> Budget {
        Self::keeping(limit, (limit / 2).min(4096))
    }

    /// `reserved` of `limit` kept for storage and Raft, the rest for connections.
    pub(crate) fn keeping(limit: u64, reserved: u64) -> Budget {
        let rest = limit.saturating_sub(reserved);
        Budget {
            limit,
            for_connections: usize::try_from(rest).unwrap_or(usize::MAX),
        }
    }

    /// The budget keeping at least twice what storage and Raft hold open now (`in_use`, at
    /// start: every raw log file stays open, and RocksDB keeps its table files), so a node
    /// with much data still has room to grow.
    pub(crate) fn sparing(self, in_use: u64) -> Budget {
        let kept = self.limit.saturating_sub(self.for_connections as u64);
        Budget::keeping(self.limit, kept.max(in_use.saturating_mul(2)))
    }

    /// The descriptors this process holds open now (Linux), if that can be read.
    pub(crate) fn in_use() -> Option<u64> {
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64)
    }

    /// The doors' configured connection limits, scaled down in proportion when together
    /// they exceed what connections may take (each keeps at least one).
    pub(crate) fn split<const N: usize>(&self, configured: [usize; N]) -> [usize; N] {
        let total: u128 = configured.iter().map(|&c| c as u128).sum();
        let budget = self.for_connections as u128;
        if total <= budget {
            return configured;
        }
        configured
            .map(|c| usize::try_from((c as u128 * budget / total).max(1)).unwrap_or(usize::MAX))
    }

    /// The Raft port's connection limit: peers need a few each; it comes out of the share
    /// kept for storage and Raft (a quarter of it, at most 256).
    pub(crate) fn raft_connections(&self) -> usize {
        let kept = self.limit.saturating_sub(self.for_connections as u64);
        usize::try_from(kept / 4)
            .unwrap_or(usize::MAX)
            .clamp(8, 256)
    }

    /// Why a door's limit was lowered, for its refusals and the start-up warning.
    pub(crate) fn why(&self) -> String {
        format!(
            "the node may open {} files (ulimit -n), and keeps {} of them for storage and Raft",
            self.limit,
            self.limit.saturating_sub(self.for_connections as u64)
        )
    }
}

/// Raises the soft descriptor limit to the hard one and returns the node's budget, keeping
/// `reserved` descriptors (none: the default share) from connections. A limit that cannot be
/// read or raised is used as it is (and said so).
pub(crate) fn raise(reserved: Option<u64>) -> Budget {
    let budget = raise_limit();
    match reserved {
        Some(r) => Budget::keeping(budget.limit, r),
        None => budget,
    }
}

fn raise_limit() -> Budget {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the file descriptor limit; assuming 1024");
        return Budget::of(1024);
    }
    let wanted = lim.rlim_max.min(LIMIT_CEILING);
    if lim.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = lim.rlim_cur,
                to = wanted,
                "raised the file descriptor limit"
            );
            lim.rlim_cur = wanted;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), limit = lim.rlim_cur, "cannot raise the file descriptor limit");
        }
    }
    Budget::of(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_keeps_half_and_a_large_one_keeps_4096() {
        assert_eq!(
            Budget::of(200),
            Budget {
                limit: 200,
                for_connections: 100
            }
        );
        assert_eq!(
            Budget::of(1024),
            Budget {
                limit: 1024,
                for_connections: 512
            }
        );
        assert_eq!(
            Budget::of(1 << 20),
            Budget {
                limit: 1 << 20,
                for_connections: (1 << 20) - 4096
            }
        );
        assert_eq!(
            Budget::keeping(200, 0),
            Budget {
                limit: 200,
                for_connections: 200
            }
        );
        assert_eq!(
            Budget::keeping(200, 500),
            Budget {
                limit: 200,
                for_connections: 0
            }
        );
        assert_eq!(
            Budget::of(1 << 20).sparing(10_000),
            Budget {
                limit: 1 << 20,
                for_connections: (1 << 20) - 20_000
            }
        );
        assert_eq!(
            Budget::of(1 << 20).sparing(100),
            Budget::of(1 << 20),
            "the default share when storage holds little"
        );
    }

    #[test]
    fn limits_that_fit_are_kept_and_others_scale_in_proportion() {
        let big = Budget::of(1 << 20);
        assert_eq!(
            big.split([10_000, 10_000, 10_000]),
            [10_000, 10_000, 10_000]
        );
        let small = Budget::of(200);
        assert_eq!(small.split([10_000, 10_000, 10_000]), [33, 33, 33]);
        assert_eq!(small.split([300, 100, 100]), [60, 20, 20]);
        let sum: usize = small.split([10_000, 5, 7]).iter().sum();
        assert!(sum <= 100 + 2, "each door keeps one at least: {sum}");
    }
}
