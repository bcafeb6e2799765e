//! Which raw beacons a deletion takes: `tidemark delete --where "merchant_id = 'm1'"`.
//!
//! A small predicate language over a beacon's top-level tags, parsed once at the edge into a
//! [`RecordFilter`] that travels in the log entry, so every replica (and every replay)
//! evaluates the same structure on the same raw bytes:
//!
//! ```text
//! expr       := or
//! or         := and ( OR and )*
//! and        := unary ( AND unary )*
//! unary      := NOT unary | '(' expr ')' | comparison
//! comparison := tag ( '=' | '!=' | '<>' ) literal
//!             | tag [NOT] IN '(' literal ( ',' literal )* ')'
//!             | tag IS [NOT] NULL
//! tag        := identifier | "quoted identifier"
//! literal    := 'string' ('' escapes a quote) | number | TRUE | FALSE
//! ```
//!
//! Written here rather than with a SQL parser because it is not SQL over a table: it runs on
//! raw beacons, including ones standardisation rejected (their rows in `sys.rejects` must go
//! too), with the domain's aliases resolved, and catalog stays free of an SQL engine.
//!
//! Semantics: a tag is looked up under its name and every alias the rules know (a beacon
//! that sent `acct_num` matches `account_number = '…'`). A value compares as text: a JSON
//! string as itself, a number as written, `true`/`false`; an absent tag or JSON null is
//! NULL, which no comparison matches (SQL's three-valued logic collapses to "not deleted").
//! A beacon that is not a JSON object matches nothing.

use serde::{Deserialize, Serialize};

use crate::standardise::TagRules;

/// A parsed deletion predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RecordFilter {
    /// `tag IN (values)`; `tag = v` is a one-value list.
    In {
        tag: String,
        values: Vec<String>,
    },
    IsNull {
        tag: String,
    },
    Not {
        filter: Box<RecordFilter>,
    },
    And {
        all: Vec<RecordFilter>,
    },
    Or {
        any: Vec<RecordFilter>,
    },
}

type FilterError = crate::Error;

