//! The query generator of the differential isolation suite (`isolation.rs`): from a seed, SQL
//! over a table named `{t}` that a merchant key runs against the datasource of every merchant
//! and an admin key against a copy holding only that merchant's rows.
//!
//! Each query says how its answers compare. `Compare::Multiset`: the answer is a function of
//! the table's rows alone (an aggregate, a full `ORDER BY`, set operations, windows over
//! partitions), so the two runs must give equal rows as multisets, doubles within
//! `tolerance` (sums add in another order; t-digest quantiles depend on merge order), and
//! an error on one side must be an error on the other. `Compare::CanaryOnly`: the answer may
//! differ between the two datasources (`LIMIT` without a full order, `EXPLAIN`, metadata and
//! system tables, whose figures and names differ), so only the scan for other merchants'
//! values applies, as it does to every query.
//!
//! Values come from both the scoped merchant's vocabulary and the canaries of the others, so
//! filters, joins and subqueries also ask for rows the key must not see.

/// How the two runs of a query are compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Compare {
    Multiset { tolerance: f64 },
    CanaryOnly,
}

#[derive(Debug, Clone)]
pub(crate) struct GenQuery {
    /// SQL with `{t}` where the datasource's name goes.
    pub(crate) template: String,
    pub(crate) compare: Compare,
    /// The shape it was drawn from, for reports.
    pub(crate) kind: &'static str,
}

impl GenQuery {
    pub(crate) fn sql(&self, table: &str) -> String {
        self.template.replace("{t}", table)
    }
}

/// The values the data holds: the scoped merchant's and the canaries of the others.
#[derive(Debug, Clone)]
pub(crate) struct Vocabulary {
    /// (dimension, values) of the scoped merchant.
    pub(crate) own: Vec<(&'static str, Vec<String>)>,
    /// (dimension, values) of the other merchants.
    pub(crate) canaries: Vec<(&'static str, Vec<String>)>,
    /// The first minute of the data (ms) and how many minutes it spans.
    pub(crate) start_ms: i64,
    pub(crate) minutes: i64,
}

pub(crate) const DIMENSIONS: [&str; 5] = ["merchant_id", "page", "country", "device", "app"];

/// xorshift64*: deterministic for a seed, no dependency.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

pub(crate) struct Generator<'a> {
    rng: Rng,
    vocab: &'a Vocabulary,
}

impl<'a> Generator<'a> {
    pub(crate) fn new(seed: u64, vocab: &'a Vocabulary) -> Self {
        Generator {
            rng: Rng::new(seed),
            vocab,
        }
    }

    fn dim(&mut self) -> &'static str {
        DIMENSIONS[self.rng.below(DIMENSIONS.len())]
    }

    fn two_dims(&mut self) -> (&'static str, &'static str) {
        let a = self.dim();
        let mut b = self.dim();
        while b == a {
            b = self.dim();
        }
        (a, b)
    }

    /// A value of `dim`: the scoped merchant's (60%) or another merchant's canary.
    fn value(&mut self, dim: &str) -> String {
        let pool = if self.rng.chance(60) {
            &self.vocab.own
        } else {
            &self.vocab.canaries
        };
        let values = pool
            .iter()
            .find(|(d, _)| *d == dim)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        if values.is_empty() {
            "nothing".to_string()
        } else {
            self.rng.pick(values).clone()
        }
    }

    fn minute(&mut self) -> i64 {
        self.vocab.start_ms + self.rng.below(self.vocab.minutes as usize + 1) as i64 * 60_000
    }

    /// A condition over dimensions and time.
    fn predicate(&mut self) -> String {
        let d = self.dim();
        match self.rng.below(10) {
            0 => format!("{d} = {}", quote(&self.value(d))),
            1 => format!("{d} <> {}", quote(&self.value(d))),
            2 => {
                let (a, b, c) = (self.value(d), self.value(d), self.value(d));
                format!("{d} IN ({}, {}, {})", quote(&a), quote(&b), quote(&c))
            }
            3 => {
                let v = self.value(d);
                let prefix: String = v.chars().take(3).collect();
                format!("{d} LIKE {}", quote(&format!("{prefix}%")))
            }
            4 => format!("{d} > {}", quote(&self.value(d))),
            5 => format!("{d} IS NULL"),
            6 => format!("NOT ({d} = {} OR {d} IS NULL)", quote(&self.value(d))),
            7 => format!("__time >= to_timestamp_millis({})", self.minute()),
            8 => {
                let (lo, hi) = (self.minute(), self.minute());
                format!(
                    "__time BETWEEN to_timestamp_millis({}) AND to_timestamp_millis({})",
                    lo.min(hi),
                    lo.max(hi)
                )
            }
            _ => format!(
                "(merchant_id = {} OR 1 = 1)",
                quote(&self.value("merchant_id"))
            ),
        }
    }

