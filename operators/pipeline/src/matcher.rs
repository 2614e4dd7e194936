//! Label matchers, as Alertmanager writes them: `severity=critical`, `region!=eu`,
//! `rule=~"cpu_.*"`, `key!~test-.*`. Routes, silences, inhibitions and alert queries use them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Equal => "=",
            Op::NotEqual => "!=",
            Op::Regex => "=~",
            Op::NotRegex => "!~",
        }
    }
}

/// One `label op value` test. A label the alert lacks matches as the empty string, so
/// `team!=ops` holds for alerts without a `team` label (as in Alertmanager).
#[derive(Debug, Clone)]
pub struct Matcher {
    pub label: String,
    pub op: Op,
    pub value: String,
    /// Anchored (`^(?:value)$`), compiled once.
    regex: Option<regex::Regex>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MatcherError {
    #[error(
        "expected `label=value`, `label!=value`, `label=~regex` or `label!~regex`, found `{0}`"
    )]
    Syntax(String),
    #[error("`{label}` is not a valid label name: expected letters, digits and `_`")]
    Label { label: String },
    #[error("bad regular expression in `{matcher}`: {reason}")]
    Regex { matcher: String, reason: String },
}

impl Matcher {
    pub fn new(label: &str, op: Op, value: &str) -> Result<Matcher, MatcherError> {
        if label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(MatcherError::Label {
                label: label.to_string(),
            });
        }
        let regex = match op {
            Op::Regex | Op::NotRegex => {
                Some(regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                    MatcherError::Regex {
                        matcher: format!("{label}{}{value}", op.as_str()),
                        reason: e.to_string(),
                    }
                })?)
            }
            _ => None,
        };
        Ok(Matcher {
            label: label.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let syntax = || MatcherError::Syntax(text.to_string());
        let t = text.trim();
        let at = t.find(['=', '!']).ok_or_else(syntax)?;
        let (label, rest) = (t[..at].trim(), &t[at..]);
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (Op::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (Op::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (Op::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Equal, v)
        } else {
            return Err(syntax());
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Matcher::new(label, op, value)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.label).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (Op::Equal, _) => v == self.value,
            (Op::NotEqual, _) => v != self.value,
            (Op::Regex, Some(r)) => r.is_match(v),
            (Op::NotRegex, Some(r)) => !r.is_match(v),
            _ => false,
        }
    }
}

/// Whether every matcher holds (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.label, self.op.as_str(), self.value)
    }
}

impl std::str::FromStr for Matcher {
    type Err = MatcherError;
    fn from_str(s: &str) -> Result<Matcher, MatcherError> {
        Matcher::parse(s)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label && self.op == other.op && self.value == other.value
    }
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Matcher::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_each_operator() {
        let l = labels(&[("severity", "critical"), ("rule", "cpu_high")]);
        let yes = [
            "severity=critical",
            "team!=ops",
            "rule=~cpu_.*",
            "rule!~mem.*",
            r#"rule="cpu_high""#,
        ];
        let no = [
            "severity=warning",
            "severity!=critical",
            "rule=~cpu",
            "rule!~cpu_.*",
        ];
        for m in yes {
            assert!(Matcher::parse(m).unwrap().matches(&l), "{m}");
        }
        for m in no {
            assert!(!Matcher::parse(m).unwrap().matches(&l), "{m}");
        }
        assert_eq!(
            Matcher::parse(" rule =~ cpu_.* ").unwrap().to_string(),
            "rule=~cpu_.*"
        );
    }

    #[test]
    fn bad_matchers_say_what_was_expected() {
        assert_eq!(
            Matcher::parse("severity").unwrap_err().to_string(),
            "expected `label=value`, `label!=value`, `label=~regex` or `label!~regex`, found `severity`"
        );
        assert!(matches!(
            Matcher::parse("a b=c"),
            Err(MatcherError::Label { .. })
        ));
        assert!(Matcher::parse("rule=~(")
            .unwrap_err()
            .to_string()
            .starts_with("bad regular expression in `rule=~(`"));
    }
}
