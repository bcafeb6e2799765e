//! What a query's filters let a scan skip: a time range for segment pruning and equality/IN
//! sets on dimensions for the bitmap indexes.
//!
//! Everything here is a necessary condition taken from the filters (conjuncts DataFusion
//! pushed down); the scan reports the filters as inexact, so DataFusion still applies them in
//! full above the scan. Pruning may keep too much, never too little.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

/// Conditions extracted from pushed-down filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruning {
    /// Rows need `__time >= time_min_ms`.
    pub time_min_ms: Option<i64>,
    /// Rows need `__time < time_max_ms` (exclusive).
    pub time_max_ms: Option<i64>,
    /// Rows need the dimension to be one of these values (`None` is null).
    pub dimension_values: BTreeMap<String, Vec<Option<String>>>,
}

impl Pruning {
    /// Reads the conditions out of `filters`, using only those about `__time` and the
    /// dimensions named in `dimensions`.
    pub fn from_filters(filters: &[Expr], dimensions: &[String]) -> Pruning {
        let mut p = Pruning::default();
        for f in filters {
            for conjunct in split_conjunction(f) {
                p.absorb(conjunct, dimensions);
            }
        }
        p
    }

    /// Whether rows with `__time` in `[min_ms, max_ms]` (inclusive) may match.
    pub fn time_overlaps(&self, min_ms: i64, max_ms: i64) -> bool {
        self.time_min_ms.is_none_or(|lo| max_ms >= lo)
            && self.time_max_ms.is_none_or(|hi| min_ms < hi)
    }

    pub fn is_empty(&self) -> bool {
        self.time_min_ms.is_none() && self.time_max_ms.is_none() && self.dimension_values.is_empty()
    }

    fn raise_min(&mut self, v: i64) {
        self.time_min_ms = Some(self.time_min_ms.map_or(v, |cur| cur.max(v)));
    }

    fn lower_max(&mut self, v: i64) {
        self.time_max_ms = Some(self.time_max_ms.map_or(v, |cur| cur.min(v)));
    }

    fn restrict(&mut self, dim: String, values: Vec<Option<String>>) {
        match self.dimension_values.get_mut(&dim) {
            // Two conditions on one dimension: rows must satisfy both.
            Some(existing) => existing.retain(|v| values.contains(v)),
            None => {
                self.dimension_values.insert(dim, values);
            }
        }
    }

    fn absorb(&mut self, e: &Expr, dimensions: &[String]) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (col, op, lit) = match (
                    column_name(left),
                    literal(right),
                    column_name(right),
                    literal(left),
                ) {
                    (Some(c), Some(l), _, _) => (c, *op, l),
                    (_, _, Some(c), Some(l)) => match op.swap() {
                        Some(swapped) => (c, swapped, l),
                        None => return,
                    },
                    _ => return,
                };
                if col == tidemark_catalog::spec::TIME_COLUMN {
                    let Some(ms) = timestamp_ms(lit) else { return };
                    match op {
                        Operator::Gt => self.raise_min(ms.saturating_add(1)),
                        Operator::GtEq => self.raise_min(ms),
                        Operator::Lt => self.lower_max(ms),
                        Operator::LtEq => self.lower_max(ms.saturating_add(1)),
                        Operator::Eq => {
                            self.raise_min(ms);
                            self.lower_max(ms.saturating_add(1));
                        }
                        _ => {}
                    }
                } else if op == Operator::Eq
                    && dimensions.iter().any(|d| d == col)
                    && let Some(s) = string(lit)
                {
                    self.restrict(col.to_string(), vec![Some(s)]);
                }
            }
            Expr::Between(b) if !b.negated => {
                if column_name(&b.expr) == Some(tidemark_catalog::spec::TIME_COLUMN)
                    && let (Some(lo), Some(hi)) = (
                        literal(&b.low).and_then(timestamp_ms),
                        literal(&b.high).and_then(timestamp_ms),
                    )
                {
                    self.raise_min(lo);
                    self.lower_max(hi.saturating_add(1));
                }
            }
            Expr::InList(list) if !list.negated => {
                let Some(col) = column_name(&list.expr) else {
                    return;
                };
                if !dimensions.iter().any(|d| d == col) {
                    return;
                }
                let mut values = Vec::with_capacity(list.list.len());
                for item in &list.list {
                    match literal(item).and_then(string) {
                        Some(s) => values.push(Some(s)),
                        None => return,
                    }
                }
                self.restrict(col.to_string(), values);
            }
            Expr::IsNull(inner) => {
                if let Some(col) = column_name(inner)
                    && dimensions.iter().any(|d| d == col)
                {
                    self.restrict(col.to_string(), vec![None]);
                }
            }
            _ => {}
        }
    }
}

