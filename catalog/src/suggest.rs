//! "Did you mean": the closest approved tag to a key that is not one.
//!
//! Deterministic, so the edge, apply and `GET /v1/governance/suggest` give the same answer:
//! keys are compared after [`normalise`] (case and separators do not count), first for
//! equality, then by optimal string alignment distance (a swap of two neighbours costs one),
//! within a bound that grows with the key's length. Ties go to a tag's name over an alias,
//! then to the least tag name.

/// A key a publisher may send for an approved tag: its name or one of its aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// What the publisher would send.
    pub key: String,
    /// The tag it stands for.
    pub tag: String,
    pub is_name: bool,
    normalised: String,
}

impl Candidate {
    pub fn new(key: &str, tag: &str, is_name: bool) -> Candidate {
        Candidate {
            key: key.to_string(),
            tag: tag.to_string(),
            is_name,
            normalised: normalise(key),
        }
    }
}

/// ASCII-lowercase, without `_`, `-`, `.` and spaces: `Account-Number` and `account_number`
/// are the same key to a human.
pub fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Optimal string alignment distance over characters: insertions, deletions, substitutions
/// and swaps of two neighbours each cost one.
pub fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    // Three rows suffice: the current, the previous and the one before (for swaps).
    let mut before = vec![0usize; m + 1];
    let mut prev: Vec<usize> = (0..=m).collect();
    let mut cur = vec![0usize; m + 1];
    for i in 1..=n {
        cur[0] = i;
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[m]
}

/// How far a key may be from a candidate to be suggested: short keys must be close.
fn bound(normalised_len: usize) -> usize {
    match normalised_len {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    }
}

/// The tag to suggest for `key`, if any candidate is close enough.
pub fn suggest<'c>(key: &str, candidates: &'c [Candidate]) -> Option<&'c str> {
    let k = normalise(key);
    if k.is_empty() {
        return None;
    }
    let limit = bound(k.chars().count());
    candidates
        .iter()
        .filter_map(|c| {
            let d = if c.normalised == k {
                0
            } else {
                osa_distance(&k, &c.normalised)
            };
            (d <= limit).then_some((d, !c.is_name, c.tag.as_str()))
        })
        .min()
        .map(|(_, _, tag)| tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<Candidate> {
        let mut c = Vec::new();
        for tag in [
            "ts",
            "merchant_id",
            "account_number",
            "country",
            "amount",
            "qty",
            "user_id",
        ] {
            c.push(Candidate::new(tag, tag, true));
        }
        c.push(Candidate::new("acct_num", "account_number", false));
        c
    }

    #[test]
    fn normalising_ignores_case_and_separators() {
        assert_eq!(normalise("Account-Number"), "accountnumber");
        assert_eq!(normalise("user.id "), "userid");
    }

    #[test]
    fn distances_count_swaps_once() {
        assert_eq!(osa_distance("acctnm", "acctnum"), 1);
        assert_eq!(osa_distance("countyr", "country"), 1);
        assert_eq!(osa_distance("", "abc"), 3);
        assert_eq!(osa_distance("kitten", "sitting"), 3);
        assert_eq!(
            osa_distance("ca", "abc"),
            3,
            "OSA does not edit a swapped pair again"
        );
    }

    #[test]
    fn suggestions_find_the_tag_a_human_meant() {
        let c = candidates();
        let cases = [
            ("AccountNumber", Some("account_number")),
            ("acct-num", Some("account_number")),
            ("acct_nm", Some("account_number")),
            ("ammount", Some("amount")),
            ("countyr", Some("country")),
            ("merchant", Some("merchant_id")),
            ("userId", Some("user_id")),
            ("xyz", None),
            ("", None),
            ("completely_unrelated", None),
        ];
        for (key, want) in cases {
            assert_eq!(suggest(key, &c), want, "{key}");
        }
    }

    #[test]
    fn ties_go_to_names_then_the_least_tag() {
        let c = vec![
            Candidate::new("pane", "pane", true),
            Candidate::new("page", "page", true),
        ];
        assert_eq!(suggest("pahe", &c), Some("page"));
        let c = vec![
            Candidate::new("sku", "product_sku", false),
            Candidate::new("skus", "skus", true),
        ];
        assert_eq!(
            suggest("skux", &c),
            Some("skus"),
            "a name beats an alias at the same distance"
        );
    }
}
