//! ISO-8601 periods for query and segment granularity, and UTC bucketing by them.
//!
//! Only fixed-length periods (seconds, minutes, hours, days, weeks) are accepted: they bucket
//! by plain integer division of epoch milliseconds, which is what apply needs to stay
//! deterministic. Calendar periods (months, years) are refused with a clear error until
//! time-zone aware bucketing exists.
//!
//! Invariant: `bucket_start(t) <= t < bucket_start(t) + millis()` for every `t`, including
//! times before 1970.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A fixed-length ISO-8601 period, kept with the text it was written as.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Period {
    text: String,
    millis: i64,
}

impl Period {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidPeriod {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let upper = text.trim().to_ascii_uppercase();
        let rest = upper
            .strip_prefix('P')
            .ok_or_else(|| bad("must start with P"))?;
        if rest.is_empty() {
            return Err(bad("has no duration after P"));
        }
        let (date_part, time_part) = match rest.split_once('T') {
            Some((d, t)) => {
                if t.is_empty() {
                    return Err(bad("has a T with nothing after it"));
                }
                (d, Some(t))
            }
            None => (rest, None),
        };
        let mut millis: i64 = 0;
        for (amount, unit) in split_units(date_part).map_err(|r| bad(&r))? {
            let unit_ms = match unit {
                'D' => 86_400_000,
                'W' => 7 * 86_400_000,
                'M' | 'Y' => {
                    return Err(bad(
                        "calendar periods (months, years) are not supported; use days or weeks",
                    ));
                }
                other => return Err(bad(&format!("unknown date unit {other:?}"))),
            };
            millis = add_units(millis, amount, unit_ms).ok_or_else(|| bad("is too long"))?;
        }
        for (amount, unit) in split_units(time_part.unwrap_or("")).map_err(|r| bad(&r))? {
            let unit_ms = match unit {
                'H' => 3_600_000,
                'M' => 60_000,
                'S' => 1_000,
                other => return Err(bad(&format!("unknown time unit {other:?}"))),
            };
            millis = add_units(millis, amount, unit_ms).ok_or_else(|| bad("is too long"))?;
        }
        if millis <= 0 {
            return Err(bad("must be longer than zero"));
        }
        Ok(Period {
            text: upper,
            millis,
        })
    }

    pub fn millis(&self) -> i64 {
        self.millis
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The start of the bucket holding `time_ms`, aligned to the Unix epoch in UTC.
    #[inline]
    pub fn bucket_start(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.millis) * self.millis
    }

    /// Whether `other` buckets nest exactly inside buckets of `self`.
    pub fn is_multiple_of(&self, other: &Period) -> bool {
        self.millis % other.millis == 0
    }
}

fn split_units(s: &str) -> std::result::Result<Vec<(i64, char)>, String> {
    let mut out = Vec::new();
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if digits.is_empty() {
                return Err(format!("unit {c:?} has no number before it"));
            }
            let amount: i64 = digits
                .parse()
                .map_err(|_| "number is too large".to_string())?;
            out.push((amount, c));
            digits.clear();
        }
    }
    if !digits.is_empty() {
        return Err(format!("number {digits} has no unit after it"));
    }
    Ok(out)
}

fn add_units(total: i64, amount: i64, unit_ms: i64) -> Option<i64> {
    total.checked_add(amount.checked_mul(unit_ms)?)
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.text)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Period::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_granularities() {
        assert_eq!(Period::parse("PT1M").map(|p| p.millis()).ok(), Some(60_000));
        assert_eq!(
            Period::parse("PT15M").map(|p| p.millis()).ok(),
            Some(900_000)
        );
        assert_eq!(
            Period::parse("PT1H").map(|p| p.millis()).ok(),
            Some(3_600_000)
        );
        assert_eq!(
            Period::parse("P1D").map(|p| p.millis()).ok(),
            Some(86_400_000)
        );
        assert_eq!(
            Period::parse("P1DT12H").map(|p| p.millis()).ok(),
            Some(129_600_000)
        );
        assert_eq!(
            Period::parse("pt30s").map(|p| p.millis()).ok(),
            Some(30_000)
        );
    }

    #[test]
    fn refuses_bad_periods_with_reasons() {
        for (text, needle) in [
            ("1M", "must start with P"),
            ("P", "no duration"),
            ("PT", "nothing after"),
            ("P1M", "calendar"),
            ("PT0M", "longer than zero"),
            ("PT5", "no unit"),
            ("PTM", "no number"),
            ("PT1X", "unknown time unit"),
        ] {
            let err = Period::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    proptest! {
        #[test]
        fn bucket_contains_time(t in -10_000_000_000_000i64..10_000_000_000_000i64, minutes in 1i64..10_000) {
            let p = Period::parse(&format!("PT{minutes}M")).expect("valid");
            let start = p.bucket_start(t);
            prop_assert!(start <= t && t < start + p.millis());
            prop_assert_eq!(start % p.millis(), 0);
        }
    }
}