impl fmt::Display for Pruning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.time_min_ms.is_some() || self.time_max_ms.is_some() {
            let lo = self.time_min_ms.map_or("-inf".to_string(), format_ms);
            let hi = self.time_max_ms.map_or("+inf".to_string(), format_ms);
            parts.push(format!("__time=[{lo}, {hi})"));
        }
        for (dim, values) in &self.dimension_values {
            let vals: Vec<String> = values
                .iter()
                .map(|v| v.as_deref().map_or("NULL".into(), |s| format!("'{s}'")))
                .collect();
            parts.push(format!("{dim} IN ({})", vals.join(", ")));
        }
        write!(
            f,
            "{}",
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(" AND ")
            }
        )
    }
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn split_conjunction(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut v = split_conjunction(left);
            v.extend(split_conjunction(right));
            v
        }
        other => vec![other],
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        // Coercion may wrap a dimension in a cast to plain Utf8; equality survives the cast.
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

fn string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        ScalarValue::Dictionary(_, inner) => string(inner),
        _ => None,
    }
}

fn timestamp_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMillisecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1000),
        // Round toward the bucket boundary that keeps every possibly matching row.
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(x.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(x.div_euclid(1_000_000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(ms: i64) -> Expr {
        Expr::Literal(
            ScalarValue::TimestampMillisecond(Some(ms), Some("UTC".into())),
            None,
        )
    }

    #[test]
    fn reads_time_bounds_and_dimension_sets() {
        let dims = vec!["page".to_string(), "country".to_string()];
        let filters = vec![
            col("__time")
                .gt_eq(ts(1000))
                .and(col("__time").lt(ts(5000))),
            ts(2000).lt_eq(col("__time")),
            col("page").in_list(vec![lit("/a"), lit("/b")], false),
            col("page").eq(lit("/b")),
            col("country").is_null(),
            col("amount").eq(lit(3)),
        ];
        let p = Pruning::from_filters(&filters, &dims);
        assert_eq!(p.time_min_ms, Some(2000));
        assert_eq!(p.time_max_ms, Some(5000));
        assert_eq!(
            p.dimension_values.get("page"),
            Some(&vec![Some("/b".to_string())])
        );
        assert_eq!(p.dimension_values.get("country"), Some(&vec![None]));
        assert!(p.time_overlaps(4999, 9000));
        assert!(!p.time_overlaps(5000, 9000));
        assert!(!p.time_overlaps(0, 1999));
        assert_eq!(
            p.to_string(),
            "__time=[1970-01-01T00:00:02.000Z, 1970-01-01T00:00:05.000Z) AND country IN (NULL) AND page IN ('/b')"
        );
    }

    #[test]
    fn ignores_what_it_cannot_use() {
        let dims = vec!["page".to_string()];
        let filters = vec![
            col("page").eq(lit("/a")).or(col("page").eq(lit("/b"))),
            col("page").in_list(vec![lit("/a")], true),
            col("__time").not_eq(ts(5)),
        ];
        assert!(Pruning::from_filters(&filters, &dims).is_empty());
    }
}
