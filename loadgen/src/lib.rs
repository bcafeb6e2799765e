//! tidemark-loadgen: realistic merchant traffic, deterministic from a seed, for `tidemark
//! demo`, `tidemark bench`, criterion benchmarks and test fixtures.
//!
//! The shape follows what merchants' tools send: merchant sizes are Zipf-skewed (a few large
//! shops, a long tail of small ones), each merchant has its own pages and user base, events
//! are mostly page views with some clicks, carts and purchases (only purchases carry an
//! `amount`), and latency is long-tailed (log-normal body with a Pareto tail), so p99 is far
//! from the median. The generator uses its own PRNG (SplitMix64) so a seed gives the same
//! events on every machine and version.

pub mod kafka;

use serde_json::{Value, json};

pub const APPS: [&str; 4] = ["web", "ios", "android", "pos"];
pub const EVENTS: [(&str, u32); 5] = [
    ("page_view", 70),
    ("click", 15),
    ("search", 7),
    ("add_to_cart", 5),
    ("purchase", 3),
];
pub const DEVICES: [(&str, u32); 3] = [("mobile", 60), ("desktop", 35), ("tablet", 5)];
pub const COUNTRIES: [(&str, u32); 12] = [
    ("US", 30),
    ("GB", 10),
    ("DE", 9),
    ("FR", 7),
    ("IN", 8),
    ("BR", 6),
    ("JP", 6),
    ("CA", 5),
    ("AU", 4),
    ("NL", 3),
    ("ES", 3),
    ("MX", 3),
];

/// SplitMix64: tiny, fast and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn weighted<'a>(&mut self, table: &[(&'a str, u32)]) -> &'a str {
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(u64::from(total)) as u32;
        for (name, w) in table {
            if pick < *w {
                return name;
            }
            pick -= w;
        }
        table[table.len() - 1].0
    }
}

/// One generated event, with typed fields (the JSON is built from these).
#[derive(Debug, Clone, PartialEq)]
pub struct Beacon {
    pub ts_ms: i64,
    pub merchant_id: String,
    pub app: &'static str,
    pub event: &'static str,
    pub page: String,
    pub country: &'static str,
    pub device: &'static str,
    pub user_id: String,
    pub latency_ms: f64,
    pub amount: Option<f64>,
}

impl Beacon {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ts": self.ts_ms,
            "merchant_id": self.merchant_id,
            "app": self.app,
            "event": self.event,
            "page": self.page,
            "country": self.country,
            "device": self.device,
            "user_id": self.user_id,
            "latency_ms": self.latency_ms,
        });
        if let Some(a) = self.amount {
            v["amount"] = json!(a);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub seed: u64,
    pub merchants: usize,
    /// Zipf exponent of merchant sizes; about 1.1 matches a marketplace of shops.
    pub skew: f64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            seed: 42,
            merchants: 1000,
            skew: 1.1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Traffic {
    rng: Rng,
    /// Cumulative merchant weights, for sampling by size.
    cumulative: Vec<f64>,
    /// Users per merchant, proportional to its size (at least 20).
    users: Vec<u64>,
    pages: Vec<u64>,
}

impl Traffic {
    pub fn new(config: &TrafficConfig) -> Self {
        let n = config.merchants.max(1);
        let weights: Vec<f64> = (1..=n)
            .map(|rank| 1.0 / (rank as f64).powf(config.skew))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let users = weights
            .iter()
            .map(|w| ((w / total) * 2_000_000.0).max(20.0) as u64)
            .collect();
        let pages = weights
            .iter()
            .map(|w| ((w / total) * 5_000.0).clamp(8.0, 400.0) as u64)
            .collect();
        Traffic {
            rng: Rng::new(config.seed),
            cumulative,
            users,
            pages,
        }
    }

    pub fn merchant_name(index: usize) -> String {
        format!("m{index:05}")
    }

    /// The next event, stamped `ts_ms`.
    pub fn next(&mut self, ts_ms: i64) -> Beacon {
        let u = self.rng.unit();
        let m = self
            .cumulative
            .partition_point(|c| *c < u)
            .min(self.cumulative.len() - 1);
        let event = self.rng.weighted(&EVENTS);
        let page = match event {
            "purchase" => "/checkout".to_string(),
            "add_to_cart" => "/cart".to_string(),
            "search" => "/search".to_string(),
            _ => match self.rng.below(self.pages[m]) {
                0 => "/".to_string(),
                k => format!("/product/{k}"),
            },
        };
        // Log-normal body around 120 ms, with a 2% Pareto tail reaching seconds.
        let latency_ms = if self.rng.unit() < 0.02 {
            800.0 / self.rng.unit().max(1e-6).powf(0.8)
        } else {
            (4.8 + 0.5 * self.rng.normal()).exp()
        };
        let amount = (event == "purchase")
            .then(|| ((3.5 + 0.9 * self.rng.normal()).exp() * 100.0).round() / 100.0);
        Beacon {
            ts_ms,
            merchant_id: Self::merchant_name(m),
            app: APPS[self.rng.below(APPS.len() as u64) as usize],
            event,
            page,
            country: self.rng.weighted(&COUNTRIES),
            device: self.rng.weighted(&DEVICES),
            user_id: format!("u{}", self.rng.below(self.users[m])),
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            amount,
        }
    }

    /// `count` events spread evenly over `[start_ms, start_ms + span_ms)`.
    pub fn batch(&mut self, start_ms: i64, span_ms: i64, count: usize) -> Vec<Beacon> {
        (0..count)
            .map(|i| self.next(start_ms + (i as i64 * span_ms) / count.max(1) as i64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events() {
        let cfg = TrafficConfig {
            seed: 7,
            merchants: 100,
            skew: 1.1,
        };
        let a = Traffic::new(&cfg).batch(0, 60_000, 500);
        let b = Traffic::new(&cfg).batch(0, 60_000, 500);
        assert_eq!(a, b);
    }

    #[test]
    fn sizes_are_skewed_and_purchases_carry_amounts() {
        let mut t = Traffic::new(&TrafficConfig {
            seed: 1,
            merchants: 200,
            skew: 1.1,
        });
        let events = t.batch(0, 3_600_000, 20_000);
        let top = events.iter().filter(|b| b.merchant_id == "m00000").count();
        let tail = events.iter().filter(|b| b.merchant_id == "m00150").count();
        assert!(top > 20 * tail.max(1), "top {top} vs tail {tail}");
        assert!(
            events
                .iter()
                .all(|b| (b.event == "purchase") == b.amount.is_some())
        );
        let mut lat: Vec<f64> = events.iter().map(|b| b.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        let p50 = lat[lat.len() / 2];
        let p99 = lat[lat.len() * 99 / 100];
        assert!(p99 > 5.0 * p50, "long tail: p50 {p50} p99 {p99}");
    }
}
