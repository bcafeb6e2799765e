//! The tag rules apply and rebuilds standardise beacons with, compiled once per domain
//! version: a governed datasource's entries look the rules up by (domain, position of the
//! domain's last change at or before the entry), which never goes stale.
//!
//! Invariant: results never depend on the cache (a miss compiles the same rules from the
//! catalog), so it is not part of the checkpoint and replicas agree whatever it holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tidemark_catalog::Catalog;
use tidemark_catalog::standardise::TagRules;

/// Compiled rules kept; the least recently created key goes first.
const KEPT: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct RulesCache(Mutex<BTreeMap<(String, u64), Arc<TagRules>>>);

impl RulesCache {
    /// The rules governing `datasource` at `position`, if it was in a domain then.
    pub(crate) fn get(
        &self,
        catalog: &Catalog,
        datasource: &str,
        position: u64,
    ) -> Option<Arc<TagRules>> {
        let key = catalog.rules_key(datasource, position)?;
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rules) = cache.get(&key) {
            return Some(rules.clone());
        }
        let rules = Arc::new(catalog.rules_at(datasource, position)?);
        if cache.len() >= KEPT
            && let Some(oldest) = cache.keys().min_by_key(|(_, p)| *p).cloned()
        {
            cache.remove(&oldest);
        }
        cache.insert(key, rules.clone());
        Some(rules)
    }
}