fn filter_error(text: &str, at: usize, problem: String) -> FilterError {
    crate::Error::InvalidWhere {
        text: text.to_string(),
        at,
        problem,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let err = |at: usize, problem: String| filter_error(text, at, problem);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | ',' | '=' => {
                out.push((
                    at,
                    Token::Sym(match c {
                        '(' => "(",
                        ')' => ")",
                        ',' => ",",
                        _ => "=",
                    }),
                ));
                i += 1;
            }
            '!' | '<' => {
                let next = chars.get(i + 1).map(|(_, c)| *c);
                if (c == '!' && next == Some('=')) || (c == '<' && next == Some('>')) {
                    out.push((at, Token::Sym("!=")));
                    i += 2;
                } else {
                    return Err(err(
                        at,
                        format!("{c:?} is not an operator here; use =, != or IN"),
                    ));
                }
            }
            '\'' | '"' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&(_, ch)) = chars.get(i) else {
                        return Err(err(at, format!("the {quote} opened here is never closed")));
                    };
                    i += 1;
                    if ch == quote {
                        if chars.get(i).is_some_and(|(_, n)| *n == quote) {
                            s.push(quote);
                            i += 1;
                            continue;
                        }
                        break;
                    }
                    s.push(ch);
                }
                out.push((
                    at,
                    if quote == '\'' {
                        Token::Str(s)
                    } else {
                        Token::Ident(s)
                    },
                ));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let start = i;
                i += 1;
                while chars
                    .get(i)
                    .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
                {
                    i += 1;
                }
                let s: String = chars[start..i].iter().map(|(_, c)| c).collect();
                if s.parse::<f64>().is_err() {
                    return Err(err(
                        at,
                        format!("{s:?} is not a number; quote text as 'text'"),
                    ));
                }
                out.push((at, Token::Num(s)));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|(_, c)| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
                {
                    i += 1;
                }
                out.push((
                    at,
                    Token::Ident(chars[start..i].iter().map(|(_, c)| c).collect()),
                ));
            }
            c => return Err(err(at, format!("unexpected {c:?}"))),
        }
    }
    Ok(out)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<(usize, Token)>,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, problem: impl Into<String>) -> FilterError {
        let at = self
            .tokens
            .get(self.pos)
            .map_or(self.text.chars().count(), |(at, _)| *at);
        filter_error(self.text, at, problem.into())
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word)) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn symbol(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Token::Sym(s)) if *s == sym) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn or(&mut self) -> Result<RecordFilter, FilterError> {
        let mut any = vec![self.and()?];
        while self.keyword("or") {
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            RecordFilter::Or { any }
        })
    }

    fn and(&mut self) -> Result<RecordFilter, FilterError> {
        let mut all = vec![self.unary()?];
        while self.keyword("and") {
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            RecordFilter::And { all }
        })
    }

    fn unary(&mut self) -> Result<RecordFilter, FilterError> {
        if self.keyword("not") {
            return Ok(RecordFilter::Not {
                filter: Box::new(self.unary()?),
            });
        }
        if self.symbol("(") {
            let inner = self.or()?;
            if !self.symbol(")") {
                return Err(self.err("expected ) to close the parenthesis"));
            }
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<RecordFilter, FilterError> {
        let tag = match self.peek() {
            Some(Token::Ident(w)) if !is_keyword(w) => w.clone(),
            _ => return Err(self.err("expected a tag name, e.g. merchant_id = 'm1'")),
        };
        self.pos += 1;
        if self.symbol("=") {
            return Ok(RecordFilter::In {
                tag,
                values: vec![self.literal()?],
            });
        }
        if self.symbol("!=") {
            let values = vec![self.literal()?];
            return Ok(not(
                RecordFilter::In {
                    tag: tag.clone(),
                    values,
                },
                &tag,
            ));
        }
        if self.keyword("is") {
            let negated = self.keyword("not");
            if !self.keyword("null") {
                return Err(self.err("expected NULL after IS"));
            }
            let is_null = RecordFilter::IsNull { tag };
            return Ok(if negated {
                RecordFilter::Not {
                    filter: Box::new(is_null),
                }
            } else {
                is_null
            });
        }
        let negated = self.keyword("not");
        if !self.keyword("in") {
            return Err(self.err(format!("expected =, !=, IN or IS NULL after {tag}")));
        }
        if !self.symbol("(") {
            return Err(self.err("expected ( after IN"));
        }
        let mut values = vec![self.literal()?];
        while self.symbol(",") {
            values.push(self.literal()?);
        }
        if !self.symbol(")") {
            return Err(self.err("expected , or ) in the IN list"));
        }
        let list = RecordFilter::In {
            tag: tag.clone(),
            values,
        };
        Ok(if negated { not(list, &tag) } else { list })
    }

    fn literal(&mut self) -> Result<String, FilterError> {
        let value = match self.peek() {
            Some(Token::Str(s) | Token::Num(s)) => s.clone(),
            Some(Token::Ident(w))
                if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") =>
            {
                w.to_ascii_lowercase()
            }
            Some(Token::Ident(w)) => {
                return Err(self.err(format!("{w} is not a value; quote text as '{w}'")));
            }
            _ => return Err(self.err("expected a value: 'text', a number, TRUE or FALSE")),
        };
        self.pos += 1;
        Ok(value)
    }
}

/// `tag != v` and `tag NOT IN (…)`: true only where the tag has a value (SQL's NULL rule).
fn not(list: RecordFilter, tag: &str) -> RecordFilter {
    RecordFilter::And {
        all: vec![
            RecordFilter::Not {
                filter: Box::new(RecordFilter::IsNull {
                    tag: tag.to_string(),
                }),
            },
            RecordFilter::Not {
                filter: Box::new(list),
            },
        ],
    }
}

fn is_keyword(w: &str) -> bool {
    ["and", "or", "not", "in", "is", "null"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

impl RecordFilter {
    /// Parses a `--where` text.
    pub fn parse(text: &str) -> Result<RecordFilter, FilterError> {
        let tokens = tokenize(text)?;
        let mut p = Parser {
            text,
            tokens,
            pos: 0,
        };
        if p.tokens.is_empty() {
            return Err(p.err(
                "the condition is empty; say which beacons to delete, e.g. merchant_id = 'm1'",
            ));
        }
        let filter = p.or()?;
        if p.pos < p.tokens.len() {
            return Err(
                p.err("unexpected text after the condition (join conditions with AND or OR)")
            );
        }
        Ok(filter)
    }

    /// Every tag the filter names.
    pub fn tags(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_tags(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect_tags<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            RecordFilter::In { tag, .. } | RecordFilter::IsNull { tag } => out.push(tag),
            RecordFilter::Not { filter } => filter.collect_tags(out),
            RecordFilter::And { all: fs } | RecordFilter::Or { any: fs } => {
                fs.iter().for_each(|f| f.collect_tags(out));
            }
        }
    }

    /// Compiles the filter against a domain's rules (none: an ungoverned datasource): each
    /// tag is looked up under its name and its aliases.
    pub fn compile(&self, rules: Option<&TagRules>) -> CompiledFilter {
        let keys = |tag: &str| -> Vec<String> {
            match rules.and_then(|r| r.lookup(tag)) {
                Some((t, _)) => std::iter::once(t.name.clone())
                    .chain(t.aliases.iter().cloned())
                    .collect(),
                None => vec![tag.to_string()],
            }
        };
        CompiledFilter {
            root: compile_node(self, &keys),
        }
    }
}

#[derive(Debug, Clone)]
enum Node {
    In {
        keys: Vec<String>,
        values: Vec<String>,
    },
    IsNull {
        keys: Vec<String>,
    },
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

fn compile_node(f: &RecordFilter, keys: &dyn Fn(&str) -> Vec<String>) -> Node {
    match f {
        RecordFilter::In { tag, values } => Node::In {
            keys: keys(tag),
            values: values.clone(),
        },
        RecordFilter::IsNull { tag } => Node::IsNull { keys: keys(tag) },
        RecordFilter::Not { filter } => Node::Not(Box::new(compile_node(filter, keys))),
        RecordFilter::And { all } => Node::And(all.iter().map(|f| compile_node(f, keys)).collect()),
        RecordFilter::Or { any } => Node::Or(any.iter().map(|f| compile_node(f, keys)).collect()),
    }
}

/// A filter ready to test beacons.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    root: Node,
}

impl CompiledFilter {
    /// Whether the beacon (a record's value bytes) is one to delete.
    pub fn matches(&self, beacon: &[u8]) -> bool {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(beacon) {
            Ok(obj) => eval(&self.root, &obj),
            Err(_) => false,
        }
    }
}

impl CompiledFilter {
    /// Whether a rolled-up row matches: `value` gives a tag's stored value (its standardised
    /// text; `None` for null or a tag the row does not have).
    pub fn matches_row(&self, value: &dyn Fn(&str) -> Option<String>) -> bool {
        eval_with(&self.root, &|keys: &[String]| {
            keys.iter().filter_map(|k| value(k)).collect()
        })
    }
}

fn eval_with(node: &Node, texts: &dyn Fn(&[String]) -> Vec<String>) -> bool {
    match node {
        Node::In { keys, values } => texts(keys).iter().any(|t| values.iter().any(|v| v == t)),
        Node::IsNull { keys } => texts(keys).is_empty(),
        Node::Not(inner) => !eval_with(inner, texts),
        Node::And(all) => all.iter().all(|n| eval_with(n, texts)),
        Node::Or(any) => any.iter().any(|n| eval_with(n, texts)),
    }
}

/// The tag's values in `obj` under any of its keys, as text; JSON null counts as absent.
fn texts<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    keys: &[String],
) -> Vec<std::borrow::Cow<'a, str>> {
    use serde_json::Value;
    keys.iter()
        .filter_map(|k| match obj.get(k)? {
            Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
            Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
                "true"
            } else {
                "false"
            })),
            Value::Null => None,
            other => Some(std::borrow::Cow::Owned(other.to_string())),
        })
        .collect()
}