    fn maybe_where(&mut self) -> String {
        if self.rng.chance(50) {
            format!(" WHERE {}", self.predicate())
        } else {
            String::new()
        }
    }

    /// A value expression over a dimension; the casts fail on some values (a failing
    /// expression must fail on both sides, naming no other merchant's value).
    fn expression(&mut self, d: &str) -> String {
        match self.rng.below(12) {
            0 => format!("upper({d})"),
            1 => format!("length({d})"),
            2 => format!("concat({d}, '|')"),
            3 => format!("substr({d}, 2, 3)"),
            4 => format!(
                "CASE WHEN {d} = {} THEN 'hit' ELSE {d} END",
                quote(&self.value(d))
            ),
            5 => format!("coalesce({d}, 'none')"),
            6 => format!("CAST({d} AS INT)"),
            7 => format!("CAST({d} AS DATE)"),
            8 => format!("to_timestamp({d})"),
            9 => format!("arrow_cast({d}, 'Int64')"),
            10 => format!("CAST({d} AS DOUBLE) * 2"),
            _ => format!("1 / CAST(({d} = {}) AS INT)", quote(&self.value(d))),
        }
    }

    pub(crate) fn next_query(&mut self) -> GenQuery {
        let exact = Compare::Multiset { tolerance: 1e-9 };
        let sketchy = Compare::Multiset { tolerance: 0.1 };
        let (kind, template, compare) = match self.rng.below(18) {
            0 => {
                let (a, b) = self.two_dims();
                let w = self.maybe_where();
                (
                    "projection",
                    format!(
                        "SELECT {a}, {b}, \"count\" FROM {{t}}{w} ORDER BY {a}, {b}, \"count\""
                    ),
                    exact,
                )
            }
            1 => {
                let (a, b) = self.two_dims();
                let w = self.maybe_where();
                let sql = format!(
                    "SELECT {a}, {b}, SUM(\"count\") AS n, SUM(revenue) AS r, MIN(lat_min) AS lo, MAX(lat_max) AS hi \
                     FROM {{t}}{w} GROUP BY {a}, {b}"
                );
                ("aggregate", sql, exact)
            }
            2 => {
                let p = self.predicate();
                (
                    "count",
                    format!("SELECT COUNT(*) AS rows, SUM(\"count\") AS n FROM {{t}} WHERE {p}"),
                    exact,
                )
            }
            3 => {
                let d = self.dim();
                let q = [0.5, 0.9, 0.99][self.rng.below(3)];
                let sql = format!(
                    "SELECT {d}, APPROX_COUNT_DISTINCT_DS_HLL(users) AS u, APPROX_QUANTILE_DS(lat_td, {q}) AS p \
                     FROM {{t}} GROUP BY {d}"
                );
                ("sketch", sql, sketchy)
            }
            4 => {
                let d = self.dim();
                let p = self.predicate();
                let sql = format!(
                    "SELECT a.{d}, COUNT(*) AS pairs FROM {{t}} a JOIN (SELECT * FROM {{t}} WHERE {p}) b \
                     ON a.{d} = b.{d} GROUP BY a.{d}"
                );
                ("join", sql, exact)
            }
            5 => {
                let (a, b) = self.two_dims();
                let p = self.predicate();
                let sql = format!(
                    "SELECT {a}, SUM(\"count\") AS n FROM {{t}} WHERE {b} IN (SELECT {b} FROM {{t}} WHERE {p}) GROUP BY {a}"
                );
                ("subquery", sql, exact)
            }
            6 => {
                let (a, b) = self.two_dims();
                let op = *self
                    .rng
                    .pick(&["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]);
                let p = self.predicate();
                let sql =
                    format!("SELECT {a} AS v FROM {{t}} {op} SELECT {b} FROM {{t}} WHERE {p}");
                ("set operation", sql, exact)
            }
            7 => {
                let (a, b) = self.two_dims();
                let sql = format!(
                    "SELECT {a}, {b}, SUM(\"count\") OVER (PARTITION BY {b}) AS w, \
                     RANK() OVER (ORDER BY {a} NULLS FIRST) AS r FROM {{t}}"
                );
                ("window", sql, exact)
            }
            8 => {
                let d = self.dim();
                let e = self.expression(d);
                let w = self.maybe_where();
                (
                    "expression",
                    format!("SELECT {e} AS x, COUNT(*) AS c FROM {{t}}{w} GROUP BY 1"),
                    exact,
                )
            }
            9 => {
                let d = self.dim();
                let e = self.expression(d);
                (
                    "expression rows",
                    format!("SELECT {e} AS x FROM {{t}} ORDER BY 1"),
                    exact,
                )
            }
            10 => {
                let n = 1 + self.rng.below(5);
                let w = self.maybe_where();
                (
                    "limit",
                    format!("SELECT * FROM {{t}}{w} LIMIT {n}"),
                    Compare::CanaryOnly,
                )
            }
            11 => {
                let d = self.dim();
                let w = self.maybe_where();
                let analyze = if self.rng.chance(50) { "ANALYZE " } else { "" };
                let sql = format!(
                    "EXPLAIN {analyze}SELECT {d}, SUM(\"count\") FROM {{t}}{w} GROUP BY {d}"
                );
                ("explain", sql, Compare::CanaryOnly)
            }
            12 => {
                let sql = *self.rng.pick(&[
                    "SELECT * FROM information_schema.columns ORDER BY table_name, column_name",
                    "SELECT * FROM information_schema.tables ORDER BY table_schema, table_name",
                    "SELECT * FROM information_schema.schemata",
                    "SELECT * FROM information_schema.df_settings WHERE name LIKE 'datafusion.execution%'",
                    "SHOW TABLES",
                    "SHOW COLUMNS FROM {t}",
                ]);
                ("metadata", sql.to_string(), Compare::CanaryOnly)
            }
            13 => {
                let table = *self.rng.pick(&[
                    "sys.segments",
                    "sys.rejects",
                    "sys.datasources",
                    "sys.jobs",
                    "sys.audit",
                    "sys.tags",
                    "sys.keys",
                    "sys.retention",
                ]);
                (
                    "system table",
                    format!("SELECT * FROM {table}"),
                    Compare::CanaryOnly,
                )
            }
            14 => {
                let d = self.dim();
                let w = self.maybe_where();
                let k = 1 + self.rng.below(4);
                let sql = format!(
                    "SELECT {d}, SUM(\"count\") AS n FROM {{t}}{w} GROUP BY {d} HAVING SUM(\"count\") > 0 \
                     ORDER BY n DESC, {d} NULLS FIRST LIMIT {k}"
                );
                ("top k", sql, exact)
            }
            15 => {
                let d = self.dim();
                let w = self.maybe_where();
                (
                    "distinct",
                    format!("SELECT DISTINCT {d} FROM {{t}}{w}"),
                    exact,
                )
            }
            16 => {
                let d = self.dim();
                let v = self.value(d);
                let sql = format!(
                    "WITH x AS (SELECT * FROM {{t}} WHERE {d} = {}) \
                     SELECT COUNT(*) AS rows, SUM(revenue) AS r FROM x",
                    quote(&v)
                );
                ("cte", sql, exact)
            }
            _ => {
                let d = self.dim();
                let sql = format!(
                    "SELECT date_trunc('minute', __time) AS m, {d}, SUM(\"count\") AS n, SUM(revenue) AS r \
                     FROM {{t}} GROUP BY 1, 2"
                );
                ("time series", sql, exact)
            }
        };
        GenQuery {
            template,
            compare,
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocabulary {
        Vocabulary {
            own: DIMENSIONS
                .iter()
                .map(|d| (*d, vec![format!("own-{d}")]))
                .collect(),
            canaries: DIMENSIONS
                .iter()
                .map(|d| (*d, vec![format!("zqx7-{d}")]))
                .collect(),
            start_ms: 0,
            minutes: 10,
        }
    }

    #[test]
    fn the_same_seed_writes_the_same_queries_and_covers_every_shape() {
        let v = vocab();
        let a: Vec<String> = {
            let mut g = Generator::new(7, &v);
            (0..300).map(|_| g.next_query().template).collect()
        };
        let mut g = Generator::new(7, &v);
        let b: Vec<GenQuery> = (0..300).map(|_| g.next_query()).collect();
        assert_eq!(a, b.iter().map(|q| q.template.clone()).collect::<Vec<_>>());
        let kinds: std::collections::BTreeSet<&str> = b.iter().map(|q| q.kind).collect();
        assert_eq!(kinds.len(), 18, "{kinds:?}");
        assert!(
            b.iter().any(|q| q.template.contains("zqx7")),
            "canaries are asked for"
        );
        assert!(b.iter().any(|q| q.compare == Compare::CanaryOnly));
    }
}
