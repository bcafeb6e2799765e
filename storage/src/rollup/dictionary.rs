//! A per-dimension dictionary for the rollup index: each distinct string gets a dense id in
//! arrival order (id 0 is null), so rows hold small integers instead of strings.
//!
//! Ids depend only on the order values arrive in, which is log order: replicas agree.
//! Sorted order (for segments) is computed on demand by [`Dictionary::sorted_ranks`].

use hashbrown::HashTable;

pub const NULL_ID: u32 = 0;

#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    /// Concatenated UTF-8 of every value; `spans[id - 1]` locates value `id`.
    bytes: String,
    spans: Vec<(u32, u32)>,
    /// `hashes[id - 1]`: kept so growing the table never rehashes strings.
    hashes: Vec<u64>,
    table: HashTable<u32>,
}

#[inline]
fn hash_str(s: &str) -> u64 {
    use std::hash::BuildHasher;
    // In-memory only (ids, not hashes, are what persists), so the fastest good hash for short
    // strings wins; a fixed seed keeps behaviour and benchmark figures the same run to run.
    foldhash::fast::FixedState::with_seed(0x7469_6465).hash_one(s)
}

impl Dictionary {
    /// The id of `value`, adding it if new. Hot path: one hash and one probe per dimension.
    #[inline]
    pub fn intern(&mut self, value: &str) -> u32 {
        let h = hash_str(value);
        let Dictionary {
            bytes,
            spans,
            hashes,
            table,
        } = self;
        let get = |id: u32| -> &str {
            let (start, len) = spans[(id - 1) as usize];
            &bytes[start as usize..(start + len) as usize]
        };
        if let Some(id) = table.find(h, |&id| get(id) == value) {
            return *id;
        }
        let start = bytes.len() as u32;
        bytes.push_str(value);
        spans.push((start, value.len() as u32));
        hashes.push(h);
        let id = spans.len() as u32;
        let hashes_ref = &*hashes;
        table.insert_unique(h, id, |&other| hashes_ref[(other - 1) as usize]);
        id
    }

    /// The value of `id`, or `None` for the null id.
    pub fn value(&self, id: u32) -> Option<&str> {
        if id == NULL_ID {
            return None;
        }
        let (start, len) = self.spans[(id - 1) as usize];
        Some(&self.bytes[start as usize..(start + len) as usize])
    }

    /// Number of non-null values.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * 16 + self.table.capacity() * 5
    }

    /// `ranks[id]` is the position of value `id` in byte-wise sorted order, null first.
    pub fn sorted_ranks(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (1..=self.spans.len() as u32).collect();
        ids.sort_unstable_by(|a, b| self.value(*a).cmp(&self.value(*b)));
        let mut ranks = vec![0u32; self.spans.len() + 1];
        for (rank, id) in ids.into_iter().enumerate() {
            ranks[id as usize] = rank as u32 + 1;
        }
        ranks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_arrival_and_ranks_follow_bytes() {
        let mut d = Dictionary::default();
        assert_eq!(d.intern("pear"), 1);
        assert_eq!(d.intern("apple"), 2);
        assert_eq!(d.intern("pear"), 1);
        assert_eq!(d.intern(""), 3);
        assert_eq!(d.value(2), Some("apple"));
        assert_eq!(d.value(NULL_ID), None);
        assert_eq!(d.sorted_ranks(), vec![0, 3, 2, 1]);
        for i in 0..10_000 {
            let v = format!("v{i}");
            let id = d.intern(&v);
            assert_eq!(d.value(id), Some(v.as_str()));
        }
        assert_eq!(d.len(), 10_003);
    }
}