fn eval(node: &Node, obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    match node {
        Node::In { keys, values } => texts(obj, keys)
            .iter()
            .any(|t| values.iter().any(|v| v == t)),
        Node::IsNull { keys } => texts(obj, keys).is_empty(),
        Node::Not(inner) => !eval(inner, obj),
        Node::And(all) => all.iter().all(|n| eval(n, obj)),
        Node::Or(any) => any.iter().any(|n| eval(n, obj)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::Tag;

    fn matches(text: &str, beacon: &str) -> bool {
        RecordFilter::parse(text)
            .map(|f| f.compile(None).matches(beacon.as_bytes()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn equality_lists_and_logic() {
        let b = r#"{"merchant_id":"m1","user_id":42,"ok":true,"page":null}"#;
        assert!(matches("merchant_id = 'm1'", b));
        assert!(!matches("merchant_id = 'm2'", b));
        assert!(matches("user_id = 42", b));
        assert!(matches("user_id = '42'", b));
        assert!(matches("ok = TRUE", b));
        assert!(matches("merchant_id IN ('m0', 'm1')", b));
        assert!(!matches("merchant_id NOT IN ('m0', 'm1')", b));
        assert!(matches("merchant_id = 'm2' OR user_id = 42", b));
        assert!(!matches("merchant_id = 'm1' AND user_id = 43", b));
        assert!(matches("NOT (merchant_id = 'm2')", b));
        assert!(matches("page IS NULL AND country IS NULL", b));
        assert!(matches("merchant_id IS NOT NULL", b));
        assert!(matches("\"merchant_id\" <> 'm2'", b));
    }

    #[test]
    fn rows_match_by_their_stored_values() {
        let f = RecordFilter::parse("merchant_id = 'm1' AND (country IS NULL OR country != 'DE')")
            .map(|f| f.compile(None));
        let f = f.unwrap_or_else(|e| panic!("{e}"));
        let row = |m: &'static str, c: Option<&'static str>| {
            move |k: &str| match k {
                "merchant_id" => Some(m.to_string()),
                "country" => c.map(str::to_string),
                _ => None,
            }
        };
        assert!(f.matches_row(&row("m1", None)));
        assert!(f.matches_row(&row("m1", Some("FR"))));
        assert!(!f.matches_row(&row("m1", Some("DE"))));
        assert!(!f.matches_row(&row("m2", None)));
    }

    #[test]
    fn null_never_compares() {
        let b = r#"{"merchant_id":"m1"}"#;
        assert!(!matches("country = 'DE'", b));
        assert!(
            !matches("country != 'DE'", b),
            "an absent tag is not unequal either"
        );
        assert!(!matches("country NOT IN ('DE')", b));
        assert!(
            !RecordFilter::parse("merchant_id = 'm1'")
                .map(|f| f.compile(None).matches(b"not json"))
                .unwrap_or(true)
        );
    }

    #[test]
    fn quotes_escape_and_aliases_resolve() {
        assert!(matches("name = 'O''Brien'", r#"{"name":"O'Brien"}"#));
        let tag: Tag = serde_json::from_value(serde_json::json!({
            "name": "account_number", "kind": "dimension", "type": "string", "status": "approved",
            "aliases": ["acct_num"]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let rules = TagRules::compile("shop", [&tag]);
        for text in ["account_number = 'a7'", "acct_num = 'a7'"] {
            let f = RecordFilter::parse(text)
                .unwrap_or_else(|e| panic!("{e}"))
                .compile(Some(&rules));
            assert!(f.matches(br#"{"acct_num":"a7"}"#), "{text}");
            assert!(f.matches(br#"{"account_number":"a7"}"#), "{text}");
            assert!(!f.matches(br#"{"account_number":"a8"}"#), "{text}");
        }
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        let cases = [
            ("", "the condition is empty", 0),
            (
                "merchant_id = m1",
                "m1 is not a value; quote text as 'm1'",
                14,
            ),
            ("merchant_id = 'm1", "never closed", 14),
            (
                "merchant_id 'm1'",
                "expected =, !=, IN or IS NULL after merchant_id",
                12,
            ),
            (
                "merchant_id = 'm1' user_id = 2",
                "unexpected text after the condition",
                19,
            ),
            ("(merchant_id = 'm1'", "expected ) to close", 19),
            (
                "merchant_id IN ('a' 'b')",
                "expected , or ) in the IN list",
                20,
            ),
            ("merchant_id > 3", "unexpected '>'", 12),
            ("= 'm1'", "expected a tag name", 0),
        ];
        for (text, want, at) in cases {
            let e = RecordFilter::parse(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} parsed"));
            let crate::Error::InvalidWhere {
                problem, at: found, ..
            } = &e
            else {
                panic!("{e}")
            };
            assert!(problem.contains(want), "{text:?}: {e}");
            assert_eq!(*found, at, "{text:?}: {e}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let f = RecordFilter::parse("a = '1' AND (b IN (2, 3) OR NOT c IS NULL)")
            .unwrap_or_else(|e| panic!("{e}"));
        let back: RecordFilter =
            serde_json::from_str(&serde_json::to_string(&f).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, f);
        assert_eq!(f.tags(), vec!["a", "b", "c"]);
    }
}
